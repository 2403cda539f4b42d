/* sd3.c — the text conditioning of SD3-class models: CLIP-L + OpenCLIP
 * bigG (HF naming) + optional T5-XXL, assembled as the MMDiT wants it.
 *
 * Mirrors diffusers 0.30.3 StableDiffusion3Pipeline.encode_prompt:
 *   clip_l ids: BOS + the first 75 BPE ids + EOS, padded with EOS (49407)
 *   clip_g ids: the same with diffusers' "!" quirk, padded with 0
 *   clip_l/g:   hidden_states[-2] (clip_skip N >= 2: [-N]), no final LN;
 *               pooled = final LN at the first EOS; clip_g's through
 *               text_projection, clip_l's NOT projected (as the goldens,
 *               and ComfyUI / SD3's reference code, do it)
 *   T5:         te_t5_tokenize (max_len, default 256), last_hidden_state
 *   context  = cat_seq(zero-pad(cat_feat(clip_l, clip_g), W), T5)
 *              (1, 77 + max_len, W), W = joint_attention_dim (T5 d_model)
 *   pooled   = cat(clip_l pooled, clip_g pooled)        (1, 768 + 1280)
 * Without T5 (not in the model, or switched off: --no-t5) the T5 rows are
 * zeros of the same shape, as the reference pipeline does. The negative
 * prompt is encoded like the prompt (no zeroing for an empty one). No
 * A1111 emphasis syntax: the prompt is tokenized as diffusers does.
 *
 * Tower prefixes (the combined sd3_medium_incl_clips_t5xxl layout; the
 * separate files are added with wt_model_add_file under them):
 *   text_encoders.clip_l.transformer.text_model.*
 *   text_encoders.clip_g.transformer.text_model.* (+ text_projection.weight)
 *   text_encoders.t5xxl.transformer.{encoder.*, shared.weight}
 */
#include "textenc_internal.h"

#include <string.h>

#define CLIP_L_PREFIX "text_encoders.clip_l.transformer.text_model."
#define CLIP_G_PREFIX "text_encoders.clip_g.transformer.text_model."
#define T5_PREFIX "text_encoders.t5xxl.transformer."

struct te_sd3 {
    te_clip *clip_l, *clip_g;
    te_t5 *t5;                /* NULL when the model has no T5 */
    te_t5_tokenizer *t5_tok;  /* with t5 */
    int use_t5;
    int max_len;
    int width;                /* context width: joint_attention_dim */
    const char *path;
};

te_sd3 *te_sd3_create(const wt_model *m, cm_error *err)
{
    te_sd3 *s = cm_calloc(sizeof *s, "SD3 text encoders", err);
    if (!s) return NULL;
    s->path = wt_model_path(m);
    s->use_t5 = 1;
    s->max_len = TE_T5_MAX_LEN;
    s->clip_l = te_clip_create(m, CLIP_L_PREFIX, "text_encoder", err);
    if (!s->clip_l) goto fail;
    s->clip_g = te_clip_create(m, CLIP_G_PREFIX, "text_encoder_2", err);
    if (!s->clip_g) goto fail;
    if (te_clip_get_config(s->clip_g)->proj <= 0) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: tensor text_encoders.clip_g.transformer.text_projection.weight missing (SD3 pooled embedding)",
                     s->path);
        goto fail;
    }
    if (wt_model_getf(m, "%sshared.weight", T5_PREFIX) || wt_model_getf(m, "%sencoder.embed_tokens.weight", T5_PREFIX)) {
        s->t5 = te_t5_create(m, T5_PREFIX, "text_encoder_3", err);
        if (!s->t5) goto fail;
        s->t5_tok = te_t5_tokenizer_create(err);
        if (!s->t5_tok) goto fail;
    }
    const int wl = te_clip_get_config(s->clip_l)->width, wg = te_clip_get_config(s->clip_g)->width;
    int def = s->t5 ? te_t5_get_config(s->t5)->d_model : 4096;
    s->width = wt_cfg_int(wt_model_section(m, "transformer"), "joint_attention_dim", def);
    if (s->t5 && te_t5_get_config(s->t5)->d_model != s->width) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: T5 d_model %d differs from the MMDiT's joint_attention_dim %d",
                     s->path, te_t5_get_config(s->t5)->d_model, s->width);
        goto fail;
    }
    if (wl + wg > s->width) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: CLIP widths %d + %d exceed the context width %d", s->path, wl, wg,
                     s->width);
        goto fail;
    }
    return s;

fail:
    te_sd3_free(s);
    return NULL;
}

void te_sd3_free(te_sd3 *s)
{
    if (!s) return;
    te_clip_free(s->clip_l);
    te_clip_free(s->clip_g);
    te_t5_free(s->t5);
    te_t5_tokenizer_free(s->t5_tok);
    cm_free(s);
}

cm_status te_sd3_set_t5(te_sd3 *s, int use_t5, int max_length, cm_error *err)
{
    if (max_length < 1 || max_length > 4096)
        return cm_error_set(err, CM_ERR_USAGE, "--t5-max-length %d: expected 1..4096", max_length);
    s->use_t5 = use_t5;
    s->max_len = max_length;
    return CM_OK;
}

int te_sd3_has_t5(const te_sd3 *s) { return s->t5 != NULL; }

/* One 77-token CLIP window as diffusers' tokenizer makes it (truncation
 * to 75 BPE ids, no A1111 chunking or emphasis). */
