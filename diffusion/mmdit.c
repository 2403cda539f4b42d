/* diffusion/mmdit.c — the SD3 / SD3.5 denoiser: a multimodal diffusion
 * transformer (MMDiT, Esser et al. 2024, "Scaling Rectified Flow
 * Transformers", §4), over the original single-file tensor names.
 *
 * Mirrors diffusers 0.30.3 SD3Transformer2DModel (transformer_sd3.py,
 * JointTransformerBlock + JointAttnProcessor2_0, PatchEmbed with
 * pos_embed_max_size, CombinedTimestepTextProjEmbeddings,
 * AdaLayerNormZero / AdaLayerNormContinuous) in float32:
 *
 *   x (B, C, h, w) --patchify p x p conv--> (B, N, D) + pos_embed crop
 *   c = t_embedder(sinusoid(t)) + y_embedder(pooled)          (B, D)
 *   ctx = context_embedder(context)                           (B, T, D)
 *   per joint block i (the last one context_pre_only):
 *     x_block / context_block adaLN_modulation(silu(c)) -> shift, scale,
 *       gate (attention), shift, scale, gate (MLP); pre-only: shift, scale
 *     q|k|v = attn.qkv(LN(.) (1 + scale) + shift) per stream
 *       (SD3.5: attn.ln_q / ln_k RMS norms per head)
 *     joint attention over [image tokens, text tokens], 1/sqrt(hd) scale
 *     x += gate * attn.proj(o_img); x += gate * mlp(LN(x) (1+scale)+shift)
 *     ctx likewise (not for the pre-only block, whose ctx is dropped)
 *   final_layer: LN(x) (1 + scale) + shift (adaLN: shift, scale), linear
 *   unpatchify -> (B, out_channels, h, w)
 * LayerNorms have no affine and eps 1e-6; MLPs are fc1, tanh-GELU, fc2.
 * The original file stores the two-chunk modulations as (shift, scale)
 * (diffusers swaps them to (scale, shift) when converting).
 *
 * Layout: activations token-major float32: image (B*N, D), text (B*T, D);
 * the joint q|k|v buffer is (B, N+T, 3D) with the image rows first.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion.h"

#define PFX "model.diffusion_model."
#define LN_EPS 1e-6f

typedef struct {
    const cm_wview *adaLN_w, *adaLN_b; /* adaLN_modulation.1 (k*D, D) */
    const cm_wview *qkv_w, *qkv_b;     /* attn.qkv (3D, D) */
    const cm_wview *ln_q, *ln_k;       /* SD3.5 qk RMS norms (hd) or NULL */
    const cm_wview *proj_w, *proj_b;   /* attn.proj (D, D); NULL when pre-only */
    const cm_wview *fc1_w, *fc1_b, *fc2_w, *fc2_b; /* mlp; NULL when pre-only */
    int nmod;                          /* modulation chunks: 6, or 2 (pre-only) */
} dit_stream;

typedef struct {
    dit_stream x_block, context_block;
    int pre_only;
} dit_block;

struct df_mmdit {
    int in_ch, out_ch, patch, D, heads, hd, ctx_dim, pooled_dim, tdim, mlp, layers, pos_max;
    const cm_wview *x_embedder_w, *x_embedder_b; /* (D, C, p, p) */
    cm_wview x_embedder_2d;                      /* the same as (D, C*p*p) */
    const cm_wview *pos_embed;                   /* (1, M*M, D) */
    const cm_wview *t_mlp0_w, *t_mlp0_b, *t_mlp2_w, *t_mlp2_b;
    const cm_wview *y_mlp0_w, *y_mlp0_b, *y_mlp2_w, *y_mlp2_b;
    const cm_wview *ctx_w, *ctx_b;
    const cm_wview *final_adaLN_w, *final_adaLN_b, *final_w, *final_b;
    dit_block *block;
    const wt_model *m; /* each block's mapped weights go back after it ran (wt_model_drop) */
    /* activation buffer, grown when a call needs more */
    float *buf;
    size_t buf_n;
};

/* ------------------------------------------------------------------------
 * Construction
 * ---------------------------------------------------------------------- */

