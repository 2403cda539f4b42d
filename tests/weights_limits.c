/* weights_limits.c — test case weights_limits: the bad-file matrix of the
 * safetensors reader (issue 2 item 7), bad configs, allocation failure.
 *
 * Every bad file is built in the test's scratch folder. For each one:
 * wt_file_open / wt_file_open_mem / wt_model_open return NULL with a
 * nonzero status and a one-line message naming the file (and the tensor
 * where there is one); `stipple info BAD` exits 1 with one
 * `stipple: error: ...` line on stderr, never a signal.
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static const char *tmp_path(const char *name)
{
    static char buf[8][4096];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 4096, "%s/%s", tu_tmpdir(), name);
    return p;
}

static const char *write_bytes(const char *name, const void *data, size_t n)
{
    const char *p = tmp_path(name);
    unlink(p);
    FILE *f = fopen(p, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", p);
    if (n) ck_assert(fwrite(data, 1, n, f) == n);
    ck_assert(fclose(f) == 0);
    return p;
}

/* [u64 LE header length][header][ndata bytes of 0x5a]; hlen_override
 * replaces the stored header length when nonzero. */
static const char *write_st(const char *name, const char *hdr, size_t ndata, uint64_t hlen_override)
{
    unsigned char *data = malloc(ndata + 1);
    ck_assert(data);
    memset(data, 0x5a, ndata);
    const char *p = tu_st_write(name, hdr, hlen_override, data, ndata);
    free(data);
    return p;
}

/* The file must be refused by every entry point, with a message naming it
 * (and `tensor` when not NULL). */
static void expect_refused(const char *path, const char *tensor)
{
    cm_error err = {0};
    wt_file *f = wt_file_open(path, &err);
    ck_assert_msg(f == NULL, "%s: opened", path);
    ck_assert_int_ne(err.status, CM_OK);
    ck_assert_msg(strstr(err.msg, path) != NULL, "message does not name the file: %s", err.msg);
    ck_assert_msg(strchr(err.msg, '\n') == NULL, "message is not one line: %s", err.msg);
    if (tensor) ck_assert_msg(strstr(err.msg, tensor) != NULL, "message does not name %s: %s", tensor, err.msg);

    cm_error err2 = {0};
    wt_model *m = wt_model_open(path, &err2);
    ck_assert_msg(m == NULL, "%s: model opened", path);
    ck_assert_int_ne(err2.status, CM_OK);
    ck_assert_msg(strstr(err2.msg, path) != NULL, "model message does not name the file: %s", err2.msg);

    /* The in-memory entry point (the fuzz target's) agrees. */
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && access(path, R_OK) == 0) {
        char *data = NULL;
        size_t n = 0;
        cm_error e3 = {0};
        ck_assert(cm_file_read_all(path, &data, &n, &e3) == CM_OK);
        cm_error e4 = {0};
        wt_file *g = wt_file_open_mem(data, n, "mem", &e4);
        ck_assert_msg(g == NULL, "%s: opened from memory", path);
        ck_assert_int_ne(e4.status, CM_OK);
        ck_assert_msg(strstr(e4.msg, "mem") != NULL, "%s", e4.msg);
        cm_free(data);
    }
}

/* `stipple info BAD`: exit 1, exactly one "stipple: error: " line naming the file. */
static void expect_cli_refuses(const char *path)
{
    char cmd[8192], *out = NULL, *errs = NULL;
    snprintf(cmd, sizeof cmd, "'%s' info '%s'", tu_stipple(), path);
    int rc = tu_run(cmd, &out, &errs);
    ck_assert_msg(rc == 1, "%s: exit %d (stderr: %s)", cmd, rc, errs ? errs : "");
    ck_assert_msg(errs && !strncmp(errs, "stipple: error: ", 16), "stderr: %s", errs ? errs : "");
    size_t len = strlen(errs);
    ck_assert_msg(len > 0 && errs[len - 1] == '\n' && strchr(errs, '\n') == errs + len - 1,
                  "stderr is not one line: %s", errs);
    ck_assert_msg(strstr(errs, path) != NULL, "stderr does not name the file: %s", errs);
    ck_assert_msg(!out || !out[0], "stdout not empty: %s", out);
    cm_free(out);
    cm_free(errs);
}

#define T_F32(name, shape, b, e) \
    "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

/* ------------------------------------------------------------------------
 * The matrix
 * ---------------------------------------------------------------------- */

