/* mkckpt.c — writes a full-size random-weight checkpoint (SD 1.5, SD 2.1-768
 * or SDXL base) in the original single-file layout, filled by the procedural
 * weight generator of the shared goldens (golden/PROCEDURAL_WEIGHTS.md,
 * reference procedural_weights.py). With the seeds given there (sd15 15,
 * sd21 21, sdxl 10) the files are the very models behind the full-size
 * goldens, so full-size numerics can be checked without any download.
 *
 *   mkckpt --family sd15|sd21|sdxl|sd3|t5xxl [--seed N] [--manifest TSV] -o FILE.safetensors
 *
 * The tensor table (names, shapes, dtypes) is derived here from the
 * architectures (LDM UNet / KL VAE / CLIP-L in HF naming / OpenCLIP in its
 * own naming, as v1-5-pruned-emaonly, v2-1_768-ema-pruned and
 * sd_xl_base_1.0 store them); nothing is embedded. --manifest checks the
 * table against a weights_manifest.tsv (same names, dtypes and shapes) and
 * the SHA-256 of every tensor's stored bytes.
 *
 * Values: tensor N of seed S is a splitmix64 stream started at
 * S ^ fnv1a64(N); element i uses draws 2i+1 and 2i+2 (so any element can be
 * computed on its own: the elements are split over threads, the result does
 * not depend on the thread count), Box-Muller (cosine branch) in double
 * with libm log/cos, scaled by the tensor's category (mean, std) and
 * rounded once, double -> binary16, to nearest even. The exact tensors
 * (position_ids, the 12 LDM DDPM buffers, logit_scale) get their values.
 *
 * The file is streamed (one chunk of one tensor in memory) to a temporary
 * file beside the target, fsync'd and renamed: an interrupted run leaves
 * nothing behind. Tensors are ordered by dtype (I64, F32, F16), then name,
 * like the safetensors library orders them.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "weights_internal.h" /* wt_sha256 */

/* ------------------------------------------------------------------------
 * The tensor table
 * ---------------------------------------------------------------------- */

typedef enum { T_F16 = 0, T_F32, T_I64 } ttype;

static const char *const TTYPE_NAME[] = {"F16", "F32", "I64"};
static const int TTYPE_SIZE[] = {2, 4, 8};

typedef struct {
    char name[128];
    ttype type;
    int ndim;
    int64_t shape[4];
    uint64_t offset; /* in the data area */
    unsigned char sha[32];
    int skipped; /* --dry-run --max-numel: not generated, not hashed */
} entry;

typedef struct {
    entry *e;
    int n, cap;
    int overflow; /* a name did not fit: a bug in the table builders */
} table;

static void add(table *t, ttype type, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void add(table *t, ttype type, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 1024;
        entry *e = realloc(t->e, (size_t)cap * sizeof *e);
        if (!e) {
            fprintf(stderr, "mkckpt: error: out of memory\n");
            exit(1);
        }
        t->e = e;
        t->cap = cap;
    }
    entry *e = &t->e[t->n++];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof e->name) t->overflow = 1;
    e->type = type;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
}

/* Shorthands: a float16 tensor of rank 1, 2 or 4 named prefix + suffix. */
#define S1(a) ((const int64_t[]){(a)})
#define S2(a, b) ((const int64_t[]){(a), (b)})
#define S4(a, b, c, d) ((const int64_t[]){(a), (b), (c), (d)})

static void vec(table *t, const char *p, const char *s, int64_t n) { add(t, T_F16, 1, S1(n), "%s%s", p, s); }
static void mat(table *t, const char *p, const char *s, int64_t o, int64_t i)
{
    add(t, T_F16, 2, S2(o, i), "%s%s", p, s);
}
static void conv(table *t, const char *p, const char *s, int64_t o, int64_t i, int k)
{
    add(t, T_F16, 4, S4(o, i, k, k), "%s%s", p, s);
}
/* weight + bias of a norm / linear / conv */
static void norm(table *t, const char *p, const char *s, int64_t c)
{
    char b[160];
    snprintf(b, sizeof b, "%s.weight", s);
    vec(t, p, b, c);
    snprintf(b, sizeof b, "%s.bias", s);
    vec(t, p, b, c);
}
static void linear(table *t, const char *p, const char *s, int64_t o, int64_t i, int bias)
{
    char b[160];
    snprintf(b, sizeof b, "%s.weight", s);
    mat(t, p, b, o, i);
    if (bias) {
        snprintf(b, sizeof b, "%s.bias", s);
        vec(t, p, b, o);
    }
}
static void convb(table *t, const char *p, const char *s, int64_t o, int64_t i, int k)
{
    char b[160];
    snprintf(b, sizeof b, "%s.weight", s);
    conv(t, p, b, o, i, k);
    snprintf(b, sizeof b, "%s.bias", s);
    vec(t, p, b, o);
}

/* --- LDM UNet (openaimodel.py UNetModel) -------------------------------- */

typedef struct {
    int mc;            /* model_channels */
    int nlev;          /* levels */
    int mult[4];       /* channel_mult */
    int depth[4];      /* transformer depth per level, 0 = no attention */
    int mid_depth;
    int context;       /* context_dim */
    int linear_proj;   /* use_linear_in_transformer */
    int adm_in;        /* SDXL label_emb input (0: none) */
} unet_arch;

