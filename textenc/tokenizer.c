/* tokenizer.c — the CLIP byte-level BPE tokenizer, built into the binary.
 *
 * Mirrors openai CLIP's simple_tokenizer.py (SimpleTokenizer.encode), the
 * reference of the tokenizer goldens (golden README §8):
 *
 *   ftfy.fix_text           the subset of ftfy 6.3 that changes prompts:
 *                           HTML entities (ftfy's own pass), terminal
 *                           escapes, mojibake (whole text re-read as UTF-8
 *                           after encoding as sloppy cp1252/latin-1 — ftfy's
 *                           main fix_encoding path, without its "badness"
 *                           heuristic and the partial-text fixers), C1
 *                           controls, latin ligatures, character width,
 *                           curly quotes, line breaks, control characters,
 *                           NFC; repeated until nothing changes, per line
 *   html.unescape twice     full HTML5 named table + numeric forms, exactly
 *                           as Python's html.unescape
 *   strip, \s+ -> ' ', lower  Python's str.lower() (full mappings, e.g.
 *                           İ -> i + U+0307; final sigma approximated: Σ at
 *                           the end of a letter run -> ς)
 *   pre-tokenisation        <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|
 *                           'll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 *   byte-level BPE          48,894 merges, "</w>" marks a word's last symbol
 *
 * Vocabulary layout (as CLIP builds it): ids 0..255 are the 256 bytes in
 * bytes_to_unicode order, 256..511 the same with "</w>", 512 + r the result
 * of merge r, 49406 <|startoftext|>, 49407 <|endoftext|>. The merges
 * (clip_merges.inc) and the Unicode tables (clip_unicode.inc) are generated
 * offline by tools/gen_clip_tables.py; nothing is read from disk.
 *
 * Input is UTF-8. The reference receives a Python str, so invalid bytes
 * cannot occur there; here each maximal invalid subsequence becomes U+FFFD
 * (Python's errors='replace') and a warning names the byte offset.
 */
#include "textenc_internal.h"

#include <stdlib.h>
#include <string.h>

#include "clip_merges.inc"
#include "clip_unicode.inc"

#define N_VOCAB 49408
#ifndef TE_BPE_SHORT_MAX
#define TE_BPE_SHORT_MAX 64 /* longer words use the heap BPE */
#endif
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ------------------------------------------------------------------------
 * The tokenizer object: token strings, string -> id and pair -> merge hashes
 * ---------------------------------------------------------------------- */

/* Merge table slot: key (a << 16) | b (ids < 2^16), or ~0 when empty; the
 * merge makes token 512 + rank. */
typedef struct {
    uint32_t key;
    int32_t rank;
} pair_slot;

struct te_tokenizer {
    char *strbuf;      /* every token string, NUL-terminated */
    uint32_t *str_off; /* N_VOCAB offsets into strbuf */
    pair_slot *pairs;  /* open addressing; (a, b) -> rank, merged id */
    uint32_t pair_mask;
    int32_t byte_id[256];
};

static uint32_t hash_pair(uint32_t k)
{
    k ^= k >> 16;
    k *= 0x7feb352dU;
    k ^= k >> 15;
    k *= 0x846ca68bU;
    k ^= k >> 16;
    return k;
}

static const pair_slot *pair_lookup(const te_tokenizer *t, int32_t a, int32_t b)
{
    uint32_t k = ((uint32_t)a << 16) | (uint32_t)b;
    for (uint32_t h = hash_pair(k) & t->pair_mask;; h = (h + 1) & t->pair_mask) {
        const pair_slot *p = &t->pairs[h];
        if (p->key == k) return p;
        if (p->key == ~0u) return NULL;
    }
}

static void utf8_put(char **p, uint32_t c)
{
    unsigned char *o = (unsigned char *)*p;
    if (c < 0x80) {
        *o++ = (unsigned char)c;
    } else if (c < 0x800) {
        *o++ = (unsigned char)(0xC0 | (c >> 6));
        *o++ = (unsigned char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        *o++ = (unsigned char)(0xE0 | (c >> 12));
        *o++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (c & 0x3F));
    } else {
        *o++ = (unsigned char)(0xF0 | (c >> 18));
        *o++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
        *o++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
        *o++ = (unsigned char)(0x80 | (c & 0x3F));
    }
    *p = (char *)o;
}

/* Creation: token strings from the byte table and the merge lines; the merge
 * ranks from the generated id pairs (merge r joins ids a and b into token
 * 512 + r; the generator asserts that no string or pair repeats, so ids and
 * strings are interchangeable). Each merge line is checked against the
 * strings of its two ids, so the two generated tables cannot disagree. */
