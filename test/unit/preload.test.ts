/**
 * libwaymark.so (LD_PRELOAD) against real programs in a throwaway network namespace.
 *
 * Needs root (to create the namespace; the root namespace is never touched) and a built library
 * (`make -C native`). The namespace `wm-pl-<pid>-<rand>` holds lo and `up0` (10.99.0.1/24,
 * fd00:99::1/64): a dummy interface, or one end of a veth pair where the kernel has no dummy
 * driver. The clients are python3 one-shots that print what getsockopt(SO_BINDTODEVICE) says
 * after the call under test.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { publicRoot } from '../../src/lab/public.js';

const LIB = fileURLToPath(new URL('../../../native/preload/libwaymark.so', import.meta.url));
const NS = `wm-pl-${process.pid}-${randomBytes(3).toString('hex')}`;
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const isRoot = process.getuid?.() === 0;
const hasIp = spawnSync('ip', ['-V']).status === 0;
const skip = !isRoot ? 'needs root for a network namespace' : !hasIp ? 'needs iproute2' : false;

/** The client. argv: MODE HOST PORT. Prints one JSON object. */
const CLIENT = String.raw`
import ctypes, errno, json, os, select, socket, sys

def dev(s):
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).split(b'\0', 1)[0].decode()

def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
# listeners: the plain address, or the dual-stack wildcard for v4-mapped destinations
lhost = '::' if host.startswith('::ffff:') else host
out = {}

def listener():
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((lhost, port))
    srv.listen(4)
    srv.settimeout(5)
    return srv

def receiver():
    r = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        r.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    r.bind((lhost, port))
    r.settimeout(5)
    return r

if mode == 'tcp':
    srv = listener()
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.settimeout(5)
    try:
        c.connect((host, port))
        conn, _ = srv.accept()
        c.sendall(b'ping')
        out = {'result': 'ok', 'dev': dev(c), 'echo': conn.recv(4).decode()}
    except OSError as e:
        out = {'result': name(e), 'dev': dev(c)}
elif mode == 'nonblocking':
    srv = listener()
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.setblocking(False)
    try:
        c.connect((host, port))
        first = 'ok'
    except BlockingIOError as e:
        first = name(e)
    select.select([], [c], [], 5)
    so_error = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    try:
        c.connect((host, port))  # again, as event loops do: EISCONN once established
        again = 'ok'
    except OSError as e:
        again = name(e)
    out = {'result': first, 'so_error': so_error, 'again': again, 'dev': dev(c)}
elif mode in ('sendto', 'sendmsg', 'sendmmsg', 'connected-udp'):
    r = receiver()
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        if mode == 'sendto':
            s.sendto(b'hi', (host, port))
        elif mode == 'sendmsg':
            s.sendmsg([b'hi'], [], 0, (host, port))
        elif mode == 'connected-udp':
            s.connect((host, port))
            s.send(b'hi')
        else:
            # sendmmsg through libc (resolved like any program would: the preload comes first)
            class iovec(ctypes.Structure):
                _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
            class msghdr(ctypes.Structure):
                _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32),
                            ('iov', ctypes.POINTER(iovec)), ('iovlen', ctypes.c_size_t),
                            ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                            ('flags', ctypes.c_int)]
            class mmsghdr(ctypes.Structure):
                _fields_ = [('hdr', msghdr), ('len', ctypes.c_uint)]
            assert fam == socket.AF_INET
            sin = ctypes.create_string_buffer(16)
            sin[0:2] = socket.AF_INET.to_bytes(2, 'little')
            sin[2:4] = port.to_bytes(2, 'big')
            sin[4:8] = socket.inet_aton(host)
            data = ctypes.create_string_buffer(b'hi', 2)
            iov = iovec(ctypes.cast(data, ctypes.c_void_p), 2)
            vec = (mmsghdr * 2)()
            for m in vec:
                m.hdr.name = ctypes.cast(sin, ctypes.c_void_p)
                m.hdr.namelen = 16
                m.hdr.iov = ctypes.pointer(iov)
                m.hdr.iovlen = 1
            libc = ctypes.CDLL(None, use_errno=True)
            n = libc.sendmmsg(s.fileno(), vec, 2, 0)
            if n < 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
            assert n == 2, n
        out = {'result': 'ok', 'dev': dev(s), 'got': r.recv(16).decode()}
    except OSError as e:
        out = {'result': name(e), 'dev': dev(s)}
elif mode == 'fork':
    srv = listener()
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect((host, port))
        os.write(wr, dev(c).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    conn, _ = srv.accept()
    out = {'result': 'ok', 'dev': os.read(rd, 64).decode()}
print(json.dumps(out))
`;