START_TEST(test_empty_file)
{
    const char *p = write_bytes("empty.safetensors", "", 0);
    expect_refused(p, NULL);
    expect_cli_refuses(p);
    /* shorter than the length field */
    expect_refused(write_bytes("short.safetensors", "\x10\x00\x00", 3), NULL);
}
END_TEST

START_TEST(test_header_length_beyond_file)
{
    const char *p = write_st("hlen.safetensors", "{}", 16, 100000);
    expect_refused(p, NULL);
    expect_cli_refuses(p);
    expect_refused(write_st("hlen_huge.safetensors", "{}", 16, UINT64_MAX), NULL);
    /* a zero header length */
    unsigned char z[16] = {0};
    expect_refused(write_bytes("hlen0.safetensors", z, sizeof z), NULL);
}
END_TEST

START_TEST(test_header_not_json)
{
    const char *p = write_st("notjson.safetensors", "hello, world", 16, 0);
    expect_refused(p, NULL);
    expect_cli_refuses(p);
    expect_refused(write_st("trailing.safetensors", "{} x", 0, 0), NULL);
    expect_refused(write_st("truncjson.safetensors", "{\"a\":{\"dtype\":", 0, 0), NULL);
    expect_refused(write_st("nan.safetensors", "{\"a\":NaN}", 0, 0), NULL);
}
END_TEST

