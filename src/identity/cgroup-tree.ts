/**
 * The live cgroup tree: every cgroup directory below a cgroup2 directory, with its cgroup id
 * and the app it belongs to (./cgroup.ts), from an initial scan and then inotify, so the
 * daemon learns of a new app cgroup about as soon as systemd has made it (before the process
 * is moved in and opens its first socket, if the daemon is quick: docs/app-cgroups.md).
 *
 * Mechanism: one Node fs.watch (an inotify watch on libuv's one inotify fd per loop) per
 * directory. A new directory's event is handled synchronously in the watcher callback: stat
 * (the cgroup id is the directory's inode number), classify, update the tree, call `onAdded`;
 * only then is the new directory itself watched and scanned, so its own children created
 * before its watch existed are found by that scan (and one seen twice, by the scan and by an
 * event, is reported once). A removed directory (its parent's event, then a failed stat) is
 * reported with `onRemoved` after everything below it. Each event is checked against the file
 * system, never trusted: create+remove before we look reports nothing (there is nothing left
 * to key a map by), a directory removed and made again under the same name is a removal and an
 * addition (its id changed), ENOENT anywhere means "gone".
 *
 * Bounds: at most `maxDirs` directories are tracked (each one watched) and none deeper than
 * `maxDepth` below the root (those at `maxDepth` are watched too, to notice deeper ones). Beyond that a
 * warning is given once per limit, the directory is skipped and `truncated` becomes true; it
 * is not found again later, even when room frees up (resync() does). `exclude`d directories
 * (paths relative to the root, e.g. Waymark's own "waymark") and everything below them are
 * neither reported nor watched. The root itself is watched, never reported; if it goes,
 * everything below is reported removed and the tree stops. (A cgroup directory's own removal
 * gives its watch no event, kernfs checked on 6.18: the root's parent is watched for that.)
 *
 * Names: a cgroup directory's name may hold any byte but '/' and NUL. Paths are kept as the
 * bytes the kernel gave (latin1 strings, one char per byte, passed back to the kernel as such),
 * so no name is lost or confused with another; `rel` in events is their UTF-8 reading.
 *
 * Not seen: an inotify queue overflow (libuv drops IN_Q_OVERFLOW silently; the queue holds
 * /proc/sys/fs/inotify/max_queued_events, 16384 by default); call resync() to compare the tree
 * with the file system again.
 */
import { readdirSync, statSync, watch, type FSWatcher } from 'node:fs';
import { errnoCode, errorMessage } from '../errors.js';
import { classifyCgroup, userOfCgroup, type CgroupApp } from './cgroup.js';

export interface CgroupAdded {
  /** Path relative to the tree's root, e.g. "system.slice/nginx.service". */
  readonly rel: string;
  /** The cgroup id (what bpf_get_current_cgroup_id() returns): the directory's inode number. */
  readonly id: bigint;
  readonly app: CgroupApp | null;
}

export interface CgroupRemoved {
  readonly rel: string;
  readonly id: bigint;
}

export interface CgroupTreeOptions {
  /** Called synchronously, from the scan or from the watcher callback that saw the directory. */
  readonly onAdded?: (e: CgroupAdded) => void;
  /** Called synchronously; a directory's descendants are reported before it. */
  readonly onRemoved?: (e: CgroupRemoved) => void;
  /** Relative paths (e.g. "waymark") left out with everything below them. */
  readonly exclude?: readonly string[];
  /** Directories tracked (and watched) at most; 8192 by default. */
  readonly maxDirs?: number;
  /** Depth below the root at most (1: the root's children only); 16 by default. */
  readonly maxDepth?: number;
  /**
   * Directories of one user (below user.slice/user-UID.slice, userOfCgroup) tracked at most;
   * 1024 by default. A user makes cgroups at will in their delegated subtree: this keeps one
   * user from filling the tree for everyone (what is not tracked gets its nearest tracked
   * ancestor's `pending` treatment: that user's own, docs/kernel-apps.md).
   */
  readonly maxDirsPerUser?: number;
  /** Of maxDirs, kept for the system's directories (no user's): users together never take these; 1024 by default. */
  readonly reservedForSystem?: number;
  /** Where the once-only warnings go (a limit reached, the root gone); process.emitWarning by default. */
  readonly warn?: (message: string) => void;
}

export const DEFAULT_MAX_DIRS = 8192;
export const DEFAULT_MAX_DEPTH = 16;
export const DEFAULT_MAX_DIRS_PER_USER = 1024;
export const DEFAULT_RESERVED_FOR_SYSTEM = 1024;

