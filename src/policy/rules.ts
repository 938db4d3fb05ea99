/**
 * Rules per app × destination (pure): which uplinks an app may use to reach a destination, in
 * what order, or whether to ask the user. decide() (src/decision/decide.ts) keeps only ranking
 * the candidate uplinks; this module says which rule decides and what it allows.
 *
 * A rule matches on the app (executable path or glob, systemd unit glob, desktop application ID
 * glob, Flatpak ID glob, uid, the app name `waymark apps` shows), the destination (by name),
 * optionally the protocol and port, and the needs the program asked for. Every field given must
 * match; a rule with no field at all matches everything. Its action:
 *   - use [a, b]: prefer a, then b; when both are down, any other uplink that reaches the destination;
 *   - only [a, b]: a, then b, and nothing else (fail rather than move);
 *   - deny: no uplink at all (EACCES);
 *   - pass: no opinion: default routing (exempts an app from a broader rule);
 *   - ask: the user is asked (src/daemon/prompts.ts); until answered, and with no answer by the
 *     timeout, its default action applies.
 * Besides, `never` lists uplinks the rule never uses, `needs` needs its connections have.
 *
 * Which rule decides (docs/rules.md): the most specific matching rule, then the one first in
 * order. Specificity, compared field by field in this order:
 *   1. the app: each of exe, unit, app, flatpak, name counts 3 when exact and 2 when a glob;
 *      uid counts 1 (so "Firefox" beats "uid 1000", an exact exe beats "/usr/bin/*", which
 *      beats "uid 1000");
 *   2. a destination given; 3. a port given; 4. a protocol given; 5. the number of needs matched.
 * Order among equally specific rules: the rules added from the CLI and the remembered answers
 * first (newest first: the user's last word), then the active profile's (src/profile/profile.ts),
 * then the config file's, in file order.
 *
 * Compiled ({@link RuleSet}): each rule is filed under its most selective exact app field (an
 * executable, a Flatpak ID, an app ID, a unit, a name, a uid), the rest in one general list,
 * every list in decision order. A query looks only at the lists its facts select, and stops in
 * each at the first rule that matches: with 10,000 rules, a few microseconds (npm run bench).
 */
import type { NeedName } from '../config/schema.js';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { compileGlob, globMatch, isGlob } from '../glob.js';
import { allowsUplink, narrow, type AppFacts, type AppRule } from './app.js';

export type RuleSource = 'config' | 'profile' | 'cli' | 'answer';
export type Proto = 'tcp' | 'udp';

export interface RuleMatch {
  /** Absolute path of the executable, or a glob of one. */
  readonly exe?: string;
  readonly unit?: string;
  /** The application ID of a desktop app unit. */
  readonly app?: string;
  readonly flatpak?: string;
  /** The app's name as `waymark apps` shows it ({@link appName}). */
  readonly name?: string;
  readonly uid?: number;
  readonly destination?: string;
  readonly proto?: Proto;
  readonly port?: number;
  /** Matches when the program asked for every one of these. */
  readonly needs?: readonly NeedName[];
}

/** What a rule does (ask's default is one of these). */
export type FixedAction =
  | { readonly kind: 'use'; readonly uplinks: readonly string[] }
  | { readonly kind: 'only'; readonly uplinks: readonly string[] }
  | { readonly kind: 'deny' }
  | { readonly kind: 'pass' };

export type RuleAction = FixedAction | { readonly kind: 'ask'; readonly default: FixedAction; readonly timeoutMs: number };

export interface Rule {
  /** Unique in a rule set: the config's rule name; "cli-N" and "answer-N" for the stored ones. */
  readonly id: string;
  readonly source: RuleSource;
  /** A profile's rule: the profile's name (source 'profile'). */
  readonly profile?: string;
  readonly match: RuleMatch;
  readonly action: RuleAction;
  /** Uplinks never to use, whatever the action lists. */
  readonly never: readonly string[];
  /** Needs every connection under this rule has (added to what the program asks for). */
  readonly needs: readonly NeedName[];
  /** Until when it holds (ms since the epoch; an answer "for N minutes"); absent: for good. */
  readonly expiresAt?: number;
  /**
   * Added by a user for their own apps (not root, not the waymark group): it can only narrow what
   * the other rules allow the app, never widen it (a user cannot lift a restriction the
   * administrator set for them by writing a more specific rule).
   */
  readonly bounded?: boolean;
}

