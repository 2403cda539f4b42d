/* cmd_sd3.c — whole-program tests of the SD3 wiring and the SDXL / Turbo
 * extras of `stipple txt2img`:
 *   - the sd3-tiny golden (diffusers StableDiffusion3Pipeline: MMDiT, three
 *     text encoders given as separate files with --clip-l / --clip-g /
 *     --t5xxl, flow-matching Euler by default) reproduces from the binary:
 *     every step's latent within 1e-4, the image within 1/255 on >= 99.9 %;
 *   - SD3 options (--no-t5, --t5-max-length), img2img on SD3, the samplers
 *     and flags refused for the wrong family, `stipple info` on SD3;
 *   - SDXL --original-size / --crop / --target-size: the defaults are the
 *     reference's (same image as no flags), other values change the image
 *     and are recorded in the PNG parameters;
 *   - a scheduler config with timestep_spacing "trailing" (Turbo) is
 *     followed by default: same image as --sampler euler_a --schedule
 *     trailing on the unedited model;
 *   - a decode that gives non-finite values is an error, never an image.
 */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

#define SD3_DIR "golden/sd3-tiny/"
#define SD3_MODEL SD3_DIR "model/sd3-tiny_f16.safetensors"
#define SD1_MODEL "golden/sd1-tiny/model/sd1-tiny_f16.safetensors"
#define SDXL_MODEL "golden/sdxl-tiny/model/sdxl-tiny_f16.safetensors"

/* The three text encoder flags of the sd3-tiny model (static buffer). */
static const char *sd3_te_flags(void)
{
    static char buf[4096];
    char l[1024], g[1024];
    snprintf(l, sizeof l, "%s", tu_data(SD3_DIR "model/text_encoders/clip_l_f16.safetensors"));
    snprintf(g, sizeof g, "%s", tu_data(SD3_DIR "model/text_encoders/clip_g_f16.safetensors"));
    snprintf(buf, sizeof buf, "--clip-l '%s' --clip-g '%s' --t5xxl '%s'", l, g,
             tu_data(SD3_DIR "model/text_encoders/t5xxl_f16.safetensors"));
    return buf;
}

/* Run `stipple ARGS`; returns the exit status, stderr in *err (cm_free). */
static int run_stipple(const char *args, char **out, char **err)
{
    size_t n = strlen(tu_stipple()) + strlen(args) + 8;
    char *cmd = malloc(n);
    ck_assert(cmd);
    snprintf(cmd, n, "'%s' %s", tu_stipple(), args);
    int rc = tu_run(cmd, out, err);
    free(cmd);
    return rc;
}

static void expect_error(const char *args, int want_rc, const char *needle)
{
    char *err = NULL;
    int rc = run_stipple(args, NULL, &err);
    ck_assert_msg(rc == want_rc, "stipple %s: exit %d, want %d; stderr: %s", args, rc, want_rc,
                  err ? err : "");
    ck_assert_msg(err && !strncmp(err, "stipple: error: ", 16), "stipple %s: stderr not an error line: %s",
                  args, err ? err : "");
    if (needle) ck_assert_msg(strstr(err, needle), "stipple %s: error lacks \"%s\": %s", args, needle, err);
    cm_free(err);
}

static void expect_ok(const char *args)
{
    char *err = NULL;
    int rc = run_stipple(args, NULL, &err);
    ck_assert_msg(rc == 0, "stipple %s\nexit %d: %s", args, rc, err ? err : "");
    cm_free(err);
}

/* Number of differing values between two PNGs of the same size. */
static int64_t png_diff(const char *a, const char *b)
{
    cm_image x, y;
    cm_error e = {0};
    ck_assert_msg(cm_image_read(a, &x, &e) == CM_OK, "%s", e.msg);
    ck_assert_msg(cm_image_read(b, &y, &e) == CM_OK, "%s", e.msg);
    ck_assert_int_eq(x.w, y.w);
    ck_assert_int_eq(x.h, y.h);
    int64_t d = 0;
    for (int64_t k = 0; k < (int64_t)x.w * x.h * 3; k++) d += x.rgb[k] != y.rgb[k];
    cm_image_release(&x);
    cm_image_release(&y);
    return d;
}

