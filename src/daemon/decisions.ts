/**
 * Answers the LD_PRELOAD library and the client API (the decide socket): who is asking (from
 * SO_PEERCRED and /proc, never from the message), what their session and app rule say, and
 * what the pure decide() makes of it. Also resolves names of domain destinations through the
 * DNS servers of the uplink that reaches them.
 */
import { formatBytes } from '../accounting/cost.js';
import { INTERNET, destinationOfAddress, destinationOfName } from '../destination/destination.js';
import { isIP } from 'node:net';
import { decide, findUplink, type Decision, type Wish } from '../decision/decide.js';
import type { GenerationFile } from '../decision/generation.js';
import { needsFromMask } from '../decision/needs.js';
import { DeferredAnswer, type Caller, type DecisionHandlers } from '../decision/server.js';
import { WM_ACTION, WM_RESOLVE, type DecideRequest, type DecideResponse, type ResolveRequest, type ResolveResponse } from '../decision/wire.js';
import { resolveVia } from '../dns/resolver.js';
import { bestUplink } from '../routing/desired.js';
import { identify, type AppIdentity } from '../identity/app.js';
import { formatAddress, parseAddress, type Family } from '../net/prefix.js';
import type { AppFacts, AppRule } from '../policy/app.js';
import { appName, type Proto, type Rule } from '../policy/rules.js';
import type { Prompt, PromptAnswer, PromptOutcome } from '../prompt/prompt.js';
import type { UplinkState } from '../uplink/state.js';
import type { AppConnect } from './apps.js';
import type { AskRequest } from './prompts.js';
import { errorMessage } from '../errors.js';
import { mergeWish, wishOf, type Session } from '../session/session.js';
import { ExpiringMap } from './expiring.js';
import type { EventBus } from './events.js';
import type { Logger } from './log.js';
import type { World } from './world.js';

/** How long the library may keep an answer; a generation bump ends it sooner. */
const TTL_MS = { steer: 60_000, pass: 60_000, deny: 10_000 } as const;
/**
 * Identity is cached per decide connection (the server hands the same Caller object for every
 * request of one connection), for this long: /proc reads (~45 µs) would otherwise dominate a
 * decision. Per connection, not per pid: the library's connection is close-on-exec, so a
 * program that execs another asks over a new connection and is identified anew at once, and an
 * entry goes with its connection. The TTL only catches a process moved to another cgroup.
 */
const IDENTITY_TTL_MS = 2_000;
const ERRNO = { EACCES: 13, ENETUNREACH: 101 } as const;
const DNS_TIMEOUT_MS = 2_000;
const DNS_PORT = 53;
const NO_DENY: readonly string[] = Object.freeze([]);

/** What the budgets say of an app's uplinks (the app by uid and the name its app key has). */
export interface BudgetPort {
  /** The uplinks its (or their uplink's) exhausted budgets block now. */
  blocked(uid: number, name: string): readonly string[];
  /** Bytes left of its tightest budget on an uplink (null: none). */
  left(uid: number, name: string, uplink: string): number | null;
}

/** The name an app's key has (src/identity/cgroup.ts: the Flatpak ID, the app ID, else the unit). */
const appKeyName = (id: AppIdentity): string => id.flatpakId ?? id.app ?? id.unit ?? '';
const NO_FACTS: readonly AppFacts[] = Object.freeze([]);

/** What an answer does, as a rule: the uplink picked and no other (a remembered answer never moves), or deny. */
export function actionOf(a: PromptAnswer): Rule['action'] {
  return 'deny' in a.choice ? { kind: 'deny' } : { kind: 'only', uplinks: [a.choice.uplink] };
}

/**
 * Whom a remembered answer is for: the user's app by its most lasting name (its Flatpak ID, else
 * its desktop app ID, else its executable, else its unit), and the destination (none: all).
 */
export function answerMatch(id: AppFacts, destination: string | undefined): Rule['match'] {
  const app = id.flatpakId ? { flatpak: id.flatpakId } : id.app ? { app: id.app } : id.exe ? { exe: id.exe } : id.unit ? { unit: id.unit } : {};
  return { uid: id.uid, ...app, ...(destination !== undefined ? { destination } : {}) };
}

/**
 * Bound of the cached answers (the learnt addresses are the world's: src/daemon/world.ts,
 * MAX_LEARNED). Beyond the cap the expired entries go first, then the oldest; expired ones
 * (and expired learnt addresses) are also pruned every {@link PRUNE_INTERVAL_MS}.
 */
