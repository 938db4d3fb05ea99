/** `waymark usage` and `waymark budget`: the pure formatting, time and argument parsing (src/cli/usage.ts, budget.ts, accounting/cost.ts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { budgetSetSchema, usageQuerySchema, type BudgetView, type UsageBucketView, type UsageResult } from '../../src/accounting/view.js';
import { budgetSetParams, describeBudget, describePeriod, formatBudgets, formatReset, parseWarnAt, percentUsed, usedOfLimit } from '../../src/cli/budget.js';
import { parseLimit } from '../../src/accounting/cost.js';
import type { TzOffset } from '../../src/accounting/budget.js';
import { fitColumn, renderTable, truncate } from '../../src/cli/table.js';
import { formatChart, formatUsage, formatUsageCsv, isoLocal, localTime, parseTime, usageParams, usageTable } from '../../src/cli/usage.js';

const H = 3_600_000;
/** Central European time: +1, +2 from the last Sunday of March 01:00 UTC to the last Sunday of October 01:00 UTC (2026). */
const cet: TzOffset = (ms) => (ms >= Date.parse('2026-03-29T01:00:00Z') && ms < Date.parse('2026-10-25T01:00:00Z') ? 120 : 60);
const newYork: TzOffset = () => -300;
const NOW = Date.parse('2026-12-02T06:23:43Z'); // 07:23:43 in Paris

/** Eight hourly buckets from local midnight (23:00 UTC), one of them empty. */
const series: UsageBucketView[] = [0, 1, 4, 8, 0, 2, 3, 1].map((mb, i) => ({ at: new Date(Date.parse('2026-12-01T23:00:00Z') + i * H).toISOString(), txBytes: mb * 250_000, rxBytes: mb * 750_000 }));

const usage: UsageResult = {
  since: '2026-12-02T00:00:00+01:00', until: '2026-12-02T07:23:43+01:00', resolution: 'hour', by: 'app', mbBytes: 1_000_000, scope: 'all',
  rows: [
    { key: 'unattributed', name: 'unattributed', app: { key: 'unattributed', name: 'unattributed', kind: 'unattributed', uid: null, exe: null },
      txBytes: 1_200, rxBytes: 800, txPackets: 10, rxPackets: 8, seconds: 0, cost: {} },
    { key: 'app:1000/firefox', name: 'firefox', app: { key: 'app:1000/firefox', name: 'firefox', kind: 'app', uid: 1000, exe: '/usr/lib/firefox/firefox' },
      txBytes: 2_345_678, rxBytes: 15_000_000, txPackets: 2_000, rxPackets: 11_000, seconds: 0, cost: { EUR: 1.2345, USD: 0.4 } },
    { key: 'app:system/nginx.service', name: 'nginx, the web server', app: { key: 'app:system/nginx.service', name: 'nginx, the web server', kind: 'service', uid: null, exe: '/usr/sbin/nginx' },
      txBytes: 900_000, rxBytes: 100_000, txPackets: 700, rxPackets: 300, seconds: 60, cost: { EUR: 0.05 } },
  ],
  totals: { txBytes: 3_246_878, rxBytes: 15_100_800, txPackets: 2_710, rxPackets: 11_308, seconds: 60, cost: { EUR: 1.2845, USD: 0.4 } },
  series,
};
const empty: UsageResult = { ...usage, by: 'uplink', scope: 'own', rows: [], totals: { txBytes: 0, rxBytes: 0, txPackets: 0, rxPackets: 0, seconds: 0, cost: {} }, series: [] };

