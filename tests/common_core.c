/* common_core.c — test case common_core: half-precision conversions, the
 * error record, allocation (alignment, fault injection), arenas, tensors.
 *
 * The f16 oracle is the compiler's own _Float16 (IEEE binary16 with
 * round-to-nearest-even, libgcc's __truncsfhf2 / __extendhfsf2) where gcc
 * provides it, plus hand-checked ties. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ----------------------------------------------------------------- f16 */

START_TEST(test_f16_all_values)
{
    int nan = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = cm_f16_to_f32((uint16_t)h);
        uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
        /* value by definition: (-1)^s 2^(e-15) (1 + m/1024), subnormals 2^-14 m/1024 */
        double want = exp == 0 ? ldexp((double)man, -24) : ldexp(1024.0 + man, (int)exp - 25);
        if (h & 0x8000) want = -want;
        if (exp == 31) {
            if (man) {
                ck_assert_msg(isnan(f), "0x%04x should be NaN", h);
                ck_assert(isnan(cm_f16_to_f32(cm_f32_to_f16(f))));
                nan++;
                continue;
            }
            ck_assert(isinf(f) && (f < 0) == !!(h & 0x8000));
        } else {
            ck_assert_msg((double)f == want, "0x%04x -> %.10g, want %.10g", h, f, want);
        }
        ck_assert_msg(cm_f32_to_f16(f) == h, "0x%04x does not round-trip (got 0x%04x)", h,
                      cm_f32_to_f16(f));
#ifdef __FLT16_MAX__
        _Float16 x;
        uint16_t hh = (uint16_t)h;
        memcpy(&x, &hh, 2);
        ck_assert(fbits((float)x) == fbits(f));
#endif
    }
    ck_assert_int_eq(nan, 2 * 1023);
}
END_TEST

