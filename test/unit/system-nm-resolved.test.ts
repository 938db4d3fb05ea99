/**
 * The NetworkManager and systemd-resolved readers against fakes of those services
 * (test/support/fake-networkmanager.ts) on a private dbus-daemon: never the machine's system bus.
 * Every wait is on a reader update (its `changed` callback); the time bounds are guards. Where a
 * test shows that something did NOT happen, a method call to the fake after the signal orders it
 * (the bus delivers in order).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { connectBus, variant } from '../../src/agent/dbus.js';
import type { DeviceFacts, ResolvedLinkFacts } from '../../src/system/facts.js';
import { PROPERTIES } from '../../src/system/modemmanager.js';
import { NETWORKMANAGER, NetworkManagerReader } from '../../src/system/networkmanager.js';
import { RESOLVED, ResolvedReader } from '../../src/system/resolved.js';
import { FakeNetworkManager, FakeResolved, nameserverU32 } from '../support/fake-networkmanager.js';
import { recordingLog } from '../support/fakes.js';
import { readerRig, type ReaderRig } from '../support/reader-rig.js';
import { startPrivateBus, type PrivateBus } from '../support/notify-server.js';

let bus: PrivateBus;
before(async () => { bus = await startPrivateBus(); });
after(async () => { await bus.close(); });

async function nmRig(): Promise<ReaderRig<readonly DeviceFacts[], FakeNetworkManager>> {
  const log = recordingLog();
  const nm = await FakeNetworkManager.start(bus.address);
  return readerRig(bus.address, nm, new NetworkManagerReader(log), log, (c) =>
    c.call({ destination: nm.owner, path: NETWORKMANAGER.path, interface: NETWORKMANAGER.manager, member: 'GetDevices' }));
}

async function resolvedRig(): Promise<ReaderRig<readonly ResolvedLinkFacts[], FakeResolved>> {
  const log = recordingLog();
  const r = await FakeResolved.start(bus.address);
  return readerRig(bus.address, r, new ResolvedReader(log), log, (c) =>
    c.call({ destination: r.owner, path: RESOLVED.path, interface: PROPERTIES, member: 'Get', signature: 'ss', body: [RESOLVED.manager, 'DNS'] }));
}

function byName(v: readonly DeviceFacts[], name: string): DeviceFacts | undefined {
  return v.find((d) => d.interface === name);
}

describe('NetworkManager reader', () => {
  let r: ReaderRig<readonly DeviceFacts[], FakeNetworkManager>;
  beforeEach(async () => { r = await nmRig(); });
  afterEach(async () => { await r.close(); });

  test('reads the devices at attach, sorted by interface: IpInterface over Interface, metered, DNS of both configs', async () => {
    r.fake.addDevice({ interface: 'wlan0', metered: 2, dns4: ['192.168.1.1'], dns6: ['2001:db8:0:0:0:0:0:53'] });
    r.fake.addDevice({ interface: 'cdc-wdm0', ipInterface: 'wwan0', metered: 1, dns4: ['10.74.210.210', '10.74.210.211'] });
    r.fake.addDevice({ interface: 'eth0' });
    await r.attach();
    assert.deepEqual(r.reader.value, [
      { interface: 'eth0', dns: [] },
      { interface: 'wlan0', metered: false, dns: ['192.168.1.1', '2001:db8::53'] },
      { interface: 'wwan0', metered: true, dns: ['10.74.210.210', '10.74.210.211'] },
    ]);
    assert.equal(r.updates.all.length, 0, 'the initial read is the attach, not an update');
  });

  test('Metered: 0 unknown (absent), 1 yes, 2 no, 3 guess-yes, 4 guess-no, followed as it changes', async () => {
    const d = r.fake.addDevice({ interface: 'wwan0', metered: 0 });
    await r.attach();
    assert.deepEqual(r.reader.value, [{ interface: 'wwan0', dns: [] }]);
    assert.ok(!('metered' in r.reader.value[0]!), 'unknown is absent, not undefined-valued');
    for (const [code, metered] of [[1, true], [2, false], [3, true], [4, false], [0, undefined]] as const) {
      r.fake.setMetered(d, code);
      const v = await r.until((x) => x[0]?.metered === metered, `Metered ${code}`);
      assert.deepEqual(v, [{ interface: 'wwan0', ...(metered !== undefined ? { metered } : {}), dns: [] }]);
    }
  });

  test('DNS: NameserverData, the older Nameservers (network byte order), IPv6 in canonical form', async () => {
    r.fake.addDevice({ interface: 'a0', dns4: ['10.0.0.1', '192.0.2.53'] });
    r.fake.addDevice({ interface: 'b0', dns4: ['10.0.0.1', '192.0.2.53'], nameserversOnly: true });
    r.fake.addDevice({ interface: 'c0', dns6: ['2001:DB8::1', 'fe80:0:0:0:0:0:0:1', '2001:db8:0:1:0:0:0:0'] });
    // The byte order the fake (and NetworkManager) uses: the first octet is the low byte.
    assert.equal(nameserverU32('10.0.0.1'), 0x0100000a);
    await r.attach();
    assert.deepEqual(r.reader.value, [
      { interface: 'a0', dns: ['10.0.0.1', '192.0.2.53'] },
      { interface: 'b0', dns: ['10.0.0.1', '192.0.2.53'] },
      { interface: 'c0', dns: ['2001:db8::1', 'fe80::1', '2001:db8:0:1::'] },
    ]);
    // NameserverData wins over Nameservers when both are there (they disagree here).
    const a0 = r.fake.devices[0]!;
    r.fake.setProperty(r.fake.config(a0, 'Ip4Config'), NETWORKMANAGER.ip4, 'Nameservers', variant('au', [nameserverU32('203.0.113.9')]));
    await r.sync();
    assert.deepEqual(byName(r.reader.value, 'a0')?.dns, ['10.0.0.1', '192.0.2.53']);
    // A change of the config object in place is followed too.
    r.fake.setProperty(r.fake.config(a0, 'Ip4Config'), NETWORKMANAGER.ip4, 'NameserverData', variant('aa{sv}', [{ address: variant('s', '203.0.113.9') }]));
    const v = await r.until((x) => byName(x, 'a0')?.dns[0] === '203.0.113.9', 'the config changed in place');
    assert.deepEqual(byName(v, 'a0')?.dns, ['203.0.113.9']);
  });

  test('setDns: new config objects, the device names them, the reader reads them', async () => {
    const d = r.fake.addDevice({ interface: 'wlan0', dns4: ['192.168.1.1'] });
    await r.attach();
    const old4 = r.fake.config(d, 'Ip4Config');
    r.fake.setDns(d, ['192.0.2.1', '192.0.2.2'], ['2001:db8::1']);
    assert.notEqual(r.fake.config(d, 'Ip4Config'), old4, 'a new path');
    const v = await r.until((x) => x[0]?.dns.length === 3, 'the new DNS');
    assert.deepEqual(v, [{ interface: 'wlan0', dns: ['192.0.2.1', '192.0.2.2', '2001:db8::1'] }]);
    r.fake.setDns(d, undefined, ['2001:db8::2']);
    const six = await r.until((x) => x[0]?.dns.length === 1, 'IPv6 only');
    assert.deepEqual(six[0]?.dns, ['2001:db8::2']);
    r.fake.setDns(d, undefined, undefined);
    await r.until((x) => x[0]?.dns.length === 0, 'no IP configs');
  });

  test('devices added (DeviceAdded) and removed (DeviceRemoved)', async () => {
    await r.attach();
    assert.deepEqual(r.reader.value, []);
    const w = r.fake.addDevice({ interface: 'wwan0', metered: 1, dns4: ['10.0.0.53'] });
    const one = await r.until((v) => v.length === 1, 'the device');
    assert.deepEqual(one, [{ interface: 'wwan0', metered: true, dns: ['10.0.0.53'] }], 'read with its configs');
    r.fake.addDevice({ interface: 'eth0', metered: 2 });
    const two = await r.until((v) => v.length === 2, 'the second device');
    assert.deepEqual(two.map((d) => d.interface), ['eth0', 'wwan0']);
    r.fake.removeDevice(w);
    const left = await r.until((v) => v.length === 1, 'the first device gone');
    assert.deepEqual(left, [{ interface: 'eth0', metered: false, dns: [] }]);
  });

  test('a malformed value skips its object with one warning, never crashes, and is read again once well-formed', async () => {
    const bad = r.fake.addDevice({ interface: 'eth0', metered: 2 });
    const good = r.fake.addDevice({ interface: 'wwan0', metered: 1, dns4: ['10.0.0.53'], dns6: ['2001:db8::53'] });
    r.fake.setPropertyQuietly(bad, NETWORKMANAGER.device, 'Metered', variant('s', 'no'));
    await r.attach();
    assert.deepEqual(r.reader.value.map((d) => d.interface), ['wwan0']);
    const warned = (path: string): number => r.log.lines.filter((l) => l.level === 'warn' && l.fields?.['path'] === path).length;
    assert.equal(warned(bad), 1);
    // Further updates do not repeat the warning.
    r.fake.setMetered(good, 2);
    await r.until((v) => byName(v, 'wwan0')?.metered === false, 'metered no');
    assert.equal(warned(bad), 1, 'one warning, not one per update');
    r.fake.setMetered(bad, 2);
    await r.until((v) => v.length === 2, 'the device read again');

    // An IPv6 server that is not 16 bytes: that config is skipped, the device stays with its IPv4 DNS.
    const six = r.fake.config(good, 'Ip6Config');
    r.fake.setProperty(six, NETWORKMANAGER.ip6, 'Nameservers', variant('aay', [Buffer.from([1, 2, 3])]));
    const v = await r.until((x) => byName(x, 'wwan0')?.dns.length === 1, 'the bad config skipped');
    assert.deepEqual(byName(v, 'wwan0')?.dns, ['10.0.0.53']);
    assert.equal(warned(six), 1);

    // A PropertiesChanged that is not one, a DeviceAdded without a path: logged, ignored.
    r.fake.bus.emit(good, PROPERTIES, 'PropertiesChanged', 's', ['garbage']);
    r.fake.bus.emit(NETWORKMANAGER.path, NETWORKMANAGER.manager, 'DeviceAdded', 'u', [7]);
    r.fake.setProperty(six, NETWORKMANAGER.ip6, 'Nameservers', variant('aay', [Buffer.from(new Uint8Array(16).fill(0).map((_, i) => (i === 15 ? 1 : 0)))]));
    const back = await r.until((x) => byName(x, 'wwan0')?.dns.length === 2, 'readable again');
    assert.deepEqual(byName(back, 'wwan0')?.dns, ['10.0.0.53', '::1']);
    assert.ok(r.log.lines.some((l) => l.msg.includes('unreadable signal')), 'the bad signal is logged');
  });

  test('signals from anyone but the owner are ignored', async () => {
    const d = r.fake.addDevice({ interface: 'wwan0', metered: 1 });
    await r.attach();
    // Another reader on the same connection asks for everyone's PropertiesChanged and DeviceRemoved.
    const received: string[] = [];
    const offs = [
      await r.client.onSignal({ interface: PROPERTIES, member: 'PropertiesChanged' }, (sig) => received.push(sig.sender)),
      await r.client.onSignal({ interface: NETWORKMANAGER.manager, member: 'DeviceRemoved' }, (sig) => received.push(sig.sender)),
    ];
    const impostor = await connectBus(bus.address);
    try {
      impostor.emit(d, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [NETWORKMANAGER.device, { Metered: variant('u', 2) }, []]);
      impostor.emit(NETWORKMANAGER.path, NETWORKMANAGER.manager, 'DeviceRemoved', 'o', [d]);
      await impostor.call({ destination: r.client.name, path: '/', interface: 'org.freedesktop.DBus.Peer', member: 'Ping' });
      await r.sync();
      assert.deepEqual(received.filter((x) => x === impostor.name).length, 2, 'the impostor\'s signals reached the connection');
      assert.deepEqual(r.reader.value, [{ interface: 'wwan0', metered: true, dns: [] }]);
      assert.equal(r.updates.all.length, 0);
    } finally {
      for (const off of offs) off();
      impostor.close();
    }
    r.fake.setMetered(d, 2);
    await r.until((v) => v[0]?.metered === false, 'the owner\'s change');
  });

  test('detached: empty, and no more updates', async () => {
    const d = r.fake.addDevice({ interface: 'wwan0', metered: 1 });
    await r.attach();
    assert.equal(r.reader.value.length, 1);
    r.reader.detach();
    assert.deepEqual(r.reader.value, []);
    r.fake.setMetered(d, 2);
    r.fake.addDevice({ interface: 'eth0' });
    r.fake.setDns(d, ['192.0.2.1'], undefined);
    await r.sync();
    assert.equal(r.updates.all.length, 0);
    assert.deepEqual(r.reader.value, []);
  });

  test('attach rejects when the name has no such owner, and leaves the reader empty', async () => {
    r.fake.addDevice({ interface: 'wwan0' });
    await assert.rejects(r.reader.attach(r.client, ':1.999999', () => undefined));
    assert.deepEqual(r.reader.value, []);
    await r.attach();
    assert.equal(r.reader.value.length, 1);
  });
});

describe('resolved reader', () => {
  let r: ReaderRig<readonly ResolvedLinkFacts[], FakeResolved>;
  beforeEach(async () => { r = await resolvedRig(); });
  afterEach(async () => { await r.close(); });

  test('reads the per-link DNS at attach, sorted by ifindex, the global servers (ifindex 0) left out', async () => {
    r.fake.setLinkDns(5, ['10.74.210.210', '2001:DB8:0:0::53']);
    r.fake.setLinkDns(0, ['9.9.9.9']);
    r.fake.setLinkDns(3, ['192.168.1.1']);
    await r.attach();
    assert.deepEqual(r.reader.value, [
      { ifindex: 3, dns: ['192.168.1.1'] },
      { ifindex: 5, dns: ['10.74.210.210', '2001:db8::53'] },
    ]);
    assert.equal(r.updates.all.length, 0, 'the initial read is the attach, not an update');
  });

  test('follows changes: with the value, and invalidated only (read again)', async () => {
    await r.attach();
    assert.deepEqual(r.reader.value, []);
    r.fake.setLinkDns(4, ['192.0.2.53']);
    await r.until((v) => v.length === 1, 'the link');
    r.fake.setLinkDns(2, ['2001:db8::1', '192.0.2.1'], { invalidated: true });
    const v = await r.until((x) => x.length === 2, 'the second link, invalidated only');
    assert.deepEqual(v, [{ ifindex: 2, dns: ['2001:db8::1', '192.0.2.1'] }, { ifindex: 4, dns: ['192.0.2.53'] }]);
    r.fake.setLinkDns(4, [], { invalidated: true });
    const left = await r.until((x) => x.length === 1, 'the link gone');
    assert.deepEqual(left, [{ ifindex: 2, dns: ['2001:db8::1', '192.0.2.1'] }]);
    // Only the global servers change: no update.
    const before = r.updates.all.length;
    r.fake.setLinkDns(0, ['1.1.1.1']);
    await r.sync();
    assert.equal(r.updates.all.length, before);
  });

  test('a malformed entry is skipped with one warning; a malformed value, with one warning; never a crash', async () => {
    r.fake.setLinkDns(3, ['192.168.1.1']);
    await r.attach();
    const entries = (extra: unknown[]): ReturnType<typeof variant> =>
      variant('a(iiay)', [[3, 2, Buffer.from([192, 168, 1, 1])], ...extra]);
    // Family 2 with 16 bytes: that entry is skipped.
    r.fake.setDnsValue(entries([[7, 2, Buffer.alloc(16)], [7, 10, Buffer.from(new Uint8Array(16).fill(0xff))]]));
    const v = await r.until((x) => x.length === 2, 'the good entries');
    assert.deepEqual(v, [{ ifindex: 3, dns: ['192.168.1.1'] }, { ifindex: 7, dns: ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'] }]);
    const warnings = (): number => r.log.lines.filter((l) => l.level === 'warn').length;
    assert.equal(warnings(), 1);
    // The same bad entry again: no second warning.
    r.fake.setDnsValue(entries([[7, 2, Buffer.alloc(16)]]), { invalidated: true });
    await r.until((x) => x.length === 1, 'link 7 gone');
    assert.equal(warnings(), 1);
    // Not an array at all: no links, one warning, and it recovers.
    r.fake.setDnsValue(variant('s', 'nope'));
    await r.until((x) => x.length === 0, 'nothing readable');
    assert.equal(warnings(), 2);
    r.fake.bus.emit(RESOLVED.path, PROPERTIES, 'PropertiesChanged', 's', ['garbage']);
    r.fake.setLinkDns(3, ['192.168.1.2']);
    const back = await r.until((x) => x.length === 1, 'readable again');
    assert.deepEqual(back, [{ ifindex: 3, dns: ['192.168.1.2'] }]);
  });

  test('detached: empty, and no more updates', async () => {
    r.fake.setLinkDns(3, ['192.168.1.1']);
    await r.attach();
    r.reader.detach();
    assert.deepEqual(r.reader.value, []);
    r.fake.setLinkDns(4, ['192.0.2.1']);
    r.fake.setLinkDns(5, ['192.0.2.2'], { invalidated: true });
    await r.sync();
    assert.equal(r.updates.all.length, 0);
    assert.deepEqual(r.reader.value, []);
  });

  test('signals from anyone but the owner are ignored', async () => {
    await r.attach();
    const received: string[] = [];
    const off = await r.client.onSignal({ interface: PROPERTIES, member: 'PropertiesChanged' }, (sig) => received.push(sig.sender));
    const impostor = await connectBus(bus.address);
    try {
      impostor.emit(RESOLVED.path, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [RESOLVED.manager, { DNS: variant('a(iiay)', [[3, 2, Buffer.from([6, 6, 6, 6])]]) }, []]);
      await impostor.call({ destination: r.client.name, path: '/', interface: 'org.freedesktop.DBus.Peer', member: 'Ping' });
      await r.sync();
      assert.ok(received.includes(impostor.name), 'the impostor\'s signal reached the connection');
      assert.deepEqual(r.reader.value, []);
    } finally {
      off();
      impostor.close();
    }
    r.fake.setLinkDns(3, ['192.0.2.1']);
    await r.until((v) => v.length === 1, 'the owner\'s change');
  });
});
