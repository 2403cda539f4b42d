/* vae_internal.h — what the files of vae/ share: the tiny autoencoder
 * (taesd.c) behind the vae_model interface of kl.c, which dispatches to it
 * when the "vae" config says "_class_name": "AutoencoderTiny".
 */
#ifndef STIPPLE_VAE_INTERNAL_H
#define STIPPLE_VAE_INTERNAL_H

#include "vae.h"

typedef struct vae_taesd vae_taesd;

/* Checks every first_stage_model.{decoder,encoder}.N.* tensor up front
 * (the encoder only when present). */
vae_taesd *vae_taesd_create(const wt_model *m, const cJSON *cfg, cm_error *err);
void vae_taesd_free(vae_taesd *t);
int vae_taesd_latent_channels(const vae_taesd *t);
float vae_taesd_scaling_factor(const vae_taesd *t);
float vae_taesd_shift_factor(const vae_taesd *t);
/* Same contracts as vae_decode / vae_encode (images in [-1, 1]). */
cm_status vae_taesd_decode(vae_taesd *t, const float *z, int B, int h, int w, float *img,
                           cm_error *err);
cm_status vae_taesd_encode(vae_taesd *t, const float *img, int B, int H, int W, float *mean,
                           float *logvar, cm_error *err);
size_t vae_taesd_decode_bytes(const vae_taesd *t, int h, int w);
size_t vae_taesd_encode_bytes(const vae_taesd *t, int H, int W);

#endif