static void resblock(table *t, const char *p, int cin, int cout, int temb)
{
    norm(t, p, ".in_layers.0", cin);
    convb(t, p, ".in_layers.2", cout, cin, 3);
    linear(t, p, ".emb_layers.1", cout, temb, 1);
    norm(t, p, ".out_layers.0", cout);
    convb(t, p, ".out_layers.3", cout, cout, 3);
    if (cin != cout) convb(t, p, ".skip_connection", cout, cin, 1);
}

static void spatial_transformer(table *t, const char *p, int c, int depth, int ctx, int lin)
{
    norm(t, p, ".norm", c);
    if (lin) {
        linear(t, p, ".proj_in", c, c, 1);
        linear(t, p, ".proj_out", c, c, 1);
    } else {
        convb(t, p, ".proj_in", c, c, 1);
        convb(t, p, ".proj_out", c, c, 1);
    }
    for (int d = 0; d < depth; d++) {
        char b[160];
        snprintf(b, sizeof b, "%s.transformer_blocks.%d", p, d);
        linear(t, b, ".attn1.to_q", c, c, 0);
        linear(t, b, ".attn1.to_k", c, c, 0);
        linear(t, b, ".attn1.to_v", c, c, 0);
        linear(t, b, ".attn1.to_out.0", c, c, 1);
        linear(t, b, ".attn2.to_q", c, c, 0);
        linear(t, b, ".attn2.to_k", c, ctx, 0);
        linear(t, b, ".attn2.to_v", c, ctx, 0);
        linear(t, b, ".attn2.to_out.0", c, c, 1);
        linear(t, b, ".ff.net.0.proj", 8 * c, c, 1); /* GEGLU: value and gate */
        linear(t, b, ".ff.net.2", c, 4 * c, 1);
        norm(t, b, ".norm1", c);
        norm(t, b, ".norm2", c);
        norm(t, b, ".norm3", c);
    }
}

static void unet(table *t, const unet_arch *a)
{
    const char *P = "model.diffusion_model.";
    int mc = a->mc, temb = 4 * mc;
    char b[160];
    linear(t, P, "time_embed.0", temb, mc, 1);
    linear(t, P, "time_embed.2", temb, temb, 1);
    if (a->adm_in) {
        linear(t, P, "label_emb.0.0", temb, a->adm_in, 1);
        linear(t, P, "label_emb.0.2", temb, temb, 1);
    }
    convb(t, P, "input_blocks.0.0", mc, 4, 3);
    int skips[32], ns = 0, ch = mc, k = 1;
    skips[ns++] = mc;
    for (int l = 0; l < a->nlev; l++) {
        int out = mc * a->mult[l];
        for (int r = 0; r < 2; r++, k++) {
            snprintf(b, sizeof b, "%sinput_blocks.%d.0", P, k);
            resblock(t, b, ch, out, temb);
            ch = out;
            if (a->depth[l]) {
                snprintf(b, sizeof b, "%sinput_blocks.%d.1", P, k);
                spatial_transformer(t, b, ch, a->depth[l], a->context, a->linear_proj);
            }
            skips[ns++] = ch;
        }
        if (l + 1 < a->nlev) {
            snprintf(b, sizeof b, "%sinput_blocks.%d.0", P, k++);
            convb(t, b, ".op", ch, ch, 3);
            skips[ns++] = ch;
        }
    }
    snprintf(b, sizeof b, "%smiddle_block.0", P);
    resblock(t, b, ch, ch, temb);
    snprintf(b, sizeof b, "%smiddle_block.1", P);
    spatial_transformer(t, b, ch, a->mid_depth, a->context, a->linear_proj);
    snprintf(b, sizeof b, "%smiddle_block.2", P);
    resblock(t, b, ch, ch, temb);
    k = 0;
    for (int l = a->nlev - 1; l >= 0; l--) {
        int out = mc * a->mult[l];
        for (int r = 0; r < 3; r++, k++) {
            int cin = ch + skips[--ns];
            snprintf(b, sizeof b, "%soutput_blocks.%d.0", P, k);
            resblock(t, b, cin, out, temb);
            ch = out;
            int sub = 1;
            if (a->depth[l]) {
                snprintf(b, sizeof b, "%soutput_blocks.%d.1", P, k);
                spatial_transformer(t, b, ch, a->depth[l], a->context, a->linear_proj);
                sub = 2;
            }
            if (l > 0 && r == 2) {
                snprintf(b, sizeof b, "%soutput_blocks.%d.%d", P, k, sub);
                convb(t, b, ".conv", ch, ch, 3);
            }
        }
    }
    norm(t, P, "out.0", mc);
    convb(t, P, "out.2", 4, mc, 3);
}

/* --- KL VAE (ldm/modules/diffusionmodules/model.py Encoder/Decoder) ----- */

static void vae_res(table *t, const char *p, int cin, int cout)
{
    norm(t, p, ".norm1", cin);
    convb(t, p, ".conv1", cout, cin, 3);
    norm(t, p, ".norm2", cout);
    convb(t, p, ".conv2", cout, cout, 3);
    if (cin != cout) convb(t, p, ".nin_shortcut", cout, cin, 1);
}

