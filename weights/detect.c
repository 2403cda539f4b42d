/* detect.c — placeholder: family detection for checkpoints without
 * stipple.config is being written. */
#include "weights_internal.h"

cm_status wt_detect_config(const wt_model *m, cJSON **config, cm_error *err)
{
    *config = NULL;
    return cm_error_set(err, CM_ERR_UNSUPPORTED, "%s: cannot tell the model family (detection not yet implemented)",
                        wt_model_path(m));
}
