/* kernels_ref.c — the scalar reference kernels: the spec and test oracle
 * of every fast kernel in kernels.c. Obvious loops, float32 accumulation
 * (double only where noted), weights read element by element through the
 * weight view. Kept forever; never optimised.
 *
 * Mirrors torch.nn.functional: linear, conv2d, scaled_dot_product_attention,
 * group_norm, layer_norm, silu, gelu (erf and tanh forms), quick_gelu
 * (x * sigmoid(1.702 x)).
 */
#include "common.h"

#include <math.h>
#include <string.h>

float cm_act_scalar(float x, cm_act act)
{
    switch (act) {
    case CM_ACT_NONE: return x;
    case CM_ACT_SILU: return x / (1.0f + expf(-x));
    case CM_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case CM_ACT_GELU_TANH: {
        const float k = 0.7978845608028654f; /* sqrt(2/pi) */
        return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    case CM_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    }
    return x;
}

void cm_linear_ref(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
                   const cm_wview *bias, cm_act act, const float *residual, float *y,
                   int64_t ldy)
{
    int64_t N = w->shape[0];
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            float acc = 0;
            for (int64_t k = 0; k < K; k++) acc += x[m * ldx + k] * cm_wview_get(w, n * K + k);
            if (bias) acc += cm_wview_get(bias, n);
            acc = cm_act_scalar(acc, act);
            if (residual) acc += residual[m * ldy + n];
            y[m * ldy + n] = acc;
        }
}

void cm_conv2d_ref(const float *x, int B, int H, int W, int C, const cm_wview *w,
                   const cm_wview *bias, cm_conv_params p, const float *residual, float *y)
{
    int OC = (int)w->shape[0], KH = (int)w->shape[2], KW = (int)w->shape[3];
    CM_ASSERT(w->shape[1] == C);
    int OH = (H + 2 * p.pad - KH) / p.stride + 1, OW = (W + 2 * p.pad - KW) / p.stride + 1;
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < OH; oy++)
            for (int ox = 0; ox < OW; ox++)
                for (int oc = 0; oc < OC; oc++) {
                    float acc = 0;
                    for (int ic = 0; ic < C; ic++)
                        for (int ky = 0; ky < KH; ky++)
                            for (int kx = 0; kx < KW; kx++) {
                                int iy = oy * p.stride - p.pad + ky, ix = ox * p.stride - p.pad + kx;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc += x[(((int64_t)b * H + iy) * W + ix) * C + ic] *
                                       cm_wview_get(w, (((int64_t)oc * C + ic) * KH + ky) * KW + kx);
                            }
                    if (bias) acc += cm_wview_get(bias, oc);
                    int64_t o = (((int64_t)b * OH + oy) * OW + ox) * OC + oc;
                    if (residual) acc += residual[o];
                    y[o] = acc;
                }
}

void cm_upsample2x_conv3x3_ref(const float *x, int B, int H, int W, int C, const cm_wview *w,
                               const cm_wview *bias, float *y)
{
    int OC = (int)w->shape[0], H2 = 2 * H, W2 = 2 * W;
    for (int b = 0; b < B; b++)
        for (int oy = 0; oy < H2; oy++)
            for (int ox = 0; ox < W2; ox++)
                for (int oc = 0; oc < OC; oc++) {
                    float acc = 0;
                    for (int ic = 0; ic < C; ic++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int uy = oy - 1 + ky, ux = ox - 1 + kx;
                                if (uy < 0 || uy >= H2 || ux < 0 || ux >= W2) continue;
                                acc += x[(((int64_t)b * H + uy / 2) * W + ux / 2) * C + ic] *
                                       cm_wview_get(w, (((int64_t)oc * C + ic) * 3 + ky) * 3 + kx);
                            }
                    if (bias) acc += cm_wview_get(bias, oc);
                    y[(((int64_t)b * H2 + oy) * W2 + ox) * OC + oc] = acc;
                }
}

void cm_attention_ref(const float *q, const float *k, const float *v, float *o,
                      const cm_attn_params *p)
{
    float s[p->Tk > 0 ? p->Tk : 1];
    for (int b = 0; b < p->B; b++)
        for (int h = 0; h < p->heads; h++)
            for (int t = 0; t < p->Tq; t++) {
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
                for (int d = 0; d < p->hd; d++) {
                    float acc = 0;
                    for (int j = 0; j < n; j++)
                        acc += s[j] * v[b * p->v_bstride + j * p->v_stride + h * p->hd + d];
                    orow[d] = acc / sum;
                }
            }
}

/* Statistics in double: the reference is about the maths, not speed. */
void cm_group_norm_ref(const float *x, float *y, int B, int64_t HW, int C, int groups, float eps,
                       const cm_wview *gamma, const cm_wview *beta, int silu)
{
    int cg = C / groups;
    CM_ASSERT(cg * groups == C);
    for (int b = 0; b < B; b++)
        for (int g = 0; g < groups; g++) {
            double sum = 0, sq = 0;
            for (int64_t i = 0; i < HW; i++)
                for (int c = g * cg; c < (g + 1) * cg; c++) {
                    double v = x[((int64_t)b * HW + i) * C + c];
                    sum += v;
                }
            double n = (double)HW * cg, mean = sum / n;
            for (int64_t i = 0; i < HW; i++)
                for (int c = g * cg; c < (g + 1) * cg; c++) {
                    double d = x[((int64_t)b * HW + i) * C + c] - mean;
                    sq += d * d;
                }
            float rstd = (float)(1.0 / sqrt(sq / n + eps));
            for (int64_t i = 0; i < HW; i++)
                for (int c = g * cg; c < (g + 1) * cg; c++) {
                    int64_t at = ((int64_t)b * HW + i) * C + c;
                    float v = (x[at] - (float)mean) * rstd;
                    if (gamma) v *= cm_wview_get(gamma, c);
                    if (beta) v += cm_wview_get(beta, c);
                    if (silu) v = cm_act_scalar(v, CM_ACT_SILU);
                    y[at] = v;
                }
        }
}
