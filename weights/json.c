/* json.c — strict JSON parsing (on Debian's libcjson) and config accessors.
 *
 * cJSON is used because it is small, packaged in Debian, and has a nesting
 * limit; strictness it lacks (trailing bytes, non-finite numbers) is
 * enforced here.
 */
#include "weights.h"
#include "weights_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

cJSON *wt_json_parse(const char *text, size_t n, const char *what, cm_error *err)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!root) {
        size_t at = 0;
        const char *ep = cJSON_GetErrorPtr();
        if (ep && ep >= text && ep <= text + n) at = (size_t)(ep - text);
        cm_error_set(err, CM_ERR_FORMAT, "%s: malformed JSON near byte %zu", what, at);
        return NULL;
    }
    /* Only whitespace (the safetensors padding) may follow the value. */
    for (const char *p = end; p && p < text + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != 0) {
            cJSON_Delete(root);
            cm_error_set(err, CM_ERR_FORMAT, "%s: trailing bytes after the JSON value at byte %zu", what,
                         (size_t)(p - text));
            return NULL;
        }
    return root;
}

static const cJSON *item(const cJSON *obj, const char *key)
{
    if (!obj || !cJSON_IsObject(obj)) return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

double wt_cfg_num(const cJSON *obj, const char *key, double def)
{
    const cJSON *v = item(obj, key);
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? 1 : 0;
    return def;
}

static int to_int(double d, int def);

int wt_cfg_int(const cJSON *obj, const char *key, int def)
{
    return to_int(wt_cfg_num(obj, key, def), def);
}

const char *wt_cfg_str(const cJSON *obj, const char *key, const char *def)
{
    const cJSON *v = item(obj, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}

/* A double as an int, or def when out of range ((int) of it is undefined). */
static int to_int(double d, int def)
{
    if (!(d > -2147483648.0 && d < 2147483647.0)) return def;
    return (int)d;
}

int wt_cfg_int_at(const cJSON *obj, const char *key, int i, int def)
{
    const cJSON *v = item(obj, key);
    if (cJSON_IsArray(v)) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (cJSON_IsNumber(e)) return to_int(e->valuedouble, def);
        return def;
    }
    if (cJSON_IsNumber(v)) return to_int(v->valuedouble, def);
    return def;
}

int wt_cfg_len(const cJSON *obj, const char *key)
{
    const cJSON *v = item(obj, key);
    if (!v) return 0;
    if (cJSON_IsArray(v)) return cJSON_GetArraySize(v);
    return 1;
}

/* ------------------------------------------------------------- name index */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

cm_status wt_hash_init(wt_hash *h, int expected, cm_error *err)
{
    memset(h, 0, sizeof *h);
    size_t cap = 16;
    while (cap < (size_t)expected * 2 + 1) cap *= 2;
    h->keys = cm_calloc(cap * sizeof(char *), "name index", err);
    h->vals = cm_calloc(cap * sizeof(int), "name index", err);
    if (!h->keys || !h->vals) {
        wt_hash_free(h);
        return CM_ERR_NOMEM;
    }
    h->cap = cap;
    return CM_OK;
}

static int grow(wt_hash *h)
{
    wt_hash g;
    if (wt_hash_init(&g, (int)h->cap, NULL)) return -1;
    for (size_t i = 0; i < h->cap; i++)
        if (h->keys[i]) wt_hash_put(&g, h->keys[i], h->vals[i]);
    wt_hash_free(h);
    *h = g;
    return 0;
}

int wt_hash_put(wt_hash *h, const char *key, int val)
{
    if ((h->n + 1) * 2 > h->cap && grow(h)) return -1;
    size_t i = fnv1a(key) & (h->cap - 1);
    while (h->keys[i]) {
        if (!strcmp(h->keys[i], key)) return 0;
        i = (i + 1) & (h->cap - 1);
    }
    h->keys[i] = key;
    h->vals[i] = val;
    h->n++;
    return 1;
}

int wt_hash_get(const wt_hash *h, const char *key)
{
    if (!h->cap) return -1;
    size_t i = fnv1a(key) & (h->cap - 1);
    while (h->keys[i]) {
        if (!strcmp(h->keys[i], key)) return h->vals[i];
        i = (i + 1) & (h->cap - 1);
    }
    return -1;
}

void wt_hash_free(wt_hash *h)
{
    cm_free(h->keys);
    cm_free(h->vals);
    memset(h, 0, sizeof *h);
}
