/**
 * Rules per app × destination end to end (issue 9, item 1): real unmodified clients in
 * systemd-style app scopes, with the library (curl) and without it (the static Go client), as
 * an ordinary user. A "chat" app with `use [cellular]` stays on cellular while Wi-Fi is up; a
 * "browser" with `use [wifi, cellular]` uses Wi-Fi, moves to cellular when Wi-Fi's link goes
 * down and returns when it is back; a "strict" one with `only [wifi]` fails meanwhile instead of
 * moving. `waymark rules explain` names the deciding rule for each; a rule added from the CLI
 * decides at once, survives a daemon restart, and goes with `rules rm`.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { AppAppeared } from '../../src/daemon/events.js';
import type { RulesExplainResult, RuleView } from '../../src/daemon/protocol.js';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { publicRoot } from '../../src/lab/public.js';
import { exampleText } from '../support/fixture.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, status, until, url, useLab } from '../support/lab.js';
import { appScope, Watcher } from '../support/watcher.js';

const USER = 1000;
const APPS = `user.slice/user-${USER}.slice/user@${USER}.service/app.slice`;
const CHAT = `${APPS}/app-gnome-org.example.Chat-11.scope`;
const BROWSER = `${APPS}/app-gnome-org.example.Browser-12.scope`;
const STRICT = `${APPS}/app-gnome-org.example.Strict-13.scope`;
const INTERNET = url(LAB.internet.v4);

const config = (): string => exampleText(`rules:
  - name: chat
    match: { app: org.example.Chat }
    use: [cellular]
  - name: browser
    match: { app: org.example.Browser, destination: internet }
    use: [wifi, cellular]
  - name: strict
    match: { app: org.example.Strict }
    only: [wifi]
`);

let lab: Lab;
let dev: Device;
let goclient: string;
let watcher: Watcher;

useLab({ config, alongside: async () => { goclient = await buildPublicGoClient(); }, timeoutMs: 180_000 }, (l, d) => {
  lab = l;
  dev = d;
});

const pathOf = (out: string): string | null => lastJson(out)?.path ?? null;
const noLibrary = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'LD_PRELOAD'));
const withLibrary = (): NodeJS.ProcessEnv => ({ ...noLibrary, LD_PRELOAD: join(publicRoot(), 'native/preload/libwaymark.so'), WAYMARK_SOCKET: dev.socket });
/** The static Go client (no library: the kernel steers it) and curl under the library, in an app's scope. */
async function goIn(cgroup: string): Promise<string | null> {
  return pathOf((await lab.run('dev', [goclient, '-timeout', '2s', INTERNET], { cgroup, uid: USER, env: noLibrary, timeoutMs: 10_000 })).stdout);
}
async function curlIn(cgroup: string): Promise<{ path: string | null; stderr: string }> {
  const r = await lab.run('dev', ['curl', '-sS', '--max-time', '3', INTERNET], { cgroup, uid: USER, env: withLibrary(), timeoutMs: 10_000 });
  return { path: pathOf(r.stdout), stderr: r.stderr };
}

const scope = (rel: string): Promise<AppAppeared> => appScope(lab, watcher, rel);

async function wifiIs(up: boolean): Promise<void> {
  await lab.setLink('dev', 'wlan0', up);
  await until(`wifi ${up ? 'active' : 'down'} in status`, async () => (await status(dev)).uplinks.find((u) => u.name === 'wifi')?.status, (s) => (s === 'active') === up);
}

