/* diffusion/sampler.c — samplers: DDIM (eta), Euler, Euler ancestral,
 * DPM++ 2M (optionally Karras sigmas), LCM; epsilon and v-prediction.
 *
 * Also classifier-free guidance (the pipelines' noise_pred mix).
 *
 * Mirrors diffusers 0.30.3: DDIMScheduler, EulerDiscreteScheduler,
 * EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler
 * (algorithm_type dpmsolver++, solver_order 2, solver_type midpoint,
 * lower_order_final, final_sigmas_type zero) and LCMScheduler, including
 * their dtypes: timestep lists and sigma interpolation are numpy float64
 * (then cast to float32 where diffusers casts), scalar coefficients are
 * 0-dim float32 torch tensors, and every tensor update is float32 with
 * one rounding per torch op (the build does not contract to FMA). The
 * comments give the reference expression each line mirrors.
 *
 * Latents are flat arrays of n float32 values (the whole batch).
 */
#include <math.h>
#include <string.h>

#include "diffusion.h"

struct df_sampler {
    df_sampler_kind kind;
    df_prediction pred;
    int steps;
    int64_t n;
    float eta;
    int n_train;
    const float *ac;          /* schedule alphas_cumprod (n_train) */
    float final_ac;           /* set_alpha_to_one ? 1 : ac[0] */
    float timestep_scaling;   /* LCM */
    float *timesteps;         /* (steps) what the UNet gets */
    int *tint;                /* (steps) integer timesteps (DDIM, DPM, LCM) */
    float *sigmas;            /* (steps + 1) */
    float init_noise_sigma;
    int last;                 /* last step run, -1 before the first */
    int lower_order_nums;     /* DPM++ */
    float *x0, *x0_prev;      /* DPM++ data predictions (n each) */
    float *noise;             /* (n) per-step draw */
};

/* ------------------------------------------------------------------------
 * Names
 * ---------------------------------------------------------------------- */

static const struct {
    const char *name, *a1111, *cls;
} kinds[] = {
    [DF_SAMPLER_DDIM] = {"ddim", "DDIM", "DDIMScheduler"},
    [DF_SAMPLER_EULER] = {"euler", "Euler", "EulerDiscreteScheduler"},
    [DF_SAMPLER_EULER_A] = {"euler_a", "Euler a", "EulerAncestralDiscreteScheduler"},
    [DF_SAMPLER_DPMPP_2M] = {"dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler"},
    [DF_SAMPLER_LCM] = {"lcm", "LCM", "LCMScheduler"},
    [DF_SAMPLER_FLOW_EULER] = {"flow_euler", "Euler", "FlowMatchEulerDiscreteScheduler"},
};
#define N_KINDS ((int)(sizeof kinds / sizeof kinds[0]))

const char *df_sampler_name(df_sampler_kind k)
{
    return (int)k >= 0 && (int)k < N_KINDS ? kinds[k].name : "?";
}

const char *df_sampler_a1111_name(df_sampler_kind k)
{
    return (int)k >= 0 && (int)k < N_KINDS ? kinds[k].a1111 : "?";
}

cm_status df_sampler_parse(const char *name, df_sampler_kind *k, cm_error *err)
{
    for (int i = 0; name && i < N_KINDS; i++)
        if (!strcmp(name, kinds[i].name) || !strcmp(name, kinds[i].cls)) {
            *k = (df_sampler_kind)i;
            return CM_OK;
        }
    return cm_error_set(err, CM_ERR_USAGE,
                        "sampler: expected ddim|euler|euler_a|dpmpp_2m|lcm|flow_euler, got '%s'",
                        name ? name : "(null)");
}

/* ------------------------------------------------------------------------
 * numpy emulation (float64)
 * ---------------------------------------------------------------------- */

/* np.linspace(0, stop, num)[k] (endpoint=True): k*step, last = stop. */
static double np_linspace0(double stop, int num, int k)
{
    if (num == 1) return 0.0;
    if (k == num - 1) return stop;
    return (double)k * (stop / (double)(num - 1));
}

/* np.arange(start, stop, step)[k] for a float step: numpy writes start,
 * start + step, then fills start + k * ((start + step) - start). */
