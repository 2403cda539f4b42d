/* safetensors.c — a validating safetensors reader on mmap.
 *
 * Format: [u64 LE header length N][N bytes JSON header][data area]. The
 * header maps names to {"dtype", "shape", "data_offsets": [begin, end)}
 * relative to the data area, plus an optional "__metadata__" of strings.
 *
 * Everything is checked before any tensor byte is used: header length
 * within the file, strict JSON, known dtypes, shapes whose byte size
 * matches the offsets without overflow, offsets inside the data area, no
 * overlapping tensors, no duplicate names. Errors name the file and the
 * tensor. Tensor data may be unaligned: readers use memcpy-safe access.
 */
#include "weights.h"
#include "weights_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct wt_file {
    char *path;
    const unsigned char *map; /* whole file (or caller's bytes) */
    size_t size;
    int mapped;
    int n;
    char **names;
    cm_wview *views;
    wt_hash index;
    cJSON *meta; /* __metadata__ object (detached) or NULL */
};

static int parse_dtype(const char *s, cm_dtype *out)
{
    static const struct { const char *name; cm_dtype t; } tab[] = {
        {"F32", CM_F32}, {"F16", CM_F16}, {"BF16", CM_BF16},
        {"I64", CM_I64}, {"I32", CM_I32}, {"U8", CM_U8},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(s, tab[i].name)) {
            *out = tab[i].t;
            return 1;
        }
    return 0;
}

/* A JSON number that is a non-negative integer below 2^53. */
static int json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return 0;
    *out = (uint64_t)d;
    return 1;
}

typedef struct { uint64_t b, e; int i; } span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->b != y->b) return x->b < y->b ? -1 : 1;
    return x->e < y->e ? -1 : x->e > y->e;
}

static cm_status parse_header(wt_file *f, cm_error *err)
{
    const char *P = f->path;
    if (f->size < 8)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: not a safetensors file: %zu bytes, need at least 8",
                            P, f->size);
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = (hn << 8) | f->map[i];
    /* Formats people mistake for safetensors get a message that says so
     * (only when the bytes are not a plausible safetensors header). */
    int plausible = hn > 0 && hn <= f->size - 8 && f->map[8] == '{';
    if (!plausible && (!memcmp(f->map, "PK\x03\x04", 4) || (f->map[0] == 0x80 && f->map[1] >= 2 && f->map[1] <= 5)))
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: a PyTorch pickle checkpoint (.ckpt/.pt), not safetensors: convert it to "
                            ".safetensors first",
                            P);
    if (!plausible && !memcmp(f->map, "GGUF", 4))
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: a GGUF file, not safetensors: not supported yet", P);
    if (hn == 0)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: header length is 0: not a safetensors file", P);
    if (hn > f->size - 8)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: header length %llu exceeds the file (%zu bytes): truncated or not safetensors",
                            P, (unsigned long long)hn, f->size);
    if (hn > 100u * 1024 * 1024)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: header length %llu is implausibly large", P,
                            (unsigned long long)hn);
    const char *text = (const char *)f->map + 8;
    cJSON *root = wt_json_parse(text, (size_t)hn, P, err);
    if (!root) return CM_ERR_FORMAT;
    cm_status st = CM_ERR_FORMAT;
    span *spans = NULL;
    int n = 0;
    if (!cJSON_IsObject(root)) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: header is not a JSON object", P);
        goto fail;
    }
    uint64_t data_size = f->size - 8 - hn;
    int count = 0;
    for (cJSON *it = root->child; it; it = it->next)
        if (strcmp(it->string, "__metadata__")) count++;
    f->names = cm_calloc(sizeof(char *) * (size_t)(count + 1), "tensor names", err);
    f->views = cm_calloc(sizeof(cm_wview) * (size_t)(count + 1), "tensor views", err);
    spans = cm_calloc(sizeof(span) * (size_t)(count + 1), "tensor spans", err);
    if (!f->names || !f->views || !spans) { st = CM_ERR_NOMEM; goto fail; }
    if (wt_hash_init(&f->index, count, err)) { st = CM_ERR_NOMEM; goto fail; }
    const unsigned char *data = f->map + 8 + hn;
    for (cJSON *it = root->child; it; it = it->next) {
        const char *name = it->string;
        if (!strcmp(name, "__metadata__")) {
            if (!cJSON_IsObject(it)) {
                cm_error_set(err, CM_ERR_FORMAT, "%s: __metadata__ is not an object", P);
                goto fail;
            }
            for (cJSON *m = it->child; m; m = m->next)
                if (!cJSON_IsString(m)) {
                    cm_error_set(err, CM_ERR_FORMAT, "%s: __metadata__ value \"%s\" is not a string", P,
                                 m->string);
                    goto fail;
                }
            continue;
        }
        if (!cJSON_IsObject(it)) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: entry is not an object", P, name);
            goto fail;
        }
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        cm_wview *v = &f->views[n];
        if (!cJSON_IsString(jd)) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: missing dtype", P, name);
            goto fail;
        }
        if (!parse_dtype(jd->valuestring, &v->dtype)) {
            cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: tensor %s: unknown dtype \"%.32s\"", P, name,
                         jd->valuestring);
            st = CM_ERR_UNSUPPORTED;
            goto fail;
        }
        if (!cJSON_IsArray(js) || cJSON_GetArraySize(js) > CM_MAX_DIMS) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: shape is not an array of at most %d dims", P,
                         name, CM_MAX_DIMS);
            goto fail;
        }
        uint64_t nbytes = cm_dtype_size(v->dtype);
        int nd = 0;
        for (cJSON *d = js->child; d; d = d->next, nd++) {
            uint64_t dim;
            if (!json_u64(d, &dim) || dim > INT64_MAX) {
                cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: shape entry %d is not a non-negative integer",
                             P, name, nd);
                goto fail;
            }
            if (dim && nbytes > UINT64_MAX / dim) {
                cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: shape product overflows", P, name);
                goto fail;
            }
            nbytes *= dim;
            v->shape[nd] = (int64_t)dim;
        }
        v->ndim = nd;
        uint64_t b, e;
        if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || !json_u64(jo->child, &b) ||
            !json_u64(jo->child->next, &e) || b > e) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: data_offsets must be [begin, end] with begin <= end",
                         P, name);
            goto fail;
        }
        if (e > data_size) {
            cm_error_set(err, CM_ERR_FORMAT,
                         "%s: tensor %s: data [%llu, %llu) lies beyond the data area (%llu bytes): file truncated?",
                         P, name, (unsigned long long)b, (unsigned long long)e,
                         (unsigned long long)data_size);
            goto fail;
        }
        if (e - b != nbytes) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s: %llu bytes stored, dtype x shape needs %llu", P,
                         name, (unsigned long long)(e - b), (unsigned long long)nbytes);
            goto fail;
        }
        v->data = data + b;
        spans[n] = (span){b, e, n};
        f->names[n] = strdup(name);
        if (!f->names[n]) {
            st = cm_error_set(err, CM_ERR_NOMEM, "out of memory reading %s", P);
            goto fail;
        }
        int put = wt_hash_put(&f->index, f->names[n], n);
        if (put <= 0) {
            if (put < 0)
                st = cm_error_set(err, CM_ERR_NOMEM, "out of memory indexing %s", P);
            else
                cm_error_set(err, CM_ERR_FORMAT, "%s: tensor %s appears twice in the header", P, name);
            n++;
            goto fail;
        }
        n++;
    }
    f->n = n;
    /* Sorted by begin, a non-empty span overlaps an earlier one exactly when
     * it begins before the furthest end seen so far. Empty tensors occupy no
     * bytes and cannot overlap anything. */
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    int far = -1; /* index (into spans) of the non-empty span ending furthest */
    for (int i = 0; i < n; i++) {
        if (spans[i].e == spans[i].b) continue;
        if (far >= 0 && spans[i].b < spans[far].e) {
            cm_error_set(err, CM_ERR_FORMAT, "%s: tensors %s and %s overlap in the data area", P,
                         f->names[spans[far].i], f->names[spans[i].i]);
            goto fail;
        }
        if (far < 0 || spans[i].e > spans[far].e) far = i;
    }
    cJSON *meta = cJSON_DetachItemFromObjectCaseSensitive(root, "__metadata__");
    f->meta = meta;
    st = CM_OK;
