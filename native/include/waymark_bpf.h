/* The layout shared by the app BPF object (native/bpf/waymark.bpf.c), the addon's loader
 * (native/addon/waymark_native.c) and the TypeScript adapter (src/backstop/bpf.ts, which mirrors
 * it; test/unit/bpf.test.ts checks that both agree). Plain types from linux/types.h only.
 * See docs/kernel-apps.md for what each map means. */
#ifndef WAYMARK_BPF_H
#define WAYMARK_BPF_H

#include <linux/types.h>

/* wm_treatment.deny: bit N denies uplink slot N (1..30); WM_DENY_ALL denies every uplink. */
#define WM_DENY_ALL 0x80000000u
/* wm_treatment.flags: this treatment decides; without it the uid's treatment (wm_uids) does. */
#define WM_T_SET 0x1u
/* wm_treatment.flags bits 8..13: the uplink slot the app's DNS goes by (0: none). A connect() or
 * send to port 53 gets that slot's hard mark: routing (PRIO_DNS) sends it out by that uplink,
 * where the nftables DNS redirect gives it to the uplink's resolver. */
#define WM_T_DNS_SHIFT 8
#define WM_T_DNS_MASK 0x3f00u

/* How many ancestors the lookup walks (deepest first) for a cgroup without an entry. */
#define WM_MAX_DEPTH 16

#define WM_CGROUPS_MAX 65536
#define WM_UIDS_MAX 4096
#define WM_IFSLOT_MAX 256
#define WM_DST_MAX 1024
#define WM_USAGE_MAX 16384

/* wm_usage_key.dir */
#define WM_DIR_TX 0
#define WM_DIR_RX 1

/* What the kernel does to the sockets of one app. 16 bytes. */
struct wm_treatment {
    __u32 app;   /* app key for the counters (daemon-assigned, 0 = none) */
    __u32 mark;  /* Waymark mark bits (within WAYMARK_MARK_MASK) to give the socket, 0 = none */
    __u32 deny;  /* bit N: uplink slot N denied; WM_DENY_ALL: every uplink */
    __u32 flags; /* WM_T_SET | DNS slot << WM_T_DNS_SHIFT */
};

/* Value of wm_cgroups, keyed by the __u64 cgroup id (the inode number of its directory). */
struct wm_cgroup {
    struct wm_treatment self;    /* for sockets of this cgroup */
    struct wm_treatment pending; /* for sockets of a descendant cgroup that has no entry yet */
};

/* Keys of wm_dst4 / wm_dst6 (LPM tries): prefix length in bits, address in network order. */
struct wm_dst4_key {
    __u32 prefixlen;
    __u8 addr[4];
};
struct wm_dst6_key {
    __u32 prefixlen;
    __u8 addr[16];
};

/* The single value of wm_conf (ARRAY of 1). 16 bytes. */
struct wm_conf {
    __u64 netns_cookie; /* the only network namespace whose sockets are touched; 0 = none */
    __u32 main_slot4;   /* uplink slot main's IPv4 default uses now (0 = none) */
    __u32 main_slot6;   /* same for IPv6 */
};

/* wm_usage: per-CPU counters per app x uplink slot x direction. 8 bytes. */
struct wm_usage_key {
    __u32 app;
    __u8 slot;
    __u8 dir; /* WM_DIR_TX, WM_DIR_RX */
    __u16 pad;
};
struct wm_usage_val {
    __u64 bytes; /* IP bytes, headers included */
    __u64 packets;
};

/* Per-socket state of the compat programs only (BPF_MAP_TYPE_SK_STORAGE wm_sk, private to
 * them): its existence says the socket is of our network namespace. */
struct wm_sk {
    __u32 seen;
};

#endif
