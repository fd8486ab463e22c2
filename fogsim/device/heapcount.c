/*
 * heapcount.c -- an LD_PRELOAD heap counter: current and peak bytes in use.
 *
 * Build:  gcc -O2 -shared -fPIC -o libheapcount.so heapcount.c -ldl
 * Use:    LD_PRELOAD=/path/libheapcount.so PYTHONMALLOC=malloc python ...
 *         lib = ctypes.CDLL(None); lib.heapcount_current.restype = ctypes.c_long
 *
 * What it counts
 *   Every block obtained through malloc, calloc, realloc, reallocarray,
 *   posix_memalign, aligned_alloc, memalign, valloc and pvalloc adds its
 *   malloc_usable_size() (what the allocator really reserved for it, >= the
 *   request by at most ~24 B; glibc serves big blocks with mmap internally, and
 *   those still come through here); free/realloc subtract the usable size of the
 *   block they release. So `current` is the live heap bytes of the process since
 *   start-up and `peak` its maximum since the last heapcount_reset_peak().
 *
 *   Anonymous mmap/mmap64/mremap/munmap calls made by *other* libraries (glibc's
 *   own malloc calls mmap internally, not through the PLT, so those are not seen
 *   twice) are counted separately (heapcount_mmap_current/peak): this shows
 *   whether anything big bypasses malloc (e.g. pymalloc arenas, JIT code pages).
 *   The peak of the sum of both is heapcount_total_peak().
 *
 * Start-up: dlsym() may call calloc/malloc before the real functions are known;
 * those requests are served from a small static bootstrap buffer and never freed.
 *
 * Optional log: heapcount_set_log(fd, min_bytes) writes "A <bytes> <ptr>" and
 * "F <bytes> <ptr>" lines for blocks >= min_bytes to fd (fd < 0: off), with an
 * async-signal-safe formatter (no stdio, no allocation).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef void *(*malloc_t)(size_t);
typedef void (*free_t)(void *);
typedef void *(*calloc_t)(size_t, size_t);
typedef void *(*realloc_t)(void *, size_t);
typedef void *(*reallocarray_t)(void *, size_t, size_t);
typedef int (*posix_memalign_t)(void **, size_t, size_t);
typedef void *(*aligned_alloc_t)(size_t, size_t);
typedef void *(*memalign_t)(size_t, size_t);
typedef void *(*valloc_t)(size_t);
typedef void *(*mmap_t)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_t)(void *, size_t);
typedef void *(*mremap_t)(void *, size_t, size_t, int, ...);

static malloc_t real_malloc;
static free_t real_free;
static calloc_t real_calloc;
static realloc_t real_realloc;
static reallocarray_t real_reallocarray;
static posix_memalign_t real_posix_memalign;
static aligned_alloc_t real_aligned_alloc;
static memalign_t real_memalign;
static valloc_t real_valloc;
static valloc_t real_pvalloc;
static mmap_t real_mmap;
static mmap_t real_mmap64;
static munmap_t real_munmap;
static mremap_t real_mremap;

static long g_current, g_peak, g_calls;
static long g_mmap_current, g_mmap_peak, g_total_peak;
static int g_log_fd = -1;
static long g_log_min = 1L << 62;

/* ---- bootstrap buffer for allocations during dlsym ------------------------ */
static char boot_buf[1 << 16] __attribute__((aligned(64)));
static size_t boot_used;
static int resolving;

static int in_boot(const void *p) {
    return (const char *)p >= boot_buf && (const char *)p < boot_buf + sizeof boot_buf;
}

static void *boot_alloc(size_t n) {
    size_t off = __atomic_fetch_add(&boot_used, (n + 63) & ~(size_t)63, __ATOMIC_RELAXED);
    if (off + n > sizeof boot_buf) return NULL;
    return boot_buf + off; /* static storage: already zeroed */
}

static void resolve(void) {
    if (real_malloc) return;
    resolving = 1;
    real_calloc = (calloc_t)dlsym(RTLD_NEXT, "calloc");
    real_free = (free_t)dlsym(RTLD_NEXT, "free");
    real_realloc = (realloc_t)dlsym(RTLD_NEXT, "realloc");
    real_reallocarray = (reallocarray_t)dlsym(RTLD_NEXT, "reallocarray");
    real_posix_memalign = (posix_memalign_t)dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (aligned_alloc_t)dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (memalign_t)dlsym(RTLD_NEXT, "memalign");
    real_valloc = (valloc_t)dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = (valloc_t)dlsym(RTLD_NEXT, "pvalloc");
    real_mmap = (mmap_t)dlsym(RTLD_NEXT, "mmap");
    real_mmap64 = (mmap_t)dlsym(RTLD_NEXT, "mmap64");
    real_munmap = (munmap_t)dlsym(RTLD_NEXT, "munmap");
    real_mremap = (mremap_t)dlsym(RTLD_NEXT, "mremap");
    malloc_t m = (malloc_t)dlsym(RTLD_NEXT, "malloc");
    resolving = 0;
    __atomic_store_n(&real_malloc, m, __ATOMIC_RELEASE);
}

