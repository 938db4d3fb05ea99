/**
 * The control socket: newline-delimited JSON (see protocol.ts) over a Unix stream socket.
 * A malformed or oversized message gets an error reply (or the connection is closed) and never
 * reaches the handlers; one client cannot harm another or the daemon.
 *
 *   - Connections are limited per uid and in all, with a reserve for root (./limits.ts: 128 per
 *     uid, 512 in all of which 64 are root's). A connection beyond a limit gets one error line
 *     (`EBUSY`, id 0, saying which limit) and is closed; refusals are counted per uid in
 *     `stats` (and `waymark status`) and logged, rate-limited, naming the uid.
 *   - What one connection holds is bounded: at most {@link MAX_OUTSTANDING} requests are taken
 *     from it at once, counted from the moment their line is read until their reply has been
 *     handed to the kernel. At the bound the server stops reading (socket.pause()) and leaves
 *     the rest in the socket, where the client's writes then block; it reads on as replies are
 *     written. So a client that pipelines requests and never reads its replies costs
 *     {@link MAX_OUTSTANDING} replies and one socket buffer, not a queue that grows. Such a
 *     client is paused, not dropped: a slow but honest client (a script piping many requests)
 *     only waits, and the connection limits bound how many paused connections a user can hold.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { peerCredOfSocket, type PeerCred } from '../native/index.js';
import { mayChangeState } from './access.js';
import { CONTROL_LIMITS, ConnectionLimiter, connectionLimits, type ConnectionLimits, type ConnectionStats } from './limits.js';
import type { Logger } from './log.js';
import { MAX_LINE, METHODS, PROTOCOL_VERSION, requestSchema, type Method, type Response, type WireError } from './protocol.js';

export class RequestError extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
  }
}

export type Handler = (params: Record<string, unknown>, cred: PeerCred) => Promise<unknown>;

/** Requests taken from one connection whose replies are not yet written (see the top of this file). */
export const MAX_OUTSTANDING = 8;

export interface ControlServerOptions {
  /** Connection limits; what is left out comes from CONTROL_LIMITS (./limits.ts). */
  limits?: Partial<ConnectionLimits>;
}

export interface ControlStats extends ConnectionStats {
  /** Connections open now. */
  readonly clients: number;
  /** Requests read whose replies have not been handed to the kernel yet, over all connections. */
  readonly outstanding: number;
  /** Reply bytes waiting in the daemon (not yet taken by the kernel), over all connections. */
  readonly unwrittenBytes: number;
  /** Connections not read now because {@link MAX_OUTSTANDING} of their replies are pending. */
  readonly pausedClients: number;
}

interface Conn {
  readonly sock: Socket;
  outstanding: number;
  paused: boolean;
}

export class ControlServer {
  private readonly server: Server;
  private readonly clients = new Set<Conn>();
  private readonly limiter: ConnectionLimiter;

  constructor(
    private readonly path: string,
    private readonly handlers: Record<Method, Handler>,
    private readonly log: Logger,
    options: ControlServerOptions = {},
  ) {
    this.server = createServer((s) => this.accept(s));
    this.limiter = new ConnectionLimiter('control socket', connectionLimits(options.limits ?? {}, CONTROL_LIMITS), log);
  }

  get stats(): ControlStats {
    let outstanding = 0;
    let unwrittenBytes = 0;
    let pausedClients = 0;
    for (const c of this.clients) {
      outstanding += c.outstanding;
      unwrittenBytes += c.sock.writableLength;
      if (c.paused) pausedClients++;
    }
    return { ...this.limiter.stats, clients: this.clients.size, outstanding, unwrittenBytes, pausedClients };
  }

