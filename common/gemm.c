/* gemm.c — the one GEMM engine behind linear, convolution (implicit GEMM)
 * and plain float32 GEMM: B packed once per call into NR-column panels
 * (weights converted from their stored dtype while packing), A gathered
 * and packed per (row block, k block) into MR-row panels, a
 * register-blocked microkernel, and a fused epilogue (bias, activation,
 * residual) written through row callbacks.
 *
 * Mirrors the BLIS/GotoBLAS loop structure (Goto & van de Geijn, "Anatomy
 * of high-performance matrix multiplication", 2008), with the im2col
 * replaced by a per-tap row gather (see simd.h for the job description).
 *
 * Microkernels: AVX-512 12x32, AVX2+FMA 6x16, portable C 4x16 (omp simd).
 * Chosen at run time from cpuid (__builtin_cpu_supports), so the default
 * build uses the best the CPU has without -march=native.
 *
 * Determinism: each C element is one multiply-add chain over k = 0..K-1
 * computed on one thread, whatever the blocking or thread count.
 */
#include "simd.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(STIPPLE_PLAIN_C)
#define CM_HAVE_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define CM_HAVE_X86 0
#endif

/* ------------------------------------------------------------------------
 * Microkernels
 * ---------------------------------------------------------------------- */

#define PMR 4
#define PNR 16
static void ukr_portable(int64_t kc, const float *restrict a, const float *restrict b,
                         float *restrict c, int64_t ldc, int accumulate)
{
    float acc[PMR][PNR];
    for (int r = 0; r < PMR; r++)
        for (int j = 0; j < PNR; j++) acc[r][j] = accumulate ? c[r * ldc + j] : 0.0f;
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = b + k * PNR;
        for (int r = 0; r < PMR; r++) {
            float av = a[k * PMR + r];
#pragma omp simd
            for (int j = 0; j < PNR; j++) acc[r][j] += av * bk[j];
        }
    }
    for (int r = 0; r < PMR; r++)
        for (int j = 0; j < PNR; j++) c[r * ldc + j] = acc[r][j];
}

static void ukr_rows_portable(int64_t kc, const float *const *a, const float *restrict b,
                              float *restrict c, int64_t ldc, int accumulate)
{
    float acc[PMR][PNR];
    for (int r = 0; r < PMR; r++)
        for (int j = 0; j < PNR; j++) acc[r][j] = accumulate ? c[r * ldc + j] : 0.0f;
    for (int64_t k = 0; k < kc; k++) {
        const float *bk = b + k * PNR;
        for (int r = 0; r < PMR; r++) {
            float av = a[r][k];
#pragma omp simd
            for (int j = 0; j < PNR; j++) acc[r][j] += av * bk[j];
        }
    }
    for (int r = 0; r < PMR; r++)
        for (int j = 0; j < PNR; j++) c[r * ldc + j] = acc[r][j];
}

#if CM_HAVE_X86
/* One row of the AVX2 6x16 tile: broadcast a[r], two FMAs. */
#define A2_ROW(r)                                                            \
    do {                                                                     \
        __m256 av = _mm256_broadcast_ss(a + (r));                            \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                          \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                          \
    } while (0)
#define A2_LOAD(r)                                                           \
    do {                                                                     \
        c##r##0 = accumulate ? _mm256_loadu_ps(c + (r) * ldc) : _mm256_setzero_ps(); \
        c##r##1 = accumulate ? _mm256_loadu_ps(c + (r) * ldc + 8) : _mm256_setzero_ps(); \
    } while (0)
#define A2_STORE(r)                                                          \
    do {                                                                     \
        _mm256_storeu_ps(c + (r) * ldc, c##r##0);                            \
        _mm256_storeu_ps(c + (r) * ldc + 8, c##r##1);                        \
    } while (0)

__attribute__((target("avx2,fma"))) static void
ukr_avx2(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int accumulate)
{
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    A2_LOAD(0); A2_LOAD(1); A2_LOAD(2); A2_LOAD(3); A2_LOAD(4); A2_LOAD(5);
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        A2_ROW(0); A2_ROW(1); A2_ROW(2); A2_ROW(3); A2_ROW(4); A2_ROW(5);
        a += 6;
        b += 16;
    }
    A2_STORE(0); A2_STORE(1); A2_STORE(2); A2_STORE(3); A2_STORE(4); A2_STORE(5);
}

/* Indirection variant: row r of A at ar[r] + k. */
#define A2R_ROW(r)                                                           \
    do {                                                                     \
        __m256 av = _mm256_broadcast_ss(a##r + k);                           \
        c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                          \
        c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);                          \
    } while (0)

__attribute__((target("avx2,fma"))) static void
ukr_rows_avx2(int64_t kc, const float *const *ar, const float *b, float *c, int64_t ldc,
              int accumulate)
{
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    const float *a0 = ar[0], *a1 = ar[1], *a2 = ar[2], *a3 = ar[3], *a4 = ar[4], *a5 = ar[5];
    A2_LOAD(0); A2_LOAD(1); A2_LOAD(2); A2_LOAD(3); A2_LOAD(4); A2_LOAD(5);
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        A2R_ROW(0); A2R_ROW(1); A2R_ROW(2); A2R_ROW(3); A2R_ROW(4); A2R_ROW(5);
        b += 16;
    }
    A2_STORE(0); A2_STORE(1); A2_STORE(2); A2_STORE(3); A2_STORE(4); A2_STORE(5);
}

