/**
 * The needs (docs/needs.md): each ranking by the uplink's configured property, else its kind's
 * default, and by what the daemon observed (drops in the last hour, measured RTT); the config's
 * properties and their errors; the flap window and the RTT tracker on a fake clock; the world
 * re-announcing its uplinks only when an observation changes a need's order.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig, type ConfigIssue } from '../../src/config/load.js';
import type { NeedName } from '../../src/config/schema.js';
import { decide, NO_WISH } from '../../src/decision/decide.js';
import { compareForNeeds, latencyMs, stability, type Rankable } from '../../src/decision/needs.js';
import { World, type WorldChange } from '../../src/daemon/world.js';
import { parseAddress } from '../../src/net/prefix.js';
import { FlapWindow, RttTracker, median, type UplinkObservation } from '../../src/uplink/health.js';
import { IFF } from '../../src/netlink/message.js';
import { labKernel, UP } from '../support/fixture.js';
import { FakeClock, recordingLog } from '../support/fakes.js';

/** A config of Wi-Fi (wlan0) and cellular (wwan0), both reaching the Internet; `extra` per uplink. */
function twoUplinks(wifi = '', cell = ''): string {
  return `version: 1
uplinks:
  - name: wifi
    match: wlan0
    kind: wifi
    preference: 200
${wifi}  - name: cellular
    match: wwan0
    kind: cellular
    cost: { per_mb: 0.02 }
    preference: 100
${cell}`;
}

const spec = (text: string, name: string) => {
  const u = parseConfig(text).uplinks.find((x) => x.name === name);
  assert.ok(u);
  return u;
};
const rankable = (text: string, name: string, observed?: UplinkObservation): Rankable => ({ spec: spec(text, name), ...(observed ? { observed } : {}) });
/** The uplinks' names, best first, for these needs. */
const order = (us: readonly Rankable[], needs: readonly NeedName[]): string[] => [...us].sort((a, b) => compareForNeeds(a, b, needs)).map((u) => u.spec.name);

function issues(text: string): ConfigIssue[] {
  try {
    parseConfig(text, 'waymark.yaml');
  } catch (e) {
    if (e instanceof ConfigError) return [...e.issues];
    throw e;
  }
  return [];
}

describe('needs: configured properties', () => {
  it('are read from the config (stability as a number or a word), absent ones left to the kind', () => {
    const text = twoUplinks('    bandwidth_mbps: 40\n    latency_ms: 5\n    stability: high\n', '    stability: 0.25\n');
    assert.deepEqual(spec(text, 'wifi').properties, { bandwidthMbps: 40, latencyMs: 5, stability: 0.9 });
    assert.deepEqual(spec(text, 'cellular').properties, { stability: 0.25 });
  });

  it('reject what is out of range, each error located', () => {
    const bad = issues(twoUplinks('    bandwidth_mbps: 0\n    latency_ms: -1\n', '    stability: 1.5\n'));
    const by = Object.fromEntries(bad.map((i) => [i.field, i]));
    assert.match(by['uplinks[0].bandwidth_mbps']?.message ?? '', /greater than 0/);
    assert.equal(by['uplinks[0].bandwidth_mbps']?.line, 7);
    assert.match(by['uplinks[0].latency_ms']?.message ?? '', /0 or more/);
    assert.equal(by['uplinks[1].stability']?.line, 14);
    assert.match(by['uplinks[1].stability']?.message ?? '', /number from 0 to 1, or one of: low, medium, high/);
    assert.equal(bad.length, 3, JSON.stringify(bad));
    assert.match(issues(twoUplinks('    stability: solid\n'))[0]?.message ?? '', /low, medium, high/);
    assert.match(issues(twoUplinks('    latency_ms: fast\n'))[0]?.field ?? '', /uplinks\[0\]\.latency_ms/);
  });
});

