/**
 * Sessions cannot grant what the policy denies (issue 7), end to end in a lab the test builds,
 * as an unprivileged user (uid 4242) with a client the library cannot touch (the static Go
 * client) or with the library switched off (WAYMARK_DISABLE=1):
 *   - the app rules bind a session's kernel mark and nftables fence: a pinned uplink the policy
 *     denies is refused at begin, an unpinned session is fenced off it, a rule added by reload
 *     holds for sessions already running;
 *   - a session started from inside a session inherits its restrictions, whoever starts it;
 *   - the per-user session cap holds under 100 concurrent begins;
 *   - others' sessions (command lines) are not shown to unprivileged users; state.json is 0600.
 */
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { chmodSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Device } from '../../src/lab/device.js';
import { exampleText } from '../support/fixture.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { publicRoot } from '../../src/lab/public.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { status, url, useLab } from '../support/lab.js';

const USER = 4242;
/** A user no app rule names. */
const OTHER = 4343;
const MAX_SESSIONS_PER_USER = 64;

let lab: Lab;
let dev: Device;
let goclient: string;
let cli: string;

/** The shipped example with its apps: section replaced. */
const configWith = exampleText;
const RULED = configWith(`apps:
  - name: restricted
    match: { uid: ${USER} }
    deny: [cellular]
`);
const RULED_BOTH = configWith(`apps:
  - name: restricted
    match: { uid: ${USER} }
    deny: [cellular]
  - name: other
    match: { uid: ${OTHER} }
    deny: [cellular]
`);
const UNRULED = configWith('apps: []\n');

useLab({
  config: RULED,
  alongside: async () => {
    goclient = await buildPublicGoClient();
  },
  timeoutMs: 180_000,
}, (l, d) => {
  lab = l;
  dev = d;
  cli = join(publicRoot(), 'dist/src/cli/main.js');
});

const INTERNET = url(LAB.internet.v4);

/** The path server's reply (the device interface the request arrived by), or null. */
function pathOf(out: string): string | null {
  const line = out.trim().split('\n').reverse().find((l) => l.startsWith('{'));
  try {
    return line ? (JSON.parse(line) as { path: string }).path : null;
  } catch {
    return null;
  }
}

async function useConfig(text: string): Promise<void> {
  writeFileSync(dev.configPath, text);
  const r = await dev.waymark(['reload']);
  assert.equal(r.code, 0, r.stderr);
}

/** `waymark exec ARGS -- ARGV` in the device, as `uid` (root when undefined). */
function exec(args: readonly string[], argv: readonly string[], opts: { uid?: number; env?: NodeJS.ProcessEnv } = {}) {
  return dev.waymark(['exec', ...args, '--', ...argv], { timeoutMs: 20_000, ...opts });
}

/** The CLI command line for running it from inside another command (as another user: setpriv). */
function nestedExec(args: readonly string[], argv: readonly string[], uid?: number): string[] {
  const cmd = [process.execPath, cli, '--socket', dev.socket, 'exec', ...args, '--', ...argv];
  return uid === undefined ? cmd : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', ...cmd];
}

/** A program held open under `waymark exec` until released: prints "ready" once it runs. */
interface Held { child: ChildProcess; out: string; release(): Promise<number | null> }
async function hold(args: readonly string[], script: string, opts: { uid?: number; name?: string } = {}): Promise<Held> {
  const child = lab.spawn('dev', [process.execPath, cli, '--socket', dev.socket, 'exec', ...args, '--', 'sh', '-c', script, opts.name ?? 'held'],
    { ...(opts.uid !== undefined ? { uid: opts.uid } : {}), stdio: ['pipe', 'pipe', 'pipe'], timeoutMs: 60_000 });
  const held: Held = {
    child, out: '',
    release: async () => {
      const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
      child.stdin?.end('go\n');
      return exited;
    },
  };
  let err = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  await new Promise<void>((resolve, reject) => {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      held.out += d;
      if (held.out.includes('ready\n')) resolve();
    });
    child.once('close', (code) => reject(new Error(`held program exited (${code}) before it was ready: ${held.out}\n${err}`)));
  });
  return held;
}

