/* clip.c — the CLIP text transformer of SD1 (CLIP ViT-L/14), SD2
 * (OpenCLIP ViT-H/14) and SDXL (CLIP-L + OpenCLIP bigG/14).
 *
 * Mirrors transformers' CLIPTextTransformer (modeling_clip.py) and
 * open_clip's TextTransformer as the LDM/SGM FrozenOpenCLIPEmbedder calls
 * them: pre-LN residual blocks, causal self-attention over all 77
 * positions (padding is not masked), quick-GELU (CLIP) or erf-GELU
 * (OpenCLIP) MLP, final LayerNorm, pooled state at the first EOS token
 * (argmax of the ids), OpenCLIP's text_projection applied as x @ P.
 *
 * Two tensor namings under one canonical prefix:
 *   HF:       embeddings.{token,position}_embedding.weight,
 *             encoder.layers.i.{layer_norm1, self_attn.{q,k,v,out}_proj,
 *             layer_norm2, mlp.fc1, mlp.fc2}, final_layer_norm
 *   OpenCLIP: token_embedding.weight, positional_embedding,
 *             transformer.resblocks.i.{ln_1, attn.in_proj_weight/bias
 *             (fused [3W, W], rows q|k|v), attn.out_proj, ln_2, mlp.c_fc,
 *             mlp.c_proj}, ln_final, text_projection [W, P]
 * (diffusers' CLIPTextModelWithProjection, as the SDXL folder maps it:
 * HF names plus text_projection.weight [P, W] beside text_model.)
 *
 * Layout: activations float32 (B*77, W) token-major; q|k|v share one
 * (B*77, 3W) buffer so both namings feed the same attention call.
 */
#include "textenc_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One residual block; field names follow the HF tensor names. */
typedef struct {
    const cm_wview *layer_norm1_w, *layer_norm1_b;
    const cm_wview *q_w, *q_b, *k_w, *k_b, *v_w, *v_b; /* HF: separate */
    const cm_wview *in_proj_w, *in_proj_b;             /* OpenCLIP: fused */
    const cm_wview *out_proj_w, *out_proj_b;
    const cm_wview *layer_norm2_w, *layer_norm2_b;
    const cm_wview *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} clip_layer;

struct te_clip {
    te_clip_config cfg;
    const cm_wview *token_embedding;    /* (vocab, W) */
    const cm_wview *position_embedding; /* (npos, W) */
    const cm_wview *final_ln_w, *final_ln_b;
    const cm_wview *text_projection; /* (W, P), or (P, W) when proj_linear; or NULL */
    int proj_linear; /* HF CLIPTextModelWithProjection: text_projection.weight, y = x W^T */
    clip_layer *layer;
    const wt_model *m; /* each layer's mapped weights go back after it ran (wt_model_drop) */
};

/* ------------------------------------------------------------------------
 * Construction: config, shapes, tensor lookup
 * ---------------------------------------------------------------------- */

static cm_act act_from_name(const char *s, cm_act def, int *ok)
{
    *ok = 1;
    if (!s) return def;
    if (!strcmp(s, "quick_gelu")) return CM_ACT_QUICK_GELU;
    if (!strcmp(s, "gelu")) return CM_ACT_GELU;
    if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast"))
        return CM_ACT_GELU_TANH;
    *ok = 0;
    return def;
}

/* Count layers present in the file: i = 0, 1, ... while layer i exists. */
static int count_layers(const wt_model *m, const char *prefix, int openclip)
{
    int n = 0;
    while (n < 4096 &&
           (openclip ? wt_model_getf(m, "%stransformer.resblocks.%d.ln_1.weight", prefix, n)
                     : wt_model_getf(m, "%sencoder.layers.%d.layer_norm1.weight", prefix, n)))
        n++;
    return n;
}

