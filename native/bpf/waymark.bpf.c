// SPDX-License-Identifier: (MIT OR GPL-2.0)
/* Waymark's app programs: the kernel steers every socket of the device by the app (cgroup, else
 * uid) it belongs to, as the daemon wrote it into the maps below. docs/kernel-apps.md explains
 * the design; native/include/waymark_bpf.h is the layout the daemon shares.
 *
 * Every program first checks the socket's network namespace: only wm_conf.netns_cookie's is
 * touched; sockets of any other namespace (containers, test labs) pass untouched and allowed.
 * The programs keep no per-socket state, except the *_compat twins (kernels before 6.17).
 *
 * No libc headers here (they pull in 32-bit stubs under -target bpf). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include <bpf/bpf_endian.h>
#include "waymark_kernel.h"
#include "waymark_bpf.h"

#define SOL_SOCKET 1
#define SO_MARK 36

#define DENY_MARK ((__u32)WAYMARK_DENY_SLOT << WAYMARK_MARK_SHIFT)

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, WM_CGROUPS_MAX);
    __type(key, __u64);
    __type(value, struct wm_cgroup);
} wm_cgroups SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, WM_UIDS_MAX);
    __type(key, __u32);
    __type(value, struct wm_treatment);
} wm_uids SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, WM_IFSLOT_MAX);
    __type(key, __u32);
    __type(value, __u32);
} wm_ifslot SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, WM_DST_MAX);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct wm_dst4_key);
    __type(value, __u32);
} wm_dst4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, WM_DST_MAX);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct wm_dst6_key);
    __type(value, __u32);
} wm_dst6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct wm_conf);
} wm_conf SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, WM_USAGE_MAX);
    __type(key, struct wm_usage_key);
    __type(value, struct wm_usage_val);
} wm_usage SEC(".maps");

/* Budgets (docs/kernel-apps.md, Budgets): limits the daemon writes, bytes the programs add. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, WM_BUDGETS_MAX);
    __type(key, struct wm_budget_key);
    __type(value, __u64);
} wm_budget_limit SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, WM_BUDGETS_MAX);
    __type(key, struct wm_budget_key);
    __type(value, __u64);
} wm_budget_used SEC(".maps");

/* Connect reports of sockets whose treatment has WM_T_ASK (report() below), read by the daemon. */
struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, WM_EVENTS_SIZE);
} wm_events SEC(".maps");

/* When each (cgroup, app, uid, destination) was last reported: repeats within the quiet period
 * are not. LRU: a flood of distinct destinations evicts the oldest, never fails. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, WM_ASK_SEEN_MAX);
    __type(key, struct wm_ask_key);
    __type(value, __u64);
} wm_ask_seen SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct wm_ask_stats);
} wm_ask_stats SEC(".maps");

/* Only the compat programs use it (see skb_ours); cloned into the sockets a listener accepts. */
struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
    __type(key, int);
    __type(value, struct wm_sk);
} wm_sk SEC(".maps");

static __always_inline const struct wm_conf *conf(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&wm_conf, &zero);
}

/* Our namespace? The cookie of the context's socket against wm_conf (0 there: none is). */
static __always_inline const struct wm_conf *ours(void *ctx)
{
    const struct wm_conf *c = conf();
    if (c == 0 || c->netns_cookie == 0 || bpf_get_netns_cookie(ctx) != c->netns_cookie) return 0;
    return c;
}

/* A treatment that decides, else NULL: the caller then asks for the uid's. (The uid is read only
 * then: a helper call less for every socket and packet of a cgroup with an entry.) */
static __always_inline const struct wm_treatment *deciding(const struct wm_treatment *t)
{
    return t != 0 && (t->flags & WM_T_SET) ? t : 0;
}

static __always_inline const struct wm_treatment *uid_treatment(__u32 uid)
{
    return bpf_map_lookup_elem(&wm_uids, &uid);
}

/* The current task's cgroup: its own entry's `self`, else the deepest ancestor entry's
 * `pending`. The ancestors are walked from WM_MAX_DEPTH down: levels deeper than the cgroup
 * give id 0 and cost no map lookup. */
