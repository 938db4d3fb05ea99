/* libwaymark-client.so: the client API of include/waymark.h.
 *
 * One call: settings from the environment -> candidates (numeric host, or WM_RESOLVE, or the
 * system resolver for names that are not ours) -> per candidate: WM_DECIDE, a socket bound to
 * the decided device, a non-blocking connect bounded by poll(), the next candidate on failure.
 * The daemon connection lives for the call only. The sockets' connect() goes to the next
 * definition (dlsym RTLD_NEXT), so a libwaymark.so preloaded into the same program does not
 * decide a second time, with other needs, over what this call decided. */
#include "waymark.h"

#include "proto.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define API __attribute__((visibility("default")))
#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define MAX_CANDIDATES 32

_Static_assert(WAYMARK_NEED_LONG_LIVED == WM_NEED_LONG_LIVED &&
                   WAYMARK_NEED_MAX_BANDWIDTH == WM_NEED_MAX_BANDWIDTH &&
                   WAYMARK_NEED_LOW_LATENCY == WM_NEED_LOW_LATENCY &&
                   WAYMARK_NEED_CHEAPEST == WM_NEED_CHEAPEST &&
                   WAYMARK_NEED_NO_ROAMING == WM_NEED_NO_ROAMING &&
                   WAYMARK_NEED_UNMETERED == WM_NEED_UNMETERED,
               "needs match the protocol");

/* The first (size 0) layouts. */
#define REQUEST_V1_SIZE sizeof(struct waymark_request)
#define RESULT_V1_SIZE sizeof(struct waymark_result)

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void)
{
    void *next = dlsym(RTLD_NEXT, "connect");
    wm_sys_connect = (int (*)(int, const struct sockaddr *, socklen_t))next;
}

struct candidate {
    struct sockaddr_storage sa;
    socklen_t len;
};

/* Everything one call works with. */
struct call {
    struct wm_settings s;
    struct waymark_request req;
    struct waymark_result res;
    uint32_t needs;
    const char *uplink;
    const char *destination;
    bool strict;
    struct wm_conn conn;
    bool daemon_down;     /* failed once in this call: not asked again */
    int daemon_err;
    struct candidate cand[MAX_CANDIDATES];
    int count;
};

static void say(struct call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct call *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->res.error, sizeof c->res.error, fmt, ap);
    va_end(ap);
}

static int fail(struct call *c, int err)
{
    if (c->res.error[0] == '\0') say(c, "%s", waymark_strerror(err));
    return -err;
}

/* ---- the daemon -------------------------------------------------------------------------- */

static int ask(struct call *c, struct wm_header *req, size_t req_size, struct wm_header *resp,
               size_t resp_size, int timeout_ms)
{
    if (c->s.disabled) return -ENOTCONN;
    if (c->daemon_down) return -c->daemon_err;
    int64_t deadline = wm_now_ns() + (int64_t)timeout_ms * 1000000;
    int err = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = false;
        if (c->conn.fd < 0) {
            err = c->s.path_ok ? wm_conn_open(&c->conn, c->s.decide_path, deadline) : -ENAMETOOLONG;
            if (err != 0) break;
            fresh = true;
        }
        err = wm_call(&c->conn, req, req_size, resp, resp_size, deadline, c->s.prompt_timeout_ms);
        if (err == 0) return 0;
        if (err == -ECONNRESET && !fresh) continue;
        break;
    }
    c->daemon_down = true;
    c->daemon_err = -err;
    return err;
}

/* ---- names ------------------------------------------------------------------------------- */

static int service_port(struct call *c, uint16_t *port)
{
    const char *svc = c->req.service;
    char *end;
    unsigned long v = strtoul(svc, &end, 10);
    if (svc[0] >= '0' && svc[0] <= '9' && *end == '\0') {
        if (v > 65535) {
            say(c, "port %s out of range", svc);
            return -EINVAL;
        }
        *port = (uint16_t)v;
        return 0;
    }
    struct servent se, *found = NULL;
    char buf[1024];
    if (getservbyname_r(svc, "tcp", &se, buf, sizeof buf, &found) != 0 || found == NULL) {
        say(c, "unknown service \"%s\"", svc);
        return -EINVAL;
    }
    *port = ntohs((uint16_t)found->s_port);
    return 0;
}

