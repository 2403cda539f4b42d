/* textenc_clip.c — test case textenc_clip: the CLIP text transformers of
 * sd1-tiny / sd2-tiny / sdxl-tiny against the diffusers goldens (golden
 * token ids in, every hidden state out), then the conditioning API
 * (te_encode_pair) and `stipple encode` on the same prompts.
 *
 * Goldens: tests/data/golden/<dir>/{text_encoder,tokens}.safetensors, the
 * models under tests/data/golden/<dir>/model/ (see tests/data/SOURCE.md).
 * Tolerance: 1e-4 x max|golden| (the reference float32 noise is ~1e-6).
 */
#include "testutil.h"
#include "textenc_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4


#define SD1_MODEL "golden/sd1-tiny/model/sd1-tiny_f16.safetensors"
#define SD2_MODEL "golden/sd2-tiny/model/sd2-tiny_f16.safetensors"
#define SDXL_MODEL "golden/sdxl-tiny/model/sdxl-tiny_f16.safetensors"

static wt_model *open_model(const char *rel)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(tu_data(rel), &err);
    ck_assert_msg(m != NULL, "cannot open %s: %s", rel, err.msg);
    return m;
}

/* Golden ids (I32 [4, 77]) as int32. */
static int32_t *golden_ids(const char *rel, const char *name)
{
    cm_tensor t = {0};
    tu_golden(rel, name, &t);
    ck_assert_int_eq(t.ndim, 2);
    ck_assert_int_eq(t.shape[1], TE_CTX);
    int64_t n = cm_tensor_numel(&t);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    ck_assert(ids);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)t.data[i];
    cm_tensor_release(&t);
    return ids;
}

static te_clip *make_clip(wt_model *m, const char *prefix, const char *section)
{
    cm_error err = {0};
    te_clip *c = te_clip_create(m, prefix, section, &err);
    ck_assert_msg(c != NULL, "te_clip_create %s: %s", prefix, err.msg);
    return c;
}

/* Run the tower on the golden ids and compare one output with a golden
 * tensor. layer < 0: compare the pooled output of pool_layer instead. */
static void check_hidden(const te_clip *c, const int32_t *ids, const char *gfile, const char *gname,
                         int layer, int final_ln)
{
    cm_tensor want = {0};
    tu_golden(gfile, gname, &want);
    float *got = malloc((size_t)cm_tensor_numel(&want) * sizeof(float));
    ck_assert(got);
    te_clip_run r = {.layer = layer, .final_ln = final_ln, .out = got};
    cm_error err = {0};
    ck_assert_msg(te_clip_encode(c, ids, 4, &r, &err) == CM_OK, "%s", err.msg);
    char what[128];
    snprintf(what, sizeof what, "%s %s", gfile, gname);
    TU_ASSERT_CLOSE(what, got, want.data, cm_tensor_numel(&want), TOL);
    free(got);
    cm_tensor_release(&want);
}

static void check_pooled(const te_clip *c, const int32_t *ids, const char *gfile, const char *gname,
                         int pool_layer, int project)
{
    cm_tensor want = {0};
    tu_golden(gfile, gname, &want);
    float *got = malloc((size_t)cm_tensor_numel(&want) * sizeof(float));
    ck_assert(got);
    te_clip_run r = {.pool_layer = pool_layer, .project = project, .pooled = got};
    cm_error err = {0};
    ck_assert_msg(te_clip_encode(c, ids, 4, &r, &err) == CM_OK, "%s", err.msg);
    char what[128];
    snprintf(what, sizeof what, "%s %s", gfile, gname);
    TU_ASSERT_CLOSE(what, got, want.data, cm_tensor_numel(&want), TOL);
    free(got);
    cm_tensor_release(&want);
}

/* ------------------------------------------------------------------------
 * The transformers on golden ids
 * ---------------------------------------------------------------------- */

