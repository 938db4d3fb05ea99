/** The config in force (src/daemon/system-service.ts): base + profile + system facts, applied once per change, in order. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig, type Config } from '../../src/config/load.js';
import { SystemService } from '../../src/daemon/system-service.js';
import { NO_SYSTEM_FACTS, type ModemFacts, type SystemFacts } from '../../src/system/facts.js';
import type { UplinkState } from '../../src/uplink/state.js';
import { formatSim } from '../../src/cli/sim.js';
import { recordingLog } from '../support/fakes.js';

const SIM_A = '8949000000000000011';
const SIM_B = '8944000000000000022';
const base = parseConfig(`version: 1
uplinks:
  - { name: wifi, match: wlan0, kind: wifi }
  - { name: cellular, match: wwan0, kind: cellular }
destinations:
  - { name: internet, via: [wifi, cellular] }
profiles:
  - name: travel
    sims: ["${SIM_B}"]
    roaming: deny
    uplinks: [{ name: cellular, cost: { per_mb: 5 }, metered: true }]
`);
const travel = base.profiles?.[0] ?? null;

/** A world that records the configs it is given. */
function fakeWorld() {
  const configs: Config[] = [];
  return {
    configs,
    get config(): Config { return configs.at(-1) ?? base; },
    uplinks: [] as readonly UplinkState[],
    replaceConfig: (c: Config) => { configs.push(c); return Promise.resolve(configs.length + 1); },
    subscribe: () => () => undefined,
  };
}

const modem = (iccid: string, registration: ModemFacts['registration'] = 'home'): ModemFacts => ({
  path: '/org/freedesktop/ModemManager1/Modem/0', sim: { iccid, operator: '26201' }, registration, operatorCode: '26201',
  bearers: [{ path: '/b/0', interface: 'wwan0', apn: 'internet', connected: true, dns: ['10.64.0.1'] }],
});
const facts = (m: ModemFacts[]): SystemFacts => ({ ...NO_SYSTEM_FACTS, modems: m, services: { bus: 'connected', modemmanager: true, networkmanager: false, resolved: false } });

function service() {
  const sims: (string | undefined)[] = [];
  const applied: { sim: string | null; roaming: readonly string[] }[] = [];
  const saved: unknown[] = [];
  const svc = new SystemService({
    base, log: recordingLog(), saveManual: (m) => { saved.push(m); return Promise.resolve(); },
    onSim: (s) => sims.push(s?.iccid), onApplied: (e) => applied.push(e),
  });
  const world = fakeWorld();
  svc.bind(world);
  return { svc, world, sims, applied, saved };
}

describe('the config in force', () => {
  it('facts are applied once per change; the same facts again change nothing', async () => {
    const { svc, world, sims } = service();
    svc.noteFacts(facts([modem(SIM_A)]));
    await svc.update();
    assert.equal(world.configs.length, 1);
    assert.deepEqual(world.config.uplinks.find((u) => u.name === 'cellular')?.dns, ['10.64.0.1']);
    svc.noteFacts(facts([modem(SIM_A)]));
    await svc.update();
    assert.equal(world.configs.length, 1, 'nothing changed');
    assert.deepEqual(sims, [SIM_A], 'the SIM is told once');
  });

  it('the profile on top: its price, metered (as the user\'s word), and roaming deny taking the uplink out of every destination', async () => {
    const { svc, world, applied } = service();
    svc.noteFacts(facts([modem(SIM_B, 'roaming')]));
    await svc.setProfile(travel);
    const cell = world.config.uplinks.find((u) => u.name === 'cellular');
    assert.equal(cell?.cost.perMB, 5);
    assert.equal(cell?.sources.metered, 'profile');
    assert.equal(cell?.roaming, true);
    assert.deepEqual(world.config.destinations.find((d) => d.name === 'internet')?.via, ['wifi']);
    assert.deepEqual(applied.at(-1), { sim: SIM_B, roaming: ['cellular'], generation: world.configs.length + 1 });
    svc.noteFacts(facts([modem(SIM_B, 'home')]));
    await svc.update();
    assert.deepEqual(world.config.destinations.find((d) => d.name === 'internet')?.via, ['wifi', 'cellular']);
  });

  it('a reload applies once, with what changed while the profiles were checked', async () => {
    const { svc, world } = service();
    const generation = await svc.setBase(base, () => svc.setProfile(travel));
    assert.equal(world.configs.length, 1, 'one replace for the reload and the profile');
    assert.equal(generation, 2);
    assert.equal(world.config.uplinks.find((u) => u.name === 'cellular')?.cost.perMB, 5);
    await svc.setBase(base);
    assert.equal(world.configs.length, 2, 'a reload always replaces (the generation moves)');
  });

  it('a SIM set by hand stands in for the modem\'s, with its roaming; clearing it gives the modem\'s back', async () => {
    const { svc, world, sims, saved } = service();
    svc.noteFacts(facts([modem(SIM_A)]));
    await svc.setManual({ iccid: SIM_B, roaming: true });
    assert.equal(svc.sim?.source, 'manual');
    assert.equal(world.config.uplinks.find((u) => u.name === 'cellular')?.sources.roaming, 'manual');
    const shown = svc.handlers();
    const r = await shown['sim.show']({}, { pid: 1, uid: 0, gid: 0 }, undefined as never);
    assert.deepEqual(r.manual, { iccid: SIM_B, operator: null, roaming: true });
    assert.match(formatSim(r), new RegExp(`SIM ${SIM_B}.*set by hand[\\s\\S]*registration set by hand: roaming[\\s\\S]*Modem/0 +${SIM_A} +home +26201 +wwan0 +internet +yes +10\\.64\\.0\\.1`));
    await svc.setManual(undefined);
    assert.equal(svc.sim?.iccid, SIM_A);
    assert.deepEqual(sims, [SIM_A, SIM_B, SIM_A]);
    assert.deepEqual(saved, [{ iccid: SIM_B, roaming: true }, undefined]);
  });

  it('no SIM at all: formatSim says how to set one', () => {
    const { svc } = service();
    assert.match(formatSim({ ...svc.view(), manual: null }), /no SIM known .*waymark sim set ICCID/);
  });
});
