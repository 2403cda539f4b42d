/* textenc_t5.c — test case textenc_t5: the T5 tokenizer (SentencePiece
 * shim, built-in spiece.model), the T5 v1.1 encoder and the SD3
 * conditioning (CLIP-L + CLIP-G + T5) against the sd3-tiny goldens.
 *
 * Goldens: tests/data/golden/sd3-tiny/{tokens,text_encoders}.safetensors,
 * models tests/data/golden/sd3-tiny/model/ (denoiser file plus the three
 * separate text encoder files, loaded under the combined-file prefixes
 * text_encoders.{clip_l,clip_g,t5xxl}.transformer.). See tests/data/SOURCE.md.
 * Tolerance: 1e-4 x max|golden| (the reference float32 noise is ~1e-6).
 */
#include "testutil.h"
#include "textenc_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4
#define SD3_DIR "golden/sd3-tiny/"
#define SD3_MODEL SD3_DIR "model/sd3-tiny_f16.safetensors"
#define T5_PREFIX "text_encoders.t5xxl.transformer."

/* The sd3-tiny model with its separate text encoder files added (all of
 * them, or without T5 when no_t5). */
static wt_model *open_sd3(int no_t5)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(tu_data(SD3_MODEL), &err);
    ck_assert_msg(m != NULL, "cannot open %s: %s", SD3_MODEL, err.msg);
    ck_assert_msg(wt_model_add_file(m, tu_data(SD3_DIR "model/text_encoders/clip_l_f16.safetensors"),
                                    "text_encoders.clip_l.transformer.", &err) == CM_OK, "%s", err.msg);
    ck_assert_msg(wt_model_add_file(m, tu_data(SD3_DIR "model/text_encoders/clip_g_f16.safetensors"),
                                    "text_encoders.clip_g.transformer.", &err) == CM_OK, "%s", err.msg);
    if (!no_t5)
        ck_assert_msg(wt_model_add_file(m, tu_data(SD3_DIR "model/text_encoders/t5xxl_f16.safetensors"),
                                        T5_PREFIX, &err) == CM_OK, "%s", err.msg);
    return m;
}

static const char *prompt_at(cJSON *meta, int i)
{
    const cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(meta, "prompts"), i);
    ck_assert(cJSON_IsString(p));
    return p->valuestring;
}

/* ------------------------------------------------------------------------
 * Tokenizer
 * ---------------------------------------------------------------------- */

START_TEST(t5_ids_golden)
{
    cm_tensor want = {0};
    tu_golden(SD3_DIR "tokens.safetensors", "input_ids_3", &want);
    ck_assert_int_eq(want.ndim, 2);
    ck_assert_int_eq(want.shape[1], TE_T5_MAX_LEN);
    cJSON *meta = tu_golden_meta(SD3_DIR "tokens.safetensors");
    cm_error err = {0};
    te_t5_tokenizer *t = te_t5_tokenizer_create(&err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    int32_t ids[TE_T5_MAX_LEN];
    for (int r = 0; r < (int)want.shape[0]; r++) {
        const char *p = prompt_at(meta, r);
        int n = -1;
        ck_assert_msg(te_t5_tokenize(t, p, TE_T5_MAX_LEN, ids, &n, &err) == CM_OK, "%s", err.msg);
        for (int i = 0; i < TE_T5_MAX_LEN; i++)
            ck_assert_msg(ids[i] == (int32_t)want.data[r * TE_T5_MAX_LEN + i],
                          "prompt %d position %d: id %d, reference %d", r, i, ids[i],
                          (int)want.data[r * TE_T5_MAX_LEN + i]);
        ck_assert_int_eq(ids[n - 1], TE_T5_EOS);
    }
    /* truncation: max_len - 1 pieces + EOS */
    const char *longp = prompt_at(meta, 2);
    int n = 0;
    ck_assert_int_eq(te_t5_tokenize(t, longp, 8, ids, &n, &err), CM_OK);
    ck_assert_int_eq(n, 8);
    for (int i = 0; i < 7; i++) ck_assert_int_eq(ids[i], (int32_t)want.data[2 * TE_T5_MAX_LEN + i]);
    ck_assert_int_eq(ids[7], TE_T5_EOS);
    ck_assert_int_eq(te_t5_tokenize(t, "x", 0, ids, &n, &err), CM_ERR_USAGE);
    /* invalid UTF-8 does not crash */
    ck_assert_int_eq(te_t5_tokenize(t, "\xff\xfe a \xc3", 16, ids, &n, &err), CM_OK);
    te_t5_tokenizer_free(t);
    te_t5_tokenizer_free(NULL);
    cJSON_Delete(meta);
    cm_tensor_release(&want);
}
END_TEST

/* ------------------------------------------------------------------------
 * Encoder
 * ---------------------------------------------------------------------- */

static int32_t *golden_t5_ids(int *B)
{
    cm_tensor t = {0};
    tu_golden(SD3_DIR "tokens.safetensors", "input_ids_3", &t);
    int64_t n = cm_tensor_numel(&t);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    ck_assert(ids);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)t.data[i];
    *B = (int)t.shape[0];
    cm_tensor_release(&t);
    return ids;
}