te_clip *te_clip_create(const wt_model *m, const char *prefix, const char *section, cm_error *err)
{
    te_clip *c = cm_calloc(sizeof *c, "CLIP text encoder", err);
    if (!c) return NULL;
    c->m = m;
    te_clip_config *g = &c->cfg;
    const cJSON *sec = section ? wt_model_section(m, section) : NULL;

    /* Naming: OpenCLIP towers have a bare token_embedding. */
    const cm_wview *tok = wt_model_getf(m, "%stoken_embedding.weight", prefix);
    g->openclip = tok != NULL;
    if (!tok) tok = wt_model_getf(m, "%sembeddings.token_embedding.weight", prefix);
    if (!tok || tok->ndim != 2) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: no text encoder: tensor %s%s missing or not 2-D",
                     wt_model_path(m), prefix, "embeddings.token_embedding.weight");
        goto fail;
    }
    const cm_wview *pos = g->openclip ? wt_model_getf(m, "%spositional_embedding", prefix)
                                      : wt_model_getf(m, "%sembeddings.position_embedding.weight", prefix);

    /* Architecture: config fields where present, else the shapes. */
    int file_layers = count_layers(m, prefix, g->openclip);
    g->width = wt_cfg_int(sec, "hidden_size", (int)tok->shape[1]);
    g->vocab = wt_cfg_int(sec, "vocab_size", (int)tok->shape[0]);
    g->npos = wt_cfg_int(sec, "max_position_embeddings", pos && pos->ndim == 2 ? (int)pos->shape[0] : TE_CTX);
    g->layers = wt_cfg_int(sec, "num_hidden_layers", file_layers);
    g->heads = wt_cfg_int(sec, "num_attention_heads", g->width / 64 > 0 ? g->width / 64 : 1);
    g->eps = (float)wt_cfg_num(sec, "layer_norm_eps", 1e-5);
    const cm_wview *fc1 = g->openclip ? wt_model_getf(m, "%stransformer.resblocks.0.mlp.c_fc.weight", prefix)
                                      : wt_model_getf(m, "%sencoder.layers.0.mlp.fc1.weight", prefix);
    g->mlp = wt_cfg_int(sec, "intermediate_size", fc1 && fc1->ndim == 2 ? (int)fc1->shape[0] : 4 * g->width);
    int ok;
    const char *act = wt_cfg_str(sec, "hidden_act", NULL);
    g->act = act_from_name(act, g->openclip ? CM_ACT_GELU : CM_ACT_QUICK_GELU, &ok);
    if (!ok) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: text encoder %s: hidden_act \"%s\" is not supported",
                     wt_model_path(m), prefix, act);
        goto fail;
    }
    if (g->width <= 0 || g->heads <= 0 || g->width % g->heads || g->layers <= 0 || g->mlp <= 0 ||
        g->vocab <= 0 || g->npos < TE_CTX || !(g->eps > 0)) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: text encoder %s: bad architecture (width %d, heads %d, layers %d, mlp %d, "
                     "vocab %d, positions %d; expected width divisible by heads, >= 77 positions)",
                     wt_model_path(m), prefix, g->width, g->heads, g->layers, g->mlp, g->vocab, g->npos);
        goto fail;
    }
    if (g->layers > file_layers) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: text encoder %s: config wants %d layers, the file has %d",
                     wt_model_path(m), prefix, g->layers, file_layers);
        goto fail;
    }

    const int64_t W = g->width, F = g->mlp;
    if (g->openclip) {
        REQ2(c->token_embedding, g->vocab, W, "%stoken_embedding.weight", prefix);
        REQ2(c->position_embedding, g->npos, W, "%spositional_embedding", prefix);
        REQ1(c->final_ln_w, W, "%sln_final.weight", prefix);
        REQ1(c->final_ln_b, W, "%sln_final.bias", prefix);
        c->text_projection = wt_model_getf(m, "%stext_projection", prefix);
        if (c->text_projection) {
            const cm_wview *p = c->text_projection;
            if (p->ndim != 2 || p->shape[0] != W || p->shape[1] <= 0) {
                cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %stext_projection: expected shape [%lld, P], got %d dims [%lld, ...]",
                             wt_model_path(m), prefix, (long long)W, p->ndim, (long long)p->shape[0]);
                goto fail;
            }
            g->proj = (int)p->shape[1];
        }
    } else {
        REQ2(c->token_embedding, g->vocab, W, "%sembeddings.token_embedding.weight", prefix);
        REQ2(c->position_embedding, g->npos, W, "%sembeddings.position_embedding.weight", prefix);
        REQ1(c->final_ln_w, W, "%sfinal_layer_norm.weight", prefix);
        REQ1(c->final_ln_b, W, "%sfinal_layer_norm.bias", prefix);
        /* diffusers' CLIPTextModelWithProjection keeps text_projection.weight
         * [P, W] beside text_model.* (prefix "<root>text_model."). */
        size_t pl = strlen(prefix), tl = strlen("text_model.");
        if (pl >= tl && !strcmp(prefix + pl - tl, "text_model.")) {
            const cm_wview *p = wt_model_getf(m, "%.*stext_projection.weight", (int)(pl - tl), prefix);
            if (p) {
                if (p->ndim != 2 || p->shape[1] != W || p->shape[0] <= 0) {
                    cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %.*stext_projection.weight: expected shape [P, %lld]",
                                 wt_model_path(m), (int)(pl - tl), prefix, (long long)W);
                    goto fail;
                }
                c->text_projection = p;
                c->proj_linear = 1;
                g->proj = (int)p->shape[0];
            }
        }
    }

    c->layer = cm_calloc(sizeof(clip_layer) * (size_t)g->layers, "CLIP layers", err);
    if (!c->layer) goto fail;
    for (int i = 0; i < g->layers; i++) {
        clip_layer *L = &c->layer[i];
        if (g->openclip) {
            const char *p = prefix;
            REQ1(L->layer_norm1_w, W, "%stransformer.resblocks.%d.ln_1.weight", p, i);
            REQ1(L->layer_norm1_b, W, "%stransformer.resblocks.%d.ln_1.bias", p, i);
            REQ2(L->in_proj_w, 3 * W, W, "%stransformer.resblocks.%d.attn.in_proj_weight", p, i);
            REQ1(L->in_proj_b, 3 * W, "%stransformer.resblocks.%d.attn.in_proj_bias", p, i);
            REQ2(L->out_proj_w, W, W, "%stransformer.resblocks.%d.attn.out_proj.weight", p, i);
            REQ1(L->out_proj_b, W, "%stransformer.resblocks.%d.attn.out_proj.bias", p, i);
            REQ1(L->layer_norm2_w, W, "%stransformer.resblocks.%d.ln_2.weight", p, i);
            REQ1(L->layer_norm2_b, W, "%stransformer.resblocks.%d.ln_2.bias", p, i);
            REQ2(L->fc1_w, F, W, "%stransformer.resblocks.%d.mlp.c_fc.weight", p, i);
            REQ1(L->fc1_b, F, "%stransformer.resblocks.%d.mlp.c_fc.bias", p, i);
            REQ2(L->fc2_w, W, F, "%stransformer.resblocks.%d.mlp.c_proj.weight", p, i);
            REQ1(L->fc2_b, W, "%stransformer.resblocks.%d.mlp.c_proj.bias", p, i);
        } else {
            const char *p = prefix;
            REQ1(L->layer_norm1_w, W, "%sencoder.layers.%d.layer_norm1.weight", p, i);
            REQ1(L->layer_norm1_b, W, "%sencoder.layers.%d.layer_norm1.bias", p, i);
            REQ2(L->q_w, W, W, "%sencoder.layers.%d.self_attn.q_proj.weight", p, i);
            REQ1(L->q_b, W, "%sencoder.layers.%d.self_attn.q_proj.bias", p, i);
            REQ2(L->k_w, W, W, "%sencoder.layers.%d.self_attn.k_proj.weight", p, i);
            REQ1(L->k_b, W, "%sencoder.layers.%d.self_attn.k_proj.bias", p, i);
            REQ2(L->v_w, W, W, "%sencoder.layers.%d.self_attn.v_proj.weight", p, i);
            REQ1(L->v_b, W, "%sencoder.layers.%d.self_attn.v_proj.bias", p, i);
            REQ2(L->out_proj_w, W, W, "%sencoder.layers.%d.self_attn.out_proj.weight", p, i);
            REQ1(L->out_proj_b, W, "%sencoder.layers.%d.self_attn.out_proj.bias", p, i);
            REQ1(L->layer_norm2_w, W, "%sencoder.layers.%d.layer_norm2.weight", p, i);
            REQ1(L->layer_norm2_b, W, "%sencoder.layers.%d.layer_norm2.bias", p, i);
            REQ2(L->fc1_w, F, W, "%sencoder.layers.%d.mlp.fc1.weight", p, i);
            REQ1(L->fc1_b, F, "%sencoder.layers.%d.mlp.fc1.bias", p, i);
            REQ2(L->fc2_w, W, F, "%sencoder.layers.%d.mlp.fc2.weight", p, i);
            REQ1(L->fc2_b, W, "%sencoder.layers.%d.mlp.fc2.bias", p, i);
        }
    }
    return c;

