/* stubs.c — subcommands not yet written answer with a clear error.
 * Each moves to its own file as it is built. */
#include "cmd.h"

#include <stdio.h>

__attribute__((unused)) static int not_yet(const char *what)
{
    fprintf(stderr, "stipple: error: %s: not implemented yet\n", what);
    return EXIT_RUNTIME;
}

