/* textenc_tokenizer.c — test case textenc_tokenizer: the CLIP BPE tokenizer
 * against the reference ids of golden/tokenizer/ids.jsonl (openai CLIP
 * SimpleTokenizer with ftfy 6.3.1, and transformers' CLIPTokenizer as
 * configured for SD2), its limits, and `stipple tokenize`. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "textenc.h"

static int int_array_eq(const cJSON *arr, const int32_t *v, int n)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n) return 0;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        if ((int32_t)e->valuedouble != v[i++]) return 0;
    }
    return 1;
}

static void print_ids(const char *what, const int32_t *v, int n)
{
    fprintf(stderr, "  %s:", what);
    for (int i = 0; i < n && i < 80; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, "\n");
}

/* BOS + first 75 + EOS, padded to 77 with pad. */
static void window77(const int32_t *ids, int n, int32_t pad, int32_t *out)
{
    int k = n < 75 ? n : 75;
    out[0] = TE_BOS;
    memcpy(out + 1, ids, (size_t)k * sizeof *ids);
    out[k + 1] = TE_EOS;
    for (int i = k + 2; i < TE_CTX; i++) out[i] = pad;
}

START_TEST(tokenizer_golden_ids)
{
    cm_error err = {0};
    char *data = NULL;
    size_t size = 0;
    ck_assert_int_eq(cm_file_read_all(tu_data("golden/tokenizer/ids.jsonl"), &data, &size, &err), CM_OK);
    double t0 = cm_time_now();
    te_tokenizer *tok = te_tokenizer_create(&err);
    double ms = (cm_time_now() - t0) * 1e3;
    ck_assert_msg(tok, "%s", err.msg);
    fprintf(stderr, "te_tokenizer_create (first): %.1f ms wall\n", ms);

    int rows = 0, bad = 0, bad_sd2 = 0;
    for (char *line = data; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        cJSON *row = cJSON_Parse(line);
        ck_assert_msg(row, "ids.jsonl line %d is not JSON", rows + 1);
        int idx = cJSON_GetObjectItem(row, "i")->valueint;
        const char *prompt = cJSON_GetObjectItem(row, "prompt")->valuestring;
        int32_t *ids = NULL, full[4096], w[TE_CTX];
        int n = 0;
        ck_assert_int_eq(te_tokenize(tok, prompt, &ids, &n, &err), CM_OK);
        ck_assert_int_lt(n, 4094);
        full[0] = TE_BOS;
        memcpy(full + 1, ids, (size_t)n * sizeof *ids);
        full[n + 1] = TE_EOS;
        int ok = int_array_eq(cJSON_GetObjectItem(row, "ids"), full, n + 2);
        window77(ids, n, TE_EOS, w);
        ok &= int_array_eq(cJSON_GetObjectItem(row, "ids_77"), w, TE_CTX);
        window77(ids, n, 0, w);
        ok &= int_array_eq(cJSON_GetObjectItem(row, "ids_77_pad0"), w, TE_CTX);
        /* token strings */
        const cJSON *toks = cJSON_GetObjectItem(row, "tokens");
        for (int i = 0; ok && i < n + 2; i++) {
            const char *s = te_token_str(tok, full[i]);
            ok = s && !strcmp(s, cJSON_GetArrayItem(toks, i)->valuestring);
        }
        if (!ok) {
            bad++;
            fprintf(stderr, "prompt %d differs: %s\n", idx, prompt);
            print_ids("got ", full, n + 2);
        }
        cm_free(ids);

        ck_assert_int_eq(te_tokenize_ex(tok, prompt, TE_TOK_SD2_BANG, &ids, &n, &err), CM_OK);
        window77(ids, n, 0, w);
        if (!int_array_eq(cJSON_GetObjectItem(row, "hf_sd2_77"), w, TE_CTX)) {
            bad_sd2++;
            fprintf(stderr, "prompt %d differs from hf_sd2_77: %s\n", idx, prompt);
            print_ids("got ", w, TE_CTX);
        }
        cm_free(ids);
        cJSON_Delete(row);
        rows++;
        line = nl ? nl + 1 : NULL;
    }
    fprintf(stderr, "tokenizer goldens: %d prompts, %d differ (ids/ids_77/ids_77_pad0/tokens), "
                    "%d differ (hf_sd2_77)\n", rows, bad, bad_sd2);
    ck_assert_int_eq(rows, 204);
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(bad_sd2, 0);
    te_tokenizer_free(tok);
    cm_free(data);
}
END_TEST

