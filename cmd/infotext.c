/* infotext.c — generation parameters read back as command-line options:
 *  - the A1111 "infotext" (PNG text chunk `parameters`) as AUTOMATIC1111
 *    writes it (modules/infotext_utils.py, parse_generation_parameters):
 *    prompt lines, an optional "Negative prompt:" line (and continuation
 *    lines), then one line of `Key: value` pairs separated by ", " where a
 *    value may be a JSON-quoted string; stipple and stable-diffusion.cpp
 *    write the same shape (sd.cpp: lower-case sampler names, `RNG: cuda`,
 *    `Version: stable-diffusion.cpp`);
 *  - ComfyUI's API `prompt` JSON (text chunk `prompt`) for the common graph
 *    KSampler <- CheckpointLoaderSimple, CLIPTextEncode (positive,
 *    negative), EmptyLatentImage;
 *  - one line of an A1111 "prompts from file" script file
 *    (scripts/prompts_from_file.py): a plain prompt, or `--key value` pairs
 *    split with POSIX shell quoting (shlex.split).
 * Everything becomes options appended to an argument vector, so the normal
 * option parser validates the values and later flags override them.
 */
#include "batch.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------- samplers */

int cmd_sampler_from_label(const char *label, const char **sampler, const char **schedule)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", label);
    size_t l = strlen(buf);
    while (l && buf[l - 1] == ' ') buf[--l] = 0;
    *schedule = NULL;
    if (l > 7 && !strcasecmp(buf + l - 7, " Karras")) {
        buf[l - 7] = 0;
        *schedule = "karras";
    }
    for (int k = DF_SAMPLER_DDIM; k <= DF_SAMPLER_LCM; k++) {
        if (!strcasecmp(buf, df_sampler_a1111_name((df_sampler_kind)k)) ||
            !strcmp(buf, df_sampler_name((df_sampler_kind)k))) {
            *sampler = df_sampler_name((df_sampler_kind)k);
            return 0;
        }
    }
    static const struct { const char *from, *to, *sched; } alias[] = {
        {"euler_ancestral", "euler_a", NULL}, /* ComfyUI */
        {"dpm++2m", "dpmpp_2m", NULL},        /* stable-diffusion.cpp */
        {"ddim_trailing", "ddim", "trailing"},
        {"k_euler_a", "euler_a", NULL},
        {"k_euler", "euler", NULL},
    };
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++)
        if (!strcasecmp(buf, alias[i].from)) {
            *sampler = alias[i].to;
            if (alias[i].sched) *schedule = alias[i].sched;
            return 0;
        }
    return -1;
}

/* ---------------------------------------------------------- A1111 infotext */

static int push2(cmd_args *a, const char *opt, const char *val)
{
    return cmd_args_push(a, opt) || cmd_args_push(a, val) ? -1 : 0;
}

/* The next `Key: value` pair of the parameters line at *p. Returns 0 at
 * the end, 1 with key/value filled, -1 on a malformed quoted value. */
static int next_pair(const char **p, char *key, size_t kcap, char *val, size_t vcap)
{
    const char *s = *p;
    while (*s == ' ' || *s == ',') s++;
    if (!*s) return 0;
    const char *colon = strchr(s, ':');
    if (!colon) return 0;
    size_t kl = (size_t)(colon - s);
    if (kl >= kcap) kl = kcap - 1;
    memcpy(key, s, kl);
    key[kl] = 0;
    s = colon + 1;
    while (*s == ' ') s++;
    size_t n = 0;
    if (*s == '"') { /* a JSON string: "…" with backslash escapes */
        s++;
        for (; *s && *s != '"'; s++) {
            if (*s == '\\' && s[1]) {
                s++;
                char c = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
                if (n + 1 < vcap) val[n++] = c;
            } else if (n + 1 < vcap) {
                val[n++] = *s;
            }
        }
        if (*s != '"') return -1;
        s++;
    } else {
        for (; *s && *s != ','; s++)
            if (n + 1 < vcap) val[n++] = *s;
        while (n && val[n - 1] == ' ') n--;
    }
    val[n] = 0;
    *p = s;
    return 1;
}

