/* common_kernels.c — test case common_kernels: every fast kernel in
 * common/kernels.c + gemm.c against its scalar _ref twin (kernels_ref.c),
 * on odd sizes, strided rows, F32/F16/BF16 weights at unaligned addresses,
 * for every microkernel ISA the CPU supports; plus the vectorisable math
 * helpers against libm, and thread-count determinism (1 vs 2 threads,
 * memcmp).
 *
 * Tolerance (stated once): a dot product of length K in float32 with
 * different summation order / FMA differs from the reference by about
 * eps * sqrt(K) relative to the output scale, so we accept
 *   max|fast - ref| <= TOL(K) * max|ref|,  TOL(K) = 4e-6 * sqrt(K) + 1e-6.
 * The reference is itself float32, so this bounds both errors together.
 */
#include "testutil.h"

#include "simd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double tol_k(int64_t K) { return 4e-6 * sqrt((double)K) + 1e-6; }

static uint64_t g_seed = 12345;
static float frand(void)
{
    g_seed = g_seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((g_seed >> 40) & 0xffffff) / (float)0x1000000 * 2.0f - 1.0f;
}
static float *rand_buf(int64_t n)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    ck_assert(p);
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* A weight view in a given dtype, stored one byte off alignment. The values
 * are rounded to the dtype, so fast and ref see the same numbers. */
typedef struct {
    unsigned char *mem;
    cm_wview v;
} wbuf;
static void wbuf_make(wbuf *w, cm_dtype dt, int ndim, const int64_t *shape, float scale)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    size_t es = cm_dtype_size(dt);
    w->mem = malloc((size_t)n * es + 8);
    ck_assert(w->mem);
    unsigned char *d = w->mem + 1; /* unaligned on purpose */
    for (int64_t i = 0; i < n; i++) {
        float f = frand() * scale;
        if (dt == CM_F32) memcpy(d + 4 * i, &f, 4);
        else {
            uint16_t h = dt == CM_F16 ? cm_f32_to_f16(f) : cm_f32_to_bf16(f);
            memcpy(d + 2 * i, &h, 2);
        }
    }
    memset(&w->v, 0, sizeof w->v);
    w->v.data = d;
    w->v.dtype = dt;
    w->v.ndim = ndim;
    for (int i = 0; i < ndim; i++) w->v.shape[i] = shape[i];
}
static void wbuf_free(wbuf *w) { free(w->mem); }

/* The ISAs to exercise: every one the CPU supports. */
static const char *isas[] = {"portable", "avx2", "avx512"};
#define NISA 3
#define FOR_ISA(name)                                                        \
    for (int ii_ = 0; ii_ < NISA; ii_++)                                     \
        for (const char *name = isas[ii_]; name && cm_isa_force(name); name = NULL)

static const cm_dtype dtypes[3] = {CM_F32, CM_F16, CM_BF16};

/* ------------------------------------------------------------------ helpers */

START_TEST(test_h2f_exact)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float a = cm_h2f((uint16_t)h), b = cm_f16_to_f32((uint16_t)h);
        if (isnan(b)) ck_assert_msg(isnan(a), "half %04x", h);
        else ck_assert_msg(memcmp(&a, &b, 4) == 0, "half %04x: %g vs %g", h, a, b);
    }
    for (uint32_t h = 0; h < 65536; h += 7) {
        float a = cm_bf2f((uint16_t)h), b = cm_bf16_to_f32((uint16_t)h);
        if (!isnan(b)) ck_assert(memcmp(&a, &b, 4) == 0);
    }
}
END_TEST

START_TEST(test_vmath)
{
    double worst_exp = 0, worst_act[5] = {0};
    for (int i = -200000; i <= 200000; i++) {
        float x = (float)i * 4.35e-4f; /* [-87, 87] */
        double e = exp((double)x), g = cm_vexp(x);
        double rel = fabs(g - e) / e;
        if (rel > worst_exp) worst_exp = rel;
    }
    ck_assert_msg(worst_exp < 1e-6, "exp rel err %g", worst_exp);
    ck_assert(cm_vexp(-1000.0f) == 0.0f && cm_vexp(-INFINITY) == 0.0f);
    ck_assert(isinf(cm_vexp(1000.0f)));
    for (int a = 1; a < 5; a++)
        for (int i = -20000; i <= 20000; i++) {
            float x = (float)i * 1e-3f; /* [-20, 20] */
            float want = cm_act_scalar(x, (cm_act)a), got = cm_vact(x, (cm_act)a);
            double d = fabs((double)got - want) / (fabs(x) > 1 ? fabs(x) : 1);
            if (d > worst_act[a]) worst_act[a] = d;
        }
    for (int a = 1; a < 5; a++) ck_assert_msg(worst_act[a] < 1e-6, "act %d err %g", a, worst_act[a]);
}
END_TEST

/* ------------------------------------------------------------------ linear */

