/* diffusion/schedule.c — the training noise schedule (betas, alphas_cumprod,
 * sigmas) from a diffusers scheduler config.
 *
 * Mirrors the __init__ of diffusers' DDIM/Euler/DPM/LCM schedulers
 * (0.30.3) on PyTorch 1.13's CPU kernels, bit for bit:
 *   betas = torch.linspace(sqrt(b0), sqrt(b1), n, float32) ** 2
 *   alphas_cumprod = torch.cumprod(1 - betas)     (float64 accumulator)
 * torch's CPU linspace is not "start + i*step": it is computed in AVX2
 * vectors of 8 — base = start + step*idx (fused multiply-add) for the
 * first half, end - step*(n-1-idx) for the second, then base + k*step
 * inside a vector — over the first n - n%16 values, and the scalar
 * formula (also fused) for the tail. The golden alphas_cumprod of
 * sd1-tiny matches this recipe exactly (tests/diffusion_sampler.c).
 */
#include <math.h>
#include <string.h>

#include "diffusion.h"

/* torch.linspace(start, end, n, dtype=float32) on the CPU (see above). */
static void torch_linspace_f32(double start_d, double end_d, int n, float *out)
{
    const float start = (float)start_d, end = (float)end_d;
    if (n == 1) {
        out[0] = start;
        return;
    }
    const float step = (end - start) / (float)(n - 1);
    const int halfway = n / 2;
    const int vec_end = n - n % 16;
    for (int b = 0; b < vec_end; b += 8) {
        float base = b < halfway ? fmaf(step, (float)b, start)
                                 : fmaf(-step, (float)(n - b - 1), end);
        out[b] = base;
        for (int k = 1; k < 8; k++) out[b + k] = fmaf((float)k, step, base);
    }
    for (int i = vec_end; i < n; i++)
        out[i] = i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
}

cm_status df_prediction_parse(const char *name, df_prediction *p, cm_error *err)
{
    if (name && (!strcmp(name, "eps") || !strcmp(name, "epsilon"))) {
        *p = DF_PRED_EPS;
        return CM_OK;
    }
    if (name && (!strcmp(name, "v") || !strcmp(name, "v_prediction"))) {
        *p = DF_PRED_V;
        return CM_OK;
    }
    return cm_error_set(err, CM_ERR_USAGE,
                        "prediction type: expected eps|epsilon|v|v_prediction, got '%s'",
                        name ? name : "(null)");
}

cm_status df_spacing_parse(const char *name, df_spacing *sp, cm_error *err)
{
    static const struct {
        const char *name;
        df_spacing sp;
    } tab[] = {{"leading", DF_SPACING_LEADING},
               {"trailing", DF_SPACING_TRAILING},
               {"linspace", DF_SPACING_LINSPACE}};
    for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(name, tab[i].name)) {
            *sp = tab[i].sp;
            return CM_OK;
        }
    return cm_error_set(err, CM_ERR_USAGE,
                        "timestep spacing: expected leading|trailing|linspace, got '%s'",
                        name ? name : "(null)");
}

static int cfg_bool(const cJSON *cfg, const char *key, int def)
{
    const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    if (cJSON_IsNumber(v)) return v->valuedouble != 0;
    return def;
}

void df_schedule_release(df_schedule *s)
{
    if (!s) return;
    cm_free(s->betas);
    cm_free(s->alphas_cumprod);
    cm_free(s->sigmas);
    memset(s, 0, sizeof *s);
}

