/* kernels.c — the kernels the model code calls, dispatched to the fastest
 * variant; each is checked against its _ref twin in kernels_ref.c
 * (tests/common_kernels.c) and timed by tests/bench_kernels.c.
 *
 *   linear, 1x1 conv, plain GEMM  -> the packed GEMM engine (gemm.c)
 *   3x3 / any conv                -> implicit GEMM: per-tap row gather from
 *                                    the NHWC input, no im2col buffer
 *   nearest-2x upsample + 3x3 conv-> four 2x2 convs on the small input
 *                                    (effective weights = sums of 3x3 taps)
 *   attention                     -> flash attention (Dao et al. 2022):
 *                                    tiled online softmax, no Tq x Tk matrix
 *   group norm (+SiLU)            -> chunked two-pass statistics in a fixed
 *                                    order, one fused normalise pass
 * PERF.md describes the design. Layouts as in common.h.
 */
#include "common.h"
#include "simd.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(STIPPLE_PLAIN_C)
#include <cpuid.h>
#include <immintrin.h>
#define KN_HAVE_F16C 1
#else
#define KN_HAVE_F16C 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

static cm_precision g_prec = CM_PREC_F32;
void cm_precision_set(cm_precision p) { g_prec = p; }
cm_precision cm_precision_get(void) { return g_prec; }

/* ------------------------------------------------------------------------
 * Weight conversion (any stored dtype, possibly unaligned)
 * ---------------------------------------------------------------------- */

/* dst[i*ds] = w[off + i*ss] as float32, i < n. */
#if KN_HAVE_F16C
/* Contiguous f16 -> f32 with the F16C instruction (exact, like cm_h2f, for
 * every non-NaN value). Weight packing is mostly this conversion. */
__attribute__((target("avx,f16c"))) static void h2f_f16c(const char *src, int64_t n, float *dst)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        dst[i] = cm_h2f(h);
    }
}
static int have_f16c(void)
{
    static int have = -1;
    if (have < 0) {
        /* CPUID.1:ECX bit 29 (clang 14's __builtin_cpu_supports does not
         * know "f16c"). */
        unsigned a, b, c, d;
        have = __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1) && cm_isa_level() >= 1;
    }
    return have;
}
#endif

static void cvt_strided(const cm_wview *w, int64_t off, int64_t n, int64_t ss, float *dst,
                        int64_t ds)
{
    const char *base = (const char *)w->data;
#if KN_HAVE_F16C
    if (w->dtype == CM_F16 && ss == 1 && ds == 1 && have_f16c()) {
        h2f_f16c(base + 2 * off, n, dst);
        return;
    }
#endif
    switch (w->dtype) {
    case CM_F32:
        for (int64_t i = 0; i < n; i++) {
            float v;
            memcpy(&v, base + 4 * (off + i * ss), 4);
            dst[i * ds] = v;
        }
        return;
    case CM_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, base + 2 * (off + i * ss), 2);
            dst[i * ds] = cm_h2f(h);
        }
        return;
    case CM_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, base + 2 * (off + i * ss), 2);
            dst[i * ds] = cm_bf2f(h);
        }
        return;
    default:
        for (int64_t i = 0; i < n; i++) dst[i * ds] = cm_wview_get(w, off + i * ss);
    }
}

/* Pack rows row0 .. row0+valid-1 of w, each C*T values laid out [ic][t]
 * (linear: T = 1; conv OIHW: T = KH*KW taps), into one NR-column panel
 * dst[(t*C + ic)*nr + jj], zero columns past valid. Works through blocks
 * of input channels: the block's rows are converted contiguously into a
 * small buffer, then each panel row (nr floats, one cache line or two) is
 * written whole. Writing one column at a time instead strides through the
 * whole panel nr times (9*C*nr floats: more than L2 for 1280 channels). */
#define PK_BUF 4608
static int pack_panel(const cm_wview *w, int64_t row0, int valid, int nr, int64_t C, int T,
                      float *dst)
{
    float tmp[PK_BUF];
    int64_t icb = PK_BUF / ((int64_t)nr * T);
    if (icb < 1) return 0;
    for (int64_t ic0 = 0; ic0 < C; ic0 += icb) {
        int64_t nb = C - ic0 < icb ? C - ic0 : icb;
        for (int jj = 0; jj < valid; jj++)
            cvt_strided(w, ((row0 + jj) * C + ic0) * T, nb * T, 1, tmp + jj * icb * T, 1);
        for (int t = 0; t < T; t++)
            for (int64_t i = 0; i < nb; i++) {
                float *d = dst + ((int64_t)t * C + ic0 + i) * nr;
                const float *src = tmp + i * T + t;
                int jj = 0;
                for (; jj < valid; jj++) d[jj] = src[jj * icb * T];
                for (; jj < nr; jj++) d[jj] = 0.0f;
            }
    }
    return 1;
}

/* A (small) weight vector as a fresh float32 buffer; NULL for NULL. */
static float *vec_f32(const cm_wview *w, int64_t n)
{
    if (!w) return NULL;
    CM_ASSERT(cm_wview_numel(w) >= n);
    float *f = cm_scratch_take((size_t)(n > 0 ? n : 1) * sizeof(float), 0, "kernel vector");
    cvt_strided(w, 0, n, 1, f, 1);
    return f;
}

/* ------------------------------------------------------------------------
 * Linear and plain GEMM
 * ---------------------------------------------------------------------- */

