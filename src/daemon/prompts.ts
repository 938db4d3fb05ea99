/**
 * The ask prompt's broker: when a rule says `ask`, the decision path calls {@link PromptBroker.ask}
 * and waits (the library holds the connect: WM_PENDING) while the user is asked through every
 * registered prompt agent (the control socket's `agent.register`: protocol.ts, docs/prompts.md).
 * The broker only reports how the prompt ended; what an answer becomes (a stored rule, an
 * allowance for N minutes) is the caller's business.
 *
 *   - Dedupe: asks with the same key (uid + app identity + destination, the caller's) while one
 *     is open share that prompt and its outcome: ten concurrent connects of one app raise one
 *     prompt. Keys are per uid here whatever the caller puts in them.
 *   - One at a time per uid: a uid's prompts are shown (published: `prompt.asked`) one after the
 *     other, in the order asked; the others wait in a FIFO and are shown when the one before
 *     closes. The timeout counts from the ask, not from when it is shown: a connect never waits
 *     longer than its rule says, and a queued prompt that expires is closed by its timeout
 *     without ever being shown (no event: no agent knew of it).
 *   - Who answers: an agent of the prompt's uid, or of root (the waymark group does not: it runs
 *     the daemon, it does not answer another user's questions). The first valid answer wins and
 *     closes the prompt everywhere (`prompt.closed`); a later one gets ENOENT.
 *   - Without an answer the rule's default applies, reported as: `no-agent` at once when no agent
 *     may answer (none registered for the uid or root, or the last one went: open prompts of that
 *     uid close at once then, rather than wait for their timeout); `timeout`; `gone` for an asker
 *     whose AbortSignal fired (the connect gave up), and for the prompt once all its askers did;
 *     `overflow` beyond {@link MAX_PROMPTS_PER_UID} open and queued prompts of one uid (never shown).
 *   - Bounds: prompts per uid as above, agents per uid {@link MAX_AGENTS_PER_UID} (beyond: EBUSY).
 *     Only uids with an agent have prompts, and agents are control connections, which are bounded
 *     per uid and in all (limits.ts): the broker's state is bounded with them.
 *
 * Time and ids are injected (a fake clock in test/unit/prompts.test.ts). Everything is
 * synchronous: events are published and asks resolved from within ask, answer, the timer and
 * unregister.
 */
import { answerProblem, type Prompt, type PromptAnswer, type PromptOutcome } from '../prompt/prompt.js';
import { systemClock, type Clock, type Timer } from './clock.js';
import type { PromptAsked, PromptClosed } from './events.js';

/** Open and queued prompts per uid; beyond, asks are answered `overflow` at once. */
export const MAX_PROMPTS_PER_UID = 64;
/** Registered agents per uid; beyond, agent.register fails with EBUSY. */
export const MAX_AGENTS_PER_UID = 8;

/** The kinds of prompt there are (an agent says which it shows; all are `connect` today). */
export const PROMPT_KINDS = ['connect'] as const;
export type PromptKind = (typeof PROMPT_KINDS)[number];

export interface PromptLimits {
  readonly promptsPerUid: number;
  readonly agentsPerUid: number;
}

/** What the decision path asks: a Prompt but its id and expiry, the dedupe key and the timeout. */
export type AskRequest = Omit<Prompt, 'id' | 'expiresAt'> & {
  /** Asks with the same key (per uid) while one is open share it: uid + app identity + destination. */
  readonly key: string;
  /** How long until the default applies, from this ask (the ask rule's timeout). */
  readonly timeoutMs: number;
};

export type PromptErrorCode = 'EPERM' | 'EINVAL' | 'ENOENT' | 'EBUSY';

/** An answer or a registration refused (the control socket sends the code and message). */
export class PromptError extends Error {
  constructor(readonly code: PromptErrorCode, message: string) {
    super(message);
    this.name = 'PromptError';
  }
}

