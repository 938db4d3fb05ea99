/**
 * The ModemManager reader against a fake ModemManager (test/support/fake-modemmanager.ts) on a
 * private dbus-daemon: never the machine's system bus. Every wait is on a reader update (its
 * `changed` callback); the time bounds are guards. Where a test shows that something did NOT
 * happen, a method call to the fake after the signal orders it (the bus delivers in order).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { connectBus, variant } from '../../src/agent/dbus.js';
import type { ModemFacts } from '../../src/system/facts.js';
import { MODEMMANAGER, ModemManagerReader, OBJECT_MANAGER, PROPERTIES } from '../../src/system/modemmanager.js';
import { FakeModemManager } from '../support/fake-modemmanager.js';
import { recordingLog } from '../support/fakes.js';
import { readerRig, type ReaderRig } from '../support/reader-rig.js';
import { startPrivateBus, type PrivateBus } from '../support/notify-server.js';

const HOME = { iccid: '89490200001234567890', operator: '26201', operatorName: 'Telekom.de' } as const;
const TRAVEL = { iccid: '89440000009876543210', operator: '23415', operatorName: 'Vodafone UK' } as const;

let bus: PrivateBus;
before(async () => { bus = await startPrivateBus(); });
after(async () => { await bus.close(); });

type Rig = ReaderRig<readonly ModemFacts[], FakeModemManager>;

/** The reader attached to a fresh fake ModemManager, and its updates. */
async function rig(): Promise<Rig> {
  const mm = await FakeModemManager.start(bus.address);
  const log = recordingLog();
  return readerRig(bus.address, mm, new ModemManagerReader(log), log, (c) =>
    c.call({ destination: mm.owner, path: MODEMMANAGER.path, interface: OBJECT_MANAGER, member: 'GetManagedObjects' }));
}

