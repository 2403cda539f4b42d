/* diffusion_sampler.c — test case diffusion_sampler: noise schedules and
 * samplers replayed against the diffusers pipeline goldens WITHOUT a UNet.
 *
 * Each golden run (tests/data/golden/<model>/<run>.safetensors) stores the
 * initial noise, every step's model outputs and random draws, and the
 * latents after every step. The replay starts from the stored noise, feeds
 * the recorded (guided) model output and the recorded draws through the
 * df_sampler API exactly as the pipeline will, and checks the scaled model
 * input, the UNet timestep and the latents of every step and the final
 * latents (1e-5 of max|golden|). The schedule itself (alphas_cumprod) is
 * checked bit for bit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion.h"
#include "testutil.h"

#define TOL 1e-5

/* ------------------------------------------------------------------------
 * Golden access
 * ---------------------------------------------------------------------- */

/* Tensor `name` of f into a fresh float buffer; NULL when absent. */
static float *get(const wt_file *f, const char *name, int64_t *n)
{
    const cm_wview *v = wt_file_find(f, name);
    if (!v) return NULL;
    int64_t k = cm_wview_numel(v);
    float *p = malloc((size_t)(k ? k : 1) * sizeof(float));
    ck_assert(p != NULL);
    cm_wview_to_f32(v, 0, k, p);
    if (n) *n = k;
    return p;
}

static float *need(const wt_file *f, const char *name, int64_t n)
{
    int64_t k = 0;
    float *p = get(f, name, &k);
    ck_assert_msg(p != NULL, "golden %s has no tensor %s", wt_file_path(f), name);
    ck_assert_msg(k == n, "golden %s: %s has %lld values, expected %lld", wt_file_path(f), name,
                  (long long)k, (long long)n);
    return p;
}

/* The golden's recipe. Python's json writes -Infinity / NaN (e.g. DPM's
 * lambda_min_clipped), which is not JSON: those become null here. */
static cJSON *golden_meta(const wt_file *f)
{
    const char *m = wt_file_metadata(f, "golden");
    ck_assert_msg(m != NULL, "golden %s has no metadata", wt_file_path(f));
    size_t len = strlen(m);
    char *t = malloc(len + 1);
    ck_assert(t != NULL);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (!strncmp(m + i, "-Infinity", 9)) { memcpy(t + o, "null", 4); o += 4; i += 9; }
        else if (!strncmp(m + i, "Infinity", 8)) { memcpy(t + o, "null", 4); o += 4; i += 8; }
        else if (!strncmp(m + i, "NaN", 3)) { memcpy(t + o, "null", 4); o += 4; i += 3; }
        else t[o++] = m[i++];
    }
    t[o] = 0;
    cJSON *j = cJSON_Parse(t);
    free(t);
    ck_assert_msg(j != NULL, "golden %s: metadata is not JSON", wt_file_path(f));
    return j;
}

typedef struct {
    const wt_file *f;
    int k;     /* golden step index of the current step */
    int draws; /* draws taken in the current step */
    int total;
} noise_ctx;

/* The per-step draw is the recorded one: step{k}.noise (used) or
 * step{k}.noise_unused (Euler's unused draw). */
static void golden_noise(void *vctx, float *out, int64_t n)
{
    noise_ctx *c = vctx;
    char name[64];
    snprintf(name, sizeof name, "step%d.noise", c->k);
    const cm_wview *v = wt_file_find(c->f, name);
    if (!v) {
        snprintf(name, sizeof name, "step%d.noise_unused", c->k);
        v = wt_file_find(c->f, name);
    }
    ck_assert_msg(v != NULL, "step %d draws noise but the golden recorded none", c->k);
    ck_assert_int_eq(cm_wview_numel(v), n);
    cm_wview_to_f32(v, 0, n, out);
    c->draws++;
    c->total++;
}

/* ------------------------------------------------------------------------
 * Replay of one pipeline golden
 * ---------------------------------------------------------------------- */

