/**
 * Every app in the kernel, end to end (issue 8): programs started the way the desktop starts
 * them — in systemd-style app scopes the test creates under the lab's cgroup root
 * (user.slice/user-UID.slice/user@UID.service/app.slice/app-<launcher>-<ID>-<N>.scope, and
 * Flatpak's app-flatpak-<ID>-<N>.scope) — with no library and no `waymark exec`: the static Go
 * client, curl and python3. Their app rule steers their sockets from creation (the BPF mark),
 * fences them off the uplinks it denies (also when they bind to a device themselves), and sends
 * their DNS to their uplink's resolver; a program in a scope no rule matches keeps default
 * routing. `waymark apps` lists them (per user), `waymark watch` says when they come and go, and
 * 200 programs that connect the moment their scope exists never reach an uplink their rule
 * denies. Every wait is on an event (the daemon's app.appeared, a program's exit); the bounds are
 * guards against a hang only.
 */
import assert from 'node:assert/strict';
import { rmdirSync } from 'node:fs';
import { describe, it } from 'node:test';
import type { AppAppeared, DaemonEvent } from '../../src/daemon/events.js';
import type { AppsResult } from '../../src/daemon/protocol.js';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, url, useLab } from '../support/lab.js';
import { appScope, Watcher } from '../support/watcher.js';
import { exampleText } from '../support/fixture.js';

const USER = 1000;
const OTHER = 1001;
const slice = (uid: number): string => `user.slice/user-${uid}.slice/user@${uid}.service/app.slice`;
const CHAT = `${slice(USER)}/app-gnome-org.example.Chat-1234.scope`;
const FIREFOX = `${slice(USER)}/app-flatpak-org.mozilla.firefox-5678.scope`;
const EDITOR = `${slice(USER)}/app-gnome-org.example.Editor-42.scope`;
const MMS_APP = `${slice(OTHER)}/app-org.example.Mms-7.scope`;
const INTERNET = url(LAB.internet.v4);
const MMSC = url(LAB.mmsc.v4);
const RACES = 200;

/** The example config with app rules for scopes: chat and firefox over cellular, never the MMS APN; an MMS app of the other user on the MMS APN only. */
function config(): string {
  return exampleText(`apps:
  - name: chat
    match: { app: org.example.Chat }
    uplinks: [cellular]
    deny: [mms]
  - name: firefox
    match: { flatpak: org.mozilla.firefox }
    uplinks: [cellular]
    deny: [mms]
  - name: mms-app
    match: { app: "org.example.Mms*", uid: ${OTHER} }
    uplinks: [mms]
`);
}

let lab: Lab;
let dev: Device;
let goclient: string;
let watcher: Watcher;

useLab({ config, alongside: async () => { goclient = await buildPublicGoClient(); }, timeoutMs: 180_000 }, (l, d) => {
  lab = l;
  dev = d;
});

const cgroups = () => {
  const c = lab.cgroups;
  assert.ok(c, 'the lab has a cgroup subtree');
  return c;
};

/** Runs argv as `uid` in the app's cgroup inside the device, with no library. */
function inApp(cgroup: string, argv: string[], uid = USER) {
  return lab.run('dev', argv, { cgroup, uid, timeoutMs: 15_000 });
}

const pathOf = (out: string): string | null => lastJson(out)?.path ?? null;
const python = (target: string): string[] => ['/usr/bin/python3', '-c',
  'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())', target];

/** Creates an app scope and waits until the daemon has it in the kernel (its app.appeared event). */
const scope = (rel: string): Promise<AppAppeared> => appScope(lab, watcher, rel);

async function apps(uid?: number): Promise<AppsResult> {
  const r = await dev.waymark(['apps', '--json'], uid === undefined ? {} : { uid });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as AppsResult;
}

