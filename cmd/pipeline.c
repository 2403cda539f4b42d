/* pipeline.c — the generation job that wires the stages:
 *
 *   prompt -> te_encode_pair -> context [uncond, cond]
 *   seed -> RNG -> noise latent (1, C, h, w)  (or --init-noise)
 *   img2img / inpaint: image -> VAE encoder moments -> image latents
 *                      x = add_noise(image latents, noise, start step)
 *   sampler loop: x_in = scale(x); out = denoiser([x_in, x_in], t, context);
 *                 (denoiser: the UNet, or the MMDiT of SD3 with the pooled
 *                  text embedding, flow-matching Euler, 16 latent channels)
 *                 guided = uncond + cfg * (cond - uncond); x = step(x, guided)
 *                 (4-channel inpaint: known region put back after each step;
 *                  9-channel UNet: input [x_in, mask, masked-image latents])
 *   x -> vae_unscale_latent -> VAE decoder -> RGB8 (inpaint: composited
 *   onto the input with the mask, so kept pixels are the input's bytes)
 *
 * mirrors diffusers 0.30.3 StableDiffusionPipeline / StableDiffusionXLPipeline
 * / StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline /
 * StableDiffusion3Pipeline (+ its Img2Img variant) __call__.
 * The CPU generator (one torch.Generator seeded with the seed) draws, in the
 * reference's order:
 *   txt2img                       noise
 *   img2img                       posterior eps of the image, noise
 *   inpaint, 4-channel UNet       image eps, noise, masked-image eps (unused)
 *   inpaint, 9-channel, strength 1          noise, masked-image eps
 *   inpaint, 9-channel, strength < 1        image eps, noise, masked-image eps
 * then every per-step draw of the sampler. --encode-mode mean skips the eps
 * draws (the reference's argmax mode). An inpainting (9-channel) UNet in
 * txt2img / img2img gets A1111's conditioning: a full mask and the latents
 * of a blank (0 in [-1, 1]) masked image, encoded with the posterior mean
 * (no draw).
 */
#include "pipeline.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------- loading */

cm_status cmd_models_load(cmd_models *cm, const char *path, cm_error *err)
{
    return cmd_models_load_ex(cm, path, NULL, err);
}

/* "stipple.defaults" metadata (the built-in model's): guidance and steps
 * the model was tuned for. Values out of range are ignored with a note. */
static void read_model_defaults(cmd_models *cm)
{
    cm->default_cfg = -1.0f;
    cm->default_steps = -1;
    const char *txt = wt_model_metadata(cm->m, "stipple.defaults");
    if (!txt) return;
    cJSON *d = cJSON_Parse(txt);
    double cfg = wt_cfg_num(d, "cfg", -1.0), steps = wt_cfg_num(d, "steps", -1.0);
    if (cfg >= 0.0 && cfg <= 1000.0) cm->default_cfg = (float)cfg;
    else if (cfg != -1.0) cm_warn("%s: stipple.defaults: cfg %g ignored", wt_model_stem(cm->m), cfg);
    if (steps >= 1.0 && steps <= 10000.0 && steps == (int)steps) cm->default_steps = (int)steps;
    else if (steps != -1.0) cm_warn("%s: stipple.defaults: steps %g ignored", wt_model_stem(cm->m), steps);
    cJSON_Delete(d);
}

/* The Turbo convenience: a scheduler config with timestep_spacing
 * "trailing" (SD-Turbo / SDXL-Turbo ship EulerAncestralDiscreteScheduler
 * with it) is what the program follows by default. */
static void scheduler_defaults(cmd_models *cm)
{
    const cJSON *sc = wt_model_section(cm->m, "scheduler");
    const char *sp = wt_cfg_str(sc, "timestep_spacing", NULL);
    cm->trailing = sp && !strcmp(sp, "trailing");
    const char *cls = wt_cfg_str(sc, "_class_name", NULL);
    cm_error e = {0};
    if (cm->trailing && cls && df_sampler_parse(cls, &cm->sampler, &e) == CM_OK &&
        cm->sampler != DF_SAMPLER_FLOW_EULER)
        cm->has_sampler = 1;
}

