/* vae/kl.c — the KL autoencoder of Stable Diffusion: encoder, decoder,
 * tiled decoding, and the latent / pixel conversions around them.
 *
 * Mirrors diffusers' AutoencoderKL (models/autoencoders/vae.py: Encoder,
 * Decoder, UNetMidBlock2D, ResnetBlock2D, Attention with a 1-head
 * GroupNorm'd self-attention over all pixels) configured by the "vae"
 * config section (block_out_channels, layers_per_block, latent_channels,
 * norm_num_groups, scaling_factor, shift_factor, use_quant_conv,
 * use_post_quant_conv, mid_block_add_attention), read from the original
 * LDM tensor names first_stage_model.{encoder,decoder,quant_conv,...}.
 *
 * Traps the names hide:
 *   - LDM's decoder.up.{i} is indexed by resolution level (0 = full size),
 *     the reverse of diffusers' up_blocks: up_blocks.j = up.(n-1-j), and it
 *     runs from up.(n-1) down to up.0; up.0 has no upsample.
 *   - The encoder's stride-2 downsample pads right and bottom only
 *     (F.pad (0,1,0,1)), then convolves with padding 0.
 *   - Attention q/k/v/proj_out are 1x1 convs [C,C,1,1] in LDM files and
 *     linears [C,C] in diffusers folders; both are accepted.
 *   - Every GroupNorm uses eps 1e-6; activations are SiLU.
 *
 * Layout: NCHW at the API, NHWC (token-major) inside. A call runs one
 * batch row at a time through three working buffers of the largest
 * activation size, reused layer after layer; nothing else of that size is
 * live. All maths goes through the common/ kernels, so results are
 * bit-identical for any thread count.
 */
#include "vae_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define VAE_MAX_LEVELS 8
#define VAE_MAX_LAYERS 8
#define VAE_EPS 1e-6f
#define VAE_PREFIX "first_stage_model."

/* ------------------------------------------------------------------------
 * Model structure: views into the weight map, named after the LDM tensors
 * ---------------------------------------------------------------------- */

typedef struct {
    const cm_wview *weight, *bias;
} vae_param;

/* ResnetBlock: norm1 -> SiLU -> conv1 -> norm2 -> SiLU -> conv2, plus the
 * input (through nin_shortcut when the channel count changes). */
typedef struct {
    int cin, cout;
    vae_param norm1, conv1, norm2, conv2, nin_shortcut; /* nin_shortcut.weight NULL: identity */
} vae_resblock;

/* AttnBlock: x + proj_out(softmax(q k^T / sqrt(C)) v), q/k/v of norm(x). */
typedef struct {
    int c;
    vae_param norm, q, k, v, proj_out;
} vae_attnblock;

typedef struct {
    vae_resblock block_1, block_2;
    vae_attnblock attn_1;
    int has_attn;
} vae_mid;

typedef struct {
    vae_resblock block[VAE_MAX_LAYERS];
    vae_param resample; /* downsample.conv / upsample.conv; weight NULL if none */
} vae_level;

struct vae_model {
    const wt_model *wm;
    int nlev, layers, latent, groups, in_ch, out_ch;
    int boc[VAE_MAX_LEVELS];
    float scaling, shift;
    /* encoder */
    vae_param enc_conv_in, enc_norm_out, enc_conv_out, quant_conv;
    vae_level down[VAE_MAX_LEVELS];
    vae_mid enc_mid;
    int enc_out_ch; /* 2 * latent (mean, logvar) */
    /* decoder */
    vae_param post_quant_conv, dec_conv_in, dec_norm_out, dec_conv_out;
    vae_level up[VAE_MAX_LEVELS]; /* LDM order: up[0] is full resolution */
    vae_mid dec_mid;
    int has_encoder, has_decoder, has_quant_conv, has_post_quant_conv, mid_attn;
    vae_trace_fn trace;
    void *trace_ctx;
    vae_taesd *tiny; /* "AutoencoderTiny": everything goes to taesd.c */
};

/* ------------------------------------------------------------------------
 * Loading
 * ---------------------------------------------------------------------- */

static cm_status get_conv(const wt_model *m, vae_param *p, int oc, int ic, int k, const char *name,
                          cm_error *err)
{
    int64_t ws[4] = {oc, ic, k, k}, bs[1] = {oc};
    p->weight = wt_model_requiref(m, err, 4, ws, VAE_PREFIX "%s.weight", name);
    if (!p->weight) return err->status;
    p->bias = wt_model_requiref(m, err, 1, bs, VAE_PREFIX "%s.bias", name);
    if (!p->bias) return err->status;
    return CM_OK;
}


/* A 1x1 projection [oc,ic,1,1] (LDM conv) or [oc,ic] (diffusers linear). */
static cm_status get_proj(const wt_model *m, vae_param *p, int oc, int ic, const char *name,
                          cm_error *err)
{
    char full[512];
    snprintf(full, sizeof full, VAE_PREFIX "%s.weight", name);
    const cm_wview *w = wt_model_get(m, full);
    int two = w && w->ndim == 2;
    int64_t s4[4] = {oc, ic, 1, 1}, s2[2] = {oc, ic}, bs[1] = {oc};
    p->weight = wt_model_require(m, full, two ? 2 : 4, two ? s2 : s4, err);
    if (!p->weight) return err->status;
    p->bias = wt_model_requiref(m, err, 1, bs, VAE_PREFIX "%s.bias", name);
    if (!p->bias) return err->status;
    return CM_OK;
}

