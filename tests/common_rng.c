/* common_rng.c — test case common_rng: torch CPU generator and A1111
 * Philox against the reference draws in golden/rng/ (torch 1.13 and
 * AUTOMATIC1111's rng_philox.py; see shared/golden/README.md §6).
 *
 * Tolerances (README §9): MT19937 uniforms and the serial (< 16) path
 * bit-exact; the >= 16 float32 Box-Muller path <= 2 ulp, with the number
 * of values that are not bit-exact printed; Philox <= 1 ulp (libm). */
#include "testutil.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------- helpers */

static int64_t ulp_dist(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    int64_t d = (int64_t)ia - ib;
    return d < 0 ? -d : d;
}

/* Compare n values; returns the number not bit-exact, fails above max_ulp. */
static int64_t cmp_ulp(const char *what, const float *got, const float *want, int64_t n,
                       int64_t max_ulp)
{
    int64_t bad = 0, worst = 0, iworst = -1;
    for (int64_t i = 0; i < n; i++) {
        int64_t d = ulp_dist(got[i], want[i]);
        if (d) bad++;
        if (d > worst) {
            worst = d;
            iworst = i;
        }
    }
    ck_assert_msg(worst <= max_ulp, "%s: element %" PRId64 " is %.9g, want %.9g (%" PRId64 " ulp)",
                  what, iworst, iworst >= 0 ? got[iworst] : 0.f, iworst >= 0 ? want[iworst] : 0.f,
                  worst);
    return bad;
}

/* "s<seed>_..." -> seed */
static uint64_t name_seed(const char *name)
{
    ck_assert(name[0] == 's');
    return strtoull(name + 1, NULL, 10);
}

static cJSON *meta_info(cJSON *meta)
{
    cJSON *info = cJSON_GetObjectItem(meta, "info");
    if (!info) info = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "meta"), "info");
    ck_assert_msg(info != NULL, "golden meta has no info");
    return info;
}

/* ---------------------------------------------------------------- tests */

/* The MT19937 stream itself: the first 16 uniforms of randn(16) are the
 * 24-bit uniforms of 16 u32 draws; check the engine against the classic
 * reference outputs of mt19937 seeded with 5489 (C++ std::mt19937). */
START_TEST(test_mt19937_stream)
{
    cm_torch_rng r;
    cm_torch_rng_seed(&r, 5489);
    ck_assert_uint_eq(cm_torch_rng_u32(&r), 3499211612u);
    ck_assert_uint_eq(cm_torch_rng_u32(&r), 581869302u);
    ck_assert_uint_eq(cm_torch_rng_u32(&r), 3890346734u);
    for (int i = 3; i < 9999; i++) cm_torch_rng_u32(&r);
    ck_assert_uint_eq(cm_torch_rng_u32(&r), 4123659995u); /* 10000th output (C++11 spec) */
    /* seeds equal modulo 2^32 give the same stream */
    cm_torch_rng a, b;
    cm_torch_rng_seed(&a, 5);
    cm_torch_rng_seed(&b, (UINT64_C(1) << 32) + 5);
    for (int i = 0; i < 1000; i++) ck_assert_uint_eq(cm_torch_rng_u32(&a), cm_torch_rng_u32(&b));
}
END_TEST

