/**
 * The decision for one socket: which uplink (if any) a given app's traffic to a given address
 * takes. Pure. In order of precedence (issue #3; the full rule engine comes next):
 *   1. what `waymark exec` (the session) or the program asked for: an uplink, needs, denials —
 *      always a wish, checked against the config, never an override;
 *   2. the app's defaults in the config (allowed uplinks in order, denied uplinks, needs);
 *   3. the destination's uplinks (only those that reach it, are up and carry the family);
 *   4. otherwise the default route (PASS: the main table, or the destination rule).
 */
import type { NeedName } from '../config/schema.js';
import { destinationOfAddress, type DestinationSpec } from '../destination/destination.js';
import { contains, formatAddress, maskBytes, parseAddress, type Family } from '../net/prefix.js';
import { allowsUplink, type AppRule } from '../policy/app.js';
import type { UplinkState } from '../uplink/state.js';
import { compareForNeeds, satisfiesFilters } from './needs.js';

export interface Wish {
  /** An uplink by name or interface name. */
  readonly uplink?: string;
  readonly needs: readonly NeedName[];
  readonly deny: readonly string[];
  /** The destination the caller means to reach; the address must belong to it. */
  readonly destination?: string;
}

export const NO_WISH: Wish = { needs: [], deny: [] };

export type Decision =
  | { readonly action: 'pass'; readonly destination: string; readonly reason: string }
  | { readonly action: 'steer'; readonly destination: string; readonly uplink: UplinkState; readonly reason: string }
  | { readonly action: 'deny'; readonly destination: string; readonly err: 'EACCES' | 'ENETUNREACH'; readonly reason: string };

export interface DecisionInput {
  readonly uplinks: readonly UplinkState[];
  readonly destinations: readonly DestinationSpec[];
  /** What the policy says for the app, if any rule matches (policyFor in src/policy/app.ts). */
  readonly app?: AppRule;
  readonly wish: Wish;
  readonly family: Family;
  readonly addr: Uint8Array;
  /** Destination learned for this exact address (from a name resolved for a domain destination). */
  readonly learnedDestination?: string;
}

export function findUplink(uplinks: readonly UplinkState[], nameOrIf: string): UplinkState | undefined {
  return uplinks.find((u) => u.spec.name === nameOrIf) ?? uplinks.find((u) => u.link?.name === nameOrIf);
}

function carries(u: UplinkState, dest: DestinationSpec, family: Family): boolean {
  return dest.via.includes(u.spec.name) && u.status === 'active' && (u.families.find((f) => f.family === family)?.routable ?? false);
}

function onLink(u: UplinkState, family: Family, addr: Uint8Array): boolean {
  const text = formatAddress(family, addr);
  if (u.dns.includes(text)) return true;
  const fs = u.families.find((f) => f.family === family);
  return fs?.addresses.some((a) => {
    const [ip = '', len = ''] = a.split('/');
    const p = parseAddress(ip);
    return p !== undefined && contains({ family, bytes: maskBytes(p.bytes, Number(len)), len: Number(len) }, family, addr);
  }) ?? false;
}

