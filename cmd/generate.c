/* generate.c — `stipple txt2img`, `stipple img2img` and `stipple inpaint`:
 * options, validation, seeds, the input image and mask, the batch loop,
 * PNG output with A1111 metadata (Denoising strength, Mask blur, Inpaint
 * method), signals. The pipeline itself is pipeline.c. */
#include "batch.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *usage_head_txt2img = "usage: stipple txt2img -p PROMPT [options]\n";
static const char *usage_head_img2img =
    "usage: stipple img2img -i IMAGE -p PROMPT [options]\n"
    "\n"
    "  -i, --image FILE        the input image (PNG or JPEG; grey, alpha, palette and\n"
    "                          16-bit are converted to 8-bit RGB; alpha is dropped)\n"
    "      --strength S        0..1: how much to change (default 0.75); sampling starts\n"
    "                          at step steps - int(steps * S) of the schedule\n"
    "      --encode-mode M     sample: image latents drawn from the VAE posterior with\n"
    "                          the seed, as diffusers does (default); mean: its mean\n"
    "  The image is resized to -W x -H with Lanczos-3 (as PIL); without them it\n"
    "  keeps its size rounded down to a multiple of the model's (8 x the UNet's)\n"
    "  (one of -W/-H: the other follows the aspect ratio). No resizing happens\n"
    "  when the size already fits. --save-latents numbers step files from 000 at\n"
    "  the first step that runs (the reference's callback index).\n";
static const char *usage_head_inpaint =
    "usage: stipple inpaint -i IMAGE --mask MASK -p PROMPT [options]\n"
    "\n"
    "  -i, --image FILE        the input image (PNG or JPEG, as for img2img)\n"
    "      --mask FILE         white = repaint, black = keep, grey = partial (any size:\n"
    "                          resized to the image with Lanczos-3)\n"
    "      --mask-blur N       Gaussian blur of the mask, sigma N pixels (default 4;\n"
    "                          kernel 2*int(2.5N+0.5)+1, as A1111)\n"
    "      --strength S        0..1 (default 0.75; 1.0 with an inpainting checkpoint)\n"
    "      --encode-mode M     sample (default) | mean, as for img2img\n"
    "  A plain checkpoint puts the known latents back after every step (diffusers'\n"
    "  legacy blend); an inpainting (9-channel) checkpoint gets [latents, mask,\n"
    "  masked-image latents]. The latent mask is the nearest downsample of\n"
    "  mask >= 0.5. The decoded image is composited onto the input with the\n"
    "  blurred mask as weight: where the mask is pure black the output pixels are\n"
    "  the input's, byte for byte. Sizes and --save-latents as for img2img.\n";