describe('a session never grants what the app rules deny', () => {
  it('a pinned uplink the policy denies is refused at begin (77), the program never runs; an allowed one works', async () => {
    const pinned = await exec(['--uplink', 'cellular'], [goclient, INTERNET], { uid: USER });
    assert.equal(pinned.code, 77, `${pinned.stdout}\n${pinned.stderr}`);
    assert.match(pinned.stderr, /uplink cellular is not allowed for app restricted .*\[EACCES\]/);
    assert.equal(pathOf(pinned.stdout), null, 'the program did not run');
    // By interface name, and with the library switched off: the same.
    const byIf = await exec(['--uplink', 'wwan0'], ['curl', '-sS', '--max-time', '3', INTERNET], { uid: USER, env: { ...process.env, WAYMARK_DISABLE: '1' } });
    assert.equal(byIf.code, 77, `${byIf.stdout}\n${byIf.stderr}`);
    // Positive control: an uplink the rule allows.
    const wifi = await exec(['--uplink', 'wifi'], [goclient, INTERNET], { uid: USER });
    assert.equal(pathOf(wifi.stdout), 'wlan0', wifi.stderr);
    // Another user, whom no rule names, may pin cellular.
    const other = await exec(['--uplink', 'cellular'], [goclient, INTERNET], { uid: OTHER });
    assert.equal(pathOf(other.stdout), 'wwan0', other.stderr);
  });

  it('an unpinned session defaults to an allowed uplink and is fenced off the denied one', async () => {
    // long-lived would pick cellular; the rule takes it away.
    const needs = await exec(['--need', 'long-lived'], [goclient, INTERNET], { uid: USER });
    assert.equal(pathOf(needs.stdout), 'wlan0', needs.stderr);
    const sneaky = await exec(['--need', 'long-lived'], [goclient, '-bind', 'wwan0', '-timeout', '1s', INTERNET], { uid: USER });
    assert.notEqual(sneaky.code, 0, sneaky.stdout);
    assert.equal(pathOf(sneaky.stdout), null);
    const curl = await exec(['--need', 'long-lived'], ['curl', '-sS', '--interface', 'wwan0', '--max-time', '1', INTERNET],
      { uid: USER, env: { ...process.env, WAYMARK_DISABLE: '1' } });
    assert.equal(pathOf(curl.stdout), null, curl.stdout);
    // Positive control: without the rule's user, long-lived does go by cellular.
    const other = await exec(['--need', 'long-lived'], [goclient, INTERNET], { uid: OTHER });
    assert.equal(pathOf(other.stdout), 'wwan0', other.stderr);
  });

  it('a rule added by reload holds for a session already running', async () => {
    const go = `${goclient} -timeout 1s ${INTERNET}`;
    const running = await hold(['--uplink', 'cellular'], `${go}; echo ready; read x; ${go}`, { uid: OTHER });
    try {
      assert.equal(pathOf(running.out), 'wwan0', 'before the reload: cellular, as pinned');
      await useConfig(RULED_BOTH);
      const code = await running.release();
      const after = running.out.slice(running.out.indexOf('ready\n') + 'ready\n'.length);
      assert.equal(pathOf(after), null, `after the reload the pinned uplink is denied: ${after}`);
      assert.notEqual(code, 0);
    } finally {
      running.child.kill('SIGKILL');
      await useConfig(RULED);
    }
  });

  it('the program\'s own rule applies too, and never instead of the starter\'s', async () => {
    // The Go client's rule would allow cellular; uid 4242's forbids it: both apply.
    await useConfig(configWith(`apps:
  - name: goclient
    match: { exe: ${realpathSync(goclient)} }
    uplinks: [cellular, wifi]
  - name: restricted
    match: { uid: ${USER} }
    deny: [cellular]
  - name: no-mms
    match: { exe: /usr/bin/curl }
    deny: [mms]
`));
    try {
      const both = await exec(['--uplink', 'cellular'], [goclient, INTERNET], { uid: USER });
      assert.equal(both.code, 77, `${both.stdout}\n${both.stderr}`);
      assert.match(both.stderr, /not allowed for app restricted\+goclient/);
      // Positive control: a user no rule names gets what the program's rule allows.
      const other = await exec(['--uplink', 'cellular'], [goclient, INTERNET], { uid: OTHER });
      assert.equal(pathOf(other.stdout), 'wwan0', other.stderr);
      // And the program's rule alone narrows: curl may not pin the MMS APN, whoever starts it.
      const curl = await exec(['--uplink', 'mms'], ['curl', '-sS', '--max-time', '3', url(LAB.mmsc.v4)], { uid: OTHER, env: { ...process.env, WAYMARK_DISABLE: '1' } });
      assert.equal(curl.code, 77, `${curl.stdout}\n${curl.stderr}`);
      assert.match(curl.stderr, /not allowed for app no-mms/);
    } finally {
      await useConfig(RULED);
    }
  });
});

