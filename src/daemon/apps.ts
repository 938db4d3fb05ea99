/**
 * The apps on the device, as the cgroup tree shows them, and their kernel keys.
 *
 * Fed by the live cgroup tree (src/identity/cgroup-tree.ts): every directory under the daemon's
 * cgroup root is a known cgroup; one that is (or is nested in) a systemd unit is an app's. A new
 * cgroup's BPF entry is written synchronously, in the very callback that reported it, so the
 * window in which its sockets get their parent's `pending` treatment is the watcher's latency
 * alone (src/backstop/desired.ts says what `pending` is). Everything else (a reload, an uplink
 * change, a learned host) recomputes the desired maps and writes only the difference.
 *
 * App keys: each app (uid + name) gets a small number, the key of its kernel counters, kept in
 * the state file so that it means the same app across restarts.
 *
 * Connect reports: the kernel reports the connects of apps whose treatment asks (WM_T_ASK,
 * src/backstop/bpf.ts: AppMaps.onConnect); connected() resolves each report's cgroup id to the
 * app and hands it to the `onConnect` hook.
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { decide, NO_WISH } from '../decision/decide.js';
import { INTERNET } from '../destination/destination.js';
import { errorMessage } from '../errors.js';
import type { PeerCred } from '../native/index.js';
import type { AppFacts, AppRule } from '../policy/app.js';
import { treatmentFor } from '../policy/treatment.js';
import { bestUplink } from '../routing/desired.js';
import {
  cgroupEntry, cgroupFacts, desiredMaps, planMaps, WM_T_SET,
  type CgroupEntry, type DesiredMaps, type KernelAppMaps, type KernelTreatment, type KnownCgroup, type MapsWorld,
} from '../backstop/desired.js';
import { MARK_MASK } from '../constants.js';
import type { World } from './world.js';
import { mayChangeState } from './access.js';
import { classifyCgroup, userOfCgroup, type CgroupApp } from '../identity/cgroup.js';
import type { ConnectRecord } from '../backstop/bpf.js';
import type { EventBody } from './events.js';
import type { Logger } from './log.js';

const SOCKET_LINK_RE = /^socket:\[(\d+)\]$/;
const INET_TABLES = ['tcp', 'tcp6', 'udp', 'udp6', 'raw', 'raw6'] as const;

/** The inodes of every inet socket of this network namespace (/proc/net/{tcp,udp,raw}{,6}). */
export function inetSocketInodes(procRoot = '/proc'): Set<string> {
  const out = new Set<string>();
  for (const t of INET_TABLES) {
    let text: string;
    try {
      text = readFileSync(join(procRoot, 'self/net', t), 'latin1');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
      const inode = line.trim().split(/\s+/)[9];
      if (inode !== undefined && inode !== '0') out.add(inode);
    }
  }
  return out;
}

/** How the daemon recognised an app (shown by `waymark apps`). */
export type AppKind = 'app' | 'flatpak' | 'service' | 'login' | 'scope';

/** A cgroup as the tree reports it, with what its name says. */
export interface SeenCgroup {
  readonly rel: string;
  readonly id: bigint;
  readonly uid: number | null;
  /** The unit it is or is nested in; null: a slice or plain directory. */
  readonly unit: {
    readonly unit: string;
    /** The unit's own cgroup (rel): where a nested cgroup's app lives. */
    readonly unitRel: string;
    readonly kind: AppKind;
    readonly name: string;
    readonly appId: string | null;
    readonly flatpakId: string | null;
  } | null;
}

/** A cgroup the tree reported (src/identity/cgroup-tree.ts), as the app service keeps it. */
export function seenOf(rel: string, id: bigint, app: CgroupApp | null): SeenCgroup {
  if (app === null) {
    // A slice or plain directory: the uid of the user slice it is in, if any (for `pending`).
    return { rel, id, uid: userOfCgroup(rel), unit: null };
  }
  // The unit's own directory: the innermost ancestor (or itself) named like the unit.
  const parts = rel.split('/');
  const at = app.nested ? parts.indexOf(app.unit) : parts.length - 1;
  const unitRel = at >= 0 ? parts.slice(0, at + 1).join('/') : rel;
  const kind: AppKind = app.kind === 'app' && app.flatpakId !== null ? 'flatpak' : app.kind;
  return { rel, id, uid: app.uid, unit: { unit: app.unit, unitRel, kind, name: app.name, appId: app.appId, flatpakId: app.flatpakId } };
}


