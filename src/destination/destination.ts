/** Destinations: where traffic goes (the Internet, the MMS service, an office network). */
import { contains, type Family, type Prefix } from '../net/prefix.js';

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
