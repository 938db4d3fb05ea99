/* connect_bench: the cost of a TCP connect as a program sees it.
 *
 *   connect_bench HOST PORT N [--unique-ports BASE] [--warmup K]
 *
 * N times: socket() + connect() (blocking) + close() to HOST:PORT, each timed with
 * CLOCK_MONOTONIC from before socket() to after close(). Prints one JSON line:
 *   {"host":"10.0.0.2","port":80,"n":1000,"unique_ports":null,"warmup":0,"ok":1000,"refused":0,
 *    "failed":0,"errors":{},"mean_us":31.2,"p50_us":29.8,"p90_us":35.1,"p99_us":52.3,
 *    "min_us":25.0,"max_us":120.4}
 * Run the same command bare and under LD_PRELOAD=libwaymark.so to compare.
 *
 *   connect_bench --serve ADDR PORT     the listener to measure against (accept + close)
 *
 * HOST is a numeric IPv4 or IPv6 address (no resolver in the measured path).
 * --unique-ports BASE   connect i goes to port BASE+i, so under libwaymark.so each one needs a
 *                       decision of its own (the cache is per address and port): the cost of a
 *                       first decision. Without listeners there the connects are refused (the
 *                       peer answers RST): that is fine as long as the bare run is made the same
 *                       way; "refused" counts them and they are timed like the others.
 * --warmup K            K untimed connects first, made like the measured ones: to PORT (under
 *                       libwaymark.so: the daemon connection is made and PORT's decision
 *                       cached), or with --unique-ports to the K ports below BASE (each one a
 *                       decision: the daemon's decision path is warm, as in a daemon that has
 *                       been running a while, and the measured ports stay undecided).
 *
 * TIME_WAIT: every socket gets SO_LINGER {on, 0 s} right after socket(), so close() sends a RST
 * and leaves no TIME_WAIT socket behind: tens of thousands of connects in a row would otherwise
 * exhaust the ephemeral ports or slow the port search, and the tail would measure that. The
 * setsockopt is inside the timed interval in every mode, so comparisons stay fair. The listener
 * must accept (and may close) its connections, or its backlog fills up and connects stall. */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, long n, double p)
{
    long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return sorted[i];
}

static int usage(void)
{
    fprintf(stderr, "usage: connect_bench HOST PORT N [--unique-ports BASE] [--warmup K]\n");
    return 2;
}

static long number(const char *s, long min, long max)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < min || v > max) return -1;
    return v;
}

/* One socket + connect + close; returns 0 or the connect's errno. */
static int one(const struct sockaddr_storage *base, socklen_t len, int port)
{
    struct sockaddr_storage sa = *base;
    if (sa.ss_family == AF_INET) ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)port);
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    struct linger lg = { .l_onoff = 1, .l_linger = 0 };
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    int err = 0;
    while (connect(fd, (struct sockaddr *)&sa, len) != 0) {
        if (errno == EINTR) continue;
        err = errno;
        break;
    }
    close(fd);
    return err;
}

/* --serve ADDR PORT: the benchmark's listener. Accepts and closes as fast as it can, with a deep
 * backlog, so that neither a full accept queue (a dropped SYN costs a 1 s retransmit) nor a slow
 * server shows up in the client's numbers. Runs until killed. */
static int serve(const char *addr, const char *port)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST | AI_PASSIVE }, *ai = NULL;
    if (getaddrinfo(addr, port, &hints, &ai) != 0) return usage();
    int s = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one_ = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one_, sizeof one_);
    if (s < 0 || bind(s, ai->ai_addr, ai->ai_addrlen) < 0 || listen(s, 4096) < 0) {
        perror("connect_bench --serve");
        return 1;
    }
    freeaddrinfo(ai);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) close(c);
    }
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--serve") == 0) return serve(argv[2], argv[3]);
    if (argc < 4) return usage();
    const char *host = argv[1];
    long port = number(argv[2], 1, 65535), n = number(argv[3], 1, 100000000), base = -1, warmup = 0;
    if (port < 0 || n < 0) return usage();
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--unique-ports") == 0 && i + 1 < argc) {
            if ((base = number(argv[++i], 1, 65535)) < 0) return usage();
        } else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) {
            if ((warmup = number(argv[++i], 0, 100000000)) < 0) return usage();
        } else {
            return usage();
        }
    }
    if (base >= 0 && base + n - 1 > 65535) {
        fprintf(stderr, "connect_bench: --unique-ports %ld with N=%ld goes past port 65535\n", base, n);
        return 2;
    }
    if (base >= 0 && base - warmup < 1) {
        fprintf(stderr, "connect_bench: --warmup %ld needs --unique-ports above %ld\n", warmup, warmup);
        return 2;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST }, *ai = NULL;
    int e = getaddrinfo(host, NULL, &hints, &ai);
    if (e != 0) {
        fprintf(stderr, "connect_bench: %s: %s (a numeric address is needed)\n", host, gai_strerror(e));
        return 2;
    }
    struct sockaddr_storage sa;
    socklen_t len = ai->ai_addrlen;
    memcpy(&sa, ai->ai_addr, len);
    freeaddrinfo(ai);

    for (long i = 0; i < warmup; i++) one(&sa, len, base >= 0 ? (int)(base - warmup + i) : (int)port);

    double *us = malloc(sizeof *us * (size_t)n);
    if (us == NULL) return 1;
    long ok = 0, refused = 0;
    int errs[4096] = { 0 };
    for (long i = 0; i < n; i++) {
        int p = base >= 0 ? (int)(base + i) : (int)port;
        double t0 = now_us();
        int err = one(&sa, len, p);
        us[i] = now_us() - t0;
        if (err == 0) ok++;
        else if (err == ECONNREFUSED) refused++;
        else if (err > 0 && err < 4096) errs[err]++;
    }
    double sum = 0;
    for (long i = 0; i < n; i++) sum += us[i];
    qsort(us, (size_t)n, sizeof *us, cmp);

    printf("{\"host\":\"%s\",\"port\":%ld,\"n\":%ld,", host, port, n);
    if (base >= 0) printf("\"unique_ports\":%ld,", base);
    else printf("\"unique_ports\":null,");
    printf("\"warmup\":%ld,\"ok\":%ld,\"refused\":%ld,\"failed\":%ld,\"errors\":{", warmup, ok,
           refused, n - ok - refused);
    const char *sep = "";
    for (int i = 1; i < 4096; i++) {
        if (errs[i] == 0) continue;
        const char *name = strerrorname_np(i);
        printf("%s\"%s\":%d", sep, name != NULL ? name : "?", errs[i]);
        sep = ",";
    }
    printf("},\"mean_us\":%.2f,\"p50_us\":%.2f,\"p90_us\":%.2f,\"p99_us\":%.2f,\"min_us\":%.2f,"
           "\"max_us\":%.2f}\n",
           sum / (double)n, pct(us, n, 50), pct(us, n, 90), pct(us, n, 99), us[0], us[n - 1]);
    free(us);
    return 0;
}
