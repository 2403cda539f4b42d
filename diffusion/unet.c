/* unet.c — the UNet denoiser of SD 1.x, 2.x and SDXL (4- and 9-channel).
 *
 * Mirrors diffusers' UNet2DConditionModel (0.30) with its default block
 * types (CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn,
 * CrossAttnUpBlock2D / UpBlock2D, ResnetBlock2D, Transformer2DModel with
 * BasicTransformerBlock and GEGLU), read through the original LDM tensor
 * names (model.diffusion_model.*):
 *
 *   time_embed.{0,2}        sinusoidal(t) -> linear -> SiLU -> linear = emb
 *   label_emb.0.{0,2}       SDXL: emb += MLP(cat(text_embeds, sin(time_ids)))
 *   input_blocks.0.0        conv_in
 *   input_blocks.k.0        ResBlock (in_layers, emb_layers, out_layers,
 *                           skip_connection when channels change) or, at
 *                           the end of a level, .0.op = stride-2 conv
 *   input_blocks.k.1        SpatialTransformer (norm, proj_in, blocks, proj_out)
 *   middle_block.{0,1,2}    ResBlock, SpatialTransformer, ResBlock
 *   output_blocks.k.0       ResBlock on cat(h, skip); .1 transformer; last
 *                           of a level: .{1|2}.conv = nearest 2x + conv
 *   out.{0,2}               GroupNorm + SiLU, conv_out
 *
 * The LDM numbering: input block k = 1 + level*(L+1) + j (j < L: ResBlock
 * [+ transformer], j == L: downsample, absent on the last level); output
 * block k = i*(L+1) + j over the up levels i (deepest first), j <= L, the
 * upsample on j == L except on the last up level. L = layers_per_block.
 *
 * Layout: activations NHWC float32 inside, NCHW (B, C, h, w) at the API.
 * Numerics: float32 throughout, the kernels of common.h; eps 1e-5 for the
 * ResBlock and output GroupNorms (norm_eps), 1e-6 for the transformer's
 * GroupNorm (diffusers hard-codes it), 1e-5 for the LayerNorms.
 */
#include "diffusion.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define UNET_PREFIX "model.diffusion_model."
#define MAX_LEVELS 8
#define FF_CHUNK 4096 /* feed-forward rows per chunk: bounds its buffers */

/* ------------------------------------------------------------------------
 * Model structure
 * ---------------------------------------------------------------------- */

typedef struct {
    const cm_wview *w, *b;
} wb;

/* diffusers ResnetBlock2D. */
typedef struct {
    int cin, cout;
    wb norm1, conv1, emb, norm2, conv2;
    wb skip; /* skip.w NULL when cin == cout */
} res_block;

/* diffusers BasicTransformerBlock: self-attention, cross-attention on the
 * context, GEGLU feed-forward, each pre-LayerNorm with a residual. */
typedef struct {
    wb norm1, q1, k1, v1, o1;
    wb norm2, q2, k2, v2, o2;
    wb norm3, ff1, ff2;
    float *ck, *cv; /* cached context keys/values (B, T, C), in u->kv */
} tblock;

/* diffusers Transformer2DModel (LDM SpatialTransformer). */
typedef struct {
    int C, heads, depth;
    wb norm, proj_in, proj_out;
    tblock *blk;
} xformer;

/* One LDM sequential block: [res] [attn] [down/up conv]. */
typedef struct {
    int level;    /* resolution level of the block's input */
    int has_res;
    res_block res;
    xformer *attn; /* NULL when absent */
    int down, up;  /* op is a stride-2 conv / nearest-2x + conv */
    wb op;
    int cout;      /* channels of the block's output */
} ldm_block;

struct df_unet {
    const wt_model *m;
    /* architecture */
    int nlev, L;
    int ch[MAX_LEVELS];
    int in_ch, out_ch, ctx_dim, temb_dim, tproj_dim;
    int groups;
    float eps;
    int flip_sin_to_cos;
    float freq_shift;
    int sdxl; /* addition_embed_type "text_time" */
    int add_time_dim, add_in_dim, pooled_dim, n_time_ids;

    wb time1, time2, label1, label2, conv_in, norm_out, conv_out;
    ldm_block *inb, *outb;
    int n_in, n_out;
    ldm_block mid_res0, mid_res1;
    xformer *mid_attn;
    xformer **xf; /* every transformer, for the K/V cache */
    int n_xf;

    /* activation buffers, planned for (cap_B, cap_h, cap_w) */
    char *act;      /* cm_alloc'd, act_cap bytes, carved per call */
    size_t act_cap;
    float *P, *Q, *CAT, *T0, *T1, *T2, *T3, *T4, *F1, *F2;
    float **skip; /* one slot per input block (the skip connections) */
    float *emb, *emb_silu, *aug, *tproj, *tvec, *addin;

    /* cross-attention K/V cache keyed by a copy of the context */
    float *kv;       /* cm_alloc'd, kv_cap floats */
    size_t kv_cap;
    float *ctx_copy; /* cm_alloc'd */
    size_t ctx_cap;
    int ctx_B, ctx_T, ctx_valid;
};

/* ------------------------------------------------------------------------
 * Building: config + tensor validation
 * ---------------------------------------------------------------------- */

typedef struct {
    const wt_model *m;
    cm_error *err;
    int failed;
} loader;

