/* encode.c — `stipple encode`: the text conditioning the denoiser sees,
 * written as .npy so it can be compared with a reference implementation.
 *
 * Output: float32 (2, T, C), rows [uncond, cond] (the classifier-free
 * guidance batch order of DESIGN.md §1), T = 77 x windows. SDXL also
 * writes the pooled embeddings (2, P), rows [uncond, cond], beside it as
 * FILE.pooled.npy (FILE.npy minus ".npy"). Both files are written
 * atomically.
 */
#include "cmd.h"
#include "textenc.h"
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *encode_usage =
    "usage: stipple encode -m MODEL -p PROMPT [-n NEGATIVE] [--clip-skip N] -o FILE.npy\n"
    "\n"
    "Write the text conditioning the denoiser sees for a prompt pair.\n"
    "\n"
    "  -m, --model PATH     model file (.safetensors) or diffusers folder (required for now)\n"
    "  -p, --prompt TEXT    prompt (A1111 syntax: (x) (x:1.3) [x] BREAK, 75-token windows)\n"
    "  -n, --negative TEXT  negative prompt (default empty)\n"
    "      --clip-skip N    1 = last CLIP layer, 2 = penultimate, ... (default: the model's;\n"
    "                       SD2 and SDXL default to 2, SDXL ignores values below 2)\n"
    "  -o, --output FILE    output .npy: float32 (2, T, C), rows [uncond, cond],\n"
    "                       T = 77 x number of 75-token windows, C = context width\n"
    "                       (SDXL: 768+1280 = CLIP-L and bigG penultimate states concatenated;\n"
    "                       an empty negative prompt gives zeros). SDXL also writes the pooled\n"
    "                       embeddings (2, P), rows [uncond, cond], to FILE.pooled.npy\n"
    "  SD3: --clip-l FILE --clip-g FILE --t5xxl FILE  separate text encoder files;\n"
    "       --no-t5, --t5-max-length N (default 256); C = 4096-wide context\n"
    "       (1, 77 + N rows), pooled (2, 2048) to FILE.pooled.npy\n"
    "      --threads N      worker threads (default: all cores)\n"
    "      --quiet          no messages on stderr except errors\n";

/* FILE.npy -> FILE.pooled.npy (any other name: NAME.pooled.npy). */
static void pooled_path(const char *out, char *buf, size_t cap)
{
    size_t n = strlen(out);
    if (n >= 4 && !strcmp(out + n - 4, ".npy")) n -= 4;
    snprintf(buf, cap, "%.*s.pooled.npy", (int)n, out);
}

/* Stack uncond and cond rows (each (1, ...)) into a (2, ...) tensor. */
static cm_status stack2(const cm_tensor *u, const cm_tensor *c, cm_tensor *out, cm_error *err)
{
    int64_t shape[CM_MAX_DIMS];
    shape[0] = 2;
    for (int i = 1; i < u->ndim; i++) shape[i] = u->shape[i];
    cm_status st = cm_tensor_alloc(out, u->ndim, shape, err);
    if (st != CM_OK) return st;
    int64_t n = cm_tensor_numel(u);
    memcpy(out->data, u->data, (size_t)n * sizeof(float));
    memcpy(out->data + n, c->data, (size_t)n * sizeof(float));
    return CM_OK;
}

int cmd_encode(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *negative = "", *output = NULL;
    int clip_skip = 0, threads = 0, quiet = 0, no_t5 = 0, t5_len = 0;
    const char *te_files[3] = {NULL, NULL, NULL};
    static const char *const te_flags[3] = {"--clip-l", "--clip-g", "--t5xxl"};
    static const char *const te_prefixes[3] = {"text_encoders.clip_l.transformer.",
                                               "text_encoders.clip_g.transformer.",
                                               "text_encoders.t5xxl.transformer."};
    const cmd_opt opts[] = {
        {"clip-l", 0, OPT_STR, &te_files[0], 0, 0, NULL},
        {"clip-g", 0, OPT_STR, &te_files[1], 0, 0, NULL},
        {"t5xxl", 0, OPT_STR, &te_files[2], 0, 0, NULL},
        {"no-t5", 0, OPT_FLAG, &no_t5, 0, 0, NULL},
        {"t5-max-length", 0, OPT_INT, &t5_len, 1, 4096, NULL},
        {"model", 'm', OPT_STR, &model, 0, 0, NULL},
        {"prompt", 'p', OPT_STR, &prompt, 0, 0, NULL},
        {"negative", 'n', OPT_STR, &negative, 0, 0, NULL},
        {"clip-skip", 0, OPT_INT, &clip_skip, 1, 1000, NULL},
        {"output", 'o', OPT_STR, &output, 0, 0, NULL},
        {"threads", 0, OPT_INT, &threads, 1, 4096, NULL},
        {"quiet", 0, OPT_FLAG, &quiet, 0, 0, NULL},
        {NULL, 0, OPT_FLAG, NULL, 0, 0, NULL},
    };
    char *pos[1];
    int npos = 0;
    int r = cmd_parse(argc, argv, opts, encode_usage, pos, &npos, 0);
    if (r < 0) return EXIT_OK;
    if (r) return r;
    if (!prompt) return cmd_usage_error("encode: -p PROMPT is required (see stipple encode --help)");
    if (!output) return cmd_usage_error("encode: -o FILE.npy is required (see stipple encode --help)");
    if (!model) return cmd_usage_error("encode: -m MODEL is required (no built-in model yet)");
    if (quiet) cm_log_set_level(CM_LOG_ERROR);
    if (threads) cm_threads_set(threads);

    cm_error err = {0};
    wt_model *m = NULL;
    te_encoder *e = NULL;
    te_cond cond = {0}, uncond = {0};
    cm_tensor ctx = {0}, pooled = {0};
    int rc = EXIT_OK;

    m = wt_model_open(model, &err);
    if (!m) goto fail;
    for (int k = 0; k < 3; k++) {
        if (!te_files[k]) continue;
        if (wt_model_family(m) != WT_FAMILY_SD3) {
            cm_error_set(&err, CM_ERR_USAGE, "%s %s: separate text encoder files are for SD3 models", te_flags[k],
                         te_files[k]);
            goto fail;
        }
        if (wt_model_add_file(m, te_files[k], te_prefixes[k], &err)) {
            cm_error_prefix(&err, "%s", te_flags[k]);
            goto fail;
        }
    }
    e = te_encoder_create(m, &err);
    if (!e) goto fail;
    if ((no_t5 || t5_len || wt_model_family(m) == WT_FAMILY_SD3) &&
        te_encoder_set_t5(e, !no_t5, t5_len ? t5_len : 256, &err))
        goto fail;
    if (te_encode_pair(e, prompt, negative, clip_skip, &cond, &uncond, &err) != CM_OK) goto fail;
    if (stack2(&uncond.context, &cond.context, &ctx, &err) != CM_OK) goto fail;
    if (cm_npy_write(output, &ctx, &err) != CM_OK) goto fail;
    if (cond.pooled.data) {
        char pp[4096];
        pooled_path(output, pp, sizeof pp);
        if (stack2(&uncond.pooled, &cond.pooled, &pooled, &err) != CM_OK) goto fail;
        if (cm_npy_write(pp, &pooled, &err) != CM_OK) goto fail;
    }
    goto done;

fail:
    rc = cmd_fail(&err);
done:
    cm_tensor_release(&ctx);
    cm_tensor_release(&pooled);
    te_cond_release(&cond);
    te_cond_release(&uncond);
    te_encoder_free(e);
    wt_model_close(m);
    return rc;
}