/* ---- counters ------------------------------------------------------------- */
static void bump_peak(long *peak, long v) {
    long p = __atomic_load_n(peak, __ATOMIC_RELAXED);
    while (v > p && !__atomic_compare_exchange_n(peak, &p, v, 1, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED)) {
    }
}

static void log_line(char tag, long n, const void *p) {
    char buf[64];
    char *e = buf + sizeof buf, *s = e;
    *--s = '\n';
    uintptr_t u = (uintptr_t)p;
    do { *--s = "0123456789abcdef"[u & 15]; u >>= 4; } while (u);
    *--s = 'x'; *--s = '0'; *--s = ' ';
    unsigned long v = (unsigned long)n;
    do { *--s = (char)('0' + v % 10); v /= 10; } while (v);
    *--s = ' '; *--s = tag;
    ssize_t r = write(g_log_fd, s, (size_t)(e - s));
    (void)r;
}

static void add(void *p) {
    if (!p) return;
    long n = (long)malloc_usable_size(p);
    long cur = __atomic_add_fetch(&g_current, n, __ATOMIC_RELAXED) ;
    __atomic_add_fetch(&g_calls, 1, __ATOMIC_RELAXED);
    bump_peak(&g_peak, cur);
    bump_peak(&g_total_peak, cur + __atomic_load_n(&g_mmap_current, __ATOMIC_RELAXED));
    if (g_log_fd >= 0 && n >= g_log_min) log_line('A', n, p);
}

static void sub(void *p) {
    if (!p) return;
    long n = (long)malloc_usable_size(p);
    __atomic_sub_fetch(&g_current, n, __ATOMIC_RELAXED);
    if (g_log_fd >= 0 && n >= g_log_min) log_line('F', n, p);
}

/* ---- the malloc family ---------------------------------------------------- */
void *malloc(size_t n) {
    if (!real_malloc) {
        if (resolving) return boot_alloc(n);
        resolve();
    }
    void *p = real_malloc(n);
    add(p);
    return p;
}

void *calloc(size_t a, size_t b) {
    if (!real_malloc) {
        if (resolving) return boot_alloc(a * b);
        resolve();
    }
    void *p = real_calloc(a, b);
    add(p);
    return p;
}

void free(void *p) {
    if (!p || in_boot(p)) return;
    if (!real_malloc) resolve();
    sub(p);
    real_free(p);
}

void *realloc(void *old, size_t n) {
    if (!real_malloc) {
        if (resolving) return boot_alloc(n);
        resolve();
    }
    if (in_boot(old)) { /* move a bootstrap block to the real heap */
        void *p = malloc(n);
        size_t room = (size_t)(boot_buf + sizeof boot_buf - (char *)old);
        if (p && old) memcpy(p, old, n < room ? n : room);
        return p;
    }
    long before = old ? (long)malloc_usable_size(old) : 0;
    void *p = real_realloc(old, n);
    if (!p) { /* failure keeps old; glibc's realloc(old, 0) frees old */
        if (n == 0 && old) __atomic_sub_fetch(&g_current, before, __ATOMIC_RELAXED);
        return p;
    }
    long after = (long)malloc_usable_size(p);
    long cur = __atomic_add_fetch(&g_current, after - before, __ATOMIC_RELAXED);
    bump_peak(&g_peak, cur);
    bump_peak(&g_total_peak, cur + __atomic_load_n(&g_mmap_current, __ATOMIC_RELAXED));
    if (g_log_fd >= 0 && after >= g_log_min) log_line('R', after, p);
    return p;
}

