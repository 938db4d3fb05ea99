/**
 * Every byte counts (issue 10), end to end in the namespace lab with real clients: app A (socat,
 * with the library) sends 5 MB over cellular, app B (the static Go client, no rule) receives 20 MB
 * over Wi-Fi. What waymarkd reports is checked against nftables counters in the operators'
 * namespaces (the far side of each uplink, as an operator bills): per app within 1 %, the cost
 * at the configured price, a program in a plain cgroup under its own identity, the kernel's own
 * ICMP replies as unattributed, and the per-app numbers adding up to the uplink's. Then a 10 MB
 * cellular budget on app A: the warning, the kernel stopping the transfer (the overshoot is
 * reported), other apps and uplinks unaffected, and traffic again once the budget is raised.
 * Last, the counts survive a clean restart and a kill -9 without counting twice, and the
 * per-minute and per-hour history agree with the totals.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { BudgetView, UsageResult, UsageRowView } from '../../src/accounting/view.js';
import type { Device } from '../../src/lab/device.js';
import { LAB, type Lab, type Role } from '../../src/lab/lab.js';
import { publicRoot } from '../../src/lab/public.js';
import { exampleText } from '../support/fixture.js';
import { buildPublicGoClient } from '../support/goclient.js';
import { until, useLab } from '../support/lab.js';
import { appScope, Watcher } from '../support/watcher.js';

const USER = 1000;
const APPS = `user.slice/user-${USER}.slice/user@${USER}.service/app.slice`;
const A = `${APPS}/app-gnome-org.example.Uploader-31.scope`;
const B = `${APPS}/app-gnome-org.example.Reader-32.scope`;
const C = `${APPS}/app-gnome-org.example.Other-33.scope`;
const D = `${APPS}/app-gnome-org.example.Mms-34.scope`;
const E = `${APPS}/app-gnome-org.example.Sync-35.scope`;
/** A plain cgroup directory (no unit): its programs have no app key. */
const PLAIN = 'misc.dir';
const SERVER = LAB.internet.v4;
const PORT = { source20: 9101, sink: 9102, source1: 9103, hold: 9104 } as const;
const MB = 1_000_000;
const CELL_PER_MB = 0.02; // the example config's cellular price (EUR)

const config = (): string => exampleText(`rules:
  - name: uploader
    match: { app: org.example.Uploader }
    only: [cellular]
  - name: other
    match: { app: org.example.Other }
    only: [cellular]
  - name: mms
    match: { app: org.example.Mms }
    only: [mms]
  - name: sync
    match: { app: org.example.Sync }
    use: [cellular, wifi]
`);

let lab: Lab;
let dev: Device;
let goclient: string;
let watcher: Watcher;

useLab({ config, alongside: async () => { goclient = await buildPublicGoClient(); }, timeoutMs: 180_000 }, (l, d) => {
  lab = l;
  dev = d;
});

const noLibrary = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'LD_PRELOAD'));
const withLibrary = (): NodeJS.ProcessEnv => ({ ...noLibrary, LD_PRELOAD: join(publicRoot(), 'native/preload/libwaymark.so'), WAYMARK_SOCKET: dev.socket });

// ---------------------------------------------------------------------------------------------
// The operators' side: nftables counters on the link to the device (its peer is "dev" there).

const OP_TABLE = `table inet optest {
  counter link_in { }
  counter link_out { }
  counter flow_in { }
  counter flow_out { }
  chain pre { type filter hook prerouting priority -400; iifname "dev" counter name link_in; iifname "dev" tcp dport @ports counter name flow_in; }
  chain post { type filter hook postrouting priority 400; oifname "dev" counter name link_out; oifname "dev" tcp sport @ports counter name flow_out; }
  set ports { type inet_service; elements = { ${PORT.source20}, ${PORT.sink}, ${PORT.source1}, ${PORT.hold} } }
}`;

interface OpCounters { linkIn: number; linkOut: number; flowIn: number; flowOut: number }

async function opCounters(role: Role): Promise<OpCounters> {
  const r = await lab.run(role, ['nft', '-j', 'list', 'counters', 'table', 'inet', 'optest']);
  assert.equal(r.code, 0, r.stderr);
  const by = new Map<string, number>();
  for (const item of (JSON.parse(r.stdout) as { nftables: { counter?: { name: string; bytes: number } }[] }).nftables) {
    if (item.counter) by.set(item.counter.name, item.counter.bytes);
  }
  return { linkIn: by.get('link_in') ?? 0, linkOut: by.get('link_out') ?? 0, flowIn: by.get('flow_in') ?? 0, flowOut: by.get('flow_out') ?? 0 };
}

