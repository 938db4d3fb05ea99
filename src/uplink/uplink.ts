/** An uplink as the user described it: one data connection of the device. */
import type { UplinkKind } from '../config/schema.js';
import type { Family } from '../net/prefix.js';
import { compileGlob, globMatch, isGlob } from '../glob.js';

/** Where a fact of an uplink came from (`waymark status` shows it). */
export type FactOrigin = 'config' | 'profile' | 'kind' | 'default' | 'modemmanager' | 'networkmanager' | 'resolved' | 'manual' | 'none';

/** The origin of each fact of an uplink that the device's services may give (src/system/compose.ts). */
export interface UplinkSources {
  /** The interface: the config's match, or ModemManager's bearer for `match: { apn }`. */
  readonly match: 'config' | 'modemmanager' | 'none';
  readonly metered: 'config' | 'profile' | 'kind' | 'networkmanager';
  readonly roaming: 'config' | 'default' | 'modemmanager' | 'manual';
  /** Of `dns` (empty `dns`: 'none'; the link's RDNSS is the state's, src/uplink/state.ts). */
  readonly dns: 'config' | 'modemmanager' | 'networkmanager' | 'resolved' | 'none';
  readonly sim: 'config' | 'modemmanager' | 'manual' | 'none';
}

export interface UplinkSpec {
  readonly name: string;
  /**
   * Interface name or glob; '' matches no link (an APN-matched uplink while no bearer names its
   * interface).
   */
  readonly match: string;
  /** `match: { apn }` in the config: the APN whose bearer's interface `match` takes. */
  readonly apn?: string;
  /** The config said `roaming:` (true or false): ModemManager's registration does not change it. */
  readonly roamingSet?: boolean;
  readonly sources: UplinkSources;
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
