/**
 * Breakages a real network shows (issue 7, point 7), end to end in a lab whose namespaces have a
 * stock host's reverse-path filtering (src/lab/lab.ts: STOCK_SYSCTLS), as an unprivileged user
 * with real clients (curl, socat, getent, dig, the static Go client):
 *   - replies on the cellular APN pass the reverse-path check while Wi-Fi is down and `main`
 *     holds no default (the uplink's mark on arriving packets + src_valid_mark);
 *   - two concurrent loops of sessions never fail each other's nftables update;
 *   - a session pinned to the MMS APN resolves through the MMS resolver, whatever resolv.conf says;
 *   - the DNS redirect follows the uplink a query leaves by and leaves that uplink's own
 *     resolvers alone.
 *
 * The configuration is the example's with two facts of a real device added: the modem's
 * connection manager keeps the cellular default out of `main` (so the gateway is configured,
 * as for the MMS APN), and Wi-Fi's DNS server is known (DHCP), so a session defaulting to
 * Wi-Fi has a redirect of its own, at an address the MMS APN does not share.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { EXAMPLE_CONFIG, type Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { lastJson, status, url, useLab } from '../support/lab.js';

const UID = 4242;

let lab: Lab;
let dev: Device;
let goclient: string;

function realnetConfig(): string {
  const text = readFileSync(EXAMPLE_CONFIG, 'utf8');
  const withCellGateway = text.replace(
    '    sim: { iccid: "8943102000000000017", apn: internet }\n',
    `    sim: { iccid: "8943102000000000017", apn: internet }\n    gateway: { ipv4: ${LAB.uplinks.wwan0.gw4}, ipv6: "${LAB.uplinks.wwan0.gw6}" }\n`,
  );
  const withWifiDns = withCellGateway.replace(
    '    match: wlan0\n',
    `    match: wlan0\n    dns: [${LAB.dns.wifi.v4}, "${LAB.dns.wifi.v6}"]\n`,
  );
  assert.notEqual(withCellGateway, text, 'example config changed: cellular gateway not added');
  assert.notEqual(withWifiDns, withCellGateway, 'example config changed: Wi-Fi DNS not added');
  return withWifiDns;
}

useLab({
  config: realnetConfig,
  alongside: async () => {
    goclient = await buildPublicGoClient();
  },
  timeoutMs: 180_000,
}, (l, d) => {
  lab = l;
  dev = d;
});

function underExec(wish: readonly string[], argv: readonly string[], opts: { input?: string } = {}) {
  return dev.waymark(['exec', ...wish, '--', ...argv], { uid: UID, timeoutMs: 15_000, ...opts });
}

/** Polls a condition on the daemon's answers (an event we cannot subscribe to from here), bounded. */
async function waitFor(what: string, cond: () => Promise<boolean>, boundMs = 10_000): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** TcpExt counters of the device namespace (/proc/net/netstat is per network namespace). */
async function tcpExt(name: string): Promise<number> {
  const r = await lab.run('dev', ['cat', '/proc/net/netstat']);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('TcpExt:'));
  const keys = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const i = keys.indexOf(name);
  assert.ok(i > 0, `no ${name} in /proc/net/netstat`);
  return Number(values[i]);
}

const sysctl = async (key: string): Promise<string> => (await lab.run('dev', ['sysctl', '-n', key])).stdout.trim();