typedef struct {
    int64_t M, N, K;
} mnk;
static const mnk lin_shapes[] = {{1, 1, 1},   {7, 9, 63},   {9, 7, 65},   {63, 65, 9},
                                 {65, 63, 7}, {130, 33, 300}, {1, 70, 257}, {100, 17, 513}};

START_TEST(test_linear_vs_ref)
{
    FOR_ISA(isa)
    {
        for (size_t si = 0; si < sizeof lin_shapes / sizeof *lin_shapes; si++) {
            mnk s = lin_shapes[si];
            cm_dtype dt = dtypes[si % 3];
            int64_t ldx = s.K + (si & 1) * 3, ldy = s.N + (si & 2 ? 5 : 0);
            float *x = rand_buf(s.M * ldx), *res = rand_buf(s.M * ldy);
            float *y1 = rand_buf(s.M * ldy), *y2 = malloc((size_t)(s.M * ldy) * 4);
            memcpy(y2, y1, (size_t)(s.M * ldy) * 4);
            wbuf w, b;
            int64_t ws[2] = {s.N, s.K}, bs[1] = {s.N};
            wbuf_make(&w, dt, 2, ws, 1.0f);
            wbuf_make(&b, dtypes[(si + 1) % 3], 1, bs, 1.0f);
            cm_act act = (cm_act)(si % 5);
            const float *r = si % 2 ? res : NULL;
            cm_linear(x, ldx, s.M, s.K, &w.v, si % 3 ? &b.v : NULL, act, r, y1, ldy);
            cm_linear_ref(x, ldx, s.M, s.K, &w.v, si % 3 ? &b.v : NULL, act, r, y2, ldy);
            char what[128];
            snprintf(what, sizeof what, "linear[%s] M%lld N%lld K%lld %s", isa, (long long)s.M,
                     (long long)s.N, (long long)s.K, cm_dtype_name(dt));
            TU_ASSERT_CLOSE(what, y1, y2, s.M * ldy, tol_k(s.K));
            /* In-place residual: y aliases residual. */
            memcpy(y1, res, (size_t)(s.M * ldy) * 4);
            memcpy(y2, res, (size_t)(s.M * ldy) * 4);
            cm_linear(x, ldx, s.M, s.K, &w.v, &b.v, CM_ACT_NONE, y1, y1, ldy);
            cm_linear_ref(x, ldx, s.M, s.K, &w.v, &b.v, CM_ACT_NONE, res, y2, ldy);
            TU_ASSERT_CLOSE(what, y1, y2, s.M * ldy, tol_k(s.K));
            wbuf_free(&w);
            wbuf_free(&b);
            free(x), free(res), free(y1), free(y2);
        }
    }
    cm_isa_force(NULL);
}
END_TEST

START_TEST(test_gemm_f32_vs_naive)
{
    FOR_ISA(isa)
    {
        for (size_t si = 0; si < sizeof lin_shapes / sizeof *lin_shapes; si++) {
            mnk s = lin_shapes[si];
            for (int nk = 0; nk < 2; nk++) {
                int64_t lda = s.K + 1, ldb = (nk ? s.K : s.N) + 2, ldc = s.N + 3;
                float *A = rand_buf(s.M * lda), *B = rand_buf((nk ? s.N : s.K) * ldb);
                float *C1 = rand_buf(s.M * ldc), *C2 = malloc((size_t)(s.M * ldc) * 4);
                memcpy(C2, C1, (size_t)(s.M * ldc) * 4);
                float beta = (float)((si + nk) & 1);
                cm_gemm_f32(s.M, s.N, s.K, A, lda, B, ldb, nk, beta, C1, ldc);
                for (int64_t m = 0; m < s.M; m++)
                    for (int64_t n = 0; n < s.N; n++) {
                        float acc = 0;
                        for (int64_t k = 0; k < s.K; k++)
                            acc += A[m * lda + k] * (nk ? B[n * ldb + k] : B[k * ldb + n]);
                        C2[m * ldc + n] = beta != 0 ? C2[m * ldc + n] + acc : acc;
                    }
                char what[128];
                snprintf(what, sizeof what, "gemm_f32[%s] M%lld N%lld K%lld nk%d", isa,
                         (long long)s.M, (long long)s.N, (long long)s.K, nk);
                TU_ASSERT_CLOSE(what, C1, C2, s.M * ldc, tol_k(s.K));
                free(A), free(B), free(C1), free(C2);
            }
        }
    }
    cm_isa_force(NULL);
}
END_TEST

/* -------------------------------------------------------------------- conv */

