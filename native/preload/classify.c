/* The one classifier: which calls are ours, what the daemon's answer means for them, applying it.
 *
 * Ours: TCP connect() (and sendto/sendmsg with MSG_FASTOPEN, an implicit connect) on a socket
 * that never connected, UDP connect(), and UDP datagrams sent to an explicit address. Not ours
 * (passed untouched, without asking anyone): non-INET families (AF_UNIX, AF_NETLINK, AF_UNSPEC
 * disconnects), malformed addresses (the real call reports them), loopback and unspecified
 * destinations, multicast and limited broadcast (the program picks the interface), IPv6
 * link-local with a scope id (it already did), raw/ICMP/SCTP sockets, and sockets already bound
 * to a device (the program chose; checked only where an answer would act on the socket).
 *
 * System calls on the hot path (a cached decision), measured here (a bare syscall: 0.17 us):
 *   connect(), TCP:  poll(0 timeout), 0.3 us: a TCP socket that never connected (state CLOSE),
 *                    and only such a stream socket, reports exactly POLLHUP|POLLOUT. Anything
 *                    else takes the full probe: getsockopt(TCP_INFO, 1 byte), 0.57 us, proves
 *                    TCP and gives the state (a second connect() on a connecting socket is left
 *                    alone)
 *                  + setsockopt(SO_BINDTOIFINDEX), 0.41 us, for a STEER answer (by name: 0.53).
 *                    Whether the program bound the socket itself is not asked first unless the
 *                    process may rebind (CAP_NET_RAW): otherwise the kernel refuses a second
 *                    binding with EPERM, which says the same for free.
 *   connect(), UDP:  poll, then TCP_INFO fails and getsockopt(SOL_UDP, UDP_CORK) proves UDP;
 *                    then as TCP.
 *   datagram sends:  getsockopt(SOL_UDP, UDP_CORK) + getsockopt(SO_BINDTODEVICE) for a STEER
 *                    answer; the datagram then leaves with an IP_PKTINFO/IPV6_PKTINFO control
 *                    message naming the uplink's interface, through the sendmsg() the program
 *                    would have made anyway: no socket state, no extra call.
 * With no daemon (nothing mapped, in the back-off after a failed connect, failing open) no system
 * call is made at all; the daemon is looked for again once a second.
 * Nothing about a descriptor is remembered between calls: without hooking close(), dup2(),
 * close_range(), accept() and SCM_RIGHTS a per-fd memo could describe another socket.
 *
 * Why IP_PKTINFO and not IP_UNICAST_IF for datagrams: the interface travels with the one
 * datagram, so two threads sending on one socket to destinations on different uplinks cannot
 * race each other's socket option, nothing has to be reset before a datagram to a passed
 * destination (loopback included, which then costs nothing at all), and a steered datagram
 * costs no setsockopt(). The route lookup sees the same oif either way (the `oif DEV` rule). */
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <fcntl.h>
#include <string.h>

static bool ipv4_ours(uint32_t a /* host order */)
{
    if ((a >> 24) == 127 || a == INADDR_ANY) return false; /* loopback, "this host" */
    if (IN_MULTICAST(a) || a == INADDR_BROADCAST) return false;
    return true;
}

/* The destination as a key (proto left 0), or false when it is not ours. */
static bool target_of(const struct sockaddr *addr, socklen_t len, struct waymark_key *k, bool *v4)
{
    memset(k, 0, sizeof *k);
    if (addr->sa_family == AF_INET) {
        if (len < sizeof(struct sockaddr_in)) return false;
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (!ipv4_ours(ntohl(in->sin_addr.s_addr))) return false;
        k->family = AF_INET;
        k->port = ntohs(in->sin_port);
        memcpy(k->addr, &in->sin_addr, 4);
        *v4 = true;
        return true;
    }
    if (addr->sa_family != AF_INET6 || len < sizeof(struct sockaddr_in6)) return false;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    const struct in6_addr *a = &in6->sin6_addr;
    k->port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(a)) {
        uint32_t v;
        memcpy(&v, &a->s6_addr[12], 4);
        if (!ipv4_ours(ntohl(v))) return false;
        k->family = AF_INET;
        memcpy(k->addr, &v, 4);
        *v4 = true;
        return true;
    }
    if (IN6_IS_ADDR_LOOPBACK(a) || IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_MULTICAST(a))
        return false;
    if (IN6_IS_ADDR_LINKLOCAL(a) && in6->sin6_scope_id != 0) return false;
    k->family = AF_INET6;
    memcpy(k->addr, a, 16);
    *v4 = false;
    return true;
}

static bool probe_tcp(struct waymark_sock *s)
{
    unsigned char state; /* struct tcp_info starts with tcpi_state */
    socklen_t len = sizeof state;
    if (getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &state, &len) != 0) return false;
    s->proto = IPPROTO_TCP;
    s->tcp_fresh = len >= 1 && state == TCP_CLOSE;
    return true;
}

