/* cmd.h — internals of the stipple program (cmd/ only). */
#ifndef STIPPLE_CMD_H
#define STIPPLE_CMD_H

#include "common.h"

/* Exit codes (DESIGN.md §4). */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_SIGINT = 130, EXIT_SIGTERM = 143 };

/* Print `stipple: error: <msg>` (one line) and return the exit code that
 * matches the status. */
int cmd_fail(const cm_error *err);
int cmd_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The last error line printed by cmd_fail / cmd_usage_error (without the
 * "stipple: error: " prefix): the jobs mode reports it per job. */
#define CMD_LAST_ERROR_CAP 1024
extern char cmd_last_error[CMD_LAST_ERROR_CAP];

/* Subcommands: argc/argv start at the subcommand name. */
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_generate(int argc, char **argv); /* txt2img, img2img, inpaint */
int cmd_jobs(int argc, char **argv);

/* ------------------------------------------------------------------------
 * Options (opts.c)
 * ---------------------------------------------------------------------- */

typedef enum { OPT_STR, OPT_INT, OPT_FLOAT, OPT_FLAG } cmd_opt_kind;

typedef struct {
    const char *name;  /* long name without "--" */
    char short_name;   /* 0 when none */
    cmd_opt_kind kind;
    void *dst;         /* const char **, int *, float *, int * */
    long long min, max; /* range for numbers */
    int *seen;         /* optional: set to 1 when given */
} cmd_opt;

/* Parse argv[1..] (argv[0] is the subcommand name). Positional arguments go
 * to pos (at most maxpos). Returns 0 on success, -1 after printing usage
 * for --help (exit 0), or EXIT_USAGE after printing the error. The table
 * ends with an entry whose name is NULL. */
int cmd_parse(int argc, char **argv, const cmd_opt *opts, const char *usage, char **pos, int *npos,
              int maxpos);

/* ------------------------------------------------------------------------
 * Output (output.c)
 * ---------------------------------------------------------------------- */

/* What one generated image was made from (names, metadata, JSON line). */
typedef struct {
    const char *prompt, *negative;
    uint64_t seed;
    int n;     /* index within this run */
    int index; /* global job index (sharding) */
    int steps;
    float cfg;
    const char *sampler;        /* our name: dpmpp_2m */
    const char *sampler_label;  /* A1111's: DPM++ 2M */
    const char *schedule_label; /* A1111's: Karras, or NULL */
    int width, height;
    const char *model;      /* file stem */
    const char *model_hash; /* 10 hex */
    const char *extra;      /* more "Key: value" pairs, or NULL */
} cmd_image_info;

int cmd_template_has_fields(const char *tmpl);
cm_status cmd_output_path(const char *tmpl, const cmd_image_info *ii, char *out, size_t cap,
                          cm_error *err);
/* cm_alloc'd A1111 "parameters" text. */
char *cmd_parameters_text(const cmd_image_info *ii, cm_error *err);

/* The built-in model's path (next to the binary or in the install prefix),
 * or NULL when not found. */
const char *cmd_builtin_model_path(void);

/* ------------------------------------------------------------------------
 * Memory pre-flight (preflight.c)
 * ---------------------------------------------------------------------- */

struct wt_model;
struct te_encoder;
struct df_unet;
struct df_mmdit;
struct vae_model;

/* Latent pixels per tile of the automatic tiled decode; tiles overlap by a
 * quarter (16). STIPPLE_VAE_TILE=N overrides the tile (a test hook that
 * makes the switch reachable at small sizes). */
#define CMD_VAE_TILE 64

/* One job as the pre-flight sees it. */
typedef struct {
    const struct wt_model *m;
    const struct te_encoder *te; /* for the prompt's token count; may be NULL */
    const struct df_unet *unet;
    const struct vae_model *vae;
    int width, height;
    int rows;                    /* UNet batch rows: 2 with CFG, else 1 */
    const char *prompt, *negative;
    int with_image;              /* img2img / inpaint: an input image is encoded */
    const struct df_mmdit *mmdit; /* SD3: the denoiser instead of unet (NULL otherwise) */
    int context_tokens;          /* > 0: the context length when known (SD3: 77 + T5 tokens) */
} cmd_mem_job;

/* The estimate, in bytes (SIZE_MAX when it overflows). */
typedef struct {
    size_t weights, buffers, unet, vae, vae_tiled;
    size_t kernels_unet, kernels_vae, kernels_vae_tiled, overhead;
    size_t pack_cache; /* min(cm_pack_cache_budget, all packed panels) */
    size_t total;       /* with a whole-image VAE decode */
    size_t total_tiled; /* with vae_decode_tiled (cmd_vae_tile, overlap tile/4) */
} cmd_mem_plan;

void cmd_mem_estimate(const cmd_mem_job *j, cmd_mem_plan *p);
/* The tile of the automatic tiled decode (CMD_VAE_TILE or the hook). */
int cmd_vae_tile(void);
/* Bytes this process may still use: min(MemAvailable, cgroup limit - use);
 * 0 when unknown. *source names where it came from. */
size_t cmd_mem_available(const char **source);
/* "512M", "8G", "1.5GiB", "123456" (bytes) -> *out; 0 ok, -1 bad. */
int cmd_parse_size(const char *s, size_t *out);
/* Compare the estimate with max_memory (0: cmd_mem_available). Fits:
 * CM_OK, *tiled 0. Fits only with tiled VAE decoding: CM_OK, *tiled 1 and
 * a note on stderr. Neither: CM_ERR_NOMEM, the estimate in the message.
 * *scratch (may be NULL): the kernel scratch the job needs at most. */
cm_status cmd_preflight(const cmd_mem_job *j, size_t max_memory, int *tiled, size_t *scratch,
                        cm_error *err);

#endif