export interface AppView {
  name: string;
  kind: AppKind;
  unit: string;
  appId: string | null;
  flatpakId: string | null;
  uid: number | null;
  cgroup: string;
  /** Its kernel key (per-app counters). */
  key: number;
  /** The executable of its first process, when it has one. */
  exe: string | null;
  pids: number;
  /** The app rule that applies in the kernel (null: none; default routing). */
  rule: string | null;
  /** Per destination: the uplink its connections take, "default" (main routing) or "denied". */
  uplinks: Record<string, string>;
  /** Its live inet sockets (held by its processes' fds, each socket once). */
  sockets: number;
}

/** A session's cgroup, as the session service knows it (src/backstop/nft.ts: BackstopSession). */
export interface SessionCgroupMark {
  /** Relative to the cgroup2 mount. */
  readonly cgroup: string;
  readonly mark?: number | null;
}

/** The app of a reported connect. */
export interface ConnectingApp {
  readonly id: bigint;
  /** Relative to the cgroup root. */
  readonly rel: string;
  readonly uid: number | null;
  /** The unit it is or is nested in (its app ID, Flatpak ID, name, kind); null: a slice or plain directory. */
  readonly unit: SeenCgroup['unit'];
  readonly appKey: number;
  /** False: the cgroup tree has not reported it (yet); found through /proc/PID/cgroup. */
  readonly known: boolean;
}

/** A connect the kernel reported (an app whose treatment asks), resolved to its app. */
export interface AppConnect {
  readonly cgroup: ConnectingApp;
  readonly family: 4 | 6;
  /** The destination (a v4-mapped IPv6 one as IPv4), as text. */
  readonly address: string;
  readonly port: number;
  readonly proto: ConnectRecord['proto'];
  /** connect(), or an addressed sendmsg()/sendto() (UDP). */
  readonly via: ConnectRecord['via'];
  /** The calling process (init pid namespace), its uid and thread name. */
  readonly pid: number;
  readonly uid: number;
  readonly comm: string;
  /** CLOCK_MONOTONIC, in the kernel. */
  readonly monotonicNs: bigint;
  /** The kernel refused it: its treatment as it is denies the uplink it would take. */
  readonly denied: boolean;
  /** The kernel's treatment was the cgroup's own, an ancestor's `pending` (not classified yet), or the uid's. */
  readonly source: ConnectRecord['source'];
}

export interface AppServiceDeps {
  readonly maps: KernelAppMaps;
  /** Null: the kernel side is not in force, and why (`waymark apps` says so). */
  readonly kernelOff?: string | null;
  /** The world the maps follow (rules, uplinks, destinations with learned hosts, main's default). */
  readonly world: () => Omit<MapsWorld, 'cgroups'>;
  /** The absolute directory of the cgroup root (to read cgroup.procs for `waymark apps`). */
  readonly cgroupDir: string;
  /** The cgroup2 mount and the root relative to it ("/": the whole hierarchy). */
  readonly mount: string;
  readonly cgroupRoot: string;
  /** The daemon's session cgroups (absolute: their parent directory), and the sessions in it. */
  readonly sessionsDir: string;
  readonly sessions: () => readonly SessionCgroupMark[];
  readonly keys: AppKeys;
  readonly publish: (e: EventBody) => void;
  readonly log: Logger;
  /** CLOCK_MONOTONIC nanoseconds (default: process.hrtime.bigint()). */
  readonly now?: () => bigint;
  readonly procRoot?: string;
  /** Each connect the kernel reports (see {@link AppService.connected}); none: they are dropped. */
  readonly onConnect?: (e: AppConnect) => void;
}