describe('time arguments', () => {
  it('today, yesterday, month and now are local', () => {
    assert.equal(parseTime('today', NOW, cet), '2026-12-02T00:00:00+01:00');
    assert.equal(parseTime('Yesterday', NOW, cet), '2026-12-01T00:00:00+01:00');
    assert.equal(parseTime('month', NOW, cet), '2026-12-01T00:00:00+01:00');
    assert.equal(parseTime('now', NOW, cet), '2026-12-02T07:23:43+01:00');
    // 03:00 UTC is still the 1st in New York.
    assert.equal(parseTime('today', Date.parse('2026-12-02T03:00:00Z'), newYork), '2026-12-01T00:00:00-05:00');
    assert.equal(parseTime('month', Date.parse('2026-12-01T03:00:00Z'), newYork), '2026-11-01T00:00:00-05:00');
  });
  it('a local midnight before a change of offset takes the offset it had', () => {
    // Noon on the day summer time starts: midnight was still +01:00.
    assert.equal(parseTime('today', Date.parse('2026-03-29T12:00:00Z'), cet), '2026-03-29T00:00:00+01:00');
    assert.equal(parseTime('yesterday', Date.parse('2026-10-26T12:00:00Z'), cet), '2026-10-25T00:00:00+02:00');
    assert.equal(parseTime('2026-07-01T08:00', NOW, cet), '2026-07-01T08:00:00+02:00');
  });
  it('relative times count back from now', () => {
    assert.equal(parseTime('-30m', NOW, cet), '2026-12-02T06:53:43+01:00');
    assert.equal(parseTime('-2h', NOW, cet), '2026-12-02T05:23:43+01:00');
    assert.equal(parseTime('-7d', NOW, cet), '2026-11-25T07:23:43+01:00');
    assert.equal(parseTime('-2w', NOW, cet), '2026-11-18T07:23:43+01:00');
  });
  it('ISO dates are local midnights; date-times local unless zoned', () => {
    assert.equal(parseTime('2026-11-05', NOW, cet), '2026-11-05T00:00:00+01:00');
    assert.equal(parseTime('2026-11-05T08:30', NOW, cet), '2026-11-05T08:30:00+01:00');
    assert.equal(parseTime('2026-11-05 08:30:15.250', NOW, cet), '2026-11-05T08:30:15+01:00');
    assert.equal(parseTime('2026-11-05T08:30Z', NOW, cet), '2026-11-05T09:30:00+01:00');
    assert.equal(parseTime('2026-11-05T08:30:00+05:30', NOW, cet), '2026-11-05T04:00:00+01:00');
    assert.equal(parseTime('2026-11-05T08:30-0800', NOW, newYork), '2026-11-05T11:30:00-05:00');
  });
  it('what is not a time is refused, saying what is', () => {
    for (const bad of ['bogus', '', '2026-02-30', '2026-13-01', '2026-12-01T24:00', '2026-12-01T10:60', '-5x', '-h', '+2h', '2026-12-01T10:00+5']) {
      assert.throws(() => parseTime(bad, NOW, cet), /invalid time .*today, yesterday, month/, bad);
    }
  });
  it('the protocol takes what comes out', () => {
    for (const t of ['today', '-2h', '2026-11-05T08:30Z', '2026-11-05']) {
      for (const tz of [cet, newYork, () => 0, () => 345]) assert.ok(usageQuerySchema.safeParse({ since: parseTime(t, NOW, tz) }).success, t);
    }
    assert.equal(isoLocal(Date.parse('2026-12-02T06:00:00Z'), () => 345), '2026-12-02T11:45:00+05:45');
    assert.equal(isoLocal(Date.parse('2026-12-02T06:00:00Z'), () => -570), '2026-12-01T20:30:00-09:30');
    assert.equal(localTime('2026-12-02T06:23:43Z', cet), '2026-12-02 07:23');
    assert.equal(localTime('2026-12-02T06:23:43Z', cet, false), '07:23');
  });
  it('the query params: since defaults to today; until after since; the filters', () => {
    assert.deepEqual(usageParams({ by: 'app' }, NOW, cet), { by: 'app', since: '2026-12-02T00:00:00+01:00' });
    assert.deepEqual(usageParams({ by: 'uplink', since: '-1d', until: '-1h', uplink: 'cellular', app: 'firefox', destination: 'internet', resolution: 'minute' }, NOW, cet), {
      by: 'uplink', since: '2026-12-01T07:23:43+01:00', until: '2026-12-02T06:23:43+01:00', resolution: 'minute', uplink: 'cellular', app: 'firefox', destination: 'internet',
    });
    assert.throws(() => usageParams({ by: 'app', since: 'today', until: 'yesterday' }, NOW, cet), /--until \(2026-12-01 00:00\) must be after --since \(2026-12-02 00:00\)/);
    assert.throws(() => usageParams({ by: 'app', since: '2026-12-03' }, NOW, cet), /--since \(2026-12-03 00:00\) is in the future/);
    assert.ok(usageQuerySchema.safeParse(usageParams({ by: 'destination', since: 'month', until: 'now' }, NOW, cet)).success);
  });
});

