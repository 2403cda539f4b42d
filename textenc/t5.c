/* t5.c — the T5 text encoder of SD3: the SentencePiece tokenizer (through
 * spm_shim.h, model built into the binary by spiece_data.S) and the T5 v1.1
 * encoder stack.
 *
 * Tokenizer: mirrors transformers' slow T5Tokenizer (legacy=True,
 * extra_ids=100) as StableDiffusion3Pipeline calls it: the sentencepiece
 * pieces of the text, EOS (1) appended, truncated to max_len - 1 pieces +
 * EOS, padded with 0 to max_len. Literal special-token strings ("</s>",
 * "<extra_id_N>") in a prompt are NOT matched as specials here (the
 * reference would); they are encoded as text.
 *
 * Encoder: mirrors transformers' T5EncoderModel (modeling_t5.py, T5 v1.1
 * config: feed_forward_proj "gated-gelu", no biases anywhere):
 *   x = shared[ids] (no scaling)
 *   per block: x += o(attn(rms(x)))   attention WITHOUT 1/sqrt(d) scaling,
 *                                     plus a relative position bias
 *              x += wo(gelu_tanh(wi_0(rms(x))) * wi_1(rms(x)))
 *   out = final_layer_norm(x)
 * The position bias (heads, Tq, Tk) comes from block 0's
 * relative_attention_bias (buckets, heads) and is shared by all blocks.
 * Bidirectional buckets: half the buckets for k > q; within a half, exact
 * distances below max_exact = half/2, logarithmic buckets up to
 * max_distance beyond, computed in float32 as torch does. No attention
 * mask: SD3 feeds the padded sequence without one.
 *
 * Tensor names under the tower prefix (HF naming):
 *   shared.weight (or encoder.embed_tokens.weight)      (vocab, d_model)
 *   encoder.block.i.layer.0.SelfAttention.{q,k,v}.weight (H*d_kv, d_model)
 *   encoder.block.i.layer.0.SelfAttention.o.weight       (d_model, H*d_kv)
 *   encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
 *   encoder.block.i.layer.0.layer_norm.weight, .layer.1.layer_norm.weight
 *   encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1}.weight (d_ff, d_model)
 *   encoder.block.i.layer.1.DenseReluDense.wo.weight     (d_model, d_ff)
 *   encoder.final_layer_norm.weight
 * Layout: activations float32 token-major (B*T, d_model).
 */
#include "textenc_internal.h"
#include "spm_shim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* spiece_data.S */
extern const unsigned char te_spiece_model[];
extern const unsigned char te_spiece_model_end[];

/* ------------------------------------------------------------------------
 * Tokenizer
 * ---------------------------------------------------------------------- */

struct te_t5_tokenizer {
    te_spm *spm;
};

te_t5_tokenizer *te_t5_tokenizer_create(cm_error *err)
{
    te_t5_tokenizer *t = cm_calloc(sizeof *t, "T5 tokenizer", err);
    if (!t) return NULL;
    char msg[512] = "";
    size_t n = (size_t)(te_spiece_model_end - te_spiece_model);
    t->spm = te_spm_create(te_spiece_model, n, msg, sizeof msg);
    if (!t->spm) {
        cm_error_set(err, CM_ERR_FORMAT, "built-in T5 spiece.model (%zu bytes): %s", n, msg);
        cm_free(t);
        return NULL;
    }
    return t;
}

void te_t5_tokenizer_free(te_t5_tokenizer *t)
{
    if (!t) return;
    te_spm_free(t->spm);
    cm_free(t);
}

cm_status te_t5_tokenize(const te_t5_tokenizer *t, const char *text, int max_len, int32_t *ids,
                         int *n, cm_error *err)
{
    if (max_len < 1)
        return cm_error_set(err, CM_ERR_USAGE, "T5 max sequence length %d (expected >= 1)", max_len);
    if (!text) text = "";
    char msg[512] = "";
    int64_t got = te_spm_encode(t->spm, text, strlen(text), ids, max_len - 1, msg, sizeof msg);
    if (got < 0) return cm_error_set(err, CM_ERR_FORMAT, "%s", msg);
    int k = got < max_len - 1 ? (int)got : max_len - 1;
    ids[k++] = TE_T5_EOS;
    if (n) *n = k;
    for (int i = k; i < max_len; i++) ids[i] = TE_T5_PAD;
    return CM_OK;
}