/* Creation must be well under 100 ms. Measured in process CPU time (best of
 * 3) so that a loaded test machine does not make it flaky. */
START_TEST(tokenizer_create_fast)
{
    cm_error err = {0};
    double best = 1e9, best_wall = 1e9;
    for (int i = 0; i < 3; i++) {
        double t0 = cm_time_now();
        clock_t c0 = clock();
        te_tokenizer *tok = te_tokenizer_create(&err);
        double dt = (double)(clock() - c0) / CLOCKS_PER_SEC, dw = cm_time_now() - t0;
        ck_assert_msg(tok, "%s", err.msg);
        te_tokenizer_free(tok);
        if (dt < best) best = dt;
        if (dw < best_wall) best_wall = dw;
    }
    fprintf(stderr, "te_tokenizer_create best of 3: %.1f ms CPU, %.1f ms wall\n", best * 1e3,
            best_wall * 1e3);
    ck_assert_msg(best < 0.05, "tokenizer creation took %.1f ms CPU", best * 1e3);
}
END_TEST

START_TEST(tokenizer_limits)
{
    cm_error err = {0};
    te_tokenizer *tok = te_tokenizer_create(&err);
    ck_assert(tok);
    int32_t *ids = NULL;
    int n = -1;
    /* invalid UTF-8: replaced by U+FFFD (id of "ï¿½</w>"), never a crash */
    static const char *bad[] = {"\xff", "a\xc3", "\xe2\x82", "\xed\xa0\x80 x", "\xf4\x90\x80\x80",
                                "\xc0\xaf", "caf\xe9 \xf0\x9f\x90"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(te_tokenize(tok, bad[i], &ids, &n, &err), CM_OK);
        ck_assert_int_gt(n, 0);
        cm_free(ids);
    }
    /* "\xff" alone is U+FFFD = bytes ef bf bd */
    ck_assert_int_eq(te_tokenize(tok, "\xff", &ids, &n, &err), CM_OK);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(te_token_str(tok, ids[0]), "\xc3\xaf\xc2\xbf\xc2\xbd</w>");
    cm_free(ids);
    /* bad arguments */
    ck_assert_int_eq(te_tokenize(tok, NULL, &ids, &n, &err), CM_ERR_USAGE);
    ck_assert_int_eq(te_tokenize(NULL, "x", &ids, &n, &err), CM_ERR_USAGE);
    ck_assert_ptr_null(te_token_str(tok, -1));
    ck_assert_ptr_null(te_token_str(tok, 49408));
    ck_assert_str_eq(te_token_str(tok, 49406), "<|startoftext|>");
    /* HTML: numeric forms, out-of-range numbers, unknown names, no ';' */
    ck_assert_int_eq(te_tokenize(tok, "&#99999999999999999999; &#x110000; &bogus; &copy2024 &#0;",
                                 &ids, &n, &err), CM_OK);
    cm_free(ids);
    /* a very long word and many pieces */
    size_t big = 200000;
    char *s = malloc(big + 1);
    for (size_t i = 0; i < big; i++) s[i] = (i % 7 == 6) ? ' ' : (char)('a' + i % 5);
    s[big] = 0;
    ck_assert_int_eq(te_tokenize(tok, s, &ids, &n, &err), CM_OK);
    ck_assert_int_gt(n, 0);
    cm_free(ids);
    memset(s, 'q', big);
    ck_assert_int_eq(te_tokenize(tok, s, &ids, &n, &err), CM_OK);
    cm_free(ids);
    free(s);
    /* allocation failures: an error, never a crash */
    for (long k = 1; k < 40; k++) {
        cm_alloc_fail_at(k);
        cm_status st = te_tokenize(tok, "a photo of a ﬁne café &amp; 🐱, (masterpiece)", &ids, &n, &err);
        cm_alloc_fail_at(0);
        if (st == CM_OK) cm_free(ids);
        else ck_assert_int_eq(st, CM_ERR_NOMEM);
    }
    te_tokenizer_free(tok);
    for (long k = 1; k < 8; k++) {
        cm_alloc_fail_at(k);
        te_tokenizer *t2 = te_tokenizer_create(&err);
        cm_alloc_fail_at(0);
        if (t2) te_tokenizer_free(t2);
        else ck_assert_int_eq(err.status, CM_ERR_NOMEM);
    }
    te_tokenizer_free(NULL);
}
END_TEST