static void add(struct call *c, int family, const void *addr, uint16_t port, uint32_t scope)
{
    if (c->count >= MAX_CANDIDATES) return;
    struct candidate *k = &c->cand[c->count++];
    memset(k, 0, sizeof *k);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&k->sa;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, addr, 4);
        k->len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&k->sa;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        memcpy(&in6->sin6_addr, addr, 16);
        in6->sin6_scope_id = scope;
        k->len = sizeof *in6;
    }
}

static void add_addrinfo(struct call *c, const struct addrinfo *list, uint16_t port)
{
    for (const struct addrinfo *ai = list; ai != NULL; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET)
            add(c, AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, port, 0);
        else if (ai->ai_family == AF_INET6)
            add(c, AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, port,
                ((struct sockaddr_in6 *)ai->ai_addr)->sin6_scope_id);
    }
}

static int gai_errno(struct call *c, int e, const char *how)
{
    say(c, "%s: %s (%s)", c->req.host, gai_strerror(e), how);
    switch (e) {
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        return -ENOENT;
    case EAI_AGAIN: return -EAGAIN;
    case EAI_MEMORY: return -ENOMEM;
    case EAI_FAMILY: return -EAFNOSUPPORT;
    case EAI_SYSTEM: return -(errno != 0 ? errno : EIO);
    default: return -EIO; /* EAI_FAIL and the like */
    }
}

static int candidates(struct call *c)
{
    uint16_t port;
    int err = service_port(c, &port);
    if (err != 0) return err;
    struct addrinfo hints = { .ai_family = c->req.family, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICHOST };
    struct addrinfo *list = NULL;
    int e = getaddrinfo(c->req.host, NULL, &hints, &list);
    if (e == 0) { /* a numeric address */
        add_addrinfo(c, list, port);
        freeaddrinfo(list);
        return c->count > 0 ? 0 : -ENOENT;
    }
    if (e != EAI_NONAME) return gai_errno(c, e, "numeric address");

    struct wm_resolve_req rq;
    struct wm_resolve_resp rs;
    if (wm_resolve_build(&rq, c->req.host, c->req.family, c->needs, c->uplink) != 0) {
        say(c, "host name longer than 255 bytes");
        return -EINVAL;
    }
    err = ask(c, &rq.h, sizeof rq, &rs.h, sizeof rs, c->s.resolve_timeout_ms);
    if (err == 0 && wm_resolve_check(&rs) != 0) {
        c->daemon_down = true;
        c->daemon_err = EPROTO;
        err = -EPROTO;
    }
    if (err != 0 && c->strict) {
        say(c, "Waymark daemon did not answer (%s)", strerror(-err));
        return -ENETUNREACH;
    }
    if (err == 0) {
        switch (rs.status) {
        case WM_RESOLVED:
            for (unsigned i = 0; i < rs.count; i++)
                if (c->req.family == AF_UNSPEC || c->req.family == rs.addrs[i].family)
                    add(c, rs.addrs[i].family, rs.addrs[i].addr, port, 0);
            if (c->count == 0) {
                say(c, "%s: no address of the requested family (uplink %s's DNS)", c->req.host,
                    rs.uplink);
                return -ENOENT;
            }
            return 0;
        case WM_NO_NAME:
            say(c, "%s: no such name (uplink %s's DNS)", c->req.host, rs.uplink);
            return -ENOENT;
        case WM_DNS_FAILED:
            say(c, "%s: no answer from uplink %s's DNS", c->req.host, rs.uplink);
            return -EAGAIN;
        case WM_REFUSED:
            say(c, "%s: policy allows no uplink that reaches it", c->req.host);
            return -EACCES;
        default:
            break; /* WM_NOT_OURS */
        }
    }
    hints.ai_flags = AI_ADDRCONFIG;
    list = NULL;
    e = getaddrinfo(c->req.host, NULL, &hints, &list);
    if (e != 0) return gai_errno(c, e, "system resolver");
    add_addrinfo(c, list, port);
    freeaddrinfo(list);
    return c->count > 0 ? 0 : -ENOENT;
}

/* ---- connecting ---------------------------------------------------------------------------- */