/* ------------------------------------------------------------------------
 * Encoder: construction
 * ---------------------------------------------------------------------- */

typedef struct {
    const cm_wview *ln0, *q, *k, *v, *o; /* layer.0: self-attention */
    const cm_wview *ln1, *wi_0, *wi_1, *wo; /* layer.1: gated feed-forward */
} t5_block;

struct te_t5 {
    te_t5_config cfg;
    const cm_wview *shared;   /* (vocab, d_model) */
    const cm_wview *rel_bias; /* (buckets, heads) */
    const cm_wview *final_ln;
    t5_block *block;
    const wt_model *m; /* each block's mapped weights go back after it ran (wt_model_drop) */
};

te_t5 *te_t5_create(const wt_model *m, const char *prefix, const char *section, cm_error *err)
{
    te_t5 *t = cm_calloc(sizeof *t, "T5 encoder", err);
    if (!t) return NULL;
    t->m = m;
    te_t5_config *g = &t->cfg;
    const cJSON *sec = section ? wt_model_section(m, section) : NULL;

    const cm_wview *emb = wt_model_getf(m, "%sshared.weight", prefix);
    const char *emb_name = "shared.weight";
    if (!emb) {
        emb = wt_model_getf(m, "%sencoder.embed_tokens.weight", prefix);
        emb_name = "encoder.embed_tokens.weight";
    }
    if (!emb || emb->ndim != 2) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: no T5 encoder: tensor %sshared.weight missing or not 2-D",
                     wt_model_path(m), prefix);
        goto fail;
    }
    const cm_wview *rb = wt_model_getf(m, "%sencoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", prefix);
    const cm_wview *q0 = wt_model_getf(m, "%sencoder.block.0.layer.0.SelfAttention.q.weight", prefix);
    const cm_wview *wi0 = wt_model_getf(m, "%sencoder.block.0.layer.1.DenseReluDense.wi_0.weight", prefix);
    int file_layers = 0;
    while (file_layers < 4096 && wt_model_getf(m, "%sencoder.block.%d.layer.0.layer_norm.weight", prefix, file_layers))
        file_layers++;

    g->d_model = wt_cfg_int(sec, "d_model", (int)emb->shape[1]);
    g->vocab = (int)emb->shape[0];
    g->layers = wt_cfg_int(sec, "num_layers", file_layers);
    g->heads = wt_cfg_int(sec, "num_heads", rb && rb->ndim == 2 ? (int)rb->shape[1] : 64);
    int inner = q0 && q0->ndim == 2 ? (int)q0->shape[0] : g->d_model;
    g->d_kv = wt_cfg_int(sec, "d_kv", g->heads > 0 ? inner / g->heads : 0);
    g->d_ff = wt_cfg_int(sec, "d_ff", wi0 && wi0->ndim == 2 ? (int)wi0->shape[0] : 4 * g->d_model);
    g->buckets = wt_cfg_int(sec, "relative_attention_num_buckets", rb && rb->ndim == 2 ? (int)rb->shape[0] : 32);
    g->max_distance = wt_cfg_int(sec, "relative_attention_max_distance", 128);
    g->eps = (float)wt_cfg_num(sec, "layer_norm_epsilon", 1e-6);
    const char *ff = wt_cfg_str(sec, "feed_forward_proj", "gated-gelu");
    if (strcmp(ff, "gated-gelu") != 0) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: T5 encoder %s: feed_forward_proj \"%s\" (only gated-gelu, T5 v1.1)",
                     wt_model_path(m), prefix, ff);
        goto fail;
    }
    if (g->d_model <= 0 || g->heads <= 0 || g->d_kv <= 0 || g->d_ff <= 0 || g->layers <= 0 ||
        g->buckets < 4 || g->max_distance <= g->buckets / 4 || !(g->eps > 0)) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: T5 encoder %s: bad architecture (d_model %d, heads %d, d_kv %d, d_ff %d, layers %d, "
                     "buckets %d, max distance %d)",
                     wt_model_path(m), prefix, g->d_model, g->heads, g->d_kv, g->d_ff, g->layers, g->buckets,
                     g->max_distance);
        goto fail;
    }
    if (g->layers > file_layers) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: T5 encoder %s: config wants %d layers, the file has %d",
                     wt_model_path(m), prefix, g->layers, file_layers);
        goto fail;
    }

    const int64_t D = g->d_model, I = (int64_t)g->heads * g->d_kv, F = g->d_ff;
    REQ2(t->shared, g->vocab, D, "%s%s", prefix, emb_name);
    REQ2(t->rel_bias, g->buckets, g->heads,
         "%sencoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", prefix);
    REQ1(t->final_ln, D, "%sencoder.final_layer_norm.weight", prefix);
    t->block = cm_calloc(sizeof(t5_block) * (size_t)g->layers, "T5 blocks", err);
    if (!t->block) goto fail;
    for (int i = 0; i < g->layers; i++) {
        t5_block *L = &t->block[i];
        const char *p = prefix;
        REQ1(L->ln0, D, "%sencoder.block.%d.layer.0.layer_norm.weight", p, i);
        REQ2(L->q, I, D, "%sencoder.block.%d.layer.0.SelfAttention.q.weight", p, i);
        REQ2(L->k, I, D, "%sencoder.block.%d.layer.0.SelfAttention.k.weight", p, i);
        REQ2(L->v, I, D, "%sencoder.block.%d.layer.0.SelfAttention.v.weight", p, i);
        REQ2(L->o, D, I, "%sencoder.block.%d.layer.0.SelfAttention.o.weight", p, i);
        REQ1(L->ln1, D, "%sencoder.block.%d.layer.1.layer_norm.weight", p, i);
        REQ2(L->wi_0, F, D, "%sencoder.block.%d.layer.1.DenseReluDense.wi_0.weight", p, i);
        REQ2(L->wi_1, F, D, "%sencoder.block.%d.layer.1.DenseReluDense.wi_1.weight", p, i);
        REQ2(L->wo, D, F, "%sencoder.block.%d.layer.1.DenseReluDense.wo.weight", p, i);
    }
    return t;

