/** Rules per app × destination (src/policy/rules.ts), their config section and the stored rules. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/load.js';
import { decide, explainCandidates, NO_WISH } from '../../src/decision/decide.js';
import { allowsUplink, type AppFacts } from '../../src/policy/app.js';
import { ordered, RuleSet, specificity, type Rule, type RuleQuery } from '../../src/policy/rules.js';
import { exampleConfig, exampleText, labKernel, labStates, rulesOf } from '../support/fixture.js';

const facts = (over: Partial<AppFacts> = {}): AppFacts => ({ uid: 1000, exe: '/usr/bin/chat', unit: null, app: null, flatpakId: null, ...over });
const q = (over: Partial<RuleQuery> = {}): RuleQuery => ({ facts: facts(), destination: 'internet', needs: [], ...over });
const rule = (id: string, match: Rule['match'], action: Rule['action'] = { kind: 'use', uplinks: ['wifi'] }, source: Rule['source'] = 'config'): Rule =>
  ({ id, source, match, action, never: [], needs: [] });

const config = exampleConfig(`rules:
  - name: chat
    match: { exe: /usr/bin/chat }
    use: [cellular]
  - name: browser
    match: { exe: /usr/bin/browser, destination: internet }
    use: [wifi, cellular]
  - name: strict
    match: { exe: /usr/bin/strict }
    only: [wifi]
  - name: mms-only
    match: { destination: mms }
    only: [mms]
  - name: no-mms-elsewhere
    match: {}
    never: [mms]
  - name: asker
    match: { exe: /usr/bin/asker }
    ask: { default: deny, timeout: 5 }
`);
const { states } = labStates(config);
const set = rulesOf(config);

function decideFor(exe: string, destination: string, s = states): string {
  const { policy } = set.decideFor(facts({ exe }), [], { destination, needs: [] });
  const d = decide({ uplinks: s, destinations: config.destinations, wish: NO_WISH, family: 4, addr: new Uint8Array(4), learnedDestination: destination, ...(policy ? { app: policy } : {}) });
  return d.action === 'steer' ? d.uplink.spec.name : d.action === 'deny' ? `deny:${d.err}` : 'pass';
}

describe('rules: which one decides', () => {
  it('most specific first: an exact executable beats a glob, a destination adds, a uid is least', () => {
    assert.ok(specificity({ exe: '/usr/bin/x' }) > specificity({ exe: '/usr/bin/*' }));
    assert.ok(specificity({ exe: '/usr/bin/*' }) > specificity({ uid: 1 }));
    assert.ok(specificity({ exe: '/usr/bin/x', destination: 'mms' }) > specificity({ exe: '/usr/bin/x' }));
    assert.ok(specificity({ uid: 1 }) > specificity({ destination: 'mms', port: 443, proto: 'tcp' }), 'the app weighs more than where it goes');
    assert.ok(specificity({ destination: 'mms', port: 443 }) > specificity({ destination: 'mms', proto: 'tcp' }));
  });

  it('equally specific: stored rules (newest first) before the config\'s (in file order)', () => {
    const a = rule('a', { uid: 1 });
    const b = rule('b', { uid: 1 });
    const c1 = rule('cli-1', { uid: 1 }, undefined, 'cli');
    const c2 = rule('answer-2', { uid: 1 }, undefined, 'answer');
    assert.deepEqual(ordered([a, b], [c1, c2]).map((r) => r.id), ['answer-2', 'cli-1', 'a', 'b']);
  });

  it('each field must match; a rule with none matches everything', () => {
    const s = RuleSet.compile([rule('all', {}), rule('tcp443', { port: 443, proto: 'tcp' }), rule('needs', { needs: ['cheapest'] })], [], config);
    assert.equal(s.evaluate(q())?.id, 'all');
    assert.equal(s.evaluate(q({ port: 443, proto: 'tcp' }))?.id, 'tcp443');
    assert.equal(s.evaluate(q({ port: 443, proto: 'udp' }))?.id, 'all');
    assert.equal(s.evaluate(q({ needs: ['cheapest', 'no-roaming'] }))?.id, 'needs');
  });

  it('expired rules never match', () => {
    const s = RuleSet.compile([], [{ ...rule('answer-1', { uid: 1000 }, undefined, 'answer'), expiresAt: 1000 }], config);
    assert.equal(s.evaluate(q(), 999)?.id, 'answer-1');
    assert.equal(s.evaluate(q(), 1000), undefined);
  });

  it('the compiled lookup finds exactly what a scan of every rule in order finds (2,000 random rules, 2,000 queries)', () => {
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const pick = <T>(xs: readonly T[]): T => xs[rnd(xs.length)] as T;
    const exes = ['/usr/bin/a', '/usr/bin/b', '/usr/bin/c', '/opt/*', '/usr/bin/?'];
    const rules: Rule[] = [];
    for (let i = 0; i < 2000; i++) {
      const m: Record<string, unknown> = {};
      if (rnd(2)) m['exe'] = pick(exes);
      if (rnd(3) === 0) m['uid'] = pick([0, 1000, 1001]);
      if (rnd(3) === 0) m['app'] = pick(['org.a', 'org.*', 'org.b']);
      if (rnd(2)) m['destination'] = pick(['internet', 'mms', 'office']);
      if (rnd(4) === 0) m['port'] = pick([53, 443]);
      if (rnd(5) === 0) m['unit'] = pick(['x.service', 'app-*.scope']);
      rules.push(rule(`r${i}`, m));
    }
    const s = RuleSet.compile(rules, [], config);
    for (let i = 0; i < 2000; i++) {
      const query = q({
        facts: facts({ exe: pick(['/usr/bin/a', '/usr/bin/b', '/opt/x', '/usr/bin/zz']), uid: pick([0, 1000, 1001]), app: pick([null, 'org.a', 'org.b']), unit: pick([null, 'x.service', 'app-1.scope']) }),
        destination: pick(['internet', 'mms', 'office']), port: pick([53, 443, 80]), proto: 'tcp',
      });
      const scanned = s.explain(query).find((c) => c.skipped === undefined)?.rule;
      assert.equal(s.evaluate(query)?.id, scanned?.id, JSON.stringify(query));
    }
  });
});

describe('rules: what each action does (decide() ranks what the rule leaves)', () => {
  it('use: the first listed uplink while it is up, then the next, then any other that reaches', () => {
    assert.equal(decideFor('/usr/bin/chat', 'internet'), 'cellular', 'stays on cellular while Wi-Fi is up');
    assert.equal(decideFor('/usr/bin/browser', 'internet'), 'wifi');
    const wifiDown = labStates(config, labKernel({ wlan0: 0 })).states;
    assert.equal(decideFor('/usr/bin/browser', 'internet', wifiDown), 'cellular', 'moves when Wi-Fi is down');
    const cellDown = labStates(config, labKernel({ wwan0: 0 })).states;
    assert.equal(decideFor('/usr/bin/chat', 'internet', cellDown), 'wifi', 'use falls back to an unlisted uplink that reaches');
  });

  it('only: fails rather than moving', () => {
    assert.equal(decideFor('/usr/bin/strict', 'internet'), 'wifi');
    const wifiDown = labStates(config, labKernel({ wlan0: 0 })).states;
    assert.equal(decideFor('/usr/bin/strict', 'internet', wifiDown), 'deny:ENETUNREACH');
  });

  it('a destination\'s rule for every app, never for one uid, and ask\'s default until answered', () => {
    assert.equal(decideFor('/usr/bin/other', 'mms'), 'mms', 'mms-only decides for the MMSC');
    assert.equal(set.evaluate(q({ facts: facts({ exe: '/usr/bin/other' }), destination: 'mms' }))?.id, 'mms-only');
    const asker = set.evaluate(q({ facts: facts({ exe: '/usr/bin/asker' }) }));
    assert.equal(asker?.action.kind, 'ask');
    assert.equal(decideFor('/usr/bin/asker', 'internet'), 'deny:EACCES', 'its default (deny) until answered');
  });

  it('explains every uplink: taken with its rank, or why not', () => {
    const { policy } = set.decideFor(facts({ exe: '/usr/bin/strict' }), [], { destination: 'internet', needs: [] });
    const c = explainCandidates({ uplinks: states, destinations: config.destinations, wish: NO_WISH, family: 4, addr: new Uint8Array(4), learnedDestination: 'internet', ...(policy ? { app: policy } : {}) });
    assert.deepEqual(c.map((x) => [x.uplink, x.rank ?? x.skipped]), [
      ['wifi', 1], ['cellular', 'rule strict allows only wifi'], ['mms', 'does not reach internet'], ['office-vpn', 'does not reach internet'],
    ]);
  });
});

describe('a user\'s own rules only narrow', () => {
  it('a more specific rule a user added cannot lift what the administrator\'s rules deny them; the administrator\'s can', () => {
    const admin = exampleConfig(`rules:
  - name: no-cellular-for-1000
    match: { uid: 1000 }
    never: [cellular]
`);
    const mine: Rule = { ...rule('cli-1', { uid: 1000, exe: '/usr/bin/x' }, { kind: 'use', uplinks: ['cellular'] }, 'cli'), bounded: true };
    const s = RuleSet.compile(admin.rules, [mine], admin);
    const { rule: decided, policy } = s.decideFor(facts({ exe: '/usr/bin/x' }), [], { destination: 'internet', needs: [] });
    assert.equal(decided?.id, 'cli-1', 'the user\'s rule decides (most specific)');
    assert.equal(allowsUplink(policy, 'cellular'), false, 'but cellular stays denied');
    assert.equal(allowsUplink(s.forKernel(facts({ exe: '/usr/bin/x' })), 'cellular'), false, 'in the kernel too');
    const privileged = RuleSet.compile(admin.rules, [{ ...mine, bounded: false }], admin);
    assert.equal(allowsUplink(privileged.decideFor(facts({ exe: '/usr/bin/x' }), [], { destination: 'internet', needs: [] }).policy, 'cellular'), true, 'root\'s rule may');
  });
});

describe('rules in the kernel: one policy per app, for any destination', () => {
  it('denies an uplink only where no destination\'s rule lets the app use it; the mark follows the Internet rule', () => {
    const chat = set.forKernel(facts({ exe: '/usr/bin/chat' }));
    assert.deepEqual(chat?.prefer, ['cellular']);
    assert.equal(allowsUplink(chat, 'mms'), true, 'chat\'s own rule names no destination but use allows the MMS APN for the MMSC');
    const other = set.forKernel(facts({ exe: '/usr/bin/other' }));
    // Never mms, except that the MMSC's own rule (more specific: a destination) allows it there.
    assert.equal(allowsUplink(other, 'mms'), true);
    const strict = set.forKernel(facts({ exe: '/usr/bin/strict' }));
    assert.equal(allowsUplink(strict, 'cellular'), false, 'only wifi, everywhere');
    assert.equal(allowsUplink(strict, 'wifi'), true);
    assert.equal(set.forKernel(facts({ exe: '/usr/bin/asker' }))?.ask, true);
    const none = set.forKernel(facts({ uid: 5, exe: '/usr/bin/none' }));
    assert.equal(none?.name, 'no-mms-elsewhere', 'the rule for everything, for the Internet');
    assert.equal(allowsUplink(none, 'mms'), true, 'the MMSC\'s rule lets it use the MMS APN (for the MMSC)');
  });

  it('pending: a destination\'s rule denies only that destination\'s uplinks it disallows', () => {
    const p = set.pendingRules(1000);
    assert.ok(!p.some((r) => r.name === 'mms-only'), 'only [mms] for the MMSC denies no uplink of the MMSC: no restriction');
    assert.deepEqual(p.find((r) => r.name === 'no-mms-elsewhere')?.deny, ['mms'], 'a rule for everything: its own policy');
    assert.ok(!p.some((r) => r.name === 'chat'), 'rules naming an executable are left out');
  });
});

describe('rules: the config section', () => {
  const issues = (text: string): ConfigError['issues'] => {
    try {
      parseConfig(text, 'w.yaml', { userId: (n) => (n === 'alice' ? 1001 : undefined) });
    } catch (e) {
      if (e instanceof ConfigError) return e.issues;
      throw e;
    }
    return [];
  };
  it('rejects, located: two actions, unknown uplinks and destinations, unknown users, bad globs', () => {
    const found = issues(exampleText(`rules:
  - name: a
    match: { user: bob, destination: nowhere }
    use: [wifi]
    only: [nope]
  - name: b
    match: { app: "org.[z-a]" }
    ask: { default: { only: [nope] } }
`));
    assert.deepEqual(found.map((i) => [i.field, i.message]), [
      ['rules[0].only', 'a rule has one action: use and only given'],
      ['rules[0].only[0]', 'no uplink named "nope"'],
      ['rules[0].match.destination', 'no destination named "nowhere"'],
      ['rules[0].match.user', 'no user named "bob" on this machine'],
      ['rules[1].ask.default.only[0]', 'no uplink named "nope"'],
      ['rules[1].match.app', found[5]?.message ?? ''],
    ]);
    assert.ok(found.every((i) => i.file === 'w.yaml' && i.line > 0));
  });

  it('reads a user name as its uid, the ask timeout in seconds, and apps: as rules with a notice', () => {
    const c = parseConfig(exampleText(`rules:
  - name: a
    match: { user: alice }
    ask: { timeout: 7 }
apps:
  - name: old
    match: { exe: /usr/bin/old }
    uplinks: [wifi]
    deny: [mms]
`), 'w.yaml', { userId: (n) => (n === 'alice' ? 1001 : undefined) });
    assert.deepEqual(c.rules[0]?.match, { uid: 1001 });
    assert.deepEqual(c.rules[0]?.action, { kind: 'ask', default: { kind: 'pass' }, timeoutMs: 7000 });
    assert.deepEqual(c.rules[1], { id: 'old', source: 'config', match: { exe: '/usr/bin/old' }, action: { kind: 'only', uplinks: ['wifi'] }, never: ['mms'], needs: [] });
    assert.equal(c.notices.length, 1);
    assert.equal(c.notices[0]?.field, 'apps');
    assert.match(c.notices[0]?.message ?? '', /apps: is read as rules:/);
  });
});
