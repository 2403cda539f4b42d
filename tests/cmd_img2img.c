/* cmd_img2img.c — whole-program tests of `stipple img2img` and `stipple
 * inpaint`: the sd1-tiny / sd2-tiny img2img and inpaint goldens and the
 * sd1-inpaint-tiny 9-channel goldens reproduce from --rng cpu --seed S
 * (every step's latent via --save-latents, numbered from 000 at the first
 * step that runs, as the goldens' step{k}; the final PNG), the untouched-
 * pixel guarantee on real output files, the PNG metadata, and bad inputs.
 *
 * The reference (diffusers) does not composite its output onto the input;
 * stipple does. So the golden image_u8 is compared where the mask is white
 * (there stipple's output is the decoded image), and where it is black the
 * output must equal the input byte for byte (--mask-blur 0 for goldens).
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SD1 "golden/sd1-tiny/model/sd1-tiny_f16.safetensors"
#define SD1_INPAINT "golden/sd1-inpaint-tiny/model/sd1-inpaint-tiny_f16.safetensors"

/* Run stipple with args; must succeed. stderr returned (cm_alloc'd) if wanted. */
static void run_ok(const char *args, char **err_out)
{
    char cmd[20480], *err = NULL;
    snprintf(cmd, sizeof cmd, "'%s' %s", tu_stipple(), args);
    int rc = tu_run(cmd, NULL, &err);
    ck_assert_msg(rc == 0, "%s\nexit %d: %s", cmd, rc, err ? err : "");
    if (err_out) *err_out = err;
    else cm_free(err);
}

/* 8-bit pixels of an image file as stipple reads it. */
static uint8_t *read_u8(const char *path, int *w, int *h)
{
    cm_image img;
    cm_error e = {0};
    ck_assert_msg(cm_image_read(path, &img, &e) == CM_OK, "%s", e.msg);
    size_t n = (size_t)img.w * img.h * 3;
    uint8_t *p = malloc(n);
    ck_assert(p != NULL);
    for (size_t k = 0; k < n; k++) p[k] = (uint8_t)lrintf(img.rgb[k] * 255.0f);
    *w = img.w;
    *h = img.h;
    cm_image_release(&img);
    return p;
}

/* ------------------------------------------------- golden pipeline runs */

typedef struct {
    const char *golden, *model, *cmd, *dir; /* dir: of input_image.png / inpaint_mask.png */
    int pass_strength;                      /* 0: rely on the default */
    const char *method;                     /* expected "Inpaint method" or NULL */
} golden_run;

static const golden_run runs[] = {
    {"golden/sd1-tiny/img2img.safetensors", SD1, "img2img", "golden/sd1-tiny", 1, NULL},
    {"golden/sd1-tiny/inpaint.safetensors", SD1, "inpaint", "golden/sd1-tiny", 0, "latent blend"},
    {"golden/sd2-tiny/img2img.safetensors", "golden/sd2-tiny/model/sd2-tiny_f16.safetensors", "img2img",
     "golden/sd2-tiny", 1, NULL},
    {"golden/sd2-tiny/inpaint.safetensors", "golden/sd2-tiny/model/sd2-tiny_f16.safetensors", "inpaint",
     "golden/sd2-tiny", 1, "latent blend"},
    {"golden/sd1-inpaint-tiny/inpaint9_full.safetensors", SD1_INPAINT, "inpaint", "golden/sd1-inpaint-tiny", 0,
     "9-channel"},
    {"golden/sd1-inpaint-tiny/inpaint9_partial.safetensors", SD1_INPAINT, "inpaint",
     "golden/sd1-inpaint-tiny", 1, "9-channel"},
};

