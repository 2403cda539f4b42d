/* common.h — the foundation every stage of stipple stands on.
 *
 * Sections (banner comments below): status and errors, logging and
 * progress, memory, tensors and weight views, threads, timer, RNGs, file
 * I/O (.npy, images, PNG with text chunks, atomic writes), compute kernels.
 *
 * Layout conventions used by every kernel:
 *   activations are float32, token-major (NHWC): x[b][y][x][c], c fastest;
 *   weights keep the checkpoint's PyTorch layout and dtype:
 *     linear  w[OC][IC]            (y = x @ w^T + b)
 *     conv2d  w[OC][IC][KH][KW]    (OIHW)
 *   and are read through a cm_wview (pointer into the memory map + dtype),
 *   converted to float32 while packing. Accumulation is always float32.
 *
 * Determinism: every kernel computes each output element on one thread in
 * a fixed order, so results do not depend on the thread count.
 */
#ifndef STIPPLE_COMMON_H
#define STIPPLE_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ------------------------------------------------------------------------
 * Status and errors
 * ---------------------------------------------------------------------- */

typedef enum {
    CM_OK = 0,
    CM_ERR_IO,          /* open/read/write/rename failed */
    CM_ERR_FORMAT,      /* malformed file or data */
    CM_ERR_NOMEM,       /* allocation failed (or injected failure) */
    CM_ERR_USAGE,       /* bad argument from the user */
    CM_ERR_UNSUPPORTED, /* valid input we do not handle */
    CM_ERR_INTERRUPTED, /* SIGINT/SIGTERM observed */
} cm_status;

/* One error record per operation: the status and a one-line message that
 * names the file or tensor and the expected versus actual value. */
typedef struct {
    cm_status status;
    char msg[1024];
} cm_error;

/* Fill err (may be NULL) and return st. The message is one line: any
 * newline in the formatted text is replaced by a space. */