static double np_arange(double start, double step, int k)
{
    if (k == 0) return start;
    double delta = (start + step) - start;
    return k == 1 ? start + step : start + (double)k * delta;
}

/* np.interp(x, arange(len), fp) with fp float32. */
static double np_interp(double x, const float *fp, int len)
{
    if (x <= 0) return fp[0];
    if (x >= len - 1) return fp[len - 1];
    int j = (int)floor(x);
    if (x == (double)j) return fp[j];
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - (double)j) + (double)fp[j];
}

/* diffusers _sigma_to_t: log-sigma interpolation over the training sigmas;
 * log_sigmas is np.log of a float32 array (float32). */
static double sigma_to_t(double sigma, const float *log_sigmas, int len)
{
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    int c = 0, best = -1, low = 0;
    for (int j = 0; j < len; j++) { /* cumsum(dists >= 0).argmax() */
        c += ls - (double)log_sigmas[j] >= 0;
        if (c > best) {
            best = c;
            low = j;
        }
    }
    if (low > len - 2) low = len - 2;
    float lo = log_sigmas[low], hi = log_sigmas[low + 1];
    double w = ((double)lo - ls) / (double)(lo - hi);
    if (w < 0) w = 0;
    if (w > 1) w = 1;
    return (1.0 - w) * (double)low + w * (double)(low + 1);
}

/* diffusers _convert_to_karras (rho 7), float64. */
static double karras_sigma(double smin, double smax, int steps, int k)
{
    const double rho = 7.0;
    double ramp = np_linspace0(1.0, steps, k);
    double min_inv = pow(smin, 1.0 / rho), max_inv = pow(smax, 1.0 / rho);
    return pow(max_inv + ramp * (min_inv - max_inv), rho);
}

/* ------------------------------------------------------------------------
 * Timestep lists
 * ---------------------------------------------------------------------- */

/* The integer or float timestep list of DDIM-style spacing over `count`
 * entries (DPM uses count = steps + 1 and drops the last). Returns the
 * k-th entry in sampling order (descending), as float64. */
static double spaced_timestep(df_spacing sp, int n_train, int offset, int count, int k,
                              int round_linspace)
{
    switch (sp) {
    case DF_SPACING_LEADING: { /* (arange(0, N) * (n // N)).round()[::-1] + offset */
        int ratio = n_train / count;
        return (double)((count - 1 - k) * ratio + offset);
    }
    case DF_SPACING_TRAILING: /* round(arange(n, 0, -n/N)) - 1 */
        return rint(np_arange((double)n_train, -((double)n_train / count), k)) - 1.0;
    case DF_SPACING_LINSPACE:
    default: {
        double v = np_linspace0((double)(n_train - 1), count, count - 1 - k);
        return round_linspace ? rint(v) : v;
    }
    }
}

