/** An uplink as the user described it: one data connection of the device. */
import type { UplinkKind } from '../config/schema.js';
import type { Family } from '../net/prefix.js';
import { compileGlob, globMatch, isGlob } from '../glob.js';

export interface UplinkSpec {
  readonly name: string;
  /** Interface name or glob. */
  readonly match: string;
  readonly kind: UplinkKind;
  readonly cost: { readonly perMB: number; readonly perMinute: number; readonly currency: string };
  readonly metered: boolean;
  readonly roaming: boolean;
  readonly sim?: { readonly iccid: string; readonly apn?: string };
  readonly preference: number;
  /** Configured next hops, used when the kernel shows none for the link. */
  readonly gateway: Partial<Record<Family, string>>;
  readonly dns: readonly string[];
  /** What the user said of the link (docs/needs.md); each absent one is the kind's default (src/decision/needs.ts). */
  readonly properties: UplinkProperties;
}

export interface UplinkProperties {
  /** Typical throughput, Mbit/s. */
  readonly bandwidthMbps?: number;
  /** Typical round-trip time, ms. */
  readonly latencyMs?: number;
  /** 0 (drops all the time) to 1 (never drops). */
  readonly stability?: number;
}

/** Shell-style glob over interface names: `*`, `?` and `[...]` classes (`[!...]` negates). */
export function matchesInterface(pattern: string, ifname: string): boolean {
  return globMatch(pattern, ifname);
}

/** Why `pattern` is not a usable interface glob (e.g. a class `[z-a]`), or undefined when it is. */
export function globProblem(pattern: string): string | undefined {
  const re = compileGlob(pattern);
  return typeof re === 'string' ? re.replace('not a valid glob', 'not a valid interface glob') : undefined;
}

export { isGlob };
