/* Names: getaddrinfo(), gethostbyname(), gethostbyname2(), gethostbyname_r(), gethostbyname2_r().
 *
 * glibc's stub resolver talks to the DNS server through libc-internal __connect/__sendto that
 * no connect()/sendto() wrapper sees, and a name must be resolved by the DNS of the uplink that
 * will carry the connection. So a host name (not a numeric address, not "localhost") goes to
 * the daemon as WM_RESOLVE (family from the caller, needs and uplink from the environment):
 *   WM_RESOLVED   its addresses, in the daemon's order. getaddrinfo builds the result by
 *                 calling the real getaddrinfo once per address with AI_NUMERICHOST and the
 *                 caller's service and hints (so socktype/protocol/port/V4MAPPED/ADDRCONFIG
 *                 behave exactly as usual) and chaining the lists: glibc's freeaddrinfo frees
 *                 node by node (free(ai_canonname), free(ai)), so the chain frees correctly.
 *                 AI_CANONNAME gets the name asked for, on the first node.
 *   WM_NOT_OURS   the real function (the system resolver).
 *   WM_NO_NAME    EAI_NONAME / HOST_NOT_FOUND.
 *   WM_DNS_FAILED EAI_AGAIN / TRY_AGAIN.
 *   WM_REFUSED    EAI_FAIL / NO_RECOVERY, and one line on stderr (policy allows no uplink).
 *   no answer     WAYMARK_FAIL=open: the real function; closed: EAI_AGAIN / TRY_AGAIN.
 * Nothing is cached here: the daemon caches names with their TTLs.
 * Not covered: getaddrinfo_a(), res_query()/res_search() (SRV, MX, TXT lookups) and
 * gethostbyname3_r/getipnodebyname; they use the system resolver unchanged. */
#include "common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum outcome { REAL, RESOLVED, NO_NAME, AGAIN, REFUSED };

static bool numeric(const char *name)
{
    struct in6_addr a6;
    struct in_addr a4;
    return strchr(name, '%') != NULL || inet_pton(AF_INET6, name, &a6) == 1 ||
           inet_aton(name, &a4) != 0;
}

static bool local_name(const char *name)
{
    size_t len = strlen(name);
    if (len > 0 && name[len - 1] == '.') len--; /* "localhost." */
    return (len == 9 && strncasecmp(name, "localhost", 9) == 0) ||
           (len > 10 && strncasecmp(name + len - 10, ".localhost", 10) == 0);
}

static enum outcome ask(const char *name, int family, int flags, struct wm_resolve_resp *r)
{
    if (!waymark_config.active || name == NULL || name[0] == '\0' || waymark_in_daemon()) return REAL;
    if (family != AF_UNSPEC && family != AF_INET && family != AF_INET6) return REAL;
    if ((flags & AI_NUMERICHOST) || strlen(name) >= sizeof((struct wm_resolve_req *)0)->name ||
        numeric(name) || local_name(name))
        return REAL;
    int err = waymark_ask_resolve(name, family, r);
    if (err == -EDEADLK) return REAL; /* we are the daemon */
    if (err != 0) {
        if (err != -EAGAIN) waymark_debug("resolve %s: no answer (%s)", name, strerror(-err));
        return waymark_config.s.fail_closed ? AGAIN : REAL;
    }
    switch (r->status) {
    case WM_RESOLVED:
        if (waymark_config.s.debug)
            waymark_debug("resolve %s: %u addresses from uplink %s", name, (unsigned)r->count,
                          r->uplink[0] != '\0' ? r->uplink : "(default)");
        return r->count > 0 ? RESOLVED : NO_NAME;
    case WM_NO_NAME: return NO_NAME;
    case WM_DNS_FAILED: return AGAIN;
    case WM_REFUSED:
        waymark_warn("%s refused: policy allows this program no uplink that reaches it", name);
        return REFUSED;
    default: return REAL; /* WM_NOT_OURS */
    }
}

static void free_keep_errno(struct addrinfo *ai)
{
    int saved = errno;
    freeaddrinfo(ai);
    errno = saved;
}