#define REQ(dst, nd, ...)                                                                \
    do {                                                                                 \
        if (!((dst) = wt_model_requiref(m, err, (nd), shp, __VA_ARGS__))) goto fail;    \
    } while (0)

static int req_stream(const wt_model *m, dit_stream *s, int i, const char *which, int pre_only,
                      const df_mmdit *d, cm_error *err)
{
    const int64_t D = d->D;
    int64_t shp[4];
    s->nmod = pre_only ? 2 : 6;
    shp[0] = s->nmod * D; shp[1] = D;
    REQ(s->adaLN_w, 2, PFX "joint_blocks.%d.%s.adaLN_modulation.1.weight", i, which);
    REQ(s->adaLN_b, 1, PFX "joint_blocks.%d.%s.adaLN_modulation.1.bias", i, which);
    shp[0] = 3 * D;
    REQ(s->qkv_w, 2, PFX "joint_blocks.%d.%s.attn.qkv.weight", i, which);
    REQ(s->qkv_b, 1, PFX "joint_blocks.%d.%s.attn.qkv.bias", i, which);
    s->ln_q = wt_model_getf(m, PFX "joint_blocks.%d.%s.attn.ln_q.weight", i, which);
    s->ln_k = wt_model_getf(m, PFX "joint_blocks.%d.%s.attn.ln_k.weight", i, which);
    if (s->ln_q || s->ln_k) {
        shp[0] = d->hd;
        REQ(s->ln_q, 1, PFX "joint_blocks.%d.%s.attn.ln_q.weight", i, which);
        REQ(s->ln_k, 1, PFX "joint_blocks.%d.%s.attn.ln_k.weight", i, which);
    }
    if (wt_model_getf(m, PFX "joint_blocks.%d.%s.attn2.qkv.weight", i, which)) {
        cm_error_set(err, CM_ERR_UNSUPPORTED,
                     "%s: tensor " PFX "joint_blocks.%d.%s.attn2.qkv.weight: MMDiT-X dual attention "
                     "(SD3.5 Medium) is not supported",
                     wt_model_path(m), i, which);
        return 0;
    }
    if (pre_only) return 1;
    shp[0] = D; shp[1] = D;
    REQ(s->proj_w, 2, PFX "joint_blocks.%d.%s.attn.proj.weight", i, which);
    REQ(s->proj_b, 1, PFX "joint_blocks.%d.%s.attn.proj.bias", i, which);
    shp[0] = d->mlp; shp[1] = D;
    REQ(s->fc1_w, 2, PFX "joint_blocks.%d.%s.mlp.fc1.weight", i, which);
    REQ(s->fc1_b, 1, PFX "joint_blocks.%d.%s.mlp.fc1.bias", i, which);
    shp[0] = D; shp[1] = d->mlp;
    REQ(s->fc2_w, 2, PFX "joint_blocks.%d.%s.mlp.fc2.weight", i, which);
    REQ(s->fc2_b, 1, PFX "joint_blocks.%d.%s.mlp.fc2.bias", i, which);
    return 1;
fail:
    return 0;
}

