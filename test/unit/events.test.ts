/**
 * The event bus (src/daemon/events.ts) on its own: topics, the privacy filter, the bounded queue
 * and its `events.lost` count; and the control server pushing it (protocol v2) to real clients:
 * a v2 subscriber gets events, v1 clients are answered as before, a subscriber that stops
 * reading costs the daemon at most the bound and is told what it lost.
 */
import { describe, it } from 'node:test';
import { placeholderHandlers } from '../support/fakes.js';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { formatEvent } from '../../src/cli/watch.js';
import { Client, DaemonError } from '../../src/daemon/client.js';
import { EventBus, UplinkWatcher, type DaemonEvent, type DecisionDenied, type EventBody, type UplinkChanged } from '../../src/daemon/events.js';
import type { Logger } from '../../src/daemon/log.js';
import type { HelloResult, StatusResult } from '../../src/daemon/protocol.js';
import { ControlServer, SOCKET_HIGH_WATER, type Handlers } from '../../src/daemon/server.js';
import type { UplinkState } from '../../src/uplink/state.js';

const quiet: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

const uplink = (n: number): UplinkChanged => ({ type: 'uplink.changed', uplink: `u${n}`, ifname: 'wlan0', status: 'down', carrier: false, addresses: [], previous: 'active' });
const denial = (uid: number, port = 80): DecisionDenied => ({
  type: 'decision.denied', uid, pid: 100 + uid, exe: '/usr/bin/curl', app: 'nomms', destination: 'mms', address: '10.0.0.1', port, proto: 'tcp', uplink: null, errno: 'EACCES', reason: 'no',
});

/** Everything a subscriber has queued now. */
function drain(take: () => DaemonEvent | undefined): DaemonEvent[] {
  const out: DaemonEvent[] = [];
  for (let e = take(); e !== undefined; e = take()) out.push(e);
  return out;
}