fail:
    if (st != CM_OK) f->n = n;
    cm_free(spans);
    cJSON_Delete(root);
    return st;
}

static wt_file *file_new(const char *path, cm_error *err)
{
    wt_file *f = cm_calloc(sizeof *f, "safetensors file", err);
    if (!f) return NULL;
    f->path = strdup(path ? path : "<memory>");
    if (!f->path) {
        cm_free(f);
        cm_error_set(err, CM_ERR_NOMEM, "out of memory");
        return NULL;
    }
    return f;
}

wt_file *wt_file_open_mem(const void *data, size_t n, const char *name, cm_error *err)
{
    wt_file *f = file_new(name, err);
    if (!f) return NULL;
    f->map = data;
    f->size = n;
    if (parse_header(f, err) != CM_OK) {
        wt_file_close(f);
        return NULL;
    }
    return f;
}

wt_file *wt_file_open(const char *path, cm_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cm_error_set(err, CM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        cm_error_set(err, CM_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (S_ISDIR(sb.st_mode)) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: is a folder, not a safetensors file", path);
        close(fd);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    wt_file *f = file_new(path, err);
    if (!f) {
        close(fd);
        return NULL;
    }
    f->size = (size_t)sb.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            cm_error_set(err, CM_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            wt_file_close(f);
            return NULL;
        }
        f->map = p;
        f->mapped = 1;
    }
    close(fd);
    if (parse_header(f, err) != CM_OK) {
        wt_file_close(f);
        return NULL;
    }
    return f;
}

size_t wt_file_mapped_bytes(const wt_file *f) { return f && f->mapped ? f->size : 0; }

void wt_file_drop(const wt_file *f)
{
    /* Only a map made here: MADV_DONTNEED on the caller's (anonymous)
     * bytes of wt_file_open_mem would zero them. */
    if (f && f->mapped && f->size) (void)madvise((void *)f->map, f->size, MADV_DONTNEED);
}

void wt_file_close(wt_file *f)
{
    if (!f) return;
    if (f->mapped) munmap((void *)f->map, f->size);
    if (f->names)
        for (int i = 0; i < f->n; i++) free(f->names[i]);
    cm_free(f->names);
    cm_free(f->views);
    wt_hash_free(&f->index);
    cJSON_Delete(f->meta);
    free(f->path);
    cm_free(f);
}

const char *wt_file_path(const wt_file *f) { return f->path; }
uint64_t wt_file_size(const wt_file *f) { return f->size; }
int wt_file_count(const wt_file *f) { return f->n; }
const char *wt_file_name_at(const wt_file *f, int i) { return f->names[i]; }
const cm_wview *wt_file_view_at(const wt_file *f, int i) { return &f->views[i]; }
cm_wview *wt_file_view_mut(wt_file *f, int i) { return &f->views[i]; }

const cm_wview *wt_file_find(const wt_file *f, const char *name)
{
    int i = wt_hash_get(&f->index, name);
    return i < 0 ? NULL : &f->views[i];
}

const char *wt_file_metadata(const wt_file *f, const char *key)
{
    if (!f->meta) return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(f->meta, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
