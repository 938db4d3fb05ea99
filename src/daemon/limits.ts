/**
 * Connection limits of the daemon's two sockets (the decide socket, src/decision/server.ts, and
 * the control socket, ./server.ts): both are open to every local user, so one user must not be
 * able to fill them for everyone.
 *
 * A connection of uid U is admitted while
 *   - U (not root) has fewer than `perUid` connections open, and
 *   - all non-root uids together hold fewer than `total - rootReserve`: the last `rootReserve`
 *     connections are root's alone, whoever else is refused;
 *   - root (uid 0) is admitted while fewer than `total` are open.
 * A refused connection is counted per uid (in `waymark status` and its JSON) and logged at warn
 * level naming the uid: the first refusal of a uid at once, then at most once per
 * {@link REFUSAL_LOG_INTERVAL_MS} per uid with the count of the ones not logged.
 *
 * The numbers (see the README, "Limits"):
 *   - decide socket: 1024 per uid, 4096 in all, 512 kept for root. The library opens one
 *     connection per thread that connects (made on first need, closed on exec), so a busy desktop
 *     session (hundreds of processes, a few of whose threads connect; browsers' DNS threads)
 *     holds a few hundred; 1024 leaves it room twice over. 4096 lets three such users and the
 *     system services (root's reserve of 512) coexist.
 *   - control socket: 128 per uid, 512 in all, 64 kept for root. `waymark exec` keeps its
 *     connection for the life of its program and a user may run 64 sessions: twice that, so a
 *     user at the session cap still has room for `waymark status`, tools and a burst of
 *     starts (which the session cap refuses with a clear EPERM rather than this limit with a
 *     reset).
 *   - Each connection costs the daemon one file descriptor. Node raises its soft RLIMIT_NOFILE
 *     to the hard limit at start-up (524288 under systemd's default, 4096 for a daemon started
 *     from a shell on a kernel default); when the decide total would not fit beside the control
 *     socket's and {@link OWN_FDS} for the daemon's own (netlink, nft, DNS query sockets, state
 *     files), it is lowered to what fits, with a warning at start.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from './log.js';

export interface ConnectionLimits {
  /** Connections open at once, all uids together (root may use them all). */
  readonly total: number;
  /** Connections open at once per non-root uid. */
  readonly perUid: number;
  /** Of `total`, how many only root may use. */
  readonly rootReserve: number;
}

export interface ConnectionStats {
  readonly limits: ConnectionLimits;
  /** Connections refused since start, for any of the limits. */
  readonly refused: number;
  /** The uids whose connections were refused, most refused first (the first {@link MAX_TRACKED_UIDS} uids refused). */
  readonly refusedByUid: readonly { readonly uid: number; readonly refused: number }[];
}

export const DECIDE_LIMITS: ConnectionLimits = Object.freeze({ total: 4096, perUid: 1024, rootReserve: 512 });
export const CONTROL_LIMITS: ConnectionLimits = Object.freeze({ total: 512, perUid: 128, rootReserve: 64 });
/** File descriptors the daemon keeps for itself beyond its two sockets' connections. */
export const OWN_FDS = 256;
export const REFUSAL_LOG_INTERVAL_MS = 10_000;
/** Refusals are counted per uid for this many distinct uids; later ones only in the total. */
export const MAX_TRACKED_UIDS = 64;

/**
 * Fills in what `given` leaves out from `defaults`, scaled to a smaller `total`: the reserve is
 * at most an eighth of the total (at least 1), a uid at most what the reserve leaves.
 */
export function connectionLimits(given: Partial<ConnectionLimits>, defaults: ConnectionLimits): ConnectionLimits {
  const total = Math.max(1, Math.floor(given.total ?? defaults.total));
  const rootReserve = Math.min(given.rootReserve ?? Math.min(defaults.rootReserve, Math.max(1, Math.floor(total / 8))), total - 1);
  const perUid = Math.min(given.perUid ?? defaults.perUid, total - rootReserve);
  return { total, perUid: Math.max(1, perUid), rootReserve: Math.max(0, rootReserve) };
}

/** The soft RLIMIT_NOFILE of this process (Infinity when unlimited or unreadable). */
export function openFilesLimit(limitsText?: string): number {
  let text = limitsText;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8');
    } catch {
      return Infinity;
    }
  }
  const m = /^Max open files\s+(\S+)/m.exec(text);
  const n = m ? Number(m[1]) : NaN;
  return Number.isFinite(n) && n > 0 ? n : Infinity;
}