START_TEST(test_golden_img2img)
{
    const golden_run *g = &runs[_i];
    cJSON *meta = tu_golden_meta(g->golden);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "scheduler"), "class")),
                     "DDIMScheduler");
    int steps = cJSON_GetObjectItem(meta, "steps")->valueint;
    int H = cJSON_GetObjectItem(meta, "height")->valueint, W = cJSON_GetObjectItem(meta, "width")->valueint;
    double cfg = cJSON_GetObjectItem(meta, "guidance_scale")->valuedouble;
    double strength = cJSON_GetObjectItem(meta, "strength")->valuedouble;
    double seed = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "rng"), "seed")->valuedouble;
    int inpaint = !strcmp(g->cmd, "inpaint");
    char prompt[2048], negative[2048], sopt[64] = "", mopt[4200] = "", rel[512];
    tu_shq(cJSON_GetStringValue(cJSON_GetObjectItem(meta, "prompt")), prompt, sizeof prompt);
    const char *neg = cJSON_GetStringValue(cJSON_GetObjectItem(meta, "negative_prompt"));
    tu_shq(neg ? neg : "", negative, sizeof negative);
    if (g->pass_strength) snprintf(sopt, sizeof sopt, "--strength %.17g", strength);
    if (inpaint) {
        snprintf(rel, sizeof rel, "%s/inpaint_mask.png", g->dir);
        snprintf(mopt, sizeof mopt, "--mask '%s' --mask-blur 0", tu_data(rel));
    }
    char dir[2048], args[16384], img_rel[512];
    snprintf(dir, sizeof dir, "%s/img2img%d", tu_tmpdir(), _i);
    mkdir(dir, 0755);
    snprintf(img_rel, sizeof img_rel, "%s/input_image.png", g->dir);
    snprintf(args, sizeof args,
             "%s -m '%s' -i '%s' %s -p %s -n %s --steps %d --cfg %.17g --sampler ddim --schedule leading "
             "%s --seed %.0f --rng cpu --save-latents '%s/lat' -o '%s/out.png' --overwrite --threads 2",
             g->cmd, tu_data(g->model), tu_data(img_rel), mopt, prompt, negative, steps, cfg, sopt, seed,
             dir, dir);
    char *err = NULL;
    run_ok(args, &err);
    if (g->method)
        ck_assert_msg(err && strstr(err, g->method), "stderr does not name the method %s: %s", g->method,
                      err ? err : "");
    cm_free(err);

    /* Every step's latent (step_000 = the first step that runs = step0). */
    cm_tensor ts;
    tu_golden(g->golden, "timesteps", &ts);
    int run = (int)cm_tensor_numel(&ts);
    cm_tensor_release(&ts);
    ck_assert_int_eq(run, (int)(steps * strength) < steps ? (int)(steps * strength) : steps);
    for (int k = 0; k <= run; k++) {
        char name[64], path[4300];
        if (k < run) snprintf(name, sizeof name, "step%d.latents", k);
        else snprintf(name, sizeof name, "final_latents");
        if (k < run) snprintf(path, sizeof path, "%s/lat/step_%03d.npy", dir, k);
        else snprintf(path, sizeof path, "%s/lat/final.npy", dir);
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
    char step_after[4300];
    snprintf(step_after, sizeof step_after, "%s/lat/step_%03d.npy", dir, run);
    ck_assert_msg(access(step_after, F_OK) != 0, "%s: more step files than steps run", step_after);

    /* The image: golden where the mask is white (all of it for img2img),
     * the input where it is black. */
    cm_tensor ref, init, mask = {0};
    tu_golden(g->golden, "image_u8", &ref);
    tu_golden(g->golden, "init_image_u8", &init);
    if (inpaint) tu_golden(g->golden, "mask_u8", &mask);
    char png[4300];
    snprintf(png, sizeof png, "%s/out.png", dir);
    int w, h;
    uint8_t *img = read_u8(png, &w, &h);
    ck_assert_int_eq(w, W);
    ck_assert_int_eq(h, H);
    int64_t cmp = 0, same = 0, maxd = 0, kept = 0, kept_bad = 0;
    for (int64_t p = 0; p < (int64_t)W * H; p++) {
        float m = inpaint ? mask.data[p] : 255.0f;
        for (int c = 0; c < 3; c++) {
            int64_t k = p * 3 + c, v = img[k];
            if (m == 255.0f) {
                int64_t d = llabs(v - (int64_t)ref.data[k]);
                cmp++;
                same += d == 0;
                if (d > maxd) maxd = d;
            } else if (m == 0.0f) {
                kept++;
                kept_bad += v != (int64_t)init.data[k];
            }
        }
    }
    fprintf(stderr, "%s: repainted %.4f %% equal (of %lld), max diff %lld; kept %lld values, %lld differ\n",
            g->golden, 100.0 * same / cmp, (long long)cmp, (long long)maxd, (long long)kept,
            (long long)kept_bad);
    ck_assert_msg(maxd <= 1, "image differs by %lld", (long long)maxd);
    ck_assert_msg(same * 1000 >= cmp * 999, "only %lld of %lld values equal", (long long)same, (long long)cmp);
    ck_assert_msg(kept_bad == 0, "%lld of %lld pixels under the black mask differ from the input",
                  (long long)kept_bad, (long long)kept);
    if (inpaint) ck_assert(kept > 0 && cmp > 0);

    /* Metadata. */
    char *params = tu_png_parameters(png), want[256];
    snprintf(want, sizeof want, "Denoising strength: %g", strength);
    ck_assert_msg(strstr(params, want), "parameters lack \"%s\": %s", want, params);
    if (inpaint) ck_assert_msg(strstr(params, "Mask blur: 0"), "parameters: %s", params);
    if (g->method) {
        snprintf(want, sizeof want, "Inpaint method: %s", g->method);
        ck_assert_msg(strstr(params, want), "parameters lack \"%s\": %s", want, params);
    } else {
        ck_assert_msg(!strstr(params, "Inpaint method"), "parameters: %s", params);
    }
    cm_free(params);
    free(img);
    cm_tensor_release(&ref);
    cm_tensor_release(&init);
    cm_tensor_release(&mask);
    cJSON_Delete(meta);
}
END_TEST

