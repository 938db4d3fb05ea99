/**
 * The desktop-notification agent against a notification server of the test's own, on a private
 * dbus-daemon (test/support/notify-server.ts): never the machine's session bus. Every wait is on
 * an event (a Notify, a CloseNotification, an answer); the time bounds are guards.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import type { EventEmitter } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { connectBus, sessionBusAddress, type MessageBus } from '../../src/agent/dbus.js';
import type { BudgetNotice } from '../../src/agent/budget-words.js';
import {
  answerFor, budgetNotificationContent, choiceLine, costWords, escapeMarkup, notificationContent, URGENCY,
} from '../../src/agent/notification-content.js';
import {
  APP_NAME, NOTIFICATIONS, NotificationsUnavailable, runNotificationAgent, startNotificationAgent,
  type AgentEvents, type BudgetSource, type NotificationAgent, type PromptSource,
} from '../../src/agent/notifications.js';
import type { Prompt, PromptAnswer, PromptOutcome } from '../../src/prompt/prompt.js';
import { recordingLog } from '../support/fakes.js';
import { Arrivals, NotificationServer, startPrivateBus, within, type PrivateBus } from '../support/notify-server.js';

let seq = 0;
function prompt(over: Partial<Prompt> = {}): Prompt {
  seq++;
  return {
    id: `p-${seq}`,
    app: { uid: 1000, pid: 4242, name: 'chat', exe: '/usr/bin/chat', unit: null, app: 'org.example.Chat', flatpakId: null },
    target: { destination: 'internet', address: '93.184.216.34', port: 443, proto: 'tcp', host: 'example.com' },
    needs: [],
    choices: [
      { uplink: 'wifi', kind: 'wifi', status: 'up', cost: { perMB: 0, perMinute: 0, currency: 'EUR' }, metered: false, roaming: false },
      { uplink: 'cellular', kind: 'cellular', status: 'up', cost: { perMB: 0.02, perMinute: 0, currency: 'EUR' }, metered: true, roaming: true, budgetLeft: '120 MB' },
    ],
    default: { kind: 'deny' },
    rule: 'chat-asks',
    expiresAt: new Date(Date.now() + 30_000).toISOString(),
    held: true,
    ...over,
  };
}

/** A prompt source the test drives: ask() and close() publish, answers arrive in `answers`. */
class FakeSource implements PromptSource {
  readonly answers = new Arrivals<{ id: string; answer: PromptAnswer }>();
  private readonly asked = new Set<(p: Prompt) => void>();
  private readonly closed = new Set<(id: string, o: PromptOutcome) => void>();
  /** What answer() does (the daemon refusing, ...). */
  refuse: Error | undefined;

  onAsked(fn: (p: Prompt) => void): () => void {
    this.asked.add(fn);
    return () => this.asked.delete(fn);
  }

  onClosed(fn: (id: string, o: PromptOutcome) => void): () => void {
    this.closed.add(fn);
    return () => this.closed.delete(fn);
  }

  answer(id: string, answer: PromptAnswer): Promise<void> {
    this.answers.push({ id, answer });
    return this.refuse ? Promise.reject(this.refuse) : Promise.resolve();
  }

  ask(p: Prompt): void {
    for (const fn of this.asked) fn(p);
  }

  close(id: string, o: PromptOutcome = { by: 'timeout' }): void {
    for (const fn of this.closed) fn(id, o);
  }

  get listeners(): number {
    return this.asked.size + this.closed.size;
  }
}

/** A budget event as the accounting service publishes it. */
function notice(over: Partial<BudgetNotice> = {}): BudgetNotice {
  return {
    type: 'budget.warning', id: 'b-1', uplink: 'cellular', app: 'org.example.Chat', uid: 1000,
    usedBytes: 8_000_000, limitBytes: 10_000_000, blocked: false, periodEnd: '2026-12-05T00:00:00.000Z', ...over,
  };
}

const UTC = (): number => 0;

/** Budget events the test publishes. */
class FakeBudgets implements BudgetSource {
  private readonly listeners = new Set<(n: BudgetNotice) => void>();

