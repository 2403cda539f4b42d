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
/* Names [0, count_primary) are distinct tensors; the rest are aliases
 * (old CLIP naming exposed under the canonical name too). */
int wt_model_count_primary(const wt_model *m);
/* Where the config came from: "stipple.config", "diffusers" or "detected". */
const char *wt_model_config_source(const wt_model *m);
/* Own an open file (closed with the model, also on failure here) without
 * registering its names; the caller registers mapped names with
 * wt_model_put. The first file attached is the one wt_model_hash hashes. */
cm_status wt_model_attach(wt_model *m, wt_file *f, cm_error *err);
wt_file *wt_model_file_at(const wt_model *m, int i);

/* diffusers.c: open a diffusers folder into m (files, canonical names,
 * config assembled from the config.json files). */
cm_status wt_diffusers_open(wt_model *m, const char *dir, cm_error *err);

/* detect.c: synthesise the config of a real checkpoint from its tensor
 * names and shapes (family defaults). */
cm_status wt_detect_config(const wt_model *m, cJSON **config, cm_error *err);

/* safetensors.c: a file's own view, for adjusting the shape of a view
 * whose bytes are identical in both layouts (diffusers' [C,C] VAE
 * attention linears exposed as LDM's [C,C,1,1] 1x1 convs). */
cm_wview *wt_file_view_mut(wt_file *f, int i);

/* sha256.c: FIPS 180-4 SHA-256. */
typedef struct {
    uint32_t h[8];
    uint64_t len; /* bytes hashed so far */
    unsigned char buf[64];
    size_t nbuf;
} wt_sha256;

void wt_sha256_init(wt_sha256 *s);
void wt_sha256_update(wt_sha256 *s, const void *data, size_t n);
void wt_sha256_final(wt_sha256 *s, unsigned char digest[32]);
/* Full 64-hex-digit digest of a file (out: 65 bytes). */
cm_status wt_sha256_file(const char *path, char out[65], cm_error *err);
/* First 10 hex digits of the file's SHA-256 (+ NUL): A1111's model hash. */
cm_status wt_sha256_file_hex10(const char *path, char out[16]);

/* hashcache.c: remembered model-file hashes (see the file header).
 * lookup returns 1 and fills out (10 hex + NUL) on a hit. */
int wt_hash_cache_lookup(const char *path, char out[16]);
void wt_hash_cache_store(const char *path, const char *hex10);

#endif
