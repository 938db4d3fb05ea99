/**
 * DNS wire format (RFC 1035, RFC 3596 for AAAA, RFC 2308 for negative TTLs): the parts Waymark
 * needs, shared by the per-uplink resolver (src/dns/resolver.ts) and the lab's DNS server
 * (src/lab/dns-server.ts).
 *
 *   - encoding: header, names (uncompressed), questions, resource records (a record's owner name
 *     may be a compression pointer to an earlier offset, as servers do for the question name),
 *     whole queries;
 *   - decoding: {@link parseQuestion} (the first question of a query, no compression: what a
 *     server needs) and {@link decodeMessage} (a whole message with compression, bounds-checked,
 *     pointer loops refused: what a client needs).
 *
 * Nothing here throws on input from the network: decoders return null for anything malformed.
 * Encoders throw RangeError for arguments that cannot be encoded (a label over 63 bytes, a name
 * over 255 bytes on the wire).
 */
import { formatAddress, parseAddress } from '../net/prefix.js';

export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, AAAA: 28, ANY: 255 } as const;
export const CLASS = { IN: 1, ANY: 255 } as const;
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** Header flag bits (the second 16-bit word of the header). */
export const FLAG = { QR: 0x8000, AA: 0x0400, TC: 0x0200, RD: 0x0100, RA: 0x0080 } as const;

export const HEADER_SIZE = 12;
/** Offset of the first question's name: the target of the usual 0xc00c compression pointer. */
export const QNAME_OFFSET = HEADER_SIZE;
/** Longest name on the wire, length bytes and the root label included (RFC 1035 3.1). */
export const MAX_NAME_WIRE = 255;
export const MAX_LABEL = 63;

/** Lower case, without the trailing dot of a fully qualified name. */
export function canonicalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Case-insensitive (ASCII) comparison of two names, trailing dots ignored. */
export function sameName(a: string, b: string): boolean {
  return canonicalName(a) === canonicalName(b);
}

/** The rdata of an A or AAAA record for an address literal; undefined when it is not one. */
export function addressRdata(address: string): { type: number; rdata: Buffer } | undefined {
  const a = parseAddress(address);
  if (a === undefined) return undefined;
  return { type: a.family === 4 ? TYPE.A : TYPE.AAAA, rdata: Buffer.from(a.bytes) };
}

// ---------------------------------------------------------------------------------------------
// Encoding

export interface HeaderFields {
  id: number;
  flags: number;
  qdcount?: number;
  ancount?: number;
  nscount?: number;
  arcount?: number;
}

export function encodeHeader(h: HeaderFields): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt16BE(h.id & 0xffff, 0);
  b.writeUInt16BE(h.flags & 0xffff, 2);
  b.writeUInt16BE(h.qdcount ?? 0, 4);
  b.writeUInt16BE(h.ancount ?? 0, 6);
  b.writeUInt16BE(h.nscount ?? 0, 8);
  b.writeUInt16BE(h.arcount ?? 0, 10);
  return b;
}

/**
 * The flags of a response to a query with `queryFlags`: QR set, opcode and RD echoed, AA as
 * given (default set: the lab's servers are authoritative), RA as given (default clear).
 */
export function responseFlags(queryFlags: number, rcode: number, opts: { aa?: boolean; ra?: boolean } = {}): number {
  const opcode = (queryFlags >> 11) & 0xf;
  return (
    FLAG.QR | (opcode << 11) | (opts.aa === false ? 0 : FLAG.AA) | (queryFlags & FLAG.RD) | (opts.ra === true ? FLAG.RA : 0) | (rcode & 0xf)
  );
}

