/* encoder.c — the text conditioning of a model: prompt pair in, the
 * (uncond, cond) contexts the denoiser sees out.
 *
 * Mirrors AUTOMATIC1111's FrozenCLIPEmbedderWithCustomWords
 * (modules/sd_hijack_clip.py) on top of the reference pipelines'
 * encoders (diffusers StableDiffusionPipeline / StableDiffusionXLPipeline):
 *   - the prompt is parsed (weights, BREAK) and cut into 77-token windows
 *     by te_prompt_chunks; each window is encoded on its own and the
 *     windows are concatenated along T;
 *   - emphasis: hidden states are multiplied by the per-token weights, then
 *     rescaled so that the mean over the window equals the original mean;
 *   - cond and uncond get the same number of windows (the shorter one is
 *     padded with empty windows, as A1111 does);
 *   - clip_skip N (A1111: 1 = last layer): SD1 uses hidden_states[L-N+1]
 *     + final LN; SD2 the same on the full OpenCLIP tower, default N = 2
 *     (penultimate layer + ln_final, or the config's text_layers_used);
 *     SDXL uses hidden_states[-max(N,2)] of both encoders WITHOUT final LN,
 *     concatenated along channels, and the pooled embedding = bigG final
 *     LN at the first EOS of the FIRST window, through text_projection;
 *   - SDXL force_zeros_for_empty_prompt: an empty negative prompt gives a
 *     zero uncond context and zero pooled embedding.
 * Padding ids: CLIP-L pads with EOS 49407, the OpenCLIP towers (SD2, SDXL
 * enc2) with 0, as the goldens and A1111 do. The OpenCLIP towers see "!"
 * as id 0 like diffusers' tokenizer for them (golden README §8, the SD2
 * "!" quirk); A1111 and open_clip would give id 256 there.
 */
#include "textenc_internal.h"

#include <stdlib.h>
#include <string.h>

#define SD1_PREFIX "cond_stage_model.transformer.text_model."
#define SD2_PREFIX "cond_stage_model.model."
#define SDXL1_PREFIX "conditioner.embedders.0.transformer.text_model."
#define SDXL2_PREFIX "conditioner.embedders.1.model."
/* SDXL text_encoder_2 of a diffusers folder (HF names, see weights/diffusers.c) */
#define SDXL2_HF_PREFIX "conditioner.embedders.1.transformer.text_model."

struct te_encoder {
    wt_family family;
    te_tokenizer *tok;
    te_clip *enc1;     /* SD1 CLIP-L, SD2 OpenCLIP-H, SDXL CLIP-L */
    te_clip *enc2;     /* SDXL OpenCLIP-bigG, else NULL */
    te_sd3 *sd3;       /* SD3: CLIP-L + CLIP-G + T5 (sd3.c), else NULL */
    int32_t pad1, pad2;
    int default_skip;  /* clip_skip used when the caller passes 0 */
    int full_layers;   /* SD1/SD2: depth of the full tower clip_skip counts from */
    /* The last pair encoded: a repeated call (next image of a batch, next
     * job with the same prompts) is a copy, not a second encoding. */
    char *last_prompt, *last_negative;
    int last_skip;
    te_cond last_cond, last_uncond;
};

/* ------------------------------------------------------------------------
 * Creation
 * ---------------------------------------------------------------------- */

/* The first prefix under which a text tower exists (either naming). */
static const char *find_tower(const wt_model *m, const char *const *prefixes, int n)
{
    for (int i = 0; i < n; i++)
        if (wt_model_getf(m, "%stoken_embedding.weight", prefixes[i]) ||
            wt_model_getf(m, "%sembeddings.token_embedding.weight", prefixes[i]))
            return prefixes[i];
    return NULL;
}

