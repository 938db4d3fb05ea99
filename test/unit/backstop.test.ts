/**
 * The kernel backstop against the real kernel: session cgroups (src/backstop/cgroup.ts), the
 * socket-marking cgroup BPF program (src/native: cgroupAttachSockMark & co.) and the nftables
 * chain (src/backstop/nft.ts), with programs that never load libwaymark.so: python3 and a static
 * Go binary (test/fixtures/goclient).
 *
 * Needs root. Nothing of the root namespace's routing, rules or nftables is touched: everything
 * network happens in throwaway namespaces `wm-bs-<pid>-<rand>-{d,a,b}`:
 *
 *   d (the device) ── up1 10.1.0.2/24 ─── a: eth0 10.1.0.1, server 192.0.2.80 ("side-a")
 *                  ── up2 10.2.0.2/24 ─── b: eth0 10.2.0.1, server 192.0.2.80 ("side-b")
 *
 * d has no route to 192.0.2.80 in its main table; uplink N has table TABLE_BASE+N with a default
 * via its gateway, and the rules Waymark installs: `fwmark MARK(N)/MARK_MASK lookup T(N)` and
 * `oif upN lookup T(N)`. The session cgroups live in `<cgroup2>/waymark/t<pid>-<rand>/` (level 3:
 * apart from a daemon's own sessions) and are removed at the end. Programs enter a namespace with
 * `nsenter --net` (`ip netns exec` remounts /sys and loses the cgroup mounts) and are moved into
 * their cgroup by the test, as the daemon does with the CLI's pid, before they exec.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { MARK_MASK, PRIO_MARK, PRIO_OIF, markForSlot, tableForSlot } from '../../src/constants.js';
import {
  SessionCgroups,
  findCgroup2Mount,
  parseCgroup2Mount,
  parsePopulated,
  type SessionCgroup,
} from '../../src/backstop/cgroup.js';
import { backstopDnsRules, backstopRules, nftCgroupPath, SESSION_CHAINS, sessionRules, type BackstopSession } from '../../src/backstop/nft.js';
import { NftTable } from '../../src/nftables/table.js';
import * as native from '../../src/native/index.js';
import { buildGoClient } from '../support/goclient.js';

const isRoot = process.getuid?.() === 0;
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const has = (cmd: string, arg = '--version'): boolean => spawnSync(cmd, [arg]).status === 0;
const cgroup2 = parseCgroup2Mount(spawnSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).stdout ?? '');
const skip = !isRoot
  ? 'needs root (namespaces, cgroups, bpf)'
  : cgroup2 === null
    ? 'no cgroup v2 hierarchy mounted'
    : !has('ip', '-V') || !has('nsenter') || !has('nft', '-v') || !has('socat', '-V')
      ? 'needs iproute2, util-linux (nsenter), nftables and socat'
      : false;

const TAG = `${process.pid}-${randomBytes(2).toString('hex')}`;
const NS = { d: `wm-bs-${TAG}-d`, a: `wm-bs-${TAG}-a`, b: `wm-bs-${TAG}-b` } as const;
const NS_RE = /^wm-bs-(\d+)-[0-9a-f]+-[dab]$/;
const TEST_DIR_RE = /^t(\d+)-[0-9a-f]+$/;
const SERVER = '192.0.2.80';
const PORT = 7000;
const M1 = markForSlot(1);
const M2 = markForSlot(2);
const T1 = tableForSlot(1);
const T2 = tableForSlot(2);

// ---------------------------------------------------------------------------------------------
// Pure parts

const MOUNTINFO_HYBRID = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const MOUNTINFO_V2 = `25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
90 28 0:26 /system.slice /srv/bound\\040dir rw shared:9 - cgroup2 cgroup2 rw
`;

describe('backstop: pure parts', () => {
  it('finds the cgroup2 mount in mountinfo (hybrid, pure v2, escapes, none)', () => {
    assert.equal(parseCgroup2Mount(MOUNTINFO_HYBRID), '/sys/fs/cgroup/unified');
    assert.equal(parseCgroup2Mount(MOUNTINFO_V2), '/sys/fs/cgroup');
    assert.equal(parseCgroup2Mount('50 1 0:40 / /mnt/cg\\040two rw - cgroup2 none rw\n'), '/mnt/cg two');
    assert.equal(parseCgroup2Mount('31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n'), null);
  });

  it('reads populated from cgroup.events', () => {
    assert.equal(parsePopulated('populated 1\nfrozen 0\n'), true);
    assert.equal(parsePopulated('populated 0\nfrozen 0\n'), false);
    assert.throws(() => parsePopulated('frozen 0\n'), /populated/);
  });

  it('names session cgroups with their level and refuses odd names', () => {
    const cg = new SessionCgroups('/sys/fs/cgroup/unified');
    assert.deepEqual(cg.session('exec-42'), {
      name: 'exec-42', path: '/sys/fs/cgroup/unified/waymark/exec-42', relPath: 'waymark/exec-42', level: 2,
    });
    assert.equal(new SessionCgroups('/sys/fs/cgroup', 'waymark/t1').session('x').level, 3);
    for (const bad of ['', '..', '.hidden', 'a/b', 'a b', 'x'.repeat(65)]) assert.throws(() => cg.session(bad), /invalid/);
    assert.throws(() => new SessionCgroups('relative'), /absolute/);
  });

  it('gives nft the path from /sys/fs/cgroup, whatever the mount', () => {
    assert.equal(nftCgroupPath('waymark/exec-42'), 'waymark/exec-42');
    assert.equal(nftCgroupPath('waymark/exec-42', '/sys/fs/cgroup/unified'), 'unified/waymark/exec-42');
    assert.equal(nftCgroupPath('waymark/exec-42', '/run/cg2'), '../../../run/cg2/waymark/exec-42');
  });

  it('redirects a session\'s DNS to the servers of the uplink it leaves by, except to that uplink\'s own resolvers', () => {
    const uplinks = [
      { ifname: 'wwan0', dns: ['fd00:64::1', '10.64.0.1', '10.64.0.9'] },
      { ifname: 'wwan1', dns: ['10.64.0.1'], reaches: ['10.200.0.0/24', 'fd00:200::/64'] },
      { ifname: 'wlan0', dns: [] },
    ];
    const rules = backstopDnsRules(
      [
        { cgroup: 'waymark/exec-42', deniedIfnames: ['wwan1'] },
        { cgroup: 'waymark/exec-43', deniedIfnames: ['wwan0'] },
      ],
      uplinks,
      { cgroupMount: '/sys/fs/cgroup/unified' },
    );
    const m = (id: number): string => `socket cgroupv2 level 2 "unified/waymark/exec-${id}"`;
    const dns = 'meta l4proto { tcp, udp } th dport 53';
    const local = 'fib daddr type != local';
    assert.deepEqual(rules, [
      `${m(42)} oifname "wwan0" meta nfproto ipv4 ${dns} ip daddr != { 10.64.0.1, 10.64.0.9 } ${local} dnat ip to 10.64.0.1 comment "waymark waymark/exec-42 dns"`,
      `${m(42)} oifname "wwan0" meta nfproto ipv6 ${dns} ip6 daddr != { fd00:64::1 } ${local} dnat ip6 to fd00:64::1 comment "waymark waymark/exec-42 dns"`,
      `${m(43)} oifname "wwan1" meta nfproto ipv4 ${dns} ip daddr != { 10.64.0.1, 10.200.0.0/24 } ${local} dnat ip to 10.64.0.1 comment "waymark waymark/exec-43 dns"`,
    ]);
    assert.deepEqual(backstopDnsRules([{ cgroup: 'waymark/x', deniedIfnames: [] }], [{ ifname: 'wwan0', dns: ['not-an-address'] }]), []);
    assert.throws(() => backstopDnsRules([{ cgroup: 'waymark/../x', deniedIfnames: [] }], uplinks), /invalid cgroup/);
  });

  it('the table writes the session chains\' headers; the DNS chain only while it has rules (no conntrack otherwise)', () => {
    let sessions: BackstopSession[] = [{ cgroup: 'waymark/exec-42', deniedIfnames: ['wlan0'] }];
    let uplinks = [{ ifname: 'wwan0', dns: ['10.64.0.1'] }];
    const table = new NftTable(SESSION_CHAINS);
    table.contribute('sessions', () => sessionRules(sessions, uplinks, { present: () => true }));
    const m = 'socket cgroupv2 level 2 "waymark/exec-42"';
    assert.equal(table.render().body, [
      '  chain backstop {',
      '    type filter hook output priority 0; policy accept;',
      `    ${m} oifname { "wlan0" } meta l4proto tcp reject with tcp reset comment "waymark waymark/exec-42"`,
      `    ${m} oifname { "wlan0" } drop comment "waymark waymark/exec-42"`,
      '  }',
      '  chain backstop_dns {',
      '    type nat hook output priority -100; policy accept;',
      `    ${m} oifname "wwan0" meta nfproto ipv4 meta l4proto { tcp, udp } th dport 53 ip daddr != { 10.64.0.1 } fib daddr type != local dnat ip to 10.64.0.1 comment "waymark waymark/exec-42 dns"`,
      '  }',
      '',
    ].join('\n'));
    uplinks = [];
    assert.doesNotMatch(table.render().body, /backstop_dns/, 'no rule: no nat chain');
    sessions = [];
    assert.equal(table.render().body, '  chain backstop {\n    type filter hook output priority 0; policy accept;\n  }\n', 'the filter chain stays, empty');
  });

  it('names only session cgroups that exist in the table it renders', () => {
    const sessions = [{ cgroup: 'waymark/exec-1', deniedIfnames: ['wlan0'] }, { cgroup: 'waymark/exec-2', deniedIfnames: ['wlan0'] }];
    const text = JSON.stringify(sessionRules(sessions, [{ ifname: 'wwan0', dns: ['10.64.0.1'] }], { present: (c) => c === 'waymark/exec-2' }));
    assert.match(text, /exec-2/);
    assert.doesNotMatch(text, /exec-1/);
    assert.deepEqual(sessionRules(sessions, [], { cgroupMount: '/nonexistent' }), { rules: { backstop: [], backstop_dns: [] } }, 'by default: the directory must be there');
  });

  it('renders one reject and one drop rule per session, only for sessions that deny something', () => {
    const rules = backstopRules(
      [
        { cgroup: 'waymark/exec-42', deniedIfnames: ['wwan1', 'wlan0', 'wwan1'] },
        { cgroup: 'waymark/exec-43', deniedIfnames: [] },
      ],
      { cgroupMount: '/sys/fs/cgroup/unified' },
    );
    const m = 'socket cgroupv2 level 2 "unified/waymark/exec-42" oifname { "wlan0", "wwan1" }';
    assert.deepEqual(rules, [
      `${m} meta l4proto tcp reject with tcp reset comment "waymark waymark/exec-42"`,
      `${m} drop comment "waymark waymark/exec-42"`,
    ]);
    assert.deepEqual(backstopRules([]), []);
    assert.deepEqual(backstopRules([{ cgroup: 'waymark/x', deniedIfnames: [] }]), []);
    assert.throws(() => backstopRules([{ cgroup: '/abs/x', deniedIfnames: ['a'] }]), /invalid cgroup/);
    assert.throws(() => backstopRules([{ cgroup: 'waymark/../x', deniedIfnames: ['a'] }]), /invalid cgroup/);
    assert.throws(() => backstopRules([{ cgroup: 'waymark/x', deniedIfnames: ['wl"an0'] }]), /invalid interface/);
    assert.throws(() => backstopRules([{ cgroup: 'waymark/x', deniedIfnames: ['wwan*'] }]), /invalid interface/);
    assert.throws(() => backstopRules([{ cgroup: 'waymark/x', deniedIfnames: ['a'.repeat(16)] }]), /invalid interface/);
  });
});

// ---------------------------------------------------------------------------------------------
// Real kernel

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function sh(cmd: string, args: readonly string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'], timeout: 10_000 });
}

function nsBatch(ns: string, lines: readonly string[]): void {
  sh('ip', ['-n', ns, '-batch', '-'], lines.join('\n') + '\n');
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function deleteNs(ns: string): void {
  const pids = spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout ?? '';
  for (const p of pids.split('\n').filter(Boolean)) spawnSync('kill', ['-9', p]);
  spawnSync('ip', ['netns', 'del', ns]);
}

/** Kills what is left in a cgroup directory tree and removes it, deepest first (best effort). */
function removeCgroupTree(dir: string): void {
  if (!existsSync(dir)) return;
  try {
    writeFileSync(join(dir, 'cgroup.kill'), '1');
  } catch {
    /* gone, or a kernel before 5.14 */
  }
  for (const ent of readdirSync(dir, { withFileTypes: true })) {
    if (ent.isDirectory()) removeCgroupTree(join(dir, ent.name));
  }
  for (let i = 0; i < 50; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') return;
      spawnSync('sleep', ['0.02']);
    }
  }
}

