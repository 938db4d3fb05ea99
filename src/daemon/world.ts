/**
 * The daemon's observed world: what it knows, in one place, and the typed changes it emits.
 *   - the config and its generation (bumped by every reload), and the uplink slots;
 *   - the kernel facts the uplinks are made of (links, addresses, main-table routes, the DNS
 *     servers routers announced, each until it expires), and the uplink states derived from them;
 *   - the exec sessions (the registry) and the addresses learnt for domain destinations.
 * It does no I/O of its own beyond what is injected (the slots' persistence, the clock). The
 * reconcilers (routing, nftables, the session backstop, the decisions' caches) subscribe to its
 * changes; src/daemon/assemble.ts builds it, then them, then subscribes them in order.
 */
import type { Config } from '../config/load.js';
import { RuleSet, type Rule } from '../policy/rules.js';
import type { LinkMsg, AddrMsg, RouteMsg, RdnssMsg } from '../netlink/message.js';
import { fallbackUplinks, MAIN_TABLE, unmarkedEgress, type Fallback } from '../routing/fallback.js';
import { SessionRegistry } from '../session/session.js';
import { assignSlots } from '../uplink/slots.js';
import { observedRanking } from '../decision/needs.js';
import { UplinkHealth } from '../uplink/health.js';
import { ambiguousMatches, unusableMatches, uplinkStates, type UplinkState } from '../uplink/state.js';
import { ChangeFeed, type Listener } from './changes.js';
import { systemClock, type Clock } from './clock.js';
import { LearnedHosts } from './learned.js';
import type { Logger } from './log.js';
import { errorMessage } from '../errors.js';

/** What the world tells its subscribers. A new part of the world is one more line here. */
export type WorldChange =
  /** A reload swapped in a new config (and bumped the generation). */
  | { readonly kind: 'config'; readonly config: Config; readonly generation: number }
  /** The uplinks as just observed, on every observation (the event bus compares them). */
  | { readonly kind: 'observed'; readonly states: readonly UplinkState[] }
  /** What decisions depend on changed (status, link, families, DNS, mainDefault), once the kernel followed. */
  | { readonly kind: 'uplinks'; readonly states: readonly UplinkState[] }
  /** A router announced DNS servers on a link, or an announcement expired: observe again. */
  | { readonly kind: 'linkDns' }
  /** Sessions began or ended, or what the kernel must enforce for them changed. */
  | { readonly kind: 'sessions' }
  /** The set of addresses learnt for domain destinations changed. */
  | { readonly kind: 'learned' }
  /** Apps appeared or left (the cgroup tree: src/daemon/apps.ts). */
  | { readonly kind: 'apps' }
  /** The stored rules (added from the CLI, remembered answers) changed; a new config changes the rules too, as `config`. */
  | { readonly kind: 'rules' };

export type WorldChangeKind = WorldChange['kind'];

/** The kernel's links, addresses and routes, as a snapshot has them (routes of every table). */
export interface LinkFacts {
  readonly links: readonly LinkMsg[];
  readonly addrs: readonly AddrMsg[];
  readonly routes: readonly RouteMsg[];
}

export interface WorldOptions {
  readonly config: Config;
  /** Slots from the state file, so marks keep meaning the same uplinks across restarts. */
  readonly savedSlots: Readonly<Record<string, number>>;
  /** Where the slots are kept (the state file). */
  readonly saveSlots: (slots: Readonly<Record<string, number>>) => Promise<void>;
  readonly log: Logger;
  readonly clock?: Clock;
  readonly maxLearned?: number;
}

export class World {
  private currentConfig: Config;
  private storedRules: readonly Rule[] = [];
  private compiled: RuleSet;
  private currentGeneration = 1;
  private currentSlots: Map<string, number>;
  private states: UplinkState[] = [];
  private fallbackNow: Fallback = {};
  private mainDefaults: { v4: number | null; v6: number | null } = { v4: null, v6: null };
  private readonly linkDns = new Map<number, { servers: readonly string[]; until: number }>();
  /** Addresses learnt for domain destinations (emits `learned`). */
  readonly learned: LearnedHosts;
  readonly sessions = new SessionRegistry();
  private readonly feed = new ChangeFeed<WorldChange>();
  private readonly clock: Clock;
  /** What decisions depend on, as last announced (`uplinks`). */
  private fingerprint = '';
  /** Uplinks whose match claims several links, as last logged. */
  private ambiguity = '[[],[]]';
  /** Drops and measured RTTs (src/uplink/health.ts), attached to the states as `observed`. */
  private readonly health: UplinkHealth;
  /** observe() ran and settled() has not yet: the pass in flight announces what changed. */
  private unsettled = false;

