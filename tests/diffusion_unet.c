/* diffusion_unet.c — test case diffusion_unet (being written). */
#include "testutil.h"

TCase *tc_diffusion_unet(void) { return tu_tcase("diffusion_unet"); }
