/**
 * Apps in the kernel, the pure part: the desired BPF maps (src/backstop/desired.ts) and the app
 * service (src/daemon/apps.ts) driven with a fake kernel side.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { ConnectRecord } from '../../src/backstop/bpf.js';
import { markForSlot, softMarkForSlot } from '../../src/constants.js';
import {
  destinationIndex, desiredMaps, planMaps, WM_DENY_ALL, WM_T_ASK, WM_T_BUDGET, WM_T_DNS_SHIFT, WM_T_SET, type KnownCgroup, type MapsWorld,
} from '../../src/backstop/desired.js';
import { INTERNET } from '../../src/destination/destination.js';
import { AppKeys, AppService, seenOf, type AppConnect, type SeenCgroup } from '../../src/daemon/apps.js';
import { classifyCgroup } from '../../src/identity/cgroup.js';
import type { EventBody } from '../../src/daemon/events.js';
import { createLogger } from '../../src/daemon/log.js';
import { exampleConfig, labStates, rulesOf } from '../support/fixture.js';
import { RuleSet, type Rule } from '../../src/policy/rules.js';
import { FakeAppMaps } from '../support/fakes.js';

const APPS = `
apps:
  - name: chat
    match: { app: "*chat*", uid: 1000 }
    uplinks: [cellular]
    deny: [mms]
  - name: browser
    match: { flatpak: org.mozilla.firefox }
    uplinks: [wifi, cellular]
  - name: by-exe
    match: { exe: /usr/bin/frugal }
    deny: [cellular]
  - name: guest
    match: { uid: 2000 }
    deny: [cellular, mms]
`;
const config = exampleConfig(APPS);
const { states } = labStates(config);
const slot = (name: string): number => states.find((u) => u.spec.name === name)?.slot ?? -1;
const bit = (name: string): number => 1 << slot(name);
const world: Omit<MapsWorld, 'cgroups'> = {
  rules: rulesOf(config), uplinks: states, destinations: config.destinations, mainDefault: { v4: 2, v6: 2 },
};

const USER_APPS = 'user.slice/user-1000.slice/user@1000.service/app.slice';
const cg = (id: number, rel: string, uid: number | null, unit: KnownCgroup['unit'] = null): KnownCgroup => ({ id: BigInt(id), rel, uid, unit, appKey: unit ? id : 0 });
const chat = cg(11, `${USER_APPS}/app-gnome-org.example.chat-42.scope`, 1000, { unit: 'app-gnome-org.example.chat-42.scope', appId: 'org.example.chat', flatpakId: null });
const firefox = cg(12, `${USER_APPS}/app-flatpak-org.mozilla.firefox-7.scope`, 1000, { unit: 'app-flatpak-org.mozilla.firefox-7.scope', appId: 'org.mozilla.firefox', flatpakId: 'org.mozilla.firefox' });
const other = cg(13, `${USER_APPS}/app-gnome-org.example.editor-9.scope`, 1000, { unit: 'app-gnome-org.example.editor-9.scope', appId: 'org.example.editor', flatpakId: null });
const slice = cg(10, USER_APPS, 1000);
const system = cg(20, 'system.slice', null);
const nginx = cg(21, 'system.slice/nginx.service', null, { unit: 'nginx.service', appId: null, flatpakId: null });

describe('desired BPF maps', () => {
  const d = desiredMaps({ ...world, cgroups: [slice, chat, firefox, other, system, nginx] });
  const entry = (c: KnownCgroup) => {
    const e = d.cgroups.get(c.id);
    assert.ok(e, c.rel);
    return e;
  };

  it('marks an app\'s sockets for its rule\'s uplink and denies what the rule does not allow', () => {
    const e = entry(chat);
    assert.equal(e.self.mark, softMarkForSlot(slot('cellular')));
    assert.equal(e.self.flags & 0xff, WM_T_SET);
    // Its DNS goes by cellular too (the resolver that uplink has).
    assert.equal(e.self.flags >>> WM_T_DNS_SHIFT, slot('cellular'));
    assert.equal(e.self.app, 11);
    // Only cellular is allowed: every other uplink is denied, mms explicitly.
    assert.equal(e.self.deny & bit('mms'), bit('mms'));
    assert.equal(e.self.deny & bit('wifi'), bit('wifi'));
    assert.equal(e.self.deny & bit('cellular'), 0);
    // A child of an app's cgroup is the app.
    assert.deepEqual(e.pending, e.self);
  });

  it('matches a Flatpak scope by its Flatpak ID, prefers its first uplink', () => {
    const e = entry(firefox);
    assert.equal(e.self.mark, softMarkForSlot(slot('wifi')));
    assert.equal(e.self.deny & (bit('wifi') | bit('cellular')), 0);
    assert.equal(e.self.deny & bit('mms'), bit('mms'));
  });

  it('leaves an app no rule matches to default routing, but decides it (the kernel walk stops there)', () => {
    const e = entry(other);
    assert.deepEqual({ mark: e.self.mark, deny: e.self.deny, flags: e.self.flags }, { mark: 0, deny: 0, flags: WM_T_SET });
  });

  it('gives a new child of a user\'s app slice the most restrictive of the rules it could match', () => {
    const p = entry(slice).pending;
    // chat allows only cellular, browser only wifi+cellular: together, cellular; chat denies mms.
    assert.equal(p.deny & bit('cellular'), 0);
    assert.equal(p.deny & bit('wifi'), bit('wifi'));
    assert.equal(p.deny & bit('mms'), bit('mms'));
    assert.equal(p.mark, softMarkForSlot(slot('cellular')));
    // The slice's own sockets (none usually) are untouched.
    assert.equal(entry(slice).self.mark, 0);
  });

  it('a system service with no rule leaves the decision to the uid entry; uid-only rules go to the uid map', () => {
    assert.equal(entry(nginx).self.flags, 0);
    const guest = d.uids.get(2000);
    assert.ok(guest);
    assert.equal(guest.deny & (bit('cellular') | bit('mms')), bit('cellular') | bit('mms'));
    assert.equal(guest.mark, softMarkForSlot(slot('wifi')));
    // Below system.slice, any user's rule could match: chat's and guest's denials both hold.
    const p = entry(system).pending;
    assert.equal(p.deny & bit('mms'), bit('mms'));
    assert.equal(p.deny & bit('cellular'), bit('cellular'));
  });

  it('never applies a rule that needs the executable (the kernel key is the cgroup)', () => {
    const frugal = cg(30, `${USER_APPS}/app-frugal-1.scope`, 1000, { unit: 'app-frugal-1.scope', appId: 'frugal', flatpakId: null });
    const e = desiredMaps({ ...world, cgroups: [frugal] }).cgroups.get(30n);
    assert.equal(e?.self.deny, 0);
  });

  it('a rule that allows nothing usable denies every uplink, also ones added later', () => {
    const c = exampleConfig(`
apps:
  - name: none
    match: { app: x }
    uplinks: [office-vpn]
    deny: [wifi, cellular, mms]
    needs: [unmetered, cheapest]
`);
    const x = cg(40, `${USER_APPS}/app-x-1.scope`, 1000, { unit: 'app-x-1.scope', appId: 'x', flatpakId: null });
    const { states: s } = labStates(c);
    const vpnDown = s.map((u) => (u.spec.name === 'office-vpn' ? { ...u, status: 'down' as const } : u));
    const e = desiredMaps({ ...world, rules: rulesOf(c), uplinks: vpnDown, cgroups: [x] }).cgroups.get(40n);
    assert.ok(e);
    assert.equal(e.self.mark, 0);
    assert.equal(e.self.deny & bit('office-vpn'), 0, 'the vpn stays allowed (it is the rule\'s), only down');
    const all = exampleConfig(`
apps:
  - name: nothing
    match: { app: x }
    uplinks: [wifi]
    deny: [cellular]
    needs: [no-roaming]
  - name: other
    match: { app: x* }
    uplinks: [cellular]
`);
    const slicePending = desiredMaps({ ...world, rules: rulesOf(all), cgroups: [slice] }).cgroups.get(10n)?.pending;
    assert.ok(slicePending);
    assert.equal((slicePending.deny & WM_DENY_ALL) >>> 0, WM_DENY_ALL, 'wifi ∩ cellular is nothing: every uplink denied');
    assert.equal(slicePending.mark, 0);
  });

  it('knows the uplink devices, the destination prefixes by their current uplink and index, and main\'s slot', () => {
    assert.equal(d.ifslots.get(4), slot('mms'));
    // Indexes in config order, the Internet (listed first) excluded: mms 1, office 2.
    assert.deepEqual(d.destinations.get('10.200.0.0/24'), { slot: slot('mms'), dest: 1 });
    assert.deepEqual(d.destinations.get('fd00:200::/64'), { slot: slot('mms'), dest: 1 });
    assert.deepEqual(d.destinations.get('172.16.5.0/24'), { slot: slot('office-vpn'), dest: 2 });
    assert.deepEqual(d.main, { v4: slot('wifi'), v6: slot('wifi') });
  });

  it('keeps the prefixes of a destination no uplink carries now, with slot 0 (still counted under it)', () => {
    const vpnDown = states.map((u) => (u.spec.name === 'office-vpn' ? { ...u, status: 'down' as const } : u));
    const m = desiredMaps({ ...world, uplinks: vpnDown, cgroups: [] });
    assert.deepEqual(m.destinations.get('172.16.5.0/24'), { slot: 0, dest: 2 });
    assert.deepEqual(m.destinations.get('fd00:16:5::/64'), { slot: 0, dest: 2 });
    assert.deepEqual(m.destinations.get('10.200.0.0/24'), { slot: slot('mms'), dest: 1 });
    // Only the changed values are planned; the counts stay (the entries stay).
    const p = planMaps(m, d);
    assert.deepEqual(p.setDestinations.map(([k]) => k).sort(), ['172.16.5.0/24', 'fd00:16:5::/64']);
    assert.deepEqual(p.delDestinations, []);
    assert.equal(p.destinationCounts, undefined);
  });

  it('destination indexes: config order from 1, the Internet excluded, 0 beyond 255', () => {
    const many = [{ name: INTERNET }, ...Array.from({ length: 257 }, (_, i) => ({ name: `d${i}` }))];
    const idx = destinationIndex(many);
    assert.equal(idx.get(INTERNET), undefined);
    assert.equal(idx.get('d0'), 1);
    assert.equal(idx.get('d254'), 255);
    assert.equal(idx.get('d255'), 0);
    assert.equal(idx.get('d256'), 0);
    assert.deepEqual([...destinationIndex(config.destinations)], [['mms', 1], ['office', 2]]);
  });

  it('plans the destination prefix counts per family (wm_conf) on the first write and when they change', () => {
    const first = planMaps(d, undefined);
    assert.deepEqual(first.destinationCounts, { v4: 2, v6: 2 });
    assert.equal(planMaps(d, d).destinationCounts, undefined);
    const fewer = desiredMaps({ ...world, destinations: config.destinations.filter((x) => x.name !== 'office'), cgroups: [] });
    const p = planMaps(fewer, d);
    assert.deepEqual(p.destinationCounts, { v4: 1, v6: 1 });
    assert.deepEqual([...p.delDestinations].sort(), ['172.16.5.0/24', 'fd00:16:5::/64']);
  });

  it('budgets: a budgeted app key gets WM_T_BUDGET; its used-up slots and the uplink-wide ones are denied', () => {
    const b = desiredMaps({
      ...world, cgroups: [slice, chat, firefox, other, system, nginx],
      budgeted: new Set([chat.appKey, nginx.appKey]), blocked: new Map([[firefox.appKey, [slot('wifi')]]]), blockedSlots: [slot('mms')],
    });
    const e = (c: KnownCgroup) => {
      const x = b.cgroups.get(c.id);
      assert.ok(x, c.rel);
      return x;
    };
    assert.equal(e(chat).self.flags & WM_T_BUDGET, WM_T_BUDGET);
    assert.deepEqual(e(chat).pending, e(chat).self, 'a child of the app is budgeted too');
    assert.equal(e(firefox).self.flags & WM_T_BUDGET, 0);
    // An entry that does not decide still names its app: the kernel applies its budget.
    assert.equal(e(nginx).self.flags, WM_T_BUDGET);
    assert.equal(e(nginx).self.deny, 0, 'a deny there would mean nothing');
    // firefox used up its wifi budget: wifi denied (connects fail at once), and its sockets are
    // marked for the next uplink its rule allows (uplinks: [wifi, cellular]).
    assert.equal(e(firefox).self.deny & bit('wifi'), bit('wifi'));
    assert.notEqual(e(firefox).self.mark, entry(firefox).self.mark);
    const cellular = states.find((u) => u.spec.name === 'cellular');
    assert.ok(cellular);
    assert.equal(e(firefox).self.mark, softMarkForSlot(cellular.slot));
    assert.equal(e(chat).self.deny & bit('wifi'), entry(chat).self.deny & bit('wifi'), 'only firefox is blocked on wifi');
    assert.equal(e(other).self.deny & bit('wifi'), 0);
    // mms's uplink-wide budget is used up: every deciding treatment denies it, pendings and uids too.
    for (const c of [chat, firefox, other]) assert.equal(e(c).self.deny & bit('mms'), bit('mms'), c.rel);
    assert.equal(e(slice).pending.deny & bit('mms'), bit('mms'));
    assert.equal((b.uids.get(2000)?.deny ?? 0) & bit('mms'), bit('mms'));
    assert.equal(e(other).self.deny & ~bit('mms'), 0, 'nothing else denied');
    // Without budgets nothing changes.
    assert.deepEqual(desiredMaps({ ...world, cgroups: [slice, chat, firefox, other, system, nginx], budgeted: new Set(), blocked: new Map(), blockedSlots: [] }), d);
  });

  it('a rule that asks gives its treatment WM_T_ASK, and every pending a child could get under it; others do not', () => {
    const asking = (name: string): RuleSet => RuleSet.compile(config.rules.map((r): Rule => (r.id === name && r.action.kind !== 'ask'
      ? { ...r, action: { kind: 'ask', default: r.action, timeoutMs: 30_000 } } : r)), [], config);
    const rules = asking('chat');
    const a = desiredMaps({ ...world, rules, cgroups: [slice, chat, firefox, system, nginx] });
    const flags = (c: KnownCgroup, which: 'self' | 'pending'): number => a.cgroups.get(c.id)?.[which].flags ?? -1;
    assert.equal(flags(chat, 'self') & (WM_T_SET | WM_T_ASK), WM_T_SET | WM_T_ASK);
    assert.equal(flags(chat, 'self') >>> WM_T_DNS_SHIFT, slot('cellular'), 'the DNS slot stays');
    assert.equal(flags(chat, 'pending') & WM_T_ASK, WM_T_ASK, 'a child of the app is the app');
    assert.equal(flags(firefox, 'self') & WM_T_ASK, 0);
    assert.equal(flags(nginx, 'self') & WM_T_ASK, 0);
    // uid 1000's slice: a new scope there may turn out to be chat's; the system's slice too (chat names uid 1000, the system's pending is everyone's).
    assert.equal(flags(slice, 'pending') & WM_T_ASK, WM_T_ASK);
    assert.equal(flags(slice, 'self') & WM_T_ASK, 0);
    // Without an asking rule nothing asks.
    const none = desiredMaps({ ...world, cgroups: [slice, chat] });
    assert.ok([...none.cgroups.values()].every((e) => (e.self.flags & WM_T_ASK) === 0 && (e.pending.flags & WM_T_ASK) === 0));
    // A uid-only rule that asks: its wm_uids entry does.
    const guest = desiredMaps({ ...world, rules: asking('guest'), cgroups: [] });
    assert.equal((guest.uids.get(2000)?.flags ?? 0) & WM_T_ASK, WM_T_ASK);
  });

  it('plans only the difference', () => {
    const before = desiredMaps({ ...world, cgroups: [slice, chat, other] });
    const after = desiredMaps({ ...world, cgroups: [slice, chat, firefox] });
    const p = planMaps(after, before);
    assert.deepEqual(p.setCgroups.map(([id]) => id), [12n]);
    assert.deepEqual(p.delCgroups, [13n]);
    assert.equal(p.setIfslots.length + p.delIfslots.length + p.setDestinations.length + p.setUids.length, 0);
    assert.equal(p.main, undefined);
    // A pinned mark is not soft: sessions keep theirs (sanity of the encoding).
    assert.notEqual(markForSlot(slot('cellular')), softMarkForSlot(slot('cellular')));
  });
});

describe('AppService (fake kernel side)', () => {
  const seen = (c: KnownCgroup, kind: 'app' | 'flatpak' | 'service' = 'app'): SeenCgroup => ({
    rel: c.rel, id: c.id, uid: c.uid,
    unit: c.unit ? { ...c.unit, unitRel: c.rel, kind, name: c.unit.flatpakId ?? c.unit.appId ?? c.unit.unit } : null,
  });
  const make = () => {
    const maps = new FakeAppMaps();
    const events: EventBody[] = [];
    const saved: Record<string, number>[] = [];
    const svc = new AppService({
      maps, world: () => world, cgroupDir: '/nonexistent', mount: '/nonexistent', cgroupRoot: '/', sessionsDir: '/nonexistent/waymark', sessions: () => [], keys: new AppKeys({ '1000/org.example.chat': 7 }, (k) => saved.push(k)),
      publish: (e) => events.push(e), log: createLogger('error'), now: () => 1234n,
    });
    return { maps, events, saved, svc };
  };

  it('writes a new cgroup\'s entry before added() returns, and says the app appeared', () => {
    const { maps, events, svc } = make();
    svc.added(seen(slice));
    svc.added(seen(chat));
    assert.ok(maps.cgroups.has(11n));
    assert.equal(events.length, 1);
    const e = events[0];
    assert.ok(e?.type === 'app.appeared');
    assert.deepEqual([e.name, e.rule, e.uplink, e.uid, e.classifiedNs], ['org.example.chat', 'chat', 'cellular', 1000, '1234']);
  });

  it('keeps app keys: a known app keeps its key, a new one gets the next and is saved', () => {
    const { maps, saved, svc } = make();
    svc.added(seen(chat));
    svc.added(seen(firefox, 'flatpak'));
    const keys = maps.plans.flatMap((p) => p.setCgroups.map(([id, en]) => [id, en.self.app]));
    assert.deepEqual(keys, [[11n, 7], [12n, 8]]);
    assert.deepEqual(saved.at(-1), { '1000/org.example.chat': 7, '1000/org.mozilla.firefox': 8 });
  });

  it('lists only the caller\'s apps to an unprivileged caller, with rule, uplink per destination and sockets', () => {
    const { svc } = make();
    for (const c of [slice, chat, firefox, system, nginx]) svc.added(seen(c, c === firefox ? 'flatpak' : c === nginx ? 'service' : 'app'));
    const mine = svc.list({ uid: 1000, gid: 1000, pid: 1 });
    assert.deepEqual(mine.map((a) => a.name), ['org.example.chat', 'org.mozilla.firefox']);
    const c = mine[0];
    assert.ok(c);
    assert.equal(c.rule, 'chat');
    assert.equal(c.uplinks['internet'], 'cellular');
    assert.equal(c.uplinks['mms'], 'denied');
    // No process in it (the cgroup is not on disk here): none.
    assert.deepEqual([c.pids, c.sockets], [0, 0]);
    assert.deepEqual(svc.list({ uid: 2000, gid: 2000, pid: 1 }), []);
    assert.deepEqual(svc.list({ uid: 0, gid: 0, pid: 1 }).map((a) => a.name).sort(), ['nginx.service', 'org.example.chat', 'org.mozilla.firefox']);
  });

  it('removal deletes the entry and says the app left; refresh writes only changes', () => {
    const { maps, events, svc } = make();
    svc.added(seen(slice));
    svc.added(seen(chat));
    svc.refresh();
    const full = maps.plans.at(-1);
    assert.ok(full);
    svc.refresh();
    const again = maps.plans.at(-1);
    assert.equal(again?.setCgroups.length, 0);
    svc.removed(chat.rel);
    assert.equal(maps.cgroups.has(11n), false);
    assert.equal(events.at(-1)?.type, 'app.left');
  });
});

describe('seenOf: a cgroup the tree reported, as the app service keeps it', () => {
  it('names the unit\'s own directory for a nested cgroup, the user of a slice, Flatpak apps as such', () => {
    const nested = `${USER_APPS}/app-gnome-org.example.chat-42.scope/sandbox/inner`;
    const s = seenOf(nested, 5n, classifyCgroup(nested));
    assert.equal(s.unit?.unitRel, `${USER_APPS}/app-gnome-org.example.chat-42.scope`);
    assert.equal(s.unit?.name, 'org.example.chat');
    assert.equal(s.uid, 1000);
    assert.equal(seenOf(USER_APPS, 6n, classifyCgroup(USER_APPS)).uid, 1000);
    assert.equal(seenOf('system.slice', 7n, classifyCgroup('system.slice')).uid, null);
    const ff = `${USER_APPS}/app-flatpak-org.mozilla.firefox-7.scope`;
    assert.equal(seenOf(ff, 8n, classifyCgroup(ff)).unit?.kind, 'flatpak');
  });
});

describe('AppService: connect reports (the kernel\'s, resolved to the app)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'wm-connect-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));
  const cgroupDir = join(tmp, 'cgroup'); // the mount
  const procRoot = join(tmp, 'proc');
  const dir = (rel: string): bigint => {
    mkdirSync(join(cgroupDir, rel), { recursive: true });
    return statSync(join(cgroupDir, rel), { bigint: true }).ino;
  };
  const proc = (pid: number, path: string): void => {
    mkdirSync(join(procRoot, String(pid)), { recursive: true });
    writeFileSync(join(procRoot, String(pid), 'cgroup'), `0::${path}\n`);
  };
  const record = (cgroupId: bigint, pid: number): ConnectRecord => ({
    cgroupId, monotonicNs: 99n, app: 7, uid: 1000, pid, comm: 'chat', family: 4, address: '10.200.0.10', port: 443,
    proto: 'tcp', via: 'connect', denied: false, source: 'cgroup',
  });
  const make = (onConnect?: (e: AppConnect) => void, cgroupRoot = '/') => new AppService({
    maps: new FakeAppMaps(), world: () => world, cgroupDir: join(cgroupDir, cgroupRoot), mount: cgroupDir, cgroupRoot, sessionsDir: '/nonexistent/waymark', sessions: () => [],
    keys: new AppKeys({ '1000/org.example.chat': 7 }), publish: () => undefined, log: createLogger('error'), procRoot,
    ...(onConnect ? { onConnect } : {}),
  });
  const chatRel = `${USER_APPS}/app-gnome-org.example.chat-42.scope`;

  it('a known cgroup: the app as the service knows it, and the connect as reported', () => {
    const got: AppConnect[] = [];
    const svc = make((e) => got.push(e));
    svc.added(seenOf(chatRel, 11n, classifyCgroup(chatRel)));
    svc.connected(record(11n, 4242));
    assert.equal(got.length, 1);
    const e = got[0];
    assert.ok(e);
    assert.deepEqual({ ...e.cgroup, unit: e.cgroup.unit?.name }, { id: 11n, rel: chatRel, uid: 1000, unit: 'org.example.chat', appKey: 7, known: true });
    assert.deepEqual([e.address, e.port, e.proto, e.family, e.via, e.pid, e.uid, e.comm, e.monotonicNs, e.denied, e.source],
      ['10.200.0.10', 443, 'tcp', 4, 'connect', 4242, 1000, 'chat', 99n, false, 'cgroup']);
    assert.deepEqual(svc.connects, { delivered: 1, unresolved: 0 });
  });

  it('a cgroup the tree has not reported: found through /proc/PID/cgroup when it has the reported id', () => {
    const got: AppConnect[] = [];
    const svc = make((e) => got.push(e));
    const rel = `${USER_APPS}/app-gnome-org.example.new-5.scope`;
    const id = dir(rel);
    proc(77, `/${rel}`);
    svc.connected(record(id, 77));
    assert.deepEqual(got.map((e) => [e.cgroup.rel, e.cgroup.unit?.name, e.cgroup.uid, e.cgroup.appKey, e.cgroup.known]), [[rel, 'org.example.new', 1000, 8, false]]);
    // Below a root of its own: the path relative to it.
    const under = make((e) => got.push(e), '/lab');
    const id2 = dir('lab/system.slice/x.service');
    proc(78, '/lab/system.slice/x.service');
    under.connected(record(id2, 78));
    assert.deepEqual([got.at(-1)?.cgroup.rel, got.at(-1)?.cgroup.unit?.unit], ['system.slice/x.service', 'x.service']);
  });

  it('dropped and counted: the process gone, moved to another cgroup, outside the root; a removed cgroup is no longer known', () => {
    const got: AppConnect[] = [];
    const svc = make((e) => got.push(e), '/lab');
    const id = dir('lab/a.service');
    svc.connected(record(id, 90)); // no /proc/90
    proc(91, '/lab/b.service');
    dir('lab/b.service');
    svc.connected(record(id, 91)); // b's inode is not a's
    proc(92, '/elsewhere/a.service');
    svc.connected(record(id, 92));
    svc.added(seenOf('a.service', id, classifyCgroup('a.service')));
    svc.removed('a.service');
    svc.connected(record(id, 90));
    assert.deepEqual(got, []);
    assert.deepEqual(svc.connects, { delivered: 0, unresolved: 4 });
  });

  it('a hook that throws is logged, not thrown; without a hook reports are ignored', () => {
    const svc = make(() => {
      throw new Error('prompt broke');
    });
    svc.added(seenOf(chatRel, 11n, classifyCgroup(chatRel)));
    assert.doesNotThrow(() => svc.connected(record(11n, 1)));
    const quiet = make();
    quiet.added(seenOf(chatRel, 11n, classifyCgroup(chatRel)));
    quiet.connected(record(11n, 1));
    assert.deepEqual(quiet.connects, { delivered: 0, unresolved: 0 });
  });
});