static void vae_mid(table *t, const char *p, int c)
{
    char b[160];
    snprintf(b, sizeof b, "%s.mid.block_1", p);
    vae_res(t, b, c, c);
    snprintf(b, sizeof b, "%s.mid.attn_1", p);
    norm(t, b, ".norm", c);
    convb(t, b, ".q", c, c, 1);
    convb(t, b, ".k", c, c, 1);
    convb(t, b, ".v", c, c, 1);
    convb(t, b, ".proj_out", c, c, 1);
    snprintf(b, sizeof b, "%s.mid.block_2", p);
    vae_res(t, b, c, c);
}

/* zc latent channels; quant: the 1x1 quant_conv / post_quant_conv pair
 * (SD 1/2/XL have it, SD3's 16-channel VAE does not). */
static void vae(table *t, int zc, int quant)
{
    static const int mult[4] = {1, 2, 4, 4};
    const int base = 128;
    const char *E = "first_stage_model.encoder", *D = "first_stage_model.decoder";
    char b[160];
    convb(t, E, ".conv_in", base, 3, 3);
    int ch = base;
    for (int l = 0; l < 4; l++) {
        int out = base * mult[l];
        for (int r = 0; r < 2; r++) {
            snprintf(b, sizeof b, "%s.down.%d.block.%d", E, l, r);
            vae_res(t, b, ch, out);
            ch = out;
        }
        if (l < 3) {
            snprintf(b, sizeof b, "%s.down.%d.downsample", E, l);
            convb(t, b, ".conv", ch, ch, 3);
        }
    }
    vae_mid(t, E, ch);
    norm(t, E, ".norm_out", ch);
    convb(t, E, ".conv_out", 2 * zc, ch, 3);
    if (quant) {
        convb(t, "first_stage_model.", "quant_conv", 2 * zc, 2 * zc, 1);
        convb(t, "first_stage_model.", "post_quant_conv", zc, zc, 1);
    }
    ch = base * mult[3];
    convb(t, D, ".conv_in", ch, zc, 3);
    vae_mid(t, D, ch);
    for (int l = 3; l >= 0; l--) {
        int out = base * mult[l];
        for (int r = 0; r < 3; r++) {
            snprintf(b, sizeof b, "%s.up.%d.block.%d", D, l, r);
            vae_res(t, b, ch, out);
            ch = out;
        }
        if (l > 0) {
            snprintf(b, sizeof b, "%s.up.%d.upsample", D, l);
            convb(t, b, ".conv", ch, ch, 3);
        }
    }
    norm(t, D, ".norm_out", ch);
    convb(t, D, ".conv_out", 3, ch, 3);
}

/* --- text encoders ------------------------------------------------------- */

/* CLIP text model in transformers' naming: ViT-L/14 (768 x 12, MLP 3072;
 * SD1, SDXL encoder 1, SD3 clip_l) or bigG (1280 x 32, MLP 5120; SD3
 * clip_g). position_ids only where the checkpoints store them (SD1/SDXL). */
static void clip_hf_arch(table *t, const char *p, int w, int layers, int mlp, int position_ids)
{
    char b[200];
    if (position_ids) add(t, T_I64, 2, S2(1, 77), "%sembeddings.position_ids", p);
    mat(t, p, "embeddings.token_embedding.weight", 49408, w);
    mat(t, p, "embeddings.position_embedding.weight", 77, w);
    for (int l = 0; l < layers; l++) {
        snprintf(b, sizeof b, "%sencoder.layers.%d", p, l);
        linear(t, b, ".self_attn.q_proj", w, w, 1);
        linear(t, b, ".self_attn.k_proj", w, w, 1);
        linear(t, b, ".self_attn.v_proj", w, w, 1);
        linear(t, b, ".self_attn.out_proj", w, w, 1);
        norm(t, b, ".layer_norm1", w);
        norm(t, b, ".layer_norm2", w);
        linear(t, b, ".mlp.fc1", mlp, w, 1);
        linear(t, b, ".mlp.fc2", w, mlp, 1);
    }
    norm(t, p, "final_layer_norm", w);
}

static void clip_hf(table *t, const char *p) { clip_hf_arch(t, p, 768, 12, 3072, 1); }

/* OpenCLIP text tower in its own naming (SD2: ViT-H 1024 x 24; SDXL
 * encoder 2: bigG 1280 x 32), all layers, text_projection and logit_scale. */
static void openclip(table *t, const char *p, int w, int layers)
{
    char b[200];
    add(t, T_F32, 0, NULL, "%slogit_scale", p);
    mat(t, p, "token_embedding.weight", 49408, w);
    mat(t, p, "positional_embedding", 77, w);
    for (int l = 0; l < layers; l++) {
        snprintf(b, sizeof b, "%stransformer.resblocks.%d", p, l);
        mat(t, b, ".attn.in_proj_weight", 3 * w, w);
        vec(t, b, ".attn.in_proj_bias", 3 * w);
        linear(t, b, ".attn.out_proj", w, w, 1);
        norm(t, b, ".ln_1", w);
        norm(t, b, ".ln_2", w);
        linear(t, b, ".mlp.c_fc", 4 * w, w, 1);
        linear(t, b, ".mlp.c_proj", w, 4 * w, 1);
    }
    norm(t, p, "ln_final", w);
    mat(t, p, "text_projection", w, w);
}

