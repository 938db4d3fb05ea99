/** Apps as the user described them, matching a calling process against them, and what that allows. */
import type { NeedName } from '../config/schema.js';
import { globMatch } from '../glob.js';

/** Every field given must match; unit, app and flatpak are globs (src/glob.ts). */
export interface AppMatch {
  readonly exe?: string;
  readonly unit?: string;
  /** The application ID of a desktop app unit (src/identity/app.ts: appOfUnit). */
  readonly app?: string;
  readonly flatpak?: string;
  readonly uid?: number;
}

export interface AppRule {
  readonly name: string;
  readonly match: AppMatch;
  /** Allowed uplinks in order of preference; undefined: any uplink not denied. */
  readonly uplinks?: readonly string[];
  /** Preferred uplinks in order, with every other allowed uplink after them (a rule's `use`); ignored when `uplinks` is given. */
  readonly prefer?: readonly string[];
  readonly deny: readonly string[];
  readonly needs: readonly NeedName[];
  /** Its apps' connects are to be asked about: the kernel reports them to the daemon (WM_T_ASK). */
  readonly ask?: boolean;
}

/** The kernel-verified facts about a calling process that rules can match. */
export interface AppFacts {
  readonly uid: number;
  readonly exe: string | null;
  readonly unit: string | null;
  /** The application ID of the desktop app unit it runs in (absent: unknown, as null). */
  readonly app?: string | null;
  readonly flatpakId: string | null;
}

const globOr = (pattern: string | undefined, value: string | null | undefined): boolean =>
  pattern === undefined || (value != null && globMatch(pattern, value));

export function matches(m: AppMatch, app: AppFacts): boolean {
  return (m.exe === undefined || m.exe === app.exe)
    && globOr(m.unit, app.unit)
    && globOr(m.app, app.app)
    && globOr(m.flatpak, app.flatpakId)
    && (m.uid === undefined || m.uid === app.uid);
}

/** The first rule that matches, in config order (put specific rules first). */
export function ruleFor(rules: readonly AppRule[], app: AppFacts): AppRule | undefined {
  return rules.find((r) => matches(r.match, app));
}

const NONE: readonly AppFacts[] = Object.freeze([]);

/**
 * What the policy allows for a process: the rule of its own facts and, when more are known (the
 * starter of the session it runs in, the program that session was started for, the sessions
 * around that one), the rules of each of those too, all at once. Every rule applies: a further
 * fact can only narrow what is allowed, never select a more permissive rule instead. The one
 * place that says this, for the decision path and for sessions (their check at start and their
 * kernel backstop) alike. Undefined when no rule matches; the matching rule itself when one does.
 */
export function policyFor(rules: readonly AppRule[], app: AppFacts, more: readonly AppFacts[] = NONE): AppRule | undefined {
  const first = ruleFor(rules, app);
  if (more.length === 0 || rules.length === 0) return first;
  const found: AppRule[] = first ? [first] : [];
  for (const f of more) {
    const r = ruleFor(rules, f);
    if (r && !found.includes(r)) found.push(r);
  }
  if (found.length <= 1) return found[0];
  const lists = found.flatMap((r) => (r.uplinks ? [r.uplinks] : []));
  const [order, ...rest] = lists;
  return {
    name: found.map((r) => r.name).join('+'),
    match: {},
    ...(order ? { uplinks: order.filter((u) => rest.every((l) => l.includes(u))) } : {}),
    deny: [...new Set(found.flatMap((r) => r.deny))],
    needs: [...new Set(found.flatMap((r) => r.needs))],
  };
}

/** Whether a rule (or the lack of one) lets an app use the uplink of this name. */
export function allowsUplink(rule: AppRule | undefined, uplink: string): boolean {
  return rule === undefined || (!rule.deny.includes(uplink) && (rule.uplinks === undefined || rule.uplinks.includes(uplink)));
}
