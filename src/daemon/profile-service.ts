/**
 * Which profile is active (docs/profiles.md, src/profile/profile.ts), why, and the control
 * methods `profile.*` (src/daemon/protocol.ts).
 *
 * Choice: when a different SIM appears (its ICCID is not the last one seen), the profile naming
 * its ICCID, else its operator, else default_profile, else none; a SIM taken out changes nothing.
 * `profile use NAME` pins a profile until the next SIM change; `profile use --auto` chooses by
 * the SIM now. What is active and the last SIM seen are kept (state.json `profile`): after a
 * restart with the same SIM the choice stays, pinned or not.
 *
 * Who may do what: anyone lists the profiles (names, ties, which is active); their contents,
 * export and every change need root or the waymark group (they name SIMs and set policy).
 * The file's profiles are read-only here (changed in waymark.yaml); saved ones live in
 * STATE_DIR/profiles (src/profile/store.ts). Every import is validated whole, against the
 * running configuration, before anything changes.
 */
import { ConfigError, type Config } from '../config/load.js';
import type { PeerCred } from '../native/index.js';
import { chooseProfile, exportProfile, parseProfileDocument, type Profile, type SimInfo } from '../profile/profile.js';
import type { ProfileStore, SavedProfile } from '../profile/store.js';
import { errorMessage } from '../errors.js';
import { mayChangeState as defaultMayChangeState } from './access.js';
import type { ProfileActivated, ProfileChanged, ProfileChoice } from './events.js';
import type { ActiveProfileView, Handlers, Params, ProfileChangeResult, ProfileListResult, ProfileShowResult, ProfileSummary } from './protocol.js';
import { ruleView } from './rule-service.js';
import { RequestError } from './server.js';

/** What is kept across restarts (state.json `profile`). */
export interface PersistedProfile {
  readonly name: string | null;
  readonly by: ProfileChoice;
  readonly sim?: string;
  /** The last SIM seen: a SIM change is another ICCID than this one. */
  readonly seenSim?: string;
}

export interface ProfileServiceDeps {
  readonly store: Pick<ProfileStore, 'all' | 'get' | 'save' | 'remove' | 'revalidate'>;
  /** The running base config (waymark.yaml as loaded). */
  readonly base: () => Config;
  /** Makes `profile` the active one's contents in the effective config (null: none). */
  readonly apply: (profile: Profile | null) => Promise<void>;
  readonly currentSim: () => SimInfo | undefined;
  readonly publish: (e: ProfileActivated | ProfileChanged) => void;
  readonly log: { info(msg: string, f?: Record<string, unknown>): void; warn(msg: string, f?: Record<string, unknown>): void };
  /** What state.json holds (undefined: nothing yet). */
  readonly saved: PersistedProfile | undefined;
  readonly persist: (s: PersistedProfile) => Promise<void>;
  /** Default: root or the waymark group (src/daemon/access.ts). */
  readonly mayChangeState?: (cred: PeerCred) => boolean;
}

type Entry = { readonly name: string; readonly source: 'config' | 'saved'; readonly file: string; readonly profile?: Profile; readonly problem?: string; readonly raw?: unknown };

/** A synchronous answer as a promise (a thrown error: a rejection). */
function attempt<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}

const invalid = (message: string): RequestError => new RequestError({ code: 'EINVAL', message });
const denied = (what: string): RequestError => new RequestError({ code: 'EPERM', message: `${what} needs root or membership of the waymark group` });

export class ProfileService {
  private active: PersistedProfile = { name: null, by: 'none' };
  private queue: Promise<unknown> = Promise.resolve();
  private readonly may: (cred: PeerCred) => boolean;

  constructor(private readonly deps: ProfileServiceDeps) {
    this.may = deps.mayChangeState ?? defaultMayChangeState;
  }

  /** The active profile (null: none). */
  get current(): Profile | null {
    return this.active.name === null ? null : (this.find(this.active.name)?.profile ?? null);
  }

  get activeView(): ActiveProfileView {
    return { name: this.active.name, by: this.active.by, ...(this.active.sim !== undefined ? { sim: this.active.sim } : {}) };
  }

