/**
 * What the daemon observes of each uplink over time, for the needs (docs/needs.md): how often it
 * dropped lately (transitions out of `active` in a sliding window) and its round-trip time as the
 * TCP connections over it measure it (tcpi_rtt, from sock_diag: src/daemon/rtt-monitor.ts).
 * Pure: the clock is injected, nothing here does I/O.
 */
import type { UplinkStatus } from './state.js';

/** Drops are counted over the last hour. */
export const FLAP_WINDOW_MS = 3_600_000;
/** An RTT sample counts this long (then the uplink falls back to its configured latency). */
export const RTT_MAX_AGE_MS = 300_000;
/** Samples needed before a measured RTT replaces the configured one. */
export const RTT_MIN_SAMPLES = 3;
/** Samples kept per uplink (the newest): bounds memory and the median's cost. */
export const RTT_KEEP = 64;

/** What the decisions read of an uplink's history (UplinkState.observed). */
export interface UplinkObservation {
  /** Transitions out of `active` within the window (FLAP_WINDOW_MS). */
  readonly drops: number;
  /** The median of the recent tcpi_rtt samples, ms; only with at least RTT_MIN_SAMPLES of them. */
  readonly rttMs?: number;
  /** Recent RTT samples (not older than RTT_MAX_AGE_MS). */
  readonly rttSamples: number;
}

export const NOTHING_OBSERVED: UplinkObservation = Object.freeze({ drops: 0, rttSamples: 0 });

/**
 * Counts each uplink's drops: a status that was `active` at one observation and is something
 * else at the next. The first sight of an uplink counts nothing (the daemon just started, or the
 * uplink was just configured).
 */
export class FlapWindow {
  private readonly last = new Map<string, UplinkStatus>();
  private readonly drops = new Map<string, number[]>();

  constructor(private readonly now: () => number, readonly windowMs = FLAP_WINDOW_MS, private readonly maxKept = 256) {}

  /** Takes in one observation of every configured uplink; uplinks no longer listed are forgotten. */
  update(states: readonly { readonly name: string; readonly status: UplinkStatus }[]): void {
    const at = this.now();
    const names = new Set<string>();
    for (const { name, status } of states) {
      names.add(name);
      const before = this.last.get(name);
      this.last.set(name, status);
      if (before !== 'active' || status === 'active') continue;
      const list = this.drops.get(name) ?? [];
      list.push(at);
      if (list.length > this.maxKept) list.shift();
      this.drops.set(name, list);
    }
    for (const name of [...this.last.keys()]) {
      if (!names.has(name)) {
        this.last.delete(name);
        this.drops.delete(name);
      }
    }
  }

  /** Drops of `name` within the window ending now. */
  count(name: string): number {
    const list = this.drops.get(name);
    if (!list) return 0;
    const since = this.now() - this.windowMs;
    while (list.length > 0 && (list[0] ?? 0) <= since) list.shift();
    return list.length;
  }
}

/** Recent RTT samples per uplink; the estimate is their median (robust to one slow server). */
export class RttTracker {
  private readonly samples = new Map<string, { at: number; ms: number }[]>();

  constructor(private readonly now: () => number, readonly maxAgeMs = RTT_MAX_AGE_MS, readonly minSamples = RTT_MIN_SAMPLES, private readonly keep = RTT_KEEP) {}

  /** Adds one round of samples (ms) for an uplink, taken now. */
  add(name: string, ms: readonly number[]): void {
    if (ms.length === 0) return;
    const at = this.now();
    const list = this.samples.get(name) ?? [];
    for (const v of ms) if (Number.isFinite(v) && v >= 0) list.push({ at, ms: v });
    list.splice(0, Math.max(0, list.length - this.keep));
    this.samples.set(name, list);
  }

  /** Keeps only these uplinks (the others left the config). */
  retain(names: ReadonlySet<string>): void {
    for (const name of [...this.samples.keys()]) if (!names.has(name)) this.samples.delete(name);
  }

  /** The recent samples' count and, with enough of them, their median. */
  estimate(name: string): { readonly ms?: number; readonly samples: number } {
    const list = this.samples.get(name);
    if (!list) return { samples: 0 };
    const since = this.now() - this.maxAgeMs;
    while (list.length > 0 && (list[0]?.at ?? 0) <= since) list.shift();
    if (list.length < this.minSamples) return { samples: list.length };
    return { ms: median(list.map((s) => s.ms)), samples: list.length };
  }
}

export function median(values: readonly number[]): number {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? (v[mid] ?? 0) : ((v[mid - 1] ?? 0) + (v[mid] ?? 0)) / 2;
}

/** Both observations, one per uplink name: what the world attaches to its UplinkStates. */
export class UplinkHealth {
  readonly flaps: FlapWindow;
  readonly rtt: RttTracker;

  constructor(now: () => number) {
    this.flaps = new FlapWindow(now);
    this.rtt = new RttTracker(now);
  }

  observation(name: string): UplinkObservation {
    const drops = this.flaps.count(name);
    const r = this.rtt.estimate(name);
    if (drops === 0 && r.samples === 0) return NOTHING_OBSERVED;
    return { drops, rttSamples: r.samples, ...(r.ms !== undefined ? { rttMs: r.ms } : {}) };
  }
}
