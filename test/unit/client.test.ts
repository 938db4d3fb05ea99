/**
 * libwaymark-client.so (include/waymark.h) against a fake daemon in this test process.
 *
 * A small C program, compiled here with cc against the built library, calls
 * waymark_connect_tcp() and prints what it got (errno, the fd's SO_BINDTODEVICE, the result).
 * Everything runs over loopback in the current network namespace and changes nothing in it:
 * the fake daemon steers to `lo`, which an unprivileged socket may bind to. A connect timeout
 * is made real by a listener whose accept queue is full (listen(fd, 0) with one connection
 * queued: later SYNs are dropped).
 */
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import * as native from '../../src/native/index.js';
import * as wire from '../../src/decision/wire.js';

const NATIVE = fileURLToPath(new URL('../../../native/', import.meta.url));
const LIB = path.join(NATIVE, 'client/libwaymark-client.so.1');
const hasCc = spawnSync('cc', ['--version']).status === 0;
const skip = !existsSync(LIB) ? `${LIB} missing: run \`make -C native\`` : !hasCc ? 'needs cc' : false;
const EACCES = 13;
const ENETUNREACH = 101;

type DecideFields = Partial<Omit<wire.DecideResponse, 'seq'>>;
type ResolveFields = Partial<Omit<wire.ResolveResponse, 'seq'>>;

/** The daemon's side of decide.sock, answering from the test's functions and counting. */
class FakeDaemon {
  readonly dir = mkdtempSync(path.join(tmpdir(), 'wm-fake-client-'));
  readonly socketEnv = path.join(this.dir, 'waymarkd.sock');
  decides: wire.DecideRequest[] = [];
  resolves: wire.ResolveRequest[] = [];
  decide: (r: wire.DecideRequest) => DecideFields | 'silent' = () => this.steerLo();
  resolve: (r: wire.ResolveRequest) => ResolveFields = () => ({ status: wire.WM_RESOLVE.NOT_OURS });
  private readonly listenFd: number;
  private readonly watchers = new Map<number, native.Watcher>();

  constructor() {
    const g = Buffer.alloc(4096);
    g.writeUInt32LE(1, 0);
    writeFileSync(path.join(this.dir, wire.GENERATION_FILE), g);
    this.listenFd = native.unixListen(path.join(this.dir, wire.DECIDE_SOCKET), 'seqpacket', 16, 0o600);
    this.watchers.set(this.listenFd, native.watch(this.listenFd, () => {
      for (let fd = native.accept(this.listenFd); fd !== null; fd = native.accept(this.listenFd)) {
        const conn = fd;
        this.watchers.set(conn, native.watch(conn, () => this.serve(conn), { unref: true }));
      }
    }, { unref: true }));
  }

  steerLo(): DecideFields {
    return { action: wire.WM_ACTION.STEER, ifname: 'lo', ifindex: 1, uplink: 'loopy', ttlMs: 1000 };
  }

  reset(): void {
    this.decides = [];
    this.resolves = [];
    this.decide = () => this.steerLo();
    this.resolve = () => ({ status: wire.WM_RESOLVE.NOT_OURS });
  }

  private drop(fd: number): void {
    this.watchers.get(fd)?.stop();
    this.watchers.delete(fd);
    native.close(fd);
  }

  private serve(fd: number): void {
    for (;;) {
      const msg = native.recv(fd, 4096);
      if (msg === null) return;
      if (msg.length === 0) return this.drop(fd);
      const h = wire.readHeader(msg);
      if (h?.type === wire.WM_TYPE.DECIDE) {
        const r = wire.decodeDecideRequest(msg);
        if (!r) continue;
        this.decides.push(r);
        const a = this.decide(r);
        if (a === 'silent') continue;
        native.send(fd, wire.encodeDecideResponse({ seq: r.seq, action: 0, err: 0, ifindex: 0, mark: 0, ttlMs: 1000, generation: 1, ifname: '', uplink: '', ...a }));
      } else if (h?.type === wire.WM_TYPE.RESOLVE) {
        const r = wire.decodeResolveRequest(msg);
        if (!r) continue;
        this.resolves.push(r);
        native.send(fd, wire.encodeResolveResponse({ seq: r.seq, status: 0, ttlMs: 1000, generation: 1, uplink: 'loopy', addrs: [], ...this.resolve(r) }));
      }
    }
  }

