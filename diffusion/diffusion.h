/* diffusion.h — the denoisers (UNet for SD1/SD2/SDXL, 4 and 9 channels;
 * MMDiT later), noise schedules and samplers.
 *
 * Latents cross this interface as float32 NCHW (B, C, h, w), the layout
 * torch.randn fills, so seeded noise and .npy files line up with the
 * reference. The UNet works NHWC inside.
 */
#ifndef STIPPLE_DIFFUSION_H
#define STIPPLE_DIFFUSION_H

#include "common.h"
#include "weights.h"

/* ------------------------------------------------------------------------
 * UNet
 * ---------------------------------------------------------------------- */

typedef struct df_unet df_unet;

/* Builds the UNet of m from its config section "unet" (diffusers
 * UNet2DConditionModel field names) over the tensors
 * model.diffusion_model.*; every tensor's presence and shape is checked
 * here, so a bad file fails at create time naming the tensor. The model
 * must outlive the UNet (weights stay in its memory map). */
df_unet *df_unet_create(const wt_model *m, cm_error *err);
void df_unet_free(df_unet *u);
int df_unet_in_channels(const df_unet *u);
int df_unet_out_channels(const df_unet *u);
int df_unet_context_dim(const df_unet *u);
/* SDXL ("text_time" additional embedding): width of text_embeds (pooled
 * text embedding) and number of time_ids per row; 0 for SD1/SD2. */
int df_unet_pooled_dim(const df_unet *u);
int df_unet_n_time_ids(const df_unet *u);
/* h and w of the latent must be multiples of this (2^(levels-1)). */
int df_unet_size_multiple(const df_unet *u);
/* Bytes df_unet_forward keeps for a (B, h, w) latent and a T-token context
 * (activations, skip connections, cached cross-attention K/V), for a
 * memory pre-flight; weights and the kernels' own scratch not included. */
size_t df_unet_work_bytes(const df_unet *u, int B, int h, int w, int T);

/* Debug hook: called during df_unet_forward with block-level
 * intermediates named as the reference's modules (golden README §4):
 * "time_proj", "time_embedding", "add_time_proj", "add_embedding",
 * "conv_in", "down_blocks.i", "mid_block", "up_blocks.i",
 * "conv_norm_out" (GroupNorm output before SiLU). data is NHWC
 * (B, h, w, C) float32, valid only during the call; embeddings come as
 * h = w = 1 (add_time_proj has B*n_time_ids rows). */
typedef void (*df_unet_debug_fn)(void *user, const char *name, const float *data, int B, int h,
                                 int w, int C);

typedef struct {
    const float *x;         /* (B, in_channels, h, w) NCHW */
    int B, h, w;
    const float *timesteps; /* (B), may be fractional */
    const float *context;   /* (B, T, context_dim) */
    int T;
    const float *text_embeds; /* SDXL: (B, pooled) */
    const float *time_ids;    /* SDXL: (B, 6) */
    df_unet_debug_fn debug;   /* optional */
    void *debug_user;
} df_unet_input;

/* out: (B, out_channels, h, w) NCHW; must not overlap x.
 * Activation buffers are kept in the UNet and grown only when a call needs
 * more (B, h, w) than any call before: the steady state allocates nothing.
 * The cross-attention keys/values of the context are cached: a call whose
 * context has the same (B, T) and the same bytes as the previous call's
 * reuses them (the context is constant over a generation), so a caller
 * may pass the same or a fresh buffer without any extra call. Not
 * thread-safe: one forward at a time per df_unet. */
cm_status df_unet_forward(df_unet *u, const df_unet_input *in, float *out, cm_error *err);

/* ------------------------------------------------------------------------
 * Schedules and samplers (schedule.c, sampler.c)
 *
 * Mirrors diffusers 0.30.3 (DDIMScheduler, EulerDiscreteScheduler,
 * EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler with
 * dpmsolver++ order 2 midpoint, LCMScheduler) in its own float32 / float64
 * arithmetic, so a replay of recorded model outputs lands on the
 * reference trajectories (tests/diffusion_sampler.c).
 *
 * The pipeline drives every sampler the same way:
 *
 *   df_sampler *s = df_sampler_create(kind, &sched, steps, &opts, n, err);
 *   i0 = 0 (txt2img) or df_sampler_start_index(steps, strength) (img2img)
 *   txt2img: x = noise * df_sampler_init_noise_sigma(s)
 *   img2img: df_sampler_add_noise(s, i0, image_latents, noise, x)
 *   for i = i0 .. steps-1:
 *       df_sampler_model_input(s, i, x, x_in)           scale_model_input
 *       t = df_sampler_timestep(s, i)                    UNet timestep
 *       eps = UNet(x_in, t) (guided)
 *       df_sampler_step(s, i, eps, x, noise_fn, ctx, err)
 *       inpaint (4-channel): df_sampler_inpaint_blend(s, i, ...)
 *
 * n is the number of latent values of the whole batch (B*C*h*w): every
 * buffer the samplers need is allocated at create time, the loop
 * allocates nothing. Steps must run in order from i0 (DPM++ keeps the
 * previous step's x0 prediction).
 * ---------------------------------------------------------------------- */

