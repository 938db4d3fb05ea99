/**
 * Lab DNS server: a tiny authoritative server over UDP for the namespace lab (src/lab/lab.ts).
 * Answers A and AAAA for the names it is given, NOERROR with no answers for other types of a
 * known name, NXDOMAIN for any other name. Hand-written wire format (RFC 1035, RFC 3596).
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

const TYPE_A = 1;
const TYPE_AAAA = 28;
const TYPE_ANY = 255;
const CLASS_IN = 1;
const CLASS_ANY = 255;
const RCODE_FORMERR = 1;
const RCODE_NXDOMAIN = 3;
const RCODE_NOTIMP = 4;
const TTL = 60;

interface Records {
  a: Buffer[];
  aaaa: Buffer[];
}

function fail(message: string): never {
  process.stderr.write(`dns-server: ${message}\n`);
  process.exit(2);
}

function canonical(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

function ipv4Bytes(address: string): Buffer {
  return Buffer.from(address.split('.').map(Number));
}

function ipv6Bytes(address: string): Buffer {
  let text = address;
  let tail: number[] = [];
  const m = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (m?.[1] !== undefined && m[2] !== undefined) {
    const b = ipv4Bytes(m[2]);
    tail = [((b[0] ?? 0) << 8) | (b[1] ?? 0), ((b[2] ?? 0) << 8) | (b[3] ?? 0)];
    text = m[1].endsWith('::') ? m[1] : m[1].slice(0, -1);
  }
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const parts = text.split('::');
  const left = parse(parts[0] ?? '');
  const right = parse(parts[1] ?? '');
  const fill = parts.length === 2 ? 8 - left.length - right.length - tail.length : 0;
  const groups = [...left, ...new Array<number>(Math.max(fill, 0)).fill(0), ...right, ...tail];
  if (parts.length > 2 || groups.length !== 8 || groups.some((g) => !(g >= 0 && g <= 0xffff))) {
    throw new Error(`bad IPv6 address ${address}`);
  }
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

interface Question {
  name: string;
  type: number;
  klass: number;
  /** Offset just past the question (qname + qtype + qclass). */
  end: number;
}

/** Parses the first question; null when malformed. Queries never use compression pointers. */
function parseQuestion(msg: Buffer): Question | null {
  let off = 12;
  const labels: string[] = [];
  let total = 0;
  for (;;) {
    const len = msg[off];
    if (len === undefined) return null;
    off += 1;
    if (len === 0) break;
    if ((len & 0xc0) !== 0) return null;
    if (off + len > msg.length) return null;
    total += len + 1;
    if (total > 255) return null;
    labels.push(msg.toString('latin1', off, off + len));
    off += len;
  }
  if (off + 4 > msg.length) return null;
  return { name: canonical(labels.join('.')), type: msg.readUInt16BE(off), klass: msg.readUInt16BE(off + 2), end: off + 4 };
}

function header(id: number, queryFlags: number, rcode: number, qd: number, an: number): Buffer {
  const h = Buffer.alloc(12);
  const opcode = (queryFlags >> 11) & 0xf;
  const rd = queryFlags & 0x0100;
  h.writeUInt16BE(id, 0);
  h.writeUInt16BE(0x8000 | (opcode << 11) | 0x0400 | rd | rcode, 2); // QR, AA, RD echoed, RA=0
  h.writeUInt16BE(qd, 4);
  h.writeUInt16BE(an, 6);
  return h;
}

function answer(type: number, rdata: Buffer): Buffer {
  const rr = Buffer.alloc(12);
  rr.writeUInt16BE(0xc00c, 0); // pointer to the qname in the question
  rr.writeUInt16BE(type, 2);
  rr.writeUInt16BE(CLASS_IN, 4);
  rr.writeUInt32BE(TTL, 6);
  rr.writeUInt16BE(rdata.length, 10);
  return Buffer.concat([rr, rdata]);
}

function respond(zone: ReadonlyMap<string, Records>, msg: Buffer): Buffer | null {
  if (msg.length < 12) return null;
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if ((flags & 0x8000) !== 0) return null; // a response: never answer those
  const opcode = (flags >> 11) & 0xf;
  const qdcount = msg.readUInt16BE(4);
  const q = qdcount === 1 ? parseQuestion(msg) : null;
  if (q === null) return header(id, flags, RCODE_FORMERR, 0, 0);
  const question = msg.subarray(12, q.end);
  if (opcode !== 0) return Buffer.concat([header(id, flags, RCODE_NOTIMP, 1, 0), question]);
  const records = zone.get(q.name);
  if (records === undefined) return Buffer.concat([header(id, flags, RCODE_NXDOMAIN, 1, 0), question]);
  const answers: Buffer[] = [];
  if (q.klass === CLASS_IN || q.klass === CLASS_ANY) {
    if (q.type === TYPE_A || q.type === TYPE_ANY) answers.push(...records.a.map((r) => answer(TYPE_A, r)));
    if (q.type === TYPE_AAAA || q.type === TYPE_ANY) answers.push(...records.aaaa.map((r) => answer(TYPE_AAAA, r)));
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
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${String(values.port)}`);

  const zone = new Map<string, Records>();
  for (const spec of values.record ?? []) {
    const eq = spec.indexOf('=');
    const name = canonical(spec.slice(0, eq));
    const address = spec.slice(eq + 1);
    const family = isIP(address);
    if (eq <= 0 || family === 0) fail(`bad --record ${JSON.stringify(spec)} (want NAME=ADDRESS)`);
    const rec = zone.get(name) ?? { a: [], aaaa: [] };
    if (family === 4) rec.a.push(ipv4Bytes(address));
    else rec.aaaa.push(ipv6Bytes(address));
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

  const stop = (): void => {
    for (const s of sockets) s.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (values['exit-on-stdin-eof']) {
    process.stdin.on('end', stop);
    process.stdin.on('close', stop);
    process.stdin.resume();
  }

  Promise.all(pending).then(
    () => process.stdout.write(`${JSON.stringify({ ready: 'dns-server', name: values.name, listen, port })}\n`),
    (err: unknown) => fail(`cannot listen: ${err instanceof Error ? err.message : String(err)}`),
  );
}

main();
