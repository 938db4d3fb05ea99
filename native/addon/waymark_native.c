/* waymark_native: the small set of socket operations Node's `net` module cannot do.
 *
 *   - AF_NETLINK sockets (rtnetlink dumps, multicast groups) polled by the Node event loop
 *   - SO_PEERCRED, SO_MARK, SO_BINDTODEVICE, SO_DOMAIN/SO_TYPE/SO_PROTOCOL
 *   - Unix sockets (seqpacket or stream), the transport of the decision protocol between
 *     libwaymark.so and the daemon
 *   - the kernel backstop: a 4-instruction cgroup BPF program that marks every socket created
 *     in a cgroup v2 (raw bpf() syscall, no libbpf)
 *   - the app programs (native/bpf/waymark.bpf.o): loaded and attached with libbpf, their maps
 *     read and written by name (bpfOpen, bpfUpdate, ...)
 *
 * Conventions:
 *   - every socket is created non-blocking and close-on-exec
 *   - "would block" is not an error: recv/accept return null
 *   - a failed system call throws an Error with .code (errno name, 'EPERM'), .errno (negative, as
 *     Node's own system errors, so util.getSystemErrorName(err.errno) works) and .syscall
 *   - a bad argument throws a TypeError/RangeError with .code 'ERR_INVALID_ARG_TYPE'/'ERR_OUT_OF_RANGE'
 *   - EINTR is retried everywhere except close()
 */
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <net/if.h>
#include <linux/bpf.h>
#include <linux/magic.h>
#include <linux/netlink.h>
#include <stdarg.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>

#include "waymark_bpf.h"

#include <node_api.h>
#include <uv.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_NO_ENOBUFS
#define NETLINK_NO_ENOBUFS 5
#endif

#define DEFAULT_RECV_SIZE (64 * 1024)
#define MAX_RECV_SIZE (16 * 1024 * 1024)
#define NETLINK_RCVBUF (4 * 1024 * 1024)
/* SCM_MAX_FD in the kernel: the most fds one message can carry. */

/* ------------------------------------------------------------------------------------------ */
/* Errors and argument helpers                                                                 */

/* Returns NULL after throwing, so callers can `return throw_errno(...)`. */
static napi_value throw_errno(napi_env env, int err, const char *syscall)
{
    const char *name = strerrorname_np(err);
    char namebuf[24];
    if (name == NULL) {
        snprintf(namebuf, sizeof namebuf, "E%d", err);
        name = namebuf;
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s %s: %s", syscall, name, strerror(err));

    napi_value code, message, error, errnum, sc;
    if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
        napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
        napi_create_error(env, code, message, &error) != napi_ok) {
        napi_throw_error(env, name, msg);
        return NULL;
    }
    napi_create_int32(env, -err, &errnum);
    napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
    napi_set_named_property(env, error, "errno", errnum);
    napi_set_named_property(env, error, "syscall", sc);
    napi_throw(env, error);
    return NULL;
}

static napi_value throw_type(napi_env env, const char *msg)
{
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return NULL;
}

static napi_value throw_range(napi_env env, const char *msg)
{
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return NULL;
}

/* For a socket being set up: closes fd (keeping errno for the message) and throws the failure. */
static napi_value close_and_throw(napi_env env, int fd, const char *syscall)
{
    int err = errno;
    close(fd);
    return throw_errno(env, err, syscall);
}

#define CHECK_NAPI(env, call)                                                                   \
    do {                                                                                        \
        if ((call) != napi_ok) {                                                                \
            bool pending_ = false;                                                              \
            napi_is_exception_pending((env), &pending_);                                        \
            if (!pending_) napi_throw_error((env), "ERR_NAPI", "N-API call failed: " #call);     \
            return NULL;                                                                        \
        }                                                                                       \
    } while (0)

/* Fetches exactly `want` arguments, at least `min` of them required. */
static bool get_args(napi_env env, napi_callback_info info, size_t min, size_t want,
                     napi_value *argv, void **data)
{
    size_t argc = want;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, data) != napi_ok) {
        napi_throw_error(env, "ERR_NAPI", "napi_get_cb_info failed");
        return false;
    }
    if (argc < min) {
        napi_throw_type_error(env, "ERR_MISSING_ARGS", "missing arguments");
        return false;
    }
    for (size_t i = argc; i < want; i++) napi_get_undefined(env, &argv[i]);
    return true;
}

static bool is_undefined(napi_env env, napi_value v)
{
    napi_valuetype t;
    return napi_typeof(env, v, &t) == napi_ok && (t == napi_undefined || t == napi_null);
}

/* An integer in [min, max]; non-integers and NaN are rejected. */
static bool get_int(napi_env env, napi_value v, const char *what, int64_t min, int64_t max,
                    int64_t *out)
{
    napi_valuetype t;
    char msg[128];
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) {
        snprintf(msg, sizeof msg, "%s must be a number", what);
        throw_type(env, msg);
        return false;
    }
    double d;
    napi_get_value_double(env, v, &d);
    if (!(d >= (double)min && d <= (double)max) || d != (double)(int64_t)d) {
        snprintf(msg, sizeof msg, "%s must be an integer in [%lld, %lld]", what, (long long)min,
                 (long long)max);
        throw_range(env, msg);
        return false;
    }
    *out = (int64_t)d;
    return true;
}

static bool get_fd(napi_env env, napi_value v, int *fd)
{
    int64_t x;
    if (!get_int(env, v, "fd", 0, INT_MAX, &x)) return false;
    *fd = (int)x;
    return true;
}

static bool get_size(napi_env env, napi_value v, size_t *size)
{
    if (is_undefined(env, v)) {
        *size = DEFAULT_RECV_SIZE;
        return true;
    }
    int64_t x;
    if (!get_int(env, v, "size", 1, MAX_RECV_SIZE, &x)) return false;
    *size = (size_t)x;
    return true;
}

/* Any Uint8Array (Buffer included). */
static bool get_bytes(napi_env env, napi_value v, void **data, size_t *len)
{
    bool is_ta = false;
    if (napi_is_typedarray(env, v, &is_ta) == napi_ok && is_ta) {
        napi_typedarray_type type;
        size_t length;
        if (napi_get_typedarray_info(env, v, &type, &length, data, NULL, NULL) == napi_ok &&
            (type == napi_uint8_array || type == napi_int8_array ||
             type == napi_uint8_clamped_array)) {
            *len = length;
            if (*data == NULL) *data = (void *)"";
            return true;
        }
    }
    throw_type(env, "buf must be a Buffer or Uint8Array");
    return false;
}

/* A string copied into buf (NUL-terminated); fails if it does not fit or contains NUL. */
static bool get_string(napi_env env, napi_value v, const char *what, char *buf, size_t bufsize,
                       size_t *len)
{
    napi_valuetype t;
    char msg[128];
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
        snprintf(msg, sizeof msg, "%s must be a string", what);
        throw_type(env, msg);
        return false;
    }
    size_t need;
    napi_get_value_string_utf8(env, v, NULL, 0, &need);
    if (need + 1 > bufsize) {
        snprintf(msg, sizeof msg, "%s is too long (%zu bytes, at most %zu)", what, need,
                 bufsize - 1);
        throw_range(env, msg);
        return false;
    }
    napi_get_value_string_utf8(env, v, buf, bufsize, len);
    if (strlen(buf) != *len) {
        snprintf(msg, sizeof msg, "%s must not contain NUL characters", what);
        throw_type(env, msg);
        return false;
    }
    return true;
}

static napi_value make_int(napi_env env, int64_t x)
{
    napi_value v;
    napi_create_int64(env, x, &v);
    return v;
}

static napi_value make_undefined(napi_env env)
{
    napi_value v;
    napi_get_undefined(env, &v);
    return v;
}

static napi_value make_null(napi_env env)
{
    napi_value v;
    napi_get_null(env, &v);
    return v;
}

static int getsockopt_int(int fd, int level, int opt, int *out)
{
    socklen_t len = sizeof *out;
    return getsockopt(fd, level, opt, out, &len);
}

/* ------------------------------------------------------------------------------------------ */
/* Netlink                                                                                     */

/* netlinkOpen(protocol, groups) -> fd */
static napi_value js_netlink_open(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int64_t protocol, groups;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_int(env, argv[0], "protocol", 0, 31, &protocol)) return NULL;
    if (!get_int(env, argv[1], "groups", 0, UINT32_MAX, &groups)) return NULL;

    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, (int)protocol);
    if (fd < 0) return throw_errno(env, errno, "socket");

    /* A big receive buffer makes ENOBUFS (lost events, resync needed) rare. FORCE needs
     * CAP_NET_ADMIN; otherwise the plain option is capped by net.core.rmem_max. */
    int rcvbuf = NETLINK_RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int one = 1, zero = 0;
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
    /* Keep ENOBUFS reporting on: the caller must learn that it missed events. */
    (void)setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &zero, sizeof zero);

    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    sa.nl_groups = (uint32_t)groups;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        return close_and_throw(env, fd, "bind");
    }
    return make_int(env, fd);
}