df_mmdit *df_mmdit_create(const wt_model *m, cm_error *err)
{
    df_mmdit *d = cm_calloc(sizeof *d, "MMDiT", err);
    if (!d) return NULL;
    d->m = m;
    const cJSON *c = wt_model_section(m, "transformer");
    const cm_wview *xe = wt_model_get(m, PFX "x_embedder.proj.weight");
    const cm_wview *pe = wt_model_get(m, PFX "pos_embed");
    const cm_wview *ce = wt_model_get(m, PFX "context_embedder.weight");
    const cm_wview *ye = wt_model_get(m, PFX "y_embedder.mlp.0.weight");
    const cm_wview *te = wt_model_get(m, PFX "t_embedder.mlp.0.weight");
    const cm_wview *f1 = wt_model_get(m, PFX "joint_blocks.0.x_block.mlp.fc1.weight");
    if (!xe || xe->ndim != 4 || !te || te->ndim != 2) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: no MMDiT: tensor " PFX "x_embedder.proj.weight (4-D) or "
                     PFX "t_embedder.mlp.0.weight missing", wt_model_path(m));
        goto fail;
    }
    int file_layers = 0;
    while (file_layers < 4096 && wt_model_getf(m, PFX "joint_blocks.%d.x_block.attn.qkv.weight", file_layers))
        file_layers++;
    d->patch = wt_cfg_int(c, "patch_size", (int)xe->shape[2]);
    d->in_ch = wt_cfg_int(c, "in_channels", (int)xe->shape[1]);
    d->layers = wt_cfg_int(c, "num_layers", file_layers);
    int hd_def = 64, heads_def = (int)xe->shape[0] / 64;
    d->hd = wt_cfg_int(c, "attention_head_dim", hd_def);
    d->heads = wt_cfg_int(c, "num_attention_heads", heads_def > 0 ? heads_def : 1);
    d->D = d->hd * d->heads;
    d->out_ch = wt_cfg_int(c, "out_channels", d->in_ch);
    d->ctx_dim = wt_cfg_int(c, "joint_attention_dim", ce && ce->ndim == 2 ? (int)ce->shape[1] : 4096);
    d->pooled_dim = wt_cfg_int(c, "pooled_projection_dim", ye && ye->ndim == 2 ? (int)ye->shape[1] : 2048);
    d->tdim = (int)te->shape[1];
    d->mlp = f1 && f1->ndim == 2 ? (int)f1->shape[0] : 4 * d->D;
    int pm = 0;
    if (pe && pe->ndim == 3) pm = (int)lrint(sqrt((double)pe->shape[1]));
    d->pos_max = wt_cfg_int(c, "pos_embed_max_size", pm);
    int csd = wt_cfg_int(c, "caption_projection_dim", d->D);
    if (d->patch < 1 || d->in_ch < 1 || d->out_ch < 1 || d->layers < 1 || d->hd < 1 || d->heads < 1 ||
        d->ctx_dim < 1 || d->pooled_dim < 1 || d->tdim < 2 || d->tdim % 2 || d->pos_max < 1 ||
        csd != d->D || (int)xe->shape[0] != d->D) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: MMDiT: bad architecture (patch %d, channels %d/%d, layers %d, heads %d x %d = %d, "
                     "x_embedder width %lld, caption_projection_dim %d, pos_embed_max_size %d)",
                     wt_model_path(m), d->patch, d->in_ch, d->out_ch, d->layers, d->heads, d->hd, d->D,
                     (long long)xe->shape[0], csd, d->pos_max);
        goto fail;
    }
    if (d->layers > file_layers) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: MMDiT: config wants %d joint blocks, the file has %d",
                     wt_model_path(m), d->layers, file_layers);
        goto fail;
    }

    const int64_t D = d->D, p = d->patch;
    int64_t shp[4] = {D, d->in_ch, p, p};
    REQ(d->x_embedder_w, 4, PFX "x_embedder.proj.weight");
    shp[0] = D;
    REQ(d->x_embedder_b, 1, PFX "x_embedder.proj.bias");
    d->x_embedder_2d = *d->x_embedder_w;
    d->x_embedder_2d.ndim = 2;
    d->x_embedder_2d.shape[1] = (int64_t)d->in_ch * p * p;
    shp[0] = 1; shp[1] = (int64_t)d->pos_max * d->pos_max; shp[2] = D;
    REQ(d->pos_embed, 3, PFX "pos_embed");
    shp[0] = D; shp[1] = d->tdim;
    REQ(d->t_mlp0_w, 2, PFX "t_embedder.mlp.0.weight");
    REQ(d->t_mlp0_b, 1, PFX "t_embedder.mlp.0.bias");
    shp[1] = D;
    REQ(d->t_mlp2_w, 2, PFX "t_embedder.mlp.2.weight");
    REQ(d->t_mlp2_b, 1, PFX "t_embedder.mlp.2.bias");
    shp[1] = d->pooled_dim;
    REQ(d->y_mlp0_w, 2, PFX "y_embedder.mlp.0.weight");
    REQ(d->y_mlp0_b, 1, PFX "y_embedder.mlp.0.bias");
    shp[1] = D;
    REQ(d->y_mlp2_w, 2, PFX "y_embedder.mlp.2.weight");
    REQ(d->y_mlp2_b, 1, PFX "y_embedder.mlp.2.bias");
    shp[1] = d->ctx_dim;
    REQ(d->ctx_w, 2, PFX "context_embedder.weight");
    REQ(d->ctx_b, 1, PFX "context_embedder.bias");
    shp[0] = 2 * D; shp[1] = D;
    REQ(d->final_adaLN_w, 2, PFX "final_layer.adaLN_modulation.1.weight");
    REQ(d->final_adaLN_b, 1, PFX "final_layer.adaLN_modulation.1.bias");
    shp[0] = p * p * d->out_ch;
    REQ(d->final_w, 2, PFX "final_layer.linear.weight");
    REQ(d->final_b, 1, PFX "final_layer.linear.bias");

    d->block = cm_calloc(sizeof(dit_block) * (size_t)d->layers, "MMDiT blocks", err);
    if (!d->block) goto fail;
    for (int i = 0; i < d->layers; i++) {
        dit_block *b = &d->block[i];
        b->pre_only = i == d->layers - 1;
        if (!req_stream(m, &b->x_block, i, "x_block", 0, d, err)) goto fail;
        if (!req_stream(m, &b->context_block, i, "context_block", b->pre_only, d, err)) goto fail;
    }
    return d;

