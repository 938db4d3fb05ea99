/**
 * The kernel state Waymark wants, computed purely from the config and the uplinks' states.
 * One routing table per uplink slot; rules per the ladder in constants.ts. Every table always
 * ends in a default (real or unreachable) for both families, so a lookup that reaches one of our
 * tables never falls through to the main table: a socket steered to an uplink either leaves by
 * it or fails at once with ENETUNREACH, it never leaks onto another uplink.
 */
import {
  DENY_SLOT, dnsTableForSlot, MARK_MASK, markForSlot, PRIO_DENY, PRIO_DESTINATION, PRIO_DNS, PRIO_FALLBACK, PRIO_MARK, PRIO_OIF, PRIO_SOFT_MARK,
  PRIO_SOURCE, RTPROT_WAYMARK,
} from '../constants.js';
import { isIP } from 'node:net';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { FR_ACT, RT_SCOPE, RTN, type RouteMsg, type RuleMsg } from '../netlink/message.js';
import { formatAddress, maskBytes, parseAddress, type Family, type Prefix } from '../net/prefix.js';
import type { FamilyState, UplinkState } from '../uplink/state.js';
import type { Fallback } from './fallback.js';

export interface DesiredState {
  readonly rules: readonly RuleMsg[];
  readonly routes: readonly RouteMsg[];
}

const FAMILIES: readonly Family[] = [4, 6];
const IPPROTO = { TCP: 6, UDP: 17 } as const;
const DNS_PORT = 53;
const hostLen = (f: Family): number => (f === 4 ? 32 : 128);

function rule(family: Family, priority: number, fields: Partial<RuleMsg> & { table?: number }): RuleMsg {
  return {
    family, priority, protocol: RTPROT_WAYMARK, srcLen: 0, dstLen: 0,
    action: fields.table !== undefined ? FR_ACT.TO_TBL : FR_ACT.UNREACHABLE,
    table: fields.table ?? 0,
    ...fields,
  };
}

function unreachable(family: Family, table: number, dst?: { addr: string; len: number }): RouteMsg {
  return {
    family, table, type: RTN.UNREACHABLE, protocol: RTPROT_WAYMARK, scope: RT_SCOPE.UNIVERSE,
    dstLen: dst?.len ?? 0, ...(dst ? { dst: dst.addr } : {}),
  };
}

function via(family: Family, table: number, oif: number, fs: FamilyState, dst?: { addr: string; len: number }): RouteMsg {
  return {
    family, table, type: RTN.UNICAST, protocol: RTPROT_WAYMARK,
    scope: fs.gateway ? RT_SCOPE.UNIVERSE : RT_SCOPE.LINK,
    oif, dstLen: dst?.len ?? 0,
    ...(dst ? { dst: dst.addr } : {}),
    ...(fs.gateway ? { gateway: fs.gateway } : {}),
  };
}

/** A configured prefix as the route and rule fields want it. */
const parts = (p: Prefix): { addr: string; len: number; family: Family } => ({ addr: formatAddress(p.family, p.bytes), len: p.len, family: p.family });

/** An interface address "addr/len" as its network. */
function prefixParts(text: string): { addr: string; len: number; family: Family } {
  const [a = '', l = ''] = text.split('/');
  const parsed = parseAddress(a);
  if (!parsed) throw new Error(`bad address ${text}`);
  const len = Number(l);
  return { addr: formatAddress(parsed.family, maskBytes(parsed.bytes, len)), len, family: parsed.family };
}

/** The uplink that carries a destination's prefixes of one family: highest preference, then config order. */
export function bestUplink(uplinks: readonly UplinkState[], dest: DestinationSpec, family: Family): UplinkState | undefined {
  let best: UplinkState | undefined;
  for (const u of uplinks) {
    if (!dest.via.includes(u.spec.name) || u.status !== 'active') continue;
    if (!u.families.find((f) => f.family === family)?.routable) continue;
    if (!best || u.spec.preference > best.spec.preference) best = u;
  }
  return best;
}

/**
 * `fallback` (fallback.ts: fallbackUplinks) is where unmarked Internet traffic goes while main
 * holds no default: one rule per family after main's, into that uplink's table.
 */
