/* The registry: the library's only mutable shared state, behind its only lock.
 *
 * registry_lock (a plain pthread mutex) guards exactly:
 *   - the decision cache (table[]),
 *   - the mapping of the daemon's generation file (gen_map, gen_dev, gen_ino, gen_retry_ms),
 *   - the list of per-thread daemon connections (links).
 * It is held for a hash probe and a copy on the hot path (no system call), and around
 * open/fstat/mmap only when the generation file is (re)mapped, which happens at most once a
 * second while it is missing or after the daemon replaced it. No other lock exists, nothing is
 * called back while it is held, so it cannot be taken twice. fork(): the prepare handler takes
 * it, so the child gets a consistent registry, closes the inherited daemon connections of every
 * thread (they share the parent's streams) and starts with none.
 * Not async-signal-safe: a signal handler that calls connect() while its thread holds the lock
 * (a few hundred nanoseconds) would deadlock; such handlers exist in theory only.
 *
 * The cache: CACHE_SETS x CACHE_WAYS = 1024 entries, set-associative by a hash of (family,
 * proto, port, address): a new decision takes a free or expired way of its set, else evicts the
 * oldest entry of the set (four ways, so a few hot destinations never thrash). An entry is valid while the mapped
 * generation equals the entry's and CLOCK_MONOTONIC_COARSE has not passed its expiry. Without
 * a mapped generation nothing is cached: there would be no way to notice a policy change.
 * The daemon must keep the generation file (4096 bytes) in place: truncating a mapped file
 * would make our reads fault (SIGBUS). If it replaces the file (a restart), an answer whose
 * generation differs from the mapped one makes us compare inodes and map the new file. */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CACHE_SETS 256u /* power of two */
#define CACHE_WAYS 4u
#define GEN_RETRY_MS 1000

struct entry {
    struct waymark_key key;
    bool used;
    bool warned;
    uint8_t action;
    uint16_t err;
    uint32_t ifindex;
    uint32_t generation;
    int64_t expires_ms;
    int64_t stored_ms;
    char ifname[IFNAMSIZ];
    char uplink[32];
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct entry table[CACHE_SETS][CACHE_WAYS];
static const volatile uint32_t *gen_map;
static dev_t gen_dev;
static ino_t gen_ino;
static int64_t gen_retry_ms;
static struct waymark_link links = { .prev = &links, .next = &links };

static int64_t coarse_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static uint32_t set_of(const struct waymark_key *k)
{
    uint32_t w[5];
    memcpy(w, k, sizeof w);
    uint32_t h = 2166136261u;
    for (int i = 0; i < 5; i++) {
        h ^= w[i];
        h *= 16777619u;
        h ^= h >> 15;
    }
    return h & (CACHE_SETS - 1);
}
_Static_assert(sizeof(struct waymark_key) == 20, "key is five words");

static bool same_key(const struct waymark_key *a, const struct waymark_key *b)
{
    return memcmp(a, b, sizeof *a) == 0;
}

/* Maps the generation file if it is there (lock held). */
static void map_generation(void)
{
    int fd = open(waymark_config.s.generation_path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return;
    struct stat st;
    void *m = MAP_FAILED;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 4)
        m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) return;
    if (gen_map != NULL) munmap((void *)gen_map, 4096);
    __atomic_store_n(&gen_map, (const volatile uint32_t *)m, __ATOMIC_RELEASE);
    gen_dev = st.st_dev;
    gen_ino = st.st_ino;
    /* Entries of the old file say nothing about the new one. */
    memset(table, 0, sizeof table);
}

static uint32_t generation_now(void)
{
    return __atomic_load_n(gen_map, __ATOMIC_ACQUIRE);
}

/* The way of set `set` holding k (lock held), or NULL. */
static struct entry *find(uint32_t set, const struct waymark_key *k)
{
    for (unsigned w = 0; w < CACHE_WAYS; w++)
        if (table[set][w].used && same_key(&table[set][w].key, k)) return &table[set][w];
    return NULL;
}

bool waymark_cache_get(const struct waymark_key *k, struct waymark_answer *out)
{
    int64_t now = coarse_ms();
    uint32_t set = set_of(k);
    bool hit = false;
    pthread_mutex_lock(&registry_lock);
    struct entry *e = gen_map != NULL ? find(set, k) : NULL;
    if (e != NULL && e->generation == generation_now() && now < e->expires_ms) {
        out->action = e->action;
        out->err = e->err;
        out->ifindex = e->ifindex;
        out->generation = e->generation;
        out->ttl_ms = (uint32_t)(e->expires_ms - now);
        memcpy(out->ifname, e->ifname, sizeof out->ifname);
        memcpy(out->uplink, e->uplink, sizeof out->uplink);
        out->first_use = !e->warned;
        e->warned = true;
        hit = true;
    }
    pthread_mutex_unlock(&registry_lock);
    return hit;
}

