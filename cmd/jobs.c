/* jobs.c — `stipple jobs`: JSON lines on stdin, one job each, run on one
 * model load; one JSON result line per image on stdout (the same lines as
 * `txt2img --json`), one JSON error line per failed job, and the stream
 * goes on. Each job becomes the argument vector of txt2img / img2img /
 * inpaint: the command line's options are the defaults and the job's fields
 * override them, so every value is checked by the same option parser.
 */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

static const char *usage_jobs =
    "usage: stipple jobs [-m MODEL] [txt2img options as defaults] < jobs.jsonl\n"
    "\n"
    "Reads one JSON object per line on stdin and makes its images with one model\n"
    "load. Fields (all optional but prompt; absent ones take the command line's):\n"
    "  prompt, negative, seed, steps, cfg, width, height, sampler, schedule, eta,\n"
    "  output, clip_skip, batch_count, batch_size, rng, prediction, precision,\n"
    "  init_image, mask, strength, mask_blur, encode_mode, overwrite (true/false),\n"
    "  model (another model: the previous one is freed and this one loaded once;\n"
    "  group jobs by model), mode (txt2img | img2img | inpaint; default: inpaint\n"
    "  with init_image and mask, img2img with init_image, else txt2img).\n"
    "Each image is one line on stdout:\n"
    "  {\"index\": N, \"output\": PATH, \"seed\": S, \"width\": W, \"height\": H,\n"
    "   \"time\": {\"load\", \"encode\", \"sample\", \"decode\"}, \"parameters\": TEXT}\n"
    "(load is non-zero on the line of the image that loaded the model); a failed\n"
    "job is {\"index\": N, \"error\": MESSAGE} and the next job runs. Exit status 1\n"
    "when any job failed.\n"
    "Index N counts images over the whole stream from 0. A job without a seed\n"
    "uses base + N (base: --seed, or a random one printed on stderr). Default\n"
    "output: stipple-{index}-{seed}.png.\n"
    "  --shard K/N, --shard-count N, --skip-existing: as for txt2img (only the\n"
    "  images with N mod shards = K; SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX).\n";

typedef enum { F_STR, F_INT, F_NUM, F_SEED, F_BOOL } field_kind;

static const struct {
    const char *name, *opt;
    field_kind kind;
} fields[] = {
    {"prompt", "-p", F_STR},          {"negative", "-n", F_STR},        {"negative_prompt", "-n", F_STR},
    {"seed", "--seed", F_SEED},       {"steps", "--steps", F_INT},      {"cfg", "--cfg", F_NUM},
    {"width", "-W", F_INT},           {"height", "-H", F_INT},          {"sampler", "--sampler", F_STR},
    {"schedule", "--schedule", F_STR}, {"eta", "--eta", F_NUM},          {"output", "-o", F_STR},
    {"clip_skip", "--clip-skip", F_INT}, {"batch_count", "--batch-count", F_INT},
    {"batch_size", "--batch-size", F_INT}, {"rng", "--rng", F_STR},      {"prediction", "--prediction", F_STR},
    {"precision", "--precision", F_STR}, {"init_image", "-i", F_STR},   {"image", "-i", F_STR},
    {"mask", "--mask", F_STR},        {"strength", "--strength", F_NUM}, {"mask_blur", "--mask-blur", F_INT},
    {"encode_mode", "--encode-mode", F_STR}, {"model", "-m", F_STR},    {"overwrite", "--overwrite", F_BOOL},
    {"init_noise", "--init-noise", F_STR}, {"save_latents", "--save-latents", F_STR},
};

