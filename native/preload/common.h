/* libwaymark.so internals shared by the per-call-family hook files (connect.c, send.c, ...).
 *
 * Flow of every hook:
 *     waymark_init();                               once per process (pthread_once)
 *     r = waymark_prepare(fd, addr, addrlen);       classify -> decide -> apply
 *     if (r < 0) return -1;                         denied / failed closed, errno set
 *     return real.fn(...);                          errno of the real call untouched
 *
 * Nothing here is exported: the library is built with -fvisibility=hidden and only the hooks
 * carry WAYMARK_EXPORT. */
#ifndef WAYMARK_PRELOAD_COMMON_H
#define WAYMARK_PRELOAD_COMMON_H

#include <net/if.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define WAYMARK_EXPORT __attribute__((visibility("default")))

/* With _GNU_SOURCE, glibc declares the address argument of connect()/sendto() as a transparent
 * union (__CONST_SOCKADDR_ARG); a hook must use the same type and unwrap it. */
#if defined(__USE_GNU) && !defined(__cplusplus)
#define WAYMARK_SOCKADDR(arg) ((arg).__sockaddr__)
#else
#define WAYMARK_SOCKADDR(arg) (arg)
#endif

/* What to do with a socket about to talk to a destination. */
enum waymark_action {
    WAYMARK_PASS = 0, /* leave it alone: loopback, AF_UNIX, not INET, already bound, our own fd */
    WAYMARK_STEER,    /* route it over an uplink (device binding now; a mark later) */
    WAYMARK_DENY,     /* refuse the call with decision.err */
};

/* The outcome of waymark_decide(). Today it comes from the environment; later from the daemon
 * (over a seqpacket socket, with the fd passed along), cached per destination. */
struct waymark_decision {
    enum waymark_action action;
    char ifname[IFNAMSIZ]; /* STEER: device to bind to ('' = none) */
    uint32_t mark;         /* STEER: SO_MARK set by the daemon on our behalf (0 = none); unused yet */
    int err;               /* DENY: errno returned to the caller */
};

/* Immutable after waymark_init(): read without locks. */
struct waymark_config {
    bool enabled;          /* WAYMARK_DEVICE set and non-empty */
    bool device_valid;     /* the name fits IFNAMSIZ */
    bool fail_open;        /* WAYMARK_FAIL=open: on failure to steer, let the call through */
    bool debug;            /* WAYMARK_DEBUG set (and not "0") */
    char device[IFNAMSIZ];
    char uplink[32];       /* WAYMARK_UPLINK: the uplink's name, for messages */
    uint32_t mark;         /* WAYMARK_MARK: the uplink's fwmark, used to ask the kernel whether a
                              destination is routable over it (0 = do not ask) */
};

/* The next definitions of the hooked functions (dlsym RTLD_NEXT), resolved once. */
struct waymark_real {
    int (*connect)(int, const struct sockaddr *, socklen_t);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
};

extern struct waymark_config waymark_config;
extern struct waymark_real waymark_real;

/* Idempotent, thread-safe, async-signal-unsafe only on the very first call (like any lazy
 * initialisation); also run from the library constructor, so normally already done. */
void waymark_init(void);

/* PASS, STEER or DENY for this fd and destination, from the socket alone (no policy). */
enum waymark_action waymark_classify(int fd, const struct sockaddr *addr, socklen_t addrlen);

/* The policy decision for a socket that waymark_classify() wants steered. */
void waymark_decide(int fd, const struct sockaddr *addr, socklen_t addrlen,
                    struct waymark_decision *out);

/* classify + decide + apply. Returns 1 if the socket was steered now, 0 if left alone (pass,
 * or failed open), -1 with errno set if the call must fail. Preserves errno unless it fails. */
int waymark_prepare(int fd, const struct sockaddr *addr, socklen_t addrlen);

/* True for 127/8, ::1, ::ffff:127/104 and the unspecified addresses (which Linux connects to
 * locally). */
bool waymark_is_loopback(const struct sockaddr *addr, socklen_t addrlen);

/* 0 if the kernel routes `addr` for a socket carrying `mark`; else ENETUNREACH, EHOSTUNREACH or
 * EACCES (an unreachable/prohibit route or rule). Errors of the check itself count as routable. */
int waymark_route_check(const struct sockaddr *addr, uint32_t mark);

/* One line "waymark: ..." on stderr when WAYMARK_DEBUG is set. Preserves errno. */
void waymark_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The same line, always: for refusals the user must understand. Preserves errno. */
void waymark_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
