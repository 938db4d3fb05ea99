import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DENY_SLOT, markForSlot, softMarkForSlot } from '../../src/constants.js';
import { backstopFor } from '../../src/session/backstop.js';
import { mergeWish, SessionRegistry, type Session } from '../../src/session/session.js';
import { allowsUplink, type AppFacts } from '../../src/policy/app.js';
import { RuleSet } from '../../src/policy/rules.js';
import { StateStore } from '../../src/daemon/state.js';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exampleConfig, labKernel, labStates, rulesOf } from '../support/fixture.js';

const config = exampleConfig();
const { states, slots } = labStates(config);
const session = (over: Partial<Session>): Session => ({
  id: 'exec-1', cgroup: 'waymark/exec-1', uid: 1000, needs: [], deny: [], apps: [{ uid: 1000, exe: null, unit: null, flatpakId: null }], command: 'x', startedAt: '', ...over,
});

describe('sessions', () => {
  it('find the session of a process by cgroup, also in a child cgroup', () => {
    const r = new SessionRegistry([session({})]);
    assert.equal(r.ofCgroup('/waymark/exec-1')?.id, 'exec-1');
    assert.equal(r.ofCgroup('/waymark/exec-1/inner')?.id, 'exec-1');
    assert.equal(r.ofCgroup('/waymark/exec-10'), undefined);
    assert.equal(r.ofCgroup(null), undefined);
  });

  it('merge the session wish with the program\'s own, session first', () => {
    assert.deepEqual(mergeWish({ uplink: 'mms', needs: ['cheapest'], deny: [] }, { uplink: 'wifi', needs: ['unmetered'], deny: ['cellular'] }),
      { uplink: 'mms', needs: ['cheapest', 'unmetered'], deny: ['cellular'] });
  });

  it('mark new sockets for the requested uplink and fence off every other device', () => {
    const b = backstopFor(session({ uplink: 'wwan1' }), states, config.destinations, rulesOf(config));
    assert.equal(b.mark, markForSlot(slots.get('mms') ?? 0), 'a plain mark: the requested uplink for everything');
    assert.deepEqual([...b.deniedIfnames].sort(), ['tun0', 'wlan0', 'wwan0']);
  });

  it('mark by needs for the Internet, deny only what the needs exclude', () => {
    const b = backstopFor(session({ needs: ['unmetered'] }), states, config.destinations, rulesOf(config));
    assert.equal(b.uplink?.spec.name, 'wifi');
    assert.equal(b.mark, softMarkForSlot(slots.get('wifi') ?? 0), 'soft: destinations reachable over other uplinks still go by them');
    assert.deepEqual([...b.deniedIfnames].sort(), ['wwan0', 'wwan1']);
    const d = backstopFor(session({ deny: ['wifi'] }), states, config.destinations, rulesOf(config));
    assert.equal(d.uplink?.spec.name, 'cellular');
    assert.deepEqual(d.deniedIfnames, ['wlan0']);
  });

  it('deny by mark while the requested uplink is down', () => {
    const { states: down } = labStates(config, labKernel({ wwan1: 0 }));
    assert.equal(backstopFor(session({ uplink: 'mms' }), down, config.destinations, rulesOf(config)).mark, markForSlot(DENY_SLOT));
  });
});

const facts = (over: Partial<AppFacts>): AppFacts => ({ uid: 4242, exe: '/usr/bin/node', unit: null, flatpakId: null, ...over });
const ruled = exampleConfig(`apps:
  - name: chat
    match: { exe: /usr/bin/chat-client }
    uplinks: [cellular, wifi]
    needs: [long-lived]
  - name: no-cellular
    match: { uid: 4242 }
    deny: [cellular]
  - name: wifi-only
    match: { unit: kiosk.service }
    uplinks: [wifi]
`);
const ruledStates = labStates(ruled).states;

