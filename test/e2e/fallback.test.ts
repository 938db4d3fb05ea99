/**
 * The Internet fallback end to end (issue 9, item 4): programs with no rule and no library (the
 * static Go client, curl, a plain socket loop), run as an ordinary user outside every session
 * and app scope. Cellular's default is kept out of the device's main table, as a modem manager
 * that leaves it to Waymark would, so main's only default is Wi-Fi's. While it is there nothing
 * changes; when Wi-Fi's link goes down their next connects go over cellular (the delay from the
 * netlink event is printed), and back over Wi-Fi when it returns; a clean stop removes the rule.
 */
import assert from 'node:assert/strict';
import type { StatusResult } from '../../src/daemon/protocol.js';
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { describe, it } from 'node:test';
import { PRIO_FALLBACK, TABLE_BASE } from '../../src/constants.js';
import { EXAMPLE_CONFIG, type Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, status, url, useLab } from '../support/lab.js';

const USER = 1000;
const W = LAB.uplinks.wlan0;
const C = LAB.uplinks.wwan0;

/** The example with cellular's next hop in the config: the kernel's main table will not show it. */
function config(): string {
  const text = readFileSync(EXAMPLE_CONFIG, 'utf8');
  const out = text.replace(/^( {4}match: wwan0\n)/m, `$1    gateway: { ipv4: ${C.gw4}, ipv6: "${C.gw6}" }\n`);
  assert.notEqual(out, text, 'the example still has cellular on wwan0');
  return out;
}

let lab: Lab;
let dev: Device;
let goclient: string;

useLab({ config, alongside: async () => { goclient = await buildPublicGoClient(); }, timeoutMs: 180_000 }, (l, d) => {
  lab = l;
  dev = d;
});

/** Our environment without the library: these programs are on their own. */
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'LD_PRELOAD'));
const plain = (argv: string[]) => lab.run('dev', argv, { uid: USER, env, timeoutMs: 10_000 });
const pathOf = (out: string): string | null => lastJson(out)?.path ?? null;
const go = async (addr: string): Promise<string | null> => pathOf((await plain([goclient, '-timeout', '2s', url(addr)])).stdout);
const curl = async (addr: string): Promise<string | null> => pathOf((await plain(['curl', '-sS', '-g', '--max-time', '2', url(addr)])).stdout);

async function fallbackRules(): Promise<string[]> {
  const out: string[] = [];
  for (const f of ['-4', '-6']) {
    out.push(...(await lab.run('dev', ['ip', f, 'rule'])).stdout.split('\n').filter((l) => l.startsWith(`${PRIO_FALLBACK}:`)).map((l) => `${f} ${l.trim()}`));
  }
  return out;
}
const mainDefaults = async (): Promise<string> =>
  [(await lab.run('dev', ['ip', '-4', 'route', 'show', 'default'])).stdout, (await lab.run('dev', ['ip', '-6', 'route', 'show', 'default'])).stdout].join('');

