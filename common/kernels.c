/* kernels.c — the kernels the model code calls, dispatched to the fastest
 * variant; each is checked against its _ref twin in kernels_ref.c.
 *
 * First version: straightforward, OpenMP-parallel, vectorisable loops with
 * weights converted to float32 per call. The packed GEMM engine, implicit
 * GEMM convolution and flash attention of PERF.md replace these bodies
 * without changing the interface.
 */
#include "common.h"

#include <math.h>
#include <string.h>

static cm_precision g_prec = CM_PREC_F32;
void cm_precision_set(cm_precision p) { g_prec = p; }
cm_precision cm_precision_get(void) { return g_prec; }

/* Weights to float32 in a fresh buffer (NULL on allocation failure:
 * kernels cannot report errors, so callers keep inputs small enough that
 * this is a programmer error). */
static float *to_f32(const cm_wview *w)
{
    int64_t n = cm_wview_numel(w);
    float *f = cm_alloc((size_t)n * sizeof(float), "kernel weights", NULL);
    CM_ASSERT(f);
    cm_wview_to_f32(w, 0, n, f);
    return f;
}

void cm_linear(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
               const cm_wview *bias, cm_act act, const float *residual, float *y, int64_t ldy)
{
    int64_t N = w->shape[0];
    CM_ASSERT(cm_wview_numel(w) == N * K);
    float *wf = to_f32(w);
    float *bf = bias ? to_f32(bias) : NULL;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * ldx;
        for (int64_t n = 0; n < N; n++) {
            const float *wr = wf + n * K;
            float acc = 0;
            for (int64_t k = 0; k < K; k++) acc += xr[k] * wr[k];
            if (bf) acc += bf[n];
            acc = cm_act_scalar(acc, act);
            if (residual) acc += residual[m * ldy + n];
            y[m * ldy + n] = acc;
        }
    }
    cm_free(wf);
    cm_free(bf);
}

void cm_gemm_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                 int64_t ldb, int b_is_nk, float beta, float *C, int64_t ldc)
{
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0;
            if (b_is_nk)
                for (int64_t k = 0; k < K; k++) acc += A[m * lda + k] * B[n * ldb + k];
            else
                for (int64_t k = 0; k < K; k++) acc += A[m * lda + k] * B[k * ldb + n];
            C[m * ldc + n] = beta != 0 ? C[m * ldc + n] + acc : acc;
        }
}

/* Weights repacked to [KH][KW][IC][OC] so the inner loop runs over OC. */
void cm_conv2d(const float *x, int B, int H, int W, int C, const cm_wview *w,
               const cm_wview *bias, cm_conv_params p, const float *residual, float *y)
{
    int OC = (int)w->shape[0], KH = (int)w->shape[2], KW = (int)w->shape[3];
    CM_ASSERT(w->shape[1] == C);
    int OH = (H + 2 * p.pad - KH) / p.stride + 1, OW = (W + 2 * p.pad - KW) / p.stride + 1;
    float *wf = to_f32(w);
    float *wp = cm_alloc((size_t)OC * C * KH * KW * sizeof(float), "conv weights", NULL);
    CM_ASSERT(wp);
    for (int oc = 0; oc < OC; oc++)
        for (int ic = 0; ic < C; ic++)
            for (int ky = 0; ky < KH; ky++)
                for (int kx = 0; kx < KW; kx++)
                    wp[(((int64_t)ky * KW + kx) * C + ic) * OC + oc] =
                        wf[(((int64_t)oc * C + ic) * KH + ky) * KW + kx];
    cm_free(wf);
    float *bf = bias ? to_f32(bias) : NULL;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++) {
                float *out = y + (((int64_t)b * OH + oy) * OW + ox) * OC;
                for (int oc = 0; oc < OC; oc++) out[oc] = 0;
                for (int ky = 0; ky < KH; ky++) {
                    int iy = oy * p.stride - p.pad + ky;
                    if (iy < 0 || iy >= H) continue;
                    for (int kx = 0; kx < KW; kx++) {
                        int ix = ox * p.stride - p.pad + kx;
                        if (ix < 0 || ix >= W) continue;
                        const float *xin = x + (((int64_t)b * H + iy) * W + ix) * C;
                        const float *wk = wp + ((int64_t)ky * KW + kx) * C * OC;
                        for (int ic = 0; ic < C; ic++) {
                            float xv = xin[ic];
                            const float *wr = wk + (int64_t)ic * OC;
#pragma omp simd
                            for (int oc = 0; oc < OC; oc++) out[oc] += xv * wr[oc];
                        }
                    }
                }
                if (bf)
                    for (int oc = 0; oc < OC; oc++) out[oc] += bf[oc];
                if (residual) {
                    const float *r = residual + (((int64_t)b * OH + oy) * OW + ox) * OC;
                    for (int oc = 0; oc < OC; oc++) out[oc] += r[oc];
                }
            }
    cm_free(wp);
    cm_free(bf);
}

