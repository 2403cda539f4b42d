/* diffusion.h — the denoisers (UNet for SD1/SD2/SDXL, 4 and 9 channels;
 * MMDiT later), noise schedules and samplers.
 *
 * Latents cross this interface as float32 NCHW (B, C, h, w), the layout
 * torch.randn fills, so seeded noise and .npy files line up with the
 * reference. The UNet works NHWC inside.
 */
#ifndef STIPPLE_DIFFUSION_H
#define STIPPLE_DIFFUSION_H

#include "common.h"
#include "weights.h"

/* ------------------------------------------------------------------------
 * UNet
 * ---------------------------------------------------------------------- */

typedef struct df_unet df_unet;

/* Builds the UNet of m from its config section "unet" (diffusers
 * UNet2DConditionModel field names) over the tensors
 * model.diffusion_model.*; every tensor's presence and shape is checked
 * here, so a bad file fails at create time naming the tensor. The model
 * must outlive the UNet (weights stay in its memory map). */
df_unet *df_unet_create(const wt_model *m, cm_error *err);
void df_unet_free(df_unet *u);
int df_unet_in_channels(const df_unet *u);
int df_unet_out_channels(const df_unet *u);
int df_unet_context_dim(const df_unet *u);
/* SDXL ("text_time" additional embedding): width of text_embeds (pooled
 * text embedding) and number of time_ids per row; 0 for SD1/SD2. */
int df_unet_pooled_dim(const df_unet *u);
int df_unet_n_time_ids(const df_unet *u);
/* h and w of the latent must be multiples of this (2^(levels-1)). */
int df_unet_size_multiple(const df_unet *u);

/* Debug hook: called during df_unet_forward with block-level
 * intermediates named as the reference's modules (golden README §4):
 * "time_proj", "time_embedding", "add_time_proj", "add_embedding",
 * "conv_in", "down_blocks.i", "mid_block", "up_blocks.i",
 * "conv_norm_out" (GroupNorm output before SiLU). data is NHWC
 * (B, h, w, C) float32, valid only during the call; embeddings come as
 * h = w = 1 (add_time_proj has B*n_time_ids rows). */
typedef void (*df_unet_debug_fn)(void *user, const char *name, const float *data, int B, int h,
                                 int w, int C);

typedef struct {
    const float *x;         /* (B, in_channels, h, w) NCHW */
    int B, h, w;
    const float *timesteps; /* (B), may be fractional */
    const float *context;   /* (B, T, context_dim) */
    int T;
    const float *text_embeds; /* SDXL: (B, pooled) */
    const float *time_ids;    /* SDXL: (B, 6) */
    df_unet_debug_fn debug;   /* optional */
    void *debug_user;
} df_unet_input;

/* out: (B, out_channels, h, w) NCHW; must not overlap x.
 * Activation buffers are kept in the UNet and grown only when a call needs
 * more (B, h, w) than any call before: the steady state allocates nothing.
 * The cross-attention keys/values of the context are cached: a call whose
 * context has the same (B, T) and the same bytes as the previous call's
 * reuses them (the context is constant over a generation), so a caller
 * may pass the same or a fresh buffer without any extra call. Not
 * thread-safe: one forward at a time per df_unet. */
cm_status df_unet_forward(df_unet *u, const df_unet_input *in, float *out, cm_error *err);

#endif
