/* test_cmd.c — the Check suite of cmd/: one test case per concern. */
#include "testutil.h"

#include <stdlib.h>

TCase *tc_cmd_cli(void);
TCase *tc_cmd_bad(void);
TCase *tc_cmd_img2img(void);
TCase *tc_cmd_jobs(void);
TCase *tc_cmd_sd3(void);
TCase *tc_builtin_agree(void);

int main(void)
{
    Suite *s = suite_create("cmd");
    suite_add_tcase(s, tc_cmd_cli());
    suite_add_tcase(s, tc_cmd_bad());
    suite_add_tcase(s, tc_cmd_img2img());
    suite_add_tcase(s, tc_cmd_jobs());
    suite_add_tcase(s, tc_cmd_sd3());
    suite_add_tcase(s, tc_builtin_agree());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