static const cm_wview *req(loader *ld, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const cm_wview *req(loader *ld, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (ld->failed) return NULL;
    char name[512];
    int n = snprintf(name, sizeof name, "%s", UNET_PREFIX);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
    va_end(ap);
    const cm_wview *v = wt_model_require(ld->m, name, ndim, shape, ld->err);
    if (!v) ld->failed = 1;
    return v;
}

#define S1(a) ((const int64_t[]){(a)})
#define S2(a, b) ((const int64_t[]){(a), (b)})
#define S4(a, b, c, d) ((const int64_t[]){(a), (b), (c), (d)})

static void load_norm(loader *ld, wb *n, int C, const char *p)
{
    n->w = req(ld, 1, S1(C), "%s.weight", p);
    n->b = req(ld, 1, S1(C), "%s.bias", p);
}

static void load_linear(loader *ld, wb *l, int out, int in, int bias, const char *p)
{
    l->w = req(ld, 2, S2(out, in), "%s.weight", p);
    l->b = bias ? req(ld, 1, S1(out), "%s.bias", p) : NULL;
}

static void load_conv(loader *ld, wb *l, int out, int in, int k, const char *p)
{
    l->w = req(ld, 4, S4(out, in, k, k), "%s.weight", p);
    l->b = req(ld, 1, S1(out), "%s.bias", p);
}

static void load_res(loader *ld, df_unet *u, res_block *r, int cin, int cout, const char *p)
{
    char b[256];
    r->cin = cin;
    r->cout = cout;
    snprintf(b, sizeof b, "%s.in_layers.0", p);
    load_norm(ld, &r->norm1, cin, b);
    snprintf(b, sizeof b, "%s.in_layers.2", p);
    load_conv(ld, &r->conv1, cout, cin, 3, b);
    snprintf(b, sizeof b, "%s.emb_layers.1", p);
    load_linear(ld, &r->emb, cout, u->temb_dim, 1, b);
    snprintf(b, sizeof b, "%s.out_layers.0", p);
    load_norm(ld, &r->norm2, cout, b);
    snprintf(b, sizeof b, "%s.out_layers.3", p);
    load_conv(ld, &r->conv2, cout, cout, 3, b);
    if (cin != cout) {
        snprintf(b, sizeof b, "%s.skip_connection", p);
        load_conv(ld, &r->skip, cout, cin, 1, b);
    }
}

static xformer *load_xformer(loader *ld, df_unet *u, int C, int heads, int depth, int linear,
                             const char *p)
{
    if (ld->failed) return NULL;
    if (heads <= 0 || C % heads != 0 || depth <= 0) {
        cm_error_set(ld->err, CM_ERR_FORMAT,
                     "%s: unet config: %s%s has %d channels, %d heads, depth %d (heads must "
                     "divide the channels)",
                     wt_model_path(ld->m), UNET_PREFIX, p, C, heads, depth);
        ld->failed = 1;
        return NULL;
    }
    xformer *x = cm_calloc(sizeof *x, "unet transformer", ld->err);
    tblock *blk = x ? cm_calloc(sizeof(tblock) * (size_t)depth, "unet transformer", ld->err) : NULL;
    if (!blk) {
        cm_free(x);
        ld->failed = 1;
        return NULL;
    }
    x->C = C;
    x->heads = heads;
    x->depth = depth;
    x->blk = blk;
    u->xf[u->n_xf++] = x; /* owned from here on, even if a tensor is missing */
    char b[256];
    snprintf(b, sizeof b, "%s.norm", p);
    load_norm(ld, &x->norm, C, b);
    if (linear) {
        snprintf(b, sizeof b, "%s.proj_in", p);
        load_linear(ld, &x->proj_in, C, C, 1, b);
        snprintf(b, sizeof b, "%s.proj_out", p);
        load_linear(ld, &x->proj_out, C, C, 1, b);
    } else {
        snprintf(b, sizeof b, "%s.proj_in", p);
        load_conv(ld, &x->proj_in, C, C, 1, b);
        snprintf(b, sizeof b, "%s.proj_out", p);
        load_conv(ld, &x->proj_out, C, C, 1, b);
    }
    for (int j = 0; j < depth; j++) {
        tblock *t = &blk[j];
        char q[300];
#define TB(suffix) (snprintf(q, sizeof q, "%s.transformer_blocks.%d.%s", p, j, suffix), q)
        load_norm(ld, &t->norm1, C, TB("norm1"));
        load_linear(ld, &t->q1, C, C, 0, TB("attn1.to_q"));
        load_linear(ld, &t->k1, C, C, 0, TB("attn1.to_k"));
        load_linear(ld, &t->v1, C, C, 0, TB("attn1.to_v"));
        load_linear(ld, &t->o1, C, C, 1, TB("attn1.to_out.0"));
        load_norm(ld, &t->norm2, C, TB("norm2"));
        load_linear(ld, &t->q2, C, C, 0, TB("attn2.to_q"));
        load_linear(ld, &t->k2, C, u->ctx_dim, 0, TB("attn2.to_k"));
        load_linear(ld, &t->v2, C, u->ctx_dim, 0, TB("attn2.to_v"));
        load_linear(ld, &t->o2, C, C, 1, TB("attn2.to_out.0"));
        load_norm(ld, &t->norm3, C, TB("norm3"));
        load_linear(ld, &t->ff1, 8 * C, C, 1, TB("ff.net.0.proj"));
        load_linear(ld, &t->ff2, C, 4 * C, 1, TB("ff.net.2"));
#undef TB
    }
    return x;
}

static void free_xformer(xformer *x)
{
    if (!x) return;
    cm_free(x->blk);
    cm_free(x);
}

/* A block-type string is "CrossAttn..." (attention) or plain. */
static int block_has_attn(const cJSON *cfg, const char *key, int i, int *ok)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const cJSON *e = cJSON_IsArray(a) ? cJSON_GetArrayItem(a, i) : NULL;
    if (!cJSON_IsString(e)) {
        *ok = 0;
        return 0;
    }
    const char *s = e->valuestring;
    if (!strncmp(s, "CrossAttn", 9)) return 1;
    if (!strcmp(s, "DownBlock2D") || !strcmp(s, "UpBlock2D")) return 0;
    *ok = 0;
    return 0;
}

static int cfg_is_null_or_absent(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    return !v || cJSON_IsNull(v);
}

