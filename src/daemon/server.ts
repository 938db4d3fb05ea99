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
 *   - Events (protocol v2, `events.subscribe`): the bus (./events.ts) queues at most its bound
 *     per connection; this server takes events from that queue and writes them only while the
 *     socket does not need a drain (Node's writable high-water mark), so a subscriber that
 *     stops reading holds one socket buffer and the bus's queue, and its events beyond are
 *     dropped and counted (`events.lost`). Event lines are serialised here, when written, once
 *     per event for all connections; never on the publisher's path.
 *   - A handler may keep state for as long as a connection lives (a prompt agent: protocol.ts):
 *     CallContext.onClose runs its hooks when the connection closes, however it closes.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { peerCredOfSocket, type PeerCred } from '../native/index.js';
import { mayChangeState } from './access.js';
import { CONTROL_LIMITS, ConnectionLimiter, connectionLimits, type ConnectionLimits, type ConnectionStats } from './limits.js';
import type { Logger } from './log.js';
import type { z } from 'zod';
import { TOPICS, type DaemonEvent, type EventBus, type Subscriber, type Topic } from './events.js';
import {
  MAX_LINE, METHODS, PROTOCOL_VERSION, PROTOCOL_VERSIONS, requestSchema,
  type CallContext, type EventMessage, type Handlers, type Method, type Params, type ProtocolVersion, type Response, type Results, type SubscribeResult, type WireError,
} from './protocol.js';
import { errorMessage } from '../errors.js';

const TOPIC_LIST: readonly Topic[] = TOPICS;

function isMethod(m: string): m is Method {
  return Object.hasOwn(METHODS, m);
}

export class RequestError extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
  }
}

export type { Handlers } from './protocol.js';

/**
 * The sockets' high-water mark (Node's default, made explicit): events are written to a
 * connection only while less than this is waiting in the daemon for it (see the top of this file).
 */
export const SOCKET_HIGH_WATER = 16 * 1024;

/** Requests taken from one connection whose replies are not yet written (see the top of this file). */
export const MAX_OUTSTANDING = 8;

export interface ControlServerOptions {
  /** Connection limits; what is left out comes from CONTROL_LIMITS (./limits.ts). */
  limits?: Partial<ConnectionLimits>;
  /** Where `events.subscribe` subscribes (without one, it fails with ENOSYS). */
  events?: EventBus;
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
  readonly cred: PeerCred;
  outstanding: number;
  paused: boolean;
  /** Its event subscription (v2 events.subscribe, and the topics below). */
  sub?: Subscriber;
  /** Topics it gets for as long as it is open, whatever events.subscribe asks (CallContext.addTopics). */
  readonly pinned: Set<Topic>;
  /** What runs when it closes (CallContext.onClose). */
  readonly closeHooks: (() => void)[];
  closed: boolean;
  /** CallContext.connection. */
  readonly token: object;
  /** An event flush is scheduled, or waits for 'drain'. */
  flushing: boolean;
}

/** Each event's line, made once for every connection it goes to. */
const eventLines = new WeakMap<DaemonEvent, string>();
function eventLine(e: DaemonEvent): string {
  let line = eventLines.get(e);
  if (line === undefined) {
    const msg: EventMessage = { v: 2, event: e };
    line = JSON.stringify(msg) + '\n';
    eventLines.set(e, line);
  }
  return line;
}

/** METHODS seen per method (checked against METHODS here, so indexing by a generic M keeps its types). */
const PARAM_SCHEMAS: { readonly [M in Method]: { readonly params: z.ZodType<Params<M>> } } = METHODS;

/** Parses a method's params with its own schema and calls its own handler (types correlated by M). */
async function dispatch<M extends Method>(handlers: Handlers, m: M, raw: unknown, ctx: CallContext): Promise<{ ok: true; result: Results[M] } | { ok: false; why: string }> {
  const schema = PARAM_SCHEMAS[m].params;
  const params = schema.safeParse(raw);
  if (!params.success) return { ok: false, why: params.error.issues.map((i) => `${i.path.join('.') || 'params'}: ${i.message}`).join('; ') };
  const handler: Handlers[M] = handlers[m];
  return { ok: true, result: await handler(params.data, ctx.cred, ctx) };
}

export class ControlServer {
  private readonly server: Server;
  private readonly clients = new Set<Conn>();
  private readonly limiter: ConnectionLimiter;
  private readonly events: EventBus | undefined;