te_tokenizer *te_tokenizer_create(cm_error *err)
{
    te_tokenizer *t = cm_calloc(sizeof *t, "tokenizer", err);
    if (!t) return NULL;
    /* bytes_to_unicode: printable latin-1 bytes map to themselves, the
     * other 68 to U+0100.. in byte order; vocab order is the printable
     * ones first, then the rest. */
    uint32_t byte_cp[256];
    int order[256], n_order = 0, extra = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        byte_cp[b] = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        if (printable) order[n_order++] = b;
    }
    for (int b = 0; b < 256; b++)
        if (byte_cp[b] >= 256) order[n_order++] = b;

    size_t txt_len = sizeof clip_merges_txt - 1;
    size_t cap = 256 * 3 + 256 * 7 + txt_len + 64;
    t->strbuf = cm_alloc(cap, "tokenizer strings", err);
    t->str_off = cm_alloc(N_VOCAB * sizeof(uint32_t), "tokenizer offsets", err);
    t->pair_mask = (1u << 17) - 1;
    t->pairs = cm_alloc((t->pair_mask + 1) * sizeof(pair_slot), "tokenizer merges", err);
    if (!t->strbuf || !t->str_off || !t->pairs) goto fail;
    memset(t->pairs, 0xFF, (t->pair_mask + 1) * sizeof(pair_slot));

    char *p = t->strbuf;
    for (int i = 0; i < 512; i++) {
        int b = order[i & 255];
        t->str_off[i] = (uint32_t)(p - t->strbuf);
        utf8_put(&p, byte_cp[b]);
        if (i >= 256) {
            memcpy(p, "</w>", 4);
            p += 4;
        } else {
            t->byte_id[b] = i;
        }
        *p++ = 0;
    }
    const char *m = clip_merges_txt, *end = clip_merges_txt + txt_len;
    for (int r = 0; r < CLIP_N_MERGES; r++) {
        const char *nl = memchr(m, '\n', (size_t)(end - m));
        const char *sp = nl ? memchr(m, ' ', (size_t)(nl - m)) : NULL;
        int32_t a = clip_merge_ids[r][0], b = clip_merge_ids[r][1];
        size_t la = (size_t)(sp - m), lb = sp ? (size_t)(nl - sp - 1) : 0;
        if (!sp || a >= 512 + r || b >= 512 + r || strlen(t->strbuf + t->str_off[a]) != la ||
            memcmp(t->strbuf + t->str_off[a], m, la) || strlen(t->strbuf + t->str_off[b]) != lb ||
            memcmp(t->strbuf + t->str_off[b], sp + 1, lb)) {
            cm_error_set(err, CM_ERR_FORMAT, "clip_merges.inc: merge %d does not match its ids %d %d", r,
                         a, b);
            goto fail;
        }
        t->str_off[512 + r] = (uint32_t)(p - t->strbuf);
        memcpy(p, m, la);
        memcpy(p + la, sp + 1, lb);
        p += la + lb;
        *p++ = 0;
        uint32_t k = ((uint32_t)a << 16) | (uint32_t)b;
        uint32_t h = hash_pair(k) & t->pair_mask;
        while (t->pairs[h].key != ~0u) h = (h + 1) & t->pair_mask;
        t->pairs[h].key = k;
        t->pairs[h].rank = r;
        m = nl + 1;
    }
    static const char *const specials[2] = {"<|startoftext|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        t->str_off[TE_BOS + i] = (uint32_t)(p - t->strbuf);
        size_t n = strlen(specials[i]) + 1;
        memcpy(p, specials[i], n);
        p += n;
    }
    CM_ASSERT((size_t)(p - t->strbuf) <= cap);
    return t;
fail:
    te_tokenizer_free(t);
    return NULL;
}

void te_tokenizer_free(te_tokenizer *t)
{
    if (!t) return;
    cm_free(t->strbuf);
    cm_free(t->str_off);
    cm_free(t->pairs);
    cm_free(t);
}

const char *te_token_str(const te_tokenizer *t, int32_t id)
{
    if (!t || id < 0 || id >= N_VOCAB) return NULL;
    return t->strbuf + t->str_off[id];
}

/* ------------------------------------------------------------------------
 * Code point buffers
 * ---------------------------------------------------------------------- */

typedef struct {
    uint32_t *v;
    size_t n, cap;
    int oom;
} ubuf;

static void ub_push(ubuf *b, uint32_t c)
{
    if (b->oom) return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        uint32_t *v = cm_alloc(cap * sizeof *v, "tokenizer text", NULL);
        if (!v) {
            b->oom = 1;
            return;
        }
        if (b->n) memcpy(v, b->v, b->n * sizeof *v);
        cm_free(b->v);
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = c;
}

static void ub_push_str(ubuf *b, const uint32_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++) ub_push(b, s[i]);
}

static void ub_free(ubuf *b)
{
    cm_free(b->v);
    memset(b, 0, sizeof *b);
}

/* Replace *a with *b (a takes b's storage). */
static void ub_swap_in(ubuf *a, ubuf *b)
{
    int oom = a->oom || b->oom;
    ub_free(a);
    *a = *b;
    a->oom = oom;
    memset(b, 0, sizeof *b);
}