static cm_status get_norm(const wt_model *m, vae_param *p, int c, int groups, const char *name,
                          cm_error *err)
{
    if (c % groups != 0)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: vae %s has %d channels, not a multiple of norm_num_groups %d",
                            wt_model_path(m), name, c, groups);
    int64_t s[1] = {c};
    p->weight = wt_model_requiref(m, err, 1, s, VAE_PREFIX "%s.weight", name);
    if (!p->weight) return err->status;
    p->bias = wt_model_requiref(m, err, 1, s, VAE_PREFIX "%s.bias", name);
    if (!p->bias) return err->status;
    return CM_OK;
}

#define TRY(call)                                                                        \
    do {                                                                                 \
        cm_status st_ = (call);                                                          \
        if (st_) return st_;                                                             \
    } while (0)

static cm_status get_resblock(const wt_model *m, vae_resblock *r, int cin, int cout, int groups,
                              const char *base, cm_error *err)
{
    char n[512];
    r->cin = cin;
    r->cout = cout;
    snprintf(n, sizeof n, "%s.norm1", base);
    TRY(get_norm(m, &r->norm1, cin, groups, n, err));
    snprintf(n, sizeof n, "%s.conv1", base);
    TRY(get_conv(m, &r->conv1, cout, cin, 3, n, err));
    snprintf(n, sizeof n, "%s.norm2", base);
    TRY(get_norm(m, &r->norm2, cout, groups, n, err));
    snprintf(n, sizeof n, "%s.conv2", base);
    TRY(get_conv(m, &r->conv2, cout, cout, 3, n, err));
    r->nin_shortcut.weight = r->nin_shortcut.bias = NULL;
    if (cin != cout) {
        snprintf(n, sizeof n, "%s.nin_shortcut", base);
        TRY(get_proj(m, &r->nin_shortcut, cout, cin, n, err));
    }
    return CM_OK;
}

static cm_status get_mid(const wt_model *m, vae_mid *mid, int c, int groups, int attn,
                         const char *base, cm_error *err)
{
    char n[512];
    snprintf(n, sizeof n, "%s.mid.block_1", base);
    TRY(get_resblock(m, &mid->block_1, c, c, groups, n, err));
    snprintf(n, sizeof n, "%s.mid.block_2", base);
    TRY(get_resblock(m, &mid->block_2, c, c, groups, n, err));
    mid->has_attn = attn;
    if (!attn) return CM_OK;
    vae_attnblock *a = &mid->attn_1;
    a->c = c;
    snprintf(n, sizeof n, "%s.mid.attn_1.norm", base);
    TRY(get_norm(m, &a->norm, c, groups, n, err));
    snprintf(n, sizeof n, "%s.mid.attn_1.q", base);
    TRY(get_proj(m, &a->q, c, c, n, err));
    snprintf(n, sizeof n, "%s.mid.attn_1.k", base);
    TRY(get_proj(m, &a->k, c, c, n, err));
    snprintf(n, sizeof n, "%s.mid.attn_1.v", base);
    TRY(get_proj(m, &a->v, c, c, n, err));
    snprintf(n, sizeof n, "%s.mid.attn_1.proj_out", base);
    TRY(get_proj(m, &a->proj_out, c, c, n, err));
    return CM_OK;
}

static cm_status load_encoder(vae_model *v, cm_error *err)
{
    const wt_model *m = v->wm;
    int g = v->groups, n = v->nlev;
    char name[512];
    TRY(get_conv(m, &v->enc_conv_in, v->boc[0], v->in_ch, 3, "encoder.conv_in", err));
    for (int i = 0; i < n; i++) {
        int cin = i == 0 ? v->boc[0] : v->boc[i - 1];
        for (int j = 0; j < v->layers; j++) {
            snprintf(name, sizeof name, "encoder.down.%d.block.%d", i, j);
            TRY(get_resblock(m, &v->down[i].block[j], j == 0 ? cin : v->boc[i], v->boc[i], g, name,
                             err));
        }
        v->down[i].resample.weight = v->down[i].resample.bias = NULL;
        if (i != n - 1) {
            snprintf(name, sizeof name, "encoder.down.%d.downsample.conv", i);
            TRY(get_conv(m, &v->down[i].resample, v->boc[i], v->boc[i], 3, name, err));
        }
    }
    TRY(get_mid(m, &v->enc_mid, v->boc[n - 1], g, v->mid_attn, "encoder", err));
    TRY(get_norm(m, &v->enc_norm_out, v->boc[n - 1], g, "encoder.norm_out", err));
    v->enc_out_ch = 2 * v->latent;
    TRY(get_conv(m, &v->enc_conv_out, v->enc_out_ch, v->boc[n - 1], 3, "encoder.conv_out", err));
    v->quant_conv.weight = v->quant_conv.bias = NULL;
    if (v->has_quant_conv)
        TRY(get_proj(m, &v->quant_conv, v->enc_out_ch, v->enc_out_ch, "quant_conv", err));
    return CM_OK;
}

