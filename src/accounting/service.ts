/**
 * The daemon's accounting: what every app sent and received over every uplink (and to which
 * destination), what it cost, kept in the history, and the budgets the kernel enforces.
 *
 * The kernel counts (native/bpf/waymark.bpf.c: wm_usage, per app key x uplink slot x direction x
 * destination; the nftables table's per-uplink counters for the device's totals). This service
 * only reads: every `sampleMs` (and before a query) it reads the budgets' used counters, then the
 * programs' counters, then the uplinks' (that order keeps the unattributed rest from going
 * negative, src/accounting/sample.ts), turns their growth into deltas per app identity, uplink and
 * destination, prices them, and keeps them in memory until the flush (every `flushMs`, on stop,
 * before a query), which writes them to the history in one transaction.
 *
 * Budgets. The kernel decides per packet (wm_budget_limit / wm_budget_used): a packet of a budgeted
 * app x uplink (or of a budgeted uplink) that finds `used >= limit` is dropped. This service keeps
 * the limit where the budget wants it: `limit = K + max(0, B - P)` with K the kernel's used counter
 * and P the period's use as accounted, both read at the same sample; between samples the kernel is
 * exact, so the overshoot is what was in flight, not a sampling interval. It also says so: a
 * warning at the threshold and the exhaustion (log, events, agents), once per period, and the
 * exhausted uplink is added to the app's denied uplinks so new connects fail at once (EPERM) and
 * the library's decisions route around it.
 */
import type { DestinationSpec } from '../destination/destination.js';
import { INTERNET } from '../destination/destination.js';
import { errorMessage } from '../errors.js';
import type { PeerCred } from '../native/index.js';
import { counterName } from '../nftables/ruleset.js';
import type { UplinkState } from '../uplink/state.js';
import type { BudgetChanged, EventBody } from '../daemon/events.js';
import type { Logger } from '../daemon/log.js';
import { budgetState, kernelLimit, limitBytes as limitInBytes, localOffset, notifiedIn, periodOf, transition, type TzOffset } from './budget.js';
import { addMoney, costOf } from './cost.js';
import type { UsageHistory, UsageRecord } from './history.js';
import { appKeyId, UNATTRIBUTED_APP } from './identity.js';
import { Growth, minuteOf, Unattributed } from './sample.js';
import {
  MB_BYTES,
  type BudgetLimit, type BudgetPeriod, type BudgetState, type BudgetView, type Money,
  type UsageAppView, type UsageCounts, type UsageQuery, type UsageResult,
} from './view.js';

/** One entry of the programs' counters (src/backstop/bpf.ts: AppMaps.usage). */
export interface KernelUsageRow {
  readonly cgroup: bigint;
  readonly app: number;
  readonly uid: number;
  readonly slot: number;
  readonly dir: 'tx' | 'rx' | 'txDropped';
  readonly dest: number;
  readonly bytes: bigint;
  readonly packets: bigint;
}

/** The kernel side of accounting (src/backstop/bpf.ts: usageKernelPort; null where the programs are not loaded). */
export interface UsageKernel {
  /** The budgets' used counters by budget key ("<app key>:<slot>", "any:<slot>"). Read first. */
  budgetUsed(): ReadonlyMap<string, bigint>;
  usage(): readonly KernelUsageRow[];
  /** Makes the kernel's budget limits exactly these (by budget key) and the uplink-wide budgets' slots these. */
  setBudgets(limits: ReadonlyMap<string, bigint>, slots: readonly number[]): void;
}

/** Who the kernel's keys are (src/daemon/apps.ts). */
export interface AppIdentities {
  /** The app of an app key (null: not a key the daemon gave). */
  ofKey(key: number): UsageAppView | null;
  /** Traffic of a cgroup without an app key: the cgroup's process's executable and the socket's uid. */
  ofCgroup(id: bigint, uid: number): UsageAppView;
  /** Every app key with its uid and name (budgets name apps). */
  keys(): Iterable<{ readonly key: number; readonly uid: number | null; readonly name: string }>;
}

/** The history as this service uses it. */
export type HistoryPort = Pick<UsageHistory, 'record' | 'marks' | 'query' | 'sum' | 'budgets' | 'putBudget' | 'deleteBudget'>;

