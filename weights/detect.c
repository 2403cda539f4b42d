/* detect.c — the architecture of a real single-file checkpoint (one that
 * carries no __metadata__["stipple.config"]), told from its tensor names
 * and shapes (DESIGN.md §6), written as the config JSON in diffusers field
 * names that a stipple.config or a diffusers folder would give.
 *
 * Family, from the names (original CompVis/LDM/SGM checkpoint layout):
 *   model.diffusion_model.joint_blocks.*            sd3  (MMDiT)
 *   model.diffusion_model.label_emb.* +
 *   conditioner.embedders.1.model.*                 sdxl
 *   cond_stage_model.model.*                        sd2  (OpenCLIP-H)
 *   cond_stage_model.transformer.*                  sd1  (CLIP-L)
 * Sizes come from shapes rather than family constants wherever the
 * weights tell them (levels, channels, layers per block, transformer depth,
 * context width, text widths and depths), so small test models work too.
 *
 * What the weights cannot tell, and the choice made:
 *   - prediction type: "epsilon". SD 2.x 768-v checkpoints are
 *     v-prediction, but their weights look the same; the user says
 *     --prediction v (A1111 needs a .yaml for the same reason).
 *   - attention heads: SD1 uses 8 heads per level (diffusers'
 *     attention_head_dim 8); SD2/SDXL use head dim 64, i.e.
 *     attention_head_dim = channels / 64 per level (diffusers stores the
 *     head count there); SD3 uses as many heads as joint blocks.
 *   - text encoder heads: head dim 64 (every released CLIP); widths below
 *     64 (test models only) are taken to use head dim 16.
 *   - VAE scaling factor: 0.18215 (SD1/SD2), 0.13025 (SDXL), 1.5305 with
 *     shift 0.0609 (SD3).
 */
#include "weights_internal.h"

#include <math.h>
#include <string.h>

#define UNET "model.diffusion_model."
#define VAE "first_stage_model."

/* Size of axis `axis` of a tensor, or -1 when the tensor is absent or has
 * fewer dims. */
static int64_t dimf(const wt_model *m, int axis, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int64_t dimf(const wt_model *m, int axis, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const cm_wview *v = wt_model_get(m, name);
    if (!v || v->ndim <= axis) return -1;
    return v->shape[axis];
}

static int has(const wt_model *m, const char *name) { return wt_model_get(m, name) != NULL; }

static int has_prefix(const wt_model *m, const char *prefix)
{
    return wt_model_count_prefix(m, prefix) > 0;
}

static cJSON *int_array(const int *v, int n)
{
    return cJSON_CreateIntArray(v, n);
}

static cJSON *str_array(const char *const *v, int n)
{
    return cJSON_CreateStringArray(v, n);
}

/* ------------------------------------------------------------------------
 * Text encoders
 * ---------------------------------------------------------------------- */

static int text_heads(int64_t hidden)
{
    if (hidden >= 64 && hidden % 64 == 0) return (int)(hidden / 64);
    return hidden >= 16 ? (int)(hidden / 16) : 1;
}

static void text_common(cJSON *c, int64_t vocab, int64_t hidden, int64_t inter, int layers,
                        int64_t positions, int64_t proj, const char *act)
{
    cJSON_AddStringToObject(c, "model_type", "clip_text_model");
    cJSON_AddNumberToObject(c, "vocab_size", (double)vocab);
    cJSON_AddNumberToObject(c, "hidden_size", (double)hidden);
    cJSON_AddNumberToObject(c, "intermediate_size", (double)inter);
    cJSON_AddNumberToObject(c, "num_hidden_layers", layers);
    cJSON_AddNumberToObject(c, "num_attention_heads", text_heads(hidden));
    cJSON_AddNumberToObject(c, "max_position_embeddings", (double)positions);
    cJSON_AddNumberToObject(c, "projection_dim", (double)proj);
    cJSON_AddStringToObject(c, "hidden_act", act);
    cJSON_AddNumberToObject(c, "layer_norm_eps", 1e-5);
    cJSON_AddNumberToObject(c, "bos_token_id", 0);
    cJSON_AddNumberToObject(c, "eos_token_id", 2);
    cJSON_AddNumberToObject(c, "pad_token_id", 1);
}

/* HF-named CLIP text model under `root` (e.g. "cond_stage_model.transformer."):
 * root + "text_model.*" and optionally root + "text_projection.weight". */
static cJSON *text_hf(const wt_model *m, const char *root, cm_error *err)
{
    int64_t vocab = dimf(m, 0, "%stext_model.embeddings.token_embedding.weight", root);
    int64_t hidden = dimf(m, 1, "%stext_model.embeddings.token_embedding.weight", root);
    int64_t pos = dimf(m, 0, "%stext_model.embeddings.position_embedding.weight", root);
    int64_t inter = dimf(m, 0, "%stext_model.encoder.layers.0.mlp.fc1.weight", root);
    int layers = 0;
    while (wt_model_getf(m, "%stext_model.encoder.layers.%d.self_attn.q_proj.weight", root, layers))
        layers++;
    if (vocab <= 0 || hidden <= 0 || pos <= 0 || inter <= 0 || layers == 0) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: text encoder %stext_model.* is incomplete (token/position embedding, "
                     "encoder.layers.0.mlp.fc1 or self_attn weights missing)",
                     wt_model_path(m), root);
        return NULL;
    }
    int64_t proj = dimf(m, 0, "%stext_projection.weight", root);
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    text_common(c, vocab, hidden, inter, layers, pos, proj > 0 ? proj : hidden, "quick_gelu");
    return c;
}

