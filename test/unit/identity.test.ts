/**
 * identify() (src/identity/app.ts) on a fake /proc tree written to a temp dir, the unit-name
 * parsers, and one real check on this process.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  appOfUnit, commOf, flatpakOfUnit, identify, parseCgroupFile, parseFlatpakInfo, startTimeOf, unitOf,
} from '../../src/identity/app.js';

/** A /proc/PID/stat line; comm may hold spaces and parentheses. */
const statLine = (pid: number, comm: string, start: number): string =>
  `${pid} (${comm}) S 1 ${pid} ${pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 ${start} 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n`;

const HYBRID_V1 = ['12:pids:/', '11:memory:/', '1:name=systemd:/'];

interface FakeProc {
  stat?: string;
  exe?: string;
  cgroup?: string;
  flatpakInfo?: string | { symlinkTo: string };
}

function writeProc(root: string, pid: number, p: FakeProc): void {
  const dir = path.join(root, String(pid));
  mkdirSync(path.join(dir, 'root'), { recursive: true });
  if (p.stat !== undefined) writeFileSync(path.join(dir, 'stat'), p.stat);
  if (p.exe !== undefined) symlinkSync(p.exe, path.join(dir, 'exe'));
  if (p.cgroup !== undefined) writeFileSync(path.join(dir, 'cgroup'), p.cgroup);
  if (typeof p.flatpakInfo === 'string') writeFileSync(path.join(dir, 'root', '.flatpak-info'), p.flatpakInfo);
  else if (p.flatpakInfo !== undefined) symlinkSync(p.flatpakInfo.symlinkTo, path.join(dir, 'root', '.flatpak-info'));
}

const caller = (pid: number) => ({ pid, uid: 1000, gid: 1000 });

describe('unit and cgroup parsing', () => {
  it('finds the comm and the start time after it, with spaces and parentheses in the comm', () => {
    assert.equal(startTimeOf(statLine(5, 'a) (b c', 987654)), '987654');
    assert.equal(startTimeOf('garbage'), null);
    assert.equal(startTimeOf('5 (x) S 1'), null);
    assert.equal(commOf(statLine(5, 'a) (b c', 987654)), 'a) (b c');
    assert.equal(commOf('garbage'), null);
  });

  it('reads the v2 line and the v1 name=systemd line', () => {
    assert.deepEqual(parseCgroupFile(['9:name=systemd:/system.slice/a.service', '4:memory:/x', '0::/'].join('\n')), {
      v2: '/', systemdV1: '/system.slice/a.service',
    });
    assert.deepEqual(parseCgroupFile('0::/weird:path/x.scope\n'), { v2: '/weird:path/x.scope', systemdV1: null });
    assert.deepEqual(parseCgroupFile('3:cpu:/\n'), { v2: null, systemdV1: null });
  });

  it('takes the enclosing unit (the first service or scope below the slices) as the unit', () => {
    assert.equal(unitOf('/system.slice/nginx.service'), 'nginx.service');
    assert.equal(unitOf('/system.slice/docker.service/sub/leaf'), 'docker.service');
    assert.equal(unitOf('/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-4242.scope'), 'app-gnome-firefox-4242.scope');
    assert.equal(unitOf('/waymark/exec-1234'), null);
    assert.equal(unitOf('/'), null);
    assert.equal(unitOf(null), null);
  });

  it('derives the application ID of desktop app units', () => {
    assert.deepEqual(appOfUnit('app-flatpak-org.foo.Bar-1234.scope'), { launcher: 'flatpak', app: 'org.foo.Bar' });
    assert.deepEqual(appOfUnit('app-gnome-org.gnome.Terminal-5678.scope'), { launcher: 'gnome', app: 'org.gnome.Terminal' });
    assert.deepEqual(appOfUnit('app-org.kde.konsole-9.scope'), { launcher: null, app: 'org.kde.konsole' });
    assert.deepEqual(appOfUnit('app-firefox@a1b2c3.service'), { launcher: null, app: 'firefox' });
    assert.deepEqual(appOfUnit('app-kde-org.kde.dolphin.service'), { launcher: 'kde', app: 'org.kde.dolphin' });
    assert.deepEqual(appOfUnit('app-gnome-my\\x2dapp-77.scope'), { launcher: 'gnome', app: 'my-app' });
    assert.equal(appOfUnit('app-nodash.scope'), null); // a scope needs its -RANDOM
    assert.equal(appOfUnit('nginx.service'), null);
    assert.equal(appOfUnit('session-3.scope'), null);
    assert.equal(appOfUnit(null), null);
    assert.equal(flatpakOfUnit('app-flatpak-org.foo.Bar-1234.scope'), 'org.foo.Bar');
    assert.equal(flatpakOfUnit('app-gnome-org.foo.Bar-1234.scope'), null);
  });

  it('reads [Application] name= of .flatpak-info only', () => {
    assert.equal(parseFlatpakInfo('[Instance]\nname=nope\n[Application]\n# c\nruntime=x\nname = org.foo.Bar \n'), 'org.foo.Bar');
    assert.equal(parseFlatpakInfo('[Runtime]\nname=org.freedesktop.Platform\n'), null);
    assert.equal(parseFlatpakInfo(''), null);
  });
});

