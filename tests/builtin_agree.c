/* builtin_agree.c — test case builtin_agree: `stipple txt2img` with no -m
 * (the built-in model, weights/builtin/stipple-builtin.safetensors, found
 * next to the binary) reproduces the PyTorch sampler of the training
 * recipe (weights/builtin/agree.py: same F16 weights, same initial noise,
 * DDIM leading, CFG 7.5, 10 steps): final latents within 1e-3 max-abs.
 * Vectors: tests/data/builtin/agree_{noise,final}.npy + agree.json, made by
 * agree.py after each export of the model.
 */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

START_TEST(builtin_agree_ddim)
{
    char dir[2048], cmd[8192];
    snprintf(dir, sizeof dir, "%s/builtin_agree", tu_tmpdir());
    mkdir(dir, 0755);
    snprintf(cmd, sizeof cmd,
             "'%s' txt2img -p 'a red apple on a blue background' --steps 10 --cfg 7.5 --sampler ddim "
             "--schedule leading --init-noise '%s' --save-latents '%s/lat' -o '%s/out.png' --overwrite "
             "--quiet --threads 2",
             tu_stipple(), tu_data("builtin/agree_noise.npy"), dir, dir);
    char *err = NULL;
    int rc = tu_run(cmd, NULL, &err);
    ck_assert_msg(rc == 0, "%s\nexit %d: %s", cmd, rc, err ? err : "");
    cm_free(err);
    char path[2200];
    snprintf(path, sizeof path, "%s/lat/final.npy", dir);
    cm_tensor got = {0}, want = {0};
    cm_error e = {0};
    ck_assert_msg(cm_npy_read(path, &got, &e) == CM_OK, "%s", e.msg);
    ck_assert_msg(cm_npy_read(tu_data("builtin/agree_final.npy"), &want, &e) == CM_OK, "%s", e.msg);
    int64_t n = cm_tensor_numel(&want);
    ck_assert_int_eq(cm_tensor_numel(&got), n);
    double maxd = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got.data[i] - want.data[i]);
        if (d > maxd) maxd = d;
    }
    fprintf(stderr, "builtin agree: max|stipple - pytorch| = %.3g over %lld values\n", maxd, (long long)n);
    ck_assert_msg(maxd <= 1e-3, "final latents differ from the PyTorch sampler by %g (> 1e-3)", maxd);
    cm_tensor_release(&got);
    cm_tensor_release(&want);
}
END_TEST

TCase *tc_builtin_agree(void)
{
    TCase *tc = tu_tcase("builtin_agree");
    tcase_add_test(tc, builtin_agree_ddim);
    return tc;
}
