/**
 * Exec sessions in the daemon: creating the cgroup, moving the caller in, keeping the kernel
 * backstop (cgroup mark, nftables denials) in step with uplinks and config, ending sessions when
 * their cgroup empties, and re-adopting them after a restart.
 */
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { findUplink } from '../decision/decide.js';
import type { PeerCred } from '../native/index.js';
import type { BackstopSession } from '../backstop/nft.js';
import { identify } from '../identity/app.js';
import { allowsUplink, type AppFacts } from '../policy/app.js';
import { backstopFor, type Backstop } from '../session/backstop.js';
import { sessionPolicy, type Session, type SessionRegistry } from '../session/session.js';
import type { UplinkState } from '../uplink/state.js';
import type { EventBus } from './events.js';
import type { Logger } from './log.js';
import type { ExecBeginParams, ExecBeginResult } from './protocol.js';
import { RequestError } from './server.js';
import type { World } from './world.js';
import { errorMessage } from '../errors.js';

/** What sessions are made from, and where they are kept: the world's config, uplinks and registry. */
export type SessionWorld = Pick<World, 'config' | 'rules' | 'uplinks' | 'sessions' | 'sessionsChanged'>;

/** The kernel side of sessions (src/backstop): cgroups and their socket-creation program. */
export interface CgroupBackend {
  /** Creates the session cgroup; returns its path relative to the cgroup2 mount. */
  create(id: string): Promise<string>;
  movePid(cgroup: string, pid: number): Promise<void>;
  exists(cgroup: string): Promise<boolean>;
  isEmpty(cgroup: string): Promise<boolean>;
  remove(cgroup: string): Promise<void>;
  /** Calls back when the cgroup becomes empty. */
  watch(cgroup: string, onEmpty: () => void): { close(): void };
  /** Attaches (or with null removes) the program that marks every new socket of the cgroup. */
  setMark(cgroup: string, mark: number | null): Promise<void>;
  /** Whether the cgroup's directory is there right now (nft resolves its path when it loads a rule). */
  present(cgroup: string): boolean;
}

export interface SessionStore {
  save(sessions: readonly Session[]): Promise<void>;
}

/** Sessions one unprivileged user may hold at once: each costs a cgroup and nftables rules. */
export const MAX_SESSIONS_PER_USER = 64;
/** App facts one session carries (its own, its program's, and those inherited from the sessions it was started in). */
const MAX_APP_FACTS = 64;

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