typedef struct {
    int B, H, W, C, OC, k, stride, pad;
} convs;
static const convs conv_shapes[] = {
    {1, 1, 1, 1, 1, 3, 1, 1},   {2, 9, 7, 19, 33, 3, 1, 1}, {1, 7, 9, 7, 17, 3, 2, 1},
    {2, 8, 6, 20, 9, 3, 2, 1},  {1, 5, 5, 33, 65, 1, 1, 0}, {1, 6, 5, 3, 7, 3, 1, 0},
    {1, 3, 4, 300, 18, 3, 1, 1}, {1, 9, 9, 5, 6, 1, 2, 0},
};

START_TEST(test_conv_vs_ref)
{
    FOR_ISA(isa)
    {
        for (size_t si = 0; si < sizeof conv_shapes / sizeof *conv_shapes; si++) {
            convs s = conv_shapes[si];
            cm_conv_params p = {s.stride, s.pad};
            int OH = (s.H + 2 * s.pad - s.k) / s.stride + 1, OW = (s.W + 2 * s.pad - s.k) / s.stride + 1;
            int64_t nin = (int64_t)s.B * s.H * s.W * s.C, nout = (int64_t)s.B * OH * OW * s.OC;
            float *x = rand_buf(nin), *res = rand_buf(nout), *y1 = rand_buf(nout), *y2 = rand_buf(nout);
            wbuf w, b;
            int64_t ws[4] = {s.OC, s.C, s.k, s.k}, bs[1] = {s.OC};
            wbuf_make(&w, dtypes[si % 3], 4, ws, 0.3f);
            wbuf_make(&b, CM_F16, 1, bs, 1.0f);
            const float *r = si & 1 ? res : NULL;
            cm_conv2d(x, s.B, s.H, s.W, s.C, &w.v, &b.v, p, r, y1);
            cm_conv2d_ref(x, s.B, s.H, s.W, s.C, &w.v, &b.v, p, r, y2);
            char what[160];
            snprintf(what, sizeof what, "conv[%s] B%d %dx%d C%d OC%d k%d s%d p%d %s", isa, s.B,
                     s.H, s.W, s.C, s.OC, s.k, s.stride, s.pad, cm_dtype_name(w.v.dtype));
            TU_ASSERT_CLOSE(what, y1, y2, nout, tol_k((int64_t)s.C * s.k * s.k));
            wbuf_free(&w);
            wbuf_free(&b);
            free(x), free(res), free(y1), free(y2);
        }
    }
    cm_isa_force(NULL);
}
END_TEST

START_TEST(test_upsample_conv_vs_ref)
{
    static const int sh[][5] = {{1, 1, 1, 1, 1}, {2, 5, 3, 9, 19}, {1, 4, 7, 17, 33}, {1, 3, 3, 40, 8}};
    FOR_ISA(isa)
    {
        for (size_t si = 0; si < sizeof sh / sizeof *sh; si++) {
            int B = sh[si][0], H = sh[si][1], W = sh[si][2], C = sh[si][3], OC = sh[si][4];
            int64_t nout = (int64_t)B * 4 * H * W * OC;
            float *x = rand_buf((int64_t)B * H * W * C), *y1 = rand_buf(nout), *y2 = rand_buf(nout);
            wbuf w, b;
            int64_t ws[4] = {OC, C, 3, 3}, bs[1] = {OC};
            wbuf_make(&w, dtypes[si % 3], 4, ws, 0.3f);
            wbuf_make(&b, CM_F32, 1, bs, 1.0f);
            const cm_wview *bv = si & 1 ? &b.v : NULL;
            cm_upsample2x_conv3x3(x, B, H, W, C, &w.v, bv, y1);
            cm_upsample2x_conv3x3_ref(x, B, H, W, C, &w.v, bv, y2);
            char what[128];
            snprintf(what, sizeof what, "upconv[%s] B%d %dx%d C%d OC%d", isa, B, H, W, C, OC);
            TU_ASSERT_CLOSE(what, y1, y2, nout, tol_k(9 * C));
            wbuf_free(&w);
            wbuf_free(&b);
            free(x), free(y1), free(y2);
        }
    }
    cm_isa_force(NULL);
}
END_TEST

/* --------------------------------------------------------------- attention */

/* Token-major q/k/v with heads interleaved in the row (like a fused qkv
 * projection: row stride > heads*hd). */
static void run_attn(const char *isa, int B, int heads, int Tq, int Tk, int hd, int causal)
{
    cm_attn_params p = {0};
    p.B = B, p.heads = heads, p.Tq = Tq, p.Tk = Tk, p.hd = hd, p.causal = causal;
    p.scale = 1.0f / sqrtf((float)hd);
    p.q_stride = 3 * heads * hd + 1;
    p.k_stride = p.v_stride = 2 * heads * hd + 3;
    p.o_stride = heads * hd + 2;
    p.q_bstride = p.q_stride * Tq;
    p.k_bstride = p.v_bstride = p.k_stride * Tk;
    p.o_bstride = p.o_stride * Tq;
    float *q = rand_buf(B * p.q_bstride), *kv = rand_buf(B * p.k_bstride + heads * hd);
    for (int64_t i = 0; i < B * p.q_bstride; i++) q[i] *= 3.0f; /* peaky softmax */
    const float *k = kv, *v = kv + heads * hd;
    int64_t no = B * p.o_bstride;
    float *o1 = rand_buf(no), *o2 = malloc((size_t)no * 4);
    memcpy(o2, o1, (size_t)no * 4);
    cm_attention(q, k, v, o1, &p);
    cm_attention_ref(q, k, v, o2, &p);
    char what[128];
    snprintf(what, sizeof what, "attention[%s] B%d h%d Tq%d Tk%d hd%d causal%d", isa, B, heads, Tq,
             Tk, hd, causal);
    TU_ASSERT_CLOSE(what, o1, o2, no, tol_k(Tk > hd ? Tk : hd));
    free(q), free(kv), free(o1), free(o2);
}