/* --- SD3 ---------------------------------------------------------------- */

/* MMDiT of SD3 Medium (sd3_medium.safetensors naming): depth 24, width
 * 64 x depth, patch 2, 16 latent channels, pos_embed 192 x 192, context
 * 4096 (T5-XXL width), pooled 2048 (CLIP-L + bigG), MLP 4x; no affine
 * LayerNorms; the last block's context stream is pre-only (adaLN shift and
 * scale, qkv: no projection or MLP). */
static void mmdit(table *t, int depth)
{
    const char *P = "model.diffusion_model.";
    const int64_t D = 64 * depth, mlp = 4 * D, pm = 192, p = 2, cin = 16;
    char b[200];
    add(t, T_F16, 3, ((const int64_t[]){1, pm * pm, D}), "%spos_embed", P);
    convb(t, P, "x_embedder.proj", D, cin, (int)p);
    linear(t, P, "t_embedder.mlp.0", D, 256, 1);
    linear(t, P, "t_embedder.mlp.2", D, D, 1);
    linear(t, P, "y_embedder.mlp.0", D, 2048, 1);
    linear(t, P, "y_embedder.mlp.2", D, D, 1);
    linear(t, P, "context_embedder", D, 4096, 1);
    for (int i = 0; i < depth; i++)
        for (int s = 0; s < 2; s++) {
            int pre = s == 1 && i == depth - 1;
            snprintf(b, sizeof b, "%sjoint_blocks.%d.%s", P, i, s ? "context_block" : "x_block");
            linear(t, b, ".adaLN_modulation.1", (pre ? 2 : 6) * D, D, 1);
            linear(t, b, ".attn.qkv", 3 * D, D, 1);
            if (pre) continue;
            linear(t, b, ".attn.proj", D, D, 1);
            linear(t, b, ".mlp.fc1", mlp, D, 1);
            linear(t, b, ".mlp.fc2", D, mlp, 1);
        }
    linear(t, P, "final_layer.adaLN_modulation.1", 2 * D, D, 1);
    linear(t, P, "final_layer.linear", p * p * cin, D, 1);
}

/* T5 v1.1 XXL encoder as t5xxl_fp16.safetensors stores it (no prefix;
 * stipple's --t5xxl FILE): 24 blocks, d_model 4096, 64 heads x 64,
 * gated-GELU d_ff 10240, relative position buckets (32) in block 0. */
static void t5xxl(table *t)
{
    const int64_t d = 4096, ff = 10240, heads = 64, L = 24;
    char b[200];
    mat(t, "", "shared.weight", 32128, d);
    for (int i = 0; i < L; i++) {
        snprintf(b, sizeof b, "encoder.block.%d.layer.", i);
        mat(t, b, "0.SelfAttention.q.weight", d, d);
        mat(t, b, "0.SelfAttention.k.weight", d, d);
        mat(t, b, "0.SelfAttention.v.weight", d, d);
        mat(t, b, "0.SelfAttention.o.weight", d, d);
        if (i == 0) mat(t, b, "0.SelfAttention.relative_attention_bias.weight", 32, heads);
        vec(t, b, "0.layer_norm.weight", d);
        mat(t, b, "1.DenseReluDense.wi_0.weight", ff, d);
        mat(t, b, "1.DenseReluDense.wi_1.weight", ff, d);
        mat(t, b, "1.DenseReluDense.wo.weight", d, ff);
        vec(t, b, "1.layer_norm.weight", d);
    }
    vec(t, "", "encoder.final_layer_norm.weight", d);
}

static const char *const SCHEDULE_KEYS[12] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2"};

static int build_table(const char *family, table *t)
{
    if (!strcmp(family, "sd15")) {
        unet_arch a = {320, 4, {1, 2, 4, 4}, {1, 1, 1, 0}, 1, 768, 0, 0};
        unet(t, &a);
        vae(t, 4, 1);
        clip_hf(t, "cond_stage_model.transformer.text_model.");
    } else if (!strcmp(family, "sd21")) {
        unet_arch a = {320, 4, {1, 2, 4, 4}, {1, 1, 1, 0}, 1, 1024, 1, 0};
        unet(t, &a);
        vae(t, 4, 1);
        openclip(t, "cond_stage_model.model.", 1024, 24);
    } else if (!strcmp(family, "sdxl")) {
        unet_arch a = {320, 3, {1, 2, 4}, {0, 2, 10}, 10, 2048, 1, 2816};
        unet(t, &a);
        vae(t, 4, 1);
        clip_hf(t, "conditioner.embedders.0.transformer.text_model.");
        openclip(t, "conditioner.embedders.1.model.", 1280, 32);
        return 0;
    } else if (!strcmp(family, "sd3")) {
        /* sd3_medium_incl_clips.safetensors: MMDiT + VAE + CLIP-L + bigG
         * (T5-XXL in its own file: --family t5xxl, stipple --t5xxl) */
        mmdit(t, 24);
        vae(t, 16, 0);
        clip_hf_arch(t, "text_encoders.clip_l.transformer.text_model.", 768, 12, 3072, 0);
        clip_hf_arch(t, "text_encoders.clip_g.transformer.text_model.", 1280, 32, 5120, 0);
        mat(t, "text_encoders.clip_g.transformer.", "text_projection.weight", 1280, 1280);
        return 0;
    } else if (!strcmp(family, "t5xxl")) {
        t5xxl(t);
        return 0;
    } else {
        return -1;
    }
    for (int i = 0; i < 12; i++) add(t, T_F32, 1, S1(1000), "%s", SCHEDULE_KEYS[i]);
    return 0;
}