cm_status cmd_infotext_parse(const char *text, const char *cmdname, cmd_args *a, cm_error *err)
{
    size_t len = strlen(text);
    char *buf = malloc(len + 1), *prompt = malloc(len + 1), *neg = malloc(len + 1);
    cm_status st = CM_OK;
    if (!buf || !prompt || !neg) {
        st = cm_error_set(err, CM_ERR_NOMEM, "infotext: out of memory");
        goto out;
    }
    memcpy(buf, text, len + 1);
    /* the last line holds the parameters when it has "Steps: " */
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = 0;
    char *last = strrchr(buf, '\n');
    char *params = NULL, *body = buf;
    if (last && strstr(last + 1, "Steps: ")) {
        *last = 0;
        params = last + 1;
    } else if (!last && !strncmp(buf, "Steps: ", 7)) {
        params = buf; /* parameters only, empty prompt */
        body = NULL;
    }
    prompt[0] = neg[0] = 0;
    int in_neg = 0;
    if (body) {
        char *line = body;
        for (int first = 1; line; first = 0) {
            char *nl = strchr(line, '\n');
            if (nl) *nl = 0;
            if (!strncmp(line, "Negative prompt:", 16)) {
                in_neg = 1;
                line += 16;
                while (*line == ' ') line++;
                strcat(neg, line);
            } else if (in_neg) {
                strcat(neg, "\n");
                strcat(neg, line);
            } else {
                if (!first) strcat(prompt, "\n");
                strcat(prompt, line);
            }
            line = nl ? nl + 1 : NULL;
        }
    }
    if (push2(a, "-p", prompt) || push2(a, "-n", neg)) goto nomem;
    if (!params) goto out;

    int txt2img = !strcmp(cmdname, "txt2img"), inpaint = !strcmp(cmdname, "inpaint");
    int stipple = strstr(params, "Version: stipple") != NULL;
    int sdcpp = strstr(params, "stable-diffusion.cpp") != NULL;
    const char *rng = stipple || sdcpp ? NULL : "cuda"; /* A1111 default: GPU noise */
    char key[64], val[1024];
    const char *p = params;
    int r;
    while ((r = next_pair(&p, key, sizeof key, val, sizeof val)) == 1) {
        r = 0;
        if (!strcmp(key, "Steps")) r = push2(a, "--steps", val);
        else if (!strcmp(key, "CFG scale")) r = push2(a, "--cfg", val);
        else if (!strcmp(key, "Seed")) r = push2(a, "--seed", val);
        else if (!strcmp(key, "Clip skip")) r = push2(a, "--clip-skip", val);
        else if (!strcmp(key, "Precision") && stipple && !strcmp(val, "bf16")) r = push2(a, "--precision", val);
        else if (!strcmp(key, "Size")) {
            char *x = strchr(val, 'x');
            if (!x) {
                st = cm_error_set(err, CM_ERR_FORMAT, "infotext: Size: expected WxH, got \"%s\"", val);
                goto out;
            }
            *x = 0;
            r = push2(a, "-W", val) || push2(a, "-H", x + 1);
        } else if (!strcmp(key, "Sampler")) {
            const char *smp, *sch;
            if (cmd_sampler_from_label(val, &smp, &sch)) {
                st = cm_error_set(err, CM_ERR_FORMAT, "infotext: Sampler \"%s\" is not supported (DDIM, Euler, Euler a, DPM++ 2M, LCM)", val);
                goto out;
            }
            r = push2(a, "--sampler", smp) || (sch && push2(a, "--schedule", sch));
        } else if (!strcmp(key, "Schedule type") || !strcmp(key, "Schedule")) {
            if (!strcasecmp(val, "karras")) r = push2(a, "--schedule", "karras");
            else if (strcasecmp(val, "Automatic") && strcasecmp(val, "discrete"))
                cm_warn("infotext: schedule \"%s\" is not supported; the sampler's default is used", val);
        } else if (!strcmp(key, "RNG")) {
            if (!strcasecmp(val, "CPU")) rng = "cpu";
            else if (!strcasecmp(val, "GPU") || !strcasecmp(val, "cuda")) rng = "cuda";
            else {
                cm_warn("infotext: RNG \"%s\" is not reproduced; using cpu", val);
                rng = "cpu";
            }
        } else if ((!strcmp(key, "Eta") || !strcmp(key, "Eta DDIM")) && strtod(val, NULL) > 0) {
            r = push2(a, "--eta", val);
        } else if (!strcmp(key, "Denoising strength") && !txt2img) {
            r = push2(a, "--strength", val);
        } else if (!strcmp(key, "Mask blur") && inpaint) {
            r = push2(a, "--mask-blur", val);
        }
        if (r) goto nomem;
    }
    if (r < 0) {
        st = cm_error_set(err, CM_ERR_FORMAT, "infotext: unterminated quoted value of \"%s\"", key);
        goto out;
    }
    if (rng && push2(a, "--rng", rng)) goto nomem;
    goto out;
nomem:
    st = cm_error_set(err, CM_ERR_NOMEM, "infotext: out of memory");
out:
    free(buf);
    free(prompt);
    free(neg);
    return st;
}

