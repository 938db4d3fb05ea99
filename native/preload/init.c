/* libwaymark.so: once-only initialisation, configuration and messages.
 *
 * The library asks waymarkd, over decide.sock next to the control socket, how to route every
 * TCP connect() and every UDP datagram sent to an explicit address, and resolves names through
 * it (getaddrinfo, gethostbyname*). It is active whenever it is loaded (LD_PRELOAD, or
 * /etc/ld.so.preload for the whole system) unless WAYMARK_DISABLE=1; without a daemon it lets
 * everything through (WAYMARK_FAIL=open, the default) or refuses it (closed). The environment
 * variables are listed in ../client/proto.h.
 *
 * Configuration is read once and immutable afterwards, so it is read without locks. exec()
 * re-reads the environment, which carries LD_PRELOAD and WAYMARK_*: children stay steered. */
#include "common.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct waymark_config waymark_config;
struct waymark_real waymark_real;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* CAP_NET_RAW in the permitted set lets the process rebind a socket the program bound to a
 * device itself, so then the classifier looks (getsockopt) before binding. Without it, binding
 * an already bound socket fails with EPERM, which tells the same for free. A process cannot gain
 * the capability later without exec() (which loads us again), except inside a new user and
 * network namespace, where the daemon's interface names mean nothing anyway. */
static bool may_rebind(void)
{
    struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0) return true; /* cannot tell: be careful */
    unsigned word = CAP_NET_RAW / 32, bit = 1u << (CAP_NET_RAW % 32);
    return ((d[word].permitted | d[word].effective) & bit) != 0;
}

#define REAL(name) (waymark_real.name = (__typeof__(waymark_real.name))dlsym(RTLD_NEXT, #name))

static void do_init(void)
{
    int saved = errno;
    wm_settings_load(&waymark_config.s);

    /* Resolve every next definition up front: no lazy lookups (and no dlsym) inside hooks. */
    REAL(connect);
    REAL(sendto);
    REAL(sendmsg);
    REAL(sendmmsg);
    REAL(getaddrinfo);
    REAL(gethostbyname);
    REAL(gethostbyname2);
    REAL(gethostbyname_r);
    REAL(gethostbyname2_r);
    bool found = waymark_real.connect && waymark_real.sendto && waymark_real.sendmsg &&
                 waymark_real.sendmmsg && waymark_real.getaddrinfo && waymark_real.gethostbyname &&
                 waymark_real.gethostbyname2 && waymark_real.gethostbyname_r &&
                 waymark_real.gethostbyname2_r;
    wm_sys_connect = waymark_real.connect; /* the daemon socket skips our own hook */

    waymark_config.can_rebind = may_rebind();
    waymark_config.active = found && !waymark_config.s.disabled;
    if (waymark_config.active) {
        waymark_registry_init();
        waymark_daemon_init();
    }

    const struct wm_settings *s = &waymark_config.s;
    if (!found) waymark_debug("cannot resolve the real functions: %s", dlerror());
    if (s->notes[0] != '\0') waymark_debug("environment: %s", s->notes);
    waymark_debug("loaded: %s, daemon %s, fail %s, timeout %d ms (%d ms for a prompt), "
                  "uplink %s, needs 0x%x",
                  s->disabled ? "disabled" : waymark_config.active ? "active" : "inactive",
                  s->decide_path, s->fail_closed ? "closed" : "open", s->timeout_ms,
                  s->prompt_timeout_ms,
                  s->uplink[0] != '\0' ? s->uplink : "(any)", (unsigned)s->needs);
    errno = saved;
}

void waymark_init(void)
{
    pthread_once(&init_once, do_init);
}

/* Also before main(), so the hooks normally find everything ready. */
__attribute__((constructor)) static void waymark_constructor(void)
{
    waymark_init();
}

static void say(bool with_pid, const char *fmt, va_list ap)
{
    int saved = errno;
    char line[512];
    int n = with_pid ? snprintf(line, sizeof line, "waymark: [%d] ", (int)getpid())
                     : snprintf(line, sizeof line, "waymark: ");
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    /* write(2), not stdio: no locks, nothing buffered across fork(). */
    for (size_t off = 0; off < len;) {
        ssize_t w = write(STDERR_FILENO, line + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    errno = saved;
}

void waymark_debug(const char *fmt, ...)
{
    if (!waymark_config.s.debug) return;
    va_list ap;
    va_start(ap, fmt);
    say(true, fmt, ap);
    va_end(ap);
}

void waymark_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say(false, fmt, ap);
    va_end(ap);
}