/* The job's fields as options after the defaults in a. */
static cm_status job_args(const cJSON *job, const char **mode, cmd_args *a, cm_error *err)
{
    const cJSON *f;
    int has_image = 0, has_mask = 0;
    *mode = NULL;
    cJSON_ArrayForEach(f, job) {
        const char *k = f->string;
        if (!strcmp(k, "mode")) {
            if (!cJSON_IsString(f) || (strcmp(f->valuestring, "txt2img") && strcmp(f->valuestring, "img2img") &&
                                       strcmp(f->valuestring, "inpaint")))
                return cm_error_set(err, CM_ERR_USAGE, "job field \"mode\": expected \"txt2img\", \"img2img\" or \"inpaint\"");
            *mode = f->valuestring;
            continue;
        }
        size_t i = 0;
        while (i < sizeof fields / sizeof fields[0] && strcmp(fields[i].name, k)) i++;
        if (i == sizeof fields / sizeof fields[0])
            return cm_error_set(err, CM_ERR_USAGE, "job field \"%s\": unknown (see stipple jobs --help)", k);
        if (cJSON_IsNull(f)) continue;
        char b[64];
        const char *v = b;
        switch (fields[i].kind) {
        case F_STR:
            if (!cJSON_IsString(f)) return cm_error_set(err, CM_ERR_USAGE, "job field \"%s\": expected a string", k);
            v = f->valuestring;
            if (!strcmp(k, "sampler")) { /* A1111 labels too ("DPM++ 2M Karras") */
                const char *smp, *sch;
                if (!cmd_sampler_from_label(v, &smp, &sch)) {
                    v = smp;
                    if (sch && (cmd_args_push(a, "--schedule") || cmd_args_push(a, sch))) goto nomem;
                }
            }
            break;
        case F_SEED:
            if (cJSON_IsString(f)) { /* seeds beyond 2^53 travel as strings */
                v = f->valuestring;
                break;
            }
            /* fall through */
        case F_INT:
        case F_NUM:
            if (!cJSON_IsNumber(f)) return cm_error_set(err, CM_ERR_USAGE, "job field \"%s\": expected a number", k);
            snprintf(b, sizeof b, "%.17g", f->valuedouble);
            break;
        case F_BOOL:
            if (!cJSON_IsBool(f)) return cm_error_set(err, CM_ERR_USAGE, "job field \"%s\": expected true or false", k);
            if (cJSON_IsTrue(f) && cmd_args_push(a, fields[i].opt)) goto nomem;
            continue;
        }
        if (fields[i].opt[1] == 'i' && fields[i].opt[0] == '-' && !fields[i].opt[2]) has_image = 1;
        if (!strcmp(fields[i].opt, "--mask")) has_mask = 1;
        if (cmd_args_push(a, fields[i].opt) || cmd_args_push(a, v)) goto nomem;
    }
    if (!*mode) *mode = has_image && has_mask ? "inpaint" : has_image ? "img2img" : "txt2img";
    return CM_OK;
nomem:
    return cm_error_set(err, CM_ERR_NOMEM, "job: out of memory");
}

int cmd_jobs(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) break;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage_jobs, stdout);
            return EXIT_OK;
        }
    }
    memset(&cmd_batch, 0, sizeof cmd_batch);
    cmd_args base = {0};
    int rc = cmd_batch_options(argc, argv, &base, NULL, NULL, NULL);
    uint64_t seed = 0;
    if (!rc) rc = cmd_batch_base_seed(&base, &seed);
    if (rc) {
        cmd_args_free(&base);
        return rc;
    }
    cmd_batch.active = 1;
    cmd_batch.json_errors = 1;
    int failed = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (!cm_interrupted && (len = getline(&line, &cap, stdin)) >= 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        const char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        if (!*s) continue;
        cm_error err = {0};
        cmd_args a = {0};
        const char *mode = "txt2img";
        cJSON *job = wt_json_parse(line, (size_t)len, "job", &err);
        if (job && !cJSON_IsObject(job)) cm_error_set(&err, CM_ERR_USAGE, "job: expected a JSON object");
        /* defaults first: later options win in the option parser */
        cmd_args opts = {0};
        if (!err.status) job_args(job, &mode, &opts, &err);
        if (!err.status) {
            cmd_args_push(&a, mode);
            cmd_args_push(&a, "--json");
            cmd_args_push(&a, "-o");
            cmd_args_push(&a, "stipple-{index}-{seed}.png");
            for (int i = 1; i < base.n; i++) cmd_args_push(&a, base.v[i]);
            cmd_args_push(&a, "--seed");
            cmd_args_pushf(&a, "%llu", (unsigned long long)(seed + (uint64_t)cmd_batch.next_index));
            for (int i = 0; i < opts.n; i++) cmd_args_push(&a, opts.v[i]);
            if (!a.v || a.n != 5 + base.n + opts.n)
                cm_error_set(&err, CM_ERR_NOMEM, "job: out of memory");
        }
        if (err.status) {
            fprintf(stderr, "stipple: error: %s\n", err.msg);
            if (cmd_batch_mine(cmd_batch.next_index)) cmd_batch_error_json(cmd_batch.next_index, err.msg);
            cmd_batch.next_index++;
            failed = 1;
        } else {
            cmd_batch.job_images = 0;
            cmd_last_error[0] = 0;
            long long first = cmd_batch.next_index;
            int r = cmd_generate(a.n, a.v);
            cmd_batch.next_index += cmd_batch.job_images > 0 ? cmd_batch.job_images : 1;
            if (r == EXIT_SIGINT || r == EXIT_SIGTERM) rc = r;
            else if (r) {
                failed = 1;
                if (cmd_batch_mine(first)) cmd_batch_error_json(first, cmd_last_error[0] ? cmd_last_error : "failed");
            }
        }
        cJSON_Delete(job);
        cmd_args_free(&opts);
        cmd_args_free(&a);
        if (rc) break;
    }
    free(line);
    cmd_batch_release();
    cmd_args_free(&base);
    cmd_batch.active = 0;
    if (cm_interrupted && !rc) {
        fprintf(stderr, "stipple: interrupted\n");
        rc = EXIT_SIGINT;
    }
    return rc ? rc : failed ? EXIT_RUNTIME : EXIT_OK;
}
