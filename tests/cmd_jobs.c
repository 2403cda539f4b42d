/* cmd_jobs.c — whole-program tests of scripting and scale (issue 9):
 * `stipple jobs` (20 JSON jobs, one bad: 19 images, 20 result lines, one
 * model load, exit 1), sharding (1 vs 3 shards byte-identical; --shard,
 * SLURM_ARRAY_TASK_ID/COUNT, JOB_COMPLETION_INDEX with --shard-count),
 * --from-file (plain and A1111 prompts-from-file lines), --from-png (a
 * stipple PNG regenerates byte for byte; an A1111 infotext, a ComfyUI
 * prompt graph and a stable-diffusion.cpp text parse), --skip-existing.
 * All on the sd1-tiny model at 64x96 with 2-3 steps.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SD1 "golden/sd1-tiny/model/sd1-tiny_f16.safetensors"
#define SMALL "-W 64 -H 96 --steps 2 --quiet"

/* A fresh folder under the scratch dir. */
static const char *folder(const char *name)
{
    static char dir[8][4096];
    static int k;
    char *d = dir[k++ & 7];
    snprintf(d, 4096, "%s/%s", tu_tmpdir(), name);
    mkdir(d, 0755);
    return d;
}

static int run(const char *cmdline, char **out)
{
    char *err = NULL;
    int rc = tu_run(cmdline, out, &err);
    if (rc && err) fprintf(stderr, "%s: %s", cmdline, err);
    cm_free(err);
    return rc;
}

static int exists(const char *dir, const char *name)
{
    char p[8192];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static int exists_img(const char *dir, int i)
{
    char name[32];
    snprintf(name, sizeof name, "img-%d.png", i);
    return exists(dir, name);
}

static int same_bytes(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    cm_error err = {0};
    int same = !cm_file_read_all(a, &x, &nx, &err) && !cm_file_read_all(b, &y, &ny, &err) && nx == ny &&
               !memcmp(x, y, nx);
    cm_free(x);
    cm_free(y);
    return same;
}

/* Parse the stdout JSON lines; returns how many, each checked to be JSON. */
static int json_lines(const char *out, cJSON **lines, int max)
{
    int n = 0;
    for (const char *p = out; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        cm_error err = {0};
        cJSON *j = wt_json_parse(p, l, "result line", &err);
        ck_assert_msg(j, "not a JSON line: %.*s (%s)", (int)l, p, err.msg);
        if (n < max) lines[n] = j;
        else cJSON_Delete(j);
        n++;
        p = nl ? nl + 1 : NULL;
    }
    return n;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ------------------------------------------------------------------ jobs */

START_TEST(test_jobs_stream)
{
    const char *dir = folder("jobs");
    char jobs[8192], cmd[16384], *out = NULL;
    snprintf(jobs, sizeof jobs, "%s/jobs.jsonl", dir);
    FILE *f = fopen(jobs, "w");
    ck_assert(f);
    for (int i = 0; i < 20; i++) {
        if (i == 7) fprintf(f, "{\"prompt\": \"bad job\", \"steps\": 0}\n");
        else if (i % 5 == 1) fprintf(f, "{\"prompt\": \"job %d\", \"seed\": %d, \"sampler\": \"Euler a\", \"output\": \"%s/named-%d.png\"}\n", i, 1000 + i, dir, i);
        else fprintf(f, "{\"prompt\": \"job %d\", \"negative\": \"blurry\", \"cfg\": 5.5}\n", i);
    }
    fclose(f);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' jobs -m '%s' " SMALL " --seed 40 < '%s'", dir, tu_stipple(),
             tu_data(SD1), jobs);
    int rc = run(cmd, &out);
    ck_assert_msg(rc == 1, "jobs with one bad job: exit %d, want 1", rc);
    cJSON *lines[32];
    int n = json_lines(out, lines, 32);
    ck_assert_msg(n == 20, "%d result lines, want 20", n);
    int images = 0, errors = 0, loads = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(lines[i], "index");
        ck_assert_int_eq((int)idx->valuedouble, i);
        if (jstr(lines[i], "error")) {
            errors++;
            ck_assert_int_eq(i, 7);
            ck_assert_msg(strstr(jstr(lines[i], "error"), "--steps"), "error line: %s", jstr(lines[i], "error"));
            continue;
        }
        const char *path = jstr(lines[i], "output");
        char full[8192];
        snprintf(full, sizeof full, "%s%s%s", path[0] == '/' ? "" : dir, path[0] == '/' ? "" : "/", path);
        ck_assert_msg(access(full, F_OK) == 0, "%s missing", full);
        images++;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(lines[i], "time");
        if (cJSON_GetObjectItemCaseSensitive(t, "load")->valuedouble > 0) loads++;
        const char *params = jstr(lines[i], "parameters");
        uint64_t seed = (uint64_t)cJSON_GetObjectItemCaseSensitive(lines[i], "seed")->valuedouble;
        /* a job's seed or base + index */
        ck_assert_int_eq((int)seed, i % 5 == 1 ? 1000 + i : 40 + i);
        if (i % 5 == 1) ck_assert(strstr(params, "Sampler: Euler a") && strstr(path, "named-"));
        else ck_assert(strstr(params, "Negative prompt: blurry") && strstr(params, "CFG scale: 5.5"));
    }
    ck_assert_int_eq(images, 19);
    ck_assert_int_eq(errors, 1);
    ck_assert_msg(loads == 1, "the load time shows up on %d lines: the model must load once", loads);
    for (int i = 0; i < 20 && i < n; i++) cJSON_Delete(lines[i]);
    cm_free(out);

    /* resume: every output exists, --skip-existing makes nothing new */
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' jobs -m '%s' " SMALL " --seed 40 --skip-existing < '%s'", dir,
             tu_stipple(), tu_data(SD1), jobs);
    rc = run(cmd, &out);
    ck_assert_int_eq(rc, 1);
    ck_assert_int_eq(json_lines(out, lines, 0), 20);
    int skipped = 0;
    for (const char *p = out; (p = strstr(p, "\"skipped\": true")); p++) skipped++;
    ck_assert_int_eq(skipped, 19);
    cm_free(out);
}
END_TEST