  /** At start: the kept profile if it still exists, is valid and the SIM is the one last seen (or none is in); else chosen by the SIM. */
  start(): Promise<void> {
    return this.serial(async () => {
      const s = this.deps.saved;
      const sim = this.deps.currentSim();
      const kept = s?.name === null ? null : s ? this.find(s.name)?.profile : undefined;
      if (s !== undefined && kept !== undefined && (sim === undefined || sim.iccid === s.seenSim)) {
        await this.activate(kept, s.by, s.sim, s.seenSim);
        return;
      }
      if (s?.name && kept === undefined) this.deps.log.warn('the kept profile is gone or no longer fits the configuration: choosing by the SIM', { profile: s.name });
      await this.auto(sim, sim?.iccid ?? s?.seenSim);
    });
  }

  /** The device's SIM now: another ICCID than the last seen chooses; undefined (no SIM) changes nothing. */
  simChanged(sim: SimInfo | undefined): Promise<void> {
    return this.serial(async () => {
      if (sim === undefined || sim.iccid === this.active.seenSim) return;
      await this.auto(sim, sim.iccid);
    });
  }

  /** After a reload: the saved profiles validated again; an active profile that no longer fits gives way to none. */
  baseChanged(): Promise<void> {
    return this.serial(async () => {
      this.deps.store.revalidate(this.deps.base());
      const name = this.active.name;
      const p = name === null ? null : (this.find(name)?.profile ?? null);
      if (name !== null && p === null) {
        this.deps.log.warn('the active profile no longer fits the configuration: no profile is active', { profile: name, problem: this.find(name)?.problem ?? 'gone' });
        await this.activate(null, 'none', undefined, this.active.seenSim);
        return;
      }
      await this.deps.apply(p);
    });
  }

  handlers(): Pick<Handlers, 'profile.list' | 'profile.show' | 'profile.export' | 'profile.use' | 'profile.save' | 'profile.import' | 'profile.rm'> {
    return {
      'profile.list': () => Promise.resolve(this.list()),
      'profile.show': (p, cred) => attempt(() => this.show(p.name, cred)),
      'profile.export': (p, cred) => attempt(() => this.export(p.name, cred)),
      'profile.use': (p, cred) => this.use(p, cred),
      'profile.save': (p, cred) => this.save(p, cred),
      'profile.import': (p, cred) => this.import(p, cred),
      'profile.rm': (p, cred) => this.remove(p.name, cred),
    };
  }

  list(): ProfileListResult {
    const base = this.deps.base();
    return { profiles: this.entries().map((e) => this.summary(e)), active: this.activeView, defaultProfile: base.defaultProfile ?? null };
  }

  show(name: string, cred: PeerCred): ProfileShowResult {
    if (!this.may(cred)) throw denied('profile show');
    const e = this.entry(name);
    const p = e.profile;
    return {
      profile: this.summary(e),
      uplinks: (p?.uplinks ?? []).map((u) => ({ ...u, properties: { ...u.properties } })),
      rules: (p?.rules ?? []).map((r, i) => ruleView(r, i + 1)),
      budgets: (p?.budgets ?? []).map((b) => ({ ...b })),
    };
  }

  export(name: string, cred: PeerCred): { name: string; text: string } {
    if (!this.may(cred)) throw denied('profile export');
    const e = this.entry(name);
    return { name, text: exportProfile({ raw: e.raw ?? e.profile?.raw ?? {} }) };
  }

  use(p: Params<'profile.use'>, cred: PeerCred): Promise<{ active: ActiveProfileView }> {
    if (!this.may(cred)) return Promise.reject(denied('profile use'));
    return this.serial(async () => {
      if ('auto' in p) await this.auto(this.deps.currentSim(), this.deps.currentSim()?.iccid ?? this.active.seenSim);
      else {
        const e = this.entry(p.name);
        if (e.profile === undefined) throw invalid(`profile ${p.name} does not fit the configuration: ${e.problem ?? ''}`);
        await this.activate(e.profile, 'user', undefined, this.active.seenSim);
      }
      return { active: this.activeView };
    });
  }

