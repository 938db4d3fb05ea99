/**
 * What the kernel must enforce for a session, whether or not its programs load the library:
 * the mark every new socket of the session's cgroup gets (its default uplink), and the uplink
 * devices its sockets may never leave by. Never more than the app rules allow the session
 * (sessionPolicy): an uplink the policy denies or does not list is fenced off, pinned or not.
 * Pure.
 */
import { DENY_SLOT, markForSlot } from '../constants.js';
import { decide, findUplink } from '../decision/decide.js';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { satisfiesFilters } from '../decision/needs.js';
import { allowsUplink, type AppRule } from '../policy/app.js';
import type { UplinkState } from '../uplink/state.js';
import { sessionPolicy, wishOf, type Session } from './session.js';

export interface Backstop {
  /** Mark for new sockets, or null to leave them to default routing. */
  readonly mark: number | null;
  readonly uplink: UplinkState | null;
  readonly deniedIfnames: readonly string[];
}

export function backstopFor(
  s: Session, uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[], rules: readonly AppRule[],
): Backstop {
  const app = sessionPolicy(rules, s);
  const requested = s.uplink ? findUplink(uplinks, s.uplink) : undefined;
  const needs = app ? [...new Set([...s.needs, ...app.needs])] : s.needs;
  const allowed = (u: UplinkState): boolean => allowsUplink(app, u.spec.name)
    && (requested ? u === requested : !s.deny.includes(u.spec.name) && satisfiesFilters(u.spec, needs));
  const deniedIfnames = uplinks.filter((u) => u.link && !allowed(u)).map((u) => u.link?.name ?? '');
  // A pinned uplink the policy denies (a rule added since the session began) carries nothing.
  if (requested && !allowed(requested)) return { mark: markForSlot(DENY_SLOT), uplink: null, deniedIfnames };
  if (requested) {
    // The uplink's own table answers for every destination (unreachable where it does not go).
    // While it is down, the session's sockets are denied rather than leaking elsewhere.
    return requested.status === 'active'
      ? { mark: requested.mark, uplink: requested, deniedIfnames }
      : { mark: markForSlot(DENY_SLOT), uplink: null, deniedIfnames };
  }
  // Otherwise new sockets default to the uplink the session would get for the Internet, softly:
  // a destination reachable over some uplinks only (the MMSC, the office) still goes by them.
  const d = decide({ uplinks, destinations, wish: wishOf(s), ...(app ? { app } : {}), family: 4, addr: new Uint8Array(4), learnedDestination: INTERNET });
  return d.action === 'steer' ? { mark: d.uplink.softMark, uplink: d.uplink, deniedIfnames } : { mark: null, uplink: null, deniedIfnames };
}
