/* sendto(), sendmsg(), sendmmsg() with a destination address: unconnected UDP, and TCP Fast
 * Open (MSG_FASTOPEN connects implicitly: steered like connect()). Without an address
 * (connected sockets) nothing is checked at all.
 *
 * A steered datagram is sent with sendmsg() and one more control message, IP_PKTINFO (IPv4, and
 * IPv4-mapped destinations of IPv6 sockets) or IPV6_PKTINFO, carrying the uplink's ifindex:
 * per datagram, so one socket can talk to destinations on different uplinks, to passed ones and
 * to loopback, from several threads at once. A message that already carries a PKTINFO of the
 * program's own is left as it is (the program chose). */
#include "common.h"

#include <errno.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BATCH 1024u /* UIO_MAXIOV: the kernel sends at most this many of a sendmmsg() */
#define OURS_SPACE CMSG_SPACE(sizeof(struct in6_pktinfo))
#define STACK_CONTROL 512

/* Where the program's control messages end (0 if none), and whether one is a PKTINFO. */
static size_t control_used(const struct msghdr *m, bool *has_pktinfo)
{
    *has_pktinfo = false;
    if (m->msg_control == NULL || m->msg_controllen < sizeof(struct cmsghdr)) return 0;
    size_t used = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)m); c != NULL;
         c = CMSG_NXTHDR((struct msghdr *)m, c)) {
        if ((c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) ||
            (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO))
            *has_pktinfo = true;
        if (c->cmsg_len < sizeof(struct cmsghdr)) break;
        used = (size_t)((char *)c - (char *)m->msg_control) + CMSG_ALIGN(c->cmsg_len);
    }
    return used > m->msg_controllen ? m->msg_controllen : used;
}

/* Writes the program's `used` bytes of control, then ours, into buf (aligned, big enough). */
static size_t build_control(void *buf, const struct msghdr *m, size_t used, uint32_t ifindex,
                            bool v4)
{
    if (used > 0) memcpy(buf, m->msg_control, used);
    memset((char *)buf + used, 0, OURS_SPACE);
    struct cmsghdr *c = (struct cmsghdr *)((char *)buf + used);
    if (v4) {
        struct in_pktinfo pi = { .ipi_ifindex = (int)ifindex };
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof pi);
        memcpy(CMSG_DATA(c), &pi, sizeof pi);
        return used + CMSG_SPACE(sizeof pi);
    }
    struct in6_pktinfo pi = { .ipi6_ifindex = ifindex };
    c->cmsg_level = IPPROTO_IPV6;
    c->cmsg_type = IPV6_PKTINFO;
    c->cmsg_len = CMSG_LEN(sizeof pi);
    memcpy(CMSG_DATA(c), &pi, sizeof pi);
    return used + CMSG_SPACE(sizeof pi);
}

static void free_keep_errno(void *p)
{
    int saved = errno;
    free(p);
    errno = saved;
}

/* sendmsg() of `m` with our PKTINFO added. */
static ssize_t send_steered(int fd, const struct msghdr *m, int flags, uint32_t ifindex, bool v4)
{
    bool theirs;
    size_t used = control_used(m, &theirs);
    if (theirs) return waymark_real.sendmsg(fd, m, flags);
    union {
        struct cmsghdr align;
        char bytes[STACK_CONTROL];
    } stack;
    void *buf = used + OURS_SPACE <= sizeof stack ? (void *)&stack : malloc(used + OURS_SPACE);
    if (buf == NULL) {
        errno = ENOBUFS;
        return -1;
    }
    struct msghdr copy = *m;
    copy.msg_control = buf;
    copy.msg_controllen = build_control(buf, m, used, ifindex, v4);
    ssize_t r = waymark_real.sendmsg(fd, &copy, flags);
    if (buf != (void *)&stack) free_keep_errno(buf);
    return r;
}

