/* diffusion_mmdit.c — test case diffusion_mmdit: the SD3 denoiser (MMDiT)
 * and the flow-matching Euler sampler against the sd3-tiny goldens.
 *
 * Goldens: tests/data/golden/sd3-tiny/{transformer,txt2img,text_encoders}
 * .safetensors and the model tests/data/golden/sd3-tiny/model/
 * sd3-tiny_f16.safetensors (see tests/data/SOURCE.md).
 * Tolerances: MMDiT outputs 1e-4 x max|golden|; the sampler replay (the
 * recorded transformer outputs fed to df_sampler_step) 1e-5.
 */
#include "testutil.h"
#include "diffusion.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SD3_DIR "golden/sd3-tiny/"
#define SD3_MODEL SD3_DIR "model/sd3-tiny_f16.safetensors"
#define TXT2IMG SD3_DIR "txt2img.safetensors"

static wt_model *open_sd3(void)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(tu_data(SD3_MODEL), &err);
    ck_assert_msg(m != NULL, "cannot open %s: %s", SD3_MODEL, err.msg);
    return m;
}

/* ------------------------------------------------------------------------
 * Flow-matching sampler: replay of sd3-tiny/txt2img
 * ---------------------------------------------------------------------- */

START_TEST(flow_euler_replay)
{
    wt_model *m = open_sd3();
    cm_error err = {0};
    df_schedule sc;
    ck_assert_msg(df_schedule_init(&sc, wt_model_section(m, "scheduler"), &err) == CM_OK, "%s", err.msg);
    ck_assert(sc.shift == 3.0f);
    cJSON *meta = tu_golden_meta(TXT2IMG);
    const int steps = wt_cfg_int(meta, "steps", 0);
    const float g = (float)wt_cfg_num(meta, "guidance_scale", 0);
    ck_assert_int_eq(steps, 10);

    cm_tensor sig = {0}, ts = {0}, x = {0};
    tu_golden(TXT2IMG, "sigmas", &sig);
    tu_golden(TXT2IMG, "timesteps", &ts);
    tu_golden(TXT2IMG, "initial_noise", &x);
    const int64_t n = cm_tensor_numel(&x);
    df_sampler_kind kind;
    ck_assert_int_eq(df_sampler_parse(wt_cfg_str(cJSON_GetObjectItemCaseSensitive(meta, "scheduler"), "class", ""),
                                      &kind, &err), CM_OK);
    ck_assert_int_eq(kind, DF_SAMPLER_FLOW_EULER);
    ck_assert_str_eq(df_sampler_name(kind), "flow_euler");
    df_sampler *s = df_sampler_create(kind, &sc, steps, NULL, n, &err);
    ck_assert_msg(s != NULL, "%s", err.msg);
    ck_assert(df_sampler_init_noise_sigma(s) == 1.0f);
    for (int i = 0; i <= steps; i++)
        ck_assert_msg(fabsf(df_sampler_sigma(s, i) - sig.data[i]) <= 1e-7f * fmaxf(1.0f, sig.data[i]),
                      "sigma %d: %.9g, reference %.9g", i, (double)df_sampler_sigma(s, i), (double)sig.data[i]);
    for (int i = 0; i < steps; i++)
        ck_assert_msg(fabsf(df_sampler_timestep(s, i) - ts.data[i]) <= 1e-4f,
                      "timestep %d: %.9g, reference %.9g", i, (double)df_sampler_timestep(s, i), (double)ts.data[i]);

    float *guided = malloc((size_t)n * sizeof(float)), *xin = malloc((size_t)n * sizeof(float));
    ck_assert(guided && xin);
    for (int i = 0; i < steps; i++) {
        char name[64];
        cm_tensor in = {0}, u = {0}, c = {0}, want = {0};
        snprintf(name, sizeof name, "step%d.transformer_in", i);
        tu_golden(TXT2IMG, name, &in);
        df_sampler_model_input(s, i, x.data, xin);
        TU_ASSERT_CLOSE(name, xin, in.data, n, 1e-5);
        snprintf(name, sizeof name, "step%d.out_uncond", i);
        tu_golden(TXT2IMG, name, &u);
        snprintf(name, sizeof name, "step%d.out_cond", i);
        tu_golden(TXT2IMG, name, &c);
        df_cfg_combine(u.data, c.data, n, g, guided);
        ck_assert_msg(df_sampler_step(s, i, guided, x.data, NULL, NULL, &err) == CM_OK, "%s", err.msg);
        snprintf(name, sizeof name, "step%d.latents", i);
        tu_golden(TXT2IMG, name, &want);
        TU_ASSERT_CLOSE(name, x.data, want.data, n, 1e-5);
        cm_tensor_release(&in);
        cm_tensor_release(&u);
        cm_tensor_release(&c);
        cm_tensor_release(&want);
    }
    cm_tensor fin = {0};
    tu_golden(TXT2IMG, "final_latents", &fin);
    TU_ASSERT_CLOSE("final_latents", x.data, fin.data, n, 1e-5);
    /* out of order */
    ck_assert_int_eq(df_sampler_step(s, 3, guided, x.data, NULL, NULL, &err), CM_ERR_USAGE);

    /* add_noise: sigma * noise + (1 - sigma) * x0; the last index is x0 */
    float x0[3] = {1.0f, -2.0f, 0.5f}, nz[3] = {0.25f, 1.0f, -1.0f}, out[3];
    df_sampler *s3 = df_sampler_create(kind, &sc, steps, NULL, 3, &err);
    ck_assert(s3);
    df_sampler_add_noise(s3, 4, x0, nz, out);
    const float sg = df_sampler_sigma(s3, 4);
    for (int e = 0; e < 3; e++) ck_assert(out[e] == sg * nz[e] + (1.0f - sg) * x0[e]);
    df_sampler_add_noise(s3, steps, x0, nz, out);
    ck_assert(out[1] == x0[1]);
    df_sampler_free(s3);

    /* dynamic shifting is refused */
    df_schedule dyn = sc;
    dyn.dynamic_shifting = 1;
    ck_assert(df_sampler_create(kind, &dyn, steps, NULL, n, &err) == NULL);
    ck_assert_int_eq(err.status, CM_ERR_UNSUPPORTED);
    /* one step: sigma 1 then 0 */
    s3 = df_sampler_create(kind, &sc, 1, NULL, 3, &err);
    ck_assert(s3);
    ck_assert(df_sampler_sigma(s3, 0) == 1.0f && df_sampler_sigma(s3, 1) == 0.0f);
    ck_assert(df_sampler_timestep(s3, 0) == 1000.0f);
    df_sampler_free(s3);

    free(guided);
    free(xin);
    cm_tensor_release(&fin);
    cm_tensor_release(&sig);
    cm_tensor_release(&ts);
    cm_tensor_release(&x);
    df_sampler_free(s);
    df_schedule_release(&sc);
    cJSON_Delete(meta);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * MMDiT forward against sd3-tiny/transformer
 * ---------------------------------------------------------------------- */

#define TRANSFORMER SD3_DIR "transformer.safetensors"

/* encoder_hidden_states = rows [3, 0] of text_encoders.prompt_embeds */
static float *golden_context(int *T, int *C)
{
    cm_tensor pe = {0};
    tu_golden(SD3_DIR "text_encoders.safetensors", "prompt_embeds", &pe);
    *T = (int)pe.shape[1];
    *C = (int)pe.shape[2];
    size_t row = (size_t)*T * (size_t)*C;
    float *ctx = malloc(2 * row * sizeof(float));
    ck_assert(ctx);
    memcpy(ctx, pe.data + 3 * row, row * sizeof(float));
    memcpy(ctx + row, pe.data, row * sizeof(float));
    cm_tensor_release(&pe);
    return ctx;
}

typedef struct {
    int checked;
} dbg_state;

static void check_intermediate(void *user, const char *name, const float *data, int B, int T, int C)
{
    dbg_state *st = user;
    char gname[96];
    snprintf(gname, sizeof gname, "a.%s", name);
    cm_tensor want = {0};
    tu_golden(TRANSFORMER, gname, &want);
    ck_assert_msg(cm_tensor_numel(&want) == (int64_t)B * T * C, "%s: %lld values, reference %lld", gname,
                  (long long)B * T * C, (long long)cm_tensor_numel(&want));
    TU_ASSERT_CLOSE(gname, data, want.data, cm_tensor_numel(&want), 1e-4);
    cm_tensor_release(&want);
    st->checked++;
}

static void run_mmdit(df_mmdit *d, const char *tname, const char *oname, int with_debug)
{
    cm_tensor x = {0}, t = {0}, pooled = {0}, want = {0};
    tu_golden(TRANSFORMER, "x", &x);
    tu_golden(TRANSFORMER, tname, &t);
    tu_golden(TRANSFORMER, "pooled_projections", &pooled);
    tu_golden(TRANSFORMER, oname, &want);
    int T, C;
    float *ctx = golden_context(&T, &C);
    ck_assert_int_eq(C, df_mmdit_context_dim(d));
    ck_assert_int_eq(pooled.shape[1], df_mmdit_pooled_dim(d));
    dbg_state st = {0};
    df_mmdit_input in = {
        .x = x.data, .B = (int)x.shape[0], .h = (int)x.shape[2], .w = (int)x.shape[3],
        .timesteps = t.data, .context = ctx, .T = T, .pooled = pooled.data,
        .debug = with_debug ? check_intermediate : NULL, .debug_user = &st,
    };
    float *out = malloc((size_t)cm_tensor_numel(&want) * sizeof(float));
    ck_assert(out);
    cm_error err = {0};
    ck_assert_msg(df_mmdit_forward(d, &in, out, &err) == CM_OK, "%s", err.msg);
    TU_ASSERT_CLOSE(oname, out, want.data, cm_tensor_numel(&want), 1e-4);
    if (with_debug) ck_assert_int_eq(st.checked, 8); /* pos, time, ctx, 0.hidden, 0.context, 1.hidden, norm, proj */
    free(out);
    free(ctx);
    cm_tensor_release(&x);
    cm_tensor_release(&t);
    cm_tensor_release(&pooled);
    cm_tensor_release(&want);
}

START_TEST(mmdit_golden)
{
    wt_model *m = open_sd3();
    cm_error err = {0};
    df_mmdit *d = df_mmdit_create(m, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    ck_assert_int_eq(df_mmdit_in_channels(d), 16);
    ck_assert_int_eq(df_mmdit_out_channels(d), 16);
    ck_assert_int_eq(df_mmdit_size_multiple(d), 2);
    ck_assert_int_eq(df_mmdit_max_latent_size(d), 16);
    run_mmdit(d, "timestep_a", "out_a", 1);
    run_mmdit(d, "timestep_b", "out_b", 0);
    df_mmdit_free(d);
    df_mmdit_free(NULL);
    wt_model_close(m);
}
END_TEST

START_TEST(mmdit_threads_limits)
{
    wt_model *m = open_sd3();
    cm_error err = {0};
    df_mmdit *d = df_mmdit_create(m, &err);
    ck_assert(d);
    cm_tensor x = {0}, t = {0}, pooled = {0};
    tu_golden(TRANSFORMER, "x", &x);
    tu_golden(TRANSFORMER, "timestep_b", &t);
    tu_golden(TRANSFORMER, "pooled_projections", &pooled);
    int T, C;
    float *ctx = golden_context(&T, &C);
    df_mmdit_input in = {.x = x.data, .B = 2, .h = 8, .w = 12, .timesteps = t.data, .context = ctx, .T = T,
                         .pooled = pooled.data};
    size_t n = (size_t)cm_tensor_numel(&x);
    float *o1 = malloc(n * sizeof(float)), *o2 = malloc(n * sizeof(float));
    ck_assert(o1 && o2);
    int nt = cm_threads_get();
    cm_threads_set(1);
    ck_assert(df_mmdit_forward(d, &in, o1, &err) == CM_OK);
    cm_threads_set(2);
    ck_assert(df_mmdit_forward(d, &in, o2, &err) == CM_OK);
    cm_threads_set(nt);
    ck_assert(memcmp(o1, o2, n * sizeof(float)) == 0);

    /* odd sizes and a latent too large for pos_embed are usage errors */
    in.h = 7;
    ck_assert_int_eq(df_mmdit_forward(d, &in, o1, &err), CM_ERR_USAGE);
    in.h = 18;
    ck_assert_int_eq(df_mmdit_forward(d, &in, o1, &err), CM_ERR_USAGE);
    ck_assert_msg(strstr(err.msg, "pos_embed_max_size") != NULL, "%s", err.msg);
    in.h = 8;
    in.pooled = NULL;
    ck_assert_int_eq(df_mmdit_forward(d, &in, o1, &err), CM_ERR_USAGE);
    df_mmdit_free(d);

    /* allocation failure on the first forward */
    d = df_mmdit_create(m, &err);
    ck_assert(d);
    in.pooled = pooled.data;
    cm_alloc_fail_at(1);
    ck_assert_int_eq(df_mmdit_forward(d, &in, o1, &err), CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
    ck_assert_int_eq(df_mmdit_forward(d, &in, o1, &err), CM_OK);
    ck_assert(memcmp(o1, o2, n * sizeof(float)) == 0);
    df_mmdit_free(d);

    /* a model without the MMDiT: clear error */
    wt_model *sd1 = wt_model_open(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), &err);
    ck_assert(sd1);
    ck_assert(df_mmdit_create(sd1, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "x_embedder") != NULL, "%s", err.msg);
    wt_model_close(sd1);

    free(o1);
    free(o2);
    free(ctx);
    cm_tensor_release(&x);
    cm_tensor_release(&t);
    cm_tensor_release(&pooled);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * The whole sd3-tiny txt2img trajectory: golden conditioning (rows [3, 0]
 * of text_encoders: negative "", P0) and initial noise, MMDiT + CFG 7 +
 * flow_euler, every step's latents within 1e-4.
 * ---------------------------------------------------------------------- */

START_TEST(mmdit_txt2img_trajectory)
{
    wt_model *m = open_sd3();
    cm_error err = {0};
    df_mmdit *d = df_mmdit_create(m, &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    df_schedule sc;
    ck_assert(df_schedule_init(&sc, wt_model_section(m, "scheduler"), &err) == CM_OK);
    cJSON *meta = tu_golden_meta(TXT2IMG);
    const int steps = wt_cfg_int(meta, "steps", 0);
    const float g = (float)wt_cfg_num(meta, "guidance_scale", 0);

    int T, C;
    float *ctx = golden_context(&T, &C);
    cm_tensor pool = {0}, x = {0};
    tu_golden(SD3_DIR "text_encoders.safetensors", "pooled_projections", &pool);
    const int P = (int)pool.shape[1];
    float *pooled = malloc(2 * (size_t)P * sizeof(float));
    ck_assert(pooled);
    memcpy(pooled, pool.data + 3 * (size_t)P, (size_t)P * sizeof(float));
    memcpy(pooled + P, pool.data, (size_t)P * sizeof(float));
    tu_golden(TXT2IMG, "initial_noise", &x);
    const int64_t n = cm_tensor_numel(&x);
    const int h = (int)x.shape[2], w = (int)x.shape[3];

    df_sampler *s = df_sampler_create(DF_SAMPLER_FLOW_EULER, &sc, steps, NULL, n, &err);
    ck_assert(s);
    float *xin = malloc(2 * (size_t)n * sizeof(float)), *vo = malloc(2 * (size_t)n * sizeof(float));
    float *guided = malloc((size_t)n * sizeof(float));
    ck_assert(xin && vo && guided);
    for (int e = 0; e < n; e++) x.data[e] *= df_sampler_init_noise_sigma(s);
    for (int i = 0; i < steps; i++) {
        df_sampler_model_input(s, i, x.data, xin);
        memcpy(xin + n, xin, (size_t)n * sizeof(float));
        float t[2] = {df_sampler_timestep(s, i), df_sampler_timestep(s, i)};
        df_mmdit_input in = {.x = xin, .B = 2, .h = h, .w = w, .timesteps = t, .context = ctx, .T = T,
                             .pooled = pooled};
        ck_assert_msg(df_mmdit_forward(d, &in, vo, &err) == CM_OK, "%s", err.msg);
        char name[64];
        cm_tensor want = {0};
        snprintf(name, sizeof name, "step%d.out_cond", i);
        tu_golden(TXT2IMG, name, &want);
        TU_ASSERT_CLOSE(name, vo + n, want.data, n, 1e-4);
        cm_tensor_release(&want);
        df_cfg_combine(vo, vo + n, n, g, guided);
        ck_assert(df_sampler_step(s, i, guided, x.data, NULL, NULL, &err) == CM_OK);
        snprintf(name, sizeof name, "step%d.latents", i);
        tu_golden(TXT2IMG, name, &want);
        TU_ASSERT_CLOSE(name, x.data, want.data, n, 1e-4);
        cm_tensor_release(&want);
    }
    cm_tensor fin = {0};
    tu_golden(TXT2IMG, "final_latents", &fin);
    TU_ASSERT_CLOSE("final_latents", x.data, fin.data, n, 1e-4);

    cm_tensor_release(&fin);
    free(xin);
    free(vo);
    free(guided);
    free(pooled);
    free(ctx);
    cm_tensor_release(&pool);
    cm_tensor_release(&x);
    df_sampler_free(s);
    df_schedule_release(&sc);
    cJSON_Delete(meta);
    df_mmdit_free(d);
    wt_model_close(m);
}
END_TEST

TCase *tc_diffusion_mmdit(void)
{
    TCase *tc = tu_tcase("diffusion_mmdit");
    tcase_add_test(tc, flow_euler_replay);
    tcase_add_test(tc, mmdit_golden);
    tcase_add_test(tc, mmdit_threads_limits);
    tcase_add_test(tc, mmdit_txt2img_trajectory);
    return tc;
}