cm_status cm_error_set(cm_error *err, cm_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix an existing message: "what: <old message>". Returns err->status. */
cm_status cm_error_prefix(cm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void cm_error_clear(cm_error *err);
const char *cm_status_str(cm_status st);

/* Programmer errors (impossible states) abort with file:line. Always on. */
#define CM_ASSERT(cond)                                                      \
    do {                                                                     \
        if (!(cond)) cm_assert_fail(__FILE__, __LINE__, #cond);              \
    } while (0)
void cm_assert_fail(const char *file, int line, const char *what)
    __attribute__((noreturn));

/* ------------------------------------------------------------------------
 * Logging and progress (stderr only; stdout belongs to cmd/)
 * ---------------------------------------------------------------------- */

typedef enum { CM_LOG_ERROR = 0, CM_LOG_WARN, CM_LOG_INFO, CM_LOG_DEBUG } cm_log_level;

void cm_log_set_level(cm_log_level lvl);
cm_log_level cm_log_get_level(void);
void cm_log(cm_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define cm_warn(...) cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_info(...) cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)

/* Progress: a bar when stderr is a terminal, plain lines otherwise,
 * nothing when quiet. */
typedef struct {
    const char *label;
    int total;
    int done;
    int quiet;
    int is_tty;
    double t_start;
} cm_progress;

void cm_progress_begin(cm_progress *p, const char *label, int total, int quiet);
void cm_progress_step(cm_progress *p);
void cm_progress_end(cm_progress *p);

/* ------------------------------------------------------------------------
 * Memory: 64-byte aligned allocation, arenas, fault injection
 * ---------------------------------------------------------------------- */

#define CM_ALIGN 64

/* Returns NULL and fills err (naming `what`) on failure. Size 0 is valid. */
void *cm_alloc(size_t nbytes, const char *what, cm_error *err);
void *cm_calloc(size_t nbytes, const char *what, cm_error *err);
void cm_free(void *p);
/* Overflow-checked a*b; returns 0 on overflow. */
int cm_mul_size(size_t a, size_t b, size_t *out);

/* Test hook: make the Nth call (1-based, counting from now) of cm_alloc /
 * cm_calloc / cm_arena_create fail. n <= 0 disables. */
void cm_alloc_fail_at(long n);
long cm_alloc_count(void);
/* on: the hook skips (and does not count) allocations made without an
 * error record — kernel scratch, which asserts on failure — so a sweep
 * over N exercises the recoverable paths only (stipple's
 * STIPPLE_FAIL_ALLOC). Off by default. */
void cm_alloc_fail_fallible_only(int on);

/* Kernel scratch: the compute kernels' temporary buffers (GEMM panels and
 * per-thread blocks, attention K/V panels, norm statistics, bias vectors)
 * are taken from one reserved region around each call and given back
 * (in any order; never taken inside a parallel region). The pipeline
 * reserves its pre-flight estimate before a job (cm_scratch_reserve: the
 * only fallible step, an error record on failure), so a job that starts
 * cannot run out of memory inside a kernel. A request the region cannot
 * hold, or with nothing reserved, falls back to the heap, where failure
 * is fatal (CM_ASSERT) because a kernel cannot report it. Not thread-safe:
 * kernels are called one at a time (their parallelism is inside). */
cm_status cm_scratch_reserve(size_t nbytes, cm_error *err); /* grows only */
size_t cm_scratch_reserved(void);
void *cm_scratch_take(size_t nbytes, int zero, const char *what);
void cm_scratch_give(void *p);
/* Give the region's pages back to the kernel (between stages). */
void cm_scratch_trim(void);
void cm_scratch_release(void);

/* Arena: one block, bump allocation, everything freed at once. */
typedef struct cm_arena cm_arena;
cm_arena *cm_arena_create(size_t capacity, cm_error *err);
void *cm_arena_alloc(cm_arena *a, size_t nbytes, const char *what, cm_error *err);
size_t cm_arena_used(const cm_arena *a);
void cm_arena_reset(cm_arena *a);
void cm_arena_free(cm_arena *a);

/* ------------------------------------------------------------------------
 * Dtypes, tensors, weight views
 * ---------------------------------------------------------------------- */

typedef enum {
    CM_F32 = 0,
    CM_F16,
    CM_BF16,
    CM_I64,
    CM_I32,
    CM_U8,
    CM_DTYPE_COUNT
} cm_dtype;

size_t cm_dtype_size(cm_dtype t);
const char *cm_dtype_name(cm_dtype t);

float cm_f16_to_f32(uint16_t h);
uint16_t cm_f32_to_f16(float f); /* round to nearest even */
float cm_bf16_to_f32(uint16_t h);
uint16_t cm_f32_to_bf16(float f); /* round to nearest even */

#define CM_MAX_DIMS 8

/* A read-only view of a stored tensor (usually inside a memory map). */
typedef struct {
    const void *data;
    cm_dtype dtype;
    int ndim;
    int64_t shape[CM_MAX_DIMS];
} cm_wview;

int64_t cm_wview_numel(const cm_wview *w);
/* Element i of a weight view, converted to float32. */
float cm_wview_get(const cm_wview *w, int64_t i);
/* Convert elements [off, off+n) to float32. */
void cm_wview_to_f32(const cm_wview *w, int64_t off, int64_t n, float *dst);

/* An owned float32 tensor (activations, goldens in tests). */
typedef struct {
    float *data;
    int ndim;
    int64_t shape[CM_MAX_DIMS];
} cm_tensor;

int64_t cm_tensor_numel(const cm_tensor *t);
cm_status cm_tensor_alloc(cm_tensor *t, int ndim, const int64_t *shape, cm_error *err);
void cm_tensor_release(cm_tensor *t); /* frees data, zeroes struct */

/* ------------------------------------------------------------------------
 * Threads (OpenMP when built with it, a single thread otherwise)
 * ---------------------------------------------------------------------- */

void cm_threads_set(int n); /* n <= 0: all cores */
int cm_threads_get(void);

/* ------------------------------------------------------------------------
 * Timer
 * ---------------------------------------------------------------------- */

double cm_time_now(void); /* monotonic seconds */

/* Interrupt flag, set by cmd/'s signal handler; long loops poll it. */
extern volatile int cm_interrupted;

/* ------------------------------------------------------------------------
 * RNGs: torch CPU generator (MT19937) and A1111's Philox "NV" generator.
 * Both fill float32 normals in exactly the order the references do.
 * ---------------------------------------------------------------------- */

typedef struct {
    uint32_t mt[624];
    int mti;
    int has_cached; /* torch's cached second Box-Muller value (serial path) */
    double cached;
} cm_torch_rng;

void cm_torch_rng_seed(cm_torch_rng *r, uint64_t seed);
uint32_t cm_torch_rng_u32(cm_torch_rng *r);
/* torch.randn(n, generator=g) on the CPU (both the n<16 and n>=16 paths). */
void cm_torch_randn(cm_torch_rng *r, float *out, int64_t n);

typedef struct {
    uint64_t seed;
    uint64_t offset; /* call number */
} cm_philox_rng;

void cm_philox_seed(cm_philox_rng *r, uint64_t seed);
/* One call = one randn tensor of n elements (A1111 "NV" generator). */
void cm_philox_randn(cm_philox_rng *r, float *out, int64_t n);

/* ------------------------------------------------------------------------
 * File I/O
 * ---------------------------------------------------------------------- */

/* .npy: little-endian float32, C order only (clear error for anything else). */
cm_status cm_npy_read(const char *path, cm_tensor *out, cm_error *err);
cm_status cm_npy_write(const char *path, const cm_tensor *t, cm_error *err);

/* Write a whole buffer atomically: temporary file in the same folder,
 * fsync, rename. Refuses to replace an existing file unless overwrite.
 * On any failure nothing is left behind. */
cm_status cm_file_write_atomic(const char *path, const void *data, size_t n, int overwrite,
                               cm_error *err);
/* write(2) until all n bytes are out, retrying EINTR; a zero-byte write
 * counts as ENOSPC. Returns 0, or -1 with errno set. */
int cm_write_all(int fd, const void *data, size_t n);
/* Read a whole file (NUL-terminated for convenience; *n excludes the NUL). */
cm_status cm_file_read_all(const char *path, char **data, size_t *n, cm_error *err);

/* Images: float RGB in [0,1], HWC, 3 channels (gray, gray+alpha, RGBA,
 * palette and 16-bit PNG converted; alpha composited over black is NOT
 * done — alpha is dropped). */
typedef struct {
    int w, h;
    float *rgb; /* h*w*3 */
} cm_image;

cm_status cm_image_read(const char *path, cm_image *img, cm_error *err);
cm_status cm_image_read_mem(const void *data, size_t n, const char *name, cm_image *img,
                            cm_error *err);
void cm_image_release(cm_image *img);

/* A PNG text chunk: tEXt when key and value are Latin-1-safe ASCII,
 * iTXt (UTF-8) otherwise. */
typedef struct {
    const char *key;
    const char *value;
} cm_png_text;

/* Encode 8-bit RGB (h*w*3) to PNG bytes in memory, with text chunks.
 * *out is cm_alloc'd; free with cm_free. */
cm_status cm_png_encode(const uint8_t *rgb, int w, int h, const cm_png_text *texts, int ntexts,
                        uint8_t **out, size_t *out_n, cm_error *err);
/* Read one text chunk (tEXt or iTXt, uncompressed) by key from PNG bytes.
 * *value is cm_alloc'd. Returns CM_ERR_FORMAT if absent or malformed. */
cm_status cm_png_text_get(const void *png, size_t n, const char *key, char **value,
                          cm_error *err);

/* ------------------------------------------------------------------------
 * Compute kernels (each has a scalar _ref kept as its spec and oracle).
 * All pointers to activations are float32, NHWC / token-major.
 * ---------------------------------------------------------------------- */

typedef enum { CM_ACT_NONE = 0, CM_ACT_SILU, CM_ACT_GELU, CM_ACT_GELU_TANH, CM_ACT_QUICK_GELU } cm_act;

typedef enum { CM_PREC_F32 = 0, CM_PREC_BF16 } cm_precision;
void cm_precision_set(cm_precision p);
cm_precision cm_precision_get(void);
/* CM_PREC_BF16 runs the GEMM engine (linear, conv, upsample conv, GEGLU)
 * with bf16-rounded weights and activations and float32 sums (vdpbf16ps),
 * on CPUs with AVX512_BF16 (this says whether this one has it); elsewhere,
 * and for attention, norms and everything else, float32. */
int cm_bf16_supported(void);

/* Linear: x (M,K) row stride ldx, w (N,K) [or (N,K,1,1) for 1x1 convs],
 * bias (N) or NULL, residual (M,N) row stride ldy or NULL -> y (M,N) row
 * stride ldy:  y = act(x @ w^T + bias) + residual.
 * y may alias residual (in-place residual add), never x. */
void cm_linear(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
               const cm_wview *bias, cm_act act, const float *residual, float *y, int64_t ldy);
void cm_linear_ref(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
                   const cm_wview *bias, cm_act act, const float *residual, float *y,
                   int64_t ldy);

/* Plain float32 GEMM: C (M,N) = A (M,K) @ B^T where B is (N,K), or
 * B (K,N) when b_trans is 0. Row strides lda, ldb, ldc. beta 0 or 1. */
void cm_gemm_f32(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                 int64_t ldb, int b_is_nk, float beta, float *C, int64_t ldc);

/* 2-D convolution, NHWC in and out, weight OIHW (any stored dtype).
 * x (B,H,W,C) -> y (B,OH,OW,OC), OH = (H + 2*pad - KH)/stride + 1.
 * residual (B,OH,OW,OC) or NULL is added after bias. */
typedef struct {
    int stride;
    int pad;
} cm_conv_params;
void cm_conv2d(const float *x, int B, int H, int W, int C, const cm_wview *w,
               const cm_wview *bias, cm_conv_params p, const float *residual, float *y);
void cm_conv2d_ref(const float *x, int B, int H, int W, int C, const cm_wview *w,
                   const cm_wview *bias, cm_conv_params p, const float *residual, float *y);
/* Nearest 2x upsample followed by a 3x3 pad-1 conv: x (B,H,W,C) ->
 * y (B,2H,2W,OC). Same result as upsample then cm_conv2d. */
void cm_upsample2x_conv3x3(const float *x, int B, int H, int W, int C, const cm_wview *w,
                           const cm_wview *bias, float *y);
void cm_upsample2x_conv3x3_ref(const float *x, int B, int H, int W, int C, const cm_wview *w,
                               const cm_wview *bias, float *y);

/* Multi-head attention, token-major. For batch b, head h:
 *   q rows at q + b*q_bstride + t*q_stride + h*hd   (t < Tq)
 *   k rows at k + b*k_bstride + s*k_stride + h*hd   (s < Tk), v likewise
 *   o rows at o + b*o_bstride + t*o_stride + h*hd
 * o = softmax(q k^T * scale [+ causal mask]) v. Softmax in float32. */
typedef struct {
    int B, heads, Tq, Tk, hd;
    int64_t q_stride, k_stride, v_stride, o_stride;     /* between tokens */
    int64_t q_bstride, k_bstride, v_bstride, o_bstride; /* between batch rows */
    float scale;
    int causal;
} cm_attn_params;
void cm_attention(const float *q, const float *k, const float *v, float *o, const cm_attn_params *p);
void cm_attention_ref(const float *q, const float *k, const float *v, float *o,
                      const cm_attn_params *p);

/* GroupNorm over NHWC x (B,HW,C) with `groups` groups, affine gamma/beta
 * (C), optional fused SiLU. y may alias x. */
void cm_group_norm(const float *x, float *y, int B, int64_t HW, int C, int groups, float eps,
                   const cm_wview *gamma, const cm_wview *beta, int silu);
void cm_group_norm_ref(const float *x, float *y, int B, int64_t HW, int C, int groups, float eps,
                       const cm_wview *gamma, const cm_wview *beta, int silu);

/* LayerNorm over the last dim: x (M,C) -> y (M,C). y may alias x. */
void cm_layer_norm(const float *x, float *y, int64_t M, int C, float eps, const cm_wview *gamma,
                   const cm_wview *beta);
/* RMS norm (T5 / SD3.5 QK norm): y = x / sqrt(mean(x^2) + eps) * gamma. */
void cm_rms_norm(const float *x, float *y, int64_t M, int C, float eps, const cm_wview *gamma);

/* Elementwise activations, in place over n floats. */
void cm_act_inplace(float *x, int64_t n, cm_act act);
float cm_act_scalar(float x, cm_act act);
/* GEGLU: x (M, 2N) = [a | gate] -> y (M, N) = a * gelu(gate). */
void cm_geglu(const float *x, float *y, int64_t M, int64_t N);

/* Packed-weight cache: the GEMM engine keeps the packed float32 panels of
 * weights used at small M (<= 256 rows: small latents, the text encoder)
 * so the next call of the same layer (the next sampling step) skips
 * packing. Keyed by the weight view (data pointer, dtype, shape) and kernel
 * variant; each hit is checked against a fingerprint of the contents.
 * Bounded by a byte budget (default 512 MiB, at most 25 % of physical
 * memory; env STIPPLE_PACK_CACHE_MB; 0 disables and frees): layers are
 * kept in the order they first run until the budget is full, never
 * evicted for a newer one (every step runs the same cycle of layers). Call
 * cm_pack_cache_clear() when a model file is closed or a stage is done. */
void cm_pack_cache_set_budget(size_t bytes);
size_t cm_pack_cache_budget(void);
void cm_pack_cache_clear(void);
/* Bytes resident now and lookups that hit / missed since the start. */
void cm_pack_cache_stats(size_t *bytes, long *hits, long *misses);

/* Linear + GEGLU in one pass: w (2N,K) and bias (2N) are the ff.net.0.proj
 * weights; y (M,N) row stride ldy = a * gelu(gate) where [a | gate] =
 * x @ w^T + bias. Same values as cm_linear into (M,2N) then cm_geglu. */
void cm_linear_geglu(const float *x, int64_t ldx, int64_t M, int64_t K, const cm_wview *w,
                     const cm_wview *bias, float *y, int64_t ldy);

/* Wrap a float32 array as a weight view (for kernels fed with activations). */
cm_wview cm_wview_f32(const float *data, int ndim, const int64_t *shape);

#endif
