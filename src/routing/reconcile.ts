/**
 * Diffing desired against observed kernel state. Only objects Waymark owns are ever compared:
 * rules stamped with our protocol inside our priority range, routes inside our tables.
 * Everything else (a neighbour's rules and routes) is invisible here, so it cannot be touched.
 */
import { isOurTable, PRIO_FALLBACK, PRIO_MAX, PRIO_MIN, RTPROT_WAYMARK } from '../constants.js';
import { RTN, type RouteMsg, type RuleMsg } from '../netlink/message.js';
import type { DesiredState } from './desired.js';

export interface Plan {
  readonly addRoutes: readonly RouteMsg[];
  readonly addRules: readonly RuleMsg[];
  readonly delRules: readonly RuleMsg[];
  readonly delRoutes: readonly RouteMsg[];
}

export function isOwnRule(r: RuleMsg): boolean {
  return r.protocol === RTPROT_WAYMARK && ((r.priority >= PRIO_MIN && r.priority <= PRIO_MAX) || r.priority === PRIO_FALLBACK);
}

export function isOwnRoute(r: RouteMsg): boolean {
  return isOurTable(r.table);
}

/** Identity of a rule as the kernel compares them (all selectors and the action). */
export function ruleKey(r: RuleMsg): string {
  return [
    r.family, r.priority, r.action, r.action === 1 ? r.table : '-',
    r.fwmark !== undefined ? `${r.fwmark}/${r.fwmask ?? 0xffffffff}` : '-',
    r.oifname ?? '-', r.src ? `${r.src}/${r.srcLen}` : '-', r.dst ? `${r.dst}/${r.dstLen}` : '-',
    r.ipProto ?? '-', r.dport ?? '-',
  ].join('|');
}

/** Identity of a route including its next hop, with kernel defaults filled in (IPv6 metric 1024). */
export function routeKey(r: RouteMsg): string {
  const unicast = r.type === RTN.UNICAST;
  return [
    r.family, r.table, r.type, r.dst ? `${r.dst}/${r.dstLen}` : 'default',
    r.metric ?? (r.family === 6 ? 1024 : 0),
    unicast ? r.gateway ?? '-' : '-', unicast ? r.oif ?? '-' : '-', unicast ? r.prefsrc ?? '-' : '-',
  ].join('|');
}

export function plan(desired: DesiredState, observedRules: readonly RuleMsg[], observedRoutes: readonly RouteMsg[]): Plan {
  const rules = diff(desired.rules, observedRules.filter(isOwnRule), ruleKey);
  const routes = diff(desired.routes, observedRoutes.filter(isOwnRoute), routeKey);
  return { addRoutes: routes.add, addRules: rules.add, delRules: rules.del, delRoutes: routes.del };
}

/** Adds what is missing; deletes what is unwanted and every duplicate of what is wanted. */
function diff<T>(want: readonly T[], have: readonly T[], key: (x: T) => string): { add: T[]; del: T[] } {
  const wanted = new Map(want.map((x) => [key(x), x]));
  const kept = new Set<string>();
  const del: T[] = [];
  for (const x of have) {
    const k = key(x);
    if (wanted.has(k) && !kept.has(k)) kept.add(k);
    else del.push(x);
  }
  return { add: [...wanted].filter(([k]) => !kept.has(k)).map(([, x]) => x), del };
}

export function isEmpty(p: Plan): boolean {
  return p.addRoutes.length + p.addRules.length + p.delRules.length + p.delRoutes.length === 0;
}
