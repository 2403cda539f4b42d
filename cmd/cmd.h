/* cmd.h — internals of the stipple program (cmd/ only). */
#ifndef STIPPLE_CMD_H
#define STIPPLE_CMD_H

#include "common.h"

/* Exit codes (DESIGN.md §4). */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_SIGINT = 130, EXIT_SIGTERM = 143 };

/* Print `stipple: error: <msg>` (one line) and return the exit code that
 * matches the status. */
int cmd_fail(const cm_error *err);
int cmd_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Subcommands: argc/argv start at the subcommand name. */
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_encode(int argc, char **argv);
int cmd_generate(int argc, char **argv); /* txt2img, img2img, inpaint */
int cmd_jobs(int argc, char **argv);

/* The built-in model's path (next to the binary or in the install prefix),
 * or NULL when not found. */
const char *cmd_builtin_model_path(void);

#endif
