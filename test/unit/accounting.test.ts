/**
 * The accounting service (src/accounting/service.ts) over a fake kernel (the programs' usage rows
 * and budget counters, the uplinks' nftables counters), a fake clock and a real in-memory
 * history: growth, the unattributed rest, destinations, cost, flushes, who sees what, budgets
 * and the kernel limits they write; and the usage service's budget permissions.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { destinationIndex } from '../../src/backstop/desired.js';
import { UsageHistory, type UsageRecord } from '../../src/accounting/history.js';
import { KernelIdentities, UNATTRIBUTED_APP, type IdentitySources } from '../../src/accounting/identity.js';
import {
  AccountingService, type BudgetDef, type HistoryPort, type KernelUsageRow, type UsageKernel,
} from '../../src/accounting/service.js';
import { budgetSetSchema, usageQuerySchema, type UsageAppView, type UsageResult } from '../../src/accounting/view.js';
import type { ConfigBudget } from '../../src/config/load.js';
import type { EventBody } from '../../src/daemon/events.js';
import type { CallContext } from '../../src/daemon/protocol.js';
import { RequestError } from '../../src/daemon/server.js';
import { BudgetBook, configBudgets, UsageService } from '../../src/daemon/usage-service.js';
import { mayChangeState } from '../../src/daemon/access.js';
import type { PeerCred } from '../../src/native/index.js';
import { counterName } from '../../src/nftables/ruleset.js';
import type { UplinkState } from '../../src/uplink/state.js';
import { recordingLog } from '../support/fakes.js';
import { exampleConfig, labStates } from '../support/fixture.js';

const MB = 1_000_000;
/** Tuesday 10 March 2026, 12:00:05 UTC (13:00:05 at UTC+1, the zone of these tests): not on a minute. */
const T0 = Date.UTC(2026, 2, 10, 12, 0, 5);
const PLUS1 = (): number => 60;
/** Local midnight of 1 March (UTC+1): the monthly budgets' period start. */
const MARCH = Date.UTC(2026, 1, 28, 23, 0, 0);

const config = exampleConfig();
const lab = labStates(config).states;
const WIFI = lab.find((u) => u.spec.name === 'wifi')!;
const CELL = lab.find((u) => u.spec.name === 'cellular')!;

/** App keys the daemon gave (src/daemon/apps.ts: AppKeys). */
const FIREFOX = 7; // uid 1000's
const FIREFOX_1001 = 8; // uid 1001's app of the same name
const RESOLVED = 9; // a system service
/** A plain cgroup of uid 1000's (no app key): its program is /usr/bin/curl. */
const CURL_CGROUP = 4242n;

const USER: PeerCred = { pid: 0, uid: 1000, gid: 1000 }; // pid 0: no /proc entry, no supplementary groups
const OTHER: PeerCred = { pid: 0, uid: 1001, gid: 1001 };
const ROOT: PeerCred = { pid: 0, uid: 0, gid: 0 };

const identitySources: IdentitySources = {
  keys: {
    entries: () => [
      { key: FIREFOX, uid: 1000, name: 'firefox' }, { key: FIREFOX_1001, uid: 1001, name: 'firefox' },
      { key: RESOLVED, uid: null, name: 'systemd-resolved' },
    ],
    describe: (key) => [...identitySources.keys.entries()].find((k) => k.key === key) ?? null,
  },
  apps: {
    cgroupById: (id) => (id === CURL_CGROUP ? { rel: 'user.slice/user-1000.slice/session-2.scope', uid: 1000 } : null),
    kindOfKey: (key) => (key === RESOLVED ? 'service' : key === FIREFOX || key === FIREFOX_1001 ? 'flatpak' : null),
    exeIn: (rel) => (rel === 'user.slice/user-1000.slice/session-2.scope' ? '/usr/bin/curl' : null),
  },
};

const FIREFOX_VIEW: UsageAppView = { key: 'app:1000/firefox', name: 'firefox', kind: 'flatpak', uid: 1000, exe: null };
const FIREFOX_1001_VIEW: UsageAppView = { key: 'app:1001/firefox', name: 'firefox', kind: 'flatpak', uid: 1001, exe: null };

type Dir = KernelUsageRow['dir'];
interface RowKey { app?: number; cgroup?: bigint; uid?: number; slot: number; dir: Dir; dest?: number }

/**
 * The programs' maps: usage rows that only grow (unless made anew), and the budgets' used
 * counters, which grow, as the kernel's do, for the keys the daemon gave a limit.
 */
class FakeUsageKernel implements UsageKernel {
  readonly rows = new Map<string, KernelUsageRow>();
  readonly used = new Map<string, bigint>();
  readonly writes: { limits: Map<string, bigint>; slots: number[] }[] = [];

  budgetUsed(): ReadonlyMap<string, bigint> {
    return new Map(this.used);
  }

  usage(): readonly KernelUsageRow[] {
    return [...this.rows.values()];
  }

  setBudgets(limits: ReadonlyMap<string, bigint>, slots: readonly number[]): void {
    this.writes.push({ limits: new Map(limits), slots: [...slots] });
  }

  /** The limits last written. */
  get limits(): ReadonlyMap<string, bigint> {
    return this.writes.at(-1)?.limits ?? new Map<string, bigint>();
  }

