/* cmd_bad.c — hostile inputs, faults and interruptions at the command line
 * (issue 8): the real `stipple` binary on the sd1-tiny model.
 *
 * test_bad_inputs: one row per bad input. A failing row must exit 1
 *   (runtime) or 2 (usage) — never a signal — with exactly one
 *   `stipple: error:` line, the last on stderr, naming the culprit, and
 *   leave its output folder as it found it (no image, no temporary file;
 *   a file that was there is unchanged byte for byte). Some inputs are
 *   valid and must succeed (empty prompt, invalid UTF-8 with a warning,
 *   a 50,000-character prompt, 16-bit / palette / CMYK inputs, a mask of
 *   another size): those rows check a readable PNG instead.
 *   Sizes that are not multiples of 8 are REFUSED (exit 2), not rounded.
 * test_interrupt: SIGINT / SIGTERM during a --batch-count 50 run keeps
 *   every finished image (valid PNGs), leaves no temporary file and exits
 *   130 / 143 (a normal exit, not death by the signal) within the bound.
 * test_alloc_failure: STIPPLE_FAIL_ALLOC=N for N along a small txt2img
 *   (every allocation that carries an error record; kernel scratch asserts
 *   by design and is guarded by the memory pre-flight): exit 0 or 1, one
 *   error line, nothing left. STIPPLE_ALLOC_SWEEP_STEP=k samples every
 *   k-th N (default 1: all of them).
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODEL "golden/sd1-tiny/model/sd1-tiny_f16.safetensors"
#define FAST "-W 64 -H 64 --steps 1 --seed 7 --quiet --threads 1"

/* ------------------------------------------------------------ helpers */

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f, "cannot create %s", path);
    ck_assert(fwrite(data, 1, n, f) == n);
    ck_assert(fclose(f) == 0);
}

static char *read_file(const char *path, size_t *n)
{
    char *s = NULL;
    cm_error e = {0};
    ck_assert_msg(cm_file_read_all(path, &s, n, &e) == CM_OK, "%s", e.msg);
    return s;
}

/* Names in dir (one string, sorted is not needed: we compare sets of at
 * most a few entries), "." and ".." skipped. */
static int dir_list(const char *dir, char names[][256], int cap)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (n < cap) snprintf(names[n], 256, "%s", e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* A safetensors file with the tensors of src whose names start with one
 * of the prefixes, and src's __metadata__ (so the architecture is known:
 * what is missing is the component, not the config). */
static void write_subset(const char *src, const char *dst, const char *const *prefixes, int np)
{
    cm_error e = {0};
    wt_file *f = wt_file_open(src, &e);
    ck_assert_msg(f, "%s", e.msg);
    cJSON *hdr = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(hdr, "__metadata__");
    const char *keys[] = {"format", "stipple.config"};
    for (int k = 0; k < 2; k++)
        if (wt_file_metadata(f, keys[k])) cJSON_AddStringToObject(meta, keys[k], wt_file_metadata(f, keys[k]));
    size_t off = 0;
    for (int pass = 0; pass < 2; pass++) {
        FILE *out = NULL;
        if (pass == 1) {
            char *js = cJSON_PrintUnformatted(hdr);
            size_t hl = strlen(js), pad = (8 - hl % 8) % 8;
            uint64_t n = hl + pad;
            out = fopen(dst, "wb");
            ck_assert(out);
            fwrite(&n, 8, 1, out);
            fwrite(js, 1, hl, out);
            for (size_t i = 0; i < pad; i++) fputc(' ', out);
            free(js);
        }
        for (int i = 0; i < wt_file_count(f); i++) {
            const char *name = wt_file_name_at(f, i);
            int keep = 0;
            for (int p = 0; p < np; p++) keep |= !strncmp(name, prefixes[p], strlen(prefixes[p]));
            if (!keep) continue;
            const cm_wview *v = wt_file_view_at(f, i);
            size_t nb = (size_t)cm_wview_numel(v) * cm_dtype_size(v->dtype);
            if (pass == 0) {
                cJSON *t = cJSON_AddObjectToObject(hdr, name);
                cJSON_AddStringToObject(t, "dtype", cm_dtype_name(v->dtype));
                cJSON *sh = cJSON_AddArrayToObject(t, "shape");
                for (int d = 0; d < v->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)v->shape[d]));
                cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
                cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
                cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + nb)));
                off += nb;
            } else {
                fwrite(v->data, 1, nb, out);
            }
        }
        if (out) ck_assert(fclose(out) == 0);
    }
    cJSON_Delete(hdr);
    wt_file_close(f);
}

