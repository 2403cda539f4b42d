/* fuzz_pngtext.c — libFuzzer target for PNG text chunks (common/png.c,
 * cm_png_text_get: tEXt, iTXt, zTXt, compressed iTXt) and the A1111
 * `parameters` text read back from them: every lookup returns a
 * NUL-terminated value or a message; a found `parameters` value is split
 * the way A1111's infotext reader splits it (prompt lines, a
 * "Negative prompt:" line, the last line of "Key: value" pairs) and every
 * byte of it is read. Seeds: tests/fuzz/seeds_pngtext/.
 */
#include <stdint.h>
#include <string.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Count "Key: value" pairs of the last line and find the negative prompt,
 * reading every byte (what a metadata reader would do). */
static void split_infotext(const char *s)
{
    const char *last = strrchr(s, '\n');
    last = last ? last + 1 : s;
    int pairs = 0;
    for (const char *p = last; (p = strstr(p, ": ")); p += 2) pairs++;
    const char *neg = strstr(s, "\nNegative prompt: ");
    volatile size_t sink = strlen(s) + (size_t)pairs + (neg ? strlen(neg) : 0);
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *keys[] = {"parameters", "Comment", "prompt", "workflow", ""};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        cm_error err = {0};
        char *v = NULL;
        if (cm_png_text_get(data, size, keys[k], &v, &err) == CM_OK) {
            CM_ASSERT(v != NULL);
            if (k == 0) split_infotext(v);
            else (void)strlen(v);
        } else {
            CM_ASSERT(err.status != CM_OK && err.msg[0]);
        }
        cm_free(v);
    }
    return 0;
}