describe('needs: rankings', () => {
  const plain = twoUplinks();
  it('max-bandwidth: the kind\'s default (Wi-Fi beats cellular), unless configured otherwise', () => {
    assert.deepEqual(order([rankable(plain, 'cellular'), rankable(plain, 'wifi')], ['max-bandwidth']), ['wifi', 'cellular']);
    const slowWifi = twoUplinks('    bandwidth_mbps: 10\n');
    assert.deepEqual(order([rankable(slowWifi, 'wifi'), rankable(slowWifi, 'cellular')], ['max-bandwidth']), ['cellular', 'wifi'], 'configured 10 < cellular\'s default 50');
  });

  it('low-latency: measured RTT, else configured latency, else the kind\'s default', () => {
    assert.deepEqual(order([rankable(plain, 'cellular'), rankable(plain, 'wifi')], ['low-latency']), ['wifi', 'cellular'], 'defaults: 20 vs 60 ms');
    const lagWifi = twoUplinks('    latency_ms: 90\n');
    assert.deepEqual(order([rankable(lagWifi, 'wifi'), rankable(lagWifi, 'cellular')], ['low-latency']), ['cellular', 'wifi'], 'configured 90 vs default 60');
    // Measured: cellular at 8 ms beats Wi-Fi's default; too few samples count as none.
    const cellFast: UplinkObservation = { drops: 0, rttMs: 8, rttSamples: 5 };
    assert.deepEqual(order([rankable(plain, 'wifi'), rankable(plain, 'cellular', cellFast)], ['low-latency']), ['cellular', 'wifi']);
    assert.deepEqual(order([rankable(plain, 'wifi'), rankable(plain, 'cellular', { drops: 0, rttSamples: 2 })], ['low-latency']), ['wifi', 'cellular']);
    // A measurement beats the configured value of the same uplink.
    assert.deepEqual(latencyMs(rankable(lagWifi, 'wifi', { drops: 0, rttMs: 3, rttSamples: 3 })), { ms: 3, source: 'measured' });
    assert.deepEqual(latencyMs(rankable(lagWifi, 'wifi')), { ms: 90, source: 'config' });
    assert.deepEqual(latencyMs(rankable(plain, 'wifi')), { ms: 20, source: 'kind' });
  });

  it('long-lived: configured (or the kind\'s) stability, halved by each drop in the window', () => {
    assert.deepEqual(order([rankable(plain, 'wifi'), rankable(plain, 'cellular')], ['long-lived']), ['cellular', 'wifi'], 'kinds: 0.8 vs 0.4');
    const drops = (n: number): UplinkObservation => ({ drops: n, rttSamples: 0 });
    assert.equal(stability(rankable(plain, 'cellular', drops(2))), 0.2);
    assert.deepEqual(order([rankable(plain, 'wifi'), rankable(plain, 'cellular', drops(1))], ['long-lived']), ['wifi', 'cellular'], '0.4 = 0.4: preference decides');
    assert.deepEqual(order([rankable(plain, 'cellular', drops(2)), rankable(plain, 'wifi')], ['long-lived']), ['wifi', 'cellular'], '0.2 < 0.4');
    const steadyWifi = twoUplinks('    stability: 0.95\n');
    assert.deepEqual(order([rankable(steadyWifi, 'cellular'), rankable(steadyWifi, 'wifi')], ['long-lived']), ['wifi', 'cellular']);
  });

  it('cheapest weighs first, only when asked for; ties fall to the preference', () => {
    const freeCell = twoUplinks('    cost: { per_mb: 0.01 }\n    latency_ms: 1\n', '');
    const us = [rankable(freeCell, 'wifi'), rankable(freeCell, 'cellular')];
    assert.deepEqual(order(us, ['low-latency', 'cheapest']), ['wifi', 'cellular'], '0.01 < 0.02 per MB');
    const same = twoUplinks('    cost: { per_mb: 0.02 }\n    latency_ms: 60\n');
    assert.deepEqual(order([rankable(same, 'cellular'), rankable(same, 'wifi')], ['cheapest', 'low-latency']), ['wifi', 'cellular'], 'all equal: preference 200');
    assert.deepEqual(order([rankable(plain, 'cellular', { drops: 0, rttMs: 1, rttSamples: 9 }), rankable(plain, 'wifi')], ['cheapest', 'low-latency']), ['wifi', 'cellular'], 'cost before latency');
  });
});

