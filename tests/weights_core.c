/* weights_core.c — test case weights_core: SHA-256, model opening with a
 * stipple.config, family detection of checkpoints without one, diffusers
 * folders mapped onto canonical names, and `stipple info`.
 *
 * Expected values come from the golden set (tests/data/golden): each tiny
 * model's config.json (diffusers configs written by the reference), its
 * .keys.tsv (names, dtypes, shapes) and the single-file model itself.
 */
#include "testutil.h"
#include "weights_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static char *slurp(const char *path, size_t *n)
{
    char *d = NULL;
    cm_error err = {0};
    ck_assert_msg(cm_file_read_all(path, &d, n, &err) == CM_OK, "%s", err.msg);
    return d;
}

static void spit(const char *path, const void *a, size_t na, const void *b, size_t nb)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fwrite(a, 1, na, f) == na);
    if (nb) ck_assert(fwrite(b, 1, nb, f) == nb);
    ck_assert(fclose(f) == 0);
}

/* When set, synth_from_keys renames prefix rename_from to rename_to. */
static const char *rename_from, *rename_to;

/* A safetensors file with the names, dtypes and shapes of a .keys.tsv and
 * zero data; only tensors whose name starts with one of `keep` (NULL: all). */
static const char *synth_from_keys(const char *keys_rel, const char *out_name, const char *const *keep)
{
    size_t n;
    char *tsv = slurp(tu_data(keys_rel), &n);
    cJSON *hdr = cJSON_CreateObject();
    uint64_t off = 0;
    char *save = NULL;
    int line = 0;
    for (char *l = strtok_r(tsv, "\n", &save); l; l = strtok_r(NULL, "\n", &save), line++) {
        if (line == 0) continue; /* column names */
        char *t1 = strchr(l, '\t');
        ck_assert(t1);
        *t1 = 0;
        char *t2 = strchr(t1 + 1, '\t');
        ck_assert(t2);
        *t2 = 0;
        char *t3 = strchr(t2 + 1, '\t'); /* weights_manifest.tsv has more columns */
        if (t3) *t3 = 0;
        const char *name = l, *dt = t1 + 1, *shape = t2 + 1;
        int ok = keep == NULL;
        for (int i = 0; keep && keep[i]; i++)
            if (!strncmp(name, keep[i], strlen(keep[i]))) ok = 1;
        if (!ok) continue;
        char renamed[1024];
        if (rename_from && !strncmp(name, rename_from, strlen(rename_from))) {
            snprintf(renamed, sizeof renamed, "%s%s", rename_to, name + strlen(rename_from));
            name = renamed;
        }
        cJSON *sh = cJSON_Parse(shape);
        ck_assert(cJSON_IsArray(sh));
        uint64_t bytes = !strcmp(dt, "F32") || !strcmp(dt, "I32") ? 4 : !strcmp(dt, "I64") ? 8 : 2;
        for (cJSON *d = sh->child; d; d = d->next) bytes *= (uint64_t)d->valuedouble;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "dtype", dt);
        cJSON_AddItemToObject(e, "shape", sh);
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + bytes)));
        cJSON_AddItemToObject(hdr, name, e);
        off += bytes;
    }
    cm_free(tsv);
    char *h = cJSON_PrintUnformatted(hdr);
    cJSON_Delete(hdr);
    /* The data area is a hole (sparse file): full-size layouts cost no disk
     * and nothing here reads tensor bytes. */
    const char *p = tu_st_write(out_name, h, 0, NULL, 0);
    ck_assert(truncate(p, (off_t)(8 + strlen(h) + off)) == 0);
    free(h);
    return p;
}

/* A copy of a safetensors file without its __metadata__. */
static void drop_metadata(cJSON *hdr, void *arg)
{
    (void)arg;
    cJSON_DeleteItemFromObjectCaseSensitive(hdr, "__metadata__");
}

static const char *strip_metadata(const char *rel, const char *out_name)
{
    return tu_st_edit(tu_data(rel), out_name, drop_metadata, NULL);
}

static cJSON *golden_config(const char *dir)
{
    char rel[256];
    snprintf(rel, sizeof rel, "golden/%s/config.json", dir);
    size_t n;
    char *d = slurp(tu_data(rel), &n);
    cJSON *j = cJSON_ParseWithLength(d, n);
    cm_free(d);
    ck_assert_msg(j != NULL, "bad %s", rel);
    return j;
}