static napi_value membership(napi_env env, napi_callback_info info, int opt, const char *name)
{
    napi_value argv[2];
    int fd;
    int64_t group;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (!get_int(env, argv[1], "group", 1, UINT32_MAX, &group)) return NULL;
    unsigned int g = (unsigned int)group;
    if (setsockopt(fd, SOL_NETLINK, opt, &g, sizeof g) < 0) return throw_errno(env, errno, name);
    return make_undefined(env);
}

/* netlinkAddMembership(fd, group) */
static napi_value js_netlink_add_membership(napi_env env, napi_callback_info info)
{
    return membership(env, info, NETLINK_ADD_MEMBERSHIP, "setsockopt(NETLINK_ADD_MEMBERSHIP)");
}

/* netlinkDropMembership(fd, group) */
static napi_value js_netlink_drop_membership(napi_env env, napi_callback_info info)
{
    return membership(env, info, NETLINK_DROP_MEMBERSHIP, "setsockopt(NETLINK_DROP_MEMBERSHIP)");
}

/* netlinkPortId(fd) -> the nl_pid the kernel assigned (replies carry it in nlmsg_pid) */
static napi_value js_netlink_port_id(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    struct sockaddr_nl sa;
    socklen_t len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return throw_errno(env, errno, "getsockname");
    if (sa.nl_family != AF_NETLINK) return throw_errno(env, EAFNOSUPPORT, "getsockname");
    return make_int(env, sa.nl_pid);
}

/* netlinkSend(fd, buf): one datagram to the kernel */
static napi_value js_netlink_send(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int fd;
    void *data;
    size_t len;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (!get_bytes(env, argv[1], &data, &len)) return NULL;
    struct sockaddr_nl sa;
    memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    ssize_t n;
    do n = sendto(fd, data, len, 0, (struct sockaddr *)&sa, sizeof sa);
    while (n < 0 && errno == EINTR);
    if (n < 0) return throw_errno(env, errno, "sendto");
    if ((size_t)n != len) return throw_errno(env, EMSGSIZE, "sendto");
    return make_undefined(env);
}

/* ------------------------------------------------------------------------------------------ */
/* Plain datagram / stream I/O                                                                  */

/* recv(fd, size = 65536) -> Buffer | null
 * One datagram (or up to `size` bytes of a stream; an empty Buffer is EOF on a stream).
 * A datagram larger than `size` is consumed and reported as EMSGSIZE, never silently cut. */
static napi_value js_recv(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int fd;
    size_t size;
    if (!get_args(env, info, 1, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (!get_size(env, argv[1], &size)) return NULL;

    void *buf = malloc(size);
    if (buf == NULL) return throw_errno(env, ENOMEM, "recv");
    struct iovec iov = { .iov_base = buf, .iov_len = size };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    ssize_t n;
    do n = recvmsg(fd, &msg, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        int err = errno;
        free(buf);
        if (err == EAGAIN || err == EWOULDBLOCK) return make_null(env);
        return throw_errno(env, err, "recvmsg");
    }
    if (msg.msg_flags & MSG_TRUNC) {
        free(buf);
        return throw_errno(env, EMSGSIZE, "recvmsg");
    }
    napi_value result;
    napi_status st = napi_create_buffer_copy(env, (size_t)n, buf, NULL, &result);
    free(buf);
    CHECK_NAPI(env, st);
    return result;
}

/* recvInto(fd, buf) -> the length of one message received into buf, or null (would block).
 * Allocates nothing: for hot paths that reuse one buffer. A message longer than buf is consumed
 * and thrown as EMSGSIZE; 0 is EOF on a stream or seqpacket socket. */
static napi_value js_recv_into(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int fd;
    void *data;
    size_t len;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (!get_bytes(env, argv[1], &data, &len)) return NULL;
    if (len == 0) return throw_range(env, "buf must not be empty");
    ssize_t n;
    do n = recv(fd, data, len, MSG_DONTWAIT | MSG_TRUNC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return make_null(env);
        return throw_errno(env, errno, "recv");
    }
    if ((size_t)n > len) return throw_errno(env, EMSGSIZE, "recv");
    return make_int(env, n);
}

/* yieldCpu(): sched_yield(). Lets another runnable task on this CPU go first; returns at once
 * when there is none. For busy polling that must not take the CPU from anybody. */
static napi_value js_yield_cpu(napi_env env, napi_callback_info info)
{
    (void)info;
    sched_yield();
    return make_undefined(env);
}

/* send(fd, buf) -> bytes sent. Never raises SIGPIPE. EAGAIN is thrown (code 'EAGAIN'). */
static napi_value js_send(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int fd;
    void *data;
    size_t len;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (!get_bytes(env, argv[1], &data, &len)) return NULL;
    ssize_t n;
    do n = send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) return throw_errno(env, errno, "send");
    return make_int(env, n);
}

/* close(fd). EINTR counts as closed (Linux always releases the fd). */
static napi_value js_close(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (close(fd) < 0 && errno != EINTR) return throw_errno(env, errno, "close");
    return make_undefined(env);
}

/* ------------------------------------------------------------------------------------------ */
/* Unix sockets                                                                                */

static bool get_unix_type(napi_env env, napi_value v, int *type)
{
    char s[16];
    size_t len;
    if (!get_string(env, v, "type", s, sizeof s, &len)) return false;
    if (strcmp(s, "seqpacket") == 0) *type = SOCK_SEQPACKET;
    else if (strcmp(s, "stream") == 0) *type = SOCK_STREAM;
    else {
        throw_type(env, "type must be 'seqpacket' or 'stream'");
        return false;
    }
    return true;
}

static bool get_unix_addr(napi_env env, napi_value v, struct sockaddr_un *sun, socklen_t *alen)
{
    size_t len;
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (!get_string(env, v, "path", sun->sun_path, sizeof sun->sun_path, &len)) return false;
    if (len == 0) {
        throw_type(env, "path must not be empty");
        return false;
    }
    *alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return true;
}

/* unixListen(path, type, backlog, mode) -> fd
 * A stale socket file is removed first; any other kind of file at `path` is an error (EEXIST).
 * The mode is applied between bind() and listen(), so no connection can be made while the
 * file still has the umask's permissions. */
static napi_value js_unix_listen(napi_env env, napi_callback_info info)
{
    napi_value argv[4];
    int type;
    int64_t backlog, mode;
    struct sockaddr_un sun;
    socklen_t alen;
    if (!get_args(env, info, 4, 4, argv, NULL)) return NULL;
    if (!get_unix_addr(env, argv[0], &sun, &alen)) return NULL;
    if (!get_unix_type(env, argv[1], &type)) return NULL;
    if (!get_int(env, argv[2], "backlog", 0, INT_MAX, &backlog)) return NULL;
    if (!get_int(env, argv[3], "mode", 0, 07777, &mode)) return NULL;

    struct stat st;
    if (lstat(sun.sun_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) return throw_errno(env, EEXIST, "unixListen");
        if (unlink(sun.sun_path) < 0 && errno != ENOENT) return throw_errno(env, errno, "unlink");
    } else if (errno != ENOENT) {
        return throw_errno(env, errno, "lstat");
    }

    int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return throw_errno(env, errno, "socket");
    const char *failed = NULL;
    if (bind(fd, (struct sockaddr *)&sun, alen) < 0) failed = "bind";
    else if (chmod(sun.sun_path, (mode_t)mode) < 0) failed = "chmod";
    else if (listen(fd, (int)backlog) < 0) failed = "listen";
    if (failed != NULL) {
        int err = errno;
        if (strcmp(failed, "bind") != 0) unlink(sun.sun_path);
        close(fd);
        return throw_errno(env, err, failed);
    }
    return make_int(env, fd);
}

/* unixConnect(path, type) -> fd (connected, non-blocking). */
static napi_value js_unix_connect(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int type;
    struct sockaddr_un sun;
    socklen_t alen;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_unix_addr(env, argv[0], &sun, &alen)) return NULL;
    if (!get_unix_type(env, argv[1], &type)) return NULL;
    int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return throw_errno(env, errno, "socket");
    int r;
    do r = connect(fd, (struct sockaddr *)&sun, alen);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        return close_and_throw(env, fd, "connect");
    }
    return make_int(env, fd);
}