static const float *lin_arow(const cm_gemm_job *j, int64_t m, int tap)
{
    (void)tap;
    return j->x + m * j->ldx;
}
static float *lin_yrow(const cm_gemm_job *j, int64_t m) { return j->y + m * j->ldy; }
static const float *lin_rrow(const cm_gemm_job *j, int64_t m) { return j->res + m * j->ldy; }

/* w (N,K): panel p column jj = row n of w. */
static void lin_packb(const cm_gemm_job *j, int64_t p, int nr, int valid, float *dst)
{
    int64_t K = j->C;
    if (pack_panel(j->w, p * nr, valid, nr, K, 1, dst)) return;
    for (int jj = 0; jj < nr; jj++) {
        if (jj < valid)
            cvt_strided(j->w, (p * nr + jj) * K, K, 1, dst + jj, nr);
        else
            for (int64_t k = 0; k < K; k++) dst[k * nr + jj] = 0.0f;
    }
}

void cm_linear(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
               const cm_wview *bias, cm_act act, const float *residual, float *y, int64_t ldy)
{
    int64_t N = w->shape[0];
    CM_ASSERT(cm_wview_numel(w) == N * K);
    float *bf = vec_f32(bias, N);
    cm_gemm_job jb = {0};
    jb.M = M;
    jb.N = N;
    jb.C = K;
    jb.ntap = 1;
    jb.arow = lin_arow;
    jb.yrow = lin_yrow;
    jb.rrow = residual ? lin_rrow : NULL;
    jb.packb = lin_packb;
    jb.bias = bf;
    jb.act = act;
    jb.x = x;
    jb.ldx = ldx;
    jb.y = y;
    jb.ldy = ldy;
    jb.res = residual;
    jb.w = w;
    cm_gemm_run(&jb);
    cm_scratch_give(bf);
}

/* GEGLU: job panel p = output panel p/2 of the a half (p even) or of the
 * gate half (p odd) of w (2N,K). */
static void geglu_packb(const cm_gemm_job *j, int64_t p, int nr, int valid, float *dst)
{
    int64_t K = j->C, row0 = (p & 1 ? j->N : 0) + (p >> 1) * nr;
    if (pack_panel(j->w, row0, valid, nr, K, 1, dst)) return;
    for (int jj = 0; jj < nr; jj++) {
        if (jj < valid)
            cvt_strided(j->w, (row0 + jj) * K, K, 1, dst + jj, nr);
        else
            for (int64_t k = 0; k < K; k++) dst[k * nr + jj] = 0.0f;
    }
}

void cm_linear_geglu(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
                     const cm_wview *bias, float *y, int64_t ldy)
{
    int64_t N2 = w->shape[0], N = N2 / 2;
    CM_ASSERT(N2 == 2 * N && cm_wview_numel(w) == N2 * K);
    float *bf = vec_f32(bias, N2);
    cm_gemm_job jb = {0};
    jb.M = M;
    jb.N = N;
    jb.C = K;
    jb.ntap = 1;
    jb.arow = lin_arow;
    jb.yrow = lin_yrow;
    jb.packb = geglu_packb;
    jb.bias = bf;
    jb.act = CM_ACT_NONE;
    jb.geglu = 1;
    jb.x = x;
    jb.ldx = ldx;
    jb.y = y;
    jb.ldy = ldy;
    jb.w = w;
    cm_gemm_run(&jb);
    cm_scratch_give(bf);
}

static void f32_packb(const cm_gemm_job *j, int64_t p, int nr, int valid, float *dst)
{
    int64_t K = j->C;
    if (j->b_is_nk) {
        for (int jj = 0; jj < nr; jj++) {
            const float *src = j->bf + (p * nr + jj) * j->ldb;
            for (int64_t k = 0; k < K; k++) dst[k * nr + jj] = jj < valid ? src[k] : 0.0f;
        }
    } else {
        for (int64_t k = 0; k < K; k++) {
            const float *src = j->bf + k * j->ldb + p * nr;
            for (int jj = 0; jj < nr; jj++) dst[k * nr + jj] = jj < valid ? src[jj] : 0.0f;
        }
    }
}

void cm_gemm_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                 int64_t ldb, int b_is_nk, float beta, float *C, int64_t ldc)
{
    cm_gemm_job jb = {0};
    jb.M = M;
    jb.N = N;
    jb.C = K;
    jb.ntap = 1;
    jb.arow = lin_arow;
    jb.yrow = lin_yrow;
    jb.rrow = beta != 0 ? lin_rrow : NULL;
    jb.packb = f32_packb;
    jb.act = CM_ACT_NONE;
    jb.x = A;
    jb.ldx = lda;
    jb.y = C;
    jb.ldy = ldc;
    jb.res = C;
    jb.bf = B;
    jb.ldb = ldb;
    jb.b_is_nk = b_is_nk;
    cm_gemm_run(&jb);
}

/* ------------------------------------------------------------------------
 * Convolution as implicit GEMM: row m = output pixel (b, oy, ox), K ordered
 * (tap, ic) so each tap reads C contiguous input channels.
 * ---------------------------------------------------------------------- */

