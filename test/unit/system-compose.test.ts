/** The device's services' facts folded into the uplinks (src/system/compose.ts): precedence and sources. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { applyFacts, currentSim, roamingUplinks, type SystemInput } from '../../src/system/compose.js';
import { NO_SYSTEM_FACTS, registrationOf, type ModemFacts, type SystemFacts } from '../../src/system/facts.js';

const CONFIG = `version: 1
uplinks:
  - { name: wifi, match: wlan0, kind: wifi }
  - { name: cellular, match: wwan0, kind: cellular }
  - { name: mms, match: { apn: mms.example }, kind: cellular }
  - { name: fixed, match: wwan9, kind: cellular, roaming: false, metered: false, dns: [192.0.2.53] }
`;
const base = parseConfig(CONFIG);

const modem = (over: Partial<ModemFacts> = {}): ModemFacts => ({
  path: '/org/freedesktop/ModemManager1/Modem/0',
  sim: { iccid: '8949000000000000001', operator: '26201' },
  registration: 'home', operatorCode: '26201',
  bearers: [
    { path: '/b/0', interface: 'wwan0', apn: 'internet', connected: true, dns: ['10.1.0.53'] },
    { path: '/b/1', interface: 'wwan1', apn: 'MMS.example', connected: true, dns: ['10.2.0.53', 'fd00::53'] },
  ],
  ...over,
});
const facts = (over: Partial<SystemFacts> = {}): SystemFacts => ({
  ...NO_SYSTEM_FACTS, services: { bus: 'connected', modemmanager: true, networkmanager: true, resolved: true }, modems: [modem()], ...over,
});
const links = new Map([['wifi', { name: 'wlan0', index: 3 }], ['cellular', { name: 'wwan0', index: 4 }], ['mms', { name: 'wwan1', index: 5 }]]);
const input = (f: SystemFacts, over: Partial<SystemInput> = {}): SystemInput => ({ facts: f, links, homeOperators: [], ...over });
const up = (c: ReturnType<typeof applyFacts>, name: string) => {
  const u = c.uplinks.find((x) => x.name === name);
  assert.ok(u, name);
  return u;
};

describe('system facts into the uplinks', () => {
  it('without any service: the config as it is (an APN uplink matches no link), every source says so', () => {
    const c = applyFacts(base, input(NO_SYSTEM_FACTS, { links: new Map() }));
    const mms = up(c, 'mms');
    assert.equal(mms.match, '');
    assert.equal(mms.sources.match, 'none');
    assert.deepEqual(up(c, 'cellular').dns, []);
    assert.equal(up(c, 'cellular').sources.dns, 'none');
    assert.equal(up(c, 'cellular').metered, true);
    assert.equal(up(c, 'cellular').sources.metered, 'kind');
    assert.equal(up(c, 'cellular').roaming, false);
    assert.equal(up(c, 'cellular').sources.roaming, 'default');
    assert.deepEqual(up(c, 'fixed').dns, ['192.0.2.53']);
    assert.equal(up(c, 'fixed').sources.dns, 'config');
  });

  it('a bearer names the APN uplink\'s interface (APN compared without case) and gives its DNS; the SIM comes with it', () => {
    const c = applyFacts(base, input(facts()));
    const mms = up(c, 'mms');
    assert.equal(mms.match, 'wwan1');
    assert.equal(mms.sources.match, 'modemmanager');
    assert.deepEqual(mms.dns, ['10.2.0.53', 'fd00::53']);
    assert.equal(mms.sources.dns, 'modemmanager');
    assert.deepEqual(mms.sim, { iccid: '8949000000000000001', apn: 'MMS.example' });
    assert.equal(mms.sources.sim, 'modemmanager');
    assert.deepEqual(up(c, 'cellular').dns, ['10.1.0.53']);
    // A disconnected bearer names nothing.
    const off = applyFacts(base, input(facts({ modems: [modem({ bearers: modem().bearers.map((b) => ({ ...b, connected: false })) })] })));
    assert.equal(up(off, 'mms').match, '');
  });

  it('DNS in order: config, ModemManager, NetworkManager, resolved', () => {
    const devices = [{ interface: 'wwan0', dns: ['10.9.0.1'] }, { interface: 'wlan0', dns: ['192.168.1.1'], metered: true }];
    const resolved = [{ ifindex: 3, dns: ['192.168.1.254'] }, { ifindex: 4, dns: ['10.8.0.1'] }];
    let c = applyFacts(base, input(facts({ devices, resolved })));
    assert.deepEqual([up(c, 'cellular').dns, up(c, 'cellular').sources.dns], [['10.1.0.53'], 'modemmanager']);
    assert.deepEqual([up(c, 'wifi').dns, up(c, 'wifi').sources.dns], [['192.168.1.1'], 'networkmanager']);
    c = applyFacts(base, input(facts({ devices: [], resolved, modems: [modem({ bearers: [] })] })));
    assert.deepEqual([up(c, 'cellular').dns, up(c, 'cellular').sources.dns], [['10.8.0.1'], 'resolved']);
    assert.deepEqual([up(c, 'wifi').dns, up(c, 'wifi').sources.dns], [['192.168.1.254'], 'resolved']);
    c = applyFacts(base, input(facts({ devices, resolved })));
    assert.deepEqual([up(c, 'fixed').dns, up(c, 'fixed').sources.dns], [['192.0.2.53'], 'config']);
  });

  it('NetworkManager\'s metered state feeds the uplinks whose config does not set it', () => {
    const devices = [{ interface: 'wlan0', dns: [], metered: true }, { interface: 'wwan0', dns: [], metered: false }, { interface: 'wwan9', dns: [], metered: true }];
    const c = applyFacts(base, input(facts({ devices }), { links: new Map([...links, ['fixed', { name: 'wwan9', index: 9 }]]) }));
    assert.deepEqual([up(c, 'wifi').metered, up(c, 'wifi').sources.metered], [true, 'networkmanager']);
    assert.deepEqual([up(c, 'cellular').metered, up(c, 'cellular').sources.metered], [false, 'networkmanager']);
    assert.deepEqual([up(c, 'fixed').metered, up(c, 'fixed').sources.metered], [false, 'config']);
  });

  it('roaming: the modem\'s registration, lifted by a home operator of the profile, overridden by the config and a SIM set by hand', () => {
    const roamingFacts = facts({ modems: [modem({ registration: 'roaming', operatorCode: '23415' })] });
    assert.deepEqual([...roamingUplinks(applyFacts(base, input(roamingFacts)))].sort(), ['cellular', 'mms']);
    const c = applyFacts(base, input(roamingFacts));
    assert.equal(up(c, 'cellular').sources.roaming, 'modemmanager');
    assert.equal(up(c, 'wifi').roaming, false);
    assert.equal(up(c, 'fixed').roaming, false, 'the config says roaming: false');
    assert.deepEqual([...roamingUplinks(applyFacts(base, input(roamingFacts, { homeOperators: ['23415'] })))], []);
    assert.deepEqual([...roamingUplinks(applyFacts(base, input(facts())))], []);
    const byHand = input(facts(), { manual: { iccid: '8944000000000000002', roaming: true } });
    assert.deepEqual([...roamingUplinks(applyFacts(base, byHand))].sort(), ['cellular', 'mms']);
    assert.equal(up(applyFacts(base, byHand), 'cellular').sources.roaming, 'manual');
    assert.equal(up(applyFacts(base, byHand), 'cellular').sim?.iccid, '8944000000000000002');
  });

  it('the device\'s SIM: the one set by hand, else the first modem\'s with one', () => {
    assert.equal(currentSim(NO_SYSTEM_FACTS, undefined), undefined);
    assert.deepEqual(currentSim(facts({ modems: [modem({ sim: undefined, path: '/m/0' }), modem({ path: '/m/1' })] }), undefined),
      { iccid: '8949000000000000001', operator: '26201', source: 'modemmanager', modem: '/m/1' });
    assert.deepEqual(currentSim(facts(), { iccid: '8944000000000000002' }), { iccid: '8944000000000000002', source: 'manual' });
  });

  it('registration codes as ModemManager numbers them', () => {
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 99].map(registrationOf),
      ['idle', 'home', 'searching', 'denied', 'unknown', 'roaming', 'home', 'roaming', 'emergency', 'home', 'roaming', 'emergency', 'unknown']);
  });

  it('config: match { apn } is for cellular uplinks only, and an APN is matched once', () => {
    assert.throws(() => parseConfig('version: 1\nuplinks:\n  - { name: w, match: { apn: x }, kind: wifi }\n'), /uplinks\[0\]\.match\.apn: only cellular/);
    assert.throws(() => parseConfig('version: 1\nuplinks:\n  - { name: a, match: { apn: X }, kind: cellular }\n  - { name: b, match: { apn: x }, kind: cellular }\n'),
      /uplinks\[1\]\.match: APN "x" is already matched by uplinks\[0\]/);
    assert.throws(() => parseConfig('version: 1\nuplinks:\n  - { name: a, match: { ifname: x }, kind: cellular }\n'), /uplinks\[0\]\.match/);
  });
});
