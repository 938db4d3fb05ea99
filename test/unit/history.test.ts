/** The usage history (src/accounting/history.ts): schema and migrations, upserts, resolutions, compaction, queries, sums, budgets. */
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import {
  MIGRATIONS, SCHEMA_VERSION, UsageHistory, migrate, type StoredBudget, type UsageHistoryOptions, type UsageRecord,
} from '../../src/accounting/history.js';
import type { UsageAppView } from '../../src/accounting/view.js';

const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;
/** Tuesday 10 March 2026, 12:00 UTC; 13:00 in the zone the tests use (UTC+1). */
const T0 = Date.UTC(2026, 2, 10, 12, 0, 0);
/** Local midnight of T0's day at UTC+1. */
const MIDNIGHT = Date.UTC(2026, 2, 9, 23, 0, 0);
const PLUS1 = () => 60;

const FIREFOX: UsageAppView = { key: 'app:1000/firefox', name: 'firefox', kind: 'app', uid: 1000, exe: '/usr/bin/firefox' };
const CURL: UsageAppView = { key: 'proc:1001:/usr/bin/curl', name: 'curl', kind: 'process', uid: 1001, exe: '/usr/bin/curl' };
const RESOLVED: UsageAppView = { key: 'app:system/systemd-resolved', name: 'systemd-resolved', kind: 'service', uid: null, exe: null };

function rec(app: UsageAppView, uplink: string, destination: string, txBytes: number, rxBytes: number, extra: Partial<UsageRecord> = {}): UsageRecord {
  return { app, uplink, destination, txBytes, rxBytes, txPackets: 1, rxPackets: 2, seconds: 0, cost: 0, currency: '', ...extra };
}