export function desiredState(uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[], fallback: Fallback = {}): DesiredState {
  const rules: RuleMsg[] = [];
  const routes: RouteMsg[] = [];
  const internet = destinations.find((d) => d.name === INTERNET);
  const others = destinations.filter((d) => d.name !== INTERNET);

  // Addresses held by more than one uplink (two APNs of one modem) cannot select an uplink.
  const holders = new Map<string, number>();
  for (const u of uplinks) {
    if (u.status !== 'active') continue;
    for (const fs of u.families) for (const a of fs.addresses) {
      const ip = a.split('/')[0] ?? '';
      holders.set(ip, (holders.get(ip) ?? 0) + 1);
    }
  }

  for (const f of FAMILIES) rules.push(rule(f, PRIO_DENY, { fwmark: markForSlot(DENY_SLOT), fwmask: MARK_MASK }));

  for (const u of uplinks) {
    const mark = { fwmark: u.mark, fwmask: MARK_MASK };
    const soft = { fwmark: u.softMark, fwmask: MARK_MASK };
    if (u.status !== 'active' || !u.link) {
      // Withdrawn: nothing routes to it; sockets still marked for it fail instead of leaking.
      for (const f of FAMILIES) rules.push(rule(f, PRIO_MARK, mark), rule(f, PRIO_SOFT_MARK, soft));
      continue;
    }
    const oif = u.link.index;
    const reachesInternet = internet?.via.includes(u.spec.name) ?? false;
    for (const f of FAMILIES) {
      rules.push(rule(f, PRIO_MARK, { ...mark, table: u.table }));
      rules.push(rule(f, PRIO_SOFT_MARK, { ...soft, table: u.table }));
      rules.push(rule(f, PRIO_OIF, { oifname: u.link.name, table: u.table }));
      const fs = u.families.find((x) => x.family === f);
      if (!fs || !fs.routable) {
        routes.push(unreachable(f, u.table));
        continue;
      }
      // A pinned socket's DNS query leaves by the uplink whatever resolver it names (the
      // session's nftables redirect then sends it to the uplink's own): a table of its own
      // with the link and a default, for port 53 only, and only while the uplink has a DNS
      // server of this family to redirect to.
      const dnsTable = u.dns.some((a) => isIP(a) === f) ? dnsTableForSlot(u.slot) : undefined;
      if (dnsTable !== undefined) {
        for (const ipProto of [IPPROTO.UDP, IPPROTO.TCP]) {
          rules.push(rule(f, PRIO_DNS, { ...mark, ipProto, dport: DNS_PORT, table: dnsTable }));
        }
      }
      const seenNets = new Set<string>();
      for (const a of fs.addresses) {
        const p = prefixParts(a);
        const ip = a.split('/')[0] ?? '';
        if (holders.get(ip) === 1) rules.push(rule(f, PRIO_SOURCE, { src: ip, srcLen: hostLen(f), table: u.table }));
        const key = `${p.addr}/${p.len}`;
        if (seenNets.has(key) || p.len === hostLen(f)) continue;
        seenNets.add(key);
        for (const table of [u.table, ...(dnsTable !== undefined ? [dnsTable] : [])]) {
          routes.push({
            family: f, table, type: RTN.UNICAST, protocol: RTPROT_WAYMARK, scope: RT_SCOPE.LINK,
            dst: p.addr, dstLen: p.len, oif, prefsrc: ip,
          });
        }
      }
      for (const table of [u.table, ...(dnsTable !== undefined ? [dnsTable] : [])]) {
        if (f === 6) {
          // Link-local next hops (routers announced by RA) need the link-local prefix on the link.
          routes.push({ family: 6, table, type: RTN.UNICAST, protocol: RTPROT_WAYMARK, scope: RT_SCOPE.LINK, dst: 'fe80::', dstLen: 64, oif });
        }
      }
      routes.push(reachesInternet ? via(f, u.table, oif, fs) : unreachable(f, u.table));
      if (dnsTable !== undefined) routes.push(via(f, dnsTable, oif, fs));
      for (const d of others) {
        for (const p of d.prefixes.map(parts)) {
          if (p.family !== f) continue;
          routes.push(d.via.includes(u.spec.name) ? via(f, u.table, oif, fs, p) : unreachable(f, u.table, p));
        }
      }
    }
  }

  // Destination prefixes go by the best uplink that reaches them, or nowhere.
  for (const d of others) {
    for (const p of d.prefixes.map(parts)) {
      const best = bestUplink(uplinks, d, p.family);
      rules.push(rule(p.family, PRIO_DESTINATION, { dst: p.addr, dstLen: p.len, ...(best ? { table: best.table } : {}) }));
    }
  }

  // What main would do if it had a default: the uplink's table holds its default and link routes.
  if (fallback.v4) rules.push(rule(4, PRIO_FALLBACK, { table: fallback.v4.table }));
  if (fallback.v6) rules.push(rule(6, PRIO_FALLBACK, { table: fallback.v6.table }));
  return { rules, routes };
}