fail:
    te_clip_free(c);
    return NULL;
}

void te_clip_free(te_clip *c)
{
    if (!c) return;
    cm_free(c->layer);
    cm_free(c);
}

const te_clip_config *te_clip_get_config(const te_clip *c) { return &c->cfg; }

/* ------------------------------------------------------------------------
 * Forward
 * ---------------------------------------------------------------------- */

/* One pre-LN block in place on x (M, W); scratch h (M, W), qkv (M, 3W),
 * mlp (M, F). */
static void clip_block(const te_clip *c, const clip_layer *L, int B, float *x, float *h, float *qkv,
                       float *mlp)
{
    const te_clip_config *g = &c->cfg;
    const int64_t W = g->width, M = (int64_t)B * TE_CTX;

    cm_layer_norm(x, h, M, g->width, g->eps, L->layer_norm1_w, L->layer_norm1_b);
    if (L->in_proj_w) {
        cm_linear(h, W, M, W, L->in_proj_w, L->in_proj_b, CM_ACT_NONE, NULL, qkv, 3 * W);
    } else {
        cm_linear(h, W, M, W, L->q_w, L->q_b, CM_ACT_NONE, NULL, qkv, 3 * W);
        cm_linear(h, W, M, W, L->k_w, L->k_b, CM_ACT_NONE, NULL, qkv + W, 3 * W);
        cm_linear(h, W, M, W, L->v_w, L->v_b, CM_ACT_NONE, NULL, qkv + 2 * W, 3 * W);
    }
    int hd = g->width / g->heads;
    cm_attn_params ap = {
        .B = B, .heads = g->heads, .Tq = TE_CTX, .Tk = TE_CTX, .hd = hd,
        .q_stride = 3 * W, .k_stride = 3 * W, .v_stride = 3 * W, .o_stride = W,
        .q_bstride = TE_CTX * 3 * W, .k_bstride = TE_CTX * 3 * W, .v_bstride = TE_CTX * 3 * W,
        .o_bstride = TE_CTX * W,
        .scale = 1.0f / sqrtf((float)hd),
        .causal = 1,
    };
    cm_attention(qkv, qkv + W, qkv + 2 * W, h, &ap);
    cm_linear(h, W, M, W, L->out_proj_w, L->out_proj_b, CM_ACT_NONE, x, x, W);

    cm_layer_norm(x, h, M, g->width, g->eps, L->layer_norm2_w, L->layer_norm2_b);
    cm_linear(h, W, M, W, L->fc1_w, L->fc1_b, g->act, NULL, mlp, g->mlp);
    cm_linear(mlp, g->mlp, M, g->mlp, L->fc2_w, L->fc2_b, CM_ACT_NONE, x, x, W);
}

