/** Which link an uplink claims: never the loopback; a glob over several links is reported. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { IFF, type LinkMsg } from '../../src/netlink/message.js';
import { assignSlots } from '../../src/uplink/slots.js';
import { ambiguousMatches, unusableMatches, uplinkStates } from '../../src/uplink/state.js';
import { globProblem, matchesInterface } from '../../src/uplink/uplink.js';
import { labKernel, UP } from '../support/fixture.js';

const ETHER = 1;
const NONE = 65534;
const LOOPBACK = 772;
const link = (index: number, name: string, type: number, flags = UP): LinkMsg => ({ index, name, flags, carrier: true, type });

const config = (uplinks: string) => parseConfig(`version: 1\nuplinks:\n${uplinks}`);

describe('uplink link matching', () => {
  it('"*" never claims the loopback (it is the lowest ifindex), nor does a glob over a renamed one', () => {
    const c = config('  - { name: any, match: "*", kind: ethernet }\n  - { name: l, match: "l*", kind: ethernet }\n');
    const kernel = labKernel();
    assert.equal(kernel.links[0]?.name, 'lo');
    const states = uplinkStates(c.uplinks, assignSlots(c.uplinks.map((u) => u.name), new Map()), kernel);
    assert.equal(states[0]?.link?.name, 'wlan0');
    assert.equal(states[1]?.status, 'absent', 'l* matches only lo, which is never an uplink');
    // A loopback by its flag or its link type, whatever it is called.
    const renamed = { ...kernel, links: [link(1, 'lback', LOOPBACK, UP | IFF.LOOPBACK), link(7, 'lnk0', LOOPBACK), ...kernel.links.slice(1)] };
    const again = uplinkStates(c.uplinks, assignSlots(c.uplinks.map((u) => u.name), new Map()), renamed);
    assert.equal(again[1]?.status, 'absent');
  });

  it('reports a glob that matches several links, and whether their kinds differ', () => {
    const c = config([
      '  - { name: any, match: "*", kind: ethernet }',
      '  - { name: cell, match: "wwan*", kind: cellular }',
      '  - { name: wifi, match: wlan0, kind: wifi }',
      '  - { name: ppp, match: "ppp?", kind: dialup }',
      '',
    ].join('\n'));
    const links = [link(1, 'lo', LOOPBACK, UP | IFF.LOOPBACK), link(2, 'wlan0', ETHER), link(3, 'wwan0', NONE), link(4, 'wwan1', NONE), link(5, 'ppp0', 512)];
    const found = ambiguousMatches(c.uplinks, links);
    assert.deepEqual(found, [
      { uplink: 'any', match: '*', mixedKinds: true,
        links: [{ name: 'wlan0', kind: 'ether' }, { name: 'wwan0', kind: 'none' }, { name: 'wwan1', kind: 'none' }, { name: 'ppp0', kind: 'ppp' }] },
      { uplink: 'cell', match: 'wwan*', mixedKinds: false, links: [{ name: 'wwan0', kind: 'none' }, { name: 'wwan1', kind: 'none' }] },
    ]);
    assert.deepEqual(ambiguousMatches(c.uplinks, links.slice(0, 3)).map((a) => a.uplink), ['any'], 'one wwan: the glob is unambiguous');
  });

  it('globs: classes, negation; a class that cannot compile is a problem, not a throw', () => {
    assert.equal(matchesInterface('ppp[0-2]', 'ppp1'), true);
    assert.equal(matchesInterface('ppp[!0-2]', 'ppp1'), false);
    assert.equal(matchesInterface('ppp[z-a]', 'pppz'), false);
    assert.match(globProblem('ppp[z-a]') ?? '', /not a valid interface glob/);
    assert.equal(globProblem('wwan*'), undefined);
    assert.equal(globProblem('eth0.5'), undefined);
  });

  it('never claims a link whose name nftables would misread (a quote, a backslash, a "*"), and says so', () => {
    const c = config('  - { name: q, match: "q*", kind: ethernet }\n  - { name: eth, match: "eth*", kind: ethernet }\n');
    const links = [link(2, 'q"x', ETHER), link(3, 'q\\y', ETHER), link(4, 'eth*', ETHER), link(5, 'eth0', ETHER)];
    const states = uplinkStates(c.uplinks, assignSlots(c.uplinks.map((u) => u.name), new Map()), { links, addrs: [], routes: [] });
    assert.equal(states[0]?.status, 'absent');
    assert.equal(states[1]?.link?.name, 'eth0', 'not the link literally named eth*, which "eth*" in nft would widen to every eth');
    assert.deepEqual(unusableMatches(c.uplinks, links), [{ uplink: 'q', links: ['q"x', 'q\\y'] }, { uplink: 'eth', links: ['eth*'] }]);
  });
});
