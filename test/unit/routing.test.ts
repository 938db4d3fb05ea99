import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  dnsTableForSlot, isOurTable, MARK_MASK, markForSlot, PRIO_DESTINATION, PRIO_DNS, PRIO_MARK, PRIO_OIF, PRIO_SOFT_MARK, PRIO_SOURCE, RTPROT_WAYMARK,
  softMarkForSlot, TABLE_BASE,
} from '../../src/constants.js';
import { decodeRdnss, decodeRule, encodeRule, FR_ACT, RTM, RTN, type RouteMsg, type RuleMsg } from '../../src/netlink/message.js';
import { UPLINK_CHAINS, uplinkRules } from '../../src/nftables/ruleset.js';
import { NftTable } from '../../src/nftables/table.js';
import { describeRule } from '../../src/routing/describe.js';
import { withLearnedHosts } from '../../src/destination/destination.js';
import { formatPrefix } from '../../src/net/prefix.js';
import { desiredState } from '../../src/routing/desired.js';
import { isEmpty, plan } from '../../src/routing/reconcile.js';
import { uplinkStates } from '../../src/uplink/state.js';
import { exampleConfig, labKernel, labStates } from '../support/fixture.js';

const config = exampleConfig();
const lab = (o: { wlan0Flags?: number } = {}) => labKernel(o.wlan0Flags === undefined ? {} : { wlan0: o.wlan0Flags });
const { slots } = labStates(config);
const rulesText = (rules: readonly RuleMsg[]): string[] => rules.map(describeRule);

describe('desired routing state', () => {
  const states = uplinkStates(config.uplinks, slots, lab());
  const want = desiredState(states, config.destinations);

  it('finds each uplink, its addresses and its gateway (kernel first, then config)', () => {
    const byName = new Map(states.map((s) => [s.spec.name, s]));
    assert.equal(byName.get('wifi')?.status, 'active');
    assert.deepEqual(byName.get('wifi')?.families.map((f) => [f.family, f.gateway, f.gatewaySource]), [[4, '192.168.50.1', 'kernel'], [6, 'fd00:50::1', 'kernel']]);
    assert.deepEqual(byName.get('mms')?.families.map((f) => f.gatewaySource), ['config', 'config']);
    assert.deepEqual(byName.get('wifi')?.families.find((f) => f.family === 6)?.addresses, ['fd00:50::2/64'], 'link-local excluded');
  });

  it('marks and device bindings select each uplink table', () => {
    const text = rulesText(want.rules);
    const wifi = slots.get('wifi') ?? 0;
    const mark = `0x${(wifi << 24).toString(16)}/0x${MARK_MASK.toString(16)}`;
    assert.ok(text.includes(`ip -4 rule pref ${PRIO_MARK} fwmark ${mark} lookup ${TABLE_BASE + wifi} proto ${RTPROT_WAYMARK}`), text.join('\n'));
    assert.ok(text.includes(`ip -6 rule pref ${PRIO_OIF} oif wwan1 lookup ${TABLE_BASE + (slots.get('mms') ?? 0)} proto ${RTPROT_WAYMARK}`));
    const soft = `0x${softMarkForSlot(wifi).toString(16)}/0x${MARK_MASK.toString(16)}`;
    assert.ok(text.includes(`ip -4 rule pref ${PRIO_SOFT_MARK} fwmark ${soft} lookup ${TABLE_BASE + wifi} proto ${RTPROT_WAYMARK}`), text.join('\n'));
  });

  it('source rules only for addresses held by one uplink', () => {
    const src = want.rules.filter((r) => r.priority === PRIO_SOURCE).map((r) => r.src).sort();
    assert.deepEqual(src, ['10.8.0.2', '192.168.50.2', 'fd00:50::2', 'fd00:8::2']);
  });

  it('routes destination prefixes by the uplinks that reach them, and blocks the rest', () => {
    const dest = want.rules.filter((r) => r.priority === PRIO_DESTINATION).map((r) => `${r.dst}/${r.dstLen}->${r.table}`).sort();
    const mms = TABLE_BASE + (slots.get('mms') ?? 0);
    const vpn = TABLE_BASE + (slots.get('office-vpn') ?? 0);
    assert.deepEqual(dest, [`10.200.0.0/24->${mms}`, `172.16.5.0/24->${vpn}`, `fd00:16:5::/64->${vpn}`, `fd00:200::/64->${mms}`].sort());
    const wifiTable = TABLE_BASE + (slots.get('wifi') ?? 0);
    const inWifi = want.routes.filter((r) => r.table === wifiTable);
    assert.ok(inWifi.some((r) => r.type === RTN.UNREACHABLE && r.dst === '10.200.0.0'), 'wifi cannot reach the MMSC: fail fast');
    assert.ok(inWifi.some((r) => r.type === RTN.UNICAST && r.dstLen === 0 && r.gateway === '192.168.50.1'));
    const mmsDefault = want.routes.filter((r) => r.table === mms && r.dstLen === 0);
    assert.deepEqual(mmsDefault.map((r) => r.type), [RTN.UNREACHABLE, RTN.UNREACHABLE], 'the MMS APN does not reach the Internet');
  });

  it('every table ends in a default for both families', () => {
    for (const s of states) {
      const defaults = want.routes.filter((r) => r.table === s.table && r.dstLen === 0).map((r) => r.family).sort();
      assert.deepEqual(defaults, [4, 6], s.spec.name);
    }
  });

  it('a link that goes down loses its routes and lookups; its mark then fails fast', () => {
    const down = desiredState(uplinkStates(config.uplinks, slots, lab({ wlan0Flags: 0 })), config.destinations);
    const wifi = TABLE_BASE + (slots.get('wifi') ?? 0);
    assert.equal(down.routes.filter((r) => r.table === wifi).length, 0);
    const wifiRules = down.rules.filter((r) => r.table === wifi || r.fwmark === (slots.get('wifi') ?? 0) << 24);
    assert.deepEqual(wifiRules.map((r) => [r.priority, r.action]), [[PRIO_MARK, FR_ACT.UNREACHABLE], [PRIO_MARK, FR_ACT.UNREACHABLE]]);
    const softRules = down.rules.filter((r) => r.fwmark === softMarkForSlot(slots.get('wifi') ?? 0));
    assert.deepEqual(softRules.map((r) => [r.priority, r.action]), [[PRIO_SOFT_MARK, FR_ACT.UNREACHABLE], [PRIO_SOFT_MARK, FR_ACT.UNREACHABLE]]);
  });
});

