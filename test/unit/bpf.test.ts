/**
 * src/backstop/bpf.ts against native/include/waymark_bpf.h and native/bpf/waymark.bpf.c: the
 * constants, struct sizes and offsets (computed from the header with C's layout rules), each
 * map's key/value sizes and limits; and the pure encoders/decoders.
 */
import { MAX_KERNEL_BUDGETS } from '../../src/accounting/service.js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import * as B from '../../src/backstop/bpf.js';
import * as D from '../../src/backstop/desired.js';
import { parsePrefix, type Prefix } from '../../src/net/prefix.js';
import { PACKAGE_ROOT } from '../../src/version.js';

const header = readFileSync(join(PACKAGE_ROOT, 'native/include/waymark_bpf.h'), 'utf8');
const program = readFileSync(join(PACKAGE_ROOT, 'native/bpf/waymark.bpf.c'), 'utf8');
const defines = new Map([...header.matchAll(/#define (WM_\w+) (0x[0-9a-f]+|\d+)u?/g)].map((m) => [m[1] ?? '', Number(m[2])]));

interface Layout {
  size: number;
  align: number;
  offsets: Map<string, number>;
}

const PRIMITIVES: Record<string, number> = { __u8: 1, __u16: 2, __u32: 4, __u64: 8, __s64: 8, int: 4 };

/** C layout of the header's structs (natural alignment, as clang and gcc do for these types). */
function layouts(): Map<string, Layout> {
  const out = new Map<string, Layout>();
  for (const m of header.matchAll(/struct (\w+) \{([^}]*)\};/g)) {
    const body = (m[2] ?? '').replace(/\/\*[\s\S]*?\*\//g, '');
    let off = 0;
    let align = 1;
    const offsets = new Map<string, number>();
    for (const decl of body.split(';').map((d) => d.trim()).filter((d) => d !== '')) {
      const f = /^(struct \w+|\w+) (\w+)(?:\[(\d+)\])?$/.exec(decl);
      assert.ok(f, `cannot parse field "${decl}"`);
      const type = f[1] ?? '';
      const inner = type.startsWith('struct ') ? out.get(type.slice(7)) : undefined;
      const size = inner?.size ?? PRIMITIVES[type];
      assert.ok(size !== undefined, `unknown type ${type}`);
      const a = inner?.align ?? size;
      off = Math.ceil(off / a) * a;
      offsets.set(f[2] ?? '', off);
      off += size * Number(f[3] ?? 1);
      align = Math.max(align, a);
    }
    out.set(m[1] ?? '', { size: Math.ceil(off / align) * align, align, offsets });
  }
  return out;
}

function sizeOf(type: string, structs: Map<string, Layout>): number {
  const t = type.trim();
  if (t.startsWith('struct ')) {
    const l = structs.get(t.slice(7));
    assert.ok(l, `unknown ${t}`);
    return l.size;
  }
  const s = PRIMITIVES[t];
  assert.ok(s !== undefined, `unknown type ${t}`);
  return s;
}

describe('waymark_bpf.h ⇄ src/backstop/bpf.ts', () => {
  const structs = layouts();

  it('constants', () => {
    const ts: Record<string, number> = {
      WM_DENY_ALL: B.WM_DENY_ALL, WM_T_SET: B.WM_T_SET, WM_T_DNS_SHIFT: B.WM_T_DNS_SHIFT, WM_T_DNS_MASK: B.WM_T_DNS_MASK, WM_MAX_DEPTH: B.WM_MAX_DEPTH, WM_DIR_TX: B.WM_DIR_TX, WM_DIR_RX: B.WM_DIR_RX,
      WM_DIR_TX_DROPPED: B.WM_DIR_TX_DROPPED, WM_T_BUDGET: B.WM_T_BUDGET, WM_APP_ANY: B.WM_APP_ANY, WM_BUDGETS_MAX: B.MAPS.budgetLimit.max,
      WM_CGROUPS_MAX: B.MAPS.cgroups.max, WM_UIDS_MAX: B.MAPS.uids.max, WM_IFSLOT_MAX: B.MAPS.ifslot.max,
      WM_DST_MAX: B.MAPS.dst4.max, WM_USAGE_MAX: B.MAPS.usage.max,
      WM_T_ASK: B.WM_T_ASK, WM_EVENTS_SIZE: B.MAPS.events.max, WM_ASK_SEEN_MAX: B.MAPS.askSeen.max, WM_ASK_QUIET_NS: B.WM_ASK_QUIET_NS,
      WM_EV_SENDMSG: B.WM_EV_SENDMSG, WM_EV_DENIED: B.WM_EV_DENIED, WM_EV_PENDING: B.WM_EV_PENDING, WM_EV_UID: B.WM_EV_UID,
    };
    for (const [k, v] of Object.entries(ts)) assert.equal(defines.get(k), v, k);
    assert.equal(B.MAPS.dst6.max, B.MAPS.dst4.max);
    assert.equal(B.MAPS.budgetUsed.max, B.MAPS.budgetLimit.max);
    assert.equal(MAX_KERNEL_BUDGETS, B.MAPS.budgetLimit.max, 'the accounting bounds its budgets by the map');
    // The daemon's pure side (desired.ts) writes the same flag bits.
    assert.deepEqual([D.WM_T_SET, D.WM_T_ASK, D.WM_T_BUDGET, D.WM_T_DNS_SHIFT, D.WM_DENY_ALL], [B.WM_T_SET, B.WM_T_ASK, B.WM_T_BUDGET, B.WM_T_DNS_SHIFT, B.WM_DENY_ALL]);
    // The destination value's packing (WM_DST_SLOT / WM_DST_DEST) and the index's limit.
    assert.match(header, /#define WM_DST_SLOT\(v\) \(\(v\) & 0xffu\)/);
    assert.match(header, /#define WM_DST_DEST\(v\) \(\(\(v\) >> 8\) & 0xffu\)/);
    assert.equal(D.MAX_DESTINATION_INDEX, 255);
    // A ring buffer's size is a power of 2 (and of pages).
    assert.equal(B.MAPS.events.max & (B.MAPS.events.max - 1), 0);
    assert.equal(B.MAPS.events.max % 4096, 0);
  });

  it('struct offsets', () => {
    const pairs: [string, Record<string, number>][] = [
      ['wm_treatment', B.OFFSETS.treatment], ['wm_cgroup', B.OFFSETS.cgroup], ['wm_dst4_key', B.OFFSETS.dst4Key],
      ['wm_dst6_key', B.OFFSETS.dst6Key], ['wm_conf', B.OFFSETS.conf], ['wm_usage_key', B.OFFSETS.usageKey],
      ['wm_usage_val', B.OFFSETS.usageVal], ['wm_connect_event', B.OFFSETS.connectEvent], ['wm_ask_key', B.OFFSETS.askKey],
      ['wm_ask_stats', B.OFFSETS.askStats], ['wm_budget_key', B.OFFSETS.budgetKey],
    ];
    for (const [name, ts] of pairs) {
      const l = structs.get(name);
      assert.ok(l, name);
      assert.deepEqual(Object.fromEntries(l.offsets), ts, name);
    }
    assert.equal(structs.get('wm_connect_event')?.size, B.CONNECT_EVENT_SIZE);
    assert.equal(structs.get('wm_usage_key')?.size, 24);
    assert.equal(structs.get('wm_conf')?.size, 40);
  });

  it("every map of the program: name, key and value sizes, max_entries", () => {
    const maps = new Map<string, { key: number; value: number; max: number }>();
    for (const m of program.matchAll(/struct \{([^}]*)\} (\w+) SEC\("\.maps"\);/g)) {
      const body = m[1] ?? '';
      // A ring buffer has neither key nor value (0 here).
      const key = /__type\(key, ([^)]+)\)/.exec(body)?.[1];
      const value = /__type\(value, ([^)]+)\)/.exec(body)?.[1];
      const maxText = /__uint\(max_entries, (\w+)\)/.exec(body)?.[1];
      const max = maxText === undefined ? 0 : /^\d+$/.test(maxText) ? Number(maxText) : (defines.get(maxText) ?? NaN);
      maps.set(m[2] ?? '', { key: key === undefined ? 0 : sizeOf(key, structs), value: value === undefined ? 0 : sizeOf(value, structs), max });
    }
    for (const [, spec] of Object.entries(B.MAPS)) {
      const c = maps.get(spec.name);
      assert.ok(c, `${spec.name} is not in waymark.bpf.c`);
      assert.deepEqual(c, { key: spec.key, value: spec.value, max: spec.max }, spec.name);
      assert.ok(spec.name.length <= 15, `${spec.name}: BPF object names hold 15 characters`);
    }
    // Only wm_sk (the compat programs' private per-socket storage) is not mirrored.
    assert.deepEqual([...maps.keys()].filter((n) => !Object.values(B.MAPS).some((s) => s.name === n)), ['wm_sk']);
  });
});

describe('encoders and decoders', () => {
  const le = endianness() === 'LE';

  it('treatments round-trip, deny slots become bits', () => {
    const t: B.Treatment = { app: 7, mark: 0x03000000, deny: [1, 30], decides: true };
    const b = B.encodeTreatment(t);
    assert.equal(b.length, 16);
    if (le) assert.equal(b.toString('hex'), '07000000' + '00000003' + '02000040' + '01000000');
    assert.deepEqual(B.decodeTreatment(b), t);
    assert.deepEqual(B.decodeTreatment(B.encodeTreatment({ ...t, deny: 'all', decides: false })), { ...t, deny: 'all', decides: false });
    // The DNS slot rides in the flags.
    assert.deepEqual(B.decodeTreatment(B.encodeTreatment({ ...t, dnsSlot: 3 })), { ...t, dnsSlot: 3 });
    assert.throws(() => B.encodeTreatment({ ...t, dnsSlot: 31 }), RangeError);
    assert.equal(B.denyBits([]), 0);
    assert.equal(B.denyBits('all'), 0x80000000);
    assert.throws(() => B.encodeTreatment({ ...t, deny: [0] }), RangeError);
    assert.throws(() => B.encodeTreatment({ ...t, deny: [31] }), RangeError);
    assert.throws(() => B.encodeTreatment({ ...t, mark: 0x1 }), /outside MARK_MASK/);
  });

  it('ask rides in the flags (WM_T_ASK), absent when clear', () => {
    const t: B.Treatment = { app: 3, mark: 0, deny: [], decides: true, ask: true };
    const b = B.encodeTreatment(t);
    if (le) assert.equal(b.readUInt32LE(12), B.WM_T_SET | B.WM_T_ASK);
    assert.deepEqual(B.decodeTreatment(b), t);
    assert.deepEqual(B.decodeTreatment(B.encodeTreatment({ ...t, ask: false })), { app: 3, mark: 0, deny: [], decides: true });
    assert.deepEqual(B.decodeTreatment(B.encodeTreatment({ ...t, dnsSlot: 2 })), { ...t, dnsSlot: 2 });
  });

  /** A wm_connect_event as the BPF program writes it, built by hand (little-endian hosts). */
  function event(f: { cgroup: bigint; ns: bigint; app: number; uid: number; pid: number; flags: number; family: number; protocol: number; port: number; addr: number[]; comm: string }): Buffer {
    const b = Buffer.alloc(72, 0xee); // stale ring memory where the program writes nothing
    b.writeBigUInt64LE(f.cgroup, 0);
    b.writeBigUInt64LE(f.ns, 8);
    b.writeUInt32LE(f.app, 16);
    b.writeUInt32LE(f.uid, 20);
    b.writeUInt32LE(f.pid, 24);
    b.writeUInt32LE(f.flags, 28);
    b.writeUInt8(f.family, 32);
    b.writeUInt8(f.protocol, 33);
    b.writeUInt16LE(f.port, 34);
    b.fill(0, 36, 68);
    Buffer.from(f.addr).copy(b, 36);
    Buffer.from(f.comm, 'utf8').copy(b, 52, 0, 16);
    b.writeUInt32LE(0, 68);
    return b;
  }

  it('connect events decode: IPv4 TCP connect from the cgroup\'s entry', { skip: !le }, () => {
    const b = event({ cgroup: 0x1_0000_0042n, ns: 123_456_789_012n, app: 7, uid: 1000, pid: 4242, flags: 0, family: 4, protocol: 6, port: 443, addr: [10, 90, 1, 2], comm: 'goclient' });
    assert.deepEqual(B.decodeConnectEvent(b), {
      cgroupId: 0x1_0000_0042n, monotonicNs: 123_456_789_012n, app: 7, uid: 1000, pid: 4242, comm: 'goclient',
      family: 4, address: '10.90.1.2', port: 443, proto: 'tcp', via: 'connect', denied: false, source: 'cgroup',
    });
  });

  it('connect events decode: IPv6 UDP send, denied, from a pending; a uid\'s; other protocols; a 16-byte name', { skip: !le }, () => {
    const v6 = [0xfd, 0, 0, 0x90, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const e = B.decodeConnectEvent(event({ cgroup: 9n, ns: 1n, app: 0, uid: 65534, pid: 1, flags: B.WM_EV_SENDMSG | B.WM_EV_DENIED | B.WM_EV_PENDING, family: 6, protocol: 17, port: 53, addr: v6, comm: 'a-sixteen-chars!' }));
    assert.deepEqual({ ...e }, {
      cgroupId: 9n, monotonicNs: 1n, app: 0, uid: 65534, pid: 1, comm: 'a-sixteen-chars!',
      family: 6, address: 'fd00:90:1::2', port: 53, proto: 'udp', via: 'sendmsg', denied: true, source: 'pending',
    });
    const u = B.decodeConnectEvent(event({ cgroup: 9n, ns: 1n, app: 0, uid: 5, pid: 1, flags: B.WM_EV_UID, family: 4, protocol: 1, port: 0, addr: [1, 2, 3, 4], comm: '' }));
    assert.equal(u.source, 'uid');
    assert.equal(u.proto, 1);
    assert.equal(u.comm, '');
  });

  it('connect events of another size or family are refused', { skip: !le }, () => {
    const ok = event({ cgroup: 1n, ns: 1n, app: 0, uid: 0, pid: 1, flags: 0, family: 4, protocol: 6, port: 1, addr: [1, 1, 1, 1], comm: 'x' });
    assert.throws(() => B.decodeConnectEvent(ok.subarray(0, 64)), RangeError);
    assert.throws(() => B.decodeConnectEvent(Buffer.concat([ok, Buffer.alloc(8)])), RangeError);
    const bad = Buffer.from(ok);
    bad.writeUInt8(2, 32); // AF_INET, not the 4 the program writes
    assert.throws(() => B.decodeConnectEvent(bad), /family 2/);
  });

  it('ask stats are summed over the per-CPU values', { skip: !le }, () => {
    const cpus = 2;
    const v = Buffer.alloc(24 * cpus);
    v.writeBigUInt64LE(5n, 0);
    v.writeBigUInt64LE(1n, 8);
    v.writeBigUInt64LE(2n, 16);
    v.writeBigUInt64LE(7n, 24);
    v.writeBigUInt64LE(0n, 32);
    v.writeBigUInt64LE(3n, 40);
    assert.deepEqual(B.decodeAskStats(v, cpus), { reported: 12n, dropped: 1n, suppressed: 5n });
    assert.throws(() => B.decodeAskStats(v, 3), RangeError);
  });

  it('a cgroup value holds self then pending', () => {
    const self: B.Treatment = { app: 1, mark: 0x01000000, deny: [], decides: true };
    const pending: B.Treatment = { app: 2, mark: 0x22000000, deny: [2], decides: true };
    const b = B.encodeCgroupValue(self, pending);
    assert.equal(b.length, 32);
    assert.deepEqual(B.decodeTreatment(b.subarray(16)), pending);
    assert.deepEqual(B.decodeCgroupValue(b), { self, pending });
  });

  it('cgroup ids are u64', () => {
    const id = 0x1234_5678_9abc_def0n;
    assert.equal(B.decodeCgroupId(B.encodeCgroupId(id)), id);
    assert.throws(() => B.encodeCgroupId(-1n), RangeError);
    assert.throws(() => B.encodeCgroupId(1n << 64n), RangeError);
  });

  it('destination keys: prefix length then masked network bytes', () => {
    const p4 = parsePrefix('10.1.0.0/16');
    assert.ok(typeof p4 !== 'string');
    // parsePrefix refuses host bits; a raw prefix with them is masked by the encoder.
    const raw: Prefix = { family: 4, bytes: Uint8Array.from([10, 1, 2, 3]), len: 16 };
    for (const p of [p4, raw]) {
      const { map, key } = B.encodeDestination(p);
      assert.equal(map, 'wm_dst4');
      assert.equal(key.length, 8);
      assert.deepEqual([...key.subarray(4)], [10, 1, 0, 0]);
      if (le) assert.deepEqual([...key.subarray(0, 4)], [16, 0, 0, 0]);
    }
    const p6 = parsePrefix('2001:db8::/32');
    assert.ok(typeof p6 !== 'string');
    const e6 = B.encodeDestination(p6);
    assert.equal(e6.map, 'wm_dst6');
    assert.equal(e6.key.length, 20);
    assert.equal(e6.key.subarray(4, 8).toString('hex'), '20010db8');
    assert.throws(() => B.encodeDestination({ family: 4, bytes: new Uint8Array(4), len: 33 }), RangeError);
  });

  it('conf round-trips; slots are checked', () => {
    const c: B.Conf = { netnsCookie: 4097n, mainSlot4: 3, mainSlot6: 0, askQuietNs: 5_000_000n, dst4Count: 12, dst6Count: 0, budgetSlots: [1, 30] };
    const b = B.encodeConf(c);
    if (le) assert.deepEqual([b.readUInt32LE(24), b.readUInt32LE(28), b.readUInt32LE(32) >>> 0], [12, 0, ((1 << 1) | (1 << 30)) >>> 0]);
    assert.deepEqual(B.decodeConf(b), c);
    assert.throws(() => B.encodeConf({ ...c, mainSlot4: 31 }), RangeError);
    assert.throws(() => B.encodeConf({ ...c, budgetSlots: [0] }), RangeError);
    assert.throws(() => B.encodeConf({ ...c, dst4Count: -1 }), RangeError);
  });

  it('destination values: the slot in the low byte, the destination index in the next', () => {
    const b = B.encodeDestinationValue({ slot: 3, dest: 7 });
    if (le) assert.equal(b.readUInt32LE(0), 3 | (7 << 8));
    assert.deepEqual(B.decodeDestinationValue(b), { slot: 3, dest: 7 });
    assert.deepEqual(B.decodeDestinationValue(B.encodeDestinationValue({ slot: 0, dest: 255 })), { slot: 0, dest: 255 });
    assert.throws(() => B.encodeDestinationValue({ slot: 1, dest: 256 }), RangeError);
    assert.throws(() => B.encodeDestinationValue({ slot: 31, dest: 1 }), RangeError);
  });

  it('budget keys: an app key or WM_APP_ANY, then the slot; u64 values', () => {
    const k = B.encodeBudgetKey(9, 2);
    assert.equal(k.length, 8);
    if (le) assert.equal(k.toString('hex'), '09000000' + '02000000');
    assert.deepEqual(B.decodeBudgetKey(k), { app: 9, slot: 2 });
    const any = B.encodeBudgetKey('any', 1);
    assert.equal(any.readUInt32LE(0), B.WM_APP_ANY);
    assert.deepEqual(B.decodeBudgetKey(any), { app: 'any', slot: 1 });
    assert.throws(() => B.encodeBudgetKey(0, 1), RangeError);
    assert.throws(() => B.encodeBudgetKey(B.WM_APP_ANY, 1), RangeError);
    assert.throws(() => B.encodeBudgetKey(3, 0), RangeError);
    assert.equal(B.decodeU64(B.encodeU64(0xffff_ffff_ffffn)), 0xffff_ffff_ffffn);
    assert.throws(() => B.encodeU64(-1n), RangeError);
  });

  it('a treatment\'s budget flag (WM_T_BUDGET) round-trips, absent when clear', () => {
    const t: B.Treatment = { app: 4, mark: 0, deny: [], decides: false, budget: true };
    const b = B.encodeTreatment(t);
    if (le) assert.equal(b.readUInt32LE(12), B.WM_T_BUDGET);
    assert.deepEqual(B.decodeTreatment(b), t);
    assert.deepEqual(B.decodeTreatment(B.encodeTreatment({ ...t, budget: false })), { app: 4, mark: 0, deny: [], decides: false });
  });

  it('usage rows are summed over the per-CPU values; the key has cgroup, app, uid, slot, dir, dest', () => {
    const key = B.encodeUsageKey({ cgroup: 0x1_0000_0007n, app: 0, uid: 1000, slot: 4, dir: 'txDropped', dest: 3 });
    assert.equal(key.length, 24);
    assert.deepEqual([key[16], key[17], key[18]], [4, B.WM_DIR_TX_DROPPED, 3]);
    assert.deepEqual([...key.subarray(19)], [0, 0, 0, 0, 0]);
    const cpus = 3;
    const value = Buffer.alloc(16 * cpus);
    for (let i = 0; i < cpus; i++) {
      value.writeBigUInt64LE(BigInt(100 * (i + 1)), i * 16);
      value.writeBigUInt64LE(BigInt(i + 1), i * 16 + 8);
    }
    if (le) {
      assert.equal(key.readBigUInt64LE(0), 0x1_0000_0007n);
      assert.equal(key.readUInt32LE(12), 1000);
      assert.deepEqual(B.decodeUsage(key, value, cpus), { cgroup: 0x1_0000_0007n, app: 0, uid: 1000, slot: 4, dir: 'txDropped', dest: 3, bytes: 600n, packets: 6n });
      const rx = B.encodeUsageKey({ app: 9, slot: 1, dir: 'rx' });
      assert.deepEqual(B.decodeUsage(rx, value, cpus), { cgroup: 0n, app: 9, uid: 0, slot: 1, dir: 'rx', dest: 0, bytes: 600n, packets: 6n });
    }
    assert.throws(() => B.decodeUsage(key, value, 2), RangeError);
    const bad = Buffer.from(key);
    bad[17] = 3;
    assert.throws(() => B.decodeUsage(bad, value, cpus), /direction 3/);
  });
});
