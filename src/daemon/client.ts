/** A typed client of the control protocol, used by the CLI, the demo and tests. */
import { statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { basename, join } from 'node:path';
import { DEFAULT_SOCKET, PROTOCOL_VERSION, type Method, type Response, type Results, type WireError } from './protocol.js';

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
        this.sock = undefined;
        for (const w of this.waiting.values()) w.reject(new Error('waymarkd closed the connection'));
        this.waiting.clear();
      });
      s.on('data', (chunk: string) => {
        this.buffered += chunk;
        let nl: number;
        while ((nl = this.buffered.indexOf('\n')) >= 0) {
          const line = this.buffered.slice(0, nl);
          this.buffered = this.buffered.slice(nl + 1);
          const r = JSON.parse(line) as Response;
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

  async call<M extends Method>(method: M, params: Record<string, unknown> = {}): Promise<Results[M]> {
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

  close(): void {
    this.sock?.end();
    this.sock = undefined;
  }
}
