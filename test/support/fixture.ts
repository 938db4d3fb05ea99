/** The lab device as the kernel would describe it, for pure tests of uplink state and decisions. */
import { policyOfRule, RuleSet } from '../../src/policy/rules.js';
import type { AppRule } from '../../src/policy/app.js';
import { readFileSync } from 'node:fs';
import { parseConfig, type Config } from '../../src/config/load.js';
import { EXAMPLE_CONFIG } from '../../src/lab/device.js';
import { IFF, RTN, type AddrMsg, type LinkMsg, type RouteMsg } from '../../src/netlink/message.js';
import { assignSlots } from '../../src/uplink/slots.js';
import { uplinkStates, type KernelView, type UplinkState } from '../../src/uplink/state.js';

export const UP = IFF.UP | IFF.LOWER_UP;
const link = (index: number, name: string, flags = UP): LinkMsg => ({ index, name, flags, carrier: (flags & IFF.LOWER_UP) !== 0 });
const addr = (index: number, address: string, prefixLen: number): AddrMsg => ({
  family: address.includes(':') ? 6 : 4, index, address, prefixLen, scope: 0, tentative: false, secondary: false,
});
const gw = (oif: number, gateway: string, dstLen = 0): RouteMsg => ({
  family: gateway.includes(':') ? 6 : 4, table: 254, type: RTN.UNICAST, protocol: 3, scope: 0, dstLen, oif, gateway,
});

/** The shipped example config's text; its rules (the last section, with its comment) replaced by `section` when given. */
export function exampleText(section?: string): string {
  const text = readFileSync(EXAMPLE_CONFIG, 'utf8');
  if (section === undefined) return text;
  const at = text.search(/^(# Rules per app[^\n]*\n(#[^\n]*\n)*)?rules:/m);
  return (at < 0 ? text : text.slice(0, at)) + section;
}

/** The shipped example config; its rules replaced by `section` (a rules: or apps: section) when given. */
export function exampleConfig(section?: string): Config {
  return parseConfig(exampleText(section));
}

/** Links, addresses and main-table routes of the lab's device; flags per interface may be overridden. */
export function labKernel(flags: Partial<Record<string, number>> = {}): KernelView {
  return {
    links: [link(1, 'lo', IFF.UP | IFF.LOOPBACK | IFF.LOWER_UP), link(2, 'wlan0', flags['wlan0'] ?? UP), link(3, 'wwan0', flags['wwan0'] ?? UP),
      link(4, 'wwan1', flags['wwan1'] ?? UP), link(5, 'tun0', flags['tun0'] ?? UP)],
    addrs: [
      addr(2, '192.168.50.2', 24), addr(2, 'fd00:50::2', 64), addr(2, 'fe80::1', 64),
      addr(3, '10.64.0.2', 24), addr(3, 'fd00:64::2', 64),
      addr(4, '10.64.0.2', 24), addr(4, 'fd00:64::2', 64),
      addr(5, '10.8.0.2', 24), addr(5, 'fd00:8::2', 64),
    ],
    routes: [gw(2, '192.168.50.1'), gw(2, 'fd00:50::1'), gw(3, '10.64.0.1'), gw(3, 'fd00:64::1'), gw(5, '10.8.0.1', 24), gw(5, 'fd00:8::1', 64)],
  };
}

export function labStates(config: Config, kernel: KernelView = labKernel()): { states: UplinkState[]; slots: Map<string, number> } {
  const slots = assignSlots(config.uplinks.map((u) => u.name), new Map());
  return { states: uplinkStates(config.uplinks, slots, kernel), slots };
}

/** The config's rules, compiled as the daemon does (no stored rules). */
export function rulesOf(config: Config): RuleSet {
  return RuleSet.compile(config.rules, [], config);
}

/** What one config rule allows, by name (an `apps:` entry too), as decide() takes it. */
export function ruleNamed(config: Config, name: string): AppRule | undefined {
  const r = config.rules.find((x) => x.id === name);
  return r ? policyOfRule(r) : undefined;
}
