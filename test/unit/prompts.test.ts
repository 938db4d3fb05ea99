/**
 * The prompt broker (src/daemon/prompts.ts) on its own, with a fake clock and the real event
 * bus: dedupe, one prompt shown per uid at a time, the defaults (no agent, timeout, gone,
 * overflow), who may answer and what, and who hears of a prompt.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { formatStatus } from '../../src/cli/status.js';
import { EventBus, type DaemonEvent, type Subscriber } from '../../src/daemon/events.js';
import { PromptBroker, PromptError, type AskRequest, type PromptLimits } from '../../src/daemon/prompts.js';
import type { PromptOutcome } from '../../src/prompt/prompt.js';
import { FakeClock } from '../support/fakes.js';

const USER = 1000;
const OTHER = 2000;

function request(uid: number, key: string, timeoutMs = 30_000): AskRequest {
  return {
    key, timeoutMs,
    app: { uid, pid: 4321, name: 'chat', exe: '/usr/bin/chat', unit: 'app-gnome-chat-1.scope', app: 'org.example.Chat', flatpakId: null },
    target: { destination: 'internet', address: '198.51.100.7', port: 443, proto: 'tcp', host: 'chat.example.org' },
    needs: [],
    choices: [
      { uplink: 'wifi', kind: 'wifi', status: 'active', cost: { perMB: 0, perMinute: 0, currency: 'EUR' }, metered: false, roaming: false },
      { uplink: 'cellular', kind: 'cellular', status: 'active', cost: { perMB: 0.01, perMinute: 0, currency: 'EUR' }, metered: true, roaming: false },
    ],
    default: { kind: 'use', uplinks: ['wifi'] },
    rule: 'ask-chat',
    held: true,
  };
}

/** A broker on a bus with a fake clock; `events` is everything published, in order. */
function setup(limits: Partial<PromptLimits> = {}): { broker: PromptBroker; clock: FakeClock; bus: EventBus; events: DaemonEvent[] } {
  const clock = new FakeClock();
  const bus = new EventBus();
  const events: DaemonEvent[] = [];
  const all = bus.subscribe({ uid: 0, seesAll: true, topics: ['prompt'], wake: () => undefined });
  const broker = new PromptBroker({
    clock, limits,
    publish: (e) => {
      bus.publish(e);
      for (let x = all.take(); x !== undefined; x = all.take()) events.push(x);
    },
  });
  return { broker, clock, bus, events };
}

/** Whether a promise has settled yet (after the microtasks queued so far). */
async function settled<T>(p: Promise<T>): Promise<boolean> {
  const mark = Symbol('pending');
  return (await Promise.race([p, new Promise((r) => setImmediate(() => r(mark)))])) !== mark;
}

const kinds = (es: readonly DaemonEvent[]): string[] => es.map((e) => (e.type === 'prompt.asked' ? `asked ${e.prompt.id}` : e.type === 'prompt.closed' ? `closed ${e.id} ${e.outcome.by}` : e.type));
const drain = (s: Subscriber): DaemonEvent[] => {
  const out: DaemonEvent[] = [];
  for (let e = s.take(); e !== undefined; e = s.take()) out.push(e);
  return out;
};
const code = (c: string) => (e: unknown): boolean => e instanceof PromptError && e.code === c;