  /** Adds to a row (creating it), and to the budget counters that apply; returns the row. */
  count(k: RowKey, bytes: number, packets = 1): KernelUsageRow {
    const row: KernelUsageRow = { cgroup: k.cgroup ?? 0n, app: k.app ?? 0, uid: k.uid ?? 0, slot: k.slot, dir: k.dir, dest: k.dest ?? 0, bytes: 0n, packets: 0n };
    const id = `${row.cgroup}|${row.app}|${row.uid}|${row.slot}|${row.dir}|${row.dest}`;
    const had = this.rows.get(id) ?? row;
    const next = { ...had, bytes: had.bytes + BigInt(bytes), packets: had.packets + BigInt(packets) };
    this.rows.set(id, next);
    if (k.dir !== 'txDropped') {
      const last = this.writes.at(-1);
      for (const b of [`${row.app}:${row.slot}`, `any:${row.slot}`]) {
        if (last?.limits.has(b)) this.used.set(b, (this.used.get(b) ?? 0n) + BigInt(bytes));
      }
    }
    return next;
  }

  /** Replaces a row's values (its map was made anew). */
  set(k: RowKey, bytes: number, packets = 1): void {
    const id = `${k.cgroup ?? 0n}|${k.app ?? 0}|${k.uid ?? 0}|${k.slot}|${k.dir}|${k.dest ?? 0}`;
    this.rows.set(id, { cgroup: k.cgroup ?? 0n, app: k.app ?? 0, uid: k.uid ?? 0, slot: k.slot, dir: k.dir, dest: k.dest ?? 0, bytes: BigInt(bytes), packets: BigInt(packets) });
  }
}

type Counters = Map<string, { packets: number; bytes: number }>;

/** The nftables table's per-uplink counters: every packet through the device. */
function device(counters: Counters, uplink: string, dir: 'tx' | 'rx', bytes: number, packets = 1): void {
  const name = counterName(uplink, dir);
  const c = counters.get(name) ?? { packets: 0, bytes: 0 };
  counters.set(name, { packets: c.packets + packets, bytes: c.bytes + bytes });
}

interface Harness {
  readonly clock: { now: number };
  readonly counters: Counters;
  readonly history: UsageHistory;
  readonly budgets: BudgetDef[];
  readonly events: EventBody[];
  readonly log: ReturnType<typeof recordingLog>;
  uplinks: UplinkState[];
  kernel: FakeUsageKernel;
  service: AccountingService;
  kernelChanges: number;
  /** A program's traffic: its row and the device counter it passed (txDropped: tx too, it passed the counter before the drop). */
  traffic(k: RowKey, bytes: number, packets?: number): void;
  /** Time passes (2 s, the sample interval), and a sample. */
  sample(ms?: number): Promise<void>;
  query(cred: PeerCred, q?: Record<string, unknown>): Promise<UsageResult>;
  /** The daemon restarted: new programs' maps (all zero), the same nftables counters and history. */
  restart(): void;
  /** The budget events published, as "type id". */
  told(): string[];
}

function harness(opts: {
  history?: UsageHistory; port?: (h: UsageHistory) => HistoryPort; budgets?: BudgetDef[]; uplinks?: UplinkState[]; worldBudgets?: () => BudgetDef[];
} = {}): Harness {
  const clock = { now: T0 };
  const history = opts.history ?? UsageHistory.open(':memory:', { tzOffsetMinutes: PLUS1, now: () => clock.now });
  const port = opts.port ? opts.port(history) : history;
  const budgets = opts.budgets ?? [];
  const make = (): AccountingService => new AccountingService({
    kernel: h.kernel,
    uplinkCounters: () => Promise.resolve(new Map(h.counters)),
    history: port,
    world: () => ({ uplinks: h.uplinks, destinations: config.destinations, budgets: opts.worldBudgets?.() ?? h.budgets }),
    destinationIndex,
    identities: new KernelIdentities(identitySources),
    tz: PLUS1,
    publish: (e) => h.events.push(e),
    log: h.log,
    onKernelChange: () => { h.kernelChanges++; },
    now: () => clock.now,
    mayChangeState,
  });
  // The nftables table's counters exist from the start, as the daemon's table has them before the first sample.
  const uplinks = opts.uplinks ?? [WIFI, CELL];
  const counters: Counters = new Map(uplinks.flatMap((u) => (['tx', 'rx'] as const).map((d) => [counterName(u.spec.name, d), { packets: 0, bytes: 0 }])));
  const h: Harness = {
    clock, counters, history, budgets, events: [], log: recordingLog(), uplinks,
    kernel: new FakeUsageKernel(), service: undefined as unknown as AccountingService, kernelChanges: 0,
    traffic(k, bytes, packets = 1) {
      h.kernel.count(k, bytes, packets);
      const u = h.uplinks.find((x) => x.slot === k.slot)!;
      device(h.counters, u.spec.name, k.dir === 'rx' ? 'rx' : 'tx', bytes, packets);
    },
    async sample(ms = 2_000) {
      clock.now += ms;
      await h.service.sample();
    },
    query: (cred, q = {}) => h.service.query(usageQuerySchema.parse(q), cred),
    restart() {
      h.kernel = new FakeUsageKernel();
      h.service = make();
    },
    told: () => h.events.flatMap((e) => (e.type.startsWith('budget.') && 'id' in e ? [`${e.type} ${e.id}`] : [])),
  };
  h.service = make();
  return h;
}

