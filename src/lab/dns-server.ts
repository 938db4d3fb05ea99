/**
 * Lab DNS server: a tiny authoritative server over UDP and TCP for the namespace lab
 * (src/lab/lab.ts). Answers A and AAAA for the names it is given, NOERROR with no answers for
 * other types of a known name, NXDOMAIN for any other name. Over UDP a reply longer than 512
 * bytes (RFC 1035 4.2.1; the queries here carry no EDNS) is sent truncated (TC set, the question
 * only), as real servers do; the full reply is there over TCP (RFC 7766: length-prefixed, any
 * number of queries per connection). Messages: src/dns/wire.ts.
 *
 *   node dns-server.js --name wifi --listen 192.168.50.1 --listen fd00:50::1 \
 *     --record www.example.net=198.51.100.10 --record www.example.net=2001:db8:100::10 \
 *     [--port 53] [--exit-on-stdin-eof]
 *
 * Prints one ready line on stdout ({"ready":"dns-server","name":...}) once every socket is bound.
 */
import { createSocket, type Socket } from 'node:dgram';
import { createServer, isIP, type Server, type Socket as TcpSocket } from 'node:net';
import { parseArgs } from 'node:util';
import type { Answer, Packet, RecordType } from 'dns-packet';
import { FLAG, RCODE, TcpReader, canonicalName, decodeMessage, encodeMessage, frameTcp } from '../dns/wire.js';
import { fail as failWith, serveUntilStopped } from './server-life.js';

const TTL = 60;
/** The largest reply sent over UDP (RFC 1035 4.2.1: the queries this server gets carry no EDNS). */
export const UDP_MAX = 512;

interface Records {
  a: string[];
  aaaa: string[];
}

/** Question types this server echoes (a known name of another type: NOERROR, no answers). */
const ECHOED: readonly RecordType[] = ['A', 'AAAA', 'CNAME', 'MX', 'NS', 'PTR', 'SOA', 'SRV', 'TXT', 'CAA', 'HINFO'];
function echoedType(t: string): RecordType | undefined {
  return ECHOED.find((e) => e === t);
}

function fail(message: string): never {
  return failWith('dns-server', message);
}

/** The reply to a query over TCP (`full`) and over UDP (`udp`: truncated when too long); null: none due. */
function respond(zone: ReadonlyMap<string, Records>, raw: Buffer): { full: Buffer; udp: Buffer } | null {
  if (raw.length < 12) return null;
  const queryFlags = raw.readUInt16BE(2);
  if ((queryFlags & FLAG.QR) !== 0) return null; // a response: never answer those
  // QR (set by dns-packet for a response), AA, opcode and RD echoed, RA clear.
  const flags = (rcode: number): number => (queryFlags & 0x7800) | FLAG.AA | (queryFlags & FLAG.RD) | rcode;
  const id = raw.readUInt16BE(0);
  const msg = decodeMessage(raw);
  const q = msg?.questions.length === 1 ? msg.questions[0] : undefined;
  const qtype = q === undefined ? undefined : echoedType(q.type);
  if (msg === null || q === undefined || qtype === undefined || q.klass !== 'IN') {
    const b = encodeMessage({ type: 'response', id, flags: flags(msg === null || q === undefined ? RCODE.FORMERR : RCODE.NOTIMP) });
    return { full: b, udp: b };
  }
  const reply = (rcode: number, answers: Answer[] = [], tc = false): Buffer => {
    // The question as sent (case kept), as resolvers expect to find it.
    const packet: Packet = { type: 'response', id, flags: flags(rcode) | (tc ? FLAG.TC : 0), questions: [{ name: q.name, type: qtype, class: 'IN' }], answers };
    return encodeMessage(packet);
  };
  const records = zone.get(canonicalName(q.name));
  let full: Buffer;
  if (msg.opcode !== 0) full = reply(RCODE.NOTIMP);
  else if (records === undefined) full = reply(RCODE.NXDOMAIN);
  else if (qtype === 'A') full = reply(RCODE.NOERROR, records.a.map((data) => ({ type: 'A', name: q.name, ttl: TTL, data })));
  else if (qtype === 'AAAA') full = reply(RCODE.NOERROR, records.aaaa.map((data) => ({ type: 'AAAA', name: q.name, ttl: TTL, data })));
  else full = reply(RCODE.NOERROR);
  return { full, udp: full.length > UDP_MAX ? reply(RCODE.NOERROR, [], true) : full };
}

/** Answers every framed query on a TCP connection; a frame shorter than a header closes it. */
function serveTcp(zone: ReadonlyMap<string, Records>, conn: TcpSocket): void {
  const reader = new TcpReader();
  conn.on('error', () => conn.destroy());
  conn.on('data', (chunk: Buffer) => {
    let msgs: Buffer[];
    try {
      msgs = reader.push(chunk);
    } catch {
      conn.destroy();
      return;
    }
    for (const m of msgs) {
      const out = respond(zone, m);
      if (out !== null) conn.write(frameTcp(out.full));
    }
  });
}

function main(): void {
  const { values } = parseArgs({
    options: {
      name: { type: 'string', default: 'dns' },
      listen: { type: 'string', multiple: true },
      port: { type: 'string', default: '53' },
      record: { type: 'string', multiple: true, default: [] },
      'exit-on-stdin-eof': { type: 'boolean', default: false },
    },
    strict: true,
  });
  const listen = values.listen ?? fail('at least one --listen ADDRESS is required');
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${values.port}`);

  const zone = new Map<string, Records>();
  for (const spec of values.record ?? []) {
    const eq = spec.indexOf('=');
    const name = canonicalName(spec.slice(0, eq));
    const address = spec.slice(eq + 1);
    const family = isIP(address);
    if (eq <= 0 || family === 0) fail(`bad --record ${JSON.stringify(spec)} (want NAME=ADDRESS)`);
    const rec = zone.get(name) ?? { a: [], aaaa: [] };
    if (family === 4) rec.a.push(address);
    else rec.aaaa.push(address);
    zone.set(name, rec);
  }

  const sockets: Socket[] = [];
  const servers: Server[] = [];
  const pending = listen.flatMap((address) => {
    const family = isIP(address);
    if (family === 0) fail(`bad --listen ${JSON.stringify(address)}`);
    const socket = createSocket({ type: family === 4 ? 'udp4' : 'udp6', ipv6Only: family === 6 });
    sockets.push(socket);
    socket.on('message', (msg, rinfo) => {
      const out = respond(zone, msg);
      if (out !== null) socket.send(out.udp, rinfo.port, rinfo.address);
    });
    const udp = new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind({ address, port }, () => {
        socket.off('error', reject);
        socket.on('error', (err) => process.stderr.write(`dns-server: ${address}: ${err.message}\n`));
        resolve();
      });
    });
    const server = createServer((conn) => serveTcp(zone, conn));
    servers.push(server);
    const tcp = new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: address, port, ipv6Only: family === 6 }, () => {
        server.off('error', reject);
        server.on('error', (err) => process.stderr.write(`dns-server: ${address} (tcp): ${err.message}\n`));
        resolve();
      });
    });
    return [udp, tcp];
  });

  serveUntilStopped({
    server: 'dns-server',
    listening: pending,
    ready: { name: values.name, listen, port },
    close: () => {
      for (const s of sockets) s.close();
      for (const s of servers) s.close();
    },
    exitOnStdinEof: values['exit-on-stdin-eof'],
  });
}

main();
