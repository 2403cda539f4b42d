/* cmd_cli.c — whole-program tests of `stipple`: the command-line contract
 * (exit codes, one-line errors) and end-to-end reproduction of the
 * reference pipelines (diffusers, goldens in tests/data/golden) from the
 * real binary: every step's latent via --save-latents and the final PNG.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

START_TEST(test_usage_errors)
{
    tu_expect_error("frobnicate", 2, "unknown command");
    tu_expect_error("--frob", 2, "unknown option");
    tu_expect_error("txt2img --frob 1 -p x", 2, "--frob");
    tu_expect_error("txt2img -p", 2, "needs a value");
    tu_expect_error("txt2img", 2, "-p PROMPT is required");
    tu_expect_error("txt2img -p x --steps 0", 2, "--steps");
    tu_expect_error("txt2img -p x --cfg nan", 2, "--cfg");
    tu_expect_error("txt2img -p x -W 100", 2, "multiple of 8");
    tu_expect_error("txt2img -p x -W 0", 2, "--width");
    tu_expect_error("txt2img -p x -H -64", 2, "--height");
    tu_expect_error("txt2img -p x --seed 18446744073709551616", 2, "--seed");
    tu_expect_error("txt2img -p x --seed -2", 2, "--seed");
    tu_expect_error("txt2img -p x --sampler plms", 2, "plms");
    tu_expect_error("txt2img -p x --rng gpu", 2, "--rng");
    tu_expect_error("txt2img -p x -m /nonexistent/model.safetensors", 1, "/nonexistent/model.safetensors");
}
END_TEST

START_TEST(test_help_version)
{
    char cmd[4096], *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' --version", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, NULL), 0);
    ck_assert(out && !strncmp(out, "stipple ", 8));
    cm_free(out);
    snprintf(cmd, sizeof cmd, "'%s' txt2img --help", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, NULL), 0);
    ck_assert(out && strstr(out, "--save-latents"));
    cm_free(out);
}
END_TEST

/* ------------------------------------------------- golden pipeline runs */

typedef struct {
    const char *golden; /* relative to tests/data */
    const char *model;
    int use_init_noise; /* 1: --init-noise from the golden, else --seed */
} golden_run;