/* accept(fd) -> fd | null */
static napi_value js_accept(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    for (;;) {
        int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c >= 0) return make_int(env, c);
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return make_null(env);
        return throw_errno(env, errno, "accept4");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Socket options                                                                              */

/* peerCred(fd) -> { pid, uid, gid } of the peer at connect() time */
static napi_value js_peer_cred(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return throw_errno(env, errno, "getsockopt(SO_PEERCRED)");
    napi_value result;
    CHECK_NAPI(env, napi_create_object(env, &result));
    napi_set_named_property(env, result, "pid", make_int(env, cred.pid));
    napi_set_named_property(env, result, "uid", make_int(env, cred.uid));
    napi_set_named_property(env, result, "gid", make_int(env, cred.gid));
    return result;
}

/* setMark(fd, mark): SO_MARK, needs CAP_NET_ADMIN */
static napi_value js_set_mark(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int fd;
    int64_t mark;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (!get_int(env, argv[1], "mark", 0, UINT32_MAX, &mark)) return NULL;
    uint32_t m = (uint32_t)mark;
    if (setsockopt(fd, SOL_SOCKET, SO_MARK, &m, sizeof m) < 0)
        return throw_errno(env, errno, "setsockopt(SO_MARK)");
    return make_undefined(env);
}

/* getMark(fd) -> mark (unsigned 32-bit) */
static napi_value js_get_mark(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    uint32_t m = 0;
    socklen_t len = sizeof m;
    if (getsockopt(fd, SOL_SOCKET, SO_MARK, &m, &len) < 0)
        return throw_errno(env, errno, "getsockopt(SO_MARK)");
    return make_int(env, m);
}

/* socketInfo(fd) -> { family, type, protocol } */
static napi_value js_socket_info(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd, family, type, protocol;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (getsockopt_int(fd, SOL_SOCKET, SO_DOMAIN, &family) < 0)
        return throw_errno(env, errno, "getsockopt(SO_DOMAIN)");
    if (getsockopt_int(fd, SOL_SOCKET, SO_TYPE, &type) < 0)
        return throw_errno(env, errno, "getsockopt(SO_TYPE)");
    if (getsockopt_int(fd, SOL_SOCKET, SO_PROTOCOL, &protocol) < 0)
        return throw_errno(env, errno, "getsockopt(SO_PROTOCOL)");
    napi_value result;
    CHECK_NAPI(env, napi_create_object(env, &result));
    napi_set_named_property(env, result, "family", make_int(env, family));
    napi_set_named_property(env, result, "type", make_int(env, type));
    napi_set_named_property(env, result, "protocol", make_int(env, protocol));
    return result;
}

/* getBoundDevice(fd) -> device name, '' when not bound */
static napi_value js_get_bound_device(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    char name[IFNAMSIZ + 1];
    memset(name, 0, sizeof name);
    socklen_t len = IFNAMSIZ;
    if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, &len) < 0)
        return throw_errno(env, errno, "getsockopt(SO_BINDTODEVICE)");
    napi_value v;
    CHECK_NAPI(env, napi_create_string_utf8(env, name, strnlen(name, IFNAMSIZ), &v));
    return v;
}

/* bindToDevice(fd, ifname): '' unbinds (needs CAP_NET_RAW). Allowed unprivileged since 5.7
 * for a socket not yet bound to a device. */
static napi_value js_bind_to_device(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int fd;
    char name[IFNAMSIZ];
    size_t len;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    /* The kernel silently truncates longer names: refuse them here instead. */
    if (!get_string(env, argv[1], "ifname", name, sizeof name, &len)) return NULL;
    if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, (socklen_t)len) < 0)
        return throw_errno(env, errno, "setsockopt(SO_BINDTODEVICE)");
    return make_undefined(env);
}

/* An address family as JavaScript names it: 4 or 6. */
static bool get_family(napi_env env, napi_value v, int64_t *family)
{
    if (!get_int(env, v, "family", 4, 6, family)) return false;
    if (*family == 4 || *family == 6) return true;
    throw_range(env, "family must be 4 or 6");
    return false;
}

/* udpSocket(family) -> fd: a non-blocking, close-on-exec UDP socket (IPv6-only for family 6),
 * not bound yet, so that marks and device bindings can be set before anything is sent; then
 * node:dgram takes it over with socket.bind({ fd }). */
static napi_value js_udp_socket(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int64_t family;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_family(env, argv[0], &family)) return NULL;
    int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return throw_errno(env, errno, "socket");
    int on = 1;
    if (family == 6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0) {
        return close_and_throw(env, fd, "setsockopt(IPV6_V6ONLY)");
    }
    return make_int(env, fd);
}

/* tcpConnect(family: 4|6, addr: Buffer(4|16), port, ifname: string|undefined,
 *            mark: number|undefined) -> fd
 * A non-blocking TCP socket, bound to `ifname` and marked with `mark` (SO_MARK, needs
 * CAP_NET_ADMIN) first when given (the uplink the daemon decided), with its connect() started:
 * the caller waits for writability and reads SO_ERROR (socketError). What the client API and
 * the resolver's TCP fallback need and Node's net module cannot do (steer before the SYN). */
static napi_value js_tcp_connect(napi_env env, napi_callback_info info)
{
    napi_value argv[5];
    int64_t family, port, mark = -1;
    void *addr;
    size_t alen;
    if (!get_args(env, info, 3, 5, argv, NULL)) return NULL;
    if (!get_family(env, argv[0], &family)) return NULL;
    if (!get_bytes(env, argv[1], &addr, &alen)) return NULL;
    if (alen != (family == 4 ? 4u : 16u)) return throw_range(env, "address length does not match the family");
    if (!get_int(env, argv[2], "port", 1, 65535, &port)) return NULL;
    char name[IFNAMSIZ] = "";
    size_t nlen = 0;
    if (!is_undefined(env, argv[3]) && !get_string(env, argv[3], "ifname", name, sizeof name, &nlen)) return NULL;
    if (!is_undefined(env, argv[4]) && !get_int(env, argv[4], "mark", 0, UINT32_MAX, &mark)) return NULL;

    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    if (family == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        memcpy(&in->sin_addr, addr, 4);
        sslen = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        memcpy(&in6->sin6_addr, addr, 16);
        sslen = sizeof *in6;
    }
    int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return throw_errno(env, errno, "socket");
    if (nlen > 0 && setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, (socklen_t)nlen) < 0) {
        return close_and_throw(env, fd, "setsockopt(SO_BINDTODEVICE)");
    }
    uint32_t m = (uint32_t)mark;
    if (mark >= 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &m, sizeof m) < 0) {
        return close_and_throw(env, fd, "setsockopt(SO_MARK)");
    }
    int r;
    do {
        r = connect(fd, (struct sockaddr *)&ss, sslen);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EINPROGRESS) {
        return close_and_throw(env, fd, "connect");
    }
    return make_int(env, fd);
}

/* socketError(fd) -> errno of a finished non-blocking connect (0: connected). */
static napi_value js_socket_error(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    int fd, err = 0;
    socklen_t len = sizeof err;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return throw_errno(env, errno, "getsockopt(SO_ERROR)");
    return make_int(env, err);
}

/* ------------------------------------------------------------------------------------------ */
/* The kernel backstop: cgroup v2 socket marking
 *
 * A BPF_PROG_TYPE_CGROUP_SOCK program attached at BPF_CGROUP_INET_SOCK_CREATE runs in
 * inet_create()/inet6_create() for every AF_INET/AF_INET6 socket a process of the cgroup (or of a
 * descendant) creates, before the socket exists for user space. It may write sk->sk_mark
 * (net/core/filter.c, __sock_filter_check_attach_type: mark, priority and bound_dev_if are
 * writable only at SOCK_CREATE/SOCK_RELEASE, hence expected_attach_type at load time). The mark
 * is in place before the first route lookup, so `fwmark` rules steer the socket from its first
 * packet, whatever the program does: static binaries, raw syscalls, io_uring.
 *
 * The program (4 instructions, the same shape as iproute2's `ip vrf exec`, ip/ipvrf.c):
 *     w2 = MARK                                  BPF_ALU   | BPF_MOV | BPF_K
 *     *(u32 *)(r1 + 16) = w2                     BPF_STX   | BPF_MEM | BPF_W
 *         (r1: the context, struct bpf_sock; 16 = offsetof(struct bpf_sock, mark))
 *     r0 = 1                                     BPF_ALU64 | BPF_MOV | BPF_K   (1: allow the socket)
 *     exit                                       BPF_JMP   | BPF_EXIT
 *
 * Attach flags 0 ("NONE": exclusive, not overridable by descendants). With anything but
 * BPF_F_ALLOW_MULTI, BPF_PROG_ATTACH onto a hook that already holds a program REPLACES it in one
 * step (kernel/bpf/cgroup.c, find_attach_entry() returns the existing entry), so a re-attach
 * after a daemon restart or a mark change never stacks and never leaves a window without a mark.
 * Only when the hook holds programs attached with other flags (MULTI/OVERRIDE: someone else's)
 * does the kernel refuse (EPERM: flags must match); we then detach those first.
 * The attachment holds its own reference to the program: the prog fd is closed right away and the
 * program lives as long as the attachment (detach, or the cgroup's destruction, releases it).
 *
 * Privileges: BPF_PROG_LOAD of a cgroup socket program needs CAP_BPF + CAP_NET_ADMIN (or
 * CAP_SYS_ADMIN); attach/detach/query need CAP_NET_ADMIN and a cgroup directory we can open. */

#define BPF_CGROUP_MAX_PROGS 64 /* kernel limit of programs per cgroup and hook */
_Static_assert(offsetof(struct bpf_sock, mark) == 16, "struct bpf_sock is UAPI: mark sits at 16");
#define BPF_LOG_SIZE 4096

