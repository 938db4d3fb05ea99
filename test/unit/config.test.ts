import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { MAX_SLOTS } from '../../src/constants.js';
import { ConfigError, MAX_ALIAS_NODES, parseConfig, type ConfigIssue } from '../../src/config/load.js';
import { DAEMON_JS, EXAMPLE_CONFIG } from '../../src/lab/device.js';
import { counterName } from '../../src/nftables/ruleset.js';
import { assignSlots } from '../../src/uplink/slots.js';

function issues(text: string): ConfigIssue[] {
  try {
    parseConfig(text, 'test.yaml');
  } catch (e) {
    if (e instanceof ConfigError) return [...e.issues];
    throw e;
  }
  assert.fail('config was accepted');
}

const base = `version: 1
uplinks:
  - name: wifi
    match: wlan0
    kind: wifi
  - name: cell
    match: wwan0
    kind: cellular
`;

describe('config', () => {
  it('accepts the shipped example and resolves defaults', () => {
    const c = parseConfig(readFileSync(EXAMPLE_CONFIG, 'utf8'), 'example');
    assert.deepEqual(c.uplinks.map((u) => u.name), ['wifi', 'cellular', 'mms', 'office-vpn']);
    const cell = c.uplinks.find((u) => u.name === 'cellular');
    assert.equal(cell?.metered, true, 'cellular defaults to metered');
    assert.equal(c.uplinks.find((u) => u.name === 'wifi')?.metered, false);
    assert.deepEqual(c.destinations.map((d) => d.name), ['mms', 'office', 'internet']);
    assert.deepEqual(c.uplinks.find((u) => u.name === 'mms')?.gateway, { 4: '10.64.0.1', 6: 'fd00:64::1' });
    assert.deepEqual(c.rules.map((r) => [r.id, r.action, r.needs]), [
      ['chat', { kind: 'only', uplinks: ['cellular'] }, ['long-lived']], ['browser', { kind: 'only', uplinks: ['wifi', 'cellular'] }, []],
      ['chat-desktop', { kind: 'only', uplinks: ['cellular'] }, []],
    ]);
    assert.deepEqual(c.budgets, [], 'the example budget is commented out');
  });

  it('checks apps: known uplinks, not both allowed and denied, something to match', () => {
    const found = issues(base + `apps:
  - name: a
    match: { exe: /usr/bin/a }
    uplinks: [wifi, nope]
    deny: [wifi]
  - name: b
    match: {}
`);
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[15, 'apps[1].match']]);
    const refs = issues(base + 'apps:\n  - name: a\n    match: { exe: /usr/bin/a }\n    uplinks: [wifi, nope]\n    deny: [wifi]\n');
    assert.deepEqual(refs.map((i) => [i.line, i.field]), [[12, 'apps[0].uplinks[1]'], [13, 'apps[0].deny[0]']]);
    assert.match(refs[1]?.message ?? '', /both allowed and denied/);
    // unit, app and flatpak are globs: a bad one is located.
    const globs = issues(base + 'apps:\n  - name: a\n    match: { app: "org.[z-a]" }\n  - name: b\n    match: { unit: "app-*-chat-*.scope", flatpak: "org.mozilla.*" }\n');
    assert.deepEqual(globs.map((i) => [i.line, i.field]), [[11, 'apps[0].match.app']]);
    assert.match(globs[0]?.message ?? '', /not a valid glob/);
  });

  it('adds the built-in internet destination over every uplink when not configured', () => {
    const c = parseConfig(base);
    assert.deepEqual(c.destinations, [{ name: 'internet', prefixes: [], domains: [], via: ['wifi', 'cell'] }]);
  });

  it('names file, line and field of an unknown field', () => {
    const [i, ...rest] = issues(base + '    colour: blue\n');
    assert.equal(rest.length, 0);
    assert.deepEqual({ file: i?.file, line: i?.line, field: i?.field }, { file: 'test.yaml', line: 9, field: 'uplinks[1].colour' });
    assert.match(i?.message ?? '', /unknown field "colour"/);
  });

  it('names the line of a wrong type and of a bad enum value', () => {
    const found = issues(base.replace('kind: cellular', 'kind: carrier-pigeon') + '    preference: high\n');
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[8, 'uplinks[1].kind'], [9, 'uplinks[1].preference']]);
    assert.match(found[0]?.message ?? '', /wifi, cellular/);
  });

  it('rejects a duplicate uplink at the second definition', () => {
    const [i] = issues(base + '  - name: wifi\n    match: wlan1\n    kind: wifi\n');
    assert.equal(i?.line, 9);
    assert.equal(i?.field, 'uplinks[2].name');
    assert.match(i?.message ?? '', /duplicate uplink "wifi"/);
  });

  it('rejects overlapping destinations and bad prefixes', () => {
    const text = base + `destinations:
  - name: office
    prefixes: [10.0.0.0/8]
    via: [wifi]
  - name: lab
    prefixes:
      - 10.1.0.0/16
      - 10.1.2.3/16
      - 300.1.1.1/24
    via: [cell]
`;
    const found = issues(text);
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[16, 'destinations[1].prefixes[1]'], [17, 'destinations[1].prefixes[2]']]);
    const byField = new Map(found.map((i) => [i.field, i]));
    assert.match(byField.get('destinations[1].prefixes[1]')?.message ?? '', /host bits set/);
    assert.match(byField.get('destinations[1].prefixes[2]')?.message ?? '', /not an IPv4 or IPv6 address/);
    assert.equal(byField.get('destinations[1].prefixes[1]')?.line, 16);
    assert.equal(byField.get('destinations[1].prefixes[2]')?.line, 17);
  });

  it('reports an overlap between two valid destinations at the later prefix', () => {
    const found = issues(base + `destinations:
  - name: office
    prefixes: [10.0.0.0/8]
    via: [wifi]
  - name: lab
    prefixes: [10.1.0.0/16]
    via: [cell]
`);
    assert.equal(found.length, 1);
    assert.equal(found[0]?.field, 'destinations[1].prefixes[0]');
    assert.equal(found[0]?.line, 14);
    assert.match(found[0]?.message ?? '', /overlaps 10\.0\.0\.0\/8 of destination "office"/);
  });

  it('rejects a reference to an unknown uplink and a missing required field', () => {
    const found = issues(base + 'destinations:\n  - name: mms\n    via: [nope]\n  - via: [wifi]\n');
    const fields = found.map((i) => i.field).sort();
    assert.deepEqual(fields, ['destinations[1].name']);
    assert.match(found[0]?.message ?? '', /required/);
    const again = issues(base + 'destinations:\n  - name: mms\n    via: [nope]\n');
    assert.equal(again[0]?.field, 'destinations[0].via[0]');
    assert.equal(again[0]?.line, 11);
    assert.match(again[0]?.message ?? '', /no uplink named "nope"/);
  });

  it('reports YAML syntax errors with their line', () => {
    const [i] = issues('version: 1\nuplinks:\n  - name: a\n   bad indent: [\n');
    assert.ok((i?.line ?? 0) >= 3, `line ${i?.line}`);
  });

  it('rejects a SIM on a non-cellular uplink and an unsupported version', () => {
    const found = issues(base.replace('version: 1', 'version: 2').replace('kind: wifi', 'kind: wifi\n    sim: { iccid: "8943102000000000017" }'));
    assert.deepEqual(found.map((i) => i.field), ['version']);
    const sim = issues(base.replace('kind: wifi', 'kind: wifi\n    sim: { iccid: "8943102000000000017" }'));
    assert.deepEqual(sim.map((i) => [i.field, i.line]), [['uplinks[0].sim', 6]]);
  });

  it('rejects more uplinks than there are slots at the first one too many, as the daemon would', () => {
    const many = (n: number): string => 'version: 1\nuplinks:\n' +
      Array.from({ length: n }, (_, i) => `  - { name: u${i}, match: eth${i}, kind: ethernet }\n`).join('');
    const ok = parseConfig(many(MAX_SLOTS));
    assert.equal(assignSlots(ok.uplinks.map((u) => u.name), new Map()).size, MAX_SLOTS, 'what the loader accepts, the engine can slot');
    const found = issues(many(40));
    assert.deepEqual(found.map((i) => [i.line, i.column, i.field]), [[3 + MAX_SLOTS, 5, `uplinks[${MAX_SLOTS}]`]]);
    assert.match(found[0]?.message ?? '', /too many uplinks: at most 30 are supported \(40 given\)/);
  });

  it('refuses a YAML alias bomb quickly with the alias located; unresolved and self-referring aliases too', () => {
    const levels = ['a: &a [x, x, x, x, x, x, x, x, x]'];
    for (let l = 1; l < 9; l++) {
      const prev = String.fromCharCode(96 + l);
      levels.push(`${String.fromCharCode(97 + l)}: &${String.fromCharCode(97 + l)} [${Array(9).fill(`*${prev}`).join(', ')}]`);
    }
    // 9^9 strings once expanded: the loader must stop counting long before (a-d add 8,289 nodes, e's first alias 7,381).
    const found = issues(`version: 1\n${levels.join('\n')}\n`);
    assert.equal(found.length, 1);
    assert.deepEqual([found[0]?.line, found[0]?.column, found[0]?.field], [6, 8, 'e[0]'], JSON.stringify(found));
    assert.match(found[0]?.message ?? '', new RegExp(`aliases expand to more than ${MAX_ALIAS_NODES} nodes \\(alias \\*d\\)`));
    assert.deepEqual(issues('version: 1\nuplinks: *nope\n').map((i) => [i.line, i.column, i.field, i.message]),
      [[2, 10, 'uplinks', 'alias *nope has no anchor &nope before it']]);
    assert.deepEqual(issues('version: 1\nuplinks: &l [*l]\n').map((i) => [i.line, i.field]), [[2, 'uplinks[0]']]);
    // What aliases are for stays fine.
    const shared = parseConfig(`version: 1
uplinks:
  - { name: a, match: wwan0, kind: cellular, cost: &c { per_mb: 0.01 } }
  - { name: b, match: wwan1, kind: cellular, cost: *c }
`);
    assert.deepEqual(shared.uplinks.map((u) => u.cost.perMB), [0.01, 0.01]);
  });

  it('rejects uplink names that would share nftables counters, naming both', () => {
    const found = issues(base + '  - name: a-b\n    match: eth0\n    kind: ethernet\n  - name: a_b\n    match: eth1\n    kind: ethernet\n');
    assert.equal(counterName('a-b', 'tx'), counterName('a_b', 'tx'), 'the collision is real');
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[12, 'uplinks[3].name']]);
    assert.match(found[0]?.message ?? '', /uplink "a_b" and uplinks\[2\] "a-b" differ only in "-" and "_".*uplink_a_b_tx/);
  });

  it('rejects an interface glob that cannot match (a reversed class) and the loopback', () => {
    const found = issues(base.replace('match: wwan0', 'match: "ppp[z-a]"').replace('match: wlan0', 'match: lo'));
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[4, 'uplinks[0].match'], [7, 'uplinks[1].match']]);
    assert.match(found[0]?.message ?? '', /loopback/);
    assert.match(found[1]?.message ?? '', /not a valid interface glob/);
  });

  it('waymarkd --check decides as the daemon does: located problems, exit 78, no stack trace', () => {
    const dir = mkdtempSync(join(tmpdir(), 'wm-check-'));
    try {
      const check = (text: string) => {
        writeFileSync(join(dir, 'w.yaml'), text);
        return spawnSync(process.execPath, [DAEMON_JS, '--check', '--config', join(dir, 'w.yaml')], { encoding: 'utf8', timeout: 30_000 });
      };
      const tooMany = check('version: 1\nuplinks:\n' + Array.from({ length: 40 }, (_, i) => `  - { name: u${i}, match: eth${i}, kind: ethernet }\n`).join(''));
      assert.equal(tooMany.status, 78, tooMany.stdout + tooMany.stderr);
      assert.match(tooMany.stderr, /w\.yaml:33:5: uplinks\[30\]: too many uplinks/);
      // Starting for real decides the same, before it touches anything (state, sockets, kernel).
      const start = spawnSync(process.execPath, [DAEMON_JS, '--config', join(dir, 'w.yaml'), '--socket', join(dir, 'run', 'w.sock'), '--state-dir', join(dir, 'state')],
        { encoding: 'utf8', timeout: 30_000 });
      assert.equal(start.status, 78, start.stdout + start.stderr);
      assert.match(start.stderr, /w\.yaml:33:5: uplinks\[30\]: too many uplinks/);
      const bomb = check('version: 1\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n' +
        'c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n');
      assert.equal(bomb.status, 78, bomb.stdout + bomb.stderr);
      assert.match(bomb.stderr, /w\.yaml:\d+:\d+: [a-e]\[\d+\]: aliases expand to more than/);
      for (const r of [tooMany, bomb]) assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      const good = check(readFileSync(EXAMPLE_CONFIG, 'utf8'));
      assert.equal(good.status, 0, good.stderr);
      assert.match(good.stdout, /ok \(4 uplinks/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('budgets', () => {
    const users = (n: string): number | undefined => ({ alice: 1000, bob: 1001 })[n];
    // Lines 1-9; budgets: is line 10, its first entry line 11.
    const priced = base.replace('kind: cellular\n', 'kind: cellular\n    cost: { per_mb: 0.02, currency: EUR }\n') + 'budgets:\n';
    const budgetIssues = (entries: string): ConfigIssue[] => {
      try {
        parseConfig(priced + entries, 'test.yaml', { userId: users });
      } catch (e) {
        if (e instanceof ConfigError) return [...e.issues];
        throw e;
      }
      assert.fail('config was accepted');
    };
    const located = (entries: string): [number, string][] => budgetIssues(entries).map((i) => [i.line, i.field]);

    it('reads budgets: sizes and money, periods, warn_at, user, defaults and ids', () => {
      const c = parseConfig(priced + `  - uplink: cell
    limit: 5 EUR
  - id: browser-daily
    uplink: cell
    app: org.mozilla.firefox
    user: alice
    period: day
    limit: 1.5 GiB
    warn_at: 90%
    block: false
  - uplink: wifi
    period: week
    start: 7
    limit: 2000000
    warn_at: 0.5
  - uplink: cell
    app: Chat Client
    period: month
    start: 31
    limit: 500MB
`, 'test.yaml', { userId: users });
      assert.deepEqual(c.budgets, [
        { id: 'cell-month', uplink: 'cell', uid: null, period: 'month', start: 1, limit: { money: 5, currency: 'EUR' }, warnAt: 0.8, block: true },
        { id: 'browser-daily', uplink: 'cell', app: 'org.mozilla.firefox', uid: 1000, period: 'day', start: 1, limit: { bytes: 1.5 * 2 ** 30 }, warnAt: 0.9, block: false },
        { id: 'wifi-week', uplink: 'wifi', uid: null, period: 'week', start: 7, limit: { bytes: 2_000_000 }, warnAt: 0.5, block: true },
        { id: 'cell-chat-client-month', uplink: 'cell', app: 'Chat Client', uid: null, period: 'month', start: 31, limit: { bytes: 500_000_000 }, warnAt: 0.8, block: true },
      ]);
      assert.deepEqual(parseConfig(base).budgets, []);
    });

    it('locates an unknown uplink', () => {
      const found = budgetIssues('  - uplink: nope\n    limit: 1GB\n');
      assert.deepEqual(found.map((i) => [i.file, i.line, i.column, i.field]), [['test.yaml', 11, 13, 'budgets[0].uplink']]);
      assert.equal(found[0]?.message, 'no uplink named "nope"');
    });

    it('locates a limit that is no size or money, or not more than zero', () => {
      const bad = budgetIssues('  - uplink: cell\n    limit: 10 Mb\n  - uplink: cell\n    limit: lots\n  - uplink: cell\n    limit: 0 EUR\n  - uplink: cell\n    limit: 1.5\n  - uplink: cell\n');
      assert.deepEqual(bad.map((i) => [i.line, i.field]), [[12, 'budgets[0].limit'], [14, 'budgets[1].limit'], [16, 'budgets[2].limit'], [18, 'budgets[3].limit'], [19, 'budgets[4].limit']]);
      assert.deepEqual(bad.map((i) => i.message), [
        '"10 Mb": a lower-case b counts bits; sizes are in bytes: write MB',
        '"lots" is neither a size (500MB, 1.5 GB, 10 MiB, a number of bytes) nor money in the uplink\'s currency (5 EUR)',
        '"0 EUR": a limit must be more than zero',
        '"1.5" is not a whole number of bytes',
        'required field is missing',
      ]);
      assert.deepEqual(located('  - uplink: cell\n    limit: [5, EUR]\n'), [[12, 'budgets[0].limit']]);
      assert.match(budgetIssues('  - uplink: cell\n    limit: [5, EUR]\n')[0]?.message ?? '', /must be a size such as 500MB or an amount such as 5 EUR/);
    });

    it('locates money in another currency than the uplink\'s, and money on an uplink free per MB', () => {
      const found = budgetIssues('  - uplink: cell\n    limit: 5 USD\n  - uplink: wifi\n    limit: 5 EUR\n');
      assert.deepEqual(found.map((i) => [i.line, i.field]), [[12, 'budgets[0].limit'], [14, 'budgets[1].limit']]);
      assert.equal(found[0]?.message, 'uplink "cell" is priced in EUR, not USD');
      assert.match(found[1]?.message ?? '', /uplink "wifi" has no price per MB \(cost.per_mb\): a money budget on it can never run out; give a size/);
    });

    it('locates a start day that does not fit the period', () => {
      const found = budgetIssues('  - uplink: cell\n    period: week\n    start: 8\n    limit: 1GB\n  - uplink: cell\n    period: day\n    start: 5\n    limit: 1GB\n'
        + '  - uplink: cell\n    start: 32\n    limit: 1GB\n');
      assert.deepEqual(found.map((i) => [i.line, i.field]), [[20, 'budgets[2].start']], 'the schema stops at 1..31 first');
      const cross = budgetIssues('  - uplink: cell\n    period: week\n    start: 8\n    limit: 1GB\n  - uplink: cell\n    period: day\n    start: 5\n    limit: 1GB\n');
      assert.deepEqual(cross.map((i) => [i.line, i.field]), [[13, 'budgets[0].start'], [17, 'budgets[1].start']]);
      assert.match(cross[0]?.message ?? '', /1 \(Monday\) to 7 \(Sunday\)/);
      assert.match(cross[1]?.message ?? '', /daily budget starts at local midnight/);
    });

    it('locates an unknown user and a user without an app', () => {
      const found = budgetIssues('  - uplink: cell\n    app: chat\n    user: mallory\n    limit: 1GB\n  - uplink: cell\n    user: bob\n    limit: 1GB\n');
      assert.deepEqual(found.map((i) => [i.line, i.field]), [[13, 'budgets[0].user'], [16, 'budgets[1].user']]);
      assert.equal(found[0]?.message, 'no user named "mallory" on this machine');
      assert.match(found[1]?.message ?? '', /give app too/);
    });

    it('locates duplicate ids, given or made', () => {
      const found = budgetIssues('  - { id: a, uplink: cell, limit: 1GB }\n  - { id: a, uplink: wifi, limit: 1GB }\n  - { uplink: cell, limit: 1GB }\n  - { uplink: cell, limit: 2GB }\n');
      assert.deepEqual(found.map((i) => [i.line, i.field]), [[12, 'budgets[1].id'], [14, 'budgets[3]']]);
      assert.equal(found[0]?.message, 'duplicate budget "a" (first defined as budgets[0])');
      assert.equal(found[1]?.message, 'this budget and budgets[2] are both "cell-month": give one an id');
    });

    it('locates a bad warn_at, id, period and an unknown field', () => {
      const found = budgetIssues('  - uplink: cell\n    limit: 1GB\n    warn_at: 120%\n  - uplink: cell\n    limit: 1GB\n    id: Big_One\n'
        + '  - uplink: cell\n    limit: 1GB\n    period: year\n  - uplink: cell\n    limit: 1GB\n    warnAt: 0.5\n');
      assert.deepEqual(found.map((i) => [i.line, i.field]), [[13, 'budgets[0].warn_at'], [16, 'budgets[1].id'], [19, 'budgets[2].period'], [22, 'budgets[3].warnAt']]);
      assert.match(found[0]?.message ?? '', /percentage from 1% to 100%/);
      assert.match(found[2]?.message ?? '', /must be one of: day, week, month/);
      assert.equal(found[3]?.message, 'unknown field "warnAt"');
    });

    it('the shipped example\'s commented budget is valid once uncommented', () => {
      const text = readFileSync(EXAMPLE_CONFIG, 'utf8');
      const block = /^# budgets:\n(# {3}[^\n]*\n)+/m.exec(text);
      assert.ok(block, 'the example has a commented budgets: section');
      const c = parseConfig(text.replace(block[0], block[0].replace(/^# /gm, '')), 'example');
      assert.deepEqual(c.budgets, [
        { id: 'cellular-monthly', uplink: 'cellular', uid: null, period: 'month', start: 5, limit: { money: 5, currency: 'EUR' }, warnAt: 0.8, block: true },
      ]);
    });
  });
});
