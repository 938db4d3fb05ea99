/**
 * The rules that are not in the config file: those added from the CLI (`waymark rules add`) and
 * the remembered answers to prompts. Persisted in the state file (`rules`, written atomically by
 * src/daemon/state.ts) and handed to the world (World.setStoredRules), which recompiles the rule
 * set and has every part follow it.
 *
 *   - Ids: "cli-N" and "answer-N", N counting up across restarts (kept with the rules).
 *   - An answer "for N minutes" carries its expiry (persisted: a restart does not ask again); an
 *     answer "until the app exits" is kept in memory only, with the process (pid and start time)
 *     or the app cgroup it was given for, and goes when that does (checked by {@link prune}, on
 *     every app leaving and once a minute).
 *   - A new answer replaces a stored one with the same match (the user's last word).
 *   - Bounds: at most {@link MAX_STORED_PER_USER} stored rules per owner (root: {@link MAX_STORED}
 *     in all); beyond, the oldest answers of that owner go first; CLI rules are refused.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTimeOf } from '../identity/app.js';
import { z } from 'zod';
import { askSchema, fixedActionSchema, NEED_NAMES, ruleMatchSchema } from '../config/schema.js';
import { fixedAction } from '../config/load.js';
import { errorMessage } from '../errors.js';
import type { Rule, RuleMatch } from '../policy/rules.js';
import type { Logger } from './log.js';
import type { World } from './world.js';

export const MAX_STORED = 20_000;
export const MAX_STORED_PER_USER = 2_000;
const PRUNE_MS = 60_000;

const nameRe = /^[a-z][a-z0-9_-]{0,30}$/;
const uplinkName = z.string().regex(nameRe);

/** A rule's match as stored and as `rules add` takes it (user names already resolved). */
export const matchSchema = ruleMatchSchema;

export const actionSchema = z.union([fixedActionSchema, z.strictObject({ ask: askSchema })]);

export const storedRuleSchema = z.strictObject({
  id: z.string().regex(/^(cli|answer)-\d{1,9}$/),
  source: z.enum(['cli', 'answer']),
  match: matchSchema,
  action: actionSchema,
  never: z.array(uplinkName).max(32).default([]),
  needs: z.array(z.enum(NEED_NAMES)).max(6).default([]),
  expiresAt: z.number().int().nonnegative().optional(),
  /** Who added it (an answer: who answered). */
  owner: z.number().int().nonnegative(),
  /** Added by an unprivileged user: it only narrows what the other rules allow (src/policy/rules.ts). */
  bounded: z.boolean().optional(),
  addedAt: z.string().max(40),
});
export type PersistedRule = z.infer<typeof storedRuleSchema>;
export type ActionIn = z.infer<typeof actionSchema>;

export interface StoredRule extends Rule {
  readonly source: 'cli' | 'answer';
  readonly owner: number;
  readonly addedAt: string;
  /** Scope "until the app exits": not persisted. */
  readonly until?: { readonly pid: number; readonly startTime: string | null; readonly cgroup: string | null };
  /** Not persisted (an answer for this time). */
  readonly transient?: boolean;
}

export function ruleAction(a: ActionIn): Rule['action'] {
  if (typeof a === 'object' && 'ask' in a) return { kind: 'ask', default: fixedAction(a.ask.default), timeoutMs: a.ask.timeout * 1000 };
  return fixedAction(a);
}

/** The stored shape of an action (as `rules add` and the state file write it). */
export function actionIn(a: Rule['action']): ActionIn {
  const fixed = (f: Exclude<Rule['action'], { kind: 'ask' }>): z.infer<typeof fixedActionSchema> =>
    f.kind === 'deny' || f.kind === 'pass' ? f.kind : f.kind === 'use' ? { use: [...f.uplinks] } : { only: [...f.uplinks] };
  return a.kind === 'ask' ? { ask: { default: fixed(a.default), timeout: Math.round(a.timeoutMs / 1000) } } : fixed(a);
}

/** A match as the state file holds it (mutable arrays for the schema's type). */
function storedMatch(m: RuleMatch): PersistedRule['match'] {
  const { needs, ...rest } = m;
  return needs ? { ...rest, needs: [...needs] } : rest;
}

const sameMatch = (a: RuleMatch, b: RuleMatch): boolean => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

export interface NewRule {
  readonly source: 'cli' | 'answer';
  readonly match: RuleMatch;
  readonly action: Rule['action'];
  readonly never?: readonly string[];
  readonly needs?: Rule['needs'];
  readonly expiresAt?: number;
  readonly owner: number;
  readonly until?: StoredRule['until'];
  /** Kept in memory only (an answer for this time: it expires within seconds). */
  readonly transient?: boolean;
  /** Added by an unprivileged user for their own apps: it only narrows (Rule.bounded). */
  readonly bounded?: boolean;
}