describe('usage table, CSV and chart', () => {
  it('the table: most traffic first, a user column for all users\' apps, the total last', () => {
    const { header, rows } = usageTable(usage);
    assert.deepEqual(header, ['APP', 'USER', 'SENT', 'RECEIVED', 'TOTAL', 'COST']);
    assert.deepEqual(rows, [
      ['firefox', '1000', '2.35 MB', '15.0 MB', '17.3 MB', '1.23 EUR + 0.40 USD'],
      ['nginx, the web server', 'system', '900.0 kB', '100.0 kB', '1.00 MB', '0.05 EUR'],
      ['unattributed', '-', '1.20 kB', '800 B', '2.00 kB', '-'],
      ['TOTAL', '', '3.25 MB', '15.1 MB', '18.3 MB', '1.28 EUR + 0.40 USD'],
    ]);
    // By uplink, or one's own apps: no user column.
    assert.deepEqual(usageTable({ ...usage, scope: 'own' }).header, ['APP', 'SENT', 'RECEIVED', 'TOTAL', 'COST']);
    assert.deepEqual(usageTable({ ...usage, by: 'destination' }).header, ['DESTINATION', 'SENT', 'RECEIVED', 'TOTAL', 'COST']);
  });
  it('the report: table, period in local time, the MB, the chart', () => {
    assert.equal(formatUsage(usage, { width: 80, tz: cet }), [
      'APP                    USER    SENT      RECEIVED  TOTAL    COST',
      'firefox                1000    2.35 MB   15.0 MB   17.3 MB  1.23 EUR + 0.40 USD',
      'nginx, the web server  system  900.0 kB  100.0 kB  1.00 MB  0.05 EUR',
      'unattributed           -       1.20 kB   800 B     2.00 kB  -',
      'TOTAL                          3.25 MB   15.1 MB   18.3 MB  1.28 EUR + 0.40 USD',
      '',
      'since 2026-12-02 00:00 until 07:23 (local time); 1 MB = 10^6 bytes',
      '',
      'Sent + received per hour, highest 8.00 MB (03:00):',
      ' ▁▄█ ▂▃▁',
      '00:00',
      '',
    ].join('\n'));
  });
  it('a narrow terminal cuts the names, not the numbers', () => {
    const long = { ...usage, rows: usage.rows.map((r) => (r.key === 'app:1000/firefox' ? { ...r, name: 'org.example.AVeryLongApplicationNameIndeed' } : r)) };
    const lines = formatUsage(long, { width: 70, tz: cet }).split('\n');
    assert.ok(lines.slice(0, 5).every((l) => l.length <= 70), lines.join('\n'));
    assert.equal(lines[1], 'org.example…  1000    2.35 MB   15.0 MB   17.3 MB  1.23 EUR + 0.40 USD');
    assert.equal(lines[2], 'nginx, the …  system  900.0 kB  100.0 kB  1.00 MB  0.05 EUR');
    assert.equal(truncate('abcdef', 4), 'abc…');
    assert.equal(truncate('abc', 4), 'abc');
    const fitted = fitColumn(['NAME', 'X'], [['a'.repeat(50), 'yy']], 0, 20);
    assert.equal(renderTable(['NAME', 'X'], fitted).split('\n')[1]!.length, 20);
    // Never below 8 characters (or the one asked), even when that does not fit.
    assert.equal(fitColumn(['NAME', 'X'], [['a'.repeat(50), 'y'.repeat(30)]], 0, 20)[0]![0], 'aaaaaaa…');
    assert.equal(fitColumn(['NAME', 'X'], [['a'.repeat(50), 'y'.repeat(30)]], 0, 20, 5)[0]![0], 'aaaa…');
  });
  it('nothing counted: says so, and for one user that it is theirs only', () => {
    assert.equal(formatUsage(empty, { tz: cet }), 'No traffic counted since 2026-12-02 00:00 until 07:23 (local time) for your apps.\n'
      + 'Your apps only (root and the waymark group see every user\'s).\n');
  });
  it('the CSV: the daemon\'s order, raw numbers, several currencies, quoting', () => {
    assert.equal(formatUsageCsv(usage), [
      'key,name,tx_bytes,rx_bytes,tx_packets,rx_packets,seconds,cost,currency,kind,uid,exe',
      'unattributed,unattributed,1200,800,10,8,0,,,unattributed,,',
      'app:1000/firefox,firefox,2345678,15000000,2000,11000,0,1.2345;0.4,EUR;USD,app,1000,/usr/lib/firefox/firefox',
      'app:system/nginx.service,"nginx, the web server",900000,100000,700,300,60,0.05,EUR,service,,/usr/sbin/nginx',
      '',
    ].join('\n'));
    const byUplink: UsageResult = { ...usage, by: 'uplink', rows: [{ key: 'cellular', name: 'cellular "LTE"', txBytes: 1, rxBytes: 2, txPackets: 3, rxPackets: 4, seconds: 5, cost: { EUR: 1e-7 + 0.1 } }] };
    assert.equal(formatUsageCsv(byUplink).split('\n')[1], 'cellular,"cellular ""LTE""",1,2,3,4,5,0.1,EUR,,,');
    assert.equal(formatUsageCsv(empty), 'key,name,tx_bytes,rx_bytes,tx_packets,rx_packets,seconds,cost,currency,kind,uid,exe\n');
  });
  it('the chart: eighths of the highest, nothing as a space, empty or all zero: none', () => {
    assert.equal(formatChart([], 'hour', 80, cet), '');
    assert.equal(formatChart(series.map((b) => ({ ...b, txBytes: 0, rxBytes: 0 })), 'hour', 80, cet), '');
    const b = (v: number[]): UsageBucketView[] => v.map((x, i) => ({ at: new Date(Date.parse('2026-12-01T23:00:00Z') + i * 60_000).toISOString(), txBytes: x, rxBytes: 0 }));
    const bars = formatChart(b([0, 1, 8, 9, 16, 31, 32, 64, 63]), 'minute', 80, cet).split('\n')[1];
    assert.equal(bars, ' ▁▁▂▂▄▄██');
    // Labelled at both ends once the bars leave room.
    assert.deepEqual(formatChart(b(Array.from({ length: 20 }, (_, i) => i)), 'minute', 80, cet).split('\n'), [
      'Sent + received per minute, highest 19 B (00:19):', ' ▁▁▂▂▃▃▃▄▄▅▅▆▆▆▇▇███', '00:00          00:19', '',
    ]);
  });
  it('the chart: more buckets than columns are summed, the span labelled with dates', () => {
    const days = 200;
    // Local midnights from May 2 (summer time, +02:00) on, past the end of summer time.
    const midnight = (i: number): string => { const w = Date.UTC(2026, 4, 2 + i); return new Date(w - cet(w - 2 * H) * 60_000).toISOString(); };
    const s: UsageBucketView[] = Array.from({ length: days }, (_, i) => ({ at: midnight(i), txBytes: i === 100 ? 3_000_000 : 1_000, rxBytes: 0 }));
    const lines = formatChart(s, 'day', 80, cet).split('\n');
    // 200 days in at most 80 columns: 3 a bar, 67 bars; bar 33 holds days 99..101.
    assert.equal(lines[0], 'Sent + received per 3 days, highest 3.00 MB (2026-08-09):');
    assert.equal(lines[1]!.length, 67);
    assert.equal(lines[1]![33], '█');
    assert.equal(lines[1]![0], '▁');
    assert.equal(lines[2], '2026-05-02' + '2026-11-16'.padStart(57));
    const hours = series.map((x, i) => ({ ...x, at: new Date(Date.parse(x.at) + i * 3 * H).toISOString() }));
    assert.equal(formatChart(hours, 'hour', 80, cet).split('\n')[2], '2026-12-02 00:00');
  });
});

