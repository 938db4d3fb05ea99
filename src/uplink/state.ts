/**
 * What each configured uplink is right now, derived purely from the config, its slot and what the
 * kernel reports (links, addresses, main-table routes). No I/O here.
 */
import { nftSafeIfname } from '../backstop/nft.js';
import { markForSlot, softMarkForSlot, tableForSlot } from '../constants.js';
import { IFF, RT_SCOPE, type AddrMsg, type LinkMsg, type RouteMsg } from '../netlink/message.js';
import { isLinkLocal, parseAddress, type Family } from '../net/prefix.js';
import type { UplinkObservation } from './health.js';
import { matchesInterface, type UplinkSpec } from './uplink.js';

const MAIN_TABLE = 254;

export type UplinkStatus = 'absent' | 'down' | 'no-carrier' | 'no-address' | 'active';

export interface FamilyState {
  readonly family: Family;
  /** Usable addresses ("addr/len"), link-local excluded. */
  readonly addresses: readonly string[];
  readonly gateway?: string;
  /** Where the gateway came from; 'link' means the link is point-to-point and needs none. */
  readonly gatewaySource: 'kernel' | 'config' | 'link' | 'none';
  /** Has an address and a way out (gateway or point-to-point). */
  readonly routable: boolean;
}

export interface UplinkState {
  readonly spec: UplinkSpec;
  readonly slot: number;
  readonly table: number;
  readonly mark: number;
  /** The soft mark: this uplink unless the destination needs another (constants.ts). */
  readonly softMark: number;
  readonly status: UplinkStatus;
  readonly link?: { readonly index: number; readonly name: string; readonly flags: number };
  readonly families: readonly FamilyState[];
  /** DNS servers: the spec's (config or the device's services: src/system/compose.ts), else what the link reports (router advertisements). */
  readonly dns: readonly string[];
  readonly dnsSource: Exclude<UplinkSpec['sources']['dns'], 'none'> | 'link' | 'none';
  /** What the daemon observed of it lately (drops, measured RTT); absent: nothing yet. */
  readonly observed?: UplinkObservation;
}

export interface KernelView {
  readonly links: readonly LinkMsg[];
  readonly addrs: readonly AddrMsg[];
  /** Routes of the main table (others are ignored). */
  readonly routes: readonly RouteMsg[];
  /** DNS servers links reported (RDNSS), by interface index; still valid ones only. */
  readonly linkDns?: ReadonlyMap<number, readonly string[]>;
}

export function uplinkStates(
  specs: readonly UplinkSpec[],
  slots: ReadonlyMap<string, number>,
  kernel: KernelView,
): UplinkState[] {
  const links = claimableLinks(kernel.links);
  return specs.map((spec) => {
    const slot = slots.get(spec.name);
    if (slot === undefined) throw new Error(`no slot for uplink ${spec.name}`);
    const link = links.find((l) => matchesInterface(spec.match, l.name));
    const reported = link ? kernel.linkDns?.get(link.index) ?? [] : [];
    const dns = spec.dns.length > 0 ? { dns: spec.dns, dnsSource: spec.sources.dns === 'none' ? 'config' as const : spec.sources.dns }
      : reported.length > 0 ? { dns: reported, dnsSource: 'link' as const } : { dns: [], dnsSource: 'none' as const };
    const base = { spec, slot, table: tableForSlot(slot), mark: markForSlot(slot), softMark: softMarkForSlot(slot), ...dns };
    if (!link) return { ...base, status: 'absent', families: [] };
    const linkInfo = { index: link.index, name: link.name, flags: link.flags };
    const families = ([4, 6] as const).map((f) => familyState(f, spec, link, kernel));
    let status: UplinkStatus = 'active';
    if ((link.flags & IFF.UP) === 0) status = 'down';
    else if (!link.carrier) status = 'no-carrier';
    else if (!families.some((f) => f.addresses.length > 0)) status = 'no-address';
    return { ...base, status, link: linkInfo, families };
  });
}

