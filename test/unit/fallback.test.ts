import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { PRIO_FALLBACK, PRIO_MAX, RTPROT_WAYMARK, TABLE_BASE } from '../../src/constants.js';
import { EXAMPLE_CONFIG } from '../../src/lab/device.js';
import { decodeRule, encodeRule, FR_ACT, RTM, RTN, type RouteMsg, type RuleMsg } from '../../src/netlink/message.js';
import { describeRule } from '../../src/routing/describe.js';
import { desiredState } from '../../src/routing/desired.js';
import { fallbackUplinks, mainHoldsDefault, unmarkedEgress } from '../../src/routing/fallback.js';
import { isEmpty, isOwnRule, plan } from '../../src/routing/reconcile.js';
import { uplinkStates, type KernelView } from '../../src/uplink/state.js';
import { labKernel, labStates } from '../support/fixture.js';

// The example, with cellular's next hop given as a modem manager that keeps its default out of
// main would (the kernel then shows none for it).
const config = parseConfig(readFileSync(EXAMPLE_CONFIG, 'utf8')
  .replace(/^( {4}match: wwan0\n)/m, '$1    gateway: { ipv4: 10.64.0.1, ipv6: "fd00:64::1" }\n'));
const { slots } = labStates(config);
const cellTable = TABLE_BASE + (slots.get('cellular') ?? 0);
const WLAN0 = 2;
const WWAN0 = 3;

const isDefaultOn = (oif: number) => (r: RouteMsg): boolean => r.dstLen === 0 && r.oif === oif;
/** The lab's kernel with some main routes taken away, Wi-Fi's link down or not. */
function kernel(o: { wifiDown?: boolean; drop?: (r: RouteMsg) => boolean; add?: RouteMsg[] }): KernelView {
  const k = labKernel(o.wifiDown ? { wlan0: 0 } : {});
  const routes = k.routes.filter((r) => !(o.drop?.(r) ?? false) && !(o.wifiDown && r.oif === WLAN0));
  return { ...k, addrs: o.wifiDown ? k.addrs.filter((a) => a.index !== WLAN0) : k.addrs, routes: [...routes, ...(o.add ?? [])] };
}
function world(k: KernelView) {
  const states = uplinkStates(config.uplinks, slots, k);
  const fallback = fallbackUplinks(k.routes, states, config.destinations);
  return { states, fallback, egress: unmarkedEgress(k.routes, states, config.destinations), desired: desiredState(states, config.destinations, fallback) };
}
const fallbackRules = (rules: readonly RuleMsg[]): string[] => rules.filter((r) => r.priority === PRIO_FALLBACK).map(describeRule);

