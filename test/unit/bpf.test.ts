/**
 * src/backstop/bpf.ts against native/include/waymark_bpf.h and native/bpf/waymark.bpf.c: the
 * constants, struct sizes and offsets (computed from the header with C's layout rules), each
 * map's key/value sizes and limits; and the pure encoders/decoders.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import * as B from '../../src/backstop/bpf.js';
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
      WM_CGROUPS_MAX: B.MAPS.cgroups.max, WM_UIDS_MAX: B.MAPS.uids.max, WM_IFSLOT_MAX: B.MAPS.ifslot.max,
      WM_DST_MAX: B.MAPS.dst4.max, WM_USAGE_MAX: B.MAPS.usage.max,
    };
    for (const [k, v] of Object.entries(ts)) assert.equal(defines.get(k), v, k);
    assert.equal(B.MAPS.dst6.max, B.MAPS.dst4.max);
  });

  it('struct offsets', () => {
    const pairs: [string, Record<string, number>][] = [
      ['wm_treatment', B.OFFSETS.treatment], ['wm_cgroup', B.OFFSETS.cgroup], ['wm_dst4_key', B.OFFSETS.dst4Key],
      ['wm_dst6_key', B.OFFSETS.dst6Key], ['wm_conf', B.OFFSETS.conf], ['wm_usage_key', B.OFFSETS.usageKey],
      ['wm_usage_val', B.OFFSETS.usageVal],
    ];
    for (const [name, ts] of pairs) {
      const l = structs.get(name);
      assert.ok(l, name);
      assert.deepEqual(Object.fromEntries(l.offsets), ts, name);
    }
  });

  it("every map of the program: name, key and value sizes, max_entries", () => {
    const maps = new Map<string, { key: number; value: number; max: number }>();
    for (const m of program.matchAll(/struct \{([^}]*)\} (\w+) SEC\("\.maps"\);/g)) {
      const body = m[1] ?? '';
      const key = /__type\(key, ([^)]+)\)/.exec(body)?.[1] ?? '';
      const value = /__type\(value, ([^)]+)\)/.exec(body)?.[1] ?? '';
      const maxText = /__uint\(max_entries, (\w+)\)/.exec(body)?.[1];
      const max = maxText === undefined ? 0 : /^\d+$/.test(maxText) ? Number(maxText) : (defines.get(maxText) ?? NaN);
      maps.set(m[2] ?? '', { key: sizeOf(key, structs), value: sizeOf(value, structs), max });
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
    const c: B.Conf = { netnsCookie: 4097n, mainSlot4: 3, mainSlot6: 0 };
    assert.deepEqual(B.decodeConf(B.encodeConf(c)), c);
    assert.throws(() => B.encodeConf({ ...c, mainSlot4: 31 }), RangeError);
  });

  it('usage rows are summed over the per-CPU values', () => {
    const key = B.encodeUsageKey(9, 4, 'rx');
    assert.equal(key.length, 8);
    assert.equal(key[4], 4);
    assert.equal(key[5], 1);
    const cpus = 3;
    const value = Buffer.alloc(16 * cpus);
    for (let i = 0; i < cpus; i++) {
      value.writeBigUInt64LE(BigInt(100 * (i + 1)), i * 16);
      value.writeBigUInt64LE(BigInt(i + 1), i * 16 + 8);
    }
    if (le) assert.deepEqual(B.decodeUsage(key, value, cpus), { app: 9, slot: 4, dir: 'rx', bytes: 600n, packets: 6n });
    assert.throws(() => B.decodeUsage(key, value, 2), RangeError);
  });
});
