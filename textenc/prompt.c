/* prompt.c — AUTOMATIC1111 prompt syntax into 77-token windows with weights.
 *
 * Mirrors stable-diffusion-webui:
 *   modules/prompt_parser.py  parse_prompt_attention (re_attention, re_break)
 *   modules/sd_hijack_clip.py tokenize_line / next_chunk (chunk_length 75,
 *                             comma_padding_backtrack 20) and process_tokens
 *                             (for an encoder whose pad id is not EOS, every
 *                             position after the first EOS becomes pad)
 *
 * Parsing, token by token of re_attention (first alternative that matches):
 *   \( \) \[ \] \\   the escaped character as text, weight 1.0
 *   \                a lone backslash: nothing (A1111 drops it; we warn)
 *   ( [              open a bracket (remember the position in the result)
 *   :W)              W = [+-]?[.0-9]+, spaces allowed around it: multiply
 *                    everything since the innermost open '(' by W
 *   ) ]              multiply since the innermost '(' by 1.1, '[' by 1/1.1
 *   text             runs of [^\\()[\]:], or a ':' / ')' / ']' that closes
 *                    nothing; split at \s*\bBREAK\b\s* into parts with a
 *                    ("BREAK", -1) marker between them
 * Brackets still open at the end are closed there ('(' x1.1, '[' /1.1,
 * innermost last as in A1111's loop order). Neighbours with exactly equal
 * weights are merged; an empty result is ("", 1.0). Weights are doubles
 * during parsing (Python floats) and float32 in the chunks (torch).
 *
 * Chunking: each part is tokenized on its own (BOS/EOS-less ids). Tokens go
 * into a chunk of at most 75; when a non-comma token arrives at a full chunk
 * and a comma sits within its last 20 tokens, everything after that comma
 * moves to the next chunk; a ("BREAK", -1) part ends the chunk. Each chunk
 * becomes BOS + tokens + EOS-padding to 75 + EOS (77), weight 1.0 on BOS,
 * EOS and padding. An empty prompt is one chunk.
 *
 * A1111 raises on a weight that Python's float() rejects (":1.2.3)"); here
 * the match stays text and a warning says so. Extra networks, prompt
 * editing and AND: see prompt_preprocess below.
 */
#include "textenc_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 75
#define COMMA_BACKTRACK 20
#define COMMA_ID 267 /* ",</w>" */

/* ------------------------------------------------------------------------
 * parse_prompt_attention
 * ---------------------------------------------------------------------- */

typedef struct {
    te_prompt_part *v;
    int n, cap;
    int oom;
} parts;

static void parts_push(parts *p, const char *s, size_t len, double w)
{
    if (p->oom) return;
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 16;
        te_prompt_part *v = cm_alloc((size_t)cap * sizeof *v, "prompt parts", NULL);
        if (!v) {
            p->oom = 1;
            return;
        }
        if (p->n) memcpy(v, p->v, (size_t)p->n * sizeof *v);
        cm_free(p->v);
        p->v = v;
        p->cap = cap;
    }
    char *t = cm_alloc(len + 1, "prompt part", NULL);
    if (!t) {
        p->oom = 1;
        return;
    }
    memcpy(t, s, len);
    t[len] = 0;
    p->v[p->n].text = t;
    p->v[p->n].weight = w;
    p->n++;
}

static void parts_free(parts *p)
{
    for (int i = 0; i < p->n; i++) cm_free(p->v[i].text);
    cm_free(p->v);
    memset(p, 0, sizeof *p);
}

/* Decode one UTF-8 code point at s[i] (i < n); invalid bytes read as
 * themselves (only used for the BREAK boundary test). */
static uint32_t cp_at(const char *s, size_t n, size_t i, size_t *len)
{
    const unsigned char *u = (const unsigned char *)s;
    unsigned c = u[i];
    size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (i + k > n) k = 1;
    uint32_t cp = k == 1 ? c : c & (0x7F >> k);
    for (size_t j = 1; j < k; j++) {
        if ((u[i + j] & 0xC0) != 0x80) {
            *len = 1;
            return c;
        }
        cp = (cp << 6) | (u[i + j] & 0x3F);
    }
    *len = k;
    return cp;
}

