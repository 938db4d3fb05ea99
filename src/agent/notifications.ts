/**
 * The desktop-notification prompt agent: each prompt becomes a notification of the user's
 * notification server (org.freedesktop.Notifications on the session bus), with one button per
 * uplink and one to deny (src/agent/notification-content.ts says what they answer).
 *
 * It knows prompts only through a {@link PromptSource} (the agent protocol's client connects one:
 * `prompt.asked`, `prompt.closed`, `prompt.answer`), and the bus only through
 * src/agent/dbus.ts. A click answers the prompt; a notification the user dismisses or the server
 * lets expire answers nothing (the prompt's default applies at its timeout); a prompt closed at
 * the source (answered elsewhere, timed out, the app gone) closes its notification.
 *
 * Budget events (warning, exhausted, room again) come from a {@link BudgetSource} beside it, and
 * are notifications without buttons: one per budget, each replacing that budget's previous one
 * (`replaces_id`), so a warning becomes the exhaustion and that the "room again" notice.
 *
 * Without a notification server on the bus (no owner, not activatable) the agent does not start:
 * {@link NotificationsUnavailable}. One that goes away later (the desktop shell restarting) is
 * waited for, and the prompts that were on screen are shown again by its successor.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../daemon/log.js';
import { errorMessage } from '../errors.js';
import type { Prompt, PromptAnswer, PromptOutcome } from '../prompt/prompt.js';
import type { BudgetNotice, BudgetWordsOptions } from './budget-words.js';
import { BusError, connectBus, sessionBusAddress, str, strings, u32, variant, bool, type MessageBus, type Signal } from './dbus.js';
import { DEFAULT_SCOPES, answerFor, budgetNotificationContent, notificationContent, type NotificationScopes } from './notification-content.js';

export const NOTIFICATIONS = {
  name: 'org.freedesktop.Notifications',
  path: '/org/freedesktop/Notifications',
  interface: 'org.freedesktop.Notifications',
} as const;
const DBUS = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' } as const;

export const APP_NAME = 'Waymark';
/** A freedesktop icon-naming-spec name every icon theme has. */
export const APP_ICON = 'network-transmit-receive';

/** Where prompts come from and where answers go: the agent protocol's client, or a fake. */
export interface PromptSource {
  /** Calls `fn` for every prompt this agent may answer, the ones open when subscribing included. Returns an unsubscriber. */
  onAsked(fn: (prompt: Prompt) => void): () => void;
  /** Calls `fn` when a prompt ends (answered by any agent, timed out, its app gone). */
  onClosed(fn: (id: string, outcome: PromptOutcome) => void): () => void;
  answer(id: string, answer: PromptAnswer): Promise<void>;
}

/** Where budget events come from (the agent protocol's `budget` topic), or a fake. */
export interface BudgetSource {
  /** Calls `fn` for each budget event of this agent's user (root: everyone's). Returns an unsubscriber. */
  onBudget(fn: (notice: BudgetNotice) => void): () => void;
}

/** No notification server on the bus: nothing could show a prompt. */
export class NotificationsUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NotificationsUnavailable';
  }
}

export interface NotificationAgentOptions {
  /** What the buttons answer (default: an uplink always, for this destination; deny this time). */
  readonly scopes?: NotificationScopes;
  /** Uplink buttons at most, Deny besides (default 2: servers show few buttons, Deny must be one). */
  readonly uplinkButtons?: number;
  /** Milliseconds since the epoch (tests). */
  readonly now?: () => number;
  /** Budget events to show (none without). */
  readonly budgets?: BudgetSource;
  /** How budget notices say times and whose budget it is (the time zone, the user). */
  readonly budgetWords?: BudgetWordsOptions;
}

/** Why a prompt's notification went. */
export type HiddenWhy = 'answered' | 'closed' | 'dismissed' | 'server-gone';

export interface AgentEvents {
  /** A prompt's notification is on screen (a Notify's reply came). */
  shown: [promptId: string, notification: number];
  /** It went: a button (answered), its prompt closed at the source, the server closed it, the server left. */
  hidden: [promptId: string, notification: number, why: HiddenWhy];
  /** A budget's notice is on screen (a Notify's reply came), for that event type. */
  budgetShown: [budgetId: string, notification: number, type: BudgetNotice['type']];
  /** The server closed a budget's notice (dismissed, expired): that budget's next one is new. */
  budgetHidden: [budgetId: string, notification: number];
}