fail:
    te_t5_free(t);
    return NULL;
}

void te_t5_free(te_t5 *t)
{
    if (!t) return;
    cm_free(t->block);
    cm_free(t);
}

const te_t5_config *te_t5_get_config(const te_t5 *t) { return &t->cfg; }

/* ------------------------------------------------------------------------
 * Encoder: forward
 * ---------------------------------------------------------------------- */

/* transformers' _relative_position_bucket (bidirectional) for
 * rel = key position - query position, float32 as torch computes it. */
int te_t5_bucket(int rel, int num_buckets, int max_distance)
{
    int half = num_buckets / 2, bucket = 0;
    if (rel > 0) bucket += half;
    int a = rel < 0 ? -rel : rel;
    int max_exact = half / 2;
    if (a < max_exact) return bucket + a;
    float l = logf((float)a / (float)max_exact);
    float d = (float)log((double)max_distance / (double)max_exact);
    float v = l / d * (float)(half - max_exact);
    long large = max_exact + (long)v;
    if (large > half - 1) large = half - 1;
    return bucket + (int)large;
}

/* Self-attention of one block with the shared position bias:
 * qkv (B*T, 3I) -> o (B*T, I); bias (heads, T, T). One output row per
 * (b, head, query) on one thread. */
static void t5_attention(const te_t5_config *g, int B, int T, const float *qkv, const float *bias,
                         float *o, float *scratch)
{
    const int H = g->heads, dk = g->d_kv;
    const int64_t I = (int64_t)H * dk, ld = 3 * I;
    const int64_t rows = (int64_t)B * H * T;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t r = 0; r < rows; r++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *s = scratch + (int64_t)tid * T;
        int b = (int)(r / ((int64_t)H * T)), h = (int)(r / T % H), q = (int)(r % T);
        const float *qr = qkv + ((int64_t)b * T + q) * ld + (int64_t)h * dk;
        const float *brow = bias + ((int64_t)h * T + q) * T;
        float mx = -INFINITY;
        for (int k = 0; k < T; k++) {
            const float *kr = qkv + ((int64_t)b * T + k) * ld + I + (int64_t)h * dk;
            float acc = 0;
            for (int c = 0; c < dk; c++) acc += qr[c] * kr[c];
            s[k] = acc + brow[k];
            if (s[k] > mx) mx = s[k];
        }
        float sum = 0;
        for (int k = 0; k < T; k++) {
            s[k] = expf(s[k] - mx);
            sum += s[k];
        }
        float inv = 1.0f / sum;
        float *orow = o + ((int64_t)b * T + q) * I + (int64_t)h * dk;
        for (int c = 0; c < dk; c++) orow[c] = 0;
        for (int k = 0; k < T; k++) {
            const float *vr = qkv + ((int64_t)b * T + k) * ld + 2 * I + (int64_t)h * dk;
            float p = s[k] * inv;
            for (int c = 0; c < dk; c++) orow[c] += p * vr[c];
        }
    }
}

