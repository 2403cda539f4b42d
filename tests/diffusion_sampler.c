/* diffusion_sampler.c — test case diffusion_sampler (being written). */
#include "testutil.h"

TCase *tc_diffusion_sampler(void) { return tu_tcase("diffusion_sampler"); }
