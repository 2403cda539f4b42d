/* rng.c — the two noise generators people's seeds refer to.
 *
 * 1. torch's CPU generator (PyTorch 1.13: MT19937RNGEngine.h, CPUGeneratorImpl,
 *    native/cpu/DistributionTemplates.h) and torch.randn on it, float32:
 *    - MT19937 seeded with the LOW 32 bits of the 64-bit seed;
 *    - numel >= 16: one 24-bit uniform per element, then Box-Muller on
 *      blocks of 16 (u1 = 1 - d[j], u2 = d[j+8]) in float32, exactly as the
 *      AVX2 kernel computes it: the Cephes polynomials of avx_mathfun.h
 *      (log256_ps, sincos256_ps) with the multiply-adds that the compiled
 *      kernel fuses (see shared/golden/rng/torch_rng_ref.py, pattern
 *      "build113"); a ragged tail redraws 16 fresh uniforms for the last 16
 *      elements;
 *    - numel < 16: the serial double path, one normal per element, with
 *      the second Box-Muller value cached in the generator across calls.
 * 2. AUTOMATIC1111's "NV" Philox generator (modules/rng_philox.py), which
 *    imitates torch.randn on a CUDA device: Philox4x32-10 with counter
 *    (call, 0, element, 0) and key (seed lo, seed hi), Box-Muller in double.
 *
 * Every float operation below is written out one rounding at a time: the
 * file must not be compiled with floating-point contraction (gcc: ISO C
 * mode implies -ffp-contract=off; clang: the pragma below) and the fused
 * steps use fmaf, which is correctly rounded with or without hardware FMA.
 */
#include "common.h"

#include <math.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------- MT19937 */

enum { MT_N = 624, MT_M = 397 };

void cm_torch_rng_seed(cm_torch_rng *r, uint64_t seed)
{
    r->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < MT_N; j++)
        r->mt[j] = 1812433253u * (r->mt[j - 1] ^ (r->mt[j - 1] >> 30)) + (uint32_t)j;
    r->mti = MT_N; /* the first draw twists */
    r->has_cached = 0;
    r->cached = 0.0;
}

static void mt_twist(cm_torch_rng *r)
{
    uint32_t *s = r->mt;
    for (int j = 0; j < MT_N; j++) {
        uint32_t y = (s[j] & 0x80000000u) | (s[(j + 1) % MT_N] & 0x7fffffffu);
        s[j] = s[(j + MT_M) % MT_N] ^ (y >> 1) ^ ((s[(j + 1) % MT_N] & 1u) ? 0x9908b0dfu : 0u);
    }
    r->mti = 0;
}

