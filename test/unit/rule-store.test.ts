/** The stored rules (src/daemon/rule-store.ts): added, removed, persisted, expired, replaced, bounded. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RuleStore, MAX_STORED_PER_USER, type PersistedRule } from '../../src/daemon/rule-store.js';
import type { Rule } from '../../src/policy/rules.js';
import { recordingLog } from '../support/fakes.js';

function harness(now = { t: 1_000_000 }) {
  const seen: (readonly Rule[])[] = [];
  const saved: { rules: PersistedRule[]; next: number }[] = [];
  const store = new RuleStore(
    { setStoredRules: (r) => { seen.push(r); return Promise.resolve(); } },
    (rules, next) => { saved.push({ rules, next }); return Promise.resolve(); },
    recordingLog(), { now: () => now.t, procRoot: '/nonexistent-proc' },
  );
  return { store, seen, saved, now };
}

describe('stored rules', () => {
  it('adds with fresh ids, hands them to the world, persists them, removes them', async () => {
    const h = harness();
    const a = await h.store.add({ source: 'cli', match: { uid: 1000, destination: 'internet' }, action: { kind: 'use', uplinks: ['wifi'] }, owner: 1000 });
    const b = await h.store.add({ source: 'answer', match: { uid: 1000, exe: '/usr/bin/x' }, action: { kind: 'deny' }, owner: 1000 });
    assert.deepEqual([a.id, b.id], ['cli-1', 'answer-2']);
    assert.deepEqual(h.seen.at(-1)?.map((r) => r.id), ['cli-1', 'answer-2']);
    assert.deepEqual(h.saved.at(-1)?.rules.map((r) => [r.id, r.action]), [['cli-1', { use: ['wifi'] }], ['answer-2', 'deny']]);
    assert.equal(h.saved.at(-1)?.next, 3);
    assert.equal(await h.store.remove('cli-1'), true);
    assert.equal(await h.store.remove('cli-1'), false);
    assert.deepEqual(h.seen.at(-1)?.map((r) => r.id), ['answer-2']);
    h.store.close();
  });

  it('reloads what it saved (ids keep counting), and drops what no longer parses', async () => {
    const h = harness();
    await h.store.add({ source: 'answer', match: { uid: 7, flatpak: 'org.a' }, action: { kind: 'ask', default: { kind: 'deny' }, timeoutMs: 5000 }, owner: 7, expiresAt: 2_000_000 });
    const last = h.saved.at(-1);
    assert.ok(last);
    const again = harness();
    await again.store.load([...last.rules, { id: 'bogus' }], last.next);
    assert.deepEqual(again.store.all().map((r) => [r.id, r.action, r.expiresAt]), [['answer-1', { kind: 'ask', default: { kind: 'deny' }, timeoutMs: 5000 }, 2_000_000]]);
    const next = await again.store.add({ source: 'cli', match: {}, action: { kind: 'pass' }, owner: 0 });
    assert.equal(next.id, 'cli-2');
    again.store.close();
    h.store.close();
  });

  it('a new answer for the same app and destination replaces the last; expired and exited ones go', async () => {
    const h = harness();
    const m = { uid: 1000, app: 'org.x', destination: 'internet' };
    await h.store.add({ source: 'answer', match: m, action: { kind: 'deny' }, owner: 1000 });
    await h.store.add({ source: 'answer', match: m, action: { kind: 'only', uplinks: ['wifi'] }, owner: 1000 });
    assert.deepEqual(h.store.all().map((r) => r.action), [{ kind: 'only', uplinks: ['wifi'] }]);
    await h.store.add({ source: 'answer', match: { uid: 1000, app: 'org.y' }, action: { kind: 'deny' }, owner: 1000, expiresAt: h.now.t + 60_000 });
    await h.store.add({ source: 'answer', match: { uid: 1000, app: 'org.z' }, action: { kind: 'deny' }, owner: 1000, until: { pid: 123, startTime: '1', cgroup: null } });
    assert.equal(h.saved.at(-1)?.rules.length, 2, 'an answer until the app exits is not written to disk');
    h.now.t += 60_000;
    await h.store.prune();
    assert.deepEqual(h.store.all().map((r) => r.match.app), ['org.x'], 'the expired one and the one whose process is gone went');
    h.store.close();
  });

  it('bounds each user: the oldest answer goes first; a CLI rule beyond the bound is refused', async () => {
    const h = harness();
    for (let i = 0; i < MAX_STORED_PER_USER; i++) await h.store.add({ source: 'answer', match: { uid: 5, port: (i % 65535) + 1, exe: `/x${i}` }, action: { kind: 'deny' }, owner: 5 });
    await h.store.add({ source: 'answer', match: { uid: 5, exe: '/last' }, action: { kind: 'deny' }, owner: 5 });
    assert.equal(h.store.all().length, MAX_STORED_PER_USER);
    assert.equal(h.store.all()[0]?.match.exe, '/x1', 'the oldest went');
    await assert.rejects(h.store.add({ source: 'cli', match: { uid: 5 }, action: { kind: 'deny' }, owner: 5 }), /too many stored rules/);
    await h.store.add({ source: 'cli', match: { uid: 6 }, action: { kind: 'deny' }, owner: 6 });
    h.store.close();
  });
});