const rowOf = (r: UsageResult, key: string) => r.rows.find((x) => x.key === key);
const bytesOf = (r: UsageResult, key: string): [number, number] | undefined => {
  const row = rowOf(r, key);
  return row ? [row.txBytes, row.rxBytes] : undefined;
};

/** A record for the history as an earlier run would have written it. */
const rec = (app: UsageAppView, uplink: string, bytes: number): UsageRecord => ({
  app, uplink, destination: 'internet', txBytes: bytes, rxBytes: 0, txPackets: 1, rxPackets: 0, seconds: 0,
  cost: uplink === 'cellular' ? (bytes / MB) * 0.02 : 0, currency: 'EUR',
});

/** uid 1000's firefox on cellular, monthly from the 1st, 10 MB, warns at 80 %. */
const ffBudget = (over: Partial<BudgetDef> = {}): BudgetDef => ({
  id: 'ff-cell', source: 'cli', uplink: 'cellular', app: 'firefox', uid: 1000, period: 'month', start: 1,
  limit: { bytes: 10 * MB }, warnAt: 0.8, block: true, owner: 1000, ...over,
});

describe('accounting: counter growth', () => {
  it('turns the growth between two samples into deltas per app, uplink and direction', async () => {
    const h = harness();
    device(h.counters, 'wifi', 'tx', 10_000, 10); // the device's traffic before this run
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000, 2);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'rx' }, 5_000, 4);
    await h.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 500, 1);
    await h.sample();
    const sampled = h.events.flatMap((e) => (e.type === 'usage.sampled' ? [e.uplinks.find((u) => u.uplink === 'wifi')] : []));
    assert.deepEqual(sampled, [{ uplink: 'wifi', txBytes: 1_000, rxBytes: 5_000 }, { uplink: 'wifi', txBytes: 500, rxBytes: 0 }]);
    const r = await h.query(ROOT);
    assert.deepEqual(r.rows.map((x) => x.key), ['app:1000/firefox']);
    const ff = rowOf(r, 'app:1000/firefox')!;
    assert.deepEqual([ff.txBytes, ff.rxBytes, ff.txPackets, ff.rxPackets], [1_500, 5_000, 3, 4]);
    assert.deepEqual(ff.app, FIREFOX_VIEW);
  });

  it('counts the whole value of a counter lower than the last reading (its map or table made anew)', async () => {
    const h = harness();
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 3_000);
    await h.sample();
    // Both made anew: the programs' entry holds 800, the device counter 900 (100 of no app's).
    h.kernel.set({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 800);
    h.counters.set(counterName('wifi', 'tx'), { packets: 2, bytes: 900 });
    await h.sample();
    const r = await h.query(ROOT);
    assert.deepEqual(bytesOf(r, 'app:1000/firefox'), [3_800, 0]);
    assert.deepEqual(bytesOf(r, 'unattributed'), [100, 0]);
  });

  it('counts the programs\' entries whole at the first reading; the uplink counters\' first reading is a baseline', async () => {
    const h = harness();
    // This run's maps already hold 2000 B; the device counter holds an earlier run's traffic too.
    h.kernel.count({ app: FIREFOX, slot: CELL.slot, dir: 'tx' }, 2_000);
    device(h.counters, 'cellular', 'tx', 50_000);
    device(h.counters, 'cellular', 'rx', 80_000);
    await h.service.sample();
    assert.equal(h.events.filter((e) => e.type === 'usage.sampled').length, 0, 'the device counters grew by nothing yet');
    const r = await h.query(ROOT);
    assert.deepEqual(r.rows.map((x) => [x.key, x.txBytes, x.rxBytes]), [['app:1000/firefox', 2_000, 0]]);
  });

  it('never counts twice across a restart: new maps, the uplink counters still high', async () => {
    const h = harness();
    device(h.counters, 'wifi', 'tx', 10_000);
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 4_000);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'rx' }, 6_000);
    device(h.counters, 'wifi', 'rx', 300); // no app's
    await h.sample();
    await h.service.stop();
    h.restart();
    await h.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    await h.sample();
    const r = await h.query(ROOT);
    assert.deepEqual(bytesOf(r, 'app:1000/firefox'), [5_000, 6_000]);
    assert.deepEqual(bytesOf(r, 'unattributed'), [0, 300]);
    assert.deepEqual(bytesOf(await h.query(ROOT, { by: 'uplink' }), 'wifi'), [5_000, 6_300]);
  });
  it('takes an uplink counter first seen after the start as a baseline (what a table left by a crash held is not counted)', async () => {
    const h = harness();
    h.counters.delete(counterName('wifi', 'rx'));
    await h.service.sample(); // the table has no wifi rx counter yet
    h.counters.set(counterName('wifi', 'rx'), { packets: 900, bytes: 9_000_000 });
    await h.sample();
    device(h.counters, 'wifi', 'rx', 700);
    await h.sample();
    assert.deepEqual(bytesOf(await h.query(ROOT), 'unattributed'), [0, 700]);
  });
});

