/* diffusion_unet.c — test case diffusion_unet: the UNet (diffusion/unet.c)
 * against diffusers' UNet2DConditionModel goldens of the tiny models
 * (golden/<cfg>/unet.safetensors: out_a, out_b and the block-level
 * intermediates of call a), thread determinism, buffer reuse across
 * shapes, and bad models / bad inputs (clean errors naming the tensor).
 */
#include "diffusion.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TOL 1e-4

static const char *model_path(const char *cfg)
{
    static char b[512];
    snprintf(b, sizeof b, "golden/%s/model/%s_f16.safetensors", cfg, cfg);
    return tu_data(b);
}

/* ------------------------------------------------------------------------
 * Goldens
 * ---------------------------------------------------------------------- */

typedef struct {
    char gold[256];
    int failures, checked;
} hook_ctx;

/* Compares an NHWC intermediate with the NCHW golden "a.<name>". */
static void check_hook(void *user, const char *name, const float *d, int B, int h, int w, int C)
{
    hook_ctx *hc = user;
    char gname[64];
    snprintf(gname, sizeof gname, "a.%s", name);
    cm_tensor g = {0};
    tu_golden(hc->gold, gname, &g);
    int64_t n = (int64_t)B * h * w * C;
    ck_assert_int_eq(cm_tensor_numel(&g), n);
    float *nchw = malloc((size_t)n * sizeof(float));
    ck_assert(nchw);
    int64_t HW = (int64_t)h * w;
    for (int b = 0; b < B; b++)
        for (int64_t p = 0; p < HW; p++)
            for (int c = 0; c < C; c++)
                nchw[((int64_t)b * C + c) * HW + p] = d[((int64_t)b * HW + p) * C + c];
    char what[400];
    snprintf(what, sizeof what, "%s %s", hc->gold, gname);
    if (!tu_close(what, nchw, g.data, n, TOL)) hc->failures++;
    hc->checked++;
    free(nchw);
    cm_tensor_release(&g);
}

typedef struct {
    cm_tensor x, ctx, ta, tb, out_a, out_b, text_embeds, time_ids;
    int sdxl;
} unet_gold;

static void gold_load(const char *gold, int sdxl, unet_gold *g)
{
    memset(g, 0, sizeof *g);
    g->sdxl = sdxl;
    tu_golden(gold, "x", &g->x);
    tu_golden(gold, "context", &g->ctx);
    tu_golden(gold, "timestep_a", &g->ta);
    tu_golden(gold, "timestep_b", &g->tb);
    tu_golden(gold, "out_a", &g->out_a);
    tu_golden(gold, "out_b", &g->out_b);
    if (sdxl) {
        tu_golden(gold, "text_embeds", &g->text_embeds);
        tu_golden(gold, "time_ids", &g->time_ids);
    }
}

static void gold_release(unet_gold *g)
{
    cm_tensor_release(&g->x);
    cm_tensor_release(&g->ctx);
    cm_tensor_release(&g->ta);
    cm_tensor_release(&g->tb);
    cm_tensor_release(&g->out_a);
    cm_tensor_release(&g->out_b);
    cm_tensor_release(&g->text_embeds);
    cm_tensor_release(&g->time_ids);
}

static df_unet_input gold_input(const unet_gold *g, const cm_tensor *t)
{
    df_unet_input in = {0};
    in.x = g->x.data;
    in.B = (int)g->x.shape[0];
    in.h = (int)g->x.shape[2];
    in.w = (int)g->x.shape[3];
    in.timesteps = t->data;
    in.context = g->ctx.data;
    in.T = (int)g->ctx.shape[1];
    if (g->sdxl) {
        in.text_embeds = g->text_embeds.data;
        in.time_ids = g->time_ids.data;
    }
    return in;
}

