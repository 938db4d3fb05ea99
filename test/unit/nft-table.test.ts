/** The nftables table model (src/nftables/table.ts): declared chains and sets, contributed rules, one renderer. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { NftTable, updateScript } from '../../src/nftables/table.js';
import { isRoot } from '../support/uidclient.js';

const chains = [
  { name: 'egress', hook: 'postrouting' as const },
  { name: 'dns', hook: 'output' as const, type: 'nat' as const, priority: -100, optional: true },
];
const sets = [{ name: 'apps', type: 'ipv4_addr', flags: ['interval'] }];

describe('nftables table model', () => {
  it('writes each chain\'s header from its declaration, with the rules of every contributor in their order', () => {
    const t = new NftTable(chains, sets);
    t.contribute('a', () => ({ counters: ['c1'], rules: { egress: ['counter name c1'] } }));
    t.contribute('b', () => ({ counters: ['c1', 'c2'], elements: { apps: ['10.0.0.0/8'] }, rules: { egress: ['ip daddr @apps drop'], dns: ['dnat ip to 10.0.0.1'] } }));
    assert.equal(t.render().body, [
      '  counter c1 { }',
      '  counter c2 { }',
      '  set apps {',
      '    type ipv4_addr; flags interval;',
      '    elements = { 10.0.0.0/8 }',
      '  }',
      '  chain egress {',
      '    type filter hook postrouting priority 0; policy accept;',
      '    counter name c1',
      '    ip daddr @apps drop',
      '  }',
      '  chain dns {',
      '    type nat hook output priority -100; policy accept;',
      '    dnat ip to 10.0.0.1',
      '  }',
      '',
    ].join('\n'));
  });

  it('leaves out an optional chain without rules and an empty set\'s elements; the update declares and empties them all', () => {
    const t = new NftTable(chains, sets);
    t.contribute('a', () => ({ rules: { egress: [] } }));
    const r = t.render();
    assert.equal(r.body, '  chain egress {\n    type filter hook postrouting priority 0; policy accept;\n  }\n');
    const script = updateScript(r);
    assert.match(script, /^add chain inet waymark dns \{ type nat hook output priority -100; policy accept; \}$/m);
    assert.match(script, /^delete chain inet waymark dns$/m, 'an optional chain is deleted, declared again only by a body that has it');
    assert.match(script, /^flush chain inet waymark egress$/m);
    assert.match(script, /^add set inet waymark apps \{ type ipv4_addr; flags interval; \}$/m);
    assert.match(script, /^flush set inet waymark apps$/m);
  });

  it('refuses rules for a chain, or elements for a set, nobody declared; and names declared twice', () => {
    const t = new NftTable(chains);
    t.contribute('stray', () => ({ rules: { forward: ['drop'] } }));
    assert.throws(() => t.render(), /stray adds rules to an undeclared chain forward/);
    const u = new NftTable(chains);
    u.contribute('stray', () => ({ elements: { nope: ['1.2.3.4'] } }));
    assert.throws(() => u.render(), /undeclared set nope/);
    assert.throws(() => new NftTable([...chains, { name: 'egress', hook: 'output' }]), /declared twice/);
    assert.throws(() => new NftTable([{ name: 'bad-name', hook: 'output' }]), /invalid name/);
  });

  it('loads in nft, and a later update replaces rules and elements', { skip: !isRoot && 'needs root (a network namespace of its own)' }, () => {
    let elements = ['10.0.0.0/8', '192.0.2.1'];
    const t = new NftTable(chains, sets);
    t.contribute('a', () => ({ counters: ['c1'], elements: { apps: elements }, rules: { egress: ['ip daddr @apps counter name c1'], dns: elements.length ? ['ip daddr 192.0.2.9 dnat ip to 192.0.2.1'] : [] } }));
    const first = updateScript(t.render());
    elements = [];
    const second = updateScript(t.render());
    // A network namespace of its own, gone with the process: nothing of the host's is touched.
    const listed = execFileSync('unshare', ['-n', 'sh', '-c', 'printf "%s" "$1" | nft -f - && printf "%s" "$1" | nft -f - && printf "%s" "$2" | nft -f - && nft list table inet waymark', 'sh', first, second],
      { encoding: 'utf8' });
    assert.doesNotMatch(listed, /elements/, 'the elements went');
    assert.doesNotMatch(listed, /chain dns/, 'the optional chain went with its rules');
    assert.match(listed, /set apps \{\n\s+type ipv4_addr\n\s+flags interval\n\s+\}/);
    assert.match(listed, /ip daddr @apps counter name "c1"/);
  });
});
