/* image.c — PNG and JPEG input through stb_image (the project's single
 * STB_IMAGE_IMPLEMENTATION), converted to float RGB in [0,1], HWC.
 *
 * Gray, gray+alpha, RGB, RGBA, palette and 16-bit PNGs become 3 channels
 * (alpha dropped, not composited); 16-bit files go through stbi_load_16 so
 * no precision is lost (v / 65535). JPEG: baseline and progressive; Adobe
 * CMYK/YCCK JPEGs are converted by stb (C*K/255 on the inverted channels,
 * the same colours Pillow gives); a 4-channel JPEG without the Adobe
 * marker has no defined colour space and is refused.
 *
 * The bytes are hostile input: the size is read from the file's own header
 * (PNG IHDR, JPEG SOF) and checked before stb decodes anything (at most
 * CM_IMAGE_MAX_PIXELS pixels), and every stb failure becomes a one-line
 * error naming the file.
 */
#include "common.h"

#include <string.h>

#define CM_IMAGE_MAX_PIXELS ((size_t)1 << 28)

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#endif
#include <stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/* The size and layout stated by the file's header, read before stb sees the
 * bytes (stb_info refuses huge images with a misleading "unknown image
 * type"). JPEG: the first SOF's size and component count, and whether an
 * Adobe APP14 segment precedes it. Returns 0: not PNG/JPEG, 1: ok, -1:
 * header unreadable. */
enum { KIND_PNG = 1, KIND_JPEG = 2 };

static int sniff(const unsigned char *p, size_t n, int *kind, uint32_t *w, uint32_t *h,
                 int *ncomp, int *adobe)
{
    *kind = 0;
    *w = *h = 0;
    *ncomp = 0;
    *adobe = 0;
    if (n >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) {
        *kind = KIND_PNG;
        if (n < 8 + 8 + 13 || memcmp(p + 12, "IHDR", 4) != 0) return -1;
        *w = (uint32_t)p[16] << 24 | (uint32_t)p[17] << 16 | (uint32_t)p[18] << 8 | p[19];
        *h = (uint32_t)p[20] << 24 | (uint32_t)p[21] << 16 | (uint32_t)p[22] << 8 | p[23];
        return 1;
    }
    if (n < 3 || p[0] != 0xff || p[1] != 0xd8 || p[2] != 0xff) return 0;
    *kind = KIND_JPEG;
    size_t i = 2;
    while (i + 4 <= n) {
        if (p[i] != 0xff) return -1;
        unsigned m = p[i + 1];
        if (m == 0xff) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0xd8 || (m >= 0xd0 && m <= 0xd7) || m == 0x01) {
            i += 2;
            continue;
        }
        if (m == 0xd9 || m == 0xda) return -1; /* EOI / SOS before any SOF */
        size_t len = (size_t)p[i + 2] << 8 | p[i + 3];
        if (len < 2 || i + 2 + len > n) return -1;
        const unsigned char *seg = p + i + 4;
        size_t sl = len - 2;
        if (m == 0xee && sl >= 5 && memcmp(seg, "Adobe", 5) == 0) *adobe = 1;
        if ((m >= 0xc0 && m <= 0xcf) && m != 0xc4 && m != 0xc8 && m != 0xcc) {
            if (sl < 6) return -1;
            *h = (uint32_t)seg[1] << 8 | seg[2];
            *w = (uint32_t)seg[3] << 8 | seg[4];
            *ncomp = seg[5];
            return 1;
        }
        i += 2 + len;
    }
    return -1;
}

static const char *stb_reason(void)
{
    const char *r = stbi_failure_reason();
    return r ? r : "unknown error";
}

