/**
 * The namespace lab: a simulated multi-uplink device built from network namespaces, used by the
 * demo and by every end-to-end test.
 *
 *   dev ── wlan0 ─── wifi ── inet ─┐
 *       ── wwan0 ─── cell ── inet ─┴─ inet (srv: 198.51.100.10 / 2001:db8:100::10, "internet")
 *       ── wwan1 ─── mms  (mmsc: 10.200.0.10 / fd00:200::10)
 *       ── tun0  ─── office (lan: 172.16.5.10 / fd00:16:5::10)
 *
 * wwan0 and wwan1 carry the SAME addresses (10.64.0.2/24, fd00:64::2/64): two APNs of one modem.
 * Nothing is ever configured in the root namespace: every link is created directly inside a lab
 * namespace (`ip -n A link add X type veth peer name Y netns B`). Everything is torn down by
 * destroy(), and as a last resort on process exit and on SIGINT/SIGTERM.
 */
import { execFileSync, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { errorMessage } from '../errors.js';
import { cgroup2Mount, LabCgroups, sweepStaleCgroups } from './cgroups.js';

export type Role = 'dev' | 'wifi' | 'cell' | 'mms' | 'office' | 'inet';
export const ROLES = ['dev', 'wifi', 'cell', 'mms', 'office', 'inet'] as const satisfies readonly Role[];

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when the command was killed because it ran past timeoutMs. */
  timedOut: boolean;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  /** Run as this uid (and gid, default: same as uid) inside the namespace, via setpriv. */
  uid?: number;
  gid?: number;
  /** run(): kill the command (its whole process group) after this long. Default 10 s. */
  timeoutMs?: number;
  input?: string;
  cwd?: string;
  /**
   * Start it in this cgroup of the lab's own subtree (relative to it, e.g. "user.slice/…/app-x-1.scope",
   * which must exist): moved in before anything else runs, as systemd starts an app in its scope.
   */
  cgroup?: string;
}

/** For spawn(): input is written to stdin (when it is a pipe); timeoutMs, if given, kills it. */
export interface SpawnOptions extends RunOptions {
  stdio?: StdioOptions;
  /**
   * Enter only the network namespace (nsenter --net), keeping the host's mounts. `ip netns exec`
   * remounts /sys for the namespace, which hides the cgroup hierarchy: the daemon needs it.
   */
  hostMounts?: boolean;
}

/** What the path servers answer with. */
export interface PathReply {
  server: string;
  path: string;
  remote: string;
  proto: 'tcp' | 'udp';
}

/** Every address of the lab. Other code and etc/ example configs depend on these. */
export const LAB = {
  /** The device's uplinks: device-side address, operator gateway, subscriber prefix. */
  uplinks: {
    wlan0: {
      ifname: 'wlan0', role: 'wifi', metric: 100,
      v4: '192.168.50.2', v6: 'fd00:50::2', gw4: '192.168.50.1', gw6: 'fd00:50::1',
      prefix4: '192.168.50.0/24', prefix6: 'fd00:50::/64',
    },
    wwan0: {
      ifname: 'wwan0', role: 'cell', metric: 700,
      v4: '10.64.0.2', v6: 'fd00:64::2', gw4: '10.64.0.1', gw6: 'fd00:64::1',
      prefix4: '10.64.0.0/24', prefix6: 'fd00:64::/64',
    },
    wwan1: {
      ifname: 'wwan1', role: 'mms', metric: null,
      v4: '10.64.0.2', v6: 'fd00:64::2', gw4: '10.64.0.1', gw6: 'fd00:64::1',
      prefix4: '10.64.0.0/24', prefix6: 'fd00:64::/64',
    },
    tun0: {
      ifname: 'tun0', role: 'office', metric: null,
      v4: '10.8.0.2', v6: 'fd00:8::2', gw4: '10.8.0.1', gw6: 'fd00:8::1',
      prefix4: '10.8.0.0/24', prefix6: 'fd00:8::/64',
    },
  },
  /** Path servers (HTTP on TCP port 80 and UDP port 80). */
  internet: {
    name: 'internet', role: 'inet', v4: '198.51.100.10', v6: '2001:db8:100::10', port: 80,
    host: 'www.example.net', prefix4: '198.51.100.0/24', prefix6: '2001:db8:100::/64',
  },
  mmsc: {
    name: 'mmsc', role: 'mms', v4: '10.200.0.10', v6: 'fd00:200::10', port: 80,
    host: 'mmsc.operator.example', prefix4: '10.200.0.0/24', prefix6: 'fd00:200::/64',
  },
  office: {
    name: 'office', role: 'office', v4: '172.16.5.10', v6: 'fd00:16:5::10', port: 80,
    host: 'intranet.corp.example', prefix4: '172.16.5.0/24', prefix6: 'fd00:16:5::/64',
  },
  /** DNS servers (UDP port 53), each authoritative for a different set of names. */
  dns: {
    wifi: { v4: '192.168.50.1', v6: 'fd00:50::1', names: ['www.example.net'] },
    cell: { v4: '10.64.0.1', v6: 'fd00:64::1', names: ['www.example.net'] },
    mms: { v4: '10.64.0.1', v6: 'fd00:64::1', names: ['mmsc.operator.example'] },
    /** The same MMS resolver inside the MMS network (the mms destination's prefix), as operators run one. */
    mmsNet: { v4: '10.200.0.10', v6: 'fd00:200::10', names: ['mmsc.operator.example'] },
    office: { v4: '10.8.0.1', v6: 'fd00:8::1', names: ['intranet.corp.example'] },
  },
  /** Operator-to-Internet transit links. */
  transit: {
    wifi: { op4: '100.65.1.1', op6: 'fd00:ff:1::1', inet4: '100.65.1.2', inet6: 'fd00:ff:1::2' },
    cell: { op4: '100.65.2.1', op6: 'fd00:ff:2::1', inet4: '100.65.2.2', inet6: 'fd00:ff:2::2' },
  },
} as const;

