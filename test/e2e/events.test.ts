/**
 * `waymark watch` end to end, in a lab the test builds: live events from the real daemon for a
 * link going down (the kernel), a reload (SIGHUP and `waymark reload`, a rejected config) and a
 * connection denied for a program under the library (an app rule denying the MMS APN to curl);
 * two watchers at once; an unprivileged watcher (uid 4242) sees its own program's denials, not
 * root's; a subscriber that never reads does not slow decisions, and the daemon holds at most
 * its bound for it (status: events); a prompt agent registers (status: prompts); Ctrl-C ends a
 * watcher with 0, the daemon going with 69.
 * Every step waits for the line it expects; the 10 s bounds are guards against a hang only.
 */
import assert from 'node:assert/strict';
import { realpathSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { EXAMPLE_CONFIG, startDevice, type Device } from '../../src/lab/device.js';
import { Lab, LAB, sweepStale } from '../../src/lab/lab.js';
import { publicRoot } from '../../src/lab/public.js';
import type { DaemonEvent } from '../../src/daemon/events.js';
import type { StatusResult } from '../../src/daemon/protocol.js';
import { SOCKET_HIGH_WATER } from '../../src/daemon/server.js';
import { Watcher } from '../support/watcher.js';

const GUARD_MS = 10_000;
const USER = 4242;
const CURL = realpathSync('/usr/bin/curl');
const PYTHON = realpathSync('/usr/bin/python3');

let lab: Lab;
let dev: Device;

/** The example config, with app rules denying the MMS APN to curl and python3 (whoever runs them). */
function config(): string {
  const base = readFileSync(EXAMPLE_CONFIG, 'utf8');
  return base.replace('rules:\n', `rules:\n  - name: no-mms-curl\n    match: { exe: ${CURL} }\n    never: [mms]\n  - name: no-mms-python\n    match: { exe: ${PYTHON} }\n    never: [mms]\n`);
}

before(async () => {
  await sweepStale();
  lab = await Lab.create();
  dev = await startDevice(lab, { config: config() });
}, { timeout: 120_000 });

after(async () => {
  await dev?.dispose();
  await lab?.destroy();
});

const preload = (): NodeJS.ProcessEnv => ({ ...process.env, LD_PRELOAD: join(publicRoot(), 'native/preload/libwaymark.so'), WAYMARK_SOCKET: dev.socket });

/** curl under the library (no `waymark exec`), to the MMSC: its app rule denies the only uplink that reaches it. */
async function deniedCurl(uid?: number, port = 80): Promise<void> {
  const r = await lab.run('dev', ['curl', '-sS', '--max-time', '3', `http://${LAB.mmsc.v4}:${port}/`], { env: preload(), ...(uid !== undefined ? { uid } : {}) });
  assert.notEqual(r.code, 0, 'the connection is denied');
}

async function status(): Promise<StatusResult> {
  const r = await dev.waymark(['status', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusResult;
}

const delays: Record<string, number[]> = {};
const note = (what: string, ms: number): void => {
  (delays[what] ??= []).push(ms);
};

describe('waymark watch', () => {
  let a: Watcher;
  let b: Watcher;
  let user: Watcher;
  let denials: Watcher;

  before(async () => {
    a = new Watcher(lab, dev, ['--json']);
    b = new Watcher(lab, dev, []); // readable text
    user = new Watcher(lab, dev, ['--json'], USER);
    denials = new Watcher(lab, dev, ['--json', '--topic', 'decision']);
    await Promise.all([a.ready(), b.ready(), user.ready(), denials.ready()]);
  });

  after(() => {
    for (const w of [a, b, user, denials]) w.child.kill('SIGKILL');
    console.log(`# action → watcher line (ms): ${Object.entries(delays).map(([k, v]) => `${k} ${v.map((x) => x.toFixed(1)).join('/')}`).join('; ')}`);
  });

  it('says what it watches, for whom, and is in --help', async () => {
    assert.match(a.stderr, /^watching uplink, config, decision, session, app, prompt, usage, budget, profile, system events \(of every user\); Ctrl-C to stop$/m);
    assert.match(user.stderr, new RegExp(`^watching uplink, config, decision, session, app, prompt, usage, budget, profile, system events \\(of uid ${USER} and the whole device\\)`, 'm'));
    const help = await dev.waymark(['--help']);
    assert.match(help.stdout, /^ {2}watch \[options\] +stream the daemon's events live/m);
    const bad = await dev.waymark(['watch', '--topic', 'nope']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /unknown topic "nope" \(known: uplink, config, decision, session, app, prompt, usage, budget, profile, system\)/);
  });

  it('shows a link going down and coming back, to both watchers and the unprivileged one', async () => {
    const [fromA, fromB, fromU] = [a.lines.length, b.lines.length, user.lines.length];
    const t0 = performance.now();
    await lab.setLink('dev', 'wlan0', false);
    try {
      const down = (e: DaemonEvent): boolean => e.type === 'uplink.changed' && e.uplink === 'wifi' && e.status === 'down';
      const [ea, lb, eu] = await Promise.all([
        a.event(fromA, down, 'wifi down event'),
        b.line(fromB, (t) => / uplink wifi \(wlan0\): active -> down, carrier no, addresses /.test(t), 'wifi down line'),
        user.event(fromU, down, 'wifi down event'),
      ]);
      note('link down', ea.at - t0);
      note('link down (text)', lb.at - t0);
      note('link down (uid 4242)', eu.at - t0);
      assert.ok(ea.event.type === 'uplink.changed' && ea.event.previous === 'active' && ea.event.carrier === false && ea.event.ifname === 'wlan0');
    } finally {
      await lab.setLink('dev', 'wlan0', true);
    }
    await a.event(fromA, (e) => e.type === 'uplink.changed' && e.uplink === 'wifi' && e.status === 'active' && e.addresses.length > 0, 'wifi active again');
  });

  it('shows a reload (SIGHUP and waymark reload) and a rejected config', async () => {
    const [fromA, fromB, fromU] = [a.lines.length, b.lines.length, user.lines.length];
    const t0 = performance.now();
    dev.daemon.kill('SIGHUP');
    const reloaded = (e: DaemonEvent): boolean => e.type === 'config.reloaded';
    const [ea, lb, eu] = await Promise.all([
      a.event(fromA, reloaded, 'config.reloaded'),
      b.line(fromB, (t) => / config reloaded: generation \d+, 4 uplinks, \d+ destinations, \d+ rules$/.test(t), 'reload line'),
      user.event(fromU, reloaded, 'config.reloaded (uid 4242)'),
    ]);
    note('reload (SIGHUP)', ea.at - t0);
    note('reload (text)', lb.at - t0);
    note('reload (uid 4242)', eu.at - t0);
    assert.ok(ea.event.type === 'config.reloaded' && ea.event.uplinks === 4 && ea.event.rules >= 2);

    const from2 = a.lines.length;
    const r = await dev.waymark(['reload']);
    assert.equal(r.code, 0, r.stderr);
    const gen = Number(/generation (\d+)/.exec(r.stdout)?.[1]);
    await a.event(from2, (e) => e.type === 'config.reloaded' && e.generation === gen, `config.reloaded generation ${gen}`);

    const good = readFileSync(dev.configPath, 'utf8');
    writeFileSync(dev.configPath, `${good}\nuplinks: 7\n`); // a second `uplinks:`
    try {
      const from3 = user.lines.length;
      assert.equal((await dev.waymark(['reload'])).code, 65);
      const { event } = await user.event(from3, (e) => e.type === 'config.rejected', 'config.rejected');
      assert.ok(event.type === 'config.rejected' && event.issues.length > 0 && event.issues.every((i) => i.file === dev.configPath && i.line > 0), JSON.stringify(event));
    } finally {
      writeFileSync(dev.configPath, good);
    }
  });

  it('shows a denial made for a program under the library to root\'s watchers; uid 4242 sees its own program\'s, not root\'s', async () => {
    const [fromA, fromB, fromU] = [a.lines.length, b.lines.length, user.lines.length];
    const t0 = performance.now();
    await deniedCurl(undefined, 81);
    const rootDenial = (e: DaemonEvent): boolean => e.type === 'decision.denied' && e.uid === 0 && e.port === 81;
    const [ea, lb] = await Promise.all([
      a.event(fromA, rootDenial, 'root\'s denial'),
      b.line(fromB, (t) => t.includes(` denied ${CURL} (uid 0, `) && t.includes(`app no-mms-curl) -> ${LAB.mmsc.v4}:81/tcp (destination mms): EACCES `), 'denial line'),
    ]);
    note('denial', ea.at - t0);
    note('denial (text)', lb.at - t0);
    assert.ok(ea.event.type === 'decision.denied');
    assert.deepEqual([ea.event.exe, ea.event.app, ea.event.destination, ea.event.address, ea.event.proto, ea.event.errno], [CURL, 'no-mms-curl', 'mms', LAB.mmsc.v4, 'tcp', 'EACCES']);
    assert.ok(ea.event.pid > 0 && ea.event.reason.length > 0);

    // Now the user's own curl: it sees that one, and (events arrive in order) never saw root's.
    const t1 = performance.now();
    await deniedCurl(USER, 82);
    const own = await user.event(fromU, (e) => e.type === 'decision.denied', 'its own denial');
    note('denial (uid 4242)', own.at - t1);
    assert.ok(own.event.type === 'decision.denied' && own.event.uid === USER && own.event.port === 82, JSON.stringify(own.event));
    await a.event(fromA, (e) => e.type === 'decision.denied' && e.uid === USER && e.port === 82, 'the user\'s denial, to root');
    assert.deepEqual(user.events().filter((e) => e.type === 'decision.denied').map((e) => e.type === 'decision.denied' && e.uid), [USER], 'uid 4242 sees no denial of root\'s');
    // --topic decision: both denials, and nothing of the link, reload and session events before.
    await denials.event(0, (e) => e.type === 'decision.denied' && e.uid === USER, 'the user\'s denial (--topic decision)');
    assert.deepEqual(denials.events().map((e) => e.type), ['decision.denied', 'decision.denied']);
  });

  it('shows sessions starting and ending, each to its own user and to root', async () => {
    const [fromA, fromU] = [a.lines.length, user.lines.length];
    assert.equal((await dev.waymark(['exec', '--uplink', 'wifi', '--', 'true'], { uid: 65534 })).code, 0);
    assert.equal((await dev.waymark(['exec', '--uplink', 'wifi', '--', 'true'], { uid: USER })).code, 0);
    await a.event(fromA, (e) => e.type === 'session.ended' && e.uid === 65534, 'nobody\'s session ended');
    const started = await user.event(fromU, (e) => e.type === 'session.started', 'its session started');
    assert.ok(started.event.type === 'session.started' && started.event.uid === USER && started.event.uplink === 'wifi' && started.event.command === 'true');
    await user.event(fromU, (e) => e.type === 'session.ended', 'its session ended');
    assert.ok(!user.events().some((e) => (e.type === 'session.started' || e.type === 'session.ended') && e.uid !== USER), 'uid 4242 sees no other user\'s session');
  });

  it('a subscriber that never reads does not slow decisions, and the daemon holds at most its bound for it', { timeout: 120_000 }, async () => {
    const N = 2000;
    // N connects to the MMSC on N ports (the library caches per port): each is one decision, denied.
    const LOOP = `import errno, json, socket, sys, time
host, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = {}
t0 = time.monotonic()
for i in range(n):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, base + i)); k = 'connected'
    except OSError as e:
        k = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
    s.close()
    res[k] = res.get(k, 0) + 1
print(json.dumps({'results': res, 'ms': (time.monotonic() - t0) * 1000}))`;
    const loop = async (base: number): Promise<{ results: Record<string, number>; ms: number }> => {
      const r = await lab.run('dev', [PYTHON, '-c', LOOP, LAB.mmsc.v4, String(base), String(N)], { env: preload(), timeoutMs: 60_000 });
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { results: Record<string, number>; ms: number };
    };
    const STUCK = `import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(sys.argv[1])
s.sendall(b'{"v":2,"id":1,"method":"events.subscribe","params":{"topics":["decision"]}}\\n')
f = s.makefile('rb')
print('subscribed', f.readline().decode().strip(), flush=True)
sys.stdin.readline()
while True:
    e = json.loads(f.readline())['event']
    if e['type'] == 'events.lost':
        print('lost', e['count'], flush=True)
        break`;
    const baseline = await loop(20_000);
    assert.deepEqual(baseline.results, { EACCES: N }, 'every decision answered (denied) without the stuck subscriber');

    const stuck = lab.spawn('dev', [PYTHON, '-u', '-c', STUCK, dev.socket], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out = createInterface({ input: stuck.stdout! });
    const lines: string[] = [];
    let waiting: ((l: string) => void) | undefined;
    out.on('line', (l) => { if (waiting) { const w = waiting; waiting = undefined; w(l); } else lines.push(l); });
    const next = (): Promise<string> => {
      const l = lines.shift();
      return l !== undefined ? Promise.resolve(l) : new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('stuck subscriber printed nothing')), GUARD_MS);
        waiting = (x) => { clearTimeout(t); resolve(x); };
      });
    };
    try {
      assert.match(await next(), /^subscribed \{"v":2,"id":1,"ok":true,"result":\{"topics":\["decision"\],"seesAll":true,"queueLimit":\d+\}\}$/);
      const before = (await status()).events;
      const fromA = a.lines.length;
      const withStuck = await loop(30_000);
      assert.deepEqual(withStuck.results, { EACCES: N }, 'every decision answered (denied) with a subscriber that never reads');
      const st = await status();
      const ev = st.events;
      assert.ok(ev && before, 'status shows the event stats');
      console.log(`# ${N} denied decisions: ${baseline.ms.toFixed(0)} ms without, ${withStuck.ms.toFixed(0)} ms with a subscriber that never reads;`
        + ` events: ${ev.subscribers} subscribers, ${ev.dropped - before.dropped} dropped, longest queue ${ev.maxQueued} of ${ev.queueLimit}; control socket holds ${st.control?.unwrittenBytes ?? '?'} bytes unwritten`);
      assert.ok(ev.maxQueued <= ev.queueLimit + 1, `longest queue ${ev.maxQueued} (bound ${ev.queueLimit})`);
      assert.ok(ev.dropped - before.dropped > 0, 'events were dropped for the stuck subscriber');
      assert.ok((st.control?.unwrittenBytes ?? Infinity) <= ev.subscribers * (SOCKET_HIGH_WATER + 1024), `bytes unwritten: ${st.control?.unwrittenBytes}`);
      const text = await dev.waymark(['status']);
      assert.match(text.stdout, /^events: \d+ watchers, \d+ events dropped for watchers that fell behind \(at most \d+ queued each\)$/m);
      // A watcher that reads gets every one of them, or is told how many it missed: on a busy
      // machine it may be descheduled through a burst longer than its queue. One more denial
      // after the burst marks the end (events arrive in order, a gap's events.lost in its place).
      await deniedCurl(undefined, 29_999);
      await a.event(fromA, (e) => e.type === 'decision.denied' && e.port === 29_999, 'the denial after the burst');
      const seen = a.events().slice(fromA);
      const got = seen.filter((e) => e.type === 'decision.denied' && e.port >= 30_000 && e.port < 30_000 + N).length;
      const lostCount = seen.reduce((n, e) => n + (e.type === 'events.lost' ? e.count : 0), 0);
      console.log(`# the reading watcher: ${got} of ${N} denials, ${lostCount} events announced lost`);
      assert.ok(got === N || (lostCount > 0 && got + lostCount >= N), `${got} of ${N} denials and ${lostCount} announced lost: some went missing silently`);
      // Once it reads, it is told how many it lost.
      stuck.stdin?.write('go\n');
      const lost = /^lost (\d+)$/.exec(await next());
      assert.ok(lost && Number(lost[1]) > 0, 'it learns it lost events');
    } finally {
      stuck.kill('SIGKILL');
    }
  });

  it('a prompt agent (waymark agent --json, uid 4242) registers with the real daemon, status counts it, and it exits at the end of its input', async () => {
    const cli = join(publicRoot(), 'dist/src/cli/main.js');
    const agent = lab.spawn('dev', [process.execPath, cli, '--socket', dev.socket, 'agent', '--json'], { uid: USER, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    agent.stderr?.setEncoding('utf8').on('data', (d: string) => { err += d; });
    const exited = new Promise<number | null>((resolve) => agent.once('exit', (code) => resolve(code)));
    try {
      const out = agent.stdout;
      assert.ok(out);
      const first = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no registration within ${GUARD_MS} ms: ${err}`)), GUARD_MS);
        createInterface({ input: out }).once('line', (l) => { clearTimeout(timer); resolve(l); });
      });
      const reg = JSON.parse(first) as { type: string; agent: { uid: number; name: string }; queued: number };
      assert.deepEqual([reg.type, reg.agent.uid, reg.agent.name, reg.queued], ['agent.registered', USER, 'waymark agent', 0]);
      const st = await status();
      assert.equal(st.prompts?.agents, 1);
      assert.deepEqual([st.prompts?.open, st.prompts?.queued], [0, 0]);
      const text = await dev.waymark(['status']);
      assert.match(text.stdout, /^prompts: 1 agent, 0 open, 0 queued$/m);
      agent.stdin?.end(); // the end of its input: it exits
      assert.equal(await exited, 0, err);
    } finally {
      agent.kill('SIGKILL');
    }
  });

  it('exits 0 on Ctrl-C', async () => {
    b.child.kill('SIGINT');
    assert.equal(await b.exited(), 0, b.stderr);
  });

  it('exits 69 with a message when the daemon goes', async () => {
    await dev.stopDaemon();
    try {
      assert.equal(await a.exited(), 69);
      assert.match(a.stderr, /waymark: waymarkd closed the connection; no more events/);
      const again = new Watcher(lab, dev, ['--json']);
      assert.equal(await again.exited(), 69);
      assert.match(again.stderr, /waymarkd is not running/);
      assert.doesNotMatch(again.stderr, /closed the connection/, 'one message, not two');
    } finally {
      await dev.startDaemon();
    }
  });
});