static void replay(const char *rel)
{
    cm_error err = {0};
    fprintf(stderr, "--- replay %s\n", rel);
    wt_file *f = wt_file_open(tu_data(rel), &err);
    ck_assert_msg(f != NULL, "cannot open golden: %s", err.msg);
    cJSON *meta = golden_meta(f);
    const cJSON *sch = cJSON_GetObjectItem(meta, "scheduler");
    const cJSON *cfg = cJSON_GetObjectItem(sch, "config");
    const char *cls = wt_cfg_str(sch, "class", "?");
    const char *mode = wt_cfg_str(meta, "mode", "txt2img");
    const int steps = wt_cfg_int(meta, "steps", 0);
    const float g = (float)wt_cfg_num(meta, "guidance_scale", 1.0);
    const double strength = wt_cfg_num(meta, "strength", 1.0);
    int inpaint = !strcmp(mode, "inpaint");

    /* The schedule: bit for bit with torch's. */
    df_schedule sc;
    ck_assert_msg(df_schedule_init(&sc, cfg, &err) == CM_OK, "%s", err.msg);
    int64_t nac = 0;
    float *ac = get(f, "alphas_cumprod", &nac);
    if (ac) {
        ck_assert_int_eq(nac, sc.n);
        int bad = 0;
        for (int i = 0; i < sc.n; i++) bad += ac[i] != sc.alphas_cumprod[i];
        ck_assert_msg(bad == 0, "%s: %d of %d alphas_cumprod differ from torch's", rel, bad, sc.n);
        free(ac);
    }

    df_sampler_kind kind;
    ck_assert_msg(df_sampler_parse(cls, &kind, &err) == CM_OK, "%s", err.msg);
    df_sampler_opts opts = {DF_SPACING_DEFAULT, 0, 0.0f};
    opts.eta = kind == DF_SAMPLER_DDIM ? (float)wt_cfg_num(meta, "eta", 0.0) : 0.0f;
    opts.karras = cJSON_IsTrue(cJSON_GetObjectItem(cfg, "use_karras_sigmas"));

    const cm_wview *shape_src = wt_file_find(f, "step0.latents");
    ck_assert(shape_src != NULL);
    const int64_t n = cm_wview_numel(shape_src);
    /* a 9-channel inpainting UNet gets [latents, mask, masked-image latents]
     * and the latents are not blended */
    const cm_wview *in0 = wt_file_find(f, "step0.unet_in");
    ck_assert(in0 != NULL);
    const int nine = cm_wview_numel(in0) == n / 4 * 9;
    float *masked_image_latents = nine ? need(f, "masked_image_latents", n) : NULL;
    df_sampler *s = df_sampler_create(kind, &sc, steps, &opts, n, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);

    const int start = strcmp(mode, "txt2img") ? df_sampler_start_index(steps, strength) : 0;
    const int run = steps - start;

    /* Timesteps (the golden list is the part that runs). */
    int64_t nt = 0;
    float *ts = get(f, "timesteps", &nt);
    ck_assert(ts != NULL);
    ck_assert_int_eq(nt, run);
    for (int k = 0; k < run; k++)
        ck_assert_msg(df_sampler_timestep(s, start + k) == ts[k], "%s: timestep %d: %g vs %g",
                      rel, k, (double)df_sampler_timestep(s, start + k), (double)ts[k]);
    free(ts);
    int64_t nsg = 0;
    float *sg = get(f, "sigmas", &nsg);
    if (sg) {
        ck_assert_int_eq(nsg, steps + 1);
        for (int k = 0; k <= steps; k++) {
            float d = fabsf(df_sampler_sigma(s, k) - sg[k]);
            ck_assert_msg(d <= 1e-6f * sg[0], "%s: sigma %d: %.9g vs %.9g", rel, k,
                          (double)df_sampler_sigma(s, k), (double)sg[k]);
        }
        free(sg);
    }
    const cJSON *ins = cJSON_GetObjectItem(meta, "init_noise_sigma");
    if (cJSON_IsNumber(ins))
        ck_assert_msg(fabs(df_sampler_init_noise_sigma(s) - ins->valuedouble) <=
                          1e-6 * ins->valuedouble,
                      "%s: init_noise_sigma %.9g vs %.9g", rel,
                      (double)df_sampler_init_noise_sigma(s), ins->valuedouble);

    /* The starting latents. */
    float *x = malloc((size_t)n * sizeof(float)), *x_in = malloc((size_t)n * sizeof(float));
    float *guided = malloc((size_t)n * sizeof(float));
    ck_assert(x && x_in && guided);
    float *image_latents = NULL, *noise = NULL, *mask = NULL;
    int64_t hw = 0;
    if (!strcmp(mode, "txt2img")) {
        float *init = need(f, "initial_noise", n);
        const float ns = df_sampler_init_noise_sigma(s);
        for (int64_t e = 0; e < n; e++) x[e] = init[e] * ns;
        free(init);
    } else if (!wt_file_find(f, "image_latents")) { /* inpaint, strength 1 */
        noise = need(f, "noise", n);
        const float ns = df_sampler_init_noise_sigma(s);
        for (int64_t e = 0; e < n; e++) x[e] = noise[e] * ns;
    } else {
        image_latents = need(f, "image_latents", n);
        noise = need(f, "noise", n);
        float *lt = need(f, "latent_timestep", 1);
        ck_assert_msg(lt[0] == df_sampler_timestep(s, start), "%s: latent_timestep %g vs %g", rel,
                      (double)lt[0], (double)df_sampler_timestep(s, start));
        free(lt);
        df_sampler_add_noise(s, start, image_latents, noise, x);
        float *want = get(f, "noised_latents", NULL);
        if (!want) want = need(f, "latents_0", n);
        TU_ASSERT_CLOSE("noised start latents", x, want, n, TOL);
        free(want);
    }
    if (inpaint) {
        mask = get(f, "mask_latent", &hw);
        ck_assert(mask != NULL && hw > 0 && n == 4 * hw);
    }
    float *x9 = nine ? malloc((size_t)(n / 4 * 9) * sizeof(float)) : NULL;
    float *l0 = get(f, "latents_0", NULL);
    if (l0) {
        TU_ASSERT_CLOSE("latents_0", x, l0, n, TOL);
        free(l0);
    }

    /* The loop, driven as the pipeline drives it. */
    noise_ctx nc = {f, 0, 0, 0};
    char name[64];
    for (int k = 0; k < run; k++) {
        const int i = start + k;
        nc.k = k;
        nc.draws = 0;
        df_sampler_model_input(s, i, x, x_in);
        snprintf(name, sizeof name, "step%d.unet_in", k);
        if (nine) { /* batch 1: channels [0,4) latents, 4 mask, [5,9) masked image */
            memcpy(x9, x_in, (size_t)n * sizeof(float));
            memcpy(x9 + n, mask, (size_t)hw * sizeof(float));
            memcpy(x9 + n + hw, masked_image_latents, (size_t)n * sizeof(float));
        }
        float *want = need(f, name, nine ? n / 4 * 9 : n);
        TU_ASSERT_CLOSE(name, nine ? x9 : x_in, want, nine ? n / 4 * 9 : n, TOL);
        free(want);
        snprintf(name, sizeof name, "step%d.unet_timestep", k);
        float *ut = get(f, name, NULL);
        if (ut) {
            ck_assert_msg(ut[0] == df_sampler_timestep(s, i), "%s: %s %g vs %g", rel, name,
                          (double)ut[0], (double)df_sampler_timestep(s, i));
            free(ut);
        }
        /* the model output: the pipeline's guidance over the recorded
         * UNet rows, checked bit for bit against step{k}.guided */
        if (df_cfg_enabled(g)) {
            snprintf(name, sizeof name, "step%d.out_uncond", k);
            float *u = need(f, name, n);
            snprintf(name, sizeof name, "step%d.out_cond", k);
            float *c = need(f, name, n);
            df_cfg_combine(u, c, n, g, guided);
            free(u);
            free(c);
        } else {
            snprintf(name, sizeof name, "step%d.out", k);
            float *o = need(f, name, n);
            memcpy(guided, o, (size_t)n * sizeof(float));
            free(o);
        }
        snprintf(name, sizeof name, "step%d.guided", k);
        float *gd = get(f, name, NULL);
        if (gd) {
            ck_assert_msg(!memcmp(gd, guided, (size_t)n * sizeof(float)),
                          "%s: %s differs from the guidance mix", rel, name);
            free(gd);
        }
        ck_assert_msg(df_sampler_step(s, i, guided, x, golden_noise, &nc, &err) == CM_OK, "%s",
                      err.msg);
        /* every recorded draw of this step was taken, and only once */
        snprintf(name, sizeof name, "step%d.noise", k);
        int recorded = wt_file_find(f, name) != NULL;
        snprintf(name, sizeof name, "step%d.noise_unused", k);
        recorded += wt_file_find(f, name) != NULL;
        ck_assert_msg(nc.draws == recorded, "%s step %d: %d draws, the reference made %d", rel, k,
                      nc.draws, recorded);
        if (inpaint && !nine) df_sampler_inpaint_blend(s, i, image_latents, noise, mask, n / hw, hw, x);
        snprintf(name, sizeof name, "step%d.latents", k);
        want = need(f, name, n);
        TU_ASSERT_CLOSE(name, x, want, n, TOL);
        free(want);
    }
    float *fin = need(f, "final_latents", n);
    TU_ASSERT_CLOSE("final_latents", x, fin, n, TOL);
    free(fin);

    /* every draw of meta.rng after the initial ones came from the sampler */
    const cJSON *draws = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "rng"), "draws");
    int pre = 0, nd = cJSON_GetArraySize(draws);
    for (int d = 0; d < nd; d++) {
        const char *tn = wt_cfg_str(cJSON_GetArrayItem(draws, d), "tensor", "");
        if (strncmp(tn, "step", 4)) pre++;
    }
    ck_assert_msg(nc.total == nd - pre, "%s: sampler drew %d tensors, the reference %d", rel,
                  nc.total, nd - pre);

    free(x);
    free(x_in);
    free(guided);
    free(image_latents);
    free(noise);
    free(mask);
    free(x9);
    free(masked_image_latents);
    df_sampler_free(s);
    df_schedule_release(&sc);
    cJSON_Delete(meta);
    wt_file_close(f);
}

