/**
 * `waymark exec [--uplink NAME] [--need N]... [--deny NAME]... -- CMD…`
 * Asks waymarkd for a session (a cgroup of its own, which this process joins and the command
 * inherits; the daemon marks its sockets and fences off denied uplinks in the kernel), then runs
 * CMD with libwaymark.so preloaded, so each connect() gets the daemon's per-destination decision.
 * What is asked for here is a wish: the daemon checks it against the config.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, realpathSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join, resolve } from 'node:path';
import type { NeedName } from '../config/schema.js';
import { DaemonError, type Client } from '../daemon/client.js';
import { PACKAGE_ROOT } from '../version.js';

export const PRELOAD_LIBRARY = join(PACKAGE_ROOT, 'native/preload/libwaymark.so');

/** Exit statuses of `waymark exec` when the command cannot run, as a shell's. */
export const EXIT_CANNOT_RUN = 126;
export const EXIT_NOT_FOUND = 127;

export interface ExecWish {
  readonly uplink?: string;
  readonly needs: readonly NeedName[];
  readonly deny: readonly string[];
}

/** EX_USAGE (sysexits.h): the command line asks for something that cannot be. */
export const EXIT_USAGE = 64;

/** Why a wish contradicts itself (as far as names given here tell), or null. */
export function contradiction(wish: ExecWish): string | null {
  return wish.uplink !== undefined && wish.deny.includes(wish.uplink)
    ? `--uplink ${wish.uplink} and --deny ${wish.uplink} contradict each other: the session could reach nothing`
    : null;
}

/** The executable a command names, as the kernel will show it (/proc/PID/exe), when it can be found. */
function resolveExecutable(cmd: string): string | undefined {
  const candidates = cmd.includes('/') ? [resolve(cmd)] : (process.env['PATH'] ?? '').split(':').filter(Boolean).map((d) => join(d, cmd));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      const real = realpathSync(c);
      if (statSync(real).isFile()) return real;
    } catch {
      /* not this one */
    }
  }
  return undefined;
}

export async function execWith(client: Client, wish: ExecWish, argv: readonly string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('nothing to run: give a command after --');
  const bad = contradiction(wish);
  if (bad !== null) {
    process.stderr.write(`waymark: ${bad}\n`);
    return EXIT_USAGE;
  }
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`${PRELOAD_LIBRARY} is missing: run "npm run setup" (builds the C library)`);
  // The program's executable lets the daemon apply its app rule too (it can only narrow the session).
  const exe = resolveExecutable(cmd);
  let session;
  try {
    session = await client.call('exec.begin', {
      ...(wish.uplink ? { uplink: wish.uplink } : {}), needs: [...wish.needs], deny: [...wish.deny], command: argv.join(' '), ...(exe ? { exe } : {}),
    });
  } catch (e) {
    // The daemon found the wish contradictory once names were resolved (--uplink wlan0 --deny wifi).
    if (!(e instanceof DaemonError) || e.code !== 'EINVAL') throw e;
    client.close();
    process.stderr.write(`waymark: ${e.message}\n`);
    return EXIT_USAGE;
  }
  const preload = [PRELOAD_LIBRARY, process.env['LD_PRELOAD']].filter(Boolean).join(':');
  const env: NodeJS.ProcessEnv = { ...process.env, LD_PRELOAD: preload, WAYMARK_SOCKET: client.path, WAYMARK_SESSION: session.id };
  if (wish.uplink) env['WAYMARK_UPLINK'] = wish.uplink;
  if (wish.needs.length) env['WAYMARK_NEEDS'] = wish.needs.join(',');
  const child = spawn(cmd, args, { stdio: 'inherit', env });
  const forward = (sig: NodeJS.Signals): void => { child.kill(sig); };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, forward);
  const code = await new Promise<number>((resolve) => {
    child.once('error', (e: NodeJS.ErrnoException) => resolve(cannotRun(cmd, e)));
    child.once('exit', (c, signal) => resolve(c ?? 128 + (signal ? signalNumber(signal) : 0)));
  }).finally(async () => {
    // Best effort: the daemon also ends the session when its cgroup empties.
    await client.call('exec.end', { id: session.id }).catch(() => undefined);
    client.close();
  });
  return code;
}

/** Says why the command did not start, like a shell, and returns 127 (not found) or 126 (found, not runnable). */
function cannotRun(cmd: string, e: NodeJS.ErrnoException): number {
  const why = e.code === 'ENOENT' ? 'command not found' : e.code === 'EACCES' ? 'permission denied' : e.message;
  process.stderr.write(`waymark: ${cmd}: ${why}\n`);
  return e.code === 'ENOENT' ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
}

function signalNumber(sig: NodeJS.Signals): number {
  return osConstants.signals[sig] ?? 1;
}
