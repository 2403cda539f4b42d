/* textenc_clip.c — test case textenc_clip (being written). */
#include "testutil.h"

TCase *tc_textenc_clip(void) { return tu_tcase("textenc_clip"); }