/* OpenCLIP text tower under `root` (e.g. "cond_stage_model.model."). */
static cJSON *text_openclip(const wt_model *m, const char *root, cm_error *err)
{
    int64_t vocab = dimf(m, 0, "%stoken_embedding.weight", root);
    int64_t hidden = dimf(m, 1, "%stoken_embedding.weight", root);
    int64_t pos = dimf(m, 0, "%spositional_embedding", root);
    int64_t inter = dimf(m, 0, "%stransformer.resblocks.0.mlp.c_fc.weight", root);
    int layers = 0;
    while (wt_model_getf(m, "%stransformer.resblocks.%d.attn.in_proj_weight", root, layers)) layers++;
    if (vocab <= 0 || hidden <= 0 || pos <= 0 || inter <= 0 || layers == 0) {
        cm_error_set(err, CM_ERR_FORMAT,
                     "%s: text encoder %s* is incomplete (token_embedding, positional_embedding, "
                     "resblocks.0.mlp.c_fc or attn.in_proj_weight missing)",
                     wt_model_path(m), root);
        return NULL;
    }
    /* OpenCLIP stores text_projection as [width, proj] (x @ P). */
    int64_t proj = dimf(m, 1, "%stext_projection", root);
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    text_common(c, vocab, hidden, inter, layers, pos, proj > 0 ? proj : hidden, "gelu");
    return c;
}

/* ------------------------------------------------------------------------
 * UNet (LDM openaimodel layout)
 * ---------------------------------------------------------------------- */

#define MAX_LEVELS 8

