/** Destinations: where traffic goes (the Internet, the MMS service, an office network). */
import { contains, parseAddress, type Family, type Prefix } from '../net/prefix.js';

/** The built-in default destination: everything no other destination claims. */
export const INTERNET = 'internet';

export interface DestinationSpec {
  readonly name: string;
  readonly prefixes: readonly Prefix[];
  /** DNS domains (lower case, no trailing dot); a name matches a domain and its subdomains. */
  readonly domains: readonly string[];
  /** Names of the uplinks that can reach it. */
  readonly via: readonly string[];
}

/** The destination an address belongs to: the one holding the longest matching prefix, else the Internet. */
export function destinationOfAddress(
  destinations: readonly DestinationSpec[],
  family: Family,
  addr: Uint8Array,
): string {
  let best: { name: string; len: number } | undefined;
  for (const d of destinations) {
    for (const p of d.prefixes) {
      if (contains(p, family, addr) && (!best || p.len > best.len)) best = { name: d.name, len: p.len };
    }
  }
  return best?.name ?? INTERNET;
}

/** The destination a DNS name belongs to (longest matching domain), or undefined for none. */
export function destinationOfName(destinations: readonly DestinationSpec[], host: string): string | undefined {
  const h = host.toLowerCase().replace(/\.$/, '');
  let best: { name: string; len: number } | undefined;
  for (const d of destinations) {
    for (const dom of d.domains) {
      if ((h === dom || h.endsWith('.' + dom)) && (!best || dom.length > best.len)) best = { name: d.name, len: dom.length };
    }
  }
  return best?.name;
}

/**
 * The destinations with the addresses learnt for their domains added as host prefixes, so the
 * kernel routes those addresses like the rest of the destination, for programs without the
 * library too. An address inside any configured prefix is left to that prefix (configured
 * prefixes win); at most `max` addresses are added.
 */
export function withLearnedHosts(
  destinations: readonly DestinationSpec[],
  learned: ReadonlyMap<string, readonly string[]>,
  max = 512,
): DestinationSpec[] {
  let budget = max;
  return destinations.map((d) => {
    const hosts = learned.get(d.name);
    if (!hosts || d.name === INTERNET) return d;
    const extra: Prefix[] = [];
    for (const h of hosts) {
      const a = parseAddress(h);
      if (!a || budget <= 0) continue;
      if (destinations.some((o) => o.prefixes.some((p) => contains(p, a.family, a.bytes)))) continue;
      extra.push({ family: a.family, bytes: a.bytes, len: a.family === 4 ? 32 : 128 });
      budget--;
    }
    return extra.length === 0 ? d : { ...d, prefixes: [...d.prefixes, ...extra] };
  });
}