static const char *usage_txt2img =
    "\n"
    "  -p, --prompt TEXT       the prompt (A1111 syntax: (word:1.2), [word], BREAK)\n"
    "  -n, --negative TEXT     the negative prompt\n"
    "  -m, --model PATH        .safetensors checkpoint or diffusers folder\n"
    "                          (default: the built-in model)\n"
    "  -W, --width N           image width in pixels, a multiple of 8 (default: the model's)\n"
    "  -H, --height N          image height in pixels, a multiple of 8 (default: the model's)\n"
    "                          sizes that are not multiples are refused, not rounded\n"
    "      --steps N           sampling steps (default 20)\n"
    "      --cfg S             classifier-free guidance scale (default 7.5; <= 1: no guidance)\n"
    "      --sampler NAME      ddim | euler | euler_a | dpmpp_2m | lcm (default dpmpp_2m);\n"
    "                          flow_euler for SD3 (its default and only sampler)\n"
    "      --schedule NAME     leading | trailing | linspace | karras (default: karras for\n"
    "                          dpmpp_2m, the model's spacing otherwise; a scheduler config\n"
    "                          saying \"trailing\" (Turbo) is followed, with its sampler)\n"
    "      --eta E             DDIM eta (default 0)\n"
    "      --prediction eps|v  override the model's prediction type\n"
    "      --seed N            0 .. 2^64-1, or -1 for a random seed (default -1)\n"
    "      --rng cpu|cuda      cpu: torch.randn on a CPU generator (diffusers, ComfyUI);\n"
    "                          cuda: A1111's Philox stream of the CUDA generator (default cpu)\n"
    "      --batch-count N     images to make (default 1); image i uses seed + i\n"
    "      --batch-size N      images per batch (default 1; a batch equals its images made\n"
    "                          one at a time)\n"
    "      --clip-skip N       1 = last CLIP layer, 2 = penultimate (default: the model's)\n"
    "  -o, --output PATH       file or template with {seed} {n} {prompt} {steps} {cfg}\n"
    "                          {sampler} {width} {height} {model} {date} {index}\n"
    "                          (default stipple-{seed}.png); never overwrites without\n"
    "      --overwrite         replace existing files\n"
    "      --threads N         worker threads (default: all cores); results do not depend on it\n"
    "      --json              print one JSON object per image on stdout (as stipple jobs)\n"
    "      --from-file FILE    txt2img: one job per line: a prompt, or A1111's \"prompts from\n"
    "                          file\" options (--prompt \"...\" --negative_prompt \"...\" --steps 20\n"
    "                          --seed 5 --cfg_scale 7 --sampler_name \"Euler a\" --width --height\n"
    "                          --n_iter --batch_size --sd_model); a line without --seed uses\n"
    "                          seed + the index of its first image\n"
    "      --from-png IMAGE    take prompt and settings from a PNG by stipple, AUTOMATIC1111,\n"
    "                          ComfyUI (KSampler graph) or stable-diffusion.cpp; later\n"
    "                          options override them\n"
    "      --shard K/N         make only the images whose index is K mod N (default from\n"
    "                          SLURM_ARRAY_TASK_ID/COUNT, or JOB_COMPLETION_INDEX with\n"
    "                          --shard-count N); seeds follow the index: the N shards make\n"
    "                          the files of one unsharded run (needs a fixed --seed)\n"
    "      --skip-existing     skip images whose output file exists (resume a run)\n"
    "      --quiet             no progress on stderr\n"
    "      --init-noise FILE   float32 .npy (B,C,h,w) used instead of the seeded noise\n"
    "      --save-latents DIR  write DIR/step_NNN.npy after every step and DIR/final.npy\n"
    "      --precision f32|bf16  f32 (default, exact) or bf16: GEMMs and convolutions\n"
    "                          with bf16 inputs and float32 sums (CPUs with AVX512_BF16;\n"
    "                          elsewhere f32 with a note); attention stays f32\n"
    "      --max-memory SIZE   memory the job may use (e.g. 6G; default: what the machine\n"
    "                          has free); over it the VAE decodes in tiles or the job is\n"
    "                          refused with the estimate, before anything is computed\n"
    "SDXL:\n"
    "      --original-size WxH original_size of the micro-conditioning (default: the size)\n"
    "      --crop TOPxLEFT     crops_coords_top_left, also T,L (default 0x0)\n"
    "      --target-size WxH   target_size (default: the size)\n"
    "SD3 (family sd3; MMDiT, flow matching, default sampler flow_euler):\n"
    "      --clip-l FILE       CLIP-L text encoder file (when not inside the checkpoint)\n"
    "      --clip-g FILE       OpenCLIP bigG text encoder file\n"
    "      --t5xxl FILE        T5-XXL text encoder file (optional: without it, zeros)\n"
    "      --no-t5             do not run T5 (its context rows are zeros, as the reference)\n"
    "      --t5-max-length N   T5 tokens (default 256)\n"
    "  An inpainting (9-channel) checkpoint works in txt2img and img2img with a full\n"
    "  mask and a blank masked image, as A1111 does.\n"
    "  Turbo checkpoints (SD-Turbo, SDXL-Turbo) want --steps 1..4 --cfg 1\n"
    "  --sampler euler_a --schedule trailing (a diffusers folder's scheduler config\n"
    "  says so and is followed by default; a single file cannot tell);\n"
    "  LCM-distilled models: --sampler lcm --steps 4..8 --cfg 1.\n";

typedef struct {
    const char *prompt, *negative, *model, *output, *sampler, *schedule, *prediction, *rng;
    const char *seed, *init_noise, *save_latents, *precision;
    const char *image, *mask, *encode_mode;
    const char *max_memory; /* memory pre-flight (preflight.c) */
    const char *clip_l, *clip_g, *t5xxl;            /* SD3 text encoder files */
    const char *original_size, *crop, *target_size; /* SDXL micro-conditioning */
    int no_t5, t5_max_length;
    int width, height, steps, batch_count, batch_size, clip_skip, threads;
    int overwrite, json, quiet, mask_blur;
    float cfg, eta, strength;
    int prompt_seen, w_seen, h_seen, strength_seen, image_seen, mask_seen, steps_seen, cfg_seen;
} gen_opts;

/* ---------------------------------------------------------------- signals */

static volatile sig_atomic_t g_signal;