static __always_inline const struct wm_treatment *task_treatment(__u64 cg, __u32 *src)
{
    const struct wm_cgroup *e = bpf_map_lookup_elem(&wm_cgroups, &cg);
    if (e != 0) return &e->self;
    for (int level = WM_MAX_DEPTH; level >= 0; level--) {
        __u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (id == 0 || id == cg) continue;
        e = bpf_map_lookup_elem(&wm_cgroups, &id);
        if (e != 0) {
            *src = WM_EV_PENDING;
            return &e->pending;
        }
    }
    return 0;
}

/* Whose a packet is (cgroup_skb): the deciding treatment (the socket's cgroup's, an ancestor's
 * `pending`, then the uid's; or none) and the counters' and budgets' app. */
struct who {
    const struct wm_treatment *t; /* the deciding treatment, 0: none */
    __u64 cg;                     /* the socket's cgroup id, 0: no full socket */
    __u32 app;                    /* t's app key, else that of the cgroup's entry that did not decide */
    __u32 budget;                 /* WM_T_BUDGET of the treatment that gave app */
};

/* The same for a packet's socket, then the uid's. A packet without a full socket (a request or
 * time-wait socket's SYN-ACK or RST) has cgroup id 0 and gets none: its uid would read as the
 * overflow uid (65534), someone else's treatment. A cgroup entry that does not decide (the uid's
 * treatment applies) still names the app: its key counts, its budget applies. */
static __always_inline void skb_treatment(struct __sk_buff *skb, struct who *w)
{
    __u64 cg = bpf_skb_cgroup_id(skb);
    w->t = 0;
    w->cg = cg;
    w->app = 0;
    w->budget = 0;
    if (cg == 0) return;
    const struct wm_cgroup *e = bpf_map_lookup_elem(&wm_cgroups, &cg);
    const struct wm_treatment *t = 0;
    if (e != 0) {
        t = &e->self;
    } else {
        for (int level = WM_MAX_DEPTH; level >= 0; level--) {
            __u64 id = bpf_skb_ancestor_cgroup_id(skb, level);
            if (id == 0 || id == cg) continue;
            e = bpf_map_lookup_elem(&wm_cgroups, &id);
            if (e != 0) {
                t = &e->pending;
                break;
            }
        }
    }
    if (t != 0) {
        w->app = t->app;
        w->budget = t->flags & WM_T_BUDGET;
    }
    t = deciding(t);
    if (t == 0) {
        t = uid_treatment(bpf_get_socket_uid(skb));
        if (t != 0 && t->app != 0) {
            w->app = t->app;
            w->budget = t->flags & WM_T_BUDGET;
        }
    }
    w->t = t;
}

/* `src` (the connect reports' WM_EV_PENDING, WM_EV_UID) says where the treatment came from. */
static __always_inline const struct wm_treatment *current_treatment_src(__u32 *src)
{
    *src = 0;
    const struct wm_treatment *t = deciding(task_treatment(bpf_get_current_cgroup_id(), src));
    if (t != 0) return t;
    *src = WM_EV_UID;
    return uid_treatment((__u32)bpf_get_current_uid_gid());
}

static __always_inline const struct wm_treatment *current_treatment(void)
{
    __u32 src;
    return current_treatment_src(&src);
}

static __always_inline int denied(const struct wm_treatment *t, __u32 slot)
{
    if (slot == 0 || slot > WAYMARK_MAX_SLOTS) return 0;
    return (t->deny & WM_DENY_ALL) || (t->deny & (1u << slot));
}

