/**
 * The cgroup side of sessions as the daemon uses it (src/daemon/sessions.ts: CgroupBackend):
 * SessionCgroups for the directories, the addon for the socket-marking BPF program.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cgroupAttachSockMark, cgroupDetachSockPrograms } from '../native/index.js';
import type { CgroupBackend } from '../daemon/sessions.js';
import { findCgroup2Mount, SessionCgroups, WAYMARK_CGROUP_DIR } from './cgroup.js';

/**
 * `root`: the daemon's cgroup root relative to the mount ('' for the whole hierarchy); session
 * cgroups are `<root>/waymark/<name>`.
 */
export async function createCgroupBackend(root = ''): Promise<CgroupBackend & { readonly mount: string; readonly sessionsDir: string }> {
  const mount = await findCgroup2Mount();
  const dir = root === '' ? WAYMARK_CGROUP_DIR : `${root}/${WAYMARK_CGROUP_DIR}`;
  const cgroups = new SessionCgroups(mount, dir);
  const nameOf = (rel: string): string => {
    const prefix = `${dir}/`;
    if (!rel.startsWith(prefix)) throw new Error(`not a session cgroup: ${rel}`);
    return rel.slice(prefix.length);
  };
  return {
    mount,
    sessionsDir: cgroups.base,
    create: async (id) => (await cgroups.create(id)).relPath,
    // Sessions move a process in; ending one moves the caller back where it came from.
    movePid: (rel, pid) => (rel.startsWith(`${dir}/`) ? cgroups.movePid(nameOf(rel), pid)
      : writeFile(join(mount, rel, 'cgroup.procs'), `${pid}\n`)),
    isEmpty: async (rel) => {
      try {
        return !(await cgroups.populated(nameOf(rel)));
      } catch (e) {
        // ENODEV: the cgroup was removed while its file was open.
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENODEV') return true;
        throw e;
      }
    },
    exists: async (rel) => (await cgroups.list()).some((s) => s.relPath === rel),
    remove: async (rel) => { await cgroups.removeIfEmpty(nameOf(rel)); },
    watch: (rel, onChange) => {
      const stop = cgroups.watchEmpty(nameOf(rel), onChange);
      return { close: stop };
    },
    present: (rel) => existsSync(join(mount, rel)),
    // eslint-disable-next-line @typescript-eslint/require-await -- async so that a throw of the synchronous addon call reaches the caller as a rejection, as CgroupBackend promises
    setMark: async (rel, mark) => {
      const path = join(mount, rel);
      if (mark === null) cgroupDetachSockPrograms(path);
      else cgroupAttachSockMark(path, mark);
    },
  };
}