/* Every tensor of torch_cpu.safetensors from a fresh generator. */
START_TEST(test_torch_randn_golden)
{
    const char *file = "golden/rng/torch_cpu.safetensors";
    cm_error err = {0};
    wt_file *f = wt_file_open(tu_data(file), &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    cJSON *meta = tu_golden_meta(file);
    cJSON *info = meta_info(meta);
    int64_t total = 0, inexact = 0, serial = 0;
    int nbig = 0, big_exact = 0;
    for (int t = 0; t < wt_file_count(f); t++) {
        const char *name = wt_file_name_at(f, t);
        const cm_wview *v = wt_file_view_at(f, t);
        int64_t n = cm_wview_numel(v);
        float *want = malloc((size_t)n * 4);
        cm_wview_to_f32(v, 0, n, want);
        uint64_t seed = name_seed(name);
        cm_torch_rng r;
        cm_torch_rng_seed(&r, seed);
        const char *head = strstr(name, "_head4096"), *tail = strstr(name, "_tail4096");
        if (head || tail) {
            const int64_t big = 16 * 128 * 128;
            float *all = malloc(big * 4);
            cm_torch_randn(&r, all, big);
            inexact += cmp_ulp(name, head ? all : all + big - 4096, want, 4096, 2);
            total += 4096;
            if (head) { /* whole tensor: SHA-256 / sum / sumsq */
                char key[128];
                snprintf(key, sizeof key, "%.*s", (int)(head - name), name);
                cJSON *it = cJSON_GetObjectItem(info, key);
                ck_assert_msg(it != NULL, "no info for %s", key);
                char hex[65];
                tu_sha256_hex(all, big * 4, hex); /* stored hash of the 1x16x128x128 draw */
                const char *wsha = cJSON_GetStringValue(cJSON_GetObjectItem(it, "sha256_f32le"));
                double sum = 0, sumsq = 0;
                for (int64_t i = 0; i < big; i++) {
                    sum += all[i];
                    sumsq += (double)all[i] * all[i];
                }
                double wsum = cJSON_GetObjectItem(it, "sum")->valuedouble;
                double wsq = cJSON_GetObjectItem(it, "sumsq")->valuedouble;
                ck_assert_msg(fabs(sum - wsum) < 1e-3 && fabs(sumsq - wsq) < 1e-3 * wsq * 1e-3,
                              "%s: sum %.9g sumsq %.9g, want %.9g %.9g", key, sum, sumsq, wsum, wsq);
                nbig++;
                big_exact += wsha && strcmp(hex, wsha) == 0;
            }
            free(all);
        } else {
            float *got = malloc((size_t)n * 4);
            cm_torch_randn(&r, got, n);
            if (n < 16) {
                ck_assert_int_eq(cmp_ulp(name, got, want, n, 0), 0);
                serial += n;
            } else {
                inexact += cmp_ulp(name, got, want, n, 2);
                total += n;
            }
            free(got);
        }
        free(want);
    }
    fprintf(stderr,
            "common_rng: torch randn >=16 path: %" PRId64 " of %" PRId64
            " values not bit-exact (<= 2 ulp); serial path %" PRId64
            " values exact; 1x16x128x128 SHA-256 equal for %d of %d seeds\n",
            inexact, total, serial, big_exact, nbig);
    ck_assert_int_gt(nbig, 0);
    ck_assert_msg(inexact * 10000 <= total, "too many inexact values: %" PRId64, inexact);
    cJSON_Delete(meta);
    wt_file_close(f);
}
END_TEST

/* Consecutive calls on one generator (the serial path's cache survives
 * between calls; the >= 16 path neither uses nor clears it). Names are
 * s<seed>_seq<K>.<i>_<shape>, stored in call order per (seed, K). */
static void run_sequences(const char *file, int philox)
{
    cm_error err = {0};
    wt_file *f = wt_file_open(tu_data(file), &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    cJSON *meta = tu_golden_meta(file);
    cJSON *m = cJSON_GetObjectItem(meta, "sequences") ? meta : cJSON_GetObjectItem(meta, "meta");
    cJSON *seqs = cJSON_GetObjectItem(m, "sequences"), *seeds = cJSON_GetObjectItem(m, "seeds");
    ck_assert(seqs && seeds);
    int64_t inexact = 0, total = 0, ncalls = 0;
    cJSON *sd, *sq;
    cJSON_ArrayForEach(sd, seeds)
    {
        uint64_t seed = (uint64_t)sd->valuedouble;
        cJSON_ArrayForEach(sq, seqs)
        {
            cm_torch_rng tr;
            cm_philox_rng pr;
            cm_torch_rng_seed(&tr, seed);
            cm_philox_seed(&pr, seed);
            int i = 0;
            cJSON *shape;
            cJSON_ArrayForEach(shape, sq)
            {
                char name[128];
                int k = snprintf(name, sizeof name, "s%" PRIu64 "_seq%s.%d_", seed, sq->string, i);
                int64_t n = 1;
                cJSON *d;
                cJSON_ArrayForEach(d, shape)
                {
                    k += snprintf(name + k, sizeof name - (size_t)k, "%s%d", d == shape->child ? "" : "x",
                                  d->valueint);
                    n *= d->valueint;
                }
                const cm_wview *v = wt_file_find(f, name);
                ck_assert_msg(v != NULL, "%s: no tensor %s", file, name);
                ck_assert_int_eq(cm_wview_numel(v), n);
                float *want = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
                cm_wview_to_f32(v, 0, n, want);
                if (philox)
                    cm_philox_randn(&pr, got, n);
                else
                    cm_torch_randn(&tr, got, n);
                int64_t bad = cmp_ulp(name, got, want, n, (philox || n >= 16) ? 2 : 0);
                if (philox) ck_assert_msg(bad * 1000 <= n + 999, "%s: %" PRId64 " inexact", name, bad);
                inexact += bad;
                total += n;
                ncalls++;
                free(want);
                free(got);
                i++;
            }
        }
    }
    fprintf(stderr, "common_rng: %s sequences: %" PRId64 " calls, %" PRId64 " of %" PRId64
            " values not bit-exact\n", philox ? "philox" : "torch", ncalls, inexact, total);
    ck_assert_int_eq(ncalls, wt_file_count(f));
    cJSON_Delete(meta);
    wt_file_close(f);
}

START_TEST(test_torch_sequences) { run_sequences("golden/rng/torch_cpu_sequences.safetensors", 0); }
END_TEST

START_TEST(test_philox_sequences) { run_sequences("golden/rng/philox_a1111_sequences.safetensors", 1); }
END_TEST

START_TEST(test_philox_golden)
{
    const char *file = "golden/rng/philox_a1111.safetensors";
    cm_error err = {0};
    wt_file *f = wt_file_open(tu_data(file), &err);
    ck_assert_msg(f != NULL, "%s", err.msg);
    int64_t total = 0, inexact = 0;
    for (int t = 0; t < wt_file_count(f); t++) {
        const char *name = wt_file_name_at(f, t);
        const cm_wview *v = wt_file_view_at(f, t);
        int64_t n = cm_wview_numel(v);
        float *want = malloc((size_t)n * 4);
        cm_wview_to_f32(v, 0, n, want);
        cm_philox_rng r;
        cm_philox_seed(&r, name_seed(name));
        const char *head = strstr(name, "_head4096"), *tail = strstr(name, "_tail4096");
        int64_t gen = (head || tail) ? 16 * 128 * 128 : n;
        float *got = malloc((size_t)gen * 4);
        cm_philox_randn(&r, got, gen);
        inexact += cmp_ulp(name, tail ? got + gen - n : got, want, n, 1);
        total += n;
        free(got);
        free(want);
    }
    fprintf(stderr, "common_rng: philox: %" PRId64 " of %" PRId64 " values not bit-exact (<= 1 ulp)\n",
            inexact, total);
    ck_assert(inexact * 1000 <= total);
    wt_file_close(f);
}
END_TEST

/* The cache: a small draw after manual_seed never reuses a stale value. */
START_TEST(test_torch_cache_reset)
{
    cm_torch_rng r;
    float a[3], b[3];
    cm_torch_rng_seed(&r, 42);
    cm_torch_randn(&r, a, 3); /* leaves a cached value */
    cm_torch_rng_seed(&r, 42);
    cm_torch_randn(&r, b, 3);
    ck_assert_mem_eq(a, b, sizeof a);
    cm_torch_randn(&r, a, 0); /* n = 0 draws nothing */
}
END_TEST

TCase *tc_common_rng(void)
{
    TCase *tc = tu_tcase("common_rng");
    tcase_add_test(tc, test_mt19937_stream);
    tcase_add_test(tc, test_torch_randn_golden);
    tcase_add_test(tc, test_torch_sequences);
    tcase_add_test(tc, test_philox_golden);
    tcase_add_test(tc, test_philox_sequences);
    tcase_add_test(tc, test_torch_cache_reset);
    return tc;
}
