/**
 * The app programs (native/bpf/waymark.bpf.c) and their adapter (src/backstop/bpf.ts) against the
 * real kernel, as root. The test builds its own world and removes it on every exit path:
 *   - two network namespaces: A (the "device": uplinks up0 = slot 1 and up1 = slot 2, veths to B)
 *     and B (the far end: a TCP listener and UDP echo server on both links);
 *   - a cgroup subtree wmbpf-<run> under the cgroup2 mount, the programs attached at its top by an
 *     agent process living in A (test/support/bpf-agent.ts: the netns filter is the loader's
 *     namespace), child cgroups for the probes (test/fixtures/bpf_probe.py).
 * Checked: marks at socket() and at connect(), pending of an ancestor, the uid fallback, the
 * connect-time deny along the routing ladder and the egress drop, loopback, another namespace
 * untouched, byte counters, live socket counts, nothing left attached after close or death.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { cgroupId, NO_TREATMENT, type Treatment } from '../../src/backstop/bpf.js';
import { findCgroup2Mount } from '../../src/backstop/cgroup.js';
import { markForSlot, softMarkForSlot } from '../../src/constants.js';
import { publicPath } from '../../src/lab/public.js';
import { cgroupAttachSockMark } from '../../src/native/index.js';
import { PACKAGE_ROOT } from '../../src/version.js';
import type { AgentRequest } from '../support/bpf-agent.js';

const RUN = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
const NS_A = `wmbpfa-${RUN}`;
const NS_B = `wmbpfb-${RUN}`;
const PORT = 5555;
const NOBODY = 65534;
const FAR1 = '10.90.1.2'; // B over up0 (slot 1)
const FAR2 = '10.90.2.2'; // B over up1 (slot 2)
const FAR1_6 = 'fd00:90:1::2';
const FAR2_6 = 'fd00:90:2::2';
const PROBE_TIMEOUT_MS = 20_000;

let mount = '';
let base = ''; // the subtree's top, where the programs are attached
const made: string[] = []; // cgroups created, in creation order
const children = new Set<ChildProcess>();

function sh(cmd: string[], allowFail = false): string {
  const r = spawnSync(cmd[0] ?? '', cmd.slice(1), { encoding: 'utf8' });
  if (!allowFail && r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr || r.error?.message || `exit ${r.status}`}`);
  return r.stdout;
}

/** Removes everything this run made; safe to call more than once and from 'exit'. */
function cleanup(): void {
  for (const c of children) c.kill('SIGKILL');
  for (const dir of [...made].reverse()) {
    // Kill what lives there (probes still running after a failure), then remove it.
    try {
      for (const pid of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch { /* gone */ }
      }
    } catch { /* gone */ }
    for (let i = 0; i < 100; i++) {
      try {
        rmdirSync(dir);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code !== 'EBUSY') throw e;
        spawnSync('sleep', ['0.05']); // a killed process is still leaving its cgroup
      }
    }
  }
  made.length = 0;
  sh(['ip', 'netns', 'del', NS_A], true);
  sh(['ip', 'netns', 'del', NS_B], true);
}
process.on('exit', cleanup);

function cgroup(rel: string): string {
  const dir = join(base, rel);
  mkdirSync(dir);
  made.push(dir);
  return dir;
}

/** JSON lines of a child's stdout, one at a time. */
class Lines {
  private readonly queue: unknown[] = [];
  private waiter: ((v: unknown) => void) | undefined;
  private ended = false;
  stderr = '';

  constructor(readonly child: ChildProcess) {
    children.add(child);
    child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    if (child.stdout === null) throw new Error('no stdout');
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (l) => {
      const v: unknown = JSON.parse(l);
      if (this.waiter !== undefined) {
        const w = this.waiter;
        this.waiter = undefined;
        w(v);
      } else this.queue.push(v);
    });
    rl.on('close', () => {
      this.ended = true;
      this.waiter?.(undefined);
    });
    child.on('exit', () => children.delete(child));
  }

  /** The next line, or undefined once the output ended. */
  next(): Promise<unknown> {
    if (this.queue.length > 0) return Promise.resolve(this.queue.shift());
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => (this.waiter = resolve));
  }

  async expect<T>(what: string): Promise<T> {
    const v = await this.next();
    if (v === undefined) throw new Error(`${what}: output ended (stderr: ${this.stderr})`);
    return v as T;
  }
}