static const char *tmp_path(const char *name)
{
    static char buf[8][2048];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, sizeof buf[0], "%s/sd3_%s", tu_tmpdir(), name);
    return p;
}

/* ------------------------------------------------------- the SD3 golden */

START_TEST(test_sd3_golden)
{
    const char *golden = SD3_DIR "txt2img.safetensors";
    cJSON *meta = tu_golden_meta(golden);
    int steps = cJSON_GetObjectItem(meta, "steps")->valueint;
    int H = cJSON_GetObjectItem(meta, "height")->valueint, W = cJSON_GetObjectItem(meta, "width")->valueint;
    double cfg = cJSON_GetObjectItem(meta, "guidance_scale")->valuedouble;
    double seed = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "rng"), "seed")->valuedouble;
    int t5len = cJSON_GetObjectItem(meta, "max_sequence_length")->valueint;
    const char *prompt = cJSON_GetStringValue(cJSON_GetObjectItem(meta, "prompt"));
    const char *neg = cJSON_GetStringValue(cJSON_GetObjectItem(meta, "negative_prompt"));
    ck_assert(prompt && !strchr(prompt, '\'') && (!neg || !strchr(neg, '\'')));
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "scheduler"), "class")),
                     "FlowMatchEulerDiscreteScheduler");
    const char *dir = tmp_path("golden");
    mkdir(dir, 0755);
    /* No --sampler: flow_euler is SD3's default. */
    char args[16384];
    snprintf(args, sizeof args,
             "txt2img -m '%s' %s -p '%s' -n '%s' -W %d -H %d --steps %d --cfg %.17g --seed %.0f "
             "--rng cpu --t5-max-length %d --save-latents '%s/lat' -o '%s/out.png' --overwrite "
             "--quiet --threads 2",
             tu_data(SD3_MODEL), sd3_te_flags(), prompt, neg ? neg : "", W, H, steps, cfg, seed, t5len,
             dir, dir);
    expect_ok(args);

    for (int i = 0; i < steps; i++) {
        char name[64], path[4300];
        snprintf(name, sizeof name, "step%d.latents", i);
        snprintf(path, sizeof path, "%s/lat/step_%03d.npy", dir, i);
        cm_tensor want, got;
        tu_golden(golden, name, &want);
        cm_error e = {0};
        ck_assert_msg(cm_npy_read(path, &got, &e) == CM_OK, "%s", e.msg);
        ck_assert_int_eq(cm_tensor_numel(&got), cm_tensor_numel(&want));
        ck_assert_int_eq(got.shape[1], 16);
        char what[256];
        snprintf(what, sizeof what, "sd3-tiny txt2img %s", name);
        TU_ASSERT_CLOSE(what, got.data, want.data, cm_tensor_numel(&want), 1e-4);
        cm_tensor_release(&want);
        cm_tensor_release(&got);
    }
    cm_tensor ref;
    tu_golden(golden, "image_u8", &ref);
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
    fprintf(stderr, "sd3-tiny txt2img image: %.4f %% equal, max diff %lld\n", 100.0 * same / n, (long long)maxd);
    ck_assert_msg(maxd <= 1, "image differs by %lld", (long long)maxd);
    ck_assert_msg(same * 1000 >= n * 999, "only %lld of %lld values equal", (long long)same, (long long)n);
    char *params = tu_png_parameters(png);
    ck_assert_msg(strstr(params, "Steps: 10") && strstr(params, "Size: 96x64"), "parameters: %s", params);
    cm_free(params);
    cm_image_release(&img);
    cm_tensor_release(&ref);
    cJSON_Delete(meta);
}
END_TEST

/* --no-t5 and --t5-max-length change the conditioning (so the image);
 * the native size is the transformer's sample_size * 8; img2img runs. */
