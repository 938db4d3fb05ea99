/**
 * From kernel counter readings to usage deltas (pure). The kernel's counters only grow while the
 * map or table holding them lives; a reading lower than the last one means it was made anew (a
 * clean exit deletes the nftables table), and then the whole reading is growth since.
 *
 * Restarts. The programs' maps are made by each daemon run (they go with the process), so every
 * value in them is this run's: an entry read for the first time is all growth. The nftables
 * table outlives a crash (and `--keep-state`): what its counters hold when first read was
 * counted by the run before, up to its last flush, so a counter's first reading is a baseline
 * and a restart never counts it twice; a crash loses what was read but not flushed (docs/usage.md).
 */

/** Growth of a set of monotonic counters between readings, by id. */
export class Growth {
  private last = new Map<string, bigint>();

  /**
   * `baselineFirst`: a counter's first reading is its baseline (it may hold what an earlier run
   * counted), whenever it first shows: at start, or later (a table that was not there at the
   * first reading, an uplink counted from then on). What a new counter held at its first
   * reading is so left out: at most one sampling interval of one uplink, never counted twice.
   */
  constructor(private readonly baselineFirst: boolean) {}

  /** The growth since the last reading of `id`. */
  of(id: string, value: bigint, seen: Set<string>): bigint {
    seen.add(id);
    const prev = this.last.get(id) ?? (this.baselineFirst ? value : 0n);
    this.last.set(id, value);
    return value >= prev ? value - prev : value;
  }

  /** Ends a reading: counters it did not include are forgotten (their entries went). */
  done(seen: ReadonlySet<string>): void {
    for (const id of this.last.keys()) if (!seen.has(id)) this.last.delete(id);
  }
}

/**
 * What an uplink carried that no app was counted for: its device counter's growth less what the
 * programs counted (and, for tx, dropped: those packets passed the counter but never left). The
 * device counter is read after the programs' map, and counts each packet before they see it, so
 * the difference is never negative but for packets counted in between; such a deficit is carried
 * to the next sample instead of being lost or reported negative.
 */
export class Unattributed {
  private readonly deficit = new Map<string, number>();

  of(id: string, device: number, counted: number): number {
    const d = device - counted - (this.deficit.get(id) ?? 0);
    if (d < 0) {
      this.deficit.set(id, -d);
      return 0;
    }
    this.deficit.delete(id);
    return d;
  }
}

/** The minute an instant is in (unix ms of its start). */
export const minuteOf = (ms: number): number => Math.floor(ms / 60_000) * 60_000;
