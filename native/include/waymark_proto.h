/* The decision protocol between libwaymark (the LD_PRELOAD library and the client library) and
 * waymarkd. Mirrored in src/decision/wire.ts; test/unit/wire.test.ts checks sizes and offsets.
 *
 * Transport: a SOCK_SEQPACKET Unix socket, DECIDE_SOCKET in the directory of the control socket
 * (default /run/waymark/decide.sock; $WAYMARK_SOCKET names the control socket or its directory).
 * One request, one response, matched by seq; every message is one of the fixed-size structs
 * below, host byte order (both ends run on the same machine). Before the response the daemon
 * may send a WM_PENDING with the same seq: the answer waits for the user (a prompt). The daemon identifies the caller by
 * SO_PEERCRED, never by what the message says; a request field is a wish checked against policy.
 * A malformed message (bad magic, version, type or length) is dropped and answered with nothing.
 *
 * Cache invalidation: GENERATION_FILE, in the same directory, is a 4096-byte file whose first
 * 4 bytes are a uint32 generation, written by the daemon with one aligned store whenever policy or
 * uplinks change. The library maps it read-only and compares it with the generation stored in
 * each cached decision: a changed generation invalidates the cache without any system call. */
#ifndef WAYMARK_PROTO_H
#define WAYMARK_PROTO_H

#include <stdint.h>

#define WM_MAGIC 0x574d4b31u /* "WMK1" */
#define WM_VERSION 1
#define WM_DECIDE_SOCKET "decide.sock"
#define WM_GENERATION_FILE "generation"
#define WM_DEFAULT_DIR "/run/waymark"

enum wm_type {
    WM_DECIDE = 1,        /* wm_decide_req -> wm_decide_resp */
    WM_RESOLVE = 2,       /* wm_resolve_req -> wm_resolve_resp */
    WM_PENDING = 3,       /* daemon to client only: wm_pending, before the response to a request */
};

enum wm_action {
    WM_PASS = 0,          /* leave the socket alone: default routing */
    WM_STEER = 1,         /* bind it to ifname/ifindex */
    WM_DENY = 2,          /* fail the call with err */
};

/* Needs a program may ask for (waymark exec --need, WAYMARK_NEEDS, the client API). */
#define WM_NEED_LONG_LIVED 0x01u    /* keep the connection: prefer stable uplinks (cellular over Wi-Fi) */
#define WM_NEED_MAX_BANDWIDTH 0x02u /* fastest uplink */
#define WM_NEED_LOW_LATENCY 0x04u
#define WM_NEED_CHEAPEST 0x08u      /* lowest cost per MB */
#define WM_NEED_NO_ROAMING 0x10u    /* never a roaming uplink */
#define WM_NEED_UNMETERED 0x20u     /* never a metered uplink */

/* Request flags, in the high 16 bits of wm_decide_req.needs (the needs use the low 16). */
#define WM_REQ_NONBLOCK 0x10000u    /* the call must not block (O_NONBLOCK socket, MSG_DONTWAIT): an
                                       answer that waits for the user is not waited for (the rule's
                                       default now, the prompt raised all the same) */
#define WM_NEEDS_MASK 0xffffu

struct wm_header {
    uint32_t magic;       /* WM_MAGIC */
    uint16_t version;     /* WM_VERSION */
    uint16_t type;        /* enum wm_type; the response carries the request's type */
    uint32_t seq;         /* chosen by the client, echoed */
    uint32_t len;         /* size of the whole message */
};

struct wm_decide_req {
    struct wm_header h;
    uint8_t family;       /* AF_INET (2) or AF_INET6 (10) */
    uint8_t proto;        /* IPPROTO_TCP (6) or IPPROTO_UDP (17) */
    uint16_t port;        /* destination port, host order */
    uint32_t needs;       /* WM_NEED_* | WM_REQ_* */
    uint8_t addr[16];     /* destination; IPv4 in the first 4 bytes */
    char uplink[32];      /* requested uplink (name or interface), "" for none */
    char destination[32]; /* requested destination, "" for none */
};

struct wm_decide_resp {
    struct wm_header h;
    uint8_t action;       /* enum wm_action */
    uint8_t pad;
    uint16_t err;         /* errno for WM_DENY (EACCES or ENETUNREACH) */
    uint32_t ifindex;     /* WM_STEER */
    uint32_t mark;        /* the uplink's fwmark (informational) */
    uint32_t ttl_ms;      /* how long the answer may be cached */
    uint32_t generation;  /* generation the answer belongs to */
    char ifname[16];      /* WM_STEER */
    char uplink[32];      /* the uplink's name, for messages */
};

/* "The answer to request seq waits for the user": a decided answer is bounded by the caller's
 * own timeout (WAYMARK_TIMEOUT_MS, 50 ms by default); after a WM_PENDING the caller waits up to
 * wait_ms from its arrival instead, capped by WAYMARK_PROMPT_TIMEOUT_MS (default 60 s). The
 * response follows with the same seq; without one in time the caller fails open or closed as
 * for any timeout. h.type is WM_PENDING, h.seq the request's. */
struct wm_pending {
    struct wm_header h;
    uint32_t wait_ms;
    uint32_t pad;
};

enum wm_resolve_status {
    WM_RESOLVED = 0,      /* addresses follow */
    WM_NOT_OURS = 1,      /* no destination claims the name: use the system resolver */
    WM_NO_NAME = 2,       /* the uplink's DNS says the name does not exist */
    WM_DNS_FAILED = 3,    /* no answer from the uplink's DNS (timeout, SERVFAIL, uplink down) */
    WM_REFUSED = 4,       /* policy allows this program no uplink that reaches the name's destination */
};

#define WM_MAX_ADDRS 16

struct wm_resolve_req {
    struct wm_header h;
    uint8_t family;       /* AF_UNSPEC (0), AF_INET or AF_INET6 */
    uint8_t pad[3];
    uint32_t needs;
    char uplink[32];
    char name[256];       /* NUL-terminated host name */
};

struct wm_addr {
    uint8_t family;       /* AF_INET or AF_INET6 */
    uint8_t pad[3];
    uint8_t addr[16];
};

struct wm_resolve_resp {
    struct wm_header h;
    uint16_t status;      /* enum wm_resolve_status */
    uint8_t count;        /* addresses in addrs[] */
    uint8_t pad;
    uint32_t ttl_ms;
    uint32_t generation;
    uint32_t pad2;
    char uplink[32];      /* the uplink whose DNS answered */
    struct wm_addr addrs[WM_MAX_ADDRS];
};

#endif
