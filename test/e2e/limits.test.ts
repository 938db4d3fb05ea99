/**
 * One user cannot turn steering off for the others (issue 7), on the real daemon in the lab: a
 * python3 client as uid 4242 takes its whole share of both sockets (1024 decide connections,
 * 128 control connections); its next ones are refused, while root and another user are still
 * steered, and `waymark status` (text and JSON) and the daemon's log name uid 4242. The client
 * runs on the host side of the sockets (Unix sockets are reached by path, whatever the network
 * namespace); each step waits for a line it printed.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Device } from '../../src/lab/device.js';
import { LAB } from '../../src/lab/lab.js';
import type { StatusResult } from '../../src/daemon/protocol.js';
import { CONTROL_LIMITS, DECIDE_LIMITS } from '../../src/daemon/limits.js';
import { DECIDE_SOCKET, encodeDecideRequest } from '../../src/decision/wire.js';
import { url, useLab } from '../support/lab.js';
import { holdConnections } from '../support/uidclient.js';

let dev: Device;

useLab({}, (_lab, d) => {
  dev = d;
});

async function execCurl(uplink: string, addr: string, uid?: number): Promise<{ code: number; stderr: string; path: string | undefined }> {
  const r = await dev.waymark(['exec', '--uplink', uplink, '--', 'curl', '-sS', '-g', '--max-time', '3', url(addr)], { timeoutMs: 8000, ...(uid !== undefined ? { uid } : {}) });
  return { code: r.code ?? -1, stderr: r.stderr, path: r.code === 0 ? (JSON.parse(r.stdout) as { path: string }).path : undefined };
}

describe('connection limits of the daemon', () => {
  it('a user holding its whole share of both sockets is refused more; root and other users are still steered; status and log name the uid', { timeout: 120_000 }, async () => {
    const request = encodeDecideRequest({
      seq: 1, family: 4, proto: 'tcp', port: 80, needs: 0, addr: Uint8Array.from([10, 200, 0, 10]), uplink: '', destination: '',
    });
    const hog = holdConnections(4242, {
      decide: { path: join(dev.dir, DECIDE_SOCKET), n: DECIDE_LIMITS.perUid, request },
      control: { path: dev.socket, n: CONTROL_LIMITS.perUid },
    });
    try {
      assert.equal(await hog.line(), `ready ${DECIDE_LIMITS.perUid} ${CONTROL_LIMITS.perUid}`);
      assert.equal(await hog.ask('decide'), 'refused');
      assert.equal(await hog.ask('control'), `refused EBUSY too many connections to waymarkd from uid 4242 (at most ${CONTROL_LIMITS.perUid} per uid)`);

      const root = await execCurl('wwan1', LAB.mmsc.v4);
      assert.equal(root.path, 'wwan1', `root is still steered: ${root.stderr}`);
      const other = await execCurl('wwan1', LAB.mmsc.v4, 65534);
      assert.equal(other.path, 'wwan1', `another user is still steered: ${other.stderr}`);

      const r = await dev.waymark(['status', '--json']);
      assert.equal(r.code, 0, r.stderr);
      const s = JSON.parse(r.stdout) as StatusResult;
      assert.deepEqual(s.decisions?.refusedByUid, [{ uid: 4242, refused: 1 }]);
      assert.deepEqual(s.decisions?.limits, DECIDE_LIMITS);
      assert.ok((s.decisions?.clients ?? 0) >= DECIDE_LIMITS.perUid);
      assert.deepEqual(s.control?.refusedByUid, [{ uid: 4242, refused: 1 }]);
      assert.deepEqual(s.control?.limits, CONTROL_LIMITS);
      const text = (await dev.waymark(['status'])).stdout;
      assert.match(text, /^decide socket: \d+ connections, \d+ requests \(0 malformed, 1 refused connection, .*; refused: uid 4242 \(1\); limits 1024 per uid, 4096 in all, 512 kept for root$/m);
      assert.match(text, /^control socket: \d+ connections; refused: uid 4242 \(1\); limits 128 per uid, 512 in all, 64 kept for root$/m);
      // Another user sees that connections were refused, not whose.
      const theirs = JSON.parse((await dev.waymark(['status', '--json'], { uid: 65534 })).stdout) as StatusResult;
      assert.equal(theirs.decisions?.rejected, 1);
      assert.deepEqual(theirs.decisions?.refusedByUid, []);
      assert.deepEqual(theirs.control?.refusedByUid, []);
      const theirText = (await dev.waymark(['status'], { uid: 65534 })).stdout;
      assert.match(theirText, /^control socket: \d+ connections; refused: 1 connection; limits 128 per uid/m);
      assert.doesNotMatch(theirText, /uid 4242/);
      const log = readFileSync(join(dev.dir, 'waymarkd.log'), 'utf8');
      assert.match(log, /decide socket: too many connections from uid 4242/);
      assert.match(log, /control socket: too many connections from uid 4242/);
    } finally {
      await hog.stop();
    }
  });
});
