/**
 * The decision service over a fake world: it answers from what the world holds right now
 * (uplinks, config, sessions, learnt addresses), keeps no copy of it, and voids every library's
 * cached answers (the generation) when the world says the config or the uplinks changed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ChangeFeed } from '../../src/daemon/changes.js';
import { DecisionService, type AnswerRule, type PromptRequest } from '../../src/daemon/decisions.js';
import type { PromptOutcome } from '../../src/prompt/prompt.js';
import type { EventBody } from '../../src/daemon/events.js';
import { LearnedHosts } from '../../src/daemon/learned.js';
import type { WorldChange } from '../../src/daemon/world.js';
import { GenerationFile } from '../../src/decision/generation.js';
import { WM_ACTION, WM_TYPE, type DecideRequest, type DecideResponse } from '../../src/decision/wire.js';
import { DeferredAnswer } from '../../src/decision/server.js';
import { SessionRegistry } from '../../src/session/session.js';
import type { UplinkState } from '../../src/uplink/state.js';
import { exampleConfig, labKernel, labStates, rulesOf } from '../support/fixture.js';
import { FakeClock, recordingLog } from '../support/fakes.js';

const config = exampleConfig();
const me = { pid: process.pid, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
/** This process's cgroup v2 path, relative, as a session's would be. */
const ownCgroup = (readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::')) ?? '0::/').slice(3).replace(/^\/+/, '');

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A world that is plain data plus a change feed. */
function fakeWorld() {
  const feed = new ChangeFeed<WorldChange>();
  const clock = new FakeClock();
  const world = {
    config,
    rules: rulesOf(config),
    uplinks: labStates(config).states as readonly UplinkState[],
    sessions: new SessionRegistry(),
    learned: new LearnedHosts({ onChange: () => undefined, configured: (d) => config.destinations.some((x) => x.name === d), clock }),
    subscribe: feed.subscribe.bind(feed),
  };
  return { world, feed, clock };
}

function service() {
  const { world, feed, clock } = fakeWorld();
  const dir = mkdtempSync(join(tmpdir(), 'wm-decisions-'));
  dirs.push(dir);
  const generation = new GenerationFile(dir);
  generation.open({ initial: 100 });
  const published: EventBody[] = [];
  const s = new DecisionService(world, generation, recordingLog(), {}, { publish: (e) => { published.push(e); }, wants: () => true });
  s.follow(world);
  after(() => {
    s.close();
    generation.close();
  });
  return { s, world, feed, clock, generation, published };
}

let seq = 0;
const ask = (s: DecisionService, address: string, port = 443, uplink = ''): DecideResponse => {
  const addr = Uint8Array.from(address.split('.').map(Number));
  const req: DecideRequest = { type: WM_TYPE.DECIDE, seq: ++seq, family: 4, proto: 'tcp', port, needs: 0, addr, uplink, destination: '' };
  const r = s.decide(req, me);
  assert.ok(!(r instanceof DeferredAnswer), 'no rule asks here: answered at once');
  return r;
};

describe('DecisionService over a fake world', () => {
  it('answers from the world\'s uplinks as they are now', () => {
    const h = service();
    let r = ask(h.s, '10.200.0.5', 443, 'mms');
    const mms = h.world.uplinks.find((u) => u.spec.name === 'mms');
    assert.deepEqual([r.action, r.uplink, r.ifname, r.mark], [WM_ACTION.STEER, 'mms', 'wwan1', mms?.mark], 'a wish for the APN that reaches the MMS service');
    assert.equal(r.generation, h.generation.value);
    assert.deepEqual([ask(h.s, '1.1.1.1', 443, 'wifi').action, ask(h.s, '1.1.1.1', 443, 'wifi').ifname], [WM_ACTION.STEER, 'wlan0'], 'a wish for Wi-Fi');
    // The APN and Wi-Fi go down in the world: the very next answers know.
    h.world.uplinks = labStates(config, labKernel({ wwan1: 0, wlan0: 0 })).states;
    r = ask(h.s, '10.200.0.5', 443, 'mms');
    assert.deepEqual([r.action, r.err], [WM_ACTION.DENY, 101], 'ENETUNREACH');
    assert.equal(ask(h.s, '1.1.1.1', 443, 'wifi').action, WM_ACTION.DENY);
  });

  it('answers a session\'s process by the session in the world\'s registry', () => {
    const h = service();
    assert.equal(ask(h.s, '1.1.1.1').action, WM_ACTION.PASS, 'no session, no wish: default routing');
    h.world.sessions.add({ id: 'exec-1', cgroup: ownCgroup, uid: me.uid, uplink: 'cellular', needs: [], deny: [], apps: [], command: 'x', startedAt: '' });
    assert.deepEqual([ask(h.s, '1.1.1.1').action, ask(h.s, '1.1.1.1').uplink], [WM_ACTION.STEER, 'cellular'], 'pinned by its session');
    h.world.sessions.remove('exec-1');
    h.world.sessions.add({ id: 'exec-2', cgroup: ownCgroup, uid: me.uid, uplink: 'mms', needs: [], deny: [], apps: [], command: 'x', startedAt: '' });
    const r = ask(h.s, '1.1.1.1');
    assert.equal(r.action, WM_ACTION.DENY, 'the MMS APN does not reach the Internet');
    const denied = h.published.find((e) => e.type === 'decision.denied');
    assert.deepEqual(denied && denied.type === 'decision.denied' && [denied.address, denied.port, denied.uplink], ['1.1.1.1', 443, 'mms']);
  });

  it('takes an address learnt for a domain destination as that destination, until it expires', () => {
    const h = service();
    // Asked over the VPN, which reaches the office but not the Internet.
    assert.equal(ask(h.s, '198.51.100.7', 443, 'office-vpn').action, WM_ACTION.DENY, 'unknown: the Internet');
    h.world.learned.learn(['198.51.100.7'], 'office', 5_000);
    const r = ask(h.s, '198.51.100.7', 443, 'office-vpn');
    assert.deepEqual([r.action, r.uplink], [WM_ACTION.STEER, 'office-vpn']);
    h.clock.advance(5_001);
    assert.equal(ask(h.s, '198.51.100.7', 443, 'office-vpn').action, WM_ACTION.DENY, 'expired');
  });

  it('voids every cached answer when the config or the uplinks change, not on other changes', async () => {
    const h = service();
    let g = h.generation.value;
    await h.feed.emit({ kind: 'uplinks', states: h.world.uplinks });
    assert.notEqual(h.generation.value, g, 'uplinks');
    g = h.generation.value;
    await h.feed.emit({ kind: 'config', config, generation: 2 });
    assert.notEqual(h.generation.value, g, 'config');
    g = h.generation.value;
    await h.feed.emit({ kind: 'sessions' });
    await h.feed.emit({ kind: 'observed', states: h.world.uplinks });
    await h.feed.emit({ kind: 'learned' });
    assert.equal(h.generation.value, g, 'sessions, observations and learnt addresses leave the answers be');
    assert.equal(ask(h.s, '1.1.1.1').generation, g, 'answers carry the current generation');
  });
});

describe('DecisionService and an ask rule', () => {
  const exe = readlinkSync('/proc/self/exe');
  const asking = exampleConfig(`rules:
  - name: ask-node
    match: { exe: ${exe} }
    ask: { default: deny, timeout: 5 }
`);

  function askingService(outcome: (req: PromptRequest) => Promise<PromptOutcome>) {
    const h = service();
    h.world.config = asking;
    h.world.rules = rulesOf(asking);
    const asked: PromptRequest[] = [];
    const kept: AnswerRule[] = [];
    h.s.askWith({ ask: (req) => { asked.push(req); return outcome(req); }, remember: (r) => { kept.push(r); return Promise.resolve(); } });
    return { ...h, asked, kept };
  }
  const request = (port = 443): DecideRequest => ({ type: WM_TYPE.DECIDE, seq: ++seq, family: 4, proto: 'tcp', port, needs: 0, addr: Uint8Array.from([1, 1, 1, 1]), uplink: '', destination: '' });
  const deferred = (r: DecideResponse | DeferredAnswer<DecideResponse>): DeferredAnswer<DecideResponse> => {
    assert.ok(r instanceof DeferredAnswer, 'the connect waits for the user');
    return r;
  };

  it('holds the connect, shows the app, the destination and the choices with their cost, then goes as answered; "always" is kept', async () => {
    const h = askingService(() => Promise.resolve({ by: 'agent', uid: me.uid, answer: { choice: { uplink: 'cellular' }, scope: 'always' } }));
    const d = deferred(h.s.decide(request(), me));
    assert.equal(d.waitMs, 5000 + 2000);
    const r = await d.answer;
    assert.deepEqual([r.action, r.uplink], [WM_ACTION.STEER, 'cellular']);
    const p = h.asked[0];
    assert.ok(p);
    assert.deepEqual([p.app.exe, p.target.destination, p.target.address, p.target.port, p.rule, p.default], [exe, 'internet', '1.1.1.1', 443, 'ask-node', { kind: 'deny' }]);
    assert.deepEqual(p.choices.map((c) => [c.uplink, c.cost.perMB, c.metered]), [['wifi', 0, false], ['cellular', 0.02, true]]);
    assert.deepEqual(h.kept, [{ match: { uid: me.uid, exe, destination: 'internet' }, action: { kind: 'only', uplinks: ['cellular'] }, owner: me.uid, scope: 'always' }]);
  });

  it('"deny, this time" fails that connect with EACCES, uncached, and keeps nothing; no answer: the default', async () => {
    let h = askingService(() => Promise.resolve({ by: 'agent', uid: me.uid, answer: { choice: { deny: true }, scope: 'once' } }));
    const r = await deferred(h.s.decide(request(), me)).answer;
    assert.deepEqual([r.action, r.err, r.ttlMs], [WM_ACTION.DENY, 13, 0]);
    assert.deepEqual(h.kept, []);
    h = askingService(() => Promise.resolve({ by: 'timeout' }));
    const t = await deferred(h.s.decide(request(), me)).answer;
    assert.deepEqual([t.action, t.err], [WM_ACTION.DENY, 13], 'the rule\'s default: deny');
  });

  it('concurrent connects of one app to one destination share one key; name lookups are not asked about', async () => {
    let release: (o: PromptOutcome) => void = () => undefined;
    const gate = new Promise<PromptOutcome>((r) => { release = r; });
    const h = askingService(() => gate);
    const waiting = Array.from({ length: 10 }, () => deferred(h.s.decide(request(), me)).answer);
    assert.equal(new Set(h.asked.map((a) => a.key)).size, 1);
    release({ by: 'agent', uid: me.uid, answer: { choice: { uplink: 'wifi' }, scope: 'once' } });
    for (const r of await Promise.all(waiting)) assert.equal(r.uplink, 'wifi');
    const dns = h.s.decide(request(53), me);
    assert.ok(!(dns instanceof DeferredAnswer));
    assert.equal(dns.action, WM_ACTION.DENY, 'the default (deny) for a lookup, no prompt');
  });
});
