/**
 * `waymark usage`: bytes and cost per app, uplink or destination over a period, as a table, CSV
 * or JSON, with a bar chart of the period's buckets; `--watch` redraws after each sample.
 * The formatting and the time arguments are pure (a fixed "now" and local offset in tests).
 */
import { Command, Option } from 'commander';
import { formatBytes, formatMoney } from '../accounting/cost.js';
import { RESOLUTIONS, USAGE_GROUPS, type Money, type Resolution, type UsageBucketView, type UsageGroup, type UsageResult, type UsageRowView } from '../accounting/view.js';
import { DaemonUnavailable, type Client } from '../daemon/client.js';
import type { DaemonEvent } from '../daemon/events.js';
import type { ParamsIn } from '../daemon/protocol.js';
import { fitColumn, renderTable } from './table.js';
import { localOffset, wallToUtc, type TzOffset } from '../accounting/budget.js';


const MINUTE = 60_000;
const pad = (n: number, w = 2): string => String(n).padStart(w, '0');

/** Local wall-clock fields of an instant. */
function wall(ms: number, tz: TzOffset): Date {
  return new Date(ms + tz(ms) * MINUTE);
}

/** An instant as ISO 8601 text in local time with its offset: "2026-12-02T00:00:00+01:00". */
export function isoLocal(ms: number, tz: TzOffset = localOffset): string {
  const off = tz(ms);
  const w = wall(ms, tz).toISOString().slice(0, 19);
  const a = Math.abs(off);
  return `${w}${off < 0 ? '-' : '+'}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
}

/** Local midnight starting the local day `days` after the one holding `ms` (0: that day). */
function midnight(ms: number, tz: TzOffset, days = 0, monthStart = false): number {
  const w = wall(ms, tz);
  return wallToUtc(Date.UTC(w.getUTCFullYear(), w.getUTCMonth(), monthStart ? 1 : w.getUTCDate() + days), tz);
}

const TIME_HELP = 'an ISO date or date-time (2026-12-01, 2026-12-01T08:00 local, or with Z or +01:00), today, yesterday, month (its 1st), now, or relative: -30m, -2h, -7d, -2w';
const RELATIVE: Record<string, number> = { m: MINUTE, h: 60 * MINUTE, d: 24 * 60 * MINUTE, w: 7 * 24 * 60 * MINUTE };

/**
 * A time argument (--since, --until) as the protocol's ISO text: "today" (local midnight),
 * "yesterday", "month" (local midnight of the 1st), "now", "-30m" / "-2h" / "-7d" / "-2w" before
 * `nowMs`, an ISO date (its local midnight) or date-time (local unless it has Z or an offset).
 */
export function parseTime(text: string, nowMs: number, tz: TzOffset = localOffset): string {
  const t = text.trim().toLowerCase();
  const bad = (): Error => new Error(`invalid time "${text}": ${TIME_HELP}`);
  if (t === 'now') return isoLocal(nowMs, tz);
  if (t === 'today') return isoLocal(midnight(nowMs, tz), tz);
  if (t === 'yesterday') return isoLocal(midnight(nowMs, tz, -1), tz);
  if (t === 'month') return isoLocal(midnight(nowMs, tz, 0, true), tz);
  const rel = /^-(\d{1,6})([mhdw])$/.exec(t);
  if (rel?.[1] && rel[2]) return isoLocal(nowMs - Number(rel[1]) * (RELATIVE[rel[2]] ?? 0), tz);
  const m = /^(\d{4})-(\d{2})-(\d{2})(?:[t ](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?(z|[+-]\d{2}:?\d{2})?)?$/.exec(t);
  if (!m) throw bad();
  const [, y, mo, d, h = '0', mi = '0', s = '0', zone] = m;
  const fields = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const;
  const wallMs = Date.UTC(...fields);
  const back = new Date(wallMs);
  // Date.UTC rolls over (Feb 30 -> Mar 2, 24:00): refuse what is not a real date and time.
  if (back.getUTCMonth() !== fields[1] || back.getUTCDate() !== fields[2] || back.getUTCHours() !== fields[3] || fields[4] > 59 || fields[5] > 59) throw bad();
  if (zone === undefined) return isoLocal(wallToUtc(wallMs, tz), tz);
  if (zone === 'z') return isoLocal(wallMs, tz);
  const z = /^([+-])(\d{2}):?(\d{2})$/.exec(zone);
  if (!z?.[2] || !z[3]) throw bad();
  const off = (z[1] === '-' ? -1 : 1) * (Number(z[2]) * 60 + Number(z[3]));
  return isoLocal(wallMs - off * MINUTE, tz);
}

/** An instant for people, local: "2026-12-02 07:15"; `withDate` false: "07:15". */
export function localTime(iso: string, tz: TzOffset = localOffset, withDate = true): string {
  const w = wall(Date.parse(iso), tz);
  const hm = `${pad(w.getUTCHours())}:${pad(w.getUTCMinutes())}`;
  return withDate ? `${w.getUTCFullYear()}-${pad(w.getUTCMonth() + 1)}-${pad(w.getUTCDate())} ${hm}` : hm;
}

const sameLocalDay = (a: string, b: string, tz: TzOffset): boolean => localTime(a, tz).slice(0, 10) === localTime(b, tz).slice(0, 10);

export interface UsageOptions {
  by: UsageGroup;
  since?: string;
  until?: string;
  uplink?: string;
  app?: string;
  destination?: string;
  resolution?: Resolution;
}

/** The usage.query params of the CLI's options at `nowMs` (since defaults to today's local midnight). */
export function usageParams(o: UsageOptions, nowMs: number, tz: TzOffset = localOffset): ParamsIn<'usage.query'> {
  const since = parseTime(o.since ?? 'today', nowMs, tz);
  const until = o.until !== undefined ? parseTime(o.until, nowMs, tz) : undefined;
  if (until !== undefined && Date.parse(until) <= Date.parse(since)) throw new Error(`--until (${localTime(until, tz)}) must be after --since (${localTime(since, tz)})`);
  if (until === undefined && Date.parse(since) > nowMs) throw new Error(`--since (${localTime(since, tz)}) is in the future`);
  return {
    by: o.by, since, ...(until !== undefined ? { until } : {}), ...(o.resolution ? { resolution: o.resolution } : {}),
    ...(o.uplink ? { uplink: o.uplink } : {}), ...(o.app ? { app: o.app } : {}), ...(o.destination ? { destination: o.destination } : {}),
  };
}

const GROUP_HEADER: Record<UsageGroup, string> = { app: 'APP', uplink: 'UPLINK', destination: 'DESTINATION' };
const cost = (m: Money): string => (Object.keys(m).length > 0 ? formatMoney(m) : '-');
const total = (r: { txBytes: number; rxBytes: number }): number => r.txBytes + r.rxBytes;

function owner(r: UsageRowView): string {
  const a = r.app;
  if (!a || a.kind === 'unattributed' || a.kind === 'connection') return '-';
  return a.uid === null ? 'system' : String(a.uid);
}

/** The table's header and rows (most traffic first), the total line last; by app for all users with a USER column. */
export function usageTable(r: UsageResult): { header: string[]; rows: string[][] } {
  const withUser = r.by === 'app' && r.scope === 'all';
  const header = [GROUP_HEADER[r.by], ...(withUser ? ['USER'] : []), 'SENT', 'RECEIVED', 'TOTAL', 'COST'];
  const sorted = [...r.rows].sort((a, b) => total(b) - total(a) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const line = (name: string, user: string[], c: UsageResult['totals']): string[] =>
    [name, ...user, formatBytes(c.txBytes), formatBytes(c.rxBytes), formatBytes(total(c)), cost(c.cost)];
  const rows = sorted.map((x) => line(x.name, withUser ? [owner(x)] : [], x));
  rows.push(line('TOTAL', withUser ? [''] : [], r.totals));
  return { header, rows };
}

/** How the period reads: "since 2026-12-02 00:00 until 07:15 (local time)". */
function period(r: UsageResult, tz: TzOffset): string {
  return `since ${localTime(r.since, tz)} until ${localTime(r.until, tz, !sameLocalDay(r.since, r.until, tz))} (local time)`;
}

const BLOCKS = '▁▂▃▄▅▆▇█';
const RES_PLURAL: Record<Resolution, string> = { minute: 'minutes', hour: 'hours', day: 'days' };

/**
 * The series as one line of bars (unicode blocks, the highest full, nothing: a space) at most
 * `width` wide: adjacent buckets are summed into one bar when there are more than that. Above
 * it what a bar is and the highest, below it the first and last bar's start. Empty or all zero: "".
 */
export function formatChart(series: readonly UsageBucketView[], resolution: Resolution, width = 80, tz: TzOffset = localOffset): string {
  if (series.length === 0) return '';
  const per = Math.ceil(series.length / Math.max(1, width));
  const bars: { at: string; bytes: number }[] = [];
  for (let i = 0; i < series.length; i += per) {
    const group = series.slice(i, i + per);
    bars.push({ at: group[0]!.at, bytes: group.reduce((a, b) => a + total(b), 0) });
  }
  const max = Math.max(...bars.map((b) => b.bytes));
  if (max <= 0) return '';
  const top = bars.find((b) => b.bytes === max)!;
  const withDate = resolution === 'day' || !sameLocalDay(series[0]!.at, series[series.length - 1]!.at, tz);
  const label = (at: string): string => (resolution === 'day' ? localTime(at, tz).slice(0, 10) : localTime(at, tz, withDate));
  const line = bars.map((b) => (b.bytes <= 0 ? ' ' : BLOCKS[Math.max(0, Math.ceil((b.bytes / max) * BLOCKS.length) - 1)] ?? '█')).join('');
  const first = label(bars[0]!.at);
  const last = label(bars[bars.length - 1]!.at);
  const axis = bars.length > 1 && first.length + 1 + last.length <= line.length ? first + last.padStart(line.length - first.length) : first;
  const unit = per > 1 ? `${per} ${RES_PLURAL[resolution]}` : resolution;
  return `Sent + received per ${unit}, highest ${formatBytes(max)} (${label(top.at)}):\n${line}\n${axis}\n`;
}

/** The whole report: the table fitted to `width`, its footer, then the chart. */
export function formatUsage(r: UsageResult, o: { width?: number; tz?: TzOffset } = {}): string {
  const width = o.width ?? 80;
  const tz = o.tz ?? localOffset;
  const lines: string[] = [];
  if (r.rows.length === 0) {
    lines.push(`No traffic counted ${period(r, tz)}${r.scope === 'own' ? ' for your apps' : ''}.`);
  } else {
    const { header, rows } = usageTable(r);
    lines.push(renderTable(header, fitColumn(header, rows, 0, width)));
    lines.push('');
    lines.push(`${period(r, tz)}; 1 MB = 10^6 bytes`);
  }
  if (r.scope === 'own') lines.push('Your apps only (root and the waymark group see every user\'s).');
  const chart = formatChart(r.series, r.resolution, width, tz);
  return lines.join('\n') + '\n' + (chart ? '\n' + chart : '');
}

const CSV_HEADER = ['key', 'name', 'tx_bytes', 'rx_bytes', 'tx_packets', 'rx_packets', 'seconds', 'cost', 'currency', 'kind', 'uid', 'exe'];

/** A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break. */
const field = (v: string): string => (/[",\r\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : v);
/** An amount with at most 6 decimals (the history keeps micro-units), without exponent notation. */
const amount = (v: number): string => String(Number(v.toFixed(6)));

/**
 * CSV: the header, then one line per row in the daemon's order. A row's cost in several
 * currencies: the amounts and the codes each joined by ";" in the same order. kind, uid, exe:
 * the app's (by app; empty otherwise, uid empty for system's).
 */
export function formatUsageCsv(r: UsageResult): string {
  const lines = [CSV_HEADER.join(',')];
  for (const x of r.rows) {
    const cur = Object.keys(x.cost).sort();
    lines.push([
      x.key, x.name, String(x.txBytes), String(x.rxBytes), String(x.txPackets), String(x.rxPackets), String(x.seconds),
      cur.map((c) => amount(x.cost[c] ?? 0)).join(';'), cur.join(';'),
      x.app?.kind ?? '', x.app?.uid === null || x.app?.uid === undefined ? '' : String(x.app.uid), x.app?.exe ?? '',
    ].map(field).join(','));
  }
  return lines.join('\n') + '\n';
}

interface CommandOpts extends UsageOptions { json: boolean; csv: boolean; watch: boolean }

/** The terminal's width for tables and the chart (not a terminal: 80). */
export const terminalWidth = (): number => (process.stdout.isTTY && process.stdout.columns > 0 ? process.stdout.columns : 80);

/**
 * Queries at once and again after each usage.sampled event (and after lost events), one query
 * at a time; until SIGINT/SIGTERM (0). The daemon going away (DaemonUnavailable: 69), or a
 * query failing, rejects with the error (main.ts turns it into the exit status).
 */
async function watchUsage(c: Client, query: () => Promise<UsageResult>, show: (r: UsageResult) => void): Promise<number> {
  let done: (code: number) => void = () => undefined;
  let fail: (e: unknown) => void = () => undefined;
  const finished = new Promise<number>((resolve, reject) => { done = resolve; fail = reject; });
  const onSignal = (): void => done(0);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let busy = false;
  let again = false;
  const refresh = async (): Promise<void> => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do { again = false; show(await query()); } while (again);
    } finally { busy = false; }
  };
  const onEvent = (e: DaemonEvent): void => {
    if (e.type === 'usage.sampled' || e.type === 'events.lost') refresh().catch(fail);
  };
  try {
    await c.subscribe(['usage'], onEvent, (why) => fail(new DaemonUnavailable(`${why}; no more samples`)));
    await refresh();
    return await finished;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    c.close();
  }
}

export function usageCommand(client: () => Client): Command {
  return new Command('usage')
    .description('bytes sent and received, and their cost, per app, uplink or destination over a period, with a chart over time')
    .addOption(new Option('--by <group>', 'one line per app, uplink or destination').choices(USAGE_GROUPS).default('app'))
    .option('--since <time>', 'from this time (default: today, local midnight)')
    .option('--until <time>', 'until this time (default: now)')
    .option('--uplink <uplink>', 'only traffic over this uplink')
    .option('--app <name>', 'only this app\'s traffic (its name, as --by app shows it)')
    .option('--destination <destination>', 'only traffic to this destination')
    .addOption(new Option('--resolution <resolution>', 'the chart\'s buckets (default: the finest the history keeps for --since)').choices(RESOLUTIONS))
    .addOption(new Option('--json', 'print the daemon\'s answer as JSON (with --watch: one line per sample)').default(false).conflicts('csv'))
    .addOption(new Option('--csv', 'print the rows as CSV').default(false).conflicts('watch'))
    .option('--watch', 'redraw after each sample the daemon takes (every few seconds), until Ctrl-C', false)
    .addHelpText('after', `
TIME: an ISO date or date-time (2026-12-01; 2026-12-01T08:00 is local time, add
Z or +01:00 for another zone), today (local midnight), yesterday, month (the
1st), now, or relative: -30m, -2h, -7d, -2w. Relative times and today are
taken afresh at each --watch redraw.

Bytes are IP bytes, headers included, as operators bill them; 1 MB = 10^6
bytes. COST: at each uplink's price per MB (and per minute connected) from the
configuration, per currency. --by app: a line per app (and user); traffic of
no known app is "unattributed". Root and the waymark group see every user's
apps; others their own apps' traffic only.

CSV columns: key, name, tx_bytes, rx_bytes, tx_packets, rx_packets, seconds,
cost, currency, kind, uid, exe. A row's cost in several currencies: amounts and
codes each joined by ";". kind, uid, exe: with --by app only.

Examples:
  waymark usage                             today's, per app
  waymark usage --by uplink --since month   this month's per uplink, with cost
  waymark usage --since -2h --resolution minute --watch
  waymark usage --app firefox --by destination --since 2026-12-01 \\
    --until 2026-12-02
  waymark usage --since -7d --csv > week.csv`)
    .action(async (o: CommandOpts) => {
      const c = client();
      const query = (): Promise<UsageResult> => c.call('usage.query', usageParams(o, Date.now()));
      if (!o.watch) {
        const r = await query();
        c.close();
        process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : o.csv ? formatUsageCsv(r) : formatUsage(r, { width: terminalWidth() }));
        return;
      }
      usageParams(o, Date.now()); // a bad argument fails before connecting
      const tty = process.stdout.isTTY;
      let drawn = 0;
      process.exitCode = await watchUsage(c, query, (r) => {
        // A terminal: redrawn in place; a pipe or file: one report after another.
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
        else process.stdout.write((tty ? '\x1b[H\x1b[2J' : drawn > 0 ? '\n' : '') + formatUsage(r, { width: terminalWidth() }) + (tty ? '\nCtrl-C to stop\n' : ''));
        drawn++;
      });
    });
}
