/**
 * Profiles tied to the SIM and the device's facts from ModemManager, end to end: a private D-Bus
 * bus with a small ModemManager of the test's own (test/support/fake-modemmanager.ts), waymarkd
 * in the lab device reading it (`--system-bus`), real clients (curl under the library, the static
 * Go client in an app's cgroup and in a session) on the lab's uplinks.
 *   - the bearers name the MMS uplink's interface (`match: { apn: mms }`) and give every cellular
 *     uplink its DNS: the library resolves the MMSC's name and a session's DNS is redirected
 *     through them, with no `dns:` in the config;
 *   - a SIM swap activates the tied profile within a second, and the next connects follow its
 *     rules; swapping back restores the first;
 *   - roaming registration marks the cellular uplinks `roaming` and the profile's roaming
 *     behaviour (nothing but MMS) holds for curl and the Go client; home again lifts it;
 *   - export → import → export is byte-identical; an invalid import is refused with located
 *     errors and changes nothing;
 *   - the bus going away and coming back; a restart keeps the active and the saved profiles.
 * Waits are on events (`waymark watch`) or on the status the step changes; bounds are guards.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { DaemonEvent } from '../../src/daemon/events.js';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { FakeModemManager } from '../support/fake-modemmanager.js';
import { FakeNetworkManager, FakeResolved } from '../support/fake-networkmanager.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, status, until, url, useLab } from '../support/lab.js';
import { startPrivateBus, type PrivateBus } from '../support/notify-server.js';
import { appScope, Watcher } from '../support/watcher.js';

const SIM_A = '8949000000000000011';
const SIM_B = '8944000000000000022';
const USER = 1000;
const GO_APP = `user.slice/user-${USER}.slice/user@${USER}.service/app.slice/app-gnome-org.example.Go-41.scope`;

const CONFIG = `version: 1
uplinks:
  - name: wifi
    match: wlan0
    kind: wifi
    preference: 200
  - name: cellular
    match: wwan0
    kind: cellular
    cost: { per_mb: 0.02, currency: EUR }
  - name: mms
    match: { apn: mms }
    kind: cellular
    cost: { per_mb: 0.5, currency: EUR }
    gateway: { ipv4: 10.64.0.1, ipv6: "fd00:64::1" }
destinations:
  - name: internet
    via: [wifi, cellular]
  - name: mms
    prefixes: [10.200.0.0/24, "fd00:200::/64"]
    domains: [operator.example]
    via: [mms]
default_profile: home
profiles:
  - name: home
    description: flat rate at home
    sims: ["${SIM_A}"]
    operators: ["26201"]
    roaming: { only: [mms] }
  - name: travel
    description: pay per MB
    sims: ["${SIM_B}"]
    uplinks:
      - { name: cellular, cost: { per_mb: 5, currency: EUR } }
    rules:
      - name: curl-cellular
        match: { exe: /usr/bin/curl }
        only: [cellular]
      - name: go-cellular
        match: { app: org.example.Go }
        only: [cellular]
`;

let lab: Lab;
let dev: Device;
let goclient: string;
let bus: PrivateBus;
let mm: FakeModemManager;
let modem: string;

const bearers = [
  { interface: 'wwan0', apn: 'internet', connected: true, dns4: [LAB.dns.cell.v4], dns6: [LAB.dns.cell.v6] },
  { interface: 'wwan1', apn: 'mms', connected: true, dns4: [LAB.dns.mms.v4], dns6: [] },
];

useLab({
  config: CONFIG,
  alongside: async () => {
    goclient = await buildPublicGoClient();
    bus = await startPrivateBus();
    mm = await FakeModemManager.start(bus.address);
    modem = mm.addModem({ sim: { iccid: SIM_A, operator: '26201', operatorName: 'Home' }, registration: 1, operatorCode: '26201', bearers });
  },
  systemBus: () => bus.address,
  timeoutMs: 180_000,
}, (l, d) => {
  lab = l;
  dev = d;
});

after(async () => {
  await mm?.close();
  await bus?.close();
});

const noLibrary = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'LD_PRELOAD'));
const exec = (args: readonly string[], argv: readonly string[], uid?: number) =>
  dev.waymark(['exec', ...args, '--', ...argv], { timeoutMs: 15_000, ...(uid !== undefined ? { uid } : {}) });
const curl = (target: string, args: readonly string[] = []) => exec(args, ['curl', '-sS', '--max-time', '3', target]);
/** The Go client (no library) in its app's cgroup: the kernel alone steers it. */
const goApp = (target: string) => lab.run('dev', [goclient, '-timeout', '3s', target], { cgroup: GO_APP, uid: USER, env: noLibrary, timeoutMs: 15_000 });
const pathOf = (r: { stdout: string }): string | undefined => lastJson(r.stdout)?.path;