cm_status te_t5_encode(const te_t5 *t, const int32_t *ids, int B, int T, float *out, cm_error *err)
{
    const te_t5_config *g = &t->cfg;
    if (B <= 0 || T <= 0)
        return cm_error_set(err, CM_ERR_USAGE, "T5 encoder: batch %d x %d tokens (expected >= 1 each)", B, T);
    for (int64_t i = 0; i < (int64_t)B * T; i++)
        if (ids[i] < 0 || ids[i] >= g->vocab)
            return cm_error_set(err, CM_ERR_USAGE, "T5 encoder: token id %d at position %lld outside the vocabulary [0, %d)",
                                (int)ids[i], (long long)(i % T), g->vocab);

    const int64_t D = g->d_model, I = (int64_t)g->heads * g->d_kv, F = g->d_ff, M = (int64_t)B * T;
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
#endif
    /* x | h | qkv | attn out | ff a | ff b | bias | softmax rows */
    size_t per_tok = (size_t)(2 * D + 3 * I + I + 2 * F), n, nb;
    if (!cm_mul_size((size_t)M, per_tok, &n) || !cm_mul_size((size_t)g->heads * (size_t)T, (size_t)T, &nb))
        return cm_error_set(err, CM_ERR_NOMEM, "T5 encoder: activation size overflows (%d x %d tokens)", B, T);
    size_t total = n + nb + (size_t)nt * (size_t)T, bytes;
    if (!cm_mul_size(total, sizeof(float), &bytes))
        return cm_error_set(err, CM_ERR_NOMEM, "T5 encoder: activation size overflows (%d x %d tokens)", B, T);
    float *buf = cm_alloc(bytes, "T5 encoder activations", err);
    if (!buf) return err ? err->status : CM_ERR_NOMEM;
    float *x = buf, *h = x + M * D, *qkv = h + M * D, *ao = qkv + M * 3 * I, *fa = ao + M * I;
    float *fb = fa + M * F, *bias = fb + M * F, *scratch = bias + nb;

    for (int64_t i = 0; i < M; i++) cm_wview_to_f32(t->shared, (int64_t)ids[i] * D, D, x + i * D);

    /* position bias (heads, T, T), shared by every block */
    for (int q = 0; q < T; q++)
        for (int k = 0; k < T; k++) {
            int bk = te_t5_bucket(k - q, g->buckets, g->max_distance);
            for (int hh = 0; hh < g->heads; hh++)
                bias[((int64_t)hh * T + q) * T + k] = cm_wview_get(t->rel_bias, (int64_t)bk * g->heads + hh);
        }

    for (int i = 0; i < g->layers; i++) {
        wt_model_drop(t->m);
        if (cm_interrupted) {
            cm_free(buf);
            return cm_error_set(err, CM_ERR_INTERRUPTED, "T5 encoder: interrupted");
        }
        const t5_block *L = &t->block[i];
        cm_rms_norm(x, h, M, g->d_model, g->eps, L->ln0);
        cm_linear(h, D, M, D, L->q, NULL, CM_ACT_NONE, NULL, qkv, 3 * I);
        cm_linear(h, D, M, D, L->k, NULL, CM_ACT_NONE, NULL, qkv + I, 3 * I);
        cm_linear(h, D, M, D, L->v, NULL, CM_ACT_NONE, NULL, qkv + 2 * I, 3 * I);
        t5_attention(g, B, T, qkv, bias, ao, scratch);
        cm_linear(ao, I, M, I, L->o, NULL, CM_ACT_NONE, x, x, D);

        cm_rms_norm(x, h, M, g->d_model, g->eps, L->ln1);
        cm_linear(h, D, M, D, L->wi_0, NULL, CM_ACT_GELU_TANH, NULL, fa, F);
        cm_linear(h, D, M, D, L->wi_1, NULL, CM_ACT_NONE, NULL, fb, F);
        for (int64_t j = 0; j < M * F; j++) fa[j] *= fb[j];
        cm_linear(fa, F, M, F, L->wo, NULL, CM_ACT_NONE, x, x, D);
    }
    cm_rms_norm(x, out, M, g->d_model, g->eps, t->final_ln);
    cm_free(buf);
    return CM_OK;
}
