/* fuzz_npy.c — libFuzzer target for the .npy reader (common/npy.c,
 * cm_npy_read). The input is handed over as a file (a memfd seen through
 * /proc/self/fd, so no disk writes): it must either be refused with a
 * message or give a float32 tensor whose element count matches its shape
 * (every element is read; ASan checks the bounds).
 * Seeds: tests/fuzz/seeds_npy/.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz.npy", 0);
    if (fd < 0) return 0;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) break;
        off += (size_t)w;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    cm_error err = {0};
    cm_tensor t = {0};
    if (cm_npy_read(path, &t, &err) != CM_OK) {
        CM_ASSERT(err.status != CM_OK && err.msg[0]);
        CM_ASSERT(t.data == NULL);
    } else {
        int64_t n = cm_tensor_numel(&t);
        CM_ASSERT(n >= 0 && t.ndim >= 0 && t.ndim <= CM_MAX_DIMS);
        CM_ASSERT((uint64_t)n * 4 <= size);
        volatile float sink = 0;
        for (int64_t i = 0; i < n; i++) sink += t.data[i];
        (void)sink;
    }
    cm_tensor_release(&t);
    close(fd);
    return 0;
}
