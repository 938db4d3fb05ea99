/** Fake adapters for the daemon's model (src/daemon/assemble.ts: Adapters), in memory. */
import { METHODS, type Handlers } from '../../src/daemon/protocol.js';
import type { CgroupEntry, KernelAppMaps, MapsPlan } from '../../src/backstop/desired.js';
import type { CgroupBackend } from '../../src/daemon/sessions.js';
import type { Clock, Timer } from '../../src/daemon/clock.js';
import type { Logger } from '../../src/daemon/log.js';
import type { NlMessage, AddrMsg, LinkMsg, RouteMsg, RuleMsg } from '../../src/netlink/message.js';
import type { NftKernel } from '../../src/nftables/nft.js';
import { updateScript, type RenderedTable } from '../../src/nftables/table.js';
import type { ApplyResult, KernelSnapshot } from '../../src/routing/kernel.js';
import { routeKey, ruleKey, type Plan } from '../../src/routing/reconcile.js';
import type { RoutingKernel, RpathSysctl } from '../../src/routing/reconciler.js';

/** Time that moves only when told; timers fire in order of their due time. */
export class FakeClock implements Clock {
  private t = Date.parse('2026-01-01T00:00:00Z');
  private timers: { at: number; fn: () => void; live: boolean }[] = [];

  now(): number {
    return this.t;
  }

