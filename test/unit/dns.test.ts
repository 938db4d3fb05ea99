/**
 * The DNS wire format (src/dns/wire.ts) and the per-uplink resolver (src/dns/resolver.ts).
 *
 *   - wire: queries, compression, malformed and hostile messages;
 *   - the lab's DNS server (dist/src/lab/dns-server.js, which now uses the wire module) on
 *     127.0.0.1 / ::1 and a random port: A, AAAA, both, NXDOMAIN, NODATA, next server on timeout;
 *   - an in-process fake server for what the lab server never does: CNAME chains, TC, SERVFAIL,
 *     SOA negative TTLs, stray and spoofed packets, silence;
 *   - steering: SO_MARK / SO_BINDTODEVICE on the real query socket (getMark), and, as root, in a
 *     throwaway network namespace where two "uplinks" hold the same address and the same DNS
 *     server IP, which device a marked / bound query actually leaves by (nftables counters).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { createSocket, type RemoteInfo } from 'node:dgram';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import * as native from '../../src/native/index.js';
import { openSteeredSocket, resolveVia, type DnsAnswer } from '../../src/dns/resolver.js';
import {
  CLASS, FLAG, QNAME_OFFSET, RCODE, TYPE, decodeMessage, encodeHeader, encodeName, encodeQuery, encodeQuestion, encodeRecord,
  isQueryableName, parseQuestion, responseFlags,
} from '../../src/dns/wire.js';

const isRoot = process.getuid?.() === 0;
const DNS_SERVER = fileURLToPath(new URL('../../src/lab/dns-server.js', import.meta.url));
const RESOLVER = fileURLToPath(new URL('../../src/dns/resolver.js', import.meta.url));

const sortAddrs = (a: DnsAnswer): string[] => a.addrs.map((x) => `${x.family}/${x.address}`).sort();

// ---------------------------------------------------------------------------------------------
// Wire format

describe('dns wire', () => {
  it('encodes a query that parseQuestion and decodeMessage read back', () => {
    const q = encodeQuery(0xbeef, 'WWW.Example.NET.', TYPE.AAAA);
    assert.equal(q.readUInt16BE(0), 0xbeef);
    assert.equal(q.readUInt16BE(2), FLAG.RD);
    const pq = parseQuestion(q);
    assert.deepEqual(pq, { name: 'www.example.net', type: TYPE.AAAA, klass: CLASS.IN, end: q.length });
    const m = decodeMessage(q);
    assert.ok(m);
    assert.equal(m.qr, false);
    assert.equal(m.rd, true);
    assert.deepEqual(m.questions, [{ name: 'WWW.Example.NET', type: TYPE.AAAA, klass: CLASS.IN }]);
  });

  it('refuses names that cannot be encoded', () => {
    assert.throws(() => encodeName(`${'a'.repeat(64)}.net`), RangeError);
    assert.throws(() => encodeName('a..b'), RangeError);
    assert.throws(() => encodeName(Array.from({ length: 130 }, () => 'ab').join('.')), RangeError);
    assert.throws(() => encodeName('sp ace.net'), RangeError);
    assert.equal(isQueryableName(''), false);
    assert.equal(isQueryableName('.'), false);
    assert.equal(isQueryableName('a'.repeat(63) + '.example'), true);
    assert.deepEqual([...encodeName('')], [0]);
  });

  it('decodes compressed answers (pointer owners, CNAME targets) and SOA minimums', () => {
    const id = 7;
    const msg = Buffer.concat([
      encodeHeader({ id, flags: responseFlags(FLAG.RD, RCODE.NOERROR, { ra: true }), qdcount: 1, ancount: 2, nscount: 1 }),
      encodeQuestion({ name: 'www.example.net', type: TYPE.A, klass: CLASS.IN }),
      // www.example.net CNAME edge.example.net (target: "edge" + pointer to "example.net" at 16)
      encodeRecord({ name: QNAME_OFFSET, type: TYPE.CNAME, ttl: 300, rdata: Buffer.from([4, ...Buffer.from('edge'), 0xc0, 16]) }),
      encodeRecord({ name: 'edge.example.net', type: TYPE.A, ttl: 20, rdata: Buffer.from([192, 0, 2, 7]) }),
      encodeRecord({
        name: 'example.net', type: TYPE.SOA, ttl: 3600,
        rdata: Buffer.concat([encodeName('ns.example.net'), encodeName('admin.example.net'), Buffer.from([0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 45])]),
      }),
    ]);
    const m = decodeMessage(msg);
    assert.ok(m);
    assert.equal(m.id, id);
    assert.equal(m.qr && m.ra && m.aa, true);
    assert.equal(m.answers[0]?.name, 'www.example.net');
    assert.equal(m.answers[0]?.data, 'edge.example.net');
    assert.equal(m.answers[1]?.data, '192.0.2.7');
    assert.equal(m.authority[0]?.soaMinimum, 45);
  });

  it('returns null for truncated, looping, trailing-garbage and mis-sized messages', () => {
    const good = Buffer.concat([
      encodeHeader({ id: 1, flags: FLAG.QR, qdcount: 1, ancount: 1 }),
      encodeQuestion({ name: 'a.example', type: TYPE.AAAA, klass: CLASS.IN }),
      encodeRecord({ name: QNAME_OFFSET, type: TYPE.AAAA, ttl: 5, rdata: Buffer.alloc(16, 1) }),
    ]);
    assert.ok(decodeMessage(good));
    assert.equal(decodeMessage(good.subarray(0, 11)), null);
    for (let cut = 12; cut < good.length; cut++) assert.equal(decodeMessage(good.subarray(0, cut)), null, `cut at ${cut}`);
    assert.equal(decodeMessage(Buffer.concat([good, Buffer.from([0])])), null);
    // A record of 3 bytes
    const badA = Buffer.concat([
      encodeHeader({ id: 1, flags: FLAG.QR, ancount: 1 }),
      encodeRecord({ name: 'x', type: TYPE.A, ttl: 1, rdata: Buffer.from([1, 2, 3]) }),
    ]);
    assert.equal(decodeMessage(badA), null);
    // A name that points at itself, and one that points forward
    const self = Buffer.concat([encodeHeader({ id: 1, flags: FLAG.QR, qdcount: 1 }), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    assert.equal(decodeMessage(self), null);
    const fwd = Buffer.concat([encodeHeader({ id: 1, flags: FLAG.QR, qdcount: 1 }), Buffer.from([0xc0, 14, 0, 0, 1, 0, 1])]);
    assert.equal(decodeMessage(fwd), null);
    // parseQuestion: queries never compress
    assert.equal(parseQuestion(self), null);
  });

  it('reads TTLs with the top bit set as 0 (RFC 2181)', () => {
    const msg = Buffer.concat([
      encodeHeader({ id: 1, flags: FLAG.QR, ancount: 1 }),
      encodeRecord({ name: 'x.example', type: TYPE.A, ttl: 0x80000000, rdata: Buffer.from([1, 2, 3, 4]) }),
    ]);
    assert.equal(decodeMessage(msg)?.answers[0]?.ttl, 0);
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

describe('resolveVia against the lab DNS server', () => {
  let lab: LabDns | undefined;
  before(async () => {
    lab = await startLabDns(['127.0.0.1', '::1'], [
      'www.example.net=198.51.100.10', 'www.example.net=2001:db8:100::10', 'www.example.net=198.51.100.11',
      'v4only.example.net=192.0.2.44',
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

  it('moves to the next server when one is silent, within the overall bound', async () => {
    const port = lab!.port;
    // 127.0.0.2 is loopback too, but nothing listens there: no answer (ICMP errors are ignored).
    const t0 = performance.now();
    const r = await resolveVia({ name: 'www.example.net', family: 4, servers: ['127.0.0.2', '127.0.0.1'], port, timeoutMs: 600 });
    const ms = performance.now() - t0;
    assert.equal(r.status, 'ok');
    assert.equal(r.server, '127.0.0.1');
    assert.ok(ms >= 280 && ms < 600, `took ${ms.toFixed(0)} ms; expected one per-server timeout (300 ms)`);
    const t1 = performance.now();
    const none = await resolveVia({ name: 'www.example.net', family: 0, servers: ['127.0.0.2'], port, timeoutMs: 250 });
    const ms1 = performance.now() - t1;
    assert.equal(none.status, 'failed');
    assert.ok(ms1 >= 240 && ms1 < 450, `took ${ms1.toFixed(0)} ms for a 250 ms bound`);
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

  it('keeps the lab server\'s replies byte-exact for a typical query (question echoed as sent, 0xc00c owners)', async () => {
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', r));
    try {
      const query = encodeQuery(0x1234, 'V4Only.Example.Net', TYPE.A);
      const reply = await new Promise<Buffer>((resolve) => {
        s.once('message', (m) => resolve(m));
        s.send(query, lab!.port, '127.0.0.1');
      });
      const expected = Buffer.concat([
        Buffer.from([0x12, 0x34, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 0]), // QR AA RD, NOERROR, 1 question, 1 answer
        query.subarray(12),
        Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 44]),
      ]);
      assert.deepEqual(reply, expected);
    } finally {
      s.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// A fake server for the cases the lab server never produces

type Respond = (query: Buffer, q: { id: number; name: string; type: number }, rinfo: RemoteInfo, reply: (b: Buffer) => void, stray: (b: Buffer) => void) => void;

interface Fake {
  port: number;
  address: string;
  queries: number;
  close(): void;
}

async function fakeServer(address: string, respond: Respond, port = 0): Promise<Fake> {
  const s = createSocket(address.includes(':') ? 'udp6' : 'udp4');
  const other = createSocket(address.includes(':') ? 'udp6' : 'udp4'); // sends from another port
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, address, () => resolve());
  });
  await new Promise<void>((r) => other.bind(0, address, r));
  const fake: Fake = {
    port: s.address().port, address, queries: 0,
    close: () => {
      s.close();
      other.close();
    },
  };
  s.on('message', (msg, rinfo) => {
    const q = parseQuestion(msg);
    if (q === null) return;
    fake.queries++;
    respond(msg, { id: msg.readUInt16BE(0), name: q.name, type: q.type }, rinfo,
      (b) => s.send(b, rinfo.port, rinfo.address), (b) => other.send(b, rinfo.port, rinfo.address));
  });
  return fake;
}

/** A response to `query` with the given answer records (owner names spelled out). */
function response(query: Buffer, rcode: number, answers: Buffer[], opts: { tc?: boolean; authority?: Buffer[]; id?: number } = {}): Buffer {
  const q = parseQuestion(query)!;
  return Buffer.concat([
    encodeHeader({
      id: opts.id ?? query.readUInt16BE(0), flags: responseFlags(query.readUInt16BE(2), rcode, { ra: true }) | (opts.tc ? FLAG.TC : 0),
      qdcount: 1, ancount: answers.length, nscount: opts.authority?.length ?? 0,
    }),
    query.subarray(12, q.end),
    ...answers,
    ...(opts.authority ?? []),
  ]);
}

