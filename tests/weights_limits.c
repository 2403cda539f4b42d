/* weights_limits.c — test case weights_limits (being written). */
#include "testutil.h"

TCase *tc_weights_limits(void) { return tu_tcase("weights_limits"); }
