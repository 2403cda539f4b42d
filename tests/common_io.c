/* common_io.c — test case common_io: .npy, image reading, PNG with text
 * chunks, atomic file writes.
 *
 * References: .npy files written by numpy 1.24 (tests/data/npy), images
 * and their decoded pixels from Pillow 9.4 (tests/data/images, expected
 * pixels in *.expect.npy), all made by tests/data/io_make.py. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* -------------------------------------------------------------- helpers */

static char *read_file(const char *path, size_t *n)
{
    char *d = NULL;
    cm_error err = {0};
    ck_assert_msg(cm_file_read_all(path, &d, n, &err) == CM_OK, "%s", err.msg);
    return d;
}

static void write_file(const char *path, const void *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fwrite(d, 1, n, f) == n);
    ck_assert(fclose(f) == 0);
}

/* A fresh empty folder under the build's scratch folder. */
static const char *fresh_dir(const char *tag)
{
    static char buf[4][4096];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, 4096, "%s/%s-XXXXXX", tu_tmpdir(), tag);
    ck_assert(mkdtemp(b) != NULL);
    return b;
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static const char *join(const char *dir, const char *name)
{
    static char buf[4][4096];
    static int k;
    char *b = buf[k++ & 3], tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/%s", dir, name); /* dir may be an earlier result */
    memcpy(b, tmp, sizeof tmp);
    return b;
}

/* ------------------------------------------------------------------ npy */