static int ub_equal(const ubuf *a, const ubuf *b)
{
    return a->n == b->n && (!a->n || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

/* Decode UTF-8 text[0..n) into b. Invalid sequences become U+FFFD, one per
 * maximal invalid subpart (Python's errors='replace'). Returns the offset of
 * the first invalid byte, or -1. */
static long utf8_decode(const char *text, size_t n, ubuf *b)
{
    const unsigned char *s = (const unsigned char *)text;
    long first_bad = -1;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        uint32_t cp;
        size_t len, k;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            ub_push(b, c);
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2; cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3; cp = c & 0x0F;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4; cp = c & 0x07;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            goto bad1;
        }
        for (k = 1; k < len; k++) {
            if (i + k >= n) break;
            unsigned d = s[i + k];
            if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) break;
            cp = (cp << 6) | (d & 0x3F);
        }
        if (k == len) {
            ub_push(b, cp);
            i += len;
            continue;
        }
        if (first_bad < 0) first_bad = (long)i;
        ub_push(b, 0xFFFD);
        i += k;
        continue;
    bad1:
        if (first_bad < 0) first_bad = (long)i;
        ub_push(b, 0xFFFD);
        i++;
    }
    return first_bad;
}

/* ------------------------------------------------------------------------
 * Unicode properties (tables generated from Python's unicodedata)
 * ---------------------------------------------------------------------- */

static int in_ranges(const uc_range *r, size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo) hi = mid;
        else if (c > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int is_letter(uint32_t c)
{
    if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
    return in_ranges(uc_letters, ARRAY_LEN(uc_letters), c);
}

static int is_number(uint32_t c)
{
    if (c < 0x80) return c >= '0' && c <= '9';
    return in_ranges(uc_numbers, ARRAY_LEN(uc_numbers), c);
}

/* \s of the `regex` module (Unicode White_Space). */
static int is_space_rx(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

/* Python's str.isspace() (used by str.strip() and re's \s): adds 0x1C..0x1F. */
static int is_space_py(uint32_t c)
{
    return is_space_rx(c) || (c >= 0x1C && c <= 0x1F);
}

int te_is_space_py(uint32_t c) { return is_space_py(c); }
int te_is_word_py(uint32_t c) { return is_letter(c) || is_number(c) || c == '_'; }

static const uc_map *map_find(const uc_map *m, size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < m[mid].cp) hi = mid;
        else if (c > m[mid].cp) lo = mid + 1;
        else return &m[mid];
    }
    return NULL;
}

static int ccc_of(uint32_t c)
{
    if (c < 0x300) return 0;
    size_t lo = 0, hi = ARRAY_LEN(uc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < uc_ccc[mid].lo) hi = mid;
        else if (c > uc_ccc[mid].hi) lo = mid + 1;
        else return uc_ccc[mid].ccc;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * NFC (canonical decomposition, canonical order, canonical composition)
 * ---------------------------------------------------------------------- */

enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7, H_LCOUNT = 19,
       H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = 588, H_SCOUNT = 11172 };

static void decompose(ubuf *o, uint32_t c, int depth)
{
    if (c >= H_SBASE && c < H_SBASE + H_SCOUNT) {
        uint32_t s = c - H_SBASE;
        ub_push(o, H_LBASE + s / H_NCOUNT);
        ub_push(o, H_VBASE + (s % H_NCOUNT) / H_TCOUNT);
        if (s % H_TCOUNT) ub_push(o, H_TBASE + s % H_TCOUNT);
        return;
    }
    const uc_map *m = c < 0xC0 ? NULL : map_find(uc_decomp, ARRAY_LEN(uc_decomp), c);
    if (!m || depth > 8) {
        ub_push(o, c);
        return;
    }
    for (int i = 0; i < m->n; i++) decompose(o, m->to[i], depth + 1);
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = ARRAY_LEN(uc_compose);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uc_comp *e = &uc_compose[mid];
        if (a < e->a || (a == e->a && b < e->b)) hi = mid;
        else if (a > e->a || b > e->b) lo = mid + 1;
        else return e->c;
    }
    return 0;
}

/* Stable sort of b->v[a..e) (non-starters) by ccc: insertion sort for the
 * usual short runs, a counting sort for long ones (hostile text can make a
 * run as long as the prompt; insertion sort was quadratic there). */
static void sort_by_ccc(ubuf *b, size_t a, size_t e)
{
    uint32_t *v = b->v + a;
    const size_t n = e - a;
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            int cc = ccc_of(v[i]);
            for (size_t j = i; j > 0 && ccc_of(v[j - 1]) > cc; j--) {
                uint32_t tmp = v[j];
                v[j] = v[j - 1];
                v[j - 1] = tmp;
            }
        }
        return;
    }
    uint32_t *tmp = cm_alloc(n * sizeof *tmp, "tokenizer text", NULL);
    if (!tmp) {
        b->oom = 1;
        return;
    }
    size_t start[257] = {0};
    for (size_t i = 0; i < n; i++) start[ccc_of(v[i]) + 1]++;
    for (int c = 1; c < 257; c++) start[c] += start[c - 1];
    for (size_t i = 0; i < n; i++) tmp[start[ccc_of(v[i])]++] = v[i];
    memcpy(v, tmp, n * sizeof *tmp);
    cm_free(tmp);
}

