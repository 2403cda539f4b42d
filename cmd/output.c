/* output.c — output file names (templates), the A1111 `parameters` text,
 * and writing the PNG atomically without ever replacing an image. */
#include "cmd.h"

#include <ctype.h>
#include <string.h>
#include <time.h>

/* Prompt shortened to a safe file-name fragment: letters, digits, '-' and
 * '_' kept (ASCII), runs of anything else become one '_', at most 48. */
static void sanitize(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    int last_us = 1;
    for (; *s && n + 1 < cap && n < 48; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-') {
            out[n++] = (char)tolower(c);
            last_us = 0;
        } else if (!last_us) {
            out[n++] = '_';
            last_us = 1;
        }
    }
    while (n > 0 && out[n - 1] == '_') n--;
    if (n == 0 && cap > 5) {
        memcpy(out, "empty", 5);
        n = 5;
    }
    out[n] = 0;
}

int cmd_template_has_fields(const char *tmpl) { return strchr(tmpl, '{') != NULL; }

cm_status cmd_output_path(const char *tmpl, const cmd_image_info *ii, char *out, size_t cap,
                          cm_error *err)
{
    size_t n = 0;
    char buf[512];
    for (const char *p = tmpl; *p;) {
        const char *val = NULL;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (!close) return cm_error_set(err, CM_ERR_USAGE, "-o: unclosed { in \"%s\"", tmpl);
            size_t kl = (size_t)(close - p - 1);
            char key[32];
            if (kl >= sizeof key) return cm_error_set(err, CM_ERR_USAGE, "-o: unknown field in \"%s\"", tmpl);
            memcpy(key, p + 1, kl);
            key[kl] = 0;
            if (!strcmp(key, "seed")) snprintf(buf, sizeof buf, "%llu", (unsigned long long)ii->seed);
            else if (!strcmp(key, "n")) snprintf(buf, sizeof buf, "%d", ii->n);
            else if (!strcmp(key, "index")) snprintf(buf, sizeof buf, "%d", ii->index);
            else if (!strcmp(key, "prompt")) sanitize(ii->prompt ? ii->prompt : "", buf, sizeof buf);
            else if (!strcmp(key, "steps")) snprintf(buf, sizeof buf, "%d", ii->steps);
            else if (!strcmp(key, "cfg")) snprintf(buf, sizeof buf, "%g", ii->cfg);
            else if (!strcmp(key, "sampler")) snprintf(buf, sizeof buf, "%s", ii->sampler);
            else if (!strcmp(key, "width")) snprintf(buf, sizeof buf, "%d", ii->width);
            else if (!strcmp(key, "height")) snprintf(buf, sizeof buf, "%d", ii->height);
            else if (!strcmp(key, "model")) sanitize(ii->model ? ii->model : "", buf, sizeof buf);
            else if (!strcmp(key, "date")) {
                time_t t = time(NULL);
                struct tm tm;
                localtime_r(&t, &tm);
                strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
            } else
                return cm_error_set(err, CM_ERR_USAGE,
                                    "-o: unknown field {%s} (known: seed n index prompt steps cfg sampler width height model date)",
                                    key);
            val = buf;
            p = close + 1;
        } else {
            if (n + 1 >= cap) return cm_error_set(err, CM_ERR_USAGE, "-o: output path too long");
            out[n++] = *p++;
            continue;
        }
        size_t vl = strlen(val);
        if (n + vl + 1 >= cap) return cm_error_set(err, CM_ERR_USAGE, "-o: output path too long");
        memcpy(out + n, val, vl);
        n += vl;
    }
    out[n] = 0;
    return CM_OK;
}

/* Append s to out (capacity cap, at least 3 * strlen(s) + 1 left) as
 * valid UTF-8: each invalid sequence becomes U+FFFD, as the tokenizer reads
 * it, so a prompt that is not UTF-8 still gets its PNG metadata. */
static size_t put_utf8(char *out, size_t cap, const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = 0;
    while (*u && n + 4 < cap) {
        unsigned c = *u, need = 0, min = 0;
        if (c < 0x80) {
            out[n++] = (char)*u++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) need = 1, min = 0x80, c &= 0x1f;
        else if ((c & 0xf0) == 0xe0) need = 2, min = 0x800, c &= 0x0f;
        else if ((c & 0xf8) == 0xf0) need = 3, min = 0x10000, c &= 0x07;
        unsigned k = 1;
        for (; need && k <= need && (u[k] & 0xc0) == 0x80; k++) c = (c << 6) | (u[k] & 0x3f);
        if (need && k == need + 1 && c >= min && c <= 0x10ffff && !(c >= 0xd800 && c <= 0xdfff)) {
            memcpy(out + n, u, need + 1);
            n += need + 1;
            u += need + 1;
        } else {
            memcpy(out + n, "\xef\xbf\xbd", 3);
            n += 3;
            u += need ? (k > 1 ? k : 1) : 1;
        }
    }
    out[n] = 0;
    return n;
}

/* The A1111 infotext: prompt, optional "Negative prompt:" line, then the
 * comma-separated "Key: value" line. */
char *cmd_parameters_text(const cmd_image_info *ii, cm_error *err)
{
    size_t cap = 3 * (strlen(ii->prompt ? ii->prompt : "") + strlen(ii->negative ? ii->negative : "")) + 2048;
    char *s = cm_alloc(cap, "metadata", err);
    if (!s) return NULL;
    size_t n = 0;
    n += put_utf8(s + n, cap - n, ii->prompt ? ii->prompt : "");
    n += (size_t)snprintf(s + n, cap - n, "\n");
    if (ii->negative && ii->negative[0]) {
        n += (size_t)snprintf(s + n, cap - n, "Negative prompt: ");
        n += put_utf8(s + n, cap - n, ii->negative);
        n += (size_t)snprintf(s + n, cap - n, "\n");
    }
    n += (size_t)snprintf(s + n, cap - n, "Steps: %d, Sampler: %s", ii->steps, ii->sampler_label);
    if (ii->schedule_label && ii->schedule_label[0])
        n += (size_t)snprintf(s + n, cap - n, ", Schedule type: %s", ii->schedule_label);
    n += (size_t)snprintf(s + n, cap - n, ", CFG scale: %g, Seed: %llu, Size: %dx%d", ii->cfg,
                          (unsigned long long)ii->seed, ii->width, ii->height);
    if (ii->model_hash) n += (size_t)snprintf(s + n, cap - n, ", Model hash: %s", ii->model_hash);
    if (ii->model) n += (size_t)snprintf(s + n, cap - n, ", Model: %s", ii->model);
    if (ii->extra && ii->extra[0]) n += (size_t)snprintf(s + n, cap - n, ", %s", ii->extra);
    snprintf(s + n, cap - n, ", Version: stipple %s", STIPPLE_VERSION);
    return s;
}
