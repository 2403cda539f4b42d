/* pipeline.c — the generation job that wires the stages:
 *
 *   prompt -> te_encode_pair -> context [uncond, cond]
 *   seed -> RNG -> noise latent (1, C, h, w)  (or --init-noise)
 *   sampler loop: x_in = scale(x); out = UNet([x_in, x_in], t, context);
 *                 guided = uncond + cfg * (cond - uncond); x = step(x, guided)
 *   x -> vae_unscale_latent -> VAE decoder -> RGB8
 *
 * mirrors diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline
 * __call__ (CPU generator: one torch.Generator seeded with the seed draws
 * the initial noise, then every per-step draw of the sampler).
 */
#include "pipeline.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------- loading */

cm_status cmd_models_load(cmd_models *cm, const char *path, cm_error *err)
{
    memset(cm, 0, sizeof *cm);
    double t0 = cm_time_now();
    cm->m = wt_model_open(path, err);
    if (!cm->m) return err->status;
    if (!(cm->te = te_encoder_create(cm->m, err))) goto fail;
    if (!(cm->unet = df_unet_create(cm->m, err))) goto fail;
    if (!(cm->vae = vae_create(cm->m, err))) goto fail;
    if (df_schedule_init(&cm->sched, wt_model_section(cm->m, "scheduler"), err)) goto fail;
    int ss = wt_cfg_int(wt_model_section(cm->m, "unet"), "sample_size", 0);
    cm->native_size = ss > 0 ? ss * vae_downscale(cm->vae) : 512;
    cm->load_seconds = cm_time_now() - t0;
    return CM_OK;
fail:
    cmd_models_free(cm);
    return err->status ? err->status : CM_ERR_FORMAT;
}

void cmd_models_free(cmd_models *cm)
{
    if (!cm) return;
    df_schedule_release(&cm->sched);
    vae_free(cm->vae);
    df_unet_free(cm->unet);
    te_encoder_free(cm->te);
    wt_model_close(cm->m);
    memset(cm, 0, sizeof *cm);
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
    if (st) return st;
    cache->valid = 1;
    return CM_OK;
}

