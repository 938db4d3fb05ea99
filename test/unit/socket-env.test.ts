/**
 * WAYMARK_SOCKET names the control socket or the directory that holds it, for every reader:
 * the CLI and waymarkd (controlSocketPath), the TypeScript API (decideSocketPath) and the C
 * libraries (native/client/proto.c), whose decide.sock must be the one in that directory.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { controlSocketPath } from '../../src/daemon/client.js';
import { DEFAULT_SOCKET } from '../../src/daemon/protocol.js';
import { decideSocketPath } from '../../src/decision/client.js';
import { DECIDE_SOCKET } from '../../src/decision/wire.js';
import * as native from '../../src/native/index.js';

const LIB = fileURLToPath(new URL('../../../native/preload/libwaymark.so', import.meta.url));
const isRoot = process.getuid?.() === 0;
const hasUnshare = spawnSync('unshare', ['--version']).status === 0;

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'wm-sockenv-'));
  chmodSync(dir, 0o755);
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('WAYMARK_SOCKET: the control socket or its directory', () => {
  it('the TypeScript readers: a socket path stays, a directory (existing, or ending in /) holds waymarkd.sock', () => {
    assert.equal(controlSocketPath(undefined), process.env['WAYMARK_SOCKET'] ? controlSocketPath(process.env['WAYMARK_SOCKET']) : DEFAULT_SOCKET);
    assert.equal(controlSocketPath(''), DEFAULT_SOCKET);
    assert.equal(controlSocketPath(join(dir, 'waymarkd.sock')), join(dir, 'waymarkd.sock'));
    assert.equal(controlSocketPath(join(dir, 'other.sock')), join(dir, 'other.sock'), 'any socket name, not only the default one');
    assert.equal(controlSocketPath(dir), join(dir, 'waymarkd.sock'));
    assert.equal(controlSocketPath('/nonexistent/run/'), '/nonexistent/run/waymarkd.sock');
    for (const v of [dir, `${dir}/`, join(dir, 'waymarkd.sock')]) assert.equal(decideSocketPath(v), join(dir, DECIDE_SOCKET), v);
  });

  it('the preload library asks decide.sock in that directory, for both forms', { skip: !isRoot || !hasUnshare ? 'needs root and unshare (a throwaway network namespace)' : false }, async () => {
    const listen = native.unixListen(join(dir, DECIDE_SOCKET), 'seqpacket', 16, 0o666);
    const other = mkdtempSync(join(tmpdir(), 'wm-sockenv-other-'));
    try {
      // A connect() the library asks about. In a fresh network namespace (lo down, no routes)
      // nothing leaves the machine: once the unanswered request times out, connect fails.
      const connects = (socketEnv: string): Promise<number | null> => new Promise((resolve) => {
        const py = 'import socket\ns = socket.socket()\ntry:\n    s.connect(("192.0.2.1", 9))\nexcept OSError as e:\n    print(e.errno)\n';
        const c = spawn('unshare', ['--net', '/usr/bin/python3', '-c', py], {
          env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LD_PRELOAD: LIB, WAYMARK_SOCKET: socketEnv, WAYMARK_TIMEOUT_MS: '100' },
          stdio: 'ignore',
        });
        c.once('exit', (code) => resolve(code));
      });
      /** Connections the library made to our decide.sock (pending in the backlog until accepted). */
      const asked = (): number => {
        let n = 0;
        for (let fd = native.accept(listen); fd !== null; fd = native.accept(listen)) {
          native.close(fd);
          n++;
        }
        return n;
      };
      for (const form of [join(dir, 'waymarkd.sock'), dir, `${dir}/`]) {
        assert.equal(await connects(form), 0, form);
        assert.equal(asked(), 1, `WAYMARK_SOCKET=${form}: the library asked ${join(dir, DECIDE_SOCKET)}`);
      }
      assert.equal(await connects(other), 0);
      assert.equal(asked(), 0, 'another directory: not this decide.sock');
    } finally {
      native.close(listen);
      rmSync(other, { recursive: true, force: true });
    }
  });
});