static cm_status build_schedule(df_sampler *s, const df_schedule *sc, df_spacing sp, int karras,
                                cm_error *err)
{
    const int N = s->steps, nt = sc->n;
    switch (s->kind) {
    case DF_SAMPLER_DDIM:
        for (int k = 0; k < N; k++) {
            double t = spaced_timestep(sp, nt, sc->steps_offset, N, k, 1);
            s->tint[k] = (int)t;
        }
        break;
    case DF_SAMPLER_LCM: {
        /* origin = (arange(1, orig+1) * (n // orig) - 1)[::-1];
         * timesteps = origin[floor(linspace(0, orig, N, endpoint=False))] */
        int orig = sc->original_inference_steps, kk = nt / orig;
        if (N > orig)
            return cm_error_set(err, CM_ERR_USAGE,
                                "lcm: %d steps exceed original_inference_steps %d", N, orig);
        for (int k = 0; k < N; k++) {
            int idx = (int)floor((double)k * ((double)orig / (double)N));
            s->tint[k] = (orig - idx) * kk - 1;
        }
        break;
    }
    case DF_SAMPLER_EULER:
    case DF_SAMPLER_EULER_A: {
        for (int k = 0; k < N; k++) {
            double t;
            if (sp == DF_SPACING_LEADING) /* float32 after the arange */
                t = (double)(float)((N - 1 - k) * (nt / N)) + sc->steps_offset;
            else if (sp == DF_SPACING_TRAILING)
                t = spaced_timestep(sp, nt, 0, N, k, 1);
            else /* np.linspace(0, n-1, N, dtype=float32)[::-1] */
                t = (double)(float)np_linspace0((double)(nt - 1), N, N - 1 - k);
            s->timesteps[k] = (float)t;
            if (!(t >= 0 && t <= nt - 1))
                return cm_error_set(err, CM_ERR_USAGE,
                                    "%s: timestep %g outside [0, %d] (%d steps)",
                                    df_sampler_name(s->kind), t, nt - 1, N);
            s->sigmas[k] = (float)np_interp((double)s->timesteps[k], sc->sigmas, nt);
        }
        if (karras) { /* EulerDiscrete: Karras over the interpolated range */
            double smax = (double)np_interp((double)s->timesteps[0], sc->sigmas, nt);
            double smin = (double)np_interp((double)s->timesteps[N - 1], sc->sigmas, nt);
            float *logs = s->noise; /* scratch of >= nt floats, see create */
            for (int j = 0; j < nt; j++) logs[j] = logf(sc->sigmas[j]);
            for (int k = 0; k < N; k++) {
                double sg = karras_sigma(smin, smax, N, k);
                s->sigmas[k] = (float)sg;
                s->timesteps[k] = (float)sigma_to_t(sg, logs, nt);
            }
        }
        s->sigmas[N] = 0.0f;
        /* init_noise_sigma: max(sigmas), sqrt(max^2 + 1) for leading */
        float mx = 0.0f;
        for (int k = 0; k <= N; k++)
            if (s->sigmas[k] > mx) mx = s->sigmas[k];
        s->init_noise_sigma = sp == DF_SPACING_LEADING ? sqrtf(mx * mx + 1.0f) : mx;
        return CM_OK;
    }
    case DF_SAMPLER_FLOW_EULER: {
        /* FlowMatchEulerDiscreteScheduler, static shift. __init__ (torch
         * float32): t = linspace(1, n, n)[::-1], s = t / n, shifted;
         * sigma_max = s[0], sigma_min = s[-1] (shifted). set_timesteps
         * (numpy float64): t = linspace(sigma_max*n, sigma_min*n, N),
         * s = t / n, shifted again, then float32; timesteps = s * n. */
        const float sh = sc->shift;
        const float smin_t = 1.0f / (float)nt;
        const float smin = sh * smin_t / (1.0f + (sh - 1.0f) * smin_t);
        const float smax = sh * 1.0f / (1.0f + (sh - 1.0f) * 1.0f);
        const double t0 = (double)smax * nt, t1 = (double)smin * nt;
        for (int k = 0; k < N; k++) {
            double t = N == 1 ? t0 : t0 + (double)k * ((t1 - t0) / (double)(N - 1));
            if (N > 1 && k == N - 1) t = t1; /* numpy sets the endpoint exactly */
            double sg = t / (double)nt;
            sg = (double)sh * sg / (1.0 + ((double)sh - 1.0) * sg);
            s->sigmas[k] = (float)sg;
            s->timesteps[k] = s->sigmas[k] * (float)nt;
            s->tint[k] = (int)s->timesteps[k];
        }
        s->sigmas[N] = 0.0f;
        s->init_noise_sigma = 1.0f;
        return CM_OK;
    }
    case DF_SAMPLER_DPMPP_2M:
        if (karras) {
            float *logs = s->noise;
            for (int j = 0; j < nt; j++) logs[j] = logf(sc->sigmas[j]);
            double smin = sc->sigmas[0], smax = sc->sigmas[nt - 1];
            for (int k = 0; k < N; k++) {
                double sg = karras_sigma(smin, smax, N, k);
                s->sigmas[k] = (float)sg;
                s->tint[k] = (int)rint(sigma_to_t(sg, logs, nt));
            }
        } else {
            for (int k = 0; k < N; k++) {
                double t;
                if (sp == DF_SPACING_TRAILING)
                    t = spaced_timestep(sp, nt, 0, N, k, 1);
                else /* leading / linspace over N + 1 points, the 0 dropped */
                    t = spaced_timestep(sp, nt, sp == DF_SPACING_LEADING ? sc->steps_offset : 0,
                                        N + 1, k, 1);
                s->tint[k] = (int)t;
            }
        }
        break;
    }
    for (int k = 0; k < N; k++) {
        if (s->tint[k] < 0 || s->tint[k] > nt - 1)
            return cm_error_set(err, CM_ERR_USAGE, "%s: timestep %d outside [0, %d] (%d steps)",
                                df_sampler_name(s->kind), s->tint[k], nt - 1, N);
        s->timesteps[k] = (float)s->tint[k];
        if (!(s->kind == DF_SAMPLER_DPMPP_2M && karras)) s->sigmas[k] = sc->sigmas[s->tint[k]];
    }
    s->sigmas[N] = 0.0f;
    s->init_noise_sigma = 1.0f;
    return CM_OK;
}

