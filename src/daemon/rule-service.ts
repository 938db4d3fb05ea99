/**
 * The control socket's side of the rules: `rules.list`, `rules.add`, `rules.rm`, `rules.explain`
 * (src/daemon/protocol.ts). Who may do what:
 *   - everyone sees the rules that can apply to them (no uid, or their own); root and the waymark
 *     group see all;
 *   - anyone may add rules for their own apps (the rule's uid is the caller's, always); root and
 *     the waymark group may add any;
 *   - a stored rule is removed by whoever added it (an answer: who answered), or root and the
 *     waymark group; the config file's rules are changed in the file.
 * A rule added here is checked like the config's (uplinks and destinations exist, globs compile)
 * and changes nothing when it is rejected.
 */
import { compileGlob } from '../glob.js';
import { decide, explainCandidates, NO_WISH } from '../decision/decide.js';
import type { PeerCred } from '../native/index.js';
import type { AppFacts } from '../policy/app.js';
import { appName, specificity, type Rule, type RuleMatch } from '../policy/rules.js';
import { userId } from '../identity/users.js';
import { mayChangeState } from './access.js';
import type { AppView } from './apps.js';
import type { Params, RuleView, RulesExplainResult } from './protocol.js';
import { actionIn, ruleAction, type RuleStore, type StoredRule } from './rule-store.js';
import { RequestError } from './server.js';
import type { World } from './world.js';
import type { NeedName } from '../config/schema.js';

export interface RuleServiceDeps {
  readonly world: Pick<World, 'config' | 'rules' | 'uplinks'>;
  readonly store: Pick<RuleStore, 'add' | 'remove' | 'all'>;
  /** The apps the caller may see (`waymark apps`), to explain by name. */
  readonly apps: (cred: PeerCred) => readonly AppView[];
}

const invalid = (message: string): RequestError => new RequestError({ code: 'EINVAL', message });

export function ruleView(r: Rule, order: number): RuleView {
  const s = r as Partial<StoredRule>;
  return {
    id: r.id, source: r.source, ...(r.profile !== undefined ? { profile: r.profile } : {}), order, specificity: specificity(r.match), match: { ...r.match, ...(r.match.needs ? { needs: [...r.match.needs] } : {}) },
    action: actionIn(r.action), never: [...r.never], needs: [...r.needs],
    ...(r.expiresAt !== undefined ? { expiresAt: new Date(r.expiresAt).toISOString() } : {}),
    ...(s.owner !== undefined ? { owner: s.owner } : {}), ...(s.addedAt !== undefined ? { addedAt: s.addedAt } : {}),
    ...(s.until ? { untilExit: true } : {}), ...(r.bounded === true ? { bounded: true } : {}),
  };
}

export class RuleService {
  constructor(private readonly deps: RuleServiceDeps) {}

  /** The rules in decision order, those the caller may see. */
  list(cred: PeerCred): RuleView[] {
    const all = mayChangeState(cred);
    const now = Date.now();
    return this.deps.world.rules.rules.flatMap((r, i) =>
      (all || r.match.uid === undefined || r.match.uid === cred.uid) && (r.expiresAt === undefined || r.expiresAt > now) ? [ruleView(r, i + 1)] : []);
  }

  async add(p: Params<'rules.add'>, cred: PeerCred): Promise<RuleView> {
    const { user, ...m } = p.match;
    let uid = m.uid;
    if (user !== undefined) {
      const found = userId(user);
      if (found === undefined) throw invalid(`match.user: no user named "${user}" on this machine`);
      if (uid !== undefined && uid !== found) throw invalid(`match.user: user ${user} is uid ${found}, not ${uid}`);
      uid = found;
    }
    if (!mayChangeState(cred)) {
      if (uid !== undefined && uid !== cred.uid) throw new RequestError({ code: 'EPERM', message: 'a rule for another user\'s apps needs root or membership of the waymark group' });
      uid = cred.uid;
    }
    const match: RuleMatch = Object.fromEntries(Object.entries({ ...m, uid }).filter(([, v]) => v !== undefined));
    const action = ruleAction(p.action);
    this.check(match, action, p.never);
    const r = await this.deps.store.add({
      source: 'cli', match, action, never: p.never, needs: p.needs, owner: cred.uid, bounded: !mayChangeState(cred),
      ...(p.minutes !== undefined ? { expiresAt: Date.now() + p.minutes * 60_000 } : {}),
    }).catch((e: unknown) => {
      throw new RequestError({ code: 'EPERM', message: e instanceof Error ? e.message : String(e) });
    });
    return ruleView(r, this.deps.world.rules.rules.indexOf(r) + 1);
  }

