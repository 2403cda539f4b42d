/* vae/taesd.c — tiny autoencoders (TAESD family: TAESD, TAESDXL, TAEF2):
 * decoder and encoder, picked by vae_create when the "vae" config section
 * says "_class_name": "AutoencoderTiny".
 *
 * Mirrors madebyollin/taesd (taesd.py: Encoder / Decoder as nn.Sequential,
 * Block = conv-ReLU-conv-ReLU-conv + identity skip, then ReLU), with the
 * optional TAEF2 "pool" branch in front of a block:
 *   x = x + conv1x1(ReLU(GroupNorm4(conv1x1(x))))   (256 hidden channels)
 * Tensor names are the original Sequential positions under
 * first_stage_model.decoder.N.* and first_stage_model.encoder.N.*:
 *   decoder: 0 tanh clamp (3*tanh(z/3)), 1 conv L->64, 2 ReLU, 3-5 blocks,
 *            6 up x2, 7 conv (no bias), 8-10 blocks, 11 up, 12 conv,
 *            13-15 blocks, 16 up, 17 conv, 18 block, 19 conv 64->3
 *   encoder: 0 conv 3->64, 1 block, 2 conv s2 (no bias), 3-5 blocks, 6 conv
 *            s2, 7-9 blocks, 10 conv s2, 11-13 blocks, 14 conv 64->L
 * A block has a pool branch when its N.pool.0.weight is present.
 *
 * The tiny autoencoder works on images in [0, 1]; this file keeps the vae.h
 * contract (images in [-1, 1]): decode returns 2y - 1, encode reads
 * (x + 1) / 2. It is deterministic, so encode returns the latent as the
 * mean and logvar = -30 (the clamp floor). Layout: NCHW at the API, NHWC
 * inside, three working buffers of the largest activation plus one for
 * the pool branch; every op goes through the common/ kernels.
 */
#include "vae_internal.h"

#include <math.h>
#include <string.h>

#define TS_PREFIX "first_stage_model."
#define TS_CH 64
#define TS_POOL 256
#define TS_GN_GROUPS 4
#define TS_GN_EPS 1e-5f

typedef struct {
    const cm_wview *weight, *bias; /* bias NULL: none */
} ts_param;

typedef struct {
    ts_param conv[3];
    int has_pool;
    ts_param pool0, pool1, pool3; /* 1x1 conv, GroupNorm, 1x1 conv */
} ts_block;

/* A layer of the Sequential: a conv (stride 1 or 2, optionally after a
 * nearest 2x upsample) or a block. */
typedef enum { TS_CONV, TS_CONV_S2, TS_UP_CONV, TS_BLOCK } ts_kind;

typedef struct {
    ts_kind kind;
    int idx, cin, cout, relu; /* relu: a ReLU layer follows (decoder's 1) */
    ts_param conv;
    ts_block block;
} ts_layer;

#define TS_MAX_LAYERS 20

struct vae_taesd {
    const wt_model *wm;
    int latent;
    float scaling, shift;
    int ndec, nenc, has_encoder;
    ts_layer dec[TS_MAX_LAYERS], enc[TS_MAX_LAYERS];
};

/* ------------------------------------------------------------------------
 * Loading
 * ---------------------------------------------------------------------- */

static cm_status get_conv(const wt_model *m, const char *part, int idx, ts_param *p, int oc,
                          int ic, int k, int bias, cm_error *err)
{
    int64_t ws[4] = {oc, ic, k, k}, bs[1] = {oc};
    p->weight = wt_model_requiref(m, err, 4, ws, TS_PREFIX "%s.%d.weight", part, idx);
    if (!p->weight) return err->status;
    p->bias = NULL;
    if (bias) {
        p->bias = wt_model_requiref(m, err, 1, bs, TS_PREFIX "%s.%d.bias", part, idx);
        if (!p->bias) return err->status;
    }
    return CM_OK;
}

