/**
 * The ask prompt end to end (issue 9, item 2): rules that ask, `waymark agent` on a pseudo-
 * terminal as the app's user, real clients in systemd-style app scopes.
 *   - A blocking connect (python3 under the library) waits for the answer: "cellular, always"
 *     lets it proceed on cellular and saves the rule, which survives a daemon restart; "deny,
 *     this time" fails that connect with EACCES only (the next one asks again).
 *   - Ten concurrent connects of one app raise one prompt; without an answer by the timeout the
 *     default applies; with no agent at all, at once.
 *   - A non-blocking connect (node's event loop) is not held: the default now, the prompt all the
 *     same, the event loop running meanwhile; the answer decides its next connects.
 *   - A program without the library (the static Go client) is reported by the kernel: the prompt
 *     is raised, the default carries it until answered, the answer from then on.
 *   - A second user's agent never sees the first user's prompts.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { AppAppeared } from '../../src/daemon/events.js';
import type { RuleView } from '../../src/daemon/protocol.js';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { publicRoot } from '../../src/lab/public.js';
import { exampleText } from '../support/fixture.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, url, useLab } from '../support/lab.js';
import { NotificationServer, startPrivateBus } from '../support/notify-server.js';
import { PtyProcess } from '../support/pty.js';
import { appScope, Watcher } from '../support/watcher.js';

const ALICE = 1000;
const BOB = 1001;
const APPS = `user.slice/user-${ALICE}.slice/user@${ALICE}.service/app.slice`;
const scopeOf = (app: string, n: number): string => `${APPS}/app-gnome-${app}-${n}.scope`;
const CHAT = scopeOf('org.example.Chat', 1);
const MAIL = scopeOf('org.example.Mail', 2);
const QUICK = scopeOf('org.example.Quick', 3);
const NODE = scopeOf('org.example.Node', 4);
const STATIC = scopeOf('org.example.Static', 5);
const MANY = scopeOf('org.example.Many', 6);
const NOTIFY = scopeOf('org.example.Notify', 7);
const INTERNET = url(LAB.internet.v4);

const config = (): string => exampleText(`rules:
  - name: ask-chat
    match: { app: org.example.Chat }
    ask: { default: deny, timeout: 60 }
  - name: ask-mail
    match: { app: org.example.Mail }
    ask: { default: { only: [wifi] }, timeout: 60 }
  - name: ask-many
    match: { app: org.example.Many }
    ask: { default: { only: [wifi] }, timeout: 60 }
  - name: ask-notify
    match: { app: org.example.Notify }
    ask: { default: deny, timeout: 60 }
  - name: ask-quick
    match: { app: org.example.Quick }
    ask: { default: { only: [wifi] }, timeout: 2 }
  - name: ask-node
    match: { app: org.example.Node }
    ask: { default: deny, timeout: 60 }
  - name: ask-static
    match: { app: org.example.Static }
    ask: { default: { only: [wifi] }, timeout: 60 }
`);

let lab: Lab;
let dev: Device;
let goclient: string;
const agents: PtyProcess[] = [];

useLab({ config, alongside: async () => { goclient = await buildPublicGoClient(); }, timeoutMs: 180_000 }, (l, d) => {
  lab = l;
  dev = d;
});
after(async () => {
  for (const a of agents) await a.stop();
});

const CLI = (): string => join(publicRoot(), 'dist/src/cli/main.js');
function agent(uid: number): PtyProcess {
  const a = new PtyProcess([process.execPath, CLI(), '--socket', dev.socket, 'agent'], { uid });
  agents.push(a);
  return a;
}
const noLibrary = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'LD_PRELOAD'));
const withLibrary = (): NodeJS.ProcessEnv => ({ ...noLibrary, LD_PRELOAD: join(publicRoot(), 'native/preload/libwaymark.so'), WAYMARK_SOCKET: dev.socket });
/** A blocking HTTP GET (no socket timeout: python's connect blocks), under the library, in an app scope. */
function blockingGet(cgroup: string) {
  return lab.run('dev', ['/usr/bin/python3', '-c', `
import json, sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1]).read().decode())
except Exception as e:
    print(json.dumps({"error": str(getattr(e, "reason", e))}))
`, INTERNET], { cgroup, uid: ALICE, env: withLibrary(), timeoutMs: 90_000 });
}
const pathOf = (out: string): string | null => lastJson(out)?.path ?? null;

let alice: PtyProcess;
let bob: PtyProcess;
let watcher: Watcher;

const scope = (rel: string): Promise<AppAppeared> => appScope(lab, watcher, rel);