describe('PromptBroker', () => {
  it('raises one prompt for ten concurrent asks with one key, and gives every asker the answer', async () => {
    const { broker, events } = setup();
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    const asks = Array.from({ length: 10 }, () => broker.ask(request(USER, 'chat|internet')));
    assert.deepEqual(kinds(events), ['asked p-1']);
    assert.equal(broker.stats.open, 1);
    const outcome = broker.answer('p-1', USER, { choice: { uplink: 'cellular' }, scope: 'always' });
    const got = await Promise.all(asks);
    assert.equal(got.length, 10);
    for (const o of got) assert.equal(o, outcome);
    assert.deepEqual(outcome, { by: 'agent', uid: USER, answer: { choice: { uplink: 'cellular' }, scope: 'always' } });
    assert.deepEqual(kinds(events), ['asked p-1', 'closed p-1 agent']);
    assert.deepEqual(broker.stats, { open: 0, queued: 0, agents: 1, overflowed: 0, limits: broker.limits });
  });

  it('shows one prompt per uid at a time, the others in the order asked; another uid\'s at once', async () => {
    const { broker, events } = setup();
    broker.register({}, { uid: 0, pid: 1, name: 'root', kinds: ['connect'] });
    const a = broker.ask(request(USER, 'a'));
    const b = broker.ask(request(USER, 'b'));
    const c = broker.ask(request(USER, 'c'));
    const o = broker.ask(request(OTHER, 'a'));
    assert.deepEqual(kinds(events), ['asked p-1', 'asked p-4']);
    assert.deepEqual(broker.visible(USER).map((p) => p.id), ['p-1']);
    assert.deepEqual(broker.visible(0).map((p) => p.id).sort(), ['p-1', 'p-4']);
    assert.equal(broker.queued(USER), 2);
    assert.equal(broker.queued(OTHER), 0);
    // Not shown yet: not answerable.
    assert.throws(() => broker.answer('p-2', USER, { choice: { deny: true }, scope: 'once' }), code('ENOENT'));
    broker.answer('p-1', USER, { choice: { deny: true }, scope: 'once' });
    assert.deepEqual((await a), { by: 'agent', uid: USER, answer: { choice: { deny: true }, scope: 'once' } });
    assert.deepEqual(kinds(events), ['asked p-1', 'asked p-4', 'closed p-1 agent', 'asked p-2']);
    assert.equal(await settled(b), false);
    broker.answer('p-2', 0, { choice: { uplink: 'wifi' }, scope: 'minutes', minutes: 10 });
    assert.deepEqual(kinds(events).slice(4), ['closed p-2 agent', 'asked p-3']);
    assert.deepEqual((await b), { by: 'agent', uid: 0, answer: { choice: { uplink: 'wifi' }, scope: 'minutes', minutes: 10 } });
    assert.equal(await settled(c), false);
    assert.equal(await settled(o), false);
  });

  it('answers at once with no-agent when no agent of the uid or root is registered; root\'s agent suffices', async () => {
    const { broker, events } = setup();
    assert.deepEqual(await broker.ask(request(USER, 'a')), { by: 'no-agent' });
    const other = broker.register({}, { uid: OTHER, pid: 1, name: 'other', kinds: ['connect'] });
    assert.deepEqual(await broker.ask(request(USER, 'a')), { by: 'no-agent' }, 'another user\'s agent does not count');
    assert.deepEqual(events, [], 'nothing shown');
    other.handle.unregister();
    const root = broker.register({}, { uid: 0, pid: 1, name: 'root', kinds: ['connect'] });
    const p = broker.ask(request(USER, 'a'));
    assert.deepEqual(kinds(events), ['asked p-1']);
    assert.equal(await settled(p), false);
    root.handle.unregister();
    assert.deepEqual(await p, { by: 'no-agent' }, 'the last agent that may answer went: the default at once');
    assert.deepEqual(kinds(events), ['asked p-1', 'closed p-1 no-agent']);
  });

  it('closes the open and the queued prompts of a uid when its last agent goes, the queued ones without showing them', async () => {
    const { broker, events } = setup();
    const owner = {};
    const first = broker.register(owner, { uid: USER, pid: 1, name: 'a', kinds: ['connect'] });
    assert.equal(broker.register(owner, { uid: USER, pid: 1, name: 'a', kinds: ['connect'] }).fresh, false, 'a second registration of one connection is the same agent');
    const second = broker.register({}, { uid: USER, pid: 2, name: 'b', kinds: ['connect'] });
    const asks = [broker.ask(request(USER, 'a')), broker.ask(request(USER, 'b'))];
    first.handle.unregister();
    first.handle.unregister();
    assert.equal(await settled(asks[0] ?? Promise.reject(new Error('no ask'))), false, 'another agent of the uid is left');
    second.handle.unregister();
    assert.deepEqual(await Promise.all(asks), [{ by: 'no-agent' }, { by: 'no-agent' }]);
    assert.deepEqual(kinds(events), ['asked p-1', 'closed p-1 no-agent']);
    assert.deepEqual(broker.stats, { open: 0, queued: 0, agents: 0, overflowed: 0, limits: broker.limits });
  });

  it('times out by the fake clock, counting from the ask: a queued prompt that expires closes unseen', async () => {
    const { broker, clock, events } = setup();
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    const t0 = clock.now();
    const a = broker.ask(request(USER, 'a', 10_000));
    clock.advance(1000);
    const b = broker.ask(request(USER, 'b', 5_000));
    const c = broker.ask(request(USER, 'c', 60_000));
    assert.equal(broker.visible(USER)[0]?.expiresAt, new Date(t0 + 10_000).toISOString());
    clock.advance(5_000); // b's 5 s are over, while a is still shown
    assert.deepEqual(await b, { by: 'timeout' });
    assert.deepEqual(kinds(events), ['asked p-1'], 'b was never shown, so no event');
    assert.equal(await settled(a), false);
    clock.advance(3_999);
    assert.equal(await settled(a), false, '1 ms before its time');
    clock.advance(1);
    assert.deepEqual(await a, { by: 'timeout' });
    assert.deepEqual(kinds(events), ['asked p-1', 'closed p-1 timeout', 'asked p-3']);
    assert.equal(broker.visible(USER)[0]?.expiresAt, new Date(t0 + 1000 + 60_000).toISOString(), 'c keeps the expiry of its ask');
    broker.answer('p-3', USER, { choice: { uplink: 'wifi' }, scope: 'app' });
    assert.equal((await c).by, 'agent');
    assert.equal(clock.pending, 0, 'no timer left behind');
  });

  it('lets only the prompt\'s uid and root answer, a choice among its uplinks or deny, and only once', async () => {
    const { broker } = setup();
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    broker.register({}, { uid: OTHER, pid: 1, name: 'o', kinds: ['connect'] });
    const a = broker.ask(request(USER, 'a'));
    const once = { choice: { uplink: 'wifi' }, scope: 'once' } as const;
    assert.throws(() => broker.answer('p-1', OTHER, once), code('EPERM'));
    assert.throws(() => broker.answer('p-1', USER, { choice: { uplink: 'mms' }, scope: 'once' }), (e: unknown) => code('EINVAL')(e) && /mms is not among the prompt's choices \(wifi, cellular; or deny\)/.test((e as Error).message));
    assert.throws(() => broker.answer('p-1', USER, { choice: { deny: true }, scope: 'minutes' }), code('EINVAL'));
    assert.throws(() => broker.answer('p-1', USER, { choice: { deny: true }, scope: 'minutes', minutes: 1441 }), code('EINVAL'));
    assert.throws(() => broker.answer('p-1', USER, { choice: { deny: true }, scope: 'always', minutes: 5 }), code('EINVAL'));
    assert.throws(() => broker.answer('p-9', USER, once), code('ENOENT'));
    assert.equal(await settled(a), false, 'refused answers leave it open');
    const won = broker.answer('p-1', 0, { choice: { uplink: 'cellular' }, scope: 'always', allDestinations: true });
    assert.deepEqual(won, { by: 'agent', uid: 0, answer: { choice: { uplink: 'cellular' }, scope: 'always', allDestinations: true } });
    assert.throws(() => broker.answer('p-1', USER, once), code('ENOENT'));
    assert.equal(await a, won);
  });

  it('answers beyond its bound of prompts per uid with overflow, and bounds the agents per uid (EBUSY)', async () => {
    const { broker, events } = setup({ promptsPerUid: 2, agentsPerUid: 2 });
    broker.register({}, { uid: USER, pid: 1, name: 'a', kinds: ['connect'] });
    broker.register({}, { uid: USER, pid: 2, name: 'b', kinds: ['connect'] });
    assert.throws(() => broker.register({}, { uid: USER, pid: 3, name: 'c', kinds: ['connect'] }), code('EBUSY'));
    broker.register({}, { uid: OTHER, pid: 4, name: 'o', kinds: ['connect'] });
    void broker.ask(request(USER, 'a'));
    void broker.ask(request(USER, 'b'));
    void broker.ask(request(USER, 'a')); // joins the first: no new prompt
    assert.deepEqual(await broker.ask(request(USER, 'c')), { by: 'overflow' });
    void broker.ask(request(OTHER, 'c')); // another uid's bound is its own
    assert.equal(broker.stats.overflowed, 1);
    assert.deepEqual(kinds(events), ['asked p-1', 'asked p-3']);
  });

  it('gives an asker that gives up `gone`, the others keep waiting; the prompt closes once all gave up', async () => {
    const { broker, events, clock } = setup();
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    const one = new AbortController();
    const two = new AbortController();
    const a = broker.ask(request(USER, 'k'), one.signal);
    const b = broker.ask(request(USER, 'k'), two.signal);
    one.abort();
    assert.deepEqual(await a, { by: 'gone' });
    assert.equal(await settled(b), false);
    assert.deepEqual(kinds(events), ['asked p-1']);
    two.abort();
    assert.deepEqual(await b, { by: 'gone' });
    assert.deepEqual(kinds(events), ['asked p-1', 'closed p-1 gone']);
    assert.equal(clock.pending, 0);
    const c = broker.ask(request(USER, 'k2'));
    assert.equal(broker.cancel(USER, 'k2'), true);
    assert.deepEqual(await c, { by: 'gone' });
    assert.equal(broker.cancel(USER, 'k2'), false);
    assert.deepEqual(await broker.ask(request(USER, 'k3'), AbortSignal.abort()), { by: 'gone' });
  });

  it('keeps one key per uid: the same key of another uid is another prompt', () => {
    const { broker, events } = setup();
    broker.register({}, { uid: 0, pid: 1, name: 'root', kinds: ['connect'] });
    void broker.ask(request(USER, 'same'));
    void broker.ask(request(OTHER, 'same'));
    assert.deepEqual(kinds(events), ['asked p-1', 'asked p-2']);
  });
});

describe('prompt events', () => {
  it('reach only subscribers of the prompt\'s uid and root, not a waymark-group subscriber of another uid (who still sees its denials)', () => {
    const bus = new EventBus();
    const sub = (uid: number, seesAll: boolean): Subscriber => bus.subscribe({ uid, seesAll, topics: ['prompt', 'decision'], wake: () => undefined });
    const user = sub(USER, false);
    const root = sub(0, true);
    const group = sub(OTHER, true);
    const stranger = sub(3000, false);
    const broker = new PromptBroker({ clock: new FakeClock(), publish: (e) => bus.publish(e) });
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    void broker.ask(request(USER, 'a'));
    broker.answer('p-1', USER, { choice: { deny: true }, scope: 'once' });
    bus.publish({
      type: 'decision.denied', uid: USER, pid: 1, exe: null, app: null, destination: 'mms', address: '10.0.0.1', port: 80, proto: 'tcp', uplink: null, errno: 'EACCES', reason: 'no',
    });
    assert.deepEqual(kinds(drain(user)), ['asked p-1', 'closed p-1 agent', 'decision.denied']);
    assert.deepEqual(kinds(drain(root)), ['asked p-1', 'closed p-1 agent', 'decision.denied']);
    assert.deepEqual(kinds(drain(group)), ['decision.denied']);
    assert.deepEqual(kinds(drain(stranger)), []);
  });

  it('carry the prompt as asked and the outcome as closed', () => {
    const { broker, events } = setup();
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    void broker.ask(request(USER, 'a'));
    const outcome: PromptOutcome = broker.answer('p-1', USER, { choice: { uplink: 'wifi' }, scope: 'app' });
    const [asked, closed] = events;
    assert.ok(asked?.type === 'prompt.asked');
    assert.equal(asked.prompt.app.name, 'chat');
    assert.equal(asked.prompt.target.host, 'chat.example.org');
    assert.deepEqual(asked.prompt.choices.map((c) => c.uplink), ['wifi', 'cellular']);
    assert.ok(closed?.type === 'prompt.closed');
    assert.deepEqual({ id: closed.id, uid: closed.uid, outcome: closed.outcome }, { id: 'p-1', uid: USER, outcome });
  });
});

describe('prompts in waymark status', () => {
  it('counts agents, open and queued prompts, and the asks over the bound', async () => {
    const { broker } = setup({ promptsPerUid: 1 });
    broker.register({}, { uid: USER, pid: 1, name: 't', kinds: ['connect'] });
    void broker.ask(request(USER, 'a'));
    assert.deepEqual(await broker.ask(request(USER, 'b')), { by: 'overflow' });
    const text = formatStatus({
      daemon: { version: 't', protocol: 2, pid: 1, configPath: '/c', generation: 1, startedAt: '' }, uplinks: [], destinations: [], lastReconcile: null,
      prompts: broker.stats,
    });
    assert.match(text, /^prompts: 1 agent, 1 open, 0 queued, 1 ask given the default at once \(more than 1 prompts of one user\)$/m);
  });
});