static const float *conv_arow(const cm_gemm_job *j, int64_t m, int tap)
{
    int64_t hw = (int64_t)j->OH * j->OW;
    int64_t b = m / hw, r = m % hw;
    int oy = (int)(r / j->OW), ox = (int)(r % j->OW);
    int iy = oy * j->stride - j->pad + tap / j->KW;
    int ix = ox * j->stride - j->pad + tap % j->KW;
    if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) return NULL;
    return j->x + ((b * j->H + iy) * j->W + ix) * j->C;
}
static float *conv_yrow(const cm_gemm_job *j, int64_t m) { return j->y + m * j->N; }
static const float *conv_rrow(const cm_gemm_job *j, int64_t m) { return j->res + m * j->N; }

/* w (OC, IC, KH, KW): B[(t*C + ic)][oc] = w[oc][ic][t]. */
static void conv_packb(const cm_gemm_job *j, int64_t p, int nr, int valid, float *dst)
{
    int64_t C = j->C, T = j->ntap;
    if (pack_panel(j->w, p * nr, valid, nr, C, (int)T, dst)) return;
    for (int jj = 0; jj < nr; jj++) {
        if (jj >= valid) {
            for (int64_t k = 0; k < T * C; k++) dst[k * nr + jj] = 0.0f;
            continue;
        }
        int64_t oc = p * nr + jj;
        for (int64_t t = 0; t < T; t++)
            cvt_strided(j->w, oc * C * T + t, C, T, dst + t * C * nr + jj, nr);
    }
}

void cm_conv2d(const float *x, int B, int H, int W, int C, const cm_wview *w,
               const cm_wview *bias, cm_conv_params p, const float *residual, float *y)
{
    int OC = (int)w->shape[0], KH = (int)w->shape[2], KW = (int)w->shape[3];
    CM_ASSERT(w->shape[1] == C);
    int OH = (H + 2 * p.pad - KH) / p.stride + 1, OW = (W + 2 * p.pad - KW) / p.stride + 1;
    if (KH == 1 && KW == 1 && p.stride == 1 && p.pad == 0) {
        cm_linear(x, C, (int64_t)B * H * W, C, w, bias, CM_ACT_NONE, residual, y, OC);
        return;
    }
    float *bf = vec_f32(bias, OC);
    cm_gemm_job jb = {0};
    jb.M = (int64_t)B * OH * OW;
    jb.N = OC;
    jb.C = C;
    jb.ntap = KH * KW;
    jb.arow = conv_arow;
    jb.yrow = conv_yrow;
    jb.rrow = residual ? conv_rrow : NULL;
    jb.packb = conv_packb;
    jb.bias = bf;
    jb.act = CM_ACT_NONE;
    jb.x = x;
    jb.y = y;
    jb.res = residual;
    jb.w = w;
    jb.B = B;
    jb.H = H;
    jb.W = W;
    jb.OH = OH;
    jb.OW = OW;
    jb.stride = p.stride;
    jb.pad = p.pad;
    jb.KH = KH;
    jb.KW = KW;
    cm_gemm_run(&jb);
    cm_scratch_give(bf);
}

/* ------------------------------------------------------------------------
 * Nearest 2x upsample + 3x3 pad-1 conv as four 2x2 convs.
 *
 * Output (2y+py, 2x+px) reads upsampled rows 2y+py-1 .. 2y+py+1, i.e. small
 * rows y+py-1 (tap a=0) and y+py (a=1); kernel rows {0} and {1,2} fall on
 * them for py=0, {0,1} and {2} for py=1. Same for columns. The effective
 * 2x2 weights are those sums, formed in float32 while packing (so results
 * differ from upsample-then-conv by rounding only).
 * ---------------------------------------------------------------------- */

static const int up_k0[2][2] = {{0, 1}, {0, 2}}; /* [phase][tap]: first kernel row */
static const int up_k1[2][2] = {{0, 2}, {1, 2}}; /* [phase][tap]: last kernel row */

static const float *up_arow(const cm_gemm_job *j, int64_t m, int tap)
{
    int64_t hw = (int64_t)j->H * j->W;
    int64_t b = m / hw, r = m % hw;
    int oy = (int)(r / j->W), ox = (int)(r % j->W);
    int iy = oy + (tap >> 1) - 1 + j->up_py, ix = ox + (tap & 1) - 1 + j->up_px;
    if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W) return NULL;
    return j->x + ((b * j->H + iy) * j->W + ix) * j->C;
}
static float *up_yrow(const cm_gemm_job *j, int64_t m)
{
    int64_t hw = (int64_t)j->H * j->W;
    int64_t b = m / hw, r = m % hw;
    int oy = (int)(r / j->W), ox = (int)(r % j->W);
    return j->y + ((b * 2 * j->H + 2 * oy + j->up_py) * 2 * j->W + 2 * ox + j->up_px) * j->N;
}

