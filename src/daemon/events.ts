/**
 * The daemon's event bus: what happened (an uplink changed, the config was reloaded, a
 * connection was denied, a session started) pushed to the control clients that subscribed
 * (`events.subscribe`, protocol v2; `waymark watch`).
 *
 * The events are one discriminated union ({@link DaemonEvent}, by `type`); the part of a type
 * before its dot is its topic ({@link TOPICS}), which is what a client subscribes to. Later
 * issues add their members here (the usage issue its counters): a member, its topic, and its
 * {@link ownerOf} line.
 *
 * Privacy: events about one user's programs (denials, sessions) carry that uid and reach only
 * subscribers of that uid, and root and the waymark group (`seesAll`); uplink and config events
 * reach everyone. Prompts (`prompt.asked`, `prompt.closed`: the ask prompt, src/daemon/prompts.ts)
 * are narrower still: only subscribers of the prompt's uid and root's ({@link groupSees}); the
 * waymark group administers the daemon, it does not answer another user's questions.
 *
 * Bounds: publishing is synchronous and O(subscribers): each subscriber that wants the event
 * gets the same frozen object appended to its own queue, nothing is serialised here and nothing
 * awaited (a denial publishes from the decision path). A queue holds at most `queueLimit`
 * events; beyond that events for that subscriber are dropped and counted, and once its queue has
 * room again (or it has taken every queued event) it gets one `events.lost` event saying how many
 * it missed, in the place where they were missing. A subscriber that never reads so costs the
 * daemon at most `queueLimit` events (plus what its connection buffers, see server.ts), and
 * slows nobody: it is never waited for. It is not disconnected: a watcher that was only
 * suspended (Ctrl-Z) carries on with a gap it is told about.
 */
import type { Prompt, PromptOutcome } from '../prompt/prompt.js';
import type { UplinkState } from '../uplink/state.js';

/** Events one subscriber may have queued (not yet handed to its connection). */
export const EVENT_QUEUE_LIMIT = 256;

export const TOPICS = ['uplink', 'config', 'decision', 'session', 'app', 'prompt', 'usage', 'budget', 'profile', 'system'] as const;
export type Topic = (typeof TOPICS)[number];

export interface UplinkChanged {
  readonly type: 'uplink.changed';
  readonly uplink: string;
  readonly ifname: string | null;
  /** absent | down | no-carrier | no-address | active (src/uplink/state.ts). */
  readonly status: string;
  /** Whether the link has carrier (null: no link). */
  readonly carrier: boolean | null;
  readonly addresses: readonly string[];
  /** The status before this change (null: first seen, e.g. the uplink was just configured). */
  readonly previous: string | null;
}

export interface ConfigReloaded {
  readonly type: 'config.reloaded';
  readonly generation: number;
  readonly uplinks: number;
  readonly destinations: number;
  /** The config's rules (its `apps:` entries included). */
  readonly rules: number;
}

export interface ConfigRejected {
  readonly type: 'config.rejected';
  readonly file: string;
  /** Each problem, located (as reload's EINVAL error carries them). */
  readonly issues: readonly { readonly file: string; readonly line: number; readonly column: number; readonly field: string; readonly message: string }[];
}

export interface DecisionDenied {
  readonly type: 'decision.denied';
  readonly uid: number;
  readonly pid: number;
  /** The program's executable (null: unreadable). */
  readonly exe: string | null;
  /** The app rule that applied (null: none). */
  readonly app: string | null;
  /** The destination the address belongs to ("internet": none of the configured ones). */
  readonly destination: string;
  readonly address: string;
  readonly port: number;
  readonly proto: string;
  /** The uplink the program asked for, if it asked for one. */
  readonly uplink: string | null;
  readonly errno: 'EACCES' | 'ENETUNREACH';
  readonly reason: string;
}

export interface SessionStarted {
  readonly type: 'session.started';
  readonly id: string;
  readonly uid: number;
  readonly uplink: string | null;
  readonly command: string;
}

export interface SessionEnded {
  readonly type: 'session.ended';
  readonly id: string;
  readonly uid: number;
}

/** An app's cgroup as the daemon recognised it (src/daemon/apps.ts). */
interface AppEventBase {
  /** The user it belongs to; null: a system service (only root and the waymark group see those). */
  readonly uid: number | null;
  /** What a user calls it: the Flatpak ID, the desktop app ID, else the unit. */
  readonly name: string;
  readonly unit: string;
  /** The cgroup, relative to the daemon's cgroup root. */
  readonly cgroup: string;
}

