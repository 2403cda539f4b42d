/* textenc_internal.h — interfaces shared inside textenc/ only. */
#ifndef STIPPLE_TEXTENC_INTERNAL_H
#define STIPPLE_TEXTENC_INTERNAL_H

#include "textenc.h"

/* ------------------------------------------------------------------------
 * prompt.c — A1111 prompt syntax into 77-token windows with weights.
 *
 * A prompt is parsed as AUTOMATIC1111 does ((x) x1.1, [x] /1.1, (x:w),
 * escapes, BREAK), tokenized, and cut into chunks of 75 tokens (a boundary
 * within 20 tokens after a comma moves back to the comma). Each chunk is a
 * 77-token window: BOS, 75 tokens (padded with pad_id), EOS... exactly as
 * A1111 lays them out, with a weight per position (1.0 for BOS/EOS/pad).
 * ---------------------------------------------------------------------- */

typedef struct {
    int nchunks;
    int32_t *ids;  /* nchunks * 77 */
    float *weights; /* nchunks * 77 */
} te_chunks;

cm_status te_prompt_chunks(const te_tokenizer *t, const char *prompt, int32_t pad_id,
                           te_chunks *out, cm_error *err);
/* Append empty chunks (as A1111 makes for an empty prompt) until nchunks. */
cm_status te_chunks_pad_to(te_chunks *c, int nchunks, int32_t pad_id, cm_error *err);
void te_chunks_release(te_chunks *c);

/* te_prompt_chunks with te_tokenize_ex flags (TE_TOK_SD2_BANG for the
 * diffusers behaviour of SD2 / SDXL encoder 2). te_prompt_chunks = flags 0,
 * which is what A1111 does for every encoder. */
cm_status te_prompt_chunks_ex(const te_tokenizer *t, const char *prompt, int32_t pad_id,
                              unsigned flags, te_chunks *out, cm_error *err);

/* The parse alone (A1111 parse_prompt_attention): (text, weight) parts with
 * equal neighbours merged, BREAK as ("BREAK", -1); an empty prompt gives
 * ("", 1.0). Weights are doubles as in Python. Free with
 * te_prompt_parts_free. */
typedef struct {
    char *text;
    double weight;
} te_prompt_part;
cm_status te_prompt_parse(const char *prompt, te_prompt_part **parts, int *n, cm_error *err);
void te_prompt_parts_free(te_prompt_part *parts, int n);

/* tokenizer.c: Python's str.isspace() and re's \w (Unicode letter, number
 * or '_'), for the prompt parser's BREAK rule. */
int te_is_space_py(uint32_t c);
int te_is_word_py(uint32_t c);

/* ------------------------------------------------------------------------
 * clip.c — one CLIP text transformer (HF naming or OpenCLIP naming).
 *
 * Pre-LN transformer over 77-token windows: token + position embeddings,
 * L layers of [LN1, causal self-attention, residual, LN2, MLP, residual],
 * final LN. Padding is not masked. hidden_states[0] is the embedding
 * output, hidden_states[k] the output of layer k (before the final LN).
 * ---------------------------------------------------------------------- */

typedef struct te_clip te_clip;

typedef struct {
    int width;  /* hidden_size */
    int layers; /* layers in the tower (all of the file's, or the config's) */
    int heads;
    int mlp;    /* intermediate_size */
    int vocab;
    int npos;   /* max_position_embeddings (>= 77) */
    int proj;   /* text_projection output width, 0 when absent */
    int openclip; /* 1: OpenCLIP names (fused in_proj), 0: HF names */
    cm_act act;
    float eps;
} te_clip_config;

/* prefix: the tower's canonical name prefix ending in '.', e.g.
 * "cond_stage_model.transformer.text_model." or "cond_stage_model.model.";
 * section: the config section ("text_encoder", "text_encoder_2") or NULL.
 * Fields missing from the config are derived from tensor shapes. Every
 * tensor is checked (presence and shape) here, not at encode time. */
te_clip *te_clip_create(const wt_model *m, const char *prefix, const char *section, cm_error *err);
void te_clip_free(te_clip *c);
const te_clip_config *te_clip_get_config(const te_clip *c);

