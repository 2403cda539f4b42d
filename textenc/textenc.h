/* textenc.h — text conditioning: the CLIP BPE tokenizer, A1111 prompt
 * syntax (weights, BREAK, 75-token chunks), the CLIP text transformers of
 * SD1 / SD2 / SDXL (later T5 through SentencePiece).
 *
 * Tensors crossing this interface are float32, token-major: a context is
 * (B, T, C) with T a multiple of 77 (one 77-token window per chunk).
 */
#ifndef STIPPLE_TEXTENC_H
#define STIPPLE_TEXTENC_H

#include "common.h"
#include "weights.h"

#define TE_BOS 49406
#define TE_EOS 49407
#define TE_CTX 77

/* ------------------------------------------------------------------------
 * CLIP BPE tokenizer (vocabulary built into the binary)
 * ---------------------------------------------------------------------- */

typedef struct te_tokenizer te_tokenizer;

te_tokenizer *te_tokenizer_create(cm_error *err);
void te_tokenizer_free(te_tokenizer *t);
/* BPE ids of text, without BOS/EOS. *ids is cm_alloc'd. */
cm_status te_tokenize(const te_tokenizer *t, const char *text, int32_t **ids, int *n, cm_error *err);
/* The BPE string of a token id ("cat</w>"), or NULL. */
const char *te_token_str(const te_tokenizer *t, int32_t id);
/* te_tokenize with flags. TE_TOK_SD2_BANG: every literal "!" of the raw
 * prompt becomes id 0 and is never merged ("!!!" -> 0 0 0), the text between
 * them tokenized separately: what transformers' CLIPTokenizer configured for
 * SD2 / SDXL encoder 2 / SD3 clip_g does ("!" is its pad token, hence a
 * special token), so what diffusers feeds those encoders (golden
 * hf_sd2_77). Without it: openai CLIP / OpenCLIP / A1111 ids. */
#define TE_TOK_SD2_BANG 1u
cm_status te_tokenize_ex(const te_tokenizer *t, const char *text, unsigned flags, int32_t **ids,
                         int *n, cm_error *err);

/* ------------------------------------------------------------------------
 * Text conditioning of a model
 * ---------------------------------------------------------------------- */

typedef struct te_encoder te_encoder;

/* Conditioning the denoiser sees for one prompt. */
typedef struct {
    cm_tensor context; /* (1, T, C): T = 77 * chunks */
    cm_tensor pooled;  /* SDXL: (1, P) pooled bigG embedding; else empty */
} te_cond;

te_encoder *te_encoder_create(const wt_model *m, cm_error *err);
void te_encoder_free(te_encoder *e);
const te_tokenizer *te_encoder_tokenizer(const te_encoder *e);

/* Encode prompt and negative prompt (A1111 syntax) into cond / uncond with
 * the same number of chunks. clip_skip as A1111 (1 = last layer; 0 = the
 * family's default). */
cm_status te_encode_pair(te_encoder *e, const char *prompt, const char *negative, int clip_skip,
                         te_cond *cond, te_cond *uncond, cm_error *err);
void te_cond_release(te_cond *c);


/* SD3 (family sd3) only: use_t5 0 replaces the T5 rows of the context by
 * zeros (--no-t5; also what happens when the model has no T5), max_length
 * is the T5 token count (--t5-max-length, default 256). The SD3 context is
 * (1, 77 + max_length, 4096) = [CLIP-L|CLIP-G penultimate states
 * zero-padded to 4096 ; T5 states], pooled (1, 2048) = [CLIP-L pooled,
 * CLIP-G projected pooled]. CM_ERR_USAGE for other families or a length
 * outside 1..4096. */
cm_status te_encoder_set_t5(te_encoder *e, int use_t5, int max_length, cm_error *err);

#endif