cm_status cmd_models_load_ex(cmd_models *cm, const char *path, const cmd_model_opts *o,
                             cm_error *err)
{
    static const cmd_model_opts none = {0};
    if (!o) o = &none;
    memset(cm, 0, sizeof *cm);
    double t0 = cm_time_now();
    cm->m = wt_model_open(path, err);
    if (!cm->m) return err->status;
    int sd3 = wt_model_family(cm->m) == WT_FAMILY_SD3;
    const struct {
        const char *file, *flag, *prefix;
    } extra[] = {
        {o->clip_l, "--clip-l", "text_encoders.clip_l.transformer."},
        {o->clip_g, "--clip-g", "text_encoders.clip_g.transformer."},
        {o->t5xxl, "--t5xxl", "text_encoders.t5xxl.transformer."},
    };
    for (size_t k = 0; k < sizeof extra / sizeof extra[0]; k++) {
        if (!extra[k].file) continue;
        if (!sd3) {
            cm_error_set(err, CM_ERR_USAGE, "%s %s: separate text encoder files are for SD3 models; %s is %s",
                         extra[k].flag, extra[k].file, path, wt_family_name(wt_model_family(cm->m)));
            goto fail;
        }
        if (wt_model_add_file(cm->m, extra[k].file, extra[k].prefix, err)) {
            cm_error_prefix(err, "%s", extra[k].flag);
            goto fail;
        }
    }
    if (!sd3 && (o->no_t5 || o->t5_max_length)) {
        cm_error_set(err, CM_ERR_USAGE, "%s: only for SD3 models; %s is %s",
                     o->no_t5 ? "--no-t5" : "--t5-max-length", path,
                     wt_family_name(wt_model_family(cm->m)));
        goto fail;
    }
    if (!(cm->te = te_encoder_create(cm->m, err))) goto fail;
    if (sd3) {
        int len = o->t5_max_length > 0 ? o->t5_max_length : 256;
        if (te_encoder_set_t5(cm->te, !o->no_t5, len, err)) goto fail;
        cm->context_tokens = TE_CTX + len;
        cm->denoiser = CMD_DENOISER_MMDIT;
        if (!(cm->mmdit = df_mmdit_create(cm->m, err))) goto fail;
    } else {
        cm->denoiser = CMD_DENOISER_UNET;
        if (!(cm->unet = df_unet_create(cm->m, err))) goto fail;
    }
    if (!(cm->vae = vae_create(cm->m, err))) goto fail;
    if (df_schedule_init(&cm->sched, wt_model_section(cm->m, "scheduler"), err)) goto fail;
    if (sd3 && cm->sched.dynamic_shifting) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: scheduler use_dynamic_shifting (SD3.5 Flux-style resolution shift) is not supported",
                     path);
        goto fail;
    }
    scheduler_defaults(cm);
    int ss = wt_cfg_int(wt_model_section(cm->m, sd3 ? "transformer" : "unet"), "sample_size", 0);
    cm->native_size = ss > 0 ? ss * vae_downscale(cm->vae) : sd3 ? 1024 : 512;
    read_model_defaults(cm);
    cm->load_seconds = cm_time_now() - t0;
    return CM_OK;
fail:
    cmd_models_free(cm);
    return err->status ? err->status : CM_ERR_FORMAT;
}

void cmd_models_free(cmd_models *cm)
{
    if (!cm) return;
    cm_pack_cache_clear(); /* packed panels of weights about to be unmapped */
    cm_scratch_release();
    df_schedule_release(&cm->sched);
    vae_free(cm->vae);
    df_unet_free(cm->unet);
    df_mmdit_free(cm->mmdit);
    te_encoder_free(cm->te);
    wt_model_close(cm->m);
    memset(cm, 0, sizeof *cm);
}

int cmd_models_inpainting(const cmd_models *cm)
{
    return cm->unet && df_unet_in_channels(cm->unet) == 2 * vae_latent_channels(cm->vae) + 1;
}

int cmd_models_size_multiple(const cmd_models *cm)
{
    int m = cm->mmdit ? df_mmdit_size_multiple(cm->mmdit) : df_unet_size_multiple(cm->unet);
    return m * vae_downscale(cm->vae);
}