static cJSON *unet_config(const wt_model *m, wt_family fam, int64_t pooled_dim, cm_error *err)
{
    const char *P = wt_model_path(m);
    int64_t c0 = dimf(m, 0, UNET "input_blocks.0.0.weight");
    int64_t in_ch = dimf(m, 1, UNET "input_blocks.0.0.weight");
    int64_t out_ch = dimf(m, 0, UNET "out.2.weight");
    int64_t tdim = dimf(m, 0, UNET "time_embed.0.weight");
    if (c0 <= 0 || in_ch <= 0 || out_ch <= 0 || tdim <= 0)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: UNet is incomplete: input_blocks.0.0, out.2 or time_embed.0 missing", P),
               NULL;

    /* Walk input_blocks: resnets (k.0.in_layers), optional transformer
     * (k.1.proj_in), downsamplers (k.0.op) that close a level. */
    int ch[MAX_LEVELS], attn[MAX_LEVELS], depth[MAX_LEVELS], nres[MAX_LEVELS];
    int L = 0, k = 1, linear = -1;
    int64_t ctx = -1;
    memset(nres, 0, sizeof nres);
    memset(attn, 0, sizeof attn);
    memset(depth, 0, sizeof depth);
    memset(ch, 0, sizeof ch);
    for (;; k++) {
        if (wt_model_getf(m, UNET "input_blocks.%d.0.op.weight", k)) {
            if (++L >= MAX_LEVELS) break;
            continue;
        }
        int64_t oc = dimf(m, 0, UNET "input_blocks.%d.0.out_layers.3.weight", k);
        if (oc <= 0) break;
        if (nres[L] == 0) ch[L] = (int)oc;
        nres[L]++;
        if (wt_model_getf(m, UNET "input_blocks.%d.1.proj_in.weight", k)) {
            attn[L] = 1;
            int d = 0;
            while (wt_model_getf(m, UNET "input_blocks.%d.1.transformer_blocks.%d.attn1.to_q.weight", k, d))
                d++;
            if (d > depth[L]) depth[L] = d;
            if (ctx < 0) ctx = dimf(m, 1, UNET "input_blocks.%d.1.transformer_blocks.0.attn2.to_k.weight", k);
            if (linear < 0) {
                const cm_wview *pi = wt_model_getf(m, UNET "input_blocks.%d.1.proj_in.weight", k);
                linear = pi->ndim == 2;
            }
        }
    }
    if (L < MAX_LEVELS && nres[L] > 0) L++; /* the break above leaves L == MAX_LEVELS */
    if (L == 0 || L >= MAX_LEVELS)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: UNet input_blocks: cannot find the levels (found %d)",
                            P, L),
               NULL;
    int lpb = nres[0];
    for (int i = 1; i < L; i++)
        if (nres[i] != lpb)
            return cm_error_set(err, CM_ERR_UNSUPPORTED,
                                "%s: UNet level %d has %d resnets, level 0 has %d: unsupported layout", P, i,
                                nres[i], lpb),
                   NULL;
    if (ctx < 0) ctx = dimf(m, 1, UNET "middle_block.1.transformer_blocks.0.attn2.to_k.weight");
    if (ctx <= 0)
        return cm_error_set(err, CM_ERR_FORMAT, "%s: UNet has no cross-attention (attn2.to_k) to tell the context width",
                            P),
               NULL;

    const char *down[MAX_LEVELS], *up[MAX_LEVELS];
    int heads[MAX_LEVELS], tl[MAX_LEVELS];
    int depth_same = 1;
    for (int i = 0; i < L; i++) {
        down[i] = attn[i] ? "CrossAttnDownBlock2D" : "DownBlock2D";
        /* Output level i (deepest first) holds lpb+1 resnets. */
        int ob = i * (lpb + 1);
        up[i] = wt_model_getf(m, UNET "output_blocks.%d.1.proj_in.weight", ob) ? "CrossAttnUpBlock2D"
                                                                               : "UpBlock2D";
        heads[i] = ch[i] >= 64 ? ch[i] / 64 : 1;
        tl[i] = depth[i] > 0 ? depth[i] : 1;
        if (tl[i] != tl[0]) depth_same = 0;
    }

    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    cJSON_AddNumberToObject(c, "in_channels", (double)in_ch);
    cJSON_AddNumberToObject(c, "out_channels", (double)out_ch);
    cJSON_AddItemToObject(c, "block_out_channels", int_array(ch, L));
    cJSON_AddNumberToObject(c, "layers_per_block", lpb);
    cJSON_AddItemToObject(c, "down_block_types", str_array(down, L));
    cJSON_AddItemToObject(c, "up_block_types", str_array(up, L));
    cJSON_AddStringToObject(c, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddNumberToObject(c, "cross_attention_dim", (double)ctx);
    if (fam == WT_FAMILY_SD1)
        cJSON_AddNumberToObject(c, "attention_head_dim", 8);
    else
        cJSON_AddItemToObject(c, "attention_head_dim", int_array(heads, L));
    if (depth_same)
        cJSON_AddNumberToObject(c, "transformer_layers_per_block", tl[0]);
    else
        cJSON_AddItemToObject(c, "transformer_layers_per_block", int_array(tl, L));
    cJSON_AddBoolToObject(c, "use_linear_projection", linear == 1);
    cJSON_AddBoolToObject(c, "upcast_attention", fam == WT_FAMILY_SD2);
    cJSON_AddStringToObject(c, "act_fn", "silu");
    cJSON_AddNumberToObject(c, "norm_num_groups", 32);
    cJSON_AddNumberToObject(c, "norm_eps", 1e-5);
    cJSON_AddBoolToObject(c, "flip_sin_to_cos", 1);
    cJSON_AddNumberToObject(c, "freq_shift", 0);
    cJSON_AddNumberToObject(c, "downsample_padding", 1);
    cJSON_AddNumberToObject(c, "mid_block_scale_factor", 1);
    if (tdim != 4 * c0) cJSON_AddNumberToObject(c, "time_embedding_dim", (double)tdim);
    cJSON_AddNumberToObject(c, "sample_size", fam == WT_FAMILY_SDXL ? 128 : 64);
    int64_t add_in = dimf(m, 1, UNET "label_emb.0.0.weight");
    if (add_in > 0) {
        cJSON_AddStringToObject(c, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(c, "projection_class_embeddings_input_dim", (double)add_in);
        /* add_embedding input = pooled text embedding + 6 sinusoidal time ids */
        if (pooled_dim > 0 && add_in > pooled_dim && (add_in - pooled_dim) % 6 == 0)
            cJSON_AddNumberToObject(c, "addition_time_embed_dim", (double)((add_in - pooled_dim) / 6));
        else {
            cJSON_Delete(c);
            return cm_error_set(err, CM_ERR_FORMAT,
                                "%s: label_emb.0.0 takes %lld inputs, not pooled width %lld + 6 time ids", P,
                                (long long)add_in, (long long)pooled_dim),
                   NULL;
        }
    }
    return c;
}

/* ------------------------------------------------------------------------
 * VAE (LDM AutoencoderKL layout)
 * ---------------------------------------------------------------------- */

static cJSON *vae_config(const wt_model *m, wt_family fam, cm_error *err)
{
    const char *P = wt_model_path(m);
    int ch[MAX_LEVELS];
    int L = 0;
    while (L < MAX_LEVELS) {
        int64_t c = dimf(m, 0, VAE "encoder.down.%d.block.0.conv2.weight", L);
        if (c <= 0) break;
        ch[L++] = (int)c;
    }
    int lpb = 0;
    while (wt_model_getf(m, VAE "encoder.down.0.block.%d.conv1.weight", lpb)) lpb++;
    int64_t latent = dimf(m, 1, VAE "decoder.conv_in.weight");
    int64_t in_ch = dimf(m, 1, VAE "encoder.conv_in.weight");
    int64_t out_ch = dimf(m, 0, VAE "decoder.conv_out.weight");
    if (L == 0 || lpb == 0 || latent <= 0 || in_ch <= 0 || out_ch <= 0)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: VAE is incomplete: encoder.down.*.block.*, encoder.conv_in, decoder.conv_in "
                            "or decoder.conv_out missing",
                            P),
               NULL;
    const char *down[MAX_LEVELS], *up[MAX_LEVELS];
    for (int i = 0; i < L; i++) {
        down[i] = "DownEncoderBlock2D";
        up[i] = "UpDecoderBlock2D";
    }
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    cJSON_AddNumberToObject(c, "in_channels", (double)in_ch);
    cJSON_AddNumberToObject(c, "out_channels", (double)out_ch);
    cJSON_AddItemToObject(c, "block_out_channels", int_array(ch, L));
    cJSON_AddItemToObject(c, "down_block_types", str_array(down, L));
    cJSON_AddItemToObject(c, "up_block_types", str_array(up, L));
    cJSON_AddNumberToObject(c, "layers_per_block", lpb);
    cJSON_AddNumberToObject(c, "latent_channels", (double)latent);
    cJSON_AddStringToObject(c, "act_fn", "silu");
    cJSON_AddNumberToObject(c, "norm_num_groups", 32);
    cJSON_AddBoolToObject(c, "mid_block_add_attention", has(m, VAE "decoder.mid.attn_1.q.weight"));
    cJSON_AddBoolToObject(c, "use_quant_conv", has(m, VAE "quant_conv.weight"));
    cJSON_AddBoolToObject(c, "use_post_quant_conv", has(m, VAE "post_quant_conv.weight"));
    cJSON_AddBoolToObject(c, "force_upcast", 1);
    if (fam == WT_FAMILY_SD3) {
        cJSON_AddNumberToObject(c, "scaling_factor", 1.5305);
        cJSON_AddNumberToObject(c, "shift_factor", 0.0609);
    } else {
        cJSON_AddNumberToObject(c, "scaling_factor", fam == WT_FAMILY_SDXL ? 0.13025 : 0.18215);
    }
    return c;
}

