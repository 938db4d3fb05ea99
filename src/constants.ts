/**
 * Every kernel number Waymark uses, in one place, each with the reason it was chosen.
 * Mirrored for C in native/include/waymark_kernel.h (a unit test keeps the two in step).
 *
 * Neighbours we stay clear of:
 *   - routing tables: 52 (Tailscale), 51820 (wg-quick), 253..255 (default/main/local),
 *     1000+ifindex (Android), NetworkManager/systemd-networkd use main or admin-chosen ids.
 *   - fwmark bits: 0x00ff0000 (Tailscale), 0x0000c000 (kube-proxy/Docker), 0x00000f00 (Cilium),
 *     0x0000ca6c (wg-quick's default fwmark 51820). Calico's default 0xffff0000 does overlap;
 *     moving the mask means changing it here and in native/include/waymark_kernel.h (it is not
 *     a setting).
 *   - rule priorities: 0 (local), 5210..5270 (Tailscale), 32764/32765 (wg-quick),
 *     32766/32767 (main/default). Ours sit below Tailscale so an explicitly chosen uplink wins
 *     even while a full-tunnel VPN or exit node is up, and leave gaps for the administrator;
 *     only the Internet fallback (PRIO_FALLBACK) sits after main, since it stands in for main.
 */

/** First routing table id; uplink slot N (1..MAX_SLOTS) uses table TABLE_BASE + N. */
export const TABLE_BASE = 0x5c00; // 23552: far from every neighbour listed above
/**
 * First DNS table id; uplink slot N's DNS table is DNS_TABLE_BASE + N (23585..23614): a default
 * via the uplink for the port-53 traffic of a socket pinned to it, whatever address it asks,
 * so the route lookup succeeds and the session's DNS redirect (nat output) can rewrite the query
 * to the uplink's own resolver. Without it, a resolver in resolv.conf that the uplink does not
 * reach (a home router's, over the MMS APN) fails in the route lookup, before nftables sees it.
 */
export const DNS_TABLE_BASE = TABLE_BASE + 0x20; // 23584
/**
 * Uplink slots are 1..30. Slot 0 means "no uplink chosen". The six mark bits hold a slot (five
 * bits) and a "soft" flag; both flags set on slot 31 is the deny value.
 */
export const MAX_SLOTS = 30;

/** Mark bits Waymark owns: bits 24..29. Slot N is encoded as N << MARK_SHIFT under MARK_MASK. */
export const MARK_SHIFT = 24;
export const MARK_MASK = 0x3f000000;
/**
 * Soft marks: slot N | SOFT_FLAG means "uplink N unless the destination needs another" (the
 * default of a `waymark exec --need/--deny` session), looked up after the destination rules;
 * a plain mark (an `--uplink` session) wins over them.
 */
export const SOFT_FLAG = 0x20000000;
/** The mark value reserved for "denied": a socket carrying it is unreachable. */
export const DENY_SLOT = 63;

/**
 * The rule-priority ladder. Read top to bottom: the first match wins.
 *   4100  fwmark DENY/MASK unreachable      socket denied by policy (cgroup of a denied session)
 *   4150  fwmark SLOT/MASK ipproto udp|tcp dport 53 lookup DNS_TABLE
 *                                          a pinned session's DNS query, to whatever resolver:
 *                                          leaves by its uplink, where nftables redirects it
 *                                          to that uplink's DNS (only while it has some)
 *   4200  oif DEV lookup TABLE             socket bound to the uplink's device (SO_BINDTODEVICE):
 *                                          the library's per-destination choice, so it beats
 *                                          the per-cgroup default mark below
 *   4300  fwmark SLOT/MASK lookup TABLE     socket marked for an uplink (cgroup BPF at creation)
 *   4400  from ADDR lookup TABLE           socket bound to an address only this uplink holds
 *   4500  to PREFIX lookup TABLE           destination reachable only over some uplinks
 *   4550  fwmark SLOT|SOFT/MASK lookup TABLE  socket marked for an uplink "unless the destination
 *                                          says otherwise" (a session that only states needs)
 *  (32766  lookup main, 32767 lookup default: the system's own, never touched)
 *  32800  lookup TABLE                     the Internet fallback: reached only by what main (and
 *                                          the `default` table) did not route, i.e. an unmarked
 *                                          socket's Internet traffic while main has no default;
 *                                          into the Internet's best active uplink's table, per
 *                                          family. Present only while main holds no default of
 *                                          either family (src/routing/fallback.ts).
 * Gaps leave room for administrator rules between the steps.
 */
export const PRIO_DENY = 4100;
export const PRIO_DNS = 4150;
export const PRIO_OIF = 4200;
export const PRIO_MARK = 4300;
export const PRIO_SOURCE = 4400;
export const PRIO_DESTINATION = 4500;
export const PRIO_SOFT_MARK = 4550;
/**
 * The Internet fallback, after main (32766) and default (32767) rather than before them: main's
 * default, while a connection manager holds one, keeps winning without our help or our race, and
 * everything that sits before main keeps its place: wg-quick's `suppress_prefixlength 0` and
 * `not fwmark` pair (32764/32765), a Tailscale exit node (5270), an administrator's rules. The
 * wg-quick way (main without its default, then ours, before main) would put ours ahead of a
 * default that main holds; here there is nothing to suppress. Rule priorities are 32-bit.
 */
export const PRIO_FALLBACK = 32800;
/** Any rule in [PRIO_MIN, PRIO_MAX], or at PRIO_FALLBACK, stamped with RTPROT_WAYMARK is ours. */
export const PRIO_MIN = 4100;
export const PRIO_MAX = 4599;

/** Route protocol id stamped on every route and rule we install (rt_protos: 'waymark'). */
export const RTPROT_WAYMARK = 0x57; // 87: unassigned in iproute2's rt_protos

/** nftables table we own and the only one we ever touch. */
export const NFT_FAMILY = 'inet';
export const NFT_TABLE = 'waymark';

export function tableForSlot(slot: number): number {
  return TABLE_BASE + slot;
}
export function markForSlot(slot: number): number {
  return (slot << MARK_SHIFT) >>> 0;
}
export function softMarkForSlot(slot: number): number {
  return (markForSlot(slot) | SOFT_FLAG) >>> 0;
}
export function dnsTableForSlot(slot: number): number {
  return DNS_TABLE_BASE + slot;
}
export function isOurTable(table: number): boolean {
  return (table > TABLE_BASE && table <= TABLE_BASE + MAX_SLOTS) || (table > DNS_TABLE_BASE && table <= DNS_TABLE_BASE + MAX_SLOTS);
}
