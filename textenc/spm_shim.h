/* spm_shim.h — a tiny C interface over libsentencepiece (the T5 tokenizer).
 *
 * The only C++ in stipple sits behind this header (spm_shim.cc). It wraps
 * sentencepiece::SentencePieceProcessor: a model loaded from serialized
 * bytes (the spiece.model built into the binary) and plain encoding of
 * UTF-8 text to piece ids, no BOS/EOS added. Every function catches all
 * C++ exceptions and reports failure through its return value and a
 * message buffer, so nothing thrown ever crosses into C.
 */
#ifndef STIPPLE_SPM_SHIM_H
#define STIPPLE_SPM_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct te_spm te_spm;

/* Load a model from n bytes of a serialized ModelProto. NULL on failure,
 * with a one-line reason in msg (msg_n bytes, always NUL-terminated). */
te_spm *te_spm_create(const void *model, size_t n, char *msg, size_t msg_n);
void te_spm_free(te_spm *s); /* NULL ok */

/* Number of pieces in the model (T5: 32000). */
int te_spm_piece_count(const te_spm *s);
/* Id of a piece string, or -1 when the model does not know it (its unk
 * id is returned by sentencepiece for unknown pieces: checked here). */
int te_spm_piece_id(const te_spm *s, const char *piece);

/* Encode n bytes of UTF-8 text into ids (sentencepiece Encode, without
 * BOS/EOS). Writes at most cap ids and returns the total count (which may
 * exceed cap: the caller truncates), or -1 on failure with msg filled. */
int64_t te_spm_encode(const te_spm *s, const char *text, size_t n, int32_t *ids, int64_t cap,
                      char *msg, size_t msg_n);

#ifdef __cplusplus
}
#endif

#endif
