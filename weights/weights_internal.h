/* weights_internal.h — helpers shared inside weights/ only. */
#ifndef STIPPLE_WEIGHTS_INTERNAL_H
#define STIPPLE_WEIGHTS_INTERNAL_H

#include "common.h"

/* Open-addressing string -> int index. Keys are borrowed, not copied. */
typedef struct {
    const char **keys;
    int *vals;
    size_t cap;
    size_t n;
} wt_hash;

cm_status wt_hash_init(wt_hash *h, int expected, cm_error *err);
/* Returns 0 if the key is already present (value unchanged), 1 if added,
 * -1 on allocation failure while growing. */
int wt_hash_put(wt_hash *h, const char *key, int val);
int wt_hash_get(const wt_hash *h, const char *key); /* -1 when absent */
void wt_hash_free(wt_hash *h);


#include "weights.h"

/* model.c */
cm_status wt_model_put(wt_model *m, const char *name, const cm_wview *v, cm_error *err);
void wt_model_set_config(wt_model *m, cJSON *config);
int wt_model_nfiles(const wt_model *m);
wt_file *wt_model_file_at(const wt_model *m, int i);

/* diffusers.c: open a diffusers folder into m (files, canonical names,
 * config assembled from the config.json files). */
cm_status wt_diffusers_open(wt_model *m, const char *dir, cm_error *err);

/* detect.c: synthesise the config of a real checkpoint from its tensor
 * names and shapes (family defaults). */
cm_status wt_detect_config(const wt_model *m, cJSON **config, cm_error *err);

/* sha256.c: first 10 hex digits of the file's SHA-256 (+ NUL). */
cm_status wt_sha256_file_hex10(const char *path, char out[16]);

#endif