START_TEST(clip_sd1_golden)
{
    const char *g = "golden/sd1-tiny/text_encoder.safetensors";
    wt_model *m = open_model(SD1_MODEL);
    te_clip *c = make_clip(m, "cond_stage_model.transformer.text_model.", "text_encoder");
    const te_clip_config *cfg = te_clip_get_config(c);
    ck_assert_int_eq(cfg->width, 32);
    ck_assert_int_eq(cfg->layers, 3);
    ck_assert_int_eq(cfg->heads, 2);
    ck_assert_int_eq(cfg->act, CM_ACT_QUICK_GELU);
    int32_t *ids = golden_ids("golden/sd1-tiny/tokens.safetensors", "input_ids");
    for (int i = 0; i <= 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "hidden_states.%d", i);
        check_hidden(c, ids, g, name, i, 0);
    }
    check_hidden(c, ids, g, "last_hidden_state", 3, 1);
    check_hidden(c, ids, g, "penultimate_ln", 2, 1);
    check_pooled(c, ids, g, "pooler_output", 3, 0);
    free(ids);
    te_clip_free(c);
    wt_model_close(m);
}
END_TEST

START_TEST(clip_sd2_golden)
{
    const char *g = "golden/sd2-tiny/text_encoder.safetensors";
    wt_model *m = open_model(SD2_MODEL);
    te_clip *c = make_clip(m, "cond_stage_model.model.", "text_encoder");
    const te_clip_config *cfg = te_clip_get_config(c);
    ck_assert_int_eq(cfg->openclip, 1);
    ck_assert_int_eq(cfg->layers, 4); /* the full tower; SD2 uses 3 */
    ck_assert_int_eq(cfg->act, CM_ACT_GELU);
    int32_t *ids = golden_ids("golden/sd2-tiny/tokens.safetensors", "input_ids");
    for (int i = 0; i <= 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "hidden_states.%d", i);
        check_hidden(c, ids, g, name, i, 0);
    }
    check_hidden(c, ids, g, "last_hidden_state", 3, 1);
    check_hidden(c, ids, g, "penultimate_ln", 2, 1);
    check_hidden(c, ids, g, "full_tower_last_hidden_state", 4, 1);
    check_pooled(c, ids, g, "pooler_output", 3, 0);
    free(ids);
    te_clip_free(c);
    wt_model_close(m);
}
END_TEST

START_TEST(clip_sdxl_golden)
{
    const char *g = "golden/sdxl-tiny/text_encoder.safetensors";
    wt_model *m = open_model(SDXL_MODEL);
    te_clip *c1 = make_clip(m, "conditioner.embedders.0.transformer.text_model.", "text_encoder");
    te_clip *c2 = make_clip(m, "conditioner.embedders.1.model.", "text_encoder_2");
    ck_assert_int_eq(te_clip_get_config(c2)->proj, 64);
    int32_t *ids1 = golden_ids("golden/sdxl-tiny/tokens.safetensors", "input_ids");
    int32_t *ids2 = golden_ids("golden/sdxl-tiny/tokens.safetensors", "input_ids_2");
    for (int i = 0; i <= 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "enc1.hidden_states.%d", i);
        check_hidden(c1, ids1, g, name, i, 0);
        snprintf(name, sizeof name, "enc2.hidden_states.%d", i);
        check_hidden(c2, ids2, g, name, i, 0);
    }
    check_hidden(c1, ids1, g, "enc1_penultimate", 2, 0);
    check_hidden(c2, ids2, g, "enc2_penultimate", 2, 0);
    check_hidden(c1, ids1, g, "enc1_last_hidden_state", 3, 1);
    check_hidden(c2, ids2, g, "enc2_last_hidden_state", 3, 1);
    check_pooled(c2, ids2, g, "enc2_text_embeds", 3, 1);

    /* prompt_embeds = concat(enc1 hs[-2], enc2 hs[-2]) along channels */
    cm_tensor want = {0};
    tu_golden(g, "prompt_embeds", &want);
    ck_assert_int_eq(want.shape[2], 96);
    float *a = malloc(4 * 77 * 32 * sizeof(float)), *b = malloc(4 * 77 * 64 * sizeof(float));
    float *cat = malloc(4 * 77 * 96 * sizeof(float));
    ck_assert(a && b && cat);
    cm_error err = {0};
    te_clip_run r1 = {.layer = 2, .out = a}, r2 = {.layer = 2, .out = b};
    ck_assert(te_clip_encode(c1, ids1, 4, &r1, &err) == CM_OK);
    ck_assert(te_clip_encode(c2, ids2, 4, &r2, &err) == CM_OK);
    for (int t = 0; t < 4 * 77; t++) {
        memcpy(cat + t * 96, a + t * 32, 32 * sizeof(float));
        memcpy(cat + t * 96 + 32, b + t * 64, 64 * sizeof(float));
    }
    TU_ASSERT_CLOSE("sdxl prompt_embeds", cat, want.data, cm_tensor_numel(&want), TOL);
    free(a);
    free(b);
    free(cat);
    cm_tensor_release(&want);
    free(ids1);
    free(ids2);
    te_clip_free(c1);
    te_clip_free(c2);
    wt_model_close(m);
}
END_TEST