static void up_packb(const cm_gemm_job *j, int64_t p, int nr, int valid, float *dst)
{
    int64_t C = j->C;
    /* Blocked like pack_panel: convert a block of input channels of the nr
     * output channels, then write whole panel rows. Same sums, same order. */
    float tmp[PK_BUF];
    int64_t icb = PK_BUF / ((int64_t)nr * 9);
    for (int64_t ic0 = 0; ic0 < C; ic0 += icb) {
        int64_t nb = C - ic0 < icb ? C - ic0 : icb;
        for (int jj = 0; jj < valid; jj++)
            cvt_strided(j->w, ((p * nr + jj) * C + ic0) * 9, nb * 9, 1, tmp + jj * icb * 9, 1);
        for (int t = 0; t < 4; t++) {
            int a = t >> 1, bb = t & 1;
            int y0 = up_k0[j->up_py][a], y1 = up_k1[j->up_py][a];
            int x0 = up_k0[j->up_px][bb], x1 = up_k1[j->up_px][bb];
            for (int64_t i = 0; i < nb; i++) {
                float *d = dst + (t * C + ic0 + i) * nr;
                int jj = 0;
                for (; jj < valid; jj++) {
                    const float *w9 = tmp + (jj * icb + i) * 9;
                    float sum = 0.0f;
                    for (int ky = y0; ky <= y1; ky++)
                        for (int kx = x0; kx <= x1; kx++) sum += w9[ky * 3 + kx];
                    d[jj] = sum;
                }
                for (; jj < nr; jj++) d[jj] = 0.0f;
            }
        }
    }
}

void cm_upsample2x_conv3x3(const float *x, int B, int H, int W, int C, const cm_wview *w,
                           const cm_wview *bias, float *y)
{
    int OC = (int)w->shape[0];
    CM_ASSERT(w->shape[1] == C && w->shape[2] == 3 && w->shape[3] == 3);
    float *bf = vec_f32(bias, OC);
    for (int ph = 0; ph < 4; ph++) {
        cm_gemm_job jb = {0};
        jb.M = (int64_t)B * H * W;
        jb.N = OC;
        jb.C = C;
        jb.ntap = 4;
        jb.arow = up_arow;
        jb.yrow = up_yrow;
        jb.packb = up_packb;
        jb.bias = bf;
        jb.act = CM_ACT_NONE;
        jb.x = x;
        jb.y = y;
        jb.w = w;
        jb.B = B;
        jb.H = H;
        jb.W = W;
        jb.up_py = ph >> 1;
        jb.up_px = ph & 1;
        cm_gemm_run(&jb);
    }
    cm_scratch_give(bf);
}

/* ------------------------------------------------------------------------
 * Flash attention.
 *
 * Phase 1 packs K^T and V of every (batch, head, block of ATT_BK keys) into
 * microkernel panels once per call (shared by all query tiles). Phase 2:
 * one task = (batch, head, tile of ATT_BQ query rows). Per key block:
 * S = (scale Q) K^T (microkernel), online softmax (running max m, running
 * sum l, rescale of the output accumulator), O += P V (microkernel). The
 * block sizes are constants, so the result does not depend on the thread
 * count.
 * ---------------------------------------------------------------------- */

#define ATT_BQ 48 /* a multiple of every MR */
#define ATT_BK 128

typedef struct {
    float *qp, *s, *pp, *oacc, *m, *l;
} att_buf;

/* exp(x) for the softmax, where x = score - running max <= 0: cm_vexp's
 * reduction and polynomial without the overflow branch, with fused
 * multiply-adds when `fma` (a constant: the AVX2+FMA clone passes 1). The
 * softmax is a third of the attention time, the exp most of that. */
