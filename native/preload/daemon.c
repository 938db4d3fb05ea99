/* Asking waymarkd: one SOCK_SEQPACKET connection per thread, made on first need.
 *
 * - Per thread (thread-local), so requests never wait for each other and need no lock; the
 *   registry (cache.c) lists the connections so a forked child closes the copies it inherits,
 *   and a thread-exit destructor closes a thread's own.
 * - The program may close our descriptor or dup2() another onto its number: before each use
 *   wm_conn_owned() compares the inode and the pid recorded at connect; a descriptor that is not
 *   ours any more is forgotten, never closed or written to. The socket is close-on-exec.
 * - Every request is bounded: WAYMARK_TIMEOUT_MS (default 50) for a decision, from the start
 *   of the connect to the end of the answer; WAYMARK_RESOLVE_TIMEOUT_MS (default 5000) for a
 *   name, which the daemon resolves over the uplink's DNS. Only an answer the daemon says waits
 *   for the user (WM_PENDING) is waited for longer: WAYMARK_PROMPT_TIMEOUT_MS (default 60 s).
 * - After any failure (no socket, refused, timeout, malformed answer) nobody asks again for
 *   BACKOFF_MS: the callers get -EAGAIN at once and apply WAYMARK_FAIL, so a machine without a
 *   daemon pays one failed connect() a second, not one per call.
 * - A connection the daemon closed (a restart) is re-made once within the same request. */
#include "common.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#define BACKOFF_NS (1000 * 1000000LL)

static __thread struct waymark_link tls_link = { .conn = WM_CONN_INIT, .prev = NULL, .next = NULL,
                                                 .listed = false };
static pthread_key_t exit_key;
static bool exit_key_ok;
static int64_t backoff_until_ns; /* atomic */
static bool in_daemon;           /* atomic: this process is waymarkd itself */

static void thread_exit(void *p)
{
    struct waymark_link *l = p;
    waymark_registry_remove(l);
    wm_conn_close(&l->conn);
}

void waymark_daemon_init(void)
{
    exit_key_ok = pthread_key_create(&exit_key, thread_exit) == 0;
}

static void back_off(void)
{
    __atomic_store_n(&backoff_until_ns, wm_now_ns() + BACKOFF_NS, __ATOMIC_RELAXED);
}

bool waymark_in_daemon(void)
{
    return __atomic_load_n(&in_daemon, __ATOMIC_RELAXED);
}

bool waymark_daemon_backing_off(void)
{
    int64_t until = __atomic_load_n(&backoff_until_ns, __ATOMIC_RELAXED);
    return until != 0 && wm_now_ns() < until;
}

static int transact(struct wm_header *req, size_t req_size, struct wm_header *resp,
                    size_t resp_size, int timeout_ms, const char *what)
{
    const struct wm_settings *s = &waymark_config.s;
    int64_t now = wm_now_ns();
    if (now < __atomic_load_n(&backoff_until_ns, __ATOMIC_RELAXED)) return -EAGAIN;
    int64_t deadline = now + (int64_t)timeout_ms * 1000000;
    struct waymark_link *l = &tls_link;
    if (l->conn.fd >= 0 && !wm_conn_owned(&l->conn)) {
        waymark_debug("daemon connection fd %d was closed or replaced by the program", l->conn.fd);
        wm_conn_forget(&l->conn);
    }
    int err = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = false;
        if (l->conn.fd < 0) {
            err = s->path_ok ? wm_conn_open(&l->conn, s->decide_path, deadline) : -ENAMETOOLONG;
            if (err == -EDEADLK) {
                /* Loaded into waymarkd itself: stand aside for good, whatever WAYMARK_FAIL says. */
                __atomic_store_n(&in_daemon, true, __ATOMIC_RELAXED);
                waymark_debug("this process is waymarkd itself: leaving its sockets alone");
                return err;
            }
            if (err != 0) break;
            fresh = true;
            if (!l->listed) {
                waymark_registry_add(l);
                if (exit_key_ok) pthread_setspecific(exit_key, l);
            }
        }
        err = wm_call(&l->conn, req, req_size, resp, resp_size, deadline, s->prompt_timeout_ms);
        if (err == 0) return 0;
        if (err == -ECONNRESET && !fresh) continue; /* the daemon restarted: once more */
        break;
    }
    back_off();
    /* No daemon behind the socket (or it hung up on us): its cached decisions go with it. */
    if (err == -ENOENT || err == -ECONNREFUSED || err == -ECONNRESET) waymark_cache_clear();
    waymark_debug("%s: daemon %s unavailable: %s; failing %s for 1 s", what, s->decide_path,
                  strerror(-err), s->fail_closed ? "closed" : "open");
    return err;
}

int waymark_ask_decide(const struct waymark_key *k, bool nonblock, struct wm_decide_resp *out)
{
    const struct wm_settings *s = &waymark_config.s;
    struct wm_decide_req req;
    if (!s->wish_ok || wm_decide_build(&req, k->family, k->addr, k->port, k->proto,
                                       s->needs | (nonblock ? WM_REQ_NONBLOCK : 0u), s->uplink,
                                       s->destination) != 0)
        return -EINVAL;
    int err = transact(&req.h, sizeof req, &out->h, sizeof *out, s->timeout_ms, "decide");
    if (err != 0) return err;
    if (wm_decide_check(out) != 0) {
        waymark_debug("decide: malformed answer (action %u); failing %s for 1 s",
                      (unsigned)out->action, s->fail_closed ? "closed" : "open");
        back_off();
        return -EPROTO;
    }
    return 0;
}

int waymark_ask_resolve(const char *name, int family, struct wm_resolve_resp *out)
{
    const struct wm_settings *s = &waymark_config.s;
    struct wm_resolve_req req;
    if (!s->wish_ok || wm_resolve_build(&req, name, family, s->needs, s->uplink) != 0)
        return -EINVAL;
    int err = transact(&req.h, sizeof req, &out->h, sizeof *out, s->resolve_timeout_ms, "resolve");
    if (err != 0) return err;
    if (wm_resolve_check(out) != 0) {
        waymark_debug("resolve: malformed answer (status %u); failing %s for 1 s",
                      (unsigned)out->status, s->fail_closed ? "closed" : "open");
        back_off();
        return -EPROTO;
    }
    return 0;
}