/* Adds one packet to its wm_usage entry (made on first use). */
static __always_inline void count(const struct wm_usage_key *k, __u32 len, __u32 segs)
{
    __u64 packets = segs > 1 ? segs : 1;
    struct wm_usage_val *v = bpf_map_lookup_elem(&wm_usage, k);
    if (v != 0) {
        /* per-CPU: no other writer */
        v->bytes += len;
        v->packets += packets;
        return;
    }
    struct wm_usage_val init = { .bytes = len, .packets = packets };
    if (bpf_map_update_elem(&wm_usage, k, &init, BPF_NOEXIST) == 0) return;
    v = bpf_map_lookup_elem(&wm_usage, k); /* made by another CPU meanwhile (or the map is full) */
    if (v != 0) {
        v->bytes += len;
        v->packets += packets;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Socket creation: the mark. */

/* compat: also gives the socket its wm_sk storage, the compat packet programs' sign that it is
 * of our namespace (skb_ours). The normal programs keep no per-socket state at all. */
static __always_inline int sock_create(struct bpf_sock *sk, int compat)
{
    if (ours(sk) == 0) return 1;
    if (compat) bpf_sk_storage_get(&wm_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    __u32 mark = sk->mark;
    /* Waymark bits already there: another program (a session's, deeper) ran first. Checked
     * before the lookups: a session's sockets pay no more for them. */
    if (mark & WAYMARK_MARK_MASK) return 1;
    const struct wm_treatment *t = current_treatment();
    if (t == 0 || t->mark == 0) return 1;
    sk->mark = (mark & ~WAYMARK_MARK_MASK) | (t->mark & WAYMARK_MARK_MASK);
    return 1; /* never fail socket() */
}

SEC("cgroup/sock_create")
int wm_sock_create(struct bpf_sock *sk) { return sock_create(sk, 0); }

SEC("cgroup/sock_create")
int wm_sock_create_compat(struct bpf_sock *sk) { return sock_create(sk, 1); }

/* ---------------------------------------------------------------------------------------- */
/* connect() and sendmsg() with an address: late mark, then the fast deny. */

/* A hard mark: a slot, the SOFT flag clear, not the DENY value: the daemon's (fd passing, the
 * library's decisions), the DNS rule's below, a treatment's that names one. (The DENY value has
 * the SOFT bit set: slot 63.) */
static __always_inline int hard_mark(__u32 bits)
{
    __u32 slot = bits >> WAYMARK_MARK_SHIFT;
    return bits != 0 && (bits & WAYMARK_SOFT_FLAG) == 0 && slot != WAYMARK_DENY_SLOT;
}

/* Gives the socket the treatment's mark (for a connect() or send to port 53 with a DNS slot:
 * that slot's hard mark) unless its Waymark bits are a hard mark different from it, which
 * stays. Soft marks, the DENY value and no mark are overwritten (the socket was created before
 * its cgroup had its treatment, or the treatment changed). A session's mark (its program's, at
 * sock_create; soft or hard) stays because the session's entry wants that same mark. Returns
 * the socket's mark afterwards. */
static __always_inline __u32 late_mark(struct bpf_sock_addr *ctx, const struct wm_treatment *t)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk == 0) return 0;
    __u32 mark = sk->mark;
    __u32 have = mark & WAYMARK_MARK_MASK;
    __u32 want = t->mark & WAYMARK_MARK_MASK;
    /* DNS goes by the app's DNS uplink (a hard mark: see WM_T_DNS_SHIFT). */
    __u32 dns = (t->flags & WM_T_DNS_MASK) >> WM_T_DNS_SHIFT;
    if (dns != 0 && ctx->user_port == bpf_htons(53)) want = (dns << WAYMARK_MARK_SHIFT) & WAYMARK_MARK_MASK;
    if (have == want || hard_mark(have)) return mark;
    int m = (int)((mark & ~WAYMARK_MARK_MASK) | want);
    if (bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &m, sizeof m) != 0) return mark;
    return (__u32)m;
}

/* compat: a socket that predates the programs (sock_create gave the others theirs) gets its
 * storage now, so that the compat packet programs know it is of our namespace. */