START_TEST(test_f16_rounding)
{
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {1.0f, 0x3c00},
        {1.0f + 0x1p-11f, 0x3c00},        /* tie -> even (down) */
        {1.0f + 3 * 0x1p-11f, 0x3c02},    /* tie -> even (up) */
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, /* just above the tie */
        {65504.0f, 0x7bff},
        {65519.0f, 0x7bff},
        {65520.0f, 0x7c00}, /* tie between max and the next power: rounds to inf */
        {1e10f, 0x7c00},
        {-1e10f, 0xfc00},
        {0x1p-24f, 0x0001},     /* smallest subnormal */
        {0x1p-25f, 0x0000},     /* tie -> 0 */
        {0x1.8p-24f, 0x0002},   /* 1.5 * 2^-24: tie -> even (2) */
        {0x1.8p-25f, 0x0001},   /* 0.75 * 2^-24 -> 1 */
        {0x1p-14f, 0x0400},     /* smallest normal */
        {0x1.ff8p-15f, 0x03ff}, /* largest subnormal, 1023 * 2^-24 */
        {0x1.ffcp-15f, 0x0400}, /* 1023.5 * 2^-24: tie -> even (1024 = smallest normal) */
        {0x1.ff4p-15f, 0x03fe}, /* 1022.5 * 2^-24: tie -> even (1022) */
        {-0.0f, 0x8000},
        {1e-30f, 0x0000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(cm_f32_to_f16(cases[i].f) == cases[i].h, "%a -> 0x%04x, want 0x%04x",
                      (double)cases[i].f, cm_f32_to_f16(cases[i].f), cases[i].h);
    ck_assert(isnan(cm_f16_to_f32(cm_f32_to_f16(NAN))));
    ck_assert(cm_f32_to_f16(INFINITY) == 0x7c00);
#ifdef __FLT16_MAX__
    /* 2^22 pseudo-random float bit patterns against the compiler's conversion */
    uint32_t s = 12345;
    for (int i = 0; i < (1 << 22); i++) {
        s = s * 1664525u + 1013904223u;
        uint32_t u = (s & 0x8fffffffu) | ((s >> 3) & 0x30000000u); /* mostly near the f16 range */
        float f = bitsf(u);
        if (isnan(f)) continue;
        _Float16 x = (_Float16)f;
        uint16_t want;
        memcpy(&want, &x, 2);
        ck_assert_msg(cm_f32_to_f16(f) == want, "%a -> 0x%04x, _Float16 0x%04x", (double)f,
                      cm_f32_to_f16(f), want);
    }
#endif
}
END_TEST

START_TEST(test_bf16)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = cm_bf16_to_f32((uint16_t)h);
        ck_assert(fbits(f) == h << 16);
        if (isnan(f))
            ck_assert(isnan(cm_bf16_to_f32(cm_f32_to_bf16(f))));
        else
            ck_assert_msg(cm_f32_to_bf16(f) == h, "bf16 0x%04x does not round-trip", h);
    }
    ck_assert_uint_eq(cm_f32_to_bf16(bitsf(0x3f808000u)), 0x3f80); /* tie -> even (down) */
    ck_assert_uint_eq(cm_f32_to_bf16(bitsf(0x3f818000u)), 0x3f82); /* tie -> even (up) */
    ck_assert_uint_eq(cm_f32_to_bf16(bitsf(0x3f808001u)), 0x3f81);
    ck_assert_uint_eq(cm_f32_to_bf16(bitsf(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    ck_assert(isnan(cm_bf16_to_f32(cm_f32_to_bf16(bitsf(0x7f800001u))))); /* NaN stays NaN */
}
END_TEST

START_TEST(test_wview)
{
    uint16_t h[3] = {0x3c00, 0xc000, 0x3800}; /* 1, -2, 0.5 */
    cm_wview w = {.data = h, .dtype = CM_F16, .ndim = 1, .shape = {3}};
    float out[3];
    cm_wview_to_f32(&w, 0, 3, out);
    ck_assert(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.5f);
    ck_assert(cm_wview_get(&w, 1) == -2.0f);
    uint16_t b[2] = {0x3f80, 0x4040}; /* 1, 3 */
    cm_wview wb = {.data = b, .dtype = CM_BF16, .ndim = 2, .shape = {1, 2}};
    ck_assert(cm_wview_get(&wb, 1) == 3.0f);
    ck_assert_int_eq(cm_wview_numel(&wb), 2);
    ck_assert_int_eq(cm_dtype_size(CM_F32), 4);
    ck_assert_int_eq(cm_dtype_size(CM_BF16), 2);
    ck_assert_int_eq(cm_dtype_size(CM_I64), 8);
    ck_assert_str_eq(cm_dtype_name(CM_F16), "F16");
    ck_assert_str_eq(cm_dtype_name((cm_dtype)99), "?");
}
END_TEST

/* --------------------------------------------------------------- errors */

START_TEST(test_error_record)
{
    cm_error err = {0};
    ck_assert(cm_error_set(&err, CM_ERR_FORMAT, "a.bin: line1\nline2\r%d", 3) == CM_ERR_FORMAT);
    ck_assert_str_eq(err.msg, "a.bin: line1 line2 3");
    ck_assert(err.status == CM_ERR_FORMAT);
    ck_assert(cm_error_prefix(&err, "loading %s", "model") == CM_ERR_FORMAT);
    ck_assert_str_eq(err.msg, "loading model: a.bin: line1 line2 3");
    ck_assert(cm_error_prefix(&err, "x\ny") == CM_ERR_FORMAT);
    ck_assert_str_eq(err.msg, "x y: loading model: a.bin: line1 line2 3");
    /* long messages are cut, stay terminated and one line */
    char big[3000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    cm_error_set(&err, CM_ERR_IO, "%s", big);
    ck_assert_uint_eq(strlen(err.msg), sizeof err.msg - 1);
    cm_error_prefix(&err, "%s", big);
    ck_assert_uint_lt(strlen(err.msg), sizeof err.msg);
    ck_assert(strchr(err.msg, '\n') == NULL);
    cm_error_clear(&err);
    ck_assert(err.status == CM_OK && err.msg[0] == 0);
    ck_assert(cm_error_set(NULL, CM_ERR_NOMEM, "x") == CM_ERR_NOMEM);
    cm_error_clear(NULL);
    for (int s = CM_OK; s <= CM_ERR_INTERRUPTED; s++) ck_assert(strlen(cm_status_str((cm_status)s)) > 0);
    ck_assert_str_eq(cm_status_str(CM_ERR_NOMEM), "out of memory");
}
END_TEST

/* --------------------------------------------------------------- memory */

START_TEST(test_alloc)
{
    cm_error err = {0};
    for (size_t n = 0; n < 300; n += 7) {
        void *p = cm_alloc(n, "x", &err);
        ck_assert(p != NULL);
        ck_assert_uint_eq((uintptr_t)p % CM_ALIGN, 0);
        cm_free(p);
    }
    unsigned char *z = cm_calloc(1000, "z", &err);
    for (int i = 0; i < 1000; i++) ck_assert(z[i] == 0);
    cm_free(z);
    cm_free(NULL);
    ck_assert(cm_alloc(SIZE_MAX - 10, "huge buffer", &err) == NULL);
    ck_assert(err.status == CM_ERR_NOMEM);
    ck_assert_msg(strstr(err.msg, "huge buffer") != NULL, "%s", err.msg);
    size_t r;
    ck_assert(cm_mul_size(SIZE_MAX / 2, 3, &r) == 0);
    ck_assert(cm_mul_size(0, SIZE_MAX, &r) == 1 && r == 0);
    ck_assert(cm_mul_size(1000, 1000, &r) == 1 && r == 1000000);

    /* fault injection: exactly the 3rd call fails, then allocation works again */
    cm_alloc_fail_at(3);
    void *a = cm_alloc(10, "a", &err), *b = cm_calloc(10, "b", &err);
    ck_assert(a && b);
    cm_error_clear(&err);
    ck_assert(cm_alloc(10, "third", &err) == NULL);
    ck_assert(err.status == CM_ERR_NOMEM);
    ck_assert_msg(strstr(err.msg, "third") && strstr(err.msg, "injected"), "%s", err.msg);
    ck_assert_int_eq(cm_alloc_count(), 3);
    void *c = cm_alloc(10, "fourth", &err);
    ck_assert(c != NULL);
    cm_free(a);
    cm_free(b);
    cm_free(c);
    cm_alloc_fail_at(0);
    for (int i = 0; i < 5; i++) {
        void *p = cm_alloc(1, "p", &err);
        ck_assert(p != NULL);
        cm_free(p);
    }
}
END_TEST

START_TEST(test_arena)
{
    cm_error err = {0};
    cm_arena *a = cm_arena_create(1000, &err);
    ck_assert(a != NULL);
    void *p = cm_arena_alloc(a, 10, "p", &err);
    void *q = cm_arena_alloc(a, 100, "q", &err);
    ck_assert(p && q);
    ck_assert_uint_eq((uintptr_t)p % CM_ALIGN, 0);
    ck_assert_uint_eq((uintptr_t)q % CM_ALIGN, 0);
    ck_assert_uint_eq(cm_arena_used(a), 64 + 128);
    ck_assert(cm_arena_alloc(a, 1000, "too big", &err) == NULL);
    ck_assert(err.status == CM_ERR_NOMEM);
    ck_assert_msg(strstr(err.msg, "too big") != NULL, "%s", err.msg);
    ck_assert(cm_arena_alloc(a, SIZE_MAX, "overflow", &err) == NULL);
    ck_assert_uint_eq(cm_arena_used(a), 192);
    memset(q, 0xab, 100);
    cm_arena_reset(a);
    ck_assert_uint_eq(cm_arena_used(a), 0);
    ck_assert(cm_arena_alloc(a, 960, "fits", &err) != NULL);
    cm_arena_free(a);
    cm_arena_free(NULL);
    /* both allocations of arena creation can fail without leaking */
    for (long k = 1; k <= 2; k++) {
        cm_alloc_fail_at(k);
        ck_assert(cm_arena_create(100, &err) == NULL);
        ck_assert(err.status == CM_ERR_NOMEM);
    }
    cm_alloc_fail_at(0);
}
END_TEST

/* Kernel scratch: blocks come from the reserved region (reused once given
 * back, in any order), zero-filled on request, 64-byte aligned; beyond
 * the region the heap serves; a failed reservation is an error record. */
START_TEST(test_scratch)
{
    cm_scratch_release();
    ck_assert_uint_eq(cm_scratch_reserved(), 0);
    /* nothing reserved: heap blocks, still usable and given back */
    char *h = cm_scratch_take(1000, 1, "t");
    ck_assert_ptr_nonnull(h);
    for (int i = 0; i < 1000; i++) ck_assert_int_eq(h[i], 0);
    cm_scratch_give(h);

    cm_error err = {0};
    ck_assert_int_eq(cm_scratch_reserve(1 << 20, &err), CM_OK);
    ck_assert_uint_ge(cm_scratch_reserved(), 1 << 20);
    char *a = cm_scratch_take(100, 0, "a"), *b = cm_scratch_take(5000, 1, "b");
    ck_assert_uint_eq((uintptr_t)a % CM_ALIGN, 0);
    ck_assert_uint_eq((uintptr_t)b % CM_ALIGN, 0);
    ck_assert(b >= a + 100);
    for (int i = 0; i < 5000; i++) ck_assert_int_eq(b[i], 0);
    memset(a, 1, 100);
    memset(b, 2, 5000);
    /* out of order: a first, then b; afterwards the region is empty again */
    cm_scratch_give(a);
    char *c = cm_scratch_take(64, 0, "c");
    ck_assert(c > b); /* a's space is not reused while b is out */
    cm_scratch_give(c);
    cm_scratch_give(b);
    char *d = cm_scratch_take(64, 0, "d");
    ck_assert_ptr_eq(d, a); /* everything given back: from the start */
    /* more than the region holds: the heap */
    char *big = cm_scratch_take((size_t)4 << 20, 1, "big");
    ck_assert(big < d || big >= d + cm_scratch_reserved());
    ck_assert_int_eq(big[((size_t)4 << 20) - 1], 0);
    cm_scratch_give(big);
    cm_scratch_give(d);
    /* a reservation that cannot be made is reported */
    cm_scratch_release();
    cm_alloc_fail_at(1);
    ck_assert_int_eq(cm_scratch_reserve(1 << 20, &err), CM_ERR_NOMEM);
    ck_assert_msg(strstr(err.msg, "kernel scratch"), "%s", err.msg);
    cm_alloc_fail_at(0);
    ck_assert_int_eq(cm_scratch_reserve(SIZE_MAX - 100, &err), CM_ERR_NOMEM);
    ck_assert_uint_eq(cm_scratch_reserved(), 0);
}
END_TEST

START_TEST(test_tensor)
{
    cm_error err = {0};
    cm_tensor t;
    int64_t s[3] = {2, 3, 4};
    ck_assert(cm_tensor_alloc(&t, 3, s, &err) == CM_OK);
    ck_assert_int_eq(cm_tensor_numel(&t), 24);
    for (int i = 0; i < 24; i++) ck_assert(t.data[i] == 0.0f);
    ck_assert_uint_eq((uintptr_t)t.data % CM_ALIGN, 0);
    cm_tensor_release(&t);
    ck_assert(t.data == NULL && t.ndim == 0);
    cm_tensor_release(NULL);
    ck_assert(cm_tensor_alloc(&t, 0, NULL, &err) == CM_OK); /* scalar */
    ck_assert_int_eq(cm_tensor_numel(&t), 1);
    cm_tensor_release(&t);
    int64_t neg[2] = {2, -1};
    ck_assert(cm_tensor_alloc(&t, 2, neg, &err) != CM_OK);
    ck_assert(t.data == NULL);
    int64_t huge[3] = {INT64_C(1) << 31, INT64_C(1) << 31, INT64_C(1) << 31};
    ck_assert(cm_tensor_alloc(&t, 3, huge, &err) == CM_ERR_NOMEM);
    ck_assert(t.data == NULL);
    cm_alloc_fail_at(1);
    ck_assert(cm_tensor_alloc(&t, 3, s, &err) == CM_ERR_NOMEM);
    cm_alloc_fail_at(0);
    ck_assert(t.data == NULL);
}
END_TEST

START_TEST(test_timer_threads)
{
    double t0 = cm_time_now(), t1 = cm_time_now();
    ck_assert(t1 >= t0 && t0 > 0);
    cm_threads_set(1);
    ck_assert_int_eq(cm_threads_get(), 1);
    cm_threads_set(0);
    ck_assert_int_ge(cm_threads_get(), 1);
    cm_progress p;
    cm_progress_begin(&p, "test", 3, 1); /* quiet: prints nothing */
    cm_progress_step(&p);
    cm_progress_end(&p);
    ck_assert_int_eq(p.done, 1);
}
END_TEST

TCase *tc_common_core(void)
{
    TCase *tc = tu_tcase("common_core");
    tcase_add_test(tc, test_f16_all_values);
    tcase_add_test(tc, test_f16_rounding);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_wview);
    tcase_add_test(tc, test_error_record);
    tcase_add_test(tc, test_alloc);
    tcase_add_test(tc, test_arena);
    tcase_add_test(tc, test_scratch);
    tcase_add_test(tc, test_tensor);
    tcase_add_test(tc, test_timer_threads);
    return tc;
}
