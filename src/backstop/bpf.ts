/**
 * The app programs' maps (native/bpf/waymark.bpf.c, layout native/include/waymark_bpf.h, design
 * docs/kernel-apps.md) as typed TypeScript: pure encoders/decoders of keys and values, and
 * {@link AppMaps}, one loaded and attached object. test/unit/bpf.test.ts checks the sizes, offsets
 * and constants here against the C header.
 *
 * Integers in map keys and values are in host byte order (the kernel's and the BPF program's),
 * addresses in network order. Cgroup ids and counters are bigint (u64).
 */
import { statSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { MARK_MASK, MAX_SLOTS } from '../constants.js';
import type { Family, Prefix } from '../net/prefix.js';
import { formatAddress, parsePrefix } from '../net/prefix.js';
import { errorMessage } from '../errors.js';
import type { DestinationValue, KernelAppMaps, KernelTreatment, MapsPlan } from './desired.js';
import type { UsageKernel } from '../accounting/service.js';
import { maskBytes } from '../net/prefix.js';
import {
  bpfClose,
  bpfDelete,
  bpfEntries,
  bpfLookup,
  bpfOpen,
  bpfPossibleCpus,
  bpfPrograms,
  bpfRingClose,
  bpfRingConsume,
  bpfRingOpen,
  bpfUpdate,
  BPF_NOEXIST,
  BPF_OPEN_COMPAT,
  watch,
  type BpfHandle,
  type Watcher,
} from '../native/index.js';
import { PACKAGE_ROOT } from '../version.js';

/** The compiled object (make -C native). */
export const BPF_OBJECT_PATH = join(PACKAGE_ROOT, 'native/bpf/waymark.bpf.o');

// Mirrors of waymark_bpf.h.
export const WM_DENY_ALL = 0x80000000;
export const WM_T_SET = 0x1;
export const WM_T_ASK = 0x2;
export const WM_T_BUDGET = 0x4;
export const WM_T_DNS_SHIFT = 8;
export const WM_T_DNS_MASK = 0x3f00;
export const WM_MAX_DEPTH = 16;
export const WM_DIR_TX = 0;
export const WM_DIR_RX = 1;
export const WM_DIR_TX_DROPPED = 2;
/** wm_budget_key.app of an uplink-wide budget. */
export const WM_APP_ANY = 0xffffffff;
export const WM_ASK_QUIET_NS = 1_000_000_000;
export const WM_EV_SENDMSG = 0x1;
export const WM_EV_DENIED = 0x2;
export const WM_EV_PENDING = 0x4;
export const WM_EV_UID = 0x8;

/** Map names and their sizes in bytes (per CPU for wm_usage's value). */
export const MAPS = {
  cgroups: { name: 'wm_cgroups', key: 8, value: 32, max: 65536 },
  uids: { name: 'wm_uids', key: 4, value: 16, max: 4096 },
  ifslot: { name: 'wm_ifslot', key: 4, value: 4, max: 256 },
  dst4: { name: 'wm_dst4', key: 8, value: 4, max: 1024 },
  dst6: { name: 'wm_dst6', key: 20, value: 4, max: 1024 },
  conf: { name: 'wm_conf', key: 4, value: 40, max: 1 },
  usage: { name: 'wm_usage', key: 24, value: 16, max: 16384 },
  budgetLimit: { name: 'wm_budget_limit', key: 8, value: 8, max: 1024 },
  budgetUsed: { name: 'wm_budget_used', key: 8, value: 8, max: 1024 },
  /** The ring buffer of connect reports: no key or value, max is its size in bytes. */
  events: { name: 'wm_events', key: 0, value: 0, max: 131072 },
  askSeen: { name: 'wm_ask_seen', key: 40, value: 8, max: 4096 },
  askStats: { name: 'wm_ask_stats', key: 4, value: 24, max: 1 },
} as const;

/** The size of one wm_events record (struct wm_connect_event). */
export const CONNECT_EVENT_SIZE = 72;

/** Field offsets of the structs (bytes). */
export const OFFSETS = {
  treatment: { app: 0, mark: 4, deny: 8, flags: 12 },
  cgroup: { self: 0, pending: 16 },
  dst4Key: { prefixlen: 0, addr: 4 },
  dst6Key: { prefixlen: 0, addr: 4 },
  conf: { netns_cookie: 0, main_slot4: 8, main_slot6: 12, ask_quiet_ns: 16, dst4_count: 24, dst6_count: 28, budget_slots: 32, pad: 36 },
  usageKey: { cgroup: 0, app: 8, uid: 12, slot: 16, dir: 17, dest: 18, pad: 19 },
  budgetKey: { app: 0, slot: 4 },
  usageVal: { bytes: 0, packets: 8 },
  connectEvent: { cgroup: 0, ns: 8, app: 16, uid: 20, pid: 24, flags: 28, family: 32, protocol: 33, port: 34, addr: 36, comm: 52, pad: 68 },
  askKey: { cgroup: 0, app: 8, uid: 12, family: 16, protocol: 17, port: 18, addr: 20, pad: 36 },
  askStats: { reported: 0, dropped: 8, suppressed: 16 },
} as const;

const LE = endianness() === 'LE';

/** What the kernel does to the sockets of one app. */
export interface Treatment {
  /** App key for the usage counters (daemon-assigned, 0 = none). */
  readonly app: number;
  /** Waymark mark bits to give the socket (within MARK_MASK), 0 = none. */
  readonly mark: number;
  /** Denied uplink slots (1..MAX_SLOTS), or every uplink. */
  readonly deny: readonly number[] | 'all';
  /** This treatment decides; false: the uid's treatment (wm_uids) does. */
  readonly decides: boolean;
  /** The uplink slot its DNS goes by (port 53 gets that slot's hard mark); 0 or absent: none. */
  readonly dnsSlot?: number;
  /** Report its sockets' connects to the daemon (WM_T_ASK, {@link AppMaps.onConnect}); absent: no. */
  readonly ask?: boolean;
  /** Some budget names its app key (WM_T_BUDGET: the packet programs look it up); absent: no. */
  readonly budget?: boolean;
}

/** An entry that decides nothing (the uid's treatment applies). */
export const NO_TREATMENT: Treatment = { app: 0, mark: 0, deny: [], decides: false };

export interface Conf {
  readonly netnsCookie: bigint;
  readonly mainSlot4: number;
  readonly mainSlot6: number;
  /** Repeats of a connect report are suppressed this long (ns); 0n: WM_ASK_QUIET_NS. */
  readonly askQuietNs: bigint;
  /** Entries in wm_dst4 / wm_dst6 (0: the packet programs read no address of that family). */
  readonly dst4Count: number;
  readonly dst6Count: number;
  /** Uplink slots with an uplink-wide budget (wm_conf.budget_slots). */
  readonly budgetSlots: readonly number[];
}

/** One connect report (struct wm_connect_event): a socket whose treatment has WM_T_ASK connected or sent. */
export interface ConnectRecord {
  /** The current task's cgroup id. */
  readonly cgroupId: bigint;
  /** CLOCK_MONOTONIC nanoseconds (the clock of process.hrtime.bigint()). */
  readonly monotonicNs: bigint;
  /** The app key of the treatment that applied (0: none, e.g. a `pending` or a uid's treatment). */
  readonly app: number;
  readonly uid: number;
  /** The process (tgid) in the initial pid namespace. */
  readonly pid: number;
  /** The thread's name (comm) at the time. */
  readonly comm: string;
  /** A v4-mapped IPv6 destination is reported as IPv4. */
  readonly family: Family;
  /** Destination address, as text. */
  readonly address: string;
  readonly port: number;
  /** The socket's protocol: tcp, udp, else its IPPROTO number. */
  readonly proto: 'tcp' | 'udp' | number;
  /** connect(), or a sendmsg()/sendto() with an address. */
  readonly via: 'connect' | 'sendmsg';
  /** The kernel refused it (EPERM: the treatment denies the uplink it would leave by). */
  readonly denied: boolean;
  /** Where the treatment came from: the cgroup's entry, an ancestor's `pending`, the uid's. */
  readonly source: 'cgroup' | 'pending' | 'uid';
}

/** The connect reports' counters (wm_ask_stats, summed over CPUs) and the adapter's own. */
export interface AskStats {
  /** Records the programs put into the ring. */
  readonly reported: bigint;
  /** Records lost because the ring was full. */
  readonly dropped: bigint;
  /** Repeats within the quiet period, not reported. */
  readonly suppressed: bigint;
  /** Records read here and handed to the listeners. */
  readonly delivered: number;
  /** Records read here that did not decode (wrong size), skipped. */
  readonly malformed: number;
}

/** wm_usage_key.dir: sent, received, dropped on the way out (deny, budget: it never left). */
export type UsageDir = 'tx' | 'rx' | 'txDropped';

export interface UsageRow {
  /** app 0: the packet's socket's cgroup id (0: no full socket); else 0. */
  readonly cgroup: bigint;
  /** The treatment's app key (0: none). */
  readonly app: number;
  /** app 0 and a cgroup: the socket's uid; else 0. */
  readonly uid: number;
  readonly slot: number;
  readonly dir: UsageDir;
  /** The destination index of the remote address (desired.ts: destinationIndex); 0: none matched. */
  readonly dest: number;
  /** IP bytes, headers included, summed over CPUs. */
  readonly bytes: bigint;
  readonly packets: bigint;
}

/** A budget's app: an app key, or 'any' (the whole uplink, WM_APP_ANY). */
export type BudgetApp = number | 'any';

/** One budget in the kernel: its limit and the bytes the programs counted against it. */
export interface BudgetCounter {
  readonly app: BudgetApp;
  readonly slot: number;
  /** Bytes (IP, headers included) the programs added: sent, and received (also dropped ones). */
  readonly used: bigint;
  /** null: no limit entry (only the counter is left). */
  readonly limit: bigint | null;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function checkSlot(slot: number, what: string, allowZero: boolean): void {
  if (!Number.isInteger(slot) || slot < (allowZero ? 0 : 1) || slot > MAX_SLOTS) {
    throw new RangeError(`${what} must be an uplink slot ${allowZero ? 0 : 1}..${MAX_SLOTS}, not ${slot}`);
  }
}

function checkU32(x: number, what: string): void {
  if (!Number.isInteger(x) || x < 0 || x > 0xffffffff) throw new RangeError(`${what} must be a u32, not ${x}`);
}

function checkSize(b: Uint8Array, size: number, what: string): void {
  if (b.byteLength !== size) throw new RangeError(`${what}: ${b.byteLength} bytes, expected ${size}`);
}

export function encodeU32(x: number): Buffer {
  checkU32(x, 'value');
  const b = Buffer.alloc(4);
  view(b).setUint32(0, x, LE);
  return b;
}

export function decodeU32(b: Uint8Array): number {
  checkSize(b, 4, 'u32');
  return view(b).getUint32(0, LE);
}

export function encodeCgroupId(id: bigint): Buffer {
  if (id < 0n || id > 0xffffffffffffffffn) throw new RangeError(`cgroup id out of range: ${id}`);
  const b = Buffer.alloc(8);
  view(b).setBigUint64(0, id, LE);
  return b;
}

export function decodeCgroupId(b: Uint8Array): bigint {
  checkSize(b, 8, 'cgroup id');
  return view(b).getBigUint64(0, LE);
}

export function denyBits(deny: Treatment['deny']): number {
  if (deny === 'all') return WM_DENY_ALL;
  let bits = 0;
  for (const s of deny) {
    checkSlot(s, 'denied slot', false);
    bits = (bits | (1 << s)) >>> 0;
  }
  return bits;
}

function writeTreatment(dv: DataView, at: number, t: Treatment): void {
  checkU32(t.app, 'app');
  checkU32(t.mark, 'mark');
  if ((t.mark & ~MARK_MASK) >>> 0 !== 0) throw new RangeError(`mark 0x${t.mark.toString(16)} has bits outside MARK_MASK`);
  const o = OFFSETS.treatment;
  dv.setUint32(at + o.app, t.app, LE);
  dv.setUint32(at + o.mark, t.mark, LE);
  dv.setUint32(at + o.deny, denyBits(t.deny), LE);
  const dns = t.dnsSlot ?? 0;
  if (dns !== 0) checkSlot(dns, 'DNS slot', false);
  dv.setUint32(at + o.flags, ((t.decides ? WM_T_SET : 0) | (t.ask === true ? WM_T_ASK : 0) | (t.budget === true ? WM_T_BUDGET : 0) | (dns << WM_T_DNS_SHIFT)) >>> 0, LE);
}

/** The DNS slot, ask and budget of a flags word, as optional fields (absent when 0, so plain treatments compare equal). */
function dnsOf(flags: number): { dnsSlot?: number; ask?: boolean; budget?: boolean } {
  const dns = (flags & WM_T_DNS_MASK) >>> WM_T_DNS_SHIFT;
  return { ...(dns === 0 ? {} : { dnsSlot: dns }), ...((flags & WM_T_ASK) === 0 ? {} : { ask: true }), ...((flags & WM_T_BUDGET) === 0 ? {} : { budget: true }) };
}

function readTreatment(dv: DataView, at: number): Treatment {
  const o = OFFSETS.treatment;
  const bits = dv.getUint32(at + o.deny, LE);
  const deny: number[] = [];
  for (let s = 1; s <= MAX_SLOTS; s++) if ((bits >>> s) & 1) deny.push(s);
  return {
    app: dv.getUint32(at + o.app, LE),
    mark: dv.getUint32(at + o.mark, LE),
    deny: (bits & WM_DENY_ALL) !== 0 ? 'all' : deny,
    decides: (dv.getUint32(at + o.flags, LE) & WM_T_SET) !== 0,
    ...dnsOf(dv.getUint32(at + o.flags, LE)),
  };
}

export function encodeTreatment(t: Treatment): Buffer {
  const b = Buffer.alloc(MAPS.uids.value);
  writeTreatment(view(b), 0, t);
  return b;
}

export function decodeTreatment(b: Uint8Array): Treatment {
  checkSize(b, MAPS.uids.value, 'treatment');
  return readTreatment(view(b), 0);
}

export function encodeCgroupValue(self: Treatment, pending: Treatment): Buffer {
  const b = Buffer.alloc(MAPS.cgroups.value);
  writeTreatment(view(b), OFFSETS.cgroup.self, self);
  writeTreatment(view(b), OFFSETS.cgroup.pending, pending);
  return b;
}

export function decodeCgroupValue(b: Uint8Array): { self: Treatment; pending: Treatment } {
  checkSize(b, MAPS.cgroups.value, 'cgroup value');
  return { self: readTreatment(view(b), OFFSETS.cgroup.self), pending: readTreatment(view(b), OFFSETS.cgroup.pending) };
}

/** The LPM key of a prefix: prefix length (host order), then the network bytes (host bits cleared). */
export function encodeDestination(p: Prefix): { map: 'wm_dst4' | 'wm_dst6'; key: Buffer } {
  const size = p.family === 4 ? 4 : 16;
  if (p.bytes.byteLength !== size || !Number.isInteger(p.len) || p.len < 0 || p.len > size * 8) {
    throw new RangeError(`invalid IPv${p.family} prefix (length ${p.len}, ${p.bytes.byteLength} bytes)`);
  }
  const b = Buffer.alloc(4 + size);
  view(b).setUint32(OFFSETS.dst4Key.prefixlen, p.len, LE);
  b.set(maskBytes(p.bytes, p.len), OFFSETS.dst4Key.addr);
  return { map: p.family === 4 ? MAPS.dst4.name : MAPS.dst6.name, key: b };
}

/** Bits 1..MAX_SLOTS of uplink slots. */
function slotMask(slots: readonly number[], what: string): number {
  let bits = 0;
  for (const s of slots) {
    checkSlot(s, what, false);
    bits = (bits | (1 << s)) >>> 0;
  }
  return bits;
}

function slotsOf(bits: number): number[] {
  const out: number[] = [];
  for (let s = 1; s <= MAX_SLOTS; s++) if ((bits >>> s) & 1) out.push(s);
  return out;
}

export function encodeConf(c: Conf): Buffer {
  checkSlot(c.mainSlot4, 'main slot (IPv4)', true);
  checkSlot(c.mainSlot6, 'main slot (IPv6)', true);
  checkU32(c.dst4Count, 'IPv4 destination count');
  checkU32(c.dst6Count, 'IPv6 destination count');
  const b = Buffer.alloc(MAPS.conf.value);
  const dv = view(b);
  dv.setBigUint64(OFFSETS.conf.netns_cookie, c.netnsCookie, LE);
  dv.setUint32(OFFSETS.conf.main_slot4, c.mainSlot4, LE);
  dv.setUint32(OFFSETS.conf.main_slot6, c.mainSlot6, LE);
  if (c.askQuietNs < 0n || c.askQuietNs > 0xffffffffffffffffn) throw new RangeError(`ask quiet period out of range: ${c.askQuietNs}`);
  dv.setBigUint64(OFFSETS.conf.ask_quiet_ns, c.askQuietNs, LE);
  dv.setUint32(OFFSETS.conf.dst4_count, c.dst4Count, LE);
  dv.setUint32(OFFSETS.conf.dst6_count, c.dst6Count, LE);
  dv.setUint32(OFFSETS.conf.budget_slots, slotMask(c.budgetSlots, 'budget slot'), LE);
  return b;
}

export function decodeConf(b: Uint8Array): Conf {
  checkSize(b, MAPS.conf.value, 'conf');
  const dv = view(b);
  return {
    netnsCookie: dv.getBigUint64(OFFSETS.conf.netns_cookie, LE),
    mainSlot4: dv.getUint32(OFFSETS.conf.main_slot4, LE),
    mainSlot6: dv.getUint32(OFFSETS.conf.main_slot6, LE),
    askQuietNs: dv.getBigUint64(OFFSETS.conf.ask_quiet_ns, LE),
    dst4Count: dv.getUint32(OFFSETS.conf.dst4_count, LE),
    dst6Count: dv.getUint32(OFFSETS.conf.dst6_count, LE),
    budgetSlots: slotsOf(dv.getUint32(OFFSETS.conf.budget_slots, LE)),
  };
}

/** A wm_dst4/wm_dst6 value: the slot in the low byte, the destination index in the next. */
export function encodeDestinationValue(v: DestinationValue): Buffer {
  checkSlot(v.slot, 'destination slot', true);
  if (!Number.isInteger(v.dest) || v.dest < 0 || v.dest > 255) throw new RangeError(`destination index must be 0..255, not ${v.dest}`);
  return encodeU32((v.slot | (v.dest << 8)) >>> 0);
}

export function decodeDestinationValue(b: Uint8Array): DestinationValue {
  const v = decodeU32(b);
  return { slot: v & 0xff, dest: (v >>> 8) & 0xff };
}

export function encodeBudgetKey(app: BudgetApp, slot: number): Buffer {
  if (app !== 'any') {
    checkU32(app, 'budget app');
    if (app === 0 || app === WM_APP_ANY) throw new RangeError(`budget app must be an app key 1..${WM_APP_ANY - 1} or 'any', not ${app}`);
  }
  checkSlot(slot, 'budget slot', false);
  const b = Buffer.alloc(MAPS.budgetLimit.key);
  const dv = view(b);
  dv.setUint32(OFFSETS.budgetKey.app, app === 'any' ? WM_APP_ANY : app, LE);
  dv.setUint32(OFFSETS.budgetKey.slot, slot, LE);
  return b;
}

export function decodeBudgetKey(b: Uint8Array): { app: BudgetApp; slot: number } {
  checkSize(b, MAPS.budgetLimit.key, 'budget key');
  const dv = view(b);
  const app = dv.getUint32(OFFSETS.budgetKey.app, LE);
  return { app: app === WM_APP_ANY ? 'any' : app, slot: dv.getUint32(OFFSETS.budgetKey.slot, LE) };
}

export function encodeU64(x: bigint): Buffer {
  if (x < 0n || x > 0xffffffffffffffffn) throw new RangeError(`u64 out of range: ${x}`);
  const b = Buffer.alloc(8);
  view(b).setBigUint64(0, x, LE);
  return b;
}

export function decodeU64(b: Uint8Array): bigint {
  checkSize(b, 8, 'u64');
  return view(b).getBigUint64(0, LE);
}

const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

/** One wm_events record; throws RangeError on a record of another size or family. */
export function decodeConnectEvent(b: Uint8Array): ConnectRecord {
  checkSize(b, CONNECT_EVENT_SIZE, 'connect event');
  const dv = view(b);
  const o = OFFSETS.connectEvent;
  const fam = dv.getUint8(o.family);
  if (fam !== 4 && fam !== 6) throw new RangeError(`connect event: family ${fam}`);
  const flags = dv.getUint32(o.flags, LE);
  const protocol = dv.getUint8(o.protocol);
  const comm = b.subarray(o.comm, o.comm + 16);
  const nul = comm.indexOf(0);
  return {
    cgroupId: dv.getBigUint64(o.cgroup, LE),
    monotonicNs: dv.getBigUint64(o.ns, LE),
    app: dv.getUint32(o.app, LE),
    uid: dv.getUint32(o.uid, LE),
    pid: dv.getUint32(o.pid, LE),
    comm: Buffer.from(nul < 0 ? comm : comm.subarray(0, nul)).toString('utf8'),
    family: fam,
    address: formatAddress(fam, b.subarray(o.addr, o.addr + (fam === 4 ? 4 : 16))),
    port: dv.getUint16(o.port, LE),
    proto: protocol === IPPROTO_TCP ? 'tcp' : protocol === IPPROTO_UDP ? 'udp' : protocol,
    via: (flags & WM_EV_SENDMSG) !== 0 ? 'sendmsg' : 'connect',
    denied: (flags & WM_EV_DENIED) !== 0,
    source: (flags & WM_EV_UID) !== 0 ? 'uid' : (flags & WM_EV_PENDING) !== 0 ? 'pending' : 'cgroup',
  };
}

/** wm_ask_stats' per-CPU values (`cpus` of them, 24 bytes each) summed. */
export function decodeAskStats(value: Uint8Array, cpus: number): { reported: bigint; dropped: bigint; suppressed: bigint } {
  const stride = (MAPS.askStats.value + 7) & ~7;
  checkSize(value, stride * cpus, 'ask stats');
  const v = view(value);
  const o = OFFSETS.askStats;
  let reported = 0n;
  let dropped = 0n;
  let suppressed = 0n;
  for (let i = 0; i < cpus; i++) {
    reported += v.getBigUint64(i * stride + o.reported, LE);
    dropped += v.getBigUint64(i * stride + o.dropped, LE);
    suppressed += v.getBigUint64(i * stride + o.suppressed, LE);
  }
  return { reported, dropped, suppressed };
}

const DIRS: readonly UsageDir[] = ['tx', 'rx', 'txDropped'];

export function encodeUsageKey(k: { cgroup?: bigint; app: number; uid?: number; slot: number; dir: UsageDir; dest?: number }): Buffer {
  checkU32(k.app, 'app');
  checkU32(k.uid ?? 0, 'uid');
  checkSlot(k.slot, 'slot', true);
  const dest = k.dest ?? 0;
  if (!Number.isInteger(dest) || dest < 0 || dest > 255) throw new RangeError(`destination index must be 0..255, not ${dest}`);
  const b = Buffer.alloc(MAPS.usage.key);
  const dv = view(b);
  const o = OFFSETS.usageKey;
  dv.setBigUint64(o.cgroup, k.cgroup ?? 0n, LE);
  dv.setUint32(o.app, k.app, LE);
  dv.setUint32(o.uid, k.uid ?? 0, LE);
  dv.setUint8(o.slot, k.slot);
  dv.setUint8(o.dir, DIRS.indexOf(k.dir));
  dv.setUint8(o.dest, dest);
  return b;
}

/** One wm_usage entry, its per-CPU values (`cpus` of them, each padded to 8 bytes) summed. */
export function decodeUsage(key: Uint8Array, value: Uint8Array, cpus: number): UsageRow {
  checkSize(key, MAPS.usage.key, 'usage key');
  const stride = (MAPS.usage.value + 7) & ~7;
  checkSize(value, stride * cpus, 'usage value');
  const k = view(key);
  const v = view(value);
  let bytes = 0n;
  let packets = 0n;
  for (let i = 0; i < cpus; i++) {
    bytes += v.getBigUint64(i * stride + OFFSETS.usageVal.bytes, LE);
    packets += v.getBigUint64(i * stride + OFFSETS.usageVal.packets, LE);
  }
  const o = OFFSETS.usageKey;
  const dir = DIRS[k.getUint8(o.dir)];
  if (dir === undefined) throw new RangeError(`usage key: direction ${k.getUint8(o.dir)}`);
  return {
    cgroup: k.getBigUint64(o.cgroup, LE),
    app: k.getUint32(o.app, LE),
    uid: k.getUint32(o.uid, LE),
    slot: k.getUint8(o.slot),
    dir,
    dest: k.getUint8(o.dest),
    bytes,
    packets,
  };
}

/** A cgroup's id: the inode number of its directory (what bpf_get_current_cgroup_id returns). */
export function cgroupId(absDir: string): bigint {
  return statSync(absDir, { bigint: true }).ino;
}

/**
 * The app programs loaded and attached at one cgroup (normally the cgroup2 root), and their
 * maps. Only sockets of the network namespace of the process that opened it are touched. The
 * programs stay attached until {@link close} or this process's end (bpf_links): a crashed daemon
 * leaves nothing behind, and a restarted one starts from empty maps. (The watcher of its connect
 * reports holds it: an AppMaps nobody closes is never garbage-collected, it lives to the end.)
 */
export class AppMaps {
  private handle: BpfHandle | null;
  private readonly listeners = new Set<(e: ConnectRecord) => void>();
  private watcher: Watcher | null = null;
  private delivered = 0;
  private malformed = 0;

  private constructor(handle: BpfHandle, readonly cgroupDir: string) {
    this.handle = handle;
  }

  /** Records read from wm_events per wake-up at most (the watcher fires again while more wait). */
  static readonly EVENTS_PER_WAKE = 256;

  /**
   * Loads the object and attaches it at `cgroupDir` (absolute, on cgroup2). Needs root.
   * `compat`: the packet programs that work without bpf_get_netns_cookie in cgroup_skb (chosen
   * anyway on kernels before 6.17; docs/kernel-apps.md says what they cannot do).
   */
  static open(cgroupDir: string, opts: { objectPath?: string; compat?: boolean } = {}): AppMaps {
    const maps = new AppMaps(bpfOpen(opts.objectPath ?? BPF_OBJECT_PATH, cgroupDir, opts.compat === true ? BPF_OPEN_COMPAT : 0), cgroupDir);
    try {
      maps.startEvents();
    } catch (e) {
      maps.close();
      throw e;
    }
    return maps;
  }

  /**
   * Reads wm_events from the event loop from now on (unref'd: the reports alone do not keep the
   * process running). Records that arrive while nobody listens are read and dropped.
   */
  private startEvents(): void {
    const h = this.h();
    const fd = bpfRingOpen(h, MAPS.events.name);
    this.watcher = watch(fd, (err) => {
      if (err !== undefined) {
        // The fd is the handle's own: only a closed handle gets here. Nothing more will come.
        this.watcher = null;
        return;
      }
      this.drain(AppMaps.EVENTS_PER_WAKE);
    }, { unref: true });
  }

  /**
   * Reads up to `max` waiting records and hands each to the listeners (the watcher does this by
   * itself; tests call it to read without waiting for the loop). Returns how many were read.
   * A listener that throws does not stop the others; the first error is rethrown after the batch.
   */
  drain(max: number = AppMaps.EVENTS_PER_WAKE): number {
    if (this.handle === null) return 0;
    const records = bpfRingConsume(this.handle, max);
    let first: { error: unknown } | undefined;
    for (const r of records) {
      let e: ConnectRecord;
      try {
        e = decodeConnectEvent(r);
      } catch {
        this.malformed++;
        continue;
      }
      this.delivered++;
      for (const l of this.listeners) {
        try {
          l(e);
        } catch (error) {
          first ??= { error };
        }
      }
    }
    if (first !== undefined) throw first.error;
    return records.length;
  }

  /**
   * Calls `cb` with each connect report (a socket whose treatment has WM_T_ASK connected, or sent
   * to an address), in the kernel's order. Returns the function that stops it.
   */
  onConnect(cb: (e: ConnectRecord) => void): () => void {
    const l = (e: ConnectRecord): void => cb(e);
    this.listeners.add(l);
    return () => {
      this.listeners.delete(l);
    };
  }

  /** The connect reports' counters. */
  askStats(): AskStats {
    const v = bpfLookup(this.h(), MAPS.askStats.name, encodeU32(0));
    if (v === null) throw new Error('wm_ask_stats has no entry 0');
    return { ...decodeAskStats(v, bpfPossibleCpus()), delivered: this.delivered, malformed: this.malformed };
  }

  /** How long repeats of one report (cgroup, app, uid, destination) are suppressed; 0n: WM_ASK_QUIET_NS (1 s). */
  setAskQuiet(ns: bigint): void {
    bpfUpdate(this.h(), MAPS.conf.name, encodeU32(0), encodeConf({ ...this.conf(), askQuietNs: ns }));
  }

  /** The names of the programs attached. */
  programs(): string[] {
    return bpfPrograms(this.h());
  }

  private h(): BpfHandle {
    if (this.handle === null) throw new Error('AppMaps is closed');
    return this.handle;
  }

  /** The cgroup's own treatment and the one for descendants without an entry yet. */
  setCgroup(id: bigint, self: Treatment, pending: Treatment = NO_TREATMENT): void {
    bpfUpdate(this.h(), MAPS.cgroups.name, encodeCgroupId(id), encodeCgroupValue(self, pending));
  }

  cgroup(id: bigint): { self: Treatment; pending: Treatment } | null {
    const v = bpfLookup(this.h(), MAPS.cgroups.name, encodeCgroupId(id));
    return v === null ? null : decodeCgroupValue(v);
  }

  /** Every cgroup entry (a daemon's view after a reload, tests). */
  cgroups(): Map<bigint, { self: Treatment; pending: Treatment }> {
    return new Map(bpfEntries(this.h(), MAPS.cgroups.name).map(([k, v]) => [decodeCgroupId(k), decodeCgroupValue(v)]));
  }

  deleteCgroup(id: bigint): boolean {
    return bpfDelete(this.h(), MAPS.cgroups.name, encodeCgroupId(id));
  }

  /** The treatment of a uid's sockets whose cgroup has none that decides. */
  setUid(uid: number, t: Treatment): void {
    bpfUpdate(this.h(), MAPS.uids.name, encodeU32(uid), encodeTreatment(t));
  }

  deleteUid(uid: number): boolean {
    return bpfDelete(this.h(), MAPS.uids.name, encodeU32(uid));
  }

  /** An uplink device and its slot. */
  setIfSlot(ifindex: number, slot: number): void {
    checkSlot(slot, 'slot', false);
    bpfUpdate(this.h(), MAPS.ifslot.name, encodeU32(ifindex), encodeU32(slot));
  }

  deleteIfSlot(ifindex: number): boolean {
    return bpfDelete(this.h(), MAPS.ifslot.name, encodeU32(ifindex));
  }

  /**
   * A destination prefix, the uplink slot that routes it now (rule 4500; 0: none, the
   * prediction goes on down the ladder) and its destination index for the counters (0: none).
   * The packet programs look addresses up only while {@link setDestinationCounts} says there are prefixes.
   */
  setDestination(prefix: Prefix, v: DestinationValue): void {
    const { map, key } = encodeDestination(prefix);
    bpfUpdate(this.h(), map, key, encodeDestinationValue(v));
  }

  /** How many prefixes wm_dst4 and wm_dst6 hold (0: the packet programs skip the address lookup of that family). */
  setDestinationCounts(v4: number, v6: number): void {
    bpfUpdate(this.h(), MAPS.conf.name, encodeU32(0), encodeConf({ ...this.conf(), dst4Count: v4, dst6Count: v6 }));
  }

  deleteDestination(prefix: Prefix): boolean {
    const { map, key } = encodeDestination(prefix);
    return bpfDelete(this.h(), map, key);
  }

  conf(): Conf {
    const v = bpfLookup(this.h(), MAPS.conf.name, encodeU32(0));
    if (v === null) throw new Error('wm_conf has no entry 0');
    return decodeConf(v);
  }

  /** The uplink slots main's IPv4 and IPv6 defaults use now (0: none). */
  setMain(slot4: number, slot6: number): void {
    bpfUpdate(this.h(), MAPS.conf.name, encodeU32(0), encodeConf({ ...this.conf(), mainSlot4: slot4, mainSlot6: slot6 }));
  }

  /** Per app (or cgroup and uid) x uplink x direction x destination counters since the object was loaded, summed over CPUs. */
  usage(): UsageRow[] {
    const cpus = bpfPossibleCpus();
    return bpfEntries(this.h(), MAPS.usage.name).map(([k, v]) => decodeUsage(k, v, cpus));
  }

  /**
   * A budget's limit, in the units of its used counter (IP bytes counted since the counter was
   * made): the kernel drops the app's (or, 'any', every app's) packets on the slot once used >=
   * limit. The used counter is made with 0 first if there is none, never overwritten. An app
   * budget applies only to treatments with WM_T_BUDGET (desired.ts: MapsWorld.budgeted); an
   * uplink-wide one only while {@link setBudgetSlots} names its slot.
   */
  setBudget(app: BudgetApp, slot: number, limit: bigint): void {
    const key = encodeBudgetKey(app, slot);
    const value = encodeU64(limit);
    bpfUpdate(this.h(), MAPS.budgetUsed.name, key, encodeU64(0n), BPF_NOEXIST);
    bpfUpdate(this.h(), MAPS.budgetLimit.name, key, value);
  }

  /** Removes a budget: its limit, then its used counter. False when there was neither. */
  deleteBudget(app: BudgetApp, slot: number): boolean {
    const key = encodeBudgetKey(app, slot);
    const limit = bpfDelete(this.h(), MAPS.budgetLimit.name, key);
    const used = bpfDelete(this.h(), MAPS.budgetUsed.name, key);
    return limit || used;
  }

  /** Every budget's used counter and limit (read the used counters first: the limit map after). */
  budgetUsed(): BudgetCounter[] {
    const used = bpfEntries(this.h(), MAPS.budgetUsed.name);
    const limits = new Map(bpfEntries(this.h(), MAPS.budgetLimit.name).map(([k, v]) => [k.toString('hex'), decodeU64(v)]));
    return used.map(([k, v]) => ({ ...decodeBudgetKey(k), used: decodeU64(v), limit: limits.get(k.toString('hex')) ?? null }));
  }

  /** The uplink slots with an uplink-wide budget: the packet programs look up (WM_APP_ANY, slot) only for these. */
  setBudgetSlots(slots: readonly number[]): void {
    bpfUpdate(this.h(), MAPS.conf.name, encodeU32(0), encodeConf({ ...this.conf(), budgetSlots: slots }));
  }

  /** Stops the connect reports and detaches the programs. Idempotent. */
  close(): void {
    if (this.handle === null) return;
    // The watcher first: the ring's epoll fd closes with the consumer.
    this.watcher?.stop();
    this.watcher = null;
    this.listeners.clear();
    bpfRingClose(this.handle);
    bpfClose(this.handle);
    this.handle = null;
  }
}

/** A treatment as the app service computes it (src/backstop/desired.ts), for the adapter above. */
function fromKernel(t: KernelTreatment): Treatment {
  const deny: number[] = [];
  for (let s = 1; s <= MAX_SLOTS; s++) if ((t.deny >>> s) & 1) deny.push(s);
  return { app: t.app, mark: t.mark, deny: (t.deny & WM_DENY_ALL) !== 0 ? 'all' : deny, decides: (t.flags & WM_T_SET) !== 0, ...dnsOf(t.flags) };
}

/** The app service's kernel side over loaded maps: applies a plan entry by entry, collecting failures. */
export function appMapsPort(maps: AppMaps): KernelAppMaps {
  return {
    apply(plan: MapsPlan): readonly string[] {
      const errors: string[] = [];
      const step = (what: string, f: () => unknown): void => {
        try {
          f();
        } catch (e) {
          errors.push(`${what}: ${errorMessage(e)}`);
        }
      };
      for (const id of plan.delCgroups) step(`delete cgroup ${id}`, () => maps.deleteCgroup(id));
      for (const [id, e] of plan.setCgroups) step(`cgroup ${id}`, () => maps.setCgroup(id, fromKernel(e.self), fromKernel(e.pending)));
      for (const uid of plan.delUids) step(`delete uid ${uid}`, () => maps.deleteUid(uid));
      for (const [uid, t] of plan.setUids) step(`uid ${uid}`, () => maps.setUid(uid, fromKernel(t)));
      for (const i of plan.delIfslots) step(`delete ifindex ${i}`, () => maps.deleteIfSlot(i));
      for (const [i, slot] of plan.setIfslots) step(`ifindex ${i}`, () => maps.setIfSlot(i, slot));
      const prefix = (text: string): Prefix => {
        const p = parsePrefix(text);
        if (typeof p === 'string') throw new Error(p);
        return p;
      };
      for (const d of plan.delDestinations) step(`delete destination ${d}`, () => maps.deleteDestination(prefix(d)));
      for (const [d, v] of plan.setDestinations) step(`destination ${d}`, () => maps.setDestination(prefix(d), v));
      const main = plan.main;
      if (main) step('main slots', () => maps.setMain(main.v4, main.v6));
      const counts = plan.destinationCounts;
      if (counts) step('destination counts', () => maps.setDestinationCounts(counts.v4, counts.v6));
      return errors;
    },
  };
}

/** The accounting's kernel side over loaded maps (src/accounting/service.ts: UsageKernel). */
export function usageKernelPort(maps: AppMaps): UsageKernel {
  const keyOf = (app: BudgetApp, slot: number): string => `${app}:${slot}`;
  return {
    budgetUsed: () => new Map(maps.budgetUsed().map((b) => [keyOf(b.app, b.slot), b.used])),
    usage: () => maps.usage(),
    setBudgets(limits, slots) {
      const have = maps.budgetUsed();
      for (const b of have) if (!limits.has(keyOf(b.app, b.slot))) maps.deleteBudget(b.app, b.slot);
      for (const [key, limit] of limits) {
        const [app = '', slot = ''] = key.split(':');
        maps.setBudget(app === 'any' ? 'any' : Number(app), Number(slot), limit);
      }
      maps.setBudgetSlots(slots);
    },
  };
}