/* ----------------------------------------------------------- bad inputs */

START_TEST(test_bad_inputs)
{
    char args[8192], empty[2048], notimg[2048];
    snprintf(empty, sizeof empty, "%s/empty.png", tu_tmpdir());
    snprintf(notimg, sizeof notimg, "%s/not_an_image.png", tu_tmpdir());
    FILE *f = fopen(empty, "wb");
    ck_assert(f != NULL);
    fclose(f);
    f = fopen(notimg, "wb");
    ck_assert(f != NULL);
    fputs("this is not an image\n", f);
    fclose(f);
    const char *img = tu_data("images/i2i_rgb.png"), *mask = tu_data("images/i2i_mask.png");
    const char *m = tu_data(SD1);

    tu_expect_error("img2img -p x", 2, "-i IMAGE is required");
    snprintf(args, sizeof args, "inpaint -p x -i '%s'", img);
    tu_expect_error(args, 2, "--mask MASK is required");
    tu_expect_error("txt2img -p x --strength 0.5", 2, "--strength");
    tu_expect_error("txt2img -p x -i foo.png", 2, "-i");
    snprintf(args, sizeof args, "img2img -p x -i '%s' --strength 1.5", img);
    tu_expect_error(args, 2, "--strength");
    snprintf(args, sizeof args, "img2img -p x -i '%s' --strength 0.05 --steps 10", img);
    tu_expect_error(args, 2, "runs no step");
    snprintf(args, sizeof args, "img2img -p x -i '%s' --encode-mode mode", img);
    tu_expect_error(args, 2, "--encode-mode");
    snprintf(args, sizeof args, "inpaint -p x -i '%s' --mask '%s' --mask-blur -1", img, mask);
    tu_expect_error(args, 2, "--mask-blur");
    /* files that are not images */
    snprintf(args, sizeof args, "inpaint -m '%s' -p x -i '%s' --mask '%s' --quiet", m, img, notimg);
    tu_expect_error(args, 1, "--mask");
    snprintf(args, sizeof args, "inpaint -m '%s' -p x -i '%s' --mask '%s' --quiet", m, img, empty);
    tu_expect_error(args, 1, "empty.png");
    snprintf(args, sizeof args, "img2img -m '%s' -p x -i '%s' --quiet", m, empty);
    tu_expect_error(args, 1, "empty.png");
    snprintf(args, sizeof args, "img2img -m '%s' -p x -i '%s' --quiet", m, notimg);
    tu_expect_error(args, 1, "not_an_image.png");
    snprintf(args, sizeof args, "img2img -m '%s' -p x -i '%s' --quiet", m, tu_data("images/truncated.png"));
    tu_expect_error(args, 1, "truncated.png");
    snprintf(args, sizeof args, "img2img -m '%s' -p x -i /nonexistent/in.png --quiet", m);
    tu_expect_error(args, 1, "/nonexistent/in.png");
    /* sizes: refused before the model is loaded */
    snprintf(args, sizeof args, "img2img -m /nonexistent/model -p x -i '%s' --quiet", tu_data("images/one.png"));
    tu_expect_error(args, 2, "too small");
    snprintf(args, sizeof args, "img2img -m /nonexistent/model -p x -i '%s' --quiet",
             tu_data("images/wide_100000x10.png"));
    tu_expect_error(args, 2, "too large");
    /* a size that fits 8 but not the tiny model's 16: rounded down, then
     * -W not a multiple of 16 is refused */
    snprintf(args, sizeof args, "img2img -m '%s' -p x -i '%s' -W 40 -H 32 --quiet", m, img);
    tu_expect_error(args, 2, "multiple");
}
END_TEST