START_TEST(test_sd3_options)
{
    char args[16384], m[2048];
    snprintf(m, sizeof m, "%s", tu_data(SD3_MODEL)); /* tu_data's buffer is reused */
    const char *base = "-p 'a photo of a cat' --steps 2 --cfg 7 --seed 1 --quiet --overwrite";
    snprintf(args, sizeof args, "txt2img -m '%s' %s %s -o '%s'", m, sd3_te_flags(), base, tmp_path("t5.png"));
    expect_ok(args);
    snprintf(args, sizeof args, "txt2img -m '%s' %s %s --no-t5 -o '%s'", m, sd3_te_flags(), base,
             tmp_path("not5.png"));
    expect_ok(args);
    snprintf(args, sizeof args, "txt2img -m '%s' %s %s --t5-max-length 8 -o '%s'", m, sd3_te_flags(), base,
             tmp_path("t5len8.png"));
    expect_ok(args);
    ck_assert_msg(png_diff(tmp_path("t5.png"), tmp_path("not5.png")) > 0, "--no-t5 changed nothing");
    ck_assert_msg(png_diff(tmp_path("t5.png"), tmp_path("t5len8.png")) > 0, "--t5-max-length changed nothing");
    /* Without the T5 file: its rows are zeros, as --no-t5. */
    char l[1024], g[1024];
    snprintf(l, sizeof l, "%s", tu_data(SD3_DIR "model/text_encoders/clip_l_f16.safetensors"));
    snprintf(g, sizeof g, "%s", tu_data(SD3_DIR "model/text_encoders/clip_g_f16.safetensors"));
    snprintf(args, sizeof args, "txt2img -m '%s' --clip-l '%s' --clip-g '%s' %s -o '%s'", m, l, g, base,
             tmp_path("nofile.png"));
    expect_ok(args);
    ck_assert_int_eq(png_diff(tmp_path("not5.png"), tmp_path("nofile.png")), 0);
    cm_image img;
    cm_error e = {0};
    ck_assert_msg(cm_image_read(tmp_path("t5.png"), &img, &e) == CM_OK, "%s", e.msg);
    ck_assert_int_eq(img.w, 64); /* sample_size 8 x 8 */
    ck_assert_int_eq(img.h, 64);
    cm_image_release(&img);

    /* img2img: flow-matching add_noise at the start step, 2 of 4 steps run. */
    const char *dir = tmp_path("i2i");
    mkdir(dir, 0755);
    snprintf(args, sizeof args,
             "img2img -m '%s' %s -i '%s' %s --steps 4 --strength 0.5 --save-latents '%s/lat' -o '%s/out.png'",
             m, sd3_te_flags(), tu_data("images/i2i_rgb.png"), base, dir, dir);
    expect_ok(args);
    char p[4096];
    struct stat sb;
    snprintf(p, sizeof p, "%s/lat/step_001.npy", dir);
    ck_assert_msg(stat(p, &sb) == 0, "%s missing", p);
    snprintf(p, sizeof p, "%s/lat/step_002.npy", dir);
    ck_assert_msg(stat(p, &sb) != 0, "%s: more steps than strength 0.5 runs", p);
}
END_TEST