export function decide(input: DecisionInput): Decision {
  const { uplinks, destinations, app, wish, family } = input;
  const destName = input.learnedDestination ?? destinationOfAddress(destinations, family, input.addr);
  const dest = destinations.find((d) => d.name === destName);
  if (!dest) return { action: 'pass', destination: destName, reason: 'unknown destination' };
  const deny = (err: 'EACCES' | 'ENETUNREACH', reason: string): Decision => ({ action: 'deny', destination: dest.name, err, reason });
  const steer = (u: UplinkState, reason: string): Decision => ({ action: 'steer', destination: dest.name, uplink: u, reason });

  if (wish.destination && wish.destination !== dest.name) {
    return deny('EACCES', `the address belongs to destination ${dest.name}, not ${wish.destination}`);
  }
  const appAllows = (u: UplinkState): boolean => allowsUplink(app, u.spec.name);
  const appName = app ? `app ${app.name}` : 'this app';

  if (wish.uplink) {
    const u = findUplink(uplinks, wish.uplink);
    if (!u) return deny('ENETUNREACH', `no uplink named ${wish.uplink}`);
    if (!appAllows(u) || wish.deny.includes(u.spec.name)) return deny('EACCES', `uplink ${u.spec.name} is not allowed for ${appName}`);
    // The uplink's own link and DNS servers are always reachable over it (the MMS APN's DNS is
    // on the APN, not part of the MMS destination).
    if (u.status === 'active' && onLink(u, family, input.addr)) return steer(u, 'on the uplink\'s own link');
    if (!carries(u, dest, family)) {
      return deny('ENETUNREACH', u.status === 'active' ? `uplink ${u.spec.name} does not reach ${dest.name} over IPv${family}` : `uplink ${u.spec.name} is ${u.status}`);
    }
    return steer(u, 'requested');
  }

  const needs = [...new Set([...wish.needs, ...(app?.needs ?? [])])];
  const constrained = app !== undefined || needs.length > 0 || wish.deny.length > 0;
  const carriers = uplinks.filter((u) => carries(u, dest, family));
  if (!constrained) return { action: 'pass', destination: dest.name, reason: 'default route' };
  if (carriers.length === 0) return deny('ENETUNREACH', `no uplink that reaches ${dest.name} over IPv${family} is up`);

  const permitted = (u: UplinkState): boolean => appAllows(u) && !wish.deny.includes(u.spec.name) && satisfiesFilters(u.spec, needs);
  const allowed = carriers.filter(permitted);
  if (allowed.length === 0) {
    // Uplinks the app may use for it exist but are down now (a rule's `only`): unreachable, not refused.
    const waiting = uplinks.filter((u) => dest.via.includes(u.spec.name) && permitted(u));
    if (waiting.length > 0) return deny('ENETUNREACH', `the uplinks ${appName} may use for ${dest.name} (${waiting.map((u) => u.spec.name).join(', ')}) do not carry IPv${family} now`);
  }
  if (allowed.length === 0) return deny('EACCES', `no uplink reaching ${dest.name} is allowed for ${appName}${needs.length ? ` with needs ${needs.join(',')}` : ''}`);
  const ranked = rank(allowed, app, needs);
  const best = ranked[0] as UplinkState;
  return steer(best, needs.length ? `needs ${needs.join(',')}` : `${appName} prefers it`);
}

/** Where an uplink stands in an order of preference: listed ones first, in order; the rest after them. */
function placeIn(order: readonly string[], u: UplinkState): number {
  const i = order.indexOf(u.spec.name);
  return i < 0 ? order.length : i;
}

/**
 * The allowed uplinks best first: by the rule's order (`only`'s list, else `use`'s, the others
 * after it by the needs and the configured preference) unless the program asked for a ranking
 * need (then by the needs: src/decision/needs.ts).
 */
function rank(allowed: readonly UplinkState[], app: AppRule | undefined, needs: readonly NeedName[]): UplinkState[] {
  const order = app?.uplinks ?? app?.prefer;
  if (order && !needs.some((n) => n !== 'no-roaming' && n !== 'unmetered')) {
    return [...allowed].sort((a, b) => placeIn(order, a) - placeIn(order, b) || compareForNeeds(a, b, needs));
  }
  return [...allowed].sort((a, b) => compareForNeeds(a, b, needs));
}

/** One uplink as an explanation sees it: taken (ranked `rank`, 1 the winner) or why not. */
export interface CandidateView {
  readonly uplink: string;
  readonly rank?: number;
  readonly skipped?: string;
}

/**
 * Why each uplink is or is not a candidate for this decision, in the order decide() weighs them
 * (`waymark rules explain`). Mirrors decide()'s steps for a decision without a pinned uplink.
 */
export function explainCandidates(input: DecisionInput): CandidateView[] {
  const { uplinks, destinations, app, wish, family } = input;
  const destName = input.learnedDestination ?? destinationOfAddress(destinations, family, input.addr);
  const dest = destinations.find((d) => d.name === destName);
  const needs = [...new Set([...wish.needs, ...(app?.needs ?? [])])];
  const taken: UplinkState[] = [];
  const out = new Map<string, CandidateView>();
  for (const u of uplinks) {
    const name = u.spec.name;
    let why: string | undefined;
    if (!dest || !dest.via.includes(name)) why = `does not reach ${destName}`;
    else if (u.status !== 'active') why = `is ${u.status}`;
    else if (!(u.families.find((f) => f.family === family)?.routable ?? false)) why = `carries no IPv${family}`;
    else if (app?.deny.includes(name)) why = `rule ${app.name} never uses it`;
    else if (app?.uplinks && !app.uplinks.includes(name)) why = `rule ${app.name} allows only ${app.uplinks.join(', ') || 'nothing'}`;
    else if (wish.deny.includes(name)) why = 'the program (or its session) denies it';
    else if (!satisfiesFilters(u.spec, needs)) why = `fails the needs ${needs.join(',')}`;
    if (why === undefined) taken.push(u);
    else out.set(name, { uplink: name, skipped: why });
  }
  rank(taken, app, needs).forEach((u, i) => out.set(u.spec.name, { uplink: u.spec.name, rank: i + 1 }));
  return uplinks.map((u) => out.get(u.spec.name) ?? { uplink: u.spec.name });
}