describe('DNS of pinned sockets', () => {
  const states = uplinkStates(config.uplinks, slots, lab());
  const want = desiredState(states, config.destinations);

  it('port 53 of an uplink with DNS servers goes by a table with its link and a default, before the oif rule', () => {
    assert.ok(PRIO_DNS < PRIO_OIF, 'the library binds the query to the device: the DNS rule must come first');
    const mms = slots.get('mms') ?? 0;
    const mark = `0x${markForSlot(mms).toString(16)}/0x${MARK_MASK.toString(16)}`;
    const text = rulesText(want.rules.filter((r) => r.priority === PRIO_DNS));
    for (const proto of ['udp', 'tcp']) {
      assert.ok(text.includes(`ip -4 rule pref ${PRIO_DNS} fwmark ${mark} ipproto ${proto} dport 53 lookup ${dnsTableForSlot(mms)} proto ${RTPROT_WAYMARK}`), text.join('\n'));
    }
    // The MMS APN has only an IPv4 server: no IPv6 DNS table (nothing would redirect the query).
    assert.ok(!text.some((l) => l.startsWith('ip -6') && l.includes(`lookup ${dnsTableForSlot(mms)}`)), text.join('\n'));
    const table = want.routes.filter((r) => r.table === dnsTableForSlot(mms));
    assert.ok(isOurTable(dnsTableForSlot(mms)));
    assert.ok(table.some((r) => r.family === 4 && r.dstLen === 0 && r.type === RTN.UNICAST && r.gateway === '10.64.0.1'), 'a default, unlike the MMS table');
    assert.ok(table.some((r) => r.family === 4 && r.dst === '10.64.0.0' && r.dstLen === 24));
    // Wi-Fi has no DNS servers in the example: no DNS rule at all.
    assert.ok(!want.rules.some((r) => r.priority === PRIO_DNS && r.fwmark === markForSlot(slots.get('wifi') ?? 0)));
  });

  it('a rule with ipproto and dport survives the netlink codec (so reconcile does not churn)', () => {
    const r = want.rules.find((x) => x.priority === PRIO_DNS);
    assert.ok(r);
    const bytes = encodeRule(r);
    const back = decodeRule({ type: RTM.NEWRULE, flags: 0, seq: 0, pid: 0, body: bytes });
    assert.deepEqual(back && { ipProto: back.ipProto, dport: back.dport, fwmark: back.fwmark, table: back.table }, { ipProto: r.ipProto, dport: 53, fwmark: r.fwmark, table: r.table });
    assert.ok(isEmpty(plan({ rules: [r], routes: [] }, back ? [back] : [], [])));
  });
});

describe('reverse-path marks', () => {
  it('packets for this host arriving on an active uplink get its mark, in our bits only, before routing', () => {
    const table = new NftTable(UPLINK_CHAINS);
    table.contribute('uplinks', () => uplinkRules([{ name: 'cellular', ifname: 'wwan0', mark: markForSlot(2) }, { name: 'wifi', ifname: 'wlan0' }]));
    const text = table.render().body;
    assert.match(text, /chain rpath \{\n {4}type filter hook prerouting priority -300; policy accept;\n {4}iifname "wwan0" fib daddr type local meta mark set meta mark and 0xc0ffffff or 0x02000000\n {2}\}/);
    assert.doesNotMatch(text, /iifname "wlan0" fib/, 'an uplink that is not active gets no mark');
  });
});

