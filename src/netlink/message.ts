/**
 * rtnetlink wire format: nlmsghdr, rtattr, and the four message bodies Waymark reads and writes
 * (link, address, route, rule). Pure encode/decode; the socket lives in socket.ts.
 * Layouts follow <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h> and <linux/fib_rules.h>.
 */
import { formatAddress, parseAddress, type Family } from '../net/prefix.js';

export const NLMSG = { NOOP: 1, ERROR: 2, DONE: 3, OVERRUN: 4 } as const;
export const RTM = {
  NEWLINK: 16, DELLINK: 17, GETLINK: 18,
  NEWADDR: 20, DELADDR: 21, GETADDR: 22,
  NEWROUTE: 24, DELROUTE: 25, GETROUTE: 26,
  NEWRULE: 32, DELRULE: 33, GETRULE: 34,
  NEWNDUSEROPT: 68,
} as const;
export const NLM_F = {
  REQUEST: 0x1, MULTI: 0x2, ACK: 0x4,
  DUMP: 0x300, REPLACE: 0x100, EXCL: 0x200, CREATE: 0x400,
} as const;
/** Legacy multicast group bits (1 << (RTNLGRP_x - 1)). */
export const RTMGRP = {
  LINK: 0x1, IPV4_IFADDR: 0x10, IPV4_ROUTE: 0x40, IPV4_RULE: 0x80,
  IPV6_IFADDR: 0x100, IPV6_ROUTE: 0x400, IPV6_RULE: 0x40000, ND_USEROPT: 0x80000,
} as const;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const IFF = { UP: 0x1, LOOPBACK: 0x8, POINTOPOINT: 0x10, RUNNING: 0x40, NOARP: 0x80, LOWER_UP: 0x10000 } as const;
export const RTN = { UNICAST: 1, LOCAL: 2, BLACKHOLE: 6, UNREACHABLE: 7, PROHIBIT: 8 } as const;
export const RT_SCOPE = { UNIVERSE: 0, LINK: 253, HOST: 254 } as const;
export const FR_ACT = { TO_TBL: 1, UNREACHABLE: 7 } as const;
const RT_TABLE_UNSPEC = 0;
const RT_TABLE_COMPAT = 252;
const IFA_F_SECONDARY = 0x01;
const IFA_F_TENTATIVE = 0x40;
const IFA_F_DADFAILED = 0x08;

const IFLA = { IFNAME: 3, MTU: 4, OPERSTATE: 16, CARRIER: 33 } as const;
const IFA = { ADDRESS: 1, LOCAL: 2, FLAGS: 8 } as const;
const RTA = { DST: 1, SRC: 2, OIF: 4, GATEWAY: 5, PRIORITY: 6, PREFSRC: 7, TABLE: 15 } as const;
const FRA = { DST: 1, SRC: 2, PRIORITY: 6, FWMARK: 10, TABLE: 15, FWMASK: 16, OIFNAME: 17, PROTOCOL: 21, IP_PROTO: 22, DPORT_RANGE: 24 } as const;

export interface NlMessage {
  readonly type: number;
  readonly flags: number;
  readonly seq: number;
  readonly pid: number;
  readonly body: Buffer;
}

export interface LinkMsg {
  readonly index: number;
  readonly name: string;
  readonly flags: number;
  readonly carrier: boolean;
  /** ifi_type: the ARPHRD_* link type (1 Ethernet, 772 loopback, 65534 none: tun, raw-IP wwan). */
  readonly type?: number;
}

export interface AddrMsg {
  readonly family: Family;
  readonly index: number;
  readonly address: string;
  readonly prefixLen: number;
  readonly scope: number;
  /** Still tentative (DAD running) or failed DAD: not usable as a source yet. */
  readonly tentative: boolean;
  readonly secondary: boolean;
}

/** A route; used both for what the kernel reports and for what Waymark asks for. */
export interface RouteMsg {
  readonly family: Family;
  readonly table: number;
  readonly type: number;
  readonly protocol: number;
  readonly scope: number;
  readonly dst?: string;
  readonly dstLen: number;
  readonly gateway?: string;
  readonly oif?: number;
  readonly metric?: number;
  readonly prefsrc?: string;
}