  constructor(
    private readonly path: string,
    private readonly handlers: Handlers,
    private readonly log: Logger,
    options: ControlServerOptions = {},
  ) {
    this.events = options.events;
    this.server = createServer({ highWaterMark: SOCKET_HIGH_WATER }, (s) => this.accept(s));
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
    const conn: Conn = { sock, cred, outstanding: 0, paused: false, flushing: false, pinned: new Set(), closeHooks: [], closed: false, token: Object.freeze({}) };
    this.clients.add(conn);
    sock.on('close', () => {
      conn.closed = true;
      conn.sub?.close();
      if (this.clients.delete(conn)) this.limiter.release(cred.uid);
      for (const hook of conn.closeHooks.splice(0)) {
        try {
          hook();
        } catch (e) {
          this.log.error('control socket: a close hook failed', { error: errorMessage(e), pid: cred.pid, uid: cred.uid });
        }
      }
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
        chain = chain.then(() => this.handle(line, conn)).then((reply) => {
          if (sock.destroyed) {
            conn.outstanding--;
            return;
          }
          sock.write(JSON.stringify(reply) + '\n', written);
        }).catch((e: unknown) => {
          conn.outstanding--;
          this.log.error('control socket: cannot answer; closing the connection', { error: errorMessage(e), pid: cred.pid, uid: cred.uid });
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

  /** Subscribes (or re-subscribes) `conn` to the events of `topics` its caller may see. */
  private subscribe(conn: Conn, topics: readonly Topic[]): SubscribeResult {
    const bus = this.events;
    if (!bus) throw new RequestError({ code: 'ENOSYS', message: 'this daemon publishes no events' });
    conn.sub?.close();
    const seesAll = mayChangeState(conn.cred);
    const all: readonly Topic[] = [...new Set([...(topics.length > 0 ? topics : TOPIC_LIST), ...conn.pinned])];
    conn.sub = bus.subscribe({ uid: conn.cred.uid, seesAll, topics: all, wake: () => this.wakeFlush(conn) });
    this.log.debug('control socket: events subscribed', { pid: conn.cred.pid, uid: conn.cred.uid, topics: all, seesAll });
    return { topics: [...all], seesAll, queueLimit: bus.queueLimit };
  }

  /** Adds topics to `conn`'s subscription for as long as it is open (what is queued stays). */
  private pin(conn: Conn, topics: readonly Topic[]): Topic[] {
    const bus = this.events;
    if (!bus) throw new RequestError({ code: 'ENOSYS', message: 'this daemon publishes no events' });
    for (const t of topics) conn.pinned.add(t);
    if (conn.closed) return [...conn.pinned];
    if (conn.sub === undefined) {
      conn.sub = bus.subscribe({ uid: conn.cred.uid, seesAll: mayChangeState(conn.cred), topics: [...conn.pinned], wake: () => this.wakeFlush(conn) });
    } else {
      conn.sub.widen(topics);
    }
    return [...conn.sub.topics];
  }

  /** Called from EventBus.publish (synchronously): only schedules the write. */
  private wakeFlush(conn: Conn): void {
    if (conn.flushing) return;
    conn.flushing = true;
    setImmediate(() => this.flushEvents(conn));
  }

  /** Writes queued events while the socket takes them; at its high-water mark, waits for 'drain'. */
  private flushEvents(conn: Conn): void {
    const { sock, sub } = conn;
    if (sub === undefined || sock.destroyed) {
      conn.flushing = false;
      return;
    }
    while (!sock.writableNeedDrain) {
      const e = sub.take();
      if (e === undefined) {
        conn.flushing = false;
        return;
      }
      sock.write(eventLine(e));
    }
    sock.once('drain', () => this.flushEvents(conn));
  }

  private async handle(line: string, conn: Conn): Promise<Response> {
    const { cred } = conn;
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch {
      return this.fail(0, { code: 'EPROTO', message: 'not JSON' }, cred);
    }
    const id = typeof json === 'object' && json !== null && typeof (json as { id?: unknown }).id === 'number' ? (json as { id: number }).id : 0;
    const req = requestSchema.safeParse(json);
    const asked = typeof json === 'object' && json !== null ? (json as { v?: unknown }).v : undefined;
    if (!req.success && asked !== undefined && !PROTOCOL_VERSIONS.some((x) => x === asked)) {
      return this.fail(id, { code: 'EPROTO', message: `protocol version ${JSON.stringify(asked)} is not spoken here (waymarkd speaks ${PROTOCOL_VERSIONS.join(', ')})` }, cred);
    }
    if (!req.success) {
      const why = req.error.issues.map((i) => `${i.path.join('.') || 'message'}: ${i.message}`).join('; ');
      return this.fail(id, { code: 'EPROTO', message: `bad request: ${why}` }, cred);
    }
    const { method, v } = req.data;
    if (!isMethod(method)) return this.fail(id, { code: 'ENOSYS', message: `unknown method "${method}"` }, cred, v);
    const spec = METHODS[method];
    if (spec.since > v) return this.fail(id, { code: 'EPROTO', message: `${method} needs protocol version ${spec.since} (the request says ${v})` }, cred, v);
    if (spec.privileged && !mayChangeState(cred)) {
      return this.fail(id, { code: 'EPERM', message: `${method} needs root or membership of the waymark group` }, cred, v);
    }
    const ctx: CallContext = {
      cred, v, connection: conn.token,
      subscribe: (topics) => this.subscribe(conn, topics),
      addTopics: (topics) => this.pin(conn, topics),
      onClose: (cb) => {
        if (conn.closed) cb();
        else conn.closeHooks.push(cb);
      },
    };
    try {
      const r = await dispatch(this.handlers, method, req.data.params ?? {}, ctx);
      if (!r.ok) return this.fail(id, { code: 'EINVAL', message: `bad params: ${r.why}` }, cred, v);
      return { v, id, ok: true, result: r.result };
    } catch (e) {
      if (e instanceof RequestError) return this.fail(id, e.wire, cred, v);
      this.log.error('request failed', { method, error: errorMessage(e) });
      return this.fail(id, { code: 'EIO', message: errorMessage(e) }, cred, v);
    }
  }

  private fail(id: number, error: WireError, cred: PeerCred, v: ProtocolVersion = PROTOCOL_VERSION): Response {
    if (error.code === 'EPROTO' || error.code === 'EPERM') this.log.info('request refused', { code: error.code, pid: cred.pid, uid: cred.uid, why: error.message });
    return { v, id, ok: false, error };
  }
}
