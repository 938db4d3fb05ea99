/**
 * The nftables half of the kernel backstop (pure): for each session cgroup, the uplink devices
 * its sockets may never leave by. The BPF mark (src/native: cgroupAttachSockMark) routes a
 * session's sockets by its uplink's table; this chain catches what the mark cannot: a program
 * that binds its socket to a denied device itself (SO_BINDTODEVICE, IP_UNICAST_IF), whose `oif`
 * rule outranks the mark. It matches on the socket's cgroup, so it holds for static binaries and
 * raw syscalls too.
 *
 * Rules as nft text, contributed to the chains of the daemon's table model
 * (src/nftables/table.ts), which writes the chain headers. For one session, the equivalent
 * commands are
 *
 *   nft add chain inet waymark backstop '{ type filter hook output priority 0; policy accept; }'
 *   nft add rule inet waymark backstop socket cgroupv2 level 2 '"unified/waymark/exec-42"' \
 *       oifname '{ "wlan0", "wwan1" }' meta l4proto tcp reject with tcp reset
 *   nft add rule inet waymark backstop socket cgroupv2 level 2 '"unified/waymark/exec-42"' \
 *       oifname '{ "wlan0", "wwan1" }' drop
 *
 * TCP gets a reset (connect() fails at once with ECONNREFUSED instead of retrying SYNs into a
 * drop until it times out); everything else is dropped, which a UDP sendmsg() reports at once as
 * EPERM.
 *
 * nft (1.0.6) facts this relies on, checked by loading it:
 *   - The path string is resolved against /sys/fs/cgroup, hard-wired in nft, whatever the
 *     cgroup2 mount: on a hybrid system (cgroup2 at /sys/fs/cgroup/unified) it must read
 *     "unified/waymark/exec-42"; an absolute path does not work. `level` is the depth in the
 *     kernel's hierarchy (2 for waymark/exec-42), not the number of components of that string.
 *   - The path becomes a cgroup id at load time: a missing cgroup fails the whole transaction
 *     ("cgroupv2 path fails: No such file or directory"), so render only cgroups that exist, and
 *     reload after a session cgroup was re-created.
 *   - nft resolves the path in its own mount namespace: run it where /sys/fs/cgroup is mounted
 *     (`nsenter --net=` enters a network namespace and keeps it; `ip netns exec` does not).
 *   - nft's JSON input cannot express this match (and its JSON output omits the level).
 */
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { posix } from 'node:path';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { formatPrefix } from '../net/prefix.js';
import { DENY_SLOT, MARK_MASK, markForSlot } from '../constants.js';
import type { UplinkState } from '../uplink/state.js';
import type { Chain, Contribution } from '../nftables/table.js';

export interface BackstopSession {
  /** Path relative to the cgroup2 mount, e.g. "waymark/exec-42" (SessionCgroup.relPath). */
  readonly cgroup: string;
  /** Interface names the session's sockets must never leave by. None: no rule. */
  readonly deniedIfnames: readonly string[];
  /** The mark its sockets get (null: none); for the app maps' entry of the session (src/daemon/apps.ts). */
  readonly mark?: number | null;
}

export interface BackstopOptions {
  /** The cgroup2 mount point (findCgroup2Mount()); default /sys/fs/cgroup (pure cgroup v2). */
  readonly cgroupMount?: string;
}

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

/** Where nft looks up `socket cgroupv2` paths (nftables: SYSFS_CGROUPSV2_PATH). */
export const NFT_CGROUP_ROOT = '/sys/fs/cgroup';
export const BACKSTOP_CHAIN = 'backstop';
/** The optional nat chain that sends a session's DNS queries to its uplink's servers. */
export const BACKSTOP_DNS_CHAIN = 'backstop_dns';
/** Before conntrack's own nat (srcnat 100, dstnat -100): the usual place of a dnat. */
export const BACKSTOP_DNS_PRIORITY = -100;

/** The chains of sessions in the table; the DNS one exists only while it has rules (no conntrack otherwise). */
export const SESSION_CHAINS: readonly Chain[] = [
  { name: BACKSTOP_CHAIN, hook: 'output' },
  { name: BACKSTOP_DNS_CHAIN, hook: 'output', type: 'nat', priority: BACKSTOP_DNS_PRIORITY, optional: true },
];