static long sys_bpf(int cmd, union bpf_attr *attr)
{
    long r;
    do r = syscall(__NR_bpf, cmd, attr, sizeof *attr);
    while (r < 0 && errno == EINTR);
    return r;
}

static uint64_t ptr_u64(const void *p)
{
    return (uint64_t)(uintptr_t)p;
}

/* Like throw_errno, with the cgroup path (also as .path, as Node's fs errors) and an optional
 * detail: "bpf(BPF_PROG_ATTACH) EPERM: Operation not permitted (/sys/fs/cgroup/x): hint". */
static napi_value throw_errno_path(napi_env env, int err, const char *syscall, const char *path,
                                   const char *detail)
{
    const char *name = strerrorname_np(err);
    char namebuf[24];
    if (name == NULL) {
        snprintf(namebuf, sizeof namebuf, "E%d", err);
        name = namebuf;
    }
    char msg[PATH_MAX + BPF_LOG_SIZE / 4 + 256];
    snprintf(msg, sizeof msg, "%s %s: %s (%s)%s%s", syscall, name, strerror(err), path,
             detail != NULL && detail[0] != '\0' ? ": " : "", detail != NULL ? detail : "");

    napi_value code, message, error, errnum, sc, p;
    if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
        napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
        napi_create_error(env, code, message, &error) != napi_ok) {
        napi_throw_error(env, name, msg);
        return NULL;
    }
    napi_create_int32(env, -err, &errnum);
    napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p);
    napi_set_named_property(env, error, "errno", errnum);
    napi_set_named_property(env, error, "syscall", sc);
    napi_set_named_property(env, error, "path", p);
    napi_throw(env, error);
    return NULL;
}

/* Opens a cgroup v2 directory (O_DIRECTORY); throws and returns -1 on failure. */
static int open_cgroup2(napi_env env, napi_value arg, char *path, size_t pathsize)
{
    size_t len;
    if (!get_string(env, arg, "cgroupPath", path, pathsize, &len)) return -1;
    if (len == 0) {
        throw_type(env, "cgroupPath must not be empty");
        return -1;
    }
    int fd;
    do fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        throw_errno_path(env, errno, "open", path, NULL);
        return -1;
    }
    struct statfs sfs;
    if (fstatfs(fd, &sfs) < 0) {
        int err = errno;
        close(fd);
        throw_errno_path(env, err, "fstatfs", path, NULL);
        return -1;
    }
    if (sfs.f_type != CGROUP2_SUPER_MAGIC) {
        close(fd);
        throw_errno_path(env, ENOTDIR, "fstatfs", path,
                         "not a cgroup v2 directory (cgroup v1 hierarchies cannot hold BPF programs)");
        return -1;
    }
    return fd;
}

/* BPF_PROG_QUERY of the programs attached to this very cgroup (not inherited ones) at
 * INET_SOCK_CREATE. ids must hold BPF_CGROUP_MAX_PROGS entries. Returns 0 or -errno. */
static int query_sock_create(int cgfd, uint32_t *ids, uint32_t *count, uint32_t *flags)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.query.target_fd = (uint32_t)cgfd;
    attr.query.attach_type = BPF_CGROUP_INET_SOCK_CREATE;
    attr.query.query_flags = 0;
    attr.query.prog_ids = ptr_u64(ids);
    attr.query.prog_cnt = BPF_CGROUP_MAX_PROGS;
    if (sys_bpf(BPF_PROG_QUERY, &attr) < 0) return -errno;
    *count = attr.query.prog_cnt < BPF_CGROUP_MAX_PROGS ? attr.query.prog_cnt : BPF_CGROUP_MAX_PROGS;
    *flags = attr.query.attach_flags;
    return 0;
}

/* Detaches every program attached to this cgroup at INET_SOCK_CREATE. Returns the number
 * detached, or -errno with *failed naming the system call. */
static int detach_sock_create(int cgfd, const char **failed)
{
    uint32_t ids[BPF_CGROUP_MAX_PROGS], count = 0, flags = 0;
    int detached = 0;
    /* Bounded: each round detaches at least one program or fails. */
    for (int round = 0; round <= BPF_CGROUP_MAX_PROGS; round++) {
        int r = query_sock_create(cgfd, ids, &count, &flags);
        if (r < 0) {
            *failed = "bpf(BPF_PROG_QUERY)";
            return r;
        }
        if (count == 0) return detached;
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.target_fd = (uint32_t)cgfd;
        attr.attach_type = BPF_CGROUP_INET_SOCK_CREATE;
        int progfd = -1;
        if (flags & BPF_F_ALLOW_MULTI) {
            /* A MULTI hook detaches by program: get an fd for it (needs CAP_SYS_ADMIN). */
            union bpf_attr get;
            memset(&get, 0, sizeof get);
            get.prog_id = ids[0];
            progfd = (int)sys_bpf(BPF_PROG_GET_FD_BY_ID, &get);
            if (progfd < 0) {
                if (errno == ENOENT) continue; /* gone meanwhile: query again */
                *failed = "bpf(BPF_PROG_GET_FD_BY_ID)";
                return -errno;
            }
            attr.attach_bpf_fd = (uint32_t)progfd;
        } else {
            /* NONE/OVERRIDE hold one program; the kernel detaches it without an fd ("legacy
             * mode"). An fd that cannot name a program says so. */
            attr.attach_bpf_fd = (uint32_t)-1;
        }
        long rc = sys_bpf(BPF_PROG_DETACH, &attr);
        int err = errno;
        if (progfd >= 0) close(progfd);
        if (rc < 0) {
            if (err == ENOENT) continue; /* detached by someone else meanwhile */
            *failed = "bpf(BPF_PROG_DETACH)";
            return -err;
        }
        detached++;
    }
    *failed = "bpf(BPF_PROG_DETACH)";
    return -EBUSY; /* programs keep appearing: someone else is attaching concurrently */
}

/* Loads the marking program; returns the prog fd (close-on-exec) or -errno. On failure the
 * verifier's log, if any, is left in log. */
static int load_sock_mark(uint32_t mark, char *log, size_t logsize)
{
    struct bpf_insn insns[] = {
        /* w2 = mark (32-bit move: the full u32, no sign extension to worry about) */
        { .code = BPF_ALU | BPF_MOV | BPF_K, .dst_reg = BPF_REG_2, .imm = (int32_t)mark },
        /* *(u32 *)(r1 + offsetof(struct bpf_sock, mark)) = w2; r1 is the context (bpf_sock) */
        { .code = BPF_STX | BPF_MEM | BPF_W, .dst_reg = BPF_REG_1, .src_reg = BPF_REG_2,
          .off = offsetof(struct bpf_sock, mark) },
        /* r0 = 1: let the socket be created (0 would fail socket() with EPERM) */
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    static const char license[] = "Dual MIT/GPL"; /* no helper is called: any string would do */
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_CGROUP_SOCK;
    attr.expected_attach_type = BPF_CGROUP_INET_SOCK_CREATE;
    attr.insns = ptr_u64(insns);
    attr.insn_cnt = sizeof insns / sizeof insns[0];
    attr.license = ptr_u64(license);
    /* Shown by `bpftool prog` / `bpftool cgroup tree`. */
    memcpy(attr.prog_name, "waymark_mark", sizeof "waymark_mark");
    int fd = (int)sys_bpf(BPF_PROG_LOAD, &attr);
    if (fd >= 0) return fd;
    int err = errno;
    if (log == NULL || logsize < 2) return -err;
    log[0] = '\0';
    if (err != EPERM) {
        /* Once more with the verifier's log, so the error says why. */
        attr.log_level = 1;
        attr.log_buf = ptr_u64(log);
        attr.log_size = (uint32_t)logsize;
        fd = (int)sys_bpf(BPF_PROG_LOAD, &attr);
        if (fd >= 0) return fd; /* flaky first failure: fine now */
        log[logsize - 1] = '\0';
        /* One line: the log is several; keep the message readable. */
        for (char *c = log; *c != '\0'; c++)
            if (*c == '\n') *c = ' ';
    }
    return -err;
}

/* cgroupAttachSockMark(cgroupPath, mark): every socket created in the cgroup carries `mark`. */
static napi_value js_cgroup_attach_sock_mark(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int64_t mark;
    char path[PATH_MAX];
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_int(env, argv[1], "mark", 0, UINT32_MAX, &mark)) return NULL;
    int cgfd = open_cgroup2(env, argv[0], path, sizeof path);
    if (cgfd < 0) return NULL;

    /* Programs attached with other flags would make our attach fail (EPERM): remove them. */
    uint32_t ids[BPF_CGROUP_MAX_PROGS], count = 0, flags = 0;
    int r = query_sock_create(cgfd, ids, &count, &flags);
    if (r < 0) {
        close(cgfd);
        return throw_errno_path(env, -r, "bpf(BPF_PROG_QUERY)", path,
                                -r == EPERM ? "needs CAP_NET_ADMIN" : NULL);
    }

    char log[BPF_LOG_SIZE];
    int progfd = load_sock_mark((uint32_t)mark, log, sizeof log);
    if (progfd < 0) {
        close(cgfd);
        return throw_errno_path(env, -progfd, "bpf(BPF_PROG_LOAD)", path,
                                -progfd == EPERM ? "needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)"
                                                 : log);
    }
    if (count > 0 && flags != 0) {
        const char *failed = NULL;
        r = detach_sock_create(cgfd, &failed);
        if (r < 0) {
            close(progfd);
            close(cgfd);
            return throw_errno_path(env, -r, failed, path,
                                    "removing programs attached by someone else with other flags");
        }
    }

    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (uint32_t)cgfd;
    attr.attach_bpf_fd = (uint32_t)progfd;
    attr.attach_type = BPF_CGROUP_INET_SOCK_CREATE;
    attr.attach_flags = 0; /* exclusive: replaces what is there, descendants cannot override */
    long rc = sys_bpf(BPF_PROG_ATTACH, &attr);
    int err = errno;
    close(progfd); /* the attachment holds its own reference */
    close(cgfd);
    if (rc < 0)
        return throw_errno_path(env, err, "bpf(BPF_PROG_ATTACH)", path,
                                err == EPERM ? "needs CAP_NET_ADMIN; or an ancestor cgroup holds a "
                                               "non-overridable program at INET_SOCK_CREATE"
                                             : NULL);
    return make_undefined(env);
}

