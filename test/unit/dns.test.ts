/**
 * DNS messages (src/dns/wire.ts, on dns-packet) and the per-uplink resolver (src/dns/resolver.ts).
 *
 *   - wire: queries, compression, malformed and hostile messages, TCP framing; messages are
 *     built byte by byte here (rawHeader, rawRecord, ...), independently of the codec under test;
 *   - the lab's DNS server (dist/src/lab/dns-server.js) on 127.0.0.1 / ::1 and a random port:
 *     A, AAAA, both, NXDOMAIN, NODATA, next server on timeout, a reply too long for UDP
 *     (truncated there, whole over TCP);
 *   - an in-process fake server (UDP and TCP on one port) for what the lab server never does:
 *     CNAME chains, TC with broken TCP answers, SERVFAIL, SOA negative TTLs, stray and spoofed
 *     packets, silence;
 *   - steering: SO_MARK / SO_BINDTODEVICE on the real query sockets, UDP and TCP (getMark), and,
 *     as root, in a throwaway network namespace where two "uplinks" hold the same address and the
 *     same DNS server IP, which device a marked / bound query actually leaves by (nftables counters).
 *
 * No test waits on a timer racing the resolver: a "moves on at once" is proven by a per-server
 * timeout far longer than the test's own time bound, a "waited for the timeout" by a lower bound.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { readdirSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket as TcpSocket } from 'node:net';
import { fileURLToPath } from 'node:url';

import * as native from '../../src/native/index.js';
import { openSteeredSocket, resolveVia, type DnsAnswer } from '../../src/dns/resolver.js';
import { FLAG, RCODE, TcpReader, decodeMessage, encodeQuery, frameTcp, isQueryableName } from '../../src/dns/wire.js';

const isRoot = process.getuid?.() === 0;
const DNS_SERVER = fileURLToPath(new URL('../../src/lab/dns-server.js', import.meta.url));
const RESOLVER = fileURLToPath(new URL('../../src/dns/resolver.js', import.meta.url));
const NATIVE_INDEX = fileURLToPath(new URL('../../src/native/index.js', import.meta.url));

const sortAddrs = (a: DnsAnswer): string[] => a.addrs.map((x) => `${x.family}/${x.address}`).sort();

// ---------------------------------------------------------------------------------------------
// Messages built byte by byte (RFC 1035 4.1), for input the codec must read or refuse

const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, AAAA: 28 } as const;
const CLASS_IN = 1;
/** Offset of the first question's name: the target of the usual 0xc00c compression pointer. */
const QNAME_OFFSET = 12;

function rawName(name: string): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter((l) => l !== '');
  return Buffer.concat([...labels.flatMap((l) => [Buffer.from([l.length]), Buffer.from(l, 'latin1')]), Buffer.from([0])]);
}

function rawHeader(h: { id: number; flags: number; qdcount?: number; ancount?: number; nscount?: number; arcount?: number }): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(h.id, 0);
  b.writeUInt16BE(h.flags, 2);
  b.writeUInt16BE(h.qdcount ?? 0, 4);
  b.writeUInt16BE(h.ancount ?? 0, 6);
  b.writeUInt16BE(h.nscount ?? 0, 8);
  b.writeUInt16BE(h.arcount ?? 0, 10);
  return b;
}

function rawQuestion(name: string, type: number): Buffer {
  const tail = Buffer.alloc(4);
  tail.writeUInt16BE(type, 0);
  tail.writeUInt16BE(CLASS_IN, 2);
  return Buffer.concat([rawName(name), tail]);
}

/** A record; `name` a number is a compression pointer to that offset. */
function rawRecord(rr: { name: string | number; type: number; ttl: number; rdata: Buffer }): Buffer {
  const name = typeof rr.name === 'number' ? Buffer.from([0xc0 | (rr.name >> 8), rr.name & 0xff]) : rawName(rr.name);
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(rr.type, 0);
  fixed.writeUInt16BE(CLASS_IN, 2);
  fixed.writeUInt32BE(rr.ttl >>> 0, 4);
  fixed.writeUInt16BE(rr.rdata.length, 8);
  return Buffer.concat([name, fixed, rr.rdata]);
}

/** The flags of an answer to a query with `queryFlags`: QR, AA, RD echoed, RA. */
const answerFlags = (queryFlags: number, rcode: number): number => 0x8000 | FLAG.AA | (queryFlags & FLAG.RD) | FLAG.RA | rcode;

/** The first question of a query as this test's servers read it: name (lower case), type, end offset. */
function parseQuery(msg: Buffer): { name: string; type: number; end: number } | null {
  const labels: string[] = [];
  let off = 12;
  for (;;) {
    const len = msg[off];
    if (len === undefined || (len & 0xc0) !== 0 || off + 1 + len > msg.length) return null;
    off += 1;
    if (len === 0) break;
    labels.push(msg.toString('latin1', off, off + len));
    off += len;
  }
  if (off + 4 > msg.length) return null;
  return { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(off), end: off + 4 };
}

// ---------------------------------------------------------------------------------------------
// Wire format

