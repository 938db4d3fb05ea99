import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decide, NO_WISH, type Decision, type Wish } from '../../src/decision/decide.js';
import { parseAddress } from '../../src/net/prefix.js';
import { exampleConfig, labKernel, labStates, ruleNamed } from '../support/fixture.js';

const APPS = `
apps:
  - name: chat
    match: { exe: /usr/bin/chat }
    uplinks: [cellular]
  - name: browser
    match: { exe: /usr/bin/browser }
    uplinks: [wifi, cellular]
  - name: frugal
    match: { uid: 1000 }
    deny: [cellular]
`;
const config = exampleConfig(APPS);
const { states } = labStates(config);
const app = (name: string) => ruleNamed(config, name);

function to(address: string, wish: Wish = NO_WISH, appName?: string, s = states): Decision {
  const a = parseAddress(address);
  assert.ok(a);
  const rule = appName ? app(appName) : undefined;
  return decide({ uplinks: s, destinations: config.destinations, wish, family: a.family, addr: a.bytes, ...(rule ? { app: rule } : {}) });
}
const summary = (d: Decision): string => (d.action === 'steer' ? `steer ${d.uplink.spec.name}` : d.action === 'deny' ? `deny ${d.err}` : 'pass');

describe('decide', () => {
  it('passes traffic nobody has an opinion about to the default route', () => {
    assert.equal(summary(to('198.51.100.10')), 'pass');
    assert.equal(summary(to('10.200.0.10')), 'pass');
    assert.equal(to('10.200.0.10').destination, 'mms');
  });

  it('honours a requested uplink only where it reaches the destination', () => {
    assert.equal(summary(to('198.51.100.10', { ...NO_WISH, uplink: 'wwan0' })), 'steer cellular');
    assert.equal(summary(to('fd00:200::10', { ...NO_WISH, uplink: 'mms' })), 'steer mms');
    const d = to('198.51.100.10', { ...NO_WISH, uplink: 'mms' });
    assert.equal(summary(d), 'deny ENETUNREACH');
    assert.match(d.reason, /mms does not reach internet/);
    assert.equal(summary(to('198.51.100.10', { ...NO_WISH, uplink: 'nope' })), 'deny ENETUNREACH');
  });

  it('reaches an uplink\'s own link and DNS servers over it', () => {
    assert.equal(summary(to('10.64.0.1', { ...NO_WISH, uplink: 'mms' })), 'steer mms');
    assert.equal(summary(to('fd00:64::1', { ...NO_WISH, uplink: 'wwan1' })), 'steer mms');
    assert.equal(summary(to('10.8.0.1', { ...NO_WISH, uplink: 'office-vpn' })), 'steer office-vpn');
    assert.equal(summary(to('10.8.0.1', { ...NO_WISH, uplink: 'mms' })), 'deny ENETUNREACH');
  });

  it('never lets a request override the config', () => {
    const d = to('198.51.100.10', { ...NO_WISH, uplink: 'wifi' }, 'chat');
    assert.equal(summary(d), 'deny EACCES');
    assert.match(d.reason, /not allowed for app chat/);
    assert.equal(summary(to('198.51.100.10', { ...NO_WISH, uplink: 'cellular' }, 'frugal')), 'deny EACCES');
    assert.equal(summary(to('198.51.100.10', { ...NO_WISH, destination: 'office' })), 'deny EACCES');
  });

  it('applies per-app defaults: allowed uplinks in order, denials', () => {
    assert.equal(summary(to('198.51.100.10', NO_WISH, 'chat')), 'steer cellular');
    assert.equal(summary(to('198.51.100.10', NO_WISH, 'browser')), 'steer wifi');
    assert.equal(summary(to('198.51.100.10', NO_WISH, 'frugal')), 'steer wifi');
    assert.equal(summary(to('10.200.0.10', NO_WISH, 'chat')), 'deny EACCES', 'chat may only use cellular, which does not reach the MMSC');
    // Wi-Fi down: the browser falls back to cellular, frugal has nothing left.
    const { states: noWifi } = labStates(config, labKernel({ wlan0: 0 }));
    assert.equal(summary(to('198.51.100.10', NO_WISH, 'browser', noWifi)), 'steer cellular');
    // What frugal may use (Wi-Fi) is down: unreachable for now, not refused.
    assert.equal(summary(to('198.51.100.10', NO_WISH, 'frugal', noWifi)), 'deny ENETUNREACH');
    assert.equal(summary(to('198.51.100.10', { ...NO_WISH, deny: ['wifi'] }, 'frugal', noWifi)), 'deny EACCES', 'nothing it may use at all: refused');
  });

  it('ranks by needs', () => {
    const need = (...needs: Wish['needs']): Wish => ({ ...NO_WISH, needs });
    assert.equal(summary(to('198.51.100.10', need('cheapest'))), 'steer wifi');
    assert.equal(summary(to('198.51.100.10', need('long-lived'))), 'steer cellular');
    assert.equal(summary(to('198.51.100.10', need('max-bandwidth'))), 'steer wifi');
    assert.equal(summary(to('2001:db8:100::10', need('unmetered'))), 'steer wifi');
    const { states: noWifi } = labStates(config, labKernel({ wlan0: 0 }));
    assert.equal(summary(to('198.51.100.10', need('unmetered'), undefined, noWifi)), 'deny ENETUNREACH', 'the unmetered uplink is down');
    assert.equal(summary(to('172.16.5.10', need('cheapest'))), 'steer office-vpn');
  });

  it('refuses when no uplink reaching the destination is up', () => {
    const { states: vpnDown } = labStates(config, labKernel({ tun0: 0 }));
    const d = to('172.16.5.10', { ...NO_WISH, needs: ['cheapest'] }, undefined, vpnDown);
    assert.equal(summary(d), 'deny ENETUNREACH');
    assert.equal(summary(to('172.16.5.10', { ...NO_WISH, uplink: 'tun0' }, undefined, vpnDown)), 'deny ENETUNREACH');
  });
});