export interface AppAppeared extends AppEventBase {
  readonly type: 'app.appeared';
  readonly kind: string;
  /** The app rule that applies (null: none). */
  readonly rule: string | null;
  /** The uplink its new sockets are marked for (null: default routing). */
  readonly uplink: string | null;
  /**
   * When its entry was in the kernel: CLOCK_MONOTONIC nanoseconds as decimal text (Node's
   * process.hrtime.bigint()), comparable with any other process's clock on this machine: the
   * classification delay of a cgroup someone created at a known moment.
   */
  readonly classifiedNs: string;
}

export interface AppLeft extends AppEventBase {
  readonly type: 'app.left';
}

/** A prompt is shown: the agents of its uid (and root's) may answer it (protocol.ts: prompt.answer). */
export interface PromptAsked {
  readonly type: 'prompt.asked';
  readonly prompt: Prompt;
}

/** A shown prompt is closed: answered (by whom, what), timed out, no agent left, or its askers gone. */
export interface PromptClosed {
  readonly type: 'prompt.closed';
  readonly id: string;
  /** The prompt's uid (whose app asked). */
  readonly uid: number;
  readonly outcome: PromptOutcome;
}

/**
 * The kernel's counters were read (src/accounting/service.ts): what each uplink carried since the
 * last sample, all apps together (device facts, like `status`'s traffic). `waymark usage --watch`
 * queries again on each.
 */
export interface UsageSampled {
  readonly type: 'usage.sampled';
  /** The sample's start and end. */
  readonly since: string;
  readonly until: string;
  readonly uplinks: readonly { readonly uplink: string; readonly txBytes: number; readonly rxBytes: number }[];
}

/** A budget crossed its warning threshold, was exhausted (the kernel blocks, unless it only warns), or has room again. */
export interface BudgetChanged {
  readonly type: 'budget.warning' | 'budget.exhausted' | 'budget.restored';
  readonly id: string;
  readonly uplink: string;
  /** The app's name; null: the whole uplink. */
  readonly app: string | null;
  /** Whose app it is (null: the uplink's budget, or any user's app: everyone is told). */
  readonly uid: number | null;
  readonly usedBytes: number;
  readonly limitBytes: number;
  /** Whether the kernel blocks now. */
  readonly blocked: boolean;
  readonly periodEnd: string;
}

/** How the active profile was chosen: its SIM (ICCID or operator), the user, default_profile, or none applies. */
export type ProfileChoice = 'sim' | 'user' | 'default' | 'none';

/** Another profile is active (src/daemon/profile-service.ts): device facts, everyone is told. */
export interface ProfileActivated {
  readonly type: 'profile.activated';
  /** null: none (the configuration as written). */
  readonly name: string | null;
  readonly by: ProfileChoice;
  /** The ICCID of the SIM it was chosen for (by 'sim'). */
  readonly sim?: string;
}

/** A saved profile was saved, imported or removed. */
export interface ProfileChanged {
  readonly type: 'profile.changed';
  readonly name: string;
  readonly change: 'saved' | 'imported' | 'removed';
}

/**
 * What the device's services said changed the config in force (src/daemon/system-service.ts):
 * the SIM, the roaming uplinks, a bearer's interface or DNS, NetworkManager's metered state.
 */
export interface SystemChanged {
  readonly type: 'system.changed';
  /** The device's SIM (ICCID), null: none known. */
  readonly sim: string | null;
  /** The uplinks that are roaming now. */
  readonly roaming: readonly string[];
  readonly generation: number;
}

/** What is published: each member's topic is the part of `type` before the dot. */
export type EventBody = UplinkChanged | ConfigReloaded | ConfigRejected | DecisionDenied | SessionStarted | SessionEnded | AppAppeared | AppLeft
  | PromptAsked | PromptClosed | UsageSampled | BudgetChanged | ProfileActivated | ProfileChanged | SystemChanged;

/** Sent in place of events a subscriber's full queue could not take: `count` of them, the last numbered `lastSeq`. */
export interface EventsLost { readonly type: 'events.lost'; readonly count: number; readonly lastSeq: number }

/** An event as delivered: numbered in publishing order (per daemon run) and stamped. */
export type DaemonEvent = (EventBody | EventsLost) & { readonly seq: number; readonly at: string };

