import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig, type ConfigIssue } from '../../src/config/load.js';
import { applyProfile, chooseProfile, exportProfile, parseProfileDocument } from '../../src/profile/profile.js';
import { ordered } from '../../src/policy/rules.js';

const users = (n: string): number | undefined => (n === 'alice' ? 1000 : undefined);

const base = `version: 1
uplinks:
  - name: wifi
    match: wlan0
    kind: wifi
  - name: cell
    match: wwan0
    kind: cellular
    cost: { per_mb: 0.01, currency: EUR }
  - name: roam
    match: wwan1
    kind: cellular
destinations:
  - name: internet
    via: [wifi, cell, roam]
  - name: office
    prefixes: [10.1.0.0/16]
    via: [roam]
  - name: mms
    prefixes: [10.2.0.0/16]
    via: [cell, roam]
budgets:
  - id: cell-month
    uplink: cell
    limit: 1GB
rules:
  - name: browser
    match: { app: org.example.Browser }
    use: [wifi]
`;

const profiles = `profiles:
  - name: home
    description: at home
    sims: ["8949000000000000001"]
    operators: ["26201"]
    roaming: deny
    uplinks:
      - { name: cell, preference: 300, metered: false, stability: high }
    rules:
      - name: browser
        match: { app: org.example.Browser }
        use: [cell]
    budgets:
      - { id: cell-day, uplink: cell, period: day, limit: 100MB }
  - name: travel
    operators: ["20801"]
    roaming: { only: [office] }
default_profile: travel
`;

function issues(text: string): ConfigIssue[] {
  try {
    parseConfig(text, 'test.yaml', { userId: users });
  } catch (e) {
    if (e instanceof ConfigError) return [...e.issues];
    throw e;
  }
  assert.fail('config was accepted');
}

describe('profiles in the config', () => {
  it('resolves profiles and default_profile', () => {
    const c = parseConfig(base + profiles, 'test.yaml', { userId: users });
    assert.equal(c.defaultProfile, 'travel');
    assert.deepEqual(c.profiles?.map((p) => [p.name, p.roaming, p.sims, p.operators]), [
      ['home', 'deny', ['8949000000000000001'], ['26201']], ['travel', { only: ['office'] }, [], ['20801']],
    ]);
    const home = c.profiles?.[0];
    assert.deepEqual(home?.uplinks, [{ name: 'cell', preference: 300, metered: false, properties: { stability: 0.9 } }]);
    assert.deepEqual(home?.rules.map((r) => [r.id, r.source, r.profile]), [['browser@home', 'profile', 'home']]);
    assert.deepEqual(home?.budgets.map((b) => [b.id, b.period]), [['cell-day', 'day']]);
    assert.deepEqual(home?.raw, {
      name: 'home', description: 'at home', sims: ['8949000000000000001'], operators: ['26201'], roaming: 'deny',
      uplinks: [{ name: 'cell', preference: 300, metered: false, stability: 'high' }],
      rules: [{ name: 'browser', match: { app: 'org.example.Browser' }, use: ['cell'] }], budgets: [{ id: 'cell-day', uplink: 'cell', period: 'day', limit: '100MB' }],
    }, 'raw is the YAML as written, without defaults');
  });

  it('locates every cross-check of a bad profile', () => {
    const found = issues(base + `profiles:
  - name: a
    sims: ["8949000000000000001", "123"]
    operators: ["2620"]
    roaming: { only: [nowhere] }
    uplinks:
      - { name: nope, preference: 5 }
      - { name: cell, colour: red }
  - name: a
    sims: ["8949000000000000001"]
default_profile: b
`);
    assert.deepEqual(found.map((i) => [i.line, i.field]), [
      [32, 'profiles[0].sims[1]'], [33, 'profiles[0].operators[0]'], [37, 'profiles[0].uplinks[1].colour'],
    ], 'the schema problems first, located');
    const refs = issues(base + `profiles:
  - name: a
    sims: ["8949000000000000001"]
    roaming: { only: [nowhere] }
    uplinks:
      - { name: nope, preference: 5 }
    rules:
      - { name: r, use: [nope] }
      - { name: r, match: { destination: nowhere } }
    budgets:
      - { id: cell-month, uplink: cell, limit: 1GB }
      - { id: x, uplink: cell, limit: 1GB }
      - { id: x, uplink: cell, limit: 1GB }
  - name: a
    sims: ["8949000000000000001"]
default_profile: b
`);
    assert.deepEqual(refs.map((i) => `${i.line}:${i.field}: ${i.message}`), [
      '33:profiles[0].roaming.only[0]: no destination named "nowhere"',
      '35:profiles[0].uplinks[0].name: no uplink named "nope"',
      '37:profiles[0].rules[0].use[0]: no uplink named "nope"',
      '38:profiles[0].rules[1].name: duplicate rule "r" (first defined as profiles[0].rules[0])',
      '38:profiles[0].rules[1].match.destination: no destination named "nowhere"',
      '40:profiles[0].budgets[0].id: duplicate budget "cell-month" (first defined as the configuration\'s budget "cell-month")',
      '42:profiles[0].budgets[2].id: duplicate budget "x" (first defined as profiles[0].budgets[1])',
      '43:profiles[1].name: duplicate profile "a" (first defined as profiles[0])',
      '44:profiles[1].sims[0]: SIM 8949000000000000001 is already tied to profile "a" (profiles[0].sims[0])',
      '45:default_profile: no profile named "b"',
    ]);
  });
});

