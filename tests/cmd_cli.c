/* cmd_cli.c — test case cmd_cli (being written). */
#include "testutil.h"

TCase *tc_cmd_cli(void) { return tu_tcase("cmd_cli"); }