export type EventType = DaemonEvent['type'];

export function topicOf(e: EventBody): Topic {
  switch (e.type) {
    case 'uplink.changed': return 'uplink';
    case 'config.reloaded':
    case 'config.rejected': return 'config';
    case 'decision.denied': return 'decision';
    case 'session.started':
    case 'session.ended': return 'session';
    case 'app.appeared':
    case 'app.left': return 'app';
    case 'prompt.asked':
    case 'prompt.closed': return 'prompt';
    case 'usage.sampled': return 'usage';
    case 'budget.warning':
    case 'budget.exhausted':
    case 'budget.restored': return 'budget';
    case 'profile.activated':
    case 'profile.changed': return 'profile';
    case 'system.changed': return 'system';
  }
}

/**
 * Whether subscribers who see all (the waymark group) get a topic's events of other uids;
 * false: only the owner's and root's subscribers do (prompts).
 */
export function groupSees(topic: Topic): boolean {
  return topic !== 'prompt';
}

/** An owner no subscriber has (uids are ≥ 0): the event reaches only those who see all. */
const NOBODY = -1;

/** The uid an event is about (only it and those who see all get it, see {@link groupSees}), or 'all'. */
export function ownerOf(e: EventBody): number | 'all' {
  switch (e.type) {
    case 'uplink.changed':
    case 'config.reloaded':
    case 'config.rejected': return 'all';
    case 'decision.denied':
    case 'session.started':
    case 'session.ended': return e.uid;
    // A system service is no user's: only those who see everything get it.
    case 'app.appeared':
    case 'app.left': return e.uid ?? NOBODY;
    case 'prompt.asked': return e.prompt.app.uid;
    case 'prompt.closed': return e.uid;
    case 'usage.sampled': return 'all';
    case 'budget.warning':
    case 'budget.exhausted':
    case 'budget.restored': return e.uid ?? 'all';
    case 'profile.activated':
    case 'profile.changed': return 'all';
    // Device facts, as `status` shows them to everyone.
    case 'system.changed': return 'all';
  }
}

export interface SubscriberOptions {
  readonly uid: number;
  /** Root or the waymark group: sees every user's events (prompts: root only, see {@link groupSees}). */
  readonly seesAll: boolean;
  readonly topics: readonly Topic[];
  /** Called (synchronously, from publish) when the queue went from empty to not empty. */
  readonly wake: () => void;
}

export interface EventStats {
  readonly subscribers: number;
  readonly queueLimit: number;
  /** Events queued now, over all subscribers. */
  readonly queued: number;
  /** The longest queue now (at most queueLimit, plus one `events.lost`). */
  readonly maxQueued: number;
  /** Events published since start. */
  readonly published: number;
  /** Events dropped for subscribers whose queue was full, since start. */
  readonly dropped: number;
}

export class Subscriber {
  private readonly queue: DaemonEvent[] = [];
  private lost = 0;
  private lastLostSeq = 0;
  private closed = false;
  private readonly wanted: Set<Topic>;

  constructor(private readonly bus: EventBus, readonly opts: SubscriberOptions) {
    this.wanted = new Set(opts.topics);
  }

  get topics(): ReadonlySet<Topic> {
    return this.wanted;
  }

  /** Adds topics to this subscription (what is queued stays); returns the ones it did not have. */
  widen(topics: readonly Topic[]): Topic[] {
    if (this.closed) return [];
    const added = topics.filter((t) => !this.wanted.has(t));
    for (const t of added) this.wanted.add(t);
    this.bus.added(this, added);
    return added;
  }

  get queued(): number {
    return this.queue.length;
  }

  /** Takes the next event to send (undefined: none now). */
  take(): DaemonEvent | undefined {
    const e = this.queue.shift();
    if (e !== undefined) return e;
    return this.lost > 0 ? this.lostMarker() : undefined;
  }

  /** Unsubscribes; queued events are dropped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue.length = 0;
    this.bus.remove(this);
  }

  /** From EventBus.publish only. Returns whether the event was dropped for lack of room. */
  offer(e: DaemonEvent & EventBody, topic: Topic, owner: number | 'all'): boolean {
    if (!this.wanted.has(topic)) return false;
    if (owner !== 'all' && owner !== this.opts.uid && !(groupSees(topic) ? this.opts.seesAll : this.opts.uid === 0)) return false;
    const limit = this.bus.queueLimit;
    // A pending loss goes in first, in the place of the missing events; it needs a slot too.
    if (this.queue.length + (this.lost > 0 ? 2 : 1) > limit) {
      this.lost++;
      this.lastLostSeq = e.seq;
      return true;
    }
    const wasEmpty = this.queue.length === 0;
    if (this.lost > 0) this.queue.push(this.lostMarker());
    this.queue.push(e);
    if (wasEmpty) this.opts.wake();
    return false;
  }

