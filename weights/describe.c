/* describe.c — the model summary behind `stipple info`: family, the
 * components found, their architecture highlights, parameter counts and
 * dtypes, file sizes.
 *
 * Components are recognised by canonical name prefix (weights.h):
 *   text_encoder    cond_stage_model.*, conditioner.embedders.0.*, text_encoders.clip_l.*
 *   text_encoder_2  conditioner.embedders.1.*, text_encoders.clip_g.*
 *   text_encoder_3  text_encoders.t5xxl.*
 *   unet            model.diffusion_model.*  ("transformer" for sd3)
 *   vae             first_stage_model.*
 *   other           everything else (LDM DDPM buffers, unmapped diffusers tensors)
 * A parameter is an element of a floating-point tensor: integer buffers
 * (position_ids) are counted as tensors but not as parameters, as in
 * PyTorch's parameters() of the reference models.
 */
#include "weights_internal.h"

#include <string.h>

enum { K_TE, K_TE2, K_TE3, K_UNET, K_VAE, K_OTHER, K_COUNT };

static int component_of(const char *name)
{
    static const struct { const char *prefix; int k; } tab[] = {
        {"model.diffusion_model.", K_UNET},
        {"first_stage_model.", K_VAE},
        {"cond_stage_model.", K_TE},
        {"conditioner.embedders.0.", K_TE},
        {"conditioner.embedders.1.", K_TE2},
        {"text_encoders.clip_l.", K_TE},
        {"text_encoders.clip_g.", K_TE2},
        {"text_encoders.t5xxl.", K_TE3},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strncmp(name, tab[i].prefix, strlen(tab[i].prefix))) return tab[i].k;
    return K_OTHER;
}

static int is_float(cm_dtype t) { return t == CM_F32 || t == CM_F16 || t == CM_BF16; }

static void add_text(cJSON *c, const cJSON *sec)
{
    if (!sec) return;
    cJSON_AddNumberToObject(c, "hidden_size", wt_cfg_int(sec, "hidden_size", wt_cfg_int(sec, "d_model", 0)));
    cJSON_AddNumberToObject(c, "layers", wt_cfg_int(sec, "num_hidden_layers", wt_cfg_int(sec, "num_layers", 0)));
    cJSON_AddNumberToObject(c, "heads", wt_cfg_int(sec, "num_attention_heads", wt_cfg_int(sec, "num_heads", 0)));
    cJSON_AddStringToObject(c, "hidden_act", wt_cfg_str(sec, "hidden_act", wt_cfg_str(sec, "feed_forward_proj", "?")));
}

cJSON *wt_model_describe(const wt_model *m, cm_error *err)
{
    static const char *names[K_COUNT] = {"text_encoder", "text_encoder_2", "text_encoder_3",
                                         "unet",         "vae",            "other"};
    int64_t params[K_COUNT] = {0}, tensors[K_COUNT] = {0};
    int64_t dt_tensors[K_COUNT][CM_DTYPE_COUNT];
    memset(dt_tensors, 0, sizeof dt_tensors);
    for (int i = 0; i < wt_model_count_primary(m); i++) {
        const cm_wview *v = wt_model_view_at(m, i);
        int k = component_of(wt_model_name_at(m, i));
        tensors[k]++;
        if ((int)v->dtype >= 0 && v->dtype < CM_DTYPE_COUNT) dt_tensors[k][v->dtype]++;
        if (is_float(v->dtype)) params[k] += cm_wview_numel(v);
    }

    cJSON *root = cJSON_CreateObject();
    if (!root) {
        cm_error_set(err, CM_ERR_NOMEM, "out of memory describing %s", wt_model_path(m));
        return NULL;
    }
    wt_family fam = wt_model_family(m);
    cJSON_AddStringToObject(root, "path", wt_model_path(m));
    cJSON_AddStringToObject(root, "family", wt_family_name(fam));
    cJSON_AddStringToObject(root, "config_source", wt_model_config_source(m));
    uint64_t size = 0;
    cJSON *files = cJSON_AddArrayToObject(root, "files");
    for (int i = 0; i < wt_model_nfiles(m); i++) {
        const wt_file *f = wt_model_file_at(m, i);
        size += wt_file_size(f);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", wt_file_path(f));
        cJSON_AddNumberToObject(o, "bytes", (double)wt_file_size(f));
        cJSON_AddNumberToObject(o, "tensors", wt_file_count(f));
        cJSON_AddItemToArray(files, o);
    }
    cJSON_AddNumberToObject(root, "file_size", (double)size);
    cJSON_AddNumberToObject(root, "tensors", wt_model_count_primary(m));

    const cJSON *sched = wt_model_section(m, "scheduler");
    int detected = !strcmp(wt_model_config_source(m), "detected");
    int64_t total = 0;
    cJSON *comps = cJSON_AddObjectToObject(root, "components");
    for (int k = 0; k < K_COUNT; k++) {
        if (!tensors[k]) continue;
        total += params[k];
        const char *cname = (k == K_UNET && fam == WT_FAMILY_SD3) ? "transformer" : names[k];
        cJSON *c = cJSON_AddObjectToObject(comps, cname);
        cJSON_AddNumberToObject(c, "params", (double)params[k]);
        cJSON_AddNumberToObject(c, "tensors", (double)tensors[k]);
        cJSON *dts = cJSON_AddObjectToObject(c, "dtypes");
        for (int t = 0; t < CM_DTYPE_COUNT; t++)
            if (dt_tensors[k][t]) cJSON_AddNumberToObject(dts, cm_dtype_name((cm_dtype)t), (double)dt_tensors[k][t]);
        switch (k) {
        case K_TE: add_text(c, wt_model_section(m, "text_encoder")); break;
        case K_TE2: add_text(c, wt_model_section(m, "text_encoder_2")); break;
        case K_TE3: add_text(c, wt_model_section(m, "text_encoder_3")); break;
        case K_UNET: {
            const cJSON *u = wt_model_section(m, fam == WT_FAMILY_SD3 ? "transformer" : "unet");
            int in_ch = wt_cfg_int(u, "in_channels", 0);
            cJSON_AddNumberToObject(c, "in_channels", in_ch);
            cJSON_AddNumberToObject(c, "out_channels", wt_cfg_int(u, "out_channels", in_ch));
            cJSON_AddNumberToObject(c, "context_dim",
                                    wt_cfg_int(u, "cross_attention_dim", wt_cfg_int(u, "joint_attention_dim", 0)));
            cJSON_AddBoolToObject(c, "inpainting", fam != WT_FAMILY_SD3 && in_ch == 9);
            if (fam != WT_FAMILY_SD3) {
                const char *pred = wt_cfg_str(sched, "prediction_type", NULL);
                cJSON_AddStringToObject(c, "prediction_type", pred ? pred : "epsilon");
                cJSON_AddBoolToObject(c, "prediction_known", pred != NULL && !detected);
            } else {
                cJSON_AddStringToObject(c, "prediction_type", "flow");
                cJSON_AddBoolToObject(c, "prediction_known", 1);
            }
            break;
        }
        case K_VAE: {
            const cJSON *v = wt_model_section(m, "vae");
            cJSON_AddNumberToObject(c, "latent_channels", wt_cfg_int(v, "latent_channels", 4));
            cJSON_AddNumberToObject(c, "scaling_factor", wt_cfg_num(v, "scaling_factor", 0.18215));
            break;
        }
        default: break;
        }
    }
    cJSON_AddNumberToObject(root, "params", (double)total);
    return root;
}
