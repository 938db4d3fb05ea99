/**
 * The agent protocol (agent.register, prompt.answer, prompts; the `prompt` topic) against a real
 * ControlServer and PromptBroker in this process, and `waymark agent` on a pseudo-terminal
 * (test/support/pty.ts) as other users: it shows a prompt, takes single keys, says when another
 * agent answered or the prompt timed out, and never sees another user's prompt. Every step waits
 * for what the agent showed or the broker resolved; the timers are only guards.
 */
import { after, before, describe, it } from 'node:test';
import { placeholderHandlers } from '../support/fakes.js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import os from 'node:os';
import path from 'node:path';

import { budgetLine, localMinute, usedPercent } from '../../src/agent/budget-words.js';
import { AnswerKeys, formatPrompt, keysOf, type KeyResult } from '../../src/cli/agent.js';
import { agentHandlers } from '../../src/daemon/agents.js';
import { Client, DaemonError } from '../../src/daemon/client.js';
import { EventBus, TOPICS, type BudgetChanged, type DaemonEvent } from '../../src/daemon/events.js';
import type { Logger } from '../../src/daemon/log.js';
import type { Handlers, HelloResult } from '../../src/daemon/protocol.js';
import { PromptBroker, type AskRequest } from '../../src/daemon/prompts.js';
import { ControlServer } from '../../src/daemon/server.js';
import type { Prompt } from '../../src/prompt/prompt.js';
import { publicRoot } from '../../src/lab/public.js';
import { PACKAGE_ROOT } from '../../src/version.js';
import { PtyProcess } from '../support/pty.js';
import { isRoot } from '../support/uidclient.js';

const CLI = path.join(PACKAGE_ROOT, 'dist/src/cli/main.js');
const quiet: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
const GUARD = { timeout: 60_000 };
const ALICE = 4251;
const BOB = 4252;
const ME = process.getuid?.() ?? 0;

function request(uid: number, key: string, o: { timeoutMs?: number; name?: string } = {}): AskRequest {
  return {
    key, timeoutMs: o.timeoutMs ?? 60_000,
    app: { uid, pid: 4321, name: o.name ?? 'chat', exe: '/usr/bin/chat', unit: 'app-gnome-org.example.Chat-7.scope', app: 'org.example.Chat', flatpakId: null },
    target: { destination: 'internet', address: '198.51.100.7', port: 443, proto: 'tcp', host: 'chat.example.org' },
    needs: ['low-latency'],
    choices: [
      { uplink: 'wifi', kind: 'wifi', status: 'active', cost: { perMB: 0, perMinute: 0, currency: 'EUR' }, metered: false, roaming: false },
      { uplink: 'cellular', kind: 'cellular', status: 'active', cost: { perMB: 0.01, perMinute: 0, currency: 'EUR' }, metered: true, roaming: true },
      { uplink: 'dialup', kind: 'dialup', status: 'down', cost: { perMB: 0.05, perMinute: 0.1, currency: 'EUR' }, metered: true, roaming: false },
    ],
    default: { kind: 'use', uplinks: ['wifi'] },
    rule: 'ask-chat',
    held: true,
  };
}

const prompt = (r: AskRequest, id = 'p-1', expiresAt = '2026-01-01T00:00:30.000Z'): Prompt => ({
  id, app: r.app, target: r.target, needs: r.needs, choices: r.choices, default: r.default, rule: r.rule, expiresAt, held: r.held,
});

/** A budget event as the accounting service publishes it (src/accounting/service.ts: tell). */
const budget = (over: Partial<BudgetChanged> = {}): BudgetChanged => ({
  type: 'budget.warning', id: 'b-1', uplink: 'cellular', app: 'org.example.Chat', uid: 1000,
  usedBytes: 8_000_000, limitBytes: 10_000_000, blocked: false, periodEnd: '2026-12-05T00:00:00.000Z', ...over,
});

