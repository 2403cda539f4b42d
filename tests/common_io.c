/* common_io.c — test case common_io (being written). */
#include "testutil.h"

TCase *tc_common_io(void) { return tu_tcase("common_io"); }