  save(p: Params<'profile.save'>, cred: PeerCred): Promise<ProfileChangeResult> {
    if (!this.may(cred)) return Promise.reject(denied('profile save'));
    return this.serial(async () => {
      this.refuseConfig(p.name, 'save');
      const sims = [...(p.sims ?? [])];
      if (p.fromCurrentSim) {
        const sim = this.deps.currentSim();
        if (sim === undefined) throw invalid('there is no SIM in the device now (--current-sim)');
        if (!sims.includes(sim.iccid)) sims.push(sim.iccid);
      }
      // The active profile's contents (none: an empty one) under the new name, with these ties.
      const src = this.current;
      const ties = new Set(['name', 'description', 'sims', 'operators', 'roaming']);
      const was = (src?.raw ?? {}) as Record<string, unknown>;
      const contents = Object.fromEntries(Object.entries(was).filter(([k]) => !ties.has(k)));
      const description = p.description ?? was['description'];
      const roaming = p.roaming ?? was['roaming'];
      const raw = {
        name: p.name, ...(description !== undefined ? { description } : {}), ...(sims.length > 0 ? { sims } : {}),
        ...(p.operators && p.operators.length > 0 ? { operators: p.operators } : {}), ...(roaming !== undefined ? { roaming } : {}), ...contents,
      };
      return this.store(exportProfile({ raw }), `${p.name}.yaml`, true, 'saved');
    });
  }

  import(p: Params<'profile.import'>, cred: PeerCred): Promise<ProfileChangeResult> {
    if (!this.may(cred)) return Promise.reject(denied('profile import'));
    return this.serial(() => this.store(p.text, p.file ?? '<import>', p.replace, 'imported'));
  }

  remove(name: string, cred: PeerCred): Promise<{ name: string; active: ActiveProfileView }> {
    if (!this.may(cred)) return Promise.reject(denied('profile rm'));
    return this.serial(async () => {
      this.refuseConfig(name, 'remove');
      if (!(await this.deps.store.remove(name))) throw new RequestError({ code: 'ENOENT', message: `no saved profile ${name} (see waymark profile list)` });
      this.deps.publish({ type: 'profile.changed', name, change: 'removed' });
      if (this.active.name === name) await this.auto(this.deps.currentSim(), this.deps.currentSim()?.iccid ?? this.active.seenSim);
      return { name, active: this.activeView };
    });
  }

  /** Validates a profile document against the running config and saves it; applied when it is the active one. */
  private async store(text: string, file: string, replace: boolean, change: 'saved' | 'imported'): Promise<ProfileChangeResult> {
    const base = this.deps.base();
    let profile: Profile;
    try {
      profile = parseProfileDocument(text, file, base);
    } catch (e) {
      if (e instanceof ConfigError) throw new RequestError({ code: 'EINVAL', message: `profile rejected; nothing changed\n${e.message}`, issues: e.issues });
      throw e;
    }
    this.refuseConfig(profile.name, change === 'saved' ? 'save' : 'import');
    if (change === 'imported' && !replace && this.deps.store.get(profile.name) !== undefined) {
      throw invalid(`a saved profile ${profile.name} exists: give replace (--replace) to replace it`);
    }
    for (const sim of profile.sims) {
      const other = this.entries().find((x) => x.name !== profile.name && x.profile?.sims.includes(sim));
      if (other) throw invalid(`SIM ${sim} is already tied to profile ${other.name}`);
    }
    try {
      await this.deps.store.save(profile);
    } catch (e) {
      throw new RequestError({ code: 'EIO', message: `cannot save profile ${profile.name}: ${errorMessage(e)}` });
    }
    this.deps.publish({ type: 'profile.changed', name: profile.name, change });
    const saved = this.find(profile.name);
    const sim = this.deps.currentSim();
    // A profile for the SIM that is in takes effect now, unless the user pinned another one.
    if (this.active.by !== 'user' && sim !== undefined && profile.sims.includes(sim.iccid)) await this.auto(sim, sim.iccid);
    else if (this.active.name === profile.name) await this.deps.apply(saved?.profile ?? null);
    return { profile: this.summary(saved ?? { name: profile.name, source: 'saved', file, profile }), active: this.activeView };
  }

