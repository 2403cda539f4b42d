/* sha256.c — placeholder. */
#include "weights_internal.h"

cm_status wt_sha256_file_hex10(const char *path, char out[16])
{
    (void)path;
    out[0] = 0;
    return CM_ERR_UNSUPPORTED;
}