void cm_upsample2x_conv3x3(const float *x, int B, int H, int W, int C, const cm_wview *w,
                           const cm_wview *bias, float *y)
{
    float *up = cm_alloc((size_t)B * 4 * H * W * C * sizeof(float), "upsample", NULL);
    CM_ASSERT(up);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int uy = 0; uy < 2 * H; uy++)
            for (int ux = 0; ux < 2 * W; ux++)
                memcpy(up + (((int64_t)b * 2 * H + uy) * 2 * W + ux) * C,
                       x + (((int64_t)b * H + uy / 2) * W + ux / 2) * C, (size_t)C * sizeof(float));
    cm_conv2d(up, B, 2 * H, 2 * W, C, w, bias, (cm_conv_params){1, 1}, NULL, y);
    cm_free(up);
}

void cm_attention(const float *q, const float *k, const float *v, float *o, const cm_attn_params *p)
{
#pragma omp parallel for collapse(3) schedule(static)
    for (int b = 0; b < p->B; b++)
        for (int h = 0; h < p->heads; h++)
            for (int t = 0; t < p->Tq; t++) {
                float s[p->Tk > 0 ? p->Tk : 1];
                const float *qr = q + b * p->q_bstride + t * p->q_stride + h * p->hd;
                int n = p->causal ? (t + 1 < p->Tk ? t + 1 : p->Tk) : p->Tk;
                float mx = -INFINITY;
                for (int j = 0; j < n; j++) {
                    const float *kr = k + b * p->k_bstride + j * p->k_stride + h * p->hd;
                    float acc = 0;
                    for (int d = 0; d < p->hd; d++) acc += qr[d] * kr[d];
                    s[j] = acc * p->scale;
                    if (s[j] > mx) mx = s[j];
                }
                float sum = 0;
                for (int j = 0; j < n; j++) {
                    s[j] = expf(s[j] - mx);
                    sum += s[j];
                }
                float *orow = o + b * p->o_bstride + t * p->o_stride + h * p->hd;
                for (int d = 0; d < p->hd; d++) orow[d] = 0;
                for (int j = 0; j < n; j++) {
                    const float *vr = v + b * p->v_bstride + j * p->v_stride + h * p->hd;
                    for (int d = 0; d < p->hd; d++) orow[d] += s[j] * vr[d];
                }
                for (int d = 0; d < p->hd; d++) orow[d] /= sum;
            }
}

void cm_group_norm(const float *x, float *y, int B, int64_t HW, int C, int groups, float eps,
                   const cm_wview *gamma, const cm_wview *beta, int silu)
{
    int cg = C / groups;
    CM_ASSERT(cg * groups == C);
    float *gf = gamma ? to_f32(gamma) : NULL, *bf = beta ? to_f32(beta) : NULL;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < groups; g++) {
            const float *xb = x + (int64_t)b * HW * C + g * cg;
            double sum = 0, sq = 0;
            for (int64_t i = 0; i < HW; i++)
                for (int c = 0; c < cg; c++) sum += xb[i * C + c];
            double n = (double)HW * cg, mean = sum / n;
            for (int64_t i = 0; i < HW; i++)
                for (int c = 0; c < cg; c++) {
                    double d = xb[i * C + c] - mean;
                    sq += d * d;
                }
            float rstd = (float)(1.0 / sqrt(sq / n + eps)), fm = (float)mean;
            float *yb = y + (int64_t)b * HW * C + g * cg;
            for (int64_t i = 0; i < HW; i++)
                for (int c = 0; c < cg; c++) {
                    float v = (xb[i * C + c] - fm) * rstd;
                    if (gf) v *= gf[g * cg + c];
                    if (bf) v += bf[g * cg + c];
                    if (silu) v = v / (1.0f + expf(-v));
                    yb[i * C + c] = v;
                }
        }
    cm_free(gf);
    cm_free(bf);
}

void cm_layer_norm(const float *x, float *y, int64_t M, int C, float eps, const cm_wview *gamma,
                   const cm_wview *beta)
{
    float *gf = gamma ? to_f32(gamma) : NULL, *bf = beta ? to_f32(beta) : NULL;
#pragma omp parallel for schedule(static)
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
    cm_free(gf);
    cm_free(bf);
}

void cm_rms_norm(const float *x, float *y, int64_t M, int C, float eps, const cm_wview *gamma)
{
    float *gf = gamma ? to_f32(gamma) : NULL;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * C;
        double sq = 0;
        for (int c = 0; c < C; c++) sq += (double)xr[c] * xr[c];
        float r = (float)(1.0 / sqrt(sq / C + eps));
        for (int c = 0; c < C; c++) y[m * C + c] = xr[c] * r * (gf ? gf[c] : 1.0f);
    }
    cm_free(gf);
}

void cm_act_inplace(float *x, int64_t n, cm_act act)
{
    if (act == CM_ACT_NONE) return;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = cm_act_scalar(x[i], act);
}

void cm_geglu(const float *x, float *y, int64_t M, int64_t N)
{
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++)
            y[m * N + n] = x[m * 2 * N + n] * cm_act_scalar(x[m * 2 * N + N + n], CM_ACT_GELU);
}