static cm_status clip_window(const te_tokenizer *tok, const char *text, unsigned flags, int32_t pad,
                             int32_t *win, cm_error *err)
{
    int32_t *ids = NULL;
    int n = 0;
    cm_status st = te_tokenize_ex(tok, text, flags, &ids, &n, err);
    if (st != CM_OK) return st;
    int k = 0;
    win[k++] = TE_BOS;
    for (int i = 0; i < n && k < TE_CTX - 1; i++) win[k++] = ids[i];
    win[k++] = TE_EOS;
    while (k < TE_CTX) win[k++] = pad;
    cm_free(ids);
    return CM_OK;
}

static cm_status alloc_out(te_cond *c, int64_t T, int64_t W, int64_t P, cm_error *err)
{
    int64_t s[3] = {1, T, W}, p[2] = {1, P};
    cm_status st = cm_tensor_alloc(&c->context, 3, s, err);
    if (st == CM_OK) st = cm_tensor_alloc(&c->pooled, 2, p, err);
    return st;
}

cm_status te_sd3_encode_pair(te_sd3 *s, const te_tokenizer *tok, const char *prompt, const char *negative,
                             int clip_skip, te_cond *cond, te_cond *uncond, cm_error *err)
{
    const te_clip_config *gl = te_clip_get_config(s->clip_l), *gg = te_clip_get_config(s->clip_g);
    const int same = !strcmp(prompt, negative);
    const int B = same ? 1 : 2;
    const int L = s->max_len, W = s->width, wl = gl->width, wg = gg->width;
    const int P = wl + gg->proj;
    const int run_t5 = s->use_t5 && s->t5;
    const int64_t T = TE_CTX + L;
    int N = clip_skip < 2 ? 2 : clip_skip;
    if (N > gl->layers || N > gg->layers)
        cm_warn("--clip-skip %d: the CLIP encoders have %d and %d layers; using the first layer", N, gl->layers,
                gg->layers);
    int layer_l = gl->layers - N + 1 >= 1 ? gl->layers - N + 1 : 1;
    int layer_g = gg->layers - N + 1 >= 1 ? gg->layers - N + 1 : 1;

    int32_t idl[2 * TE_CTX], idg[2 * TE_CTX];
    int32_t *id5 = NULL;
    float *hl = NULL, *hg = NULL, *pl = NULL, *pg = NULL, *t5o = NULL;
    cm_status st;
    const char *texts[2] = {prompt, negative};
    for (int b = 0; b < B; b++) {
        if ((st = clip_window(tok, texts[b], 0, TE_EOS, idl + b * TE_CTX, err)) != CM_OK) goto fail;
        if ((st = clip_window(tok, texts[b], TE_TOK_SD2_BANG, 0, idg + b * TE_CTX, err)) != CM_OK) goto fail;
    }
    hl = cm_alloc((size_t)B * TE_CTX * (size_t)wl * sizeof(float), "clip_l states", err);
    hg = cm_alloc((size_t)B * TE_CTX * (size_t)wg * sizeof(float), "clip_g states", err);
    pl = cm_alloc((size_t)B * (size_t)wl * sizeof(float), "clip_l pooled", err);
    pg = cm_alloc((size_t)B * (size_t)gg->proj * sizeof(float), "clip_g pooled", err);
    if (!hl || !hg || !pl || !pg) goto nomem;
    te_clip_run rl = {.layer = layer_l, .out = hl, .pool_layer = gl->layers, .pooled = pl};
    te_clip_run rg = {.layer = layer_g, .out = hg, .pool_layer = gg->layers, .project = 1, .pooled = pg};
    if ((st = te_clip_encode(s->clip_l, idl, B, &rl, err)) != CM_OK) goto fail;
    if ((st = te_clip_encode(s->clip_g, idg, B, &rg, err)) != CM_OK) goto fail;
    if (run_t5) {
        id5 = cm_alloc((size_t)B * (size_t)L * sizeof(int32_t), "T5 token ids", err);
        t5o = cm_alloc((size_t)B * (size_t)L * (size_t)W * sizeof(float), "T5 states", err);
        if (!id5 || !t5o) goto nomem;
        for (int b = 0; b < B; b++)
            if ((st = te_t5_tokenize(s->t5_tok, texts[b], L, id5 + (size_t)b * L, NULL, err)) != CM_OK) goto fail;
        if ((st = te_t5_encode(s->t5, id5, B, L, t5o, err)) != CM_OK) goto fail;
    }

    te_cond *out[2] = {cond, uncond};
    for (int b = 0; b < 2; b++) {
        int r = same ? 0 : b;
        if ((st = alloc_out(out[b], T, W, P, err)) != CM_OK) goto fail;
        float *ctx = out[b]->context.data;
        memset(ctx, 0, (size_t)T * (size_t)W * sizeof(float));
        for (int t = 0; t < TE_CTX; t++) {
            memcpy(ctx + (size_t)t * W, hl + ((size_t)r * TE_CTX + t) * wl, (size_t)wl * sizeof(float));
            memcpy(ctx + (size_t)t * W + wl, hg + ((size_t)r * TE_CTX + t) * wg, (size_t)wg * sizeof(float));
        }
        if (run_t5)
            memcpy(ctx + (size_t)TE_CTX * W, t5o + (size_t)r * L * W, (size_t)L * (size_t)W * sizeof(float));
        memcpy(out[b]->pooled.data, pl + (size_t)r * wl, (size_t)wl * sizeof(float));
        memcpy(out[b]->pooled.data + wl, pg + (size_t)r * gg->proj, (size_t)gg->proj * sizeof(float));
    }
    st = CM_OK;
    goto done;

nomem:
    st = err ? err->status : CM_ERR_NOMEM;
    if (st == CM_OK) st = CM_ERR_NOMEM;
fail:
    te_cond_release(cond);
    te_cond_release(uncond);
done:
    cm_free(hl);
    cm_free(hg);
    cm_free(pl);
    cm_free(pg);
    cm_free(id5);
    cm_free(t5o);
    return st;
}