  onBudget(fn: (n: BudgetNotice) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  publish(n: BudgetNotice): void {
    for (const fn of this.listeners) fn(n);
  }

  get count(): number {
    return this.listeners.size;
  }
}

/** The agent's notification for a prompt is up (the Notify's reply reached it). */
function shown(agent: { readonly events: EventEmitter<AgentEvents> }, promptId: string): Promise<number> {
  return within(new Promise<number>((resolve) => {
    const on = (id: string, n: number): void => {
      if (id !== promptId) return;
      agent.events.off('shown', on);
      resolve(n);
    };
    agent.events.on('shown', on);
  }), `notification shown for ${promptId}`);
}

/** Why the agent's notification for a prompt went. */
function hidden(agent: { readonly events: EventEmitter<AgentEvents> }, promptId: string): Promise<string> {
  return within(new Promise<string>((resolve) => {
    const on = (id: string, _n: number, why: string): void => {
      if (id !== promptId) return;
      agent.events.off('hidden', on);
      resolve(why);
    };
    agent.events.on('hidden', on);
  }), `notification hidden for ${promptId}`);
}

describe('notification content (pure)', () => {
  test('summary, body with destination and each choice, a button per choice and deny', () => {
    const p = prompt();
    const c = notificationContent(p, { actions: true, markup: false, now: Date.parse(p.expiresAt) - 30_000 });
    assert.ok(c);
    assert.equal(c.summary, 'chat wants the Internet');
    assert.match(c.body, /^example\.com \(93\.184\.216\.34:443 tcp\), destination internet$/m);
    assert.match(c.body, /^wifi \(wifi, up\): free, unmetered$/m);
    assert.match(c.body, /^cellular \(cellular, up\): 0\.02 EUR\/MB, metered, roaming, 120 MB left$/m);
    assert.match(c.body, /Without an answer in 30 s: deny \(the connection waits\)\./);
    assert.deepEqual(c.actions, [['use:wifi', 'Always via wifi'], ['use:cellular', 'Always via cellular'], ['deny', 'Deny this time']]);
    assert.equal(c.urgency, URGENCY.critical);
    assert.equal(c.expireMs, 30_000);
  });

  test('without the actions capability: information only, and where to answer', () => {
    const p = prompt({ held: false, target: { destination: 'mms', address: 'fd00::10', port: 80, proto: 'tcp', host: null } });
    const c = notificationContent(p, { actions: false, markup: false, now: Date.now() });
    assert.ok(c);
    assert.deepEqual(c.actions, []);
    assert.equal(c.summary, 'chat wants mms');
    assert.match(c.body, /^\[fd00::10\]:80 tcp, destination mms$/m);
    assert.match(c.body, /waymark agent/);
    assert.equal(c.urgency, URGENCY.normal);
  });

  test('an expired prompt is not shown; markup is escaped when the server reads it', () => {
    const p = prompt();
    assert.equal(notificationContent(p, { actions: true, markup: false, now: Date.parse(p.expiresAt) }), undefined);
    const odd = prompt({ app: { ...p.app, name: 'a<b>&c' } });
    const c = notificationContent(odd, { actions: true, markup: true, now: Date.now() });
    assert.ok(c);
    assert.equal(escapeMarkup('a<b>&c'), 'a&lt;b&gt;&amp;c');
    assert.equal(c.summary, 'a<b>&c wants the Internet', 'the summary is never markup');
  });

  test('at most two uplink buttons, Deny always among the buttons; the body still lists every choice', () => {
    const base = prompt();
    const vpn = { ...base.choices[0]!, uplink: 'vpn', kind: 'vpn' };
    const p = prompt({ choices: [...base.choices, vpn] });
    const c = notificationContent(p, { actions: true, markup: false, now: Date.now() });
    assert.ok(c);
    assert.deepEqual(c.actions.map(([k]) => k), ['use:wifi', 'use:cellular', 'deny']);
    assert.match(c.body, /^vpn \(vpn, up\): free, unmetered$/m);
    assert.match(c.body, /other uplinks, answer with `waymark agent`/);
    const all = notificationContent(p, { actions: true, markup: false, now: Date.now(), uplinkButtons: 5 });
    assert.deepEqual(all?.actions.map(([k]) => k), ['use:wifi', 'use:cellular', 'use:vpn', 'deny']);
    assert.deepEqual(answerFor(p, 'use:vpn'), { choice: { uplink: 'vpn' }, scope: 'always' }, 'a choice without a button is still a valid answer');
  });

  test('costs and choices in words', () => {
    assert.equal(costWords({ perMB: 0, perMinute: 0, currency: 'EUR' }), 'free');
    assert.equal(costWords({ perMB: 0.1 + 0.2, perMinute: 0.05, currency: 'USD' }), '0.3 USD/MB + 0.05 USD/min');
    assert.equal(choiceLine({ uplink: 'dialup', kind: 'dialup', status: 'down', cost: { perMB: 0, perMinute: 0.1, currency: 'EUR' }, metered: true, roaming: false }),
      'dialup (dialup, down): 0.1 EUR/min, metered');
  });

  test('what each button answers; keys that are no button answer nothing', () => {
    const p = prompt();
    assert.deepEqual(answerFor(p, 'use:cellular'), { choice: { uplink: 'cellular' }, scope: 'always' });
    assert.deepEqual(answerFor(p, 'deny'), { choice: { deny: true }, scope: 'once' });
    assert.equal(answerFor(p, 'use:vpn'), undefined, 'not among the choices');
    assert.equal(answerFor(p, 'default'), undefined);
    assert.deepEqual(answerFor(p, 'use:wifi', { choose: 'minutes', deny: 'app', minutes: 30 }), { choice: { uplink: 'wifi' }, scope: 'minutes', minutes: 30 });
  });

  test('a budget warning: normal urgency, the share used, the use of the limit, when it resets; no buttons', () => {
    const c = budgetNotificationContent(notice(), { markup: false, tz: UTC });
    assert.deepEqual(c, {
      summary: 'org.example.Chat has used 80 % of its budget on cellular',
      body: '8.00 MB of 10.0 MB used (budget b-1).\nResets 2026-12-05 00:00.',
      urgency: URGENCY.normal,
      expireMs: -1,
    });
    const uplink = budgetNotificationContent(notice({ id: 'cell', app: null, uid: null, usedBytes: 1_700_000_000, limitBytes: 2_000_000_000 }), { markup: false, tz: () => 60 });
    assert.equal(uplink.summary, '85 % of the cellular budget used');
    assert.equal(uplink.body, '1.70 GB of 2.00 GB used (budget cell).\nResets 2026-12-05 01:00.');
    assert.equal(budgetNotificationContent(notice(), { markup: false, viewer: 0 }).summary, 'org.example.Chat (uid 1000) has used 80 % of its budget on cellular', 'root sees whose');
  });

  test('a budget exhausted: critical; blocked until the period ends, or only warned; room again: low', () => {
    const blocked = budgetNotificationContent(notice({ type: 'budget.exhausted', usedBytes: 10_000_000, blocked: true }), { markup: false, tz: UTC });
    assert.equal(blocked.summary, 'org.example.Chat is blocked on cellular');
    assert.equal(blocked.body, '10.0 MB of 10.0 MB used (budget b-1).\nBlocked until 2026-12-05 00:00, or until the budget is raised or reset (`waymark budget`).');
    assert.equal(blocked.urgency, URGENCY.critical);
    const warnOnly = budgetNotificationContent(notice({ type: 'budget.exhausted', usedBytes: 12_000_000 }), { markup: false, tz: UTC });
    assert.equal(warnOnly.summary, 'org.example.Chat has used up its budget on cellular');
    assert.match(warnOnly.body, /^12\.0 MB of 10\.0 MB used \(budget b-1\)\.\nThe budget only warns: traffic goes on\. Resets 2026-12-05 00:00\.$/);
    assert.equal(warnOnly.urgency, URGENCY.critical);
    const uplink = budgetNotificationContent(notice({ type: 'budget.exhausted', app: null, uid: null, blocked: true }), { markup: false, tz: UTC });
    assert.equal(uplink.summary, 'cellular is blocked: its budget is used up');
    const again = budgetNotificationContent(notice({ type: 'budget.restored', usedBytes: 0, limitBytes: 20_000_000, periodEnd: '2027-01-05T00:00:00.000Z' }), { markup: false, tz: UTC });
    assert.deepEqual(again, {
      summary: 'org.example.Chat has room again on cellular', body: '0 B of 20.0 MB used (budget b-1).\nResets 2027-01-05 00:00.', urgency: URGENCY.low, expireMs: -1,
    });
    assert.equal(budgetNotificationContent(notice({ type: 'budget.restored', app: null, uid: null }), { markup: false }).summary, 'cellular has room again');
    const odd = budgetNotificationContent(notice({ type: 'budget.exhausted', blocked: true, app: 'a<b>' }), { markup: true, tz: UTC });
    assert.equal(odd.summary, 'a<b> is blocked on cellular', 'the summary is never markup');
    assert.doesNotMatch(odd.body, /[<>]/);
  });

  test('the session bus address: given, else the environment, else none', () => {
    assert.equal(sessionBusAddress('unix:path=/x', { DBUS_SESSION_BUS_ADDRESS: 'unix:path=/y' }), 'unix:path=/x');
    assert.equal(sessionBusAddress(undefined, { DBUS_SESSION_BUS_ADDRESS: 'unix:path=/y' }), 'unix:path=/y');
    assert.equal(sessionBusAddress(undefined, { XDG_RUNTIME_DIR: '/nonexistent-waymark' }), undefined);
  });
});

describe('notification agent on a private bus', () => {
  let bus: PrivateBus;
  before(async () => { bus = await startPrivateBus(); });
  after(async () => { await bus?.close(); });

  /** Starts a server, an agent with a fake source; stops both at the end of the test. */
  async function world(t: { after(fn: () => Promise<void> | void): void }, caps?: readonly string[]): Promise<{
    server: NotificationServer; source: FakeSource; budgets: FakeBudgets; agent: NotificationAgent; client: MessageBus; log: ReturnType<typeof recordingLog>;
  }> {
    const server = await NotificationServer.start(bus.address, caps ? { capabilities: caps } : {});
    t.after(async () => { await server.close(); });
    const client = await connectBus(bus.address);
    t.after(() => client.close());
    const source = new FakeSource();
    const log = recordingLog();
    const budgets = new FakeBudgets();
    const agent = await runNotificationAgent(source, client, log, { budgets, budgetWords: { tz: UTC } });
    t.after(() => agent.close());
    return { server, source, budgets, agent, client, log };
  }

  test('a prompt becomes a notification; a button answers it', async (t) => {
    const { server, source } = await world(t);
    const p = prompt();
    source.ask(p);
    const n = await server.notified.take('Notify');
    assert.equal(n.appName, APP_NAME);
    assert.equal(n.summary, 'chat wants the Internet');
    assert.match(n.body, /example\.com \(93\.184\.216\.34:443 tcp\)/);
    assert.match(n.body, /cellular \(cellular, up\): 0\.02 EUR\/MB, metered, roaming/);
    assert.deepEqual(n.actions.map(([k]) => k), ['use:wifi', 'use:cellular', 'deny']);
    assert.equal(n.hints.get('urgency')?.signature, 'y');
    assert.equal(n.hints.get('urgency')?.value, URGENCY.critical);
    assert.equal(n.hints.get('x-waymark-prompt')?.value, p.id);
    assert.ok(n.expireTimeout > 25_000 && n.expireTimeout <= 30_000, `expire_timeout ${n.expireTimeout} from expiresAt`);

    server.invokeAction(n.id, 'use:cellular');
    const a = await source.answers.take('answer');
    assert.deepEqual(a, { id: p.id, answer: { choice: { uplink: 'cellular' }, scope: 'always' } });
  });

  test('deny answers deny, this time', async (t) => {
    const { server, source } = await world(t);
    const p = prompt();
    source.ask(p);
    const n = await server.notified.take('Notify');
    server.invokeAction(n.id, 'deny');
    assert.deepEqual(await source.answers.take('answer'), { id: p.id, answer: { choice: { deny: true }, scope: 'once' } });
  });

  test('a prompt closed at the source closes its notification', async (t) => {
    const { server, source, agent } = await world(t);
    const p = prompt();
    const up = shown(agent, p.id);
    source.ask(p);
    const n = await server.notified.take('Notify');
    assert.equal(await up, n.id);
    assert.equal(agent.notificationOf(p.id), n.id);
    source.close(p.id, { by: 'agent', uid: 1000, answer: { choice: { deny: true }, scope: 'once' } });
    assert.equal(await server.closeCalls.take('CloseNotification'), n.id);
    assert.equal(agent.notificationOf(p.id), undefined);
  });

  test('a dismissed notification answers nothing; its prompt closing later closes nothing', async (t) => {
    const { server, source, agent } = await world(t);
    const p = prompt();
    const up = shown(agent, p.id);
    source.ask(p);
    const first = await server.notified.take('Notify');
    await up;
    const gone = hidden(agent, p.id);
    server.dismiss(first.id);
    assert.equal(await gone, 'dismissed');
    assert.equal(agent.notificationOf(p.id), undefined);
    source.close(p.id);
    // The next CloseNotification the server gets is the second prompt's, not one for the first.
    const q = prompt();
    source.ask(q);
    const second = await server.notified.take('Notify of the second prompt');
    source.close(q.id);
    assert.equal(await server.closeCalls.take('CloseNotification'), second.id);
    assert.equal(source.answers.all.length, 0);
  });

  test('signals from another connection than the server are not answers', async (t) => {
    const { server, source } = await world(t);
    const p = prompt();
    source.ask(p);
    const n = await server.notified.take('Notify');
    const forger = await connectBus(bus.address);
    t.after(() => forger.close());
    forger.emit(NOTIFICATIONS.path, NOTIFICATIONS.interface, 'ActionInvoked', 'us', [n.id, 'use:wifi']);
    // A round trip through the bus: the forged signal is queued to the agent before this returns.
    await forger.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'GetId' });
    server.invokeAction(n.id, 'deny');
    const a = await source.answers.take('answer');
    assert.deepEqual(a.answer.choice, { deny: true }, 'the forged use:wifi was ignored');
    assert.equal(source.answers.all.length, 1);
  });