cm_status df_schedule_init(df_schedule *s, const cJSON *cfg, cm_error *err)
{
    memset(s, 0, sizeof *s);
    const int n = wt_cfg_int(cfg, "num_train_timesteps", 1000);
    if (n < 2 || n > 100000)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "scheduler config: num_train_timesteps must be in [2, 100000], got %d",
                            n);
    const double b0 = wt_cfg_num(cfg, "beta_start", 0.00085);
    const double b1 = wt_cfg_num(cfg, "beta_end", 0.012);
    const char *bs = wt_cfg_str(cfg, "beta_schedule", "scaled_linear");
    const cJSON *trained = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "trained_betas") : NULL;
    cm_status st;

    if ((st = df_prediction_parse(wt_cfg_str(cfg, "prediction_type", "epsilon"), &s->prediction,
                                  err)) != CM_OK)
        return cm_error_prefix(err, "scheduler config");
    if ((st = df_spacing_parse(wt_cfg_str(cfg, "timestep_spacing", "leading"), &s->spacing, err)) !=
        CM_OK)
        return cm_error_prefix(err, "scheduler config");
    if (cfg_bool(cfg, "rescale_betas_zero_snr", 0))
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "scheduler config: rescale_betas_zero_snr is not supported");
    if (cfg_bool(cfg, "thresholding", 0))
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "scheduler config: thresholding is not supported");
    s->steps_offset = wt_cfg_int(cfg, "steps_offset", 1);
    s->original_inference_steps = wt_cfg_int(cfg, "original_inference_steps", 50);
    s->timestep_scaling = (float)wt_cfg_num(cfg, "timestep_scaling", 10.0);
    s->shift = (float)wt_cfg_num(cfg, "shift", 3.0);
    s->dynamic_shifting = cfg_bool(cfg, "use_dynamic_shifting", 0);
    if (!(s->shift > 0.0f && s->shift < 1e6f))
        return cm_error_set(err, CM_ERR_FORMAT, "scheduler config: shift must be > 0, got %g",
                            (double)s->shift);
    if (!cJSON_GetObjectItemCaseSensitive(cfg, "original_inference_steps") &&
        s->original_inference_steps > n)
        s->original_inference_steps = n;
    if (s->steps_offset < 0 || s->steps_offset >= n || s->original_inference_steps < 1 ||
        s->original_inference_steps > n)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "scheduler config: steps_offset %d / original_inference_steps %d out "
                            "of range for %d training steps",
                            s->steps_offset, s->original_inference_steps, n);

    s->n = n;
    s->betas = cm_alloc((size_t)n * sizeof(float), "schedule betas", err);
    s->alphas_cumprod = cm_alloc((size_t)n * sizeof(float), "schedule alphas_cumprod", err);
    s->sigmas = cm_alloc((size_t)n * sizeof(float), "schedule sigmas", err);
    if (!s->betas || !s->alphas_cumprod || !s->sigmas) {
        st = CM_ERR_NOMEM;
        goto fail;
    }

    if (cJSON_IsArray(trained)) {
        if (cJSON_GetArraySize(trained) != n) {
            st = cm_error_set(err, CM_ERR_FORMAT,
                              "scheduler config: trained_betas has %d entries, expected %d",
                              cJSON_GetArraySize(trained), n);
            goto fail;
        }
        for (int i = 0; i < n; i++) {
            const cJSON *v = cJSON_GetArrayItem(trained, i);
            if (!cJSON_IsNumber(v)) {
                st = cm_error_set(err, CM_ERR_FORMAT,
                                  "scheduler config: trained_betas[%d] is not a number", i);
                goto fail;
            }
            s->betas[i] = (float)v->valuedouble;
        }
    } else if (!strcmp(bs, "scaled_linear")) {
        /* Python computes b**0.5 in float64 before torch rounds it. */
        torch_linspace_f32(pow(b0, 0.5), pow(b1, 0.5), n, s->betas);
        for (int i = 0; i < n; i++) s->betas[i] = s->betas[i] * s->betas[i];
    } else if (!strcmp(bs, "linear")) {
        torch_linspace_f32(b0, b1, n, s->betas);
    } else {
        st = cm_error_set(err, CM_ERR_UNSUPPORTED,
                          "scheduler config: beta_schedule '%s' is not supported (expected "
                          "scaled_linear or linear)",
                          bs);
        goto fail;
    }

    double acc = 1.0;
    for (int i = 0; i < n; i++) {
        float b = s->betas[i];
        if (!(b > 0.0f && b < 1.0f)) {
            st = cm_error_set(err, CM_ERR_FORMAT,
                              "scheduler config: beta[%d] = %g is outside (0, 1)", i, (double)b);
            goto fail;
        }
        acc *= (double)(1.0f - b);
        s->alphas_cumprod[i] = (float)acc;
        const float ac = s->alphas_cumprod[i];
        if (!(ac > 0.0f)) {
            st = cm_error_set(err, CM_ERR_FORMAT,
                              "scheduler config: alphas_cumprod[%d] underflows to 0", i);
            goto fail;
        }
        s->sigmas[i] = sqrtf((1.0f - ac) / ac);
    }
    s->final_alpha_cumprod = cfg_bool(cfg, "set_alpha_to_one", 0) ? 1.0f : s->alphas_cumprod[0];
    return CM_OK;

fail:
    df_schedule_release(s);
    return st;
}