  async remove(id: string, cred: PeerCred): Promise<{ id: string }> {
    const stored = this.deps.store.all().find((r) => r.id === id);
    if (!stored) {
      const config = this.deps.world.config.rules.find((r) => r.id === id);
      if (config?.profile !== undefined) throw invalid(`rule ${id} comes from profile ${config.profile}: change the profile (waymark profile export/import), or use another profile`);
      throw config ? invalid(`rule ${id} is in the configuration file: change it there (and waymark reload)`) : new RequestError({ code: 'ENOENT', message: `no stored rule ${id} (see waymark rules list)` });
    }
    if (stored.owner !== cred.uid && !mayChangeState(cred)) throw new RequestError({ code: 'EPERM', message: `rule ${id} is not yours` });
    await this.deps.store.remove(id);
    return { id };
  }

  /** Which rule decides for an app and destination, every rule considered before it, and the candidate uplinks. */
  explain(p: Params<'rules.explain'>, cred: PeerCred): RulesExplainResult {
    const w = this.deps.world;
    const seesAll = mayChangeState(cred);
    const uid = p.uid ?? cred.uid;
    if (uid !== cred.uid && !seesAll) throw new RequestError({ code: 'EPERM', message: 'explaining another user\'s apps needs root or membership of the waymark group' });
    const dest = w.config.destinations.find((d) => d.name === p.destination);
    if (!dest) throw invalid(`no destination named "${p.destination}" (known: ${w.config.destinations.map((d) => d.name).join(', ')})`);
    const { facts, how } = this.factsOf(p.app, uid, cred);
    const needs: readonly NeedName[] = p.needs;
    const q = { facts, destination: dest.name, needs, ...(p.proto ? { proto: p.proto } : {}), ...(p.port !== undefined ? { port: p.port } : {}) };
    const considered = w.rules.explain(q);
    const decidingRule = considered.find((c) => c.skipped === undefined)?.rule;
    const { policy } = w.rules.decideFor(facts, [], q);
    const family = 4;
    const input = { uplinks: w.uplinks, destinations: w.config.destinations, wish: { ...NO_WISH, needs }, family, addr: new Uint8Array(4), learnedDestination: dest.name, ...(policy ? { app: policy } : {}) } as const;
    const d = decide(input);
    return {
      app: { ...facts, name: appName(facts), how },
      destination: dest.name,
      considered: considered.map((c) => ({ id: c.rule.id, source: c.rule.source, ...(c.skipped !== undefined ? { skipped: c.skipped } : {}) })),
      rule: decidingRule ? ruleView(decidingRule, w.rules.rules.indexOf(decidingRule) + 1) : null,
      ask: decidingRule?.action.kind === 'ask',
      decision: d.action === 'steer' ? { action: 'steer', uplink: d.uplink.spec.name, reason: d.reason }
        : d.action === 'deny' ? { action: 'deny', errno: d.err, reason: d.reason } : { action: 'pass', reason: d.reason },
      candidates: explainCandidates(input),
    };
  }

  /**
   * The facts of the app named: an absolute path is an executable; otherwise a running app of
   * that name the caller may see (`waymark apps`: its unit, app ID, Flatpak ID and executable);
   * otherwise a desktop app ID of that name.
   */
  private factsOf(app: string, uid: number, cred: PeerCred): { facts: AppFacts; how: string } {
    const none = { uid, exe: null, unit: null, app: null, flatpakId: null };
    if (app.startsWith('/')) return { facts: { ...none, exe: app }, how: 'executable' };
    const running = this.deps.apps(cred).find((a) => (a.name === app || a.unit === app || a.appId === app || a.flatpakId === app) && (a.uid === uid || a.uid === null));
    if (running) {
      return { facts: { uid: running.uid ?? uid, exe: running.exe, unit: running.unit, app: running.appId, flatpakId: running.flatpakId }, how: `running app (${running.cgroup})` };
    }
    if (/\.(service|scope)$/.test(app)) return { facts: { ...none, unit: app }, how: 'unit' };
    return { facts: { ...none, app }, how: 'application ID (no such app is running)' };
  }

  private check(m: RuleMatch, action: Rule['action'], never: readonly string[]): void {
    const c = this.deps.world.config;
    const uplinks = new Set(c.uplinks.map((u) => u.name));
    const ref = (field: string, v: string): void => {
      if (!uplinks.has(v)) throw invalid(`${field}: no uplink named "${v}" (known: ${[...uplinks].join(', ')})`);
    };
    const fixed = action.kind === 'ask' ? action.default : action;
    if (fixed.kind === 'use' || fixed.kind === 'only') fixed.uplinks.forEach((u) => ref(action.kind === 'ask' ? 'ask.default' : fixed.kind, u));
    never.forEach((u) => ref('never', u));
    if (m.destination !== undefined && !c.destinations.some((d) => d.name === m.destination)) throw invalid(`match.destination: no destination named "${m.destination}"`);
    for (const f of ['exe', 'unit', 'app', 'flatpak', 'name'] as const) {
      const g = m[f];
      const bad = g === undefined ? undefined : compileGlob(g);
      if (typeof bad === 'string') throw invalid(`match.${f}: ${bad}`);
    }
  }
}