export interface RuleMsg {
  readonly family: Family;
  readonly priority: number;
  readonly action: number;
  readonly table: number;
  readonly protocol: number;
  readonly fwmark?: number;
  readonly fwmask?: number;
  readonly oifname?: string;
  readonly src?: string;
  readonly srcLen: number;
  readonly dst?: string;
  readonly dstLen: number;
  /** `ipproto`: IPPROTO_TCP (6) or IPPROTO_UDP (17). */
  readonly ipProto?: number;
  /** `dport N` (a range of one port). */
  readonly dport?: number;
}

const align4 = (n: number): number => (n + 3) & ~3;

export function splitMessages(buf: Buffer): NlMessage[] {
  const out: NlMessage[] = [];
  let off = 0;
  while (off + 16 <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < 16 || off + len > buf.length) break; // malformed: drop the rest of the datagram
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      body: buf.subarray(off + 16, off + len),
    });
    off += align4(len);
  }
  return out;
}

export function encodeMessage(type: number, flags: number, seq: number, body: Buffer): Buffer {
  const head = Buffer.alloc(16);
  head.writeUInt32LE(16 + body.length, 0);
  head.writeUInt16LE(type, 4);
  head.writeUInt16LE(flags, 6);
  head.writeUInt32LE(seq, 8);
  return Buffer.concat([head, body]);
}

/** For NLMSG_ERROR: 0 is an ACK, otherwise a positive errno. */
export function errorCode(m: NlMessage): number {
  return m.body.length >= 4 ? -m.body.readInt32LE(0) : 0;
}

/** The attributes (rtattr/nlattr, 4-aligned) from `off` to the end of `buf`, by type (the last of a type wins). */
export function parseAttrs(buf: Buffer, off: number): Map<number, Buffer> {
  const attrs = new Map<number, Buffer>();
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & 0x3fff; // strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
    if (len < 4 || off + len > buf.length) break;
    attrs.set(type, buf.subarray(off + 4, off + len));
    off += align4(len);
  }
  return attrs;
}

function attr(type: number, data: Buffer): Buffer {
  const out = Buffer.alloc(align4(4 + data.length));
  out.writeUInt16LE(4 + data.length, 0);
  out.writeUInt16LE(type, 2);
  data.copy(out, 4);
  return out;
}
const u32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0, 0); return b; };
const u8 = (v: number): Buffer => Buffer.from([v]);
const cstr = (s: string): Buffer => Buffer.concat([Buffer.from(s), Buffer.from([0])]);
const familyOf = (af: number): Family | undefined => (af === AF_INET ? 4 : af === AF_INET6 ? 6 : undefined);
const afOf = (f: Family): number => (f === 4 ? AF_INET : AF_INET6);
const addrText = (f: Family, b: Buffer | undefined): string | undefined => (b ? formatAddress(f, b) : undefined);

export function addrBytes(text: string): Buffer {
  const a = parseAddress(text);
  if (!a) throw new Error(`not an IP address: ${text}`);
  return Buffer.from(a.bytes);
}

export function decodeLink(m: NlMessage): LinkMsg | undefined {
  if (m.body.length < 16) return undefined;
  const attrs = parseAttrs(m.body, 16);
  const name = attrs.get(IFLA.IFNAME);
  const flags = m.body.readUInt32LE(8);
  const carrier = attrs.get(IFLA.CARRIER);
  return {
    index: m.body.readInt32LE(4),
    name: name ? name.toString('utf8').replace(/\0.*$/s, '') : '',
    flags,
    carrier: carrier ? carrier[0] === 1 : (flags & IFF.LOWER_UP) !== 0,
    type: m.body.readUInt16LE(2),
  };
}

export function decodeAddr(m: NlMessage): AddrMsg | undefined {
  if (m.body.length < 8) return undefined;
  const family = familyOf(m.body.readUInt8(0));
  if (!family) return undefined;
  const attrs = parseAttrs(m.body, 8);
  // IFA_LOCAL is the local address on point-to-point links; IFA_ADDRESS is the peer there.
  const raw = attrs.get(IFA.LOCAL) ?? attrs.get(IFA.ADDRESS);
  if (!raw) return undefined;
  const f = attrs.get(IFA.FLAGS);
  const flags = f ? f.readUInt32LE(0) : m.body.readUInt8(2);
  return {
    family,
    index: m.body.readUInt32LE(4),
    address: formatAddress(family, raw),
    prefixLen: m.body.readUInt8(1),
    scope: m.body.readUInt8(3),
    tentative: (flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)) !== 0,
    secondary: (flags & IFA_F_SECONDARY) !== 0,
  };
}

