/**
 * Budgets, the pure part (no I/O, no clock): a budget's current period in local time, its limit
 * in bytes, its state, the limit the kernel enforces, and which state changes are announced.
 * The daemon's accounting service (src/accounting/service.ts) feeds these with what it measured.
 *
 * Local time comes from an offset function (minutes east of UTC at an instant, as in "+02:00"),
 * by default the process's time zone, so tests pick any zone and any DST change without TZ.
 */
import { MB_BYTES, type BudgetLimit, type BudgetPeriod, type BudgetState } from './view.js';
import type { UplinkCost } from './cost.js';

/** Minutes east of UTC in force at `atMs` (UTC+2: 120; UTC-3: -180). */
export type TzOffset = (atMs: number) => number;

/** The process's time zone (Date's, from TZ or /etc/localtime). */
export const localOffset: TzOffset = (atMs) => -new Date(atMs).getTimezoneOffset();

const MINUTE = 60_000;
const DAY = 86_400_000;

export interface Period {
  /** The first instant of the period (inclusive) and of the next one (exclusive), Unix ms. */
  readonly startMs: number;
  readonly endMs: number;
}

/** What names a budget's periods: `start` is the weekday of a week (1 Monday .. 7 Sunday), the billing day of a month (1..31). */
export interface PeriodSpec {
  readonly period: BudgetPeriod;
  readonly start: number;
}

/** Why `start` does not fit `period`, or undefined when it does (day: 1 only; week: 1..7; month: 1..31). */
export function startProblem(period: BudgetPeriod, start: number): string | undefined {
  if (!Number.isInteger(start)) return 'must be a whole number';
  switch (period) {
    case 'day': return start === 1 ? undefined : 'a daily budget starts at local midnight: start must be 1 (or absent)';
    case 'week': return start >= 1 && start <= 7 ? undefined : 'a weekly budget starts on a weekday: 1 (Monday) to 7 (Sunday)';
    case 'month': return start >= 1 && start <= 31 ? undefined : 'a monthly budget starts on a billing day: 1 to 31 (clamped to the month\'s length)';
  }
}

/**
 * The period of `b` that holds `nowMs`, its bounds at local midnights: day: today's; week: from
 * the last midnight starting weekday `start`; month: from billing day `start` clamped to the
 * month's length (31 in February: the 28th or 29th) to the next month's clamped billing day.
 * A midnight a DST change skips is the first instant after the jump; one it repeats, the first.
 */
export function periodOf(b: PeriodSpec, nowMs: number, tz: TzOffset = localOffset): Period {
  const problem = startProblem(b.period, b.start);
  if (problem !== undefined) throw new RangeError(`${b.period} budget, start ${b.start}: ${problem}`);
  // Wall-clock times are written as UTC ms (Date.UTC of the local date and time).
  const wall = new Date(nowMs + tz(nowMs) * MINUTE);
  let startWall = firstWall(b, wall.getUTCFullYear(), wall.getUTCMonth(), wall.getUTCDate());
  // A DST change that moves the clock back over midnight shows the previous date for a while
  // after the day began: then now is past that date's period, and it is in the next.
  for (let step = 0; step < 3; step++) {
    const startMs = wallToUtc(startWall, tz);
    const endMs = wallToUtc(nextWall(b, startWall), tz);
    if (nowMs >= endMs) startWall = nextWall(b, startWall);
    else if (nowMs < startMs) {
      const prev = new Date(startWall - DAY);
      startWall = firstWall(b, prev.getUTCFullYear(), prev.getUTCMonth(), prev.getUTCDate());
    } else return { startMs, endMs };
  }
  return { startMs: wallToUtc(startWall, tz), endMs: wallToUtc(nextWall(b, startWall), tz) };
}

const daysIn = (year: number, month: number): number => new Date(Date.UTC(year, month + 1, 0)).getUTCDate();

/** Wall-clock midnight of the billing day `day` in (year, month), clamped to the month's length (month may be out of 0..11). */
function billingDay(year: number, month: number, day: number): number {
  const first = new Date(Date.UTC(year, month, 1));
  return Date.UTC(first.getUTCFullYear(), first.getUTCMonth(), Math.min(day, daysIn(first.getUTCFullYear(), first.getUTCMonth())));
}

/** Wall-clock start of the period holding the local date (year, month 0..11, date). */
function firstWall(b: PeriodSpec, year: number, month: number, date: number): number {
  const today = Date.UTC(year, month, date);
  switch (b.period) {
    case 'day': return today;
    case 'week': {
      const weekday = ((new Date(today).getUTCDay() + 6) % 7) + 1; // 1 Monday .. 7 Sunday
      return today - ((weekday - b.start + 7) % 7) * DAY;
    }
    case 'month': {
      const thisMonth = billingDay(year, month, b.start);
      return today >= thisMonth ? thisMonth : billingDay(year, month - 1, b.start);
    }
  }
}

/** Wall-clock start of the period after the one starting at `startWall`. */
function nextWall(b: PeriodSpec, startWall: number): number {
  switch (b.period) {
    case 'day': return startWall + DAY;
    case 'week': return startWall + 7 * DAY;
    case 'month': {
      const s = new Date(startWall);
      return billingDay(s.getUTCFullYear(), s.getUTCMonth() + 1, b.start);
    }
  }
}

/**
 * The first instant whose local time is `wallMs` or later: the earlier of two when the clock
 * shows it twice (DST ends), the instant of the jump when the clock skips it (DST begins).
 */