/* ------------------------------------------------------------------------
 * Values
 * ---------------------------------------------------------------------- */

static uint64_t fnv1a64(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

#define GAMMA 0x9e3779b97f4a7c15ull

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* double -> binary16 bits, round to nearest even, in one rounding. */
static inline uint16_t f64_to_f16(double v)
{
    uint64_t b;
    memcpy(&b, &v, 8);
    uint16_t sign = (uint16_t)((b >> 48) & 0x8000);
    int e = (int)((b >> 52) & 0x7ff);
    uint64_t m = b & 0xfffffffffffffull;
    if (e == 0x7ff) return sign | 0x7c00 | (m ? 0x200 : 0); /* inf / nan */
    int ue = e - 1023;                                      /* unbiased */
    if (ue > 15) return sign | 0x7c00;
    if (ue < -25) return sign; /* below half the smallest subnormal: 0 */
    /* significand with the implicit bit: 53 bits, value = sig * 2^(ue-52) */
    uint64_t sig = m | (e ? 1ull << 52 : 0);
    /* keep q = sig >> shift where the result unit is 2^-24 (subnormal) or
     * 2^(ue-10) (normal) */
    int shift = ue >= -14 ? 42 : 42 + (-14 - ue);
    uint64_t q = sig >> shift, rem = sig & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    if (ue >= -14) {
        /* q in [1024, 2048]: carry into the exponent when it reaches 2048 */
        int he = ue + 15;
        if (q == 2048) {
            q = 1024;
            he++;
        }
        if (he >= 31) return sign | 0x7c00;
        return sign | (uint16_t)(he << 10) | (uint16_t)(q - 1024);
    }
    return sign | (uint16_t)q; /* subnormal; q == 1024 is the smallest normal */
}

/* Category of a procedural tensor (PROCEDURAL_WEIGHTS.md §2). */
static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !memcmp(s + a - b, suf, b);
}

static void category(const entry *e, double *mean, double *std)
{
    *mean = 0.0;
    if (ends_with(e->name, "token_embedding.weight") || ends_with(e->name, "position_embedding.weight") ||
        ends_with(e->name, "positional_embedding")) {
        *std = 0.5;
    } else if (ends_with(e->name, "bias")) {
        *std = 0.1;
    } else if (e->ndim == 1 && ends_with(e->name, "weight")) {
        *mean = 1.0;
        *std = 0.25;
    } else if (e->ndim >= 2) {
        int64_t fan = 1;
        for (int i = 1; i < e->ndim; i++) fan *= e->shape[i];
        *std = 1.0 / sqrt((double)fan);
    } else {
        *std = 0.1;
    }
}

/* Elements [i0, i0+n) of a procedural tensor, as binary16 bits. */
static void gen_f16(uint64_t state0, double mean, double std, int64_t i0, int64_t n, uint16_t *out)
{
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < n; j++) {
        uint64_t k = 2 * (uint64_t)(i0 + j);
        uint64_t x = mix64(state0 + (k + 1) * GAMMA);
        uint64_t x2 = mix64(state0 + (k + 2) * GAMMA);
        double u1 = (double)((x >> 11) + 1) * 0x1p-53;
        double u2 = (double)(x2 >> 11) * 0x1p-53;
        double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        /* z*std + mean in two roundings, as numpy does: this file is
         * built with -ffp-contract=off, so no FMA */
        out[j] = f64_to_f16(z * std + mean);
    }
}

/* The 12 LDM DDPM buffers (register_schedule with SD's linear_start
 * 0.00085, linear_end 0.012, 1000 steps), float64 then float32. */
static void ldm_schedule(const char *key, float *out)
{
    enum { N = 1000 };
    static double betas[N], ac[N], acp[N];
    double start = sqrt(0.00085), stop = sqrt(0.012), step = (stop - start) / (N - 1);
    double prod = 1.0;
    for (int i = 0; i < N; i++) {
        double y = i == N - 1 ? stop : (double)i * step + start; /* numpy linspace */
        betas[i] = y * y;
        acp[i] = prod;
        prod *= 1.0 - betas[i];
        ac[i] = prod;
    }
    for (int i = 0; i < N; i++) {
        double bt = betas[i], a = ac[i], ap = acp[i], v;
        double pv = 1.0 * bt * (1.0 - ap) / (1.0 - a) + 0.0 * bt;
        if (!strcmp(key, "betas")) v = bt;
        else if (!strcmp(key, "alphas_cumprod")) v = a;
        else if (!strcmp(key, "alphas_cumprod_prev")) v = ap;
        else if (!strcmp(key, "sqrt_alphas_cumprod")) v = sqrt(a);
        else if (!strcmp(key, "sqrt_one_minus_alphas_cumprod")) v = sqrt(1.0 - a);
        else if (!strcmp(key, "log_one_minus_alphas_cumprod")) v = log(1.0 - a);
        else if (!strcmp(key, "sqrt_recip_alphas_cumprod")) v = sqrt(1.0 / a);
        else if (!strcmp(key, "sqrt_recipm1_alphas_cumprod")) v = sqrt(1.0 / a - 1);
        else if (!strcmp(key, "posterior_variance")) v = pv;
        else if (!strcmp(key, "posterior_log_variance_clipped")) v = log(pv > 1e-20 ? pv : 1e-20);
        else if (!strcmp(key, "posterior_mean_coef1")) v = bt * sqrt(ap) / (1.0 - a);
        else v = (1.0 - ap) * sqrt(1.0 - bt) / (1.0 - a); /* posterior_mean_coef2 */
        out[i] = (float)v;
    }
}