export function decodeRoute(m: NlMessage): RouteMsg | undefined {
  if (m.body.length < 12) return undefined;
  const family = familyOf(m.body.readUInt8(0));
  if (!family) return undefined;
  const attrs = parseAttrs(m.body, 12);
  const t = attrs.get(RTA.TABLE);
  const oif = attrs.get(RTA.OIF);
  const prio = attrs.get(RTA.PRIORITY);
  const r: RouteMsg = {
    family,
    dstLen: m.body.readUInt8(1),
    table: t ? t.readUInt32LE(0) : m.body.readUInt8(4),
    protocol: m.body.readUInt8(5),
    scope: m.body.readUInt8(6),
    type: m.body.readUInt8(7),
  };
  return {
    ...r,
    ...(attrs.has(RTA.DST) ? { dst: addrText(family, attrs.get(RTA.DST)) } : {}),
    ...(attrs.has(RTA.GATEWAY) ? { gateway: addrText(family, attrs.get(RTA.GATEWAY)) } : {}),
    ...(attrs.has(RTA.PREFSRC) ? { prefsrc: addrText(family, attrs.get(RTA.PREFSRC)) } : {}),
    ...(oif ? { oif: oif.readUInt32LE(0) } : {}),
    ...(prio ? { metric: prio.readUInt32LE(0) } : {}),
  };
}

export function encodeRoute(r: RouteMsg): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt8(afOf(r.family), 0);
  head.writeUInt8(r.dstLen, 1);
  head.writeUInt8(r.table < 256 ? r.table : RT_TABLE_UNSPEC, 4);
  head.writeUInt8(r.protocol, 5);
  head.writeUInt8(r.scope, 6);
  head.writeUInt8(r.type, 7);
  const parts = [head, attr(RTA.TABLE, u32(r.table))];
  if (r.dst !== undefined) parts.push(attr(RTA.DST, addrBytes(r.dst)));
  if (r.gateway !== undefined) parts.push(attr(RTA.GATEWAY, addrBytes(r.gateway)));
  if (r.prefsrc !== undefined) parts.push(attr(RTA.PREFSRC, addrBytes(r.prefsrc)));
  if (r.oif !== undefined) parts.push(attr(RTA.OIF, u32(r.oif)));
  if (r.metric !== undefined) parts.push(attr(RTA.PRIORITY, u32(r.metric)));
  return Buffer.concat(parts);
}

export function decodeRule(m: NlMessage): RuleMsg | undefined {
  if (m.body.length < 12) return undefined;
  const family = familyOf(m.body.readUInt8(0));
  if (!family) return undefined;
  const attrs = parseAttrs(m.body, 12);
  const t = attrs.get(FRA.TABLE);
  const prio = attrs.get(FRA.PRIORITY);
  const proto = attrs.get(FRA.PROTOCOL);
  const mark = attrs.get(FRA.FWMARK);
  const mask = attrs.get(FRA.FWMASK);
  const oif = attrs.get(FRA.OIFNAME);
  const ipProto = attrs.get(FRA.IP_PROTO);
  const dport = attrs.get(FRA.DPORT_RANGE);
  return {
    family,
    dstLen: m.body.readUInt8(1),
    srcLen: m.body.readUInt8(2),
    table: t ? t.readUInt32LE(0) : m.body.readUInt8(4),
    action: m.body.readUInt8(7),
    priority: prio ? prio.readUInt32LE(0) : 0,
    protocol: proto ? (proto[0] ?? 0) : 0,
    ...(mark ? { fwmark: mark.readUInt32LE(0) } : {}),
    ...(mask ? { fwmask: mask.readUInt32LE(0) } : {}),
    ...(oif ? { oifname: oif.toString('utf8').replace(/\0.*$/s, '') } : {}),
    ...(attrs.has(FRA.SRC) ? { src: addrText(family, attrs.get(FRA.SRC)) } : {}),
    ...(attrs.has(FRA.DST) ? { dst: addrText(family, attrs.get(FRA.DST)) } : {}),
    ...(ipProto ? { ipProto: ipProto[0] ?? 0 } : {}),
    // struct fib_rule_port_range { __u16 start, end; } (host order); a one-port range reads as that port.
    ...(dport && dport.length >= 4 && dport.readUInt16LE(0) === dport.readUInt16LE(2) ? { dport: dport.readUInt16LE(0) } : {}),
  };
}

