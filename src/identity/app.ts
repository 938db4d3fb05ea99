/**
 * Who is calling: what the kernel says about the process behind a decide connection.
 *
 * Input is the SO_PEERCRED of the connection (pid, uid, gid: set by the kernel at connect()).
 * Everything else comes from /proc/PID, never from the caller's messages or environment:
 *   - exe: readlink /proc/PID/exe (" (deleted)" stripped: the binary was replaced or removed);
 *   - comm: the command name in /proc/PID/stat (15 bytes; the process may change it: a hint only);
 *   - cgroup: the cgroup v2 path (the "0::" line of /proc/PID/cgroup). In hybrid mode (v2 mounted
 *     at /sys/fs/cgroup/unified, as on this project's machines) processes usually show "0::/";
 *     it is reported as is, since that is what a v2 match (BPF, nftables `socket cgroupv2`) sees;
 *   - unit: the systemd unit the cgroup belongs to (./cgroup.ts: the first .service or .scope below
 *     the slices, or below user@UID.service; what lies below a unit is the unit's own subtree),
 *     from the v2 path, or from the v1 "name=systemd" hierarchy when the v2 path names none;
 *   - app: the application ID of a systemd app unit as desktops name them
 *     (https://systemd.io/DESKTOP_ENVIRONMENTS/): app[-<launcher>]-<ApplicationID>[@<RANDOM>].service
 *     or app[-<launcher>]-<ApplicationID>-<RANDOM>.scope; IDs escape '-' as \x2d (./unit.ts);
 *   - flatpakId: [Application] name= of /proc/PID/root/.flatpak-info when readable (what Flatpak
 *     and xdg-desktop-portal use), else the ID in a scope named app-flatpak-<ID>-<N>.scope.
 *
 * Trust: a process can move itself into any cgroup of its own delegated subtree and, in a user
 * namespace, show any file as its root's .flatpak-info. So unit, app and flatpakId separate the
 * programs of different users reliably, but a program can claim another app ID of its own user.
 * Use them for policy the user sets for themselves, not as a boundary between a user's programs.
 * .flatpak-info is opened with O_NOFOLLOW and read only if it is a small regular file: a symlink
 * planted there cannot make the (root) daemon read files of its choice.
 *
 * PID reuse: the start time in /proc/PID/stat is read before and after everything else; if the
 * process vanished or changed meanwhile, every derived field is null (pid/uid/gid remain: they
 * are the connection's). This does not catch a pid reused between connect() and the first read;
 * see {@link identify}'s `expectStartTime`.
 *
 * Synchronous and about a dozen small reads of procfs: call it once per connection, not per request.
 */
import { closeSync, constants, existsSync, fstatSync, openSync, readlinkSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type { Caller } from '../decision/server.js';
import { unitOf } from './cgroup.js';
import { appOfUnit, flatpakOfUnit } from './unit.js';

// The unit-name parsers moved to ./unit.ts and ./cgroup.ts; still importable from here.
export { unitOf } from './cgroup.js';
export { appOfUnit, flatpakOfUnit } from './unit.js';

export interface AppIdentity {
  pid: number;
  uid: number;
  gid: number;
  /** Absolute path of the executable, null when unreadable or the process is gone. */
  exe: string | null;
  comm: string | null;
  /** The cgroup v2 path, e.g. "/waymark/exec-1234" or "/user.slice/.../app-flatpak-org.foo.Bar-1234.scope". */
  cgroup: string | null;
  /** The systemd unit the process runs in, e.g. "nginx.service" or "app-flatpak-org.foo.Bar-1234.scope". */
  unit: string | null;
  /** The application ID of a systemd app unit, e.g. "org.foo.Bar" (see the module comment). */
  app: string | null;
  flatpakId: string | null;
  /** Start time of the process (clock ticks after boot, /proc/PID/stat field 22), as text. */
  startTime: string | null;
}

const MAX_FLATPAK_INFO = 64 * 1024; // fits procBuf

/** One buffer for every procfs read: identify() is synchronous, so reads never overlap. */
const procBuf = Buffer.allocUnsafe(64 * 1024);

/**
 * A procfs file as text, null when unreadable. procfs reports size 0, which sends
 * readFileSync through a growing-buffer loop; open + read into one buffer + close is half the
 * system calls (identify() went from ~80 to ~45 µs here).
 */
function readText(path: string): string | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY);
  } catch {
    return null;
  }
  try {
    return readRest(fd, 'latin1');
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

/** Reads fd to its end (at most procBuf's 64 KiB) as text. */
function readRest(fd: number, encoding: 'latin1' | 'utf8'): string {
  let off = 0;
  while (off < procBuf.length) {
    const n = readSync(fd, procBuf, off, procBuf.length - off, null);
    if (n <= 0) break;
    off += n;
  }
  return procBuf.toString(encoding, 0, off);
}

/** Field 2 (comm) of /proc/PID/stat, the same as /proc/PID/comm: between the first '(' and the last ')'. */
export function commOf(statText: string): string | null {
  const open = statText.indexOf('(');
  const close = statText.lastIndexOf(')');
  return open < 0 || close < open ? null : statText.slice(open + 1, close);
}

/** Field 22 (starttime) of /proc/PID/stat; the comm field may hold spaces and parentheses. */
export function startTimeOf(statText: string): string | null {
  const close = statText.lastIndexOf(')');
  if (close < 0) return null;
  // After ") " come fields 3 (state), 4, ...: starttime is field 22, the 20th of those.
  const fields = statText.slice(close + 2).split(' ');
  const v = fields[19];
  return v !== undefined && /^\d+$/.test(v) ? v : null;
}

/** The cgroup v2 path (the "0::" line) and the v1 name=systemd path of /proc/PID/cgroup text. */
export function parseCgroupFile(text: string): { v2: string | null; systemdV1: string | null } {
  let v2: string | null = null;
  let systemdV1: string | null = null;
  for (const line of text.split('\n')) {
    // hierarchy-ID:controller-list:cgroup-path; the path may itself contain ':'.
    const first = line.indexOf(':');
    const second = first < 0 ? -1 : line.indexOf(':', first + 1);
    if (second < 0) continue;
    const id = line.slice(0, first);
    const controllers = line.slice(first + 1, second);
    const path = line.slice(second + 1);
    if (id === '0' && controllers === '') v2 = path;
    else if (controllers === 'name=systemd') systemdV1 = path;
  }
  return { v2, systemdV1 };
}

/** [Application] name= of a .flatpak-info keyfile. */
export function parseFlatpakInfo(text: string): string | null {
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || line === '') continue;
    const m = /^\[(.*)\]$/.exec(line);
    if (m) {
      section = m[1]!;
      continue;
    }
    if (section !== 'Application') continue;
    const eq = line.indexOf('=');
    if (eq > 0 && line.slice(0, eq).trim() === 'name') {
      const v = line.slice(eq + 1).trim();
      return v === '' ? null : v;
    }
  }
  return null;
}

