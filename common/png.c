/* png.c — PNG output (stb_image_write, to memory) with text chunks, and
 * text-chunk reading.
 *
 * Mirrors the PNG specification (ISO/IEC 15948, W3C PNG 2nd ed.) §11.3.4:
 *   tEXt  keyword \0 Latin-1 text
 *   zTXt  keyword \0 method(0) zlib(text)
 *   iTXt  keyword \0 flag method language \0 translated-keyword \0 UTF-8 text
 * Writing: stb's encoder makes IHDR, IDAT, IEND; our text chunks go in
 * right after IHDR (before IDAT, where A1111, ComfyUI and Pillow readers
 * all look). tEXt when key and value are printable ASCII (plus '\n', as
 * A1111's parameters text has); iTXt, uncompressed UTF-8, otherwise. No
 * timestamps: the same pixels and texts always give the same bytes.
 * Reading treats the bytes as hostile: every length is checked against
 * the buffer before use. zTXt and compressed iTXt are inflated with stb's
 * zlib (input capped at 64 KiB).
 */
#include "common.h"

#include <stdlib.h>
#include <string.h>

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include <stb_image_write.h>
#include <stb_image.h> /* declarations only: stbi_zlib_decode_* (image.c has the code) */
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define PNG_MAX_SIDE (1 << 24)
#define PNG_MAX_PIXELS ((size_t)1 << 28)
#define PNG_MAX_ZTEXT (64 * 1024)

static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void wr32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* ---------------------------------------------------------------- write */

static int plain_ascii(const char *s, int allow_newline)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 0x20 && c <= 0x7e) || (allow_newline && c == '\n'))) return 0;
    }
    return 1;
}

static int valid_utf8(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s, need, min;
        if (c < 0x80) {
            s++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            need = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        for (unsigned k = 1; k <= need; k++) {
            if ((s[k] & 0xc0) != 0x80) return 0;
            c = (c << 6) | (s[k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
        s += need + 1;
    }
    return 1;
}

/* Bytes of one text chunk (length + type + data + CRC); writes it when out. */
static size_t text_chunk(const cm_png_text *t, unsigned char *out)
{
    size_t kl = strlen(t->key), vl = strlen(t->value);
    int itxt = !plain_ascii(t->value, 1);
    size_t dl = kl + 1 + (itxt ? 4 : 0) + vl;
    if (out) {
        unsigned char *d = out + 8;
        wr32(out, (uint32_t)dl);
        memcpy(out + 4, itxt ? "iTXt" : "tEXt", 4);
        memcpy(d, t->key, kl);
        d += kl;
        *d++ = 0;
        if (itxt) { /* compression flag, method, empty language, empty translated key */
            *d++ = 0;
            *d++ = 0;
            *d++ = 0;
            *d++ = 0;
        }
        memcpy(d, t->value, vl);
        wr32(out + 8 + dl, crc32_update(0, out + 4, dl + 4));
    }
    return dl + 12;
}

cm_status cm_png_encode(const uint8_t *rgb, int w, int h, const cm_png_text *texts, int ntexts,
                        uint8_t **out, size_t *out_n, cm_error *err)
{
    *out = NULL;
    *out_n = 0;
    if (!rgb || w <= 0 || h <= 0 || w > PNG_MAX_SIDE || h > PNG_MAX_SIDE ||
        (size_t)w * (size_t)h > PNG_MAX_PIXELS)
        return cm_error_set(err, CM_ERR_USAGE, "png: bad image size %dx%d (at most %zu pixels)", w, h,
                            PNG_MAX_PIXELS);
    size_t extra = 0;
    for (int i = 0; i < ntexts; i++) {
        const char *k = texts[i].key, *v = texts[i].value;
        size_t kl = k ? strlen(k) : 0;
        if (!k || kl < 1 || kl > 79 || !plain_ascii(k, 0) || k[0] == ' ' || k[kl - 1] == ' ' ||
            strstr(k, "  "))
            return cm_error_set(err, CM_ERR_USAGE,
                                "png: bad text key '%s' (1-79 printable ASCII characters, no "
                                "leading, trailing or double spaces)", k ? k : "(null)");
        if (!v || !valid_utf8((const unsigned char *)v))
            return cm_error_set(err, CM_ERR_USAGE, "png: text '%s': value is not valid UTF-8", k);
        if (strlen(v) > (size_t)1 << 30)
            return cm_error_set(err, CM_ERR_USAGE, "png: text '%s': value too long", k);
        extra += text_chunk(&texts[i], NULL);
    }
    int len = 0;
    unsigned char *png = stbi_write_png_to_mem(rgb, w * 3, w, h, 3, &len);
    if (!png || len < 8 + 25)
        return cm_error_set(err, CM_ERR_NOMEM, "png: encoding a %dx%d image failed (out of memory)",
                            w, h);
    /* stb writes signature, IHDR (25 bytes), IDAT..., IEND: texts go after IHDR */
    const size_t at = 8 + 25;
    CM_ASSERT(memcmp(png + 12, "IHDR", 4) == 0 && memcmp(png + at + 4, "IDAT", 4) == 0);
    size_t total = (size_t)len + extra;
    uint8_t *buf = cm_alloc(total, "png bytes", err);
    if (!buf) {
        free(png); /* STBIW_FREE */
        return CM_ERR_NOMEM;
    }
    memcpy(buf, png, at);
    size_t pos = at;
    for (int i = 0; i < ntexts; i++) pos += text_chunk(&texts[i], buf + pos);
    memcpy(buf + pos, png + at, (size_t)len - at);
    free(png);
    *out = buf;
    *out_n = total;
    return CM_OK;
}

/* ----------------------------------------------------------------- read */

/* Latin-1 bytes -> UTF-8, cm_alloc'd and NUL-terminated. */
static char *latin1_to_utf8(const unsigned char *s, size_t n, cm_error *err)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += s[i] < 0x80 ? 1 : 2;
    char *o = cm_alloc(m + 1, "png text", err);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x80) {
            o[k++] = (char)s[i];
        } else {
            o[k++] = (char)(0xc0 | (s[i] >> 6));
            o[k++] = (char)(0x80 | (s[i] & 0x3f));
        }
    }
    o[k] = 0;
    return o;
}