static cm_status load_decoder(vae_model *v, cm_error *err)
{
    const wt_model *m = v->wm;
    int g = v->groups, n = v->nlev;
    char name[512];
    v->post_quant_conv.weight = v->post_quant_conv.bias = NULL;
    if (v->has_post_quant_conv)
        TRY(get_proj(m, &v->post_quant_conv, v->latent, v->latent, "post_quant_conv", err));
    TRY(get_conv(m, &v->dec_conv_in, v->boc[n - 1], v->latent, 3, "decoder.conv_in", err));
    TRY(get_mid(m, &v->dec_mid, v->boc[n - 1], g, v->mid_attn, "decoder", err));
    int cin = v->boc[n - 1];
    for (int i = n - 1; i >= 0; i--) {
        for (int j = 0; j <= v->layers; j++) {
            snprintf(name, sizeof name, "decoder.up.%d.block.%d", i, j);
            TRY(get_resblock(m, &v->up[i].block[j], j == 0 ? cin : v->boc[i], v->boc[i], g, name,
                             err));
        }
        cin = v->boc[i];
        v->up[i].resample.weight = v->up[i].resample.bias = NULL;
        if (i != 0) {
            snprintf(name, sizeof name, "decoder.up.%d.upsample.conv", i);
            TRY(get_conv(m, &v->up[i].resample, v->boc[i], v->boc[i], 3, name, err));
        }
    }
    TRY(get_norm(m, &v->dec_norm_out, v->boc[0], g, "decoder.norm_out", err));
    TRY(get_conv(m, &v->dec_conv_out, v->out_ch, v->boc[0], 3, "decoder.conv_out", err));
    return CM_OK;
}

vae_model *vae_create(const wt_model *m, cm_error *err)
{
    cm_error local;
    if (!err) err = &local;
    cm_error_clear(err);
    if (!m) {
        cm_error_set(err, CM_ERR_USAGE, "vae_create: no model");
        return NULL;
    }
    const cJSON *cfg = wt_model_section(m, "vae");
    if (!cfg) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: no \"vae\" section in the model config",
                     wt_model_path(m));
        return NULL;
    }
    vae_model *v = cm_calloc(sizeof *v, "vae model", err);
    if (!v) return NULL;
    v->wm = m;
    const char *cls = wt_cfg_str(cfg, "_class_name", "");
    if (cls && !strcmp(cls, "AutoencoderTiny")) {
        if (!(v->tiny = vae_taesd_create(m, cfg, err))) goto fail;
        v->latent = vae_taesd_latent_channels(v->tiny);
        v->scaling = vae_taesd_scaling_factor(v->tiny); /* for vae_unscale_latent */
        v->shift = vae_taesd_shift_factor(v->tiny);
        return v;
    }
    v->nlev = wt_cfg_len(cfg, "block_out_channels");
    if (v->nlev == 0) v->nlev = 4; /* diffusers default [128, 256, 512, 512] */
    if (v->nlev > VAE_MAX_LEVELS) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: vae has %d levels, at most %d supported",
                     wt_model_path(m), v->nlev, VAE_MAX_LEVELS);
        goto fail;
    }
    static const int def_boc[4] = {128, 256, 512, 512};
    for (int i = 0; i < v->nlev; i++) {
        v->boc[i] = wt_cfg_int_at(cfg, "block_out_channels", i, def_boc[i < 4 ? i : 3]);
        if (v->boc[i] < 1 || v->boc[i] > 65536) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: vae block_out_channels[%d] = %d is out of range",
                         wt_model_path(m), i, v->boc[i]);
            goto fail;
        }
    }
    v->layers = wt_cfg_int(cfg, "layers_per_block", 2);
    v->latent = wt_cfg_int(cfg, "latent_channels", 4);
    v->groups = wt_cfg_int(cfg, "norm_num_groups", 32);
    v->in_ch = wt_cfg_int(cfg, "in_channels", 3);
    v->out_ch = wt_cfg_int(cfg, "out_channels", 3);
    v->scaling = (float)wt_cfg_num(cfg, "scaling_factor", 0.18215);
    v->shift = (float)wt_cfg_num(cfg, "shift_factor", 0.0);
    v->has_quant_conv = wt_cfg_int(cfg, "use_quant_conv", 1);
    v->has_post_quant_conv = wt_cfg_int(cfg, "use_post_quant_conv", 1);
    v->mid_attn = wt_cfg_int(cfg, "mid_block_add_attention", 1);
    if (v->layers < 1 || v->layers + 1 > VAE_MAX_LAYERS || v->latent < 1 || v->latent > 4096 ||
        v->groups < 1 || v->in_ch < 1 || v->in_ch > 64 || v->out_ch < 1 || v->out_ch > 64 ||
        !(v->scaling != 0) || !isfinite(v->scaling) || !isfinite(v->shift)) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: unsupported vae config (layers_per_block %d, latent_channels %d, "
                     "norm_num_groups %d, in/out channels %d/%d, scaling_factor %g)",
                     wt_model_path(m), v->layers, v->latent, v->groups, v->in_ch, v->out_ch,
                     (double)v->scaling);
        goto fail;
    }
    /* The decoder is required; the encoder only when its tensors are there
     * (decoder-only VAE files exist), checked in full when present. */
    if (load_decoder(v, err)) goto fail;
    v->has_decoder = 1;
    if (wt_model_count_prefix(m, VAE_PREFIX "encoder.") > 0) {
        if (load_encoder(v, err)) goto fail;
        v->has_encoder = 1;
    }
    return v;
