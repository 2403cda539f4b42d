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

TCase *tc_diffusion_mmdit(void)
{
    TCase *tc = tu_tcase("diffusion_mmdit");
    tcase_add_test(tc, flow_euler_replay);
    return tc;
}