const flow = (c: OpCounters): number => c.flowIn + c.flowOut;
const link = (c: OpCounters): number => c.linkIn + c.linkOut;

// ---------------------------------------------------------------------------------------------
// The clients, each in its app's cgroup as an ordinary user.

/** The Go client (no library): receives what the server sends, or sends `send` bytes first. */
function go(cgroup: string, port: number, o: { send?: number; timeout?: string } = {}): ReturnType<Lab['run']> {
  return lab.run('dev', [goclient, '-timeout', o.timeout ?? '20s', ...(o.send ? ['-send', String(o.send)] : []), '-drain', `tcp://${SERVER}:${port}`],
    { cgroup, uid: USER, env: noLibrary, timeoutMs: 30_000 });
}

/** socat under the library: sends `bytes` zero bytes to the sink. */
function socatSend(cgroup: string, bytes: number): ReturnType<Lab['run']> {
  return lab.run('dev', ['sh', '-c', `head -c ${bytes} /dev/zero | socat -u - TCP:${SERVER}:${PORT.sink}`],
    { cgroup, uid: USER, env: withLibrary(), timeoutMs: 30_000 });
}

async function usage(args: readonly string[], uid?: number): Promise<UsageResult> {
  const r = await dev.waymark(['usage', '--json', '--since', '-1d', ...args], uid === undefined ? {} : { uid });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as UsageResult;
}

const total = (r: { txBytes: number; rxBytes: number }): number => r.txBytes + r.rxBytes;
const rowOf = (u: UsageResult, key: string): UsageRowView | undefined => u.rows.find((r) => r.key === key);
const appKey = (name: string): string => `app:${USER}/${name}`;
/** Whether `got` is within 1 % of `want`. */
const within1 = (got: number, want: number): boolean => Math.abs(got - want) <= want * 0.01;

async function budgets(uid?: number): Promise<BudgetView[]> {
  const r = await dev.waymark(['budget', 'list', '--json'], uid === undefined ? {} : { uid });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as BudgetView[];
}