START_TEST(test_sd3_errors)
{
    char args[16384], m[2048], sd1[2048];
    const char *o = tmp_path("err.png");
    snprintf(m, sizeof m, "%s", tu_data(SD3_MODEL)); /* tu_data's buffer is reused */
    snprintf(sd1, sizeof sd1, "%s", tu_data(SD1_MODEL));
    snprintf(args, sizeof args, "txt2img -m '%s' %s -p x --steps 1 --sampler euler -o '%s' --overwrite", m,
             sd3_te_flags(), o);
    expect_error(args, 2, "flow_euler only");
    snprintf(args, sizeof args, "txt2img -m '%s' %s -p x --steps 1 --schedule trailing -o '%s' --overwrite", m,
             sd3_te_flags(), o);
    expect_error(args, 2, "--schedule");
    snprintf(args, sizeof args, "txt2img -m '%s' %s -p x --steps 1 --original-size 64x64 -o '%s' --overwrite", m,
             sd3_te_flags(), o);
    expect_error(args, 2, "only for SDXL");
    snprintf(args, sizeof args, "txt2img -m '%s' -p x --steps 1 --t5-max-length 0", m);
    expect_error(args, 2, "--t5-max-length");
    /* the CLIP towers are not in the checkpoint: named missing tensor */
    snprintf(args, sizeof args, "txt2img -m '%s' -p x --steps 1 -o '%s' --overwrite", m, o);
    expect_error(args, 1, "text_encoders.clip_l");
    snprintf(args, sizeof args, "txt2img -m '%s' --clip-l /nonexistent/clip_l.safetensors -p x -o '%s'", m, o);
    expect_error(args, 1, "/nonexistent/clip_l.safetensors");
    /* SD3 flags and sampler on a UNet model */
    snprintf(args, sizeof args, "txt2img -m '%s' -p x --steps 1 --sampler flow_euler -o '%s' --overwrite", sd1, o);
    expect_error(args, 2, "only for SD3");
    snprintf(args, sizeof args, "txt2img -m '%s' -p x --steps 1 --clip-l '%s' -o '%s' --overwrite", sd1,
             tu_data(SD3_DIR "model/text_encoders/clip_l_f16.safetensors"), o);
    expect_error(args, 2, "--clip-l");
    snprintf(args, sizeof args, "txt2img -m '%s' -p x --steps 1 --no-t5 -o '%s' --overwrite", sd1, o);
    expect_error(args, 2, "--no-t5");
}
END_TEST

START_TEST(test_sd3_info)
{
    char args[16384], *out = NULL;
    snprintf(args, sizeof args, "info '%s'", tu_data(SD3_MODEL));
    ck_assert_int_eq(run_stipple(args, &out, NULL), 0);
    ck_assert_msg(out && strstr(out, "sd3") && strstr(out, "transformer"), "info: %s", out ? out : "");
    cm_free(out);
    /* with the separate text encoder files: all three towers */
    char m[2048];
    snprintf(m, sizeof m, "%s", tu_data(SD3_MODEL));
    snprintf(args, sizeof args, "info '%s' %s", m, sd3_te_flags());
    ck_assert_int_eq(run_stipple(args, &out, NULL), 0);
    ck_assert_msg(out && strstr(out, "text_encoder_2 ") && strstr(out, "text_encoder_3 "), "info: %s", out ? out : "");
    cm_free(out);
    /* encode: (2, 77 + 256, 128) context and (2, 96) pooled rows */
    char o[2048], po[2100];
    snprintf(o, sizeof o, "%s", tmp_path("enc.npy"));
    snprintf(po, sizeof po, "%s", tmp_path("enc.pooled.npy"));
    snprintf(args, sizeof args, "encode -m '%s' %s -p 'a photo of a cat' -o '%s' --quiet", m, sd3_te_flags(), o);
    ck_assert_int_eq(run_stipple(args, NULL, NULL), 0);
    cm_tensor t;
    cm_error e = {0};
    ck_assert_msg(cm_npy_read(o, &t, &e) == CM_OK, "%s", e.msg);
    ck_assert_int_eq(t.ndim, 3);
    ck_assert_int_eq(t.shape[0], 2);
    ck_assert_int_eq(t.shape[1], 77 + 256);
    ck_assert_int_eq(t.shape[2], 128);
    cm_tensor_release(&t);
    ck_assert_msg(cm_npy_read(po, &t, &e) == CM_OK, "%s", e.msg);
    ck_assert_int_eq(t.shape[1], 96);
    cm_tensor_release(&t);
}
END_TEST

/* ------------------------------------------- mkckpt --family sd3 layout */

/* A tensor name with the joint block / text layer index folded: "B" for
 * every MMDiT block but the last (pre-only context stream: "L"), "N" for
 * text encoder layers, so a 24-block table compares with a 2-block one. */
static void fold_name(const char *name, int last_block, char *out, size_t cap)
{
    const char *jb = strstr(name, "joint_blocks."), *ly = strstr(name, "layers.");
    const char *at = jb ? jb + 13 : ly ? ly + 7 : NULL;
    if (!at) {
        snprintf(out, cap, "%s", name);
        return;
    }
    char *end;
    long i = strtol(at, &end, 10);
    snprintf(out, cap, "%.*s%s%s", (int)(at - name), name, jb ? (i == last_block ? "L" : "B") : "N", end);
}