export type UplinkName = keyof typeof LAB.uplinks;

const NAME_RE = /^wm-(dev|wifi|cell|mms|office|inet)-(\d+)-([0-9a-f]{4})$/;
const DEFAULT_RUN_TIMEOUT_MS = 10_000;
const SERVER_READY_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Topology as data: what each namespace gets. setLink(up) re-applies a link's addresses and
// routes from here, the way NetworkManager/a VPN client would after the link comes back.

interface AddrSpec { dev: string; cidr: string }
interface RouteSpec { dev: string; spec: string }
interface NsPlan {
  sysctls: string[];
  /** `ip -batch` lines creating this namespace's links (veth peers land in other namespaces). */
  create: string[];
  /** Dummy interfaces (or, on kernels without the dummy driver, a veth pair with `NAME-peer`). */
  dummies: string[];
  addrs: AddrSpec[];
  /** Interfaces to set up (besides lo). */
  links: string[];
  routes: RouteSpec[];
  nft: string | null;
}

/**
 * Reverse-path filtering as a stock host has it, in every namespace: loose (2), for `all` and
 * `default` (so every link, created after these are set, has it too). What "stock" means, checked:
 * the kernel's default is 0 and a new namespace copies the host's IPv4 values; Debian 12's own
 * packages set nothing (systemd's upstream 50-default.conf, with `default` and every link at 2,
 * is not shipped; procps' /etc/sysctl.conf has rp_filter commented out); Ubuntu's procps sets
 * `all` and `default` to 2, and Fedora's and Arch's systemd set `default` and every link to 2.
 * `all` = 2 is the hardest of these for Waymark (the kernel uses max(all, dev), so no per-device
 * value can turn it off) and what the kernel notes (/work/shared) take as the stock value: the lab
 * uses that, so a fix that holds here holds on each of them.
 */
export const STOCK_SYSCTLS = ['net.ipv4.conf.all.rp_filter=2', 'net.ipv4.conf.default.rp_filter=2'] as const;

const ROUTER_SYSCTLS = [
  ...STOCK_SYSCTLS,
  'net.ipv4.ip_forward=1',
  'net.ipv6.conf.all.forwarding=1',
  'net.ipv6.conf.default.forwarding=1',
  'net.ipv6.conf.all.accept_dad=0',
  'net.ipv6.conf.default.accept_dad=0',
  'net.ipv6.conf.all.accept_ra=0',
  'net.ipv6.conf.default.accept_ra=0',
];

/**
 * An access network's filter: forward-chain anti-spoofing (subscribers may only use their
 * prefix), and a resolver for subscribers only, as a home router's or an operator's is: DNS
 * from the Internet side is dropped (a device asking it over another uplink gets no answer).
 */
function forwardFilter(p4: string, p6: string): string {
  return `table inet waymark_lab {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "dev" ip saddr != ${p4} counter drop
    iifname "dev" ip6 saddr != ${p6} counter drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "inet" meta l4proto { tcp, udp } th dport 53 counter drop
  }
}
`;
}

/**
 * Anti-spoofing for a private service network (link-local kept for ND), before routing: the
 * namespace has no route back to a foreign source, so the reverse-path check would drop the
 * packet first, uncounted.
 */
function inputFilter(p4: string, p6: string): string {
  return `table inet waymark_lab {
  chain input {
    type filter hook prerouting priority filter; policy accept;
    iifname "dev" ip saddr != ${p4} counter drop
    iifname "dev" ip6 saddr != { ${p6}, fe80::/10, :: } counter drop
  }
}
`;
}