static cm_status read_config(df_unet *u, const cJSON *c, cm_error *err)
{
    const char *path = wt_model_path(u->m);
    u->nlev = wt_cfg_len(c, "block_out_channels");
    if (u->nlev < 1 || u->nlev > MAX_LEVELS)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: unet config: block_out_channels has %d entries, expected 1..%d",
                            path, u->nlev, MAX_LEVELS);
    for (int l = 0; l < u->nlev; l++) u->ch[l] = wt_cfg_int_at(c, "block_out_channels", l, 0);
    u->L = wt_cfg_int_at(c, "layers_per_block", 0, 2);
    u->in_ch = wt_cfg_int(c, "in_channels", 4);
    u->out_ch = wt_cfg_int(c, "out_channels", 4);
    u->ctx_dim = wt_cfg_int_at(c, "cross_attention_dim", 0, 768);
    u->groups = wt_cfg_int(c, "norm_num_groups", 32);
    u->eps = (float)wt_cfg_num(c, "norm_eps", 1e-5);
    u->flip_sin_to_cos = wt_cfg_int(c, "flip_sin_to_cos", 1);
    u->freq_shift = (float)wt_cfg_num(c, "freq_shift", 0);
    u->tproj_dim = u->ch[0];
    u->temb_dim = wt_cfg_int(c, "time_embedding_dim", 4 * u->ch[0]);
    if (u->L < 1 || u->L > 16 || u->in_ch < 1 || u->out_ch < 1 || u->ctx_dim < 1 ||
        u->groups < 1 || !(u->eps > 0) || u->temb_dim < 1 || u->tproj_dim < 2 ||
        u->tproj_dim % 2)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: unet config: bad layers_per_block/in_channels/out_channels/"
                            "cross_attention_dim/norm settings",
                            path);
    for (int l = 0; l < u->nlev; l++)
        if (u->ch[l] < 1 || u->ch[l] % u->groups)
            return cm_error_set(err, CM_ERR_FORMAT,
                                "%s: unet config: block_out_channels[%d] = %d is not a positive "
                                "multiple of norm_num_groups %d",
                                path, l, u->ch[l], u->groups);
    if (wt_cfg_len(c, "layers_per_block") > 1)
        for (int l = 1; l < u->nlev; l++)
            if (wt_cfg_int_at(c, "layers_per_block", l, u->L) != u->L)
                return cm_error_set(err, CM_ERR_UNSUPPORTED,
                                    "%s: unet config: per-level layers_per_block", path);
    /* Features of UNet2DConditionModel no SD/SDXL checkpoint uses. */
    static const char *const must_be_null[] = {
        "class_embed_type",  "num_class_embeds", "time_cond_proj_dim", "encoder_hid_dim_type",
        "reverse_transformer_layers_per_block", "timestep_post_act", "time_embedding_act_fn",
    };
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++)
        if (!cfg_is_null_or_absent(c, must_be_null[i]))
            return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: unet config: %s is not supported",
                                path, must_be_null[i]);
    if (strcmp(wt_cfg_str(c, "resnet_time_scale_shift", "default"), "default") ||
        strcmp(wt_cfg_str(c, "mid_block_type", "UNetMidBlock2DCrossAttn"),
               "UNetMidBlock2DCrossAttn") ||
        strcmp(wt_cfg_str(c, "time_embedding_type", "positional"), "positional") ||
        strcmp(wt_cfg_str(c, "act_fn", "silu"), "silu") || wt_cfg_int(c, "only_cross_attention", 0) ||
        wt_cfg_int(c, "dual_cross_attention", 0) || wt_cfg_int(c, "conv_in_kernel", 3) != 3 ||
        wt_cfg_int(c, "conv_out_kernel", 3) != 3 || wt_cfg_int(c, "center_input_sample", 0) ||
        wt_cfg_num(c, "resnet_out_scale_factor", 1) != 1 ||
        wt_cfg_num(c, "mid_block_scale_factor", 1) != 1)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: unet config: a block type or option this UNet does not support",
                            path);
    const char *aet = wt_cfg_str(c, "addition_embed_type", NULL);
    if (aet) {
        if (strcmp(aet, "text_time"))
            return cm_error_set(err, CM_ERR_UNSUPPORTED,
                                "%s: unet config: addition_embed_type \"%s\" is not supported",
                                path, aet);
        u->sdxl = 1;
        u->add_time_dim = wt_cfg_int(c, "addition_time_embed_dim", 256);
        u->add_in_dim = wt_cfg_int(c, "projection_class_embeddings_input_dim", 2816);
        /* SDXL base: 6 time ids (original size, crop, target size); the
         * refiner has 5. The pooled width tells them apart when the text
         * encoder's config gives it. */
        u->n_time_ids = 6;
        int proj = wt_cfg_int(wt_model_section(u->m, "text_encoder_2"), "projection_dim", 0);
        if (proj > 0 && u->add_time_dim > 0 && u->add_in_dim > proj &&
            (u->add_in_dim - proj) % u->add_time_dim == 0 &&
            (u->add_in_dim - proj) / u->add_time_dim <= 16)
            u->n_time_ids = (u->add_in_dim - proj) / u->add_time_dim;
        u->pooled_dim = u->add_in_dim - u->n_time_ids * u->add_time_dim;
        if (u->add_time_dim < 2 || u->add_time_dim % 2 || u->pooled_dim < 1)
            return cm_error_set(err, CM_ERR_FORMAT,
                                "%s: unet config: addition_time_embed_dim %d does not fit "
                                "projection_class_embeddings_input_dim %d",
                                path, u->add_time_dim, u->add_in_dim);
    }
    return CM_OK;
}

/* Heads of level l: num_attention_heads, else attention_head_dim (which
 * diffusers also reads as a head count: SD1 8, SD2/SDXL per level). */
static int heads_at(const cJSON *c, int l)
{
    if (!cfg_is_null_or_absent(c, "num_attention_heads"))
        return wt_cfg_int_at(c, "num_attention_heads", l, 8);
    return wt_cfg_int_at(c, "attention_head_dim", l, 8);
}