/* want_def: the diffusers default when the reference config omits the key. */
static void expect_int_def(const char *what, const cJSON *got, const cJSON *want, const char *key, int levels,
                           int want_def)
{
    int n = levels > 0 ? levels : 1;
    for (int i = 0; i < n; i++) {
        int w = wt_cfg_int_at(want, key, i, want_def), g = wt_cfg_int_at(got, key, i, -54321);
        ck_assert_msg(g == w, "%s.%s[%d]: detected %d, reference %d", what, key, i, g, w);
    }
}

static void expect_int(const char *what, const cJSON *got, const cJSON *want, const char *key, int levels)
{
    int n = levels > 0 ? levels : 1;
    for (int i = 0; i < n; i++) {
        int w = wt_cfg_int_at(want, key, i, -12345), g = wt_cfg_int_at(got, key, i, -54321);
        ck_assert_msg(g == w, "%s.%s[%d]: detected %d, reference %d", what, key, i, g, w);
    }
}

static void expect_str(const char *what, const cJSON *got, const cJSON *want, const char *key)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(got, key), *b = cJSON_GetObjectItemCaseSensitive(want, key);
    if (cJSON_IsArray(b)) {
        ck_assert_msg(cJSON_IsArray(a) && cJSON_GetArraySize(a) == cJSON_GetArraySize(b), "%s.%s: length differs",
                      what, key);
        for (int i = 0; i < cJSON_GetArraySize(b); i++)
            ck_assert_msg(!strcmp(cJSON_GetArrayItem(a, i)->valuestring, cJSON_GetArrayItem(b, i)->valuestring),
                          "%s.%s[%d]: detected %s, reference %s", what, key, i,
                          cJSON_GetArrayItem(a, i)->valuestring, cJSON_GetArrayItem(b, i)->valuestring);
        return;
    }
    const char *w = wt_cfg_str(want, key, "(null)"), *g = wt_cfg_str(got, key, "(null)");
    ck_assert_msg(!strcmp(g, w), "%s.%s: detected %s, reference %s", what, key, g, w);
}

static void expect_text(const char *what, const cJSON *got, const cJSON *want)
{
    ck_assert_msg(got != NULL, "%s section missing", what);
    static const char *keys[] = {"hidden_size",       "num_hidden_layers", "num_attention_heads",
                                 "intermediate_size", "max_position_embeddings", "vocab_size"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) expect_int(what, got, want, keys[i], 0);
    expect_str(what, got, want, "hidden_act");
}

/* Detection on `path` must reproduce the essential fields of the
 * reference configs stored in golden/<dir>/config.json. */
static void check_detection_ex(const char *path, const char *dir, const char *family, const char *text_key)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(path, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_str_eq(wt_model_config_source(m), "detected");
    cJSON *ref = golden_config(dir);
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(ref, "cfg");
    if (!cfg) cfg = ref; /* the full-size configs keep text_layers_used at the top */
    ck_assert_str_eq(wt_family_name(wt_model_family(m)), family ? family : wt_cfg_str(cfg, "family", "?"));

    const cJSON *u = wt_model_section(m, "unet"), *ru = cJSON_GetObjectItemCaseSensitive(ref, "unet_config");
    ck_assert_msg(u != NULL, "no unet section");
    int L = wt_cfg_len(ru, "block_out_channels");
    ck_assert_int_eq(wt_cfg_len(u, "block_out_channels"), L);
    expect_int("unet", u, ru, "block_out_channels", L);
    static const char *ukeys[] = {"layers_per_block", "in_channels", "out_channels", "cross_attention_dim"};
    for (size_t i = 0; i < sizeof ukeys / sizeof ukeys[0]; i++) expect_int("unet", u, ru, ukeys[i], 0);
    expect_int("unet", u, ru, "attention_head_dim", L);
    expect_int_def("unet", u, ru, "transformer_layers_per_block", L, 1);
    ck_assert_msg(wt_cfg_int(u, "use_linear_projection", -1) == wt_cfg_int(ru, "use_linear_projection", 0),
                  "unet.use_linear_projection differs");
    expect_str("unet", u, ru, "down_block_types");
    expect_str("unet", u, ru, "up_block_types");
    expect_str("unet", u, ru, "addition_embed_type");
    if (wt_cfg_str(ru, "addition_embed_type", NULL)) {
        expect_int("unet", u, ru, "addition_time_embed_dim", 0);
        expect_int("unet", u, ru, "projection_class_embeddings_input_dim", 0);
    }

    const cJSON *v = wt_model_section(m, "vae"), *rv = cJSON_GetObjectItemCaseSensitive(ref, "vae_config");
    ck_assert_msg(v != NULL, "no vae section");
    int LV = wt_cfg_len(rv, "block_out_channels");
    ck_assert_int_eq(wt_cfg_len(v, "block_out_channels"), LV);
    expect_int("vae", v, rv, "block_out_channels", LV);
    expect_int("vae", v, rv, "latent_channels", 0);
    expect_int("vae", v, rv, "layers_per_block", 0);
    ck_assert(wt_cfg_num(v, "scaling_factor", 0) == wt_cfg_num(rv, "scaling_factor", 1));

    expect_text("text_encoder", wt_model_section(m, "text_encoder"),
                cJSON_GetObjectItemCaseSensitive(ref, text_key));
    const cJSON *rt2 = cJSON_GetObjectItemCaseSensitive(ref, "text_encoder_2_config");
    if (cJSON_IsObject(rt2)) expect_text("text_encoder_2", wt_model_section(m, "text_encoder_2"), rt2);
    else if (cJSON_GetObjectItemCaseSensitive(ref, "text_encoder_2_config"))
        ck_assert(wt_model_section(m, "text_encoder_2") == NULL);
    if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(cfg, "text_layers_used")))
        ck_assert_int_eq(wt_cfg_int(wt_model_config(m), "text_layers_used", -1),
                         wt_cfg_int(cfg, "text_layers_used", -2));
    cJSON_Delete(ref);
    wt_model_close(m);
}