START_TEST(sampler_golden_sd1)
{
    static const char *runs[] = {
        "golden/sd1-tiny/txt2img.safetensors",
        "golden/sd1-tiny/txt2img_euler.safetensors",
        "golden/sd1-tiny/txt2img_euler_a.safetensors",
        "golden/sd1-tiny/txt2img_dpmpp_2m_karras.safetensors",
        "golden/sd1-tiny/txt2img_lcm.safetensors",
        "golden/sd1-tiny/txt2img_lcm_cfg.safetensors",
        "golden/sd1-tiny/txt2img_ddim_eta1.safetensors",
        "golden/sd1-tiny/txt2img_ddim_trailing.safetensors",
    };
    replay(runs[_i]);
}
END_TEST

START_TEST(sampler_golden_sd2)
{
    static const char *runs[] = {
        "golden/sd2-tiny/txt2img.safetensors",
        "golden/sd2-tiny/txt2img_euler_v.safetensors",
    };
    replay(runs[_i]);
}
END_TEST

START_TEST(sampler_golden_img2img)
{
    static const char *runs[] = {
        "golden/sd1-tiny/img2img.safetensors",
        "golden/sd1-tiny/inpaint.safetensors",
        "golden/sd2-tiny/img2img.safetensors",
        "golden/sd2-tiny/inpaint.safetensors",
        "golden/sd1-inpaint-tiny/inpaint9_full.safetensors",
        "golden/sd1-inpaint-tiny/inpaint9_partial.safetensors",
    };
    replay(runs[_i]);
}
END_TEST