/* cgroupDetachSockPrograms(cgroupPath) -> number of programs detached at INET_SOCK_CREATE */
static napi_value js_cgroup_detach_sock_programs(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    char path[PATH_MAX];
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    int cgfd = open_cgroup2(env, argv[0], path, sizeof path);
    if (cgfd < 0) return NULL;
    const char *failed = NULL;
    int r = detach_sock_create(cgfd, &failed);
    close(cgfd);
    if (r < 0)
        return throw_errno_path(env, -r, failed, path, -r == EPERM ? "needs CAP_NET_ADMIN" : NULL);
    return make_int(env, r);
}

/* cgroupQuerySockPrograms(cgroupPath) -> { ids: number[], flags: number }: the programs attached
 * to this cgroup itself (not inherited) at INET_SOCK_CREATE, and their attach flags. */
static napi_value js_cgroup_query_sock_programs(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    char path[PATH_MAX];
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    int cgfd = open_cgroup2(env, argv[0], path, sizeof path);
    if (cgfd < 0) return NULL;
    uint32_t ids[BPF_CGROUP_MAX_PROGS], count = 0, flags = 0;
    int r = query_sock_create(cgfd, ids, &count, &flags);
    close(cgfd);
    if (r < 0)
        return throw_errno_path(env, -r, "bpf(BPF_PROG_QUERY)", path,
                                -r == EPERM ? "needs CAP_NET_ADMIN" : NULL);
    napi_value result, arr;
    CHECK_NAPI(env, napi_create_object(env, &result));
    CHECK_NAPI(env, napi_create_array_with_length(env, count, &arr));
    for (uint32_t i = 0; i < count; i++)
        CHECK_NAPI(env, napi_set_element(env, arr, i, make_int(env, ids[i])));
    napi_set_named_property(env, result, "ids", arr);
    napi_set_named_property(env, result, "flags", make_int(env, flags));
    return result;
}

/* ------------------------------------------------------------------------------------------ */
/* The app programs: native/bpf/waymark.bpf.o loaded with libbpf (docs/kernel-apps.md)        */

#define BPF_HANDLE_MAGIC 0x776d6266u /* "wmbf" */
#define BPF_MAX_LINKS 16
#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

struct ring_batch;

struct bpf_handle {
    uint32_t magic;
    struct bpf_object *obj; /* NULL once closed */
    struct bpf_link *links[BPF_MAX_LINKS];
    int nlinks;
    struct ring_buffer *ring; /* bpfRingOpen's consumer of one ring buffer map, or NULL */
    struct ring_batch *batch; /* the records bpfRingConsume is collecting (during the call only) */
};

/* libbpf's messages (the verifier log among them) of the current open/load, for the error.
 * Only the JS thread that calls bpfOpen writes it; bpfOpen is synchronous. */
static char bpf_log[BPF_LOG_SIZE];
static size_t bpf_log_len;

static int bpf_log_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_DEBUG || bpf_log_len >= sizeof bpf_log - 1) return 0;
    int n = vsnprintf(bpf_log + bpf_log_len, sizeof bpf_log - bpf_log_len, fmt, ap);
    if (n > 0) bpf_log_len += (size_t)n < sizeof bpf_log - bpf_log_len ? (size_t)n : sizeof bpf_log - bpf_log_len - 1;
    return 0;
}

/* Keeps the end of the log (the verifier's verdict is last), on one line. */
static const char *bpf_log_tail(void)
{
    for (char *c = bpf_log; *c != '\0'; c++)
        if (*c == '\n') *c = ' ';
    size_t keep = BPF_LOG_SIZE / 4 - 1;
    return bpf_log_len > keep ? bpf_log + bpf_log_len - keep : bpf_log;
}

static void bpf_handle_close(struct bpf_handle *h)
{
    if (h->ring != NULL) ring_buffer__free(h->ring);
    h->ring = NULL;
    for (int i = 0; i < h->nlinks; i++) bpf_link__destroy(h->links[i]);
    h->nlinks = 0;
    if (h->obj != NULL) bpf_object__close(h->obj);
    h->obj = NULL;
}

static void bpf_handle_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    struct bpf_handle *h = data;
    bpf_handle_close(h);
    h->magic = 0;
    free(h);
}

static struct bpf_handle *get_bpf_handle(napi_env env, napi_value v, bool open)
{
    napi_valuetype t;
    void *data = NULL;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
        napi_get_value_external(env, v, &data) != napi_ok || data == NULL ||
        ((struct bpf_handle *)data)->magic != BPF_HANDLE_MAGIC) {
        throw_type(env, "handle must be a handle returned by bpfOpen");
        return NULL;
    }
    struct bpf_handle *h = data;
    if (open && h->obj == NULL) {
        napi_throw_error(env, "ERR_BPF_CLOSED", "the BPF handle is closed");
        return NULL;
    }
    return h;
}

/* The calling process's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14). */
static int netns_cookie(__u64 *cookie)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    socklen_t len = sizeof *cookie;
    int r = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, cookie, &len);
    int err = errno;
    close(fd);
    return r < 0 ? -err : 0;
}

/* Whether the kernel lets cgroup_skb programs call bpf_get_netns_cookie (Linux 6.17). */
static bool skb_has_netns_cookie(void)
{
    return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_get_netns_cookie, NULL) == 1;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

#define BPF_OPEN_COMPAT 1u /* use the *_compat packet programs even where the others would load */

/* bpfOpen(objectPath, cgroupPath, flags = 0) -> handle: loads the object, sets
 * wm_conf.netns_cookie to this process's namespace and attaches every program at the cgroup
 * through bpf_links (multi-attach: other programs there stay; the links die with the handle or
 * the process). Of a program NAME and NAME_compat, one is loaded: NAME_compat where the kernel
 * lacks bpf_get_netns_cookie for cgroup_skb, or when flags has BPF_OPEN_COMPAT. */
static napi_value js_bpf_open(napi_env env, napi_callback_info info)
{
    napi_value argv[3];
    char objpath[PATH_MAX], path[PATH_MAX];
    size_t len;
    int64_t flags = 0;
    if (!get_args(env, info, 2, 3, argv, NULL)) return NULL;
    if (!get_string(env, argv[0], "objectPath", objpath, sizeof objpath, &len)) return NULL;
    if (!is_undefined(env, argv[2]) && !get_int(env, argv[2], "flags", 0, BPF_OPEN_COMPAT, &flags))
        return NULL;
    int cgfd = open_cgroup2(env, argv[1], path, sizeof path);
    if (cgfd < 0) return NULL;

    struct bpf_handle *h = calloc(1, sizeof *h);
    if (h == NULL) {
        close(cgfd);
        return throw_errno(env, ENOMEM, "calloc");
    }
    h->magic = BPF_HANDLE_MAGIC;
    bpf_log_len = 0;
    bpf_log[0] = '\0';
    libbpf_print_fn_t old = libbpf_set_print(bpf_log_print);
    const char *failed = NULL, *hint = NULL;
    int err = 0;

    h->obj = bpf_object__open_file(objpath, NULL);
    if (h->obj == NULL) {
        err = errno;
        failed = "bpf_object__open_file";
        hint = objpath;
        goto out;
    }
    bool compat = (flags & BPF_OPEN_COMPAT) != 0 || !skb_has_netns_cookie();
    struct bpf_program *prog;
    bpf_object__for_each_program(prog, h->obj) {
        char twin[128];
        const char *name = bpf_program__name(prog);
        snprintf(twin, sizeof twin, "%s_compat", name);
        if (ends_with(name, "_compat")) bpf_program__set_autoload(prog, compat);
        else if (bpf_object__find_program_by_name(h->obj, twin) != NULL)
            bpf_program__set_autoload(prog, !compat);
    }
    if (bpf_object__load(h->obj) != 0) {
        err = errno;
        failed = "bpf_object__load";
        hint = err == EPERM ? "needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN)" : bpf_log_tail();
        goto out;
    }
    struct bpf_map *conf = bpf_object__find_map_by_name(h->obj, "wm_conf");
    struct wm_conf c;
    uint32_t zero = 0;
    memset(&c, 0, sizeof c);
    int r = netns_cookie(&c.netns_cookie);
    if (r < 0) {
        err = -r;
        failed = "getsockopt(SO_NETNS_COOKIE)";
        goto out;
    }
    if (conf == NULL || bpf_map__update_elem(conf, &zero, sizeof zero, &c, sizeof c, BPF_ANY) != 0) {
        err = conf == NULL ? ENOENT : errno;
        failed = "bpf_map_update_elem(wm_conf)";
        goto out;
    }
    bpf_object__for_each_program(prog, h->obj) {
        if (!bpf_program__autoload(prog)) continue;
        if (h->nlinks == BPF_MAX_LINKS) {
            err = E2BIG;
            failed = "bpf_program__attach_cgroup";
            hint = "too many programs in the object";
            goto out;
        }
        struct bpf_link *link = bpf_program__attach_cgroup(prog, cgfd);
        if (link == NULL) {
            err = errno;
            failed = "bpf_program__attach_cgroup";
            hint = bpf_program__name(prog);
            goto out;
        }
        h->links[h->nlinks++] = link;
    }
out:
    libbpf_set_print(old);
    close(cgfd);
    if (err != 0) {
        bpf_handle_close(h);
        free(h);
        return throw_errno_path(env, err, failed, path, hint);
    }
    napi_value ext;
    if (napi_create_external(env, h, bpf_handle_finalize, NULL, &ext) != napi_ok) {
        bpf_handle_close(h);
        free(h);
        napi_throw_error(env, "ERR_NAPI", "napi_create_external failed");
        return NULL;
    }
    return ext;
}

