/* batch.c — the run around cmd_generate: batch-level options, sharding
 * (--shard K/N, Slurm array jobs, Kubernetes Indexed Jobs), --from-file,
 * --from-png, --skip-existing, the one-slot model cache and the JSON result
 * lines shared with `stipple jobs` (jobs.c). See batch.h for the model.
 *
 * Reproducibility contract: image g of a run (global index over all jobs,
 * from 0) gets seed base + g unless its job names a seed, whatever shard
 * runs it; the union of the N shards' files equals one unsharded run's, byte
 * for byte.
 */
#include "batch.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

cmd_batch_state cmd_batch;

/* ------------------------------------------------------------ arg vectors */

int cmd_args_push(cmd_args *a, const char *s)
{
    if (a->n + 2 > a->cap) {
        int cap = a->cap ? 2 * a->cap : 16;
        char **v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    char *c = strdup(s ? s : "");
    if (!c) return -1;
    a->v[a->n++] = c;
    a->v[a->n] = NULL;
    return 0;
}

int cmd_args_pushf(cmd_args *a, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return cmd_args_push(a, buf);
}

void cmd_args_free(cmd_args *a)
{
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    free(a->v);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------ model cache */

/* One slot: jobs on the same model share one load; a job naming another
 * model frees this one and loads that (group jobs by model). */
static struct {
    char *path;
    char key[8192]; /* the load options, as text */
    cmd_models cm;
    int loaded;
} g_slot;

cm_status cmd_models_get(cmd_models *out, const char *path, const cmd_model_opts *o, cm_error *err)
{
    char key[sizeof g_slot.key];
    cmd_model_opts z = {0};
    if (!o) o = &z;
    snprintf(key, sizeof key, "%s\n%s\n%s\n%d %d", o->clip_l ? o->clip_l : "", o->clip_g ? o->clip_g : "",
             o->t5xxl ? o->t5xxl : "", o->no_t5, o->t5_max_length);
    if (g_slot.loaded && !strcmp(g_slot.path, path) && !strcmp(g_slot.key, key)) {
        *out = g_slot.cm;
        return CM_OK;
    }
    cmd_batch_release();
    cm_status st = cmd_models_load_ex(&g_slot.cm, path, o, err);
    if (st) return st;
    g_slot.path = strdup(path);
    if (!g_slot.path) {
        cmd_models_free(&g_slot.cm);
        return cm_error_set(err, CM_ERR_NOMEM, "%s: out of memory", path);
    }
    snprintf(g_slot.key, sizeof g_slot.key, "%s", key);
    g_slot.loaded = 1;
    cmd_batch.load_pending = g_slot.cm.load_seconds;
    *out = g_slot.cm;
    return CM_OK;
}

void cmd_models_put(cmd_models *cm) { (void)cm; }

void cmd_batch_release(void)
{
    if (g_slot.loaded) cmd_models_free(&g_slot.cm);
    free(g_slot.path);
    memset(&g_slot, 0, sizeof g_slot);
}

/* ----------------------------------------------------------- result lines */

void cmd_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

void cmd_batch_result_json(long long index, const char *path, uint64_t seed, int width, int height,
                           const cmd_result *res, const char *params)
{
    printf("{\"index\": %lld, \"output\": ", index);
    cmd_json_str(stdout, path);
    printf(", \"seed\": %llu, \"width\": %d, \"height\": %d, \"time\": {\"load\": %.3f, \"encode\": %.3f, \"sample\": %.3f, \"decode\": %.3f}, \"parameters\": ",
           (unsigned long long)seed, width, height, cmd_batch.load_pending, res->t_encode, res->t_sample,
           res->t_decode);
    cmd_json_str(stdout, params);
    printf("}\n");
    fflush(stdout);
    cmd_batch.load_pending = 0;
}

void cmd_batch_error_json(long long index, const char *msg)
{
    printf("{\"index\": %lld, \"error\": ", index);
    cmd_json_str(stdout, msg);
    printf("}\n");
    fflush(stdout);
}

void cmd_batch_skipped_json(long long index, const char *path, uint64_t seed)
{
    printf("{\"index\": %lld, \"output\": ", index);
    cmd_json_str(stdout, path);
    printf(", \"seed\": %llu, \"skipped\": true}\n", (unsigned long long)seed);
    fflush(stdout);
}

/* --------------------------------------------------------------- sharding */

int cmd_batch_mine(long long g)
{
    return cmd_batch.shard_n <= 0 || g % cmd_batch.shard_n == cmd_batch.shard_k;
}

static int parse_nonneg(const char *s, long *v)
{
    if (!s || !*s || *s == '-' || *s == '+') return -1;
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    if (*end || errno || x > 1000000000L) return -1;
    *v = x;
    return 0;
}

/* --shard K/N, else SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) of
 * SLURM_ARRAY_TASK_COUNT (or --shard-count), else JOB_COMPLETION_INDEX of
 * --shard-count. */
static int resolve_shard(const char *shard, const char *count)
{
    long k = -1, n = -1, c = -1;
    if (count && (parse_nonneg(count, &c) || c < 1))
        return cmd_usage_error("--shard-count: expected a positive integer, got \"%s\"", count);
    if (shard) {
        const char *slash = strchr(shard, '/');
        char kb[32];
        if (!slash || (size_t)(slash - shard) >= sizeof kb)
            return cmd_usage_error("--shard: expected K/N (0 <= K < N), got \"%s\"", shard);
        memcpy(kb, shard, (size_t)(slash - shard));
        kb[slash - shard] = 0;
        if (parse_nonneg(kb, &k) || parse_nonneg(slash + 1, &n) || n < 1 || k >= n)
            return cmd_usage_error("--shard: expected K/N (0 <= K < N), got \"%s\"", shard);
    } else if (getenv("SLURM_ARRAY_TASK_ID") && *getenv("SLURM_ARRAY_TASK_ID")) {
        const char *id = getenv("SLURM_ARRAY_TASK_ID"), *cnt = getenv("SLURM_ARRAY_TASK_COUNT");
        const char *mn = getenv("SLURM_ARRAY_TASK_MIN");
        long lo = 0;
        if (parse_nonneg(id, &k))
            return cmd_usage_error("SLURM_ARRAY_TASK_ID: expected an integer, got \"%s\"", id);
        if (mn && *mn && parse_nonneg(mn, &lo))
            return cmd_usage_error("SLURM_ARRAY_TASK_MIN: expected an integer, got \"%s\"", mn);
        if (c > 0) n = c;
        else if (!cnt || parse_nonneg(cnt, &n) || n < 1)
            return cmd_usage_error("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not a positive integer (give --shard-count N)");
        k -= lo;
        if (k < 0 || k >= n)
            return cmd_usage_error("SLURM_ARRAY_TASK_ID %s (min %ld) is outside the %ld shards (use --array=0-%ld or --shard-count)",
                                   id, lo, n, n - 1);
    } else if (getenv("JOB_COMPLETION_INDEX") && *getenv("JOB_COMPLETION_INDEX")) {
        const char *id = getenv("JOB_COMPLETION_INDEX");
        if (c < 1)
            return cmd_usage_error("JOB_COMPLETION_INDEX is set: give --shard-count N (the Job's completions)");
        if (parse_nonneg(id, &k) || k >= c)
            return cmd_usage_error("JOB_COMPLETION_INDEX: expected an integer in [0, %ld), got \"%s\"", c, id);
        n = c;
    } else if (c > 0) {
        return cmd_usage_error("--shard-count %ld: no shard index (set JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID, or give --shard K/N)", c);
    }
    if (n > 0) {
        cmd_batch.shard_k = (int)k;
        cmd_batch.shard_n = (int)n;
    }
    return 0;
}

/* Options that take no value (everything else of the generating commands
 * takes one). */
static int is_flag(const char *a)
{
    static const char *flags[] = {"--overwrite", "--json", "--quiet", "--help", "-h", "--skip-existing", NULL};
    for (int i = 0; flags[i]; i++)
        if (!strcmp(a, flags[i])) return 1;
    return 0;
}

/* `--name VALUE` or `--name=VALUE` at argv[*i]: the value (advancing *i),
 * NULL when argv[*i] is not --name. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t l = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, l)) return NULL;
    if (a[l] == '=') return a + l + 1;
    if (a[l]) return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

int cmd_batch_options(int argc, char **argv, cmd_args *rest, const char **from_file,
                      const char **from_png, int *from_png_pos)
{
    const char *shard = NULL, *count = NULL;
    if (cmd_args_push(rest, argv[0])) return cmd_usage_error("out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int missing = 0;
        if (!strcmp(a, "--")) {
            for (; i < argc; i++)
                if (cmd_args_push(rest, argv[i])) return cmd_usage_error("out of memory");
            break;
        }
        if ((v = opt_value(argc, argv, &i, "--shard-count", &missing))) count = v;
        else if (!missing && (v = opt_value(argc, argv, &i, "--shard", &missing))) shard = v;
        else if (!missing && from_file && (v = opt_value(argc, argv, &i, "--from-file", &missing))) *from_file = v;
        else if (!missing && from_png && (v = opt_value(argc, argv, &i, "--from-png", &missing))) {
            *from_png = v;
            *from_png_pos = rest->n;
        } else if (!strcmp(a, "--skip-existing")) cmd_batch.skip_existing = 1;
        else if (missing) return cmd_usage_error("%s: option %s needs a value", argv[0], a);
        else {
            if (cmd_args_push(rest, a)) return cmd_usage_error("out of memory");
            /* an option's value travels with it (a prompt may read "--shard") */
            if (a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9') && !strchr(a, '=') && !is_flag(a) &&
                i + 1 < argc && cmd_args_push(rest, argv[++i]))
                return cmd_usage_error("out of memory");
        }
        if (missing) return cmd_usage_error("%s: option %s needs a value", argv[0], a);
    }
    return resolve_shard(shard, count);
}