  test('without the actions capability the notification only informs', async (t) => {
    const { server, source } = await world(t, ['body']);
    source.ask(prompt());
    const n = await server.notified.take('Notify');
    assert.deepEqual(n.actions, []);
    assert.match(n.body, /waymark agent/);
  });

  test('a server that restarts shows the open prompts again', async (t) => {
    const { server, source, agent } = await world(t);
    const p = prompt();
    const shownP = shown(agent, p.id);
    source.ask(p);
    await shownP;
    await server.close();
    const successor = await NotificationServer.start(bus.address);
    t.after(async () => { await successor.close(); });
    const again = await successor.notified.take('Notify at the new server');
    assert.equal(again.hints.get('x-waymark-prompt')?.value, p.id);
    successor.invokeAction(again.id, 'use:wifi');
    assert.deepEqual((await source.answers.take('answer')).answer.choice, { uplink: 'wifi' });
    assert.equal(agent.notificationOf(p.id), undefined);
  });

  test('a budget\'s warning, exhaustion and room again are one notification, each replacing the one before; no buttons', async (t) => {
    const { server, budgets, agent } = await world(t);
    budgets.publish(notice());
    const warned = await server.notified.take('Notify of the warning');
    assert.equal(warned.appName, APP_NAME);
    assert.equal(warned.replacesId, 0);
    assert.equal(warned.summary, 'org.example.Chat has used 80 % of its budget on cellular');
    assert.equal(warned.body, '8.00 MB of 10.0 MB used (budget b-1).\nResets 2026-12-05 00:00.');
    assert.deepEqual(warned.actions, []);
    assert.equal(warned.hints.get('urgency')?.signature, 'y');
    assert.equal(warned.hints.get('urgency')?.value, URGENCY.normal);
    assert.equal(warned.hints.get('x-waymark-budget')?.value, 'b-1');
    assert.equal(warned.expireTimeout, -1);

    // The exhaustion replaces the warning: one notification, now critical.
    const up = new Promise<number>((resolve) => agent.events.once('budgetShown', (_b, n) => resolve(n)));
    budgets.publish(notice({ type: 'budget.exhausted', usedBytes: 10_000_000, blocked: true }));
    const exhausted = await server.notified.take('Notify of the exhaustion');
    assert.equal(exhausted.replacesId, warned.id);
    assert.equal(exhausted.id, warned.id);
    assert.equal(exhausted.summary, 'org.example.Chat is blocked on cellular');
    assert.equal(exhausted.hints.get('urgency')?.value, URGENCY.critical);
    assert.equal(await within(up, 'budgetShown'), warned.id);
    assert.equal(agent.notificationOfBudget('b-1'), warned.id);

    // Another budget has its own.
    budgets.publish(notice({ id: 'cell', app: null, uid: null }));
    const other = await server.notified.take('Notify of another budget');
    assert.equal(other.replacesId, 0);
    assert.notEqual(other.id, warned.id);

    // Room again: a low-urgency notice in the exhaustion's place.
    budgets.publish(notice({ type: 'budget.restored', usedBytes: 0, limitBytes: 20_000_000 }));
    const again = await server.notified.take('Notify of room again');
    assert.equal(again.replacesId, warned.id);
    assert.equal(again.summary, 'org.example.Chat has room again on cellular');
    assert.equal(again.hints.get('urgency')?.value, URGENCY.low);
    assert.deepEqual([...server.showing.keys()].sort(), [warned.id, other.id].sort(), 'two on screen: one per budget');
    assert.equal(server.closeCalls.all.length, 0);
  });