/** A control server on a fresh socket with the broker's handlers; `closes` resolves as agents' connections are done. */
async function controlServer(dir: string, name: string): Promise<{ sock: string; broker: PromptBroker; bus: EventBus; server: ControlServer; agentGone: () => Promise<void> }> {
  const sock = path.join(dir, name);
  const bus = new EventBus();
  const broker = new PromptBroker({ publish: (e) => bus.publish(e) });
  const agents = agentHandlers(broker);
  const gone: (() => void)[] = [];
  const placeholder = <T>(x: object): Promise<T> => Promise.resolve(x as T);
  const handlers: Handlers = {
    ...placeholderHandlers(),
    hello: () => Promise.resolve<HelloResult>({ daemon: 'waymarkd', version: 't', protocol: 2, protocols: [1, 2], methods: [], topics: [...TOPICS] }),
    status: () => placeholder({}),
    'events.subscribe': (p, _cred, ctx) => Promise.resolve(ctx.subscribe(p.topics)),
    ...agents,
    // Tells the test when an agent's close hook (its unregistration) has run.
    'agent.register': (p, cred, ctx) => agents['agent.register'](p, cred, { ...ctx, onClose: (cb) => ctx.onClose(() => { cb(); gone.shift()?.(); }) }),
  };
  const server = new ControlServer(sock, handlers, quiet, { events: bus });
  await server.listen();
  return { sock, broker, bus, server, agentGone: () => new Promise((resolve) => gone.push(resolve)) };
}