/** Namespaces and test cgroups left behind by test processes that died. */
function sweepStale(mount: string): void {
  for (const dir of ['/run/netns', '/var/run/netns']) {
    if (!existsSync(dir)) continue;
    for (const name of readdirSync(dir)) {
      const m = NS_RE.exec(name);
      if (m && !pidAlive(Number(m[1]))) deleteNs(name);
    }
  }
  const base = join(mount, 'waymark');
  if (!existsSync(base)) return;
  for (const name of readdirSync(base)) {
    const m = TEST_DIR_RE.exec(name);
    if (m && !pidAlive(Number(m[1]))) removeCgroupTree(join(base, name));
  }
  removeIfEmpty(base);
}

/** rmdir of a cgroup that holds no child cgroup (SessionCgroups.create re-creates it on demand). */
function removeIfEmpty(dir: string): void {
  try {
    rmdirSync(dir);
  } catch {
    /* gone, or a session lives in it */
  }
}

describe('backstop: kernel', { skip }, () => {
  const mount = cgroup2 ?? '/nonexistent';
  const testDir = `t${TAG}`;
  const cgroups = new SessionCgroups(mount, `waymark/${testDir}`);
  const children = new Set<ChildProcess>();
  let goclient = '';
  let setupNote = '';
  let cleaned = false;

  function cleanup(): void {
    if (cleaned) return;
    cleaned = true;
    for (const c of children) c.kill('SIGKILL');
    for (const ns of Object.values(NS)) deleteNs(ns);
    removeCgroupTree(cgroups.base);
    removeIfEmpty(join(mount, 'waymark'));
  }

  /** Runs argv in namespace `ns`, moved into `session` (when given) before it execs. */
  async function run(ns: string, session: SessionCgroup | null, argv: readonly string[], timeoutMs = 8000): Promise<Run> {
    const t0 = performance.now();
    const child = spawn('nsenter', [`--net=/run/netns/${ns}`, '--', 'sh', '-c', 'read _ && exec "$@"', 'sh', ...argv], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const exited = new Promise<number | null>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code) => resolve(code));
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        child.on('spawn', resolve);
        child.on('error', reject);
      });
      // As the daemon does with the CLI's pid: into the cgroup first, then exec.
      if (session !== null) await cgroups.movePid(session.name, child.pid ?? -1);
      child.stdin.end('go\n');
      const code = await exited;
      return { code, stdout, stderr, ms: performance.now() - t0 };
    } catch (e) {
      child.kill('SIGKILL');
      throw e;
    } finally {
      clearTimeout(timer);
      children.delete(child);
    }
  }

  const MARKS_PY = String.raw`
import socket
kinds = ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM))
print(' '.join('%#x' % (socket.socket(f, t).getsockopt(socket.SOL_SOCKET, socket.SO_MARK) & 0xffffffff) for f, t in kinds))
`;
  /** Marks of a new TCP/IPv4, TCP/IPv6 and UDP/IPv4 socket, as seen inside `session`. */
  async function marks(session: SessionCgroup | null): Promise<string> {
    const r = await run(NS.d, session, [PYTHON, '-c', MARKS_PY]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  }
  const hex = (m: number): string => `0x${m.toString(16)}`;
  const all3 = (m: number): string => (m === 0 ? '0x0 0x0 0x0' : `${hex(m)} ${hex(m)} ${hex(m)}`);

  const UDP_PY = String.raw`
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[1]:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
try:
    s.sendto(b'x', (sys.argv[2], 7001))
    print('sent')
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
`;

  async function goclientRun(session: SessionCgroup | null, extra: readonly string[] = []): Promise<Run> {
    return run(NS.d, session, [goclient, '-v', '-timeout', '2s', ...extra, `tcp://${SERVER}:${PORT}`]);
  }

  function loadNft(body: string): void {
    sh('nsenter', [`--net=/run/netns/${NS.d}`, '--', 'nft', '-f', '-'],
      `table inet waymark\ndelete table inet waymark\ntable inet waymark {\n${body}}\n`);
  }

  before(async () => {
    assert.equal(await findCgroup2Mount(), mount);
    process.once('exit', cleanup);
    sweepStale(mount);
    const t0 = performance.now();
    goclient = await buildGoClient();
    const buildMs = performance.now() - t0;

    for (const ns of Object.values(NS)) sh('ip', ['netns', 'add', ns]);
    nsBatch(NS.d, [
      `link add up1 type veth peer name eth0 netns ${NS.a}`,
      `link add up2 type veth peer name eth0 netns ${NS.b}`,
      'link set lo up',
      'address add 10.1.0.2/24 dev up1',
      'address add 10.2.0.2/24 dev up2',
      'link set up1 up',
      'link set up2 up',
      `route add default via 10.1.0.1 dev up1 table ${T1}`,
      `route add default via 10.2.0.1 dev up2 table ${T2}`,
      `rule add pref ${PRIO_MARK} fwmark ${hex(M1)}/${hex(MARK_MASK)} lookup ${T1}`,
      `rule add pref ${PRIO_MARK} fwmark ${hex(M2)}/${hex(MARK_MASK)} lookup ${T2}`,
      `rule add pref ${PRIO_OIF} oif up1 lookup ${T1}`,
      `rule add pref ${PRIO_OIF} oif up2 lookup ${T2}`,
    ]);
    for (const [ns, gw] of [[NS.a, '10.1.0.1/24'], [NS.b, '10.2.0.1/24']] as const) {
      nsBatch(ns, ['link set lo up', `address add ${SERVER}/32 dev lo`, `address add ${gw} dev eth0`, 'link set eth0 up']);
    }
    for (const [ns, side] of [[NS.a, 'side-a'], [NS.b, 'side-b']] as const) {
      const server = spawn('ip', ['netns', 'exec', ns, 'socat', '-T2',
        `TCP-LISTEN:${PORT},bind=${SERVER},fork,reuseaddr`, `SYSTEM:echo ${side} $SOCAT_PEERADDR`], { stdio: 'ignore' });
      children.add(server);
    }
    // Listening?
    for (const ns of [NS.a, NS.b]) {
      for (let i = 0; ; i++) {
        if (sh('ss', ['-N', ns, '-Hltn', `sport = :${PORT}`]).trim() !== '') break;
        if (i > 200) throw new Error(`socat in ${ns} is not listening`);
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    setupNote = `goclient ready in ${buildMs.toFixed(0)} ms; topology up in ${(performance.now() - t0 - buildMs).toFixed(0)} ms`;
  }, { timeout: 300_000 });

  after(() => cleanup());

  it('session cgroups: create, move a pid in, populated, list, watch until empty, remove', async (t) => {
    t.diagnostic(setupNote);
    const s = await cgroups.create('life');
    assert.equal(s.level, 3);
    assert.deepEqual(await cgroups.create('life'), s, 'creating again adopts it');
    assert.equal(await cgroups.populated('life'), false);

    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.add(sleeper);
    await new Promise((r) => sleeper.once('spawn', r));
    await cgroups.movePid('life', sleeper.pid ?? -1);
    assert.deepEqual(await cgroups.pids('life'), [sleeper.pid]);
    assert.equal(await cgroups.populated('life'), true);
    assert.deepEqual((await cgroups.list()).map((x) => [x.name, x.populated]), [['life', true]]);
    assert.equal(await cgroups.removeIfEmpty('life'), false, 'a populated cgroup stays');
    assert.deepEqual(await cgroups.removeEmpty(), []);

    const t0 = performance.now();
    const emptied = new Promise<void>((resolve) => cgroups.watchEmpty('life', resolve));
    await cgroups.kill('life');
    await emptied;
    const emptyMs = performance.now() - t0;
    children.delete(sleeper);
    assert.equal(await cgroups.populated('life'), false);
    assert.deepEqual(await cgroups.removeEmpty(), ['life']);
    assert.deepEqual(await cgroups.list(), []);
    assert.equal(await cgroups.removeIfEmpty('life'), true, 'already gone');
    await assert.rejects(cgroups.movePid('life', process.pid), { code: 'ENOENT' });
    t.diagnostic(`cgroup.kill to populated=0 noticed in ${emptyMs.toFixed(1)} ms`);
  });

  it('every new socket in the cgroup carries the mark; re-attaching replaces; detach removes', async (t) => {
    const s = await cgroups.create('mark');
    assert.deepEqual(native.cgroupQuerySockPrograms(s.path), { ids: [], flags: 0 });

    let t0 = performance.now();
    native.cgroupAttachSockMark(s.path, M1);
    const attachMs = performance.now() - t0;
    const first = native.cgroupQuerySockPrograms(s.path);
    assert.equal(first.ids.length, 1);
    assert.equal(first.flags, 0);
    assert.equal(await marks(s), all3(M1));
    assert.equal(await marks(null), all3(0), 'outside the cgroup: no mark');

    t0 = performance.now();
    native.cgroupAttachSockMark(s.path, M2);
    const reattachMs = performance.now() - t0;
    const second = native.cgroupQuerySockPrograms(s.path);
    assert.equal(second.ids.length, 1, 'replaced, not stacked');
    assert.notEqual(second.ids[0], first.ids[0]);
    assert.equal(await marks(s), all3(M2));

    // The full 32 bits, even where a signed immediate would be negative.
    native.cgroupAttachSockMark(s.path, 0xff00ff01);
    assert.equal(await marks(s), all3(0xff00ff01));
    assert.equal(native.cgroupQuerySockPrograms(s.path).ids.length, 1);

    assert.equal(native.cgroupDetachSockPrograms(s.path), 1);
    assert.deepEqual(native.cgroupQuerySockPrograms(s.path), { ids: [], flags: 0 });
    assert.equal(native.cgroupDetachSockPrograms(s.path), 0);
    assert.equal(await marks(s), all3(0));
    assert.equal(await cgroups.removeIfEmpty('mark'), true);
    t.diagnostic(`attach ${attachMs.toFixed(2)} ms, re-attach ${reattachMs.toFixed(2)} ms`);
  });

  it('reports errors with errno codes and the path', () => {
    const missing = join(cgroups.base, 'missing');
    assert.throws(() => native.cgroupAttachSockMark(missing, M1), (e: unknown) => {
      assert.ok(native.isNativeError(e, 'ENOENT'));
      assert.equal(e.path, missing);
      assert.match(e.message, /^open ENOENT: .*\/missing\)/);
      return true;
    });
    const notCgroup = mkdtempSync('/tmp/wm-bs-');
    try {
      assert.throws(() => native.cgroupAttachSockMark(notCgroup, M1), (e: unknown) =>
        native.isNativeError(e, 'ENOTDIR') && /not a cgroup v2 directory/.test(e.message));
      assert.throws(() => native.cgroupDetachSockPrograms(notCgroup), { code: 'ENOTDIR' });
    } finally {
      rmSync(notCgroup, { recursive: true });
    }
    assert.throws(() => native.cgroupAttachSockMark(cgroups.base, 2 ** 32), RangeError);
    assert.throws(() => native.cgroupAttachSockMark(cgroups.base, -1), RangeError);
    assert.throws(() => native.cgroupAttachSockMark('', 1), TypeError);
  });

  it('a static Go binary goes by the uplink its cgroup mark names', async (t) => {
    const s = await cgroups.create('go');
    const plain = await goclientRun(null);
    assert.notEqual(plain.code, 0, 'no mark: no route to the server in the main table');
    assert.match(plain.stderr, /network is unreachable/);

    native.cgroupAttachSockMark(s.path, M1);
    let r = await goclientRun(s);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^side-a 10\.1\.0\.2$/m);
    assert.match(r.stderr, new RegExp(`^mark=${hex(M1)}$`, 'm'));
    assert.match(r.stderr, /^local=10\.1\.0\.2:\d+$/m);

    native.cgroupAttachSockMark(s.path, M2);
    r = await goclientRun(s);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^side-b 10\.2\.0\.2$/m);
    assert.match(r.stderr, new RegExp(`^mark=${hex(M2)}$`, 'm'));
    t.diagnostic(`goclient in its cgroup: ${r.ms.toFixed(0)} ms per run (nsenter + sh + go)`);
  });

  it('the nft backstop stops a program of the cgroup that binds itself to a denied device', async () => {
    const s = await cgroups.create('deny');
    native.cgroupAttachSockMark(s.path, M1); // its uplink: up1; up2 is denied

    // Without the backstop, binding to up2 escapes the mark: the `oif up2` rule wins.
    loadNft('');
    let r = await goclientRun(s, ['-bind', 'up2']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^side-b /m, 'the leak the backstop must close');

    const table = new NftTable(SESSION_CHAINS);
    table.contribute('sessions', () => sessionRules([{ cgroup: s.relPath, deniedIfnames: ['up2'] }], [], { cgroupMount: mount }));
    const body = table.render().body;
    loadNft(body);
    const listed = sh('nsenter', [`--net=/run/netns/${NS.d}`, '--', 'nft', 'list', 'chain', 'inet', 'waymark', 'backstop']);
    assert.match(listed, new RegExp(`socket cgroupv2 level 3 "${nftCgroupPath(s.relPath, mount)}" oifname "up2"`));

    // TCP: refused at once: a reset ("connection refused"), not a timeout (which says so).
    r = await goclientRun(s, ['-bind', 'up2']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /connection refused/);
    assert.doesNotMatch(r.stderr, /timeout/);
    // The allowed uplink still works, bound or not.
    r = await goclientRun(s);
    assert.match(r.stdout, /^side-a 10\.1\.0\.2$/m, r.stderr);
    r = await goclientRun(s, ['-bind', 'up1']);
    assert.match(r.stdout, /^side-a /m, r.stderr);
    // UDP: the drop is EPERM to sendto().
    r = await run(NS.d, s, [PYTHON, '-c', UDP_PY, 'up2', SERVER]);
    assert.equal(r.stdout.trim(), 'EPERM', r.stderr);
    r = await run(NS.d, s, [PYTHON, '-c', UDP_PY, '', SERVER]);
    assert.equal(r.stdout.trim(), 'sent', r.stderr);
    // Only this cgroup is concerned: the same program outside it still gets through up2.
    r = await goclientRun(null, ['-bind', 'up2']);
    assert.match(r.stdout, /^side-b /m, r.stderr);
    r = await run(NS.d, null, [PYTHON, '-c', UDP_PY, 'up2', SERVER]);
    assert.equal(r.stdout.trim(), 'sent', r.stderr);

    // The path is resolved at load time: once the cgroup is gone, the same text no longer loads.
    assert.equal(await cgroups.removeIfEmpty('deny'), true);
    assert.throws(() => loadNft(body), /cgroupv2 path fails: No such file or directory/);
    loadNft('');
  });
});
