/**
 * The core end to end, on the real kernel, in a lab the test builds: exec over every uplink
 * (v4, v6, TCP, UDP), the shared address, fail-fast for unreachable combinations, link down/up
 * latency, kill -9 and restart next to a neighbour's state, config rejection, access control.
 */
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { describe, it } from 'node:test';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab } from '../../src/lab/lab.js';
import { status, url, useLab } from '../support/lab.js';

let lab: Lab;
let dev: Device;

useLab({}, (l, d) => {
  lab = l;
  dev = d;
});

async function execCurl(uplink: string, addr: string, uid?: number) {
  const t0 = performance.now();
  const r = await dev.waymark(['exec', '--uplink', uplink, '--', 'curl', '-sS', '-g', '--max-time', '3', url(addr)], { timeoutMs: 8000, ...(uid !== undefined ? { uid } : {}) });
  return { ...r, ms: performance.now() - t0, reply: r.code === 0 ? (JSON.parse(r.stdout) as { server: string; path: string; remote: string }) : null };
}

/** Our rules and routes as text, sorted, for before/after comparisons. */
async function ownState(): Promise<{ rules: string[]; routes: string[] }> {
  const lines = async (family: '4' | '6', argv: string[]): Promise<string[]> =>
    (await lab.run('dev', ['ip', `-${family}`, ...argv])).stdout.split('\n').filter((l) => l.includes('proto 87')).map((l) => `${family}: ${l}`);
  const rules = [...(await lines('4', ['rule'])), ...(await lines('6', ['rule']))];
  const routes = [...(await lines('4', ['route', 'show', 'table', 'all'])), ...(await lines('6', ['route', 'show', 'table', 'all']))];
  return { rules: rules.sort(), routes: routes.sort() };
}

describe('waymark exec steers every socket to its uplink', () => {
  const cases = [
    { uplink: 'wlan0', server: LAB.internet },
    { uplink: 'wwan0', server: LAB.internet },
    { uplink: 'wwan1', server: LAB.mmsc },
    { uplink: 'tun0', server: LAB.office },
  ] as const;
  for (const c of cases) {
    for (const family of ['v4', 'v6'] as const) {
      it(`${c.uplink} reaches ${c.server.name} over ${family} and the server sees ${c.uplink}`, async () => {
        const r = await execCurl(c.uplink, c.server[family]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.reply?.server, c.server.name);
        assert.equal(r.reply?.path, c.uplink);
      });
    }
  }

  it('by uplink name as well as by interface name, and UDP too', async () => {
    const tcp = await execCurl('cellular', LAB.internet.v4);
    assert.equal(tcp.reply?.path, 'wwan0');
    for (const [uplink, server, path] of [['mms', LAB.mmsc.v6, 'wwan1'], ['wifi', LAB.internet.v4, 'wlan0'], ['cellular', LAB.internet.v6, 'wwan0']] as const) {
      const target = server.includes(':') ? `UDP6:[${server}]:80` : `UDP4:${server}:80`;
      const r = await dev.waymark(['exec', '--uplink', uplink, '--', 'socat', '-T', '2', '-', target], { timeoutMs: 8000, input: 'probe\n' });
      const reply = JSON.parse(r.stdout || 'null') as { path: string; proto: string } | null;
      assert.deepEqual([reply?.path, reply?.proto], [path, 'udp'], `${uplink}: ${r.stderr}`);
    }
  });

  it('two uplinks holding the same address each reach their own operator', async () => {
    const viaInternetApn = await execCurl('wwan0', LAB.internet.v4);
    const viaMmsApn = await execCurl('wwan1', LAB.mmsc.v4);
    assert.equal(viaInternetApn.reply?.remote, LAB.uplinks.wwan0.v4);
    assert.equal(viaMmsApn.reply?.remote, LAB.uplinks.wwan1.v4);
    assert.equal(LAB.uplinks.wwan0.v4, LAB.uplinks.wwan1.v4, 'the lab really shares the address');
    assert.deepEqual([viaInternetApn.reply?.path, viaMmsApn.reply?.path], ['wwan0', 'wwan1']);
    // Without exec, the destination rule takes the MMSC over the MMS APN too (main has no route there).
    const plain = await lab.run('dev', ['curl', '-sS', '--max-time', '3', url(LAB.mmsc.v4)]);
    assert.equal((JSON.parse(plain.stdout) as { path: string }).path, 'wwan1', plain.stderr);
  });

  it('an uplink that cannot reach a destination fails fast with a clear error', async () => {
    for (const [uplink, addr] of [['wwan1', LAB.internet.v4], ['wlan0', LAB.mmsc.v4], ['wwan0', LAB.office.v6], ['tun0', LAB.internet.v6]] as const) {
      const r = await execCurl(uplink, addr);
      assert.notEqual(r.code, 0, `${uplink} → ${addr} should fail`);
      // Fast: refused by the library at connect(), not curl's --max-time 3 (exit 28).
      assert.notEqual(r.code, 28, `${uplink} → ${addr} timed out (${Math.round(r.ms)} ms)`);
      assert.match(r.stderr, /waymark: \S+ refused: .*\(uplink \S+\)/);
    }
    const unknown = await dev.waymark(['exec', '--uplink', 'nope', '--', 'true']);
    assert.equal(unknown.code, 69);
    assert.match(unknown.stderr, /no uplink named "nope"/);
  });

  it('works for an unprivileged user; changing state does not', async () => {
    const r = await execCurl('wwan1', LAB.mmsc.v4, 65534);
    assert.equal(r.reply?.path, 'wwan1', r.stderr);
    const s = await dev.waymark(['status'], { uid: 65534 });
    assert.equal(s.code, 0, s.stderr);
    assert.match(s.stdout, /^UPLINK\s+KIND\s+STATE/);
    const reload = await dev.waymark(['reload'], { uid: 65534 });
    assert.equal(reload.code, 77);
    assert.match(reload.stderr, /reload needs root or membership of the waymark group \[EPERM\]/);
  });
});