/** The decide socket's default total for a soft fd limit of `nofile`. */
export function decideTotalFor(nofile: number): number {
  return Math.max(16, Math.min(DECIDE_LIMITS.total, nofile - CONTROL_LIMITS.total - OWN_FDS));
}

type Refusal = 'uid' | 'reserve' | 'total';

interface UidRecord { refused: number; lastLog: number; suppressed: number }

/** Counts open connections per uid and decides admissions; see the top of this file. */
export class ConnectionLimiter {
  private readonly open = new Map<number, number>();
  private openTotal = 0;
  private openRoot = 0;
  private refusedTotal = 0;
  private readonly byUid = new Map<number, UidRecord>();
  /** Log rate limit for uids beyond {@link MAX_TRACKED_UIDS}. */
  private readonly untracked: UidRecord = { refused: 0, lastLog: -Infinity, suppressed: 0 };

  constructor(
    /** For log lines: "decide socket", "control socket". */
    private readonly what: string,
    readonly limits: ConnectionLimits,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Connections open now. */
  get size(): number {
    return this.openTotal;
  }

  /** Admits (and counts) a connection of `uid`, or counts and logs its refusal and returns false. */
  admit(uid: number, pid: number): boolean {
    const why = this.refusal(uid);
    if (why === undefined) {
      this.open.set(uid, (this.open.get(uid) ?? 0) + 1);
      this.openTotal++;
      if (uid === 0) this.openRoot++;
      return true;
    }
    this.refused(uid, pid, why);
    return false;
  }

  /** A connection admitted for `uid` has closed. */
  release(uid: number): void {
    const n = this.open.get(uid) ?? 0;
    if (n <= 0) return;
    if (n === 1) this.open.delete(uid);
    else this.open.set(uid, n - 1);
    this.openTotal--;
    if (uid === 0) this.openRoot--;
  }

  /** Why a connection of `uid` would be refused now (undefined: it would not). */
  refusal(uid: number): Refusal | undefined {
    if (this.openTotal >= this.limits.total) return 'total';
    if (uid === 0) return undefined;
    if ((this.open.get(uid) ?? 0) >= this.limits.perUid) return 'uid';
    if (this.openTotal - this.openRoot >= this.limits.total - this.limits.rootReserve) return 'reserve';
    return undefined;
  }

  get stats(): ConnectionStats {
    const refusedByUid = [...this.byUid].map(([uid, r]) => ({ uid, refused: r.refused })).sort((a, b) => b.refused - a.refused || a.uid - b.uid);
    return { limits: this.limits, refused: this.refusedTotal, refusedByUid };
  }

  private refused(uid: number, pid: number, why: Refusal): void {
    this.refusedTotal++;
    let rec = this.byUid.get(uid);
    if (rec === undefined && this.byUid.size < MAX_TRACKED_UIDS) {
      rec = { refused: 0, lastLog: -Infinity, suppressed: 0 };
      this.byUid.set(uid, rec);
    }
    rec ??= this.untracked;
    rec.refused++;
    const now = this.now();
    if (now - rec.lastLog < REFUSAL_LOG_INTERVAL_MS) {
      rec.suppressed++;
      return;
    }
    const { total, perUid, rootReserve } = this.limits;
    const msg = why === 'uid'
      ? `${this.what}: too many connections from uid ${uid}; refusing them (at most ${perUid} per uid)`
      : why === 'reserve'
        ? `${this.what}: too many clients; refusing uid ${uid} (the last ${rootReserve} of ${total} connections are kept for root)`
        : `${this.what}: too many clients; refusing connections (at most ${total})`;
    this.log.warn(msg, {
      uid, pid, open: this.open.get(uid) ?? 0, openTotal: this.openTotal, refused: rec.refused,
      ...(rec.suppressed > 0 ? { suppressed: rec.suppressed } : {}),
    });
    rec.lastLog = now;
    rec.suppressed = 0;
  }
}

/**
 * `stats` as `uid` may see them: which uids were refused is the business of root and the
 * waymark group (`seesAll`); others see the counts and their own uid's entry only.
 */
export function refusalsSeenBy<T extends Pick<ConnectionStats, 'refusedByUid'>>(stats: T, uid: number, seesAll: boolean): T {
  return seesAll ? stats : { ...stats, refusedByUid: stats.refusedByUid.filter((r) => r.uid === uid) };
}
