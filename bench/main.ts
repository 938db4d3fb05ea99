/**
 * `npm run bench`: the hot paths, measured in one run against baselines from the same run.
 *
 * 1. connect()+close() from the lab's device to a listener next to its Internet server
 *    (native/bench/connect_bench): bare; under libwaymark.so with a cached decision (default
 *    routing; steered to an uplink; steered inside a `waymark exec` session, with the kernel
 *    backstop); and with a first decision for every connect (a new port each time); and a
 *    program in an app scope whose rule names an uplink, without the library (the app BPF
 *    programs mark and check its sockets: docs/kernel-apps.md).
 *    Modes are interleaved over several rounds; medians over the rounds are reported, ratios
 *    taken within each round.
 * 2. decide(), the pure rule evaluation, against the destination lookup it starts with.
 * 3. The cgroup tree (src/identity/cgroup-tree.ts): mkdir of an app scope by another process
 *    → the daemon's `added` callback, and rmdir → `removed` (test/support/cgroup-latency.ts),
 *    in a per-run directory under the cgroup2 mount.
 * 4. A bulk TCP transfer with accounting on (the app programs counting every packet), with budgets,
 *    and with the programs idle, against the same with no program in its way, interleaved over
 *    rounds for about half a minute, with an identical control case (bench/usage.ts).
 *
 * A benchmark, not a test: it prints numbers and the targets, and fails only if it cannot run.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findCgroup2Mount } from '../src/backstop/cgroup.js';
import { decide, NO_WISH } from '../src/decision/decide.js';
import { destinationOfAddress } from '../src/destination/destination.js';
import { EXAMPLE_CONFIG, startDevice, type Device } from '../src/lab/device.js';
import type { AppsResult } from '../src/daemon/protocol.js';
import { Lab, LAB } from '../src/lab/lab.js';
import { publicRoot } from '../src/lab/public.js';
import { parseAddress } from '../src/net/prefix.js';
import { policyOfRule } from '../src/policy/rules.js';
import { benchRules, benchRulesYaml, measureRules } from './rules.js';
import { usageBench } from './usage.js';
import { PACKAGE_ROOT } from '../src/version.js';
import { measureTreeLatency } from '../test/support/cgroup-latency.js';
import { exampleConfig, labStates } from '../test/support/fixture.js';

const N = Number(process.env['WAYMARK_BENCH_N'] ?? 4000);
const BENCH_APP = 'org.example.Bench';
/** The mode run in the app scope (the others run where the benchmark does: no app, no BPF entry). */
const IN_SCOPE = 'app scope, rule, no library';
const BARE_NEW_10K = 'bare, new port (10,000 rules loaded)';
const FIRST_10K = 'first decision (10,000 rules loaded)';

/** Waits (polling: a benchmark, not a test) until the daemon lists the app. */
async function untilKnown(dev: Device, name: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const r = await dev.waymark(['apps', '--json']);
    if (r.code === 0 && (JSON.parse(r.stdout) as AppsResult).apps.some((a) => a.name === name)) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`waymarkd never listed ${name}`);
}
const PORT = 9000;
const ROUNDS = 5;
const WARM_DECISIONS = 2000;

interface Result { p50_us: number; p99_us: number; mean_us: number; max_us: number; ok: number; refused: number; failed: number }
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

