/**
 * `waymark agent`: an interactive prompt agent in a terminal (docs/prompts.md). It registers
 * with waymarkd (`agent.register`), shows each prompt of its user (root: of everyone) one at a
 * time, and answers with single keys:
 *
 *   1-9  that uplink          d  deny                 *  for all destinations of the app (toggle)
 *   then how long: o this connection, m N minutes (digits, Enter; 10 without any), x until the
 *   app exits, a always.  Enter: once.  Esc: back a step; on the first step, leave this prompt
 *   to other agents and the timeout (its default applies).  q or Ctrl-C: quit.
 *
 * On a terminal the keys act at once (raw mode) and the last line counts the seconds down.
 * Without one (stdin a pipe or file) each input line is one answer in the same keys ("1a",
 * "2 m 30", "d o"), taken by the prompts in the order they are shown; at the end of the input
 * the agent exits once its lines are used. `--json`: events out and answers in as JSON lines.
 * When another agent answered, or the prompt timed out, it says so and moves on. A budget event
 * of the user (warning, exhausted, room again) is one line, printed above the prompt's last line
 * on a terminal (src/agent/budget-words.ts). Exits 0 on q,
 * Ctrl-C, SIGINT or SIGTERM; 69 when waymarkd is not there or goes away.
 */
import { createInterface, type Interface } from 'node:readline';
import { budgetLine } from '../agent/budget-words.js';
import { Client, DaemonError, DaemonUnavailable } from '../daemon/client.js';
import type { DaemonEvent } from '../daemon/events.js';
import { METHODS } from '../daemon/protocol.js';
import { describeAction } from '../policy/rules.js';
import { MAX_ANSWER_MINUTES, type Prompt, type PromptAnswer, type PromptChoice, type PromptOutcome } from '../prompt/prompt.js';
import { errorMessage } from '../errors.js';

/** EX_UNAVAILABLE: the daemon is not there (any more). */
const EXIT_UNAVAILABLE = 69;
export const DEFAULT_MINUTES = 10;
/** Choices numbered 1-9 (more are listed, not numbered). */
const NUMBERED = 9;

// ---------------------------------------------------------------------------------------------
// Words (pure)

export function describeAnswer(a: PromptAnswer): string {
  const what = 'uplink' in a.choice ? a.choice.uplink : 'deny';
  const scope = a.scope === 'once' ? 'this connection' : a.scope === 'minutes' ? `for ${a.minutes ?? DEFAULT_MINUTES} minutes`
    : a.scope === 'app' ? 'until the app exits' : 'always';
  return `${what}, ${scope}${a.allDestinations === true ? ', all destinations' : ''}`;
}

function cost(c: PromptChoice): string {
  const parts: string[] = [];
  if (c.cost.perMB > 0) parts.push(`${c.cost.perMB} ${c.cost.currency}/MB`);
  if (c.cost.perMinute > 0 || c.kind === 'dialup') parts.push(`${c.cost.perMinute} ${c.cost.currency}/min`);
  return parts.length > 0 ? parts.join(' + ') : 'free';
}

const destinationWords = (d: string): string => (d === 'internet' ? 'the Internet' : d);

export function secondsLeft(p: Prompt, now: number): number {
  return Math.max(0, Math.ceil((Date.parse(p.expiresAt) - now) / 1000));
}

/** A prompt as the terminal shows it (lines without newlines). */
export function formatPrompt(p: Prompt, now: number): string[] {
  const a = p.app;
  const name = a.name ?? (a.exe ? a.exe.slice(a.exe.lastIndexOf('/') + 1) : 'a program');
  const t = p.target;
  const addr = t.address.includes(':') ? `[${t.address}]` : t.address;
  const ids = [a.exe && `exe ${a.exe}`, a.unit && `unit ${a.unit}`, a.app && `app ${a.app}`, a.flatpakId && `flatpak ${a.flatpakId}`].filter((x) => typeof x === 'string' && x !== '');
  const lines = [
    `Prompt ${p.id}: ${name} wants to reach ${destinationWords(t.destination)}`,
    `  app      ${name} (uid ${a.uid}${a.pid !== null ? `, pid ${a.pid}` : ''})`,
    ...(ids.length > 0 ? [`           ${ids.join(' · ')}`] : []),
    `  to       ${t.host !== null ? `${t.host} → ` : ''}${addr} port ${t.port}/${t.proto} (destination ${t.destination})`,
    ...(p.needs.length > 0 ? [`  needs    ${p.needs.join(', ')}`] : []),
    `  rule     ${p.rule}${p.held ? ' (the connection waits for the answer)' : ' (the default applies until answered)'}`,
    '  uplinks',
  ];
  const w = (f: (c: PromptChoice) => string): number => Math.max(0, ...p.choices.map((c) => f(c).length));
  const [wu, wk, ws] = [w((c) => c.uplink), w((c) => c.kind), w((c) => c.status)];
  p.choices.forEach((c, i) => {
    const facts = [cost(c), c.metered ? 'metered' : 'unmetered', ...(c.roaming ? ['roaming'] : []), ...(c.budgetLeft !== undefined ? [`budget left ${c.budgetLeft}`] : [])];
    lines.push(`    ${i < NUMBERED ? String(i + 1) : ' '}  ${c.uplink.padEnd(wu)}  ${c.kind.padEnd(wk)}  ${c.status.padEnd(ws)}  ${facts.join(' · ')}`);
  });
  if (p.choices.length === 0) lines.push('    (no uplink to choose: only deny)');
  lines.push('    d  deny');
  lines.push(`  default  ${describeAction(p.default)}, in ${secondsLeft(p, now)} s without an answer`);
  return lines;
}

