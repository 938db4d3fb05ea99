/**
 * One system service read over D-Bus (ModemManager, NetworkManager, systemd-resolved): the
 * watcher (src/system/watcher.ts) attaches a reader whenever the service's well-known name has an
 * owner on the bus, and detaches it when the owner goes (or the bus does). A reader reads
 * everything it needs at attach, then follows the service's signals, and calls `changed` after
 * each change of its value (the watcher coalesces those into one SystemFacts update).
 */
import type { MessageBus, Signal, SignalMatch } from '../agent/dbus.js';

export interface ServiceReader<T> {
  /** The service's well-known bus name (org.freedesktop.ModemManager1). */
  readonly service: string;
  /** What it says now; `empty` while detached. */
  readonly value: T;
  readonly empty: T;
  /**
   * Subscribes to the service's signals first, then reads its whole state (so no change falls
   * in between); resolves once `value` holds it. Rejects when the service cannot be read (the
   * watcher logs that and retries at the next owner change). `owner` is the service's unique name.
   */
  attach(bus: MessageBus, owner: string, changed: () => void): Promise<void>;
  /** Drops its subscriptions (when the bus is still there) and goes back to `empty`. */
  detach(): void;
}

/** What every reader's session with one owner has: the connection, whether it is still the reader's, the work queue. */
export interface ReaderSession {
  readonly bus: MessageBus;
  readonly owner: string;
  readonly changed: () => void;
  /** Still the reader's (false once detached: late replies and signals are dropped). */
  live: boolean;
  /** The initial read is done (changes before that are not reported: attach resolves). */
  ready: boolean;
  /** The reads the signals ask for, in arrival order. */
  queue: Promise<void>;
  pending: number;
  readonly unsubscribe: (() => void)[];
}

/**
 * A reader whose state is read at attach and then kept by the service's signals (the three
 * system readers): it subscribes first and reads after (a change in between comes as a signal,
 * queued after the read), works through the signals' reads one at a time in arrival order, and
 * calls `changed` once the queue is drained and the value it derives changed. A subclass says
 * which signals, how to read everything, and what value its raw state makes.
 */
export abstract class QueuedReader<T, S extends ReaderSession> implements ServiceReader<readonly T[]> {
  abstract readonly service: string;
  readonly empty: readonly T[] = Object.freeze([]);
  private current: readonly T[] = this.empty;
  private currentKey = '[]';
  protected session: S | undefined;

  get value(): readonly T[] {
    return this.current;
  }

  /** A session: the common part with the subclass's raw state added. */
  protected abstract open(common: ReaderSession): S;
  /** The signals to follow (each only from the owner), subscribed before the first read. */
  protected abstract signals(): readonly { readonly match: SignalMatch; readonly on: (s: S, sig: Signal) => void }[];
  protected abstract readAll(s: S): Promise<void>;
  /** The value the session's raw state makes. */
  protected abstract derive(s: S): readonly T[];
  /** Forgets what was logged of the last owner (detach). */
  protected abstract forget(): void;

  async attach(bus: MessageBus, owner: string, changed: () => void): Promise<void> {
    this.detach();
    const s = this.open({ bus, owner, changed, live: true, ready: false, queue: Promise.resolve(), pending: 0, unsubscribe: [] });
    this.session = s;
    try {
      for (const { match, on } of this.signals()) {
        // The bus delivers every matching message on the connection (another reader's broader
        // rule included): the sender is checked here too.
        const off = await bus.onSignal({ ...match, sender: owner }, (sig) => { if (s.live && sig.sender === owner) on(s, sig); });
        if (s.live) s.unsubscribe.push(off);
        else off();
      }
      if (!s.live) throw new Error('detached while attaching');
      await this.enqueue(s, () => this.readAll(s));
      if (!s.live) throw new Error('detached while attaching');
    } catch (e) {
      if (this.session === s) this.detach();
      throw e;
    }
    this.publish(s, false);
    s.ready = true;
  }

  detach(): void {
    const s = this.session;
    this.session = undefined;
    if (s !== undefined) {
      s.live = false;
      for (const off of s.unsubscribe.splice(0)) off();
    }
    this.current = this.empty;
    this.currentKey = '[]';
    this.forget();
  }

  /** Queues a read; once the queue is drained (after the initial read), `changed` if the value changed. */
  protected enqueue(s: S, op: () => Promise<void>): Promise<void> {
    s.pending++;
    const run = s.queue.then(() => (s.live ? op() : undefined));
    s.queue = run.then(() => undefined, () => undefined).then(() => {
      s.pending--;
      if (s.pending === 0 && s.ready) this.publish(s, true);
    });
    return run;
  }

  private publish(s: S, notify: boolean): void {
    if (this.session !== s || !s.live) return;
    const next = this.derive(s);
    const key = JSON.stringify(next);
    if (key === this.currentKey) return;
    this.current = next;
    this.currentKey = key;
    if (notify) s.changed();
  }
}
