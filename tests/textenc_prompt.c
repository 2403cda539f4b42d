/* textenc_prompt.c — test case textenc_prompt: A1111 prompt syntax and the
 * 75-token chunk layout.
 *
 * Expected values are derived by hand from stable-diffusion-webui:
 *  - modules/prompt_parser.py, parse_prompt_attention: its docstring
 *    examples are copied as they stand there (the weights of "house" and
 *    "sky" are the Python doubles it prints); the other rows follow the
 *    re_attention / re_break rules, the weight written as the same chain of
 *    double multiplications Python performs (1.0 * 1.1 * 1.1 ...).
 *  - modules/sd_hijack_clip.py, tokenize_line / next_chunk / process_tokens:
 *    75-token chunks, comma_padding_backtrack 20, BREAK, BOS + 75 + EOS with
 *    EOS padding, then (pad id != EOS) pad after the first EOS.
 * Token ids of the words used ("a" 320, "cat" 2368, "," 267) are those of
 * golden/tokenizer/ids.jsonl (prompts 4 and 80).
 */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "textenc_internal.h"

#define MAXP 10

static const struct {
    const char *prompt;
    int n;
    struct {
        const char *text;
        double w;
    } p[MAXP];
} parse_cases[] = {
    /* docstring of parse_prompt_attention */
    {"normal text", 1, {{"normal text", 1.0}}},
    {"an (important) word", 3, {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}},
    {"(unbalanced", 1, {{"unbalanced", 1.1}}},
    {"\\(literal\\]", 1, {{"(literal]", 1.0}}},
    {"(unnecessary)(parens)", 1, {{"unnecessaryparens", 1.1}}},
    {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     9,
     {{"a ", 1.0},
      {"house", 1.5730000000000004},
      {" ", 1.1},
      {"on", 1.0},
      {" a ", 1.1},
      {"hill", 0.55},
      {", sun, ", 1.1},
      {"sky", 1.4641000000000006},
      {".", 1.1}}},
    /* empty prompt */
    {"", 1, {{"", 1.0}}},
    /* nesting multiplies, innermost first */
    {"((cat))", 1, {{"cat", 1.0 * 1.1 * 1.1}}},
    {"[[cat]]", 1, {{"cat", 1.0 * (1 / 1.1) * (1 / 1.1)}}},
    {"([cat])", 1, {{"cat", 1.0 * (1 / 1.1) * 1.1}}},
    {"(a(b)c)", 3, {{"a", 1.1}, {"b", 1.0 * 1.1 * 1.1}, {"c", 1.1}}},
    {"((a:1.5) b)", 2, {{"a", 1.0 * 1.5 * 1.1}, {" b", 1.1}}},
    /* explicit weights: spaces, sign, leading dot */
    {"(cat: 1.3 )", 1, {{"cat", 1.3}}},
    {"(cat:+.5) dog", 2, {{"cat", 0.5}, {" dog", 1.0}}},
    {"(cat:-1)", 1, {{"cat", -1.0}}},
    /* unbalanced: closed at the end, ( before [ */
    {"[cat", 1, {{"cat", 1 / 1.1}}},
    {"([cat", 1, {{"cat", 1.0 * 1.1 * (1 / 1.1)}}},
    {"(cat:1.3", 1, {{"cat:1.3", 1.1}}},
    /* closers and weights with nothing open are text */
    {"cat:1.5)", 1, {{"cat:1.5)", 1.0}}},
    {"a) b] c", 1, {{"a) b] c", 1.0}}},
    {"a:b", 1, {{"a:b", 1.0}}},
    /* escapes */
    {"\\\\ \\[x\\] \\(y\\)", 1, {{"\\ [x] (y)", 1.0}}},
    {"(\\(a\\))", 1, {{"(a)", 1.1}}},
    /* a lone backslash is dropped (with a warning here) */
    {"C:\\Users", 1, {{"C:Users", 1.0}}},
    /* BREAK: a separate part, surrounding whitespace eaten, whole word only */
    {"a BREAK b", 3, {{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}},
    {"a\n BREAK\tb", 3, {{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}},
    {"BREAK", 3, {{"", 1.0}, {"BREAK", -1.0}, {"", 1.0}}},
    {"a BREAKfast xBREAK BREAK_ break", 1, {{"a BREAKfast xBREAK BREAK_ break", 1.0}}},
    {"a, BREAK, b", 3, {{"a,", 1.0}, {"BREAK", -1.0}, {", b", 1.0}}},
    {"(a BREAK b)", 3, {{"a", 1.1}, {"BREAK", -1.0 * 1.1}, {"b", 1.1}}},
    /* a weight Python's float() rejects: ours keeps it as text (A1111 raises) */
    {"(a:1.2.3)", 1, {{"a:1.2.3", 1.1}}},
};

START_TEST(prompt_parse_table)
{
    cm_error err = {0};
    int bad = 0;
    for (size_t c = 0; c < sizeof parse_cases / sizeof parse_cases[0]; c++) {
        te_prompt_part *p = NULL;
        int n = 0;
        ck_assert_int_eq(te_prompt_parse(parse_cases[c].prompt, &p, &n, &err), CM_OK);
        int ok = n == parse_cases[c].n;
        for (int i = 0; ok && i < n; i++)
            ok = !strcmp(p[i].text, parse_cases[c].p[i].text) && p[i].weight == parse_cases[c].p[i].w;
        if (!ok) {
            bad++;
            fprintf(stderr, "parse \"%s\": got", parse_cases[c].prompt);
            for (int i = 0; i < n; i++) fprintf(stderr, " [\"%s\", %.17g]", p[i].text, p[i].weight);
            fprintf(stderr, "; want");
            for (int i = 0; i < parse_cases[c].n; i++)
                fprintf(stderr, " [\"%s\", %.17g]", parse_cases[c].p[i].text, parse_cases[c].p[i].w);
            fprintf(stderr, "\n");
        }
        te_prompt_parts_free(p, n);
    }
    ck_assert_int_eq(bad, 0);
}
END_TEST

enum { A = 320, CAT = 2368, COMMA = 267 };

/* Build "w w w ..." */
static void repeat(char *buf, size_t cap, const char *w, int n)
{
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        strncat(buf, w, cap - strlen(buf) - 1);
        strncat(buf, " ", cap - strlen(buf) - 1);
    }
}

/* Check one chunk: BOS, toks (weights w), EOS, then padding. */
static void check_chunk(const te_chunks *c, int k, const int32_t *toks, const float *w, int n,
                        int32_t pad)
{
    const int32_t *ids = c->ids + k * TE_CTX;
    const float *ws = c->weights + k * TE_CTX;
    ck_assert_int_eq(ids[0], TE_BOS);
    ck_assert_float_eq(ws[0], 1.0f);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(ids[1 + i] == toks[i], "chunk %d position %d: id %d, want %d", k, 1 + i,
                      ids[1 + i], toks[i]);
        ck_assert_msg(ws[1 + i] == w[i], "chunk %d position %d: weight %g, want %g", k, 1 + i,
                      (double)ws[1 + i], (double)w[i]);
    }
    ck_assert_int_eq(ids[1 + n], TE_EOS);
    for (int i = n + 1; i < TE_CTX; i++) {
        if (i > n + 1) ck_assert_int_eq(ids[i], i == TE_CTX - 1 && pad == TE_EOS ? TE_EOS : pad);
        ck_assert_float_eq(ws[i], 1.0f);
    }
}