/* The output never replaces the input. */
START_TEST(test_input_not_replaced)
{
    char copy[2048], args[8192];
    snprintf(copy, sizeof copy, "%s/keep_me.png", tu_tmpdir());
    char *data = NULL;
    size_t n = 0;
    cm_error e = {0};
    ck_assert(cm_file_read_all(tu_data("images/i2i_rgb.png"), &data, &n, &e) == CM_OK);
    ck_assert(cm_file_write_atomic(copy, data, n, 1, &e) == CM_OK);
    snprintf(args, sizeof args, "img2img -m '%s' -p x -i '%s' -o '%s' --overwrite --steps 2 --quiet",
             tu_data(SD1), copy, copy);
    tu_expect_error(args, 2, "never replaced");
    char *after = NULL;
    size_t n2 = 0;
    ck_assert(cm_file_read_all(copy, &after, &n2, &e) == CM_OK);
    ck_assert(n2 == n && !memcmp(after, data, n));
    cm_free(data);
    cm_free(after);
}
END_TEST

/* ------------------------------------------- inputs and masks, real runs */

/* 1 step of the tiny model on 48x32 inputs (strength 0.5 of 2 steps). */
static void small_run(const char *cmd, const char *image, const char *mask, const char *extra,
                      const char *out, char **err)
{
    char args[16384], mopt[2200] = "";
    if (mask) snprintf(mopt, sizeof mopt, "--mask '%s'", mask);
    snprintf(args, sizeof args,
             "%s -m '%s' -p 'a photo of a cat' -i '%s' %s --steps 2 --strength 0.5 --sampler ddim --seed 7 "
             "--threads 2 -o '%s' --overwrite %s",
             cmd, tu_data(SD1), image, mopt, out, extra ? extra : "");
    run_ok(args, err);
}