export const MAX_DNS_CACHE = 1024;
export const PRUNE_INTERVAL_MS = 60_000;

/** What decisions are made from: the world's config, rules, uplinks, sessions and learnt addresses. */
export type DecisionWorld = Pick<World, 'config' | 'rules' | 'uplinks' | 'sessions' | 'learned'>;

/** A prompt to raise: what it shows (its id and deadline are the broker's) and who shares it (src/daemon/prompts.ts). */
export type PromptRequest = AskRequest;

/** Who asks the user (src/daemon/prompts.ts) and where answers meant to last are kept (src/daemon/rule-store.ts). */
export interface AskPorts {
  ask(req: PromptRequest): Promise<PromptOutcome>;
  /**
   * Keeps an answer as a rule (for this time: a few seconds, for N minutes, until the app exits,
   * or always); resolves once the kernel holds the app to it.
   */
  remember(rule: AnswerRule): Promise<void>;
}

/** An answer that outlasts its connection, as a rule to store. */
export interface AnswerRule {
  readonly match: Rule['match'];
  readonly action: Rule['action'];
  readonly owner: number;
  /** `once`: held in memory for {@link ONCE_MS}, so the kernel lets the waiting connects through. */
  readonly scope: 'once' | 'minutes' | 'app' | 'always';
  readonly expiresAt?: number;
  /** Scope `app`: the process (pid and start time) or cgroup whose end ends the rule. */
  readonly until?: { readonly pid: number; readonly startTime: string | null; readonly cgroup: string | null };
}

/**
 * How long an answer "this time" for an uplink holds as a rule: the kernel enforces the app's
 * rules on every socket (the ask rule's default until answered), so the connects waiting for the
 * answer need it there too; they proceed within microseconds of the answer. So "this time" is
 * the waiting connects and any the app makes to that destination within these 2 s.
 */
export const ONCE_MS = 2_000;

/** How much longer than the prompt's own timeout the library is told to wait (the answer's way back). */
const PENDING_SLACK_MS = 2_000;

export class DecisionService implements DecisionHandlers {
  private readonly identities = new WeakMap<Caller, { id: AppIdentity; at: number }>();
  private readonly dnsCache: ExpiringMap<string, { answer: ResolveResponse; until: number }>;
  private readonly pruneTimer: NodeJS.Timeout;
  private readonly logged = new Map<string, number>();
  /** The daemon's cgroup root, as a v2 path: apps are recognised below it. */
  private readonly cgroupRoot: string | undefined;
  /** The budgets: what they block and leave of an app's uplinks (none: no accounting). */
  private budgets: BudgetPort | undefined;

  constructor(
    private readonly world: DecisionWorld,
    private readonly generation: GenerationFile,
    private readonly log: Logger,
    bounds: { dnsCache?: number; now?: () => number; cgroupRoot?: string } = {},
    /** Where denials are published (`decision.denied`), synchronously and only when someone listens. */
    private readonly events?: Pick<EventBus, 'publish' | 'wants'>,
    /** Who asks the user; without it an `ask` rule's default applies at once. */
    private asker?: AskPorts,
  ) {
    this.dnsCache = new ExpiringMap(bounds.dnsCache ?? MAX_DNS_CACHE, bounds.now);
    this.cgroupRoot = bounds.cgroupRoot;
    this.pruneTimer = setInterval(() => this.prune(), PRUNE_INTERVAL_MS).unref();
  }

  /** What procfs says of a process (src/identity/app.ts), its units recognised below the daemon's cgroup root. */
  private identifyPid(caller: Caller): AppIdentity {
    return identify(caller, '/proc', this.cgroupRoot === undefined ? {} : { cgroupRoot: this.cgroupRoot });
  }

  /** Connects the prompt broker and the rule store (they are built after this service). */
  askWith(ports: AskPorts): void {
    this.asker = ports;
  }

  /** Where exhausted budgets block an app's uplinks, and what they leave (src/accounting/service.ts). */
  budgetsWith(port: BudgetPort): void {
    this.budgets = port;
  }

  /** A new config or new uplink facts void every cached answer. */
  follow(world: Pick<World, 'subscribe'>): void {
    world.subscribe(['config', 'uplinks', 'rules'], () => this.invalidate());
  }

  /** Drops expired learnt addresses and cached answers (the kernel's copy follows). */
  prune(): void {
    this.dnsCache.prune();
    this.world.learned.prune();
  }

  private get sessions(): DecisionWorld['sessions'] {
    return this.world.sessions;
  }