  test('a budget\'s events in quick succession replace each other in order; once dismissed, the next is a new one', async (t) => {
    const { server, budgets, agent } = await world(t);
    const up = new Arrivals<number>();
    agent.events.on('budgetShown', (_b, n) => up.push(n));
    // Both before the first Notify's reply: the second waits for the first's id.
    budgets.publish(notice());
    budgets.publish(notice({ type: 'budget.exhausted', usedBytes: 10_000_000, blocked: true }));
    const first = await server.notified.take('Notify of the warning');
    const second = await server.notified.take('Notify of the exhaustion');
    assert.equal(second.replacesId, first.id);
    assert.equal(second.hints.get('urgency')?.value, URGENCY.critical);
    assert.equal(server.showing.size, 1);
    assert.equal(await up.take('the warning shown'), first.id);
    assert.equal(await up.take('the exhaustion shown'), first.id);

    const gone = within(new Promise<[string, number]>((resolve) => agent.events.once('budgetHidden', (b, n) => resolve([b, n]))), 'budgetHidden');
    server.dismiss(first.id);
    assert.deepEqual(await gone, ['b-1', first.id]);
    assert.equal(agent.notificationOfBudget('b-1'), undefined);
    budgets.publish(notice({ type: 'budget.restored', usedBytes: 0 }));
    const third = await server.notified.take('Notify of room again');
    assert.equal(third.replacesId, 0, 'a dismissed notice is not replaced: a new one');
  });