describe('the flap window', () => {
  it('counts transitions out of active within the last hour, not the first sight, and forgets removed uplinks', () => {
    const clock = new FakeClock();
    const w = new FlapWindow(() => clock.now());
    const see = (status: 'active' | 'down' | 'no-carrier' | 'absent') => w.update([{ name: 'wifi', status }]);
    see('down');
    assert.equal(w.count('wifi'), 0, 'first sight');
    see('active');
    see('no-carrier');
    see('down');
    assert.equal(w.count('wifi'), 1, 'no-carrier → down is not another drop');
    clock.advance(30 * 60_000);
    see('active');
    see('absent');
    assert.equal(w.count('wifi'), 2);
    clock.advance(30 * 60_000);
    assert.equal(w.count('wifi'), 1, 'the first one is an hour old');
    clock.advance(30 * 60_000);
    assert.equal(w.count('wifi'), 0);
    see('active');
    see('down');
    w.update([]);
    assert.equal(w.count('wifi'), 0, 'no longer configured');
  });

  it('RTT: the median of recent samples, with enough of them; old ones age out', () => {
    const clock = new FakeClock();
    const t = new RttTracker(() => clock.now());
    t.add('wifi', [30, 10]);
    assert.deepEqual(t.estimate('wifi'), { samples: 2 });
    t.add('wifi', [20, 500]);
    assert.deepEqual(t.estimate('wifi'), { ms: 25, samples: 4 }, 'one slow server does not drag it');
    clock.advance(200_000);
    t.add('wifi', [40, 40, 40]);
    assert.deepEqual(t.estimate('wifi'), { ms: 40, samples: 7 });
    clock.advance(150_000);
    assert.deepEqual(t.estimate('wifi'), { ms: 40, samples: 3 }, 'the first round is older than 5 minutes');
    t.retain(new Set());
    assert.deepEqual(t.estimate('wifi'), { samples: 0 });
    assert.equal(median([3, 1, 2]), 2);
  });
});

describe('the world\'s observations', () => {
  const config = parseConfig(twoUplinks());
  const facts = (wwan0 = UP) => {
    const k = labKernel({ wwan0 });
    return { links: k.links, addrs: k.addrs, routes: k.routes };
  };
  function world() {
    const clock = new FakeClock();
    const w = new World({ config, savedSlots: {}, saveSlots: () => Promise.resolve(), log: recordingLog(), clock });
    const changes: WorldChange[] = [];
    w.subscribe(['uplinks'], (c) => { changes.push(c); });
    const pass = (wwan0 = UP) => {
      w.observe(facts(wwan0));
      w.settled();
    };
    const best = (need: NeedName) => {
      const a = parseAddress('198.51.100.10');
      assert.ok(a);
      const d = decide({ uplinks: w.uplinks, destinations: w.config.destinations, wish: { ...NO_WISH, needs: [need] }, family: 4, addr: a.bytes });
      return d.action === 'steer' ? d.uplink.spec.name : d.action;
    };
    return { w, clock, changes, pass, best };
  }

  it('two drops of cellular within the hour make long-lived prefer Wi-Fi; an hour later, cellular again', () => {
    const { w, clock, changes, pass, best } = world();
    pass();
    assert.equal(best('long-lived'), 'cellular');
    for (let i = 0; i < 2; i++) {
      pass(IFF.UP); // carrier lost
      pass();
    }
    assert.equal(w.uplinks.find((u) => u.spec.name === 'cellular')?.observed?.drops, 2);
    assert.equal(best('long-lived'), 'wifi');
    const before = changes.length;
    clock.advance(3_600_001);
    w.reobserve();
    assert.equal(best('long-lived'), 'cellular');
    assert.equal(changes.length, before + 1, 'the order changed: the decisions are told');
    w.reobserve();
    assert.equal(changes.length, before + 1, 'nothing changed: no announcement');
  });

  it('measured RTTs reach low-latency; the uplinks are announced only when the order changes', () => {
    const { w, changes, pass, best } = world();
    pass();
    assert.equal(best('low-latency'), 'wifi');
    const before = changes.length;
    w.noteRtt(new Map([['cellular', [5, 6]]]));
    assert.equal(changes.length, before, 'two samples: not yet a measurement');
    w.noteRtt(new Map([['cellular', [7]]]));
    assert.equal(w.uplinks.find((u) => u.spec.name === 'cellular')?.observed?.rttMs, 6);
    assert.equal(best('low-latency'), 'cellular');
    assert.equal(changes.length, before + 1);
    w.noteRtt(new Map([['cellular', [6, 6, 6]]]));
    assert.equal(changes.length, before + 1, 'still the same order');
    // During a pass (observed, not yet settled) the pass announces, not the measurement.
    w.observe(facts());
    w.noteRtt(new Map([['wifi', [1, 1, 1]]]));
    assert.equal(changes.length, before + 1);
    w.settled();
    assert.equal(changes.length, before + 2);
    assert.equal(best('low-latency'), 'wifi');
  });
});
