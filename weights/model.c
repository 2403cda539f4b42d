/* model.c — a model seen through canonical (LDM single-file) tensor names,
 * over one or more safetensors files, with its architecture config.
 *
 * Config sources, in order: __metadata__["stipple.config"]; a diffusers
 * folder's config.json files; family defaults + tensor shapes (detect.c).
 */
#include "weights.h"
#include "weights_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_FILES 16

struct wt_model {
    char *path;
    wt_family family;
    cJSON *config;
    wt_file *files[MAX_FILES];
    int nfiles;
    /* canonical name table: names owned here, views borrowed from files */
    char **names;
    const cm_wview **views;
    int n, cap;
    wt_hash index;
    char hash[16];
    char stem[256];
    const char *config_source; /* "stipple.config", "diffusers", "detected" */
    int n_primary;             /* names [n_primary, n) are aliases; -1: none */
};

const char *wt_model_metadata(const wt_model *m, const char *key)
{
    return m && m->nfiles > 0 ? wt_file_metadata(m->files[0], key) : NULL;
}

size_t wt_model_mapped_bytes(const wt_model *m)
{
    size_t n = 0;
    for (int i = 0; m && i < m->nfiles; i++) n += wt_file_mapped_bytes(m->files[i]);
    return n;
}

int wt_model_drops(const wt_model *m) { return wt_model_mapped_bytes(m) >= ((size_t)256 << 20); }

void wt_model_drop(const wt_model *m)
{
    if (!wt_model_drops(m)) return;
    for (int i = 0; i < m->nfiles; i++) wt_file_drop(m->files[i]);
}

const char *wt_family_name(wt_family f)
{
    switch (f) {
    case WT_FAMILY_SD1: return "sd1";
    case WT_FAMILY_SD2: return "sd2";
    case WT_FAMILY_SDXL: return "sdxl";
    case WT_FAMILY_SD3: return "sd3";
    default: return "unknown";
    }
}

static wt_family family_from_name(const char *s)
{
    if (!s) return WT_FAMILY_UNKNOWN;
    if (!strcmp(s, "sd1")) return WT_FAMILY_SD1;
    if (!strcmp(s, "sd2")) return WT_FAMILY_SD2;
    if (!strcmp(s, "sdxl")) return WT_FAMILY_SDXL;
    if (!strcmp(s, "sd3")) return WT_FAMILY_SD3;
    return WT_FAMILY_UNKNOWN;
}

/* Register one tensor under a canonical name (copied). */
cm_status wt_model_put(wt_model *m, const char *name, const cm_wview *v, cm_error *err)
{
    if (m->n == m->cap) {
        int cap = m->cap ? m->cap * 2 : 1024;
        char **nn = realloc(m->names, sizeof(char *) * (size_t)cap);
        if (!nn) return cm_error_set(err, CM_ERR_NOMEM, "out of memory indexing %s", m->path);
        m->names = nn;
        const cm_wview **nv = realloc((void *)m->views, sizeof(cm_wview *) * (size_t)cap);
        if (!nv) return cm_error_set(err, CM_ERR_NOMEM, "out of memory indexing %s", m->path);
        m->views = nv;
        m->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) return cm_error_set(err, CM_ERR_NOMEM, "out of memory indexing %s", m->path);
    int r = wt_hash_put(&m->index, copy, m->n);
    if (r < 0) {
        free(copy);
        return cm_error_set(err, CM_ERR_NOMEM, "out of memory indexing %s", m->path);
    }
    if (r == 0) {
        free(copy);
        return cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s is defined twice", m->path, name);
    }
    m->names[m->n] = copy;
    m->views[m->n] = v;
    m->n++;
    return CM_OK;
}