/* ------------------------------------------------------------------------
 * Create / free / queries
 * ---------------------------------------------------------------------- */

static float ddim_std(const df_sampler *s, int i, float *dir2);

df_sampler *df_sampler_create(df_sampler_kind kind, const df_schedule *sched, int steps,
                              const df_sampler_opts *opts, int64_t n, cm_error *err)
{
    df_sampler_opts def = {DF_SPACING_DEFAULT, 0, 0.0f};
    if (!opts) opts = &def;
    if ((int)kind < 0 || (int)kind >= N_KINDS) {
        cm_error_set(err, CM_ERR_USAGE, "sampler: unknown kind %d", (int)kind);
        return NULL;
    }
    if (!sched || sched->n < 2 || !sched->alphas_cumprod) {
        cm_error_set(err, CM_ERR_USAGE, "%s: no noise schedule", kinds[kind].name);
        return NULL;
    }
    if (steps < 1 || steps > sched->n) {
        cm_error_set(err, CM_ERR_USAGE, "%s: steps must be in [1, %d], got %d", kinds[kind].name,
                     sched->n, steps);
        return NULL;
    }
    if (n < 1) {
        cm_error_set(err, CM_ERR_USAGE, "%s: empty latent (%lld values)", kinds[kind].name,
                     (long long)n);
        return NULL;
    }
    if (opts->karras && kind != DF_SAMPLER_DPMPP_2M && kind != DF_SAMPLER_EULER) {
        cm_error_set(err, CM_ERR_UNSUPPORTED,
                     "%s: Karras sigmas are available for dpmpp_2m and euler only",
                     kinds[kind].name);
        return NULL;
    }
    if (!(opts->eta >= 0.0f && opts->eta <= 1000.0f)) {
        cm_error_set(err, CM_ERR_USAGE, "ddim: eta must be >= 0, got %g", (double)opts->eta);
        return NULL;
    }
    if (opts->eta != 0.0f && kind != DF_SAMPLER_DDIM) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: eta is a DDIM option", kinds[kind].name);
        return NULL;
    }

    if (kind == DF_SAMPLER_FLOW_EULER && sched->dynamic_shifting) {
        cm_error_set(err, CM_ERR_UNSUPPORTED,
                     "flow_euler: use_dynamic_shifting (resolution-dependent shift) is not supported");
        return NULL;
    }

    df_sampler *s = cm_calloc(sizeof *s, "sampler", err);
    if (!s) return NULL;
    s->kind = kind;
    s->pred = sched->prediction;
    s->steps = steps;
    s->n = n;
    s->eta = opts->eta;
    s->n_train = sched->n;
    s->ac = sched->alphas_cumprod;
    s->final_ac = sched->final_alpha_cumprod;
    s->timestep_scaling = sched->timestep_scaling;
    s->last = -1;
    /* noise doubles as scratch for the log-sigma table while building */
    int64_t noise_n = n > sched->n ? n : sched->n;
    s->timesteps = cm_alloc((size_t)steps * sizeof(float), "sampler timesteps", err);
    s->tint = cm_alloc((size_t)steps * sizeof(int), "sampler timesteps", err);
    s->sigmas = cm_alloc((size_t)(steps + 1) * sizeof(float), "sampler sigmas", err);
    s->noise = cm_alloc((size_t)noise_n * sizeof(float), "sampler noise", err);
    if (!s->timesteps || !s->tint || !s->sigmas || !s->noise) goto fail;
    if (kind == DF_SAMPLER_DPMPP_2M) {
        s->x0 = cm_alloc((size_t)n * sizeof(float), "dpm++ x0", err);
        s->x0_prev = cm_alloc((size_t)n * sizeof(float), "dpm++ x0", err);
        if (!s->x0 || !s->x0_prev) goto fail;
    }
    df_spacing sp = opts->spacing == DF_SPACING_DEFAULT ? sched->spacing : opts->spacing;
    if (build_schedule(s, sched, sp, opts->karras, err) != CM_OK) goto fail;
    /* eta > 1 can make 1 - a_prev - std^2 negative: the reference's sqrt
     * then gives NaN latents (a black image after the whole run) */
    for (int i = 0; kind == DF_SAMPLER_DDIM && s->eta > 0.0f && i < steps; i++) {
        float dir2;
        ddim_std(s, i, &dir2);
        if (!(dir2 >= 0.0f)) {
            cm_error_set(err, CM_ERR_USAGE,
                         "ddim: eta %g is too large for %d steps (negative direction variance at step %d, "
                         "NaN in the reference): use eta <= 1",
                         (double)s->eta, steps, i);
            goto fail;
        }
    }
    return s;

