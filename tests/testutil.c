/* testutil.c — see testutil.h. */
#include "testutil.h"
#include "weights_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_data(const char *rel)
{
    static char buf[8][4096];
    static int k;
    char *b = buf[k++ & 7];
    const char *root = getenv("STIPPLE_TEST_DATA");
    snprintf(b, 4096, "%s/%s", root ? root : STIPPLE_TEST_DATA, rel);
    /* Large goldens that only the opt-in slow suite reads (full-size
     * models) are not copied into the project: they are read from the
     * steering repository's shared/golden beside the clone when present. */
    if (access(b, F_OK) != 0 && !strncmp(rel, "golden/", 7)) {
        char alt[4096];
        const char *shared = getenv("STIPPLE_SHARED_GOLDEN");
        snprintf(alt, sizeof alt, "%s/%s", shared ? shared : STIPPLE_SHARED_GOLDEN, rel + 7);
        if (access(alt, F_OK) == 0) snprintf(b, 4096, "%s", alt);
    }
    return b;
}

const char *tu_stipple(void)
{
    const char *p = getenv("STIPPLE_BIN");
    return p ? p : STIPPLE_BIN;
}

const char *tu_tmpdir(void)
{
    static char dir[4096];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "%s/tmp-XXXXXX", STIPPLE_BUILD_DIR);
        if (!mkdtemp(dir)) snprintf(dir, sizeof dir, "/tmp");
    }
    return dir;
}

void tu_golden(const char *rel_file, const char *tensor, cm_tensor *out)
{
    cm_error err = {0};
    wt_file *f = wt_file_open(tu_data(rel_file), &err);
    ck_assert_msg(f != NULL, "cannot open golden: %s", err.msg);
    const cm_wview *v = wt_file_find(f, tensor);
    ck_assert_msg(v != NULL, "golden %s has no tensor %s", rel_file, tensor);
    ck_assert(cm_tensor_alloc(out, v->ndim, v->shape, &err) == CM_OK);
    int64_t n = cm_wview_numel(v);
    for (int64_t i = 0; i < n; i++) out->data[i] = cm_wview_get(v, i);
    wt_file_close(f);
}

cJSON *tu_golden_meta(const char *rel_file)
{
    cm_error err = {0};
    wt_file *f = wt_file_open(tu_data(rel_file), &err);
    ck_assert_msg(f != NULL, "cannot open golden: %s", err.msg);
    const char *m = wt_file_metadata(f, "golden");
    ck_assert_msg(m != NULL, "golden %s has no metadata", rel_file);
    /* Python's json writes -Infinity / Infinity / NaN, which JSON lacks:
     * read them as null. */
    size_t len = strlen(m);
    char *fixed = cm_alloc(len + 1, "meta", NULL);
    ck_assert(fixed != NULL);
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        static const char *bad[] = {"-Infinity", "Infinity", "NaN"};
        int hit = 0;
        for (int b = 0; b < 3 && !hit; b++) {
            size_t bl = strlen(bad[b]);
            if (!strncmp(m + i, bad[b], bl)) {
                memcpy(fixed + o, "null", 4);
                o += 4;
                i += bl;
                hit = 1;
            }
        }
        if (!hit) fixed[o++] = m[i++];
    }
    fixed[o] = 0;
    cJSON *j = cJSON_Parse(fixed);
    cm_free(fixed);
    wt_file_close(f);
    ck_assert(j != NULL);
    return j;
}

int tu_close(const char *what, const float *got, const float *want, int64_t n, double tol)
{
    double maxw = 0, maxd = 0, se = 0, sw = 0;
    int64_t imax = 0, first_bad = -1;
    for (int64_t i = 0; i < n; i++) {
        double a = fabs(want[i]);
        if (a > maxw) maxw = a;
    }
    double lim = tol * (maxw > 0 ? maxw : 1);
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= maxd)) { maxd = d; imax = i; }
        if (!(d <= lim) && first_bad < 0) first_bad = i;
        se += d * d;
        sw += (double)want[i] * want[i];
    }
    double rl2 = sw > 0 ? sqrt(se / sw) : sqrt(se);
    int ok = first_bad < 0;
    fprintf(stderr, "%s %s: n=%lld rel-L2 %.3g max|diff| %.3g (at %lld) max|ref| %.3g tol %.3g\n",
            ok ? "ok  " : "FAIL", what, (long long)n, rl2, maxd, (long long)imax, maxw, lim);
    if (!ok)
        fprintf(stderr, "     first mismatch at %lld: got %.9g want %.9g\n", (long long)first_bad,
                got[first_bad], want[first_bad]);
    return ok;
}

TCase *tu_tcase(const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 1200);
    return tc;
}

static char *slurp(const char *path)
{
    char *s = NULL;
    size_t n = 0;
    if (cm_file_read_all(path, &s, &n, NULL) != CM_OK) return NULL;
    return s;
}

int tu_run(const char *cmdline, char **out, char **err)
{
    char o[4200], e[4200], full[16384];
    static int k;
    snprintf(o, sizeof o, "%s/run%d-%d.out", tu_tmpdir(), (int)getpid(), k);
    snprintf(e, sizeof e, "%s/run%d-%d.err", tu_tmpdir(), (int)getpid(), k++);
    snprintf(full, sizeof full, "( %s ) >'%s' 2>'%s' </dev/null", cmdline, o, e);
    int st = system(full);
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (out) *out = slurp(o);
    if (err) *err = slurp(e);
    unlink(o);
    unlink(e);
    return rc;
}

