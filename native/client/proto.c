/* The client side of the decision protocol: see proto.h. */
#include "proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct wm_header) == 16, "wm_header");
_Static_assert(sizeof(struct wm_decide_req) == 104, "wm_decide_req");
_Static_assert(sizeof(struct wm_decide_resp) == 84, "wm_decide_resp");
_Static_assert(sizeof(struct wm_resolve_req) == 312, "wm_resolve_req");
_Static_assert(sizeof(struct wm_resolve_resp) == 384, "wm_resolve_resp");
_Static_assert(sizeof(struct wm_pending) == 24, "wm_pending");

int (*wm_sys_connect)(int, const struct sockaddr *, socklen_t);

static const char *env(const char *name)
{
    const char *v = secure_getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

static void note(struct wm_settings *s, const char *fmt, const char *what)
{
    size_t used = strlen(s->notes);
    if (used + 2 >= sizeof s->notes) return;
    snprintf(s->notes + used, sizeof s->notes - used, "%s", used > 0 ? "; " : "");
    used = strlen(s->notes);
    snprintf(s->notes + used, sizeof s->notes - used, fmt, what);
}

static int env_ms(struct wm_settings *s, const char *name, int fallback, long max)
{
    const char *v = env(name);
    if (v == NULL) return fallback;
    char *end;
    long ms = strtol(v, &end, 10);
    if (*end != '\0' || ms < 1 || ms > max) {
        note(s, "%s not understood", name);
        return fallback;
    }
    return (int)ms;
}

static const struct {
    const char *name;
    uint32_t bit;
} need_names[] = {
    { "long-lived", WM_NEED_LONG_LIVED }, { "max-bandwidth", WM_NEED_MAX_BANDWIDTH },
    { "low-latency", WM_NEED_LOW_LATENCY }, { "cheapest", WM_NEED_CHEAPEST },
    { "no-roaming", WM_NEED_NO_ROAMING }, { "unmetered", WM_NEED_UNMETERED },
};

uint32_t wm_needs_parse(const char *list, int *unknown)
{
    uint32_t needs = 0;
    int bad = 0;
    for (const char *p = list; p != NULL && *p != '\0';) {
        while (*p == ',' || *p == ' ' || *p == '\t') p++;
        const char *end = p;
        while (*end != '\0' && *end != ',' && *end != ' ' && *end != '\t') end++;
        size_t len = (size_t)(end - p);
        if (len > 0) {
            bool found = false;
            for (size_t i = 0; i < sizeof need_names / sizeof need_names[0]; i++) {
                if (strlen(need_names[i].name) == len && memcmp(need_names[i].name, p, len) == 0) {
                    needs |= need_names[i].bit;
                    found = true;
                }
            }
            if (!found) bad++;
        }
        p = end;
    }
    if (unknown != NULL) *unknown = bad;
    return needs;
}

static bool copy_wish(char *dst, size_t size, const char *src)
{
    dst[0] = '\0';
    if (src == NULL) return true;
    size_t len = strlen(src);
    if (len >= size) return false; /* never truncated into another name */
    memcpy(dst, src, len + 1);
    return true;
}

void wm_settings_load(struct wm_settings *s)
{
    memset(s, 0, sizeof *s);
    const char *debug = env("WAYMARK_DEBUG");
    s->debug = debug != NULL && strcmp(debug, "0") != 0;
    const char *disable = env("WAYMARK_DISABLE");
    s->disabled = disable != NULL && strcmp(disable, "0") != 0;

    /* The daemon's directory (it holds decide.sock and the generation file). WAYMARK_SOCKET
     * names either the control socket in it (then: everything up to the last '/') or the
     * directory itself (a value ending in '/' or naming an existing directory). */
    const char *sock = env("WAYMARK_SOCKET");
    char dir[WM_SUN_PATH_MAX];
    if (sock == NULL) {
        snprintf(dir, sizeof dir, "%s", WM_DEFAULT_DIR);
    } else {
        size_t len = strlen(sock);
        struct stat st;
        bool is_dir = sock[len - 1] == '/' || (stat(sock, &st) == 0 && S_ISDIR(st.st_mode));
        if (!is_dir) {
            const char *slash = strrchr(sock, '/');
            len = slash == NULL ? 0 : slash == sock ? 1 : (size_t)(slash - sock);
        }
        while (len > 1 && sock[len - 1] == '/') len--; /* "dir/" is "dir" */
        if (len == 0) {
            memcpy(dir, ".", 2); /* a bare socket name: the current directory */
        } else {
            if (len >= sizeof dir) len = sizeof dir - 1; /* then too long anyway: path_ok false */
            memcpy(dir, sock, len);
            dir[len] = '\0';
        }
    }
    int n = snprintf(s->decide_path, sizeof s->decide_path, "%s/%s", dir, WM_DECIDE_SOCKET);
    s->path_ok = n > 0 && (size_t)n < sizeof s->decide_path;
    if (!s->path_ok) note(s, "%s: decide socket path too long", "WAYMARK_SOCKET");
    snprintf(s->generation_path, sizeof s->generation_path, "%s/%s", dir, WM_GENERATION_FILE);

    int unknown = 0;
    s->needs = wm_needs_parse(env("WAYMARK_NEEDS"), &unknown);
    if (unknown > 0) note(s, "%s: unknown needs ignored", "WAYMARK_NEEDS");
    s->wish_ok = copy_wish(s->uplink, sizeof s->uplink, env("WAYMARK_UPLINK")) &&
                 copy_wish(s->destination, sizeof s->destination, env("WAYMARK_DESTINATION"));
    if (!s->wish_ok) note(s, "%s does not fit the protocol (31 bytes)", "WAYMARK_UPLINK/DESTINATION");
    s->timeout_ms = env_ms(s, "WAYMARK_TIMEOUT_MS", WM_DEFAULT_TIMEOUT_MS, 60000);
    s->resolve_timeout_ms = env_ms(s, "WAYMARK_RESOLVE_TIMEOUT_MS", WM_DEFAULT_RESOLVE_TIMEOUT_MS, 60000);
    s->prompt_timeout_ms = env_ms(s, "WAYMARK_PROMPT_TIMEOUT_MS", WM_DEFAULT_PROMPT_TIMEOUT_MS, 600000);
    const char *fail = env("WAYMARK_FAIL");
    s->fail_closed = fail != NULL && strcmp(fail, "closed") == 0;
    if (fail != NULL && strcmp(fail, "open") != 0 && strcmp(fail, "closed") != 0)
        note(s, "WAYMARK_FAIL=%s not understood, failing open", fail);
}

int64_t wm_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Milliseconds left before the deadline, rounded up; 0 when it has passed. */
static int left_ms(int64_t deadline_ns)
{
    int64_t left = deadline_ns - wm_now_ns();
    if (left <= 0) return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

int wm_conn_open(struct wm_conn *c, const char *path, int64_t deadline_ns)
{
    *c = (struct wm_conn)WM_CONN_INIT;
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    if (len >= sizeof sun.sun_path) return -ENAMETOOLONG;
    memcpy(sun.sun_path, path, len + 1);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    int (*conn)(int, const struct sockaddr *, socklen_t) =
        wm_sys_connect != NULL ? wm_sys_connect : connect;
    for (;;) {
        if (conn(fd, (struct sockaddr *)&sun, sizeof sun) == 0) break;
        int err = errno;
        if (err == EINTR) continue;
        /* A non-blocking AF_UNIX connect answers EAGAIN while the listener's backlog is full:
         * nothing to poll for, so retry briefly until the deadline. */
        if (err == EAGAIN && left_ms(deadline_ns) > 0) {
            struct timespec pause = { .tv_sec = 0, .tv_nsec = 500000 };
            nanosleep(&pause, NULL);
            continue;
        }
        close(fd);
        return err == EAGAIN ? -ETIMEDOUT : -err;
    }
    /* The listener's credentials: our own pid means this process is waymarkd itself (the library
     * loaded into it, say by /etc/ld.so.preload): it would wait for an answer only it can give. */
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) == 0 && peer.pid == getpid()) {
        close(fd);
        return -EDEADLK;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    c->fd = fd;
    c->pid = getpid();
    c->dev = st.st_dev;
    c->ino = st.st_ino;
    c->seq = 0;
    return 0;
}

bool wm_conn_owned(const struct wm_conn *c)
{
    if (c->fd < 0) return false;
    struct stat st;
    if (fstat(c->fd, &st) < 0) return false;
    return st.st_ino == c->ino && st.st_dev == c->dev && S_ISSOCK(st.st_mode) && getpid() == c->pid;
}

void wm_conn_close(struct wm_conn *c)
{
    if (wm_conn_owned(c)) close(c->fd);
    *c = (struct wm_conn)WM_CONN_INIT;
}

void wm_conn_forget(struct wm_conn *c)
{
    *c = (struct wm_conn)WM_CONN_INIT;
}

/* How long wm_call() polls for an answer before it sleeps in poll(): long enough for a Node
 * daemon on another CPU to wake up and answer (measured p99 ~150-250 us on a 2-vCPU VM). */
#define WM_SPIN_NS 300000
static atomic_int spinners; /* threads of this process polling for an answer right now */

/* Waits for `events` on c->fd until the deadline: 1 ready, 0 timed out, -errno. */
static int wait_for(const struct wm_conn *c, short events, int64_t deadline_ns)
{
    for (;;) {
        int ms = left_ms(deadline_ns);
        if (ms == 0) return 0;
        struct pollfd p = { .fd = c->fd, .events = events };
        int r = poll(&p, 1, ms);
        if (r > 0) return 1;
        if (r == 0) continue; /* re-check the deadline (poll rounds) */
        if (errno != EINTR) return -errno;
    }
}

static int fail_conn(struct wm_conn *c, int err)
{
    wm_conn_close(c);
    return -err;
}

int wm_call(struct wm_conn *c, struct wm_header *req, size_t req_size, struct wm_header *resp,
            size_t resp_size, int64_t deadline_ns, int prompt_ms)
{
    if (c->fd < 0) return -ENOTCONN;
    c->seq++;
    if (c->seq == 0) c->seq = 1;
    req->magic = WM_MAGIC;
    req->version = WM_VERSION;
    req->seq = c->seq;
    req->len = (uint32_t)req_size;
    for (;;) {
        ssize_t n = send(c->fd, req, req_size, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == (ssize_t)req_size) break;
        if (n >= 0) return fail_conn(c, EPROTO); /* a seqpacket send is all or nothing */
        if (errno == EINTR) continue;
        if (errno != EAGAIN) return fail_conn(c, errno == EPIPE ? ECONNRESET : errno);
        int w = wait_for(c, POLLOUT, deadline_ns);
        if (w == 0) return -ETIMEDOUT;
        if (w < 0) return fail_conn(c, -w);
    }
    /* Large enough for any message of ours; MSG_TRUNC reports the real length of a longer one. */
    union {
        struct wm_header h;
        unsigned char bytes[512];
    } buf;
    /* The daemon usually answers within tens of microseconds. Polling for that long before
     * sleeping saves this thread a wake-up (on a VM, an inter-processor interrupt and a vCPU
     * reschedule: tens of µs more); only first decisions ever wait here. One thread of the
     * process polls at a time: many spinning threads would take the CPU the daemon needs. Each
     * turn yields: if the daemon (or anything else) is runnable on this CPU, it goes first. */
    bool spinning = atomic_fetch_add(&spinners, 1) == 0;
    if (!spinning) atomic_fetch_sub(&spinners, 1);
    const int64_t spin_until = spinning ? wm_now_ns() + WM_SPIN_NS : 0;
    for (;;) {
        ssize_t n = recv(c->fd, &buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) {
                if (spinning) atomic_fetch_sub(&spinners, 1);
                return fail_conn(c, errno);
            }
            if (spinning && wm_now_ns() < spin_until) {
                sched_yield(); /* the daemon may be waiting for this very CPU */
                continue;
            }
            if (spinning) {
                atomic_fetch_sub(&spinners, 1);
                spinning = false;
            }
            int w = wait_for(c, POLLIN, deadline_ns);
            if (w == 0) return -ETIMEDOUT;
            if (w < 0) return fail_conn(c, -w);
            continue;
        }
        if (spinning) {
            atomic_fetch_sub(&spinners, 1);
            spinning = false;
        }
        if (n == 0) return fail_conn(c, ECONNRESET); /* orderly shutdown by the daemon */
        if ((size_t)n < sizeof buf.h || buf.h.magic != WM_MAGIC || buf.h.version != WM_VERSION ||
            buf.h.len != (uint32_t)n || (size_t)n > sizeof buf)
            return fail_conn(c, EPROTO);
        if (buf.h.seq != req->seq) continue; /* stale: the answer to an abandoned request */
        if (buf.h.type == WM_PENDING) {
            /* The answer waits for the user: wait for it as long as the daemon says, capped. */
            struct wm_pending p;
            if ((size_t)n != sizeof p) return fail_conn(c, EPROTO);
            memcpy(&p, &buf, sizeof p);
            int64_t cap = prompt_ms > 0 ? prompt_ms : 0;
            int64_t wait_ms = (int64_t)p.wait_ms < cap ? (int64_t)p.wait_ms : cap;
            int64_t until = wm_now_ns() + wait_ms * 1000000;
            if (until > deadline_ns) deadline_ns = until; /* later, never earlier */
            continue;
        }
        if (buf.h.type != req->type || (size_t)n != resp_size) return fail_conn(c, EPROTO);
        memcpy(resp, &buf, resp_size);
        return 0;
    }
}

