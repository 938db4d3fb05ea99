/**
 * A private D-Bus message bus and a notification server on it, for the notification agent's
 * tests: never the machine's session or system bus.
 *
 * The bus is a `dbus-daemon` of our own, from a config file written to a temporary directory:
 * it listens on a unix socket there, has no service directories (so nothing on the machine can
 * be activated through it) and allows everything (its only clients are the test's). It runs
 * under `setpriv --pdeathsig KILL`, so it dies with the test process even when that is killed;
 * close() ends it and removes the directory (so does the process's exit, if close() never ran).
 *
 * The server exports org.freedesktop.Notifications (GetCapabilities, GetServerInformation,
 * Notify, CloseNotification), records what it is asked, and emits ActionInvoked and
 * NotificationClosed when the test says a user did something.
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { connectBus, i32, str, strings, u32, variants, type IncomingCall, type MessageBus, type Outcome } from '../../src/agent/dbus.js';
import { NOTIFICATIONS } from '../../src/agent/notifications.js';

/** Bound of every wait here: a guard against a hang, never a race with the program under test. */
export const GUARD_MS = 10_000;

/** A promise's value, or an error naming what did not come within the guard. */
export function within<T>(p: Promise<T>, what: string, ms: number = GUARD_MS): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
    p.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e); });
  });
}

/** Items in arrival order; take() waits for the next one not taken yet. */
export class Arrivals<T> {
  readonly all: T[] = [];
  private taken = 0;
  private readonly waiters: ((v: T) => void)[] = [];

  push(v: T): void {
    this.all.push(v);
    const w = this.waiters.shift();
    if (w) {
      this.taken++;
      w(v);
    }
  }

  take(what: string): Promise<T> {
    if (this.taken < this.all.length) return Promise.resolve(this.all[this.taken++]!);
    return within(new Promise<T>((resolve) => this.waiters.push(resolve)), what);
  }
}

export interface PrivateBus {
  /** Where clients connect: the same across {@link PrivateBus.stop} and {@link PrivateBus.start}. */
  readonly address: string;
  readonly dir: string;
  /**
   * The bus goes away: kills the daemon (SIGKILL, as a crash: its clients' connections just end,
   * with no NameOwnerChanged first, which a daemon ending cleanly sends), keeping the directory and
   * the address.
   */
  stop(): Promise<void>;
  /** Starts a new daemon at the same address (after stop()); resolves once it listens. */
  start(): Promise<void>;
  /** Ends the daemon and removes the directory. */
  close(): Promise<void>;
}

export interface PrivateBusOptions {
  /** The socket to listen on (default: "bus" in the bus's temporary directory). */
  readonly socketPath?: string;
}

const CONFIG = (socket: string): string => `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=${socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`;

/** One dbus-daemon run: resolves once it listens; `stop` ends it. */
async function runDaemon(config: string): Promise<(signal: NodeJS.Signals) => Promise<void>> {
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', 'dbus-daemon', `--config-file=${config}`, '--nofork', '--print-address=1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (signal: NodeJS.Signals): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  try {
    await within(new Promise<string>((resolve, reject) => {
      // The daemon prints its address once it listens.
      createInterface({ input: child.stdout }).once('line', resolve);
      child.once('error', reject);
      child.once('exit', (code, signal) => reject(new Error(`dbus-daemon exited (${code ?? signal ?? '?'}): ${stderr}`)));
    }), 'address from dbus-daemon');
    return stop;
  } catch (e) {
    await stop('SIGTERM');
    throw e;
  }
}

/** Starts a dbus-daemon of our own and resolves with its address once it listens. */
export async function startPrivateBus(options: PrivateBusOptions = {}): Promise<PrivateBus> {
  const dir = await mkdtemp(join(tmpdir(), 'waymark-dbus-'));
  const socket = options.socketPath ?? join(dir, 'bus');
  const config = join(dir, 'bus.conf');
  await writeFile(config, CONFIG(socket));
  // A test process that exits without its after hooks (process.exit) still removes the directory.
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  process.once('exit', removeDir);
  let stopDaemon: ((signal: NodeJS.Signals) => Promise<void>) | undefined;
  const end = async (signal: NodeJS.Signals): Promise<void> => {
    const s = stopDaemon;
    stopDaemon = undefined;
    if (s) await s(signal);
    // A daemon that could not remove its socket would leave the next one unable to listen there.
    await rm(socket, { force: true });
  };
  const start = async (): Promise<void> => {
    if (stopDaemon) throw new Error('the private bus is running already');
    stopDaemon = await runDaemon(config);
  };
  const stop = (): Promise<void> => end('SIGKILL');
  const close = async (): Promise<void> => {
    await end('SIGTERM');
    process.off('exit', removeDir);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await start();
  } catch (e) {
    await close();
    throw e;
  }
  // Without the daemon's guid, so the address stays the same across restarts.
  return { address: `unix:path=${socket}`, dir, stop, start, close };
}