void waymark_cache_put(const struct waymark_key *k, const struct waymark_answer *a)
{
    if (a->ttl_ms == 0 || a->generation == 0) return; /* 0: the daemon's "never cache" */
    int64_t now = coarse_ms();
    pthread_mutex_lock(&registry_lock);
    if (gen_map == NULL && now >= gen_retry_ms) {
        gen_retry_ms = now + GEN_RETRY_MS;
        map_generation();
    } else if (gen_map != NULL && a->generation != generation_now() && now >= gen_retry_ms) {
        /* Either the policy changed since the daemon answered (the entry is stale already), or
         * the daemon replaced the file (a restart): look, at most once a second. */
        gen_retry_ms = now + GEN_RETRY_MS;
        struct stat st;
        if (stat(waymark_config.s.generation_path, &st) == 0 &&
            (st.st_ino != gen_ino || st.st_dev != gen_dev))
            map_generation();
    }
    if (gen_map != NULL && a->generation == generation_now()) {
        uint32_t set = set_of(k);
        uint32_t gen = generation_now();
        struct entry *e = find(set, k);
        if (e == NULL) {
            struct entry *oldest = NULL;
            for (unsigned w = 0; w < CACHE_WAYS; w++) {
                struct entry *x = &table[set][w];
                if (!x->used || x->generation != gen || now >= x->expires_ms) {
                    e = x;
                    break;
                }
                if (oldest == NULL || x->stored_ms < oldest->stored_ms) oldest = x;
            }
            if (e == NULL) e = oldest;
        }
        e->key = *k;
        e->used = true;
        e->warned = true; /* the caller is about to use (and, for a refusal, say) it */
        e->action = a->action;
        e->err = a->err;
        e->ifindex = a->ifindex;
        e->generation = a->generation;
        uint32_t ttl = a->ttl_ms > 86400000u ? 86400000u : a->ttl_ms;
        e->expires_ms = now + ttl;
        e->stored_ms = now;
        memcpy(e->ifname, a->ifname, sizeof e->ifname);
        memcpy(e->uplink, a->uplink, sizeof e->uplink);
    }
    pthread_mutex_unlock(&registry_lock);
}

bool waymark_cache_usable(void)
{
    return __atomic_load_n(&gen_map, __ATOMIC_ACQUIRE) != NULL;
}

void waymark_cache_clear(void)
{
    pthread_mutex_lock(&registry_lock);
    memset(table, 0, sizeof table);
    pthread_mutex_unlock(&registry_lock);
}

void waymark_cache_drop(const struct waymark_key *k)
{
    pthread_mutex_lock(&registry_lock);
    struct entry *e = find(set_of(k), k);
    if (e != NULL) e->used = false;
    pthread_mutex_unlock(&registry_lock);
}

void waymark_registry_add(struct waymark_link *l)
{
    pthread_mutex_lock(&registry_lock);
    if (!l->listed) {
        l->next = &links;
        l->prev = links.prev;
        links.prev->next = l;
        links.prev = l;
        l->listed = true;
    }
    pthread_mutex_unlock(&registry_lock);
}

void waymark_registry_remove(struct waymark_link *l)
{
    pthread_mutex_lock(&registry_lock);
    if (l->listed) {
        l->prev->next = l->next;
        l->next->prev = l->prev;
        l->prev = l->next = NULL;
        l->listed = false;
    }
    pthread_mutex_unlock(&registry_lock);
}

static void before_fork(void)
{
    pthread_mutex_lock(&registry_lock);
}

static void after_fork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

/* In the child: every listed connection, the forking thread's included, is a copy of a stream
 * the parent still uses. Close them (after checking they are ours) and start afresh. The other
 * threads' link structures are gone with their threads, but their memory was copied. */
static void after_fork_child(void)
{
    struct waymark_link *l = links.next;
    while (l != &links) {
        struct waymark_link *next = l->next;
        /* pid: wm_conn_owned() would say "not ours" in the child; check the inode only. */
        if (l->conn.fd >= 0) {
            struct stat st;
            if (fstat(l->conn.fd, &st) == 0 && st.st_ino == l->conn.ino && st.st_dev == l->conn.dev)
                close(l->conn.fd);
        }
        wm_conn_forget(&l->conn);
        l->prev = l->next = NULL;
        l->listed = false;
        l = next;
    }
    links.next = links.prev = &links;
    pthread_mutex_unlock(&registry_lock);
}

void waymark_registry_init(void)
{
    pthread_mutex_lock(&registry_lock);
    map_generation(); /* if it is missing, the first decision to cache tries again */
    pthread_mutex_unlock(&registry_lock);
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