fail:
    df_sampler_free(s);
    return NULL;
}

void df_sampler_free(df_sampler *s)
{
    if (!s) return;
    cm_free(s->timesteps);
    cm_free(s->tint);
    cm_free(s->sigmas);
    cm_free(s->noise);
    cm_free(s->x0);
    cm_free(s->x0_prev);
    cm_free(s);
}

df_sampler_kind df_sampler_kind_of(const df_sampler *s) { return s->kind; }
int df_sampler_steps(const df_sampler *s) { return s->steps; }

float df_sampler_timestep(const df_sampler *s, int i)
{
    CM_ASSERT(i >= 0 && i < s->steps);
    return s->timesteps[i];
}

float df_sampler_sigma(const df_sampler *s, int i)
{
    CM_ASSERT(i >= 0 && i <= s->steps);
    return s->sigmas[i];
}

float df_sampler_init_noise_sigma(const df_sampler *s) { return s->init_noise_sigma; }

static int is_euler(const df_sampler *s)
{
    return s->kind == DF_SAMPLER_EULER || s->kind == DF_SAMPLER_EULER_A;
}

void df_sampler_model_input(const df_sampler *s, int i, const float *x, float *x_in)
{
    CM_ASSERT(i >= 0 && i < s->steps);
    if (is_euler(s)) { /* sample / ((sigma**2 + 1) ** 0.5) */
        const float sg = s->sigmas[i];
        const float d = sqrtf(sg * sg + 1.0f);
        for (int64_t e = 0; e < s->n; e++) x_in[e] = x[e] / d;
    } else if (x_in != x) {
        memcpy(x_in, x, (size_t)s->n * sizeof(float));
    }
}

int df_sampler_start_index(int steps, double strength)
{
    if (steps < 1) return 0;
    if (!(strength > 0)) return steps;
    double v = (double)steps * strength;
    int init = v >= (double)steps ? steps : (int)v; /* min(int(steps*strength), steps) */
    int start = steps - init;
    return start < 0 ? 0 : start;
}

/* ------------------------------------------------------------------------
 * Steps
 * ---------------------------------------------------------------------- */

/* ac at the DDIM "previous" timestep (prev_t < 0: final_alpha_cumprod). */
static float ac_or_final(const df_sampler *s, int t)
{
    return t >= 0 ? s->ac[t] : s->final_ac;
}

static cm_status draw(df_sampler *s, df_noise_fn fn, void *ctx, int needed, int i, cm_error *err)
{
    if (fn) {
        fn(ctx, s->noise, s->n);
        return CM_OK;
    }
    if (!needed) return CM_OK;
    return cm_error_set(err, CM_ERR_USAGE, "%s step %d: needs per-step noise but got none",
                        df_sampler_name(s->kind), i);
}

/* DDIM step i's noise std (eta * sqrt(variance)) and the squared
 * coefficient of the direction term, 1 - a_prev - std^2. */
