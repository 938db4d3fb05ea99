/**
 * The daemon's model over fake adapters (src/daemon/assemble.ts: the wiring main.ts uses): the
 * world observes the fake kernel, the routing reconciler plans and applies to it, the nftables
 * table is rendered from its contributors and loaded into a fake nft, sessions fence their
 * cgroups. Time is a fake clock: every wait is on an event or a pass, never on a timer.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, it } from 'node:test';
import { parseConfig, type Config } from '../../src/config/load.js';
import { markForSlot, PRIO_DESTINATION, PRIO_FALLBACK, PRIO_MARK, tableForSlot } from '../../src/constants.js';
import { assemble } from '../../src/daemon/assemble.js';
import type { EventBody } from '../../src/daemon/events.js';
import { statusView } from '../../src/daemon/status.js';
import type { WorldChange, WorldChangeKind } from '../../src/daemon/world.js';
import { GenerationFile } from '../../src/decision/generation.js';
import { EXAMPLE_CONFIG } from '../../src/lab/device.js';
import { RTM, type NlMessage } from '../../src/netlink/message.js';
import { isOwnRoute, isOwnRule } from '../../src/routing/reconcile.js';
import { RECONCILE_BURST } from '../../src/routing/reconciler.js';
import type { KernelView } from '../../src/uplink/state.js';
import { exampleConfig, labKernel } from '../support/fixture.js';
import { FakeAppMaps, FakeCgroups, FakeClock, FakeKernel, FakeNft, FakeSysctl, fakeApps, recordingLog } from '../support/fakes.js';
import { AppKeys } from '../../src/daemon/apps.js';

const me = { pid: process.pid, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
const ALL: WorldChangeKind[] = ['config', 'observed', 'uplinks', 'linkDns', 'sessions', 'learned'];

/** The lab device without one of its links (and that link's addresses and routes). */
function without(ifindex: number, view: KernelView = labKernel()): KernelView {
  return {
    links: view.links.filter((l) => l.index !== ifindex),
    addrs: view.addrs.filter((a) => a.index !== ifindex),
    routes: view.routes.filter((r) => r.oif !== ifindex),
  };
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function harness(view: KernelView = labKernel(), config: Config = exampleConfig()) {
  const clock = new FakeClock();
  const kernel = new FakeKernel(view);
  const sysctl = new FakeSysctl();
  const nft = new FakeNft();
  const cgroups = new FakeCgroups();
  const appMaps = new FakeAppMaps();
  const log = recordingLog();
  const dir = mkdtempSync(join(tmpdir(), 'wm-engine-'));
  dirs.push(dir);
  const generation = new GenerationFile(dir);
  generation.open({ initial: 100 });
  const published: EventBody[] = [];
  let savedSlots: Readonly<Record<string, number>> = {};
  const m = assemble({
    config, savedSlots: {}, saveSlots: (s) => { savedSlots = s; return Promise.resolve(); },
    sessionStore: { save: () => Promise.resolve() }, generation, log,
    events: { publish: (e) => { published.push(e); }, wants: () => true }, appKeys: new AppKeys(),
  }, { kernel, sysctl, nft, cgroups, clock, apps: fakeApps(appMaps) });
  // Subscribed last: it hears of a change once every follower is done with it.
  const changes: WorldChange[] = [];
  const waiting: { kind: WorldChangeKind; resolve: (c: WorldChange) => void }[] = [];
  m.world.subscribe(ALL, (c) => {
    changes.push(c);
    for (const w of waiting.filter((x) => x.kind === c.kind)) {
      waiting.splice(waiting.indexOf(w), 1);
      w.resolve(c);
    }
  });
  /** The next change of `kind`, once every follower handled it. */
  const next = (kind: WorldChangeKind): Promise<WorldChange> => new Promise((resolve) => waiting.push({ kind, resolve }));
  /** A netlink event, then the pass it schedules. */
  const event = async (msg?: NlMessage): Promise<void> => {
    kernel.event(msg);
    clock.advance(1);
    await m.routing.idle();
  };
  const uplink = (name: string) => m.world.uplinks.find((u) => u.spec.name === name);
  /** As main.ts starts: the slots saved, the first pass, and every follower done with its uplinks. */
  const start = async (): Promise<void> => {
    const first = next('uplinks');
    await m.world.saveSlots();
    await m.routing.start();
    await first;
  };
  return { ...m, start, clock, kernel, sysctl, nft, cgroups, appMaps, log, generation, published, changes, next, event, uplink, slots: () => savedSlots };
}

describe('routing reconciler over a fake kernel', { timeout: 10_000 }, () => {
  it('an uplink whose link appears gets its rules and routes, its sysctl and its counters', async () => {
    const h = harness(without(2));
    await h.start();
    const slot = h.world.slots.get('wifi') ?? 0;
    assert.deepEqual(h.slots(), Object.fromEntries(h.world.slots), 'slots saved');
    assert.equal(h.uplink('wifi')?.status, 'absent');
    assert.ok(!h.kernel.rules.some((r) => r.table === tableForSlot(slot)), 'no rule for an absent uplink');
    assert.ok(!h.sysctl.current.includes('wlan0'));
    assert.doesNotMatch(h.nft.last, /wlan0/);

    h.kernel.set(labKernel());
    const uplinks = h.next('uplinks');
    await h.event();
    assert.equal(h.uplink('wifi')?.status, 'active');
    const mark = h.kernel.rules.find((r) => r.priority === PRIO_MARK && r.fwmark === markForSlot(slot));
    assert.equal(mark?.table, tableForSlot(slot), 'its mark selects its table');
    const dflt = h.kernel.routes.find((r) => r.table === tableForSlot(slot) && r.family === 4 && r.dstLen === 0);
    assert.deepEqual([dflt?.gateway, dflt?.oif], ['192.168.50.1', 2], 'its table has its default route');
    assert.ok(h.sysctl.current.includes('wlan0'), 'src_valid_mark on its device');
    assert.match(h.nft.last, /oifname "wlan0" counter name uplink_wifi_tx/);
    assert.match(h.nft.last, /iifname "wlan0" fib daddr type local meta mark set/);
    assert.equal((await uplinks).kind, 'uplinks');
    assert.deepEqual(h.published.filter((e) => e.type === 'uplink.changed').map((e) => e.type === 'uplink.changed' && [e.uplink, e.previous, e.status]),
      [['wifi', 'absent', 'active']], 'the event bus heard of it');
    const last = h.routing.lastReconcile;
    assert.ok(last && last.changes > 0 && last.errors.length === 0, JSON.stringify(last));

    // Nothing changed: nothing applied, nothing announced.
    const plans = h.kernel.plans.length;
    const announced = h.changes.filter((c) => c.kind === 'uplinks').length;
    await h.event();
    assert.equal(h.kernel.plans.length, plans);
    assert.equal(h.changes.filter((c) => c.kind === 'uplinks').length, announced);
    assert.equal(h.changes.filter((c) => c.kind === 'observed').length, 3, 'every pass is an observation');
  });

  it('tells the event bus what it observed before the kernel follows', async () => {
    const h = harness(without(2));
    await h.start();
    h.kernel.set(labKernel());
    let seenAtApply: number | undefined;
    const apply = h.kernel.apply.bind(h.kernel);
    h.kernel.apply = (p) => {
      seenAtApply = h.published.length;
      return apply(p);
    };
    await h.event();
    assert.equal(seenAtApply, 1, 'the uplink.changed event was out when the plan was applied');
  });

  it('coalesces a burst of events into one pass, and slows down when passes run away', async () => {
    const h = harness();
    await h.start();
    const before = h.kernel.snapshots;
    for (let i = 0; i < 5; i++) h.kernel.event();
    h.clock.advance(1);
    await h.routing.idle();
    assert.equal(h.kernel.snapshots, before + 1);
    for (let i = 0; i < RECONCILE_BURST; i++) await h.event();
    const burst = h.kernel.snapshots;
    h.kernel.event();
    h.clock.advance(1);
    await h.routing.idle();
    assert.equal(h.kernel.snapshots, burst, 'held back');
    assert.ok(h.log.lines.some((l) => l.msg === 'kernel state keeps changing under us; slowing down'));
    h.clock.advance(999);
    await h.routing.idle();
    assert.equal(h.kernel.snapshots, burst + 1, 'a second later it runs');
  });

  it('on stop removes every rule and route it owns and restores the sysctls; with keep, nothing', async () => {
    const h = harness();
    await h.start();
    assert.ok(h.kernel.rules.some(isOwnRule) && h.kernel.routes.some(isOwnRoute));
    const mainRoutes = h.kernel.routes.filter((r) => !isOwnRoute(r)).length;
    assert.ok((await h.routing.stop(false)) > 0);
    assert.equal(h.kernel.watching, false);
    assert.deepEqual(h.kernel.rules.filter(isOwnRule), []);
    assert.deepEqual(h.kernel.routes.filter(isOwnRoute), []);
    assert.equal(h.kernel.routes.length, mainRoutes, 'the main table is not ours');
    assert.equal(h.sysctl.restored, true);
    await h.nftables.remove();
    assert.equal(h.nft.deleted, true);

    const k = harness();
    await k.start();
    const rules = k.kernel.rules.length;
    assert.equal(await k.routing.stop(true), 0);
    assert.equal(k.kernel.rules.length, rules);
    assert.equal(k.sysctl.restored, false);
  });

  it('routes the addresses learnt for a domain destination by its uplink, until they expire', async () => {
    const h = harness();
    await h.start();
    const vpn = tableForSlot(h.world.slots.get('office-vpn') ?? 0);
    const host = (): boolean => h.kernel.rules.some((r) => r.priority === PRIO_DESTINATION && r.dst === '198.51.100.7' && r.dstLen === 32 && r.table === vpn);
    assert.equal(host(), false);
    assert.equal(h.world.learned.learn(['198.51.100.7'], 'office', 30_000), true);
    h.clock.advance(1);
    await h.routing.idle();
    assert.equal(host(), true, 'routed like the office prefixes');
    h.clock.advance(30_010);
    h.clock.advance(1);
    await h.routing.idle();
    assert.equal(host(), false, 'gone once expired');
  });
});

describe('the Internet fallback over a fake kernel', { timeout: 10_000 }, () => {
  // Cellular's default kept out of main (its next hop in the config instead): main's only default is Wi-Fi's.
  const config = parseConfig(readFileSync(EXAMPLE_CONFIG, 'utf8')
    .replace(/^( {4}match: wwan0\n)/m, '$1    gateway: { ipv4: 10.64.0.1, ipv6: "fd00:64::1" }\n'));
  const noCellDefault = (v: KernelView): KernelView => ({ ...v, routes: v.routes.filter((r) => !(r.oif === 3 && r.dstLen === 0)) });
  const fallbackRules = (h: ReturnType<typeof harness>) => h.kernel.rules.filter((r) => r.priority === PRIO_FALLBACK).map((r) => [r.family, r.table]);
  const lastMain = (h: ReturnType<typeof harness>) => [...h.appMaps.plans].reverse().find((p) => p.main !== undefined)?.main;

  it('Wi-Fi gone and main without a default: unmarked traffic goes by cellular (rules, and the app maps predict it); back with Wi-Fi', async () => {
    const h = harness(noCellDefault(labKernel()), config);
    await h.start();
    const wifi = h.world.slots.get('wifi') ?? 0;
    const cell = h.world.slots.get('cellular') ?? 0;
    assert.deepEqual(fallbackRules(h), [], 'main holds Wi-Fi\'s default: no fallback');
    assert.deepEqual(h.world.mainDefault, { v4: 2, v6: 2 });
    assert.deepEqual(lastMain(h), { v4: wifi, v6: wifi });

    h.kernel.set(noCellDefault(without(2)));
    let uplinks = h.next('uplinks');
    await h.event();
    await uplinks;
    assert.deepEqual(fallbackRules(h), [[4, tableForSlot(cell)], [6, tableForSlot(cell)]]);
    assert.deepEqual(h.world.mainDefault, { v4: 3, v6: 3 }, 'where unmarked traffic leaves');
    assert.deepEqual(lastMain(h), { v4: cell, v6: cell }, 'the app BPF programs predict cellular for it');

    h.kernel.set(noCellDefault(labKernel()));
    uplinks = h.next('uplinks');
    await h.event();
    await uplinks;
    assert.deepEqual(fallbackRules(h), [], 'main\'s default is back: the fallback leaves');
    assert.deepEqual(lastMain(h), { v4: wifi, v6: wifi });
  });

  it('main keeps cellular\'s default when Wi-Fi goes: main decides, no fallback, unmarked traffic predicted on cellular', async () => {
    const h = harness(labKernel(), config);
    await h.start();
    h.kernel.set(without(2));
    const uplinks = h.next('uplinks');
    await h.event();
    await uplinks;
    assert.deepEqual(fallbackRules(h), []);
    assert.deepEqual(h.world.mainDefault, { v4: 3, v6: 3 });
  });

  it('main\'s default moving to another uplink alone (a metric) reaches the app maps', async () => {
    const h = harness(labKernel(), config);
    await h.start();
    const cell = h.world.slots.get('cellular') ?? 0;
    const v = labKernel();
    h.kernel.set({ ...v, routes: [...v.routes.map((r) => (r.dstLen === 0 ? { ...r, metric: r.oif === 3 ? 50 : 100 } : r))] });
    const uplinks = h.next('uplinks');
    await h.event();
    await uplinks;
    assert.deepEqual(h.world.mainDefault, { v4: 3, v6: 3 });
    assert.deepEqual(lastMain(h), { v4: cell, v6: cell });
  });
});

describe('the world', { timeout: 10_000 }, () => {
  it('a reload with a changed config replans, bumps the generation and emits the change, the kernel first', async () => {
    const h = harness({ ...labKernel(), links: [...labKernel().links, { index: 9, name: 'eth0', flags: 3, carrier: true }],
      addrs: [...labKernel().addrs, { family: 4, index: 9, address: '192.0.2.2', prefixLen: 24, scope: 0, tentative: false, secondary: false }] });
    await h.start();
    const text = readFileSync(EXAMPLE_CONFIG, 'utf8').replace(/^uplinks:\n/m,
      'uplinks:\n  - name: lan\n    match: eth0\n    kind: ethernet\n    cost: { per_mb: 0, currency: EUR }\n    gateway: { ipv4: 192.0.2.1 }\n');
    let generationAtApply: number | undefined;
    const apply = h.kernel.apply.bind(h.kernel);
    h.kernel.apply = (p) => {
      generationAtApply = h.generation.value;
      return apply(p);
    };
    const before = h.generation.value;
    assert.equal(h.world.generation, 1);
    const generation = await h.world.replaceConfig(parseConfig(text));
    assert.equal(generation, 2);
    assert.equal(h.world.generation, 2);
    const change = h.changes.find((c) => c.kind === 'config');
    assert.deepEqual(change && change.kind === 'config' && [change.generation, change.config.uplinks[0]?.name], [2, 'lan']);
    // Already there when the reload returns: no waiting.
    const lan = h.world.slots.get('lan');
    assert.ok(lan !== undefined && h.slots()['lan'] === lan, 'the new uplink got a slot, saved');
    assert.equal(h.uplink('lan')?.status, 'active');
    assert.ok(h.kernel.rules.some((r) => r.priority === PRIO_MARK && r.table === tableForSlot(lan)));
    assert.ok(h.kernel.routes.some((r) => r.table === tableForSlot(lan) && r.dst === '192.0.2.0' && r.oif === 9), 'its table routes its subnet');
    assert.equal(generationAtApply, before, 'the kernel followed before the libraries were told');
    assert.notEqual(h.generation.value, before, 'their cached answers are void');
  });

  it('keeps router-announced DNS servers until their lifetime runs out', async () => {
    const h = harness();
    await h.start();
    assert.deepEqual(h.uplink('wifi')?.dns, []);
    // Captured from a real router advertisement (test/fixtures/send_ra.py): wlan0 (ifindex 2), 600 s.
    const body = Buffer.from('0a0028000200000086000000000000001905000000000258fd000050000000000000000000000001fd000050000000000000000000000053', 'hex');
    const announced = h.next('uplinks');
    await h.event({ type: RTM.NEWNDUSEROPT, flags: 0, seq: 0, pid: 0, body });
    await announced;
    assert.deepEqual([h.uplink('wifi')?.dns, h.uplink('wifi')?.dnsSource], [['fd00:50::1', 'fd00:50::53'], 'link']);
    assert.ok(h.log.lines.some((l) => l.msg === 'link DNS servers announced' && l.fields?.['lifetime'] === 600));
    h.clock.advance(599_000);
    await h.event();
    assert.deepEqual(h.uplink('wifi')?.dns, ['fd00:50::1', 'fd00:50::53'], 'still valid');
    const expired = h.next('linkDns');
    h.clock.advance(1_010);
    await expired;
    h.clock.advance(1);
    await h.routing.idle();
    assert.deepEqual([h.uplink('wifi')?.dns, h.uplink('wifi')?.dnsSource], [[], 'none']);
  });

  it('status shows the world: generation, uplinks with their counters, destinations by their uplink', async () => {
    const h = harness();
    await h.start();
    const view = statusView(h.world, new Map([['uplink_wifi_tx', { packets: 1, bytes: 10 }], ['uplink_wifi_rx', { packets: 2, bytes: 20 }]]),
      h.routing.lastReconcile, { version: 'v', configPath: '/c', pid: 7, startedAt: new Date(0) });
    assert.equal(view.daemon.generation, 1);
    const wifi = view.uplinks.find((u) => u.name === 'wifi');
    assert.deepEqual(wifi?.traffic, { txBytes: 10, rxBytes: 20 });
    assert.equal(view.uplinks.find((u) => u.name === 'cellular')?.traffic, null);
    assert.deepEqual(view.destinations.find((d) => d.name === 'mms')?.active, { ipv4: 'mms', ipv6: 'mms' });
    assert.equal(view.lastReconcile, h.routing.lastReconcile);
  });
});

describe('the nftables table model', { timeout: 10_000 }, () => {
  it('a session that begins adds its rules to the sessions\' chains before its caller joins it; one that ends, removes them', async () => {
    const h = harness();
    await h.start();
    assert.doesNotMatch(h.nft.last, /cgroupv2/);
    const r = await h.sessions.begin({ uplink: 'cellular', needs: [], deny: [], command: 'true' }, me);
    const chain = (name: string): string => (h.nft.last.split(`  chain ${name} {\n`)[1] ?? '').split('\n  }')[0] ?? '';
    assert.match(chain('backstop'), new RegExp(`socket cgroupv2 level 2 "${r.cgroup}" oifname \\{ "tun0", "wlan0", "wwan1" \\} drop`));
    assert.match(chain('backstop_dns'), new RegExp(`socket cgroupv2 level 2 "${r.cgroup}" oifname "wwan0" .* dnat ip to 10\\.64\\.0\\.1`));
    assert.equal(h.cgroups.marks.get(r.cgroup), h.uplink('cellular')?.mark, 'its sockets get the cellular mark');
    // Headers are the table's: each chain declared once in the body, typed as declared.
    assert.equal(h.nft.last.split('chain backstop {').length - 1, 1);
    assert.match(h.nft.last, /add chain inet waymark backstop_dns \{ type nat hook output priority -100; policy accept; \}/);
    await h.sessions.end(r.id, me);
    assert.doesNotMatch(h.nft.last, /cgroupv2/);
    // No session: the nat chain holds only the apps' redirect (by mark, no cgroup).
    const nat = (h.nft.last.split('  chain backstop_dns {\n')[1] ?? '').split('\n  }')[0] ?? '';
    assert.doesNotMatch(nat, /cgroupv2/);
    assert.match(nat, /meta mark and 0x3f000000 != 0 .* oifname "wwan0" .* dnat ip to 10\.64\.0\.1 comment "waymark apps dns"/);
    assert.equal(h.cgroups.made.has(r.cgroup), false);
  });

  it('without app rules the kernel can apply, no nat chain at all (it would track every connection)', async () => {
    const h = harness(labKernel(), exampleConfig(`
apps:
  - name: by-exe
    match: { exe: /usr/bin/chat }
    uplinks: [cellular]
`));
    await h.start();
    assert.doesNotMatch(h.nft.last, /waymark apps dns/);
    assert.doesNotMatch(h.nft.last, /^ {2}chain backstop_dns \{/m, 'the nat chain is not declared in the body');
    const withRule = harness(labKernel(), exampleConfig(`
apps:
  - name: by-app
    match: { app: org.example.Chat }
    uplinks: [cellular]
`));
    await withRule.start();
    assert.match(withRule.nft.last, /^ {2}chain backstop_dns \{/m);
    assert.match(withRule.nft.last, /waymark apps dns/);
  });

  it('a load that names a cgroup gone meanwhile is rendered again without it', async () => {
    const h = harness();
    await h.start();
    const a = await h.sessions.begin({ uplink: 'cellular', needs: [], deny: [], command: 'a' }, me);
    const b = await h.sessions.begin({ uplink: 'wifi', needs: [], deny: [], command: 'b' }, me);
    h.nft.fail = (script) => {
      if (!script.includes(`"${a.cgroup}"`)) return undefined;
      h.cgroups.made.delete(a.cgroup); // someone removed it between the render and the load
      return `Error: Could not process rule: cgroupv2 path fails: No such file or directory`;
    };
    h.kernel.set(labKernel({ wwan1: 0 })); // any change: the pass renders the table
    await h.event();
    assert.equal(h.nft.refused.length, 1);
    assert.ok(h.nft.refused[0]?.includes(a.cgroup));
    assert.doesNotMatch(h.nft.last, new RegExp(`"${a.cgroup}"`));
    assert.match(h.nft.last, new RegExp(`"${b.cgroup}"`));
    assert.ok(h.log.lines.some((l) => l.msg === 'nftables update named a cgroup that is gone; rendering again'));
    assert.deepEqual(h.routing.lastReconcile?.errors, []);

    // Any other failure is not retried: it is the pass's error.
    h.nft.fail = () => 'Error: syntax error';
    h.kernel.set(labKernel());
    await h.event();
    assert.equal(h.log.lines.filter((l) => l.msg === 'nftables update named a cgroup that is gone; rendering again').length, 1, 'no retry');
    assert.match(h.routing.lastReconcile?.errors.join() ?? '', /syntax error/);
    await assert.rejects(h.sessions.begin({ uplink: 'wifi', needs: [], deny: [], command: 'c' }, me), /cannot set up the session/,
      'a session whose backstop cannot load does not begin');
  });
});
