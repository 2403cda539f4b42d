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
 * CM_IMAGE_MAX_PIXELS pixels); PNG chunk lengths and JPEG Huffman tables
 * are checked first too, because stb 2.27 (Debian 12) trusts them; every
 * stb failure becomes a one-line error naming the file.
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
/* DHT segment: every table's class/id in range, at most 256 codes, and
 * the table inside the segment. stb 2.27 checks none of the first three
 * and overwrites its decoder state when a table has more than 256 codes. */
static int jpeg_dht_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (n - i < 17) return 0;
        int tc = s[i] >> 4, th = s[i] & 15;
        if (tc > 1 || th > 3) return 0;
        size_t codes = 0;
        for (int k = 1; k <= 16; k++) codes += s[i + (size_t)k];
        if (codes > 256 || n - i - 17 < codes) return 0;
        i += 17 + codes;
    }
    return 1;
}

/* Walk every marker segment of a JPEG (through all scans, for progressive
 * files): the first SOF's size and component count, whether an Adobe APP14
 * segment precedes it, and every DHT checked. Returns 1 or -1 (malformed). */
static int jpeg_walk(const unsigned char *p, size_t n, uint32_t *w, uint32_t *h, int *ncomp,
                     int *adobe)
{
    size_t i = 2;
    int have_sof = 0;
    while (i + 2 <= n) {
        if (p[i] != 0xff) return -1;
        unsigned m = p[i + 1];
        if (m == 0xff) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0xd9) break; /* EOI */
        if (m == 0xd8 || (m >= 0xd0 && m <= 0xd7) || m == 0x01) {
            i += 2;
            continue;
        }
        if (i + 4 > n) break; /* truncated: stb reports it */
        size_t len = (size_t)p[i + 2] << 8 | p[i + 3];
        if (len < 2 || i + 2 + len > n) return -1;
        const unsigned char *seg = p + i + 4;
        size_t sl = len - 2;
        if (m == 0xee && !have_sof && sl >= 5 && memcmp(seg, "Adobe", 5) == 0) *adobe = 1;
        if (m == 0xc4 && !jpeg_dht_ok(seg, sl)) return -1;
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc && !have_sof) {
            if (sl < 6) return -1;
            *h = (uint32_t)seg[1] << 8 | seg[2];
            *w = (uint32_t)seg[3] << 8 | seg[4];
            *ncomp = seg[5];
            have_sof = 1;
        }
        i += 2 + len;
        if (m == 0xda) { /* entropy-coded data up to the next real marker */
            while (i + 1 < n && !(p[i] == 0xff && p[i + 1] != 0x00 &&
                                  !(p[i + 1] >= 0xd0 && p[i + 1] <= 0xd7)))
                i++;
            if (i + 1 >= n) break;
        }
    }
    return have_sof ? 1 : -1;
}

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
    return jpeg_walk(p, n, w, h, ncomp, adobe);
}

/* PNG: every chunk's length must fit in the buffer. stb trusts an IDAT's
 * length and grows its buffer to it before reading, so a 60-byte file
 * could make it allocate gigabytes. Returns the offset of the first bad
 * chunk, or 0. */
static size_t png_bad_chunk(const unsigned char *p, size_t n, uint32_t *len_out)
{
    size_t pos = 8;
    while (n - pos >= 8) {
        uint32_t len = (uint32_t)p[pos] << 24 | (uint32_t)p[pos + 1] << 16 |
                       (uint32_t)p[pos + 2] << 8 | p[pos + 3];
        if (len > 0x7fffffffu || n - pos < 12 || (size_t)len > n - pos - 12) {
            *len_out = len;
            return pos;
        }
        if (memcmp(p + pos + 4, "IEND", 4) == 0) break;
        pos += 12 + (size_t)len;
    }
    return 0;
}

/* stb 2.27 appends an IDAT's bytes at idata + ioff before it has
 * allocated idata when the first IDAT is empty (NULL + 0: undefined
 * behaviour, found by fuzzing). Empty IDAT chunks carry nothing: a copy
 * without them decodes the same. Returns that copy (cm_alloc'd) when there
 * was one to drop, else NULL; *oom on allocation failure. The chunks were
 * bounds-checked by png_bad_chunk. */
