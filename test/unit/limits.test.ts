/**
 * The connection limiter both sockets share (src/daemon/limits.ts) and the bounded maps of the
 * decision service (src/daemon/expiring.ts), with a test clock.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { DecisionService } from '../../src/daemon/decisions.js';
import { GenerationFile } from '../../src/decision/generation.js';
import { WM_RESOLVE, WM_TYPE } from '../../src/decision/wire.js';
import { SessionRegistry } from '../../src/session/session.js';
import type { UplinkState } from '../../src/uplink/state.js';
import { exampleConfig, labStates, rulesOf } from '../support/fixture.js';
import { isRoot } from '../support/uidclient.js';

import { ExpiringMap } from '../../src/daemon/expiring.js';
import { LearnedHosts } from '../../src/daemon/learned.js';
import {
  CONTROL_LIMITS, ConnectionLimiter, DECIDE_LIMITS, MAX_TRACKED_UIDS, REFUSAL_LOG_INTERVAL_MS, connectionLimits, decideTotalFor, openFilesLimit, refusalsSeenBy,
} from '../../src/daemon/limits.js';
import type { Logger } from '../../src/daemon/log.js';

const DNS_SERVER = fileURLToPath(new URL('../../src/lab/dns-server.js', import.meta.url));

function warnings(): { log: Logger; lines: { msg: string; fields: Record<string, unknown> | undefined }[] } {
  const lines: { msg: string; fields: Record<string, unknown> | undefined }[] = [];
  const none = (): void => undefined;
  return { lines, log: { debug: none, info: none, error: none, warn: (msg, fields) => { lines.push({ msg, fields }); } } };
}

describe('ConnectionLimiter', () => {
  it('admits a uid up to its limit, keeps the reserve for root, and root up to the total', () => {
    const { log } = warnings();
    const l = new ConnectionLimiter('test socket', { total: 10, perUid: 4, rootReserve: 3 }, log);
    for (let i = 0; i < 4; i++) assert.equal(l.admit(1000, 1), true);
    assert.equal(l.admit(1000, 1), false, 'the fifth of uid 1000');
    assert.equal(l.refusal(1000), 'uid');
    for (let i = 0; i < 3; i++) assert.equal(l.admit(1001, 2), true);
    assert.equal(l.admit(1002, 3), false, 'seven non-root connections: the other three are root\'s');
    assert.equal(l.refusal(1002), 'reserve');
    for (let i = 0; i < 3; i++) assert.equal(l.admit(0, 4), true);
    assert.equal(l.admit(0, 4), false, 'the total binds root too');
    assert.equal(l.refusal(0), 'total');
    assert.equal(l.size, 10);
    l.release(1001);
    assert.equal(l.admit(1002, 3), true, 'a place a user frees is free for users again (6 of 7)');
  });

  it('frees a place on release, and ignores a release of a uid with none open', () => {
    const { log } = warnings();
    const l = new ConnectionLimiter('test socket', { total: 2, perUid: 1, rootReserve: 1 }, log);
    assert.equal(l.admit(7, 1), true);
    assert.equal(l.admit(7, 1), false);
    l.release(8);
    l.release(7);
    l.release(7);
    assert.equal(l.size, 0);
    assert.equal(l.admit(7, 1), true);
  });

  it('counts refusals per uid and logs the first at once, then once per interval with the count not logged', () => {
    const { log, lines } = warnings();
    let now = 1_000_000;
    const l = new ConnectionLimiter('test socket', { total: 100, perUid: 1, rootReserve: 10 }, log, () => now);
    l.admit(4242, 1);
    for (let i = 0; i < 5; i++) l.admit(4242, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!.msg, /^test socket: too many connections from uid 4242; refusing them \(at most 1 per uid\)$/);
    assert.equal(lines[0]!.fields?.['uid'], 4242);
    l.admit(4243, 2);
    l.admit(4243, 2);
    assert.equal(lines.length, 2, 'another uid is logged at once');
    now += REFUSAL_LOG_INTERVAL_MS;
    l.admit(4242, 1);
    assert.equal(lines.length, 3);
    assert.equal(lines[2]!.fields?.['suppressed'], 4);
    assert.equal(lines[2]!.fields?.['refused'], 6);
    assert.deepEqual(l.stats.refusedByUid, [{ uid: 4242, refused: 6 }, { uid: 4243, refused: 1 }]);
    assert.equal(l.stats.refused, 7);
  });

  it('tracks at most MAX_TRACKED_UIDS uids; later ones count in the total and share one log rate limit', () => {
    const { log, lines } = warnings();
    const l = new ConnectionLimiter('test socket', { total: 1, perUid: 1, rootReserve: 0 }, log, () => 5);
    l.admit(0, 1);
    for (let uid = 1; uid <= MAX_TRACKED_UIDS + 10; uid++) l.admit(uid, 1);
    assert.equal(l.stats.refusedByUid.length, MAX_TRACKED_UIDS);
    assert.equal(l.stats.refused, MAX_TRACKED_UIDS + 10);
    assert.equal(lines.length, MAX_TRACKED_UIDS + 1);
  });

  it('shows which uids were refused to root and the waymark group only; others see their own entry and the counts', () => {
    const stats = { refused: 5, refusedByUid: [{ uid: 4242, refused: 4 }, { uid: 1000, refused: 1 }] };
    assert.deepEqual(refusalsSeenBy(stats, 0, true), stats);
    assert.deepEqual(refusalsSeenBy(stats, 1000, false), { refused: 5, refusedByUid: [{ uid: 1000, refused: 1 }] });
    assert.deepEqual(refusalsSeenBy(stats, 65534, false), { refused: 5, refusedByUid: [] });
  });

  it('fills in and scales limits; reads RLIMIT_NOFILE; fits the decide total beside the control socket', () => {
    assert.deepEqual(connectionLimits({}, DECIDE_LIMITS), DECIDE_LIMITS);
    assert.deepEqual(connectionLimits({}, CONTROL_LIMITS), CONTROL_LIMITS);
    assert.deepEqual(connectionLimits({ total: 8 }, DECIDE_LIMITS), { total: 8, perUid: 7, rootReserve: 1 });
    assert.deepEqual(connectionLimits({ total: 12, perUid: 4, rootReserve: 4 }, DECIDE_LIMITS), { total: 12, perUid: 4, rootReserve: 4 });
    const limits = 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            4096                 524288               files\n';
    assert.equal(openFilesLimit(limits), 4096);
    assert.equal(openFilesLimit('Max open files            unlimited            unlimited            files\n'), Infinity);
    assert.ok(openFilesLimit() > 0);
    assert.equal(decideTotalFor(524288), DECIDE_LIMITS.total);
    assert.equal(decideTotalFor(4096), 4096 - CONTROL_LIMITS.total - 256);
  });
});

describe('ExpiringMap', () => {
  it('evicts expired entries first, then the oldest, to stay within its cap', () => {
    let now = 1000;
    const m = new ExpiringMap<string, { until: number }>(3, () => now);
    m.set('a', { until: 5000 });
    m.set('b', { until: 1500 });
    m.set('c', { until: 5000 });
    now = 2000; // b has expired
    assert.deepEqual(m.set('d', { until: 5000 }), ['b'], 'the expired one goes, not the oldest');
    assert.deepEqual([...m].map(([k]) => k), ['a', 'c', 'd']);
    assert.deepEqual(m.set('e', { until: 5000 }), ['a'], 'none expired: the oldest goes');
    m.set('c', { until: 6000 }); // refreshed: now the newest
    assert.deepEqual(m.set('f', { until: 5000 }), ['d']);
    assert.deepEqual([...m].map(([k]) => k), ['e', 'c', 'f']);
    assert.equal(m.size, 3);
  });

  it('prunes expired entries on demand and never grows past its cap', () => {
    let now = 0;
    const m = new ExpiringMap<number, { until: number }>(100, () => now);
    for (let i = 0; i < 10_000; i++) m.set(i, { until: i < 9950 ? 10 : 1000 });
    assert.equal(m.size, 100);
    now = 20;
    assert.deepEqual(m.prune().length, 50);
    assert.deepEqual([...m].map(([k]) => k), Array.from({ length: 50 }, (_, i) => 9950 + i));
    assert.throws(() => new ExpiringMap(0), /max must be at least 1/);
  });
});

/**
 * The decision service's learnt addresses with a real resolver and a real DNS server (the
 * lab's) on 127.0.0.77:53, loopback only: whatever names a caller resolves under a domain
 * destination, the map keeps at most its cap, newest first, and expired entries are pruned.
 */
