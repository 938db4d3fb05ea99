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
  /** Some rule for the app asks the user (src/policy/rules.ts: forKernel); the kernel reports its connects. */
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

/**
 * Several policies that all bind one process (its own rule, the rules of the session it runs in
 * and of whoever started it), as one: each can only narrow what is allowed, never widen it.
 * Allowed: only uplinks every listing policy allows (in the first one's order); denied: what any
 * denies; needs: all of them; the first order of preference. Undefined when none binds.
 */
export function narrow(policies: readonly (AppRule | undefined)[]): AppRule | undefined {
  const found = [...new Set(policies.filter((p): p is AppRule => p !== undefined))];
  if (found.length <= 1) return found[0];
  const lists = found.flatMap((r) => (r.uplinks ? [r.uplinks] : []));
  const [order, ...rest] = lists;
  const prefer = found.find((r) => r.prefer)?.prefer;
  return {
    name: found.map((r) => r.name).join('+'),
    match: {},
    ...(order ? { uplinks: order.filter((u) => rest.every((l) => l.includes(u))) } : {}),
    ...(prefer ? { prefer } : {}),
    deny: [...new Set(found.flatMap((r) => r.deny))],
    needs: [...new Set(found.flatMap((r) => r.needs))],
    ...(found.some((r) => r.ask) ? { ask: true } : {}),
  };
}

/** Whether a rule (or the lack of one) lets an app use the uplink of this name. */
export function allowsUplink(rule: AppRule | undefined, uplink: string): boolean {
  return rule === undefined || (!rule.deny.includes(uplink) && (rule.uplinks === undefined || rule.uplinks.includes(uplink)));
}