static unsigned char *png_drop_empty_idat(const unsigned char *p, size_t n, size_t *n_out, int *oom)
{
    int any = 0;
    for (size_t pos = 8; n - pos >= 12;) {
        uint32_t len = (uint32_t)p[pos] << 24 | (uint32_t)p[pos + 1] << 16 | (uint32_t)p[pos + 2] << 8 | p[pos + 3];
        if (len == 0 && memcmp(p + pos + 4, "IDAT", 4) == 0) any = 1;
        if (memcmp(p + pos + 4, "IEND", 4) == 0) break;
        pos += 12 + (size_t)len;
    }
    *oom = 0;
    if (!any) return NULL;
    unsigned char *out = cm_alloc(n, "image", NULL);
    if (!out) {
        *oom = 1;
        return NULL;
    }
    memcpy(out, p, 8);
    size_t pos = 8, o = 8;
    while (n - pos >= 12) {
        uint32_t len = (uint32_t)p[pos] << 24 | (uint32_t)p[pos + 1] << 16 | (uint32_t)p[pos + 2] << 8 | p[pos + 3];
        int iend = memcmp(p + pos + 4, "IEND", 4) == 0;
        if (!(len == 0 && memcmp(p + pos + 4, "IDAT", 4) == 0)) {
            memcpy(out + o, p + pos, 12 + (size_t)len);
            o += 12 + (size_t)len;
        }
        pos += 12 + (size_t)len;
        if (iend) break;
    }
    memcpy(out + o, p + pos, n - pos); /* whatever follows, as it was */
    *n_out = o + (n - pos);
    return out;
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
    uint32_t clen = 0;
    size_t bad = kind == KIND_PNG ? png_bad_chunk(p, n, &clen) : 0;
    if (bad)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: corrupt PNG: the chunk at byte %zu claims %u bytes, only %zu remain",
                            name, bad, clen, n - bad < 12 ? 0 : n - bad - 12);
    if (kind == KIND_PNG) {
        int oom = 0;
        size_t n2 = 0;
        unsigned char *clean = png_drop_empty_idat(p, n, &n2, &oom);
        if (oom) return cm_error_set(err, CM_ERR_NOMEM, "%s: out of memory", name);
        if (clean) {
            cm_status st = cm_image_read_mem(clean, n2, name, img, err);
            cm_free(clean);
            return st;
        }
    }
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

    /* decode first, so that our buffer is only sized for data that exists */
    int w2 = 0, h2 = 0, c2 = 0, is16 = stbi_is_16_bit_from_memory(p, len);
    void *px = is16 ? (void *)stbi_load_16_from_memory(p, len, &w2, &h2, &c2, 3)
                    : (void *)stbi_load_from_memory(p, len, &w2, &h2, &c2, 3);
    if (!px) {
        if (strcmp(stb_reason(), "outofmem") == 0)
            return cm_error_set(err, CM_ERR_NOMEM, "%s: out of memory decoding a %dx%d image",
                                name, w, h);
        return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt %s: %s", name, fmt, stb_reason());
    }
    if (w2 != w || h2 != h) {
        stbi_image_free(px);
        return cm_error_set(err, CM_ERR_FORMAT, "%s: corrupt %s: header says %dx%d, data %dx%d",
                            name, fmt, w, h, w2, h2);
    }
    float *rgb = cm_alloc(nbytes, name, err);
    if (!rgb) {
        stbi_image_free(px);
        return CM_ERR_NOMEM;
    }
    if (is16) {
        const stbi_us *s16 = px;
        for (size_t i = 0; i < nfloat; i++) rgb[i] = (float)s16[i] / 65535.0f;
    } else {
        const stbi_uc *s8 = px;
        for (size_t i = 0; i < nfloat; i++) rgb[i] = (float)s8[i] / 255.0f;
    }
    stbi_image_free(px);
    img->w = w;
    img->h = h;
    img->rgb = rgb;
    return CM_OK;
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
