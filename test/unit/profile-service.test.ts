import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import type { PeerCred } from '../../src/native/index.js';
import type { Profile, SimInfo } from '../../src/profile/profile.js';
import { ProfileStore } from '../../src/profile/store.js';
import { ProfileService, type PersistedProfile } from '../../src/daemon/profile-service.js';
import type { ProfileActivated, ProfileChanged } from '../../src/daemon/events.js';
import { RequestError } from '../../src/daemon/server.js';
import { RuleService } from '../../src/daemon/rule-service.js';
import { applyProfile } from '../../src/profile/profile.js';
import type { World } from '../../src/daemon/world.js';

const ROOT: PeerCred = { pid: 1, uid: 0, gid: 0 };
const USER: PeerCred = { pid: 2, uid: 1000, gid: 1000 };
const HOME_SIM = '8949000000000000001';
const OTHER_SIM = '8949000000000000002';

const base = parseConfig(`version: 1
uplinks:
  - { name: wifi, match: wlan0, kind: wifi }
  - { name: cell, match: wwan0, kind: cellular }
profiles:
  - name: home
    sims: ["${HOME_SIM}"]
  - name: abroad
    operators: ["20801"]
default_profile: abroad
`, 'waymark.yaml');

async function setup(saved?: PersistedProfile, sim?: SimInfo) {
  const dir = mkdtempSync(join(tmpdir(), 'wm-profile-svc-'));
  const store = new ProfileStore(dir);
  await store.load(base);
  const applied: (string | null)[] = [];
  const events: (ProfileActivated | ProfileChanged)[] = [];
  const persisted: PersistedProfile[] = [];
  const state: { sim: SimInfo | undefined; base: typeof base } = { sim, base };
  const svc = new ProfileService({
    store, base: () => state.base, apply: (p: Profile | null) => {
      applied.push(p?.name ?? null);
      return Promise.resolve();
    },
    currentSim: () => state.sim, publish: (e) => events.push(e), log: { info: () => undefined, warn: () => undefined },
    saved, persist: (s) => {
      persisted.push(s);
      return Promise.resolve();
    },
    mayChangeState: (c) => c.uid === 0,
  });
  return { svc, store, applied, events, persisted, state, done: () => rmSync(dir, { recursive: true, force: true }) };
}

const code = (c: string) => (e: unknown): boolean => e instanceof RequestError && e.wire.code === c;

