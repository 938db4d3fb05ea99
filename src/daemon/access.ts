/**
 * Who may change state: root, or a member of the `waymark` group. Identity comes from the
 * socket's SO_PEERCRED (kernel-verified); supplementary groups from /proc/PID/status of that pid.
 */
import { readFileSync } from 'node:fs';
import type { PeerCred } from '../native/index.js';
import { groupId } from '../identity/users.js';

export { groupId } from '../identity/users.js';

export const ADMIN_GROUP = 'waymark';

function supplementaryGroups(pid: number): number[] {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const line = status.split('\n').find((l) => l.startsWith('Groups:'));
    return line ? line.slice(7).trim().split(/\s+/).filter(Boolean).map(Number) : [];
  } catch {
    return [];
  }
}

export function mayChangeState(cred: PeerCred): boolean {
  if (cred.uid === 0) return true;
  const gid = groupId(ADMIN_GROUP);
  if (gid === undefined) return false;
  return cred.gid === gid || supplementaryGroups(cred.pid).includes(gid);
}
