/* preflight.c — the memory pre-flight of a generation job (issue 8 item 2).
 *
 * Before the first buffer of a job is allocated, estimate the job's peak
 * resident memory and compare it with what the machine can give:
 *
 *   peak = mapped weights (every tensor of the components in use is read;
 *          for models that wt_model_drops, which give each
 *          block's pages back as they go (wt_model_drop), the tensors
 *          outside numbered blocks plus twice the largest block, the VAE
 *          counting as one block)
 *        + pipeline buffers (latents, model in/out, conditioning, decoded
 *          image, RGB8, PNG encoding) + sampler state
 *        + UNet working memory (df_unet_work_bytes; kept after sampling)
 *        + max(UNet kernel scratch, VAE working memory + VAE kernel scratch)
 *        + the GEMM's pack cache (packed panels kept across steps, at most
 *          its budget; cleared before the VAE of a large model)
 *        + a fixed allowance for the program, libraries and tokenizer
 *
 * Kernel scratch follows common/gemm.c and common/kernels.c: the GEMM packs
 * a whole weight matrix as panels of nr (<= 32) columns (the largest
 * weight decides), plus per-thread blocks; flash attention packs K and V of
 * every head once per call (bounded here by 6 floats per token and
 * channel, which covers the padding of heads down to 8 wide).
 *
 * The limit is --max-memory when given, otherwise the smaller of
 * /proc/meminfo MemAvailable and the cgroup's memory.max minus its current
 * use. Over the limit: when tiled VAE decoding (64-latent tiles, overlap
 * 16; see cmd_vae_tile) fits, the job switches to it and says so; otherwise the job is
 * refused with the estimate, before allocating.
 */
#include "pipeline.h" /* cmd.h and the stages' headers */

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB (1024.0 * 1024.0)
#define PF_OVERHEAD ((size_t)48 << 20) /* program, libraries, tokenizer, heap slack */

/* ------------------------------------------------------------ size text */

int cmd_parse_size(const char *s, size_t *out)
{
    if (!s || !*s) return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || errno || !(v >= 0) || v > 1e18) return -1;
    double mul = 1;
    char u = (char)toupper((unsigned char)*end);
    if (u == 'K') mul = 1024.0;
    else if (u == 'M') mul = MIB;
    else if (u == 'G') mul = MIB * 1024.0;
    else if (u == 'T') mul = MIB * 1024.0 * 1024.0;
    if (mul != 1) end++;
    if (*end == 'i' && mul != 1) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    double b = v * mul;
    if (b > 1.8e19) return -1;
    *out = (size_t)b;
    return 0;
}

/* ------------------------------------------------------ machine memory */

static size_t read_u64_file(const char *path, int *is_max)
{
    *is_max = 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = {0};
    size_t v = 0;
    if (fgets(buf, sizeof buf, f)) {
        if (!strncmp(buf, "max", 3)) *is_max = 1;
        else v = (size_t)strtoull(buf, NULL, 10);
    }
    fclose(f);
    return v;
}

size_t cmd_mem_available(const char **source)
{
    size_t best = 0;
    const char *src = "unknown";
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                best = (size_t)kb * 1024;
                src = "MemAvailable";
                break;
            }
        fclose(f);
    }
    /* cgroup v2, then v1: the limit minus what the group already uses. */
    int is_max = 0, cur_max = 0;
    size_t lim = read_u64_file("/sys/fs/cgroup/memory.max", &is_max);
    size_t cur = read_u64_file("/sys/fs/cgroup/memory.current", &cur_max);
    if (!lim && !is_max) {
        lim = read_u64_file("/sys/fs/cgroup/memory/memory.limit_in_bytes", &is_max);
        cur = read_u64_file("/sys/fs/cgroup/memory/memory.usage_in_bytes", &cur_max);
        if (lim >= ((size_t)1 << 60)) lim = 0; /* v1 "unlimited" */
    }
    if (lim && !is_max) {
        size_t room = lim > cur ? lim - cur : 0;
        if (!best || room < best) {
            best = room;
            src = "cgroup memory.max";
        }
    }
    if (source) *source = src;
    return best;
}

/* ------------------------------------------------------------ estimate */

static size_t add_sat(size_t a, size_t b) { return a + b < a ? SIZE_MAX : a + b; }
static size_t mul_sat(size_t a, size_t b)
{
    size_t r;
    return cm_mul_size(a, b, &r) ? r : SIZE_MAX;
}

/* The block a tensor belongs to, for the resident-weights estimate: the
 * name up to its first all-digit component ("...input_blocks.4.",
 * "...encoder.layers.12."), the whole VAE as one, or "" (not in a block). */