async function watch(topics: readonly string[]): Promise<Watcher> {
  const w = new Watcher(lab, dev, ['--json', ...topics.flatMap((t) => ['-t', t])]);
  await w.ready();
  return w;
}

describe('facts from ModemManager', () => {
  it('the bearers name the APN uplink\'s interface and give the cellular uplinks their DNS; status says so', async () => {
    const s = await until('the MMS uplink on its bearer\'s interface', () => status(dev), (x) => x.uplinks.find((u) => u.name === 'mms')?.status === 'active');
    const mmsUp = s.uplinks.find((u) => u.name === 'mms');
    assert.equal(mmsUp?.ifname, 'wwan1');
    assert.equal(mmsUp?.sources?.match, 'modemmanager');
    assert.deepEqual(mmsUp?.dns, { servers: [LAB.dns.mms.v4], source: 'modemmanager' });
    const cell = s.uplinks.find((u) => u.name === 'cellular');
    assert.deepEqual(cell?.dns, { servers: [LAB.dns.cell.v4, LAB.dns.cell.v6], source: 'modemmanager' });
    assert.equal(cell?.sim?.iccid, SIM_A);
    assert.equal(s.system?.bus, 'connected');
    assert.equal(s.system?.sim?.iccid, SIM_A);
    assert.deepEqual(s.profile, { name: 'home', by: 'sim', sim: SIM_A });
    const text = await dev.waymark(['status']);
    assert.match(text.stdout, /mms: interface wwan1 by APN mms \(modemmanager\), DNS modemmanager/);
  });

  it('the library resolves the MMSC\'s name through the MMS bearer\'s DNS, and connects over the MMS APN', async () => {
    const r = await curl(`http://${LAB.mmsc.host}/`);
    assert.equal(pathOf(r), 'wwan1', r.stderr);
  });

  it('a session\'s DNS goes to its uplink\'s bearer DNS: resolv.conf\'s LAN resolver does not answer over cellular', async () => {
    const name = `http://${LAB.internet.host}/`;
    const r = await curl(name, ['--uplink', 'cellular']);
    assert.equal(pathOf(r), 'wwan0', r.stderr);
    const go = await exec(['--uplink', 'cellular'], [goclient, name], 65534);
    assert.equal(pathOf(go), 'wwan0', go.stderr);
  });
});

describe('facts from NetworkManager and systemd-resolved', () => {
  it('services that start later are read: NetworkManager\'s metered state and resolved\'s per-link DNS reach the Wi-Fi uplink', async () => {
    const before = (await status(dev)).uplinks.find((u) => u.name === 'wifi');
    assert.equal(before?.metered, false, 'Wi-Fi is not metered by its kind');
    assert.ok(before?.ifindex);
    const nm = await FakeNetworkManager.start(bus.address);
    const resolved = await FakeResolved.start(bus.address);
    try {
      const dev0 = nm.addDevice({ interface: 'wlan0', metered: 3 }); // guess-yes: a phone's hotspot
      resolved.setLinkDns(before.ifindex, [LAB.dns.wifi.v4, LAB.dns.wifi.v6]);
      const s = await until('Wi-Fi metered and with resolved\'s DNS', () => status(dev), (x) => {
        const w = x.uplinks.find((u) => u.name === 'wifi');
        return w?.metered === true && w.dns.source === 'resolved';
      });
      const wifi = s.uplinks.find((u) => u.name === 'wifi');
      assert.equal(wifi?.sources?.metered, 'networkmanager');
      assert.deepEqual(wifi?.dns.servers, [LAB.dns.wifi.v4, LAB.dns.wifi.v6]);
      assert.equal(s.system?.networkmanager, true);
      assert.equal(s.system?.resolved, true);
      // NetworkManager's own DNS for the device comes before resolved's.
      nm.setDns(dev0, [LAB.dns.wifi.v4], []);
      await until('NetworkManager\'s DNS', () => status(dev), (x) => x.uplinks.find((u) => u.name === 'wifi')?.dns.source === 'networkmanager');
    } finally {
      await nm.close();
      await resolved.close();
    }
    // The services gone, so are their facts.
    await until('Wi-Fi back to its kind\'s metered state', () => status(dev), (x) => x.uplinks.find((u) => u.name === 'wifi')?.metered === false);
  });
});