cm_status cmd_job_run(cmd_models *cm, cmd_cond_cache *cache, const cmd_job *job, cmd_result *res,
                      cm_error *err)
{
    memset(res, 0, sizeof *res);
    cm_status st = CM_OK;
    df_sampler *s = NULL;
    float *buf = NULL;
    int ds = vae_downscale(cm->vae), mult = df_unet_size_multiple(cm->unet) * ds;
    if (job->width % mult || job->height % mult)
        return cm_error_set(err, CM_ERR_USAGE, "size %dx%d: width and height must be multiples of %d for this model",
                            job->width, job->height, mult);
    int h = job->height / ds, w = job->width / ds;
    int C = vae_latent_channels(cm->vae), inC = df_unet_in_channels(cm->unet);
    if (inC != C)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: the UNet takes %d input channels (an inpainting model?): txt2img needs %d; use stipple inpaint",
                            wt_model_path(cm->m), inC, C);
    int64_t n = (int64_t)C * h * w;

    /* 1. Conditioning (cached across jobs with the same prompts). */
    double t0 = cm_time_now();
    if ((st = get_cond(cm, cache, job, err))) return st;
    res->t_encode = cm_time_now() - t0;
    const cm_tensor *cc = &cache->cond.context, *uc = &cache->uncond.context;
    int T = (int)cc->shape[1], D = (int)cc->shape[2];
    int cfg = job->cfg > 1.0f;
    int B = cfg ? 2 : 1;

    /* 2. Buffers: x, x_in (B copies), out (B), guided, context (B,T,D),
     *    SDXL text_embeds / time_ids, decoded image. */
    int P = df_unet_pooled_dim(cm->unet), NT = df_unet_n_time_ids(cm->unet);
    size_t floats = (size_t)n * (1 + 2 * B + 1) + (size_t)B * T * D + (size_t)B * (P + NT + 1) +
                    (size_t)3 * job->width * job->height;
    buf = cm_alloc(floats * sizeof(float), "sampling buffers", err);
    if (!buf) return CM_ERR_NOMEM;
    float *x = buf, *x_in = x + n, *out = x_in + B * n, *guided = out + B * n;
    float *ctx = guided + n, *temb = ctx + (size_t)B * T * D, *tids = temb + (size_t)B * P;
    float *tsteps = tids + (size_t)B * NT, *img = tsteps + B;
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
            /* add_time_ids = original_size + crops_coords_top_left + target_size */
            float ids[6] = {(float)job->height, (float)job->width, 0, 0, (float)job->height,
                            (float)job->width};
            for (int k = 0; k < NT; k++) tids[(size_t)b * NT + k] = k < 6 ? ids[k] : 0;
        }
    }

    /* 3. Initial noise. */
    job_rng rng = {.kind = job->rng};
    if (job->rng == RNG_CUDA) cm_philox_seed(&rng.philox, job->seed);
    else cm_torch_rng_seed(&rng.torch, job->seed);
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
        memcpy(x, t->data + (size_t)job->noise_row * n, sizeof(float) * (size_t)n);
    } else {
        rng_draw(&rng, x, n);
    }

    /* 4. Sampler. */
    df_schedule sched = cm->sched;
    if (job->prediction >= 0) sched.prediction = (df_prediction)job->prediction;
    df_sampler_opts so = {.spacing = job->spacing, .karras = job->karras, .eta = job->eta};
    s = df_sampler_create(job->sampler, &sched, job->steps, &so, n, err);
    if (!s) {
        st = err->status;
        goto done;
    }
    float sig0 = df_sampler_init_noise_sigma(s);
    for (int64_t i = 0; i < n; i++) x[i] *= sig0;

    t0 = cm_time_now();
    cm_progress prog;
    cm_progress_begin(&prog, "sampling", job->steps, job->quiet);
    for (int i = 0; i < job->steps; i++) {
        if (cm_interrupted) {
            st = cm_error_set(err, CM_ERR_INTERRUPTED, "interrupted");
            goto done;
        }
        df_sampler_model_input(s, i, x, x_in);
        if (B == 2) memcpy(x_in + n, x_in, sizeof(float) * (size_t)n);
        float t = df_sampler_timestep(s, i);
        for (int b = 0; b < B; b++) tsteps[b] = t;
        df_unet_input in = {.x = x_in, .B = B, .h = h, .w = w, .timesteps = tsteps,
                            .context = ctx, .T = T, .text_embeds = P ? temb : NULL,
                            .time_ids = NT ? tids : NULL};
        if ((st = df_unet_forward(cm->unet, &in, out, err))) goto done;
        const float *mo = out;
        if (cfg) {
            float g = job->cfg;
            for (int64_t k = 0; k < n; k++) guided[k] = out[k] + g * (out[n + k] - out[k]);
            mo = guided;
        }
        if ((st = df_sampler_step(s, i, mo, x, rng_draw, &rng, err))) goto done;
        if (job->save_latents) {
            char name[32];
            snprintf(name, sizeof name, "step_%03d", i);
            if ((st = save_latent(job->save_latents, name, x, C, h, w, err))) goto done;
        }
        cm_progress_step(&prog);
    }
    cm_progress_end(&prog);
    res->t_sample = cm_time_now() - t0;
    if (job->save_latents && (st = save_latent(job->save_latents, "final", x, C, h, w, err))) goto done;

    /* 5. Decode. */
    t0 = cm_time_now();
    vae_unscale_latent(cm->vae, x, n, x);
    if ((st = vae_decode(cm->vae, x, 1, h, w, img, err))) goto done;
    res->rgb = cm_alloc((size_t)job->width * job->height * 3, "image", err);
    if (!res->rgb) {
        st = CM_ERR_NOMEM;
        goto done;
    }
    vae_to_u8(img, 1, job->height, job->width, res->rgb);
    res->width = job->width;
    res->height = job->height;
    res->t_decode = cm_time_now() - t0;
done:
    df_sampler_free(s);
    cm_free(buf);
    if (st) cmd_result_release(res);
    return st;
}