START_TEST(test_npy_read_numpy)
{
    cm_error err = {0};
    cm_tensor t;
    ck_assert_msg(cm_npy_read(tu_data("npy/f32_2x3.npy"), &t, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(t.ndim, 2);
    ck_assert_int_eq(t.shape[0], 2);
    ck_assert_int_eq(t.shape[1], 3);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(t.data[i], ((float)i - 2.5f) / 3.0f);
    cm_tensor_release(&t);

    ck_assert_msg(cm_npy_read(tu_data("npy/f32_v2_4.npy"), &t, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(t.ndim, 1);
    ck_assert_int_eq(t.shape[0], 4);
    const float want[4] = {1.5f, -2.25f, (float)1e-8, (float)3e38};
    ck_assert_mem_eq(t.data, want, sizeof want);
    cm_tensor_release(&t);

    ck_assert_msg(cm_npy_read(tu_data("npy/f32_scalar.npy"), &t, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(t.ndim, 0);
    ck_assert_int_eq(cm_tensor_numel(&t), 1);
    ck_assert_float_eq(t.data[0], 7.25f);
    cm_tensor_release(&t);

    ck_assert_msg(cm_npy_read(tu_data("npy/f32_1x4x2x3.npy"), &t, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(t.ndim, 4);
    ck_assert_int_eq(t.shape[1], 4);
    ck_assert_int_eq(cm_tensor_numel(&t), 24);
    for (int i = 0; i < 24; i++) ck_assert_float_eq_tol(t.data[i], -1.0 + 2.0 * i / 23.0, 1e-6);
    cm_tensor_release(&t);
}
END_TEST

START_TEST(test_npy_refuses)
{
    static const struct {
        const char *file;
        cm_status st;
        const char *needle;
    } cases[] = {
        {"npy/f64_2x3.npy", CM_ERR_UNSUPPORTED, "'<f8'"},
        {"npy/i32_3.npy", CM_ERR_UNSUPPORTED, "'<i4'"},
        {"npy/f16_2x3.npy", CM_ERR_UNSUPPORTED, "'<f2'"},
        {"npy/f32be_2x3.npy", CM_ERR_UNSUPPORTED, "big-endian"},
        {"npy/f32_fortran_2x3.npy", CM_ERR_UNSUPPORTED, "Fortran"},
        {"npy/does_not_exist.npy", CM_ERR_IO, "does_not_exist.npy"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cm_error err = {0};
        cm_tensor t;
        cm_status st = cm_npy_read(tu_data(cases[i].file), &t, &err);
        ck_assert_msg(st == cases[i].st, "%s: status %d (%s)", cases[i].file, st, err.msg);
        ck_assert_msg(strstr(err.msg, cases[i].needle) != NULL, "%s: message '%s'", cases[i].file,
                      err.msg);
        ck_assert_msg(strstr(err.msg, ".npy") != NULL, "message does not name the file: %s", err.msg);
        ck_assert(t.data == NULL);
    }
}
END_TEST

START_TEST(test_npy_roundtrip)
{
    const char *dir = fresh_dir("npy");
    cm_error err = {0};
    /* byte-identical to numpy's own file */
    cm_tensor t;
    int64_t s23[2] = {2, 3};
    ck_assert(cm_tensor_alloc(&t, 2, s23, &err) == CM_OK);
    for (int i = 0; i < 6; i++) t.data[i] = ((float)i - 2.5f) / 3.0f;
    ck_assert_msg(cm_npy_write(join(dir, "a.npy"), &t, &err) == CM_OK, "%s", err.msg);
    size_t n1, n2;
    char *mine = read_file(join(dir, "a.npy"), &n1);
    char *np = read_file(tu_data("npy/f32_2x3.npy"), &n2);
    ck_assert_int_eq(n1, n2);
    ck_assert_mem_eq(mine, np, n1);
    cm_free(mine);
    cm_free(np);
    cm_tensor_release(&t);

    const int64_t shapes[][4] = {{5}, {1, 4, 8, 12}, {0, 3}, {1}};
    const int nd[] = {1, 4, 2, 0};
    for (int s = 0; s < 4; s++) {
        ck_assert(cm_tensor_alloc(&t, nd[s], shapes[s], &err) == CM_OK);
        int64_t n = cm_tensor_numel(&t);
        for (int64_t i = 0; i < n; i++) t.data[i] = (float)i * 0.37f - 3.0f;
        ck_assert(cm_npy_write(join(dir, "b.npy"), &t, &err) == CM_OK); /* replaces */
        cm_tensor r;
        ck_assert_msg(cm_npy_read(join(dir, "b.npy"), &r, &err) == CM_OK, "%s", err.msg);
        ck_assert_int_eq(r.ndim, t.ndim);
        for (int d = 0; d < t.ndim; d++) ck_assert_int_eq(r.shape[d], t.shape[d]);
        if (n) ck_assert_mem_eq(r.data, t.data, (size_t)n * 4);
        size_t fn;
        char *raw = read_file(join(dir, "b.npy"), &fn);
        ck_assert_int_eq((fn - (size_t)n * 4) % 64, 0); /* data 64-byte aligned */
        ck_assert_int_eq(raw[fn - (size_t)n * 4 - 1], '\n');
        cm_free(raw);
        cm_tensor_release(&r);
        cm_tensor_release(&t);
    }
    ck_assert_int_eq(dir_entries(dir), 2); /* a.npy, b.npy: no temporaries */
}
END_TEST

/* Truncated files, trailing bytes, hostile headers: errors, never a crash. */
START_TEST(test_npy_bad_files)
{
    const char *dir = fresh_dir("npybad");
    const char *p = join(dir, "x.npy");
    size_t n;
    char *good = read_file(tu_data("npy/f32_2x3.npy"), &n);
    cm_error err = {0};
    cm_tensor t;
    for (size_t k = 0; k < n; k++) {
        write_file(p, good, k);
        cm_status st = cm_npy_read(p, &t, &err);
        ck_assert_msg(st != CM_OK, "prefix of %zu bytes accepted", k);
        ck_assert(t.data == NULL);
        ck_assert(strstr(err.msg, "x.npy") != NULL);
    }
    write_file(p, good, n - 1);
    ck_assert(cm_npy_read(p, &t, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "truncated") != NULL, "%s", err.msg);
    char *more = malloc(n + 1);
    memcpy(more, good, n);
    more[n] = 0;
    write_file(p, more, n + 1);
    ck_assert(cm_npy_read(p, &t, &err) == CM_ERR_FORMAT);
    free(more);

    static const char *headers[] = {
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1, }",
        "{'descr': '<f4', 'fortran_order': False, }",
        "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, ), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) }x",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)",
        "{'descr: '<f4', 'fortran_order': False, 'shape': (2, 3), }",
        "",
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
    };
    for (size_t h = 0; h < sizeof headers / sizeof headers[0]; h++) {
        size_t hl = strlen(headers[h]);
        unsigned char *b = calloc(1, 10 + hl + 1 + 24);
        memcpy(b, "\x93NUMPY\x01\x00", 8);
        b[8] = (unsigned char)((hl + 1) & 0xff);
        b[9] = (unsigned char)((hl + 1) >> 8);
        memcpy(b + 10, headers[h], hl);
        b[10 + hl] = '\n';
        write_file(p, b, 10 + hl + 1 + 24);
        cm_status st = cm_npy_read(p, &t, &err);
        ck_assert_msg(st == CM_ERR_FORMAT, "header %zu accepted (%d): %s", h, st, err.msg);
        free(b);
    }
    /* header length beyond the file; unknown version; not npy at all */
    unsigned char b[16] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0xff, 0xff, '{', '}'};
    write_file(p, b, 12);
    ck_assert(cm_npy_read(p, &t, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "exceeds") != NULL, "%s", err.msg);
    b[6] = 9;
    write_file(p, b, 12);
    ck_assert(cm_npy_read(p, &t, &err) == CM_ERR_UNSUPPORTED);
    write_file(p, "hello world, not numpy", 22);
    ck_assert(cm_npy_read(p, &t, &err) == CM_ERR_FORMAT);
    ck_assert(cm_npy_read(dir, &t, &err) == CM_ERR_IO); /* a folder */
    /* allocation failure */
    cm_alloc_fail_at(1);
    ck_assert(cm_npy_read(tu_data("npy/f32_2x3.npy"), &t, &err) == CM_ERR_NOMEM);
    cm_alloc_fail_at(2);
    ck_assert(cm_npy_read(tu_data("npy/f32_2x3.npy"), &t, &err) == CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
    ck_assert(t.data == NULL);
    cm_free(good);
}
END_TEST

/* --------------------------------------------------------------- images */

static double image_vs_expect(const char *img_rel, const char *expect_rel)
{
    cm_error err = {0};
    cm_image im;
    ck_assert_msg(cm_image_read(tu_data(img_rel), &im, &err) == CM_OK, "%s", err.msg);
    cm_tensor want;
    ck_assert_msg(cm_npy_read(tu_data(expect_rel), &want, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(want.ndim, 3);
    ck_assert_int_eq(want.shape[0], im.h);
    ck_assert_int_eq(want.shape[1], im.w);
    ck_assert_int_eq(want.shape[2], 3);
    double maxd = 0;
    for (int64_t i = 0; i < cm_tensor_numel(&want); i++) {
        double d = fabs((double)im.rgb[i] - want.data[i]);
        if (d > maxd) maxd = d;
    }
    cm_tensor_release(&want);
    cm_image_release(&im);
    ck_assert(im.rgb == NULL);
    return maxd;
}

START_TEST(test_image_png_kinds)
{
    static const char *names[] = {"gray", "gray_alpha", "rgb", "rgba", "palette", "gray16", "rgb16", "one"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "images/%s.png", names[i]);
        snprintf(b, sizeof b, "images/%s.expect.npy", names[i]);
        double d = image_vs_expect(a, b);
        ck_assert_msg(d <= 1e-7, "%s: max |diff| %g vs Pillow", a, d);
    }
}
END_TEST

START_TEST(test_image_jpeg)
{
    /* stb's and libjpeg's IDCTs may round differently: allow 2 levels */
    double d = image_vs_expect("images/rgb.jpg", "images/rgb_jpg.expect.npy");
    fprintf(stderr, "common_io: rgb.jpg max diff vs Pillow %.1f levels\n", d * 255);
    ck_assert_msg(d <= 2.0 / 255 + 1e-6, "rgb.jpg: max |diff| %g levels", d * 255);
    d = image_vs_expect("images/gray.jpg", "images/gray_jpg.expect.npy");
    fprintf(stderr, "common_io: gray.jpg max diff vs Pillow %.1f levels\n", d * 255);
    ck_assert_msg(d <= 2.0 / 255 + 1e-6, "gray.jpg: max |diff| %g levels", d * 255);

    /* Adobe CMYK: Pillow's convert("RGB") gives (190, 114, 46) on every pixel */
    cm_error err = {0};
    cm_image im;
    ck_assert_msg(cm_image_read(tu_data("images/cmyk.jpg"), &im, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(im.w, 8);
    ck_assert_int_eq(im.h, 8);
    const float want[3] = {190 / 255.f, 114 / 255.f, 46 / 255.f};
    for (int i = 0; i < im.w * im.h * 3; i++)
        ck_assert_msg(fabsf(im.rgb[i] - want[i % 3]) <= 2.0f / 255, "cmyk.jpg value %d: %g", i,
                      im.rgb[i] * 255);
    cm_image_release(&im);

    /* the same file without its Adobe marker: 4 channels of unknown meaning */
    size_t n;
    unsigned char *j = (unsigned char *)read_file(tu_data("images/cmyk.jpg"), &n);
    for (size_t i = 2; i + 4 < n; i++) {
        if (j[i] == 0xff && j[i + 1] == 0xee) {
            size_t len = (size_t)j[i + 2] << 8 | j[i + 3];
            memmove(j + i, j + i + 2 + len, n - i - 2 - len);
            n -= 2 + len;
            break;
        }
    }
    ck_assert(cm_image_read_mem(j, n, "noadobe.jpg", &im, &err) == CM_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "CMYK") && strstr(err.msg, "noadobe.jpg"), "%s", err.msg);
    cm_free(j);
}
END_TEST

START_TEST(test_image_bad)
{
    cm_error err = {0};
    cm_image im;
    ck_assert(cm_image_read(tu_data("images/truncated.png"), &im, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "truncated.png") && strstr(err.msg, "corrupt"), "%s", err.msg);
    ck_assert(im.rgb == NULL);
    ck_assert(cm_image_read(tu_data("images/huge_dims.png"), &im, &err) == CM_ERR_UNSUPPORTED);
    ck_assert_msg(strstr(err.msg, "too large") && strstr(err.msg, "20000x20000"), "%s", err.msg);
    ck_assert(cm_image_read(tu_data("images/zero_width.png"), &im, &err) != CM_OK);
    ck_assert_msg(strstr(err.msg, "zero_width.png") != NULL, "%s", err.msg);
    ck_assert(cm_image_read(tu_data("images/nope.png"), &im, &err) == CM_ERR_IO);
    ck_assert(cm_image_read_mem("", 0, "empty.png", &im, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "empty") != NULL, "%s", err.msg);
    ck_assert(cm_image_read_mem("GIF89a......", 12, "x.gif", &im, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "not a PNG or JPEG") != NULL, "%s", err.msg);
    /* every prefix of a PNG and a JPEG: an error or a correctly sized image */
    static const char *files[] = {"images/rgb.png", "images/rgb.jpg", "images/gray16.png"};
    for (int f = 0; f < 3; f++) {
        size_t n;
        char *d = read_file(tu_data(files[f]), &n);
        for (size_t k = 0; k < n; k++) {
            char *c = malloc(k ? k : 1); /* exact size: ASan sees over-reads */
            memcpy(c, d, k);
            cm_status st = cm_image_read_mem(c, k, files[f], &im, &err);
            if (st == CM_OK) {
                ck_assert(im.w > 0 && im.h > 0 && im.rgb);
                cm_image_release(&im);
            } else {
                ck_assert(im.rgb == NULL && err.msg[0]);
            }
            free(c);
        }
        cm_free(d);
    }
    /* a Huffman table with more than 256 codes (stb 2.27 would overrun its
     * tables): refused before stb sees it */
    {
        size_t n;
        unsigned char *j = (unsigned char *)read_file(tu_data("images/rgb.jpg"), &n);
        size_t i = 2;
        while (i + 4 < n && !(j[i] == 0xff && j[i + 1] == 0xc4)) i++;
        ck_assert(i + 21 < n);
        memset(j + i + 5, 0xff, 16); /* 16 code counts of 255 */
        ck_assert(cm_image_read_mem(j, n, "dht.jpg", &im, &err) == CM_ERR_FORMAT);
        ck_assert_msg(strstr(err.msg, "dht.jpg") && strstr(err.msg, "corrupt JPEG"), "%s", err.msg);
        cm_free(j);
    }
    /* an empty IDAT before the image data (stb 2.27 would compute NULL + 0,
     * found by fuzz_image): decodes exactly as the file without it */
    {
        size_t n;
        unsigned char *png = (unsigned char *)read_file(tu_data("images/rgb.png"), &n);
        size_t i = 8;
        while (i + 8 < n && memcmp(png + i + 4, "IDAT", 4) != 0)
            i += 12 + ((size_t)png[i] << 24 | (size_t)png[i + 1] << 16 | (size_t)png[i + 2] << 8 | png[i + 3]);
        ck_assert(i + 8 < n);
        unsigned char *ext = malloc(n + 12);
        memcpy(ext, png, i);
        memcpy(ext + i, "\0\0\0\0IDAT\x35\xaf\x06\x1e", 12);
        memcpy(ext + i + 12, png + i, n - i);
        cm_image a, b;
        ck_assert(cm_image_read_mem(png, n, "rgb.png", &a, &err) == CM_OK);
        ck_assert_msg(cm_image_read_mem(ext, n + 12, "empty_idat.png", &b, &err) == CM_OK, "%s", err.msg);
        ck_assert(a.w == b.w && a.h == b.h);
        ck_assert(memcmp(a.rgb, b.rgb, (size_t)a.w * a.h * 3 * sizeof(float)) == 0);
        cm_image_release(&a);
        cm_image_release(&b);
        free(ext);
        cm_free(png);
        /* the fuzzer's input itself: an error or an image, nothing undefined */
        static const unsigned char crash[] = {
            0x89, 0x50, 0x4e, 0x47, 0xd, 0xa, 0x1a, 0xa, 0x0, 0x0, 0x0, 0xd, 0x49, 0x48, 0x44, 0x52,
            0x0, 0x0, 0x0, 0x2, 0x0, 0x0, 0x0, 0x3, 0x10, 0x2, 0x0, 0x0, 0x0, 0x66, 0x18, 0x95,
            0x95, 0x0, 0x0, 0x0, 0x32, 0xa7, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x1, 0x27, 0x0, 0xd8, 0xff,
            0x0, 0x6f, 0xc5, 0xf9, 0xf6, 0x87, 0x5, 0x54, 0x5d, 0x8b, 0xd7, 0x49, 0x48, 0x44, 0x52, 0x0,
            0x0, 0x0, 0x2, 0x59, 0x72, 0xe9, 0x4b, 0x84, 0x1, 0x0, 0x61, 0x80, 0x0, 0x0, 0xf, 0x65,
            0xab, 0xc0, 0xd2, 0x39, 0x66, 0x7b, 0x90, 0x98, 0xe3, 0x15, 0x49, 0xf8, 0xde, 0xde, 0x36, 0x0,
            0x0, 0x0, 0x0, 0x49, 0x44, 0x41, 0x54, 0xae, 0x42, 0x60, 0x82};
        if (cm_image_read_mem(crash, sizeof crash, "fuzz.png", &a, &err) == CM_OK) cm_image_release(&a);
    }
    cm_alloc_fail_at(2); /* 1: the file buffer, 2: the pixels */
    ck_assert(cm_image_read(tu_data("images/rgb.png"), &im, &err) == CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
}
END_TEST

/* ------------------------------------------------------------------ png */

START_TEST(test_png_encode_roundtrip)
{
    const int w = 13, h = 7;
    uint8_t rgb[13 * 7 * 3];
    for (int i = 0; i < w * h * 3; i++) rgb[i] = (uint8_t)(i * 37 + (i / 5) * 11);
    const char *utf = "\xe7\x8c\xab \xf0\x9f\x90\xb1 caf\xc3\xa9 \xe6\xbc\xa2\xe5\xad\x97"; /* 猫 🐱 café 漢字 */
    cm_png_text texts[] = {
        {"parameters", "a photo of a cat\nNegative prompt: dog\nSteps: 20, Seed: 1234"},
        {"Title", utf},
        {"empty", ""},
    };
    cm_error err = {0};
    uint8_t *png, *png2;
    size_t n, n2;
    ck_assert_msg(cm_png_encode(rgb, w, h, texts, 3, &png, &n, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(cm_png_encode(rgb, w, h, texts, 3, &png2, &n2, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(n, n2);
    ck_assert_mem_eq(png, png2, n); /* deterministic */
    cm_free(png2);

    cm_image im;
    ck_assert_msg(cm_image_read_mem(png, n, "enc.png", &im, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(im.w, w);
    ck_assert_int_eq(im.h, h);
    for (int i = 0; i < w * h * 3; i++) ck_assert_int_eq((int)lrintf(im.rgb[i] * 255.0f), rgb[i]);
    cm_image_release(&im);

    for (int t = 0; t < 3; t++) {
        char *v;
        ck_assert_msg(cm_png_text_get(png, n, texts[t].key, &v, &err) == CM_OK, "%s", err.msg);
        ck_assert_str_eq(v, texts[t].value);
        cm_free(v);
    }
    /* chunk kinds, and all of them before the first IDAT */
    const char *hay = (const char *)png;
    size_t idat = 0, text = 0, itxt = 0;
    for (size_t i = 0; i + 4 <= n; i++) {
        if (!idat && memcmp(hay + i, "IDAT", 4) == 0) idat = i;
        if (!text && memcmp(hay + i, "tEXtparameters", 14) == 0) text = i;
        if (!itxt && memcmp(hay + i, "iTXtTitle", 9) == 0) itxt = i;
    }
    ck_assert(text && itxt && idat && text < idat && itxt < idat);
    char *v;
    ck_assert(cm_png_text_get(png, n, "missing", &v, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "missing") != NULL, "%s", err.msg);
    ck_assert(v == NULL);

    /* truncated anywhere: an error, never a crash or an over-read */
    for (size_t k = 0; k < n; k++) {
        char *c = malloc(k ? k : 1);
        memcpy(c, png, k);
        ck_assert(cm_png_text_get(c, k, "missing", &v, &err) == CM_ERR_FORMAT);
        cm_status st = cm_png_text_get(c, k, "Title", &v, &err);
        if (k < itxt + 4 + 4 + strlen("Title") + 5 + strlen(utf)) ck_assert(st == CM_ERR_FORMAT);
        if (st == CM_OK) cm_free(v);
        free(c);
    }
    /* a chunk length pointing past the end */
    png[itxt - 4] = 0x7f;
    ck_assert(cm_png_text_get(png, n, "Title", &v, &err) == CM_ERR_FORMAT);
    ck_assert_msg(strstr(err.msg, "claims") != NULL, "%s", err.msg);
    cm_free(png);

    /* bad arguments */
    cm_png_text bad_key[] = {{"", "x"}};
    ck_assert(cm_png_encode(rgb, w, h, bad_key, 1, &png, &n, &err) == CM_ERR_USAGE);
    cm_png_text bad_key2[] = {{"caf\xc3\xa9", "x"}};
    ck_assert(cm_png_encode(rgb, w, h, bad_key2, 1, &png, &n, &err) == CM_ERR_USAGE);
    cm_png_text bad_utf[] = {{"k", "\xff\xfe"}};
    ck_assert(cm_png_encode(rgb, w, h, bad_utf, 1, &png, &n, &err) == CM_ERR_USAGE);
    ck_assert(cm_png_encode(rgb, 0, h, NULL, 0, &png, &n, &err) == CM_ERR_USAGE);
    ck_assert(png == NULL);
    cm_alloc_fail_at(1);
    ck_assert(cm_png_encode(rgb, w, h, texts, 3, &png, &n, &err) == CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
}
END_TEST

/* Text chunks written by Pillow: tEXt, iTXt with language and translated
 * keyword, zTXt and compressed iTXt. */
START_TEST(test_png_text_pillow)
{
    size_t n;
    char *png = read_file(tu_data("images/text_pil.png"), &n);
    cm_error err = {0};
    char *v;
    ck_assert_msg(cm_png_text_get(png, n, "parameters", &v, &err) == CM_OK, "%s", err.msg);
    ck_assert_str_eq(v, "a photo of a cat\nSteps: 20, Sampler: Euler, Seed: 1234");
    cm_free(v);
    ck_assert_msg(cm_png_text_get(png, n, "Title", &v, &err) == CM_OK, "%s", err.msg);
    ck_assert_str_eq(v, "\xe7\x8c\xab\xe3\x81\xae\xe5\x86\x99\xe7\x9c\x9f \xf0\x9f\x90\xb1 caf\xc3\xa9");
    cm_free(v);
    ck_assert_msg(cm_png_text_get(png, n, "Comment", &v, &err) == CM_OK, "%s", err.msg);
    char want[256] = "";
    for (int i = 0; i < 20; i++) strcat(want, "compressed ");
    ck_assert_str_eq(v, want);
    cm_free(v);
    ck_assert_msg(cm_png_text_get(png, n, "Description", &v, &err) == CM_OK, "%s", err.msg);
    want[0] = 0;
    for (int i = 0; i < 20; i++) strcat(want, "\xe5\x9c\xa7\xe7\xb8\xae ");
    ck_assert_str_eq(v, want);
    cm_free(v);
    cm_image im;
    ck_assert(cm_image_read_mem(png, n, "text_pil.png", &im, &err) == CM_OK);
    cm_image_release(&im);
    cm_free(png);
}
END_TEST

/* --------------------------------------------------------------- fileio */

START_TEST(test_file_write_atomic)
{
    const char *dir = fresh_dir("atomic");
    const char *p = join(dir, "out.png");
    cm_error err = {0};
    ck_assert_msg(cm_file_write_atomic(p, "hello", 5, 0, &err) == CM_OK, "%s", err.msg);
    size_t n;
    char *d = read_file(p, &n);
    ck_assert_int_eq(n, 5);
    ck_assert_str_eq(d, "hello"); /* NUL-terminated */
    cm_free(d);
    /* refuses to replace without overwrite, keeps the old bytes */
    ck_assert(cm_file_write_atomic(p, "other", 5, 0, &err) == CM_ERR_IO);
    ck_assert_msg(strstr(err.msg, "exists") && strstr(err.msg, "out.png"), "%s", err.msg);
    d = read_file(p, &n);
    ck_assert_str_eq(d, "hello");
    cm_free(d);
    ck_assert(cm_file_write_atomic(p, "replaced!", 9, 1, &err) == CM_OK);
    d = read_file(p, &n);
    ck_assert_str_eq(d, "replaced!");
    cm_free(d);
    ck_assert(cm_file_write_atomic(join(dir, "empty"), "", 0, 0, &err) == CM_OK);
    ck_assert_int_eq(dir_entries(dir), 2);
    struct stat sb;
    ck_assert(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0644);
    /* a 250-byte name (NAME_MAX is 255): the temporary name must fit too */
    char longname[251];
    memset(longname, 'n', 246);
    memcpy(longname + 246, ".png", 5);
    ck_assert_msg(cm_file_write_atomic(join(dir, longname), "long", 4, 0, &err) == CM_OK, "%s", err.msg);
    d = read_file(join(dir, longname), &n);
    ck_assert_str_eq(d, "long");
    cm_free(d);
    ck_assert(unlink(join(dir, longname)) == 0);
    ck_assert_int_eq(dir_entries(dir), 2);

    /* folder missing: error naming the file, nothing created */
    ck_assert(cm_file_write_atomic(join(dir, "no/such/x.png"), "x", 1, 0, &err) == CM_ERR_IO);
    ck_assert_msg(strstr(err.msg, "x.png") != NULL, "%s", err.msg);
    ck_assert_int_eq(dir_entries(dir), 2);
    /* target is a folder */
    ck_assert(mkdir(join(dir, "sub"), 0755) == 0);
    ck_assert(cm_file_write_atomic(join(dir, "sub"), "x", 1, 1, &err) == CM_ERR_IO);
    ck_assert_int_eq(dir_entries(dir), 3);
    ck_assert_int_eq(dir_entries(join(dir, "sub")), 0);
    /* read-only folder (root ignores permissions) */
    if (geteuid() != 0) {
        const char *ro = join(dir, "sub");
        ck_assert(chmod(ro, 0555) == 0);
        ck_assert(cm_file_write_atomic(join(ro, "x.png"), "x", 1, 0, &err) == CM_ERR_IO);
        ck_assert_int_eq(dir_entries(ro), 0);
        chmod(ro, 0755);
    }
    /* reading: missing file, folder */
    char *x;
    ck_assert(cm_file_read_all(join(dir, "nope"), &x, &n, &err) == CM_ERR_IO);
    ck_assert(x == NULL);
    ck_assert(cm_file_read_all(dir, &x, &n, &err) == CM_ERR_IO);
    cm_alloc_fail_at(1);
    ck_assert(cm_file_write_atomic(join(dir, "y"), "x", 1, 0, &err) == CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
    ck_assert_int_eq(dir_entries(dir), 3);
}
END_TEST

/* Disk full: a child limited by RLIMIT_FSIZE (SIGXFSZ ignored, so write
 * fails with EFBIG) must get an error and leave nothing behind. */
START_TEST(test_file_write_full_disk)
{
    const char *dir = fresh_dir("full");
    const char *p = join(dir, "big.png");
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {4096, 4096};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(10);
        size_t n = 1 << 20;
        char *buf = calloc(1, n);
        cm_error err = {0};
        cm_status st = cm_file_write_atomic(p, buf, n, 0, &err);
        if (st != CM_ERR_IO) _exit(11);
        if (!strstr(err.msg, "big.png")) _exit(12);
        _exit(dir_entries(dir) == 0 ? 0 : 13);
    }
    int status = 0;
    ck_assert(waitpid(pid, &status, 0) == pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    ck_assert_int_eq(dir_entries(dir), 0);
}
END_TEST

TCase *tc_common_io(void)
{
    TCase *tc = tu_tcase("common_io");
    tcase_add_test(tc, test_npy_read_numpy);
    tcase_add_test(tc, test_npy_refuses);
    tcase_add_test(tc, test_npy_roundtrip);
    tcase_add_test(tc, test_npy_bad_files);
    tcase_add_test(tc, test_image_png_kinds);
    tcase_add_test(tc, test_image_jpeg);
    tcase_add_test(tc, test_image_bad);
    tcase_add_test(tc, test_png_encode_roundtrip);
    tcase_add_test(tc, test_png_text_pillow);
    tcase_add_test(tc, test_file_write_atomic);
    tcase_add_test(tc, test_file_write_full_disk);
    return tc;
}
