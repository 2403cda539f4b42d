/* fuzz_prompt.c — libFuzzer target for the prompt path of textenc/: the
 * A1111 attention parser (te_prompt_parse), the CLIP BPE tokenizer and the
 * 75-token chunking (te_prompt_chunks, with and without the SD2 '!' flag).
 * Any bytes (invalid UTF-8 included) must give parts / chunks whose ids
 * are in the vocabulary and whose windows are BOS ... EOS, or a message.
 * Seeds: tests/fuzz/seeds_prompt/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "textenc.h"
#include "textenc_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static te_tokenizer *tok;
    if (!tok) {
        cm_error e = {0};
        cm_log_set_level(CM_LOG_ERROR); /* invalid UTF-8 warnings */
        tok = te_tokenizer_create(&e);
        CM_ASSERT(tok);
    }
    if (size > 1024) return 0; /* long prompts: the tokenizer tests cover them */
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0; /* a C string: stops at the first NUL, as argv would */

    cm_error err = {0};
    te_prompt_part *parts = NULL;
    int np = 0;
    if (te_prompt_parse(s, &parts, &np, &err) == CM_OK) {
        CM_ASSERT(np >= 1);
        for (int i = 0; i < np; i++) CM_ASSERT(parts[i].text != NULL);
        te_prompt_parts_free(parts, np);
    } else {
        CM_ASSERT(err.msg[0]);
    }
    for (unsigned flags = 0; flags <= TE_TOK_SD2_BANG; flags += TE_TOK_SD2_BANG) {
        te_chunks c;
        memset(&c, 0, sizeof c);
        cm_error e = {0};
        if (te_prompt_chunks_ex(tok, s, TE_EOS, flags, &c, &e) == CM_OK) {
            CM_ASSERT(c.nchunks >= 1);
            for (int k = 0; k < c.nchunks; k++) {
                CM_ASSERT(c.ids[k * TE_CTX] == TE_BOS);
                for (int i = 0; i < TE_CTX; i++) {
                    int32_t id = c.ids[k * TE_CTX + i];
                    CM_ASSERT(id >= 0 && id <= TE_EOS);
                    CM_ASSERT(c.weights[k * TE_CTX + i] == c.weights[k * TE_CTX + i]); /* not NaN */
                }
            }
            te_chunks_release(&c);
        } else {
            CM_ASSERT(e.msg[0]);
        }
    }
    free(s);
    return 0;
}
