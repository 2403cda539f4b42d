/* simd.h — internal to common/: the packed GEMM engine behind the compute
 * kernels, its run-time ISA dispatch, and small vectorisable math helpers
 * (exp, erf, f16 decode) written in plain C so that `#pragma omp simd`
 * loops using them vectorise on any target.
 *
 * Not a public header: only the common/ sources and the kernel tests/benchmarks
 * include it.
 */
#ifndef STIPPLE_SIMD_H
#define STIPPLE_SIMD_H

#include <stdint.h>
#include <string.h>

#include "common.h"

/* ------------------------------------------------------------------------
 * ISA dispatch
 *
 * A microkernel computes one MR x NR tile of C from a packed A panel
 * (kc x MR, k-major) and a packed B panel (kc x NR, k-major):
 *   c[r][j] (+)= sum_k a[k*MR + r] * b[k*NR + j]
 * accumulating in the fixed order k = 0, 1, ..., so every element of C is
 * one multiply-add chain in k order whatever the blocking or thread count.
 * The FMA variants (AVX2, AVX-512) give bit-identical results; the portable
 * variant (separate multiply and add) differs from them by rounding only.
 * ---------------------------------------------------------------------- */

typedef void (*cm_ukr_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                          int accumulate);

/* The same tile with A read in place: row r of the tile is a[r][0..kc-1]
 * (an "indirection" microkernel, as in XNNPACK's IGEMM). The GEMM engine
 * uses it to skip packing A; the multiply-add chains are the same, so are
 * the results. */
typedef void (*cm_ukr_rows_fn)(int64_t kc, const float *const *a, const float *b, float *c,
                               int64_t ldc, int accumulate);

/* Env STIPPLE_GEMM_PACK_A set: pack A even where an indirection kernel
 * exists (to benchmark one against the other; same results). */
int cm_pack_a_forced(void);

typedef struct {
    const char *name; /* "portable", "avx2", "avx512" */
    int mr, nr;
    cm_ukr_fn ukr;
    cm_ukr_rows_fn ukr_rows; /* NULL: the engine packs A */
} cm_isa;

/* The ISA the kernels use now: the best the CPU supports, unless the
 * environment variable STIPPLE_ISA names a lower one or cm_isa_force was
 * called. */
const cm_isa *cm_isa_current(void);
/* Force an ISA by name (tests, benchmarks). Returns 0 if the name is
 * unknown or the CPU lacks it; NULL restores the automatic choice. */
int cm_isa_force(const char *name);
/* Whether the CPU (and OS) support an ISA by name. */
int cm_isa_supported(const char *name);

/* Vector level for the non-GEMM loops (softmax, norms, activations): 0
 * portable, 1 AVX2 (also used when AVX-512 is chosen). Those loops are
 * written once as always_inline bodies and compiled twice. */
int cm_isa_level(void);
#if defined(__x86_64__) && defined(__GNUC__) && !defined(STIPPLE_PLAIN_C)
#define CM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define CM_HAVE_AVX2_CLONES 1
#else
#define CM_TARGET_AVX2
#define CM_HAVE_AVX2_CLONES 0
#endif
#define CM_INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------------
 * The implicit-GEMM engine.
 *
 *   y[m][n] = act(sum_k A[m][k] * B[k][n] + bias[n]) + residual[m][n]
 *
 * K = ntap * C. Row m of A is gathered tap by tap: tap t contributes the C
 * floats at arow(m, t) (NULL: zeros, e.g. conv padding). So a linear layer
 * is ntap = 1 and a 3x3 convolution ntap = 9 reading the NHWC input in
 * place (no im2col). B is packed once per call into NR-column panels by
 * packb, converting the stored weight dtype to float32. The epilogue writes
 * through yrow / rrow so outputs may be strided or interleaved (upsample
 * phases). Work is split into (row block, column block) items, each with
 * the full K reduction on one thread.
 * ---------------------------------------------------------------------- */

typedef struct cm_gemm_job cm_gemm_job;
struct cm_gemm_job {
    int64_t M, N, C;
    int ntap;
    const float *(*arow)(const cm_gemm_job *j, int64_t m, int tap);
    float *(*yrow)(const cm_gemm_job *j, int64_t m);
    const float *(*rrow)(const cm_gemm_job *j, int64_t m); /* NULL: no residual */
    /* Fill panel p (columns p*nr .. p*nr+nr-1, of which `valid` exist):
     * dst[k*nr + j] for k < K, zero for j >= valid. */
    void (*packb)(const cm_gemm_job *j, int64_t p, int nr, int valid, float *dst);
    const float *bias; /* float32 (N) or NULL; (2N) for geglu */
    cm_act act;
    /* GEGLU epilogue: B has 2N columns [a | gate]; packb's panel 2q holds a
     * columns q*nr.., panel 2q+1 the matching gate columns, and the output
     * is y[m][n] = (a + bias[n]) * gelu(gate + bias[N + n]), N columns. */
    int geglu;