describe('replies on every uplink pass the reverse-path check', () => {
  it('runs with a stock host\'s rp_filter in every namespace', async () => {
    for (const role of ['dev', 'wifi', 'cell', 'mms', 'office', 'inet'] as const) {
      const r = await lab.run(role, ['sysctl', '-n', 'net.ipv4.conf.all.rp_filter', 'net.ipv4.conf.default.rp_filter']);
      assert.equal(r.stdout.trim(), '2\n2', role);
    }
    assert.equal(await sysctl('net.ipv4.conf.wwan0.rp_filter'), '2');
    // What the daemon changes for it: the uplink devices only.
    for (const ifname of ['wlan0', 'wwan0', 'wwan1', 'tun0']) assert.equal(await sysctl(`net.ipv4.conf.${ifname}.src_valid_mark`), '1', ifname);
    assert.equal(await sysctl('net.ipv4.conf.all.src_valid_mark'), '0');
    assert.equal(await sysctl('net.ipv4.conf.lo.src_valid_mark'), '0');
  });

  it('cellular IPv4 over the shared address works with Wi-Fi down and no default in main (TCP, UDP, static Go)', async () => {
    const def = `default via ${LAB.uplinks.wwan0.gw4} dev wwan0 metric 700`;
    await lab.setLink('dev', 'wlan0', false);
    try {
      // The modem's connection manager keeps its default out of main: nothing is left there.
      const del = await lab.run('dev', ['ip', 'route', 'del', ...def.split(' ')]);
      assert.equal(del.code, 0, del.stderr);
      assert.doesNotMatch((await lab.run('dev', ['ip', '-4', 'route', 'show', 'default'])).stdout, /default/);
      await waitFor('wifi down and cellular active', async () => {
        const s = await status(dev);
        const state = (n: string): string | undefined => s.uplinks.find((u) => u.name === n)?.status;
        return state('wifi') === 'down' && state('cellular') === 'active';
      });
      const dropsBefore = await tcpExt('IPReversePathFilter');

      const tcp = await underExec(['--uplink', 'cellular'], ['curl', '-sS', '--max-time', '3', url(LAB.internet.v4)]);
      assert.equal(tcp.code, 0, tcp.stderr);
      assert.deepEqual([lastJson(tcp.stdout)?.path, lastJson(tcp.stdout)?.proto], ['wwan0', 'tcp']);

      const udp = await underExec(['--uplink', 'cellular'], ['socat', '-T', '3', '-', `UDP4:${LAB.internet.v4}:80`], { input: 'probe\n' });
      assert.deepEqual([lastJson(udp.stdout)?.path, lastJson(udp.stdout)?.proto], ['wwan0', 'udp'], udp.stderr);

      const go = await underExec(['--uplink', 'cellular'], [goclient, url(LAB.internet.v4)]);
      assert.equal(go.code, 0, go.stderr);
      assert.equal(lastJson(go.stdout)?.path, 'wwan0');

      // A session that only states a need defaults to cellular now, softly: same path back.
      const soft = await underExec(['--need', 'long-lived'], ['curl', '-sS', '--max-time', '3', url(LAB.internet.v4)]);
      assert.equal(lastJson(soft.stdout)?.path, 'wwan0', soft.stderr);

      assert.equal(await tcpExt('IPReversePathFilter'), dropsBefore, 'no reply was dropped by the reverse-path check');
    } finally {
      await lab.run('dev', ['ip', 'route', 'replace', ...def.split(' ')]);
      await lab.setLink('dev', 'wlan0', true);
    }
    await waitFor('wifi back', async () => (await status(dev)).uplinks.find((u) => u.name === 'wifi')?.status === 'active');
  });
});

describe('concurrent sessions', () => {
  it('two loops of 20 `waymark exec` at once all start: an ending session never fails another\'s set-up', async () => {
    const loop = async (uplink: string): Promise<string[]> => {
      const failures: string[] = [];
      for (let i = 0; i < 20; i++) {
        const r = await underExec(['--uplink', uplink], ['true']);
        if (r.code !== 0) failures.push(`${uplink} #${i}: exit ${String(r.code)}: ${r.stderr.trim()}`);
      }
      return failures;
    };
    const failures = (await Promise.all([loop('cellular'), loop('mms')])).flat();
    assert.deepEqual(failures, []);
    const log = readFileSync(join(dev.dir, 'waymarkd.log'), 'utf8');
    assert.doesNotMatch(log, /nftables update failed/);
  });
});

