/**
 * The decision protocol's wire format: the TypeScript mirror of native/include/waymark_proto.h
 * (see there for the transport and the rules). Fixed-size little-endian structs; decoding
 * validates magic, version, type and length and returns undefined for anything malformed.
 */
export const WM_MAGIC = 0x574d4b31;
export const WM_VERSION = 1;
export const DECIDE_SOCKET = 'decide.sock';
export const GENERATION_FILE = 'generation';

export const WM_TYPE = { DECIDE: 1, RESOLVE: 2, PENDING: 3 } as const;
export const WM_ACTION = { PASS: 0, STEER: 1, DENY: 2 } as const;
export const WM_RESOLVE = { RESOLVED: 0, NOT_OURS: 1, NO_NAME: 2, DNS_FAILED: 3, REFUSED: 4 } as const;
export const WM_MAX_ADDRS = 16;

/** Needs, by their names on the command line. */
export const NEEDS = {
  'long-lived': 0x01,
  'max-bandwidth': 0x02,
  'low-latency': 0x04,
  cheapest: 0x08,
  'no-roaming': 0x10,
  unmetered: 0x20,
} as const;
export type NeedName = keyof typeof NEEDS;
/** Request flags in the high 16 bits of the needs field (waymark_proto.h: WM_REQ_*). */
export const WM_REQ_NONBLOCK = 0x10000;

export const SIZES = { header: 16, decideReq: 104, decideResp: 84, resolveReq: 312, resolveResp: 384, addr: 20, pending: 24 } as const;

const AF_INET = 2;
const AF_INET6 = 10;

export interface Header { type: number; seq: number }

export interface DecideRequest extends Header {
  family: 4 | 6;
  proto: 'tcp' | 'udp';
  port: number;
  needs: number;
  /** The call must not block (WM_REQ_NONBLOCK): an answer that waits for the user is not waited for. */
  nonblocking?: boolean;
  /** Destination address bytes (4 or 16). */
  addr: Uint8Array;
  uplink: string;
  destination: string;
}

export interface DecideResponse {
  seq: number;
  action: number;
  err: number;
  ifindex: number;
  mark: number;
  ttlMs: number;
  generation: number;
  ifname: string;
  uplink: string;
}

export interface ResolveRequest extends Header {
  family: 0 | 4 | 6;
  needs: number;
  uplink: string;
  name: string;
}

export interface ResolveResponse {
  seq: number;
  status: number;
  ttlMs: number;
  generation: number;
  uplink: string;
  addrs: { family: 4 | 6; addr: Uint8Array }[];
}

function cstr(buf: Buffer, off: number, len: number): string | undefined {
  const slice = buf.subarray(off, off + len);
  const nul = slice.indexOf(0);
  if (nul < 0) return undefined; // not terminated: malformed
  return slice.subarray(0, nul).toString('utf8');
}

/** Writes a NUL-terminated string into a zeroed field, in place (no intermediate Buffer). */
function putStr(buf: Buffer, off: number, len: number, s: string): void {
  if (s === '') return;
  if (Buffer.byteLength(s, 'utf8') >= len) throw new RangeError(`"${s}" does not fit in ${len - 1} bytes`);
  buf.write(s, off, len - 1, 'utf8');
}

function header(buf: Buffer, type: number, seq: number): void {
  buf.writeUInt32LE(WM_MAGIC, 0);
  buf.writeUInt16LE(WM_VERSION, 4);
  buf.writeUInt16LE(type, 6);
  buf.writeUInt32LE(seq >>> 0, 8);
  buf.writeUInt32LE(buf.length, 12);
}

/** The header of any message, if it is one of ours; undefined otherwise. */
export function readHeader(buf: Buffer): Header | undefined {
  if (buf.length < SIZES.header) return undefined;
  if (buf.readUInt32LE(0) !== WM_MAGIC || buf.readUInt16LE(4) !== WM_VERSION) return undefined;
  if (buf.readUInt32LE(12) !== buf.length) return undefined;
  return { type: buf.readUInt16LE(6), seq: buf.readUInt32LE(8) };
}

export function decodeDecideRequest(buf: Buffer): DecideRequest | undefined {
  const h = readHeader(buf);
  if (!h || h.type !== WM_TYPE.DECIDE || buf.length !== SIZES.decideReq) return undefined;
  const af = buf.readUInt8(16);
  const proto = buf.readUInt8(17);
  if ((af !== AF_INET && af !== AF_INET6) || (proto !== 6 && proto !== 17)) return undefined;
  const uplink = cstr(buf, 40, 32);
  const destination = cstr(buf, 72, 32);
  if (uplink === undefined || destination === undefined) return undefined;
  const family = af === AF_INET ? 4 : 6;
  // Fields spelled out: an object spread costs ~5 µs here on Node 20, on every decision.
  return {
    type: h.type, seq: h.seq, family, proto: proto === 6 ? 'tcp' : 'udp', port: buf.readUInt16LE(18), needs: buf.readUInt32LE(20) & 0xffff,
    nonblocking: (buf.readUInt32LE(20) & WM_REQ_NONBLOCK) !== 0,
    addr: Uint8Array.from(buf.subarray(24, 24 + (family === 4 ? 4 : 16))), uplink, destination,
  };
}

