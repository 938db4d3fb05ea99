/**
 * The decide socket: the daemon's end of the decision protocol (native/include/waymark_proto.h,
 * wire format in ./wire.ts). A SOCK_SEQPACKET Unix socket, mode 0666 (anyone may ask; the caller
 * is identified by SO_PEERCRED, read once per connection, never by what a message says).
 *
 * Driven by the addon's poll watchers rather than node:net (which has no seqpacket): one watcher
 * on the listening fd, one per client fd; fds are the addon's plain numbers, owned here.
 *
 *   - Each message is one request. Decoded by ./wire.ts; anything malformed (size, magic,
 *     version, type, unterminated strings, bad family...) is counted in `stats.malformed` and
 *     dropped without a reply. Nothing a client sends can throw out of a watcher.
 *   - Replies may leave out of order (resolve is asynchronous); the library matches `seq`. The
 *     reply's seq is always the request's, whatever the handler put there. A decision that waits
 *     for the user ({@link DeferredAnswer}) is preceded by a WM_PENDING with the same seq.
 *   - A handler that throws (or rejects, or returns a response that cannot be encoded) gets a
 *     fail-closed answer instead of silence, so the program fails at once rather than after the
 *     library's timeout: DECIDE -> DENY with ENETUNREACH, RESOLVE -> DNS_FAILED; both with
 *     ttl_ms 0 and generation 0 (never cached: the generation file never holds 0). Such errors
 *     are logged at error level, at most once per {@link ERROR_LOG_INTERVAL_MS} with a count of
 *     the ones not logged.
 *   - A reply to a client that has gone, or whose receive queue is full (EAGAIN: it is not
 *     reading), is dropped. EOF, a poll error or a receive error closes that client only.
 *   - At most `maxClients` connections (default 1024) are kept; beyond that a new connection is
 *     accepted and closed at once (the library sees EOF and falls back without waiting), counted
 *     in `stats.rejected`.
 *   - Cost per request: one recv into a buffer the server reuses (the decoders copy what they
 *     keep), the decode, the handler, the encode, one send. Nothing is logged per request above
 *     debug level (and debug lines are only built for malformed messages).
 *   - Busy polling (`busyPollUs`): after a decision request the event loop keeps polling, yielding
 *     the CPU at every turn, for a moment instead of sleeping. A program's first connects come in
 *     bursts and each one waits for its answer; an idle CPU takes tens of µs to wake (measured on
 *     a 2-vCPU VM: a C ping-pong over a Unix socket takes 25-30 µs p50 when the answering side
 *     sleeps, 5 µs when it polls). Yielding keeps it from taking the CPU from anybody: any
 *     runnable task goes first. The window is measured in wall time, so it ends as soon after
 *     the last request on a busy machine as on an idle one.
 *
 * A zero-length seqpacket message cannot be told from EOF by recv(): it closes the connection.
 */
import { lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import * as native from '../native/index.js';
import type { Logger } from '../daemon/log.js';
import {
  WM_ACTION, WM_RESOLVE, WM_TYPE, decodeDecideRequest, decodeResolveRequest, encodeDecideResponse, encodePending, encodeResolveResponse,
  readHeader, type DecideRequest, type DecideResponse, type ResolveRequest, type ResolveResponse,
} from './wire.js';

export interface Caller {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/**
 * An answer that waits for the user (a prompt): the server sends WM_PENDING with `waitMs` at
 * once, so the library waits up to that long (capped by its WAYMARK_PROMPT_TIMEOUT_MS) instead
 * of its usual bound, then the answer when `answer` settles.
 */
export class DeferredAnswer<T> {
  constructor(readonly waitMs: number, readonly answer: Promise<T>) {}
}

/** `caller` is one object per connection, the same for all its requests (handlers may key caches on it). */
export interface DecisionHandlers {
  decide(req: DecideRequest, caller: Caller): DecideResponse | Promise<DecideResponse> | DeferredAnswer<DecideResponse>;
  resolve(req: ResolveRequest, caller: Caller): Promise<ResolveResponse>;
}

export interface DecisionServerOptions {
  /** Connections kept at once (default 1024). */
  maxClients?: number;
  /** Socket file mode (default 0o666). */
  mode?: number;
  /** listen() backlog (default 128). */
  backlog?: number;
  /** How long the event loop polls without sleeping after a decision request, in µs (default {@link DEFAULT_BUSY_POLL_US}; 0: never). */
  busyPollUs?: number;
}

export interface DecisionStats {
  /** Well-formed requests handed to a handler. */
  readonly requests: number;
  /** Messages dropped unanswered because they were malformed. */
  readonly malformed: number;
  /** Connections open now. */
  readonly clients: number;
  /** Connections closed at once because `maxClients` were open. */
  readonly rejected: number;
  /** Requests whose handler failed (answered fail-closed). */
  readonly handlerErrors: number;
  /** Answers not delivered: the client was gone or its receive queue full. */
  readonly droppedReplies: number;
  /** Event-loop turns spent busy polling (see `busyPollUs`). */
  readonly busyPollTurns: number;
}

export const DEFAULT_MAX_CLIENTS = 1024;
export const DEFAULT_BUSY_POLL_US = 200;
export const ERROR_LOG_INTERVAL_MS = 10_000;
/** Larger than any request: a bigger message is consumed and reported by recv() as EMSGSIZE. */
const RECV_SIZE = 1024;
/** Messages handled per wake-up of one client before yielding to the others (level-triggered: the rest comes next turn). */
const BATCH = 64;
const ENETUNREACH = 101;
/** How long accepting pauses after accept() failed (fd exhaustion). */
const ACCEPT_PAUSE_MS = 100;

interface Client {
  readonly fd: number;
  readonly caller: Caller;
  watcher: native.Watcher | undefined;
  open: boolean;
}

/** Handler outcome → reply: sync results go out at once, promises when they settle. */
function isPromise<T>(v: T | Promise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown } | null)?.then === 'function';
}

export class DecisionServer {
  private listenFd: number | undefined;
  private listenWatcher: native.Watcher | undefined;
  private acceptTimer: NodeJS.Timeout | undefined;
  private socketIno: number | undefined;
  private readonly clients = new Set<Client>();
  private readonly maxClients: number;
  private counters = { requests: 0, malformed: 0, rejected: 0, handlerErrors: 0, droppedReplies: 0, busyPollTurns: 0 };
  private lastErrorLog = -Infinity;
  private readonly rx = Buffer.allocUnsafe(RECV_SIZE);
  private readonly busyPollMs: number;
  private busy = { until: 0, polling: false };
  private suppressedErrors = 0;

  constructor(
    readonly path: string,
    private readonly handlers: DecisionHandlers,
    private readonly log: Logger,
    private readonly options: DecisionServerOptions = {},
  ) {
    this.maxClients = options.maxClients ?? DEFAULT_MAX_CLIENTS;
    this.busyPollMs = (options.busyPollUs ?? DEFAULT_BUSY_POLL_US) / 1000;
  }

  get stats(): DecisionStats {
    return { ...this.counters, clients: this.clients.size };
  }

  /** Binds the socket (a stale one is replaced) and starts accepting. Throws on failure. */
  listen(): void {
    if (this.listenFd !== undefined) throw new Error('already listening');
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
    const fd = native.unixListen(this.path, 'seqpacket', this.options.backlog ?? 128, this.options.mode ?? 0o666);
    try {
      this.socketIno = lstatSync(this.path).ino;
      this.listenWatcher = native.watch(fd, (err) => this.onAcceptable(err));
    } catch (e) {
      native.close(fd);
      throw e;
    }
    this.listenFd = fd;
  }

  /**
   * Stops accepting, closes every connection and removes the socket file (only if it is still
   * ours: a newer daemon may have replaced it). Pending asynchronous answers are dropped.
   * Idempotent.
   */
  close(): void {
    for (const c of [...this.clients]) this.drop(c);
    clearTimeout(this.acceptTimer);
    this.acceptTimer = undefined;
    this.listenWatcher?.stop();
    this.listenWatcher = undefined;
    if (this.listenFd !== undefined) {
      try {
        native.close(this.listenFd);
      } catch {
        /* already gone */
      }
      this.listenFd = undefined;
      try {
        if (lstatSync(this.path).ino === this.socketIno) unlinkSync(this.path);
      } catch {
        /* already removed */
      }
    }
  }