CM_INLINE float att_exp(float x, int fma)
{
#define ATT_MADD(a, b, c) (fma ? __builtin_fmaf((a), (b), (c)) : (a) * (b) + (c))
    float xc = x < -87.3f ? -87.3f : x;
    float n = ATT_MADD(xc, 1.44269504088896341f, 12582912.0f) - 12582912.0f;
    float r = ATT_MADD(n, -0.693359375f, xc);
    r = ATT_MADD(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = ATT_MADD(p, r, 1.3981999507e-3f);
    p = ATT_MADD(p, r, 8.3334519073e-3f);
    p = ATT_MADD(p, r, 4.1665795894e-2f);
    p = ATT_MADD(p, r, 1.6666665459e-1f);
    p = ATT_MADD(p, r, 5.0000001201e-1f);
    p = ATT_MADD(p, r * r, r) + 1.0f;
    float e = p * cm_bits_f32((uint32_t)((int32_t)n + 127) << 23);
    return x < -87.3f ? 0.0f : e;
#undef ATT_MADD
}

/* Online-softmax step for one key block: S (nq x lds, already scaled), nk
 * keys in the block, query row i may see keys < lim[i]. Writes P into the
 * MR-row panel layout pp[tile][k][r] (pp NULL: P stays in s, read there
 * by the indirection microkernel). Max and sum use 8 fixed partial
 * lanes so they vectorise without reassociation. */
CM_INLINE void att_softmax_body(float *s, int64_t lds, int nq, int nk, const int *lim, float *m,
                                float *l, float *oacc, int64_t ldo, int hdp, float *pp, int mr,
                                int fma)
{
    for (int i = 0; i < nq; i++) {
        float *si = s + i * lds;
        int n = lim[i] < nk ? lim[i] : nk;
        if (n < 0) n = 0;
        float p8[8];
        for (int u = 0; u < 8; u++) p8[u] = -INFINITY;
        int j = 0;
        for (; j + 8 <= n; j += 8)
            for (int u = 0; u < 8; u++) p8[u] = si[j + u] > p8[u] ? si[j + u] : p8[u];
        float mx = -INFINITY;
        for (; j < n; j++) mx = si[j] > mx ? si[j] : mx;
        for (int u = 0; u < 8; u++) mx = p8[u] > mx ? p8[u] : mx;
        float mnew = m[i] > mx ? m[i] : mx;
        float alpha = n > 0 ? cm_vexp(m[i] - mnew) : 1.0f;
        if (n == 0) mnew = m[i];
#pragma omp simd
        for (int jj = 0; jj < n; jj++) si[jj] = att_exp(si[jj] - mnew, fma);
        for (int jj = n; jj < nk; jj++) si[jj] = 0.0f;
        for (int u = 0; u < 8; u++) p8[u] = 0.0f;
        for (j = 0; j + 8 <= n; j += 8)
            for (int u = 0; u < 8; u++) p8[u] += si[j + u];
        float sum = 0.0f;
        for (; j < n; j++) sum += si[j];
        for (int u = 0; u < 8; u++) sum += p8[u];
        l[i] = l[i] * alpha + sum;
        m[i] = mnew;
        if (alpha != 1.0f) {
            float *o = oacc + i * ldo;
#pragma omp simd
            for (int d = 0; d < hdp; d++) o[d] *= alpha;
        }
        if (pp) {
            float *dst = pp + (int64_t)(i / mr) * mr * ATT_BK + (i % mr);
            for (int jj = 0; jj < nk; jj++) dst[jj * mr] = si[jj];
        }
    }
}

CM_TARGET_AVX2 static void att_softmax_avx2(float *s, int64_t lds, int nq, int nk, const int *lim,
                                            float *m, float *l, float *oacc, int64_t ldo, int hdp,
                                            float *pp, int mr)
{
    att_softmax_body(s, lds, nq, nk, lim, m, l, oacc, ldo, hdp, pp, mr, 1);
}
static void att_softmax_c(float *s, int64_t lds, int nq, int nk, const int *lim, float *m, float *l,
                          float *oacc, int64_t ldo, int hdp, float *pp, int mr)
{
    att_softmax_body(s, lds, nq, nk, lim, m, l, oacc, ldo, hdp, pp, mr, 0);
}

typedef struct {
    const cm_attn_params *p;
    const cm_isa *isa;
    int hd16, hdp, bkp, nkb;
    size_t kv_blk; /* floats per packed (b, h, key block) */
    float *kv;     /* packed K^T then V panels, per (b, h, key block) */
} att_ctx;

/* Pack key block kb of (b, h): K^T panels kp[panel][d][j] (hd16 rows per
 * panel) then V panels vp[panel][j][dd] (ATT_BK rows); padding zero. */
static void att_pack_kv(const att_ctx *c, const float *k, const float *v, int b, int h, int kb)
{
    const cm_attn_params *p = c->p;
    const int nr = c->isa->nr, hd = p->hd, s0 = kb * ATT_BK;
    const int nk = p->Tk - s0 < ATT_BK ? p->Tk - s0 : ATT_BK;
    float *kp = c->kv + (((size_t)b * p->heads + h) * c->nkb + kb) * c->kv_blk;
    float *vp = kp + (size_t)c->bkp * c->hd16;
    for (int pn = 0; pn < c->bkp / nr; pn++) {
        float *d = kp + (size_t)pn * c->hd16 * nr;
        for (int jj = 0; jj < nr; jj++) {
            int j = pn * nr + jj;
            const float *kr = k + b * p->k_bstride + (int64_t)(s0 + j) * p->k_stride + h * hd;
            for (int dd = 0; dd < hd; dd++) d[dd * nr + jj] = j < nk ? kr[dd] : 0.0f;
        }
    }
    for (int pn = 0; pn < c->hdp / nr; pn++) {
        float *d = vp + (size_t)pn * ATT_BK * nr;
        for (int j = 0; j < ATT_BK; j++) {
            const float *vr = v + b * p->v_bstride + (int64_t)(s0 + j) * p->v_stride + h * hd;
            for (int dd = 0; dd < nr; dd++) {
                int cc = pn * nr + dd;
                d[j * nr + dd] = (j < nk && cc < hd) ? vr[cc] : 0.0f;
            }
        }
    }
}

static void att_task(const att_ctx *c, const float *q, float *o, int b, int h, int t0, att_buf *bu)
{
    const cm_attn_params *p = c->p;
    const cm_isa *isa = c->isa;
    const int mr = isa->mr, nr = isa->nr, hd = p->hd, hdp = c->hdp, bkp = c->bkp;
    const int nq = p->Tq - t0 < ATT_BQ ? p->Tq - t0 : ATT_BQ;
    const int qtiles = (nq + mr - 1) / mr;
    const int level = cm_isa_level();
    int lim[ATT_BQ];

    /* scale * Q: row-major rows read in place by the indirection kernel,
     * or packed k-major in MR-row panels (kc = hd). Same values either way,
     * and S and P V are the same multiply-add chains, so the same bits. */
    const float *rq[ATT_BQ + 16], *rp[ATT_BQ + 16];
    const int rows = isa->ukr_rows != NULL && !cm_pack_a_forced();
    if (rows)
        for (int i = 0; i < qtiles * mr; i++) {
            float *d = bu->qp + (int64_t)i * hd;
            const float *qr = q + b * p->q_bstride + (int64_t)(t0 + i) * p->q_stride + h * hd;
            for (int dd = 0; dd < hd; dd++) d[dd] = i < nq ? qr[dd] * p->scale : 0.0f;
            rq[i] = d;
            rp[i] = bu->s + (int64_t)i * bkp;
        }
    for (int qt = 0; qt < qtiles && !rows; qt++)
        for (int r = 0; r < mr; r++) {
            int i = qt * mr + r;
            float *d = bu->qp + (int64_t)qt * mr * hd + r;
            const float *qr = q + b * p->q_bstride + (int64_t)(t0 + i) * p->q_stride + h * hd;
            for (int dd = 0; dd < hd; dd++) d[dd * mr] = i < nq ? qr[dd] * p->scale : 0.0f;
        }
    for (int i = 0; i < nq; i++) {
        bu->m[i] = -INFINITY;
        bu->l[i] = 0.0f;
    }
    memset(bu->oacc, 0, (size_t)qtiles * mr * hdp * sizeof(float));

    int kend = p->Tk;
    if (p->causal && t0 + nq < kend) kend = t0 + nq;
    for (int s0 = 0, kb = 0; s0 < kend; s0 += ATT_BK, kb++) {
        int nk = p->Tk - s0 < ATT_BK ? p->Tk - s0 : ATT_BK;
        int kpan = ((kend - s0 < nk ? kend - s0 : nk) + nr - 1) / nr;
        const float *kp = c->kv + (((size_t)b * p->heads + h) * c->nkb + kb) * c->kv_blk;
        const float *vp = kp + (size_t)bkp * c->hd16;
        for (int pn = 0; pn < kpan; pn++)
            for (int qt = 0; qt < qtiles; qt++)
                if (rows)
                    isa->ukr_rows(hd, rq + qt * mr, kp + (size_t)pn * c->hd16 * nr,
                                  bu->s + (int64_t)qt * mr * bkp + pn * nr, bkp, 0);
                else
                    isa->ukr(hd, bu->qp + (int64_t)qt * mr * hd, kp + (size_t)pn * c->hd16 * nr,
                             bu->s + (int64_t)qt * mr * bkp + pn * nr, bkp, 0);
        for (int i = 0; i < nq; i++) lim[i] = (p->causal ? t0 + i + 1 : p->Tk) - s0;
        if (CM_HAVE_AVX2_CLONES && level >= 1)
            att_softmax_avx2(bu->s, bkp, nq, nk, lim, bu->m, bu->l, bu->oacc, hdp, hdp,
                             rows ? NULL : bu->pp, mr);
        else
            att_softmax_c(bu->s, bkp, nq, nk, lim, bu->m, bu->l, bu->oacc, hdp, hdp,
                          rows ? NULL : bu->pp, mr);
        /* P columns past nk meet zero V rows; P rows past nq are discarded. */
        for (int pn = 0; pn < hdp / nr; pn++)
            for (int qt = 0; qt < qtiles; qt++)
                if (rows)
                    isa->ukr_rows(nk, rp + qt * mr, vp + (size_t)pn * ATT_BK * nr,
                                  bu->oacc + (int64_t)qt * mr * hdp + pn * nr, hdp, 1);
                else
                    isa->ukr(nk, bu->pp + (int64_t)qt * mr * ATT_BK, vp + (size_t)pn * ATT_BK * nr,
                         bu->oacc + (int64_t)qt * mr * hdp + pn * nr, hdp, 1);
    }
    for (int i = 0; i < nq; i++) {
        float *orow = o + b * p->o_bstride + (int64_t)(t0 + i) * p->o_stride + h * hd;
        const float *a = bu->oacc + (int64_t)i * hdp;
        float inv = 1.0f / bu->l[i];
        for (int dd = 0; dd < hd; dd++) orow[dd] = a[dd] * inv;
    }
}

void cm_attention(const float *q, const float *k, const float *v, float *o, const cm_attn_params *p)
{
    if (p->B <= 0 || p->heads <= 0 || p->Tq <= 0 || p->Tk <= 0) return;
    att_ctx c;
    c.p = p;
    c.isa = cm_isa_current();
    const int mr = c.isa->mr, nr = c.isa->nr, hd = p->hd;
    c.hd16 = (hd + 15) / 16 * 16;
    c.hdp = (hd + nr - 1) / nr * nr;
    c.bkp = (ATT_BK + nr - 1) / nr * nr;
    c.nkb = (p->Tk + ATT_BK - 1) / ATT_BK;
    c.kv_blk = (size_t)c.bkp * c.hd16 + (size_t)c.hdp * ATT_BK;
    const int bqp = (ATT_BQ + mr - 1) / mr * mr;
    size_t per = (size_t)bqp * c.bkp + (size_t)bqp * c.hdp + (size_t)bqp * ATT_BK +
                 (size_t)bqp * hd + 2 * (size_t)bqp;
    per = (per + 15) / 16 * 16;
    int nt = cm_par_threads(4.0 * p->B * p->heads * (double)p->Tq * p->Tk * hd);
    int64_t nkv = (int64_t)p->B * p->heads * c.nkb;
    c.kv = cm_scratch_take((size_t)nkv * c.kv_blk * sizeof(float), 0, "attention K/V panels");
    float *work = cm_scratch_take((size_t)nt * per * sizeof(float), 1, "attention work");
    int qtn = (p->Tq + ATT_BQ - 1) / ATT_BQ;
    int64_t ntask = (int64_t)p->B * p->heads * qtn;

#pragma omp parallel num_threads(nt)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nkv; t++) {
            int kb = (int)(t % c.nkb);
            int bh = (int)(t / c.nkb);
            att_pack_kv(&c, k, v, bh / p->heads, bh % p->heads, kb);
        }
        float *w = work + (size_t)tid * per;
        att_buf bu;
        bu.s = w;
        bu.oacc = bu.s + (size_t)bqp * c.bkp;
        bu.pp = bu.oacc + (size_t)bqp * c.hdp;
        bu.qp = bu.pp + (size_t)bqp * ATT_BK;
        bu.m = bu.qp + (size_t)bqp * hd;
        bu.l = bu.m + bqp;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntask; t++) {
            int qt = (int)(t % qtn);
            int bh = (int)(t / qtn);
            att_task(&c, q, o, bh / p->heads, bh % p->heads, qt * ATT_BQ, &bu);
        }
    }
    cm_scratch_give(work);
    cm_scratch_give(c.kv);
}

