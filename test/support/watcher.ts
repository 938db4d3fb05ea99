/** `waymark watch` run in a lab device, its lines stamped as they arrive: the e2e files wait on its events. */
import { type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';
import type { AppAppeared, DaemonEvent } from '../../src/daemon/events.js';
import { CLI_JS, type Device } from '../../src/lab/device.js';
import type { Lab } from '../../src/lab/lab.js';
import { publicRoot } from '../../src/lab/public.js';

/** Bound of every wait: a guard against a hang, never a race with the daemon. */
const GUARD_MS = 10_000;

/** A `waymark watch` process in the device, its lines stamped as they arrive here. */
export class Watcher {
  readonly child: ChildProcess;
  readonly lines: { at: number; text: string }[] = [];
  stderr = '';
  private readonly waiters: { from: number; pred(t: string): boolean; resolve(l: { at: number; text: string }): void }[] = [];
  private readonly exit: Promise<number | null>;

  constructor(lab: Lab, dev: Device, args: readonly string[], readonly uid?: number) {
    const cli = uid !== undefined ? join(publicRoot(), 'dist/src/cli/main.js') : CLI_JS;
    this.child = lab.spawn('dev', [process.execPath, cli, '--socket', dev.socket, 'watch', ...args], { ...(uid !== undefined ? { uid } : {}), stdio: ['ignore', 'pipe', 'pipe'] });
    this.exit = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      this.check();
    });
    if (this.child.stdout) {
      createInterface({ input: this.child.stdout }).on('line', (text) => {
        this.lines.push({ at: performance.now(), text });
        this.check();
      });
    }
  }

  private check(): void {
    for (const w of [...this.waiters]) {
      const hit = w.from < 0 ? (this.stderr.split('\n').some((l) => w.pred(l)) ? { at: performance.now(), text: this.stderr } : undefined) : this.lines.slice(w.from).find((l) => w.pred(l.text));
      if (hit) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(hit);
      }
    }
  }

  private wait(from: number, pred: (t: string) => boolean, what: string): Promise<{ at: number; text: string }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`watcher${this.uid !== undefined ? ` (uid ${this.uid})` : ''}: no ${what} within ${GUARD_MS} ms; got:\n${this.lines.map((l) => l.text).join('\n')}\n${this.stderr}`)), GUARD_MS);
      this.waiters.push({ from, pred, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      this.check();
    });
  }

  /** Resolves once the subscription is in place (the watcher says so on stderr). */
  async ready(): Promise<void> {
    await this.wait(-1, (l) => l.startsWith('watching '), '"watching" line');
  }

  /** The first line from `from` on that `pred` accepts. */
  line(from: number, pred: (t: string) => boolean, what: string): Promise<{ at: number; text: string }> {
    return this.wait(from, pred, what);
  }

  /** The first event (JSON watchers) from `from` on that `pred` accepts. */
  async event(from: number, pred: (e: DaemonEvent) => boolean, what: string): Promise<{ at: number; event: DaemonEvent }> {
    const l = await this.wait(from, (t) => pred(JSON.parse(t) as DaemonEvent), what);
    return { at: l.at, event: JSON.parse(l.text) as DaemonEvent };
  }

  events(): DaemonEvent[] {
    return this.lines.map((l) => JSON.parse(l.text) as DaemonEvent);
  }

  exited(): Promise<number | null> {
    return this.exit;
  }

  /** Ends it (SIGINT, as Ctrl-C), waiting for it to go. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGINT');
    await this.exit;
  }
}

/** Creates an app scope (`rel`, below the lab's cgroup subtree) and waits until the daemon has it in the kernel: its app.appeared event. */
export async function appScope(lab: Lab, watcher: Watcher, rel: string): Promise<AppAppeared> {
  assert.ok(lab.cgroups, 'the lab has a cgroup subtree');
  const from = watcher.lines.length;
  lab.cgroups.mkdir(rel);
  const { event } = await watcher.event(from, (e) => e.type === 'app.appeared' && e.cgroup === rel, `app.appeared for ${rel}`);
  assert.ok(event.type === 'app.appeared');
  return event;
}