/* ------------------------------------------------------------------------
 * SD3 (MMDiT, original naming)
 * ---------------------------------------------------------------------- */

static cJSON *sd3_config(const wt_model *m, cm_error *err)
{
    int64_t C = dimf(m, 0, UNET "x_embedder.proj.weight");
    int64_t in_ch = dimf(m, 1, UNET "x_embedder.proj.weight");
    int64_t p = dimf(m, 2, UNET "x_embedder.proj.weight");
    int64_t fin = dimf(m, 0, UNET "final_layer.linear.weight");
    int64_t jd = dimf(m, 1, UNET "context_embedder.weight");
    int64_t pd = dimf(m, 1, UNET "y_embedder.mlp.0.weight");
    int64_t pe = dimf(m, 1, UNET "pos_embed");
    int depth = 0;
    while (wt_model_getf(m, UNET "joint_blocks.%d.x_block.attn.qkv.weight", depth)) depth++;
    if (C <= 0 || in_ch <= 0 || p <= 0 || fin <= 0 || jd <= 0 || pd <= 0 || depth == 0 || C % depth)
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: MMDiT is incomplete: x_embedder.proj, final_layer.linear, context_embedder, "
                            "y_embedder or joint_blocks missing or inconsistent",
                            wt_model_path(m)),
               NULL;
    /* A dim can be huge when another one is 0 (no bytes): bound p before p*p. */
    if (p > 64 || fin % (p * p))
        return cm_error_set(err, CM_ERR_FORMAT,
                            "%s: MMDiT x_embedder.proj patch size %lld does not fit final_layer.linear (%lld outputs)",
                            wt_model_path(m), (long long)p, (long long)fin),
               NULL;
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    cJSON_AddNumberToObject(c, "in_channels", (double)in_ch);
    cJSON_AddNumberToObject(c, "out_channels", (double)(fin / (p * p)));
    cJSON_AddNumberToObject(c, "patch_size", (double)p);
    cJSON_AddNumberToObject(c, "num_layers", depth);
    cJSON_AddNumberToObject(c, "num_attention_heads", depth);
    cJSON_AddNumberToObject(c, "attention_head_dim", (double)(C / depth));
    cJSON_AddNumberToObject(c, "caption_projection_dim", (double)C);
    cJSON_AddNumberToObject(c, "joint_attention_dim", (double)jd);
    cJSON_AddNumberToObject(c, "pooled_projection_dim", (double)pd);
    if (pe > 0) cJSON_AddNumberToObject(c, "pos_embed_max_size", floor(sqrt((double)pe) + 0.5));
    return c;
}

