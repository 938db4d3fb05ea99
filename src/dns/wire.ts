/**
 * DNS messages (RFC 1035, RFC 3596 for AAAA, RFC 2308 for negative TTLs, RFC 7766 for TCP),
 * shared by the per-uplink resolver (src/dns/resolver.ts) and the lab's DNS server
 * (src/lab/dns-server.ts). The codec is the `dns-packet` package; this module adds what Waymark
 * needs on top of it:
 *
 *   - {@link isQueryableName}: names are checked before they are encoded (dns-packet writes a
 *     label of 64+ bytes or a name of 256+ bytes without complaint, i.e. a corrupt message);
 *   - {@link decodeMessage}: never throws on input from the network (null instead), refuses
 *     trailing bytes and addresses that are not addresses, reads TTLs with the top bit set as 0
 *     (RFC 2181 8), and gives the SOA MINIMUM of negative answers;
 *   - TCP framing: {@link frameTcp} (the two-byte length prefix) and {@link TcpReader}, which
 *     collects exactly one framed message from a stream and never buffers more than one.
 */
import dnsPacket from 'dns-packet';
import type { Answer, DecodedPacket, Packet, Question as PacketQuestion } from 'dns-packet';
import { isIP } from 'node:net';

/** The record types the resolver asks for. */
export type AddressType = 'A' | 'AAAA';

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
/** Header flag bits (the second 16-bit word of the header). */
export const FLAG = {
  QR: 0x8000,
  AA: dnsPacket.AUTHORITATIVE_ANSWER,
  TC: dnsPacket.TRUNCATED_RESPONSE,
  RD: dnsPacket.RECURSION_DESIRED,
  RA: dnsPacket.RECURSION_AVAILABLE,
} as const;

export const HEADER_SIZE = 12;
/** Longest name on the wire, length bytes and the root label included (RFC 1035 3.1). */
export const MAX_NAME_WIRE = 255;
export const MAX_LABEL = 63;
/** Largest message a TCP frame can hold (its length prefix is 16 bits). */
export const MAX_TCP_MESSAGE = 0xffff;

/** Lower case, without the trailing dot of a fully qualified name. */
export function canonicalName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

/** Case-insensitive (ASCII) comparison of two names, trailing dots ignored. */
export function sameName(a: string, b: string): boolean {
  return canonicalName(a) === canonicalName(b);
}

/**
 * Whether `name` can be asked for: printable ASCII without spaces, labels of 1..63 bytes, at
 * most 255 bytes on the wire, not the root.
 */
export function isQueryableName(name: string): boolean {
  const text = name.replace(/\.$/, '');
  if (text === '' || /[^\x21-\x7e]/.test(text)) return false;
  const labels = text.split('.');
  if (labels.some((l) => l.length === 0 || l.length > MAX_LABEL)) return false;
  return labels.reduce((n, l) => n + l.length + 1, 1) <= MAX_NAME_WIRE;
}

/** A recursive query (RD set unless `rd: false`) for one name and type, class IN. */
export function encodeQuery(id: number, name: string, type: AddressType, opts: { rd?: boolean } = {}): Buffer {
  if (!isQueryableName(name)) throw new RangeError(`not a name that can be asked for: ${JSON.stringify(name)}`);
  return dnsPacket.encode({
    type: 'query',
    id: id & 0xffff,
    flags: opts.rd === false ? 0 : dnsPacket.RECURSION_DESIRED,
    questions: [{ type, name: name.replace(/\.$/, ''), class: 'IN' }],
  });
}

/** Encodes a whole message (dns-packet's Packet); names in it must have been checked. */
export function encodeMessage(packet: Packet): Buffer {
  return dnsPacket.encode(packet);
}

/** `msg` with its TCP length prefix (RFC 1035 4.2.2). */
export function frameTcp(msg: Buffer): Buffer {
  if (msg.length > MAX_TCP_MESSAGE) throw new RangeError(`a DNS message of ${msg.length} bytes does not fit a TCP frame`);
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(msg.length, 0);
  return Buffer.concat([prefix, msg]);
}