WAYMARK_EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags,
                              __CONST_SOCKADDR_ARG uaddr, socklen_t addrlen)
{
    const struct sockaddr *addr = WAYMARK_SOCKADDR(uaddr);
    waymark_init();
    if (waymark_real.sendto == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (addr == NULL) return waymark_real.sendto(fd, buf, len, flags, addr, addrlen);
    struct waymark_sock sock = WAYMARK_SOCK_INIT(fd);
    uint32_t ifindex = 0;
    bool v4 = true;
    switch (waymark_prepare(&sock, addr, addrlen, flags, WAYMARK_USE_SEND, &ifindex, &v4)) {
    case WAYMARK_PREP_FAIL:
        return -1;
    case WAYMARK_PREP_PKTINFO: {
        struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
        struct msghdr m = { .msg_name = (void *)addr, .msg_namelen = addrlen, .msg_iov = &iov,
                            .msg_iovlen = 1 };
        return send_steered(fd, &m, flags, ifindex, v4);
    }
    default:
        return waymark_real.sendto(fd, buf, len, flags, addr, addrlen);
    }
}

WAYMARK_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    waymark_init();
    if (waymark_real.sendmsg == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (msg == NULL || msg->msg_name == NULL) return waymark_real.sendmsg(fd, msg, flags);
    struct waymark_sock sock = WAYMARK_SOCK_INIT(fd);
    uint32_t ifindex = 0;
    bool v4 = true;
    switch (waymark_prepare(&sock, (const struct sockaddr *)msg->msg_name, msg->msg_namelen, flags,
                            WAYMARK_USE_SEND, &ifindex, &v4)) {
    case WAYMARK_PREP_FAIL:
        return -1;
    case WAYMARK_PREP_PKTINFO:
        return send_steered(fd, msg, flags, ifindex, v4);
    default:
        return waymark_real.sendmsg(fd, msg, flags);
    }
}

/* A batch: each message with an address is decided alone. A refused message ends the batch
 * before it (sendmmsg's own rule: the messages before an error count as sent, the error comes
 * with the next call); a refused first message fails the call. When some messages are steered
 * the batch is sent from a copy with the control messages added, and the kernel's msg_len
 * results are copied back. */
WAYMARK_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    waymark_init();
    if (waymark_real.sendmmsg == NULL) {
        errno = ENOSYS;
        return -1;
    }
    unsigned n = vlen > MAX_BATCH ? MAX_BATCH : vlen;
    if (vec == NULL || n == 0) return waymark_real.sendmmsg(fd, vec, vlen, flags);
    struct waymark_sock sock = WAYMARK_SOCK_INIT(fd);
    struct plan {
        bool steer;
        bool v4;
        uint32_t ifindex;
        size_t used;
    } *plan = NULL;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) {
        const struct msghdr *m = &vec[i].msg_hdr;
        if (m->msg_name == NULL) continue;
        uint32_t ifindex = 0;
        bool v4 = true;
        enum waymark_prep r = waymark_prepare(&sock, (const struct sockaddr *)m->msg_name,
                                              m->msg_namelen, flags, WAYMARK_USE_SEND, &ifindex, &v4);
        if (r == WAYMARK_PREP_FAIL) {
            if (i == 0) {
                free_keep_errno(plan);
                return -1;
            }
            n = i;
            break;
        }
        if (r != WAYMARK_PREP_PKTINFO) continue;
        bool theirs;
        size_t used = control_used(m, &theirs);
        if (theirs) continue;
        if (plan == NULL && (plan = calloc(n, sizeof *plan)) == NULL) goto nomem;
        plan[i] = (struct plan){ .steer = true, .v4 = v4, .ifindex = ifindex, .used = used };
        total += used + OURS_SPACE;
    }
    if (plan == NULL) return waymark_real.sendmmsg(fd, vec, n, flags);
    /* One block: the copied headers, then the control buffers (sizeof(struct mmsghdr) keeps
     * them aligned for struct cmsghdr). */
    _Static_assert(sizeof(struct mmsghdr) % _Alignof(struct cmsghdr) == 0, "alignment");
    struct mmsghdr *copy = malloc(sizeof *copy * n + total);
    if (copy == NULL) goto nomem;
    memcpy(copy, vec, sizeof *copy * n);
    char *control = (char *)(copy + n);
    for (unsigned i = 0; i < n; i++) {
        if (!plan[i].steer) continue;
        size_t len = build_control(control, &vec[i].msg_hdr, plan[i].used, plan[i].ifindex, plan[i].v4);
        copy[i].msg_hdr.msg_control = control;
        copy[i].msg_hdr.msg_controllen = len;
        control += len;
    }
    int sent = waymark_real.sendmmsg(fd, copy, n, flags);
    for (int i = 0; i < sent; i++) vec[i].msg_len = copy[i].msg_len;
    free_keep_errno(copy);
    free_keep_errno(plan);
    return sent;

nomem:
    free(plan);
    errno = ENOBUFS;
    return -1;
}