static float ddim_std(const df_sampler *s, int i, float *dir2)
{
    const int t = s->tint[i];
    const float a_t = s->ac[t], a_prev = ac_or_final(s, t - s->n_train / s->steps);
    /* _get_variance: (beta_prev / beta_t) * (1 - a_t / a_prev) */
    const float var = ((1.0f - a_prev) / (1.0f - a_t)) * (1.0f - a_t / a_prev);
    const float std = s->eta * sqrtf(var);
    *dir2 = 1.0f - a_prev - std * std;
    return std;
}

static cm_status step_ddim(df_sampler *s, int i, const float *mo, float *x, df_noise_fn fn,
                           void *ctx, cm_error *err)
{
    const int t = s->tint[i];
    const int prev_t = t - s->n_train / s->steps;
    const float a_t = s->ac[t], a_prev = ac_or_final(s, prev_t);
    const float beta_t = 1.0f - a_t;
    const float sa = sqrtf(a_t), sb = sqrtf(beta_t), sa_prev = sqrtf(a_prev);
    float dir2;
    const float std = ddim_std(s, i, &dir2);
    const float dir_c = sqrtf(dir2);
    if (s->eta > 0.0f) {
        /* drawn after the update in the reference; the order of draws is
         * what matters, and there is one draw per step either way */
        cm_status st = draw(s, fn, ctx, 1, i, err);
        if (st != CM_OK) return st;
    }
    for (int64_t e = 0; e < s->n; e++) {
        float x0, eps;
        if (s->pred == DF_PRED_EPS) {
            x0 = (x[e] - sb * mo[e]) / sa;
            eps = mo[e];
        } else {
            x0 = sa * x[e] - sb * mo[e];
            eps = sa * mo[e] + sb * x[e];
        }
        float prev = sa_prev * x0 + dir_c * eps;
        if (s->eta > 0.0f) prev = prev + std * s->noise[e];
        x[e] = prev;
    }
    return CM_OK;
}

static cm_status step_euler(df_sampler *s, int i, const float *mo, float *x, df_noise_fn fn,
                            void *ctx, cm_error *err)
{
    const float sigma = s->sigmas[i], sigma_next = s->sigmas[i + 1];
    const int ancestral = s->kind == DF_SAMPLER_EULER_A;
    /* v-prediction: x0 = v * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1) */
    const float s2p1 = sigma * sigma + 1.0f;
    const float c_out = -sigma / sqrtf(s2p1);
    float dt, sigma_up = 0.0f;
    if (ancestral) {
        const float sf2 = sigma * sigma, st2 = sigma_next * sigma_next;
        sigma_up = sqrtf(st2 * (sf2 - st2) / sf2);
        const float sigma_down = sqrtf(st2 - sigma_up * sigma_up);
        dt = sigma_down - sigma;
    } else {
        /* s_churn 0: gamma 0, sigma_hat = sigma * (gamma + 1) = sigma; the
         * reference still draws a noise tensor (unused) */
        cm_status st = draw(s, fn, ctx, 0, i, err);
        if (st != CM_OK) return st;
        dt = sigma_next - sigma;
    }
    for (int64_t e = 0; e < s->n; e++) {
        float x0 = s->pred == DF_PRED_EPS ? x[e] - sigma * mo[e] : mo[e] * c_out + x[e] / s2p1;
        float d = (x[e] - x0) / sigma;
        x[e] = x[e] + d * dt;
    }
    if (ancestral) {
        cm_status st = draw(s, fn, ctx, 1, i, err);
        if (st != CM_OK) return st;
        for (int64_t e = 0; e < s->n; e++) x[e] = x[e] + s->noise[e] * sigma_up;
    }
    return CM_OK;
}

/* _sigma_to_alpha_sigma_t: alpha = 1 / (sigma**2 + 1) ** 0.5, sigma_t = sigma * alpha */
static void vp_alpha_sigma(float sigma, float *alpha, float *sig)
{
    *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sig = sigma * *alpha;
}