/* ------------------------------------------------------------------------
 * Safetensors files built or edited by tests
 * ---------------------------------------------------------------------- */

static const char *tu_st_name(const char *name)
{
    static char buf[8][4096];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 4096, "%s/%s", tu_tmpdir(), name);
    return p;
}

const char *tu_st_write(const char *name, const char *hdr, uint64_t hlen, const void *data, size_t ndata)
{
    const char *path = tu_st_name(name);
    size_t hn = strlen(hdr);
    uint64_t hl = hlen ? hlen : hn;
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(hl >> (8 * i));
    unlink(path);
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    ck_assert(fwrite(len, 1, 8, f) == 8);
    ck_assert(hn == 0 || fwrite(hdr, 1, hn, f) == hn);
    ck_assert(ndata == 0 || fwrite(data, 1, ndata, f) == ndata);
    ck_assert(fclose(f) == 0);
    return path;
}

/* The file's bytes and its header length (checked to lie inside it). */
static char *st_read(const char *src, size_t *n, uint64_t *hl)
{
    char *data = NULL;
    cm_error err = {0};
    ck_assert_msg(cm_file_read_all(src, &data, n, &err) == CM_OK, "%s", err.msg);
    ck_assert(*n >= 8);
    *hl = 0;
    for (int i = 7; i >= 0; i--) *hl = (*hl << 8) | (unsigned char)data[i];
    ck_assert_msg(*hl <= *n - 8, "%s: bad header length", src);
    return data;
}

const char *tu_st_patch(const char *src, const char *name, const char *from, const char *to)
{
    size_t n, fl = strlen(from);
    uint64_t hl;
    ck_assert_int_eq(fl, strlen(to));
    char *data = st_read(src, &n, &hl);
    char *at = memmem(data + 8, (size_t)hl, from, fl);
    ck_assert_msg(at != NULL, "'%s' not in the header of %s", from, src);
    memcpy(at, to, fl);
    const char *path = tu_st_name(name);
    cm_error err = {0};
    ck_assert_msg(cm_file_write_atomic(path, data, n, 1, &err) == CM_OK, "%s", err.msg);
    cm_free(data);
    return path;
}

const char *tu_st_edit(const char *src, const char *name, void (*fn)(cJSON *hdr, void *arg), void *arg)
{
    size_t n;
    uint64_t hl;
    char *data = st_read(src, &n, &hl);
    cJSON *hdr = cJSON_ParseWithLength(data + 8, (size_t)hl);
    ck_assert_msg(hdr != NULL, "%s: header is not JSON", src);
    fn(hdr, arg);
    char *txt = cJSON_PrintUnformatted(hdr);
    ck_assert(txt);
    /* padded with spaces so that the data area stays 8-byte aligned */
    size_t tl = strlen(txt), pad = (8 - tl % 8) % 8, body = n - 8 - (size_t)hl;
    char *out = malloc(8 + tl + pad + body);
    ck_assert(out);
    uint64_t nl = tl + pad;
    for (int i = 0; i < 8; i++) out[i] = (char)(unsigned char)(nl >> (8 * i));
    memcpy(out + 8, txt, tl);
    memset(out + 8 + tl, ' ', pad);
    memcpy(out + 8 + tl + pad, data + 8 + hl, body);
    const char *path = tu_st_name(name);
    cm_error err = {0};
    ck_assert_msg(cm_file_write_atomic(path, out, 8 + tl + pad + body, 1, &err) == CM_OK, "%s", err.msg);
    free(out);
    cJSON_free(txt);
    cJSON_Delete(hdr);
    cm_free(data);
    return path;
}

void tu_sha256_hex(const void *data, size_t n, char hex[65])
{
    wt_sha256 s;
    unsigned char d[32];
    wt_sha256_init(&s);
    wt_sha256_update(&s, data, n);
    wt_sha256_final(&s, d);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

void tu_shq(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    out[n++] = '\'';
    for (; *s && n + 6 < cap; s++) {
        if (*s == '\'') {
            memcpy(out + n, "'\\''", 4);
            n += 4;
        } else
            out[n++] = *s;
    }
    out[n++] = '\'';
    out[n] = 0;
}

void tu_expect_error(const char *args, int want_rc, const char *needle)
{
    char cmd[8192], *out = NULL, *err = NULL;
    snprintf(cmd, sizeof cmd, "'%s' %s", tu_stipple(), args);
    int rc = tu_run(cmd, &out, &err);
    ck_assert_msg(rc == want_rc, "stipple %s: exit %d, want %d; stderr: %s", args, rc, want_rc,
                  err ? err : "");
    ck_assert_msg(err && !strncmp(err, "stipple: error: ", 16), "stipple %s: stderr not an error line: %s",
                  args, err ? err : "");
    const char *nl = strchr(err, '\n');
    ck_assert_msg(nl && nl[1] == 0, "stipple %s: error is not exactly one line: %s", args, err);
    if (needle) ck_assert_msg(strstr(err, needle), "stipple %s: error lacks \"%s\": %s", args, needle, err);
    cm_free(out);
    cm_free(err);
}

char *tu_png_parameters(const char *path)
{
    char *data = NULL, *val = NULL;
    size_t n = 0;
    cm_error e = {0};
    ck_assert_msg(cm_file_read_all(path, &data, &n, &e) == CM_OK, "%s", e.msg);
    ck_assert_msg(cm_png_text_get(data, n, "parameters", &val, &e) == CM_OK, "%s", e.msg);
    cm_free(data);
    return val;
}