/* ------------------------------------------------------------------------
 * Writing
 * ---------------------------------------------------------------------- */

static int64_t numel(const entry *e)
{
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
    return n;
}

static int cmp_entry(const void *pa, const void *pb)
{
    const entry *a = pa, *b = pb;
    /* safetensors' order: dtype rank descending (I64 > F32 > F16), then name */
    if (a->type != b->type) return a->type > b->type ? -1 : 1;
    return strcmp(a->name, b->name);
}

/* The JSON header, space-padded to a multiple of 8. */
static char *make_header(const table *t, size_t *len)
{
    size_t cap = 256 + (size_t)t->n * 256, n = 0;
    char *h = malloc(cap);
    if (!h) return NULL;
    n += (size_t)snprintf(h + n, cap - n, "{");
    for (int i = 0; i < t->n; i++) {
        const entry *e = &t->e[i];
        n += (size_t)snprintf(h + n, cap - n, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                              e->name, TTYPE_NAME[e->type]);
        for (int d = 0; d < e->ndim; d++)
            n += (size_t)snprintf(h + n, cap - n, "%s%" PRId64, d ? "," : "", e->shape[d]);
        uint64_t end = e->offset + (uint64_t)numel(e) * (uint64_t)TTYPE_SIZE[e->type];
        n += (size_t)snprintf(h + n, cap - n, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}",
                              e->offset, end);
    }
    n += (size_t)snprintf(h + n, cap - n, "}");
    while (n % 8) h[n++] = ' ';
    h[n] = 0;
    *len = n;
    return h;
}

#define CHUNK ((int64_t)1 << 22) /* elements generated per parallel pass */

/* Streams every tensor to fd (fd < 0: a dry run, nothing written, tensors
 * over max_numel skipped); fills each entry's SHA-256 when hash. */
static int write_data(int fd, table *t, uint64_t seed, int hash, uint64_t total_bytes,
                      int64_t max_numel)
{
    void *buf = cm_alloc((size_t)CHUNK * 2, "generation buffer", NULL);
    if (!buf) return -1;
    uint64_t done = 0;
    int last_pct = -10;
    double t0 = cm_time_now();
    for (int i = 0; i < t->n; i++) {
        entry *e = &t->e[i];
        int64_t n = numel(e);
        wt_sha256 sh;
        wt_sha256_init(&sh);
        if (fd < 0 && n > max_numel) {
            e->skipped = 1;
        } else if (e->type == T_F16) {
            double mean, std;
            category(e, &mean, &std);
            uint64_t state0 = seed ^ fnv1a64(e->name);
            for (int64_t a = 0; a < n; a += CHUNK) {
                int64_t m = n - a < CHUNK ? n - a : CHUNK;
                gen_f16(state0, mean, std, a, m, buf);
                if (hash) wt_sha256_update(&sh, buf, (size_t)m * 2);
                if (fd >= 0 && cm_write_all(fd, buf, (size_t)m * 2)) goto fail;
            }
        } else {
            /* exact tensors: at most 1000 values */
            union {
                float f[1000];
                int64_t q[1000];
            } u;
            size_t nb = (size_t)n * (size_t)TTYPE_SIZE[e->type];
            if (e->type == T_I64) {
                for (int64_t j = 0; j < n; j++) u.q[j] = j % e->shape[e->ndim - 1];
            } else if (e->ndim == 0) {
                u.f[0] = 4.6052f; /* logit_scale: ln(100) as trained OpenCLIP stores it */
            } else {
                ldm_schedule(e->name, u.f);
            }
            if (hash) wt_sha256_update(&sh, &u, nb);
            if (fd >= 0 && cm_write_all(fd, &u, nb)) goto fail;
        }
        if (hash) wt_sha256_final(&sh, e->sha);
        done += (uint64_t)n * (uint64_t)TTYPE_SIZE[e->type];
        int pct = (int)(100.0 * (double)done / (double)total_bytes);
        if (pct >= last_pct + 10 || i + 1 == t->n) {
            fprintf(stderr, "mkckpt: %3d%% (%d/%d tensors, %.1f s)\n", pct, i + 1, t->n,
                    cm_time_now() - t0);
            last_pct = pct;
        }
        if (cm_interrupted) {
            errno = EINTR;
            goto fail;
        }
    }
    cm_free(buf);
    return 0;
fail:
    cm_free(buf);
    return -1;
}

