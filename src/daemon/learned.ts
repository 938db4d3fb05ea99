/**
 * Addresses learnt for domain destinations (a name under `corp.example` resolved through the
 * office VPN's DNS): the decisions treat such an address as its destination, and the kernel
 * routes it like the destination's prefixes. Part of the world (src/daemon/world.ts), which
 * tells its subscribers when the set changed.
 */
import type { Family } from '../net/prefix.js';
import { formatAddress } from '../net/prefix.js';
import { systemClock, type Clock } from './clock.js';
import { ExpiringMap } from './expiring.js';

/**
 * Bound of what is learnt from DNS answers (a caller may resolve any number of names under a
 * domain destination): each address is also routed by the kernel. Beyond the cap the expired
 * entries go first, then the oldest.
 */
export const MAX_LEARNED = 4096;

interface Learned { readonly destination: string; readonly until: number }

export interface LearnedHostsOptions {
  /** Called when the set changed: an address is new, or addresses expired. */
  readonly onChange: () => void;
  /** Whether a destination is (still) configured: a learnt address of one that went is void. */
  readonly configured: (destination: string) => boolean;
  readonly max?: number;
  readonly clock?: Clock;
}

export class LearnedHosts {
  /** Address text → destination. */
  private readonly map: ExpiringMap<string, Learned>;
  private readonly clock: Clock;

  constructor(private readonly opts: LearnedHostsOptions) {
    this.clock = opts.clock ?? systemClock;
    this.map = new ExpiringMap(opts.max ?? MAX_LEARNED, () => this.clock.now());
  }

  /** Notes what a name of `destination` resolved to, for `ttlMs`; returns whether an address was new. */
  learn(addresses: readonly string[], destination: string, ttlMs: number): boolean {
    let fresh = false;
    const until = this.clock.now() + ttlMs;
    for (const a of addresses) {
      if (!this.map.has(a)) fresh = true;
      this.map.set(a, { destination, until });
    }
    if (fresh) {
      this.opts.onChange();
      this.clock.after(ttlMs + 10, () => this.opts.onChange()); // and once they expire
    }
    return fresh;
  }

  /** The destination an address was learnt for, while valid and while that destination is configured. */
  destinationOf(family: Family, addr: Uint8Array): string | undefined {
    if (this.map.size === 0) return undefined;
    const key = formatAddress(family, addr);
    const l = this.map.get(key);
    if (!l) return undefined;
    // Expired, or its destination is gone from the config: the address speaks for itself again.
    if (l.until < this.clock.now() || !this.opts.configured(l.destination)) {
      this.map.delete(key);
      return undefined;
    }
    return l.destination;
  }

  /** Valid learnt addresses by destination. */
  byDestination(): Map<string, string[]> {
    const now = this.clock.now();
    const out = new Map<string, string[]>();
    for (const [addr, l] of this.map) {
      if (l.until <= now) continue;
      out.set(l.destination, [...(out.get(l.destination) ?? []), addr]);
    }
    return out;
  }

  /** Drops expired addresses (the kernel's copy follows). */
  prune(): void {
    if (this.map.prune().length > 0) this.opts.onChange();
  }
}
