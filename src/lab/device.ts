/**
 * A lab device with waymarkd running inside it: what the demo shows and the end-to-end tests drive.
 */
import { type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../version.js';
import type { Lab, RunOptions } from './lab.js';
import { publicRoot } from './public.js';

export const DAEMON_JS = join(PACKAGE_ROOT, 'dist/src/daemon/main.js');
export const CLI_JS = join(PACKAGE_ROOT, 'dist/src/cli/main.js');
export const EXAMPLE_CONFIG = join(PACKAGE_ROOT, 'examples/waymark.yaml');

/** A lab with waymarkd running in its device namespace: shared by the demo and the e2e tests. */
export interface Device {
  readonly lab: Lab;
  readonly dir: string;
  readonly socket: string;
  readonly configPath: string;
  daemon: ChildProcess;
  /** Runs `waymark ARGS` inside the device. */
  waymark(args: readonly string[], opts?: RunOptions): ReturnType<Lab['run']>;
  startDaemon(extra?: readonly string[]): Promise<void>;
  stopDaemon(signal?: NodeJS.Signals): Promise<void>;
  /** Stops the daemon (cleanly) and removes the working directory. */
  dispose(): Promise<void>;
}

/**
 * `systemBus`: the D-Bus bus waymarkd reads ModemManager, NetworkManager and resolved on (a
 * private one a test starts); default none: the lab never touches the machine's system bus.
 */
export async function startDevice(lab: Lab, opts: { config?: string; logLevel?: string; daemonArgs?: readonly string[]; systemBus?: string } = {}): Promise<Device> {
  const dir = `/tmp/waymark-lab-${lab.runId}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(dir, 0o755);
  const configPath = join(dir, 'waymark.yaml');
  writeFileSync(configPath, opts.config ?? readFileSync(EXAMPLE_CONFIG, 'utf8'));
  const socket = join(dir, 'waymarkd.sock');
  const dev: Device = {
    lab, dir, socket, configPath,
    daemon: undefined as unknown as ChildProcess,
    // Another user runs the CLI from a copy it can read (see public.ts).
    waymark: (args, o = {}) => lab.run('dev', [process.execPath, o.uid ? join(publicRoot(), 'dist/src/cli/main.js') : CLI_JS, '--socket', socket, ...args], o),
    async startDaemon(extra = opts.daemonArgs ?? []) {
      const log = openSync(join(dir, 'waymarkd.log'), 'a');
      this.daemon = lab.spawn('dev', [process.execPath, DAEMON_JS, '--config', configPath, '--socket', socket,
        '--state-dir', join(dir, 'state'), '--log-level', opts.logLevel ?? 'debug', '--system-bus', opts.systemBus ?? 'none',
        ...(lab.cgroups ? ['--cgroup-root', lab.cgroups.rel] : []), ...extra], { stdio: ['ignore', log, log], hostMounts: true });
      await waitForDaemon(dev);
    },
    async stopDaemon(signal = 'SIGTERM') {
      const d = this.daemon;
      if (d.exitCode !== null || d.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => d.once('exit', () => resolve()));
      // nsenter replaces itself with node, so the child pid is the daemon itself.
      d.kill(signal);
      await exited;
    },
    async dispose() {
      await this.stopDaemon().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await dev.startDaemon();
  } catch (e) {
    await dev.dispose();
    throw e;
  }
  return dev;
}

async function waitForDaemon(dev: Device): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await dev.waymark(['status', '--json'], { timeoutMs: 3000 });
    if (r.code === 0) return;
    if (dev.daemon.exitCode !== null) throw new Error(`waymarkd exited with ${dev.daemon.exitCode}; see ${join(dev.dir, 'waymarkd.log')}`);
    if (Date.now() > deadline) throw new Error(`waymarkd did not come up: ${r.stderr.trim()}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