static __always_inline void compat_storage(struct bpf_sock_addr *ctx)
{
    struct bpf_sock *sk = ctx->sk;
    if (sk != 0) bpf_sk_storage_get(&wm_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
}

/* The uplink slot a packet of this socket will leave by, in the routing ladder's order. dst
 * is looked up only when the ladder gets that far (dst4 != 0: IPv4, else dst6). */
static __always_inline __u32 predict_slot(const struct wm_conf *c, struct bpf_sock *sk, __u32 mark,
                                          const struct wm_dst4_key *dst4,
                                          const struct wm_dst6_key *dst6)
{
    __u32 dev = sk->bound_dev_if;
    if (dev != 0) { /* 4200 oif DEV */
        __u32 *s = bpf_map_lookup_elem(&wm_ifslot, &dev);
        return s != 0 ? *s : 0;
    }
    __u32 ms = (mark & WAYMARK_MARK_MASK) >> WAYMARK_MARK_SHIFT;
    if (ms == WAYMARK_DENY_SLOT) return 0; /* 4100 unreachable: routing refuses it anyway */
    int soft = (mark & WAYMARK_SOFT_FLAG) != 0;
    if (ms != 0 && !soft) return ms; /* 4300 hard mark */
    __u32 *s = dst4 != 0 ? bpf_map_lookup_elem(&wm_dst4, dst4) : bpf_map_lookup_elem(&wm_dst6, dst6);
    /* An entry without a slot (no uplink carries the destination now) is a miss here. */
    if (s != 0 && WM_DST_SLOT(*s) != 0) return WM_DST_SLOT(*s);        /* 4500 destination */
    if (soft) return ms & ~(WAYMARK_SOFT_FLAG >> WAYMARK_MARK_SHIFT); /* 4550 soft mark */
    return dst4 != 0 ? c->main_slot4 : c->main_slot6;                 /* main */
}

/* ---------------------------------------------------------------------------------------- */
/* Connect reports (WM_T_ASK): the daemon hears of the connect, which proceeds as it is. */

static __always_inline void bump(__u32 which)
{
    __u32 zero = 0;
    struct wm_ask_stats *st = bpf_map_lookup_elem(&wm_ask_stats, &zero);
    if (st == 0) return;
    if (which == 0) __sync_fetch_and_add(&st->reported, 1);
    else if (which == 1) __sync_fetch_and_add(&st->dropped, 1);
    else __sync_fetch_and_add(&st->suppressed, 1);
}

/* One record into wm_events, unless the same (cgroup, app, uid, destination) was reported within
 * the quiet period. A full ring drops the record (counted) and leaves the destination unseen, so
 * the next try is reported. a0..a3: the address's 16 bytes as 4 words, network order. */
static __always_inline void report(struct bpf_sock_addr *ctx, const struct wm_conf *c,
                                   const struct wm_treatment *t, __u32 flags, __u8 family,
                                   __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
    struct wm_ask_key k;
    __builtin_memset(&k, 0, sizeof k);
    k.cgroup = bpf_get_current_cgroup_id();
    k.app = t->app;
    k.uid = (__u32)bpf_get_current_uid_gid();
    k.family = family;
    k.protocol = (__u8)ctx->protocol;
    k.port = bpf_ntohs((__u16)ctx->user_port);
    __builtin_memcpy(&k.addr[0], &a0, 4);
    __builtin_memcpy(&k.addr[4], &a1, 4);
    __builtin_memcpy(&k.addr[8], &a2, 4);
    __builtin_memcpy(&k.addr[12], &a3, 4);
    __u64 now = bpf_ktime_get_ns();
    __u64 quiet = c->ask_quiet_ns != 0 ? c->ask_quiet_ns : WM_ASK_QUIET_NS;
    __u64 *last = bpf_map_lookup_elem(&wm_ask_seen, &k);
    if (last != 0 && now - *last < quiet) {
        bump(2);
        return;
    }
    struct wm_connect_event *e = bpf_ringbuf_reserve(&wm_events, sizeof *e, 0);
    if (e == 0) {
        bump(1);
        return;
    }
    e->cgroup = k.cgroup;
    e->ns = now;
    e->app = k.app;
    e->uid = k.uid;
    e->pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
    e->flags = flags;
    e->family = family;
    e->protocol = k.protocol;
    e->port = k.port;
    __builtin_memcpy(e->addr, k.addr, 16);
    if (bpf_get_current_comm(e->comm, sizeof e->comm) != 0) __builtin_memset(e->comm, 0, sizeof e->comm);
    e->pad = 0;
    bpf_ringbuf_submit(e, 0);
    bpf_map_update_elem(&wm_ask_seen, &k, &now, BPF_ANY);
    bump(0);
}

static __always_inline int addr4(struct bpf_sock_addr *ctx, int compat, __u32 via)
{
    const struct wm_conf *c = ours(ctx);
    if (c == 0) return 1;
    __u32 ip = ctx->user_ip4; /* network order */
    if ((ip & 0xff) == 127) return 1; /* 127/8: loopback always works */
    if (compat) compat_storage(ctx);
    __u32 src;
    const struct wm_treatment *t = current_treatment_src(&src);
    if (t == 0) return 1;
    __u32 mark = late_mark(ctx, t);
    int ok = 1;
    if (t->deny != 0 && ctx->sk != 0) {
        struct wm_dst4_key k = { .prefixlen = 32 };
        __builtin_memcpy(k.addr, &ip, 4);
        ok = denied(t, predict_slot(c, ctx->sk, mark, &k, 0)) ? 0 : 1;
    }
    if (t->flags & WM_T_ASK) report(ctx, c, t, src | via | (ok ? 0 : WM_EV_DENIED), 4, ip, 0, 0, 0);
    return ok;
}

static __always_inline int addr6(struct bpf_sock_addr *ctx, int compat, __u32 via)
{
    const struct wm_conf *c = ours(ctx);
    if (c == 0) return 1;
    __u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2],
          w3 = ctx->user_ip6[3]; /* network order */
    int mapped = w0 == 0 && w1 == 0 && w2 == 0xffff0000u;
    if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == 0x01000000u) return 1; /* ::1 */
    if (mapped && (w3 & 0xff) == 127) return 1;                       /* ::ffff:127/104 */
    if (compat) compat_storage(ctx);
    __u32 src;
    const struct wm_treatment *t = current_treatment_src(&src);
    if (t == 0) return 1;
    __u32 mark = late_mark(ctx, t);
    int ok = 1;
    if (t->deny != 0 && ctx->sk != 0) {
        __u32 slot;
        if (mapped) { /* routed as IPv4 */
            struct wm_dst4_key k = { .prefixlen = 32 };
            __builtin_memcpy(k.addr, &w3, 4);
            slot = predict_slot(c, ctx->sk, mark, &k, 0);
        } else {
            struct wm_dst6_key k = { .prefixlen = 128 };
            __builtin_memcpy(&k.addr[0], &w0, 4);
            __builtin_memcpy(&k.addr[4], &w1, 4);
            __builtin_memcpy(&k.addr[8], &w2, 4);
            __builtin_memcpy(&k.addr[12], &w3, 4);
            slot = predict_slot(c, ctx->sk, mark, 0, &k);
        }
        ok = denied(t, slot) ? 0 : 1;
    }
    if (t->flags & WM_T_ASK) {
        __u32 flags = src | via | (ok ? 0 : WM_EV_DENIED);
        /* A v4-mapped destination is IPv4 to everyone downstream (routing, rules, the prompt). */
        if (mapped) report(ctx, c, t, flags, 4, w3, 0, 0, 0);
        else report(ctx, c, t, flags, 6, w0, w1, w2, w3);
    }
    return ok;
}