static int left_ms(int64_t deadline)
{
    int64_t left = deadline - wm_now_ns();
    if (left <= 0) return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* A connected blocking socket, or -errno. */
static int attempt(const struct candidate *k, const struct wm_decide_resp *d, int timeout_ms)
{
    int fd = socket(k->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return -errno;
    int err = 0;
    if (d != NULL && d->action == WM_STEER) {
        int r = d->ifname[0] != '\0'
                    ? setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, d->ifname, (socklen_t)strlen(d->ifname))
                    : setsockopt(fd, SOL_SOCKET, SO_BINDTOIFINDEX, &(int){ (int)d->ifindex }, sizeof(int));
        if (r != 0) {
            err = errno == ENODEV ? ENETUNREACH : errno; /* the uplink's device is gone */
            goto out;
        }
    }
    int64_t deadline = wm_now_ns() + (int64_t)timeout_ms * 1000000;
    int (*conn)(int, const struct sockaddr *, socklen_t) =
        wm_sys_connect != NULL ? wm_sys_connect : connect;
    if (conn(fd, (const struct sockaddr *)&k->sa, k->len) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) {
            err = errno;
            goto out;
        }
        for (;;) {
            int ms = left_ms(deadline);
            if (ms == 0) {
                err = ETIMEDOUT;
                goto out;
            }
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            int r = poll(&p, 1, ms);
            if (r > 0) break;
            if (r < 0 && errno != EINTR) {
                err = errno;
                goto out;
            }
        }
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err != 0) goto out;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) err = errno;
out:
    if (err != 0) {
        close(fd);
        return -err;
    }
    return fd;
}

static int run(struct call *c)
{
    const struct waymark_request *r = &c->req;
    if (r->host == NULL || r->host[0] == '\0' || r->service == NULL || r->service[0] == '\0') {
        say(c, "host and service are required");
        return -EINVAL;
    }
    if ((r->flags & ~WAYMARK_STRICT) != 0) {
        say(c, "unknown flags 0x%x", r->flags & ~WAYMARK_STRICT);
        return -EINVAL;
    }
    if (r->family != AF_UNSPEC && r->family != AF_INET && r->family != AF_INET6) {
        say(c, "family %d is neither AF_INET nor AF_INET6", r->family);
        return -EINVAL;
    }
    wm_settings_load(&c->s);
    c->needs = r->needs | c->s.needs;
    c->uplink = r->uplink != NULL ? r->uplink : c->s.uplink;
    c->destination = r->destination != NULL ? r->destination : c->s.destination;
    c->strict = (r->flags & WAYMARK_STRICT) || c->s.fail_closed;
    if (strlen(c->uplink) >= 32 || strlen(c->destination) >= 32) {
        say(c, "uplink and destination names have at most 31 bytes");
        return -EINVAL;
    }
    int err = candidates(c);
    if (err != 0) return err;

    int timeout_ms = r->timeout_ms > 0 ? r->timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    int policy_err = 0, connect_err = 0;
    char where[INET6_ADDRSTRLEN + 16], policy_why[sizeof c->res.error] = "";
    for (int i = 0; i < c->count; i++) {
        const struct candidate *k = &c->cand[i];
        uint8_t raw[16] = { 0 };
        uint16_t port;
        int family = k->sa.ss_family;
        if (family == AF_INET) {
            memcpy(raw, &((const struct sockaddr_in *)&k->sa)->sin_addr, 4);
            port = ntohs(((const struct sockaddr_in *)&k->sa)->sin_port);
        } else {
            memcpy(raw, &((const struct sockaddr_in6 *)&k->sa)->sin6_addr, 16);
            port = ntohs(((const struct sockaddr_in6 *)&k->sa)->sin6_port);
            if (IN6_IS_ADDR_V4MAPPED((struct in6_addr *)raw)) {
                family = AF_INET;
                memmove(raw, raw + 12, 4);
                memset(raw + 4, 0, 12);
            }
        }
        wm_describe(family, raw, port, where, sizeof where);

        struct wm_decide_req dq;
        struct wm_decide_resp d;
        bool decided = false;
        if (wm_decide_build(&dq, family, raw, port, IPPROTO_TCP, c->needs, c->uplink, c->destination) == 0) {
            int e = ask(c, &dq.h, sizeof dq, &d.h, sizeof d, c->s.timeout_ms);
            if (e == 0 && wm_decide_check(&d) == 0) decided = true;
            else if (e == 0) {
                c->daemon_down = true;
                c->daemon_err = EPROTO;
            }
        }
        if (!decided && c->strict) {
            policy_err = ENETUNREACH;
            snprintf(policy_why, sizeof policy_why, "%s: Waymark daemon did not answer (%s)", where,
                     strerror(c->daemon_err != 0 ? c->daemon_err : EPROTO));
            continue;
        }
        if (decided && d.action == WM_DENY) {
            if (policy_err != EACCES) policy_err = d.err;
            snprintf(policy_why, sizeof policy_why, "%s refused: %s (uplink %s)", where,
                     d.err == EACCES ? "denied by policy" : "not reachable over the uplink",
                     d.uplink[0] != '\0' ? d.uplink : "none");
            continue;
        }
        c->res.attempts++;
        int fd = attempt(k, decided ? &d : NULL, timeout_ms);
        if (fd >= 0) {
            c->res.family = k->sa.ss_family;
            memcpy(&c->res.address, &k->sa, k->len);
            c->res.address_len = k->len;
            if (decided && d.action == WM_STEER) {
                snprintf(c->res.uplink, sizeof c->res.uplink, "%s", d.uplink);
                if (d.ifname[0] != '\0')
                    snprintf(c->res.ifname, sizeof c->res.ifname, "%s", d.ifname);
                else if (if_indextoname(d.ifindex, c->res.ifname) == NULL)
                    c->res.ifname[0] = '\0';
            }
            return fd;
        }
        connect_err = -fd;
        say(c, "%s%s%s: %s", where, decided && d.action == WM_STEER ? " over " : "",
            decided && d.action == WM_STEER ? (d.uplink[0] != '\0' ? d.uplink : d.ifname) : "",
            strerror(connect_err));
    }
    if (connect_err != 0) return -connect_err;
    if (policy_err != 0) {
        say(c, "%s", policy_why);
        return -policy_err;
    }
    say(c, "%s: no address to connect to", r->host);
    return -ENOENT;
}

