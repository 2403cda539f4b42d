/* weights_core.c — test case weights_core (being written). */
#include "testutil.h"

TCase *tc_weights_core(void) { return tu_tcase("weights_core"); }