describe('status', () => {
  it('shows uplinks and destinations, as text and as JSON', async () => {
    const s = await status(dev);
    const byName = new Map(s.uplinks.map((u) => [u.name, u]));
    assert.deepEqual([...byName.keys()], ['wifi', 'cellular', 'mms', 'office-vpn']);
    assert.deepEqual(byName.get('mms')?.addresses, ['10.64.0.2/24', 'fd00:64::2/64']);
    assert.equal(byName.get('wifi')?.gateways.ipv4, '192.168.50.1');
    assert.equal(byName.get('cellular')?.cost.perMB, 0.02);
    assert.ok(s.uplinks.every((u) => u.status === 'active'));
    assert.deepEqual(s.destinations.find((d) => d.name === 'mms')?.active, { ipv4: 'mms', ipv6: 'mms' });
    const text = (await dev.waymark(['status'])).stdout;
    assert.match(text, /^mms\s+cellular\s+active\s+wwan1\s+10\.64\.0\.2\/24/m);
    assert.match(text, /^office\s+172\.16\.5\.0\/24 fd00:16:5::\/64\s+corp\.example\s+office-vpn/m);
    assert.match(text, /^decide socket: \d+ connections, \d+ requests$/m);
  });
});

describe('link events', () => {
  it('withdraws routes and rules when a link goes down (the delay is printed), restores them when it returns', async () => {
    const monitor = lab.spawn('dev', ['ip', '-tshort', 'monitor', 'link', 'rule', 'route']);
    let out = '';
    monitor.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    // The monitor is listening once it reports a change made for it (a route in an unused table).
    // It may not have subscribed yet when the first change is made: add and delete it again at
    // every poll (an identical `replace` is not announced) until the monitor reports one.
    const probe = ['unreachable', '198.18.255.254/32', 'table', '250'];
    await waitFor(async () => {
      await lab.run('dev', ['ip', 'route', 'add', ...probe]);
      await lab.run('dev', ['ip', 'route', 'del', ...probe]);
      return out.includes('198.18.255.254');
    }, 10_000);
    const wifiTable = (await status(dev)).uplinks.find((u) => u.name === 'wifi')?.table;
    try {
      await lab.setLink('dev', 'wlan0', false);
      await waitFor(async () => !(await ownState()).rules.some((l) => l.includes('oif wlan0')), 10_000);
      // ...and the monitor has printed the withdrawal.
      await waitFor(() => Promise.resolve(out.split('\n').some((l) => l.includes('Deleted') && l.includes('oif wlan0'))), 10_000);
      const lines = out.split('\n');
      const stamp = (l: string | undefined): number => Date.parse((/^\[([^\]]+)\]/.exec(l ?? '')?.[1] ?? '') + 'Z');
      const linkDown = lines.find((l) => /: wlan0(@\S+)?: <[^>]*> /.test(l) && !/<[^>]*\bUP\b/.test(l));
      const withdrawn = lines.find((l) => l.includes('Deleted') && l.includes('oif wlan0'));
      assert.ok(linkDown && withdrawn, out);
      const delay = stamp(withdrawn) - stamp(linkDown);
      // The delay is printed (the target is 100 ms), not asserted: on a busy machine the scheduler
      // decides it more than the daemon does. Asserted: it follows the link event, within a guard.
      console.log(`# link down → oif rule withdrawn: ${delay.toFixed(1)} ms (netlink timestamps)`);
      assert.ok(delay >= 0 && delay < 3000, `withdrawn after ${delay} ms`);
      const state = await ownState();
      assert.equal(state.routes.filter((r) => r.includes(`table ${wifiTable}`)).length, 0, state.routes.join('\n'));
      const s = await status(dev);
      assert.equal(s.uplinks.find((u) => u.name === 'wifi')?.status, 'down');
      const r = await execCurl('wifi', LAB.internet.v4);
      assert.equal(r.code, 69, 'exec refuses an uplink that is down');
      assert.match(r.stderr, /uplink wifi is down/);
    } finally {
      await lab.setLink('dev', 'wlan0', true);
    }
    await waitFor(async () => (await ownState()).rules.some((l) => l.includes('oif wlan0')), 10_000);
    monitor.kill();
    const back = await waitForValue(async () => (await execCurl('wlan0', LAB.internet.v6)).reply?.path, 'wlan0', 10_000);
    assert.equal(back, 'wlan0');
  });
});