static cm_status get_block(const wt_model *m, const char *part, int idx, ts_block *b, cm_error *err)
{
    int64_t ws[4] = {TS_CH, TS_CH, 3, 3}, bs[1] = {TS_CH};
    for (int i = 0; i < 3; i++) {
        b->conv[i].weight = wt_model_requiref(m, err, 4, ws, TS_PREFIX "%s.%d.conv.%d.weight", part,
                                              idx, 2 * i);
        if (!b->conv[i].weight) return err->status;
        b->conv[i].bias = wt_model_requiref(m, err, 1, bs, TS_PREFIX "%s.%d.conv.%d.bias", part, idx,
                                            2 * i);
        if (!b->conv[i].bias) return err->status;
    }
    b->has_pool = wt_model_getf(m, TS_PREFIX "%s.%d.pool.0.weight", part, idx) != NULL;
    if (b->has_pool) {
        int64_t p0[4] = {TS_POOL, TS_CH, 1, 1}, p3[4] = {TS_CH, TS_POOL, 1, 1}, g[1] = {TS_POOL};
        b->pool0.weight = wt_model_requiref(m, err, 4, p0, TS_PREFIX "%s.%d.pool.0.weight", part, idx);
        if (!b->pool0.weight) return err->status;
        b->pool1.weight = wt_model_requiref(m, err, 1, g, TS_PREFIX "%s.%d.pool.1.weight", part, idx);
        if (!b->pool1.weight) return err->status;
        b->pool1.bias = wt_model_requiref(m, err, 1, g, TS_PREFIX "%s.%d.pool.1.bias", part, idx);
        if (!b->pool1.bias) return err->status;
        b->pool3.weight = wt_model_requiref(m, err, 4, p3, TS_PREFIX "%s.%d.pool.3.weight", part, idx);
        if (!b->pool3.weight) return err->status;
    }
    return CM_OK;
}

/* The fixed TAESD layouts: (kind, index, in, out, bias) per layer with
 * parameters; L is the latent channel count. */
static cm_status load_layers(const wt_model *m, const char *part, int L, ts_layer *out, int *n,
                             cm_error *err)
{
    int dec = !strcmp(part, "decoder");
    static const struct {
        ts_kind kind;
        int idx;
    } dl[] = {{TS_CONV, 1},     {TS_BLOCK, 3},    {TS_BLOCK, 4},     {TS_BLOCK, 5},
              {TS_UP_CONV, 7},  {TS_BLOCK, 8},    {TS_BLOCK, 9},     {TS_BLOCK, 10},
              {TS_UP_CONV, 12}, {TS_BLOCK, 13},   {TS_BLOCK, 14},    {TS_BLOCK, 15},
              {TS_UP_CONV, 17}, {TS_BLOCK, 18},   {TS_CONV, 19}},
      el[] = {{TS_CONV, 0},     {TS_BLOCK, 1},    {TS_CONV_S2, 2},   {TS_BLOCK, 3},
              {TS_BLOCK, 4},    {TS_BLOCK, 5},    {TS_CONV_S2, 6},   {TS_BLOCK, 7},
              {TS_BLOCK, 8},    {TS_BLOCK, 9},    {TS_CONV_S2, 10},  {TS_BLOCK, 11},
              {TS_BLOCK, 12},   {TS_BLOCK, 13},   {TS_CONV, 14}};
    int cnt = dec ? (int)(sizeof dl / sizeof dl[0]) : (int)(sizeof el / sizeof el[0]);
    for (int i = 0; i < cnt; i++) {
        ts_layer *l = &out[i];
        memset(l, 0, sizeof *l);
        l->kind = dec ? dl[i].kind : el[i].kind;
        l->idx = dec ? dl[i].idx : el[i].idx;
        l->cin = l->cout = TS_CH;
        if (i == 0) l->cin = dec ? L : 3;
        if (i == cnt - 1) l->cout = dec ? 3 : L;
        l->relu = dec && i == 0;
        cm_status st;
        if (l->kind == TS_BLOCK) {
            st = get_block(m, part, l->idx, &l->block, err);
            /* the pool buffer is sized for the latent resolution only */
            int lowres = dec ? l->idx <= 5 : l->idx >= 11;
            if (!st && l->block.has_pool && !lowres)
                st = cm_error_set(err, CM_ERR_UNSUPPORTED,
                                  "%s: tiny vae %s.%d has a pool branch above the latent resolution",
                                  wt_model_path(m), part, l->idx);
        } else
            st = get_conv(m, part, l->idx, &l->conv, l->cout, l->cin, 3, l->kind == TS_CONV, err);
        if (st) return st;
    }
    *n = cnt;
    return CM_OK;
}

vae_taesd *vae_taesd_create(const wt_model *m, const cJSON *cfg, cm_error *err)
{
    vae_taesd *t = cm_calloc(sizeof *t, "tiny autoencoder", err);
    if (!t) return NULL;
    t->wm = m;
    t->latent = wt_cfg_int(cfg, "latent_channels", 4);
    t->scaling = (float)wt_cfg_num(cfg, "scaling_factor", 1.0);
    t->shift = (float)wt_cfg_num(cfg, "shift_factor", 0.0);
    if (t->latent < 1 || t->latent > 4096 || !(t->scaling != 0) || !isfinite(t->scaling) ||
        !isfinite(t->shift)) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: unsupported tiny vae config (latent_channels %d, scaling_factor %g)",
                     wt_model_path(m), t->latent, (double)t->scaling);
        goto fail;
    }
    if (load_layers(m, "decoder", t->latent, t->dec, &t->ndec, err)) goto fail;
    if (wt_model_count_prefix(m, TS_PREFIX "encoder.") > 0) {
        if (load_layers(m, "encoder", t->latent, t->enc, &t->nenc, err)) goto fail;
        t->has_encoder = 1;
    }
    return t;