fail:
    df_mmdit_free(d);
    return NULL;
}

void df_mmdit_free(df_mmdit *d)
{
    if (!d) return;
    cm_free(d->block);
    cm_free(d->buf);
    cm_free(d);
}

int df_mmdit_in_channels(const df_mmdit *d) { return d->in_ch; }
int df_mmdit_out_channels(const df_mmdit *d) { return d->out_ch; }
int df_mmdit_context_dim(const df_mmdit *d) { return d->ctx_dim; }
int df_mmdit_pooled_dim(const df_mmdit *d) { return d->pooled_dim; }
int df_mmdit_size_multiple(const df_mmdit *d) { return d->patch; }
int df_mmdit_max_latent_size(const df_mmdit *d) { return d->pos_max * d->patch; }

/* ------------------------------------------------------------------------
 * Forward
 * ---------------------------------------------------------------------- */

/* diffusers Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
 * in float32: [cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / half). */
static void sinusoid(const float *t, int B, int dim, float *out)
{
    const int half = dim / 2;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < half; k++) {
            float e = (float)(-9.210340371976184) * (float)k;
            e = e / (float)half;
            float a = t[b] * expf(e);
            out[(size_t)b * dim + k] = (float)cos((double)a);
            out[(size_t)b * dim + half + k] = (float)sin((double)a);
        }
}

static void silu_copy(const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
}

/* y = LN(x) * (1 + scale) + shift over rows of batch b (n rows each). */
static void modulate(const float *x, float *y, int B, int64_t n, int D, const float *mod, int nmod,
                     int shift_chunk, int scale_chunk)
{
    cm_layer_norm(x, y, (int64_t)B * n, D, LN_EPS, NULL, NULL);
    for (int b = 0; b < B; b++) {
        const float *sh = mod + ((int64_t)b * nmod + shift_chunk) * D;
        const float *sc = mod + ((int64_t)b * nmod + scale_chunk) * D;
        for (int64_t t = 0; t < n; t++) {
            float *r = y + ((int64_t)b * n + t) * D;
            for (int c = 0; c < D; c++) r[c] = r[c] * (1.0f + sc[c]) + sh[c];
        }
    }
}

/* x += gate * y (gate chunk of the modulation of batch b). */
static void gated_add(float *x, const float *y, int B, int64_t n, int D, const float *mod, int nmod,
                      int gate_chunk)
{
    for (int b = 0; b < B; b++) {
        const float *g = mod + ((int64_t)b * nmod + gate_chunk) * D;
        for (int64_t t = 0; t < n; t++) {
            float *r = x + ((int64_t)b * n + t) * D;
            const float *a = y + ((int64_t)b * n + t) * D;
            for (int c = 0; c < D; c++) r[c] = r[c] + g[c] * a[c];
        }
    }
}

