/**
 * `node dist/bench/sink.js ADDR PORT`: the receiving end of bench/usage.ts's bulk transfers.
 * Listens on ADDR:PORT and prints `{"ready":true}` once listening, then, for each connection
 * when its sender has finished (EOF), one JSON line `{"bytes":N,"seconds":S,"cpuUs":C}`: S from
 * its first byte to its last, as the receiver sees them (the handshake and the sender's start
 * excluded); C the CPU time this process used from then to EOF (user + system, µs: getrusage), which
 * includes the softirq work done in its context (its ACKs' way to the sender, up to the socket).
 */
import { createServer } from 'node:net';

const [addr, port] = process.argv.slice(2);
if (addr === undefined || port === undefined) throw new Error('usage: sink.js ADDR PORT');

const server = createServer((c) => {
  let bytes = 0;
  let first: bigint | undefined;
  let last = 0n;
  let cpu0: NodeJS.CpuUsage | undefined;
  c.on('data', (d: Buffer) => {
    last = process.hrtime.bigint();
    if (first === undefined) {
      first = last;
      cpu0 = process.cpuUsage();
    }
    bytes += d.byteLength;
  });
  c.on('end', () => {
    const cpu = process.cpuUsage(cpu0);
    const seconds = first === undefined ? 0 : Number(last - first) / 1e9;
    process.stdout.write(`${JSON.stringify({ bytes, seconds, cpuUs: cpu.user + cpu.system })}\n`);
    c.end();
  });
  c.on('error', (e) => process.stderr.write(`sink: ${e.message}\n`));
});
server.listen(Number(port), addr, () => process.stdout.write(`${JSON.stringify({ ready: true })}\n`));
