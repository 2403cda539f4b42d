/* fuzz_image.c — libFuzzer target for the image reader and the PNG text
 * chunk reader (common/image.c via cm_image_read_mem, common/png.c via
 * cm_png_text_get). Any input must either be refused with a message or
 * give an image whose every pixel lies in [0,1] (ASan checks the reads);
 * text lookups must return a NUL-terminated string or an error.
 * Inputs whose header claims more than 2^24 pixels are skipped: they only
 * measure how much stb allocates, not whether our checks hold.
 * Seeds: tests/fuzz/seeds_image/.
 */
#include <stdint.h>
#include <string.h>

#include "common.h"

/* Pixel count the header claims (PNG IHDR, first JPEG SOF), 0 if unknown.
 * Deliberately not stbi_info: stb must only see what cm_image_read_mem
 * has checked. */
static uint64_t claimed_pixels(const uint8_t *p, size_t n)
{
    if (n >= 24 && p[0] == 0x89 && memcmp(p + 12, "IHDR", 4) == 0) {
        uint64_t w = (uint64_t)p[16] << 24 | (uint64_t)p[17] << 16 | (uint64_t)p[18] << 8 | p[19];
        uint64_t h = (uint64_t)p[20] << 24 | (uint64_t)p[21] << 16 | (uint64_t)p[22] << 8 | p[23];
        return w * h;
    }
    for (size_t i = 2; i + 9 <= n; i++) /* any SOF-looking marker */
        if (p[i] == 0xff && p[i + 1] >= 0xc0 && p[i + 1] <= 0xcf && p[i + 1] != 0xc4 &&
            p[i + 1] != 0xc8 && p[i + 1] != 0xcc)
            return (uint64_t)(p[i + 5] << 8 | p[i + 6]) * (uint64_t)(p[i + 7] << 8 | p[i + 8]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cm_error err = {0};
    if (claimed_pixels(data, size) > ((uint64_t)1 << 24)) return 0;
    cm_image im;
    if (cm_image_read_mem(data, size, "fuzz", &im, &err) == CM_OK) {
        CM_ASSERT(im.w > 0 && im.h > 0 && im.rgb);
        size_t n = (size_t)im.w * (size_t)im.h * 3;
        for (size_t i = 0; i < n; i++) CM_ASSERT(im.rgb[i] >= 0.0f && im.rgb[i] <= 1.0f);
        cm_image_release(&im);
    } else {
        CM_ASSERT(err.status != CM_OK && err.msg[0] && im.rgb == NULL);
    }
    static const char *keys[] = {"parameters", "Title", "Comment", "Description"};
    for (int k = 0; k < 4; k++) {
        char *v = NULL;
        cm_error_clear(&err);
        if (cm_png_text_get(data, size, keys[k], &v, &err) == CM_OK) {
            CM_ASSERT(v != NULL);
            (void)strlen(v);
            cm_free(v);
        } else {
            CM_ASSERT(v == NULL && err.msg[0]);
        }
    }
    return 0;
}