int cmd_batch_base_seed(const cmd_args *args, uint64_t *seed)
{
    const char *s = NULL;
    for (int i = 1; i < args->n; i++) {
        if (!strcmp(args->v[i], "--seed") && i + 1 < args->n) s = args->v[++i];
        else if (!strncmp(args->v[i], "--seed=", 7)) s = args->v[i] + 7;
        else if (args->v[i][0] == '-' && !is_flag(args->v[i]) && !strchr(args->v[i], '=')) i++;
    }
    if (s && strcmp(s, "-1")) {
        char *end;
        errno = 0;
        if (!*s || *s == '-' || *s == '+') goto bad;
        unsigned long long v = strtoull(s, &end, 10);
        if (*end || errno) goto bad;
        *seed = v;
        return 0;
    }
    if (cmd_batch.shard_n > 0)
        return cmd_usage_error("sharding (--shard, SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX) needs a fixed --seed: every shard must derive the same seeds");
    uint32_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &r, sizeof r) != (ssize_t)sizeof r) r = (uint32_t)(cm_time_now() * 1e6);
    if (fd >= 0) close(fd);
    *seed = r;
    fprintf(stderr, "stipple: seed %llu\n", (unsigned long long)*seed);
    return 0;
bad:
    return cmd_usage_error("--seed: expected -1 or an integer in [0, 18446744073709551615], got \"%s\"", s);
}