/* Long runs of combining marks: NFC's canonical ordering (a stable sort by
 * combining class) was an insertion sort, quadratic in the run length (32 KB
 * of alternating marks took seconds, a 256 KB prompt minutes). */
START_TEST(tokenizer_long_marks)
{
    cm_error err = {0};
    te_tokenizer *tok = te_tokenizer_create(&err);
    ck_assert(tok);
    /* U+0301 (ccc 230) and U+0316 (ccc 220) alternating sort to all U+0316
     * first: the same ids as the sorted text, after a starter too */
    const int k = 40;
    char alt[4 * 40 + 2] = "e", sorted[4 * 40 + 2] = "e";
    for (int i = 0; i < k; i++) {
        strcat(alt, "\xcc\x81\xcc\x96");
        strcat(sorted, "\xcc\x96");
    }
    for (int i = 0; i < k; i++) strcat(sorted, "\xcc\x81");
    int32_t *a = NULL, *b = NULL;
    int na = 0, nb = 0;
    for (int skip = 0; skip < 2; skip++) {
        ck_assert_int_eq(te_tokenize(tok, alt + skip, &a, &na, &err), CM_OK);
        ck_assert_int_eq(te_tokenize(tok, sorted + skip, &b, &nb, &err), CM_OK);
        ck_assert_int_eq(na, nb);
        for (int i = 0; i < na; i++) ck_assert_int_eq(a[i], b[i]);
        cm_free(a);
        cm_free(b);
    }
    for (long f = 1; f < 40; f++) {
        cm_alloc_fail_at(f);
        cm_status st = te_tokenize(tok, alt, &a, &na, &err);
        cm_alloc_fail_at(0);
        if (st == CM_OK) cm_free(a);
        else ck_assert_int_eq(st, CM_ERR_NOMEM);
    }
    /* 64k pairs (256 KB) in well under a few seconds of CPU */
    const size_t pairs = 65536;
    char *big = malloc(4 * pairs + 1);
    ck_assert(big);
    for (size_t i = 0; i < pairs; i++) memcpy(big + 4 * i, "\xcc\x81\xcc\x96", 4);
    big[4 * pairs] = 0;
    clock_t c0 = clock();
    ck_assert_int_eq(te_tokenize(tok, big, &a, &na, &err), CM_OK);
    double cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    ck_assert_int_gt(na, 0);
    cm_free(a);
    free(big);
    ck_assert_msg(cpu < 5.0, "256 KB of combining marks took %.1f s of CPU", cpu);
    te_tokenizer_free(tok);
}
END_TEST

/* Pairs the reference pipeline maps to the same ids (ftfy 6, html.unescape,
 * str.lower(), NFC), beyond what the golden prompts exercise. */