const budget = (over: Partial<BudgetView>): BudgetView => ({
  id: 'cell', source: 'cli', uplink: 'cellular', app: null, uid: null, period: 'month', start: 5, limit: { bytes: 10_000_000_000 }, warnAt: 0.8, block: true,
  periodStart: '2026-11-05T00:00:00+01:00', periodEnd: '2026-12-05T00:00:00+01:00', limitBytes: 10_000_000_000, usedBytes: 1_234_000_000, usedCost: { EUR: 12.34 },
  remainingBytes: 8_766_000_000, state: 'ok', resetAt: null, ...over,
});
const budgets: BudgetView[] = [
  budget({}),
  budget({ id: 'chat-day', app: 'org.example.Chat', uid: 1000, period: 'day', start: 1, limit: { bytes: 50_000_000 }, limitBytes: 50_000_000, usedBytes: 45_500_000,
    usedCost: { EUR: 0.45 }, remainingBytes: 4_500_000, state: 'warning', periodStart: '2026-12-02T00:00:00+01:00', periodEnd: '2026-12-03T00:00:00+01:00',
    resetAt: '2026-12-02T06:00:00Z' }),
  budget({ id: 'roaming', source: 'config', uplink: 'roam', period: 'week', start: 3, limit: { money: 5, currency: 'EUR' }, limitBytes: 500_000_000, usedBytes: 520_000_000,
    usedCost: { EUR: 5.2 }, remainingBytes: 0, state: 'exhausted', block: false, periodStart: '2026-12-02T00:00:00+01:00', periodEnd: '2026-12-09T00:00:00+01:00' }),
  budget({ id: 'free', uplink: 'wifi', period: 'month', start: 1, limit: { money: 2, currency: 'USD' }, limitBytes: null, usedBytes: 7_000, usedCost: {}, remainingBytes: null,
    periodEnd: '2027-01-01T00:00:00+01:00' }),
];

