/**
 * What every end-to-end file does with the namespace lab (src/lab/lab.ts): useLab() registers the
 * file's hooks (sweep the labs of dead runs, create a lab, start waymarkd in its device; dispose of
 * the device and destroy the lab on every exit path), and the small helpers the files share.
 */
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import type { StatusResult } from '../../src/daemon/protocol.js';
import { startDevice, type Device } from '../../src/lab/device.js';
import { Lab, sweepStale } from '../../src/lab/lab.js';

export interface UseLabOptions {
  /** waymarkd's configuration (default: the shipped example); a function is called in the hook. */
  config?: string | (() => string);
  /** Work done while the lab is created (e.g. building a client), awaited before the daemon starts. */
  alongside?: () => Promise<unknown>;
  /** Extra waymarkd options (e.g. a shorter --rtt-interval). */
  daemonArgs?: readonly string[];
  /** The D-Bus bus waymarkd reads the system's services on (a private one; called after `alongside`); default none. */
  systemBus?: () => string;
  /** Bound of the before hook in ms (default: node:test's). */
  timeoutMs?: number;
}

/**
 * Registers the file's before/after hooks; `up` is called with the lab and the device once both
 * are up (the file keeps them in its own variables).
 */
export function useLab(opts: UseLabOptions, up: (lab: Lab, dev: Device) => void): void {
  let lab: Lab | undefined;
  let dev: Device | undefined;
  before(async () => {
    await sweepStale();
    // Settled both ways, so a lab created while the other work failed is still destroyed.
    const [created, other] = await Promise.allSettled([Lab.create(), opts.alongside?.()]);
    if (created.status === 'rejected') throw created.reason;
    const made = (lab = created.value);
    if (other.status === 'rejected') throw other.reason;
    const config = typeof opts.config === 'function' ? opts.config() : opts.config;
    dev = await startDevice(made, {
      ...(config === undefined ? {} : { config }), ...(opts.daemonArgs ? { daemonArgs: opts.daemonArgs } : {}),
      ...(opts.systemBus ? { systemBus: opts.systemBus() } : {}),
    });
    up(made, dev);
  }, opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs });
  after(async () => {
    await dev?.dispose();
    await lab?.destroy();
  });
}

/** `waymark status --json` in the device (as `uid`; root when undefined), which must succeed. */
export async function status(dev: Device, uid?: number): Promise<StatusResult> {
  const r = await dev.waymark(['status', '--json'], uid === undefined ? {} : { uid });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusResult;
}

/** The lab's HTTP URL of an address (IPv6 in brackets). */
export const url = (addr: string): string => (addr.includes(':') ? `http://[${addr}]/` : `http://${addr}/`);

/** The last JSON line a lab server's reply printed (which server, by which path, which protocol), or null. */
export function lastJson(out: string): { server: string; path: string; proto: string } | null {
  const line = out.trim().split('\n').reverse().find((l) => l.startsWith('{'));
  try {
    return line ? (JSON.parse(line) as { server: string; path: string; proto: string }) : null;
  } catch {
    return null;
  }
}

/**
 * Until `ok` holds of what `probe` returns: a condition on the programs' state (what the daemon
 * counts, what the kernel gives a program), probed again and again, never a timer racing them;
 * `guardMs` only bounds a hang.
 */
export async function until<T>(what: string, probe: () => Promise<T>, ok: (v: T) => boolean, guardMs = 15_000): Promise<T> {
  const end = Date.now() + guardMs;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`${what}: last ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