describe('the terminal agent\'s words and keys', () => {
  const p = prompt(request(1000, 'k'));

  it('shows the app, the destination, each uplink numbered with its cost, metered and roaming, and the default with the seconds left', () => {
    const text = formatPrompt(p, Date.parse('2026-01-01T00:00:02.500Z')).join('\n');
    assert.match(text, /^Prompt p-1: chat wants to reach the Internet$/m);
    assert.match(text, /^ {2}app {6}chat \(uid 1000, pid 4321\)$/m);
    assert.match(text, /exe \/usr\/bin\/chat · unit app-gnome-org\.example\.Chat-7\.scope · app org\.example\.Chat/);
    assert.match(text, /^ {2}to {7}chat\.example\.org → 198\.51\.100\.7 port 443\/tcp \(destination internet\)$/m);
    assert.match(text, /^ {2}needs {4}low-latency$/m);
    assert.match(text, /^ {4}1 {2}wifi {5}.*free · unmetered$/m);
    assert.match(text, /^ {4}2 {2}cellular .*0\.01 EUR\/MB · metered · roaming$/m);
    assert.match(text, /^ {4}3 {2}dialup .*down +0\.05 EUR\/MB \+ 0\.1 EUR\/min · metered$/m);
    assert.match(text, /^ {4}d {2}deny$/m);
    assert.match(text, /^ {2}default {2}use wifi, in 28 s without an answer$/m);
  });

  it('turns keys into answers: an uplink or deny, then the scope; Enter once, m minutes, * all destinations, Esc back or leave', () => {
    const run = (keys: string[]): KeyResult[] => {
      const k = new AnswerKeys(p);
      return keys.map((x) => k.key(x));
    };
    const last = (keys: string[]): KeyResult | undefined => run(keys).at(-1);
    assert.deepEqual(last(['1', 'a']), { kind: 'answer', answer: { choice: { uplink: 'wifi' }, scope: 'always' } });
    assert.deepEqual(last(['d', 'o']), { kind: 'answer', answer: { choice: { deny: true }, scope: 'once' } });
    assert.deepEqual(last(['2', 'enter']), { kind: 'answer', answer: { choice: { uplink: 'cellular' }, scope: 'once' } });
    assert.deepEqual(last(['3', 'x']), { kind: 'answer', answer: { choice: { uplink: 'dialup' }, scope: 'app' } });
    assert.deepEqual(last(['*', '2', 'm', '3', '0', 'enter']), { kind: 'answer', answer: { choice: { uplink: 'cellular' }, scope: 'minutes', minutes: 30, allDestinations: true } });
    assert.deepEqual(last(['1', 'm', 'enter']), { kind: 'answer', answer: { choice: { uplink: 'wifi' }, scope: 'minutes', minutes: 10 } });
    assert.deepEqual(last(['1', 'm', '0', 'enter']), { kind: 'say', text: 'minutes: 1 to 1440' });
    assert.deepEqual(last(['1', 'escape', 'd', 'a']), { kind: 'answer', answer: { choice: { deny: true }, scope: 'always' } });
    assert.deepEqual(run(['4', '0', 'enter', 'z']).map((r) => r.kind), ['none', 'none', 'none', 'none'], 'no such uplink; Enter picks nothing');
    assert.deepEqual(last(['escape']), { kind: 'leave' });
    assert.deepEqual(last(['1', 'q']), { kind: 'quit' });
    assert.deepEqual(last(['interrupt']), { kind: 'quit' });
    const k = new AnswerKeys(p);
    k.key('1');
    k.key('a');
    assert.equal(k.answered, true);
    assert.deepEqual(k.key('d'), { kind: 'none' }, 'nothing after the answer is made');
    assert.deepEqual(keysOf('\x1b'), ['escape']);
    assert.deepEqual(keysOf('\x1b[A'), [], 'an arrow key is no key');
    assert.deepEqual(keysOf('2 m 3\r\x03\x7f'), ['2', 'm', '3', 'enter', 'interrupt', 'backspace']);
  });

  it('says a budget event in one line: use of the limit, percent, when it resets (local time), blocked or not, room again', () => {
    const utc = (): number => 0;
    assert.equal(budgetLine(budget(), { tz: utc }),
      'budget b-1: org.example.Chat has used 8.00 MB of 10.0 MB on cellular (80 %); resets 2026-12-05 00:00');
    assert.equal(budgetLine(budget({ type: 'budget.exhausted', usedBytes: 10_000_400, blocked: true }), { tz: utc }),
      'budget b-1 exhausted: org.example.Chat has used 10.0 MB of 10.0 MB on cellular; blocked on cellular until 2026-12-05 00:00');
    assert.equal(budgetLine(budget({ type: 'budget.exhausted', usedBytes: 10_000_000 }), { tz: utc }),
      'budget b-1 exhausted: org.example.Chat has used 10.0 MB of 10.0 MB on cellular; not blocked (the budget only warns); resets 2026-12-05 00:00');
    assert.equal(budgetLine(budget({ type: 'budget.restored', usedBytes: 2_000_000, limitBytes: 20_000_000 }), { tz: utc }),
      'budget b-1: org.example.Chat has room again on cellular (2.00 MB of 20.0 MB used); resets 2026-12-05 00:00');
    // The whole uplink's budget; another user's, as root's agent sees it; a local time zone.
    assert.equal(budgetLine(budget({ id: 'cell', app: null, uid: null, usedBytes: 1_600_000_000, limitBytes: 2_000_000_000 }), { tz: () => -300 }),
      'budget cell: all traffic on cellular has used 1.60 GB of 2.00 GB (80 %); resets 2026-12-04 19:00');
    assert.match(budgetLine(budget(), { viewer: 0 }), /^budget b-1: org\.example\.Chat \(uid 1000\) has used/);
    assert.match(budgetLine(budget(), { viewer: 1000 }), /^budget b-1: org\.example\.Chat has used/);
    assert.equal(usedPercent({ usedBytes: 9_999_999, limitBytes: 10_000_000 }), 99, 'rounded down: not 100 % before exhausted');
    assert.equal(usedPercent({ usedBytes: 5, limitBytes: 0 }), undefined);
    assert.equal(localMinute('2026-03-29T01:30:00.000Z', () => 120), '2026-03-29 03:30');
  });
});