export interface AgentInfo {
  readonly uid: number;
  readonly pid: number;
  readonly name: string;
  readonly kinds: readonly PromptKind[];
  /** When it registered (ISO time). */
  readonly since: string;
}

export interface AgentHandle {
  readonly info: AgentInfo;
  /** Idempotent; the uid's prompts no agent may answer any more close `no-agent`. */
  unregister(): void;
}

export interface PromptStats {
  /** Prompts shown now (at most one per uid). */
  readonly open: number;
  /** Prompts waiting for the one of their uid before them. */
  readonly queued: number;
  readonly agents: number;
  /** Asks answered `overflow` since start. */
  readonly overflowed: number;
  readonly limits: PromptLimits;
}

export interface PromptBrokerDeps {
  /** Where `prompt.asked` and `prompt.closed` go (the event bus; synchronous). */
  readonly publish: (e: PromptAsked | PromptClosed) => void;
  readonly clock?: Clock;
  /** Prompt ids, unique per daemon run (default "p-1", "p-2", ...). */
  readonly ids?: () => string;
  readonly limits?: Partial<PromptLimits>;
}

const NO_AGENT: PromptOutcome = Object.freeze({ by: 'no-agent' });
const TIMEOUT: PromptOutcome = Object.freeze({ by: 'timeout' });
const GONE: PromptOutcome = Object.freeze({ by: 'gone' });
const OVERFLOW: PromptOutcome = Object.freeze({ by: 'overflow' });

interface Entry {
  readonly prompt: Prompt;
  readonly key: string;
  readonly uid: number;
  shown: boolean;
  /** In which order prompts were shown (0: not yet). */
  shownSeq: number;
  closed: boolean;
  timer: Timer | undefined;
  /** Each ask waiting for this prompt. */
  readonly waiters: Set<(o: PromptOutcome) => void>;
}

interface Agent {
  readonly info: AgentInfo;
  readonly owner: object;
  gone: boolean;
}

export class PromptBroker {
  readonly limits: PromptLimits;
  private readonly clock: Clock;
  private readonly ids: () => string;
  private readonly publish: PromptBrokerDeps['publish'];
  private readonly byKey = new Map<string, Entry>();
  private readonly byId = new Map<string, Entry>();
  /** Per uid, its prompts in the order asked: the first is the one shown. */
  private readonly lines = new Map<number, Entry[]>();
  private readonly agents = new Map<number, Set<Agent>>();
  /** Agents by the connection that registered them (a second registration is the same agent). */
  private readonly byOwner = new WeakMap<object, AgentHandle>();
  private overflowed = 0;
  private counter = 0;
  private shownCount = 0;

  constructor(deps: PromptBrokerDeps) {
    this.publish = deps.publish;
    this.clock = deps.clock ?? systemClock;
    this.ids = deps.ids ?? (() => `p-${++this.counter}`);
    this.limits = { promptsPerUid: MAX_PROMPTS_PER_UID, agentsPerUid: MAX_AGENTS_PER_UID, ...deps.limits };
  }

  /**
   * Asks the user (see the top of this file); resolves with how it ended. `signal`: this asker
   * gives up (its connect went): it gets `gone`, and the prompt closes `gone` once no asker is left.
   */
  ask(req: AskRequest, signal?: AbortSignal): Promise<PromptOutcome> {
    if (signal?.aborted) return Promise.resolve(GONE);
    const uid = req.app.uid;
    const key = `${uid}\0${req.key}`;
    let entry = this.byKey.get(key);
    if (entry === undefined) {
      if (!this.mayBeAnswered(uid)) return Promise.resolve(NO_AGENT);
      const line = this.lines.get(uid) ?? [];
      if (line.length >= this.limits.promptsPerUid) {
        this.overflowed++;
        return Promise.resolve(OVERFLOW);
      }
      entry = this.open(req, key, line);
    }
    return this.wait(entry, signal);
  }