/* Bad input: ids outside the vocabulary, bad layer, missing tower. */
START_TEST(clip_limits)
{
    wt_model *m = open_model(SD1_MODEL);
    cm_error err = {0};
    ck_assert(te_clip_create(m, "cond_stage_model.model.", NULL, &err) == NULL);
    ck_assert(err.status == CM_ERR_FORMAT);
    ck_assert(strstr(err.msg, "cond_stage_model.model.") != NULL);
    te_clip *c = make_clip(m, "cond_stage_model.transformer.text_model.", NULL);
    int32_t ids[TE_CTX];
    for (int i = 0; i < TE_CTX; i++) ids[i] = TE_EOS;
    ids[0] = TE_BOS;
    float out[TE_CTX * 32];
    te_clip_run r = {.layer = 3, .final_ln = 1, .out = out};
    cm_error_clear(&err);
    ck_assert(te_clip_encode(c, ids, 1, &r, &err) == CM_OK);
    ids[5] = 49408;
    ck_assert(te_clip_encode(c, ids, 1, &r, &err) == CM_ERR_USAGE);
    ids[5] = -1;
    ck_assert(te_clip_encode(c, ids, 1, &r, &err) == CM_ERR_USAGE);
    ids[5] = TE_EOS;
    r.layer = 4;
    ck_assert(te_clip_encode(c, ids, 1, &r, &err) == CM_ERR_USAGE);
    te_clip_free(c);
    te_clip_free(NULL);
    wt_model_close(m);
}
END_TEST


/* Allocation failure: creation and the activation buffer fail cleanly. */
START_TEST(clip_alloc_fail)
{
    wt_model *m = open_model(SD1_MODEL);
    for (long n = 1; n <= 3; n++) {
        cm_error err = {0};
        cm_alloc_fail_at(n);
        te_clip *c = te_clip_create(m, "cond_stage_model.transformer.text_model.", NULL, &err);
        cm_alloc_fail_at(0);
        if (c) {
            te_clip_free(c);
        } else {
            ck_assert_int_eq(err.status, CM_ERR_NOMEM);
        }
    }
    cm_error err = {0};
    te_clip *c = make_clip(m, "cond_stage_model.transformer.text_model.", NULL);
    int32_t ids[TE_CTX];
    for (int i = 0; i < TE_CTX; i++) ids[i] = i ? TE_EOS : TE_BOS;
    float out[TE_CTX * 32];
    te_clip_run r = {.layer = 3, .final_ln = 1, .out = out};
    cm_alloc_fail_at(1);
    cm_status st = te_clip_encode(c, ids, 1, &r, &err);
    cm_alloc_fail_at(0);
    ck_assert_int_eq(st, CM_ERR_NOMEM);
    te_clip_free(c);
    wt_model_close(m);
}
END_TEST