START_TEST(test_attention_vs_ref)
{
    FOR_ISA(isa)
    {
        run_attn(isa, 1, 1, 1, 1, 8, 0);
        run_attn(isa, 2, 3, 7, 77, 40, 0);
        run_attn(isa, 1, 2, 130, 130, 16, 1);
        run_attn(isa, 2, 1, 65, 300, 64, 0);
        run_attn(isa, 1, 2, 50, 9, 80, 0);
        run_attn(isa, 1, 1, 200, 150, 8, 1); /* causal with Tq != Tk */
        run_attn(isa, 1, 2, 9, 257, 40, 1);
    }
    cm_isa_force(NULL);
}
END_TEST

/* ------------------------------------------------------- norms, activations */

START_TEST(test_group_norm_vs_ref)
{
    static const int sh[][4] = {{1, 1, 2, 1}, {2, 130, 64, 32}, {1, 7, 96, 32}, {2, 65, 20, 4}};
    FOR_ISA(isa)
    {
        for (size_t si = 0; si < sizeof sh / sizeof *sh; si++) {
            int B = sh[si][0], HW = sh[si][1], C = sh[si][2], G = sh[si][3];
            int64_t n = (int64_t)B * HW * C;
            float *x = rand_buf(n), *y1 = malloc((size_t)n * 4), *y2 = malloc((size_t)n * 4);
            for (int64_t i = 0; i < n; i++) x[i] = x[i] * 3.0f + 5.0f; /* offset mean */
            wbuf g, b;
            int64_t cs[1] = {C};
            wbuf_make(&g, CM_F16, 1, cs, 2.0f);
            wbuf_make(&b, CM_BF16, 1, cs, 1.0f);
            for (int silu = 0; silu < 2; silu++) {
                cm_group_norm(x, y1, B, HW, C, G, 1e-5f, &g.v, &b.v, silu);
                cm_group_norm_ref(x, y2, B, HW, C, G, 1e-5f, &g.v, &b.v, silu);
                char what[128];
                snprintf(what, sizeof what, "group_norm[%s] B%d HW%d C%d G%d silu%d", isa, B, HW, C,
                         G, silu);
                TU_ASSERT_CLOSE(what, y1, y2, n, 1e-5);
                /* in place */
                memcpy(y1, x, (size_t)n * 4);
                cm_group_norm(y1, y1, B, HW, C, G, 1e-5f, &g.v, &b.v, silu);
                TU_ASSERT_CLOSE(what, y1, y2, n, 1e-5);
            }
            wbuf_free(&g);
            wbuf_free(&b);
            free(x), free(y1), free(y2);
        }
    }
    cm_isa_force(NULL);
}
END_TEST

START_TEST(test_act_geglu)
{
    FOR_ISA(isa)
    {
        int64_t M = 5, N = 4099;
        float *x = rand_buf(M * 2 * N), *y = malloc((size_t)(M * N) * 4), *w = malloc((size_t)(M * N) * 4);
        for (int64_t i = 0; i < M * 2 * N; i++) x[i] *= 6.0f;
        cm_geglu(x, y, M, N);
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++)
                w[m * N + n] = x[m * 2 * N + n] * cm_act_scalar(x[m * 2 * N + N + n], CM_ACT_GELU);
        TU_ASSERT_CLOSE("geglu", y, w, M * N, 2e-6);
        for (int a = 1; a < 5; a++) {
            memcpy(y, x, (size_t)(M * N) * 4);
            cm_act_inplace(y, M * N, (cm_act)a);
            for (int64_t i = 0; i < M * N; i++) w[i] = cm_act_scalar(x[i], (cm_act)a);
            TU_ASSERT_CLOSE("act_inplace", y, w, M * N, 2e-6);
        }
        free(x), free(y), free(w);
    }
    cm_isa_force(NULL);
}
END_TEST

/* ------------------------------------------------------------------ threads */