/* ------------------------------------------------------------------------
 * Scheduler defaults (the training schedule of each family)
 * ---------------------------------------------------------------------- */

static cJSON *scheduler_config(wt_family fam)
{
    cJSON *c = cJSON_CreateObject();
    if (!c) return NULL;
    cJSON_AddNumberToObject(c, "num_train_timesteps", 1000);
    if (fam == WT_FAMILY_SD3) {
        cJSON_AddNumberToObject(c, "shift", 3.0);
        cJSON_AddBoolToObject(c, "use_dynamic_shifting", 0);
        return c;
    }
    cJSON_AddNumberToObject(c, "beta_start", 0.00085);
    cJSON_AddNumberToObject(c, "beta_end", 0.012);
    cJSON_AddStringToObject(c, "beta_schedule", "scaled_linear");
    cJSON_AddStringToObject(c, "prediction_type", "epsilon"); /* see the file header */
    cJSON_AddNumberToObject(c, "steps_offset", 1);
    cJSON_AddBoolToObject(c, "set_alpha_to_one", 0);
    cJSON_AddBoolToObject(c, "clip_sample", 0);
    cJSON_AddStringToObject(c, "timestep_spacing", "leading");
    return c;
}

/* ------------------------------------------------------------------------
 * Entry point
 * ---------------------------------------------------------------------- */

static int add_section(cJSON *root, const char *key, cJSON *sec)
{
    if (!sec) return 0;
    cJSON_AddItemToObject(root, key, sec);
    return 1;
}