describe('dns wire', () => {
  it('encodes a query that decodeMessage reads back, the name as given', () => {
    const q = encodeQuery(0xbeef, 'WWW.Example.NET.', 'AAAA');
    assert.equal(q.readUInt16BE(0), 0xbeef);
    assert.equal(q.readUInt16BE(2), FLAG.RD);
    assert.deepEqual(parseQuery(q), { name: 'www.example.net', type: TYPE.AAAA, end: q.length });
    assert.deepEqual(q.subarray(12), rawQuestion('WWW.Example.NET', TYPE.AAAA));
    const m = decodeMessage(q);
    assert.ok(m);
    assert.equal(m.qr, false);
    assert.equal(m.rd, true);
    assert.deepEqual(m.questions, [{ name: 'WWW.Example.NET', type: 'AAAA', klass: 'IN' }]);
  });

  it('refuses names that cannot be encoded (the codec itself would write them corrupt)', () => {
    const long = Array.from({ length: 130 }, () => 'ab').join('.');
    for (const bad of [`${'a'.repeat(64)}.net`, 'a..b', long, 'sp ace.net', '', '.', 'caf\u00e9.example']) {
      assert.equal(isQueryableName(bad), false, JSON.stringify(bad));
      assert.throws(() => encodeQuery(1, bad, 'A'), RangeError, JSON.stringify(bad));
    }
    assert.equal(isQueryableName('a'.repeat(63) + '.example'), true);
    assert.equal(isQueryableName('x.example.'), true);
  });

  it('decodes compressed answers (pointer owners, CNAME targets) and SOA minimums', () => {
    const id = 7;
    const msg = Buffer.concat([
      rawHeader({ id, flags: answerFlags(FLAG.RD, RCODE.NOERROR), qdcount: 1, ancount: 2, nscount: 1 }),
      rawQuestion('www.example.net', TYPE.A),
      // www.example.net CNAME edge.example.net (target: "edge" + pointer to "example.net" at 16)
      rawRecord({ name: QNAME_OFFSET, type: TYPE.CNAME, ttl: 300, rdata: Buffer.from([4, ...Buffer.from('edge'), 0xc0, 16]) }),
      rawRecord({ name: 'edge.example.net', type: TYPE.A, ttl: 20, rdata: Buffer.from([192, 0, 2, 7]) }),
      rawRecord({
        name: 'example.net', type: TYPE.SOA, ttl: 3600,
        rdata: Buffer.concat([rawName('ns.example.net'), rawName('admin.example.net'), Buffer.from([0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 45])]),
      }),
    ]);
    const m = decodeMessage(msg);
    assert.ok(m);
    assert.equal(m.id, id);
    assert.equal(m.qr && m.ra && m.aa, true);
    assert.equal(m.rcode, RCODE.NOERROR);
    assert.equal(m.answers[0]?.name, 'www.example.net');
    assert.equal(m.answers[0]?.data, 'edge.example.net');
    assert.equal(m.answers[1]?.data, '192.0.2.7');
    assert.equal(m.authority[0]?.soaMinimum, 45);
    const nx = decodeMessage(rawHeader({ id: 9, flags: answerFlags(0, RCODE.NXDOMAIN) | FLAG.TC }));
    assert.deepEqual([nx?.rcode, nx?.tc], [RCODE.NXDOMAIN, true]);
  });

  it('returns null for truncated, looping, trailing-garbage and mis-sized messages', () => {
    const good = Buffer.concat([
      rawHeader({ id: 1, flags: 0x8000, qdcount: 1, ancount: 1 }),
      rawQuestion('a.example', TYPE.AAAA),
      rawRecord({ name: QNAME_OFFSET, type: TYPE.AAAA, ttl: 5, rdata: Buffer.alloc(16, 1) }),
    ]);
    assert.ok(decodeMessage(good));
    assert.equal(decodeMessage(good.subarray(0, 11)), null);
    for (let cut = 12; cut < good.length; cut++) assert.equal(decodeMessage(good.subarray(0, cut)), null, `cut at ${cut}`);
    assert.equal(decodeMessage(Buffer.concat([good, Buffer.from([0])])), null);
    // An A record of 3 bytes, and one of 5
    for (const rdata of [Buffer.from([1, 2, 3]), Buffer.from([1, 2, 3, 4, 5])]) {
      const badA = Buffer.concat([rawHeader({ id: 1, flags: 0x8000, ancount: 1 }), rawRecord({ name: 'x', type: TYPE.A, ttl: 1, rdata })]);
      assert.equal(decodeMessage(badA), null, `A of ${rdata.length} bytes`);
    }
    // A name that points at itself, one that points forward, one with a 0x40 label type
    const self = Buffer.concat([rawHeader({ id: 1, flags: 0x8000, qdcount: 1 }), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    assert.equal(decodeMessage(self), null);
    const fwd = Buffer.concat([rawHeader({ id: 1, flags: 0x8000, qdcount: 1 }), Buffer.from([0xc0, 14, 0, 0, 1, 0, 1])]);
    assert.equal(decodeMessage(fwd), null);
    const ext = Buffer.concat([rawHeader({ id: 1, flags: 0x8000, qdcount: 1 }), Buffer.from([0x41, 0, 0, 1, 0, 1])]);
    assert.equal(decodeMessage(ext), null);
    // More records announced than present
    assert.equal(decodeMessage(rawHeader({ id: 1, flags: 0x8000, ancount: 3 })), null);
  });

  it('reads TTLs with the top bit set as 0 (RFC 2181)', () => {
    const msg = Buffer.concat([
      rawHeader({ id: 1, flags: 0x8000, ancount: 1 }),
      rawRecord({ name: 'x.example', type: TYPE.A, ttl: 0x80000000, rdata: Buffer.from([1, 2, 3, 4]) }),
    ]);
    assert.equal(decodeMessage(msg)?.answers[0]?.ttl, 0);
  });

  it('frames TCP messages and splits a stream into them, however it is cut', () => {
    const m1 = encodeQuery(1, 'one.example', 'A');
    const m2 = encodeQuery(2, 'two.example', 'AAAA');
    const stream = Buffer.concat([frameTcp(m1), frameTcp(m2)]);
    assert.deepEqual(stream.subarray(0, 2), Buffer.from([0, m1.length]));
    // All at once, and one byte at a time
    assert.deepEqual(new TcpReader().push(stream), [m1, m2]);
    const reader = new TcpReader();
    const got: Buffer[] = [];
    for (const byte of stream) got.push(...reader.push(Buffer.from([byte])));
    assert.deepEqual(got, [m1, m2]);
    // A frame too short for a header is an error, not a message
    assert.throws(() => new TcpReader().push(Buffer.from([0, 5, 1, 2, 3, 4, 5])), RangeError);
    assert.throws(() => frameTcp(Buffer.alloc(0x10000)), RangeError);
    assert.equal(frameTcp(Buffer.alloc(0xffff)).readUInt16BE(0), 0xffff);
  });
});

// ---------------------------------------------------------------------------------------------
// The lab's DNS server

interface LabDns {
  child: ChildProcess;
  port: number;
}

/** Starts dns-server.js on a random free port (retrying if the port is taken). */
async function startLabDns(listen: string[], records: string[]): Promise<LabDns> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const port = randomInt(20000, 60000);
    const child = spawn(process.execPath, [DNS_SERVER, '--name', 'test', ...listen.flatMap((l) => ['--listen', l]),
      '--port', String(port), ...records.flatMap((r) => ['--record', r]), '--exit-on-stdin-eof'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const ready = await new Promise<boolean>((resolve) => {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('"ready":"dns-server"')) resolve(true);
      });
      child.once('exit', () => resolve(false));
    });
    if (ready) return { child, port };
  }
  throw new Error('could not start the lab DNS server');
}