typedef enum { DF_PRED_EPS = 0, DF_PRED_V } df_prediction;

typedef enum {
    DF_SPACING_DEFAULT = 0, /* the scheduler config's timestep_spacing */
    DF_SPACING_LEADING,
    DF_SPACING_TRAILING,
    DF_SPACING_LINSPACE,
} df_spacing;

/* The training noise schedule (a value: filled by df_schedule_init,
 * released by df_schedule_release). Arrays have n entries, float32 exactly
 * as torch computes them: betas = linspace(sqrt(b0), sqrt(b1), n)^2
 * (scaled_linear) or linspace(b0, b1, n) (linear), alphas_cumprod =
 * cumprod(1 - betas) (float64 running product rounded per entry, as
 * torch's CPU cumprod), sigmas = sqrt((1 - ac) / ac). */
typedef struct {
    int n;                   /* num_train_timesteps */
    float *betas;
    float *alphas_cumprod;
    float *sigmas;
    float final_alpha_cumprod; /* set_alpha_to_one ? 1 : alphas_cumprod[0] */
    df_prediction prediction;  /* prediction_type epsilon | v_prediction */
    df_spacing spacing;        /* timestep_spacing (never DEFAULT) */
    int steps_offset;
    int original_inference_steps; /* LCM (default 50) */
    float timestep_scaling;       /* LCM (default 10) */
    float shift;                  /* flow matching (SD3): sigma shift (config "shift", default 3) */
    int dynamic_shifting;         /* flow matching: use_dynamic_shifting (not supported) */
} df_schedule;

/* cfg: the "scheduler" section (wt_model_section(m, "scheduler"),
 * diffusers field names; NULL = SD defaults: 1000 steps, scaled_linear
 * 0.00085..0.012, epsilon, leading, steps_offset 1, set_alpha_to_one
 * false). trained_betas (array) is honoured. Unknown beta_schedule,
 * rescale_betas_zero_snr or thresholding are CM_ERR_UNSUPPORTED. */
cm_status df_schedule_init(df_schedule *s, const cJSON *cfg, cm_error *err);
void df_schedule_release(df_schedule *s); /* zeroes the struct; NULL ok */
/* "eps" / "epsilon" / "v" / "v_prediction" -> *p; else CM_ERR_USAGE. */
cm_status df_prediction_parse(const char *name, df_prediction *p, cm_error *err);
/* "leading" / "trailing" / "linspace" -> *sp; else CM_ERR_USAGE. */
cm_status df_spacing_parse(const char *name, df_spacing *sp, cm_error *err);

typedef enum {
    DF_SAMPLER_DDIM = 0,
    DF_SAMPLER_EULER,
    DF_SAMPLER_EULER_A,
    DF_SAMPLER_DPMPP_2M,
    DF_SAMPLER_LCM,
    DF_SAMPLER_FLOW_EULER, /* SD3 flow matching: FlowMatchEulerDiscreteScheduler */
} df_sampler_kind;

/* CLI name ("ddim", "euler", "euler_a", "dpmpp_2m", "lcm", "flow_euler").
 *
 * flow_euler (SD3 / MMDiT, rectified flow; the model predicts the velocity
 * v = noise - x0): diffusers' FlowMatchEulerDiscreteScheduler with a
 * static shift. Training sigmas s_j = j/n (j = n..1) shifted as
 * shift*s/(1+(shift-1)*s); inference timesteps linspace(1000*sigma_max,
 * 1000*sigma_min, steps) shifted again (as the reference does), sigma_N = 0;
 * the denoiser gets timestep = sigma*1000 (fractional); no input scaling,
 * init_noise_sigma 1; step x += (sigma_next - sigma) * v; add_noise
 * sigma*noise + (1 - sigma)*x0. No draws. Spacing/Karras/eta/prediction
 * do not apply. */
