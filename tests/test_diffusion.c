/* test_diffusion.c — the Check suite of diffusion/: one test case per concern. */
#include "testutil.h"

#include <stdlib.h>

TCase *tc_diffusion_unet(void);
TCase *tc_diffusion_sampler(void);
TCase *tc_diffusion_mmdit(void);

int main(void)
{
    Suite *s = suite_create("diffusion");
    suite_add_tcase(s, tc_diffusion_unet());
    suite_add_tcase(s, tc_diffusion_sampler());
    suite_add_tcase(s, tc_diffusion_mmdit());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
