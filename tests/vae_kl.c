/* vae_kl.c — test case vae_kl: the KL autoencoder (vae/kl.c) against the
 * diffusers AutoencoderKL goldens of sd1-tiny, sd2-tiny and sd3-tiny
 * (golden/<dir>/vae_decode.safetensors, vae_encode.safetensors, computed
 * in float32 from the F16 model files under golden/<dir>/model/), block-level
 * intermediates, thread determinism, tiled decoding, bad input.
 */
#include "testutil.h"
#include "vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static const char *model_path(const char *dir)
{
    static char rel[256];
    snprintf(rel, sizeof rel, "golden/%s/model/%s_f16.safetensors", dir, dir);
    return tu_data(rel);
}

static wt_model *open_model(const char *path)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(path, &err);
    ck_assert_msg(m != NULL, "cannot open %s: %s", path, err.msg);
    return m;
}

static vae_model *make_vae(const wt_model *m)
{
    cm_error err = {0};
    vae_model *v = vae_create(m, &err);
    ck_assert_msg(v != NULL, "vae_create: %s", err.msg);
    return v;
}

/* Trace hook: compare each block output with the golden tensor of the
 * same name (NCHW, batch 1) at 1e-4 of its largest magnitude. */
typedef struct {
    const char *golden;
    int checked, failed;
} trace_ctx;

static void trace_cmp(void *vctx, const char *name, int b, const float *x, int C, int H, int W)
{
    trace_ctx *t = vctx;
    cm_tensor g = {0};
    tu_golden(t->golden, name, &g);
    int64_t P = (int64_t)H * W, n = (int64_t)C * P;
    if (b != 0 || cm_tensor_numel(&g) != n) {
        fprintf(stderr, "FAIL %s: golden has %lld values, got %lld\n", name,
                (long long)cm_tensor_numel(&g), (long long)n);
        t->failed++;
    } else {
        float *nchw = malloc((size_t)n * sizeof(float));
        ck_assert(nchw);
        for (int c = 0; c < C; c++)
            for (int64_t i = 0; i < P; i++) nchw[c * P + i] = x[i * C + c];
        if (!tu_close(name, nchw, g.data, n, 1e-4)) t->failed++;
        free(nchw);
    }
    t->checked++;
    cm_tensor_release(&g);
}

/* u8 agreement: never off by more than 1, >= 99.9 % exact. */
static void check_u8(const char *what, const uint8_t *got, const float *want, int64_t n)
{
    int64_t exact = 0, maxd = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t d = llabs((int64_t)got[i] - (int64_t)lrintf(want[i]));
        if (d == 0) exact++;
        if (d > maxd) maxd = d;
    }
    fprintf(stderr, "%s %s: %lld/%lld exact, max diff %lld\n", maxd <= 1 ? "ok  " : "FAIL", what,
            (long long)exact, (long long)n, (long long)maxd);
    ck_assert_msg(maxd <= 1, "%s: u8 off by %lld", what, (long long)maxd);
    ck_assert_msg(exact * 1000 >= n * 999, "%s: only %lld of %lld exact", what, (long long)exact,
                  (long long)n);
}

/* ------------------------------------------------------------------------
 * Decoder
 * ---------------------------------------------------------------------- */