df_unet *df_unet_create(const wt_model *m, cm_error *err)
{
    const cJSON *c = wt_model_section(m, "unet");
    if (!c) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: the model config has no \"unet\" section",
                     wt_model_path(m));
        return NULL;
    }
    df_unet *u = cm_calloc(sizeof *u, "unet", err);
    if (!u) return NULL;
    u->m = m;
    if (read_config(u, c, err)) goto fail;

    const char *path = wt_model_path(m);
    int nlev = u->nlev, L = u->L;
    int ok = 1, down_attn[MAX_LEVELS], up_attn[MAX_LEVELS];
    if (wt_cfg_len(c, "down_block_types") != nlev || wt_cfg_len(c, "up_block_types") != nlev) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: unet config: down_block_types/up_block_types must have %d entries", path,
                     nlev);
        goto fail;
    }
    for (int l = 0; l < nlev; l++) {
        down_attn[l] = block_has_attn(c, "down_block_types", l, &ok);
        up_attn[l] = block_has_attn(c, "up_block_types", l, &ok);
    }
    if (!ok) {
        cm_error_set(err, CM_ERR_UNSUPPORTED,
                     "%s: unet config: block types other than (CrossAttn)Down/UpBlock2D", path);
        goto fail;
    }
    int linear = wt_cfg_int(c, "use_linear_projection", 0);
    int depth[MAX_LEVELS];
    for (int l = 0; l < nlev; l++) depth[l] = wt_cfg_int_at(c, "transformer_layers_per_block", l, 1);

    u->n_in = 1 + nlev * (L + 1) - 1;
    u->n_out = nlev * (L + 1);
    u->inb = cm_calloc(sizeof(ldm_block) * (size_t)u->n_in, "unet blocks", err);
    u->outb = cm_calloc(sizeof(ldm_block) * (size_t)u->n_out, "unet blocks", err);
    u->xf = cm_calloc(sizeof(xformer *) * (size_t)(2 * nlev * (L + 1) + 1), "unet blocks", err);
    u->skip = cm_calloc(sizeof(float *) * (size_t)u->n_in, "unet blocks", err);
    if (!u->inb || !u->outb || !u->xf || !u->skip) goto fail;

    loader ld = {m, err, 0};
    int T = u->temb_dim;
    load_linear(&ld, &u->time1, T, u->tproj_dim, 1, "time_embed.0");
    load_linear(&ld, &u->time2, T, T, 1, "time_embed.2");
    if (u->sdxl) {
        load_linear(&ld, &u->label1, T, u->add_in_dim, 1, "label_emb.0.0");
        load_linear(&ld, &u->label2, T, T, 1, "label_emb.0.2");
    }
    load_conv(&ld, &u->conv_in, u->ch[0], u->in_ch, 3, "input_blocks.0.0");

    /* Down path; skip_ch[k] = channels of input block k's output. */
    int skip_ch[1 + MAX_LEVELS * 17];
    char p[128];
    int k = 1, cur = u->ch[0];
    skip_ch[0] = cur;
    u->inb[0].level = 0;
    u->inb[0].cout = cur;
    for (int l = 0; l < nlev; l++) {
        for (int j = 0; j < L; j++, k++) {
            ldm_block *b = &u->inb[k];
            b->level = l;
            b->has_res = 1;
            snprintf(p, sizeof p, "input_blocks.%d.0", k);
            load_res(&ld, u, &b->res, cur, u->ch[l], p);
            cur = u->ch[l];
            if (down_attn[l]) {
                snprintf(p, sizeof p, "input_blocks.%d.1", k);
                b->attn = load_xformer(&ld, u, cur, heads_at(c, l), depth[l], linear, p);
            }
            b->cout = skip_ch[k] = cur;
        }
        if (l < nlev - 1) {
            ldm_block *b = &u->inb[k];
            b->level = l;
            b->down = 1;
            snprintf(p, sizeof p, "input_blocks.%d.0.op", k);
            load_conv(&ld, &b->op, cur, cur, 3, p);
            b->cout = skip_ch[k] = cur;
            k++;
        }
    }
    CM_ASSERT(k == u->n_in);

    /* Middle. */
    int top = nlev - 1;
    u->mid_res0.level = u->mid_res1.level = top;
    load_res(&ld, u, &u->mid_res0.res, cur, cur, "middle_block.0");
    u->mid_attn = load_xformer(&ld, u, cur, heads_at(c, top), depth[top], linear, "middle_block.1");
    load_res(&ld, u, &u->mid_res1.res, cur, cur, "middle_block.2");

    /* Up path: up level i works at resolution level nlev-1-i. */
    int ns = u->n_in, o = 0;
    for (int i = 0; i < nlev; i++) {
        int l = nlev - 1 - i;
        for (int j = 0; j <= L; j++, o++) {
            ldm_block *b = &u->outb[o];
            int sc = skip_ch[--ns];
            b->level = l;
            b->has_res = 1;
            snprintf(p, sizeof p, "output_blocks.%d.0", o);
            load_res(&ld, u, &b->res, cur + sc, u->ch[l], p);
            cur = u->ch[l];
            int idx = 1;
            if (up_attn[i]) {
                snprintf(p, sizeof p, "output_blocks.%d.1", o);
                b->attn = load_xformer(&ld, u, cur, heads_at(c, l), depth[l], linear, p);
                idx = 2;
            }
            if (j == L && i < nlev - 1) {
                b->up = 1;
                snprintf(p, sizeof p, "output_blocks.%d.%d.conv", o, idx);
                load_conv(&ld, &b->op, cur, cur, 3, p);
            }
            b->cout = cur;
        }
    }
    CM_ASSERT(ns == 0 && o == u->n_out);
    load_norm(&ld, &u->norm_out, u->ch[0], "out.0");
    load_conv(&ld, &u->conv_out, u->out_ch, u->ch[0], 3, "out.2");
    if (ld.failed) goto fail;
    return u;
fail:
    df_unet_free(u);
    return NULL;
}

void df_unet_free(df_unet *u)
{
    if (!u) return;
    for (int i = 0; i < u->n_xf; i++) free_xformer(u->xf[i]);
    cm_free(u->xf);
    cm_free(u->inb);
    cm_free(u->outb);
    cm_free(u->act);
    cm_free(u->skip);
    cm_free(u->kv);
    cm_free(u->ctx_copy);
    cm_free(u);
}