/* bpfClose(handle): detaches the programs and frees the maps. Idempotent. */
static napi_value js_bpf_close(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    struct bpf_handle *h = get_bpf_handle(env, argv[0], false);
    if (h == NULL) return NULL;
    bpf_handle_close(h);
    return make_undefined(env);
}

/* The named map of an open handle and its key and (all-CPU) value sizes. */
static struct bpf_map *get_bpf_map(napi_env env, napi_value vh, napi_value vname, size_t *key_size,
                                   size_t *value_size)
{
    struct bpf_handle *h = get_bpf_handle(env, vh, true);
    if (h == NULL) return NULL;
    char name[BPF_OBJ_NAME_LEN];
    size_t len;
    if (!get_string(env, vname, "mapName", name, sizeof name, &len)) return NULL;
    struct bpf_map *map = bpf_object__find_map_by_name(h->obj, name);
    if (map == NULL) {
        char msg[96];
        snprintf(msg, sizeof msg, "no map named '%s' in the BPF object", name);
        throw_range(env, msg);
        return NULL;
    }
    *key_size = bpf_map__key_size(map);
    *value_size = bpf_map__value_size(map);
    enum bpf_map_type t = bpf_map__type(map);
    if (t == BPF_MAP_TYPE_PERCPU_HASH || t == BPF_MAP_TYPE_PERCPU_ARRAY ||
        t == BPF_MAP_TYPE_LRU_PERCPU_HASH) {
        int ncpus = libbpf_num_possible_cpus();
        if (ncpus < 1) ncpus = 1;
        *value_size = ((*value_size + 7) & ~(size_t)7) * (size_t)ncpus;
    }
    return map;
}

static bool get_sized_bytes(napi_env env, napi_value v, const char *what, size_t want, void **data)
{
    size_t len;
    if (!get_bytes(env, v, data, &len)) return false;
    if (len != want) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s must be %zu bytes, not %zu", what, want, len);
        throw_range(env, msg);
        return false;
    }
    return true;
}

static napi_value throw_map_errno(napi_env env, int err, const char *syscall, napi_value vname)
{
    char name[BPF_OBJ_NAME_LEN], sc[64];
    size_t len;
    if (napi_get_value_string_utf8(env, vname, name, sizeof name, &len) != napi_ok) name[0] = '\0';
    snprintf(sc, sizeof sc, "%s(%s)", syscall, name);
    return throw_errno(env, err, sc);
}

/* bpfUpdate(handle, mapName, key, value, flags = BPF_ANY) -> whether it was written: false only
 * for BPF_NOEXIST with an entry there already (EEXIST) or BPF_EXIST without one (ENOENT). */
static napi_value js_bpf_update(napi_env env, napi_callback_info info)
{
    napi_value argv[5], result;
    size_t ks, vs;
    void *key, *value;
    int64_t flags = BPF_ANY;
    if (!get_args(env, info, 4, 5, argv, NULL)) return NULL;
    struct bpf_map *map = get_bpf_map(env, argv[0], argv[1], &ks, &vs);
    if (map == NULL || !get_sized_bytes(env, argv[2], "key", ks, &key) ||
        !get_sized_bytes(env, argv[3], "value", vs, &value))
        return NULL;
    if (!is_undefined(env, argv[4]) && !get_int(env, argv[4], "flags", BPF_ANY, BPF_EXIST, &flags))
        return NULL;
    if (bpf_map__update_elem(map, key, ks, value, vs, (uint64_t)flags) != 0) {
        int err = errno;
        bool refused = (flags == BPF_NOEXIST && err == EEXIST) || (flags == BPF_EXIST && err == ENOENT);
        if (!refused) return throw_map_errno(env, err, "bpf_map_update_elem", argv[1]);
        napi_get_boolean(env, false, &result);
        return result;
    }
    napi_get_boolean(env, true, &result);
    return result;
}

/* bpfDelete(handle, mapName, key) -> whether there was an entry */
static napi_value js_bpf_delete(napi_env env, napi_callback_info info)
{
    napi_value argv[3], result;
    size_t ks, vs;
    void *key;
    if (!get_args(env, info, 3, 3, argv, NULL)) return NULL;
    struct bpf_map *map = get_bpf_map(env, argv[0], argv[1], &ks, &vs);
    if (map == NULL || !get_sized_bytes(env, argv[2], "key", ks, &key)) return NULL;
    if (bpf_map__delete_elem(map, key, ks, 0) != 0) {
        if (errno != ENOENT) return throw_map_errno(env, errno, "bpf_map_delete_elem", argv[1]);
        napi_get_boolean(env, false, &result);
        return result;
    }
    napi_get_boolean(env, true, &result);
    return result;
}

/* bpfLookup(handle, mapName, key) -> Buffer | null */
static napi_value js_bpf_lookup(napi_env env, napi_callback_info info)
{
    napi_value argv[3], buf;
    size_t ks, vs;
    void *key, *value;
    if (!get_args(env, info, 3, 3, argv, NULL)) return NULL;
    struct bpf_map *map = get_bpf_map(env, argv[0], argv[1], &ks, &vs);
    if (map == NULL || !get_sized_bytes(env, argv[2], "key", ks, &key)) return NULL;
    CHECK_NAPI(env, napi_create_buffer(env, vs, &value, &buf));
    if (bpf_map__lookup_elem(map, key, ks, value, vs, 0) != 0) {
        if (errno == ENOENT) return make_null(env);
        return throw_map_errno(env, errno, "bpf_map_lookup_elem", argv[1]);
    }
    return buf;
}

/* bpfEntries(handle, mapName) -> [key, value][]: every entry (a snapshot entry by entry; keys
 * deleted meanwhile are skipped). */
static napi_value js_bpf_entries(napi_env env, napi_callback_info info)
{
    napi_value argv[2], arr;
    size_t ks, vs;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    struct bpf_map *map = get_bpf_map(env, argv[0], argv[1], &ks, &vs);
    if (map == NULL) return NULL;
    unsigned char *prev = malloc(ks), *next = malloc(ks), *value = malloc(vs);
    if (prev == NULL || next == NULL || value == NULL) {
        free(prev);
        free(next);
        free(value);
        return throw_errno(env, ENOMEM, "malloc");
    }
    CHECK_NAPI(env, napi_create_array(env, &arr));
    uint32_t n = 0;
    /* Bounded: a map changing under us could otherwise restart the walk forever. */
    uint64_t limit = 2 * (uint64_t)bpf_map__max_entries(map) + 16;
    const void *cur = NULL;
    int err = 0;
    for (uint64_t i = 0; i < limit; i++) {
        if (bpf_map__get_next_key(map, cur, next, ks) != 0) {
            if (errno != ENOENT) err = errno;
            break;
        }
        memcpy(prev, next, ks);
        cur = prev;
        if (bpf_map__lookup_elem(map, prev, ks, value, vs, 0) != 0) {
            if (errno == ENOENT) continue;
            err = errno;
            break;
        }
        napi_value pair, k, v;
        void *d;
        if (napi_create_array_with_length(env, 2, &pair) != napi_ok ||
            napi_create_buffer_copy(env, ks, prev, &d, &k) != napi_ok ||
            napi_create_buffer_copy(env, vs, value, &d, &v) != napi_ok ||
            napi_set_element(env, pair, 0, k) != napi_ok || napi_set_element(env, pair, 1, v) != napi_ok ||
            napi_set_element(env, arr, n++, pair) != napi_ok) {
            err = -1;
            break;
        }
    }
    free(prev);
    free(next);
    free(value);
    if (err == -1) {
        napi_throw_error(env, "ERR_NAPI", "building the entries failed");
        return NULL;
    }
    if (err != 0) return throw_map_errno(env, err, "bpf_map_get_next_key", argv[1]);
    return arr;
}