  /** Stops the periodic pruning. */
  close(): void {
    clearInterval(this.pruneTimer);
  }

  /** Policy or uplinks changed: every cached answer in every library is void. */
  invalidate(): void {
    this.dnsCache.clear();
    // Before the daemon opens it (start-up), opening will pick a fresh generation anyway.
    if (this.generation.opened) this.generation.bump();
  }

  private who(caller: Caller): AppIdentity {
    const now = Date.now();
    const hit = this.identities.get(caller);
    if (hit && now - hit.at < IDENTITY_TTL_MS) return hit.id;
    const id = this.identifyPid(caller);
    this.identities.set(caller, { id, at: now });
    return id;
  }

  /**
   * The rules for one socket of a process: the one that decides for it (an `ask` comes from it)
   * and the policy of every rule that binds it (in a session, those of its app facts too).
   */
  private rulesFor(id: AppIdentity, session: Session | undefined, wish: Wish, destination: string, proto?: Proto, port?: number): { rule: Rule | undefined; policy: AppRule | undefined } {
    return this.world.rules.decideFor(id, session ? session.apps : NO_FACTS, { destination, needs: wish.needs, proto, port });
  }

  /** The decision for one socket, and the rule that decided it; `policy` replaces the rules' (an answer to a prompt). */
  decideFor(
    id: AppIdentity, own: Wish, family: Family, addr: Uint8Array,
    at: { destination?: string; proto?: Proto; port?: number; policy?: AppRule } = {},
  ): { decision: Decision; rule: Rule | undefined; policy: AppRule | undefined; destination: string } {
    const config = this.world.config;
    const session = this.sessions.ofCgroup(id.cgroup);
    let wish = mergeWish(session ? wishOf(session) : undefined, own);
    // Uplinks exhausted budgets block for this app are as good as denied (the kernel drops them anyway).
    const blocked = this.budgets === undefined ? NO_DENY : this.budgets.blocked(id.uid, appKeyName(id));
    if (blocked.length > 0) wish = { ...wish, deny: [...wish.deny, ...blocked] };
    const destination = at.destination ?? this.world.learned.destinationOf(family, addr) ?? destinationOfAddress(config.destinations, family, addr);
    const { rule, policy } = this.rulesFor(id, session, wish, destination, at.proto, at.port);
    const decision = decide({
      uplinks: this.world.uplinks, destinations: config.destinations, wish, family, addr, app: at.policy ?? policy, learnedDestination: destination,
    });
    return { decision, rule, policy: at.policy ?? policy, destination };
  }

  /**
   * On the path of every first decision: written without object spreads, which cost
   * microseconds each on Node 20 (measured), and V8 keeps one shape for every answer.
   */
  decide(req: DecideRequest, caller: Caller): DecideResponse | DeferredAnswer<DecideResponse> {
    const id = this.who(caller);
    const own: Wish = { uplink: req.uplink || undefined, needs: needsFromMask(req.needs), deny: NO_DENY, destination: req.destination || undefined };
    const decided = this.decideFor(id, own, req.family, req.addr, { proto: req.proto, port: req.port });
    const { rule, destination } = decided;
    // Name lookups are never asked about (one prompt per lookup would tell the user nothing):
    // they go by the ask rule's default like everything before an answer.
    if (rule?.action.kind === 'ask' && this.asker && req.port !== DNS_PORT && !own.uplink) {
      if (!req.nonblocking) return this.askUser(req, id, own, rule, rule.action, destination);
      // A call that must not block (an event loop's connect): the rule's default now, the
      // user asked all the same; a lasting answer decides the app's next connects.
      void this.promptFor(req, id, rule, rule.action, destination, false);
    }
    return this.respond(req, id, decided);
  }