static const golden_run runs[] = {
    {"golden/sd1-tiny/txt2img.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 1},
    {"golden/sd1-tiny/txt2img.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_euler.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_euler_a.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_dpmpp_2m_karras.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_lcm.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_lcm_cfg.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_ddim_eta1.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd1-tiny/txt2img_ddim_trailing.safetensors", "golden/sd1-tiny/model/sd1-tiny_f16.safetensors", 0},
    {"golden/sd2-tiny/txt2img.safetensors", "golden/sd2-tiny/model/sd2-tiny_f16.safetensors", 0},
    {"golden/sd2-tiny/txt2img_euler_v.safetensors", "golden/sd2-tiny/model/sd2-tiny_f16.safetensors", 0},
    {"golden/sdxl-tiny/txt2img.safetensors", "golden/sdxl-tiny/model/sdxl-tiny_f16.safetensors", 0},
};

static const char *sampler_of(const char *cls)
{
    if (!strcmp(cls, "DDIMScheduler")) return "ddim";
    if (!strcmp(cls, "EulerDiscreteScheduler")) return "euler";
    if (!strcmp(cls, "EulerAncestralDiscreteScheduler")) return "euler_a";
    if (!strcmp(cls, "DPMSolverMultistepScheduler")) return "dpmpp_2m";
    if (!strcmp(cls, "LCMScheduler")) return "lcm";
    return "unknown";
}

START_TEST(test_golden_pipelines)
{
    const golden_run *g = &runs[_i];
    cJSON *meta = tu_golden_meta(g->golden);
    const cJSON *sch = cJSON_GetObjectItem(meta, "scheduler");
    const cJSON *conf = cJSON_GetObjectItem(sch, "config");
    const char *cls = cJSON_GetObjectItem(sch, "class")->valuestring;
    int steps = cJSON_GetObjectItem(meta, "steps")->valueint;
    int H = cJSON_GetObjectItem(meta, "height")->valueint, W = cJSON_GetObjectItem(meta, "width")->valueint;
    double cfg = cJSON_GetObjectItem(meta, "guidance_scale")->valuedouble;
    const cJSON *eta = cJSON_GetObjectItem(meta, "eta");
    const cJSON *rngj = cJSON_GetObjectItem(meta, "rng");
    double seed = cJSON_GetObjectItem(rngj, "seed")->valuedouble;
    const char *spacing = cJSON_GetStringValue(cJSON_GetObjectItem(conf, "timestep_spacing"));
    const cJSON *karras = cJSON_GetObjectItem(conf, "use_karras_sigmas");
    char prompt[2048], negative[2048];
    tu_shq(cJSON_GetStringValue(cJSON_GetObjectItem(meta, "prompt")), prompt, sizeof prompt);
    const char *neg = cJSON_GetStringValue(cJSON_GetObjectItem(meta, "negative_prompt"));
    tu_shq(neg ? neg : "", negative, sizeof negative); /* None: empty (SDXL zeroes it) */

    char dir[2048], noise_opt[4200] = "", cmd[16384];
    snprintf(dir, sizeof dir, "%s/golden%d", tu_tmpdir(), _i);
    mkdir(dir, 0755);
    cm_tensor noise = {0};
    if (g->use_init_noise) {
        tu_golden(g->golden, "initial_noise", &noise);
        char np[2100];
        snprintf(np, sizeof np, "%s/noise.npy", dir);
        cm_error err = {0};
        ck_assert_msg(cm_npy_write(np, &noise, &err) == CM_OK, "%s", err.msg);
        snprintf(noise_opt, sizeof noise_opt, "--init-noise '%s'", np);
        cm_tensor_release(&noise);
    }
    snprintf(cmd, sizeof cmd,
             "'%s' txt2img -m '%s' -p %s -n %s -W %d -H %d --steps %d --cfg %.17g --sampler %s "
             "--schedule %s --eta %.17g --seed %.0f --rng cpu %s --save-latents '%s/lat' -o '%s/out.png' "
             "--overwrite --quiet --threads 2",
             tu_stipple(), tu_data(g->model), prompt, negative, W, H, steps, cfg, sampler_of(cls),
             cJSON_IsTrue(karras) ? "karras" : (spacing ? spacing : "leading"),
             eta ? eta->valuedouble : 0.0, seed, noise_opt, dir, dir);
    char *err = NULL;
    int rc = tu_run(cmd, NULL, &err);
    ck_assert_msg(rc == 0, "%s\nexit %d: %s", cmd, rc, err ? err : "");
    cm_free(err);

    /* Every step's latent. */
    int first = 0;
    for (int i = first; i < steps; i++) {
        char name[64], path[4300];
        snprintf(name, sizeof name, "step%d.latents", i);
        snprintf(path, sizeof path, "%s/lat/step_%03d.npy", dir, i);
        cm_tensor want, got;
        tu_golden(g->golden, name, &want);
        cm_error e = {0};
        ck_assert_msg(cm_npy_read(path, &got, &e) == CM_OK, "%s", e.msg);
        ck_assert_int_eq(cm_tensor_numel(&got), cm_tensor_numel(&want));
        char what[256];
        snprintf(what, sizeof what, "%s %s", g->golden, name);
        TU_ASSERT_CLOSE(what, got.data, want.data, cm_tensor_numel(&want), 1e-4);
        cm_tensor_release(&want);
        cm_tensor_release(&got);
    }
    /* The final image: within 1/255 everywhere, equal on >= 99.9 %. */
    cm_tensor ref;
    tu_golden(g->golden, "image_u8", &ref);
    char png[4300];
    snprintf(png, sizeof png, "%s/out.png", dir);
    cm_image img;
    cm_error e = {0};
    ck_assert_msg(cm_image_read(png, &img, &e) == CM_OK, "%s", e.msg);
    ck_assert_int_eq(img.w, W);
    ck_assert_int_eq(img.h, H);
    int64_t n = (int64_t)W * H * 3, same = 0, maxd = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t v = (int64_t)lrintf(img.rgb[k] * 255.0f), d = llabs(v - (int64_t)ref.data[k]);
        if (d == 0) same++;
        if (d > maxd) maxd = d;
    }
    fprintf(stderr, "%s image: %.4f %% equal, max diff %lld\n", g->golden, 100.0 * same / n, (long long)maxd);
    ck_assert_msg(maxd <= 1, "image differs by %lld", (long long)maxd);
    ck_assert_msg(same * 1000 >= n * 999, "only %lld of %lld values equal", (long long)same, (long long)n);
    cm_image_release(&img);
    cm_tensor_release(&ref);
    cJSON_Delete(meta);
}
END_TEST