const a = (name: string, ttl: number, ...bytes: number[]): Buffer => encodeRecord({ name, type: TYPE.A, ttl, rdata: Buffer.from(bytes) });
const aaaa = (name: string, ttl: number, last: number): Buffer => {
  const rdata = Buffer.alloc(16);
  rdata.writeUInt16BE(0x2001, 0);
  rdata.writeUInt16BE(0x0db8, 2);
  rdata[15] = last;
  return encodeRecord({ name, type: TYPE.AAAA, ttl, rdata });
};
const cname = (name: string, ttl: number, target: string): Buffer => encodeRecord({ name, type: TYPE.CNAME, ttl, rdata: encodeName(target) });
const soa = (zone: string, ttl: number, minimum: number): Buffer => {
  const tail = Buffer.alloc(20);
  tail.writeUInt32BE(minimum, 16);
  return encodeRecord({ name: zone, type: TYPE.SOA, ttl, rdata: Buffer.concat([encodeName(`ns.${zone}`), encodeName(`admin.${zone}`), tail]) });
};

describe('resolveVia against a scripted server', () => {
  const fakes: Fake[] = [];
  after(() => fakes.forEach((f) => f.close()));
  const fake = async (respond: Respond, address = '127.0.0.1', port = 0): Promise<Fake> => {
    const f = await fakeServer(address, respond, port);
    fakes.push(f);
    return f;
  };

  it('follows a CNAME chain given out of order, with the minimum TTL, ignoring other names', async () => {
    const f = await fake((query, q, _r, reply) => {
      const answers = q.type === TYPE.A
        ? [a('cdn.example.org', 30, 203, 0, 113, 5), cname('edge.example.net', 120, 'cdn.example.org'),
          a('unrelated.example', 1, 10, 0, 0, 1), cname('www.example.net', 300, 'edge.example.net')]
        : [cname('www.example.net', 300, 'edge.example.net'), cname('edge.example.net', 90, 'cdn.example.org'), aaaa('cdn.example.org', 200, 5)];
      reply(response(query, RCODE.NOERROR, answers));
    });
    const r4 = await resolveVia({ name: 'www.example.net', family: 4, servers: ['127.0.0.1'], port: f.port });
    assert.deepEqual({ s: r4.status, a: sortAddrs(r4), ttl: r4.ttlSec }, { s: 'ok', a: ['4/203.0.113.5'], ttl: 30 });
    const r0 = await resolveVia({ name: 'www.example.net', family: 0, servers: ['127.0.0.1'], port: f.port });
    assert.deepEqual({ s: r0.status, a: sortAddrs(r0), ttl: r0.ttlSec }, { s: 'ok', a: ['4/203.0.113.5', '6/2001:db8::5'], ttl: 30 });
  });

  it('fails on a CNAME loop and on a truncated reply (no TCP fallback)', async () => {
    const loop = await fake((query, _q, _r, reply) => reply(response(query, RCODE.NOERROR, [cname('x.example', 5, 'y.example'), cname('y.example', 5, 'x.example')])));
    assert.equal((await resolveVia({ name: 'x.example', family: 4, servers: ['127.0.0.1'], port: loop.port, timeoutMs: 500 })).status, 'failed');
    const tc = await fake((query, _q, _r, reply) => reply(response(query, RCODE.NOERROR, [], { tc: true })));
    const t0 = performance.now();
    const r = await resolveVia({ name: 'big.example', family: 4, servers: ['127.0.0.1'], port: tc.port, timeoutMs: 1000 });
    assert.equal(r.status, 'failed');
    assert.ok(performance.now() - t0 < 500, 'a truncated reply fails at once, without waiting for the timeout');
  });

  it('ignores stray packets: wrong id, wrong question, not a response, from another port', async () => {
    const f = await fake((query, q, _r, reply, stray) => {
      stray(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 6)])); // right id, wrong source port
      reply(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 7)], { id: (q.id + 1) & 0xffff })); // wrong id
      const wrongQ = Buffer.from(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 8)]));
      wrongQ.writeUInt16BE(TYPE.AAAA, 12 + encodeName(q.name).length); // question type changed
      reply(wrongQ);
      const notResponse = Buffer.from(response(query, RCODE.NOERROR, [a(q.name, 5, 6, 6, 6, 9)]));
      notResponse.writeUInt16BE(notResponse.readUInt16BE(2) & ~FLAG.QR, 2);
      reply(notResponse);
      reply(Buffer.from([1, 2, 3])); // garbage
      setTimeout(() => reply(response(query, RCODE.NOERROR, [a(q.name, 5, 192, 0, 2, 1)])), 30);
    });
    const r = await resolveVia({ name: 'spoof.example', family: 4, servers: ['127.0.0.1'], port: f.port, timeoutMs: 1000 });
    assert.deepEqual(sortAddrs(r), ['4/192.0.2.1']);
  });

  it('asks the next server at once on SERVFAIL; an NXDOMAIN carries the SOA negative TTL', async () => {
    // resolveVia uses one port for every server: two loopback addresses share one.
    const bad = await fake((query, _q, _r, reply) => reply(response(query, RCODE.SERVFAIL, [])));
    const good = await fake((query, _q, _r, reply) => reply(response(query, RCODE.NXDOMAIN, [], { authority: [soa('example', 900, 77)] })), '127.0.0.3', bad.port);
    const t0 = performance.now();
    const r = await resolveVia({ name: 'gone.example', family: 4, servers: ['127.0.0.1', '127.0.0.3'], port: bad.port, timeoutMs: 2000 });
    const ms = performance.now() - t0;
    assert.deepEqual({ s: r.status, ttl: r.ttlSec, server: r.server }, { s: 'nxdomain', ttl: 77, server: '127.0.0.3' });
    assert.ok(ms < 500, `SERVFAIL should move on at once, not after the 1000 ms per-server timeout (${ms.toFixed(0)} ms)`);
    assert.equal(bad.queries, 1);
    assert.equal(good.queries, 1);
  });

  it('accepts a late answer from an earlier server while asking the next', async () => {
    const slow = await fake((query, q, _r, reply) => setTimeout(() => reply(response(query, RCODE.NOERROR, [a(q.name, 9, 192, 0, 2, 99)])), 150));
    const silent = await fake(() => undefined, '127.0.0.3', slow.port);
    const r = await resolveVia({ name: 'late.example', family: 4, servers: ['127.0.0.1', '127.0.0.3'], port: slow.port, timeoutMs: 200 + 1000 });
    // per-server timeout 600 ms > 150 ms: the first server answers in time anyway
    assert.deepEqual(sortAddrs(r), ['4/192.0.2.99']);
    const r2 = await resolveVia({ name: 'late.example', family: 4, servers: ['127.0.0.1', '127.0.0.3'], port: slow.port, timeoutMs: 200 });
    // per-server timeout 100 ms < 150 ms: 127.0.0.3 is asked at 100 ms, 127.0.0.1's answer still counts
    assert.deepEqual(sortAddrs(r2), ['4/192.0.2.99']);
    assert.equal(r2.server, '127.0.0.1');
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
    assert.equal(readdirSync('/proc/self/fd').length, before);
  });

  it('resolves with a mark and a device binding on loopback', { skip: !isRoot && 'SO_MARK needs CAP_NET_ADMIN' }, async () => {
    const f = await fakeServer('127.0.0.1', (query, q, _r, reply) => reply(response(query, RCODE.NOERROR, [a(q.name, 5, 192, 0, 2, 5)])));
    try {
      const r = await resolveVia({ name: 'm.example', family: 4, servers: ['127.0.0.1'], port: f.port, mark: 0x01000000, ifname: 'lo' });
      assert.deepEqual(sortAddrs(r), ['4/192.0.2.5']);
    } finally {
      f.close();
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
        chain out {
          type filter hook output priority 0;
          oifname "up0" udp dport 53 counter name "up0"
          oifname "up1" udp dport 53 counter name "up1"
        }
      }\n`,
    });
    if (nft.status !== 0) throw new Error(nft.stderr);
  });
  after(() => {
    if (!skip) spawnSync('ip', ['netns', 'del', NS]);
  });

  it('mark and device binding pick the uplink; unsteered goes by the main table', { skip }, () => {
    assert.deepEqual(counters(), { up0: 0, up1: 0 });
    assert.equal(resolveInNs({ mark: 0x2000000 }).status, 'failed'); // nobody answers
    assert.deepEqual(counters(), { up0: 0, up1: 1 });
    resolveInNs({ mark: 0x1000000 });
    assert.deepEqual(counters(), { up0: 1, up1: 1 });
    resolveInNs({ ifname: 'up1' });
    assert.deepEqual(counters(), { up0: 1, up1: 2 });
    // A and AAAA, each asked of both servers (one IP twice) in turn: 4 queries
    resolveInNs({ family: 0, mark: 0x2000000, servers: ['10.64.0.1', '10.64.0.1'] });
    assert.deepEqual(counters(), { up0: 1, up1: 6 });
    resolveInNs({}); // unsteered: main table, whose first 10.64.0.0/24 route is up0's
    assert.deepEqual(counters(), { up0: 2, up1: 6 });
  });
});