/* Folded names of a name<TAB>dtype<TAB>shape table (header line skipped),
 * with `prefix` removed from those that have it (others dropped when
 * only_prefix), as one sorted newline-joined string. */
static char *folded_set(const char *table, const char *prefix, int only_prefix, int last_block)
{
    size_t cap = strlen(table) + 16, n = 0, count = 0;
    char **names = malloc(20000 * sizeof *names);
    ck_assert_ptr_nonnull(names);
    for (const char *p = table; *p && count < 20000;) {
        const char *nl = strchr(p, '\n'), *tab = strchr(p, '\t');
        size_t len = (size_t)((tab && (!nl || tab < nl) ? tab : nl ? nl : p + strlen(p)) - p);
        char name[512], f[512];
        memcpy(name, p, len < sizeof name ? len : sizeof name - 1);
        name[len < sizeof name ? len : sizeof name - 1] = 0;
        p = nl ? nl + 1 : p + strlen(p);
        if (!strcmp(name, "name") || !name[0]) continue;
        const char *nm = name;
        size_t pl = prefix ? strlen(prefix) : 0;
        if (pl && !strncmp(nm, prefix, pl)) nm += pl;
        else if (only_prefix) continue;
        /* where a VAE block changes width (1x1 shortcut) follows the
         * channel list, which the tiny model shrinks */
        if (strstr(nm, "nin_shortcut")) continue;
        fold_name(nm, last_block, f, sizeof f);
        names[count++] = strdup(f);
    }
    qsort(names, count, sizeof *names, cmp_str);
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    out[0] = 0;
    for (size_t i = 0; i < count; i++)
        if (!i || strcmp(names[i], names[i - 1])) n += (size_t)snprintf(out + n, cap - n, "%s\n", names[i]);
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
    return out;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert(s && fread(s, 1, (size_t)n, f) == (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

/* tools/mkckpt --family sd3 (SD3 Medium, sd3_medium_incl_clips layout):
 * its tensor names, block indices folded, are exactly those of the
 * reference's sd3-tiny files (MMDiT + VAE (but for the 1x1 shortcuts,
 * placed by the tiny model's own channel list) in the checkpoint, CLIP-L and
 * bigG with text_projection in the text encoder files; tiny has 2 blocks,
 * Medium 24); and stipple takes the table: a sparse file with its header
 * is an SD3 model of width 1536 with 24 joint blocks to `stipple info`. */
START_TEST(test_sd3_mkckpt_layout)
{
    char cmd[4096], *table = NULL;
    snprintf(cmd, sizeof cmd, "'%s' --family sd3 --list", STIPPLE_MKCKPT_BIN);
    ck_assert_int_eq(tu_run(cmd, &table, NULL), 0);
    char *tiny = read_text(tu_data(SD3_DIR "model/sd3-tiny_f16.keys.tsv"));
    char *a = folded_set(table, "model.diffusion_model.", 1, 23), *b = folded_set(tiny, "model.diffusion_model.", 1, 1);
    if (strcmp(a, b)) fprintf(stderr, "mkckpt:\n%s\nreference:\n%s", a, b);
    ck_assert_msg(!strcmp(a, b), "MMDiT names differ (lists on stderr)");
    free(a);
    free(b);
    a = folded_set(table, "first_stage_model.", 1, -1);
    b = folded_set(tiny, "first_stage_model.", 1, -1);
    if (strcmp(a, b)) fprintf(stderr, "mkckpt:\n%s\nreference:\n%s", a, b);
    ck_assert_msg(!strcmp(a, b), "VAE names differ (lists on stderr)");
    free(a);
    free(b);
    static const char *const te[2][2] = {{"text_encoders.clip_l.transformer.", "clip_l_f16.keys.tsv"},
                                         {"text_encoders.clip_g.transformer.", "clip_g_f16.keys.tsv"}};
    for (int k = 0; k < 2; k++) {
        char rel[256];
        snprintf(rel, sizeof rel, SD3_DIR "model/text_encoders/%s", te[k][1]);
        char *ref = read_text(tu_data(rel));
        a = folded_set(table, te[k][0], 1, -1);
        b = folded_set(ref, NULL, 0, -1);
        if (strcmp(a, b)) fprintf(stderr, "mkckpt:\n%s\nreference:\n%s", a, b);
        ck_assert_msg(!strcmp(a, b), "%s names differ (lists on stderr)", te[k][1]);
        free(a);
        free(b);
        free(ref);
    }
    free(tiny);

    /* the header over a sparse data area */
    cJSON *h = cJSON_CreateObject();
    uint64_t off = 0;
    for (const char *p = table; *p;) {
        char name[512], dtype[16], shape[128], line[800];
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        memcpy(line, p, len < sizeof line ? len : sizeof line - 1);
        line[len < sizeof line ? len : sizeof line - 1] = 0;
        p += nl ? len + 1 : len;
        if (sscanf(line, "%511[^\t]\t%15[^\t]\t%127[^\n]", name, dtype, shape) != 3) continue;
        cJSON *t = cJSON_CreateObject(), *sh = cJSON_Parse(shape);
        ck_assert_ptr_nonnull(sh);
        uint64_t n = 1;
        cJSON *d;
        cJSON_ArrayForEach(d, sh) n *= (uint64_t)d->valuedouble;
        uint64_t es = !strcmp(dtype, "F16") ? 2 : !strcmp(dtype, "F32") ? 4 : 8;
        cJSON_AddStringToObject(t, "dtype", dtype);
        cJSON_AddItemToObject(t, "shape", sh);
        cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + n * es)));
        off += n * es;
        cJSON_AddItemToObject(h, name, t);
    }
    char *hdr = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    const char *path = tu_st_write("sd3-medium-sparse.safetensors", hdr, 0, NULL, 0);
    free(hdr);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(truncate(path, st.st_size + (off_t)off), 0);
    char *out = NULL, args[4300];
    snprintf(args, sizeof args, "info '%s'", path);
    ck_assert_int_eq(run_stipple(args, &out, NULL), 0);
    ck_assert_msg(out && strstr(out, "family:       sd3") && strstr(out, "hidden 768, 12 layers") &&
                      strstr(out, "hidden 1280, 32 layers") && strstr(out, "latent 16 channels"),
                  "info: %s", out ? out : "");
    cm_free(out);
    cm_free(table);
    unlink(path);
}
END_TEST