static cm_status step_dpmpp_2m(df_sampler *s, int i, const float *mo, float *x)
{
    float alpha_s0, sig_s0, alpha_t, sig_t;
    vp_alpha_sigma(s->sigmas[i], &alpha_s0, &sig_s0);
    vp_alpha_sigma(s->sigmas[i + 1], &alpha_t, &sig_t);
    /* convert_model_output (dpmsolver++): the data prediction */
    float *x0 = s->x0;
    for (int64_t e = 0; e < s->n; e++)
        x0[e] = s->pred == DF_PRED_EPS ? (x[e] - sig_s0 * mo[e]) / alpha_s0
                                       : alpha_s0 * x[e] - sig_s0 * mo[e];
    /* lambda = log(alpha) - log(sigma); sigma_t = 0 gives h = inf, exp(-h) = 0 */
    const float lambda_t = logf(alpha_t) - logf(sig_t);
    const float lambda_s0 = logf(alpha_s0) - logf(sig_s0);
    const float h = lambda_t - lambda_s0;
    const float ratio = sig_t / sig_s0;
    const float b = alpha_t * (expf(-h) - 1.0f);
    const int last = i == s->steps - 1; /* lower_order_final (final sigma 0) */
    if (s->lower_order_nums < 1 || last) {
        /* x_t = (sigma_t / sigma_s) * sample - (alpha_t * (exp(-h) - 1)) * x0 */
        for (int64_t e = 0; e < s->n; e++) x[e] = ratio * x[e] - b * x0[e];
    } else {
        float alpha_s1, sig_s1;
        vp_alpha_sigma(s->sigmas[i - 1], &alpha_s1, &sig_s1);
        const float lambda_s1 = logf(alpha_s1) - logf(sig_s1);
        const float h0 = lambda_s0 - lambda_s1;
        const float r0 = h0 / h;
        const float inv_r0 = 1.0f / r0; /* (1.0 / r0): reciprocal(r0) * 1.0 */
        const float half_b = 0.5f * b;
        const float *x0p = s->x0_prev;
        for (int64_t e = 0; e < s->n; e++) {
            float d1 = inv_r0 * (x0[e] - x0p[e]);
            x[e] = ratio * x[e] - b * x0[e] - half_b * d1;
        }
    }
    if (s->lower_order_nums < 2) s->lower_order_nums++;
    s->x0 = s->x0_prev; /* model_outputs shift */
    s->x0_prev = x0;
    return CM_OK;
}

/* FlowMatchEulerDiscreteScheduler.step: prev = sample + (sigma_next -
 * sigma) * model_output, the scalar difference in float32 first. */
static void step_flow_euler(df_sampler *s, int i, const float *mo, float *x)
{
    const float dt = s->sigmas[i + 1] - s->sigmas[i];
    for (int64_t e = 0; e < s->n; e++) x[e] = x[e] + dt * mo[e];
}

static cm_status step_lcm(df_sampler *s, int i, const float *mo, float *x, df_noise_fn fn,
                          void *ctx, cm_error *err)
{
    const int t = s->tint[i];
    const int last = i == s->steps - 1;
    const int prev_t = last ? t : s->tint[i + 1];
    const float a_t = s->ac[t], a_prev = ac_or_final(s, prev_t);
    const float beta_t = 1.0f - a_t, beta_prev = 1.0f - a_prev;
    /* get_scalings_for_boundary_condition_discrete (sigma_data 0.5):
     * c_skip = 0.25 / (st**2 + 0.25) evaluates as reciprocal(.) * 0.25 */
    const float st = (float)t * s->timestep_scaling;
    const float den = st * st + 0.25f;
    const float c_skip = (1.0f / den) * 0.25f;
    const float c_out = st / sqrtf(den);
    const float sa = sqrtf(a_t), sb = sqrtf(beta_t);
    const float sa_prev = sqrtf(a_prev), sb_prev = sqrtf(beta_prev);
    if (!last) {
        cm_status stt = draw(s, fn, ctx, 1, i, err);
        if (stt != CM_OK) return stt;
    }
    for (int64_t e = 0; e < s->n; e++) {
        float x0 = s->pred == DF_PRED_EPS ? (x[e] - sb * mo[e]) / sa : sa * x[e] - sb * mo[e];
        float den_e = c_out * x0 + c_skip * x[e];
        x[e] = last ? den_e : sa_prev * den_e + sb_prev * s->noise[e];
    }
    return CM_OK;
}

