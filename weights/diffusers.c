/* diffusers.c — a diffusers pipeline folder seen as one model with
 * canonical (LDM single-file) tensor names.
 *
 * Layout: model_index.json, unet/, vae/, text_encoder/, [text_encoder_2/],
 * scheduler/, each with config.json (scheduler: scheduler_config.json)
 * and one *.safetensors file. The config is assembled as
 *   {"family", "unet", "vae", "text_encoder", ["text_encoder_2",]
 *    "scheduler", ["text_layers_used"]}
 * from those config.json files; the family from text_encoder_2 /
 * addition_embed_type (sdxl), cross_attention_dim 768/1024 (sd1/sd2),
 * else the text encoder's activation (quick_gelu: CLIP-L, sd1; gelu:
 * OpenCLIP, sd2).
 *
 * Names: the inverse of diffusers' original→diffusers checkpoint
 * conversion (convert_original_stable_diffusion_to_diffusers /
 * from_single_file), written from the two layouts:
 *   UNet  down_blocks.i.resnets.j      -> input_blocks.(1+i*(lpb+1)+j).0
 *         down_blocks.i.attentions.j   -> input_blocks.(1+i*(lpb+1)+j).1
 *         down_blocks.i.downsamplers.0.conv -> input_blocks.((i+1)*(lpb+1)).0.op
 *         mid_block.{resnets.0, attentions.0, resnets.1} -> middle_block.{0,1,2}
 *         up_blocks.i.resnets.j        -> output_blocks.(i*(lpb+1)+j).0
 *         up_blocks.i.attentions.j     -> output_blocks.(i*(lpb+1)+j).1
 *         up_blocks.i.upsamplers.0     -> output_blocks.(i*(lpb+1)+lpb).{1|2} (2 after attention)
 *         resnet norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut ->
 *                in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection
 *         conv_in/time_embedding.linear_{1,2}/add_embedding.linear_{1,2}/conv_norm_out/conv_out ->
 *                input_blocks.0.0/time_embed.{0,2}/label_emb.0.{0,2}/out.0/out.2
 *         (transformer internals have the same names in both layouts)
 *   VAE   encoder.down_blocks.i -> encoder.down.i; decoder.up_blocks.i -> decoder.up.(L-1-i);
 *         resnets.j -> block.j (conv_shortcut -> nin_shortcut); {down,up}samplers.0 ->
 *         {down,up}sample; mid_block.resnets.{0,1} -> mid.block_{1,2};
 *         mid_block.attentions.0.{group_norm, to_q|query, to_k|key, to_v|value,
 *         to_out.0|proj_attn} -> mid.attn_1.{norm,q,k,v,proj_out}; conv_norm_out -> norm_out.
 *         diffusers stores those attention weights as linears [C,C]; they are
 *         exposed with LDM's 1x1-conv shape [C,C,1,1] (same bytes).
 *   Text  diffusers text encoders are HF transformers models with separate
 *         q/k/v. They are NOT converted to OpenCLIP names (that would need
 *         fused in_proj weights). Exposed names:
 *           sd1  text_encoder   -> cond_stage_model.transformer.<HF name>   (canonical)
 *           sd2  text_encoder   -> cond_stage_model.transformer.<HF name>   (HF-style, not
 *                                  cond_stage_model.model.*)
 *           sdxl text_encoder   -> conditioner.embedders.0.transformer.<HF name> (canonical)
 *                text_encoder_2 -> conditioner.embedders.1.transformer.<HF name> (HF-style:
 *                                  text_model.*, text_projection.weight stored [P,W])
 *         so a text encoder must accept the HF layout under either prefix.
 * Tensors the maps do not know are kept as "diffusers.<component>.<name>".
 */
#include "weights_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define UNET "model.diffusion_model."
#define VAE "first_stage_model."

/* ------------------------------------------------------------------------
 * Files
 * ---------------------------------------------------------------------- */

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Parse dir/sub/name as a JSON object; NULL + err when missing or bad. */
static cJSON *read_json(const char *dir, const char *sub, const char *name, cm_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s%s", dir, sub, *sub ? "/" : "", name);
    char *text = NULL;
    size_t n = 0;
    if (cm_file_read_all(path, &text, &n, err)) return NULL;
    cJSON *j = wt_json_parse(text, n, path, err);
    cm_free(text);
    if (j && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        cm_error_set(err, CM_ERR_FORMAT, "%s: not a JSON object", path);
        return NULL;
    }
    return j;
}