/* ------------------------------------------------ SDXL micro-conditioning */

START_TEST(test_sdxl_micro_conditioning)
{
    char args[16384];
    char m[2048];
    snprintf(m, sizeof m, "%s", tu_data(SDXL_MODEL));
    const char *base = "-p 'a photo of a cat' -W 64 -H 64 --steps 2 --cfg 7.5 --sampler ddim --seed 3 --quiet "
                       "--overwrite";
    snprintf(args, sizeof args, "txt2img -m '%s' %s -o '%s'", m, base, tmp_path("xl_def.png"));
    expect_ok(args);
    snprintf(args, sizeof args, "txt2img -m '%s' %s --original-size 64x64 --crop 0,0 --target-size 64x64 -o '%s'",
             m, base, tmp_path("xl_same.png"));
    expect_ok(args);
    ck_assert_int_eq(png_diff(tmp_path("xl_def.png"), tmp_path("xl_same.png")), 0);
    char *p0 = tu_png_parameters(tmp_path("xl_def.png")), *p1 = tu_png_parameters(tmp_path("xl_same.png"));
    ck_assert_str_eq(p0, p1); /* defaults are not recorded */
    snprintf(args, sizeof args, "txt2img -m '%s' %s --original-size 256x128 --crop 8x16 -o '%s'", m, base,
             tmp_path("xl_orig.png"));
    expect_ok(args);
    ck_assert_msg(png_diff(tmp_path("xl_def.png"), tmp_path("xl_orig.png")) > 0, "--original-size changed nothing");
    char *p2 = tu_png_parameters(tmp_path("xl_orig.png"));
    ck_assert_msg(strstr(p2, "Original size: 256x128") && strstr(p2, "Crop: 8x16") && !strstr(p2, "Target size"),
                  "parameters: %s", p2);
    snprintf(args, sizeof args, "txt2img -m '%s' %s --target-size 32x96 -o '%s'", m, base, tmp_path("xl_tgt.png"));
    expect_ok(args);
    ck_assert_msg(png_diff(tmp_path("xl_def.png"), tmp_path("xl_tgt.png")) > 0, "--target-size changed nothing");
    cm_free(p0);
    cm_free(p1);
    cm_free(p2);
    expect_error("txt2img -p x --crop 8", 2, "--crop");
    expect_error("txt2img -p x --original-size 0x64", 2, "--original-size");
    expect_error("txt2img -p x --target-size 64x", 2, "--target-size");
    snprintf(args, sizeof args, "txt2img -m '%s' -p x --steps 1 --crop 0x8 -o '%s' --overwrite", tu_data(SD1_MODEL),
             tmp_path("err.png"));
    expect_error(args, 2, "only for SDXL");
}
END_TEST

