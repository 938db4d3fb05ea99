/** Users by name, from /etc/passwd (rules may name a user instead of a uid). */
import { readFileSync } from 'node:fs';

/** The uid of a user name, undefined when there is no such user (or no readable passwd file). */
export function userId(name: string, passwdFile = '/etc/passwd'): number | undefined {
  try {
    for (const line of readFileSync(passwdFile, 'utf8').split('\n')) {
      const [n, , uid] = line.split(':');
      if (n === name && uid !== undefined && /^\d+$/.test(uid)) return Number(uid);
    }
  } catch {
    /* no passwd file: no such user */
  }
  return undefined;
}
