/**
 * `waymark agent --notify`: the daemon's prompts as desktop notifications (src/agent/
 * notifications.ts, docs/notifications.md), through the same agent protocol as the terminal
 * agent: `agent.register` (the prompts open now, then `prompt.asked` / `prompt.closed` events)
 * and `prompt.answer`; and the budget events the registration brings (`budget.warning`,
 * `budget.exhausted`, `budget.restored`) as notices. Exits 0 on SIGINT/SIGTERM, 69 when waymarkd is not there or goes, or
 * when there is no notification server on the session bus.
 */
import { Client, DaemonUnavailable } from '../daemon/client.js';
import type { DaemonEvent } from '../daemon/events.js';
import type { BudgetNotice } from '../agent/budget-words.js';
import { NotificationsUnavailable, startNotificationAgent, type BudgetSource, type PromptSource } from '../agent/notifications.js';
import type { Prompt, PromptAnswer, PromptOutcome } from '../prompt/prompt.js';
import { errorMessage } from '../errors.js';

const EXIT_UNAVAILABLE = 69;

/** The agent protocol as a PromptSource: what the notification agent shows and answers. */
class DaemonPrompts implements PromptSource {
  private readonly asked = new Set<(p: Prompt) => void>();
  private readonly closed = new Set<(id: string, o: PromptOutcome) => void>();
  private readonly open = new Map<string, Prompt>();

  constructor(private readonly client: Client) {}

  event(e: DaemonEvent): void {
    if (e.type === 'prompt.asked') {
      this.open.set(e.prompt.id, e.prompt);
      for (const f of this.asked) f(e.prompt);
    } else if (e.type === 'prompt.closed') {
      this.open.delete(e.id);
      for (const f of this.closed) f(e.id, e.outcome);
    }
  }

  shown(prompts: readonly Prompt[]): void {
    for (const p of prompts) this.event({ type: 'prompt.asked', prompt: p, seq: 0, at: new Date().toISOString() });
  }

  onAsked(fn: (p: Prompt) => void): () => void {
    this.asked.add(fn);
    for (const p of this.open.values()) fn(p);
    return () => this.asked.delete(fn);
  }

  onClosed(fn: (id: string, o: PromptOutcome) => void): () => void {
    this.closed.add(fn);
    return () => this.closed.delete(fn);
  }

  async answer(id: string, a: PromptAnswer): Promise<void> {
    await this.client.call('prompt.answer', { id, ...a });
  }
}

/** The agent protocol's `budget` topic as a BudgetSource. */
class DaemonBudgets implements BudgetSource {
  private readonly listeners = new Set<(n: BudgetNotice) => void>();

  event(e: DaemonEvent): void {
    if (e.type !== 'budget.warning' && e.type !== 'budget.exhausted' && e.type !== 'budget.restored') return;
    for (const f of this.listeners) f(e);
  }

  onBudget(fn: (n: BudgetNotice) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

export async function runNotifyAgent(socket: string, o: { name: string; busAddress?: string }): Promise<number> {
  const client = new Client(socket);
  const source = new DaemonPrompts(client);
  const budgets = new DaemonBudgets();
  let gone: (why: string) => void = () => undefined;
  const daemonGone = new Promise<string>((resolve) => { gone = resolve; });
  client.listen((e) => {
    source.event(e);
    budgets.event(e);
  }, (why) => gone(why));
  try {
    const r = await client.call('agent.register', { name: o.name });
    source.shown(r.prompts);
  } catch (e) {
    process.stderr.write(`waymark agent: ${errorMessage(e)}\n`);
    client.close();
    return e instanceof DaemonUnavailable ? EXIT_UNAVAILABLE : 1;
  }
  let agent;
  try {
    const uid = process.getuid?.();
    agent = await startNotificationAgent(source, {
      budgets, ...(uid !== undefined ? { budgetWords: { viewer: uid } } : {}), ...(o.busAddress !== undefined ? { busAddress: o.busAddress } : {}),
    });
  } catch (e) {
    process.stderr.write(`waymark agent: ${errorMessage(e)}\n`);
    client.close();
    return e instanceof NotificationsUnavailable ? EXIT_UNAVAILABLE : 1;
  }
  process.stdout.write('showing prompts as desktop notifications (and budget notices); Ctrl-C to stop\n');
  const signalled = new Promise<string>((resolve) => {
    process.once('SIGINT', () => resolve('interrupted'));
    process.once('SIGTERM', () => resolve('terminated'));
  });
  const why = await Promise.race([signalled.then((w) => ({ w, code: 0 })), daemonGone.then((w) => ({ w: `waymarkd went away (${w})`, code: EXIT_UNAVAILABLE })),
    agent.done.then((w) => ({ w: `the session bus went away (${w})`, code: EXIT_UNAVAILABLE }))]);
  await agent.close().catch(() => undefined);
  client.close();
  if (why.code !== 0) process.stderr.write(`waymark agent: ${why.w}\n`);
  return why.code;
}
