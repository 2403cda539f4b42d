/* common_kernels.c — test case common_kernels (being written). */
#include "testutil.h"

TCase *tc_common_kernels(void) { return tu_tcase("common_kernels"); }