#define RUN_TWICE(n, out, call)                                              \
    do {                                                                     \
        float *r1_ = malloc((size_t)(n) * 4);                                \
        cm_threads_set(1);                                                   \
        call;                                                                \
        memcpy(r1_, out, (size_t)(n) * 4);                                   \
        memset(out, 0, (size_t)(n) * 4);                                     \
        cm_threads_set(2);                                                   \
        call;                                                                \
        ck_assert_msg(memcmp(r1_, out, (size_t)(n) * 4) == 0, "%s: 1 vs 2 threads differ", #call); \
        free(r1_);                                                           \
    } while (0)

START_TEST(test_threads_bit_identical)
{
    cm_par_min_work = 0; /* split even these small shapes over the threads */
    FOR_ISA(isa)
    {
        int64_t M = 301, N = 97, K = 333;
        float *x = rand_buf(M * K), *y = rand_buf(M * N);
        wbuf w, b;
        int64_t ws[2] = {N, K}, bs[1] = {N};
        wbuf_make(&w, CM_F16, 2, ws, 1.0f);
        wbuf_make(&b, CM_F32, 1, bs, 1.0f);
        RUN_TWICE(M * N, y, cm_linear(x, K, M, K, &w.v, &b.v, CM_ACT_GELU, NULL, y, N));
        wbuf_free(&w);
        {
            int64_t gs[2] = {2 * 48, K}, gb[1] = {2 * 48};
            wbuf wg, bg;
            wbuf_make(&wg, CM_F16, 2, gs, 1.0f);
            wbuf_make(&bg, CM_F32, 1, gb, 1.0f);
            RUN_TWICE(M * 48, y, cm_linear_geglu(x, K, M, K, &wg.v, &bg.v, y, 48));
            wbuf_free(&wg);
            wbuf_free(&bg);
        }

        int B = 2, H = 11, W = 9, C = 21, OC = 35;
        float *xi = rand_buf((int64_t)B * H * W * C), *yo = rand_buf((int64_t)B * 4 * H * W * OC);
        int64_t cw[4] = {OC, C, 3, 3};
        wbuf_make(&w, CM_BF16, 4, cw, 0.3f);
        RUN_TWICE((int64_t)B * H * W * OC, yo,
                  cm_conv2d(xi, B, H, W, C, &w.v, NULL, (cm_conv_params){1, 1}, NULL, yo));
        RUN_TWICE((int64_t)B * 4 * H * W * OC, yo,
                  cm_upsample2x_conv3x3(xi, B, H, W, C, &w.v, NULL, yo));
        wbuf_free(&w);

        cm_attn_params p = {0};
        p.B = 2, p.heads = 3, p.Tq = 150, p.Tk = 140, p.hd = 40, p.scale = 0.15f;
        p.q_stride = p.k_stride = p.v_stride = p.o_stride = 120;
        p.q_bstride = p.o_bstride = 150 * 120;
        p.k_bstride = p.v_bstride = 140 * 120;
        float *q = rand_buf(2 * 150 * 120), *kk = rand_buf(2 * 140 * 120), *o = rand_buf(2 * 150 * 120);
        RUN_TWICE(2 * 150 * 120, o, cm_attention(q, kk, kk, o, &p));
        p.causal = 1;
        RUN_TWICE(2 * 150 * 120, o, cm_attention(q, kk, kk, o, &p));

        int64_t gc[1] = {64};
        wbuf_make(&w, CM_F32, 1, gc, 1.0f);
        RUN_TWICE(2 * 142 * 64, o, cm_group_norm(q, o, 2, 142, 64, 32, 1e-6f, &w.v, &w.v, 1));
        wbuf_free(&w);
        wbuf_free(&b);
        free(x), free(y), free(xi), free(yo), free(q), free(kk), free(o);
    }
    cm_threads_set(0);
    cm_isa_force(NULL);
    cm_par_min_work = CM_PAR_MIN_WORK;
}
END_TEST

/* cm_linear_geglu: bit-identical to cm_linear into (M,2N) then cm_geglu,
 * on odd sizes, strided rows, every dtype and ISA. */
START_TEST(test_linear_geglu)
{
    static const mnk shapes[] = {{1, 1, 1}, {7, 9, 63}, {65, 17, 33}, {130, 40, 300}, {9, 33, 7}};
    FOR_ISA(isa)
    {
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
            mnk s = shapes[si];
            cm_dtype dt = dtypes[si % 3];
            int64_t ldx = s.K + (si & 1) * 3, ldy = s.N + (si & 2 ? 5 : 0);
            float *x = rand_buf(s.M * ldx), *t = rand_buf(s.M * 2 * s.N);
            float *y1 = rand_buf(s.M * ldy), *y2 = malloc((size_t)(s.M * ldy) * 4);
            memcpy(y2, y1, (size_t)(s.M * ldy) * 4);
            wbuf w, b;
            int64_t ws[2] = {2 * s.N, s.K}, bs[1] = {2 * s.N};
            wbuf_make(&w, dt, 2, ws, 1.0f);
            wbuf_make(&b, dtypes[(si + 1) % 3], 1, bs, 1.0f);
            const cm_wview *bv = si % 4 == 3 ? NULL : &b.v;
            cm_linear_geglu(x, ldx, s.M, s.K, &w.v, bv, y1, ldy);
            cm_linear(x, ldx, s.M, s.K, &w.v, bv, CM_ACT_NONE, NULL, t, 2 * s.N);
            for (int64_t m = 0; m < s.M; m++) cm_geglu(t + m * 2 * s.N, y2 + m * ldy, 1, s.N);
            ck_assert_msg(memcmp(y1, y2, (size_t)(s.M * ldy) * 4) == 0,
                          "linear_geglu[%s] M%lld N%lld K%lld differs from linear+geglu", isa,
                          (long long)s.M, (long long)s.N, (long long)s.K);
            wbuf_free(&w);
            wbuf_free(&b);
            free(x), free(t), free(y1), free(y2);
        }
    }
    cm_isa_force(NULL);
}
END_TEST

