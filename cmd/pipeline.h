/* pipeline.h — one loaded model and one generation job (cmd/ only).
 *
 * The models are loaded once (cmd_models_load) and any number of jobs run
 * on them (cmd_job_run): txt2img, img2img and inpaint from the command
 * line, the jobs mode and sharded runs all go through the same path.
 * img2img / inpaint inputs are prepared once per run (cmd_init_prepare:
 * resize, mask, VAE encoder moments) and shared by the jobs (seeds).
 */
#ifndef STIPPLE_PIPELINE_H
#define STIPPLE_PIPELINE_H

#include "cmd.h"
#include "diffusion.h"
#include "textenc.h"
#include "vae.h"
#include "weights.h"

/* The denoiser is a small tagged union: a UNet (SD1 / SD2 / SDXL) or an
 * MMDiT (SD3). Exactly one of unet / mmdit is set, as `denoiser` says
 * (unet stays a plain field: the pre-flight reads it, NULL for MMDiT). */
typedef enum { CMD_DENOISER_UNET = 0, CMD_DENOISER_MMDIT } cmd_denoiser;

typedef struct {
    wt_model *m;
    te_encoder *te;
    cmd_denoiser denoiser;
    df_unet *unet;   /* CMD_DENOISER_UNET */
    df_mmdit *mmdit; /* CMD_DENOISER_MMDIT */
    vae_model *vae;
    df_schedule sched;
    int native_size; /* default width/height in pixels */
    /* the model's own defaults (metadata "stipple.defaults": {"cfg": ..,
     * "steps": ..}), used where the job does not set them; < 0: none */
    float default_cfg;
    int default_steps;
    int context_tokens; /* SD3: 77 + T5 tokens (the context length); 0 otherwise */
    /* The model's scheduler config named a Turbo-style setup: timestep
     * spacing "trailing" (SD-Turbo / SDXL-Turbo scheduler configs). The
     * program then defaults to that spacing (no Karras) and, when the
     * config names a sampler class we know, to that sampler. */
    int trailing;
    int has_sampler;               /* sampler below is the config's class */
    df_sampler_kind sampler;
    double load_seconds;
} cmd_models;

/* What the model load needs beyond the path (all optional). */
typedef struct {
    /* Separate SD3 text encoder files, added under
     * text_encoders.{clip_l,clip_g,t5xxl}.transformer. before the text
     * encoders are created (--clip-l, --clip-g, --t5xxl). */
    const char *clip_l, *clip_g, *t5xxl;
    int no_t5;         /* SD3: T5 rows are zeros (--no-t5) */
    int t5_max_length; /* SD3: T5 tokens (--t5-max-length); 0: 256 */
} cmd_model_opts;

/* cmd_models_load_ex with no options. */
cm_status cmd_models_load(cmd_models *cm, const char *path, cm_error *err);
/* o may be NULL. The text encoder files and T5 options are refused
 * (CM_ERR_USAGE) for a model that is not SD3. */
cm_status cmd_models_load_ex(cmd_models *cm, const char *path, const cmd_model_opts *o,
                             cm_error *err);
void cmd_models_free(cmd_models *cm);
/* 1 when the UNet is an inpainting one: in_channels = 2 * latent + 1
 * ([latents, mask, masked-image latents]); 0 for an MMDiT. */
int cmd_models_inpainting(const cmd_models *cm);
/* Width and height must be multiples of this (pixels). */
int cmd_models_size_multiple(const cmd_models *cm);
/* 1 when the denoiser is an MMDiT (SD3: flow matching). */
int cmd_models_is_flow(const cmd_models *cm);

typedef enum { CMD_TXT2IMG = 0, CMD_IMG2IMG, CMD_INPAINT } cmd_mode;

/* The inpainting method a job of this mode runs on this model (static
 * text for stderr and the PNG metadata), NULL when none (plain txt2img /
 * img2img). */
const char *cmd_inpaint_method(const cmd_models *cm, cmd_mode mode);

