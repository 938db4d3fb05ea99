/** Rules and routes as the equivalent `ip` command line: for logs, errors and `waymark status --verbose`. */
import { FR_ACT, RT_SCOPE, RTN, type RouteMsg, type RuleMsg } from '../netlink/message.js';

const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;

export function describeRule(r: RuleMsg): string {
  const parts = [`ip -${r.family} rule`, `pref ${r.priority}`];
  if (r.src) parts.push(`from ${r.src}/${r.srcLen}`);
  if (r.dst) parts.push(`to ${r.dst}/${r.dstLen}`);
  if (r.fwmark !== undefined) parts.push(`fwmark ${hex(r.fwmark)}/${hex(r.fwmask ?? 0xffffffff)}`);
  if (r.oifname) parts.push(`oif ${r.oifname}`);
  if (r.ipProto !== undefined) parts.push(`ipproto ${r.ipProto === 6 ? 'tcp' : r.ipProto === 17 ? 'udp' : String(r.ipProto)}`);
  if (r.dport !== undefined) parts.push(`dport ${r.dport}`);
  parts.push(r.action === FR_ACT.TO_TBL ? `lookup ${r.table}` : r.action === FR_ACT.UNREACHABLE ? 'unreachable' : `action ${r.action}`);
  parts.push(`proto ${r.protocol}`);
  return parts.join(' ');
}

export function describeRoute(r: RouteMsg, ifname?: (index: number) => string | undefined): string {
  const parts = [`ip -${r.family} route`];
  if (r.type === RTN.UNREACHABLE) parts.push('unreachable');
  parts.push(r.dst ? `${r.dst}/${r.dstLen}` : 'default');
  if (r.gateway) parts.push(`via ${r.gateway}`);
  if (r.oif !== undefined && r.type === RTN.UNICAST) parts.push(`dev ${ifname?.(r.oif) ?? `#${r.oif}`}`);
  if (r.scope === RT_SCOPE.LINK) parts.push('scope link');
  if (r.prefsrc) parts.push(`src ${r.prefsrc}`);
  if (r.metric !== undefined) parts.push(`metric ${r.metric}`);
  parts.push(`table ${r.table} proto ${r.protocol}`);
  return parts.join(' ');
}
