/**
 * A Map whose entries expire, with a size cap: what the decision service learns from DNS
 * answers (addresses of domain destinations, cached answers) is bounded whatever names its
 * callers resolve. When a set would exceed the cap, expired entries go first, then the oldest
 * (least recently set). `prune()` drops the expired ones; the owner calls it periodically.
 */
export interface Expiring {
  /** Date.now() from which the entry is void. */
  readonly until: number;
}

export class ExpiringMap<K, V extends Expiring> {
  private readonly map = new Map<K, V>();

  constructor(readonly max: number, private readonly now: () => number = Date.now) {
    if (!(max >= 1)) throw new RangeError(`ExpiringMap: max must be at least 1 (got ${max})`);
  }

  get size(): number {
    return this.map.size;
  }

  /** The entry, expired or not (the caller decides what an expired one means). */
  get(key: K): V | undefined {
    return this.map.get(key);
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  delete(key: K): boolean {
    return this.map.delete(key);
  }

  clear(): void {
    this.map.clear();
  }

  /** Sets `key` as the newest entry; returns the keys evicted to stay within `max`. */
  set(key: K, value: V): K[] {
    this.map.delete(key); // re-inserted last: iteration order is age order
    const evicted: K[] = [];
    if (this.map.size >= this.max) evicted.push(...this.prune());
    for (const k of this.map.keys()) {
      if (this.map.size < this.max) break;
      this.map.delete(k);
      evicted.push(k);
    }
    this.map.set(key, value);
    return evicted;
  }

  /** Drops the expired entries; returns their keys. */
  prune(): K[] {
    const now = this.now();
    const gone: K[] = [];
    for (const [k, v] of this.map) {
      if (v.until <= now) {
        this.map.delete(k);
        gone.push(k);
      }
    }
    return gone;
  }

  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }

  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.map.entries();
  }
}
