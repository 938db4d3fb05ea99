/**
 * The nftables half of the kernel backstop (pure): for each session cgroup, the uplink devices
 * its sockets may never leave by. The BPF mark (src/native: cgroupAttachSockMark) routes a
 * session's sockets by its uplink's table; this chain catches what the mark cannot: a program
 * that binds its socket to a denied device itself (SO_BINDTODEVICE, IP_UNICAST_IF), whose `oif`
 * rule outranks the mark. It matches on the socket's cgroup, so it holds for static binaries and
 * raw syscalls too.
 *
 * Rendered as nft text, to be placed inside the daemon's `table inet waymark { ... }`
 * (src/nftables/ruleset.ts). For one session, the equivalent commands are
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
import { isIP } from 'node:net';
import { posix } from 'node:path';

export interface BackstopSession {
  /** Path relative to the cgroup2 mount, e.g. "waymark/exec-42" (SessionCgroup.relPath). */
  readonly cgroup: string;
  /** Interface names the session's sockets must never leave by. None: no rule. */
  readonly deniedIfnames: readonly string[];
  /** DNS servers of the session's uplink (its `dns:`, or what its link announced); none: no redirect. */
  readonly dns?: readonly string[];
}

export interface BackstopOptions {
  /** The cgroup2 mount point (findCgroup2Mount()); default /sys/fs/cgroup (pure cgroup v2). */
  readonly cgroupMount?: string;
  /** Chain name; default "backstop". */
  readonly chain?: string;
}

/** Where nft looks up `socket cgroupv2` paths (nftables: SYSFS_CGROUPSV2_PATH). */
export const NFT_CGROUP_ROOT = '/sys/fs/cgroup';
export const BACKSTOP_CHAIN = 'backstop';
/** The optional nat chain that sends a session's DNS queries to its uplink's servers. */
export const BACKSTOP_DNS_CHAIN = 'backstop_dns';
/** Before conntrack's own nat (srcnat 100, dstnat -100): the usual place of a dnat. */
export const BACKSTOP_DNS_PRIORITY = -100;

/** A cgroup path component: what Waymark creates (SessionCgroups), nothing nft would misread. */
const COMPONENT_RE = /^[A-Za-z0-9_@+:-][A-Za-z0-9_.@+:-]*$/;
/** An interface name: 1..15 bytes, none of '/', ':', '"', '\', '*', whitespace (no wildcards). */
const IFNAME_RE = /^[^/:"\\*\s]{1,15}$/;
/**
 * Whether nft can name this interface in a quoted string as itself: Linux allows '"', '\' and '*'
 * in names, which would end the string or make it a wildcard ("eth*" matches every eth).
 */
export const nftSafeIfname = (name: string): boolean => IFNAME_RE.test(name);
const CHAIN_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

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
 * The backstop chain for `sessions`, as lines to place inside `table inet waymark { ... }`
 * (two-space indent, trailing newline), or '' when no session denies anything.
 * Throws on a malformed cgroup path or interface name (they come from our own state).
 */
export function renderBackstop(sessions: readonly BackstopSession[], options: BackstopOptions = {}): string {
  const chain = options.chain ?? BACKSTOP_CHAIN;
  if (!CHAIN_RE.test(chain)) throw new Error(`backstop: invalid chain name ${JSON.stringify(chain)}`);
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
    rules.push(`    ${match} meta l4proto tcp reject with tcp reset ${comment}`);
    rules.push(`    ${match} drop ${comment}`);
  }
  if (rules.length === 0) return '';
  return [
    `  chain ${chain} {`,
    '    type filter hook output priority 0; policy accept;',
    ...rules,
    '  }',
    '',
  ].join('\n');
}

/**
 * The DNS redirect of the sessions whose uplink has DNS servers: a session's sockets leave by
 * its uplink (the mark), so the system resolver's queries would go to whatever /etc/resolv.conf
 * names over that uplink, and a LAN resolver (a home router's) does not answer over cellular.
 * So their port-53 traffic (UDP and TCP) to any non-local address goes to the uplink's own
 * first server of that family instead; a resolver on this host (systemd-resolved's 127.0.0.53)
 * is left alone. Lines for inside `table inet waymark { }`, or '' when no session needs one
 * (then the chain does not exist at all: see nft.ts on optional chains). Equivalent to
 *
 *   nft add chain inet waymark backstop_dns '{ type nat hook output priority -100; policy accept; }'
 *   nft add rule inet waymark backstop_dns socket cgroupv2 level 2 '"waymark/exec-42"' \
 *       meta nfproto ipv4 meta l4proto '{ tcp, udp }' th dport 53 fib daddr type != local \
 *       dnat ip to 10.64.0.1
 */
export function renderBackstopDns(sessions: readonly BackstopSession[], options: BackstopOptions = {}): string {
  const q = (s: string): string => `"${s}"`;
  const rules: string[] = [];
  for (const s of sessions) {
    const servers = s.dns ?? [];
    const v4 = servers.find((a) => isIP(a) === 4);
    const v6 = servers.find((a) => isIP(a) === 6);
    if (v4 === undefined && v6 === undefined) continue;
    const match = cgroupMatch(s.cgroup, options);
    const dns = 'meta l4proto { tcp, udp } th dport 53 fib daddr type != local';
    const comment = `comment ${q(`waymark ${s.cgroup} dns`)}`;
    if (v4 !== undefined) rules.push(`    ${match} meta nfproto ipv4 ${dns} dnat ip to ${v4} ${comment}`);
    if (v6 !== undefined) rules.push(`    ${match} meta nfproto ipv6 ${dns} dnat ip6 to ${v6} ${comment}`);
  }
  if (rules.length === 0) return '';
  return [
    `  chain ${BACKSTOP_DNS_CHAIN} {`,
    `    type nat hook output priority ${BACKSTOP_DNS_PRIORITY}; policy accept;`,
    ...rules,
    '  }',
    '',
  ].join('\n');
}
