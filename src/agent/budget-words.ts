/**
 * A budget event (`budget.warning`, `budget.exhausted`, `budget.restored`: src/daemon/events.ts)
 * in words, for the prompt agents (pure): the terminal agent's one line ({@link budgetLine}) and
 * the parts the desktop notification is made of (src/agent/notification-content.ts). Sizes in SI
 * units (formatBytes: 1 MB = 10^6 bytes, as budgets are set); times in local time, to the minute.
 */
import { localOffset, type TzOffset } from '../accounting/budget.js';
import { formatBytes } from '../accounting/cost.js';
import type { BudgetChanged } from '../daemon/events.js';

/** What a budget event says (the `budget` topic's events; their seq and stamp are not needed). */
export type BudgetNotice = BudgetChanged;

export interface BudgetWordsOptions {
  /** The local time zone (default: the process's). */
  readonly tz?: TzOffset;
  /** The uid of whoever reads it: another uid's budget says whose it is (root's agent sees everyone's). */
  readonly viewer?: number;
}

const pad = (n: number): string => String(n).padStart(2, '0');

/** An instant as local wall-clock time to the minute: "2026-12-05 00:00" (the text itself when it is no time). */
export function localMinute(iso: string, tz: TzOffset = localOffset): string {
  const ms = Date.parse(iso);
  if (!Number.isFinite(ms)) return iso;
  const w = new Date(ms + tz(ms) * 60_000);
  return `${w.getUTCFullYear()}-${pad(w.getUTCMonth() + 1)}-${pad(w.getUTCDate())} ${pad(w.getUTCHours())}:${pad(w.getUTCMinutes())}`;
}

/**
 * How much of the limit is used, in whole percent, rounded down (99.9 % is not "100 %" before the
 * budget is exhausted); undefined without a limit in bytes.
 */
export function usedPercent(n: Pick<BudgetNotice, 'usedBytes' | 'limitBytes'>): number | undefined {
  if (!(n.limitBytes > 0)) return undefined;
  return Math.floor((n.usedBytes / n.limitBytes) * 100);
}

/** "8.00 MB of 10.0 MB" (just "8.00 MB" without a limit in bytes). */
export function usedWords(n: Pick<BudgetNotice, 'usedBytes' | 'limitBytes'>): string {
  return n.limitBytes > 0 ? `${formatBytes(n.usedBytes)} of ${formatBytes(n.limitBytes)}` : formatBytes(n.usedBytes);
}

/** Whose traffic it counts: the app (and another viewer's uid), or the whole uplink. */
export function budgetSubject(n: BudgetNotice, viewer?: number): string {
  if (n.app === null) return `all traffic on ${n.uplink}`;
  return n.uid !== null && viewer !== undefined && viewer !== n.uid ? `${n.app} (uid ${n.uid})` : n.app;
}

/**
 * The terminal agent's line for a budget event:
 *   budget b-1: org.example.Chat has used 8.00 MB of 10.0 MB on cellular (80 %); resets 2026-12-05 00:00
 *   budget b-1 exhausted: org.example.Chat has used 10.0 MB of 10.0 MB on cellular; blocked on cellular until 2026-12-05 00:00
 *   budget b-1: org.example.Chat has room again on cellular (2.00 MB of 20.0 MB used); resets 2026-12-05 00:00
 */
export function budgetLine(n: BudgetNotice, o: BudgetWordsOptions = {}): string {
  const who = budgetSubject(n, o.viewer);
  const until = localMinute(n.periodEnd, o.tz);
  const pct = usedPercent(n);
  // An uplink-wide budget names the uplink in its subject already.
  const on = n.app === null ? '' : ` on ${n.uplink}`;
  switch (n.type) {
    case 'budget.warning':
      return `budget ${n.id}: ${who} has used ${usedWords(n)}${on}${pct !== undefined ? ` (${pct} %)` : ''}; resets ${until}`;
    case 'budget.exhausted':
      return `budget ${n.id} exhausted: ${who} has used ${usedWords(n)}${on}; `
        + (n.blocked ? `blocked on ${n.uplink} until ${until}` : `not blocked (the budget only warns); resets ${until}`);
    case 'budget.restored':
      return `budget ${n.id}: ${who} has room again${on} (${usedWords(n)} used); resets ${until}`;
  }
}
