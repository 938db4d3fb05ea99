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
/* wm_treatment.flags: report the connects of these sockets to the daemon (wm_events below); the
 * connect itself proceeds with the treatment as it is (a rule's `ask`, answered later). */
#define WM_T_ASK 0x2u
/* wm_treatment.flags: some wm_budget_limit entry names this treatment's app key (Budgets in
 * docs/kernel-apps.md): the packet programs look its budget up. Without it they do not. */
#define WM_T_BUDGET 0x4u
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
/* wm_budget_limit, wm_budget_used */
#define WM_BUDGETS_MAX 1024
/* wm_events: the ring buffer's size in bytes (a power of 2, pages). 128 KiB holds 1638 events. */
#define WM_EVENTS_SIZE 131072
/* wm_ask_seen: the last report per (cgroup, app, uid, destination), an LRU. */
#define WM_ASK_SEEN_MAX 4096
/* Repeats of one report within this time are suppressed, unless wm_conf.ask_quiet_ns says. */
#define WM_ASK_QUIET_NS 1000000000ull

/* wm_usage_key.dir */
#define WM_DIR_TX 0
#define WM_DIR_RX 1
#define WM_DIR_TX_DROPPED 2 /* egress packets the programs dropped (deny, budget): they never left */

/* wm_budget_key.app of an uplink-wide budget (every app's packets on that slot). */
#define WM_APP_ANY 0xffffffffu

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

/* Values of wm_dst4 / wm_dst6: the uplink slot routing the prefix now (0: none does, the lookup
 * goes on down the routing ladder) in the low byte, the destination index (1..255, the daemon's;
 * 0: none) in the next. */
#define WM_DST_SLOT(v) ((v) & 0xffu)
#define WM_DST_DEST(v) (((v) >> 8) & 0xffu)

/* The single value of wm_conf (ARRAY of 1). 40 bytes. */
struct wm_conf {
    __u64 netns_cookie; /* the only network namespace whose sockets are touched; 0 = none */
    __u32 main_slot4;   /* uplink slot main's IPv4 default uses now (0 = none) */
    __u32 main_slot6;   /* same for IPv6 */
    __u64 ask_quiet_ns; /* repeats of a connect report suppressed this long; 0 = WM_ASK_QUIET_NS */
    __u32 dst4_count;   /* entries in wm_dst4: 0, the packet programs read no address (dest 0) */
    __u32 dst6_count;   /* same for wm_dst6 */
    __u32 budget_slots; /* bit N: an uplink-wide budget (WM_APP_ANY) on slot N */
    __u32 pad;
};

/* wm_usage: per-CPU counters per app (or cgroup and uid) x uplink slot x direction x
 * destination. 24 bytes. */
struct wm_usage_key {
    __u64 cgroup; /* app == 0: the packet's socket's cgroup id (0: no full socket); else 0 */
    __u32 app;    /* the treatment's app key; 0: none */
    __u32 uid;    /* app == 0 and cgroup != 0: the socket's uid; else 0 */
    __u8 slot;
    __u8 dir;     /* WM_DIR_TX, WM_DIR_RX, WM_DIR_TX_DROPPED */
    __u8 dest;    /* destination index of the remote address (WM_DST_DEST); 0: none matched */
    __u8 pad[5];
};
struct wm_usage_val {
    __u64 bytes; /* IP bytes, headers included */
    __u64 packets;
};

/* Keys of wm_budget_limit (HASH: __u64 limit, the daemon writes) and wm_budget_used (HASH: __u64
 * bytes, the programs add; the daemon creates an entry with 0 and never overwrites it). A packet
 * of the app on the slot is dropped at egress once used >= limit; at ingress it is counted and
 * added, then dropped if used was already >= limit. 8 bytes. */
struct wm_budget_key {
    __u32 app;  /* the app key; WM_APP_ANY: the whole uplink */
    __u32 slot;
};

/* wm_connect_event.flags */
#define WM_EV_SENDMSG 0x1u /* a sendmsg()/sendto() with an address (else a connect()) */
#define WM_EV_DENIED 0x2u  /* the program refused it (EPERM: the treatment denies its uplink) */
#define WM_EV_PENDING 0x4u /* the treatment is an ancestor's `pending` (the cgroup has no entry) */
#define WM_EV_UID 0x8u     /* the treatment is the uid's (wm_uids) */

/* One record of wm_events (BPF_MAP_TYPE_RINGBUF): a connect() or addressed send of a socket
 * whose treatment has WM_T_ASK. 72 bytes. */
struct wm_connect_event {
    __u64 cgroup;   /* the current task's cgroup id */
    __u64 ns;       /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
    __u32 app;      /* the treatment's app key */
    __u32 uid;      /* the current task's uid (init user namespace) */
    __u32 pid;      /* the current task's process id (tgid, init pid namespace) */
    __u32 flags;    /* WM_EV_* */
    __u8 family;    /* 4 or 6 (a v4-mapped IPv6 destination is reported as 4) */
    __u8 protocol;  /* IPPROTO_TCP (6), IPPROTO_UDP (17), ... */
    __u16 port;     /* destination port, host order */
    __u8 addr[16];  /* destination address, network order; IPv4 in the first 4 bytes */
    __u8 comm[16];  /* the current thread's name (bpf_get_current_comm), NUL-padded */
    __u32 pad;
};

/* Key of wm_ask_seen: one report per (cgroup, app, uid, destination) and quiet period. 40 bytes. */
struct wm_ask_key {
    __u64 cgroup;
    __u32 app;
    __u32 uid;
    __u8 family;
    __u8 protocol;
    __u16 port;
    __u8 addr[16];
    __u32 pad;
};

/* The single value of wm_ask_stats (PERCPU_ARRAY of 1), summed by the daemon. */
struct wm_ask_stats {
    __u64 reported;   /* records submitted to wm_events */
    __u64 dropped;    /* records lost: wm_events was full */
    __u64 suppressed; /* repeats within the quiet period, not reported */
};

/* Per-socket state of the compat programs only (BPF_MAP_TYPE_SK_STORAGE wm_sk, private to
 * them): its existence says the socket is of our network namespace. */
struct wm_sk {
    __u32 seen;
};

#endif