/* What one te_clip_encode call produces. */
typedef struct {
    int layer;      /* hidden_states[layer] goes to out (0..layers) */
    int final_ln;   /* apply the final LN to it */
    float *out;     /* (B, 77, width), or NULL */
    int pool_layer; /* pooled from the final LN of hidden_states[pool_layer] (1..layers) */
    int project;    /* pooled through text_projection (proj wide) */
    float *pooled;  /* (B, width or proj) at the first EOS = argmax(ids), or NULL */
} te_clip_run;

/* ids (B, 77), each in [0, vocab). */
cm_status te_clip_encode(const te_clip *c, const int32_t *ids, int B, const te_clip_run *r,
                         cm_error *err);


/* ------------------------------------------------------------------------
 * t5.c — T5 tokenizer (SentencePiece, built-in spiece.model) and the T5
 * v1.1 encoder stack of SD3 (text_encoder_3).
 * ---------------------------------------------------------------------- */

#define TE_T5_EOS 1
#define TE_T5_PAD 0
#define TE_T5_MAX_LEN 256 /* SD3's default max_sequence_length */

typedef struct te_t5_tokenizer te_t5_tokenizer;
te_t5_tokenizer *te_t5_tokenizer_create(cm_error *err);
void te_t5_tokenizer_free(te_t5_tokenizer *t);
/* ids (max_len): the pieces of text (at most max_len - 1), EOS, then pad 0
 * up to max_len. *n (may be NULL) = pieces + 1. */
cm_status te_t5_tokenize(const te_t5_tokenizer *t, const char *text, int max_len, int32_t *ids,
                         int *n, cm_error *err);

typedef struct te_t5 te_t5;
typedef struct {
    int d_model, layers, heads, d_kv, d_ff, vocab;
    int buckets, max_distance; /* relative attention */
    float eps;
} te_t5_config;

/* prefix: canonical prefix of the tower ending in '.', e.g.
 * "text_encoders.t5xxl.transformer."; section: "text_encoder_3" or NULL
 * (fields then come from the shapes). Every tensor is checked here. */
te_t5 *te_t5_create(const wt_model *m, const char *prefix, const char *section, cm_error *err);
void te_t5_free(te_t5 *t);
const te_t5_config *te_t5_get_config(const te_t5 *t);
/* ids (B, T) -> out (B, T, d_model): last_hidden_state (final RMS norm
 * applied). No attention mask (what SD3 does). */
cm_status te_t5_encode(const te_t5 *t, const int32_t *ids, int B, int T, float *out, cm_error *err);
/* The relative-position bucket of rel = key - query (bidirectional). */
int te_t5_bucket(int rel, int num_buckets, int max_distance);


/* ------------------------------------------------------------------------
 * sd3.c — SD3 conditioning: CLIP-L + CLIP-G penultimate states and T5
 * (or zeros) as one context, pooled = [clip_l pooled, clip_g projected].
 * ---------------------------------------------------------------------- */

typedef struct te_sd3 te_sd3;
te_sd3 *te_sd3_create(const wt_model *m, cm_error *err);
void te_sd3_free(te_sd3 *s);
/* use_t5 0: zeros instead of T5; max_length: T5 tokens (default 256). */
cm_status te_sd3_set_t5(te_sd3 *s, int use_t5, int max_length, cm_error *err);
int te_sd3_has_t5(const te_sd3 *s);
/* cond / uncond: context (1, 77 + max_length, joint_attention_dim),
 * pooled (1, clip_l width + clip_g projection). */
cm_status te_sd3_encode_pair(te_sd3 *s, const te_tokenizer *tok, const char *prompt,
                             const char *negative, int clip_skip, te_cond *cond, te_cond *uncond,
                             cm_error *err);

/* Tensor lookups inside a *_create function that has `m` (the model),
 * `err` and a `fail:` label: a missing tensor or a wrong shape is an
 * error naming the tensor. */
#define REQ1(dst, n0, ...)                                                                \
    do {                                                                                  \
        int64_t s_[1] = {(n0)};                                                           \
        if (!((dst) = wt_model_requiref(m, err, 1, s_, __VA_ARGS__))) goto fail;         \
    } while (0)
#define REQ2(dst, n0, n1, ...)                                                            \
    do {                                                                                  \
        int64_t s_[2] = {(n0), (n1)};                                                     \
        if (!((dst) = wt_model_requiref(m, err, 2, s_, __VA_ARGS__))) goto fail;         \
    } while (0)

#endif