/* ------------------------------------------------------------------------
 * Manifest check (weights_manifest.tsv of the goldens)
 * ---------------------------------------------------------------------- */

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

/* Returns the number of problems (0 = every name, dtype, shape and, when
 * hashed, every SHA-256 agree), printing the first few. */
static int check_manifest(const char *path, const table *t, int hashed)
{
    char *text;
    size_t len;
    cm_error err;
    if (cm_file_read_all(path, &text, &len, &err)) {
        fprintf(stderr, "mkckpt: error: %s\n", err.msg);
        return 1;
    }
    entry *sorted = malloc((size_t)t->n * sizeof *sorted);
    char *seen = calloc((size_t)t->n, 1);
    if (!sorted || !seen) {
        fprintf(stderr, "mkckpt: error: out of memory\n");
        free(sorted);
        free(seen);
        cm_free(text);
        return 1;
    }
    memcpy(sorted, t->e, (size_t)t->n * sizeof *sorted);
    qsort(sorted, (size_t)t->n, sizeof *sorted, cmp_name);
    int bad = 0, rows = 0, line_no = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line_no++ == 0) continue; /* column names */
        char *f[7] = {0};
        char *p = line;
        for (int c = 0; c < 7 && p; c++) {
            f[c] = p;
            p = strchr(p, '\t');
            if (p) *p++ = 0;
        }
        if (!f[6]) {
            fprintf(stderr, "mkckpt: %s:%d: expected 7 tab-separated fields\n", path, line_no);
            bad++;
            continue;
        }
        rows++;
        entry key;
        snprintf(key.name, sizeof key.name, "%s", f[0]);
        entry *e = bsearch(&key, sorted, (size_t)t->n, sizeof *sorted, cmp_name);
        char shape[96];
        size_t n = (size_t)snprintf(shape, sizeof shape, "[");
        if (e) {
            for (int d = 0; d < e->ndim; d++)
                n += (size_t)snprintf(shape + n, sizeof shape - n, "%s%" PRId64, d ? ", " : "",
                                      e->shape[d]);
        }
        snprintf(shape + n, sizeof shape - n, "]");
        const char *why = NULL;
        if (!e) why = "not in the generated table";
        else if (strcmp(f[1], TTYPE_NAME[e->type])) why = "dtype differs";
        else if (strcmp(f[2], shape)) why = "shape differs";
        if (!why && hashed && !e->skipped) {
            char hex[65];
            for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", e->sha[i]);
            if (strcmp(hex, f[6])) why = "SHA-256 differs";
        }
        if (e) seen[e - sorted] = 1;
        if (why) {
            if (bad < 10)
                fprintf(stderr, "mkckpt: manifest: %s: %s (manifest %s %s, here %s %s)\n", f[0], why,
                        f[1], f[2], e ? TTYPE_NAME[e->type] : "-", e ? shape : "-");
            bad++;
        }
    }
    for (int i = 0; i < t->n; i++) {
        if (!seen[i]) {
            if (bad < 10) fprintf(stderr, "mkckpt: manifest: %s: missing from the manifest\n", sorted[i].name);
            bad++;
        }
    }
    if (rows != t->n && !bad) bad++;
    fprintf(stderr, "mkckpt: manifest %s: %d rows, %d tensors here, %d problem(s)%s\n", path, rows,
            t->n, bad, hashed ? "" : " (names, dtypes and shapes only)");
    free(sorted);
    free(seen);
    cm_free(text);
    return bad;
}

/* ------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------- */

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: mkckpt --family sd15|sd21|sdxl|sd3|t5xxl [--seed N] [--manifest TSV] [--list] [--size]\n"
            "              [--dry-run [--max-numel N]] [--overwrite] -o FILE.safetensors\n"
            "Writes a random-weight F16 checkpoint with the exact tensor names and shapes of\n"
            "SD 1.5 / SD 2.1-768 / SDXL base, filled by the procedural generator of the\n"
            "full-size goldens (default seeds: sd15 15, sd21 21, sdxl 10 = the golden models);\n"
            "sd3: SD3 Medium with CLIP-L and bigG (sd3_medium_incl_clips layout, seed 3),\n"
            "t5xxl: the T5 v1.1 XXL encoder file for --t5xxl (seed 5); no goldens for these.\n"
            "  --manifest TSV  check names, dtypes, shapes and per-tensor SHA-256 against a\n"
            "                  weights_manifest.tsv (exit 1 on any difference)\n"
            "  --list          print the tensor table (name dtype shape) and exit\n"
            "  --size          print the size in bytes of the file it would write and exit\n"
            "  --dry-run       with --manifest: generate and check the values, write nothing\n"
            "  --max-numel N   with --dry-run: skip tensors of more than N values\n");
}