static char *copy_text(const unsigned char *s, size_t n, cm_error *err)
{
    char *o = cm_alloc(n + 1, "png text", err);
    if (!o) return NULL;
    memcpy(o, s, n);
    o[n] = 0;
    return o;
}

static cm_status inflate_text(const unsigned char *z, size_t zn, const char *key, int latin1,
                              char **value, cm_error *err)
{
    if (zn > PNG_MAX_ZTEXT)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "png: compressed text chunk '%s' is too large (%zu bytes, at most %d)",
                            key, zn, PNG_MAX_ZTEXT);
    int outlen = 0;
    char *t = stbi_zlib_decode_malloc_guesssize_headerflag((const char *)z, (int)zn, 4096, &outlen, 1);
    if (!t || outlen < 0) {
        free(t);
        return cm_error_set(err, CM_ERR_FORMAT, "png: compressed text chunk '%s' does not inflate",
                            key);
    }
    if (memchr(t, 0, (size_t)outlen)) {
        free(t);
        return cm_error_set(err, CM_ERR_FORMAT, "png: text chunk '%s' contains a NUL byte", key);
    }
    *value = latin1 ? latin1_to_utf8((unsigned char *)t, (size_t)outlen, err)
                    : copy_text((unsigned char *)t, (size_t)outlen, err);
    free(t); /* STBI_FREE */
    return *value ? CM_OK : CM_ERR_NOMEM;
}

cm_status cm_png_text_get(const void *png, size_t n, const char *key, char **value,
                          cm_error *err)
{
    *value = NULL;
    const unsigned char *p = png;
    size_t kl = strlen(key);
    if (!p || n < 8 || memcmp(p, png_sig, 8) != 0)
        return cm_error_set(err, CM_ERR_FORMAT, "png: not a PNG file (bad signature)");
    size_t pos = 8;
    for (;;) {
        if (n - pos < 12)
            return cm_error_set(err, CM_ERR_FORMAT,
                                "png: truncated at byte %zu (no IEND; text '%s' not found)", pos, key);
        uint32_t len = rd32(p + pos);
        const unsigned char *type = p + pos + 4, *d = p + pos + 8;
        if (len > 0x7fffffffu || (size_t)len > n - pos - 12)
            return cm_error_set(err, CM_ERR_FORMAT,
                                "png: chunk '%.4s' at byte %zu claims %u bytes, only %zu remain",
                                (const char *)type, pos, len, n - pos - 12);
        if (memcmp(type, "IEND", 4) == 0) break;
        int is_text = memcmp(type, "tEXt", 4) == 0, is_ztxt = memcmp(type, "zTXt", 4) == 0,
            is_itxt = memcmp(type, "iTXt", 4) == 0;
        if ((is_text || is_ztxt || is_itxt) && len > kl && memcmp(d, key, kl) == 0 && d[kl] == 0) {
            const unsigned char *s = d + kl + 1, *e = d + len;
            if (is_text) {
                if (memchr(s, 0, (size_t)(e - s)))
                    return cm_error_set(err, CM_ERR_FORMAT, "png: tEXt '%s' contains a NUL byte", key);
                *value = latin1_to_utf8(s, (size_t)(e - s), err);
                return *value ? CM_OK : CM_ERR_NOMEM;
            }
            if (is_ztxt) {
                if (s >= e || *s != 0)
                    return cm_error_set(err, CM_ERR_FORMAT, "png: zTXt '%s' is malformed", key);
                return inflate_text(s + 1, (size_t)(e - s - 1), key, 1, value, err);
            }
            /* iTXt: flag, method, language \0, translated keyword \0, text */
            if (e - s < 2)
                return cm_error_set(err, CM_ERR_FORMAT, "png: iTXt '%s' is malformed", key);
            int flag = s[0], method = s[1];
            s += 2;
            for (int k = 0; k < 2; k++) {
                const unsigned char *z = memchr(s, 0, (size_t)(e - s));
                if (!z) return cm_error_set(err, CM_ERR_FORMAT, "png: iTXt '%s' is malformed", key);
                s = z + 1;
            }
            if (flag == 1) {
                if (method != 0)
                    return cm_error_set(err, CM_ERR_UNSUPPORTED,
                                        "png: iTXt '%s' uses unknown compression method %d", key,
                                        method);
                return inflate_text(s, (size_t)(e - s), key, 0, value, err);
            }
            if (flag != 0)
                return cm_error_set(err, CM_ERR_FORMAT, "png: iTXt '%s' has compression flag %d",
                                    key, flag);
            if (memchr(s, 0, (size_t)(e - s)))
                return cm_error_set(err, CM_ERR_FORMAT, "png: iTXt '%s' contains a NUL byte", key);
            *value = copy_text(s, (size_t)(e - s), err);
            return *value ? CM_OK : CM_ERR_NOMEM;
        }
        pos += 12 + (size_t)len;
    }
    return cm_error_set(err, CM_ERR_FORMAT, "png: no text chunk '%s'", key);
}