/* Packed-weight cache: hits give the same bits as packing afresh, changed
 * contents at the same address are noticed, the budget bounds the resident
 * bytes (first come, first kept), and budget 0 disables it. */
START_TEST(test_pack_cache)
{
    size_t saved = cm_pack_cache_budget(), bytes;
    long h0, h1, m0, m1;
    int64_t M = 37, N = 70, K = 129;
    float *x = rand_buf(M * K), *y1 = rand_buf(M * N), *y2 = rand_buf(M * N);
    wbuf w, w2;
    int64_t ws[2] = {N, K};
    wbuf_make(&w, CM_F16, 2, ws, 1.0f);
    wbuf_make(&w2, CM_BF16, 2, ws, 1.0f);

    cm_pack_cache_set_budget(0);
    cm_linear(x, K, M, K, &w.v, NULL, CM_ACT_NONE, NULL, y1, N);
    cm_pack_cache_stats(&bytes, NULL, NULL);
    ck_assert_uint_eq(bytes, 0);

    cm_pack_cache_set_budget((size_t)64 << 20);
    cm_pack_cache_clear();
    cm_pack_cache_stats(&bytes, &h0, &m0);
    ck_assert_uint_eq(bytes, 0);
    cm_linear(x, K, M, K, &w.v, NULL, CM_ACT_NONE, NULL, y2, N); /* miss, cached */
    cm_linear(x, K, M, K, &w.v, NULL, CM_ACT_NONE, NULL, y2, N); /* hit */
    cm_pack_cache_stats(&bytes, &h1, &m1);
    ck_assert_int_eq(h1 - h0, 1);
    ck_assert_int_eq(m1 - m0, 1);
    ck_assert_uint_ge(bytes, (size_t)(N * K) * 4);
    ck_assert_msg(memcmp(y1, y2, (size_t)(M * N) * 4) == 0, "cached panels change the result");

    /* New contents at the same address: repacked, result follows. */
    for (int64_t i = 0; i < N * K; i++) {
        uint16_t hv = cm_f32_to_f16(frand());
        memcpy((unsigned char *)w.v.data + 2 * i, &hv, 2);
    }
    cm_linear(x, K, M, K, &w.v, NULL, CM_ACT_NONE, NULL, y1, N);
    cm_linear_ref(x, K, M, K, &w.v, NULL, CM_ACT_NONE, NULL, y2, N);
    TU_ASSERT_CLOSE("linear after weights changed in place", y1, y2, M * N, tol_k(K));

    /* Budget for one entry: the first stays, the second weight is not
     * cached (no eviction: a cycle of layers longer than the budget keeps
     * hitting on the ones that fit), and its results are the same. */
    cm_pack_cache_stats(&bytes, NULL, NULL);
    cm_pack_cache_set_budget(bytes + bytes / 2);
    cm_linear(x, K, M, K, &w2.v, NULL, CM_ACT_NONE, NULL, y1, N);
    size_t b2;
    cm_pack_cache_stats(&b2, &h0, &m0);
    ck_assert_uint_eq(b2, bytes);
    cm_linear(x, K, M, K, &w2.v, NULL, CM_ACT_NONE, NULL, y2, N); /* not kept: miss */
    cm_pack_cache_stats(NULL, &h1, &m1);
    ck_assert_int_eq(h1 - h0, 0);
    ck_assert_int_eq(m1 - m0, 1);
    ck_assert_msg(memcmp(y1, y2, (size_t)(M * N) * 4) == 0, "uncached panels change the result");
    cm_linear(x, K, M, K, &w.v, NULL, CM_ACT_NONE, NULL, y2, N); /* kept: hit */
    cm_pack_cache_stats(NULL, &h0, &m0);
    ck_assert_int_eq(h0 - h1, 1);
    ck_assert_int_eq(m0 - m1, 0);
    /* A budget below what is held frees entries until it holds. */
    cm_pack_cache_set_budget(bytes / 2);
    cm_pack_cache_stats(&b2, NULL, NULL);
    ck_assert_uint_le(b2, bytes / 2);

    /* Conv and upsample conv through the cache, same bits. */
    cm_pack_cache_set_budget((size_t)64 << 20);
    {
        int B = 1, H = 5, W = 7, C = 19, OC = 23;
        int64_t cw[4] = {OC, C, 3, 3};
        wbuf wc;
        wbuf_make(&wc, CM_F16, 4, cw, 0.3f);
        float *xi = rand_buf((int64_t)B * H * W * C);
        int64_t no = (int64_t)B * 4 * H * W * OC;
        float *o1 = rand_buf(no), *o2 = rand_buf(no);
        cm_upsample2x_conv3x3(xi, B, H, W, C, &wc.v, NULL, o1);
        cm_upsample2x_conv3x3(xi, B, H, W, C, &wc.v, NULL, o2);
        ck_assert(memcmp(o1, o2, (size_t)no * 4) == 0);
        cm_conv2d(xi, B, H, W, C, &wc.v, NULL, (cm_conv_params){1, 1}, NULL, o1);
        cm_conv2d(xi, B, H, W, C, &wc.v, NULL, (cm_conv_params){1, 1}, NULL, o2);
        ck_assert(memcmp(o1, o2, (size_t)(B * H * W * OC) * 4) == 0);
        cm_conv2d_ref(xi, B, H, W, C, &wc.v, NULL, (cm_conv_params){1, 1}, NULL, o2);
        TU_ASSERT_CLOSE("cached conv", o1, o2, (int64_t)B * H * W * OC, tol_k(9 * C));
        wbuf_free(&wc);
        free(xi), free(o1), free(o2);
    }
    cm_pack_cache_clear();
    cm_pack_cache_stats(&bytes, NULL, NULL);
    ck_assert_uint_eq(bytes, 0);
    cm_pack_cache_set_budget(saved);
    wbuf_free(&w);
    wbuf_free(&w2);
    free(x), free(y1), free(y2);
}
END_TEST