/* ------------------------------------------------------------ ComfyUI JSON */

/* The node a link ["id", slot] points to. */
static const cJSON *comfy_link(const cJSON *graph, const cJSON *inputs, const char *name)
{
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(inputs, name);
    const cJSON *id = cJSON_IsArray(l) ? cJSON_GetArrayItem(l, 0) : NULL;
    if (cJSON_IsString(id)) return cJSON_GetObjectItemCaseSensitive(graph, id->valuestring);
    if (cJSON_IsNumber(id)) {
        char b[32];
        snprintf(b, sizeof b, "%d", id->valueint);
        return cJSON_GetObjectItemCaseSensitive(graph, b);
    }
    return NULL;
}

static const cJSON *node_inputs(const cJSON *node, const char *cls)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(node, "class_type");
    if (!cJSON_IsString(c) || (cls && strcmp(c->valuestring, cls))) return NULL;
    return cJSON_GetObjectItemCaseSensitive(node, "inputs");
}

static int push_num(cmd_args *a, const char *opt, const cJSON *in, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(in, key);
    if (!cJSON_IsNumber(v)) return 1;
    char b[64];
    if (v->valuedouble == (double)(long long)v->valuedouble) snprintf(b, sizeof b, "%lld", (long long)v->valuedouble);
    else snprintf(b, sizeof b, "%.9g", v->valuedouble);
    return push2(a, opt, b) ? -1 : 0;
}

cm_status cmd_infotext_comfy(const char *json, cmd_args *a, cm_error *err)
{
    cJSON *g = wt_json_parse(json, strlen(json), "ComfyUI prompt", err);
    if (!g) return err->status;
    cm_status st = CM_OK;
    const cJSON *ks = NULL, *node;
    int advanced = 0;
    cJSON_ArrayForEach(node, g) {
        if ((ks = node_inputs(node, "KSampler"))) break;
        if ((ks = node_inputs(node, "KSamplerAdvanced"))) {
            advanced = 1;
            break;
        }
    }
    if (!ks) {
        st = cm_error_set(err, CM_ERR_FORMAT, "ComfyUI prompt: no KSampler node (only the common KSampler graph is read)");
        goto out;
    }
    const cJSON *pos = node_inputs(comfy_link(g, ks, "positive"), "CLIPTextEncode");
    const cJSON *neg = node_inputs(comfy_link(g, ks, "negative"), "CLIPTextEncode");
    const cJSON *lat = node_inputs(comfy_link(g, ks, "latent_image"), "EmptyLatentImage");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(pos, "text");
    const cJSON *nt = cJSON_GetObjectItemCaseSensitive(neg, "text");
    if (!cJSON_IsString(pt)) {
        st = cm_error_set(err, CM_ERR_FORMAT, "ComfyUI prompt: the KSampler's positive input is not a CLIPTextEncode with a text");
        goto out;
    }
    if (push2(a, "-p", pt->valuestring) || push2(a, "-n", cJSON_IsString(nt) ? nt->valuestring : "") ||
        push_num(a, "--seed", ks, advanced ? "noise_seed" : "seed") < 0 || push_num(a, "--steps", ks, "steps") < 0 ||
        push_num(a, "--cfg", ks, "cfg") < 0 || (lat && (push_num(a, "-W", lat, "width") < 0 ||
                                                        push_num(a, "-H", lat, "height") < 0 ||
                                                        push_num(a, "--batch-size", lat, "batch_size") < 0)) ||
        push2(a, "--rng", "cpu"))
        goto nomem;
    const cJSON *sn = cJSON_GetObjectItemCaseSensitive(ks, "sampler_name");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(ks, "scheduler");
    if (cJSON_IsString(sn)) {
        const char *smp, *sch;
        if (cmd_sampler_from_label(sn->valuestring, &smp, &sch)) {
            st = cm_error_set(err, CM_ERR_FORMAT, "ComfyUI prompt: sampler \"%s\" is not supported (euler, euler_ancestral, dpmpp_2m, ddim, lcm)", sn->valuestring);
            goto out;
        }
        if (push2(a, "--sampler", smp)) goto nomem;
    }
    if (cJSON_IsString(sc)) {
        const char *s = sc->valuestring, *ours = !strcmp(s, "karras") ? "karras"
                                              : !strcmp(s, "sgm_uniform") ? "trailing"
                                              : !strcmp(s, "ddim_uniform") ? "leading" : NULL;
        if (ours && push2(a, "--schedule", ours)) goto nomem;
        if (!ours) cm_warn("ComfyUI prompt: scheduler \"%s\" is approximated by the sampler's default schedule", s);
    }
    goto out;
nomem:
    st = cm_error_set(err, CM_ERR_NOMEM, "ComfyUI prompt: out of memory");
out:
    cJSON_Delete(g);
    return st;
}

