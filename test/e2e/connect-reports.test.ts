/**
 * The kernel tells the daemon of an app's connects (WM_T_ASK, docs/kernel-apps.md "Connect
 * reports"), against the real kernel, as root, in a world of its own (test/support/bpf-world.ts,
 * removed on every exit path): the static Go client (no library) and the probes in cgroups below
 * the programs, in namespace A; the far end in B. The reports are read by the agent that holds
 * the programs (its AppMaps.onConnect), and the test waits on them, never on a timer. Every case
 * runs against both program variants (the compat twins loaded by force the second time).
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { cgroupId, NO_TREATMENT, type Treatment } from '../../src/backstop/bpf.js';
import { publicPath } from '../../src/lab/public.js';
import type { EventsUntil, WireConnect } from '../support/bpf-agent.js';
import { BpfWorld, type SpawnInOptions } from '../support/bpf-world.js';
import { buildPublicGoClient } from '../support/goclient.js';

const PORT = 5555; // the far end's TCP listener (backlog only) and UDP sink
const GREET = 5556; // the far end's TCP listener that writes a line (the Go client reads it)
const NOBODY = 65534;
const FAR1 = '10.90.1.2'; // B over up0 (slot 1)
const FAR2 = '10.90.2.2'; // B over up1 (slot 2)
const FAR1_6 = 'fd00:90:1::2';
const RUN_TIMEOUT_MS = 20_000;

let w: BpfWorld | undefined;
const world = (): BpfWorld => {
  if (w === undefined) throw new Error('no world');
  return w;
};
let probePy = '';
let goclient = '';
let runs = 0;

const decides = (t: Partial<Treatment>): Treatment => ({ ...NO_TREATMENT, decides: true, ...t });

/** Runs argv in cgroup `dir` (namespace A unless told) to its end; its pid (the reported one: nsenter, sh and setpriv exec). */
async function run(dir: string | null, argv: string[], opts: SpawnInOptions = {}): Promise<{ pid: number; code: number | null; out: unknown }> {
  const lines = world().spawnIn(dir, argv, { timeoutMs: RUN_TIMEOUT_MS, ...opts });
  const child: ChildProcess = lines.child;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const out = await lines.next();
  const code = await exited;
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${argv.join(' ')} did not start`);
  return { pid, code, out };
}

/** The Go client's GET of a line from FAR:GREET (TCP, IPv4 or IPv6). */
async function go(dir: string, far: string, opts: SpawnInOptions = { uid: NOBODY }): Promise<number> {
  const host = far.includes(':') ? `[${far}]` : far;
  const r = await run(dir, [goclient, '-timeout', '10s', `tcp://${host}:${GREET}`], opts);
  assert.equal(r.code, 0, `goclient to ${far} failed`);
  assert.equal(r.out, 'hello');
  return r.pid;
}

async function probe(dir: string, args: string[], opts: SpawnInOptions = {}): Promise<{ pid: number; result: unknown }> {
  const r = await run(dir, ['/usr/bin/python3', probePy, ...args], opts);
  return { pid: r.pid, result: (r.out as { result?: unknown } | undefined)?.result };
}

/** The reports up to the one `until` describes (the agent replies once it has heard it). */
const events = (until: EventsUntil): Promise<WireConnect[]> => world().call({ op: 'events', until }) as Promise<WireConnect[]>;

interface Stats { reported: bigint; dropped: bigint; suppressed: bigint; delivered: number }
async function stats(): Promise<Stats> {
  const s = (await world().call({ op: 'askStats' })) as { reported: string; dropped: string; suppressed: string; delivered: number };
  return { reported: BigInt(s.reported), dropped: BigInt(s.dropped), suppressed: BigInt(s.suppressed), delivered: s.delivered };
}

/** A new cgroup below the programs with this entry. */
async function app(name: string, self: Treatment, pending: Treatment = NO_TREATMENT): Promise<string> {
  const dir = world().cgroup(`${name}-${++runs}`);
  await world().setCgroup(dir, self, pending);
  return dir;
}