int df_unet_in_channels(const df_unet *u) { return u->in_ch; }
int df_unet_out_channels(const df_unet *u) { return u->out_ch; }
int df_unet_context_dim(const df_unet *u) { return u->ctx_dim; }
int df_unet_pooled_dim(const df_unet *u) { return u->sdxl ? u->pooled_dim : 0; }
int df_unet_n_time_ids(const df_unet *u) { return u->sdxl ? u->n_time_ids : 0; }
int df_unet_size_multiple(const df_unet *u) { return 1 << (u->nlev - 1); }

/* ------------------------------------------------------------------------
 * Activation buffers
 * ---------------------------------------------------------------------- */

/* Carves 64-byte aligned float arrays out of one block; with base NULL it
 * only counts, so the same code sizes and lays out the buffers. */
typedef struct {
    char *base;
    size_t off;
} carver;

static float *carve(carver *c, size_t nfloats)
{
    float *p = c->base ? (float *)(void *)(c->base + c->off) : NULL;
    c->off += (nfloats * sizeof(float) + CM_ALIGN - 1) & ~(size_t)(CM_ALIGN - 1);
    return p;
}

static size_t hw_at(int h, int w, int l) { return (size_t)(h >> l) * (size_t)(w >> l); }

/* Lays out every activation buffer of a (B, h, w) call; assigns the
 * pointers into dst unless dst is NULL (counting only). */
static void layout(df_unet *dst, const df_unet *u, carver *c, int B, int h, int w)
{
#define SET(field, value)                                                      \
    do {                                                                       \
        float *p_ = (value);                                                   \
        if (dst) dst->field = p_;                                              \
    } while (0)
    /* Sw: cat(h, skip) and the ResBlock's first GroupNorm (CAT, T0);
     * Sp: a block output, an upsampled one, conv_out's (P, Q, T1);
     * Sn: level-width temporaries (T2 shortcut, T3/T4 keys/values). */
    size_t Sw = 0, Sp = 0, Sn = 0, F = 0, maxc = 0;
    for (int l = 0; l < u->nlev; l++) {
        size_t here = (size_t)u->ch[l];
        size_t below = l > 0 ? (size_t)u->ch[l - 1] : here;
        size_t above = l + 1 < u->nlev ? (size_t)u->ch[l + 1] : here;
        size_t wp = here > above ? here : above;
        size_t wmax = wp + (here > below ? here : below);
        if (l == 0) {
            if ((size_t)u->in_ch > wmax) wmax = (size_t)u->in_ch;
            if ((size_t)u->out_ch > wp) wp = (size_t)u->out_ch;
        }
        size_t n = (size_t)B * hw_at(h, w, l);
        if (n * wmax > Sw) Sw = n * wmax;
        if (n * wp > Sp) Sp = n * wp;
        if (n * here > Sn) Sn = n * here;
        size_t rows = n < FF_CHUNK ? n : FF_CHUNK;
        if (rows * 4 * here > F) F = rows * 4 * here;
        if (here > maxc) maxc = here;
    }
    SET(CAT, carve(c, Sw));
    SET(T0, carve(c, Sw));
    SET(P, carve(c, Sp));
    SET(Q, carve(c, Sp));
    SET(T1, carve(c, Sp));
    SET(T2, carve(c, Sn));
    SET(T3, carve(c, Sn));
    SET(T4, carve(c, Sn));
    SET(F1, carve(c, 2 * F));
    SET(F2, carve(c, F));
    for (int k = 0; k < u->n_in; k++) {
        const ldm_block *b = &u->inb[k];
        int lev = b->level + (b->down ? 1 : 0);
        float *p = carve(c, (size_t)B * hw_at(h, w, lev) * (size_t)b->cout);
        if (dst) dst->skip[k] = p;
    }
    size_t tv = (size_t)u->tproj_dim;
    if (u->sdxl && (size_t)u->n_time_ids * (size_t)u->add_time_dim > tv)
        tv = (size_t)u->n_time_ids * (size_t)u->add_time_dim;
    SET(emb, carve(c, (size_t)B * (size_t)u->temb_dim));
    SET(emb_silu, carve(c, (size_t)B * (size_t)u->temb_dim));
    SET(aug, carve(c, (size_t)B * (size_t)u->temb_dim));
    SET(tproj, carve(c, (size_t)B * maxc));
    SET(tvec, carve(c, (size_t)B * tv));
    SET(addin, carve(c, (size_t)B * (size_t)(u->sdxl ? u->add_in_dim : 1)));
#undef SET
}

/* Buffers for (B, h, w): reuses the block when it is big enough. */
static cm_status plan(df_unet *u, int B, int h, int w, cm_error *err)
{
    carver c = {NULL, 0};
    layout(NULL, u, &c, B, h, w);
    if (c.off > u->act_cap) {
        cm_free(u->act);
        u->act_cap = 0;
        u->act = cm_alloc(c.off, "unet activations", err);
        if (!u->act) return err ? err->status : CM_ERR_NOMEM;
        u->act_cap = c.off;
    }
    c.base = u->act;
    c.off = 0;
    layout(u, u, &c, B, h, w);
    return CM_OK;
}

size_t df_unet_work_bytes(const df_unet *u, int B, int h, int w, int T)
{
    if (B < 1 || h < 1 || w < 1 || T < 1) return 0;
    carver c = {NULL, 0};
    layout(NULL, u, &c, B, h, w);
    size_t kv = 0;
    for (int i = 0; i < u->n_xf; i++)
        kv += 2 * (size_t)u->xf[i]->depth * (size_t)B * (size_t)T * (size_t)u->xf[i]->C;
    return c.off + (kv + (size_t)B * (size_t)T * (size_t)u->ctx_dim) * sizeof(float);
}

/* Cross-attention keys/values of every transformer block for this
 * context, unless the previous call had the very same context. */