WAYMARK_EXPORT int getaddrinfo(const char *restrict node, const char *restrict service,
                               const struct addrinfo *restrict hints, struct addrinfo **restrict res)
{
    waymark_init();
    if (waymark_real.getaddrinfo == NULL) {
        errno = ENOSYS;
        return EAI_SYSTEM;
    }
    struct addrinfo h;
    if (hints != NULL) {
        h = *hints;
    } else {
        memset(&h, 0, sizeof h); /* what glibc assumes for hints == NULL */
        h.ai_family = AF_UNSPEC;
        h.ai_flags = AI_V4MAPPED | AI_ADDRCONFIG;
    }
    int saved = errno;
    struct wm_resolve_resp r;
    switch (ask(node, h.ai_family, h.ai_flags, &r)) {
    case REAL:
        errno = saved;
        return waymark_real.getaddrinfo(node, service, hints, res);
    case NO_NAME:
        errno = saved;
        return EAI_NONAME;
    case AGAIN:
        errno = saved;
        return EAI_AGAIN;
    case REFUSED:
        errno = saved;
        return EAI_FAIL;
    case RESOLVED:
        break;
    }
    bool canon = (h.ai_flags & AI_CANONNAME) != 0;
    h.ai_flags = (h.ai_flags | AI_NUMERICHOST) & ~(AI_CANONNAME | AI_CANONIDN);
    struct addrinfo *head = NULL, **tail = &head;
    int first_err = 0;
    for (unsigned i = 0; i < r.count; i++) {
        char text[INET6_ADDRSTRLEN];
        if (inet_ntop(r.addrs[i].family, r.addrs[i].addr, text, sizeof text) == NULL) continue;
        struct addrinfo *part = NULL;
        int e = waymark_real.getaddrinfo(text, service, &h, &part);
        if (e != 0) {
            if (first_err == 0) first_err = e;
            /* Errors about the service or the hints are the same for every address. */
            if (e == EAI_SERVICE || e == EAI_SOCKTYPE || e == EAI_BADFLAGS || e == EAI_MEMORY ||
                e == EAI_FAMILY) {
                free_keep_errno(head);
                return e;
            }
            continue; /* e.g. an IPv6 address for an AF_INET caller */
        }
        *tail = part;
        while (*tail != NULL) tail = &(*tail)->ai_next;
    }
    if (head == NULL) {
        errno = saved;
        return first_err == EAI_ADDRFAMILY || first_err == 0 ? EAI_NONAME : first_err;
    }
    if (canon && (head->ai_canonname = strdup(node)) == NULL) {
        free_keep_errno(head);
        return EAI_MEMORY;
    }
    *res = head;
    errno = saved;
    return 0;
}

/* The gethostbyname family: the addresses of `af` into the caller's buffer. */
static int fill_hostent(const char *name, int af, const struct wm_resolve_resp *r,
                        struct hostent *ret, char *buf, size_t buflen, struct hostent **result,
                        int *h_errnop)
{
    size_t alen = af == AF_INET ? 4 : 16;
    unsigned count = 0;
    for (unsigned i = 0; i < r->count; i++) count += r->addrs[i].family == af;
    if (count == 0) {
        *h_errnop = NO_DATA;
        return 0;
    }
    uintptr_t start = ((uintptr_t)buf + sizeof(char *) - 1) & ~(uintptr_t)(sizeof(char *) - 1);
    size_t pad = start - (uintptr_t)buf;
    size_t need = pad + sizeof(char *) * (1 + count + 1) + alen * count + strlen(name) + 1;
    if (need > buflen) {
        *h_errnop = NETDB_INTERNAL;
        return ERANGE;
    }
    char **aliases = (char **)start;
    char **list = aliases + 1;
    char *addrs = (char *)(list + count + 1);
    char *copy = addrs + alen * count;
    aliases[0] = NULL;
    unsigned n = 0;
    for (unsigned i = 0; i < r->count; i++) {
        if (r->addrs[i].family != af) continue;
        memcpy(addrs + alen * n, r->addrs[i].addr, alen);
        list[n] = addrs + alen * n;
        n++;
    }
    list[n] = NULL;
    strcpy(copy, name);
    ret->h_name = copy;
    ret->h_aliases = aliases;
    ret->h_addrtype = af;
    ret->h_length = (int)alen;
    ret->h_addr_list = list;
    *result = ret;
    return 0;
}

