/* vae_taesd.c — test case vae_taesd: the tiny autoencoder (vae/taesd.c)
 * behind vae_create's "AutoencoderTiny" dispatch, run on the TAEF2 weights
 * inside the built-in model (weights/builtin/stipple-builtin.safetensors),
 * against TAEF2's reference vectors (golden/taef2/NAME.f32: the original
 * PyTorch module in float32 on the same F16 weights; images in [0, 1]).
 */
#include "testutil.h"
#include "vae.h"

#include <stdio.h>
#include <stdlib.h>

static const char *builtin_path(void) { return tu_data("../../weights/builtin/stipple-builtin.safetensors"); }

/* Raw little-endian float32 file of exactly n values. */
static float *read_f32(const char *rel, int64_t n)
{
    const char *p = tu_data(rel);
    FILE *f = fopen(p, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", p);
    float *x = malloc((size_t)n * sizeof(float));
    ck_assert(x);
    ck_assert_msg(fread(x, sizeof(float), (size_t)n, f) == (size_t)n, "%s: short file", p);
    fclose(f);
    return x;
}

typedef struct {
    wt_model *m;
    vae_model *v;
} fixture;

static fixture open_builtin(void)
{
    fixture fx;
    cm_error err = {0};
    fx.m = wt_model_open(builtin_path(), &err);
    ck_assert_msg(fx.m != NULL, "cannot open %s: %s", builtin_path(), err.msg);
    fx.v = vae_create(fx.m, &err);
    ck_assert_msg(fx.v != NULL, "vae_create: %s", err.msg);
    return fx;
}

static void close_builtin(fixture *fx)
{
    vae_free(fx->v);
    wt_model_close(fx->m);
}

/* Decoder output in [-1, 1] -> the reference's [0, 1]. */
static void to01(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = (x[i] + 1.0f) * 0.5f;
}

START_TEST(taesd_config)
{
    fixture fx = open_builtin();
    ck_assert_int_eq(vae_latent_channels(fx.v), 32);
    ck_assert_int_eq(vae_downscale(fx.v), 8);
    ck_assert(vae_decode_bytes(fx.v, 8, 8) > 0);
    ck_assert(vae_encode_bytes(fx.v, 64, 64) > 0);
    close_builtin(&fx);
}
END_TEST

START_TEST(taesd_decode_golden)
{
    fixture fx = open_builtin();
    cm_error err = {0};
    /* apple latent (32, 8, 8) -> (3, 64, 64) */
    float *z = read_f32("golden/taef2/apple_latent_32x8x8.f32", 32 * 64);
    float *want = read_f32("golden/taef2/apple_decoded_3x64x64.f32", 3 * 4096);
    float *got = malloc(3 * 4096 * sizeof(float));
    ck_assert_msg(vae_decode(fx.v, z, 1, 8, 8, got, &err) == CM_OK, "%s", err.msg);
    to01(got, 3 * 4096);
    TU_ASSERT_CLOSE("taef2 decode apple", got, want, 3 * 4096, 1e-4);
    /* tiled decoding of the tiny decoder is one plain call */
    float *tiled = malloc(3 * 4096 * sizeof(float));
    ck_assert_msg(vae_decode_tiled(fx.v, z, 1, 8, 8, 4, 1, tiled, &err) == CM_OK, "%s", err.msg);
    to01(tiled, 3 * 4096);
    for (int i = 0; i < 3 * 4096; i++) ck_assert_float_eq(tiled[i], got[i]);
    free(z), free(want), free(got), free(tiled);
    /* random latent (32, 4, 4) -> (3, 32, 32), on 1 and 2 threads */
    z = read_f32("golden/taef2/randn_seed1234_latent_32x4x4.f32", 32 * 16);
    want = read_f32("golden/taef2/randn_seed1234_decoded_3x32x32.f32", 3 * 1024);
    got = malloc(3 * 1024 * sizeof(float));
    float *got1 = malloc(3 * 1024 * sizeof(float));
    cm_threads_set(2);
    ck_assert_msg(vae_decode(fx.v, z, 1, 4, 4, got, &err) == CM_OK, "%s", err.msg);
    cm_threads_set(1);
    ck_assert_msg(vae_decode(fx.v, z, 1, 4, 4, got1, &err) == CM_OK, "%s", err.msg);
    cm_threads_set(0);
    for (int i = 0; i < 3 * 1024; i++) ck_assert_msg(got[i] == got1[i], "thread counts differ at %d", i);
    to01(got, 3 * 1024);
    TU_ASSERT_CLOSE("taef2 decode randn", got, want, 3 * 1024, 1e-4);
    free(z), free(want), free(got), free(got1);
    close_builtin(&fx);
}
END_TEST

START_TEST(taesd_encode_golden)
{
    fixture fx = open_builtin();
    cm_error err = {0};
    float *img = read_f32("golden/taef2/apple_image_3x64x64.f32", 3 * 4096);
    float *want = read_f32("golden/taef2/apple_latent_32x8x8.f32", 32 * 64);
    for (int i = 0; i < 3 * 4096; i++) img[i] = img[i] * 2.0f - 1.0f; /* vae.h range */
    float mean[32 * 64], logvar[32 * 64];
    ck_assert_msg(vae_encode(fx.v, img, 1, 64, 64, mean, logvar, &err) == CM_OK, "%s", err.msg);
    TU_ASSERT_CLOSE("taef2 encode apple", mean, want, 32 * 64, 1e-4);
    for (int i = 0; i < 32 * 64; i++) ck_assert_float_eq(logvar[i], -30.0f);
    free(img), free(want);
    close_builtin(&fx);
}
END_TEST

START_TEST(taesd_limits)
{
    fixture fx = open_builtin();
    cm_error err = {0};
    float z[32], img[3 * 64], mean[32], logvar[32];
    for (int i = 0; i < 32; i++) z[i] = 0.0f;
    ck_assert_int_ne(vae_decode(fx.v, z, 0, 1, 1, img, &err), CM_OK);
    ck_assert_int_ne(vae_decode(fx.v, z, 1, 0, 1, img, &err), CM_OK);
    ck_assert_int_ne(vae_encode(fx.v, img, 1, 7, 8, mean, logvar, &err), CM_OK);
    ck_assert_msg(err.msg[0] != 0, "no message");
    close_builtin(&fx);
}
END_TEST

TCase *tc_vae_taesd(void)
{
    TCase *tc = tu_tcase("vae_taesd");
    tcase_add_test(tc, taesd_config);
    tcase_add_test(tc, taesd_decode_golden);
    tcase_add_test(tc, taesd_encode_golden);
    tcase_add_test(tc, taesd_limits);
    return tc;
}