fail:
    cm_free(v);
    return NULL;
}

void vae_free(vae_model *v)
{
    if (!v) return;
    vae_taesd_free(v->tiny);
    cm_free(v);
}

int vae_latent_channels(const vae_model *v)
{
    return v->tiny ? vae_taesd_latent_channels(v->tiny) : v->latent;
}
float vae_scaling_factor(const vae_model *v)
{
    return v->tiny ? vae_taesd_scaling_factor(v->tiny) : v->scaling;
}
float vae_shift_factor(const vae_model *v)
{
    return v->tiny ? vae_taesd_shift_factor(v->tiny) : v->shift;
}
int vae_downscale(const vae_model *v) { return v->tiny ? 8 : 1 << (v->nlev - 1); }

void vae_set_trace(vae_model *v, vae_trace_fn fn, void *ctx)
{
    v->trace = fn;
    v->trace_ctx = ctx;
}

/* ------------------------------------------------------------------------
 * Blocks (NHWC, one batch row). Each block reads the activation in
 * buf[*cur] and leaves its output in one of the three buffers, updating
 * *cur; the other two are scratch.
 * ---------------------------------------------------------------------- */

typedef struct {
    float *buf[3];
    int cur;
    int groups;
} vae_work;

static float *work_other(vae_work *w, int k) { return w->buf[(w->cur + k) % 3]; }

static void trace(const vae_model *v, const char *name, int b, const float *x, int C, int H, int W)
{
    if (v->trace) v->trace(v->trace_ctx, name, b, x, C, H, W);
}

static const cm_conv_params CONV3 = {1, 1};

static void resblock_fwd(vae_work *w, const vae_resblock *r, int H, int W)
{
    int64_t HW = (int64_t)H * W;
    float *x = w->buf[w->cur], *a = work_other(w, 1), *t = work_other(w, 2);
    cm_group_norm(x, a, 1, HW, r->cin, w->groups, VAE_EPS, r->norm1.weight, r->norm1.bias, 1);
    cm_conv2d(a, 1, H, W, r->cin, r->conv1.weight, r->conv1.bias, CONV3, NULL, t);
    cm_group_norm(t, t, 1, HW, r->cout, w->groups, VAE_EPS, r->norm2.weight, r->norm2.bias, 1);
    if (r->nin_shortcut.weight) {
        /* shortcut into a (free now), conv2 + shortcut into x's buffer */
        cm_linear(x, r->cin, HW, r->cin, r->nin_shortcut.weight, r->nin_shortcut.bias, CM_ACT_NONE,
                  NULL, a, r->cout);
        cm_conv2d(t, 1, H, W, r->cout, r->conv2.weight, r->conv2.bias, CONV3, a, x);
    } else {
        cm_conv2d(t, 1, H, W, r->cout, r->conv2.weight, r->conv2.bias, CONV3, x, a);
        w->cur = (w->cur + 1) % 3;
    }
}

/* Single-head self-attention over the H*W pixels, in place in buf[cur].
 * Needs 2*C*HW floats in each scratch buffer (see plan_floats). */
static void attn_fwd(vae_work *w, const vae_attnblock *at, int H, int W)
{
    int64_t T = (int64_t)H * W;
    int C = at->c;
    float *x = w->buf[w->cur], *a = work_other(w, 1), *b = work_other(w, 2);
    float *hn = a, *q = a + (size_t)C * T, *k = b, *vv = b + (size_t)C * T;
    cm_group_norm(x, hn, 1, T, C, w->groups, VAE_EPS, at->norm.weight, at->norm.bias, 0);
    cm_linear(hn, C, T, C, at->q.weight, at->q.bias, CM_ACT_NONE, NULL, q, C);
    cm_linear(hn, C, T, C, at->k.weight, at->k.bias, CM_ACT_NONE, NULL, k, C);
    cm_linear(hn, C, T, C, at->v.weight, at->v.bias, CM_ACT_NONE, NULL, vv, C);
    cm_attn_params p = {
        .B = 1, .heads = 1, .Tq = (int)T, .Tk = (int)T, .hd = C,
        .q_stride = C, .k_stride = C, .v_stride = C, .o_stride = C,
        .q_bstride = 0, .k_bstride = 0, .v_bstride = 0, .o_bstride = 0,
        .scale = 1.0f / sqrtf((float)C), .causal = 0,
    };
    float *o = hn; /* hn is dead once q, k, v exist */
    cm_attention(q, k, vv, o, &p);
    cm_linear(o, C, T, C, at->proj_out.weight, at->proj_out.bias, CM_ACT_NONE, x, x, C);
}

static void mid_fwd(vae_work *w, const vae_mid *mid, int H, int W)
{
    resblock_fwd(w, &mid->block_1, H, W);
    if (mid->has_attn) attn_fwd(w, &mid->attn_1, H, W);
    resblock_fwd(w, &mid->block_2, H, W);
}

