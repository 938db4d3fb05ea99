/**
 * The routing reconciler: every change (a netlink event, a reload, a tampered rule, a learnt
 * address) schedules one pass, which takes a fresh snapshot, hands it to the world (which derives
 * the uplinks and tells the event bus), computes the desired state purely, and applies only the
 * difference; then the srcValidMark sysctls and whatever else follows the uplinks in the same
 * pass (the nftables table), whose errors count in the pass's result.
 */
import { withLearnedHosts } from '../destination/destination.js';
import { decodeRdnss, type NlMessage } from '../netlink/message.js';
import { systemClock, type Clock, type Timer } from '../daemon/clock.js';
import type { Logger } from '../daemon/log.js';
import type { StatusResult } from '../daemon/protocol.js';
import type { World } from '../daemon/world.js';
import { errorMessage } from '../errors.js';
import { describeRoute, describeRule } from './describe.js';
import { desiredState } from './desired.js';
import { fallbackUplinks } from './fallback.js';
import type { ApplyResult, KernelSnapshot } from './kernel.js';
import { isEmpty, plan, type Plan } from './reconcile.js';

/** Reconciles allowed per second before we back off (something may be fighting over our rules). */
export const RECONCILE_BURST = 25;

/** The kernel's routing as the reconciler needs it (src/routing/kernel.ts: KernelRouting + watchKernel). */
export interface RoutingKernel {
  snapshot(): Promise<KernelSnapshot>;
  apply(plan: Plan, ifname?: (index: number) => string | undefined): Promise<ApplyResult>;
  /** Calls back on every change, with `lost` when the kernel dropped events. */
  watch(onChange: (lost: boolean, m?: NlMessage) => void): { close(): void };
  close(): void;
}

/** The per-device sysctl the reconciler keeps (src/routing/sysctl.ts: SrcValidMark). */
export interface RpathSysctl {
  /** Makes exactly `ifnames` ours; returns the errors. */
  apply(ifnames: readonly string[]): Promise<string[]>;
  /** Writes back every value changed; returns the errors. */
  restore(): Promise<string[]>;
}

export type LastReconcile = StatusResult['lastReconcile'];

export interface RoutingOptions {
  readonly world: Pick<World, 'config' | 'observe' | 'settled' | 'noteLinkDns' | 'learned'>;
  readonly kernel: RoutingKernel;
  readonly sysctl: RpathSysctl;
  readonly log: Logger;
  readonly clock?: Clock;
  /** Kernel state that follows the uplinks in the same pass (the nftables table); each returns its errors. */
  readonly follow?: readonly (() => Promise<readonly string[]>)[];
}

export class RoutingReconciler {
  private watcher: { close(): void } | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private timer: Timer | undefined;
  private recent: number[] = [];
  private stopped = false;
  private last: LastReconcile = null;
  private readonly clock: Clock;

  constructor(private readonly opts: RoutingOptions) {
    this.clock = opts.clock ?? systemClock;
  }

  /** The last pass: when, how long, how many changes, which errors. */
  get lastReconcile(): LastReconcile {
    return this.last;
  }

  /** Reconciles on a new config (the reload awaits it), on link DNS and learnt addresses. */
  follow(world: Pick<World, 'subscribe'>): void {
    world.subscribe(['config'], () => this.reconcileNow());
    world.subscribe(['linkDns', 'learned'], () => this.schedule());
  }

  /** Watches the kernel and makes the first pass. */
  async start(): Promise<void> {
    // Subscribe before the first snapshot so no change can slip between the two.
    this.watcher = this.opts.kernel.watch((lost, m) => {
      if (lost) this.opts.log.warn('netlink events lost, resynchronising');
      const rdnss = m ? decodeRdnss(m) : undefined;
      if (rdnss) this.opts.world.noteLinkDns(rdnss);
      this.schedule();
    });
    await this.reconcileNow();
  }

  /**
   * Stops watching and waits for a pass in flight; unless `keep`, removes every rule and route
   * we own and restores the sysctls. Returns the kernel changes it made.
   */
  async stop(keep: boolean): Promise<number> {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
    this.watcher?.close();
    await this.running;
    if (keep) return 0;
    const snap = await this.opts.kernel.snapshot();
    const p = plan({ rules: [], routes: [] }, snap.rules, snap.routes);
    const res = await this.opts.kernel.apply(p);
    for (const e of res.errors) this.opts.log.error('cleanup step failed', { error: e.message });
    for (const e of await this.opts.sysctl.restore()) this.opts.log.error('cannot restore a kernel setting', { error: e });
    return res.applied;
  }

  close(): void {
    this.opts.kernel.close();
  }

  /** Coalesces bursts of events into one pass; backs off if passes run away. */
  schedule(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return;
    const now = this.clock.now();
    this.recent = this.recent.filter((t) => now - t < 1000);
    const delay = this.recent.length >= RECONCILE_BURST ? 1000 : 1;
    if (delay > 1) this.opts.log.warn('kernel state keeps changing under us; slowing down');
    this.timer = this.clock.after(delay, () => {
      this.timer = undefined;
      void this.reconcileNow().catch((e: unknown) => this.opts.log.error('reconcile failed', { error: errorMessage(e) }));
    });
  }

  /** One pass now (or joins the one running, which then runs once more). */
  async reconcileNow(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        this.recent.push(this.clock.now());
        await this.reconcileOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Resolves once no pass runs (tests). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async reconcileOnce(): Promise<void> {
    const t0 = performance.now();
    const { world, kernel, log } = this.opts;
    const snap = await kernel.snapshot();
    // What was observed goes out at once (the events); the kernel follows below.
    const states = world.observe(snap);
    const destinations = withLearnedHosts(world.config.destinations, world.learned.byDestination());
    const desired = desiredState(states, destinations, fallbackUplinks(snap.routes, states, destinations));
    const p = plan(desired, snap.rules, snap.routes);
    const errors: string[] = [];
    let changes = 0;
    if (!isEmpty(p)) {
      const name = ifnameOf(snap);
      for (const r of p.addRoutes) log.debug('route add', { route: describeRoute(r, name) });
      for (const r of p.addRules) log.debug('rule add', { rule: describeRule(r) });
      for (const r of p.delRules) log.debug('rule delete', { rule: describeRule(r) });
      for (const r of p.delRoutes) log.debug('route delete', { route: describeRoute(r, name) });
      const res = await kernel.apply(p, name);
      changes = res.applied;
      for (const e of res.errors) {
        errors.push(e.message);
        log.error('kernel change failed', { error: e.message });
      }
    }
    const rpath = states.flatMap((s) => (s.status === 'active' && s.link ? [s.link.name] : []));
    for (const e of await this.opts.sysctl.apply(rpath)) {
      errors.push(e);
      log.error('kernel setting failed', { error: e });
    }
    for (const f of this.opts.follow ?? []) errors.push(...(await f()));
    world.settled();
    const ms = performance.now() - t0;
    this.last = { at: new Date(this.clock.now()).toISOString(), durationMs: Math.round(ms * 100) / 100, changes, errors };
    if (changes > 0 || errors.length > 0) {
      log.info('reconciled', {
        changes, errors: errors.length, ms: ms.toFixed(1),
        active: states.filter((s) => s.status === 'active').map((s) => s.spec.name),
      });
    }
  }
}

function ifnameOf(snap: KernelSnapshot): (index: number) => string | undefined {
  const names = new Map(snap.links.map((l) => [l.index, l.name]));
  return (i) => names.get(i);
}