/** A budget as this service runs it: from the config or the history's budgets. */
export interface BudgetDef {
  readonly id: string;
  readonly source: 'config' | 'cli';
  readonly uplink: string;
  /** An app's name; null: the whole uplink. */
  readonly app: string | null;
  /** The app's uid (null: every user's app of that name, each on its own). */
  readonly uid: number | null;
  readonly period: BudgetPeriod;
  readonly start: number;
  readonly limit: BudgetLimit;
  readonly warnAt: number;
  readonly block: boolean;
  /** Who set it (config: root). */
  readonly owner: number;
}

export interface AccountingDeps {
  readonly kernel: UsageKernel | null;
  /** The nftables table's named counters (src/nftables/nft.ts: readCounters). */
  readonly uplinkCounters: () => Promise<ReadonlyMap<string, { readonly packets: number; readonly bytes: number }>>;
  readonly history: HistoryPort;
  readonly world: () => {
    readonly uplinks: readonly UplinkState[];
    readonly destinations: readonly DestinationSpec[];
    readonly budgets: readonly BudgetDef[];
  };
  /** The destination index the kernel counts under (src/backstop/desired.ts: destinationIndex). */
  readonly destinationIndex: (destinations: readonly DestinationSpec[]) => ReadonlyMap<string, number>;
  readonly identities: AppIdentities;
  /** The local time zone's offset (budget periods and days are local; default: the process's). */
  readonly tz?: TzOffset;
  readonly publish: (e: EventBody) => void;
  readonly log: Logger;
  /** What the kernel's treatments must say changed (budgeted app keys, exhausted uplinks): the app service refreshes. */
  readonly onKernelChange: () => void;
  readonly now?: () => number;
  readonly mayChangeState: (cred: PeerCred) => boolean;
}

export const DEFAULT_SAMPLE_MS = 2_000;
export const DEFAULT_FLUSH_MS = 10_000;
/** Budget entries the kernel's maps hold (native/include/waymark_bpf.h: wm_budget_limit). */
export const MAX_KERNEL_BUDGETS = 1024;

const CONNECTION: UsageAppView = { key: 'connection', name: '(connection time)', kind: 'connection', uid: null, exe: null };
/** Destination of traffic whose destination the kernel did not see (forwarded, kernel-made). */
export const UNKNOWN_DESTINATION = '-';

/** A delta pending its flush (or one sample's share, for the budgets). */
interface Pending extends UsageRecord {
  /** The kernel's app key (0: none, or not an app's). */
  appKey: number;
}

/** One budget applied to one app key (or the whole uplink) on the uplink's slot. */
interface Track {
  readonly def: BudgetDef;
  /** The kernel's budget key ("<app key>:<slot>", "any:<slot>"). */
  readonly bkey: string;
  readonly appKey: number | 'any';
  readonly appName: string | null;
  readonly uid: number | null;
  readonly slot: number;
  periodStartMs: number;
  periodEndMs: number;
  countFromMs: number;
  used: number;
  cost: Money;
  state: BudgetState;
  limitBytes: number | null;
}

export interface KernelBudgets {
  /** App keys with a budget (their treatment gets WM_T_BUDGET). */
  readonly budgeted: ReadonlySet<number>;
  /** App key → uplink slots its exhausted budgets block. */
  readonly blocked: ReadonlyMap<number, readonly number[]>;
  /** Slots whose uplink-wide budget is exhausted (blocked for every app). */
  readonly blockedSlots: readonly number[];
}

export class AccountingService {
  private readonly bpf = new Growth(false);
  private readonly nft = new Growth(true);
  private readonly rest = new Unattributed();
  private pending = new Map<number, Map<string, Pending>>();
  private tracks = new Map<string, Track>();
  private lastSampleMs: number;
  private chain: Promise<unknown> = Promise.resolve();
  private timers: NodeJS.Timeout[] = [];
  private kernelView: KernelBudgets = { budgeted: new Set(), blocked: new Map(), blockedSlots: [] };
  /** Uplinks exhausted budgets block, per app ("uid/name") and for every app: for the decisions. */
  private blockedNames: { readonly byApp: ReadonlyMap<string, readonly string[]>; readonly all: readonly string[] } = { byApp: new Map(), all: [] };
  private limitsWritten = '';
  private overCapacity = false;
  /** The marks changed since they were last written (written with the next flush that succeeds). */
  private marksDirty = false;
  /** The history's small key-value part: budgets' announcement markers ("notified:…") and resets ("reset:<id>"). */
  private kv: Record<string, string>;
  private readonly now: () => number;
  private readonly tz: TzOffset;
  private stopped = false;

