/* vae.h — autoencoders: the KL VAE of SD1/SD2/SDXL/SD3 (encoder and
 * decoder, tiled decoding for large images) and tiny autoencoders
 * (TAESD-style).
 *
 * Latents and images cross this interface as float32 NCHW. Images are in
 * [-1, 1] (the VAE's own range); latents are unscaled (the caller maps
 * diffusion latents with vae_unscale_latent before decoding, and encoder
 * moments with vae_latent_from_moments after encoding).
 */
#ifndef STIPPLE_VAE_H
#define STIPPLE_VAE_H

#include "common.h"
#include "weights.h"

typedef struct vae_model vae_model;

/* Reads the "vae" config section and checks every first_stage_model.*
 * tensor (names and shapes) up front. The weight model must outlive v.
 * "_class_name": "AutoencoderTiny" selects the TAESD-family tiny
 * autoencoder (vae/taesd.c, first_stage_model.{decoder,encoder}.N.*):
 * same interface and image range; its encoder is deterministic (logvar
 * -30) and vae_decode_tiled decodes it in one piece. */
vae_model *vae_create(const wt_model *m, cm_error *err);
void vae_free(vae_model *v);
int vae_latent_channels(const vae_model *v);
float vae_scaling_factor(const vae_model *v);
float vae_shift_factor(const vae_model *v);
/* Spatial factor between image and latent (8 for every SD VAE). */
int vae_downscale(const vae_model *v);

/* z (B, latent_channels, h, w) -> img (B, 3, 8h, 8w), unclamped.
 * Working memory is allocated per call and freed before return. */
cm_status vae_decode(vae_model *v, const float *z, int B, int h, int w, float *img, cm_error *err);
/* img (B, 3, H, W) in [-1, 1] -> mean, logvar (B, latent_channels, H/8, W/8),
 * logvar clamped to [-30, 20]. H and W must be multiples of vae_downscale. */
cm_status vae_encode(vae_model *v, const float *img, int B, int H, int W, float *mean,
                     float *logvar, cm_error *err);

/* Bytes of working memory vae_decode / vae_encode allocate for one call on
 * a latent of h x w (resp. an image of H x W), for the memory pre-flight.
 * 0 when the size overflows. */
size_t vae_decode_bytes(const vae_model *v, int h, int w);
size_t vae_encode_bytes(const vae_model *v, int H, int W);

/* Tiled decoding for large latents: tiles of tile x tile latent pixels that
 * overlap by `overlap` (0 <= overlap < tile, tile >= 1), each decoded on its
 * own and blended linearly across the overlap, so memory follows the tile
 * size, not the image size. Not bit-identical to vae_decode (GroupNorm
 * statistics are per tile); equal to it when one tile covers the latent. */
cm_status vae_decode_tiled(vae_model *v, const float *z, int B, int h, int w, int tile,
                           int overlap, float *img, cm_error *err);

/* Diffusion latent -> decoder input: z = x / scaling_factor + shift_factor
 * (a division, exactly as diffusers does it). n floats; out may alias x. */
void vae_unscale_latent(const vae_model *v, const float *x, int64_t n, float *out);
/* Encoder moments -> diffusion latent, n floats:
 *   out = (mean + exp(0.5 * logvar) * eps - shift) * scaling
 * (eps NULL: mean mode; shift 0 is skipped). out may alias mean. */
void vae_latent_from_moments(const float *mean, const float *logvar, const float *eps, int64_t n,
                             float scaling, float shift, float *out);
/* The reference postprocess: img (B, 3, H, W) -> out (B, H, W, 3) RGB8 with
 * out = round_half_even(clamp(img / 2 + 0.5, 0, 1) * 255). */
void vae_to_u8(const float *img, int B, int H, int W, uint8_t *out);
/* The reference preprocess: RGB8 (B, H, W, 3) -> img (B, 3, H, W) with
 * img = u8 / 255 * 2 - 1. */
void vae_from_u8(const uint8_t *rgb, int B, int H, int W, float *img);

/* Debug hook for tests: called with each block's output (diffusers module
 * names: "post_quant_conv", "decoder.conv_in", "decoder.mid_block",
 * "decoder.up_blocks.i", "encoder.down_blocks.i", "encoder.mid_block",
 * "encoder.conv_out", "quant_conv"), NHWC (H, W, C) of batch row b. */
typedef void (*vae_trace_fn)(void *ctx, const char *name, int b, const float *x, int C, int H,
                             int W);
void vae_set_trace(vae_model *v, vae_trace_fn fn, void *ctx);

#endif
