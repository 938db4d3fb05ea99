import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DENY_SLOT, markForSlot, softMarkForSlot } from '../../src/constants.js';
import { backstopFor } from '../../src/session/backstop.js';
import { mergeWish, SessionRegistry, type Session } from '../../src/session/session.js';
import { exampleConfig, labKernel, labStates } from '../support/fixture.js';

const config = exampleConfig();
const { states, slots } = labStates(config);
const session = (over: Partial<Session>): Session => ({ id: 'exec-1', cgroup: 'waymark/exec-1', uid: 1000, needs: [], deny: [], command: 'x', startedAt: '', ...over });

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
    const b = backstopFor(session({ uplink: 'wwan1' }), states, config.destinations);
    assert.equal(b.mark, markForSlot(slots.get('mms') ?? 0), 'a plain mark: the requested uplink for everything');
    assert.deepEqual([...b.deniedIfnames].sort(), ['tun0', 'wlan0', 'wwan0']);
  });

  it('mark by needs for the Internet, deny only what the needs exclude', () => {
    const b = backstopFor(session({ needs: ['unmetered'] }), states, config.destinations);
    assert.equal(b.uplink?.spec.name, 'wifi');
    assert.equal(b.mark, softMarkForSlot(slots.get('wifi') ?? 0), 'soft: destinations reachable over other uplinks still go by them');
    assert.deepEqual([...b.deniedIfnames].sort(), ['wwan0', 'wwan1']);
    const d = backstopFor(session({ deny: ['wifi'] }), states, config.destinations);
    assert.equal(d.uplink?.spec.name, 'cellular');
    assert.deepEqual(d.deniedIfnames, ['wlan0']);
  });

  it('deny by mark while the requested uplink is down', () => {
    const { states: down } = labStates(config, labKernel({ wwan1: 0 }));
    assert.equal(backstopFor(session({ uplink: 'mms' }), down, config.destinations).mark, markForSlot(DENY_SLOT));
  });
});