/* ------------------------------------------------------------ Turbo-style */

static void make_turbo(cJSON *hdr, void *arg)
{
    (void)arg;
    cJSON *md = cJSON_GetObjectItem(hdr, "__metadata__");
    cJSON *cs = cJSON_GetObjectItem(md, "stipple.config");
    cJSON *cfg = cJSON_Parse(cJSON_GetStringValue(cs));
    ck_assert(cfg);
    cJSON *sch = cJSON_GetObjectItem(cfg, "scheduler");
    ck_assert(sch);
    cJSON_ReplaceItemInObject(sch, "timestep_spacing", cJSON_CreateString("trailing"));
    cJSON_AddStringToObject(sch, "_class_name", "EulerAncestralDiscreteScheduler");
    char *txt = cJSON_PrintUnformatted(cfg);
    cJSON_ReplaceItemInObject(md, "stipple.config", cJSON_CreateString(txt));
    cJSON_free(txt);
    cJSON_Delete(cfg);
}

/* A model's "stipple.defaults" metadata (the built-in model's) sets the
 * guidance and steps a job does not give; flags win. */
static void add_defaults(cJSON *hdr, void *arg)
{
    cJSON *md = cJSON_GetObjectItem(hdr, "__metadata__");
    ck_assert(md);
    cJSON_AddStringToObject(md, "stipple.defaults", (const char *)arg);
}

START_TEST(test_model_defaults)
{
    const char *m = tu_st_edit(tu_data(SD1_MODEL), "sd1-defaults.safetensors", add_defaults,
                               (void *)"{\"cfg\": 3.5, \"steps\": 3}");
    char args[16384], mp[2048];
    snprintf(mp, sizeof mp, "%s", m);
    snprintf(args, sizeof args, "txt2img -m '%s' -p 'a cat' --seed 1 --quiet --overwrite -o '%s'", mp,
             tmp_path("defaults.png"));
    ck_assert_int_eq(run_stipple(args, NULL, NULL), 0);
    char *p = tu_png_parameters(tmp_path("defaults.png"));
    ck_assert_msg(strstr(p, "Steps: 3,") && strstr(p, "CFG scale: 3.5,"), "%s", p);
    cm_free(p);
    snprintf(args, sizeof args, "txt2img -m '%s' -p 'a cat' --seed 1 --steps 2 --cfg 6 --quiet --overwrite -o '%s'",
             mp, tmp_path("defaults2.png"));
    ck_assert_int_eq(run_stipple(args, NULL, NULL), 0);
    p = tu_png_parameters(tmp_path("defaults2.png"));
    ck_assert_msg(strstr(p, "Steps: 2,") && strstr(p, "CFG scale: 6,"), "%s", p);
    cm_free(p);
    /* without the metadata: stipple's own defaults (20 steps, 7.5) */
    snprintf(args, sizeof args, "txt2img -m '%s' -p 'a cat' --seed 1 --quiet --overwrite -o '%s'",
             tu_data(SD1_MODEL), tmp_path("defaults3.png"));
    ck_assert_int_eq(run_stipple(args, NULL, NULL), 0);
    p = tu_png_parameters(tmp_path("defaults3.png"));
    ck_assert_msg(strstr(p, "Steps: 20,") && strstr(p, "CFG scale: 7.5,"), "%s", p);
    cm_free(p);
}
END_TEST