/* The component's weights: the plain name first, then a variant
 * (e.g. diffusion_pytorch_model.fp16.safetensors). */
static cm_status find_weights(const char *dir, const char *sub, char *out, size_t n, cm_error *err)
{
    static const char *plain[] = {"diffusion_pytorch_model.safetensors", "model.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(out, n, "%s/%s/%s", dir, sub, plain[i]);
        if (is_file(out)) return CM_OK;
    }
    char sd[4096];
    snprintf(sd, sizeof sd, "%s/%s", dir, sub);
    DIR *d = opendir(sd);
    if (!d) return cm_error_set(err, CM_ERR_IO, "%s: cannot open folder: %s", sd, strerror(errno));
    int found = 0, bin = 0, index = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors") && !found) {
            int w = snprintf(out, n, "%s/%s", sd, e->d_name);
            found = w > 0 && (size_t)w < n && is_file(out);
        }
        if (len > 4 && !strcmp(e->d_name + len - 4, ".bin")) bin = 1;
        if (strstr(e->d_name, ".safetensors.index.json")) index = 1;
    }
    closedir(d);
    if (found && !index) return CM_OK;
    if (index)
        return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: sharded weights (*.safetensors.index.json) are not supported",
                            sd);
    if (bin)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: only PyTorch .bin weights found; convert them to .safetensors", sd);
    return cm_error_set(err, CM_ERR_FORMAT, "%s: no *.safetensors weights file", sd);
}

/* ------------------------------------------------------------------------
 * Name maps (diffusers -> LDM); each returns 1 when it produced a name
 * ---------------------------------------------------------------------- */

/* Match s against a pattern whose "%d" stand for block indices (1 to 4
 * decimal digits; names come from untrusted files, so no sscanf overflow).
 * Returns the length matched, or 0. Indices go to a, then b. */
static int match(const char *s, const char *pat, int *a, int *b)
{
    int *dst[2] = {a, b}, k = 0;
    const char *p = s;
    for (const char *q = pat; *q; q++) {
        if (q[0] == '%' && q[1] == 'd') {
            int v = 0, nd = 0;
            while (*p >= '0' && *p <= '9' && nd < 5) v = v * 10 + (*p++ - '0'), nd++;
            if (nd == 0 || nd > 4 || k == 2 || !dst[k]) return 0;
            *dst[k++] = v;
            q++;
            continue;
        }
        if (*p++ != *q) return 0;
    }
    return (int)(p - s);
}
#define MATCH2(s, fmt, a, b, pos) (((pos) = match(s, fmt, a, b)) > 0)
#define MATCH1(s, fmt, a, pos) (((pos) = match(s, fmt, a, NULL)) > 0)

