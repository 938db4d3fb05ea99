/**
 * Exec sessions: a program started by `waymark exec` runs in a cgroup of its own, and every
 * socket made in that cgroup is decided with the session's wish (uplink, needs, denials).
 * The registry is plain data, persisted by the daemon so a restart keeps enforcing it.
 */
import type { NeedName } from '../config/schema.js';
import type { Wish } from '../decision/decide.js';
import type { AppFacts, AppRule } from '../policy/app.js';
import type { RuleSet } from '../policy/rules.js';

export interface Session {
  readonly id: string;
  /** cgroup v2 path relative to the mount, e.g. "waymark/exec-12". */
  readonly cgroup: string;
  /** Who started it (SO_PEERCRED of the `waymark exec` process). */
  readonly uid: number;
  readonly uplink?: string;
  readonly needs: readonly NeedName[];
  readonly deny: readonly string[];
  /**
   * The app facts whose rules bind every process of the session (RuleSet.kernelPolicy applies them all):
   * the starter's (from the kernel), the program's as far as known (the executable the client
   * named: it can only add a rule), and those of the session it was started from, if any.
   */
  readonly apps: readonly AppFacts[];
  /** The command line, for status and logs only (not verified, never used to grant anything). */
  readonly command: string;
  readonly startedAt: string;
}

export function wishOf(s: Session): Wish {
  return { ...(s.uplink ? { uplink: s.uplink } : {}), needs: s.needs, deny: s.deny };
}

/** What the policy allows every process of the session (each process's own rule applies too). */
export function sessionPolicy(rules: RuleSet, s: Session): AppRule | undefined {
  const [first, ...more] = s.apps;
  return first ? rules.kernelPolicy(first, more) : undefined;
}

/** Merges a session's wish with what a program asked for itself (both wishes, session first). */
export function mergeWish(session: Wish | undefined, own: Wish): Wish {
  if (!session) return own;
  return {
    ...(session.uplink ?? own.uplink ? { uplink: session.uplink ?? own.uplink } : {}),
    needs: [...new Set([...session.needs, ...own.needs])],
    deny: [...new Set([...session.deny, ...own.deny])],
    ...(own.destination ? { destination: own.destination } : {}),
  };
}

export class SessionRegistry {
  private readonly byCgroup = new Map<string, Session>();

  constructor(initial: readonly Session[] = []) {
    for (const s of initial) this.byCgroup.set(s.cgroup, s);
  }

  add(s: Session): void {
    this.byCgroup.set(s.cgroup, s);
  }

  remove(id: string): Session | undefined {
    const s = this.get(id);
    if (s) this.byCgroup.delete(s.cgroup);
    return s;
  }

  get(id: string): Session | undefined {
    return [...this.byCgroup.values()].find((s) => s.id === id);
  }

  /** The session a process belongs to, from its cgroup path (as /proc/PID/cgroup says, with or without a leading slash). */
  ofCgroup(cgroup: string | null): Session | undefined {
    if (!cgroup) return undefined;
    const rel = cgroup.replace(/^\/+/, '');
    // A program may create child cgroups of its own below the session's.
    for (const [path, s] of this.byCgroup) if (rel === path || rel.startsWith(path + '/')) return s;
    return undefined;
  }

  all(): Session[] {
    return [...this.byCgroup.values()];
  }
}
