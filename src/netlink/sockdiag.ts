/**
 * sock_diag (NETLINK_SOCK_DIAG) wire format for TCP sockets: the dump request (struct
 * inet_diag_req_v2) and each socket's reply (struct inet_diag_msg with its attributes), as
 * <linux/inet_diag.h> and <linux/tcp.h> lay them out. Pure encode/decode; the socket is
 * src/netlink/socket.ts. The daemon reads tcpi_rtt of established connections with it
 * (src/daemon/rtt-monitor.ts).
 */
import { formatAddress, type Family } from '../net/prefix.js';
import { AF_INET, AF_INET6, parseAttrs, type NlMessage } from './message.js';

export const NETLINK_SOCK_DIAG = 4;
export const SOCK_DIAG_BY_FAMILY = 20;
export const IPPROTO_TCP = 6;
/** TCP states (include/net/tcp_states.h); the request's idiag_states is a bit mask of them. */
export const TCP_ESTABLISHED = 1;
/** INET_DIAG_* attribute types. INFO carries struct tcp_info; MARK (u32, sk_mark) is only sent to a CAP_NET_ADMIN requester. */
export const INET_DIAG = { INFO: 2, MARK: 15 } as const;

/** sizeof(struct inet_diag_req_v2), sizeof(struct inet_diag_msg). */
export const REQ_V2_SIZE = 56;
export const DIAG_MSG_SIZE = 72;
/** Offsets in struct tcp_info of tcpi_rtt and tcpi_rttvar (µs). */
const TCPI_RTT = 68;
const TCPI_RTTVAR = 72;

/** A dump of `family` TCP sockets in `states`, asking for tcp_info (INET_DIAG_INFO). */
export function encodeTcpDumpRequest(family: Family, states: number = 1 << TCP_ESTABLISHED): Buffer {
  const b = Buffer.alloc(REQ_V2_SIZE);
  b.writeUInt8(family === 4 ? AF_INET : AF_INET6, 0); // sdiag_family
  b.writeUInt8(IPPROTO_TCP, 1); // sdiag_protocol
  b.writeUInt8(1 << (INET_DIAG.INFO - 1), 2); // idiag_ext: extension bits are 1 << (type - 1)
  b.writeUInt32LE(states >>> 0, 4); // idiag_states; the inet_diag_sockid (all zero) matches any socket
  return b;
}

/** One socket of a dump. */
export interface DiagSocket {
  readonly family: Family;
  readonly state: number;
  readonly src: string;
  readonly sport: number;
  readonly dst: string;
  readonly dport: number;
  /** The device the socket is bound to (SO_BINDTODEVICE), 0: none. */
  readonly ifindex: number;
  readonly uid: number;
  readonly inode: number;
  /** sk_mark; absent when the kernel did not say (the requester lacks CAP_NET_ADMIN). */
  readonly mark?: number;
  /** Smoothed RTT and its variance from tcp_info, µs; absent without INET_DIAG_INFO. */
  readonly rttUs?: number;
  readonly rttVarUs?: number;
}

/** A SOCK_DIAG_BY_FAMILY reply; undefined for another message or a short one. */
export function decodeDiagSocket(m: NlMessage): DiagSocket | undefined {
  if (m.type !== SOCK_DIAG_BY_FAMILY || m.body.length < DIAG_MSG_SIZE) return undefined;
  const b = m.body;
  const af = b.readUInt8(0);
  const family: Family | undefined = af === AF_INET ? 4 : af === AF_INET6 ? 6 : undefined;
  if (!family) return undefined;
  // inet_diag_sockid at 4: sport, dport (big-endian), src[16], dst[16], if, cookie[2]. An IPv6
  // socket connected to an IPv4 peer holds v4-mapped addresses (::ffff:a.b.c.d): it is IPv4 traffic.
  const mapped = family === 6 && isV4Mapped(b.subarray(24, 40));
  const fam: Family = mapped ? 4 : family;
  const addr = (off: number): string => (mapped ? formatAddress(4, b.subarray(off + 12, off + 16))
    : formatAddress(fam, b.subarray(off, off + (fam === 4 ? 4 : 16))));
  const attrs = parseAttrs(b, DIAG_MSG_SIZE);
  const mark = attrs.get(INET_DIAG.MARK);
  const info = attrs.get(INET_DIAG.INFO);
  // An older kernel's tcp_info may be shorter: take the RTT only when it is there.
  const rtt = info && info.length >= TCPI_RTTVAR + 4 ? { rttUs: info.readUInt32LE(TCPI_RTT), rttVarUs: info.readUInt32LE(TCPI_RTTVAR) } : {};
  return {
    family: fam,
    state: b.readUInt8(1),
    sport: b.readUInt16BE(4),
    dport: b.readUInt16BE(6),
    src: addr(8),
    dst: addr(24),
    ifindex: b.readUInt32LE(40),
    uid: b.readUInt32LE(64),
    inode: b.readUInt32LE(68),
    ...(mark && mark.length >= 4 ? { mark: mark.readUInt32LE(0) } : {}),
    ...rtt,
  };
}

const isV4Mapped = (a: Buffer): boolean => a.subarray(0, 10).every((x) => x === 0) && a[10] === 0xff && a[11] === 0xff;
