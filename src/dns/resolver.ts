/**
 * A DNS stub client that asks one uplink's DNS servers, over that uplink.
 *
 * Two uplinks may hold the same local address and even have a DNS server at the same IP (two
 * APNs of one modem; 10.64.0.1 in the lab), so neither the source nor the destination address
 * selects the path: the query socket carries the uplink's fwmark (SO_MARK, set by the daemon,
 * which runs with CAP_NET_ADMIN) and/or is bound to the uplink's device (SO_BINDTODEVICE). Both
 * are set after bind() and before the first send, so no packet ever leaves unsteered; the
 * daemon's policy rules (fwmark / oif) then route it by the uplink's table.
 *
 * Behaviour:
 *   - A and/or AAAA over UDP (both in parallel for family 0, on one socket per address family of
 *     the servers), random query ids, replies checked for source, id, QR and the question;
 *     anything else is a stray packet and ignored.
 *   - Servers are tried in order; the next one is asked on timeout (each server gets an equal
 *     share of `timeoutMs`), or at once on SERVFAIL/REFUSED/NOTIMP/FORMERR or a send error
 *     (e.g. ENETUNREACH when the uplink is down). A late reply from an earlier server is still
 *     accepted. The whole call is bounded by `timeoutMs` (default 2000).
 *   - A truncated reply (TC) is asked again of the same server over TCP (RFC 7766), on a
 *     connection steered like the UDP sockets (the same mark and device, set before the SYN).
 *     The TCP answer must be one well-formed message with the query's id and question; a
 *     connection error, a malformed, mismatched or again truncated answer, or the server closing
 *     early moves on to the next server at once (as SERVFAIL does). The connection is closed
 *     after the first frame (what is buffered: at most one frame of 2 + 65535 bytes and a read).
 *     While the TCP exchange runs the per-server timer goes on: the next server is asked on
 *     timeout over UDP and the TCP answer still counts when it comes.
 *   - CNAME chains in the answer section are followed (in any order, at most 16 links); the
 *     addresses of the final name are returned, with the minimum TTL of the chain and the records.
 *
 * Results: 'ok' with addresses, or 'ok' with none (the name exists without addresses of that
 * family: NODATA); 'nxdomain'; 'failed' (timeouts, server errors). A negative answer
 * carries the RFC 2308 TTL from the authority SOA, 0 when there is none. For family 0 the two
 * answers are merged: any addresses win; otherwise NXDOMAIN from either; otherwise a failure of
 * either makes the whole 'failed'; otherwise 'ok' (NODATA for both).
 *
 * Local problems are errors, not answers: the promise rejects (a RangeError for a bad name,
 * server or option; the socket's NativeError, e.g. EPERM from SO_MARK without CAP_NET_ADMIN or
 * ENODEV from SO_BINDTODEVICE) and no query is sent.
 */