/* Pooled rows: final LN of x at argmax(ids) (first occurrence), then the
 * projection (x @ P, P stored [W, P]) when asked. */
static void clip_pool(const te_clip *c, const int32_t *ids, int B, const float *x, int project,
                      float *pooled, float *row, float *prow)
{
    const te_clip_config *g = &c->cfg;
    const int W = g->width;
    for (int b = 0; b < B; b++) {
        const int32_t *id = ids + (int64_t)b * TE_CTX;
        int at = 0;
        for (int t = 1; t < TE_CTX; t++)
            if (id[t] > id[at]) at = t;
        float *dst = project ? row : pooled + (int64_t)b * W;
        cm_layer_norm(x + ((int64_t)b * TE_CTX + at) * W, dst, 1, W, g->eps, c->final_ln_w, c->final_ln_b);
        if (!project) continue;
        float *out = pooled + (int64_t)b * g->proj;
        if (c->proj_linear) {
            cm_linear(row, W, 1, W, c->text_projection, NULL, CM_ACT_NONE, NULL, out, g->proj);
            continue;
        }
        for (int p = 0; p < g->proj; p++) out[p] = 0;
        for (int k = 0; k < W; k++) {
            cm_wview_to_f32(c->text_projection, (int64_t)k * g->proj, g->proj, prow);
            float xv = row[k];
            for (int p = 0; p < g->proj; p++) out[p] += xv * prow[p];
        }
    }
}

