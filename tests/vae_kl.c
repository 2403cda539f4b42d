/* vae_kl.c — test case vae_kl (being written). */
#include "testutil.h"

TCase *tc_vae_kl(void) { return tu_tcase("vae_kl"); }