describe('identify() on a fake /proc', () => {
  let root: string;
  let secret: string;
  before(() => {
    root = mkdtempSync(path.join(os.tmpdir(), 'wm-proc-'));
    secret = path.join(root, 'secret');
    writeFileSync(secret, '[Application]\nname=read.through.a.symlink\n');
    // A flatpak app in hybrid mode: its v2 path is the scope.
    writeProc(root, 1234, {
      stat: statLine(1234, 'bar (worker)', 5000),
      exe: '/app/bin/bar (deleted)',
      cgroup: [...HYBRID_V1, '0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.foo.Bar-1234.scope', ''].join('\n'),
      flatpakInfo: '[Application]\nname=org.foo.Bar\nruntime=runtime/org.freedesktop.Platform/x86_64/23.08\n',
    });
    // A system service seen in hybrid mode: "0::/", the unit is in the v1 systemd hierarchy.
    writeProc(root, 2000, {
      stat: statLine(2000, 'nginx', 100),
      exe: '/usr/sbin/nginx',
      cgroup: ['12:pids:/system.slice/nginx.service', '1:name=systemd:/system.slice/nginx.service', '0::/', ''].join('\n'),
    });
    // A planted symlink as .flatpak-info: ignored; the scope name still counts.
    writeProc(root, 3000, {
      stat: statLine(3000, 'x', 1),
      exe: '/usr/bin/x',
      cgroup: '0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.real.App-5.scope\n',
      flatpakInfo: { symlinkTo: secret },
    });
    // waymark exec's own cgroup, no unit; unreadable exe (no link).
    writeProc(root, 4000, { stat: statLine(4000, 'curl', 77), cgroup: '0::/waymark/exec-4000\n' });
    // A process that is gone (only a directory left) and one with a broken stat.
    mkdirSync(path.join(root, '5000'));
    writeProc(root, 6000, { stat: 'nonsense' });
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it('a flatpak app: exe without " (deleted)", comm, v2 cgroup, scope unit, app and flatpak ID', () => {
    assert.deepEqual(identify(caller(1234), root), {
      pid: 1234, uid: 1000, gid: 1000,
      exe: '/app/bin/bar', comm: 'bar (worker)',
      cgroup: '/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.foo.Bar-1234.scope',
      unit: 'app-flatpak-org.foo.Bar-1234.scope', app: 'org.foo.Bar', flatpakId: 'org.foo.Bar', startTime: '5000',
    });
  });

  it('hybrid mode: cgroup "/" as reported, the unit from name=systemd', () => {
    const id = identify(caller(2000), root);
    assert.equal(id.cgroup, '/');
    assert.equal(id.unit, 'nginx.service');
    assert.equal(id.app, null);
    assert.equal(id.flatpakId, null);
    assert.equal(id.exe, '/usr/sbin/nginx');
  });

  it('does not follow a symlinked .flatpak-info', () => {
    const id = identify(caller(3000), root);
    assert.equal(id.flatpakId, 'org.real.App');
    assert.notEqual(id.flatpakId, 'read.through.a.symlink');
  });

  it('no unit, unreadable exe', () => {
    const id = identify(caller(4000), root);
    assert.deepEqual({ exe: id.exe, comm: id.comm, cgroup: id.cgroup, unit: id.unit }, { exe: null, comm: 'curl', cgroup: '/waymark/exec-4000', unit: null });
  });

  it('null fields for a vanished process, a bad stat, a bad pid, or a changed start time', () => {
    const nulls = { exe: null, comm: null, cgroup: null, unit: null, app: null, flatpakId: null, startTime: null };
    for (const pid of [5000, 6000, 7000, 0, -1]) {
      assert.deepEqual(identify(caller(pid), root), { pid, uid: 1000, gid: 1000, ...nulls }, `pid ${pid}`);
    }
    assert.deepEqual(identify(caller(2000), root, { expectStartTime: '101' }), { ...caller(2000), ...nulls });
    assert.equal(identify(caller(2000), root, { expectStartTime: '100' }).unit, 'nginx.service');
    // The process exits and its pid is reused while we read: the second stat differs.
    const statPath = path.join(root, '2000', 'stat');
    const saved = readFileSync(statPath, 'utf8');
    try {
      assert.deepEqual(identify(caller(2000), root, { afterRead: () => writeFileSync(statPath, statLine(2000, 'other', 999)) }), { ...caller(2000), ...nulls });
      writeFileSync(statPath, saved);
      assert.deepEqual(identify(caller(2000), root, { afterRead: () => rmSync(statPath) }), { ...caller(2000), ...nulls });
    } finally {
      writeFileSync(statPath, saved);
    }
  });
});

describe('identify() on real processes', () => {
  it('this process', () => {
    const me = { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() };
    const id = identify(me);
    assert.equal(id.exe, realpathSync(process.execPath));
    assert.equal(id.comm, readFileSync('/proc/self/comm', 'utf8').trim());
    const v2 = /^0::(.*)$/m.exec(readFileSync('/proc/self/cgroup', 'utf8'))?.[1] ?? null;
    assert.equal(id.cgroup, v2);
    assert.equal(id.startTime, startTimeOf(readFileSync('/proc/self/stat', 'utf8')));
    assert.ok(id.startTime !== null);
    assert.equal(readlinkSync('/proc/self/exe'), id.exe);
  });

  it('a process that has exited', async () => {
    const child = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    const pid = child.pid!;
    const alive = identify({ pid, uid: 0, gid: 0 });
    await new Promise((r) => child.once('exit', r)); // emitted once Node's SIGCHLD handler has reaped it
    const gone = identify({ pid, uid: 0, gid: 0 });
    assert.equal(gone.exe, null);
    assert.equal(gone.startTime, null);
    // Where it was seen alive, its identity had a start time: one with it must now fail.
    if (alive.startTime !== null) assert.equal(identify({ pid, uid: 0, gid: 0 }, '/proc', { expectStartTime: alive.startTime }).exe, null);
  });
});