  constructor(private readonly opts: WorldOptions) {
    this.currentConfig = opts.config;
    this.compiled = RuleSet.compile(opts.config.rules, [], opts.config);
    this.clock = opts.clock ?? systemClock;
    this.health = new UplinkHealth(() => this.clock.now());
    this.currentSlots = assignSlots(opts.config.uplinks.map((u) => u.name), new Map(Object.entries(opts.savedSlots)));
    this.learned = new LearnedHosts({
      onChange: () => this.announce({ kind: 'learned' }),
      configured: (d) => this.currentConfig.destinations.some((x) => x.name === d),
      clock: this.clock,
      ...(opts.maxLearned !== undefined ? { max: opts.maxLearned } : {}),
    });
  }

  get config(): Config {
    return this.currentConfig;
  }

  /** Every rule in force, compiled: the config's and the stored ones (src/policy/rules.ts). */
  get rules(): RuleSet {
    return this.compiled;
  }

  /** Swaps in the stored rules; resolves once every subscriber followed (the kernel holds the apps to them). */
  async setStoredRules(rules: readonly Rule[]): Promise<void> {
    this.storedRules = rules;
    this.compiled = RuleSet.compile(this.currentConfig.rules, rules, this.currentConfig);
    await this.feed.emit({ kind: 'rules' });
  }

  get generation(): number {
    return this.currentGeneration;
  }

  get slots(): ReadonlyMap<string, number> {
    return this.currentSlots;
  }

  /** The uplinks as last observed. */
  get uplinks(): readonly UplinkState[] {
    return this.states;
  }

  /**
   * The interface unmarked traffic's default leaves by, per family, as last observed: main's
   * default (lowest metric) while main holds one, else the Internet fallback's uplink
   * (src/routing/fallback.ts: unmarkedEgress); null: none.
   */
  /** The Internet fallback's uplinks, per family, as last observed (none while main holds a default). */
  get fallback(): Fallback {
    return this.fallbackNow;
  }

  get mainDefault(): { readonly v4: number | null; readonly v6: number | null } {
    return this.mainDefaults;
  }

  subscribe<K extends WorldChangeKind>(kinds: readonly K[], fn: Listener<Extract<WorldChange, { kind: K }>>): () => void {
    return this.feed.subscribe(kinds, fn);
  }

  /** Writes the slots to the state file (at start; reloads do it themselves). */
  async saveSlots(): Promise<void> {
    await this.opts.saveSlots(Object.fromEntries(this.currentSlots)).catch((e: unknown) =>
      this.opts.log.error('cannot save state', { error: errorMessage(e) }));
  }

  /**
   * Swaps in a new, already validated config; resolves once every subscriber followed it (the
   * kernel reconciled, sessions re-fenced), with the new generation.
   */
  async replaceConfig(config: Config): Promise<number> {
    this.currentSlots = assignSlots(config.uplinks.map((u) => u.name), this.currentSlots);
    this.currentConfig = config;
    this.compiled = RuleSet.compile(config.rules, this.storedRules, config);
    this.currentGeneration++;
    await this.saveSlots();
    const generation = this.currentGeneration;
    await this.feed.emit({ kind: 'config', config, generation });
    return generation;
  }

  /** DNS servers a router announced on a link, kept for their lifetime (RFC 8106). */
  noteLinkDns(r: RdnssMsg): void {
    if (r.lifetimeSec === 0) this.linkDns.delete(r.ifindex);
    else this.linkDns.set(r.ifindex, { servers: r.servers, until: this.clock.now() + r.lifetimeSec * 1000 });
    this.opts.log.info('link DNS servers announced', { ifindex: r.ifindex, servers: r.servers, lifetime: r.lifetimeSec });
    // Expiry is a change too: look again when the announcement runs out.
    if (r.lifetimeSec > 0) this.clock.after(r.lifetimeSec * 1000 + 10, () => this.announce({ kind: 'linkDns' }));
  }