/* T5 output = prompt_embeds[:, 77:, :] */
static float *golden_t5_out(int B, int D)
{
    cm_tensor pe = {0};
    tu_golden(SD3_DIR "text_encoders.safetensors", "prompt_embeds", &pe);
    ck_assert_int_eq(pe.shape[0], B);
    ck_assert_int_eq(pe.shape[1], TE_CTX + TE_T5_MAX_LEN);
    ck_assert_int_eq(pe.shape[2], D);
    float *w = malloc((size_t)B * TE_T5_MAX_LEN * D * sizeof(float));
    ck_assert(w);
    for (int b = 0; b < B; b++)
        memcpy(w + (size_t)b * TE_T5_MAX_LEN * D, pe.data + ((size_t)b * pe.shape[1] + TE_CTX) * D,
               (size_t)TE_T5_MAX_LEN * D * sizeof(float));
    cm_tensor_release(&pe);
    return w;
}

START_TEST(t5_encoder_golden)
{
    wt_model *m = open_sd3(0);
    cm_error err = {0};
    te_t5 *t = te_t5_create(m, T5_PREFIX, "text_encoder_3", &err);
    ck_assert_msg(t != NULL, "%s", err.msg);
    const te_t5_config *g = te_t5_get_config(t);
    ck_assert_int_eq(g->d_model, 128);
    ck_assert_int_eq(g->layers, 2);
    ck_assert_int_eq(g->heads, 2);
    ck_assert_int_eq(g->d_kv, 64);
    int B;
    int32_t *ids = golden_t5_ids(&B);
    float *want = golden_t5_out(B, g->d_model);
    size_t n = (size_t)B * TE_T5_MAX_LEN * g->d_model;
    float *got = malloc(n * sizeof(float));
    ck_assert(got);
    ck_assert_msg(te_t5_encode(t, ids, B, TE_T5_MAX_LEN, got, &err) == CM_OK, "%s", err.msg);
    TU_ASSERT_CLOSE("T5 last_hidden_state", got, want, (int64_t)n, TOL);

    /* thread count does not change a bit */
    float *got1 = malloc(n * sizeof(float));
    ck_assert(got1);
    int nt = cm_threads_get();
    cm_threads_set(1);
    ck_assert(te_t5_encode(t, ids, B, TE_T5_MAX_LEN, got1, &err) == CM_OK);
    cm_threads_set(2);
    ck_assert(te_t5_encode(t, ids, B, TE_T5_MAX_LEN, got, &err) == CM_OK);
    cm_threads_set(nt);
    ck_assert(memcmp(got, got1, n * sizeof(float)) == 0);

    /* the same model without a config section (shapes only) */
    te_t5 *t2 = te_t5_create(m, T5_PREFIX, NULL, &err);
    ck_assert_msg(t2 != NULL, "%s", err.msg);
    ck_assert_int_eq(te_t5_get_config(t2)->d_kv, 64);
    ck_assert_int_eq(te_t5_get_config(t2)->buckets, 32);
    te_t5_free(t2);

    free(got1);
    free(got);
    free(want);
    free(ids);
    te_t5_free(t);
    wt_model_close(m);
}
END_TEST