/* --precision bf16 (runs only where the CPU has AVX512_BF16): linear,
 * conv, upsample conv and fused GEGLU through the vdpbf16ps tile agree
 * with an emulation of bf16 inputs accumulated exactly (inputs rounded to
 * bf16, products summed in double: rel-L2 <= 2e-6, what float32
 * accumulation adds), differ from float32 by the bf16 rounding (rel-L2 in
 * (1e-5, 1e-2]), and do not depend on the thread count. */
static double rel_l2(const float *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static float bfr(float v) { return cm_bf16_to_f32(cm_f32_to_bf16(v)); }

START_TEST(test_bf16_precision)
{
    if (!cm_bf16_supported() || !cm_isa_force("avx512")) {
        printf("skip bf16: this CPU has no AVX512_BF16\n");
        return;
    }
    size_t saved = cm_pack_cache_budget();
    for (int cached = 0; cached < 2; cached++) {
        cm_pack_cache_set_budget(cached ? ((size_t)64 << 20) : 0);
        /* linear: M rows (over and under the cache's 256), odd N */
        int64_t M = cached ? 77 : 301, K = 258, N = 45;
        float *x = rand_buf(M * K), *y = rand_buf(M * N), *y32 = rand_buf(M * N), *y1 = rand_buf(M * N);
        double *ref = malloc((size_t)(M * N) * sizeof(double));
        wbuf w, b;
        int64_t ws[2] = {N, K}, bs[1] = {N};
        wbuf_make(&w, CM_F16, 2, ws, 0.2f);
        wbuf_make(&b, CM_F16, 1, bs, 0.5f);
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double acc = cm_wview_get(&b.v, n);
                for (int64_t k = 0; k < K; k++)
                    acc += (double)bfr(x[m * K + k]) * bfr(cm_wview_get(&w.v, n * K + k));
                ref[m * N + n] = acc;
            }
        cm_precision_set(CM_PREC_F32);
        cm_linear(x, K, M, K, &w.v, &b.v, CM_ACT_NONE, NULL, y32, N);
        cm_precision_set(CM_PREC_BF16);
        cm_linear(x, K, M, K, &w.v, &b.v, CM_ACT_NONE, NULL, y, N);
        double e_emu = rel_l2(y, ref, M * N);
        double *r32 = malloc((size_t)(M * N) * sizeof(double));
        for (int64_t i = 0; i < M * N; i++) r32[i] = y32[i];
        double e_f32 = rel_l2(y, r32, M * N);
        printf("bf16 linear %lldx%lld->%lld (cache %d): vs bf16 emulation %.2e, vs f32 %.2e\n",
               (long long)M, (long long)K, (long long)N, cached, e_emu, e_f32);
        ck_assert_msg(e_emu <= 2e-6, "bf16 linear vs emulation %.3e", e_emu);
        ck_assert_msg(e_f32 > 1e-5 && e_f32 <= 1e-2, "bf16 linear vs f32 %.3e", e_f32);
        int th = cm_threads_get();
        cm_threads_set(1);
        cm_linear(x, K, M, K, &w.v, &b.v, CM_ACT_NONE, NULL, y1, N);
        cm_threads_set(th);
        ck_assert_msg(memcmp(y, y1, (size_t)(M * N) * 4) == 0, "bf16 linear depends on the thread count");

        /* conv 3x3 and upsample conv (taps: pairs stay inside a tap) */
        int B = 2, H = 6, W = 5, C = 34, OC = 40;
        int64_t cw[4] = {OC, C, 3, 3};
        wbuf wc;
        wbuf_make(&wc, CM_F16, 4, cw, 0.2f);
        float *xi = rand_buf((int64_t)B * H * W * C);
        int64_t no = (int64_t)B * 4 * H * W * OC;
        float *o = rand_buf(no), *o32 = rand_buf(no);
        double *d32 = malloc((size_t)no * sizeof(double));
        cm_precision_set(CM_PREC_F32);
        cm_conv2d(xi, B, H, W, C, &wc.v, NULL, (cm_conv_params){1, 1}, NULL, o32);
        cm_precision_set(CM_PREC_BF16);
        cm_conv2d(xi, B, H, W, C, &wc.v, NULL, (cm_conv_params){1, 1}, NULL, o);
        int64_t nc = (int64_t)B * H * W * OC;
        for (int64_t i = 0; i < nc; i++) d32[i] = o32[i];
        double ec = rel_l2(o, d32, nc);
        cm_precision_set(CM_PREC_F32);
        cm_upsample2x_conv3x3(xi, B, H, W, C, &wc.v, NULL, o32);
        cm_precision_set(CM_PREC_BF16);
        cm_upsample2x_conv3x3(xi, B, H, W, C, &wc.v, NULL, o);
        for (int64_t i = 0; i < no; i++) d32[i] = o32[i];
        double eu = rel_l2(o, d32, no);
        printf("bf16 conv3x3 vs f32 %.2e, upsample conv vs f32 %.2e\n", ec, eu);
        ck_assert_msg(ec > 1e-5 && ec <= 1e-2, "bf16 conv vs f32 %.3e", ec);
        ck_assert_msg(eu > 1e-5 && eu <= 1e-2, "bf16 upsample conv vs f32 %.3e", eu);

        /* fused GEGLU */
        int64_t G = 24, Kg = 64, Mg = 50;
        int64_t gs[2] = {2 * G, Kg};
        wbuf wg;
        wbuf_make(&wg, CM_F16, 2, gs, 0.2f);
        float *xg = rand_buf(Mg * Kg), *g = rand_buf(Mg * G), *g32 = rand_buf(Mg * G);
        double *dg = malloc((size_t)(Mg * G) * sizeof(double));
        cm_precision_set(CM_PREC_F32);
        cm_linear_geglu(xg, Kg, Mg, Kg, &wg.v, NULL, g32, G);
        cm_precision_set(CM_PREC_BF16);
        cm_linear_geglu(xg, Kg, Mg, Kg, &wg.v, NULL, g, G);
        for (int64_t i = 0; i < Mg * G; i++) dg[i] = g32[i];
        double eg = rel_l2(g, dg, Mg * G);
        ck_assert_msg(eg > 1e-5 && eg <= 1e-2, "bf16 geglu vs f32 %.3e", eg);
        cm_precision_set(CM_PREC_F32);

        free(x); free(y); free(y32); free(y1); free(ref); free(r32);
        free(w.mem); free(b.mem); free(wc.mem); free(xi); free(o); free(o32); free(d32);
        free(wg.mem); free(xg); free(g); free(g32); free(dg);
    }
    cm_pack_cache_set_budget(saved);
    cm_pack_cache_clear();
    cm_isa_force(NULL);
}
END_TEST

TCase *tc_common_kernels(void)
{
    TCase *tc = tu_tcase("common_kernels");
    tcase_add_test(tc, test_h2f_exact);
    tcase_add_test(tc, test_vmath);
    tcase_add_test(tc, test_linear_vs_ref);
    tcase_add_test(tc, test_gemm_f32_vs_naive);
    tcase_add_test(tc, test_conv_vs_ref);
    tcase_add_test(tc, test_upsample_conv_vs_ref);
    tcase_add_test(tc, test_attention_vs_ref);
    tcase_add_test(tc, test_group_norm_vs_ref);
    tcase_add_test(tc, test_act_geglu);
    tcase_add_test(tc, test_threads_bit_identical);
    tcase_add_test(tc, test_linear_geglu);
    tcase_add_test(tc, test_pack_cache);
    tcase_add_test(tc, test_bf16_precision);
    return tc;
}