START_TEST(test_jobs_bad_lines)
{
    char cmd[8192], *out = NULL;
    const char *dir = folder("jobs_bad");
    snprintf(cmd, sizeof cmd,
             "cd '%s' && printf '%%s\\n' 'not json' '[1]' '{\"prompt\": \"x\", \"bogus\": 1}' '{\"prompt\": 3}' "
             "'{\"mode\": \"nope\"}' '' '{\"prompt\": \"ok\"}' | '%s' jobs -m '%s' " SMALL " --seed 1",
             dir, tu_stipple(), tu_data(SD1));
    int rc = run(cmd, &out);
    ck_assert_int_eq(rc, 1);
    cJSON *lines[8];
    int n = json_lines(out, lines, 8);
    ck_assert_int_eq(n, 6); /* the empty line is no job */
    for (int i = 0; i < 5; i++) ck_assert_msg(jstr(lines[i], "error"), "line %d is not an error", i);
    ck_assert(strstr(jstr(lines[2], "error"), "bogus"));
    ck_assert_str_eq(jstr(lines[5], "output"), "stipple-5-6.png");
    for (int i = 0; i < n; i++) cJSON_Delete(lines[i]);
    cm_free(out);
}
END_TEST

/* --------------------------------------------------------------- sharding */

START_TEST(test_shards_identical)
{
    const char *one = folder("shard1"), *three = folder("shard3");
    char cmd[8192];
    const char *base = "-p 'a lighthouse' " SMALL " --seed 77 --batch-count 5";
    snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' %s -o '%s/img-{index}.png'", tu_stipple(), tu_data(SD1), base, one);
    ck_assert_int_eq(run(cmd, NULL), 0);
    for (int k = 0; k < 3; k++) {
        snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' %s -o '%s/img-{index}.png' --shard %d/3", tu_stipple(),
                 tu_data(SD1), base, three, k);
        ck_assert_int_eq(run(cmd, NULL), 0);
    }
    for (int i = 0; i < 5; i++) {
        char a[8192], b[8192];
        snprintf(a, sizeof a, "%s/img-%d.png", one, i);
        snprintf(b, sizeof b, "%s/img-%d.png", three, i);
        ck_assert_msg(same_bytes(a, b), "image %d differs between 1 and 3 shards", i);
    }

    /* Slurm array task 1 of 3: images 1 and 4 */
    const char *slurm = folder("slurm");
    snprintf(cmd, sizeof cmd, "SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_COUNT=3 '%s' txt2img -m '%s' %s -o '%s/img-{index}.png'",
             tu_stipple(), tu_data(SD1), base, slurm);
    ck_assert_int_eq(run(cmd, NULL), 0);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(exists_img(slurm, i), i == 1 || i == 4);
    char a[8192], b[8192];
    snprintf(a, sizeof a, "%s/img-4.png", one);
    snprintf(b, sizeof b, "%s/img-4.png", slurm);
    ck_assert(same_bytes(a, b));
    /* Kubernetes Indexed Job: completion index 2 of --shard-count 3 */
    const char *k8s = folder("k8s");
    snprintf(cmd, sizeof cmd, "JOB_COMPLETION_INDEX=2 '%s' txt2img -m '%s' %s -o '%s/img-{index}.png' --shard-count 3",
             tu_stipple(), tu_data(SD1), base, k8s);
    ck_assert_int_eq(run(cmd, NULL), 0);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(exists_img(k8s, i), i == 2);
    snprintf(a, sizeof a, "%s/img-2.png", one);
    snprintf(b, sizeof b, "%s/img-2.png", k8s);
    ck_assert(same_bytes(a, b));
    /* the examples' own lines: Slurm's 1-based arrays via SLURM_ARRAY_TASK_MIN */
    const char *slurm1 = folder("slurm1");
    snprintf(cmd, sizeof cmd, "SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_COUNT=3 '%s' txt2img -m '%s' %s -o '%s/img-{index}.png'",
             tu_stipple(), tu_data(SD1), base, slurm1);
    ck_assert_int_eq(run(cmd, NULL), 0);
    ck_assert(exists(slurm1, "img-2.png") && !exists(slurm1, "img-0.png"));

    /* usage errors: malformed shard, index without count, random seed */
    char *out = NULL, *err = NULL;
    const char *bad[] = {"--shard 3/3", "--shard x", "--shard-count 0", "--shard 0/2 --seed -1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "'%s' txt2img -p x -m '%s' %s", tu_stipple(), tu_data(SD1), bad[i]);
        ck_assert_msg(tu_run(cmd, &out, &err) == 2, "%s: want exit 2", bad[i]);
        ck_assert(err && !strncmp(err, "stipple: error: ", 16));
        cm_free(out);
        cm_free(err);
    }
    snprintf(cmd, sizeof cmd, "JOB_COMPLETION_INDEX=1 '%s' txt2img -p x -m '%s' --seed 1", tu_stipple(), tu_data(SD1));
    ck_assert_int_eq(tu_run(cmd, &out, &err), 2);
    ck_assert(strstr(err, "--shard-count"));
    cm_free(out);
    cm_free(err);
}
END_TEST