describe('what the policy allows for app facts', () => {
  it('one process: its first matching rule, as before', () => {
    assert.equal(rulesOf(ruled).kernelPolicy(facts({}))?.name, 'no-cellular');
    assert.equal(rulesOf(ruled).kernelPolicy(facts({ exe: '/usr/bin/chat-client' }))?.name, 'chat', 'first match wins for one set of facts');
    assert.equal(rulesOf(ruled).kernelPolicy(facts({ uid: 1 })), undefined);
  });

  it('more facts only narrow: every matching rule applies, never the more permissive one alone', () => {
    // The program (chat) would allow cellular; its starter (uid 4242) does not: both apply.
    const both = rulesOf(ruled).kernelPolicy(facts({}), [facts({ exe: '/usr/bin/chat-client' })]);
    assert.equal(both?.name, 'no-cellular+chat');
    assert.equal(allowsUplink(both, 'cellular'), false);
    assert.equal(allowsUplink(both, 'wifi'), true);
    assert.equal(allowsUplink(both, 'mms'), false, 'chat lists its uplinks: others are not allowed');
    assert.deepEqual(both?.needs, ['long-lived']);
    // Allowed lists intersect, in the order of the first.
    const kiosk = rulesOf(ruled).kernelPolicy(facts({ exe: '/usr/bin/chat-client' }), [facts({ uid: 7, unit: 'kiosk.service' })]);
    assert.deepEqual(['wifi', 'cellular', 'mms', 'office-vpn'].filter((u) => allowsUplink(kiosk, u)), ['wifi']);
    // The same facts twice, or facts no rule matches, change nothing.
    assert.equal(rulesOf(ruled).kernelPolicy(facts({}), [facts({}), facts({ uid: 1 })])?.name, 'no-cellular');
  });
});

describe('the session backstop never grants what the policy denies', () => {
  const cellIf = 'wwan0';
  it('a pinned uplink the policy denies marks for the deny slot and fences off every device', () => {
    const s = session({ uid: 4242, uplink: 'cellular', apps: [facts({})] });
    const b = backstopFor(s, ruledStates, ruled.destinations, rulesOf(ruled));
    assert.equal(b.mark, markForSlot(DENY_SLOT));
    assert.equal(b.uplink, null);
    assert.deepEqual([...b.deniedIfnames].sort(), ['tun0', 'wlan0', 'wwan0', 'wwan1']);
    // The same session without the rule (before a reload added it) goes by cellular.
    const free = backstopFor(s, ruledStates, ruled.destinations, RuleSet.EMPTY);
    assert.equal(free.uplink?.spec.name, 'cellular');
  });

  it('an unpinned session is fenced off every uplink its rules deny or do not list', () => {
    const b = backstopFor(session({ uid: 4242, apps: [facts({})] }), ruledStates, ruled.destinations, rulesOf(ruled));
    assert.ok(b.deniedIfnames.includes(cellIf));
    assert.equal(b.uplink?.spec.name, 'wifi');
    const chat = backstopFor(session({ uid: 4242, apps: [facts({ uid: 1 }), facts({ uid: 1, exe: '/usr/bin/chat-client' })] }), ruledStates, ruled.destinations, rulesOf(ruled));
    assert.deepEqual([...chat.deniedIfnames].sort(), ['tun0', 'wwan1'], 'chat lists cellular and wifi only');
    assert.equal(chat.uplink?.spec.name, 'cellular', 'its preference (and long-lived need) picks cellular');
  });
});

describe('the state file', () => {
  const withDir = async (f: (dir: string, file: string) => Promise<void>): Promise<void> => {
    const dir = mkdtempSync(join(tmpdir(), 'waymark-state-'));
    try {
      await f(dir, join(dir, 'state.json'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const OLD = { version: 1, slots: { wifi: 1 }, sessions: [{ id: 'exec-1', cgroup: 'waymark/exec-1', uid: 4242, needs: [], deny: ['wifi'], command: 'x', startedAt: '' }] };

  it('loads the sessions of older files, without app facts: the starter\'s uid is what is known, its rules apply', () => withDir(async (dir, file) => {
    writeFileSync(file, JSON.stringify(OLD));
    const loaded = await new StateStore(dir).load((why) => assert.fail(why));
    assert.deepEqual(loaded.sessions[0]?.apps, [{ uid: 4242, exe: null, unit: null, flatpakId: null }]);
  }));

  it('is 0600 whatever the mode of the file it replaces or of a temp file left by a crash', () => withDir(async (dir, file) => {
    writeFileSync(file, JSON.stringify(OLD), { mode: 0o644 });
    writeFileSync(`${file}.${process.pid}.tmp`, 'stale', { mode: 0o666 }); // must not be reused with its mode
    const store = new StateStore(dir);
    await store.load((why) => assert.fail(why));
    await store.update({ slots: { wifi: 2 } });
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal((JSON.parse(readFileSync(file, 'utf8')) as { slots: Record<string, number> }).slots['wifi'], 2);
  }));
});