function stopLabDns(s: LabDns | undefined): void {
  if (s === undefined) return;
  s.child.stdin?.end();
  s.child.kill('SIGTERM');
}

/** 40 addresses: an answer of some 1,270 bytes, too long for UDP (512). */
const BIG = Array.from({ length: 40 }, (_, i) => `198.18.0.${i + 1}`);

describe('resolveVia against the lab DNS server', () => {
  let lab: LabDns | undefined;
  before(async () => {
    lab = await startLabDns(['127.0.0.1', '::1'], [
      'www.example.net=198.51.100.10', 'www.example.net=2001:db8:100::10', 'www.example.net=198.51.100.11',
      'v4only.example.net=192.0.2.44',
      ...BIG.map((a) => `big.example.net=${a}`),
    ]);
  });
  after(() => stopLabDns(lab));

  it('answers A, AAAA and both (in parallel), with the TTL and the server', async () => {
    const port = lab!.port;
    const a = await resolveVia({ name: 'www.example.net', family: 4, servers: ['127.0.0.1'], port });
    assert.equal(a.status, 'ok');
    assert.deepEqual(sortAddrs(a), ['4/198.51.100.10', '4/198.51.100.11']);
    assert.equal(a.ttlSec, 60);
    assert.equal(a.server, '127.0.0.1');
    const aaaa = await resolveVia({ name: 'WWW.example.net.', family: 6, servers: ['::1'], port });
    assert.deepEqual(sortAddrs(aaaa), ['6/2001:db8:100::10']);
    assert.equal(aaaa.server, '::1');
    const both = await resolveVia({ name: 'www.example.net', family: 0, servers: ['127.0.0.1'], port });
    assert.equal(both.status, 'ok');
    assert.deepEqual(sortAddrs(both), ['4/198.51.100.10', '4/198.51.100.11', '6/2001:db8:100::10']);
  });

  it('reports NXDOMAIN, and NODATA as ok without addresses', async () => {
    const port = lab!.port;
    const nx = await resolveVia({ name: 'nope.example.net', family: 0, servers: ['127.0.0.1'], port });
    assert.deepEqual({ status: nx.status, addrs: nx.addrs }, { status: 'nxdomain', addrs: [] });
    const nodata = await resolveVia({ name: 'v4only.example.net', family: 6, servers: ['127.0.0.1'], port });
    assert.deepEqual({ status: nodata.status, addrs: nodata.addrs, ttlSec: nodata.ttlSec }, { status: 'ok', addrs: [], ttlSec: 0 });
    const mixed = await resolveVia({ name: 'v4only.example.net', family: 0, servers: ['127.0.0.1'], port });
    assert.deepEqual(sortAddrs(mixed), ['4/192.0.2.44']);
  });

  it('moves to the next server when one is silent, and ends by itself at the overall bound', async () => {
    const port = lab!.port;
    // 127.0.0.2 is loopback too, but nothing listens there: no answer (ICMP errors are ignored).
    // The next server is asked after the per-server share (1000 ms) of the bound, not before.
    const t0 = performance.now();
    const r = await resolveVia({ name: 'www.example.net', family: 4, servers: ['127.0.0.2', '127.0.0.1'], port, timeoutMs: 2000 });
    const ms = performance.now() - t0;
    assert.equal(r.status, 'ok');
    assert.equal(r.server, '127.0.0.1');
    assert.ok(ms >= 990, `took ${ms.toFixed(0)} ms: asked the next server before the per-server timeout (1000 ms)`);
    // Nobody answers: 'failed' once the bound has passed, and not long after (a generous guard
    // against a call that never ends by itself).
    const t1 = performance.now();
    const none = await resolveVia({ name: 'www.example.net', family: 0, servers: ['127.0.0.2'], port, timeoutMs: 250 });
    const ms1 = performance.now() - t1;
    assert.equal(none.status, 'failed');
    assert.ok(ms1 >= 240, `took ${ms1.toFixed(0)} ms: gave up before the 250 ms bound`);
    assert.ok(ms1 < 5000, `took ${ms1.toFixed(0)} ms for a 250 ms bound`);
  });

  it('truncates a reply too long for UDP and asks again over TCP, where it is whole', async () => {
    const port = lab!.port;
    // Over UDP, as any resolver first asks: TC set, the question only, within 512 bytes.
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
    try {
      const query = encodeQuery(0x4242, 'big.example.net', 'A');
      const reply = await new Promise<Buffer>((resolve) => {
        s.once('message', (m) => resolve(m));
        s.send(query, port, '127.0.0.1');
      });
      const m = decodeMessage(reply);
      assert.ok(m);
      assert.deepEqual({ tc: m.tc, rcode: m.rcode, answers: m.answers.length, id: m.id }, { tc: true, rcode: RCODE.NOERROR, answers: 0, id: 0x4242 });
      assert.ok(reply.length <= 512);
    } finally {
      s.close();
    }
    // resolveVia: the TC answer over UDP, then the whole one over TCP from the same server.
    const r = await resolveVia({ name: 'big.example.net', family: 4, servers: ['127.0.0.1'], port });
    assert.equal(r.status, 'ok');
    assert.deepEqual(sortAddrs(r), BIG.map((a) => `4/${a}`).sort());
    assert.equal(r.server, '127.0.0.1');
    const r6 = await resolveVia({ name: 'big.example.net', family: 0, servers: ['::1'], port });
    assert.equal(r6.addrs.length, 40, 'over IPv6 too');
  });

  it('answers over TCP: several queries on one connection, frames cut anywhere', async () => {
    const conn = createConnection({ host: '127.0.0.1', port: lab!.port });
    try {
      await new Promise<void>((resolve, reject) => conn.once('connect', resolve).once('error', reject));
      const answers: Buffer[] = [];
      const reader = new TcpReader();
      const got = new Promise<void>((resolve) => conn.on('data', (c: Buffer) => {
        answers.push(...reader.push(c));
        if (answers.length === 2) resolve();
      }));
      const stream = Buffer.concat([frameTcp(encodeQuery(1, 'www.example.net', 'A')), frameTcp(encodeQuery(2, 'nope.example.net', 'AAAA'))]);
      conn.write(stream.subarray(0, 1));
      conn.write(stream.subarray(1, 20));
      conn.write(stream.subarray(20));
      await got;
      const [a1, a2] = answers.map((b) => decodeMessage(b));
      assert.deepEqual([a1?.id, a1?.answers.map((rr) => rr.data).sort()], [1, ['198.51.100.10', '198.51.100.11']]);
      assert.deepEqual([a2?.id, a2?.rcode], [2, RCODE.NXDOMAIN]);
    } finally {
      conn.destroy();
    }
  });

  it('rejects local errors instead of answering', async () => {
    await assert.rejects(resolveVia({ name: 'a..b', family: 4, servers: ['127.0.0.1'] }), RangeError);
    await assert.rejects(resolveVia({ name: 'a.b', family: 4, servers: ['dns.example'] }), RangeError);
    await assert.rejects(resolveVia({ name: 'a.b', family: 4, servers: ['127.0.0.1'], port: 0 }), RangeError);
    await assert.rejects(
      resolveVia({ name: 'www.example.net', family: 4, servers: ['127.0.0.1'], port: lab!.port, ifname: 'wm-no-such0' }),
      (e: unknown) => native.isNativeError(e, 'ENODEV'),
    );
    assert.deepEqual(await resolveVia({ name: 'a.b', family: 4, servers: [] }), { status: 'failed', addrs: [], ttlSec: 0 });
  });

  it('keeps the lab server\'s replies byte-exact for a typical query (question echoed as sent)', async () => {
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
    try {
      const query = encodeQuery(0x1234, 'V4Only.Example.Net', 'A');
      const reply = await new Promise<Buffer>((resolve) => {
        s.once('message', (m) => resolve(m));
        s.send(query, lab!.port, '127.0.0.1');
      });
      const expected = Buffer.concat([
        Buffer.from([0x12, 0x34, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 0]), // QR AA RD, NOERROR, 1 question, 1 answer
        query.subarray(12),
        rawRecord({ name: 'V4Only.Example.Net', type: TYPE.A, ttl: 60, rdata: Buffer.from([192, 0, 2, 44]) }),
      ]);
      assert.deepEqual(reply, expected);
    } finally {
      s.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// A fake server for the cases the lab server never produces

type Send = (b: Buffer) => Promise<void>;
type Respond = (query: Buffer, q: { id: number; name: string; type: number }, rinfo: RemoteInfo, reply: Send, stray: Send) => void;
/** What the fake's TCP side does with a framed query: write to the connection, close it... */
type RespondTcp = (query: Buffer, q: { id: number; name: string; type: number }, conn: TcpSocket) => void;

interface Fake {
  port: number;
  address: string;
  /** Queries seen over UDP, and over TCP. */
  queries: number;
  tcpQueries: number;
  close(): void;
}

/**
 * A scripted server on `address`: UDP on `port` (0: any free one) and, with `respondTcp`, TCP on
 * the same port. `reply` and `stray` (from another port) resolve once the datagram is sent.
 */
async function fakeServer(address: string, respond: Respond, port = 0, respondTcp?: RespondTcp): Promise<Fake> {
  // A free UDP port may be taken for TCP by another program on this machine: try another one.
  for (let attempt = 0; ; attempt++) {
    try {
      return await fakeServerOn(address, respond, port, respondTcp);
    } catch (e) {
      if (port !== 0 || attempt >= 10 || !(e instanceof Error && 'code' in e && e.code === 'EADDRINUSE')) throw e;
    }
  }
}

async function fakeServerOn(address: string, respond: Respond, port: number, respondTcp?: RespondTcp): Promise<Fake> {
  const udp = address.includes(':') ? 'udp6' : 'udp4';
  const s = createSocket(udp);
  const other = createSocket(udp); // sends from another port
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, address, () => resolve());
  });
  await new Promise<void>((r) => other.bind(0, address, r));
  let tcp: Server | undefined;
  const conns = new Set<TcpSocket>();
  const fake: Fake = {
    port: s.address().port, address, queries: 0, tcpQueries: 0,
    close: () => {
      s.close();
      other.close();
      for (const c of conns) c.destroy();
      tcp?.close();
    },
  };
  const sender = (sock: Socket, rinfo: RemoteInfo): Send => (b) => new Promise<void>((resolve) => sock.send(b, rinfo.port, rinfo.address, () => resolve()));
  s.on('message', (msg, rinfo) => {
    const q = parseQuery(msg);
    if (q === null) return;
    fake.queries++;
    respond(msg, { id: msg.readUInt16BE(0), name: q.name, type: q.type }, rinfo, sender(s, rinfo), sender(other, rinfo));
  });
  if (respondTcp !== undefined) {
    const server = createServer((conn) => {
      conns.add(conn);
      conn.on('close', () => conns.delete(conn));
      conn.on('error', () => conn.destroy());
      const reader = new TcpReader();
      conn.on('data', (chunk: Buffer) => {
        for (const m of reader.push(chunk)) {
          const q = parseQuery(m);
          if (q === null) continue;
          fake.tcpQueries++;
          respondTcp(m, { id: m.readUInt16BE(0), name: q.name, type: q.type }, conn);
        }
      });
    });
    tcp = server;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: address, port: fake.port }, () => resolve());
      });
    } catch (e) {
      tcp = undefined;
      fake.close();
      throw e;
    }
  }
  return fake;
}