#define A5_ROW(r)                                                            \
    do {                                                                     \
        __m512 av = _mm512_set1_ps(a[r]);                                    \
        c##r##_0 = _mm512_fmadd_ps(av, b0, c##r##_0);                        \
        c##r##_1 = _mm512_fmadd_ps(av, b1, c##r##_1);                        \
    } while (0)
#define A5_LOAD(r)                                                           \
    do {                                                                     \
        c##r##_0 = accumulate ? _mm512_loadu_ps(c + (r) * ldc) : _mm512_setzero_ps(); \
        c##r##_1 = accumulate ? _mm512_loadu_ps(c + (r) * ldc + 16) : _mm512_setzero_ps(); \
    } while (0)
#define A5_STORE(r)                                                          \
    do {                                                                     \
        _mm512_storeu_ps(c + (r) * ldc, c##r##_0);                           \
        _mm512_storeu_ps(c + (r) * ldc + 16, c##r##_1);                      \
    } while (0)
#define A5_ALL(M) M(0); M(1); M(2); M(3); M(4); M(5); M(6); M(7); M(8); M(9); M(10); M(11)

__attribute__((target("avx512f,fma"))) static void
ukr_avx512(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int accumulate)
{
    __m512 c0_0, c0_1, c1_0, c1_1, c2_0, c2_1, c3_0, c3_1, c4_0, c4_1, c5_0, c5_1;
    __m512 c6_0, c6_1, c7_0, c7_1, c8_0, c8_1, c9_0, c9_1, c10_0, c10_1, c11_0, c11_1;
    A5_ALL(A5_LOAD);
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        A5_ALL(A5_ROW);
        a += 12;
        b += 32;
    }
    A5_ALL(A5_STORE);
}

/* --precision bf16 (AVX512_BF16): the same 12x32 tile with vdpbf16ps.
 * a: kc/2 groups of 12 uint32, each a pair of bf16 (k even in the low
 * half); b: kc/2 rows of 32 pairs (64 bf16: column n's k and k+1). Each
 * step adds a[k]*b[k] + a[k+1]*b[k+1] (exact products) to the float32
 * accumulators. */
#define B5_ROW(r)                                                            \
    do {                                                                     \
        __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r]);                \
        c##r##_0 = _mm512_dpbf16_ps(c##r##_0, av, b0);                       \
        c##r##_1 = _mm512_dpbf16_ps(c##r##_1, av, b1);                       \
    } while (0)

__attribute__((target("avx512f,avx512bf16"))) static void
ukr_bf16(int64_t kc, const uint32_t *a, const uint16_t *b, float *c, int64_t ldc, int accumulate)
{
    __m512 c0_0, c0_1, c1_0, c1_1, c2_0, c2_1, c3_0, c3_1, c4_0, c4_1, c5_0, c5_1;
    __m512 c6_0, c6_1, c7_0, c7_1, c8_0, c8_1, c9_0, c9_1, c10_0, c10_1, c11_0, c11_1;
    A5_ALL(A5_LOAD);
    for (int64_t k = 0; k < kc; k += 2) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 32);
        A5_ALL(B5_ROW);
        a += 12;
        b += 64;
    }
    A5_ALL(A5_STORE);
}

/* Rows [m0, m0+mc) of A, input channels [c0, c0+kc) of tap t, as bf16
 * pairs in the tile layout of ukr_bf16 (kc even; rounding to nearest even). */
