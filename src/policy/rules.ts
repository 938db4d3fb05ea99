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
 *   1. the app: each of exe, unit, app, flatpak, name counts 2 when exact and 1 when a glob;
 *      uid counts 1 (so "Firefox" beats "uid 1000", an exact exe beats "/usr/bin/*");
 *   2. a destination given; 3. a port given; 4. a protocol given; 5. the number of needs matched.
 * Order among equally specific rules: the rules added from the CLI and the remembered answers
 * first (newest first: the user's last word), then the config file's, in file order.
 *
 * Compiled ({@link RuleSet}): each rule is filed under its most selective exact app field (an
 * executable, a Flatpak ID, an app ID, a unit, a name, a uid), the rest in one general list,
 * every list in decision order. A query looks only at the lists its facts select, and stops in
 * each at the first rule that matches: with 10,000 rules, a few microseconds (npm run bench).
 */
import type { NeedName } from '../config/schema.js';
import { globMatch, isGlob } from '../glob.js';
import type { AppFacts, AppRule } from './app.js';

export type RuleSource = 'config' | 'cli' | 'answer';
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
  readonly match: RuleMatch;
  readonly action: RuleAction;
  /** Uplinks never to use, whatever the action lists. */
  readonly never: readonly string[];
  /** Needs every connection under this rule has (added to what the program asks for). */
  readonly needs: readonly NeedName[];
  /** Until when it holds (ms since the epoch; an answer "for N minutes"); absent: for good. */
  readonly expiresAt?: number;
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
    if (p !== undefined) app += isGlob(p) ? 1 : 2;
  }
  if (m.uid !== undefined) app += 1;
  return app * 10_000 + (m.destination !== undefined ? 1000 : 0) + (m.port !== undefined ? 100 : 0)
    + (m.proto !== undefined ? 10 : 0) + Math.min(m.needs?.length ?? 0, 9);
}

/** Why a rule does not match a query (the first field that differs), or undefined when it matches. */
export function mismatch(r: Rule, q: RuleQuery, now: number): string | undefined {
  const m = r.match;
  if (r.expiresAt !== undefined && r.expiresAt <= now) return 'expired';
  for (const field of APP_FIELDS) {
    const p = m[field];
    if (p === undefined) continue;
    const v = factOf(q.facts, field);
    if (v === null || !globMatch(p, v)) return `${field} ${v ?? '(unknown)'} does not match ${p}`;
  }
  if (m.uid !== undefined && m.uid !== q.facts.uid) return `uid ${q.facts.uid} is not ${m.uid}`;
  if (m.destination !== undefined && m.destination !== q.destination) return `destination ${q.destination} is not ${m.destination}`;
  if (m.proto !== undefined && m.proto !== q.proto) return `protocol ${q.proto ?? '(any)'} is not ${m.proto}`;
  if (m.port !== undefined && m.port !== q.port) return `port ${q.port ?? '(any)'} is not ${m.port}`;
  const missing = m.needs?.find((n) => !q.needs.includes(n));
  if (missing !== undefined) return `the program did not ask for ${missing}`;
  return undefined;
}

const SOURCE_ORDER: Record<RuleSource, number> = { answer: 0, cli: 0, config: 1 };

/**
 * Rules in decision order: most specific first; then stored rules (newest first) before the
 * config's (in file order). `stored` is in the order added (oldest first).
 */
export function ordered(config: readonly Rule[], stored: readonly Rule[]): Rule[] {
  const all = [...[...stored].reverse(), ...config];
  const pos = new Map(all.map((r, i) => [r, i]));
  return all.sort((a, b) => specificity(b.match) - specificity(a.match)
    || SOURCE_ORDER[a.source] - SOURCE_ORDER[b.source] || (pos.get(a) ?? 0) - (pos.get(b) ?? 0));
}

/** The most selective exact app field of a rule: the list it is filed under. */
function bucketOf(m: RuleMatch): string | undefined {
  for (const f of APP_FIELDS) {
    const p = m[f];
    if (p !== undefined && !isGlob(p)) return `${f}\0${p}`;
  }
  return m.uid !== undefined ? `uid\0${m.uid}` : undefined;
}

/** What one rule allows, as decide() and the kernel take it (an ask: its default, until answered). */
export function policyOfRule(r: Rule): AppRule | undefined {
  const a = r.action.kind === 'ask' ? r.action.default : r.action;
  const base = { name: r.id, match: {}, deny: r.never, needs: r.needs };
  switch (a.kind) {
    case 'pass': return r.never.length > 0 || r.needs.length > 0 ? base : undefined;
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

export class RuleSet {
  /** Every rule in decision order. */
  readonly rules: readonly Rule[];
  private readonly rank = new Map<Rule, number>();
  private readonly buckets = new Map<string, Rule[]>();
  private readonly general: Rule[] = [];
  private readonly policies = new Map<Rule, AppRule | undefined>();

  private constructor(rules: readonly Rule[]) {
    this.rules = rules;
    rules.forEach((r, i) => {
      this.rank.set(r, i);
      const b = bucketOf(r.match);
      if (b === undefined) this.general.push(r);
      else {
        let list = this.buckets.get(b);
        if (!list) this.buckets.set(b, (list = []));
        list.push(r);
      }
    });
  }

  static compile(config: readonly Rule[], stored: readonly Rule[] = []): RuleSet {
    return new RuleSet(ordered(config, stored));
  }

  static readonly EMPTY = new RuleSet([]);

  get size(): number {
    return this.rules.length;
  }

  /** The rule that decides this query (undefined: none; default routing). */
  evaluate(q: RuleQuery, now = Date.now()): Rule | undefined {
    let best: Rule | undefined;
    let bestRank = Infinity;
    const consider = (list: readonly Rule[] | undefined): void => {
      if (!list) return;
      for (const r of list) {
        const k = this.rank.get(r) ?? Infinity;
        if (k >= bestRank) return; // lists are in decision order: nothing later can win
        if (mismatch(r, q, now) === undefined) {
          best = r;
          bestRank = k;
          return;
        }
      }
    };
    const f = q.facts;
    for (const field of APP_FIELDS) {
      const v = factOf(f, field);
      if (v !== null) consider(this.buckets.get(`${field}\0${v}`));
    }
    consider(this.buckets.get(`uid\0${f.uid}`));
    consider(this.general);
    return best;
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