/** A response to `query` with the given answer records (built byte by byte). */
function response(query: Buffer, rcode: number, answers: Buffer[], opts: { tc?: boolean; authority?: Buffer[]; id?: number } = {}): Buffer {
  const q = parseQuery(query)!;
  return Buffer.concat([
    rawHeader({
      id: opts.id ?? query.readUInt16BE(0), flags: answerFlags(query.readUInt16BE(2), rcode) | (opts.tc ? FLAG.TC : 0),
      qdcount: 1, ancount: answers.length, nscount: opts.authority?.length ?? 0,
    }),
    query.subarray(12, q.end),
    ...answers,
    ...(opts.authority ?? []),
  ]);
}

const a = (name: string, ttl: number, ...bytes: number[]): Buffer => rawRecord({ name, type: TYPE.A, ttl, rdata: Buffer.from(bytes) });
const aaaa = (name: string, ttl: number, last: number): Buffer => {
  const rdata = Buffer.alloc(16);
  rdata.writeUInt16BE(0x2001, 0);
  rdata.writeUInt16BE(0x0db8, 2);
  rdata[15] = last;
  return rawRecord({ name, type: TYPE.AAAA, ttl, rdata });
};
const cname = (name: string, ttl: number, target: string): Buffer => rawRecord({ name, type: TYPE.CNAME, ttl, rdata: rawName(target) });
const soa = (zone: string, ttl: number, minimum: number): Buffer => {
  const tail = Buffer.alloc(20);
  tail.writeUInt32BE(minimum, 16);
  return rawRecord({ name: zone, type: TYPE.SOA, ttl, rdata: Buffer.concat([rawName(`ns.${zone}`), rawName(`admin.${zone}`), tail]) });
};