SEC("cgroup/connect4")
int wm_connect4(struct bpf_sock_addr *ctx) { return addr4(ctx, 0, 0); }

SEC("cgroup/connect6")
int wm_connect6(struct bpf_sock_addr *ctx) { return addr6(ctx, 0, 0); }

SEC("cgroup/sendmsg4")
int wm_sendmsg4(struct bpf_sock_addr *ctx) { return addr4(ctx, 0, WM_EV_SENDMSG); }

SEC("cgroup/sendmsg6")
int wm_sendmsg6(struct bpf_sock_addr *ctx) { return addr6(ctx, 0, WM_EV_SENDMSG); }

SEC("cgroup/connect4")
int wm_connect4_compat(struct bpf_sock_addr *ctx) { return addr4(ctx, 1, 0); }

SEC("cgroup/connect6")
int wm_connect6_compat(struct bpf_sock_addr *ctx) { return addr6(ctx, 1, 0); }

SEC("cgroup/sendmsg4")
int wm_sendmsg4_compat(struct bpf_sock_addr *ctx) { return addr4(ctx, 1, WM_EV_SENDMSG); }

SEC("cgroup/sendmsg6")
int wm_sendmsg6_compat(struct bpf_sock_addr *ctx) { return addr6(ctx, 1, WM_EV_SENDMSG); }