static void run_golden_model(const char *cfg, const char *path, int sdxl)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(path, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    df_unet *u = df_unet_create(m, &err);
    ck_assert_msg(u != NULL, "%s", err.msg);

    char gold[256];
    snprintf(gold, sizeof gold, "golden/%s/unet.safetensors", cfg);
    unet_gold g;
    gold_load(gold, sdxl, &g);
    ck_assert_int_eq(df_unet_in_channels(u), (int)g.x.shape[1]);
    ck_assert_int_eq(df_unet_out_channels(u), (int)g.out_a.shape[1]);
    ck_assert_int_eq(df_unet_context_dim(u), (int)g.ctx.shape[2]);
    if (sdxl) {
        ck_assert_int_eq(df_unet_pooled_dim(u), (int)g.text_embeds.shape[1]);
        ck_assert_int_eq(df_unet_n_time_ids(u), (int)g.time_ids.shape[1]);
    } else {
        ck_assert_int_eq(df_unet_pooled_dim(u), 0);
    }
    int64_t n = cm_tensor_numel(&g.out_a);
    float *out = malloc((size_t)n * sizeof(float));
    ck_assert(out);

    hook_ctx hc = {{0}, 0, 0};
    snprintf(hc.gold, sizeof hc.gold, "%s", gold);
    df_unet_input in = gold_input(&g, &g.ta);
    in.debug = check_hook;
    in.debug_user = &hc;
    ck_assert_msg(df_unet_forward(u, &in, out, &err) == CM_OK, "%s", err.msg);
    char what[400];
    snprintf(what, sizeof what, "%s out_a", gold);
    TU_ASSERT_CLOSE(what, out, g.out_a.data, n, TOL);
    /* the block-level intermediates were all seen and checked */
    ck_assert_msg(hc.failures == 0, "%d of %d intermediates differ", hc.failures, hc.checked);
    ck_assert_int_ge(hc.checked, sdxl ? 12 : 9);

    /* call b: different timestep per row, same context (cached K/V) */
    in = gold_input(&g, &g.tb);
    ck_assert_msg(df_unet_forward(u, &in, out, &err) == CM_OK, "%s", err.msg);
    snprintf(what, sizeof what, "%s out_b", gold);
    TU_ASSERT_CLOSE(what, out, g.out_b.data, n, TOL);

    free(out);
    gold_release(&g);
    df_unet_free(u);
    wt_model_close(m);
}

static void run_golden(const char *cfg, int sdxl) { run_golden_model(cfg, model_path(cfg), sdxl); }

START_TEST(unet_sd1_golden) { run_golden("sd1-tiny", 0); }
END_TEST

/* The same weights as a diffusers folder (names mapped by weights/). */
START_TEST(unet_sd1_diffusers_golden)
{
    const char *dir = tu_data("golden/sd1-tiny/model/diffusers");
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        fprintf(stderr, "skip: %s is not in tests/data\n", dir);
        return;
    }
    run_golden_model("sd1-tiny", dir, 0);
}
END_TEST

START_TEST(unet_sd2_golden) { run_golden("sd2-tiny", 0); }
END_TEST

START_TEST(unet_sdxl_golden) { run_golden("sdxl-tiny", 1); }
END_TEST

START_TEST(unet_inpaint9_golden) { run_golden("sd1-inpaint-tiny", 0); }
END_TEST

/* ------------------------------------------------------------------------
 * Pipeline goldens: every step's UNet call of a recorded run
 * ---------------------------------------------------------------------- */

/* Replays each step's UNet input (row 0 of the CFG batch, both rows equal)
 * with the run's conditioning and compares out_uncond / out_cond. */
