/**
 * `waymark exec --uplink NAME -- CMD…`: runs CMD with every TCP/UDP socket steered to one uplink.
 * The daemon confirms the uplink exists and is up; libwaymark.so (LD_PRELOAD) binds each socket
 * to the uplink's device before it connects or sends (SO_BINDTODEVICE, allowed unprivileged),
 * and the daemon's `oif` rule routes it by that uplink's table. Destinations the uplink cannot
 * reach fail at once with ENETUNREACH: the library asks the kernel for the route the uplink's
 * fwmark would get (WAYMARK_MARK), because a device-bound socket itself would just time out.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '../daemon/client.js';
import { PACKAGE_ROOT } from '../version.js';

export const PRELOAD_LIBRARY = join(PACKAGE_ROOT, 'native/preload/libwaymark.so');

export async function execVia(client: Client, uplink: string, argv: readonly string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (!cmd) throw new Error('nothing to run: give a command after --');
  if (!existsSync(PRELOAD_LIBRARY)) throw new Error(`${PRELOAD_LIBRARY} is missing: run "npm run setup" (builds the C library)`);
  const u = await client.call('uplink.resolve', { uplink });
  client.close();
  const preload = [PRELOAD_LIBRARY, process.env['LD_PRELOAD']].filter(Boolean).join(':');
  const child = spawn(cmd, args, {
    stdio: 'inherit',
    env: { ...process.env, LD_PRELOAD: preload, WAYMARK_UPLINK: u.name, WAYMARK_DEVICE: u.ifname, WAYMARK_MARK: u.mark, WAYMARK_SOCKET: client.path },
  });
  const forward = (sig: NodeJS.Signals): void => { child.kill(sig); };
  for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(s, forward);
  return new Promise((resolve, reject) => {
    child.once('error', (e: NodeJS.ErrnoException) => reject(new Error(e.code === 'ENOENT' ? `${cmd}: command not found` : e.message)));
    child.once('exit', (code, signal) => resolve(code ?? 128 + (signal ? signalNumber(signal) : 0)));
  });
}

function signalNumber(sig: NodeJS.Signals): number {
  const n: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13 };
  return n[sig] ?? 1;
}
