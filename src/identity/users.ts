/** Users and groups by name, from /etc/passwd and /etc/group (rules may name a user; the waymark group administers). */
import { readFileSync } from 'node:fs';

/** The id (third field) of `name` in a passwd- or group-format file; undefined when absent or unreadable. */
function idIn(file: string, name: string): number | undefined {
  try {
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const [n, , id] = line.split(':');
      if (n === name && id !== undefined && /^\d+$/.test(id)) return Number(id);
    }
  } catch {
    /* no such file: no such name */
  }
  return undefined;
}

/** The uid of a user name, undefined when there is no such user. */
export const userId = (name: string, passwdFile = '/etc/passwd'): number | undefined => idIn(passwdFile, name);

/** The gid of a group name, undefined when there is no such group. */
export const groupId = (name: string, groupFile = '/etc/group'): number | undefined => idIn(groupFile, name);