/** What a decision is about: the app, where it goes and how. */
export interface RuleQuery {
  readonly facts: AppFacts;
  readonly destination: string;
  readonly proto?: Proto;
  readonly port?: number;
  /** What the program asked for. */
  readonly needs: readonly NeedName[];
}

const NO_NEEDS: readonly NeedName[] = Object.freeze([]);

/** The name `waymark apps` shows for an app: its Flatpak ID, else its desktop app ID, else its unit, else its executable's file name. */
export function appName(f: AppFacts): string | null {
  if (f.flatpakId) return f.flatpakId;
  if (f.app) return f.app;
  if (f.unit) return f.unit;
  if (f.exe) return f.exe.slice(f.exe.lastIndexOf('/') + 1);
  return null;
}

const APP_FIELDS = ['exe', 'flatpak', 'app', 'unit', 'name'] as const;
type AppField = (typeof APP_FIELDS)[number];

function factOf(f: AppFacts, field: AppField): string | null {
  switch (field) {
    case 'exe': return f.exe;
    case 'flatpak': return f.flatpakId;
    case 'app': return f.app ?? null;
    case 'unit': return f.unit;
    case 'name': return appName(f);
  }
}

/** Specificity as one number (higher: more specific), the fields of the module comment in order. */
export function specificity(m: RuleMatch): number {
  let app = 0;
  for (const f of APP_FIELDS) {
    const p = m[f];
    if (p !== undefined) app += isGlob(p) ? 2 : 3;
  }
  if (m.uid !== undefined) app += 1;
  return app * 10_000 + (m.destination !== undefined ? 1000 : 0) + (m.port !== undefined ? 100 : 0)
    + (m.proto !== undefined ? 10 : 0) + Math.min(m.needs?.length ?? 0, 9);
}

/** Why a rule does not match an app (the first field that differs, or its expiry), or undefined when it does. */
function appMismatch(r: Rule, f: AppFacts, now: number): string | undefined {
  const m = r.match;
  if (r.expiresAt !== undefined && r.expiresAt <= now) return 'expired';
  for (const field of APP_FIELDS) {
    const p = m[field];
    if (p === undefined) continue;
    const v = factOf(f, field);
    if (v === null || !globMatch(p, v)) return `${field} ${v ?? '(unknown)'} does not match ${p}`;
  }
  if (m.uid !== undefined && m.uid !== f.uid) return `uid ${f.uid} is not ${m.uid}`;
  return undefined;
}

/** A rule that decides whatever the protocol, port and needs (the kernel can apply it to every socket). */
const unconditional = (m: RuleMatch): boolean => m.proto === undefined && m.port === undefined && (m.needs?.length ?? 0) === 0;

/** Why a rule does not match a query (the first field that differs), or undefined when it matches. */
export function mismatch(r: Rule, q: RuleQuery, now: number): string | undefined {
  const m = r.match;
  const app = appMismatch(r, q.facts, now);
  if (app !== undefined) return app;
  if (m.destination !== undefined && m.destination !== q.destination) return `destination ${q.destination} is not ${m.destination}`;
  if (m.proto !== undefined && m.proto !== q.proto) return `protocol ${q.proto ?? '(any)'} is not ${m.proto}`;
  if (m.port !== undefined && m.port !== q.port) return `port ${q.port ?? '(any)'} is not ${m.port}`;
  const missing = m.needs?.find((n) => !q.needs.includes(n));
  if (missing !== undefined) return `the program did not ask for ${missing}`;
  return undefined;
}

/** The active profile's rules rank with the config's (after the stored ones); they come first in the config's list. */
const SOURCE_ORDER: Record<RuleSource, number> = { answer: 0, cli: 0, profile: 1, config: 1 };

/**
 * Rules in decision order: most specific first; then stored rules (newest first) before the
 * config's (in file order). `stored` is in the order added (oldest first).
 */
