/* libwaymark.so: initialisation, configuration, classification, decision and its application.
 *
 * Configuration (read once, immutable afterwards, so read without locks):
 *   WAYMARK_DEVICE=wwan1   steer sockets to this device (set by `waymark exec --uplink NAME`)
 *   WAYMARK_MARK=0x3000000 the uplink's fwmark: destinations it cannot route fail at once
 *   WAYMARK_FAIL=open      if steering fails, let the call through (default: fail closed)
 *   WAYMARK_DEBUG=1        one line per decision on stderr, prefixed "waymark:"
 *
 * fork() needs no care: the child inherits the initialised state, and no lock is ever held
 * across a hook. exec() re-reads the environment, which carries LD_PRELOAD and WAYMARK_*. */
#include "common.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct waymark_config waymark_config;
struct waymark_real waymark_real;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* The library's own descriptors (the daemon connection, later) are never steered. */
static int own_fd = -1;

static const char *env(const char *name)
{
    /* secure_getenv: nothing from the environment in set-uid/AT_SECURE processes (the loader
     * drops LD_PRELOAD there anyway). */
    const char *v = secure_getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

static void do_init(void)
{
    int saved = errno;
    const char *debug = env("WAYMARK_DEBUG");
    waymark_config.debug = debug != NULL && strcmp(debug, "0") != 0;

    /* Resolve every next definition up front: no lazy lookups (and no dlsym) inside hooks. */
    waymark_real.connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT,
                                                                                   "connect");
    waymark_real.sendto = (ssize_t(*)(int, const void *, size_t, int, const struct sockaddr *,
                                      socklen_t))dlsym(RTLD_NEXT, "sendto");
    waymark_real.sendmsg = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT,
                                                                              "sendmsg");
    waymark_real.sendmmsg = (int (*)(int, struct mmsghdr *, unsigned int, int))dlsym(RTLD_NEXT,
                                                                                     "sendmmsg");

    const char *device = env("WAYMARK_DEVICE");
    if (device != NULL) {
        waymark_config.enabled = true;
        size_t len = strlen(device);
        waymark_config.device_valid = len < IFNAMSIZ && strchr(device, '/') == NULL;
        if (waymark_config.device_valid) memcpy(waymark_config.device, device, len + 1);
    }
    const char *uplink = env("WAYMARK_UPLINK");
    if (uplink != NULL) snprintf(waymark_config.uplink, sizeof waymark_config.uplink, "%s", uplink);
    const char *mark = env("WAYMARK_MARK");
    if (mark != NULL) {
        char *end;
        unsigned long v = strtoul(mark, &end, 0);
        if (*end == '\0' && v <= 0xffffffffUL) waymark_config.mark = (uint32_t)v;
    }
    const char *fail = env("WAYMARK_FAIL");
    waymark_config.fail_open = fail != NULL && strcmp(fail, "open") == 0;

    if (!waymark_real.connect || !waymark_real.sendto || !waymark_real.sendmsg ||
        !waymark_real.sendmmsg)
        waymark_debug("cannot resolve the real socket functions: %s", dlerror());
    if (fail != NULL && strcmp(fail, "open") != 0 && strcmp(fail, "closed") != 0)
        waymark_debug("WAYMARK_FAIL=%s not understood, failing closed", fail);
    if (waymark_config.enabled && !waymark_config.device_valid)
        waymark_debug("WAYMARK_DEVICE=%s is not a device name", device);
    waymark_debug("loaded: device=%s fail=%s", device != NULL ? device : "(none)",
                  waymark_config.fail_open ? "open" : "closed");
    errno = saved;
}

void waymark_init(void)
{
    pthread_once(&init_once, do_init);
}

/* Also before main(), so the hooks normally find everything ready. */
__attribute__((constructor)) static void waymark_constructor(void)
{
    waymark_init();
}

static void vsay(const char *fmt, va_list ap);

void waymark_debug(const char *fmt, ...)
{
    if (!waymark_config.debug) return;
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

void waymark_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

static void vsay(const char *fmt, va_list ap)
{
    int saved = errno;
    char line[512];
    int n = snprintf(line, sizeof line, "waymark: [%d] ", (int)getpid());
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    /* write(2), not stdio: no locks, nothing buffered across fork(). */
    for (size_t off = 0; off < len;) {
        ssize_t w = write(STDERR_FILENO, line + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    errno = saved;
}

static const char *describe(const struct sockaddr *addr, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        port = ntohs(in->sin_port);
        snprintf(buf, size, "%s:%u", ip, port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        port = ntohs(in6->sin6_port);
        snprintf(buf, size, "[%s]:%u", ip, port);
    }
    return buf;
}

static bool ipv4_is_local(uint32_t host_order)
{
    return (host_order >> 24) == 127 || host_order == INADDR_ANY;
}

bool waymark_is_loopback(const struct sockaddr *addr, socklen_t addrlen)
{
    if (addr == NULL) return false;
    if (addr->sa_family == AF_INET && addrlen >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        return ipv4_is_local(ntohl(in->sin_addr.s_addr));
    }
    if (addr->sa_family == AF_INET6 && addrlen >= sizeof(struct sockaddr_in6)) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a)) return true;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            uint32_t v4;
            memcpy(&v4, &a->s6_addr[12], sizeof v4);
            return ipv4_is_local(ntohl(v4));
        }
    }
    return false;
}

