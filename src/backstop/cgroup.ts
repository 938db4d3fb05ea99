/**
 * Waymark's session cgroups: one cgroup v2 directory per `waymark exec` (and, later, per app
 * rule), `<cgroup2 mount>/waymark/<name>`. The daemon attaches the socket-marking BPF program to
 * it (src/native: cgroupAttachSockMark) and names it in the nftables backstop (./nft.ts); the
 * kernel then steers every socket of every process in it, library or not.
 *
 * Where cgroup v2 is: the `cgroup2` entry of /proc/self/mountinfo. /sys/fs/cgroup on a pure v2
 * system (Debian 11+, systemd's default), /sys/fs/cgroup/unified in hybrid mode (this project's
 * test machines). Not found inside `ip netns exec`: iproute2 remounts /sys for the namespace and
 * the cgroup mounts under it are gone; enter only the network namespace (`nsenter --net=...`),
 * which keeps the mount namespace.
 *
 * Who moves the program into its cgroup: the daemon (root), with the pid SO_PEERCRED gave it for
 * the `waymark exec` CLI that asked, before the CLI starts the command. The alternative, the
 * unprivileged CLI moving itself, is not worth it: cgroup v2 lets a process move a process only
 * with write access to the destination's cgroup.procs AND to the cgroup.procs of the common
 * ancestor of source and destination (Documentation/admin-guide/cgroup-v2.rst, "Delegation
 * Containment"), and the common ancestor of a login session's cgroup
 * (/user.slice/user-1000.slice/session-3.scope) and /waymark/exec-42 is the root cgroup, whose
 * cgroup.procs no unprivileged user may write. Delegating a subtree under the user's own slice
 * instead would work, but hands the user a cgroup it may then leave or re-arrange at will. With
 * the daemon doing the move, session cgroups stay root-owned (0755): nothing in them is writable
 * by the program, which can neither leave its cgroup nor create a child cgroup to escape the
 * exclusive (non-overridable) BPF attachment.
 * Moving needs no capability: uid 0 owns every cgroup.procs. Attaching the BPF program needs
 * CAP_BPF + CAP_NET_ADMIN. Under systemd the unit must not set ProtectControlGroups= (it makes
 * /sys/fs/cgroup read-only); systemd's delegation contract (docs/CGROUP_DELEGATION.md) would
 * rather see the daemon's cgroups inside its own unit's subtree (Delegate=yes, `dir` below the
 * unit's cgroup); /waymark at the root works but is outside that contract.
 *
 * Lifetime: a session cgroup is removed (rmdir) once empty (`cgroup.events`: populated 0); the
 * BPF program attached to it goes with it. After a daemon restart, listSessions() finds the
 * cgroups still there for re-adoption.
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, readFile, readdir, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode } from '../errors.js';

/** Directory under the cgroup2 mount that holds every Waymark session cgroup. */
export const WAYMARK_CGROUP_DIR = 'waymark';

/** Session names: letters, digits, '-', '_', '.', up to 64 characters, not starting with '.'. */
const SESSION_NAME_RE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;

export function isValidSessionName(name: string): boolean {
  return SESSION_NAME_RE.test(name);
}

/** Undoes the octal escapes of /proc/self/mountinfo fields (space is \040, etc.). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/**
 * The mount point of the cgroup v2 hierarchy in a mountinfo text (pure), or null. When several
 * are listed (bind mounts), the one mounting the hierarchy's root ("/") wins, the shortest path
 * among those.
 */
export function parseCgroup2Mount(mountinfo: string): string | null {
  let best: string | null = null;
  for (const line of mountinfo.split('\n')) {
    // id parent major:minor root mountpoint options [optional fields...] - fstype source superopts
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const left = line.slice(0, sep).split(' ');
    const right = line.slice(sep + 3).split(' ');
    if (right[0] !== 'cgroup2' || left.length < 5) continue;
    const root = unescapeMountField(left[3] ?? '');
    const mountPoint = unescapeMountField(left[4] ?? '');
    if (root !== '/') continue;
    if (best === null || mountPoint.length < best.length) best = mountPoint;
  }
  return best;
}

/** The cgroup v2 mount point of this process's mount namespace; throws when there is none. */
export async function findCgroup2Mount(mountinfoPath = '/proc/self/mountinfo'): Promise<string> {
  const mount = parseCgroup2Mount(await readFile(mountinfoPath, 'utf8'));
  if (mount === null) {
    throw new Error(
      `no cgroup v2 hierarchy mounted (no cgroup2 entry in ${mountinfoPath}); inside \`ip netns exec\` ` +
        '/sys is remounted and the cgroup mounts are gone: enter the network namespace with ' +
        '`nsenter --net=/run/netns/NAME` instead, or mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup)',
    );
  }
  return mount;
}

export interface SessionCgroup {
  /** Session name, e.g. "exec-42". */
  readonly name: string;
  /** Absolute directory, e.g. /sys/fs/cgroup/unified/waymark/exec-42 (for the BPF attach). */
  readonly path: string;
  /** Path relative to the cgroup2 mount, e.g. "waymark/exec-42" (for the nftables backstop). */
  readonly relPath: string;
  /** Depth below the cgroup2 root: 2 for waymark/NAME (`socket cgroupv2 level N`). */
  readonly level: number;
}

export interface SessionCgroupState extends SessionCgroup {
  /** Some process lives in it (or in a descendant). */
  readonly populated: boolean;
}

/** Session cgroups under `<mount>/waymark/`. Every method is async and touches only that directory. */
export class SessionCgroups {
  /** Absolute path of `<mount>/waymark`. */
  readonly base: string;