  listen(): Promise<void> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
    try {
      if (lstatSync(this.path).isSocket()) unlinkSync(this.path); // a stale socket from a crashed run
    } catch {
      /* nothing there */
    }
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.path, () => {
        // Anyone may connect and read; changes are checked per request against SO_PEERCRED.
        chmodSync(this.path, 0o666);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    for (const c of this.clients) c.sock.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(sock: Socket): void {
    let cred: PeerCred;
    try {
      cred = peerCredOfSocket(sock);
    } catch (e) {
      this.log.warn('cannot read peer credentials; closing', { error: (e as Error).message });
      sock.destroy();
      return;
    }
    sock.on('error', () => sock.destroy());
    if (!this.limiter.admit(cred.uid, cred.pid)) {
      const reason = this.limiter.refusal(cred.uid);
      const why = reason === 'total'
        ? `too many connections to waymarkd (at most ${this.limiter.limits.total})`
        : reason === 'uid'
          ? `too many connections to waymarkd from uid ${cred.uid} (at most ${this.limiter.limits.perUid} per uid)`
          : `too many connections to waymarkd (the last ${this.limiter.limits.rootReserve} are kept for root)`;
      const refusal: Response = { v: PROTOCOL_VERSION, id: 0, ok: false, error: { code: 'EBUSY', message: why } };
      // A fresh socket's buffer takes this line at once; the fd is closed as soon as it has.
      sock.end(JSON.stringify(refusal) + '\n', () => sock.destroy());
      return;
    }
    const conn: Conn = { sock, outstanding: 0, paused: false };
    this.clients.add(conn);
    sock.on('close', () => {
      if (this.clients.delete(conn)) this.limiter.release(cred.uid);
    });
    let buffered = '';
    let chain = Promise.resolve();
    const written = (): void => {
      conn.outstanding--;
      pump();
    };
    // Takes complete lines while fewer than MAX_OUTSTANDING are pending; pauses reading at the bound.
    const pump = (): void => {
      if (sock.destroyed) return;
      let nl: number;
      while (conn.outstanding < MAX_OUTSTANDING && (nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim() === '') continue;
        conn.outstanding++;
        // Replies leave in request order even when handlers take different times.
        chain = chain.then(() => this.handle(line, cred)).then((reply) => {
          if (sock.destroyed) {
            conn.outstanding--;
            return;
          }
          sock.write(JSON.stringify(reply) + '\n', written);
        }).catch((e: unknown) => {
          conn.outstanding--;
          this.log.error('control socket: cannot answer; closing the connection', { error: e instanceof Error ? e.message : String(e), pid: cred.pid, uid: cred.uid });
          sock.destroy();
        });
      }
      if (buffered.length > MAX_LINE && buffered.indexOf('\n') < 0) {
        this.log.warn('message too long; closing connection', { pid: cred.pid, uid: cred.uid });
        sock.destroy();
        return;
      }
      const full = conn.outstanding >= MAX_OUTSTANDING;
      if (full && !conn.paused) {
        conn.paused = true;
        sock.pause();
        this.log.debug('control socket: replies pending; reading paused', { pid: cred.pid, uid: cred.uid, outstanding: conn.outstanding });
      } else if (!full && conn.paused) {
        conn.paused = false;
        sock.resume();
      }
    };
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buffered += chunk;
      pump();
    });
  }

  private async handle(line: string, cred: PeerCred): Promise<Response> {
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch {
      return this.fail(0, { code: 'EPROTO', message: 'not JSON' }, cred);
    }
    const id = typeof json === 'object' && json !== null && typeof (json as { id?: unknown }).id === 'number' ? (json as { id: number }).id : 0;
    const req = requestSchema.safeParse(json);
    if (!req.success) {
      const why = req.error.issues.map((i) => `${i.path.join('.') || 'message'}: ${i.message}`).join('; ');
      return this.fail(id, { code: 'EPROTO', message: `bad request: ${why}` }, cred);
    }
    const { method } = req.data;
    if (!Object.hasOwn(METHODS, method)) return this.fail(id, { code: 'ENOSYS', message: `unknown method "${method}"` }, cred);
    const m = method as Method;
    const spec = METHODS[m];
    if (spec.privileged && !mayChangeState(cred)) {
      return this.fail(id, { code: 'EPERM', message: `${m} needs root or membership of the waymark group` }, cred);
    }
    const params = spec.params.safeParse(req.data.params ?? {});
    if (!params.success) {
      const why = params.error.issues.map((i) => `${i.path.join('.') || 'params'}: ${i.message}`).join('; ');
      return this.fail(id, { code: 'EINVAL', message: `bad params: ${why}` }, cred);
    }
    try {
      const result = await this.handlers[m](params.data, cred);
      return { v: PROTOCOL_VERSION, id, ok: true, result };
    } catch (e) {
      if (e instanceof RequestError) return this.fail(id, e.wire, cred);
      this.log.error('request failed', { method: m, error: e instanceof Error ? e.message : String(e) });
      return this.fail(id, { code: 'EIO', message: e instanceof Error ? e.message : String(e) }, cred);
    }
  }

  private fail(id: number, error: WireError, cred: PeerCred): Response {
    if (error.code === 'EPROTO' || error.code === 'EPERM') this.log.info('request refused', { code: error.code, pid: cred.pid, uid: cred.uid, why: error.message });
    return { v: PROTOCOL_VERSION, id, ok: false, error };
  }
}