cm_status te_clip_encode(const te_clip *c, const int32_t *ids, int B, const te_clip_run *r,
                         cm_error *err)
{
    const te_clip_config *g = &c->cfg;
    if (B <= 0)
        return cm_error_set(err, CM_ERR_USAGE, "text encoder: batch of %d windows (expected >= 1)", B);
    if (r->out && (r->layer < 0 || r->layer > g->layers))
        return cm_error_set(err, CM_ERR_USAGE, "text encoder: hidden state %d asked, the tower has 0..%d",
                            r->layer, g->layers);
    if (r->pooled && (r->pool_layer < 1 || r->pool_layer > g->layers))
        return cm_error_set(err, CM_ERR_USAGE, "text encoder: pooled from layer %d asked, the tower has 1..%d",
                            r->pool_layer, g->layers);
    if (r->pooled && r->project && !c->text_projection)
        return cm_error_set(err, CM_ERR_USAGE, "text encoder: projected pooled output asked, the model has no text_projection");
    for (int64_t i = 0; i < (int64_t)B * TE_CTX; i++)
        if (ids[i] < 0 || ids[i] >= g->vocab)
            return cm_error_set(err, CM_ERR_USAGE, "text encoder: token id %d at position %lld outside the vocabulary [0, %d)",
                                (int)ids[i], (long long)(i % TE_CTX), g->vocab);

    const int64_t W = g->width, M = (int64_t)B * TE_CTX;
    const int64_t P = g->proj > 0 ? g->proj : 1;
    /* x | h | qkv | mlp | pooled row | projection row */
    size_t nf = 0, n;
    if (!cm_mul_size((size_t)M, (size_t)(5 * W + g->mlp), &n)) goto overflow;
    nf = n + (size_t)W + (size_t)P;
    size_t bytes;
    if (!cm_mul_size(nf, sizeof(float), &bytes)) goto overflow;
    float *buf = cm_alloc(bytes, "text encoder activations", err);
    if (!buf) return err ? err->status : CM_ERR_NOMEM;
    float *x = buf, *h = x + M * W, *qkv = h + M * W, *mlp = qkv + M * 3 * W;
    float *row = mlp + M * g->mlp, *prow = row + W;

    for (int b = 0; b < B; b++)
        for (int t = 0; t < TE_CTX; t++) {
            float *xr = x + ((int64_t)b * TE_CTX + t) * W;
            cm_wview_to_f32(c->token_embedding, (int64_t)ids[(int64_t)b * TE_CTX + t] * W, W, xr);
            cm_wview_to_f32(c->position_embedding, (int64_t)t * W, W, h);
            for (int64_t k = 0; k < W; k++) xr[k] += h[k];
        }

    int last = r->out ? r->layer : 0;
    if (r->pooled && r->pool_layer > last) last = r->pool_layer;
    for (int i = 0;; i++) {
        /* x holds hidden_states[i] here */
        if (r->out && i == r->layer) {
            if (r->final_ln)
                cm_layer_norm(x, r->out, M, g->width, g->eps, c->final_ln_w, c->final_ln_b);
            else
                memcpy(r->out, x, (size_t)(M * W) * sizeof(float));
        }
        if (r->pooled && i == r->pool_layer) clip_pool(c, ids, B, x, r->project, r->pooled, row, prow);
        if (i >= last) break;
        if (cm_interrupted) {
            cm_free(buf);
            return cm_error_set(err, CM_ERR_INTERRUPTED, "text encoder: interrupted");
        }
        clip_block(c, &c->layer[i], B, x, h, qkv, mlp);
        wt_model_drop(c->m);
    }
    cm_free(buf);
    return CM_OK;

overflow:
    return cm_error_set(err, CM_ERR_NOMEM, "text encoder: activation size overflows (batch %d)", B);
}