void *reallocarray(void *old, size_t a, size_t b) {
    size_t n;
    if (__builtin_mul_overflow(a, b, &n)) { errno = ENOMEM; return NULL; }
    return realloc(old, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
    if (!real_malloc) resolve();
    int r = real_posix_memalign(out, align, n);
    if (r == 0) add(*out);
    return r;
}

void *aligned_alloc(size_t align, size_t n) {
    if (!real_malloc) resolve();
    void *p = real_aligned_alloc(align, n);
    add(p);
    return p;
}

void *memalign(size_t align, size_t n) {
    if (!real_malloc) resolve();
    void *p = real_memalign(align, n);
    add(p);
    return p;
}

void *valloc(size_t n) {
    if (!real_malloc) resolve();
    void *p = real_valloc(n);
    add(p);
    return p;
}

void *pvalloc(size_t n) {
    if (!real_malloc) resolve();
    void *p = real_pvalloc(n);
    add(p);
    return p;
}

/* ---- anonymous mmap by other libraries ------------------------------------ */
#define MAP_SLOTS 8192
static struct { uintptr_t addr; size_t len; } maps[MAP_SLOTS];
static int map_lock;

static void lock(void) { while (__atomic_exchange_n(&map_lock, 1, __ATOMIC_ACQUIRE)) {} }
static void unlock(void) { __atomic_store_n(&map_lock, 0, __ATOMIC_RELEASE); }

static void map_add(void *p, size_t len) {
    lock();
    for (int i = 0; i < MAP_SLOTS; i++)
        if (!maps[i].addr) { maps[i].addr = (uintptr_t)p; maps[i].len = len; break; }
    unlock();
    long cur = __atomic_add_fetch(&g_mmap_current, (long)len, __ATOMIC_RELAXED);
    bump_peak(&g_mmap_peak, cur);
    bump_peak(&g_total_peak, cur + __atomic_load_n(&g_current, __ATOMIC_RELAXED));
    if (g_log_fd >= 0 && (long)len >= g_log_min) log_line('M', (long)len, p);
}

/* Forget [p, p+len) of tracked mappings (whole or partial unmaps). */
static void map_sub(void *p, size_t len) {
    uintptr_t a = (uintptr_t)p, b = a + len;
    long gone = 0;
    lock();
    for (int i = 0; i < MAP_SLOTS; i++) {
        uintptr_t s = maps[i].addr, e = s + maps[i].len;
        if (!s || e <= a || s >= b) continue;
        if (a <= s && b >= e) { gone += (long)maps[i].len; maps[i].addr = 0; continue; }
        /* partial: keep the larger remaining piece (rare; trimming of over-aligned maps) */
        uintptr_t lo = s < a ? a : s, hi = e > b ? b : e;
        gone += (long)(hi - lo);
        if (lo == s) { maps[i].addr = hi; maps[i].len = e - hi; }
        else { maps[i].len = lo - s; }
    }
    unlock();
    __atomic_sub_fetch(&g_mmap_current, gone, __ATOMIC_RELAXED);
    if (g_log_fd >= 0 && gone >= g_log_min) log_line('U', gone, p);
}

static void *do_mmap(mmap_t fn, void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = fn(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED && (flags & MAP_ANONYMOUS)) {
        if (flags & MAP_FIXED) map_sub(p, len);
        map_add(p, len);
    }
    return p;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (!real_mmap) resolve();
    return do_mmap(real_mmap, addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (!real_mmap64) resolve();
    return do_mmap(real_mmap64, addr, len, prot, flags, fd, off);
}

int munmap(void *addr, size_t len) {
    if (!real_munmap) resolve();
    int r = real_munmap(addr, len);
    if (r == 0) map_sub(addr, len);
    return r;
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...) {
    if (!real_mremap) resolve();
    void *new_addr = NULL;
    if (flags & MREMAP_FIXED) {
        __builtin_va_list ap;
        __builtin_va_start(ap, flags);
        new_addr = __builtin_va_arg(ap, void *);
        __builtin_va_end(ap);
    }
    void *p = real_mremap(old, old_len, new_len, flags, new_addr);
    if (p != MAP_FAILED) {
        int tracked = 0;
        lock();
        for (int i = 0; i < MAP_SLOTS; i++)
            if (maps[i].addr == (uintptr_t)old) { tracked = 1; break; }
        unlock();
        if (tracked) { map_sub(old, old_len); map_add(p, new_len); }
    }
    return p;
}

/* ---- the API for ctypes ----------------------------------------------------- */
long heapcount_current(void) { return __atomic_load_n(&g_current, __ATOMIC_RELAXED); }
long heapcount_peak(void) { return __atomic_load_n(&g_peak, __ATOMIC_RELAXED); }
long heapcount_calls(void) { return __atomic_load_n(&g_calls, __ATOMIC_RELAXED); }
long heapcount_mmap_current(void) { return __atomic_load_n(&g_mmap_current, __ATOMIC_RELAXED); }
long heapcount_mmap_peak(void) { return __atomic_load_n(&g_mmap_peak, __ATOMIC_RELAXED); }
long heapcount_total_peak(void) { return __atomic_load_n(&g_total_peak, __ATOMIC_RELAXED); }

void heapcount_reset_peak(void) {
    long cur = __atomic_load_n(&g_current, __ATOMIC_RELAXED);
    long mcur = __atomic_load_n(&g_mmap_current, __ATOMIC_RELAXED);
    __atomic_store_n(&g_peak, cur, __ATOMIC_RELAXED);
    __atomic_store_n(&g_mmap_peak, mcur, __ATOMIC_RELAXED);
    __atomic_store_n(&g_total_peak, cur + mcur, __ATOMIC_RELAXED);
}

void heapcount_set_log(int fd, long min_bytes) {
    g_log_min = min_bytes;
    g_log_fd = fd;
}