START_TEST(tokenizer_equivalences)
{
    static const char *const pairs[][2] = {
        {"\xce\x9f\xce\x94\xce\x9f\xce\xa3 \xce\xa3\xce\x91",     /* ΟΔΟΣ ΣΑ: final sigma */
         "\xce\xbf\xce\xb4\xce\xbf\xcf\x82 \xcf\x83\xce\xb1"},    /* οδος σα */
        {"\xc4\xb0", "i\xcc\x87"},                     /* İ -> i + U+0307 */
        {"\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3", "abc"},   /* fullwidth */
        {"e\xcc\x81", "\xc3\xa9"},                     /* NFC */
        {"\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab", "\xed\x95\x9c"}, /* Hangul jamo -> 한 */
        {"&lt;&#60;&#x3C;&LT", "<<<<"},                 /* html.unescape forms */
        {"&amp;amp;amp;amp;", "&"},                     /* ftfy's pass repeats */
        {"&NTILDE;", "\xc3\x91"},                       /* ftfy's upper-case names */
        {"\xe2\x80\x9cq\xe2\x80\x9d \xe2\x80\x98s\xe2\x80\x99", "\"q\" 's'"}, /* curly quotes */
        {"\x1b[31mred\x1b[0m", "red"},                  /* terminal escapes */
        {"a\r\nb\xe2\x80\xa8" "c", "a b c"},           /* line breaks */
        {"\xef\xac\x83", "ffi"},                         /* ligature */
        {"\xc2\x93x\xc2\x94", "\"x\""},                /* C1 controls read as cp1252 */
    };
    cm_error err = {0};
    te_tokenizer *tok = te_tokenizer_create(&err);
    ck_assert(tok);
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        int32_t *a = NULL, *b = NULL;
        int na = 0, nb = 0;
        ck_assert_int_eq(te_tokenize(tok, pairs[i][0], &a, &na, &err), CM_OK);
        ck_assert_int_eq(te_tokenize(tok, pairs[i][1], &b, &nb, &err), CM_OK);
        int same = na == nb && !memcmp(a, b, (size_t)na * sizeof *a);
        if (!same) {
            print_ids(pairs[i][0], a, na);
            print_ids(pairs[i][1], b, nb);
        }
        ck_assert_msg(same, "pair %zu tokenizes differently", i);
        cm_free(a);
        cm_free(b);
    }
    te_tokenizer_free(tok);
}
END_TEST

START_TEST(tokenizer_cli)
{
    char *out = NULL, *errs = NULL;
    char cmd[4096];
    /* golden prompt 4 "a photo of a cat" */
    snprintf(cmd, sizeof cmd, "'%s' tokenize 'a photo of a cat'", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 0);
    ck_assert_str_eq(out, "49406 320 1125 539 320 2368 49407\n");
    cm_free(out);
    cm_free(errs);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --json 'Hello world!'", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 0);
    cJSON *j = cJSON_Parse(out);
    ck_assert_msg(j, "not JSON: %s", out);
    const cJSON *ids = cJSON_GetObjectItem(j, "ids"), *toks = cJSON_GetObjectItem(j, "tokens");
    ck_assert_int_eq(cJSON_GetArraySize(ids), 5);
    ck_assert_int_eq(cJSON_GetArrayItem(ids, 3)->valueint, 256);
    ck_assert_str_eq(cJSON_GetArrayItem(toks, 1)->valuestring, "hello</w>");
    ck_assert_str_eq(cJSON_GetArrayItem(toks, 3)->valuestring, "!</w>");
    cJSON_Delete(j);
    cm_free(out);
    cm_free(errs);
    /* invalid UTF-8: still ids, and a warning naming the byte */
    snprintf(cmd, sizeof cmd, "'%s' tokenize \"$(printf 'ab\\377cd')\"", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 0);
    ck_assert_msg(errs && strstr(errs, "invalid UTF-8 from byte 2"), "stderr: %s", errs ? errs : "");
    cm_free(out);
    cm_free(errs);
    /* usage errors exit 2 */
    snprintf(cmd, sizeof cmd, "'%s' tokenize", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 2);
    cm_free(out);
    cm_free(errs);
    snprintf(cmd, sizeof cmd, "'%s' tokenize --bogus x", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 2);
    cm_free(out);
    cm_free(errs);
    snprintf(cmd, sizeof cmd, "'%s' tokenize a b", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 2);
    cm_free(out);
    cm_free(errs);
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m", tu_stipple());
    ck_assert_int_eq(tu_run(cmd, &out, &errs), 2);
    cm_free(out);
    cm_free(errs);
}
END_TEST

TCase *tc_textenc_tokenizer(void)
{
    TCase *tc = tu_tcase("textenc_tokenizer");
    tcase_add_test(tc, tokenizer_golden_ids);
    tcase_add_test(tc, tokenizer_create_fast);
    tcase_add_test(tc, tokenizer_limits);
    tcase_add_test(tc, tokenizer_long_marks);
    tcase_add_test(tc, tokenizer_equivalences);
    tcase_add_test(tc, tokenizer_cli);
    return tc;
}
