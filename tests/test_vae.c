/* test_vae.c — the Check suite of vae/: one test case per concern. */
#include "testutil.h"

#include <stdlib.h>

TCase *tc_vae_kl(void);
TCase *tc_vae_taesd(void);

int main(void)
{
    Suite *s = suite_create("vae");
    suite_add_tcase(s, tc_vae_kl());
    suite_add_tcase(s, tc_vae_taesd());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