START_TEST(test_input_formats)
{
    /* JPEG, 16-bit and palette PNGs: read, encoded, a 48x32 result */
    static const char *inputs[] = {"images/i2i_rgb.jpg", "images/i2i_rgb16.png", "images/i2i_palette.png"};
    for (int k = 0; k < 3; k++) {
        char out[2048];
        snprintf(out, sizeof out, "%s/fmt%d.png", tu_tmpdir(), k);
        small_run("img2img", tu_data(inputs[k]), NULL, "--quiet", out, NULL);
        int w, h;
        uint8_t *p = read_u8(out, &w, &h);
        ck_assert_int_eq(w, 48);
        ck_assert_int_eq(h, 32);
        free(p);
    }
    /* -W/-H resize the input (Lanczos-3); one of them alone keeps the
     * aspect ratio: 48x32 at -W 64 -> 64x42.7 -> 64x32 (multiple of 16) */
    static const struct {
        const char *opt;
        int w, h;
    } sizes[] = {{"-W 32 -H 64", 32, 64}, {"-W 64", 64, 32}, {"-H 16", 16, 16}};
    for (int k = 0; k < 3; k++) {
        char out[2048];
        snprintf(out, sizeof out, "%s/size%d.png", tu_tmpdir(), k);
        small_run("img2img", tu_data("images/i2i_rgb.png"), NULL, sizes[k].opt, out, NULL);
        int w, h;
        uint8_t *p = read_u8(out, &w, &h);
        ck_assert_msg(w == sizes[k].w && h == sizes[k].h, "%s: %dx%d", sizes[k].opt, w, h);
        free(p);
    }
}
END_TEST

/* Every sampler starts img2img at step steps - int(steps * strength):
 * 4 steps at strength 0.5 run 2, saved as step_000 and step_001. */
START_TEST(test_samplers)
{
    static const char *samplers[] = {"euler", "euler_a", "dpmpp_2m", "lcm"};
    char dir[2048], args[8192], path[2200];
    snprintf(dir, sizeof dir, "%s/samplers_%s", tu_tmpdir(), samplers[_i]);
    mkdir(dir, 0755);
    snprintf(args, sizeof args,
             "img2img -m '%s' -p 'a photo of a cat' -i '%s' --steps 4 --strength 0.5 --sampler %s --seed 5 "
             "--threads 2 --save-latents '%s' -o '%s/out.png' --overwrite --quiet",
             tu_data(SD1), tu_data("images/i2i_rgb.png"), samplers[_i], dir, dir);
    run_ok(args, NULL);
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/step_%03d.npy", dir, k);
        ck_assert_msg((access(path, F_OK) == 0) == (k < 2), "%s: %s", samplers[_i], path);
    }
    snprintf(path, sizeof path, "%s/out.png", dir);
    char *params = tu_png_parameters(path);
    ck_assert_msg(strstr(params, "Steps: 4") && strstr(params, "Denoising strength: 0.5"), "%s", params);
    cm_free(params);
}
END_TEST

/* Black-mask pixels equal the input exactly in the output file, with the
 * default blur (4) on a JPEG input, and with a mask of another size
 * (24x16, resized: its left 12 of 48 columns stay pure black). */
START_TEST(test_untouched_pixels)
{
    const char *masks[] = {"images/i2i_mask.png", "images/i2i_mask_24x16.png"};
    const int keep_cols[] = {24, 12};
    int iw, ih;
    uint8_t *in = read_u8(tu_data("images/i2i_rgb.jpg"), &iw, &ih);
    for (int k = 0; k < 2; k++) {
        char out[2048], *err = NULL;
        snprintf(out, sizeof out, "%s/keep%d.png", tu_tmpdir(), k);
        small_run("inpaint", tu_data("images/i2i_rgb.jpg"), tu_data(masks[k]), NULL, out, &err);
        ck_assert_msg(err && strstr(err, "latent blend"), "stderr: %s", err ? err : "");
        cm_free(err);
        int w, h;
        uint8_t *o = read_u8(out, &w, &h);
        ck_assert_int_eq(w, iw);
        ck_assert_int_eq(h, ih);
        int64_t bad = 0, changed = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++) {
                    size_t i = ((size_t)y * w + x) * 3 + c;
                    if (x < keep_cols[k]) bad += o[i] != in[i];
                    if (x >= 40) changed += o[i] != in[i];
                }
        ck_assert_msg(bad == 0, "%s: %lld kept values differ from the input", masks[k], (long long)bad);
        ck_assert_msg(changed > 0, "%s: the repainted side did not change", masks[k]);
        char *params = tu_png_parameters(out);
        ck_assert_msg(strstr(params, "Denoising strength: 0.5, Mask blur: 4, Inpaint method: latent blend"),
                      "parameters: %s", params);
        cm_free(params);
        free(o);
    }
    free(in);
}
END_TEST