export interface NotifyCall {
  /** The id the server gave it. */
  readonly id: number;
  readonly appName: string;
  readonly replacesId: number;
  readonly appIcon: string;
  readonly summary: string;
  readonly body: string;
  /** [key, label] pairs. */
  readonly actions: readonly (readonly [string, string])[];
  readonly hints: ReadonlyMap<string, { readonly signature: string; readonly value: unknown }>;
  readonly expireTimeout: number;
}

export interface ServerOptions {
  /** What GetCapabilities answers (default: actions and body). */
  readonly capabilities?: readonly string[];
}

/** org.freedesktop.Notifications on a bus, recording what it is asked. */
export class NotificationServer {
  /** Every Notify, as it arrives. */
  readonly notified = new Arrivals<NotifyCall>();
  /** Every CloseNotification's id, as it arrives. */
  readonly closeCalls = new Arrivals<number>();
  /** The notifications on screen now. */
  readonly showing = new Map<number, NotifyCall>();
  private nextId = 1;

  private constructor(
    private readonly bus: MessageBus,
    private readonly capabilities: readonly string[],
  ) {}

  static async start(address: string, options: ServerOptions = {}): Promise<NotificationServer> {
    const bus = await connectBus(address);
    const server = new NotificationServer(bus, options.capabilities ?? ['actions', 'body']);
    bus.handle(NOTIFICATIONS.path, NOTIFICATIONS.interface, (c) => server.answer(c));
    try {
      await bus.requestName(NOTIFICATIONS.name);
    } catch (e) {
      bus.close();
      throw e;
    }
    return server;
  }

  private answer(c: IncomingCall): Outcome | undefined {
    switch (c.member) {
      case 'GetCapabilities':
        return { signature: 'as', body: [[...this.capabilities]] };
      case 'GetServerInformation':
        return { signature: 'ssss', body: ['waymark-test', 'Waymark', '0', '1.2'] };
      case 'Notify': {
        const b = c.body;
        const flat = strings(b[5], 'actions');
        const actions: [string, string][] = [];
        for (let i = 0; i + 1 < flat.length; i += 2) actions.push([flat[i]!, flat[i + 1]!]);
        const replacesId = u32(b[1], 'replaces_id');
        const id = replacesId !== 0 && this.showing.has(replacesId) ? replacesId : this.nextId++;
        const call: NotifyCall = {
          id, appName: str(b[0], 'app_name'), replacesId, appIcon: str(b[2], 'app_icon'),
          summary: str(b[3], 'summary'), body: str(b[4], 'body'), actions,
          hints: variants(b[6], 'hints'), expireTimeout: i32(b[7], 'expire_timeout'),
        };
        this.showing.set(id, call);
        this.notified.push(call);
        return { signature: 'u', body: [id] };
      }
      case 'CloseNotification': {
        const id = u32(c.body[0], 'id');
        this.closeCalls.push(id);
        if (!this.showing.delete(id)) return { error: 'org.freedesktop.Notifications.Error.NotFound', text: `no notification ${id}` };
        this.emitClosed(id, 3);
        return { signature: '', body: [] };
      }
      default:
        return undefined;
    }
  }

  private emitClosed(id: number, reason: number): void {
    this.bus.emit(NOTIFICATIONS.path, NOTIFICATIONS.interface, 'NotificationClosed', 'uu', [id, reason]);
  }

  /** The user pressed a button: ActionInvoked, then the notification closes (reason 2), as servers do. */
  invokeAction(id: number, key: string): void {
    this.bus.emit(NOTIFICATIONS.path, NOTIFICATIONS.interface, 'ActionInvoked', 'us', [id, key]);
    if (this.showing.delete(id)) this.emitClosed(id, 2);
  }

  /** The user dismissed it (reason 2). */
  dismiss(id: number): void {
    if (this.showing.delete(id)) this.emitClosed(id, 2);
  }

  /**
   * Leaves the bus (the desktop shell going away): gives the name up first, so the bus has said
   * NameOwnerChanged to everyone, and a successor can own it, when this resolves.
   */
  async close(): Promise<void> {
    try {
      await this.bus.call({ destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus', member: 'ReleaseName', signature: 's', body: [NOTIFICATIONS.name] });
    } catch {
      // Gone already.
    }
    this.bus.close();
  }
}