static void run_decode(const char *dir, int intermediates)
{
    char gold[256];
    snprintf(gold, sizeof gold, "golden/%s/vae_decode.safetensors", dir);
    wt_model *m = open_model(model_path(dir));
    vae_model *v = make_vae(m);
    cm_tensor lat = {0}, z = {0}, dec = {0}, u8 = {0};
    tu_golden(gold, "latents", &lat);
    tu_golden(gold, "z", &z);
    tu_golden(gold, "decoded", &dec);
    tu_golden(gold, "image_u8", &u8);
    ck_assert_int_eq(z.ndim, 4);
    int B = (int)z.shape[0], h = (int)z.shape[2], w = (int)z.shape[3];
    ck_assert_int_eq(z.shape[1], vae_latent_channels(v));

    /* the pipeline's unscaling: z = latents / scaling_factor */
    float *zz = malloc((size_t)cm_tensor_numel(&z) * sizeof(float));
    vae_unscale_latent(v, lat.data, cm_tensor_numel(&lat), zz);
    TU_ASSERT_CLOSE("z = latents / scaling", zz, z.data, cm_tensor_numel(&z), 1e-6);
    free(zz);

    trace_ctx tc = {gold, 0, 0};
    if (intermediates) vae_set_trace(v, trace_cmp, &tc);
    int64_t n = cm_tensor_numel(&dec);
    ck_assert_int_eq(n, (int64_t)B * 3 * h * 8 * w * 8);
    float *img = malloc((size_t)n * sizeof(float));
    cm_error err = {0};
    double t0 = cm_time_now();
    ck_assert_msg(vae_decode(v, z.data, B, h, w, img, &err) == CM_OK, "%s", err.msg);
    fprintf(stderr, "     %s decode %dx%d: %.3f s\n", dir, h, w, cm_time_now() - t0);
    if (intermediates) {
        fprintf(stderr, "     %d intermediates checked\n", tc.checked);
        ck_assert_int_eq(tc.failed, 0);
        ck_assert_int_eq(tc.checked, 3 + 4);
    }
    TU_ASSERT_CLOSE("decoded", img, dec.data, n, 1e-4);
    uint8_t *rgb = malloc((size_t)n);
    vae_to_u8(img, B, h * 8, w * 8, rgb);
    check_u8("image_u8", rgb, u8.data, n);
    free(rgb);
    free(img);
    cm_tensor_release(&lat);
    cm_tensor_release(&z);
    cm_tensor_release(&dec);
    cm_tensor_release(&u8);
    vae_free(v);
    wt_model_close(m);
}

START_TEST(test_decode_sd1) { run_decode("sd1-tiny", 1); }
END_TEST

START_TEST(test_decode_sd2) { run_decode("sd2-tiny", 0); }
END_TEST

/* SD3: 16 latent channels, shift factor, no quant_conv / post_quant_conv. */
START_TEST(test_decode_sd3) { run_decode("sd3-tiny", 0); }
END_TEST

/* ------------------------------------------------------------------------
 * Encoder
 * ---------------------------------------------------------------------- */

static void run_encode(const char *dir, int intermediates)
{
    char gold[256];
    snprintf(gold, sizeof gold, "golden/%s/vae_encode.safetensors", dir);
    wt_model *m = open_model(model_path(dir));
    vae_model *v = make_vae(m);
    cm_tensor u8 = {0}, mean = {0}, logvar = {0}, std = {0}, ms = {0};
    tu_golden(gold, "image_u8", &u8);
    tu_golden(gold, "mean", &mean);
    tu_golden(gold, "logvar", &logvar);
    tu_golden(gold, "std", &std);
    tu_golden(gold, "mean_scaled", &ms);
    int H = (int)u8.shape[0], W = (int)u8.shape[1];
    int64_t np = (int64_t)H * W * 3, nl = cm_tensor_numel(&mean);
    uint8_t *rgb = malloc((size_t)np);
    for (int64_t i = 0; i < np; i++) rgb[i] = (uint8_t)u8.data[i];
    float *img = malloc((size_t)np * sizeof(float));
    vae_from_u8(rgb, 1, H, W, img);

    trace_ctx tc = {gold, 0, 0};
    if (intermediates) vae_set_trace(v, trace_cmp, &tc);
    float *gm = malloc((size_t)nl * sizeof(float)), *gl = malloc((size_t)nl * sizeof(float));
    float *t = malloc((size_t)nl * sizeof(float));
    cm_error err = {0};
    ck_assert_msg(vae_encode(v, img, 1, H, W, gm, gl, &err) == CM_OK, "%s", err.msg);
    if (intermediates) {
        fprintf(stderr, "     %d intermediates checked\n", tc.checked);
        ck_assert_int_eq(tc.failed, 0);
        ck_assert_int_eq(tc.checked, 4 + 3);
    }
    TU_ASSERT_CLOSE("mean", gm, mean.data, nl, 1e-4);
    TU_ASSERT_CLOSE("logvar", gl, logvar.data, nl, 1e-4);
    for (int64_t i = 0; i < nl; i++) t[i] = expf(0.5f * gl[i]);
    TU_ASSERT_CLOSE("std", t, std.data, nl, 1e-4);
    vae_latent_from_moments(gm, gl, NULL, nl, vae_scaling_factor(v), vae_shift_factor(v), t);
    TU_ASSERT_CLOSE("mean_scaled", t, ms.data, nl, 1e-4);
    free(rgb);
    free(img);
    free(gm);
    free(gl);
    free(t);
    cm_tensor_release(&u8);
    cm_tensor_release(&mean);
    cm_tensor_release(&logvar);
    cm_tensor_release(&std);
    cm_tensor_release(&ms);
    vae_free(v);
    wt_model_close(m);
}