/** Reads a small regular file without following a final symlink; null otherwise. */
function readSmallRegularFile(path: string): string | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > MAX_FLATPAK_INFO) return null;
    return readRest(fd, 'utf8');
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
}

export interface IdentifyOptions {
  /**
   * The start time the process had when it was first seen (for example read right after
   * accept()): if the process at caller.pid now has another, it is not the caller.
   */
  expectStartTime?: string;
  /** Called after the reads, before the start time is checked again (tests simulate pid reuse with it). */
  afterRead?: () => void;
  /**
   * The cgroup v2 path the daemon's cgroup root is (its --cgroup-root, e.g. a lab's subtree;
   * default "/"): units are recognised below it, as the cgroup tree classifies them.
   */
  cgroupRoot?: string;
}

/** A v2 path as seen from below `root` ("/" + the rest), or the path itself when it is not below it. */
function belowRoot(v2: string | null, root: string | undefined): string | null {
  if (v2 === null || root === undefined || root === '/' || root === '') return v2;
  const r = root.endsWith('/') ? root.slice(0, -1) : root;
  return v2 === r ? '/' : v2.startsWith(`${r}/`) ? v2.slice(r.length) : v2;
}

/** What the kernel says about the caller; derived fields are null when unknown (see the module comment). */
export function identify(caller: Caller, procRoot = '/proc', opts: IdentifyOptions = {}): AppIdentity {
  const unknown: AppIdentity = {
    pid: caller.pid, uid: caller.uid, gid: caller.gid,
    exe: null, comm: null, cgroup: null, unit: null, app: null, flatpakId: null, startTime: null,
  };
  if (!Number.isInteger(caller.pid) || caller.pid <= 0) return unknown;
  const dir = join(procRoot, String(caller.pid));
  const statText = readText(join(dir, 'stat'));
  const before = statText === null ? null : startTimeOf(statText);
  if (statText === null || before === null) return unknown;
  if (opts.expectStartTime !== undefined && opts.expectStartTime !== before) return unknown;

  let exe: string | null = null;
  try {
    exe = readlinkSync(join(dir, 'exe')).replace(/ \(deleted\)$/, '');
  } catch {
    /* kernel thread, zombie, or no permission */
  }
  const comm = commOf(statText);
  const cgroupText = readText(join(dir, 'cgroup'));
  const { v2, systemdV1 } = cgroupText === null ? { v2: null, systemdV1: null } : parseCgroupFile(cgroupText);
  const unit = unitOf(belowRoot(v2, opts.cgroupRoot)) ?? unitOf(systemdV1);
  // existsSync first: for the usual process without one, a failed open costs a thrown error.
  const infoPath = join(dir, 'root', '.flatpak-info');
  const fromInfo = existsSync(infoPath) ? readSmallRegularFile(infoPath) : null;
  const flatpakId = (fromInfo === null ? null : parseFlatpakInfo(fromInfo)) ?? flatpakOfUnit(unit);

  opts.afterRead?.();
  const afterText = readText(join(dir, 'stat'));
  const after = afterText === null ? null : startTimeOf(afterText);
  if (after !== before) return unknown; // vanished or replaced while we looked

  return {
    ...unknown, exe, comm, cgroup: v2, unit, app: appOfUnit(unit)?.app ?? null, flatpakId, startTime: before,
  };
}
