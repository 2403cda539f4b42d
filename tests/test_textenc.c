/* test_textenc.c — the Check suite of textenc/: one test case per concern. */
#include "testutil.h"

#include <stdlib.h>

TCase *tc_textenc_tokenizer(void);
TCase *tc_textenc_prompt(void);
TCase *tc_textenc_clip(void);
TCase *tc_textenc_t5(void);

int main(void)
{
    Suite *s = suite_create("textenc");
    suite_add_tcase(s, tc_textenc_tokenizer());
    suite_add_tcase(s, tc_textenc_prompt());
    suite_add_tcase(s, tc_textenc_clip());
    suite_add_tcase(s, tc_textenc_t5());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
