/* diffusers.c — placeholder: diffusers folders are being written. */
#include "weights_internal.h"

cm_status wt_diffusers_open(wt_model *m, const char *dir, cm_error *err)
{
    (void)m;
    return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: diffusers folders not yet supported", dir);
}