/**
 * "At once": with two servers and a 60 s bound each server's share is 30 s, so a test that ends
 * within its own 15 s time bound moved on because of what it got, not because a timer fired.
 */
const AT_ONCE_MS = 60_000;
const GUARD = { timeout: 15_000 };

describe('resolveVia against a scripted server', () => {
  const fakes: Fake[] = [];
  after(() => fakes.forEach((f) => f.close()));
  const fake = async (respond: Respond, address = '127.0.0.1', port = 0, respondTcp?: RespondTcp): Promise<Fake> => {
    const f = await fakeServer(address, respond, port, respondTcp);
    fakes.push(f);
    return f;
  };
  const truncated: Respond = (query, _q, _r, reply) => void reply(response(query, RCODE.NOERROR, [], { tc: true }));

  it('follows a CNAME chain given out of order, with the minimum TTL, ignoring other names', async () => {
    const f = await fake((query, q, _r, reply) => {
      const answers = q.type === TYPE.A
        ? [a('cdn.example.org', 30, 203, 0, 113, 5), cname('edge.example.net', 120, 'cdn.example.org'),
          a('unrelated.example', 1, 10, 0, 0, 1), cname('www.example.net', 300, 'edge.example.net')]
        : [cname('www.example.net', 300, 'edge.example.net'), cname('edge.example.net', 90, 'cdn.example.org'), aaaa('cdn.example.org', 200, 5)];
      void reply(response(query, RCODE.NOERROR, answers));
    });
    const r4 = await resolveVia({ name: 'www.example.net', family: 4, servers: ['127.0.0.1'], port: f.port });
    assert.deepEqual({ s: r4.status, a: sortAddrs(r4), ttl: r4.ttlSec }, { s: 'ok', a: ['4/203.0.113.5'], ttl: 30 });
    const r0 = await resolveVia({ name: 'www.example.net', family: 0, servers: ['127.0.0.1'], port: f.port });
    assert.deepEqual({ s: r0.status, a: sortAddrs(r0), ttl: r0.ttlSec }, { s: 'ok', a: ['4/203.0.113.5', '6/2001:db8::5'], ttl: 30 });
  });

  it('fails on a CNAME loop', async () => {
    const loop = await fake((query, _q, _r, reply) => void reply(response(query, RCODE.NOERROR, [cname('x.example', 5, 'y.example'), cname('y.example', 5, 'x.example')])));
    assert.equal((await resolveVia({ name: 'x.example', family: 4, servers: ['127.0.0.1'], port: loop.port, timeoutMs: 500 })).status, 'failed');
  });

  it('asks the same server again over TCP when the UDP answer is truncated (TC)', async () => {
    // Over UDP: truncated, no answers. Over TCP: the whole answer, with an address UDP never gave.
    const f = await fake(truncated, '127.0.0.1', 0, (query, q, conn) => {
      conn.write(frameTcp(response(query, RCODE.NOERROR, [a(q.name, 42, 192, 0, 2, 80), a(q.name, 50, 192, 0, 2, 81)])));
    });
    const r = await resolveVia({ name: 'big.example', family: 4, servers: ['127.0.0.1'], port: f.port });
    assert.deepEqual({ s: r.status, a: sortAddrs(r), ttl: r.ttlSec, server: r.server }, { s: 'ok', a: ['4/192.0.2.80', '4/192.0.2.81'], ttl: 42, server: '127.0.0.1' });
    assert.deepEqual([f.queries, f.tcpQueries], [1, 1]);
    // A and AAAA both truncated: each asked over TCP
    const r0 = await resolveVia({ name: 'big.example', family: 0, servers: ['127.0.0.1'], port: f.port });
    assert.equal(r0.status, 'ok');
    assert.deepEqual([f.queries, f.tcpQueries], [3, 3]);
    // An NXDOMAIN over TCP is an answer too
    const nx = await fake(truncated, '127.0.0.1', 0, (query, _q, conn) => conn.write(frameTcp(response(query, RCODE.NXDOMAIN, [], { authority: [soa('example', 900, 33)] }))));
    assert.deepEqual(await resolveVia({ name: 'gone.example', family: 4, servers: ['127.0.0.1'], port: nx.port }),
      { status: 'nxdomain', addrs: [], ttlSec: 33, server: '127.0.0.1' });
  });

  /** The first server truncates over UDP and then misbehaves over TCP; the second answers. */
  const brokenTcp = async (misbehave: RespondTcp | undefined): Promise<{ broken: Fake; good: Fake; r: DnsAnswer }> => {
    const broken = await fake(truncated, '127.0.0.1', 0, misbehave);
    const good = await fake((query, q, _r, reply) => void reply(response(query, RCODE.NOERROR, [a(q.name, 7, 192, 0, 2, 9)])), '127.0.0.3', broken.port);
    const r = await resolveVia({ name: 'tc.example', family: 4, servers: ['127.0.0.1', '127.0.0.3'], port: broken.port, timeoutMs: AT_ONCE_MS });
    return { broken, good, r };
  };
  const garbage = (n: number): Buffer => Buffer.alloc(n, 0xa5);

  for (const [what, misbehave] of [
    ['no TCP listener (connection refused)', undefined],
    ['a malformed answer', (_query, _q, conn) => void conn.write(frameTcp(Buffer.concat([Buffer.from([0, 0]), garbage(40)])))],
    ['an answer to another id', (query, q, conn) => void conn.write(frameTcp(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 6)], { id: (q.id + 1) & 0xffff })))],
    ['an answer to another question', (query, q, conn) => {
      const wrong = Buffer.from(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 6)]));
      wrong.writeUInt16BE(TYPE.AAAA, 12 + rawName(q.name).length);
      conn.write(frameTcp(wrong));
    }],
    ['a truncated answer over TCP too', (query, _q, conn) => void conn.write(frameTcp(response(query, RCODE.NOERROR, [], { tc: true })))],
    ['a frame shorter than a header', (_query, _q, conn) => void conn.write(Buffer.from([0, 4, 1, 2, 3, 4]))],
    ['a frame cut short by the server closing', (query, q, conn) => void conn.end(frameTcp(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 6)])).subarray(0, 20))],
    ['a close without an answer', (_query, _q, conn) => void conn.end()],
    ['an oversized answer (a full 65535-byte frame of garbage, and more)', (_query, _q, conn) => {
      conn.write(frameTcp(garbage(0xffff)));
      conn.write(garbage(100_000));
    }],
  ] as [string, RespondTcp | undefined][]) {
    it(`moves on at once to the next server after a TC and ${what}`, GUARD, async () => {
      const { broken, good, r } = await brokenTcp(misbehave);
      assert.deepEqual({ s: r.status, a: sortAddrs(r), server: r.server }, { s: 'ok', a: ['4/192.0.2.9'], server: '127.0.0.3' });
      assert.equal(broken.queries, 1);
      assert.equal(broken.tcpQueries, misbehave === undefined ? 0 : 1);
      assert.equal(good.queries, 1);
    });
  }

  it('ignores stray packets: wrong id, wrong question, not a response, from another port', async () => {
    const f = await fake((query, q, _r, reply, stray) => {
      const wrongQ = Buffer.from(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 8)]));
      wrongQ.writeUInt16BE(TYPE.AAAA, 12 + rawName(q.name).length); // question type changed
      const notResponse = Buffer.from(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 9)]));
      notResponse.writeUInt16BE(notResponse.readUInt16BE(2) & ~0x8000, 2);
      // Every stray is sent (handed to the kernel) before the real answer.
      void Promise.all([
        stray(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 6)])), // right id, wrong source port
        reply(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 7)], { id: (q.id + 1) & 0xffff })), // wrong id
        reply(wrongQ),
        reply(notResponse),
        reply(Buffer.from([1, 2, 3])), // garbage
        reply(Buffer.concat([response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 10)]), Buffer.from([0])])), // trailing byte
      ]).then(() => reply(response(query, RCODE.NOERROR, [a(q.name, 5, 192, 0, 2, 1)])));
    });
    const r = await resolveVia({ name: 'spoof.example', family: 4, servers: ['127.0.0.1'], port: f.port, timeoutMs: 5000 });
    assert.deepEqual(sortAddrs(r), ['4/192.0.2.1']);
  });

  it('asks the next server at once on SERVFAIL; an NXDOMAIN carries the SOA negative TTL', GUARD, async () => {
    // resolveVia uses one port for every server: two loopback addresses share one.
    const bad = await fake((query, _q, _r, reply) => void reply(response(query, RCODE.SERVFAIL, [])));
    const good = await fake((query, _q, _r, reply) => void reply(response(query, RCODE.NXDOMAIN, [], { authority: [soa('example', 900, 77)] })), '127.0.0.3', bad.port);
    const r = await resolveVia({ name: 'gone.example', family: 4, servers: ['127.0.0.1', '127.0.0.3'], port: bad.port, timeoutMs: AT_ONCE_MS });
    assert.deepEqual({ s: r.status, ttl: r.ttlSec, server: r.server }, { s: 'nxdomain', ttl: 77, server: '127.0.0.3' });
    assert.equal(bad.queries, 1);
    assert.equal(good.queries, 1);
  });

  it('accepts a late answer from an earlier server while asking the next', async () => {
    // 127.0.0.1 answers only once the next server has been asked (after its 1500 ms share).
    let answerLate: (() => void) | undefined;
    const slow = await fake((query, q, _r, reply) => {
      answerLate = () => void reply(response(query, RCODE.NOERROR, [a(q.name, 9, 192, 0, 2, 99)]));
    });
    const silent = await fake(() => answerLate?.(), '127.0.0.3', slow.port);
    const r = await resolveVia({ name: 'late.example', family: 4, servers: ['127.0.0.1', '127.0.0.3'], port: slow.port, timeoutMs: 3000 });
    assert.deepEqual(sortAddrs(r), ['4/192.0.2.99']);
    assert.equal(r.server, '127.0.0.1');
    assert.equal(silent.queries, 1);
  });
});

