/* textenc_prompt.c — test case textenc_prompt (being written). */
#include "testutil.h"

TCase *tc_textenc_prompt(void) { return tu_tcase("textenc_prompt"); }
