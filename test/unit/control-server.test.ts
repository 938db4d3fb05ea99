/**
 * The control socket server (src/daemon/server.ts) against real clients: connection limits per
 * uid with a reserve for root, and the bound on what one connection holds. The other users are
 * python3 processes running as uids 4242-4244; every step waits for what a client printed or
 * the server logged, never for a timer.
 */
import { after, before, describe, it } from 'node:test';
import { placeholderHandlers } from '../support/fakes.js';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { formatStatus } from '../../src/cli/status.js';
import { Client, DaemonError } from '../../src/daemon/client.js';
import type { Logger } from '../../src/daemon/log.js';
import type { HelloResult, StatusResult } from '../../src/daemon/protocol.js';
import { ControlServer, MAX_OUTSTANDING, type Handlers } from '../../src/daemon/server.js';
import { UidClient, holdConnections, isRoot } from '../support/uidclient.js';

interface LogLine { level: string; msg: string }
/** A logger that keeps its lines and lets a test wait for one. */
class MemoryLog {
  readonly lines: LogLine[] = [];
  private readonly waiters: { re: RegExp; resolve(): void }[] = [];
  readonly logger: Logger;
  constructor() {
    const at = (level: string) => (msg: string): void => {
      this.lines.push({ level, msg });
      for (const w of [...this.waiters]) {
        if (w.re.test(msg)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve();
        }
      }
    };
    this.logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  }
  /** Resolves once a line matching `re` was logged (at once if one was). */
  logged(re: RegExp): Promise<void> {
    if (this.lines.some((l) => re.test(l.msg))) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ re, resolve }));
  }
}

const FLOOD_SCRIPT = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
cap = int(sys.argv[2])
chunk = memoryview(b'{"v":1,"id":1,"method":"status"}\\n' * 100)
s.setblocking(False)
sent, off = 0, 0
while sent < cap:
    try:
        n = s.send(chunk[off:])
    except BlockingIOError:
        break
    sent += n
    off = (off + n) % len(chunk)
