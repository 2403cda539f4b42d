/* textenc_tokenizer.c — test case textenc_tokenizer (being written). */
#include "testutil.h"

TCase *tc_textenc_tokenizer(void) { return tu_tcase("textenc_tokenizer"); }