/* Same bits for 1 and 2 threads. */
START_TEST(clip_threads)
{
    wt_model *m = open_model(SDXL_MODEL);
    te_clip *c = make_clip(m, "conditioner.embedders.1.model.", "text_encoder_2");
    int32_t *ids = golden_ids("golden/sdxl-tiny/tokens.safetensors", "input_ids_2");
    size_t n = 4 * 77 * 64;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
    float pa[4 * 64], pb[4 * 64];
    ck_assert(a && b);
    cm_error err = {0};
    te_clip_run r = {.layer = 2, .out = a, .pool_layer = 3, .project = 1, .pooled = pa};
    int saved = cm_threads_get();
    cm_threads_set(1);
    ck_assert(te_clip_encode(c, ids, 4, &r, &err) == CM_OK);
    r.out = b;
    r.pooled = pb;
    cm_threads_set(2);
    ck_assert(te_clip_encode(c, ids, 4, &r, &err) == CM_OK);
    cm_threads_set(saved);
    ck_assert(memcmp(a, b, n * sizeof(float)) == 0);
    ck_assert(memcmp(pa, pb, sizeof pa) == 0);
    free(a);
    free(b);
    free(ids);
    te_clip_free(c);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * The conditioning API: te_encode_pair on a plain prompt reproduces the
 * goldens' rows for P0 (row 0) and the empty negative prompt (row 3).
 * ---------------------------------------------------------------------- */

#define P0 "a photo of a cat"

static te_encoder *make_encoder(wt_model *m)
{
    cm_error err = {0};
    te_encoder *e = te_encoder_create(m, &err);
    ck_assert_msg(e != NULL, "te_encoder_create: %s", err.msg);
    return e;
}

/* Row `row` of a golden (4, ...) tensor against a (1, ...) result. */
static void check_row(const char *what, const cm_tensor *got, const char *gfile, const char *gname, int row)
{
    cm_tensor want = {0};
    tu_golden(gfile, gname, &want);
    int64_t n = cm_tensor_numel(&want) / want.shape[0];
    ck_assert_msg(cm_tensor_numel(got) == n, "%s: %lld values, golden row has %lld", what,
                  (long long)cm_tensor_numel(got), (long long)n);
    TU_ASSERT_CLOSE(what, got->data, want.data + row * n, n, TOL);
    cm_tensor_release(&want);
}

static void encode_ok(te_encoder *e, const char *p, const char *n, int skip, te_cond *c, te_cond *u)
{
    cm_error err = {0};
    ck_assert_msg(te_encode_pair(e, p, n, skip, c, u, &err) == CM_OK, "te_encode_pair: %s", err.msg);
}

START_TEST(encode_sd1_golden)
{
    const char *g = "golden/sd1-tiny/text_encoder.safetensors";
    wt_model *m = open_model(SD1_MODEL);
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0};
    for (int rep = 0; rep < 2; rep++) { /* the second call is served from the cache */
        encode_ok(e, P0, "", 0, &c, &u);
        ck_assert_int_eq(c.context.ndim, 3);
        ck_assert_int_eq(c.context.shape[1], 77);
        ck_assert_int_eq(c.context.shape[2], 32);
        ck_assert(c.pooled.data == NULL);
        check_row("sd1 cond", &c.context, g, "last_hidden_state", 0);
        check_row("sd1 uncond", &u.context, g, "last_hidden_state", 3);
        te_cond_release(&c);
        te_cond_release(&u);
    }
    /* clip skip 2 = penultimate layer + final LN */
    encode_ok(e, P0, "", 2, &c, &u);
    check_row("sd1 cond clip-skip 2", &c.context, g, "penultimate_ln", 0);
    check_row("sd1 uncond clip-skip 2", &u.context, g, "penultimate_ln", 3);
    te_cond_release(&c);
    te_cond_release(&u);
    /* identical prompts: one encoding, two equal results */
    encode_ok(e, P0, P0, 1, &c, &u);
    check_row("sd1 uncond = prompt", &u.context, g, "last_hidden_state", 0);
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

/* The same conditioning from the diffusers folder of sd1-tiny. */
START_TEST(encode_sd1_diffusers)
{
    const char *g = "golden/sd1-tiny/text_encoder.safetensors";
    wt_model *m = open_model("golden/sd1-tiny/model/diffusers");
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0};
    encode_ok(e, P0, "", 0, &c, &u);
    check_row("sd1 diffusers cond", &c.context, g, "last_hidden_state", 0);
    check_row("sd1 diffusers uncond", &u.context, g, "last_hidden_state", 3);
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

START_TEST(encode_sd2_golden)
{
    const char *g = "golden/sd2-tiny/text_encoder.safetensors";
    wt_model *m = open_model(SD2_MODEL);
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0};
    encode_ok(e, P0, "", 0, &c, &u);
    check_row("sd2 cond", &c.context, g, "last_hidden_state", 0);
    check_row("sd2 uncond", &u.context, g, "last_hidden_state", 3);
    te_cond_release(&c);
    te_cond_release(&u);
    encode_ok(e, P0, "", 1, &c, &u); /* clip skip 1: the full tower */
    check_row("sd2 cond clip-skip 1", &c.context, g, "full_tower_last_hidden_state", 0);
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

START_TEST(encode_sdxl_golden)
{
    const char *g = "golden/sdxl-tiny/text_encoder.safetensors";
    wt_model *m = open_model(SDXL_MODEL);
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0};
    encode_ok(e, P0, "", 0, &c, &u);
    ck_assert_int_eq(c.context.shape[2], 96);
    check_row("sdxl cond", &c.context, g, "prompt_embeds", 0);
    check_row("sdxl pooled", &c.pooled, g, "enc2_text_embeds", 0);
    /* force_zeros_for_empty_prompt */
    ck_assert_int_eq(u.context.shape[1], 77);
    for (int64_t i = 0; i < cm_tensor_numel(&u.context); i++) ck_assert(u.context.data[i] == 0.0f);
    for (int64_t i = 0; i < cm_tensor_numel(&u.pooled); i++) ck_assert(u.pooled.data[i] == 0.0f);
    te_cond_release(&c);
    te_cond_release(&u);
    /* a non-empty negative prompt is encoded (row 0 as negative here) */
    encode_ok(e, "", P0, 0, &c, &u);
    check_row("sdxl uncond = P0", &u.context, g, "prompt_embeds", 0);
    check_row("sdxl uncond pooled = P0", &u.pooled, g, "enc2_text_embeds", 0);
    check_row("sdxl cond = empty", &c.context, g, "prompt_embeds", 3);
    check_row("sdxl cond pooled = empty", &c.pooled, g, "enc2_text_embeds", 3);
    te_cond_release(&c);
    te_cond_release(&u);
    /* "!" is id 0 for enc2 only (more tokens there): the windows still match */
    char bang[1024] = "";
    for (int i = 0; i < 30; i++) strcat(bang, "wow!!! ");
    encode_ok(e, bang, "", 0, &c, &u);
    ck_assert_int_eq(c.context.shape[1] % 77, 0);
    ck_assert_int_eq(c.context.shape[1], u.context.shape[1]);
    ck_assert_int_eq(c.context.shape[1], 2 * 77);
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

/* Emphasis: (x:w) scales those tokens' states, then the window's mean is
 * restored; a long prompt gives more windows and uncond is padded to match. */
START_TEST(encode_emphasis_chunks)
{
    wt_model *m = open_model(SD1_MODEL);
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0}, c0 = {0}, u0 = {0};
    encode_ok(e, P0, "", 0, &c0, &u0);
    encode_ok(e, "a photo of a (cat:1.5)", "", 0, &c, &u);
    ck_assert_int_eq(c.context.shape[1], 77);
    const int C = 32;
    double m0 = 0, m1 = 0;
    for (int i = 0; i < 77 * C; i++) {
        m0 += c0.context.data[i];
        m1 += c.context.data[i];
    }
    ck_assert_msg(fabs(m0 - m1) <= 1e-4 * fabs(m0) + 1e-3, "mean not restored: %g vs %g", m0, m1);
    /* token 5 ("cat") is scaled by 1.5 relative to its neighbours */
    int64_t n5 = 5 * C;
    double f = (double)c.context.data[n5 + 3] / c0.context.data[n5 + 3];
    double f1 = (double)c.context.data[1 * C + 3] / c0.context.data[1 * C + 3];
    ck_assert_msg(fabs(f / f1 - 1.5) < 1e-4, "weight ratio %g (want 1.5)", f / f1);
    te_cond_release(&c);
    te_cond_release(&u);
    /* more than 75 tokens: two windows, uncond padded to two windows */
    char longp[2048] = "";
    for (int i = 0; i < 100; i++) strcat(longp, "cat ");
    encode_ok(e, longp, "", 0, &c, &u);
    ck_assert_int_eq(c.context.shape[1], 154);
    ck_assert_int_eq(u.context.shape[1], 154);
    /* both uncond windows are the empty prompt's encoding */
    TU_ASSERT_CLOSE("uncond window 2", u.context.data + 77 * C, u0.context.data, 77 * C, 1e-6);
    te_cond_release(&c);
    te_cond_release(&u);
    te_cond_release(&c0);
    te_cond_release(&u0);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

/* `stipple encode` writes (2, T, C) rows [uncond, cond]. */
START_TEST(encode_cli)
{
    char cmd[8192], out[4096];
    snprintf(out, sizeof out, "%s/enc_sd1.npy", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "%s encode -m %s -p '%s' -o %s", tu_stipple(), tu_data(SD1_MODEL), P0, out);
    char *so = NULL, *se = NULL;
    int rc = tu_run(cmd, &so, &se);
    ck_assert_msg(rc == 0, "stipple encode exit %d: %s", rc, se ? se : "");
    cm_free(so);
    cm_free(se);
    cm_tensor t = {0};
    cm_error err = {0};
    ck_assert_msg(cm_npy_read(out, &t, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(t.ndim, 3);
    ck_assert_int_eq(t.shape[0], 2);
    ck_assert_int_eq(t.shape[1], 77);
    ck_assert_int_eq(t.shape[2], 32);
    cm_tensor want = {0};
    tu_golden("golden/sd1-tiny/text_encoder.safetensors", "last_hidden_state", &want);
    TU_ASSERT_CLOSE("encode uncond", t.data, want.data + 3 * 77 * 32, 77 * 32, TOL);
    TU_ASSERT_CLOSE("encode cond", t.data + 77 * 32, want.data, 77 * 32, TOL);
    cm_tensor_release(&t);
    cm_tensor_release(&want);

    /* SDXL: pooled beside it */
    snprintf(out, sizeof out, "%s/enc_sdxl.npy", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "%s encode -m %s -p '%s' -o %s --quiet", tu_stipple(), tu_data(SDXL_MODEL), P0, out);
    rc = tu_run(cmd, &so, &se);
    ck_assert_msg(rc == 0, "stipple encode exit %d: %s", rc, se ? se : "");
    cm_free(so);
    cm_free(se);
    snprintf(out, sizeof out, "%s/enc_sdxl.pooled.npy", tu_tmpdir());
    ck_assert_msg(cm_npy_read(out, &t, &err) == CM_OK, "%s", err.msg);
    ck_assert_int_eq(t.ndim, 2);
    ck_assert_int_eq(t.shape[0], 2);
    tu_golden("golden/sdxl-tiny/text_encoder.safetensors", "enc2_text_embeds", &want);
    TU_ASSERT_CLOSE("encode sdxl pooled cond", t.data + 64, want.data, 64, TOL);
    cm_tensor_release(&t);
    cm_tensor_release(&want);

    /* usage errors: exit 2, one line */
    snprintf(cmd, sizeof cmd, "%s encode -m %s -o %s", tu_stipple(), tu_data(SD1_MODEL), out);
    rc = tu_run(cmd, &so, &se);
    ck_assert_int_eq(rc, 2);
    cm_free(so);
    cm_free(se);
    snprintf(cmd, sizeof cmd, "%s encode -m /nonexistent.safetensors -p x -o %s", tu_stipple(), out);
    rc = tu_run(cmd, &so, &se);
    ck_assert_int_eq(rc, 1);
    ck_assert(se && strstr(se, "stipple: error:") == se);
    cm_free(so);
    cm_free(se);
}
END_TEST

/* --clip-skip on SD2 counts from the full OpenCLIP tower (2 = the default,
 * penultimate layer) whatever the file holds: a diffusers SD2 text encoder
 * already lacks the last layer (text_layers_used = all of its layers).
 * Simulated with sd2-tiny whose stipple.config says text_layers_used 4 (of
 * 4 layers in the file): the same tower one layer shallower than in full. */
START_TEST(encode_sd2_layers_used)
{
    const char *g = "golden/sd2-tiny/text_encoder.safetensors";
    const char *path = tu_st_patch(tu_data(SD2_MODEL), "sd2_layers_used4.safetensors",
                                   "text_layers_used\\\": 3", "text_layers_used\\\": 4");
    cm_error err = {0};
    wt_model *m = wt_model_open(path, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0};
    /* default and --clip-skip 2: all 4 layers (the "full tower" golden here) */
    for (int skip = 0; skip <= 2; skip += 2) {
        encode_ok(e, P0, "", skip, &c, &u);
        check_row(skip ? "sd2 used-4 clip-skip 2" : "sd2 used-4 default", &c.context, g,
                  "full_tower_last_hidden_state", 0);
        te_cond_release(&c);
        te_cond_release(&u);
    }
    /* --clip-skip 3: one layer less, what clip-skip 2 gives on the original */
    encode_ok(e, P0, "", 3, &c, &u);
    check_row("sd2 used-4 clip-skip 3", &c.context, g, "last_hidden_state", 0);
    te_cond_release(&c);
    te_cond_release(&u);
    /* --clip-skip 1 asks for a layer the file lacks: the last one, no error */
    encode_ok(e, P0, "", 1, &c, &u);
    check_row("sd2 used-4 clip-skip 1", &c.context, g, "full_tower_last_hidden_state", 0);
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * SDXL encoder 2 in HF naming (what weights/diffusers.c exposes for a
 * diffusers text_encoder_2: CLIPTextModelWithProjection, separate q/k/v,
 * text_projection.weight [P, W]) gives the same conditioning and pooled
 * embedding as the OpenCLIP naming. Built from sdxl-tiny: q/k/v are row
 * ranges of in_proj, the projection is stored transposed.
 * ---------------------------------------------------------------------- */

static void add_entry(cJSON *hdr, const char *name, const char *dtype, const cJSON *shape, uint64_t b,
                      uint64_t e)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddStringToObject(t, "dtype", dtype);
    cJSON_AddItemToObject(t, "shape", cJSON_Duplicate(shape, 1));
    cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)b));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)e));
    cJSON_AddItemToObject(hdr, name, t);
}