/* The input of img2img / inpaint at the job size (width x height), made
 * once per run by cmd_init_prepare and read by every job. */
typedef struct {
    int width, height;
    uint8_t *rgb;        /* (H, W, 3): the input image, resized; what the VAE
                          * encodes and what the output is composited onto */
    float *weight;       /* inpaint: (H, W) composite weight in [0, 1], 0 = keep
                          * the input pixel exactly (mask, resized, blurred;
                          * 0 wherever the resized mask is pure black) */
    float *mask_latent;  /* inpaint: (h, w), 1 = repaint: the reference's
                          * nearest downsample of (weight >= 0.5) */
    float *mean, *logvar;   /* encoder moments of the image (C, h, w), or NULL
                             * when not needed (9-channel inpaint, strength 1) */
    float *mmean, *mlogvar; /* 9-channel inpaint: moments of the masked image
                             * image * (weight < 0.5) */
    int64_t repaint_pixels; /* inpaint: pixels with weight > 0 */
} cmd_init;

/* image: the input (any size); mask: inpaint only (any size: resized to
 * the job size with the same filter). need_image_latents: encode the image
 * itself (everything but a 9-channel inpaint at strength 1). */
cm_status cmd_init_prepare(cmd_models *cm, cmd_mode mode, const cm_image *image,
                           const cm_image *mask, int width, int height, int mask_blur,
                           int need_image_latents, cmd_init *ini, cm_error *err);
void cmd_init_release(cmd_init *ini);

/* image_ops.c. Float HWC images with c channels.
 * Resize with Lanczos-3 as PIL's Image.resize(LANCZOS) does (separable,
 * horizontal pass first, kernel widened by the scale when shrinking);
 * an exact copy when the size does not change. */
cm_status cmd_resize(const float *src, int sw, int sh, int c, float *dst, int dw, int dh,
                     cm_error *err);
/* RGB [0,1] -> grey [0,1] as PIL's convert("L") on the 8-bit values. */
void cmd_mask_gray(const float *rgb, int64_t npix, float *gray);
/* Gaussian blur in place, sigma pixels, kernel 2*int(2.5*sigma+0.5)+1 and
 * reflect-101 borders (A1111's cv2.GaussianBlur); sigma <= 0: no-op. */
cm_status cmd_mask_blur(float *m, int w, int h, int sigma, cm_error *err);
/* rgb = input * (1 - weight) + rgb * weight per pixel, rounded; weight 0
 * copies the input byte exactly, weight 1 keeps rgb. */
void cmd_composite(const uint8_t *input, const float *weight, int64_t npix, uint8_t *rgb);

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
    const char *save_latents; /* folder or NULL; step files are numbered
                               * from 0 at the first step that runs */
    int quiet;
    /* img2img / inpaint */
    cmd_mode mode;
    float strength;           /* start at step steps - int(steps * strength) */
    int encode_mean;          /* --encode-mode mean: posterior mean, no draw */
    const cmd_init *init;     /* prepared input (NULL for txt2img) */
    int vae_tile;             /* > 0: tiled VAE decode (set by the memory pre-flight) */
    /* SDXL micro-conditioning (add_time_ids); 0 = the reference default:
     * original = target = the image size, crop (0, 0). */
    int orig_w, orig_h, crop_top, crop_left, target_w, target_h;
} cmd_job;

typedef struct {
    uint8_t *rgb; /* H*W*3, cm_alloc'd */
    int width, height;
    double t_encode, t_sample, t_decode;
    const char *method; /* inpainting method that ran (static text) or NULL */
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

/* preflight.c: the memory pre-flight of job (size, prompts, mode) on cm
 * (see cmd_preflight in cmd.h); sets job->vae_tile when only tiled VAE
 * decoding fits. */
cm_status cmd_job_preflight(const cmd_models *cm, cmd_job *job, size_t max_memory, cm_error *err);

#endif