/* 1x1 projection (weight [OC,IC,1,1] or [OC,IC]) from buf[cur] into the
 * next buffer. */
static void proj_fwd(vae_work *w, const vae_param *p, int64_t T, int ic)
{
    int oc = (int)p->weight->shape[0];
    float *y = work_other(w, 1);
    cm_linear(w->buf[w->cur], ic, T, ic, p->weight, p->bias, CM_ACT_NONE, NULL, y, oc);
    w->cur = (w->cur + 1) % 3;
}

static void conv3_fwd(vae_work *w, const vae_param *p, int H, int W, int ic)
{
    float *y = work_other(w, 1);
    cm_conv2d(w->buf[w->cur], 1, H, W, ic, p->weight, p->bias, CONV3, NULL, y);
    w->cur = (w->cur + 1) % 3;
}

/* ------------------------------------------------------------------------
 * Working memory plan: the largest number of floats any buffer must hold.
 * ---------------------------------------------------------------------- */

static int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/* Returns -1 on overflow (sizes beyond 2^62 floats). */
static int64_t dec_floats(const vae_model *v, int64_t h, int64_t w)
{
    if (h < 1 || w < 1 || h > (1 << 20) || w > (1 << 20)) return -1;
    int n = v->nlev;
    int64_t HW = h * w, m = imax(v->latent, v->boc[n - 1]) * HW;
    if (v->mid_attn) m = imax(m, 2 * (int64_t)v->boc[n - 1] * HW);
    int64_t H = h, W = w;
    for (int i = n - 1; i >= 0; i--) {
        int cin = i == n - 1 ? v->boc[n - 1] : v->boc[i + 1];
        m = imax(m, imax(cin, v->boc[i]) * H * W);
        if (i != 0) {
            H *= 2;
            W *= 2;
            if (H * W > ((int64_t)1 << 40)) return -1;
            m = imax(m, (int64_t)v->boc[i] * H * W);
        }
    }
    m = imax(m, (int64_t)v->out_ch * H * W);
    return m;
}

static int64_t enc_floats(const vae_model *v, int64_t H, int64_t W)
{
    if (H < 1 || W < 1 || H > (1 << 22) || W > (1 << 22)) return -1;
    if (H * W > ((int64_t)1 << 40)) return -1;
    int n = v->nlev;
    int64_t m = imax(v->in_ch, v->boc[0]) * H * W;
    for (int i = 0; i < n; i++) {
        int cin = i == 0 ? v->boc[0] : v->boc[i - 1];
        m = imax(m, imax(cin, v->boc[i]) * H * W);
        if (i != n - 1) {
            m = imax(m, (int64_t)v->boc[i] * (H + 1) * (W + 1)); /* padded copy */
            H /= 2;
            W /= 2;
        }
    }
    if (v->mid_attn) m = imax(m, 2 * (int64_t)v->boc[n - 1] * H * W);
    m = imax(m, (int64_t)v->enc_out_ch * H * W);
    return m;
}

static size_t plan_bytes(int64_t floats)
{
    size_t per;
    if (floats < 0 || !cm_mul_size((size_t)floats, sizeof(float), &per)) return 0;
    size_t all;
    if (!cm_mul_size(per, 3, &all)) return 0;
    return all;
}

size_t vae_decode_bytes(const vae_model *v, int h, int w)
{
    return v->tiny ? vae_taesd_decode_bytes(v->tiny, h, w) : plan_bytes(dec_floats(v, h, w));
}
size_t vae_encode_bytes(const vae_model *v, int H, int W)
{
    return v->tiny ? vae_taesd_encode_bytes(v->tiny, H, W) : plan_bytes(enc_floats(v, H, W));
}

static cm_status work_alloc(vae_work *w, int64_t floats, int groups, const char *what, cm_error *err)
{
    memset(w, 0, sizeof *w);
    w->groups = groups;
    size_t bytes = plan_bytes(floats) / 3; /* one of the three buffers */
    if (bytes == 0) return cm_error_set(err, CM_ERR_USAGE, "%s: image size too large", what);
    for (int i = 0; i < 3; i++) {
        w->buf[i] = cm_alloc(bytes, what, err);
        if (!w->buf[i]) return err->status;
    }
    return CM_OK;
}