describe('restart and neighbours', () => {
  const neighbour = async (): Promise<string> => [
    (await lab.run('dev', ['ip', '-4', 'rule'])).stdout.split('\n').filter((l) => !l.includes('proto 87')).join('\n'),
    (await lab.run('dev', ['ip', '-6', 'rule'])).stdout.split('\n').filter((l) => !l.includes('proto 87')).join('\n'),
    (await lab.run('dev', ['ip', 'route', 'show', 'table', '52'])).stdout,
    (await lab.run('dev', ['ip', '-6', 'route', 'show', 'table', '52'])).stdout,
    (await lab.run('dev', ['ip', 'route', 'show', 'table', 'main'])).stdout,
    (await lab.run('dev', ['nft', 'list', 'table', 'inet', 'neighbour'])).stdout,
  ].join('\n---\n');

  it('kill -9 and restart: no duplicates, neighbours untouched byte for byte', async () => {
    // A neighbour (think Tailscale) with rules inside our priority range, its own table, an nft table.
    for (const cmd of [
      'ip rule add pref 4100 fwmark 0x80000/0xff0000 lookup 52',
      'ip rule add pref 4200 oif wlan0 lookup 52',
      'ip -6 rule add pref 4300 from fd00:50::2 lookup 52',
      'ip route add 203.0.113.0/24 via 192.168.50.1 dev wlan0 table 52',
      'ip -6 route add 2001:db8:99::/64 via fd00:50::1 dev wlan0 table 52',
    ]) assert.equal((await lab.run('dev', cmd.split(' '))).code, 0, cmd);
    const nft = await lab.run('dev', ['nft', '-f', '-'], { input: 'table inet neighbour {\n  set blocked { type ipv4_addr; elements = { 192.0.2.1 } }\n  chain out { type filter hook output priority 10; policy accept; ip daddr @blocked drop; }\n}\n' });
    assert.equal(nft.code, 0, nft.stderr);
    await dev.waymark(['reload']); // one more reconcile with the neighbour present
    const before = await neighbour();
    const ours = await ownState();
    assert.ok(ours.rules.length > 20, `${ours.rules.length} rules`);

    await dev.stopDaemon('SIGKILL');
    assert.deepEqual(await ownState(), ours, 'kill -9 leaves the state in place');
    await dev.startDaemon();
    const afterRestart = await ownState();
    assert.deepEqual(afterRestart, ours, 'same rules and routes, no duplicates');
    assert.equal(new Set(afterRestart.rules).size, afterRestart.rules.length);
    assert.equal(await neighbour(), before);
    const s = await status(dev);
    assert.equal(s.lastReconcile?.changes, 0, 're-adopted without touching the kernel');
    assert.equal((await execCurl('wwan1', LAB.mmsc.v6)).reply?.path, 'wwan1');

    // A clean stop removes all of ours and nothing else; a new start brings it back.
    await dev.stopDaemon('SIGTERM');
    const gone = await ownState();
    assert.deepEqual(gone, { rules: [], routes: [] });
    assert.equal((await lab.run('dev', ['nft', 'list', 'table', 'inet', 'waymark'])).code, 1, 'our nft table is gone');
    assert.equal(await neighbour(), before);
    await dev.startDaemon();
    assert.deepEqual(await ownState(), ours);
  });
});