/* gethostbyname_r (af AF_INET, two_r false) and gethostbyname2_r. */
static int by_name_r(const char *name, int af, bool two_r, struct hostent *ret, char *buf,
                     size_t buflen, struct hostent **result, int *h_errnop)
{
    int saved = errno;
    struct wm_resolve_resp r;
    enum outcome o = af == AF_INET || af == AF_INET6 ? ask(name, af, 0, &r) : REAL;
    errno = saved;
    *result = NULL;
    switch (o) {
    case REAL:
        return two_r ? waymark_real.gethostbyname2_r(name, af, ret, buf, buflen, result, h_errnop)
                     : waymark_real.gethostbyname_r(name, ret, buf, buflen, result, h_errnop);
    case NO_NAME:
        *h_errnop = HOST_NOT_FOUND;
        return 0;
    case AGAIN:
        *h_errnop = TRY_AGAIN;
        return EAGAIN;
    case REFUSED:
        *h_errnop = NO_RECOVERY;
        return 0;
    default:
        return fill_hostent(name, af, &r, ret, buf, buflen, result, h_errnop);
    }
}

WAYMARK_EXPORT int gethostbyname2_r(const char *restrict name, int af,
                                    struct hostent *restrict ret, char *restrict buf,
                                    size_t buflen, struct hostent **restrict result,
                                    int *restrict h_errnop)
{
    waymark_init();
    if (waymark_real.gethostbyname2_r == NULL) return ENOSYS;
    return by_name_r(name, af, true, ret, buf, buflen, result, h_errnop);
}

WAYMARK_EXPORT int gethostbyname_r(const char *restrict name, struct hostent *restrict ret,
                                   char *restrict buf, size_t buflen,
                                   struct hostent **restrict result, int *restrict h_errnop)
{
    waymark_init();
    if (waymark_real.gethostbyname_r == NULL) return ENOSYS;
    return by_name_r(name, AF_INET, false, ret, buf, buflen, result, h_errnop);
}

/* The non-reentrant forms: a per-thread result (glibc's is per process). */
static __thread struct {
    struct hostent h;
    char buf[sizeof(char *) * (WM_MAX_ADDRS + 2) + 16 * WM_MAX_ADDRS + 256 + sizeof(char *)];
} tls_host;

static struct hostent *static_result(const char *name, int af, struct hostent *(*real)(const char *, int),
                                     struct hostent *(*real1)(const char *))
{
    int saved = errno;
    struct wm_resolve_resp r;
    enum outcome o = af == AF_INET || af == AF_INET6 ? ask(name, af, 0, &r) : REAL;
    errno = saved;
    if (o == REAL) return real != NULL ? real(name, af) : real1(name);
    if (o != RESOLVED) {
        h_errno = o == NO_NAME ? HOST_NOT_FOUND : o == REFUSED ? NO_RECOVERY : TRY_AGAIN;
        return NULL;
    }
    struct hostent *result = NULL;
    int herr = 0;
    fill_hostent(name, af, &r, &tls_host.h, tls_host.buf, sizeof tls_host.buf, &result, &herr);
    if (result == NULL) h_errno = herr;
    return result;
}

WAYMARK_EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
    waymark_init();
    if (waymark_real.gethostbyname2 == NULL) {
        h_errno = NO_RECOVERY;
        return NULL;
    }
    return static_result(name, af, waymark_real.gethostbyname2, NULL);
}

WAYMARK_EXPORT struct hostent *gethostbyname(const char *name)
{
    waymark_init();
    if (waymark_real.gethostbyname == NULL) {
        h_errno = NO_RECOVERY;
        return NULL;
    }
    return static_result(name, AF_INET, NULL, waymark_real.gethostbyname);
}
