/* batch.h — running many jobs on one model load (cmd/ only): the batch
 * state shared by txt2img's batch loop, --from-file, --from-png, sharding
 * and `stipple jobs` (batch.c, jobs.c, infotext.c).
 *
 * Every generating command goes through cmd_batch_main, which strips the
 * batch-level options (--from-file, --from-png, --shard, --shard-count,
 * --skip-existing), expands the jobs into plain argument vectors and runs
 * each through cmd_generate with cmd_batch.active set. Models come from a
 * one-slot cache (cmd_models_get / cmd_models_put), so consecutive jobs on
 * the same model load it once. Images are numbered by a global index across
 * all jobs of the run; sharding keeps the images whose index is K mod N, and
 * seeds derive from the index, never from the shard.
 */
#ifndef STIPPLE_BATCH_H
#define STIPPLE_BATCH_H

#include "pipeline.h"

/* A growable argv: strings are owned copies (malloc), v[n] is NULL. */
typedef struct {
    char **v;
    int n, cap;
} cmd_args;

int cmd_args_push(cmd_args *a, const char *s); /* 0 ok, -1 out of memory */
int cmd_args_pushf(cmd_args *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cmd_args_free(cmd_args *a);

typedef struct {
    int active;            /* inside cmd_batch_main / cmd_jobs */
    int shard_k, shard_n;  /* shard_n 0: no sharding */
    int skip_existing;
    int json_errors;       /* print {"index", "error"} lines for failed jobs */
    long long next_index;  /* global index of the first image of the current job */
    int job_images;        /* images of the current job (set by cmd_generate) */
    double load_pending;   /* load seconds not yet reported in a result line */
    long long images_done, images_skipped;
} cmd_batch_state;

extern cmd_batch_state cmd_batch;

/* txt2img / img2img / inpaint entry: batch options, then the jobs. */
int cmd_batch_main(int argc, char **argv);

/* 1 when global image index g belongs to this shard. */
int cmd_batch_mine(long long g);

/* Load `path` or return the cached load (a shallow copy in *out); put is a
 * no-op for cached models (cmd_batch_release frees them at the end). */
cm_status cmd_models_get(cmd_models *out, const char *path, const cmd_model_opts *o, cm_error *err);
void cmd_models_put(cmd_models *cm);
void cmd_batch_release(void);

/* One result line (JSON) for an image written to path. */
void cmd_batch_result_json(long long index, const char *path, uint64_t seed, int width, int height,
                           const cmd_result *res, const char *params);
/* One JSON error line for the job starting at index. */
void cmd_batch_error_json(long long index, const char *msg);
/* One JSON line for an image skipped by --skip-existing. */
void cmd_batch_skipped_json(long long index, const char *path, uint64_t seed);
void cmd_json_str(FILE *f, const char *s);

/* Shard options and the environment (SLURM_ARRAY_TASK_ID/COUNT,
 * JOB_COMPLETION_INDEX with --shard-count): strips --shard, --shard-count,
 * --skip-existing from argv[1..] into `rest` (argv[0] kept) and fills
 * cmd_batch. Returns 0, or EXIT_USAGE after printing the error. */
int cmd_batch_options(int argc, char **argv, cmd_args *rest, const char **from_file,
                      const char **from_png, int *from_png_pos);

/* The base seed of a run: the last --seed in args, or a random one
 * (printed on stderr). Returns 0, or EXIT_USAGE (bad value, or random
 * with sharding: shards must agree on the seeds). */
int cmd_batch_base_seed(const cmd_args *args, uint64_t *seed);

/* ---------------------------------------------------------------- infotext.c */

/* Generation parameters of a PNG (stipple / A1111 `parameters`,
 * stable-diffusion.cpp `parameters`, ComfyUI `prompt` JSON) appended to
 * `a` as options of `cmdname` (txt2img, img2img, inpaint). */
cm_status cmd_infotext_from_png(const char *path, const char *cmdname, cmd_args *a, cm_error *err);
/* The same from the text itself (A1111 / stipple / sd.cpp infotext). */
cm_status cmd_infotext_parse(const char *text, const char *cmdname, cmd_args *a, cm_error *err);
/* ComfyUI's API `prompt` JSON with a KSampler graph. */
cm_status cmd_infotext_comfy(const char *json, cmd_args *a, cm_error *err);
/* A1111 sampler label ("DPM++ 2M Karras", "Euler a") or our / sd.cpp /
 * ComfyUI name -> our sampler name and schedule (NULL: the default). */
int cmd_sampler_from_label(const char *label, const char **sampler, const char **schedule);

/* One line of a --from-file prompts file (A1111 "prompts from file":
 * plain prompt, or `--prompt "…" --negative_prompt "…" --steps 20 …` with
 * shell quoting) appended to a as our options. */
cm_status cmd_prompt_line(const char *line, cmd_args *a, cm_error *err);

#endif