static void nfc(ubuf *s)
{
    int ascii = 1;
    for (size_t i = 0; i < s->n && ascii; i++) ascii = s->v[i] < 0x80;
    if (ascii) return;
    ubuf d = {0};
    for (size_t i = 0; i < s->n; i++) decompose(&d, s->v[i], 0);
    if (d.oom) {
        s->oom = 1;
        ub_free(&d);
        return;
    }
    /* canonical ordering: a stable sort by ccc of each run of non-starters */
    for (size_t i = 0; i < d.n && !d.oom;) {
        if (!ccc_of(d.v[i])) {
            i++;
            continue;
        }
        size_t a = i;
        while (i < d.n && ccc_of(d.v[i])) i++;
        sort_by_ccc(&d, a, i);
    }
    if (d.oom) {
        s->oom = 1;
        ub_free(&d);
        return;
    }
    /* composition, in place */
    size_t out = 0;
    long starter = -1;
    int prev_cc = 0;
    for (size_t i = 0; i < d.n; i++) {
        uint32_t c = d.v[i];
        int cc = ccc_of(c);
        if (starter >= 0 && ((long)out - 1 == starter || prev_cc < cc)) {
            uint32_t comp = compose_pair(d.v[starter], c);
            if (comp) {
                d.v[starter] = comp;
                continue;
            }
        }
        if (!cc) starter = (long)out;
        prev_cc = cc;
        d.v[out++] = c;
    }
    d.n = out;
    ub_swap_in(s, &d);
}

/* ------------------------------------------------------------------------
 * html.unescape (Python) and ftfy's own entity pass
 * ---------------------------------------------------------------------- */

static const char *entity_find(const uc_entity *t, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(name, t[mid].name);
        if (c < 0) hi = mid;
        else if (c > 0) lo = mid + 1;
        else return t[mid].text;
    }
    return NULL;
}

static void push_utf8(ubuf *o, const char *s)
{
    ubuf tmp = {0};
    utf8_decode(s, strlen(s), &tmp);
    ub_push_str(o, tmp.v, tmp.n);
    if (tmp.oom) o->oom = 1;
    ub_free(&tmp);
}

/* The text of a numeric character reference, as html.unescape's
 * _replace_charref. `big` says the number overflowed. */