describe('a session started from inside a session inherits its restrictions', () => {
  before(() => useConfig(UNRULED)); // no rule for anyone: only the outer session restricts
  after(() => useConfig(RULED));

  it('a uid-4242 program in root\'s --deny cellular session cannot pin cellular, nor get it by needs', async () => {
    const pin = await exec(['--deny', 'cellular'], nestedExec(['--uplink', 'cellular'], [goclient, INTERNET], USER));
    assert.equal(pin.code, 77, `${pin.stdout}\n${pin.stderr}`);
    assert.match(pin.stderr, /uplink cellular is not allowed: this runs in session exec-\S+ \(denying cellular\)/);
    assert.equal(pathOf(pin.stdout), null);
    const needs = await exec(['--deny', 'cellular'], nestedExec(['--need', 'long-lived'], [goclient, INTERNET], USER));
    assert.equal(pathOf(needs.stdout), 'wlan0', needs.stderr);
    const bound = await exec(['--deny', 'cellular'], nestedExec(['--need', 'long-lived'], [goclient, '-bind', 'wwan0', '-timeout', '1s', INTERNET], USER));
    assert.equal(pathOf(bound.stdout), null, bound.stdout);
    // Positive controls: narrowing is fine; and outside a session cellular is allowed for this user.
    const wifi = await exec(['--deny', 'cellular'], nestedExec(['--uplink', 'wifi'], [goclient, INTERNET], USER));
    assert.equal(pathOf(wifi.stdout), 'wlan0', wifi.stderr);
    const free = await exec(['--uplink', 'cellular'], [goclient, INTERNET], { uid: USER });
    assert.equal(pathOf(free.stdout), 'wwan0', free.stderr);
  });

  it('root inside a session is held to it too, and a pinned session stays pinned', async () => {
    const root = await exec(['--deny', 'cellular'], nestedExec(['--uplink', 'cellular'], [goclient, INTERNET]));
    assert.equal(root.code, 77, `${root.stdout}\n${root.stderr}`);
    const repin = await exec(['--uplink', 'wifi'], nestedExec(['--uplink', 'cellular'], [goclient, INTERNET], USER));
    assert.equal(repin.code, 77, `${repin.stdout}\n${repin.stderr}`);
    // An unpinned session inside a pinned one keeps the pin (long-lived alone would pick cellular).
    const kept = await exec(['--uplink', 'wifi'], nestedExec(['--need', 'long-lived'], [goclient, INTERNET], USER));
    assert.equal(pathOf(kept.stdout), 'wlan0', kept.stderr);
  });
});

describe('contradictory wishes are refused', () => {
  it('--uplink X --deny X exits 64 in the CLI; the daemon refuses it too, also by interface name', async () => {
    const same = await exec(['--uplink', 'wifi', '--deny', 'wifi'], ['true'], { uid: USER });
    assert.equal(same.code, 64, same.stderr);
    assert.match(same.stderr, /--uplink wifi and --deny wifi contradict each other/);
    const byIf = await exec(['--uplink', 'wlan0', '--deny', 'wifi'], ['true'], { uid: USER });
    assert.equal(byIf.code, 64, byIf.stderr);
    assert.match(byIf.stderr, /contradictory wish: uplink wifi is both asked for and denied/);
  });
});

