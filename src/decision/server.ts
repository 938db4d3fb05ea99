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
 *   - Connections are limited per uid and in all, with a reserve for root that no other user
 *     can take (../daemon/limits.ts: 1024 per uid, 4096 in all of which 512 are root's, the
 *     total lowered to fit RLIMIT_NOFILE). A connection beyond a limit is accepted and closed at
 *     once (the library sees EOF and falls back without waiting), counted in `stats.rejected`
 *     and per uid in `stats.refusedByUid`, and logged (rate-limited, naming the uid).
 *   - Asynchronous answers (a resolve, a decision that waits for the user or for a promise) are
 *     bounded: at most {@link MAX_INFLIGHT_PER_CLIENT} per connection and
 *     {@link MAX_INFLIGHT_PER_UID} per uid are pending at once. At the bound the server stops
 *     watching that client's fd (and, for the uid bound, every other connection of that uid that
 *     asks) until answers settle: its requests wait in its socket, and once the socket's buffer
 *     is full the client's own send() blocks or fails with EAGAIN. So a client that floods
 *     requests costs the daemon a bounded number of pending answers (and DNS query sockets),
 *     never a queue. A library thread waits for each answer, so a well-behaved connection has
 *     one pending (a few after abandoned requests). Synchronous answers are never queued: one
 *     that cannot be sent (EAGAIN) is dropped.
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
import { ConnectionLimiter, DECIDE_LIMITS, connectionLimits, decideTotalFor, openFilesLimit, type ConnectionLimits, type ConnectionStats } from '../daemon/limits.js';
import type { Logger } from '../daemon/log.js';
import {
  WM_ACTION, WM_RESOLVE, WM_TYPE, decodeDecideRequest, decodeResolveRequest, encodeDecideResponse, encodePending, encodeResolveResponse,
  readHeader, type DecideRequest, type DecideResponse, type ResolveRequest, type ResolveResponse,
} from './wire.js';
import { errorMessage } from '../errors.js';

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
  /** Connections kept at once, all uids together (default: ../daemon/limits.ts DECIDE_LIMITS, lowered to fit RLIMIT_NOFILE). */
  maxClients?: number;
  /** Connections kept at once per non-root uid (default: 1024, at most what the root reserve leaves of `maxClients`). */
  maxClientsPerUid?: number;
  /** Of `maxClients`, how many only root may use (default: 512, at most an eighth of `maxClients`). */
  rootReserve?: number;
  /** Asynchronous answers pending per connection before its fd is no longer read (default {@link MAX_INFLIGHT_PER_CLIENT}). */
  maxInflightPerClient?: number;
  /** Asynchronous answers pending per uid before its connections are no longer read (default {@link MAX_INFLIGHT_PER_UID}). */
  maxInflightPerUid?: number;
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
  /** Connections closed at once because a limit was reached (see `limits`, `refusedByUid`). */
  readonly rejected: number;
  /** The connection limits in force. */
  readonly limits: ConnectionLimits;
  /** The uids whose connections were refused, with counts, most refused first. */
  readonly refusedByUid: ConnectionStats['refusedByUid'];
  /** Asynchronous answers pending now. */
  readonly inflight: number;
  /** Connections not read now because their (or their uid's) pending answers are at the bound. */
  readonly pausedClients: number;
  /** Requests whose handler failed (answered fail-closed). */
  readonly handlerErrors: number;
  /** Answers not delivered: the client was gone or its receive queue full. */
  readonly droppedReplies: number;
  /** Event-loop turns spent busy polling (see `busyPollUs`). */
  readonly busyPollTurns: number;
}