static void push_charref(ubuf *o, uint64_t num, int big)
{
    if (!big && num < 0x100) {
        const uc_map *m = map_find(uc_invalid_charrefs, ARRAY_LEN(uc_invalid_charrefs), (uint32_t)num);
        if (m) {
            ub_push_str(o, m->to, m->n);
            return;
        }
    }
    if (big || (num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        ub_push(o, 0xFFFD);
        return;
    }
    for (size_t i = 0; i < ARRAY_LEN(uc_invalid_codepoints); i++)
        if (uc_invalid_codepoints[i] == num) return;
    ub_push(o, (uint32_t)num);
}

static int is_hex(uint32_t c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
}

static int hexval(uint32_t c) { return c <= '9' ? (int)(c - '0') : (int)((c | 0x20) - 'a' + 10); }

/* Python's html.unescape: &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?) */
static void html_unescape(ubuf *s)
{
    size_t i, n = s->n;
    for (i = 0; i < n && s->v[i] != '&'; i++) {}
    if (i == n) return;
    ubuf o = {0};
    const uint32_t *v = s->v;
    for (i = 0; i < n;) {
        if (v[i] != '&') {
            ub_push(&o, v[i++]);
            continue;
        }
        size_t j = i + 1;
        if (j < n && v[j] == '#') {
            int hex = j + 1 < n && (v[j + 1] | 0x20) == 'x';
            size_t k = j + 1 + (size_t)hex, d0 = k;
            uint64_t num = 0;
            int big = 0;
            while (k < n && (hex ? is_hex(v[k]) : (v[k] >= '0' && v[k] <= '9'))) {
                num = num * (hex ? 16 : 10) + (uint64_t)(hex ? hexval(v[k]) : (int)(v[k] - '0'));
                if (num > 0x7FFFFFFF) big = 1, num = 0x7FFFFFFF;
                k++;
            }
            if (k == d0) { /* no digits: not a reference */
                ub_push(&o, v[i++]);
                continue;
            }
            if (k < n && v[k] == ';') k++;
            push_charref(&o, num, big);
            i = k;
            continue;
        }
        /* named: up to 32 chars of [^\t\n\f <&#;], then an optional ';' */
        size_t k = j;
        while (k < n && k - j < 32) {
            uint32_t c = v[k];
            if (c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' ||
                c == ';')
                break;
            k++;
        }
        if (k == j) {
            ub_push(&o, v[i++]);
            continue;
        }
        if (k < n && v[k] == ';') k++;
        /* name = v[j..k) as UTF-8 */
        char name[32 * 4 + 2], *p = name;
        size_t ends[34];
        int nc = 0;
        for (size_t q = j; q < k; q++) {
            utf8_put(&p, v[q]);
            ends[++nc] = (size_t)(p - name);
        }
        ends[0] = 0;
        *p = 0;
        const char *txt = entity_find(uc_html5, ARRAY_LEN(uc_html5), name);
        if (txt) {
            push_utf8(&o, txt);
        } else {
            int x;
            for (x = nc - 1; x > 1; x--) {
                char save = name[ends[x]];
                name[ends[x]] = 0;
                txt = entity_find(uc_html5, ARRAY_LEN(uc_html5), name);
                name[ends[x]] = save;
                if (txt) break;
            }
            if (txt) {
                push_utf8(&o, txt);
                ub_push_str(&o, v + j + x, k - (j + (size_t)x));
            } else {
                ub_push(&o, '&');
                ub_push_str(&o, v + j, k - j);
            }
        }
        i = k;
    }
    ub_swap_in(s, &o);
}

static int is_alnum_ascii(uint32_t c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

/* ftfy's unescape_html: &#?[0-9A-Za-z]{1,24}; through its entity table
 * (HTML5 names ending in ';' plus upper-cased variants); numeric forms via
 * html.unescape unless that leaves a ';'. */
static void ftfy_unescape_html(ubuf *s)
{
    ubuf o = {0};
    const uint32_t *v = s->v;
    size_t n = s->n;
    for (size_t i = 0; i < n;) {
        if (v[i] == '&') {
            size_t j = i + 1;
            int num = j < n && v[j] == '#';
            if (num) j++;
            size_t k = j;
            while (k < n && is_alnum_ascii(v[k])) k++;
            if (k > j && k - j <= 24 && k < n && v[k] == ';') {
                size_t end = k + 1;
                if (num) {
                    ubuf ent = {0};
                    ub_push_str(&ent, v + i, end - i);
                    html_unescape(&ent);
                    int has_semi = 0;
                    for (size_t q = 0; q < ent.n; q++) has_semi |= ent.v[q] == ';';
                    if (has_semi) ub_push_str(&o, v + i, end - i);
                    else ub_push_str(&o, ent.v, ent.n);
                    if (ent.oom) o.oom = 1;
                    ub_free(&ent);
                } else {
                    char name[32];
                    size_t q;
                    for (q = 0; q < k - j; q++) name[q] = (char)v[j + q];
                    name[q++] = ';';
                    name[q] = 0;
                    const char *txt = entity_find(uc_html5, ARRAY_LEN(uc_html5), name);
                    if (!txt) txt = entity_find(uc_html5_upper, ARRAY_LEN(uc_html5_upper), name);
                    if (txt) push_utf8(&o, txt);
                    else ub_push_str(&o, v + i, end - i);
                }
                i = end;
                continue;
            }
        }
        ub_push(&o, v[i++]);
    }
    ub_swap_in(s, &o);
}

/* ------------------------------------------------------------------------
 * ftfy.fix_text subset
 * ---------------------------------------------------------------------- */

/* The cp1252 byte of c (sloppy: C1 controls map to their own byte), or -1. */
static int cp1252_byte(uint32_t c)
{
    if (c < 0x80 || (c >= 0xA0 && c <= 0xFF)) return (int)c;
    for (int b = 0; b < 32; b++)
        if (uc_cp1252_80[b] == c) return 0x80 + b;
    if (c >= 0x80 && c <= 0x9F) return (int)c;
    return -1;
}

/* Mojibake: text that was UTF-8, decoded as cp1252 or latin-1. If the whole
 * text encodes to single bytes and those bytes are valid UTF-8 with at least
 * one multi-byte sequence, take the UTF-8 reading. */
static void fix_encoding(ubuf *s)
{
    int nonascii = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i] >= 0x80) nonascii = 1;
        if (cp1252_byte(s->v[i]) < 0) return;
    }
    if (!nonascii) return;
    char *bytes = cm_alloc(s->n + 1, "tokenizer text", NULL);
    if (!bytes) {
        s->oom = 1;
        return;
    }
    for (size_t i = 0; i < s->n; i++) bytes[i] = (char)cp1252_byte(s->v[i]);
    ubuf d = {0};
    long bad = utf8_decode(bytes, s->n, &d);
    cm_free(bytes);
    if (bad < 0 && !d.oom) ub_swap_in(s, &d);
    else ub_free(&d);
}