async function open(compat: boolean): Promise<void> {
  const x = world();
  await x.call({ op: 'open', dir: x.base, compat });
  await x.call({ op: 'setIfSlot', ifindex: x.ifindex(x.nsA, 'up0'), slot: 1 });
  await x.call({ op: 'setIfSlot', ifindex: x.ifindex(x.nsA, 'up1'), slot: 2 });
}

before(async () => {
  probePy = publicPath('test/fixtures/bpf_probe.py');
  goclient = await buildPublicGoClient();
  w = await BpfWorld.create();
  for (const cmd of ['serve', 'greet']) {
    const port = cmd === 'serve' ? PORT : GREET;
    const s = w.spawnIn(null, ['/usr/bin/python3', probePy, cmd, String(port)], { ns: w.nsB });
    assert.deepEqual(await s.expect(cmd), { step: 'listening' });
  }
  await w.call({ op: 'close' }); // each variant opens its own below
}, { timeout: 360_000 });

after(() => {
  w?.destroy();
});

for (const compat of [false, true]) {
  describe(compat ? 'connect reports (compat programs)' : 'connect reports', { timeout: 120_000 }, () => {
    before(async () => {
      await open(compat);
      const programs = (await world().call({ op: 'programs' })) as string[];
      assert.equal(programs.includes('wm_connect4_compat'), compat);
    });
    after(async () => {
      await world().call({ op: 'close' });
    });

    it('a static client\'s connect from an app that asks is reported: cgroup, app key, uid, pid, destination; without the flag or from another namespace: nothing', async () => {
      const plain = await app('plain', decides({ app: 90 }));
      const asks = await app('asks', decides({ app: 91, ask: true }));
      const s0 = await stats();
      await go(plain, FAR1);
      await go(asks, FAR1, { uid: NOBODY, ns: world().nsB }); // in B, FAR1 is B's own address (not loopback)
      const pid = await go(asks, FAR1);
      // Everything before the flagged connect would come first: the ring keeps the kernel's order.
      const got = await events({ port: GREET });
      assert.equal(got.length, 1, JSON.stringify(got));
      const [e] = got;
      assert.ok(e);
      assert.ok(BigInt(e.monotonicNs) > 0n);
      assert.deepEqual({ ...e, monotonicNs: '' }, {
        cgroupId: cgroupId(asks).toString(), monotonicNs: '', app: 91, uid: NOBODY, pid, comm: 'goclient',
        family: 4, address: FAR1, port: GREET, proto: 'tcp', via: 'connect', denied: false, source: 'cgroup',
      });
      const s1 = await stats();
      assert.equal(s1.reported - s0.reported, 1n);
      assert.equal(s1.dropped, s0.dropped);
    });

    it('IPv6, a v4-mapped destination (as IPv4), UDP sends; a refused connect is reported as denied', async () => {
      const asks = await app('asks6', decides({ app: 92, ask: true, deny: [2] }));
      const id = cgroupId(asks).toString();
      await go(asks, FAR1_6);
      let [e] = await events({ port: GREET });
      assert.deepEqual([e?.cgroupId, e?.family, e?.address, e?.proto, e?.via], [id, 6, FAR1_6, 'tcp', 'connect']);

      assert.equal((await probe(asks, ['connect', `::ffff:${FAR1}`, String(PORT)])).result, 'ok');
      [e] = await events({ port: PORT });
      assert.deepEqual([e?.family, e?.address, e?.port, e?.proto], [4, FAR1, PORT, 'tcp']);

      const { pid } = await probe(asks, ['sendto', FAR1, String(PORT + 7)], { uid: NOBODY });
      [e] = await events({ port: PORT + 7 });
      assert.deepEqual([e?.address, e?.proto, e?.via, e?.uid, e?.pid, e?.denied], [FAR1, 'udp', 'sendmsg', NOBODY, pid, false]);

      // Bound to up1, slot 2: denied at connect() (EPERM), reported all the same.
      assert.equal((await probe(asks, ['connect', FAR2, String(PORT + 8), 'up1'])).result, 'EPERM');
      [e] = await events({ port: PORT + 8 });
      assert.deepEqual([e?.address, e?.denied, e?.app], [FAR2, true, 92]);
    });

    it('a cgroup without an entry is reported by its own id under its ancestor\'s pending (app key 0)', async () => {
      const parent = await app('pend', decides({ app: 93 }), decides({ ask: true }));
      const child = world().cgroup(`${parent.slice(world().base.length + 1)}/new`);
      await go(child, FAR1);
      const [e] = await events({ port: GREET });
      assert.deepEqual([e?.cgroupId, e?.app, e?.source], [cgroupId(child).toString(), 0, 'pending']);
    });

    it('repeats within the quiet period are suppressed; after it, reported again', async () => {
      await world().call({ op: 'setAskQuiet', ns: String(600_000_000_000n) }); // far longer than this test
      try {
        const asks = await app('repeat', decides({ app: 94, ask: true }));
        const s0 = await stats();
        for (let i = 0; i < 3; i++) await go(asks, FAR1);
        // Another destination fences them: nothing of the repeats comes before it.
        assert.equal((await probe(asks, ['connect', FAR2, String(PORT)])).result, 'ok');
        const got = await events({ address: FAR2 });
        assert.deepEqual(got.map((e) => `${e.address}:${e.port}`), [`${FAR1}:${GREET}`, `${FAR2}:${PORT}`]);
        const s1 = await stats();
        assert.equal(s1.suppressed - s0.suppressed, 2n);
        assert.equal(s1.reported - s0.reported, 2n);

        const quiet = 200_000_000n;
        await world().call({ op: 'setAskQuiet', ns: String(quiet) });
        const again = await app('again', decides({ app: 95, ask: true }));
        await go(again, FAR1);
        const [first] = await events({ port: GREET });
        assert.ok(first);
        // The kernel's clock is this process's (CLOCK_MONOTONIC): wait until the period is over.
        const end = BigInt(first.monotonicNs) + quiet;
        while (process.hrtime.bigint() <= end) await new Promise((r) => setTimeout(r, Number((end - process.hrtime.bigint()) / 1_000_000n) + 1));
        await go(again, FAR1);
        const [second] = await events({ port: GREET });
        assert.ok(second && BigInt(second.monotonicNs) - BigInt(first.monotonicNs) >= quiet);
      } finally {
        await world().call({ op: 'setAskQuiet', ns: '0' });
      }
    });

    it('a full ring drops (counted) and the rest is read, a bounded batch at a time', async () => {
      const asks = await app('spray', decides({ app: 96, ask: true }));
      const s0 = await stats();
      const count = 4000; // distinct ports: none suppressed; more than the ring holds (1638)
      // The agent's event loop is blocked meanwhile: nothing is read while the ring fills.
      const r = (await world().call({ op: 'runBlocking', dir: asks, argv: ['/usr/bin/python3', probePy, 'spray', FAR1, '20000', String(count)] })) as { status: number; stdout: string };
      assert.equal(r.status, 0);
      assert.deepEqual(JSON.parse(r.stdout), { sent: count });
      const s1 = await stats();
      const reported = Number(s1.reported - s0.reported);
      const dropped = Number(s1.dropped - s0.dropped);
      assert.equal(reported + dropped, count);
      // 80 bytes a record with the ring's header: 1638 fit.
      assert.ok(dropped > 0 && reported >= 1000 && reported <= 1638, `reported ${reported}, dropped ${dropped}`);
      const got = await events({ count: reported });
      assert.equal(got.length, reported);
      // The first ones made it, in order.
      assert.deepEqual(got.slice(0, 3).map((e) => e.port), [20000, 20001, 20002]);
      assert.ok(got.every((e, i) => i === 0 || e.port > (got[i - 1]?.port ?? 0)));
      // A retry of a dropped destination is reported (a drop leaves it unseen).
      const lastPort = 20000 + count - 1;
      assert.equal((await probe(asks, ['sendto', FAR1, String(lastPort)])).result, 'ok');
      const [e] = await events({ port: lastPort });
      assert.equal(e?.port, lastPort);
    });
  });
}
