/* Asking the kernel whether a destination is routable for an uplink, before connecting.
 *
 * Why: a socket bound to a device (SO_BINDTODEVICE, our unprivileged steering) never sees an
 * unreachable route. When the policy lookup fails, the kernel assumes the destination is on-link
 * and ARPs for it, so connect() hangs until it times out. The same lookup made with the uplink's
 * fwmark (what a marked socket would get, and what Waymark's rules answer) fails at once with
 * ENETUNREACH. Equivalent command: ip route get ADDR mark MARK
 * RTM_GETROUTE needs no privilege. One short-lived netlink socket per check keeps this
 * thread-safe and fork-safe without any shared state. */
#include "common.h"

#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

struct route_req {
    struct nlmsghdr nh;
    struct rtmsg rt;
    char attrs[64];
};

static void add_attr(struct route_req *r, unsigned short type, const void *data, size_t len)
{
    struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->nh.nlmsg_len));
    a->rta_type = type;
    a->rta_len = (unsigned short)RTA_LENGTH(len);
    memcpy(RTA_DATA(a), data, len);
    r->nh.nlmsg_len = NLMSG_ALIGN(r->nh.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

int waymark_route_check(const struct sockaddr *addr, uint32_t mark)
{
    struct route_req req;
    memset(&req, 0, sizeof req);
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
    req.nh.nlmsg_type = RTM_GETROUTE;
    req.nh.nlmsg_flags = NLM_F_REQUEST;
    req.nh.nlmsg_seq = 1;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        req.rt.rtm_family = AF_INET;
        req.rt.rtm_dst_len = 32;
        add_attr(&req, RTA_DST, &in->sin_addr, sizeof in->sin_addr);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            req.rt.rtm_family = AF_INET;
            req.rt.rtm_dst_len = 32;
            add_attr(&req, RTA_DST, &in6->sin6_addr.s6_addr[12], 4);
        } else {
            req.rt.rtm_family = AF_INET6;
            req.rt.rtm_dst_len = 128;
            add_attr(&req, RTA_DST, &in6->sin6_addr, sizeof in6->sin6_addr);
        }
    }
    add_attr(&req, RTA_MARK, &mark, sizeof mark);

    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (s < 0) return 0; /* cannot ask: let the connect decide */
    /* The kernel answers at once; the timeout only guards against the impossible. */
    struct timeval tv = { .tv_sec = 0, .tv_usec = 50000 };
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    int result = 0;
    if (sendto(s, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        close(s);
        return 0;
    }
    char buf[1024];
    ssize_t n;
    do {
        n = recv(s, buf, sizeof buf, 0);
    } while (n < 0 && errno == EINTR);
    if (n >= (ssize_t)sizeof(struct nlmsghdr)) {
        struct nlmsghdr *h = (struct nlmsghdr *)buf;
        if (h->nlmsg_type == NLMSG_ERROR && (size_t)n >= NLMSG_LENGTH(sizeof(struct nlmsgerr))) {
            int err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
            if (err == ENETUNREACH || err == EHOSTUNREACH || err == EACCES) result = err;
        }
    }
    close(s);
    return result;
}