static void map_chars(ubuf *s, const uc_map *m, size_t nm, uint32_t lo, uint32_t hi)
{
    int any = 0;
    for (size_t i = 0; i < s->n && !any; i++)
        any = s->v[i] >= lo && s->v[i] <= hi && map_find(m, nm, s->v[i]);
    if (!any) return;
    ubuf o = {0};
    for (size_t i = 0; i < s->n; i++) {
        const uc_map *e = s->v[i] >= lo && s->v[i] <= hi ? map_find(m, nm, s->v[i]) : NULL;
        if (e) ub_push_str(&o, e->to, e->n);
        else ub_push(&o, s->v[i]);
    }
    ub_swap_in(s, &o);
}

static int is_control_ftfy(uint32_t c)
{
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
           (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* One pass of ftfy's fix_and_explain over a line, fixers in ftfy's order. */
static void ftfy_pass(ubuf *s, int unescape)
{
    if (unescape) ftfy_unescape_html(s);
    /* remove_terminal_escapes: \033\[[0-9;]*[A-Za-z] */
    size_t o = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i] == 0x1B && i + 1 < s->n && s->v[i + 1] == '[') {
            size_t k = i + 2;
            while (k < s->n && ((s->v[k] >= '0' && s->v[k] <= '9') || s->v[k] == ';')) k++;
            if (k < s->n && (s->v[k] | 0x20) >= 'a' && (s->v[k] | 0x20) <= 'z') {
                i = k;
                continue;
            }
        }
        s->v[o++] = s->v[i];
    }
    s->n = o;
    fix_encoding(s);
    /* fix_c1_controls */
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i] >= 0x80 && s->v[i] <= 0x9F) s->v[i] = uc_cp1252_80[s->v[i] - 0x80];
    map_chars(s, uc_ligatures, ARRAY_LEN(uc_ligatures), 0x132, 0xFB06);
    map_chars(s, uc_width, ARRAY_LEN(uc_width), 0x3000, 0xFFEF);
    /* uncurl_quotes, fix_line_breaks, remove_control_chars */
    o = 0;
    for (size_t i = 0; i < s->n; i++) {
        uint32_t c = s->v[i];
        if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
        else if (c >= 0x201C && c <= 0x201F) c = '"';
        if (c == '\r') {
            if (i + 1 < s->n && s->v[i + 1] == '\n') continue;
            c = '\n';
        }
        if (c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        if (is_control_ftfy(c)) continue;
        s->v[o++] = c;
    }
    s->n = o;
    nfc(s);
}

/* ftfy.fix_text: line by line (each segment ends after a '\n'); the HTML
 * pass is off from the first segment that contains '<' on. */
static void ftfy_fix_text(ubuf *s)
{
    ubuf out = {0};
    int unescape = 1;
    size_t pos = 0;
    while (pos < s->n) {
        size_t e = pos;
        while (e < s->n && s->v[e] != '\n') e++;
        if (e < s->n) e++;
        ubuf seg = {0};
        ub_push_str(&seg, s->v + pos, e - pos);
        for (size_t i = 0; i < seg.n; i++)
            if (seg.v[i] == '<') unescape = 0;
        for (int iter = 0; iter < 16; iter++) {
            ubuf before = {0};
            ub_push_str(&before, seg.v, seg.n);
            ftfy_pass(&seg, unescape);
            int same = ub_equal(&before, &seg);
            if (before.oom) seg.oom = 1;
            ub_free(&before);
            if (same || seg.oom) break;
        }
        ub_push_str(&out, seg.v, seg.n);
        if (seg.oom) out.oom = 1;
        ub_free(&seg);
        pos = e;
    }
    ub_swap_in(s, &out);
}

/* ------------------------------------------------------------------------
 * whitespace, lower case
 * ---------------------------------------------------------------------- */

/* Python's str.strip() then regex \s+ -> ' ', then strip again. */
static void whitespace_clean(ubuf *s)
{
    size_t o = 0;
    int in_space = 0;
    for (size_t i = 0; i < s->n; i++) {
        uint32_t c = s->v[i];
        if (is_space_rx(c) || (o == 0 && is_space_py(c))) {
            in_space = 1;
            continue;
        }
        if (in_space && o > 0) s->v[o++] = ' ';
        in_space = 0;
        s->v[o++] = c;
    }
    /* trailing characters only str.isspace() knows (U+001C..U+001F) */
    while (o > 0 && is_space_py(s->v[o - 1])) o--;
    s->n = o;
}

