/**
 * libwaymark.so (LD_PRELOAD) against real programs in a throwaway network namespace, asking a
 * fake daemon that runs in this test process.
 *
 * Needs root (to create the namespace; the root namespace is never touched) and a built library
 * (`make -C native`). The namespace `wm-pl-<pid>-<rand>` holds lo, `up0` (10.99.0.1/24,
 * fd00:99::1/64) and `up1` (10.98.0.1/24): dummy interfaces, or one end of veth pairs where the
 * kernel has no dummy driver; up1 also has fd00:98::1/64, and an `oif up0` rule routes that prefix
 * over up0 as Waymark's rule ladder would. The fake daemon listens on decide.sock in a temporary directory
 * (reached by path, so across namespaces), answers with src/decision/wire.ts, counts requests
 * and keeps a generation file the clients can bump. The clients are python3 programs that run a
 * plan of steps and print what getsockopt/packet captures saw.
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { publicRoot } from '../../src/lab/public.js';
import * as native from '../../src/native/index.js';
import * as wire from '../../src/decision/wire.js';

const LIB = fileURLToPath(new URL('../../../native/preload/libwaymark.so', import.meta.url));
const NS = `wm-pl-${process.pid}-${randomBytes(3).toString('hex')}`;
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const isRoot = process.getuid?.() === 0;
const hasIp = spawnSync('ip', ['-V']).status === 0;
const skip = !isRoot ? 'needs root for a network namespace' : !hasIp ? 'needs iproute2' : false;
const EACCES = 13;
const ENETUNREACH = 101;

// ---------------------------------------------------------------------------------------------
// The fake daemon

type DecideFields = Partial<Omit<wire.DecideResponse, 'seq'>>;
/**
 * An answer, no answer, raw bytes, an answer sent `later` ms after the request, or one `held`:
 * sent on the same connection just before the answer to the next request there (never, if no
 * request follows). A WM_PENDING saying `pendingMs` may go first at once.
 */
type DecideAnswer =
  | DecideFields | 'silent' | Buffer
  | { later: number; answer: DecideFields; pendingMs?: number }
  | { held: DecideFields; pendingMs?: number };
type ResolveAnswer = Partial<Omit<wire.ResolveResponse, 'seq'>> | 'silent';
type Seen<T> = T & { pid: number; conn: number };

class FakeDaemon {
  readonly dir = mkdtempSync(path.join(tmpdir(), 'wm-fake-'));
  /** What WAYMARK_SOCKET says: the library looks for decide.sock next to it. */
  readonly socketEnv = path.join(this.dir, 'waymarkd.sock');
  readonly genPath = path.join(this.dir, wire.GENERATION_FILE);
  readonly ifindex = new Map<string, number>();
  decides: Seen<wire.DecideRequest>[] = [];
  resolves: Seen<wire.ResolveRequest>[] = [];
  connections: { fd: number; pid: number }[] = [];
  decide: (r: wire.DecideRequest) => DecideAnswer = () => this.steer('up0');
  resolve: (r: wire.ResolveRequest) => ResolveAnswer = () => ({ status: wire.WM_RESOLVE.NOT_OURS });
  private readonly listenFd: number;
  private readonly watchers = new Map<number, native.Watcher>();
  /** Answers held per connection (fd), sent before its next answer. */
  private readonly held = new Map<number, Buffer[]>();
  private idleWaiters: (() => void)[] = [];

  constructor() {
    chmodSync(this.dir, 0o755);
    const g = Buffer.alloc(4096);
    g.writeUInt32LE(1, 0);
    writeFileSync(this.genPath, g, { mode: 0o644 });
    this.listenFd = native.unixListen(path.join(this.dir, wire.DECIDE_SOCKET), 'seqpacket', 128, 0o666);
    this.watchers.set(this.listenFd, native.watch(this.listenFd, () => this.acceptAll(), { unref: true }));
  }

  steer(ifname: string, more: Partial<wire.DecideResponse> = {}): Partial<wire.DecideResponse> {
    return { action: wire.WM_ACTION.STEER, ifname, ifindex: this.ifindex.get(ifname) ?? 0, uplink: `via-${ifname}`, ttlMs: 60_000, ...more };
  }

  generation(): number {
    return readFileSync(this.genPath).readUInt32LE(0);
  }

  /** One aligned 4-byte store at offset 0, as the daemon does. */
  bump(): void {
    const fd = openSync(this.genPath, 'r+');
    const b = Buffer.alloc(4);
    b.writeUInt32LE(this.generation() + 1, 0);
    writeSync(fd, b, 0, 4, 0);
    closeSync(fd);
  }

  reset(): void {
    this.decides = [];
    this.resolves = [];
    this.connections = [];
    this.decide = () => this.steer('up0');
    this.resolve = () => ({ status: wire.WM_RESOLVE.NOT_OURS });
  }

  private acceptAll(): void {
    for (;;) {
      const fd = native.accept(this.listenFd);
      if (fd === null) return;
      const pid = native.peerCred(fd).pid;
      this.connections.push({ fd, pid });
      this.watchers.set(fd, native.watch(fd, () => this.serve(fd, pid), { unref: true }));
    }
  }

