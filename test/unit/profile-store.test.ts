import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config/load.js';
import { parseProfileDocument } from '../../src/profile/profile.js';
import { ProfileStore } from '../../src/profile/store.js';

const base = parseConfig('version: 1\nuplinks:\n  - { name: wifi, match: wlan0, kind: wifi }\n  - { name: cell, match: wwan0, kind: cellular }\n', 'base.yaml');
const without = parseConfig('version: 1\nuplinks:\n  - { name: wifi, match: wlan0, kind: wifi }\n', 'base.yaml');
const doc = 'version: 1\nprofiles:\n  - name: trip\n    uplinks:\n      - name: cell\n        preference: 7\n';

describe('ProfileStore', () => {
  it('saves atomically with modes 0700/0600 and loads what it saved', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wm-profiles-'));
    try {
      const s = new ProfileStore(dir);
      await s.save(parseProfileDocument(doc, 'in.yaml', base));
      assert.equal(statSync(join(dir, 'profiles')).mode & 0o777, 0o700);
      assert.equal(statSync(join(dir, 'profiles', 'trip.yaml')).mode & 0o777, 0o600);
      assert.deepEqual(readdirSync(join(dir, 'profiles')), ['trip.yaml'], 'no temp file left');
      assert.equal(readFileSync(join(dir, 'profiles', 'trip.yaml'), 'utf8'), doc);
      const again = new ProfileStore(dir);
      await again.load(base);
      assert.deepEqual(again.all().map((p) => [p.name, p.profile?.uplinks[0]?.preference, p.problem]), [['trip', 7, undefined]]);
      assert.equal(await again.remove('trip'), true);
      assert.deepEqual(readdirSync(join(dir, 'profiles')), []);
      assert.equal(await again.remove('trip'), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps a file that no longer fits, reports it and lists it as invalid; revalidate fits it again', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'wm-profiles-'));
    try {
      const reported: string[] = [];
      const s = new ProfileStore(dir, (name, _file, why) => reported.push(`${name}: ${why}`));
      await s.save(parseProfileDocument(doc, 'in.yaml', base));
      writeFileSync(join(dir, 'profiles', 'Bad..yaml'), 'ignored: true\n');
      await s.load(without);
      assert.equal(s.get('trip')?.profile, undefined);
      assert.match(s.get('trip')?.problem ?? '', /trip\.yaml:5:15: profiles\[0\]\.uplinks\[0\]\.name: no uplink named "cell"/);
      assert.equal(reported.length, 1);
      assert.ok(statSync(join(dir, 'profiles', 'trip.yaml')).isFile(), 'kept on disk');
      s.revalidate(base);
      assert.equal(s.get('trip')?.profile?.name, 'trip');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses names that could make paths', async () => {
    const s = new ProfileStore(mkdtempSync(join(tmpdir(), 'wm-profiles-')));
    await assert.rejects(s.remove('../state'), /invalid profile name/);
  });
});