interface Dir {
  /** Raw path bytes relative to the root, as latin1 ('' for the root). */
  readonly key: string;
  readonly rel: string;
  readonly id: bigint;
  readonly app: CgroupApp | null;
  readonly depth: number;
  /** The user it counts against (userOfCgroup), null: the system's. */
  readonly user: number | null;
  readonly parent: Dir | null;
  /** Raw names (latin1) of the tracked child directories. */
  readonly children: Set<string>;
  watcher: FSWatcher | null;
}

const ASCII_RE = /^[\x20-\x7e]*$/;

/** The UTF-8 reading of raw latin1-held bytes (ASCII, the usual case, as is). */
function utf8Of(latin1: string): string {
  return ASCII_RE.test(latin1) ? latin1 : Buffer.from(latin1, 'latin1').toString('utf8');
}

/** Gone or never there: what a vanished directory (or one of its ancestors) shows. */
function isGone(e: unknown): boolean {
  const code = errnoCode(e);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

export class CgroupTree {
  private readonly dirs = new Map<string, Dir>();
  private readonly rootRaw: string;
  private readonly exclude: ReadonlySet<string>;
  private readonly maxDirs: number;
  private readonly maxDepth: number;
  private readonly maxPerUser: number;
  private readonly maxUsers: number;
  /** Tracked directories per user, and of all users together. */
  private readonly perUser = new Map<number, number>();
  private users = 0;
  private readonly warn: (message: string) => void;
  private readonly warned = new Set<string>();
  private root: Dir | null = null;
  private rootParentWatcher: FSWatcher | null = null;
  private closed = false;
  private skipped = false;
  /** In the constructor's initial scan (which throws what it cannot read). */
  private scanning = true;

  /** Scans `root` (an absolute directory) and watches it; throws if it cannot be read. */
  constructor(root: string, private readonly opts: CgroupTreeOptions = {}) {
    if (!root.startsWith('/')) throw new Error(`cgroup tree root must be an absolute path: ${root}`);
    this.rootRaw = Buffer.from(root.replace(/\/+$/, '') || '/', 'utf8').toString('latin1');
    this.exclude = new Set((opts.exclude ?? []).map((r) => r.split('/').filter((p) => p !== '').join('/')));
    this.maxDirs = opts.maxDirs ?? DEFAULT_MAX_DIRS;
    this.maxDepth = opts.maxDepth ?? DEFAULT_MAX_DEPTH;
    this.maxPerUser = opts.maxDirsPerUser ?? DEFAULT_MAX_DIRS_PER_USER;
    this.maxUsers = Math.max(0, this.maxDirs - (opts.reservedForSystem ?? Math.min(DEFAULT_RESERVED_FOR_SYSTEM, Math.floor(this.maxDirs / 2))));
    this.warn = opts.warn ?? ((m) => process.emitWarning(m, 'CgroupTreeWarning'));
    const st = statSync(root, { bigint: true });
    if (!st.isDirectory()) throw new Error(`cgroup tree root is not a directory: ${root}`);
    const dir: Dir = { key: '', rel: '', id: st.ino, app: null, depth: 0, user: null, parent: null, children: new Set(), watcher: null };
    this.root = dir;
    dir.watcher = this.watchDir(dir); // throws for the root: the caller asked for this directory
    try {
      this.watchRootParent(dir);
      this.scan(dir);
      this.scanning = false;
    } catch (e) {
      this.close(); // an onAdded that threw, or an unexpected errno: no watch left behind
      throw e;
    }
  }

  /** Directories tracked (the root not counted). */
  get size(): number {
    return this.dirs.size;
  }

  /** Some directory was skipped (maxDirs, maxDepth, a watch that failed): the tree may be incomplete. */
  get truncated(): boolean {
    return this.skipped;
  }

  /** The tracked directory at `rel`, if any. */
  get(rel: string): CgroupAdded | undefined {
    const d = this.dirs.get(Buffer.from(rel, 'utf8').toString('latin1'));
    return d === undefined ? undefined : { rel: d.rel, id: d.id, app: d.app };
  }

  /** Every tracked directory, parents before their children. */
  *entries(): IterableIterator<CgroupAdded> {
    for (const d of this.dirs.values()) yield { rel: d.rel, id: d.id, app: d.app };
  }

  /** Compares the whole tree with the file system again (after a suspected inotify overflow). */
  resync(): void {
    if (this.closed || this.root === null) return;
    for (const d of [this.root, ...this.dirs.values()]) {
      if (this.tracked(d)) this.scan(d);
    }
  }

  /** Releases every watch; no event is reported after this. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.root?.watcher?.close();
    this.rootParentWatcher?.close();
    this.rootParentWatcher = null;
    for (const d of this.dirs.values()) d.watcher?.close();
    this.dirs.clear();
    this.root = null;
  }

  private abs(key: string): Buffer {
    return Buffer.from(key === '' ? this.rootRaw : `${this.rootRaw === '/' ? '' : this.rootRaw}/${key}`, 'latin1');
  }

  private warnOnce(what: string, message: string): void {
    if (this.warned.has(what)) return;
    this.warned.add(what);
    this.warn(message);
  }

  private watchDir(dir: Dir): FSWatcher {
    const w = watch(this.abs(dir.key), { encoding: 'latin1' }, (event, name) => {
      if (this.closed || dir.watcher !== w) return;
      if (event === 'change') return; // a file's content or a mode changed (cgroup.events...)
      if (name === null) this.scan(dir);
      else this.check(dir, name);
    });
    // A watch fails when its directory goes; whatever happened, look again.
    w.on('error', () => {
      if (this.closed || dir.watcher !== w) return;
      w.close();
      dir.watcher = null;
      this.recheck(dir);
      if (this.tracked(dir)) {
        this.skipped = true; // still there, no longer watched: what appears below it is missed
        this.warnOnce('watch-error', `cgroup tree: the watch of ${dir.rel || utf8Of(this.rootRaw)} failed; not watching it any more`);
      }
    });
    return w;
  }

  /** Watches the root's parent for the root's own removal (best effort: '/' has none, a parent may be unreadable). */
  private watchRootParent(root: Dir): void {
    const raw = this.rootRaw;
    const slash = raw.lastIndexOf('/');
    if (raw === '/' || slash < 0) return;
    const base = raw.slice(slash + 1);
    try {
      const w = watch(Buffer.from(slash === 0 ? '/' : raw.slice(0, slash), 'latin1'), { encoding: 'latin1' }, (event, name) => {
        if (!this.closed && event === 'rename' && (name === null || name === base)) this.recheck(root);
      });
      w.on('error', () => w.close());
      this.rootParentWatcher = w;
    } catch {
      /* without it the root's removal goes unnoticed; everything below it still is */
    }
  }

  /** Is `dir` still there? Removes it (or, for the root, everything) when not. */
  private recheck(dir: Dir): void {
    if (dir.parent === null) {
      let there = false;
      try {
        there = statSync(this.abs(''), { bigint: true, throwIfNoEntry: false })?.ino === dir.id;
      } catch (e) {
        if (!isGone(e)) return this.unreadable('', e);
      }
      if (!there) this.rootGone();
    } else {
      this.check(dir.parent, dir.key.slice(dir.key.lastIndexOf('/') + 1));
    }
  }

  private rootGone(): void {
    const root = this.root;
    if (root === null) return;
    for (const name of [...root.children]) {
      const child = this.dirs.get(root.key === '' ? name : `${root.key}/${name}`);
      if (child !== undefined) this.remove(child);
    }
    this.warnOnce('root', `cgroup tree root ${utf8Of(this.rootRaw)} is gone; no longer watching`);
    this.close();
  }

  /** Brings the entry `name` of `parent` in line with the file system. */
  private check(parent: Dir, name: string): void {
    if (!this.tracked(parent) || name === '' || name === '.' || name === '..' || name.includes('/')) return;
    const key = parent.key === '' ? name : `${parent.key}/${name}`;
    let st;
    try {
      st = statSync(this.abs(key), { bigint: true, throwIfNoEntry: false });
    } catch (e) {
      if (!isGone(e)) return this.unreadable(key, e);
    }
    const known = this.dirs.get(key);
    if (st === undefined || !st.isDirectory()) {
      if (known !== undefined) this.remove(known);
      // The parent's own watch reports its removal as an event with its own name.
      else if (st === undefined) this.recheckQuietly(parent);
      return;
    }
    if (known !== undefined) {
      if (known.id === st.ino) return; // seen already (by the scan, or a second event)
      this.remove(known); // removed and made again under the same name
    }
    this.add(parent, name, key, st.ino);
  }

  /** After an event for a name that is not there: is the watched directory itself gone? */
  private recheckQuietly(dir: Dir): void {
    let st;
    try {
      st = statSync(this.abs(dir.key), { bigint: true, throwIfNoEntry: false });
    } catch (e) {
      if (!isGone(e)) return this.unreadable(dir.key, e);
    }
    if (st === undefined || st.ino !== dir.id) {
      if (dir.parent === null) this.rootGone();
      else this.check(dir.parent, dir.key.slice(dir.key.lastIndexOf('/') + 1));
    }
  }

  /**
   * A stat or readdir that failed for another reason than "gone" (EMFILE at the fd limit,
   * EACCES): nothing is changed, the tree may now miss something. Never thrown from a watcher
   * callback, where it would end the process; only the initial scan throws (the constructor).
   */
  private unreadable(key: string, e: unknown): void {
    if (this.scanning) throw e;
    this.skipped = true;
    this.warnOnce(`read:${errnoCode(e) ?? 'error'}`, `cgroup tree: cannot read ${utf8Of(key) || utf8Of(this.rootRaw)}: ${errorMessage(e)}; the tree may be incomplete (resync() to look again)`);
  }

  /** `dir` is the root or a directory still in the tree (not one removed meanwhile). */
  private tracked(dir: Dir): boolean {
    return !this.closed && (dir.parent === null ? dir === this.root : this.dirs.get(dir.key) === dir);
  }

  private add(parent: Dir, name: string, key: string, id: bigint): void {
    const rel = utf8Of(key);
    if (this.exclude.has(rel)) return;
    const depth = parent.depth + 1;
    if (depth > this.maxDepth) {
      this.skipped = true;
      this.warnOnce('depth', `cgroup tree: ${rel} is deeper than ${this.maxDepth} levels; not tracking it or anything that deep`);
      return;
    }
    if (this.dirs.size >= this.maxDirs) {
      this.skipped = true;
      this.warnOnce('dirs', `cgroup tree: ${this.maxDirs} directories tracked, the limit; not tracking ${rel} and further ones`);
      return;
    }
    const user = userOfCgroup(rel);
    if (user !== null) {
      const mine = this.perUser.get(user) ?? 0;
      if (mine >= this.maxPerUser || this.users >= this.maxUsers) {
        this.skipped = true;
        this.warnOnce(`user:${user}`, mine >= this.maxPerUser
          ? `cgroup tree: uid ${user} has ${this.maxPerUser} directories tracked, the per-user limit; not tracking ${rel} and further ones of that user`
          : `cgroup tree: users' directories fill their share (${this.maxUsers}); not tracking ${rel} (uid ${user}) and further ones`);
        return;
      }
      this.perUser.set(user, mine + 1);
      this.users++;
    }
    const dir: Dir = { key, rel, id, app: classifyCgroup(rel), depth, user, parent, children: new Set(), watcher: null };
    this.dirs.set(key, dir);
    parent.children.add(name);
    try {
      this.opts.onAdded?.({ rel, id, app: dir.app });
    } finally {
      // After the callback (latency); also when it threw, so the tree stays whole.
      if (!this.closed && this.dirs.get(key) === dir) this.follow(dir);
    }
  }

  /** Watches a new directory, then scans it for children made before the watch. */
  private follow(dir: Dir): void {
    try {
      dir.watcher = this.watchDir(dir);
    } catch (e) {
      if (isGone(e)) {
        this.remove(dir);
        return;
      }
      this.warnOnce(`watch:${errnoCode(e) ?? 'error'}`, `cgroup tree: cannot watch ${dir.rel}: ${errorMessage(e)}`);
      this.skipped = true;
    }
    this.scan(dir);
  }

  /** Checks every entry of `dir` and every child it had (new ones added, vanished ones removed). */
  private scan(dir: Dir): void {
    let names: string[];
    try {
      names = readdirSync(this.abs(dir.key), { withFileTypes: true, encoding: 'latin1' })
        .filter((e) => e.isDirectory()).map((e) => e.name);
    } catch (e) {
      if (!isGone(e)) return this.unreadable(dir.key, e);
      this.recheck(dir);
      return;
    }
    const seen = new Set(names);
    for (const name of dir.children) if (!seen.has(name)) names.push(name);
    for (const name of names) {
      if (!this.tracked(dir)) return;
      this.check(dir, name);
    }
  }

  /** Forgets `dir` and everything below it, reporting the deepest first. */
  private remove(dir: Dir): void {
    if (this.dirs.get(dir.key) !== dir) return;
    for (const name of [...dir.children]) {
      const child = this.dirs.get(`${dir.key}/${name}`);
      if (child !== undefined) this.remove(child);
    }
    dir.watcher?.close();
    dir.watcher = null;
    this.dirs.delete(dir.key);
    if (dir.user !== null) {
      const left = (this.perUser.get(dir.user) ?? 1) - 1;
      if (left > 0) this.perUser.set(dir.user, left);
      else this.perUser.delete(dir.user);
      this.users--;
    }
    dir.parent?.children.delete(dir.key.slice(dir.key.lastIndexOf('/') + 1));
    if (!this.closed) this.opts.onRemoved?.({ rel: dir.rel, id: dir.id });
  }
}