/** App keys by "uid/name", persisted by the daemon (the state file's `appKeys`). */
export class AppKeys {
  private readonly keys: Map<string, number>;
  private next: number;

  constructor(saved: Readonly<Record<string, number>> = {}, private readonly save: (all: Record<string, number>) => void = () => undefined) {
    this.keys = new Map(Object.entries(saved));
    this.next = Math.max(0, ...this.keys.values()) + 1;
  }

  /** Every key given, with its app's uid (null: a system service) and name. */
  *entries(): IterableIterator<{ key: number; uid: number | null; name: string }> {
    for (const [id, key] of this.keys) {
      const at = id.indexOf('/');
      const who = id.slice(0, at);
      yield { key, uid: who === 'system' ? null : Number(who), name: id.slice(at + 1) };
    }
  }

  /** The app a key was given to (null: none). */
  describe(key: number): { uid: number | null; name: string } | null {
    for (const e of this.entries()) if (e.key === key) return { uid: e.uid, name: e.name };
    return null;
  }

  keyOf(uid: number | null, name: string): number {
    const id = `${uid ?? 'system'}/${name}`;
    let k = this.keys.get(id);
    if (k === undefined) {
      k = this.next++;
      this.keys.set(id, k);
      this.save(Object.fromEntries(this.keys));
    }
    return k;
  }
}

export class AppService {
  private readonly known = new Map<string, KnownCgroup & { readonly seen: SeenCgroup }>();
  /** The known cgroups by id (the connect reports'). */
  private readonly relOf = new Map<bigint, string>();
  private applied: DesiredMaps | undefined;
  private readonly now: () => bigint;
  private readonly reports = { delivered: 0, unresolved: 0 };
  /** The session cgroups' ids (outside the tree the daemon watches), relative to the root: usage names them. */
  private readonly sessionIds = new Map<bigint, string>();

  constructor(private readonly deps: AppServiceDeps) {
    this.now = deps.now ?? ((): bigint => process.hrtime.bigint());
  }

  /** A cgroup appeared: its entry is in the kernel when this returns. */
  added(c: SeenCgroup): void {
    const appKey = c.unit ? this.deps.keys.keyOf(c.uid, c.unit.name) : 0;
    const k = { id: c.id, rel: c.rel, uid: c.uid, unit: c.unit, appKey, seen: c };
    const prev = this.known.get(c.rel);
    this.known.set(c.rel, k);
    if (prev && prev.id !== c.id && this.relOf.get(prev.id) === c.rel) this.relOf.delete(prev.id);
    this.relOf.set(c.id, c.rel);
    const w = { ...this.deps.world(), cgroups: [] };
    const entry = cgroupEntry(k, w);
    const errors = this.deps.maps.apply({
      setCgroups: [[c.id, entry]], delCgroups: prev && prev.id !== c.id ? [prev.id] : [],
      setUids: [], delUids: [], setIfslots: [], delIfslots: [], setDestinations: [], delDestinations: [],
    });
    const at = this.now();
    if (this.applied) {
      const cgroups = new Map(this.applied.cgroups);
      if (prev && prev.id !== c.id) cgroups.delete(prev.id);
      cgroups.set(c.id, entry);
      this.applied = { ...this.applied, cgroups };
    }
    for (const e of errors) this.deps.log.error('cannot write an app entry to the kernel', { cgroup: c.rel, error: e });
    // The app's own cgroup (not one nested in it) is an app appearing.
    if (c.unit && c.unit.unitRel === c.rel) {
      const facts = cgroupFacts(k);
      const rule = facts ? w.rules.forKernel(facts) : undefined;
      const t = rule ? treatmentFor(rule, NO_WISH, w.uplinks, w.destinations) : undefined;
      this.deps.publish({
        type: 'app.appeared', uid: c.uid, name: c.unit.name, unit: c.unit.unit, cgroup: c.rel, kind: c.unit.kind,
        rule: rule?.name ?? null, uplink: t?.uplink?.spec.name ?? null, classifiedNs: at.toString(),
      });
    }
  }