  /** Asks pending on `key` (the caller's key, of `uid`) close `gone` (e.g. the app went). */
  cancel(uid: number, key: string): boolean {
    const e = this.byKey.get(`${uid}\0${key}`);
    if (e === undefined) return false;
    this.finish(e, GONE);
    return true;
  }

  /**
   * Takes an answer from a client of `uid` (from SO_PEERCRED). Throws PromptError: ENOENT no
   * such prompt open (never shown, answered, expired); EPERM not the prompt's uid nor root;
   * EINVAL an uplink not among its choices, a bad scope or minutes.
   */
  answer(id: string, uid: number, answer: PromptAnswer): PromptOutcome {
    const e = this.byId.get(id);
    if (e === undefined || !e.shown) throw new PromptError('ENOENT', `no open prompt ${id} (already answered, expired, or never shown)`);
    if (uid !== 0 && uid !== e.uid) throw new PromptError('EPERM', `prompt ${id} is not yours to answer (only its user's agents and root's may)`);
    const problem = answerProblem(e.prompt, answer);
    if (problem !== undefined) throw new PromptError('EINVAL', `prompt ${id}: ${problem}`);
    const outcome: PromptOutcome = Object.freeze({ by: 'agent', uid, answer: normalised(answer) });
    this.finish(e, outcome);
    return outcome;
  }

  /**
   * Registers a prompt agent of `info.uid` for the connection `owner` (again for the same owner:
   * the same agent, its handle returned). Throws EBUSY beyond {@link MAX_AGENTS_PER_UID}.
   */
  register(owner: object, info: Omit<AgentInfo, 'since'>): { handle: AgentHandle; fresh: boolean } {
    const had = this.byOwner.get(owner);
    if (had !== undefined) return { handle: had, fresh: false };
    let set = this.agents.get(info.uid);
    if ((set?.size ?? 0) >= this.limits.agentsPerUid) {
      throw new PromptError('EBUSY', `too many prompt agents of uid ${info.uid} (at most ${this.limits.agentsPerUid})`);
    }
    if (set === undefined) this.agents.set(info.uid, (set = new Set()));
    const agent: Agent = { info: Object.freeze({ ...info, kinds: [...info.kinds], since: new Date(this.clock.now()).toISOString() }), owner, gone: false };
    set.add(agent);
    const handle: AgentHandle = { info: agent.info, unregister: () => this.unregister(agent) };
    this.byOwner.set(owner, handle);
    return { handle, fresh: true };
  }

  /** The prompts shown now that a client of `uid` may answer (its own; root: everyone's), in the order shown. */
  visible(uid: number): Prompt[] {
    const out: Entry[] = [];
    for (const [u, line] of this.lines) {
      const head = line[0];
      if ((uid === 0 || u === uid) && head?.shown === true) out.push(head);
    }
    return out.sort((a, b) => a.shownSeq - b.shownSeq).map((e) => e.prompt);
  }

  /** Prompts of `uid` waiting to be shown (root: of everyone). */
  queued(uid: number): number {
    let n = 0;
    for (const [u, line] of this.lines) if (uid === 0 || u === uid) n += line.filter((e) => !e.shown).length;
    return n;
  }

  /** The agents a client of `uid` may know of: its own (root: all). */
  agentsOf(uid: number): AgentInfo[] {
    const out: AgentInfo[] = [];
    for (const [u, set] of this.agents) if (uid === 0 || u === uid) for (const a of set) out.push(a.info);
    return out;
  }

  get stats(): PromptStats {
    let open = 0;
    let queued = 0;
    for (const line of this.lines.values()) for (const e of line) if (e.shown) open++; else queued++;
    let agents = 0;
    for (const set of this.agents.values()) agents += set.size;
    return { open, queued, agents, overflowed: this.overflowed, limits: this.limits };
  }