static const char *sdxl_hf_enc2_model(void)
{
    static const char OC[] = "conditioner.embedders.1.model.", HF[] = "conditioner.embedders.1.transformer.";
    static const struct { const char *oc, *hf; } sub[] = {
        {"ln_1.", "layer_norm1."},       {"ln_2.", "layer_norm2."},   {"mlp.c_fc.", "mlp.fc1."},
        {"mlp.c_proj.", "mlp.fc2."},     {"attn.out_proj.", "self_attn.out_proj."},
    };
    char *data = NULL;
    size_t n = 0;
    cm_error err = {0};
    ck_assert(cm_file_read_all(tu_data(SDXL_MODEL), &data, &n, &err) == CM_OK);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (unsigned char)data[i];
    cJSON *old = cJSON_ParseWithLength(data + 8, (size_t)hl);
    ck_assert(old);
    const uint64_t body = n - 8 - hl;
    cJSON *hdr = cJSON_CreateObject();
    unsigned char *proj_t = NULL; /* text_projection transposed, appended after the data */
    size_t proj_bytes = 0;
    char name[512];
    for (cJSON *it = old->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            cJSON_AddItemToObject(hdr, "__metadata__", cJSON_Duplicate(it, 1));
            continue;
        }
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItem(it, "dtype"));
        const cJSON *sh = cJSON_GetObjectItem(it, "shape");
        const cJSON *off = cJSON_GetObjectItem(it, "data_offsets");
        uint64_t b = (uint64_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        uint64_t e = (uint64_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        if (strncmp(it->string, OC, sizeof OC - 1)) {
            add_entry(hdr, it->string, dt, sh, b, e);
            continue;
        }
        const char *r = it->string + sizeof OC - 1;
        int layer;
        char rest[256];
        if (!strcmp(r, "logit_scale")) continue;
        if (!strcmp(r, "token_embedding.weight")) {
            snprintf(name, sizeof name, "%stext_model.embeddings.token_embedding.weight", HF);
        } else if (!strcmp(r, "positional_embedding")) {
            snprintf(name, sizeof name, "%stext_model.embeddings.position_embedding.weight", HF);
        } else if (!strncmp(r, "ln_final.", 9)) {
            snprintf(name, sizeof name, "%stext_model.final_layer_norm.%s", HF, r + 9);
        } else if (!strcmp(r, "text_projection")) {
            ck_assert_str_eq(dt, "F16");
            int W = cJSON_GetArrayItem(sh, 0)->valueint, P = cJSON_GetArrayItem(sh, 1)->valueint;
            proj_bytes = (size_t)W * P * 2;
            proj_t = malloc(proj_bytes);
            const unsigned char *src = (const unsigned char *)data + 8 + hl + b;
            for (int w = 0; w < W; w++)
                for (int q = 0; q < P; q++) memcpy(proj_t + ((size_t)q * W + w) * 2, src + ((size_t)w * P + q) * 2, 2);
            cJSON *tsh = cJSON_CreateIntArray((int[]){P, W}, 2);
            snprintf(name, sizeof name, "%stext_projection.weight", HF);
            add_entry(hdr, name, dt, tsh, body, body + proj_bytes);
            cJSON_Delete(tsh);
            continue;
        } else if (sscanf(r, "transformer.resblocks.%d.%255s", &layer, rest) == 2) {
            if (!strncmp(rest, "attn.in_proj_", 13)) { /* [3W, W] / [3W]: rows q | k | v */
                int is_w = !strcmp(rest + 13, "weight");
                uint64_t third = (e - b) / 3;
                cJSON *qsh = cJSON_Duplicate(sh, 1);
                cJSON_SetNumberValue(cJSON_GetArrayItem(qsh, 0), cJSON_GetArrayItem(sh, 0)->valuedouble / 3);
                for (int k = 0; k < 3; k++) {
                    snprintf(name, sizeof name, "%stext_model.encoder.layers.%d.self_attn.%c_proj.%s", HF, layer,
                             "qkv"[k], is_w ? "weight" : "bias");
                    add_entry(hdr, name, dt, qsh, b + k * third, b + (k + 1) * third);
                }
                cJSON_Delete(qsh);
                continue;
            }
            size_t k = 0;
            while (k < sizeof sub / sizeof sub[0] && strncmp(rest, sub[k].oc, strlen(sub[k].oc))) k++;
            ck_assert_msg(k < sizeof sub / sizeof sub[0], "unexpected tensor %s", it->string);
            snprintf(name, sizeof name, "%stext_model.encoder.layers.%d.%s%s", HF, layer, sub[k].hf,
                     rest + strlen(sub[k].oc));
        } else {
            ck_abort_msg("unexpected tensor %s", it->string);
        }
        add_entry(hdr, name, dt, sh, b, e);
    }
    ck_assert(proj_t != NULL);
    char *h = cJSON_PrintUnformatted(hdr);
    unsigned char *all = malloc(body + proj_bytes);
    memcpy(all, data + 8 + hl, body);
    memcpy(all + body, proj_t, proj_bytes);
    const char *path = tu_st_write("sdxl_hf_enc2.safetensors", h, 0, all, body + proj_bytes);
    free(all);
    free(proj_t);
    free(h);
    cJSON_Delete(hdr);
    cJSON_Delete(old);
    cm_free(data);
    return path;
}