/** A cgroup path component: what Waymark creates (SessionCgroups), nothing nft would misread. */
const COMPONENT_RE = /^[A-Za-z0-9_@+:-][A-Za-z0-9_.@+:-]*$/;
/** An interface name: 1..15 bytes, none of '/', ':', '"', '\', '*', whitespace (no wildcards). */
const IFNAME_RE = /^[^/:"\\*\s]{1,15}$/;
/**
 * Whether nft can name this interface in a quoted string as itself: Linux allows '"', '\' and '*'
 * in names, which would end the string or make it a wildcard ("eth*" matches every eth).
 */
export const nftSafeIfname = (name: string): boolean => IFNAME_RE.test(name);

function checkCgroup(cgroup: string): string[] {
  const parts = cgroup.split('/');
  if (!parts.every((p) => COMPONENT_RE.test(p))) {
    throw new Error(`backstop: invalid cgroup path ${JSON.stringify(cgroup)} (relative to the cgroup2 mount, e.g. "waymark/exec-42")`);
  }
  return parts;
}

/**
 * The string nft wants for a cgroup path relative to the cgroup2 mount: the path from
 * /sys/fs/cgroup to the cgroup ("waymark/exec-42" on pure v2, "unified/waymark/exec-42" in
 * hybrid mode).
 */
export function nftCgroupPath(cgroup: string, cgroupMount: string = NFT_CGROUP_ROOT): string {
  checkCgroup(cgroup);
  if (!cgroupMount.startsWith('/')) throw new Error(`backstop: cgroup2 mount must be absolute: ${cgroupMount}`);
  return posix.relative(NFT_CGROUP_ROOT, posix.join(cgroupMount, cgroup));
}

/** `socket cgroupv2 level N "path"`: matches the sockets of one session cgroup. */
function cgroupMatch(cgroup: string, options: BackstopOptions): string {
  const level = checkCgroup(cgroup).length;
  return `socket cgroupv2 level ${level} "${nftCgroupPath(cgroup, options.cgroupMount)}"`;
}

/**
 * The backstop chain's rules for `sessions` (none when no session denies anything).
 * Throws on a malformed cgroup path or interface name (they come from our own state).
 */
export function backstopRules(sessions: readonly BackstopSession[], options: BackstopOptions = {}): string[] {
  const q = (s: string): string => `"${s}"`; // validated: no quote or backslash inside
  const rules: string[] = [];
  for (const s of sessions) {
    checkCgroup(s.cgroup);
    for (const name of s.deniedIfnames) {
      if (!IFNAME_RE.test(name)) throw new Error(`backstop: invalid interface name ${JSON.stringify(name)}`);
    }
    const denied = [...new Set(s.deniedIfnames)].sort();
    if (denied.length === 0) continue;
    const match = `${cgroupMatch(s.cgroup, options)} oifname { ${denied.map(q).join(', ')} }`;
    const comment = `comment ${q(`waymark ${s.cgroup}`)}`;
    rules.push(`${match} meta l4proto tcp reject with tcp reset ${comment}`);
    rules.push(`${match} drop ${comment}`);
  }
  return rules;
}

/** An uplink as the DNS redirect sees it. */
export interface UplinkDns {
  /** Its device: the redirect matches the interface a query really leaves by. */
  readonly ifname: string;
  /** Its DNS servers; none: its queries are left alone. */
  readonly dns: readonly string[];
  /**
   * Prefixes it reaches besides the Internet (its destinations'): a resolver there is one the
   * program chose on purpose over this uplink (a VPN's corporate DNS), left alone like its own.
   */
  readonly reaches?: readonly string[];
}

/** Uplinks (active, with a device) as the DNS redirect wants them; destinations give their prefixes. */
export function uplinkDns(
  uplinks: readonly UplinkState[],
  destinations: readonly DestinationSpec[],
): UplinkDns[] {
  return uplinks.flatMap((u) => {
    if (u.status !== 'active' || !u.link) return [];
    const reaches = destinations
      .filter((d) => d.name !== INTERNET && d.via.includes(u.spec.name))
      .flatMap((d) => d.prefixes.map(formatPrefix));
    return [{ ifname: u.link.name, dns: u.dns, reaches }];
  });
}

/**
 * The DNS redirect of sessions: a session's sockets leave by its uplinks, so the system
 * resolver's queries would go to whatever /etc/resolv.conf names over that uplink, and a LAN
 * resolver (a home router's) does not answer over cellular. So a session's port-53 traffic (UDP
 * and TCP) that leaves by an uplink with DNS servers goes to that uplink's first server of the
 * family instead, unless it is addressed to one of that uplink's own servers or into a prefix
 * it reaches (`dig @MMSC-resolver` bound to the MMS APN reaches the MMS resolver, whatever the
 * session's default uplink). It matches the interface the route lookup chose (`oifname`), not
 * the session's default uplink: the library may have bound the query elsewhere. A resolver on
 * this host (systemd-resolved's 127.0.0.53) is left alone; so is any uplink the session is
 * denied (the backstop drops that anyway). A pinned session's query to a resolver its uplink
 * does not reach gets this far thanks to its uplink's DNS table (constants.ts: PRIO_DNS).
 * The rules of the chain backstop_dns; none when no rule is needed (then the chain does not
 * exist at all: see table.ts on optional chains). Equivalent to
 *
 *   nft add chain inet waymark backstop_dns '{ type nat hook output priority -100; policy accept; }'
 *   nft add rule inet waymark backstop_dns socket cgroupv2 level 2 '"waymark/exec-42"' \
 *       oifname "wwan1" meta nfproto ipv4 meta l4proto '{ tcp, udp }' th dport 53 \
 *       ip daddr != '{ 10.64.0.1, 10.200.0.0/24 }' fib daddr type != local dnat ip to 10.64.0.1
 */
export function backstopDnsRules(
  sessions: readonly BackstopSession[],
  uplinks: readonly UplinkDns[],
  options: BackstopOptions = {},
): string[] {
  const q = (s: string): string => `"${s}"`;
  const rules: string[] = [];
  for (const u of uplinks) {
    if (!IFNAME_RE.test(u.ifname)) throw new Error(`backstop: invalid interface name ${JSON.stringify(u.ifname)}`);
  }
  for (const s of sessions) {
    const match = cgroupMatch(s.cgroup, options);
    for (const u of uplinks) {
      if (s.deniedIfnames.includes(u.ifname)) continue;
      for (const f of [4, 6] as const) {
        const to = u.dns.find((a) => isIP(a) === f);
        if (to === undefined) continue;
        const own = [...new Set([...u.dns.filter((a) => isIP(a) === f), ...(u.reaches ?? []).filter((p) => isIP(p.split('/')[0] ?? '') === f)])];
        const ip = f === 4 ? 'ip' : 'ip6';
        rules.push(`${match} oifname ${q(u.ifname)} meta nfproto ipv${f} meta l4proto { tcp, udp } th dport 53 `
          + `${ip} daddr != { ${own.join(', ')} } fib daddr type != local dnat ${ip} to ${to} comment ${q(`waymark ${s.cgroup} dns`)}`);
      }
    }
  }
  return rules;
}

/**
 * The sessions' part of the daemon's table (both chains), naming only the session cgroups that exist right
 * now (`present`, default: the directory is there): nft resolves each path at load time and a
 * missing one fails the whole transaction, so a session that ended (or whose cgroup someone
 * removed) must never keep another session's update from loading.
 */
/**
 * The DNS redirect of apps (src/daemon/apps.ts): a socket the kernel marked for an app (the BPF
 * programs: any Waymark mark but the deny value) whose port-53 traffic leaves by an uplink with
 * DNS servers goes to that uplink's resolver, as a session's does (backstopDnsRules, whose
 * exceptions it shares). An app's DNS queries get the hard mark of its DNS uplink at connect()
 * (docs/kernel-apps.md), so they leave by it (rule PRIO_DNS) and land here. Sockets nobody
 * marked (programs no rule matches, the library's own steering) are left alone.
 */
export function appDnsRules(uplinks: readonly UplinkDns[]): Contribution {
  const q = (s: string): string => `"${s}"`;
  const marked = `meta mark and ${hex(MARK_MASK)} != 0 meta mark and ${hex(MARK_MASK)} != ${hex(markForSlot(DENY_SLOT))}`;
  const rules: string[] = [];
  for (const u of uplinks) {
    if (!IFNAME_RE.test(u.ifname)) throw new Error(`backstop: invalid interface name ${JSON.stringify(u.ifname)}`);
    for (const f of [4, 6] as const) {
      const to = u.dns.find((a) => isIP(a) === f);
      if (to === undefined) continue;
      const own = [...new Set([...u.dns.filter((a) => isIP(a) === f), ...(u.reaches ?? []).filter((p) => isIP(p.split('/')[0] ?? '') === f)])];
      const ip = f === 4 ? 'ip' : 'ip6';
      rules.push(`${marked} oifname ${q(u.ifname)} meta nfproto ipv${f} meta l4proto { tcp, udp } th dport 53 `
        + `${ip} daddr != { ${own.join(', ')} } fib daddr type != local dnat ${ip} to ${to} comment ${q('waymark apps dns')}`);
    }
  }
  return { rules: { [BACKSTOP_DNS_CHAIN]: rules } };
}

export function sessionRules(
  sessions: readonly BackstopSession[],
  uplinks: readonly UplinkDns[],
  options: BackstopOptions & { readonly present?: (cgroup: string) => boolean } = {},
): Contribution {
  const mount = options.cgroupMount ?? NFT_CGROUP_ROOT;
  const present = options.present ?? ((cgroup: string): boolean => existsSync(posix.join(mount, cgroup)));
  const live = sessions.filter((s) => present(s.cgroup));
  return { rules: { [BACKSTOP_CHAIN]: backstopRules(live, options), [BACKSTOP_DNS_CHAIN]: backstopDnsRules(live, uplinks, options) } };
}
