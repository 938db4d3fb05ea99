import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatAddress, formatPrefix, overlaps, parseAddress, parsePrefix, type Prefix } from '../../src/net/prefix.js';
import { matchesInterface } from '../../src/uplink/uplink.js';

const P = (t: string): Prefix => {
  const p = parsePrefix(t);
  if (typeof p === 'string') assert.fail(p);
  return p;
};
/** The error parsePrefix gives for `t` (and a readable failure when it parses). */
const E = (t: string): string => {
  const p = parsePrefix(t);
  if (typeof p !== 'string') assert.fail(`${t} parsed as ${formatPrefix(p)}`);
  return p;
};

describe('prefix', () => {
  it('round-trips IPv6 text in RFC 5952 form', () => {
    for (const [inp, out] of [['fd00:64::2', 'fd00:64::2'], ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], ['::', '::'], ['::ffff:10.0.0.1', '::ffff:a00:1'], ['fe80::1', 'fe80::1']]) {
      const a = parseAddress(inp ?? '');
      assert.ok(a, inp);
      assert.equal(formatAddress(a.family, a.bytes), out);
    }
  });
  it('parses prefixes and refuses host bits and bad lengths', () => {
    assert.equal(formatPrefix(P('10.200.0.0/24')), '10.200.0.0/24');
    assert.equal(formatPrefix(P('fd00:200::/64')), 'fd00:200::/64');
    assert.equal(formatPrefix(P('192.0.2.7')), '192.0.2.7/32');
    assert.match(E('10.0.0.1/24'), /host bits/);
    assert.match(E('10.0.0.0/33'), /0\.\.32/);
    assert.match(E('bogus/8'), /not an IPv4/);
  });
  it('detects overlap only within a family', () => {
    assert.equal(overlaps(P('10.0.0.0/8'), P('10.1.0.0/16')), true);
    assert.equal(overlaps(P('10.0.0.0/16'), P('10.1.0.0/16')), false);
    assert.equal(overlaps(P('::/0'), P('10.0.0.0/8')), false);
  });
  it('matches interface globs', () => {
    assert.equal(matchesInterface('wwan*', 'wwan1'), true);
    assert.equal(matchesInterface('wwan?', 'wwan10'), false);
    assert.equal(matchesInterface('ppp[0-2]', 'ppp1'), true);
    assert.equal(matchesInterface('ppp[!0-2]', 'ppp1'), false);
    assert.equal(matchesInterface('eth0.5', 'eth0x5'), false);
  });
});