__attribute__((target("avx512f,avx512bf16"))) static void
pack_a_bf16(const cm_gemm_job *jb, int mr, int64_t m0, int64_t mc, int t, int64_t c0, int64_t kc,
            uint32_t *dst)
{
    int64_t tiles = (mc + mr - 1) / mr, kp_n = kc / 2;
    uint32_t tmp[16] __attribute__((aligned(64)));
    for (int64_t i = 0; i < tiles; i++) {
        uint32_t *d = dst + i * mr * kp_n;
        for (int r = 0; r < mr; r++) {
            int64_t m = i * mr + r;
            const float *src = m < mc ? jb->arow(jb, m0 + m, t) : NULL;
            int64_t kp = 0;
            if (!src) {
                for (; kp < kp_n; kp++) d[kp * mr + r] = 0;
                continue;
            }
            src += c0;
            for (; kp + 16 <= kp_n; kp += 16) {
                __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 2 * kp + 16),
                                                 _mm512_loadu_ps(src + 2 * kp));
                _mm512_store_si512(tmp, (__m512i)v);
                for (int j = 0; j < 16; j++) d[(kp + j) * mr + r] = tmp[j];
            }
            for (; kp < kp_n; kp++)
                d[kp * mr + r] = (uint32_t)cm_f32_to_bf16(src[2 * kp]) |
                                 (uint32_t)cm_f32_to_bf16(src[2 * kp + 1]) << 16;
        }
    }
}
#endif

/* One float32 B panel (K rows of nr = 32) as bf16 pairs: row pair kp
 * holds column n's rows 2kp and 2kp+1 side by side (K even), rounded to
 * nearest even like pack_a_bf16. Runs for every uncached layer call. */
#if CM_HAVE_X86
__attribute__((target("avx512f,avx512bf16"))) static void
panel_to_bf16(const float *src, int nr, int64_t K, uint16_t *dst)
{
    for (int64_t kp = 0; kp < K / 2; kp++) {
        const float *r0 = src + (2 * kp) * nr, *r1 = r0 + nr;
        uint16_t *d = dst + kp * nr * 2;
        for (int n = 0; n < nr; n += 16) {
            __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0 + n)));
            __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1 + n)));
            _mm512_storeu_si512(d + 2 * n, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}
#endif

int cm_bf16_supported(void)
{
#if CM_HAVE_X86
    static int have = -1;
    if (have < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0;
        /* CPUID.(7,1):EAX bit 5 = AVX512_BF16 (the compilers' cpu_supports
         * names for it differ between gcc and clang) */
        have = cm_isa_supported("avx512") && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 5 & 1);
    }
    return have;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------------
 * Dispatch
 * ---------------------------------------------------------------------- */

double cm_par_min_work = CM_PAR_MIN_WORK;

int cm_pack_a_forced(void)
{
    static int env = -1;
    if (env < 0) env = getenv("STIPPLE_GEMM_PACK_A") != NULL;
    return env;
}

static const cm_isa isa_portable = {"portable", PMR, PNR, ukr_portable, ukr_rows_portable};
#if CM_HAVE_X86
static const cm_isa isa_avx2 = {"avx2", 6, 16, ukr_avx2, ukr_rows_avx2};
/* No indirection kernel: this machine cannot run AVX-512, so that path
 * stays the packed-A one it was written and reviewed with. */
static const cm_isa isa_avx512 = {"avx512", 12, 32, ukr_avx512, NULL};
#endif

int cm_isa_supported(const char *name)
{
    if (!strcmp(name, "portable")) return 1;
#if CM_HAVE_X86
    __builtin_cpu_init();
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
    return 0;
}

static const cm_isa *isa_by_name(const char *name)
{
    if (!cm_isa_supported(name)) return NULL;
    if (!strcmp(name, "portable")) return &isa_portable;
#if CM_HAVE_X86
    if (!strcmp(name, "avx2")) return &isa_avx2;
    if (!strcmp(name, "avx512")) return &isa_avx512;
#endif
    return NULL;
}

static const cm_isa *g_forced;

static const cm_isa *isa_auto(void)
{
    static const cm_isa *chosen;
    if (chosen) return chosen;
    const cm_isa *best = &isa_portable;
#if CM_HAVE_X86
    if (cm_isa_supported("avx512"))
        best = &isa_avx512;
    else if (cm_isa_supported("avx2"))
        best = &isa_avx2;
#endif
    const char *env = getenv("STIPPLE_ISA");
    if (env && *env) {
        const cm_isa *e = isa_by_name(env);
        if (e) best = e;
    }
    chosen = best;
    return chosen;
}

const cm_isa *cm_isa_current(void) { return g_forced ? g_forced : isa_auto(); }

int cm_isa_level(void)
{
    const cm_isa *i = cm_isa_current();
    return i == &isa_portable ? 0 : 1;
}

int cm_isa_force(const char *name)
{
    if (!name) {
        g_forced = NULL;
        return 1;
    }
    const cm_isa *i = isa_by_name(name);
    if (!i) return 0;
    g_forced = i;
    return 1;
}