static void lower(ubuf *s)
{
    int any = 0;
    for (size_t i = 0; i < s->n && !any; i++)
        any = s->v[i] >= 0x80 || (s->v[i] >= 'A' && s->v[i] <= 'Z');
    if (!any) return;
    ubuf o = {0};
    for (size_t i = 0; i < s->n; i++) {
        uint32_t c = s->v[i];
        if (c < 0x80) {
            ub_push(&o, c >= 'A' && c <= 'Z' ? c + 32 : c);
            continue;
        }
        if (c == 0x3A3) { /* final sigma */
            int after_letter = i > 0 && is_letter(s->v[i - 1]);
            int before_letter = i + 1 < s->n && is_letter(s->v[i + 1]);
            ub_push(&o, after_letter && !before_letter ? 0x3C2 : 0x3C3);
            continue;
        }
        const uc_map *m = map_find(uc_lower, ARRAY_LEN(uc_lower), c);
        if (m) ub_push_str(&o, m->to, m->n);
        else ub_push(&o, c);
    }
    ub_swap_in(s, &o);
}

/* ------------------------------------------------------------------------
 * Pre-tokenisation and BPE
 * ---------------------------------------------------------------------- */

typedef struct {
    int32_t *v;
    int n, cap;
    int oom;
} ibuf;