static void check_detection(const char *path, const char *dir)
{
    check_detection_ex(path, dir, NULL, "text_encoder_config");
}

/* ------------------------------------------------------------------------
 * SHA-256
 * ---------------------------------------------------------------------- */

static void hex(const unsigned char *d, char *out)
{
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", d[i]);
}

START_TEST(test_sha256_vectors)
{
    /* FIPS 180-2 appendix B test vectors. */
    static const struct { const char *msg, *digest; } v[] = {
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        wt_sha256 s;
        unsigned char d[32];
        char h[65];
        wt_sha256_init(&s);
        /* byte by byte, to cross the block boundary inside update */
        for (const char *p = v[i].msg; *p; p++) wt_sha256_update(&s, p, 1);
        wt_sha256_final(&s, d);
        hex(d, h);
        ck_assert_str_eq(h, v[i].digest);
    }
    /* One million 'a' (FIPS 180-2 B.3), in uneven pieces. */
    static char chunk[1000];
    memset(chunk, 'a', sizeof chunk);
    wt_sha256 s;
    unsigned char d[32];
    char h[65];
    wt_sha256_init(&s);
    for (int i = 0; i < 1000; i++) {
        wt_sha256_update(&s, chunk, 333);
        wt_sha256_update(&s, chunk, 667);
    }
    wt_sha256_final(&s, d);
    hex(d, h);
    ck_assert_str_eq(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    char path[4096], out[16];
    snprintf(path, sizeof path, "%s/abc.txt", tu_tmpdir());
    spit(path, "abc", 3, NULL, 0);
    ck_assert_int_eq(wt_sha256_file_hex10(path, out), CM_OK);
    ck_assert_str_eq(out, "ba7816bf8f");
}
END_TEST

/* ------------------------------------------------------------------------
 * Single file with stipple.config; detection without it
 * ---------------------------------------------------------------------- */

START_TEST(test_open_single)
{
    cm_error err = {0};
    wt_model *m = wt_model_open(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(wt_model_family(m), WT_FAMILY_SD1);
    ck_assert_str_eq(wt_model_config_source(m), "stipple.config");
    ck_assert_int_eq(wt_model_count(m), 613);
    ck_assert_str_eq(wt_model_stem(m), "sd1-tiny_f16");
    const int64_t shape[4] = {32, 4, 3, 3};
    ck_assert(wt_model_require(m, "model.diffusion_model.input_blocks.0.0.weight", 4, shape, &err) != NULL);
    const int64_t wrong[4] = {32, 9, 3, 3};
    ck_assert(wt_model_require(m, "model.diffusion_model.input_blocks.0.0.weight", 4, wrong, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "input_blocks.0.0.weight") && strstr(err.msg, "sd1-tiny_f16"), "%s", err.msg);
    ck_assert(wt_model_require(m, "model.diffusion_model.nope", 1, shape, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "nope") && strstr(err.msg, "missing"), "%s", err.msg);
    wt_model_close(m);
}
END_TEST

/* Resident set size of this process in bytes (/proc/self/statm). */
static long rss_bytes(void)
{
    long size = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2) res = -1;
    fclose(f);
    return res < 0 ? -1 : res * sysconf(_SC_PAGESIZE);
}

/* wt_file_drop / wt_model_drop (#7, stage residency): reading a 64 MiB
 * tensor makes it resident; dropping gives it back (RSS falls by most of
 * it) and the view still reads the same values afterwards. A file opened
 * from memory is never touched (madvise would zero anonymous bytes). */
START_TEST(test_drop_mapped_weights)
{
    const int64_t n = (int64_t)16 << 20; /* float32 values: 64 MiB */
    float *vals = malloc((size_t)n * sizeof(float));
    ck_assert_ptr_nonnull(vals);
    for (int64_t i = 0; i < n; i++) vals[i] = (float)(i % 1000003) * 0.5f;
    char hdr[160];
    snprintf(hdr, sizeof hdr, "{\"w\":{\"dtype\":\"F32\",\"shape\":[%lld],\"data_offsets\":[0,%lld]}}",
             (long long)n, (long long)(n * 4));
    const char *path = tu_st_write("drop.safetensors", hdr, 0, vals, (size_t)n * sizeof(float));
    cm_error err = {0};
    wt_file *f = wt_file_open(path, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_uint_ge(wt_file_mapped_bytes(f), (size_t)n * 4);
    const cm_wview *w = wt_file_find(f, "w");
    ck_assert_ptr_nonnull(w);
    long r0 = rss_bytes();
    double sum = 0;
    for (int64_t i = 0; i < n; i += 1024) sum += cm_wview_get(w, i); /* touch every page */
    long r1 = rss_bytes();
    ck_assert_msg(r1 - r0 > (long)(n * 4) * 9 / 10, "reading did not raise RSS (%ld -> %ld)", r0, r1);
    wt_file_drop(f);
    long r2 = rss_bytes();
    ck_assert_msg(r1 - r2 > (long)(n * 4) * 9 / 10, "drop did not lower RSS (%ld -> %ld)", r1, r2);
    for (int64_t i = 0; i < n; i += 4099) ck_assert(cm_wview_get(w, i) == vals[i]);
    double sum2 = 0;
    for (int64_t i = 0; i < n; i += 1024) sum2 += cm_wview_get(w, i);
    ck_assert(sum == sum2);
    wt_file_close(f);

    /* in memory: not a map, nothing dropped, values intact */
    char small[160];
    snprintf(small, sizeof small, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1024],\"data_offsets\":[0,4096]}}");
    size_t hl = strlen(small);
    uint64_t hl64 = hl;
    unsigned char *mem = malloc(8 + hl + 4096);
    ck_assert_ptr_nonnull(mem);
    memcpy(mem, &hl64, 8);
    memcpy(mem + 8, small, hl);
    memcpy(mem + 8 + hl, vals, 4096);
    f = wt_file_open_mem(mem, 8 + hl + 4096, "mem", &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_uint_eq(wt_file_mapped_bytes(f), 0);
    wt_file_drop(f);
    w = wt_file_find(f, "w");
    for (int i = 0; i < 1024; i++) ck_assert(cm_wview_get(w, i) == vals[i]);
    wt_file_close(f);
    free(mem);
    free(vals);
}
END_TEST

START_TEST(test_detect_sd1)
{
    check_detection(strip_metadata("golden/sd1-tiny/model/sd1-tiny_f16.safetensors", "sd1-stripped.safetensors"),
                    "sd1-tiny");
    check_detection(synth_from_keys("golden/sd1-tiny/model/sd1-tiny_f16.keys.tsv", "sd1-keys.safetensors", NULL),
                    "sd1-tiny");
}
END_TEST

/* Old SD1 checkpoints lack "text_model." in the CLIP names. */
START_TEST(test_detect_old_clip_names)
{
    rename_from = "cond_stage_model.transformer.text_model.";
    rename_to = "cond_stage_model.transformer.";
    const char *p = synth_from_keys("golden/sd1-tiny/model/sd1-tiny_f16.keys.tsv", "sd1-old.safetensors", NULL);
    rename_from = rename_to = NULL;
    check_detection(p, "sd1-tiny");
    cm_error err = {0};
    wt_model *m = wt_model_open(p, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert(wt_model_get(m, "cond_stage_model.transformer.text_model.final_layer_norm.weight") ==
              wt_model_get(m, "cond_stage_model.transformer.final_layer_norm.weight"));
    cJSON *d = wt_model_describe(m, &err);
    ck_assert(d != NULL);
    ck_assert_int_eq(wt_cfg_int(d, "tensors", 0), 613);
    cJSON_Delete(d);
    wt_model_close(m);
}
END_TEST

START_TEST(test_detect_sd2)
{
    check_detection(synth_from_keys("golden/sd2-tiny/model/sd2-tiny_f16.keys.tsv", "sd2-keys.safetensors", NULL),
                    "sd2-tiny");
}
END_TEST

START_TEST(test_detect_sdxl)
{
    check_detection(synth_from_keys("golden/sdxl-tiny/model/sdxl-tiny_f16.keys.tsv", "sdxl-keys.safetensors", NULL),
                    "sdxl-tiny");
}
END_TEST

START_TEST(test_detect_inpaint)
{
    const char *p = synth_from_keys("golden/sd1-inpaint-tiny/model/sd1-inpaint-tiny_f16.keys.tsv",
                                    "inpaint-keys.safetensors", NULL);
    check_detection(p, "sd1-inpaint-tiny");
    cm_error err = {0};
    wt_model *m = wt_model_open(p, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(wt_cfg_int(wt_model_section(m, "unet"), "in_channels", 0), 9);
    wt_model_close(m);
}
END_TEST

START_TEST(test_detect_sd3)
{
    const char *p = synth_from_keys("golden/sd3-tiny/model/sd3-tiny_f16.keys.tsv", "sd3-keys.safetensors", NULL);
    cm_error err = {0};
    wt_model *m = wt_model_open(p, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    ck_assert_int_eq(wt_model_family(m), WT_FAMILY_SD3);
    cJSON *ref = golden_config("sd3-tiny");
    const cJSON *t = wt_model_section(m, "transformer"), *rt = cJSON_GetObjectItemCaseSensitive(ref, "transformer_config");
    ck_assert_msg(t != NULL, "no transformer section");
    static const char *keys[] = {"patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim",
                                 "num_attention_heads", "joint_attention_dim", "caption_projection_dim",
                                 "pooled_projection_dim", "pos_embed_max_size"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) expect_int("transformer", t, rt, keys[i], 0);
    const cJSON *v = wt_model_section(m, "vae"), *rv = cJSON_GetObjectItemCaseSensitive(ref, "vae_config");
    expect_int("vae", v, rv, "latent_channels", 0);
    expect_int("vae", v, rv, "block_out_channels", wt_cfg_len(rv, "block_out_channels"));
    ck_assert(wt_cfg_num(v, "scaling_factor", 0) == wt_cfg_num(rv, "scaling_factor", 1));
    ck_assert(wt_cfg_num(v, "shift_factor", 0) == wt_cfg_num(rv, "shift_factor", 1));
    ck_assert_int_eq(wt_cfg_int(v, "use_quant_conv", -1), wt_cfg_int(rv, "use_quant_conv", -2));
    ck_assert(wt_model_section(m, "text_encoder") == NULL);

    /* Separate text encoder files (the official SD3 release layout) added
     * under their combined-checkpoint prefixes refresh the detected config. */
    const char *l = synth_from_keys("golden/sd3-tiny/model/text_encoders/clip_l_f16.keys.tsv", "clip_l.safetensors", NULL);
    const char *g = synth_from_keys("golden/sd3-tiny/model/text_encoders/clip_g_f16.keys.tsv", "clip_g.safetensors", NULL);
    ck_assert_int_eq(wt_model_add_file(m, l, "text_encoders.clip_l.transformer.", &err), CM_OK);
    ck_assert_int_eq(wt_model_add_file(m, g, "text_encoders.clip_g.transformer.", &err), CM_OK);
    expect_text("text_encoder", wt_model_section(m, "text_encoder"),
                cJSON_GetObjectItemCaseSensitive(ref, "text_encoder_config"));
    expect_text("text_encoder_2", wt_model_section(m, "text_encoder_2"),
                cJSON_GetObjectItemCaseSensitive(ref, "text_encoder_2_config"));
    ck_assert(wt_model_section(m, "transformer") != NULL);
    cJSON_Delete(ref);
    wt_model_close(m);
}
END_TEST

/* Full-size SD 1.5 / 2.1 / XL layouts (names and shapes of the released
 * checkpoints, from the golden weights manifests) as sparse files. */
START_TEST(test_detect_full_layouts)
{
    static const struct { const char *dir, *family; } c[] = {
        {"sd15-full", "sd1"}, {"sd21-full", "sd2"}, {"sdxl-full", "sdxl"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char rel[256], name[64];
        snprintf(rel, sizeof rel, "golden/%s/weights_manifest.tsv", c[i].dir);
        snprintf(name, sizeof name, "%s.safetensors", c[i].dir);
        const char *p = synth_from_keys(rel, name, NULL);
        check_detection_ex(p, c[i].dir, c[i].family, "text_config");
        unlink(p);
    }
}
END_TEST

START_TEST(test_detect_partial_files)
{
    static const struct { const char *keep[3]; const char *want; } cases[] = {
        {{"first_stage_model.", NULL}, "no UNet found"},
        {{"model.diffusion_model.", NULL}, "no text encoder found"},
        {{"model.diffusion_model.", "cond_stage_model.", NULL}, "no VAE found"},
        {{"cond_stage_model.", NULL}, "no UNet found"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[64];
        snprintf(name, sizeof name, "partial%zu.safetensors", i);
        const char *p = synth_from_keys("golden/sd1-tiny/model/sd1-tiny_f16.keys.tsv", name, cases[i].keep);
        cm_error err = {0};
        wt_model *m = wt_model_open(p, &err);
        ck_assert_msg(m == NULL, "case %zu opened", i);
        ck_assert_int_ne(err.status, CM_OK);
        ck_assert_msg(strstr(err.msg, cases[i].want) && strstr(err.msg, p), "case %zu: %s", i, err.msg);
    }
}
END_TEST

/* ------------------------------------------------------------------------
 * Diffusers folder
 * ---------------------------------------------------------------------- */

START_TEST(test_diffusers_sd1)
{
    cm_error err = {0};
    wt_model *single = wt_model_open(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), &err);
    ck_assert_msg(single != NULL, "%s", err.msg);
    wt_model *d = wt_model_open(tu_data("golden/sd1-tiny/model/diffusers"), &err);
    ck_assert_msg(d != NULL, "%s", err.msg);
    ck_assert_int_eq(wt_model_family(d), WT_FAMILY_SD1);
    ck_assert_str_eq(wt_model_config_source(d), "diffusers");
    ck_assert_str_eq(wt_cfg_str(wt_model_section(d, "scheduler"), "prediction_type", "?"), "epsilon");
    ck_assert_int_eq(wt_cfg_int(wt_model_section(d, "unet"), "layers_per_block", 0), 2);
    int checked = 0;
    for (int i = 0; i < wt_model_count(single); i++) {
        const char *name = wt_model_name_at(single, i);
        if (!strchr(name, '.') || strstr(name, "position_ids")) continue; /* DDPM buffers, position_ids */
        const cm_wview *a = wt_model_view_at(single, i), *b = wt_model_get(d, name);
        ck_assert_msg(b != NULL, "diffusers folder lacks %s", name);
        ck_assert_msg(a->dtype == b->dtype && a->ndim == b->ndim, "%s: dtype/ndim %d/%d vs %d/%d", name,
                      (int)a->dtype, a->ndim, (int)b->dtype, b->ndim);
        for (int k = 0; k < a->ndim; k++)
            ck_assert_msg(a->shape[k] == b->shape[k], "%s: dim %d is %lld, single file %lld", name, k,
                          (long long)b->shape[k], (long long)a->shape[k]);
        size_t bytes = (size_t)cm_wview_numel(a) * cm_dtype_size(a->dtype);
        ck_assert_msg(memcmp(a->data, b->data, bytes) == 0, "%s: bytes differ", name);
        checked++;
    }
    ck_assert_int_gt(checked, 500);
    /* Nothing left unmapped. */
    ck_assert_int_eq(wt_model_count_prefix(d, "diffusers."), 0);
    wt_model_close(d);
    wt_model_close(single);
}
END_TEST

/* Header edit: diffusers' VAE mid-block attention names to the older
 * query/key/value/proj_attn; *(int *)arg counts the renames. */
static void legacy_vae_names(cJSON *hdr, void *arg)
{
    static const char *from[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    static const char *to[] = {".query.", ".key.", ".value.", ".proj_attn."};
    for (cJSON *it = hdr->child; it; it = it->next) {
        for (int k = 0; k < 4; k++) {
            char *at = strstr(it->string, from[k]);
            if (!at || !strstr(it->string, "mid_block.attentions.0")) continue;
            char nn[512];
            snprintf(nn, sizeof nn, "%.*s%s%s", (int)(at - it->string), it->string, to[k], at + strlen(from[k]));
            free(it->string);
            it->string = strdup(nn);
            (*(int *)arg)++;
        }
    }
}

/* A copy of the diffusers folder with the older diffusers VAE attention
 * names (query/key/value/proj_attn) and an fp16-variant UNet file name. */
START_TEST(test_diffusers_legacy_names)
{
    const char *src = tu_data("golden/sd1-tiny/model/diffusers");
    char dir[4096], cmd[16384];
    snprintf(dir, sizeof dir, "%s/legacy-diffusers", tu_tmpdir());
    int w = snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && mkdir -p '%s/unet' '%s/vae' && cp '%s/model_index.json' '%s/' && "
             "ln -s '%s/text_encoder' '%s/scheduler' '%s/' && cp '%s/unet/config.json' '%s/unet/' && "
             "ln -s '%s/unet/diffusion_pytorch_model.safetensors' '%s/unet/diffusion_pytorch_model.fp16.safetensors' && "
             "cp '%s/vae/config.json' '%s/vae/'",
             dir, dir, dir, src, dir, src, src, dir, src, dir, src, dir, src, dir);
    ck_assert(w > 0 && (size_t)w < sizeof cmd);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);

    /* Rename the VAE attention tensors in the header (same byte length
     * is not needed: the header is rewritten). */
    char vpath[4096];
    snprintf(vpath, sizeof vpath, "%s/vae/diffusion_pytorch_model.safetensors", src);
    int renamed = 0;
    tu_st_edit(vpath, "legacy-diffusers/vae/diffusion_pytorch_model.safetensors", legacy_vae_names, &renamed);
    ck_assert_int_eq(renamed, 16); /* encoder + decoder, 4 linears x weight/bias */

    cm_error err = {0};
    wt_model *single = wt_model_open(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), &err);
    ck_assert_msg(single != NULL, "%s", err.msg);
    wt_model *m = wt_model_open(dir, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    int checked = 0;
    for (int i = 0; i < wt_model_count(single); i++) {
        const char *name = wt_model_name_at(single, i);
        if (strncmp(name, "first_stage_model.", 18) && strncmp(name, "model.diffusion_model.", 22)) continue;
        const cm_wview *a = wt_model_view_at(single, i), *b = wt_model_get(m, name);
        ck_assert_msg(b != NULL, "legacy folder lacks %s", name);
        ck_assert_int_eq(a->ndim, b->ndim);
        for (int k = 0; k < a->ndim; k++) ck_assert(a->shape[k] == b->shape[k]);
        ck_assert(memcmp(a->data, b->data, (size_t)cm_wview_numel(a) * cm_dtype_size(a->dtype)) == 0);
        checked++;
    }
    ck_assert_int_gt(checked, 500);
    wt_model_close(m);
    wt_model_close(single);
}
END_TEST

/* ------------------------------------------------------------------------
 * stipple info
 * ---------------------------------------------------------------------- */

/* Expected parameter count per component from the .keys.tsv: elements of
 * floating-point tensors, grouped by checkpoint prefix. */
static void keys_params(const char *rel, double *te, double *unet, double *vae)
{
    size_t n;
    char *tsv = slurp(tu_data(rel), &n);
    *te = *unet = *vae = 0;
    char *save = NULL;
    int line = 0;
    for (char *l = strtok_r(tsv, "\n", &save); l; l = strtok_r(NULL, "\n", &save), line++) {
        if (line == 0) continue;
        char name[512], dt[16], shape[256];
        ck_assert(sscanf(l, "%511[^\t]\t%15[^\t]\t%255[^\n]", name, dt, shape) == 3);
        if (strcmp(dt, "F16") && strcmp(dt, "F32") && strcmp(dt, "BF16")) continue;
        cJSON *sh = cJSON_Parse(shape);
        ck_assert_msg(cJSON_IsArray(sh), "bad shape %s", shape);
        double c = 1;
        for (cJSON *d = sh->child; d; d = d->next) c *= d->valuedouble;
        cJSON_Delete(sh);
        if (!strncmp(name, "model.diffusion_model.", 22)) *unet += c;
        else if (!strncmp(name, "first_stage_model.", 18)) *vae += c;
        else if (!strncmp(name, "cond_stage_model.", 17)) *te += c;
    }
    cm_free(tsv);
}

static void check_info(const char *model, double te, double unet, double vae)
{
    char cmd[8192], *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd, "'%s' info --json '%s'", tu_stipple(), model);
    int rc = tu_run(cmd, &out, &errs);
    ck_assert_msg(rc == 0 && out, "%s: exit %d: %s", cmd, rc, errs ? errs : "");
    cJSON *j = cJSON_Parse(out);
    ck_assert_msg(j != NULL, "not JSON: %s", out);
    ck_assert_str_eq(wt_cfg_str(j, "family", "?"), "sd1");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "components");
    ck_assert(wt_cfg_num(cJSON_GetObjectItemCaseSensitive(c, "text_encoder"), "params", -1) == te);
    ck_assert(wt_cfg_num(cJSON_GetObjectItemCaseSensitive(c, "unet"), "params", -1) == unet);
    ck_assert(wt_cfg_num(cJSON_GetObjectItemCaseSensitive(c, "vae"), "params", -1) == vae);
    ck_assert_int_eq(wt_cfg_int(cJSON_GetObjectItemCaseSensitive(c, "unet"), "in_channels", 0), 4);
    ck_assert_int_eq(wt_cfg_int(cJSON_GetObjectItemCaseSensitive(c, "unet"), "context_dim", 0), 32);
    ck_assert_int_eq(wt_cfg_int(cJSON_GetObjectItemCaseSensitive(c, "vae"), "latent_channels", 0), 4);
    ck_assert_int_eq(wt_cfg_int(cJSON_GetObjectItemCaseSensitive(c, "text_encoder"), "hidden_size", 0), 32);
    ck_assert_int_eq((int)strlen(wt_cfg_str(j, "model_hash", "")), 10);
    cJSON_Delete(j);
    cm_free(out);
    cm_free(errs);
    /* The text form runs too. */
    snprintf(cmd, sizeof cmd, "'%s' info '%s'", tu_stipple(), model);
    rc = tu_run(cmd, &out, &errs);
    ck_assert_msg(rc == 0 && out && strstr(out, "family:") && strstr(out, "sd1"), "%s: exit %d", cmd, rc);
    cm_free(out);
    cm_free(errs);
}

START_TEST(test_info_sd1)
{
    double te, unet, vae;
    keys_params("golden/sd1-tiny/model/sd1-tiny_f16.keys.tsv", &te, &unet, &vae);
    ck_assert(te > 0 && unet > 0 && vae > 0);
    check_info(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), te, unet, vae);
    check_info(tu_data("golden/sd1-tiny/model/diffusers"), te, unet, vae);

    /* Model hash = first 10 hex digits of the file's SHA-256 (sha256sum). */
    char cmd[8192], *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"));
    if (tu_run(cmd, &out, &errs) == 0 && out && strlen(out) > 10) {
        char want[11];
        memcpy(want, out, 10);
        want[10] = 0;
        cm_free(out);
        cm_free(errs);
        snprintf(cmd, sizeof cmd, "'%s' info '%s'", tu_stipple(), tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"));
        ck_assert_int_eq(tu_run(cmd, &out, &errs), 0);
        ck_assert_msg(strstr(out, want) != NULL, "hash %s not in: %s", want, out);
    }
    cm_free(out);
    cm_free(errs);
}
END_TEST

START_TEST(test_info_usage)
{
    char cmd[4096], *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd, "'%s' info --bogus x", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 2);
    ck_assert_msg(errs && !strncmp(errs, "stipple: error: ", 16), "%s", errs ? errs : "");
    cm_free(out);
    cm_free(errs);
    snprintf(cmd, sizeof cmd, "'%s' info --help", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 0);
    ck_assert(out && strstr(out, "usage: stipple info"));
    cm_free(out);
    cm_free(errs);
    snprintf(cmd, sizeof cmd, "'%s' info a b", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 2);
    cm_free(out);
    cm_free(errs);
    /* No model: the built-in one when it exists, else a usage error. */
    snprintf(cmd, sizeof cmd, "'%s' info", tu_stipple());
    int rc = tu_run(cmd, &out, &errs);
    ck_assert_msg(rc == 0 || (rc == 2 && errs && strstr(errs, "no model given")), "exit %d: %s", rc,
                  errs ? errs : "");
    cm_free(out);
    cm_free(errs);
}
END_TEST

TCase *tc_weights_core(void)
{
    TCase *tc = tu_tcase("weights_core");
    tcase_add_test(tc, test_sha256_vectors);
    tcase_add_test(tc, test_open_single);
    tcase_add_test(tc, test_drop_mapped_weights);
    tcase_add_test(tc, test_detect_sd1);
    tcase_add_test(tc, test_detect_old_clip_names);
    tcase_add_test(tc, test_detect_sd2);
    tcase_add_test(tc, test_detect_sdxl);
    tcase_add_test(tc, test_detect_inpaint);
    tcase_add_test(tc, test_detect_sd3);
    tcase_add_test(tc, test_detect_full_layouts);
    tcase_add_test(tc, test_detect_partial_files);
    tcase_add_test(tc, test_diffusers_sd1);
    tcase_add_test(tc, test_diffusers_legacy_names);
    tcase_add_test(tc, test_info_sd1);
    tcase_add_test(tc, test_info_usage);
    return tc;
}