  private drop(fd: number): void {
    this.watchers.get(fd)?.stop();
    this.watchers.delete(fd);
    this.held.delete(fd);
    native.close(fd);
    if (this.watchers.size === 1) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Resolves once every client connection has been read to its end (EOF), so every request a
   * finished client sent has been counted: the event to wait for before counting requests.
   */
  idle(guardMs = 20_000): Promise<void> {
    if (this.watchers.size <= 1) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const guard = setTimeout(() => reject(new Error(`fake daemon: ${this.watchers.size - 1} connection(s) still open after the client exited`)), guardMs);
      this.idleWaiters.push(() => {
        clearTimeout(guard);
        resolve();
      });
    });
  }

  /** Answers what is queued on one connection (`conn` in the records is its fd: unique while open). */
  private serve(fd: number, pid: number): void {
    for (;;) {
      let msg: Buffer | null;
      try {
        msg = native.recv(fd, 4096);
      } catch {
        this.drop(fd);
        return;
      }
      if (msg === null) return;
      if (msg.length === 0) {
        this.drop(fd);
        return;
      }
      const h = wire.readHeader(msg);
      let out: Buffer | undefined;
      if (h?.type === wire.WM_TYPE.DECIDE) {
        const r = wire.decodeDecideRequest(msg);
        if (!r) continue;
        this.decides.push({ ...r, pid, conn: fd });
        const a = this.decide(r);
        if (a === 'silent') continue;
        const encode = (f: DecideFields): Buffer => wire.encodeDecideResponse({
          seq: r.seq, action: wire.WM_ACTION.PASS, err: 0, ifindex: 0, mark: 0, ttlMs: 60_000,
          generation: this.generation(), ifname: '', uplink: '', ...f,
        });
        if ('later' in a || 'held' in a) {
          if (a.pendingMs !== undefined) native.send(fd, wire.encodePending({ seq: r.seq, waitMs: a.pendingMs }));
          if ('held' in a) {
            this.held.set(fd, [...(this.held.get(fd) ?? []), encode(a.held)]);
            continue;
          }
          const late = encode(a.answer);
          setTimeout(() => { try { native.send(fd, late); } catch { /* gone */ } }, a.later).unref();
          continue;
        }
        out = Buffer.isBuffer(a) ? a : encode(a);
      } else if (h?.type === wire.WM_TYPE.RESOLVE) {
        const r = wire.decodeResolveRequest(msg);
        if (!r) continue;
        this.resolves.push({ ...r, pid, conn: fd });
        const a = this.resolve(r);
        if (a === 'silent') continue;
        out = wire.encodeResolveResponse({
          seq: r.seq, status: wire.WM_RESOLVE.RESOLVED, ttlMs: 60_000, generation: this.generation(),
          uplink: 'via-up0', addrs: [], ...a,
        });
      }
      if (out) {
        try {
          for (const h of this.held.get(fd) ?? []) native.send(fd, h);
          this.held.delete(fd);
          native.send(fd, out);
        } catch {
          this.drop(fd);
          return;
        }
      }
    }
  }

  stop(): void {
    for (const fd of [...this.watchers.keys()]) this.drop(fd);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The client: runs a plan (JSON list of steps), prints a JSON list of results.

const CLIENT = String.raw`
import ctypes, errno, json, os, select, socket, struct, sys, threading, time

def dev(s):
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).split(b'\0', 1)[0].decode()

def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def fam(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET

listeners = {}
def listener(host, port):
    key = (host, port)
    if key in listeners:
        return listeners[key]
    f = fam(host)
    srv = socket.socket(f, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if f == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(('::' if host.startswith('::ffff:') else host, port))
    srv.listen(1024)
    def loop():
        while True:
            try:
                c, _ = srv.accept()
                c.close()
            except OSError:
                return
    threading.Thread(target=loop, daemon=True).start()
    listeners[key] = srv
    return srv

def tcp(host, port, timeout=5):
    listener(host, port)
    c = socket.socket(fam(host), socket.SOCK_STREAM)
    c.settimeout(timeout)
    t = time.monotonic()
    try:
        c.connect((host, port))
        r = 'ok'
    except OSError as e:
        r = name(e)
    ms = (time.monotonic() - t) * 1000
    d = dev(c)
    c.close()
    return {'result': r, 'dev': d, 'ms': round(ms, 2)}

def receiver(host, port):
    f = fam(host)
    r = socket.socket(f, socket.SOCK_DGRAM)
    if f == socket.AF_INET6:
        r.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    r.bind(('::' if host.startswith('::ffff:') else host, port))
    r.settimeout(5)
    return r

def sendmmsg(s, host, port, count):
    class iovec(ctypes.Structure):
        _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
    class msghdr(ctypes.Structure):
        _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32),
                    ('iov', ctypes.POINTER(iovec)), ('iovlen', ctypes.c_size_t),
                    ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t), ('flags', ctypes.c_int)]
    class mmsghdr(ctypes.Structure):
        _fields_ = [('hdr', msghdr), ('len', ctypes.c_uint)]
    sin = ctypes.create_string_buffer(16)
    sin[0:2] = socket.AF_INET.to_bytes(2, 'little')
    sin[2:4] = port.to_bytes(2, 'big')
    sin[4:8] = socket.inet_aton(host)
    data = ctypes.create_string_buffer(b'hi', 2)
    iov = iovec(ctypes.cast(data, ctypes.c_void_p), 2)
    vec = (mmsghdr * count)()
    for m in vec:
        m.hdr.name = ctypes.cast(sin, ctypes.c_void_p)
        m.hdr.namelen = 16
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    libc = ctypes.CDLL(None, use_errno=True)
    n = libc.sendmmsg(s.fileno(), vec, count, 0)
    if n < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return n, [m.len for m in vec]

def udp(mode, host, port):
    r = receiver(host, port)
    s = socket.socket(fam(host), socket.SOCK_DGRAM)
    out = {}
    try:
        if mode == 'sendto':
            s.sendto(b'hi', (host, port))
        elif mode == 'sendmsg':
            s.sendmsg([b'hi'], [], 0, (host, port))
        elif mode == 'connected':
            s.connect((host, port))
            s.send(b'hi')
        else:
            n, lens = sendmmsg(s, host, port, 2)
            out['sent'] = n
            out['lens'] = lens
        out.update({'result': 'ok', 'dev': dev(s), 'got': r.recv(16).decode()})
    except OSError as e:
        out.update({'result': name(e), 'dev': dev(s)})
    return out

def capture(devs):
    caps = {}
    for d in devs:
        p = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))
        p.bind((d, 0))
        p.setblocking(False)
        caps[d] = p
    return caps

def captured(caps, port):
    # payloads of UDP datagrams to 'port' seen leaving each device
    seen = {}
    time.sleep(0.05)
    for d, p in caps.items():
        while True:
            try:
                data, addr = p.recvfrom(4096)
            except BlockingIOError:
                break
            if addr[2] != socket.PACKET_OUTGOING:
                continue
            if addr[1] == 0x0800 and len(data) >= 28 and data[9] == 17:
                ihl = (data[0] & 15) * 4
                udp_ = data[ihl:]
            elif addr[1] == 0x86dd and len(data) >= 48 and data[6] == 17:
                udp_ = data[40:]
            else:
                continue
            if int.from_bytes(udp_[2:4], 'big') == port:
                seen[udp_[8:].decode()] = d
    return seen

def udp_multi(sends, port, family):
    caps = capture(['up0', 'up1'])
    lo = receiver('127.0.0.1', port)
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    results = []
    for i, host in enumerate(sends):
        try:
            s.sendto(('m%d' % i).encode(), (host, port))
            results.append('ok')
        except OSError as e:
            results.append(name(e))
    got_lo = []
    lo.settimeout(0.5)
    try:
        while True:
            got_lo.append(lo.recv(64).decode())
    except OSError:
        pass
    return {'results': results, 'seen': captured(caps, port), 'loopback': got_lo, 'dev': dev(s)}

def bump(path):
    with open(path, 'r+b') as f:
        g = struct.unpack('<I', f.read(4))[0]
        f.seek(0)
        f.write(struct.pack('<I', g + 1))
    return g + 1

def nonblocking(host, port, gen_file):
    # A listener of its own that keeps the accepted end open: the socket under test must stay
    # connected (then half-closed) rather than follow a peer that hangs up.
    srv = socket.socket(fam(host), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    c = socket.socket(fam(host), socket.SOCK_STREAM)
    c.setblocking(False)
    try:
        c.connect((host, port))
        first = 'ok'
    except BlockingIOError as e:
        first = name(e)
    select.select([], [c], [], 5)
    so_error = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    peer, _ = srv.accept()
    try:
        c.connect((host, port))  # again, as event loops do
        again = 'ok'
    except OSError as e:
        again = name(e)
    # Shut down both ways, a TCP socket polls POLLHUP like one that never connected (and POLLIN):
    # still not one to steer, even with the cached answer voided (a new generation).
    c.shutdown(socket.SHUT_RDWR)
    bump(gen_file)
    try:
        c.connect((host, port))
        after_shutdown = 'ok'
    except OSError as e:
        after_shutdown = name(e)
    state = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    peer.close()
    srv.close()
    return {'result': first, 'so_error': so_error, 'again': again, 'after_shutdown': after_shutdown,
            'state_after_shutdown': state, 'dev': dev(c)}

def threads(host, port, n, per):
    for t in range(4):
        listener(host, port + t)
    devs = {}
    lock = threading.Lock()
    def work(i):
        for k in range(per):
            r = tcp(host, port + (i % 4))
            key = r['result'] + ':' + r['dev']
            with lock:
                devs[key] = devs.get(key, 0) + 1
    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts: t.start()
    for t in ts: t.join()
    return {'devs': devs}

CHILD = '''
import json, socket, sys
c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
c.settimeout(5)
c.connect((sys.argv[1], int(sys.argv[2])))
print(json.dumps({'dev': c.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).split(b'\\0', 1)[0].decode()}))
'''

def fork(host, port, do_exec):
    listener(host, port)
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        if do_exec:
            os.dup2(wr, 1)
            os.execv(sys.executable, [sys.executable, '-c', CHILD, host, str(port)])
        try:
            inherited = 0  # daemon connections (seqpacket sockets) inherited from the parent
            for fd in map(int, os.listdir('/proc/self/fd')):
                try:
                    s = socket.socket(fileno=fd)
                    inherited += s.type == socket.SOCK_SEQPACKET
                    s.detach()
                except OSError:
                    pass
            r = tcp(host, port)
            r['inherited'] = inherited
            os.write(wr, json.dumps(r).encode())
        finally:
            os._exit(0)
    os.close(wr)
    out = b''
    while True:
        b = os.read(rd, 4096)
        if not b:
            break
        out += b
    os.waitpid(pid, 0)
    res = json.loads(out.decode())
    res['pid'] = pid
    return res

def clobber():
    # The program closes every descriptor it does not know, and puts a pipe on their numbers
    rd, wr = os.pipe()
    os.set_blocking(rd, False)
    for fd in range(3, 64):
        if fd not in (rd, wr):
            try:
                os.dup2(wr, fd)
            except OSError:
                pass
    listeners.clear()
    return {'rd': rd}

def pipe_data(rd):
    try:
        return len(os.read(rd, 4096))
    except BlockingIOError:
        return 0

def gai(host, port, family):
    f = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[family]
    try:
        r = socket.getaddrinfo(host, port, f, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
        return {'result': 'ok', 'addrs': [a[4][0] for a in r], 'canon': r[0][3], 'ports': sorted(set(a[4][1] for a in r))}
    except socket.gaierror as e:
        names = {v: k for k, v in vars(socket).items() if k.startswith('EAI_')}
        return {'result': names.get(e.errno, str(e.errno))}

def ghbn(host):
    libc = ctypes.CDLL(None)
    class hostent(ctypes.Structure):
        _fields_ = [('name', ctypes.c_char_p), ('aliases', ctypes.c_void_p), ('addrtype', ctypes.c_int),
                    ('length', ctypes.c_int), ('addr_list', ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)))]
    libc.gethostbyname.restype = ctypes.POINTER(hostent)
    h = libc.gethostbyname(host.encode())
    if not h:
        return {'result': 'none'}
    addrs = []
    i = 0
    while h.contents.addr_list[i]:
        addrs.append(socket.inet_ntoa(bytes(h.contents.addr_list[i][k] for k in range(4))))
        i += 1
    return {'result': 'ok', 'name': h.contents.name.decode(), 'addrs': addrs}

out = []
state = {}
for step in json.loads(sys.argv[1]):
    op = step['op']
    if op == 'tcp':
        out.append(tcp(step['host'], step['port']))
    elif op == 'udp':
        out.append(udp(step['mode'], step['host'], step['port']))
    elif op == 'udp-multi':
        out.append(udp_multi(step['sends'], step['port'], step.get('family', 4)))
    elif op == 'nonblocking':
        out.append(nonblocking(step['host'], step['port'], step['file']))
    elif op == 'listen_decide':
        # This process becomes "the daemon": it listens on the decide socket (and never answers).
        l = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        l.bind(step['path'])
        l.listen(4)
        state['decide_listener'] = l
        out.append({})
    elif op == 'sleep':
        time.sleep(step['s'])
        out.append({})
    elif op == 'bump':
        out.append({'generation': bump(step['file'])})
    elif op == 'threads':
        out.append(threads(step['host'], step['port'], step['threads'], step['per']))
    elif op == 'fork':
        out.append(fork(step['host'], step['port'], step.get('exec', False)))
    elif op == 'clobber':
        state.update(clobber())
        out.append({})
    elif op == 'pipe':
        out.append({'bytes': pipe_data(state['rd'])})
    elif op == 'gai':
        out.append(gai(step['host'], step.get('port', 80), step.get('family', 0)))
    elif op == 'ghbn':
        out.append(ghbn(step['host']))
print(json.dumps(out))
`;

type Step = Record<string, unknown> & { op: string };
interface Result {
  result: string;
  dev: string;
  ms: number;
  [key: string]: unknown;
}

interface RunOptions {
  /** Extra environment; '' removes a variable (e.g. WAYMARK_TIMEOUT_MS: '' for the library's default). */
  env?: Record<string, string>;
  /** run as nobody (uid/gid 65534, no supplementary groups) */
  unprivileged?: boolean;
  /** LD_PRELOAD the library (default true) */
  preload?: boolean;
  /** WAYMARK_SOCKET (default: the fake daemon's) */
  socket?: string;
}

let daemon: FakeDaemon;

/**
 * How long the library waits for the fake daemon's answer unless a test says otherwise: a guard
 * against a hang, not a window. The library's 50 ms default is a production budget; the fake
 * daemon answers from this test's event loop, which a busy machine may not run for that long.
 * A test that needs a request to time out makes the daemon never answer it ('silent', `held`),
 * so the outcome never depends on which of two clocks runs first.
 */
const TEST_TIMEOUT_MS = '10000';

/**
 * Runs a plan asynchronously (the fake daemon answers from this event loop meanwhile); resolves
 * once the client has exited and the fake daemon has read everything it sent.
 */
async function run(plan: Step[], opts: RunOptions = {}): Promise<{ out: Result[]; stderr: string }> {
  const env: Record<string, string> = {
    ...(opts.preload === false ? {} : { LD_PRELOAD: opts.unprivileged ? path.join(publicRoot(), 'native/preload/libwaymark.so') : LIB }),
    WAYMARK_SOCKET: opts.socket ?? daemon.socketEnv,
    WAYMARK_TIMEOUT_MS: TEST_TIMEOUT_MS,
    ...opts.env,
  };
  const envArgs = Object.entries(env).filter(([, v]) => v !== '').map(([k, v]) => `${k}=${v}`);
  const user = opts.unprivileged ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : [];
  const argv = ['netns', 'exec', NS, ...user, 'env', '-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`,
    ...envArgs, PYTHON, '-c', CLIENT, JSON.stringify(plan)];
  const child = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  assert.equal(code, 0, `client failed (${code}):\n${stderr}`);
  await daemon.idle();
  const lines = stdout.trim().split('\n');
  return { out: JSON.parse(lines[lines.length - 1] ?? '[]') as Result[], stderr };
}

async function one(step: Step, opts: RunOptions = {}): Promise<Result & { stderr: string }> {
  const { out, stderr } = await run([step], opts);
  assert.ok(out[0]);
  return { ...out[0], stderr };
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

function addLink(name: string): void {
  try {
    ip('-n', NS, 'link', 'add', name, 'type', 'dummy');
  } catch {
    // some kernels (this project's VMs) ship without the dummy driver
    ip('-n', NS, 'link', 'add', name, 'type', 'veth', 'peer', 'name', `${name}p`);
    ip('-n', NS, 'link', 'set', `${name}p`, 'up');
  }
}

// Below the ephemeral range (32768+), where client sockets of earlier steps may linger.
let port = 20000;
const nextPort = (): number => port++;
const A = '10.99.0.1';

describe('libwaymark.so (LD_PRELOAD)', { skip }, () => {
  before(() => {
    assert.ok(existsSync(LIB), `${LIB} missing: run \`make -C native\` first`);
    process.once('exit', deleteNamespace); // also when the run is interrupted
    try {
      ip('netns', 'add', NS);
      nsCreated = true;
      ip('-n', NS, 'link', 'set', 'lo', 'up');
      addLink('up0');
      addLink('up1');
      ip('-n', NS, 'addr', 'add', '10.99.0.1/24', 'dev', 'up0');
      ip('-n', NS, 'addr', 'add', 'fd00:99::1/64', 'dev', 'up0', 'nodad');
      ip('-n', NS, 'addr', 'add', '10.98.0.1/24', 'dev', 'up1');
      ip('-n', NS, 'addr', 'add', 'fd00:98::1/64', 'dev', 'up1', 'nodad');
      ip('-n', NS, 'link', 'set', 'up0', 'up');
      ip('-n', NS, 'link', 'set', 'up1', 'up');
      // IPv6 has no on-link guess for a lookup bound to a device: like Waymark's ladder, an
      // `oif up0` rule selects a table that routes up1's prefix over up0.
      ip('-n', NS, '-6', 'route', 'add', 'fd00:98::/64', 'dev', 'up0', 'table', '100');
      ip('-n', NS, '-6', 'rule', 'add', 'oif', 'up0', 'lookup', '100', 'pref', '100');
      // Datagrams to 10.98.0.2/.3 and fd00:98::2 leave at once (no neighbour discovery),
      // whichever device they are sent by.
      for (const dev of ['up0', 'up1']) {
        for (const host of ['10.98.0.2', '10.98.0.3', 'fd00:98::2']) {
          spawnSync('ip', ['-n', NS, 'neigh', 'replace', host, 'lladdr', '02:00:00:00:00:02', 'dev', dev, 'nud', 'permanent']);
        }
      }
    } catch (e) {
      deleteNamespace();
      throw e;
    }
    daemon = new FakeDaemon();
    const links = JSON.parse(spawnSync('ip', ['-n', NS, '-j', 'link', 'show'], { encoding: 'utf8' }).stdout) as { ifname: string; ifindex: number }[];
    for (const l of links) daemon.ifindex.set(l.ifname, l.ifindex);
  });
  after(() => {
    daemon?.stop();
    deleteNamespace();
  });
  beforeEach(() => daemon?.reset());

  it('exports only the hooks', { skip: spawnSync('nm', ['-V']).status !== 0 && 'no nm' }, () => {
    const r = spawnSync('nm', ['-D', '--defined-only', LIB], { encoding: 'utf8' });
    const names = r.stdout.trim().split('\n').map((l) => l.split(' ').pop()).sort();
    assert.deepEqual(names, ['connect', 'getaddrinfo', 'gethostbyname', 'gethostbyname2', 'gethostbyname2_r',
      'gethostbyname_r', 'sendmmsg', 'sendmsg', 'sendto']);
  });

  it('STEER binds a TCP connect to the answered device, and the request says what was asked', async () => {
    const p = nextPort();
    const r = await one({ op: 'tcp', host: A, port: p }, {
      env: { WAYMARK_NEEDS: 'cheapest,no-roaming', WAYMARK_UPLINK: 'mms', WAYMARK_DESTINATION: 'mmsc' },
    });
    assert.equal(r.result, 'ok');
    assert.equal(r.dev, 'up0');
    assert.equal(r.stderr, '');
    assert.equal(daemon.decides.length, 1);
    const q = daemon.decides[0]!;
    assert.deepEqual({ family: q.family, proto: q.proto, port: q.port, addr: [...q.addr], needs: q.needs, uplink: q.uplink, destination: q.destination },
      { family: 4, proto: 'tcp', port: p, addr: [10, 99, 0, 1], needs: 0x08 | 0x10, uplink: 'mms', destination: 'mmsc' });
  });

  it('steers IPv6 and IPv4-mapped destinations, asking with the IPv4 address for the latter', async () => {
    const { out } = await run([{ op: 'tcp', host: 'fd00:99::1', port: nextPort() }, { op: 'tcp', host: '::ffff:10.99.0.1', port: nextPort() }]);
    assert.deepEqual(out.map((r) => [r.result, r.dev]), [['ok', 'up0'], ['ok', 'up0']]);
    assert.deepEqual(daemon.decides.map((q) => q.family), [6, 4]);
    assert.deepEqual([...daemon.decides[1]!.addr], [10, 99, 0, 1]);
  });

  it('leaves loopback alone without asking: 127.0.0.1, ::1, ::ffff:127.0.0.1', async () => {
    const { out } = await run(['127.0.0.1', '127.3.2.1', '::1', '::ffff:127.0.0.1'].map((host) => ({ op: 'tcp', host, port: nextPort() })));
    assert.deepEqual(out.map((r) => [r.result, r.dev]), [['ok', ''], ['ok', ''], ['ok', ''], ['ok', '']]);
    assert.equal(daemon.decides.length, 0);
  });

  it('PASS leaves the socket alone', async () => {
    daemon.decide = () => ({ action: wire.WM_ACTION.PASS });
    const r = await one({ op: 'tcp', host: A, port: nextPort() });
    assert.deepEqual([r.result, r.dev], ['ok', '']);
    assert.equal(daemon.decides.length, 1);
  });

  it('DENY fails with the answered errno and says so on stderr, debug or not', async () => {
    const p1 = nextPort();
    const p2 = nextPort();
    daemon.decide = (q) => ({ action: wire.WM_ACTION.DENY, err: q.port === p1 ? EACCES : ENETUNREACH, uplink: 'mms' });
    const { out, stderr } = await run([{ op: 'tcp', host: A, port: p1 }, { op: 'tcp', host: A, port: p2 }, { op: 'tcp', host: A, port: p2 }]);
    assert.deepEqual(out.map((r) => [r.result, r.dev]), [['EACCES', ''], ['ENETUNREACH', ''], ['ENETUNREACH', '']]);
    assert.deepEqual(stderr.trim().split('\n'), [
      `waymark: 10.99.0.1:${p1} refused: denied by policy (uplink mms)`,
      `waymark: 10.99.0.1:${p2} refused: not reachable over the uplink (uplink mms)`,
    ], 'one line per decision: the cached refusal is not said again');
    assert.equal(daemon.decides.length, 2);
  });

  it('caches: a second connect to the same destination asks nothing; another port asks', async () => {
    const p = nextPort();
    const { out } = await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: nextPort() }]);
    assert.deepEqual(out.map((r) => r.dev), ['up0', 'up0', 'up0', 'up0']);
    assert.deepEqual(daemon.decides.map((q) => q.port), [p, p + 1]);
    assert.equal(daemon.connections.length, 1, 'one connection to the daemon');
  });

  it('a generation bump invalidates the cache; an answer of another generation is not cached', async () => {
    const p = nextPort();
    const { out } = await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }, { op: 'bump', file: daemon.genPath },
      { op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }]);
    assert.deepEqual(out.filter((r) => 'dev' in r).map((r) => r.dev), ['up0', 'up0', 'up0', 'up0']);
    assert.equal(daemon.decides.length, 2, 'asked again after the bump only');
    daemon.reset();
    daemon.decide = () => daemon.steer('up0', { generation: 999 });
    await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }]);
    assert.equal(daemon.decides.length, 2, 'a stale-generation answer is used once, never cached');
  });

  it('ttl: an expired entry is asked again; ttl 0 is never cached', async () => {
    const p = nextPort();
    // Both clocks are the client's (the library's cache and the sleep): the sleep outlasts the
    // ttl whatever the load. The two connects before it are back to back, far within 1.5 s.
    daemon.decide = () => daemon.steer('up0', { ttlMs: 1500 });
    await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }, { op: 'sleep', s: 1.6 }, { op: 'tcp', host: A, port: p }]);
    assert.equal(daemon.decides.length, 2);
    daemon.reset();
    daemon.decide = () => daemon.steer('up0', { ttlMs: 0 });
    await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }]);
    assert.equal(daemon.decides.length, 2);
  });

  it('without a daemon: open by default (no request, nothing said), ENETUNREACH with WAYMARK_FAIL=closed', async () => {
    const empty = mkdtempSync(path.join(tmpdir(), 'wm-nodaemon-'));
    try {
      const sock = path.join(empty, 'waymarkd.sock');
      const open = await run([{ op: 'tcp', host: A, port: nextPort() }, { op: 'tcp', host: A, port: nextPort() }], { socket: sock });
      assert.deepEqual(open.out.map((r) => [r.result, r.dev]), [['ok', ''], ['ok', '']]);
      assert.equal(open.stderr, '');
      const closed = await run([{ op: 'tcp', host: A, port: nextPort() }, { op: 'udp', mode: 'sendto', host: A, port: nextPort() }],
        { socket: sock, env: { WAYMARK_FAIL: 'closed' } });
      assert.deepEqual(closed.out.map((r) => r.result), ['ENETUNREACH', 'ENETUNREACH']);
      assert.equal(closed.stderr, '', 'why is said only under WAYMARK_DEBUG');
      const loud = await run([{ op: 'tcp', host: A, port: nextPort() }], { socket: sock, env: { WAYMARK_FAIL: 'closed', WAYMARK_DEBUG: '1' } });
      assert.match(loud.stderr, /decide\.sock unavailable: No such file or directory; failing closed/);
      assert.equal(daemon.decides.length, 0);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('a daemon that accepts but never answers costs one bounded wait, then nothing (back-off)', async () => {
    daemon.decide = () => 'silent';
    // The library's own default bound (50 ms): nothing answers, so only that bound ends the wait.
    const open = await run([{ op: 'tcp', host: A, port: nextPort() }, { op: 'tcp', host: A, port: nextPort() }], { env: { WAYMARK_TIMEOUT_MS: '' } });
    assert.deepEqual(open.out.map((r) => [r.result, r.dev]), [['ok', ''], ['ok', '']]);
    assert.ok(open.out[0]!.ms >= 45, `first connect took ${open.out[0]!.ms} ms: did not wait for the default 50 ms bound`);
    assert.ok(open.out[0]!.ms < 5000, `first connect took ${open.out[0]!.ms} ms: not bounded`);
    // Back-off: the second connect asked nothing (counted once the daemon has read all the client sent).
    assert.equal(daemon.decides.length, 1, 'the second connect asked the daemon: no back-off');
    daemon.reset();
    daemon.decide = () => 'silent';
    const closed = await run([{ op: 'tcp', host: A, port: nextPort() }], { env: { WAYMARK_FAIL: 'closed', WAYMARK_TIMEOUT_MS: '1000' } });
    assert.equal(closed.out[0]!.result, 'ENETUNREACH');
    assert.ok(closed.out[0]!.ms >= 990, `took ${closed.out[0]!.ms} ms: WAYMARK_TIMEOUT_MS=1000 not waited for`);
    assert.ok(closed.out[0]!.ms < 8000, `took ${closed.out[0]!.ms} ms: not bounded by WAYMARK_TIMEOUT_MS=1000`);
    assert.equal(daemon.decides.length, 1);
  });

  it('an answer that waits for the user (WM_PENDING) is waited for, up to WAYMARK_PROMPT_TIMEOUT_MS', async () => {
    daemon.decide = () => ({ later: 300, pendingMs: 5_000, answer: daemon.steer('up0') });
    const asked = await run([{ op: 'tcp', host: A, port: nextPort() }]);
    assert.deepEqual([asked.out[0]!.result, asked.out[0]!.dev], ['ok', 'up0'], 'steered by the answer that came after 300 ms');
    assert.ok(asked.out[0]!.ms >= 290, `took ${asked.out[0]!.ms} ms`);
    // Pending for a minute, then never answered: only WAYMARK_PROMPT_TIMEOUT_MS ends the wait.
    daemon.decide = () => ({ held: daemon.steer('up0'), pendingMs: 60_000 });
    const capped = await run([{ op: 'tcp', host: A, port: nextPort() }], { env: { WAYMARK_PROMPT_TIMEOUT_MS: '100' } });
    assert.deepEqual([capped.out[0]!.result, capped.out[0]!.dev], ['ok', ''], 'gave up after 100 ms: fails open');
    assert.ok(capped.out[0]!.ms >= 90, `took ${capped.out[0]!.ms} ms: gave up before WAYMARK_PROMPT_TIMEOUT_MS=100`);
    assert.ok(capped.out[0]!.ms < 30_000, `took ${capped.out[0]!.ms} ms: waited for the daemon's 60 s, not the 100 ms cap`);
  });

  it('inside waymarkd itself (the decide socket\'s listener is this process) it stands aside, even failing closed', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wm-self-'));
    try {
      const { out, stderr } = await run([
        { op: 'listen_decide', path: path.join(dir, wire.DECIDE_SOCKET) },
        { op: 'tcp', host: A, port: nextPort() },
        { op: 'tcp', host: A, port: nextPort() },
      ], { socket: path.join(dir, 'waymarkd.sock'), env: { WAYMARK_FAIL: 'closed', WAYMARK_DEBUG: '1' } });
      const tcp = out.filter((r) => 'dev' in r);
      // Failing closed, a request that waited for an answer (nobody answers here) would end in
      // ENETUNREACH: 'ok' proves neither connect waited for one.
      assert.deepEqual(tcp.map((r) => [r.result, r.dev]), [['ok', ''], ['ok', '']], stderr);
      assert.match(stderr, /this process is waymarkd itself/);
      assert.doesNotMatch(stderr, /unavailable/, 'no request timed out');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a malformed answer fails open; a late answer to an abandoned request is dropped by seq', async () => {
    daemon.decide = () => Buffer.from('not a waymark message');
    const bad = await run([{ op: 'tcp', host: A, port: nextPort() }]);
    assert.deepEqual([bad.out[0]!.result, bad.out[0]!.dev], ['ok', '']);
    daemon.reset();
    // The first request is answered (DENY) only once the client has given up on it: the daemon
    // holds the answer until the next request on that connection arrives, and sends it just
    // before the answer (STEER) to that one. The client's sleep outlasts the 1 s back-off that
    // follows its timeout (both on the client's clock).
    const p1 = nextPort();
    const p2 = nextPort();
    daemon.decide = (q) => q.port === p1 ? { held: { action: wire.WM_ACTION.DENY, err: EACCES } } : daemon.steer('up0');
    const { out, stderr } = await run([{ op: 'tcp', host: A, port: p1 }, { op: 'sleep', s: 1.1 }, { op: 'tcp', host: A, port: p2 }],
      { env: { WAYMARK_TIMEOUT_MS: '2000', WAYMARK_DEBUG: '1' } });
    assert.match(stderr, /decide: daemon .* unavailable: Connection timed out/, 'the first request timed out');
    assert.deepEqual(out.filter((r) => 'dev' in r).map((r) => [r.result, r.dev]), [['ok', ''], ['ok', 'up0']]);
    assert.deepEqual(daemon.decides.map((q) => [q.port, q.conn]), [[p1, daemon.decides[0]!.conn], [p2, daemon.decides[0]!.conn]],
      'both over the same connection');
  });

  it('unconnected UDP: each datagram leaves by its own decision (IP_PKTINFO), loopback untouched', async () => {
    // 10.98.0.0/24 is up1's subnet: the main table sends there over up1.
    daemon.decide = (q) => q.addr[3] === 2 ? daemon.steer('up0') : q.addr[3] === 3 ? { action: wire.WM_ACTION.PASS } : daemon.steer('up1');
    const p = nextPort();
    const r = await one({ op: 'udp-multi', sends: ['10.98.0.2', '10.98.0.3', '127.0.0.1', '10.98.0.2'], port: p });
    assert.deepEqual(r['results'], ['ok', 'ok', 'ok', 'ok']);
    assert.deepEqual(r['seen'], { m0: 'up0', m1: 'up1', m3: 'up0' }, 'steered to up0 against the main table, then passed, then cached');
    assert.deepEqual(r['loopback'], ['m2']);
    assert.equal(r.dev, '', 'the socket itself is never bound');
    assert.deepEqual(daemon.decides.map((q) => [q.proto, q.addr[3]]), [['udp', 2], ['udp', 3]]);
    // An IPv6 socket: IPV6_PKTINFO for an IPv6 destination, IP_PKTINFO for a v4-mapped one.
    daemon.reset();
    daemon.decide = () => daemon.steer('up0');
    const v6 = await one({ op: 'udp-multi', sends: ['fd00:98::2', '::ffff:10.98.0.2'], port: nextPort(), family: 6 });
    assert.deepEqual(v6['results'], ['ok', 'ok']);
    assert.deepEqual(v6['seen'], { m0: 'up0', m1: 'up0' });
    assert.deepEqual(daemon.decides.map((q) => q.family), [6, 4]);
  });

  it('UDP through sendto, sendmsg, sendmmsg and connect; DENY on a datagram', async () => {
    const { out } = await run(['sendto', 'sendmsg', 'sendmmsg', 'connected'].map((mode) => ({ op: 'udp', mode, host: A, port: nextPort() })));
    assert.deepEqual(out.map((r) => [r.result, r.got]), [['ok', 'hi'], ['ok', 'hi'], ['ok', 'hi'], ['ok', 'hi']]);
    assert.deepEqual(out.map((r) => r.dev), ['', '', '', 'up0'], 'only connect() binds the socket');
    assert.equal(out[2]!['sent'], 2);
    assert.deepEqual(out[2]!['lens'], [2, 2], 'msg_len copied back from the steered copy');
    daemon.decide = () => ({ action: wire.WM_ACTION.DENY, err: ENETUNREACH, uplink: 'mms' });
    const denied = await run(['sendto', 'sendmmsg'].map((mode) => ({ op: 'udp', mode, host: A, port: nextPort() })));
    assert.deepEqual(denied.out.map((r) => r.result), ['ENETUNREACH', 'ENETUNREACH']);
  });

  it('keeps non-blocking connect semantics (EINPROGRESS, completion, repeated connect, after shutdown)', async () => {
    const { out: [steered] } = await run([{ op: 'nonblocking', host: A, port: nextPort(), file: daemon.genPath }]);
    const { out: [baseline] } = await run([{ op: 'nonblocking', host: A, port: nextPort(), file: daemon.genPath }], { preload: false });
    assert.ok(steered && baseline);
    assert.ok(steered.result === 'EINPROGRESS' || steered.result === 'ok', steered.result);
    assert.equal(steered.so_error, 0);
    assert.notEqual(steered.state_after_shutdown, 7, 'half-closed, not CLOSE (which TCP_INFO cannot tell from never connected)');
    // FIN_WAIT1 or FIN_WAIT2 depending on timing: compared above, not here.
    assert.deepEqual({ ...steered, dev: '', state_after_shutdown: 0 }, { ...baseline, state_after_shutdown: 0 });
    assert.equal(steered.dev, 'up0');
    assert.equal(daemon.decides.length, 1, 'the repeated connects on a connected socket ask nothing');
  });

  it('getaddrinfo/gethostbyname: names the daemon resolves, refuses or does not claim', async () => {
    const hostsName = readFileSync('/etc/hosts', 'utf8').split('\n').map((l) => l.replace(/#.*/, '').trim().split(/\s+/))
      .find((f) => f.length > 1 && f[0] === '127.0.0.1' && !/localhost/.test(f[1] ?? ''))?.[1];
    daemon.resolve = (q) => {
      if (q.name === 'svc.example') {
        const addrs: wire.ResolveResponse['addrs'] = [{ family: 4, addr: Uint8Array.from([10, 99, 0, 7]) },
          { family: 6, addr: Uint8Array.from([0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]) }];
        return { status: wire.WM_RESOLVE.RESOLVED, addrs: q.family === 6 ? addrs.slice(1) : q.family === 4 ? addrs.slice(0, 1) : addrs };
      }
      if (q.name === 'gone.example') return { status: wire.WM_RESOLVE.NO_NAME };
      if (q.name === 'down.example') return { status: wire.WM_RESOLVE.DNS_FAILED };
      return { status: wire.WM_RESOLVE.NOT_OURS };
    };
    const plan: Step[] = [{ op: 'gai', host: 'svc.example', port: 443 }, { op: 'gai', host: 'svc.example', family: 4 }, { op: 'gai', host: 'gone.example' },
      { op: 'gai', host: 'down.example' }, { op: 'gai', host: '10.1.2.3' }, { op: 'gai', host: 'localhost' }, { op: 'ghbn', host: 'svc.example' }];
    if (hostsName) plan.push({ op: 'gai', host: hostsName });
    const { out } = await run(plan, { env: { WAYMARK_NEEDS: 'unmetered', WAYMARK_UPLINK: 'wifi' } });
    assert.deepEqual(out[0], { result: 'ok', addrs: ['10.99.0.7', 'fd00:99::7'], canon: 'svc.example', ports: [443] });
    assert.deepEqual(out[1], { result: 'ok', addrs: ['10.99.0.7'], canon: 'svc.example', ports: [80] });
    assert.equal(out[2]!.result, 'EAI_NONAME');
    assert.equal(out[3]!.result, 'EAI_AGAIN');
    assert.deepEqual(out[4]!['addrs'], ['10.1.2.3']);
    assert.deepEqual(out[5]!['addrs'], ['127.0.0.1']);
    assert.deepEqual(out[6], { result: 'ok', name: 'svc.example', addrs: ['10.99.0.7'] });
    if (hostsName) assert.deepEqual(out[7]!['addrs'], ['127.0.0.1'], `${hostsName} from /etc/hosts through the real getaddrinfo`);
    const asked = daemon.resolves.map((q) => [q.name, q.family, q.needs, q.uplink]);
    assert.deepEqual(asked.slice(0, 5), [['svc.example', 0, 0x20, 'wifi'], ['svc.example', 4, 0x20, 'wifi'], ['gone.example', 0, 0x20, 'wifi'],
      ['down.example', 0, 0x20, 'wifi'], ['svc.example', 4, 0x20, 'wifi']], 'numeric hosts and localhost are not asked');
    assert.equal(daemon.resolves.length, hostsName ? 6 : 5);
  });

  it('freeaddrinfo frees the chained result cleanly (valgrind)', {
    skip: spawnSync('valgrind', ['--version']).status !== 0 ? 'no valgrind' : spawnSync('cc', ['--version']).status !== 0 ? 'no cc' : false,
  }, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'wm-gai-'));
    try {
      const src = path.join(dir, 'gai.c');
      writeFileSync(src, `#include <netdb.h>
#include <stdio.h>
#include <string.h>
int main(void) {
  for (int i = 0; i < 3; i++) {
    struct addrinfo h, *r = NULL;
    memset(&h, 0, sizeof h);
    h.ai_socktype = SOCK_STREAM;
    h.ai_flags = AI_CANONNAME;
    int e = getaddrinfo("svc.example", "80", &h, &r);
    if (e != 0) { printf("error %d\\n", e); return 1; }
    int n = 0;
    for (struct addrinfo *a = r; a; a = a->ai_next) n++;
    printf("%d %s\\n", n, r->ai_canonname);
    freeaddrinfo(r);
  }
  return 0;
}
`);
      const exe = path.join(dir, 'gai');
      const cc = spawnSync('cc', ['-O0', '-g', '-o', exe, src], { encoding: 'utf8' });
      assert.equal(cc.status, 0, cc.stderr);
      chmodSync(dir, 0o755);
      daemon.resolve = () => ({ status: wire.WM_RESOLVE.RESOLVED, addrs: [{ family: 4, addr: Uint8Array.from([10, 99, 0, 7]) },
        { family: 4, addr: Uint8Array.from([10, 99, 0, 8]) }, { family: 6, addr: Uint8Array.from([0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]) }] });
      // valgrind passes LD_PRELOAD on to the program it runs (after its own preloads).
      const child = spawn('ip', ['netns', 'exec', NS, 'env', `WAYMARK_SOCKET=${daemon.socketEnv}`, `LD_PRELOAD=${LIB}`,
        'valgrind', '-q', '--error-exitcode=9', '--leak-check=full', '--errors-for-leak-kinds=definite,indirect', exe],
      { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
      assert.equal(code, 0, `valgrind: ${stderr}`);
      assert.equal(stdout, '3 svc.example\n3 svc.example\n3 svc.example\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('16 threads x 64 connects are all steered, with one daemon connection per thread at most', async () => {
    const p = nextPort();
    port += 4;
    const r = await one({ op: 'threads', host: A, port: p, threads: 16, per: 64 });
    assert.deepEqual(r['devs'], { 'ok:up0': 1024 });
    assert.ok(daemon.decides.length >= 4 && daemon.decides.length <= 16, `${daemon.decides.length} requests`);
    assert.ok(daemon.connections.length <= 16, `${daemon.connections.length} connections`);
  });

  it('fork: the child asks over its own connection; exec: the new program is steered too', async () => {
    const host = A;
    const { out } = await run([{ op: 'tcp', host, port: nextPort() }, { op: 'fork', host, port: nextPort() }, { op: 'fork', host, port: nextPort(), exec: true }]);
    assert.deepEqual(out.map((r) => r.dev), ['up0', 'up0', 'up0']);
    const forked = out[1]!['pid'] as number;
    const execed = out[2]!['pid'] as number;
    const byPid = (pid: number) => daemon.decides.filter((q) => q.pid === pid);
    assert.equal(out[1]!['inherited'], 0, 'the child closed the copy of the parent\'s daemon connection');
    assert.equal(byPid(forked).length, 1, 'the forked child made its own request');
    assert.notEqual(byPid(forked)[0]!.conn, daemon.decides[0]!.conn, 'over its own connection');
    assert.equal(byPid(execed).length, 1, 'the exec-ed child made its own request');
  });

  it('survives the program closing its descriptors and putting a pipe on their numbers', async () => {
    const { out } = await run([{ op: 'tcp', host: A, port: nextPort() }, { op: 'clobber' }, { op: 'tcp', host: A, port: nextPort() }, { op: 'pipe' }]);
    assert.equal(out[0]!.dev, 'up0');
    assert.equal(out[2]!.dev, 'up0');
    assert.equal(out[3]!['bytes'], 0, 'nothing of ours was written to the program\'s pipe');
    assert.equal(daemon.connections.length, 2, 'a new daemon connection after the old one was clobbered');
  });

  it('logs one "waymark:" line per decision only under WAYMARK_DEBUG; WAYMARK_DISABLE=1 turns it off', async () => {
    const quiet = await run([{ op: 'tcp', host: A, port: nextPort() }]);
    assert.equal(quiet.stderr, '');
    const p = nextPort();
    const loud = await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }], { env: { WAYMARK_DEBUG: '1' } });
    const lines = loud.stderr.trim().split('\n');
    assert.ok(lines.every((l) => l.startsWith('waymark: ')), loud.stderr);
    assert.ok(lines.some((l) => new RegExp(`fd \\d+ to 10\\.99\\.0\\.1:${p} bound to up0$`).test(l)), loud.stderr);
    assert.ok(lines.some((l) => new RegExp(`fd \\d+ to 10\\.99\\.0\\.1:${p} bound to up0 \\(cached\\)$`).test(l)), loud.stderr);
    daemon.reset();
    const off = await run([{ op: 'tcp', host: A, port: nextPort() }], { env: { WAYMARK_DISABLE: '1' } });
    assert.equal(off.out[0]!.dev, '');
    assert.equal(daemon.decides.length, 0);
  });

  it('works unprivileged (SO_BINDTODEVICE needs no capability since Linux 5.7)', {
    skip: !existsSync(PYTHON) && `${PYTHON} not reachable for nobody`,
  }, async () => {
    const who = spawnSync('ip', ['netns', 'exec', NS, 'setpriv', '--reuid=65534', '--regid=65534',
      '--clear-groups', 'id', '-u'], { encoding: 'utf8' });
    assert.equal(who.stdout.trim(), '65534');
    const p = nextPort();
    const { out } = await run([{ op: 'tcp', host: A, port: p }, { op: 'tcp', host: A, port: p }, { op: 'udp', mode: 'sendto', host: A, port: nextPort() }],
      { unprivileged: true });
    assert.deepEqual(out.map((r) => [r.result, r.dev]), [['ok', 'up0'], ['ok', 'up0'], ['ok', '']]);
    assert.equal(out[2]!['got'], 'hi');
    assert.ok(daemon.connections.every((c) => c.pid > 0));
    assert.equal(daemon.decides.length, 2, 'cached as nobody too (the generation file is readable)');
  });
});
