/* pipeline.h — one loaded model and one generation job (cmd/ only).
 *
 * The models are loaded once (cmd_models_load) and any number of jobs run
 * on them (cmd_job_run): txt2img from the command line, the jobs mode and
 * sharded runs all go through the same path.
 */
#ifndef STIPPLE_PIPELINE_H
#define STIPPLE_PIPELINE_H

#include "cmd.h"
#include "diffusion.h"
#include "textenc.h"
#include "vae.h"
#include "weights.h"

typedef struct {
    wt_model *m;
    te_encoder *te;
    df_unet *unet;
    vae_model *vae;
    df_schedule sched;
    int native_size; /* default width/height in pixels */
    double load_seconds;
} cmd_models;

cm_status cmd_models_load(cmd_models *cm, const char *path, cm_error *err);
void cmd_models_free(cmd_models *cm);

typedef enum { RNG_CPU = 0, RNG_CUDA } cmd_rng_kind;

typedef struct {
    const char *prompt, *negative;
    int width, height, steps;
    float cfg, eta;
    df_sampler_kind sampler;
    df_spacing spacing;
    int karras;
    int prediction; /* -1: the model's */
    uint64_t seed;
    cmd_rng_kind rng;
    int clip_skip;
    const cm_tensor *init_noise; /* optional (B,C,h,w): row `noise_row` used */
    int noise_row;
    const char *save_latents; /* folder or NULL */
    int quiet;
} cmd_job;

typedef struct {
    uint8_t *rgb; /* H*W*3, cm_alloc'd */
    int width, height;
    double t_encode, t_sample, t_decode;
} cmd_result;

/* Cached conditioning across jobs with the same prompt pair. */
typedef struct {
    char *prompt, *negative;
    int clip_skip;
    te_cond cond, uncond;
    int valid;
} cmd_cond_cache;

cm_status cmd_job_run(cmd_models *cm, cmd_cond_cache *cache, const cmd_job *job, cmd_result *res,
                      cm_error *err);
void cmd_cond_cache_release(cmd_cond_cache *c);
void cmd_result_release(cmd_result *r);

#endif