async function explain(app: string, dest = 'internet'): Promise<RulesExplainResult> {
  const r = await dev.waymark(['rules', 'explain', '--app', app, '--dest', dest, '--uid', String(USER), '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as RulesExplainResult;
}

describe('rules per app × destination, for apps with and without the library', () => {
  it('the apps appear with their rules', async () => {
    watcher = new Watcher(lab, dev, ['--json', '--topic', 'app']);
    await watcher.ready();
    const chat = await scope(CHAT);
    const browser = await scope(BROWSER);
    const strict = await scope(STRICT);
    assert.deepEqual([chat.rule, chat.uplink], ['chat', 'cellular']);
    assert.deepEqual([browser.rule, browser.uplink], ['browser', 'wifi']);
    assert.deepEqual([strict.rule, strict.uplink], ['strict', 'wifi']);
  });

  it('chat (use [cellular]) stays on cellular while Wi-Fi is up; the browser (use [wifi, cellular]) and strict (only [wifi]) use Wi-Fi', async () => {
    assert.equal(await goIn(CHAT), 'wwan0');
    assert.equal((await curlIn(CHAT)).path, 'wwan0');
    assert.equal(await goIn(BROWSER), 'wlan0');
    assert.equal((await curlIn(BROWSER)).path, 'wlan0');
    assert.equal(await goIn(STRICT), 'wlan0');
    assert.equal((await curlIn(STRICT)).path, 'wlan0');
  });

  it('Wi-Fi\'s link down: the browser moves to cellular, strict fails instead; both return to Wi-Fi when it is back', async () => {
    try {
      await wifiIs(false);
      assert.equal((await curlIn(BROWSER)).path, 'wwan0', 'the library asks the daemon, which knows at once');
      await until('the Go client in the browser scope over cellular', () => goIn(BROWSER), (p) => p === 'wwan0');
      const strict = await curlIn(STRICT);
      assert.equal(strict.path, null);
      assert.match(strict.stderr, /unreachable|Failed to connect|Couldn't connect/i, strict.stderr);
      assert.equal(await goIn(STRICT), null, 'no library: the kernel refuses cellular too');
      assert.equal(await goIn(CHAT), 'wwan0', 'chat never left cellular');
      const e = await explain('org.example.Strict');
      assert.deepEqual([e.rule?.id, e.decision.action], ['strict', 'deny']);
      assert.deepEqual(e.candidates.map((c) => [c.uplink, c.rank ?? c.skipped]).slice(0, 2), [['wifi', 'is down'], ['cellular', 'rule strict allows only wifi']]);
    } finally {
      await wifiIs(true);
    }
    assert.equal((await curlIn(BROWSER)).path, 'wlan0');
    await until('the Go client in the browser scope back on Wi-Fi', () => goIn(BROWSER), (p) => p === 'wlan0');
    assert.equal((await curlIn(STRICT)).path, 'wlan0');
    assert.equal(await goIn(CHAT), 'wwan0');
  });

  it('waymark rules explain names the deciding rule and every rule before it', async () => {
    const chat = await explain('org.example.Chat');
    assert.equal(chat.rule?.id, 'chat');
    assert.match(chat.app.how, /running app/);
    assert.deepEqual(chat.decision, { action: 'steer', uplink: 'cellular', reason: 'app chat prefers it' });
    const browser = await explain('org.example.Browser');
    assert.deepEqual([browser.rule?.id, browser.decision.action === 'steer' && browser.decision.uplink], ['browser', 'wifi']);
    assert.deepEqual(browser.considered.map((c) => c.id), ['browser'], 'the most specific rule is considered first');
    const mms = await explain('org.example.Browser', 'mms');
    assert.equal(mms.rule, null, 'the browser\'s rule is for the Internet only');
    assert.ok(mms.considered.every((c) => c.skipped !== undefined));
    const text = (await dev.waymark(['rules', 'explain', '--app', 'org.example.Chat', '--dest', 'internet', '--uid', String(USER)])).stdout;
    assert.match(text, /deciding rule: chat: use cellular/);
    assert.match(text, /cellular\s+#1 \(taken\)/);
  });

  it('a rule added from the CLI decides at once (kernel and library), survives a restart, and goes with rules rm', async () => {
    const add = await dev.waymark(['rules', 'add', '--app', 'org.example.Browser', '--dest', 'internet', '--only', 'cellular', '--json'], { uid: USER });
    assert.equal(add.code, 0, add.stderr);
    const added = JSON.parse(add.stdout) as RuleView;
    assert.deepEqual([added.source, added.match['uid'], added.owner], ['cli', USER, USER], 'a user\'s rule is for their own apps');
    assert.equal((await curlIn(BROWSER)).path, 'wwan0');
    assert.equal(await goIn(BROWSER), 'wwan0', 'the kernel followed before rules add returned');
    const other = await dev.waymark(['rules', 'add', '--uid', '1001', '--deny'], { uid: USER });
    assert.equal(other.code, 77, 'not for another user\'s apps');
    await dev.stopDaemon('SIGTERM');
    await dev.startDaemon();
    const list = JSON.parse((await dev.waymark(['rules', 'list', '--json'], { uid: USER })).stdout) as RuleView[];
    assert.deepEqual(list.filter((r) => r.source === 'cli').map((r) => r.id), [added.id]);
    assert.equal((await explain('org.example.Browser')).rule?.id, added.id);
    const rm = await dev.waymark(['rules', 'rm', added.id], { uid: USER });
    assert.equal(rm.code, 0, rm.stderr);
    assert.equal((await curlIn(BROWSER)).path, 'wlan0');
  });
});