export class RuleStore {
  private rules: StoredRule[] = [];
  private next = 1;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly world: Pick<World, 'setStoredRules'>,
    private readonly persist: (rules: PersistedRule[], next: number) => Promise<void>,
    private readonly log: Logger,
    private readonly opts: { readonly now?: () => number; readonly procRoot?: string; readonly cgroupMount?: string } = {},
  ) {
    this.timer = setInterval(() => void this.prune(), PRUNE_MS).unref();
  }

  /** Takes the rules of the state file (those that no longer parse are dropped and logged). */
  async load(saved: readonly unknown[], next: number): Promise<void> {
    const ok: StoredRule[] = [];
    saved.forEach((raw, i) => {
      const p = storedRuleSchema.safeParse(raw);
      if (!p.success) {
        this.log.warn('stored rule unreadable; dropped', { index: i, why: p.error.issues.map((x) => `${x.path.join('.')}: ${x.message}`).join('; ') });
        return;
      }
      const r = p.data;
      ok.push({ id: r.id, source: r.source, match: r.match, action: ruleAction(r.action), never: r.never, needs: r.needs, owner: r.owner, addedAt: r.addedAt,
        ...(r.expiresAt !== undefined ? { expiresAt: r.expiresAt } : {}), ...(r.bounded === true ? { bounded: true } : {}) });
    });
    this.rules = ok;
    this.next = Math.max(next, ...ok.map((r) => Number(r.id.split('-')[1]) + 1), 1);
    await this.publish(false);
  }

  all(): readonly StoredRule[] {
    return this.rules;
  }

  /** Adds a rule; resolves with it once the world (and the kernel) follow and it is on disk. */
  async add(n: NewRule): Promise<StoredRule> {
    const mine = this.rules.filter((r) => r.owner === n.owner);
    if (n.owner !== 0 && mine.length >= MAX_STORED_PER_USER || this.rules.length >= MAX_STORED) {
      const oldest = mine.find((r) => r.source === 'answer');
      if (n.source === 'cli' || oldest === undefined) throw new Error(`too many stored rules (at most ${MAX_STORED_PER_USER} per user, ${MAX_STORED} in all)`);
      this.rules = this.rules.filter((r) => r !== oldest);
    }
    const rule: StoredRule = {
      id: `${n.source}-${this.next++}`, source: n.source, match: n.match, action: n.action, never: n.never ?? [], needs: n.needs ?? [],
      owner: n.owner, addedAt: new Date(this.now()).toISOString(),
      ...(n.expiresAt !== undefined ? { expiresAt: n.expiresAt } : {}), ...(n.until ? { until: n.until } : {}), ...(n.transient ? { transient: true } : {}),
      ...(n.bounded === true ? { bounded: true } : {}),
    };
    // It goes when it expires (prune also runs every minute): the kernel's copy with it.
    if (n.expiresAt !== undefined) setTimeout(() => void this.prune(), Math.max(0, n.expiresAt - this.now()) + 5).unref();
    // A new lasting answer for the same app and destination replaces the last one.
    if (n.source === 'answer' && !n.transient) this.rules = this.rules.filter((r) => !(r.source === 'answer' && r.owner === n.owner && sameMatch(r.match, n.match)));
    this.rules = [...this.rules, rule];
    await this.publish(true);
    this.log.info('rule added', { id: rule.id, source: rule.source, owner: rule.owner, match: JSON.stringify(rule.match), action: rule.action.kind });
    return rule;
  }

  /** Removes a stored rule; false when there is none of that id. Who may is the caller's check. */
  async remove(id: string): Promise<boolean> {
    const before = this.rules.length;
    this.rules = this.rules.filter((r) => r.id !== id);
    if (this.rules.length === before) return false;
    await this.publish(true);
    this.log.info('rule removed', { id });
    return true;
  }

  /** Drops expired rules and those whose app has exited; resolves once the world follows. */
  async prune(): Promise<void> {
    const now = this.now();
    const keep = this.rules.filter((r) => (r.expiresAt === undefined || r.expiresAt > now) && !this.gone(r));
    if (keep.length === this.rules.length) return;
    this.rules = keep;
    await this.publish(true).catch((e: unknown) => this.log.error('cannot update the stored rules', { error: errorMessage(e) }));
  }

  close(): void {
    clearInterval(this.timer);
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Whether the app an answer "until the app exits" was given for has exited: its cgroup is gone, else its process. */
  private gone(r: StoredRule): boolean {
    const u = r.until;
    if (!u) return false;
    if (u.cgroup !== null && this.opts.cgroupMount !== undefined) return !existsSync(join(this.opts.cgroupMount, u.cgroup));
    try {
      const stat = readFileSync(`${this.opts.procRoot ?? '/proc'}/${u.pid}/stat`, 'latin1');
      return u.startTime !== null && startTimeOf(stat) !== u.startTime;
    } catch {
      return true;
    }
  }

  private async publish(save: boolean): Promise<void> {
    await this.world.setStoredRules(this.rules);
    if (!save) return;
    const persisted = this.rules.filter((r) => r.until === undefined && r.transient !== true).map((r): PersistedRule => ({
      id: r.id, source: r.source, match: storedMatch(r.match), action: actionIn(r.action), never: [...r.never], needs: [...r.needs], owner: r.owner, addedAt: r.addedAt,
      ...(r.expiresAt !== undefined ? { expiresAt: r.expiresAt } : {}), ...(r.bounded === true ? { bounded: true } : {}),
    }));
    await this.persist(persisted, this.next);
  }
}