/* The code point that ends just before s[i] (i > 0). */
static uint32_t cp_before(const char *s, size_t i, size_t *len)
{
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && (((const unsigned char *)s)[j] & 0xC0) == 0x80) j--;
    size_t l;
    uint32_t c = cp_at(s, i, j, &l);
    if (j + l != i) {
        *len = 1;
        return ((const unsigned char *)s)[i - 1];
    }
    *len = l;
    return c;
}

/* re.split(r"\s*\bBREAK\b\s*", text): append parts with BREAK markers. */
static void split_break(parts *out, const char *s, size_t n, double w)
{
    size_t start = 0, i = 0;
    while (i + 5 <= n) {
        const char *b = memchr(s + i, 'B', n - i);
        if (!b) break;
        size_t p = (size_t)(b - s);
        if (p + 5 > n) break;
        size_t l;
        int ok = !memcmp(s + p, "BREAK", 5) &&
                 (p == 0 || !te_is_word_py(cp_before(s, p, &l))) &&
                 (p + 5 == n || !te_is_word_py(cp_at(s, n, p + 5, &l)));
        if (!ok) {
            i = p + 1;
            continue;
        }
        /* the match starts at the whitespace run before BREAK (but not
         * before the end of the previous match) */
        size_t ms = p;
        while (ms > start) {
            uint32_t c = cp_before(s, ms, &l);
            if (!te_is_space_py(c)) break;
            ms -= l;
        }
        size_t me = p + 5;
        while (me < n) {
            uint32_t c = cp_at(s, n, me, &l);
            if (!te_is_space_py(c)) break;
            me += l;
        }
        parts_push(out, s + start, ms - start, w);
        parts_push(out, "BREAK", 5, -1.0);
        start = i = me;
    }
    parts_push(out, s + start, n - start, w);
}

static void multiply_range(parts *r, int from, double m)
{
    for (int p = from; p < r->n; p++) r->v[p].weight *= m;
}

/* Try `:\s*([+-]?[.\d]+)\s*\)` at s[i] == ':'. Returns the match length
 * (0 if none) and the number's span. */
static size_t match_weight(const char *s, size_t n, size_t i, size_t *num0, size_t *num1)
{
    size_t k = i + 1, l;
    while (k < n && te_is_space_py(cp_at(s, n, k, &l))) k += l;
    *num0 = k;
    if (k < n && (s[k] == '+' || s[k] == '-')) k++;
    size_t d = k;
    while (k < n && (s[k] == '.' || (s[k] >= '0' && s[k] <= '9'))) k++;
    if (k == d) return 0;
    *num1 = k;
    while (k < n && te_is_space_py(cp_at(s, n, k, &l))) k += l;
    if (k < n && s[k] == ')') return k + 1 - i;
    return 0;
}