/**
 * Splits a TCP stream into its length-prefixed messages: `push` each chunk as it comes; it
 * returns the messages (without their prefix) completed by it, in order. A frame shorter than a
 * header is an error (RangeError). What is buffered is at most one incomplete frame (2 + 65535
 * bytes) plus the last chunk.
 */
export class TcpReader {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Buffer[] {
    let buf = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    while (buf.length >= 2) {
      const len = buf.readUInt16BE(0);
      if (len < HEADER_SIZE) throw new RangeError(`TCP frame of ${len} bytes: shorter than a DNS header`);
      if (buf.length < 2 + len) break;
      out.push(buf.subarray(2, 2 + len));
      buf = buf.subarray(2 + len);
    }
    this.pending = buf;
    return out;
  }
}

export interface Question {
  name: string;
  type: string;
  klass: string;
}

export interface ResourceRecord {
  /** Owner name as found (case kept), without trailing dot. */
  name: string;
  /** 'A', 'AAAA', 'CNAME', 'SOA', ... (dns-packet's names; 'UNKNOWN_<n>' for others). */
  type: string;
  klass: string;
  /** Seconds; values with the top bit set count as 0 (RFC 2181 8). */
  ttl: number;
  /** A: dotted quad. AAAA: RFC 5952 text. CNAME/NS/PTR: the target name. */
  data?: string;
  /** SOA only: the MINIMUM field (the negative-caching TTL, RFC 2308). */
  soaMinimum?: number;
}

export interface Message {
  id: number;
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

const NAME_DATA: ReadonlySet<string> = new Set(['CNAME', 'NS', 'PTR', 'DNAME']);

function plainName(name: string): string {
  return name === '.' ? '' : name;
}

/** One record as Waymark reads it; null when its data is not what its type says. */
function record(a: Answer): ResourceRecord | null {
  if (a.type === 'OPT') return { name: plainName(a.name), type: 'OPT', klass: '', ttl: 0 };
  const rawTtl = a.ttl ?? 0;
  const rr: ResourceRecord = { name: plainName(a.name), type: a.type, klass: a.class ?? 'IN', ttl: rawTtl > 0x7fffffff ? 0 : rawTtl };
  if (a.type === 'A' || a.type === 'AAAA') {
    if (typeof a.data !== 'string' || isIP(a.data) !== (a.type === 'A' ? 4 : 6)) return null;
    rr.data = a.data;
  } else if (NAME_DATA.has(a.type)) {
    if (typeof a.data !== 'string') return null;
    rr.data = plainName(a.data);
  } else if (a.type === 'SOA') {
    if (typeof a.data.minimum !== 'number') return null;
    rr.soaMinimum = a.data.minimum;
  }
  return rr;
}

function records(list: readonly Answer[] | undefined): ResourceRecord[] | null {
  const out: ResourceRecord[] = [];
  for (const a of list ?? []) {
    const rr = record(a);
    if (rr === null) return null;
    out.push(rr);
  }
  return out;
}

function question(q: PacketQuestion): Question {
  return { name: plainName(q.name), type: q.type, klass: q.class ?? 'IN' };
}

/** A whole message; null when anything in it is malformed or it has trailing bytes. */
export function decodeMessage(msg: Buffer): Message | null {
  if (msg.length < HEADER_SIZE) return null;
  let p: DecodedPacket;
  try {
    p = dnsPacket.decode(msg);
  } catch {
    return null; // dns-packet throws (Error, RangeError) on anything it cannot read
  }
  if (dnsPacket.decode.bytes !== msg.length) return null;
  const answers = records(p.answers);
  const authority = records(p.authorities);
  const additional = records(p.additionals);
  if (answers === null || authority === null || additional === null) return null;
  const flags = msg.readUInt16BE(2);
  return {
    id: msg.readUInt16BE(0),
    opcode: (flags >> 11) & 0xf,
    rcode: flags & 0xf,
    qr: p.flag_qr,
    aa: p.flag_aa,
    tc: p.flag_tc,
    rd: p.flag_rd,
    ra: p.flag_ra,
    questions: (p.questions ?? []).map(question),
    answers,
    authority,
    additional,
  };
}