export function describeOutcome(p: Pick<Prompt, 'id' | 'default'>, o: PromptOutcome, mine: boolean): string {
  switch (o.by) {
    case 'agent': return mine ? `${p.id}: answered: ${describeAnswer(o.answer)}` : `${p.id}: answered by another agent (uid ${o.uid}): ${describeAnswer(o.answer)}`;
    case 'timeout': return `${p.id}: timed out; the default applies (${describeAction(p.default)})`;
    case 'no-agent': return `${p.id}: closed, no agent may answer; the default applies (${describeAction(p.default)})`;
    case 'gone': return `${p.id}: closed, the app stopped waiting`;
    case 'overflow': return `${p.id}: closed, too many prompts; the default applies`;
  }
}

// ---------------------------------------------------------------------------------------------
// Keys (pure)

/** One character typed, or one of: enter, escape, backspace, interrupt (Ctrl-C), eof (Ctrl-D). */
export type Key = string;
export type Stage = 'choice' | 'scope' | 'minutes' | 'sent';
export type KeyResult =
  | { readonly kind: 'none' }
  /** The stage changed (or what it shows): show its line anew. */
  | { readonly kind: 'redraw' }
  | { readonly kind: 'say'; readonly text: string }
  | { readonly kind: 'answer'; readonly answer: PromptAnswer }
  /** Esc on the first step: this prompt is left to other agents and its timeout. */
  | { readonly kind: 'leave' }
  | { readonly kind: 'quit' };

const NONE: KeyResult = { kind: 'none' };
const REDRAW: KeyResult = { kind: 'redraw' };

/** The keys of one prompt's answer, step by step (the top of this file). */
export class AnswerKeys {
  stage: Stage = 'choice';
  /** The uplink picked; null: deny; undefined: not yet. */
  private uplink: string | null | undefined;
  private allDestinations = false;
  private minutes = '';

  constructor(readonly prompt: Prompt) {}

  /** Whether the answer is made (and sent, or being sent). */
  get answered(): boolean {
    return this.stage === 'sent';
  }

  /** What the current step asks, in one line. */
  hint(): string {
    const all = `* all destinations: ${this.allDestinations ? 'yes' : 'no'}`;
    const n = Math.min(NUMBERED, this.prompt.choices.length);
    switch (this.stage) {
      case 'choice': return `${n > 0 ? `[1-${n}] uplink, ` : ''}d deny, ${all}, Esc leave it, q quit`;
      case 'scope': return `${this.uplink ?? 'deny'}: o this connection, m minutes, x until the app exits, a always (Enter: o), ${all}, Esc back`;
      case 'minutes': return `${this.uplink ?? 'deny'} for how many minutes (1-${MAX_ANSWER_MINUTES}, Enter: ${DEFAULT_MINUTES}): ${this.minutes}`;
      case 'sent': return 'sent; waiting for the daemon';
    }
  }

  /** Back to the first step (an answer was refused). */
  reset(): void {
    this.stage = 'choice';
    this.uplink = undefined;
    this.minutes = '';
  }