cm_status cmd_infotext_from_png(const char *path, const char *cmdname, cmd_args *a, cm_error *err)
{
    char *data = NULL, *text = NULL;
    size_t n = 0;
    cm_status st = cm_file_read_all(path, &data, &n, err);
    if (st) {
        cm_error_prefix(err, "--from-png");
        return st;
    }
    cm_error e2 = {0};
    if (cm_png_text_get(data, n, "parameters", &text, &e2) == CM_OK) {
        st = cmd_infotext_parse(text, cmdname, a, err);
    } else if (cm_png_text_get(data, n, "prompt", &text, &e2) == CM_OK) {
        st = cmd_infotext_comfy(text, a, err);
    } else {
        st = cm_error_set(err, CM_ERR_FORMAT, "--from-png %s: no generation parameters (no \"parameters\" or ComfyUI \"prompt\" text chunk)", path);
    }
    if (st && st != CM_ERR_NOMEM && !strstr(err->msg, path)) cm_error_prefix(err, "--from-png %s", path);
    cm_free(text);
    cm_free(data);
    return st;
}

/* ------------------------------------------------------- prompts from file */

/* shlex.split (POSIX mode, no comments): whitespace separates words;
 * '…' is literal; "…" keeps everything but \" \\ \$ \` escapes; a backslash
 * outside quotes escapes the next character. */
static cm_status shlex_split(const char *s, cmd_args *out, cm_error *err)
{
    size_t cap = strlen(s) + 1;
    char *w = malloc(cap);
    if (!w) return cm_error_set(err, CM_ERR_NOMEM, "prompts file: out of memory");
    cm_status st = CM_OK;
    while (*s) {
        while (*s && isspace((unsigned char)*s)) s++;
        if (!*s) break;
        size_t n = 0;
        while (*s && !isspace((unsigned char)*s)) {
            if (*s == '\'') {
                const char *e = strchr(s + 1, '\'');
                if (!e) {
                    st = cm_error_set(err, CM_ERR_USAGE, "prompts file: no closing quotation");
                    goto out;
                }
                memcpy(w + n, s + 1, (size_t)(e - s - 1));
                n += (size_t)(e - s - 1);
                s = e + 1;
            } else if (*s == '"') {
                for (s++; *s && *s != '"'; s++) {
                    if (*s == '\\' && (s[1] == '"' || s[1] == '\\' || s[1] == '$' || s[1] == '`')) s++;
                    w[n++] = *s;
                }
                if (*s != '"') {
                    st = cm_error_set(err, CM_ERR_USAGE, "prompts file: no closing quotation");
                    goto out;
                }
                s++;
            } else if (*s == '\\') {
                s++;
                if (!*s) {
                    st = cm_error_set(err, CM_ERR_USAGE, "prompts file: no escaped character");
                    goto out;
                }
                w[n++] = *s++;
            } else {
                w[n++] = *s++;
            }
        }
        w[n] = 0;
        if (cmd_args_push(out, w)) {
            st = cm_error_set(err, CM_ERR_NOMEM, "prompts file: out of memory");
            goto out;
        }
    }
out:
    free(w);
    return st;
}