static void on_signal(int sig)
{
    g_signal = sig;
    cm_interrupted = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int interrupted_exit(void)
{
    fprintf(stderr, "stipple: interrupted\n");
    return g_signal == SIGTERM ? EXIT_SIGTERM : EXIT_SIGINT;
}

/* ------------------------------------------------------------------ seeds */

static int parse_seed(const char *s, uint64_t *seed, int *random)
{
    *random = 0;
    if (!s || !strcmp(s, "-1")) {
        *random = 1;
        uint32_t v = 0;
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, &v, sizeof v) != (ssize_t)sizeof v) v = (uint32_t)(cm_time_now() * 1e6);
        if (fd >= 0) close(fd);
        *seed = v;
        return 0;
    }
    if (!*s || *s == '-' || *s == '+') return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return -1;
    *seed = v;
    return 0;
}

/* ------------------------------------------------------------ input image */

/* The output must never replace the input image or the mask. */
static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return a && b && stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* The job size from the image when -W / -H are not both given: the image's
 * own size (one side given: the other follows the aspect ratio), rounded
 * down to a multiple of `mult`. Returns 0, or a usage error. */
static int size_from_image(const gen_opts *o, const cm_image *img, int mult, int *W, int *H)
{
    double w = o->w_seen ? o->width : o->h_seen ? (double)img->w * o->height / img->h : img->w;
    double h = o->h_seen ? o->height : o->w_seen ? (double)img->h * o->width / img->w : img->h;
    long long rw = o->w_seen ? o->width : (long long)(w + 0.5) / mult * mult;
    long long rh = o->h_seen ? o->height : (long long)(h + 0.5) / mult * mult;
    if (rw < mult || rh < mult)
        return cmd_usage_error("%s: %dx%d pixels is too small: the size would be %lldx%lld (sides are rounded down to a multiple of %d; give -W and -H to resize it)",
                               o->image, img->w, img->h, rw, rh, mult);
    if (rw > 16384 || rh > 16384)
        return cmd_usage_error("%s: %dx%d pixels is too large: the size would be %lldx%lld (at most 16384 per side; give -W and -H to resize it)",
                               o->image, img->w, img->h, rw, rh);
    *W = (int)rw;
    *H = (int)rh;
    return 0;
}

/* ------------------------------------------------------- model defaults */

/* "WxH" or "W,H" (also "TOPxLEFT" / "T,L" for --crop) -> *a, *b in
 * [lo, 65536]. 0 ok, -1 bad. */
static int parse_pair(const char *s, int lo, int *a, int *b)
{
    char *end;
    errno = 0;
    if (!s || *s < '0' || *s > '9') return -1;
    long x = strtol(s, &end, 10);
    if (errno || (*end != 'x' && *end != 'X' && *end != ',') || end[1] < '0' || end[1] > '9') return -1;
    long y = strtol(end + 1, &end, 10);
    if (errno || *end || x < lo || y < lo || x > 65536 || y > 65536) return -1;
    *a = (int)x;
    *b = (int)y;
    return 0;
}

/* What the loaded model decides when the user did not: SD3 samples with
 * flow_euler only (other samplers refused; flow_euler refused for a
 * UNet); a Turbo-style scheduler config (timestep_spacing "trailing")
 * gives its spacing and, when it names one we know, its sampler. SDXL
 * micro-conditioning flags are refused for other models. */
static int apply_model_defaults(const gen_opts *o, const cmd_models *cm, cmd_job *job)
{
    if (!o->cfg_seen && cm->default_cfg >= 0.0f) job->cfg = cm->default_cfg;
    if (!o->steps_seen && cm->default_steps > 0) job->steps = cm->default_steps;
    if (cmd_models_is_flow(cm)) {
        if (o->sampler && job->sampler != DF_SAMPLER_FLOW_EULER)
            return cmd_usage_error("--sampler %s: %s is an SD3 (MMDiT) model: it samples with flow_euler only",
                                   o->sampler, wt_model_stem(cm->m));
        if (o->schedule)
            return cmd_usage_error("--schedule %s: does not apply to flow_euler (SD3's shifted sigmas come from the model's scheduler config)",
                                   o->schedule);
        job->sampler = DF_SAMPLER_FLOW_EULER;
        job->karras = 0;
        job->spacing = DF_SPACING_DEFAULT;
    } else {
        if (job->sampler == DF_SAMPLER_FLOW_EULER)
            return cmd_usage_error("--sampler flow_euler: only for SD3 (MMDiT) models; %s is %s (a UNet model)",
                                   wt_model_stem(cm->m), wt_family_name(wt_model_family(cm->m)));
        if (cm->trailing) {
            if (!o->sampler && cm->has_sampler) job->sampler = cm->sampler;
            if (!o->schedule) {
                job->karras = 0;
                job->spacing = DF_SPACING_TRAILING;
            }
            if (!o->sampler || !o->schedule)
                cm_info("%s: the scheduler config says timestep_spacing \"trailing\" (Turbo): sampler %s, spacing trailing",
                        wt_model_stem(cm->m), df_sampler_name(job->sampler));
        }
    }
    int sdxl = cm->unet && df_unet_n_time_ids(cm->unet) >= 6;
    if (!sdxl && (o->original_size || o->crop || o->target_size))
        return cmd_usage_error("%s: only for SDXL models (%s is %s)",
                               o->original_size ? "--original-size" : o->crop ? "--crop" : "--target-size",
                               wt_model_stem(cm->m), wt_family_name(wt_model_family(cm->m)));
    return 0;
}