const ARPHRD_LOOPBACK = 772;
const ARPHRD_NAMES: Readonly<Record<number, string>> = {
  1: 'ether', 512: 'ppp', 519: 'rawip', 768: 'ipip', 769: 'ip6tnl', 772: 'loopback', 776: 'sit', 778: 'gre', 823: 'ip6gre', 65534: 'none',
};

/** A link's type as `ip link` names it (ARPHRD_*): ether, none (tun, raw-IP wwan), ppp, ... */
export const linkKind = (l: LinkMsg): string => (l.type === undefined ? 'unknown' : ARPHRD_NAMES[l.type] ?? `type ${l.type}`);

const isLoopback = (l: LinkMsg): boolean => (l.flags & IFF.LOOPBACK) !== 0 || l.type === ARPHRD_LOOPBACK;

/**
 * The links an uplink may claim, lowest ifindex first: never the loopback, whatever its name,
 * nor a link whose name nftables cannot take as itself (a '"', '\' or '*' in it: the counters and
 * the session backstop name uplinks' devices).
 */
function claimableLinks(all: readonly LinkMsg[]): LinkMsg[] {
  return all.filter((l) => !isLoopback(l) && nftSafeIfname(l.name)).sort((a, b) => a.index - b.index);
}

/** Links an uplink's match names but that it may not claim for their name (see claimableLinks). */
export function unusableMatches(specs: readonly UplinkSpec[], all: readonly LinkMsg[]): { uplink: string; links: string[] }[] {
  const odd = all.filter((l) => !isLoopback(l) && !nftSafeIfname(l.name));
  return specs.flatMap((spec) => {
    const links = odd.filter((l) => matchesInterface(spec.match, l.name)).map((l) => l.name);
    return links.length > 0 ? [{ uplink: spec.name, links }] : [];
  });
}

export interface AmbiguousMatch {
  readonly uplink: string;
  readonly match: string;
  /** Every link the glob matches right now (loopback never), lowest ifindex (the one used) first. */
  readonly links: readonly { readonly name: string; readonly kind: string }[];
  /** The links are of more than one type (say an Ethernet and a tun). */
  readonly mixedKinds: boolean;
}

/**
 * Uplinks whose `match` claims more than one link at once: only the first (lowest ifindex) is
 * used, which is rarely what a glob such as "*" or "wwan*" meant. The daemon logs these.
 */
export function ambiguousMatches(specs: readonly UplinkSpec[], all: readonly LinkMsg[]): AmbiguousMatch[] {
  const links = claimableLinks(all);
  return specs.flatMap((spec) => {
    const hit = links.filter((l) => matchesInterface(spec.match, l.name)).map((l) => ({ name: l.name, kind: linkKind(l) }));
    if (hit.length < 2) return [];
    return [{ uplink: spec.name, match: spec.match, links: hit, mixedKinds: new Set(hit.map((h) => h.kind)).size > 1 }];
  });
}

function familyState(family: Family, spec: UplinkSpec, link: LinkMsg, kernel: KernelView): FamilyState {
  const addresses = kernel.addrs
    .filter((a) => a.index === link.index && a.family === family && !a.tentative && a.scope !== RT_SCOPE.HOST)
    .filter((a) => !isLinkLocal(family, parseAddress(a.address)?.bytes ?? new Uint8Array(16)))
    .map((a) => `${a.address}/${a.prefixLen}`);
  const onLink = kernel.routes.filter(
    (r) => r.family === family && r.table === MAIN_TABLE && r.oif === link.index && r.gateway !== undefined,
  );
  // Prefer the default route's next hop (what NetworkManager or a DHCP client installed).
  const kernelGw = (onLink.find((r) => r.dstLen === 0) ?? onLink[0])?.gateway;
  const configGw = spec.gateway[family];
  const p2p = (link.flags & (IFF.POINTOPOINT | IFF.NOARP)) !== 0;
  const gw = kernelGw ? { gateway: kernelGw, gatewaySource: 'kernel' as const }
    : configGw ? { gateway: configGw, gatewaySource: 'config' as const }
    : { gatewaySource: p2p ? ('link' as const) : ('none' as const) };
  return { family, addresses, ...gw, routable: addresses.length > 0 && gw.gatewaySource !== 'none' };
}
