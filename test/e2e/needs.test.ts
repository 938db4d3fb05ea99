/**
 * The needs by observed properties, end to end (issue 9, item 3), in the namespace lab with the
 * shipped example (Wi-Fi and cellular both reach the Internet), the daemon reading TCP RTTs
 * every second. This kernel has no sch_netem, so the two uplinks' real RTTs in the lab are the
 * same (tens of µs): what is shown is a measurement taking the place of the kind's default.
 *   - low-latency: before any connection, Wi-Fi (kind defaults 20 vs 60 ms); once the daemon has
 *     measured the connections a program holds over cellular (the status shows the RTT),
 *     cellular (µs measured, against Wi-Fi's 20 ms default).
 *   - long-lived: cellular (0.8 vs 0.4); after its link went down and up twice (the status shows
 *     2 drops in the hour), Wi-Fi (0.8 / 4 = 0.2).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ChildProcess } from 'node:child_process';
import type { StatusResult } from '../../src/daemon/protocol.js';
import { CLI_JS, type Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { lastJson, status, url, useLab } from '../support/lab.js';

let lab: Lab;
let dev: Device;

useLab({ daemonArgs: ['--rtt-interval', '1'], timeoutMs: 120_000 }, (l, d) => {
  lab = l;
  dev = d;
});

/** Which device the Internet server saw a curl run with these needs come in by. */
async function pathWith(need: string): Promise<string | null> {
  const r = await dev.waymark(['exec', '--need', need, '--', 'curl', '-sS', '--max-time', '3', url(LAB.internet.v4)], { timeoutMs: 10_000 });
  assert.equal(r.code, 0, r.stderr);
  return lastJson(r.stdout)?.path ?? null;
}

const uplink = (s: StatusResult, name: string) => {
  const u = s.uplinks.find((x) => x.name === name);
  assert.ok(u, name);
  return u;
};

/** Polls the status until `cond` holds (each answer is the daemon's current view); a generous guard only. */
async function statusUntil(cond: (s: StatusResult) => boolean, what: string, ms = 20_000): Promise<StatusResult> {
  const end = Date.now() + ms;
  for (;;) {
    const s = await status(dev);
    if (cond(s)) return s;
    if (Date.now() > end) throw new Error(`${what}: not in time; last status: ${JSON.stringify(s.uplinks.map((u) => [u.name, u.status, u.observed]))}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Holds N TCP connections to the Internet server, printing "ready" once all are up; ends when stdin closes. */
const HOLD = `
const net = require('node:net');
const [host, port, n] = process.argv.slice(1);
let up = 0;
for (let i = 0; i < Number(n); i++) {
  const s = net.connect({ host, port: Number(port) });
  s.on('connect', () => { if (++up === Number(n)) console.log('ready'); });
  s.on('error', (e) => { console.log('error ' + e.code); process.exit(1); });
}
process.stdin.on('end', () => process.exit(0)).resume();
`;

function lines(child: ChildProcess): { text: () => string } {
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  return { text: () => out };
}

describe('needs by what the daemon observes', () => {
  it('low-latency: the kind\'s default until connections over cellular are measured, then cellular', async () => {
    const before = await status(dev);
    assert.equal(uplink(before, 'cellular').observed?.rttMs, null, 'no connection yet');
    assert.equal(uplink(before, 'wifi').properties?.latencyMs.source, 'kind');
    assert.equal(await pathWith('low-latency'), 'wlan0', 'defaults: Wi-Fi 20 ms, cellular 60 ms');

    const holder = lab.spawn('dev', [process.execPath, CLI_JS, '--socket', dev.socket, 'exec', '--uplink', 'cellular', '--',
      process.execPath, '-e', HOLD, LAB.internet.v4, String(LAB.internet.port), '4'], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out = lines(holder);
    try {
      await new Promise<void>((resolve, reject) => {
        const guard = setTimeout(() => reject(new Error(`holder not ready: ${out.text()}`)), 15_000);
        holder.stdout?.on('data', () => { if (out.text().includes('ready')) { clearTimeout(guard); resolve(); } });
        holder.once('exit', (code) => { clearTimeout(guard); reject(new Error(`holder exited ${code}: ${out.text()}`)); });
      });
      const measured = await statusUntil((s) => uplink(s, 'cellular').observed?.rttMs !== null, 'cellular\'s RTT measured');
      const cell = uplink(measured, 'cellular');
      console.log(`# cellular: measured rtt ${cell.observed?.rttMs} ms from ${cell.observed?.rttSamples} samples; wifi: ${uplink(measured, 'wifi').properties?.latencyMs.value} ms (${uplink(measured, 'wifi').properties?.latencyMs.source})`);
      assert.equal(cell.properties?.latencyMs.source, 'measured');
      assert.ok((cell.observed?.rttMs ?? Infinity) < 20, 'a lab veth is fast');
      assert.equal(uplink(measured, 'wifi').observed?.rttMs, null, 'nothing holds a connection over Wi-Fi');
      assert.equal(await pathWith('low-latency'), 'wwan0');
      const text = await dev.waymark(['status']);
      assert.match(text.stdout, /cellular .*rtt \d+(\.\d)? ms, 0 drops\/h/);
    } finally {
      holder.stdin?.end();
      if (holder.exitCode === null && holder.signalCode === null) await new Promise((r) => holder.once('exit', r));
    }
  });

  it('long-lived: cellular, until its link dropped twice within the hour; then Wi-Fi', async () => {
    assert.equal(await pathWith('long-lived'), 'wwan0', 'kinds: cellular 0.8, Wi-Fi 0.4');
    for (let i = 1; i <= 2; i++) {
      await lab.setLink('dev', 'wwan0', false);
      await statusUntil((s) => uplink(s, 'cellular').status !== 'active', `cellular down (${i})`);
      await lab.setLink('dev', 'wwan0', true);
      await statusUntil((s) => uplink(s, 'cellular').status === 'active', `cellular back (${i})`);
    }
    const s = await statusUntil((x) => uplink(x, 'cellular').observed?.drops === 2, 'two drops counted');
    assert.equal(uplink(s, 'cellular').properties?.effectiveStability, 0.2);
    assert.equal(uplink(s, 'wifi').observed?.drops, 0);
    assert.equal(await pathWith('long-lived'), 'wlan0');
    assert.match((await dev.waymark(['status'])).stdout, /cellular .*2 drops\/h/);
  });
});