  /** Chooses by the SIM (none: default_profile, else none). */
  private async auto(sim: SimInfo | undefined, seenSim: string | undefined): Promise<void> {
    const base = this.deps.base();
    const valid = this.entries().flatMap((e) => (e.profile ? [e.profile] : []));
    const p = chooseProfile(valid, sim, base.defaultProfile);
    const by: ProfileChoice = p === null ? 'none' : sim !== undefined && (p.sims.includes(sim.iccid) || (sim.operator !== undefined && p.operators.includes(sim.operator))) ? 'sim' : 'default';
    await this.activate(p, by, by === 'sim' ? sim?.iccid : undefined, seenSim);
  }

  private async activate(p: Profile | null, by: ProfileChoice, sim: string | undefined, seenSim: string | undefined): Promise<void> {
    const before = this.active;
    this.active = { name: p?.name ?? null, by, ...(sim !== undefined ? { sim } : {}), ...(seenSim !== undefined ? { seenSim } : {}) };
    await this.deps.apply(p);
    if (before.name !== this.active.name || before.by !== by || before.sim !== sim) {
      this.deps.log.info('profile active', { profile: this.active.name, by, ...(sim !== undefined ? { sim } : {}) });
      this.deps.publish({ type: 'profile.activated', name: this.active.name, by, ...(sim !== undefined ? { sim } : {}) });
    }
    if (JSON.stringify(before) !== JSON.stringify(this.active)) await this.deps.persist(this.active);
  }

  /** The file's profiles, then the saved ones (one shadowed by a file's profile of its name is listed as invalid). */
  private entries(): Entry[] {
    const base = this.deps.base();
    const config: Entry[] = (base.profiles ?? []).map((p) => ({ name: p.name, source: 'config', file: p.file, profile: p, raw: p.raw }));
    const saved = this.deps.store.all().map((s: SavedProfile): Entry => {
      const shadow = config.find((c) => c.name === s.name);
      if (shadow) return { name: s.name, source: 'saved', file: s.file, problem: `a profile of this name is defined in ${shadow.file}, which wins` };
      return s.profile ? { name: s.name, source: 'saved', file: s.file, profile: s.profile, raw: s.profile.raw } : { name: s.name, source: 'saved', file: s.file, problem: s.problem ?? '' };
    });
    return [...config, ...saved];
  }

  private find(name: string): Entry | undefined {
    return this.entries().find((e) => e.name === name && e.profile !== undefined) ?? this.entries().find((e) => e.name === name);
  }

  private entry(name: string): Entry {
    const e = this.find(name);
    if (e === undefined) throw new RequestError({ code: 'ENOENT', message: `no profile ${name} (see waymark profile list)` });
    return e;
  }

  private refuseConfig(name: string, what: string): void {
    const c = (this.deps.base().profiles ?? []).find((p) => p.name === name);
    if (c) throw new RequestError({ code: 'EPERM', message: `profile ${name} is defined in ${c.file}: ${what} it there (and waymark reload)` });
  }

  private summary(e: Entry): ProfileSummary {
    const p = e.profile;
    const roaming = p === undefined ? 'allow' : typeof p.roaming === 'string' ? p.roaming : { only: [...p.roaming.only] };
    return {
      name: e.name, description: p?.description ?? null, source: e.source, file: e.file, sims: [...(p?.sims ?? [])], operators: [...(p?.operators ?? [])],
      roaming, active: this.active.name === e.name && e.profile !== undefined && e.profile === this.current, valid: p !== undefined,
      ...(e.problem !== undefined ? { problem: e.problem } : {}),
    };
  }

  /** Changes one at a time (a SIM change during an import waits for it). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn);
    this.queue = next.catch(() => undefined);
    return next;
  }
}