  /** `mount`: the cgroup2 mount point (findCgroup2Mount()); `dir`: the directory below it. */
  constructor(
    readonly mount: string,
    readonly dir: string = WAYMARK_CGROUP_DIR,
  ) {
    if (!mount.startsWith('/')) throw new Error(`cgroup2 mount must be an absolute path: ${mount}`);
    if (!dir.split('/').every(isValidSessionName)) throw new Error(`invalid cgroup directory: ${dir}`);
    this.base = join(mount, dir);
  }

  /** The session cgroup called `name` (whether or not it exists). */
  session(name: string): SessionCgroup {
    if (!isValidSessionName(name)) throw new Error(`invalid session cgroup name: ${JSON.stringify(name)}`);
    const relPath = `${this.dir}/${name}`;
    return { name, path: join(this.base, name), relPath, level: relPath.split('/').length };
  }

  /** Creates the session cgroup (and `<mount>/waymark`), root-owned, mode 0755. Existing: adopted. */
  async create(name: string): Promise<SessionCgroup> {
    const s = this.session(name);
    // The parent may be removed by someone tidying up empty directories between our two mkdirs.
    for (let attempt = 0; ; attempt++) {
      await mkdir(this.base, { mode: 0o755, recursive: true });
      try {
        await mkdir(s.path, { mode: 0o755 });
        return s;
      } catch (e) {
        const code = errnoCode(e);
        if (code === 'EEXIST') return s;
        if (code !== 'ENOENT' || attempt >= 2) throw e;
      }
    }
  }

  /**
   * Moves process `pid` (all its threads) into the session cgroup. Its children forked from now
   * on start there; its existing sockets keep their mark (set at their creation).
   * 'ESRCH': no such process; 'ENOENT': no such session.
   */
  async movePid(name: string, pid: number): Promise<void> {
    if (!Number.isInteger(pid) || pid <= 0) throw new RangeError(`invalid pid: ${pid}`);
    await writeFile(join(this.session(name).path, 'cgroup.procs'), `${pid}\n`, { flag: 'w' });
  }

  /** Pids of the processes in the session cgroup itself (not its descendants). */
  async pids(name: string): Promise<number[]> {
    const text = await readFile(join(this.session(name).path, 'cgroup.procs'), 'utf8');
    return text.split('\n').filter((l) => l !== '').map(Number);
  }

  /** True while some process lives in the cgroup or a descendant (`cgroup.events`). */
  async populated(name: string): Promise<boolean> {
    return parsePopulated(await readFile(join(this.session(name).path, 'cgroup.events'), 'utf8'));
  }

  /** Every session cgroup present (for re-adoption after a restart), sorted by name. */
  async list(): Promise<SessionCgroupState[]> {
    let entries;
    try {
      entries = await readdir(this.base, { withFileTypes: true });
    } catch (e) {
      if (errnoCode(e) === 'ENOENT') return [];
      throw e;
    }
    const out: SessionCgroupState[] = [];
    for (const ent of entries) {
      if (!ent.isDirectory() || !isValidSessionName(ent.name)) continue;
      try {
        out.push({ ...this.session(ent.name), populated: await this.populated(ent.name) });
      } catch (e) {
        if (errnoCode(e) !== 'ENOENT') throw e; // removed meanwhile
      }
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Removes the session cgroup if it is empty; true when it is gone (also when it never
   * existed), false when processes (or child cgroups) still live in it.
   */
  async removeIfEmpty(name: string): Promise<boolean> {
    try {
      await rmdir(this.session(name).path);
      return true;
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'ENOENT') return true;
      if (code === 'EBUSY' || code === 'ENOTEMPTY') return false;
      throw e;
    }
  }

  /** Removes every empty session cgroup; returns the names removed. */
  async removeEmpty(): Promise<string[]> {
    const removed: string[] = [];
    for (const s of await this.list()) {
      if (!s.populated && (await this.removeIfEmpty(s.name))) removed.push(s.name);
    }
    return removed;
  }

  /** SIGKILLs every process of the session cgroup and its descendants (`cgroup.kill`, Linux ≥ 5.14). */
  async kill(name: string): Promise<void> {
    await writeFile(join(this.session(name).path, 'cgroup.kill'), '1\n');
  }

  /**
   * Calls `onEmpty` once, as soon as the session cgroup holds no process (at once if it is
   * already empty or gone). The kernel signals changes of `cgroup.events` as file modifications
   * (inotify), so this costs no polling. Returns a function that cancels the watch.
   */
  watchEmpty(name: string, onEmpty: () => void): () => void {
    const events = join(this.session(name).path, 'cgroup.events');
    let watcher: FSWatcher | undefined;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      watcher?.close();
    };
    const check = (): void => {
      if (done) return;
      readFile(events, 'utf8').then(
        (text) => {
          if (!done && !parsePopulated(text)) {
            finish();
            onEmpty();
          }
        },
        (e: unknown) => {
          if (!done && errnoCode(e) === 'ENOENT') {
            finish();
            onEmpty();
          }
        },
      );
    };
    try {
      watcher = watch(events, { persistent: true }, check);
      watcher.on('error', check);
    } catch (e) {
      if (errnoCode(e) !== 'ENOENT') throw e;
    }
    check(); // the state before the watch existed
    return finish;
  }
}

/** `populated` of a cgroup.events text (pure). */
export function parsePopulated(events: string): boolean {
  const m = /^populated (\d)$/m.exec(events);
  if (m === null) throw new Error(`cgroup.events without a populated line: ${JSON.stringify(events)}`);
  return m[1] === '1';
}
