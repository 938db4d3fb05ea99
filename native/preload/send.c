/* sendto(), sendmsg(), sendmmsg() with a destination address: unconnected UDP, and TCP Fast
 * Open (sendto/sendmsg with MSG_FASTOPEN connects implicitly). Without an address (connected
 * sockets) nothing is checked at all. The device binding is per socket, so the first steered
 * destination decides for every later packet of that socket. */
#include "common.h"

#include <errno.h>
#include <stddef.h>

WAYMARK_EXPORT ssize_t sendto(int fd, const void *buf, size_t len, int flags,
                              __CONST_SOCKADDR_ARG uaddr, socklen_t addrlen)
{
    const struct sockaddr *addr = WAYMARK_SOCKADDR(uaddr);
    waymark_init();
    if (waymark_real.sendto == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (addr != NULL && waymark_prepare(fd, addr, addrlen) < 0) return -1;
    return waymark_real.sendto(fd, buf, len, flags, addr, addrlen);
}

WAYMARK_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    waymark_init();
    if (waymark_real.sendmsg == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (msg != NULL && msg->msg_name != NULL &&
        waymark_prepare(fd, (const struct sockaddr *)msg->msg_name, msg->msg_namelen) < 0)
        return -1;
    return waymark_real.sendmsg(fd, msg, flags);
}

WAYMARK_EXPORT int sendmmsg(int fd, struct mmsghdr *vec, unsigned int vlen, int flags)
{
    waymark_init();
    if (waymark_real.sendmmsg == NULL) {
        errno = ENOSYS;
        return -1;
    }
    for (unsigned int i = 0; vec != NULL && i < vlen; i++) {
        const struct msghdr *m = &vec[i].msg_hdr;
        if (m->msg_name == NULL) continue;
        int r = waymark_prepare(fd, (const struct sockaddr *)m->msg_name, m->msg_namelen);
        if (r < 0) return -1;
        if (r > 0) break; /* bound now: the rest of the batch follows the socket */
    }
    return waymark_real.sendmmsg(fd, vec, vlen, flags);
}
