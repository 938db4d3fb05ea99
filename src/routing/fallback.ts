/**
 * The Internet fallback: where a program with no rule of its own (no mark, no device binding,
 * no library) goes when the main table has no default route. Pure: a function of the observed
 * main-table routes and the uplinks, used both by the rule ladder (desired.ts: the rules at
 * PRIO_FALLBACK) and by the world (World.mainDefault: where unmarked traffic leaves, which the
 * app BPF programs predict from), so the two can never disagree.
 *
 * The decision: while main holds a default of either family (a connection manager's, or an
 * administrator's `unreachable default`), main is in charge and there is no fallback at all: we
 * neither take the default away nor start sending the other family over a different (maybe
 * metered) uplink. Once main holds none, each family goes by the Internet destination's best
 * active uplink (bestUplink), through that uplink's own table, looked up by a rule placed after
 * main's (see PRIO_FALLBACK in constants.ts).
 */
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { RTN, type RouteMsg } from '../netlink/message.js';
import type { Family } from '../net/prefix.js';
import type { UplinkState } from '../uplink/state.js';
import { bestUplink } from './desired.js';

export const MAIN_TABLE = 254;

/** The uplink carrying unmarked Internet traffic per family while main holds no default; absent: none. */
export interface Fallback {
  readonly v4?: UplinkState;
  readonly v6?: UplinkState;
}

const isMainDefault = (r: RouteMsg): boolean => r.table === MAIN_TABLE && r.dstLen === 0;

/** Main holds a default route of some family (of any type: unicast, unreachable, blackhole, prohibit). */
export function mainHoldsDefault(routes: readonly RouteMsg[]): boolean {
  return routes.some(isMainDefault);
}

/** The device of main's lowest-metric unicast default of a family, or null. */
export function mainDefaultOif(routes: readonly RouteMsg[], family: Family): number | null {
  let best: RouteMsg | undefined;
  for (const r of routes) {
    if (!isMainDefault(r) || r.family !== family || r.type !== RTN.UNICAST || r.oif === undefined) continue;
    if (!best || (r.metric ?? 0) < (best.metric ?? 0)) best = r;
  }
  return best?.oif ?? null;
}

/** The fallback uplinks: none while main holds a default, else the Internet's best active uplink per family. */
export function fallbackUplinks(routes: readonly RouteMsg[], uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[]): Fallback {
  if (mainHoldsDefault(routes)) return {};
  const internet = destinations.find((d) => d.name === INTERNET);
  if (!internet) return {};
  const pick = (f: Family): UplinkState | undefined => {
    const u = bestUplink(uplinks, internet, f);
    return u?.link ? u : undefined;
  };
  const v4 = pick(4);
  const v6 = pick(6);
  return { ...(v4 ? { v4 } : {}), ...(v6 ? { v6 } : {}) };
}

/**
 * The interface unmarked traffic's default leaves by, per family: main's default while it holds
 * one, else the fallback uplink's; null: none (connects fail with ENETUNREACH).
 */
export function unmarkedEgress(routes: readonly RouteMsg[], uplinks: readonly UplinkState[], destinations: readonly DestinationSpec[]): { v4: number | null; v6: number | null } {
  if (mainHoldsDefault(routes)) return { v4: mainDefaultOif(routes, 4), v6: mainDefaultOif(routes, 6) };
  const fb = fallbackUplinks(routes, uplinks, destinations);
  return { v4: fb.v4?.link?.index ?? null, v6: fb.v6?.link?.index ?? null };
}