cm_status wt_model_add_file(wt_model *m, const char *path, const char *prefix, cm_error *err)
{
    if (m->nfiles == MAX_FILES)
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: too many weight files", path);
    wt_file *f = wt_file_open(path, err);
    if (!f) return err ? err->status : CM_ERR_FORMAT;
    m->files[m->nfiles++] = f;
    char buf[1024];
    for (int i = 0; i < wt_file_count(f); i++) {
        snprintf(buf, sizeof buf, "%s%s", prefix ? prefix : "", wt_file_name_at(f, i));
        cm_status st = wt_model_put(m, buf, wt_file_view_at(f, i), err);
        if (st) return st;
    }
    /* A detected config learns about text encoders added later (SD3's
     * separate clip_l / clip_g files); a failed re-detection keeps the old one. */
    if (m->config && m->config_source && !strcmp(m->config_source, "detected")) {
        cJSON *cfg = NULL;
        if (wt_detect_config(m, &cfg, NULL) == CM_OK && cfg) wt_model_set_config(m, cfg);
    }
    return CM_OK;
}

/* Take ownership of an open file without registering its names (the
 * caller maps them: diffusers.c). */
cm_status wt_model_attach(wt_model *m, wt_file *f, cm_error *err)
{
    if (m->nfiles == MAX_FILES) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: too many weight files", wt_file_path(f));
        wt_file_close(f);
        return CM_ERR_UNSUPPORTED;
    }
    m->files[m->nfiles++] = f;
    return CM_OK;
}

/* Old SD1 checkpoints (transformers < 4.x conversions) store CLIP-L as
 * cond_stage_model.transformer.{embeddings,encoder,final_layer_norm}.*
 * without "text_model."; expose those under the canonical name too. */
static cm_status alias_old_clip(wt_model *m, cm_error *err)
{
    static const char old[] = "cond_stage_model.transformer.";
    if (wt_model_get(m, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight") ||
        !wt_model_get(m, "cond_stage_model.transformer.embeddings.token_embedding.weight"))
        return CM_OK;
    int n = m->n;
    m->n_primary = n;
    char buf[1024];
    for (int i = 0; i < n; i++) {
        const char *s = m->names[i];
        if (strncmp(s, old, sizeof old - 1) || !strncmp(s + sizeof old - 1, "text_model.", 11)) continue;
        snprintf(buf, sizeof buf, "%stext_model.%s", old, s + sizeof old - 1);
        cm_status st = wt_model_put(m, buf, m->views[i], err);
        if (st) return st;
    }
    return CM_OK;
}

static void set_stem(wt_model *m)
{
    const char *p = m->path;
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/') len--;
    size_t s = len;
    while (s > 0 && p[s - 1] != '/') s--;
    size_t n = len - s;
    if (n >= sizeof m->stem) n = sizeof m->stem - 1;
    memcpy(m->stem, p + s, n);
    m->stem[n] = 0;
    char *dot = strrchr(m->stem, '.');
    if (dot && dot != m->stem && (!strcmp(dot, ".safetensors") || !strcmp(dot, ".ckpt"))) *dot = 0;
}

wt_model *wt_model_open(const char *path, cm_error *err)
{
    wt_model *m = cm_calloc(sizeof *m, "model", err);
    if (!m) return NULL;
    m->path = strdup(path);
    if (!m->path || wt_hash_init(&m->index, 2048, err)) {
        cm_error_set(err, CM_ERR_NOMEM, "out of memory opening %s", path);
        wt_model_close(m);
        return NULL;
    }
    set_stem(m);
    m->n_primary = -1;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        cm_error_set(err, CM_ERR_IO, "%s: cannot open model: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        if (wt_diffusers_open(m, path, err)) goto fail;
    } else {
        if (wt_model_add_file(m, path, NULL, err) || alias_old_clip(m, err)) goto fail;
        const char *cfg = wt_file_metadata(m->files[0], "stipple.config");
        if (cfg) {
            char what[1100];
            snprintf(what, sizeof what, "%s: __metadata__ stipple.config", path);
            m->config = wt_json_parse(cfg, strlen(cfg), what, err);
            if (!m->config) goto fail;
            if (!cJSON_IsObject(m->config)) {
                cm_error_set(err, CM_ERR_FORMAT, "%s: stipple.config is not a JSON object", path);
                goto fail;
            }
            m->config_source = "stipple.config";
        }
    }
    if (m->config && !m->config_source) m->config_source = "diffusers";
    if (!m->config) {
        if (wt_detect_config(m, &m->config, err)) goto fail;
        m->config_source = "detected";
    }
    m->family = family_from_name(wt_cfg_str(m->config, "family", NULL));
    if (m->family == WT_FAMILY_UNKNOWN) {
        cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: unsupported model family \"%s\"", path,
                     wt_cfg_str(m->config, "family", "?"));
        goto fail;
    }
    return m;
fail:
    wt_model_close(m);
    return NULL;
}