START_TEST(test_json_wrong_shape)
{
    expect_refused(write_st("array.safetensors", "[1,2,3]", 0, 0), NULL);
    expect_refused(write_st("string.safetensors", "\"x\"", 0, 0), NULL);
    expect_refused(write_st("entry.safetensors", "{\"w\":5}", 0, 0), "w");
    expect_refused(write_st("nodtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, 0), "w");
    expect_refused(write_st("shapestr.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, 0), "w");
    expect_refused(write_st("negdim.safetensors", "{" T_F32("w", "[-1]", 0, 4) "}", 4, 0), "w");
    expect_refused(write_st("fracdim.safetensors", "{" T_F32("w", "[1.5]", 0, 4) "}", 4, 0), "w");
    expect_refused(write_st("ninedims.safetensors", "{" T_F32("w", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 4, 0), "w");
    expect_refused(write_st("offs3.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, 0), "w");
    expect_refused(write_st("offsrev.safetensors", "{" T_F32("w", "[1]", 8, 4) "}", 8, 0), "w");
    expect_refused(write_st("meta.safetensors", "{\"__metadata__\":{\"a\":1}}", 0, 0), "__metadata__");
    expect_refused(write_st("meta2.safetensors", "{\"__metadata__\":[]}", 0, 0), "__metadata__");
    expect_refused(write_st("dup.safetensors", "{" T_F32("w", "[1]", 0, 4) "," T_F32("w", "[1]", 4, 8) "}", 8, 0), "w");
    const char *p = write_st("entry2.safetensors", "{\"the.tensor\":[]}", 0, 0);
    expect_refused(p, "the.tensor");
    expect_cli_refuses(p);
}
END_TEST

START_TEST(test_unknown_dtype)
{
    const char *p =
        write_st("dtype.safetensors", "{\"w.weight\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1, 0);
    expect_refused(p, "w.weight");
    expect_cli_refuses(p);
}
END_TEST

START_TEST(test_offsets_beyond_data)
{
    const char *p = write_st("beyond.safetensors", "{" T_F32("w.weight", "[100]", 0, 400) "}", 16, 0);
    expect_refused(p, "w.weight");
    expect_cli_refuses(p);
    expect_refused(write_st("beyond2.safetensors", "{" T_F32("w", "[1]", 9007199254740990, 9007199254740994) "}", 16, 0), "w");
}
END_TEST

START_TEST(test_overlapping_tensors)
{
    const char *p =
        write_st("overlap.safetensors", "{" T_F32("a.weight", "[2]", 0, 8) "," T_F32("b.weight", "[2]", 4, 12) "}", 12, 0);
    expect_refused(p, "a.weight");
    expect_cli_refuses(p);
    /* one tensor inside another, with an empty tensor between them in sort order */
    expect_refused(write_st("overlap2.safetensors",
                            "{" T_F32("big", "[4]", 0, 16) "," T_F32("empty", "[0]", 8, 8) "," T_F32("inner", "[1]", 10, 14) "}",
                            16, 0),
                   "inner");
    /* empty tensors and adjacent tensors are fine */
    const char *ok = write_st("adjacent.safetensors",
                              "{" T_F32("a", "[2]", 0, 8) "," T_F32("e", "[0]", 4, 4) "," T_F32("b", "[2]", 8, 16) "}", 16, 0);
    cm_error err = {0};
    wt_file *f = wt_file_open(ok, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    ck_assert_int_eq(wt_file_count(f), 3);
    ck_assert(wt_file_find(f, "b") != NULL);
    wt_file_close(f);
}
END_TEST

START_TEST(test_size_mismatch)
{
    const char *p = write_st("size.safetensors", "{" T_F32("w.weight", "[3]", 0, 8) "}", 16, 0);
    expect_refused(p, "w.weight");
    expect_cli_refuses(p);
    expect_refused(write_st("size2.safetensors", "{" T_F32("w.weight", "[]", 0, 0) "}", 16, 0), "w.weight");
}
END_TEST

START_TEST(test_shape_overflow)
{
    const char *p = write_st("overflow.safetensors", "{" T_F32("w.weight", "[4294967296,4294967296,16]", 0, 16) "}", 16, 0);
    expect_refused(p, "w.weight");
    expect_cli_refuses(p);
    /* wraps to exactly the stored size modulo 2^64 */
    expect_refused(write_st("overflow2.safetensors", "{" T_F32("w", "[4294967296,1073741824]", 0, 0) "}", 0, 0), "w");
}
END_TEST

/* Formats mistaken for safetensors say what they are. */
START_TEST(test_other_formats)
{
    const char zip[16] = "PK\x03\x04\x14\x00\x00\x00\x08\x00";
    const char *p = write_bytes("model.ckpt", zip, sizeof zip);
    expect_refused(p, NULL);
    cm_error err = {0};
    ck_assert(wt_file_open(p, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "pickle"), "%s", err.msg);
    expect_cli_refuses(p);
    const char gguf[16] = "GGUF\x03\x00\x00\x00";
    p = write_bytes("model.gguf", gguf, sizeof gguf);
    expect_refused(p, NULL);
    ck_assert(wt_file_open(p, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "GGUF"), "%s", err.msg);
}
END_TEST

START_TEST(test_folder_and_permissions)
{
    const char *dir = tmp_path("a_folder");
    mkdir(dir, 0755);
    expect_refused(dir, NULL);
    expect_cli_refuses(dir);
    expect_refused(tmp_path("does-not-exist.safetensors"), NULL);
    if (geteuid() != 0) {
        const char *p = write_st("noread.safetensors", "{" T_F32("w", "[1]", 0, 4) "}", 4, 0);
        ck_assert(chmod(p, 0) == 0);
        expect_refused(p, NULL);
        expect_cli_refuses(p);
        chmod(p, 0644);
    }
}
END_TEST

START_TEST(test_truncated_model)
{
    char *data = NULL;
    size_t n = 0;
    cm_error err = {0};
    ck_assert(cm_file_read_all(tu_data("golden/sd1-tiny/model/sd1-tiny_f16.safetensors"), &data, &n, &err) == CM_OK);
    for (int k = 1; k <= 9; k++) {
        char name[64];
        snprintf(name, sizeof name, "trunc%d.safetensors", k);
        const char *p = write_bytes(name, data, n * (size_t)k / 10);
        expect_refused(p, NULL);
        /* past the header, the message names the first tensor that does not fit */
        cm_error e = {0};
        ck_assert(wt_file_open(p, &e) == NULL);
        ck_assert_msg(strstr(e.msg, "tensor") != NULL || k == 0, "%s", e.msg);
        if (k == 1 || k == 5 || k == 9) expect_cli_refuses(p);
    }
    cm_free(data);
}
END_TEST

/* A structurally valid file whose stipple.config is not valid JSON. */
START_TEST(test_bad_config)
{
    const char *p = write_st("badcfg.safetensors",
                             "{\"__metadata__\":{\"stipple.config\":\"{\\\"family\\\": \"}," T_F32("w", "[1]", 0, 4) "}", 4, 0);
    cm_error err = {0};
    wt_file *f = wt_file_open(p, &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    wt_file_close(f);
    expect_cli_refuses(p);
    wt_model *m = wt_model_open(p, &err);
    ck_assert(m == NULL);
    ck_assert_msg(strstr(err.msg, "stipple.config") && strstr(err.msg, p), "%s", err.msg);
    p = write_st("famcfg.safetensors", "{\"__metadata__\":{\"stipple.config\":\"{\\\"family\\\": \\\"sd9\\\"}\"}," T_F32("w", "[1]", 0, 4) "}", 4, 0);
    m = wt_model_open(p, &err);
    ck_assert(m == NULL);
    ck_assert_msg(strstr(err.msg, "sd9") && strstr(err.msg, p), "%s", err.msg);
    /* a folder that is not a diffusers model */
    const char *dir = tmp_path("not_diffusers");
    mkdir(dir, 0755);
    m = wt_model_open(dir, &err);
    ck_assert(m == NULL);
    ck_assert_msg(strstr(err.msg, dir), "%s", err.msg);
}
END_TEST

/* Broken diffusers folders: a clear error naming the folder, exit 1. */
START_TEST(test_bad_diffusers)
{
    const char *src = tu_data("golden/sd1-tiny/model/diffusers");
    const char *dir = tmp_path("bad_diffusers");
    char cmd[16384];
    int w = snprintf(cmd, sizeof cmd,
                     "rm -rf '%s' && mkdir -p '%s/unet' && cp '%s/model_index.json' '%s/' && "
                     "cp '%s/unet/config.json' '%s/unet/'",
                     dir, dir, src, dir, src, dir);
    ck_assert(w > 0 && (size_t)w < sizeof cmd);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    cm_error err = {0};
    ck_assert(wt_model_open(dir, &err) == NULL);
    ck_assert_msg(strstr(err.msg, dir) && strstr(err.msg, "no VAE"), "%s", err.msg);
    expect_cli_refuses(dir);

    /* all configs present, the UNet weights only as a pickle */
    w = snprintf(cmd, sizeof cmd,
                 "cp -r '%s/vae' '%s/text_encoder' '%s/' && touch '%s/unet/diffusion_pytorch_model.bin'", src, src,
                 dir, dir);
    ck_assert(w > 0 && (size_t)w < sizeof cmd);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    ck_assert(wt_model_open(dir, &err) == NULL);
    ck_assert_msg(strstr(err.msg, dir) && strstr(err.msg, ".bin"), "%s", err.msg);
    expect_cli_refuses(dir);

    /* a malformed config.json */
    w = snprintf(cmd, sizeof cmd, "printf '{\"layers_per_block\": ' > '%s/unet/config.json'", dir);
    ck_assert(w > 0 && (size_t)w < sizeof cmd);
    ck_assert_int_eq(tu_run(cmd, NULL, NULL), 0);
    ck_assert(wt_model_open(dir, &err) == NULL);
    ck_assert_msg(strstr(err.msg, "unet/config.json") && strstr(err.msg, "JSON"), "%s", err.msg);
    expect_cli_refuses(dir);
}
END_TEST

/* Every allocation made while opening the model fails in turn: a clean
 * error each time, never a crash or a leak-driven abort. */
START_TEST(test_alloc_failure)
{
    const char *path = tu_data(_i ? "golden/sd1-tiny/model/diffusers" : "golden/sd1-tiny/model/sd1-tiny_f16.safetensors");
    cm_error err = {0};
    long before = cm_alloc_count();
    wt_model *m = wt_model_open(path, &err);
    ck_assert_msg(m != NULL, "%s", err.msg);
    long used = cm_alloc_count() - before;
    wt_model_close(m);
    ck_assert_int_gt(used, 0);
    for (long i = 1; i <= used; i++) {
        cm_error e = {0};
        cm_alloc_fail_at(i);
        m = wt_model_open(path, &e);
        cm_alloc_fail_at(0);
        if (m) wt_model_close(m);
        else ck_assert_msg(e.status != CM_OK && e.msg[0], "allocation %ld: no error message", i);
    }
}
END_TEST

/* Names and shapes that pass the file checks but lie to family detection:
 * every tensor is empty (a zero dim), so huge dims cost no bytes. */
#define E0(name, shape) "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[0,0]}"
#define SD1_TEXT_STUB                                                                        \
    E0("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "[10,8,0]") "," \
    E0("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight", "[77,0]") "," \
    E0("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "[32,0]") ","    \
    E0("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight", "[0]") "," \
    E0("first_stage_model.x", "[0]")
#define UNET0 "model.diffusion_model."

START_TEST(test_detect_hostile_layouts)
{
    /* 8 downsamplers: more levels than detection tracks (read past its
     * per-level table before the fix; ASan: stack-buffer-overflow) */
    const char *p = write_st("levels8.safetensors",
                             "{" SD1_TEXT_STUB "," E0(UNET0 "input_blocks.0.0.weight", "[4,4,0]") ","
                             E0(UNET0 "out.2.weight", "[4,0]") "," E0(UNET0 "time_embed.0.weight", "[16,0]") ","
                             E0(UNET0 "input_blocks.1.0.op.weight", "[0]") "," E0(UNET0 "input_blocks.2.0.op.weight", "[0]") ","
                             E0(UNET0 "input_blocks.3.0.op.weight", "[0]") "," E0(UNET0 "input_blocks.4.0.op.weight", "[0]") ","
                             E0(UNET0 "input_blocks.5.0.op.weight", "[0]") "," E0(UNET0 "input_blocks.6.0.op.weight", "[0]") ","
                             E0(UNET0 "input_blocks.7.0.op.weight", "[0]") "," E0(UNET0 "input_blocks.8.0.op.weight", "[0]") ","
                             E0(UNET0 "input_blocks.9.0.op.weight", "[0]") "}",
                             0, 0);
    cm_error err = {0};
    ck_assert(wt_model_open(p, &err) == NULL);
    ck_assert_msg(strstr(err.msg, p) && strstr(err.msg, "levels"), "%s", err.msg);
    expect_cli_refuses(p);

    /* SD3 patch size 2^32 (x_embedder.proj [C, in, p, 0]): p*p overflowed int64 */
    p = write_st("sd3patch.safetensors",
                 "{" E0(UNET0 "joint_blocks.0.x_block.attn.qkv.weight", "[0]") ","
                 E0(UNET0 "x_embedder.proj.weight", "[64,16,4294967296,0]") ","
                 E0(UNET0 "final_layer.linear.weight", "[64,0]") "," E0(UNET0 "context_embedder.weight", "[64,128,0]") ","
                 E0(UNET0 "y_embedder.mlp.0.weight", "[64,96,0]") "," E0("first_stage_model.x", "[0]") "}",
                 0, 0);
    ck_assert(wt_model_open(p, &err) == NULL);
    ck_assert_msg(strstr(err.msg, p) && strstr(err.msg, "x_embedder"), "%s", err.msg);
    expect_cli_refuses(p);
}
END_TEST

/* Config numbers outside int range read as the default, in arrays too
 * ((int)1e300 is undefined behaviour; on x86 it gave INT_MIN). */
START_TEST(test_config_int_range)
{
    cm_error err = {0};
    const char *j = "{\"a\": [1e300, -1e300, 2147483648, 3], \"b\": 1e300, \"c\": -5e9}";
    cJSON *o = wt_json_parse(j, strlen(j), "test", &err);
    ck_assert_msg(o != NULL, "%s", err.msg);
    ck_assert_int_eq(wt_cfg_int_at(o, "a", 0, 7), 7);
    ck_assert_int_eq(wt_cfg_int_at(o, "a", 1, 7), 7);
    ck_assert_int_eq(wt_cfg_int_at(o, "a", 2, 7), 7);
    ck_assert_int_eq(wt_cfg_int_at(o, "a", 3, 7), 3);
    ck_assert_int_eq(wt_cfg_int_at(o, "b", 0, 7), 7);
    ck_assert_int_eq(wt_cfg_int_at(o, "c", 5, 7), 7);
    ck_assert_int_eq(wt_cfg_int(o, "b", 7), 7);
    cJSON_Delete(o);
}
END_TEST

TCase *tc_weights_limits(void)
{
    TCase *tc = tu_tcase("weights_limits");
    tcase_add_test(tc, test_empty_file);
    tcase_add_test(tc, test_header_length_beyond_file);
    tcase_add_test(tc, test_header_not_json);
    tcase_add_test(tc, test_json_wrong_shape);
    tcase_add_test(tc, test_unknown_dtype);
    tcase_add_test(tc, test_offsets_beyond_data);
    tcase_add_test(tc, test_overlapping_tensors);
    tcase_add_test(tc, test_size_mismatch);
    tcase_add_test(tc, test_shape_overflow);
    tcase_add_test(tc, test_other_formats);
    tcase_add_test(tc, test_folder_and_permissions);
    tcase_add_test(tc, test_truncated_model);
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_bad_diffusers);
    tcase_add_test(tc, test_detect_hostile_layouts);
    tcase_add_test(tc, test_config_int_range);
    tcase_add_loop_test(tc, test_alloc_failure, 0, 2); /* single file, diffusers folder */
    return tc;
}