static void work_free(vae_work *w)
{
    for (int i = 0; i < 3; i++) cm_free(w->buf[i]);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------------
 * Decoder
 * ---------------------------------------------------------------------- */

/* One batch row: zin (latent, h, w) NCHW -> out (out_ch, 8h, 8w) NCHW. */
static void decode_one(vae_model *v, vae_work *w, const float *zin, int b, int h, int wd,
                       float *out)
{
    int n = v->nlev, L = v->latent;
    int64_t HW = (int64_t)h * wd;
    float *x = w->buf[w->cur];
    for (int c = 0; c < L; c++)
        for (int64_t i = 0; i < HW; i++) x[i * L + c] = zin[(int64_t)c * HW + i];
    if (v->post_quant_conv.weight) {
        proj_fwd(w, &v->post_quant_conv, HW, L);
        trace(v, "post_quant_conv", b, w->buf[w->cur], L, h, wd);
    }
    conv3_fwd(w, &v->dec_conv_in, h, wd, L);
    trace(v, "decoder.conv_in", b, w->buf[w->cur], v->boc[n - 1], h, wd);
    mid_fwd(w, &v->dec_mid, h, wd);
    trace(v, "decoder.mid_block", b, w->buf[w->cur], v->boc[n - 1], h, wd);
    int H = h, W = wd;
    for (int i = n - 1; i >= 0; i--) {
        for (int j = 0; j <= v->layers; j++) resblock_fwd(w, &v->up[i].block[j], H, W);
        if (i != 0) {
            float *y = work_other(w, 1);
            cm_upsample2x_conv3x3(w->buf[w->cur], 1, H, W, v->boc[i], v->up[i].resample.weight,
                                  v->up[i].resample.bias, y);
            w->cur = (w->cur + 1) % 3;
            H *= 2;
            W *= 2;
        }
        char name[64];
        snprintf(name, sizeof name, "decoder.up_blocks.%d", n - 1 - i);
        trace(v, name, b, w->buf[w->cur], v->boc[i], H, W);
    }
    float *t = w->buf[w->cur];
    int64_t P = (int64_t)H * W;
    cm_group_norm(t, t, 1, P, v->boc[0], w->groups, VAE_EPS, v->dec_norm_out.weight,
                  v->dec_norm_out.bias, 1);
    conv3_fwd(w, &v->dec_conv_out, H, W, v->boc[0]);
    const float *y = w->buf[w->cur];
    int OC = v->out_ch;
    for (int c = 0; c < OC; c++)
        for (int64_t i = 0; i < P; i++) out[(int64_t)c * P + i] = y[i * OC + c];
}

cm_status vae_decode(vae_model *v, const float *z, int B, int h, int w, float *img, cm_error *err)
{
    cm_error local;
    if (!err) err = &local;
    if (!v || !z || !img)
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode: NULL argument");
    if (v->tiny) return vae_taesd_decode(v->tiny, z, B, h, w, img, err);
    if (B < 1 || h < 1 || w < 1)
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode: bad latent shape (%d, %d, %d, %d)", B,
                            v->latent, h, w);
    int64_t floats = dec_floats(v, h, w);
    if (floats < 0)
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode: latent %dx%d is too large", h, w);
    vae_work wk;
    cm_status st = work_alloc(&wk, floats, v->groups, "vae decoder activations", err);
    if (st) goto done;
    int f = vae_downscale(v);
    int64_t zs = (int64_t)v->latent * h * w, is = (int64_t)v->out_ch * h * f * w * f;
    for (int b = 0; b < B; b++) {
        if (cm_interrupted) {
            st = cm_error_set(err, CM_ERR_INTERRUPTED, "vae_decode: interrupted");
            goto done;
        }
        wk.cur = 0;
        decode_one(v, &wk, z + b * zs, b, h, w, img + b * is);
    }
done:
    work_free(&wk);
    return st;
}

/* ------------------------------------------------------------------------
 * Encoder
 * ---------------------------------------------------------------------- */

/* One batch row: x (in_ch, H, W) NCHW -> moments NHWC in buf[cur]. */
static void encode_one(vae_model *v, vae_work *w, const float *xin, int b, int H, int W)
{
    int n = v->nlev, IC = v->in_ch;
    int64_t HW = (int64_t)H * W;
    float *x = w->buf[w->cur];
    for (int c = 0; c < IC; c++)
        for (int64_t i = 0; i < HW; i++) x[i * IC + c] = xin[(int64_t)c * HW + i];
    conv3_fwd(w, &v->enc_conv_in, H, W, IC);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < v->layers; j++) resblock_fwd(w, &v->down[i].block[j], H, W);
        if (i != n - 1) {
            /* F.pad(x, (0, 1, 0, 1)) then a stride-2 conv with padding 0. */
            int C = v->boc[i], PW = W + 1;
            const float *s = w->buf[w->cur];
            float *p = work_other(w, 1);
            for (int y = 0; y <= H; y++) {
                float *row = p + (int64_t)y * PW * C;
                if (y < H) {
                    memcpy(row, s + (int64_t)y * W * C, (size_t)W * C * sizeof(float));
                    memset(row + (int64_t)W * C, 0, (size_t)C * sizeof(float));
                } else {
                    memset(row, 0, (size_t)PW * C * sizeof(float));
                }
            }
            cm_conv_params ds = {2, 0};
            cm_conv2d(p, 1, H + 1, W + 1, C, v->down[i].resample.weight, v->down[i].resample.bias,
                      ds, NULL, w->buf[w->cur]);
            H /= 2;
            W /= 2;
        }
        char name[64];
        snprintf(name, sizeof name, "encoder.down_blocks.%d", i);
        trace(v, name, b, w->buf[w->cur], v->boc[i], H, W);
    }
    int C = v->boc[n - 1];
    mid_fwd(w, &v->enc_mid, H, W);
    trace(v, "encoder.mid_block", b, w->buf[w->cur], C, H, W);
    float *t = w->buf[w->cur];
    cm_group_norm(t, t, 1, (int64_t)H * W, C, w->groups, VAE_EPS, v->enc_norm_out.weight,
                  v->enc_norm_out.bias, 1);
    conv3_fwd(w, &v->enc_conv_out, H, W, C);
    trace(v, "encoder.conv_out", b, w->buf[w->cur], v->enc_out_ch, H, W);
    if (v->quant_conv.weight) {
        proj_fwd(w, &v->quant_conv, (int64_t)H * W, v->enc_out_ch);
        trace(v, "quant_conv", b, w->buf[w->cur], v->enc_out_ch, H, W);
    }
}