function planFor(names: Readonly<Record<Role, string>>): Record<Role, NsPlan> {
  const U = LAB.uplinks;
  const T = LAB.transit;
  return {
    dev: {
      sysctls: [
        // A device, not a router.
        ...STOCK_SYSCTLS,
        'net.ipv6.conf.all.accept_ra=0',
        'net.ipv6.conf.default.accept_ra=0',
        'net.ipv6.conf.all.autoconf=0',
        'net.ipv6.conf.default.autoconf=0',
        'net.ipv6.conf.all.router_solicitations=0',
        'net.ipv6.conf.default.router_solicitations=0',
        'net.ipv6.conf.all.accept_dad=0',
        'net.ipv6.conf.default.accept_dad=0',
      ],
      create: [
        `link add wlan0 type veth peer name dev netns ${names.wifi}`,
        `link add wwan0 type veth peer name dev netns ${names.cell}`,
        `link add wwan1 type veth peer name dev netns ${names.mms}`,
        `link add tun0 type veth peer name dev netns ${names.office}`,
      ],
      dummies: [],
      addrs: (['wlan0', 'wwan0', 'wwan1', 'tun0'] as const).flatMap((u) => [
        { dev: u, cidr: `${U[u].v4}/24` },
        { dev: u, cidr: `${U[u].v6}/64` },
      ]),
      links: ['wlan0', 'wwan0', 'wwan1', 'tun0'],
      routes: [
        { dev: 'wlan0', spec: `default via ${U.wlan0.gw4} dev wlan0 metric 100` },
        { dev: 'wwan0', spec: `default via ${U.wwan0.gw4} dev wwan0 metric 700` },
        { dev: 'wlan0', spec: `::/0 via ${U.wlan0.gw6} dev wlan0 metric 100` },
        { dev: 'wwan0', spec: `::/0 via ${U.wwan0.gw6} dev wwan0 metric 700` },
        { dev: 'tun0', spec: `${LAB.office.prefix4} via ${U.tun0.gw4} dev tun0` },
        { dev: 'tun0', spec: `${LAB.office.prefix6} via ${U.tun0.gw6} dev tun0` },
      ],
      nft: null,
    },
    wifi: {
      sysctls: ROUTER_SYSCTLS,
      create: [`link add inet type veth peer name wifi netns ${names.inet}`],
      dummies: [],
      addrs: [
        { dev: 'dev', cidr: `${U.wlan0.gw4}/24` },
        { dev: 'dev', cidr: `${U.wlan0.gw6}/64` },
        { dev: 'inet', cidr: `${T.wifi.op4}/30` },
        { dev: 'inet', cidr: `${T.wifi.op6}/64` },
      ],
      links: ['dev', 'inet'],
      routes: [
        { dev: 'inet', spec: `default via ${T.wifi.inet4} dev inet` },
        { dev: 'inet', spec: `::/0 via ${T.wifi.inet6} dev inet` },
      ],
      nft: forwardFilter(U.wlan0.prefix4, U.wlan0.prefix6),
    },
    cell: {
      sysctls: ROUTER_SYSCTLS,
      create: [`link add inet type veth peer name cell netns ${names.inet}`],
      dummies: [],
      addrs: [
        { dev: 'dev', cidr: `${U.wwan0.gw4}/24` },
        { dev: 'dev', cidr: `${U.wwan0.gw6}/64` },
        { dev: 'inet', cidr: `${T.cell.op4}/30` },
        { dev: 'inet', cidr: `${T.cell.op6}/64` },
      ],
      links: ['dev', 'inet'],
      routes: [
        { dev: 'inet', spec: `default via ${T.cell.inet4} dev inet` },
        { dev: 'inet', spec: `::/0 via ${T.cell.inet6} dev inet` },
      ],
      nft: forwardFilter(U.wwan0.prefix4, U.wwan0.prefix6),
    },
    mms: {
      sysctls: ROUTER_SYSCTLS,
      create: [],
      dummies: ['mmsc'],
      addrs: [
        { dev: 'dev', cidr: `${U.wwan1.gw4}/24` },
        { dev: 'dev', cidr: `${U.wwan1.gw6}/64` },
        { dev: 'mmsc', cidr: `${LAB.mmsc.v4}/24` },
        { dev: 'mmsc', cidr: `${LAB.mmsc.v6}/64` },
      ],
      links: ['dev', 'mmsc'],
      routes: [],
      nft: inputFilter(U.wwan1.prefix4, U.wwan1.prefix6),
    },
    office: {
      sysctls: ROUTER_SYSCTLS,
      create: [],
      dummies: ['lan'],
      addrs: [
        { dev: 'dev', cidr: `${U.tun0.gw4}/24` },
        { dev: 'dev', cidr: `${U.tun0.gw6}/64` },
        { dev: 'lan', cidr: `${LAB.office.v4}/24` },
        { dev: 'lan', cidr: `${LAB.office.v6}/64` },
      ],
      links: ['dev', 'lan'],
      routes: [],
      nft: inputFilter(U.tun0.prefix4, U.tun0.prefix6),
    },
    inet: {
      sysctls: ROUTER_SYSCTLS,
      create: [],
      dummies: ['srv'],
      addrs: [
        { dev: 'wifi', cidr: `${T.wifi.inet4}/30` },
        { dev: 'wifi', cidr: `${T.wifi.inet6}/64` },
        { dev: 'cell', cidr: `${T.cell.inet4}/30` },
        { dev: 'cell', cidr: `${T.cell.inet6}/64` },
        { dev: 'srv', cidr: `${LAB.internet.v4}/24` },
        { dev: 'srv', cidr: `${LAB.internet.v6}/64` },
      ],
      links: ['wifi', 'cell', 'srv'],
      routes: [
        { dev: 'wifi', spec: `${U.wlan0.prefix4} via ${T.wifi.op4} dev wifi` },
        { dev: 'wifi', spec: `${U.wlan0.prefix6} via ${T.wifi.op6} dev wifi` },
        { dev: 'cell', spec: `${U.wwan0.prefix4} via ${T.cell.op4} dev cell` },
        { dev: 'cell', spec: `${U.wwan0.prefix6} via ${T.cell.op6} dev cell` },
      ],
      nft: null,
    },
  };
}

function addrLine(a: AddrSpec, verb: 'add' | 'replace'): string {
  return `address ${verb} ${a.cidr} dev ${a.dev}${a.cidr.includes(':') ? ' nodad' : ''}`;
}

