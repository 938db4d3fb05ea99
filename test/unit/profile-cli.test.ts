/** `waymark profile`: the pure formatting and argument parsing (src/cli/profile.ts). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeActive, formatProfile, formatProfiles, parseRoaming, saveParams } from '../../src/cli/profile.js';
import { METHODS, type ProfileListResult, type ProfileSummary } from '../../src/daemon/protocol.js';

const home: ProfileSummary = {
  name: 'home', description: 'at home', source: 'config', file: '/etc/waymark/waymark.yaml', sims: ['8949000000000000001'], operators: ['26201'],
  roaming: 'deny', active: true, valid: true,
};
const trip: ProfileSummary = {
  name: 'trip', description: null, source: 'saved', file: '/var/lib/waymark/profiles/trip.yaml', sims: [], operators: [], roaming: { only: ['office'] },
  active: false, valid: false, problem: 'trip.yaml:5:15: profiles[0].uplinks[0].name: no uplink named "cell"',
};

describe('waymark profile', () => {
  it('lists the profiles, the active one and why, the invalid ones with their problem', () => {
    const r: ProfileListResult = { profiles: [home, trip], active: { name: 'home', by: 'sim', sim: '8949000000000000001' }, defaultProfile: 'home' };
    assert.equal(formatProfiles(r), [
      'Active: home (chosen for SIM 8949000000000000001)',
      'PROFILE  SOURCE  SIMS                 OPERATORS  ROAMING      DESCRIPTION',
      '* home   config  8949000000000000001  26201      deny         at home',
      '  trip   saved   -                    -          only office  INVALID',
      'trip (/var/lib/waymark/profiles/trip.yaml) does not fit the configuration: trip.yaml:5:15: profiles[0].uplinks[0].name: no uplink named "cell"',
      'Default (no profile names the SIM): home.',
    ].join('\n') + '\n');
    assert.equal(formatProfiles({ profiles: [], active: { name: null, by: 'none' }, defaultProfile: null }),
      'Active: none (the configuration as written)\nNo profiles (see profiles: in the configuration, or waymark profile save).\n');
  });

  it('shows what a profile changes', () => {
    const text = formatProfile({
      profile: home, uplinks: [{ name: 'cell', preference: 300, metered: false, properties: { stability: 0.9 } }],
      rules: [{ id: 'browser@home', source: 'profile', profile: 'home', order: 1, specificity: 30000, match: {}, action: { use: ['cell'] }, never: [], needs: [] }],
      budgets: [{ id: 'cell-day', uplink: 'cell', uid: null, period: 'day', start: 1, limit: { bytes: 100_000_000 }, warnAt: 0.8, block: true }],
    });
    assert.equal(text, [
      'profile home (active): from /etc/waymark/waymark.yaml (read-only)', '  at home',
      '  SIMs: 8949000000000000001; home operators: 26201; roaming uplinks: deny',
      '  uplink cell: unmetered, preference 300, stability 0.9', '  rule browser@home: use cell', '  budget cell-day: uplink cell, 100000000 bytes per day',
    ].join('\n') + '\n');
  });

  it('parses --roaming and builds profile.save params the daemon accepts', () => {
    assert.equal(parseRoaming('deny'), 'deny');
    assert.deepEqual(parseRoaming('only:office,mms'), { only: ['office', 'mms'] });
    assert.throws(() => parseRoaming('sometimes'), /allow, deny or only/);
    const p = saveParams('trip', { currentSim: true, operator: ['20801'], roaming: { only: ['office'] } });
    assert.deepEqual(p, { name: 'trip', operators: ['20801'], roaming: { only: ['office'] }, fromCurrentSim: true });
    assert.equal(METHODS['profile.save'].params.safeParse(p).success, true);
    assert.equal(METHODS['profile.use'].params.safeParse({ name: 'x', auto: true }).success, false, 'a name or auto, not both');
    assert.equal(describeActive({ name: 'trip', by: 'user' }), 'trip (chosen by the user until the next SIM change)');
  });
});