cm_status df_sampler_step(df_sampler *s, int i, const float *model_out, float *x,
                          df_noise_fn noise_fn, void *noise_ctx, cm_error *err)
{
    if (i < 0 || i >= s->steps || (s->last >= 0 && i != s->last + 1))
        return cm_error_set(err, CM_ERR_USAGE, "%s: step %d out of order (expected %d of %d)",
                            df_sampler_name(s->kind), i, s->last + 1, s->steps);
    cm_status st = CM_OK;
    switch (s->kind) {
    case DF_SAMPLER_DDIM: st = step_ddim(s, i, model_out, x, noise_fn, noise_ctx, err); break;
    case DF_SAMPLER_EULER:
    case DF_SAMPLER_EULER_A: st = step_euler(s, i, model_out, x, noise_fn, noise_ctx, err); break;
    case DF_SAMPLER_DPMPP_2M: st = step_dpmpp_2m(s, i, model_out, x); break;
    case DF_SAMPLER_LCM: st = step_lcm(s, i, model_out, x, noise_fn, noise_ctx, err); break;
    case DF_SAMPLER_FLOW_EULER: step_flow_euler(s, i, model_out, x); break;
    }
    if (st == CM_OK) s->last = i;
    return st;
}

/* ------------------------------------------------------------------------
 * Guidance
 * ---------------------------------------------------------------------- */

int df_cfg_enabled(float scale) { return scale > 1.0f; }

void df_cfg_combine(const float *uncond, const float *cond, int64_t n, float scale,
                    float *guided)
{
    /* noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond) */
    for (int64_t e = 0; e < n; e++) guided[e] = uncond[e] + scale * (cond[e] - uncond[e]);
}

/* ------------------------------------------------------------------------
 * img2img and inpainting
 * ---------------------------------------------------------------------- */

/* add_noise as two coefficients: out = a * x0 + b * noise (DDPM form) or
 * out = x0 + noise * b (Euler form, a = 0 marks it). */
static void noise_coeffs(const df_sampler *s, int i, float *a, float *b)
{
    switch (s->kind) {
    case DF_SAMPLER_EULER:
    case DF_SAMPLER_EULER_A: *a = 0.0f; *b = s->sigmas[i]; return;
    case DF_SAMPLER_DPMPP_2M: vp_alpha_sigma(s->sigmas[i], a, b); return;
    case DF_SAMPLER_FLOW_EULER: /* scale_noise: sigma * noise + (1.0 - sigma) * sample */
        *a = 1.0f - s->sigmas[i];
        *b = s->sigmas[i];
        return;
    default: {
        const float ac = s->ac[s->tint[i]];
        *a = sqrtf(ac);         /* alphas_cumprod[t] ** 0.5 */
        *b = sqrtf(1.0f - ac);  /* (1 - alphas_cumprod[t]) ** 0.5 */
        return;
    }
    }
}

void df_sampler_add_noise(const df_sampler *s, int i, const float *x0, const float *noise,
                          float *out)
{
    CM_ASSERT(i >= 0 && i <= s->steps);
    if (i == s->steps) {
        if (out != x0) memmove(out, x0, (size_t)s->n * sizeof(float));
        return;
    }
    float a, b;
    noise_coeffs(s, i, &a, &b);
    if (is_euler(s))
        for (int64_t e = 0; e < s->n; e++) out[e] = x0[e] + noise[e] * b;
    else
        for (int64_t e = 0; e < s->n; e++) out[e] = a * x0[e] + b * noise[e];
}

void df_sampler_inpaint_blend(const df_sampler *s, int i, const float *image_latents,
                              const float *noise, const float *mask, int64_t planes, int64_t hw,
                              float *x)
{
    CM_ASSERT(i >= 0 && i < s->steps);
    const int j = i + 1; /* the noise level of the next step */
    float a = 0.0f, b = 0.0f;
    if (j < s->steps) noise_coeffs(s, j, &a, &b);
    for (int64_t p = 0; p < planes; p++) {
        const float *il = image_latents + p * hw, *nz = noise + p * hw;
        float *xp = x + p * hw;
        for (int64_t e = 0; e < hw; e++) {
            float proper;
            if (j == s->steps) proper = il[e];
            else if (is_euler(s)) proper = il[e] + nz[e] * b;
            else proper = a * il[e] + b * nz[e];
            xp[e] = (1.0f - mask[e]) * proper + mask[e] * xp[e];
        }
    }
}