export function wallToUtc(wallMs: number, tz: TzOffset = localOffset): number {
  const guess = wallMs - tz(wallMs) * MINUTE;
  // Every offset in force within a day of it: a DST change there is among them.
  const offsets = [...new Set([tz(guess - DAY), tz(guess), tz(guess + DAY)])];
  const shows = (t: number): number => t + tz(t) * MINUTE;
  const exact = offsets.map((o) => wallMs - o * MINUTE).filter((t) => shows(t) === wallMs);
  if (exact.length > 0) return Math.min(...exact);
  // Skipped: the local time jumps past wallMs between these two; find the jump (ms resolution).
  let lo = Math.min(...offsets.map((o) => wallMs - o * MINUTE));
  let hi = Math.max(...offsets.map((o) => wallMs - o * MINUTE));
  if (shows(hi) < wallMs) return hi; // an offset function that changes more than once a day: good enough
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (shows(mid) >= wallMs) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** A budget's limit in bytes, or null with the reason it has none. */
export type LimitBytes = { readonly bytes: number } | { readonly bytes: null; readonly reason: string };

/**
 * `limit` in bytes on an uplink priced `cost` (undefined: not configured): bytes as they are;
 * money at the uplink's price per MB (rounded down: never more than the money buys), in its
 * currency only. A money budget on an uplink with no price per MB has no byte limit (it cannot
 * run out; a per-minute price is not counted here).
 */
export function limitBytes(limit: BudgetLimit, cost: UplinkCost | undefined): LimitBytes {
  if ('bytes' in limit) return { bytes: limit.bytes };
  if (cost === undefined) return { bytes: null, reason: 'the uplink is not configured' };
  if (cost.currency !== limit.currency) return { bytes: null, reason: `the uplink is priced in ${cost.currency}, not ${limit.currency}` };
  if (!(cost.perMB > 0)) return { bytes: null, reason: 'the uplink has no price per MB: a money budget on it cannot run out' };
  const exact = (limit.money / cost.perMB) * MB_BYTES;
  // 5 EUR at 0.02 EUR/MB is 250 MB, though the binary fractions may make it 249999999.99999997.
  const near = Math.round(exact);
  const bytes = Math.abs(exact - near) <= 1e-9 * Math.max(1, exact) ? near : Math.floor(exact);
  return { bytes: Math.min(bytes, Number.MAX_SAFE_INTEGER) };
}

/** The bytes at which a budget of `limit` bytes warns: `warnAt` of it, rounded up (0.55 × 100 is 55, not 55.00000000000001). */
export function warnBytes(limit: number, warnAt: number): number {
  return Math.ceil(warnAt * limit - 1e-9 * limit);
}

/** exhausted: `used` reached the limit; warning: it reached `warnAt` of it; ok otherwise, and always without a limit. */
export function budgetState(used: number, limit: number | null, warnAt: number): BudgetState {
  if (limit === null) return 'ok';
  if (used >= limit) return 'exhausted';
  return used >= warnBytes(limit, warnAt) ? 'warning' : 'ok';
}

/**
 * The limit to write for the kernel (wm_budget_limit), in the units of its `used` counter: the
 * counter as read at the sample plus what the period has left as accounted at that same sample
 * (history and pending). Between samples the kernel counts exactly; the service rewrites this
 * when it changes. Only for budgets that block and have a byte limit.
 */
export function kernelLimit(s: { readonly kernelUsed: bigint; readonly limitBytes: number; readonly periodUsed: number }): bigint {
  const left = Math.max(0, s.limitBytes - s.periodUsed);
  return s.kernelUsed + BigInt(Math.floor(left));
}

export type BudgetEventType = 'budget.warning' | 'budget.exhausted' | 'budget.restored';

const RANK: Readonly<Record<BudgetState, number>> = { ok: 0, warning: 1, exhausted: 2 };

/** The marker of what was announced in a period (stored as the budget's `notified`): "periodStartMs:state". */
export function notifiedMarker(periodStartMs: number, state: BudgetState): string {
  return `${periodStartMs}:${state}`;
}

/** What `marker` says was announced in the period starting at `periodStartMs` ('ok': nothing, or the marker is another period's or unreadable). */
export function notifiedIn(marker: string | null, periodStartMs: number): BudgetState {
  const m = marker === null ? null : /^(-?\d+):(warning|exhausted)$/.exec(marker);
  return m && Number(m[1]) === periodStartMs ? (m[2] as BudgetState) : 'ok';
}

/**
 * What to announce when a budget goes from `prev` to `next` (states of consecutive samples) in
 * the period starting at `periodStartMs`, and the marker to store. Each period announces at most
 * one warning and one exhaustion (the marker remembers the worst announced, across restarts);
 * leaving `exhausted` (limit raised, reset, new period) is announced as restored: the kernel lets
 * traffic through again.
 */
export function transition(
  prev: BudgetState, next: BudgetState, periodStartMs: number, notified: string | null,
): { readonly event: BudgetEventType | null; readonly notified: string | null } {
  if (prev === 'exhausted' && next !== 'exhausted') return { event: 'budget.restored', notified };
  if (RANK[next] <= RANK[prev] || next === 'ok') return { event: null, notified };
  if (RANK[notifiedIn(notified, periodStartMs)] >= RANK[next]) return { event: null, notified };
  return { event: next === 'warning' ? 'budget.warning' : 'budget.exhausted', notified: notifiedMarker(periodStartMs, next) };
}