describe('the agent protocol on the control socket', () => {
  let dir: string;
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'wm-agent-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('registers agents, lists the open prompts to one started late, takes the first answer, and unregisters an agent with its connection', GUARD, async () => {
    const { sock, broker, bus, server, agentGone } = await controlServer(dir, 'proto.sock');
    const uid = ME;
    const a = new Client(sock);
    const b = new Client(sock);
    try {
      const eventsA: DaemonEvent[] = [];
      let wakeA: () => void = () => undefined;
      a.listen((e) => { eventsA.push(e); wakeA(); });
      const nextA = async (type: string): Promise<DaemonEvent> => {
        for (;;) {
          const i = eventsA.findIndex((e) => e.type === type);
          if (i >= 0) return eventsA.splice(i, 1)[0] as DaemonEvent;
          await new Promise<void>((r) => (wakeA = r));
        }
      };
      const reg = await a.call('agent.register', { name: 'test agent' });
      assert.deepEqual({ prompts: reg.prompts, queued: reg.queued, topics: reg.topics, name: reg.agent.name, uid: reg.agent.uid }, { prompts: [], queued: 0, topics: ['prompt', 'budget'], name: 'test agent', uid });
      assert.deepEqual((await a.call('agent.register', {})).agent, reg.agent, 'again on one connection: the same agent');
      assert.equal(broker.stats.agents, 1);
      // events.subscribe later keeps the agent's topics.
      assert.deepEqual((await a.call('events.subscribe', { topics: ['uplink'] })).topics, ['uplink', 'prompt', 'budget']);
      // A budget event of its uid reaches the agent.
      bus.publish(budget({ uid }));
      const warned = await nextA('budget.warning');
      assert.ok(warned.type === 'budget.warning');
      assert.deepEqual({ id: warned.id, uid: warned.uid, usedBytes: warned.usedBytes }, { id: 'b-1', uid, usedBytes: 8_000_000 });

      const outcome = broker.ask(request(uid, 'chat|internet'));
      const asked = await nextA('prompt.asked');
      assert.ok(asked.type === 'prompt.asked');
      assert.equal(asked.prompt.id, 'p-1');

      const late = await b.call('agent.register', { name: 'late' });
      assert.deepEqual(late.prompts.map((p) => p.id), ['p-1'], 'an agent started late sees the open prompt');
      assert.deepEqual((await b.call('prompts')).agents.map((x) => x.name).sort(), ['late', 'test agent']);

      await assert.rejects(b.call('prompt.answer', { id: 'p-1', choice: { uplink: 'mms' }, scope: 'once' }), (e: unknown) => e instanceof DaemonError && e.code === 'EINVAL');
      await assert.rejects(b.call('prompt.answer', { id: 'p-1', choice: { uplink: 'wifi' }, scope: 'minutes' }), (e: unknown) => e instanceof DaemonError && e.code === 'EINVAL');
      const r = await b.call('prompt.answer', { id: 'p-1', choice: { uplink: 'cellular' }, scope: 'minutes', minutes: 5 });
      const expected = { by: 'agent', uid, answer: { choice: { uplink: 'cellular' }, scope: 'minutes', minutes: 5 } };
      assert.deepEqual(r, { id: 'p-1', outcome: expected });
      assert.deepEqual(await outcome, expected);
      await assert.rejects(a.call('prompt.answer', { id: 'p-1', choice: { uplink: 'wifi' }, scope: 'once' }), (e: unknown) => e instanceof DaemonError && e.code === 'ENOENT');
      const closed = await nextA('prompt.closed');
      assert.ok(closed.type === 'prompt.closed');
      assert.deepEqual(closed.outcome, expected);

      const pending = broker.ask(request(uid, 'second'));
      const goneA = agentGone();
      a.close();
      await goneA;
      assert.equal(broker.stats.agents, 1, 'the late agent is left');
      const goneB = agentGone();
      b.close();
      await goneB;
      assert.deepEqual(await pending, { by: 'no-agent' }, 'with the last agent gone, the default at once');
      assert.deepEqual(await broker.ask(request(uid, 'third')), { by: 'no-agent' });
    } finally {
      a.close();
      b.close();
      await server.close();
    }
  });
});