describe('accounting: the unattributed rest', () => {
  it('is the device counters\' growth less the programs\' counts, tx also less what they dropped (which is no usage)', async () => {
    const h = harness();
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000, 2);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'rx' }, 5_000, 5);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'txDropped' }, 300, 1);
    device(h.counters, 'wifi', 'tx', 500, 1); // forwarded, kernel-made: no program's
    device(h.counters, 'wifi', 'rx', 200, 1);
    await h.sample();
    const e = h.events.find((x) => x.type === 'usage.sampled');
    assert.deepEqual(e?.type === 'usage.sampled' ? e.uplinks.find((u) => u.uplink === 'wifi') : null, { uplink: 'wifi', txBytes: 1_500, rxBytes: 5_200 });
    const r = await h.query(ROOT);
    const ff = rowOf(r, 'app:1000/firefox')!;
    assert.deepEqual([ff.txBytes, ff.rxBytes, ff.txPackets, ff.rxPackets], [1_000, 5_000, 2, 5]);
    const un = rowOf(r, 'unattributed')!;
    assert.deepEqual(un.app, UNATTRIBUTED_APP);
    // Packets: the device's, shared by bytes (4 tx packets × 500 / 1800 B).
    assert.deepEqual([un.txBytes, un.rxBytes, un.txPackets], [500, 200, 1]);
    assert.equal(r.totals.txBytes, 1_500);
  });

  it('carries a transient deficit to the next sample instead of going negative', async () => {
    const h = harness();
    await h.service.sample();
    // The programs counted 1000 B; the device counter shows only 900 of them yet.
    h.kernel.count({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    device(h.counters, 'wifi', 'tx', 900);
    await h.sample();
    assert.equal(rowOf(await h.query(ROOT), 'unattributed'), undefined);
    // Then the last 100, 1000 B more of the app's and 200 B of no app's.
    h.kernel.count({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    device(h.counters, 'wifi', 'tx', 1_300);
    await h.sample();
    const r = await h.query(ROOT);
    assert.deepEqual(bytesOf(r, 'unattributed'), [200, 0]);
    assert.deepEqual(bytesOf(r, 'app:1000/firefox'), [2_000, 0]);
    assert.deepEqual(bytesOf(await h.query(ROOT, { by: 'uplink' }), 'wifi'), [2_200, 0]);
    assert.deepEqual(h.log.lines.filter((l) => l.level === 'error'), []);
  });
});

describe('accounting: destinations, cost, connection time', () => {
  it('names the kernel\'s destination index after the destination (0, or an index no destination has: the Internet)', async () => {
    assert.deepEqual([...destinationIndex(config.destinations)], [['mms', 1], ['office', 2]]);
    const h = harness();
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx', dest: 0 }, 100);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx', dest: 2 }, 200);
    h.traffic({ app: FIREFOX, slot: CELL.slot, dir: 'rx', dest: 1 }, 300);
    h.traffic({ app: FIREFOX, slot: CELL.slot, dir: 'rx', dest: 9 }, 400);
    await h.sample();
    const r = await h.query(ROOT, { by: 'destination' });
    assert.deepEqual(r.rows.map((x) => [x.key, x.txBytes, x.rxBytes]), [['internet', 100, 400], ['mms', 0, 300], ['office', 200, 0]]);
  });

  it('prices every record at its uplink\'s price per MB', async () => {
    const h = harness();
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: CELL.slot, dir: 'tx' }, 500_000);
    h.traffic({ app: FIREFOX, slot: CELL.slot, dir: 'rx' }, 1_500_000);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'rx' }, 3 * MB);
    await h.sample();
    const byUplink = await h.query(ROOT, { by: 'uplink' });
    assert.deepEqual(rowOf(byUplink, 'cellular')?.cost, { EUR: 0.04 }); // 2 MB at 0.02 EUR
    assert.deepEqual(rowOf(byUplink, 'wifi')?.cost, { EUR: 0 });
    assert.deepEqual(byUplink.totals.cost, { EUR: 0.04 });
    assert.deepEqual(rowOf(await h.query(ROOT), 'app:1000/firefox')?.cost, { EUR: 0.04 });
  });

  it('charges an uplink priced per minute for the time it is up (seconds and cost)', async () => {
    const dialup: UplinkState = { ...CELL, spec: { ...CELL.spec, kind: 'dialup', cost: { perMB: 0, perMinute: 0.06, currency: 'EUR' } } };
    const h = harness({ uplinks: [WIFI, dialup] });
    await h.service.sample();
    await h.sample(30_000);
    await h.sample(30_000);
    h.uplinks = [WIFI, { ...dialup, status: 'down' }];
    await h.sample(30_000); // down: no time
    const r = await h.query(ROOT);
    const conn = rowOf(r, 'connection')!;
    assert.deepEqual([conn.seconds, conn.cost, conn.txBytes, conn.rxBytes], [60, { EUR: 0.06 }, 0, 0]);
    assert.equal(conn.app?.kind, 'connection');
    assert.equal(r.totals.seconds, 60);
  });
});