te_encoder *te_encoder_create(const wt_model *m, cm_error *err)
{
    te_encoder *e = cm_calloc(sizeof *e, "text encoder", err);
    if (!e) return NULL;
    e->family = wt_model_family(m);
    switch (e->family) {
    case WT_FAMILY_SD1: {
        e->enc1 = te_clip_create(m, SD1_PREFIX, "text_encoder", err);
        if (!e->enc1) goto fail;
        e->pad1 = TE_EOS;
        e->default_skip = 1;
        e->full_layers = te_clip_get_config(e->enc1)->layers;
        break;
    }
    case WT_FAMILY_SD2: {
        /* Original checkpoints hold the full OpenCLIP tower; a diffusers
         * text_encoder (HF naming) already lacks the last layer. */
        static const char *const pre[] = {SD2_PREFIX, SD1_PREFIX};
        const char *p = find_tower(m, pre, 2);
        if (!p) p = SD2_PREFIX; /* te_clip_create names the missing tensor */
        e->enc1 = te_clip_create(m, p, "text_encoder", err);
        if (!e->enc1) goto fail;
        const te_clip_config *c = te_clip_get_config(e->enc1);
        int used = wt_cfg_int(wt_model_config(m), "text_layers_used",
                              c->openclip ? c->layers - 1 : c->layers);
        if (used < 1 || used > c->layers) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: text_layers_used %d outside 1..%d", wt_model_path(m),
                         used, c->layers);
            goto fail;
        }
        /* clip_skip counts from the full tower, whose penultimate layer is
         * the default (`used`): a diffusers text_encoder lacks the last
         * layer, so the same N means the same hidden state in both forms */
        e->full_layers = used + 1;
        e->default_skip = 2;
        e->pad1 = 0;
        break;
    }
    case WT_FAMILY_SDXL: {
        e->enc1 = te_clip_create(m, SDXL1_PREFIX, "text_encoder", err);
        if (!e->enc1) goto fail;
        static const char *const pre2[] = {SDXL2_PREFIX, SDXL2_HF_PREFIX};
        const char *p2 = find_tower(m, pre2, 2);
        e->enc2 = te_clip_create(m, p2 ? p2 : SDXL2_PREFIX, "text_encoder_2", err);
        if (!e->enc2) goto fail;
        if (te_clip_get_config(e->enc2)->proj <= 0) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %stext_projection missing (SDXL pooled embedding)",
                         wt_model_path(m), SDXL2_PREFIX);
            goto fail;
        }
        e->pad1 = TE_EOS;
        e->pad2 = 0;
        e->default_skip = 2;
        break;
    }
    case WT_FAMILY_SD3:
        e->sd3 = te_sd3_create(m, err);
        if (!e->sd3) goto fail;
        break;
    default:
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: no CLIP text conditioning for model family %s",
                     wt_model_path(m), wt_family_name(e->family));
        goto fail;
    }
    e->tok = te_tokenizer_create(err);
    if (!e->tok) goto fail;
    return e;

fail:
    te_encoder_free(e);
    return NULL;
}

void te_encoder_free(te_encoder *e)
{
    if (!e) return;
    te_clip_free(e->enc1);
    te_clip_free(e->enc2);
    te_sd3_free(e->sd3);
    te_tokenizer_free(e->tok);
    cm_free(e->last_prompt);
    cm_free(e->last_negative);
    te_cond_release(&e->last_cond);
    te_cond_release(&e->last_uncond);
    cm_free(e);
}

const te_tokenizer *te_encoder_tokenizer(const te_encoder *e) { return e->tok; }

void te_cond_release(te_cond *c)
{
    if (!c) return;
    cm_tensor_release(&c->context);
    cm_tensor_release(&c->pooled);
}

/* ------------------------------------------------------------------------
 * Encoding
 * ---------------------------------------------------------------------- */

/* A1111 emphasis on one window z (77, C) with weights w (77): scale each
 * token's state by its weight, then restore the window's original mean.
 * All-ones weights leave z untouched (A1111's result is the same). */
static void apply_emphasis(float *z, int C, const float *w)
{
    int any = 0;
    for (int t = 0; t < TE_CTX; t++)
        if (w[t] != 1.0f) any = 1;
    if (!any) return;
    const int64_t n = (int64_t)TE_CTX * C;
    double s0 = 0, s1 = 0;
    for (int64_t i = 0; i < n; i++) s0 += z[i];
    for (int t = 0; t < TE_CTX; t++)
        for (int c = 0; c < C; c++) {
            z[(int64_t)t * C + c] *= w[t];
            s1 += z[(int64_t)t * C + c];
        }
    float orig_mean = (float)(s0 / (double)n), new_mean = (float)(s1 / (double)n);
    if (new_mean == 0.0f) return; /* degenerate: keep the weighted states */
    float f = orig_mean / new_mean;
    for (int64_t i = 0; i < n; i++) z[i] *= f;
}

