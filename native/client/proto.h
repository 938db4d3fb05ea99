/* The client side of the decision protocol (include/waymark_proto.h), shared by libwaymark.so
 * (the LD_PRELOAD library) and libwaymark-client.so (the client API): both compile proto.c in.
 *
 * What lives here: the settings both libraries read from the environment, building and checking
 * the fixed-size messages, and one connection to the daemon with a deadline-bounded request.
 * What does not: caching, threads, fork handling and the failure policy (open/closed), which
 * differ between the two libraries.
 *
 * Nothing here keeps global mutable state (wm_sys_connect is written once, at initialisation),
 * takes a lock or allocates memory, so every function is thread-safe for distinct wm_conn. */
#ifndef WAYMARK_CLIENT_PROTO_H
#define WAYMARK_CLIENT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "waymark_proto.h"

#define WM_DEFAULT_TIMEOUT_MS 50           /* a decision: connect + send + receive */
#define WM_DEFAULT_RESOLVE_TIMEOUT_MS 5000 /* a name: the daemon asks the uplink's DNS */
#define WM_DEFAULT_PROMPT_TIMEOUT_MS 60000 /* an answer that waits for the user (WM_PENDING) */
#define WM_SUN_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)

/* Everything both libraries take from the environment (secure_getenv: nothing in AT_SECURE
 * processes, which then get the defaults).
 *   WAYMARK_SOCKET              the control socket, or the directory that holds it (a value
 *                               ending in '/' or naming a directory); that directory holds
 *                               decide.sock and generation (default /run/waymark/waymarkd.sock)
 *   WAYMARK_NEEDS               comma list: long-lived,max-bandwidth,low-latency,cheapest,
 *                               no-roaming,unmetered (unknown names are ignored, see notes)
 *   WAYMARK_UPLINK              requested uplink (name or interface), at most 31 bytes
 *   WAYMARK_DESTINATION         requested destination, at most 31 bytes
 *   WAYMARK_TIMEOUT_MS          bound of one decision, default 50 (1..60000)
 *   WAYMARK_RESOLVE_TIMEOUT_MS  bound of one name resolution, default 5000 (1..60000)
 *   WAYMARK_PROMPT_TIMEOUT_MS   most a request waits once the daemon said the answer waits for
 *                               the user (WM_PENDING), default 60000 (1..600000)
 *   WAYMARK_FAIL                open (default) | closed: when the daemon cannot answer
 *   WAYMARK_DISABLE             1: do nothing at all
 *   WAYMARK_DEBUG               set and not "0": explain on stderr */
struct wm_settings {
    char decide_path[WM_SUN_PATH_MAX];
    char generation_path[WM_SUN_PATH_MAX + 16];
    bool path_ok;          /* decide_path fits a sockaddr_un */
    bool wish_ok;          /* uplink/destination fit the protocol's fields */
    uint32_t needs;
    char uplink[32];
    char destination[32];
    int timeout_ms;
    int resolve_timeout_ms;
    int prompt_timeout_ms;
    bool fail_closed;
    bool disabled;
    bool debug;
    char notes[192];       /* problems found in the environment, for a debug line ("" if none) */
};

void wm_settings_load(struct wm_settings *s);

/* Parses a WAYMARK_NEEDS-style list ("cheapest, no-roaming"). Returns the WM_NEED_* mask;
 * *unknown (may be NULL) gets the number of names not understood. */
uint32_t wm_needs_parse(const char *list, int *unknown);

/* The connect() used for the daemon socket. The LD_PRELOAD library points it at the next
 * definition (its own hook would only pass the AF_UNIX socket through); NULL means connect(). */
extern int (*wm_sys_connect)(int, const struct sockaddr *, socklen_t);

/* Nanoseconds of CLOCK_MONOTONIC. */
int64_t wm_now_ns(void);

/* One connection to decide.sock. The descriptor is the library's own; the program may close it
 * or dup2() something else onto its number at any time, so before every use wm_conn_owned()
 * compares the descriptor's inode (fstat) and the process id with those recorded at connect:
 * a descriptor that is no longer ours is forgotten, never closed or written to. */
struct wm_conn {
    int fd;
    pid_t pid;          /* process that connected (a forked child must not share it) */
    dev_t dev;
    ino_t ino;
    uint32_t seq;       /* last sequence number sent */
};
#define WM_CONN_INIT { .fd = -1, .pid = 0, .dev = 0, .ino = 0, .seq = 0 }

/* Connects (SOCK_SEQPACKET, close-on-exec, non-blocking) before the deadline. 0 or -errno:
 * ENOENT/ECONNREFUSED (no daemon), EACCES, ETIMEDOUT (backlog full until the deadline),
 * EDEADLK (the socket's listener is this very process: we are waymarkd), ... */
int wm_conn_open(struct wm_conn *c, const char *path, int64_t deadline_ns);

/* Whether c->fd is still the socket wm_conn_open() made, in this process. */
bool wm_conn_owned(const struct wm_conn *c);

/* Closes the socket if it is still ours, and resets c either way. */
void wm_conn_close(struct wm_conn *c);

/* Forgets the socket without closing it (it is not ours any more). */
void wm_conn_forget(struct wm_conn *c);

/* One request and its response. The caller fills the request's body and h.type; wm_call sets
 * magic, version, seq and len, sends it and waits until the deadline for a response of
 * exactly resp_size bytes with the same type and seq. Responses with another seq (answers to
 * requests that timed out earlier) are dropped. A WM_PENDING for this seq moves the deadline to
 * its wait_ms from now, at most prompt_ms (0: WM_PENDING is not honoured). Returns 0 or -errno:
 *   ETIMEDOUT   no answer in time (the connection stays: a late answer will be dropped)
 *   ECONNRESET  the daemon closed the connection (c is closed)
 *   EPROTO      a malformed answer (c is closed: the stream cannot be trusted any more)
 *   other       from send/recv/poll (c is closed) */
int wm_call(struct wm_conn *c, struct wm_header *req, size_t req_size, struct wm_header *resp,
            size_t resp_size, int64_t deadline_ns, int prompt_ms);

/* A WM_DECIDE request for a destination. family AF_INET (addr: 4 bytes) or AF_INET6 (16),
 * port in host order, proto IPPROTO_TCP or IPPROTO_UDP. uplink/destination may be NULL.
 * Returns 0, or -EINVAL if a wish does not fit. */
int wm_decide_build(struct wm_decide_req *r, int family, const uint8_t *addr, uint16_t port,
                    int proto, uint32_t needs, const char *uplink, const char *destination);

/* Checks a response's body: known action, terminated strings, a device for WM_STEER.
 * 0 or -EPROTO. For WM_DENY, normalises err to an errno a caller can return (EACCES unless the
 * daemon said ENETUNREACH, EHOSTUNREACH or EPERM). */
int wm_decide_check(struct wm_decide_resp *r);

/* A WM_RESOLVE request. family AF_UNSPEC, AF_INET or AF_INET6. -EINVAL if the name or the
 * uplink does not fit. */
int wm_resolve_build(struct wm_resolve_req *r, const char *name, int family, uint32_t needs,
                     const char *uplink);

/* Checks a resolve response: known status, count <= WM_MAX_ADDRS, address families,
 * terminated uplink. 0 or -EPROTO. */
int wm_resolve_check(const struct wm_resolve_resp *r);

/* "192.0.2.1:80" / "[2001:db8::1]:443" for messages. */
const char *wm_describe(int family, const uint8_t *addr, uint16_t port, char *buf, size_t size);

#endif