static bool probe_udp(struct waymark_sock *s)
{
    /* Only UDP (and UDP-Lite) sockets answer SOL_UDP options; TCP, raw and ICMP sockets say
     * EOPNOTSUPP/ENOPROTOOPT. */
    int v;
    socklen_t len = sizeof v;
    if (getsockopt(s->fd, SOL_UDP, UDP_CORK, &v, &len) != 0) return false;
    s->proto = IPPROTO_UDP;
    return true;
}

/* The cheap test for the common case, a TCP socket about to make its first connection. In state
 * CLOSE with nothing queued and no error, tcp_poll() reports POLLHUP (CLOSE) and POLLOUT (not
 * shut down for sending), nothing else; a connecting or listening socket has no POLLHUP, a
 * connected one no POLLHUP unless shut down both ways (then POLLIN as well), a UDP socket no
 * POLLHUP unless shut down both ways (POLLIN too). The one look-alike, an AF_UNIX stream socket
 * that never connected, cannot connect() to an INET address anyway: the real call fails as it
 * would have. */
static bool probe_fresh_tcp(struct waymark_sock *s)
{
    struct pollfd p = { .fd = s->fd, .events = POLLIN | POLLOUT };
    if (poll(&p, 1, 0) != 1) return false;
    if ((p.revents & (POLLHUP | POLLOUT | POLLIN | POLLPRI | POLLERR | POLLNVAL)) != (POLLHUP | POLLOUT))
        return false;
    s->proto = IPPROTO_TCP;
    s->tcp_fresh = true;
    return true;
}

static void probe(struct waymark_sock *s, enum waymark_use use, int flags)
{
    if (use == WAYMARK_USE_CONNECT) {
        if (!probe_fresh_tcp(s) && !probe_tcp(s) && !probe_udp(s)) s->proto = -1;
    } else {
        if (!probe_udp(s) && !((flags & MSG_FASTOPEN) && probe_tcp(s))) s->proto = -1;
    }
}

static bool is_bound(struct waymark_sock *s)
{
    if (s->bound < 0) {
        char dev[IFNAMSIZ];
        socklen_t len = sizeof dev;
        if (getsockopt(s->fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &len) != 0)
            s->bound = 1; /* cannot tell: leave it alone */
        else
            s->bound = len > 0 && dev[0] != '\0';
    }
    return s->bound == 1;
}

static const char *why(int err)
{
    switch (err) {
    case EACCES: return "denied by policy";
    case ENETUNREACH:
    case EHOSTUNREACH: return "not reachable over the uplink";
    default: return strerror(err);
    }
}

/* WAYMARK_FAIL: the daemon could not answer, or its answer could not be applied. */
static enum waymark_prep failed(int saved)
{
    if (waymark_config.s.fail_closed) {
        errno = ENETUNREACH;
        return WAYMARK_PREP_FAIL;
    }
    errno = saved;
    return WAYMARK_PREP_PASS;
}

/* By index (cheaper: no name to copy and hash); by name where the kernel predates
 * SO_BINDTOIFINDEX (5.0). The generation changes when a device goes, so a cached index is live. */
static int bind_device(int fd, const struct waymark_answer *a)
{
    if (a->ifindex != 0) {
        int index = (int)a->ifindex;
        if (setsockopt(fd, SOL_SOCKET, SO_BINDTOIFINDEX, &index, sizeof index) == 0) return 0;
        if (errno != ENOPROTOOPT || a->ifname[0] == '\0') return -1;
    }
    return setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, a->ifname, (socklen_t)strlen(a->ifname));
}