/* ------------------------------------------------------------------------
 * Spacings cross-checked against the timestep lists of other goldens
 * ---------------------------------------------------------------------- */

static void check_timesteps(df_sampler_kind kind, df_spacing sp, const char *rel)
{
    cm_error err = {0};
    df_schedule sc;
    ck_assert(df_schedule_init(&sc, NULL, &err) == CM_OK);
    cm_tensor ts;
    tu_golden(rel, "timesteps", &ts);
    int steps = (int)cm_tensor_numel(&ts);
    df_sampler_opts o = {sp, 0, 0.0f};
    df_sampler *s = df_sampler_create(kind, &sc, steps, &o, 4, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    for (int k = 0; k < steps; k++)
        ck_assert_msg(df_sampler_timestep(s, k) == ts.data[k], "%s spacing %d vs %s: t[%d] %g vs %g",
                      df_sampler_name(kind), (int)sp, rel, k, (double)df_sampler_timestep(s, k),
                      (double)ts.data[k]);
    cm_tensor_release(&ts);
    df_sampler_free(s);
    df_schedule_release(&sc);
}

START_TEST(sampler_spacings)
{
    /* DDIM linspace = the linspace list of euler_v; DPM++ trailing = DDIM
     * trailing; Euler trailing = euler_a's list; LCM = lcm_cfg's list. */
    check_timesteps(DF_SAMPLER_DDIM, DF_SPACING_LINSPACE, "golden/sd2-tiny/txt2img_euler_v.safetensors");
    check_timesteps(DF_SAMPLER_DPMPP_2M, DF_SPACING_TRAILING,
                    "golden/sd1-tiny/txt2img_ddim_trailing.safetensors");
    check_timesteps(DF_SAMPLER_EULER, DF_SPACING_TRAILING, "golden/sd1-tiny/txt2img_euler_a.safetensors");
    check_timesteps(DF_SAMPLER_EULER_A, DF_SPACING_LEADING, "golden/sd1-tiny/txt2img_euler.safetensors");
    check_timesteps(DF_SAMPLER_DDIM, DF_SPACING_TRAILING, "golden/sd1-tiny/txt2img_euler_a.safetensors");
    check_timesteps(DF_SAMPLER_LCM, DF_SPACING_DEFAULT, "golden/sd1-tiny/txt2img_lcm_cfg.safetensors");
}
END_TEST

/* ------------------------------------------------------------------------
 * Limits: bad configs and arguments, every allocation failing, odd step
 * counts for every sampler and spacing
 * ---------------------------------------------------------------------- */

static cm_status schedule_from(const char *json, df_schedule *sc, cm_error *err)
{
    cJSON *cfg = cJSON_Parse(json);
    ck_assert(cfg != NULL);
    cm_status st = df_schedule_init(sc, cfg, err);
    cJSON_Delete(cfg);
    return st;
}

static void zero_noise(void *ctx, float *out, int64_t n)
{
    (*(int *)ctx)++;
    memset(out, 0, (size_t)n * sizeof(float));
}

START_TEST(sampler_limits)
{
    cm_error err = {0};
    df_schedule sc;
    ck_assert_int_eq(schedule_from("{\"beta_schedule\": \"squaredcos_cap_v2\"}", &sc, &err),
                     CM_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "squaredcos_cap_v2"));
    ck_assert_int_eq(schedule_from("{\"num_train_timesteps\": 1}", &sc, &err), CM_ERR_FORMAT);
    ck_assert_int_eq(schedule_from("{\"num_train_timesteps\": 3, \"trained_betas\": [0.1, 0.2]}",
                                   &sc, &err),
                     CM_ERR_FORMAT);
    ck_assert_int_eq(schedule_from("{\"prediction_type\": \"sample\"}", &sc, &err), CM_ERR_USAGE);
    ck_assert_int_eq(schedule_from("{\"timestep_spacing\": \"sideways\"}", &sc, &err), CM_ERR_USAGE);
    ck_assert_int_eq(schedule_from("{\"beta_start\": 2, \"beta_end\": 3}", &sc, &err),
                     CM_ERR_FORMAT);
    ck_assert_int_eq(schedule_from("{\"rescale_betas_zero_snr\": true}", &sc, &err),
                     CM_ERR_UNSUPPORTED);
    /* trained betas and the linear schedule are accepted */
    ck_assert_int_eq(schedule_from("{\"num_train_timesteps\": 3, \"trained_betas\": [0.1, 0.2, "
                                   "0.3], \"set_alpha_to_one\": true}",
                                   &sc, &err),
                     CM_OK);
    ck_assert(fabsf(sc.alphas_cumprod[2] - 0.504f) < 1e-6f);
    ck_assert(sc.final_alpha_cumprod == 1.0f);
    df_schedule_release(&sc);
    df_schedule_release(NULL);
    ck_assert_int_eq(schedule_from("{\"beta_schedule\": \"linear\", \"beta_start\": 0.0001, "
                                   "\"beta_end\": 0.02}",
                                   &sc, &err),
                     CM_OK);
    df_schedule_release(&sc);

    /* names */
    df_sampler_kind k;
    for (int i = 0; i <= DF_SAMPLER_LCM; i++) {
        ck_assert_int_eq(df_sampler_parse(df_sampler_name((df_sampler_kind)i), &k, &err), CM_OK);
        ck_assert_int_eq(k, i);
    }
    ck_assert_int_eq(df_sampler_parse("DPMSolverMultistepScheduler", &k, &err), CM_OK);
    ck_assert_int_eq(k, DF_SAMPLER_DPMPP_2M);
    ck_assert_int_eq(df_sampler_parse("heun", &k, &err), CM_ERR_USAGE);
    ck_assert_int_eq(df_sampler_parse(NULL, &k, &err), CM_ERR_USAGE);
    ck_assert_str_eq(df_sampler_a1111_name(DF_SAMPLER_EULER_A), "Euler a");

    /* strength -> first step (the reference's get_timesteps) */
    ck_assert_int_eq(df_sampler_start_index(10, 0.6), 4);
    ck_assert_int_eq(df_sampler_start_index(10, 0.75), 3);
    ck_assert_int_eq(df_sampler_start_index(10, 1.0), 0);
    ck_assert_int_eq(df_sampler_start_index(10, 7.0), 0);
    ck_assert_int_eq(df_sampler_start_index(10, 0.0), 10);
    ck_assert_int_eq(df_sampler_start_index(10, -1.0), 10);
    ck_assert_int_eq(df_sampler_start_index(10, NAN), 10);
    ck_assert_int_eq(df_sampler_start_index(0, 0.5), 0);

    /* bad sampler arguments */
    ck_assert(df_schedule_init(&sc, NULL, &err) == CM_OK);
    df_sampler_opts karras = {DF_SPACING_DEFAULT, 1, 0.0f}, eta = {DF_SPACING_DEFAULT, 0, 1.0f};
    df_sampler_opts neg = {DF_SPACING_DEFAULT, 0, -1.0f};
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 0, NULL, 4, &err));
    ck_assert_int_eq(err.status, CM_ERR_USAGE);
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 1001, NULL, 4, &err));
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 1000, NULL, 4, &err)); /* t = 1000 */
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 10, NULL, 0, &err));
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 10, &karras, 4, &err));
    ck_assert_int_eq(err.status, CM_ERR_UNSUPPORTED);
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_EULER, &sc, 10, &eta, 4, &err));
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 10, &neg, 4, &err));
    /* eta 2: 1 - a_prev - std^2 < 0, NaN latents in the reference: refused */
    df_sampler_opts eta2 = {DF_SPACING_DEFAULT, 0, 2.0f};
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, &sc, 10, &eta2, 4, &err));
    ck_assert_int_eq(err.status, CM_ERR_USAGE);
    ck_assert_ptr_nonnull(strstr(err.msg, "eta"));
    /* eta 1 is fine at any step count: every DDIM step stays finite */
    for (int steps = 1; steps <= 60; steps++) {
        df_sampler *d = df_sampler_create(DF_SAMPLER_DDIM, &sc, steps, &eta, 4, &err);
        ck_assert_msg(d != NULL, "%d steps: %s", steps, err.msg);
        float xd[4] = {1, 2, 3, 4}, md[4] = {0.1f, 0.2f, 0.3f, 0.4f};
        int draws = 0;
        for (int i = 0; i < steps; i++)
            ck_assert(df_sampler_step(d, i, md, xd, zero_noise, &draws, &err) == CM_OK);
        for (int e = 0; e < 4; e++) ck_assert_msg(isfinite(xd[e]), "%d steps: x[%d] = %g", steps, e, xd[e]);
        df_sampler_free(d);
    }
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_LCM, &sc, 51, NULL, 4, &err));
    ck_assert_ptr_null(df_sampler_create((df_sampler_kind)42, &sc, 10, NULL, 4, &err));
    ck_assert_ptr_null(df_sampler_create(DF_SAMPLER_DDIM, NULL, 10, NULL, 4, &err));

    /* steps in order; a needed draw without a noise source is an error */
    float x[4] = {1, 2, 3, 4}, mo[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    df_sampler *s = df_sampler_create(DF_SAMPLER_EULER_A, &sc, 5, NULL, 4, &err);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(df_sampler_step(s, 0, mo, x, NULL, NULL, &err), CM_ERR_USAGE);
    int draws = 0;
    ck_assert_int_eq(df_sampler_step(s, 0, mo, x, zero_noise, &draws, &err), CM_OK);
    ck_assert_int_eq(df_sampler_step(s, 0, mo, x, zero_noise, &draws, &err), CM_ERR_USAGE);
    ck_assert_int_eq(df_sampler_step(s, 2, mo, x, zero_noise, &draws, &err), CM_ERR_USAGE);
    ck_assert_int_eq(df_sampler_step(s, 7, mo, x, zero_noise, &draws, &err), CM_ERR_USAGE);
    ck_assert_int_eq(draws, 1);
    df_sampler_free(s);
    df_sampler_free(NULL);
    /* Euler's unused draw is skipped without a noise source */
    s = df_sampler_create(DF_SAMPLER_EULER, &sc, 5, NULL, 4, &err);
    ck_assert_int_eq(df_sampler_step(s, 0, mo, x, NULL, NULL, &err), CM_OK);
    df_sampler_free(s);

    /* every allocation failing in turn */
    for (long n = 1; n < 20; n++) {
        df_schedule s2;
        cm_alloc_fail_at(n);
        cm_status st = df_schedule_init(&s2, NULL, &err);
        df_sampler *q = NULL;
        if (st == CM_OK) q = df_sampler_create(DF_SAMPLER_DPMPP_2M, &s2, 10, &karras, 4, &err);
        cm_alloc_fail_at(0);
        if (st != CM_OK) ck_assert_int_eq(st, CM_ERR_NOMEM);
        else if (!q) ck_assert_int_eq(err.status, CM_ERR_NOMEM);
        df_sampler_free(q);
        if (st == CM_OK) df_schedule_release(&s2);
    }
    df_schedule_release(&sc);
}
END_TEST