/* hidden_states index for A1111's clip_skip N on an L-layer tower. */
static int skip_layer(int L, int N) { return L - N + 1 >= 1 ? L - N + 1 : 1; }

/* Encode B windows (ids, weights: B*77) with one tower; states (B*77, C)
 * with row stride ldo go to out at column offset col. */
static cm_status run_tower(const te_clip *c, const int32_t *ids, const float *w, int B, int layer,
                           int final_ln, float *out, int ldo, float *pooled, cm_error *err)
{
    const te_clip_config *g = te_clip_get_config(c);
    size_t n = (size_t)B * TE_CTX * (size_t)g->width;
    float *z = cm_alloc(n * sizeof(float), "text encoder output", err);
    if (!z) return err ? err->status : CM_ERR_NOMEM;
    te_clip_run r = {.layer = layer, .final_ln = final_ln, .out = z};
    if (pooled) {
        r.pooled = pooled;
        r.pool_layer = g->layers;
        r.project = 1;
    }
    cm_status st = te_clip_encode(c, ids, B, &r, err);
    if (st == CM_OK) {
        for (int b = 0; b < B; b++) apply_emphasis(z + (int64_t)b * TE_CTX * g->width, g->width, w + (int64_t)b * TE_CTX);
        for (int64_t t = 0; t < (int64_t)B * TE_CTX; t++)
            memcpy(out + t * ldo, z + t * g->width, (size_t)g->width * sizeof(float));
    }
    cm_free(z);
    return st;
}

/* Parse prompt into windows for enc1 (and enc2 for SDXL), both with the
 * same number of windows. The OpenCLIP towers get diffusers' ids: "!" is
 * their pad token, so a literal "!" becomes id 0 (TE_TOK_SD2_BANG), which
 * can change the token count; the side with fewer windows is padded. */
static cm_status parse(const te_encoder *e, const char *prompt, te_chunks *c1, te_chunks *c2,
                       cm_error *err)
{
    unsigned f1 = e->family == WT_FAMILY_SD2 ? TE_TOK_SD2_BANG : 0;
    cm_status st = te_prompt_chunks_ex(e->tok, prompt, e->pad1, f1, c1, err);
    if (st != CM_OK || !e->enc2) return st;
    st = te_prompt_chunks_ex(e->tok, prompt, e->pad2, TE_TOK_SD2_BANG, c2, err);
    if (st != CM_OK) return st;
    if (c2->nchunks < c1->nchunks) return te_chunks_pad_to(c2, c1->nchunks, e->pad2, err);
    return te_chunks_pad_to(c1, c2->nchunks, e->pad1, err);
}

static cm_status alloc_cond(te_cond *c, int nchunks, int C, int P, cm_error *err)
{
    int64_t s[3] = {1, (int64_t)nchunks * TE_CTX, C};
    cm_status st = cm_tensor_alloc(&c->context, 3, s, err);
    if (st != CM_OK) return st;
    if (P > 0) {
        int64_t p[2] = {1, P};
        st = cm_tensor_alloc(&c->pooled, 2, p, err);
    }
    return st;
}

static cm_status copy_cond(te_cond *dst, const te_cond *src, cm_error *err)
{
    cm_status st = cm_tensor_alloc(&dst->context, src->context.ndim, src->context.shape, err);
    if (st != CM_OK) return st;
    memcpy(dst->context.data, src->context.data, (size_t)cm_tensor_numel(&src->context) * sizeof(float));
    if (src->pooled.data) {
        st = cm_tensor_alloc(&dst->pooled, src->pooled.ndim, src->pooled.shape, err);
        if (st != CM_OK) return st;
        memcpy(dst->pooled.data, src->pooled.data, (size_t)cm_tensor_numel(&src->pooled) * sizeof(float));
    }
    return CM_OK;
}