static const char *unet_resnet(const char *r, char *buf, size_t n)
{
    static const struct { const char *d, *l; } tab[] = {
        {"norm1.", "in_layers.0."},     {"conv1.", "in_layers.2."}, {"time_emb_proj.", "emb_layers.1."},
        {"norm2.", "out_layers.0."},    {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strncmp(r, tab[i].d, strlen(tab[i].d))) {
            snprintf(buf, n, "%s%s", tab[i].l, r + strlen(tab[i].d));
            return buf;
        }
    return NULL;
}

static int map_unet(const char *s, int lpb, const cJSON *ucfg, char *out, size_t n)
{
    static const struct { const char *d, *l; } top[] = {
        {"conv_in.", "input_blocks.0.0."},         {"time_embedding.linear_1.", "time_embed.0."},
        {"time_embedding.linear_2.", "time_embed.2."}, {"add_embedding.linear_1.", "label_emb.0.0."},
        {"add_embedding.linear_2.", "label_emb.0.2."}, {"conv_norm_out.", "out.0."},
        {"conv_out.", "out.2."},
    };
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
        if (!strncmp(s, top[i].d, strlen(top[i].d))) {
            snprintf(out, n, UNET "%s%s", top[i].l, s + strlen(top[i].d));
            return 1;
        }
    int a, b, p;
    const char *r;
    char rb[512];
    if (MATCH2(s, "down_blocks.%d.resnets.%d.", &a, &b, p) && (r = unet_resnet(s + p, rb, sizeof rb))) {
        snprintf(out, n, UNET "input_blocks.%d.0.%s", 1 + a * (lpb + 1) + b, r);
        return 1;
    }
    if (MATCH2(s, "down_blocks.%d.attentions.%d.", &a, &b, p)) {
        snprintf(out, n, UNET "input_blocks.%d.1.%s", 1 + a * (lpb + 1) + b, s + p);
        return 1;
    }
    if (MATCH1(s, "down_blocks.%d.downsamplers.0.conv.", &a, p)) {
        snprintf(out, n, UNET "input_blocks.%d.0.op.%s", (a + 1) * (lpb + 1), s + p);
        return 1;
    }
    if (MATCH1(s, "mid_block.resnets.%d.", &a, p) && (a == 0 || a == 1) && (r = unet_resnet(s + p, rb, sizeof rb))) {
        snprintf(out, n, UNET "middle_block.%d.%s", 2 * a, r);
        return 1;
    }
    if (!strncmp(s, "mid_block.attentions.0.", 23)) {
        snprintf(out, n, UNET "middle_block.1.%s", s + 23);
        return 1;
    }
    if (MATCH2(s, "up_blocks.%d.resnets.%d.", &a, &b, p) && (r = unet_resnet(s + p, rb, sizeof rb))) {
        snprintf(out, n, UNET "output_blocks.%d.0.%s", a * (lpb + 1) + b, r);
        return 1;
    }
    if (MATCH2(s, "up_blocks.%d.attentions.%d.", &a, &b, p)) {
        snprintf(out, n, UNET "output_blocks.%d.1.%s", a * (lpb + 1) + b, s + p);
        return 1;
    }
    if (MATCH1(s, "up_blocks.%d.upsamplers.0.conv.", &a, p)) {
        const cJSON *types = cJSON_GetObjectItemCaseSensitive(ucfg, "up_block_types");
        const cJSON *t = cJSON_GetArrayItem(types, a);
        int attn = cJSON_IsString(t) && strstr(t->valuestring, "CrossAttn") != NULL;
        snprintf(out, n, UNET "output_blocks.%d.%d.conv.%s", a * (lpb + 1) + lpb, attn ? 2 : 1, s + p);
        return 1;
    }
    return 0;
}

/* VAE: *reshape is set when a [C,C] linear must be seen as [C,C,1,1]. */
static int map_vae(const char *s, int levels, char *out, size_t n, int *reshape)
{
    *reshape = 0;
    static const struct { const char *d, *l; } fixed[] = {
        {"encoder.conv_norm_out.", "encoder.norm_out."}, {"decoder.conv_norm_out.", "decoder.norm_out."},
        {"encoder.conv_in.", "encoder.conv_in."},        {"encoder.conv_out.", "encoder.conv_out."},
        {"decoder.conv_in.", "decoder.conv_in."},        {"decoder.conv_out.", "decoder.conv_out."},
        {"quant_conv.", "quant_conv."},                  {"post_quant_conv.", "post_quant_conv."},
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strncmp(s, fixed[i].d, strlen(fixed[i].d))) {
            snprintf(out, n, VAE "%s%s", fixed[i].l, s + strlen(fixed[i].d));
            return 1;
        }
    const char *coder = !strncmp(s, "encoder.", 8) ? "encoder" : !strncmp(s, "decoder.", 8) ? "decoder" : NULL;
    if (!coder) return 0;
    const char *t = s + 8;
    int a, b, p;
    char blk[64];
    const char *rest = NULL;
    if (MATCH2(t, "down_blocks.%d.resnets.%d.", &a, &b, p)) {
        snprintf(blk, sizeof blk, "down.%d.block.%d.", a, b);
        rest = t + p;
    } else if (MATCH2(t, "up_blocks.%d.resnets.%d.", &a, &b, p)) {
        snprintf(blk, sizeof blk, "up.%d.block.%d.", levels - 1 - a, b);
        rest = t + p;
    } else if (MATCH1(t, "mid_block.resnets.%d.", &a, p) && (a == 0 || a == 1)) {
        snprintf(blk, sizeof blk, "mid.block_%d.", a + 1);
        rest = t + p;
    }
    if (rest) {
        if (!strncmp(rest, "conv_shortcut.", 14)) {
            snprintf(out, n, VAE "%s.%snin_shortcut.%s", coder, blk, rest + 14);
            return 1;
        }
        snprintf(out, n, VAE "%s.%s%s", coder, blk, rest);
        return 1;
    }
    if (MATCH1(t, "down_blocks.%d.downsamplers.0.conv.", &a, p)) {
        snprintf(out, n, VAE "%s.down.%d.downsample.conv.%s", coder, a, t + p);
        return 1;
    }
    if (MATCH1(t, "up_blocks.%d.upsamplers.0.conv.", &a, p)) {
        snprintf(out, n, VAE "%s.up.%d.upsample.conv.%s", coder, levels - 1 - a, t + p);
        return 1;
    }
    static const struct { const char *d, *l; int lin; } att[] = {
        {"group_norm.", "norm.", 0}, {"to_q.", "q.", 1},   {"query.", "q.", 1},
        {"to_k.", "k.", 1},          {"key.", "k.", 1},    {"to_v.", "v.", 1},
        {"value.", "v.", 1},         {"to_out.0.", "proj_out.", 1}, {"proj_attn.", "proj_out.", 1},
    };
    if (!strncmp(t, "mid_block.attentions.0.", 23)) {
        const char *r = t + 23;
        for (size_t i = 0; i < sizeof att / sizeof att[0]; i++)
            if (!strncmp(r, att[i].d, strlen(att[i].d))) {
                snprintf(out, n, VAE "%s.mid.attn_1.%s%s", coder, att[i].l, r + strlen(att[i].d));
                *reshape = att[i].lin && !strcmp(r + strlen(att[i].d), "weight");
                return 1;
            }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Components
 * ---------------------------------------------------------------------- */

typedef enum { C_UNET, C_VAE, C_TEXT } comp_kind;

static cm_status add_component(wt_model *m, const char *dir, const char *sub, comp_kind kind,
                               const cJSON *cfg, const char *text_prefix, cm_error *err)
{
    char path[4096];
    cm_status st = find_weights(dir, sub, path, sizeof path, err);
    if (st) return st;
    wt_file *f = wt_file_open(path, err);
    if (!f) return err ? err->status : CM_ERR_FORMAT;
    if ((st = wt_model_attach(m, f, err))) return st;
    int lpb = wt_cfg_int(cfg, "layers_per_block", 2);
    int levels = wt_cfg_len(cfg, "block_out_channels");
    if (kind == C_UNET && (lpb < 1 || lpb > 16))
        return cm_error_set(err, CM_ERR_FORMAT, "%s/%s/config.json: layers_per_block %d out of range", dir, sub,
                            lpb);
    if (kind == C_VAE && (levels < 1 || levels > 16))
        return cm_error_set(err, CM_ERR_FORMAT, "%s/%s/config.json: block_out_channels has %d entries", dir,
                            sub, levels);
    char name[1200];
    for (int i = 0; i < wt_file_count(f); i++) {
        const char *s = wt_file_name_at(f, i);
        int ok = 0, reshape = 0;
        if (kind == C_UNET) ok = map_unet(s, lpb, cfg, name, sizeof name);
        else if (kind == C_VAE) ok = map_vae(s, levels, name, sizeof name, &reshape);
        else {
            snprintf(name, sizeof name, "%s%s", text_prefix, s);
            ok = 1;
        }
        if (!ok) snprintf(name, sizeof name, "diffusers.%s.%s", sub, s);
        cm_wview *v = wt_file_view_mut(f, i);
        if (reshape && v->ndim == 2) {
            v->ndim = 4;
            v->shape[2] = v->shape[3] = 1;
        }
        if ((st = wt_model_put(m, name, v, err))) return st;
    }
    return CM_OK;
}

static wt_family family_of(const cJSON *unet, const cJSON *te, int has_te2)
{
    if (has_te2 || !strcmp(wt_cfg_str(unet, "addition_embed_type", ""), "text_time")) return WT_FAMILY_SDXL;
    int ctx = wt_cfg_int(unet, "cross_attention_dim", 0);
    if (ctx == 768) return WT_FAMILY_SD1;
    if (ctx == 1024) return WT_FAMILY_SD2;
    const char *act = wt_cfg_str(te, "hidden_act", "");
    if (!strcmp(act, "quick_gelu")) return WT_FAMILY_SD1;
    if (!strcmp(act, "gelu")) return WT_FAMILY_SD2;
    return wt_cfg_int(unet, "use_linear_projection", 0) ? WT_FAMILY_SD2 : WT_FAMILY_SD1;
}

cm_status wt_diffusers_open(wt_model *m, const char *dir, cm_error *err)
{
    char p[4096];
    cm_status st = CM_OK;
    cJSON *root = NULL, *unet = NULL, *vae = NULL, *te = NULL, *te2 = NULL, *sched = NULL;
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    int has_index = is_file(p);
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    int has_unet = is_file(p);
    snprintf(p, sizeof p, "%s/transformer", dir);
    if (is_dir(p) && !has_unet)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: diffusers folder with a transformer/ (SD3-class) is not supported yet; use the "
                            "single-file checkpoint",
                            dir);
    if (!has_index && !has_unet)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: is a folder but not a diffusers model (no model_index.json or unet/config.json)", dir);
    if (!has_unet)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: diffusers folder without unet/config.json: no UNet found",
                            dir);
    if (!(unet = read_json(dir, "unet", "config.json", err))) goto fail;
    if (!(vae = read_json(dir, "vae", "config.json", err))) {
        cm_error_prefix(err, "%s: no VAE", dir);
        goto fail;
    }
    if (!(te = read_json(dir, "text_encoder", "config.json", err))) {
        cm_error_prefix(err, "%s: no text encoder", dir);
        goto fail;
    }
    snprintf(p, sizeof p, "%s/text_encoder_2/config.json", dir);
    if (is_file(p) && !(te2 = read_json(dir, "text_encoder_2", "config.json", err))) goto fail;
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);
    if (is_file(p) && !(sched = read_json(dir, "scheduler", "scheduler_config.json", err))) goto fail;

    wt_family fam = family_of(unet, te, te2 != NULL);
    if (fam == WT_FAMILY_SDXL && !te2) {
        cm_error_set(err, CM_ERR_FORMAT, "%s: SDXL UNet (addition_embed_type text_time) without text_encoder_2/",
                     dir);
        goto fail;
    }
    /* The UNet goes first: its file is the one the model hash covers. */
    if ((st = add_component(m, dir, "unet", C_UNET, unet, NULL, err))) goto fail;
    if ((st = add_component(m, dir, "vae", C_VAE, vae, NULL, err))) goto fail;
    if ((st = add_component(m, dir, "text_encoder", C_TEXT, te,
                            fam == WT_FAMILY_SDXL ? "conditioner.embedders.0.transformer."
                                                  : "cond_stage_model.transformer.",
                            err)))
        goto fail;
    if (te2 && (st = add_component(m, dir, "text_encoder_2", C_TEXT, te2, "conditioner.embedders.1.transformer.",
                                   err)))
        goto fail;

    root = cJSON_CreateObject();
    if (!root) {
        cm_error_set(err, CM_ERR_NOMEM, "out of memory reading %s", dir);
        goto fail;
    }
    cJSON_AddStringToObject(root, "family", wt_family_name(fam));
    if (fam == WT_FAMILY_SD2) /* diffusers SD2 text encoders already drop the last layer */
        cJSON_AddNumberToObject(root, "text_layers_used", wt_cfg_int(te, "num_hidden_layers", 1));
    cJSON_AddItemToObject(root, "unet", unet);
    cJSON_AddItemToObject(root, "vae", vae);
    cJSON_AddItemToObject(root, "text_encoder", te);
    unet = vae = te = NULL;
    if (te2) cJSON_AddItemToObject(root, "text_encoder_2", te2);
    te2 = NULL;
    if (!sched) sched = cJSON_CreateObject();
    if (sched) cJSON_AddItemToObject(root, "scheduler", sched);
    sched = NULL;
    wt_model_set_config(m, root);
    return CM_OK;
fail:
    cJSON_Delete(unet);
    cJSON_Delete(vae);
    cJSON_Delete(te);
    cJSON_Delete(te2);
    cJSON_Delete(sched);
    cJSON_Delete(root);
    if (err && err->status == CM_OK) cm_error_set(err, CM_ERR_FORMAT, "%s: cannot open diffusers folder", dir);
    return err ? err->status : (st ? st : CM_ERR_FORMAT);
}
