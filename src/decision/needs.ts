/**
 * What "I need a connection that is ..." means in terms of uplinks (docs/needs.md). Filters
 * remove uplinks; rankings order the rest, from what the config says of each uplink (or its
 * kind's default) and what the daemon observed of it (drops, measured RTT: src/uplink/health.ts).
 */
import type { NeedName, UplinkKind } from '../config/schema.js';
import { NEEDS } from './wire.js';
import type { UplinkState } from '../uplink/state.js';
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

/**
 * The kind's defaults, for properties the config does not give: the same order as users expect
 * of a phone (wired beats Wi-Fi beats cellular beats Bluetooth PAN beats dial-up), in the units
 * the config uses, so a configured value and a default compare.
 */
export const DEFAULT_BANDWIDTH_MBPS: Readonly<Record<UplinkKind, number>> = { ethernet: 1000, wifi: 300, cellular: 50, vpn: 20, bluetooth: 2, dialup: 0.056 };
/** Round trip to the Internet, ms (a VPN's is its carrier's plus the tunnel's: as cellular's). */
export const DEFAULT_LATENCY_MS: Readonly<Record<UplinkKind, number>> = { ethernet: 10, wifi: 20, cellular: 60, vpn: 60, bluetooth: 80, dialup: 150 };
/** A long TCP session survives best on the link that does not come and go as the user moves (the seed's chat app). */
export const DEFAULT_STABILITY: Readonly<Record<UplinkKind, number>> = { ethernet: 1, cellular: 0.8, vpn: 0.6, wifi: 0.4, bluetooth: 0.2, dialup: 0.1 };

/** What a ranking reads of an uplink: its spec and, when the daemon has them, its observations. */
export type Rankable = Pick<UplinkState, 'spec' | 'observed'>;

export const bandwidthMbps = (u: Rankable): number => u.spec.properties.bandwidthMbps ?? DEFAULT_BANDWIDTH_MBPS[u.spec.kind];

/** Measured (enough recent samples), else configured, else the kind's default; and which it is. */
export function latencyMs(u: Rankable): { readonly ms: number; readonly source: 'measured' | 'config' | 'kind' } {
  const measured = u.observed?.rttMs;
  if (measured !== undefined) return { ms: measured, source: 'measured' };
  const configured = u.spec.properties.latencyMs;
  return configured !== undefined ? { ms: configured, source: 'config' } : { ms: DEFAULT_LATENCY_MS[u.spec.kind], source: 'kind' };
}

/**
 * Configured (or the kind's) stability, halved for each drop in the last hour: a link that just
 * dropped twice is a quarter as likely to keep a session as its configuration says.
 */
export const stability = (u: Rankable): number =>
  (u.spec.properties.stability ?? DEFAULT_STABILITY[u.spec.kind]) * 0.5 ** (u.observed?.drops ?? 0);

/** Ranking needs in the order they weigh: cost first (the user pays it), then the rest. Higher is better. */
const RANKINGS: readonly [NeedName, (u: Rankable) => number][] = [
  ['cheapest', (u) => -(u.spec.cost.perMB + u.spec.cost.perMinute * 1000)],
  ['long-lived', stability],
  ['max-bandwidth', bandwidthMbps],
  ['low-latency', (u) => -latencyMs(u).ms],
];

/** Negative when a is better than b for these needs; ties fall to the configured preference. */
export function compareForNeeds(a: Rankable, b: Rankable, needs: readonly NeedName[]): number {
  for (const [need, score] of RANKINGS) {
    if (!needs.includes(need)) continue;
    const d = score(b) - score(a);
    if (d !== 0) return d;
  }
  return b.spec.preference - a.spec.preference;
}

/** Needs whose ranking observations can change (cost and the filters come from the config alone). */
const OBSERVED_NEEDS = ['long-lived', 'low-latency'] as const satisfies readonly NeedName[];

/**
 * The order each observation-dependent need puts the uplinks in (status aside): when it is the
 * same as before, no decision can have changed with the new observations.
 */
export function observedRanking(uplinks: readonly Rankable[]): string {
  return OBSERVED_NEEDS.map((n) => [...uplinks].sort((a, b) => compareForNeeds(a, b, [n])).map((u) => u.spec.name).join(',')).join(' ');
}
