/**
 * The lab's own cgroup subtree: `<cgroup2 mount>/wm-lab-<runId>`, the cgroup root the lab's
 * waymarkd steers (`--cgroup-root`), so that its BPF programs and app classification touch only
 * the processes the lab puts there. Tests build systemd-style trees inside it
 * (user.slice/user-1000.slice/user@1000.service/app.slice/app-….scope) and run programs in them.
 * Removed (every process in it killed first, with cgroup.kill) when the lab is destroyed; dirs of
 * dead runs are swept like their namespaces.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCgroup2Mount } from '../backstop/cgroup.js';

const DIR_RE = /^wm-lab-((\d+)-[0-9a-f]{4})$/;

export function cgroup2Mount(): string | null {
  return parseCgroup2Mount(readFileSync('/proc/self/mountinfo', 'utf8'));
}

export class LabCgroups {
  /** Relative to the cgroup2 mount: what `waymarkd --cgroup-root` takes. */
  readonly rel: string;
  /** Absolute. */
  readonly dir: string;

  constructor(readonly mount: string, runId: string) {
    this.rel = `wm-lab-${runId}`;
    this.dir = join(mount, this.rel);
  }

  create(): void {
    mkdirSync(this.dir, { mode: 0o755 });
  }

  /** Creates `rel` (relative to the lab's root) and its parents, as systemd would: root-owned, 0755. */
  mkdir(rel: string): string {
    const path = join(this.dir, rel);
    mkdirSync(path, { recursive: true, mode: 0o755 });
    return path;
  }

  /** The argv that runs `argv` inside the cgroup `rel` (moved in before it execs). */
  wrap(rel: string, argv: readonly string[]): string[] {
    const procs = join(this.dir, rel, 'cgroup.procs');
    return ['sh', '-c', `echo $$ > '${procs}' && exec "$@"`, 'sh', ...argv];
  }

  /** Kills everything in the subtree, then removes it (deepest first). */
  destroy(): void {
    removeCgroupTree(this.dir);
  }
}

/** Kills every process in the cgroup subtree at `dir` (absolute), then removes it, deepest first. */
export function removeCgroupTree(dir: string): void {
  if (!existsSync(dir)) return;
  try {
    writeFileSync(join(dir, 'cgroup.kill'), '1');
  } catch {
    /* before 5.14, or gone */
  }
  // Killed processes leave their cgroups asynchronously: wait (bounded) until none is left.
  for (let i = 0; i < 200 && populated(dir); i++) spawnSync('sleep', ['0.01']);
  const walk = (d: string): void => {
    let entries: string[];
    try {
      entries = readdirSync(d).filter((e) => {
        try {
          return statSync(join(d, e)).isDirectory();
        } catch {
          return false;
        }
      });
    } catch {
      return;
    }
    for (const e of entries) walk(join(d, e));
    try {
      rmdirSync(d);
    } catch {
      /* busy: left for the sweep */
    }
  };
  walk(dir);
}

function populated(dir: string): boolean {
  try {
    return /^populated 1$/m.test(readFileSync(join(dir, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

/** Removes the cgroup roots of lab runs unless `keep` says otherwise (its creator lives, it was detached). */
export function sweepStaleCgroups(keep: (pid: number, runId: string) => boolean): string[] {
  const mount = cgroup2Mount();
  if (mount === null) return [];
  const removed: string[] = [];
  for (const e of readdirSync(mount)) {
    const m = DIR_RE.exec(e);
    if (m?.[1] === undefined || m[2] === undefined) continue;
    if (keep(Number(m[2]), m[1])) continue;
    removeCgroupTree(join(mount, e));
    removed.push(e);
  }
  return removed;
}
