/* test_weights.c — the Check suite of weights/: one test case per concern. */
#include "testutil.h"

#include <stdlib.h>

TCase *tc_weights_core(void);
TCase *tc_weights_limits(void);

int main(void)
{
    Suite *s = suite_create("weights");
    suite_add_tcase(s, tc_weights_core());
    suite_add_tcase(s, tc_weights_limits());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