START_TEST(prompt_chunks_basic)
{
    cm_error err = {0};
    te_tokenizer *t = te_tokenizer_create(&err);
    ck_assert(t);
    ck_assert_str_eq(te_token_str(t, COMMA), ",</w>");
    te_chunks c;
    int32_t toks[80];
    float w[80];

    /* empty prompt: one chunk, both pad conventions */
    ck_assert_int_eq(te_prompt_chunks(t, "", TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 1);
    check_chunk(&c, 0, toks, w, 0, TE_EOS);
    te_chunks_release(&c);
    ck_assert_int_eq(te_prompt_chunks(t, "", 0, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 1);
    check_chunk(&c, 0, toks, w, 0, 0);
    ck_assert_int_eq(c.ids[TE_CTX - 1], 0);

    /* pad an uncond to 3 chunks with empty-prompt chunks */
    ck_assert_int_eq(te_chunks_pad_to(&c, 3, 0, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 3);
    for (int k = 0; k < 3; k++) check_chunk(&c, k, toks, w, 0, 0);
    ck_assert_int_eq(te_chunks_pad_to(&c, 2, 0, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 3);
    te_chunks_release(&c);
    te_chunks_release(&c);

    /* weights per token, 1.0 elsewhere */
    ck_assert_int_eq(te_prompt_chunks(t, "a (cat:1.5)", TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 1);
    toks[0] = A, toks[1] = CAT, w[0] = 1.0f, w[1] = 1.5f;
    check_chunk(&c, 0, toks, w, 2, TE_EOS);
    te_chunks_release(&c);
    ck_assert_int_eq(te_prompt_chunks(t, "[a] ((cat))", 0, &c, &err), CM_OK);
    w[0] = (float)(1 / 1.1), w[1] = (float)(1.0 * 1.1 * 1.1);
    check_chunk(&c, 0, toks, w, 2, 0);
    te_chunks_release(&c);

    /* BREAK */
    ck_assert_int_eq(te_prompt_chunks(t, "a BREAK cat", TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    w[0] = w[1] = 1.0f;
    check_chunk(&c, 0, toks, w, 1, TE_EOS);
    check_chunk(&c, 1, toks + 1, w, 1, TE_EOS);
    te_chunks_release(&c);
    ck_assert_int_eq(te_prompt_chunks(t, "BREAK cat", TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2); /* an empty first chunk */
    check_chunk(&c, 0, toks, w, 0, TE_EOS);
    check_chunk(&c, 1, toks + 1, w, 1, TE_EOS);
    te_chunks_release(&c);
    ck_assert_int_eq(te_prompt_chunks(t, "a BREAK", TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 1); /* nothing after the last BREAK: no chunk */
    te_chunks_release(&c);
    ck_assert_int_eq(te_prompt_chunks(t, "a BREAK BREAK cat", 0, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 3);
    check_chunk(&c, 1, toks, w, 0, 0);
    te_chunks_release(&c);

    /* extra networks are removed as A1111 removes them; other <...> stays */
    ck_assert_int_eq(te_prompt_chunks(t, "a <lora:some_lora:0.8>cat<hypernet:x:1>", TE_EOS, &c, &err),
                     CM_OK);
    ck_assert_int_eq(c.nchunks, 1);
    toks[0] = A, toks[1] = CAT, w[0] = w[1] = 1.0f;
    check_chunk(&c, 0, toks, w, 2, TE_EOS);
    te_chunks_release(&c);
    ck_assert_int_eq(te_prompt_chunks(t, "<a> <:b> <c:>", TE_EOS, &c, &err), CM_OK);
    ck_assert_int_gt(c.ids[1], 0);
    ck_assert_int_ne(c.ids[1], TE_EOS);
    te_chunks_release(&c);

    /* a literal <|endoftext|> with pad 0: padding starts after the first EOS */
    ck_assert_int_eq(te_prompt_chunks(t, "a <|endoftext|> cat", 0, &c, &err), CM_OK);
    ck_assert_int_eq(c.ids[1], A);
    ck_assert_int_eq(c.ids[2], TE_EOS);
    for (int i = 3; i < TE_CTX; i++) ck_assert_int_eq(c.ids[i], 0);
    te_chunks_release(&c);
    te_tokenizer_free(t);
}
END_TEST

START_TEST(prompt_chunks_boundaries)
{
    cm_error err = {0};
    te_tokenizer *t = te_tokenizer_create(&err);
    ck_assert(t);
    static char buf[8192], buf2[4096];
    te_chunks c;
    int32_t toks[80];
    float w[80];
    for (int i = 0; i < 80; i++) w[i] = 1.0f;

    /* exactly 75 tokens: one full chunk, no padding at all */
    repeat(buf, sizeof buf, "cat", 75);
    ck_assert_int_eq(te_prompt_chunks(t, buf, 0, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 1);
    for (int i = 0; i < 75; i++) toks[i] = CAT;
    check_chunk(&c, 0, toks, w, 75, 0);
    te_chunks_release(&c);

    /* 80 tokens, no comma: 75 + 5 */
    repeat(buf, sizeof buf, "cat", 80);
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    check_chunk(&c, 0, toks, w, 75, TE_EOS);
    check_chunk(&c, 1, toks, w, 5, TE_EOS);
    te_chunks_release(&c);

    /* comma at index 70 (5 back from the boundary): the chunk is cut after it */
    repeat(buf, sizeof buf, "cat", 70);
    repeat(buf2, sizeof buf2, "a", 10);
    strcat(buf, ", ");
    strcat(buf, buf2);
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    toks[70] = COMMA;
    check_chunk(&c, 0, toks, w, 71, TE_EOS);
    for (int i = 0; i < 10; i++) toks[i] = A;
    check_chunk(&c, 1, toks, w, 10, TE_EOS);
    te_chunks_release(&c);

    /* comma at index 55: 75 - 55 = 20, still moved back */
    repeat(buf, sizeof buf, "cat", 55);
    repeat(buf2, sizeof buf2, "a", 25);
    strcat(buf, ", ");
    strcat(buf, buf2);
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    for (int i = 0; i < 55; i++) toks[i] = CAT;
    toks[55] = COMMA;
    check_chunk(&c, 0, toks, w, 56, TE_EOS);
    for (int i = 0; i < 25; i++) toks[i] = A;
    check_chunk(&c, 1, toks, w, 25, TE_EOS);
    te_chunks_release(&c);

    /* comma at index 54: 21 back, the boundary stays at 75 */
    repeat(buf, sizeof buf, "cat", 54);
    repeat(buf2, sizeof buf2, "a", 26);
    strcat(buf, ", ");
    strcat(buf, buf2);
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    for (int i = 0; i < 54; i++) toks[i] = CAT;
    toks[54] = COMMA;
    for (int i = 55; i < 75; i++) toks[i] = A;
    check_chunk(&c, 0, toks, w, 75, TE_EOS);
    for (int i = 0; i < 6; i++) toks[i] = A;
    check_chunk(&c, 1, toks, w, 6, TE_EOS);
    te_chunks_release(&c);

    /* a comma arriving at a full chunk starts the next one and is not
     * remembered there (next_chunk resets last_comma) */
    repeat(buf, sizeof buf, "cat", 75);
    strcat(buf, ", ");
    repeat(buf2, sizeof buf2, "a", 3);
    strcat(buf, buf2);
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    toks[0] = COMMA, toks[1] = toks[2] = toks[3] = A;
    check_chunk(&c, 1, toks, w, 4, TE_EOS);
    te_chunks_release(&c);

    /* moved tokens keep their weights */
    repeat(buf, sizeof buf, "cat", 72);
    strcat(buf, ", (a a a a:1.25)");
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 2);
    for (int i = 0; i < 4; i++) toks[i] = A, w[i] = 1.25f;
    check_chunk(&c, 1, toks, w, 4, TE_EOS);
    te_chunks_release(&c);

    /* a long prompt makes as many chunks as needed */
    repeat(buf, sizeof buf, "cat", 1000);
    ck_assert_int_eq(te_prompt_chunks(t, buf, TE_EOS, &c, &err), CM_OK);
    ck_assert_int_eq(c.nchunks, 14);
    te_chunks_release(&c);
    te_tokenizer_free(t);
}
END_TEST

START_TEST(prompt_limits)
{
    cm_error err = {0};
    te_tokenizer *t = te_tokenizer_create(&err);
    ck_assert(t);
    te_chunks c;
    ck_assert_int_eq(te_prompt_chunks(t, NULL, TE_EOS, &c, &err), CM_ERR_USAGE);
    ck_assert_int_eq(te_prompt_chunks(NULL, "x", TE_EOS, &c, &err), CM_ERR_USAGE);
    static const char *odd[] = {"((((((((((", "))))]]]]", "(:)", "(:1.)", "(x:.)", "\\", "(\\",
                                "[(])", "\xff(\xfe:1)", "BREAK BREAK BREAK", "(BREAK:0.5)",
                                "[cat:dog:0.5] AND [a|b]", "<lora:", "<x:y", "<<lora:a:1>>"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        ck_assert_int_eq(te_prompt_chunks(t, odd[i], 0, &c, &err), CM_OK);
        ck_assert_int_ge(c.nchunks, 1);
        te_chunks_release(&c);
    }
    for (long k = 1; k < 30; k++) {
        cm_alloc_fail_at(k);
        cm_status st = te_prompt_chunks(t, "a (b:1.2) [c] BREAK d, e", TE_EOS, &c, &err);
        cm_alloc_fail_at(0);
        if (st == CM_OK) te_chunks_release(&c);
        else ck_assert_int_eq(st, CM_ERR_NOMEM);
        ck_assert_ptr_null(st == CM_OK ? NULL : c.ids);
    }
    /* allocation failure while merging runs of equal weights */
    for (long k = 1; k < 40; k++) {
        te_prompt_part *parts = NULL;
        int np = 0;
        cm_alloc_fail_at(k);
        cm_status st = te_prompt_parse("a\\(b\\)c (d) e\\[f", &parts, &np, &err);
        cm_alloc_fail_at(0);
        if (st == CM_OK) {
            ck_assert_int_eq(np, 3);
            ck_assert_str_eq(parts[0].text, "a(b)c ");
            ck_assert_str_eq(parts[2].text, " e[f");
            te_prompt_parts_free(parts, np);
        } else {
            ck_assert_int_eq(st, CM_ERR_NOMEM);
        }
    }
    te_tokenizer_free(t);
}
END_TEST

/* Long prompts parse in linear time: 100k escaped brackets (100k parts of
 * weight 1 merged into one) took minutes when runs were merged pairwise. */
START_TEST(prompt_long_linear)
{
    const int n = 100000;
    char *s = malloc(2 * (size_t)n + 1);
    ck_assert(s);
    for (int i = 0; i < n; i++) memcpy(s + 2 * i, "\\(", 2);
    s[2 * n] = 0;
    cm_error err = {0};
    te_prompt_part *parts = NULL;
    int np = 0;
    clock_t c0 = clock();
    ck_assert_msg(te_prompt_parse(s, &parts, &np, &err) == CM_OK, "%s", err.msg);
    double cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    ck_assert_int_eq(np, 1);
    ck_assert_int_eq((int)strlen(parts[0].text), n);
    ck_assert_msg(cpu < 5.0, "parsing %d escaped brackets took %.1f s of CPU", n, cpu);
    te_prompt_parts_free(parts, np);
    free(s);
}
END_TEST

TCase *tc_textenc_prompt(void)
{
    TCase *tc = tu_tcase("textenc_prompt");
    tcase_add_test(tc, prompt_parse_table);
    tcase_add_test(tc, prompt_chunks_basic);
    tcase_add_test(tc, prompt_chunks_boundaries);
    tcase_add_test(tc, prompt_limits);
    tcase_add_test(tc, prompt_long_linear);
    return tc;
}
