/* vae.h — autoencoders: the KL VAE of SD1/SD2/SDXL (encoder and decoder,
 * tiled for large images) and tiny autoencoders (TAESD-style).
 *
 * Latents and images cross this interface as float32 NCHW. Images are in
 * [-1, 1] (the VAE's own range); latents are unscaled (the caller divides
 * diffusion latents by the scaling factor before decoding).
 */
#ifndef STIPPLE_VAE_H
#define STIPPLE_VAE_H

#include "common.h"
#include "weights.h"

typedef struct vae_model vae_model;

vae_model *vae_create(const wt_model *m, cm_error *err);
void vae_free(vae_model *v);
int vae_latent_channels(const vae_model *v);
float vae_scaling_factor(const vae_model *v);
float vae_shift_factor(const vae_model *v);

/* z (B, latent_channels, h, w) -> img (B, 3, 8h, 8w), unclamped. */
cm_status vae_decode(vae_model *v, const float *z, int B, int h, int w, float *img, cm_error *err);
/* img (B, 3, H, W) in [-1, 1] -> mean, logvar (B, latent_channels, H/8, W/8),
 * logvar clamped to [-30, 20]. */
cm_status vae_encode(vae_model *v, const float *img, int B, int H, int W, float *mean,
                     float *logvar, cm_error *err);

#endif