fail:
    cm_free(t);
    return NULL;
}

void vae_taesd_free(vae_taesd *t) { cm_free(t); }
int vae_taesd_latent_channels(const vae_taesd *t) { return t->latent; }
float vae_taesd_scaling_factor(const vae_taesd *t) { return t->scaling; }
float vae_taesd_shift_factor(const vae_taesd *t) { return t->shift; }

/* ------------------------------------------------------------------------
 * Forward (NHWC, one batch row)
 * ---------------------------------------------------------------------- */

typedef struct {
    float *buf[3];
    float *pool; /* TS_POOL x (pixels of the smallest level) */
    int cur;
} ts_work;

static void relu(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static float *other(ts_work *w, int k) { return w->buf[(w->cur + k) % 3]; }

static void block_fwd(ts_work *w, const ts_block *b, int H, int W)
{
    static const cm_conv_params c3 = {1, 1};
    int64_t P = (int64_t)H * W;
    float *x = w->buf[w->cur], *a = other(w, 1), *c = other(w, 2);
    if (b->has_pool) {
        /* x += pool3(ReLU(GN(pool0(x)))) */
        cm_linear(x, TS_CH, P, TS_CH, b->pool0.weight, NULL, CM_ACT_NONE, NULL, w->pool, TS_POOL);
        cm_group_norm(w->pool, w->pool, 1, P, TS_POOL, TS_GN_GROUPS, TS_GN_EPS, b->pool1.weight,
                      b->pool1.bias, 0);
        relu(w->pool, P * TS_POOL);
        cm_linear(w->pool, TS_POOL, P, TS_POOL, b->pool3.weight, NULL, CM_ACT_NONE, x, x, TS_CH);
    }
    cm_conv2d(x, 1, H, W, TS_CH, b->conv[0].weight, b->conv[0].bias, c3, NULL, a);
    relu(a, P * TS_CH);
    cm_conv2d(a, 1, H, W, TS_CH, b->conv[1].weight, b->conv[1].bias, c3, NULL, c);
    relu(c, P * TS_CH);
    cm_conv2d(c, 1, H, W, TS_CH, b->conv[2].weight, b->conv[2].bias, c3, x, a);
    relu(a, P * TS_CH);
    w->cur = (w->cur + 1) % 3;
}

/* Runs layers over buf[cur] (H x W x cin); returns the final size. */
static void run_layers(ts_work *w, const ts_layer *ls, int n, int *H, int *W)
{
    for (int i = 0; i < n; i++) {
        const ts_layer *l = &ls[i];
        float *x = w->buf[w->cur], *y = other(w, 1);
        switch (l->kind) {
        case TS_BLOCK:
            block_fwd(w, &l->block, *H, *W);
            continue;
        case TS_CONV: {
            static const cm_conv_params p = {1, 1};
            cm_conv2d(x, 1, *H, *W, l->cin, l->conv.weight, l->conv.bias, p, NULL, y);
            break;
        }
        case TS_CONV_S2: {
            static const cm_conv_params p = {2, 1};
            cm_conv2d(x, 1, *H, *W, l->cin, l->conv.weight, l->conv.bias, p, NULL, y);
            *H = (*H - 1) / 2 + 1;
            *W = (*W - 1) / 2 + 1;
            break;
        }
        case TS_UP_CONV:
            cm_upsample2x_conv3x3(x, 1, *H, *W, l->cin, l->conv.weight, l->conv.bias, y);
            *H *= 2;
            *W *= 2;
            break;
        }
        if (l->relu) relu(y, (int64_t)*H * *W * l->cout);
        w->cur = (w->cur + 1) % 3;
    }
}

/* Largest activation (floats) and pool buffer for a latent h x w. */
static int64_t ts_floats(const vae_taesd *t, int64_t h, int64_t w, int64_t *pool)
{
    if (h < 1 || w < 1 || h > (1 << 20) || w > (1 << 20) || h * w > ((int64_t)1 << 34)) return -1;
    int64_t big = 64 * h * w * TS_CH; /* 8h x 8w x 64 */
    int64_t lat = h * w * (t->latent > TS_CH ? t->latent : TS_CH);
    *pool = h * w * TS_POOL;
    return big > lat ? big : lat;
}

static cm_status work_alloc(ts_work *w, int64_t floats, int64_t pool, const char *what, cm_error *err)
{
    memset(w, 0, sizeof *w);
    size_t bytes;
    if (floats < 0 || !cm_mul_size((size_t)floats, sizeof(float), &bytes))
        return cm_error_set(err, CM_ERR_USAGE, "%s: image size too large", what);
    for (int i = 0; i < 3; i++)
        if (!(w->buf[i] = cm_alloc(bytes, what, err))) return err->status;
    if (!(w->pool = cm_alloc((size_t)pool * sizeof(float), what, err))) return err->status;
    return CM_OK;
}

static void work_free(ts_work *w)
{
    for (int i = 0; i < 3; i++) cm_free(w->buf[i]);
    cm_free(w->pool);
    memset(w, 0, sizeof *w);
}

size_t vae_taesd_decode_bytes(const vae_taesd *t, int h, int w)
{
    int64_t pool, f = ts_floats(t, h, w, &pool);
    if (f < 0) return 0;
    return (size_t)(3 * f + pool) * sizeof(float);
}

size_t vae_taesd_encode_bytes(const vae_taesd *t, int H, int W)
{
    if (H % 8 || W % 8) return 0;
    return vae_taesd_decode_bytes(t, H / 8, W / 8);
}

cm_status vae_taesd_decode(vae_taesd *t, const float *z, int B, int h, int w, float *img,
                           cm_error *err)
{
    if (B < 1 || h < 1 || w < 1)
        return cm_error_set(err, CM_ERR_USAGE, "vae_decode: bad latent shape (%d, %d, %d, %d)", B,
                            t->latent, h, w);
    int64_t pool, floats = ts_floats(t, h, w, &pool);
    if (floats < 0) return cm_error_set(err, CM_ERR_USAGE, "vae_decode: latent %dx%d is too large", h, w);
    ts_work wk;
    cm_status st = work_alloc(&wk, floats, pool, "tiny vae decoder activations", err);
    int L = t->latent;
    int64_t hw = (int64_t)h * w, P = 64 * hw;
    for (int b = 0; !st && b < B; b++) {
        if (cm_interrupted) {
            st = cm_error_set(err, CM_ERR_INTERRUPTED, "vae_decode: interrupted");
            break;
        }
        wk.cur = 0;
        float *x = wk.buf[0];
        const float *zb = z + (int64_t)b * L * hw;
        for (int c = 0; c < L; c++)
            for (int64_t i = 0; i < hw; i++) x[i * L + c] = 3.0f * tanhf(zb[(int64_t)c * hw + i] / 3.0f);
        int H = h, W = w;
        run_layers(&wk, t->dec, t->ndec, &H, &W);
        const float *y = wk.buf[wk.cur];
        float *o = img + (int64_t)b * 3 * P;
        for (int c = 0; c < 3; c++)
            for (int64_t i = 0; i < P; i++) o[(int64_t)c * P + i] = 2.0f * y[i * 3 + c] - 1.0f;
    }
    work_free(&wk);
    return st;
}

cm_status vae_taesd_encode(vae_taesd *t, const float *img, int B, int H, int W, float *mean,
                           float *logvar, cm_error *err)
{
    if (!t->has_encoder)
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: the tiny vae has no encoder tensors (%sencoder.*)",
                            wt_model_path(t->wm), TS_PREFIX);
    if (B < 1 || H < 8 || W < 8 || H % 8 || W % 8)
        return cm_error_set(err, CM_ERR_USAGE, "vae_encode: image %dx%d is not a multiple of 8", W, H);
    int h = H / 8, w = W / 8;
    int64_t pool, floats = ts_floats(t, h, w, &pool);
    if (floats < 0) return cm_error_set(err, CM_ERR_USAGE, "vae_encode: image %dx%d is too large", W, H);
    ts_work wk;
    cm_status st = work_alloc(&wk, floats, pool, "tiny vae encoder activations", err);
    int L = t->latent;
    int64_t P = (int64_t)H * W, hw = (int64_t)h * w;
    for (int b = 0; !st && b < B; b++) {
        if (cm_interrupted) {
            st = cm_error_set(err, CM_ERR_INTERRUPTED, "vae_encode: interrupted");
            break;
        }
        wk.cur = 0;
        float *x = wk.buf[0];
        const float *ib = img + (int64_t)b * 3 * P;
        for (int c = 0; c < 3; c++)
            for (int64_t i = 0; i < P; i++) x[i * 3 + c] = (ib[(int64_t)c * P + i] + 1.0f) * 0.5f;
        int Hc = H, Wc = W;
        run_layers(&wk, t->enc, t->nenc, &Hc, &Wc);
        const float *y = wk.buf[wk.cur];
        float *mb = mean + (int64_t)b * L * hw, *lb = logvar ? logvar + (int64_t)b * L * hw : NULL;
        for (int c = 0; c < L; c++)
            for (int64_t i = 0; i < hw; i++) {
                mb[(int64_t)c * hw + i] = y[i * L + c];
                if (lb) lb[(int64_t)c * hw + i] = -30.0f;
            }
    }
    work_free(&wk);
    return st;
}