// ---------------------------------------------------------------------------------------------
// Steering

describe('query sockets are steered before they send', () => {
  it('sets SO_MARK and SO_BINDTODEVICE on the socket before node:dgram takes it over', { skip: !isRoot && 'SO_MARK needs CAP_NET_ADMIN' }, async () => {
    for (const family of [4, 6] as const) {
      const { socket: s, fd } = await openSteeredSocket(family, { mark: 0x2a000000, ifname: 'lo' });
      try {
        assert.equal(native.getMark(fd), 0x2a000000);
        assert.equal(native.getBoundDevice(fd), 'lo');
        assert.equal(native.socketInfo(fd).family, family === 4 ? 2 : 10);
        // node:dgram owns it: it sends and receives through it.
        const echo = createSocket(family === 4 ? 'udp4' : 'udp6');
        await new Promise<void>((r) => echo.bind(0, family === 4 ? '127.0.0.1' : '::1', r));
        const got = new Promise<string>((r) => echo.once('message', (m) => r(m.toString())));
        s.send('ping', echo.address().port, family === 4 ? '127.0.0.1' : '::1');
        assert.equal(await got, 'ping');
        echo.close();
      } finally {
        s.close();
      }
    }
    const plain = await openSteeredSocket(4, {});
    try {
      assert.equal(native.getMark(plain.fd), 0);
      assert.equal(native.getBoundDevice(plain.fd), '');
    } finally {
      plain.socket.close();
    }
  });

  it('a device that does not exist is an error, and leaves no socket behind', async () => {
    const before = readdirSync('/proc/self/fd').length;
    await assert.rejects(openSteeredSocket(4, { ifname: 'no-such-dev0' }), /ENODEV/);
    await assert.rejects(native.connectSteeredTcp(4, Uint8Array.from([127, 0, 0, 1]), 53, { ifname: 'no-such-dev0' }), /ENODEV/);
    assert.equal(readdirSync('/proc/self/fd').length, before);
  });

  it('a TCP connection is marked and bound before it connects, then belongs to node:net', { skip: !isRoot && 'SO_MARK needs CAP_NET_ADMIN' }, async () => {
    for (const [family, host, bytes] of [[4, '127.0.0.1', [127, 0, 0, 1]], [6, '::1', [...Array<number>(15).fill(0), 1]]] as const) {
      const server = createServer((c) => c.end('pong'));
      await new Promise<void>((r) => server.listen(0, host, r));
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      let sock: TcpSocket | undefined;
      try {
        const conn = await native.connectSteeredTcp(family, Uint8Array.from(bytes), port, { mark: 0x2a000000, ifname: 'lo' });
        sock = conn;
        const fd = native.fdOf(conn);
        assert.equal(native.getMark(fd), 0x2a000000);
        assert.equal(native.getBoundDevice(fd), 'lo');
        let got = '';
        conn.setEncoding('utf8').on('data', (d: string) => (got += d));
        await new Promise<void>((r) => conn.once('end', r));
        assert.equal(got, 'pong');
      } finally {
        sock?.destroy();
        server.close();
      }
      // Nothing listens there any more: the connect's own error.
      await assert.rejects(native.connectSteeredTcp(family, Uint8Array.from(bytes), port, { mark: 0x2a000000 }), { code: 'ECONNREFUSED' });
    }
  });

  it('resolves with a mark and a device binding on loopback, over UDP and after a TC over TCP', { skip: !isRoot && 'SO_MARK needs CAP_NET_ADMIN' }, async () => {
    const f = await fakeServer('127.0.0.1', (query, q, _r, reply) => void reply(response(query, RCODE.NOERROR, [a(q.name, 5, 192, 0, 2, 5)])));
    const tc = await fakeServer('127.0.0.1', (query, _q, _r, reply) => void reply(response(query, RCODE.NOERROR, [], { tc: true })), 0,
      (query, q, conn) => void conn.write(frameTcp(response(query, RCODE.NOERROR, [a(q.name, 5, 192, 0, 2, 6)]))));
    try {
      const r = await resolveVia({ name: 'm.example', family: 4, servers: ['127.0.0.1'], port: f.port, mark: 0x01000000, ifname: 'lo' });
      assert.deepEqual(sortAddrs(r), ['4/192.0.2.5']);
      const t = await resolveVia({ name: 'm.example', family: 4, servers: ['127.0.0.1'], port: tc.port, mark: 0x01000000, ifname: 'lo' });
      assert.deepEqual(sortAddrs(t), ['4/192.0.2.6']);
      assert.equal(tc.tcpQueries, 1);
    } finally {
      f.close();
      tc.close();
    }
  });
});