export interface NotificationAgent {
  /** Resolves when the agent stops (closed, or its bus connection went), with why. */
  readonly done: Promise<string>;
  readonly events: EventEmitter<AgentEvents>;
  /** The notification shown for a prompt now, if any (its id at the server). */
  notificationOf(promptId: string): number | undefined;
  /** The notice shown for a budget now, if any. */
  notificationOfBudget(budgetId: string): number | undefined;
  /** Stops, and closes the prompts' notifications it shows (those being posted too) before resolving; budget notices stay. */
  close(): Promise<void>;
}

interface Entry {
  readonly prompt: Prompt;
  /** The notification's id at the server while one is on screen. */
  id: number | undefined;
  /** Whether the prompt is still open at the source. */
  open: boolean;
  /** Whether it was on screen when the server went: its successor shows it again. */
  lost: boolean;
}

/** A budget's notice: its id at the server while one is on screen; its Notify calls, one after another. */
interface BudgetEntry {
  id: number | undefined;
  chain: Promise<void>;
  /** Notify calls queued or under way. */
  pending: number;
}

interface Capabilities {
  readonly actions: boolean;
  readonly markup: boolean;
}

/** Whether a notification server is there: owning the name now, or startable by the bus. */
async function serverPresent(bus: MessageBus): Promise<{ owner: string | undefined; activatable: boolean }> {
  const has = await bus.call({ ...DBUS, member: 'NameHasOwner', signature: 's', body: [NOTIFICATIONS.name] });
  if (bool(has.body[0], 'NameHasOwner')) {
    try {
      const owner = await bus.call({ ...DBUS, member: 'GetNameOwner', signature: 's', body: [NOTIFICATIONS.name] });
      return { owner: str(owner.body[0], 'GetNameOwner'), activatable: false };
    } catch (e) {
      // It went between the two calls.
      if (!(e instanceof BusError)) throw e;
    }
  }
  const names = await bus.call({ ...DBUS, member: 'ListActivatableNames' });
  return { owner: undefined, activatable: strings(names.body[0], 'ListActivatableNames').includes(NOTIFICATIONS.name) };
}

/**
 * Runs the agent on a connected bus until close() or the bus goes. Rejects with
 * {@link NotificationsUnavailable} when no notification server is there.
 */