/* The ring buffer (BPF_MAP_TYPE_RINGBUF) consumer: one per handle, libbpf's ring_buffer over the
 * map's fd. Its epoll fd is what JS watches (watch()); bpfRingConsume reads the records on the JS
 * thread, at most `max` per call. */

struct ring_batch {
    napi_env env;
    napi_value arr;
    uint32_t n, max;
    bool failed;
};

#define RING_BATCH_FULL (-1000) /* the callback's "stop here": not an errno */

static int ring_sample(void *ctx, void *data, size_t size)
{
    struct ring_batch *b = ((struct bpf_handle *)ctx)->batch;
    if (b == NULL) return RING_BATCH_FULL; /* only bpfRingConsume consumes */
    napi_value buf;
    void *d;
    if (napi_create_buffer_copy(b->env, size, data, &d, &buf) != napi_ok ||
        napi_set_element(b->env, b->arr, b->n, buf) != napi_ok) {
        b->failed = true;
        return RING_BATCH_FULL;
    }
    b->n++;
    /* The record is consumed either way; stopping leaves the rest for the next call (the epoll
     * fd stays readable while data remains). */
    return b->n >= b->max ? RING_BATCH_FULL : 0;
}

/* bpfRingOpen(handle, mapName) -> the epoll fd that is readable while records wait (the
 * handle's; closed with it or by bpfRingClose). Idempotent for the same handle. */
static napi_value js_bpf_ring_open(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    struct bpf_handle *h = get_bpf_handle(env, argv[0], true);
    if (h == NULL) return NULL;
    if (h->ring != NULL) return make_int(env, ring_buffer__epoll_fd(h->ring));
    char name[BPF_OBJ_NAME_LEN];
    size_t len;
    if (!get_string(env, argv[1], "mapName", name, sizeof name, &len)) return NULL;
    struct bpf_map *map = bpf_object__find_map_by_name(h->obj, name);
    if (map == NULL || bpf_map__type(map) != BPF_MAP_TYPE_RINGBUF) {
        char msg[96];
        snprintf(msg, sizeof msg, "no ring buffer map named '%s' in the BPF object", name);
        return throw_range(env, msg);
    }
    h->ring = ring_buffer__new(bpf_map__fd(map), ring_sample, h, NULL);
    if (h->ring == NULL) return throw_map_errno(env, errno, "ring_buffer__new", argv[1]);
    return make_int(env, ring_buffer__epoll_fd(h->ring));
}

/* bpfRingConsume(handle, max) -> Buffer[]: the waiting records, oldest first, at most `max`. */
static napi_value js_bpf_ring_consume(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    int64_t max;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    struct bpf_handle *h = get_bpf_handle(env, argv[0], true);
    if (h == NULL) return NULL;
    if (!get_int(env, argv[1], "max", 1, 1 << 20, &max)) return NULL;
    if (h->ring == NULL) {
        napi_throw_error(env, "ERR_BPF_RING", "no ring buffer opened on this handle (bpfRingOpen)");
        return NULL;
    }
    struct ring_batch b = { .env = env, .n = 0, .max = (uint32_t)max, .failed = false };
    CHECK_NAPI(env, napi_create_array(env, &b.arr));
    h->batch = &b; /* ring_sample's context is the handle (libbpf keeps one ctx per ring) */
    int r = ring_buffer__consume(h->ring);
    h->batch = NULL;
    if (b.failed) {
        napi_throw_error(env, "ERR_NAPI", "building the ring buffer records failed");
        return NULL;
    }
    if (r < 0 && r != RING_BATCH_FULL) return throw_errno(env, -r, "ring_buffer__consume");
    return b.arr;
}

/* bpfRingClose(handle): frees the consumer (stop watching its fd first). Idempotent. */
static napi_value js_bpf_ring_close(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    struct bpf_handle *h = get_bpf_handle(env, argv[0], false);
    if (h == NULL) return NULL;
    if (h->ring != NULL) ring_buffer__free(h->ring);
    h->ring = NULL;
    return make_undefined(env);
}

/* bpfPrograms(handle) -> the names of the programs attached through this handle */
static napi_value js_bpf_programs(napi_env env, napi_callback_info info)
{
    napi_value argv[1], arr, name;
    if (!get_args(env, info, 1, 1, argv, NULL)) return NULL;
    struct bpf_handle *h = get_bpf_handle(env, argv[0], false);
    if (h == NULL) return NULL;
    CHECK_NAPI(env, napi_create_array(env, &arr));
    if (h->obj == NULL) return arr;
    uint32_t i = 0;
    struct bpf_program *prog;
    bpf_object__for_each_program(prog, h->obj) {
        if (!bpf_program__autoload(prog)) continue;
        CHECK_NAPI(env, napi_create_string_utf8(env, bpf_program__name(prog), NAPI_AUTO_LENGTH, &name));
        CHECK_NAPI(env, napi_set_element(env, arr, i++, name));
    }
    return arr;
}

/* bpfPossibleCpus() -> the number of per-CPU slots in a per-CPU map's value */
static napi_value js_bpf_possible_cpus(napi_env env, napi_callback_info info)
{
    (void)info;
    int n = libbpf_num_possible_cpus();
    if (n < 0) return throw_errno(env, -n, "libbpf_num_possible_cpus");
    return make_int(env, n);
}

/* ------------------------------------------------------------------------------------------ */
/* watch(fd, onReadable, unref = false) -> { stop(), ref(), unref() }
 *
 * A uv_poll_t on the environment's loop (level-triggered: the callback fires again while data
 * remains). The callback runs through napi_make_callback, so microtasks run afterwards and
 * async_hooks/AsyncLocalStorage see a proper async resource. An active watcher keeps its JS
 * object and callback alive, like any Node handle; after stop() both can be collected. An env
 * teardown (process exit, worker termination) closes the handle via an async cleanup hook.
 * A poll error calls the callback with an Error and stops the watcher. */

enum { W_ACTIVE, W_CLOSING, W_CLOSED };

struct watcher {
    uv_poll_t poll;
    napi_env env;
    napi_ref callback;                    /* strong while active */
    napi_ref self;                        /* strong while active: keeps the JS object alive */
    napi_async_context actx;
    napi_async_cleanup_hook_handle cleanup;
    int state;
    bool finalized;                       /* the JS object is gone */
    int fd;
};

static void watcher_on_closed(uv_handle_t *h)
{
    struct watcher *w = (struct watcher *)h->data;
    w->state = W_CLOSED;
    if (w->cleanup != NULL) {
        napi_remove_async_cleanup_hook(w->cleanup);
        w->cleanup = NULL;
    }
    if (w->finalized) free(w);
}

/* Stops polling and starts closing the uv handle. JS references are released only when
 * `release_js` (we are in a JS call); at teardown the env frees them itself. */
static void watcher_close(struct watcher *w, bool release_js)
{
    if (w->state != W_ACTIVE) return;
    w->state = W_CLOSING;
    uv_poll_stop(&w->poll);
    uv_close((uv_handle_t *)&w->poll, watcher_on_closed);
    if (release_js) {
        if (w->callback != NULL) napi_delete_reference(w->env, w->callback);
        if (w->self != NULL) napi_delete_reference(w->env, w->self);
        if (w->actx != NULL) napi_async_destroy(w->env, w->actx);
        w->callback = NULL;
        w->self = NULL;
        w->actx = NULL;
    }
}

static void watcher_teardown(napi_async_cleanup_hook_handle handle, void *arg)
{
    (void)handle;
    struct watcher *w = (struct watcher *)arg;
    /* Closing: watcher_on_closed removes the hook, which tells Node we are done. */
    watcher_close(w, false);
}

static void watcher_finalize(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    struct watcher *w = (struct watcher *)data;
    w->finalized = true;
    if (w->state == W_ACTIVE) watcher_close(w, false); /* only reachable during teardown */
    else if (w->state == W_CLOSED) free(w);
}

