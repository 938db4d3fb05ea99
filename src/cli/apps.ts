/** `waymark apps`: the apps on the device now, as a readable table. */
import type { AppsResult } from '../daemon/protocol.js';
import { renderTable } from './table.js';

export function formatApps(r: AppsResult): string {
  const lines: string[] = [];
  if (!r.kernel.active) lines.push(`Kernel steering of apps is off: ${r.kernel.reason ?? 'unknown reason'}.`);
  if (r.apps.length === 0) {
    lines.push(`No apps seen under the cgroup root ${r.cgroupRoot}.`);
    return lines.join('\n') + '\n';
  }
  const recognised = (a: AppsResult['apps'][number]): string =>
    a.kind === 'flatpak' ? `flatpak ${a.flatpakId ?? '?'}` : a.kind === 'app' ? `app ${a.appId ?? '?'}` : a.kind;
  lines.push(renderTable(
    ['APP', 'UID', 'RECOGNISED BY', 'UNIT', 'EXE', 'RULE', 'UPLINK PER DESTINATION', 'SOCKETS'],
    r.apps.map((a) => [
      a.name,
      a.uid === null ? 'system' : String(a.uid),
      recognised(a),
      a.unit,
      a.exe ?? (a.pids === 0 ? '(no process)' : '-'),
      a.rule ?? '-',
      Object.entries(a.uplinks).map(([d, u]) => `${d}=${u}`).join(' '),
      String(a.sockets),
    ]),
  ));
  return lines.join('\n') + '\n';
}