describe('waymark agent on a terminal', { skip: !isRoot && 'needs root (the agents run as other uids)' }, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'wm-agent-pty-'));
    chmodSync(dir, 0o755); // the agents of other uids must reach the socket
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('shows a prompt, answers with single keys, says when another agent answered or it timed out; another user\'s agent never sees it; exits on Ctrl-C (0) and when the daemon goes (69)', GUARD, async () => {
    const { sock, broker, bus, server } = await controlServer(dir, 'pty.sock');
    // Other users run the CLI from a copy they can read (a clone in a 0700 directory is out of their reach).
    const agent = (uid: number): PtyProcess => new PtyProcess([process.execPath, path.join(publicRoot(), 'dist/src/cli/main.js'), '--socket', sock, 'agent'], { uid, env: { TZ: 'UTC' } });
    const alice = agent(ALICE);
    let bob: PtyProcess | undefined;
    try {
      await alice.waitFor(`waiting for prompts of uid ${ALICE}`);

      // 1 then a: wifi, always.
      const first = broker.ask(request(ALICE, 'chat|internet'));
      let at = await alice.waitFor('Prompt p-1: chat wants to reach the Internet');
      at = await alice.waitFor('[1-3] uplink, d deny', at);
      assert.match(alice.screen, /2 {2}cellular .*0\.01 EUR\/MB · metered · roaming/);
      assert.match(alice.screen, /default {2}use wifi, in \d+ s without an answer/);
      // A budget event while the prompt is shown: its line, then the prompt's last line again.
      bus.publish(budget({ type: 'budget.exhausted', uid: ALICE, usedBytes: 10_000_000, blocked: true }));
      at = await alice.waitFor('budget b-1 exhausted: org.example.Chat has used 10.0 MB of 10.0 MB on cellular; blocked on cellular until 2026-12-05 00:00', at);
      at = await alice.waitFor('[1-3] uplink, d deny', at);
      alice.send('1');
      at = await alice.waitFor('wifi: o this connection', at);
      alice.send('a');
      assert.deepEqual(await first, { by: 'agent', uid: ALICE, answer: { choice: { uplink: 'wifi' }, scope: 'always' } });
      at = await alice.waitFor('p-1: answered: wifi, always', at);

      // d then o: deny, this connection.
      const second = broker.ask(request(ALICE, 'chat|mms'));
      at = await alice.waitFor('Prompt p-2', at);
      alice.send('d');
      at = await alice.waitFor('deny: o this connection', at);
      alice.send('o');
      assert.deepEqual(await second, { by: 'agent', uid: ALICE, answer: { choice: { deny: true }, scope: 'once' } });
      at = await alice.waitFor('p-2: answered: deny, this connection', at);

      // Answered elsewhere (root), then a timeout: said, and on to the next.
      const third = broker.ask(request(ALICE, 'three'));
      at = await alice.waitFor('Prompt p-3', at);
      broker.answer('p-3', 0, { choice: { uplink: 'cellular' }, scope: 'minutes', minutes: 5 });
      at = await alice.waitFor('p-3: answered by another agent (uid 0): cellular, for 5 minutes', at);
      assert.equal((await third).by, 'agent');
      const fourth = broker.ask(request(ALICE, 'four', { timeoutMs: 1000 }));
      at = await alice.waitFor('Prompt p-4', at);
      assert.deepEqual(await fourth, { by: 'timeout' });
      at = await alice.waitFor('p-4: timed out; the default applies (use wifi)', at);

      // Esc: left to other agents (root answers it here); the agent says nothing more of it.
      const left = broker.ask(request(ALICE, 'left'));
      at = await alice.waitFor('Prompt p-5', at);
      alice.send('\x1b');
      at = await alice.waitFor('p-5: left to other agents and its timeout', at);
      broker.answer('p-5', 0, { choice: { deny: true }, scope: 'once' });
      assert.equal((await left).by, 'agent');

      // Bob's agent: Alice's next prompt is not his; his own is.
      bob = agent(BOB);
      await bob.waitFor(`waiting for prompts of uid ${BOB}`);
      const alices = broker.ask(request(ALICE, 'six'));
      await alice.waitFor('Prompt p-6', at);
      bus.publish(budget({ id: 'alices', uid: ALICE }));
      await alice.waitFor('budget alices: org.example.Chat has used 8.00 MB of 10.0 MB on cellular (80 %)', at);
      const bobs = broker.ask(request(BOB, 'mail', { name: 'mail' }));
      await bob.waitFor('Prompt p-7: mail wants to reach the Internet');
      // Events reach a connection in order: had Bob's agent got p-6, it would have shown it first.
      assert.deepEqual(bob.screen.match(/Prompt p-\d+/g), ['Prompt p-7'], 'Bob\'s agent was shown only his own prompt');
      assert.doesNotMatch(bob.screen, /budget alices/, 'nor Alice\'s budget');
      assert.doesNotMatch(alice.screen, /p-5: answered/, 'a prompt left is not spoken of again');

      // Ctrl-C: Bob's agent ends (0); his prompt has no agent left.
      bob.send('\x03');
      assert.equal((await bob.exited).code, 0, bob.screen);
      assert.deepEqual(await bobs, { by: 'no-agent' });

      // The daemon goes: Alice's agent says so and exits 69.
      await server.close();
      assert.equal((await alice.exited).code, 69, alice.screen);
      assert.match(alice.screen, /waymark: waymarkd closed the connection; no more prompts/);
      assert.deepEqual(await alices, { by: 'no-agent' });
    } finally {
      await alice.stop();
      await bob?.stop();
      await server.close();
    }
  });

});