interface ServerSpec {
  role: Role;
  script: 'path-server.js' | 'dns-server.js';
  args: string[];
}

function serverSpecs(): ServerSpec[] {
  const pathArgs = (name: string, v4: string, v6: string, map: ReadonlyArray<readonly [string, string]>): string[] => [
    '--name', name, '--listen', v4, '--listen', v6, '--port', '80',
    ...map.flatMap(([prefix, path]) => ['--map', `${prefix}=${path}`]),
  ];
  const dnsArgs = (name: string, v4: string, v6: string, host: string, a: string, aaaa: string): string[] => [
    '--name', name, '--listen', v4, '--listen', v6, '--port', '53',
    '--record', `${host}=${a}`, '--record', `${host}=${aaaa}`,
  ];
  const U = LAB.uplinks;
  const I = LAB.internet;
  return [
    {
      role: 'inet', script: 'path-server.js',
      args: pathArgs(I.name, I.v4, I.v6, [
        [U.wlan0.prefix4, 'wlan0'], [U.wlan0.prefix6, 'wlan0'],
        [U.wwan0.prefix4, 'wwan0'], [U.wwan0.prefix6, 'wwan0'],
      ]),
    },
    {
      role: 'mms', script: 'path-server.js',
      args: pathArgs(LAB.mmsc.name, LAB.mmsc.v4, LAB.mmsc.v6, [[U.wwan1.prefix4, 'wwan1'], [U.wwan1.prefix6, 'wwan1']]),
    },
    {
      role: 'office', script: 'path-server.js',
      args: pathArgs(LAB.office.name, LAB.office.v4, LAB.office.v6, [[U.tun0.prefix4, 'tun0'], [U.tun0.prefix6, 'tun0']]),
    },
    { role: 'wifi', script: 'dns-server.js', args: dnsArgs('wifi', LAB.dns.wifi.v4, LAB.dns.wifi.v6, I.host, I.v4, I.v6) },
    { role: 'cell', script: 'dns-server.js', args: dnsArgs('cell', LAB.dns.cell.v4, LAB.dns.cell.v6, I.host, I.v4, I.v6) },
    {
      role: 'mms', script: 'dns-server.js',
      args: [
        ...dnsArgs('mms', LAB.dns.mms.v4, LAB.dns.mms.v6, LAB.mmsc.host, LAB.mmsc.v4, LAB.mmsc.v6),
        '--listen', LAB.dns.mmsNet.v4, '--listen', LAB.dns.mmsNet.v6,
      ],
    },
    {
      role: 'office', script: 'dns-server.js',
      args: dnsArgs('office', LAB.dns.office.v4, LAB.dns.office.v6, LAB.office.host, LAB.office.v4, LAB.office.v6),
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// Process helpers

interface ExecResult { stdout: string; stderr: string }

/** Runs a host command (no shell); rejects with its stderr when it fails. */
function exec(cmd: string, args: readonly string[], input?: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (err) => reject(err));
    child.on('close', (code, signal) => {
      if (code === 0) resolve({ stdout, stderr });
      else {
        const what = [cmd, ...args].join(' ');
        reject(new Error(`${what} failed (${signal ?? `exit ${String(code)}`}): ${stderr.trim() || stdout.trim()}`));
      }
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Kills a child we spawned detached (own process group), falling back to the pid alone. */
function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    killQuietly(child.pid, signal);
  }
}

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null || child.pid === undefined;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (hasExited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

/** Names of all named network namespaces (what `ip netns list` shows, without its id lookups). */
async function listNetns(): Promise<string[]> {
  for (const dir of ['/run/netns', '/var/run/netns']) {
    try {
      return (await readdir(dir)).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return [];
}

async function pidsIn(ns: string): Promise<number[]> {
  try {
    const { stdout } = await exec('ip', ['netns', 'pids', ns]);
    return stdout.split(/\s+/).filter((s) => /^\d+$/.test(s)).map(Number);
  } catch {
    return [];
  }
}

/**
 * Kills every process inside the namespace, then deletes it. Missing namespaces are fine. This
 * process and its ancestors are spared: `waymark demo down` may run inside the demo's own device
 * namespace, typed in its shell (the namespace then lives on, nameless, until that shell exits).
 */
async function removeNetns(ns: string): Promise<void> {
  const spared = ancestry();
  for (const pid of await pidsIn(ns)) if (!spared.has(pid)) killQuietly(pid, 'SIGKILL');
  await rm(`/etc/netns/${ns}`, { recursive: true, force: true });
  try {
    await exec('ip', ['netns', 'del', ns]);
  } catch (err) {
    if (!/No such file|not found|does not exist/i.test(errorMessage(err))) throw err;
  }
}

/** This process and its ancestors, from /proc (ppid is the 4th field, after the parenthesised name). */
function ancestry(): Set<number> {
  const out = new Set<number>();
  for (let pid = process.pid; pid > 1 && !out.has(pid);) {
    out.add(pid);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return out;
}

const SYNC_CLEANUP_SCRIPT = `for ns in "$@"; do
  [ -e "/run/netns/$ns" ] || [ -e "/var/run/netns/$ns" ] || continue
  for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  ip netns del "$ns" 2>/dev/null
  rm -rf "/etc/netns/$ns"
done
true`;

function removeNetnsSync(names: readonly string[]): void {
  if (names.length === 0) return;
  try {
    execFileSync('sh', ['-c', SYNC_CLEANUP_SCRIPT, 'sh', ...names], { stdio: 'ignore', timeout: 10_000 });
  } catch {
    // last resort: nothing more we can do here; sweepStale() will get it next time
  }
}

// ---------------------------------------------------------------------------------------------
// Process-wide cleanup hooks: installed once, shared by every Lab of this process.

const liveLabs = new Set<Lab>();
/** Whether the kernel has the dummy link driver; undefined until first tried. */
let dummyDriver: boolean | undefined;
let hooksInstalled = false;

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => {
    for (const lab of [...liveLabs]) lab.destroySync();
  });
  const onSignal = (signal: NodeJS.Signals, code: number): void => {
    const hadLabs = liveLabs.size > 0;
    for (const lab of [...liveLabs]) lab.destroySync();
    // Alone, we stand in for the default action (terminate). With other handlers, they decide,
    // unless we just tore a lab down under them: then give them a moment to finish, and exit.
    if (process.listenerCount(signal) <= 1) process.exit(code);
    if (hadLabs) {
      process.exitCode = code;
      setTimeout(() => process.exit(code), 3000).unref();
    }
  };
  process.on('SIGINT', () => onSignal('SIGINT', 130));
  process.on('SIGTERM', () => onSignal('SIGTERM', 143));
}

function checkTool(cmd: string, args: string[], hint: string): void {
  try {
    execFileSync(cmd, args, { stdio: 'ignore', timeout: 5000 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`lab: \`${cmd}\` not found on PATH: ${hint}`, { cause: err });
    throw new Error(`lab: \`${cmd} ${args.join(' ')}\` failed: ${errorMessage(err)}`, { cause: err });
  }
}

// ---------------------------------------------------------------------------------------------

export interface LabOptions {
  /** Start the path and DNS servers (default true). */
  servers?: boolean;
  /**
   * The lab may outlive this process (see detach()): its servers then do not exit when our
   * end of their stdin closes. Default false.
   */
  detachable?: boolean;
  log?: (msg: string) => void;
}

/** Labs left running on purpose (`waymark demo --shell`) are recorded here, one file per run. */
export const DETACHED_DIR = '/run/waymark-lab';

export class Lab {
  readonly runId: string;
  /** The lab's own cgroup subtree (null: no cgroup2 hierarchy here), the cgroup root of its daemon. */
  readonly cgroups: LabCgroups | null;
  private readonly names: Readonly<Record<Role, string>>;
  private readonly plan: Record<Role, NsPlan>;
  private readonly children = new Set<ChildProcess>();
  private readonly log: (msg: string) => void;
  private destroying: Promise<void> | null = null;
  private destroyed = false;

  private detachable = false;

  private constructor(runId: string, log: (msg: string) => void) {
    this.runId = runId;
    this.log = log;
    const mount = cgroup2Mount();
    this.cgroups = mount === null ? null : new LabCgroups(mount, runId);
    const names = {} as Record<Role, string>;
    for (const role of ROLES) names[role] = `wm-${role}-${runId}`;
    this.names = names;
    this.plan = planFor(names);
  }

  static async create(opts: LabOptions = {}): Promise<Lab> {
    if (process.getuid?.() !== 0) throw new Error('lab: must run as root (it creates network namespaces)');
    checkTool('ip', ['-V'], 'install iproute2');
    checkTool('nft', ['--version'], 'install nftables (scripts/setup.sh does); the lab uses it for anti-spoofing');

    const existing = new Set(await listNetns());
    let runId = '';
    do {
      runId = `${process.pid}-${randomBytes(2).toString('hex')}`;
    } while (ROLES.some((r) => existing.has(`wm-${r}-${runId}`)));

    const log = opts.log ?? ((): void => {});
    const lab = new Lab(runId, log);
    lab.detachable = opts.detachable ?? false;
    installHooks();
    liveLabs.add(lab);
    const t0 = performance.now();
    try {
      lab.cgroups?.create();
      await lab.build();
      log(`lab ${runId}: namespaces built in ${Math.round(performance.now() - t0)} ms`);
      if (opts.servers ?? true) {
        await lab.startServers();
        log(`lab ${runId}: servers ready after ${Math.round(performance.now() - t0)} ms`);
      }
    } catch (err) {
      await lab.destroy().catch((e: unknown) => log(`lab ${runId}: teardown after failed create: ${String(e)}`));
      throw err;
    }
    return lab;
  }

  /** Namespace name of a role. */
  ns(role: Role): string {
    return this.names[role];
  }

  /** All namespace names, by role. */
  get namespaces(): Readonly<Record<Role, string>> {
    return this.names;
  }

  /** Path of the namespace's bind mount (for setns(2) users). */
  nsPath(role: Role): string {
    return `/run/netns/${this.names[role]}`;
  }

  private ip(role: Role, lines: readonly string[]): Promise<ExecResult> {
    if (lines.length === 0) return Promise.resolve({ stdout: '', stderr: '' });
    return exec('ip', ['-n', this.names[role], '-batch', '-'], `${lines.join('\n')}\n`);
  }

  private async build(): Promise<void> {
    const plan = this.plan;
    // 1. namespaces, and their sysctls before any link exists (new links inherit `default`).
    //    The first `ip netns add` alone: on a fresh host it makes /run/netns a shared mount,
    //    which concurrent first calls would race on.
    const sysctls = (role: Role): Promise<ExecResult> =>
      exec('ip', ['netns', 'exec', this.names[role], 'sysctl', '-q', '-w', ...plan[role].sysctls]);
    const [first, ...rest] = ROLES;
    await exec('ip', ['netns', 'add', this.names[first]]);
    await Promise.all([
      sysctls(first),
      ...rest.map(async (role) => {
        await exec('ip', ['netns', 'add', this.names[role]]);
        await sysctls(role);
      }),
    ]);
    // 2. links (veth peers are created straight into the other namespace).
    await Promise.all(ROLES.map((role) => this.ip(role, plan[role].create)));
    await Promise.all(ROLES.map((role) => this.addDummies(role)));
    // 3. addresses, links up, firewall.
    await Promise.all(
      ROLES.flatMap((role) => {
        const p = plan[role];
        const jobs = [
          this.ip(role, [
            ...p.addrs.map((a) => addrLine(a, 'add')),
            'link set dev lo up',
            ...p.links.map((l) => `link set dev ${l} up`),
            ...(dummyDriver === false ? p.dummies.map((d) => `link set dev ${d}-peer up`) : []),
          ]),
        ];
        if (p.nft !== null) jobs.push(exec('ip', ['netns', 'exec', this.names[role], 'nft', '-f', '-'], p.nft));
        return jobs;
      }),
    );
    // 4. routes, once every link on both ends is up.
    await Promise.all(ROLES.map((role) => this.ip(role, plan[role].routes.map((r) => `route add ${r.spec}`))));
    // 5. The device's resolver is the Wi-Fi operator's DNS (what DHCP would have said), so no
    //    lookup inside the lab ever heads for the host's own name servers. `ip netns exec`
    //    bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
    mkdirSync(`/etc/netns/${this.names.dev}`, { recursive: true });
    writeFileSync(`/etc/netns/${this.names.dev}/resolv.conf`, `nameserver ${LAB.dns.wifi.v4}\noptions timeout:1 attempts:1\n`);
  }

  /**
   * Creates the role's dummy interfaces. Some kernels are built without the dummy driver
   * ("Unknown device type"): there a veth pair NAME/NAME-peer, both ends in the same namespace
   * and up, stands in for it (same addresses, same behaviour for local delivery).
   */
  private async addDummies(role: Role): Promise<void> {
    const dummies = this.plan[role].dummies;
    if (dummies.length === 0) return;
    if (dummyDriver !== false) {
      try {
        await this.ip(role, dummies.map((d) => `link add ${d} type dummy`));
        dummyDriver = true;
        return;
      } catch (err) {
        if (!/Unknown device type/i.test(errorMessage(err))) throw err;
        if (dummyDriver === undefined) this.log(`lab: no dummy link driver in this kernel; using veth pairs instead`);
        dummyDriver = false;
      }
    }
    await this.ip(role, dummies.map((d) => `link add ${d} type veth peer name ${d}-peer`));
  }

  private async startServers(): Promise<void> {
    await Promise.all(serverSpecs().map((s) => this.startServer(s)));
  }

  private startServer(s: ServerSpec): Promise<void> {
    const script = fileURLToPath(new URL(`./${s.script}`, import.meta.url));
    const label = `${s.script.replace(/\.js$/, '')}@${s.role}`;
    const child = this.spawn(s.role, [process.execPath, script, ...s.args, ...(this.detachable ? [] : ['--exit-on-stdin-eof'])], {
      stdio: [this.detachable ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-4000);
    });
    return new Promise<void>((resolve, reject) => {
      let buf = '';
      let ready = false;
      const timer = setTimeout(() => {
        reject(new Error(`lab: ${label} not ready after ${SERVER_READY_TIMEOUT_MS} ms: ${stderr.trim()}`));
      }, SERVER_READY_TIMEOUT_MS);
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`lab: cannot start ${label}: ${err.message}`));
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        if (!ready) reject(new Error(`lab: ${label} exited (${signal ?? String(code)}) before ready: ${stderr.trim()}`));
        else if (!this.destroyed && this.destroying === null) {
          this.log(`lab ${this.runId}: ${label} exited unexpectedly (${signal ?? String(code)}): ${stderr.trim()}`);
        }
      });
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        if (ready) return;
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        try {
          const msg = JSON.parse(line) as { ready?: unknown };
          if (typeof msg.ready !== 'string') throw new Error('no ready field');
        } catch {
          clearTimeout(timer);
          reject(new Error(`lab: ${label} printed an unexpected line: ${line}`));
          return;
        }
        ready = true;
        clearTimeout(timer);
        // The servers must not keep this process alive: the exit hook kills them, and they exit
        // by themselves on stdin EOF if this process dies without running any hook.
        child.unref();
        for (const s of [child.stdin, child.stdout, child.stderr]) if (s instanceof Socket) s.unref();
        resolve();
      });
    });
  }

  private wrap(argv: readonly string[], opts: RunOptions): string[] {
    if (argv.length === 0) throw new Error('lab: empty argv');
    const inner = [...argv];
    if (opts.uid !== undefined || opts.gid !== undefined) {
      const ids: string[] = [];
      if (opts.uid !== undefined) ids.push(`--reuid=${opts.uid}`);
      const gid = opts.gid ?? opts.uid;
      if (gid !== undefined) ids.push(`--regid=${gid}`);
      inner.unshift('setpriv', ...ids, '--clear-groups', '--');
    }
    return inner;
  }

  /** Spawns `ip netns exec NS argv...` (or nsenter, see hostMounts) in its own process group; killed by destroy(). */
  spawn(role: Role, argv: string[], opts: SpawnOptions = {}): ChildProcess {
    if (this.destroyed || this.destroying !== null) throw new Error(`lab ${this.runId}: already destroyed`);
    const inner = opts.hostMounts
      ? ['nsenter', `--net=${this.nsPath(role)}`, '--', ...this.wrap(argv, opts)]
      : ['ip', 'netns', 'exec', this.names[role], ...this.wrap(argv, opts)];
    // Into the cgroup first, on the host (`ip netns exec` hides /sys/fs/cgroup): what it runs inherits it.
    if (opts.cgroup !== undefined && this.cgroups === null) throw new Error(`lab ${this.runId}: no cgroup2 hierarchy for cgroup ${opts.cgroup}`);
    const [cmd = 'false', ...args] = opts.cgroup !== undefined && this.cgroups !== null ? this.cgroups.wrap(opts.cgroup, inner) : inner;
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: opts.stdio ?? 'pipe',
      detached: true,
    });
    this.children.add(child);
    const timer = opts.timeoutMs === undefined ? null : setTimeout(() => killGroup(child, 'SIGKILL'), opts.timeoutMs);
    timer?.unref();
    const forget = (): void => {
      if (timer !== null) clearTimeout(timer);
      this.children.delete(child);
    };
    child.once('exit', forget);
    child.once('error', forget);
    if (opts.input !== undefined && child.stdin !== null) {
      child.stdin.on('error', () => {}); // EPIPE if the command does not read its input
      child.stdin.end(opts.input);
    }
    return child;
  }

  /** Runs `ip netns exec NS argv...` to completion; the whole process group is killed at timeout. */
  run(role: Role, argv: string[], opts: RunOptions = {}): Promise<RunResult> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS;
    return new Promise((resolve, reject) => {
      let child: ChildProcess;
      try {
        const { env, uid, gid, cwd, cgroup } = opts;
        child = this.spawn(role, argv, { env, uid, gid, cwd, ...(cgroup !== undefined ? { cgroup } : {}), stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
      } catch (err) {
        reject(err);
        return;
      }
      let stdout = '';
      let stderr = '';
      let timedOut = false;
      child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
      child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup(child, 'SIGKILL');
      }, timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout, stderr, timedOut });
      });
      if (opts.input !== undefined) {
        child.stdin?.on('error', () => {}); // EPIPE if the command does not read its input
        child.stdin?.end(opts.input);
      }
    });
  }

  /**
   * Sets a link down or up. Up also re-applies the lab's addresses and routes for that link
   * (as NetworkManager/a VPN client would): the kernel drops gateway routes, and IPv6
   * addresses, when a link goes administratively down. To simulate carrier loss instead,
   * set the operator's end down, e.g. setLink('wifi', 'dev', false) for wlan0.
   */
  async setLink(role: Role, ifname: string, up: boolean): Promise<void> {
    if (!up) {
      await this.ip(role, [`link set dev ${ifname} down`]);
      return;
    }
    const p = this.plan[role];
    await this.ip(role, [
      `link set dev ${ifname} up`,
      ...p.addrs.filter((a) => a.dev === ifname).map((a) => addrLine(a, 'replace')),
      ...p.routes.filter((r) => r.dev === ifname).map((r) => `route replace ${r.spec}`),
    ]);
  }

  /**
   * Leaves the lab running after this process exits (the demo's --shell): records it in
   * DETACHED_DIR, where sweepStale() leaves it alone and destroyDetached() finds it.
   */
  detach(): void {
    if (!this.detachable) throw new Error(`lab ${this.runId}: created without detachable: true`);
    mkdirSync(DETACHED_DIR, { recursive: true, mode: 0o755 });
    writeFileSync(`${DETACHED_DIR}/${this.runId}.json`, JSON.stringify({ runId: this.runId, namespaces: this.names }) + '\n');
    liveLabs.delete(this);
    for (const c of this.children) {
      c.stdout?.destroy();
      c.stderr?.destroy();
      c.stdin?.destroy();
      c.unref();
    }
    this.children.clear();
    this.destroyed = true;
  }

  /** Tears everything down: tracked processes, every process inside the namespaces, the namespaces. */
  destroy(): Promise<void> {
    if (this.destroying === null) this.destroying = this.teardown();
    return this.destroying;
  }

  private async teardown(): Promise<void> {
    const t0 = performance.now();
    const children = [...this.children];
    for (const c of children) killGroup(c, 'SIGTERM');
    const exited = await Promise.all(children.map((c) => waitExit(c, 1000)));
    const stubborn = children.filter((_, i) => exited[i] !== true);
    for (const c of stubborn) killGroup(c, 'SIGKILL');
    await Promise.all(stubborn.map((c) => waitExit(c, 1000)));
    const results = await Promise.allSettled(ROLES.map((role) => removeNetns(this.names[role])));
    this.cgroups?.destroy();
    this.destroyed = true;
    liveLabs.delete(this);
    const left = new Set(await listNetns());
    const remaining = ROLES.map((r) => this.names[r]).filter((n) => left.has(n));
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason)] : []));
    this.log(`lab ${this.runId}: destroyed in ${Math.round(performance.now() - t0)} ms`);
    if (remaining.length > 0) {
      throw new Error(`lab ${this.runId}: namespaces left behind: ${remaining.join(' ')} ${errors.join('; ')}`);
    }
  }

  /** Synchronous last-resort teardown (process exit / signals). Prefer destroy(). */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    liveLabs.delete(this);
    for (const c of this.children) killGroup(c, 'SIGKILL');
    removeNetnsSync(ROLES.map((r) => this.names[r]));
    this.cgroups?.destroy();
  }

  /** GET http://HOST/ from a namespace with curl; the path server's reply, or null on failure. */
  async httpPath(
    role: Role,
    host: string,
    opts: { iface?: string; timeoutMs?: number; uid?: number; gid?: number } = {},
  ): Promise<PathReply | null> {
    const seconds = ((opts.timeoutMs ?? 2000) / 1000).toFixed(1);
    const url = host.includes(':') ? `http://[${host}]/` : `http://${host}/`;
    const argv = ['curl', '-sS', '-g', '--max-time', seconds, ...(opts.iface ? ['--interface', opts.iface] : []), url];
    const r = await this.run(role, argv, { uid: opts.uid, gid: opts.gid, timeoutMs: (opts.timeoutMs ?? 2000) + 2000 });
    return r.code === 0 ? parseReply(r.stdout) : null;
  }

  /** One UDP datagram to HOST:80 from a namespace (socat); the reply, or null on timeout. */
  udpPath(
    role: Role,
    host: string,
    opts: { iface?: string; timeoutMs?: number; uid?: number; gid?: number } = {},
  ): Promise<PathReply | null> {
    const timeoutMs = opts.timeoutMs ?? 2000;
    const addr = host.includes(':') ? `UDP6:[${host}]:80` : `UDP4:${host}:80`;
    const bind = opts.iface ? `,so-bindtodevice=${opts.iface}` : '';
    const child = this.spawn(role, ['socat', '-', `${addr}${bind}`], {
      uid: opts.uid,
      gid: opts.gid,
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    return new Promise((resolve) => {
      let out = '';
      let done = false;
      const finish = (reply: PathReply | null): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        killGroup(child, 'SIGKILL');
        resolve(reply);
      };
      // Keep stdin open: socat would otherwise stop listening for the reply on EOF.
      const timer = setTimeout(() => finish(null), timeoutMs);
      child.on('error', () => finish(null));
      child.on('exit', () => finish(parseReply(out)));
      child.stdin?.on('error', () => {});
      child.stdin?.write('probe\n');
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('\n')) finish(parseReply(out));
      });
    });
  }
}

