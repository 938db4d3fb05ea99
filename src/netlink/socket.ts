/**
 * A netlink socket driven by the Node event loop through the native addon: rtnetlink
 * (RtnlSocket) and sock_diag (src/daemon/rtt-monitor.ts) alike.
 * Requests are serialised (a dump must finish before the next starts on one socket) and matched
 * to replies by sequence number; multicast events go to the `onEvent` callback.
 */
import * as native from '../native/index.js';
import { encodeMessage, errorCode, NLM_F, NLMSG, splitMessages, type NlMessage } from './message.js';

const NETLINK_ROUTE = 0;
const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 3: 'ESRCH', 13: 'EACCES', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV',
  22: 'EINVAL', 95: 'EOPNOTSUPP', 97: 'EAFNOSUPPORT', 101: 'ENETUNREACH', 105: 'ENOBUFS',
};

export class NetlinkError extends Error {
  constructor(readonly errno: number, readonly op: string) {
    super(`${op}: ${ERRNO_NAMES[errno] ?? `errno ${errno}`}`);
    this.name = 'NetlinkError';
  }
  get code(): string {
    return ERRNO_NAMES[this.errno] ?? `E${this.errno}`;
  }
}

interface Pending {
  readonly seq: number;
  readonly op: string;
  readonly replies: NlMessage[];
  resolve(msgs: NlMessage[]): void;
  reject(e: Error): void;
}

export class NetlinkSocket {
  private readonly fd: number;
  private readonly watcher: { stop(): void };
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private pending: Pending | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  /**
   * @param groups legacy multicast group bits (RTMGRP.*) to receive events for; 0 for a request socket.
   * @param onEvent called with every multicast message; `undefined` signals lost events (ENOBUFS),
   *   after which the caller must resynchronise from a full dump.
   */
  constructor(protocol: number, groups = 0, private readonly onEvent?: (m: NlMessage | undefined) => void) {
    this.fd = native.netlinkOpen(protocol, groups);
    this.watcher = native.watch(this.fd, () => this.drain());
  }

  /** Sends one request and resolves with its replies (dump parts, or nothing for an ACKed change). */
  request(type: number, flags: number, body: Buffer, op: string): Promise<NlMessage[]> {
    const run = (): Promise<NlMessage[]> =>
      new Promise<NlMessage[]>((resolve, reject) => {
        if (this.closed) return reject(new Error('netlink socket closed'));
        this.seq = (this.seq + 1) >>> 0;
        this.pending = { seq: this.seq, op, replies: [], resolve, reject };
        try {
          native.netlinkSend(this.fd, encodeMessage(type, flags | NLM_F.REQUEST | NLM_F.ACK, this.seq, body));
        } catch (e) {
          this.pending = undefined;
          reject(e instanceof Error ? e : new Error(String(e)));
        }
      });
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.stop();
    native.close(this.fd);
    this.pending?.reject(new Error('netlink socket closed'));
    this.pending = undefined;
  }

  private drain(): void {
    for (;;) {
      let buf: Buffer | null;
      try {
        buf = native.recv(this.fd);
      } catch (e) {
        if ((e as { code?: string }).code === 'ENOBUFS') {
          this.onEvent?.(undefined);
          continue;
        }
        throw e;
      }
      if (!buf) return;
      for (const m of splitMessages(buf)) this.dispatch(m);
    }
  }

  private dispatch(m: NlMessage): void {
    // An event socket carries only multicast notifications (which echo the seq of whoever caused
    // them, so seq cannot tell them apart); a request socket only replies.
    if (this.onEvent) return this.onEvent(m);
    const p = this.pending;
    if (!p || m.seq !== p.seq) return; // a late reply to a request already settled
    if (m.type === NLMSG.ERROR) {
      this.pending = undefined;
      const errno = errorCode(m);
      if (errno === 0) p.resolve(p.replies);
      else p.reject(new NetlinkError(errno, p.op));
    } else if (m.type === NLMSG.DONE) {
      // A dump ends with DONE; with NLM_F_ACK an ACK may follow it, which arrives as a stale reply.
      this.pending = undefined;
      p.resolve(p.replies);
    } else {
      p.replies.push(m);
    }
  }
}

/** An rtnetlink (NETLINK_ROUTE) socket. */
export class RtnlSocket extends NetlinkSocket {
  constructor(groups = 0, onEvent?: (m: NlMessage | undefined) => void) {
    super(NETLINK_ROUTE, groups, onEvent);
  }
}
