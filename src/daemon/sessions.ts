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
import { backstopFor, type Backstop } from '../session/backstop.js';
import { SessionRegistry, type Session } from '../session/session.js';
import type { Engine } from './engine.js';
import type { Logger } from './log.js';
import type { ExecBeginResult } from './protocol.js';
import { RequestError } from './server.js';
import type { NeedName } from '../config/schema.js';

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
}

export interface SessionStore {
  save(sessions: readonly Session[]): Promise<void>;
}

/** Sessions one unprivileged user may hold at once: each costs a cgroup and nftables rules. */
const MAX_SESSIONS_PER_USER = 64;

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

export class SessionService {
  readonly registry = new SessionRegistry();
  private readonly watchers = new Map<string, { close(): void }>();
  private readonly origins = new Map<string, string>();
  private readonly applied = new Map<string, Backstop>();

  constructor(
    private readonly engine: Engine,
    private readonly cgroups: CgroupBackend,
    private readonly store: SessionStore,
    private readonly log: Logger,
  ) {}

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

  /** Rendered into our nftables table by the engine. */
  backstops(): BackstopSession[] {
    return this.registry.all().map((s) => {
      const b = this.applied.get(s.id);
      return { cgroup: s.cgroup, deniedIfnames: b?.deniedIfnames ?? [] };
    });
  }

  /** Recomputes every session's backstop (uplinks or config changed); re-marks where it moved. */
  async refresh(): Promise<void> {
    const config = this.engine.getConfig();
    for (const s of this.registry.all()) {
      const b = backstopFor(s, this.engine.uplinkStates(), config.destinations);
      const before = this.applied.get(s.id);
      this.applied.set(s.id, b);
      if (before !== undefined && before.mark === b.mark) continue;
      try {
        await this.cgroups.setMark(s.cgroup, b.mark);
      } catch (e) {
        this.log.error('cannot mark session cgroup', { session: s.id, error: (e as Error).message });
      }
    }
  }

  async begin(p: { uplink?: string; needs: NeedName[]; deny: string[]; command: string }, caller: PeerCred): Promise<ExecBeginResult> {
    if (caller.uid !== 0 && this.registry.all().filter((x) => x.uid === caller.uid).length >= MAX_SESSIONS_PER_USER) {
      throw new RequestError({ code: 'EPERM', message: `too many sessions (at most ${MAX_SESSIONS_PER_USER} per user)` });
    }
    const states = this.engine.uplinkStates();
    let uplink: string | undefined;
    if (p.uplink) {
      const u = findUplink(states, p.uplink);
      if (!u) throw new RequestError({ code: 'ENOENT', message: `no uplink named "${p.uplink}" (see waymark status)` });
      if (u.status !== 'active') throw new RequestError({ code: 'ENETDOWN', message: `uplink ${u.spec.name} is ${u.status}` });
      uplink = u.spec.name;
    }
    for (const d of p.deny) {
      if (!findUplink(states, d)) throw new RequestError({ code: 'ENOENT', message: `no uplink named "${d}" (see waymark status)` });
    }
    const deny = p.deny.map((d) => findUplink(states, d)?.spec.name ?? d);
    const id = `exec-${caller.pid}-${randomBytes(3).toString('hex')}`;
    const cgroup = await this.cgroups.create(id);
    const session: Session = {
      id, cgroup, uid: caller.uid, ...(uplink ? { uplink } : {}), needs: p.needs, deny, command: p.command.slice(0, 200),
      startedAt: new Date().toISOString(),
    };
    try {
      this.origins.set(id, cgroupOf(caller.pid));
      this.registry.add(session);
      await this.refresh();
      await this.engine.refreshNft();
      // Only now, with the backstop in place, does the caller (and so its command) join it.
      // SO_PEERCRED names the pid at connect time: make sure it is still that user's process.
      if (!ownedBy(caller.pid, caller.uid)) throw new Error(`process ${caller.pid} is gone or no longer the caller's`);
      await this.cgroups.movePid(cgroup, caller.pid);
    } catch (e) {
      this.drop(session);
      // Out of the render first, then gone (see endEmpty).
      await this.engine.refreshNft().catch(() => undefined);
      await this.cgroups.remove(cgroup).catch(() => undefined);
      throw new RequestError({ code: 'EIO', message: `cannot set up the session: ${(e as Error).message}` });
    }
    this.watchSession(session);
    await this.persist();
    const b = this.applied.get(id);
    this.log.info('session started', { session: id, uid: caller.uid, pid: caller.pid, uplink, needs: p.needs, deny, mark: b?.mark != null ? hex(b.mark) : 'none' });
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
    this.reap(s).catch((e: Error) => this.log.error('cannot end session', { session: s.id, error: e.message }));
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
    // The cgroup leaves the nftables render before it leaves the kernel: once refreshNft()
    // resolves, no update in flight or to come names it, so removing it cannot fail another
    // session's transaction ("cgroupv2 path fails").
    await this.engine.refreshNft().catch((e: Error) => this.log.error('nftables update failed', { error: e.message }));
    try {
      await this.cgroups.remove(s.cgroup);
    } catch (e) {
      this.log.warn('cannot remove session cgroup', { session: s.id, error: (e as Error).message });
    }
    await this.persist();
    this.log.info('session ended', { session: s.id });
  }

  private drop(s: Session): void {
    this.watchers.get(s.id)?.close();
    this.watchers.delete(s.id);
    this.registry.remove(s.id);
    this.applied.delete(s.id);
    this.origins.delete(s.id);
  }

  private async persist(): Promise<void> {
    await this.store.save(this.registry.all()).catch((e: Error) => this.log.error('cannot save sessions', { error: e.message }));
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
