import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { ConfigError, parseConfig, type ConfigIssue } from '../../src/config/load.js';
import { EXAMPLE_CONFIG } from '../../src/lab/device.js';

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
    assert.deepEqual(c.apps.map((a) => [a.name, a.uplinks, a.needs]), [['chat', ['cellular'], ['long-lived']], ['browser', ['wifi', 'cellular'], []]]);
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
});