static void watcher_on_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    struct watcher *w = (struct watcher *)h->data;
    if (w->state != W_ACTIVE || w->callback == NULL) return;
    napi_env env = w->env;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;

    napi_value cb, self, argv[1], result;
    size_t argc = 0;
    if (napi_get_reference_value(env, w->callback, &cb) != napi_ok || cb == NULL ||
        napi_get_reference_value(env, w->self, &self) != napi_ok || self == NULL) {
        napi_close_handle_scope(env, scope);
        return;
    }
    if (status < 0) {
        /* e.g. EBADF: the fd was closed under us. Report once, then stop. */
        napi_value code, msg;
        napi_create_string_utf8(env, uv_err_name(status), NAPI_AUTO_LENGTH, &code);
        napi_create_string_utf8(env, uv_strerror(status), NAPI_AUTO_LENGTH, &msg);
        napi_create_error(env, code, msg, &argv[0]);
        napi_value errnum;
        napi_create_int32(env, status, &errnum);
        napi_set_named_property(env, argv[0], "errno", errnum);
        argc = 1;
    }
    napi_async_context actx = w->actx;
    if (status < 0) {
        /* Keep the async context alive for this last call; release everything else. */
        w->actx = NULL;
        watcher_close(w, true);
    }
    napi_status st = napi_make_callback(env, actx, self, cb, argc, argv, &result);
    if (status < 0) napi_async_destroy(env, actx);
    if (st == napi_pending_exception) {
        napi_value exc;
        if (napi_get_and_clear_last_exception(env, &exc) == napi_ok)
            napi_fatal_exception(env, exc); /* -> process 'uncaughtException' */
    }
    napi_close_handle_scope(env, scope);
}

static struct watcher *watcher_this(napi_env env, napi_callback_info info)
{
    napi_value self;
    size_t argc = 0;
    void *p = NULL;
    if (napi_get_cb_info(env, info, &argc, NULL, &self, NULL) != napi_ok ||
        napi_unwrap(env, self, &p) != napi_ok || p == NULL) {
        throw_type(env, "not a watcher");
        return NULL;
    }
    return (struct watcher *)p;
}

static napi_value js_watcher_stop(napi_env env, napi_callback_info info)
{
    struct watcher *w = watcher_this(env, info);
    if (w == NULL) return NULL;
    watcher_close(w, true);
    return make_undefined(env);
}

static napi_value js_watcher_ref(napi_env env, napi_callback_info info)
{
    struct watcher *w = watcher_this(env, info);
    if (w == NULL) return NULL;
    if (w->state == W_ACTIVE) uv_ref((uv_handle_t *)&w->poll);
    return make_undefined(env);
}

static napi_value js_watcher_unref(napi_env env, napi_callback_info info)
{
    struct watcher *w = watcher_this(env, info);
    if (w == NULL) return NULL;
    if (w->state == W_ACTIVE) uv_unref((uv_handle_t *)&w->poll);
    return make_undefined(env);
}

static napi_value js_watch(napi_env env, napi_callback_info info)
{
    napi_value argv[4];
    int fd;
    if (!get_args(env, info, 2, 4, argv, NULL)) return NULL;
    if (!get_fd(env, argv[0], &fd)) return NULL;
    napi_valuetype t;
    if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function)
        return throw_type(env, "onReadable must be a function");
    bool unref = false;
    if (!is_undefined(env, argv[2])) {
        if (napi_typeof(env, argv[2], &t) != napi_ok || t != napi_boolean)
            return throw_type(env, "unref must be a boolean");
        napi_get_value_bool(env, argv[2], &unref);
    }
    bool writable = false; /* poll for writability instead (a connect in progress) */
    if (!is_undefined(env, argv[3])) {
        if (napi_typeof(env, argv[3], &t) != napi_ok || t != napi_boolean)
            return throw_type(env, "writable must be a boolean");
        napi_get_value_bool(env, argv[3], &writable);
    }

    uv_loop_t *loop;
    CHECK_NAPI(env, napi_get_uv_event_loop(env, &loop));

    struct watcher *w = calloc(1, sizeof *w);
    if (w == NULL) return throw_errno(env, ENOMEM, "watch");
    w->env = env;
    w->fd = fd;
    w->poll.data = w;
    int r = uv_poll_init(loop, &w->poll, fd);
    if (r < 0) {
        free(w);
        return throw_errno(env, -r, "uv_poll_init");
    }
    /* From here on the handle exists and must be closed, never just freed. */
    w->state = W_ACTIVE;

    napi_value obj, fn, name;
    bool ok = napi_create_object(env, &obj) == napi_ok &&
              napi_create_function(env, "stop", NAPI_AUTO_LENGTH, js_watcher_stop, NULL, &fn) ==
                  napi_ok &&
              napi_set_named_property(env, obj, "stop", fn) == napi_ok &&
              napi_create_function(env, "ref", NAPI_AUTO_LENGTH, js_watcher_ref, NULL, &fn) ==
                  napi_ok &&
              napi_set_named_property(env, obj, "ref", fn) == napi_ok &&
              napi_create_function(env, "unref", NAPI_AUTO_LENGTH, js_watcher_unref, NULL, &fn) ==
                  napi_ok &&
              napi_set_named_property(env, obj, "unref", fn) == napi_ok &&
              napi_create_string_utf8(env, "waymark:watch", NAPI_AUTO_LENGTH, &name) == napi_ok &&
              napi_async_init(env, obj, name, &w->actx) == napi_ok &&
              napi_create_reference(env, argv[1], 1, &w->callback) == napi_ok &&
              napi_create_reference(env, obj, 1, &w->self) == napi_ok &&
              napi_add_async_cleanup_hook(env, watcher_teardown, w, &w->cleanup) == napi_ok;
    if (ok) {
        if (napi_wrap(env, obj, w, watcher_finalize, NULL, NULL) != napi_ok) ok = false;
    }
    if (!ok) {
        watcher_close(w, true);
        /* Not wrapped: nothing else will free it. */
        w->finalized = true;
        CHECK_NAPI(env, napi_generic_failure);
    }
    r = uv_poll_start(&w->poll, writable ? UV_WRITABLE : UV_READABLE, watcher_on_poll);
    if (r < 0) {
        watcher_close(w, true);
        return throw_errno(env, -r, "uv_poll_start");
    }
    if (unref) uv_unref((uv_handle_t *)&w->poll);
    return obj;
}

/* ------------------------------------------------------------------------------------------ */
/* Lock files                                                                                  */

/* lockFile(path, mode) -> fd holding an exclusive flock(2) on `path` (created with `mode` if
 * missing, never through a symlink), or null when another process holds it. The kernel drops
 * the lock when the holder's last fd closes, so a crashed holder never blocks the next one. */
static napi_value js_lock_file(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    char path[PATH_MAX];
    size_t len;
    int64_t mode;
    if (!get_args(env, info, 2, 2, argv, NULL)) return NULL;
    if (!get_string(env, argv[0], "path", path, sizeof path, &len)) return NULL;
    if (!get_int(env, argv[1], "mode", 0, 0777, &mode)) return NULL;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (fd < 0) return throw_errno_path(env, errno, "open", path, NULL);
    int r;
    do r = flock(fd, LOCK_EX | LOCK_NB);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        int err = errno;
        close(fd);
        if (err == EWOULDBLOCK) return make_null(env);
        return throw_errno_path(env, err, "flock", path, NULL);
    }
    return make_int(env, fd);
}

/* ------------------------------------------------------------------------------------------ */

#define FN(name, fn) { name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL }

static napi_value init(napi_env env, napi_value exports)
{
    napi_property_descriptor props[] = {
        FN("netlinkOpen", js_netlink_open),
        FN("tcpConnect", js_tcp_connect),
        FN("udpSocket", js_udp_socket),
        FN("socketError", js_socket_error),
        FN("netlinkAddMembership", js_netlink_add_membership),
        FN("netlinkDropMembership", js_netlink_drop_membership),
        FN("netlinkPortId", js_netlink_port_id),
        FN("netlinkSend", js_netlink_send),
        FN("recv", js_recv),
        FN("recvInto", js_recv_into),
        FN("yieldCpu", js_yield_cpu),
        FN("send", js_send),
        FN("close", js_close),
        FN("watch", js_watch),
        FN("peerCred", js_peer_cred),
        FN("unixListen", js_unix_listen),
        FN("unixConnect", js_unix_connect),
        FN("lockFile", js_lock_file),
        FN("accept", js_accept),
        FN("setMark", js_set_mark),
        FN("getMark", js_get_mark),
        FN("socketInfo", js_socket_info),
        FN("getBoundDevice", js_get_bound_device),
        FN("bindToDevice", js_bind_to_device),
        FN("cgroupAttachSockMark", js_cgroup_attach_sock_mark),
        FN("cgroupDetachSockPrograms", js_cgroup_detach_sock_programs),
        FN("cgroupQuerySockPrograms", js_cgroup_query_sock_programs),
        FN("bpfOpen", js_bpf_open),
        FN("bpfClose", js_bpf_close),
        FN("bpfUpdate", js_bpf_update),
        FN("bpfDelete", js_bpf_delete),
        FN("bpfLookup", js_bpf_lookup),
        FN("bpfEntries", js_bpf_entries),
        FN("bpfPossibleCpus", js_bpf_possible_cpus),
        FN("bpfPrograms", js_bpf_programs),
        FN("bpfRingOpen", js_bpf_ring_open),
        FN("bpfRingConsume", js_bpf_ring_consume),
        FN("bpfRingClose", js_bpf_ring_close),
    };
    if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok)
        return NULL;
    return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