  /** The wire answer to a decision (`policy`: what decided it, named in a denial's event). */
  private respond(req: DecideRequest, id: AppIdentity, decided: { decision: Decision; policy: AppRule | undefined }, ttlMs?: number): DecideResponse {
    let d = decided.decision;
    if (d.action === 'deny' && d.err === 'ENETUNREACH' && req.port === DNS_PORT) d = this.pinnedDns(id, req.family) ?? d;
    const r: DecideResponse = {
      seq: req.seq, action: WM_ACTION.PASS, err: 0, ifindex: 0, mark: 0, ttlMs: TTL_MS.pass, generation: this.generation.value, ifname: '', uplink: '',
    };
    if (d.action === 'steer') {
      r.action = WM_ACTION.STEER;
      r.ttlMs = TTL_MS.steer;
      r.ifindex = d.uplink.link?.index ?? 0;
      r.mark = d.uplink.mark;
      r.ifname = d.uplink.link?.name ?? '';
      r.uplink = d.uplink.spec.name;
    } else if (d.action === 'deny') {
      const address = formatAddress(req.family, req.addr);
      this.logDenial(id, `${address}:${req.port}/${req.proto}`, d);
      if (this.events?.wants('decision')) {
        this.events.publish({
          type: 'decision.denied', uid: id.uid, pid: id.pid, exe: id.exe, app: decided.policy?.name ?? null, destination: d.destination,
          address, port: req.port, proto: req.proto, uplink: req.uplink || this.sessions.ofCgroup(id.cgroup)?.uplink || null, errno: d.err, reason: d.reason,
        });
      }
      r.action = WM_ACTION.DENY;
      r.ttlMs = TTL_MS.deny;
      r.err = ERRNO[d.err];
      r.uplink = req.uplink;
    }
    if (ttlMs !== undefined) r.ttlMs = ttlMs;
    return r;
  }

  /**
   * Raises (or joins) the prompt for a connect of an app; keeps a lasting answer as a rule (in
   * the kernel when this resolves). One path for the connects the library holds and for those
   * that were not held (a non-blocking call, a kernel report). Resolves with how it ended.
   *   - `shown`: the process as the prompt shows it;
   *   - `facts`: what the answer's rule matches ({@link answerMatch}) and the prompts' key;
   *   - `until`: what "until the app exits" waits for.
   */
  private prompt(p: {
    shown: AppIdentity; facts: AppFacts; until: NonNullable<AnswerRule['until']>; target: Prompt['target']; needs: Prompt['needs'];
    rule: Rule; ask: Extract<Rule['action'], { kind: 'ask' }>; held: boolean;
  }): Promise<PromptOutcome> {
    const asker = this.asker as AskPorts;
    const { shown: id, target, rule, ask, held } = p;
    const match = answerMatch(p.facts, target.destination);
    const request: PromptRequest = {
      key: JSON.stringify([p.facts.uid, match, target.destination]),
      timeoutMs: ask.timeoutMs,
      app: { uid: p.facts.uid, pid: id.pid, name: appName(p.facts), exe: id.exe, unit: id.unit, app: id.app, flatpakId: id.flatpakId },
      target,
      needs: p.needs,
      choices: this.choicesFor(rule, target.destination, id),
      default: ask.default,
      rule: rule.id,
      held,
    };
    return asker.ask(request).then(async (outcome) => {
      if (outcome.by !== 'agent') return outcome;
      const a = outcome.answer;
      // Deny this time needs no rule (the library refuses the connect); nor does a connect that already went (not held).
      if (a.scope === 'once' && ('deny' in a.choice || !held)) return outcome;
      await asker.remember({
        match: a.allDestinations ? answerMatch(p.facts, undefined) : match, action: actionOf(a), owner: outcome.uid, scope: a.scope,
        ...(a.scope === 'minutes' ? { expiresAt: Date.now() + (a.minutes ?? 10) * 60_000 } : a.scope === 'once' ? { expiresAt: Date.now() + ONCE_MS } : {}),
        ...(a.scope === 'app' ? { until: p.until } : {}),
      }).catch((e: unknown) => this.log.error('cannot keep an answer as a rule', { error: errorMessage(e) }));
      return outcome;
    }, (e: unknown): PromptOutcome => {
      this.log.warn('prompt failed; the rule\'s default applies', { error: errorMessage(e) });
      return { by: 'gone' };
    });
  }

  /** A prompt for a connect the library asked about: the process's own identity, an app cgroup (its app or Flatpak ID) or else the process until it exits. */
  private promptFor(req: DecideRequest, id: AppIdentity, rule: Rule, ask: Extract<Rule['action'], { kind: 'ask' }>, destination: string, held: boolean): Promise<PromptOutcome> {
    return this.prompt({
      shown: id, facts: id, until: { pid: id.pid, startTime: id.startTime, cgroup: id.app || id.flatpakId ? id.cgroup : null },
      target: { destination, address: formatAddress(req.family, req.addr), port: req.port, proto: req.proto, host: null },
      needs: needsFromMask(req.needs), rule, ask, held,
    });
  }