describe('DecisionService learnt addresses', { skip: !isRoot && 'needs root (DNS server on port 53)' }, () => {
  const NAMES = 10;
  const SERVER = '127.0.0.77';
  let dns: ChildProcess | undefined;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'wm-learned-'));
    const records = Array.from({ length: NAMES }, (_, i) => ['--record', `h${i}.corp.example=10.9.0.${i + 1}`]).flat();
    const child = spawn(process.execPath, [DNS_SERVER, '--name', 'test', '--listen', SERVER, '--port', '53', ...records, '--exit-on-stdin-eof'],
      { stdio: ['pipe', 'pipe', 'pipe'] });
    dns = child;
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout }).once('line', () => resolve());
      child.once('exit', (code) => reject(new Error(`dns-server exited (${code}): ${err}`)));
    });
  });
  after(() => {
    dns?.stdin?.end();
    dns?.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps at most its cap of learnt addresses (the oldest go), tells the kernel side, and prunes the expired ones', async () => {
    const config = exampleConfig();
    // The office VPN answers for corp.example through the test's server (no mark: loopback only).
    const states: UplinkState[] = labStates(config).states.map((u) => (u.spec.name === 'office-vpn' ? { ...u, dns: [SERVER], mark: 0 } : u));
    let now = Date.now();
    let changes = 0;
    const none = (): void => undefined;
    const clock = { now: () => now, after: () => ({ cancel: none }) };
    const learned = new LearnedHosts({ onChange: () => { changes++; }, configured: () => true, max: 4, clock });
    const service = new DecisionService({ config, rules: rulesOf(config), uplinks: states, sessions: new SessionRegistry(), learned }, new GenerationFile(dir),
      { debug: none, info: none, warn: none, error: none }, { dnsCache: 3, now: () => now });
    try {
      const caller = { pid: process.pid, uid: 0, gid: 0 };
      for (let i = 0; i < NAMES; i++) {
        const r = await service.resolve({ type: WM_TYPE.RESOLVE, seq: i, family: 4, needs: 0, uplink: '', name: `h${i}.corp.example` }, caller);
        assert.equal(r.status, WM_RESOLVE.RESOLVED, `h${i}.corp.example`);
        assert.equal(r.uplink, 'office-vpn');
      }
      assert.deepEqual(learned.byDestination(), new Map([['office', ['10.9.0.7', '10.9.0.8', '10.9.0.9', '10.9.0.10']]]));
      assert.equal(changes, NAMES, 'each new address reached the kernel side');
      now += 3_600_001; // past every TTL (at most an hour)
      service.prune();
      assert.equal(changes, NAMES + 1, 'the pruned ones too');
      now = Date.now();
      const again = await service.resolve({ type: WM_TYPE.RESOLVE, seq: 99, family: 4, needs: 0, uplink: '', name: 'h0.corp.example' }, caller);
      assert.equal(again.status, WM_RESOLVE.RESOLVED);
      assert.deepEqual(learned.byDestination(), new Map([['office', ['10.9.0.1']]]), 'nothing expired was kept');
    } finally {
      service.close();
    }
  });
});