static void run_steps(const char *cfg, const char *run, int sdxl)
{
    char gold[256], te[256];
    snprintf(gold, sizeof gold, "golden/%s/%s.safetensors", cfg, run);
    snprintf(te, sizeof te, "golden/%s/text_encoder.safetensors", cfg);
    cJSON *meta = tu_golden_meta(gold);
    const char *prompt = wt_cfg_str(meta, "prompt", "");
    const char *neg = wt_cfg_str(meta, "negative_prompt", "");
    ck_assert_str_eq(neg, "");
    int row = !strcmp(prompt, "a photo of a cat") ? 0 : 1; /* P0 or P1 of the text golden */
    int steps = wt_cfg_int(meta, "steps", 0);
    ck_assert_int_gt(steps, 0);

    cm_error err = {0};
    wt_model *m = wt_model_open(model_path(cfg), &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    df_unet *u = df_unet_create(m, &err);
    ck_assert_msg(u != NULL, "%s", err.msg);

    /* context rows [uncond, cond]; SDXL zeroes the uncond row (and its
     * pooled embedding) for an empty negative prompt */
    cm_tensor hs = {0}, pooled = {0}, ts = {0}, tids = {0};
    tu_golden(te, sdxl ? "prompt_embeds" : "last_hidden_state", &hs);
    int64_t T = hs.shape[1], D = hs.shape[2];
    float *ctx = calloc((size_t)(2 * T * D), sizeof(float));
    ck_assert(ctx);
    if (!sdxl) memcpy(ctx, hs.data + 3 * T * D, (size_t)(T * D) * sizeof(float));
    memcpy(ctx + T * D, hs.data + row * T * D, (size_t)(T * D) * sizeof(float));
    float *te_rows = NULL, time_ids[12];
    if (sdxl) {
        tu_golden(te, "enc2_text_embeds", &pooled);
        int64_t P = pooled.shape[1];
        te_rows = calloc((size_t)(2 * P), sizeof(float));
        ck_assert(te_rows);
        memcpy(te_rows + P, pooled.data + row * P, (size_t)P * sizeof(float));
        tu_golden(gold, "time_ids", &tids);
        int64_t n = cm_tensor_numel(&tids);
        ck_assert(n == 6 || n == 12);
        for (int i = 0; i < 12; i++) time_ids[i] = tids.data[i % n];
    }
    tu_golden(gold, "timesteps", &ts);

    for (int i = 0; i < steps; i++) {
        char name[64];
        cm_tensor xin = {0}, ou = {0}, oc = {0};
        snprintf(name, sizeof name, "step%d.unet_in", i);
        tu_golden(gold, name, &xin);
        int64_t n = cm_tensor_numel(&xin);
        float *x = malloc((size_t)(2 * n) * sizeof(float)), *out = malloc((size_t)(2 * n) * sizeof(float));
        ck_assert(x && out);
        memcpy(x, xin.data, (size_t)n * sizeof(float));
        memcpy(x + n, xin.data, (size_t)n * sizeof(float));
        float t[2];
        t[0] = t[1] = ts.data[i];
        df_unet_input in = {0};
        in.x = x;
        in.B = 2;
        in.h = (int)xin.shape[2];
        in.w = (int)xin.shape[3];
        in.timesteps = t;
        in.context = ctx;
        in.T = (int)T;
        in.text_embeds = te_rows;
        in.time_ids = sdxl ? time_ids : NULL;
        ck_assert_msg(df_unet_forward(u, &in, out, &err) == CM_OK, "%s", err.msg);
        char what[400];
        snprintf(name, sizeof name, "step%d.out_uncond", i);
        tu_golden(gold, name, &ou);
        snprintf(what, sizeof what, "%s %s", gold, name);
        TU_ASSERT_CLOSE(what, out, ou.data, n, TOL);
        snprintf(name, sizeof name, "step%d.out_cond", i);
        tu_golden(gold, name, &oc);
        snprintf(what, sizeof what, "%s %s", gold, name);
        TU_ASSERT_CLOSE(what, out + n, oc.data, n, TOL);
        free(x);
        free(out);
        cm_tensor_release(&xin);
        cm_tensor_release(&ou);
        cm_tensor_release(&oc);
    }
    free(ctx);
    free(te_rows);
    cm_tensor_release(&hs);
    cm_tensor_release(&pooled);
    cm_tensor_release(&ts);
    cm_tensor_release(&tids);
    cJSON_Delete(meta);
    df_unet_free(u);
    wt_model_close(m);
}

START_TEST(unet_sd1_steps) { run_steps("sd1-tiny", "txt2img_dpmpp_2m_karras", 0); }
END_TEST

START_TEST(unet_sdxl_steps) { run_steps("sdxl-tiny", "txt2img", 1); }
END_TEST

/* ------------------------------------------------------------------------
 * Threads, buffer reuse, context cache
 * ---------------------------------------------------------------------- */

START_TEST(unet_threads_and_reuse)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(model_path("sdxl-tiny"), &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    df_unet *u1 = df_unet_create(m, &err), *u2 = df_unet_create(m, &err);
    ck_assert_msg(u1 && u2, "%s", err.msg);
    unet_gold g;
    gold_load("golden/sdxl-tiny/unet.safetensors", 1, &g);
    int64_t n = cm_tensor_numel(&g.out_a);
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    ck_assert(a && b);
    df_unet_input in = gold_input(&g, &g.tb);

    int saved = cm_threads_get();
    cm_threads_set(1);
    ck_assert_msg(df_unet_forward(u1, &in, a, &err) == CM_OK, "%s", err.msg);
    cm_threads_set(2);
    ck_assert_msg(df_unet_forward(u2, &in, b, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(!memcmp(a, b, (size_t)n * sizeof(float)), "1 and 2 threads differ");

    /* a bigger latent (buffers grow), a smaller batch with another context
     * (K/V recomputed), then the first call again: bit-identical */
    int B = 1, h = 16, w = 8;
    size_t nb = (size_t)B * 4 * h * w;
    float *x2 = calloc(nb, sizeof(float)), *o2 = malloc(nb * sizeof(float));
    ck_assert(x2 && o2);
    for (size_t i = 0; i < nb; i++) x2[i] = (float)((int)(i * 7919 % 201) - 100) / 50.0f;
    df_unet_input in2 = in;
    in2.x = x2;
    in2.B = B;
    in2.h = h;
    in2.w = w;
    in2.context = g.ctx.data + g.ctx.shape[1] * g.ctx.shape[2]; /* row 1 */
    ck_assert_msg(df_unet_forward(u2, &in2, o2, &err) == CM_OK, "%s", err.msg);
    for (size_t i = 0; i < nb; i++) ck_assert_msg(isfinite(o2[i]), "non-finite output at %zu", i);
    ck_assert_msg(df_unet_forward(u2, &in, b, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(!memcmp(a, b, (size_t)n * sizeof(float)), "result changed after reuse");
    /* same context values in a different buffer: cache hit, same result */
    float *ctx_copy = malloc((size_t)cm_tensor_numel(&g.ctx) * sizeof(float));
    ck_assert(ctx_copy);
    memcpy(ctx_copy, g.ctx.data, (size_t)cm_tensor_numel(&g.ctx) * sizeof(float));
    in.context = ctx_copy;
    ck_assert_msg(df_unet_forward(u2, &in, b, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(!memcmp(a, b, (size_t)n * sizeof(float)), "result changed with copied context");
    /* changed context contents in the same buffer: no stale K/V */
    ctx_copy[5] += 1.0f;
    ck_assert_msg(df_unet_forward(u2, &in, b, &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(memcmp(a, b, (size_t)n * sizeof(float)) != 0, "stale cross-attention K/V");
    cm_threads_set(saved);

    free(ctx_copy);
    free(x2);
    free(o2);
    free(a);
    free(b);
    gold_release(&g);
    df_unet_free(u1);
    df_unet_free(u2);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * Bad models and bad inputs
 * ---------------------------------------------------------------------- */

/* Copy of a safetensors file with its header edited by fn. */
static const char *write_modified(const char *src, const char *name,
                                  void (*fn)(cJSON *hdr, void *arg), void *arg)
{
    static char dst[4200];
    cm_error err = {0};
    char *data = NULL;
    size_t n = 0;
    ck_assert_msg(cm_file_read_all(src, &data, &n, &err) == CM_OK, "%s", err.msg);
    uint64_t hl = 0;
    memcpy(&hl, data, 8);
    cJSON *hdr = cJSON_ParseWithLength(data + 8, (size_t)hl);
    ck_assert(hdr);
    fn(hdr, arg);
    char *txt = cJSON_PrintUnformatted(hdr);
    ck_assert(txt);
    size_t tl = strlen(txt), pad = (8 - tl % 8) % 8, body = n - 8 - (size_t)hl;
    size_t total = 8 + tl + pad + body;
    char *out = malloc(total);
    ck_assert(out);
    uint64_t nl = tl + pad;
    memcpy(out, &nl, 8);
    memcpy(out + 8, txt, tl);
    memset(out + 8 + tl, ' ', pad);
    memcpy(out + 8 + tl + pad, data + 8 + hl, body);
    snprintf(dst, sizeof dst, "%s/%s", tu_tmpdir(), name);
    ck_assert_msg(cm_file_write_atomic(dst, out, total, 1, &err) == CM_OK, "%s", err.msg);
    free(out);
    cJSON_free(txt);
    cJSON_Delete(hdr);
    cm_free(data);
    return dst;
}

static void rename_tensor(cJSON *hdr, void *arg)
{
    const char *name = arg;
    cJSON *t = cJSON_DetachItemFromObjectCaseSensitive(hdr, name);
    ck_assert_msg(t != NULL, "no tensor %s", name);
    cJSON_AddItemToObject(hdr, "unused.renamed", t);
}

static void flatten_tensor(cJSON *hdr, void *arg)
{
    /* [64, 32, 1, 1] -> [64, 32]: same bytes, wrong shape for a 1x1 conv */
    cJSON *t = cJSON_GetObjectItemCaseSensitive(hdr, (const char *)arg);
    ck_assert(t);
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    ck_assert(cJSON_GetArraySize(shape) == 4);
    cJSON_DeleteItemFromArray(shape, 3);
    cJSON_DeleteItemFromArray(shape, 2);
}

static void edit_config(cJSON *hdr, void *arg)
{
    const char *const *kv = arg; /* key, JSON value */
    cJSON *meta = cJSON_GetObjectItemCaseSensitive(hdr, "__metadata__");
    cJSON *cfgs = cJSON_GetObjectItemCaseSensitive(meta, "stipple.config");
    cJSON *cfg = cJSON_Parse(cfgs->valuestring);
    cJSON *unet = cJSON_GetObjectItemCaseSensitive(cfg, "unet");
    cJSON_ReplaceItemInObjectCaseSensitive(unet, kv[0], cJSON_Parse(kv[1]));
    char *s = cJSON_PrintUnformatted(cfg);
    cJSON_ReplaceItemInObjectCaseSensitive(meta, "stipple.config", cJSON_CreateString(s));
    cJSON_free(s);
    cJSON_Delete(cfg);
}

/* df_unet_create on the modified file fails with a message containing
 * every string of want. */
static void expect_create_error(const char *path, const char *want1, const char *want2)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(path, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    df_unet *u = df_unet_create(m, &err);
    ck_assert_msg(u == NULL, "bad model accepted: %s", path);
    ck_assert_int_ne(err.status, CM_OK);
    fprintf(stderr, "expected error: %s\n", err.msg);
    ck_assert_msg(strstr(err.msg, want1), "message lacks \"%s\": %s", want1, err.msg);
    if (want2) ck_assert_msg(strstr(err.msg, want2), "message lacks \"%s\": %s", want2, err.msg);
    ck_assert(!strchr(err.msg, '\n'));
    wt_model_close(m);
}

START_TEST(unet_bad_models)
{
    const char *src = model_path("sd1-tiny");
    const char *missing = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
    expect_create_error(write_modified(src, "missing.safetensors", rename_tensor, (void *)missing),
                        missing, "missing");
    const char *skip = "model.diffusion_model.input_blocks.4.0.skip_connection.weight";
    expect_create_error(write_modified(src, "shape.safetensors", flatten_tensor, (void *)skip), skip,
                        "shape");
    const char *heads[] = {"attention_head_dim", "7"};
    expect_create_error(write_modified(src, "heads.safetensors", edit_config, (void *)heads),
                        "heads", NULL);
    const char *chans[] = {"block_out_channels", "[32, 48]"};
    expect_create_error(write_modified(src, "chans.safetensors", edit_config, (void *)chans),
                        "block_out_channels", NULL);
    const char *types[] = {"down_block_types", "[\"CrossAttnDownBlock2D\"]"};
    expect_create_error(write_modified(src, "types.safetensors", edit_config, (void *)types),
                        "down_block_types", NULL);
    const char *tlay[] = {"transformer_layers_per_block", "2"};
    expect_create_error(write_modified(src, "depth.safetensors", edit_config, (void *)tlay),
                        "transformer_blocks.1.", "missing");
    const char *cls[] = {"class_embed_type", "\"timestep\""};
    expect_create_error(write_modified(src, "class.safetensors", edit_config, (void *)cls),
                        "class_embed_type", NULL);
}
END_TEST

START_TEST(unet_bad_inputs)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(model_path("sdxl-tiny"), &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    df_unet *u = df_unet_create(m, &err);
    ck_assert_msg(u != NULL, "%s", err.msg);
    ck_assert_int_eq(df_unet_size_multiple(u), 4);
    size_t small = df_unet_work_bytes(u, 2, 8, 12, 1), big = df_unet_work_bytes(u, 2, 16, 24, 1);
    ck_assert(small > (size_t)2 * 8 * 12 * 32 * sizeof(float));
    ck_assert(big > 3 * small); /* activations grow with the area */
    small = df_unet_work_bytes(u, 2, 8, 12, 77);
    ck_assert(df_unet_work_bytes(u, 2, 8, 12, 154) > small);
    ck_assert_uint_eq(df_unet_work_bytes(u, 0, 8, 12, 77), 0);
    unet_gold g;
    gold_load("golden/sdxl-tiny/unet.safetensors", 1, &g);
    float out[2 * 4 * 8 * 12];
    df_unet_input in = gold_input(&g, &g.ta);

    df_unet_input bad = in;
    bad.h = 6; /* not a multiple of 4 */
    ck_assert_int_eq(df_unet_forward(u, &bad, out, &err), CM_ERR_USAGE);
    ck_assert_msg(strstr(err.msg, "multiple of 4"), "%s", err.msg);
    bad = in;
    bad.context = NULL;
    ck_assert_int_eq(df_unet_forward(u, &bad, out, &err), CM_ERR_USAGE);
    bad = in;
    bad.text_embeds = NULL;
    ck_assert_int_eq(df_unet_forward(u, &bad, out, &err), CM_ERR_USAGE);
    ck_assert_msg(strstr(err.msg, "text_embeds"), "%s", err.msg);
    bad = in;
    bad.B = 0;
    ck_assert_int_eq(df_unet_forward(u, &bad, out, &err), CM_ERR_USAGE);
    bad = in;
    bad.T = 0;
    ck_assert_int_eq(df_unet_forward(u, &bad, out, &err), CM_ERR_USAGE);
    float tnan[2] = {NAN, 1};
    bad = in;
    bad.timesteps = tnan;
    ck_assert_int_eq(df_unet_forward(u, &bad, out, &err), CM_ERR_USAGE);
    ck_assert_int_eq(df_unet_forward(u, NULL, out, &err), CM_ERR_USAGE);
    /* still works after the refusals */
    ck_assert_msg(df_unet_forward(u, &in, out, &err) == CM_OK, "%s", err.msg);
    TU_ASSERT_CLOSE("sdxl out_a after bad inputs", out, g.out_a.data, cm_tensor_numel(&g.out_a),
                    TOL);
    gold_release(&g);
    df_unet_free(u);
    df_unet_free(NULL);
    wt_model_close(m);
}
END_TEST

/* Every allocation of df_unet_create and of the first forward's buffers
 * can fail: a clean NOMEM, never a crash or a leak (ASan). */
START_TEST(unet_alloc_failure)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(model_path("sd1-tiny"), &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    int ok = 0;
    for (long k = 1; k < 200 && !ok; k++) {
        cm_alloc_fail_at(k);
        df_unet *u = df_unet_create(m, &err);
        cm_alloc_fail_at(0);
        if (!u) {
            ck_assert_int_eq(err.status, CM_ERR_NOMEM);
            continue;
        }
        ok = 1;
        df_unet_free(u);
    }
    ck_assert(ok);

    /* the first forward allocates its buffers, the K/V cache and the
     * context copy, in that order, before any kernel runs */
    unet_gold g;
    gold_load("golden/sd1-tiny/unet.safetensors", 0, &g);
    int64_t n = cm_tensor_numel(&g.out_a);
    float *out = malloc((size_t)n * sizeof(float));
    ck_assert(out);
    df_unet_input in = gold_input(&g, &g.ta);
    for (long k = 1; k <= 3; k++) {
        df_unet *uk = df_unet_create(m, &err);
        ck_assert_msg(uk != NULL, "%s", err.msg);
        cm_alloc_fail_at(k);
        cm_status st = df_unet_forward(uk, &in, out, &err);
        cm_alloc_fail_at(0);
        ck_assert_int_eq(st, CM_ERR_NOMEM);
        df_unet_free(uk);
    }
    df_unet *u = df_unet_create(m, &err);
    ck_assert_msg(u != NULL, "%s", err.msg);
    ck_assert_msg(df_unet_forward(u, &in, out, &err) == CM_OK, "%s", err.msg);
    TU_ASSERT_CLOSE("sd1 out_a after allocation failures", out, g.out_a.data, n, TOL);
    free(out);
    gold_release(&g);
    df_unet_free(u);
    wt_model_close(m);
}
END_TEST

/* --precision bf16 (issue 7): the UNet output of each tiny golden against
 * the float32 reference. Measured (printed): sd1-tiny ~1.0e-2, sd2-tiny
 * ~8e-3, sdxl-tiny ~1.45e-2 — over the 1e-2 that issue 7 asks of a
 * default mode on sdxl-tiny, so bf16 stays opt-in; bound here 2e-2. Needs
 * AVX512_BF16; elsewhere the mode is float32 and this is skipped. */
START_TEST(unet_bf16_bound)
{
    static const struct { const char *cfg; int sdxl; } cases[] = {
        {"sd1-tiny", 0}, {"sd2-tiny", 0}, {"sdxl-tiny", 1}};
    if (!cm_bf16_supported()) {
        printf("skip: no AVX512_BF16\n");
        return;
    }
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        cm_error err = {0};
        wt_model *m = wt_model_open(model_path(cases[c].cfg), &err);
        ck_assert_msg(m != NULL, "%s", err.msg);
        df_unet *u = df_unet_create(m, &err);
        ck_assert_msg(u != NULL, "%s", err.msg);
        char gold[256];
        snprintf(gold, sizeof gold, "golden/%s/unet.safetensors", cases[c].cfg);
        unet_gold g;
        gold_load(gold, cases[c].sdxl, &g);
        int64_t n = cm_tensor_numel(&g.out_a);
        float *out = malloc((size_t)n * sizeof(float));
        ck_assert(out);
        df_unet_input in = gold_input(&g, &g.ta);
        cm_precision_set(CM_PREC_BF16);
        cm_status st = df_unet_forward(u, &in, out, &err);
        cm_precision_set(CM_PREC_F32);
        cm_pack_cache_clear();
        ck_assert_msg(st == CM_OK, "%s", err.msg);
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) {
            double d = (double)out[i] - g.out_a.data[i];
            num += d * d;
            den += (double)g.out_a.data[i] * g.out_a.data[i];
        }
        double rel = sqrt(num / den);
        fprintf(stderr, "bf16 %s UNet out_a: rel-L2 %.3e vs the float32 golden\n", cases[c].cfg, rel);
        ck_assert_msg(rel <= 2e-2, "%s bf16 UNet rel-L2 %.3e > 2e-2", cases[c].cfg, rel);
        ck_assert_msg(rel > 1e-6, "%s: bf16 mode did not change anything (rel-L2 %.3e)", cases[c].cfg, rel);
        free(out);
        gold_release(&g);
        df_unet_free(u);
        wt_model_close(m);
    }
}
END_TEST

TCase *tc_diffusion_unet(void)
{
    TCase *tc = tu_tcase("diffusion_unet");
    tcase_add_test(tc, unet_sd1_golden);
    tcase_add_test(tc, unet_bf16_bound);
    tcase_add_test(tc, unet_sd1_diffusers_golden);
    tcase_add_test(tc, unet_sd2_golden);
    tcase_add_test(tc, unet_sdxl_golden);
    tcase_add_test(tc, unet_inpaint9_golden);
    tcase_add_test(tc, unet_sd1_steps);
    tcase_add_test(tc, unet_sdxl_steps);
    tcase_add_test(tc, unet_threads_and_reuse);
    tcase_add_test(tc, unet_bad_models);
    tcase_add_test(tc, unet_bad_inputs);
    tcase_add_test(tc, unet_alloc_failure);
    return tc;
}
