/**
 * What a prompt, or a budget event, looks like as a desktop notification (pure): summary, body,
 * action buttons, and what each button answers. src/agent/notifications.ts sends it over D-Bus.
 *
 * The buttons: one per choice, "Always via <uplink>" (scope `always`, this destination only: a
 * click saves a rule, as a phone's "allow" does, so the next connect does not ask again), and
 * "Deny this time" (scope `once`: refusing is cautious, the app may ask again later). Finer
 * answers (N minutes, until the app exits, every destination) are the terminal agent's and the
 * web UI's; {@link NotificationScopes} changes what the buttons mean.
 *
 * At most {@link DEFAULT_UPLINK_BUTTONS} uplink buttons (the first choices, in the rule's
 * order), then Deny: notification servers show only the first few actions (three is common, some
 * show two) and drop the rest silently, and Deny must not be the one dropped. The body lists
 * every choice and says where to pick the others.
 *
 * A budget event (warning, exhausted, room again: {@link budgetNotificationContent}) is a
 * notification too, without buttons: it only informs.
 */
import { basename } from 'node:path';
import { describeAction } from '../policy/rules.js';
import type { Prompt, PromptAnswer, PromptChoice, Scope } from '../prompt/prompt.js';
import { budgetSubject, localMinute, usedPercent, usedWords, type BudgetNotice, type BudgetWordsOptions } from './budget-words.js';

/** The freedesktop urgency levels (the `urgency` hint, a byte). */
export const URGENCY = { low: 0, normal: 1, critical: 2 } as const;

/** What the notification's buttons answer. */
export interface NotificationScopes {
  /** The scope of an uplink button (default `always`). */
  readonly choose: Scope;
  /** The scope of the deny button (default `once`). */
  readonly deny: Scope;
  /** For scope `minutes`. */
  readonly minutes?: number;
}

export const DEFAULT_SCOPES: NotificationScopes = { choose: 'always', deny: 'once' };

/** Uplink buttons at most, Deny besides: three buttons in all. */
export const DEFAULT_UPLINK_BUTTONS = 2;

export interface NotificationContent {
  readonly summary: string;
  readonly body: string;
  /** [key, label] per button, in order: the first choices (the rule's order), then deny. Empty without the server's "actions". */
  readonly actions: readonly (readonly [string, string])[];
  readonly urgency: number;
  /** Milliseconds until the prompt's default applies (the `expire_timeout`), at least 1. */
  readonly expireMs: number;
}

export const DENY_KEY = 'deny';
const USE_PREFIX = 'use:';

/** The name to show for the prompt's app: the one `waymark apps` shows, else its best identity. */
export function appLabel(p: Prompt): string {
  const a = p.app;
  if (a.name) return a.name;
  if (a.app) return a.app;
  if (a.flatpakId) return a.flatpakId;
  if (a.exe) return basename(a.exe);
  if (a.unit) return a.unit;
  return a.pid !== null ? `process ${a.pid}` : `an app of uid ${a.uid}`;
}

function destinationLabel(destination: string): string {
  return destination === 'internet' ? 'the Internet' : destination;
}

function scopeWords(scope: Scope, minutes: number | undefined): string {
  switch (scope) {
    case 'once': return 'this time';
    case 'minutes': return `for ${minutes ?? 10} min`;
    case 'app': return 'until it exits';
    case 'always': return 'always';
  }
}

function amount(n: number): string {
  // 0.015 stays 0.015, 0.1 + 0.2 does not show 17 digits.
  return String(Number(n.toPrecision(6)));
}

/** What a choice costs, in words: "free", "0.02 EUR/MB", "0.1 EUR/MB + 0.05 EUR/min". */
export function costWords(c: PromptChoice['cost']): string {
  const parts: string[] = [];
  if (c.perMB > 0) parts.push(`${amount(c.perMB)} ${c.currency}/MB`);
  if (c.perMinute > 0) parts.push(`${amount(c.perMinute)} ${c.currency}/min`);
  return parts.length === 0 ? 'free' : parts.join(' + ');
}

/** One line per choice: "cellular (cellular, up): 0.02 EUR/MB, metered, roaming, 120 MB left". */
export function choiceLine(c: PromptChoice): string {
  const facts = [costWords(c.cost), c.metered ? 'metered' : 'unmetered'];
  if (c.roaming) facts.push('roaming');
  if (c.budgetLeft !== undefined) facts.push(`${c.budgetLeft} left`);
  return `${c.uplink} (${c.kind}, ${c.status}): ${facts.join(', ')}`;
}

