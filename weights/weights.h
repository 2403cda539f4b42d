/* weights.h — model files: safetensors on mmap (validated before use), the
 * model abstraction over single files and diffusers folders, canonical
 * tensor names, the architecture config, family detection.
 *
 * Canonical names are the original CompVis/LDM single-file names:
 *   model.diffusion_model.*                       UNet (SD1/SD2/SDXL)
 *   first_stage_model.*                           VAE
 *   cond_stage_model.transformer.text_model.*     SD1 CLIP-L (HF naming)
 *   cond_stage_model.model.*                      SD2 OpenCLIP-H
 *   conditioner.embedders.0.transformer.*         SDXL CLIP-L
 *   conditioner.embedders.1.model.*               SDXL OpenCLIP-bigG
 * A diffusers folder is mapped onto these names when it is opened, so the
 * stages only ever ask for canonical names.
 *
 * The architecture is a JSON object in diffusers' config field names:
 *   {"family": "sd1"|"sd2"|"sdxl"|"sd3", "text_encoder": {...},
 *    "text_encoder_2": {...}, "unet": {...}, "vae": {...}, "scheduler": {...}}
 * taken from __metadata__["stipple.config"] when present, assembled from a
 * diffusers folder's config.json files, or synthesised from the family
 * defaults and the tensor shapes of a real checkpoint.
 */
#ifndef STIPPLE_WEIGHTS_H
#define STIPPLE_WEIGHTS_H

#include <cjson/cJSON.h>

#include "common.h"

/* ------------------------------------------------------------------------
 * One safetensors file
 * ---------------------------------------------------------------------- */

typedef struct wt_file wt_file;

/* Opens and validates the whole header (DESIGN.md §6) before returning. */
wt_file *wt_file_open(const char *path, cm_error *err);
/* Same checks over bytes in memory (used by the fuzz target). The bytes
 * must outlive the returned file. */
wt_file *wt_file_open_mem(const void *data, size_t n, const char *name, cm_error *err);
void wt_file_close(wt_file *f);

const char *wt_file_path(const wt_file *f);
uint64_t wt_file_size(const wt_file *f);
int wt_file_count(const wt_file *f);
const char *wt_file_name_at(const wt_file *f, int i);
const cm_wview *wt_file_view_at(const wt_file *f, int i);
const cm_wview *wt_file_find(const wt_file *f, const char *name);
/* __metadata__ string value, or NULL. */
const char *wt_file_metadata(const wt_file *f, const char *key);
/* Bytes of the file held in a memory map (0 for wt_file_open_mem). */
size_t wt_file_mapped_bytes(const wt_file *f);
/* Give the map's resident pages back to the kernel (madvise DONTNEED on
 * the read-only private mapping): the views stay valid and the next read
 * faults the page in again from the page cache. Peak RSS then counts only
 * the weights of the stage (or block) in use. No-op for in-memory files. */
void wt_file_drop(const wt_file *f);

/* ------------------------------------------------------------------------
 * A model: one or more files seen through canonical names
 * ---------------------------------------------------------------------- */

typedef enum {
    WT_FAMILY_UNKNOWN = 0,
    WT_FAMILY_SD1,
    WT_FAMILY_SD2,
    WT_FAMILY_SDXL,
    WT_FAMILY_SD3,
} wt_family;

const char *wt_family_name(wt_family f);

typedef struct wt_model wt_model;

/* path: a .safetensors file or a diffusers folder. */
wt_model *wt_model_open(const char *path, cm_error *err);
void wt_model_close(wt_model *m);

/* Add another file's tensors under a prefix (e.g. separate text encoder
 * files: prefix "text_encoders.clip_l.transformer."). */
cm_status wt_model_add_file(wt_model *m, const char *path, const char *prefix, cm_error *err);

const char *wt_model_path(const wt_model *m);
wt_family wt_model_family(const wt_model *m);
/* The architecture config (owned by the model; never NULL after open). */
const cJSON *wt_model_config(const wt_model *m);
/* config[section] or NULL ("unet", "vae", "text_encoder", ...). */
const cJSON *wt_model_section(const wt_model *m, const char *section);

/* Lookup by canonical name; NULL when absent. */
const cm_wview *wt_model_get(const wt_model *m, const char *name);
/* Like wt_model_get, but absence or a shape other than the expected one
 * (ndim dims; a -1 entry matches anything) is an error naming the model
 * file and the tensor. */
const cm_wview *wt_model_require(const wt_model *m, const char *name, int ndim,
                                 const int64_t *shape, cm_error *err);
/* printf-style name building for the common case. */
const cm_wview *wt_model_requiref(const wt_model *m, cm_error *err, int ndim,
                                  const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
const cm_wview *wt_model_getf(const wt_model *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

int wt_model_count(const wt_model *m);
const char *wt_model_name_at(const wt_model *m, int i);
const cm_wview *wt_model_view_at(const wt_model *m, int i);
/* Count the tensors whose canonical name starts with prefix. */
int wt_model_count_prefix(const wt_model *m, const char *prefix);

/* 10 hex digits of the SHA-256 of the model file (A1111's "Model hash"),
 * computed on first use. For a folder: of the UNet weights file. */
const char *wt_model_hash(wt_model *m);
/* __metadata__ string of the model's main file, or NULL. */
const char *wt_model_metadata(const wt_model *m, const char *key);
/* File stem ("v1-5-pruned-emaonly"). */
const char *wt_model_stem(const wt_model *m);
/* Sum of wt_file_mapped_bytes over the model's files. */
size_t wt_model_mapped_bytes(const wt_model *m);
/* Whether the model is large enough (>= 256 MiB mapped) for its weights
 * to be given back between stages and blocks; below that dropping saves
 * too little to be worth the page faults (the built-in model, the tiny
 * test models). */
int wt_model_drops(const wt_model *m);
/* wt_file_drop on every file of the model when wt_model_drops (else
 * nothing): called between stages (text encoder -> denoiser -> VAE) and
 * between the blocks of the stages, so only the weights in use are
 * resident. */
void wt_model_drop(const wt_model *m);

/* ------------------------------------------------------------------------
 * Config helpers (JSON in diffusers field names)
 * ---------------------------------------------------------------------- */

/* Number / bool / string with a default when absent or null. */
double wt_cfg_num(const cJSON *obj, const char *key, double def);
int wt_cfg_int(const cJSON *obj, const char *key, int def);
const char *wt_cfg_str(const cJSON *obj, const char *key, const char *def);
/* Element i of an int array, or the int itself when the value is a scalar
 * (diffusers allows both for attention_head_dim etc.). */
int wt_cfg_int_at(const cJSON *obj, const char *key, int i, int def);
/* Length of an array value (0 when absent, 1 when scalar). */
int wt_cfg_len(const cJSON *obj, const char *key);

/* Strict JSON parse of a whole buffer: returns NULL and fills err (naming
 * `what`) on any error, trailing garbage included. */
cJSON *wt_json_parse(const char *text, size_t n, const char *what, cm_error *err);

/* ------------------------------------------------------------------------
 * Model summary for `stipple info`
 * ---------------------------------------------------------------------- */

/* Writes a JSON object describing the model: family, components (text
 * encoders, unet with in_channels / context width / prediction, vae),
 * parameter count and dtypes per component, file size. Caller frees with
 * cJSON_Delete. */
cJSON *wt_model_describe(const wt_model *m, cm_error *err);

#endif