/* ------------------------------------------------------------------------
 * Packed-weight cache.
 *
 * Packing B (gather, dtype conversion, transpose into NR panels) costs about
 * as much as a few rows of the GEMM, so at small M (8x8 latents, the text
 * encoder, the built-in model) it dominates. The same layer runs again at
 * every sampling step, so its panels are kept, keyed by what determines
 * them: the weight view (data pointer, dtype, shape), the pack callback
 * and its geometry (taps, upsample phase) and the microkernel width.
 *
 * A mapping can be unmapped and another mapped at the same address, and a
 * float32 view may wrap a buffer whose contents change, so every hit is
 * checked against a fingerprint of 64 sampled elements plus both ends of
 * the weight; a mismatch repacks. cm_pack_cache_clear() drops everything
 * (call it when a model file is closed).
 *
 * Only jobs with M <= PC_MAX_M are cached: packing costs ~1.5 ns per weight
 * against ~2M/50 ns of multiply-adds, so above ~256 rows it is under ~15 %
 * of the work and the float32 panels (2x an f16 checkpoint) would be
 * resident memory for little. (SD 1.5 at 512x512, batch 2: the 8x8 layers,
 * ~1.1 GB of panels; the text encoder ~0.5 GB: the pipeline clears the
 * cache after encoding.) Bounded by a byte budget (default 512 MiB or 25 %
 * of physical memory if less; env STIPPLE_PACK_CACHE_MB, 0 disables),
 * filled first come, first kept (see pc_fits). Kernels are called one at a time, but the
 * table is still guarded by a critical section and entries in use are
 * never evicted.
 * ---------------------------------------------------------------------- */

#define PC_MAX_M 256

typedef struct pc_entry pc_entry;
struct pc_entry {
    const void *data;
    cm_dtype dtype;
    int ndim;
    int64_t shape[CM_MAX_DIMS];
    void (*packb)(const cm_gemm_job *, int64_t, int, int, float *);
    int ntap, nr, up_py, up_px, KH, KW, geglu;
    int64_t N, C;
    uint64_t fp;
    size_t bytes;
    uint64_t last_use;
    int refs;
    float *panels;
    pc_entry *next;
};

static struct {
    int init;
    size_t budget, used;
    uint64_t clock;
    long hits, misses;
    pc_entry *head;
} g_pc;

static void pc_init(void)
{
    if (g_pc.init) return;
    g_pc.init = 1;
    const char *env = getenv("STIPPLE_PACK_CACHE_MB");
    if (env && *env) {
        g_pc.budget = (size_t)strtoull(env, NULL, 10) << 20;
        return;
    }
    /* 512 MiB (less on small machines): enough for every layer of the
     * built-in and small models and the low-resolution levels of SD-class
     * UNets, while a 512x512 SD 1.5 run stays near its memory target. */
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGE_SIZE);
    size_t quarter = pages > 0 && psz > 0 ? (size_t)pages * (size_t)psz / 4 : (size_t)1 << 30;
    g_pc.budget = quarter < ((size_t)512 << 20) ? quarter : ((size_t)512 << 20);
}

static uint64_t pc_mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdULL;
    return h ^ (h >> 33);
}

/* Fingerprint of the weight contents: 64 elements spread over the tensor
 * and the first and last 16 elements. */
static uint64_t pc_fingerprint(const cm_wview *w)
{
    int64_t n = cm_wview_numel(w);
    size_t es = cm_dtype_size(w->dtype);
    const unsigned char *b = w->data;
    uint64_t h = 0x243f6a8885a308d3ULL;
    if (n <= 0) return h;
    for (int i = 0; i < 96; i++) {
        int64_t idx = i < 64 ? (n - 1) * i / 63 : (i < 80 ? i - 64 : n - 1 - (i - 80));
        if (idx < 0 || idx >= n) continue;
        uint64_t v = 0;
        memcpy(&v, b + (size_t)idx * es, es < 8 ? es : 8);
        h = pc_mix(h, v ^ (uint64_t)idx << 40);
    }
    return h;
}

static int pc_key_eq(const pc_entry *e, const cm_gemm_job *jb, int nr)
{
    const cm_wview *w = jb->w;
    if (e->data != w->data || e->dtype != w->dtype || e->ndim != w->ndim || e->packb != jb->packb ||
        e->ntap != jb->ntap || e->nr != nr || e->up_py != jb->up_py || e->up_px != jb->up_px ||
        e->KH != jb->KH || e->KW != jb->KW || e->geglu != jb->geglu || e->N != jb->N ||
        e->C != jb->C)
        return 0;
    for (int d = 0; d < w->ndim; d++)
        if (e->shape[d] != w->shape[d]) return 0;
    return 1;
}