cm_status vae_encode(vae_model *v, const float *img, int B, int H, int W, float *mean,
                     float *logvar, cm_error *err)
{
    cm_error local;
    if (!err) err = &local;
    if (!v || !img || !mean || !logvar)
        return cm_error_set(err, CM_ERR_USAGE, "vae_encode: NULL argument");
    if (v->tiny) return vae_taesd_encode(v->tiny, img, B, H, W, mean, logvar, err);
    if (!v->has_encoder)
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: the vae has no encoder weights",
                            wt_model_path(v->wm));
    int f = vae_downscale(v);
    if (B < 1 || H < f || W < f || H % f || W % f)
        return cm_error_set(err, CM_ERR_USAGE,
                            "vae_encode: image %dx%d (batch %d) is not a positive multiple of %d",
                            W, H, B, f);
    int64_t floats = enc_floats(v, H, W);
    if (floats < 0)
        return cm_error_set(err, CM_ERR_USAGE, "vae_encode: image %dx%d is too large", W, H);
    vae_work wk;
    cm_status st = work_alloc(&wk, floats, v->groups, "vae encoder activations", err);
    if (st) goto done;
    int L = v->latent, M = v->enc_out_ch;
    int64_t is = (int64_t)v->in_ch * H * W, P = (int64_t)(H / f) * (W / f), ls = (int64_t)L * P;
    for (int b = 0; b < B; b++) {
        if (cm_interrupted) {
            st = cm_error_set(err, CM_ERR_INTERRUPTED, "vae_encode: interrupted");
            goto done;
        }
        wk.cur = 0;
        encode_one(v, &wk, img + b * is, b, H, W);
        const float *mo = wk.buf[wk.cur];
        for (int c = 0; c < L; c++)
            for (int64_t i = 0; i < P; i++) {
                float lv = mo[i * M + L + c];
                lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
                mean[b * ls + c * P + i] = mo[i * M + c];
                logvar[b * ls + c * P + i] = lv;
            }
    }
done:
    work_free(&wk);
    return st;
}

/* ------------------------------------------------------------------------
 * Tiled decoding
 * ---------------------------------------------------------------------- */

/* Tile starts along one axis: every `step`, the last one flush with the end. */
static int tile_starts(int len, int tile, int step, int *starts, int cap)
{
    int n = 0;
    for (int s = 0; n < cap; s += step) {
        if (s + tile >= len) {
            starts[n++] = len > tile ? len - tile : 0;
            break;
        }
        starts[n++] = s;
    }
    return n;
}

/* Blend weight of pixel p in [0, size) of a tile with a ramp of length r
 * on each edge that borders another tile (lo / hi flags). */
static float ramp(int p, int size, int r, int lo, int hi)
{
    float wgt = 1.0f;
    if (r > 0 && lo && p < r) wgt = fminf(wgt, ((float)p + 0.5f) / (float)r);
    if (r > 0 && hi && size - 1 - p < r) wgt = fminf(wgt, ((float)(size - 1 - p) + 0.5f) / (float)r);
    return wgt;
}

