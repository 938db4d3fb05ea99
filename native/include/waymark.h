/* waymark.h: ask Waymark for a TCP connection by what it needs.
 *
 *     struct waymark_request req = WAYMARK_REQUEST_INIT;
 *     req.host = "mms.example.net";
 *     req.service = "80";
 *     req.needs = WAYMARK_NEED_CHEAPEST | WAYMARK_NEED_NO_ROAMING;
 *     struct waymark_result res = WAYMARK_RESULT_INIT;
 *     int fd = waymark_connect_tcp(&req, &res);
 *     if (fd < 0) fprintf(stderr, "%s: %s\n", waymark_strerror(errno), res.error);
 *     else printf("connected over %s (%s)\n", res.uplink[0] ? res.uplink : "default route", res.ifname);
 *
 * Link with -lwaymark-client (libwaymark-client.so.1). The library asks waymarkd over
 * decide.sock in the daemon's directory, default /run/waymark ($WAYMARK_SOCKET names the control
 * socket in it or the directory itself, as for every Waymark program): it resolves the host
 * through the daemon (WM_RESOLVE, so by the DNS of the uplink that will carry the connection;
 * the system resolver for names no destination claims), asks for a decision per address
 * (WM_DECIDE), binds the socket to the decided uplink's device and connects, trying the next
 * address on failure.
 *
 * Threads: every function is thread-safe and keeps no state between calls: each call opens its
 * own connection to the daemon and closes it before returning, so fork() at any time is fine.
 * Ownership: the strings of a request are read during the call only; the returned descriptor
 * belongs to the caller. Signals: EINTR is retried internally until the call's own deadline.
 *
 * Versioning: the soname (.so.1) and the symbol version WAYMARK_1 change only with an
 * incompatible change. Structures grow at their end only; `size` says which layout the caller
 * was compiled with (0 means the first one, so zero-initialised structures are fine), and a
 * request larger than this library knows is accepted only if the unknown tail is all zero
 * (otherwise E2BIG: the caller asked for something this library cannot do).
 *
 * Environment (read at each call): WAYMARK_SOCKET (where the daemon is), WAYMARK_TIMEOUT_MS and
 * WAYMARK_RESOLVE_TIMEOUT_MS (bounds of the daemon's answers, default 50 and 5000),
 * WAYMARK_PROMPT_TIMEOUT_MS (bound of an answer the daemon says waits for the user, 60000),
 * WAYMARK_FAIL=closed (like WAYMARK_STRICT), WAYMARK_DISABLE=1 (never ask the daemon).
 * WAYMARK_NEEDS, WAYMARK_UPLINK and WAYMARK_DESTINATION (set by `waymark exec`) complete a
 * request: their needs are added, and the uplink/destination apply when the request has none. */
#ifndef WAYMARK_H
#define WAYMARK_H

#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define WAYMARK_VERSION_MAJOR 1
#define WAYMARK_VERSION_MINOR 0

/* Needs (bit mask). The same values as the decision protocol's WM_NEED_*. */
#define WAYMARK_NEED_LONG_LIVED 0x01u    /* a long connection: prefer stable uplinks */
#define WAYMARK_NEED_MAX_BANDWIDTH 0x02u /* the fastest uplink */
#define WAYMARK_NEED_LOW_LATENCY 0x04u   /* the lowest round-trip time */
#define WAYMARK_NEED_CHEAPEST 0x08u      /* the lowest cost per MB */
#define WAYMARK_NEED_NO_ROAMING 0x10u    /* never a roaming uplink */
#define WAYMARK_NEED_UNMETERED 0x20u     /* never a metered uplink */

/* Request flags. */
#define WAYMARK_STRICT 0x1u /* when the daemon cannot answer, fail with ENETUNREACH instead of
                               connecting over the default route */

struct waymark_request {
    unsigned int size;       /* sizeof(struct waymark_request), or 0 for this first layout */
    unsigned int flags;      /* WAYMARK_STRICT, or 0 */
    const char *host;        /* host name or numeric address (IPv6 may carry %scope); required */
    const char *service;     /* port number or service name ("https"); required */
    unsigned int needs;      /* WAYMARK_NEED_*, 0 for none */
    const char *uplink;      /* ask for this uplink (name or interface), NULL for any */
    const char *destination; /* the destination the host belongs to, NULL to let the daemon
                                work it out from the address */
    int family;              /* AF_UNSPEC (0), AF_INET or AF_INET6 */
    int timeout_ms;          /* bound of each connection attempt; <= 0: 10000 */
};

struct waymark_result {
    unsigned int size;                /* as in waymark_request */
    int family;                       /* AF_INET or AF_INET6 of the connection */
    char uplink[32];                  /* the uplink carrying it, "" for the default route */
    char ifname[16];                  /* the device the socket is bound to, "" for none */
    struct sockaddr_storage address;  /* the peer connected to */
    socklen_t address_len;
    int attempts;                     /* addresses tried (connected or failed) */
    char error[192];                  /* after a failure, what happened, for people ("" if ok) */
};

#define WAYMARK_REQUEST_INIT { .size = sizeof(struct waymark_request) }
#define WAYMARK_RESULT_INIT { .size = sizeof(struct waymark_result) }

/* Connects to req->host:req->service over the uplink Waymark decides for req->needs.
 * Returns a connected, blocking, close-on-exec TCP socket, or -1 with errno:
 *   EINVAL        a bad request (no host/service, unknown flags or family, unknown service,
 *                 uplink/destination longer than 31 bytes)
 *   E2BIG         a newer request layout with options this library does not know
 *   ENOENT        the host name does not exist (detail in out->error)
 *   EAGAIN        name resolution failed for now (the uplink's DNS did not answer)
 *   EACCES        policy refuses every address of the host
 *   ENETUNREACH   no allowed uplink reaches it, or (WAYMARK_STRICT) the daemon did not answer
 *   ETIMEDOUT, ECONNREFUSED, EHOSTUNREACH, ...   the last connection attempt's error
 *   ENOMEM, EMFILE, ...                          resources
 * out may be NULL. */
int waymark_connect_tcp(const struct waymark_request *req, struct waymark_result *out);

/* A description of an errno as waymark_connect_tcp() means it (static storage, never NULL). */
const char *waymark_strerror(int err);

/* Parses a comma-separated list of needs ("cheapest,no-roaming", the names of `waymark exec
 * --need` and WAYMARK_NEEDS) into *needs. 0, or -1 with errno EINVAL if some name is unknown
 * (*needs then holds the known ones). */
int waymark_needs_parse(const char *list, unsigned int *needs);

/* "1.0" */
const char *waymark_version(void);

#ifdef __cplusplus
}
#endif

#endif