describe('EventBus', () => {
  it('gives an unprivileged subscriber its own uid\'s denials and sessions and everyone\'s uplink and config events; root sees all', () => {
    const bus = new EventBus();
    const user = bus.subscribe({ uid: 4242, seesAll: false, topics: ['uplink', 'config', 'decision', 'session'], wake: () => undefined });
    const admin = bus.subscribe({ uid: 1000, seesAll: true, topics: ['uplink', 'config', 'decision', 'session'], wake: () => undefined });
    const bodies: EventBody[] = [
      denial(0), denial(4242), uplink(1),
      { type: 'config.reloaded', generation: 2, uplinks: 4, destinations: 5, rules: 1 },
      { type: 'session.started', id: 'exec-1', uid: 0, uplink: null, command: 'secret --token x' },
      { type: 'session.ended', id: 'exec-2', uid: 4242 },
    ];
    for (const b of bodies) bus.publish(b);
    const seen = (es: DaemonEvent[]): string[] => es.map((e) => `${e.type}${'uid' in e ? ` ${e.uid}` : ''}`);
    assert.deepEqual(seen(drain(() => user.take())), ['decision.denied 4242', 'uplink.changed', 'config.reloaded', 'session.ended 4242']);
    assert.deepEqual(seen(drain(() => admin.take())), ['decision.denied 0', 'decision.denied 4242', 'uplink.changed', 'config.reloaded', 'session.started 0', 'session.ended 4242']);
  });

  it('delivers only the subscribed topics, numbered in publishing order; wants() tells whether anyone listens', () => {
    const bus = new EventBus();
    assert.equal(bus.wants('decision'), false);
    const s = bus.subscribe({ uid: 0, seesAll: true, topics: ['uplink'], wake: () => undefined });
    assert.equal(bus.wants('decision'), false);
    assert.equal(bus.wants('uplink'), true);
    bus.publish(uplink(1));
    bus.publish(denial(0));
    bus.publish(uplink(2));
    assert.deepEqual(drain(() => s.take()).map((e) => [e.type, e.seq]), [['uplink.changed', 1], ['uplink.changed', 3]]);
    s.close();
    assert.equal(bus.wants('uplink'), false);
    assert.equal(bus.stats.subscribers, 0);
  });

  it('wakes a subscriber only when its queue goes from empty to not empty', () => {
    const bus = new EventBus();
    let wakes = 0;
    const s = bus.subscribe({ uid: 0, seesAll: true, topics: ['uplink'], wake: () => wakes++ });
    bus.publish(uplink(1));
    bus.publish(uplink(2));
    assert.equal(wakes, 1);
    drain(() => s.take());
    bus.publish(uplink(3));
    assert.equal(wakes, 2);
  });

  it('holds at most its bound for a subscriber that does not take events, and then tells it how many it lost, in their place', () => {
    const bus = new EventBus(4);
    const slow = bus.subscribe({ uid: 0, seesAll: true, topics: ['uplink'], wake: () => undefined });
    const fast = bus.subscribe({ uid: 0, seesAll: true, topics: ['uplink'], wake: () => undefined });
    const fastSeen: number[] = [];
    for (let i = 1; i <= 10; i++) {
      bus.publish(uplink(i));
      fastSeen.push(...drain(() => fast.take()).map((e) => e.seq));
    }
    assert.deepEqual(fastSeen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'a slow subscriber costs the others nothing');
    assert.deepEqual(bus.stats, { subscribers: 2, queueLimit: 4, queued: 4, maxQueued: 4, published: 10, dropped: 6 });
    // Part of the queue taken: the loss is reported before the next event that fits.
    assert.deepEqual([slow.take()?.seq, slow.take()?.seq], [1, 2]);
    bus.publish(uplink(11));
    const rest = drain(() => slow.take()).map((e) => (e.type === 'events.lost' ? `lost ${e.count} up to #${e.lastSeq}` : `#${e.seq}`));
    assert.deepEqual(rest, ['#3', '#4', 'lost 6 up to #10', '#11']);
    // All taken with a loss pending: the loss comes on its own.
    for (let i = 12; i <= 20; i++) bus.publish(uplink(i));
    assert.ok(bus.stats.maxQueued <= 4);
    const tail = drain(() => slow.take()).map((e) => (e.type === 'events.lost' ? `lost ${e.count}` : `#${e.seq}`));
    assert.deepEqual(tail, ['#12', '#13', '#14', '#15', 'lost 5']);
    assert.equal(slow.take(), undefined);
  });

  it('does nothing for nobody: no subscribers, no event built (numbers still advance)', () => {
    const bus = new EventBus();
    bus.publish(uplink(1));
    bus.publish(uplink(2));
    assert.deepEqual(bus.stats, { subscribers: 0, queueLimit: 256, queued: 0, maxQueued: 0, published: 2, dropped: 0 });
  });
});

describe('UplinkWatcher', () => {
  const state = (status: UplinkState['status'], addresses: string[]): UplinkState => ({
    spec: { name: 'wifi' } as UplinkState['spec'], slot: 1, table: 1001, mark: 0x1000000, softMark: 0, dnsSource: 'none', dns: [],
    status, link: { index: 3, name: 'wlan0', flags: 1 }, families: [{ family: 4, addresses, gatewaySource: 'kernel', routable: true }],
  });
  it('publishes one event per uplink whose status, carrier or addresses changed, with the status before', () => {
    const got: UplinkChanged[] = [];
    const w = new UplinkWatcher((e) => got.push(e));
    w.update([state('active', ['10.0.0.2/24'])]);
    assert.equal(got.length, 0, 'the first state is only recorded');
    w.update([state('active', ['10.0.0.2/24'])]);
    assert.equal(got.length, 0, 'nothing changed');
    w.update([state('down', [])]);
    w.update([state('active', ['10.0.0.3/24'])]);
    assert.deepEqual(got.map((e) => [e.previous, e.status, e.carrier, e.addresses]), [['active', 'down', false, []], ['down', 'active', true, ['10.0.0.3/24']]]);
    assert.match(formatEvent({ ...got[0]!, seq: 1, at: '2026-01-01T10:00:00.000Z' }), /^10:00:00\.000 uplink wifi \(wlan0\): active -> down, carrier no, addresses -$/);
  });
});