  private onAcceptable(err?: Error): void {
    if (err !== undefined) {
      this.log.error('decide socket: polling failed; no longer accepting', { error: err.message });
      this.listenWatcher = undefined;
      return;
    }
    if (this.listenFd === undefined) return;
    for (let i = 0; i < BATCH; i++) {
      let fd: number | null;
      try {
        fd = native.accept(this.listenFd);
      } catch (e) {
        // EMFILE/ENFILE, ENOBUFS...: the connection stays queued and the level-triggered watcher
        // would fire again at once; pause accepting for a moment instead of spinning.
        this.log.warn('decide socket: accept failed; pausing', { error: (e as Error).message, pauseMs: ACCEPT_PAUSE_MS });
        this.pauseAccepting();
        return;
      }
      if (fd === null) return;
      this.admit(fd);
    }
  }

  private pauseAccepting(): void {
    this.listenWatcher?.stop();
    this.listenWatcher = undefined;
    this.acceptTimer = setTimeout(() => {
      this.acceptTimer = undefined;
      if (this.listenFd === undefined) return;
      try {
        this.listenWatcher = native.watch(this.listenFd, (err) => this.onAcceptable(err));
      } catch (e) {
        this.log.error('decide socket: cannot resume accepting', { error: (e as Error).message });
      }
    }, ACCEPT_PAUSE_MS);
  }

  private admit(fd: number): void {
    if (this.clients.size >= this.maxClients) {
      this.counters.rejected++;
      if (this.counters.rejected === 1 || this.counters.rejected % 1000 === 0) {
        this.log.warn('decide socket: too many clients; refusing connections', { max: this.maxClients, rejected: this.counters.rejected });
      }
      this.closeFd(fd);
      return;
    }
    let caller: Caller;
    try {
      const cred = native.peerCred(fd);
      caller = { pid: cred.pid, uid: cred.uid, gid: cred.gid };
    } catch (e) {
      this.log.warn('decide socket: cannot read peer credentials; closing', { error: (e as Error).message });
      this.closeFd(fd);
      return;
    }
    const client: Client = { fd, caller, watcher: undefined, open: true };
    try {
      client.watcher = native.watch(fd, (err) => this.onReadable(client, err));
    } catch (e) {
      this.log.warn('decide socket: cannot watch a connection; closing', { error: (e as Error).message });
      this.closeFd(fd);
      return;
    }
    this.clients.add(client);
  }

  private onReadable(client: Client, err?: Error): void {
    if (err !== undefined) {
      client.watcher = undefined; // stopped by the addon
      this.drop(client);
      return;
    }
    for (let i = 0; i < BATCH && client.open; i++) {
      let n: number | null;
      try {
        n = native.recvInto(client.fd, this.rx);
      } catch (e) {
        if (native.isNativeError(e, 'EMSGSIZE')) {
          this.malformed(client, 'oversized');
          continue;
        }
        this.drop(client); // ECONNRESET...
        return;
      }
      if (n === null) return;
      if (n === 0) {
        this.drop(client); // EOF
        return;
      }
      try {
        this.handle(client, this.rx.subarray(0, n));
      } catch (e) {
        // A bug of ours: keep it inside this connection rather than crash the daemon.
        this.log.error('decide socket: request handling failed; closing the connection', { error: (e as Error).message, pid: client.caller.pid });
        this.drop(client);
        return;
      }
    }
  }

  private handle(client: Client, msg: Buffer): void {
    const h = readHeader(msg);
    if (h === undefined) {
      this.malformed(client, 'bad header');
      return;
    }
    if (h.type === WM_TYPE.DECIDE) {
      const req = decodeDecideRequest(msg);
      if (req === undefined) {
        this.malformed(client, 'bad decide request');
        return;
      }
      this.counters.requests++;
      this.keepPolling();
      let out: DecideResponse | Promise<DecideResponse>;
      try {
        const got = this.handlers.decide(req, client.caller);
        if (got instanceof DeferredAnswer) {
          this.reply(client, req.seq, { seq: req.seq, waitMs: got.waitMs }, encodePending);
          out = got.answer;
        } else {
          out = got;
        }
      } catch (e) {
        this.handlerFailed('decide', e, client);
        this.reply(client, req.seq, denyResponse(req.seq), encodeDecideResponse);
        return;
      }
      if (isPromise(out)) {
        out.then(
          (resp) => this.reply(client, req.seq, resp, encodeDecideResponse, () => denyResponse(req.seq)),
          (e: unknown) => {
            this.handlerFailed('decide', e, client);
            this.reply(client, req.seq, denyResponse(req.seq), encodeDecideResponse);
          },
        );
      } else {
        this.reply(client, req.seq, out, encodeDecideResponse, () => denyResponse(req.seq));
      }
    } else if (h.type === WM_TYPE.RESOLVE) {
      const req = decodeResolveRequest(msg);
      if (req === undefined) {
        this.malformed(client, 'bad resolve request');
        return;
      }
      this.counters.requests++;
      let out: Promise<ResolveResponse>;
      try {
        out = Promise.resolve(this.handlers.resolve(req, client.caller));
      } catch (e) {
        out = Promise.reject(e);
      }
      out.then(
        (resp) => this.reply(client, req.seq, resp, encodeResolveResponse, () => dnsFailedResponse(req.seq)),
        (e: unknown) => {
          this.handlerFailed('resolve', e, client);
          this.reply(client, req.seq, dnsFailedResponse(req.seq), encodeResolveResponse);
        },
      );
    } else {
      this.malformed(client, 'unknown type');
    }
  }