describe('the per-user session cap holds under concurrent begins', () => {
  // 100 processes of one user, each connected to the control socket, send exec.begin at the same
  // moment (released together by closing a pipe) and stay alive in their sessions until all
  // answers are in, so none ends early and frees a place.
  const SCRIPT = String.raw`
import json, os, socket, sys
n, path = int(sys.argv[1]), sys.argv[2]
go_r, go_w = os.pipe(); up_r, up_w = os.pipe(); res_r, res_w = os.pipe(); hold_r, hold_w = os.pipe()
for i in range(n):
    if os.fork() == 0:
        for fd in (go_w, up_r, res_r, hold_w): os.close(fd)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
        os.write(up_w, b"c")
        os.read(go_r, 1)
        s.sendall((json.dumps({"v": 1, "id": 1, "method": "exec.begin", "params": {"command": "burst"}}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            c = s.recv(65536)
            if not c: break
            buf += c
        r = json.loads(buf) if buf else {"ok": False, "error": {"code": "CLOSED"}}
        os.write(res_w, (json.dumps({"ok": r["ok"], "code": None if r["ok"] else r["error"]["code"]}) + "\n").encode())
        os.read(hold_r, 1)
        os._exit(0)
for fd in (go_r, up_w, res_w, hold_r): os.close(fd)
got = 0
while got < n: got += len(os.read(up_r, n))
os.close(go_w)
lines = b""
while lines.count(b"\n") < n:
    c = os.read(res_r, 65536)
    if not c: break
    lines += c
os.close(hold_w)
for i in range(n): os.wait()
ok = 0; codes = {}
for l in lines.decode().split("\n"):
    if not l: continue
    r = json.loads(l)
    if r["ok"]: ok += 1
    else: codes[r["code"]] = codes.get(r["code"], 0) + 1
print(json.dumps({"ok": ok, "refused": codes}))
`;

  it(`exactly ${MAX_SESSIONS_PER_USER} of 100 concurrent exec.begin of one user succeed`, { timeout: 180_000 }, async () => {
    const r = await lab.run('dev', ['/usr/bin/python3', '-c', SCRIPT, '100', dev.socket], { uid: USER, timeoutMs: 150_000 });
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout.trim()) as { ok: number; refused: Record<string, number> };
    assert.deepEqual(result, { ok: MAX_SESSIONS_PER_USER, refused: { EPERM: 100 - MAX_SESSIONS_PER_USER } });
    // The sessions end with their processes (the daemon sees each cgroup empty).
    const end = Date.now() + 60_000;
    while ((await status(dev)).sessions?.some((s) => s.uid === USER)) {
      assert.ok(Date.now() < end, 'the burst\'s sessions did not end');
      await new Promise((res) => setTimeout(res, 100));
    }
  });
});

describe('others\' sessions are private', () => {
  it('an unprivileged user sees only their own sessions; state.json is 0600, also when it was not', async () => {
    const stateFile = join(dev.dir, 'state', 'state.json');
    chmodSync(stateFile, 0o644); // as an older waymarkd left it
    const secret = await hold([], 'echo ready; read x', { name: '--password=hunter2' });
    const mine = await hold([], 'echo ready; read x', { uid: USER, name: 'mine' });
    try {
      const asUser = await status(dev, USER);
      assert.deepEqual(asUser.sessions?.map((s) => s.uid), [USER]);
      assert.match(asUser.sessions?.[0]?.command ?? '', /mine$/);
      const text = await dev.waymark(['status'], { uid: USER });
      assert.doesNotMatch(text.stdout, /hunter2/);
      const asOther = await status(dev, OTHER);
      assert.deepEqual(asOther.sessions, []);
      const asRoot = await status(dev);
      assert.deepEqual(asRoot.sessions?.map((s) => s.uid).sort(), [0, USER]);
      assert.ok(asRoot.sessions?.some((s) => s.command.includes('--password=hunter2')));
      assert.equal(statSync(stateFile).mode & 0o777, 0o600);
      const read = await lab.run('dev', ['cat', stateFile], { uid: USER });
      assert.notEqual(read.code, 0, 'another user cannot read the state file');
      assert.doesNotMatch(read.stdout, /hunter2/);
    } finally {
      await Promise.all([secret.release(), mine.release()]);
    }
  });
});