/* SD3.5: RMS norm of each head's q and k (rows of 3D, heads x hd). */
static void qk_norm(float *qkv, int64_t rows, int D, int hd, const dit_stream *s)
{
    if (!s->ln_q) return;
    const int H = D / hd;
    for (int64_t r = 0; r < rows; r++) {
        cm_rms_norm(qkv + r * 3 * D, qkv + r * 3 * D, H, hd, LN_EPS, s->ln_q);
        cm_rms_norm(qkv + r * 3 * D + D, qkv + r * 3 * D + D, H, hd, LN_EPS, s->ln_k);
    }
}

static void debug(const df_mmdit_input *in, const char *name, const float *data, int B, int64_t T, int C)
{
    if (in->debug) in->debug(in->debug_user, name, data, B, (int)T, C);
}

size_t df_mmdit_work_bytes(const df_mmdit *d, int B, int h, int w, int T)
{
    const size_t D = (size_t)d->D, N = (size_t)(h / d->patch) * (size_t)(w / d->patch);
    const size_t S = N + (size_t)T, M = (size_t)B;
    size_t f = M * (size_t)d->tdim + 3 * M * D + M * (size_t)d->pooled_dim /* embeddings */
               + 12 * M * D                                           /* modulations */
               + M * N * D * 2 + M * (size_t)T * D * 2                 /* streams + normed */
               + M * S * 3 * D + M * S * D                             /* qkv, attention out */
               + M * (N > (size_t)T ? N : (size_t)T) * ((size_t)d->mlp + D) /* mlp, proj out */
               + M * N * (size_t)(d->in_ch * d->patch * d->patch) + M * N * (size_t)(d->out_ch * d->patch * d->patch);
    return f * sizeof(float);
}

