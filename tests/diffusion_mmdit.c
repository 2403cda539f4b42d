/* diffusion_mmdit.c — test case diffusion_mmdit (placeholder, filled below). */
#include "testutil.h"

TCase *tc_diffusion_mmdit(void)
{
    TCase *tc = tu_tcase("diffusion_mmdit");
    return tc;
}