const char *df_sampler_name(df_sampler_kind k);
/* A1111 name for the PNG metadata ("DDIM", "Euler", "Euler a",
 * "DPM++ 2M", "LCM"). */
const char *df_sampler_a1111_name(df_sampler_kind k);
/* Accepts the CLI names and the diffusers class names (DDIMScheduler,
 * EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
 * DPMSolverMultistepScheduler, LCMScheduler). */
cm_status df_sampler_parse(const char *name, df_sampler_kind *k, cm_error *err);

typedef struct {
    df_spacing spacing; /* DEFAULT: the schedule's (SD: leading) */
    int karras;         /* Karras sigmas (rho 7): DPM++ 2M and Euler only */
    float eta;          /* DDIM only (0 = deterministic) */
} df_sampler_opts;

/* Per-step noise: fill out[0..n) with the next draw of the run's RNG
 * (for a batch, the caller splits n per image as its generators want).
 * df_sampler_step calls it exactly when the reference draws: Euler draws
 * one UNUSED tensor per step (s_churn 0), Euler a and DDIM with eta > 0
 * every step, LCM every step but the last, DPM++ 2M never. With a NULL
 * noise_fn unused draws are skipped and a needed draw is CM_ERR_USAGE. */
typedef void (*df_noise_fn)(void *ctx, float *out, int64_t n);

typedef struct df_sampler df_sampler;

/* steps >= 1 (LCM: <= original_inference_steps); n = latent values of the
 * batch. opts may be NULL (defaults). The sampler reads sched's fields at
 * create time (a struct copy with prediction overridden, e.g. for
 * --prediction, is fine) but keeps pointing at sched->alphas_cumprod:
 * that array must outlive the sampler. */
df_sampler *df_sampler_create(df_sampler_kind kind, const df_schedule *sched, int steps,
                              const df_sampler_opts *opts, int64_t n, cm_error *err);
void df_sampler_free(df_sampler *s);

df_sampler_kind df_sampler_kind_of(const df_sampler *s);
int df_sampler_steps(const df_sampler *s);
/* What the UNet gets at step i (diffusers' timesteps[i]; fractional for
 * Euler with linspace spacing or Karras sigmas). */
float df_sampler_timestep(const df_sampler *s, int i);
/* sigmas[i], i in [0, steps] (Euler family and DPM++; sigmas[steps] = 0).
 * DDIM / LCM: sqrt((1-ac)/ac) at timesteps[i], 0 at i = steps. */
float df_sampler_sigma(const df_sampler *s, int i);
/* txt2img: latents_0 = noise * init_noise_sigma (Euler leading:
 * sqrt(sigma_max^2 + 1); Euler linspace/trailing: sigma_max; others 1). */
float df_sampler_init_noise_sigma(const df_sampler *s);

/* scale_model_input: x_in = x / sqrt(sigma_i^2 + 1) (Euler family) or a
 * copy (others). x_in may equal x. n values. */
void df_sampler_model_input(const df_sampler *s, int i, const float *x, float *x_in);

/* One step from timesteps[i] to timesteps[i+1]: model_out is the
 * (guided) model output at step i (eps or v), x (n values) is updated in
 * place. Errors: step out of order, missing noise_fn for a needed draw. */
cm_status df_sampler_step(df_sampler *s, int i, const float *model_out, float *x,
                          df_noise_fn noise_fn, void *noise_ctx, cm_error *err);

/* img2img: the first step index for a strength in [0, 1] (the reference's
 * get_timesteps: steps - min(int(steps * strength), steps)). steps means
 * "nothing to do". */
int df_sampler_start_index(int steps, double strength);

/* Noise x0 to the level of step i (the reference's add_noise for this
 * sampler): DDIM / LCM sqrt(ac[t_i]) x0 + sqrt(1 - ac[t_i]) noise;
 * Euler family x0 + noise * sigma_i; DPM++ alpha_i x0 + sigma_t,i noise.
 * i == steps gives out = x0. out may equal x0 or noise. n values. */
void df_sampler_add_noise(const df_sampler *s, int i, const float *x0, const float *noise,
                          float *out);

