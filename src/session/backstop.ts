/**
 * What the kernel must enforce for a session, whether or not its programs load the library:
 * the mark every new socket of the session's cgroup gets (its default uplink), and the uplink
 * devices its sockets may never leave by. Never more than the app rules allow the session
 * (sessionPolicy): an uplink the policy denies or does not list is fenced off, pinned or not.
 * Pure; the computation itself is the one every app's is (src/policy/treatment.ts).
 */
import type { DestinationSpec } from '../destination/destination.js';
import type { RuleSet } from '../policy/rules.js';
import { treatmentFor } from '../policy/treatment.js';
import type { UplinkState } from '../uplink/state.js';
import { sessionPolicy, wishOf, type Session } from './session.js';

export interface Backstop {
  /** Mark for new sockets, or null to leave them to default routing. */
  readonly mark: number | null;
  readonly uplink: UplinkState | null;
  readonly deniedIfnames: readonly string[];
}

export function backstopFor(
  s: Session, uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[], rules: RuleSet,
): Backstop {
  const t = treatmentFor(sessionPolicy(rules, s), wishOf(s), uplinks, destinations);
  return { mark: t.mark, uplink: t.uplink, deniedIfnames: t.denied.flatMap((u) => (u.link ? [u.link.name] : [])) };
}
