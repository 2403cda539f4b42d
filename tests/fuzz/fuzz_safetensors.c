/* fuzz_safetensors.c — libFuzzer target for the safetensors header parser
 * (weights/safetensors.c via wt_file_open_mem). Any input must either be
 * refused with a message or give views that lie inside the input: every
 * view's first and last element are read (ASan checks the bounds) and the
 * stipple.config metadata, when present, goes through the strict JSON
 * parser. Seeds: tests/fuzz/seeds_safetensors/.
 */
#include <stdint.h>
#include <string.h>

#include "weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cm_error err = {0};
    wt_file *f = wt_file_open_mem(data, size, "fuzz", &err);
    if (!f) {
        CM_ASSERT(err.status != CM_OK && err.msg[0]);
        return 0;
    }
    volatile float sink = 0;
    for (int i = 0; i < wt_file_count(f); i++) {
        const cm_wview *v = wt_file_view_at(f, i);
        CM_ASSERT(wt_file_find(f, wt_file_name_at(f, i)) == v);
        int64_t n = cm_wview_numel(v);
        if (n > 0 && (v->dtype == CM_F32 || v->dtype == CM_F16 || v->dtype == CM_BF16)) {
            sink += cm_wview_get(v, 0);
            sink += cm_wview_get(v, n - 1);
        } else if (n > 0) {
            size_t es = cm_dtype_size(v->dtype);
            const uint8_t *p = v->data;
            sink += (float)p[0] + (float)p[(size_t)n * es - 1];
        }
    }
    (void)sink;
    const char *cfg = wt_file_metadata(f, "stipple.config");
    if (cfg) {
        cJSON *j = wt_json_parse(cfg, strlen(cfg), "fuzz: stipple.config", &err);
        cJSON_Delete(j);
    }
    wt_file_close(f);
    return 0;
}
