import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { SrcValidMark } from '../../src/routing/sysctl.js';

it('src_valid_mark: set on the uplink devices, the old value written back when they leave or on restore', async () => {
  const root = mkdtempSync(join(tmpdir(), 'waymark-sysctl-'));
  try {
    const dev = (name: string, value: string): string => {
      mkdirSync(join(root, name));
      writeFileSync(join(root, name, 'src_valid_mark'), `${value}\n`);
      return join(root, name, 'src_valid_mark');
    };
    const [wwan0, wlan0] = [dev('wwan0', '0'), dev('wlan0', '1')];
    const s = new SrcValidMark(root);
    assert.deepEqual(await s.apply(['wwan0', 'wlan0']), []);
    assert.deepEqual([readFileSync(wwan0, 'utf8'), readFileSync(wlan0, 'utf8')], ['1\n', '1\n']);
    assert.deepEqual(await s.apply(['wlan0']), []);
    assert.equal(readFileSync(wwan0, 'utf8'), '0\n', 'wwan0 left the uplinks: its value is back');
    assert.deepEqual(await s.apply(['wwan0']), []);
    rmSync(join(root, 'wwan0'), { recursive: true }); // the device went away
    assert.deepEqual(await s.restore(), [], 'a device that is gone took its setting with it');
    assert.equal(readFileSync(wlan0, 'utf8'), '1\n', 'wlan0 was 1 before: untouched');
    const bad = await s.apply(['../x', 'nope']);
    assert.equal(bad.length, 2);
    assert.match(bad[0] ?? '', /invalid interface name/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
