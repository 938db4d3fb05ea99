import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  decodeDecideRequest, decodeDecideResponse, decodeResolveRequest, decodeResolveResponse, encodeDecideRequest,
  decodePending, encodeDecideResponse, encodePending, encodeResolveRequest, encodeResolveResponse, SIZES, WM_ACTION, WM_RESOLVE,
} from '../../src/decision/wire.js';
import { PACKAGE_ROOT } from '../../src/version.js';

let dir: string;
let probe: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'wm-wire-'));
  probe = join(dir, 'probe');
  execFileSync('cc', ['-Wall', '-Werror', '-I', join(PACKAGE_ROOT, 'native/include'), '-o', probe, join(PACKAGE_ROOT, 'test/fixtures/wire_probe.c')]);
});
after(() => rmSync(dir, { recursive: true, force: true }));

const run = (input: Buffer, ...args: string[]): Buffer => spawnSync(probe, args, { input }).stdout;

describe('decision wire format: C header and TypeScript agree', () => {
  it('has the same struct sizes', () => {
    const lines = run(Buffer.alloc(0)).toString().trim().split('\n');
    const sizes = (JSON.parse(lines[lines.length - 1] ?? '{}') as { sizes: number[] }).sizes;
    assert.deepEqual(sizes, [SIZES.header, SIZES.decideReq, SIZES.decideResp, SIZES.resolveReq, SIZES.resolveResp, SIZES.addr, SIZES.pending]);
  });

  it('a request encoded in TypeScript reads right in C', () => {
    const req = encodeDecideRequest({ seq: 9, family: 4, proto: 'udp', port: 5353, needs: 0x21, addr: Uint8Array.from([10, 200, 0, 10]), uplink: 'mms', destination: 'mms' });
    const out = JSON.parse(run(req).toString().split('\n')[0] ?? '') as Record<string, unknown>;
    assert.deepEqual(out, { type: 1, seq: 9, len: SIZES.decideReq, family: 2, proto: 17, port: 5353, needs: 0x21, a0: 10, a3: 10, uplink: 'mms', destination: 'mms' });
    assert.deepEqual(JSON.parse(run(encodePending({ seq: 12, waitMs: 30_000 })).toString().split('\n')[0] ?? ''), { type: 3, seq: 12, len: SIZES.pending, wait_ms: 30_000 });
    const res = encodeResolveRequest({ seq: 1, family: 6, needs: 8, uplink: '', name: 'intranet.corp.example' });
    assert.deepEqual(JSON.parse(run(res).toString().split('\n')[0] ?? ''), { type: 2, family: 10, needs: 8, uplink: '', name: 'intranet.corp.example' });
  });

  it('a response built in C decodes in TypeScript', () => {
    assert.deepEqual(decodeDecideResponse(run(Buffer.alloc(0), 'resp')), {
      seq: 77, action: WM_ACTION.STEER, err: 0, ifindex: 4, mark: 0x03000000, ttlMs: 60000, generation: 0xdeadbeef, ifname: 'wwan1', uplink: 'mms',
    });
  });

  it('round-trips and rejects malformed messages', () => {
    const req = encodeDecideRequest({ seq: 1, family: 6, proto: 'tcp', port: 80, needs: 0, addr: new Uint8Array(16).fill(1), uplink: '', destination: '' });
    assert.equal(decodeDecideRequest(req)?.family, 6);
    assert.equal(decodeDecideRequest(req.subarray(0, 100)), undefined, 'short');
    const badMagic = Buffer.from(req); badMagic[0] = 0;
    assert.equal(decodeDecideRequest(badMagic), undefined, 'magic');
    const unterminated = Buffer.from(req); unterminated.fill(0x41, 40, 72);
    assert.equal(decodeDecideRequest(unterminated), undefined, 'unterminated string');
    const badFamily = Buffer.from(req); badFamily[16] = 7;
    assert.equal(decodeDecideRequest(badFamily), undefined, 'family');
    assert.equal(decodeResolveRequest(req), undefined, 'wrong type');
    assert.deepEqual(decodePending(encodePending({ seq: 4, waitMs: 1500 })), { seq: 4, waitMs: 1500 });
    assert.equal(decodePending(req), undefined, 'not a WM_PENDING');
    const resp = encodeResolveResponse({ seq: 3, status: WM_RESOLVE.RESOLVED, ttlMs: 1000, generation: 5, uplink: 'office-vpn', addrs: [{ family: 4, addr: Uint8Array.from([172, 16, 5, 10]) }] });
    assert.deepEqual(decodeResolveResponse(resp)?.addrs, [{ family: 4, addr: Uint8Array.from([172, 16, 5, 10]) }]);
    assert.equal(encodeDecideResponse({ seq: 1, action: 0, err: 0, ifindex: 0, mark: 0, ttlMs: 0, generation: 0, ifname: '', uplink: '' }).length, SIZES.decideResp);
    assert.throws(() => encodeDecideRequest({ seq: 1, family: 4, proto: 'tcp', port: 1, needs: 0, addr: new Uint8Array(4), uplink: 'x'.repeat(32), destination: '' }), RangeError);
  });
});
