/**
 * The system watcher on a private dbus-daemon (never the machine's system bus), with the real
 * ModemManager reader against a fake ModemManager and stub readers for the other services. Every
 * wait is on an onChange event (or a connection attempt); the time bounds are guards.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { performance } from 'node:perf_hooks';
import { connectBus, type MessageBus } from '../../src/agent/dbus.js';
import { NO_SYSTEM_FACTS, type DeviceFacts, type ResolvedLinkFacts, type SystemFacts } from '../../src/system/facts.js';
import { ModemManagerReader } from '../../src/system/modemmanager.js';
import type { ServiceReader } from '../../src/system/reader.js';
import { DEFAULT_SYSTEM_BUS, SystemWatcher, systemBusAddress, type SystemWatcherOptions } from '../../src/system/watcher.js';
import { FakeModemManager } from '../support/fake-modemmanager.js';
import { recordingLog } from '../support/fakes.js';
import { Arrivals, startPrivateBus, type PrivateBus } from '../support/notify-server.js';

const HOME = { iccid: '89490200001234567890', operator: '26201', operatorName: 'Telekom.de' } as const;
const TRAVEL = { iccid: '89440000009876543210', operator: '23415', operatorName: 'Vodafone UK' } as const;

/** A reader for a service the test owns by hand: its value is fixed; attach can be made to fail. */
class StubReader<T> implements ServiceReader<T> {
  value: T;
  attaches = 0;
  failNext = false;
  private changed: (() => void) | undefined;
  constructor(readonly service: string, readonly empty: T, private readonly full: T) {
    this.value = empty;
  }
  /** A new value, said as a reader says it. */
  set(v: T): void {
    this.value = v;
    this.changed?.();
  }
  attach(_bus: MessageBus, _owner: string, changed: () => void): Promise<void> {
    this.attaches++;
    this.changed = changed;
    if (this.failNext) {
      this.failNext = false;
      return Promise.reject(new Error('stub: cannot read'));
    }
    this.value = this.full;
    return Promise.resolve();
  }
  detach(): void {
    this.value = this.empty;
    this.changed = undefined;
  }
}

const DEVICES: DeviceFacts[] = [{ interface: 'wlan0', metered: false, dns: ['192.0.2.53'] }];

interface Rig {
  readonly watcher: SystemWatcher;
  readonly events: Arrivals<SystemFacts>;
  readonly log: ReturnType<typeof recordingLog>;
  readonly nm: StubReader<readonly DeviceFacts[]>;
  readonly resolved: StubReader<readonly ResolvedLinkFacts[]>;
  /** The next event that satisfies `pred`. */
  until(pred: (f: SystemFacts) => boolean, what: string): Promise<SystemFacts>;
}

function rig(address: string | null, extra: Partial<SystemWatcherOptions> = {}): Rig {
  const log = recordingLog();
  const events = new Arrivals<SystemFacts>();
  const nm = new StubReader<readonly DeviceFacts[]>('org.freedesktop.NetworkManager', [], DEVICES);
  const resolved = new StubReader<readonly ResolvedLinkFacts[]>('org.freedesktop.resolve1', [], [{ ifindex: 3, dns: ['192.0.2.1'] }]);
  const watcher = new SystemWatcher({
    address, log, onChange: (f) => events.push(f),
    readers: { modemmanager: new ModemManagerReader(log), networkmanager: nm, resolved },
    retryMs: { first: 10, max: 80 },
    ...extra,
  });
  return {
    watcher, events, log, nm, resolved,
    until: async (pred, what) => {
      for (;;) {
        const f = await events.take(what);
        if (pred(f)) return f;
      }
    },
  };
}

/** Owns a well-known name on the bus (a stand-in service for the stub readers). */
async function own(address: string, name: string): Promise<MessageBus> {
  const b = await connectBus(address);
  await b.requestName(name);
  return b;
}

