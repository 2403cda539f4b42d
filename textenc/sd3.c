/* sd3.c placeholder */
#include "textenc_internal.h"