async function connectBench(): Promise<void> {
  const lab = await Lab.create();
  // The example config plus a rule for the benchmark's app scope (no library there: the kernel steers it).
  const base = readFileSync(EXAMPLE_CONFIG, 'utf8');
  const dev = await startDevice(lab, { logLevel: 'warn', config: base.replace(/^rules:\n/m, `rules:\n  - name: bench\n    match: { app: ${BENCH_APP} }\n    only: [wifi]\n`) });
  const scope = `user.slice/user-0.slice/user@0.service/app.slice/app-${BENCH_APP}-1.scope`;
  if (!lab.cgroups) throw new Error('no cgroup2 hierarchy: cannot run the app-scope benchmark');
  lab.cgroups.mkdir(scope);
  await untilKnown(dev, BENCH_APP);
  const bench = join(PACKAGE_ROOT, 'native/bench/connect_bench');
  const lib = join(publicRoot(), 'native/preload/libwaymark.so');
  // A C accept-and-close listener next to the Internet server: the lab's Node server would let
  // its accept queue overflow at these rates, and a dropped SYN costs a 1 s retransmit.
  const server = lab.spawn('inet', [bench, '--serve', LAB.internet.v4, String(PORT)]);
  await new Promise<void>((resolve, reject) => {
    server.stdout?.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`listener exited with ${code}`)));
  });
  const target = [LAB.internet.v4, String(PORT), String(N)];
  const preload = ['env', `LD_PRELOAD=${lib}`, `WAYMARK_SOCKET=${dev.socket}`];
  const modes: Record<string, (round: number) => string[]> = {
    bare: () => [bench, ...target, '--warmup', '200'],
    'cached, default route': () => [...preload, bench, ...target, '--warmup', '200'],
    'cached, steered (WAYMARK_UPLINK=wifi)': () => [...preload, 'WAYMARK_UPLINK=wifi', bench, ...target, '--warmup', '200'],
    // The same inside a `waymark exec` session: also the cgroup's socket-marking program and the
    // nftables backstop chain, which the kernel evaluates for every packet.
    'steered in a session (exec --uplink)': () => [process.execPath, join(PACKAGE_ROOT, 'dist/src/cli/main.js'), '--socket', dev.socket,
      'exec', '--uplink', 'wifi', '--', bench, ...target, '--warmup', '200'],
    // A program the desktop started in an app scope whose rule names an uplink, no library:
    // the BPF programs mark its sockets and check its connects, the kernel routes by the mark.
    [IN_SCOPE]: () => [bench, ...target, '--warmup', '200'],
    // Warmed by WARM_DECISIONS decisions first (ports below the measured ones): a daemon that has
    // been running a while, its decision path compiled by V8's optimising tiers.
    'bare, new port each time': (r) => [bench, ...target, '--warmup', String(WARM_DECISIONS), '--unique-ports', String(10000 + r * N)],
    'first decision each time': (r) => [...preload, bench, ...target, '--warmup', String(WARM_DECISIONS), '--unique-ports', String(30000 + r * N)],
  };
  const results = new Map<string, Result[]>();
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, argv] of Object.entries(modes)) {
        const r = await lab.run('dev', argv(round), { timeoutMs: 120_000, ...(name === IN_SCOPE ? { cgroup: scope } : {}) });
        const line = r.stdout.trim().split('\n').pop() ?? '';
        if (r.code !== 0 || !line.startsWith('{')) throw new Error(`${name}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
        results.set(name, [...(results.get(name) ?? []), JSON.parse(line) as Result]);
      }
    }
    // The same first decisions with 10,000 rules loaded (bench/rules.ts: their shape), after a
    // reload, against the same baseline measured in the same rounds.
    writeFileSync(dev.configPath, `${readFileSync(dev.configPath, 'utf8')}${benchRulesYaml(benchRules(10_000))}`);
    const reload = await dev.waymark(['reload']);
    if (reload.code !== 0) throw new Error(`reload with 10,000 rules: ${reload.stderr}`);
    for (let round = 0; round < ROUNDS; round++) {
      for (const name of [BARE_NEW_10K, FIRST_10K]) {
        const argv = name === BARE_NEW_10K ? modes['bare, new port each time']?.(round) : modes['first decision each time']?.(round);
        if (!argv) throw new Error('no such mode');
        const r = await lab.run('dev', argv, { timeoutMs: 120_000 });
        const line = r.stdout.trim().split('\n').pop() ?? '';
        if (r.code !== 0 || !line.startsWith('{')) throw new Error(`${name}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
        results.set(name, [...(results.get(name) ?? []), JSON.parse(line) as Result]);
      }
    }
  } finally {
    await dev.dispose();
    await lab.destroy();
  }
  const baselineOf = (name: string): string => (name === FIRST_10K ? BARE_NEW_10K : name.includes('new port') || name.startsWith('first') ? 'bare, new port each time' : 'bare');
  // Ratios are taken within each round (against the baseline measured minutes apart at most,
  // under the same conditions), then the median over the rounds: the machine's drift between
  // rounds, a few per cent here, cancels out.
  const summary = (name: string): { p50: number; p99: number; mean: number; max: number; xP50: number; xMean: number } => {
    const rs = results.get(name) ?? [];
    const base = results.get(baselineOf(name)) ?? [];
    const ratio = (f: (r: Result) => number): number => median(rs.map((r, i) => f(r) / f(base[i] ?? r)));
    return {
      p50: median(rs.map((r) => r.p50_us)), p99: median(rs.map((r) => r.p99_us)), mean: median(rs.map((r) => r.mean_us)),
      max: Math.max(...rs.map((r) => r.max_us)), xP50: ratio((r) => r.p50_us), xMean: ratio((r) => r.mean_us),
    };
  };
  console.log(`connect()+close() to ${LAB.internet.v4}:${PORT} through two veth hops; N=${N} per run, ${ROUNDS} interleaved rounds:`);
  console.log('medians over the rounds; ratios to the bare connect of the same kind, taken within each round');
  console.log('mode                                     p50 µs   p99 µs  mean µs   ×bare p50  ×bare mean   max µs');
  for (const name of [...Object.keys(modes), BARE_NEW_10K, FIRST_10K]) {
    const s = summary(name);
    console.log(`${name.padEnd(40)} ${s.p50.toFixed(1).padStart(7)} ${s.p99.toFixed(1).padStart(8)} ${s.mean.toFixed(1).padStart(8)}   ${s.xP50.toFixed(3).padStart(9)}  ${s.xMean.toFixed(3).padStart(10)} ${s.max.toFixed(0).padStart(8)}`);
  }
  const cached = summary('cached, default route');
  const steered = summary('cached, steered (WAYMARK_UPLINK=wifi)');
  const session = summary('steered in a session (exec --uplink)');
  const first = summary('first decision each time');
  const bareRefused = summary('bare, new port each time');
  const app = summary(IN_SCOPE);
  const first10k = summary(FIRST_10K);
  console.log(`targets: cached ≤ 1.05× bare: default route ${cached.xP50.toFixed(3)}×, steered ${steered.xP50.toFixed(3)}×, in a session ${session.xP50.toFixed(3)}× (p50); `
    + `app scope ≤ 1.05× bare: ${app.xP50.toFixed(3)}× (p50); `
    + `first decision p99 ≤ 150 µs: ${first.p99.toFixed(1)} µs (its extra cost over a bare connect of the same kind: ${(first.p50 - bareRefused.p50).toFixed(1)} µs p50), `
    + `with 10,000 rules loaded: ${first10k.p99.toFixed(1)} µs`);
}