export async function runNotificationAgent(
  source: PromptSource,
  bus: MessageBus,
  log: Logger,
  options: NotificationAgentOptions = {},
): Promise<NotificationAgent> {
  const scopes = options.scopes ?? DEFAULT_SCOPES;
  const now = options.now ?? Date.now;
  const entries = new Map<string, Entry>();
  const byNotification = new Map<number, Entry>();
  const budgets = new Map<string, BudgetEntry>();
  /** Budget id by its notice's id at the server. */
  const byBudgetNotice = new Map<number, string>();
  let owner: string | undefined;
  let capabilities: Promise<Capabilities> | undefined;
  let stopped = false;
  /** How many times the server's name changed owner (a Notify's reply may come from the one before). */
  let ownerChanges = 0;
  /** Signals about notifications whose Notify replies are not read yet wait for them, in order. */
  let deferred: Promise<unknown> = Promise.resolve();
  const events = new EventEmitter<AgentEvents>();
  /** Notify calls under way: close() waits for them, so nothing it posted stays on screen. */
  const inflight = new Set<Promise<void>>();

  const call = (member: string, signature = '', body: readonly unknown[] = []): ReturnType<MessageBus['call']> =>
    bus.call({ destination: NOTIFICATIONS.name, path: NOTIFICATIONS.path, interface: NOTIFICATIONS.interface, member, signature, body });

  const capabilitiesNow = (): Promise<Capabilities> => {
    if (capabilities) return capabilities;
    const asked = (async () => {
      const caps = strings((await call('GetCapabilities')).body[0], 'GetCapabilities');
      try {
        const info = await call('GetServerInformation');
        log.info('notification server', { name: String(info.body[0]), vendor: String(info.body[1]), version: String(info.body[2]), capabilities: caps });
      } catch (e) {
        log.debug('notification server information', { error: errorMessage(e) });
      }
      return { actions: caps.includes('actions'), markup: caps.includes('body-markup') };
    })();
    capabilities = asked;
    // A failure is not remembered: the next prompt asks again.
    asked.catch(() => { if (capabilities === asked) capabilities = undefined; });
    return asked;
  };

  const closeNotification = (id: number): Promise<void> =>
    // Gone already (the user dismissed it, a button closed it) is an error reply: nothing to do.
    call('CloseNotification', 'u', [id]).then(
      () => undefined,
      (e: unknown) => log.debug('close notification', { id, error: errorMessage(e) }),
    );

  const hide = (entry: Entry, why: HiddenWhy): number | undefined => {
    const id = entry.id;
    if (id === undefined) return undefined;
    byNotification.delete(id);
    entry.id = undefined;
    events.emit('hidden', entry.prompt.id, id, why);
    return id;
  };

  const post = (entry: Entry): void => {
    const posting = postNow(entry).finally(() => inflight.delete(posting));
    inflight.add(posting);
  };

  const postNow = async (entry: Entry): Promise<void> => {
    const p = entry.prompt;
    try {
      const caps = await capabilitiesNow();
      const content = notificationContent(p, {
        actions: caps.actions, markup: caps.markup, scopes, now: now(),
        ...(options.uplinkButtons !== undefined ? { uplinkButtons: options.uplinkButtons } : {}),
      });
      if (!content || !entry.open || stopped) return;
      const hints = {
        urgency: variant('y', content.urgency),
        category: variant('s', 'network'),
        'x-waymark-prompt': variant('s', p.id),
      };
      const generation = ownerChanges;
      const reply = await call('Notify', 'susssasa{sv}i', [
        APP_NAME, 0, APP_ICON, content.summary, content.body, content.actions.flat(), hints, content.expireMs,
      ]);
      const id = u32(reply.body[0], 'Notify');
      if (generation === ownerChanges) {
        // An activated server answers before its name's owner change reaches us.
        owner ??= reply.sender;
      } else if (reply.sender !== owner) {
        // The server that answered left meanwhile: its successor (if any yet) shows the prompt.
        if (owner === undefined) entry.lost = true;
        else post(entry);
        return;
      }
      if (!entry.open || stopped) {
        await closeNotification(id);
        return;
      }
      entry.id = id;
      byNotification.set(id, entry);
      log.info('prompt shown', { prompt: p.id, notification: id, actions: content.actions.length });
      events.emit('shown', p.id, id);
    } catch (e) {
      log.warn('cannot show the prompt as a notification', { prompt: p.id, error: errorMessage(e) });
    }
  };

  // A budget's notices are posted in order: each replaces the one before (its id comes with the
  // reply), so a warning and an exhaustion in quick succession leave one notification.
  const onBudget = (n: BudgetNotice): void => {
    if (stopped) return;
    let entry = budgets.get(n.id);
    if (entry === undefined) {
      entry = { id: undefined, chain: Promise.resolve(), pending: 0 };
      budgets.set(n.id, entry);
    }
    const e = entry;
    e.pending++;
    const posting = e.chain.then(() => postBudget(n, e)).finally(() => {
      e.pending--;
      inflight.delete(posting);
    });
    e.chain = posting;
    inflight.add(posting);
  };

  const postBudget = async (n: BudgetNotice, entry: BudgetEntry): Promise<void> => {
    if (stopped) return;
    try {
      const caps = await capabilitiesNow();
      if (stopped) return;
      const content = budgetNotificationContent(n, { ...options.budgetWords, markup: caps.markup });
      const hints = {
        urgency: variant('y', content.urgency),
        category: variant('s', 'network'),
        'x-waymark-budget': variant('s', n.id),
      };
      const generation = ownerChanges;
      const reply = await call('Notify', 'susssasa{sv}i', [
        APP_NAME, entry.id ?? 0, APP_ICON, content.summary, content.body, [], hints, content.expireMs,
      ]);
      const id = u32(reply.body[0], 'Notify');
      if (generation === ownerChanges) owner ??= reply.sender;
      // The server that showed it left meanwhile: a notice is news, not shown again by the next one.
      else if (reply.sender !== owner) return;
      if (entry.id !== undefined && entry.id !== id) byBudgetNotice.delete(entry.id);
      entry.id = id;
      byBudgetNotice.set(id, n.id);
      log.info('budget notice shown', { budget: n.id, type: n.type, notification: id });
      events.emit('budgetShown', n.id, id, n.type);
    } catch (e) {
      log.warn('cannot show the budget notice', { budget: n.id, type: n.type, error: errorMessage(e) });
    }
  };

  const onAsked = (p: Prompt): void => {
    if (stopped || entries.has(p.id)) return;
    const entry: Entry = { prompt: p, id: undefined, open: true, lost: false };
    entries.set(p.id, entry);
    post(entry);
  };

  const onClosed = (id: string, outcome: PromptOutcome): void => {
    const entry = entries.get(id);
    if (!entry) return;
    entries.delete(id);
    entry.open = false;
    const shown = hide(entry, 'closed');
    if (shown !== undefined) void closeNotification(shown);
    log.debug('prompt closed', { prompt: id, by: outcome.by });
  };

  const onAction = (id: number, key: string): void => {
    const entry = byNotification.get(id);
    if (!entry) return; // another program's notification
    const answer = answerFor(entry.prompt, key, scopes);
    if (!answer) {
      log.debug('action without an answer', { prompt: entry.prompt.id, key });
      return;
    }
    // The server removes a notification whose button was pressed; a second press cannot come.
    hide(entry, 'answered');
    log.info('prompt answered', { prompt: entry.prompt.id, key, scope: answer.scope });
    source.answer(entry.prompt.id, answer).catch((e: unknown) =>
      log.warn('answer not taken', { prompt: entry.prompt.id, error: errorMessage(e) }));
  };

  const onNotificationClosed = (id: number, reason: number): void => {
    const budgetId = byBudgetNotice.get(id);
    if (budgetId !== undefined) {
      // Dismissed or expired: the budget's next notice is a new one.
      byBudgetNotice.delete(id);
      const b = budgets.get(budgetId);
      if (b?.id === id) b.id = undefined;
      log.debug('budget notice closed', { budget: budgetId, notification: id, reason });
      events.emit('budgetHidden', budgetId, id);
      return;
    }
    const entry = byNotification.get(id);
    if (!entry) return;
    hide(entry, 'dismissed');
    // 1 expired, 2 dismissed, 3 closed by CloseNotification: the prompt's default applies at its timeout.
    log.debug('notification closed', { prompt: entry.prompt.id, notification: id, reason });
  };

  const handleServerSignal = (s: Signal): void => {
    if (s.sender !== owner) return;
    try {
      if (s.member === 'ActionInvoked') onAction(u32(s.body[0], 'ActionInvoked id'), str(s.body[1], 'ActionInvoked key'));
      else if (s.member === 'NotificationClosed') onNotificationClosed(u32(s.body[0], 'NotificationClosed id'), u32(s.body[1], 'NotificationClosed reason'));
    } catch (e) {
      log.warn('bad signal from the notification server', { member: s.member, error: errorMessage(e) });
    }
  };

  const onServerSignal = (s: Signal): void => {
    // The library reads a reply and a signal that follows it in one go, and hands us the signal
    // before the Notify's caller has seen the reply: a signal about an id not known yet waits
    // for the Notify calls under way (they cannot wait long: the calls' timeout bounds them).
    // A budget's notice whose replacement is under way is not known yet: its reply may bring the
    // same id back after the signal was sent (the user closed the one it replaces).
    const id = s.body[0];
    const budgetId = typeof id === 'number' ? byBudgetNotice.get(id) : undefined;
    const settled = budgetId !== undefined && (budgets.get(budgetId)?.pending ?? 0) === 0;
    const known = typeof id === 'number' && (byNotification.has(id) || settled) && s.sender === owner;
    if (known || inflight.size === 0) {
      handleServerSignal(s);
      return;
    }
    const waitFor = [...inflight];
    deferred = deferred.then(() => Promise.all(waitFor)).then(() => handleServerSignal(s));
  };

  const onOwnerChanged = (s: Signal): void => {
    let next: string;
    try {
      next = str(s.body[2], 'NameOwnerChanged new owner');
    } catch (e) {
      log.warn('bad NameOwnerChanged', { error: errorMessage(e) });
      return;
    }
    if (next === owner) return;
    ownerChanges++;
    const before = owner;
    owner = next === '' ? undefined : next;
    capabilities = undefined;
    // The old server's notifications went with it.
    for (const entry of entries.values()) {
      if (hide(entry, 'server-gone') !== undefined) entry.lost = true;
    }
    for (const b of budgets.values()) b.id = undefined;
    byBudgetNotice.clear();
    if (owner === undefined) {
      log.warn('the notification server left the bus; waiting for another', { was: before });
      return;
    }
    log.info('notification server', { owner });
    for (const entry of entries.values()) {
      if (!entry.lost) continue;
      entry.lost = false;
      post(entry);
    }
  };

  // Listen first, then look: a server arriving in between is not missed.
  const unwatchOwner = await bus.onSignal(
    { sender: DBUS.destination, path: DBUS.path, interface: DBUS.interface, member: 'NameOwnerChanged', arg0: NOTIFICATIONS.name },
    onOwnerChanged,
  );
  const unwatchServer = await bus.onSignal({ sender: NOTIFICATIONS.name, path: NOTIFICATIONS.path, interface: NOTIFICATIONS.interface }, onServerSignal);
  const present = await serverPresent(bus);
  if (present.owner === undefined && !present.activatable) {
    unwatchOwner();
    unwatchServer();
    throw new NotificationsUnavailable(`no notification server on the session bus (${NOTIFICATIONS.name} has no owner and is not activatable)`);
  }
  owner ??= present.owner;
  log.info('notification agent ready', { server: owner ?? 'activatable' });

  const unsubscribeAsked = source.onAsked(onAsked);
  const unsubscribeClosed = source.onClosed(onClosed);
  const unsubscribeBudget = options.budgets?.onBudget(onBudget) ?? ((): void => undefined);

  let finish: (why: string) => void = () => undefined;
  const done = new Promise<string>((resolve) => { finish = resolve; });
  const stop = (why: string): void => {
    if (stopped) return;
    stopped = true;
    unsubscribeAsked();
    unsubscribeClosed();
    unsubscribeBudget();
    unwatchOwner();
    unwatchServer();
    finish(why);
  };
  void bus.closed.then((why) => {
    if (!stopped) log.warn('session bus connection lost', { reason: why });
    stop(why);
  });

  return {
    done,
    events,
    notificationOf: (promptId) => entries.get(promptId)?.id,
    notificationOfBudget: (budgetId) => budgets.get(budgetId)?.id,
    close: async () => {
      if (stopped) return;
      stop('closed');
      // Buttons nobody listens to any more would answer nothing. Posts under way close theirs.
      // Budget notices stay: they are facts, not questions.
      const showing = [...entries.values()].flatMap((e) => {
        const id = hide(e, 'closed');
        return id === undefined ? [] : [id];
      });
      await Promise.all([...showing.map(closeNotification), ...inflight]);
      entries.clear();
    },
  };
}