  removed(rel: string): void {
    const k = this.known.get(rel);
    if (!k) return;
    this.known.delete(rel);
    if (this.relOf.get(k.id) === rel) this.relOf.delete(k.id);
    const errors = this.deps.maps.apply({
      setCgroups: [], delCgroups: [k.id], setUids: [], delUids: [], setIfslots: [], delIfslots: [], setDestinations: [], delDestinations: [],
    });
    if (this.applied) {
      const cgroups = new Map(this.applied.cgroups);
      cgroups.delete(k.id);
      this.applied = { ...this.applied, cgroups };
    }
    for (const e of errors) this.deps.log.warn('cannot remove an app entry from the kernel', { cgroup: rel, error: e });
    const u = k.seen.unit;
    if (u && u.unitRel === rel) {
      this.deps.publish({ type: 'app.left', uid: k.uid, name: u.name, unit: u.unit, cgroup: rel });
    }
  }

  /** The cgroup root itself (never reported by the tree): the last ancestor every walk finds. */
  start(rootId: bigint): void {
    this.known.set('', { id: rootId, rel: '', uid: null, unit: null, appKey: 0, seen: { rel: '', id: rootId, uid: null, unit: null } });
    this.relOf.set(rootId, '');
    this.refresh();
  }

  /** Follows what the treatments depend on (after the kernel's routes did). */
  follow(world: Pick<World, 'subscribe'>): void {
    world.subscribe(['config', 'uplinks', 'learned', 'sessions', 'rules'], () => {
      this.refresh();
    });
  }

  get kernel(): { active: boolean; reason: string | null } {
    const off = this.deps.kernelOff ?? null;
    return { active: off === null, reason: off };
  }

  /**
   * The daemon's own session cgroups: their directory (a new session's cgroup, before its entry,
   * is left to the session's own mark) and each session (its mark; the nftables backstop does
   * its denials, src/backstop/nft.ts).
   */
  private fixedEntries(): Map<bigint, CgroupEntry> {
    const out = new Map<bigint, CgroupEntry>();
    const idOf = (path: string): bigint | null => {
      try {
        return statSync(path, { bigint: true }).ino;
      } catch {
        return null;
      }
    };
    const untouched: KernelTreatment = { app: 0, mark: 0, deny: 0, flags: WM_T_SET };
    const dir = idOf(this.deps.sessionsDir);
    if (dir !== null) out.set(dir, { self: untouched, pending: untouched });
    this.sessionIds.clear();
    for (const s of this.deps.sessions()) {
      const id = idOf(join(this.deps.mount, s.cgroup));
      if (id === null) continue;
      this.sessionIds.set(id, relative(this.deps.cgroupDir, join(this.deps.mount, s.cgroup)));
      const t: KernelTreatment = { ...untouched, mark: ((s.mark ?? 0) & MARK_MASK) >>> 0 };
      out.set(id, { self: t, pending: t });
    }
    return out;
  }

  /** Recomputes every entry from the world as it is now and writes the difference. */
  refresh(): void {
    const desired = desiredMaps({ ...this.deps.world(), cgroups: [...this.known.values()], fixed: this.fixedEntries() });
    const plan = planMaps(desired, this.applied);
    const errors = this.deps.maps.apply(plan);
    for (const e of errors) this.deps.log.error('cannot update the kernel app maps', { error: e });
    // After a failure the next refresh plans against the same state again: the writes are
    // idempotent, so it redoes what failed (and the deletions) without losing any.
    if (errors.length === 0) this.applied = desired;
  }

