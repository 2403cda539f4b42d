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

#endif
