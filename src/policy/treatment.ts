/**
 * What the kernel does to the sockets of one app, whatever the program does itself (pure): the
 * mark a new socket gets (its default uplink) and the uplinks it may never leave by. The one
 * computation behind every kernel key: `waymark exec` sessions (src/session/backstop.ts) and the
 * apps the daemon recognises from their cgroups (src/daemon/apps.ts) alike.
 *
 * Never more than the policy allows: an uplink the app's rule denies or does not list is denied,
 * and so is, for a pinned wish, every uplink but the pinned one.
 */
import { DENY_SLOT, markForSlot } from '../constants.js';
import { decide, findUplink, type Wish } from '../decision/decide.js';
import { satisfiesFilters } from '../decision/needs.js';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import type { UplinkState } from '../uplink/state.js';
import { allowsUplink, narrow, type AppRule } from './app.js';

export interface Treatment {
  /** Mark for new sockets, or null to leave them to default routing. */
  readonly mark: number | null;
  /** The uplink that mark stands for (null: none, or denied). */
  readonly uplink: UplinkState | null;
  /** Every configured uplink the sockets must never leave by (with a link or not). */
  readonly denied: readonly UplinkState[];
}

/** Nothing to do: default routing, nothing denied (an app no rule matches). */
export const UNTOUCHED: Treatment = Object.freeze({ mark: null, uplink: null, denied: Object.freeze([]) });

export function treatmentFor(
  policy: AppRule | undefined, wish: Wish, uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[],
): Treatment {
  const requested = wish.uplink ? findUplink(uplinks, wish.uplink) : undefined;
  const needs = policy ? [...new Set([...wish.needs, ...policy.needs])] : wish.needs;
  const allowed = (u: UplinkState): boolean => allowsUplink(policy, u.spec.name)
    && (requested ? u === requested : !wish.deny.includes(u.spec.name) && satisfiesFilters(u.spec, needs));
  const denied = uplinks.filter((u) => !allowed(u));
  // A pinned uplink the policy denies (a rule added since the session began) carries nothing.
  if (requested && !allowed(requested)) return { mark: markForSlot(DENY_SLOT), uplink: null, denied };
  if (requested) {
    // The uplink's own table answers for every destination (unreachable where it does not go).
    // While it is down, the sockets are denied rather than leaking elsewhere.
    return requested.status === 'active'
      ? { mark: requested.mark, uplink: requested, denied }
      : { mark: markForSlot(DENY_SLOT), uplink: null, denied };
  }
  // Otherwise new sockets default to the uplink the app would get for the Internet, softly:
  // a destination reachable over some uplinks only (the MMSC, the office) still goes by them.
  const d = decide({ uplinks, destinations, wish, ...(policy ? { app: policy } : {}), family: 4, addr: new Uint8Array(4), learnedDestination: INTERNET });
  return d.action === 'steer' ? { mark: d.uplink.softMark, uplink: d.uplink, denied } : { mark: null, uplink: null, denied };
}

/**
 * The most restrictive of several rules, as one: what an app that any of them could turn out to
 * match may do until it is known which (a new cgroup the daemon has not classified yet). Allowed:
 * only uplinks every rule allows (in the first listing rule's order); denied: what any denies;
 * needs: all of them (src/policy/app.ts: narrow). No rule: undefined (no restriction). A rule
 * that allows nothing makes every uplink denied.
 */
export function mostRestrictive(rules: readonly AppRule[]): AppRule | undefined {
  const all = narrow(rules);
  return all && rules.length > 1 ? { ...all, name: `pending(${rules.map((r) => r.name).join('|')})` } : all;
}