const dirs: string[] = [];
function tempFile(...parts: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'wm-history-'));
  dirs.push(dir);
  return join(dir, ...(parts.length ? parts : ['history.db']));
}
after(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function clock(t: number): { t: number; opts: UsageHistoryOptions } {
  const c = { t, opts: {} as UsageHistoryOptions };
  c.opts = { tzOffsetMinutes: PLUS1, now: () => c.t };
  return c;
}

/** A second, read-only connection to look at the tables themselves. */
function inspect<T>(file: string, fn: (db: Database.Database) => T): T {
  const db = new Database(file, { readonly: true });
  try {
    return fn(db);
  } finally {
    db.close();
  }
}

function count(db: Database.Database, table: string): number {
  return (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n;
}

describe('usage history: schema', () => {
  it('migrates an empty file to the current version, in WAL mode, 0600, creating its directory', () => {
    const file = tempFile('state', 'sub', 'usage.db');
    const h = UsageHistory.open(file, clock(T0).opts);
    h.record(T0, [rec(FIREFOX, 'wifi', 'internet', 10, 20)]);
    assert.equal(SCHEMA_VERSION, MIGRATIONS.length);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.ok(existsSync(`${file}-wal`));
    assert.equal(statSync(`${file}-wal`).mode & 0o777, 0o600);
    inspect(file, (db) => {
      assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
      const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
      assert.deepEqual(tables, ['apps', 'budgets', 'marks', 'usage_day', 'usage_hour', 'usage_minute']);
    });
    h.close();
  });

  it('tightens an existing file to 0600', () => {
    const file = tempFile();
    writeFileSync(file, '');
    chmodSync(file, 0o644);
    UsageHistory.open(file, clock(T0).opts).close();
    assert.equal(statSync(file).mode & 0o777, 0o600);
  });

  it('applies each migration in its own transaction: a failing one leaves the version before it', () => {
    const db = new Database(':memory:');
    const broken = ['CREATE TABLE a (x)', 'CREATE TABLE b (x); CREATE TABLE a (y)'];
    assert.throws(() => migrate(db, 'test.db', broken), /already exists/);
    assert.equal(db.pragma('user_version', { simple: true }), 1);
    assert.deepEqual(db.prepare("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'b'").get(), { n: 0 });
    const fixed = ['CREATE TABLE a (x)', 'CREATE TABLE b (x)', (d: Database.Database) => { d.exec('INSERT INTO b VALUES (7)'); }];
    migrate(db, 'test.db', fixed);
    assert.equal(db.pragma('user_version', { simple: true }), 3);
    assert.deepEqual(db.prepare('SELECT x FROM b').all(), [{ x: 7 }]);
    migrate(db, 'test.db', fixed); // up to date: nothing runs again
    assert.deepEqual(db.prepare('SELECT x FROM b').all(), [{ x: 7 }]);
    db.close();
  });

  it('refuses a database newer than the code, naming the file, and leaves it alone', () => {
    const file = tempFile();
    UsageHistory.open(file, clock(T0).opts).close();
    const db = new Database(file);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    assert.throws(() => UsageHistory.open(file, clock(T0).opts), (e: unknown) => {
      assert.ok(e instanceof Error);
      assert.ok(e.message.startsWith(`${file}: `), e.message);
      assert.match(e.message, new RegExp(`schema version ${SCHEMA_VERSION + 1}, newer than this waymark knows \\(${SCHEMA_VERSION}\\)`));
      return true;
    });
    inspect(file, (d) => assert.equal(d.pragma('user_version', { simple: true }), SCHEMA_VERSION + 1));
  });

  it('names the file when it is not a database', () => {
    const file = tempFile();
    writeFileSync(file, 'not a database, just text that is long enough to have a header page');
    assert.throws(() => UsageHistory.open(file, clock(T0).opts), (e: unknown) => e instanceof Error && e.message.startsWith(`${file}: `) && /not a database/.test(e.message));
  });

  it('keeps usage, apps, marks and budgets across a reopen', () => {
    const file = tempFile();
    const c = clock(T0 + MIN);
    const h = UsageHistory.open(file, c.opts);
    h.record(T0, [rec(FIREFOX, 'wifi', 'internet', 100, 200, { cost: 0.25, currency: 'EUR', seconds: 30 })], { 'usage:1': '300' });
    h.putBudget({ id: 'b1', spec: { uplink: 'wifi', period: 'day', start: 1, limit: { bytes: 5000 }, warnAt: 0.8, block: true, uid: null }, owner: 0 });
    h.close();
    const again = UsageHistory.open(file, c.opts);
    assert.deepEqual(again.sum({ sinceMs: MIDNIGHT }), { bytes: 300, cost: { EUR: 0.25 }, seconds: 30 });
    assert.deepEqual(again.marks(), { 'usage:1': '300' });
    assert.deepEqual(again.budgets().map((b) => b.id), ['b1']);
    const q = again.query({ by: 'app', sinceMs: MIDNIGHT, untilMs: T0 + MIN });
    assert.deepEqual(q.rows[0]?.app, FIREFOX);
    // The same key under a new name: one app, shown by its newest name.
    again.record(T0 + 2 * MIN, [rec({ ...FIREFOX, name: 'Firefox' }, 'wifi', 'internet', 1, 1)]);
    assert.deepEqual(again.query({ by: 'app', sinceMs: MIDNIGHT, untilMs: T0 + HOUR }).rows.map((r) => [r.key, r.name, r.txBytes]), [[FIREFOX.key, 'Firefox', 101]]);
    again.close();
    inspect(file, (db) => assert.equal(count(db, 'apps'), 1));
  });
});

describe('usage history: recording', () => {
  it('adds records of one bucket into one row per table (upsert), within a call and across calls; a currency has its own row', () => {
    const file = tempFile();
    const h = UsageHistory.open(file, clock(T0 + HOUR).opts);
    const eur = (cost: number) => ({ cost, currency: 'EUR' });
    h.record(T0 + 5_000, [rec(FIREFOX, 'wifi', 'internet', 100, 1000, eur(0.001)), rec(FIREFOX, 'wifi', 'internet', 10, 20, eur(0))]);
    h.record(T0 + 45_000, [rec(FIREFOX, 'wifi', 'internet', 1, 2, { seconds: 10, ...eur(0.000_001) })]);
    // The uplink's price changed currency within the hour: the new currency's cost is not added to the old's.
    h.record(T0 + 50_000, [rec(FIREFOX, 'wifi', 'internet', 5, 5, { cost: 0.5, currency: 'USD' })]);
    inspect(file, (db) => {
      for (const table of ['usage_minute', 'usage_hour', 'usage_day']) {
        const rows = db.prepare(`SELECT ts, uplink, destination, tx_bytes, rx_bytes, tx_packets, rx_packets, seconds, cost_micro, currency FROM ${table} ORDER BY currency`).all();
        const common = { ts: (table === 'usage_day' ? MIDNIGHT : T0) / 1000, uplink: 'wifi', destination: 'internet' };
        assert.deepEqual(rows, [
          { ...common, tx_bytes: 111, rx_bytes: 1022, tx_packets: 3, rx_packets: 6, seconds: 10, cost_micro: 1001, currency: 'EUR' },
          { ...common, tx_bytes: 5, rx_bytes: 5, tx_packets: 1, rx_packets: 2, seconds: 0, cost_micro: 500_000, currency: 'USD' },
        ], table);
      }
    });
    assert.deepEqual(h.query({ by: 'uplink', sinceMs: T0, untilMs: T0 + MIN }).rows, [
      { key: 'wifi', name: 'wifi', txBytes: 116, rxBytes: 1027, txPackets: 4, rxPackets: 8, seconds: 10, cost: { EUR: 0.001001, USD: 0.5 } },
    ]);
    h.close();
  });

  it('rejects bad counts before writing anything, and skips empty records', () => {
    const h = UsageHistory.open(':memory:', clock(T0).opts);
    assert.throws(() => h.record(T0, [rec(FIREFOX, 'wifi', 'internet', 5, 5), rec(CURL, 'wifi', 'internet', -1, 0)]), /txBytes must be a non-negative integer, not -1/);
    assert.throws(() => h.record(T0, [rec(FIREFOX, 'wifi', 'internet', 1.5, 0)]), RangeError);
    assert.throws(() => h.record(T0, [rec(FIREFOX, 'wifi', 'internet', 1, 0, { cost: 1 })]), /needs a currency/);
    h.record(T0, [rec(FIREFOX, 'wifi', 'internet', 0, 0, { txPackets: 0, rxPackets: 0 })]);
    assert.deepEqual(h.sum({ sinceMs: 0 }), { bytes: 0, cost: {}, seconds: 0 });
    assert.deepEqual(h.query({ by: 'app', sinceMs: MIDNIGHT, untilMs: T0 + MIN }).rows, []);
    h.close();
  });

  it('stores the marks given with a flush in place of the old ones, and keeps them when none are given', () => {
    const h = UsageHistory.open(':memory:', clock(T0).opts);
    assert.deepEqual(h.marks(), {});
    h.record(T0, [], { 'app:7:0:tx': '1000', 'nft:wifi:rx': '99' });
    assert.deepEqual(h.marks(), { 'app:7:0:tx': '1000', 'nft:wifi:rx': '99' });
    h.record(T0 + 10_000, [rec(FIREFOX, 'wifi', 'internet', 1, 1)]);
    assert.deepEqual(h.marks(), { 'app:7:0:tx': '1000', 'nft:wifi:rx': '99' });
    h.record(T0 + 20_000, [], { 'app:7:0:tx': '18446744073709551615' });
    assert.deepEqual(h.marks(), { 'app:7:0:tx': '18446744073709551615' });
    h.close();
  });

  it('keeps the three resolutions in agreement, across a local midnight', () => {
    const file = tempFile();
    const now = Date.UTC(2026, 2, 10, 2, 0, 0);
    const h = UsageHistory.open(file, clock(now).opts);
    const times = [Date.UTC(2026, 2, 9, 21, 30), Date.UTC(2026, 2, 9, 22, 59, 30), Date.UTC(2026, 2, 9, 23, 0, 10), Date.UTC(2026, 2, 9, 23, 45), Date.UTC(2026, 2, 10, 1, 10)];
    times.forEach((t, i) => h.record(t, [rec(FIREFOX, 'wifi', 'internet', 10 ** i, 2 * 10 ** i), rec(CURL, 'cellular', 'corp', 7, 0)]));
    inspect(file, (db) => {
      const totals = ['usage_minute', 'usage_hour', 'usage_day'].map((t) => db.prepare(`SELECT SUM(tx_bytes) AS tx, SUM(rx_bytes) AS rx, SUM(tx_packets) AS p FROM ${t}`).get());
      assert.deepEqual(totals, [{ tx: 11111 + 35, rx: 22222, p: 10 }, { tx: 11111 + 35, rx: 22222, p: 10 }, { tx: 11111 + 35, rx: 22222, p: 10 }]);
      assert.deepEqual([count(db, 'usage_minute'), count(db, 'usage_hour'), count(db, 'usage_day')], [10, 8, 4]);
    });
    const since = Date.UTC(2026, 2, 9, 21, 0);
    const until = Date.UTC(2026, 2, 10, 3, 0);
    for (const resolution of ['minute', 'hour', 'day'] as const) {
      const q = h.query({ by: 'uplink', sinceMs: since, untilMs: until, resolution });
      assert.equal(q.resolution, resolution);
      assert.deepEqual(q.rows.map((r) => [r.key, r.txBytes, r.rxBytes]), [['wifi', 11111, 22222], ['cellular', 35, 0]]);
      assert.deepEqual([q.series.reduce((s, b) => s + b.txBytes, 0), q.series.reduce((s, b) => s + b.rxBytes, 0)], [11146, 22222], resolution);
    }
    const days = h.query({ by: 'app', sinceMs: since, untilMs: until, resolution: 'day' }).series;
    assert.deepEqual(days, [
      { atMs: Date.UTC(2026, 2, 8, 23, 0), txBytes: 11 + 14, rxBytes: 22 },
      { atMs: Date.UTC(2026, 2, 9, 23, 0), txBytes: 11100 + 21, rxBytes: 22200 },
    ]);
    h.close();
  });
});

describe('usage history: compaction', () => {
  it('deletes minute rows older than 24 h and hour rows older than 90 days, keeps every day row', () => {
    const file = tempFile();
    const c = clock(T0 - 3 * HOUR);
    const h = UsageHistory.open(file, c.opts);
    h.record(T0 - 2 * HOUR, [rec(FIREFOX, 'wifi', 'internet', 1, 0)]);
    h.record(T0 - 25 * HOUR, [rec(FIREFOX, 'wifi', 'internet', 20, 0)]);
    h.record(T0 - 91 * DAY, [rec(FIREFOX, 'wifi', 'internet', 300, 0)]);
    c.t = T0;
    assert.deepEqual(h.compact(T0), { minute: 2, hour: 1 });
    assert.deepEqual(h.compact(T0), { minute: 0, hour: 0 });
    inspect(file, (db) => {
      assert.deepEqual(db.prepare('SELECT ts FROM usage_minute').all(), [{ ts: (T0 - 2 * HOUR) / 1000 }]);
      assert.deepEqual(db.prepare('SELECT ts FROM usage_hour ORDER BY ts').all(), [{ ts: (T0 - 25 * HOUR) / 1000 }, { ts: (T0 - 2 * HOUR) / 1000 }]);
      assert.equal(count(db, 'usage_day'), 3);
    });
    assert.equal(h.sum({ sinceMs: 0 }).bytes, 321);

    // A flush an hour or more after the last compaction compacts again.
    c.t = T0 + 23 * HOUR;
    h.record(T0 + 23 * HOUR, [rec(FIREFOX, 'wifi', 'internet', 4000, 0)]);
    inspect(file, (db) => assert.deepEqual(db.prepare('SELECT ts FROM usage_minute').all(), [{ ts: (T0 + 23 * HOUR) / 1000 }]));
    h.close();

    // And so does opening.
    c.t = T0 + 3 * DAY;
    UsageHistory.open(file, c.opts).close();
    inspect(file, (db) => assert.deepEqual([count(db, 'usage_minute'), count(db, 'usage_hour'), count(db, 'usage_day')], [0, 3, 4]));
  });
});

describe('usage history: queries', () => {
  function sample(now = T0 + 10 * MIN): UsageHistory {
    const h = UsageHistory.open(':memory:', clock(now).opts);
    h.record(T0, [
      rec(FIREFOX, 'wifi', 'internet', 1000, 10_000),
      rec(FIREFOX, 'cellular', 'internet', 2000, 20_000, { cost: 0.022, currency: 'EUR' }),
      rec(CURL, 'cellular', 'corp', 300, 3000, { cost: 0.0033, currency: 'EUR' }),
      rec(RESOLVED, 'wifi', 'internet', 50, 500),
    ]);
    h.record(T0 + 5 * MIN, [rec(FIREFOX, 'cellular', 'corp', 4000, 40_000, { cost: 0.044, currency: 'EUR', seconds: 300 })]);
    return h;
  }
  const span = { sinceMs: T0 - HOUR, untilMs: T0 + HOUR };
  const brief = (rows: { key: string; name: string; txBytes: number; rxBytes: number; cost: Record<string, number> }[]) =>
    rows.map((r) => [r.key, r.name, r.txBytes, r.rxBytes, r.cost]);

  it('groups by app: totals, packets, time, cost and the app, largest first', () => {
    const h = sample();
    const q = h.query({ by: 'app', ...span });
    assert.deepEqual(q.rows[0], {
      key: FIREFOX.key, name: 'firefox', app: FIREFOX, txBytes: 7000, rxBytes: 70_000, txPackets: 3, rxPackets: 6, seconds: 300, cost: { EUR: 0.066 },
    });
    assert.deepEqual(brief(q.rows), [
      [FIREFOX.key, 'firefox', 7000, 70_000, { EUR: 0.066 }],
      [CURL.key, 'curl', 300, 3000, { EUR: 0.0033 }],
      [RESOLVED.key, 'systemd-resolved', 50, 500, {}],
    ]);
    assert.deepEqual(q.rows[2]?.app, RESOLVED);
    h.close();
  });

  it('groups by uplink and by destination (no app on those rows)', () => {
    const h = sample();
    const up = h.query({ by: 'uplink', ...span }).rows;
    assert.deepEqual(brief(up), [['cellular', 'cellular', 6300, 63_000, { EUR: 0.0693 }], ['wifi', 'wifi', 1050, 10_500, {}]]);
    assert.ok(up.every((r) => !('app' in r)));
    assert.deepEqual(brief(h.query({ by: 'destination', ...span }).rows), [['corp', 'corp', 4300, 43_000, { EUR: 0.0473 }], ['internet', 'internet', 3050, 30_500, { EUR: 0.022 }]]);
    h.close();
  });

  it('filters by uplink, destination and app name, alone and together', () => {
    const h = sample();
    assert.deepEqual(brief(h.query({ by: 'app', ...span, uplink: 'cellular' }).rows), [[FIREFOX.key, 'firefox', 6000, 60_000, { EUR: 0.066 }], [CURL.key, 'curl', 300, 3000, { EUR: 0.0033 }]]);
    assert.deepEqual(brief(h.query({ by: 'uplink', ...span, destination: 'corp' }).rows), [['cellular', 'cellular', 4300, 43_000, { EUR: 0.0473 }]]);
    assert.deepEqual(brief(h.query({ by: 'destination', ...span, app: 'firefox' }).rows), [['corp', 'corp', 4000, 40_000, { EUR: 0.044 }], ['internet', 'internet', 3000, 30_000, { EUR: 0.022 }]]);
    assert.deepEqual(brief(h.query({ by: 'app', ...span, app: 'firefox', uplink: 'wifi', destination: 'internet' }).rows), [[FIREFOX.key, 'firefox', 1000, 10_000, {}]]);
    assert.deepEqual(h.query({ by: 'app', ...span, uplink: 'nowhere' }).rows, []);
    h.close();
  });

  it('restricts to one uid\'s apps (the system\'s, uid null, never match)', () => {
    const h = sample();
    assert.deepEqual(brief(h.query({ by: 'uplink', ...span, uid: 1000 }).rows), [['cellular', 'cellular', 6000, 60_000, { EUR: 0.066 }], ['wifi', 'wifi', 1000, 10_000, {}]]);
    assert.deepEqual(h.query({ by: 'app', ...span, uid: 1001 }).rows.map((r) => r.key), [CURL.key]);
    const root = h.query({ by: 'app', ...span, uid: 0 });
    assert.deepEqual([root.rows, root.series.filter((b) => b.txBytes > 0)], [[], []]);
    assert.deepEqual(h.query({ by: 'uplink', ...span, uid: 1000 }).series.filter((b) => b.txBytes > 0), [
      { atMs: T0, txBytes: 3000, rxBytes: 30_000 }, { atMs: T0 + 5 * MIN, txBytes: 4000, rxBytes: 40_000 },
    ]);
    h.close();
  });

  it('fills the series with every bucket, zeros included, from the bucket holding since', () => {
    const h = sample();
    const q = h.query({ by: 'app', sinceMs: T0 - HOUR + 30_000, untilMs: T0 + HOUR });
    assert.equal(q.resolution, 'minute');
    assert.equal(q.series.length, 120);
    assert.equal(q.series[0]?.atMs, T0 - HOUR);
    assert.ok(q.series.every((b, i) => b.atMs === T0 - HOUR + i * MIN));
    assert.deepEqual(q.series.filter((b) => b.txBytes + b.rxBytes > 0), [
      { atMs: T0, txBytes: 3350, rxBytes: 33_500 }, { atMs: T0 + 5 * MIN, txBytes: 4000, rxBytes: 40_000 },
    ]);
    const hours = h.query({ by: 'app', sinceMs: T0 - 3 * HOUR, untilMs: T0 + 3 * HOUR, resolution: 'hour' }).series;
    assert.deepEqual(hours.map((b) => [(b.atMs - T0) / HOUR, b.txBytes]), [[-3, 0], [-2, 0], [-1, 0], [0, 7350], [1, 0], [2, 0]]);
    h.close();
  });

  it('picks the finest resolution that holds since and fits the bucket cap, or the one asked (coarser beyond the cap)', () => {
    const h = sample(T0);
    assert.equal(h.query({ by: 'app', sinceMs: T0 - 23 * HOUR, untilMs: T0 }).resolution, 'minute');
    assert.equal(h.query({ by: 'app', sinceMs: T0 - 3 * DAY, untilMs: T0 }).resolution, 'hour');
    assert.equal(h.query({ by: 'app', sinceMs: T0 - 70 * DAY, untilMs: T0 }).resolution, 'day'); // 1680 hours
    assert.equal(h.query({ by: 'app', sinceMs: T0 - 100 * DAY, untilMs: T0 }).resolution, 'day');
    assert.equal(h.query({ by: 'app', sinceMs: T0 - 100 * DAY, untilMs: T0, resolution: 'day' }).series.length, 101);
    const coarsened = h.query({ by: 'app', sinceMs: T0 - 2 * DAY, untilMs: T0, resolution: 'minute' });
    assert.deepEqual([coarsened.resolution, coarsened.series.length], ['hour', 48]);
    assert.equal(h.query({ by: 'app', sinceMs: T0 - HOUR, untilMs: T0 + HOUR, resolution: 'day' }).series.length, 1);
    h.close();
  });

  it('counts the rows exactly over periods spanning days, and answers an empty period with nothing', () => {
    const h = sample(T0 + 2 * DAY);
    h.record(T0 + DAY, [rec(CURL, 'cellular', 'corp', 5, 5)]);
    h.record(T0 + 2 * DAY - HOUR, [rec(CURL, 'cellular', 'corp', 60, 60)]);
    h.record(T0 + 2 * DAY - 10 * MIN, [rec(CURL, 'cellular', 'corp', 700, 700)]);
    // [T0, T0 + 2 days - 30 min): a whole day from the day rows; the head from hour rows (the minute
    // rows of T0 are past keeping); the tail from hour rows and, for its last half hour, minute rows.
    const q = h.query({ by: 'app', sinceMs: T0, untilMs: T0 + 2 * DAY - 30 * MIN });
    assert.deepEqual(brief(q.rows), [
      [FIREFOX.key, 'firefox', 7000, 70_000, { EUR: 0.066 }], [CURL.key, 'curl', 365, 3065, { EUR: 0.0033 }], [RESOLVED.key, 'systemd-resolved', 50, 500, {}],
    ]);
    // Without minute rows a bucket counts when it starts in the period: T0 + 5 min is in the hour of T0.
    assert.deepEqual(h.query({ by: 'app', sinceMs: T0 + 5 * MIN, untilMs: T0 + DAY }).rows.map((r) => r.key), []);
    assert.deepEqual(h.query({ by: 'app', sinceMs: T0, untilMs: T0 }), { resolution: 'hour', rows: [], series: [] });
    h.close();
  });

  it('starts day buckets at local midnight across a DST change (a 23-hour day)', () => {
    const change = Date.UTC(2026, 2, 29, 1, 0); // Central Europe: 02:00 +01:00 becomes 03:00 +02:00
    const h = UsageHistory.open(':memory:', { tzOffsetMinutes: (t) => (t < change ? 60 : 120), now: () => Date.UTC(2026, 2, 31) });
    h.record(Date.UTC(2026, 2, 29, 12, 0), [rec(FIREFOX, 'wifi', 'internet', 9, 9)]);
    h.record(Date.UTC(2026, 2, 29, 22, 30), [rec(FIREFOX, 'wifi', 'internet', 1, 1)]);
    const days = h.query({ by: 'app', sinceMs: Date.UTC(2026, 2, 29, 12, 0), untilMs: Date.UTC(2026, 2, 31), resolution: 'day' }).series;
    assert.deepEqual(days, [
      { atMs: Date.UTC(2026, 2, 28, 23, 0), txBytes: 9, rxBytes: 9 },
      { atMs: Date.UTC(2026, 2, 29, 22, 0), txBytes: 1, rxBytes: 1 },
      { atMs: Date.UTC(2026, 2, 30, 22, 0), txBytes: 0, rxBytes: 0 },
    ]);
    h.close();
  });
});

describe('usage history: sums for budgets', () => {
  const at = (day: number, hour: number, minute = 0, second = 0) => Date.UTC(2026, 2, day, hour, minute, second);
  function budgetSample(now: number): UsageHistory {
    const h = UsageHistory.open(':memory:', clock(now).opts);
    const mb = (cost: number) => rec(FIREFOX, 'cellular', 'internet', 100_000, 900_000, { cost, currency: 'EUR', seconds: 60 });
    h.record(at(7, 5), [mb(0.1)]); // 06:00 local, 7 March
    h.record(at(7, 17), [mb(0.1)]); // 18:00 local
    h.record(at(10, 7), [mb(0.1)]); // 08:00 local, 10 March
    h.record(at(10, 11), [mb(0.1), rec(CURL, 'wifi', 'internet', 250_000, 250_000, { cost: 0.05, currency: 'USD' })]);
    h.record(at(10, 15), [mb(0.1)]);
    return h;
  }

  it('sums bytes, money (exactly, in micro-units) and time from a since inside a day, per uplink, app and uid', () => {
    const h = budgetSample(at(10, 17));
    assert.deepEqual(h.sum({ sinceMs: MIDNIGHT }), { bytes: 3_500_000, cost: { EUR: 0.3, USD: 0.05 }, seconds: 180 });
    assert.deepEqual(h.sum({ uplink: 'cellular', sinceMs: at(10, 9) }), { bytes: 2_000_000, cost: { EUR: 0.2 }, seconds: 120 });
    // A bucket counts when it starts at or after since: 11:00:30 leaves the 11:00 minute out.
    assert.deepEqual(h.sum({ uplink: 'cellular', app: 'firefox', uid: 1000, sinceMs: at(10, 11, 0, 30) }), { bytes: 1_000_000, cost: { EUR: 0.1 }, seconds: 60 });
    assert.deepEqual(h.sum({ sinceMs: MIDNIGHT, untilMs: at(10, 12) }), { bytes: 2_500_000, cost: { EUR: 0.2, USD: 0.05 }, seconds: 120 });
    assert.deepEqual(h.sum({ uid: 1001, sinceMs: MIDNIGHT }), { bytes: 500_000, cost: { USD: 0.05 }, seconds: 0 });
    assert.deepEqual(h.sum({ uid: 0, sinceMs: 0 }), { bytes: 0, cost: {}, seconds: 0 });
    // Since noon, 7 March (local): 18:00 that day from hour rows, then whole days.
    assert.deepEqual(h.sum({ uplink: 'cellular', sinceMs: at(7, 11) }), { bytes: 4_000_000, cost: { EUR: 0.4 }, seconds: 240 });
    assert.equal(h.sum({ sinceMs: at(10, 17) }).bytes, 0);
    h.close();
  });

  it('still sums by the hour once the minute rows are gone', () => {
    const h = budgetSample(at(13, 17));
    assert.deepEqual(h.compact(at(13, 17)), { minute: 6, hour: 0 });
    assert.equal(h.sum({ uplink: 'cellular', sinceMs: at(10, 9) }).bytes, 2_000_000);
    assert.equal(h.sum({ uplink: 'cellular', sinceMs: at(10, 11, 0, 30) }).bytes, 1_000_000);
    h.close();
  });
});

describe('usage history: budgets', () => {
  const budget = (id: string, over: Partial<StoredBudget> = {}): StoredBudget => ({
    id, owner: 1000,
    spec: { uplink: 'cellular', app: 'firefox', period: 'month', start: 5, limit: { money: 5, currency: 'EUR' }, warnAt: 0.8, block: true, uid: 1000 },
    ...over,
  });

  it('stores, lists (by id), replaces and deletes budgets', () => {
    const h = UsageHistory.open(':memory:', clock(T0).opts);
    assert.deepEqual(h.budgets(), []);
    h.putBudget(budget('phone'));
    h.putBudget(budget('all', { owner: 0, spec: { uplink: 'cellular', period: 'day', start: 1, limit: { bytes: 10_000_000 }, warnAt: 0.5, block: false, uid: null } }));
    assert.deepEqual(h.budgets(), [
      budget('all', { owner: 0, spec: { uplink: 'cellular', period: 'day', start: 1, limit: { bytes: 10_000_000 }, warnAt: 0.5, block: false, uid: null } }),
      budget('phone'),
    ]);
    h.putBudget(budget('phone', { owner: 1001 }));
    assert.deepEqual(h.budgets().find((b) => b.id === 'phone'), budget('phone', { owner: 1001 }));
    assert.equal(h.deleteBudget('phone'), true);
    assert.equal(h.deleteBudget('phone'), false);
    assert.deepEqual(h.budgets().map((b) => b.id), ['all']);
    h.close();
  });

  it('skips stored budgets that no longer parse, saying which and why', () => {
    const file = tempFile();
    const h = UsageHistory.open(file, clock(T0).opts);
    h.putBudget(budget('good'));
    const raw = new Database(file);
    raw.prepare('INSERT INTO budgets (id, spec, owner) VALUES (?, ?, 0), (?, ?, 0)').run('bad-json', '{', 'bad-spec', '{"uplink":5}');
    raw.close();
    const bad: string[] = [];
    assert.deepEqual(h.budgets((id) => bad.push(id)).map((b) => b.id), ['good']);
    assert.deepEqual(bad, ['bad-json', 'bad-spec']);
    h.close();
  });
});
