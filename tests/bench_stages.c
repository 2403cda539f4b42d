/* bench_stages.c — per-stage wall time of a full-size SD 1.5 generation
 * (issue 7, item 1): text encode (prompt + negative, 2 x 77 tokens), one
 * UNet evaluation at batch 2 (classifier-free guidance), VAE decode, at
 * 256x256 and 512x512, and the peak RSS of the process after each size.
 *
 * The model is the random-weight SD 1.5 checkpoint of tools/mkckpt (the
 * procedural weights of the full-size goldens, seed 15): argv[1], or
 * $STIPPLE_FULLSIZE_DIR/sd15-full.safetensors, or the build's tests
 * folder, generated there when missing. Numerics are checked by the
 * 'slow' test suite (tests/fullsize.c) on the same file; this program only
 * times.
 *
 * Output: one line per measurement, `stage size ms cpu_ms` (wall and
 * process CPU milliseconds; UNet: the first call, which sizes its buffers
 * and computes the cross-attention K/V, then the median of the
 * steady-state calls), then `peak_rss size MB`.
 * `--bf16`: --precision bf16 (CPUs with AVX512_BF16).
 * Run by `meson test --benchmark`. The machine is shared: the figures are
 * noisy.
 */
#include "common.h"
#include "diffusion.h"
#include "textenc.h"
#include "vae.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#define UNET_RUNS 2 /* steady-state UNet calls per size (after the first) */

static void die(const char *what, const cm_error *err)
{
    fprintf(stderr, "bench_stages: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* kB on Linux */
}

/* Process CPU seconds (all threads). */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    static char path[4096];
    const char *dir = getenv("STIPPLE_FULLSIZE_DIR");
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bf16")) {
            if (!cm_bf16_supported()) {
                printf("bench_stages: --bf16: this CPU has no AVX512_BF16\n");
                return 0;
            }
            cm_precision_set(CM_PREC_BF16);
            printf("# precision bf16\n");
        } else {
            model = argv[i];
        }
    }
    if (model) snprintf(path, sizeof path, "%s", model);
    else snprintf(path, sizeof path, "%s/sd15-full.safetensors", dir && *dir ? dir : STIPPLE_BUILD_DIR);
    struct stat st;
    if (stat(path, &st) != 0) {
        char cmd[8300];
        snprintf(cmd, sizeof cmd, "'%s' --family sd15 -o '%s'", STIPPLE_MKCKPT, path);
        fprintf(stderr, "bench_stages: generating %s\n", path);
        if (system(cmd) != 0) {
            fprintf(stderr, "bench_stages: mkckpt failed\n");
            return 1;
        }
    }
    cm_error err = {0};
    double t0 = cm_time_now();
    /* kernel scratch reserved up front, as the pipeline does */
    if (cm_scratch_reserve((size_t)1 << 30, &err) != CM_OK) die("scratch", &err);
    wt_model *m = wt_model_open(path, &err);
    if (!m) die("open", &err);
    te_encoder *te = te_encoder_create(m, &err);
    if (!te) die("te_encoder_create", &err);
    df_unet *u = df_unet_create(m, &err);
    if (!u) die("df_unet_create", &err);
    vae_model *v = vae_create(m, &err);
    if (!v) die("vae_create", &err);
    printf("# %s, %d threads; the machine may be shared: figures are noisy\n", path,
           cm_threads_get());
    printf("load - %.0f\n", 1e3 * (cm_time_now() - t0));

    /* Text encode: prompt + negative (the first call; te_encode_pair caches). */
    te_cond cond = {0}, uncond = {0};
    t0 = cm_time_now();
    double c0 = cpu_now();
    if (te_encode_pair(te, "a photo of a cat", "", 0, &cond, &uncond, &err)) die("encode", &err);
    printf("text_encode 2x77 %.0f %.0f\n", 1e3 * (cm_time_now() - t0), 1e3 * (cpu_now() - c0));
    fflush(stdout);
    int T = (int)cond.context.shape[1], C = (int)cond.context.shape[2];
    size_t row = (size_t)T * (size_t)C;
    float *ctx = cm_alloc(2 * row * sizeof(float), "context", &err);
    if (!ctx) die("alloc", &err);
    memcpy(ctx, uncond.context.data, row * sizeof(float));
    memcpy(ctx + row, cond.context.data, row * sizeof(float));

    static const int sizes[] = {256, 512};
    for (int si = 0; si < 2; si++) {
        int S = sizes[si], h = S / 8, w = S / 8;
        int64_t nl = (int64_t)2 * 4 * h * w;
        float *x = cm_alloc((size_t)nl * sizeof(float), "latent", &err);
        float *out = cm_alloc((size_t)nl * sizeof(float), "unet out", &err);
        float *img = cm_alloc((size_t)3 * S * S * sizeof(float), "image", &err);
        if (!x || !out || !img) die("alloc", &err);
        cm_torch_rng rng;
        cm_torch_rng_seed(&rng, 1234);
        cm_torch_randn(&rng, x, nl);
        float ts[2] = {981.0f, 981.0f};
        df_unet_input in = {.x = x, .B = 2, .h = h, .w = w, .timesteps = ts, .context = ctx, .T = T};
        double runs[UNET_RUNS], cpus[UNET_RUNS];
        for (int r = 0; r <= UNET_RUNS; r++) {
            t0 = cm_time_now();
            c0 = cpu_now();
            if (df_unet_forward(u, &in, out, &err)) die("unet", &err);
            double ms = 1e3 * (cm_time_now() - t0), cms = 1e3 * (cpu_now() - c0);
            if (r == 0) {
                printf("unet_b2_first %dx%d %.0f %.0f\n", S, S, ms, cms);
            } else {
                runs[r - 1] = ms;
                cpus[r - 1] = cms;
            }
            fflush(stdout);
        }
        qsort(runs, UNET_RUNS, sizeof runs[0], cmp_double);
        qsort(cpus, UNET_RUNS, sizeof cpus[0], cmp_double);
        printf("unet_b2 %dx%d %.0f %.0f\n", S, S, runs[(UNET_RUNS - 1) / 2], cpus[(UNET_RUNS - 1) / 2]);
        /* VAE decode of the first latent, as the pipeline does it */
        vae_unscale_latent(v, out, (int64_t)4 * h * w, x);
        t0 = cm_time_now();
        c0 = cpu_now();
        if (vae_decode(v, x, 1, h, w, img, &err)) die("vae_decode", &err);
        printf("vae_decode %dx%d %.0f %.0f\n", S, S, 1e3 * (cm_time_now() - t0),
               1e3 * (cpu_now() - c0));
        printf("peak_rss %dx%d %.0f\n", S, S, peak_rss_mb());
        fflush(stdout);
        cm_free(x);
        cm_free(out);
        cm_free(img);
    }
    cm_free(ctx);
    te_cond_release(&cond);
    te_cond_release(&uncond);
    vae_free(v);
    df_unet_free(u);
    te_encoder_free(te);
    wt_model_close(m);
    return 0;
}