static cm_status encode_pair(te_encoder *e, const char *prompt, const char *negative, int clip_skip,
                             te_cond *cond, te_cond *uncond, cm_error *err)
{
    if (e->sd3) return te_sd3_encode_pair(e->sd3, e->tok, prompt, negative, clip_skip, cond, uncond, err);

    const int zero_uncond = e->family == WT_FAMILY_SDXL && negative[0] == 0;
    const int same = !zero_uncond && !strcmp(prompt, negative);
    te_chunks p1 = {0}, p2 = {0}, n1 = {0}, n2 = {0};
    int32_t *ids1 = NULL, *ids2 = NULL;
    float *w1 = NULL, *w2 = NULL, *pooled = NULL;
    cm_status st;

    st = parse(e, prompt, &p1, &p2, err);
    if (st != CM_OK) goto fail;
    int nc = p1.nchunks;
    if (!same && !zero_uncond) {
        st = parse(e, negative, &n1, &n2, err);
        if (st != CM_OK) goto fail;
        if (n1.nchunks > nc) nc = n1.nchunks;
    }
    /* cond and uncond with the same number of windows */
    if ((st = te_chunks_pad_to(&p1, nc, e->pad1, err)) != CM_OK) goto fail;
    if (e->enc2 && (st = te_chunks_pad_to(&p2, nc, e->pad2, err)) != CM_OK) goto fail;
    if (!same && !zero_uncond) {
        if ((st = te_chunks_pad_to(&n1, nc, e->pad1, err)) != CM_OK) goto fail;
        if (e->enc2 && (st = te_chunks_pad_to(&n2, nc, e->pad2, err)) != CM_OK) goto fail;
    }

    /* One batch: [cond windows | uncond windows] unless uncond is a copy
     * of cond or zeros. */
    const int both = !same && !zero_uncond;
    const int B = nc * (both ? 2 : 1);
    const size_t win = (size_t)nc * TE_CTX;
    const te_clip_config *g1 = te_clip_get_config(e->enc1);
    const te_clip_config *g2 = e->enc2 ? te_clip_get_config(e->enc2) : NULL;
    const int C = g1->width + (g2 ? g2->width : 0), P = g2 ? g2->proj : 0;

    ids1 = cm_alloc((size_t)B * TE_CTX * sizeof(int32_t), "token ids", err);
    w1 = cm_alloc((size_t)B * TE_CTX * sizeof(float), "token weights", err);
    if (!ids1 || !w1) goto nomem;
    memcpy(ids1, p1.ids, win * sizeof(int32_t));
    memcpy(w1, p1.weights, win * sizeof(float));
    if (both) {
        memcpy(ids1 + win, n1.ids, win * sizeof(int32_t));
        memcpy(w1 + win, n1.weights, win * sizeof(float));
    }
    if (g2) {
        ids2 = cm_alloc((size_t)B * TE_CTX * sizeof(int32_t), "token ids", err);
        w2 = cm_alloc((size_t)B * TE_CTX * sizeof(float), "token weights", err);
        pooled = cm_alloc((size_t)B * (size_t)P * sizeof(float), "pooled embeddings", err);
        if (!ids2 || !w2 || !pooled) goto nomem;
        memcpy(ids2, p2.ids, win * sizeof(int32_t));
        memcpy(w2, p2.weights, win * sizeof(float));
        if (both) {
            memcpy(ids2 + win, n2.ids, win * sizeof(int32_t));
            memcpy(w2 + win, n2.weights, win * sizeof(float));
        }
    }

    /* cond (and uncond) context: (B*77, C) in one buffer, rows split below */
    float *ctx = cm_alloc((size_t)B * TE_CTX * (size_t)C * sizeof(float), "text context", err);
    if (!ctx) goto nomem;
    int N = clip_skip ? clip_skip : e->default_skip;
    if (e->family == WT_FAMILY_SDXL) {
        if (N < 2) N = 2;
        if (N > g1->layers || N > g2->layers)
            cm_warn("--clip-skip %d: the text encoders have %d and %d layers; using the first layer", N,
                    g1->layers, g2->layers);
        st = run_tower(e->enc1, ids1, w1, B, skip_layer(g1->layers, N), 0, ctx, C, NULL, err);
        if (st == CM_OK)
            st = run_tower(e->enc2, ids2, w2, B, skip_layer(g2->layers, N), 0, ctx + g1->width, C, pooled, err);
    } else {
        int layer = skip_layer(e->full_layers, N);
        if (N > e->full_layers)
            cm_warn("--clip-skip %d: the text encoder has %d layers; using the first layer", N, e->full_layers);
        if (layer > g1->layers) { /* N = 1 on a tower stored without its last layer */
            cm_warn("--clip-skip %d: the model's text encoder lacks the last layer; using its last (%d)", N,
                    g1->layers);
            layer = g1->layers;
        }
        st = run_tower(e->enc1, ids1, w1, B, layer, 1, ctx, C, NULL, err);
    }
    if (st == CM_OK) st = alloc_cond(cond, nc, C, P, err);
    if (st == CM_OK) {
        memcpy(cond->context.data, ctx, win * (size_t)C * sizeof(float));
        if (P) memcpy(cond->pooled.data, pooled, (size_t)P * sizeof(float)); /* first window */
        if (same) {
            st = copy_cond(uncond, cond, err);
        } else {
            st = alloc_cond(uncond, nc, C, P, err);
            if (st == CM_OK && zero_uncond) {
                memset(uncond->context.data, 0, win * (size_t)C * sizeof(float));
                memset(uncond->pooled.data, 0, (size_t)P * sizeof(float));
            } else if (st == CM_OK) {
                memcpy(uncond->context.data, ctx + win * (size_t)C, win * (size_t)C * sizeof(float));
                if (P) memcpy(uncond->pooled.data, pooled + (size_t)nc * (size_t)P, (size_t)P * sizeof(float));
            }
        }
    }
    cm_free(ctx);
    if (st != CM_OK) goto fail;
    goto done;

nomem:
    st = err ? err->status : CM_ERR_NOMEM;
    if (st == CM_OK) st = CM_ERR_NOMEM;
fail:
    te_cond_release(cond);
    te_cond_release(uncond);
done:
    cm_free(ids1);
    cm_free(ids2);
    cm_free(w1);
    cm_free(w2);
    cm_free(pooled);
    te_chunks_release(&p1);
    te_chunks_release(&p2);
    te_chunks_release(&n1);
    te_chunks_release(&n2);
    return st;
}