// ------------------------------------------------------------------------------------------
// The agent (holds the AppMaps in namespace A)

let agent: Lines | undefined;

function startAgent(): Lines {
  const js = join(PACKAGE_ROOT, 'dist/test/support/bpf-agent.js');
  const child = spawn('nsenter', [`--net=/run/netns/${NS_A}`, process.execPath, js], { stdio: ['pipe', 'pipe', 'pipe'] });
  return new Lines(child);
}

async function call(r: AgentRequest): Promise<unknown> {
  if (agent === undefined) throw new Error('no agent');
  agent.child.stdin?.write(`${JSON.stringify(r)}\n`);
  const reply = await agent.expect<{ ok: boolean; value?: unknown; error?: string }>(r.op);
  if (!reply.ok) throw new Error(`${r.op}: ${reply.error}`);
  return reply.value;
}

async function setCgroup(dir: string, self: Treatment, pending: Treatment = NO_TREATMENT): Promise<void> {
  await call({ op: 'setCgroup', id: cgroupId(dir).toString(), self, pending });
}

const decides = (t: Partial<Treatment>): Treatment => ({ ...NO_TREATMENT, decides: true, ...t });

// ------------------------------------------------------------------------------------------
// Probes

let probePy = '';

/** A probe in cgroup `dir` and namespace `ns` (A by default), as `uid` (root by default). */
function startProbe(dir: string, args: string[], opts: { ns?: string; uid?: number } = {}): Lines {
  const as = opts.uid === undefined ? [] : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', '--'];
  const child = spawn('nsenter', [`--net=/run/netns/${opts.ns ?? NS_A}`, 'sh', '-c', 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"',
    'sh', dir, ...as, '/usr/bin/python3', probePy, ...args], { stdio: ['pipe', 'pipe', 'pipe'], timeout: PROBE_TIMEOUT_MS });
  return new Lines(child);
}

/** A one-shot probe's single output line. */
async function probe<T>(dir: string, args: string[], opts: { ns?: string; uid?: number } = {}): Promise<T> {
  const p = startProbe(dir, args, opts);
  return p.expect<T>(`probe ${args.join(' ')}`);
}

const result = async (dir: string, args: string[], opts: { ns?: string; uid?: number } = {}): Promise<string> =>
  (await probe<{ result: string }>(dir, args, opts)).result;

/** Sources of the "probe" datagrams the far end received so far. */
const probesSeen: string[] = [];
let probeArrived: (() => void) | undefined;