function uniqueFacts(facts: readonly AppFacts[]): AppFacts[] {
  const seen = new Set<string>();
  return facts.filter((f) => {
    const key = JSON.stringify([f.uid, f.exe, f.unit, f.app ?? null, f.flatpakId]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** A session's own restrictions, for messages. */
function describe(s: Session): string {
  const parts = [s.uplink ? `pinned to ${s.uplink}` : '', s.deny.length ? `denying ${s.deny.join(',')}` : '', s.needs.length ? `needing ${s.needs.join(',')}` : ''];
  const text = parts.filter(Boolean).join(', ');
  return text ? ` (${text})` : '';
}

export class SessionService {
  private readonly watchers = new Map<string, { close(): void }>();
  private readonly origins = new Map<string, string>();
  private readonly applied = new Map<string, Backstop>();

  constructor(
    private readonly world: SessionWorld,
    private readonly cgroups: CgroupBackend,
    private readonly store: SessionStore,
    private readonly log: Logger,
    private readonly events?: Pick<EventBus, 'publish'>,
  ) {}

  /** The world's registry of sessions. */
  get registry(): SessionRegistry {
    return this.world.sessions;
  }

  /**
   * Re-fences every session when the config changed (the reload waits for it, and fails with
   * it) or the uplinks did (logged: nobody waits for that).
   */
  follow(world: Pick<World, 'subscribe'>): void {
    world.subscribe(['config', 'rules'], () => this.refresh());
    world.subscribe(['uplinks'], () => this.refresh().catch((e: unknown) => this.log.error('session backstop update failed', { error: errorMessage(e) })));
  }

  /** Re-adopts the sessions of a previous run whose cgroups still exist (the others ended meanwhile). */
  async restore(saved: readonly Session[]): Promise<void> {
    for (const s of saved) {
      if (!(await this.cgroups.exists(s.cgroup))) continue;
      this.registry.add(s);
      this.watchSession(s);
      this.reapLater(s); // it may have emptied while we were away
    }
    if (saved.length > 0) this.log.info('sessions re-adopted', { count: this.registry.all().length, of: saved.length });
    await this.persist();
  }

  /** What the sessions' part of the nftables table is rendered from (src/backstop/nft.ts: sessionRules). */
  backstops(): BackstopSession[] {
    return this.registry.all().map((s) => {
      const b = this.applied.get(s.id);
      return { cgroup: s.cgroup, deniedIfnames: b?.deniedIfnames ?? [], mark: b?.mark ?? null };
    });
  }

  /**
   * Recomputes every session's backstop (uplinks or config changed); re-marks where it moved;
   * resolves once the nftables table follows (rejects if it cannot).
   */
  async refresh(): Promise<void> {
    const config = this.world.config;
    for (const s of this.registry.all()) {
      const b = backstopFor(s, this.world.uplinks, config.destinations, this.world.rules);
      const before = this.applied.get(s.id);
      this.applied.set(s.id, b);
      if (before !== undefined && before.mark === b.mark) continue;
      try {
        await this.cgroups.setMark(s.cgroup, b.mark);
      } catch (e) {
        this.log.error('cannot mark session cgroup', { session: s.id, error: (e as Error).message });
      }
    }
    await this.world.sessionsChanged();
  }

  /** Begins not yet finished, per uid: they hold a place under the cap from their first tick on. */
  private readonly pending = new Map<number, number>();

  /**
   * Counts a begin of `uid` against the cap at once (synchronously: concurrent begins each see
   * the others), or refuses it. The returned release is idempotent; call it when the session is
   * in the registry (where it counts from then on) or has failed.
   */
  private reserve(uid: number): () => void {
    if (uid === 0) return () => undefined;
    const held = this.registry.all().filter((x) => x.uid === uid).length + (this.pending.get(uid) ?? 0);
    if (held >= MAX_SESSIONS_PER_USER) {
      throw new RequestError({ code: 'EPERM', message: `too many sessions (at most ${MAX_SESSIONS_PER_USER} per user)` });
    }
    this.pending.set(uid, (this.pending.get(uid) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.pending.get(uid) ?? 1) - 1;
      if (n > 0) this.pending.set(uid, n);
      else this.pending.delete(uid);
    };
  }

  async begin(p: ExecBeginParams, caller: PeerCred): Promise<ExecBeginResult> {
    const release = this.reserve(caller.uid);
    try {
      return await this.start(p, caller, release);
    } finally {
      release();
    }
  }

  /**
   * The session a wish asks for, as the policy lets it be: checked exactly as the decision path
   * checks a program's wish (the rules' kernel policy, allowsUplink), and, started from inside a session,
   * inheriting all of that session's restrictions. Throws what the caller is told.
   */
  private sessionFor(p: ExecBeginParams, caller: PeerCred): Omit<Session, 'id' | 'cgroup' | 'startedAt'> {
    const states = this.world.uplinks;
    const config = this.world.config;
    const who = identify(caller);
    if (who.startTime === null) throw new RequestError({ code: 'EIO', message: `process ${caller.pid} is gone` });
    const parent = this.registry.ofCgroup(who.cgroup);
    let uplink: UplinkState | undefined;
    if (p.uplink) {
      uplink = findUplink(states, p.uplink);
      if (!uplink) throw new RequestError({ code: 'ENOENT', message: `no uplink named "${p.uplink}" (see waymark status)` });
    }
    const deny = p.deny.map((d) => {
      const u = findUplink(states, d);
      if (!u) throw new RequestError({ code: 'ENOENT', message: `no uplink named "${d}" (see waymark status)` });
      return u.spec.name;
    });
    if (uplink && deny.includes(uplink.spec.name)) {
      throw new RequestError({ code: 'EINVAL', message: `contradictory wish: uplink ${uplink.spec.name} is both asked for and denied` });
    }
    const own: AppFacts = { uid: who.uid, exe: who.exe, unit: who.unit, app: who.app, flatpakId: who.flatpakId };
    // The program as the client names it (its resolved executable): one more rule, never a looser one.
    const program: AppFacts[] = p.exe !== undefined ? [{ ...own, exe: p.exe }] : [];
    const apps = uniqueFacts([own, ...program, ...(parent?.apps ?? [])]);
    if (apps.length > MAX_APP_FACTS) throw new RequestError({ code: 'EPERM', message: 'sessions nested too deep' });
    if (parent && uplink) {
      // Inside a session, only what that session's own backstop lets through may be pinned.
      const fence = backstopFor(parent, states, config.destinations, this.world.rules);
      if (uplink.link && fence.deniedIfnames.includes(uplink.link.name)) {
        throw new RequestError({ code: 'EACCES', message: `uplink ${uplink.spec.name} is not allowed: this runs in session ${parent.id}${describe(parent)}, and a session started from it may only narrow that` });
      }
    }
    const pinned = uplink?.spec.name ?? parent?.uplink;
    if (pinned !== undefined) {
      const app = this.world.rules.kernelPolicy(own, apps.slice(1));
      if (!allowsUplink(app, pinned)) {
        throw new RequestError({ code: 'EACCES', message: `uplink ${pinned} is not allowed for app ${app?.name ?? '?'} (see waymark rules list)${uplink ? '' : `; session ${parent?.id ?? ''} it runs in is pinned to it`}` });
      }
    }
    if (uplink && uplink.status !== 'active') throw new RequestError({ code: 'ENETDOWN', message: `uplink ${uplink.spec.name} is ${uplink.status}` });
    return {
      uid: caller.uid,
      ...(pinned !== undefined ? { uplink: pinned } : {}),
      needs: [...new Set([...(parent?.needs ?? []), ...p.needs])],
      deny: [...new Set([...(parent?.deny ?? []), ...deny])],
      apps,
      command: p.command.slice(0, 200),
    };
  }

  private async start(p: ExecBeginParams, caller: PeerCred, release: () => void): Promise<ExecBeginResult> {
    const wish = this.sessionFor(p, caller);
    const id = `exec-${caller.pid}-${randomBytes(3).toString('hex')}`;
    const cgroup = await this.cgroups.create(id);
    const session: Session = { id, cgroup, ...wish, startedAt: new Date().toISOString() };
    try {
      this.origins.set(id, cgroupOf(caller.pid));
      release(); // from here on the registry counts it
      this.registry.add(session);
      await this.refresh();
      // Only now, with the backstop in place, does the caller (and so its command) join it.
      // SO_PEERCRED names the pid at connect time: make sure it is still that user's process.
      if (!ownedBy(caller.pid, caller.uid)) throw new Error(`process ${caller.pid} is gone or no longer the caller's`);
      await this.cgroups.movePid(cgroup, caller.pid);
    } catch (e) {
      this.drop(session);
      // Out of the render first, then gone (see endEmpty).
      await this.world.sessionsChanged().catch(() => undefined);
      await this.cgroups.remove(cgroup).catch(() => undefined);
      throw new RequestError({ code: 'EIO', message: `cannot set up the session: ${(e as Error).message}` });
    }
    this.watchSession(session);
    await this.persist();
    const b = this.applied.get(id);
    this.log.info('session started', {
      session: id, uid: caller.uid, pid: caller.pid, uplink: session.uplink, needs: session.needs, deny: session.deny,
      app: sessionPolicy(this.world.rules, session)?.name, mark: b?.mark != null ? hex(b.mark) : 'none',
    });
    this.events?.publish({ type: 'session.started', id, uid: caller.uid, uplink: b?.uplink?.spec.name ?? null, command: session.command });
    return {
      id, cgroup, uplink: b?.uplink?.spec.name ?? null, ifname: b?.uplink?.link?.name ?? null,
      backstop: { mark: b?.mark != null ? hex(b.mark) : null, deniedIfnames: [...(b?.deniedIfnames ?? [])] },
    };
  }

  async end(id: string, caller: PeerCred): Promise<Record<string, never>> {
    const s = this.registry.get(id);
    if (!s) throw new RequestError({ code: 'ENOENT', message: `no session ${id}` });
    if (caller.uid !== 0 && caller.uid !== s.uid) throw new RequestError({ code: 'EPERM', message: `session ${id} is not yours` });
    // The caller (waymark exec) leaves, so an empty session can go at once.
    const origin = this.origins.get(id);
    if (origin !== undefined && ownedBy(caller.pid, caller.uid) && cgroupOf(caller.pid) === '/' + s.cgroup) {
      // If this fails the caller stays in; the watcher ends the session when it exits.
      await this.cgroups.movePid(origin.replace(/^\//, ''), caller.pid).catch(() => undefined);
    }
    await this.reap(s);
    return {};
  }

  private watchSession(s: Session): void {
    this.watchers.get(s.id)?.close();
    this.watchers.set(s.id, this.cgroups.watch(s.cgroup, () => this.reapLater(s)));
  }

  private readonly reaping = new Set<string>();

  private reapLater(s: Session): void {
    this.reap(s).catch((e: unknown) => this.log.error('cannot end session', { session: s.id, error: errorMessage(e) }));
  }

  /** Ends a session once nothing runs in its cgroup any more. */
  private async reap(s: Session): Promise<void> {
    if (!this.registry.get(s.id) || this.reaping.has(s.id)) return;
    this.reaping.add(s.id);
    try {
      if (await this.cgroups.isEmpty(s.cgroup)) await this.endEmpty(s);
    } finally {
      this.reaping.delete(s.id);
    }
  }

  private async endEmpty(s: Session): Promise<void> {
    this.drop(s);
    // The cgroup leaves the nftables render before it leaves the kernel: once the change is
    // followed, no update in flight or to come names it, so removing it cannot fail another
    // session's transaction ("cgroupv2 path fails").
    await this.world.sessionsChanged().catch((e: unknown) => this.log.error('nftables update failed', { error: errorMessage(e) }));
    try {
      await this.cgroups.remove(s.cgroup);
    } catch (e) {
      this.log.warn('cannot remove session cgroup', { session: s.id, error: (e as Error).message });
    }
    await this.persist();
    this.log.info('session ended', { session: s.id });
    this.events?.publish({ type: 'session.ended', id: s.id, uid: s.uid });
  }

  private drop(s: Session): void {
    this.watchers.get(s.id)?.close();
    this.watchers.delete(s.id);
    this.registry.remove(s.id);
    this.applied.delete(s.id);
    this.origins.delete(s.id);
  }

  private async persist(): Promise<void> {
    await this.store.save(this.registry.all()).catch((e: unknown) => this.log.error('cannot save sessions', { error: errorMessage(e) }));
  }

  close(): void {
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }
}

/** Whether `pid` is (still) a process of `uid` (its real uid, from /proc). */
function ownedBy(pid: number, uid: number): boolean {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
    return line !== undefined && Number(line.slice(4).trim().split(/\s+/)[0]) === uid;
  } catch {
    return false;
  }
}

/** The cgroup v2 path of a process ("/" when it cannot be read). */
function cgroupOf(pid: number): string {
  try {
    const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
    return line ? line.slice(3) : '/';
  } catch {
    return '/';
  }
}