int cmd_models_is_flow(const cmd_models *cm)
{
    return cm->denoiser == CMD_DENOISER_MMDIT;
}

const char *cmd_inpaint_method(const cmd_models *cm, cmd_mode mode)
{
    int nine = cmd_models_inpainting(cm);
    if (mode == CMD_INPAINT && cm->mmdit) return "latent blend (MMDiT)";
    if (mode == CMD_INPAINT) return nine ? "9-channel inpainting UNet" : "latent blend (4-channel UNet)";
    return nine ? "9-channel inpainting UNet with a full mask and a blank masked image" : NULL;
}

void cmd_cond_cache_release(cmd_cond_cache *c)
{
    if (!c) return;
    free(c->prompt);
    free(c->negative);
    te_cond_release(&c->cond);
    te_cond_release(&c->uncond);
    memset(c, 0, sizeof *c);
}

void cmd_result_release(cmd_result *r)
{
    if (!r) return;
    cm_free(r->rgb);
    memset(r, 0, sizeof *r);
}

/* ----------------------------------------------------------------- noise */

typedef struct {
    cmd_rng_kind kind;
    cm_torch_rng torch;
    cm_philox_rng philox;
} job_rng;

static void rng_draw(void *ctx, float *out, int64_t n)
{
    job_rng *r = ctx;
    if (r->kind == RNG_CUDA) cm_philox_randn(&r->philox, out, n);
    else cm_torch_randn(&r->torch, out, n);
}

/* ------------------------------------------------------------ save steps */

static cm_status save_latent(const char *dir, const char *name, const float *x, int C, int h, int w,
                             cm_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    cm_tensor t = {.data = (float *)x, .ndim = 4, .shape = {1, C, h, w}};
    return cm_npy_write(path, &t, err);
}

/* -------------------------------------------------------------------- run */

static cm_status get_cond(cmd_models *cm, cmd_cond_cache *cache, const cmd_job *job, cm_error *err)
{
    const char *neg = job->negative ? job->negative : "";
    if (cache->valid && !strcmp(cache->prompt, job->prompt) && !strcmp(cache->negative, neg) &&
        cache->clip_skip == job->clip_skip)
        return CM_OK;
    cmd_cond_cache_release(cache);
    cache->prompt = strdup(job->prompt);
    cache->negative = strdup(neg);
    if (!cache->prompt || !cache->negative)
        return cm_error_set(err, CM_ERR_NOMEM, "out of memory");
    cache->clip_skip = job->clip_skip;
    cm_status st = te_encode_pair(cm->te, job->prompt, neg, job->clip_skip, &cache->cond,
                                  &cache->uncond, err);
    /* The text encoder's packed and mapped weights are not needed until
     * the next prompt: give their memory to the denoiser. */
    cm_pack_cache_clear();
    wt_model_drop(cm->m);
    if (st) return st;
    cache->valid = 1;
    return CM_OK;
}

/* ------------------------------------------------------ img2img inputs */

void cmd_init_release(cmd_init *ini)
{
    if (!ini) return;
    cm_free(ini->rgb);
    cm_free(ini->weight);
    cm_free(ini->mask_latent);
    cm_free(ini->mean);
    cm_free(ini->logvar);
    cm_free(ini->mmean);
    cm_free(ini->mlogvar);
    memset(ini, 0, sizeof *ini);
}