/* ------------------------------------------------------------------- main */

int cmd_generate(int argc, char **argv)
{
    const char *cmdname = argv[0];
    /* batch options, --from-file, --from-png, sharding: batch.c */
    if (!cmd_batch.active) return cmd_batch_main(argc, argv);
    cmd_mode mode;
    const char *head;
    if (!strcmp(cmdname, "txt2img")) mode = CMD_TXT2IMG, head = usage_head_txt2img;
    else if (!strcmp(cmdname, "img2img")) mode = CMD_IMG2IMG, head = usage_head_img2img;
    else if (!strcmp(cmdname, "inpaint")) mode = CMD_INPAINT, head = usage_head_inpaint;
    else return cmd_usage_error("%s: unknown command", cmdname);
    gen_opts o = {.steps = 20, .cfg = 7.5f, .batch_count = 1, .batch_size = 1, .threads = 0,
                  .output = "stipple-{seed}.png", .rng = "cpu", .precision = "f32",
                  .strength = 0.75f, .encode_mode = "sample", .mask_blur = 4};
    const cmd_opt common_opts[] = {
        {"prompt", 'p', OPT_STR, &o.prompt, 0, 0, &o.prompt_seen},
        {"negative", 'n', OPT_STR, &o.negative, 0, 0, NULL},
        {"model", 'm', OPT_STR, &o.model, 0, 0, NULL},
        {"width", 'W', OPT_INT, &o.width, 8, 16384, &o.w_seen},
        {"height", 'H', OPT_INT, &o.height, 8, 16384, &o.h_seen},
        {"steps", 0, OPT_INT, &o.steps, 1, 10000, &o.steps_seen},
        {"cfg", 0, OPT_FLOAT, &o.cfg, 0, 1000, &o.cfg_seen},
        {"sampler", 0, OPT_STR, &o.sampler, 0, 0, NULL},
        {"schedule", 0, OPT_STR, &o.schedule, 0, 0, NULL},
        {"eta", 0, OPT_FLOAT, &o.eta, 0, 1000, NULL},
        {"prediction", 0, OPT_STR, &o.prediction, 0, 0, NULL},
        {"seed", 0, OPT_STR, &o.seed, 0, 0, NULL},
        {"rng", 0, OPT_STR, &o.rng, 0, 0, NULL},
        {"batch-count", 0, OPT_INT, &o.batch_count, 1, 1000000, NULL},
        {"batch-size", 0, OPT_INT, &o.batch_size, 1, 64, NULL},
        {"clip-skip", 0, OPT_INT, &o.clip_skip, 0, 64, NULL},
        {"output", 'o', OPT_STR, &o.output, 0, 0, NULL},
        {"overwrite", 0, OPT_FLAG, &o.overwrite, 0, 0, NULL},
        {"threads", 0, OPT_INT, &o.threads, 0, 1024, NULL},
        {"json", 0, OPT_FLAG, &o.json, 0, 0, NULL},
        {"quiet", 0, OPT_FLAG, &o.quiet, 0, 0, NULL},
        {"init-noise", 0, OPT_STR, &o.init_noise, 0, 0, NULL},
        {"save-latents", 0, OPT_STR, &o.save_latents, 0, 0, NULL},
        {"precision", 0, OPT_STR, &o.precision, 0, 0, NULL},
        {"max-memory", 0, OPT_STR, &o.max_memory, 0, 0, NULL},
        {"clip-l", 0, OPT_STR, &o.clip_l, 0, 0, NULL},
        {"clip-g", 0, OPT_STR, &o.clip_g, 0, 0, NULL},
        {"t5xxl", 0, OPT_STR, &o.t5xxl, 0, 0, NULL},
        {"no-t5", 0, OPT_FLAG, &o.no_t5, 0, 0, NULL},
        {"t5-max-length", 0, OPT_INT, &o.t5_max_length, 1, 4096, NULL},
        {"original-size", 0, OPT_STR, &o.original_size, 0, 0, NULL},
        {"crop", 0, OPT_STR, &o.crop, 0, 0, NULL},
        {"target-size", 0, OPT_STR, &o.target_size, 0, 0, NULL},
    };
    const cmd_opt image_opts[] = {
        {"image", 'i', OPT_STR, &o.image, 0, 0, &o.image_seen},
        {"strength", 0, OPT_FLOAT, &o.strength, 0, 1, &o.strength_seen},
        {"encode-mode", 0, OPT_STR, &o.encode_mode, 0, 0, NULL},
    };
    const cmd_opt mask_opts[] = {
        {"mask", 0, OPT_STR, &o.mask, 0, 0, &o.mask_seen},
        {"mask-blur", 0, OPT_INT, &o.mask_blur, 0, 256, NULL},
    };
    cmd_opt opts[sizeof common_opts / sizeof common_opts[0] + 6];
    size_t nopt = 0;
    for (size_t k = 0; k < sizeof common_opts / sizeof common_opts[0]; k++) opts[nopt++] = common_opts[k];
    if (mode != CMD_TXT2IMG)
        for (size_t k = 0; k < sizeof image_opts / sizeof image_opts[0]; k++) opts[nopt++] = image_opts[k];
    if (mode == CMD_INPAINT)
        for (size_t k = 0; k < sizeof mask_opts / sizeof mask_opts[0]; k++) opts[nopt++] = mask_opts[k];
    opts[nopt] = (cmd_opt){NULL, 0, 0, NULL, 0, 0, NULL};
    char usage[8192];
    snprintf(usage, sizeof usage, "%s%s", head, usage_txt2img);

    char *pos[1];
    int npos = 0;
    int r = cmd_parse(argc, argv, opts, usage, pos, &npos, 0);
    if (r < 0) return EXIT_OK;
    if (r) return r;
    if (!o.prompt_seen) return cmd_usage_error("%s: -p PROMPT is required", cmdname);
    size_t max_memory = 0;
    if (o.max_memory && cmd_parse_size(o.max_memory, &max_memory))
        return cmd_usage_error("--max-memory: expected a size such as 512M or 8G, got \"%s\"", o.max_memory);
    if (mode != CMD_TXT2IMG && !o.image_seen) return cmd_usage_error("%s: -i IMAGE is required", cmdname);
    if (mode == CMD_INPAINT && !o.mask_seen) return cmd_usage_error("%s: --mask MASK is required", cmdname);

    /* Validate everything that does not need the model first. */
    cm_error err = {0};
    cmd_job job = {.prompt = o.prompt, .negative = o.negative ? o.negative : "",
                   .steps = o.steps, .cfg = o.cfg, .eta = o.eta, .prediction = -1,
                   .clip_skip = o.clip_skip, .save_latents = o.save_latents, .quiet = o.quiet,
                   .mode = mode, .strength = o.strength};
    if (!strcmp(o.encode_mode, "mean")) job.encode_mean = 1;
    else if (strcmp(o.encode_mode, "sample"))
        return cmd_usage_error("--encode-mode: expected sample or mean, got \"%s\"", o.encode_mode);
    if (mode != CMD_TXT2IMG && o.strength_seen && df_sampler_start_index(o.steps, o.strength) >= o.steps)
        return cmd_usage_error("--strength %g with --steps %d runs no step (int(steps * strength) = 0)",
                               (double)o.strength, o.steps);
    const char *sampler = o.sampler ? o.sampler : "dpmpp_2m";
    if (df_sampler_parse(sampler, &job.sampler, &err)) return cmd_fail(&err);
    job.spacing = DF_SPACING_DEFAULT;
    const char *sched = o.schedule ? o.schedule : (job.sampler == DF_SAMPLER_DPMPP_2M ? "karras" : NULL);
    if (sched) {
        if (!strcmp(sched, "karras")) {
            if (job.sampler != DF_SAMPLER_DPMPP_2M && job.sampler != DF_SAMPLER_EULER)
                return cmd_usage_error("--schedule karras: only for dpmpp_2m and euler");
            job.karras = 1;
        } else if (df_spacing_parse(sched, &job.spacing, &err)) {
            return cmd_usage_error("--schedule: unknown \"%s\" (leading, trailing, linspace, karras)", sched);
        }
    }
    if (o.prediction) {
        df_prediction p;
        if (df_prediction_parse(o.prediction, &p, &err))
            return cmd_usage_error("--prediction: expected eps or v, got \"%s\"", o.prediction);
        job.prediction = (int)p;
    }
    if (o.original_size && parse_pair(o.original_size, 1, &job.orig_w, &job.orig_h))
        return cmd_usage_error("--original-size: expected WxH (e.g. 1024x1024), got \"%s\"", o.original_size);
    if (o.target_size && parse_pair(o.target_size, 1, &job.target_w, &job.target_h))
        return cmd_usage_error("--target-size: expected WxH (e.g. 1024x1024), got \"%s\"", o.target_size);
    if (o.crop && parse_pair(o.crop, 0, &job.crop_top, &job.crop_left))
        return cmd_usage_error("--crop: expected TOPxLEFT or T,L (e.g. 0x0), got \"%s\"", o.crop);
    if (!strcmp(o.rng, "cpu")) job.rng = RNG_CPU;
    else if (!strcmp(o.rng, "cuda")) job.rng = RNG_CUDA;
    else return cmd_usage_error("--rng: expected cpu or cuda, got \"%s\"", o.rng);
    uint64_t seed;
    int seed_random;
    if (parse_seed(o.seed, &seed, &seed_random))
        return cmd_usage_error("--seed: expected -1 or an integer in [0, 18446744073709551615], got \"%s\"", o.seed);
    if (!strcmp(o.precision, "f32")) cm_precision_set(CM_PREC_F32);
    else if (!strcmp(o.precision, "bf16")) {
        /* vdpbf16ps needs AVX512_BF16: elsewhere say so once, compute exactly. */
        if (cm_bf16_supported()) {
            cm_precision_set(CM_PREC_BF16);
        } else {
            fprintf(stderr, "stipple: note: --precision bf16 needs a CPU with AVX512_BF16: computing in float32\n");
            cm_precision_set(CM_PREC_F32);
        }
    } else return cmd_usage_error("--precision: expected f32 or bf16, got \"%s\"", o.precision);
    if (o.w_seen && o.width % 8)
        return cmd_usage_error("-W %d: the width must be a multiple of 8 (try %d or %d)", o.width,
                               o.width / 8 * 8, o.width / 8 * 8 + 8);
    if (o.h_seen && o.height % 8)
        return cmd_usage_error("-H %d: the height must be a multiple of 8 (try %d or %d)", o.height,
                               o.height / 8 * 8, o.height / 8 * 8 + 8);
    int total = o.batch_count * o.batch_size;
    if (total > 1 && !cmd_template_has_fields(o.output))
        return cmd_usage_error("-o %s: %d images need a template with {n} or {seed} in the name", o.output, total);
    cmd_batch.job_images = total;
    {
        int any = 0; /* none of this job's images in this shard: nothing to load */
        for (int i = 0; i < total && !any; i++) any = cmd_batch_mine(cmd_batch.next_index + i);
        if (!any) return EXIT_OK;
    }

    /* The input image and mask, read (and their sizes checked) before the
     * model is loaded or anything large is allocated. */
    cm_image image = {0}, mask = {0};
    int W = 0, H = 0;
    if (mode != CMD_TXT2IMG) {
        if (cm_image_read(o.image, &image, &err)) return cmd_fail(&err);
        if (mode == CMD_INPAINT && cm_image_read(o.mask, &mask, &err)) {
            cm_image_release(&image);
            cm_error_prefix(&err, "--mask");
            return cmd_fail(&err);
        }
        if ((r = size_from_image(&o, &image, 8, &W, &H))) {
            cm_image_release(&image);
            cm_image_release(&mask);
            return r;
        }
    }
    if (o.save_latents) {
        struct stat sb;
        if (stat(o.save_latents, &sb) != 0 && mkdir(o.save_latents, 0755) != 0) {
            cm_image_release(&image);
            cm_image_release(&mask);
            cm_error_set(&err, CM_ERR_IO, "--save-latents %s: cannot create folder: %s", o.save_latents,
                         strerror(errno));
            return cmd_fail(&err);
        }
    }
    /* The output folder must exist before minutes of work go into an image
     * that cannot be written (a templated folder is checked per image). */
    const char *oslash = strrchr(o.output, '/');
    if (oslash && oslash != o.output) {
        char odir[4096];
        size_t dl = (size_t)(oslash - o.output);
        if (dl < sizeof odir && !memchr(o.output, '{', dl)) {
            memcpy(odir, o.output, dl);
            odir[dl] = 0;
            struct stat sb;
            if (stat(odir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
                cm_image_release(&image);
                cm_image_release(&mask);
                cm_error_set(&err, CM_ERR_IO, "-o %s: %s %s", o.output, odir,
                             stat(odir, &sb) != 0 ? "does not exist" : "is not a folder");
                return cmd_fail(&err);
            }
        }
    }
    if (o.threads) cm_threads_set(o.threads);
    if (!o.quiet) cm_log_set_level(CM_LOG_INFO);

    cm_tensor noise = {0};
    cmd_init ini = {0};
    cmd_cond_cache cache = {0};
    cmd_models cm;
    int loaded = 0, rc = EXIT_OK;
    char extra[512] = "";
    if (o.init_noise && cm_npy_read(o.init_noise, &noise, &err)) {
        rc = cmd_fail(&err);
        goto out;
    }
    if (o.init_noise) job.init_noise = &noise;

    const char *model = o.model ? o.model : cmd_builtin_model_path();
    if (!model) {
        cm_error_set(&err, CM_ERR_IO, "no model given and the built-in model was not found (use -m MODEL)");
        rc = cmd_fail(&err);
        goto out;
    }
    install_signals();
    cmd_model_opts mo = {.clip_l = o.clip_l, .clip_g = o.clip_g, .t5xxl = o.t5xxl,
                         .no_t5 = o.no_t5, .t5_max_length = o.t5_max_length};
    if (cmd_models_get(&cm, model, &mo, &err)) {
        rc = cm_interrupted ? interrupted_exit() : cmd_fail(&err);
        goto out;
    }
    loaded = 1;
    if ((rc = apply_model_defaults(&o, &cm, &job))) goto out;
    if (mode == CMD_TXT2IMG) {
        job.width = o.w_seen ? o.width : cm.native_size;
        job.height = o.h_seen ? o.height : cm.native_size;
        if (cmd_job_preflight(&cm, &job, max_memory, &err)) {
            rc = cmd_fail(&err);
            goto out;
        }
    } else {
        if ((rc = size_from_image(&o, &image, cmd_models_size_multiple(&cm), &W, &H))) goto out;
        job.width = W;
        job.height = H;
        if (cmd_job_preflight(&cm, &job, max_memory, &err)) {
            rc = cmd_fail(&err);
            goto out;
        }
        int nine = cmd_models_inpainting(&cm);
        if (mode == CMD_INPAINT && nine && !o.strength_seen) job.strength = 1.0f;
        if (df_sampler_start_index(job.steps, job.strength) >= job.steps) {
            rc = cmd_usage_error("--strength %g with --steps %d runs no step (int(steps * strength) = 0)",
                                 (double)job.strength, job.steps);
            goto out;
        }
        double t0 = cm_time_now();
        int need_image = !(mode == CMD_INPAINT && nine && job.strength >= 1.0f);
        if (cmd_init_prepare(&cm, mode, &image, mode == CMD_INPAINT ? &mask : NULL, W, H, o.mask_blur,
                             need_image, &ini, &err)) {
            rc = cm_interrupted ? interrupted_exit() : cmd_fail(&err);
            goto out;
        }
        cm_info("%s: %dx%d -> %dx%d, input encoded in %.2f s", o.image, image.w, image.h, W, H,
                cm_time_now() - t0);
        job.init = &ini;
        if (mode == CMD_INPAINT && ini.repaint_pixels == 0)
            cm_warn("%s: the mask is all black: nothing to repaint, the output equals the input", o.mask);
        snprintf(extra, sizeof extra, "Denoising strength: %g", (double)job.strength);
        if (mode == CMD_INPAINT)
            snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", Mask blur: %d", o.mask_blur);
    }
    /* SDXL micro-conditioning that differs from the default (A1111 stores
     * none of it; only non-default values are recorded). */
    if ((job.orig_w && (job.orig_w != job.width || job.orig_h != job.height)))
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%sOriginal size: %dx%d",
                 extra[0] ? ", " : "", job.orig_w, job.orig_h);
    if (job.crop_top || job.crop_left)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%sCrop: %dx%d",
                 extra[0] ? ", " : "", job.crop_top, job.crop_left);
    if ((job.target_w && (job.target_w != job.width || job.target_h != job.height)))
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%sTarget size: %dx%d",
                 extra[0] ? ", " : "", job.target_w, job.target_h);
    const char *method = cmd_inpaint_method(&cm, mode);
    if (method) {
        cm_info("%s: inpaint method: %s", cmdname, method);
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%sInpaint method: %s",
                 extra[0] ? ", " : "", method);
    }
    /* bf16 images differ from float32 ones: record it so --from-png
     * makes the same image again */
    if (cm_precision_get() == CM_PREC_BF16)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), "%sPrecision: bf16",
                 extra[0] ? ", " : "");

    for (int i = 0; i < total; i++) {
        long long g = cmd_batch.next_index + i; /* global index: sharding, {index} */
        if (!cmd_batch_mine(g)) continue;
        job.seed = seed + (uint64_t)i;
        job.noise_row = noise.ndim == 4 && i < noise.shape[0] ? i : 0;
        cmd_image_info ii = {.prompt = job.prompt, .negative = job.negative, .seed = job.seed,
                             .n = i, .index = (int)g, .steps = job.steps, .cfg = job.cfg,
                             .sampler = df_sampler_name(job.sampler),
                             .sampler_label = df_sampler_a1111_name(job.sampler),
                             .schedule_label = job.karras ? "Karras" : NULL,
                             .width = job.width, .height = job.height,
                             .model = wt_model_stem(cm.m), .model_hash = wt_model_hash(cm.m),
                             .extra = extra[0] ? extra : NULL};
        char path[4096];
        if (cmd_output_path(o.output, &ii, path, sizeof path, &err)) {
            rc = cmd_fail(&err);
            break;
        }
        if (same_file(path, o.image) || same_file(path, o.mask)) {
            cm_error_set(&err, CM_ERR_USAGE, "%s: is the input %s: the input is never replaced (choose another -o)",
                         path, same_file(path, o.image) ? "image" : "mask");
            rc = cmd_fail(&err);
            break;
        }
        if (cmd_batch.skip_existing && access(path, F_OK) == 0) {
            if (o.json) cmd_batch_skipped_json(g, path, job.seed);
            cm_info("%s: exists, skipped (--skip-existing)", path);
            continue;
        }
        if (!o.overwrite && access(path, F_OK) == 0) {
            cm_error_set(&err, CM_ERR_IO, "%s: already exists (use --overwrite to replace it)", path);
            rc = cmd_fail(&err);
            break;
        }
        if (seed_random && i == 0) fprintf(stderr, "stipple: seed %llu\n", (unsigned long long)seed);
        cmd_result res;
        if (cmd_job_run(&cm, &cache, &job, &res, &err)) {
            rc = cm_interrupted ? interrupted_exit() : cmd_fail(&err);
            break;
        }
        char *params = cmd_parameters_text(&ii, &err);
        uint8_t *png = NULL;
        size_t png_n = 0;
        cm_png_text txt = {"parameters", params};
        cm_status st = params ? cm_png_encode(res.rgb, res.width, res.height, &txt, 1, &png, &png_n, &err)
                              : CM_ERR_NOMEM;
        if (!st) st = cm_file_write_atomic(path, png, png_n, o.overwrite, &err);
        cm_free(png);
        cm_free(res.rgb); /* the timings stay for the result line */
        res.rgb = NULL;
        if (st) {
            cm_free(params);
            rc = cmd_fail(&err);
            break;
        }
        if (o.json) {
            cmd_batch_result_json(g, path, job.seed, job.width, job.height, &res, params);
        } else {
            printf("%s\n", path);
        }
        fflush(stdout);
        cm_free(params);
        if (cm_interrupted) {
            rc = interrupted_exit();
            break;
        }
    }
out:
    cmd_cond_cache_release(&cache);
    cmd_init_release(&ini);
    if (loaded) cmd_models_put(&cm);
    cm_tensor_release(&noise);
    cm_image_release(&image);
    cm_image_release(&mask);
    return rc;
}

const char *cmd_builtin_model_path(void)
{
    static char path[4096];
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash) return NULL;
    *slash = 0;
    const char *cands[] = {"%s/../weights/builtin/stipple-builtin.safetensors",
                           "%s/../../weights/builtin/stipple-builtin.safetensors",
                           "%s/../share/stipple/stipple-builtin.safetensors"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        snprintf(path, sizeof path, cands[i], exe);
        if (access(path, R_OK) == 0) return path;
    }
    return NULL;
}
