/**
 * mkdir → `added` and rmdir → `removed` latency of a CgroupTree (src/identity/cgroup-tree.ts),
 * as the daemon would see it: another process (systemd, here a child Node process) makes the
 * directory while this process sleeps in its event loop. The child takes CLOCK_MONOTONIC
 * (process.hrtime) just before each mkdir/rmdir and reports it; the callback takes it on entry.
 * One operation at a time: the next is asked for once both sides of the last one are in.
 * Used by test/unit/cgroup-tree.test.ts and bench/main.ts.
 */
import { spawn } from 'node:child_process';
import { rmdirSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { CgroupTree } from '../../src/identity/cgroup-tree.js';

export interface LatencyStats { n: number; p50_us: number; p99_us: number; max_us: number; mean_us: number }
export interface TreeLatency { mkdir: LatencyStats; rmdir: LatencyStats; watched: number }

const CHILD = `
const { mkdirSync, rmdirSync } = require('node:fs');
const rl = require('node:readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const op = line[0], path = line.slice(2);
  const t0 = process.hrtime.bigint();
  if (op === 'm') mkdirSync(path); else rmdirSync(path);
  process.stdout.write(t0 + '\\n');
});
`;

export function stats(us: number[]): LatencyStats {
  const s = [...us].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
  return { n: s.length, p50_us: at(0.5), p99_us: at(0.99), max_us: s[s.length - 1] ?? NaN, mean_us: s.reduce((a, b) => a + b, 0) / s.length };
}

/**
 * Makes `n` cgroups `parentRel/lat-I` (parentRel must exist below `root`) one at a time, then
 * removes them one at a time, measuring each against a CgroupTree watching `root`; `guardMs`
 * bounds each wait. Everything it made is removed before it returns or throws (best effort).
 */
export async function measureTreeLatency(root: string, parentRel: string, n: number, guardMs = 10_000): Promise<TreeLatency> {
  const seen = new Map<string, bigint>();
  let want: string | null = null;
  let wake: (() => void) | null = null;
  const note = (rel: string): void => {
    const t = process.hrtime.bigint();
    if (rel !== want) return;
    seen.set(rel, t);
    wake?.();
  };
  const tree = new CgroupTree(root, { onAdded: (e) => note(e.rel), onRemoved: (e) => note(e.rel) });
  const child = spawn(process.execPath, ['-e', CHILD], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const made: string[] = [];
  const once = async (op: 'm' | 'r', rel: string): Promise<number> => {
    want = rel;
    seen.delete(rel);
    const event = new Promise<void>((resolve, reject) => {
      const guard = setTimeout(() => reject(new Error(`no event for ${op} ${rel} in ${guardMs} ms`)), guardMs);
      wake = () => {
        clearTimeout(guard);
        resolve();
      };
    });
    child.stdin.write(`${op} ${root}/${rel}\n`);
    const line = await lines.next();
    if (line.done === true) throw new Error('latency child exited');
    const t0 = BigInt(line.value);
    if (op === 'm') made.push(rel);
    await event;
    wake = null;
    return Number(seen.get(rel)! - t0) / 1000;
  };
  const mk: number[] = [];
  const rm: number[] = [];
  try {
    for (let i = 0; i < n; i++) mk.push(await once('m', `${parentRel}/lat-${i}`));
    const watched = tree.size;
    while (made.length > 0) {
      rm.push(await once('r', made[made.length - 1]!));
      made.pop();
    }
    return { mkdir: stats(mk), rmdir: stats(rm), watched };
  } finally {
    child.stdin.end();
    child.kill();
    tree.close();
    for (const rel of made.reverse()) {
      try {
        rmdirSync(`${root}/${rel}`);
      } catch {
        /* gone already */
      }
    }
  }
}