START_TEST(test_encode_sd1) { run_encode("sd1-tiny", 1); }
END_TEST

START_TEST(test_encode_sd2) { run_encode("sd2-tiny", 0); }
END_TEST

START_TEST(test_encode_sd3) { run_encode("sd3-tiny", 0); }
END_TEST

/* The posterior sample helper against hand-computed values. */
START_TEST(test_moments)
{
    float mean[3] = {1.0f, -2.0f, 0.5f}, logvar[3] = {0.0f, 2.0f, -30.0f}, eps[3] = {1.0f, 0.5f, 2.0f};
    float out[3];
    vae_latent_from_moments(mean, logvar, eps, 3, 0.5f, 0.0f, out);
    ck_assert_float_eq_tol(out[0], 1.0f, 1e-6f);                        /* (1 + 1*1) * 0.5 */
    ck_assert_float_eq_tol(out[1], 0.5f * (-2.0f + expf(1.0f) * 0.5f), 1e-6f);
    vae_latent_from_moments(mean, logvar, NULL, 3, 2.0f, 0.25f, out);  /* (mean - shift) * s */
    ck_assert_float_eq_tol(out[0], 1.5f, 1e-6f);
    ck_assert_float_eq_tol(out[2], 0.5f, 1e-6f);
    float img[3] = {-5.0f, 5.0f, NAN};
    uint8_t u8[3];
    vae_to_u8(img, 1, 1, 1, u8);
    ck_assert_int_eq(u8[0], 0);
    ck_assert_int_eq(u8[1], 255);
    ck_assert_int_eq(u8[2], 0);
}
END_TEST

/* ------------------------------------------------------------------------
 * Threads: 1 and 2 threads give the same bytes
 * ---------------------------------------------------------------------- */