/* Classifier-free guidance. The reference batches the UNet call as rows
 * [uncond (negative prompt) x B, cond x B] (torch.cat([neg, pos])), so the
 * output's first half is uncond and the second cond, n values each:
 *   guided = uncond + scale * (cond - uncond)      (float32, this op order)
 * guided may equal uncond or cond. df_cfg_enabled(scale) is diffusers'
 * do_classifier_free_guidance (scale > 1): otherwise the pipeline runs the
 * conditional rows only and their output is the model output. */
int df_cfg_enabled(float scale);
void df_cfg_combine(const float *uncond, const float *cond, int64_t n, float scale,
                    float *guided);

/* Legacy 4-channel inpainting, after df_sampler_step(s, i, ...):
 *   x = (1 - mask) * add_noise(image_latents, noise, i + 1) + mask * x
 * (image_latents itself after the last step). mask (h*w, 1 = repaint) is
 * broadcast over the planes: x, image_latents and noise are (planes, hw)
 * with planes = B*C. */
void df_sampler_inpaint_blend(const df_sampler *s, int i, const float *image_latents,
                              const float *noise, const float *mask, int64_t planes, int64_t hw,
                              float *x);


/* ------------------------------------------------------------------------
 * MMDiT (SD3 / SD3.5 denoiser, mmdit.c)
 *
 * The multimodal diffusion transformer over the original single-file
 * names model.diffusion_model.{x_embedder, pos_embed, t_embedder,
 * y_embedder, context_embedder, joint_blocks.i.{x_block,context_block},
 * final_layer}, config section "transformer" (diffusers
 * SD3Transformer2DModel field names; shapes fill what is missing). It
 * predicts the flow velocity; drive it with DF_SAMPLER_FLOW_EULER:
 *
 *   x = noise (B, 16, h, w)                 init_noise_sigma is 1
 *   for i: t = df_sampler_timestep(s, i)    = sigma_i * 1000, per row
 *          v = MMDiT(x, t, context, pooled) on rows [uncond, cond]
 *          guided = df_cfg_combine(...); df_sampler_step(s, i, guided, x)
 *   VAE: z = x / scaling_factor + shift_factor (vae_unscale_latent)
 * ---------------------------------------------------------------------- */

typedef struct df_mmdit df_mmdit;

/* Checks every tensor (presence and shape) up front; the model must
 * outlive the MMDiT. SD3.5 q/k RMS norms (attn.ln_q / ln_k) are used when
 * present; MMDiT-X dual attention (attn2) is CM_ERR_UNSUPPORTED. */
df_mmdit *df_mmdit_create(const wt_model *m, cm_error *err);
void df_mmdit_free(df_mmdit *d);
int df_mmdit_in_channels(const df_mmdit *d);
int df_mmdit_out_channels(const df_mmdit *d);
/* Width of the context rows (joint_attention_dim: 4096 for SD3). */
int df_mmdit_context_dim(const df_mmdit *d);
/* Width of the pooled text embedding (pooled_projection_dim: 2048). */
int df_mmdit_pooled_dim(const df_mmdit *d);
/* h and w must be multiples of this (the patch size) and at most
 * df_mmdit_max_latent_size (pos_embed_max_size x patch). */
int df_mmdit_size_multiple(const df_mmdit *d);
int df_mmdit_max_latent_size(const df_mmdit *d);
/* Activation bytes df_mmdit_forward keeps for (B, h, w) and T tokens. */
size_t df_mmdit_work_bytes(const df_mmdit *d, int B, int h, int w, int T);

/* Debug hook: token-major (B, T, C) intermediates named as the reference's
 * modules: "pos_embed", "time_text_embed" (T = 1), "context_embedder",
 * "transformer_blocks.i.hidden", "transformer_blocks.i.context",
 * "norm_out", "proj_out". Valid only during the call. */
typedef void (*df_mmdit_debug_fn)(void *user, const char *name, const float *data, int B, int T,
                                  int C);

typedef struct {
    const float *x;          /* (B, in_channels, h, w) NCHW */
    int B, h, w;
    const float *timesteps;  /* (B): sigma * 1000, fractional */
    const float *context;    /* (B, T, context_dim) */
    int T;
    const float *pooled;     /* (B, pooled_dim) */
    df_mmdit_debug_fn debug; /* optional */
    void *debug_user;
} df_mmdit_input;

/* out: (B, out_channels, h, w) NCHW, must not overlap the inputs. The
 * activation buffer is kept and grown only when a call needs more. Not
 * thread-safe: one forward at a time per df_mmdit. */
cm_status df_mmdit_forward(df_mmdit *d, const df_mmdit_input *in, float *out, cm_error *err);

#endif
