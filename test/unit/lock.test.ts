/** claimInstance: the flocks in the state and socket directories, and the check of the socket. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { AlreadyRunning, claimInstance, LOCK_FILE } from '../../src/daemon/lock.js';
import * as native from '../../src/native/index.js';

const root = mkdtempSync(join(tmpdir(), 'wm-lock-'));
after(() => rmSync(root, { recursive: true, force: true }));
const LOCK_JS = new URL('../../src/daemon/lock.js', import.meta.url);

describe('one waymarkd per state and socket directory', () => {
  it('a held lock refuses the next claim, naming the holder; the kernel frees it when the holder dies', async () => {
    const dirs = { stateDir: join(root, 'a', 'state'), runDir: join(root, 'a', 'run'), socket: join(root, 'a', 'run', 'w.sock') };
    // The holder: another process that claims, says so, and waits to be killed.
    const holder = spawn(process.execPath, ['--input-type=module', '-e',
      `const { claimInstance } = await import(${JSON.stringify(pathToFileURL(LOCK_JS.pathname).href)});
       await claimInstance(${JSON.stringify(dirs)}); console.log('held'); setInterval(() => {}, 1 << 30);`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      holder.stdout.on('data', (b: Buffer) => { if (b.toString().includes('held')) resolve(); });
      holder.once('exit', (code) => reject(new Error(`the holder exited (${code}) before claiming`)));
    });
    assert.equal(readFileSync(join(dirs.stateDir, LOCK_FILE), 'utf8'), `${holder.pid}\n`);
    await assert.rejects(claimInstance(dirs), (e: unknown) =>
      e instanceof AlreadyRunning && e.pid === holder.pid && e.message.includes(join(dirs.stateDir, LOCK_FILE)));
    // Only the socket directory shared: its lock refuses.
    await assert.rejects(claimInstance({ ...dirs, stateDir: join(root, 'a', 'other') }), (e: unknown) =>
      e instanceof AlreadyRunning && e.message.includes(`(pid ${holder.pid}) holds ${join(dirs.runDir, LOCK_FILE)}`));
    const gone = new Promise((resolve) => holder.once('exit', resolve));
    holder.kill('SIGKILL');
    await gone;
    const lock = await claimInstance(dirs);
    assert.deepEqual(lock.paths, [join(dirs.stateDir, LOCK_FILE), join(dirs.runDir, LOCK_FILE)]);
    assert.equal(readFileSync(join(dirs.runDir, LOCK_FILE), 'utf8'), `${process.pid}\n`);
  });

  it('something listening on the socket refuses the claim; a stale socket file does not', async () => {
    const run = join(root, 'b');
    const socket = join(run, 'w.sock');
    mkdirSync(run);
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      await assert.rejects(claimInstance({ stateDir: join(run, 's1'), runDir: join(run, 'r1'), socket }), (e: unknown) =>
        e instanceof AlreadyRunning && e.pid === undefined && e.message.includes(`answers on ${socket}`));
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    // A crashed daemon's socket file: bound once, nobody listening now.
    native.close(native.unixListen(socket, 'stream', 1, 0o600));
    await claimInstance({ stateDir: join(run, 's2'), runDir: join(run, 'r2'), socket });
  });

  it('the lock files are root\'s alone (0600, an older readable one too): flock needs no write access, so a reader could hold it', async () => {
    const dirs = { stateDir: join(root, 'c', 'state'), runDir: join(root, 'c', 'run'), socket: join(root, 'c', 'run', 'w.sock') };
    mkdirSync(dirs.runDir, { recursive: true });
    writeFileSync(join(dirs.runDir, LOCK_FILE), '1\n');
    chmodSync(join(dirs.runDir, LOCK_FILE), 0o644);
    const lock = await claimInstance(dirs);
    for (const path of lock.paths) assert.equal(statSync(path).mode & 0o777, 0o600, path);
  });
});