/* ------------------------------------------------------------------------
 * GroupNorm (+ SiLU): statistics per (batch, chunk of GN_CHUNK pixels,
 * group) in double, combined over chunks in order; mean first, then the
 * sum of squared deviations (two passes, like the reference); then one
 * normalise pass y = x * a[c] + s[c] (fused SiLU). Within a chunk the sums
 * run per channel over the pixels (vectorised along c, no dependency
 * chain), then over the group's channels in order.
 * ---------------------------------------------------------------------- */

#define GN_CHUNK 64

/* acc[c] = sum over the n pixels of x[i][c] (mu NULL) or of
 * (x[i][c] - mu[c])^2, in double, pixel order. */
CM_INLINE void gn_stats_body(const float *x, int64_t n, int C, const double *mu, double *acc)
{
    for (int c = 0; c < C; c++) acc[c] = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * C;
        if (mu) {
#pragma omp simd
            for (int c = 0; c < C; c++) {
                double d = (double)xr[c] - mu[c];
                acc[c] += d * d;
            }
        } else {
#pragma omp simd
            for (int c = 0; c < C; c++) acc[c] += (double)xr[c];
        }
    }
}
CM_TARGET_AVX2 static void gn_stats_avx2(const float *x, int64_t n, int C, const double *mu,
                                         double *acc)
{
    gn_stats_body(x, n, C, mu, acc);
}
static void gn_stats_c(const float *x, int64_t n, int C, const double *mu, double *acc)
{
    gn_stats_body(x, n, C, mu, acc);
}