export interface StartOptions extends NotificationAgentOptions {
  /** The session bus (default: DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus). */
  readonly busAddress?: string;
  readonly log?: Logger;
}

export interface NotificationAgentHandle {
  readonly done: Promise<string>;
  readonly events: EventEmitter<AgentEvents>;
  close(): Promise<void>;
}

const quiet: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

/**
 * For `waymark agent --notify`: connects to the user's session bus and runs the agent there.
 * Rejects with {@link NotificationsUnavailable} when there is no session bus or no notification
 * server on it (the CLI says so and exits non-zero).
 */
export async function startNotificationAgent(source: PromptSource, options: StartOptions = {}): Promise<NotificationAgentHandle> {
  const address = sessionBusAddress(options.busAddress);
  if (address === undefined) throw new NotificationsUnavailable('no session bus: DBUS_SESSION_BUS_ADDRESS is not set and $XDG_RUNTIME_DIR/bus does not exist');
  const log = options.log ?? quiet;
  const bus = await connectBus(address);
  let agent: NotificationAgent;
  try {
    agent = await runNotificationAgent(source, bus, log, options);
  } catch (e) {
    bus.close();
    throw e;
  }
  return {
    done: agent.done,
    events: agent.events,
    close: async () => {
      await agent.close();
      bus.close();
    },
  };
}