API int waymark_connect_tcp(const struct waymark_request *req, struct waymark_result *out)
{
    pthread_once(&once, init);
    int saved = errno;
    struct call *c = calloc(1, sizeof *c);
    if (c == NULL) {
        errno = ENOMEM;
        return -1;
    }
    c->conn = (struct wm_conn)WM_CONN_INIT;
    int r;
    if (req == NULL) {
        say(c, "no request");
        r = -EINVAL;
    } else {
        size_t size = req->size == 0 ? REQUEST_V1_SIZE : req->size;
        size_t known = size < sizeof c->req ? size : sizeof c->req;
        memcpy(&c->req, req, known);
        r = 0;
        for (size_t i = sizeof c->req; i < size; i++)
            if (((const unsigned char *)req)[i] != 0) r = -E2BIG;
        if (r != 0) say(c, "the request has options this library (version %s) does not know",
                        waymark_version());
        else if (size < offsetof(struct waymark_request, timeout_ms) + sizeof(int)) {
            say(c, "request size %zu is too small", size);
            r = -EINVAL;
        } else {
            r = run(c);
        }
    }
    wm_conn_close(&c->conn);
    if (r < 0 && c->res.error[0] == '\0') fail(c, -r);
    if (out != NULL) {
        size_t size = out->size == 0 ? RESULT_V1_SIZE : out->size;
        c->res.size = out->size;
        memcpy(out, &c->res, size < sizeof c->res ? size : sizeof c->res);
    }
    free(c);
    if (r < 0) {
        errno = -r;
        return -1;
    }
    errno = saved;
    return r;
}

API const char *waymark_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case EACCES: return "Waymark policy refuses this destination";
    case ENETUNREACH: return "no allowed uplink reaches this destination";
    case ENOENT: return "no such host name";
    case EAGAIN: return "name resolution failed for now";
    case ETIMEDOUT: return "connection timed out";
    case E2BIG: return "request from a newer Waymark with options this library does not know";
    case EINVAL: return "invalid request";
    default: {
        const char *d = strerrordesc_np(err);
        return d != NULL ? d : "unknown error";
    }
    }
}

API int waymark_needs_parse(const char *list, unsigned int *needs)
{
    int unknown = 0;
    uint32_t n = wm_needs_parse(list, &unknown);
    if (needs != NULL) *needs = n;
    if (unknown > 0) {
        errno = EINVAL;
        return -1;
    }
    return 0;
}

API const char *waymark_version(void)
{
    return "1.0";
}