function parseReply(text: string): PathReply | null {
  const line = text.split('\n').find((l) => l.trim() !== '');
  if (line === undefined) return null;
  try {
    const v = JSON.parse(line) as Partial<PathReply>;
    if (typeof v.server !== 'string' || typeof v.path !== 'string' || typeof v.remote !== 'string') return null;
    return { server: v.server, path: v.path, remote: v.remote, proto: v.proto === 'udp' ? 'udp' : 'tcp' };
  } catch {
    return null;
  }
}

/**
 * Removes lab namespaces left over by dead runs (the creating pid is part of every name):
 * kills whatever still runs inside them, then deletes them. Returns the names removed.
 */
export async function sweepStale(): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await listNetns()) {
    const m = NAME_RE.exec(name);
    if (m?.[2] === undefined) continue;
    const pid = Number(m[2]);
    if (pid === process.pid || isAlive(pid) || existsSync(`${DETACHED_DIR}/${m[2]}-${m[3]}.json`)) continue;
    await removeNetns(name);
    removed.push(name);
  }
  removed.push(...sweepStaleCgroups((pid, runId) => pid === process.pid || isAlive(pid) || existsSync(`${DETACHED_DIR}/${runId}.json`)));
  return removed;
}

/** Ends every lab left running with detach(): its processes, its namespaces. Returns the run ids. */
export async function destroyDetached(): Promise<string[]> {
  let files: string[];
  try {
    files = (await readdir(DETACHED_DIR)).filter((f) => f.endsWith('.json'));
  } catch {
    return [];
  }
  const ended: string[] = [];
  for (const f of files) {
    const path = `${DETACHED_DIR}/${f}`;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } finally {
      // First: from now on the demo counts as ended (its shell says so when it closes); whatever
      // a failed teardown leaves behind, sweepStale() removes (its creator is gone).
      await rm(path, { force: true });
    }
    const rec = JSON.parse(text) as { runId?: unknown; namespaces?: Record<string, unknown> };
    const names = Object.values(rec.namespaces ?? {}).filter((n): n is string => typeof n === 'string' && /^wm-[a-z]+-\d+-[0-9a-f]{4}$/.test(n));
    for (const n of names) await removeNetns(n);
    if (typeof rec.runId === 'string') {
      // Its cgroups go too (its processes are gone with the namespaces' teardown or now).
      sweepStaleCgroups((_pid, runId) => runId !== rec.runId);
      ended.push(rec.runId);
    }
  }
  return ended;
}