/* ---------------------------------------------------------------------------------------- */
/* Packets: the guarantee (egress drop) and the counters. */

/* Is this packet's socket in our namespace? cgroup_skb may call bpf_get_netns_cookie only since
 * Linux 6.17 (sk_filter_func_proto, 2025). The loader (bpfOpen) probes for it and loads either
 * the programs without a suffix or their *_compat twins, whose packet programs ask the socket's
 * storage instead: wm_sk exists only for sockets our compat sock_create or connect/sendmsg
 * programs saw in our namespace, and for the sockets a listener of theirs accepted (BPF_F_CLONE).
 * The compat programs leave alone the sockets of our namespace that predate the attachment and
 * never connect()ed or sendmsg()ed to an address since. */
static __always_inline const struct wm_conf *skb_ours(struct __sk_buff *skb, int compat)
{
    if (!compat) return ours(skb);
    struct bpf_sock *sk = skb->sk;
    if (sk == 0) return 0;
    sk = bpf_sk_fullsock(sk);
    if (sk == 0) return 0;
    return bpf_sk_storage_get(&wm_sk, sk, 0, 0) != 0 ? conf() : 0;
}

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

/* The destination index of the packet's remote address (egress: its destination, ingress: its
 * source), read from the network header; 0 when none matches. The address is read only when
 * wm_dst4/6 has entries of the packet's family (wm_conf.dst4_count / dst6_count). */
static __always_inline __u8 skb_dest(struct __sk_buff *skb, const struct wm_conf *c, int egress)
{
    __u32 *v = 0;
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (c->dst4_count == 0) return 0;
        struct wm_dst4_key k = { .prefixlen = 32 };
        if (bpf_skb_load_bytes(skb, egress ? 16 : 12, k.addr, 4) != 0) return 0;
        v = bpf_map_lookup_elem(&wm_dst4, &k);
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (c->dst6_count == 0) return 0;
        struct wm_dst6_key k = { .prefixlen = 128 };
        if (bpf_skb_load_bytes(skb, egress ? 24 : 8, k.addr, 16) != 0) return 0;
        v = bpf_map_lookup_elem(&wm_dst6, &k);
    }
    return v != 0 ? (__u8)WM_DST_DEST(*v) : 0;
}

/* The counters' key of a packet. */
static __always_inline void usage_key(struct wm_usage_key *k, struct __sk_buff *skb,
                                      const struct who *w, __u32 slot, __u8 dir, __u8 dest)
{
    __builtin_memset(k, 0, sizeof *k);
    k->app = w->app;
    if (w->app == 0 && w->cg != 0) {
        k->cgroup = w->cg;
        k->uid = bpf_get_socket_uid(skb);
    }
    k->slot = (__u8)slot;
    k->dir = dir;
    k->dest = dest;
}

/* The used counters of the budgets that apply to the packet: the app's (its treatment has
 * WM_T_BUDGET) and the uplink's (wm_conf.budget_slots), each with its limit; 0 where there is
 * none (no limit, or no used entry: the daemon makes that first). No lookup without a flag. */
struct spend {
    __u64 *app_used;
    __u64 app_limit;
    __u64 *any_used;
    __u64 any_limit;
};