cm_status cmd_prompt_line(const char *line, cmd_args *a, cm_error *err)
{
    if (!strstr(line, "--")) return push2(a, "-p", line) ? cm_error_set(err, CM_ERR_NOMEM, "out of memory") : CM_OK;
    static const struct { const char *key, *opt; } map[] = {
        {"prompt", "-p"}, {"negative_prompt", "-n"}, {"seed", "--seed"}, {"steps", "--steps"},
        {"cfg_scale", "--cfg"}, {"width", "-W"}, {"height", "-H"}, {"batch_size", "--batch-size"},
        {"n_iter", "--batch-count"}, {"sd_model", "-m"}, {"sampler_name", "--sampler"},
    };
    /* accepted by A1111, no effect here */
    static const char *ignored[] = {"outpath_samples", "outpath_grids", "prompt_for_display", "styles",
                                    "subseed_strength", "subseed", "seed_resize_from_h", "seed_resize_from_w",
                                    "sampler_index", "restore_faces", "tiling", "do_not_save_samples",
                                    "do_not_save_grid", NULL};
    cmd_args w = {0};
    cm_status st = shlex_split(line, &w, err);
    for (int i = 0; !st && i < w.n;) {
        const char *arg = w.v[i];
        if (strncmp(arg, "--", 2)) {
            st = cm_error_set(err, CM_ERR_USAGE, "must start with \"--\": %s", arg);
            break;
        }
        if (i + 1 >= w.n) {
            st = cm_error_set(err, CM_ERR_USAGE, "missing argument for command line option %s", arg);
            break;
        }
        const char *tag = arg + 2;
        if (!strcmp(tag, "prompt") || !strcmp(tag, "negative_prompt")) {
            /* words up to the next --option join with spaces, as A1111 */
            size_t len = 0;
            int j = i + 1;
            for (; j < w.n && (j == i + 1 || strncmp(w.v[j], "--", 2)); j++) len += strlen(w.v[j]) + 1;
            char *p = malloc(len + 1);
            if (!p) {
                st = cm_error_set(err, CM_ERR_NOMEM, "out of memory");
                break;
            }
            p[0] = 0;
            for (int k = i + 1; k < j; k++) {
                if (k > i + 1) strcat(p, " ");
                strcat(p, w.v[k]);
            }
            int r = push2(a, tag[0] == 'p' ? "-p" : "-n", p);
            free(p);
            if (r) st = cm_error_set(err, CM_ERR_NOMEM, "out of memory");
            i = j;
            continue;
        }
        const char *opt = NULL;
        for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
            if (!strcmp(tag, map[k].key)) opt = map[k].opt;
        int ign = 0;
        for (int k = 0; ignored[k]; k++) ign |= !strcmp(tag, ignored[k]);
        if (!opt && !ign) {
            st = cm_error_set(err, CM_ERR_USAGE, "unknown commandline option: %s", arg);
            break;
        }
        if (ign) {
            cm_warn("prompts file: %s is ignored", arg);
        } else if (!strcmp(opt, "--sampler")) {
            const char *smp, *sch;
            if (cmd_sampler_from_label(w.v[i + 1], &smp, &sch)) {
                st = cm_error_set(err, CM_ERR_USAGE, "--sampler_name \"%s\" is not supported (DDIM, Euler, Euler a, DPM++ 2M, LCM)", w.v[i + 1]);
                break;
            }
            if (push2(a, "--sampler", smp) || (sch && push2(a, "--schedule", sch)))
                st = cm_error_set(err, CM_ERR_NOMEM, "out of memory");
        } else if (push2(a, opt, w.v[i + 1])) {
            st = cm_error_set(err, CM_ERR_NOMEM, "out of memory");
        }
        i += 2;
    }
    cmd_args_free(&w);
    return st;
}