describe('ControlServer events (protocol v2)', () => {
  const GUARD = { timeout: 30_000 };
  const placeholder = <T>(x: object): Promise<T> => Promise.resolve(x as T);
  const handlers: Handlers = {
    ...placeholderHandlers(),
    hello: () => Promise.resolve<HelloResult>({ daemon: 'waymarkd', version: 't', protocol: 2, protocols: [1, 2], methods: [], topics: [] }),
    status: () => placeholder<StatusResult>({}),
    'events.subscribe': (p, _cred, ctx) => Promise.resolve(ctx.subscribe(p.topics)),
  };

  /** A raw connection: sends lines, collects the lines it reads. */
  function raw(sock: string): { s: Socket; lines: string[]; next(pred: (l: string) => boolean): Promise<string>; send(o: object): void } {
    const s = connect(sock);
    s.setEncoding('utf8');
    const lines: string[] = [];
    let buf = '';
    const waiters: { pred(l: string): boolean; resolve(l: string): void }[] = [];
    s.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        lines.push(l);
        for (const w of [...waiters]) if (w.pred(l)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(l); }
      }
    });
    return {
      s, lines,
      next: (pred) => {
        const hit = lines.find(pred);
        return hit !== undefined ? Promise.resolve(hit) : new Promise((resolve) => waiters.push({ pred, resolve }));
      },
      send: (o) => s.write(JSON.stringify(o) + '\n'),
    };
  }

  it('pushes events to a v2 subscriber; a v1 client is answered in v1 and gets a clear error for events; an unknown version is named', GUARD, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'wm-events-'));
    const sock = path.join(dir, 'c.sock');
    const bus = new EventBus();
    const server = new ControlServer(sock, handlers, quiet, { events: bus });
    await server.listen();
    const c = new Client(sock);
    const v1 = raw(sock);
    try {
      const got: DaemonEvent[] = [];
      let arrived: () => void = () => undefined;
      const two = new Promise<void>((resolve) => (arrived = resolve));
      const sub = await c.subscribe(['decision'], (e) => {
        got.push(e);
        if (got.length === 2) arrived();
      });
      assert.deepEqual(sub, { topics: ['decision'], seesAll: process.getuid?.() === 0, queueLimit: 256 });
      bus.publish(uplink(1)); // not subscribed
      bus.publish(denial(process.getuid?.() ?? 0, 1));
      bus.publish(denial(process.getuid?.() ?? 0, 2));
      await two;
      assert.deepEqual(got.map((e) => [e.type, e.seq, e.type === 'decision.denied' ? e.port : 0]), [['decision.denied', 2, 1], ['decision.denied', 3, 2]]);
      assert.equal((await c.call('hello')).daemon, 'waymarkd', 'requests are answered on a subscribed connection');

      v1.send({ v: 1, id: 5, method: 'hello' });
      assert.deepEqual(JSON.parse(await v1.next((l) => l.includes('"id":5'))), { v: 1, id: 5, ok: true, result: { daemon: 'waymarkd', version: 't', protocol: 2, protocols: [1, 2], methods: [], topics: [] } });
      v1.send({ v: 1, id: 6, method: 'events.subscribe', params: {} });
      assert.deepEqual(JSON.parse(await v1.next((l) => l.includes('"id":6'))), { v: 1, id: 6, ok: false, error: { code: 'EPROTO', message: 'events.subscribe needs protocol version 2 (the request says 1)' } });
      v1.send({ v: 3, id: 7, method: 'hello' });
      assert.deepEqual(JSON.parse(await v1.next((l) => l.includes('"id":7'))), { v: 2, id: 7, ok: false, error: { code: 'EPROTO', message: 'protocol version 3 is not spoken here (waymarkd speaks 1, 2)' } });
      v1.send({ v: 2, id: 8, method: 'events.subscribe', params: { topics: ['nope'] } });
      const bad = JSON.parse(await v1.next((l) => l.includes('"id":8'))) as { error: { code: string; message: string } };
      assert.equal(bad.error.code, 'EINVAL');
      assert.match(bad.error.message, /^bad params: topics\.0: /);
      await assert.rejects(c.call('exec.end', { id: 'BAD ID' }), (e: unknown) => e instanceof DaemonError && e.code === 'EINVAL');
    } finally {
      c.close();
      v1.s.destroy();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a subscriber that stops reading holds the bus\'s bound and one socket buffer; publishing goes on; once it reads it learns how many it lost', GUARD, async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'wm-events-'));
    const sock = path.join(dir, 'c.sock');
    const LIMIT = 16;
    const bus = new EventBus(LIMIT);
    const server = new ControlServer(sock, handlers, quiet, { events: bus });
    await server.listen();
    const stuck = raw(sock);
    try {
      stuck.send({ v: 2, id: 1, method: 'events.subscribe', params: { topics: ['decision'] } });
      await stuck.next((l) => l.includes('"id":1'));
      stuck.s.pause(); // reads nothing more: the kernel buffers fill, then the daemon's
      const N = 20_000;
      let unwrittenMax = 0;
      for (let i = 0; i < N; i++) {
        bus.publish(denial(0, i % 65536));
        // Let the server write between bursts, as the daemon's event loop would.
        if (i % 100 === 99) {
          await new Promise((r) => setImmediate(r));
          unwrittenMax = Math.max(unwrittenMax, server.stats.unwrittenBytes);
          assert.ok(bus.stats.maxQueued <= LIMIT, `queued for it: ${bus.stats.maxQueued}`);
        }
      }
      const st = bus.stats;
      assert.equal(st.published, N);
      assert.ok(st.dropped > 0, 'events were dropped for it');
      const line = JSON.stringify({ v: 2, event: { ...denial(0, 65535), seq: N, at: new Date().toISOString() } }).length + 1;
      assert.ok(unwrittenMax <= SOCKET_HIGH_WATER + line, `bytes the daemon held for its socket: ${unwrittenMax}`);
      console.log(`# stuck subscriber: ${N} published, ${st.dropped} dropped, at most ${LIMIT} queued and ${unwrittenMax} bytes unwritten in the daemon`);
      // It reads again: what was queued and buffered, with events.lost in each gap, up to the last event (or a loss ending with it).
      stuck.s.resume();
      await stuck.next((l) => l.includes(`"seq":${N},`) || l.includes(`"lastSeq":${N},`));
      const events = stuck.lines.slice(1).map((l) => (JSON.parse(l) as { event: DaemonEvent }).event);
      const lost = events.flatMap((e) => (e.type === 'events.lost' ? [e.count] : []));
      const delivered = events.filter((e) => e.type === 'decision.denied').length;
      assert.ok(lost.length > 0);
      assert.equal(lost.reduce((a, b) => a + b, 0), st.dropped, 'the losses told add up to the events dropped');
      assert.equal(delivered + st.dropped, N, 'every event was delivered or counted as lost');
      // In order: each loss sits where its events were missing.
      let expect = 1;
      for (const e of events) {
        if (e.type === 'events.lost') assert.ok(e.lastSeq >= expect + e.count - 1, `loss of ${e.count} up to #${e.lastSeq} after #${expect - 1}`);
        expect = (e.type === 'events.lost' ? e.lastSeq : e.seq) + 1;
      }
    } finally {
      stuck.s.destroy();
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