static cm_status set_context(df_unet *u, const float *ctx, int B, int T, cm_error *err)
{
    size_t nctx = (size_t)B * (size_t)T * (size_t)u->ctx_dim;
    if (u->ctx_valid && u->ctx_B == B && u->ctx_T == T &&
        !memcmp(u->ctx_copy, ctx, nctx * sizeof(float)))
        return CM_OK;
    u->ctx_valid = 0;
    size_t need = 0;
    for (int i = 0; i < u->n_xf; i++)
        need += 2 * (size_t)u->xf[i]->depth * (size_t)B * (size_t)T * (size_t)u->xf[i]->C;
    if (need > u->kv_cap) {
        cm_free(u->kv);
        u->kv_cap = 0;
        u->kv = cm_alloc(need * sizeof(float), "unet cross-attention keys/values", err);
        if (!u->kv) return err ? err->status : CM_ERR_NOMEM;
        u->kv_cap = need;
    }
    if (nctx > u->ctx_cap) {
        cm_free(u->ctx_copy);
        u->ctx_cap = 0;
        u->ctx_copy = cm_alloc(nctx * sizeof(float), "unet context copy", err);
        if (!u->ctx_copy) return err ? err->status : CM_ERR_NOMEM;
        u->ctx_cap = nctx;
    }
    float *p = u->kv;
    int64_t M = (int64_t)B * T, D = u->ctx_dim;
    for (int i = 0; i < u->n_xf; i++) {
        xformer *x = u->xf[i];
        size_t n = (size_t)M * (size_t)x->C;
        for (int j = 0; j < x->depth; j++) {
            tblock *t = &x->blk[j];
            t->ck = p;
            t->cv = p + n;
            p += 2 * n;
            cm_linear(ctx, D, M, D, t->k2.w, NULL, CM_ACT_NONE, NULL, t->ck, x->C);
            cm_linear(ctx, D, M, D, t->v2.w, NULL, CM_ACT_NONE, NULL, t->cv, x->C);
        }
    }
    memcpy(u->ctx_copy, ctx, nctx * sizeof(float));
    u->ctx_B = B;
    u->ctx_T = T;
    u->ctx_valid = 1;
    return CM_OK;
}

/* ------------------------------------------------------------------------
 * Forward
 * ---------------------------------------------------------------------- */

/* diffusers get_timestep_embedding in float32: freq_k = exp(-ln(10000) k /
 * (half - shift)), [cos(t f), sin(t f)] with flip_sin_to_cos, else
 * [sin, cos]. The float32 roundings follow torch's op order. */
static void sinusoidal(const float *t, int n, int dim, int flip, float shift, float *out)
{
    int half = dim / 2;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < half; k++) {
            float e = (float)(-9.210340371976184) * (float)k; /* -ln(10000) */
            e = e / ((float)half - shift);
            float a = t[i] * expf(e);
            float s = (float)sin((double)a), c = (float)cos((double)a);
            out[(size_t)i * dim + k] = flip ? c : s;
            out[(size_t)i * dim + half + k] = flip ? s : c;
        }
}

/* The debug hook, when the caller set one (NHWC data, see diffusion.h). */
static void hook(const df_unet_input *in, const char *name, const float *d, int B, int h, int w,
                 int C)
{
    if (in->debug) in->debug(in->debug_user, name, d, B, h, w, C);
}

/* ResnetBlock2D: y = conv2(silu(gn2(conv1(silu(gn1(x))) + emb_proj))) +
 * shortcut(x). x (B,H,W,cin) -> y (B,H,W,cout); y must not alias x. */
static void res_forward(df_unet *u, const res_block *r, const float *x, int B, int H, int W,
                        float *y)
{
    int64_t HW = (int64_t)H * W, M = B * HW;
    cm_group_norm(x, u->T0, B, HW, r->cin, u->groups, u->eps, r->norm1.w, r->norm1.b, 1);
    cm_conv2d(u->T0, B, H, W, r->cin, r->conv1.w, r->conv1.b, (cm_conv_params){1, 1}, NULL, u->T1);
    cm_linear(u->emb_silu, u->temb_dim, B, u->temb_dim, r->emb.w, r->emb.b, CM_ACT_NONE, NULL,
              u->tproj, r->cout);
    int C = r->cout;
    float *h1 = u->T1;
    const float *tp = u->tproj;
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *e = tp + (m / HW) * C;
        float *row = h1 + m * C;
        for (int c = 0; c < C; c++) row[c] += e[c];
    }
    cm_group_norm(u->T1, u->T1, B, HW, C, u->groups, u->eps, r->norm2.w, r->norm2.b, 1);
    const float *res = x;
    if (r->skip.w) {
        cm_linear(x, r->cin, M, r->cin, r->skip.w, r->skip.b, CM_ACT_NONE, NULL, u->T2, C);
        res = u->T2;
    }
    cm_conv2d(u->T1, B, H, W, C, r->conv2.w, r->conv2.b, (cm_conv_params){1, 1}, res, y);
}

static void attn_params(cm_attn_params *p, int B, int heads, int Tq, int Tk, int C)
{
    memset(p, 0, sizeof *p);
    p->B = B;
    p->heads = heads;
    p->Tq = Tq;
    p->Tk = Tk;
    p->hd = C / heads;
    p->q_stride = p->k_stride = p->v_stride = p->o_stride = C;
    p->q_bstride = p->o_bstride = (int64_t)Tq * C;
    p->k_bstride = p->v_bstride = (int64_t)Tk * C;
    p->scale = (float)pow((double)p->hd, -0.5);
    p->causal = 0;
}