import { createSocket, type Socket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { isIP, type Socket as TcpSocket } from 'node:net';
import { bindToDevice, close as closeFd, connectSteeredTcp, setMark, udpSocket } from '../native/index.js';
import { parseAddress } from '../net/prefix.js';
import { RCODE, TcpReader, decodeMessage, encodeQuery, frameTcp, isQueryableName, sameName, type AddressType, type Message } from './wire.js';

export interface DnsAddress {
  family: 4 | 6;
  address: string;
}

export interface DnsAnswer {
  status: 'ok' | 'nxdomain' | 'failed';
  addrs: DnsAddress[];
  ttlSec: number;
  /** The server whose reply decided the answer (absent when none did). */
  server?: string;
}

export interface ResolveOptions {
  /** The host name to look up (a trailing dot is allowed). */
  name: string;
  /** 4: A only, 6: AAAA only, 0: both in parallel. */
  family: 0 | 4 | 6;
  /** Server addresses (IPv4 or IPv6 literals, IPv6 may carry a %zone), asked in this order. */
  servers: readonly string[];
  /** SO_MARK for the query sockets (the uplink's fwmark; needs CAP_NET_ADMIN). */
  mark?: number;
  /** SO_BINDTODEVICE for the query sockets (the uplink's interface). */
  ifname?: string;
  /** Overall bound in milliseconds (default 2000). */
  timeoutMs?: number;
  /** Server port (default 53; tests use a random port). */
  port?: number;
}

export const DEFAULT_TIMEOUT_MS = 2000;
const MAX_CNAME_CHAIN = 16;

/** A query socket and its fd (owned by the socket: never close the fd directly). */
export interface SteeredSocket {
  readonly socket: Socket;
  readonly fd: number;
}

/**
 * A UDP socket of `family`, bound to `ifname` and marked with `mark` (each when given) before
 * node:dgram takes it over (`bind({ fd })`, which leaves it to pick an ephemeral port at the
 * first send): nothing can have been sent through it unsteered. Rejects (and closes the
 * socket) when a step fails. `created` sees the socket as soon as it exists (to close it if
 * the caller gives up).
 */
export function openSteeredSocket(
  family: 4 | 6,
  steer: { mark?: number | undefined; ifname?: string | undefined },
  created?: (s: Socket) => void,
): Promise<SteeredSocket> {
  return new Promise<SteeredSocket>((resolve, reject) => {
    let fd: number;
    try {
      fd = udpSocket(family);
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    try {
      if (steer.ifname !== undefined) bindToDevice(fd, steer.ifname);
      if (steer.mark !== undefined) setMark(fd, steer.mark);
    } catch (e) {
      closeFd(fd);
      reject(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    const s = createSocket({ type: family === 4 ? 'udp4' : 'udp6', ipv6Only: family === 6 });
    created?.(s);
    const fail = (e: unknown): void => {
      try {
        s.close();
      } catch {
        /* already closed */
      }
      reject(e instanceof Error ? e : new Error(String(e)));
    };
    s.once('error', fail);
    try {
      s.bind({ fd }, () => {
        s.off('error', fail);
        resolve({ socket: s, fd });
      });
    } catch (e) {
      closeFd(fd); // not adopted by the socket
      fail(e);
    }
  });
}

/** Bytes of an address for comparison, zone ignored; undefined when not an address. */
function addressKey(address: string): string | undefined {
  const pct = address.indexOf('%');
  const a = parseAddress(pct >= 0 ? address.slice(0, pct) : address);
  return a === undefined ? undefined : `${a.family}:${Buffer.from(a.bytes).toString('hex')}`;
}

interface Server {
  address: string;
  family: 4 | 6;
  key: string;
  /** The address without its zone. */
  bytes: Uint8Array;
  /** The zone of a link-local IPv6 address given as fe80::1%wlan0, if a name. */
  zone?: string;
}

interface Outcome {
  status: DnsAnswer['status'];
  addrs: DnsAddress[];
  ttlSec: number;
  server?: string;
}

const FAILED: Outcome = { status: 'failed', addrs: [], ttlSec: 0 };

/** The negative-caching TTL of a reply (RFC 2308 5): min(SOA TTL, SOA MINIMUM), 0 without SOA. */
function negativeTtl(msg: Message): number {
  let ttl: number | undefined;
  for (const rr of msg.authority) {
    if (rr.type === 'SOA' && rr.soaMinimum !== undefined) {
      const t = Math.min(rr.ttl, rr.soaMinimum);
      ttl = ttl === undefined ? t : Math.min(ttl, t);
    }
  }
  return ttl ?? 0;
}

/** The outcome of a NOERROR reply: follow CNAMEs from `qname`, collect `qtype` of the final name. */
function answerOf(msg: Message, qname: string, qtype: AddressType, server: string): Outcome {
  let current = qname;
  let ttl = Infinity;
  for (let hops = 0; ; hops++) {
    const cname = msg.answers.find((rr) => rr.type === 'CNAME' && rr.klass === 'IN' && rr.data !== undefined && sameName(rr.name, current));
    if (cname === undefined) break;
    if (hops >= MAX_CNAME_CHAIN) return { ...FAILED, server };
    current = cname.data!;
    ttl = Math.min(ttl, cname.ttl);
  }
  const addrs: DnsAddress[] = [];
  for (const rr of msg.answers) {
    if (rr.type !== qtype || rr.klass !== 'IN' || rr.data === undefined || !sameName(rr.name, current)) continue;
    addrs.push({ family: qtype === 'A' ? 4 : 6, address: rr.data });
    ttl = Math.min(ttl, rr.ttl);
  }
  if (addrs.length === 0) return { status: 'ok', addrs, ttlSec: negativeTtl(msg), server };
  return { status: 'ok', addrs, ttlSec: ttl, server };
}

function merge(a: Outcome, b: Outcome): Outcome {
  if (a.addrs.length > 0 || b.addrs.length > 0) {
    const withAddrs = [a, b].filter((o) => o.addrs.length > 0);
    return {
      status: 'ok',
      addrs: withAddrs.flatMap((o) => o.addrs),
      ttlSec: Math.min(...withAddrs.map((o) => o.ttlSec)),
      server: withAddrs[0]!.server,
    };
  }
  const nx = [a, b].find((o) => o.status === 'nxdomain');
  if (nx !== undefined) return nx;
  const failed = [a, b].find((o) => o.status === 'failed');
  if (failed !== undefined) return failed;
  return { status: 'ok', addrs: [], ttlSec: Math.min(a.ttlSec, b.ttlSec), server: a.server ?? b.server };
}

/**
 * One question asked of one server over TCP (after a truncated UDP reply): connect, send the
 * framed query, read one framed answer. `done` is called once, with the message or an Error.
 */
class TcpExchange {
  private abortConnect: (() => void) | undefined;
  private socket: TcpSocket | undefined;
  private finished = false;

  constructor(
    server: Server,
    port: number,
    steer: { mark: number | undefined; ifname: string | undefined },
    query: Buffer,
    private readonly done: (r: Buffer | Error) => void,
  ) {
    // A link-local server's zone names its device: a TCP connect needs one (no scope id here).
    const ifname = steer.ifname ?? server.zone;
    connectSteeredTcp(server.family, server.bytes, port, { mark: steer.mark, ifname }, (abort) => (this.abortConnect = abort)).then(
      (socket) => {
        this.abortConnect = undefined;
        if (this.finished) {
          socket.destroy();
          return;
        }
        this.socket = socket;
        const reader = new TcpReader();
        socket.on('data', (chunk: Buffer) => {
          let msgs: Buffer[];
          try {
            msgs = reader.push(chunk);
          } catch (e) {
            this.finish(e instanceof Error ? e : new Error(String(e)));
            return;
          }
          if (msgs[0] !== undefined) this.finish(msgs[0]); // one answer is all we asked for
        });
        socket.on('error', (e) => this.finish(e));
        socket.on('close', () => this.finish(new Error('the server closed the connection before a whole answer')));
        socket.write(frameTcp(query));
      },
      (e: unknown) => this.finish(e instanceof Error ? e : new Error(String(e))),
    );
  }

  private finish(r: Buffer | Error): void {
    if (this.finished) return;
    this.close();
    this.done(r);
  }

  close(): void {
    this.finished = true;
    this.abortConnect?.();
    this.abortConnect = undefined;
    this.socket?.destroy();
    this.socket = undefined;
  }
}

/** One bound, steered UDP socket per address family, shared by the queries of one call. */
class Transport {
  private readonly sockets = new Map<4 | 6, Socket>();
  private readonly opened: Socket[] = [];
  private readonly exchanges = new Set<TcpExchange>();

  constructor(
    private readonly mark: number | undefined,
    private readonly ifname: string | undefined,
    private readonly onMessage: (msg: Buffer, from: string, port: number) => void,
  ) {}

  /** Opens, binds and steers one socket per family; rejects on the first failure. */
  async open(families: Iterable<4 | 6>): Promise<void> {
    await Promise.all([...families].map(async (f) => this.sockets.set(f, await this.openOne(f))));
  }

  get(family: 4 | 6): Socket | undefined {
    return this.sockets.get(family);
  }

  /** Asks `server` over a steered TCP connection; `done` gets the answer's bytes or an Error. */
  tcp(server: Server, port: number, query: Buffer, done: (r: Buffer | Error) => void): TcpExchange {
    const x: TcpExchange = new TcpExchange(server, port, { mark: this.mark, ifname: this.ifname }, query, (r) => {
      this.exchanges.delete(x);
      done(r);
    });
    this.exchanges.add(x);
    return x;
  }

  private async openOne(family: 4 | 6): Promise<Socket> {
    const { socket: s } = await openSteeredSocket(family, { mark: this.mark, ifname: this.ifname }, (sock) => this.opened.push(sock));
    s.on('error', () => {
      /* asynchronous socket errors: the query times out or moves on */
    });
    s.on('message', (msg, rinfo) => this.onMessage(msg, rinfo.address, rinfo.port));
    return s;
  }

  close(): void {
    for (const s of this.opened) {
      try {
        s.close();
      } catch {
        /* already closed */
      }
    }
    this.opened.length = 0;
    this.sockets.clear();
    for (const x of this.exchanges) x.close();
    this.exchanges.clear();
  }
}

interface Attempt {
  id: number;
  server: Server;
  /** The TCP retry after a truncated reply (at most one per attempt). */
  tcp?: TcpExchange;
}

/** Whether `msg` answers the question (`name`, `qtype`, class IN) of a query. */
function answersQuestion(msg: Message, name: string, qtype: AddressType): boolean {
  if (!msg.qr || msg.opcode !== 0 || msg.questions.length !== 1) return false;
  const question = msg.questions[0]!;
  return question.type === qtype && question.klass === 'IN' && sameName(question.name, name);
}

/** One question (name, A or AAAA) asked of the servers in turn. */
class Query {
  readonly attempts: Attempt[] = [];
  private next = 0;
  private timer: NodeJS.Timeout | undefined;
  private done = false;
  private readonly result: Promise<Outcome>;
  private settle!: (o: Outcome) => void;

  constructor(
    readonly name: string,
    readonly qtype: AddressType,
    private readonly servers: readonly Server[],
    private readonly perServerMs: number,
    private readonly port: number,
    private readonly transport: Transport,
    private readonly ids: Set<number>,
  ) {
    this.result = new Promise((resolve) => (this.settle = resolve));
  }

  start(): Promise<Outcome> {
    this.advance();
    return this.result;
  }

  finish(o: Outcome): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    for (const a of this.attempts) a.tcp?.close();
    this.settle(o);
  }

  /** Asks the next server, or fails when none is left. */
  private advance(): void {
    clearTimeout(this.timer);
    if (this.done) return;
    const server = this.servers[this.next++];
    if (server === undefined) {
      this.finish(FAILED);
      return;
    }
    let id: number;
    do id = randomInt(0, 0x10000);
    while (this.ids.has(id));
    this.ids.add(id);
    const attempt: Attempt = { id, server };
    this.attempts.push(attempt);
    this.timer = setTimeout(() => this.advance(), this.perServerMs);
    const socket = this.transport.get(server.family);
    if (socket === undefined) {
      this.advance();
      return;
    }
    socket.send(encodeQuery(id, this.name, this.qtype), this.port, server.address, (err) => {
      // Unreachable network (uplink down), no route...: the next server at once.
      if (err && this.current() === attempt) this.advance();
    });
  }

  private current(): Attempt | undefined {
    return this.attempts[this.attempts.length - 1];
  }

  /** An attempt that got no usable answer: the next server at once, if it was the current one. */
  private failed(attempt: Attempt): void {
    if (!this.done && this.current() === attempt) this.advance();
  }

  /** A UDP reply whose id, source and question match one of our attempts. */
  reply(msg: Message, attempt: Attempt): void {
    if (this.done) return;
    if (msg.tc) {
      // Truncated: the same question of the same server over TCP (once per attempt).
      attempt.tcp ??= this.transport.tcp(attempt.server, this.port, encodeQuery(attempt.id, this.name, this.qtype), (r) => this.tcpReply(r, attempt));
      return;
    }
    this.answer(msg, attempt);
  }

  /** The end of a TCP exchange: an answer to our question, or anything else (a failed attempt). */
  private tcpReply(r: Buffer | Error, attempt: Attempt): void {
    if (this.done) return;
    const msg = r instanceof Error ? null : decodeMessage(r);
    if (msg === null || msg.id !== attempt.id || msg.tc || !answersQuestion(msg, this.name, this.qtype)) {
      this.failed(attempt);
      return;
    }
    this.answer(msg, attempt);
  }

  private answer(msg: Message, attempt: Attempt): void {
    if (msg.rcode === RCODE.NOERROR) this.finish(answerOf(msg, this.name, this.qtype, attempt.server.address));
    else if (msg.rcode === RCODE.NXDOMAIN) this.finish({ status: 'nxdomain', addrs: [], ttlSec: negativeTtl(msg), server: attempt.server.address });
    else this.failed(attempt); // SERVFAIL, REFUSED, ...: the next server
  }

  /** The attempt a reply belongs to, if it is one of ours from the right server. */
  match(id: number, fromKey: string, port: number): Attempt | undefined {
    if (port !== this.port) return undefined;
    return this.attempts.find((a) => a.id === id && a.server.key === fromKey);
  }
}

/** Looks `opts.name` up with the given servers, over the uplink selected by `mark`/`ifname`. */
export async function resolveVia(opts: ResolveOptions): Promise<DnsAnswer> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const port = opts.port ?? 53;
  if (!isQueryableName(opts.name)) throw new RangeError(`not a host name: ${JSON.stringify(opts.name)}`);
  if (opts.family !== 0 && opts.family !== 4 && opts.family !== 6) throw new RangeError(`bad family ${String(opts.family)}`);
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new RangeError(`bad timeoutMs ${timeoutMs}`);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new RangeError(`bad port ${port}`);
  if (opts.mark !== undefined && (!Number.isInteger(opts.mark) || opts.mark < 0 || opts.mark > 0xffffffff)) {
    throw new RangeError(`bad mark ${opts.mark}`);
  }
  const servers: Server[] = opts.servers.map((address) => {
    const pct = address.indexOf('%');
    const plain = pct >= 0 ? address.slice(0, pct) : address;
    const family = isIP(plain);
    const key = addressKey(address);
    const parsed = parseAddress(plain);
    if ((family !== 4 && family !== 6) || key === undefined || parsed === undefined) throw new RangeError(`not a server address: ${JSON.stringify(address)}`);
    const server: Server = { address, family, key, bytes: parsed.bytes };
    const zone = pct >= 0 ? address.slice(pct + 1) : '';
    if (zone !== '' && !/^\d+$/.test(zone)) server.zone = zone;
    return server;
  });
  if (servers.length === 0) return { ...FAILED };

  const name = opts.name.replace(/\.$/, '');
  const types: AddressType[] = opts.family === 4 ? ['A'] : opts.family === 6 ? ['AAAA'] : ['A', 'AAAA'];
  const queries: Query[] = [];
  const ids = new Set<number>();
  const perServerMs = Math.max(1, Math.floor(timeoutMs / servers.length));

  const onMessage = (buf: Buffer, from: string, fromPort: number): void => {
    if (buf.length < 12) return;
    const id = buf.readUInt16BE(0);
    if (!ids.has(id)) return; // stray
    const fromKey = addressKey(from);
    if (fromKey === undefined) return;
    for (const q of queries) {
      const attempt = q.match(id, fromKey, fromPort);
      if (attempt === undefined) continue;
      const msg = decodeMessage(buf);
      // Not a reply to our question (or unreadable): ignore it, as a spoofing attempt would be.
      if (msg === null || !answersQuestion(msg, q.name, q.qtype)) return;
      q.reply(msg, attempt);
      return;
    }
  };

  const transport = new Transport(opts.mark, opts.ifname, onMessage);
  for (const t of types) queries.push(new Query(name, t, servers, perServerMs, port, transport, ids));
  const overall = setTimeout(() => {
    for (const q of queries) q.finish(FAILED);
  }, timeoutMs);
  try {
    // Open (and steer) the sockets before any query can be sent; a setup error rejects here.
    await transport.open(new Set(servers.map((s) => s.family)));
    const outcomes = await Promise.all(queries.map((q) => q.start()));
    const merged = outcomes.length === 2 ? merge(outcomes[0]!, outcomes[1]!) : outcomes[0]!;
    const answer: DnsAnswer = { status: merged.status, addrs: merged.addrs, ttlSec: merged.ttlSec === Infinity ? 0 : merged.ttlSec };
    if (merged.server !== undefined) answer.server = merged.server;
    return answer;
  } finally {
    clearTimeout(overall);
    for (const q of queries) q.finish(FAILED);
    transport.close();
  }
}
