/**
 * What Waymark keeps in its nftables table, rendered as nft text (pure): per-uplink byte
 * counters on the uplink's device (the base the accounting builds on), and the chains they count
 * in. The session backstop (src/backstop/nft.ts) adds its own chain.
 */
import { BACKSTOP_CHAIN, BACKSTOP_DNS_CHAIN, BACKSTOP_DNS_PRIORITY } from '../backstop/nft.js';
import type { BaseChain } from './nft.js';

/** Every base chain of our table; each update flushes and refills them all (or, optional ones, deletes and re-declares them when needed). */
export const CHAINS: readonly BaseChain[] = [
  { name: 'egress', hook: 'postrouting' },
  { name: 'ingress', hook: 'prerouting' },
  { name: BACKSTOP_CHAIN, hook: 'output' },
  { name: BACKSTOP_DNS_CHAIN, hook: 'output', type: 'nat', priority: BACKSTOP_DNS_PRIORITY, optional: true },
];
export interface CountedUplink {
  readonly name: string;
  readonly ifname: string;
}

/**
 * An uplink's name as it appears in nftables identifiers: nft names take no "-", so it becomes
 * "_". Two uplinks whose names differ only there would share counters; the config loader
 * rejects that (src/config/load.ts), so this mapping is one-to-one for every loaded config.
 */
export const nftUplinkId = (uplink: string): string => uplink.replace(/-/g, '_');

export const counterName = (uplink: string, dir: 'tx' | 'rx'): string => `uplink_${nftUplinkId(uplink)}_${dir}`;

export function renderRuleset(uplinks: readonly CountedUplink[]): string {
  const counters = uplinks.flatMap((u) => [`  counter ${counterName(u.name, 'tx')} { }`, `  counter ${counterName(u.name, 'rx')} { }`]);
  const q = (s: string): string => JSON.stringify(s);
  return [
    ...counters,
    '  chain egress {',
    '    type filter hook postrouting priority 0; policy accept;',
    ...uplinks.map((u) => `    oifname ${q(u.ifname)} counter name ${counterName(u.name, 'tx')}`),
    '  }',
    '  chain ingress {',
    '    type filter hook prerouting priority 0; policy accept;',
    ...uplinks.map((u) => `    iifname ${q(u.ifname)} counter name ${counterName(u.name, 'rx')}`),
    '  }',
    '',
  ].join('\n');
}
