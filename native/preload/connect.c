/* connect(): steer TCP and UDP sockets before the kernel picks a route for them.
 * A non-blocking connect's EINPROGRESS, EINTR and every other result of the real call pass
 * through untouched; a repeated connect() on a connecting or connected TCP socket, or on a
 * socket already bound to a device, is left alone. */
#include "common.h"

#include <errno.h>
#include <stddef.h>

WAYMARK_EXPORT int connect(int fd, __CONST_SOCKADDR_ARG uaddr, socklen_t addrlen)
{
    const struct sockaddr *addr = WAYMARK_SOCKADDR(uaddr);
    waymark_init();
    if (waymark_real.connect == NULL) {
        errno = ENOSYS;
        return -1;
    }
    struct waymark_sock sock = WAYMARK_SOCK_INIT(fd);
    if (waymark_prepare(&sock, addr, addrlen, 0, WAYMARK_USE_CONNECT, NULL, NULL) < 0) return -1;
    return waymark_real.connect(fd, addr, addrlen);
}