function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Escapes the characters the body markup (a subset of XML) gives a meaning to. */
export function escapeMarkup(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function uplinkLabel(uplink: string, s: NotificationScopes): string {
  return s.choose === 'always' ? `Always via ${uplink}` : `Via ${uplink} ${scopeWords(s.choose, s.minutes)}`;
}

export interface ContentOptions {
  /** The server reports "actions": show buttons (else only information). */
  readonly actions: boolean;
  /** The server reports "body-markup": the body is escaped. */
  readonly markup: boolean;
  readonly scopes?: NotificationScopes;
  /** Uplink buttons at most (default {@link DEFAULT_UPLINK_BUTTONS}). */
  readonly uplinkButtons?: number;
  /** Now, in ms since the epoch (for the time left). */
  readonly now: number;
}

/** The notification for a prompt; undefined when it has expired already (nothing to ask). */
export function notificationContent(p: Prompt, o: ContentOptions): NotificationContent | undefined {
  const expireMs = Date.parse(p.expiresAt) - o.now;
  if (!(expireMs > 0)) return undefined;
  const scopes = o.scopes ?? DEFAULT_SCOPES;
  const t = p.target;
  const where = t.host ? `${t.host} (${hostPort(t.address, t.port)} ${t.proto})` : `${hostPort(t.address, t.port)} ${t.proto}`;
  const lines = [
    `${where}, destination ${t.destination}`,
    ...p.choices.map(choiceLine),
    `Without an answer in ${Math.ceil(expireMs / 1000)} s: ${describeAction(p.default)}${p.held ? ' (the connection waits)' : ''}.`,
  ];
  const buttons = o.actions ? p.choices.slice(0, Math.max(0, o.uplinkButtons ?? DEFAULT_UPLINK_BUTTONS)) : [];
  if (!o.actions) lines.push('Answer with `waymark agent`.');
  else if (buttons.length < p.choices.length) lines.push('For the other uplinks, answer with `waymark agent`.');
  const body = lines.join('\n');
  const actions: [string, string][] = o.actions
    ? [
        ...buttons.map((c): [string, string] => [`${USE_PREFIX}${c.uplink}`, uplinkLabel(c.uplink, scopes)]),
        [DENY_KEY, `Deny ${scopeWords(scopes.deny, scopes.minutes)}`],
      ]
    : [];
  return {
    summary: `${appLabel(p)} wants ${destinationLabel(t.destination)}`,
    body: o.markup ? escapeMarkup(body) : body,
    actions,
    // A held connect is an app waiting now: the user should see it at once.
    urgency: p.held ? URGENCY.critical : URGENCY.normal,
    expireMs: Math.min(Math.ceil(expireMs), 0x7fffffff),
  };
}

/** The answer a button gives; undefined for a key that is not one of this prompt's buttons. */
export function answerFor(p: Prompt, key: string, scopes: NotificationScopes = DEFAULT_SCOPES): PromptAnswer | undefined {
  const minutes = (s: Scope): { minutes?: number } => (s === 'minutes' ? { minutes: scopes.minutes ?? 10 } : {});
  if (key === DENY_KEY) return { choice: { deny: true }, scope: scopes.deny, ...minutes(scopes.deny) };
  if (!key.startsWith(USE_PREFIX)) return undefined;
  const uplink = key.slice(USE_PREFIX.length);
  if (!p.choices.some((c) => c.uplink === uplink)) return undefined;
  return { choice: { uplink }, scope: scopes.choose, ...minutes(scopes.choose) };
}

/** What a budget event looks like as a notification: information only, no buttons. */
export interface BudgetNotificationContent {
  readonly summary: string;
  readonly body: string;
  readonly urgency: number;
  /** The `expire_timeout`: -1, the server's default (critical ones usually stay until dismissed). */
  readonly expireMs: number;
}

export interface BudgetContentOptions extends BudgetWordsOptions {
  /** The server reports "body-markup": the body is escaped. */
  readonly markup: boolean;
}

/**
 * The notification for a budget event: a warning (normal urgency), exhaustion (critical: the
 * app's traffic on that uplink stops now, unless the budget only warns), room again (low: it
 * replaces the warning or the exhaustion, src/agent/notifications.ts).
 */
export function budgetNotificationContent(n: BudgetNotice, o: BudgetContentOptions): BudgetNotificationContent {
  const app = n.app === null ? undefined : budgetSubject(n, o.viewer);
  const until = localMinute(n.periodEnd, o.tz);
  const used = `${usedWords(n)} used (budget ${n.id}).`;
  let summary: string;
  let body: string;
  let urgency: number;
  switch (n.type) {
    case 'budget.warning': {
      const pct = usedPercent(n);
      const share = pct !== undefined ? `${pct} %` : 'most';
      summary = app !== undefined ? `${app} has used ${share} of its budget on ${n.uplink}` : `${share} of the ${n.uplink} budget used`;
      body = `${used}\nResets ${until}.`;
      urgency = URGENCY.normal;
      break;
    }
    case 'budget.exhausted':
      if (n.blocked) {
        summary = app !== undefined ? `${app} is blocked on ${n.uplink}` : `${n.uplink} is blocked: its budget is used up`;
        body = `${used}\nBlocked until ${until}, or until the budget is raised or reset (\`waymark budget\`).`;
      } else {
        summary = app !== undefined ? `${app} has used up its budget on ${n.uplink}` : `The ${n.uplink} budget is used up`;
        body = `${used}\nThe budget only warns: traffic goes on. Resets ${until}.`;
      }
      urgency = URGENCY.critical;
      break;
    case 'budget.restored':
      summary = app !== undefined ? `${app} has room again on ${n.uplink}` : `${n.uplink} has room again`;
      body = `${used}\nResets ${until}.`;
      urgency = URGENCY.low;
      break;
  }
  return { summary, body: o.markup ? escapeMarkup(body) : body, urgency, expireMs: -1 };
}