/* Transformer2DModel, in place on x (B, HW, C). */
static void xformer_forward(df_unet *u, const xformer *xf, float *x, int B, int64_t HW, int T)
{
    int C = xf->C;
    int64_t M = B * HW;
    float *h = u->T1, *n = u->T0;
    cm_group_norm(x, n, B, HW, C, u->groups, 1e-6f, xf->norm.w, xf->norm.b, 0);
    cm_linear(n, C, M, C, xf->proj_in.w, xf->proj_in.b, CM_ACT_NONE, NULL, h, C);
    cm_attn_params self, cross;
    attn_params(&self, B, xf->heads, (int)HW, (int)HW, C);
    attn_params(&cross, B, xf->heads, (int)HW, T, C);
    for (int j = 0; j < xf->depth; j++) {
        const tblock *t = &xf->blk[j];
        /* self-attention */
        cm_layer_norm(h, n, M, C, 1e-5f, t->norm1.w, t->norm1.b);
        cm_linear(n, C, M, C, t->q1.w, NULL, CM_ACT_NONE, NULL, u->T2, C);
        cm_linear(n, C, M, C, t->k1.w, NULL, CM_ACT_NONE, NULL, u->T3, C);
        cm_linear(n, C, M, C, t->v1.w, NULL, CM_ACT_NONE, NULL, u->T4, C);
        cm_attention(u->T2, u->T3, u->T4, n, &self);
        cm_linear(n, C, M, C, t->o1.w, t->o1.b, CM_ACT_NONE, h, h, C);
        /* cross-attention on the cached context keys/values */
        cm_layer_norm(h, n, M, C, 1e-5f, t->norm2.w, t->norm2.b);
        cm_linear(n, C, M, C, t->q2.w, NULL, CM_ACT_NONE, NULL, u->T2, C);
        cm_attention(u->T2, t->ck, t->cv, n, &cross);
        cm_linear(n, C, M, C, t->o2.w, t->o2.b, CM_ACT_NONE, h, h, C);
        /* GEGLU feed-forward, in row chunks to bound its buffers */
        cm_layer_norm(h, n, M, C, 1e-5f, t->norm3.w, t->norm3.b);
        for (int64_t r0 = 0; r0 < M; r0 += FF_CHUNK) {
            int64_t rows = M - r0 < FF_CHUNK ? M - r0 : FF_CHUNK;
            cm_linear_geglu(n + r0 * C, C, rows, C, t->ff1.w, t->ff1.b, u->F2, 4 * (int64_t)C);
            cm_linear(u->F2, 4 * (int64_t)C, rows, 4 * (int64_t)C, t->ff2.w, t->ff2.b,
                      CM_ACT_NONE, h + r0 * C, h + r0 * C, C);
        }
    }
    cm_linear(h, C, M, C, xf->proj_out.w, xf->proj_out.b, CM_ACT_NONE, x, x, C);
}

static cm_status check_input(const df_unet *u, const df_unet_input *in, const float *out,
                             cm_error *err)
{
    const char *path = wt_model_path(u->m);
    if (!in || !out || !in->x || !in->timesteps || !in->context)
        return cm_error_set(err, CM_ERR_USAGE, "%s: unet: missing x, timesteps, context or output",
                            path);
    int mult = df_unet_size_multiple(u);
    if (in->B < 1 || in->B > 4096 || in->h < 1 || in->w < 1 || in->h > 65536 || in->w > 65536 ||
        in->h % mult || in->w % mult)
        return cm_error_set(err, CM_ERR_USAGE,
                            "%s: unet: latent batch %d, size %dx%d: the size must be a positive "
                            "multiple of %d",
                            path, in->B, in->h, in->w, mult);
    if (in->T < 1 || in->T > 1 << 20)
        return cm_error_set(err, CM_ERR_USAGE, "%s: unet: context length %d", path, in->T);
    if (u->sdxl && (!in->text_embeds || !in->time_ids))
        return cm_error_set(err, CM_ERR_USAGE,
                            "%s: unet: an SDXL UNet needs text_embeds (B,%d) and time_ids (B,%d)",
                            path, u->pooled_dim, u->n_time_ids);
    for (int b = 0; b < in->B; b++)
        if (!isfinite(in->timesteps[b]))
            return cm_error_set(err, CM_ERR_USAGE, "%s: unet: timestep %d is not finite", path, b);
    return CM_OK;
}

/* Forward pass. Between blocks, the mapped weights just used are given back
 * (wt_model_drop: large models only), so peak RSS holds one block's
 * weights rather than the whole UNet's (SD 1.5: ~0.2 of 1.7 GB); the next
 * evaluation faults them in again from the page cache. */