export function encodeRule(r: RuleMsg): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt8(afOf(r.family), 0);
  head.writeUInt8(r.dstLen, 1);
  head.writeUInt8(r.srcLen, 2);
  head.writeUInt8(r.action === FR_ACT.TO_TBL && r.table < 256 ? r.table : r.action === FR_ACT.TO_TBL ? RT_TABLE_COMPAT : 0, 4);
  head.writeUInt8(r.action, 7);
  const parts = [head, attr(FRA.PRIORITY, u32(r.priority)), attr(FRA.PROTOCOL, u8(r.protocol))];
  if (r.action === FR_ACT.TO_TBL) parts.push(attr(FRA.TABLE, u32(r.table)));
  if (r.fwmark !== undefined) parts.push(attr(FRA.FWMARK, u32(r.fwmark)));
  if (r.fwmask !== undefined) parts.push(attr(FRA.FWMASK, u32(r.fwmask)));
  if (r.oifname !== undefined) parts.push(attr(FRA.OIFNAME, cstr(r.oifname)));
  if (r.src !== undefined) parts.push(attr(FRA.SRC, addrBytes(r.src)));
  if (r.dst !== undefined) parts.push(attr(FRA.DST, addrBytes(r.dst)));
  if (r.ipProto !== undefined) parts.push(attr(FRA.IP_PROTO, u8(r.ipProto)));
  if (r.dport !== undefined) {
    const range = Buffer.alloc(4);
    range.writeUInt16LE(r.dport, 0);
    range.writeUInt16LE(r.dport, 2);
    parts.push(attr(FRA.DPORT_RANGE, range));
  }
  return Buffer.concat(parts);
}

/** DNS servers a router announced on a link (RFC 8106 RDNSS, passed up by the kernel). */
export interface RdnssMsg {
  readonly ifindex: number;
  readonly servers: readonly string[];
  /** 0: withdraw them. */
  readonly lifetimeSec: number;
}

const ND_OPT_RDNSS = 25;
const ICMPV6_ROUTER_ADVERT = 134;

/** The RDNSS option of an RTM_NEWNDUSEROPT (struct nduseroptmsg + ND options), if it carries one. */
export function decodeRdnss(m: NlMessage): RdnssMsg | undefined {
  const b = m.body;
  if (m.type !== RTM.NEWNDUSEROPT || b.length < 16 || b.readUInt8(0) !== AF_INET6 || b.readUInt8(8) !== ICMPV6_ROUTER_ADVERT) return undefined;
  const end = Math.min(b.length, 16 + b.readUInt16LE(2));
  for (let off = 16; off + 8 <= end; ) {
    const type = b.readUInt8(off);
    const len = b.readUInt8(off + 1) * 8;
    if (len === 0 || off + len > end) return undefined;
    if (type === ND_OPT_RDNSS && len >= 24) {
      const servers: string[] = [];
      for (let a = off + 8; a + 16 <= off + len; a += 16) servers.push(formatAddress(6, b.subarray(a, a + 16)));
      return { ifindex: b.readInt32LE(4), servers, lifetimeSec: b.readUInt32BE(off + 4) };
    }
    off += len;
  }
  return undefined;
}

/** Body of a dump request: an all-zero family header of the right size for the message type. */
export function dumpRequestBody(type: number, family: number): Buffer {
  const size = type === RTM.GETLINK ? 16 : type === RTM.GETADDR ? 8 : 12;
  const b = Buffer.alloc(size);
  b.writeUInt8(family, 0);
  return b;
}
