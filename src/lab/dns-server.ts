/**
 * Lab DNS server: a tiny authoritative server over UDP for the namespace lab (src/lab/lab.ts).
 * Answers A and AAAA for the names it is given, NOERROR with no answers for other types of a
 * known name, NXDOMAIN for any other name. Wire format: src/dns/wire.ts.
 *
 *   node dns-server.js --name wifi --listen 192.168.50.1 --listen fd00:50::1 \
 *     --record www.example.net=198.51.100.10 --record www.example.net=2001:db8:100::10 \
 *     [--port 53] [--exit-on-stdin-eof]
 *
 * Prints one ready line on stdout ({"ready":"dns-server","name":...}) once every socket is bound.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import {
  CLASS, QNAME_OFFSET, RCODE, TYPE, addressRdata, canonicalName, encodeHeader, encodeRecord, parseQuestion, responseFlags,
} from '../dns/wire.js';
import { fail as failWith, serveUntilStopped } from './server-life.js';

const TTL = 60;

interface Records {
  a: Buffer[];
  aaaa: Buffer[];
}

function fail(message: string): never {
  return failWith('dns-server', message);
}

function header(id: number, queryFlags: number, rcode: number, qd: number, an: number): Buffer {
  // QR, AA, opcode and RD echoed, RA=0
  return encodeHeader({ id, flags: responseFlags(queryFlags, rcode), qdcount: qd, ancount: an });
}

function answer(type: number, rdata: Buffer): Buffer {
  return encodeRecord({ name: QNAME_OFFSET, type, klass: CLASS.IN, ttl: TTL, rdata }); // owner: the qname
}

function respond(zone: ReadonlyMap<string, Records>, msg: Buffer): Buffer | null {
  if (msg.length < 12) return null;
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if ((flags & 0x8000) !== 0) return null; // a response: never answer those
  const opcode = (flags >> 11) & 0xf;
  const qdcount = msg.readUInt16BE(4);
  const q = qdcount === 1 ? parseQuestion(msg) : null;
  if (q === null) return header(id, flags, RCODE.FORMERR, 0, 0);
  const question = msg.subarray(12, q.end);
  if (opcode !== 0) return Buffer.concat([header(id, flags, RCODE.NOTIMP, 1, 0), question]);
  const records = zone.get(q.name);
  if (records === undefined) return Buffer.concat([header(id, flags, RCODE.NXDOMAIN, 1, 0), question]);
  const answers: Buffer[] = [];
  if (q.klass === CLASS.IN || q.klass === CLASS.ANY) {
    if (q.type === TYPE.A || q.type === TYPE.ANY) answers.push(...records.a.map((r) => answer(TYPE.A, r)));
    if (q.type === TYPE.AAAA || q.type === TYPE.ANY) answers.push(...records.aaaa.map((r) => answer(TYPE.AAAA, r)));
  }
  return Buffer.concat([header(id, flags, 0, 1, answers.length), question, ...answers]);
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
    const rr = addressRdata(spec.slice(eq + 1));
    if (eq <= 0 || rr === undefined) fail(`bad --record ${JSON.stringify(spec)} (want NAME=ADDRESS)`);
    const rec = zone.get(name) ?? { a: [], aaaa: [] };
    if (rr.type === TYPE.A) rec.a.push(rr.rdata);
    else rec.aaaa.push(rr.rdata);
    zone.set(name, rec);
  }

  const sockets: Socket[] = [];
  const pending = listen.map((address) => {
    const family = isIP(address);
    if (family === 0) fail(`bad --listen ${JSON.stringify(address)}`);
    const socket = createSocket({ type: family === 4 ? 'udp4' : 'udp6', ipv6Only: family === 6 });
    sockets.push(socket);
    socket.on('message', (msg, rinfo) => {
      const out = respond(zone, msg);
      if (out !== null) socket.send(out, rinfo.port, rinfo.address);
    });
    return new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind({ address, port }, () => {
        socket.off('error', reject);
        socket.on('error', (err) => process.stderr.write(`dns-server: ${address}: ${err.message}\n`));
        resolve();
      });
    });
  });

  serveUntilStopped({
    server: 'dns-server',
    listening: pending,
    ready: { name: values.name, listen, port },
    close: () => {
      for (const s of sockets) s.close();
    },
    exitOnStdinEof: values['exit-on-stdin-eof'],
  });
}

main();
