/* fuzz_config.c — libFuzzer target for model configs: the strict JSON
 * parser (wt_json_parse), the config accessors, the scheduler config
 * (df_schedule_init), and a whole model whose architecture is the input
 * (a safetensors file with no tensors and __metadata__["stipple.config"]
 * = the input, opened through a memfd with wt_model_open, then the UNet,
 * VAE and text-encoder builders, which read their config sections before
 * they look for tensors). Anything must end in a message, never a crash
 * or an allocation sized by an unchecked number.
 * Seeds: tests/fuzz/seeds_config/ (diffusers config.json files and
 * stipple.config objects).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "diffusion.h"
#include "textenc.h"
#include "vae.h"
#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Walk every value through the accessors the builders use. */
static void touch(const cJSON *obj, int depth)
{
    if (!obj || depth > 4) return;
    for (const cJSON *c = obj->child; c; c = c->next) {
        if (!c->string) continue;
        (void)wt_cfg_num(obj, c->string, 0);
        (void)wt_cfg_int(obj, c->string, 0);
        (void)wt_cfg_str(obj, c->string, "");
        int n = wt_cfg_len(obj, c->string);
        for (int i = 0; i < n && i < 16; i++) (void)wt_cfg_int_at(obj, c->string, i, 0);
        if (cJSON_IsObject(c)) touch(c, depth + 1);
    }
}

/* safetensors bytes: header {"__metadata__": {"stipple.config": input}}. */
static char *model_bytes(const uint8_t *data, size_t size, size_t *out_n)
{
    char *cfg = malloc(size + 1);
    if (!cfg) return NULL;
    memcpy(cfg, data, size);
    cfg[size] = 0;
    cJSON *hdr = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(hdr, "__metadata__");
    cJSON_AddStringToObject(meta, "stipple.config", cfg);
    free(cfg);
    char *js = cJSON_PrintUnformatted(hdr);
    cJSON_Delete(hdr);
    if (!js) return NULL;
    size_t hl = strlen(js), pad = (8 - hl % 8) % 8;
    char *buf = malloc(8 + hl + pad);
    if (buf) {
        uint64_t L = hl + pad;
        memcpy(buf, &L, 8);
        memcpy(buf + 8, js, hl);
        memset(buf + 8 + hl, ' ', pad);
        *out_n = 8 + hl + pad;
    }
    free(js);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cm_error err = {0};
    cJSON *j = wt_json_parse((const char *)data, size, "fuzz config", &err);
    if (!j) {
        CM_ASSERT(err.status != CM_OK && err.msg[0]);
        return 0;
    }
    touch(j, 0);
    df_schedule s;
    memset(&s, 0, sizeof s);
    const cJSON *sch = cJSON_IsObject(cJSON_GetObjectItem(j, "scheduler")) ? cJSON_GetObjectItem(j, "scheduler") : j;
    if (df_schedule_init(&s, sch, &err) == CM_OK) {
        CM_ASSERT(s.n > 0 && s.alphas_cumprod);
        df_schedule_release(&s);
    }
    cJSON_Delete(j);
    if (memchr(data, 0, size)) return 0; /* a C string from here on */

    size_t n = 0;
    char *bytes = model_bytes(data, size, &n);
    if (!bytes) return 0;
    int fd = memfd_create("fuzz.safetensors", 0);
    if (fd >= 0 && write(fd, bytes, n) == (ssize_t)n) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        cm_error e = {0};
        wt_model *m = wt_model_open(path, &e);
        if (m) {
            touch(wt_model_config(m), 0);
            cm_error e2 = {0};
            df_unet_free(df_unet_create(m, &e2));
            vae_free(vae_create(m, &e2));
            te_encoder_free(te_encoder_create(m, &e2));
            wt_model_close(m);
        } else {
            CM_ASSERT(e.status != CM_OK && e.msg[0]);
        }
    }
    if (fd >= 0) close(fd);
    free(bytes);
    return 0;
}