export function ordered(config: readonly Rule[], stored: readonly Rule[]): Rule[] {
  const all = [...[...stored].reverse(), ...config].map((rule, pos) => ({ rule, pos, spec: specificity(rule.match), src: SOURCE_ORDER[rule.source] }));
  return all.sort((a, b) => b.spec - a.spec || a.src - b.src || a.pos - b.pos).map((x) => x.rule);
}

/** The most selective exact app field of a rule and its value: the list it is filed under. */
function bucketOf(m: RuleMatch): [BucketField, string | number] | undefined {
  for (const f of APP_FIELDS) {
    const p = m[f];
    if (p !== undefined && !isGlob(p)) return [f, p];
  }
  return m.uid !== undefined ? ['uid', m.uid] : undefined;
}

type BucketField = AppField | 'uid';

/** A rule compiled for the decision path: its rank and its tests, the cheap and selective ones first. */
interface Entry {
  readonly rule: Rule;
  readonly rank: number;
  /** Whether it matches a query (every field). */
  readonly test: (q: RuleQuery, now: number) => boolean;
  /** Whether it matches an app, whatever the destination, protocol, port and needs. */
  readonly appTest: (f: AppFacts, now: number) => boolean;
}

/** A pattern as a test: equality, or the glob's literal prefix and then its RegExp. */
function patternTest(p: string): (v: string) => boolean {
  if (!isGlob(p)) return (v) => v === p;
  const re = compileGlob(p);
  if (typeof re === 'string') return () => false;
  const literal = p.slice(0, p.search(/[*?[]/));
  return literal === '' ? (v) => re.test(v) : (v) => v.startsWith(literal) && re.test(v);
}

function compileEntry(rule: Rule, rank: number): Entry {
  const m = rule.match;
  const tests: ((f: AppFacts) => boolean)[] = [];
  for (const field of APP_FIELDS) {
    const p = m[field];
    if (p === undefined) continue;
    const t = patternTest(p);
    tests.push((f) => {
      const v = factOf(f, field);
      return v !== null && t(v);
    });
  }
  if (m.uid !== undefined) {
    const uid = m.uid;
    tests.push((f) => f.uid === uid);
  }
  const expires = rule.expiresAt;
  const appTest = (f: AppFacts, now: number): boolean => {
    if (expires !== undefined && expires <= now) return false;
    for (const t of tests) if (!t(f)) return false;
    return true;
  };
  const { destination, port, proto } = m;
  const needs = m.needs ?? NO_NEEDS;
  const test = (q: RuleQuery, now: number): boolean => (destination === undefined || destination === q.destination)
    && (port === undefined || port === q.port) && (proto === undefined || proto === q.proto)
    && (needs.length === 0 || needs.every((n) => q.needs.includes(n))) && appTest(q.facts, now);
  return { rule, rank, test, appTest };
}

/** The first entry of a list (in rank order) that matches and ranks before `before`. */
function firstIn(list: readonly Entry[] | undefined, q: RuleQuery, now: number, before: number): Entry | undefined {
  if (list === undefined) return undefined;
  for (const e of list) {
    if (e.rank >= before) return undefined; // in decision order: nothing later can win
    if (e.test(q, now)) return e;
  }
  return undefined;
}

/** An action in words, as the CLI and the agents show it ("use wifi, then cellular", "ask (30 s, then deny)"). */
export function describeAction(a: RuleAction): string {
  switch (a.kind) {
    case 'use': return a.uplinks.length > 0 ? `use ${a.uplinks.join(', then ')}` : 'default routing';
    case 'only': return a.uplinks.length > 0 ? `only ${a.uplinks.join(' or ')}` : 'deny';
    case 'deny': return 'deny';
    case 'pass': return 'default routing';
    case 'ask': return `ask (${Math.round(a.timeoutMs / 1000)} s, then ${describeAction(a.default)})`;
  }
}

/** What one rule allows, as decide() and the kernel take it (an ask: its default, until answered). */
export function policyOfRule(r: Rule): AppRule | undefined {
  const a = r.action.kind === 'ask' ? r.action.default : r.action;
  const base = { name: r.id, match: {}, deny: r.never, needs: r.needs, ...(r.action.kind === 'ask' ? { ask: true } : {}) };
  switch (a.kind) {
    case 'pass': return r.never.length > 0 || r.needs.length > 0 || base.ask ? base : undefined;
    case 'deny': return { ...base, uplinks: [] };
    case 'only': return { ...base, uplinks: a.uplinks };
    case 'use': return a.uplinks.length > 0 ? { ...base, prefer: a.uplinks } : base;
  }
}

/** One rule's verdict in an explanation. */
export interface Considered {
  readonly rule: Rule;
  /** Undefined: it matched (the first that did decides). */
  readonly skipped?: string;
}

/** Bound of {@link RuleSet.forKernel}'s memo (distinct sets of candidate rules, not apps). */
const KERNEL_MEMO = 4096;

export class RuleSet {
  /** Every rule in decision order. */
  readonly rules: readonly Rule[];
  private readonly entries: readonly Entry[];
  /** Per app field (those some rule names exactly), per value: the rules filed there. */
  private readonly buckets = new Map<BucketField, Map<string | number, Entry[]>>();
  /** The same, as an array (iterated on every decision). */
  private readonly bucketList: (readonly [BucketField, ReadonlyMap<string | number, readonly Entry[]>])[];
  /** The rules filed under no app field, per destination ('': any destination). */
  private readonly general = new Map<string, Entry[]>();
  private readonly policies = new Map<Rule, AppRule | undefined>();
  private readonly kernelMemo = new Map<string, AppRule>();
  /** Every uplink some destination is reached by. */
  private readonly routed: ReadonlySet<string>;

  /** The rules without the users' own (bounded) ones, which bound those (an ask counting as what it may answer: anything but its `never`). */
  private readonly bound: RuleSet | undefined;

  private constructor(rules: readonly Rule[], private readonly destinations: readonly DestinationSpec[], private readonly uplinks: readonly string[]) {
    this.rules = rules;
    this.bound = rules.some((r) => r.bounded === true)
      ? new RuleSet(rules.filter((r) => r.bounded !== true).map((r) => (r.action.kind === 'ask' ? { ...r, action: { kind: 'use', uplinks: [] } } : r)), destinations, uplinks)
      : undefined;
    this.routed = new Set(destinations.flatMap((d) => d.via));
    this.entries = rules.map((r, i) => compileEntry(r, i));
    for (const e of this.entries) {
      const b = bucketOf(e.rule.match);
      let list: Entry[] | undefined;
      if (b === undefined) {
        const d = e.rule.match.destination ?? '';
        list = this.general.get(d);
        if (!list) this.general.set(d, (list = []));
      } else {
        let byValue = this.buckets.get(b[0]);
        if (!byValue) this.buckets.set(b[0], (byValue = new Map<string | number, Entry[]>()));
        list = byValue.get(b[1]);
        if (!list) byValue.set(b[1], (list = []));
      }
      list.push(e);
    }
    this.bucketList = [...this.buckets];
  }

  /** The rules of the config and the stored ones (CLI, answers), for the config's destinations and uplinks. */
  static compile(config: readonly Rule[], stored: readonly Rule[], world: { readonly destinations: readonly DestinationSpec[]; readonly uplinks: readonly { readonly name: string }[] }): RuleSet {
    return new RuleSet(ordered(config, stored), world.destinations, world.uplinks.map((u) => u.name));
  }

  static readonly EMPTY = new RuleSet([], [], []);

  /** Whether some rule can apply in the kernel (one that names no executable: those need the library or a session). */
  get someKernelApplicable(): boolean {
    return this.rules.some((r) => r.match.exe === undefined);
  }

  /** The lists an app's facts select: its buckets, then the general lists (destination `d` and any; all when d is undefined). */
  private listsFor(f: AppFacts, d: string | undefined): (readonly Entry[])[] {
    const out: (readonly Entry[])[] = [];
    for (const [field, byValue] of this.buckets) {
      const v = field === 'uid' ? f.uid : factOf(f, field);
      const l = v === null ? undefined : byValue.get(v);
      if (l) out.push(l);
    }
    if (d === undefined) out.push(...this.general.values());
    else {
      const mine = this.general.get(d);
      const any = this.general.get('');
      if (mine) out.push(mine);
      if (any) out.push(any);
    }
    return out;
  }

  /** The rule that decides this query (undefined: none; default routing). On every first decision: no allocation. */
  evaluate(q: RuleQuery, now = Date.now()): Rule | undefined {
    const f = q.facts;
    let best: Entry | undefined;
    for (const [field, byValue] of this.bucketList) {
      const v = field === 'uid' ? f.uid : factOf(f, field);
      if (v === null) continue;
      const e = firstIn(byValue.get(v), q, now, best === undefined ? Infinity : best.rank);
      if (e) best = e;
    }
    const mine = firstIn(this.general.get(q.destination), q, now, best === undefined ? Infinity : best.rank);
    if (mine) best = mine;
    const any = firstIn(this.general.get(''), q, now, best === undefined ? Infinity : best.rank);
    if (any) best = any;
    return best?.rule;
  }

  /** The rules that match an app's facts for some destination, protocol, port or needs, in decision order. */
  candidates(f: AppFacts, now = Date.now()): Rule[] {
    const out = this.listsFor(f, undefined).flat().filter((e) => e.appTest(f, now));
    return out.sort((a, b) => a.rank - b.rank).map((e) => e.rule);
  }

  /**
   * What the policy lets an app do on any socket, whatever its destination: what the kernel
   * enforces for programs that do not ask (src/policy/treatment.ts, the app cgroups and sessions).
   *   - its order of preference is its rule's for the Internet (the mark its new sockets get);
   *   - an uplink is denied only where no destination's rule lets the app use it: for each
   *     destination, the rules that could decide there (up to the first that decides whatever
   *     the port and protocol), any of them allowing it, or no rule deciding at all;
   *   - `ask`: some rule asks (the kernel then reports its connects: issue 9's static binaries).
   * Undefined: no rule matches the app at all. Memoised per set of candidate rules.
   */
  forKernel(f: AppFacts, now = Date.now()): AppRule | undefined {
    const cands = this.candidates(f, now);
    if (cands.length === 0) return undefined;
    const key = cands.map((r) => r.id).join('\0');
    const hit = this.kernelMemo.get(key);
    if (hit) return hit;
    const allows = (r: Rule | undefined, u: string): boolean => allowsUplink(r === undefined ? undefined : this.policyOf(r), u);
    /** The rules that could decide for destination `d` (undefined: an uplink no destination is reached by), and whether one always does. */
    const deciding = (d: string | undefined): { rules: Rule[]; always: boolean } => {
      const rules: Rule[] = [];
      for (const r of cands) {
        if (r.match.destination !== undefined && r.match.destination !== d) continue;
        rules.push(r);
        if (unconditional(r.match)) return { rules, always: true };
      }
      return { rules, always: false };
    };
    const allowed = new Set<string>();
    for (const d of this.destinations) {
      const { rules, always } = deciding(d.name);
      for (const u of d.via) if (!always || rules.some((r) => allows(r, u))) allowed.add(u);
    }
    const elsewhere = deciding(undefined);
    for (const u of this.uplinks) {
      if (this.routed.has(u)) continue;
      if (!elsewhere.always || elsewhere.rules.some((r) => allows(r, u))) allowed.add(u);
    }
    const internet = deciding(INTERNET);
    const first = internet.always ? internet.rules[internet.rules.length - 1] : undefined;
    const ip = first === undefined ? undefined : this.policyOf(first);
    const order = ip?.uplinks ?? ip?.prefer;
    const out: AppRule = {
      name: first?.id ?? cands[0]?.id ?? '',
      match: {},
      ...(order ? { prefer: order } : {}),
      deny: this.uplinks.filter((u) => !allowed.has(u)),
      needs: ip?.needs ?? [],
      ...(cands.some((r) => r.action.kind === 'ask') ? { ask: true } : {}),
    };
    // A user's own rule among them: no more than the other rules allow.
    const bounded = this.bound && cands.some((r) => r.bounded === true) ? narrow([out, this.bound.forKernel(f, now)]) ?? out : out;
    if (this.kernelMemo.size >= KERNEL_MEMO) this.kernelMemo.clear();
    this.kernelMemo.set(key, bounded);
    return bounded;
  }

  /** {@link forKernel} for a process and the facts around it (a session's: its starter, its program), narrowed together. */
  kernelPolicy(f: AppFacts, more: readonly AppFacts[] = [], now = Date.now()): AppRule | undefined {
    return more.length === 0 ? this.forKernel(f, now) : narrow([f, ...more].map((x) => this.forKernel(x, now)));
  }

  /**
   * The decision's rules for one socket: the rule that decides for the process's own facts (the
   * one an `ask` comes from), and the policy of every rule that binds it, narrowed with the rules
   * of the facts around it (a session's) for the same destination, protocol, port and needs.
   */
  decideFor(f: AppFacts, more: readonly AppFacts[], at: Omit<RuleQuery, 'facts'>, now = Date.now()): { rule: Rule | undefined; policy: AppRule | undefined } {
    // Object literals, not spreads: this is on every first decision (spreads cost µs on Node 20).
    const rule = this.evaluate({ facts: f, destination: at.destination, proto: at.proto, port: at.port, needs: at.needs }, now);
    const own = rule?.bounded === true && this.bound ? narrow([this.policyOf(rule), this.bound.decideFor(f, [], at, now).policy]) : this.policyOf(rule);
    if (more.length === 0) return { rule, policy: own };
    const others = more.map((x) => this.decideFor(x, [], at, now).policy);
    return { rule, policy: narrow([own, ...others]) };
  }

  /** The uids rules name without naming an app: the kernel's per-uid entries (wm_uids). */
  uidOnly(): number[] {
    const out = new Set<number>();
    for (const r of this.rules) {
      const m = r.match;
      if (m.uid !== undefined && m.exe === undefined && m.unit === undefined && m.app === undefined && m.flatpak === undefined && m.name === undefined) out.add(m.uid);
    }
    return [...out];
  }

  /**
   * Each rule a not yet classified app of this uid (null: unknown) could turn out to match, as
   * what it would deny in the kernel (src/policy/treatment.ts: mostRestrictive makes one of them):
   * a rule for one destination (or port, protocol, needs) only the uplinks of that destination
   * it disallows; a rule for everything, its policy. Rules naming an executable are left out
   * (the kernel does not see executables).
   */
  pendingRules(uid: number | null, now = Date.now()): AppRule[] {
    const out: AppRule[] = [];
    for (const r of this.rules) {
      if (r.match.exe !== undefined || (uid !== null && r.match.uid !== undefined && r.match.uid !== uid)) continue;
      if (r.expiresAt !== undefined && r.expiresAt <= now) continue;
      const p = this.policyOf(r);
      if (p === undefined) continue;
      if (r.match.destination === undefined && unconditional(r.match)) {
        out.push(p);
        continue;
      }
      const via = this.destinations.find((d) => d.name === r.match.destination)?.via ?? this.uplinks;
      const deny = via.filter((u) => !allowsUplink(p, u));
      if (deny.length > 0 || p.ask) out.push({ name: r.id, match: {}, deny, needs: [], ...(p.ask ? { ask: true } : {}) });
    }
    return out;
  }

  /** What the deciding rule allows (memoised per rule). */
  policyOf(rule: Rule | undefined): AppRule | undefined {
    if (rule === undefined) return undefined;
    if (!this.policies.has(rule)) this.policies.set(rule, policyOfRule(rule));
    return this.policies.get(rule);
  }

  /** Every rule in decision order with why it was skipped, up to the one that decides. */
  explain(q: RuleQuery, now = Date.now()): Considered[] {
    const out: Considered[] = [];
    for (const rule of this.rules) {
      const skipped = mismatch(rule, q, now);
      out.push(skipped === undefined ? { rule } : { rule, skipped });
      if (skipped === undefined) break;
    }
    return out;
  }

  /** The rules that could decide for an app with these facts, for some destination, protocol, port or needs (in decision order). */
  forApp(facts: AppFacts, now = Date.now()): Rule[] {
    return this.rules.filter((r) => mismatch(r, { facts, destination: r.match.destination ?? '', ...(r.match.proto ? { proto: r.match.proto } : {}),
      ...(r.match.port !== undefined ? { port: r.match.port } : {}), needs: r.match.needs ?? NO_NEEDS }, now) === undefined);
  }
}