describe('configuration', () => {
  const good = (): string => readFileSync(dev.configPath, 'utf8');
  const bad: readonly [string, (t: string) => string, RegExp][] = [
    ['unknown field', (t) => t.replace('    kind: wifi ', '    kind: wifi\n    colour: blue '), /waymark\.yaml:14:\d+: uplinks\[0\]\.colour: unknown field "colour"/],
    ['wrong type', (t) => t.replace('preference: 200', 'preference: high'), /waymark\.yaml:16:\d+: uplinks\[0\]\.preference: /],
    ['duplicate uplink', (t) => t.replace('- name: cellular', '- name: wifi'), /waymark\.yaml:18:\d+: uplinks\[1\]\.name: duplicate uplink "wifi"/],
    ['overlapping destination', (t) => t.replace('prefixes: [172.16.5.0/24', 'prefixes: [10.200.0.128/25'), /waymark\.yaml:\d+:\d+: destinations\[2\]\.prefixes\[0\]: 10\.200\.0\.128\/25 overlaps 10\.200\.0\.0\/24 of destination "mms"/],
    ['bad prefix', (t) => t.replace('10.200.0.0/24', '10.200.0.0/33'), /destinations\[1\]\.prefixes\[0\]: prefix length "33" must be 0\.\.32/],
  ];

  it('a bad file is rejected with file, line and field; the running config stays', async () => {
    const original = good();
    const gen = (await status(dev)).daemon.generation;
    const state = await ownState();
    try {
      for (const [what, edit, expect] of bad) {
        const text = edit(original);
        assert.notEqual(text, original, `${what}: the edit applies`);
        writeFileSync(dev.configPath, text);
        const r = await dev.waymark(['reload']);
        assert.equal(r.code, 65, `${what}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, expect, what);
        assert.match(r.stderr, /the running one stays/);
      }
      // SIGHUP with a bad file: logged, ignored.
      dev.daemon.kill('SIGHUP');
      await waitFor(() => Promise.resolve(/msg="configuration rejected; keeping the running one"/.test(readFileSync(`${dev.dir}/waymarkd.log`, 'utf8'))), 10_000);
      const s = await status(dev);
      assert.equal(s.daemon.generation, gen);
      assert.deepEqual(await ownState(), state);
      assert.match(readFileSync(`${dev.dir}/waymarkd.log`, 'utf8'), /msg="configuration rejected; keeping the running one"/);
    } finally {
      writeFileSync(dev.configPath, original);
    }
    // A good edit is taken: the MMS APN loses the MMS destination, the MMSC becomes unreachable.
    writeFileSync(dev.configPath, original.replace('via: [mms]', 'via: [cellular]'));
    try {
      const r = await dev.waymark(['reload']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await status(dev)).daemon.generation, gen + 1);
      const s = await status(dev);
      assert.deepEqual(s.destinations.find((d) => d.name === 'mms')?.active, { ipv4: 'cellular', ipv6: 'cellular' });
    } finally {
      writeFileSync(dev.configPath, original);
      await dev.waymark(['reload']);
    }
  });

  it('malformed messages are answered or dropped without harming the daemon', async () => {
    const replies = await new Promise<string>((resolve, reject) => {
      const s = connect(dev.socket);
      let got = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        got += d;
        if (got.split('\n').length > 4) { s.end(); resolve(got); }
      });
      s.on('error', reject);
      s.write('not json\n{"v":9,"id":1,"method":"status"}\n{"v":1,"id":2,"method":"nope"}\n{"v":1,"id":3,"method":"exec.begin","params":{"uplink":7}}\n');
    });
    const codes = replies.trim().split('\n').map((l) => (JSON.parse(l) as { error?: { code: string } }).error?.code);
    assert.deepEqual(codes, ['EPROTO', 'EPROTO', 'ENOSYS', 'EINVAL']);
    // An endless line is cut off; the daemon keeps serving.
    await new Promise<void>((resolve) => {
      const s = connect(dev.socket);
      s.on('close', () => resolve());
      s.on('error', () => resolve());
      s.write('x'.repeat(200 * 1024));
    });
    assert.equal((await status(dev)).uplinks.length, 4);
  });
});

async function waitFor(cond: () => Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function waitForValue<T>(get: () => Promise<T>, want: T, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (v === want || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}