int main(int argc, char **argv)
{
    const char *family = NULL, *out = NULL, *manifest = NULL;
    int have_seed = 0, list = 0, overwrite = 0, size_only = 0, dry = 0;
    int64_t max_numel = INT64_MAX;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--list")) {
            list = 1;
        } else if (!strcmp(a, "--size")) {
            size_only = 1;
        } else if (!strcmp(a, "--dry-run")) {
            dry = 1;
        } else if (i + 1 < argc && !strcmp(a, "--max-numel")) {
            max_numel = atoll(argv[++i]);
        } else if (!strcmp(a, "--overwrite")) {
            overwrite = 1;
        } else if (i + 1 < argc && !strcmp(a, "--family")) {
            family = argv[++i];
        } else if (i + 1 < argc && (!strcmp(a, "-o") || !strcmp(a, "--output"))) {
            out = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--manifest")) {
            manifest = argv[++i];
        } else if (i + 1 < argc && !strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            seed = strtoull(argv[++i], &end, 10);
            if (errno || *end || argv[i][0] == '-' || !argv[i][0]) {
                fprintf(stderr, "mkckpt: error: --seed: not an unsigned integer: %s\n", argv[i]);
                return 2;
            }
            have_seed = 1;
        } else {
            fprintf(stderr, "mkckpt: error: unknown or incomplete argument: %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!family || (!out && !list && !manifest && !size_only) || (dry && !manifest)) {
        usage(stderr);
        return 2;
    }
    table t = {0};
    if (build_table(family, &t)) {
        fprintf(stderr, "mkckpt: error: --family: expected sd15, sd21, sdxl, sd3 or t5xxl, got %s\n", family);
        return 2;
    }
    if (t.overflow) {
        fprintf(stderr, "mkckpt: error: a tensor name is too long (bug)\n");
        return 1;
    }
    if (!have_seed)
        seed = !strcmp(family, "sd15")   ? 15
               : !strcmp(family, "sd21") ? 21
               : !strcmp(family, "sdxl") ? 10
               : !strcmp(family, "sd3")  ? 3
                                         : 5;
    qsort(t.e, (size_t)t.n, sizeof *t.e, cmp_entry);
    uint64_t off = 0, values = 0;
    for (int i = 0; i < t.n; i++) {
        t.e[i].offset = off;
        off += (uint64_t)numel(&t.e[i]) * (uint64_t)TTYPE_SIZE[t.e[i].type];
        values += (uint64_t)numel(&t.e[i]);
    }
    if (list) {
        for (int i = 0; i < t.n; i++) {
            printf("%s\t%s\t[", t.e[i].name, TTYPE_NAME[t.e[i].type]);
            for (int d = 0; d < t.e[i].ndim; d++) printf("%s%" PRId64, d ? ", " : "", t.e[i].shape[d]);
            printf("]\n");
        }
        free(t.e);
        return 0;
    }
    if (size_only) {
        size_t hl;
        char *h = make_header(&t, &hl);
        if (!h) return 1;
        printf("%" PRIu64 "\n", 8 + (uint64_t)hl + off);
        free(h);
        free(t.e);
        return 0;
    }
    if (dry) { /* generate and hash, write nothing */
        if (check_manifest(manifest, &t, 0) || write_data(-1, &t, seed, 1, off, max_numel)) {
            free(t.e);
            return 1;
        }
        int bad = check_manifest(manifest, &t, 1), skipped = 0;
        for (int i = 0; i < t.n; i++) skipped += t.e[i].skipped;
        if (skipped) fprintf(stderr, "mkckpt: %d tensors over --max-numel not checked\n", skipped);
        free(t.e);
        return bad ? 1 : 0;
    }
    if (!out) { /* --manifest alone: check the table only */
        int bad = check_manifest(manifest, &t, 0);
        free(t.e);
        return bad ? 1 : 0;
    }
    if (manifest && check_manifest(manifest, &t, 0)) {
        free(t.e);
        return 1;
    }
    fprintf(stderr, "mkckpt: %s seed %" PRIu64 ": %d tensors, %" PRIu64 " values, %.2f GB -> %s\n",
            family, seed, t.n, values, (double)off / 1e9, out);

    size_t hlen;
    char *header = make_header(&t, &hlen);
    if (!header) {
        fprintf(stderr, "mkckpt: error: out of memory\n");
        return 1;
    }
    if (!overwrite && access(out, F_OK) == 0) {
        fprintf(stderr, "mkckpt: error: %s: already exists (use --overwrite to replace it)\n", out);
        free(header);
        free(t.e);
        return 1;
    }
    size_t olen = strlen(out);
    char *tmp = malloc(olen + 16);
    if (!tmp) return 1;
    snprintf(tmp, olen + 16, "%s.tmp-XXXXXX", out);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fprintf(stderr, "mkckpt: error: %s: cannot create: %s\n", tmp, strerror(errno));
        return 1;
    }
    fchmod(fd, 0644);
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int rc = 1;
    if (cm_write_all(fd, le, 8) || cm_write_all(fd, header, hlen) ||
        write_data(fd, &t, seed, manifest != NULL, off, INT64_MAX) || fsync(fd)) {
        fprintf(stderr, "mkckpt: error: %s: write failed: %s\n", out, strerror(errno));
        close(fd);
        unlink(tmp);
        goto done;
    }
    if (close(fd) != 0 || rename(tmp, out) != 0) {
        fprintf(stderr, "mkckpt: error: %s: %s\n", out, strerror(errno));
        unlink(tmp);
        goto done;
    }
    rc = 0;
    if (manifest && check_manifest(manifest, &t, 1)) rc = 1; /* file kept: the values are the question */
done:
    free(tmp);
    free(header);
    free(t.e);
    return rc;
}