cm_status df_mmdit_forward(df_mmdit *d, const df_mmdit_input *in, float *out, cm_error *err)
{
    const int B = in->B, h = in->h, w = in->w, p = d->patch, T = in->T;
    if (B < 1 || h < p || w < p || h % p || w % p || T < 1 || !in->x || !in->timesteps || !in->context ||
        !in->pooled)
        return cm_error_set(err, CM_ERR_USAGE,
                            "MMDiT: bad input (batch %d, latent %dx%d, %d context tokens; expected a "
                            "latent that is a multiple of %d and every input given)",
                            B, h, w, T, p);
    const int gh = h / p, gw = w / p;
    if (gh > d->pos_max || gw > d->pos_max)
        return cm_error_set(err, CM_ERR_USAGE,
                            "MMDiT: latent %dx%d is larger than the positional embedding allows "
                            "(%dx%d, pos_embed_max_size %d x patch %d)",
                            h, w, d->pos_max * p, d->pos_max * p, d->pos_max, p);
    const int D = d->D, C = d->in_ch, Co = d->out_ch, K = C * p * p, Ko = Co * p * p;
    const int64_t N = (int64_t)gh * gw, S = N + T, FF = d->mlp;
    const int64_t NT = N > T ? N : T;

    size_t need = df_mmdit_work_bytes(d, B, h, w, T) / sizeof(float);
    if (need > d->buf_n) {
        float *nb = cm_alloc(need * sizeof(float), "MMDiT activations", err);
        if (!nb) return err ? err->status : CM_ERR_NOMEM;
        cm_free(d->buf);
        d->buf = nb;
        d->buf_n = need;
    }
    float *tproj = d->buf, *temb = tproj + (size_t)B * d->tdim, *cvec = temb + (size_t)B * D;
    float *csilu = cvec + (size_t)B * D, *pool = csilu + (size_t)B * D;
    float *modx = pool + (size_t)B * d->pooled_dim, *modc = modx + (size_t)B * 6 * D;
    float *x = modc + (size_t)B * 6 * D, *xn = x + (size_t)B * N * D;
    float *cx = xn + (size_t)B * N * D, *cn = cx + (size_t)B * T * D;
    float *qkv = cn + (size_t)B * T * D, *ao = qkv + (size_t)B * S * 3 * D;
    float *mlp = ao + (size_t)B * S * D, *po = mlp + (size_t)B * NT * FF;
    float *patches = po + (size_t)B * NT * D, *fin = patches + (size_t)B * N * K;

    /* patchify: patch vector in (c, ky, kx) order = the OIHW conv weight's */
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < gh; gy++)
            for (int gx = 0; gx < gw; gx++) {
                float *pv = patches + (((size_t)b * gh + gy) * gw + gx) * K;
                for (int c = 0; c < C; c++)
                    for (int ky = 0; ky < p; ky++)
                        for (int kx = 0; kx < p; kx++)
                            pv[(c * p + ky) * p + kx] =
                                in->x[(((size_t)b * C + c) * h + gy * p + ky) * w + gx * p + kx];
            }
    cm_linear(patches, K, (int64_t)B * N, K, &d->x_embedder_2d, d->x_embedder_b, CM_ACT_NONE, NULL, x, D);
    /* + centre crop of the (M, M) positional grid */
    const int top = (d->pos_max - gh) / 2, left = (d->pos_max - gw) / 2;
    float *prow = xn; /* scratch */
    for (int gy = 0; gy < gh; gy++)
        for (int gx = 0; gx < gw; gx++) {
            cm_wview_to_f32(d->pos_embed, ((int64_t)(top + gy) * d->pos_max + left + gx) * D, D, prow);
            for (int b = 0; b < B; b++) {
                float *r = x + (((size_t)b * gh + gy) * gw + gx) * D;
                for (int c = 0; c < D; c++) r[c] += prow[c];
            }
        }
    debug(in, "pos_embed", x, B, N, D);

    /* conditioning vector: timestep MLP + pooled-text MLP */
    sinusoid(in->timesteps, B, d->tdim, tproj);
    cm_linear(tproj, d->tdim, B, d->tdim, d->t_mlp0_w, d->t_mlp0_b, CM_ACT_SILU, NULL, temb, D);
    cm_linear(temb, D, B, D, d->t_mlp2_w, d->t_mlp2_b, CM_ACT_NONE, NULL, cvec, D);
    cm_linear(in->pooled, d->pooled_dim, B, d->pooled_dim, d->y_mlp0_w, d->y_mlp0_b, CM_ACT_SILU, NULL, pool,
              D);
    cm_linear(pool, D, B, D, d->y_mlp2_w, d->y_mlp2_b, CM_ACT_NONE, cvec, cvec, D);
    debug(in, "time_text_embed", cvec, B, 1, D);
    silu_copy(cvec, csilu, (int64_t)B * D);

    cm_linear(in->context, d->ctx_dim, (int64_t)B * T, d->ctx_dim, d->ctx_w, d->ctx_b, CM_ACT_NONE, NULL, cx,
              D);
    debug(in, "context_embedder", cx, B, T, D);

    const int hd = d->hd;
    cm_attn_params ap = {
        .B = B, .heads = d->heads, .Tq = (int)S, .Tk = (int)S, .hd = hd,
        .q_stride = 3 * D, .k_stride = 3 * D, .v_stride = 3 * D, .o_stride = D,
        .q_bstride = S * 3 * D, .k_bstride = S * 3 * D, .v_bstride = S * 3 * D, .o_bstride = S * D,
        .scale = 1.0f / sqrtf((float)hd), .causal = 0,
    };
    char name[64];
    for (int i = 0; i < d->layers; i++) {
        wt_model_drop(d->m);
        if (cm_interrupted) return cm_error_set(err, CM_ERR_INTERRUPTED, "MMDiT: interrupted");
        const dit_block *bl = &d->block[i];
        const dit_stream *xs = &bl->x_block, *cs = &bl->context_block;
        cm_linear(csilu, D, B, D, xs->adaLN_w, xs->adaLN_b, CM_ACT_NONE, NULL, modx, 6 * D);
        cm_linear(csilu, D, B, D, cs->adaLN_w, cs->adaLN_b, CM_ACT_NONE, NULL, modc, cs->nmod * D);

        /* q|k|v of both streams into the joint (B, N+T, 3D) buffer */
        modulate(x, xn, B, N, D, modx, 6, 0, 1);
        modulate(cx, cn, B, T, D, modc, cs->nmod, 0, 1);
        for (int b = 0; b < B; b++) {
            float *qb = qkv + (size_t)b * S * 3 * D;
            cm_linear(xn + (size_t)b * N * D, D, N, D, xs->qkv_w, xs->qkv_b, CM_ACT_NONE, NULL, qb, 3 * D);
            cm_linear(cn + (size_t)b * T * D, D, T, D, cs->qkv_w, cs->qkv_b, CM_ACT_NONE, NULL,
                      qb + (size_t)N * 3 * D, 3 * D);
            qk_norm(qb, N, D, hd, xs);
            qk_norm(qb + (size_t)N * 3 * D, T, D, hd, cs);
        }
        cm_attention(qkv, qkv + D, qkv + 2 * D, ao, &ap);

        /* image stream */
        for (int b = 0; b < B; b++)
            cm_linear(ao + (size_t)b * S * D, D, N, D, xs->proj_w, xs->proj_b, CM_ACT_NONE, NULL,
                      po + (size_t)b * N * D, D);
        gated_add(x, po, B, N, D, modx, 6, 2);
        modulate(x, xn, B, N, D, modx, 6, 3, 4);
        cm_linear(xn, D, (int64_t)B * N, D, xs->fc1_w, xs->fc1_b, CM_ACT_GELU_TANH, NULL, mlp, FF);
        cm_linear(mlp, FF, (int64_t)B * N, FF, xs->fc2_w, xs->fc2_b, CM_ACT_NONE, NULL, po, D);
        gated_add(x, po, B, N, D, modx, 6, 5);
        snprintf(name, sizeof name, "transformer_blocks.%d.hidden", i);
        debug(in, name, x, B, N, D);
        if (bl->pre_only) continue;

        /* text stream */
        for (int b = 0; b < B; b++)
            cm_linear(ao + (size_t)b * S * D + (size_t)N * D, D, T, D, cs->proj_w, cs->proj_b, CM_ACT_NONE,
                      NULL, po + (size_t)b * T * D, D);
        gated_add(cx, po, B, T, D, modc, 6, 2);
        modulate(cx, cn, B, T, D, modc, 6, 3, 4);
        cm_linear(cn, D, (int64_t)B * T, D, cs->fc1_w, cs->fc1_b, CM_ACT_GELU_TANH, NULL, mlp, FF);
        cm_linear(mlp, FF, (int64_t)B * T, FF, cs->fc2_w, cs->fc2_b, CM_ACT_NONE, NULL, po, D);
        gated_add(cx, po, B, T, D, modc, 6, 5);
        snprintf(name, sizeof name, "transformer_blocks.%d.context", i);
        debug(in, name, cx, B, T, D);
    }

    /* final layer: adaLN (shift, scale), linear, unpatchify */
    cm_linear(csilu, D, B, D, d->final_adaLN_w, d->final_adaLN_b, CM_ACT_NONE, NULL, modx, 2 * D);
    modulate(x, xn, B, N, D, modx, 2, 0, 1);
    debug(in, "norm_out", xn, B, N, D);
    cm_linear(xn, D, (int64_t)B * N, D, d->final_w, d->final_b, CM_ACT_NONE, NULL, fin, Ko);
    debug(in, "proj_out", fin, B, N, Ko);
    /* token (gy, gx) feature (ky*p + kx)*Co + c -> out[b][c][gy*p+ky][gx*p+kx] */
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < gh; gy++)
            for (int gx = 0; gx < gw; gx++) {
                const float *f = fin + (((size_t)b * gh + gy) * gw + gx) * Ko;
                for (int ky = 0; ky < p; ky++)
                    for (int kx = 0; kx < p; kx++)
                        for (int c = 0; c < Co; c++)
                            out[(((size_t)b * Co + c) * h + gy * p + ky) * w + gx * p + kx] =
                                f[(ky * p + kx) * Co + c];
            }
    return CM_OK;
}
