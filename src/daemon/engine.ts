/**
 * The daemon's core loop: config + kernel events in, reconciled kernel state out.
 * Every change (a netlink event, a reload, a tampered rule) schedules one reconcile, which takes a
 * fresh snapshot, computes the desired state purely, and applies only the difference.
 */
import { MARK_MASK } from '../constants.js';
import type { Config } from '../config/load.js';
import { INTERNET, withLearnedHosts } from '../destination/destination.js';
import { formatPrefix } from '../net/prefix.js';
import { CHAINS, counterName, renderRuleset } from '../nftables/ruleset.js';
import * as nft from '../nftables/nft.js';
import { bestUplink, desiredState } from '../routing/desired.js';
import { decodeRdnss, type RdnssMsg } from '../netlink/message.js';
import { KernelRouting, watchKernel, type KernelSnapshot } from '../routing/kernel.js';
import { isEmpty, plan } from '../routing/reconcile.js';
import { SrcValidMark } from '../routing/sysctl.js';
import { describeRoute, describeRule } from '../routing/describe.js';
import { assignSlots } from '../uplink/slots.js';
import { ambiguousMatches, unusableMatches, uplinkStates, type UplinkState } from '../uplink/state.js';
import type { Logger } from './log.js';
import { PROTOCOL_VERSION, type DestinationStatusView, type StatusResult, type UplinkStatusView } from './protocol.js';
import type { StateStore } from './state.js';
import { errorMessage } from '../errors.js';

const MAIN_TABLE = 254;
/** Reconciles allowed per second before we back off (something may be fighting over our rules). */
const RECONCILE_BURST = 25;
/**
 * Renders of the nftables table tried in a row when nft names a cgroup that vanished between
 * the render and the load (removed by someone else: our own sessions leave the render before
 * their cgroup goes, see refreshNft). Each retry re-renders without it.
 */
const NFT_ATTEMPTS = 3;
const VANISHED_CGROUP_RE = /cgroupv2 path fails|No such file or directory/;

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

export interface EngineOptions {
  readonly config: Config;
  readonly configPath: string;
  readonly store: StateStore;
  /** Slots from the state file, so marks keep meaning the same uplinks across restarts. */
  readonly savedSlots: Readonly<Record<string, number>>;
  readonly log: Logger;
  readonly version: string;
  /** Called after a reconcile or reload that changed what decisions depend on (config, uplinks). */
  readonly onChange?: () => void;
  /** Addresses learnt for domain destinations (destination → addresses), routed like their destination. */
  readonly learnedHosts?: () => ReadonlyMap<string, readonly string[]>;
  /**
   * Extra statements for our nftables table (the session backstop), rendered on every update;
   * it must name only cgroups that exist at that moment.
   */
  readonly nftExtra?: () => string;
  /** Called on every reconcile with the uplinks as just observed, before routes follow (the event bus compares them). */
  readonly onObserved?: (states: readonly UplinkState[]) => void;
}

export class Engine {
  private config: Config;
  private slots = new Map<string, number>();
  private generation = 1;
  private readonly startedAt = new Date();
  private readonly kernel = new KernelRouting();
  private watcher: { close(): void } | undefined;
  private states: UplinkState[] = [];
  private lastReconcile: StatusResult['lastReconcile'] = null;
  private running: Promise<void> | undefined;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private recent: number[] = [];
  private nftApplied: string | undefined;
  /** The tail of the queue of nftables updates: they run one at a time, in order. */
  private nftQueue: Promise<void> = Promise.resolve();
  private readonly srcValidMark = new SrcValidMark();
  private stopped = false;
  private readonly linkDns = new Map<number, { servers: readonly string[]; until: number }>();
  /** What decisions depend on, to tell callers when it changed. */
  private fingerprint = '';
  /** Uplinks whose match claims several links, as last logged. */
  private ambiguity = '[[],[]]';

  constructor(private readonly opts: EngineOptions) {
    this.config = opts.config;
  }

  async start(): Promise<void> {
    this.slots = assignSlots(this.config.uplinks.map((u) => u.name), new Map(Object.entries(this.opts.savedSlots)));
    await this.persistSlots();
    // Subscribe before the first snapshot so no change can slip between the two.
    this.watcher = watchKernel((lost, m) => {
      if (lost) this.opts.log.warn('netlink events lost, resynchronising');
      const rdnss = m ? decodeRdnss(m) : undefined;
      if (rdnss) this.noteLinkDns(rdnss);
      this.schedule();
    });
    await this.reconcileNow();
  }

  /** Swaps in a new, already validated config and reconciles. */
  async replaceConfig(config: Config): Promise<number> {
    this.slots = assignSlots(config.uplinks.map((u) => u.name), this.slots);
    this.config = config;
    this.generation++;
    await this.persistSlots();
    await this.reconcileNow();
    this.opts.onChange?.();
    return this.generation;
  }

