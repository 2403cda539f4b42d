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

df_unet *df_unet_create(const wt_model *m, cm_error *err);
void df_unet_free(df_unet *u);
int df_unet_in_channels(const df_unet *u);
int df_unet_out_channels(const df_unet *u);
int df_unet_context_dim(const df_unet *u);

typedef struct {
    const float *x;         /* (B, in_channels, h, w) NCHW */
    int B, h, w;
    const float *timesteps; /* (B), may be fractional */
    const float *context;   /* (B, T, context_dim) */
    int T;
    const float *text_embeds; /* SDXL: (B, pooled) */
    const float *time_ids;    /* SDXL: (B, 6) */
} df_unet_input;

/* out: (B, out_channels, h, w) NCHW. */
cm_status df_unet_forward(df_unet *u, const df_unet_input *in, float *out, cm_error *err);

#endif
