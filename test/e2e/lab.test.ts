/**
 * Tests of the namespace lab itself: topology, servers, DNS, anti-spoofing, link control,
 * teardown (including on signals and uncaught exceptions) and sweepStale().
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { LAB, Lab, ROLES, sweepStale, type Role } from '../../src/lab/lab.js';

function netnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

/** Deletes a namespace this file made, if still there (a parallel run's sweep may have won). */
function delQuietly(name: string): void {
  try {
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
  } catch {
    // already gone
  }
}

/** Pids inside a namespace; none if it is gone. */
function pidsOf(name: string): string[] {
  try {
    return execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split(/\s+/)
      .filter(Boolean);
  } catch {
    return [];
  }
}

let lab: Lab;
let createMs = 0;

before(async () => {
  const t0 = performance.now();
  lab = await Lab.create();
  createMs = performance.now() - t0;
});

after(async () => {
  if (lab === undefined) return;
  const names = ROLES.map((r) => lab.ns(r));
  const t0 = performance.now();
  await lab.destroy();
  const destroyMs = performance.now() - t0;
  await lab.destroy(); // idempotent
  const left = netnsList().filter((n) => names.includes(n));
  assert.deepEqual(left, [], 'every lab namespace is gone after destroy()');
  console.log(`# lab create ${Math.round(createMs)} ms, destroy ${Math.round(destroyMs)} ms`);
});

async function sh(role: Role, script: string, opts: { uid?: number; timeoutMs?: number } = {}): Promise<string> {
  const r = await lab.run(role, ['sh', '-c', script], opts);
  assert.equal(r.code, 0, `${role}: ${script}: exit ${String(r.code)} ${r.stderr}`);
  return r.stdout;
}

async function dig(role: Role, server: string, name: string, type = 'A', uid?: number): Promise<{ status: string; answers: string[] }> {
  const r = await lab.run(role, ['dig', '+time=1', '+tries=1', '+nocookie', `@${server}`, name, type], { uid });
  assert.equal(r.code, 0, `dig @${server} ${name} ${type}: ${r.stdout}${r.stderr}`);
  const status = /status: ([A-Z]+)/.exec(r.stdout)?.[1] ?? 'none';
  const answers: string[] = [];
  let inAnswer = false;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith(';; ANSWER SECTION')) inAnswer = true;
    else if (line.trim() === '') inAnswer = false;
    else if (inAnswer) answers.push(line.trim().split(/\s+/).pop() ?? '');
  }
  return { status, answers };
}