/* All-black mask: the output is the input; all-white mask with DDIM: the
 * same image as img2img with the same seed (the blend keeps everything the
 * sampler made, the extra masked-image draw comes after the noise). */
START_TEST(test_extreme_masks)
{
    char black[2048], white[2048], out[2048], ref[2048], *err = NULL;
    snprintf(black, sizeof black, "%s/black.png", tu_tmpdir());
    snprintf(white, sizeof white, "%s/white.png", tu_tmpdir());
    uint8_t px[48 * 32 * 3];
    cm_error e = {0};
    for (int k = 0; k < 2; k++) {
        memset(px, k ? 255 : 0, sizeof px);
        uint8_t *png = NULL;
        size_t n = 0;
        ck_assert(cm_png_encode(px, 48, 32, NULL, 0, &png, &n, &e) == CM_OK);
        ck_assert(cm_file_write_atomic(k ? white : black, png, n, 1, &e) == CM_OK);
        cm_free(png);
    }
    const char *img = tu_data("images/i2i_rgb.png");
    int w, h, iw, ih;
    uint8_t *in = read_u8(img, &iw, &ih);

    snprintf(out, sizeof out, "%s/all_black.png", tu_tmpdir());
    small_run("inpaint", img, black, NULL, out, &err);
    ck_assert_msg(err && strstr(err, "all black"), "no warning: %s", err ? err : "");
    cm_free(err);
    uint8_t *o = read_u8(out, &w, &h);
    ck_assert(w == iw && h == ih && !memcmp(o, in, (size_t)w * h * 3));
    free(o);

    snprintf(out, sizeof out, "%s/all_white.png", tu_tmpdir());
    snprintf(ref, sizeof ref, "%s/all_white_ref.png", tu_tmpdir());
    small_run("inpaint", img, white, "--quiet", out, NULL);
    small_run("img2img", img, NULL, "--quiet", ref, NULL);
    o = read_u8(out, &w, &h);
    uint8_t *r = read_u8(ref, &w, &h);
    ck_assert_msg(!memcmp(o, r, (size_t)w * h * 3), "all-white inpaint differs from img2img");
    ck_assert_msg(memcmp(o, in, (size_t)w * h * 3), "all-white inpaint left the image unchanged");

    /* Grey 128 everywhere (no blur): the latent mask is all ones as for
     * white (128/255 >= 0.5), so the same image is generated and the output
     * is input * (1 - 128/255) + generated * 128/255, within rounding. */
    char grey[2048];
    snprintf(grey, sizeof grey, "%s/grey.png", tu_tmpdir());
    memset(px, 128, sizeof px);
    uint8_t *png = NULL;
    size_t pn = 0;
    ck_assert(cm_png_encode(px, 48, 32, NULL, 0, &png, &pn, &e) == CM_OK);
    ck_assert(cm_file_write_atomic(grey, png, pn, 1, &e) == CM_OK);
    cm_free(png);
    snprintf(ref, sizeof ref, "%s/grey_out.png", tu_tmpdir());
    small_run("inpaint", img, grey, "--quiet --mask-blur 0", ref, NULL);
    uint8_t *gr = read_u8(ref, &w, &h);
    int64_t off = 0;
    for (size_t k = 0; k < (size_t)w * h * 3; k++) {
        double want = in[k] * (1.0 - 128.0 / 255.0) + o[k] * (128.0 / 255.0);
        off += fabs(gr[k] - want) > 0.5 + 1e-3;
    }
    ck_assert_msg(off == 0, "grey mask: %lld values are not the 128/255 blend", (long long)off);
    free(gr);
    free(o);
    free(r);
    free(in);
}
END_TEST

/* Same bytes for any thread count; a batch shares the prepared input and
 * image i uses seed + i (equal to a single run with that seed). */
