/** Apps as the user described them, and matching a calling process against them. */
import type { NeedName } from '../config/schema.js';

export interface AppMatch {
  readonly exe?: string;
  readonly unit?: string;
  readonly flatpak?: string;
  readonly uid?: number;
}

export interface AppRule {
  readonly name: string;
  readonly match: AppMatch;
  /** Allowed uplinks in order of preference; undefined: any uplink not denied. */
  readonly uplinks?: readonly string[];
  readonly deny: readonly string[];
  readonly needs: readonly NeedName[];
}

/** The kernel-verified facts about a calling process that rules can match. */
export interface AppFacts {
  readonly uid: number;
  readonly exe: string | null;
  readonly unit: string | null;
  readonly flatpakId: string | null;
}

export function matches(m: AppMatch, app: AppFacts): boolean {
  return (m.exe === undefined || m.exe === app.exe)
    && (m.unit === undefined || m.unit === app.unit)
    && (m.flatpak === undefined || m.flatpak === app.flatpakId)
    && (m.uid === undefined || m.uid === app.uid);
}

/** The first rule that matches, in config order (put specific rules first). */
export function ruleFor(rules: readonly AppRule[], app: AppFacts): AppRule | undefined {
  return rules.find((r) => matches(r.match, app));
}