static __always_inline void budgets(struct spend *b, const struct wm_conf *c, const struct who *w,
                                    __u32 slot)
{
    b->app_used = 0;
    b->any_used = 0;
    b->app_limit = 0;
    b->any_limit = 0;
    if (w->budget != 0 && w->app != 0) {
        struct wm_budget_key k = { .app = w->app, .slot = slot };
        __u64 *limit = bpf_map_lookup_elem(&wm_budget_limit, &k);
        if (limit != 0) {
            b->app_limit = *limit;
            b->app_used = bpf_map_lookup_elem(&wm_budget_used, &k);
        }
    }
    if (slot < 32 && (c->budget_slots & (1u << slot))) {
        struct wm_budget_key k = { .app = WM_APP_ANY, .slot = slot };
        __u64 *limit = bpf_map_lookup_elem(&wm_budget_limit, &k);
        if (limit != 0) {
            b->any_limit = *limit;
            b->any_used = bpf_map_lookup_elem(&wm_budget_used, &k);
        }
    }
}

/* Some applicable budget is used up (used >= limit). */
static __always_inline int exhausted(const struct spend *b)
{
    return (b->app_used != 0 && *b->app_used >= b->app_limit) ||
           (b->any_used != 0 && *b->any_used >= b->any_limit);
}

static __always_inline void spend(const struct spend *b, __u32 len)
{
    if (b->app_used != 0) __sync_fetch_and_add(b->app_used, (__u64)len);
    if (b->any_used != 0) __sync_fetch_and_add(b->any_used, (__u64)len);
}

/* The device's uplink slot, looked up first: most packets that are not an uplink's (loopback,
 * bridges, tunnels' inner side) stop here. An ifindex means something only in its own namespace,
 * so skb_ours comes next. A packet dropped here (its uplink denied, a budget used up) counts as
 * WM_DIR_TX_DROPPED, not as tx, and is not added to a budget. */
static __always_inline int egress(struct __sk_buff *skb, int compat)
{
    __u32 ifindex = skb->ifindex; /* the output device */
    __u32 *s = bpf_map_lookup_elem(&wm_ifslot, &ifindex);
    if (s == 0 || *s == 0) return 1;
    __u32 slot = *s;
    const struct wm_conf *c = skb_ours(skb, compat);
    if (c == 0) return 1;
    struct who w;
    skb_treatment(skb, &w);
    struct wm_usage_key k;
    usage_key(&k, skb, &w, slot, WM_DIR_TX, skb_dest(skb, c, 1));
    struct spend b;
    budgets(&b, c, &w, slot);
    if ((w.t != 0 && denied(w.t, slot)) || exhausted(&b)) {
        k.dir = WM_DIR_TX_DROPPED;
        count(&k, skb->len, skb->gso_segs);
        return 0;
    }
    spend(&b, skb->len);
    count(&k, skb->len, skb->gso_segs);
    return 1;
}

/* Counted and added to the budgets (the bytes arrived: the operator bills them), then dropped if
 * a budget was already used up: the app gets no more data (and its ACKs stop at egress). */
static __always_inline int ingress(struct __sk_buff *skb, int compat)
{
    __u32 ifindex = skb->ifindex; /* the arrival device */
    __u32 *s = bpf_map_lookup_elem(&wm_ifslot, &ifindex);
    if (s == 0 || *s == 0) return 1;
    __u32 slot = *s;
    const struct wm_conf *c = skb_ours(skb, compat);
    if (c == 0) return 1;
    struct who w;
    skb_treatment(skb, &w);
    struct wm_usage_key k;
    usage_key(&k, skb, &w, slot, WM_DIR_RX, skb_dest(skb, c, 0));
    count(&k, skb->len, skb->gso_segs);
    struct spend b;
    budgets(&b, c, &w, slot);
    int over = exhausted(&b);
    spend(&b, skb->len);
    return over ? 0 : 1;
}

SEC("cgroup_skb/egress")
int wm_egress(struct __sk_buff *skb) { return egress(skb, 0); }

SEC("cgroup_skb/ingress")
int wm_ingress(struct __sk_buff *skb) { return ingress(skb, 0); }

SEC("cgroup_skb/egress")
int wm_egress_compat(struct __sk_buff *skb) { return egress(skb, 1); }

SEC("cgroup_skb/ingress")
int wm_ingress_compat(struct __sk_buff *skb) { return ingress(skb, 1); }