CM_INLINE void gn_norm_body(const float *x, float *y, int64_t n, int C, const float *a,
                            const float *s, int silu)
{
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * C;
        float *yr = y + i * C;
        if (silu) {
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float v = xr[c] * a[c] + s[c];
                yr[c] = v / (1.0f + cm_vexp(-v));
            }
        } else {
#pragma omp simd
            for (int c = 0; c < C; c++) yr[c] = xr[c] * a[c] + s[c];
        }
    }
}
CM_TARGET_AVX2 static void gn_norm_avx2(const float *x, float *y, int64_t n, int C, const float *a,
                                        const float *s, int silu)
{
    gn_norm_body(x, y, n, C, a, s, silu);
}
static void gn_norm_c(const float *x, float *y, int64_t n, int C, const float *a, const float *s,
                      int silu)
{
    gn_norm_body(x, y, n, C, a, s, silu);
}

void cm_group_norm(const float *x, float *y, int B, int64_t HW, int C, int groups, float eps,
                   const cm_wview *gamma, const cm_wview *beta, int silu)
{
    int cg = C / groups;
    CM_ASSERT(cg * groups == C);
    int64_t nch = (HW + GN_CHUNK - 1) / GN_CHUNK;
    int64_t items = (int64_t)B * nch;
    double *part = cm_scratch_take((size_t)(items * groups + 1) * sizeof(double), 0, "group norm");
    double *mean = cm_scratch_take((size_t)B * groups * sizeof(double), 0, "group norm");
    /* per-channel mean (pass 1) and per-thread channel sums */
    double *mu_c = cm_scratch_take((size_t)B * C * sizeof(double), 0, "group norm");
    float *ab = cm_scratch_take((size_t)B * 2 * C * sizeof(float), 0, "group norm");
    float *gf = vec_f32(gamma, C), *bf = vec_f32(beta, C);
    const int nt = cm_par_threads(8.0 * B * (double)HW * C);
    double *chs = cm_scratch_take((size_t)nt * C * sizeof(double), 0, "group norm");
    double cnt = (double)HW * cg;
    const int level = cm_isa_level();

    for (int pass = 0; pass < 2; pass++) {
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t it = 0; it < items; it++) {
            int64_t b = it / nch, i0 = (it % nch) * GN_CHUNK;
            int64_t i1 = i0 + GN_CHUNK < HW ? i0 + GN_CHUNK : HW;
            double *pr = part + it * groups;
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            double *acc = chs + (size_t)tid * C;
            const double *mu = pass ? mu_c + b * C : NULL;
            if (CM_HAVE_AVX2_CLONES && level >= 1)
                gn_stats_avx2(x + (b * HW + i0) * C, i1 - i0, C, mu, acc);
            else
                gn_stats_c(x + (b * HW + i0) * C, i1 - i0, C, mu, acc);
            for (int g = 0; g < groups; g++) {
                double sg = 0;
                for (int c = g * cg; c < (g + 1) * cg; c++) sg += acc[c];
                pr[g] = sg;
            }
        }
        for (int b = 0; b < B; b++)
            for (int g = 0; g < groups; g++) {
                double acc = 0;
                for (int64_t ch = 0; ch < nch; ch++) acc += part[(b * nch + ch) * groups + g];
                if (pass == 0) {
                    mean[b * groups + g] = acc / cnt;
                    for (int c = g * cg; c < (g + 1) * cg; c++) mu_c[b * C + c] = acc / cnt;
                } else {
                    float rstd = (float)(1.0 / sqrt(acc / cnt + eps));
                    float fm = (float)mean[b * groups + g];
                    for (int c = g * cg; c < (g + 1) * cg; c++) {
                        float ga = gf ? gf[c] : 1.0f, be = bf ? bf[c] : 0.0f;
                        ab[(int64_t)b * 2 * C + c] = rstd * ga;
                        ab[(int64_t)b * 2 * C + C + c] = be - fm * rstd * ga;
                    }
                }
            }
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t it = 0; it < items; it++) {
        int64_t b = it / nch, i0 = (it % nch) * GN_CHUNK;
        int64_t n = i0 + GN_CHUNK < HW ? GN_CHUNK : HW - i0;
        const float *a = ab + b * 2 * C, *s = a + C;
        if (CM_HAVE_AVX2_CLONES && level >= 1)
            gn_norm_avx2(x + (b * HW + i0) * C, y + (b * HW + i0) * C, n, C, a, s, silu);
        else
            gn_norm_c(x + (b * HW + i0) * C, y + (b * HW + i0) * C, n, C, a, s, silu);
    }
    cm_scratch_give(chs);
    cm_scratch_give(bf);
    cm_scratch_give(gf);
    cm_scratch_give(ab);
    cm_scratch_give(mu_c);
    cm_scratch_give(mean);
    cm_scratch_give(part);
}