/** A name as labels, uncompressed, with its terminating root label. "" and "." are the root. */
export function encodeName(name: string): Buffer {
  const text = name.replace(/\.$/, '');
  const labels = text === '' ? [] : text.split('.');
  const parts: Buffer[] = [];
  let total = 1;
  for (const label of labels) {
    const b = Buffer.from(label, 'latin1');
    if (b.length === 0) throw new RangeError(`empty label in DNS name ${JSON.stringify(name)}`);
    if (b.length > MAX_LABEL) throw new RangeError(`label longer than ${MAX_LABEL} bytes in DNS name ${JSON.stringify(name)}`);
    if (/[^\x21-\x7e]/.test(label)) throw new RangeError(`unsupported character in DNS name ${JSON.stringify(name)}`);
    total += b.length + 1;
    parts.push(Buffer.from([b.length]), b);
  }
  if (total > MAX_NAME_WIRE) throw new RangeError(`DNS name longer than ${MAX_NAME_WIRE} bytes: ${JSON.stringify(name)}`);
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

/** Whether `name` can be asked for: encodable, not the root, no empty label. */
export function isQueryableName(name: string): boolean {
  if (name === '' || name === '.') return false;
  try {
    encodeName(name);
    return true;
  } catch {
    return false;
  }
}

export interface Question {
  name: string;
  type: number;
  klass: number;
}

export function encodeQuestion(q: Question): Buffer {
  const name = encodeName(q.name);
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(q.type, 0);
  tail.writeUInt16BE(q.klass, 2);
  return Buffer.concat([name, tail]);
}

export interface RecordFields {
  /** The owner name, or the offset of an earlier name in the message (a compression pointer). */
  name: string | number;
  type: number;
  klass?: number;
  ttl: number;
  rdata: Buffer;
}

export function encodeRecord(rr: RecordFields): Buffer {
  let name: Buffer;
  if (typeof rr.name === 'number') {
    if (!Number.isInteger(rr.name) || rr.name < 0 || rr.name > 0x3fff) throw new RangeError(`bad compression offset ${rr.name}`);
    name = Buffer.alloc(2);
    name.writeUInt16BE(0xc000 | rr.name, 0);
  } else {
    name = encodeName(rr.name);
  }
  if (rr.rdata.length > 0xffff) throw new RangeError('rdata longer than 65535 bytes');
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(rr.type, 0);
  fixed.writeUInt16BE(rr.klass ?? CLASS.IN, 2);
  fixed.writeUInt32BE(rr.ttl >>> 0, 4);
  fixed.writeUInt16BE(rr.rdata.length, 8);
  return Buffer.concat([name, fixed, rr.rdata]);
}

/** A recursive query (RD set) for one name and type, class IN. */
export function encodeQuery(id: number, name: string, type: number, opts: { rd?: boolean } = {}): Buffer {
  return Buffer.concat([
    encodeHeader({ id, flags: opts.rd === false ? 0 : FLAG.RD, qdcount: 1 }),
    encodeQuestion({ name, type, klass: CLASS.IN }),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Decoding

export interface ParsedQuestion extends Question {
  /** Offset just past the question (qname + qtype + qclass). */
  end: number;
}

/**
 * The first question of a query, its name canonical (lower case); null when malformed. Queries
 * never use compression pointers, so one here is malformed too.
 */
export function parseQuestion(msg: Buffer): ParsedQuestion | null {
  let off = HEADER_SIZE;
  const labels: string[] = [];
  let total = 0;
  for (;;) {
    const len = msg[off];
    if (len === undefined) return null;
    off += 1;
    if (len === 0) break;
    if ((len & 0xc0) !== 0) return null;
    if (off + len > msg.length) return null;
    total += len + 1;
    if (total > MAX_NAME_WIRE) return null;
    labels.push(msg.toString('latin1', off, off + len));
    off += len;
  }
  if (off + 4 > msg.length) return null;
  return { name: canonicalName(labels.join('.')), type: msg.readUInt16BE(off), klass: msg.readUInt16BE(off + 2), end: off + 4 };
}

export interface ResourceRecord {
  /** Owner name as found (case kept), without trailing dot. */
  name: string;
  type: number;
  klass: number;
  /** Seconds; values with the top bit set count as 0 (RFC 2181 8). */
  ttl: number;
  rdata: Buffer;
  /** A: dotted quad. AAAA: RFC 5952 text. CNAME/NS/PTR: the target name. */
  data?: string;
  /** SOA only: the MINIMUM field (the negative-caching TTL, RFC 2308). */
  soaMinimum?: number;
}

export interface Message {
  id: number;
  flags: number;
  opcode: number;
  rcode: number;
  qr: boolean;
  aa: boolean;
  tc: boolean;
  rd: boolean;
  ra: boolean;
  questions: Question[];
  answers: ResourceRecord[];
  authority: ResourceRecord[];
  additional: ResourceRecord[];
}

/** Reads a possibly compressed name at `off`; null when malformed. `next` is the offset after it in place. */
function readName(msg: Buffer, start: number): { name: string; next: number } | null {
  const labels: string[] = [];
  let off = start;
  let next = -1;
  let total = 1;
  // Every pointer must point strictly before the name it appears in: no loops, bounded work.
  let limit = start;
  for (;;) {
    const len = msg[off];
    if (len === undefined) return null;
    if ((len & 0xc0) === 0xc0) {
      const lo = msg[off + 1];
      if (lo === undefined) return null;
      const target = ((len & 0x3f) << 8) | lo;
      if (next < 0) next = off + 2;
      if (target >= limit) return null;
      limit = target;
      off = target;
      continue;
    }
    if ((len & 0xc0) !== 0) return null; // 0x40 / 0x80: extended or obsolete label types
    off += 1;
    if (len === 0) break;
    if (off + len > msg.length) return null;
    total += len + 1;
    if (total > MAX_NAME_WIRE) return null;
    labels.push(msg.toString('latin1', off, off + len));
    off += len;
  }
  return { name: labels.join('.'), next: next < 0 ? off : next };
}

function readRecord(msg: Buffer, start: number): { rr: ResourceRecord; next: number } | null {
  const n = readName(msg, start);
  if (n === null) return null;
  let off = n.next;
  if (off + 10 > msg.length) return null;
  const type = msg.readUInt16BE(off);
  const klass = msg.readUInt16BE(off + 2);
  const rawTtl = msg.readUInt32BE(off + 4);
  const rdlength = msg.readUInt16BE(off + 8);
  off += 10;
  if (off + rdlength > msg.length) return null;
  const rdata = msg.subarray(off, off + rdlength);
  const rr: ResourceRecord = { name: n.name, type, klass, ttl: rawTtl > 0x7fffffff ? 0 : rawTtl, rdata };
  if (klass === CLASS.IN || klass === CLASS.ANY) {
    if (type === TYPE.A) {
      if (rdlength !== 4) return null;
      rr.data = formatAddress(4, rdata);
    } else if (type === TYPE.AAAA) {
      if (rdlength !== 16) return null;
      rr.data = formatAddress(6, rdata);
    }
  }
  if (type === TYPE.CNAME || type === TYPE.NS || type === TYPE.PTR) {
    const t = readName(msg, off);
    if (t === null || t.next !== off + rdlength) return null;
    rr.data = t.name;
  } else if (type === TYPE.SOA) {
    const mname = readName(msg, off);
    const rname = mname && readName(msg, mname.next);
    if (!rname || rname.next + 20 !== off + rdlength) return null;
    rr.soaMinimum = msg.readUInt32BE(rname.next + 16);
  }
  return { rr, next: off + rdlength };
}

/** A whole message; null when anything in it is malformed or it has trailing garbage. */
export function decodeMessage(msg: Buffer): Message | null {
  if (msg.length < HEADER_SIZE) return null;
  const flags = msg.readUInt16BE(2);
  const counts = [msg.readUInt16BE(4), msg.readUInt16BE(6), msg.readUInt16BE(8), msg.readUInt16BE(10)] as const;
  let off = HEADER_SIZE;
  const questions: Question[] = [];
  for (let i = 0; i < counts[0]; i++) {
    const n = readName(msg, off);
    if (n === null || n.next + 4 > msg.length) return null;
    questions.push({ name: n.name, type: msg.readUInt16BE(n.next), klass: msg.readUInt16BE(n.next + 2) });
    off = n.next + 4;
  }
  const sections: ResourceRecord[][] = [[], [], []];
  for (let s = 0; s < 3; s++) {
    for (let i = 0; i < counts[s + 1]!; i++) {
      const r = readRecord(msg, off);
      if (r === null) return null;
      sections[s]!.push(r.rr);
      off = r.next;
    }
  }
  if (off !== msg.length) return null;
  return {
    id: msg.readUInt16BE(0),
    flags,
    opcode: (flags >> 11) & 0xf,
    rcode: flags & 0xf,
    qr: (flags & FLAG.QR) !== 0,
    aa: (flags & FLAG.AA) !== 0,
    tc: (flags & FLAG.TC) !== 0,
    rd: (flags & FLAG.RD) !== 0,
    ra: (flags & FLAG.RA) !== 0,
    questions,
    answers: sections[0]!,
    authority: sections[1]!,
    additional: sections[2]!,
  };
}
