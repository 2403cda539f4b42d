/* main.c — the stipple program: subcommand dispatch, --help, --version,
 * exit codes. Only cmd/ prints to stdout, exits or parses arguments. */
#include "cmd.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *usage_text =
    "usage: stipple <command> [options]\n"
    "\n"
    "Text-to-image diffusion on the CPU.\n"
    "\n"
    "commands:\n"
    "  txt2img    generate images from a prompt\n"
    "  img2img    transform an image guided by a prompt\n"
    "  inpaint    repaint the masked part of an image\n"
    "  tokenize   print the CLIP token ids of a prompt\n"
    "  encode     write the text conditioning of a prompt as .npy\n"
    "  info       describe a model file or folder\n"
    "  jobs       run JSON-lines jobs from stdin with one model load\n"
    "\n"
    "Run `stipple <command> --help` for the options of a command.\n"
    "Exit status: 0 success, 1 runtime failure, 2 usage error, 130 interrupted.\n";

char cmd_last_error[CMD_LAST_ERROR_CAP];

int cmd_fail(const cm_error *err)
{
    snprintf(cmd_last_error, sizeof cmd_last_error, "%s", err->msg[0] ? err->msg : cm_status_str(err->status));
    fprintf(stderr, "stipple: error: %s\n", err->msg[0] ? err->msg : cm_status_str(err->status));
    switch (err->status) {
    case CM_OK: return EXIT_OK;
    case CM_ERR_USAGE: return EXIT_USAGE;
    case CM_ERR_INTERRUPTED: return EXIT_SIGINT;
    default: return EXIT_RUNTIME;
    }
}

int cmd_usage_error(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++)
        if (*p == '\n') *p = ' ';
    snprintf(cmd_last_error, sizeof cmd_last_error, "%s", buf);
    fprintf(stderr, "stipple: error: %s\n", buf);
    return EXIT_USAGE;
}

static const struct {
    const char *name;
    int (*fn)(int, char **);
} commands[] = {
    {"info", cmd_info},
    {"tokenize", cmd_tokenize},
    {"encode", cmd_encode},
    {"txt2img", cmd_generate},
    {"img2img", cmd_generate},
    {"inpaint", cmd_generate},
    {"jobs", cmd_jobs},
};

/* ------------------------------------------------------- process setup */

/* STIPPLE_ALLOC_COUNT=1: print the number of cm_alloc calls at exit (to
 * size the allocation-failure sweep of tests/cmd_bad.c). */
static void print_alloc_count(void)
{
    fprintf(stderr, "stipple: allocations: %ld\n", cm_alloc_count());
}

/* Faults the program must survive as a clean error rather than a signal:
 *  - SIGXFSZ (a file-size limit, `ulimit -f`): ignored, so the write fails
 *    with EFBIG and cm_file_write_atomic removes its temporary file;
 *  - SIGPIPE (stdout closed early): ignored, writes fail with EPIPE.
 * Test hooks (environment): STIPPLE_FAIL_ALLOC=N makes the Nth allocation
 * fail (cm_alloc_fail_at), STIPPLE_ALLOC_COUNT=1 reports the count; both
 * count the allocations that carry an error record (not kernel scratch). */
static void process_setup(void)
{
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    const char *fa = getenv("STIPPLE_FAIL_ALLOC");
    const char *ac = getenv("STIPPLE_ALLOC_COUNT");
    /* Kernel scratch (no error record) asserts on failure: the hooks count
     * and fail the recoverable allocations only. */
    if ((fa && *fa) || (ac && *ac && strcmp(ac, "0"))) cm_alloc_fail_fallible_only(1);
    if (fa && *fa) cm_alloc_fail_at(strtol(fa, NULL, 10));
    else if (ac && *ac && strcmp(ac, "0")) cm_alloc_fail_at(0); /* count from here */
    if (ac && *ac && strcmp(ac, "0")) atexit(print_alloc_count);
}

int main(int argc, char **argv)
{
    process_setup();
    if (argc < 2) {
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    const char *c = argv[1];
    if (!strcmp(c, "--help") || !strcmp(c, "-h") || !strcmp(c, "help")) {
        fputs(usage_text, stdout);
        return EXIT_OK;
    }
    if (!strcmp(c, "--version")) {
        printf("stipple %s\n", STIPPLE_VERSION);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(c, commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    if (c[0] == '-') return cmd_usage_error("unknown option %s (a command comes first; see stipple --help)", c);
    return cmd_usage_error("unknown command \"%s\" (see stipple --help)", c);
}