void wt_model_close(wt_model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n; i++) free(m->names[i]);
    free(m->names);
    free((void *)m->views);
    wt_hash_free(&m->index);
    for (int i = 0; i < m->nfiles; i++) wt_file_close(m->files[i]);
    cJSON_Delete(m->config);
    free(m->path);
    cm_free(m);
}

const char *wt_model_path(const wt_model *m) { return m->path; }
wt_family wt_model_family(const wt_model *m) { return m->family; }
const cJSON *wt_model_config(const wt_model *m) { return m->config; }

const cJSON *wt_model_section(const wt_model *m, const char *section)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m->config, section);
    return cJSON_IsObject(v) ? v : NULL;
}

void wt_model_set_config(wt_model *m, cJSON *config)
{
    cJSON_Delete(m->config);
    m->config = config;
}

int wt_model_nfiles(const wt_model *m) { return m->nfiles; }
const char *wt_model_config_source(const wt_model *m) { return m->config_source ? m->config_source : "?"; }
wt_file *wt_model_file_at(const wt_model *m, int i) { return m->files[i]; }

const cm_wview *wt_model_get(const wt_model *m, const char *name)
{
    int i = wt_hash_get(&m->index, name);
    return i < 0 ? NULL : m->views[i];
}

const cm_wview *wt_model_require(const wt_model *m, const char *name, int ndim,
                                 const int64_t *shape, cm_error *err)
{
    const cm_wview *v = wt_model_get(m, name);
    if (!v) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s is missing", m->path, name);
        return NULL;
    }
    int ok = v->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && v->shape[i] != shape[i]) ok = 0;
    if (!ok) {
        char want[256] = "", got[256] = "";
        size_t a = 0, b = 0;
        for (int i = 0; i < ndim && a < sizeof want - 24; i++)
            a += (size_t)snprintf(want + a, sizeof want - a, "%s%lld", i ? "," : "", (long long)shape[i]);
        for (int i = 0; i < v->ndim && b < sizeof got - 24; i++)
            b += (size_t)snprintf(got + b, sizeof got - b, "%s%lld", i ? "," : "", (long long)v->shape[i]);
        cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s has shape [%s], expected [%s]", m->path, name,
                     got, want);
        return NULL;
    }
    if (v->dtype != CM_F32 && v->dtype != CM_F16 && v->dtype != CM_BF16) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s has dtype %s, expected a float type", m->path,
                     name, cm_dtype_name(v->dtype));
        return NULL;
    }
    return v;
}

const cm_wview *wt_model_requiref(const wt_model *m, cm_error *err, int ndim,
                                  const int64_t *shape, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return wt_model_require(m, name, ndim, shape, err);
}

const cm_wview *wt_model_getf(const wt_model *m, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return wt_model_get(m, name);
}

int wt_model_count(const wt_model *m) { return m->n; }
int wt_model_count_primary(const wt_model *m) { return m->n_primary >= 0 ? m->n_primary : m->n; }
const char *wt_model_name_at(const wt_model *m, int i) { return m->names[i]; }
const cm_wview *wt_model_view_at(const wt_model *m, int i) { return m->views[i]; }

int wt_model_count_prefix(const wt_model *m, const char *prefix)
{
    size_t n = strlen(prefix);
    int c = 0;
    for (int i = 0; i < m->n; i++)
        if (!strncmp(m->names[i], prefix, n)) c++;
    return c;
}

const char *wt_model_stem(const wt_model *m) { return m->stem; }

const char *wt_model_hash(wt_model *m)
{
    if (!m->hash[0]) {
        const char *path = m->nfiles ? wt_file_path(m->files[0]) : NULL;
        if (path && wt_hash_cache_lookup(path, m->hash)) return m->hash;
        if (!path || wt_sha256_file_hex10(path, m->hash))
            snprintf(m->hash, sizeof m->hash, "0000000000");
        else
            wt_hash_cache_store(path, m->hash);
    }
    return m->hash;
}