describe('accounting: flushing to the history', () => {
  it('keeps what it sampled pending: the history has it after a query (or a stop), not before', async () => {
    const h = harness();
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_234);
    await h.sample();
    const direct = () => h.history.query({ by: 'app', sinceMs: T0 - 60_000, untilMs: h.clock.now + 60_000 }).rows.map((x) => [x.key, x.txBytes]);
    assert.deepEqual(direct(), []);
    assert.deepEqual(bytesOf(await h.query(ROOT), 'app:1000/firefox'), [1_234, 0]);
    assert.deepEqual(direct(), [['app:1000/firefox', 1_234]]);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    await h.sample();
    assert.deepEqual(direct(), [['app:1000/firefox', 1_234]]);
    await h.service.stop(); // samples once more and flushes
    assert.deepEqual(direct(), [['app:1000/firefox', 2_234]]);
  });

  it('keeps the pending for the next flush when the history cannot write it', async () => {
    const h = harness({ port: failingWrites((call) => call === 1) });
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    await h.sample();
    const failed = await h.query(ROOT);
    assert.deepEqual(failed.rows, []);
    assert.deepEqual(h.log.lines.filter((l) => l.level === 'error').map((l) => [l.msg, l.fields?.['error']]),
      [['cannot write the usage history; kept for the next flush', 'disk I/O error']]);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 500);
    await h.sample();
    assert.deepEqual(bytesOf(await h.query(ROOT), 'app:1000/firefox'), [1_500, 0]);
    assert.deepEqual(bytesOf(await h.query(ROOT), 'app:1000/firefox'), [1_500, 0], 'written once');
  });
  it('writes a minute once when a later minute of the same flush fails', async () => {
    // The second minute's write of the first flush fails.
    const h = harness({ port: failingWrites((call) => call === 2) });
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    await h.sample();
    h.clock.now += 60_000; // the next minute
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 2_000);
    await h.sample();
    await h.query(ROOT); // flushes: the first minute written, the second not
    assert.deepEqual(bytesOf(await h.query(ROOT), 'app:1000/firefox'), [3_000, 0], 'each minute once');
  });
});

/** The real history, whose record() throws at the calls `fails` picks (1: the first). */
function failingWrites(fails: (call: number) => boolean): (real: UsageHistory) => HistoryPort {
  let calls = 0;
  return (real) => ({
    record: (...a: Parameters<UsageHistory['record']>) => {
      if (fails(++calls)) throw new Error('disk I/O error');
      real.record(...a);
    },
    marks: () => real.marks(), query: (q) => real.query(q), sum: (f) => real.sum(f), budgets: () => real.budgets(),
    putBudget: (b) => { real.putBudget(b); }, deleteBudget: (id) => real.deleteBudget(id),
  });
}

describe('accounting: who sees what', () => {
  async function traffic(): Promise<Harness> {
    const h = harness();
    await h.service.sample();
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'tx' }, 1_000);
    h.traffic({ app: FIREFOX, slot: WIFI.slot, dir: 'rx' }, 2_000);
    h.traffic({ app: FIREFOX_1001, slot: CELL.slot, dir: 'tx' }, 3_000);
    h.traffic({ app: FIREFOX_1001, slot: CELL.slot, dir: 'rx' }, 4_000);
    h.traffic({ cgroup: CURL_CGROUP, uid: 1000, slot: WIFI.slot, dir: 'tx' }, 500);
    h.traffic({ app: RESOLVED, slot: WIFI.slot, dir: 'rx' }, 60);
    device(h.counters, 'cellular', 'rx', 70);
    await h.sample();
    return h;
  }

  const sumOf = (r: UsageResult) => r.rows.reduce((s, x) => [s[0]! + x.txBytes, s[1]! + x.rxBytes], [0, 0]);

  it('shows a user (not root, not in the waymark group) only their own apps', async () => {
    const h = await traffic();
    const mine = await h.query(USER);
    assert.equal(mine.scope, 'own');
    assert.deepEqual(mine.rows.map((x) => [x.key, x.txBytes, x.rxBytes]), [['app:1000/firefox', 1_000, 2_000], ['proc:1000:/usr/bin/curl', 500, 0]]);
    assert.equal(rowOf(mine, 'proc:1000:/usr/bin/curl')?.name, 'curl');
    assert.deepEqual([mine.totals.txBytes, mine.totals.rxBytes], sumOf(mine));
    const theirs = await h.query(OTHER);
    assert.deepEqual(theirs.rows.map((x) => x.app), [FIREFOX_1001_VIEW]);
  });

  it('shows root every app, the system\'s and the unattributed rest; the totals are the rows\' sum', async () => {
    const h = await traffic();
    const all = await h.query(ROOT);
    assert.equal(all.scope, 'all');
    assert.deepEqual(all.rows.map((x) => x.key).sort(),
      ['app:1000/firefox', 'app:1001/firefox', 'app:system/systemd-resolved', 'proc:1000:/usr/bin/curl', 'unattributed']);
    assert.deepEqual([all.totals.txBytes, all.totals.rxBytes], sumOf(all));
    assert.deepEqual([all.totals.txBytes, all.totals.rxBytes], [4_500, 6_130]);
  });
});