/* The hostile files, made in tu_tmpdir()/bad once per process. */
static const char *bad_dir(void)
{
    static char dir[4200];
    if (dir[0]) return dir;
    snprintf(dir, sizeof dir, "%s/bad", tu_tmpdir());
    mkdir(dir, 0755);
    char p[4400];
    size_t n;
    char *model = read_file(tu_data(MODEL), &n);
    uint64_t hl;
    memcpy(&hl, model, 8);
    /* truncated inside the header; truncated inside the data area */
    snprintf(p, sizeof p, "%s/trunc_header.safetensors", dir);
    write_file(p, model, 4096);
    snprintf(p, sizeof p, "%s/trunc_data.safetensors", dir);
    write_file(p, model, (size_t)(8 + hl + (n - 8 - hl) / 2));
    /* corrupted JSON in the header */
    snprintf(p, sizeof p, "%s/corrupt.safetensors", dir);
    memcpy(model + 20, "\xff\x00{{", 4);
    write_file(p, model, n);
    cm_free(model);
    /* a FLUX-style checkpoint: no family stipple runs */
    {
        const char js[] = "{\"double_blocks.0.img_attn.qkv.weight\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]}}";
        char buf[256] = {0};
        uint64_t L = (sizeof js - 1 + 7) / 8 * 8;
        memcpy(buf, &L, 8);
        memset(buf + 8, ' ', L);
        memcpy(buf + 8, js, sizeof js - 1);
        snprintf(p, sizeof p, "%s/flux.safetensors", dir);
        write_file(p, buf, 8 + L + 8);
    }
    /* VAE only / UNet only (+ the schedule buffers) */
    const char *vae[] = {"first_stage_model."};
    const char *unet[] = {"model.diffusion_model.", "alphas_cumprod", "betas"};
    snprintf(p, sizeof p, "%s/vae_only.safetensors", dir);
    write_subset(tu_data(MODEL), p, vae, 1);
    snprintf(p, sizeof p, "%s/unet_only.safetensors", dir);
    write_subset(tu_data(MODEL), p, unet, 3);
    /* a folder that is not a model */
    snprintf(p, sizeof p, "%s/notamodel", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/notamodel/readme.txt", dir);
    write_file(p, "hello\n", 6);
    /* a 50,000-character prompt in a file (the shell reads it) */
    snprintf(p, sizeof p, "%s/long_prompt.txt", dir);
    char *lp = malloc(50001);
    ck_assert(lp);
    for (int i = 0; i < 50000; i++) lp[i] = "a cat, "[i % 7];
    write_file(p, lp, 50000);
    free(lp);
    return dir;
}

/* ---------------------------------------------------------- the matrix */

typedef enum { SETUP_NONE = 0, SETUP_FILE, SETUP_EXISTS } row_setup;

typedef struct {
    const char *name;
    const char *args; /* %M model, %B bad-file folder, %D row folder, %I images, %N npy */
    int rc;           /* 0 success, 1 or 2 */
    const char *needle;
    row_setup setup;  /* FILE: %D/file is a regular file; EXISTS: %D/out.png exists */
    const char *prefix; /* shell text before the command (ulimit) */
} bad_row;

static const bad_row rows[] = {
    /* model files */
    {"missing model", "txt2img -p cat -m %B/nope.safetensors -o %D/out.png", 1, "nope.safetensors", 0, NULL},
    {"folder not a model", "txt2img -p cat -m %B/notamodel -o %D/out.png", 1, "notamodel", 0, NULL},
    {"truncated header", "txt2img -p cat -m %B/trunc_header.safetensors -o %D/out.png", 1, "trunc_header.safetensors", 0, NULL},
    {"truncated data", "txt2img -p cat -m %B/trunc_data.safetensors -o %D/out.png", 1, "trunc_data.safetensors", 0, NULL},
    {"corrupted header", "txt2img -p cat -m %B/corrupt.safetensors -o %D/out.png", 1, "corrupt.safetensors", 0, NULL},
    {"unsupported family", "txt2img -p cat -m %B/flux.safetensors -o %D/out.png", 1, "flux.safetensors", 0, NULL},
    {"VAE-only file", "txt2img -p cat -m %B/vae_only.safetensors -o %D/out.png", 1, "vae_only.safetensors", 0, NULL},
    {"UNet-only file", "txt2img -p cat -m %B/unet_only.safetensors -o %D/out.png", 1, "unet_only.safetensors", 0, NULL},
    /* sizes */
    {"width not a multiple of 8", "txt2img -p cat -m %M -W 100 -H 64 -o %D/out.png", 2, "multiple of 8", 0, NULL},
    {"height not a multiple of 8", "txt2img -p cat -m %M -W 64 -H 63 -o %D/out.png", 2, "multiple of 8", 0, NULL},
    {"width 0", "txt2img -p cat -m %M -W 0 -o %D/out.png", 2, "--width", 0, NULL},
    {"height negative", "txt2img -p cat -m %M -H -64 -o %D/out.png", 2, "--height", 0, NULL},
    {"width too large", "txt2img -p cat -m %M -W 65536 -o %D/out.png", 2, "--width", 0, NULL},
    {"too large for memory", "txt2img -p cat -m %M -W 16384 -H 16384 --max-memory 2G -o %D/out.png", 1, "needs about", 0, NULL},
    {"over --max-memory", "txt2img -p cat -m %M -W 1024 -H 1024 --max-memory 64M -o %D/out.png", 1, "64 MiB", 0, NULL},
    {"bad --max-memory", "txt2img -p cat -m %M --max-memory lots -o %D/out.png", 2, "--max-memory", 0, NULL},
    /* numbers */
    {"steps 0", "txt2img -p cat -m %M --steps 0 -o %D/out.png", 2, "--steps", 0, NULL},
    {"cfg nan", "txt2img -p cat -m %M --cfg nan -o %D/out.png", 2, "--cfg", 0, NULL},
    {"cfg inf", "txt2img -p cat -m %M --cfg inf -o %D/out.png", 2, "--cfg", 0, NULL},
    {"strength 1.5", "img2img -p cat -m %M -i %I/i2i_rgb.png --strength 1.5 -o %D/out.png", 2, "--strength", 0, NULL},
    {"seed 2^64", "txt2img -p cat -m %M --seed 18446744073709551616 -o %D/out.png", 2, "--seed", 0, NULL},
    {"seed -2", "txt2img -p cat -m %M --seed -2 -o %D/out.png", 2, "--seed", 0, NULL},
    {"seed text", "txt2img -p cat -m %M --seed 12abc -o %D/out.png", 2, "--seed", 0, NULL},
    /* prompts (valid: must succeed) */
    {"empty prompt", "txt2img -p '' -m %M " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    {"invalid UTF-8 prompt", "txt2img -p \"$(printf 'a \\377\\376 cat \\342\\202')\" -m %M " FAST " -o %D/out.png", 0, "invalid UTF-8", 0, NULL},
    {"50,000-character prompt", "txt2img -p \"$(cat %B/long_prompt.txt)\" -m %M " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    /* --init-noise */
    {"init-noise float64 .npy", "txt2img -p cat -m %M --init-noise %N/f64_2x3.npy " FAST " -o %D/out.png", 1, "f64_2x3.npy", 0, NULL},
    {"init-noise wrong shape", "txt2img -p cat -m %M --init-noise %N/f32_2x3.npy " FAST " -o %D/out.png", 2, "--init-noise", 0, NULL},
    {"init-noise not a .npy", "txt2img -p cat -m %M --init-noise %I/one.png " FAST " -o %D/out.png", 1, "one.png", 0, NULL},
    /* output */
    {"output folder missing", "txt2img -p cat -m %M " FAST " -o %D/missing/out.png", 1, "missing/out.png", 0, NULL},
    {"output folder not writable", "txt2img -p cat -m %M " FAST " -o %D/file/out.png", 1, "file/out.png", SETUP_FILE, NULL},
    {"output exists", "txt2img -p cat -m %M " FAST " -o %D/out.png", 1, "already exists", SETUP_EXISTS, NULL},
    {"disk full (ulimit -f)", "txt2img -p cat -m %M " FAST " -o %D/out.png", 1, "out.png", 0, "ulimit -f 1;"},
    {"batch needs a template", "txt2img -p cat -m %M --batch-count 2 -o %D/out.png", 2, "template", 0, NULL},
    /* img2img / inpaint inputs */
    {"img2img corrupt PNG", "img2img -p cat -m %M -i %I/truncated.png " FAST " -o %D/out.png", 1, "truncated.png", 0, NULL},
    {"img2img huge PNG header", "img2img -p cat -m %M -i %I/huge_dims.png " FAST " -o %D/out.png", 1, "huge_dims.png", 0, NULL},
    {"img2img zero-width PNG", "img2img -p cat -m %M -i %I/zero_width.png " FAST " -o %D/out.png", 1, "zero_width.png", 0, NULL},
    {"img2img missing image", "img2img -p cat -m %M -i %B/nope.png " FAST " -o %D/out.png", 1, "nope.png", 0, NULL},
    {"img2img 1x1 image, no size", "img2img -p cat -m %M -i %I/one.png --steps 1 --quiet -o %D/out.png", 2, "one.png", 0, NULL},
    {"img2img 1x1 image -W/-H", "img2img -p cat -m %M -i %I/one.png --strength 1 " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    {"img2img 16-bit PNG", "img2img -p cat -m %M -i %I/rgb16.png --strength 1 " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    {"img2img palette PNG", "img2img -p cat -m %M -i %I/palette.png --strength 1 " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    {"img2img CMYK JPEG", "img2img -p cat -m %M -i %I/cmyk.jpg --strength 1 " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    {"inpaint mask of another size", "inpaint -p cat -m %M -i %I/i2i_rgb.png --mask %I/i2i_mask_24x16.png --strength 1 " FAST " -o %D/out.png", 0, NULL, 0, NULL},
    {"inpaint corrupt mask", "inpaint -p cat -m %M -i %I/i2i_rgb.png --mask %I/truncated.png " FAST " -o %D/out.png", 1, "truncated.png", 0, NULL},
};

/* Expand the row's placeholders. */
static void expand(const char *tmpl, const char *dir, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = tmpl; *p && n + 1 < cap; p++) {
        const char *v = NULL;
        if (p[0] == '%' && p[1]) {
            switch (p[1]) {
            case 'M': v = tu_data(MODEL); break;
            case 'B': v = bad_dir(); break;
            case 'D': v = dir; break;
            case 'I': v = tu_data("images"); break;
            case 'N': v = tu_data("npy"); break;
            }
        }
        if (v) {
            n += (size_t)snprintf(out + n, cap - n, "'%s'", v);
            p++;
        } else {
            out[n++] = *p;
        }
    }
    out[n < cap ? n : cap - 1] = 0;
}

/* Exactly one `stipple: error:` line, the last one, naming needle. */
static void check_error_text(const char *what, const char *err, const char *needle)
{
    ck_assert_msg(err && *err, "%s: nothing on stderr", what);
    int nerr = 0;
    const char *last = err;
    for (const char *l = err; *l;) {
        const char *nl = strchr(l, '\n');
        if (!strncmp(l, "stipple: error: ", 16)) nerr++;
        last = l;
        if (!nl) break;
        l = nl + 1;
    }
    ck_assert_msg(nerr == 1, "%s: %d error lines: %s", what, nerr, err);
    ck_assert_msg(!strncmp(last, "stipple: error: ", 16), "%s: the error is not the last line: %s", what, err);
    const char *nl = strchr(last, '\n');
    ck_assert_msg(nl && nl[1] == 0, "%s: the error is not one line: %s", what, err);
    if (needle) ck_assert_msg(strstr(last, needle), "%s: error lacks \"%s\": %s", what, needle, last);
}

static const char existing_bytes[] = "not a png, and it must stay exactly like this\n";

START_TEST(test_bad_inputs)
{
    const bad_row *r = &rows[_i];
    char dir[4300], cmd[16384], args[12000];
    snprintf(dir, sizeof dir, "%s/row%02d", tu_tmpdir(), _i);
    mkdir(dir, 0755);
    char p[4400];
    if (r->setup == SETUP_FILE) {
        snprintf(p, sizeof p, "%s/file", dir);
        write_file(p, existing_bytes, sizeof existing_bytes - 1);
    } else if (r->setup == SETUP_EXISTS) {
        snprintf(p, sizeof p, "%s/out.png", dir);
        write_file(p, existing_bytes, sizeof existing_bytes - 1);
    }
    expand(r->args, dir, args, sizeof args);
    snprintf(cmd, sizeof cmd, "%s '%s' %s", r->prefix ? r->prefix : "", tu_stipple(), args);
    char *out = NULL, *err = NULL;
    int rc = tu_run(cmd, &out, &err);
    ck_assert_msg(rc == r->rc, "%s: exit %d, want %d (>= 128: a signal); stderr: %s", r->name, rc, r->rc,
                  err ? err : "");
    char names[8][256];
    int nn = dir_list(dir, names, 8);
    if (r->rc) {
        check_error_text(r->name, err, r->needle);
        /* The folder is as it was: no output, no temporary file. */
        int want = r->setup ? 1 : 0;
        ck_assert_msg(nn == want, "%s: %d files left in the output folder (first: %s)", r->name, nn,
                      nn > 0 ? names[0] : "");
        if (r->setup) {
            snprintf(p, sizeof p, "%s/%s", dir, r->setup == SETUP_FILE ? "file" : "out.png");
            size_t n;
            char *s = read_file(p, &n);
            ck_assert_msg(n == sizeof existing_bytes - 1 && !memcmp(s, existing_bytes, n),
                          "%s: the existing file changed", r->name);
            cm_free(s);
        }
    } else {
        ck_assert_msg(nn == 1 && !strcmp(names[0], "out.png"), "%s: expected only out.png, found %d files", r->name, nn);
        if (r->needle) ck_assert_msg(err && strstr(err, r->needle), "%s: no \"%s\" warning: %s", r->name, r->needle, err ? err : "");
        snprintf(p, sizeof p, "%s/out.png", dir);
        cm_image img = {0};
        cm_error e = {0};
        ck_assert_msg(cm_image_read(p, &img, &e) == CM_OK, "%s: %s", r->name, e.msg);
        ck_assert_int_eq(img.w, 64);
        ck_assert_int_eq(img.h, 64);
        cm_image_release(&img);
    }
    cm_free(out);
    cm_free(err);
}
END_TEST

/* Tiled VAE decoding switched on by the pre-flight when only it fits
 * (STIPPLE_VAE_TILE=16 makes the switch reachable at a small size). */
START_TEST(test_preflight_tiled)
{
    char dir[4300], cmd[16384], *err = NULL;
    snprintf(dir, sizeof dir, "%s/tiled", tu_tmpdir());
    mkdir(dir, 0755);
    /* Learn the two estimates, then set the limit between them. */
    snprintf(cmd, sizeof cmd,
             "STIPPLE_VAE_TILE=16 STIPPLE_MEM_DEBUG=1 '%s' txt2img -p cat -m '%s' -W 256 -H 256 --steps 1 --seed 3 --quiet --threads 1 --max-memory 1M -o '%s/a.png'",
             tu_stipple(), tu_data(MODEL), dir);
    ck_assert_int_eq(tu_run(cmd, NULL, &err), 1);
    unsigned long long total = 0, tiled = 0;
    const char *s = err ? strstr(err, "memory estimate ") : NULL;
    ck_assert_msg(s && sscanf(s, "memory estimate %llu", &total) == 1, "no estimate: %s", err ? err : "");
    s = strstr(s, "tiled ");
    ck_assert_msg(s && sscanf(s, "tiled %llu", &tiled) == 1, "no tiled estimate: %s", err);
    ck_assert_msg(tiled < total, "tiled %llu >= whole %llu", tiled, total);
    cm_free(err);
    snprintf(cmd, sizeof cmd,
             "STIPPLE_VAE_TILE=16 '%s' txt2img -p cat -m '%s' -W 256 -H 256 --steps 1 --seed 3 --quiet --threads 1 --max-memory %llu -o '%s/b.png'",
             tu_stipple(), tu_data(MODEL), (tiled + total) / 2, dir);
    ck_assert_msg(tu_run(cmd, NULL, &err) == 0, "tiled run failed: %s", err ? err : "");
    ck_assert_msg(err && strstr(err, "tiles"), "no note about tiled decoding: %s", err ? err : "");
    cm_free(err);
    char p[4400];
    snprintf(p, sizeof p, "%s/b.png", dir);
    cm_image img = {0};
    cm_error e = {0};
    ck_assert_msg(cm_image_read(p, &img, &e) == CM_OK, "%s", e.msg);
    ck_assert(img.w == 256 && img.h == 256);
    cm_image_release(&img);
}
END_TEST

/* ----------------------------------------------------------- interrupt */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

START_TEST(test_interrupt)
{
    const int sig = _i == 0 ? SIGINT : SIGTERM, want = _i == 0 ? 130 : 143;
    char dir[4300], tmpl[4400], errp[4400];
    snprintf(dir, sizeof dir, "%s/intr%d", tu_tmpdir(), _i);
    mkdir(dir, 0755);
    snprintf(tmpl, sizeof tmpl, "%s/img-{n}.png", dir);
    snprintf(errp, sizeof errp, "%s/../intr%d.err", dir, _i);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int fd = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int nul = open("/dev/null", O_RDWR);
        if (fd >= 0) dup2(fd, 2);
        if (nul >= 0) dup2(nul, 1), dup2(nul, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execl(tu_stipple(), "stipple", "txt2img", "-p", "a cat", "-m", tu_data(MODEL), "-W", "64", "-H",
              "64", "--steps", "3", "--seed", "1", "--batch-count", "50", "--threads", "1", "--quiet",
              "-o", tmpl, (char *)NULL);
        _exit(127);
    }
    /* Wait for the first image. */
    char first[4400];
    snprintf(first, sizeof first, "%s/img-0.png", dir);
    double t0 = now_s();
    int st = 0;
    while (access(first, F_OK) != 0 && now_s() - t0 < 300) {
        ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "stipple ended before its first image");
        usleep(20000);
    }
    ck_assert_msg(access(first, F_OK) == 0, "no image after 300 s");
    usleep(100000); /* into the next image */
    double ts = now_s();
    kill(pid, sig);
    while (waitpid(pid, &st, WNOHANG) == 0 && now_s() - ts < 30) usleep(5000);
    double dt = now_s() - ts;
    if (dt >= 30) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    printf("interrupt (%s): exited %.3f s after the signal\n", _i == 0 ? "SIGINT" : "SIGTERM", dt);
    ck_assert_msg(WIFEXITED(st), "stipple died of signal %d instead of exiting", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    ck_assert_int_eq(WEXITSTATUS(st), want);
    /* A second is the bound; a loaded test machine gets some slack. */
    ck_assert_msg(dt < 3.0, "took %.2f s to stop", dt);
    char names[64][256];
    int n = dir_list(dir, names, 64);
    ck_assert(n >= 1 && n < 50);
    for (int i = 0; i < n && i < 64; i++) {
        int k = -1;
        char tail[8] = "";
        ck_assert_msg(sscanf(names[i], "img-%d.%4s", &k, tail) == 2 && !strcmp(tail, "png") && k >= 0 && k < n,
                      "unexpected file %s (a temporary or partial image?)", names[i]);
        char p[8192];
        snprintf(p, sizeof p, "%s/%.255s", dir, names[i]);
        cm_image img = {0};
        cm_error e = {0};
        ck_assert_msg(cm_image_read(p, &img, &e) == CM_OK, "%s", e.msg);
        cm_image_release(&img);
    }
}
END_TEST

/* -------------------------------------------------- allocation failure */

START_TEST(test_alloc_failure)
{
    char dir[4300], cmd[16384], *err = NULL;
    snprintf(dir, sizeof dir, "%s/alloc", tu_tmpdir());
    mkdir(dir, 0755);
    const char *job = "txt2img -p 'a cat' -W 96 -H 64 --steps 2 --seed 1 --quiet --threads 1";
    snprintf(cmd, sizeof cmd, "STIPPLE_ALLOC_COUNT=1 '%s' %s -m '%s' -o '%s/clean.png'", tu_stipple(), job,
             tu_data(MODEL), dir);
    ck_assert_int_eq(tu_run(cmd, NULL, &err), 0);
    long total = 0;
    const char *s = err ? strstr(err, "allocations: ") : NULL;
    ck_assert_msg(s && sscanf(s, "allocations: %ld", &total) == 1 && total > 10, "no count: %s", err ? err : "");
    cm_free(err);
    char p[4400];
    snprintf(p, sizeof p, "%s/clean.png", dir);
    unlink(p);
    const char *k = getenv("STIPPLE_ALLOC_SWEEP_STEP");
    long step = k ? atol(k) : 1;
    if (step < 1) step = 1;
    int failed = 0, ok = 0;
    for (long n = 1; n <= total + 1; n += (n < 8 ? 1 : step)) {
        char *e2 = NULL;
        snprintf(cmd, sizeof cmd, "STIPPLE_FAIL_ALLOC=%ld '%s' %s -m '%s' -o '%s/out.png'", n, tu_stipple(), job,
                 tu_data(MODEL), dir);
        int rc = tu_run(cmd, NULL, &e2);
        char what[64];
        snprintf(what, sizeof what, "allocation %ld of %ld", n, total);
        ck_assert_msg(rc == 0 || rc == 1, "%s: exit %d; stderr: %s", what, rc, e2 ? e2 : "");
        char names[4][256];
        int nn = dir_list(dir, names, 4);
        if (rc == 1) {
            check_error_text(what, e2, "out of memory");
            ck_assert_msg(nn == 0, "%s: %s left behind", what, names[0]);
            failed++;
        } else {
            ck_assert_msg(nn == 1, "%s: exit 0 without exactly one image", what);
            ok++;
            snprintf(p, sizeof p, "%s/out.png", dir);
            unlink(p);
        }
        cm_free(e2);
    }
    printf("alloc failure sweep: %ld allocations, %d runs failed cleanly, %d succeeded (optional allocation)\n",
           total, failed, ok);
}
END_TEST

TCase *tc_cmd_bad(void)
{
    TCase *tc = tu_tcase("cmd_bad");
    tcase_add_loop_test(tc, test_bad_inputs, 0, (int)(sizeof rows / sizeof rows[0]));
    tcase_add_test(tc, test_preflight_tiled);
    tcase_add_loop_test(tc, test_interrupt, 0, 2);
    tcase_add_test(tc, test_alloc_failure);
    return tc;
}