    /* Geometry used by the row and pack callbacks. */
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
    const float *res;
    const cm_wview *w;
    const float *bf; /* plain float B for cm_gemm_f32 */
    int64_t ldb;
    int b_is_nk;
    int B, H, W, OH, OW, stride, pad, KH, KW;
    int up_py, up_px; /* upsample phase */
};

/* Run the job. Allocation failure is a programmer error here (kernels
 * cannot report errors): asserts. */
void cm_gemm_run(const cm_gemm_job *job);

/* ------------------------------------------------------------------------
 * Threads for one kernel call.
 *
 * A parallel region costs a fork and a join, and libgomp's worker threads
 * then spin for milliseconds waiting for the next one. Tiny kernels (the
 * built-in model, small latents: thousands of calls under 0.1 ms) run far
 * slower split over threads, and on a loaded machine the spinning workers
 * take the CPU from the thread doing the work (sd1-tiny 96x64, 10 steps:
 * 38 s wall on the shared 2-core machine against 1 s with passive waiting).
 * So a call runs on one thread below CM_PAR_MIN_WORK (float operations, or
 * ~8 per element for memory-bound loops): about 0.25 ms on one core, where
 * a fork/join on an idle machine costs a few percent. Work splits never
 * depend on the thread count, so neither do the results.
 * ---------------------------------------------------------------------- */

#define CM_PAR_MIN_WORK 1e7

/* The threshold in use (CM_PAR_MIN_WORK; tests set 0 so that small shapes
 * still run split over threads). */
extern double cm_par_min_work;

static inline int cm_par_threads(double work)
{
    return work < cm_par_min_work ? 1 : cm_threads_get();
}

/* ------------------------------------------------------------------------
 * Vectorisable scalar helpers (no libm calls, so loops vectorise).
 * ---------------------------------------------------------------------- */

static inline float cm_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint32_t cm_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Exact IEEE half -> float (normals, subnormals, inf, nan). */
static inline float cm_h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    /* Shift into float position and rescale by 2^112: exact for normals
     * and subnormals (the product is representable). */
    float f = cm_bits_f32(em << 13) * 0x1p112f;
    uint32_t u = cm_f32_bits(f);
    if (em >= 0x7c00u) u = 0x7f800000u | (em << 13); /* inf / nan */
    return cm_bits_f32(u | sign);
}
static inline float cm_bf2f(uint16_t h) { return cm_bits_f32((uint32_t)h << 16); }

/* exp(x) with relative error ~2 ulp for x in [-87, 88]; 0 below -87.3,
 * +inf above 88.7. Cody-Waite reduction, degree-6 polynomial. */
static inline float cm_vexp(float x)
{
    float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    /* round to nearest via the 1.5*2^23 trick (no libm, vectorises) */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    float s = cm_bits_f32((uint32_t)((int32_t)n + 127) << 23);
    float e = p * s;
    if (x < -87.3f) e = 0.0f;
    if (x > 88.7f) e = __builtin_inff();
    return e;
}

/* erf(x), absolute error < 2e-7 (Abramowitz & Stegun 7.1.26 refined:
 * Numerical Recipes erfc Chebyshev form). */
static inline float cm_verf(float x)
{
    float z = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t + -0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t + -1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t + -0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t + -1.26551223f;
    float erfc = t * cm_vexp(-z * z + p);
    float r = 1.0f - erfc;
    return x < 0 ? -r : r;
}

/* Activation with the vectorisable helpers (matches cm_act_scalar to a
 * few ulp relative to max(|x|, |act(x)|)). */
static inline float cm_vact(float x, cm_act act)
{
    switch (act) {
    case CM_ACT_NONE: return x;
    case CM_ACT_SILU: return x / (1.0f + cm_vexp(-x));
    case CM_ACT_GELU: return 0.5f * x * (1.0f + cm_verf(x * 0.70710678118654752f));
    case CM_ACT_GELU_TANH: {
        /* tanh(u) = 1 - 2/(exp(2u)+1) */
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        float th = 1.0f - 2.0f / (cm_vexp(2.0f * u) + 1.0f);
        return 0.5f * x * (1.0f + th);
    }
    case CM_ACT_QUICK_GELU: return x / (1.0f + cm_vexp(-1.702f * x));
    }
    return x;
}

#endif
