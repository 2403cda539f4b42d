/* tensor.c — dtypes, half-precision conversion, weight views, owned
 * float32 tensors and the thread-count setting. */
#include "common.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

size_t cm_dtype_size(cm_dtype t)
{
    static const size_t sz[CM_DTYPE_COUNT] = {4, 2, 2, 8, 4, 1};
    CM_ASSERT((int)t >= 0 && t < CM_DTYPE_COUNT);
    return sz[t];
}

const char *cm_dtype_name(cm_dtype t)
{
    static const char *nm[CM_DTYPE_COUNT] = {"F32", "F16", "BF16", "I64", "I32", "U8"};
    if ((int)t < 0 || t >= CM_DTYPE_COUNT) return "?";
    return nm[t];
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

float cm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in float32 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (man << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t cm_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
    if (ax >= 0x477ff000u) return sign | 0x7c00; /* rounds to inf */
    if (ax < 0x38800000u) {                       /* subnormal half or zero */
        float v = bits_f32(ax) * 16777216.0f;      /* scale by 2^24, round-to-even */
        return sign | (uint16_t)__builtin_nearbyintf(v);
    }
    uint32_t r = ax + 0x00000fffu + ((ax >> 13) & 1); /* round to nearest even */
    return sign | (uint16_t)((r - 0x38000000u) >> 13);
}

float cm_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t cm_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* ------------------------------------------------------------ weight views */

int64_t cm_wview_numel(const cm_wview *w)
{
    int64_t n = 1;
    for (int i = 0; i < w->ndim; i++) n *= w->shape[i];
    return n;
}

float cm_wview_get(const cm_wview *w, int64_t i)
{
    switch (w->dtype) {
    case CM_F32: { float v; memcpy(&v, (const char *)w->data + 4 * i, 4); return v; }
    case CM_F16: { uint16_t h; memcpy(&h, (const char *)w->data + 2 * i, 2); return cm_f16_to_f32(h); }
    case CM_BF16: { uint16_t h; memcpy(&h, (const char *)w->data + 2 * i, 2); return cm_bf16_to_f32(h); }
    case CM_I64: { int64_t v; memcpy(&v, (const char *)w->data + 8 * i, 8); return (float)v; }
    case CM_I32: { int32_t v; memcpy(&v, (const char *)w->data + 4 * i, 4); return (float)v; }
    case CM_U8: return (float)((const uint8_t *)w->data)[i];
    default: CM_ASSERT(0 && "bad dtype");
    }
    return 0;
}

void cm_wview_to_f32(const cm_wview *w, int64_t off, int64_t n, float *dst)
{
    switch (w->dtype) {
    case CM_F32: memcpy(dst, (const float *)w->data + off, (size_t)n * 4); return;
    case CM_F16: {
        const uint16_t *s = (const uint16_t *)w->data + off;
        for (int64_t i = 0; i < n; i++) dst[i] = cm_f16_to_f32(s[i]);
        return;
    }
    case CM_BF16: {
        const uint16_t *s = (const uint16_t *)w->data + off;
        for (int64_t i = 0; i < n; i++) dst[i] = cm_bf16_to_f32(s[i]);
        return;
    }
    default:
        for (int64_t i = 0; i < n; i++) dst[i] = cm_wview_get(w, off + i);
    }
}

cm_wview cm_wview_f32(const float *data, int ndim, const int64_t *shape)
{
    cm_wview w;
    memset(&w, 0, sizeof w);
    w.data = data;
    w.dtype = CM_F32;
    w.ndim = ndim;
    for (int i = 0; i < ndim; i++) w.shape[i] = shape[i];
    return w;
}

/* ----------------------------------------------------------------- tensors */

int64_t cm_tensor_numel(const cm_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

cm_status cm_tensor_alloc(cm_tensor *t, int ndim, const int64_t *shape, cm_error *err)
{
    memset(t, 0, sizeof *t);
    CM_ASSERT(ndim >= 0 && ndim <= CM_MAX_DIMS);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return cm_error_set(err, CM_ERR_USAGE, "tensor dim %d is negative (%lld)", i,
                                (long long)shape[i]);
        if (!cm_mul_size(n, (size_t)shape[i], &n))
            return cm_error_set(err, CM_ERR_NOMEM, "tensor shape too large");
        t->shape[i] = shape[i];
    }
    size_t bytes;
    if (!cm_mul_size(n, sizeof(float), &bytes))
        return cm_error_set(err, CM_ERR_NOMEM, "tensor shape too large");
    t->ndim = ndim;
    t->data = cm_calloc(bytes, "tensor", err);
    return t->data ? CM_OK : CM_ERR_NOMEM;
}

void cm_tensor_release(cm_tensor *t)
{
    if (!t) return;
    cm_free(t->data);
    memset(t, 0, sizeof *t);
}

/* ----------------------------------------------------------------- threads */

static int g_threads = 0;

void cm_threads_set(int n)
{
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
#else
    n = 1;
#endif
    g_threads = n;
}

int cm_threads_get(void)
{
#ifdef _OPENMP
    return g_threads > 0 ? g_threads : omp_get_max_threads();
#else
    return 1;
#endif
}