  constructor(private readonly deps: AccountingDeps) {
    this.now = deps.now ?? Date.now;
    this.tz = deps.tz ?? localOffset;
    this.lastSampleMs = this.now();
    this.kv = deps.history.marks();
  }

  /** The first reading (the uplink counters' baselines), then the timers. */
  async start(sampleMs = DEFAULT_SAMPLE_MS, flushMs = DEFAULT_FLUSH_MS): Promise<void> {
    await this.sample();
    const every = (ms: number, f: () => void): void => {
      const t = setInterval(f, ms);
      t.unref();
      this.timers.push(t);
    };
    every(sampleMs, () => void this.sample().catch((e: unknown) => this.deps.log.error('usage sample failed', { error: errorMessage(e) })));
    every(flushMs, () => void this.serial(() => this.flush()));
  }

  /** A last sample and flush (clean stop): nothing counted is lost. */
  async stop(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    await this.sample().catch((e: unknown) => this.deps.log.error('last usage sample failed', { error: errorMessage(e) }));
    await this.serial(() => this.flush());
    this.stopped = true;
  }

  /** What the kernel's treatments must carry for the budgets (src/backstop/desired.ts). */
  get kernelBudgets(): KernelBudgets {
    return this.kernelView;
  }

  /** Reads the kernel's counters once (serialised with every other reading and flush). */
  sample(): Promise<void> {
    return this.serial(() => this.readKernel());
  }

