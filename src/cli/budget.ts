/** `waymark budget list|set|rm|reset`: limits on an uplink's or an app's use per day, week or month. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { formatBytes, formatMoney, parseLimit } from '../accounting/cost.js';
import { BUDGET_PERIODS, type BudgetLimit, type BudgetPeriod, type BudgetView } from '../accounting/view.js';
import type { Client } from '../daemon/client.js';
import type { ParamsIn } from '../daemon/protocol.js';
import { fitColumn, renderTable } from './table.js';
import { localOffset, type TzOffset } from '../accounting/budget.js';
import { localTime, terminalWidth } from './usage.js';

const WEEKDAYS = ['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'] as const;

const ordinal = (n: number): string => `${n}${n % 10 === 1 && n !== 11 ? 'st' : n % 10 === 2 && n !== 12 ? 'nd' : n % 10 === 3 && n !== 13 ? 'rd' : 'th'}`;

/** "daily", "weekly Mon" (from that weekday), "monthly" (from the 1st), "monthly 5th" (from that billing day). */
export function describePeriod(period: BudgetPeriod, start: number): string {
  switch (period) {
    case 'day': return 'daily';
    case 'week': return `weekly ${(WEEKDAYS[start - 1] ?? '?').slice(0, 3)}`;
    case 'month': return start === 1 ? 'monthly' : `monthly ${ordinal(start)}`;
  }
}

export function formatLimit(l: BudgetLimit): string {
  return 'bytes' in l ? formatBytes(l.bytes) : formatMoney({ [l.currency]: l.money });
}

/** "850.0 MB/1.00 GB", "1.23/10.0 GB" (one unit), or for a money limit "0.40/5.00 EUR". */
export function usedOfLimit(b: BudgetView): string {
  const l = b.limit;
  if ('bytes' in l) {
    const [used, limit] = [formatBytes(b.usedBytes), formatBytes(l.bytes)];
    const unit = (x: string): string => x.slice(x.indexOf(' '));
    return unit(used) === unit(limit) ? `${used.slice(0, used.indexOf(' '))}/${limit}` : `${used}/${limit}`;
  }
  return `${(b.usedCost[l.currency] ?? 0).toFixed(2)}/${formatLimit(l)}`;
}

/** The share of the limit used, whole percent rounded down ("99%" is not yet exhausted); "-" without a byte limit. */
export function percentUsed(b: BudgetView): string {
  return b.limitBytes === null || b.limitBytes <= 0 ? '-' : `${Math.floor((b.usedBytes / b.limitBytes) * 100)}%`;
}

/** A period's end for people: "Dec 5" at local midnight, else "Dec 5 06:00". */
export function formatReset(iso: string, tz: TzOffset = localOffset): string {
  const t = localTime(iso, tz);
  const month = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][Number(t.slice(5, 7)) - 1] ?? '?';
  const hm = t.slice(11);
  return `${month} ${Number(t.slice(8, 10))}${hm === '00:00' ? '' : ` ${hm}`}`;
}

/** The list as a table fitted to `width` (the APP column gives), with notes on the marked ones. */
export function formatBudgets(budgets: readonly BudgetView[], o: { width?: number; tz?: TzOffset } = {}): string {
  if (budgets.length === 0) return 'No budgets (see budgets: in the configuration, or waymark budget set).\n';
  const tz = o.tz ?? localOffset;
  const header = ['ID', 'UPLINK', 'APP', 'PERIOD', 'USED/LIMIT', '%', 'STATE', 'RESETS'];
  const rows = budgets.map((b) => [
    b.id, b.uplink, b.app === null ? '(all)' : b.uid === null ? b.app : `${b.app} (uid ${b.uid})`, describePeriod(b.period, b.start),
    usedOfLimit(b), percentUsed(b), b.state + (b.block ? '' : '*'), formatReset(b.periodEnd, tz),
  ]);
  // Eight columns are tight in 80: the app's name gives way, down to a hint of it.
  const lines = [renderTable(header, fitColumn(header, rows, 2, o.width ?? 80, 5))];
  if (budgets.some((b) => !b.block)) lines.push('* warns only: the kernel does not block it when exhausted.');
  const reset = budgets.filter((b) => b.resetAt !== null);
  if (reset.length > 0) lines.push(`Reset within the period (counting from then): ${reset.map((b) => `${b.id} at ${localTime(b.resetAt!, tz)}`).join(', ')}.`);
  const config = budgets.filter((b) => b.source === 'config').map((b) => b.id);
  if (config.length > 0) lines.push(`From the configuration file (change them there): ${config.join(', ')}.`);
  return lines.join('\n') + '\n';
}

/** One budget in a sentence (what `budget set` and `budget reset` print). */
export function describeBudget(b: BudgetView, tz: TzOffset = localOffset): string {
  const what = b.app === null ? `uplink ${b.uplink}` : `${b.app} on ${b.uplink}`;
  const pct = percentUsed(b);
  return `budget ${b.id}: ${what}, ${formatLimit(b.limit)} ${describePeriod(b.period, b.start)}`
    + ` (warn at ${Math.round(b.warnAt * 100)}%, ${b.block ? 'blocks when exhausted' : 'warns only'});`
    + ` used ${usedOfLimit(b)}${pct === '-' ? '' : ` (${pct})`}, ${b.state}, resets ${formatReset(b.periodEnd, tz)}`;
}