describe('ProfileService', () => {
  it('chooses on a SIM change; no SIM keeps the profile; use pins until the next SIM change', async () => {
    const t = await setup(undefined, { iccid: HOME_SIM });
    await t.svc.start();
    assert.deepEqual(t.svc.activeView, { name: 'home', by: 'sim', sim: HOME_SIM });
    await t.svc.simChanged(undefined);
    assert.equal(t.svc.activeView.name, 'home', 'a SIM taken out changes nothing');
    await t.svc.use({ name: 'abroad' }, ROOT);
    assert.deepEqual(t.svc.activeView, { name: 'abroad', by: 'user' });
    await t.svc.simChanged({ iccid: HOME_SIM });
    assert.equal(t.svc.activeView.name, 'abroad', 'the same SIM again is no change: the pin holds');
    await t.svc.simChanged({ iccid: OTHER_SIM, operator: '26201' });
    assert.deepEqual(t.svc.activeView, { name: 'abroad', by: 'default' }, 'another SIM: chosen again (default_profile)');
    await t.svc.simChanged({ iccid: HOME_SIM });
    assert.deepEqual(t.applied, ['home', 'abroad', 'abroad', 'home']);
    assert.deepEqual(t.events.map((e) => e.type === 'profile.activated' ? `${e.name}/${e.by}` : e.type), ['home/sim', 'abroad/user', 'abroad/default', 'home/sim']);
    assert.deepEqual(t.persisted.at(-1), { name: 'home', by: 'sim', sim: HOME_SIM, seenSim: HOME_SIM });
    t.done();
  });

  it('a profile saved for the SIM that is in takes effect at once, unless the user pinned another', async () => {
    const t = await setup(undefined, { iccid: OTHER_SIM });
    await t.svc.start();
    assert.deepEqual(t.svc.activeView, { name: 'abroad', by: 'default' });
    await t.svc.save({ name: 'travel', sims: [OTHER_SIM], fromCurrentSim: false }, ROOT);
    assert.deepEqual(t.svc.activeView, { name: 'travel', by: 'sim', sim: OTHER_SIM });
    await t.svc.use({ name: 'home' }, ROOT);
    await t.svc.save({ name: 'travel', sims: [OTHER_SIM], description: 'again', fromCurrentSim: false }, ROOT);
    assert.deepEqual(t.svc.activeView, { name: 'home', by: 'user' }, 'the pin holds');
    t.done();
  });

  it('restores the kept choice at start while the SIM is the one last seen', async () => {
    const kept = await setup({ name: 'abroad', by: 'user', seenSim: HOME_SIM }, { iccid: HOME_SIM });
    await kept.svc.start();
    assert.deepEqual(kept.svc.activeView, { name: 'abroad', by: 'user' });
    kept.done();
    const swapped = await setup({ name: 'abroad', by: 'user', seenSim: OTHER_SIM }, { iccid: HOME_SIM });
    await swapped.svc.start();
    assert.deepEqual(swapped.svc.activeView, { name: 'home', by: 'sim', sim: HOME_SIM });
    swapped.done();
  });

  it('a user without root or the group lists, and may change nothing', async () => {
    const t = await setup(undefined, { iccid: HOME_SIM });
    await t.svc.start();
    const h = t.svc.handlers();
    const ctx = undefined as never;
    assert.deepEqual((await h['profile.list']({}, USER, ctx)).profiles.map((p) => [p.name, p.source, p.active, p.valid]),
      [['home', 'config', true, true], ['abroad', 'config', false, true]]);
    await assert.rejects(h['profile.show']({ name: 'home' }, USER, ctx), code('EPERM'));
    await assert.rejects(h['profile.export']({ name: 'home' }, USER, ctx), code('EPERM'));
    await assert.rejects(h['profile.use']({ auto: true }, USER, ctx), code('EPERM'));
    await assert.rejects(h['profile.save']({ name: 'x', fromCurrentSim: false }, USER, ctx), code('EPERM'));
    await assert.rejects(h['profile.import']({ text: 'version: 1\n', replace: false }, USER, ctx), code('EPERM'));
    await assert.rejects(h['profile.rm']({ name: 'x' }, USER, ctx), code('EPERM'));
    assert.equal(t.svc.activeView.name, 'home');
    t.done();
  });

  it('save, import (replace), rm: config names refused, invalid imports change nothing, the active one applied', async () => {
    const t = await setup(undefined, { iccid: OTHER_SIM });
    await t.svc.start();
    assert.equal(t.svc.activeView.name, 'abroad');
    await assert.rejects(t.svc.save({ name: 'home', fromCurrentSim: false }, ROOT), (e) => code('EPERM')(e) && /defined in waymark\.yaml/.test(String(e)));
    const saved = await t.svc.save({ name: 'trip', roaming: 'deny', fromCurrentSim: true }, ROOT);
    assert.deepEqual([saved.profile.name, saved.profile.source, saved.profile.sims, saved.profile.roaming], ['trip', 'saved', [OTHER_SIM], 'deny']);
    const text = t.svc.export('trip', ROOT).text;
    assert.equal(text, 'version: 1\nprofiles:\n  - name: trip\n    sims:\n      - "8949000000000000002"\n    roaming: deny\n');
    await t.svc.use({ name: 'trip' }, ROOT);
    const before = t.applied.length;
    // Invalid: nothing changes (not saved, not applied).
    const bad = 'version: 1\nprofiles:\n  - name: trip\n    uplinks:\n      - name: ghost\n';
    await assert.rejects(t.svc.import({ text: bad, file: 'trip.yaml', replace: true }, ROOT), (e) => e instanceof RequestError && e.wire.issues?.[0]?.line === 5);
    assert.equal(t.svc.export('trip', ROOT).text, text);
    assert.equal(t.applied.length, before);
    const next = text.replace('roaming: deny', 'roaming: allow');
    await assert.rejects(t.svc.import({ text: next, replace: false }, ROOT), /give replace/);
    await assert.rejects(t.svc.import({ text: next.replace('trip', 'home'), replace: true }, ROOT), code('EPERM'));
    const imported = await t.svc.import({ text: next, replace: true }, ROOT);
    assert.equal(imported.profile.roaming, 'allow');
    assert.deepEqual(t.applied.slice(before), ['trip'], 'the active profile replaced: applied again');
    await assert.rejects(t.svc.remove('abroad', ROOT), code('EPERM'));
    const gone = await t.svc.remove('trip', ROOT);
    assert.deepEqual(gone.active, { name: 'abroad', by: 'default' }, 'the active one removed: chosen by the SIM');
    await assert.rejects(t.svc.remove('trip', ROOT), code('ENOENT'));
    assert.deepEqual(t.events.filter((e) => e.type === 'profile.changed').map((e) => e.type === 'profile.changed' && e.change), ['saved', 'imported', 'removed']);
    t.done();
  });

  it('baseChanged: an active profile that no longer fits gives way to none; one that fits is applied again', async () => {
    const t = await setup(undefined, { iccid: OTHER_SIM });
    await t.svc.start();
    await t.svc.import({ text: 'version: 1\nprofiles:\n  - name: trip\n    uplinks:\n      - name: cell\n        preference: 3\n', replace: false }, ROOT);
    await t.svc.use({ name: 'trip' }, ROOT);
    await t.svc.baseChanged();
    assert.deepEqual([t.svc.activeView.name, t.applied.at(-1)], ['trip', 'trip']);
    t.state.base = parseConfig('version: 1\nuplinks:\n  - { name: wifi, match: wlan0, kind: wifi }\n', 'w.yaml');
    await t.svc.baseChanged();
    assert.deepEqual([t.svc.activeView, t.applied.at(-1)], [{ name: null, by: 'none' }, null]);
    const listed = t.svc.list().profiles.find((p) => p.name === 'trip');
    assert.equal(listed?.valid, false);
    assert.match(listed?.problem ?? '', /no uplink named "cell"/);
    t.done();
  });

  it('rules rm refuses a profile\'s rule, naming the profile', async () => {
    const c = parseConfig(`version: 1
uplinks:
  - { name: wifi, match: wlan0, kind: wifi }
rules:
  - { name: r, use: [wifi] }
profiles:
  - name: home
    rules:
      - { name: r, only: [wifi] }
`, 'waymark.yaml');
    const config = applyProfile(c, c.profiles?.[0] ?? null, new Set());
    const rules = new RuleService({ world: { config } as unknown as World, store: { add: () => Promise.reject(new Error('no')), remove: () => Promise.resolve(true), all: () => [] }, apps: () => [] });
    await assert.rejects(rules.remove('r@home', ROOT), (e) => code('EINVAL')(e) && /comes from profile home/.test(String(e)));
    await assert.rejects(rules.remove('r', ROOT), (e) => code('EINVAL')(e) && /configuration file/.test(String(e)));
  });
});
