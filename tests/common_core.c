/* common_core.c — test case common_core (being written). */
#include "testutil.h"

TCase *tc_common_core(void) { return tu_tcase("common_core"); }
