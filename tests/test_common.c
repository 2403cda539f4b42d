/* test_common.c — the Check suite of common/: one test case per concern. */
#include "testutil.h"

#include <stdlib.h>

TCase *tc_common_core(void);
TCase *tc_common_io(void);
TCase *tc_common_rng(void);
TCase *tc_common_kernels(void);

int main(void)
{
    Suite *s = suite_create("common");
    suite_add_tcase(s, tc_common_core());
    suite_add_tcase(s, tc_common_io());
    suite_add_tcase(s, tc_common_rng());
    suite_add_tcase(s, tc_common_kernels());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
