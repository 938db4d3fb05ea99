/**
 * What Waymark keeps in its nftables table, rendered as nft text (pure): per-uplink byte
 * counters on the uplink's device (the base the accounting builds on), the chains they count
 * in, and the reverse-path marks (below): this part's contribution to the table model
 * (src/nftables/table.ts). The session backstop (src/backstop/nft.ts) contributes its own.
 *
 * Reverse-path marks. With rp_filter on (a stock host: 2, loose; Ubuntu and systemd's
 * 50-default.conf set it), a packet arriving on an uplink passes only if the kernel finds a
 * route back to its sender, looked up with mark 0 and iif lo: our oif and fwmark rules do not
 * apply, so with no default left in `main` (Wi-Fi down, a modem whose connection manager keeps
 * its default out of main) and an address two APNs share (no `from` rule), every reply on the
 * cellular APN was dropped (TcpExtIPReversePathFilter). Per-device rp_filter=0 does not help
 * either: the kernel uses max(all, dev). So the chain `rpath` gives every packet arriving on an
 * uplink for this host the uplink's own mark (only our bits), before routing, and the daemon sets
 * the uplink device's `src_valid_mark` (OR'ed with `all`, src/routing/sysctl.ts), so the check
 * looks up with that mark and finds the uplink's table: replies pass, even under strict
 * rp_filter=1, and a sender the uplink's table does not reach is still dropped. Only packets
 * addressed to this host (fib daddr type local): forwarded traffic keeps its mark and its route.
 */
import { MARK_MASK } from '../constants.js';
import type { UplinkState } from '../uplink/state.js';
import type { Chain, Contribution } from './table.js';

/** Before conntrack (-200) and before a fib-based rpfilter (firewalld's at -290) reads the mark. */
export const RPATH_PRIORITY = -300;

/** The chains the uplinks' counters and reverse-path marks live in. */
export const UPLINK_CHAINS: readonly Chain[] = [
  { name: 'egress', hook: 'postrouting' },
  { name: 'ingress', hook: 'prerouting' },
  { name: 'rpath', hook: 'prerouting', priority: RPATH_PRIORITY },
];

export interface CountedUplink {
  readonly name: string;
  readonly ifname: string;
  /** The uplink's mark, for its arriving packets (see above); absent while it is not active. */
  readonly mark?: number;
}

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

/**
 * An uplink's name as it appears in nftables identifiers: nft names take no "-", so it becomes
 * "_". Two uplinks whose names differ only there would share counters; the config loader
 * rejects that (src/config/load.ts), so this mapping is one-to-one for every loaded config.
 */
export const nftUplinkId = (uplink: string): string => uplink.replace(/-/g, '_');

export const counterName = (uplink: string, dir: 'tx' | 'rx'): string => `uplink_${nftUplinkId(uplink)}_${dir}`;

/** The uplinks' part of the table: their counters, what counts into them, their reverse-path marks. */
export function uplinkRules(uplinks: readonly CountedUplink[]): Contribution {
  const q = (s: string): string => JSON.stringify(s);
  return {
    counters: uplinks.flatMap((u) => [counterName(u.name, 'tx'), counterName(u.name, 'rx')]),
    rules: {
      egress: uplinks.map((u) => `oifname ${q(u.ifname)} counter name ${counterName(u.name, 'tx')}`),
      ingress: uplinks.map((u) => `iifname ${q(u.ifname)} counter name ${counterName(u.name, 'rx')}`),
      rpath: uplinks.flatMap((u) => (u.mark === undefined ? [] : [
        `iifname ${q(u.ifname)} fib daddr type local meta mark set meta mark and ${hex(~MARK_MASK)} or ${hex(u.mark & MARK_MASK)}`,
      ])),
    },
  };
}

/** The uplinks the table counts: each with a device; active ones also get their reverse-path mark. */
export function countedUplinks(states: readonly UplinkState[]): CountedUplink[] {
  return states.flatMap((s) => (s.link
    ? [{ name: s.spec.name, ifname: s.link.name, ...(s.status === 'active' ? { mark: s.mark } : {}) }]
    : []));
}