uint32_t cm_torch_rng_u32(cm_torch_rng *r)
{
    if (r->mti >= MT_N) mt_twist(r);
    uint32_t y = r->mt[r->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static uint64_t mt_random64(cm_torch_rng *r)
{
    uint64_t hi = cm_torch_rng_u32(r);
    uint64_t lo = cm_torch_rng_u32(r);
    return (hi << 32) | lo;
}

/* ------------------------------------ avx_mathfun.h, one lane at a time */

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* log256_ps for x > 0 (Cephes logf: range reduction to [sqrt(1/2), sqrt(2)),
 * degree-8 polynomial). Constants go through double first, as the C
 * header's float arrays initialised from double literals do. */
static float avx_logf(float x)
{
    static const float P[9] = {
        (float)7.0376836292E-2,  (float)-1.1514610310E-1, (float)1.1676998740E-1,
        (float)-1.2420140846E-1, (float)1.4249322787E-1,  (float)-1.6668057665E-1,
        (float)2.0000714765E-1,  (float)-2.4999993993E-1, (float)3.3333331174E-1,
    };
    const float min_norm = u2f(0x00800000u);
    if (!(x >= min_norm)) x = min_norm; /* _mm256_max_ps(x, min_norm) */
    uint32_t bits = f2u(x);
    int32_t imm0 = (int32_t)(bits >> 23) - 0x7f;
    x = u2f((bits & ~0x7f800000u) | f2u(0.5f));
    float e = (float)imm0;
    e = e + 1.0f;
    int mask = x < (float)0.707106781186547524;
    float tmp = mask ? x : 0.0f;
    x = x - 1.0f;
    e = e - (mask ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = P[0];
    for (int k = 1; k < 9; k++) y = fmaf(y, x, P[k]); /* all Horner steps fused */
    y = y * x;
    float eq1 = e * (float)-2.12194440e-4;
    y = fmaf(y, z, eq1);
    float hz = z * 0.5f;
    y = y - hz;
    x = x + y;
    float eq2 = e * 0.693359375f;
    x = x + eq2;
    return x;
}

/* sincos256_ps: Cephes sinf/cosf, range reduction by pi/4 in three parts. */
static void avx_sincosf(float x, float *s_out, float *c_out)
{
    uint32_t sign_sin = f2u(x) & 0x80000000u;
    x = u2f(f2u(x) & 0x7fffffffu);
    float y = x * (float)1.27323954473516;
    int32_t imm2 = (int32_t)y; /* cvttps: truncation */
    imm2 = (imm2 + 1) & ~1;
    y = (float)imm2;
    uint32_t imm0 = (uint32_t)(imm2 & 4) << 29;
    int poly_mask = (imm2 & 2) == 0;
    float t;
    t = y * (float)-0.78515625;
    x = x + t;
    t = y * (float)-2.4187564849853515625e-4;
    x = x + t;
    t = y * (float)-3.77489497744594108e-8;
    x = x + t;
    int32_t imm4 = imm2 - 2;
    imm4 = ~imm4 & 4;
    uint32_t sign_cos = (uint32_t)imm4 << 29;
    sign_sin ^= imm0;
    float z = x * x;

    /* cos polynomial: only the second Horner step and "y*z*z - z/2" fused */
    float yc = (float)2.443315711809948E-005;
    yc = yc * z;
    yc = yc + (float)-1.388731625493765E-003;
    yc = fmaf(yc, z, (float)4.166664568298827E-002);
    yc = yc * z;
    float hz = z * 0.5f;
    yc = fmaf(yc, z, -hz);
    yc = yc + 1.0f;

    /* sin polynomial: second Horner step and "y2*x + x" fused */
    float ys = (float)-1.9515295891E-4;
    ys = ys * z;
    ys = ys + (float)8.3321608736E-3;
    ys = fmaf(ys, z, (float)-1.6666654611E-1);
    ys = ys * z;
    ys = fmaf(ys, x, x);

    float ysin2 = poly_mask ? ys : 0.0f;
    float ysin1 = poly_mask ? 0.0f : yc;
    ys = ys - ysin2;
    yc = yc - ysin1;
    float s = ysin1 + ysin2;
    float c = yc + ys;
    *s_out = u2f(f2u(s) ^ sign_sin);
    *c_out = u2f(f2u(c) ^ sign_cos);
}

/* Box-Muller on one block of 16 uniforms, in place (torch normal_fill_16). */
static void normal_fill_16(float *d)
{
    const float two_pi = (float)(2.0 * 3.14159265358979323846);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float lg = avx_logf(u1);
        float radius = sqrtf(-2.0f * lg);
        float theta = two_pi * u2;
        float s, c;
        avx_sincosf(theta, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

static void fill_uniform24(cm_torch_rng *r, float *d, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        d[i] = (float)(cm_torch_rng_u32(r) & 0xffffffu) * 5.9604644775390625e-8f; /* 2^-24 */
}

/* One standard normal from the serial double path (uses / fills the cache). */
static double serial_normal(cm_torch_rng *r)
{
    if (r->has_cached) {
        r->has_cached = 0;
        return r->cached;
    }
    const uint64_t m53 = (UINT64_C(1) << 53) - 1;
    double u1 = (double)(mt_random64(r) & m53) * 0x1p-53;
    double u2 = (double)(mt_random64(r) & m53) * 0x1p-53;
    double radius = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * 3.14159265358979323846 * u1;
    r->cached = radius * sin(theta);
    r->has_cached = 1;
    return radius * cos(theta);
}

void cm_torch_randn(cm_torch_rng *r, float *out, int64_t n)
{
    if (n <= 0) return;
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) {
            double v = serial_normal(r);
            out[i] = (float)(v * 1.0 + 0.0); /* normal * std + mean */
        }
        return;
    }
    fill_uniform24(r, out, n);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        fill_uniform24(r, tail, 16);
        normal_fill_16(tail);
    }
}

/* ------------------------------------------------- A1111 "NV" Philox */

void cm_philox_seed(cm_philox_rng *r, uint64_t seed)
{
    r->seed = seed;
    r->offset = 0;
}

static void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)c[0] * 0xD2511F53u;
        uint64_t p1 = (uint64_t)c[2] * 0xCD9E8D57u;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = lo1;
        c[2] = n2;
        c[3] = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

void cm_philox_randn(cm_philox_rng *r, float *out, int64_t n)
{
    /* float32 constants of rng_philox.py, used in double arithmetic */
    const double A = (double)(float)2.3283064e-10;
    const double B = (double)(float)(2.3283064e-10 * 6.2831855);
    const uint32_t k0 = (uint32_t)r->seed, k1 = (uint32_t)(r->seed >> 32);
    for (int64_t i = 0; i < n; i++) {
        uint32_t c[4] = {(uint32_t)r->offset, 0, (uint32_t)i, 0};
        philox4x32_10(c, k0, k1);
        double u = (double)c[0] * A;
        u = u + A / 2;
        double v = (double)c[1] * B;
        v = v + B / 2;
        double radius = sqrt(-2.0 * log(u));
        out[i] = (float)(radius * sin(v));
    }
    r->offset++;
}