describe('applyProfile', () => {
  const c = parseConfig(base + profiles, 'test.yaml', { userId: users });
  const [home, travel] = c.profiles ?? [];
  const roaming = new Set(['roam']);

  it('null: the base unchanged', () => {
    assert.equal(applyProfile(c, null, roaming), c);
  });

  it('overrides uplinks, puts its rules first and its budgets last, and denies roaming uplinks everywhere', () => {
    assert.ok(home);
    const e = applyProfile(c, home, roaming);
    const cell = e.uplinks.find((u) => u.name === 'cell');
    assert.deepEqual([cell?.preference, cell?.metered, cell?.properties, cell?.cost.perMB], [300, false, { stability: 0.9 }, 0.01]);
    assert.deepEqual(e.uplinks.find((u) => u.name === 'wifi'), c.uplinks.find((u) => u.name === 'wifi'));
    assert.deepEqual(e.rules.map((r) => r.id), ['browser@home', 'browser']);
    assert.deepEqual(ordered(e.rules, []).map((r) => r.id), ['browser@home', 'browser'], 'equal specificity: the profile\'s first');
    assert.deepEqual(e.budgets.map((b) => b.id), ['cell-month', 'cell-day']);
    assert.deepEqual(e.destinations.map((d) => [d.name, d.via]), [['office', []], ['mms', ['cell']], ['internet', ['wifi', 'cell']]]);
    assert.deepEqual(c.destinations.map((d) => d.via), [['roam'], ['cell', 'roam'], ['wifi', 'cell', 'roam']], 'the base is not changed');
  });

  it('only: roaming uplinks stay on the listed destinations; no roaming uplink: via unchanged', () => {
    assert.ok(travel);
    assert.deepEqual(applyProfile(c, travel, roaming).destinations.map((d) => [d.name, d.via]),
      [['office', ['roam']], ['mms', ['cell']], ['internet', ['wifi', 'cell']]]);
    assert.deepEqual(applyProfile(c, travel, new Set()).destinations, c.destinations);
  });
});

describe('chooseProfile', () => {
  const c = parseConfig(base + profiles, 'test.yaml', { userId: users });
  const ps = c.profiles ?? [];
  it('ICCID, then operator, then the default, else none', () => {
    assert.equal(chooseProfile(ps, { iccid: '8949000000000000001', operator: '20801' }, 'travel')?.name, 'home');
    assert.equal(chooseProfile(ps, { iccid: '8949000000000000002', operator: '26201' })?.name, 'home');
    assert.equal(chooseProfile(ps, { iccid: '8949000000000000002', operator: '20801' })?.name, 'travel');
    assert.equal(chooseProfile(ps, { iccid: '8949000000000000002' }, 'home')?.name, 'home');
    assert.equal(chooseProfile(ps, undefined, 'travel')?.name, 'travel');
    assert.equal(chooseProfile(ps, { iccid: '8949000000000000002' }), null);
    assert.equal(chooseProfile(ps, { iccid: '8949000000000000002' }, 'gone'), null);
  });
});

describe('export and import', () => {
  const c = parseConfig(base + profiles, 'test.yaml', { userId: users });
  const home = c.profiles?.[0];

  it('export → parse → export is byte-identical, and the document is a config the loader reads', () => {
    assert.ok(home);
    const text = exportProfile(home);
    assert.match(text, /^version: 1\nprofiles:\n {2}- name: home\n/);
    const back = parseProfileDocument(text, 'home.yaml', c, { userId: users });
    assert.equal(exportProfile(back), text);
    assert.deepEqual(back.rules, home.rules);
    assert.deepEqual(back.uplinks, home.uplinks);
    const pasted = parseConfig(base + text.replace(/^version: 1\n/, ''), 'pasted.yaml', { userId: users });
    assert.equal(pasted.profiles?.[0]?.name, 'home');
  });

  it('an invalid import is refused with located problems', () => {
    const bad = (text: string): string[] => {
      try {
        parseProfileDocument(text, 'in.yaml', c, { userId: users });
      } catch (e) {
        if (e instanceof ConfigError) return e.issues.map((i) => `${i.file}:${i.line}:${i.column}: ${i.field}: ${i.message}`);
        throw e;
      }
      assert.fail('accepted');
    };
    assert.deepEqual(bad('version: 1\nprofiles:\n  - name: x\n    uplinks: [{ name: ghost, preference: 1 }]\n'),
      ['in.yaml:4:23: profiles[0].uplinks[0].name: no uplink named "ghost"']);
    assert.deepEqual(bad('version: 1\nuplinks: []\nprofiles:\n  - name: x\n'), ['in.yaml:2:10: uplinks: a profile document holds version and profiles only (uplinks belongs in waymark.yaml)']);
    assert.deepEqual(bad('version: 1\nprofiles: []\n'), ['in.yaml:2:11: profiles: a profile document holds exactly one profile (0 given)']);
    assert.deepEqual(bad('version: 1\nprofiles:\n  - name: x\n    budgets: [{ id: cell-month, uplink: cell, limit: 1GB }]\n'),
      ['in.yaml:4:21: profiles[0].budgets[0].id: duplicate budget "cell-month" (first defined as the configuration\'s budget "cell-month")']);
    assert.deepEqual(bad('version: 1\nprofiles:\n  - name: x\n    roaming: sometimes\n'), ['in.yaml:4:14: profiles[0].roaming: Invalid input']);
  });
});