static size_t block_key_len(const char *name)
{
    if (!strncmp(name, "first_stage_model.", 18)) return 18;
    const char *p = name;
    while ((p = strchr(p, '.'))) {
        const char *q = ++p;
        while (*q >= '0' && *q <= '9') q++;
        if (q > p && (*q == '.' || !*q)) return (size_t)(q - name);
    }
    return 0;
}

/* Tables read by row (token / position embeddings, SD3's pos_embed is
 * 3-D anyway), never packed for the GEMM. */
static int is_lookup_table(const char *name)
{
    static const char *const suffix[] = {"token_embedding.weight", "position_embedding.weight",
                                         "positional_embedding", "shared.weight",
                                         "embed_tokens.weight"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++) {
        size_t k = strlen(suffix[i]);
        if (n >= k && !strcmp(name + n - k, suffix[i])) return 1;
    }
    return 0;
}

typedef struct {
    const char *name;
    size_t len, bytes;
} block_part;

static int cmp_part(const void *a, const void *b)
{
    const block_part *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* Weights (bytes resident at the peak: see the file header), the GEMM's
 * largest packed panel set and all packed panels together (what the pack
 * cache could hold). */
static void weight_bytes(const wt_model *m, size_t *weights, size_t *panels, size_t *packed)
{
    size_t total = 0, loose = 0, best = 0;
    int n_parts = 0, count = wt_model_count(m);
    block_part *parts = count > 0 ? malloc((size_t)count * sizeof *parts) : NULL;
    *panels = 0;
    *packed = 0;
    for (int i = 0; i < count; i++) {
        const cm_wview *v = wt_model_view_at(m, i);
        int64_t n = cm_wview_numel(v);
        if (n <= 0) continue;
        size_t b = mul_sat((size_t)n, cm_dtype_size(v->dtype));
        total = add_sat(total, b);
        const char *name = wt_model_name_at(m, i);
        size_t kl = block_key_len(name);
        if (!kl || !parts) loose = add_sat(loose, b);
        else parts[n_parts++] = (block_part){name, kl, b};
        if ((v->ndim == 2 || v->ndim == 4) && v->shape[0] > 0 && !is_lookup_table(name)) {
            size_t oc = (size_t)v->shape[0], k = (size_t)n / oc;
            size_t p = mul_sat(mul_sat((oc + 31) / 32 * 32, k), sizeof(float));
            if (p > *panels) *panels = p;
            *packed = add_sat(*packed, p);
        }
    }
    if (parts) qsort(parts, (size_t)n_parts, sizeof *parts, cmp_part);
    for (int i = 0; i < n_parts;) {
        size_t sum = 0;
        int j = i;
        while (j < n_parts && !cmp_part(&parts[i], &parts[j])) sum = add_sat(sum, parts[j++].bytes);
        if (sum > best) best = sum;
        i = j;
    }
    free(parts);
    *weights = total;
    if (wt_model_drops(m)) {
        size_t r = add_sat(loose, mul_sat(best, 2));
        if (r < total) *weights = r;
    }
}

/* Upper bound on the context length: the raw prompt's token count (the
 * parser only removes syntax) in chunks of at least 55 tokens (A1111's
 * comma backtrack is at most 20), one more per BREAK. */
static int context_tokens(const te_encoder *te, const char *text)
{
    if (!text || !*text) return TE_CTX;
    int chunks = 1;
    int32_t *ids = NULL;
    int n = 0;
    cm_error e = {0};
    cm_log_level lvl = cm_log_get_level(); /* the encoder warns about the prompt later */
    cm_log_set_level(CM_LOG_ERROR);
    if (te && te_tokenize(te_encoder_tokenizer(te), text, &ids, &n, &e) == CM_OK)
        chunks = n / 55 + 1;
    else
        chunks = (int)(strlen(text) / 55) + 1; /* a token covers >= 1 byte */
    cm_log_set_level(lvl);
    cm_free(ids);
    for (const char *p = text; (p = strstr(p, "BREAK")); p += 5) chunks++;
    return chunks * TE_CTX;
}

static int cfg_max_channels(const cJSON *sec)
{
    int n = wt_cfg_len(sec, "block_out_channels"), m = 0;
    for (int i = 0; i < n; i++) {
        int c = wt_cfg_int_at(sec, "block_out_channels", i, 0);
        if (c > m) m = c;
    }
    return m;
}

void cmd_mem_estimate(const cmd_mem_job *j, cmd_mem_plan *p)
{
    memset(p, 0, sizeof *p);
    const int B = j->rows > 0 ? j->rows : 1;
    const int ds = j->vae ? vae_downscale(j->vae) : 8;
    const size_t h = (size_t)(j->height / ds), w = (size_t)(j->width / ds);
    const size_t npx = (size_t)j->width * (size_t)j->height;
    const int C = j->vae ? vae_latent_channels(j->vae) : 4;
    const size_t n = h * w * (size_t)C; /* latent values of one image */
    const int nt = cm_threads_get() > 0 ? cm_threads_get() : 1;

    size_t panels = 0, packed = 0;
    weight_bytes(j->m, &p->weights, &panels, &packed);
    /* The GEMM's pack cache keeps packed panels of layers run at <= 256
     * rows across steps, up to its budget: count it as full. */
    size_t budget = cm_pack_cache_budget();
    p->pack_cache = packed < budget ? packed : budget;

    int Tp = context_tokens(j->te, j->prompt), Tn = context_tokens(j->te, j->negative);
    int T = Tp > Tn ? Tp : Tn;
    if (j->context_tokens > T) T = j->context_tokens;
    int D = j->unet ? df_unet_context_dim(j->unet) : j->mmdit ? df_mmdit_context_dim(j->mmdit) : 768;
    if (D <= 0) D = 768;

    /* Pipeline buffers (cmd_job_run): x, x_in (B), out (B), guided, the
     * context (B), SDXL extras, the decoded float image; then RGB8 and
     * the PNG (filtered rows + zlib output); conditioning cond/uncond;
     * sampler state (a few latents); an img2img/inpaint input image. */
    size_t floats = n * (size_t)(2 + 2 * B) + (size_t)B * T * D + 3 * npx + 8 * n;
    floats += (size_t)4 * T * D; /* cond + uncond + encoder output rows */
    p->buffers = add_sat(mul_sat(floats, sizeof(float)), mul_sat(npx, 3 * 4));
    if (j->with_image) p->buffers = add_sat(p->buffers, mul_sat(npx, 4 * sizeof(float) * 2));

    p->unet = j->unet ? df_unet_work_bytes(j->unet, B, (int)h, (int)w, T) : 0;
    if (j->unet && p->unet == 0) p->unet = SIZE_MAX; /* overflow */
    if (j->mmdit) {
        p->unet = df_mmdit_work_bytes(j->mmdit, B, (int)h, (int)w, T);
        if (p->unet == 0) p->unet = SIZE_MAX; /* overflow */
    }

    /* Kernel scratch: GEMM panels + per-thread blocks; attention K/V. */
    size_t gemm = add_sat(panels, (size_t)nt * (96 * 256 + 96 * 544) * sizeof(float));
    int c0 = cfg_max_channels(wt_model_section(j->m, "unet"));
    int cv = cfg_max_channels(wt_model_section(j->m, "vae"));
    size_t tk = (h * w + 127) / 128 * 128;
    size_t att_u = mul_sat(mul_sat((size_t)B * tk, (size_t)6 * (c0 > 0 ? c0 : 1280)), sizeof(float));
    /* UNet cross-attention K/V at the context length, per block: small. */
    att_u = add_sat(att_u, mul_sat((size_t)B * (T + 128), (size_t)6 * (c0 > 0 ? c0 : 1280) * 4));
    size_t att_v = mul_sat(mul_sat(tk, (size_t)6 * (cv > 0 ? cv : 512)), sizeof(float));
    /* GroupNorm statistics and the per-thread attention blocks. */
    size_t small = (size_t)nt * ((size_t)48 * 4096 + 4096) * sizeof(float) + ((size_t)1 << 20);
    p->kernels_unet = add_sat(add_sat(gemm, att_u), small);
    p->kernels_vae = add_sat(add_sat(gemm, att_v), small);

    if (j->vae) {
        p->vae = vae_decode_bytes(j->vae, (int)h, (int)w);
        if (p->vae == 0) p->vae = SIZE_MAX;
        if (j->with_image) {
            size_t e = vae_encode_bytes(j->vae, j->width, j->height);
            if (e == 0) e = SIZE_MAX;
            if (e > p->vae) p->vae = e;
        }
        int tile = cmd_vae_tile();
        size_t th = h < (size_t)tile ? h : (size_t)tile, tw = w < (size_t)tile ? w : (size_t)tile;
        size_t tb = vae_decode_bytes(j->vae, (int)th, (int)tw);
        if (tb == 0) tb = SIZE_MAX;
        size_t tpx = th * tw * (size_t)ds * (size_t)ds;
        tb = add_sat(tb, mul_sat(th * tw * (size_t)C + tpx * 3 + npx + (th + tw) * (size_t)ds, sizeof(float)));
        size_t tatt = mul_sat(mul_sat((th * tw + 127) / 128 * 128, (size_t)6 * (cv > 0 ? cv : 512)), sizeof(float));
        p->vae_tiled = tb;
        p->kernels_vae_tiled = add_sat(add_sat(gemm, tatt), small);
        if (j->with_image && j->vae) {
            size_t e = vae_encode_bytes(j->vae, j->width, j->height);
            if (e > p->vae_tiled) p->vae_tiled = e ? e : SIZE_MAX; /* the encoder is not tiled */
        }
    }

    size_t base = add_sat(add_sat(add_sat(p->weights, p->buffers), p->unet), PF_OVERHEAD);
    size_t full = add_sat(p->vae, p->kernels_vae), tiled = add_sat(p->vae_tiled, p->kernels_vae_tiled);
    size_t ku = add_sat(p->kernels_unet, p->pack_cache);
    /* Small models keep their packed panels through the VAE decode; large
     * ones clear them first (cmd/pipeline.c release_stage). */
    if (!wt_model_drops(j->m)) {
        full = add_sat(full, p->pack_cache);
        tiled = add_sat(tiled, p->pack_cache);
    }
    p->total = add_sat(base, full > ku ? full : ku);
    p->total_tiled = add_sat(base, tiled > ku ? tiled : ku);
    p->overhead = PF_OVERHEAD;
}

int cmd_vae_tile(void)
{
    const char *s = getenv("STIPPLE_VAE_TILE");
    int t = s ? atoi(s) : 0;
    return t >= 4 && t <= 4096 ? t : CMD_VAE_TILE;
}

static void fmt_bytes(size_t b, char *out, size_t cap)
{
    if (b == SIZE_MAX) snprintf(out, cap, "more than the address space");
    else if (b >= ((size_t)1 << 30)) snprintf(out, cap, "%.1f GiB", (double)b / (MIB * 1024));
    else snprintf(out, cap, "%.0f MiB", (double)b / MIB);
}

cm_status cmd_preflight(const cmd_mem_job *j, size_t max_memory, int *tiled, size_t *scratch,
                        cm_error *err)
{
    *tiled = 0;
    cmd_mem_plan p;
    cmd_mem_estimate(j, &p);
    if (scratch) *scratch = p.kernels_unet > p.kernels_vae ? p.kernels_unet : p.kernels_vae;
    const char *src = "--max-memory";
    size_t limit = max_memory;
    if (!limit) limit = cmd_mem_available(&src);
    if (getenv("STIPPLE_MEM_DEBUG"))
        fprintf(stderr,
                "stipple: memory estimate %zu bytes (weights %zu, buffers %zu, unet %zu, vae %zu, "
                "kernels unet %zu vae %zu, pack cache %zu, overhead %zu; tiled %zu); limit %zu (%s)\n",
                p.total, p.weights, p.buffers, p.unet, p.vae, p.kernels_unet, p.kernels_vae,
                p.pack_cache, p.overhead, p.total_tiled, limit, src);
    if (!limit || p.total <= limit) return CM_OK;
    char est[64], lim[64], tl[64];
    fmt_bytes(p.total, est, sizeof est);
    fmt_bytes(limit, lim, sizeof lim);
    fmt_bytes(p.total_tiled, tl, sizeof tl);
    if (p.total_tiled < p.total && p.total_tiled <= limit) {
        *tiled = 1;
        fprintf(stderr,
                "stipple: %dx%d needs about %s with a whole-image VAE decode, more than the %s "
                "available (%s): decoding in tiles instead (about %s)\n",
                j->width, j->height, est, lim, src, tl);
        return CM_OK;
    }
    return cm_error_set(err, CM_ERR_NOMEM,
                        "%dx%d: needs about %s of memory (%s with tiled VAE decoding), more than the "
                        "%s available (%s); try a smaller size%s",
                        j->width, j->height, est, p.total_tiled < p.total ? tl : est, lim, src,
                        max_memory ? " or a larger --max-memory" : "");
}

/* -------------------------------------------------- the pipeline's job */

cm_status cmd_job_preflight(const cmd_models *cm, cmd_job *job, size_t max_memory, cm_error *err)
{
    cmd_mem_job mj = {.m = cm->m, .te = cm->te, .unet = cm->unet, .vae = cm->vae,
                      .width = job->width, .height = job->height,
                      .rows = df_cfg_enabled(job->cfg) ? 2 : 1,
                      .prompt = job->prompt, .negative = job->negative,
                      .with_image = job->mode != CMD_TXT2IMG, .mmdit = cm->mmdit,
                      .context_tokens = cm->context_tokens};
    int tiled = 0;
    size_t scratch = 0;
    cm_status st = cmd_preflight(&mj, max_memory, &tiled, &scratch, err);
    if (st) return st;
    job->vae_tile = tiled ? cmd_vae_tile() : 0;
    /* The kernels' scratch, reserved now so that a job that starts cannot
     * run out of memory inside a kernel (see cm_scratch_reserve). */
    return cm_scratch_reserve(scratch, err);
}
