/**
 * The usage history: SQLite (better-sqlite3, synchronous) in the state directory. Each flush adds
 * its deltas to three tables at once (per minute, hour and local day), so every resolution always
 * agrees with the others; compaction only deletes old minute and hour rows. Also kept here: the
 * accounting's marks (budgets' announcement markers and resets, written with the deltas) and the
 * budgets set from the CLI. docs/usage.md ("History") describes the schema.
 *
 * Money is stored as integer micro-units of its currency (no float drift over many additions)
 * and returned as numbers in currency units.
 */
import { closeSync, fchmodSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { z } from 'zod';
import { errorMessage } from '../errors.js';
import {
  budgetSetSchema, type BudgetSetParams, type Money, type Resolution, type UsageAppKind, type UsageAppView,
  type UsageCounts, type UsageGroup,
} from './view.js';

export interface UsageRecord {
  app: UsageAppView;
  uplink: string;
  /** A destination's name, or the Internet's. */
  destination: string;
  txBytes: number;
  rxBytes: number;
  txPackets: number;
  rxPackets: number;
  /** Connection time, whole seconds. */
  seconds: number;
  /** In `currency` units (stored to the micro-unit). */
  cost: number;
  /** ISO 4217, or '' when there is no price. */
  currency: string;
}

export interface StoredBudget {
  id: string;
  spec: BudgetSetParams & { uid: number | null };
  /** The uid of who set it. */
  owner: number;
}

export type UsageQueryRow = UsageCounts & { key: string; name: string; app?: UsageAppView };

export interface UsageHistoryQuery {
  by: UsageGroup;
  sinceMs: number;
  untilMs: number;
  resolution?: Resolution;
  uplink?: string;
  /** An app's name. */
  app?: string;
  destination?: string;
  /** Only apps of this uid (apps without a uid, the system's, are left out). */
  uid?: number;
}

export interface UsageHistoryResult {
  resolution: Resolution;
  rows: UsageQueryRow[];
  series: { atMs: number; txBytes: number; rxBytes: number }[];
}

export interface UsageSumFilter {
  uplink?: string;
  /** An app's name. */
  app?: string;
  /** One app by its key ("app:1000/org.example.Chat"). */
  appKey?: string;
  uid?: number;
  sinceMs: number;
  untilMs?: number;
}

export interface UsageHistoryOptions {
  /** The local zone's offset east of UTC at an instant, minutes (day buckets start at local midnight). Default: the process's. */
  tzOffsetMinutes?: (atMs: number) => number;
  /** The clock for compaction at open and for what each resolution still holds. Default: Date.now. */
  now?: () => number;
}

const MINUTE_MS = 60_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
/** Minute rows are kept this long, hour rows RETAIN_HOUR_MS; day rows forever. */
export const RETAIN_MINUTE_MS = DAY_MS;
export const RETAIN_HOUR_MS = 90 * DAY_MS;
/** At most this many buckets in a series: a longer period gets a coarser resolution. */
export const MAX_SERIES_BUCKETS = 1500;
const MICRO = 1_000_000;

const TABLE: Record<Resolution, string> = { minute: 'usage_minute', hour: 'usage_hour', day: 'usage_day' };
/** Coarsest first. */
const LEVELS: readonly Resolution[] = ['day', 'hour', 'minute'];

function usageTable(name: string): string {
  return `CREATE TABLE ${name} (
    ts INTEGER NOT NULL,
    app INTEGER NOT NULL REFERENCES apps(id),
    uplink TEXT NOT NULL,
    destination TEXT NOT NULL,
    tx_bytes INTEGER NOT NULL DEFAULT 0,
    rx_bytes INTEGER NOT NULL DEFAULT 0,
    tx_packets INTEGER NOT NULL DEFAULT 0,
    rx_packets INTEGER NOT NULL DEFAULT 0,
    seconds INTEGER NOT NULL DEFAULT 0,
    cost_micro INTEGER NOT NULL DEFAULT 0,
    currency TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (ts, app, uplink, destination, currency)
  ) WITHOUT ROWID;`;
}

export type Migration = string | ((db: Database.Database) => void);

/** The schema, oldest first: migration i brings user_version from i to i + 1. Append only. */
export const MIGRATIONS: readonly Migration[] = [
  `CREATE TABLE apps (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    uid INTEGER,
    exe TEXT
  );
  ${usageTable('usage_minute')}
  ${usageTable('usage_hour')}
  ${usageTable('usage_day')}
  CREATE TABLE marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
  CREATE TABLE budgets (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    owner INTEGER NOT NULL
  );`,
];
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Brings the database to the newest schema, each migration in its own transaction (a failing one
 * leaves the database at the version before it). A database newer than `migrations` is refused.
 */
export function migrate(db: Database.Database, file: string, migrations: readonly Migration[] = MIGRATIONS): void {
  const version = db.pragma('user_version', { simple: true });
  if (typeof version !== 'number') throw new Error(`${file}: cannot read the schema version`);
  if (version > migrations.length) {
    throw new Error(`${file}: the usage history is at schema version ${version}, newer than this waymark knows (${migrations.length}); ` +
      'run a newer waymark or move the file away');
  }
  for (let v = version; v < migrations.length; v++) {
    const step = migrations[v]!;
    db.transaction(() => {
      if (typeof step === 'string') db.exec(step);
      else step(db);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

const storedSpecSchema = budgetSetSchema.extend({ uid: z.number().int().nonnegative().nullable() });

const APP_KINDS: ReadonlySet<string> = new Set<UsageAppKind>(['app', 'flatpak', 'service', 'login', 'scope', 'process', 'unattributed', 'connection']);

interface AppRow { key: string; name: string; kind: string; uid: number | null; exe: string | null }

function appView(r: AppRow): UsageAppView {
  return { key: r.key, name: r.name, kind: APP_KINDS.has(r.kind) ? (r.kind as UsageAppKind) : 'unattributed', uid: r.uid, exe: r.exe };
}

function checkCount(what: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`usage record: ${what} must be a non-negative integer, not ${n}`);
}

type Bind = Record<string, string | number | null>;
interface SumRow { k: string | null; currency: string; tx: number; rx: number; txp: number; rxp: number; secs: number; micro: number }
interface Filters { uplink?: string | undefined; app?: string | undefined; appKey?: string | undefined; destination?: string | undefined; uid?: number | undefined }

export class UsageHistory {
  private readonly statements = new Map<string, Database.Statement<[Bind]>>();
  /** App key -> its row id and what was stored for it, so unchanged apps are not rewritten. */
  private readonly appIds = new Map<string, { id: number; stored: string }>();
  private readonly tzOffset: (atMs: number) => number;
  private readonly now: () => number;
  private lastCompactMs = -Infinity;

  private constructor(private readonly db: Database.Database, opts: UsageHistoryOptions) {
    this.tzOffset = opts.tzOffsetMinutes ?? ((atMs) => -new Date(atMs).getTimezoneOffset());
    this.now = opts.now ?? Date.now;
  }

  /** Opens (creating it, and its directory, if missing) and migrates; ':memory:' for a private one. Compacts once. */
  static open(file: string, opts: UsageHistoryOptions = {}): UsageHistory {
    if (file !== ':memory:') {
      mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
      // App names and paths of every user: root's alone. SQLite gives its -wal and -shm the file's mode.
      const fd = openSync(file, 'a', 0o600);
      try {
        fchmodSync(fd, 0o600);
      } finally {
        closeSync(fd);
      }
    }
    let db: Database.Database | undefined;
    try {
      db = new Database(file);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      migrate(db, file);
    } catch (e) {
      db?.close();
      const message = errorMessage(e);
      throw new Error(message.startsWith(`${file}:`) ? message : `${file}: ${message}`, { cause: e });
    }
    const history = new UsageHistory(db, opts);
    history.compact(history.now());
    return history;
  }

  /**
   * Adds the deltas (and, when given, the marks: the accounting's small key-value state, which
   * they replace whole) in one transaction: a crash keeps both or neither. Records falling
   * in the same bucket add up. Compacts when an hour has passed since the last compaction.
   */
  record(atMs: number, records: readonly UsageRecord[], marks?: Readonly<Record<string, string>>): void {
    for (const r of records) {
      checkCount('txBytes', r.txBytes); checkCount('rxBytes', r.rxBytes);
      checkCount('txPackets', r.txPackets); checkCount('rxPackets', r.rxPackets); checkCount('seconds', r.seconds);
      if (!Number.isFinite(r.cost) || r.cost < 0) throw new RangeError(`usage record: cost must be a non-negative number, not ${r.cost}`);
      if (r.cost > 0 && r.currency === '') throw new RangeError('usage record: a cost needs a currency');
    }
    const buckets = { minute: this.floor('minute', atMs) / 1000, hour: this.floor('hour', atMs) / 1000, day: this.floor('day', atMs) / 1000 };
    try {
      this.db.transaction(() => {
        for (const r of records) {
          if (r.txBytes + r.rxBytes + r.txPackets + r.rxPackets + r.seconds === 0 && r.cost === 0) continue;
          const row: Bind = {
            app: this.appId(r.app), uplink: r.uplink, destination: r.destination, currency: r.currency,
            tx: r.txBytes, rx: r.rxBytes, txp: r.txPackets, rxp: r.rxPackets, secs: r.seconds, micro: Math.round(r.cost * MICRO),
          };
          for (const res of LEVELS) this.upsert(res).run({ ...row, ts: buckets[res] });
        }
        if (marks) {
          this.stmt('DELETE FROM marks').run({});
          const put = this.stmt('INSERT INTO marks (name, value) VALUES (@name, @value)');
          for (const [name, value] of Object.entries(marks)) put.run({ name, value });
        }
      })();
    } catch (e) {
      this.appIds.clear(); // ids handed out in the rolled-back transaction are gone
      throw e;
    }
    if (atMs - this.lastCompactMs >= HOUR_MS) this.compact(atMs);
  }

  /** The marks stored with the last flush that gave them (budgets' announcement markers and resets). */
  marks(): Record<string, string> {
    const rows = this.stmt('SELECT name, value FROM marks').all({}) as { name: string; value: string }[];
    return Object.fromEntries(rows.map((r) => [r.name, r.value]));
  }

  /** Deletes minute rows older than 24 h and hour rows older than 90 days (before nowMs); day rows stay. */
  compact(nowMs: number): { minute: number; hour: number } {
    const run = (res: Resolution, keepMs: number) =>
      this.stmt(`DELETE FROM ${TABLE[res]} WHERE ts < @before`).run({ before: Math.floor((nowMs - keepMs) / 1000) }).changes;
    const done = this.db.transaction(() => ({ minute: run('minute', RETAIN_MINUTE_MS), hour: run('hour', RETAIN_HOUR_MS) }))();
    this.lastCompactMs = nowMs;
    return done;
  }

  /**
   * Sums grouped by app key, uplink or destination over [sinceMs, untilMs), as exact as the stored
   * rows allow (whole days from the day rows, the edges from finer ones while those are kept;
   * a bucket counts when it starts in the period), and a series of every bucket of the
   * resolution (asked, or the finest that still holds sinceMs; coarser when it would exceed
   * MAX_SERIES_BUCKETS), zeros included, from the bucket holding sinceMs.
   */
  query(q: UsageHistoryQuery): UsageHistoryResult {
    if (!Number.isFinite(q.sinceMs) || !Number.isFinite(q.untilMs)) throw new RangeError('usage query: since and until must be finite');
    const resolution = this.seriesResolution(q.sinceMs, q.untilMs, q.resolution);
    if (!(q.sinceMs < q.untilMs)) return { resolution, rows: [], series: [] };
    const keyColumn = { app: 'a.key', uplink: 'u.uplink', destination: 'u.destination' }[q.by];
    const rows = new Map<string, UsageQueryRow>();
    const micros = new Map<string, Map<string, number>>();
    for (const seg of this.segments(q.sinceMs, q.untilMs)) {
      for (const r of this.sumRows(seg, q, keyColumn)) {
        const key = r.k ?? '';
        let row = rows.get(key);
        if (!row) {
          row = { key, name: key, txBytes: 0, rxBytes: 0, txPackets: 0, rxPackets: 0, seconds: 0, cost: {} };
          rows.set(key, row);
        }
        row.txBytes += r.tx; row.rxBytes += r.rx; row.txPackets += r.txp; row.rxPackets += r.rxp; row.seconds += r.secs;
        if (r.currency !== '') addMicro(micros, key, r.currency, r.micro);
      }
    }
    for (const [key, row] of rows) {
      row.cost = moneyOf(micros.get(key));
      if (q.by === 'app') {
        const app = this.stmt('SELECT key, name, kind, uid, exe FROM apps WHERE key = @key').get({ key }) as AppRow | undefined;
        if (app) { row.app = appView(app); row.name = app.name; }
      }
    }
    const sorted = [...rows.values()].sort((a, b) => b.txBytes + b.rxBytes - (a.txBytes + a.rxBytes) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { resolution, rows: sorted, series: this.series(resolution, q) };
  }

  /** Bytes (sent + received), cost and connection time of the matching rows over [sinceMs, untilMs ?? ∞), as `query` counts them. */
  sum(f: UsageSumFilter): { bytes: number; cost: Money; seconds: number } {
    if (!Number.isFinite(f.sinceMs)) throw new RangeError('usage sum: since must be finite');
    const untilMs = f.untilMs ?? Infinity;
    let bytes = 0;
    let seconds = 0;
    const micros = new Map<string, Map<string, number>>();
    if (f.sinceMs < untilMs) {
      for (const seg of this.segments(f.sinceMs, untilMs)) {
        for (const r of this.sumRows(seg, f, null)) {
          bytes += r.tx + r.rx;
          seconds += r.secs;
          if (r.currency !== '') addMicro(micros, '', r.currency, r.micro);
        }
      }
    }
    return { bytes, cost: moneyOf(micros.get('')), seconds };
  }

  budgets(onInvalid?: (id: string, why: string) => void): StoredBudget[] {
    const rows = this.stmt('SELECT id, spec, owner FROM budgets ORDER BY id').all({}) as { id: string; spec: string; owner: number }[];
    const out: StoredBudget[] = [];
    for (const r of rows) {
      let parsed: ReturnType<typeof storedSpecSchema.safeParse>;
      try {
        parsed = storedSpecSchema.safeParse(JSON.parse(r.spec));
      } catch (e) {
        onInvalid?.(r.id, errorMessage(e));
        continue;
      }
      if (!parsed.success) {
        onInvalid?.(r.id, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
        continue;
      }
      out.push({ id: r.id, spec: parsed.data, owner: r.owner });
    }
    return out;
  }

  /** Adds or replaces (by id). */
  putBudget(b: StoredBudget): void {
    this.stmt(`INSERT INTO budgets (id, spec, owner) VALUES (@id, @spec, @owner)
      ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, owner = excluded.owner`)
      .run({ id: b.id, spec: JSON.stringify(b.spec), owner: b.owner });
  }

  deleteBudget(id: string): boolean {
    return this.stmt('DELETE FROM budgets WHERE id = @id').run({ id }).changes > 0;
  }

  close(): void {
    this.statements.clear();
    this.db.close();
  }

  /** The start of the bucket holding atMs. Minute and hour: UTC-aligned; day: local midnight. */
  private floor(res: Resolution, atMs: number): number {
    if (res === 'minute') return Math.floor(atMs / MINUTE_MS) * MINUTE_MS;
    if (res === 'hour') return Math.floor(atMs / HOUR_MS) * HOUR_MS;
    const off = this.tzOffset(atMs) * MINUTE_MS;
    const localMidnight = Math.floor((atMs + off) / DAY_MS) * DAY_MS;
    const start = localMidnight - off;
    // The offset at midnight differs when a DST change falls between it and atMs.
    const offAtStart = this.tzOffset(start) * MINUTE_MS;
    return offAtStart === off ? start : localMidnight - offAtStart;
  }

  /** The start of the bucket after the one starting at startMs (local days last 23 to 25 hours). */
  private next(res: Resolution, startMs: number): number {
    if (res === 'minute') return startMs + MINUTE_MS;
    if (res === 'hour') return startMs + HOUR_MS;
    return this.floor('day', startMs + 30 * HOUR_MS);
  }

  private ceil(res: Resolution, atMs: number): number {
    const f = this.floor(res, atMs);
    return f === atMs ? f : this.next(res, f);
  }

  /** Whether the rows of `res` still hold everything from atMs on (compaction deletes older ones). */
  private holds(res: Resolution, atMs: number): boolean {
    const now = Math.max(this.now(), this.lastCompactMs);
    if (res === 'minute') return atMs >= now - RETAIN_MINUTE_MS;
    if (res === 'hour') return atMs >= now - RETAIN_HOUR_MS;
    return true;
  }

  /**
   * [a, b) as pieces, each read from one table: the whole buckets of the coarsest table, the
   * edges from finer tables while those still hold them; at the finest, buckets starting in [a, b).
   */
  private segments(a: number, b: number, level = 0): { res: Resolution; from: number; to: number }[] {
    const res = LEVELS[level]!;
    const finer = LEVELS[level + 1];
    if (finer === undefined || !this.holds(finer, a)) return [{ res, from: a, to: b }];
    const first = this.ceil(res, a);
    const end = b === Infinity ? Infinity : this.floor(res, b);
    if (first >= end) return this.segments(a, b, level + 1);
    return [
      ...(a < first ? this.segments(a, first, level + 1) : []),
      { res, from: first, to: end },
      ...(end < b ? this.segments(end, b, level + 1) : []),
    ];
  }

  private sumRows(seg: { res: Resolution; from: number; to: number }, f: Filters, keyColumn: string | null): SumRow[] {
    const { where, bind } = this.where(f, seg.from, seg.to);
    const k = keyColumn ?? 'NULL';
    return this.stmt(`SELECT ${k} AS k, u.currency AS currency, SUM(u.tx_bytes) AS tx, SUM(u.rx_bytes) AS rx,
        SUM(u.tx_packets) AS txp, SUM(u.rx_packets) AS rxp, SUM(u.seconds) AS secs, SUM(u.cost_micro) AS micro
      FROM ${TABLE[seg.res]} u JOIN apps a ON a.id = u.app WHERE ${where} GROUP BY ${k}, u.currency`).all(bind) as SumRow[];
  }

  private where(f: Filters, fromMs: number, toMs: number): { where: string; bind: Bind } {
    const parts = ['u.ts >= @from', 'u.ts < @to'];
    // Bucket starts are whole seconds: ts >= ceil(from) is "starts at or after from".
    const bind: Bind = { from: Math.ceil(fromMs / 1000), to: toMs === Infinity ? Number.MAX_SAFE_INTEGER : Math.ceil(toMs / 1000) };
    if (f.uplink !== undefined) { parts.push('u.uplink = @uplink'); bind.uplink = f.uplink; }
    if (f.destination !== undefined) { parts.push('u.destination = @destination'); bind.destination = f.destination; }
    if (f.app !== undefined) { parts.push('a.name = @appName'); bind.appName = f.app; }
    if (f.appKey !== undefined) { parts.push('a.key = @appKey'); bind.appKey = f.appKey; }
    if (f.uid !== undefined) { parts.push('a.uid = @uid'); bind.uid = f.uid; }
    return { where: parts.join(' AND '), bind };
  }

  private seriesResolution(sinceMs: number, untilMs: number, asked: Resolution | undefined): Resolution {
    let i = LEVELS.length - 1;
    if (asked !== undefined) i = LEVELS.indexOf(asked);
    else while (i > 0 && !this.holds(LEVELS[i]!, sinceMs)) i--;
    while (i > 0 && this.bucketCount(LEVELS[i]!, sinceMs, untilMs) > MAX_SERIES_BUCKETS) i--;
    return LEVELS[i]!;
  }

  private bucketCount(res: Resolution, sinceMs: number, untilMs: number): number {
    const size = { minute: MINUTE_MS, hour: HOUR_MS, day: DAY_MS }[res];
    return Math.ceil((untilMs - this.floor(res, sinceMs)) / size);
  }

  /**
   * Every bucket from the one holding sinceMs to untilMs. A day series longer than
   * MAX_SERIES_BUCKETS starts at the first stored day instead, and keeps the latest buckets.
   */
  private series(res: Resolution, q: UsageHistoryQuery): UsageHistoryResult['series'] {
    let start = this.floor(res, q.sinceMs);
    const { where, bind } = this.where(q, start, q.untilMs);
    if (this.bucketCount(res, start, q.untilMs) > MAX_SERIES_BUCKETS) {
      const first = this.stmt(`SELECT MIN(u.ts) AS first FROM ${TABLE[res]} u JOIN apps a ON a.id = u.app WHERE ${where}`).get(bind) as { first: number | null };
      if (first.first !== null) start = Math.max(start, first.first * 1000);
    }
    const stored = this.stmt(`SELECT u.ts AS ts, SUM(u.tx_bytes) AS tx, SUM(u.rx_bytes) AS rx
      FROM ${TABLE[res]} u JOIN apps a ON a.id = u.app WHERE ${where} GROUP BY u.ts`).all(bind) as { ts: number; tx: number; rx: number }[];
    const byTs = new Map(stored.map((r) => [r.ts * 1000, r]));
    const out: UsageHistoryResult['series'] = [];
    for (let at = start; at < q.untilMs; at = this.next(res, at)) {
      const r = byTs.get(at);
      out.push({ atMs: at, txBytes: r?.tx ?? 0, rxBytes: r?.rx ?? 0 });
    }
    return out.length > MAX_SERIES_BUCKETS ? out.slice(-MAX_SERIES_BUCKETS) : out;
  }

  private appId(app: UsageAppView): number {
    const stored = JSON.stringify([app.name, app.kind, app.uid, app.exe]);
    const known = this.appIds.get(app.key);
    if (known?.stored === stored) return known.id;
    const row = this.stmt(`INSERT INTO apps (key, name, kind, uid, exe) VALUES (@key, @name, @kind, @uid, @exe)
      ON CONFLICT (key) DO UPDATE SET name = excluded.name, kind = excluded.kind, uid = excluded.uid, exe = excluded.exe
      RETURNING id`).get({ key: app.key, name: app.name, kind: app.kind, uid: app.uid, exe: app.exe }) as { id: number };
    this.appIds.set(app.key, { id: row.id, stored });
    return row.id;
  }

  private upsert(res: Resolution): Database.Statement<[Bind]> {
    return this.stmt(`INSERT INTO ${TABLE[res]} (ts, app, uplink, destination, currency, tx_bytes, rx_bytes, tx_packets, rx_packets, seconds, cost_micro)
      VALUES (@ts, @app, @uplink, @destination, @currency, @tx, @rx, @txp, @rxp, @secs, @micro)
      ON CONFLICT (ts, app, uplink, destination, currency) DO UPDATE SET
        tx_bytes = tx_bytes + excluded.tx_bytes, rx_bytes = rx_bytes + excluded.rx_bytes,
        tx_packets = tx_packets + excluded.tx_packets, rx_packets = rx_packets + excluded.rx_packets,
        seconds = seconds + excluded.seconds, cost_micro = cost_micro + excluded.cost_micro`);
  }

  /** A prepared statement, prepared once per text. */
  private stmt(sql: string): Database.Statement<[Bind]> {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare<[Bind]>(sql);
      this.statements.set(sql, s);
    }
    return s;
  }
}

function addMicro(into: Map<string, Map<string, number>>, key: string, currency: string, micro: number): void {
  let m = into.get(key);
  if (!m) into.set(key, (m = new Map<string, number>()));
  m.set(currency, (m.get(currency) ?? 0) + micro);
}

function moneyOf(micros: Map<string, number> | undefined): Money {
  const out: Money = {};
  for (const [currency, micro] of [...(micros ?? [])].sort(([a], [b]) => (a < b ? -1 : 1))) out[currency] = micro / MICRO;
  return out;
}