/** --limit: a size ("10MB", "1.5 GiB", bytes) or money in the uplink's currency ("5 EUR", "5EUR"). */
/** --warn-at: "80%", "0.8" or "80" (above 1: percent), 1% to 100%, as a fraction. */
export function parseWarnAt(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$/.exec(text);
  const n = m?.[1] !== undefined ? Number(m[1]) : NaN;
  const f = m?.[2] === '%' || n > 1 ? n / 100 : n;
  if (!(f >= 0.01 && f <= 1)) throw new Error(`invalid --warn-at "${text}": a percentage, 1% to 100% (80%, or 0.8)`);
  return f;
}

export interface SetOptions {
  id?: string;
  uplink: string;
  app?: string;
  period: BudgetPeriod;
  start?: number;
  limit: string;
  warnAt?: string;
  block: boolean;
}

/** The budget.set params of the CLI's options. */
export function budgetSetParams(o: SetOptions): ParamsIn<'budget.set'> {
  const start = o.start ?? 1;
  if (o.period === 'day' && o.start !== undefined) throw new Error('--start goes with --period week (1 Monday .. 7 Sunday) or month (the billing day)');
  if (o.period === 'week' && start > 7) throw new Error('--start with --period week: 1 Monday .. 7 Sunday');
  return {
    ...(o.id !== undefined ? { id: o.id } : {}), uplink: o.uplink, ...(o.app !== undefined ? { app: o.app } : {}),
    period: o.period, start, limit: parseLimit(o.limit), ...(o.warnAt !== undefined ? { warnAt: parseWarnAt(o.warnAt) } : {}), block: o.block,
  };
}

const int = (what: string, lo: number, hi: number) => (v: string): number => {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < lo || n > hi) throw new InvalidArgumentError(`${what}: a whole number, ${lo} to ${hi}`);
  return n;
};
const ID = /^[a-z0-9-]{1,40}$/;
const id = (v: string): string => {
  if (!ID.test(v)) throw new InvalidArgumentError('an id: 1 to 40 of a-z, 0-9 and -');
  return v;
};

export function budgetCommand(client: () => Client): Command {
  const cmd = new Command('budget')
    .description('limits on an uplink\'s or an app\'s traffic per day, week or month: list them, set, remove or reset one')
    .addHelpText('after', `
Examples:
  waymark budget list
  waymark budget set --uplink cellular --limit 10GB --start 5   (billing day 5)
  waymark budget set --uplink cellular --app firefox --period day --limit 500MB
  waymark budget set --uplink roaming --limit "5 EUR" --warn-at 50% --no-block
  waymark budget reset b-1
  waymark budget rm b-1`);
  cmd.command('list')
    .description('the budgets you may see, with the current period\'s use, state and when it resets')
    .option('--json', 'print them as JSON', false)
    .addHelpText('after', `
USED/LIMIT: the period's IP bytes (1 MB = 10^6 bytes) or, for a money limit,
their cost at the uplink's price. STATE: ok, warning (past its --warn-at
share), exhausted (the kernel drops the app's or the uplink's packets until the
period ends or the budget is raised, reset or removed; marked * when it only
warns). RESETS: the period's end, local time.`)
    .action(async (o: { json: boolean }) => {
      const c = client();
      const r = await c.call('budget.list');
      c.close();
      process.stdout.write(o.json ? JSON.stringify(r.budgets, null, 2) + '\n' : formatBudgets(r.budgets, { width: terminalWidth() }));
    });
  cmd.command('set')
    .description('add a budget, or change one with --id (yours limit your own apps; a whole uplink\'s: root and the waymark group)')
    .requiredOption('--uplink <uplink>', 'the uplink whose traffic counts')
    .option('--app <name>', 'only this app\'s traffic (its name, as waymark usage shows it; default: the whole uplink)')
    .addOption(new Option('--period <period>', 'the period the limit is for').choices(BUDGET_PERIODS).default('month'))
    .option('--start <n>', 'month: the billing day, 1..31 (past the month\'s end: its last day); week: 1 Monday .. 7 Sunday (default 1)', int('--start', 1, 31))
    .requiredOption('--limit <limit>', 'a size (10MB, 1.5GB, 500MiB; 1 MB = 10^6 bytes) or money in the uplink\'s currency (5EUR)')
    .option('--warn-at <share>', 'warn when this share of the limit is used: 80% (default), 0.8')
    .option('--no-block', 'only warn when exhausted (default: the kernel blocks the traffic)')
    .option('--id <id>', 'replace this budget of yours (default: a new one)', id)
    .option('--json', 'print the budget as JSON', false)
    .action(async (o: SetOptions & { json: boolean }) => {
      const params = budgetSetParams(o);
      const c = client();
      const b = await c.call('budget.set', params);
      c.close();
      process.stdout.write(o.json ? JSON.stringify(b, null, 2) + '\n' : describeBudget(b) + '\n');
    });
  cmd.command('rm')
    .description('remove a budget set with waymark budget set (the configuration file\'s stay)')
    .argument('<id>', 'its id, as waymark budget list shows it', id)
    .action(async (v: string) => {
      const c = client();
      await c.call('budget.rm', { id: v });
      c.close();
      process.stdout.write(`budget ${v} removed\n`);
    });
  cmd.command('reset')
    .description('count the budget afresh from now until its period ends (an exhausted one is unblocked)')
    .argument('<id>', 'its id, as waymark budget list shows it', id)
    .option('--json', 'print the budget as JSON', false)
    .action(async (v: string, o: { json: boolean }) => {
      const c = client();
      const b = await c.call('budget.reset', { id: v });
      c.close();
      process.stdout.write(o.json ? JSON.stringify(b, null, 2) + '\n' : describeBudget(b) + '\n');
    });
  return cmd;
}