describe('usage and budgets', () => {
  it('sets up: operator counters, servers, the apps\' scopes', async () => {
    for (const role of ['cell', 'wifi'] as const) {
      const r = await lab.run(role, ['nft', '-f', '-'], { input: OP_TABLE });
      assert.equal(r.code, 0, r.stderr);
    }
    const serve = (args: string[]): void => void lab.spawn('inet', ['socat', ...args], { stdio: 'ignore' });
    serve(['-U', `TCP-LISTEN:${PORT.source20},reuseaddr,fork`, `EXEC:head -c ${20 * MB} /dev/zero`]);
    serve(['-u', `TCP-LISTEN:${PORT.sink},reuseaddr,fork`, 'OPEN:/dev/null']);
    serve(['-U', `TCP-LISTEN:${PORT.source1},reuseaddr,fork`, `EXEC:head -c ${MB} /dev/zero`]);
    serve(['-U', `TCP-LISTEN:${PORT.hold},reuseaddr,fork`, `SYSTEM:head -c ${MB} /dev/zero; sleep 30`]);
    await until('the servers listen', async () => (await lab.run('inet', ['ss', '-Htln'])).stdout,
      (out) => Object.values(PORT).every((p) => out.includes(`:${p} `)));
    watcher = new Watcher(lab, dev, ['--json', '-t', 'app', '-t', 'budget'], USER);
    await watcher.ready();
    for (const s of [A, B, C, D, E]) await appScope(lab, watcher, s);
    assert.ok(lab.cgroups);
    lab.cgroups.mkdir(PLAIN);
  });

  it('app A\'s 5 MB over cellular and app B\'s 20 MB over Wi-Fi, as the operators count them, and their cost', async () => {
    const cell0 = await opCounters('cell');
    const wifi0 = await opCounters('wifi');
    const a = await socatSend(A, 5 * MB);
    assert.equal(a.code, 0, a.stderr);
    const b = await go(B, PORT.source20);
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stdout, new RegExp(`bytes=${20 * MB}`));
    const cell = await opCounters('cell');
    const wifi = await opCounters('wifi');
    const opA = flow(cell) - flow(cell0);
    const opB = flow(wifi) - flow(wifi0);

    const onCell = await usage(['--by', 'app', '--uplink', 'cellular']);
    const onWifi = await usage(['--by', 'app', '--uplink', 'wifi']);
    const ra = rowOf(onCell, appKey('org.example.Uploader'));
    const rb = rowOf(onWifi, appKey('org.example.Reader'));
    assert.ok(ra && rb, JSON.stringify({ onCell, onWifi }));
    process.stdout.write(`# app A: reported ${total(ra)} B, operator ${opA} B; app B: reported ${total(rb)} B, operator ${opB} B\n`);
    assert.ok(opA >= 5 * MB && opB >= 20 * MB, `the operators saw the transfers: ${opA}, ${opB}`);
    assert.ok(within1(total(ra), opA), `app A: ${total(ra)} vs ${opA}`);
    assert.ok(within1(total(rb), opB), `app B: ${total(rb)} vs ${opB}`);
    assert.ok(ra.txBytes > 5 * MB && ra.rxBytes < ra.txBytes / 10, 'A mostly sent');
    assert.ok(rb.rxBytes > 20 * MB && rb.txBytes < rb.rxBytes / 10, 'B mostly received');
    assert.equal(ra.app?.kind, 'app');
    assert.equal(rb.app?.uid, USER);
    // Cost: bytes x the uplink's price per MB (10^6 bytes); Wi-Fi is free.
    assert.ok(Math.abs((ra.cost['EUR'] ?? 0) - (total(ra) / MB) * CELL_PER_MB) < 1e-6, JSON.stringify(ra.cost));
    assert.equal(rb.cost['EUR'] ?? 0, 0);
    assert.equal(onCell.mbBytes, MB);
  });

  it('per destination: the MMS app\'s fetch from the MMSC is the mms destination\'s, over the MMS APN, at its price', async () => {
    const d = await lab.run('dev', [goclient, '-timeout', '10s', `http://${LAB.mmsc.v4}/`], { cgroup: D, uid: USER, env: noLibrary, timeoutMs: 20_000 });
    assert.equal(d.code, 0, d.stderr);
    const byDest = await usage(['--by', 'destination']);
    const mms = rowOf(byDest, 'mms');
    const internet = rowOf(byDest, 'internet');
    assert.ok(mms && internet, JSON.stringify(byDest.rows.map((r) => r.key)));
    assert.ok(total(internet) > 25 * MB, 'A\'s and B\'s transfers went to the Internet');
    const onMms = await usage(['--by', 'app', '--destination', 'mms']);
    assert.deepEqual(onMms.rows.map((r) => r.key), [appKey('org.example.Mms')]);
    const row = onMms.rows[0];
    assert.ok(row && total(row) === total(mms) && total(row) > 0);
    const viaMms = rowOf(await usage(['--by', 'app', '--uplink', 'mms']), appKey('org.example.Mms'));
    assert.equal(viaMms && total(viaMms), total(row), 'over the MMS APN');
    assert.ok(Math.abs((row.cost['EUR'] ?? 0) - (total(row) / MB) * 0.5) < 1e-6, JSON.stringify(row.cost));
  });

  it('a program in a plain cgroup is counted under its own identity; the kernel\'s ICMP replies are unattributed; apps add up to the uplink', async () => {
    // A program of no app (a cgroup that is no unit), alive while the daemon first sees its traffic.
    const held = lab.spawn('dev', [goclient, '-timeout', '60s', '-drain', `tcp://${SERVER}:${PORT.hold}`], { cgroup: PLAIN, uid: USER, env: noLibrary, stdio: 'ignore' });
    try {
      const seen = await until('the plain cgroup\'s program is counted', () => usage(['--by', 'app', '--uplink', 'wifi']),
        (u) => u.rows.some((r) => r.app?.kind === 'process' && r.app.uid === USER && r.rxBytes >= MB));
      const p = seen.rows.find((r) => r.app?.kind === 'process');
      assert.ok(p?.app);
      assert.match(p.app.exe ?? '', /goclient$/, 'named after its executable');
      assert.equal(p.key, `proc:${USER}:${p.app.exe}`);
    } finally {
      held.kill('SIGKILL');
    }
    // The device's kernel answers pings from the operator: no process owns those packets.
    const before = rowOf(await usage(['--by', 'app', '--uplink', 'cellular']), 'unattributed');
    const ping = await lab.run('cell', ['ping', '-q', '-c', '20', '-i', '0.01', '-s', '1000', LAB.uplinks.wwan0.v4]);
    assert.equal(ping.code, 0, ping.stdout + ping.stderr);
    const cellOp = await opCounters('cell');
    const byApp = await usage(['--by', 'app', '--uplink', 'cellular']);
    const un = rowOf(byApp, 'unattributed');
    assert.ok(un, JSON.stringify(byApp.rows));
    const icmp = 20 * (1000 + 8 + 20);
    assert.ok(un.rxBytes - (before?.rxBytes ?? 0) >= icmp && un.txBytes - (before?.txBytes ?? 0) >= icmp, `unattributed ${JSON.stringify(un)}`);
    // The uplink's total is the apps' and the rest, and what the operator counted on the link.
    const byUplink = await usage(['--by', 'uplink']);
    const cell = rowOf(byUplink, 'cellular');
    assert.ok(cell);
    assert.equal(total(cell), byApp.rows.reduce((s, r) => s + total(r), 0));
    process.stdout.write(`# cellular: reported ${total(cell)} B, operator's link ${link(cellOp)} B\n`);
    assert.ok(within1(total(cell), link(cellOp)), `cellular ${total(cell)} vs the operator's ${link(cellOp)}`);
  });

  it('one user sees only their own apps\' usage', async () => {
    const mine = await usage(['--by', 'app'], USER);
    assert.equal(mine.scope, 'own');
    assert.ok(mine.rows.length > 0 && mine.rows.every((r) => r.app?.uid === USER), JSON.stringify(mine.rows.map((r) => r.key)));
    const theirs = await usage(['--by', 'app'], USER + 1);
    assert.deepEqual(theirs.rows, []);
    const text = await dev.waymark(['usage', '--since', '-1d'], { uid: USER });
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /org\.example\.Reader/);
    assert.match(text.stdout, /10\^6 bytes/);
  });

  it('a 10 MB cellular budget for app A warns, then stops it in the kernel; others go on; raised, A goes on', async () => {
    const from = watcher.lines.length;
    const set = await dev.waymark(['budget', 'set', '--json', '--uplink', 'cellular', '--app', 'org.example.Uploader', '--limit', '10MB', '--period', 'month'], { uid: USER });
    assert.equal(set.code, 0, set.stderr);
    const budget = JSON.parse(set.stdout) as BudgetView;
    assert.equal(budget.uid, USER);
    assert.equal(budget.limitBytes, 10 * MB);
    const usedBefore = budget.usedBytes;
    assert.ok(usedBefore >= 5 * MB && usedBefore < 8 * MB, `A's month so far: ${usedBefore}`);
    const cell0 = await opCounters('cell');
    // 20 MB more: the kernel stops it at the limit; the client stalls and gives up.
    const a = await go(A, PORT.sink, { send: 20 * MB, timeout: '8s' });
    assert.notEqual(a.code, 0, 'the transfer past the budget did not complete');
    const cell = await opCounters('cell');
    const sent = flow(cell) - flow(cell0);
    const overshoot = usedBefore + sent - 10 * MB;
    process.stdout.write(`# budget 10 MB: A had used ${usedBefore} B, sent ${sent} B more as the operator counts; overshoot ${overshoot} B\n`);
    assert.ok(sent < 20 * MB / 2, 'the bytes stopped');
    assert.ok(overshoot <= 64 * 1024 + 256 * 1024, `overshoot ${overshoot} B`);
    const warned = await watcher.event(from, (e) => e.type === 'budget.warning' && e.id === budget.id, 'budget.warning');
    const exhausted = await watcher.event(from, (e) => e.type === 'budget.exhausted' && e.id === budget.id, 'budget.exhausted');
    assert.ok(warned.at <= exhausted.at);
    assert.ok(exhausted.event.type === 'budget.exhausted' && exhausted.event.blocked);
    // A new connection of A over cellular fails at once; other apps, and A elsewhere, are unaffected.
    const again = await go(A, PORT.source1, { timeout: '3s' });
    assert.notEqual(again.code, 0);
    const other = await go(C, PORT.source1);
    assert.equal(other.code, 0, `another app on cellular: ${other.stderr}`);
    const b = await go(B, PORT.source1);
    assert.equal(b.code, 0, b.stderr);
    const listed = (await budgets(USER)).find((x) => x.id === budget.id);
    assert.equal(listed?.state, 'exhausted');
    // Raised: A sends again.
    const raise = await dev.waymark(['budget', 'set', '--id', budget.id, '--uplink', 'cellular', '--app', 'org.example.Uploader', '--limit', '40MB'], { uid: USER });
    assert.equal(raise.code, 0, raise.stderr);
    await watcher.event(from, (e) => e.type === 'budget.restored' && e.id === budget.id, 'budget.restored');
    const resumed = await socatSend(A, MB);
    assert.equal(resumed.code, 0, resumed.stderr);
    // Another user cannot touch it.
    const theirs = await dev.waymark(['budget', 'rm', budget.id], { uid: USER + 1 });
    assert.notEqual(theirs.code, 0);
    assert.match(theirs.stderr, /not yours|no budget/);
  });

  it('an app its rule lets use Wi-Fi too moves there when its cellular budget is used up (no library: the kernel)', async () => {
    const from = watcher.lines.length;
    const set = await dev.waymark(['budget', 'set', '--json', '--uplink', 'cellular', '--app', 'org.example.Sync', '--limit', '500kB', '--period', 'day'], { uid: USER });
    assert.equal(set.code, 0, set.stderr);
    const budget = JSON.parse(set.stdout) as BudgetView;
    const first = await go(E, PORT.source1, { timeout: '5s' });
    assert.notEqual(first.code, 0, 'the download past the budget stalled');
    await watcher.event(from, (e) => e.type === 'budget.exhausted' && e.id === budget.id, 'budget.exhausted');
    const wifi0 = rowOf(await usage(['--by', 'app', '--uplink', 'wifi']), appKey('org.example.Sync'));
    const next = await go(E, PORT.source1);
    assert.equal(next.code, 0, next.stderr);
    const wifi = rowOf(await usage(['--by', 'app', '--uplink', 'wifi']), appKey('org.example.Sync'));
    assert.ok(wifi && total(wifi) - (wifi0 ? total(wifi0) : 0) > MB, `over Wi-Fi now: ${JSON.stringify(wifi)}`);
    const cell = rowOf(await usage(['--by', 'app', '--uplink', 'cellular']), appKey('org.example.Sync'));
    assert.ok(cell && total(cell) < 500_000 + 64 * 1024 + 1024 * 1024, `cellular stopped near the limit: ${cell ? total(cell) : 0}`);
  });

  it('counts survive a clean restart and a kill -9 without counting twice; minutes and hours agree with the totals', async () => {
    const t0 = await usage(['--by', 'app']);
    await dev.stopDaemon('SIGTERM');
    await dev.startDaemon();
    const t1 = await usage(['--by', 'app']);
    // The apps' counts exactly; the uplinks' rest may have grown by the kernel's own few packets (IPv6 neighbour discovery).
    for (const name of ['org.example.Uploader', 'org.example.Reader']) {
      assert.deepEqual(rowOf(t1, appKey(name)), rowOf(t0, appKey(name)), `a clean restart keeps ${name}'s counts and counts none twice`);
    }
    const grew = total(t1.totals) - total(t0.totals);
    assert.ok(grew >= 0 && grew < 16 * 1024, `totals ${total(t0.totals)} -> ${total(t1.totals)}`);
    // What was flushed survives a kill -9; what the new daemon finds in the kernel is not counted again.
    const b = await go(B, PORT.source1);
    assert.equal(b.code, 0, b.stderr);
    const t2 = await usage(['--by', 'app']); // reads and flushes
    await dev.stopDaemon('SIGKILL');
    await dev.startDaemon();
    const t3 = await usage(['--by', 'app']);
    assert.ok(total(t3.totals) >= total(t2.totals), 'nothing flushed was lost');
    assert.ok(total(t3.totals) - total(t2.totals) < 64 * 1024, `no double counting: ${total(t2.totals)} -> ${total(t3.totals)}`);
    // The history at each resolution: the same totals, and a series that adds up to them.
    for (const resolution of ['minute', 'hour'] as const) {
      const u = await usage(['--by', 'uplink', '--resolution', resolution]);
      assert.equal(u.resolution, resolution);
      // The same totals, but for what the network still carried between the queries (a late ACK, neighbour discovery).
      const late = total(u.totals) - total(t3.totals);
      assert.ok(late >= 0 && late < 16 * 1024, `${resolution}: ${total(u.totals)} vs ${total(t3.totals)}`);
      assert.equal(u.series.reduce((s, x) => s + total(x), 0), total(u.totals), `${resolution} series`);
    }
    await watcher.stop();
  });
});