  /** DNS servers a router announced on a link, kept for their lifetime (RFC 8106). */
  private noteLinkDns(r: RdnssMsg): void {
    if (r.lifetimeSec === 0) this.linkDns.delete(r.ifindex);
    else this.linkDns.set(r.ifindex, { servers: r.servers, until: Date.now() + r.lifetimeSec * 1000 });
    this.opts.log.info('link DNS servers announced', { ifindex: r.ifindex, servers: r.servers, lifetime: r.lifetimeSec });
    // Expiry is a change too: look again when the announcement runs out.
    if (r.lifetimeSec > 0) setTimeout(() => this.schedule(), r.lifetimeSec * 1000 + 10).unref();
  }

  private validLinkDns(): Map<number, readonly string[]> {
    const now = Date.now();
    const out = new Map<number, readonly string[]>();
    for (const [ifindex, d] of this.linkDns) {
      if (d.until > now) out.set(ifindex, d.servers);
      else this.linkDns.delete(ifindex);
    }
    return out;
  }

  /**
   * Re-renders the nftables table (after sessions changed). Updates never overlap, and the
   * returned promise settles once a render that began after this call is loaded (or failed):
   * so once a session is out of the registry and this resolved, no render in flight or to come
   * names its cgroup, and the cgroup can go without failing anyone's transaction.
   */
  async refreshNft(): Promise<void> {
    const errors: string[] = [];
    await this.applyNft(errors);
    if (errors.length > 0) throw new Error(errors.join('; '));
  }

  getConfig(): Config {
    return this.config;
  }

  uplinkStates(): readonly UplinkState[] {
    return this.states;
  }