describe('accounting: budgets', () => {
  /** A history holding uid 1000's firefox on cellular: 4 MB last period, 3 MB this one; 2 MB of uid 1001's. */
  function earlier(): UsageHistory {
    const history = UsageHistory.open(':memory:', { tzOffsetMinutes: PLUS1, now: () => T0 });
    history.record(Date.UTC(2026, 1, 20, 10), [rec(FIREFOX_VIEW, 'cellular', 4 * MB)]);
    history.record(Date.UTC(2026, 2, 5, 10), [rec(FIREFOX_VIEW, 'cellular', 3 * MB), rec(FIREFOX_1001_VIEW, 'cellular', 2 * MB)]);
    return history;
  }

  const cellTx = { app: FIREFOX, slot: CELL.slot, dir: 'tx' } as const;

  it('starts an app budget from the period\'s use in the history and writes the kernel limit K + (B − P)', async () => {
    const h = harness({ history: earlier(), budgets: [ffBudget()] });
    await h.service.sample();
    assert.deepEqual(h.kernel.writes, [{ limits: new Map([[`${FIREFOX}:${CELL.slot}`, 7_000_000n]]), slots: [] }]);
    assert.deepEqual([...h.service.kernelBudgets.budgeted], [FIREFOX]);
    const [v] = await h.service.list(USER);
    assert.deepEqual([v?.usedBytes, v?.limitBytes, v?.remainingBytes, v?.state], [3 * MB, 10 * MB, 7 * MB, 'ok']);
    assert.deepEqual(v?.usedCost, { EUR: 0.06 });
    assert.equal(v?.periodStart, new Date(MARCH).toISOString());
    // 2 MB more; the kernel's counter says 100 kB more than the programs' rows (K 2.1 MB, P 5 MB).
    h.traffic(cellTx, 2 * MB);
    h.kernel.used.set(`${FIREFOX}:${CELL.slot}`, 2_100_000n);
    await h.sample();
    assert.equal(h.kernel.writes.length, 2);
    assert.deepEqual(h.kernel.limits, new Map([[`${FIREFOX}:${CELL.slot}`, 7_100_000n]]));
    // Nothing moved: nothing rewritten.
    await h.sample();
    assert.equal(h.kernel.writes.length, 2);
    // K and P grow alike: the limit stays.
    h.traffic(cellTx, MB);
    await h.sample();
    assert.equal(h.kernel.writes.length, 2);
    assert.equal((await h.service.list(USER))[0]?.usedBytes, 6 * MB);
  });

  it('warns, then says exhausted, each once; the exhausted uplink is blocked for that app only', async () => {
    const h = harness({ budgets: [ffBudget()] });
    await h.service.sample();
    assert.equal(h.kernelChanges, 1, 'firefox is budgeted now');
    h.traffic(cellTx, 8_500_000);
    await h.sample();
    assert.deepEqual(h.told(), ['budget.warning ff-cell']);
    h.traffic(cellTx, 500_000);
    await h.sample();
    assert.deepEqual(h.told(), ['budget.warning ff-cell']);
    h.traffic(cellTx, 1_500_000);
    await h.sample();
    assert.deepEqual(h.told(), ['budget.warning ff-cell', 'budget.exhausted ff-cell']);
    const exhausted = h.events.find((e) => e.type === 'budget.exhausted');
    assert.deepEqual(exhausted, {
      type: 'budget.exhausted', id: 'ff-cell', uplink: 'cellular', app: 'firefox', uid: 1000, usedBytes: 10_500_000, limitBytes: 10 * MB,
      blocked: true, periodEnd: new Date(Date.UTC(2026, 2, 31, 23, 0, 0)).toISOString(), // 1 April, local midnight (UTC+1 throughout)
    });
    assert.deepEqual([...h.service.kernelBudgets.blocked], [[FIREFOX, [CELL.slot]]]);
    assert.deepEqual(h.service.kernelBudgets.blockedSlots, []);
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), ['cellular']);
    assert.deepEqual(h.service.blockedUplinks(1001, 'firefox'), []);
    assert.equal(h.kernelChanges, 2);
    // Nothing left: the kernel's limit is its counter as read.
    assert.deepEqual(h.kernel.limits, new Map([[`${FIREFOX}:${CELL.slot}`, 10_500_000n]]));
    // What was in flight arrives: no more announcements.
    h.traffic(cellTx, 50_000);
    await h.sample();
    assert.equal(h.told().length, 2);
    assert.equal((await h.service.list(USER))[0]?.state, 'exhausted');
  });

  it('says the warning first when a sample goes past the threshold and the limit at once', async () => {
    const h = harness({ history: earlier(), budgets: [ffBudget()] });
    await h.service.sample();
    h.traffic(cellTx, 8 * MB);
    await h.sample();
    assert.deepEqual(h.told(), ['budget.warning ff-cell', 'budget.exhausted ff-cell']);
  });

  it('restores the uplink when the budget is raised', async () => {
    const h = harness({ budgets: [ffBudget()] });
    await h.service.sample();
    h.traffic(cellTx, 10_500_000);
    await h.sample();
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), ['cellular']);
    h.budgets[0] = ffBudget({ limit: { bytes: 20 * MB } });
    await h.service.changed();
    assert.deepEqual(h.told(), ['budget.warning ff-cell', 'budget.exhausted ff-cell', 'budget.restored ff-cell']);
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), []);
    assert.deepEqual([...h.service.kernelBudgets.blocked], []);
    assert.deepEqual(h.kernel.limits, new Map([[`${FIREFOX}:${CELL.slot}`, 20_000_000n]])); // K 10.5 MB + (20 − 10.5) MB
  });

  it('restarts the count at a reset: restored, unblocked, and warned again when the new count gets there', async () => {
    const h = harness({ history: earlier(), budgets: [ffBudget()] });
    await h.service.sample();
    h.traffic(cellTx, 7_500_000);
    await h.sample();
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), ['cellular']);
    h.clock.now += 1_000;
    const resetAt = h.clock.now;
    await h.service.reset(h.budgets[0]!);
    const [v] = await h.service.list(USER);
    assert.deepEqual([v?.usedBytes, v?.state, v?.resetAt], [0, 'ok', new Date(resetAt).toISOString()]);
    assert.deepEqual(h.told(), ['budget.warning ff-cell', 'budget.exhausted ff-cell', 'budget.restored ff-cell']);
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), []);
    assert.deepEqual(h.kernel.limits, new Map([[`${FIREFOX}:${CELL.slot}`, 7_500_000n + 10_000_000n]]));
    h.traffic(cellTx, 8 * MB);
    await h.sample();
    assert.deepEqual(h.told().slice(3), ['budget.warning ff-cell']);
  });

  it('restores an exhausted budget at its next period, whose count starts at 0', async () => {
    const h = harness({ budgets: [ffBudget()] });
    await h.service.sample();
    h.traffic(cellTx, 10_500_000);
    await h.sample();
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), ['cellular']);
    h.clock.now = Date.UTC(2026, 2, 31, 23, 0, 1); // 1 April, 00:00:01 local
    await h.sample(0);
    assert.deepEqual(h.told(), ['budget.warning ff-cell', 'budget.exhausted ff-cell', 'budget.restored ff-cell']);
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), []);
    const [v] = await h.service.list(USER);
    assert.deepEqual([v?.usedBytes, v?.state, v?.periodStart], [0, 'ok', new Date(Date.UTC(2026, 2, 31, 23)).toISOString()]);
    h.traffic(cellTx, 8 * MB);
    await h.sample();
    assert.deepEqual(h.told().slice(3), ['budget.warning ff-cell'], 'the new period warns again');
  });

  it('keeps its announcements and resets across a restart: nothing said twice', async () => {
    const h = harness({ budgets: [ffBudget()] });
    await h.service.sample();
    h.traffic(cellTx, 8_500_000);
    await h.sample();
    await h.service.stop();
    h.restart();
    await h.sample();
    const [v] = await h.service.list(USER);
    assert.deepEqual([v?.usedBytes, v?.state], [8_500_000, 'warning']);
    h.traffic(cellTx, 2 * MB);
    await h.sample();
    assert.deepEqual(h.told(), ['budget.warning ff-cell', 'budget.exhausted ff-cell']);
    // Reset, then a restart in a later minute: the count is still from the reset.
    h.clock.now += 1_000;
    const resetAt = h.clock.now;
    await h.service.reset(h.budgets[0]!);
    h.clock.now += 60_000;
    h.traffic(cellTx, MB);
    await h.sample();
    await h.service.stop();
    h.restart();
    await h.sample();
    const [w] = await h.service.list(USER);
    assert.deepEqual([w?.usedBytes, w?.state, w?.resetAt], [MB, 'ok', new Date(resetAt).toISOString()]);
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), []);
  });

  it('keeps what was counted after a reset in the reset\'s own minute across a restart, and not what came before it', async () => {
    const h = harness({ budgets: [ffBudget()] });
    await h.service.sample();
    h.traffic(cellTx, 2 * MB);
    await h.sample(); // before the reset, in its minute
    h.clock.now += 1_000;
    await h.service.reset(h.budgets[0]!);
    assert.equal((await h.service.list(USER))[0]?.usedBytes, 0);
    h.traffic(cellTx, MB);
    await h.sample(); // the same minute as the reset
    assert.equal((await h.service.list(USER))[0]?.usedBytes, MB);
    await h.service.stop();
    h.restart();
    await h.sample();
    assert.equal((await h.service.list(USER))[0]?.usedBytes, MB, 'after the restart');
  });

  it('counts every app and the unattributed rest against an uplink-wide budget, under the key any:<slot>', async () => {
    const history = UsageHistory.open(':memory:', { tzOffsetMinutes: PLUS1, now: () => T0 });
    history.record(Date.UTC(2026, 2, 5, 10), [rec(UNATTRIBUTED_APP, 'cellular', MB)]);
    // 0.10 EUR at 0.02 EUR/MB: 5 MB.
    const cap: BudgetDef = { ...ffBudget(), id: 'cell-cap', app: null, uid: null, limit: { money: 0.1, currency: 'EUR' }, owner: 0 };
    const h = harness({ history, budgets: [cap] });
    await h.service.sample();
    assert.deepEqual(h.kernel.writes, [{ limits: new Map([[`any:${CELL.slot}`, 4_000_000n]]), slots: [CELL.slot] }]);
    assert.deepEqual([...h.service.kernelBudgets.budgeted], []);
    h.traffic({ app: FIREFOX, slot: CELL.slot, dir: 'tx' }, 2 * MB);
    h.traffic({ app: FIREFOX_1001, slot: CELL.slot, dir: 'rx' }, MB);
    device(h.counters, 'cellular', 'rx', 1_500_000); // no app's
    await h.sample();
    const [v] = await h.service.list(OTHER); // every user sees an uplink's budget
    assert.deepEqual([v?.id, v?.usedBytes, v?.limitBytes, v?.state], ['cell-cap', 5_500_000, 5 * MB, 'exhausted']);
    assert.deepEqual(h.told(), ['budget.warning cell-cap', 'budget.exhausted cell-cap']);
    const e = h.events.find((x) => x.type === 'budget.exhausted');
    assert.ok(e?.type === 'budget.exhausted' && e.app === null && e.uid === null && e.blocked);
    assert.deepEqual(h.service.kernelBudgets.blockedSlots, [CELL.slot]);
    assert.deepEqual(h.service.blockedUplinks(1000, 'firefox'), ['cellular']);
    assert.deepEqual(h.service.blockedUplinks(4321, 'anything'), ['cellular']);
    assert.deepEqual(h.kernel.limits, new Map([[`any:${CELL.slot}`, 3_000_000n]])); // K (the programs' 3 MB) + nothing left
  });
});