  stop(): void {
    for (const fd of [...this.watchers.keys()]) this.drop(fd);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The caller: `prog HOST SERVICE [key=value...]`, one JSON line out. */
const PROGRAM = String.raw`
#define _GNU_SOURCE
#include <waymark.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void str(const char *key, const char *v) {
  printf("\"%s\":\"", key);
  for (; *v; v++) {
    if (*v == '"' || *v == '\\') putchar('\\');
    putchar(*v);
  }
  printf("\",");
}

/* A listener on 127.0.0.1 whose accept queue is full: connects to it hang. */
static int full_listener(void) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
  socklen_t len = sizeof a;
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 0) || getsockname(l, (struct sockaddr *)&a, &len)) exit(3);
  for (int i = 0; i < 8; i++) {
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(c, (struct sockaddr *)&a, sizeof a);
    struct pollfd p = { c, POLLOUT, 0 };
    if (poll(&p, 1, 100) == 0) return ntohs(a.sin_port);
  }
  exit(4);
}

int main(int argc, char **argv) {
  struct waymark_request req = WAYMARK_REQUEST_INIT;
  struct { struct waymark_request r; char tail[16]; } big;
  char port[16];
  req.host = argv[1];
  req.service = argv[2];
  int tail = 0;
  for (int i = 3; i < argc; i++) {
    char *v = strchr(argv[i], '=');
    *v++ = '\0';
    if (!strcmp(argv[i], "needs") && waymark_needs_parse(v, &req.needs) != 0) { printf("{\"parse\":\"EINVAL\"}\n"); return 0; }
    if (!strcmp(argv[i], "uplink")) req.uplink = v;
    if (!strcmp(argv[i], "destination")) req.destination = v;
    if (!strcmp(argv[i], "timeout")) req.timeout_ms = atoi(v);
    if (!strcmp(argv[i], "family")) req.family = atoi(v) == 6 ? AF_INET6 : AF_INET;
    if (!strcmp(argv[i], "strict")) req.flags = WAYMARK_STRICT;
    if (!strcmp(argv[i], "size0")) req.size = 0;
    if (!strcmp(argv[i], "tail")) tail = atoi(v);
    if (!strcmp(argv[i], "full")) { snprintf(port, sizeof port, "%d", full_listener()); req.service = port; }
  }
  struct waymark_result res = WAYMARK_RESULT_INIT;
  const struct waymark_request *r = &req;
  if (tail) {  /* a caller compiled against a newer, bigger request */
    memset(&big, 0, sizeof big);
    big.r = req;
    big.r.size = sizeof big;
    big.tail[3] = (char)(tail - 1);
    r = &big.r;
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int fd = waymark_connect_tcp(r, &res);
  int err = errno;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("{");
  printf("\"ms\":%.1f,", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
  if (fd < 0) {
    str("errno", strerrorname_np(err));
    str("strerror", waymark_strerror(err));
  } else {
    char dev[IFNAMSIZ] = "";
    socklen_t len = sizeof dev;
    getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &len);
    str("dev", dev);
    int type = 0;
    len = sizeof type;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
    printf("\"stream\":%s,\"blocking\":%s,\"cloexec\":%s,", type == SOCK_STREAM ? "true" : "false",
           (fcntl(fd, F_GETFL) & O_NONBLOCK) ? "false" : "true", (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? "true" : "false");
    char ip[INET6_ADDRSTRLEN] = "";
    if (res.family == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)&res.address)->sin_addr, ip, sizeof ip);
    else inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&res.address)->sin6_addr, ip, sizeof ip);
    str("peer", ip);
  }
  str("uplink", res.uplink);
  str("ifname", res.ifname);
  str("error", res.error);
  str("version", waymark_version());
  printf("\"attempts\":%d}\n", res.attempts);
  return 0;
}
`;

interface Out {
  ms: number;
  errno?: string;
  strerror?: string;
  dev?: string;
  peer?: string;
  uplink: string;
  ifname: string;
  error: string;
  attempts: number;
  stream?: boolean;
  blocking?: boolean;
  cloexec?: boolean;
  parse?: string;
  version?: string;
}

let daemon: FakeDaemon;
let work: string;
let exe: string;
let server: Server;
let serverPort: number;
let noDaemonSocket: string;

/**
 * Runs the program. WAYMARK_TIMEOUT_MS is a 10 s guard unless a test says otherwise: the fake
 * daemon answers from this test's event loop, which a busy machine may not run within the
 * library's 50 ms default; a test that needs a timeout makes the daemon silent.
 */
async function call(host: string, service: string | number, args: string[] = [], env: Record<string, string> = {}): Promise<Out> {
  const child = spawn(exe, [host, String(service), ...args], {
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', WAYMARK_SOCKET: daemon.socketEnv, WAYMARK_TIMEOUT_MS: '10000', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  assert.equal(code, 0, `program failed (${code}): ${stderr}`);
  return JSON.parse(stdout) as Out;
}

describe('libwaymark-client.so: waymark_connect_tcp()', { skip }, () => {
  before(async () => {
    work = mkdtempSync(path.join(tmpdir(), 'wm-client-'));
    const src = path.join(work, 'prog.c');
    writeFileSync(src, PROGRAM);
    exe = path.join(work, 'prog');
    const cc = spawnSync('cc', ['-std=gnu11', '-Wall', '-Werror', '-I', path.join(NATIVE, 'include'), '-o', exe, src,
      '-L', path.join(NATIVE, 'client'), '-lwaymark-client', `-Wl,-rpath,${path.join(NATIVE, 'client')}`], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    daemon = new FakeDaemon();
    noDaemonSocket = path.join(work, 'nothing-here', 'waymarkd.sock');
    server = createServer((s) => s.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const a = server.address();
    serverPort = typeof a === 'object' && a !== null ? a.port : 0;
  });
  after(() => {
    server?.close();
    daemon?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });
  beforeEach(() => daemon?.reset());

  it('connects over the decided device and says which uplink carries it', async () => {
    const r = await call('127.0.0.1', serverPort, ['needs=cheapest,unmetered', 'uplink=wlan0', 'destination=office'], { WAYMARK_NEEDS: 'no-roaming' });
    assert.equal(r.errno, undefined, r.error);
    assert.deepEqual({ dev: r.dev, uplink: r.uplink, ifname: r.ifname, peer: r.peer, attempts: r.attempts, error: r.error },
      { dev: 'lo', uplink: 'loopy', ifname: 'lo', peer: '127.0.0.1', attempts: 1, error: '' });
    assert.deepEqual({ stream: r.stream, blocking: r.blocking, cloexec: r.cloexec }, { stream: true, blocking: true, cloexec: true });
    assert.equal(daemon.decides.length, 1);
    const q = daemon.decides[0]!;
    assert.deepEqual({ family: q.family, proto: q.proto, port: q.port, addr: [...q.addr], needs: q.needs, uplink: q.uplink, destination: q.destination },
      { family: 4, proto: 'tcp', port: serverPort, addr: [127, 0, 0, 1], needs: 0x08 | 0x20 | 0x10, uplink: 'wlan0', destination: 'office' },
      'the request\'s needs plus WAYMARK_NEEDS; its own uplink and destination');
    assert.equal(daemon.resolves.length, 0, 'a numeric host is not resolved');
  });

  it('PASS connects over the default route, unbound', async () => {
    daemon.decide = () => ({ action: wire.WM_ACTION.PASS });
    const r = await call('127.0.0.1', serverPort);
    assert.deepEqual([r.errno, r.dev, r.uplink, r.ifname], [undefined, '', '', '']);
  });

  it('maps DENY to its errno, with the reason in out->error', async () => {
    daemon.decide = () => ({ action: wire.WM_ACTION.DENY, err: EACCES, uplink: 'mms' });
    const denied = await call('127.0.0.1', serverPort);
    assert.deepEqual([denied.errno, denied.attempts], ['EACCES', 0]);
    assert.equal(denied.error, `127.0.0.1:${serverPort} refused: denied by policy (uplink mms)`);
    assert.equal(denied.strerror, 'Waymark policy refuses this destination');
    daemon.decide = () => ({ action: wire.WM_ACTION.DENY, err: ENETUNREACH, uplink: 'mms' });
    assert.equal((await call('127.0.0.1', serverPort)).errno, 'ENETUNREACH');
  });

  it('resolves through the daemon and tries the next address when one fails', async () => {
    daemon.resolve = (q) => q.name === 'svc.test'
      ? { status: wire.WM_RESOLVE.RESOLVED, addrs: [{ family: 4, addr: Uint8Array.from([127, 0, 0, 2]) }, { family: 4, addr: Uint8Array.from([127, 0, 0, 1]) }] }
      : q.name === 'gone.test' ? { status: wire.WM_RESOLVE.NO_NAME } : { status: wire.WM_RESOLVE.DNS_FAILED };
    // 127.0.0.2 has no listener on that port: refused, then 127.0.0.1 answers.
    const r = await call('svc.test', serverPort, ['needs=low-latency', 'uplink=wwan0']);
    assert.deepEqual([r.errno, r.peer, r.attempts, r.dev], [undefined, '127.0.0.1', 2, 'lo']);
    assert.deepEqual(daemon.resolves.map((q) => [q.name, q.family, q.needs, q.uplink]), [['svc.test', 0, 0x04, 'wwan0']]);
    assert.deepEqual(daemon.decides.map((q) => [...q.addr]), [[127, 0, 0, 2], [127, 0, 0, 1]]);
    const gone = await call('gone.test', serverPort);
    assert.deepEqual([gone.errno, gone.error], ['ENOENT', 'gone.test: no such name (uplink loopy\'s DNS)']);
    const down = await call('down.test', 'http');
    assert.equal(down.errno, 'EAGAIN');
  });

  it('times out a connect that never completes, within the request\'s timeout', async () => {
    const r = await call('127.0.0.1', 0, ['full=1', 'timeout=300']);
    assert.equal(r.errno, 'ETIMEDOUT');
    assert.ok(r.ms >= 290, `took ${r.ms} ms: gave up before timeout=300`);
    assert.ok(r.ms < 5000, `took ${r.ms} ms: not bounded by timeout=300`);
    assert.equal(r.attempts, 1);
  });

  it('without a daemon: default route, or ENETUNREACH with WAYMARK_STRICT; a silent daemon is bounded', async () => {
    const open = await call('127.0.0.1', serverPort, [], { WAYMARK_SOCKET: noDaemonSocket });
    assert.deepEqual([open.errno, open.dev, open.uplink], [undefined, '', '']);
    const strict = await call('127.0.0.1', serverPort, ['strict=1'], { WAYMARK_SOCKET: noDaemonSocket });
    assert.equal(strict.errno, 'ENETUNREACH');
    assert.match(strict.error, /daemon did not answer/);
    daemon.decide = () => 'silent';
    const silent = await call('127.0.0.1', serverPort, ['strict=1'], { WAYMARK_TIMEOUT_MS: '1000' });
    assert.equal(silent.errno, 'ENETUNREACH');
    assert.ok(silent.ms >= 990, `took ${silent.ms} ms: did not wait for WAYMARK_TIMEOUT_MS=1000`);
    assert.ok(silent.ms < 8000, `took ${silent.ms} ms: not bounded by WAYMARK_TIMEOUT_MS=1000`);
  });

  it('checks requests: unknown needs, a newer layout with unknown options, size 0 as version 1', async () => {
    assert.equal((await call('127.0.0.1', serverPort, ['needs=cheapest,teleport'])).parse, 'EINVAL');
    const newer = await call('127.0.0.1', serverPort, ['tail=2']);
    assert.equal(newer.errno, 'E2BIG');
    const zeroTail = await call('127.0.0.1', serverPort, ['tail=1']);
    assert.equal(zeroTail.errno, undefined, 'a bigger request whose unknown tail is zero is fine');
    const v1 = await call('127.0.0.1', serverPort, ['size0=1']);
    assert.deepEqual([v1.errno, v1.dev, v1.version], [undefined, 'lo', '1.0']);
    const bad = await call('127.0.0.1', 'no-such-service');
    assert.deepEqual([bad.errno, bad.error], ['EINVAL', 'unknown service "no-such-service"']);
  });
});