START_TEST(t5_buckets)
{
    /* transformers' _relative_position_bucket, 32 buckets, max distance
     * 128, bidirectional (values from its formula by hand: exact below 8,
     * log buckets 8..15, +16 for keys after the query) */
    ck_assert_int_eq(te_t5_bucket(0, 32, 128), 0);
    ck_assert_int_eq(te_t5_bucket(-1, 32, 128), 1);
    ck_assert_int_eq(te_t5_bucket(1, 32, 128), 17);
    ck_assert_int_eq(te_t5_bucket(-7, 32, 128), 7);
    ck_assert_int_eq(te_t5_bucket(-8, 32, 128), 8);
    ck_assert_int_eq(te_t5_bucket(-16, 32, 128), 10);  /* 8 + int(log(2)/log(16)*8) = 8 + 2 */
    ck_assert_int_eq(te_t5_bucket(-127, 32, 128), 15);
    ck_assert_int_eq(te_t5_bucket(-1000, 32, 128), 15);
    ck_assert_int_eq(te_t5_bucket(1000, 32, 128), 31);
}
END_TEST

START_TEST(t5_limits)
{
    wt_model *m = open_sd3(1);
    cm_error err = {0};
    /* no T5 in the model: a clear error naming the tensor */
    ck_assert(te_t5_create(m, T5_PREFIX, "text_encoder_3", &err) == NULL);
    ck_assert_msg(strstr(err.msg, "shared.weight") != NULL, "%s", err.msg);
    wt_model_close(m);

    m = open_sd3(0);
    te_t5 *t = te_t5_create(m, T5_PREFIX, NULL, &err);
    ck_assert(t);
    int32_t ids[4] = {0, 1, 40000, 2};
    float out[4 * 128];
    ck_assert_int_eq(te_t5_encode(t, ids, 1, 4, out, &err), CM_ERR_USAGE);
    ck_assert_msg(strstr(err.msg, "40000") != NULL, "%s", err.msg);
    ids[2] = -1;
    ck_assert_int_eq(te_t5_encode(t, ids, 1, 4, out, &err), CM_ERR_USAGE);
    ck_assert_int_eq(te_t5_encode(t, ids, 0, 4, out, &err), CM_ERR_USAGE);
    ids[2] = 5;
    cm_alloc_fail_at(1);
    ck_assert_int_eq(te_t5_encode(t, ids, 1, 4, out, &err), CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
    ck_assert_int_eq(te_t5_encode(t, ids, 1, 4, out, &err), CM_OK);
    te_t5_free(t);
    wt_model_close(m);
}
END_TEST

/* ------------------------------------------------------------------------
 * SD3 conditioning (te_encoder on family sd3)
 * ---------------------------------------------------------------------- */

static void check_row(const te_cond *c, const cm_tensor *pe, const cm_tensor *pool, int row, int t5_zero,
                      const char *what)
{
    const int64_t T = pe->shape[1], W = pe->shape[2], P = pool->shape[1];
    ck_assert_int_eq(c->context.ndim, 3);
    ck_assert_int_eq(c->context.shape[1], T);
    ck_assert_int_eq(c->context.shape[2], W);
    ck_assert_int_eq(c->pooled.shape[1], P);
    char name[128];
    const float *want = pe->data + (size_t)row * T * W;
    snprintf(name, sizeof name, "%s: prompt_embeds row %d, CLIP part", what, row);
    TU_ASSERT_CLOSE(name, c->context.data, want, TE_CTX * W, TOL);
    if (t5_zero) {
        for (int64_t i = TE_CTX * W; i < T * W; i++) ck_assert(c->context.data[i] == 0.0f);
    } else {
        snprintf(name, sizeof name, "%s: prompt_embeds row %d, T5 part", what, row);
        TU_ASSERT_CLOSE(name, c->context.data + TE_CTX * W, want + TE_CTX * W, (T - TE_CTX) * W, TOL);
    }
    snprintf(name, sizeof name, "%s: pooled_projections row %d", what, row);
    TU_ASSERT_CLOSE(name, c->pooled.data, pool->data + (size_t)row * P, P, TOL);
}

START_TEST(sd3_conditioning_golden)
{
    cm_tensor pe = {0}, pool = {0};
    tu_golden(SD3_DIR "text_encoders.safetensors", "prompt_embeds", &pe);
    tu_golden(SD3_DIR "text_encoders.safetensors", "pooled_projections", &pool);
    cJSON *meta = tu_golden_meta(SD3_DIR "tokens.safetensors");
    wt_model *m = open_sd3(0);
    ck_assert_int_eq(wt_model_family(m), WT_FAMILY_SD3);
    cm_error err = {0};
    te_encoder *e = te_encoder_create(m, &err);
    ck_assert_msg(e != NULL, "%s", err.msg);
    te_cond c = {0}, u = {0};
    /* rows 0..2 = P0..P2 (P2 long: truncated), row 3 = "" */
    for (int r = 0; r < 3; r++) {
        ck_assert_msg(te_encode_pair(e, prompt_at(meta, r), prompt_at(meta, 3), 0, &c, &u, &err) == CM_OK, "%s",
                      err.msg);
        check_row(&c, &pe, &pool, r, 0, "cond");
        check_row(&u, &pe, &pool, 3, 0, "uncond");
        te_cond_release(&c);
        te_cond_release(&u);
    }
    /* same prompt and negative: one encoding, two equal conds */
    ck_assert(te_encode_pair(e, prompt_at(meta, 1), prompt_at(meta, 1), 0, &c, &u, &err) == CM_OK);
    check_row(&u, &pe, &pool, 1, 0, "uncond = cond");
    te_cond_release(&c);
    te_cond_release(&u);

    /* --no-t5: the T5 rows are zeros, the rest unchanged */
    ck_assert_int_eq(te_encoder_set_t5(e, 0, TE_T5_MAX_LEN, &err), CM_OK);
    ck_assert(te_encode_pair(e, prompt_at(meta, 0), "", 0, &c, &u, &err) == CM_OK);
    check_row(&c, &pe, &pool, 0, 1, "no-t5 cond");
    check_row(&u, &pe, &pool, 3, 1, "no-t5 uncond");
    te_cond_release(&c);
    te_cond_release(&u);
    /* a shorter T5 sequence: 77 + 16 rows (no golden: T5 attention sees
     * the padding, so the states differ from the 256-token run) */
    ck_assert_int_eq(te_encoder_set_t5(e, 1, 16, &err), CM_OK);
    ck_assert(te_encode_pair(e, prompt_at(meta, 0), "", 0, &c, &u, &err) == CM_OK);
    ck_assert_int_eq(c.context.shape[1], TE_CTX + 16);
    te_cond_release(&c);
    te_cond_release(&u);
    ck_assert_int_eq(te_encoder_set_t5(e, 1, 0, &err), CM_ERR_USAGE);
    te_encoder_free(e);
    wt_model_close(m);

    /* a model without T5: zeros of the same shape */
    m = open_sd3(1);
    e = te_encoder_create(m, &err);
    ck_assert_msg(e != NULL, "%s", err.msg);
    ck_assert(te_encode_pair(e, prompt_at(meta, 2), "", 0, &c, &u, &err) == CM_OK);
    check_row(&c, &pe, &pool, 2, 1, "without T5");
    te_cond_release(&c);
    te_cond_release(&u);
    te_encoder_free(e);
    wt_model_close(m);

    /* SD1 has no T5 options */
    m = wt_model_open(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), &err);
    ck_assert(m);
    e = te_encoder_create(m, &err);
    ck_assert(e);
    ck_assert_int_eq(te_encoder_set_t5(e, 0, 256, &err), CM_ERR_USAGE);
    te_encoder_free(e);
    wt_model_close(m);

    cJSON_Delete(meta);
    cm_tensor_release(&pe);
    cm_tensor_release(&pool);
}
END_TEST

TCase *tc_textenc_t5(void)
{
    TCase *tc = tu_tcase("textenc_t5");
    tcase_add_test(tc, t5_ids_golden);
    tcase_add_test(tc, t5_buckets);
    tcase_add_test(tc, t5_encoder_golden);
    tcase_add_test(tc, t5_limits);
    tcase_add_test(tc, sd3_conditioning_golden);
    return tc;
}