  /** Whether some agent may answer a prompt of `uid`: one of that uid, or of root. */
  mayBeAnswered(uid: number): boolean {
    return (this.agents.get(uid)?.size ?? 0) > 0 || (this.agents.get(0)?.size ?? 0) > 0;
  }

  /** Daemon stop: every prompt closes `gone` (its askers get the default). */
  close(): void {
    for (const line of [...this.lines.values()]) this.closeAll(line, GONE);
  }

  private finish(e: Entry, outcome: PromptOutcome): void {
    if (e.closed) return;
    e.closed = true;
    e.timer?.cancel();
    this.byKey.delete(e.key);
    this.byId.delete(e.prompt.id);
    const line = this.lines.get(e.uid) ?? [];
    const at = line.indexOf(e);
    if (at >= 0) line.splice(at, 1);
    if (line.length === 0) this.lines.delete(e.uid);
    if (e.shown) this.publish({ type: 'prompt.closed', id: e.prompt.id, uid: e.uid, outcome });
    const waiters = [...e.waiters];
    e.waiters.clear();
    for (const w of waiters) w(outcome);
    // The next of this uid's line, if the one shown closed.
    const next = line[0];
    if (next !== undefined && !next.shown) this.show(next);
  }

  private open(req: AskRequest, key: string, line: Entry[]): Entry {
    const ms = Number.isFinite(req.timeoutMs) ? Math.max(0, req.timeoutMs) : 0;
    const prompt: Prompt = Object.freeze({
      id: this.ids(), app: req.app, target: req.target, needs: req.needs, choices: req.choices, default: req.default, rule: req.rule,
      expiresAt: new Date(this.clock.now() + ms).toISOString(), held: req.held,
    });
    const entry: Entry = { prompt, key, uid: req.app.uid, shown: false, shownSeq: 0, closed: false, timer: undefined, waiters: new Set() };
    this.byKey.set(key, entry);
    this.byId.set(prompt.id, entry);
    line.push(entry);
    this.lines.set(entry.uid, line);
    entry.timer = this.clock.after(ms, () => this.finish(entry, TIMEOUT));
    if (line.length === 1) this.show(entry);
    return entry;
  }

  private show(e: Entry): void {
    e.shown = true;
    e.shownSeq = ++this.shownCount;
    this.publish({ type: 'prompt.asked', prompt: e.prompt });
  }

  private wait(e: Entry, signal: AbortSignal | undefined): Promise<PromptOutcome> {
    return new Promise((resolve) => {
      const onAbort = (): void => {
        if (!e.waiters.delete(done)) return;
        resolve(GONE);
        if (e.waiters.size === 0) this.finish(e, GONE);
      };
      const done = (o: PromptOutcome): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve(o);
      };
      e.waiters.add(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private unregister(agent: Agent): void {
    if (agent.gone) return;
    agent.gone = true;
    this.byOwner.delete(agent.owner);
    const uid = agent.info.uid;
    const set = this.agents.get(uid);
    set?.delete(agent);
    if (set?.size === 0) this.agents.delete(uid);
    // Prompts nobody may answer any more: the default, now.
    for (const [u, line] of [...this.lines]) if ((uid === 0 || u === uid) && !this.mayBeAnswered(u)) this.closeAll(line, NO_AGENT);
  }

  /** Closes a line's prompts, the queued ones first (so none is shown only to be closed). */
  private closeAll(line: readonly Entry[], outcome: PromptOutcome): void {
    for (const e of [...line].reverse()) this.finish(e, outcome);
  }
}

/** An answer as the broker reports it: only the fields that apply. */
function normalised(a: PromptAnswer): PromptAnswer {
  const choice = 'uplink' in a.choice ? { uplink: a.choice.uplink } : { deny: true as const };
  return {
    choice, scope: a.scope, ...(a.scope === 'minutes' && a.minutes !== undefined ? { minutes: a.minutes } : {}),
    ...(a.allDestinations === true ? { allDestinations: true } : {}),
  };
}