describe('usage service: who may set, remove and reset budgets', () => {
  const NO_CTX = {} as CallContext; // these methods do not use the connection
  const CONFIG_CAP: ConfigBudget = { id: 'cell-cap', uplink: 'cellular', uid: null, period: 'month', start: 1, limit: { bytes: 500 * MB }, warnAt: 0.8, block: true };

  function service(): { usage: UsageService; book: BudgetBook; h: Harness } {
    const history = UsageHistory.open(':memory:', { tzOffsetMinutes: PLUS1, now: () => T0 });
    const book = new BudgetBook(history);
    const budgets = (): BudgetDef[] => book.all(configBudgets([CONFIG_CAP]));
    const h = harness({ history, worldBudgets: budgets });
    const usage = new UsageService({ accounting: h.service, book, world: () => ({ uplinks: h.uplinks, budgets: budgets() }) });
    return { usage, book, h };
  }

  const set = (u: UsageService, p: Record<string, unknown>, cred: PeerCred) => u.handlers()['budget.set'](budgetSetSchema.parse(p), cred, NO_CTX);
  const rm = (u: UsageService, id: string, cred: PeerCred) => u.handlers()['budget.rm']({ id }, cred, NO_CTX);
  const refused = (code: string, message: RegExp) => (e: unknown): boolean => {
    assert.ok(e instanceof RequestError, String(e));
    assert.equal(e.wire.code, code);
    assert.match(e.wire.message, message);
    return true;
  };

  it('lets a user set a budget on their own app: it limits their uid\'s app', async () => {
    const { usage, book, h } = service();
    const v = await set(usage, { uplink: 'cellular', app: 'firefox', limit: { bytes: 10 * MB } }, USER);
    assert.deepEqual([v.id, v.source, v.app, v.uid, v.limitBytes, v.state], ['b-1', 'cli', 'firefox', 1000, 10 * MB, 'ok']);
    assert.deepEqual([book.get('b-1')?.owner, book.get('b-1')?.spec.uid], [1000, 1000]);
    // Its track is uid 1000's firefox only (and the config's uplink cap is there too).
    assert.deepEqual(h.kernel.limits, new Map([[`any:${CELL.slot}`, 500_000_000n], [`${FIREFOX}:${CELL.slot}`, 10_000_000n]]));
  });

  it('gives a new budget an id no budget has, also after others were removed', async () => {
    const { usage } = service();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await set(usage, { uplink: 'cellular', app: 'firefox', limit: { bytes: (i + 1) * MB } }, USER)).id);
    await rm(usage, ids[0]!, USER);
    const next = await set(usage, { uplink: 'cellular', app: 'firefox', limit: { bytes: 9 * MB } }, USER);
    assert.ok(!ids.slice(1).includes(next.id), `${next.id} is new`);
    const all = await usage.handlers()['budget.list']({}, USER, NO_CTX);
    assert.deepEqual(all.budgets.filter((b) => b.source === 'cli').map((b) => b.limitBytes).sort((a, b) => (a ?? 0) - (b ?? 0)), [2 * MB, 3 * MB, 9 * MB]);
  });

  it('refuses a whole uplink\'s budget to a user (EPERM); root may', async () => {
    const { usage } = service();
    await assert.rejects(set(usage, { uplink: 'cellular', limit: { bytes: 10 * MB } }, USER), refused('EPERM', /whole uplink/));
    const v = await set(usage, { uplink: 'wifi', limit: { bytes: 10 * MB } }, ROOT);
    assert.deepEqual([v.app, v.uid], [null, null]);
  });

  it('refuses to remove someone else\'s budget; its owner may', async () => {
    const { usage, book } = service();
    const v = await set(usage, { uplink: 'cellular', app: 'firefox', limit: { bytes: 10 * MB } }, USER);
    await assert.rejects(rm(usage, v.id, OTHER), refused('EPERM', /not yours to remove/));
    assert.ok(book.get(v.id));
    assert.deepEqual(await rm(usage, v.id, USER), { id: v.id });
    assert.equal(book.get(v.id), undefined);
  });

  it('refuses to remove a budget of the config file, even to root', async () => {
    const { usage } = service();
    await assert.rejects(rm(usage, 'cell-cap', ROOT), refused('EPERM', /config file/));
    await assert.rejects(rm(usage, 'cell-cap', USER), refused('EPERM', /not yours/));
  });

  it('refuses a money limit in a currency other than the uplink\'s (EINVAL)', async () => {
    const { usage } = service();
    await assert.rejects(set(usage, { uplink: 'cellular', app: 'firefox', limit: { money: 5, currency: 'USD' } }, USER), refused('EINVAL', /priced in EUR, not USD/));
    await assert.rejects(set(usage, { uplink: 'wifi', app: 'firefox', limit: { money: 5, currency: 'EUR' } }, USER), refused('EINVAL', /costs nothing per MB/));
  });
});