export const MAX_INFLIGHT_PER_CLIENT = 8;
export const MAX_INFLIGHT_PER_UID = 128;
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
  /** Asynchronous answers pending. */
  inflight: number;
  /** Not watched because of the in-flight bounds (see the top of this file). */
  paused: boolean;
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
  private readonly limiter: ConnectionLimiter;
  private readonly limitsLowered: boolean;
  private readonly maxInflight: number;
  private readonly maxInflightPerUid: number;
  private readonly inflightByUid = new Map<number, number>();
  private readonly pausedByUid = new Map<number, Set<Client>>();
  private inflight = 0;
  private counters = { requests: 0, malformed: 0, handlerErrors: 0, droppedReplies: 0, busyPollTurns: 0 };
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
    const fitting = decideTotalFor(openFilesLimit());
    this.limitsLowered = options.maxClients === undefined && fitting < DECIDE_LIMITS.total;
    const limits = connectionLimits({ total: options.maxClients ?? fitting, perUid: options.maxClientsPerUid, rootReserve: options.rootReserve }, DECIDE_LIMITS);
    this.limiter = new ConnectionLimiter('decide socket', limits, log);
    this.maxInflight = Math.max(1, options.maxInflightPerClient ?? MAX_INFLIGHT_PER_CLIENT);
    this.maxInflightPerUid = Math.max(1, options.maxInflightPerUid ?? MAX_INFLIGHT_PER_UID);
    this.busyPollMs = (options.busyPollUs ?? DEFAULT_BUSY_POLL_US) / 1000;
  }

  get stats(): DecisionStats {
    const { refused, limits, refusedByUid } = this.limiter.stats;
    let pausedClients = 0;
    for (const s of this.pausedByUid.values()) pausedClients += s.size;
    return { ...this.counters, clients: this.clients.size, rejected: refused, limits, refusedByUid, inflight: this.inflight, pausedClients };
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
    if (this.limitsLowered) {
      this.log.warn('decide socket: connection limit lowered to fit the open-files limit (RLIMIT_NOFILE)', {
        nofile: openFilesLimit(), total: this.limiter.limits.total, perUid: this.limiter.limits.perUid, rootReserve: this.limiter.limits.rootReserve,
      });
    }
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
    let caller: Caller;
    try {
      const cred = native.peerCred(fd);
      caller = { pid: cred.pid, uid: cred.uid, gid: cred.gid };
    } catch (e) {
      this.log.warn('decide socket: cannot read peer credentials; closing', { error: (e as Error).message });
      this.closeFd(fd);
      return;
    }
    if (!this.limiter.admit(caller.uid, caller.pid)) {
      this.closeFd(fd);
      return;
    }
    const client: Client = { fd, caller, watcher: undefined, open: true, inflight: 0, paused: false };
    try {
      client.watcher = native.watch(fd, (err) => this.onReadable(client, err));
    } catch (e) {
      this.log.warn('decide socket: cannot watch a connection; closing', { error: (e as Error).message });
      this.limiter.release(caller.uid);
      this.closeFd(fd);
      return;
    }
    this.clients.add(client);
  }

  /** Whether `client` must wait for pending answers before more of its requests are read. */
  private mustWait(client: Client): boolean {
    return client.inflight >= this.maxInflight || (this.inflightByUid.get(client.caller.uid) ?? 0) >= this.maxInflightPerUid;
  }

  /** Stops watching `client` until its (or its uid's) pending answers settle. */
  private pause(client: Client): void {
    if (client.paused || !client.open) return;
    client.paused = true;
    client.watcher?.stop();
    client.watcher = undefined;
    const uid = client.caller.uid;
    let set = this.pausedByUid.get(uid);
    if (set === undefined) this.pausedByUid.set(uid, (set = new Set()));
    set.add(client);
  }

  /** Forgets that `client` was paused (it is resumed or dropped). */
  private unpause(client: Client): void {
    client.paused = false;
    const set = this.pausedByUid.get(client.caller.uid);
    set?.delete(client);
    if (set?.size === 0) this.pausedByUid.delete(client.caller.uid);
  }

  private resume(client: Client): void {
    if (!client.paused) return;
    this.unpause(client);
    if (!client.open) return;
    try {
      client.watcher = native.watch(client.fd, (err) => this.onReadable(client, err));
    } catch (e) {
      this.log.warn('decide socket: cannot watch a connection again; closing', { error: (e as Error).message });
      this.drop(client);
    }
  }

  /** Runs `ok`/`fail` when `p` settles, counting it as pending until then. */
  private track<T>(client: Client, p: Promise<T>, ok: (v: T) => void, fail: (e: unknown) => void): void {
    const uid = client.caller.uid;
    client.inflight++;
    this.inflight++;
    this.inflightByUid.set(uid, (this.inflightByUid.get(uid) ?? 0) + 1);
    void p.then(ok, fail).finally(() => {
      client.inflight--;
      this.inflight--;
      const n = (this.inflightByUid.get(uid) ?? 1) - 1;
      if (n === 0) this.inflightByUid.delete(uid);
      else this.inflightByUid.set(uid, n);
      const paused = this.pausedByUid.get(uid);
      if (paused === undefined) return;
      for (const c of [...paused]) {
        if ((this.inflightByUid.get(uid) ?? 0) >= this.maxInflightPerUid) break;
        if (c.inflight < this.maxInflight) this.resume(c);
      }
    });
  }

  private onReadable(client: Client, err?: Error): void {
    if (err !== undefined) {
      client.watcher = undefined; // stopped by the addon
      this.drop(client);
      return;
    }
    for (let i = 0; i < BATCH && client.open; i++) {
      if (this.mustWait(client)) {
        this.pause(client); // level-triggered: what it sent is read on resume
        return;
      }
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
        this.track(
          client, out,
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
      this.track(
        client, out,
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
      handler: what, error: errorMessage(e), pid: client.caller.pid, uid: client.caller.uid,
      suppressed: this.suppressedErrors > 0 ? this.suppressedErrors : undefined,
    });
    this.suppressedErrors = 0;
  }

  private drop(client: Client): void {
    if (!client.open) return;
    client.open = false;
    this.clients.delete(client);
    this.limiter.release(client.caller.uid);
    if (client.paused) this.unpause(client);
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
