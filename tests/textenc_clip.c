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

TCase *tc_textenc_clip(void)
{
    TCase *tc = tu_tcase("textenc_clip");
    tcase_add_test(tc, clip_sd1_golden);
    tcase_add_test(tc, clip_sd2_golden);
    tcase_add_test(tc, clip_sdxl_golden);
    tcase_add_test(tc, clip_limits);
    return tc;
}
