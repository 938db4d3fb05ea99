/** `waymark status` as a readable report. */
import type { ConnectionLimits, ConnectionStats } from '../daemon/limits.js';
import type { StatusResult } from '../daemon/protocol.js';
import { renderTable } from './table.js';

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  do { v /= 1024; u++; } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(1)} ${units[u]}`;
}

export function formatStatus(s: StatusResult): string {
  const uplinks = renderTable(
    ['UPLINK', 'KIND', 'STATE', 'DEVICE', 'ADDRESSES', 'GATEWAY', 'DNS', 'COST/MB', 'METERED', 'TABLE', 'MARK', 'TX/RX', 'SEEN'],
    s.uplinks.map((u) => [
      u.name + (u.roaming ? ' (roaming)' : ''),
      u.kind,
      u.status,
      u.ifname ?? '-',
      u.addresses.join(' ') || '-',
      [u.gateways.ipv4, u.gateways.ipv6].filter(Boolean).join(' ') || '-',
      u.dns.servers.length ? u.dns.servers.join(' ') + (u.dns.source === 'config' ? '' : ` (${u.dns.source})`) : '-',
      `${u.cost.perMB} ${u.cost.currency}` + (u.cost.perMinute ? ` +${u.cost.perMinute}/min` : ''),
      u.metered ? 'yes' : 'no',
      String(u.table),
      u.mark,
      u.traffic ? `${bytes(u.traffic.txBytes)}/${bytes(u.traffic.rxBytes)}` : '-',
      seen(u),
    ]),
  );
  const destinations = renderTable(
    ['DESTINATION', 'PREFIXES', 'DOMAINS', 'VIA', 'NOW (v4 / v6)'],
    s.destinations.map((d) => [
      d.name,
      d.prefixes.join(' ') || (d.name === 'internet' ? '(everything else)' : '-'),
      d.domains.join(' ') || '-',
      d.via.join(',') || '-',
      d.name === 'internet' && !d.fallback ? '(main table)'
        : `${d.active.ipv4 ?? '-'} / ${d.active.ipv6 ?? '-'}${d.fallback ? ' (fallback: main has no default)' : ''}`,
    ]),
  );
  const sessions = s.sessions && s.sessions.length > 0
    ? '\n\n' + renderTable(['SESSION', 'UID', 'UPLINK', 'NEEDS', 'DENY', 'COMMAND'], s.sessions.map((x) => [
      x.id, String(x.uid), x.uplink ?? '-', x.needs.join(',') || '-', x.deny.join(',') || '-', x.command.slice(0, 40),
    ]))
    : '';
  const r = s.lastReconcile;
  const footer = `waymarkd ${s.daemon.version} pid ${s.daemon.pid}, config ${s.daemon.configPath} (generation ${s.daemon.generation})`
    + (r ? `; last reconcile ${r.at} in ${r.durationMs} ms${r.errors.length ? `, ${r.errors.length} errors:\n  ${r.errors.join('\n  ')}` : ''}` : '');
  const d = s.decisions;
  const decisions = d
    ? `\ndecide socket: ${d.clients} connections, ${d.requests} requests`
      + (d.malformed || d.rejected || d.handlerErrors || d.droppedReplies
        ? ` (${d.malformed} malformed, ${count(d.rejected, 'refused connection')}, ${d.handlerErrors} handler errors, ${d.droppedReplies} answers dropped)`
        : '')
      + (d.pausedClients ? `; ${d.pausedClients} connections waiting for ${d.inflight} pending answers` : '')
      + refusals(d.rejected, d.refusedByUid, d.limits)
    : '';
  const c = s.control;
  const control = c
    ? `\ncontrol socket: ${c.clients} connections` + (c.pausedClients ? `, ${c.pausedClients} not read until they take their replies` : '') + refusals(c.refused, c.refusedByUid, c.limits)
    : '';
  const ev = s.events;
  const events = ev && (ev.subscribers > 0 || ev.dropped > 0)
    ? `\nevents: ${ev.subscribers} watchers` + (ev.dropped ? `, ${ev.dropped} events dropped for watchers that fell behind (at most ${ev.queueLimit} queued each)` : '')
    : '';
  const pr = s.prompts;
  const prompts = pr && (pr.agents > 0 || pr.open > 0 || pr.queued > 0 || pr.overflowed > 0)
    ? `\nprompts: ${count(pr.agents, 'agent')}, ${pr.open} open, ${pr.queued} queued`
      + (pr.overflowed ? `, ${count(pr.overflowed, 'ask')} given the default at once (more than ${pr.limits.promptsPerUid} prompts of one user)` : '')
    : '';
  const a = s.apps;
  const apps = a
    ? `\napps: ${count(a.apps, 'app')} in ${count(a.cgroups, 'cgroup')} under ${a.cgroupRoot}, `
      + (a.active ? 'steered in the kernel (waymark apps)' : `NOT steered in the kernel: ${a.reason ?? 'unknown'}`)
    : '';
  return `${uplinks}\n${facts(s)}\n${destinations}${sessions}\n\n${footer}${decisions}${control}${events}${prompts}${apps}\n`;
}

/**
 * Where each uplink's facts came from, and what the device's services say:
 *   "cellular: interface wwan0 by APN internet (modemmanager), DNS modemmanager, metered networkmanager, roaming modemmanager, SIM modemmanager"
 *   "system bus connected: ModemManager yes, NetworkManager no, resolved no; SIM 8949... (26201, modemmanager); profile travel (sim)"
 */
export function facts(s: StatusResult): string {
  const lines = s.uplinks.flatMap((u) => {
    const src = u.sources;
    if (!src) return [];
    const iface = u.apn ? `interface ${u.ifname ?? '-'} by APN ${u.apn} (${src.match})` : `interface ${u.ifname ?? '-'} (${src.match})`;
    const sim = u.sim ? `, SIM ${u.sim.iccid} (${src.sim})` : '';
    return [`  ${u.name}: ${iface}, DNS ${u.dns.source}, metered ${u.metered ? 'yes' : 'no'} (${src.metered}), roaming ${u.roaming ? 'yes' : 'no'} (${src.roaming})${sim}`];
  });
  const sys = s.system;
  const yes = (b: boolean): string => (b ? 'yes' : 'no');
  const system = sys
    ? `system bus ${sys.bus}: ModemManager ${yes(sys.modemmanager)}, NetworkManager ${yes(sys.networkmanager)}, resolved ${yes(sys.resolved)}; `
      + (sys.sim ? `SIM ${sys.sim.iccid} (${[sys.sim.operator, sys.sim.operatorName].filter(Boolean).join(' ') || 'operator unknown'}, ${sys.sim.source})` : 'no SIM')
    : '';
  const profile = s.profile ? `${system ? '; ' : ''}profile ${s.profile.name ?? '(none)'} (${s.profile.by})` : '';
  const head = system || profile ? `${system}${profile}\n` : '';
  return lines.length > 0 || head ? `\nwhere the facts come from:\n${lines.join('\n')}${lines.length ? '\n' : ''}${head}` : '';
}

/** What the daemon observed of an uplink: "rtt 23 ms, 2 drops/h" (no RTT: "rtt -"). */
function seen(u: StatusResult['uplinks'][number]): string {
  const o = u.observed;
  if (!o) return '-';
  const rtt = o.rttMs === null ? 'rtt -' : `rtt ${o.rttMs < 10 ? o.rttMs.toFixed(1) : Math.round(o.rttMs)} ms`;
  const per = o.windowMinutes === 60 ? 'h' : `${o.windowMinutes}min`;
  return `${rtt}, ${o.drops} ${o.drops === 1 ? 'drop' : 'drops'}/${per}`;
}

/** "1 connection", "2 connections". */
const count = (n: number, one: string): string => `${n} ${one}${n === 1 ? '' : 's'}`;

/** "; refused: uid 4242 (1025), uid 1000 (3); limits 1024 per uid, 4096 in all, 512 kept for root" when any was refused. */
function refusals(refused: number, byUid: ConnectionStats['refusedByUid'] | undefined, limits: ConnectionLimits | undefined): string {
  if (refused === 0 || limits === undefined) return '';
  const uids = (byUid ?? []).map((r) => `uid ${r.uid} (${r.refused})`).join(', ');
  return `; refused: ${uids || count(refused, 'connection')}; limits ${limits.perUid} per uid, ${limits.total} in all, ${limits.rootReserve} kept for root`;
}