  /** Stops watching; unless `keep`, removes every rule, route and nftables object we own. */
  async stop(keep: boolean): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.watcher?.close();
    await this.running;
    if (!keep) {
      const snap = await this.kernel.snapshot();
      const p = plan({ rules: [], routes: [] }, snap.rules, snap.routes);
      const res = await this.kernel.apply(p);
      for (const e of res.errors) this.opts.log.error('cleanup step failed', { error: e.message });
      await this.nftQueue;
      await nft.deleteTable().catch((e: unknown) => this.opts.log.error('nftables cleanup failed', { error: errorMessage(e) }));
      for (const e of await this.srcValidMark.restore()) this.opts.log.error('cannot restore a kernel setting', { error: e });
      this.opts.log.info('removed kernel state', { changes: res.applied });
    }
    this.kernel.close();
  }

  /** Coalesces bursts of events into one reconcile; backs off if reconciles run away. */
  schedule(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return;
    const now = Date.now();
    this.recent = this.recent.filter((t) => now - t < 1000);
    const delay = this.recent.length >= RECONCILE_BURST ? 1000 : 1;
    if (delay > 1) this.opts.log.warn('kernel state keeps changing under us; slowing down');
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.reconcileNow().catch((e: unknown) => this.opts.log.error('reconcile failed', { error: errorMessage(e) }));
    }, delay);
  }

  async reconcileNow(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        this.recent.push(Date.now());
        await this.reconcileOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async reconcileOnce(): Promise<void> {
    const t0 = performance.now();
    const snap = await this.kernel.snapshot();
    const mainRoutes = snap.routes.filter((r) => r.table === MAIN_TABLE);
    this.states = uplinkStates(this.config.uplinks, this.slots, { links: snap.links, addrs: snap.addrs, routes: mainRoutes, linkDns: this.validLinkDns() });
    this.warnAmbiguous(snap);
    // What was observed goes out at once (the events); the kernel follows below.
    this.opts.onObserved?.(this.states);
    const desired = desiredState(this.states, withLearnedHosts(this.config.destinations, this.opts.learnedHosts?.() ?? new Map()));
    const p = plan(desired, snap.rules, snap.routes);
    const errors: string[] = [];
    let changes = 0;
    if (!isEmpty(p)) {
      const name = ifnameOf(snap);
      for (const r of p.addRoutes) this.opts.log.debug('route add', { route: describeRoute(r, name) });
      for (const r of p.addRules) this.opts.log.debug('rule add', { rule: describeRule(r) });
      for (const r of p.delRules) this.opts.log.debug('rule delete', { rule: describeRule(r) });
      for (const r of p.delRoutes) this.opts.log.debug('route delete', { route: describeRoute(r, name) });
      const res = await this.kernel.apply(p, name);
      changes = res.applied;
      for (const e of res.errors) {
        errors.push(e.message);
        this.opts.log.error('kernel change failed', { error: e.message });
      }
    }
    const rpath = this.states.flatMap((s) => (s.status === 'active' && s.link ? [s.link.name] : []));
    for (const e of await this.srcValidMark.apply(rpath)) {
      errors.push(e);
      this.opts.log.error('kernel setting failed', { error: e });
    }
    await this.applyNft(errors);
    const fp = JSON.stringify(this.states.map((u) => [u.spec.name, u.status, u.link?.index, u.families, u.dns]));
    if (fp !== this.fingerprint) {
      this.fingerprint = fp;
      this.opts.onChange?.();
    }
    const ms = performance.now() - t0;
    this.lastReconcile = { at: new Date().toISOString(), durationMs: Math.round(ms * 100) / 100, changes, errors };
    if (changes > 0 || errors.length > 0) {
      this.opts.log.info('reconciled', {
        changes, errors: errors.length, ms: ms.toFixed(1),
        active: this.states.filter((s) => s.status === 'active').map((s) => s.spec.name),
      });
    }
  }

  /** Logs (once per change) every uplink whose glob matches several links, or links it cannot use. */
  private warnAmbiguous(snap: KernelSnapshot): void {
    const found = ambiguousMatches(this.config.uplinks, snap.links);
    const unusable = unusableMatches(this.config.uplinks, snap.links);
    const key = JSON.stringify([found, unusable]);
    if (key === this.ambiguity) return;
    this.ambiguity = key;
    for (const u of unusable) {
      this.opts.log.warn('uplink matches a link whose name nftables cannot take; never used', { uplink: u.uplink, links: u.links });
    }
    for (const a of found) {
      this.opts.log.warn(a.mixedKinds ? 'uplink matches several links of different kinds; only the first is used'
        : 'uplink matches several links; only the first is used', {
        uplink: a.uplink, match: a.match, links: a.links.map((l) => `${l.name} (${l.kind})`).join(', '), using: a.links[0]?.name,
      });
    }
  }

  /** Queues one update (see refreshNft); it renders when its turn comes, not before. */
  private applyNft(errors: string[]): Promise<void> {
    const run = this.nftQueue.then(() => this.applyNftNow(errors));
    this.nftQueue = run.catch(() => undefined);
    return run;
  }

  private render(): string {
    const counted = this.states.flatMap((s) => (s.link
      ? [{ name: s.spec.name, ifname: s.link.name, ...(s.status === 'active' ? { mark: s.mark } : {}) }]
      : []));
    return renderRuleset(counted) + (this.opts.nftExtra?.() ?? '');
  }

  private async applyNftNow(errors: string[]): Promise<void> {
    let body = this.render();
    for (let attempt = 1; ; attempt++) {
      if (body === this.nftApplied) return;
      try {
        await nft.updateTable(CHAINS, body);
        this.nftApplied = body;
        return;
      } catch (e) {
        const msg = errorMessage(e);
        // A cgroup named in the render vanished meanwhile: the next render leaves it out.
        const again = attempt < NFT_ATTEMPTS && VANISHED_CGROUP_RE.test(msg) ? this.render() : undefined;
        if (again !== undefined && again !== body) {
          this.opts.log.warn('nftables update named a cgroup that is gone; rendering again', { attempt });
          body = again;
          continue;
        }
        errors.push(msg);
        this.opts.log.error('nftables update failed', { error: msg });
        return;
      }
    }
  }

  private async persistSlots(): Promise<void> {
    await this.opts.store.update({ slots: Object.fromEntries(this.slots) }).catch((e: unknown) =>
      this.opts.log.error('cannot save state', { error: errorMessage(e) }));
  }

  async status(): Promise<StatusResult> {
    const counters = await nft.readCounters();
    const uplinks: UplinkStatusView[] = this.states.map((s) => {
      const tx = counters.get(counterName(s.spec.name, 'tx'));
      const rx = counters.get(counterName(s.spec.name, 'rx'));
      const fam = (f: 4 | 6) => s.families.find((x) => x.family === f);
      return {
        name: s.spec.name,
        kind: s.spec.kind,
        status: s.status,
        ifname: s.link?.name ?? null,
        ifindex: s.link?.index ?? null,
        addresses: s.families.flatMap((f) => f.addresses),
        gateways: { ipv4: fam(4)?.gateway ?? null, ipv6: fam(6)?.gateway ?? null },
        dns: { servers: [...s.dns], source: s.dnsSource },
        cost: { ...s.spec.cost },
        metered: s.spec.metered,
        roaming: s.spec.roaming,
        sim: s.spec.sim ? { iccid: s.spec.sim.iccid, apn: s.spec.sim.apn ?? null } : null,
        preference: s.spec.preference,
        table: s.table,
        mark: hex(s.mark),
        markMask: hex(MARK_MASK),
        traffic: tx && rx ? { txBytes: tx.bytes, rxBytes: rx.bytes } : null,
      };
    });
    const destinations: DestinationStatusView[] = this.config.destinations.map((d) => {
      const pick = (f: 4 | 6): string | null => {
        if (d.name === INTERNET) return null;
        if (!d.prefixes.some((p) => p.family === f)) return null;
        return bestUplink(this.states, d, f)?.spec.name ?? null;
      };
      return {
        name: d.name,
        prefixes: d.prefixes.map(formatPrefix),
        domains: [...d.domains],
        via: [...d.via],
        active: { ipv4: pick(4), ipv6: pick(6) },
      };
    });
    return {
      daemon: {
        version: this.opts.version, protocol: PROTOCOL_VERSION, pid: process.pid, configPath: this.opts.configPath,
        generation: this.generation, startedAt: this.startedAt.toISOString(),
      },
      uplinks,
      destinations,
      lastReconcile: this.lastReconcile,
    };
  }
}

function ifnameOf(snap: KernelSnapshot): (index: number) => string | undefined {
  const names = new Map(snap.links.map((l) => [l.index, l.name]));
  return (i) => names.get(i);
}
