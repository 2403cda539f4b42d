/* image_ops.c — the pixel work of img2img and inpaint around the model:
 * resizing (Lanczos-3, as PIL's Image.resize(LANCZOS) that diffusers'
 * VaeImageProcessor uses), the mask's grey conversion (PIL's "L"), its
 * Gaussian blur (A1111's cv2.GaussianBlur recipe) and the final composite
 * of the generated image onto the input.
 *
 * Images here are float HWC with c channels (RGB 3, masks 1), row-major.
 */
#include "pipeline.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------ resizing */

static double sinc(double x)
{
    if (x == 0.0) return 1.0;
    x *= 3.14159265358979323846;
    return sin(x) / x;
}

static double lanczos3(double x) { return (x > -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

/* One axis of PIL's separable resampler (Resample.c precompute_coeffs):
 * output i covers input centre (i + 0.5) * in/out; when shrinking the
 * kernel is stretched by in/out so it also low-passes (antialiasing).
 * Weights of output i: w[i*kmax + k] for input bounds[2i] + k, k <
 * bounds[2i+1]. */
typedef struct {
    int kmax;
    int *bounds;
    double *w;
} resample_axis;

static cm_status axis_init(resample_axis *a, int in, int out, cm_error *err)
{
    double scale = (double)in / out, fs = scale > 1.0 ? scale : 1.0, support = 3.0 * fs;
    a->kmax = (int)ceil(support) * 2 + 1;
    a->bounds = cm_alloc(sizeof(int) * 2 * (size_t)out, "resize bounds", err);
    a->w = cm_alloc(sizeof(double) * (size_t)a->kmax * out, "resize weights", err);
    if (!a->bounds || !a->w) return CM_ERR_NOMEM;
    for (int i = 0; i < out; i++) {
        double center = (i + 0.5) * scale, total = 0.0;
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in) hi = in;
        int cnt = hi - lo;
        if (cnt > a->kmax) cnt = a->kmax;
        double *w = a->w + (size_t)i * a->kmax;
        for (int k = 0; k < cnt; k++) {
            w[k] = lanczos3((k + lo - center + 0.5) / fs);
            total += w[k];
        }
        for (int k = 0; k < cnt; k++) w[k] = total != 0.0 ? w[k] / total : 0.0;
        a->bounds[2 * i] = lo;
        a->bounds[2 * i + 1] = cnt;
    }
    return CM_OK;
}

static void axis_release(resample_axis *a)
{
    cm_free(a->bounds);
    cm_free(a->w);
}

cm_status cmd_resize(const float *src, int sw, int sh, int c, float *dst, int dw, int dh, cm_error *err)
{
    if (sw == dw && sh == dh) {
        memcpy(dst, src, sizeof(float) * (size_t)sw * sh * c);
        return CM_OK;
    }
    resample_axis ax = {0}, ay = {0};
    float *tmp = NULL;
    cm_status st;
    if ((st = axis_init(&ax, sw, dw, err)) || (st = axis_init(&ay, sh, dh, err))) goto done;
    tmp = cm_alloc(sizeof(float) * (size_t)dw * sh * c, "resize buffer", err);
    if (!tmp) {
        st = CM_ERR_NOMEM;
        goto done;
    }
    /* horizontal pass: (sh, sw) -> (sh, dw), then vertical: -> (dh, dw) */
    for (int y = 0; y < sh; y++)
        for (int x = 0; x < dw; x++) {
            const double *w = ax.w + (size_t)x * ax.kmax;
            int lo = ax.bounds[2 * x], cnt = ax.bounds[2 * x + 1];
            for (int ch = 0; ch < c; ch++) {
                double acc = 0.0;
                for (int k = 0; k < cnt; k++) acc += w[k] * src[((size_t)y * sw + lo + k) * c + ch];
                tmp[((size_t)y * dw + x) * c + ch] = (float)acc;
            }
        }
    for (int y = 0; y < dh; y++) {
        const double *w = ay.w + (size_t)y * ay.kmax;
        int lo = ay.bounds[2 * y], cnt = ay.bounds[2 * y + 1];
        for (int x = 0; x < dw; x++)
            for (int ch = 0; ch < c; ch++) {
                double acc = 0.0;
                for (int k = 0; k < cnt; k++) acc += w[k] * tmp[((size_t)(lo + k) * dw + x) * c + ch];
                dst[((size_t)y * dw + x) * c + ch] = (float)acc;
            }
    }
    st = CM_OK;
done:
    cm_free(tmp);
    axis_release(&ax);
    axis_release(&ay);
    return st;
}

/* ---------------------------------------------------------------- masks */

void cmd_mask_gray(const float *rgb, int64_t npix, float *gray)
{
    /* PIL convert("L") on the 8-bit values: L = (R*299 + G*587 + B*114) / 1000
     * in 16-bit fixed point, rounded. */
    for (int64_t i = 0; i < npix; i++) {
        long r = lrintf(rgb[3 * i] * 255.0f), g = lrintf(rgb[3 * i + 1] * 255.0f),
             b = lrintf(rgb[3 * i + 2] * 255.0f);
        long l = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
        gray[i] = (float)l / 255.0f;
    }
}

/* cv2's BORDER_REFLECT_101: ... 2 1 | 0 1 2 ... n-1 | n-2 ... */
static int reflect101(int j, int n)
{
    if (n == 1) return 0;
    while (j < 0 || j >= n) {
        if (j < 0) j = -j;
        if (j >= n) j = 2 * (n - 1) - j;
    }
    return j;
}

cm_status cmd_mask_blur(float *m, int w, int h, int sigma, cm_error *err)
{
    if (sigma <= 0) return CM_OK;
    /* A1111: kernel size 2 * int(2.5 * blur + 0.5) + 1, sigma = blur. */
    int r = (int)(2.5 * sigma + 0.5);
    float *k = cm_alloc(sizeof(float) * (size_t)(2 * r + 1), "blur kernel", err);
    float *tmp = cm_alloc(sizeof(float) * (size_t)w * h, "blur buffer", err);
    if (!k || !tmp) {
        cm_free(k);
        cm_free(tmp);
        return CM_ERR_NOMEM;
    }
    double total = 0.0;
    for (int i = -r; i <= r; i++) total += exp(-(double)i * i / (2.0 * sigma * sigma));
    for (int i = -r; i <= r; i++) k[i + r] = (float)(exp(-(double)i * i / (2.0 * sigma * sigma)) / total);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double acc = 0.0;
            for (int i = -r; i <= r; i++) acc += k[i + r] * m[(size_t)y * w + reflect101(x + i, w)];
            tmp[(size_t)y * w + x] = (float)acc;
        }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double acc = 0.0;
            for (int i = -r; i <= r; i++) acc += k[i + r] * tmp[(size_t)reflect101(y + i, h) * w + x];
            float v = (float)acc;
            m[(size_t)y * w + x] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        }
    cm_free(k);
    cm_free(tmp);
    return CM_OK;
}

/* ------------------------------------------------------------ composite */

void cmd_composite(const uint8_t *input, const float *weight, int64_t npix, uint8_t *rgb)
{
    for (int64_t i = 0; i < npix; i++) {
        float a = weight[i];
        if (a >= 1.0f) continue; /* generated pixel as is */
        for (int c = 0; c < 3; c++) {
            if (a <= 0.0f) {
                rgb[3 * i + c] = input[3 * i + c]; /* kept exactly */
            } else {
                float v = (float)input[3 * i + c] * (1.0f - a) + (float)rgb[3 * i + c] * a;
                long q = lrintf(v);
                rgb[3 * i + c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
            }
        }
    }
}
