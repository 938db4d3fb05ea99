/**
 * The waymark_native addon against real sockets: netlink dump, watch(), SO_PEERCRED, seqpacket
 * listen/accept and messages, SO_MARK/SO_BINDTODEVICE on a TCP socket, and error objects.
 * Needs `make -C native` first. The mark tests need root (CAP_NET_ADMIN).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, closeSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import util from 'node:util';
import { Worker } from 'node:worker_threads';

import * as native from '../../src/native/index.js';
import { publicRoot } from '../../src/lab/public.js';

const NETLINK_ROUTE = 0;
const RTM_NEWLINK = 16;
const RTM_GETLINK = 18;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const AF_INET = 2;
const AF_UNSPEC = 0;
const SOCK_STREAM = 1;
const IPPROTO_TCP = 6;

const isRoot = process.getuid?.() === 0;
const ownIndexModule = fileURLToPath(new URL('../../src/native/index.js', import.meta.url));
/** The module as another user can load it (see src/lab/public.ts). */
const publicIndexModule = (): string => path.join(publicRoot(), 'dist/src/native/index.js');

/** nlmsghdr (16 bytes) + ifinfomsg (16 bytes): RTM_GETLINK dump of every link. */
function getLinkDump(seq: number): Buffer {
  const b = Buffer.alloc(32);
  b.writeUInt32LE(32, 0); // nlmsg_len
  b.writeUInt16LE(RTM_GETLINK, 4);
  b.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
  b.writeUInt32LE(seq, 8);
  b.writeUInt32LE(0, 12); // nlmsg_pid: 0, the kernel fills in ours
  b.writeUInt8(AF_UNSPEC, 16); // ifi_family
  return b;
}

interface NlMsg {
  type: number;
  seq: number;
  pid: number;
  body: Buffer;
}

function parseNetlink(buf: Buffer): NlMsg[] {
  const out: NlMsg[] = [];
  let off = 0;
  while (off + 16 <= buf.length) {
    const len = buf.readUInt32LE(off);
    assert.ok(len >= 16 && off + len <= buf.length, `bad nlmsg_len ${len} at ${off}`);
    out.push({
      type: buf.readUInt16LE(off + 4),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      body: buf.subarray(off + 16, off + len),
    });
    off += (len + 3) & ~3;
  }
  return out;
}