cm_status cm_image_read_mem(const void *data, size_t n, const char *name, cm_image *img,
                            cm_error *err)
{
    memset(img, 0, sizeof *img);
    if (!name) name = "image";
    if (n == 0) return cm_error_set(err, CM_ERR_FORMAT, "%s: empty file", name);
    if (n > (size_t)INT32_MAX)
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: file too large (%zu bytes)", name, n);
    const unsigned char *p = data;
    int len = (int)n, kind, ncomp, adobe, w = 0, h = 0, comp = 0;
    uint32_t hw, hh;
    int sn = sniff(p, n, &kind, &hw, &hh, &ncomp, &adobe);
    const char *fmt = kind == KIND_PNG ? "PNG" : "JPEG";
    if (sn == 0) return cm_error_set(err, CM_ERR_FORMAT, "%s: not a PNG or JPEG image", name);
    if (sn < 0)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt %s: cannot read its header", name, fmt);
    if (hw == 0 || hh == 0)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: image has zero size (%ux%u)", name, hw, hh);
    if (hw > (1u << 24) || hh > (1u << 24) || (size_t)hw * hh > CM_IMAGE_MAX_PIXELS)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: image too large: %ux%u pixels (at most %zu pixels)", name, hw, hh,
                            CM_IMAGE_MAX_PIXELS);
    if (kind == KIND_JPEG && ncomp == 4 && !adobe)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: 4-channel (CMYK) JPEG without an Adobe colour marker is not "
                            "supported: convert it to RGB", name);
    if (!stbi_info_from_memory(p, len, &w, &h, &comp))
        return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt %s: %s", name, fmt, stb_reason());
    if (w <= 0 || h <= 0 || (uint32_t)w != hw || (uint32_t)h != hh)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt %s: size %dx%d", name, fmt, w, h);
    size_t pixels = (size_t)w * (size_t)h, nfloat, nbytes;
    if (!cm_mul_size(pixels, 3, &nfloat) || !cm_mul_size(nfloat, sizeof(float), &nbytes))
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: image too large", name);

    float *rgb = cm_alloc(nbytes, name, err);
    if (!rgb) return CM_ERR_NOMEM;
    int w2 = 0, h2 = 0, c2 = 0;
    if (stbi_is_16_bit_from_memory(p, len)) {
        stbi_us *px = stbi_load_16_from_memory(p, len, &w2, &h2, &c2, 3);
        if (!px) goto decode_fail;
        if (w2 != w || h2 != h) {
            stbi_image_free(px);
            goto size_changed;
        }
        for (size_t i = 0; i < nfloat; i++) rgb[i] = (float)px[i] / 65535.0f;
        stbi_image_free(px);
    } else {
        stbi_uc *px = stbi_load_from_memory(p, len, &w2, &h2, &c2, 3);
        if (!px) goto decode_fail;
        if (w2 != w || h2 != h) {
            stbi_image_free(px);
            goto size_changed;
        }
        for (size_t i = 0; i < nfloat; i++) rgb[i] = (float)px[i] / 255.0f;
        stbi_image_free(px);
    }
    img->w = w;
    img->h = h;
    img->rgb = rgb;
    return CM_OK;

decode_fail:
    cm_free(rgb);
    if (strcmp(stb_reason(), "outofmem") == 0)
        return cm_error_set(err, CM_ERR_NOMEM, "%s: out of memory decoding a %dx%d image", name, w, h);
    return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt image: %s", name, stb_reason());
size_changed:
    cm_free(rgb);
    return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt image: header says %dx%d, data %dx%d",
                        name, w, h, w2, h2);
}

cm_status cm_image_read(const char *path, cm_image *img, cm_error *err)
{
    memset(img, 0, sizeof *img);
    char *data = NULL;
    size_t n = 0;
    cm_status st = cm_file_read_all(path, &data, &n, err);
    if (st != CM_OK) return st;
    st = cm_image_read_mem(data, n, path, img, err);
    cm_free(data);
    return st;
}

void cm_image_release(cm_image *img)
{
    if (!img) return;
    cm_free(img->rgb);
    memset(img, 0, sizeof *img);
}