cm_status cmd_init_prepare(cmd_models *cm, cmd_mode mode, const cm_image *image,
                           const cm_image *mask, int W, int H, int mask_blur,
                           int need_image_latents, cmd_init *ini, cm_error *err)
{
    memset(ini, 0, sizeof *ini);
    int ds = vae_downscale(cm->vae), C = vae_latent_channels(cm->vae);
    int mult = cmd_models_size_multiple(cm);
    if (W < mult || H < mult || W % mult || H % mult)
        return cm_error_set(err, CM_ERR_USAGE, "size %dx%d: width and height must be multiples of %d for this model",
                            W, H, mult);
    int h = H / ds, w = W / ds;
    int64_t npix = (int64_t)W * H, n = (int64_t)C * h * w;
    float *f = NULL, *img = NULL, *gray = NULL;
    cm_status st = CM_ERR_NOMEM;
    ini->width = W;
    ini->height = H;

    /* The image at the job size, 8-bit: the reference's u8 input. */
    if (!(ini->rgb = cm_alloc((size_t)npix * 3, "input image", err))) goto fail;
    if (!(f = cm_alloc(sizeof(float) * (size_t)npix * 3, "resized image", err))) goto fail;
    if ((st = cmd_resize(image->rgb, image->w, image->h, 3, f, W, H, err))) goto fail;
    for (int64_t k = 0; k < npix * 3; k++) {
        long q = lrintf(f[k] * 255.0f);
        ini->rgb[k] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
    }

    /* The mask: grey, resized, clamped; blurred; pure black stays 0. */
    if (mode == CMD_INPAINT) {
        st = CM_ERR_NOMEM;
        if (!(gray = cm_alloc(sizeof(float) * (size_t)mask->w * mask->h, "mask", err))) goto fail;
        if (!(ini->weight = cm_alloc(sizeof(float) * (size_t)npix, "mask weight", err))) goto fail;
        if (!(ini->mask_latent = cm_alloc(sizeof(float) * (size_t)h * w, "latent mask", err))) goto fail;
        cmd_mask_gray(mask->rgb, (int64_t)mask->w * mask->h, gray);
        if ((st = cmd_resize(gray, mask->w, mask->h, 1, ini->weight, W, H, err))) goto fail;
        for (int64_t k = 0; k < npix; k++) {
            float v = ini->weight[k];
            v = v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f;
            ini->weight[k] = v;
            f[k] = v; /* f is free now: the unblurred mask */
        }
        if ((st = cmd_mask_blur(ini->weight, W, H, mask_blur, err))) goto fail;
        for (int64_t k = 0; k < npix; k++) {
            if (f[k] == 0.0f) ini->weight[k] = 0.0f;
            ini->repaint_pixels += ini->weight[k] > 0.0f;
        }
        /* torch's F.interpolate(mode="nearest"): source index floor(dst * in / out) */
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int64_t sy = (int64_t)y * H / h, sx = (int64_t)x * W / w;
                ini->mask_latent[(size_t)y * w + x] = ini->weight[sy * W + sx] >= 0.5f ? 1.0f : 0.0f;
            }
    }

    /* Encoder moments (the draws of eps belong to each job's seed). */
    st = CM_ERR_NOMEM;
    if (!(img = cm_alloc(sizeof(float) * (size_t)npix * 3, "encoder input", err))) goto fail;
    vae_from_u8(ini->rgb, 1, H, W, img);
    if (need_image_latents) {
        if (!(ini->mean = cm_alloc(sizeof(float) * (size_t)n, "image latents", err))) goto fail;
        if (!(ini->logvar = cm_alloc(sizeof(float) * (size_t)n, "image latents", err))) goto fail;
        if ((st = vae_encode(cm->vae, img, 1, H, W, ini->mean, ini->logvar, err))) goto fail;
    }
    if (mode == CMD_INPAINT && cmd_models_inpainting(cm)) {
        /* masked_image = image * (mask < 0.5) */
        for (int c = 0; c < 3; c++)
            for (int64_t k = 0; k < npix; k++)
                if (ini->weight[k] >= 0.5f) img[c * npix + k] *= 0.0f;
        st = CM_ERR_NOMEM;
        if (!(ini->mmean = cm_alloc(sizeof(float) * (size_t)n, "masked image latents", err))) goto fail;
        if (!(ini->mlogvar = cm_alloc(sizeof(float) * (size_t)n, "masked image latents", err))) goto fail;
        if ((st = vae_encode(cm->vae, img, 1, H, W, ini->mmean, ini->mlogvar, err))) goto fail;
    }
    cm_free(f);
    cm_free(img);
    cm_free(gray);
    return CM_OK;
fail:
    cm_free(f);
    cm_free(img);
    cm_free(gray);
    cmd_init_release(ini);
    return st ? st : CM_ERR_NOMEM;
}

/* A1111's conditioning for an inpainting UNet without a mask: the latents
 * of a blank image (0 in [-1, 1]), posterior mean. n = C*h*w floats. */