enum waymark_prep waymark_prepare(struct waymark_sock *sock, const struct sockaddr *addr,
                                  socklen_t addrlen, int flags, enum waymark_use use,
                                  uint32_t *ifindex, bool *v4)
{
    if (!waymark_config.active || addr == NULL || waymark_in_daemon()) return WAYMARK_PREP_PASS;
    int saved = errno;
    struct waymark_key k;
    bool is_v4 = false;
    if (!target_of(addr, addrlen, &k, &is_v4)) return WAYMARK_PREP_PASS;
    /* No daemon, nothing cached, failing open: the answer is PASS whatever the socket is, so
     * do not even look at it (a system-wide install on a machine without waymarkd). */
    if (!waymark_config.s.fail_closed && !waymark_cache_usable() && waymark_daemon_backing_off())
        return WAYMARK_PREP_PASS;
    if (sock->proto == 0) probe(sock, use, flags);
    bool binds; /* the answer applies to the socket (connect) rather than to one datagram */
    if (sock->proto == IPPROTO_TCP) {
        if (use == WAYMARK_USE_SEND && !(flags & MSG_FASTOPEN)) sock->proto = -1;
        else if (!sock->tcp_fresh) sock->proto = -1; /* connecting, connected or listening */
        binds = true;
    } else {
        binds = use == WAYMARK_USE_CONNECT;
    }
    if (sock->proto < 0) {
        errno = saved;
        return WAYMARK_PREP_PASS;
    }
    k.proto = (uint8_t)sock->proto;

    char where[INET6_ADDRSTRLEN + 16];
    struct waymark_answer a;
    bool fresh = false;
    if (!waymark_cache_get(&k, &a)) {
        struct wm_decide_resp r;
        /* Whether the call may block: a prompt is only waited for where it can (one fcntl, on a
         * first decision only). An event loop's non-blocking connect gets the rule's default at
         * once while the user is asked (docs/prompts.md). */
        int fl = fcntl(sock->fd, F_GETFL);
        bool nonblock = (flags & MSG_DONTWAIT) != 0 || (fl >= 0 && (fl & O_NONBLOCK) != 0);
        int err = waymark_ask_decide(&k, nonblock, &r);
        if (err == -EDEADLK) { /* we are the daemon */
            errno = saved;
            return WAYMARK_PREP_PASS;
        }
        if (err != 0) {
            if (err != -EAGAIN && waymark_config.s.debug)
                waymark_debug("fd %d to %s: no decision (%s), failing %s", sock->fd,
                              wm_describe(k.family, k.addr, k.port, where, sizeof where),
                              strerror(-err), waymark_config.s.fail_closed ? "closed" : "open");
            return failed(saved);
        }
        memset(&a, 0, sizeof a);
        a.action = r.action;
        a.err = r.err;
        a.ifindex = r.ifindex;
        a.generation = r.generation;
        a.ttl_ms = r.ttl_ms;
        memcpy(a.ifname, r.ifname, sizeof a.ifname);
        memcpy(a.uplink, r.uplink, sizeof a.uplink);
        if (a.action == WM_STEER && a.ifindex == 0) a.ifindex = if_nametoindex(a.ifname);
        fresh = true;
        waymark_cache_put(&k, &a);
    }

    switch (a.action) {
    case WM_PASS:
        if (waymark_config.s.debug)
            waymark_debug("fd %d to %s: default routing%s", sock->fd,
                          wm_describe(k.family, k.addr, k.port, where, sizeof where),
                          fresh ? "" : " (cached)");
        errno = saved;
        return WAYMARK_PREP_PASS;

    case WM_DENY:
        if (is_bound(sock)) break; /* the program chose a device itself */
        if (fresh || a.first_use)
            /* Said always, not only under WAYMARK_DEBUG: programs rarely explain ENETUNREACH
             * well. Once per decision, not once per datagram. */
            waymark_warn("%s refused: %s (uplink %s)",
                         wm_describe(k.family, k.addr, k.port, where, sizeof where), why(a.err),
                         a.uplink[0] != '\0' ? a.uplink
                         : waymark_config.s.uplink[0] != '\0' ? waymark_config.s.uplink
                                                              : "none");
        errno = a.err;
        return WAYMARK_PREP_FAIL;

    case WM_STEER:
        if (!binds) {
            if (is_bound(sock)) break;
            if (a.ifindex == 0) { /* the device is gone */
                waymark_cache_drop(&k);
                return failed(saved);
            }
            if (waymark_config.s.debug)
                waymark_debug("fd %d datagram to %s sent over %s%s", sock->fd,
                              wm_describe(k.family, k.addr, k.port, where, sizeof where),
                              a.ifname, fresh ? "" : " (cached)");
            *ifindex = a.ifindex;
            if (v4 != NULL) *v4 = is_v4;
            errno = saved;
            return WAYMARK_PREP_PKTINFO;
        }
        if (waymark_config.can_rebind && is_bound(sock)) break;
        if (bind_device(sock->fd, &a) == 0) {
            sock->bound = 1;
            if (waymark_config.s.debug)
                waymark_debug("fd %d to %s bound to %s%s", sock->fd,
                              wm_describe(k.family, k.addr, k.port, where, sizeof where),
                              a.ifname[0] != '\0' ? a.ifname : "(ifindex)", fresh ? "" : " (cached)");
            errno = saved;
            return WAYMARK_PREP_BOUND;
        }
        int err = errno;
        /* EPERM: bound already (by the program, or by another thread just now): its choice. */
        if (err == EPERM && (!waymark_config.can_rebind || (sock->bound = -1, is_bound(sock))))
            break;
        waymark_cache_drop(&k);
        if (waymark_config.s.debug)
            waymark_debug("fd %d to %s: cannot bind to %s: %s (failing %s)", sock->fd,
                          wm_describe(k.family, k.addr, k.port, where, sizeof where), a.ifname,
                          strerror(err), waymark_config.s.fail_closed ? "closed" : "open");
        return failed(saved);
    }
    errno = saved;
    return WAYMARK_PREP_PASS;
}