cm_status vae_decode_tiled(vae_model *v, const float *z, int B, int h, int w, int tile,
                           int overlap, float *img, cm_error *err)
{
    cm_error local;
    if (!err) err = &local;
    if (!v || !z || !img) return cm_error_set(err, CM_ERR_USAGE, "vae_decode_tiled: NULL argument");
    /* The tiny decoder has no GroupNorm over the image: one call, no tiles. */
    if (v->tiny) return vae_taesd_decode(v->tiny, z, B, h, w, img, err);
    if (B < 1 || h < 1 || w < 1)
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode_tiled: bad latent shape (%d, %d, %d, %d)",
                            B, v->latent, h, w);
    if (tile < 1 || overlap < 0 || overlap >= tile)
        return cm_error_set(err, CM_ERR_USAGE,
                            "vae_decode_tiled: tile %d with overlap %d (need 0 <= overlap < tile)",
                            tile, overlap);
    int th = tile < h ? tile : h, tw = tile < w ? tile : w, f = vae_downscale(v);
    int64_t floats = dec_floats(v, th, tw);
    if (floats < 0 || (int64_t)h * w > ((int64_t)1 << 32))
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode_tiled: latent %dx%d is too large", h, w);
    enum { MAXT = 4096 };
    int ys[MAXT], xs[MAXT];
    int ny = tile_starts(h, th, tile - overlap, ys, MAXT);
    int nx = tile_starts(w, tw, tile - overlap, xs, MAXT);
    if (ys[ny - 1] + th < h || xs[nx - 1] + tw < w)
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode_tiled: too many tiles of %d for %dx%d",
                            tile, h, w);
    int L = v->latent, OC = v->out_ch, H = h * f, W = w * f, TH = th * f, TW = tw * f, R = overlap * f;
    int64_t P = (int64_t)H * W, TP = (int64_t)TH * TW;
    vae_work wk;
    float *zt = NULL, *it = NULL, *wsum = NULL, *wy = NULL, *wx = NULL;
    cm_status st = work_alloc(&wk, floats, v->groups, "vae decoder activations", err);
    if (st) goto done;
    zt = cm_alloc((size_t)L * th * tw * sizeof(float), "vae tile latent", err);
    it = cm_alloc((size_t)OC * TP * sizeof(float), "vae tile image", err);
    wsum = cm_alloc((size_t)P * sizeof(float), "vae tile weights", err);
    wy = cm_alloc((size_t)TH * sizeof(float), "vae tile ramp", err);
    wx = cm_alloc((size_t)TW * sizeof(float), "vae tile ramp", err);
    if (!zt || !it || !wsum || !wy || !wx) {
        st = err->status;
        goto done;
    }
    for (int b = 0; b < B; b++) {
        const float *zb = z + (int64_t)b * L * h * w;
        float *ib = img + (int64_t)b * OC * P;
        memset(ib, 0, (size_t)OC * P * sizeof(float));
        memset(wsum, 0, (size_t)P * sizeof(float));
        for (int ty = 0; ty < ny; ty++)
            for (int tx = 0; tx < nx; tx++) {
                if (cm_interrupted) {
                    st = cm_error_set(err, CM_ERR_INTERRUPTED, "vae_decode_tiled: interrupted");
                    goto done;
                }
                int y0 = ys[ty], x0 = xs[tx];
                for (int c = 0; c < L; c++)
                    for (int y = 0; y < th; y++)
                        memcpy(zt + ((int64_t)c * th + y) * tw,
                               zb + ((int64_t)c * h + y0 + y) * w + x0, (size_t)tw * sizeof(float));
                wk.cur = 0;
                decode_one(v, &wk, zt, b, th, tw, it);
                for (int y = 0; y < TH; y++) wy[y] = ramp(y, TH, R, ty > 0, ty < ny - 1);
                for (int x = 0; x < TW; x++) wx[x] = ramp(x, TW, R, tx > 0, tx < nx - 1);
                int64_t Y0 = (int64_t)y0 * f, X0 = (int64_t)x0 * f;
                for (int y = 0; y < TH; y++)
                    for (int x = 0; x < TW; x++) {
                        float wgt = wy[y] * wx[x];
                        int64_t at = (Y0 + y) * W + X0 + x;
                        wsum[at] += wgt;
                        for (int c = 0; c < OC; c++)
                            ib[c * P + at] += wgt * it[(int64_t)c * TP + (int64_t)y * TW + x];
                    }
            }
        for (int c = 0; c < OC; c++)
            for (int64_t i = 0; i < P; i++) ib[c * P + i] /= wsum[i];
    }
done:
    work_free(&wk);
    cm_free(zt);
    cm_free(it);
    cm_free(wsum);
    cm_free(wy);
    cm_free(wx);
    return st;
}

/* ------------------------------------------------------------------------
 * Latent and pixel conversions (float32, in the reference's order of
 * operations so that results round the same way)
 * ---------------------------------------------------------------------- */

void vae_unscale_latent(const vae_model *v, const float *x, int64_t n, float *out)
{
    float s = v->scaling, sh = v->shift;
    for (int64_t i = 0; i < n; i++) {
        float t = x[i] / s;
        out[i] = sh != 0.0f ? t + sh : t;
    }
}

void vae_latent_from_moments(const float *mean, const float *logvar, const float *eps, int64_t n,
                             float scaling, float shift, float *out)
{
    for (int64_t i = 0; i < n; i++) {
        float s = mean[i];
        if (eps) {
            float sd = expf(0.5f * logvar[i]);
            float d = sd * eps[i];
            s = s + d;
        }
        if (shift != 0.0f) s = s - shift;
        out[i] = s * scaling;
    }
}

void vae_to_u8(const float *img, int B, int H, int W, uint8_t *out)
{
    int64_t P = (int64_t)H * W;
    for (int b = 0; b < B; b++)
        for (int64_t i = 0; i < P; i++)
            for (int c = 0; c < 3; c++) {
                float t = img[((int64_t)b * 3 + c) * P + i] / 2.0f + 0.5f;
                t = t < 0.0f ? 0.0f : t > 1.0f ? 1.0f : t; /* NaN stays NaN: checked below */
                t = rintf(t * 255.0f);                     /* half to even, as numpy's round */
                out[((int64_t)b * P + i) * 3 + c] = t >= 0.0f && t <= 255.0f ? (uint8_t)t : 0;
            }
}

void vae_from_u8(const uint8_t *rgb, int B, int H, int W, float *img)
{
    int64_t P = (int64_t)H * W;
    for (int b = 0; b < B; b++)
        for (int64_t i = 0; i < P; i++)
            for (int c = 0; c < 3; c++) {
                float t = (float)rgb[((int64_t)b * P + i) * 3 + c] / 255.0f;
                img[((int64_t)b * 3 + c) * P + i] = 2.0f * t - 1.0f;
            }
}