START_TEST(test_threads)
{
    const char *gold = "golden/sd1-tiny/vae_decode.safetensors";
    wt_model *m = open_model(model_path("sd1-tiny"));
    vae_model *v = make_vae(m);
    cm_tensor z = {0};
    tu_golden(gold, "z", &z);
    int h = (int)z.shape[2], w = (int)z.shape[3];
    size_t n = (size_t)3 * h * 8 * w * 8;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    float *ma = malloc(2 * (size_t)4 * h * w * sizeof(float)), *mb = malloc(2 * (size_t)4 * h * w * sizeof(float));
    cm_error err = {0};
    int saved = cm_threads_get();
    cm_threads_set(1);
    ck_assert(vae_decode(v, z.data, 1, h, w, a, &err) == CM_OK);
    ck_assert(vae_encode(v, a, 1, h * 8, w * 8, ma, ma + 4 * h * w, &err) == CM_OK);
    cm_threads_set(2);
    ck_assert(vae_decode(v, z.data, 1, h, w, b, &err) == CM_OK);
    ck_assert(vae_encode(v, b, 1, h * 8, w * 8, mb, mb + 4 * h * w, &err) == CM_OK);
    cm_threads_set(saved);
    ck_assert_msg(memcmp(a, b, n * sizeof(float)) == 0, "decode differs between 1 and 2 threads");
    ck_assert_msg(memcmp(ma, mb, 2 * (size_t)4 * h * w * sizeof(float)) == 0,
                  "encode differs between 1 and 2 threads");
    free(a);
    free(b);
    free(ma);
    free(mb);
    cm_tensor_release(&z);
    vae_free(v);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * Batches: row b of a batched call equals the single-row call on row b
 * ---------------------------------------------------------------------- */

START_TEST(test_batch)
{
    wt_model *m = open_model(model_path("sd1-tiny"));
    vae_model *v = make_vae(m);
    cm_tensor z = {0};
    tu_golden("golden/sd1-tiny/vae_decode.safetensors", "z", &z);
    int h = (int)z.shape[2], w = (int)z.shape[3], L = 4;
    size_t nz = (size_t)L * h * w, ni = (size_t)3 * h * 8 * w * 8;
    float *z2 = malloc(2 * nz * sizeof(float)), *img2 = malloc(2 * ni * sizeof(float));
    float *img1 = malloc(ni * sizeof(float));
    float *m2 = malloc(4 * nz * sizeof(float)), *m1 = malloc(2 * nz * sizeof(float));
    for (size_t i = 0; i < nz; i++) {
        z2[i] = z.data[i];
        z2[nz + i] = -0.5f * z.data[nz - 1 - i];
    }
    cm_error err = {0};
    ck_assert(vae_decode(v, z2, 2, h, w, img2, &err) == CM_OK);
    ck_assert(vae_encode(v, img2, 2, h * 8, w * 8, m2, m2 + 2 * nz, &err) == CM_OK);
    for (int b = 0; b < 2; b++) {
        ck_assert(vae_decode(v, z2 + b * nz, 1, h, w, img1, &err) == CM_OK);
        ck_assert_msg(memcmp(img1, img2 + b * ni, ni * sizeof(float)) == 0, "decode row %d", b);
        ck_assert(vae_encode(v, img1, 1, h * 8, w * 8, m1, m1 + nz, &err) == CM_OK);
        ck_assert_msg(memcmp(m1, m2 + b * nz, nz * sizeof(float)) == 0, "mean row %d", b);
        ck_assert_msg(memcmp(m1 + nz, m2 + 2 * nz + b * nz, nz * sizeof(float)) == 0,
                      "logvar row %d", b);
    }
    free(z2);
    free(img2);
    free(img1);
    free(m2);
    free(m1);
    cm_tensor_release(&z);
    vae_free(v);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * Tiled decoding: one tile == untiled exactly; small overlapping tiles
 * stay close (GroupNorm statistics differ per tile, so not exact).
 * ---------------------------------------------------------------------- */

START_TEST(test_tiled)
{
    const char *gold = "golden/sd1-tiny/vae_decode.safetensors";
    wt_model *m = open_model(model_path("sd1-tiny"));
    vae_model *v = make_vae(m);
    cm_tensor z = {0};
    tu_golden(gold, "z", &z);
    int h = (int)z.shape[2], w = (int)z.shape[3];
    size_t n = (size_t)3 * h * 8 * w * 8;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    cm_error err = {0};
    ck_assert(vae_decode(v, z.data, 1, h, w, a, &err) == CM_OK);
    ck_assert_msg(vae_decode_tiled(v, z.data, 1, h, w, 16, 4, b, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(memcmp(a, b, n * sizeof(float)) == 0, "one-tile decode differs from untiled");
    ck_assert_msg(vae_decode_tiled(v, z.data, 1, h, w, 6, 3, b, &err) == CM_OK, "%s", err.msg);
    double maxd = 0, maxa = 0, se = 0, sa = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > maxd) maxd = d;
        if (fabs(a[i]) > maxa) maxa = fabs(a[i]);
        se += d * d;
        sa += (double)a[i] * a[i];
    }
    fprintf(stderr, "     tiled 6/3 vs untiled on %dx%d: max|diff| %.4g (max|ref| %.4g), rel-L2 %.4g\n",
            h, w, maxd, maxa, sqrt(se / sa));
    /* The tiny random VAE is far more sensitive to GroupNorm statistics
     * than a trained one; this bounds gross blending errors (seams, gaps,
     * misplaced tiles), which show up as O(1) relative differences. */
    ck_assert_msg(sqrt(se / sa) < 0.25, "tiled decode too far from untiled");
    for (size_t i = 0; i < n; i++) ck_assert(isfinite(b[i]));
    free(a);
    free(b);
    cm_tensor_release(&z);
    vae_free(v);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * Limits: bad files, bad arguments, allocation failure
 * ---------------------------------------------------------------------- */

/* Copy the sd1-tiny model with one header string replaced by another of
 * the same length. */
static const char *patched_model(const char *name, const char *from, const char *to)
{
    return tu_st_patch(model_path("sd1-tiny"), name, from, to);
}

START_TEST(test_missing_tensor)
{
    const char *path = patched_model("vae_missing.safetensors",
                                     "\"first_stage_model.decoder.mid.attn_1.q.weight\"",
                                     "\"first_stage_model.decoder.mid.attn_1.Q.weight\"");
    wt_model *m = open_model(path);
    cm_error err = {0};
    vae_model *v = vae_create(m, &err);
    ck_assert(v == NULL);
    ck_assert_int_ne(err.status, CM_OK);
    fprintf(stderr, "     error: %s\n", err.msg);
    ck_assert_msg(strstr(err.msg, "first_stage_model.decoder.mid.attn_1.q.weight") != NULL,
                  "message does not name the tensor: %s", err.msg);
    ck_assert(strchr(err.msg, '\n') == NULL);
    wt_model_close(m);
}
END_TEST

/* Diffusers-style 2-d attention weights [C,C] give the same result as the
 * LDM 1x1-conv form [C,C,1,1]. */
START_TEST(test_attn_2d)
{
    const char *key = "\"first_stage_model.decoder.mid.attn_1.q.weight\":{\"dtype\":\"F16\",\"shape\":";
    char from[256], to[256];
    snprintf(from, sizeof from, "%s[64,64,1,1]", key);
    snprintf(to, sizeof to, "%s[64,64]    ", key);
    const char *path = patched_model("vae_attn2d.safetensors", from, to);
    wt_model *m2 = open_model(path), *m4 = open_model(model_path("sd1-tiny"));
    ck_assert_int_eq(wt_model_get(m2, "first_stage_model.decoder.mid.attn_1.q.weight")->ndim, 2);
    vae_model *v2 = make_vae(m2), *v4 = make_vae(m4);
    cm_tensor z = {0};
    tu_golden("golden/sd1-tiny/vae_decode.safetensors", "z", &z);
    int h = (int)z.shape[2], w = (int)z.shape[3];
    size_t n = (size_t)3 * h * 8 * w * 8;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    cm_error err = {0};
    ck_assert(vae_decode(v2, z.data, 1, h, w, a, &err) == CM_OK);
    ck_assert(vae_decode(v4, z.data, 1, h, w, b, &err) == CM_OK);
    ck_assert(memcmp(a, b, n * sizeof(float)) == 0);
    free(a);
    free(b);
    cm_tensor_release(&z);
    vae_free(v2);
    vae_free(v4);
    wt_model_close(m2);
    wt_model_close(m4);
}
END_TEST

START_TEST(test_bad_args)
{
    wt_model *m = open_model(model_path("sd1-tiny"));
    vae_model *v = make_vae(m);
    float z[4 * 2 * 2] = {0}, img[3 * 16 * 16], mean[4], lv[4];
    cm_error err = {0};
    ck_assert_int_eq(vae_decode(v, z, 1, 0, 2, img, &err), CM_ERR_USAGE);
    ck_assert_int_eq(vae_decode(v, z, 0, 2, 2, img, &err), CM_ERR_USAGE);
    ck_assert_int_eq(vae_decode(v, NULL, 1, 2, 2, img, &err), CM_ERR_USAGE);
    ck_assert_int_eq(vae_decode(v, z, 1, 1 << 30, 1 << 30, img, &err), CM_ERR_USAGE);
    ck_assert_int_eq(vae_encode(v, img, 1, 12, 16, mean, lv, &err), CM_ERR_USAGE); /* 12 % 8 */
    ck_assert_int_eq(vae_encode(v, img, 1, 0, 8, mean, lv, &err), CM_ERR_USAGE);
    ck_assert_int_eq(vae_decode_tiled(v, z, 1, 2, 2, 2, 2, img, &err), CM_ERR_USAGE);
    ck_assert_int_eq(vae_decode_tiled(v, z, 1, 2, 2, 0, 0, img, &err), CM_ERR_USAGE);
    ck_assert(vae_decode_bytes(v, 64, 64) > 0);
    ck_assert(vae_decode_bytes(v, 1 << 30, 1 << 30) == 0);
    /* a 1x1 latent is valid */
    ck_assert_msg(vae_decode(v, z, 1, 1, 1, img, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(vae_encode(v, img, 1, 8, 8, mean, lv, &err) == CM_OK, "%s", err.msg);
    /* the working buffers are the first allocations: each failure is clean */
    for (int k = 1; k <= 3; k++) {
        cm_alloc_fail_at(k);
        cm_status st = vae_decode(v, z, 1, 2, 2, img, &err);
        cm_alloc_fail_at(0);
        ck_assert_int_eq(st, CM_ERR_NOMEM);
    }
    vae_free(v);
    vae_free(NULL);
    ck_assert(vae_create(NULL, &err) == NULL);
    wt_model_close(m);
}
END_TEST

TCase *tc_vae_kl(void)
{
    TCase *tc = tu_tcase("vae_kl");
    tcase_add_test(tc, test_decode_sd1);
    tcase_add_test(tc, test_decode_sd2);
    tcase_add_test(tc, test_encode_sd1);
    tcase_add_test(tc, test_encode_sd2);
    tcase_add_test(tc, test_decode_sd3);
    tcase_add_test(tc, test_encode_sd3);
    tcase_add_test(tc, test_moments);
    tcase_add_test(tc, test_threads);
    tcase_add_test(tc, test_batch);
    tcase_add_test(tc, test_tiled);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_attn_2d);
    tcase_add_test(tc, test_bad_args);
    return tc;
}