async function waitFor(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what}: not in time`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Collected stdout of a child. */
function collect(child: ChildProcess): { text: () => string } {
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  return { text: () => out };
}

/**
 * A loop of plain TCP connects (no library, a new socket each time) that prints "ready" after the
 * first one, and exits printing when (ms since the epoch) and after how many failures (by errno)
 * the first connect whose local address is `want` succeeded, and when the last other one did.
 */
const CONNECT_LOOP = `
const net = require('node:net');
const [host, port, want] = process.argv.slice(1);
const failed = {};
let ready = false, lastOther = null;
setTimeout(() => { console.log(JSON.stringify({ gaveUp: true, failed })); process.exit(1); }, 20000).unref();
function once() {
  const s = net.connect({ host, port: Number(port) });
  s.once('connect', () => {
    const at = Date.now(), local = s.localAddress;
    s.destroy();
    if (!ready) { ready = true; console.log('ready'); }
    if (local === want) { console.log(JSON.stringify({ at, local, failed, lastOther })); process.exit(0); }
    lastOther = at;
    setTimeout(once, 2);
  });
  s.once('error', (e) => { failed[e.code] = (failed[e.code] ?? 0) + 1; s.destroy(); setTimeout(once, 1); });
}
once();
`;

describe('the Internet fallback for programs with no rule and no library', () => {
  it('while main holds its default (Wi-Fi\'s, cellular\'s kept out), nothing changes', async () => {
    for (const f of ['-4', '-6']) {
      const r = await lab.run('dev', ['ip', f, 'route', 'del', 'default', 'dev', C.ifname]);
      assert.equal(r.code, 0, r.stderr);
    }
    await dev.waymark(['reload']); // a reload returns once the kernel followed: a pass has seen the change
    const cell = (await status(dev)).uplinks.find((u) => u.name === 'cellular');
    assert.equal(cell?.status, 'active', 'its next hop comes from the config');
    assert.deepEqual(await fallbackRules(), [], 'no fallback while main holds a default');
    const defaults = await mainDefaults();
    assert.match(defaults, new RegExp(`default via ${W.gw4} dev wlan0`));
    assert.doesNotMatch(defaults, /wwan0/, 'we never put cellular\'s default into main');
    for (const addr of [LAB.internet.v4, LAB.internet.v6]) {
      assert.equal(await go(addr), 'wlan0', `goclient to ${addr}`);
      assert.equal(await curl(addr), 'wlan0', `curl to ${addr}`);
    }
  });

  it('Wi-Fi\'s link down: the next connects go over cellular (delay from the netlink event printed); back on Wi-Fi when it returns', async () => {
    const cellTable = (await status(dev)).uplinks.find((u) => u.name === 'cellular')?.table;
    assert.ok(cellTable !== undefined && cellTable > TABLE_BASE);
    const monitor = lab.spawn('dev', ['ip', '-tshort', 'monitor', 'link', 'route']);
    const mon = collect(monitor);
    const loop = lab.spawn('dev', [process.execPath, '-e', CONNECT_LOOP, LAB.internet.v4, String(LAB.internet.port), C.v4], { uid: USER, env });
    const looped = collect(loop);
    try {
      // The monitor is listening once it reports a change made for it (a route in an unused table).
      const probe = ['unreachable', '198.18.255.254/32', 'table', '250'];
      await waitFor(async () => {
        await lab.run('dev', ['ip', 'route', 'add', ...probe]);
        await lab.run('dev', ['ip', 'route', 'del', ...probe]);
        return mon.text().includes('198.18.255.254');
      }, 10_000, 'ip monitor listening');
      await waitFor(() => Promise.resolve(looped.text().startsWith('ready')), 10_000, 'connect loop running (over Wi-Fi)');

      await lab.setLink('dev', 'wlan0', false);
      await waitFor(() => Promise.resolve(looped.text().includes('{')), 10_000, 'a connect over cellular');
      const result = JSON.parse(looped.text().split('\n').find((l) => l.startsWith('{')) ?? '') as { at?: number; local?: string; failed: Record<string, number>; lastOther: number | null };
      assert.equal(result.local, C.v4, looped.text());
      const down = mon.text().split('\n').find((l) => /: wlan0(@\S+)?: <[^>]*> /.test(l) && !/<[^>]*\bUP\b/.test(l));
      const at = Date.parse((/^\[([^\]]+)\]/.exec(down ?? '')?.[1] ?? '') + 'Z');
      assert.ok(Number.isFinite(at) && result.at !== undefined, mon.text());
      const delay = result.at - at;
      // Printed, not asserted (the target is 100 ms; the scheduler of a busy machine decides it
      // more than the daemon does). Asserted: it follows the link event, within a generous guard.
      const wifiLast = result.lastOther === null ? '-' : `${(result.lastOther - at).toFixed(1)} ms`;
      console.log(`# Wi-Fi link down → first connect over cellular: ${delay.toFixed(1)} ms (last over Wi-Fi: ${wifiLast}; failed meanwhile: ${JSON.stringify(result.failed)})`);
      assert.ok(delay >= 0 && delay < 5000, `after ${delay} ms`);

      assert.deepEqual(await fallbackRules(), [`-4 ${PRIO_FALLBACK}:\tfrom all lookup ${cellTable} proto 87`, `-6 ${PRIO_FALLBACK}:\tfrom all lookup ${cellTable} proto 87`]);
      assert.doesNotMatch(await mainDefaults(), /default/, 'main is left without a default, as the link left it');
      // waymark status says so.
      const st = await dev.waymark(['status', '--json']);
      const internet = (JSON.parse(st.stdout) as StatusResult).destinations.find((d) => d.name === 'internet');
      assert.deepEqual([internet?.fallback, internet?.active.ipv4, internet?.active.ipv6], [true, 'cellular', 'cellular']);
      assert.match((await dev.waymark(['status'])).stdout, /^internet .* cellular \/ cellular \(fallback: main has no default\)$/m);
      for (const addr of [LAB.internet.v4, LAB.internet.v6]) {
        assert.equal(await go(addr), 'wwan0', `goclient to ${addr}`);
        assert.equal(await curl(addr), 'wwan0', `curl to ${addr}`);
      }
    } finally {
      loop.kill();
      monitor.kill();
      await lab.setLink('dev', 'wlan0', true);
    }
    // Main's default is back: it wins at once; the daemon then removes the fallback.
    await waitFor(async () => (await fallbackRules()).length === 0, 10_000, 'fallback rules removed');
    for (const addr of [LAB.internet.v4, LAB.internet.v6]) {
      assert.equal(await go(addr), 'wlan0', `goclient to ${addr}`);
      assert.equal(await curl(addr), 'wlan0', `curl to ${addr}`);
    }
  });

  it('a clean stop removes the fallback rule with the rest; a restart puts it back', async () => {
    try {
      await lab.setLink('dev', 'wlan0', false);
      await waitFor(async () => (await fallbackRules()).length === 2, 10_000, 'fallback rules installed');
      await dev.stopDaemon('SIGTERM');
      const left = (await lab.run('dev', ['ip', '-4', 'rule'])).stdout + (await lab.run('dev', ['ip', '-6', 'rule'])).stdout;
      assert.doesNotMatch(left, /proto 87/, left);
      assert.equal(await go(LAB.internet.v4), null, 'without the daemon, no way out (as before Waymark)');
      await dev.startDaemon();
      await waitFor(async () => (await fallbackRules()).length === 2, 10_000, 'fallback rules after restart');
      assert.equal(await go(LAB.internet.v4), 'wwan0');
    } finally {
      await lab.setLink('dev', 'wlan0', true);
    }
  });
});
