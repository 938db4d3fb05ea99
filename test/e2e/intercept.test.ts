/**
 * Interception end to end, in a lab the test builds: real unmodified clients under
 * `waymark exec`, as root and as nobody, IPv4 and IPv6; per-destination decisions by the daemon;
 * DNS of domain destinations through their uplink; the kernel backstop for a static Go binary and an io_uring-only program;
 * the daemon dying mid-run; many threads and forked children.
 *
 * The discriminating setup: `--need long-lived` makes the session's default (the cgroup mark) the
 * cellular uplink, which cannot reach the MMSC. A connection to the MMSC only works when the
 * library asked the daemon and bound the socket to the MMS APN (wwan1).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { publicPath, publicRoot } from '../../src/lab/public.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, status, url, useLab } from '../support/lab.js';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/version.js';

let lab: Lab;
let dev: Device;
let goclient: string;

useLab({
  alongside: async () => {
    goclient = await buildPublicGoClient(); // also run as nobody
  },
  timeoutMs: 180_000,
}, (l, d) => {
  lab = l;
  dev = d;
});

const PY_BLOCKING = `import socket,sys
s=socket.create_connection((sys.argv[1],80),3)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
d=b""
while True:
  c=s.recv(4096)
  if not c: break
  d+=c
print(d.split(b"\\r\\n\\r\\n",1)[1].decode().strip())`;
const PY_ASYNCIO = `import asyncio,sys
async def main():
  r,w=await asyncio.wait_for(asyncio.open_connection(sys.argv[1],80),3)
  w.write(b"GET / HTTP/1.0\\r\\n\\r\\n")
  d=await r.read()
  print(d.split(b"\\r\\n\\r\\n",1)[1].decode().strip())
asyncio.run(main())`;
const PY_UDP = `import socket,sys
h=sys.argv[1]
s=socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"probe",(h,80))
print(s.recvfrom(4096)[0].decode().strip())`;
const NODE_NET = `const net=require("net");const s=net.connect({host:process.argv[1],port:80},()=>s.write("GET / HTTP/1.0\\r\\n\\r\\n"));let d="";s.on("data",c=>d+=c);s.on("end",()=>console.log(d.split("\\r\\n\\r\\n")[1].trim()));s.setTimeout(3000,()=>process.exit(2))`;
const NODE_FETCH = `fetch(process.argv[1],{signal:AbortSignal.timeout(3000)}).then(r=>r.text()).then(t=>console.log(t.trim()),e=>{console.error(String(e.cause??e));process.exit(1)})`;
const HTTP_GET = 'GET / HTTP/1.0\r\n\r\n';

interface Client { name: string; argv(host: string): string[]; input?: string; udp?: boolean }
const CLIENTS: readonly Client[] = [
  { name: 'curl', argv: (h) => ['curl', '-sS', '-g', '--max-time', '3', url(h)] },
  { name: 'wget', argv: (h) => ['wget', '-qO-', '-T', '3', url(h)] },
  { name: 'python3 socket', argv: (h) => ['python3', '-c', PY_BLOCKING, h] },
  { name: 'python3 asyncio', argv: (h) => ['python3', '-c', PY_ASYNCIO, h] },
  { name: 'python3 UDP sendto', argv: (h) => ['python3', '-c', PY_UDP, h], udp: true },
  { name: 'node net', argv: (h) => [process.execPath, '-e', NODE_NET, h] },
  { name: 'node fetch', argv: (h) => [process.execPath, '-e', NODE_FETCH, url(h)] },
  { name: 'socat TCP', argv: (h) => ['socat', '-T', '3', '-', h.includes(':') ? `TCP6:[${h}]:80` : `TCP4:${h}:80`], input: HTTP_GET },
  { name: 'socat UDP', argv: (h) => ['socat', '-T', '3', '-', h.includes(':') ? `UDP6:[${h}]:80` : `UDP4:${h}:80`], input: 'probe\n', udp: true },
];

async function underExec(args: string[], argv: string[], opts: { uid?: number; input?: string; env?: NodeJS.ProcessEnv } = {}) {
  return dev.waymark(['exec', ...args, '--', ...argv], { timeoutMs: 15_000, ...opts });
}

describe('real clients land on the uplink the decision names', () => {
  for (const user of [{ label: 'root', uid: undefined }, { label: 'nobody', uid: 65534 }]) {
    for (const c of CLIENTS) {
      it(`${c.name} as ${user.label}, v4 and v6, Internet by cellular (long-lived), MMSC by the MMS APN`, async () => {
        for (const [host, expect] of [[LAB.internet.v4, 'wwan0'], [LAB.internet.v6, 'wwan0'], [LAB.mmsc.v4, 'wwan1'], [LAB.mmsc.v6, 'wwan1']] as const) {
          const r = await underExec(['--need', 'long-lived'], c.argv(host), { ...(user.uid ? { uid: user.uid } : {}), ...(c.input ? { input: c.input } : {}) });
          const reply = lastJson(r.stdout);
          assert.equal(reply?.path, expect, `${c.name} → ${host}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
          assert.equal(reply?.proto, c.udp ? 'udp' : 'tcp');
        }
      });
    }
  }

  it('dig asks the DNS server of the uplink it is steered to (same address, different APN)', async () => {
    const viaMms = await underExec(['--uplink', 'mms'], ['dig', `@${LAB.dns.mms.v4}`, LAB.mmsc.host, '+short', '+time=1', '+tries=1']);
    assert.equal(viaMms.stdout.trim(), LAB.mmsc.v4, viaMms.stderr);
    const viaCell = await underExec(['--uplink', 'cellular'], ['dig', `@${LAB.dns.cell.v4}`, LAB.mmsc.host, '+time=1', '+tries=1']);
    assert.match(viaCell.stdout, /status: NXDOMAIN/, 'the cellular DNS at the same address does not know the MMSC');
    const v6 = await underExec(['--uplink', 'mms'], ['dig', `@${LAB.dns.mms.v6}`, LAB.mmsc.host, 'AAAA', '+short', '+time=1', '+tries=1'], { uid: 65534 });
    assert.equal(v6.stdout.trim(), LAB.mmsc.v6, v6.stderr);
  });

  it('a request is checked against the config: a denied or unreachable uplink fails with a clear error', async () => {
    const r = await underExec(['--uplink', 'mms'], ['curl', '-sS', '--max-time', '3', url(LAB.internet.v4)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /refused/);
    const unknown = await underExec(['--uplink', 'nope'], ['true']);
    assert.equal(unknown.code, 69);
  });
});

describe('names of domain destinations resolve through their uplink', () => {
  it('corp.example via the VPN\'s DNS and connects via the VPN; the MMSC name via the MMS APN', async () => {
    for (const [name, path, uid] of [[LAB.office.host, 'tun0', undefined], [LAB.mmsc.host, 'wwan1', undefined], [LAB.office.host, 'tun0', 65534]] as const) {
      const r = await underExec([], ['curl', '-sS', '--max-time', '3', `http://${name}/`], uid ? { uid } : {});
      assert.equal(lastJson(r.stdout)?.path, path, `${name}: ${r.stderr}`);
    }
    const py = await underExec([], ['python3', '-c', 'import socket;print(sorted({a[4][0] for a in socket.getaddrinfo("intranet.corp.example",80)}))']);
    assert.equal(py.stdout.trim(), `['${LAB.office.v4}', '${LAB.office.v6}']`, py.stderr);
    // An Internet name is not a destination's: the system resolver (the lab's Wi-Fi DNS) answers.
    const www = await underExec([], ['python3', '-c', `import socket;print(socket.getaddrinfo("${LAB.internet.host}",80,socket.AF_INET)[0][4][0])`]);
    assert.equal(www.stdout.trim(), LAB.internet.v4, www.stderr);
  });
});

describe('DNS servers the link announces', () => {
  it('a router advertisement\'s RDNSS gives an uplink its DNS; a domain destination resolves and connects through it', async () => {
    const original = readFileSync(dev.configPath, 'utf8');
    // A destination known only by its domain, reached over Wi-Fi, whose DNS is not configured.
    writeFileSync(dev.configPath, original.replace('destinations:\n', 'destinations:\n  - name: home\n    domains: [example.net]\n    via: [wifi]\n'));
    try {
      assert.equal((await dev.waymark(['reload'])).code, 0);
      // The device takes DNS servers (only) from router advertisements on wlan0.
      await lab.run('dev', ['sysctl', '-qw', 'net.ipv6.conf.wlan0.accept_ra=1', 'net.ipv6.conf.wlan0.accept_ra_defrtr=0',
        'net.ipv6.conf.wlan0.autoconf=0', 'net.ipv6.conf.wlan0.accept_ra_pinfo=0']);
      const ra = await lab.run('wifi', ['python3', join(PACKAGE_ROOT, 'test/fixtures/send_ra.py'), 'dev', LAB.dns.wifi.v6]);
      assert.equal(ra.code, 0, ra.stderr);
      let wifi;
      for (let i = 0; i < 500 && wifi?.dns.source !== 'link'; i++) { // up to 10 s: a guard
        await new Promise((r) => setTimeout(r, 20));
        wifi = (await status(dev)).uplinks.find((u) => u.name === 'wifi');
      }
      assert.deepEqual(wifi?.dns, { servers: [LAB.dns.wifi.v6], source: 'link' });
      // long-lived alone would pick cellular; the name's destination only goes over Wi-Fi.
      const r = await underExec(['--need', 'long-lived'], ['curl', '-sS', '--max-time', '3', `http://${LAB.internet.host}/`]);
      assert.equal(lastJson(r.stdout)?.path, 'wlan0', r.stderr);
      assert.match(readFileSync(join(dev.dir, 'waymarkd.log'), 'utf8'), /msg=resolved name=www\.example\.net uplink=wifi/);
      // The kernel routes the learnt addresses like their destination, for programs without the library too.
      const wifiTable = wifi?.table;
      const rules = (await lab.run('dev', ['ip', '-4', 'rule'])).stdout;
      assert.match(rules, new RegExp(`to ${LAB.internet.v4.replace(/\./g, '\\.')} lookup ${wifiTable} proto 87`), rules);
      const route = (await lab.run('dev', ['ip', '-6', 'route', 'get', LAB.internet.v6])).stdout;
      assert.match(route, /dev wlan0/);
    } finally {
      writeFileSync(dev.configPath, original);
      await dev.waymark(['reload']);
    }
    // With the destination gone, so are its learnt routes.
    assert.doesNotMatch((await lab.run('dev', ['ip', '-4', 'rule'])).stdout, new RegExp(`to ${LAB.internet.v4.replace(/\./g, '\\.')} `));
  });
});

describe('who is asking', () => {
  it('a program that execs another is identified anew at once: the new program gets its own app rule', async () => {
    const original = readFileSync(dev.configPath, 'utf8');
    // socat's rule sends it over cellular; python3 has none and goes by the destination (Wi-Fi first).
    writeFileSync(dev.configPath, original.replace('rules:\n', 'rules:\n  - name: relay\n    match: { exe: /usr/bin/socat }\n    only: [cellular]\n'));
    try {
      assert.equal((await dev.waymark(['reload'])).code, 0);
      // Same pid, within the same second: python3 connects, then becomes socat, which connects.
      const PY = `import os,socket,sys
h=sys.argv[1]; s=socket.create_connection((h,80),2); s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
d=b""
while True:
  x=s.recv(4096)
  if not x: break
  d+=x
print(d.split(b"\\r\\n\\r\\n",1)[1].decode().strip(), flush=True)
os.execv("/usr/bin/socat",["socat","-T2","-","TCP:"+h+":80"])`;
      const r = await underExec([], ['python3', '-c', PY, LAB.internet.v4], { input: 'GET / HTTP/1.0\r\n\r\n' });
      const paths = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => (JSON.parse(l) as { path: string }).path);
      assert.deepEqual(paths, ['wlan0', 'wwan0'], r.stdout + r.stderr);
    } finally {
      writeFileSync(dev.configPath, original);
      await dev.waymark(['reload']);
    }
  });
});

describe('apps that ask for properties', () => {
  const API = `const [mod, host, needs, sock] = process.argv.slice(1);
const { connect } = await import(mod);
try {
  const c = await connect({ host, port: 80, needs: needs ? needs.split(',') : [], socketPath: sock, timeoutMs: 3000 });
  c.socket.write('GET / HTTP/1.0\\r\\n\\r\\n');
  let d = '';
  c.socket.on('data', (x) => (d += x));
  c.socket.on('end', () => console.log(JSON.stringify({ uplink: c.uplink, body: JSON.parse(d.split('\\r\\n\\r\\n')[1]) })));
} catch (e) { console.log(JSON.stringify({ error: e.code })); }`;

  it('the C API (libwaymark-client) connects by need, by name, on the decided uplink', async () => {
    const lib = publicPath('native/client');
    const bin = join(publicRoot(), 'build', 'client_demo'); // build/ is git-ignored
    execFileSync('cc', ['-Wall', '-Werror', '-D_GNU_SOURCE', '-I', join(PACKAGE_ROOT, 'native/include'), '-o', bin, join(PACKAGE_ROOT, 'test/fixtures/client_demo.c'),
      '-L', lib, '-lwaymark-client', `-Wl,-rpath,${lib}`]);
    const run = async (host: string, needs: string): Promise<{ uplink?: string; body?: { path: string } | null; error?: string }> => {
      const r = await lab.run('dev', [bin, host, needs], { uid: 65534, env: { ...process.env, WAYMARK_SOCKET: dev.socket } });
      return JSON.parse(r.stdout.trim() || '{}') as { uplink?: string; body?: { path: string } | null; error?: string };
    };
    const cell = await run(LAB.internet.v6, 'long-lived');
    assert.deepEqual([cell.uplink, cell.body?.path], ['cellular', 'wwan0']);
    assert.equal((await run(LAB.internet.v4, 'cheapest')).body?.path, 'wlan0');
    assert.equal((await run(LAB.office.host, '')).body?.path, 'tun0');
    assert.equal((await run(LAB.mmsc.host, 'unmetered')).error, 'EACCES');
  });

  it('the TypeScript API connects by need, by name, on the decided uplink', async () => {
    const mod = join(publicRoot(), 'dist/src/api/index.js');
    const run = async (host: string, needs: string): Promise<{ uplink?: string; body?: { path: string }; error?: string }> => {
      const r = await lab.run('dev', [process.execPath, '--input-type=module', '-e', API, mod, host, needs, dev.socket], { uid: 65534 });
      return JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as { uplink?: string; body?: { path: string }; error?: string };
    };
    assert.deepEqual(await run(LAB.internet.v4, 'long-lived'), { uplink: 'cellular', body: (await run(LAB.internet.v4, 'long-lived')).body });
    assert.equal((await run(LAB.internet.v6, 'long-lived')).body?.path, 'wwan0');
    assert.equal((await run(LAB.internet.v4, 'cheapest')).body?.path, 'wlan0');
    assert.equal((await run(LAB.office.host, '')).body?.path, 'tun0');
    assert.equal((await run(LAB.mmsc.host, 'unmetered')).error, 'EACCES', 'the MMS APN is metered: no uplink satisfies the need');
  });
});

describe('the kernel backstop holds for a program that never loads the library', () => {
  it('a static Go binary goes by its assigned uplink, and not by a denied one', async () => {
    const assigned = await underExec(['--uplink', 'wwan0'], [goclient, url(LAB.internet.v4)], { uid: 65534 });
    assert.equal(lastJson(assigned.stdout)?.path, 'wwan0', assigned.stderr);
    // Without Waymark the main table's default route is Wi-Fi; with Wi-Fi denied it must not be used.
    const plain = await lab.run('dev', [goclient, url(LAB.internet.v4)]);
    assert.equal(lastJson(plain.stdout)?.path, 'wlan0', plain.stderr);
    const denied = await underExec(['--deny', 'wifi'], [goclient, url(LAB.internet.v6)]);
    assert.equal(lastJson(denied.stdout)?.path, 'wwan0', denied.stderr);
    // Binding itself to the denied device does not get it through either.
    const sneaky = await underExec(['--deny', 'wifi'], [goclient, '-bind', 'wlan0', '-timeout', '1s', url(LAB.internet.v4)]);
    assert.notEqual(sneaky.code, 0, sneaky.stdout);
    assert.equal(lastJson(sneaky.stdout), null);
  });

  it('a session that states needs only is a soft default: destinations reachable over some uplinks still go by them', async () => {
    // long-lived makes cellular the default; the MMSC is reachable over the MMS APN only.
    const internet = await underExec(['--need', 'long-lived'], [goclient, url(LAB.internet.v4)]);
    assert.equal(lastJson(internet.stdout)?.path, 'wwan0', internet.stderr);
    const mmsc = await underExec(['--need', 'long-lived'], [goclient, url(LAB.mmsc.v4)]);
    assert.equal(lastJson(mmsc.stdout)?.path, 'wwan1', mmsc.stderr);
    const office = await underExec(['--need', 'long-lived'], [goclient, url(LAB.office.v6)]);
    assert.equal(lastJson(office.stdout)?.path, 'tun0', office.stderr);
    // --uplink is a hard choice: the MMSC is not reachable over cellular.
    const pinned = await underExec(['--uplink', 'cellular'], [goclient, '-timeout', '1s', url(LAB.mmsc.v4)]);
    assert.notEqual(pinned.code, 0, pinned.stdout);
  });

  it('a session resolves names through its uplink\'s DNS: the LAN resolver in resolv.conf does not answer over cellular', async () => {
    // resolv.conf names the Wi-Fi router's resolver, which (like any home router's) answers its
    // own LAN only; a session's sockets, the resolver's included, leave by the session's uplink.
    const name = `http://${LAB.internet.host}/`;
    const curl = await underExec(['--uplink', 'cellular'], ['curl', '-sS', '--max-time', '3', name]);
    assert.equal(lastJson(curl.stdout)?.path, 'wwan0', curl.stderr);
    const go = await underExec(['--uplink', 'cellular'], [goclient, name], { uid: 65534 });
    assert.equal(lastJson(go.stdout)?.path, 'wwan0', go.stderr);
    // Outside a session nothing is redirected, and with the sessions gone so is the nat chain.
    const plain = await lab.run('dev', [goclient, name]);
    assert.equal(lastJson(plain.stdout)?.path, 'wlan0', plain.stderr);
    let table = '';
    for (let i = 0; i < 200; i++) { // the daemon sees a session end by inotify, then updates nftables (10 s guard)
      table = (await lab.run('dev', ['nft', 'list', 'table', 'inet', 'waymark'])).stdout;
      if (!table.includes('socket cgroupv2')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // The session's redirect is gone (the apps' redirect by mark, naming no cgroup, stays).
    assert.doesNotMatch(table, /socket cgroupv2/);
  });

  const ioUringOff = ((): string | false => {
    try {
      return readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim() === '0' ? false : 'io_uring is disabled here (kernel.io_uring_disabled)';
    } catch {
      return false; // kernels before 6.6 have no such switch
    }
  })();

  it('so does a program whose socket lives entirely in io_uring (socket, connect, send, recv)', { skip: ioUringOff }, async () => {
    const bin = join(publicRoot(), 'build', 'uring_client'); // also run as nobody
    execFileSync('cc', ['-Wall', '-Werror', '-O2', '-o', bin, join(PACKAGE_ROOT, 'test/fixtures/uring_client.c')]);
    const assigned = await underExec(['--uplink', 'wwan0'], [bin, LAB.internet.v4, '80'], { uid: 65534 });
    assert.equal(lastJson(assigned.stdout)?.path, 'wwan0', assigned.stderr);
    const plain = await lab.run('dev', [bin, LAB.internet.v4, '80']);
    assert.equal(lastJson(plain.stdout)?.path, 'wlan0', plain.stderr);
    const denied = await underExec(['--deny', 'wifi'], [bin, LAB.internet.v6, '80']);
    assert.equal(lastJson(denied.stdout)?.path, 'wwan0', denied.stderr);
    const sneaky = await underExec(['--deny', 'wifi'], [bin, '-bind', 'wlan0', '-timeout', '1', LAB.internet.v4, '80']);
    assert.notEqual(sneaky.code, 0, sneaky.stdout);
    assert.equal(lastJson(sneaky.stdout), null);
  });
});

describe('robustness', () => {
  const LOOP = `import socket,sys,time
host=sys.argv[1]; until=time.time()+float(sys.argv[2]); port=80
while time.time()<until:
  t=time.monotonic()
  try:
    s=socket.create_connection((host,port),2); s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); d=s.recv(4096); s.close()
    body=d.split(b"\\r\\n\\r\\n",1)[1].decode().strip() if b"\\r\\n\\r\\n" in d else "{}"
    print("ok", round((time.monotonic()-t)*1000,1), body, flush=True)
  except OSError as e:
    print("err", round((time.monotonic()-t)*1000,1), e.errno, flush=True)
  time.sleep(0.05)`;

  it('the daemon killed mid-run: programs keep going (fail open) without hanging; decisions resume after restart', async () => {
    const child = dev.lab.spawn('dev', [process.execPath, join(publicRoot(), 'dist/src/cli/main.js'), '--socket', dev.socket, 'exec', '--need', 'long-lived', '--',
      'python3', '-c', LOOP, LAB.mmsc.v4, '6']);
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise((r) => child.once('exit', r));
    const printed = (): number => out.split('\n').filter((l) => l !== '').length;
    const linesAfter = async (n: number): Promise<void> => {
      for (let i = 0; printed() < n; i++) {
        if (i > 400) assert.fail(`the loop printed ${printed()} lines, not ${n}: ${out}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    await linesAfter(1); // a first connect, decided by the daemon
    const before = (await status(dev)).decisions?.requests ?? 0;
    assert.ok(before > 0);
    await dev.stopDaemon('SIGKILL');
    await linesAfter(printed() + 3); // connects while the daemon is away
    await dev.startDaemon();
    await exited;
    const lines = out.trim().split('\n').map((l) => l.split(' '));
    // A connect that hung would end at the loop's 2 s socket timeout: 1.5 s tells the two apart
    // without counting a busy machine's slow turn as a hang.
    const slow = lines.filter((l) => Number(l[1]) > 1500);
    const failed = lines.filter((l) => l[0] !== 'ok');
    assert.ok(lines.length > 20, out);
    assert.deepEqual(slow, [], 'no connect hangs');
    assert.deepEqual(failed, [], 'fail open: every connect works');
    assert.ok(lines.every((l) => (JSON.parse(l.slice(2).join(' ')) as { path: string }).path === 'wwan1'), out);
    const s = await status(dev);
    assert.ok((s.decisions?.requests ?? 0) > 0, 'the restarted daemon answers decisions again');
    assert.equal(s.sessions?.length, 0, 'the session ended with its program (re-adopted across the restart)');
  });

  it('fail closed: new decisions fail fast while the daemon is away', async () => {
    await dev.stopDaemon('SIGKILL');
    try {
      const r = await lab.run('dev', ['env', `LD_PRELOAD=${join(publicRoot(), 'native/preload/libwaymark.so')}`, `WAYMARK_SOCKET=${dev.socket}`, 'WAYMARK_FAIL=closed',
        'curl', '-sS', '--max-time', '3', url(LAB.internet.v4)]);
      // Fast: connect() itself failed (curl's exit 7), not curl's --max-time 3 (exit 28).
      assert.equal(r.code, 7, r.stderr);
      const open = await lab.run('dev', ['env', `LD_PRELOAD=${join(publicRoot(), 'native/preload/libwaymark.so')}`, `WAYMARK_SOCKET=${dev.socket}`,
        'curl', '-sS', '--max-time', '3', url(LAB.internet.v4)]);
      assert.equal(lastJson(open.stdout)?.path, 'wlan0', 'fail open: default routing');
    } finally {
      await dev.startDaemon();
    }
  });

  it('1,000 connects from 16 threads, and forked + exec\'d children, all steered', async () => {
    const THREADS = `import socket,threading,os,sys,json
host=sys.argv[1]; res=[]; lock=threading.Lock()
def work():
  for i in range(63):
    s=socket.create_connection((host,80),3); s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); d=b""
    while True:
      c=s.recv(4096)
      if not c: break
      d+=c
    s.close()
    with lock: res.append(json.loads(d.split(b"\\r\\n\\r\\n",1)[1])["path"])
ts=[threading.Thread(target=work) for _ in range(16)]
[t.start() for t in ts]; [t.join() for t in ts]
kids=[]
for i in range(4):
  pid=os.fork()
  if pid==0:
    os.execvp("curl",["curl","-sS","--max-time","3","http://"+host+"/"])
  kids.append(pid)
codes=[os.waitpid(p,0)[1] for p in kids]
print(json.dumps({"paths":{p:res.count(p) for p in set(res)},"n":len(res),"kids":codes}))`;
    const r = await underExec(['--need', 'long-lived'], ['python3', '-c', THREADS, LAB.mmsc.v4], { uid: 65534 });
    const lines = r.stdout.trim().split('\n');
    const summary = JSON.parse(lines[lines.length - 1] ?? '{}') as { paths: Record<string, number>; n: number; kids: number[] };
    assert.deepEqual(summary, { paths: { wwan1: 1008 }, n: 1008, kids: [0, 0, 0, 0] }, r.stderr);
    const kids = lines.slice(0, -1).map((l) => (JSON.parse(l) as { path: string }).path);
    assert.deepEqual(kids, ['wwan1', 'wwan1', 'wwan1', 'wwan1']);
  });
});