/* -------------------------------------------------------------- from file */

START_TEST(test_from_file)
{
    const char *dir = folder("fromfile");
    char path[8192], cmd[16384], *out = NULL;
    snprintf(path, sizeof path, "%s/prompts.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert(f);
    fputs("a plain prompt, with commas\n"
          "\n"
          "--prompt \"a red (ball:1.2)\" --negative_prompt 'blurry, bad' --steps 3 --seed 7 --cfg_scale 6 --sampler_name \"Euler a\"\n"
          "--prompt two words --n_iter 2 --sampler_name \"DPM++ 2M Karras\"\n"
          "--prompt x --frob 1\n",
          f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' txt2img -m '%s' " SMALL " --seed 10 --json -o 'f-{index}-{seed}.png' --from-file '%s'",
             dir, tu_stipple(), tu_data(SD1), path);
    int rc = run(cmd, &out);
    ck_assert_int_eq(rc, 1);
    cJSON *l[8];
    int n = json_lines(out, l, 8);
    ck_assert_int_eq(n, 5);
    ck_assert(strstr(jstr(l[0], "parameters"), "a plain prompt, with commas\nSteps: 2"));
    ck_assert_str_eq(jstr(l[0], "output"), "f-0-10.png");
    const char *p1 = jstr(l[1], "parameters");
    ck_assert_msg(strstr(p1, "a red (ball:1.2)\nNegative prompt: blurry, bad\nSteps: 3, Sampler: Euler a, CFG scale: 6, Seed: 7"), "%s", p1);
    /* line 3: two images, seeds base + index 2 and 3 */
    ck_assert(strstr(jstr(l[2], "parameters"), "two words\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras"));
    ck_assert_str_eq(jstr(l[2], "output"), "f-2-12.png");
    ck_assert_str_eq(jstr(l[3], "output"), "f-3-13.png");
    ck_assert(strstr(jstr(l[4], "error"), "--frob"));
    for (int i = 0; i < n; i++) cJSON_Delete(l[i]);
    cm_free(out);
}
END_TEST

/* --------------------------------------------------------------- from png */

/* A 8x8 grey PNG carrying one text chunk. */
static const char *png_with(const char *name, const char *key, const char *text)
{
    static char path[4][8192];
    static int k;
    char *p = path[k++ & 3];
    uint8_t rgb[8 * 8 * 3];
    memset(rgb, 128, sizeof rgb);
    cm_png_text t = {key, text};
    uint8_t *png = NULL;
    size_t n = 0;
    cm_error err = {0};
    ck_assert(!cm_png_encode(rgb, 8, 8, &t, 1, &png, &n, &err));
    snprintf(p, 8192, "%s/%s", tu_tmpdir(), name);
    ck_assert(!cm_file_write_atomic(p, png, n, 1, &err));
    cm_free(png);
    return p;
}

/* The parameters text of a txt2img run from `png` with overrides after. */
static char *params_from(const char *png, const char *after, const char *outname)
{
    char cmd[16384], *out = NULL;
    snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' --from-png '%s' %s --json --quiet --overwrite -o '%s/%s'",
             tu_stipple(), tu_data(SD1), png, after, tu_tmpdir(), outname);
    int rc = run(cmd, &out);
    ck_assert_msg(rc == 0, "%s: exit %d", cmd, rc);
    cJSON *l[1];
    ck_assert_int_eq(json_lines(out, l, 1), 1);
    char *p = strdup(jstr(l[0], "parameters"));
    cJSON_Delete(l[0]);
    cm_free(out);
    return p;
}