describe('systemBusAddress', () => {
  test('none, given, DBUS_SYSTEM_BUS_ADDRESS, the well-known socket', () => {
    assert.equal(systemBusAddress('none', {}), null);
    assert.equal(systemBusAddress('unix:path=/tmp/x', { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/tmp/y' }), 'unix:path=/tmp/x');
    assert.equal(systemBusAddress(undefined, { DBUS_SYSTEM_BUS_ADDRESS: 'unix:path=/tmp/y' }), 'unix:path=/tmp/y');
    assert.equal(systemBusAddress(undefined, {}), DEFAULT_SYSTEM_BUS);
    assert.equal(DEFAULT_SYSTEM_BUS, 'unix:path=/run/dbus/system_bus_socket');
  });
});

describe('SystemWatcher', () => {
  let bus: PrivateBus;
  before(async () => { bus = await startPrivateBus(); });
  after(async () => { await bus.close(); });

  test('no address: bus off, no connection attempted, no facts', async () => {
    let attempts = 0;
    const r = rig(null, { connect: () => { attempts++; return Promise.reject(new Error('must not connect')); } });
    await r.watcher.start();
    assert.equal(attempts, 0);
    assert.deepEqual(r.watcher.facts, NO_SYSTEM_FACTS);
    r.watcher.close();
    assert.equal(r.events.all.length, 0);
  });

  test('reads at start, follows a SIM swap, registration and bearers', async (t) => {
    const mm = await FakeModemManager.start(bus.address);
    const nmOwner = await own(bus.address, 'org.freedesktop.NetworkManager');
    const modem = mm.addModem({
      sim: HOME, registration: 1, operatorCode: '26201',
      bearers: [{ interface: 'wwan0', apn: 'internet', connected: true, dns4: ['10.0.0.53'], dns6: ['fd00::53'] }],
    });
    const r = rig(bus.address);
    try {
      await r.watcher.start();
      const f = r.watcher.facts;
      assert.deepEqual(f.services, { bus: 'connected', modemmanager: true, networkmanager: true, resolved: false });
      assert.equal(f.modems.length, 1);
      assert.deepEqual(f.modems[0]?.sim, { iccid: HOME.iccid, operator: '26201', operatorName: 'Telekom.de' });
      assert.deepEqual(f.modems[0]?.bearers[0], { path: f.modems[0]?.bearers[0]?.path, interface: 'wwan0', apn: 'internet', connected: true, dns: ['10.0.0.53', 'fd00::53'] });
      assert.deepEqual(f.devices, DEVICES);
      assert.deepEqual(f.resolved, []);
      // The start's facts come as one event.
      const first = await r.events.take('the first facts');
      assert.deepEqual(first, f);

      const t0 = performance.now();
      mm.setSim(modem, TRAVEL);
      const swapped = await r.until((x) => x.modems[0]?.sim?.iccid === TRAVEL.iccid, 'the SIM swap');
      const ms = performance.now() - t0;
      t.diagnostic(`SIM swap: fake setSim → onChange in ${ms.toFixed(1)} ms`);
      assert.ok(ms < 5000, `a guard only: ${ms} ms`);
      assert.equal(swapped.modems[0]?.sim?.operator, '23415');

      mm.setRegistration(modem, 5, '23415');
      await r.until((x) => x.modems[0]?.registration === 'roaming' && x.modems[0]?.operatorCode === '23415', 'roaming');
      mm.setRegistration(modem, 1, '26201');
      await r.until((x) => x.modems[0]?.registration === 'home', 'home again');

      const b = mm.addBearer(modem, { apn: 'mms', interface: 'wwan1', connected: true, dns4: ['10.0.1.53'] });
      await r.until((x) => x.modems[0]?.bearers.some((y) => y.path === b && y.apn === 'mms') === true, 'the MMS bearer');
      mm.removeModem(modem);
      const none = await r.until((x) => x.modems.length === 0, 'the modem gone');
      assert.equal(none.services.modemmanager, true, 'ModemManager is there, without modems');
    } finally {
      r.watcher.close();
      nmOwner.close();
      await mm.close();
    }
  });

  test('onChange only when the facts change, and once for changes in the same turn', async () => {
    const nmOwner = await own(bus.address, 'org.freedesktop.NetworkManager');
    const mm = await FakeModemManager.start(bus.address);
    const modem = mm.addModem({ sim: HOME, registration: 1, operatorCode: '26201' });
    const r = rig(bus.address);
    try {
      await r.watcher.start();
      await r.events.take('the first facts');
      // A reader saying "changed" without a change: no event (the next one is the registration's).
      r.nm.set(DEVICES);
      mm.setRegistration(modem, 5, '23415');
      const roaming = await r.events.take('roaming');
      assert.equal(roaming.modems[0]?.registration, 'roaming');
      assert.equal(r.events.all.length, 2);
      // Two changes in one turn: one event, with the last.
      const wwan: DeviceFacts = { interface: 'wwan0', metered: true, dns: [] };
      r.nm.set([wwan]);
      r.nm.set([...DEVICES, wwan]);
      const both = await r.events.take('the devices');
      assert.deepEqual(both.devices, [...DEVICES, wwan]);
      mm.setRegistration(modem, 1, '26201');
      const home = await r.events.take('home');
      assert.equal(home.modems[0]?.registration, 'home');
      assert.equal(r.events.all.length, 4, 'no event for the intermediate devices');
    } finally {
      r.watcher.close();
      nmOwner.close();
      await mm.close();
    }
  });

  test('ModemManager quitting empties its facts; coming back is read', async () => {
    const mm = await FakeModemManager.start(bus.address);
    mm.addModem({ sim: HOME });
    const r = rig(bus.address);
    let mm2: FakeModemManager | undefined;
    try {
      await r.watcher.start();
      assert.equal(r.watcher.facts.modems.length, 1);
      await mm.close();
      const gone = await r.until((f) => !f.services.modemmanager, 'ModemManager gone');
      assert.deepEqual(gone.modems, [], 'a service that quit has no modems');
      assert.equal(gone.services.bus, 'connected');

      mm2 = await FakeModemManager.start(bus.address);
      mm2.addModem({ sim: TRAVEL, registration: 5, operatorCode: '23415' });
      const back = await r.until((f) => f.services.modemmanager && f.modems.length === 1, 'ModemManager back');
      assert.equal(back.modems[0]?.sim?.iccid, TRAVEL.iccid);
      assert.equal(back.modems[0]?.registration, 'roaming');
    } finally {
      r.watcher.close();
      await mm2?.close();
    }
  });

  test('a reader whose attach fails is logged, left detached, and attached at the next owner change', async () => {
    const r = rig(bus.address);
    r.nm.failNext = true;
    let nmOwner = await own(bus.address, 'org.freedesktop.NetworkManager');
    try {
      await r.watcher.start();
      assert.equal(r.nm.attaches, 1);
      assert.equal(r.watcher.facts.services.networkmanager, false);
      assert.deepEqual(r.watcher.facts.devices, []);
      assert.ok(r.log.lines.some((l) => l.level === 'warn' && l.msg === 'cannot read system service'));
      nmOwner.close();
      nmOwner = await own(bus.address, 'org.freedesktop.NetworkManager');
      const f = await r.until((x) => x.services.networkmanager, 'NetworkManager attached');
      assert.deepEqual(f.devices, DEVICES);
      assert.equal(r.nm.attaches, 2);
    } finally {
      r.watcher.close();
      nmOwner.close();
    }
  });

  test('the bus going away keeps the facts (unavailable); coming back at the same address re-reads them', async () => {
    const mm = await FakeModemManager.start(bus.address);
    mm.addModem({ sim: HOME, bearers: [{ interface: 'wwan0', connected: true, dns4: ['10.0.0.53'] }] });
    // Connection attempts wait for the test while the bus is down, so the new ModemManager is
    // there before the watcher is back: the facts after the outage come from reading it.
    let gate: Promise<void> = Promise.resolve();
    let open = (): void => undefined;
    const attempts = new Arrivals<string>();
    const r = rig(bus.address, {
      connect: async (a) => {
        attempts.push(a);
        await gate;
        return connectBus(a);
      },
    });
    let mm2: FakeModemManager | undefined;
    try {
      await r.watcher.start();
      await attempts.take('the first attempt');
      const before = await r.events.take('the first facts');
      assert.equal(before.services.bus, 'connected');
      assert.equal(before.modems[0]?.sim?.iccid, HOME.iccid);

      gate = new Promise<void>((resolve) => { open = resolve; });
      await bus.stop();
      const down = await r.events.take('the outage');
      assert.equal(down.services.bus, 'unavailable');
      assert.deepEqual(down.modems, before.modems, 'the last facts are kept');
      assert.equal(down.services.modemmanager, true, 'as they were');
      await attempts.take('a reconnection attempt');

      await bus.start();
      mm2 = await FakeModemManager.start(bus.address);
      mm2.addModem({ sim: TRAVEL, bearers: [{ interface: 'wwan1', connected: true, dns4: ['10.9.0.53'] }] });
      open();
      const up = await r.events.take('the reconnection');
      assert.equal(up.services.bus, 'connected');
      assert.equal(up.modems[0]?.sim?.iccid, TRAVEL.iccid, 'read again, with no empty facts in between');
      assert.deepEqual(up.modems[0]?.bearers[0]?.dns, ['10.9.0.53']);
      assert.equal(r.watcher.facts.services.bus, 'connected');
    } finally {
      open();
      r.watcher.close();
      await mm.close();
      await mm2?.close();
    }
  });

  test('no bus at start: unavailable, retried with backoff, connected once it is there', async () => {
    const later = await startPrivateBus();
    await later.stop();
    const attempts = new Arrivals<number>();
    const r = rig(later.address, {
      connect: (a) => { attempts.push(performance.now()); return connectBus(a); },
    });
    try {
      await r.watcher.start();
      assert.equal(r.watcher.facts.services.bus, 'unavailable');
      const t0 = await attempts.take('the first attempt');
      const t1 = await attempts.take('the second attempt');
      const t2 = await attempts.take('the third attempt');
      // Backoff: the second wait is longer than the first (10 ms, then 20 ms; a guard, not a race).
      assert.ok(t2 - t1 >= 15 && t1 - t0 >= 5, `waits ${t1 - t0} then ${t2 - t1} ms`);
      await later.start();
      const up = await r.until((f) => f.services.bus === 'connected', 'the bus');
      assert.deepEqual(up.modems, []);
      assert.equal(r.log.lines.filter((l) => l.msg === 'system bus unavailable; retrying').length, 1, 'said once');
    } finally {
      r.watcher.close();
      await later.close();
    }
  });

  test('close() leaves no timer or connection behind (the process can exit)', async () => {
    const timers = (): number => process.getActiveResourcesInfo().filter((x) => x === 'Timeout').length;
    const down = await startPrivateBus();
    await down.stop();
    const base = timers();
    // Wrapped: a promise taken from Arrivals would be awaited with it.
    const attempts = new Arrivals<{ readonly done: Promise<MessageBus> }>();
    const r = rig(down.address, { connect: (a) => { const done = connectBus(a); attempts.push({ done }); return done; } });
    try {
      await r.watcher.start();
      await attempts.take('the first attempt');
      const second = await attempts.take('a retry');
      await second.done.then(() => undefined, () => undefined);
      assert.ok(timers() > base, 'a retry timer while retrying');
      r.watcher.close();
      assert.equal(timers(), base);
      // Closed, it does not try again: a new watcher connects, and this one has made no new attempt.
      await down.start();
      const other = rig(down.address);
      await other.watcher.start();
      assert.equal(other.watcher.facts.services.bus, 'connected');
      other.watcher.close();
      assert.equal(attempts.all.length, 2);
    } finally {
      r.watcher.close();
      await down.close();
    }
  });
});