  test('closing the agent closes what it shows and unsubscribes', async (t) => {
    const { server, source, budgets, agent } = await world(t);
    source.ask(prompt());
    // Closed while its Notify may still be under way: close() waits for it and closes it too.
    const n = await server.notified.take('Notify');
    await agent.close();
    assert.equal(await server.closeCalls.take('CloseNotification'), n.id);
    assert.equal(source.listeners, 0);
    assert.equal(budgets.count, 0);
    assert.equal(await within(agent.done, 'done'), 'closed');
  });

  test('no notification server on the bus: the agent does not start', async () => {
    const client = await connectBus(bus.address);
    try {
      const source = new FakeSource();
      await assert.rejects(runNotificationAgent(source, client, recordingLog()), NotificationsUnavailable);
      assert.equal(source.listeners, 0);
    } finally {
      client.close();
    }
  });

  test('startNotificationAgent: on the given bus; done when closed', async (t) => {
    const server = await NotificationServer.start(bus.address);
    t.after(async () => { await server.close(); });
    const source = new FakeSource();
    const handle = await startNotificationAgent(source, { busAddress: bus.address });
    source.ask(prompt());
    const n = await server.notified.take('Notify');
    await handle.close();
    assert.equal(await server.closeCalls.take('CloseNotification'), n.id);
    assert.equal(await within(handle.done, 'done'), 'closed');
    await assert.rejects(startNotificationAgent(source, { busAddress: `unix:path=${bus.dir}/nothing-here` }), /cannot connect/);
  });