cm_status df_unet_forward(df_unet *u, const df_unet_input *in, float *out, cm_error *err)
{
    cm_status st = check_input(u, in, out, err);
    if (st) return st;
    int B = in->B, h = in->h, w = in->w;
    if ((st = plan(u, B, h, w, err))) return st;
    if ((st = set_context(u, in->context, B, in->T, err))) return st;
    int Td = u->temb_dim;

    /* The first and last layers and the embeddings run in float32 in
     * every precision mode (they are cheap; in bf16 they carry most of
     * the error at the ends of the network). */
    const cm_precision prec = cm_precision_get();
    cm_precision_set(CM_PREC_F32);

    /* time embedding (+ SDXL's size/crop/pooled-text embedding) */
    sinusoidal(in->timesteps, B, u->tproj_dim, u->flip_sin_to_cos, u->freq_shift, u->tvec);
    hook(in, "time_proj", u->tvec, B, 1, 1, u->tproj_dim);
    cm_linear(u->tvec, u->tproj_dim, B, u->tproj_dim, u->time1.w, u->time1.b, CM_ACT_SILU, NULL,
              u->emb_silu, Td);
    cm_linear(u->emb_silu, Td, B, Td, u->time2.w, u->time2.b, CM_ACT_NONE, NULL, u->emb, Td);
    hook(in, "time_embedding", u->emb, B, 1, 1, Td);
    if (u->sdxl) {
        int nt = u->n_time_ids, ad = u->add_time_dim, pd = u->pooled_dim;
        sinusoidal(in->time_ids, B * nt, ad, u->flip_sin_to_cos, u->freq_shift, u->tvec);
        hook(in, "add_time_proj", u->tvec, B * nt, 1, 1, ad);
        for (int b = 0; b < B; b++) {
            float *row = u->addin + (size_t)b * u->add_in_dim;
            memcpy(row, in->text_embeds + (size_t)b * pd, (size_t)pd * sizeof(float));
            memcpy(row + pd, u->tvec + (size_t)b * nt * ad, (size_t)nt * ad * sizeof(float));
        }
        cm_linear(u->addin, u->add_in_dim, B, u->add_in_dim, u->label1.w, u->label1.b,
                  CM_ACT_SILU, NULL, u->emb_silu, Td);
        cm_linear(u->emb_silu, Td, B, Td, u->label2.w, u->label2.b, CM_ACT_NONE, NULL, u->aug, Td);
        hook(in, "add_embedding", u->aug, B, 1, 1, Td);
        for (int64_t i = 0; i < (int64_t)B * Td; i++) u->emb[i] += u->aug[i];
    }
    for (int64_t i = 0; i < (int64_t)B * Td; i++)
        u->emb_silu[i] = cm_act_scalar(u->emb[i], CM_ACT_SILU);

    /* NCHW -> NHWC, conv_in */
    int64_t HW = (int64_t)h * w;
    {
        int C = u->in_ch;
        const float *x = in->x;
        float *d = u->CAT;
#pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < B * HW; m++) {
            int64_t b = m / HW, p = m % HW;
            for (int c = 0; c < C; c++) d[m * C + c] = x[(b * C + c) * HW + p];
        }
    }
    cm_conv2d(u->CAT, B, h, w, u->in_ch, u->conv_in.w, u->conv_in.b, (cm_conv_params){1, 1}, NULL,
              u->skip[0]);
    hook(in, "conv_in", u->skip[0], B, h, w, u->ch[0]);
    cm_precision_set(prec);

    /* down path: every block's output is a skip connection */
    const float *cur = u->skip[0];
    char name[32];
    for (int k = 1; k < u->n_in; k++) {
        const ldm_block *b = &u->inb[k];
        int l = b->level, H = h >> l, W = w >> l;
        if (b->down) {
            cm_conv2d(cur, B, H, W, b->cout, b->op.w, b->op.b, (cm_conv_params){2, 1}, NULL,
                      u->skip[k]);
        } else {
            res_forward(u, &b->res, cur, B, H, W, u->skip[k]);
            if (b->attn) xformer_forward(u, b->attn, u->skip[k], B, (int64_t)H * W, in->T);
        }
        cur = u->skip[k];
        if (b->down || (k == u->n_in - 1)) {
            int lo = l + b->down;
            snprintf(name, sizeof name, "down_blocks.%d", l);
            hook(in, name, cur, B, h >> lo, w >> lo, b->cout);
        }
        wt_model_drop(u->m);
        if (cm_interrupted) return cm_error_set(err, CM_ERR_INTERRUPTED, "interrupted");
    }

    /* middle */
    int top = u->nlev - 1, Ht = h >> top, Wt = w >> top, Ct = u->ch[top];
    res_forward(u, &u->mid_res0.res, cur, B, Ht, Wt, u->P);
    xformer_forward(u, u->mid_attn, u->P, B, (int64_t)Ht * Wt, in->T);
    res_forward(u, &u->mid_res1.res, u->P, B, Ht, Wt, u->Q);
    hook(in, "mid_block", u->Q, B, Ht, Wt, Ct);
    wt_model_drop(u->m);

    /* up path: cat(h, skip) -> ResBlock [-> transformer] [-> upsample] */
    float *hc = u->Q, *spare = u->P;
    int cc = Ct, ns = u->n_in;
    for (int o = 0; o < u->n_out; o++) {
        const ldm_block *b = &u->outb[o];
        int l = b->level, H = h >> l, W = w >> l;
        int64_t hw = (int64_t)H * W;
        const float *sk = u->skip[--ns];
        int sc = u->inb[ns].cout, ct = cc + sc;
        float *cat = u->CAT;
#pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < B * hw; m++) {
            memcpy(cat + m * ct, hc + m * cc, (size_t)cc * sizeof(float));
            memcpy(cat + m * ct + cc, sk + m * sc, (size_t)sc * sizeof(float));
        }
        res_forward(u, &b->res, cat, B, H, W, spare);
        if (b->attn) xformer_forward(u, b->attn, spare, B, hw, in->T);
        float *t = hc;
        hc = spare;
        spare = t;
        cc = b->cout;
        int i = o / (u->L + 1), lo = l;
        if (b->up) {
            cm_upsample2x_conv3x3(hc, B, H, W, cc, b->op.w, b->op.b, spare);
            t = hc;
            hc = spare;
            spare = t;
            lo = l - 1;
        }
        if (o % (u->L + 1) == u->L) {
            snprintf(name, sizeof name, "up_blocks.%d", i);
            hook(in, name, hc, B, h >> lo, w >> lo, cc);
        }
        wt_model_drop(u->m);
        if (cm_interrupted) return cm_error_set(err, CM_ERR_INTERRUPTED, "interrupted");
    }

    /* out: GroupNorm, SiLU, conv_out, NHWC -> NCHW */
    cm_precision_set(CM_PREC_F32);
    int C0 = u->ch[0];
    cm_group_norm(hc, u->T0, B, HW, C0, u->groups, u->eps, u->norm_out.w, u->norm_out.b, 0);
    hook(in, "conv_norm_out", u->T0, B, h, w, C0);
    cm_act_inplace(u->T0, B * HW * C0, CM_ACT_SILU);
    cm_conv2d(u->T0, B, h, w, C0, u->conv_out.w, u->conv_out.b, (cm_conv_params){1, 1}, NULL,
              u->T1);
    {
        int C = u->out_ch;
        const float *s = u->T1;
#pragma omp parallel for schedule(static)
        for (int64_t m = 0; m < B * HW; m++) {
            int64_t b = m / HW, p = m % HW;
            for (int c = 0; c < C; c++) out[(b * C + c) * HW + p] = s[m * C + c];
        }
    }
    cm_precision_set(prec);
    return CM_OK;
}