describe('profiles tied to the SIM', () => {
  it('a SIM swap activates the tied profile within a second; the next connects follow it; swapping back restores the first', async () => {
    const w = await watch(['profile', 'app']);
    try {
      await appScope(lab, w, GO_APP);
      assert.equal(pathOf(await curl(url(LAB.internet.v4))), 'wlan0');
      assert.equal(pathOf(await goApp(url(LAB.internet.v4))), 'wlan0');
      const t0 = performance.now();
      mm.setSim(modem, { iccid: SIM_B, operator: '23415', operatorName: 'Abroad' });
      const got = await w.event(w.lines.length, (e) => e.type === 'profile.activated' && e.name === 'travel', 'travel activated');
      const ms = got.at - t0;
      console.log(`# SIM swap → profile travel active: ${ms.toFixed(0)} ms`);
      assert.ok(ms < 1000, `the tied profile within 1 s (took ${ms.toFixed(0)} ms)`);
      assert.deepEqual((await status(dev)).profile, { name: 'travel', by: 'sim', sim: SIM_B });
      assert.equal(pathOf(await curl(url(LAB.internet.v4))), 'wwan0', 'curl follows travel\'s rule');
      assert.equal(pathOf(await goApp(url(LAB.internet.v4))), 'wwan0', 'so does the Go client, in the kernel');
      assert.equal((await status(dev)).uplinks.find((u) => u.name === 'cellular')?.cost.perMB, 5, 'the profile\'s price');

      const from = w.lines.length;
      mm.setSim(modem, { iccid: SIM_A, operator: '26201', operatorName: 'Home' });
      await w.event(from, (e) => e.type === 'profile.activated' && e.name === 'home', 'home activated again');
      assert.equal(pathOf(await curl(url(LAB.internet.v4))), 'wlan0');
      assert.equal(pathOf(await goApp(url(LAB.internet.v4))), 'wlan0');
      assert.equal((await status(dev)).uplinks.find((u) => u.name === 'cellular')?.cost.perMB, 0.02);
    } finally {
      await w.stop();
    }
  });

  it('roaming marks the cellular uplinks; nothing but MMS goes over them, for curl and the Go client; home lifts it', async () => {
    assert.equal(pathOf(await curl(url(LAB.internet.v4), ['--uplink', 'cellular'])), 'wwan0');
    const w = await watch(['system']);
    try {
      mm.setRegistration(modem, 5, '23415');
      await w.event(0, (e) => e.type === 'system.changed' && e.roaming.includes('cellular'), 'roaming');
      const s = await status(dev);
      for (const name of ['cellular', 'mms']) {
        const u = s.uplinks.find((x) => x.name === name);
        assert.equal(u?.roaming, true, name);
        assert.equal(u?.sources?.roaming, 'modemmanager');
      }
      assert.deepEqual(s.destinations.find((d) => d.name === 'internet')?.via, ['wifi']);
      const refused = await curl(url(LAB.internet.v4), ['--uplink', 'cellular']);
      assert.notEqual(refused.code, 0, refused.stdout);
      // The Go client never loads the library: the session's kernel mark and routes refuse it.
      const go = await exec(['--uplink', 'cellular'], [goclient, '-timeout', '2s', url(LAB.internet.v4)]);
      assert.notEqual(go.code, 0, go.stdout);
      assert.equal(pathOf(go), undefined);
      const mmsCurl = await curl(url(LAB.mmsc.v4));
      assert.equal(pathOf(mmsCurl), 'wwan1', `MMS still goes: ${mmsCurl.stdout} ${mmsCurl.stderr}`);
      const mmsGo = await goApp(url(LAB.mmsc.v4));
      assert.equal(pathOf(mmsGo), 'wwan1', `${mmsGo.stdout} ${mmsGo.stderr}`);

      const from = w.lines.length;
      mm.setRegistration(modem, 1, '26201');
      await w.event(from, (e) => e.type === 'system.changed' && !e.roaming.includes('cellular'), 'home again');
      assert.equal(pathOf(await curl(url(LAB.internet.v4), ['--uplink', 'cellular'])), 'wwan0');
    } finally {
      await w.stop();
    }
  });
});