/* --precision bf16 from the binary on the sd1-tiny DDIM golden (20 steps,
 * CFG): the 8-bit image against the reference's float32 image. Measured
 * here (AVX512_BF16): PSNR 44.1 dB, max diff 10/255; bound 30 dB. Without AVX512_BF16 the
 * run says so on stderr and is the float32 run (same bounds as the golden
 * test: within 1/255). */
START_TEST(test_golden_bf16)
{
    const char *golden = "golden/sd1-tiny/txt2img.safetensors";
    cJSON *meta = tu_golden_meta(golden);
    int steps = cJSON_GetObjectItem(meta, "steps")->valueint;
    int H = cJSON_GetObjectItem(meta, "height")->valueint, W = cJSON_GetObjectItem(meta, "width")->valueint;
    double cfg = cJSON_GetObjectItem(meta, "guidance_scale")->valuedouble;
    double seed = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "rng"), "seed")->valuedouble;
    char prompt[2048], negative[2048], cmd[8192], png[2048];
    tu_shq(cJSON_GetStringValue(cJSON_GetObjectItem(meta, "prompt")), prompt, sizeof prompt);
    const char *neg = cJSON_GetStringValue(cJSON_GetObjectItem(meta, "negative_prompt"));
    tu_shq(neg ? neg : "", negative, sizeof negative);
    snprintf(png, sizeof png, "%s/bf16.png", tu_tmpdir());
    snprintf(cmd, sizeof cmd,
             "'%s' txt2img -m '%s' -p %s -n %s -W %d -H %d --steps %d --cfg %.17g --sampler ddim "
             "--seed %.0f --precision bf16 -o '%s' --overwrite --quiet",
             tu_stipple(), tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), prompt, negative, W, H,
             steps, cfg, seed, png);
    char *err = NULL;
    int rc = tu_run(cmd, NULL, &err);
    ck_assert_msg(rc == 0, "%s\nexit %d: %s", cmd, rc, err ? err : "");
    int noted = err && strstr(err, "AVX512_BF16");
    ck_assert_int_eq(noted, !cm_bf16_supported());
    cm_free(err);
    cm_tensor ref;
    tu_golden(golden, "image_u8", &ref);
    cm_image img;
    cm_error e = {0};
    ck_assert_msg(cm_image_read(png, &img, &e) == CM_OK, "%s", e.msg);
    int64_t n = (int64_t)W * H * 3, maxd = 0;
    double se = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t v = (int64_t)lrintf(img.rgb[k] * 255.0f), d = llabs(v - (int64_t)ref.data[k]);
        se += (double)d * d;
        if (d > maxd) maxd = d;
    }
    double psnr = se > 0 ? 10.0 * log10(255.0 * 255.0 / (se / n)) : INFINITY;
    fprintf(stderr, "bf16 sd1-tiny image: PSNR %.2f dB vs the float32 golden, max diff %lld\n", psnr,
            (long long)maxd);
    if (cm_bf16_supported()) ck_assert_msg(psnr >= 30.0, "bf16 image PSNR %.2f dB < 30", psnr);
    else ck_assert_msg(maxd <= 1, "float32 fallback differs by %lld", (long long)maxd);
    /* the PNG records "Precision: bf16" (only when it ran in bf16), so
     * --from-png makes the very same file again */
    char png2[2100];
    snprintf(png2, sizeof png2, "%s/bf16_again.png", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' --from-png '%s' -o '%s' --overwrite --quiet", tu_stipple(),
             tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), png, png2);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", png, png2);
    ck_assert_msg(system(cmd) == 0, "--from-png of a bf16 image made another image");
    cm_image_release(&img);
    cm_tensor_release(&ref);
    cJSON_Delete(meta);
}
END_TEST