START_TEST(test_from_png)
{
    /* a stipple PNG regenerates byte for byte */
    char cmd[16384], a[1024], b[1024];
    snprintf(a, sizeof a, "%s/orig.png", tu_tmpdir());
    snprintf(b, sizeof b, "%s/again.png", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' -p 'a (small:1.1) boat\nat dawn' -n 'fog' " SMALL
             " --sampler euler_a --cfg 4.5 --seed 31337 -o '%s'", tu_stipple(), tu_data(SD1), a);
    ck_assert_int_eq(run(cmd, NULL), 0);
    snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' --from-png '%s' --quiet -o '%s'", tu_stipple(), tu_data(SD1), a, b);
    ck_assert_int_eq(run(cmd, NULL), 0);
    ck_assert_msg(same_bytes(a, b), "--from-png did not regenerate the stipple PNG byte for byte");

    /* AUTOMATIC1111's infotext (its documented format: prompt, Negative
     * prompt line, then Key: value pairs; a quoted value with a comma);
     * flags after --from-png override steps and size */
    const char *a1111 =
        "masterpiece, a photo of a (red:1.2) fox in the snow,\n"
        "highly detailed\n"
        "Negative prompt: blurry, lowres, (worst quality:1.4)\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        "Lora hashes: \"add_detail: 7c6bad76eb54, other: 0123\", Version: v1.10.1";
    char *p = params_from(png_with("a1111.png", "parameters", a1111), SMALL, "a1111_out.png");
    ck_assert_msg(!strncmp(p, "masterpiece, a photo of a (red:1.2) fox in the snow,\nhighly detailed\n"
                              "Negative prompt: blurry, lowres, (worst quality:1.4)\n"
                              "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 64x96",
                           strlen("masterpiece, a photo of a (red:1.2) fox in the snow,\nhighly detailed\n"
                                  "Negative prompt: blurry, lowres, (worst quality:1.4)\n"
                                  "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 64x96")),
                  "A1111 infotext read back as: %s", p);
    free(p);
    /* older A1111: "DPM++ 2M Karras" as one sampler label */
    p = params_from(png_with("a1111_old.png", "parameters",
                             "cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x512"),
                    SMALL " --seed 6", "a1111_old_out.png");
    ck_assert_msg(strstr(p, "cat\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 6,"), "%s", p);
    free(p);

    /* stable-diffusion.cpp */
    p = params_from(png_with("sdcpp.png", "parameters",
                             "a tree\nNegative prompt: ugly\nSteps: 4, CFG scale: 3, Guidance: 3.5, Eta: 0, Seed: 42, "
                             "Size: 64x96, Model: m, RNG: cuda, Sampler: euler_a, Version: stable-diffusion.cpp"),
                    "--steps 2 --quiet", "sdcpp_out.png");
    ck_assert_msg(strstr(p, "a tree\nNegative prompt: ugly\nSteps: 2, Sampler: Euler a, CFG scale: 3, Seed: 42, Size: 64x96"), "%s", p);
    free(p);

    /* ComfyUI's API prompt graph */
    const char *comfy =
        "{\"3\": {\"class_type\": \"KSampler\", \"inputs\": {\"seed\": 8566257, \"steps\": 20, \"cfg\": 8, "
        "\"sampler_name\": \"euler\", \"scheduler\": \"karras\", \"denoise\": 1, \"model\": [\"4\", 0], "
        "\"positive\": [\"6\", 0], \"negative\": [\"7\", 0], \"latent_image\": [\"5\", 0]}}, "
        "\"4\": {\"class_type\": \"CheckpointLoaderSimple\", \"inputs\": {\"ckpt_name\": \"v1-5.safetensors\"}}, "
        "\"5\": {\"class_type\": \"EmptyLatentImage\", \"inputs\": {\"width\": 64, \"height\": 96, \"batch_size\": 1}}, "
        "\"6\": {\"class_type\": \"CLIPTextEncode\", \"inputs\": {\"text\": \"beautiful scenery\", \"clip\": [\"4\", 1]}}, "
        "\"7\": {\"class_type\": \"CLIPTextEncode\", \"inputs\": {\"text\": \"text, watermark\", \"clip\": [\"4\", 1]}}, "
        "\"9\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"8\", 0]}}}";
    p = params_from(png_with("comfy.png", "prompt", comfy), "--steps 2 --quiet", "comfy_out.png");
    ck_assert_msg(strstr(p, "beautiful scenery\nNegative prompt: text, watermark\nSteps: 2, Sampler: Euler, "
                            "Schedule type: Karras, CFG scale: 8, Seed: 8566257, Size: 64x96"), "%s", p);
    free(p);

    /* no parameters: a clear error */
    char *out = NULL, *err = NULL;
    snprintf(cmd, sizeof cmd, "'%s' txt2img -m '%s' --from-png '%s'", tu_stipple(), tu_data(SD1),
             png_with("none.png", "Comment", "hello"));
    ck_assert_int_eq(tu_run(cmd, &out, &err), 1);
    ck_assert(err && strstr(err, "no generation parameters"));
    cm_free(out);
    cm_free(err);
}
END_TEST

TCase *tc_cmd_jobs(void)
{
    TCase *tc = tu_tcase("cmd_jobs");
    tcase_add_test(tc, test_jobs_stream);
    tcase_add_test(tc, test_jobs_bad_lines);
    tcase_add_test(tc, test_shards_identical);
    tcase_add_test(tc, test_from_file);
    tcase_add_test(tc, test_from_png);
    return tc;
}
