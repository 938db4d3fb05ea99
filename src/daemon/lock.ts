/**
 * One waymarkd per state directory and per socket directory. A second daemon started next to a
 * running one would unlink its sockets, take over its rules and nftables table, and on stopping
 * leave the first running blind. So before touching anything, waymarkd takes an exclusive
 * flock(2) on `waymarkd.lock` in its state directory and in the directory of its control socket
 * (where decide.sock and the generation file live), then checks that nothing answers on the
 * control socket (a daemon that predates the locks, or one in another mount namespace).
 *
 * The kernel drops a flock when its holder dies, however it dies, so a crash never blocks the
 * next start; the lock files are never unlinked (a second holder could then lock a new inode).
 * Each holds the holder's pid, for the message. They are root's alone (0600, also when an older
 * file was readable): flock(2) needs no write access, so anyone who could open a lock file could
 * take it first and keep every future waymarkd from starting.
 */
import { fchmodSync, ftruncateSync, mkdirSync, readFileSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { join, resolve } from 'node:path';
import * as native from '../native/index.js';

export const LOCK_FILE = 'waymarkd.lock';
/** Exit status of a waymarkd that refused to start next to another (EX_TEMPFAIL). */
export const EX_ALREADY_RUNNING = 75;

export class AlreadyRunning extends Error {
  override name = 'AlreadyRunning';
  constructor(readonly pid: number | undefined, what: string) {
    super(`another waymarkd${pid !== undefined ? ` (pid ${pid})` : ''} ${what}; not starting. ` +
      'Stop it first (it keeps serving meanwhile).');
  }
}

export interface InstanceLock {
  /** The lock files held (one when the state and socket directories are the same). */
  readonly paths: readonly string[];
}

/**
 * Claims the state and socket directories for this process, or throws AlreadyRunning. The locks
 * are held until the process exits (their fds are close-on-exec: no child inherits them).
 */
export async function claimInstance(opts: { stateDir: string; runDir: string; socket: string }): Promise<InstanceLock> {
  const paths = [...new Set([resolve(opts.stateDir, LOCK_FILE), resolve(opts.runDir, LOCK_FILE)])];
  const held: number[] = [];
  try {
    for (const path of paths) {
      mkdirSync(join(path, '..'), { recursive: true, mode: 0o755 });
      const fd = native.lockFile(path, 0o600);
      if (fd === null) throw new AlreadyRunning(pidIn(path), `holds ${path}`);
      held.push(fd);
      fchmodSync(fd, 0o600);
      ftruncateSync(fd, 0);
      writeSync(fd, `${process.pid}\n`, 0);
    }
    if (await answers(opts.socket)) throw new AlreadyRunning(undefined, `answers on ${opts.socket}`);
  } catch (e) {
    for (const fd of held) native.close(fd);
    throw e;
  }
  return { paths };
}

function pidIn(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Whether something accepts connections on the Unix socket at `path` (a stale file does not). */
function answers(path: string): Promise<boolean> {
  return new Promise((done) => {
    const s = connect(path);
    // A listening socket accepts into its backlog at once, even if its owner is busy: this bound
    // only guards against a hang.
    s.setTimeout(5000, () => { s.destroy(); done(true); });
    s.once('connect', () => { s.destroy(); done(true); });
    s.once('error', () => done(false));
  });
}
