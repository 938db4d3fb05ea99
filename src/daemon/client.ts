/**
 * A typed client of the control protocol (protocol.ts: params and results of each method as
 * declared there), used by the CLI, the demo and tests. Speaks version 2: `subscribe()` asks for
 * events, which then arrive on the same connection between replies.
 */
import { statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { basename, join } from 'node:path';
import type { DaemonEvent, Topic } from './events.js';
import { DEFAULT_SOCKET, PROTOCOL_VERSION, type Method, type ParamsIn, type Response, type Results, type SubscribeResult, type WireError } from './protocol.js';

export class DaemonError extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
    this.name = 'DaemonError';
  }
  get code(): string {
    return this.wire.code;
  }
}

/** waymarkd cannot be reached at all (not running, or no access to its socket). */
export class DaemonUnavailable extends Error {
  override name = 'DaemonUnavailable';
}

/**
 * Where waymarkd is, as WAYMARK_SOCKET, --socket and the API's socketPath give it: the control
 * socket (/run/waymark/waymarkd.sock), or the directory that holds it (/run/waymark/: a value
 * ending in "/" or naming an existing directory). decide.sock and the generation file are in
 * that directory. The C libraries read WAYMARK_SOCKET the same way (native/client/proto.c).
 * Returns the control socket's path.
 */
export function controlSocketPath(value: string | undefined = process.env['WAYMARK_SOCKET']): string {
  if (value === undefined || value === '') return DEFAULT_SOCKET;
  if (value.endsWith('/') || isDirectory(value)) return join(value, basename(DEFAULT_SOCKET));
  return value;
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

export function defaultSocketPath(): string {
  return controlSocketPath();
}

export class Client {
  private sock: Socket | undefined;
  private nextId = 1;
  private buffered = '';
  private readonly waiting = new Map<number, { resolve(r: Response): void; reject(e: Error): void }>();
  private onEvent: ((e: DaemonEvent) => void) | undefined;
  private onClose: ((why: string) => void) | undefined;

  readonly path: string;

  /** `socket`: the control socket or its directory (see controlSocketPath). */
  constructor(socket: string = defaultSocketPath(), private readonly timeoutMs = 10_000) {
    this.path = controlSocketPath(socket);
  }

  private open(): Promise<Socket> {
    if (this.sock) return Promise.resolve(this.sock);
    return new Promise((resolve, reject) => {
      const s = connect(this.path);
      s.setEncoding('utf8');
      s.once('connect', () => {
        this.sock = s;
        resolve(s);
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        const why = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? `waymarkd is not running (no socket at ${this.path})` : e.message;
        const err = new DaemonUnavailable(why);
        reject(err);
        for (const w of this.waiting.values()) w.reject(err);
        this.waiting.clear();
      });
      s.on('close', () => {
        // Told only about a connection that was open and not closed by us.
        const wasOpen = this.sock === s;
        if (wasOpen) this.sock = undefined;
        if (wasOpen) this.onClose?.('waymarkd closed the connection');
        for (const w of this.waiting.values()) w.reject(new Error('waymarkd closed the connection'));
        this.waiting.clear();
      });
      s.on('data', (chunk: string) => {
        this.buffered += chunk;
        let nl: number;
        while ((nl = this.buffered.indexOf('\n')) >= 0) {
          const line = this.buffered.slice(0, nl);
          this.buffered = this.buffered.slice(nl + 1);
          const msg = JSON.parse(line) as Response | { v: number; event: DaemonEvent };
          if ('event' in msg) {
            this.onEvent?.(msg.event);
            continue;
          }
          const r = msg;
          // id 0: about the connection (refused: EBUSY), not about a request; it ends them all.
          if (r.id === 0 && !r.ok) {
            for (const w of this.waiting.values()) w.resolve(r);
            this.waiting.clear();
            continue;
          }
          this.waiting.get(r.id)?.resolve(r);
          this.waiting.delete(r.id);
        }
      });
    });
  }

  /** Calls `method`; its params may be left out when every one of them is optional. */
  async call<M extends Method>(method: M, ...args: Record<string, never> extends ParamsIn<M> ? [params?: ParamsIn<M>] : [params: ParamsIn<M>]): Promise<Results[M]> {
    const params: unknown = args[0] ?? {};
    const s = await this.open();
    const id = this.nextId++;
    const reply = await new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`waymarkd did not answer ${method} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting.set(id, {
        resolve: (r) => { clearTimeout(timer); resolve(r); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      s.write(JSON.stringify({ v: PROTOCOL_VERSION, id, method, params }) + '\n');
    });
    if (!reply.ok) throw new DaemonError(reply.error);
    return reply.result as Results[M];
  }

  /**
   * Subscribes this connection to events of `topics` (all when empty); `onEvent` gets each, in
   * order, `onClose` is told once the daemon closes the connection (or it fails).
   */
  async subscribe(topics: readonly Topic[], onEvent: (e: DaemonEvent) => void, onClose?: (why: string) => void): Promise<SubscribeResult> {
    this.listen(onEvent, onClose);
    return this.call('events.subscribe', { topics: [...topics] });
  }

  /**
   * Where this connection's events go (`onEvent`, in order) and who is told once the daemon
   * closes it (`onClose`): for calls that subscribe on their own (agent.register).
   */
  listen(onEvent: (e: DaemonEvent) => void, onClose?: (why: string) => void): void {
    this.onEvent = onEvent;
    this.onClose = onClose;
  }

  close(): void {
    this.onClose = undefined;
    this.sock?.end();
    this.sock = undefined;
  }
}