  private serial<T>(f: () => T | Promise<T>): Promise<T> {
    const next = this.chain.then(f, f);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async readKernel(): Promise<void> {
    if (this.stopped) return;
    const at = this.now();
    const w = this.deps.world();
    const k = this.deps.kernel;
    // The order matters (see the top of the file): budgets' counters, programs', uplinks'.
    const used = k?.budgetUsed() ?? new Map<string, bigint>();
    const rows = k?.usage() ?? [];
    const counters = await this.deps.uplinkCounters();
    const bySlot = new Map(w.uplinks.map((u) => [u.slot, u]));
    const destNames = new Map([...this.deps.destinationIndex(w.destinations)].map(([name, i]) => [i, name]));
    const sampleRecords: Pending[] = [];
    // Per uplink: what the programs counted (tx with what they dropped: it passed the device counter).
    const counted = new Map<string, { tx: number; rx: number; dropped: number }>();
    const seen = new Set<string>();
    for (const r of rows) {
      const id = `${r.cgroup}|${r.app}|${r.uid}|${r.slot}|${r.dir}|${r.dest}`;
      const bytes = Number(this.bpf.of(`${id}|b`, r.bytes, seen));
      const packets = Number(this.bpf.of(`${id}|p`, r.packets, seen));
      if (bytes === 0 && packets === 0) continue;
      const u = bySlot.get(r.slot);
      if (u === undefined) continue; // a slot no uplink has now: its counts go to the unattributed rest of none
      const c = counted.get(u.spec.name) ?? { tx: 0, rx: 0, dropped: 0 };
      if (r.dir === 'rx') c.rx += bytes;
      else c.tx += bytes;
      if (r.dir === 'txDropped') c.dropped += bytes;
      counted.set(u.spec.name, c);
      if (r.dir === 'txDropped') continue; // never left: not usage
      const app = r.app !== 0 ? this.deps.identities.ofKey(r.app) ?? this.deps.identities.ofCgroup(r.cgroup, r.uid)
        : this.deps.identities.ofCgroup(r.cgroup, r.uid);
      const destination = r.dest === 0 ? INTERNET : destNames.get(r.dest) ?? INTERNET;
      sampleRecords.push(this.delta(at, app, r.app, u, destination, r.dir === 'tx' ? { txBytes: bytes, txPackets: packets } : { rxBytes: bytes, rxPackets: packets }));
    }
    this.bpf.done(seen);
    // The uplinks' own counters: what no app was counted for is unattributed.
    const seenNft = new Set<string>();
    const events: { uplink: string; txBytes: number; rxBytes: number }[] = [];
    for (const u of w.uplinks) {
      const tx = counters.get(counterName(u.spec.name, 'tx'));
      const rx = counters.get(counterName(u.spec.name, 'rx'));
      const c = counted.get(u.spec.name) ?? { tx: 0, rx: 0, dropped: 0 };
      const dtx = tx ? Number(this.nft.of(`${u.spec.name}|tx`, BigInt(tx.bytes), seenNft)) : c.tx;
      const drx = rx ? Number(this.nft.of(`${u.spec.name}|rx`, BigInt(rx.bytes), seenNft)) : c.rx;
      const dtxp = tx ? Number(this.nft.of(`${u.spec.name}|txp`, BigInt(tx.packets), seenNft)) : 0;
      const drxp = rx ? Number(this.nft.of(`${u.spec.name}|rxp`, BigInt(rx.packets), seenNft)) : 0;
      const utx = tx ? this.rest.of(`${u.spec.name}|tx`, dtx, c.tx) : 0;
      const urx = rx ? this.rest.of(`${u.spec.name}|rx`, drx, c.rx) : 0;
      if (utx > 0 || urx > 0) {
        // Packets: the device's growth less the apps' is not kept per packet; estimated by share of bytes.
        const txPackets = dtx > 0 ? Math.round(dtxp * (utx / dtx)) : 0;
        const rxPackets = drx > 0 ? Math.round(drxp * (urx / drx)) : 0;
        sampleRecords.push(this.delta(at, UNATTRIBUTED_APP, 0, u, UNKNOWN_DESTINATION, { txBytes: utx, rxBytes: urx, txPackets, rxPackets }));
      }
      // Dial-up priced per minute: the time the uplink was up.
      if (u.spec.cost.perMinute > 0 && u.status === 'active') {
        const seconds = Math.max(0, (at - this.lastSampleMs) / 1000);
        if (seconds > 0) sampleRecords.push(this.delta(at, CONNECTION, 0, u, UNKNOWN_DESTINATION, { seconds }));
      }
      events.push({ uplink: u.spec.name, txBytes: Math.max(dtx - c.dropped, 0), rxBytes: drx });
    }
    this.nft.done(seenNft);
    const since = this.lastSampleMs;
    this.lastSampleMs = at;
    this.budgets(at, w, used, sampleRecords);
    if (events.some((e) => e.txBytes > 0 || e.rxBytes > 0)) {
      this.deps.publish({ type: 'usage.sampled', since: new Date(since).toISOString(), until: new Date(at).toISOString(), uplinks: events });
    }
  }

  /** One delta, priced at the uplink's price now, added to the pending minute. */
  private delta(at: number, app: UsageAppView, appKey: number, u: UplinkState, destination: string,
    d: { txBytes?: number; rxBytes?: number; txPackets?: number; rxPackets?: number; seconds?: number }): Pending {
    const minute = minuteOf(at);
    let m = this.pending.get(minute);
    if (m === undefined) this.pending.set(minute, (m = new Map<string, Pending>()));
    const id = `${app.key}|${u.spec.name}|${destination}`;
    let p = m.get(id);
    if (p === undefined) {
      p = { app, appKey, uplink: u.spec.name, destination, txBytes: 0, rxBytes: 0, txPackets: 0, rxPackets: 0, seconds: 0, cost: 0, currency: u.spec.cost.currency };
      m.set(id, p);
    }
    const cost = costOf((d.txBytes ?? 0) + (d.rxBytes ?? 0), d.seconds ?? 0, u.spec.cost).amount;
    p.txBytes += d.txBytes ?? 0;
    p.rxBytes += d.rxBytes ?? 0;
    p.txPackets += d.txPackets ?? 0;
    p.rxPackets += d.rxPackets ?? 0;
    p.seconds += d.seconds ?? 0;
    p.cost += cost;
    // The sample's own share, for the budgets (the pending entry sums the minute's samples).
    return { ...p, txBytes: d.txBytes ?? 0, rxBytes: d.rxBytes ?? 0, txPackets: d.txPackets ?? 0, rxPackets: d.rxPackets ?? 0, seconds: d.seconds ?? 0, cost };
  }

  /**
   * Writes what is pending to the history (kept for the next flush if that fails); with `marks`
   * (or marks not yet written), also the key-value part (the history replaces it whole: markers
   * of budgets gone are dropped).
   */
  private flush(marks = false): void {
    if (marks) this.marksDirty = true;
    if (this.pending.size === 0 && !this.marksDirty) return;
    const extra = this.marksDirty ? this.liveMarks() : undefined;
    const minutes = [...this.pending.keys()].sort((x, y) => x - y);
    try {
      if (minutes.length === 0) this.deps.history.record(this.now(), [], extra);
      minutes.forEach((minute, i) => {
        // Connection time is kept in fractions of a second between samples; the history takes whole ones.
        const records = [...(this.pending.get(minute) ?? new Map<string, Pending>()).values()].map((p): UsageRecord => ({ ...p, seconds: Math.round(p.seconds) }));
        this.deps.history.record(minute, records, i === minutes.length - 1 ? extra : undefined);
        // Each minute is one transaction: once written it is no longer pending (synchronous: nothing else runs meanwhile).
        this.pending.delete(minute);
      });
      this.marksDirty = false;
    } catch (e) {
      // What was not written stays pending; the next flush tries again.
      this.deps.log.error('cannot write the usage history; kept for the next flush', { error: errorMessage(e) });
    }
  }

  /** The markers of the budgets there are (those of removed ones go with the next write). */
  private liveMarks(): Record<string, string> {
    const ids = new Set(this.deps.world().budgets.map((d) => d.id));
    return Object.fromEntries(Object.entries(this.kv).filter(([k]) => {
      const [kind = '', rest = ''] = k.split(':');
      return (kind === 'notified' || kind === 'reset' || kind === 'resetbase') && ids.has(rest.split('|')[0] ?? '');
    }));
  }

  // ---------------------------------------------------------------------------------------
  // Budgets

  /** The budgets as they apply now: one track per budget and app key (or uplink). */
  private wantedTracks(at: number, w: ReturnType<AccountingDeps['world']>): Map<string, Omit<Track, 'used' | 'cost' | 'state'>> {
    const out = new Map<string, Omit<Track, 'used' | 'cost' | 'state'>>();
    const keys = [...this.deps.identities.keys()];
    for (const def of w.budgets) {
      const u = w.uplinks.find((x) => x.spec.name === def.uplink);
      if (u === undefined) continue;
      const { startMs, endMs } = periodOf(def, at, this.tz);
      const resetAt = this.resetOf(def.id);
      const countFromMs = resetAt !== null && resetAt >= startMs && resetAt < endMs ? resetAt : startMs;
      const limitBytes = limitInBytes(def.limit, u.spec.cost).bytes;
      const base = { def, slot: u.slot, periodStartMs: startMs, periodEndMs: endMs, countFromMs, limitBytes };
      if (def.app === null) {
        out.set(`${def.id}|any`, { ...base, bkey: `any:${u.slot}`, appKey: 'any', appName: null, uid: null });
        continue;
      }
      for (const k of keys) {
        if (k.name !== def.app || (def.uid !== null && k.uid !== def.uid)) continue;
        out.set(`${def.id}|${k.key}`, { ...base, bkey: `${k.key}:${u.slot}`, appKey: k.key, appName: k.name, uid: k.uid });
      }
    }
    return out;
  }

  private resetOf(id: string): number | null {
    const v = this.kv[`reset:${id}`];
    return v === undefined ? null : Number(v);
  }

  private budgets(at: number, w: ReturnType<AccountingDeps['world']>, used: ReadonlyMap<string, bigint>, sample: readonly Pending[]): void {
    const wanted = this.wantedTracks(at, w);
    const next = new Map<string, Track>();
    const fresh: string[] = [];
    for (const [id, t] of wanted) {
      const had = this.tracks.get(id);
      if (had && had.periodStartMs === t.periodStartMs && had.countFromMs === t.countFromMs && had.slot === t.slot) {
        for (const r of sample) if (matches(had, r)) {
          had.used += r.txBytes + r.rxBytes;
          had.cost = addMoney(had.cost, { [r.currency]: r.cost });
        }
        had.limitBytes = t.limitBytes;
        next.set(id, had);
      } else {
        fresh.push(id);
      }
    }
    if (fresh.length > 0) {
      // A new track's period so far, from the history: with what is pending written first.
      this.flush();
      for (const id of fresh) {
        const t = wanted.get(id);
        if (t === undefined) continue;
        const s = this.periodSoFar(id, t);
        // The state it had (a new period or a reset of an exhausted budget is announced as restored).
        next.set(id, { ...t, used: s.bytes, cost: { ...s.cost }, state: this.tracks.get(id)?.state ?? 'ok' });
      }
    }
    this.tracks = next;
    // States, and what to tell: once per period (or since a reset) and state (budget.ts: transition).
    let noted = false;
    for (const [id, t] of next) {
      const state = budgetState(t.used, t.limitBytes, t.def.warnAt);
      const mark = `notified:${id}`;
      const before = this.kv[mark] ?? null;
      const told = transition(t.state, state, t.countFromMs, before);
      t.state = state;
      // Past the threshold and the limit within one sample: the warning is still said, first.
      if (told.event === 'budget.exhausted' && notifiedIn(before, t.countFromMs) === 'ok') this.tell('budget.warning', t);
      if (told.notified !== null && told.notified !== this.kv[mark]) {
        this.kv[mark] = told.notified;
        noted = true;
      }
      if (told.event !== null) this.tell(told.event, t);
    }
    if (noted) this.flush(true);
    this.applyKernel(used);
  }

  /**
   * A track's use since it counts from, in the history: the app's own rows (its key), as the
   * samples count them after. A reset's minute: the history's buckets are minutes, so the sum
   * starts at the minute and leaves out what the minute held at the reset (kept then: `resetbase`).
   */
  private periodSoFar(id: string, t: Omit<Track, 'used' | 'cost' | 'state'>): { bytes: number; cost: Money } {
    const reset = t.countFromMs !== t.periodStartMs;
    const s = this.deps.history.sum({
      uplink: t.def.uplink, sinceMs: reset ? minuteOf(t.countFromMs) : t.countFromMs,
      ...(t.appName !== null ? { appKey: appKeyId(t.uid, t.appName) } : {}),
    });
    const base = reset ? Number(this.kv[`resetbase:${id}`] ?? 0) : 0;
    return { bytes: Math.max(0, s.bytes - base), cost: s.cost };
  }

  private tell(type: BudgetChanged['type'], t: Track): void {
    const blocked = type === 'budget.exhausted' && t.def.block;
    const e: BudgetChanged = {
      type, id: t.def.id, uplink: t.def.uplink, app: t.appName, uid: t.uid, usedBytes: t.used,
      limitBytes: t.limitBytes ?? 0, blocked, periodEnd: new Date(t.periodEndMs).toISOString(),
    };
    const fields = { budget: t.def.id, uplink: t.def.uplink, app: t.appName, uid: t.uid, used: t.used, limit: t.limitBytes };
    if (type === 'budget.restored') this.deps.log.info('budget has room again', fields);
    else this.deps.log.warn(type === 'budget.warning' ? 'budget nearly used' : blocked ? 'budget exhausted: blocked' : 'budget exhausted', fields);
    this.deps.publish(e);
  }

  /** The kernel's limits (limit = K + max(0, B - P)) and what the treatments must say. */
  private applyKernel(used: ReadonlyMap<string, bigint>): void {
    const limits = new Map<string, bigint>();
    const slots = new Set<number>();
    const budgeted = new Set<number>();
    const blocked = new Map<number, number[]>();
    const blockedSlots = new Set<number>();
    for (const t of this.tracks.values()) {
      if (!t.def.block || t.limitBytes === null) continue;
      const limit = kernelLimit({ kernelUsed: used.get(t.bkey) ?? 0n, limitBytes: t.limitBytes, periodUsed: t.used });
      // Two budgets on one key (an app's and a config's): the tighter one.
      const had = limits.get(t.bkey);
      limits.set(t.bkey, had === undefined || limit < had ? limit : had);
      if (t.appKey === 'any') slots.add(t.slot);
      else budgeted.add(t.appKey);
      if (t.state === 'exhausted') {
        if (t.appKey === 'any') blockedSlots.add(t.slot);
        else blocked.set(t.appKey, [...(blocked.get(t.appKey) ?? []), t.slot]);
      }
    }
    if (limits.size > MAX_KERNEL_BUDGETS) {
      // The kernel's map holds so many: the rest are counted and announced, not enforced.
      if (!this.overCapacity) this.deps.log.error('more budgets than the kernel holds: the rest only warn', { budgets: limits.size, max: MAX_KERNEL_BUDGETS });
      this.overCapacity = true;
      for (const k of [...limits.keys()].slice(MAX_KERNEL_BUDGETS)) limits.delete(k);
    } else {
      this.overCapacity = false;
    }
    const written = JSON.stringify([[...limits].map(([k, v]) => [k, v.toString()]), [...slots]]);
    if (written !== this.limitsWritten && this.deps.kernel) {
      try {
        this.deps.kernel.setBudgets(limits, [...slots].sort((a, b) => a - b));
        this.limitsWritten = written;
      } catch (e) {
        this.deps.log.error('cannot write the budgets to the kernel', { error: errorMessage(e) });
      }
    }
    const view: KernelBudgets = { budgeted, blocked, blockedSlots: [...blockedSlots].sort((a, b) => a - b) };
    if (!sameKernelBudgets(view, this.kernelView)) {
      this.kernelView = view;
      const byApp = new Map<string, string[]>();
      const all: string[] = [];
      for (const t of this.tracks.values()) {
        if (!t.def.block || t.state !== 'exhausted') continue;
        if (t.appKey === 'any') all.push(t.def.uplink);
        else byApp.set(`${t.uid ?? 'system'}/${t.appName ?? ''}`, [...(byApp.get(`${t.uid ?? 'system'}/${t.appName ?? ''}`) ?? []), t.def.uplink]);
      }
      for (const [k, v] of byApp) byApp.set(k, [...new Set([...v, ...all])]);
      this.blockedNames = { byApp, all: [...new Set(all)] };
      this.deps.onKernelChange();
    }
  }

  // ---------------------------------------------------------------------------------------
  // The control protocol's side

  /** `usage.query`: read the kernel, flush, and ask the history (the caller's apps only, unless it sees all). */
  async query(q: UsageQuery, cred: PeerCred): Promise<UsageResult> {
    await this.sample();
    await this.serial(() => this.flush());
    const nowMs = this.now();
    const all = this.deps.mayChangeState(cred);
    const untilMs = q.until !== undefined ? Date.parse(q.until) : nowMs;
    const sinceMs = q.since !== undefined ? Date.parse(q.since) : periodOf({ period: 'day', start: 1 }, nowMs, this.tz).startMs;
    const r = this.deps.history.query({
      by: q.by, sinceMs, untilMs,
      ...(q.resolution ? { resolution: q.resolution } : {}),
      ...(q.uplink ? { uplink: q.uplink } : {}), ...(q.app ? { app: q.app } : {}), ...(q.destination ? { destination: q.destination } : {}),
      ...(all ? {} : { uid: cred.uid }),
    });
    const totals: UsageCounts = { txBytes: 0, rxBytes: 0, txPackets: 0, rxPackets: 0, seconds: 0, cost: {} };
    for (const row of r.rows) {
      totals.txBytes += row.txBytes; totals.rxBytes += row.rxBytes; totals.txPackets += row.txPackets; totals.rxPackets += row.rxPackets;
      totals.seconds += row.seconds;
      totals.cost = addMoney(totals.cost, row.cost);
    }
    return {
      since: new Date(sinceMs).toISOString(), until: new Date(untilMs).toISOString(), resolution: r.resolution, by: q.by, mbBytes: MB_BYTES,
      rows: r.rows.map((row) => ({ ...row })), totals,
      series: r.series.map((b) => ({ at: new Date(b.atMs).toISOString(), txBytes: b.txBytes, rxBytes: b.rxBytes })),
      scope: all ? 'all' : 'own',
    };
  }

  /** The budgets the caller may see: its own apps', every uplink's and every user's (the app's own numbers). */
  async list(cred: PeerCred): Promise<BudgetView[]> {
    await this.sample();
    const all = this.deps.mayChangeState(cred);
    const w = this.deps.world();
    return w.budgets.filter((d) => all || d.uid === null || d.uid === cred.uid).map((d) => this.view(d, cred, all, w));
  }

  private view(d: BudgetDef, cred: PeerCred, all: boolean, w: ReturnType<AccountingDeps['world']>): BudgetView {
    const mine = [...this.tracks.values()].filter((t) => t.def.id === d.id && (all || t.appKey === 'any' || t.uid === cred.uid));
    // Several apps under one budget (any user's app of a name): the one nearest its limit.
    const t = mine.sort((a, b) => b.used - a.used)[0];
    const u = w.uplinks.find((x) => x.spec.name === d.uplink);
    const nowMs = this.now();
    const p = periodOf(d, nowMs, this.tz);
    const limitBytes = t?.limitBytes ?? (u ? limitInBytes(d.limit, u.spec.cost).bytes : null);
    const usedBytes = t?.used ?? 0;
    const reset = this.resetOf(d.id);
    return {
      id: d.id, source: d.source, uplink: d.uplink, app: d.app, uid: d.uid, period: d.period, start: d.start, limit: d.limit,
      warnAt: d.warnAt, block: d.block, periodStart: new Date(p.startMs).toISOString(), periodEnd: new Date(p.endMs).toISOString(),
      limitBytes, usedBytes, usedCost: { ...(t?.cost ?? {}) },
      remainingBytes: limitBytes === null ? null : Math.max(0, limitBytes - usedBytes),
      state: t?.state ?? budgetState(usedBytes, limitBytes, d.warnAt),
      resetAt: reset !== null && reset >= p.startMs && reset < p.endMs ? new Date(reset).toISOString() : null,
    };
  }

  /**
   * The uplinks an app may not use now, its budget (or the uplink's) being exhausted: the
   * decisions treat them as denied, so an app allowed another uplink moves there. On the path of
   * every first decision: a map lookup, no allocation.
   */
  blockedUplinks(uid: number, name: string): readonly string[] {
    const b = this.blockedNames;
    if (b.byApp.size === 0) return b.all;
    return b.byApp.get(`${uid}/${name}`) ?? b.all;
  }

  /** What is left of the tightest budget of an app (by uid and name) on an uplink, for the ask prompt (null: none). */
  budgetLeft(uid: number, name: string, uplink: string): number | null {
    let left: number | null = null;
    for (const t of this.tracks.values()) {
      if (t.def.uplink !== uplink || t.limitBytes === null) continue;
      if (t.appKey !== 'any' && (t.appName !== name || t.uid !== uid)) continue;
      const l = Math.max(0, t.limitBytes - t.used);
      left = left === null ? l : Math.min(left, l);
    }
    return left;
  }

  /** Takes effect at the sample this starts (the caller hears back after the kernel has it). */
  async changed(): Promise<void> {
    await this.sample();
  }

  /** `budget.reset`: the count starts afresh now, for the rest of the period. */
  async reset(d: BudgetDef): Promise<void> {
    await this.serial(() => {
      const at = this.now();
      this.flush();
      this.kv[`reset:${d.id}`] = String(at);
      // What the reset's minute already holds of each of the budget's tracks (see periodSoFar).
      for (const [id, t] of this.tracks) {
        if (t.def.id !== d.id) continue;
        const s = this.deps.history.sum({ uplink: t.def.uplink, sinceMs: minuteOf(at), ...(t.appName !== null ? { appKey: appKeyId(t.uid, t.appName) } : {}) });
        this.kv[`resetbase:${id}`] = String(s.bytes);
      }
      this.flush(true);
    });
    await this.sample();
  }
}

function matches(t: Track, r: Pending): boolean {
  if (r.uplink !== t.def.uplink) return false;
  return t.appKey === 'any' || r.appKey === t.appKey;
}

function sameKernelBudgets(a: KernelBudgets, b: KernelBudgets): boolean {
  const set = (s: ReadonlySet<number>): string => [...s].sort((x, y) => x - y).join(',');
  const map = (m: ReadonlyMap<number, readonly number[]>): string => [...m].sort((x, y) => x[0] - y[0]).map(([k, v]) => `${k}:${[...v].sort().join('.')}`).join(',');
  return set(a.budgeted) === set(b.budgeted) && map(a.blocked) === map(b.blocked) && a.blockedSlots.join(',') === b.blockedSlots.join(',');
}