/**
 * Two "uplinks" up0 and up1 (veth ends) hold the same address 10.64.0.2/24 and reach "their" DNS
 * server at the same IP 10.64.0.1: only the mark or the device binding can tell them apart.
 * Policy rules as the daemon makes them (fwmark -> table, oif -> table); nftables counts the
 * port-53 packets leaving each device. Nothing answers: the queries fail after a short timeout.
 */
describe('in a network namespace: the query leaves by the chosen uplink', () => {
  const NS = `wm-dns-${process.pid}-${randomBytes(3).toString('hex')}`;
  const hasTools = spawnSync('ip', ['-V']).status === 0 && spawnSync('nft', ['--version']).status === 0;
  const skip = !isRoot ? 'needs root for a network namespace' : !hasTools ? 'needs iproute2 and nftables' : false;
  const ip = (...args: string[]): void => {
    const r = spawnSync('ip', ['-n', NS, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`);
  };
  const counters = (): Record<string, number> => {
    const r = spawnSync('ip', ['netns', 'exec', NS, 'nft', '-j', 'list', 'counters', 'table', 'inet', 'wmtest'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const out: Record<string, number> = {};
    for (const o of (JSON.parse(r.stdout) as { nftables: { counter?: { name: string; packets: number } }[] }).nftables) {
      if (o.counter) out[o.counter.name] = o.counter.packets;
    }
    return out;
  };
  /** Runs resolveVia inside the namespace (a child node process); returns its answer. */
  const resolveInNs = (opts: Record<string, unknown>): DnsAnswer => {
    const script = `import { resolveVia } from ${JSON.stringify(`file://${RESOLVER}`)};
      const r = await resolveVia(${JSON.stringify({ name: 'q.example', family: 4, servers: ['10.64.0.1'], timeoutMs: 150, ...opts })});
      process.stdout.write(JSON.stringify(r));`;
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as DnsAnswer;
  };

  before(() => {
    if (skip) return;
    const r = spawnSync('ip', ['netns', 'add', NS], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    ip('link', 'set', 'lo', 'up');
    for (const [dev, table, mark] of [['up0', '101', '0x1000000'], ['up1', '102', '0x2000000']] as const) {
      ip('link', 'add', dev, 'type', 'veth', 'peer', 'name', `${dev}p`);
      ip('link', 'set', dev, 'up');
      ip('link', 'set', `${dev}p`, 'up');
      ip('address', 'add', '10.64.0.2/24', 'dev', dev);
      ip('route', 'add', '10.64.0.0/24', 'dev', dev, 'table', table);
      ip('rule', 'add', 'fwmark', `${mark}/0x3f000000`, 'lookup', table, 'priority', '4100');
      ip('rule', 'add', 'oif', dev, 'lookup', table, 'priority', '4200');
    }
    const nft = spawnSync('ip', ['netns', 'exec', NS, 'nft', '-f', '-'], {
      encoding: 'utf8',
      input: `table inet wmtest {
        counter up0 {}
        counter up1 {}
        counter tcp0 {}
        counter tcp1 {}
        chain out {
          type filter hook output priority 0;
          oifname "up0" udp dport 53 counter name "up0"
          oifname "up1" udp dport 53 counter name "up1"
          oifname "up0" tcp dport 53 tcp flags syn counter name "tcp0"
          oifname "up1" tcp dport 53 tcp flags syn counter name "tcp1"
        }
      }\n`,
    });
    if (nft.status !== 0) throw new Error(nft.stderr);
  });
  after(() => {
    if (!skip) spawnSync('ip', ['netns', 'del', NS]);
  });

  /** Starts a steered TCP connect to 10.64.0.1:53 inside the namespace: connect() sends the SYN before it returns. */
  const synInNs = (steer: Record<string, unknown>): void => {
    const script = `import { connectSteeredTcp } from ${JSON.stringify(`file://${NATIVE_INDEX}`)};
      void connectSteeredTcp(4, Uint8Array.from([10, 64, 0, 1]), 53, ${JSON.stringify(steer)}, (abort) => abort());`;
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  };

  it('a marked or bound TCP connection (the TC fallback\'s) leaves by the chosen uplink too', { skip }, () => {
    const before = counters();
    synInNs({ mark: 0x2000000 });
    assert.deepEqual([counters()['tcp0']! - before['tcp0']!, counters()['tcp1']! - before['tcp1']!], [0, 1]);
    synInNs({ mark: 0x1000000 });
    assert.deepEqual([counters()['tcp0']! - before['tcp0']!, counters()['tcp1']! - before['tcp1']!], [1, 1]);
    synInNs({ ifname: 'up1' });
    assert.deepEqual([counters()['tcp0']! - before['tcp0']!, counters()['tcp1']! - before['tcp1']!], [1, 2]);
  });

  it('mark and device binding pick the uplink; unsteered goes by the main table', { skip }, () => {
    assert.deepEqual([counters()['up0'], counters()['up1']], [0, 0]);
    assert.equal(resolveInNs({ mark: 0x2000000 }).status, 'failed'); // nobody answers
    assert.deepEqual([counters()['up0'], counters()['up1']], [0, 1]);
    resolveInNs({ mark: 0x1000000 });
    assert.deepEqual([counters()['up0'], counters()['up1']], [1, 1]);
    resolveInNs({ ifname: 'up1' });
    assert.deepEqual([counters()['up0'], counters()['up1']], [1, 2]);
    // A and AAAA, each asked of both servers (one IP twice) in turn: 4 queries
    resolveInNs({ family: 0, mark: 0x2000000, servers: ['10.64.0.1', '10.64.0.1'] });
    assert.deepEqual([counters()['up0'], counters()['up1']], [1, 6]);
    resolveInNs({}); // unsteered: main table, whose first 10.64.0.0/24 route is up0's
    assert.deepEqual([counters()['up0'], counters()['up1']], [2, 6]);
  });
});