static void pc_unlink_free(pc_entry *e)
{
    pc_entry **pp = &g_pc.head;
    while (*pp && *pp != e) pp = &(*pp)->next;
    if (*pp) *pp = e->next;
    g_pc.used -= e->bytes;
    cm_free(e->panels);
    free(e);
}

/* Whether `need` more bytes fit. Nothing is evicted to make room: the
 * layers run in the same cycle at every step, and least-recently-used
 * eviction of a cycle longer than the budget evicts each entry just before
 * its next use (0 % hits, the whole budget resident for nothing); keeping
 * the first layers that fit hits on every one of them. The pipeline clears
 * the cache between stages. */
static int pc_fits(size_t need) { return g_pc.used + need <= g_pc.budget; }

/* A cached, still-valid panel set for the job (refs taken), or NULL. */
static pc_entry *pc_lookup(const cm_gemm_job *jb, int nr, uint64_t fp)
{
    pc_entry *hit = NULL, *stale = NULL;
#pragma omp critical(cm_pack_cache)
    {
        for (pc_entry *e = g_pc.head; e; e = e->next)
            if (pc_key_eq(e, jb, nr)) {
                if (e->fp == fp)
                    hit = e;
                else if (!e->refs)
                    stale = e;
                break;
            }
        if (stale) pc_unlink_free(stale);
        if (hit) {
            hit->refs++;
            hit->last_use = ++g_pc.clock;
            g_pc.hits++;
        } else {
            g_pc.misses++;
        }
    }
    return hit;
}

/* Hand freshly packed panels to the cache. Returns the entry (refs taken)
 * or NULL when they do not fit (the caller frees them). */
static pc_entry *pc_insert(const cm_gemm_job *jb, int nr, uint64_t fp, float *panels, size_t bytes)
{
    pc_entry *e = NULL;
#pragma omp critical(cm_pack_cache)
    {
        if (pc_fits(bytes)) {
            e = calloc(1, sizeof *e);
            if (e) {
                e->data = jb->w->data;
                e->dtype = jb->w->dtype;
                e->ndim = jb->w->ndim;
                memcpy(e->shape, jb->w->shape, sizeof e->shape);
                e->packb = jb->packb;
                e->ntap = jb->ntap;
                e->nr = nr;
                e->up_py = jb->up_py;
                e->up_px = jb->up_px;
                e->KH = jb->KH;
                e->KW = jb->KW;
                e->geglu = jb->geglu;
                e->N = jb->N;
                e->C = jb->C;
                e->fp = fp;
                e->bytes = bytes;
                e->last_use = ++g_pc.clock;
                e->refs = 1;
                e->panels = panels;
                e->next = g_pc.head;
                g_pc.head = e;
                g_pc.used += bytes;
            }
        }
    }
    return e;
}

static void pc_release(pc_entry *e)
{
#pragma omp critical(cm_pack_cache)
    {
        e->refs--;
        if (g_pc.used > g_pc.budget && !e->refs) pc_unlink_free(e);
    }
}

void cm_pack_cache_set_budget(size_t bytes)
{
#pragma omp critical(cm_pack_cache)
    {
        pc_init();
        g_pc.budget = bytes;
        /* a lower budget frees idle entries, newest first, until it holds */
        while (g_pc.used > g_pc.budget) {
            pc_entry *newest = NULL;
            for (pc_entry *e = g_pc.head; e; e = e->next)
                if (!e->refs && (!newest || e->last_use > newest->last_use)) newest = e;
            if (!newest) break;
            pc_unlink_free(newest);
        }
    }
}

size_t cm_pack_cache_budget(void)
{
    size_t b;
#pragma omp critical(cm_pack_cache)
    {
        pc_init();
        b = g_pc.budget;
    }
    return b;
}