/** Waits for the next prompt on alice's agent (after `from`), answers it with `keys`, waits for the agent to say it was answered. */
async function answer(from: number, app: string, keys: string, said: string): Promise<number> {
  let at = await alice.waitFor(`wants to reach the Internet`, from);
  assert.match(alice.screen.slice(from, at), new RegExp(`Prompt p-\\d+: ${app.replace(/\./g, '\\.')}`));
  at = await alice.waitFor('uplink, d deny', at);
  alice.send(keys[0] ?? '');
  at = await alice.waitFor(': o this connection', at);
  alice.send(keys[1] ?? '');
  return alice.waitFor(`answered: ${said}`, at);
}

describe('the ask prompt', () => {
  it('agents of two users register; the apps appear', async () => {
    watcher = new Watcher(lab, dev, ['--json', '--topic', 'app', '--topic', 'prompt']);
    await watcher.ready();
    alice = agent(ALICE);
    bob = agent(BOB);
    await alice.waitFor(`waiting for prompts of uid ${ALICE}`);
    await bob.waitFor(`waiting for prompts of uid ${BOB}`);
    for (const s of [CHAT, MAIL, MANY, NOTIFY, QUICK, NODE, STATIC]) await scope(s);
  });

  it('a held connect: "cellular, always" lets it proceed on cellular and saves the rule', async () => {
    const mark = alice.mark();
    const get = blockingGet(CHAT);
    const at = await answer(mark, 'org.example.Chat', '2a', 'cellular, always');
    const r = await get;
    assert.equal(pathOf(r.stdout), 'wwan0', r.stdout + r.stderr);
    const shown = alice.screen.slice(mark, at);
    assert.match(shown, /1 {2}wifi .* free · unmetered/);
    assert.match(shown, /2 {2}cellular .* 0\.02 EUR\/MB · metered/);
    assert.match(shown, new RegExp(`to {7}${LAB.internet.v4.replace(/\./g, '\\.')} port ${LAB.internet.port}/tcp \\(destination internet\\)`));
    assert.match(shown, /the connection waits for the answer/);
    const list = JSON.parse((await dev.waymark(['rules', 'list', '--json'])).stdout) as RuleView[];
    const saved = list.find((x) => x.source === 'answer' && x.match['app'] === 'org.example.Chat');
    assert.deepEqual([saved?.match['uid'], saved?.match['destination'], saved?.action, saved?.owner], [ALICE, 'internet', { only: ['cellular'] }, ALICE]);
  });

  it('"deny, this time" fails that connect with EACCES only: the next one asks again', async () => {
    let mark = alice.mark();
    const denied = blockingGet(MAIL);
    mark = await answer(mark, 'org.example.Mail', 'do', 'deny, this connection');
    const r = await denied;
    assert.equal(pathOf(r.stdout), null);
    assert.match(r.stdout, /Permission denied|13/, r.stdout);
    const again = blockingGet(MAIL);
    await answer(mark, 'org.example.Mail', '1o', 'wifi, this connection');
    assert.equal(pathOf((await again).stdout), 'wlan0');
  });

  it('ten concurrent connects of one app raise one prompt; its answer lets them all through', async () => {
    const from = watcher.lines.length;
    const mark = alice.mark();
    const gets = Array.from({ length: 10 }, () => blockingGet(MANY));
    await alice.waitFor('wants to reach the Internet', mark);
    await answer(mark, 'org.example.Many', '2o', 'cellular, this connection');
    for (const r of await Promise.all(gets)) assert.equal(pathOf(r.stdout), 'wwan0', r.stdout);
    const asked = watcher.lines.slice(from).map((l) => l.text).filter((t) => t.includes('"prompt.asked"') && t.includes('org.example.Many'));
    assert.equal(asked.length, 1, asked.join('\n'));
  });

  it('no answer by the timeout: the default; no agent at all: the default at once', async () => {
    const mark = alice.mark();
    const r = await blockingGet(QUICK);
    assert.equal(pathOf(r.stdout), 'wlan0', 'only [wifi], the default');
    await alice.waitFor('timed out; the default applies (only wifi)', mark);
    // Without agents (both stop), a held connect is not held at all.
    await alice.stop();
    await bob.stop();
    const started = Date.now();
    const alone = await blockingGet(QUICK);
    assert.equal(pathOf(alone.stdout), 'wlan0');
    assert.ok(Date.now() - started < 30_000);
    alice = agent(ALICE);
    bob = agent(BOB);
    await alice.waitFor(`waiting for prompts of uid ${ALICE}`);
    await bob.waitFor(`waiting for prompts of uid ${BOB}`);
  });

  it('a non-blocking connect (node) is not held: the default now, the event loop runs, the answer decides its next connects', async () => {
    const mark = alice.mark();
    const script = `
const http = require('node:http');
let ticks = 0;
const timer = setInterval(() => ticks++, 5);
function get(n) {
  const t0 = Date.now();
  http.get(process.argv[1], (res) => {
    let body = ''; res.on('data', (d) => body += d);
    res.on('end', () => { console.log(JSON.stringify({ n, body: JSON.parse(body), ticks })); done(n); });
  }).on('error', (e) => { console.log(JSON.stringify({ n, error: e.code, ms: Date.now() - t0, ticks })); done(n); });
}
function done(n) { if (n === 1) { process.stdin.once('data', () => get(2)); console.log('ready'); } else { clearInterval(timer); process.exit(0); } }
get(1);
`;
    const child = lab.spawn('dev', [process.execPath, '-e', script, INTERNET], { cgroup: NODE, uid: ALICE, env: withLibrary() });
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await alice.waitFor('wants to reach the Internet', mark);
      assert.match(alice.screen.slice(mark), /the default applies until answered/);
      // The first request failed at once by the default (deny), while the prompt is open.
      const end = Date.now() + 30_000;
      while (!out.includes('ready') && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      const first = JSON.parse(out.split('\n')[0] ?? '{}') as { error?: string; ms?: number };
      assert.equal(first.error, 'EACCES', out);
      await answer(mark, 'org.example.Node', '2a', 'cellular, always');
      child.stdin?.write('\n');
      await exited;
      const second = JSON.parse(out.split('\n').find((l) => l.includes('"n":2')) ?? '{}') as { body?: { path?: string }; ticks?: number };
      assert.equal(second.body?.path, 'wwan0', out);
      assert.ok((second.ticks ?? 0) > 0, 'the event loop ran while the user was asked');
    } finally {
      child.kill();
    }
  });

  it('the static Go client (no library): the kernel reports its connect, the default carries it, the answer from then on', async () => {
    const mark = alice.mark();
    const go = (): Promise<string | null> => lab.run('dev', [goclient, '-timeout', '3s', INTERNET], { cgroup: STATIC, uid: ALICE, env: noLibrary, timeoutMs: 15_000 }).then((r) => pathOf(r.stdout));
    assert.equal(await go(), 'wlan0', 'the default: only wifi');
    await answer(mark, 'org.example.Static', '2a', 'cellular, always');
    // The answer is a rule the kernel holds the app to once rules list shows it (the store returns after the kernel followed).
    const end = Date.now() + 15_000;
    let path = await go();
    while (path !== 'wwan0' && Date.now() < end) path = await go();
    assert.equal(path, 'wwan0');
  });

  it('desktop notifications (waymark agent --notify, a private D-Bus bus): the server gets the prompt with its buttons, a click answers it', async () => {
    const bus = await startPrivateBus();
    const server = await NotificationServer.start(bus.address);
    const notifier = lab.spawn('dev', [process.execPath, CLI(), '--socket', dev.socket, 'agent', '--notify'], { env: { ...noLibrary, DBUS_SESSION_BUS_ADDRESS: bus.address } });
    let out = '';
    notifier.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    notifier.stderr?.setEncoding('utf8').on('data', (d: string) => (out += d));
    try {
      const started = new Promise<void>((resolve, reject) => {
        notifier.stdout?.on('data', () => { if (out.includes('showing prompts as desktop notifications')) resolve(); });
        notifier.once('exit', (code) => reject(new Error(`waymark agent --notify exited ${code ?? '?'}: ${out}`)));
      });
      await started;
      const mark = alice.mark();
      const get = blockingGet(NOTIFY);
      const n = await server.notified.take('the prompt as a notification');
      assert.equal(n.summary, 'org.example.Notify wants the Internet');
      assert.match(n.body, /cellular/);
      assert.match(n.body, /0\.02 EUR\/MB/);
      const keys = n.actions.map(([k]) => k);
      assert.ok(keys.includes('deny'), JSON.stringify(n.actions));
      const cellular = keys.find((k) => k.endsWith('cellular'));
      assert.ok(cellular, JSON.stringify(n.actions));
      server.invokeAction(n.id, cellular);
      const r = await get;
      assert.equal(pathOf(r.stdout), 'wwan0', r.stdout);
      await alice.waitFor('answered by another agent (uid 0): cellular, always', mark);
    } finally {
      notifier.kill('SIGTERM');
      await server.close();
      await bus.close();
    }
  });

  it('the answers survive a daemon restart; the second user\'s agent never saw the first user\'s prompts', async () => {
    assert.doesNotMatch(bob.screen, /Prompt p-/, bob.screen);
    await dev.stopDaemon('SIGTERM');
    await dev.startDaemon();
    assert.equal(pathOf((await blockingGet(CHAT)).stdout), 'wwan0', 'cellular, as answered, no prompt (no agent runs now)');
    const list = JSON.parse((await dev.waymark(['rules', 'list', '--json'])).stdout) as RuleView[];
    assert.deepEqual(list.filter((x) => x.source === 'answer').map((x) => x.match['app']).sort(), ['org.example.Chat', 'org.example.Node', 'org.example.Notify', 'org.example.Static']);
    const explained = await dev.waymark(['rules', 'explain', '--app', 'org.example.Chat', '--dest', 'internet', '--uid', String(ALICE)]);
    assert.match(explained.stdout, /deciding rule: answer-\d+: only cellular/);
  });
});
