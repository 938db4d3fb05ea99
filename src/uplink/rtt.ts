/**
 * Which uplink a TCP connection of the device goes over, from what sock_diag says of it: the
 * device it is bound to (the library's choice), else its mark (a session's or an app's, set at
 * creation), else its source address when only one uplink holds it, else its soft mark (which
 * yields to a destination's own uplink: src/constants.ts). The same order as the rule ladder,
 * the source address before the soft mark because it is where the kernel actually sent it.
 * Pure.
 */
import { MARK_MASK } from '../constants.js';
import type { DiagSocket } from '../netlink/sockdiag.js';
import type { UplinkState } from './state.js';

/** Loopback peers say nothing of any uplink. */
const isLoopback = (s: DiagSocket): boolean => (s.family === 4 ? s.dst.startsWith('127.') : s.dst === '::1');

export function uplinkOfSocket(s: DiagSocket, uplinks: readonly UplinkState[]): UplinkState | undefined {
  if (s.ifindex !== 0) return uplinks.find((u) => u.link?.index === s.ifindex);
  const mark = s.mark === undefined ? 0 : (s.mark & MARK_MASK) >>> 0;
  if (mark !== 0) {
    const hard = uplinks.find((u) => u.mark === mark);
    if (hard) return hard;
  }
  const holders = uplinks.filter((u) => u.families.some((f) => f.family === s.family && f.addresses.some((a) => a.split('/')[0] === s.src)));
  if (holders.length === 1) return holders[0];
  if (mark !== 0) return uplinks.find((u) => ((u.softMark & MARK_MASK) >>> 0) === mark);
  return undefined;
}

/** The RTT samples (ms) of one dump, by uplink name; sockets with no RTT yet or no uplink are left out. */
export function rttSamples(sockets: readonly DiagSocket[], uplinks: readonly UplinkState[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const s of sockets) {
    if (s.rttUs === undefined || s.rttUs === 0 || isLoopback(s)) continue;
    const u = uplinkOfSocket(s, uplinks);
    if (!u) continue;
    const list = out.get(u.spec.name) ?? [];
    list.push(s.rttUs / 1000);
    out.set(u.spec.name, list);
  }
  return out;
}