  /** The apps the caller may see (its own; root and the waymark group: all), sorted by name. */
  list(cred: PeerCred): AppView[] {
    const w = { ...this.deps.world(), cgroups: [] };
    // From procfs, on request only: the inet sockets of the namespace held by the app's processes.
    const inet = inetSocketInodes(this.deps.procRoot ?? '/proc');
    // Each unit's cgroups (its own and those nested in it), in one pass.
    const byUnit = new Map<string, string[]>();
    for (const x of this.known.values()) {
      const at = x.seen.unit?.unitRel;
      if (at === undefined) continue;
      const list = byUnit.get(at);
      if (list) list.push(x.rel);
      else byUnit.set(at, [x.rel]);
    }
    const out: AppView[] = [];
    for (const k of this.known.values()) {
      const u = k.seen.unit;
      if (!u || u.unitRel !== k.rel) continue;
      if (k.uid !== cred.uid && !mayChangeState(cred)) continue;
      const facts = cgroupFacts(k);
      const rule = facts ? w.rules.forKernel(facts) : undefined;
      const pids = (byUnit.get(k.rel) ?? []).flatMap((rel) => this.pidsOf(rel));
      out.push({
        name: u.name, kind: u.kind, unit: u.unit, appId: u.appId, flatpakId: u.flatpakId, uid: k.uid, cgroup: k.rel, key: k.appKey,
        exe: pids[0] === undefined ? null : this.exeOf(pids[0]), pids: pids.length,
        rule: rule?.name ?? null, uplinks: facts ? this.uplinksOf(facts, w) : {},
        sockets: this.socketsOf(pids, inet),
      });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name) || a.cgroup.localeCompare(b.cgroup));
  }

  /**
   * A connect the kernel reported: its cgroup id resolved to the app and handed to the
   * `onConnect` hook. A cgroup the tree has not reported (created a moment ago, or beyond the
   * tree's limits) is found through the process's /proc/PID/cgroup when that still names a
   * cgroup of this id below the root; otherwise (the process is gone or moved) the report is
   * dropped and counted (`connects.unresolved`). A hook that throws is logged, never fatal.
   */
  connected(r: ConnectRecord): void {
    const hook = this.deps.onConnect;
    if (hook === undefined) return;
    const cgroup = this.connectingApp(r.cgroupId, r.pid);
    if (cgroup === null) {
      this.reports.unresolved++;
      this.deps.log.debug('a reported connect of a cgroup not known, dropped', { cgroupId: r.cgroupId.toString(), pid: r.pid, address: r.address, port: r.port });
      return;
    }
    this.reports.delivered++;
    try {
      hook({
        cgroup, family: r.family, address: r.address, port: r.port, proto: r.proto, via: r.via,
        pid: r.pid, uid: r.uid, comm: r.comm, monotonicNs: r.monotonicNs, denied: r.denied, source: r.source,
      });
    } catch (e) {
      this.deps.log.error('the connect report hook failed', { cgroup: cgroup.rel, error: errorMessage(e) });
    }
  }

  /** Connect reports handed to the hook, and dropped for want of a cgroup. */
  get connects(): { delivered: number; unresolved: number } {
    return { ...this.reports };
  }

  private connectingApp(id: bigint, pid: number): ConnectingApp | null {
    const rel = this.relOf.get(id);
    const k = rel === undefined ? undefined : this.known.get(rel);
    if (k) return { id, rel: k.rel, uid: k.uid, unit: k.seen.unit, appKey: k.appKey, known: true };
    const found = this.cgroupOfPid(pid, id);
    if (found === null) return null;
    const seen = seenOf(found, id, classifyCgroup(found));
    return { id, rel: found, uid: seen.uid, unit: seen.unit, appKey: seen.unit ? this.deps.keys.keyOf(seen.uid, seen.unit.name) : 0, known: false };
  }

  /** The process's cgroup (cgroup2: the "0::" line) relative to the root, if it is below it and has this id. */
  private cgroupOfPid(pid: number, id: bigint): string | null {
    let text: string;
    try {
      text = readFileSync(join(this.deps.procRoot ?? '/proc', String(pid), 'cgroup'), 'latin1');
    } catch {
      return null; // gone
    }
    const path = text.split('\n').find((l) => l.startsWith('0::'))?.slice(3);
    const root = this.deps.cgroupRoot.replace(/\/+$/, '');
    if (path === undefined || (path !== root && !path.startsWith(`${root}/`))) return null;
    const rel = path.slice(root.length).replace(/^\/+/, '');
    try {
      return statSync(join(this.deps.cgroupDir, rel), { bigint: true }).ino === id ? rel : null;
    } catch {
      return null;
    }
  }

  /** A known cgroup by id (the usage counters name cgroups without an app key by id). */
  cgroupById(id: bigint): { rel: string; uid: number | null; kind: AppKind | null } | null {
    const rel = this.relOf.get(id);
    const k = rel === undefined ? undefined : this.known.get(rel);
    if (k) return { rel: k.rel, uid: k.uid, kind: k.seen.unit?.kind ?? null };
    // A `waymark exec` session's (named after the program it runs).
    const session = this.sessionIds.get(id);
    return session === undefined ? null : { rel: session, uid: null, kind: null };
  }

  /** How an app key's app was recognised (the first known cgroup with that key; null: none now). */
  kindOfKey(key: number): AppKind | null {
    for (const k of this.known.values()) if (k.appKey === key && k.seen.unit) return k.seen.unit.kind;
    return null;
  }

  /** The executable of the first process in a known cgroup (null: none, or unreadable). */
  exeIn(rel: string): string | null {
    const pid = this.pidsOf(rel)[0];
    return pid === undefined ? null : this.exeOf(pid);
  }

  /** How many cgroups and apps are known (for status). */
  get counts(): { cgroups: number; apps: number } {
    let apps = 0;
    for (const k of this.known.values()) if (k.seen.unit?.unitRel === k.rel) apps++;
    return { cgroups: this.known.size, apps };
  }

  /** Per destination, the uplink its rule there gives the app (for TCP, no needs), `denied`, or `default`. */
  private uplinksOf(facts: AppFacts, w: Omit<MapsWorld, 'cgroups'>): Record<string, string> {
    const out: Record<string, string> = {};
    for (const d of w.destinations) {
      const rule: AppRule | undefined = w.rules.decideFor(facts, [], { destination: d.name, proto: 'tcp', needs: [] }).policy;
      if (rule === undefined) {
        out[d.name] = d.name === INTERNET ? 'default' : bestUplink(w.uplinks, d, 4)?.spec.name ?? 'default';
        continue;
      }
      const r = decide({ uplinks: w.uplinks, destinations: w.destinations, wish: NO_WISH, app: rule, family: 4, addr: new Uint8Array(4), learnedDestination: d.name });
      out[d.name] = r.action === 'steer' ? r.uplink.spec.name : r.action === 'deny' ? 'denied' : 'default';
    }
    return out;
  }

  private pidsOf(rel: string): number[] {
    try {
      return readFileSync(join(this.deps.cgroupDir, rel, 'cgroup.procs'), 'latin1').split('\n').filter((l) => l !== '').map(Number);
    } catch (e) {
      this.deps.log.debug('cannot read a cgroup\'s processes', { cgroup: rel, error: errorMessage(e) });
      return [];
    }
  }

  /** The inet sockets the processes hold (each counted once, however many fds or processes share it). */
  private socketsOf(pids: readonly number[], inet: ReadonlySet<string>): number {
    const seen = new Set<string>();
    const proc = this.deps.procRoot ?? '/proc';
    for (const pid of pids) {
      let fds: string[];
      try {
        fds = readdirSync(join(proc, String(pid), 'fd'));
      } catch {
        continue; // gone
      }
      for (const fd of fds) {
        try {
          const m = SOCKET_LINK_RE.exec(readlinkSync(join(proc, String(pid), 'fd', fd)));
          if (m?.[1] !== undefined && inet.has(m[1])) seen.add(m[1]);
        } catch {
          /* closed meanwhile */
        }
      }
    }
    return seen.size;
  }

  private exeOf(pid: number): string | null {
    try {
      return readlinkSync(join(this.deps.procRoot ?? '/proc', String(pid), 'exe')).replace(/ \(deleted\)$/, '');
    } catch {
      return null;
    }
  }
}