cm_status wt_detect_config(const wt_model *m, cJSON **config, cm_error *err)
{
    const char *P = wt_model_path(m);
    *config = NULL;
    int has_unet = has_prefix(m, UNET);
    int has_vae = has_prefix(m, VAE);
    int te_sd1 = has_prefix(m, "cond_stage_model.transformer.");
    int te_sd2 = has_prefix(m, "cond_stage_model.model.");
    int te_xl0 = has_prefix(m, "conditioner.embedders.0.transformer.");
    int te_xl1 = has_prefix(m, "conditioner.embedders.1.model.");
    if (!has_unet) {
        const char *what = has_vae ? "a VAE-only file" : (te_sd1 || te_sd2 || te_xl0 || te_xl1) ? "a text-encoder-only file" : "no Stable Diffusion tensors";
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: no UNet found (no model.diffusion_model.* tensors; %s) and no stipple.config", P,
                            what);
    }
    wt_family fam;
    if (has_prefix(m, UNET "joint_blocks.")) fam = WT_FAMILY_SD3;
    else if (te_xl1 || te_xl0 || has_prefix(m, UNET "label_emb.")) fam = WT_FAMILY_SDXL;
    else if (te_sd2) fam = WT_FAMILY_SD2;
    else if (te_sd1) fam = WT_FAMILY_SD1;
    else
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: no text encoder found (cond_stage_model.* or conditioner.embedders.*): "
                            "a UNet-only file cannot be used alone",
                            P);
    if (!has_vae)
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: no VAE found (first_stage_model.*): a %s UNet without its VAE cannot be used alone",
                            P, wt_family_name(fam));
    if (fam == WT_FAMILY_SDXL && !(te_xl0 && te_xl1))
        return cm_error_set(err, CM_ERR_UNSUPPORTED,
                            "%s: SDXL checkpoint without both text encoders (conditioner.embedders.0.transformer.* "
                            "and conditioner.embedders.1.model.*)",
                            P);

    cJSON *root = cJSON_CreateObject();
    if (!root) return cm_error_set(err, CM_ERR_NOMEM, "out of memory detecting %s", P);
    cJSON_AddStringToObject(root, "family", wt_family_name(fam));
    cJSON *sec = NULL;
    int64_t pooled = -1;
    switch (fam) {
    case WT_FAMILY_SD1:
        if (!add_section(root, "text_encoder", text_hf(m, "cond_stage_model.transformer.", err))) goto fail;
        break;
    case WT_FAMILY_SD2:
        if (!add_section(root, "text_encoder", text_openclip(m, "cond_stage_model.model.", err))) goto fail;
        /* SD 2.x conditions on the penultimate layer (then ln_final). */
        cJSON_AddNumberToObject(
            root, "text_layers_used",
            wt_cfg_int(cJSON_GetObjectItemCaseSensitive(root, "text_encoder"), "num_hidden_layers", 1) - 1);
        break;
    case WT_FAMILY_SDXL:
        if (!add_section(root, "text_encoder", text_hf(m, "conditioner.embedders.0.transformer.", err))) goto fail;
        sec = text_openclip(m, "conditioner.embedders.1.model.", err);
        if (!add_section(root, "text_encoder_2", sec)) goto fail;
        pooled = wt_cfg_int(sec, "projection_dim", -1);
        break;
    case WT_FAMILY_SD3:
        if (has_prefix(m, "text_encoders.clip_l.transformer.") &&
            !add_section(root, "text_encoder", text_hf(m, "text_encoders.clip_l.transformer.", err)))
            goto fail;
        if (has_prefix(m, "text_encoders.clip_g.transformer.")) {
            sec = text_hf(m, "text_encoders.clip_g.transformer.", err);
            if (!add_section(root, "text_encoder_2", sec)) goto fail;
            /* OpenCLIP bigG in HF naming: gelu, unlike CLIP-L */
            cJSON_ReplaceItemInObjectCaseSensitive(sec, "hidden_act", cJSON_CreateString("gelu"));
        }
        if (!add_section(root, "transformer", sd3_config(m, err))) goto fail;
        break;
    default: break;
    }
    if (fam != WT_FAMILY_SD3 && !add_section(root, "unet", unet_config(m, fam, pooled, err))) goto fail;
    if (!add_section(root, "vae", vae_config(m, fam, err))) goto fail;
    if (!add_section(root, "scheduler", scheduler_config(fam))) goto fail;
    *config = root;
    return CM_OK;
fail:
    cJSON_Delete(root);
    if (err && err->status == CM_OK) cm_error_set(err, CM_ERR_NOMEM, "out of memory detecting %s", P);
    return err ? err->status : CM_ERR_FORMAT;
}