START_TEST(encode_sdxl_hf_enc2)
{
    const char *g = "golden/sdxl-tiny/text_encoder.safetensors";
    cm_error err = {0};
    wt_model *m = wt_model_open(sdxl_hf_enc2_model(), &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert(wt_model_get(m, "conditioner.embedders.1.model.token_embedding.weight") == NULL);
    ck_assert(wt_model_get(m, "conditioner.embedders.1.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"));
    te_encoder *e = make_encoder(m);
    te_cond c = {0}, u = {0};
    encode_ok(e, P0, "", 0, &c, &u);
    check_row("sdxl hf-enc2 cond", &c.context, g, "prompt_embeds", 0);
    check_row("sdxl hf-enc2 pooled", &c.pooled, g, "enc2_text_embeds", 0);
    te_cond_release(&c);
    te_cond_release(&u);
    encode_ok(e, "", P0, 0, &c, &u);
    check_row("sdxl hf-enc2 uncond", &u.context, g, "prompt_embeds", 0);
    check_row("sdxl hf-enc2 cond = empty", &c.context, g, "prompt_embeds", 3);
    check_row("sdxl hf-enc2 pooled = empty", &c.pooled, g, "enc2_text_embeds", 3);
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);
}
END_TEST

TCase *tc_textenc_clip(void)
{
    TCase *tc = tu_tcase("textenc_clip");
    tcase_add_test(tc, clip_sd1_golden);
    tcase_add_test(tc, clip_sd2_golden);
    tcase_add_test(tc, clip_sdxl_golden);
    tcase_add_test(tc, clip_limits);
    tcase_add_test(tc, clip_alloc_fail);
    tcase_add_test(tc, clip_threads);
    tcase_add_test(tc, encode_sd1_golden);
    tcase_add_test(tc, encode_sd1_diffusers);
    tcase_add_test(tc, encode_sd2_golden);
    tcase_add_test(tc, encode_sd2_layers_used);
    tcase_add_test(tc, encode_sdxl_golden);
    tcase_add_test(tc, encode_sdxl_hf_enc2);
    tcase_add_test(tc, encode_emphasis_chunks);
    tcase_add_test(tc, encode_cli);
    return tc;
}