static cm_status blank_masked_latents(cmd_models *cm, int W, int H, float *out, cm_error *err)
{
    int ds = vae_downscale(cm->vae), C = vae_latent_channels(cm->vae);
    int64_t n = (int64_t)C * (H / ds) * (W / ds);
    float *img = cm_calloc(sizeof(float) * ((size_t)W * H * 3 + (size_t)n), "blank image", err);
    if (!img) return CM_ERR_NOMEM;
    cm_status st = vae_encode(cm->vae, img, 1, H, W, out, img + (size_t)W * H * 3, err);
    if (!st)
        vae_latent_from_moments(out, NULL, NULL, n, vae_scaling_factor(cm->vae),
                                vae_shift_factor(cm->vae), out);
    cm_free(img);
    return st;
}

/* ----------------------------------------------------------------- decode */

static int all_finite(const float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* Stage residency for large models: the denoiser's packed panels and its
 * mapped weights are given back before the VAE runs, and the VAE's after,
 * so peak RSS is the largest stage, not the sum (#7). Small models (the
 * built-in one) keep their panels across images. */
static void release_stage(const cmd_models *cm)
{
    if (!wt_model_drops(cm->m)) return;
    cm_pack_cache_clear();
    cm_scratch_trim();
    wt_model_drop(cm->m);
}

static cm_status decode_once(cmd_models *cm, const cmd_job *job, const float *z, int h, int w,
                             float *img, cm_error *err)
{
    release_stage(cm);
    cm_status st = job->vae_tile > 0
                       ? vae_decode_tiled(cm->vae, z, 1, h, w, job->vae_tile, job->vae_tile / 4, img, err)
                       : vae_decode(cm->vae, z, 1, h, w, img, err);
    release_stage(cm);
    return st;
}

/* The SDXL VAE's known reduced-precision overflow (black / NaN images)
 * must not reach the user: a decode that yields a non-finite value under
 * a reduced precision runs again in float32, with a note on stderr. In
 * float32 it is an error (the latents themselves are broken). */
static cm_status decode_checked(cmd_models *cm, const cmd_job *job, const float *z, int h, int w,
                                float *img, cm_error *err)
{
    int64_t npx = (int64_t)3 * job->width * job->height;
    cm_status st = decode_once(cm, job, z, h, w, img, err);
    if (st || all_finite(img, npx)) return st;
    cm_precision prec = cm_precision_get();
    if (prec != CM_PREC_F32) {
        fprintf(stderr, "stipple: the VAE decode gave non-finite values at reduced precision: decoding again in float32\n");
        cm_precision_set(CM_PREC_F32);
        st = decode_once(cm, job, z, h, w, img, err);
        cm_precision_set(prec);
        if (st || all_finite(img, npx)) return st;
    }
    return cm_error_set(err, CM_ERR_FORMAT, "%s: the VAE decode gave non-finite values in float32 (%s)",
                        wt_model_path(cm->m),
                        all_finite(z, (int64_t)vae_latent_channels(cm->vae) * h * w)
                            ? "the latents are finite: the VAE weights overflow"
                            : "the sampled latents are not finite");
}

/* -------------------------------------------------------------------- run */

cm_status cmd_job_run(cmd_models *cm, cmd_cond_cache *cache, const cmd_job *job, cmd_result *res,
                      cm_error *err)
{
    memset(res, 0, sizeof *res);
    cm_status st = CM_OK;
    df_sampler *s = NULL;
    float *buf = NULL;
    const cmd_init *ini = job->init;
    int ds = vae_downscale(cm->vae), mult = cmd_models_size_multiple(cm);
    if (job->width % mult || job->height % mult)
        return cm_error_set(err, CM_ERR_USAGE, "size %dx%d: width and height must be multiples of %d for this model",
                            job->width, job->height, mult);
    int h = job->height / ds, w = job->width / ds;
    int64_t hw = (int64_t)h * w;
    int flow = cmd_models_is_flow(cm);
    int C = vae_latent_channels(cm->vae);
    int inC = flow ? df_mmdit_in_channels(cm->mmdit) : df_unet_in_channels(cm->unet);
    int nine = cmd_models_inpainting(cm);
    if (inC != C && !nine)
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: the %s takes %d input channels: expected %d%s",
                            wt_model_path(cm->m), flow ? "MMDiT" : "UNet", inC, C,
                            flow ? " (the VAE's latent channels)" : " (or 2C+1 for inpainting)");
    if (flow && (job->sampler != DF_SAMPLER_FLOW_EULER || h > df_mmdit_max_latent_size(cm->mmdit) ||
                 w > df_mmdit_max_latent_size(cm->mmdit))) {
        if (job->sampler != DF_SAMPLER_FLOW_EULER)
            return cm_error_set(err, CM_ERR_USAGE, "--sampler %s: an SD3 (MMDiT) model samples with flow_euler only",
                                df_sampler_name(job->sampler));
        return cm_error_set(err, CM_ERR_USAGE, "size %dx%d: at most %dx%d pixels for this model (pos_embed_max_size)",
                            job->width, job->height, df_mmdit_max_latent_size(cm->mmdit) * ds,
                            df_mmdit_max_latent_size(cm->mmdit) * ds);
    }
    if (!flow && job->sampler == DF_SAMPLER_FLOW_EULER)
        return cm_error_set(err, CM_ERR_USAGE, "--sampler flow_euler: only for SD3 (MMDiT) models; %s is a UNet model",
                            wt_model_path(cm->m));
    if (job->mode != CMD_TXT2IMG &&
        (!ini || ini->width != job->width || ini->height != job->height ||
         (job->mode == CMD_INPAINT && !ini->weight)))
        return cm_error_set(err, CM_ERR_USAGE, "%s: the prepared input image does not fit the job size %dx%d",
                            job->mode == CMD_INPAINT ? "inpaint" : "img2img", job->width, job->height);
    int i0 = job->mode == CMD_TXT2IMG ? 0 : df_sampler_start_index(job->steps, job->strength);
    if (i0 >= job->steps)
        return cm_error_set(err, CM_ERR_USAGE, "--strength %g with --steps %d runs no step (int(steps * strength) = 0)",
                            (double)job->strength, job->steps);
    int strength_max = job->mode == CMD_TXT2IMG || job->strength >= 1.0f;
    if (!ini || !ini->mean) {
        /* image latents are needed unless 9-channel inpaint at strength 1 */
        if (job->mode == CMD_IMG2IMG || (job->mode == CMD_INPAINT && (!nine || !strength_max)))
            return cm_error_set(err, CM_ERR_USAGE, "img2img: the input image was not encoded");
    }
    int64_t n = (int64_t)C * hw, n_in = (int64_t)inC * hw;
    res->method = cmd_inpaint_method(cm, job->mode);

    /* 1. Conditioning (cached across jobs with the same prompts). */
    double t0 = cm_time_now();
    if ((st = get_cond(cm, cache, job, err))) return st;
    res->t_encode = cm_time_now() - t0;
    const cm_tensor *cc = &cache->cond.context, *uc = &cache->uncond.context;
    int T = (int)cc->shape[1], D = (int)cc->shape[2];
    int cfg = job->cfg > 1.0f;
    int B = cfg ? 2 : 1;

    /* 2. Buffers: x, x_in (B rows of inC planes), out (B), guided, context
     *    (B,T,D), SDXL text_embeds / time_ids, decoded image, then noise,
     *    image latents and the 9-channel extra planes [mask, masked latents]. */
    int P = flow ? df_mmdit_pooled_dim(cm->mmdit) : df_unet_pooled_dim(cm->unet);
    int NT = flow ? 0 : df_unet_n_time_ids(cm->unet);
    if (flow && (D != df_mmdit_context_dim(cm->mmdit) || !cache->cond.pooled.data ||
                 cm_tensor_numel(&cache->cond.pooled) != P)) {
        return cm_error_set(err, CM_ERR_FORMAT, "%s: the text encoders give a context of width %d and a pooled embedding of %lld values; the MMDiT wants %d and %d",
                            wt_model_path(cm->m), D, (long long)cm_tensor_numel(&cache->cond.pooled),
                            df_mmdit_context_dim(cm->mmdit), P);
    }
    size_t floats = (size_t)n * (1 + 2 * B + 1) + (size_t)B * n_in + (size_t)B * T * D +
                    (size_t)B * (P + NT + 1) + (size_t)3 * job->width * job->height +
                    (size_t)n * 3 + (size_t)hw;
    buf = cm_alloc(floats * sizeof(float), "sampling buffers", err);
    if (!buf) return CM_ERR_NOMEM;
    float *x = buf, *x_in = x + n, *out = x_in + (size_t)B * n_in, *guided = out + (size_t)B * n;
    float *ctx = guided + n, *temb = ctx + (size_t)B * T * D, *tids = temb + (size_t)B * P;
    float *tsteps = tids + (size_t)B * NT, *img = tsteps + B;
    float *noise = img + (size_t)3 * job->width * job->height, *image_lat = noise + n;
    float *extra = image_lat + n; /* (1 + C) planes: mask, masked-image latents */
    if (cfg) {
        memcpy(ctx, uc->data, sizeof(float) * (size_t)T * D);
        memcpy(ctx + (size_t)T * D, cc->data, sizeof(float) * (size_t)T * D);
    } else {
        memcpy(ctx, cc->data, sizeof(float) * (size_t)T * D);
    }
    if (P) {
        const te_cond *rows[2] = {cfg ? &cache->uncond : &cache->cond, &cache->cond};
        for (int b = 0; b < B; b++) {
            if (rows[b]->pooled.data && cm_tensor_numel(&rows[b]->pooled) == P)
                memcpy(temb + (size_t)b * P, rows[b]->pooled.data, sizeof(float) * P);
            else
                memset(temb + (size_t)b * P, 0, sizeof(float) * P);
        }
        for (int b = 0; b < B; b++) {
            /* add_time_ids = original_size + crops_coords_top_left + target_size
             * (the reference's defaults: the image size, (0, 0), the image size) */
            float ids[6] = {(float)(job->orig_h > 0 ? job->orig_h : job->height),
                            (float)(job->orig_w > 0 ? job->orig_w : job->width),
                            (float)job->crop_top, (float)job->crop_left,
                            (float)(job->target_h > 0 ? job->target_h : job->height),
                            (float)(job->target_w > 0 ? job->target_w : job->width)};
            for (int k = 0; k < NT; k++) tids[(size_t)b * NT + k] = k < 6 ? ids[k] : 0;
        }
    }

    /* 3. The reference's draws, in its order (see the file header). */
    job_rng rng = {.kind = job->rng};
    if (job->rng == RNG_CUDA) cm_philox_seed(&rng.philox, job->seed);
    else cm_torch_rng_seed(&rng.torch, job->seed);
    float sf = vae_scaling_factor(cm->vae), shift = vae_shift_factor(cm->vae);
    int want_image = job->mode == CMD_IMG2IMG || (job->mode == CMD_INPAINT && (!nine || !strength_max));
    if (want_image) {
        if (!job->encode_mean) rng_draw(&rng, guided, n); /* guided: scratch until the loop */
        vae_latent_from_moments(ini->mean, ini->logvar, job->encode_mean ? NULL : guided, n, sf, shift,
                                image_lat);
    }
    if (job->init_noise) {
        const cm_tensor *t = job->init_noise;
        if (t->ndim != 4 || t->shape[1] != C || t->shape[2] != h || t->shape[3] != w ||
            job->noise_row >= t->shape[0]) {
            st = cm_error_set(err, CM_ERR_USAGE,
                              "--init-noise: shape (%lld,%lld,%lld,%lld) does not fit a (%d,%d,%d,%d) latent",
                              (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
                              (long long)t->shape[3], job->noise_row + 1, C, h, w);
            goto done;
        }
        memcpy(noise, t->data + (size_t)job->noise_row * n, sizeof(float) * (size_t)n);
    } else {
        rng_draw(&rng, noise, n);
    }
    if (job->mode == CMD_INPAINT && !job->encode_mean) {
        rng_draw(&rng, guided, n); /* masked-image eps (unused by a 4-channel UNet) */
        if (nine)
            vae_latent_from_moments(ini->mmean, ini->mlogvar, guided, n, sf, shift, extra + hw);
    } else if (job->mode == CMD_INPAINT && nine) {
        vae_latent_from_moments(ini->mmean, NULL, NULL, n, sf, shift, extra + hw);
    }
    if (nine) {
        if (job->mode == CMD_INPAINT) {
            memcpy(extra, ini->mask_latent, sizeof(float) * (size_t)hw);
        } else {
            for (int64_t k = 0; k < hw; k++) extra[k] = 1.0f;
            if ((st = blank_masked_latents(cm, job->width, job->height, extra + hw, err))) goto done;
        }
    }

    /* 4. Sampler and the starting latents. */
    df_schedule sched = cm->sched;
    if (job->prediction >= 0) sched.prediction = (df_prediction)job->prediction;
    df_sampler_opts so = {.spacing = job->spacing, .karras = job->karras, .eta = job->eta};
    s = df_sampler_create(job->sampler, &sched, job->steps, &so, n, err);
    if (!s) {
        st = err->status;
        goto done;
    }
    if (job->mode == CMD_IMG2IMG || (job->mode == CMD_INPAINT && !strength_max)) {
        df_sampler_add_noise(s, i0, image_lat, noise, x);
    } else {
        float sig0 = df_sampler_init_noise_sigma(s);
        for (int64_t i = 0; i < n; i++) x[i] = noise[i] * sig0;
    }

    t0 = cm_time_now();
    cm_progress prog;
    cm_progress_begin(&prog, "sampling", job->steps - i0, job->quiet);
    for (int i = i0; i < job->steps; i++) {
        if (cm_interrupted) {
            st = cm_error_set(err, CM_ERR_INTERRUPTED, "interrupted");
            goto done;
        }
        df_sampler_model_input(s, i, x, x_in);
        if (nine) memcpy(x_in + n, extra, sizeof(float) * (size_t)(n_in - n));
        if (B == 2) memcpy(x_in + n_in, x_in, sizeof(float) * (size_t)n_in);
        float t = df_sampler_timestep(s, i);
        for (int b = 0; b < B; b++) tsteps[b] = t;
        if (flow) {
            df_mmdit_input in = {.x = x_in, .B = B, .h = h, .w = w, .timesteps = tsteps,
                                 .context = ctx, .T = T, .pooled = temb};
            if ((st = df_mmdit_forward(cm->mmdit, &in, out, err))) goto done;
        } else {
            df_unet_input in = {.x = x_in, .B = B, .h = h, .w = w, .timesteps = tsteps,
                                .context = ctx, .T = T, .text_embeds = P ? temb : NULL,
                                .time_ids = NT ? tids : NULL};
            if ((st = df_unet_forward(cm->unet, &in, out, err))) goto done;
        }
        const float *mo = out;
        if (cfg) {
            df_cfg_combine(out, out + n, n, job->cfg, guided);
            mo = guided;
        }
        if ((st = df_sampler_step(s, i, mo, x, rng_draw, &rng, err))) goto done;
        if (job->mode == CMD_INPAINT && !nine)
            df_sampler_inpaint_blend(s, i, image_lat, noise, ini->mask_latent, C, hw, x);
        if (job->save_latents) {
            char name[32];
            snprintf(name, sizeof name, "step_%03d", i - i0);
            if ((st = save_latent(job->save_latents, name, x, C, h, w, err))) goto done;
        }
        cm_progress_step(&prog);
    }
    cm_progress_end(&prog);
    res->t_sample = cm_time_now() - t0;
    if (job->save_latents && (st = save_latent(job->save_latents, "final", x, C, h, w, err))) goto done;

    /* 5. Decode; inpaint: composite onto the input. */
    t0 = cm_time_now();
    vae_unscale_latent(cm->vae, x, n, x);
    if ((st = decode_checked(cm, job, x, h, w, img, err))) goto done;
    res->rgb = cm_alloc((size_t)job->width * job->height * 3, "image", err);
    if (!res->rgb) {
        st = CM_ERR_NOMEM;
        goto done;
    }
    vae_to_u8(img, 1, job->height, job->width, res->rgb);
    if (job->mode == CMD_INPAINT)
        cmd_composite(ini->rgb, ini->weight, (int64_t)job->width * job->height, res->rgb);
    res->width = job->width;
    res->height = job->height;
    res->t_decode = cm_time_now() - t0;
done:
    df_sampler_free(s);
    cm_free(buf);
    if (st) cmd_result_release(res);
    return st;
}
