/**
 * The control socket: newline-delimited JSON (see protocol.ts) over a Unix stream socket.
 * A malformed or oversized message gets an error reply (or the connection is closed) and never
 * reaches the handlers; one client cannot harm another or the daemon.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { peerCredOfSocket, type PeerCred } from '../native/index.js';
import { mayChangeState } from './access.js';
import type { Logger } from './log.js';
import { MAX_LINE, METHODS, PROTOCOL_VERSION, requestSchema, type Method, type Response, type WireError } from './protocol.js';

export class RequestError extends Error {
  constructor(readonly wire: WireError) {
    super(wire.message);
  }
}

export type Handler = (params: Record<string, unknown>, cred: PeerCred) => Promise<unknown>;

export class ControlServer {
  private readonly server: Server;
  private readonly clients = new Set<Socket>();

  constructor(
    private readonly path: string,
    private readonly handlers: Record<Method, Handler>,
    private readonly log: Logger,
  ) {
    this.server = createServer((s) => this.accept(s));
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
    for (const c of this.clients) c.destroy();
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
    this.clients.add(sock);
    sock.on('close', () => this.clients.delete(sock));
    sock.on('error', () => sock.destroy());
    let buffered = '';
    let chain = Promise.resolve();
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim() === '') continue;
        // Replies leave in request order even when handlers take different times.
        chain = chain.then(() => this.handle(line, cred)).then((reply) => {
          if (!sock.destroyed) sock.write(JSON.stringify(reply) + '\n');
        });
      }
      if (buffered.length > MAX_LINE) {
        this.log.warn('message too long; closing connection', { pid: cred.pid, uid: cred.uid });
        sock.destroy();
      }
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