/* Every sampler, spacing and step count from 1 to 60 builds an in-range,
 * non-increasing schedule and runs to a finite result. */
START_TEST(sampler_all_steps)
{
    cm_error err = {0};
    df_schedule sc[2];
    ck_assert(df_schedule_init(&sc[0], NULL, &err) == CM_OK);
    ck_assert(schedule_from("{\"prediction_type\": \"v_prediction\"}", &sc[1], &err) == CM_OK);
    const df_spacing sps[] = {DF_SPACING_LEADING, DF_SPACING_TRAILING, DF_SPACING_LINSPACE};
    float x[8], mo[8], xi[8];
    for (int p = 0; p < 2; p++)
        for (int kind = 0; kind <= DF_SAMPLER_LCM; kind++)
            for (int si = 0; si < 3; si++)
                for (int karras = 0; karras < 2; karras++)
                    for (int steps = 1; steps <= 60; steps++) {
                        if (karras && kind != DF_SAMPLER_EULER && kind != DF_SAMPLER_DPMPP_2M)
                            continue;
                        if (kind == DF_SAMPLER_LCM && steps > 50) continue;
                        df_sampler_opts o = {sps[si], karras, kind == DF_SAMPLER_DDIM ? 0.5f : 0};
                        df_sampler *s =
                            df_sampler_create((df_sampler_kind)kind, &sc[p], steps, &o, 8, &err);
                        ck_assert_msg(s != NULL, "%s", err.msg);
                        for (int i = 0; i < steps; i++) {
                            float t = df_sampler_timestep(s, i);
                            ck_assert(t >= 0 && t <= 999);
                            if (i) ck_assert(t <= df_sampler_timestep(s, i - 1));
                        }
                        for (int e = 0; e < 8; e++) x[e] = (float)e - 3.5f;
                        const float ns = df_sampler_init_noise_sigma(s);
                        for (int e = 0; e < 8; e++) x[e] *= ns;
                        int draws = 0;
                        for (int i = 0; i < steps; i++) {
                            df_sampler_model_input(s, i, x, xi);
                            for (int e = 0; e < 8; e++) mo[e] = 0.5f * xi[e];
                            ck_assert(df_sampler_step(s, i, mo, x, zero_noise, &draws, &err) ==
                                      CM_OK);
                        }
                        for (int e = 0; e < 8; e++)
                            ck_assert_msg(isfinite(x[e]), "%s spacing %d karras %d steps %d: x=%g",
                                          df_sampler_name((df_sampler_kind)kind), si, karras,
                                          steps, (double)x[e]);
                        df_sampler_free(s);
                    }
    df_schedule_release(&sc[0]);
    df_schedule_release(&sc[1]);
}
END_TEST

TCase *tc_diffusion_sampler(void)
{
    TCase *tc = tu_tcase("diffusion_sampler");
    tcase_add_test(tc, sampler_spacings);
    tcase_add_test(tc, sampler_limits);
    tcase_add_test(tc, sampler_all_steps);
    tcase_add_loop_test(tc, sampler_golden_sd1, 0, 8);
    tcase_add_loop_test(tc, sampler_golden_sd2, 0, 2);
    tcase_add_loop_test(tc, sampler_golden_img2img, 0, 6);
    return tc;
}