  private askUser(req: DecideRequest, id: AppIdentity, own: Wish, rule: Rule, ask: Extract<Rule['action'], { kind: 'ask' }>, destination: string): DeferredAnswer<DecideResponse> {
    const answer = this.promptFor(req, id, rule, ask, destination, true).then((outcome) => {
      if (outcome.by !== 'agent') return this.respond(req, id, this.decideFor(id, own, req.family, req.addr, { proto: req.proto, port: req.port }));
      const a = outcome.answer;
      const policy: AppRule = 'deny' in a.choice ? { name: 'answer', match: {}, uplinks: [], deny: [], needs: [] } : { name: 'answer', match: {}, uplinks: [a.choice.uplink], deny: [], needs: [] };
      const d = this.decideFor(id, own, req.family, req.addr, { proto: req.proto, port: req.port, policy });
      // "This time" holds for this connection only: the library must not keep it.
      return this.respond(req, id, d, a.scope === 'once' ? 0 : undefined);
    });
    return new DeferredAnswer(ask.timeoutMs + PENDING_SLACK_MS, answer);
  }

  /**
   * A connect the kernel reported (src/daemon/apps.ts: an app whose rules ask, with or without
   * the library: a static binary too). It was not held: the rule's default carried it. When the
   * rule that decides for it asks, the user is asked all the same; an answer that lasts becomes
   * a rule, which the kernel applies to the app's sockets from then on. Connects that share a
   * prompt (the same app and destination, held by the library or not) share its answer.
   */
  connectReported(c: AppConnect): void {
    const unit = c.cgroup.unit;
    if (!this.asker || unit === null || c.port === DNS_PORT) return;
    const parsed = parseAddress(c.address);
    if (!parsed) return;
    const destination = this.world.learned.destinationOf(parsed.family, parsed.bytes) ?? destinationOfAddress(this.world.config.destinations, parsed.family, parsed.bytes);
    // The kernel matches cgroups, never executables: the rule as the kernel saw it.
    const facts: AppFacts = { uid: c.cgroup.uid ?? c.uid, exe: null, unit: unit.unit, app: unit.appId, flatpakId: unit.flatpakId };
    const proto = c.proto === 'udp' ? 'udp' : 'tcp';
    const rule = this.world.rules.evaluate({ facts, destination, proto, port: c.port, needs: [] });
    if (rule?.action.kind !== 'ask') return;
    // The process as procfs shows it (its executable, its cgroup), for the prompt and "until it exits".
    const shown = this.identifyPid({ pid: c.pid, uid: c.uid, gid: -1 });
    void this.prompt({
      shown, facts, until: { pid: c.pid, startTime: shown.startTime, cgroup: shown.cgroup },
      target: { destination, address: c.address, port: c.port, proto, host: null }, needs: [], rule, ask: rule.action, held: false,
    });
  }

  /** The uplinks a prompt offers: those that reach the destination and the rule does not rule out, the rule's order first. */
  private choicesFor(rule: Rule, destination: string, id: AppIdentity): Prompt['choices'] {
    const dest = this.world.config.destinations.find((d) => d.name === destination);
    const listed = rule.action.kind === 'ask' && (rule.action.default.kind === 'use' || rule.action.default.kind === 'only') ? rule.action.default.uplinks : [];
    const offered = this.world.uplinks.filter((u) => dest?.via.includes(u.spec.name) && !rule.never.includes(u.spec.name));
    const place = (u: UplinkState): number => (listed.includes(u.spec.name) ? listed.indexOf(u.spec.name) : listed.length);
    return offered.sort((a, b) => place(a) - place(b) || b.spec.preference - a.spec.preference).map((u) => {
      const left = this.budgets?.left(id.uid, appKeyName(id), u.spec.name) ?? null;
      return {
        uplink: u.spec.name, kind: u.spec.kind, status: u.status, cost: { ...u.spec.cost }, metered: u.spec.metered, roaming: u.spec.roaming,
        ...(left !== null ? { budgetLeft: formatBytes(left) } : {}),
      };
    });
  }

  /**
   * A DNS query from a session pinned to an uplink, to a resolver that uplink does not reach
   * (the one in resolv.conf): it leaves by the uplink all the same, where the session's nftables
   * redirect sends it to the uplink's own DNS server (src/backstop/nft.ts). So a pinned session
   * resolves through its uplink, whatever resolv.conf says. Only while that uplink has a server
   * of the family (else the redirect does not exist, and the denial stands).
   */
  private pinnedDns(id: AppIdentity, family: Family): Decision | undefined {
    const session = this.sessions.ofCgroup(id.cgroup);
    if (session?.uplink === undefined) return undefined;
    const u = findUplink(this.world.uplinks, session.uplink);
    if (!u || u.status !== 'active' || !u.link || !u.dns.some((a) => isIP(a) === family)) return undefined;
    return { action: 'steer', destination: INTERNET, uplink: u, reason: `DNS of a session pinned to ${u.spec.name}: redirected to its resolver` };
  }