describe('profile export and import', () => {
  it('export → import → export is byte-identical; an invalid import is refused with located errors and changes nothing', async () => {
    const saved = await dev.waymark(['profile', 'save', 'trip', '--sim', '8933000000000000033', '--operator', '20801', '--roaming', 'deny', '--description', 'a week away']);
    assert.equal(saved.code, 0, saved.stderr);
    const first = await dev.waymark(['profile', 'export', 'trip']);
    assert.equal(first.code, 0, first.stderr);
    const file = join(dev.dir, 'trip.yaml');
    writeFileSync(file, first.stdout);
    assert.equal((await dev.waymark(['profile', 'rm', 'trip'])).code, 0);
    const imported = await dev.waymark(['profile', 'import', file]);
    assert.equal(imported.code, 0, imported.stderr);
    const again = await dev.waymark(['profile', 'export', 'trip']);
    assert.equal(again.stdout, first.stdout, 'byte-identical');

    const before = (await dev.waymark(['profile', 'list', '--json'])).stdout;
    const bad = join(dev.dir, 'bad.yaml');
    writeFileSync(bad, first.stdout.replace('name: trip', 'name: trip2').replace(/roaming: deny/, 'roaming: sometimes') + '    uplinks:\n      - { name: satellite, metered: true }\n');
    const refused = await dev.waymark(['profile', 'import', bad]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, new RegExp(`${bad.replace(/[.]/g, '\\.')}:\\d+:\\d+: profiles\\[0\\]\\.roaming`));
    assert.equal((await dev.waymark(['profile', 'list', '--json'])).stdout, before, 'nothing changed');
    assert.equal(readFileSync(file, 'utf8'), first.stdout);
  });
});

describe('the bus and the daemon going away', () => {
  it('the bus going away keeps the facts; when it comes back they are read again', async () => {
    const w = await watch(['profile', 'system']);
    try {
      await bus.stop();
      const gone = await until('the bus unavailable in status', () => status(dev), (s) => s.system?.bus === 'unavailable');
      assert.deepEqual(gone.profile, { name: 'home', by: 'sim', sim: SIM_A }, 'the profile stays');
      assert.equal(gone.uplinks.find((u) => u.name === 'mms')?.ifname, 'wwan1', 'the last facts stand');
      await bus.start();
      mm = await FakeModemManager.start(bus.address);
      modem = mm.addModem({ sim: { iccid: SIM_B, operator: '23415' }, registration: 1, operatorCode: '23415', bearers });
      const from = w.lines.length;
      await w.event(from, (e: DaemonEvent) => e.type === 'profile.activated' && e.name === 'travel', 'the new SIM read after the bus came back');
      assert.equal((await status(dev)).system?.bus, 'connected');
    } finally {
      await w.stop();
    }
  });

  it('a restart keeps the active profile and the saved ones', async () => {
    const before = await status(dev);
    await dev.stopDaemon();
    await dev.startDaemon();
    const after = await status(dev);
    assert.deepEqual(after.profile?.name, before.profile?.name);
    const list = JSON.parse((await dev.waymark(['profile', 'list', '--json'])).stdout) as { profiles: { name: string }[] };
    assert.ok(list.profiles.some((p) => p.name === 'trip'), 'the saved profile is still there');
  });
});