START_TEST(test_turbo_scheduler_config)
{
    const char *turbo = tu_st_edit(tu_data(SD1_MODEL), "sd1-turbo.safetensors", make_turbo, NULL);
    char args[16384];
    const char *base = "-p 'a photo of a cat' --steps 2 --cfg 1 --seed 7 --quiet --overwrite";
    snprintf(args, sizeof args, "txt2img -m '%s' %s -o '%s'", turbo, base, tmp_path("turbo.png"));
    expect_ok(args);
    snprintf(args, sizeof args, "txt2img -m '%s' %s --sampler euler_a --schedule trailing -o '%s'",
             tu_data(SD1_MODEL), base, tmp_path("turbo_explicit.png"));
    expect_ok(args);
    snprintf(args, sizeof args, "txt2img -m '%s' %s -o '%s'", tu_data(SD1_MODEL), base, tmp_path("plain.png"));
    expect_ok(args);
    ck_assert_int_eq(png_diff(tmp_path("turbo.png"), tmp_path("turbo_explicit.png")), 0);
    ck_assert_msg(png_diff(tmp_path("turbo.png"), tmp_path("plain.png")) > 0, "the trailing config changed nothing");
    char *p = tu_png_parameters(tmp_path("turbo.png"));
    ck_assert_msg(strstr(p, "Sampler: Euler a") && !strstr(p, "Karras"), "parameters: %s", p);
    cm_free(p);
    /* --help documents the Turbo settings */
    char *out = NULL;
    ck_assert_int_eq(run_stipple("txt2img --help", &out, NULL), 0);
    ck_assert_msg(out && strstr(out, "Turbo") && strstr(out, "--schedule trailing"), "help: %s", out ? out : "");
    cm_free(out);
}
END_TEST

/* --------------------------------------------------- non-finite decode */

START_TEST(test_nonfinite_decode_is_an_error)
{
    /* Latents of 3e38 overflow in the sampler: the decoded image would be
     * NaN; the program refuses to write it. */
    cm_tensor t = {.ndim = 4, .shape = {1, 4, 8, 8}};
    float v[256];
    for (int k = 0; k < 256; k++) v[k] = (k & 1) ? 3e38f : -3e38f;
    t.data = v;
    cm_error e = {0};
    const char *np = tmp_path("huge.npy");
    ck_assert_msg(cm_npy_write(np, &t, &e) == CM_OK, "%s", e.msg);
    char args[8192];
    const char *o = tmp_path("nan.png");
    remove(o);
    snprintf(args, sizeof args, "txt2img -m '%s' -p x -W 64 -H 64 --steps 1 --sampler ddim --seed 1 --quiet --init-noise '%s' -o '%s'",
             tu_data(SD1_MODEL), np, o);
    expect_error(args, 1, "non-finite");
    struct stat sb;
    ck_assert_msg(stat(o, &sb) != 0, "%s was written", o);
}
END_TEST

TCase *tc_cmd_sd3(void)
{
    TCase *tc = tu_tcase("cmd_sd3");
    tcase_add_test(tc, test_sd3_golden);
    tcase_add_test(tc, test_sd3_options);
    tcase_add_test(tc, test_sd3_errors);
    tcase_add_test(tc, test_sd3_info);
    tcase_add_test(tc, test_sd3_mkckpt_layout);
    tcase_add_test(tc, test_model_defaults);
    tcase_add_test(tc, test_sdxl_micro_conditioning);
    tcase_add_test(tc, test_turbo_scheduler_config);
    tcase_add_test(tc, test_nonfinite_decode_is_an_error);
    return tc;
}