  /** Still valid announcements, by interface index (expired ones are dropped). */
  private validLinkDns(): Map<number, readonly string[]> {
    const now = this.clock.now();
    const out = new Map<number, readonly string[]>();
    for (const [ifindex, d] of this.linkDns) {
      if (d.until > now) out.set(ifindex, d.servers);
      else this.linkDns.delete(ifindex);
    }
    return out;
  }

  /**
   * Takes in what the kernel reports and derives the uplinks from it; emits `observed` at once
   * (the kernel follows afterwards: see settled()). Returns the states.
   */
  observe(facts: LinkFacts): readonly UplinkState[] {
    const routes = facts.routes.filter((r) => r.table === MAIN_TABLE);
    const derived = uplinkStates(this.currentConfig.uplinks, this.currentSlots, { links: facts.links, addrs: facts.addrs, routes, linkDns: this.validLinkDns() });
    this.health.flaps.update(derived.map((s) => ({ name: s.spec.name, status: s.status })));
    this.health.rtt.retain(new Set(derived.map((s) => s.spec.name)));
    this.states = this.withObservations(derived);
    this.unsettled = true;
    this.mainDefaults = unmarkedEgress(routes, this.states, this.currentConfig.destinations);
    this.fallbackNow = fallbackUplinks(routes, this.states, this.currentConfig.destinations);
    this.warnAmbiguous(facts.links);
    this.announce({ kind: 'observed', states: this.states });
    return this.states;
  }

  /**
   * The kernel follows the last observation: when what decisions depend on changed since the
   * last call, emits `uplinks` (not awaited: its subscribers log their own failures).
   */
  settled(): void {
    this.unsettled = false;
    const fp = this.decisionFingerprint();
    if (fp === this.fingerprint) return;
    this.fingerprint = fp;
    this.announce({ kind: 'uplinks', states: this.states });
  }

  private decisionFingerprint(): string {
    // Where unmarked traffic leaves is part of it: the app BPF maps predict from it. So is the
    // order the observations put the uplinks in for the needs that read them.
    return JSON.stringify([this.states.map((u) => [u.spec.name, u.status, u.link?.index, u.families, u.dns]), this.mainDefaults, observedRanking(this.states)]);
  }

  /**
   * One round of measured RTTs (ms, by uplink: src/daemon/rtt-monitor.ts), then reobserve():
   * the decisions follow only if a need's order changed.
   */
  noteRtt(samples: ReadonlyMap<string, readonly number[]>): void {
    for (const [name, ms] of samples) this.health.rtt.add(name, ms);
    this.reobserve();
  }

  /**
   * Re-reads the observations into the states (the flap window slides, RTT samples age); emits
   * `uplinks` when that changed what decisions depend on, unless a pass is in flight (its
   * settled() will).
   */
  reobserve(): void {
    this.states = this.withObservations(this.states);
    if (this.unsettled) return;
    const fp = this.decisionFingerprint();
    if (fp === this.fingerprint) return;
    this.fingerprint = fp;
    this.announce({ kind: 'uplinks', states: this.states });
  }

  private withObservations(states: readonly UplinkState[]): UplinkState[] {
    return states.map((s) => ({ ...s, observed: this.health.observation(s.spec.name) }));
  }

  /** Sessions or their backstops changed; resolves once every subscriber followed (the nftables table is loaded). */
  sessionsChanged(): Promise<void> {
    return this.feed.emit({ kind: 'sessions' });
  }

  /** Apps appeared or left; resolves once every subscriber followed. */
  appsChanged(): Promise<void> {
    return this.feed.emit({ kind: 'apps' });
  }

  /** Emits a change nobody awaits; a subscriber that fails without logging it is logged here. */
  private announce(change: WorldChange): void {
    this.feed.emit(change).catch((e: unknown) => this.opts.log.error('update failed', { change: change.kind, error: errorMessage(e) }));
  }

  /** Logs (once per change) every uplink whose glob matches several links, or links it cannot use. */
  private warnAmbiguous(links: readonly LinkMsg[]): void {
    const config = this.currentConfig;
    const found = ambiguousMatches(config.uplinks, links);
    const unusable = unusableMatches(config.uplinks, links);
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
}