describe('router-announced DNS', () => {
  it('reads the RDNSS option of an RTM_NEWNDUSEROPT, as the kernel sends it', () => {
    // Captured from a real router advertisement (test/fixtures/send_ra.py) on this kernel.
    const body = Buffer.from('0a0028000200000086000000000000001905000000000258fd000050000000000000000000000001fd000050000000000000000000000053', 'hex');
    const m = { type: RTM.NEWNDUSEROPT, flags: 0, seq: 0, pid: 0, body };
    assert.deepEqual(decodeRdnss(m), { ifindex: 2, servers: ['fd00:50::1', 'fd00:50::53'], lifetimeSec: 600 });
    assert.equal(decodeRdnss({ ...m, body: body.subarray(0, 20) }), undefined, 'truncated');
    assert.equal(decodeRdnss({ ...m, type: RTM.NEWLINK }), undefined);
  });

  it('an uplink without configured DNS uses what its link announced', () => {
    const states = uplinkStates(config.uplinks, slots, { ...labKernel(), linkDns: new Map([[2, ['fd00:50::1']], [4, ['fd00:64::99']]]) });
    const byName = new Map(states.map((s) => [s.spec.name, s]));
    assert.deepEqual([byName.get('wifi')?.dns, byName.get('wifi')?.dnsSource], [['fd00:50::1'], 'link']);
    assert.deepEqual([byName.get('mms')?.dns, byName.get('mms')?.dnsSource], [['10.64.0.1'], 'config'], 'configured DNS wins');
    assert.deepEqual([byName.get('cellular')?.dns, byName.get('cellular')?.dnsSource], [['10.64.0.1', 'fd00:64::1'], 'config']);
    const silent = uplinkStates(config.uplinks, slots, labKernel()).find((s) => s.spec.name === 'wifi');
    assert.deepEqual([silent?.dns, silent?.dnsSource], [[], 'none'], 'neither configured nor announced');
  });
});

describe('learnt addresses of domain destinations', () => {
  it('are routed like their destination, unless a configured prefix already covers them', () => {
    const configured = exampleConfig().destinations;
    const home = { name: 'home', prefixes: [], domains: ['example.net'], via: ['wifi'] };
    const dests = withLearnedHosts([home, ...configured], new Map([['home', ['198.51.100.10', '2001:db8:100::10', '10.200.0.10']], ['internet', ['192.0.2.1']]]));
    assert.deepEqual(dests.find((d) => d.name === 'home')?.prefixes.map(formatPrefix), ['198.51.100.10/32', '2001:db8:100::10/128'], 'the MMS prefix keeps 10.200.0.10');
    assert.deepEqual(dests.find((d) => d.name === 'internet')?.prefixes, []);
    const { states: st } = labStates(config);
    const rules = desiredState(st, dests).rules.filter((r) => r.priority === PRIO_DESTINATION && r.dst === '198.51.100.10');
    assert.deepEqual(rules.map((r) => [r.dstLen, r.table]), [[32, TABLE_BASE + (slots.get('wifi') ?? 0)]]);
  });
});

describe('reconcile plan', () => {
  const want = desiredState(uplinkStates(config.uplinks, slots, lab()), config.destinations);
  const neighbourRule: RuleMsg = { family: 4, priority: PRIO_MARK, action: FR_ACT.TO_TBL, table: 52, protocol: 4, srcLen: 0, dstLen: 0, fwmark: 0x80000, fwmask: 0xff0000 };
  const neighbourRoute: RouteMsg = { family: 4, table: 52, type: RTN.UNICAST, protocol: 4, scope: 0, dstLen: 0, oif: 2 };

  it('adds everything on an empty kernel and nothing once applied', () => {
    const first = plan(want, [neighbourRule], [neighbourRoute]);
    assert.equal(first.addRules.length, want.rules.length);
    assert.equal(first.addRoutes.length, want.routes.length);
    assert.deepEqual([first.delRules, first.delRoutes], [[], []], 'never deletes what is not ours');
    // The kernel reports IPv6 routes with metric 1024 and unreachable routes on lo: still equal.
    const observed = want.routes.map((r) => (r.family === 6 ? { ...r, metric: 1024 } : r)).map((r) => (r.type === RTN.UNREACHABLE ? { ...r, oif: 1 } : r));
    assert.ok(isEmpty(plan(want, [...want.rules, neighbourRule], [...observed, neighbourRoute])));
  });

  it('removes duplicates and stale objects of ours only', () => {
    const [r0] = want.rules;
    assert.ok(r0);
    const stale: RuleMsg = { ...r0, priority: PRIO_OIF, oifname: 'gone0', action: FR_ACT.TO_TBL, table: TABLE_BASE + 9 };
    const staleRoute: RouteMsg = { family: 4, table: TABLE_BASE + 9, type: RTN.UNICAST, protocol: RTPROT_WAYMARK, scope: 0, dstLen: 0, oif: 9 };
    const p = plan(want, [...want.rules, r0, stale, neighbourRule], [...want.routes, staleRoute, neighbourRoute]);
    assert.deepEqual(p.delRules, [r0, stale]);
    assert.deepEqual(p.delRoutes, [staleRoute]);
    assert.equal(p.addRules.length + p.addRoutes.length, 0);
  });
});