  after(ms: number, fn: () => void): Timer {
    const timer = { at: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return { cancel: () => { timer.live = false; } };
  }

  /** Timers still to fire. */
  get pending(): number {
    return this.timers.filter((x) => x.live).length;
  }

  /** Moves time on by `ms`, firing every timer due meanwhile. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.live && x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      due.live = false;
      this.t = Math.max(this.t, due.at);
      due.fn();
    }
    this.timers = this.timers.filter((x) => x.live);
    this.t = end;
  }
}

/** The kernel's routing in memory: a plan applied changes what the next snapshot shows. */
export class FakeKernel implements RoutingKernel {
  links: LinkMsg[] = [];
  addrs: AddrMsg[] = [];
  routes: RouteMsg[] = [];
  rules: RuleMsg[] = [];
  snapshots = 0;
  readonly plans: Plan[] = [];
  private listener: ((lost: boolean, m?: NlMessage) => void) | undefined;
  closed = false;

  constructor(view: { links: readonly LinkMsg[]; addrs: readonly AddrMsg[]; routes: readonly RouteMsg[] }) {
    this.set(view);
  }

  /** Replaces links, addresses and main-table routes (our own tables and rules stay). */
  set(view: { links: readonly LinkMsg[]; addrs: readonly AddrMsg[]; routes: readonly RouteMsg[] }): void {
    this.links = [...view.links];
    this.addrs = [...view.addrs];
    this.routes = [...this.routes.filter((r) => r.table !== 254), ...view.routes];
  }

  snapshot(): Promise<KernelSnapshot> {
    this.snapshots++;
    return Promise.resolve({ links: [...this.links], addrs: [...this.addrs], routes: [...this.routes], rules: [...this.rules] });
  }

  apply(plan: Plan): Promise<ApplyResult> {
    this.plans.push(plan);
    const delRules = new Set(plan.delRules.map(ruleKey));
    const delRoutes = new Set(plan.delRoutes.map(routeKey));
    this.rules = [...this.rules.filter((r) => !delRules.has(ruleKey(r))), ...plan.addRules];
    this.routes = [...this.routes.filter((r) => !delRoutes.has(routeKey(r))), ...plan.addRoutes];
    const applied = plan.addRoutes.length + plan.addRules.length + plan.delRules.length + plan.delRoutes.length;
    return Promise.resolve({ applied, errors: [] });
  }

  watch(onChange: (lost: boolean, m?: NlMessage) => void): { close(): void } {
    this.listener = onChange;
    return { close: () => { this.listener = undefined; } };
  }

  /** A netlink event (a message, or none: events were lost). */
  event(m?: NlMessage): void {
    this.listener?.(m === undefined, m);
  }

  get watching(): boolean {
    return this.listener !== undefined;
  }

  close(): void {
    this.closed = true;
  }
}

export class FakeSysctl implements RpathSysctl {
  /** The devices set to 1, as last applied. */
  current: readonly string[] = [];
  restored = false;

  apply(ifnames: readonly string[]): Promise<string[]> {
    this.current = [...ifnames];
    return Promise.resolve([]);
  }

  restore(): Promise<string[]> {
    this.current = [];
    this.restored = true;
    return Promise.resolve([]);
  }
}

/** nft in memory: every load's script is kept; `fail` may refuse one. */
export class FakeNft implements NftKernel {
  readonly loads: string[] = [];
  readonly refused: string[] = [];
  deleted = false;
  fail: ((script: string) => string | undefined) | undefined;
  counters = new Map<string, { packets: number; bytes: number }>();

  load(t: RenderedTable): Promise<void> {
    const script = updateScript(t);
    const why = this.fail?.(script);
    if (why !== undefined) {
      this.refused.push(script);
      return Promise.reject(new Error(`nft -f -: ${why}`));
    }
    this.loads.push(script);
    return Promise.resolve();
  }

  /** The last script loaded. */
  get last(): string {
    return this.loads.at(-1) ?? '';
  }

  deleteTable(): Promise<void> {
    this.deleted = true;
    return Promise.resolve();
  }

  readCounters(): Promise<Map<string, { packets: number; bytes: number }>> {
    return Promise.resolve(this.counters);
  }
}

/** Session cgroups in memory; `gone` ones are no longer present. */
export class FakeCgroups implements CgroupBackend {
  readonly mount = '/sys/fs/cgroup';
  readonly made = new Set<string>();
  readonly marks = new Map<string, number | null>();

  create(id: string): Promise<string> {
    const rel = `waymark/${id}`;
    this.made.add(rel);
    return Promise.resolve(rel);
  }

  movePid(): Promise<void> {
    return Promise.resolve();
  }

  exists(cgroup: string): Promise<boolean> {
    return Promise.resolve(this.made.has(cgroup));
  }

  isEmpty(): Promise<boolean> {
    return Promise.resolve(true);
  }

  remove(cgroup: string): Promise<void> {
    this.made.delete(cgroup);
    return Promise.resolve();
  }

  watch(): { close(): void } {
    return { close: () => undefined };
  }

  setMark(cgroup: string, mark: number | null): Promise<void> {
    this.marks.set(cgroup, mark);
    return Promise.resolve();
  }

  present(cgroup: string): boolean {
    return this.made.has(cgroup);
  }
}

export interface LogLine { readonly level: string; readonly msg: string; readonly fields: Record<string, unknown> | undefined }

/** A logger that keeps its lines. */
export function recordingLog(): Logger & { readonly lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (msg: string, fields?: Record<string, unknown>): void => { lines.push({ level, msg, fields }); };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** The apps' kernel side: what was written, as the BPF maps would hold it. */
export class FakeAppMaps implements KernelAppMaps {
  readonly plans: MapsPlan[] = [];
  readonly cgroups = new Map<bigint, CgroupEntry>();

  apply(plan: MapsPlan): readonly string[] {
    this.plans.push(plan);
    for (const id of plan.delCgroups) this.cgroups.delete(id);
    for (const [id, e] of plan.setCgroups) this.cgroups.set(id, e);
    return [];
  }
}

/** What assemble() needs for the apps, with nothing on disk. */
export const fakeApps = (maps: KernelAppMaps = new FakeAppMaps()) => ({
  maps, kernelOff: null, cgroupDir: '/nonexistent', mount: '/nonexistent', cgroupRoot: '/', sessionsDir: '/nonexistent/waymark',
});

/**
 * Every control method answering an empty placeholder: tests of the transport (limits, events,
 * agents) spread it and give their own handlers for the methods they use. Not the real shapes.
 */
export function placeholderHandlers(): Handlers {
  return Object.fromEntries(Object.keys(METHODS).map((m) => [m, () => Promise.resolve({})])) as unknown as Handlers;
}