static bool bound_to_device(int fd, bool *bound)
{
    char dev[IFNAMSIZ];
    socklen_t len = sizeof dev;
    if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &len) < 0) return false;
    *bound = len > 0 && dev[0] != '\0';
    return true;
}

enum waymark_action waymark_classify(int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    if (!waymark_config.enabled || addr == NULL) return WAYMARK_PASS;
    /* Malformed addresses are the real call's business (EINVAL/EAFNOSUPPORT). */
    if (addr->sa_family == AF_INET) {
        if (addrlen < sizeof(struct sockaddr_in)) return WAYMARK_PASS;
    } else if (addr->sa_family == AF_INET6) {
        if (addrlen < sizeof(struct sockaddr_in6)) return WAYMARK_PASS;
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        /* fe80::%eth0: the program already chose the interface. */
        if (IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr) && in6->sin6_scope_id != 0)
            return WAYMARK_PASS;
    } else {
        return WAYMARK_PASS; /* AF_UNIX, AF_UNSPEC (UDP disconnect), AF_NETLINK, ... */
    }
    if (waymark_is_loopback(addr, addrlen)) return WAYMARK_PASS;
    if (fd == own_fd) return WAYMARK_PASS;

    /* Checked in this order because a bound socket (every packet of a steered UDP socket) is
     * then settled with one system call. Failures (EBADF, ENOTSOCK) pass: the real call
     * reports them. */
    bool bound;
    if (!bound_to_device(fd, &bound) || bound) return WAYMARK_PASS;
    int type;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return WAYMARK_PASS;
    if (type != SOCK_STREAM && type != SOCK_DGRAM) return WAYMARK_PASS; /* raw, SCTP seqpacket */
    if (type == SOCK_STREAM) {
        /* A destination on a connected stream socket is ignored by the kernel: leave it. */
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        if (getpeername(fd, (struct sockaddr *)&peer, &plen) == 0) return WAYMARK_PASS;
    }
    return WAYMARK_STEER;
}

void waymark_decide(int fd, const struct sockaddr *addr, socklen_t addrlen,
                    struct waymark_decision *out)
{
    (void)fd;
    (void)addrlen;
    /* Today: the environment's device for everything. Later: ask the daemon (cached). */
    memset(out, 0, sizeof *out);
    if (waymark_config.mark != 0) {
        int err = waymark_route_check(addr, waymark_config.mark);
        if (err != 0) {
            /* One errno for "this uplink does not go there", whatever the route type said
             * (IPv4 unreachable routes answer EHOSTUNREACH, IPv6 ones ENETUNREACH). */
            out->action = WAYMARK_DENY;
            out->err = err == EACCES ? EACCES : ENETUNREACH;
            return;
        }
    }
    out->action = WAYMARK_STEER;
    if (waymark_config.device_valid)
        memcpy(out->ifname, waymark_config.device, sizeof out->ifname);
    else
        out->err = ENODEV;
}

/* Returns 0, or -1 with errno. */
static int apply(int fd, const struct waymark_decision *d)
{
    if (d->ifname[0] == '\0') {
        errno = d->err != 0 ? d->err : ENODEV;
        return -1;
    }
    /* SO_BINDTODEVICE: unprivileged since Linux 5.7 for a socket not yet bound. */
    return setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, d->ifname, (socklen_t)strlen(d->ifname));
}

int waymark_prepare(int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    int saved = errno;
    if (waymark_classify(fd, addr, addrlen) == WAYMARK_PASS) {
        errno = saved;
        return 0;
    }
    char where[INET6_ADDRSTRLEN + 16];
    struct waymark_decision d;
    waymark_decide(fd, addr, addrlen, &d);
    switch (d.action) {
    case WAYMARK_PASS:
        errno = saved;
        return 0;
    case WAYMARK_DENY:
        /* Said always, not only under WAYMARK_DEBUG: programs rarely explain ENETUNREACH well. */
        waymark_warn("%s is not reachable over uplink %s (%s)", describe(addr, where, sizeof where),
                     waymark_config.uplink[0] != '\0' ? waymark_config.uplink : waymark_config.device,
                     strerror(d.err != 0 ? d.err : EACCES));
        errno = d.err != 0 ? d.err : EACCES;
        return -1;
    case WAYMARK_STEER:
        break;
    }
    if (apply(fd, &d) == 0) {
        if (waymark_config.debug)
            waymark_debug("fd %d to %s bound to %s", fd, describe(addr, where, sizeof where),
                          d.ifname);
        errno = saved;
        return 1;
    }
    int err = errno;
    bool bound;
    if (err == EPERM && bound_to_device(fd, &bound) && bound) {
        /* Another thread bound it between our check and our setsockopt: its choice stands. */
        errno = saved;
        return 0;
    }
    if (waymark_config.debug)
        waymark_debug("fd %d to %s: cannot bind to %s: %s (failing %s)", fd,
                      describe(addr, where, sizeof where),
                      d.ifname[0] != '\0' ? d.ifname : "(invalid device)", strerror(err),
                      waymark_config.fail_open ? "open" : "closed");
    if (waymark_config.fail_open) {
        errno = saved;
        return 0;
    }
    errno = err;
    return -1;
}