describe('DNS follows the uplink', () => {
  const dig = (args: readonly string[]): string[] => ['dig', '+short', '+time=2', '+tries=1', ...args];

  it('a session pinned to the MMS APN resolves through its resolver, whatever resolv.conf says', async () => {
    // resolv.conf names the Wi-Fi router, which the MMS APN does not reach.
    assert.match(readFileSync(`/etc/netns/${lab.ns('dev')}/resolv.conf`, 'utf8'), new RegExp(`nameserver ${LAB.dns.wifi.v4.replace(/\./g, '\\.')}`));
    const mms = ['--uplink', 'mms'];
    // The system resolver of a program that does not load the library (glibc's own sockets).
    const libc = await underExec(mms, ['env', 'WAYMARK_DISABLE=1', 'getent', 'ahostsv4', LAB.mmsc.host]);
    assert.match(libc.stdout, new RegExp(`^${LAB.mmsc.v4.replace(/\./g, '\\.')}\\s`, 'm'), libc.stderr);
    // getaddrinfo under the library.
    const gai = await underExec(mms, ['getent', 'ahostsv4', LAB.mmsc.host]);
    assert.match(gai.stdout, new RegExp(`^${LAB.mmsc.v4.replace(/\./g, '\\.')}\\s`, 'm'), gai.stderr);
    // dig via resolv.conf (its sockets go through the library).
    const r = await underExec(mms, dig([LAB.mmsc.host]));
    assert.equal(r.stdout.trim(), LAB.mmsc.v4, r.stderr);
    // Over TCP as well (the resolver in resolv.conf again), under the library and without it:
    // the same DNS rule and redirect carry the connection.
    for (const argv of [dig(['+tcp', LAB.mmsc.host]), ['env', 'WAYMARK_DISABLE=1', ...dig(['+tcp', LAB.mmsc.host])]]) {
      const t = await underExec(mms, argv);
      assert.equal(t.stdout.trim(), LAB.mmsc.v4, `${argv.join(' ')}: ${t.stdout}${t.stderr}`);
    }
    // The static Go resolver reads resolv.conf itself; only the kernel steers it.
    const go = await underExec(mms, [goclient, `http://${LAB.mmsc.host}/`]);
    assert.equal(go.code, 0, go.stderr);
    assert.equal(lastJson(go.stdout)?.path, 'wwan1');
  });

  it('dig @MMS-resolver from a --deny/--need session reaches it over the MMS APN; other queries go to the uplink they leave by', async () => {
    for (const wish of [['--deny', 'cellular'], ['--need', 'long-lived']]) {
      // The library binds the query to wwan1 (the MMS destination's prefix): the MMS resolver answers.
      const r = await underExec(wish, dig([`@${LAB.dns.mmsNet.v4}`, LAB.mmsc.host]));
      assert.equal(r.stdout.trim(), LAB.mmsc.v4, `${wish.join(' ')}: ${r.stderr}`);
    }
    // A query to a resolver no uplink reaches goes to the resolver of the uplink it leaves by:
    // Wi-Fi's for the --deny cellular session (default Wi-Fi), cellular's when pinned there.
    const wifi = await underExec(['--deny', 'cellular'], dig(['@192.0.2.53', LAB.internet.host]));
    assert.equal(wifi.stdout.trim(), LAB.internet.v4, wifi.stderr);
    const cell = await underExec(['--uplink', 'cellular'], dig(['@192.0.2.53', LAB.internet.host]));
    assert.equal(cell.stdout.trim(), LAB.internet.v4, cell.stderr);
  });
});

describe('what the daemon leaves behind', () => {
  it('its new rules survive a reconcile unchanged, and a clean stop undoes them and src_valid_mark', async () => {
    // The DNS rules carry ipproto/dport: read back from the kernel they must equal what we want.
    const reload = await dev.waymark(['reload']);
    assert.equal(reload.code, 0, reload.stderr);
    assert.deepEqual([(await status(dev)).lastReconcile?.changes, (await status(dev)).lastReconcile?.errors], [0, []]);
    assert.match((await lab.run('dev', ['ip', 'rule'])).stdout, /^4150:.*ipproto udp dport 53 lookup \d+ proto 87$/m);

    await dev.stopDaemon();
    for (const ifname of ['wlan0', 'wwan0', 'wwan1', 'tun0']) assert.equal(await sysctl(`net.ipv4.conf.${ifname}.src_valid_mark`), '0', ifname);
    assert.doesNotMatch((await lab.run('dev', ['ip', 'rule'])).stdout, /proto 87/);
    for (const f of ['-4', '-6']) assert.doesNotMatch((await lab.run('dev', ['ip', f, 'route', 'show', 'table', 'all'])).stdout, /proto 87/);
    assert.notEqual((await lab.run('dev', ['nft', 'list', 'table', 'inet', 'waymark'])).code, 0, 'the table is gone');
  });
});
