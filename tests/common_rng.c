/* common_rng.c — test case common_rng (being written). */
#include "testutil.h"

TCase *tc_common_rng(void) { return tu_tcase("common_rng"); }