  /** Encodes and sends; an unencodable handler response is replaced by `fallback()`. */
  private reply<T>(client: Client, seq: number, resp: T, encode: (r: T) => Buffer, fallback?: () => T): void {
    if (!client.open) {
      this.counters.droppedReplies++;
      return;
    }
    let buf: Buffer;
    try {
      buf = encode(resp);
    } catch (e) {
      if (fallback === undefined) throw e; // our own fallbacks always encode
      this.handlerFailed('encode', e, client);
      buf = encode(fallback());
    }
    buf.writeUInt32LE(seq >>> 0, 8);
    try {
      native.send(client.fd, buf);
    } catch (e) {
      // EAGAIN: the client does not read its answers; drop this one. Anything else: it is gone.
      this.counters.droppedReplies++;
      if (!native.isNativeError(e, 'EAGAIN')) this.drop(client);
    }
  }

  /** Busy polling (see the top of this file): (re)opens the window after a decision request. */
  private keepPolling(): void {
    if (this.busyPollMs <= 0) return;
    this.busy.until = performance.now() + this.busyPollMs;
    if (this.busy.polling) return;
    this.busy.polling = true;
    setImmediate(this.pollTurn);
  }

  /** One turn: a pending immediate makes libuv's next epoll_wait non-blocking. */
  private readonly pollTurn = (): void => {
    if (this.listenFd === undefined || performance.now() >= this.busy.until) {
      this.busy.polling = false;
      return;
    }
    this.counters.busyPollTurns++;
    native.yieldCpu();
    setImmediate(this.pollTurn);
  };

  private malformed(client: Client, why: string): void {
    this.counters.malformed++;
    this.log.debug('decide socket: malformed message dropped', { why, pid: client.caller.pid, uid: client.caller.uid });
  }

  private handlerFailed(what: string, e: unknown, client: Client): void {
    this.counters.handlerErrors++;
    const now = Date.now();
    if (now - this.lastErrorLog < ERROR_LOG_INTERVAL_MS) {
      this.suppressedErrors++;
      return;
    }
    this.lastErrorLog = now;
    this.log.error('decision handler failed; answered fail-closed', {
      handler: what, error: e instanceof Error ? e.message : String(e), pid: client.caller.pid, uid: client.caller.uid,
      suppressed: this.suppressedErrors > 0 ? this.suppressedErrors : undefined,
    });
    this.suppressedErrors = 0;
  }

  private drop(client: Client): void {
    if (!client.open) return;
    client.open = false;
    this.clients.delete(client);
    client.watcher?.stop(); // before close(): never poll a closed (possibly reused) fd
    client.watcher = undefined;
    this.closeFd(client.fd);
  }

  private closeFd(fd: number): void {
    try {
      native.close(fd);
    } catch {
      /* EBADF: nothing to do */
    }
  }
}

function denyResponse(seq: number): DecideResponse {
  return { seq, action: WM_ACTION.DENY, err: ENETUNREACH, ifindex: 0, mark: 0, ttlMs: 0, generation: 0, ifname: '', uplink: '' };
}

function dnsFailedResponse(seq: number): ResolveResponse {
  return { seq, status: WM_RESOLVE.DNS_FAILED, ttlMs: 0, generation: 0, uplink: '', addrs: [] };
}
