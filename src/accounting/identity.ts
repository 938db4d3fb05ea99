/**
 * Who the kernel's usage keys are (src/accounting/service.ts: AppIdentities). An app key names an
 * app the daemon recognised by its cgroup (src/daemon/apps.ts: AppKeys, "uid/name"). Traffic of a
 * cgroup without one (a plain directory, a slice, the root) is counted by the kernel under the
 * socket's cgroup id and uid; it is named after that cgroup's process's executable and the uid,
 * read once when the cgroup's traffic is first seen. The cgroup root's own traffic is the kernel's
 * sockets' (no process lives there but kernel threads): unattributed.
 */
import { basename } from 'node:path';
import type { AppKind } from '../daemon/apps.js';
import type { AppIdentities } from './service.js';
import type { UsageAppView } from './view.js';

export interface IdentitySources {
  readonly keys: {
    entries(): Iterable<{ key: number; uid: number | null; name: string }>;
    describe(key: number): { uid: number | null; name: string } | null;
  };
  readonly apps: {
    cgroupById(id: bigint): { rel: string; uid: number | null } | null;
    kindOfKey(key: number): AppKind | null;
    exeIn(rel: string): string | null;
  };
}

/** Bound on the names remembered (each is a few hundred bytes; forgotten all at once beyond). */
const MAX_REMEMBERED = 4096;

/** What no local process owns (forwarded, kernel-made): the uplinks' rest, and the kernel's own sockets. */
export const UNATTRIBUTED_APP: UsageAppView = { key: 'unattributed', name: '(unattributed)', kind: 'unattributed', uid: null, exe: null };

export const appKeyId = (uid: number | null, name: string): string => `app:${uid ?? 'system'}/${name}`;

export class KernelIdentities implements AppIdentities {
  private readonly byKey = new Map<number, UsageAppView>();
  private readonly byCgroup = new Map<string, UsageAppView>();

  constructor(private readonly src: IdentitySources) {}

  ofKey(key: number): UsageAppView | null {
    const had = this.byKey.get(key);
    if (had) return had;
    const d = this.src.keys.describe(key);
    if (d === null) return null;
    const kind = this.src.apps.kindOfKey(key);
    const v: UsageAppView = { key: appKeyId(d.uid, d.name), name: d.name, kind: kind ?? 'app', uid: d.uid, exe: null };
    // Remembered once its kind is known (its cgroup may be gone by the next reading).
    if (kind !== null) this.remember(this.byKey, key, v);
    return v;
  }

  ofCgroup(id: bigint, uid: number): UsageAppView {
    const k = `${id}|${uid}`;
    const had = this.byCgroup.get(k);
    if (had) return had;
    // No full socket (a request socket's SYN-ACK, a time-wait reset: cgroup id 0), or the root
    // cgroup, which holds the kernel's own sockets (ICMP errors and echo replies, resets): nobody's.
    if (id === 0n) return UNATTRIBUTED_APP;
    const c = this.src.apps.cgroupById(id);
    if (c !== null && c.rel === '') return UNATTRIBUTED_APP;
    const exe = c ? this.src.apps.exeIn(c.rel) : null;
    const v: UsageAppView = exe !== null
      ? { key: `proc:${uid}:${exe}`, name: basename(exe), kind: 'process', uid, exe }
      : { key: `proc:${uid}:cgroup:${c ? c.rel || '/' : String(id)}`, name: c ? `cgroup ${c.rel || '/'}` : `uid ${uid}`, kind: 'process', uid, exe: null };
    this.remember(this.byCgroup, k, v);
    return v;
  }

  keys(): Iterable<{ key: number; uid: number | null; name: string }> {
    return this.src.keys.entries();
  }

  private remember<K>(m: Map<K, UsageAppView>, k: K, v: UsageAppView): void {
    if (m.size >= MAX_REMEMBERED) m.clear();
    m.set(k, v);
  }
}