describe('waymark agent without a terminal', () => {
  let dir: string;
  before(() => { dir = mkdtempSync(path.join(os.tmpdir(), 'wm-agent-lines-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('without a terminal takes one answer per input line ("2 m 30"), shows the outcome, and exits at the end of its input', GUARD, async () => {
    const { sock, broker, bus, server } = await controlServer(dir, 'lines.sock');
    const child = spawn(process.execPath, [CLI, '--socket', sock, 'agent'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TZ: 'UTC' } });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
    const registered = new Promise<void>((resolve) => child.stderr.setEncoding('utf8').on('data', (d: string) => {
      err += d;
      if (err.includes('waiting for prompts')) resolve();
    }));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      child.stdin.end('zz\n2 m 30\n');
      await registered;
      // Before the prompt on the same connection: printed before the agent ends.
      bus.publish(budget({ type: 'budget.restored', uid: ME, usedBytes: 0 }));
      const outcome = await broker.ask(request(ME, 'lines'));
      assert.deepEqual(outcome, { by: 'agent', uid: ME, answer: { choice: { uplink: 'cellular' }, scope: 'minutes', minutes: 30 } });
      assert.equal(await exited, 0, err);
      assert.match(out, /^Prompt p-1: chat wants to reach the Internet$/m);
      assert.match(out, /p-1: no answer in "zz"/);
      assert.match(out, /^p-1: answered: cellular, for 30 minutes$/m);
      assert.match(out, /^budget b-1: org\.example\.Chat has room again on cellular \(0 B of 10\.0 MB used\); resets 2026-12-05 00:00\n/m);
    } finally {
      child.kill('SIGKILL');
      await server.close();
    }
  });

  it('--json: prints the registration and the events as JSON lines, takes answers as JSON lines, reports each reply', GUARD, async () => {
    const { sock, broker, bus, server } = await controlServer(dir, 'json.sock');
    const child = spawn(process.execPath, [CLI, '--socket', sock, 'agent', '--json'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const lines: { type: string; [k: string]: unknown }[] = [];
    const waiters = new Set<() => void>();
    createInterface({ input: child.stdout }).on('line', (l) => {
      lines.push(JSON.parse(l) as { type: string });
      for (const w of [...waiters]) w();
    });
    const line = (type: string): Promise<{ type: string; [k: string]: unknown }> => new Promise((resolve) => {
      const check = (): void => {
        const got = lines.find((x) => x.type === type);
        if (got) {
          waiters.delete(check);
          resolve(got);
        }
      };
      waiters.add(check);
      check();
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      await line('agent.registered');
      bus.publish(budget({ uid: ME }));
      const warned = await line('budget.warning');
      assert.equal(typeof warned['seq'], 'number');
      assert.deepEqual({ ...warned, seq: 0, at: '' }, { ...budget({ uid: ME }), seq: 0, at: '' }, 'the event as it came');
      const outcome = broker.ask(request(ME, 'json'));
      const asked = await line('prompt.asked');
      assert.deepEqual((asked['prompt'] as Prompt | undefined)?.id, 'p-1');
      child.stdin.write('{"id":"p-1","choice":{"uplink":"nope"},"scope":"once"}\n');
      const refused = await line('answer.error');
      assert.equal(refused['code'], 'EINVAL');
      child.stdin.end('{"id":"p-1","choice":{"uplink":"wifi"},"scope":"app"}\n');
      const expected = { by: 'agent', uid: ME, answer: { choice: { uplink: 'wifi' }, scope: 'app' } };
      assert.deepEqual(await outcome, expected);
      assert.deepEqual((await line('answer.ok'))['outcome'], expected);
      assert.deepEqual((await line('prompt.closed'))['outcome'], expected);
      assert.equal(await exited, 0);
    } finally {
      child.kill('SIGKILL');
      await server.close();
    }
  });
});