/* ------------------------------------------------------------- the runner */

/* Run one job (argv of cmd_generate); advance the global index by its
 * images (1 when it failed before knowing them). */
static int run_job(cmd_args *a)
{
    cmd_batch.job_images = 0;
    cmd_last_error[0] = 0;
    int rc = cmd_generate(a->n, a->v);
    long long first = cmd_batch.next_index;
    cmd_batch.next_index += cmd_batch.job_images > 0 ? cmd_batch.job_images : 1;
    if (rc && rc != EXIT_SIGINT && rc != EXIT_SIGTERM && cmd_batch.json_errors && cmd_batch_mine(first))
        cmd_batch_error_json(first, cmd_last_error[0] ? cmd_last_error : "failed");
    return rc;
}

static int has_arg(const cmd_args *a, const char *name)
{
    for (int i = 1; i < a->n; i++)
        if (!strcmp(a->v[i], name)) return 1;
    return 0;
}

static int from_file_run(const char *path, const cmd_args *base)
{
    cm_error err = {0};
    char *text = NULL;
    size_t n = 0;
    if (cm_file_read_all(path, &text, &n, &err)) {
        cm_error_prefix(&err, "--from-file");
        return cmd_fail(&err);
    }
    uint64_t seed;
    int rc = cmd_batch_base_seed(base, &seed);
    if (rc) {
        cm_free(text);
        return rc;
    }
    int failed = 0, lineno = 0;
    for (char *p = text, *nl; p && *p && !cm_interrupted; p = nl ? nl + 1 : NULL) {
        nl = strchr(p, '\n');
        if (nl) *nl = 0;
        lineno++;
        size_t l = strlen(p);
        if (l && p[l - 1] == '\r') p[--l] = 0;
        const char *s = p;
        while (*s == ' ' || *s == '\t') s++;
        if (!*s) continue;
        cmd_args a = {0};
        for (int i = 0; i < base->n; i++) cmd_args_push(&a, base->v[i]);
        cmd_args_push(&a, "--seed");
        cmd_args_pushf(&a, "%llu", (unsigned long long)(seed + (uint64_t)cmd_batch.next_index));
        if (cmd_prompt_line(s, &a, &err)) {
            fprintf(stderr, "stipple: error: %s:%d: %s\n", path, lineno, err.msg);
            snprintf(cmd_last_error, CMD_LAST_ERROR_CAP, "%.200s:%d: %.700s", path, lineno, err.msg);
            if (cmd_batch.json_errors && cmd_batch_mine(cmd_batch.next_index))
                cmd_batch_error_json(cmd_batch.next_index, cmd_last_error);
            cmd_batch.next_index++;
            failed = 1;
        } else if ((rc = run_job(&a))) {
            failed = 1;
        }
        cmd_args_free(&a);
        if (rc == EXIT_SIGINT || rc == EXIT_SIGTERM) break;
    }
    cm_free(text);
    if (rc == EXIT_SIGINT || rc == EXIT_SIGTERM) return rc;
    return failed ? EXIT_RUNTIME : EXIT_OK;
}