  test('the test server is a D-Bus service to an independent client (libdbus dbus-send)', async (t) => {
    const server = await NotificationServer.start(bus.address);
    t.after(async () => { await server.close(); });
    // --session with the address in the environment: dbus-send --address does not say Hello.
    const { stdout } = await within(promisify(execFile)('dbus-send', [
      '--session', '--print-reply', `--dest=${NOTIFICATIONS.name}`, NOTIFICATIONS.path, `${NOTIFICATIONS.interface}.GetCapabilities`,
    ], { env: { ...process.env, DBUS_SESSION_BUS_ADDRESS: bus.address } }), 'dbus-send');
    assert.match(stdout, /string "actions"/);
    assert.match(stdout, /string "body"/);
  });
});

describe('notification agent when the bus goes', () => {
  test('the agent is done, with why, when its bus dies', async () => {
    const own = await startPrivateBus();
    try {
      const server = await NotificationServer.start(own.address);
      const source = new FakeSource();
      const handle = await startNotificationAgent(source, { busAddress: own.address });
      await own.close();
      assert.match(await within(handle.done, 'done after the bus died'), /closed the connection|ECONNRESET|EPIPE/);
      assert.equal(source.listeners, 0, 'unsubscribed from the source');
      await handle.close();
      await server.close();
    } finally {
      await own.close();
    }
  });
});