  key(k: Key): KeyResult {
    if (k === 'interrupt' || k === 'eof' || (k === 'q' && this.stage !== 'minutes')) return { kind: 'quit' };
    if (k === '*' && (this.stage === 'choice' || this.stage === 'scope')) {
      this.allDestinations = !this.allDestinations;
      return REDRAW;
    }
    switch (this.stage) {
      case 'choice': {
        if (k === 'escape') return { kind: 'leave' };
        if (k === 'd') return this.picked(null);
        const n = /^[1-9]$/.test(k) ? Number(k) : 0;
        const c = n > 0 ? this.prompt.choices[n - 1] : undefined;
        return c !== undefined ? this.picked(c.uplink) : NONE;
      }
      case 'scope':
        switch (k) {
          case 'escape':
            this.stage = 'choice';
            this.uplink = undefined;
            return REDRAW;
          case 'o':
          case 'enter': return this.answer('once');
          case 'x': return this.answer('app');
          case 'a': return this.answer('always');
          case 'm':
            this.stage = 'minutes';
            this.minutes = '';
            return REDRAW;
          default: return NONE;
        }
      case 'minutes': {
        if (k === 'escape') {
          this.stage = 'scope';
          return REDRAW;
        }
        if (k === 'backspace') {
          this.minutes = this.minutes.slice(0, -1);
          return REDRAW;
        }
        if (/^[0-9]$/.test(k) && this.minutes.length < 4) {
          this.minutes += k;
          return REDRAW;
        }
        if (k !== 'enter') return NONE;
        const m = this.minutes === '' ? DEFAULT_MINUTES : Number(this.minutes);
        if (m < 1 || m > MAX_ANSWER_MINUTES) {
          this.minutes = '';
          return { kind: 'say', text: `minutes: 1 to ${MAX_ANSWER_MINUTES}` };
        }
        return this.answer('minutes', m);
      }
      case 'sent': return NONE;
    }
  }

  private picked(uplink: string | null): KeyResult {
    this.uplink = uplink;
    this.stage = 'scope';
    return REDRAW;
  }

  private answer(scope: PromptAnswer['scope'], minutes?: number): KeyResult {
    this.stage = 'sent';
    const choice = this.uplink === null || this.uplink === undefined ? { deny: true as const } : { uplink: this.uplink };
    return {
      kind: 'answer',
      answer: { choice, scope, ...(minutes !== undefined ? { minutes } : {}), ...(this.allDestinations ? { allDestinations: true } : {}) },
    };
  }
}

