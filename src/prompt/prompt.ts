/**
 * The ask prompt (pure): what a prompt shows, what an answer says, and what an answer becomes.
 * Shared by the daemon's broker (src/daemon/prompts.ts), the agent protocol (the control
 * socket's `agent.register` and `prompt.answer`, the `prompt` event topic) and every agent
 * (the terminal agent `waymark agent`, desktop notifications, later the web UI).
 *
 * A prompt is about one app (the user's, by uid) reaching one destination. Every agent of that
 * uid, and root's, sees it; the first valid answer wins and closes it everywhere.
 */
import type { NeedName } from '../config/schema.js';
import type { FixedAction } from '../policy/rules.js';

/** One uplink the user may pick, with what it costs. */
export interface PromptChoice {
  readonly uplink: string;
  readonly kind: string;
  /** Whether it is up now (a down uplink can still be chosen for later: `always`). */
  readonly status: string;
  readonly cost: { readonly perMB: number; readonly perMinute: number; readonly currency: string };
  readonly metered: boolean;
  readonly roaming: boolean;
  /** What is left of its tightest budget on this uplink, as text ("4.20 MB"); absent: no budget. */
  readonly budgetLeft?: string;
}

export interface PromptApp {
  readonly uid: number;
  readonly pid: number | null;
  /** The name `waymark apps` shows (src/policy/rules.ts: appName). */
  readonly name: string | null;
  readonly exe: string | null;
  readonly unit: string | null;
  readonly app: string | null;
  readonly flatpakId: string | null;
}

export interface PromptTarget {
  /** The destination's name ("internet", "mms", ...). */
  readonly destination: string;
  readonly address: string;
  readonly port: number;
  readonly proto: 'tcp' | 'udp';
  /** The host name the program looked up, when the library saw the lookup. */
  readonly host: string | null;
}

/** What a prompt shows (the `prompt.asked` event carries it). */
export interface Prompt {
  /** Unique per daemon run: "p-<n>". */
  readonly id: string;
  readonly app: PromptApp;
  readonly target: PromptTarget;
  readonly needs: readonly NeedName[];
  /** The uplinks that reach the destination and the rule lets the user pick, in the rule's order. */
  readonly choices: readonly PromptChoice[];
  /** What happens without an answer (the ask rule's default), in words and as an action. */
  readonly default: FixedAction;
  readonly rule: string;
  /** When it is answered by the default at the latest (ISO time). */
  readonly expiresAt: string;
  /** Whether connects wait for the answer (the library holds them) or the default applies meanwhile (a program without the library: the kernel told). */
  readonly held: boolean;
}

export const SCOPES = ['once', 'minutes', 'app', 'always'] as const;
/**
 * How long an answer holds: this connection (and those waiting with it), N minutes, until the
 * app exits (its cgroup goes, or the process for a program outside any app cgroup), or always
 * (saved as a rule in the state directory).
 */
export type Scope = (typeof SCOPES)[number];

/** An agent's answer (`prompt.answer` params, besides the prompt id). */
export interface PromptAnswer {
  /** An uplink among the prompt's choices, or deny. */
  readonly choice: { readonly uplink: string } | { readonly deny: true };
  readonly scope: Scope;
  /** For scope `minutes`: 1..1440. */
  readonly minutes?: number;
  /** For this destination only (default) or every destination of the app. */
  readonly allDestinations?: boolean;
}

/** The longest an answer "for N minutes" holds (PromptAnswer.minutes: 1..this). */
export const MAX_ANSWER_MINUTES = 1440;

/**
 * How a prompt ended (the `prompt.closed` event). Every outcome but `agent` means the rule's
 * default applies: `timeout` nobody answered in time; `no-agent` no agent may answer (none
 * registered, or the last one went); `gone` every connect waiting for it gave up; `overflow` the
 * uid had too many prompts open or queued (src/daemon/prompts.ts), this one was never shown.
 */
export type PromptOutcome =
  | { readonly by: 'agent'; readonly uid: number; readonly answer: PromptAnswer }
  | { readonly by: 'timeout' | 'no-agent' | 'gone' | 'overflow' };

/** Why an answer is not taken, or undefined when it may be (the choice among the prompt's, scope and minutes consistent). */
export function answerProblem(p: Pick<Prompt, 'choices'>, a: PromptAnswer): string | undefined {
  if ('uplink' in a.choice) {
    const u = a.choice.uplink;
    if (!p.choices.some((c) => c.uplink === u)) return `uplink ${u} is not among the prompt's choices (${p.choices.map((c) => c.uplink).join(', ') || 'none'}; or deny)`;
  }
  if (!SCOPES.includes(a.scope)) return `unknown scope ${a.scope} (${SCOPES.join(', ')})`;
  if (a.scope === 'minutes') {
    const m = a.minutes;
    if (m === undefined || !Number.isInteger(m) || m < 1 || m > MAX_ANSWER_MINUTES) return `scope minutes needs minutes: a whole number, 1 to ${MAX_ANSWER_MINUTES}`;
  } else if (a.minutes !== undefined) {
    return `minutes goes only with scope minutes (not ${a.scope})`;
  }
  return undefined;
}