static bool put_str(char *dst, size_t size, const char *src)
{
    memset(dst, 0, size);
    return copy_wish(dst, size, src);
}

int wm_decide_build(struct wm_decide_req *r, int family, const uint8_t *addr, uint16_t port,
                    int proto, uint32_t needs, const char *uplink, const char *destination)
{
    memset(r, 0, sizeof *r);
    r->h.type = WM_DECIDE;
    r->family = (uint8_t)family;
    r->proto = (uint8_t)proto;
    r->port = port;
    r->needs = needs;
    memcpy(r->addr, addr, family == AF_INET ? 4 : 16);
    if (!put_str(r->uplink, sizeof r->uplink, uplink)) return -EINVAL;
    if (!put_str(r->destination, sizeof r->destination, destination)) return -EINVAL;
    return 0;
}

static bool terminated(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

int wm_decide_check(struct wm_decide_resp *r)
{
    if (!terminated(r->ifname, sizeof r->ifname) || !terminated(r->uplink, sizeof r->uplink))
        return -EPROTO;
    switch (r->action) {
    case WM_PASS:
        return 0;
    case WM_STEER:
        return r->ifname[0] != '\0' || r->ifindex != 0 ? 0 : -EPROTO;
    case WM_DENY:
        if (r->err != ENETUNREACH && r->err != EHOSTUNREACH && r->err != EPERM) r->err = EACCES;
        return 0;
    default:
        return -EPROTO;
    }
}

int wm_resolve_build(struct wm_resolve_req *r, const char *name, int family, uint32_t needs,
                     const char *uplink)
{
    memset(r, 0, sizeof *r);
    r->h.type = WM_RESOLVE;
    r->family = (uint8_t)family;
    r->needs = needs;
    if (!put_str(r->uplink, sizeof r->uplink, uplink)) return -EINVAL;
    if (name == NULL || name[0] == '\0' || !put_str(r->name, sizeof r->name, name)) return -EINVAL;
    return 0;
}

int wm_resolve_check(const struct wm_resolve_resp *r)
{
    if (!terminated(r->uplink, sizeof r->uplink)) return -EPROTO;
    if (r->status > WM_REFUSED) return -EPROTO;
    if (r->status != WM_RESOLVED) return 0;
    if (r->count > WM_MAX_ADDRS) return -EPROTO;
    for (unsigned i = 0; i < r->count; i++)
        if (r->addrs[i].family != AF_INET && r->addrs[i].family != AF_INET6) return -EPROTO;
    return 0;
}

const char *wm_describe(int family, const uint8_t *addr, uint16_t port, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(family, addr, ip, sizeof ip);
    snprintf(buf, size, family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, (unsigned)port);
    return buf;
}