export function encodeDecideRequest(r: Omit<DecideRequest, 'type'>): Buffer {
  const buf = Buffer.alloc(SIZES.decideReq);
  header(buf, WM_TYPE.DECIDE, r.seq);
  buf.writeUInt8(r.family === 4 ? AF_INET : AF_INET6, 16);
  buf.writeUInt8(r.proto === 'tcp' ? 6 : 17, 17);
  buf.writeUInt16LE(r.port, 18);
  buf.writeUInt32LE((r.needs | (r.nonblocking ? WM_REQ_NONBLOCK : 0)) >>> 0, 20);
  Buffer.from(r.addr).copy(buf, 24);
  putStr(buf, 40, 32, r.uplink);
  putStr(buf, 72, 32, r.destination);
  return buf;
}

export function encodeDecideResponse(r: DecideResponse): Buffer {
  const buf = Buffer.alloc(SIZES.decideResp);
  header(buf, WM_TYPE.DECIDE, r.seq);
  buf.writeUInt8(r.action, 16);
  buf.writeUInt16LE(r.err, 18);
  buf.writeUInt32LE(r.ifindex >>> 0, 20);
  buf.writeUInt32LE(r.mark >>> 0, 24);
  buf.writeUInt32LE(r.ttlMs >>> 0, 28);
  buf.writeUInt32LE(r.generation >>> 0, 32);
  putStr(buf, 36, 16, r.ifname);
  putStr(buf, 52, 32, r.uplink);
  return buf;
}

export function decodeDecideResponse(buf: Buffer): DecideResponse | undefined {
  const h = readHeader(buf);
  if (!h || h.type !== WM_TYPE.DECIDE || buf.length !== SIZES.decideResp) return undefined;
  const ifname = cstr(buf, 36, 16);
  const uplink = cstr(buf, 52, 32);
  if (ifname === undefined || uplink === undefined) return undefined;
  return {
    seq: h.seq, action: buf.readUInt8(16), err: buf.readUInt16LE(18), ifindex: buf.readUInt32LE(20), mark: buf.readUInt32LE(24),
    ttlMs: buf.readUInt32LE(28), generation: buf.readUInt32LE(32), ifname, uplink,
  };
}

/** WM_PENDING: the answer to request `seq` waits for the user; wait up to `waitMs` for it. */
export interface Pending {
  seq: number;
  waitMs: number;
}

export function encodePending(p: Pending): Buffer {
  const buf = Buffer.alloc(SIZES.pending);
  header(buf, WM_TYPE.PENDING, p.seq);
  buf.writeUInt32LE(p.waitMs >>> 0, 16);
  return buf;
}

export function decodePending(buf: Buffer): Pending | undefined {
  const h = readHeader(buf);
  if (!h || h.type !== WM_TYPE.PENDING || buf.length !== SIZES.pending) return undefined;
  return { seq: h.seq, waitMs: buf.readUInt32LE(16) };
}

export function decodeResolveRequest(buf: Buffer): ResolveRequest | undefined {
  const h = readHeader(buf);
  if (!h || h.type !== WM_TYPE.RESOLVE || buf.length !== SIZES.resolveReq) return undefined;
  const af = buf.readUInt8(16);
  if (af !== 0 && af !== AF_INET && af !== AF_INET6) return undefined;
  const uplink = cstr(buf, 24, 32);
  const name = cstr(buf, 56, 256);
  if (uplink === undefined || name === undefined || name === '') return undefined;
  return { type: h.type, seq: h.seq, family: af === 0 ? 0 : af === AF_INET ? 4 : 6, needs: buf.readUInt32LE(20), uplink, name };
}

export function encodeResolveRequest(r: Omit<ResolveRequest, 'type'>): Buffer {
  const buf = Buffer.alloc(SIZES.resolveReq);
  header(buf, WM_TYPE.RESOLVE, r.seq);
  buf.writeUInt8(r.family === 0 ? 0 : r.family === 4 ? AF_INET : AF_INET6, 16);
  buf.writeUInt32LE(r.needs >>> 0, 20);
  putStr(buf, 24, 32, r.uplink);
  putStr(buf, 56, 256, r.name);
  return buf;
}

export function encodeResolveResponse(r: ResolveResponse): Buffer {
  const buf = Buffer.alloc(SIZES.resolveResp);
  header(buf, WM_TYPE.RESOLVE, r.seq);
  const addrs = r.addrs.slice(0, WM_MAX_ADDRS);
  buf.writeUInt16LE(r.status, 16);
  buf.writeUInt8(addrs.length, 18);
  buf.writeUInt32LE(r.ttlMs >>> 0, 20);
  buf.writeUInt32LE(r.generation >>> 0, 24);
  putStr(buf, 32, 32, r.uplink);
  addrs.forEach((a, i) => {
    const off = 64 + i * SIZES.addr;
    buf.writeUInt8(a.family === 4 ? AF_INET : AF_INET6, off);
    Buffer.from(a.addr).copy(buf, off + 4);
  });
  return buf;
}

export function decodeResolveResponse(buf: Buffer): ResolveResponse | undefined {
  const h = readHeader(buf);
  if (!h || h.type !== WM_TYPE.RESOLVE || buf.length !== SIZES.resolveResp) return undefined;
  const uplink = cstr(buf, 32, 32);
  const count = buf.readUInt8(18);
  if (uplink === undefined || count > WM_MAX_ADDRS) return undefined;
  const addrs: ResolveResponse['addrs'] = [];
  for (let i = 0; i < count; i++) {
    const off = 64 + i * SIZES.addr;
    const family = buf.readUInt8(off) === AF_INET ? 4 : 6;
    addrs.push({ family, addr: Uint8Array.from(buf.subarray(off + 4, off + 4 + (family === 4 ? 4 : 16))) });
  }
  return { seq: h.seq, status: buf.readUInt16LE(16), ttlMs: buf.readUInt32LE(20), generation: buf.readUInt32LE(24), uplink, addrs };
}