int cmd_batch_main(int argc, char **argv)
{
    memset(&cmd_batch, 0, sizeof cmd_batch);
    cmd_args rest = {0}, a = {0};
    const char *from_file = NULL, *from_png = NULL;
    int png_pos = 0;
    int rc = cmd_batch_options(argc, argv, &rest, &from_file, &from_png, &png_pos);
    if (rc) goto out;
    cmd_batch.active = 1;
    cmd_batch.json_errors = from_file && has_arg(&rest, "--json");
    /* --from-png: its parameters sit where it stood, so later flags win */
    if (from_png) {
        cm_error err = {0};
        for (int i = 0; i < png_pos; i++) cmd_args_push(&a, rest.v[i]);
        if (cmd_infotext_from_png(from_png, argv[0], &a, &err)) {
            rc = cmd_fail(&err);
            goto out;
        }
        for (int i = png_pos; i < rest.n; i++) cmd_args_push(&a, rest.v[i]);
    } else {
        for (int i = 0; i < rest.n; i++) cmd_args_push(&a, rest.v[i]);
    }
    if (from_file) {
        if (strcmp(argv[0], "txt2img")) {
            rc = cmd_usage_error("--from-file: only for txt2img");
            goto out;
        }
        rc = from_file_run(from_file, &a);
    } else {
        if (cmd_batch.shard_n > 0) {
            uint64_t s;
            if ((rc = cmd_batch_base_seed(&a, &s))) goto out;
        }
        rc = cmd_generate(a.n, a.v);
    }
out:
    cmd_batch_release();
    cmd_args_free(&rest);
    cmd_args_free(&a);
    cmd_batch.active = 0;
    return rc;
}
