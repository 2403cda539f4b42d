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