  private lostMarker(): DaemonEvent {
    const m: DaemonEvent = Object.freeze({ type: 'events.lost', count: this.lost, lastSeq: this.lastLostSeq, seq: this.lastLostSeq, at: new Date().toISOString() });
    this.lost = 0;
    return m;
  }
}

export class EventBus {
  private readonly subscribers = new Set<Subscriber>();
  private readonly byTopic = new Map<Topic, number>();
  private seq = 0;
  private droppedTotal = 0;

  constructor(readonly queueLimit: number = EVENT_QUEUE_LIMIT, private readonly now: () => Date = () => new Date()) {
    if (!Number.isInteger(queueLimit) || queueLimit < 2) throw new Error('event queue limit: a whole number, at least 2');
  }

  subscribe(opts: SubscriberOptions): Subscriber {
    const s = new Subscriber(this, opts);
    this.subscribers.add(s);
    for (const t of s.topics) this.byTopic.set(t, (this.byTopic.get(t) ?? 0) + 1);
    return s;
  }

  /** From Subscriber.widen only. */
  added(s: Subscriber, topics: readonly Topic[]): void {
    if (!this.subscribers.has(s)) return;
    for (const t of topics) this.byTopic.set(t, (this.byTopic.get(t) ?? 0) + 1);
  }

  /** From Subscriber.close only. */
  remove(s: Subscriber): void {
    if (!this.subscribers.delete(s)) return;
    for (const t of s.topics) this.byTopic.set(t, (this.byTopic.get(t) ?? 1) - 1);
  }

  /** Whether anyone listens to `topic`: publishers may skip building an event nobody gets. */
  wants(topic: Topic): boolean {
    return (this.byTopic.get(topic) ?? 0) > 0;
  }

  /** Numbers, stamps and queues `body` for every subscriber that may see it; synchronous. */
  publish(body: EventBody): void {
    this.seq++;
    if (this.subscribers.size === 0) return;
    const topic = topicOf(body);
    if (!this.wants(topic)) return;
    const owner = ownerOf(body);
    const e = Object.freeze({ ...body, seq: this.seq, at: this.now().toISOString() });
    for (const s of this.subscribers) if (s.offer(e, topic, owner)) this.droppedTotal++;
  }

  get stats(): EventStats {
    let queued = 0;
    let maxQueued = 0;
    for (const s of this.subscribers) {
      queued += s.queued;
      maxQueued = Math.max(maxQueued, s.queued);
    }
    return { subscribers: this.subscribers.size, queueLimit: this.queueLimit, queued, maxQueued, published: this.seq, dropped: this.droppedTotal };
  }
}

/** The per-uplink view events compare: what a watcher wants to know changed. */
function uplinkView(s: UplinkState): Omit<UplinkChanged, 'type' | 'previous'> {
  return {
    uplink: s.spec.name,
    ifname: s.link?.name ?? null,
    status: s.status,
    carrier: s.link ? s.status !== 'no-carrier' && s.status !== 'down' : null,
    addresses: s.families.flatMap((f) => f.addresses),
  };
}

/**
 * Turns successive uplink states (after each reconcile) into `uplink.changed` events: one per
 * uplink whose status, interface, carrier or addresses differ from the last call. The first call
 * only records (the start-up state is what `status` shows).
 */
export class UplinkWatcher {
  private last: Map<string, { key: string; status: string }> | undefined;

  constructor(private readonly publish: (e: UplinkChanged) => void) {}

  update(states: readonly UplinkState[]): void {
    const next = new Map<string, { key: string; status: string }>();
    for (const s of states) {
      const v = uplinkView(s);
      const key = JSON.stringify(v);
      next.set(v.uplink, { key, status: v.status });
      if (this.last === undefined) continue;
      const before = this.last.get(v.uplink);
      if (before?.key !== key) this.publish({ type: 'uplink.changed', ...v, previous: before?.status ?? null });
    }
    this.last = next;
  }
}