function decideBench(): void {
  const config = exampleConfig(`
apps:
  - name: chat
    match: { exe: /usr/bin/chat }
    uplinks: [cellular]
`);
  const { states } = labStates(config);
  const targets = ['198.51.100.10', '10.200.0.10', '172.16.5.10', 'fd00:200::10', '2001:db8:100::10'].map((t) => parseAddress(t) ?? { family: 4 as const, bytes: new Uint8Array(4) });
  const first = config.rules[0];
  const app = first ? policyOfRule(first) : undefined;
  const ITER = 200_000;
  const time = (fn: (i: number) => void): number => {
    for (let i = 0; i < 10_000; i++) fn(i);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ITER; i++) fn(i);
    return Number(process.hrtime.bigint() - t0) / ITER;
  };
  let sink = 0;
  const lookup = time((i) => {
    const t = targets[i % targets.length];
    if (t) sink += destinationOfAddress(config.destinations, t.family, t.bytes).length;
  });
  const full = time((i) => {
    const t = targets[i % targets.length];
    if (t) sink += decide({ uplinks: states, destinations: config.destinations, wish: { ...NO_WISH, needs: ['long-lived'] }, family: t.family, addr: t.bytes, ...(app ? { app } : {}) }).action.length;
  });
  console.log(`\ndecide() (rule evaluation, ${ITER} calls): ${full.toFixed(0)} ns/call; destination lookup alone ${lookup.toFixed(0)} ns/call; ratio ${(full / lookup).toFixed(2)}× (${sink > 0 ? 'ok' : ''})`);
}

/** Rule evaluation with 10, 1,000 and 10,000 rules loaded (bench/rules.ts: their shape). */
function rulesBench(): void {
  const config = exampleConfig();
  console.log('\nrule evaluation (RuleSet.decideFor: the rule that decides one socket and its policy), 50,000 decisions each:');
  console.log('rules loaded     p50 µs   p99 µs   compile ms   decided by a rule');
  let at10k = NaN;
  for (const n of [10, 1000, 10_000]) {
    const r = measureRules(config, n);
    if (n === 10_000) at10k = r.p50;
    console.log(`${String(n).padStart(12)} ${r.p50.toFixed(2).padStart(10)} ${r.p99.toFixed(2).padStart(8)} ${r.compileMs.toFixed(1).padStart(12)}   ${(r.hits / 1000).toFixed(1)} %`);
  }
  console.log(`target: ≤ 5 µs p50 at 10,000 rules: ${at10k.toFixed(2)} µs`);
}

async function cgroupTreeBench(): Promise<void> {
  const n = Number(process.env['WAYMARK_BENCH_CGROUPS'] ?? 500);
  const root = join(await findCgroup2Mount(), `wm-bench-cgtree-${process.pid}-${randomBytes(2).toString('hex')}`);
  const apps = 'user.slice/user-1000.slice/user@1000.service/app.slice';
  mkdirSync(join(root, apps), { recursive: true });
  try {
    const r = await measureTreeLatency(root, apps, n);
    const row = (what: string, s: typeof r.mkdir): string =>
      `${what.padEnd(40)} ${s.p50_us.toFixed(0).padStart(7)} ${s.p99_us.toFixed(0).padStart(8)} ${s.mean_us.toFixed(0).padStart(8)} ${s.max_us.toFixed(0).padStart(8)}`;
    console.log(`\ncgroup tree, ${n} app scopes made and removed one at a time by another process (${r.watched} directories watched):`);
    console.log('event                                     p50 µs   p99 µs  mean µs   max µs');
    console.log(row('mkdir -> added (id and app known)', r.mkdir));
    console.log(row('rmdir -> removed', r.rmdir));
    console.log(`target: mkdir -> known ≤ 1000 µs p99: ${r.mkdir.p99_us.toFixed(0)} µs`);
  } finally {
    for (let p = join(root, apps); p.startsWith(root); p = join(p, '..')) {
      try {
        rmdirSync(p);
      } catch {
        /* not ours or not empty */
      }
    }
  }
}

await connectBench();
decideBench();
rulesBench();
await cgroupTreeBench();
await usageBench();
