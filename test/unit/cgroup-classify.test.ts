/**
 * classifyCgroup() (src/identity/cgroup.ts) on cgroup paths as systemd, desktops, Flatpak and
 * containers make them, and on hostile ones.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { classifyCgroup, unitOf, type CgroupApp } from '../../src/identity/cgroup.js';
import { appOfUnit, isUnitName } from '../../src/identity/unit.js';

const U = 'user.slice/user-1000.slice';
const M = `${U}/user@1000.service`;
const APPS = `${M}/app.slice`;

const app = (unit: string, appId: string, launcher: string | null, extra: Partial<CgroupApp> = {}): CgroupApp => ({
  kind: 'app', unit, appId, launcher, flatpakId: null, uid: 1000, name: appId, nested: false, ...extra,
});
const other = (kind: CgroupApp['kind'], unit: string, uid: number | null, extra: Partial<CgroupApp> = {}): CgroupApp => ({
  kind, unit, appId: null, launcher: null, flatpakId: null, uid, name: unit, nested: false, ...extra,
});

describe('classifyCgroup: desktop apps', () => {
  it('GNOME scopes, with the launcher and escaped dashes', () => {
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome-org.gnome.Chat-1234.scope`),
      app('app-gnome-org.gnome.Chat-1234.scope', 'org.gnome.Chat', 'gnome'));
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome-chat-42.scope`), app('app-gnome-chat-42.scope', 'chat', 'gnome'));
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome-firefox\\x2desr-12345.scope`),
      app('app-gnome-firefox\\x2desr-12345.scope', 'firefox-esr', 'gnome'));
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome-org.gnome.Evolution\\x2dalarm\\x2dnotify-1858.scope`),
      app('app-gnome-org.gnome.Evolution\\x2dalarm\\x2dnotify-1858.scope', 'org.gnome.Evolution-alarm-notify', 'gnome'));
  });

  it('KDE scopes and services, @ instances, no launcher', () => {
    assert.deepEqual(classifyCgroup(`${APPS}/app-org.kde.konsole-9a8b7c.scope`), app('app-org.kde.konsole-9a8b7c.scope', 'org.kde.konsole', null));
    assert.deepEqual(classifyCgroup(`${APPS}/app-org.kde.kdeconnect.daemon@autostart.service`),
      app('app-org.kde.kdeconnect.daemon@autostart.service', 'org.kde.kdeconnect.daemon', null));
    assert.deepEqual(classifyCgroup(`${APPS}/app-kde-org.kde.dolphin.service`), app('app-kde-org.kde.dolphin.service', 'org.kde.dolphin', 'kde'));
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome-org.gnome.Terminal@c0ffee.service`),
      app('app-gnome-org.gnome.Terminal@c0ffee.service', 'org.gnome.Terminal', 'gnome'));
    // A launcher may hold dashes; the ID's own are escaped, so the last dash splits them.
    assert.equal(classifyCgroup(`${APPS}/app-gnome\\x2dsession-org.foo.App-7.scope`)?.launcher, 'gnome-session');
  });

  it('Flatpak scopes: the Flatpak ID is the name', () => {
    assert.deepEqual(classifyCgroup(`${APPS}/app-flatpak-org.mozilla.firefox-12345.scope`),
      app('app-flatpak-org.mozilla.firefox-12345.scope', 'org.mozilla.firefox', 'flatpak', { flatpakId: 'org.mozilla.firefox' }));
    // Flatpak escapes the ID (systemd_unit_name_escape in flatpak-run.c): a dash inside is \x2d.
    assert.equal(classifyCgroup(`${APPS}/app-flatpak-io.github.my\\x2dapp-4242.scope`)?.flatpakId, 'io.github.my-app');
    // A Flatpak *service* name is not a Flatpak scope: an app, but no Flatpak ID.
    assert.equal(classifyCgroup(`${APPS}/app-flatpak-org.foo.Bar.service`)?.flatpakId, null);
  });

  it('XDG autostart services and browser web apps', () => {
    // systemd-xdg-autostart-generator: app-<desktop id>@autostart.service.
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome\\x2dkeyring\\x2dpkcs11@autostart.service`),
      app('app-gnome\\x2dkeyring\\x2dpkcs11@autostart.service', 'gnome-keyring-pkcs11', null));
    assert.equal(classifyCgroup(`${APPS}/app-gnome-xdg\\x2duser\\x2ddirs-1377.scope`)?.appId, 'xdg-user-dirs');
    assert.equal(classifyCgroup(`${APPS}/app-gnome-chrome\\x2dfmgjjmmmlfnkbppncabfkddbjimcfncm\\x2dDefault-8123.scope`)?.appId,
      'chrome-fmgjjmmmlfnkbppncabfkddbjimcfncm-Default');
  });

  it('a leading slash and empty components are ignored (paths from /proc/PID/cgroup)', () => {
    assert.deepEqual(classifyCgroup(`/${APPS}//app-gnome-chat-42.scope/`), app('app-gnome-chat-42.scope', 'chat', 'gnome'));
  });
});

describe('classifyCgroup: services, sessions, scopes, slices', () => {
  it('system services, template instances, no uid', () => {
    assert.deepEqual(classifyCgroup('system.slice/nginx.service'), other('service', 'nginx.service', null));
    assert.deepEqual(classifyCgroup('system.slice/system-getty.slice/getty@tty1.service'), other('service', 'getty@tty1.service', null));
    assert.deepEqual(classifyCgroup('system.slice/systemd-journald.service'), other('service', 'systemd-journald.service', null));
    assert.deepEqual(classifyCgroup('init.scope'), other('scope', 'init.scope', null));
  });

  it('login sessions: session-N.scope under user-UID.slice', () => {
    assert.deepEqual(classifyCgroup(`${U}/session-3.scope`), other('login', 'session-3.scope', 1000));
    assert.deepEqual(classifyCgroup('user.slice/user-0.slice/session-c1.scope'), other('login', 'session-c1.scope', 0));
    // Not where logind puts them: plain scopes.
    assert.equal(classifyCgroup('system.slice/session-3.scope')?.kind, 'scope');
    assert.deepEqual(classifyCgroup(`${APPS}/session-3.scope`), other('scope', 'session-3.scope', 1000));
  });

  it('the user manager and the user units in it', () => {
    assert.deepEqual(classifyCgroup(M), other('service', 'user@1000.service', 1000));
    assert.deepEqual(classifyCgroup(`${M}/init.scope`), other('scope', 'init.scope', 1000));
    assert.deepEqual(classifyCgroup(`${M}/session.slice/org.gnome.Shell@wayland.service`), other('service', 'org.gnome.Shell@wayland.service', 1000));
    assert.deepEqual(classifyCgroup(`${M}/app.slice/dbus-:1.2-org.freedesktop.portal.Desktop@0.service`),
      other('service', 'dbus-:1.2-org.freedesktop.portal.Desktop@0.service', 1000));
    assert.deepEqual(classifyCgroup(`${M}/background.slice/run-r1b2c3.scope`), other('scope', 'run-r1b2c3.scope', 1000));
    // The uid comes from the manager when the slice does not name it.
    assert.equal(classifyCgroup('user.slice/user@1001.service/app.slice/app-foo-1.scope')?.uid, 1001);
  });

  it('slices, the root and plain directories among the slices: null', () => {
    for (const rel of ['', '/', 'user.slice', U, `${M}/app.slice`, 'system.slice', 'system.slice/system-getty.slice',
      'waymark', 'waymark/exec-42', 'waymark/exec-42/app-gnome-chat-42.scope', 'foo/bar.service', 'machine.slice/plain']) {
      assert.equal(classifyCgroup(rel), null, rel);
    }
  });
});

describe('classifyCgroup: nested cgroups belong to the enclosing unit', () => {
  it('a delegated subtree below a unit', () => {
    assert.deepEqual(classifyCgroup('system.slice/docker.service/sub/leaf'), other('service', 'docker.service', null, { nested: true }));
    assert.deepEqual(classifyCgroup(`${APPS}/app-gnome-chat-42.scope/renderer`),
      app('app-gnome-chat-42.scope', 'chat', 'gnome', { nested: true }));
  });

  it('a nested systemd (container) cannot name system units or users: the container unit', () => {
    const c = 'machine.slice/systemd-nspawn@deb.service/payload';
    assert.deepEqual(classifyCgroup(`${c}/system.slice/nginx.service`), other('service', 'systemd-nspawn@deb.service', null, { nested: true }));
    assert.deepEqual(classifyCgroup(`${c}/user.slice/user-0.slice/session-1.scope`),
      other('service', 'systemd-nspawn@deb.service', null, { nested: true }));
  });

  it('a unit-named directory a user made inside an app is still that app', () => {
    const r = classifyCgroup(`${APPS}/app-gnome-chat-42.scope/app-flatpak-org.bank.App-1.scope`);
    assert.equal(r?.unit, 'app-gnome-chat-42.scope');
    assert.equal(r?.flatpakId, null);
    assert.equal(r?.nested, true);
  });

  it("below the user manager, a user's plain directories are the manager's, and never another uid", () => {
    assert.deepEqual(classifyCgroup(`${M}/mine`), other('service', 'user@1000.service', 1000, { nested: true }));
    assert.deepEqual(classifyCgroup(`${M}/app.slice/mine/app-x-1.scope`), other('service', 'user@1000.service', 1000, { nested: true }));
    // A user-0.slice inside a user's own manager does not make root's units.
    assert.deepEqual(classifyCgroup(`${M}/user-0.slice/session-1.scope`), other('scope', 'session-1.scope', 1000));
    assert.equal(classifyCgroup(`${M}/user.slice/user-0.slice/user@0.service/app.slice/app-x-1.scope`)?.unit, 'user@0.service');
  });
});

describe('classifyCgroup: hostile names', () => {
  it('names outside the unit charset are plain directories', () => {
    for (const name of ['evil\nname.service', 'a b.scope', 'x/../y.service', 'é.service', '.service', 'a\\y.service', `${'a'.repeat(250)}.service`]) {
      assert.equal(isUnitName(name), false, JSON.stringify(name));
      assert.equal(classifyCgroup(`system.slice/${name}`), null, JSON.stringify(name));
    }
    assert.equal(isUnitName(`${'a'.repeat(247)}.service`), true);
  });

  it('an application ID that unescapes to control characters, slashes or spaces is not an app', () => {
    for (const unit of ['app-gnome-evil\\x1b\\x5b31m-1.scope', 'app-gnome-a\\x2fb-1.scope', 'app-gnome-a\\x20b-1.scope',
      'app-gnome-a\\x0ab-1.scope', 'app-gnome-\\x00-1.scope', 'app-ev\\x0ail-org.foo.App-1.scope']) {
      assert.equal(appOfUnit(unit), null, unit);
      const r = classifyCgroup(`${APPS}/${unit}`);
      assert.equal(r?.kind, 'scope', unit);
      assert.equal(r?.appId, null, unit);
      assert.equal(r?.name, unit, unit);
    }
  });

  it('incomplete app names: no RANDOM, no ID', () => {
    assert.equal(classifyCgroup(`${APPS}/app-foo-.scope`)?.kind, 'scope');
    assert.equal(classifyCgroup(`${APPS}/app-nodash.scope`)?.kind, 'scope');
    assert.equal(classifyCgroup(`${APPS}/app-.service`)?.kind, 'service');
    assert.equal(classifyCgroup(`${APPS}/app-gnome--1.scope`)?.kind, 'scope');
  });

  it('absurd uids are not uids', () => {
    assert.equal(classifyCgroup('user.slice/user-99999999999.slice/session-1.scope')?.uid, null);
    assert.equal(classifyCgroup('user.slice/user-4294967295.slice/session-1.scope')?.uid, 4294967295);
  });
});

describe('unitOf: the same rule for identify()', () => {
  it('agrees with classifyCgroup', () => {
    assert.equal(unitOf(`/${APPS}/app-gnome-chat-42.scope/x`), 'app-gnome-chat-42.scope');
    assert.equal(unitOf('/machine.slice/systemd-nspawn@deb.service/payload/system.slice/nginx.service'), 'systemd-nspawn@deb.service');
    assert.equal(unitOf('/'), null);
    assert.equal(unitOf(null), null);
  });
});