/* The model hash (A1111's: first 10 hex of the file's SHA-256) is cached
 * by path, size, mtime and inode; a changed file is hashed again. The
 * expected hash comes from coreutils' sha256sum. */
START_TEST(test_model_hash_cache)
{
    char dir[2048], cmd[8192], *out = NULL;
    snprintf(dir, sizeof dir, "%s/hashcache", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s/c' && cp '%s' '%s/m.safetensors'", dir, dir,
             tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), dir);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    snprintf(cmd, sizeof cmd, "sha256sum '%s/m.safetensors' | cut -c1-10", dir);
    ck_assert_int_eq(tu_run(cmd, &out, NULL), 0);
    char want[16] = "";
    snprintf(want, sizeof want, "%.10s", out ? out : "");
    cm_free(out);
    const char *info = "STIPPLE_CACHE_DIR='%s/c' '%s' info --json '%s/m.safetensors' | grep -o '\"model_hash\": *\"[0-9a-f]*\"' | grep -o '[0-9a-f]\\{10\\}'";
    /* 1. first run: computed and stored */
    snprintf(cmd, sizeof cmd, info, dir, tu_stipple(), dir);
    ck_assert_int_eq(tu_run(cmd, &out, NULL), 0);
    ck_assert_msg(out && !strncmp(out, want, 10), "hash %s, sha256sum says %s", out ? out : "", want);
    cm_free(out);
    /* 2. the cache is used: a forged entry for the same key wins */
    snprintf(cmd, sizeof cmd, "sed -i 's/^[0-9a-f]\\{10\\}/abcdef0123/' '%s/c/model-hashes.tsv'", dir);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    snprintf(cmd, sizeof cmd, info, dir, tu_stipple(), dir);
    ck_assert_int_eq(tu_run(cmd, &out, NULL), 0);
    ck_assert_msg(out && !strncmp(out, "abcdef0123", 10), "cache not used: %s", out ? out : "");
    cm_free(out);
    /* 3. a modified file (new mtime) is hashed again */
    snprintf(cmd, sizeof cmd, "touch -d '2001-01-01' '%s/m.safetensors'", dir);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    snprintf(cmd, sizeof cmd, info, dir, tu_stipple(), dir);
    ck_assert_int_eq(tu_run(cmd, &out, NULL), 0);
    ck_assert_msg(out && !strncmp(out, want, 10), "stale cache entry used: %s", out ? out : "");
    cm_free(out);
}
END_TEST

TCase *tc_cmd_cli(void)
{
    TCase *tc = tu_tcase("cmd_cli");
    tcase_add_test(tc, test_help_version);
    tcase_add_test(tc, test_usage_errors);
    tcase_add_test(tc, test_model_hash_cache);
    tcase_add_test(tc, test_golden_bf16);
    tcase_add_loop_test(tc, test_golden_pipelines, 0, (int)(sizeof runs / sizeof runs[0]));
    return tc;
}