describe('budget list and set', () => {
  it('the list: period, used of the limit, percent, state, resets; notes', () => {
    assert.equal(formatBudgets(budgets, { width: 110, tz: cet }), [
      'ID        UPLINK    APP                          PERIOD       USED/LIMIT     %     STATE       RESETS',
      'cell      cellular  (all)                        monthly 5th  1.23/10.0 GB   12%   ok          Dec 5',
      'chat-day  cellular  org.example.Chat (uid 1000)  daily        45.5/50.0 MB   91%   warning     Dec 3',
      'roaming   roam      (all)                        weekly Wed   5.20/5.00 EUR  104%  exhausted*  Dec 9',
      'free      wifi      (all)                        monthly      0.00/2.00 USD  -     ok          Jan 1',
      '* warns only: the kernel does not block it when exhausted.',
      'Reset within the period (counting from then): chat-day at 2026-12-02 07:00.',
      'From the configuration file (change them there): roaming.',
      '',
    ].join('\n'));
    // 80 columns: the app's name gives way.
    const narrow = formatBudgets(budgets, { width: 80, tz: cet }).split('\n');
    assert.equal(narrow[2], 'chat-day  cellular  org.e…  daily        45.5/50.0 MB   91%   warning     Dec 3');
    assert.ok(narrow.every((l) => l.length <= 80), narrow.join('\n'));
  });
  it('describes periods, limits and use', () => {
    assert.equal(describePeriod('day', 1), 'daily');
    assert.equal(describePeriod('week', 1), 'weekly Mon');
    assert.equal(describePeriod('week', 7), 'weekly Sun');
    assert.equal(describePeriod('month', 1), 'monthly');
    assert.deepEqual([2, 3, 4, 11, 12, 13, 21, 22, 23, 31].map((n) => describePeriod('month', n)),
      ['2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd', '31st'].map((o) => `monthly ${o}`));
    assert.equal(usedOfLimit(budgets[0]!), '1.23/10.0 GB');
    assert.equal(usedOfLimit(budget({ usedBytes: 850_000_000 })), '850.0 MB/10.0 GB');
    assert.equal(usedOfLimit(budgets[2]!), '5.20/5.00 EUR');
    assert.equal(usedOfLimit(budgets[3]!), '0.00/2.00 USD');
    assert.equal(percentUsed(budgets[2]!), '104%');
    assert.equal(percentUsed(budget({ usedBytes: 9_999_999_999 })), '99%');
    assert.equal(percentUsed(budgets[3]!), '-');
    assert.equal(formatReset('2026-12-05T00:00:00+01:00', cet), 'Dec 5');
    assert.equal(formatReset('2027-01-01T05:00:00Z', cet), 'Jan 1 06:00');
    assert.equal(describeBudget(budgets[1]!, cet), 'budget chat-day: org.example.Chat on cellular, 50.0 MB daily (warn at 80%, blocks when exhausted); used 45.5/50.0 MB (91%), warning, resets Dec 3');
    assert.equal(describeBudget(budgets[2]!, cet), 'budget roaming: uplink roam, 5.00 EUR weekly Wed (warn at 80%, warns only); used 5.20/5.00 EUR (104%), exhausted, resets Dec 9');
    assert.equal(describeBudget(budgets[3]!, cet), 'budget free: uplink wifi, 2.00 USD monthly (warn at 80%, blocks when exhausted); used 0.00/2.00 USD, ok, resets Jan 1');
    assert.equal(formatBudgets([], {}), 'No budgets (see budgets: in the configuration, or waymark budget set).\n');
  });
  it('--limit: sizes or money; --warn-at: percent or fraction', () => {
    assert.deepEqual(parseLimit('10MB'), { bytes: 10_000_000 });
    assert.deepEqual(parseLimit('1.5 GiB'), { bytes: 1_610_612_736 });
    assert.deepEqual(parseLimit('2000000'), { bytes: 2_000_000 });
    assert.deepEqual(parseLimit('5 EUR'), { money: 5, currency: 'EUR' });
    assert.throws(() => parseLimit('0MB'), /more than zero/);
    assert.throws(() => parseLimit('0 EUR'), /more than zero/);
    assert.throws(() => parseLimit('lots'), /"lots" is neither a size .* nor money/);
    assert.equal(parseWarnAt('80%'), 0.8);
    assert.equal(parseWarnAt('0.5'), 0.5);
    assert.equal(parseWarnAt('90'), 0.9);
    assert.equal(parseWarnAt('100%'), 1);
    for (const bad of ['0', '0.001', '101%', '150', 'x', '-5%']) assert.throws(() => parseWarnAt(bad), /invalid --warn-at/, bad);
  });
  it('budget set\'s params, as the protocol takes them', () => {
    const p = budgetSetParams({ uplink: 'cellular', period: 'month', start: 5, limit: '10GB', warnAt: '90%', block: false, id: 'cell' });
    assert.deepEqual(p, { id: 'cell', uplink: 'cellular', period: 'month', start: 5, limit: { bytes: 10_000_000_000 }, warnAt: 0.9, block: false });
    assert.ok(budgetSetSchema.safeParse(p).success);
    const q = budgetSetParams({ uplink: 'roam', app: 'firefox', period: 'week', limit: '5EUR', block: true });
    assert.deepEqual(q, { uplink: 'roam', app: 'firefox', period: 'week', start: 1, limit: { money: 5, currency: 'EUR' }, block: true });
    assert.ok(budgetSetSchema.safeParse(q).success);
    assert.throws(() => budgetSetParams({ uplink: 'x', period: 'week', start: 8, limit: '1GB', block: true }), /1 Monday \.\. 7 Sunday/);
    assert.throws(() => budgetSetParams({ uplink: 'x', period: 'day', start: 2, limit: '1GB', block: true }), /--start goes with --period week/);
  });
});
