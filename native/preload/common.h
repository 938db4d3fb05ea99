/* libwaymark.so internals, shared by its files. The library is laid out like torsocks:
 *
 *   connect.c, send.c, dns.c   thin hooks: init, classify/decide/apply, then the real call
 *   init.c                     once-only initialisation, configuration, messages
 *   classify.c                 the one classifier: which calls are ours, what the answer means
 *   daemon.c                   asking waymarkd (one connection per thread, bounded in time)
 *   cache.c                    the one mutable registry and its one lock: decisions, the mapped
 *                              generation, the list of per-thread daemon connections
 *   ../client/proto.c          the protocol itself, shared with libwaymark-client.so
 *
 * Flow of a socket hook:
 *     waymark_init();                                   once per process (pthread_once)
 *     r = waymark_prepare(fd, addr, ..., &sock, &ifindex)   classify -> decide -> apply
 *     if (r < 0) return -1;                             denied / failed closed, errno set
 *     return real.fn(...);                              errno of the real call untouched
 *
 * Nothing here is exported: the library is built with -fvisibility=hidden and only the hooks
 * carry WAYMARK_EXPORT. */
#ifndef WAYMARK_PRELOAD_COMMON_H
#define WAYMARK_PRELOAD_COMMON_H

#include <net/if.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "proto.h"

#define WAYMARK_EXPORT __attribute__((visibility("default")))

/* With _GNU_SOURCE, glibc declares the address argument of connect()/sendto() as a transparent
 * union (__CONST_SOCKADDR_ARG); a hook must use the same type and unwrap it. */
#if defined(__USE_GNU) && !defined(__cplusplus)
#define WAYMARK_SOCKADDR(arg) ((arg).__sockaddr__)
#else
#define WAYMARK_SOCKADDR(arg) (arg)
#endif

/* Immutable after waymark_init(): read without locks. */
struct waymark_config {
    struct wm_settings s;  /* the environment (client/proto.h lists the variables) */
    bool active;           /* loaded, real functions found, not WAYMARK_DISABLE'd */
    bool can_rebind;       /* CAP_NET_RAW permitted at load: SO_BINDTODEVICE may rebind a
                              socket the program bound itself, so look before binding */
};

