/**
 * Lab path server: answers every HTTP request (TCP) and every UDP datagram with one JSON line
 * naming the uplink the request arrived by, derived from the client's source address:
 *
 *   {"server":"internet","path":"wlan0","remote":"192.168.50.2","proto":"tcp"}
 *
 * Started by the namespace lab (src/lab/lab.ts) inside a namespace; dependency-free.
 *
 *   node path-server.js --name internet --listen 198.51.100.10 --listen 2001:db8:100::10 \
 *     --port 80 --map 192.168.50.0/24=wlan0 --map fd00:50::/64=wlan0 [--exit-on-stdin-eof]
 *
 * Prints one ready line on stdout ({"ready":"path-server","name":...}) once every socket is bound.
 */
import { createServer, type Server } from 'node:http';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { BlockList, isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { fail as failWith, serveUntilStopped } from './server-life.js';

interface PathEntry {
  readonly list: BlockList;
  readonly path: string;
}

function fail(message: string): never {
  return failWith('path-server', message);
}

function parseMap(spec: string): PathEntry {
  const eq = spec.lastIndexOf('=');
  if (eq <= 0 || eq === spec.length - 1) fail(`bad --map ${JSON.stringify(spec)} (want PREFIX/LEN=PATH)`);
  const cidr = spec.slice(0, eq);
  const path = spec.slice(eq + 1);
  const slash = cidr.indexOf('/');
  if (slash <= 0) fail(`bad prefix ${JSON.stringify(cidr)}`);
  const net = cidr.slice(0, slash);
  const len = Number(cidr.slice(slash + 1));
  const family = isIP(net);
  if (family === 0 || !Number.isInteger(len) || len < 0 || len > (family === 4 ? 32 : 128)) {
    fail(`bad prefix ${JSON.stringify(cidr)}`);
  }
  const list = new BlockList();
  list.addSubnet(net, len, family === 4 ? 'ipv4' : 'ipv6');
  return { list, path };
}

/** Strips an IPv4-mapped prefix (::ffff:a.b.c.d) so v4 prefixes match dual-stack sockets too. */
function normalise(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return m?.[1] ?? address;
}

function pathFor(entries: readonly PathEntry[], remote: string): string {
  const address = normalise(remote);
  const family = isIP(address);
  if (family === 0) return 'unknown';
  const type = family === 4 ? 'ipv4' : 'ipv6';
  for (const entry of entries) {
    if (entry.list.check(address, type)) return entry.path;
  }
  return 'unknown';
}

function main(): void {
  const { values } = parseArgs({
    options: {
      name: { type: 'string' },
      listen: { type: 'string', multiple: true },
      port: { type: 'string', default: '80' },
      map: { type: 'string', multiple: true, default: [] },
      'exit-on-stdin-eof': { type: 'boolean', default: false },
    },
    strict: true,
  });
  const name = values.name ?? fail('--name is required');
  const listen = values.listen ?? fail('at least one --listen ADDRESS is required');
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`bad --port ${values.port}`);
  const entries = (values.map ?? []).map(parseMap);

  const reply = (remote: string, proto: 'tcp' | 'udp'): string =>
    `${JSON.stringify({ server: name, path: pathFor(entries, remote), remote: normalise(remote), proto })}\n`;

  const servers: Server[] = [];
  const sockets: UdpSocket[] = [];
  const pending: Promise<void>[] = [];

  for (const address of listen) {
    const family = isIP(address);
    if (family === 0) fail(`bad --listen ${JSON.stringify(address)}`);

    const server = createServer((req, res) => {
      const body = reply(req.socket.remoteAddress ?? '', 'tcp');
      req.resume();
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        connection: 'close',
      });
      res.end(body);
    });
    servers.push(server);
    pending.push(
      new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: address, port, ipv6Only: family === 6 }, () => {
          server.off('error', reject);
          resolve();
        });
      }),
    );

    const socket = createSocket({ type: family === 4 ? 'udp4' : 'udp6', ipv6Only: family === 6 });
    sockets.push(socket);
    socket.on('message', (_msg, rinfo) => {
      socket.send(reply(rinfo.address, 'udp'), rinfo.port, rinfo.address);
    });
    pending.push(
      new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind({ address, port }, () => {
          socket.off('error', reject);
          socket.on('error', (err) => process.stderr.write(`path-server: udp ${address}: ${err.message}\n`));
          resolve();
        });
      }),
    );
  }

  serveUntilStopped({
    server: 'path-server',
    listening: pending,
    ready: { name, listen, port },
    close: () => {
      for (const s of servers) s.close();
      for (const s of sockets) s.close();
    },
    exitOnStdinEof: values['exit-on-stdin-eof'],
  });
}

main();