/* Python's float() on [+-]?[.0-9]+: at most one '.', at least one digit. */
static int parse_weight(const char *s, size_t n, double *w)
{
    char buf[64];
    int dots = 0, digits = 0;
    for (size_t i = 0; i < n; i++) {
        dots += s[i] == '.';
        digits += s[i] >= '0' && s[i] <= '9';
    }
    if (dots > 1 || !digits || n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *end;
    *w = strtod(buf, &end);
    return *end == 0;
}

static cm_status parse_prompt_attention(const char *s, parts *res, cm_error *err)
{
    size_t n = strlen(s);
    int *round = NULL, *square = NULL, nr = 0, ns = 0;
    round = cm_alloc((n + 1) * sizeof *round, "prompt brackets", err);
    square = cm_alloc((n + 1) * sizeof *square, "prompt brackets", err);
    if (!round || !square) goto oom;
    const double round_mul = 1.1, square_mul = 1 / 1.1;
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '\\') {
            char d = i + 1 < n ? s[i + 1] : 0;
            if (d == '(' || d == ')' || d == '[' || d == ']' || d == '\\') {
                parts_push(res, s + i + 1, 1, 1.0);
                i += 2;
            } else {
                cm_warn("prompt: lone backslash at byte %zu dropped (as A1111 does; write \\\\ for a "
                        "backslash)", i);
                parts_push(res, "", 0, 1.0);
                i += 1;
            }
        } else if (c == '(') {
            round[nr++] = res->n;
            i++;
        } else if (c == '[') {
            square[ns++] = res->n;
            i++;
        } else if (c == ':') {
            size_t a, b, len = match_weight(s, n, i, &a, &b);
            double w;
            if (len && nr > 0 && parse_weight(s + a, b - a, &w)) {
                multiply_range(res, round[--nr], w);
            } else {
                if (len && nr > 0)
                    cm_warn("prompt: weight \"%.*s\" is not a number; kept as text", (int)(b - a), s + a);
                /* the whole ":W)" is text when no '(' is open, else ':' alone */
                size_t tl = len && nr == 0 ? len : 1;
                split_break(res, s + i, tl, 1.0);
                i += tl;
                continue;
            }
            i += len;
        } else if (c == ')' && nr > 0) {
            multiply_range(res, round[--nr], round_mul);
            i++;
        } else if (c == ']' && ns > 0) {
            multiply_range(res, square[--ns], square_mul);
            i++;
        } else if (c == ')' || c == ']') {
            split_break(res, s + i, 1, 1.0);
            i++;
        } else {
            size_t e = i;
            while (e < n && !strchr("\\()[]:", s[e])) e++;
            split_break(res, s + i, e - i, 1.0);
            i = e;
        }
    }
    for (int k = 0; k < nr; k++) multiply_range(res, round[k], round_mul);
    for (int k = 0; k < ns; k++) multiply_range(res, square[k], square_mul);
    cm_free(round);
    cm_free(square);
    round = square = NULL;
    if (res->n == 0) parts_push(res, "", 0, 1.0);
    if (res->oom) goto oom;
    /* merge runs of identical weights, each run concatenated once (merging
     * pairwise was quadratic: a 32 KB prompt of "\\(" took seconds) */
    int w = 0;
    for (int k = 0; k < res->n;) {
        int e = k + 1;
        size_t len = strlen(res->v[k].text);
        while (e < res->n && res->v[e].weight == res->v[k].weight) len += strlen(res->v[e++].text);
        if (e - k > 1) {
            char *t = cm_alloc(len + 1, "prompt part", err);
            if (!t) { /* [0, w) hold the merged parts; [k, n) are untouched */
                for (int q = k; q < res->n; q++) cm_free(res->v[q].text);
                res->n = w;
                goto oom;
            }
            size_t o = 0;
            for (int q = k; q < e; q++) {
                size_t l = strlen(res->v[q].text);
                memcpy(t + o, res->v[q].text, l);
                o += l;
                cm_free(res->v[q].text);
            }
            t[o] = 0;
            res->v[w].text = t;
            res->v[w].weight = res->v[k].weight;
        } else {
            res->v[w] = res->v[k];
        }
        w++;
        k = e;
    }
    res->n = w;
    return CM_OK;
oom:
    cm_free(round);
    cm_free(square);
    return cm_error_set(err, CM_ERR_NOMEM, "prompt: out of memory parsing a %zu-byte prompt", n);
}

cm_status te_prompt_parse(const char *prompt, te_prompt_part **out, int *n, cm_error *err)
{
    *out = NULL;
    *n = 0;
    if (!prompt) return cm_error_set(err, CM_ERR_USAGE, "te_prompt_parse: no prompt");
    parts res = {0};
    cm_status st = parse_prompt_attention(prompt, &res, err);
    if (st != CM_OK) {
        parts_free(&res);
        return st;
    }
    *out = res.v;
    *n = res.n;
    return CM_OK;
}

void te_prompt_parts_free(te_prompt_part *parts, int n)
{
    for (int i = 0; parts && i < n; i++) cm_free(parts[i].text);
    cm_free(parts);
}

/* ------------------------------------------------------------------------
 * tokenize_line: 75-token chunks
 * ---------------------------------------------------------------------- */

typedef struct {
    int32_t tok[CHUNK];
    float mul[CHUNK];
    int n;
} chunk_acc;