static void ib_push(ibuf *b, int32_t x)
{
    if (b->oom) return;
    if (b->n == b->cap) {
        int cap = b->cap ? b->cap * 2 : 64;
        int32_t *v = cm_alloc((size_t)cap * sizeof *v, "token ids", NULL);
        if (!v) {
            b->oom = 1;
            return;
        }
        if (b->n) memcpy(v, b->v, (size_t)b->n * sizeof *v);
        cm_free(b->v);
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = x;
}

/* BPE of a long word in O(n log n). CLIP's loop takes the lowest-ranked
 * pair and merges all its occurrences left to right, then repeats. A merge
 * only creates pairs that contain its new token, and every merge using
 * token 512 + r has a rank above r (checked at creation), so popping
 * (rank, position) from a min-heap and merging one occurrence at a time
 * performs the same merges in the same order. Symbols form a linked list;
 * heap entries that went stale are skipped on pop. */
typedef struct {
    int32_t rank;
    int32_t pos; /* index of the left symbol */
} heap_ent;

static int heap_less(heap_ent a, heap_ent b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(heap_ent *h, size_t *n, heap_ent e)
{
    size_t i = (*n)++;
    while (i > 0 && heap_less(e, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n)
{
    heap_ent top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static void bpe_word_long(const te_tokenizer *t, const unsigned char *w, size_t n, ibuf *out)
{
    int32_t *sym = cm_alloc(n * sizeof *sym, "bpe word", NULL);
    int32_t *next = cm_alloc(n * sizeof *next, "bpe word", NULL);
    int32_t *prev = cm_alloc(n * sizeof *prev, "bpe word", NULL);
    /* each merge adds at most 2 entries to the n - 1 initial ones */
    heap_ent *heap = cm_alloc(3 * n * sizeof *heap, "bpe word", NULL);
    size_t nh = 0;
    if (!sym || !next || !prev || !heap) {
        out->oom = 1;
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        sym[i] = t->byte_id[w[i]];
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    sym[n - 1] += 256;
    for (size_t i = 0; i + 1 < n; i++) {
        const pair_slot *p = pair_lookup(t, sym[i], sym[i + 1]);
        if (p) heap_push(heap, &nh, (heap_ent){p->rank, (int32_t)i});
    }
    while (nh) {
        heap_ent e = heap_pop(heap, &nh);
        int32_t i = e.pos, j = next[i];
        if (sym[i] < 0 || j < 0) continue;
        const pair_slot *p = pair_lookup(t, sym[i], sym[j]);
        if (!p || p->rank != e.rank) continue; /* stale */
        sym[i] = 512 + e.rank;
        sym[j] = -1;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        if (prev[i] >= 0 && (p = pair_lookup(t, sym[prev[i]], sym[i])))
            heap_push(heap, &nh, (heap_ent){p->rank, prev[i]});
        if (next[i] >= 0 && (p = pair_lookup(t, sym[i], sym[next[i]])))
            heap_push(heap, &nh, (heap_ent){p->rank, i});
    }
    for (int32_t i = 0; i >= 0; i = next[i]) ib_push(out, sym[i]);
done:
    cm_free(sym);
    cm_free(next);
    cm_free(prev);
    cm_free(heap);
}

/* BPE of one pre-token (UTF-8 bytes), ids appended to out: CLIP's loop
 * directly for short words, the heap for long ones. */
static void bpe_word(const te_tokenizer *t, const unsigned char *w, size_t n, ibuf *out)
{
    int32_t sym[TE_BPE_SHORT_MAX];
    if (n > TE_BPE_SHORT_MAX) {
        bpe_word_long(t, w, n, out);
        return;
    }
    for (size_t i = 0; i < n; i++) sym[i] = t->byte_id[w[i]];
    sym[n - 1] += 256; /* the </w> form of the last byte */
    size_t ns = n;
    while (ns > 1) {
        int32_t best = -1, merged = -1, a = 0, b = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            const pair_slot *p = pair_lookup(t, sym[i], sym[i + 1]);
            if (p && (best < 0 || p->rank < best)) {
                best = p->rank;
                merged = 512 + p->rank;
                a = sym[i];
                b = sym[i + 1];
            }
        }
        if (best < 0) break;
        size_t o = 0;
        for (size_t i = 0; i < ns;) {
            if (i + 1 < ns && sym[i] == a && sym[i + 1] == b) {
                sym[o++] = merged;
                i += 2;
            } else {
                sym[o++] = sym[i++];
            }
        }
        ns = o;
    }
    for (size_t i = 0; i < ns; i++) ib_push(out, sym[i]);
}

static int match_ascii(const ubuf *s, size_t i, const char *lit)
{
    size_t n = strlen(lit);
    if (i + n > s->n) return 0;
    for (size_t k = 0; k < n; k++)
        if (s->v[i + k] != (unsigned char)lit[k]) return 0;
    return 1;
}

static void pretokenize_bpe(const te_tokenizer *t, const ubuf *s, ibuf *out)
{
    static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    char stack_buf[256];
    size_t i = 0;
    while (i < s->n) {
        uint32_t c = s->v[i];
        size_t e = i;
        if (match_ascii(s, i, "<|startoftext|>")) {
            ib_push(out, TE_BOS);
            i += 15;
            continue;
        }
        if (match_ascii(s, i, "<|endoftext|>")) {
            ib_push(out, TE_EOS);
            i += 13;
            continue;
        }
        if (c == '\'') {
            for (size_t k = 0; k < ARRAY_LEN(contractions) && e == i; k++)
                if (match_ascii(s, i, contractions[k])) e = i + strlen(contractions[k]);
        }
        if (e == i) {
            if (is_letter(c)) {
                while (e < s->n && is_letter(s->v[e])) e++;
            } else if (is_number(c)) {
                e = i + 1;
            } else if (!is_space_rx(c)) {
                while (e < s->n && !is_space_rx(s->v[e]) && !is_letter(s->v[e]) && !is_number(s->v[e]))
                    e++;
            } else {
                i++;
                continue;
            }
        }
        size_t need = (e - i) * 4;
        char *buf = need <= sizeof stack_buf ? stack_buf : cm_alloc(need, "pre-token", NULL);
        if (!buf) {
            out->oom = 1;
            return;
        }
        char *p = buf;
        for (size_t k = i; k < e; k++) utf8_put(&p, s->v[k]);
        bpe_word(t, (const unsigned char *)buf, (size_t)(p - buf), out);
        if (buf != stack_buf) cm_free(buf);
        i = e;
    }
}

/* The whole reference pipeline over one piece of raw text. */
static void encode_piece(const te_tokenizer *t, const uint32_t *cps, size_t n, ibuf *out)
{
    ubuf s = {0};
    ub_push_str(&s, cps, n);
    ftfy_fix_text(&s);
    html_unescape(&s);
    html_unescape(&s);
    whitespace_clean(&s);
    lower(&s);
    if (s.oom) out->oom = 1;
    else pretokenize_bpe(t, &s, out);
    ub_free(&s);
}

cm_status te_tokenize_ex(const te_tokenizer *t, const char *text, unsigned flags, int32_t **ids,
                         int *n, cm_error *err)
{
    *ids = NULL;
    *n = 0;
    if (!t || !text) return cm_error_set(err, CM_ERR_USAGE, "te_tokenize: no tokenizer or text");
    ubuf raw = {0};
    ibuf out = {0};
    long bad = utf8_decode(text, strlen(text), &raw);
    if (bad >= 0)
        cm_warn("prompt: invalid UTF-8 from byte %ld on: each invalid sequence replaced by U+FFFD", bad);
    if (flags & TE_TOK_SD2_BANG) {
        /* transformers splits the raw text at its special token "!" first */
        size_t start = 0;
        for (size_t i = 0; i <= raw.n; i++) {
            if (i == raw.n || raw.v[i] == '!') {
                /* empty pieces give no ids (and raw.v is NULL for "") */
                if (i > start) encode_piece(t, raw.v + start, i - start, &out);
                if (i < raw.n) ib_push(&out, 0);
                start = i + 1;
            }
        }
    } else {
        encode_piece(t, raw.v, raw.n, &out);
    }
    int oom = raw.oom || out.oom;
    ub_free(&raw);
    if (oom) {
        cm_free(out.v);
        return cm_error_set(err, CM_ERR_NOMEM, "tokenizer: out of memory on a %zu-byte prompt",
                            strlen(text));
    }
    if (!out.v) {
        out.v = cm_alloc(sizeof(int32_t), "token ids", err);
        if (!out.v) return err ? err->status : CM_ERR_NOMEM;
    }
    *ids = out.v;
    *n = out.n;
    return CM_OK;
}

cm_status te_tokenize(const te_tokenizer *t, const char *text, int32_t **ids, int *n, cm_error *err)
{
    return te_tokenize_ex(t, text, 0, ids, n, err);
}