  /** Denials are logged once per app, target and reason every 10 s (the library caches them anyway). */
  private logDenial(id: AppIdentity, target: string, d: Extract<Decision, { action: 'deny' }>): void {
    const key = `${id.exe}|${id.uid}|${target}|${d.reason}`;
    const now = Date.now();
    if ((this.logged.get(key) ?? 0) > now - 10_000) return;
    if (this.logged.size > 4096) this.logged.clear();
    this.logged.set(key, now);
    this.log.info('connection denied', { pid: id.pid, uid: id.uid, exe: id.exe, to: target, destination: d.destination, errno: d.err, why: d.reason });
  }

  async resolve(req: ResolveRequest, caller: Caller): Promise<ResolveResponse> {
    const base = { seq: req.seq, generation: this.generation.value, ttlMs: 0, uplink: '', addrs: [] };
    const config = this.world.config;
    const destName = destinationOfName(config.destinations, req.name);
    if (!destName || destName === INTERNET) return { ...base, status: WM_RESOLVE.NOT_OURS };
    const id = this.who(caller);
    const own: Wish = { ...(req.uplink ? { uplink: req.uplink } : {}), needs: needsFromMask(req.needs), deny: [] };
    // Which uplink would carry this destination for this app: its DNS answers for it.
    const families: Family[] = req.family === 6 ? [6] : req.family === 4 ? [4] : [4, 6];
    let uplink;
    let refused = false;
    for (const f of families) {
      const d = this.decideFor(id, own, f, new Uint8Array(f === 4 ? 4 : 16), { destination: destName }).decision;
      if (d.action === 'deny' && d.err === 'EACCES') refused = true;
      if (d.action === 'steer') { uplink = d.uplink; break; }
      if (d.action === 'pass') {
        // No opinion: the uplink the destination's routing rule uses for this family.
        const dest = config.destinations.find((x) => x.name === destName);
        uplink = dest ? bestUplink(this.world.uplinks, dest, f) : undefined;
        if (uplink) break;
      }
    }
    if (!uplink) {
      this.log.info('name not resolved: no uplink may reach its destination', { name: req.name, destination: destName, pid: caller.pid, refused });
      return { ...base, status: refused ? WM_RESOLVE.REFUSED : WM_RESOLVE.DNS_FAILED };
    }
    if (uplink.dns.length === 0) {
      this.log.warn('name not resolved: the uplink has no DNS servers (none configured, none announced)', { name: req.name, uplink: uplink.spec.name });
      return { ...base, status: WM_RESOLVE.DNS_FAILED, uplink: uplink.spec.name };
    }
    const cacheKey = `${req.name.toLowerCase()}|${req.family}|${uplink.spec.name}`;
    const cached = this.dnsCache.get(cacheKey);
    if (cached && cached.until > Date.now()) return { ...cached.answer, seq: req.seq, generation: this.generation.value };
    const answer = await resolveVia({
      name: req.name, family: req.family, servers: uplink.dns, mark: uplink.mark, timeoutMs: DNS_TIMEOUT_MS,
    });
    if (answer.status !== 'ok' || answer.addrs.length === 0) {
      return { ...base, status: answer.status === 'nxdomain' ? WM_RESOLVE.NO_NAME : WM_RESOLVE.DNS_FAILED, uplink: uplink.spec.name };
    }
    const ttlMs = Math.max(1, Math.min(answer.ttlSec, 3600)) * 1000;
    const addrs = answer.addrs.flatMap((a) => {
      const p = parseAddress(a.address);
      return p ? [{ family: p.family, addr: p.bytes }] : [];
    });
    const res: ResolveResponse = { ...base, status: WM_RESOLVE.RESOLVED, ttlMs, uplink: uplink.spec.name, addrs };
    this.dnsCache.set(cacheKey, { answer: res, until: Date.now() + ttlMs });
    // The world routes new addresses (and again once they expire); a library may hold a
    // decision for one of them made before we knew its destination.
    if (this.world.learned.learn(answer.addrs.map((a) => a.address), destName, ttlMs) && this.generation.opened) this.generation.bump();
    this.log.debug('resolved', { name: req.name, uplink: uplink.spec.name, addrs: answer.addrs.map((a) => a.address) });
    return res;
  }
}