static cm_status chunks_grow(te_chunks *c, int32_t pad_id, cm_error *err)
{
    int n = c->nchunks + 1;
    int32_t *ids = cm_alloc((size_t)n * TE_CTX * sizeof *ids, "prompt chunks", err);
    float *w = cm_alloc((size_t)n * TE_CTX * sizeof *w, "prompt chunk weights", err);
    if (!ids || !w) {
        cm_free(ids);
        cm_free(w);
        return err ? err->status : CM_ERR_NOMEM;
    }
    if (c->nchunks) {
        memcpy(ids, c->ids, (size_t)c->nchunks * TE_CTX * sizeof *ids);
        memcpy(w, c->weights, (size_t)c->nchunks * TE_CTX * sizeof *w);
    }
    cm_free(c->ids);
    cm_free(c->weights);
    c->ids = ids;
    c->weights = w;
    c->nchunks = n;
    (void)pad_id;
    return CM_OK;
}

/* next_chunk(): wrap acc as BOS + tokens + EOS padding + EOS, then for a pad
 * id other than EOS, pad after the first EOS (process_tokens). */
static cm_status emit_chunk(te_chunks *c, chunk_acc *acc, int32_t pad_id, cm_error *err)
{
    if (chunks_grow(c, pad_id, err) != CM_OK) return err ? err->status : CM_ERR_NOMEM;
    int32_t *ids = c->ids + (size_t)(c->nchunks - 1) * TE_CTX;
    float *w = c->weights + (size_t)(c->nchunks - 1) * TE_CTX;
    ids[0] = TE_BOS;
    w[0] = 1.0f;
    for (int i = 0; i < CHUNK; i++) {
        ids[1 + i] = i < acc->n ? acc->tok[i] : TE_EOS;
        w[1 + i] = i < acc->n ? acc->mul[i] : 1.0f;
    }
    ids[TE_CTX - 1] = TE_EOS;
    w[TE_CTX - 1] = 1.0f;
    if (pad_id != TE_EOS) {
        int k = 0;
        while (ids[k] != TE_EOS) k++;
        for (k++; k < TE_CTX; k++) ids[k] = pad_id;
    }
    acc->n = 0;
    return CM_OK;
}

/* ------------------------------------------------------------------------
 * A1111 syntax outside parse_prompt_attention
 *
 * A1111 reads three more constructs before the attention parser; stipple
 * implements none of them, and says so instead of misreading silently:
 *   <name:args>          extra networks (LoRA, hypernetworks): A1111 removes
 *                        them from the text (extra_networks.parse_prompt,
 *                        <(\w+):([^>]+)>); so do we, with a warning
 *   [a:b:when] [a|b]     prompt editing / alternation: kept as text
 *   AND                  composable diffusion: kept as the word "and"
 * ---------------------------------------------------------------------- */

static int is_word_at(const char *s, size_t n, size_t i, size_t *len)
{
    return te_is_word_py(cp_at(s, n, i, len));
}

/* A copy of s without extra-network tags; warnings for the rest. */
static char *prompt_preprocess(const char *s, cm_error *err)
{
    size_t n = strlen(s), o = 0, l;
    char *out = cm_alloc(n + 1, "prompt", err);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        if (s[i] == '<') {
            size_t k = i + 1;
            while (k < n && is_word_at(s, n, k, &l)) k += l;
            const char *gt = k > i + 1 && k + 1 < n && s[k] == ':' && s[k + 1] != '>'
                                 ? memchr(s + k + 1, '>', n - k - 1)
                                 : NULL;
            if (gt) {
                size_t e = (size_t)(gt - s) + 1;
                cm_warn("prompt: extra network \"%.*s\" is not supported; removed from the prompt "
                        "(as A1111 removes it from the text)", (int)(e - i > 80 ? 80 : e - i), s + i);
                i = e;
                continue;
            }
        }
        out[o++] = s[i++];
    }
    out[o] = 0;
    int depth = 0, editing = 0;
    for (size_t i = 0; i < o; i++) {
        char c = out[i];
        if (c == '\\') i++;
        else if (c == '[') depth++;
        else if (c == ']' && depth > 0) depth--;
        else if (depth > 0 && (c == ':' || c == '|')) editing = 1;
    }
    if (editing)
        cm_warn("prompt: A1111 prompt editing / alternation ([a:b:when], [a|b]) is not supported; "
                "the text inside [ ] is used as it stands, weighted /1.1");
    for (size_t i = 0; i + 3 <= o; i++) {
        if (memcmp(out + i, "AND", 3)) continue;
        if ((i == 0 || !te_is_word_py(cp_before(out, i, &l))) &&
            (i + 3 == o || !is_word_at(out, o, i + 3, &l))) {
            cm_warn("prompt: composable diffusion (AND) is not supported; \"AND\" is read as the "
                    "word \"and\"");
            break;
        }
    }
    return out;
}

