/* mem.c — 64-byte aligned allocation, arenas and allocation-failure
 * injection.
 *
 * Every allocation in stipple goes through cm_alloc / cm_calloc /
 * cm_arena_create so that tests can make the Nth one fail
 * (cm_alloc_fail_at) and check that each failure path ends cleanly.
 */
#include "common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static long g_count;   /* allocations since the hook was armed */
static long g_fail_at; /* 0: disabled */
static int g_fallible_only; /* count only allocations with an error record */

void cm_alloc_fail_at(long n)
{
    g_fail_at = n > 0 ? n : 0;
    g_count = 0;
}

long cm_alloc_count(void) { return g_count; }

void cm_alloc_fail_fallible_only(int on) { g_fallible_only = on; }

static int injected_failure(const cm_error *err)
{
    if (g_fallible_only && !err) return 0;
    long c;
#pragma omp atomic capture
    c = ++g_count;
    return g_fail_at > 0 && c == g_fail_at;
}

int cm_mul_size(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

void *cm_alloc(size_t nbytes, const char *what, cm_error *err)
{
    if (injected_failure(err)) {
        cm_error_set(err, CM_ERR_NOMEM, "out of memory allocating %zu bytes for %s (injected)",
                     nbytes, what ? what : "buffer");
        return NULL;
    }
    size_t n = (nbytes + CM_ALIGN - 1) & ~(size_t)(CM_ALIGN - 1);
    if (n < nbytes) n = SIZE_MAX; /* overflow: let aligned_alloc fail */
    if (n == 0) n = CM_ALIGN;
    void *p = NULL;
    if (n != SIZE_MAX && posix_memalign(&p, CM_ALIGN, n) != 0) p = NULL;
    if (!p)
        cm_error_set(err, CM_ERR_NOMEM, "out of memory allocating %zu bytes for %s", nbytes,
                     what ? what : "buffer");
    return p;
}

void *cm_calloc(size_t nbytes, const char *what, cm_error *err)
{
    void *p = cm_alloc(nbytes, what, err);
    if (p) memset(p, 0, nbytes);
    return p;
}

void cm_free(void *p) { free(p); }

/* ----------------------------------------------------------------- arenas */

struct cm_arena {
    unsigned char *base;
    size_t cap, used;
};

cm_arena *cm_arena_create(size_t capacity, cm_error *err)
{
    cm_arena *a = cm_alloc(sizeof *a, "arena", err);
    if (!a) return NULL;
    a->base = cm_alloc(capacity, "arena block", err);
    if (!a->base) {
        cm_free(a);
        return NULL;
    }
    a->cap = capacity;
    a->used = 0;
    return a;
}

void *cm_arena_alloc(cm_arena *a, size_t nbytes, const char *what, cm_error *err)
{
    size_t n = (nbytes + CM_ALIGN - 1) & ~(size_t)(CM_ALIGN - 1);
    if (n < nbytes || n > a->cap - a->used) {
        cm_error_set(err, CM_ERR_NOMEM, "arena exhausted allocating %zu bytes for %s (%zu of %zu used)",
                     nbytes, what ? what : "buffer", a->used, a->cap);
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += n;
    return p;
}

size_t cm_arena_used(const cm_arena *a) { return a->used; }
void cm_arena_reset(cm_arena *a) { a->used = 0; }

void cm_arena_free(cm_arena *a)
{
    if (!a) return;
    cm_free(a->base);
    cm_free(a);
}

/* --------------------------------------------------------- kernel scratch */

#define SCRATCH_DEPTH 32

static struct {
    unsigned char *base;
    size_t cap, top;
    int depth;
    size_t mark[SCRATCH_DEPTH]; /* top before the block was taken */
    void *ptr[SCRATCH_DEPTH];
    unsigned char given[SCRATCH_DEPTH];
} g_scr;

static size_t page_round(size_t n)
{
    size_t r = (n + 4095) & ~(size_t)4095;
    return r < n ? SIZE_MAX : r;
}

cm_status cm_scratch_reserve(size_t nbytes, cm_error *err)
{
    size_t n = page_round(nbytes);
    if (n <= g_scr.cap || g_scr.depth) return CM_OK; /* big enough, or in use */
    if (injected_failure(err))
        return cm_error_set(err, CM_ERR_NOMEM, "out of memory reserving %zu bytes of kernel scratch (injected)",
                            nbytes);
    void *p = n == SIZE_MAX ? MAP_FAILED
                            : mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return cm_error_set(err, CM_ERR_NOMEM, "out of memory reserving %zu bytes of kernel scratch", nbytes);
    if (g_scr.base) munmap(g_scr.base, g_scr.cap);
    g_scr.base = p;
    g_scr.cap = n;
    g_scr.top = 0;
    return CM_OK;
}

size_t cm_scratch_reserved(void) { return g_scr.cap; }

static int in_region(const void *p)
{
    return g_scr.base && (const unsigned char *)p >= g_scr.base &&
           (const unsigned char *)p < g_scr.base + g_scr.cap;
}

void *cm_scratch_take(size_t nbytes, int zero, const char *what)
{
    size_t n = (nbytes + CM_ALIGN - 1) & ~(size_t)(CM_ALIGN - 1);
    if (n == 0) n = CM_ALIGN;
    int parallel = 0;
#ifdef _OPENMP
    parallel = omp_in_parallel();
#endif
    if (!parallel && n >= nbytes && g_scr.depth < SCRATCH_DEPTH && n <= g_scr.cap - g_scr.top) {
        int d = g_scr.depth++;
        void *p = g_scr.base + g_scr.top;
        g_scr.mark[d] = g_scr.top;
        g_scr.ptr[d] = p;
        g_scr.given[d] = 0;
        g_scr.top += n;
        if (zero) memset(p, 0, nbytes);
        return p;
    }
    /* Beyond the reservation: the heap, where failure cannot be reported
     * from inside a kernel. */
    void *p = zero ? cm_calloc(nbytes, what, NULL) : cm_alloc(nbytes, what, NULL);
    CM_ASSERT(p);
    return p;
}

void cm_scratch_give(void *p)
{
    if (!p) return;
    if (!in_region(p)) {
        cm_free(p);
        return;
    }
    int d = g_scr.depth - 1;
    while (d >= 0 && g_scr.ptr[d] != p) d--;
    CM_ASSERT(d >= 0);
    g_scr.given[d] = 1;
    /* blocks come back in any order; the region shrinks past given ones */
    while (g_scr.depth > 0 && g_scr.given[g_scr.depth - 1]) g_scr.top = g_scr.mark[--g_scr.depth];
}

void cm_scratch_trim(void)
{
    if (g_scr.base && !g_scr.depth) (void)madvise(g_scr.base, g_scr.cap, MADV_DONTNEED);
}

void cm_scratch_release(void)
{
    if (!g_scr.base || g_scr.depth) return;
    munmap(g_scr.base, g_scr.cap);
    memset(&g_scr, 0, sizeof g_scr);
}
