/* npy.c — .npy read/write for float32 tensors (initial noise in, latents out).
 *
 * Mirrors numpy's format spec (numpy/lib/format.py, NEP 1):
 *   "\x93NUMPY" major minor, header length (u16 LE for v1, u32 LE for
 *   v2/v3), then an ASCII Python dict literal
 *   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
 *   padded with spaces and ended by '\n' so that the data starts on a
 *   64-byte boundary; then the raw elements, C order.
 * Only little-endian float32 in C order is accepted; every other dtype,
 * byte order or layout is a one-line error naming the file. The header is
 * parsed as hostile input: bounded lengths, strict grammar, overflow-checked
 * shape products, data size checked against the file size before any
 * allocation.
 */
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NPY_MAX_HEADER (1 << 20) /* numpy itself refuses > 10000 bytes by default */

static int host_is_le(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

static void swap32(float *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, p + i, 4);
        u = __builtin_bswap32(u);
        memcpy(p + i, &u, 4);
    }
}

/* ------------------------------------------------------ header parsing */

typedef struct {
    const char *s, *end;
} hp; /* header parser cursor */

static void hp_ws(hp *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int hp_char(hp *p, char c)
{
    hp_ws(p);
    if (p->s < p->end && *p->s == c) {
        p->s++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes, copied into buf (truncated at cap-1). */
static int hp_string(hp *p, char *buf, size_t cap)
{
    hp_ws(p);
    if (p->s >= p->end || (*p->s != '\'' && *p->s != '"')) return 0;
    char q = *p->s++;
    size_t k = 0;
    while (p->s < p->end && *p->s != q) {
        if (*p->s == '\\' || (unsigned char)*p->s < 0x20) return 0;
        if (k + 1 < cap) buf[k++] = *p->s;
        p->s++;
    }
    if (p->s >= p->end) return 0;
    p->s++;
    buf[k] = 0;
    return 1;
}

static int hp_word(hp *p, const char *w)
{
    hp_ws(p);
    size_t n = strlen(w);
    if ((size_t)(p->end - p->s) >= n && memcmp(p->s, w, n) == 0) {
        p->s += n;
        return 1;
    }
    return 0;
}

/* (d0, d1, ...) with an optional trailing comma; () is a scalar. */
static int hp_shape(hp *p, int64_t *shape, int *ndim)
{
    if (!hp_char(p, '(')) return 0;
    *ndim = 0;
    for (;;) {
        if (hp_char(p, ')')) return 1;
        hp_ws(p);
        if (p->s >= p->end || *p->s < '0' || *p->s > '9') return 0;
        int64_t v = 0;
        while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
            if (v > (INT64_MAX - 9) / 10) return 0;
            v = v * 10 + (*p->s++ - '0');
        }
        hp_word(p, "L"); /* Python 2 longs */
        if (*ndim >= CM_MAX_DIMS) return 0;
        shape[(*ndim)++] = v;
        if (!hp_char(p, ',')) return hp_char(p, ')');
    }
}

static cm_status parse_header(const char *path, const char *h, size_t n, int64_t *shape,
                              int *ndim, cm_error *err)
{
    hp p = {h, h + n};
    char key[64], descr[64] = "";
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0;
    if (!hp_char(&p, '{')) goto bad;
    while (!hp_char(&p, '}')) {
        if (!hp_string(&p, key, sizeof key) || !hp_char(&p, ':')) goto bad;
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if (!hp_string(&p, descr, sizeof descr)) goto bad;
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_fortran) {
            if (hp_word(&p, "True"))
                fortran = 1;
            else if (!hp_word(&p, "False"))
                goto bad;
            have_fortran = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            if (!hp_shape(&p, shape, ndim)) goto bad;
            have_shape = 1;
        } else {
            return cm_error_set(err, CM_ERR_FORMAT, "%s: bad .npy header: unexpected key '%s'", path,
                                key);
        }
        if (!hp_char(&p, ',')) {
            if (!hp_char(&p, '}')) goto bad;
            break;
        }
    }
    hp_ws(&p);
    if (p.s != p.end) goto bad;
    if (!have_descr || !have_fortran || !have_shape)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: bad .npy header: needs 'descr', 'fortran_order' and 'shape'", path);
    if (strcmp(descr, ">f4") == 0)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: big-endian float32 ('>f4') is not supported: expected "
                            "little-endian float32 '<f4'", path);
    if (strcmp(descr, "<f4") != 0 && !(strcmp(descr, "=f4") == 0 && host_is_le()))
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: dtype '%s' is not supported: expected little-endian float32 '<f4'",
                            path, descr);
    if (fortran) {
        int64_t big = 0; /* Fortran order only differs when two dims exceed 1 */
        for (int i = 0; i < *ndim; i++) big += shape[i] > 1;
        if (big > 1)
            return cm_error_set(err, CM_ERR_UNSUPPORTED,
                                "%s: Fortran-order arrays are not supported: expected C order", path);
    }
    return CM_OK;
bad:
    return cm_error_set(err, CM_ERR_FORMAT, "%s: bad .npy header near byte %ld of the dict", path,
                        (long)(p.s - h));
}

/* ---------------------------------------------------------------- read */