cm_status te_prompt_chunks_ex(const te_tokenizer *t, const char *prompt, int32_t pad_id,
                              unsigned flags, te_chunks *out, cm_error *err)
{
    memset(out, 0, sizeof *out);
    if (!t || !prompt) return cm_error_set(err, CM_ERR_USAGE, "te_prompt_chunks: no tokenizer or prompt");
    parts res = {0};
    chunk_acc acc = {.n = 0};
    char *text = prompt_preprocess(prompt, err);
    if (!text) return err ? err->status : CM_ERR_NOMEM;
    cm_status st = parse_prompt_attention(text, &res, err);
    cm_free(text);
    if (st != CM_OK) goto fail;
    int last_comma = -1;
    for (int pi = 0; pi < res.n; pi++) {
        if (!strcmp(res.v[pi].text, "BREAK") && res.v[pi].weight == -1.0) {
            if ((st = emit_chunk(out, &acc, pad_id, err)) != CM_OK) goto fail;
            last_comma = -1;
            continue;
        }
        int32_t *ids = NULL;
        int n = 0;
        if ((st = te_tokenize_ex(t, res.v[pi].text, flags, &ids, &n, err)) != CM_OK) goto fail;
        float wf = (float)res.v[pi].weight;
        for (int k = 0; k < n; k++) {
            int32_t tok = ids[k];
            if (tok == COMMA_ID) {
                last_comma = acc.n;
            } else if (acc.n == CHUNK && last_comma != -1 && acc.n - last_comma <= COMMA_BACKTRACK) {
                int brk = last_comma + 1;
                chunk_acc rest = {.n = acc.n - brk};
                memcpy(rest.tok, acc.tok + brk, (size_t)rest.n * sizeof *rest.tok);
                memcpy(rest.mul, acc.mul + brk, (size_t)rest.n * sizeof *rest.mul);
                acc.n = brk;
                if ((st = emit_chunk(out, &acc, pad_id, err)) != CM_OK) break;
                last_comma = -1;
                acc = rest;
            }
            if (acc.n == CHUNK) {
                if ((st = emit_chunk(out, &acc, pad_id, err)) != CM_OK) break;
                last_comma = -1;
            }
            acc.tok[acc.n] = tok;
            acc.mul[acc.n] = wf;
            acc.n++;
        }
        cm_free(ids);
        if (st != CM_OK) goto fail;
    }
    if (acc.n > 0 || out->nchunks == 0)
        if ((st = emit_chunk(out, &acc, pad_id, err)) != CM_OK) goto fail;
    parts_free(&res);
    return CM_OK;
fail:
    parts_free(&res);
    te_chunks_release(out);
    return st;
}

cm_status te_prompt_chunks(const te_tokenizer *t, const char *prompt, int32_t pad_id,
                           te_chunks *out, cm_error *err)
{
    return te_prompt_chunks_ex(t, prompt, pad_id, 0, out, err);
}

cm_status te_chunks_pad_to(te_chunks *c, int nchunks, int32_t pad_id, cm_error *err)
{
    while (c->nchunks < nchunks) {
        chunk_acc empty = {.n = 0};
        cm_status st = emit_chunk(c, &empty, pad_id, err);
        if (st != CM_OK) return st;
    }
    return CM_OK;
}

void te_chunks_release(te_chunks *c)
{
    if (!c) return;
    cm_free(c->ids);
    cm_free(c->weights);
    memset(c, 0, sizeof *c);
}