/* The next definitions of the hooked functions (dlsym RTLD_NEXT), resolved once. */
struct waymark_real {
    int (*connect)(int, const struct sockaddr *, socklen_t);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
    int (*getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
    struct hostent *(*gethostbyname)(const char *);
    struct hostent *(*gethostbyname2)(const char *, int);
    int (*gethostbyname_r)(const char *, struct hostent *, char *, size_t, struct hostent **,
                           int *);
    int (*gethostbyname2_r)(const char *, int, struct hostent *, char *, size_t,
                            struct hostent **, int *);
};

extern struct waymark_config waymark_config;
extern struct waymark_real waymark_real;

/* Idempotent, thread-safe; also run from the library constructor, so normally already done. */
void waymark_init(void);

/* One line "waymark: [pid] ..." on stderr when WAYMARK_DEBUG is set. Preserves errno. */
void waymark_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "waymark: ..." on stderr, always: for refusals the user must understand. Preserves errno. */
void waymark_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- classify.c ------------------------------------------------------------------------- */

/* A destination as the protocol and the cache see it: IPv4-mapped IPv6 becomes IPv4. */
struct waymark_key {
    uint8_t family;        /* AF_INET or AF_INET6 */
    uint8_t proto;         /* IPPROTO_TCP or IPPROTO_UDP */
    uint16_t port;         /* host order */
    uint8_t addr[16];      /* IPv4 in the first 4 bytes, the rest zero */
};

/* What the classifier learnt about a socket, kept for the length of one hook call (sendmmsg
 * asks once for a whole batch). Never kept across calls: the fd may be closed and its number
 * reused at any time. */
struct waymark_sock {
    int fd;
    int8_t proto;          /* 0 not probed yet, -1 not ours, IPPROTO_TCP, IPPROTO_UDP */
    int8_t bound;          /* -1 not probed yet, 0 no device, 1 bound to a device */
    bool tcp_fresh;        /* TCP and in state CLOSE (never connected) */
};
#define WAYMARK_SOCK_INIT(f) { .fd = (f), .proto = 0, .bound = -1, .tcp_fresh = false }

enum waymark_use {
    WAYMARK_USE_CONNECT,   /* connect(): TCP or UDP, steered by binding the socket */
    WAYMARK_USE_SEND,      /* sendto/sendmsg/sendmmsg with an address: a UDP datagram is steered
                              alone (IP_PKTINFO); TCP only with MSG_FASTOPEN (then as connect) */
};

enum waymark_prep {
    WAYMARK_PREP_FAIL = -1,   /* errno set: the call must fail */
    WAYMARK_PREP_PASS = 0,    /* do the call unchanged */
    WAYMARK_PREP_BOUND = 1,   /* the socket is now bound to the uplink's device */
    WAYMARK_PREP_PKTINFO = 2, /* send this datagram with an IP(V6)_PKTINFO for *ifindex */
};

/* classify + decide + apply for one destination. Preserves errno unless it fails.
 * *v4 (may be NULL) tells PKTINFO users which control message fits: IPv4 (also v4-mapped on an
 * IPv6 socket) or IPv6. */
enum waymark_prep waymark_prepare(struct waymark_sock *sock, const struct sockaddr *addr,
                                  socklen_t addrlen, int flags, enum waymark_use use,
                                  uint32_t *ifindex, bool *v4);

/* ---- cache.c: the registry ---------------------------------------------------------------- */

/* A decision as cached. */
struct waymark_answer {
    uint8_t action;        /* WM_PASS / WM_STEER / WM_DENY */
    uint16_t err;          /* WM_DENY */
    uint32_t ifindex;      /* WM_STEER */
    uint32_t generation;
    uint32_t ttl_ms;
    char ifname[IFNAMSIZ];
    char uplink[32];
    bool first_use;        /* get: nobody used this cached entry yet (say refusals once) */
};

/* A valid entry for k (same generation as the mapped file, not expired): true and *out. */
bool waymark_cache_get(const struct waymark_key *k, struct waymark_answer *out);
/* Stores an answer fresh from the daemon (if its ttl and generation allow caching). */
void waymark_cache_put(const struct waymark_key *k, const struct waymark_answer *a);
/* Forgets k (a STEER that could not be applied). */
void waymark_cache_drop(const struct waymark_key *k);
/* Forgets everything (the daemon is gone: its decisions go with it). */
void waymark_cache_clear(void);
/* Whether anything can be cached at all (the generation file is mapped). Lock-free. */
bool waymark_cache_usable(void);

/* The per-thread daemon connections, listed so a forked child can close them all. */
struct waymark_link {
    struct wm_conn conn;
    struct waymark_link *prev, *next;
    bool listed;
};
void waymark_registry_add(struct waymark_link *l);
void waymark_registry_remove(struct waymark_link *l);

/* Called once from init: maps the generation file, registers the fork handlers. */
void waymark_registry_init(void);

/* ---- daemon.c ----------------------------------------------------------------------------- */

/* Asks the daemon. 0 and a checked response, or -errno (the daemon could not answer: absent,
 * timed out, broken answer, or inside the back-off after such a failure: -EAGAIN; -EDEADLK:
 * this process is the daemon, see waymark_in_daemon()). */
int waymark_ask_decide(const struct waymark_key *k, bool nonblock, struct wm_decide_resp *out);
int waymark_ask_resolve(const char *name, int family, struct wm_resolve_resp *out);

/* Thread-exit cleanup key, created by init. */
void waymark_daemon_init(void);

/* Inside the back-off after a failure: asking now would answer -EAGAIN at once. Lock-free. */
bool waymark_daemon_backing_off(void);

/* This process is waymarkd itself (its decide socket's listener): nothing is ever steered or
 * resolved here, fail-closed or not. Lock-free. */
bool waymark_in_daemon(void);

#endif
