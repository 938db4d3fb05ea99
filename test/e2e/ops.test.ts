/**
 * Operational traps, end to end in the lab: a second waymarkd next to a running one, configs the
 * daemon used to accept or die on, globs over several links and the loopback, `waymark exec`'s
 * exit statuses, and `waymark demo down` run from inside the demo's own device.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CLI_JS, DAEMON_JS, startDevice, type Device } from '../../src/lab/device.js';
import { DETACHED_DIR, Lab, LAB, ROLES } from '../../src/lab/lab.js';
import { status, useLab } from '../support/lab.js';

let lab: Lab;
let dev: Device;

useLab({}, (l, d) => {
  lab = l;
  dev = d;
});

const hasScript = spawnSync('script', ['--version']).status === 0;

/** Kills what runs in these namespaces and deletes them (a failed test's leftovers). */
function killNamespaces(names: readonly string[]): Promise<void> {
  if (names.length === 0) return Promise.resolve();
  const script = 'for ns in "$@"; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p"; done; ip netns del "$ns" 2>/dev/null; done; true';
  return new Promise<void>((resolve) => {
    spawn('sh', ['-c', script, 'sh', ...names], { stdio: 'ignore' }).once('exit', () => resolve());
  });
}

/** What a second daemon would destroy: the sockets and generation file (by inode) and the nftables table. */
async function footprint(): Promise<{ inodes: number[]; table: string }> {
  const inodes = ['waymarkd.sock', 'decide.sock', 'generation'].map((f) => statSync(join(dev.dir, f)).ino);
  const t = await lab.run('dev', ['nft', 'list', 'table', 'inet', 'waymark']);
  assert.equal(t.code, 0, t.stderr);
  // Counter values move with traffic; the table's shape must not.
  return { inodes, table: t.stdout.replace(/packets \d+ bytes \d+/g, 'packets N bytes N') };
}

describe('one waymarkd at a time', () => {
  it('a second daemon on the same socket or state directory refuses (exit 75, naming the pid); the first keeps serving', async () => {
    const first = dev.daemon.pid;
    assert.ok(first !== undefined);
    const before = await footprint();
    // Started exactly as the first (nsenter, host mounts: the cgroup backend works); the bound
    // only ends a daemon that wrongly took over.
    const second = (args: string[]) => new Promise<{ code: number | null; stderr: string; stdout: string }>((resolve) => {
      const c = lab.spawn('dev', [process.execPath, DAEMON_JS, '--config', dev.configPath, '--log-level', 'debug', ...args],
        { hostMounts: true, stdio: ['ignore', 'pipe', 'pipe'], timeoutMs: 30_000 });
      let stdout = '';
      let stderr = '';
      c.stdout?.on('data', (b: Buffer) => { stdout += b.toString(); });
      c.stderr?.on('data', (b: Buffer) => { stderr += b.toString(); });
      c.once('exit', (code) => resolve({ code, stdout, stderr }));
    });
    // Same socket and state directory, as a second `systemctl start` or a stray manual run would.
    const same = await second(['--socket', dev.socket, '--state-dir', join(dev.dir, 'state')]);
    assert.equal(same.code, 75, same.stdout + same.stderr);
    assert.match(same.stderr, new RegExp(`another waymarkd \\(pid ${first}\\) holds ${join(dev.dir, 'state', 'waymarkd.lock')}`));
    // Its own state directory, the same socket: the socket directory's lock stops it.
    const sameSocket = await second(['--socket', dev.socket, '--state-dir', join(dev.dir, 'state2')]);
    assert.equal(sameSocket.code, 75, sameSocket.stdout + sameSocket.stderr);
    assert.match(sameSocket.stderr, new RegExp(`another waymarkd \\(pid ${first}\\) holds ${join(dev.dir, 'waymarkd.lock')}`));
    // The socket named by its directory is the same socket.
    const byDir = await second(['--socket', `${dev.dir}/`, '--state-dir', join(dev.dir, 'state2')]);
    assert.equal(byDir.code, 75, byDir.stdout + byDir.stderr);
    assert.doesNotMatch(same.stderr + sameSocket.stderr + byDir.stderr, /\n\s+at /, 'a message, not a stack trace');

    const s = await status(dev);
    assert.equal(s.daemon.pid, first);
    assert.deepEqual(await footprint(), before, 'sockets, generation file and nftables table untouched');
    const r = await dev.waymark(['exec', '--uplink', 'wifi', '--', 'curl', '-sS', '--max-time', '3', `http://${LAB.internet.v4}/`], { timeoutMs: 8000 });
    assert.equal(r.code, 0, r.stderr);
  });

  it('a crashed daemon leaves no lock behind: the next one starts', async () => {
    await dev.stopDaemon('SIGKILL');
    await dev.startDaemon();
    assert.equal((await status(dev)).daemon.pid, dev.daemon.pid);
  });
});