describe('apps in systemd-style scopes, no library, no waymark exec', () => {
  it('the daemon recognises the scopes it is shown, with their rule', async () => {
    watcher = new Watcher(lab, dev, ['--json', '--topic', 'app']);
    await watcher.ready();
    const chat = await scope(CHAT);
    assert.deepEqual([chat.name, chat.kind, chat.uid, chat.rule, chat.uplink], ['org.example.Chat', 'app', USER, 'chat', 'cellular']);
    const ff = await scope(FIREFOX);
    assert.deepEqual([ff.name, ff.kind, ff.rule, ff.uplink], ['org.mozilla.firefox', 'flatpak', 'firefox', 'cellular']);
    const ed = await scope(EDITOR);
    assert.deepEqual([ed.name, ed.rule, ed.uplink], ['org.example.Editor', null, null]);
    const mms = await scope(MMS_APP);
    // Its rule allows only the MMS APN, which does not carry the Internet: no default uplink.
    assert.deepEqual([mms.uid, mms.rule, mms.uplink], [OTHER, 'mms-app', null]);
  });

  for (const [label, cgroup] of [['an app scope matched by its app ID', CHAT], ['a Flatpak scope matched by its Flatpak ID', FIREFOX]] as const) {
    it(`${label}: the static Go client, curl and python3 reach the Internet over cellular`, async () => {
      const go = await inApp(cgroup, [goclient, INTERNET]);
      assert.equal(pathOf(go.stdout), 'wwan0', go.stderr);
      const curl = await inApp(cgroup, ['curl', '-sS', '--max-time', '5', INTERNET]);
      assert.equal(pathOf(curl.stdout), 'wwan0', curl.stderr);
      const py = await inApp(cgroup, python(INTERNET));
      assert.equal(pathOf(py.stdout), 'wwan0', py.stderr);
    });

    it(`${label}: the MMSC stays out of reach, also bound to wwan1 itself; Wi-Fi (not in its rule) too`, async () => {
      const go = await inApp(cgroup, [goclient, '-timeout', '2s', MMSC]);
      assert.notEqual(go.code, 0, go.stdout);
      assert.equal(pathOf(go.stdout), null);
      const bound = await inApp(cgroup, [goclient, '-timeout', '2s', '-bind', 'wwan1', MMSC]);
      assert.notEqual(bound.code, 0, bound.stdout);
      // Refused at connect(), at once, not timed out.
      assert.match(bound.stderr, /operation not permitted/i);
      const curl = await inApp(cgroup, ['curl', '-sS', '--max-time', '2', '--interface', 'wwan1', MMSC]);
      assert.equal(pathOf(curl.stdout), null, curl.stdout);
      const wifi = await inApp(cgroup, [goclient, '-timeout', '2s', '-bind', 'wlan0', INTERNET]);
      assert.equal(pathOf(wifi.stdout), null, wifi.stdout);
    });
  }

  it('its DNS follows its uplink: the resolver of resolv.conf (Wi-Fi\'s) is answered by its uplink\'s', async () => {
    // Over cellular, Wi-Fi's resolver is out of reach: the name resolves because the query is
    // sent to cellular's resolver instead.
    const chat = await inApp(CHAT, ['getent', 'ahostsv4', LAB.internet.host]);
    assert.equal(chat.code, 0, chat.stderr);
    assert.match(chat.stdout, new RegExp(LAB.internet.v4.replace(/\./g, '\\.')));
    // Only the MMS APN's resolver knows the MMSC's name: an app on the MMS APN resolves it, an
    // app with default routing (Wi-Fi's resolver) does not.
    const mms = await inApp(MMS_APP, ['getent', 'ahostsv4', LAB.mmsc.host], OTHER);
    assert.equal(mms.code, 0, `mms app: ${mms.stderr}`);
    const editor = await inApp(EDITOR, ['getent', 'ahostsv4', LAB.mmsc.host]);
    assert.notEqual(editor.code, 0, `default routing asks Wi-Fi's resolver, which does not know ${LAB.mmsc.host}`);
  });

  it('a program in a scope no rule matches keeps default routing (Wi-Fi; the MMSC over the MMS APN)', async () => {
    const go = await inApp(EDITOR, [goclient, INTERNET]);
    assert.equal(pathOf(go.stdout), 'wlan0', go.stderr);
    const mmsc = await inApp(EDITOR, ['curl', '-sS', '--max-time', '5', MMSC]);
    assert.equal(pathOf(mmsc.stdout), 'wwan1', mmsc.stderr);
  });

  it('waymark apps lists each user\'s apps with rule, uplink per destination and live sockets; others see only their own', async () => {
    // A program holding a connection open in the chat scope: one live socket.
    const held = lab.spawn('dev', ['/usr/bin/python3', '-c', 'import socket,sys; s=socket.create_connection((sys.argv[1], 80)); print("ready", flush=True); sys.stdin.read()', LAB.internet.v4],
      { cgroup: CHAT, uid: USER, stdio: ['pipe', 'pipe', 'pipe'] });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        held.stdout?.setEncoding('utf8').on('data', (d: string) => { out += d; if (out.includes('ready')) resolve(); });
        held.once('exit', (code) => reject(new Error(`holder exited ${String(code)}`)));
      });
      const root = await apps();
      const byName = new Map(root.apps.map((a) => [a.name, a]));
      const chat = byName.get('org.example.Chat');
      assert.ok(chat, JSON.stringify(root.apps.map((a) => a.name)));
      assert.equal(root.kernel.active, true, root.kernel.reason ?? '');
      assert.deepEqual([chat.uid, chat.kind, chat.rule, chat.unit], [USER, 'app', 'chat', 'app-gnome-org.example.Chat-1234.scope']);
      assert.equal(chat.uplinks['internet'], 'cellular');
      assert.equal(chat.uplinks['mms'], 'denied');
      // Counted from its processes' fds: the one connection the holder keeps open.
      assert.equal(chat.sockets, 1);
      assert.equal(chat.pids, 1);
      assert.match(chat.exe ?? '', /python3/);
      assert.equal(byName.get('org.mozilla.firefox')?.flatpakId, 'org.mozilla.firefox');
      assert.equal(byName.get('org.example.Editor')?.rule, null);
      assert.equal(byName.get('org.example.Editor')?.uplinks['internet'], 'default');
      assert.ok(byName.has('org.example.Mms'));
      const mine = await apps(USER);
      // Each user's service manager (user@UID.service) is one of its units too.
      assert.deepEqual(mine.apps.map((a) => a.name).sort(), ['org.example.Chat', 'org.example.Editor', 'org.mozilla.firefox', 'user@1000.service']);
      const theirs = await apps(OTHER);
      assert.deepEqual(theirs.apps.map((a) => a.name).sort(), ['org.example.Mms', 'user@1001.service']);
      // status sums them up.
      const st = await dev.waymark(['status']);
      assert.match(st.stdout, /^apps: \d+ apps in \d+ cgroups under \/wm-lab-[0-9a-f-]+, steered in the kernel/m);
      // The readable table names them too.
      const text = await dev.waymark(['apps'], { uid: USER });
      assert.match(text.stdout, /org\.example\.Chat\s+1000\s+app org\.example\.Chat/);
      assert.doesNotMatch(text.stdout, /org\.example\.Mms/);
    } finally {
      held.stdin?.end();
    }
  });

  it('a scope that goes away is an app leaving (waymark watch)', async () => {
    const rel = `${slice(USER)}/app-gnome-org.example.Brief-9.scope`;
    await scope(rel);
    const from = watcher.lines.length;
    rmdirSync(`${cgroups().dir}/${rel}`);
    const { event } = await watcher.event(from, (e: DaemonEvent) => e.type === 'app.left' && e.cgroup === rel, 'app.left');
    assert.equal(event.type, 'app.left');
  });

  it('a scope the daemon has not classified yet gets the most restrictive treatment its rules allow (the daemon stopped meanwhile)', async () => {
    const pid = dev.daemon.pid;
    assert.ok(pid !== undefined);
    const rel = `${slice(USER)}/app-gnome-org.example.Chat-unseen.scope`;
    const from = watcher.lines.length;
    process.kill(pid, 'SIGSTOP');
    try {
      cgroups().mkdir(rel);
      // Its parent's pending treatment: what chat's and firefox's rules both allow (cellular), never the MMS APN or Wi-Fi.
      const go = await inApp(rel, [goclient, INTERNET]);
      assert.equal(pathOf(go.stdout), 'wwan0', go.stderr);
      const wifi = await inApp(rel, [goclient, '-timeout', '2s', '-bind', 'wlan0', INTERNET]);
      assert.match(wifi.stderr, /operation not permitted/i);
      const mmsc = await inApp(rel, [goclient, '-timeout', '2s', MMSC]);
      assert.equal(pathOf(mmsc.stdout), null);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await watcher.event(from, (e) => e.type === 'app.appeared' && e.cgroup === rel, `app.appeared for ${rel}`);
  });

  it(`${RACES} programs connecting the moment their scope exists never reach an uplink their rule denies`, { timeout: 600_000 }, async () => {
    const tally = { preferred: 0, other: 0, failed: 0, denied: 0 };
    const delaysMs: number[] = [];
    for (let i = 0; i < RACES; i++) {
      const rel = `${slice(USER)}/app-gnome-org.example.Chat-r${i}.scope`;
      const from = watcher.lines.length;
      const t0 = process.hrtime.bigint(); // CLOCK_MONOTONIC, as the daemon's classifiedNs
      cgroups().mkdir(rel);
      // At once: the program is moved in and connects without waiting for anything.
      const r = await inApp(rel, [goclient, '-timeout', '2s', INTERNET]);
      const { event } = await watcher.event(from, (e) => e.type === 'app.appeared' && e.cgroup === rel, `app.appeared for ${rel}`);
      assert.ok(event.type === 'app.appeared');
      delaysMs.push(Number(BigInt(event.classifiedNs) - t0) / 1e6);
      const path = pathOf(r.stdout);
      if (path === 'wwan0') tally.preferred++;
      else if (path === null) tally.failed++;
      else if (path === 'wlan0' || path === 'wwan1') tally.denied++;
      else tally.other++;
      rmdirSync(`${cgroups().dir}/${rel}`);
    }
    delaysMs.sort((a, b) => a - b);
    const q = (p: number): string => (delaysMs[Math.min(delaysMs.length - 1, Math.floor(p * delaysMs.length))] ?? NaN).toFixed(3);
    console.log(`# race: ${RACES} scopes, connect at once: ${tally.preferred} by the rule's uplink (cellular), ${tally.other + tally.failed} otherwise `
      + `(${tally.failed} failed), ${tally.denied} by a denied uplink; classification delay (mkdir -> in the kernel) p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, max ${q(1)} ms`);
    assert.equal(tally.denied, 0, 'no connect reached an uplink the rule denies');
    assert.equal(tally.preferred + tally.failed + tally.other, RACES);
  });
});
