/**
 * A client of the decide socket for Node programs (the TypeScript API): the same protocol the
 * C library speaks, over a seqpacket socket driven by the event loop through the addon.
 */
import { dirname, join } from 'node:path';
import { controlSocketPath } from '../daemon/client.js';
import * as native from '../native/index.js';
import {
  decodeDecideResponse, decodePending, decodeResolveResponse, encodeDecideRequest, encodeResolveRequest, readHeader, DECIDE_SOCKET, WM_TYPE,
  type DecideRequest, type DecideResponse, type ResolveRequest, type ResolveResponse,
} from './wire.js';

/** decide.sock next to the control socket; `socket` is the control socket or its directory (controlSocketPath). */
export function decideSocketPath(socket?: string): string {
  return join(dirname(controlSocketPath(socket)), DECIDE_SOCKET);
}

type Pending = { resolve(b: Buffer): void; reject(e: Error): void; timer: NodeJS.Timeout | undefined; deadline: number };

export class DecisionClient {
  private fd: number | undefined;
  private watcher: native.Watcher | undefined;
  private seq = 1;
  private readonly pending = new Map<number, Pending>();

  /**
   * `timeoutMs` bounds an answer; after a WM_PENDING (the answer waits for the user) it is the
   * daemon's wait, at most `promptTimeoutMs`.
   */
  constructor(readonly path = decideSocketPath(), private readonly timeoutMs = 2000, private readonly promptTimeoutMs = 60_000) {}

  private open(): number {
    if (this.fd !== undefined) return this.fd;
    const fd = native.unixConnect(this.path, 'seqpacket');
    this.fd = fd;
    this.watcher = native.watch(fd, () => this.drain(), { unref: true });
    return fd;
  }

  private drain(): void {
    for (;;) {
      let msg: Buffer | null;
      try {
        msg = this.fd === undefined ? null : native.recv(this.fd, 4096);
      } catch (e) {
        this.fail(e instanceof Error ? e : new Error(String(e)));
        return;
      }
      if (msg === null) return;
      if (msg.length === 0) return this.fail(new Error('waymarkd closed the decide socket'));
      const h = readHeader(msg);
      const p = h ? this.pending.get(h.seq) : undefined;
      if (!h || !p) continue; // stale or foreign: drop
      if (h.type === WM_TYPE.PENDING) {
        // As the C library: the deadline moves to the daemon's wait (capped), never earlier.
        const wait = decodePending(msg);
        const ms = wait ? Math.min(wait.waitMs, this.promptTimeoutMs) : 0;
        if (Date.now() + ms > p.deadline) this.arm(h.seq, p, ms);
        continue;
      }
      this.pending.delete(h.seq);
      clearTimeout(p.timer);
      p.resolve(msg);
    }
  }

  private fail(e: Error): void {
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(e); }
    this.pending.clear();
    this.close();
  }

  /** (Re)starts the time limit of request `seq`. */
  private arm(seq: number, p: Pending, ms: number): void {
    clearTimeout(p.timer);
    p.deadline = Date.now() + ms;
    p.timer = setTimeout(() => {
      this.pending.delete(seq);
      p.reject(Object.assign(new Error(`waymarkd did not decide within ${ms} ms`), { code: 'ETIMEDOUT' }));
    }, ms);
  }

  private request(buf: Buffer, seq: number): Promise<Buffer> {
    const fd = this.open();
    return new Promise((resolve, reject) => {
      const p: Pending = { resolve, reject, timer: undefined, deadline: 0 };
      this.arm(seq, p, this.timeoutMs);
      this.pending.set(seq, p);
      try {
        native.send(fd, buf);
      } catch (e) {
        this.pending.delete(seq);
        clearTimeout(p.timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    });
  }

  async decide(r: Omit<DecideRequest, 'type' | 'seq'>): Promise<DecideResponse> {
    const seq = this.seq++ >>> 0;
    const res = decodeDecideResponse(await this.request(encodeDecideRequest({ ...r, seq }), seq));
    if (!res) throw new Error('malformed answer from waymarkd');
    return res;
  }

  async resolve(r: Omit<ResolveRequest, 'type' | 'seq'>): Promise<ResolveResponse> {
    const seq = this.seq++ >>> 0;
    const buf = await this.request(encodeResolveRequest({ ...r, seq }), seq);
    const res = readHeader(buf)?.type === WM_TYPE.RESOLVE ? decodeResolveResponse(buf) : undefined;
    if (!res) throw new Error('malformed answer from waymarkd');
    return res;
  }

  close(): void {
    this.watcher?.stop();
    this.watcher = undefined;
    if (this.fd !== undefined) native.close(this.fd);
    this.fd = undefined;
  }
}