describe('the Internet fallback (pure)', () => {
  it('while main holds its defaults, there is none: main decides, as before', () => {
    const w = world(kernel({}));
    assert.deepEqual(w.fallback, {});
    assert.deepEqual(fallbackRules(w.desired.rules), []);
    assert.deepEqual(w.egress, { v4: WLAN0, v6: WLAN0 });
  });

  it('main holding only Wi-Fi\'s default (cellular kept out): still none, unmarked traffic leaves by Wi-Fi', () => {
    const w = world(kernel({ drop: isDefaultOn(WWAN0) }));
    assert.equal(w.states.find((s) => s.spec.name === 'cellular')?.status, 'active', 'its next hop comes from the config');
    assert.deepEqual(w.fallback, {});
    assert.deepEqual(fallbackRules(w.desired.rules), []);
    assert.deepEqual(w.egress, { v4: WLAN0, v6: WLAN0 });
  });

  it('Wi-Fi down and no default left in main: both families by cellular\'s table, after main', () => {
    const w = world(kernel({ wifiDown: true, drop: isDefaultOn(WWAN0) }));
    assert.equal(w.fallback.v4?.spec.name, 'cellular');
    assert.equal(w.fallback.v6?.spec.name, 'cellular');
    assert.deepEqual(fallbackRules(w.desired.rules), [
      `ip -4 rule pref ${PRIO_FALLBACK} lookup ${cellTable} proto ${RTPROT_WAYMARK}`,
      `ip -6 rule pref ${PRIO_FALLBACK} lookup ${cellTable} proto ${RTPROT_WAYMARK}`,
    ]);
    assert.deepEqual(w.egress, { v4: WWAN0, v6: WWAN0 }, 'the app BPF maps predict cellular for unmarked traffic');
    // That table holds cellular's default, so the lookup ends there.
    assert.ok(w.desired.routes.some((r) => r.table === cellTable && r.family === 4 && r.dstLen === 0 && r.type === RTN.UNICAST && r.gateway === '10.64.0.1'));
  });

  it('Wi-Fi down while main keeps cellular\'s default: main decides (no fallback)', () => {
    const w = world(kernel({ wifiDown: true }));
    assert.deepEqual(w.fallback, {});
    assert.deepEqual(w.egress, { v4: WWAN0, v6: WWAN0 });
  });

  it('a default of either family in main, of any type, keeps the fallback away for both', () => {
    const v6only = world(kernel({ drop: (r) => r.dstLen === 0 && r.family === 4 }));
    assert.deepEqual(v6only.fallback, {}, 'no IPv4 over cellular while a connection manager holds an IPv6 default');
    assert.deepEqual(v6only.egress, { v4: null, v6: WLAN0 });
    const unreachable: RouteMsg = { family: 4, table: 254, type: RTN.UNREACHABLE, protocol: 4, scope: 0, dstLen: 0 };
    const k = kernel({ wifiDown: true, drop: isDefaultOn(WWAN0), add: [unreachable] });
    assert.ok(mainHoldsDefault(k.routes));
    const w = world(k);
    assert.deepEqual(fallbackRules(w.desired.rules), [], 'an administrator\'s unreachable default stays in force');
    assert.deepEqual(w.egress, { v4: null, v6: null });
  });

  it('no active uplink the Internet lists: no rule (connects fail with ENETUNREACH, as without Waymark)', () => {
    const k = kernel({ wifiDown: true, drop: isDefaultOn(WWAN0) });
    const noCell = { ...k, links: k.links.filter((l) => l.index !== WWAN0) };
    const w = world(noCell);
    assert.deepEqual(w.fallback, {});
    assert.deepEqual(fallbackRules(w.desired.rules), []);
    assert.deepEqual(w.egress, { v4: null, v6: null });
  });
});

describe('the fallback rule on the wire and in the reconciler', () => {
  const rule: RuleMsg = { family: 4, priority: PRIO_FALLBACK, protocol: RTPROT_WAYMARK, action: FR_ACT.TO_TBL, table: cellTable, srcLen: 0, dstLen: 0 };

  it('encodes a 32-bit priority past main\'s, and decodes to the same rule (no churn)', () => {
    assert.ok(PRIO_FALLBACK > 32767 && PRIO_FALLBACK > PRIO_MAX, 'after main (32766) and default (32767)');
    const bytes = encodeRule(rule);
    // struct fib_rule_hdr (12 bytes), then FRA_PRIORITY (type 6) with the u32.
    assert.equal(bytes.readUInt8(0), 2, 'AF_INET');
    assert.equal(bytes.readUInt8(4), 252, 'table id past 255: RT_TABLE_COMPAT in the header, the real one in FRA_TABLE');
    assert.equal(bytes.readUInt8(7), FR_ACT.TO_TBL);
    assert.deepEqual([bytes.readUInt16LE(12), bytes.readUInt16LE(14), bytes.readUInt32LE(16)], [8, 6, PRIO_FALLBACK]);
    const back = decodeRule({ type: RTM.NEWRULE, flags: 0, seq: 0, pid: 0, body: bytes });
    assert.ok(back);
    assert.deepEqual([back.priority, back.table, back.protocol, back.action], [PRIO_FALLBACK, cellTable, RTPROT_WAYMARK, FR_ACT.TO_TBL]);
    assert.ok(isEmpty(plan({ rules: [rule], routes: [] }, [back], [])));
  });

  it('is ours (a clean stop removes it); a neighbour\'s rule at the same priority is not', () => {
    assert.ok(isOwnRule(rule));
    const neighbour: RuleMsg = { ...rule, protocol: 4, table: 100 };
    assert.ok(!isOwnRule(neighbour));
    const cleanup = plan({ rules: [], routes: [] }, [rule, neighbour], []);
    assert.deepEqual(cleanup.delRules, [rule]);
  });
});