void cm_pack_cache_clear(void)
{
#pragma omp critical(cm_pack_cache)
    {
        pc_entry **pp = &g_pc.head;
        while (*pp) {
            pc_entry *e = *pp;
            if (e->refs) {
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            g_pc.used -= e->bytes;
            cm_free(e->panels);
            free(e);
        }
    }
}

void cm_pack_cache_stats(size_t *bytes, long *hits, long *misses)
{
#pragma omp critical(cm_pack_cache)
    {
        if (bytes) *bytes = g_pc.used;
        if (hits) *hits = g_pc.hits;
        if (misses) *misses = g_pc.misses;
    }
}

/* ------------------------------------------------------------------------
 * The engine
 * ---------------------------------------------------------------------- */

#define KC_MAX 256
#define MC_ROWS 96 /* a multiple of every MR (4, 6, 12) */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
_Static_assert(sizeof(float *) <= 2 * sizeof(float), "row pointers fit in two floats");

/* What the indirection kernel reads for padding taps and rows past M. */
static const float g_zero_row[KC_MAX] __attribute__((aligned(64)));

/* Gather rows m0.. m0+mc-1 (tap t, channels c0..c0+kc-1) into MR-row
 * panels, k-major; rows past mc and padding taps are zero. */
static void pack_a(const cm_gemm_job *jb, int mr, int64_t m0, int64_t mc, int t, int64_t c0,
                   int64_t kc, float *dst)
{
    int64_t tiles = ceil_div(mc, mr);
    for (int64_t i = 0; i < tiles; i++) {
        float *d = dst + i * mr * kc;
        for (int r = 0; r < mr; r++) {
            int64_t m = i * mr + r;
            const float *src = m < mc ? jb->arow(jb, m0 + m, t) : NULL;
            if (src) {
                src += c0;
                for (int64_t k = 0; k < kc; k++) d[k * mr + r] = src[k];
            } else {
                for (int64_t k = 0; k < kc; k++) d[k * mr + r] = 0.0f;
            }
        }
    }
}

/* Rows m0.. of the accumulator block to y: act(acc + bias) + residual.
 * bias is never NULL here (zeros when the job has none), and the residual
 * test sits outside the loops: a conditional load from a NULL-based address
 * vectorises to a masked load that faults into a microcode assist on AMD. */
CM_INLINE void epilogue_body(const cm_gemm_job *jb, const float *bias_all, int64_t m0, int64_t mc,
                             int64_t n0, int64_t nc, const float *acc, int64_t ldc)
{
    const float *bias = bias_all + n0;
    const cm_act act = jb->act;
    for (int64_t r = 0; r < mc; r++) {
        float *yr = jb->yrow(jb, m0 + r) + n0;
        const float *ar = acc + r * ldc;
        if (jb->rrow) {
            const float *rr = jb->rrow(jb, m0 + r) + n0;
            if (act == CM_ACT_NONE) {
#pragma omp simd
                for (int64_t n = 0; n < nc; n++) yr[n] = ar[n] + bias[n] + rr[n];
            } else {
#pragma omp simd
                for (int64_t n = 0; n < nc; n++) yr[n] = cm_vact(ar[n] + bias[n], act) + rr[n];
            }
        } else {
            if (act == CM_ACT_NONE) {
#pragma omp simd
                for (int64_t n = 0; n < nc; n++) yr[n] = ar[n] + bias[n];
            } else {
#pragma omp simd
                for (int64_t n = 0; n < nc; n++) yr[n] = cm_vact(ar[n] + bias[n], act);
            }
        }
    }
}

CM_TARGET_AVX2 static void epilogue_avx2(const cm_gemm_job *jb, const float *bias, int64_t m0,
                                         int64_t mc, int64_t n0, int64_t nc, const float *acc,
                                         int64_t ldc)
{
    epilogue_body(jb, bias, m0, mc, n0, nc, acc, ldc);
}
static void epilogue_c(const cm_gemm_job *jb, const float *bias, int64_t m0, int64_t mc,
                       int64_t n0, int64_t nc, const float *acc, int64_t ldc)
{
    epilogue_body(jb, bias, m0, mc, n0, nc, acc, ldc);
}

/* GEGLU epilogue for one a/gate panel pair: acc holds the a columns at
 * [0, nr) and the gate columns at [nr, 2nr) of each row (stride ldc).
 * Same operations as the plain epilogue followed by cm_geglu. */
CM_INLINE void epilogue_geglu_body(const cm_gemm_job *jb, const float *bias_all, int64_t m0,
                                   int64_t mc, int64_t n0, int64_t nc, const float *acc,
                                   int64_t ldc, int nr)
{
    const float *ba = bias_all + n0, *bg = bias_all + jb->N + n0;
    for (int64_t r = 0; r < mc; r++) {
        float *yr = jb->yrow(jb, m0 + r) + n0;
        const float *ar = acc + r * ldc, *gr = ar + nr;
#pragma omp simd
        for (int64_t n = 0; n < nc; n++) {
            float a = ar[n] + ba[n], g = gr[n] + bg[n];
            yr[n] = a * cm_vact(g, CM_ACT_GELU);
        }
    }
}
CM_TARGET_AVX2 static void epilogue_geglu_avx2(const cm_gemm_job *jb, const float *bias,
                                               int64_t m0, int64_t mc, int64_t n0, int64_t nc,
                                               const float *acc, int64_t ldc)
{
    epilogue_geglu_body(jb, bias, m0, mc, n0, nc, acc, ldc, cm_isa_current()->nr);
}
static void epilogue_geglu_c(const cm_gemm_job *jb, const float *bias, int64_t m0, int64_t mc,
                             int64_t n0, int64_t nc, const float *acc, int64_t ldc)
{
    epilogue_geglu_body(jb, bias, m0, mc, n0, nc, acc, ldc, cm_isa_current()->nr);
}

void cm_gemm_run(const cm_gemm_job *jb)
{
    const cm_isa *isa = cm_isa_current();
    const int mr = isa->mr, nr = isa->nr;
    const int64_t M = jb->M, N = jb->N, C = jb->C, K = (int64_t)jb->ntap * C;
    if (M <= 0 || N <= 0) return;
    const int gg = jb->geglu ? 2 : 1; /* panels per output panel */
    const int64_t npan = gg * ceil_div(N, nr);

    /* --precision bf16: weights and activations rounded to bf16, products
     * accumulated in float32 by vdpbf16ps (AVX-512 tile only; K must split
     * into pairs within each tap). */
#if CM_HAVE_X86
    const int bf = jb->w && K > 0 && C % 2 == 0 && isa == &isa_avx512 &&
                   cm_precision_get() == CM_PREC_BF16 && cm_bf16_supported();
#else
    const int bf = 0;
#endif
    /* B panels: from the packed-weight cache, or packed below. bf16
     * panels are another kind of entry (key: -nr). */
    const int knr = bf ? -nr : nr;
    size_t bp_bytes = (size_t)(npan * nr * (K > 0 ? K : 1)) * (bf ? sizeof(uint16_t) : sizeof(float));
    int cacheable = jb->w && M <= PC_MAX_M && cm_pack_cache_budget() > 0;
    uint64_t fp = cacheable ? pc_fingerprint(jb->w) : 0;
    pc_entry *pce = cacheable ? pc_lookup(jb, knr, fp) : NULL;
    /* Panels that may go into the cache are the cache's to free: heap
     * (when that fails they are scratch and not cached); the rest scratch. */
    float *bp = pce ? pce->panels : cacheable ? cm_alloc(bp_bytes, "gemm B panels", NULL) : NULL;
    if (!pce && !bp) {
        cacheable = 0;
        bp = cm_scratch_take(bp_bytes, 0, "gemm B panels");
    }
    const int need_pack = !pce;

    /* Blocking: rows in blocks of MC, columns in blocks of ncp panels;
     * enough items that two per thread exist when the shape allows. None of
     * this changes any result. */
    int64_t mc_blk = M < MC_ROWS ? ceil_div(M, mr) * mr : MC_ROWS;
    int64_t mb = ceil_div(M, mc_blk);
    int64_t ncp = ceil_div(512, nr);
    int nt = cm_par_threads(2.0 * (double)M * (double)(gg * N) * (double)K);
    if (ncp > npan) ncp = npan;
    while (ncp > gg && mb * ceil_div(npan, ncp) < 2 * nt) ncp = ceil_div(ncp, 2);
    ncp = ceil_div(ncp, gg) * gg; /* geglu: a/gate panel pairs stay together */
    int64_t nb = ceil_div(npan, ncp);
    int64_t kc_blk = C < KC_MAX ? (C > 0 ? C : 1) : KC_MAX;
    /* A panel, or (indirection) the row pointers of the block, in floats.
     * env STIPPLE_GEMM_PACK_A=1 packs A anyway (for benchmarks). */
    const int use_rows = isa->ukr_rows && !cm_pack_a_forced();
    size_t a_sz = use_rows ? (size_t)mc_blk * 2 /* one pointer = two floats */
                                : (size_t)(mc_blk * kc_blk);
    a_sz = (a_sz + 15) / 16 * 16;
    size_t c_sz = (size_t)(mc_blk * ncp * nr);
    float *work = cm_scratch_take((size_t)nt * (a_sz + c_sz) * sizeof(float), 0, "gemm work");
    float *zeros = jb->bias ? NULL : cm_scratch_take((size_t)(gg * N) * sizeof(float), 1, "gemm bias");
    const float *bias = jb->bias ? jb->bias : zeros;
    float *bf_panel = bf && need_pack ? cm_scratch_take((size_t)nt * nr * K * sizeof(float), 0, "gemm bf16 panel")
                                      : NULL;

#pragma omp parallel num_threads(nt)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *apk = work + (size_t)tid * (a_sz + c_sz);
        float *acc = apk + a_sz;

        if (need_pack) {
#pragma omp for schedule(static)
            for (int64_t p = 0; p < npan; p++) {
                int64_t c0 = (p / gg) * nr;
                int64_t valid = N - c0 < nr ? N - c0 : nr;
                if (bf) {
#if CM_HAVE_X86
                    float *tp = bf_panel + (size_t)tid * nr * K;
                    jb->packb(jb, p, nr, (int)valid, tp);
                    panel_to_bf16(tp, nr, K, (uint16_t *)(void *)bp + p * nr * K);
#endif
                } else {
                    jb->packb(jb, p, nr, (int)valid, bp + p * nr * K);
                }
            }
        }

#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < mb * nb; it++) {
            int64_t im = it / nb, in = it % nb;
            int64_t m0 = im * mc_blk, mc = M - m0 < mc_blk ? M - m0 : mc_blk;
            int64_t p0 = in * ncp, np = npan - p0 < ncp ? npan - p0 : ncp;
            int64_t ldc = np * nr, tiles = ceil_div(mc, mr);
            int first = 1;
            if (K == 0) memset(acc, 0, (size_t)(tiles * mr * ldc) * sizeof(float));
            for (int t = 0; t < jb->ntap; t++)
                for (int64_t c0 = 0; c0 < C; c0 += kc_blk) {
                    int64_t kc = C - c0 < kc_blk ? C - c0 : kc_blk;
                    int64_t koff = (int64_t)t * C + c0;
                    if (bf) {
#if CM_HAVE_X86
                        uint32_t *ap = (uint32_t *)(void *)apk;
                        pack_a_bf16(jb, mr, m0, mc, t, c0, kc, ap);
                        for (int64_t p = 0; p < np; p++) {
                            const uint16_t *bpan = (const uint16_t *)(const void *)bp + (p0 + p) * nr * K + koff * nr;
                            for (int64_t i = 0; i < tiles; i++)
                                ukr_bf16(kc, ap + i * mr * (kc / 2), bpan, acc + i * mr * ldc + p * nr, ldc,
                                         !first);
                        }
#endif
                    } else if (use_rows) {
                        const float **rows = (const float **)(void *)apk;
                        for (int64_t i = 0; i < tiles * mr; i++) {
                            const float *src = i < mc ? jb->arow(jb, m0 + i, t) : NULL;
                            rows[i] = src ? src + c0 : g_zero_row;
                        }
                        for (int64_t p = 0; p < np; p++) {
                            const float *bpan = bp + (p0 + p) * nr * K + koff * nr;
                            for (int64_t i = 0; i < tiles; i++)
                                isa->ukr_rows(kc, rows + i * mr, bpan,
                                              acc + i * mr * ldc + p * nr, ldc, !first);
                        }
                    } else {
                        pack_a(jb, mr, m0, mc, t, c0, kc, apk);
                        for (int64_t p = 0; p < np; p++) {
                            const float *bpan = bp + (p0 + p) * nr * K + koff * nr;
                            for (int64_t i = 0; i < tiles; i++)
                                isa->ukr(kc, apk + i * mr * kc, bpan, acc + i * mr * ldc + p * nr,
                                         ldc, !first);
                        }
                    }
                    first = 0;
                }
            if (jb->geglu) {
                for (int64_t q = 0; q < np / 2; q++) {
                    int64_t n0 = (p0 / 2 + q) * nr, nc = N - n0 < nr ? N - n0 : nr;
                    if (CM_HAVE_AVX2_CLONES && isa != &isa_portable)
                        epilogue_geglu_avx2(jb, bias, m0, mc, n0, nc, acc + 2 * q * nr, ldc);
                    else
                        epilogue_geglu_c(jb, bias, m0, mc, n0, nc, acc + 2 * q * nr, ldc);
                }
            } else {
                int64_t n0 = p0 * nr, nc = N - n0 < ldc ? N - n0 : ldc;
                if (CM_HAVE_AVX2_CLONES && isa != &isa_portable)
                    epilogue_avx2(jb, bias, m0, mc, n0, nc, acc, ldc);
                else
                    epilogue_c(jb, bias, m0, mc, n0, nc, acc, ldc);
            }
        }
    }
    cm_scratch_give(bf_panel);
    cm_scratch_give(zeros);
    cm_scratch_give(work);
    if (!pce && cacheable) pce = pc_insert(jb, knr, fp, bp, bp_bytes);
    if (pce)
        pc_release(pce);
    else if (cacheable)
        cm_free(bp);
    else
        cm_scratch_give(bp);
}