static char *dup_str(const char *s, cm_error *err)
{
    size_t n = strlen(s) + 1;
    char *d = cm_alloc(n, "prompt copy", err);
    if (d) memcpy(d, s, n);
    return d;
}

cm_status te_encode_pair(te_encoder *e, const char *prompt, const char *negative, int clip_skip,
                         te_cond *cond, te_cond *uncond, cm_error *err)
{
    memset(cond, 0, sizeof *cond);
    memset(uncond, 0, sizeof *uncond);
    if (!prompt) prompt = "";
    if (!negative) negative = "";
    if (clip_skip < 0)
        return cm_error_set(err, CM_ERR_USAGE, "--clip-skip %d: expected >= 1 (or 0 for the model's default)", clip_skip);

    cm_status st;
    if (e->last_prompt && e->last_skip == clip_skip && !strcmp(e->last_prompt, prompt) &&
        !strcmp(e->last_negative, negative)) {
        st = copy_cond(cond, &e->last_cond, err);
        if (st == CM_OK) st = copy_cond(uncond, &e->last_uncond, err);
        if (st != CM_OK) {
            te_cond_release(cond);
            te_cond_release(uncond);
        }
        return st;
    }
    st = encode_pair(e, prompt, negative, clip_skip, cond, uncond, err);
    if (st != CM_OK) return st;

    /* Remember this pair; failing to is not an error. */
    cm_free(e->last_prompt);
    cm_free(e->last_negative);
    te_cond_release(&e->last_cond);
    te_cond_release(&e->last_uncond);
    e->last_prompt = dup_str(prompt, NULL);
    e->last_negative = dup_str(negative, NULL);
    e->last_skip = clip_skip;
    if (!e->last_prompt || !e->last_negative || copy_cond(&e->last_cond, cond, NULL) != CM_OK ||
        copy_cond(&e->last_uncond, uncond, NULL) != CM_OK) {
        cm_free(e->last_prompt);
        cm_free(e->last_negative);
        e->last_prompt = e->last_negative = NULL;
        te_cond_release(&e->last_cond);
        te_cond_release(&e->last_uncond);
    }
    return CM_OK;
}

cm_status te_encoder_set_t5(te_encoder *e, int use_t5, int max_length, cm_error *err)
{
    if (!e->sd3)
        return cm_error_set(err, CM_ERR_USAGE, "T5 options: the model (family %s) has no T5 text encoder",
                            wt_family_name(e->family));
    cm_status st = te_sd3_set_t5(e->sd3, use_t5, max_length, err);
    /* the remembered pair was encoded with the old options */
    cm_free(e->last_prompt);
    cm_free(e->last_negative);
    e->last_prompt = e->last_negative = NULL;
    te_cond_release(&e->last_cond);
    te_cond_release(&e->last_uncond);
    return st;
}