cm_status cm_npy_read(const char *path, cm_tensor *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    cm_status st = CM_OK;
    char *hdr = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return cm_error_set(err, CM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = cm_error_set(err, CM_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    unsigned char pre[12];
    if (fsize < 10 || fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        st = cm_error_set(err, CM_ERR_FORMAT, "%s: not a .npy file (no \\x93NUMPY magic)", path);
        goto fail;
    }
    int major = pre[6];
    uint64_t hlen, hstart;
    if (major == 1) {
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            st = cm_error_set(err, CM_ERR_FORMAT, "%s: truncated .npy header", path);
            goto fail;
        }
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 |
               (uint64_t)pre[11] << 24;
        hstart = 12;
    } else {
        st = cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: .npy format version %d.%d is not supported",
                          path, major, pre[7]);
        goto fail;
    }
    if (hlen > NPY_MAX_HEADER || hstart + hlen > fsize) {
        st = cm_error_set(err, CM_ERR_FORMAT,
                          "%s: .npy header length %llu exceeds the file (%llu bytes)", path,
                          (unsigned long long)hlen, (unsigned long long)fsize);
        goto fail;
    }
    hdr = cm_alloc(hlen + 1, "npy header", err);
    if (!hdr) {
        st = CM_ERR_NOMEM;
        goto fail;
    }
    if (fread(hdr, 1, hlen, f) != hlen) {
        st = cm_error_set(err, CM_ERR_IO, "%s: read failed in the header", path);
        goto fail;
    }
    hdr[hlen] = 0;
    if (memchr(hdr, 0, hlen)) {
        st = cm_error_set(err, CM_ERR_FORMAT, "%s: bad .npy header (NUL byte)", path);
        goto fail;
    }
    int64_t shape[CM_MAX_DIMS];
    int ndim = 0;
    st = parse_header(path, hdr, hlen, shape, &ndim, err);
    if (st != CM_OK) goto fail;
    size_t numel = 1, nbytes;
    for (int i = 0; i < ndim; i++)
        if (!cm_mul_size(numel, (size_t)shape[i], &numel)) numel = SIZE_MAX;
    uint64_t have = fsize - hstart - hlen;
    if (numel == SIZE_MAX || !cm_mul_size(numel, 4, &nbytes) || (uint64_t)nbytes != have) {
        st = cm_error_set(err, CM_ERR_FORMAT,
                          "%s: data size mismatch: the shape needs %llu bytes of float32, the file "
                          "holds %llu after the header%s",
                          path, numel == SIZE_MAX ? 0ull : (unsigned long long)numel * 4ull,
                          (unsigned long long)have,
                          (numel != SIZE_MAX && (uint64_t)numel * 4 > have) ? " (truncated)" : "");
        goto fail;
    }
    st = cm_tensor_alloc(out, ndim, shape, err);
    if (st != CM_OK) goto fail;
    if (nbytes && fread(out->data, 1, nbytes, f) != nbytes) {
        st = cm_error_set(err, CM_ERR_IO, "%s: read failed in the data (file changed?)", path);
        cm_tensor_release(out);
        goto fail;
    }
    if (!host_is_le()) swap32(out->data, numel);
fail:
    cm_free(hdr);
    fclose(f);
    return st;
}

/* --------------------------------------------------------------- write */

cm_status cm_npy_write(const char *path, const cm_tensor *t, cm_error *err)
{
    char dict[64 + 24 * CM_MAX_DIMS];
    int k = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    CM_ASSERT(t->ndim >= 0 && t->ndim <= CM_MAX_DIMS);
    size_t numel = 1, nbytes;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || !cm_mul_size(numel, (size_t)t->shape[i], &numel))
            return cm_error_set(err, CM_ERR_USAGE, "%s: bad tensor shape", path);
        k += snprintf(dict + k, sizeof dict - (size_t)k, "%s%lld", i ? ", " : "",
                      (long long)t->shape[i]);
    }
    k += snprintf(dict + k, sizeof dict - (size_t)k, "%s), }", t->ndim == 1 ? "," : "");
    /* magic(6) + version(2) + len(2) + dict + spaces + '\n', a multiple of 64 */
    size_t hdr = 10 + (size_t)k + 1;
    size_t pad = (64 - hdr % 64) % 64;
    hdr += pad;
    if (!cm_mul_size(numel, 4, &nbytes) || nbytes > SIZE_MAX - hdr)
        return cm_error_set(err, CM_ERR_USAGE, "%s: tensor too large", path);
    unsigned char *buf = cm_alloc(hdr + nbytes, "npy file", err);
    if (!buf) return CM_ERR_NOMEM;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    size_t hl = hdr - 10;
    buf[8] = (unsigned char)(hl & 0xff);
    buf[9] = (unsigned char)(hl >> 8);
    memcpy(buf + 10, dict, (size_t)k);
    memset(buf + 10 + k, ' ', pad);
    buf[hdr - 1] = '\n';
    if (nbytes) memcpy(buf + hdr, t->data, nbytes);
    if (!host_is_le()) swap32((float *)(void *)(buf + hdr), numel); /* hdr is 64-aligned */
    cm_status st = cm_file_write_atomic(path, buf, hdr + nbytes, 1, err);
    cm_free(buf);
    return st;
}