print(('blocked ' if sent < cap else 'sent-all ') + str(sent))
sys.stdin.read()
`;

describe('ControlServer limits', { skip: !isRoot && 'needs root (clients run as other uids)' }, () => {
  let dir: string;
  const GUARD = { timeout: 60_000 };
  const REPLY_PAD = 16 * 1024;
  let statusCalls = 0;
  // This test is about the transport: the results are placeholders (a padded status), not the real shapes.
  const placeholder = <T>(x: object): Promise<T> => Promise.resolve(x as T);
  const handlers: Handlers = {
    ...placeholderHandlers(),
    hello: () => Promise.resolve<HelloResult>({ daemon: 'waymarkd', version: 'test', protocol: 2, protocols: [1, 2], methods: [], topics: [] }),
    status: () => {
      statusCalls++;
      return placeholder<StatusResult>({ pad: 'x'.repeat(REPLY_PAD) });
    },
    'events.subscribe': () => placeholder({}),
  };

  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'wm-control-'));
    chmodSync(dir, 0o755); // the clients of other uids must reach the socket
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a uid beyond its limit and others beyond the root reserve with EBUSY; root is still answered; status and log name the uids', GUARD, async () => {
    const sock = path.join(dir, 'uids.sock');
    const log = new MemoryLog();
    const server = new ControlServer(sock, handlers, log.logger, { limits: { total: 6, perUid: 2, rootReserve: 2 } });
    await server.listen();
    const users: UidClient[] = [];
    const roots: Client[] = [];
    try {
      const a = holdConnections(4242, { control: { path: sock, n: 2 } });
      users.push(a);
      assert.equal(await a.line(), 'ready 2');
      assert.match(await a.ask('control'), /^refused EBUSY too many connections to waymarkd from uid 4242 \(at most 2 per uid\)$/);
      const b = holdConnections(4243, { control: { path: sock, n: 2 } });
      users.push(b);
      assert.equal(await b.line(), 'ready 2');
      const c = holdConnections(4244, { control: { path: sock, n: 0 } });
      users.push(c);
      assert.equal(await c.line(), 'ready 0');
      assert.match(await c.ask('control'), /^refused EBUSY .*the last 2 are kept for root/);
      for (let i = 0; i < 2; i++) {
        const r = new Client(sock);
        roots.push(r);
        assert.equal((await r.call('hello')).daemon, 'waymarkd', `root connection ${i + 1} answered`);
      }
      const over = new Client(sock);
      roots.push(over);
      await assert.rejects(over.call('hello'), (e: unknown) => e instanceof DaemonError && e.code === 'EBUSY' && /at most 6/.test(e.message));

      const st = server.stats;
      assert.equal(st.clients, 6);
      assert.equal(st.refused, 3);
      assert.deepEqual(st.limits, { total: 6, perUid: 2, rootReserve: 2 });
      assert.deepEqual([...st.refusedByUid].sort((x, y) => x.uid - y.uid), [{ uid: 0, refused: 1 }, { uid: 4242, refused: 1 }, { uid: 4244, refused: 1 }]);
      const warns = log.lines.filter((l) => l.level === 'warn').map((l) => l.msg);
      assert.ok(warns.some((m) => /^control socket: too many connections from uid 4242/.test(m)), warns.join('\n'));
      assert.ok(warns.some((m) => /^control socket: too many clients; refusing uid 4244/.test(m)), warns.join('\n'));
      const text = formatStatus({
        daemon: { version: 't', protocol: 1, pid: 1, configPath: '/c', generation: 1, startedAt: '' }, uplinks: [], destinations: [], lastReconcile: null,
        control: st,
      });
      const line = text.split('\n').find((l) => l.startsWith('control socket:')) ?? '';
      assert.match(line, /^control socket: 6 connections; refused: uid 0 \(1\), uid 4242 \(1\), uid 4244 \(1\); limits 2 per uid, 6 in all, 2 kept for root$/);
    } finally {
      await Promise.all(users.map((u) => u.stop()));
      roots.forEach((r) => r.close());
      await server.close();
    }
  });

  it('stops reading a client that never reads its replies: the daemon holds at most 8 of them, others are answered', GUARD, async () => {
    const sock = path.join(dir, 'flood.sock');
    const log = new MemoryLog();
    const server = new ControlServer(sock, handlers, log.logger);
    await server.listen();
    statusCalls = 0;
    // What the kernel may hold of the replies beside what the daemon holds: one socket buffer.
    const wmem = Math.max(...['wmem_default', 'wmem_max'].map((f) => Number(readFileSync(`/proc/sys/net/core/${f}`, 'utf8'))));
    const flood = new UidClient(4242, FLOOD_SCRIPT, [sock, String(8 * 1024 * 1024)]);
    const root = new Client(sock);
    try {
      const got = await flood.line();
      assert.match(got, /^blocked \d+$/, 'the client could not send more: the daemon stopped reading it');
      await log.logged(/reading paused/);
      const st = server.stats;
      assert.equal(st.outstanding, MAX_OUTSTANDING);
      assert.equal(st.pausedClients, 1);
      assert.ok(st.unwrittenBytes <= MAX_OUTSTANDING * (REPLY_PAD + 200), `reply bytes held by the daemon: ${st.unwrittenBytes}`);
      const kernelReplies = Math.ceil((2 * wmem) / REPLY_PAD) + 2;
      assert.ok(statusCalls <= MAX_OUTSTANDING + kernelReplies, `requests taken: ${statusCalls} (of ${Number(got.split(' ')[1]) / 34} sent)`);
      // Another connection is answered meanwhile; the flooding one is still held at the bound.
      assert.equal((await root.call('hello')).daemon, 'waymarkd');
      assert.equal(server.stats.outstanding, MAX_OUTSTANDING);
      assert.ok(statusCalls <= MAX_OUTSTANDING + kernelReplies);
    } finally {
      await flood.stop();
      root.close();
      await server.close();
    }
  });
});