/* ------------------------------------------------------------------------
 * LayerNorm, RMS norm, activations, GEGLU
 * ---------------------------------------------------------------------- */

void cm_layer_norm(const float *x, float *y, int64_t M, int C, float eps, const cm_wview *gamma,
                   const cm_wview *beta)
{
    float *gf = vec_f32(gamma, C), *bf = vec_f32(beta, C);
#pragma omp parallel for schedule(static) num_threads(cm_par_threads(8.0 * (double)M * C))
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * C;
        double sum = 0, sq = 0;
        for (int c = 0; c < C; c++) sum += xr[c];
        double mean = sum / C;
        for (int c = 0; c < C; c++) sq += (xr[c] - mean) * (xr[c] - mean);
        float rstd = (float)(1.0 / sqrt(sq / C + eps)), fm = (float)mean;
        float *yr = y + m * C;
        for (int c = 0; c < C; c++) {
            float v = (xr[c] - fm) * rstd;
            if (gf) v *= gf[c];
            if (bf) v += bf[c];
            yr[c] = v;
        }
    }
    cm_scratch_give(gf);
    cm_scratch_give(bf);
}

void cm_rms_norm(const float *x, float *y, int64_t M, int C, float eps, const cm_wview *gamma)
{
    float *gf = vec_f32(gamma, C);
#pragma omp parallel for schedule(static) num_threads(cm_par_threads(8.0 * (double)M * C))
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * C;
        double sq = 0;
        for (int c = 0; c < C; c++) sq += (double)xr[c] * xr[c];
        float r = (float)(1.0 / sqrt(sq / C + eps));
        for (int c = 0; c < C; c++) y[m * C + c] = xr[c] * r * (gf ? gf[c] : 1.0f);
    }
    cm_scratch_give(gf);
}

CM_INLINE void act_body(float *x, int64_t n, cm_act act)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) x[i] = cm_vact(x[i], act);
}
CM_TARGET_AVX2 static void act_avx2(float *x, int64_t n, cm_act act) { act_body(x, n, act); }
static void act_c(float *x, int64_t n, cm_act act) { act_body(x, n, act); }

#define ACT_CHUNK 4096
void cm_act_inplace(float *x, int64_t n, cm_act act)
{
    if (act == CM_ACT_NONE) return;
    const int level = cm_isa_level();
#pragma omp parallel for schedule(static) num_threads(cm_par_threads(20.0 * (double)n))
    for (int64_t i0 = 0; i0 < n; i0 += ACT_CHUNK) {
        int64_t m = n - i0 < ACT_CHUNK ? n - i0 : ACT_CHUNK;
        if (CM_HAVE_AVX2_CLONES && level >= 1)
            act_avx2(x + i0, m, act);
        else
            act_c(x + i0, m, act);
    }
}

CM_INLINE void geglu_body(const float *x, float *y, int64_t N)
{
#pragma omp simd
    for (int64_t n = 0; n < N; n++) y[n] = x[n] * cm_vact(x[N + n], CM_ACT_GELU);
}
CM_TARGET_AVX2 static void geglu_avx2(const float *x, float *y, int64_t N) { geglu_body(x, y, N); }
static void geglu_c(const float *x, float *y, int64_t N) { geglu_body(x, y, N); }

void cm_geglu(const float *x, float *y, int64_t M, int64_t N)
{
    const int level = cm_isa_level();
#pragma omp parallel for schedule(static) num_threads(cm_par_threads(20.0 * (double)M * N))
    for (int64_t m = 0; m < M; m++) {
        if (CM_HAVE_AVX2_CLONES && level >= 1)
            geglu_avx2(x + m * 2 * N, y + m * N, N);
        else
            geglu_c(x + m * 2 * N, y + m * N, N);
    }
}