function assertNativeError(fn: () => unknown, code: string): native.NativeError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(native.isNativeError(caught), `expected a native error ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code);
  assert.ok(caught.errno < 0, 'errno is negative like Node system errors');
  assert.equal(util.getSystemErrorName(caught.errno), code);
  assert.equal(typeof caught.syscall, 'string');
  return caught;
}

/** Runs an ES module snippet in a fresh node with the native module bound to `n`. */
function runNode(body: string, opts: { args?: string[]; user?: boolean } = {}) {
  const mod = opts.user ? publicIndexModule() : ownIndexModule;
  const script = `import * as n from ${JSON.stringify(mod)};\n${body}`;
  const nodeArgs = [...(opts.args ?? []), '--input-type=module', '-e', script];
  const cmd = opts.user ? 'setpriv' : process.execPath;
  const args = opts.user
    ? ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...nodeArgs]
    : nodeArgs;
  return spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
}

let tmp: string;
before(() => {
  native.loadNative();
  tmp = mkdtempSync(path.join(os.tmpdir(), 'wm-native-'));
});
after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe('netlink', () => {
  it('dumps links: RTM_NEWLINK replies end with NLMSG_DONE, delivered through watch()', async () => {
    const fd = native.netlinkOpen(NETLINK_ROUTE, 0);
    try {
      assert.deepEqual(native.socketInfo(fd), { family: 16, type: 3, protocol: NETLINK_ROUTE });
      const portId = native.netlinkPortId(fd);
      assert.ok(portId !== 0, 'kernel assigned a port id');
      assert.equal(native.recv(fd), null, 'nothing queued yet: null, not an error');

      const seq = 0x5eed;
      let links = 0;
      let wakeups = 0;
      const done = new Promise<void>((resolve, reject) => {
        const w = native.watch(fd, (err) => {
          wakeups++;
          if (err) return reject(err);
          for (let buf = native.recv(fd); buf !== null; buf = native.recv(fd)) {
            for (const m of parseNetlink(buf)) {
              assert.equal(m.seq, seq);
              assert.equal(m.pid, portId);
              if (m.type === NLMSG_ERROR) return reject(new Error('NLMSG_ERROR in dump'));
              if (m.type === RTM_NEWLINK) links++;
              if (m.type === NLMSG_DONE) {
                w.stop();
                w.stop(); // idempotent
                // resolving from inside the callback: the await below resumes only if
                // microtasks run after napi_make_callback
                return resolve();
              }
            }
          }
        });
      });
      native.netlinkSend(fd, getLinkDump(seq));
      await done;
      assert.ok(wakeups >= 1);
      assert.ok(links >= 1, 'at least lo');
    } finally {
      native.close(fd);
    }
  });

  it('reports a datagram larger than the buffer as EMSGSIZE instead of truncating it', () => {
    const fd = native.netlinkOpen(NETLINK_ROUTE, 0);
    try {
      native.netlinkSend(fd, getLinkDump(1)); // the kernel queues the first part synchronously
      assertNativeError(() => native.recv(fd, 64), 'EMSGSIZE');
    } finally {
      native.close(fd);
    }
  });

  it('joins multicast groups (RTNLGRP_LINK = 1)', () => {
    const fd = native.netlinkOpen(NETLINK_ROUTE, 0);
    try {
      native.netlinkAddMembership(fd, 1);
      native.netlinkDropMembership(fd, 1);
    } finally {
      native.close(fd);
    }
  });
});

describe('watch()', () => {
  it('does not keep the process alive after stop(), nor when unref()ed, and survives GC', () => {
    const r = runNode(
      `
      // netlink sockets in RTMGRP_LINK: idle, never readable here. One watcher per fd at a time.
      const [fa, fb, fc, fd] = [1, 2, 3, 4].map(() => n.netlinkOpen(0, 1));
      const a = n.watch(fa, () => {});
      a.stop(); a.stop();
      n.watch(fb, () => {}, { unref: true });
      const c = n.watch(fc, () => {}); c.unref();
      for (let i = 0; i < 200; i++) n.watch(fd, () => {}).stop();
      n.watch(fa, () => {}).stop(); // the fd is free again after stop()
      globalThis.gc();
      setTimeout(() => { globalThis.gc(); console.log('exiting'); }, 50);
      `,
      { args: ['--expose-gc'] },
    );
    assert.equal(r.error, undefined, String(r.error));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'exiting');
  });

  it('an active watcher keeps the process alive; a throwing callback reaches uncaughtException', () => {
    const r = runNode(`
      const path = ${JSON.stringify(path.join(tmp, 'keepalive.sock'))};
      const l = n.unixListen(path, 'seqpacket', 4, 0o600);
      const w = n.watch(l, () => {
        n.close(n.accept(l) ?? -1);
        throw new Error('boom');
      });
      process.on('uncaughtException', (e) => { console.log('caught', e.message); w.stop(); });
      // readable only 100 ms later: without a ref'ed watcher the process would exit first
      setTimeout(() => { n.unixConnect(path, 'seqpacket'); }, 100).unref();
    `);
    assert.equal(r.error, undefined, String(r.error));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'caught boom');
  });

  it('closes active watchers when a worker thread is terminated (env teardown)', async () => {
    for (let i = 0; i < 5; i++) {
      const worker = new Worker(
        `import * as n from ${JSON.stringify(ownIndexModule)};
        import { parentPort } from 'node:worker_threads';
        const fds = [1, 2, 3].map(() => n.netlinkOpen(0, 1));
        n.watch(fds[0], () => {});
        n.watch(fds[1], () => {}).stop();
        n.watch(fds[2], () => {}, { unref: true });
        parentPort.postMessage('ready');`,
        { eval: true },
      );
      await new Promise((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      await worker.terminate();
    }
  });

  it('refuses an fd that is not open', () => {
    const probe = openSync('/dev/null', 'r');
    closeSync(probe);
    assert.throws(
      () => native.watch(probe, () => {}),
      (e: unknown) => native.isNativeError(e) && (e.code === 'EBADF' || e.code === 'EPERM'),
    );
  });
});

describe('Unix sockets', () => {
  it('peerCredOfSocket reports our own pid/uid/gid over a real net connection', async () => {
    const sockPath = path.join(tmp, 'peercred.sock');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(sockPath, resolve));
    try {
      const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
      const client = net.connect(sockPath);
      await new Promise<void>((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
      });
      const peer = await accepted;
      const cred = native.peerCredOfSocket(peer);
      assert.deepEqual(cred, { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() });
      // and from the client side: the server is us too
      assert.equal(native.peerCredOfSocket(client).pid, process.pid);
      client.destroy();
      peer.destroy();
      assert.throws(() => native.peerCredOfSocket(new net.Socket()), TypeError);
    } finally {
      server.close();
    }
  });

  it('seqpacket: listen with mode, accept, pass a real socket fd, mark it, detect EOF', async () => {
    const sockPath = path.join(tmp, 'decide.sock');
    writeFileSync(sockPath, 'not a socket');
    assertNativeError(() => native.unixListen(sockPath, 'seqpacket', 16, 0o600), 'EEXIST');
    rmSync(sockPath);

    const stale = native.unixListen(sockPath, 'seqpacket', 16, 0o600);
    native.close(stale); // leaves a stale socket file behind
    const listener = native.unixListen(sockPath, 'seqpacket', 16, 0o660);
    const tcp = net.createServer();
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    const fds: number[] = [];
    try {
      const st = statSync(sockPath);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o7777, 0o660);
      assert.deepEqual(native.socketInfo(listener), { family: 1, type: 5, protocol: 0 });
      assert.equal(native.accept(listener), null, 'no pending connection: null');

      const client = native.unixConnect(sockPath, 'seqpacket');
      fds.push(client);
      const readable = new Promise<void>((resolve) => {
        const w = native.watch(listener, () => {
          w.stop();
          resolve();
        });
      });
      await readable;
      const conn = native.accept(listener);
      assert.ok(conn !== null);
      fds.push(conn);
      assert.equal(native.peerCred(conn).pid, process.pid);

      const tcpFd = native.fdOf(tcp);
      assert.deepEqual(native.socketInfo(tcpFd), { family: AF_INET, type: SOCK_STREAM, protocol: IPPROTO_TCP });

      // plain messages both ways, record boundaries kept
      assert.equal(native.send(client, Buffer.from('decide v1')), 9);
      assert.equal(native.recv(conn)?.toString(), 'decide v1');
      assert.equal(native.send(conn, Buffer.from('steer 7')), 7);
      assert.equal(native.send(conn, Buffer.from('x')), 1);
      assert.equal(native.recv(client)?.toString(), 'steer 7');
      assert.equal(native.recv(client)?.toString(), 'x');
      assert.equal(native.recv(conn), null, 'nothing queued: null');

      if (isRoot) {
        native.setMark(tcpFd, 0x3f000000);
        assert.equal(native.getMark(tcpFd), 0x3f000000);
        assert.equal(native.getBoundDevice(tcpFd), '');
        native.bindToDevice(tcpFd, 'lo');
        assert.equal(native.getBoundDevice(tcpFd), 'lo');
        native.bindToDevice(tcpFd, ''); // root may unbind
        assert.equal(native.getBoundDevice(tcpFd), '');
      }
      assert.throws(() => native.bindToDevice(tcpFd, 'x'.repeat(16)), RangeError);

      // a truncated message is refused, not silently cut
      native.send(client, Buffer.alloc(100));
      assertNativeError(() => native.recv(conn, 10), 'EMSGSIZE');

      native.close(client);
      fds.splice(fds.indexOf(client), 1);
      assert.equal(native.recv(conn)?.length, 0, 'orderly shutdown: an empty buffer');
      assertNativeError(() => native.send(conn, Buffer.from('late')), 'EPIPE'); // and no SIGPIPE
    } finally {
      for (const fd of fds) native.close(fd);
      native.close(listener);
      tcp.close();
    }
  });
});

describe('errors', () => {
  it('carry .code, .errno and .syscall', () => {
    const probe = openSync('/dev/null', 'r');
    try {
      assertNativeError(() => native.getMark(probe), 'ENOTSOCK');
      assertNativeError(() => native.socketInfo(probe), 'ENOTSOCK');
    } finally {
      closeSync(probe);
    }
    const e = assertNativeError(() => native.recv(probe), 'EBADF');
    assert.match(e.message, /EBADF/);
    assertNativeError(() => native.unixConnect(path.join(tmp, 'missing.sock'), 'stream'), 'ENOENT');
    assertNativeError(() => native.netlinkOpen(31, 0), 'EPROTONOSUPPORT');
  });

  it('rejects bad arguments with TypeError/RangeError, not a crash', () => {
    assert.throws(() => native.close(-1), RangeError);
    assert.throws(() => native.close(1.5), RangeError);
    // @ts-expect-error deliberately wrong type
    assert.throws(() => native.recv('3'), TypeError);
    // @ts-expect-error deliberately wrong type
    assert.throws(() => native.send(0, 'text'), TypeError);
    // @ts-expect-error deliberately wrong type
    assert.throws(() => native.unixListen(path.join(tmp, 'x'), 'dgram', 1, 0o600), TypeError);
    assert.throws(() => native.unixListen('/' + 'x'.repeat(200), 'stream', 1, 0o600), RangeError);
    assert.throws(() => native.setMark(0, 2 ** 32), RangeError);
  });

  it('SO_MARK is EPERM for an unprivileged process', { skip: !isRoot && 'needs root to switch user' }, () => {
    const r = runNode(
      `
      const fd = n.netlinkOpen(0, 0);
      try { n.setMark(fd, 1); console.log('no error'); } catch (e) { console.log(e.code); }
      `,
      { user: true },
    );
    assert.equal(r.error, undefined, String(r.error));
    assert.equal(r.stdout.trim(), 'EPERM', r.stderr);
  });
});