async function nftDrops(role: Role): Promise<number> {
  const out = await sh(role, 'nft list table inet waymark_lab');
  return [...out.matchAll(/counter packets (\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0);
}

describe('topology', () => {
  test('namespaces are named wm-<role>-<pid>-<rand4> and exist', () => {
    const list = netnsList();
    assert.match(lab.runId, new RegExp(`^${process.pid}-[0-9a-f]{4}$`));
    for (const role of ROLES) {
      assert.equal(lab.ns(role), `wm-${role}-${lab.runId}`);
      assert.ok(list.includes(lab.ns(role)), `${lab.ns(role)} exists`);
    }
  });

  test('device main table is what NetworkManager and the VPN client would leave', async () => {
    const v4 = await sh('dev', 'ip route show default');
    assert.match(v4, /default via 192\.168\.50\.1 dev wlan0 metric 100/);
    assert.match(v4, /default via 10\.64\.0\.1 dev wwan0 metric 700/);
    const v6 = await sh('dev', 'ip -6 route show default');
    assert.match(v6, /default via fd00:50::1 dev wlan0 metric 100/);
    assert.match(v6, /default via fd00:64::1 dev wwan0 metric 700/);
    assert.match(await sh('dev', 'ip route get 172.16.5.10'), /via 10\.8\.0\.1 dev tun0/);
    assert.match(await sh('dev', 'ip -6 route get fd00:16:5::10'), /via fd00:8::1 dev tun0/);
    assert.doesNotMatch(await sh('dev', 'ip route; ip -6 route'), /via .* dev wwan1/);
    // wwan0 and wwan1: two APNs of one modem, the same addresses on both.
    for (const ifname of ['wwan0', 'wwan1']) {
      const addrs = await sh('dev', `ip -br addr show dev ${ifname}`);
      assert.match(addrs, /10\.64\.0\.2\/24/);
      assert.match(addrs, /fd00:64::2\/64/);
    }
    assert.equal((await sh('dev', 'sysctl -n net.ipv6.conf.wlan0.accept_ra')).trim(), '0');
    assert.equal((await sh('cell', 'sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding')).trim(), '1\n1');
  });
});

describe('path servers', () => {
  test('the Internet server names the uplink a TCP request came by (v4 and v6)', async () => {
    for (const ifname of ['wlan0', 'wwan0'] as const) {
      const u = LAB.uplinks[ifname];
      for (const [host, remote] of [[LAB.internet.v4, u.v4], [LAB.internet.v6, u.v6]] as const) {
        const reply = await lab.httpPath('dev', host, { iface: ifname });
        assert.deepEqual(reply, { server: 'internet', path: ifname, remote, proto: 'tcp' }, `${ifname} → ${host}`);
      }
    }
  });

  test('raw curl output is one JSON line; the default route goes by wlan0', async () => {
    const out = await sh('dev', 'curl -sS -g --max-time 2 http://198.51.100.10/any/path');
    assert.equal(out, '{"server":"internet","path":"wlan0","remote":"192.168.50.2","proto":"tcp"}\n');
    assert.equal((await lab.httpPath('dev', LAB.internet.v6))?.path, 'wlan0');
  });

  test('UDP datagrams get one reply naming the uplink', async () => {
    assert.deepEqual(await lab.udpPath('dev', LAB.internet.v4, { iface: 'wlan0' }), {
      server: 'internet', path: 'wlan0', remote: '192.168.50.2', proto: 'udp',
    });
    assert.deepEqual(await lab.udpPath('dev', LAB.internet.v6, { iface: 'wwan0' }), {
      server: 'internet', path: 'wwan0', remote: 'fd00:64::2', proto: 'udp',
    });
    const socat = await sh('dev', `echo hi | socat -t 0.3 - UDP4:${LAB.office.v4}:80`);
    assert.equal((JSON.parse(socat) as { path?: unknown }).path, 'tun0');
  });

  test('the office server answers through tun0 by the main table (v4 and v6)', async () => {
    assert.deepEqual(await lab.httpPath('dev', LAB.office.v4), { server: 'office', path: 'tun0', remote: '10.8.0.2', proto: 'tcp' });
    assert.deepEqual(await lab.httpPath('dev', LAB.office.v6), { server: 'office', path: 'tun0', remote: 'fd00:8::2', proto: 'tcp' });
  });

  test('the MMSC answers through wwan1 only (test-local routes), not through wwan0', async () => {
    // Nothing in the main table reaches the MMSC over v6; the Internet operator has no route to it.
    assert.equal(await lab.httpPath('dev', LAB.mmsc.v6, { iface: 'wwan1', timeoutMs: 1000 }), null);
    assert.equal(await lab.httpPath('dev', LAB.mmsc.v4, { iface: 'wwan0', timeoutMs: 1000 }), null);
    await sh('dev', 'ip route add 10.200.0.0/24 via 10.64.0.1 dev wwan1 && ip -6 route add fd00:200::/64 via fd00:64::1 dev wwan1');
    try {
      for (const [host, remote] of [[LAB.mmsc.v4, '10.64.0.2'], [LAB.mmsc.v6, 'fd00:64::2']] as const) {
        assert.deepEqual(await lab.httpPath('dev', host), { server: 'mmsc', path: 'wwan1', remote, proto: 'tcp' });
        assert.deepEqual(await lab.httpPath('dev', host, { iface: 'wwan1' }), { server: 'mmsc', path: 'wwan1', remote, proto: 'tcp' });
        assert.equal((await lab.udpPath('dev', host, { iface: 'wwan1' }))?.server, 'mmsc');
      }
    } finally {
      await sh('dev', 'ip route del 10.200.0.0/24 dev wwan1; ip -6 route del fd00:200::/64 dev wwan1');
    }
  });
});

describe('DNS servers', () => {
  test('each operator answers for its own zone, NXDOMAIN otherwise', async () => {
    assert.deepEqual(await dig('dev', LAB.dns.wifi.v4, 'www.example.net'), { status: 'NOERROR', answers: [LAB.internet.v4] });
    assert.deepEqual(await dig('dev', LAB.dns.wifi.v6, 'WWW.Example.Net.', 'AAAA'), { status: 'NOERROR', answers: [LAB.internet.v6] });
    assert.deepEqual(await dig('dev', LAB.dns.wifi.v4, 'www.example.net', 'MX'), { status: 'NOERROR', answers: [] });
    assert.equal((await dig('dev', LAB.dns.wifi.v4, 'mmsc.operator.example')).status, 'NXDOMAIN');
    assert.equal((await dig('dev', LAB.dns.wifi.v4, 'example.net')).status, 'NXDOMAIN');
    // 10.64.0.1 by the main table: the first 10.64.0.0/24 route, wwan0, the cellular Internet APN.
    assert.deepEqual(await dig('dev', LAB.dns.cell.v4, 'www.example.net'), { status: 'NOERROR', answers: [LAB.internet.v4] });
    assert.equal((await dig('dev', LAB.dns.cell.v6, 'mmsc.operator.example', 'AAAA')).status, 'NXDOMAIN');
    assert.deepEqual(await dig('dev', LAB.dns.office.v4, 'intranet.corp.example'), { status: 'NOERROR', answers: [LAB.office.v4] });
    assert.deepEqual(await dig('dev', LAB.dns.office.v6, 'intranet.corp.example', 'AAAA'), { status: 'NOERROR', answers: [LAB.office.v6] });
    assert.equal((await dig('dev', LAB.dns.office.v4, 'www.example.net')).status, 'NXDOMAIN');
  });

  test('the MMS APN resolver, reached through wwan1 by a uid rule (run() as another uid)', async () => {
    const uid = 65534;
    const id = await lab.run('dev', ['id', '-u'], { uid });
    assert.equal(id.stdout.trim(), String(uid));
    await sh('dev', [
      'ip route add 10.64.0.0/24 dev wwan1 table 1234',
      'ip -6 route add fd00:64::/64 dev wwan1 table 1234',
      `ip rule add uidrange ${uid}-${uid} lookup 1234 pref 1000`,
      `ip -6 rule add uidrange ${uid}-${uid} lookup 1234 pref 1000`,
    ].join(' && '));
    try {
      assert.deepEqual(await dig('dev', LAB.dns.mms.v4, 'mmsc.operator.example', 'A', uid), { status: 'NOERROR', answers: [LAB.mmsc.v4] });
      assert.deepEqual(await dig('dev', LAB.dns.mms.v6, 'mmsc.operator.example', 'AAAA', uid), { status: 'NOERROR', answers: [LAB.mmsc.v6] });
      assert.equal((await dig('dev', LAB.dns.mms.v4, 'www.example.net', 'A', uid)).status, 'NXDOMAIN');
    } finally {
      await sh('dev', `ip rule del pref 1000; ip -6 rule del pref 1000; ip route flush table 1234; ip -6 route flush table 1234`);
    }
  });
});

describe('anti-spoofing', () => {
  test("the cellular operator drops packets with Wi-Fi's source address (v4 and v6)", async () => {
    const before = await nftDrops('cell');
    await sh('dev', [
      'ip route add 198.51.100.10/32 via 10.64.0.1 dev wwan0 src 192.168.50.2',
      'ip -6 route add 2001:db8:100::10/128 via fd00:64::1 dev wwan0 src fd00:50::2',
    ].join(' && '));
    try {
      assert.match(await sh('dev', 'ip route get 198.51.100.10'), /dev wwan0 src 192\.168\.50\.2/);
      const [v4, v6] = await Promise.all([
        lab.httpPath('dev', LAB.internet.v4, { timeoutMs: 700 }),
        lab.httpPath('dev', LAB.internet.v6, { timeoutMs: 700 }),
      ]);
      assert.equal(v4, null);
      assert.equal(v6, null);
    } finally {
      await sh('dev', 'ip route del 198.51.100.10/32; ip -6 route del 2001:db8:100::10/128');
    }
    assert.ok((await nftDrops('cell')) > before, 'the cell namespace counted the drops');
    assert.equal((await lab.httpPath('dev', LAB.internet.v4))?.path, 'wlan0', 'normal traffic flows again');
  });

  test('the MMS network drops input from outside the APN prefix', async () => {
    const before = await nftDrops('mms');
    await sh('dev', 'ip route add 10.200.0.10/32 via 10.64.0.1 dev wwan1 src 192.168.50.2');
    try {
      assert.equal(await lab.httpPath('dev', LAB.mmsc.v4, { timeoutMs: 700 }), null);
    } finally {
      await sh('dev', 'ip route del 10.200.0.10/32');
    }
    assert.ok((await nftDrops('mms')) > before);
  });
});

describe('link control and processes', () => {
  test('setLink down moves traffic to wwan0; up restores addresses and routes', async () => {
    await lab.setLink('dev', 'wlan0', false);
    try {
      assert.doesNotMatch(await sh('dev', 'ip route show default; ip -6 route show default'), /wlan0/);
      assert.equal((await lab.httpPath('dev', LAB.internet.v4))?.path, 'wwan0');
      assert.equal((await lab.httpPath('dev', LAB.internet.v6))?.path, 'wwan0');
    } finally {
      await lab.setLink('dev', 'wlan0', true);
    }
    assert.match(await sh('dev', 'ip -6 addr show dev wlan0'), /fd00:50::2\/64/);
    assert.equal((await lab.httpPath('dev', LAB.internet.v4))?.path, 'wlan0');
    assert.equal((await lab.httpPath('dev', LAB.internet.v6))?.path, 'wlan0');
  });

  test("setLink on the operator's end simulates carrier loss", async () => {
    await lab.setLink('wifi', 'dev', false);
    try {
      assert.match(await sh('dev', 'ip link show dev wlan0'), /NO-CARRIER/);
      assert.equal(await lab.httpPath('dev', LAB.internet.v4, { iface: 'wlan0', timeoutMs: 500 }), null);
    } finally {
      await lab.setLink('wifi', 'dev', true);
    }
    assert.equal((await lab.httpPath('dev', LAB.internet.v4, { iface: 'wlan0' }))?.path, 'wlan0');
  });

  test('run() kills the whole process group at its timeout', async () => {
    const t0 = performance.now();
    const r = await lab.run('dev', ['sh', '-c', 'sleep 30 & sleep 31; echo never'], { timeoutMs: 300 });
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(performance.now() - t0 < 15_000, 'killed at its timeout, long before the 30 s sleep ends');
    for (const pid of pidsOf(lab.ns('dev'))) {
      let cmd: string;
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      } catch {
        continue; // exited meanwhile
      }
      assert.doesNotMatch(cmd, /sleep 3[01]/);
    }
    const input = await lab.run('dev', ['cat'], { input: 'hello' });
    assert.equal(input.stdout, 'hello');
  });
});

describe('cleanup', () => {
  test('sweepStale removes namespaces of dead runs (and what runs in them), keeps the others', async () => {
    const deadPid = 4194305; // above PID_MAX_LIMIT: never a live process
    // Random suffixes: runs of this file in parallel must not collide (nor sweep each other's
    // live fakes; they may sweep each other's dead ones, which is what sweepStale is for).
    const rand = (): string => randomBytes(2).toString('hex');
    const dead = `wm-dev-${deadPid}-${rand()}`;
    let live = `wm-dev-${process.pid}-${rand()}`;
    while (live.endsWith(lab.runId)) live = `wm-dev-${process.pid}-${rand()}`;
    execFileSync('ip', ['netns', 'add', dead]);
    execFileSync('ip', ['netns', 'add', live]);
    const sleeper = spawn('ip', ['netns', 'exec', dead, 'sleep', '60'], { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => sleeper.once('exit', (_c, s) => resolve(s)));
    try {
      // The sleeper is in the dead namespace (what sweepStale must kill) once it shows up there.
      for (let i = 0; pidsOf(dead).length === 0; i++) {
        if (i > 400) assert.fail('the sleeper never appeared in the dead namespace');
        await new Promise((r) => setTimeout(r, 25));
      }
      const removed = await sweepStale();
      assert.ok(!removed.includes(live));
      const list = netnsList();
      assert.ok(!list.includes(dead));
      assert.ok(list.includes(live));
      for (const role of ROLES) assert.ok(list.includes(lab.ns(role)), 'our own lab is untouched');
      assert.equal(await exited, 'SIGKILL', 'the process inside the dead namespace was killed');
    } finally {
      if (sleeper.pid !== undefined && sleeper.exitCode === null && sleeper.signalCode === null) sleeper.kill('SIGKILL');
      delQuietly(live);
      delQuietly(dead);
    }
  });

  test('after a SIGKILL the servers exit by themselves and sweepStale removes the namespaces', async () => {
    const labUrl = new URL('../../src/lab/lab.js', import.meta.url).href;
    const script = `const { Lab } = await import(${JSON.stringify(labUrl)});
      const lab = await Lab.create();
      console.log(lab.runId);
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const runId = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('\n')) resolve(out.trim());
      });
      child.once('exit', () => reject(new Error('child exited early')));
    });
    const names = ROLES.map((r) => `wm-${r}-${runId}`);
    try {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      // No hook runs on SIGKILL: the namespaces stay (unless a parallel run swept them already).
      let pids: string[] = [];
      for (let i = 0; i < 200; i++) { // up to 10 s: a guard, not a window
        pids = names.flatMap(pidsOf);
        if (pids.length === 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.deepEqual(pids, [], 'servers exit on stdin EOF when their parent dies');
      await sweepStale();
      assert.deepEqual(netnsList().filter((n) => names.includes(n)), [], 'sweepStale removed them');
    } finally {
      for (const n of names) delQuietly(n);
    }
  });

  test('a process that dies by SIGTERM, SIGINT or an uncaught exception leaves nothing behind', async () => {
    const labUrl = new URL('../../src/lab/lab.js', import.meta.url).href;
    const cases = [
      { how: 'SIGTERM', code: 143 },
      { how: 'SIGINT', code: 130 },
      { how: 'throw', code: 1 },
    ] as const;
    await Promise.all(
      cases.map(async ({ how, code }) => {
        const script = `const { Lab } = await import(${JSON.stringify(labUrl)});
          const lab = await Lab.create();
          console.log(lab.runId);
          ${how === 'throw' ? "setTimeout(() => { throw new Error('boom'); }, 20);" : 'setInterval(() => {}, 1000);'}`;
        const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stderr = '';
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        const runId = await new Promise<string>((resolve, reject) => {
          let out = '';
          child.stdout.setEncoding('utf8').on('data', (d: string) => {
            out += d;
            if (out.includes('\n')) resolve(out.trim());
          });
          child.once('exit', () => reject(new Error(`child exited early: ${stderr}`)));
        });
        const exit = new Promise<number | null>((resolve) => {
          if (child.exitCode !== null) resolve(child.exitCode);
          else child.once('exit', (c) => resolve(c));
        });
        assert.ok(netnsList().some((n) => n.endsWith(runId)), `${how}: lab exists`);
        if (how !== 'throw') child.kill(how);
        assert.equal(await exit, code, `${how}: exit code (${stderr})`);
        assert.deepEqual(netnsList().filter((n) => n.endsWith(runId)), [], `${how}: namespaces removed`);
      }),
    );
  });
});
