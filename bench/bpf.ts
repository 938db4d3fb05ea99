/**
 * `node dist/bench/bpf.js` (root): what the app programs (native/bpf/waymark.bpf.c) cost a
 * connect()+close() (native/bench/connect_bench) made in a cgroup below their attachment, with and
 * without them attached, in the world of test/support/bpf-world.ts:
 *   - to a listener on 127.0.0.1 in the same namespace (loopback: the programs' early exits);
 *   - to a listener across a veth (up0, an uplink: every program's full path, counters included).
 * With the programs, the cgroup has an entry (a mark and a denied slot that is not the one used),
 * so sock_create marks, connect4 predicts the slot, egress/ingress look up and count.
 * Modes are interleaved over ROUNDS rounds; medians over the rounds, ratios within each round.
 * With the programs, the uplink runs also once with the entry asking (WM_T_ASK: connect reports)
 * with repeats suppressed (the default quiet period: one report, the rest suppressed) and once
 * with every connect reported (a 1 ns quiet period; the agent reads them meanwhile).
 */
import { join } from 'node:path';
import { markForSlot } from '../src/constants.js';
import { NO_TREATMENT } from '../src/backstop/bpf.js';
import { PACKAGE_ROOT } from '../src/version.js';
import { BpfWorld } from '../test/support/bpf-world.js';

const N = Number(process.env['WAYMARK_BENCH_N'] ?? 4000);
const ROUNDS = Number(process.env['WAYMARK_BENCH_ROUNDS'] ?? 5);
const PORT = 9000;
/** Another object to measure (a variant being tuned); default: the built one. */
const OBJECT = process.env['WAYMARK_BENCH_OBJECT'];

interface Result { p50_us: number; p99_us: number; mean_us: number; ok: number; failed: number; refused: number }
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

const w = await BpfWorld.create();
try {
  const bench = join(PACKAGE_ROOT, 'native/bench/connect_bench');
  await w.call({ op: 'setIfSlot', ifindex: w.ifindex(w.nsA, 'up0'), slot: 1 });
  await w.call({ op: 'setIfSlot', ifindex: w.ifindex(w.nsA, 'up1'), slot: 2 });
  const cg = w.cgroup('bench');
  await w.setCgroup(cg, { ...NO_TREATMENT, app: 1, mark: markForSlot(1), deny: [2], decides: true });
  // The listeners (accept and close), outside the subtree: lo in A, far0 in B.
  const lo = w.spawnIn(null, [bench, '--serve', '127.0.0.1', String(PORT)]);
  const far = w.spawnIn(null, [bench, '--serve', '10.90.1.2', String(PORT)], { ns: w.nsB });
  for (const l of [lo, far]) if ((await l.expect<string>('listener')) !== 'ready') throw new Error('listener not ready');

  const run = async (host: string): Promise<Result> => {
    const l = w.spawnIn(cg, [bench, host, String(PORT), String(N), '--warmup', '200'], { timeoutMs: 300_000 });
    const r = await l.expect<Result>(`connect_bench ${host}`);
    if (r.ok !== N) throw new Error(`${host}: ${JSON.stringify(r)}`);
    return r;
  };
  const modes = ['loopback', 'veth (uplink)'] as const;
  const results = new Map<string, Result[]>();
  const add = (k: string, r: Result): void => void results.set(k, [...(results.get(k) ?? []), r]);
  let attached = true;
  let usage: unknown;
  let asked: unknown;
  for (let round = 0; round < ROUNDS; round++) {
    // Alternate which comes first, so drift within a round does not favour one side.
    for (const withPrograms of round % 2 === 0 ? [false, true] : [true, false]) {
      if (withPrograms !== attached) {
        await w.call(withPrograms ? { op: 'open', dir: w.base, ...(OBJECT === undefined ? {} : { object: OBJECT }) } : { op: 'close' });
        attached = withPrograms;
        if (withPrograms) {
          await w.call({ op: 'setIfSlot', ifindex: w.ifindex(w.nsA, 'up0'), slot: 1 });
          await w.call({ op: 'setIfSlot', ifindex: w.ifindex(w.nsA, 'up1'), slot: 2 });
          await w.setCgroup(cg, { ...NO_TREATMENT, app: 1, mark: markForSlot(1), deny: [2], decides: true });
        }
      }
      const expected = withPrograms ? ((await w.call({ op: 'programs' })) as string[]).length : 0;
      if (w.attached().length !== expected || (withPrograms && expected === 0)) throw new Error('attachment not as expected');
      add(`loopback ${withPrograms}`, await run('127.0.0.1'));
      add(`veth (uplink) ${withPrograms}`, await run('10.90.1.2'));
      if (withPrograms) {
        usage = await w.call({ op: 'usage' });
        await w.setCgroup(cg, { ...NO_TREATMENT, app: 1, mark: markForSlot(1), deny: [2], decides: true, ask: true });
        add('veth (uplink) ask', await run('10.90.1.2'));
        await w.call({ op: 'setAskQuiet', ns: '1' });
        add('veth (uplink) ask-all', await run('10.90.1.2'));
        await w.call({ op: 'setAskQuiet', ns: '0' });
        await w.setCgroup(cg, { ...NO_TREATMENT, app: 1, mark: markForSlot(1), deny: [2], decides: true });
        asked = await w.call({ op: 'askStats' });
        await w.call({ op: 'events' }); // what the agent heard, let go
      }
    }
  }
  console.log(`connect()+close() in a cgroup below the programs; N=${N} per run, ${ROUNDS} interleaved rounds (medians; ratios within each round)`);
  console.log('target            programs   p50 µs   p99 µs  mean µs   ×bare p50  ×bare mean');
  for (const m of modes) {
    const bare = results.get(`${m} false`) ?? [];
    const variants = m === 'loopback' ? ['false', 'true'] : ['false', 'true', 'ask', 'ask-all'];
    for (const v of variants) {
      const rs = results.get(`${m} ${v}`) ?? [];
      const ratio = (f: (r: Result) => number): number => median(rs.map((r, i) => f(r) / f(bare[i] ?? r)));
      const label = v === 'false' ? 'none' : v === 'true' ? 'attached' : v === 'ask' ? '+ask' : '+ask all';
      console.log(`${m.padEnd(17)} ${label.padEnd(8)} ${median(rs.map((r) => r.p50_us)).toFixed(1).padStart(8)} `
        + `${median(rs.map((r) => r.p99_us)).toFixed(1).padStart(8)} ${median(rs.map((r) => r.mean_us)).toFixed(1).padStart(8)}   `
        + `${ratio((r) => r.p50_us).toFixed(3).padStart(9)}  ${ratio((r) => r.mean_us).toFixed(3).padStart(10)}`);
    }
  }
  console.log(`(wm_usage of the last attached round: ${JSON.stringify(usage)})`);
  console.log(`(wm_ask_stats after the last attached round: ${JSON.stringify(asked)})`);
} finally {
  w.destroy();
}
