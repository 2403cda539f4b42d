/* info.c — `stipple info [MODEL] [--json]`: what a model file or diffusers
 * folder holds (family, components, parameter counts, dtypes, size, hash).
 * The summary itself is wt_model_describe (weights/describe.c); this file
 * parses the arguments and prints it, as text or as one JSON object.
 */
#include "cmd.h"
#include "weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *info_usage =
    "usage: stipple info [MODEL] [--json]\n"
    "\n"
    "Describe a model: a .safetensors checkpoint or a diffusers folder\n"
    "(default: the built-in model). Prints the family, each component with\n"
    "its size and parameter count, dtypes, file size and model hash.\n"
    "\n"
    "options:\n"
    "  --json      one JSON object on stdout\n"
    "  --clip-l FILE, --clip-g FILE, --t5xxl FILE\n"
    "              SD3: separate text encoder files, described with the model\n"
    "  -h, --help  this help\n";

/* Weak fallback until the built-in model exists: none. */
__attribute__((weak)) const char *cmd_builtin_model_path(void) { return NULL; }

static void print_count(const char *label, double n)
{
    printf("%s%.0f", label, n);
    if (n >= 1e9) printf(" (%.2f G)", n / 1e9);
    else if (n >= 1e6) printf(" (%.2f M)", n / 1e6);
    else if (n >= 1e3) printf(" (%.1f k)", n / 1e3);
}

static void print_dtypes(const cJSON *c)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(c, "dtypes");
    printf(" [");
    int first = 1;
    for (const cJSON *t = d ? d->child : NULL; t; t = t->next) {
        printf("%s%s", first ? "" : " ", t->string);
        first = 0;
    }
    printf("]");
}

static void print_text(const cJSON *desc, const char *hash)
{
    printf("model:        %s\n", wt_cfg_str(desc, "path", "?"));
    printf("family:       %s (config: %s)\n", wt_cfg_str(desc, "family", "?"),
           wt_cfg_str(desc, "config_source", "?"));
    double size = wt_cfg_num(desc, "file_size", 0);
    printf("file size:    %.0f bytes (%.1f MiB)\n", size, size / (1024.0 * 1024.0));
    printf("model hash:   %s\n", hash);
    const cJSON *comps = cJSON_GetObjectItemCaseSensitive(desc, "components");
    for (const cJSON *c = comps ? comps->child : NULL; c; c = c->next) {
        printf("%-14s%s", c->string, strlen(c->string) >= 14 ? " " : "");
        if (!strncmp(c->string, "text_encoder", 12))
            printf("hidden %d, %d layers, %d heads, %s; ", wt_cfg_int(c, "hidden_size", 0),
                   wt_cfg_int(c, "layers", 0), wt_cfg_int(c, "heads", 0), wt_cfg_str(c, "hidden_act", "?"));
        else if (!strcmp(c->string, "unet") || !strcmp(c->string, "transformer"))
            printf("in %d channels%s, context %d, prediction %s%s; ", wt_cfg_int(c, "in_channels", 0),
                   wt_cfg_int(c, "inpainting", 0) ? " (inpainting)" : "", wt_cfg_int(c, "context_dim", 0),
                   wt_cfg_str(c, "prediction_type", "?"),
                   wt_cfg_int(c, "prediction_known", 0) ? "" : " (assumed: weights cannot tell)");
        else if (!strcmp(c->string, "vae"))
            printf("latent %d channels, scaling %g; ", wt_cfg_int(c, "latent_channels", 0),
                   wt_cfg_num(c, "scaling_factor", 0));
        print_count("params ", wt_cfg_num(c, "params", 0));
        print_dtypes(c);
        printf(", %d tensors\n", wt_cfg_int(c, "tensors", 0));
    }
    print_count("total params  ", wt_cfg_num(desc, "params", 0));
    printf("\n");
}

int cmd_info(int argc, char **argv)
{
    int json = 0;
    const char *te_files[3] = {NULL, NULL, NULL};
    static const char *const te_flags[3] = {"--clip-l", "--clip-g", "--t5xxl"};
    static const char *const te_prefixes[3] = {"text_encoders.clip_l.transformer.",
                                               "text_encoders.clip_g.transformer.",
                                               "text_encoders.t5xxl.transformer."};
    const cmd_opt opts[] = {
        {"json", 0, OPT_FLAG, &json, 0, 0, NULL},
        {"clip-l", 0, OPT_STR, &te_files[0], 0, 0, NULL},
        {"clip-g", 0, OPT_STR, &te_files[1], 0, 0, NULL},
        {"t5xxl", 0, OPT_STR, &te_files[2], 0, 0, NULL},
        {NULL, 0, OPT_FLAG, NULL, 0, 0, NULL},
    };
    char *pos[2] = {NULL, NULL};
    int npos = 0;
    int r = cmd_parse(argc, argv, opts, info_usage, pos, &npos, 1);
    if (r == -1) return EXIT_OK;
    if (r) return r;
    const char *path = npos ? pos[0] : cmd_builtin_model_path();
    if (!path) return cmd_usage_error("info: no model given (and no built-in model found): stipple info MODEL");

    cm_error err = {0};
    wt_model *m = wt_model_open(path, &err);
    if (!m) return cmd_fail(&err);
    for (int k = 0; k < 3; k++) {
        if (!te_files[k]) continue;
        if (wt_model_family(m) != WT_FAMILY_SD3) {
            cm_error_set(&err, CM_ERR_USAGE, "%s %s: separate text encoder files are for SD3 models; %s is %s",
                         te_flags[k], te_files[k], path, wt_family_name(wt_model_family(m)));
            wt_model_close(m);
            return cmd_fail(&err);
        }
        if (wt_model_add_file(m, te_files[k], te_prefixes[k], &err)) {
            cm_error_prefix(&err, "%s", te_flags[k]);
            wt_model_close(m);
            return cmd_fail(&err);
        }
    }
    cJSON *desc = wt_model_describe(m, &err);
    if (!desc) {
        wt_model_close(m);
        return cmd_fail(&err);
    }
    const char *hash = wt_model_hash(m);
    if (json) {
        cJSON_AddStringToObject(desc, "model_hash", hash);
        cJSON_AddStringToObject(desc, "stem", wt_model_stem(m));
        char *s = cJSON_PrintUnformatted(desc);
        if (s) {
            printf("%s\n", s);
            free(s);
        }
    } else {
        print_text(desc, hash);
    }
    cJSON_Delete(desc);
    wt_model_close(m);
    if (fflush(stdout) != 0) {
        cm_error_set(&err, CM_ERR_IO, "info: cannot write to stdout");
        return cmd_fail(&err);
    }
    return EXIT_OK;
}
