/**
 * `waymark exec [--uplink NAME] [--need N]... [--deny NAME]... -- CMD…`
 * Asks waymarkd for a session (a cgroup of its own, which this process joins and the command
 * inherits; the daemon marks its sockets and fences off denied uplinks in the kernel), then runs
 * CMD with libwaymark.so preloaded, so each connect() gets the daemon's per-destination decision.
 * What is asked for here is a wish: the daemon checks it against the config.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import type { NeedName } from '../config/schema.js';
import type { Client } from '../daemon/client.js';
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

export async function execWith(client: Client, wish: ExecWish, argv: readonly string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('nothing to run: give a command after --');
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`${PRELOAD_LIBRARY} is missing: run "npm run setup" (builds the C library)`);
  const session = await client.call('exec.begin', {
    ...(wish.uplink ? { uplink: wish.uplink } : {}), needs: wish.needs, deny: wish.deny, command: argv.join(' '),
  });
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
  return constants.signals[sig] ?? 1;
}