interface ClientResult {
  result: string;
  dev: string;
  [key: string]: unknown;
}

interface RunOptions {
  env?: Record<string, string>;
  /** run as nobody (uid/gid 65534, no supplementary groups) */
  unprivileged?: boolean;
  /** LD_PRELOAD the library (default true) */
  preload?: boolean;
}

function runClient(mode: string, host: string, port: number, opts: RunOptions = {}) {
  const env = {
    // Another user must be able to read the library: use the public copy for them.
    ...(opts.preload === false ? {} : { LD_PRELOAD: opts.unprivileged ? path.join(publicRoot(), 'native/preload/libwaymark.so') : LIB }),
    WAYMARK_DEVICE: 'up0',
    ...opts.env,
  };
  const envArgs = Object.entries(env)
    .filter(([, v]) => v !== '')
    .map(([k, v]) => `${k}=${v}`);
  const user = opts.unprivileged ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : [];
  const argv = ['netns', 'exec', NS, ...user, 'env', '-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`,
    ...envArgs, PYTHON, '-c', CLIENT, mode, host, String(port)];
  const r = spawnSync('ip', argv, { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.error, undefined, String(r.error));
  assert.equal(r.status, 0, `client ${mode} ${host} failed:\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return { out: JSON.parse(lines[lines.length - 1] ?? '{}') as ClientResult, stderr: r.stderr };
}

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

let nsCreated = false;
function deleteNamespace(): void {
  if (nsCreated) spawnSync('ip', ['netns', 'del', NS]);
  nsCreated = false;
}

let port = 20000;
const nextPort = () => port++;

describe('libwaymark.so (LD_PRELOAD)', { skip }, () => {
  before(() => {
    assert.ok(existsSync(LIB), `${LIB} missing: run \`make -C native\` first`);
    process.once('exit', deleteNamespace); // also when the run is interrupted
    try {
      ip('netns', 'add', NS);
      nsCreated = true;
      ip('-n', NS, 'link', 'set', 'lo', 'up');
      try {
        ip('-n', NS, 'link', 'add', 'up0', 'type', 'dummy');
      } catch {
        // some kernels (this project's VMs) ship without the dummy driver
        ip('-n', NS, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up0p');
        ip('-n', NS, 'link', 'set', 'up0p', 'up');
      }
      ip('-n', NS, 'addr', 'add', '10.99.0.1/24', 'dev', 'up0');
      ip('-n', NS, 'addr', 'add', 'fd00:99::1/64', 'dev', 'up0', 'nodad');
      ip('-n', NS, 'link', 'set', 'up0', 'up');
    } catch (e) {
      deleteNamespace();
      throw e;
    }
  });
  after(deleteNamespace);

  it('exports only the hooks', { skip: spawnSync('nm', ['-V']).status !== 0 && 'no nm' }, () => {
    const r = spawnSync('nm', ['-D', '--defined-only', LIB], { encoding: 'utf8' });
    const names = r.stdout.trim().split('\n').map((l) => l.split(' ').pop()).sort();
    assert.deepEqual(names, ['connect', 'sendmmsg', 'sendmsg', 'sendto']);
  });

  it('binds a TCP connect to a non-loopback destination to the device', () => {
    const { out } = runClient('tcp', '10.99.0.1', nextPort());
    assert.deepEqual(out, { result: 'ok', dev: 'up0', echo: 'ping' });
  });

  it('binds IPv6 and IPv4-mapped IPv6 destinations', () => {
    assert.equal(runClient('tcp', 'fd00:99::1', nextPort()).out.dev, 'up0');
    assert.equal(runClient('tcp', '::ffff:10.99.0.1', nextPort()).out.dev, 'up0');
  });

  it('leaves loopback alone: 127.0.0.1, ::1, ::ffff:127.0.0.1', () => {
    for (const host of ['127.0.0.1', '127.3.2.1', '::1', '::ffff:127.0.0.1']) {
      const { out } = runClient('tcp', host, nextPort());
      assert.deepEqual(out, { result: 'ok', dev: '', echo: 'ping' }, host);
    }
  });

  it('does nothing without WAYMARK_DEVICE, or without the library', () => {
    assert.equal(runClient('tcp', '10.99.0.1', nextPort(), { env: { WAYMARK_DEVICE: '' } }).out.dev, '');
    assert.equal(runClient('tcp', '10.99.0.1', nextPort(), { preload: false }).out.dev, '');
  });

  it('binds unconnected UDP on sendto, sendmsg and sendmmsg, and connected UDP on connect', () => {
    for (const mode of ['sendto', 'sendmsg', 'sendmmsg', 'connected-udp']) {
      const { out } = runClient(mode, '10.99.0.1', nextPort());
      assert.equal(out.result, 'ok', mode);
      assert.equal(out.dev, 'up0', mode);
      assert.equal(out.got, 'hi', mode);
    }
    const { out } = runClient('sendto', '127.0.0.1', nextPort());
    assert.equal(out.dev, '', 'UDP to loopback stays unbound');
  });

  it('keeps non-blocking connect semantics (EINPROGRESS, completion, repeated connect)', () => {
    const { out } = runClient('nonblocking', '10.99.0.1', nextPort());
    const { out: baseline } = runClient('nonblocking', '10.99.0.1', nextPort(), { preload: false });
    assert.ok(out.result === 'EINPROGRESS' || out.result === 'ok', String(out.result));
    assert.equal(out.so_error, 0);
    // CPython reports the second connect's EISCONN as success; whatever it is, it is unchanged
    assert.deepEqual({ ...out, dev: '' }, baseline);
    assert.equal(out.dev, 'up0');
  });

  it('fails closed on a missing device (ENODEV), open with WAYMARK_FAIL=open', () => {
    const closed = runClient('tcp', '10.99.0.1', nextPort(), { env: { WAYMARK_DEVICE: 'nosuch0' } });
    assert.deepEqual(closed.out, { result: 'ENODEV', dev: '' });
    const udp = runClient('sendto', '10.99.0.1', nextPort(), { env: { WAYMARK_DEVICE: 'nosuch0' } });
    assert.deepEqual(udp.out, { result: 'ENODEV', dev: '' });
    const open = runClient('tcp', '10.99.0.1', nextPort(), {
      env: { WAYMARK_DEVICE: 'nosuch0', WAYMARK_FAIL: 'open' },
    });
    assert.deepEqual(open.out, { result: 'ok', dev: '', echo: 'ping' });
    const tooLong = runClient('tcp', '10.99.0.1', nextPort(), { env: { WAYMARK_DEVICE: 'x'.repeat(20) } });
    assert.equal(tooLong.out.result, 'ENODEV', 'an impossible name is never truncated into a real one');
  });

  it('logs one "waymark:" line per decision only under WAYMARK_DEBUG', () => {
    const quiet = runClient('tcp', '10.99.0.1', nextPort());
    assert.equal(quiet.stderr, '');
    const loud = runClient('tcp', '10.99.0.1', nextPort(), { env: { WAYMARK_DEBUG: '1' } });
    const lines = loud.stderr.trim().split('\n');
    assert.ok(lines.length >= 2 && lines.every((l) => l.startsWith('waymark: ')), loud.stderr);
    assert.ok(lines.some((l) => /fd \d+ to 10\.99\.0\.1:\d+ bound to up0$/.test(l)), loud.stderr);
  });

  it('follows fork()', () => {
    assert.deepEqual(runClient('fork', '10.99.0.1', nextPort()).out, { result: 'ok', dev: 'up0' });
  });

  it('works unprivileged (SO_BINDTODEVICE needs no capability since Linux 5.7)', {
    skip: !existsSync(PYTHON) && `${PYTHON} not reachable for nobody`,
  }, () => {
    const who = spawnSync('ip', ['netns', 'exec', NS, 'setpriv', '--reuid=65534', '--regid=65534',
      '--clear-groups', 'id', '-u'], { encoding: 'utf8' });
    assert.equal(who.stdout.trim(), '65534');
    assert.deepEqual(runClient('tcp', '10.99.0.1', nextPort(), { unprivileged: true }).out, {
      result: 'ok',
      dev: 'up0',
      echo: 'ping',
    });
    assert.equal(runClient('sendto', '10.99.0.1', nextPort(), { unprivileged: true }).out.dev, 'up0');
  });
});