START_TEST(test_threads_batch)
{
    char args[8192], a[2048], b[2048], c[2048];
    const char *img = tu_data("images/i2i_rgb.jpg"), *mask = tu_data("images/i2i_mask.png");
    snprintf(a, sizeof a, "%s/tb_t1.png", tu_tmpdir());
    snprintf(b, sizeof b, "%s/tb_{seed}.png", tu_tmpdir());
    snprintf(c, sizeof c, "%s/tb_seed11.png", tu_tmpdir());
    snprintf(args, sizeof args,
             "inpaint -m '%s' -p cat -i '%s' --mask '%s' --steps 2 --seed 11 --threads 1 -o '%s' "
             "--overwrite --quiet",
             tu_data(SD1), img, mask, a);
    run_ok(args, NULL);
    snprintf(args, sizeof args,
             "inpaint -m '%s' -p cat -i '%s' --mask '%s' --steps 2 --seed 10 --batch-count 2 --threads 2 "
             "-o '%s' --overwrite --quiet",
             tu_data(SD1), img, mask, b);
    run_ok(args, NULL);
    char *da = NULL, *dc = NULL;
    size_t na = 0, nc = 0;
    cm_error e = {0};
    snprintf(c, sizeof c, "%s/tb_11.png", tu_tmpdir());
    ck_assert_msg(cm_file_read_all(a, &da, &na, &e) == CM_OK, "%s", e.msg);
    ck_assert_msg(cm_file_read_all(c, &dc, &nc, &e) == CM_OK, "%s", e.msg);
    ck_assert_msg(na == nc && !memcmp(da, dc, na), "image 2 of the batch (seed 11, 2 threads) differs from the seed-11 run on 1 thread");
    cm_free(da);
    cm_free(dc);
}
END_TEST

/* A 9-channel checkpoint in txt2img and img2img: full mask, blank masked
 * image, said on stderr and in the metadata. */
START_TEST(test_inpainting_model_txt2img)
{
    char args[8192], out[2048], *err = NULL;
    snprintf(out, sizeof out, "%s/nine_txt2img.png", tu_tmpdir());
    snprintf(args, sizeof args,
             "txt2img -m '%s' -p 'a photo of a cat' -W 48 -H 32 --steps 2 --sampler ddim --seed 3 "
             "--threads 2 -o '%s' --overwrite",
             tu_data(SD1_INPAINT), out);
    run_ok(args, &err);
    ck_assert_msg(err && strstr(err, "9-channel"), "stderr: %s", err ? err : "");
    cm_free(err);
    char *params = tu_png_parameters(out);
    ck_assert_msg(strstr(params, "Inpaint method: 9-channel inpainting UNet with a full mask"), "%s", params);
    ck_assert_msg(!strstr(params, "Denoising strength"), "%s", params);
    cm_free(params);

    snprintf(out, sizeof out, "%s/nine_img2img.png", tu_tmpdir());
    snprintf(args, sizeof args,
             "img2img -m '%s' -p 'a photo of a cat' -i '%s' --steps 2 --sampler ddim --seed 3 "
             "--threads 2 -o '%s' --overwrite --quiet",
             tu_data(SD1_INPAINT), tu_data("images/i2i_rgb.png"), out);
    run_ok(args, NULL);
    params = tu_png_parameters(out);
    ck_assert_msg(strstr(params, "Denoising strength: 0.75, Inpaint method: 9-channel"), "%s", params);
    cm_free(params);
}
END_TEST

TCase *tc_cmd_img2img(void)
{
    TCase *tc = tu_tcase("cmd_img2img");
    tcase_add_test(tc, test_bad_inputs);
    tcase_add_test(tc, test_input_not_replaced);
    tcase_add_loop_test(tc, test_golden_img2img, 0, (int)(sizeof runs / sizeof runs[0]));
    tcase_add_test(tc, test_input_formats);
    tcase_add_loop_test(tc, test_samplers, 0, 4);
    tcase_add_test(tc, test_untouched_pixels);
    tcase_add_test(tc, test_extreme_masks);
    tcase_add_test(tc, test_threads_batch);
    tcase_add_test(tc, test_inpainting_model_txt2img);
    return tc;
}