/** A chunk of terminal input as keys (an escape sequence such as an arrow key is no key here). */
export function keysOf(chunk: string): Key[] {
  if (chunk === '\x1b') return ['escape'];
  if (chunk.startsWith('\x1b')) return [];
  const out: Key[] = [];
  for (const ch of chunk) {
    if (ch === '\r' || ch === '\n') out.push('enter');
    else if (ch === '\x03') out.push('interrupt');
    else if (ch === '\x04') out.push('eof');
    else if (ch === '\x7f' || ch === '\b') out.push('backspace');
    else if (ch === '\x1b') out.push('escape');
    else if (ch !== ' ' && ch !== '\t') out.push(ch);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The agent

export interface AgentOptions {
  readonly json: boolean;
  readonly name: string;
}

interface Io {
  readonly input: NodeJS.ReadStream;
  readonly output: NodeJS.WriteStream;
  readonly errors: NodeJS.WriteStream;
}

/** Runs the agent until quit (0) or the daemon goes (69). */
export async function runAgent(socket: string, o: AgentOptions, io: Io = { input: process.stdin, output: process.stdout, errors: process.stderr }): Promise<number> {
  const agent = new TerminalAgent(new Client(socket), o, io);
  return agent.run();
}

class TerminalAgent {
  /** Prompts to show, in the order they came; the first is shown. */
  private readonly prompts = new Map<string, Prompt>();
  private keys: AnswerKeys | undefined;
  /** What was answered here, by prompt id. */
  private readonly sent = new Map<string, PromptAnswer>();
  /** Input lines waiting for a prompt (without a terminal). */
  private readonly lines: string[] = [];
  private inputEnded = false;
  private busy = 0;
  private readonly tty: boolean;
  private ticker: NodeJS.Timeout | undefined;
  private rl: Interface | undefined;
  private done: (code: number) => void = () => undefined;
  private finished = false;
  private readonly uid = process.getuid?.() ?? -1;

  constructor(private readonly client: Client, private readonly o: AgentOptions, private readonly io: Io) {
    this.tty = !o.json && io.input.isTTY && io.output.isTTY;
  }

  async run(): Promise<number> {
    const result = new Promise<number>((resolve) => (this.done = resolve));
    const onSignal = (): void => this.finish(0);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let registered = false;
    this.client.listen((e) => this.onEvent(e), (why) => {
      if (registered) this.finish(EXIT_UNAVAILABLE, `${why}; no more prompts`);
    });
    try {
      const r = await this.client.call('agent.register', { name: this.o.name });
      registered = true;
      if (this.o.json) this.json({ type: 'agent.registered', agent: r.agent, queued: r.queued });
      else this.io.errors.write(`waymark agent: waiting for prompts ${this.uid === 0 ? 'of every user' : `of uid ${this.uid}`} (and budget notices); q or Ctrl-C to quit\n`);
      for (const p of r.prompts) this.add(p);
    } catch (e) {
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
      this.client.close();
      if (e instanceof DaemonUnavailable || e instanceof DaemonError) {
        this.io.errors.write(`waymark: ${e.message}${e instanceof DaemonError ? ` [${e.code}]` : ''}\n`);
        return EXIT_UNAVAILABLE;
      }
      throw e;
    }
    this.startInput();
    const code = await result;
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    return code;
  }

  private finish(code: number, why?: string): void {
    if (this.finished) return;
    this.finished = true;
    if (this.ticker) clearInterval(this.ticker);
    if (this.tty) {
      this.io.input.setRawMode?.(false);
      this.io.output.write('\n');
    }
    this.rl?.close();
    this.io.input.pause();
    this.io.input.removeAllListeners('data');
    this.client.close();
    if (why !== undefined) this.io.errors.write(`waymark: ${why}\n`);
    this.done(code);
  }

  private onEvent(e: DaemonEvent): void {
    if (this.finished) return;
    if (e.type === 'prompt.asked') {
      if (this.o.json) this.json(e);
      this.add(e.prompt);
    } else if (e.type === 'prompt.closed') {
      if (this.o.json) this.json(e);
      this.closed(e.id, e.outcome);
    } else if (e.type === 'budget.warning' || e.type === 'budget.exhausted' || e.type === 'budget.restored') {
      if (this.o.json) this.json(e);
      else this.notice(budgetLine(e, { viewer: this.uid }));
    } else if (e.type === 'events.lost') {
      // Prompts may have come or gone meanwhile: ask the daemon which are open.
      void this.resync();
    }
  }

  private async resync(): Promise<void> {
    try {
      const r = await this.client.call('prompts');
      const open = new Set(r.prompts.map((p) => p.id));
      for (const id of [...this.prompts.keys()]) if (!open.has(id)) this.closed(id, undefined);
      for (const p of r.prompts) if (!this.prompts.has(p.id)) this.add(p);
    } catch (e) {
      this.io.errors.write(`waymark: cannot list the open prompts: ${errorMessage(e)}\n`);
    }
  }

  private add(p: Prompt): void {
    if (this.prompts.has(p.id)) return;
    this.prompts.set(p.id, p);
    if (this.keys === undefined) this.showNext();
  }

  private get current(): Prompt | undefined {
    return this.keys?.prompt;
  }

  private closed(id: string, outcome: PromptOutcome | undefined): void {
    const p = this.prompts.get(id);
    if (p === undefined) return;
    this.prompts.delete(id);
    const answer = this.sent.get(id);
    this.sent.delete(id);
    if (this.current?.id !== id) return; // not shown here yet: nothing to say
    this.keys = undefined;
    if (!this.o.json && outcome !== undefined) {
      const mine = outcome.by === 'agent' && answer !== undefined && outcome.uid === this.uid && describeAnswer(outcome.answer) === describeAnswer(answer);
      this.say(describeOutcome(p, outcome, mine));
    } else if (!this.o.json) {
      this.say(`${id}: closed`);
    }
    this.showNext();
  }

  private showNext(): void {
    const next = this.prompts.values().next();
    if (next.done) {
      this.keys = undefined;
      if (this.ticker) clearInterval(this.ticker);
      this.ticker = undefined;
      this.maybeEnd();
      return;
    }
    const p = next.value;
    this.keys = new AnswerKeys(p);
    if (!this.o.json) {
      this.io.output.write(`${this.tty ? '\n' : ''}${formatPrompt(p, Date.now()).join('\n')}\n`);
      this.status(true);
      if (this.tty && this.ticker === undefined) this.ticker = setInterval(() => this.status(false), 1000);
    }
    this.feedLine();
  }

  /** The current step's line; on a terminal rewritten in place with the seconds left. */
  private status(fresh: boolean): void {
    const k = this.keys;
    if (k === undefined || this.o.json) return;
    // The seconds first: the cursor stays where the minutes are typed.
    const line = `[${secondsLeft(k.prompt, Date.now())} s] ${k.hint()}`;
    if (this.tty) this.io.output.write(`${fresh ? '' : '\r\x1b[K'}${line}`);
    else if (fresh) this.io.output.write(`${line}\n`);
  }

  private say(text: string): void {
    this.io.output.write(`${this.tty ? '\r\x1b[K' : ''}${text}\n`);
  }

  /** A line that is no part of the prompt shown (a budget event): above its last line, which is drawn again. */
  private notice(text: string): void {
    this.say(text);
    if (this.tty) this.status(true);
  }

  private startInput(): void {
    const input = this.io.input;
    if (this.tty) {
      input.setRawMode?.(true);
      // Whatever ends the process, the terminal is given back as it was.
      process.once('exit', () => input.setRawMode?.(false));
      input.setEncoding('utf8');
      input.on('data', (chunk: string) => {
        for (const k of keysOf(chunk)) this.key(k);
      });
      input.on('end', () => this.finish(0));
      return;
    }
    const rl = createInterface({ input, crlfDelay: Infinity });
    this.rl = rl;
    rl.on('line', (l) => {
      if (l.trim() === '') return;
      this.lines.push(l);
      if (this.o.json) void this.jsonAnswer();
      else this.feedLine();
    });
    rl.on('close', () => {
      this.inputEnded = true;
      this.maybeEnd();
    });
  }

  /** Without a terminal: the next input line answers the current prompt. */
  private feedLine(): void {
    const keys = this.keys;
    if (this.tty || this.o.json || keys === undefined || keys.stage === 'sent') return;
    const l = this.lines.shift();
    if (l === undefined) {
      this.maybeEnd();
      return;
    }
    for (const k of [...keysOf(l), 'enter']) {
      this.key(k);
      if (this.finished || this.keys !== keys || keys.answered) return;
    }
    this.say(`${keys.prompt.id}: no answer in "${l}" (1-9 or d, then o, m [minutes], x or a)`);
    this.feedLine();
  }

  /**
   * At the end of the input (no terminal): done once every line was used and each answer sent
   * here was closed (so its outcome is shown).
   */
  private maybeEnd(): void {
    if (this.tty || !this.inputEnded || this.busy > 0 || this.lines.length > 0 || this.sent.size > 0) return;
    this.finish(0);
  }

  private key(k: Key): void {
    const keys = this.keys;
    if (keys === undefined) {
      if (k === 'q' || k === 'interrupt' || k === 'eof') this.finish(0);
      return;
    }
    const r = keys.key(k);
    switch (r.kind) {
      case 'none': return;
      case 'quit': return this.finish(0);
      case 'redraw':
        if (this.tty) this.io.output.write('\r\x1b[K');
        this.status(true);
        return;
      case 'say':
        this.say(r.text);
        this.status(true);
        return;
      case 'leave':
        this.say(`${keys.prompt.id}: left to other agents and its timeout`);
        this.prompts.delete(keys.prompt.id);
        this.keys = undefined;
        this.showNext();
        return;
      case 'answer':
        this.say(`→ ${describeAnswer(r.answer)}`);
        void this.send(keys, r.answer);
        return;
    }
  }

  private async send(keys: AnswerKeys, answer: PromptAnswer): Promise<void> {
    const id = keys.prompt.id;
    this.sent.set(id, answer);
    this.busy++;
    try {
      await this.client.call('prompt.answer', { id, ...answer });
    } catch (e) {
      this.sent.delete(id);
      if (e instanceof DaemonError && e.code === 'ENOENT') {
        this.say(`${id}: too late, it is closed already`);
      } else if (this.keys === keys) {
        this.say(`${id}: not taken: ${errorMessage(e)}`);
        keys.reset();
        this.status(true);
      }
    } finally {
      this.busy--;
      this.maybeEnd();
    }
  }

  private json(o: object): void {
    this.io.output.write(JSON.stringify(o) + '\n');
  }

  /** --json: each input line is prompt.answer's params; each reply a line. */
  private async jsonAnswer(): Promise<void> {
    const l = this.lines.shift();
    if (l === undefined) return;
    this.busy++;
    try {
      const params = METHODS['prompt.answer'].params.safeParse(JSON.parse(l));
      if (!params.success) throw new Error(`not an answer (${params.error.issues.map((i) => `${i.path.join('.') || 'line'}: ${i.message}`).join('; ')}): {"id":…,"choice":{"uplink":…} or {"deny":true},"scope":…}`);
      // Until its prompt.closed: the agent does not end before printing it.
      const { id, ...answer } = params.data;
      if (this.prompts.has(id)) this.sent.set(id, answer);
      try {
        const r = await this.client.call('prompt.answer', params.data);
        this.json({ type: 'answer.ok', ...r });
      } catch (e) {
        this.sent.delete(id);
        throw e;
      }
    } catch (e) {
      this.json({ type: 'answer.error', ...(e instanceof DaemonError ? { code: e.code } : {}), message: errorMessage(e) });
    } finally {
      this.busy--;
      this.maybeEnd();
    }
  }
}