describe('configs the daemon refuses are refused by the loader, located', () => {
  const original = (): string => readFileSync(dev.configPath, 'utf8');

  it('reload: an alias bomb and 40 uplinks give exit 65 with file:line:col: field; the running config stays', async () => {
    const text = original();
    const gen = (await status(dev)).daemon.generation;
    const bomb = 'version: 1\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n' +
      'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n';
    const many = 'version: 1\nuplinks:\n' + Array.from({ length: 40 }, (_, i) => `  - { name: u${i}, match: eth${i}, kind: ethernet }\n`).join('');
    try {
      for (const [what, bad, expect] of [
        ['alias bomb', bomb, /waymark\.yaml:6:5: e\[0\]: aliases expand to more than 10000 nodes/],
        ['40 uplinks', many, /waymark\.yaml:33:5: uplinks\[30\]: too many uplinks: at most 30/],
        ['office-vpn and office_vpn', text.replace(/^uplinks:\n/m, 'uplinks:\n  - { name: office_vpn, match: eth7, kind: vpn }\n'),
          /uplinks\[\d\]\.name: uplink "office-vpn" and uplinks\[0\] "office_vpn" differ only in "-" and "_"/],
      ] as const) {
        writeFileSync(dev.configPath, bad);
        const r = await dev.waymark(['reload']);
        assert.equal(r.code, 65, `${what}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, expect, what);
      }
    } finally {
      writeFileSync(dev.configPath, text);
    }
    assert.equal((await status(dev)).daemon.generation, gen);
  });
});

describe('interface globs', () => {
  it('never claim the loopback or a name nft would misread; a glob over links of different kinds is logged once, naming them', async () => {
    const text = readFileSync(dev.configPath, 'utf8');
    const tun = await lab.run('dev', ['ip', 'tuntap', 'add', 'tun9', 'mode', 'tun']);
    assert.equal(tun.code, 0, tun.stderr);
    // Linux allows '"' and '\\' in names; in nft they would end the quoted string.
    const odd = await lab.run('dev', ['ip', 'link', 'add', 'q"x', 'type', 'veth', 'peer', 'name', 'q\\y']);
    assert.equal(odd.code, 0, odd.stderr);
    try {
      writeFileSync(dev.configPath, text.replace(/^uplinks:\n/m, 'uplinks:\n  - { name: loop, match: "l*", kind: ethernet }\n' +
        '  - { name: tunnels, match: "tun*", kind: vpn }\n  - { name: quoted, match: "q*", kind: ethernet }\n'));
      const r = await dev.waymark(['reload']);
      assert.equal(r.code, 0, r.stderr);
      const s = await status(dev);
      const up = (name: string) => s.uplinks.find((u) => u.name === name);
      assert.deepEqual([up('loop')?.status, up('loop')?.ifname], ['absent', null]);
      assert.equal(up('tunnels')?.ifname, 'tun0');
      assert.deepEqual([up('quoted')?.status, up('quoted')?.ifname], ['absent', null]);
      assert.deepEqual(s.lastReconcile?.errors, [], 'the nftables table still applies');
      assert.ok(up('wifi')?.traffic, 'counters are there');
      const log = readFileSync(join(dev.dir, 'waymarkd.log'), 'utf8').split('\n').filter((l) => l.includes('level=warn'));
      const warned = log.filter((l) => l.includes('uplink=tunnels'));
      assert.equal(warned.length, 1, warned.join('\n'));
      assert.match(warned[0] ?? '', /msg="uplink matches several links of different kinds; only the first is used".*links="tun0 \(ether\), tun9 \(none\)" using=tun0/);
      assert.equal(log.filter((l) => l.includes('uplink=quoted') && l.includes('nftables cannot take')).length, 1, log.join('\n'));
    } finally {
      writeFileSync(dev.configPath, text);
      await lab.run('dev', ['ip', 'link', 'del', 'tun9']);
      await lab.run('dev', ['ip', 'link', 'del', 'q"x']);
      await dev.waymark(['reload']);
    }
  });
});

describe('waymark exec exit statuses', () => {
  it('127 for a command that does not exist, 126 for one that cannot run, the command\'s own otherwise', async () => {
    const missing = await dev.waymark(['exec', '--', '/nonexistent'], { timeoutMs: 8000 });
    assert.equal(missing.code, 127, missing.stderr);
    assert.match(missing.stderr, /waymark: \/nonexistent: command not found/);
    const dir = await dev.waymark(['exec', '--', dev.dir], { timeoutMs: 8000 });
    assert.equal(dir.code, 126, dir.stderr);
    const notExecutable = await dev.waymark(['exec', '--', dev.configPath], { timeoutMs: 8000 });
    assert.equal(notExecutable.code, 126, notExecutable.stderr);
    assert.match(notExecutable.stderr, /permission denied/);
    const own = await dev.waymark(['exec', '--', 'sh', '-c', 'exit 3'], { timeoutMs: 8000 });
    assert.equal(own.code, 3, own.stderr);
    const help = await dev.waymark(['exec', '--help']);
    assert.match(help.stdout, /126 if it was found but could not\s+be run; 127 if it was not found/);
  });
});

describe('waymark demo down', () => {
  it('run from inside the demo device, it ends the whole demo and says so', async () => {
    const demo = await Lab.create({ detachable: true });
    const names = ROLES.map((r) => demo.ns(r));
    const record = join(DETACHED_DIR, `${demo.runId}.json`);
    try {
      const d = await startDevice(demo);
      demo.detach();
      assert.ok(existsSync(record));
      // As typed in the demo's shell (`waymark demo down` or `npm run demo -- down`).
      const down = await new Promise<{ code: number | null; signal: string | null; out: string }>((resolve) => {
        const c = spawn('ip', ['netns', 'exec', demo.ns('dev'), process.execPath, CLI_JS, 'demo', 'down'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        c.stdout.on('data', (b: Buffer) => { out += b.toString(); });
        c.stderr.on('data', (b: Buffer) => { out += b.toString(); });
        c.once('exit', (code, signal) => resolve({ code, signal, out }));
      });
      assert.deepEqual([down.code, down.signal], [0, null], down.out);
      assert.match(down.out, new RegExp(`Ended demo ${demo.runId}\\.`));
      assert.equal(existsSync(record), false, 'the record is gone: a closing demo shell reports the demo ended');
      const listed = await new Promise<string>((resolve) => {
        const c = spawn('ip', ['netns', 'list'], { stdio: ['ignore', 'pipe', 'ignore'] });
        let out = '';
        c.stdout.on('data', (b: Buffer) => { out += b.toString(); });
        c.once('exit', () => resolve(out));
      });
      assert.deepEqual(names.filter((n) => listed.includes(n)), [], 'every namespace of the demo is gone');
      assert.equal(existsSync(d.dir), false, 'and its working directory');
    } finally {
      // Whatever the outcome, nothing of this demo may outlive the test.
      rmSync(record, { force: true });
      await killNamespaces(names);
    }
  });

  it('typed in the demo\'s shell: it ends the demo, and the closing shell says so (not "still running")', { skip: hasScript ? false : 'needs script(1) for a terminal' }, async () => {
    // The demo opens its shell only on a terminal: script(1) gives it one. The commands are typed
    // ahead; the terminal holds them until the shell reads them, one after the other. stdin stays
    // open meanwhile (an EOF would end the shell by itself).
    const c = spawn('script', ['-qec', `${process.execPath} ${CLI_JS} demo --shell`, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    c.stderr.on('data', (b: Buffer) => { out += b.toString(); });
    c.stdin.write('waymark demo down\nexit\n');
    const guard = setTimeout(() => c.kill('SIGKILL'), 300_000); // only against a hang
    const code = await new Promise<number | null>((resolve) => c.once('exit', (x) => resolve(x)));
    clearTimeout(guard);
    c.stdin.destroy();
    const runId = /ip netns exec wm-dev-(\d+-[0-9a-f]{4}) /.exec(out)?.[1];
    const names = runId === undefined ? [] : ROLES.map((r) => `wm-${r}-${runId}`);
    try {
      assert.ok(runId !== undefined, out);
      assert.equal(code, 0, out);
      assert.match(out, new RegExp(`Ended demo ${runId}\\.[^]*Shell closed; the demo has been ended\\.`));
      assert.doesNotMatch(out, /still running/);
      assert.deepEqual(names.filter((n) => existsSync(`/run/netns/${n}`)), [], 'every namespace of the demo is gone');
      assert.equal(existsSync(join(DETACHED_DIR, `${runId}.json`)), false);
    } finally {
      if (runId !== undefined) {
        rmSync(join(DETACHED_DIR, `${runId}.json`), { force: true });
        rmSync(`/tmp/waymark-lab-${runId}`, { recursive: true, force: true });
      }
      await killNamespaces(names);
    }
  });
});