async function serve(): Promise<void> {
  const child = spawn('nsenter', [`--net=/run/netns/${NS_B}`, '/usr/bin/python3', probePy, 'serve', String(PORT)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const s = new Lines(child); // killed by cleanup()
  assert.deepEqual(await s.expect('serve'), { step: 'listening' });
  void (async () => {
    for (let v = await s.next(); v !== undefined; v = await s.next()) {
      probesSeen.push((v as { probe: string }).probe);
      probeArrived?.();
    }
  })();
}

/** Waits until the far end has seen a probe from `src`. */
async function arrived(src: string): Promise<void> {
  while (!probesSeen.includes(src)) await new Promise<void>((resolve) => (probeArrived = resolve));
}

function ifindex(ns: string, dev: string): number {
  const [link] = JSON.parse(sh(['ip', '-n', ns, '-j', 'link', 'show', dev])) as { ifindex: number }[];
  if (link === undefined) throw new Error(`no ${dev} in ${ns}`);
  return link.ifindex;
}

/** Programs attached at `dir` itself (BPF_PROG_QUERY through bpftool). */
function attached(dir: string): string[] {
  const out = sh(['bpftool', '-j', 'cgroup', 'show', dir]).trim();
  return out === '' ? [] : (JSON.parse(out) as { name: string }[]).map((p) => p.name);
}

// ------------------------------------------------------------------------------------------

before(async () => {
  mount = await findCgroup2Mount();
  base = join(mount, `wmbpf-${RUN}`);
  mkdirSync(base);
  made.push(base);
  probePy = publicPath('test/fixtures/bpf_probe.py');
  sh(['ip', 'netns', 'add', NS_A]);
  sh(['ip', 'netns', 'add', NS_B]);
  for (const ns of [NS_A, NS_B]) sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  for (const n of [1, 2]) {
    const [up, far] = [`up${n - 1}`, `far${n - 1}`];
    sh(['ip', '-n', NS_A, 'link', 'add', up, 'type', 'veth', 'peer', 'name', far, 'netns', NS_B]);
    sh(['ip', '-n', NS_A, 'addr', 'add', `10.90.${n}.1/24`, 'dev', up]);
    sh(['ip', '-n', NS_B, 'addr', 'add', `10.90.${n}.2/24`, 'dev', far]);
    sh(['ip', '-n', NS_A, 'addr', 'add', `fd00:90:${n}::1/64`, 'dev', up, 'nodad']);
    sh(['ip', '-n', NS_B, 'addr', 'add', `fd00:90:${n}::2/64`, 'dev', far, 'nodad']);
    sh(['ip', '-n', NS_A, 'link', 'set', up, 'up']);
    sh(['ip', '-n', NS_B, 'link', 'set', far, 'up']);
  }
  await serve();
  agent = startAgent();
  await call({ op: 'open', dir: base });
  await call({ op: 'setIfSlot', ifindex: ifindex(NS_A, 'up0'), slot: 1 });
  await call({ op: 'setIfSlot', ifindex: ifindex(NS_A, 'up1'), slot: 2 });
}, { timeout: 60_000 });

after(() => {
  agent?.child.stdin?.end();
  cleanup();
});

describe('marks', { timeout: 60_000 }, () => {
  it('a socket of a cgroup with an entry gets its mark, also unprivileged; without entry or pending: 0', async () => {
    const a = cgroup('mark-a');
    const b = cgroup('mark-b');
    await setCgroup(a, decides({ app: 1, mark: markForSlot(1) }));
    assert.deepEqual(await probe(a, ['mark']), { udp4: markForSlot(1), tcp6: markForSlot(1) });
    assert.deepEqual(await probe(a, ['mark'], { uid: NOBODY }), { udp4: markForSlot(1), tcp6: markForSlot(1) });
    assert.deepEqual(await probe(b, ['mark']), { udp4: 0, tcp6: 0 });
  });

  it('a mark another program set first (a session cgroup) stays', async () => {
    const s = cgroup('mark-session');
    await setCgroup(s, decides({ mark: markForSlot(1) }));
    cgroupAttachSockMark(s, markForSlot(3));
    assert.deepEqual(await probe(s, ['mark']), { udp4: markForSlot(3), tcp6: markForSlot(3) });
  });

  it('a socket created before its cgroup had an entry gets the mark at connect()', async () => {
    const l = cgroup('late');
    const p = startProbe(l, ['late', FAR1, String(PORT)], { uid: NOBODY });
    assert.deepEqual(await p.expect('before'), { before: 0 });
    await setCgroup(l, decides({ mark: softMarkForSlot(2) }));
    p.child.stdin?.write('go\n');
    assert.deepEqual(await p.expect('after'), { after: softMarkForSlot(2) });
  });

  it("an ancestor's pending applies to a cgroup without entry (nearest first); its own entry wins once set", async () => {
    const p = cgroup('pend');
    const c = cgroup('pend/c');
    const g = cgroup('pend/c/g');
    await setCgroup(p, decides({ mark: markForSlot(1) }), decides({ mark: markForSlot(4) }));
    assert.deepEqual(await probe(p, ['mark']), { udp4: markForSlot(1), tcp6: markForSlot(1) });
    assert.deepEqual(await probe(c, ['mark']), { udp4: markForSlot(4), tcp6: markForSlot(4) });
    assert.deepEqual(await probe(g, ['mark']), { udp4: markForSlot(4), tcp6: markForSlot(4) }, 'two levels up');
    await setCgroup(c, decides({ mark: markForSlot(5) }), decides({ mark: markForSlot(6) }));
    assert.deepEqual(await probe(c, ['mark']), { udp4: markForSlot(5), tcp6: markForSlot(5) });
    assert.deepEqual(await probe(g, ['mark']), { udp4: markForSlot(6), tcp6: markForSlot(6) }, 'the nearest ancestor');
  });

  it("the uid's treatment applies where the cgroup's does not decide", async () => {
    const u = cgroup('uid');
    await call({ op: 'setUid', uid: NOBODY, t: decides({ mark: markForSlot(7) }) });
    assert.deepEqual(await probe(u, ['mark'], { uid: NOBODY }), { udp4: markForSlot(7), tcp6: markForSlot(7) });
    assert.deepEqual(await probe(u, ['mark']), { udp4: 0, tcp6: 0 }, 'root has no uid entry');
    await setCgroup(u, { ...NO_TREATMENT, mark: markForSlot(8) }); // an entry without WM_T_SET
    assert.deepEqual(await probe(u, ['mark'], { uid: NOBODY }), { udp4: markForSlot(7), tcp6: markForSlot(7) });
    await setCgroup(u, decides({ mark: markForSlot(8) }));
    assert.deepEqual(await probe(u, ['mark'], { uid: NOBODY }), { udp4: markForSlot(8), tcp6: markForSlot(8) });
  });

  it('a process of the same cgroup in another network namespace is untouched', async () => {
    const a = cgroup('other-ns');
    await setCgroup(a, decides({ mark: markForSlot(1), deny: 'all' }));
    assert.deepEqual(await probe(a, ['mark']), { udp4: markForSlot(1), tcp6: markForSlot(1) });
    assert.deepEqual(await probe(a, ['mark'], { ns: NS_B }), { udp4: 0, tcp6: 0 });
    // B's own link to A: in B, up0's ifindex may well name a B device too; nothing is denied.
    assert.equal(await result(a, ['connect', '10.90.1.1', '9'], { ns: NS_B }), 'ECONNREFUSED');
  });
});

describe('deny', { timeout: 120_000 }, () => {
  let d = '';
  before(async () => {
    d = cgroup('deny');
    await setCgroup(d, decides({ app: 5, deny: [2] }));
  });

  it('connect() bound to a denied device fails with EPERM at once; an allowed one connects', async () => {
    const t0 = Date.now();
    assert.equal(await result(d, ['connect', FAR2, String(PORT), 'up1'], { uid: NOBODY }), 'EPERM');
    assert.equal(await result(d, ['connect', FAR2_6, String(PORT), 'up1']), 'EPERM');
    assert.ok(Date.now() - t0 < 5_000, 'no SYN retransmission wait');
    assert.equal(await result(d, ['connect', FAR1, String(PORT), 'up0'], { uid: NOBODY }), 'ok');
    assert.equal(await result(d, ['connect', FAR1_6, String(PORT), 'up0']), 'ok');
  });

  it('a UDP send that leaves by a denied device is refused and never arrives; an allowed one arrives', async () => {
    // Unbound: nothing predicts up1 (main's slot is unset), the egress program drops it.
    assert.equal(await result(d, ['sendto', FAR2, String(PORT)]), 'EPERM');
    assert.equal(await result(d, ['sendto', FAR2, String(PORT), 'up1']), 'EPERM');
    assert.equal(await result(d, ['sendto', FAR1, String(PORT)]), 'ok');
    await arrived('::ffff:10.90.1.1');
    assert.ok(!probesSeen.includes('::ffff:10.90.2.1'), `a denied datagram arrived: ${probesSeen.join(' ')}`);
  });

  it('the prediction follows the ladder: destination prefix, hard mark, soft mark, main', async () => {
    // Each case predicts slot 2 (denied) for a destination that really leaves by up0 (allowed):
    // EPERM proves the prediction, "ok" without the entry proves it is the entry.
    assert.equal(await result(d, ['connect', FAR1, String(PORT)]), 'ok');
    await call({ op: 'setDestination', prefix: '10.90.1.0/24', slot: 2 });
    assert.equal(await result(d, ['connect', FAR1, String(PORT)]), 'EPERM', 'destination');
    assert.equal(await result(d, ['connect', `::ffff:${FAR1}`, String(PORT)]), 'EPERM', 'v4-mapped destination');
    await call({ op: 'deleteDestination', prefix: '10.90.1.0/24' });
    await call({ op: 'setDestination', prefix: 'fd00:90:1::/48', slot: 2 });
    assert.equal(await result(d, ['connect', FAR1_6, String(PORT)]), 'EPERM', 'IPv6 destination');
    await call({ op: 'deleteDestination', prefix: 'fd00:90:1::/48' });

    const h = cgroup('deny-hard');
    await setCgroup(h, decides({ mark: markForSlot(2), deny: [2] }));
    assert.equal(await result(h, ['connect', FAR1, String(PORT)]), 'EPERM', 'hard mark');
    await call({ op: 'setDestination', prefix: '10.90.1.0/24', slot: 1 });
    assert.equal(await result(h, ['connect', FAR1, String(PORT)]), 'EPERM', 'a hard mark wins over the destination');
    await setCgroup(h, decides({ mark: softMarkForSlot(2), deny: [2] }));
    assert.equal(await result(h, ['connect', FAR1, String(PORT)]), 'ok', 'the destination wins over a soft mark');
    await call({ op: 'deleteDestination', prefix: '10.90.1.0/24' });
    assert.equal(await result(h, ['connect', FAR1, String(PORT)]), 'EPERM', 'soft mark');

    await call({ op: 'setMain', slot4: 2, slot6: 0 });
    try {
      assert.equal(await result(d, ['connect', FAR1, String(PORT)]), 'EPERM', "main's slot");
      assert.equal(await result(d, ['connect', FAR1_6, String(PORT)]), 'ok', "main's IPv6 slot is unset");
    } finally {
      await call({ op: 'setMain', slot4: 0, slot6: 0 });
    }
  });

  it('loopback always works, even for a cgroup denied every uplink', async () => {
    const all = cgroup('deny-all');
    await setCgroup(all, decides({ mark: markForSlot(2), deny: 'all' }));
    const ok = { 'tcp127.0.0.1': 'ok', 'udp127.0.0.1': 'ok', 'tcp::1': 'ok', 'udp::1': 'ok' };
    assert.deepEqual(await probe(all, ['loopback'], { uid: NOBODY }), ok);
    assert.equal(await result(all, ['connect', FAR1, String(PORT), 'up0']), 'EPERM');
  });
});

describe('counters', { timeout: 60_000 }, () => {
  it('wm_usage counts the IP bytes of a transfer per app and uplink, both ways', async () => {
    const x = cgroup('usage');
    await setCgroup(x, decides({ app: 77 }));
    const count = 200;
    const size = 1000;
    assert.deepEqual(await probe(x, ['transfer', FAR1, String(PORT), String(count), String(size)]), { sent: count * size, echoed: count * size });
    const rows = (await call({ op: 'usage' })) as { app: number; slot: number; dir: string; bytes: string; packets: string }[];
    const expected = count * (size + 8 + 20); // UDP and IPv4 headers
    for (const dir of ['tx', 'rx']) {
      const row = rows.find((r) => r.app === 77 && r.slot === 1 && r.dir === dir);
      assert.ok(row, `no ${dir} row for app 77: ${JSON.stringify(rows)}`);
      const bytes = Number(row.bytes);
      assert.ok(bytes >= expected && bytes <= expected * 1.03, `${dir}: ${bytes} bytes, expected about ${expected}`);
      assert.ok(Number(row.packets) >= count && Number(row.packets) <= count * 1.03, `${dir}: ${row.packets} packets`);
    }
    assert.ok(!rows.some((r) => r.app === 77 && r.slot === 2), 'nothing of it left by up1');
  });

  it('wm_socks goes up with sockets created and down with sockets closed', async () => {
    const k = cgroup('socks');
    const id = cgroupId(k).toString();
    const live = async (): Promise<number | undefined> =>
      new Map((await call({ op: 'liveSockets' })) as [string, number][]).get(id);
    const p = startProbe(k, ['socks', '5'], { uid: NOBODY });
    assert.deepEqual(await p.expect('holding'), { step: 'holding' });
    assert.equal(await live(), 5);
    p.child.stdin?.write('close\n');
    assert.deepEqual(await p.expect('closed'), { step: 'closed' });
    assert.equal(await live(), 0);
    p.child.stdin?.end();
  });
});

describe('lifetime', { timeout: 60_000 }, () => {
  it('nothing stays attached after close, nor after the loading process dies', async () => {
    const names = attached(base);
    for (const n of ['wm_sock_create', 'wm_sock_release', 'wm_connect4', 'wm_connect6', 'wm_sendmsg4', 'wm_sendmsg6', 'wm_egress', 'wm_ingress']) {
      assert.ok(names.includes(n), `${n} attached: ${names.join(' ')}`);
    }
    await call({ op: 'close' });
    assert.deepEqual(attached(base), []);

    await call({ op: 'open', dir: base });
    assert.equal(attached(base).length, 8);
    const child = agent?.child;
    assert.ok(child);
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
    agent = undefined;
    // The links go with the process's files; the kernel may free them just after the exit.
    for (let i = 0; i < 40 && attached(base).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(attached(base), []);
  });
});
