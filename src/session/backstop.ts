/**
 * What the kernel must enforce for a session, whether or not its programs load the library:
 * the mark every new socket of the session's cgroup gets (its default uplink), and the uplink
 * devices its sockets may never leave by. Pure.
 */
import { DENY_SLOT, markForSlot } from '../constants.js';
import { decide, findUplink } from '../decision/decide.js';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { satisfiesFilters } from '../decision/needs.js';
import type { UplinkState } from '../uplink/state.js';
import { wishOf, type Session } from './session.js';

export interface Backstop {
  /** Mark for new sockets, or null to leave them to default routing. */
  readonly mark: number | null;
  readonly uplink: UplinkState | null;
  readonly deniedIfnames: readonly string[];
}

export function backstopFor(s: Session, uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[]): Backstop {
  const requested = s.uplink ? findUplink(uplinks, s.uplink) : undefined;
  const allowed = (u: UplinkState): boolean =>
    requested ? u === requested : !s.deny.includes(u.spec.name) && satisfiesFilters(u.spec, s.needs);
  const deniedIfnames = uplinks.filter((u) => u.link && !allowed(u)).map((u) => u.link?.name ?? '');
  if (requested) {
    // The uplink's own table answers for every destination (unreachable where it does not go).
    // While it is down, the session's sockets are denied rather than leaking elsewhere.
    return requested.status === 'active'
      ? { mark: requested.mark, uplink: requested, deniedIfnames }
      : { mark: markForSlot(DENY_SLOT), uplink: null, deniedIfnames };
  }
  // Otherwise new sockets default to the uplink the session would get for the Internet, softly:
  // a destination reachable over some uplinks only (the MMSC, the office) still goes by them.
  const d = decide({ uplinks, destinations, wish: wishOf(s), family: 4, addr: new Uint8Array(4), learnedDestination: INTERNET });
  return d.action === 'steer' ? { mark: d.uplink.softMark, uplink: d.uplink, deniedIfnames } : { mark: null, uplink: null, deniedIfnames };
}