describe('ModemManager reader', () => {
  let r: Rig;
  beforeEach(async () => { r = await rig(); });
  afterEach(() => r.close());

  test('reads the modems at attach: SIM, registration, operator, bearers with APN, interface and DNS', async () => {
    const m0 = r.fake.addModem({
      sim: HOME, registration: 1, operatorCode: '26201',
      bearers: [
        { interface: 'wwan0', apn: 'internet.telekom', connected: true, dns4: ['10.74.210.210', '10.74.210.211'], dns6: ['fd00:976a::9'] },
        { interface: '', apn: 'mms', connected: false },
      ],
    });
    // No SIM, no Modem3gpp interface, a bearer without anything.
    const m1 = r.fake.addModem({ sim: null, registration: null, bearers: [{}] });
    await r.attach();
    const v = r.reader.value;
    assert.deepEqual(v.map((m) => m.path), [m0, m1]);
    assert.deepEqual(v[0], {
      path: m0,
      sim: { iccid: HOME.iccid, operator: '26201', operatorName: 'Telekom.de' },
      registration: 'home',
      operatorCode: '26201',
      bearers: [
        { path: `${MODEMMANAGER.path}/Bearer/0`, interface: 'wwan0', apn: 'internet.telekom', connected: true, dns: ['10.74.210.210', '10.74.210.211', 'fd00:976a::9'] },
        // "" is no interface.
        { path: `${MODEMMANAGER.path}/Bearer/1`, apn: 'mms', connected: false, dns: [] },
      ],
    });
    assert.deepEqual(v[1], { path: m1, registration: 'unknown', bearers: [{ path: `${MODEMMANAGER.path}/Bearer/2`, connected: false, dns: [] }] });
    assert.equal(r.updates.all.length, 0, 'the initial read is the attach, not an update');
    // The fake answers Properties.Get too (for other clients of it).
    const got = await r.client.call({ destination: r.fake.owner, path: `${MODEMMANAGER.path}/SIM/0`, interface: PROPERTIES, member: 'Get', signature: 'ss', body: [MODEMMANAGER.sim, 'SimIdentifier'] });
    assert.equal((got.body[0] as { value: unknown }).value, HOME.iccid);
  });

  test('keeps the modems sorted by path', async () => {
    const paths = Array.from({ length: 12 }, () => r.fake.addModem({ sim: null }));
    await r.attach();
    assert.deepEqual(r.reader.value.map((m) => m.path), [...paths].sort());
    assert.notDeepEqual([...paths].sort(), paths, 'Modem/10 sorts before Modem/2: the order is the reader\'s');
  });

  test('a SIM swap is seen (new SIM object, Modem.Sim changes), and a SIM taken out', async (t) => {
    const m = r.fake.addModem({ sim: HOME });
    await r.attach();
    assert.equal(r.reader.value[0]?.sim?.iccid, HOME.iccid);

    const t0 = performance.now();
    r.fake.setSim(m, TRAVEL);
    const swapped = await r.until((v) => v[0]?.sim?.iccid === TRAVEL.iccid, 'the new SIM');
    t.diagnostic(`SIM swap seen by the reader after ${(performance.now() - t0).toFixed(1)} ms`);
    assert.deepEqual(swapped[0]?.sim, { iccid: TRAVEL.iccid, operator: '23415', operatorName: 'Vodafone UK' });

    r.fake.setSim(m, null);
    const out = await r.until((v) => v[0]?.sim === undefined, 'no SIM');
    assert.equal(out.length, 1);
  });

  test('registration: roaming and back home, with the operator it is registered with', async () => {
    const m = r.fake.addModem({ sim: HOME, registration: 1, operatorCode: '26201' });
    await r.attach();
    r.fake.setRegistration(m, 5, '23415');
    const roaming = await r.until((v) => v[0]?.registration === 'roaming', 'roaming');
    assert.equal(roaming[0]?.operatorCode, '23415');
    r.fake.setRegistration(m, 2, '');
    const searching = await r.until((v) => v[0]?.registration === 'searching', 'searching');
    assert.equal(searching[0]?.operatorCode, undefined, '"" is no operator');
    r.fake.setRegistration(m, 1, '26201');
    const home = await r.until((v) => v[0]?.registration === 'home', 'home again');
    assert.equal(home[0]?.operatorCode, '26201');
  });

  test('bearers: added, connected with DNS, disconnected, removed', async () => {
    const m = r.fake.addModem({ sim: HOME, bearers: [] });
    await r.attach();
    const b = r.fake.addBearer(m, { apn: 'internet' });
    const added = await r.until((v) => v[0]?.bearers.length === 1, 'the new bearer');
    assert.deepEqual(added[0]?.bearers[0], { path: b, apn: 'internet', connected: false, dns: [] });

    r.fake.setBearer(b, { interface: 'wwan0', connected: true, dns4: ['192.0.2.53'], dns6: ['2001:db8::53', '2001:db8::54'] });
    const up = await r.until((v) => v[0]?.bearers[0]?.connected === true, 'the bearer connected');
    assert.deepEqual(up[0]?.bearers[0], { path: b, interface: 'wwan0', apn: 'internet', connected: true, dns: ['192.0.2.53', '2001:db8::53', '2001:db8::54'] });

    const mms = r.fake.addBearer(m, { apn: 'mms', interface: 'wwan1', connected: true, dns4: ['192.0.2.99'] });
    const two = await r.until((v) => v[0]?.bearers.length === 2, 'the second bearer');
    assert.deepEqual(two[0]?.bearers.map((x) => [x.path, x.apn]), [[b, 'internet'], [mms, 'mms']]);

    r.fake.setBearer(b, { interface: '', connected: false, dns4: [], dns6: [] });
    const down = await r.until((v) => v[0]?.bearers[0]?.connected === false, 'the bearer disconnected');
    assert.deepEqual(down[0]?.bearers[0], { path: b, apn: 'internet', connected: false, dns: [] });

    r.fake.removeBearer(b);
    const gone = await r.until((v) => v[0]?.bearers.length === 1, 'the bearer gone');
    assert.equal(gone[0]?.bearers[0]?.path, mms);
  });

  test('modems added (InterfacesAdded) and removed (InterfacesRemoved)', async () => {
    await r.attach();
    assert.deepEqual(r.reader.value, []);
    const m0 = r.fake.addModem({ sim: HOME, bearers: [{ interface: 'wwan0', connected: true, dns4: ['192.0.2.1'] }] });
    const one = await r.until((v) => v.length === 1, 'the modem');
    assert.equal(one[0]?.path, m0);
    assert.equal(one[0]?.sim?.iccid, HOME.iccid, 'its SIM read with it');
    assert.deepEqual(one[0]?.bearers[0]?.dns, ['192.0.2.1'], 'its bearers read with it');
    const m1 = r.fake.addModem({ sim: TRAVEL, registration: 5, operatorCode: '23415' });
    const two = await r.until((v) => v.length === 2, 'the second modem');
    assert.deepEqual(two.map((m) => [m.path, m.registration]), [[m0, 'home'], [m1, 'roaming']]);
    r.fake.removeModem(m0);
    const left = await r.until((v) => v.length === 1, 'the first modem gone');
    assert.equal(left[0]?.path, m1);
  });

  test('a malformed value skips its object (logged), never crashes, and is read again once well-formed', async () => {
    const bad = r.fake.addModem({ sim: HOME });
    const good = r.fake.addModem({ sim: TRAVEL, bearers: [{ interface: 'wwan1', connected: true }] });
    // A string where a uint32 belongs: that modem is skipped from the start.
    r.fake.setPropertyQuietly(bad, MODEMMANAGER.modem3gpp, 'RegistrationState', variant('s', 'home'));
    await r.attach();
    assert.deepEqual(r.reader.value.map((m) => m.path), [good]);
    assert.ok(r.log.lines.some((l) => l.level === 'warn' && l.fields?.['path'] === bad), 'the bad modem is logged');

    // The service says it right: the modem is back.
    r.fake.setRegistration(bad, 1, '26201');
    await r.until((v) => v.length === 2, 'the modem read again');

    // A bearer whose Connected is not a boolean: that bearer is skipped, the modem stays.
    const bearer = `${MODEMMANAGER.path}/Bearer/0`;
    r.fake.setProperty(bearer, MODEMMANAGER.bearer, 'Connected', variant('s', 'yes'));
    const noBearer = await r.until((v) => v.find((m) => m.path === good)?.bearers.length === 0, 'the bad bearer skipped');
    assert.equal(noBearer.length, 2);

    // A SIM whose ICCID is a number: no SIM for that modem.
    const sim = `${MODEMMANAGER.path}/SIM/1`;
    r.fake.setProperty(sim, MODEMMANAGER.sim, 'SimIdentifier', variant('u', 42));
    await r.until((v) => v.find((m) => m.path === good)?.sim === undefined, 'the bad SIM skipped');

    // Bearers that are not a list: the modem goes until it is readable again.
    r.fake.setProperty(good, MODEMMANAGER.modem, 'Bearers', variant('s', 'none'));
    await r.until((v) => v.length === 1, 'the bad modem skipped');

    // A PropertiesChanged that is not one ("s" alone), an InterfacesAdded without a dictionary:
    // logged, ignored, and what comes after is read.
    r.fake.bus.emit(good, PROPERTIES, 'PropertiesChanged', 's', ['garbage']);
    r.fake.bus.emit(MODEMMANAGER.path, OBJECT_MANAGER, 'InterfacesAdded', 'os', [`${MODEMMANAGER.path}/Modem/99`, 'x']);
    r.fake.setProperty(good, MODEMMANAGER.modem, 'Bearers', variant('ao', [bearer]));
    r.fake.setProperty(bearer, MODEMMANAGER.bearer, 'Connected', variant('b', true));
    r.fake.setProperty(sim, MODEMMANAGER.sim, 'SimIdentifier', variant('s', TRAVEL.iccid));
    const back = await r.until((v) => v.length === 2 && v[1]?.bearers[0]?.connected === true && v[1]?.sim?.iccid === TRAVEL.iccid, 'all readable again');
    assert.deepEqual(back.map((m) => m.path), [bad, good]);
    assert.ok(r.log.lines.some((l) => l.msg.includes('unreadable signal')), 'the bad signal is logged');
  });

  test('signals from anyone but the owner are ignored, even when the connection receives them', async () => {
    const m = r.fake.addModem({ sim: HOME, registration: 1 });
    await r.attach();
    // Another reader on the same connection (NetworkManager's) asks for everyone's PropertiesChanged.
    const received: string[] = [];
    const off = await r.client.onSignal({ interface: PROPERTIES, member: 'PropertiesChanged' }, (sig) => received.push(sig.sender));
    const impostor = await connectBus(bus.address);
    try {
      impostor.emit(m, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [MODEMMANAGER.modem3gpp, { RegistrationState: variant('u', 5) }, []]);
      await impostor.call({ destination: r.client.name, path: '/', interface: 'org.freedesktop.DBus.Peer', member: 'Ping' });
      await r.sync();
      assert.ok(received.includes(impostor.name), 'the impostor\'s signal reached the connection');
      assert.equal(r.reader.value[0]?.registration, 'home');
      assert.equal(r.updates.all.length, 0);
    } finally {
      off();
      impostor.close();
    }
    // The owner's own signal still counts (the test can fail the other way).
    r.fake.setRegistration(m, 5, '23415');
    await r.until((v) => v[0]?.registration === 'roaming', 'roaming');
  });

  test('detached: empty, and no more updates', async () => {
    const m = r.fake.addModem({ sim: HOME });
    await r.attach();
    assert.equal(r.reader.value.length, 1);
    r.reader.detach();
    assert.deepEqual(r.reader.value, []);
    r.fake.setSim(m, TRAVEL);
    r.fake.addModem({ sim: null });
    await r.sync();
    assert.equal(r.updates.all.length, 0);
    assert.deepEqual(r.reader.value, []);
  });

  test('attach rejects when the name has no such owner, and leaves the reader empty', async () => {
    r.fake.addModem({ sim: HOME });
    await assert.rejects(r.reader.attach(r.client, ':1.999999', () => undefined));
    assert.deepEqual(r.reader.value, []);
    // It can attach afterwards.
    await r.attach();
    assert.equal(r.reader.value.length, 1);
  });
});
