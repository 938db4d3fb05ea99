/**
 * What "I need a connection that is ..." means in terms of uplinks. Filters remove uplinks;
 * rankings order the rest. Without measurements (health checks come later), bandwidth and
 * latency are judged by the kind of link, which is what users expect of a phone:
 * wired beats Wi-Fi beats cellular beats Bluetooth PAN beats dial-up.
 */
import type { NeedName, UplinkKind } from '../config/schema.js';
import { NEEDS } from './wire.js';
import type { UplinkSpec } from '../uplink/uplink.js';

const NEED_BITS = Object.entries(NEEDS) as [NeedName, number][];
const NO_NEEDS: readonly NeedName[] = Object.freeze([]);

/** On every decision's path: most requests carry no needs at all. */
export function needsFromMask(mask: number): readonly NeedName[] {
  if (mask === 0) return NO_NEEDS;
  return NEED_BITS.filter(([, bit]) => (mask & bit) !== 0).map(([n]) => n);
}

export function needsToMask(needs: readonly NeedName[]): number {
  return needs.reduce((m, n) => m | NEEDS[n], 0);
}

/** Needs that exclude uplinks outright. */
export function satisfiesFilters(u: UplinkSpec, needs: readonly NeedName[]): boolean {
  if (needs.includes('no-roaming') && u.roaming) return false;
  if (needs.includes('unmetered') && u.metered) return false;
  return true;
}

const BANDWIDTH: Record<UplinkKind, number> = { ethernet: 5, wifi: 4, cellular: 3, vpn: 2, bluetooth: 1, dialup: 0 };
const LATENCY: Record<UplinkKind, number> = { ethernet: 5, wifi: 4, cellular: 2, vpn: 2, bluetooth: 1, dialup: 0 };
/** A long TCP session survives best on the link that does not come and go as the user moves (the seed's chat app). */
const STABILITY: Record<UplinkKind, number> = { ethernet: 5, cellular: 4, vpn: 3, wifi: 2, bluetooth: 1, dialup: 0 };

/** Ranking needs in the order they weigh: cost first (the user pays it), then the rest. */
const RANKINGS: readonly [NeedName, (u: UplinkSpec) => number][] = [
  ['cheapest', (u) => -(u.cost.perMB + u.cost.perMinute * 1000)],
  ['long-lived', (u) => STABILITY[u.kind]],
  ['max-bandwidth', (u) => BANDWIDTH[u.kind]],
  ['low-latency', (u) => LATENCY[u.kind]],
];

/** Negative when a is better than b for these needs; ties fall to the configured preference. */
export function compareForNeeds(a: UplinkSpec, b: UplinkSpec, needs: readonly NeedName[]): number {
  for (const [need, score] of RANKINGS) {
    if (!needs.includes(need)) continue;
    const d = score(b) - score(a);
    if (d !== 0) return d;
  }
  return b.preference - a.preference;
}
