/* error.c — status codes, the one-line error record, logging and progress.
 *
 * Messages are kept to one line (newlines become spaces) because cmd/
 * prints them as `stipple: error: <what>: <why>`. Logging and progress go
 * to stderr only.
 */
#include "common.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

volatile int cm_interrupted = 0;

static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
}

cm_status cm_error_set(cm_error *err, cm_status st, const char *fmt, ...)
{
    if (!err) return st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    one_line(err->msg);
    err->status = st;
    return st;
}

cm_status cm_error_prefix(cm_error *err, const char *fmt, ...)
{
    if (!err) return CM_ERR_FORMAT;
    char pre[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t k = strlen(pre);
    if (k > sizeof err->msg - 3) k = sizeof err->msg - 3;
    memcpy(err->msg, pre, k);
    err->msg[k] = ':';
    err->msg[k + 1] = ' ';
    size_t room = sizeof err->msg - k - 3;
    size_t ol = strlen(old);
    if (ol > room) ol = room;
    memcpy(err->msg + k + 2, old, ol);
    err->msg[k + 2 + ol] = 0;
    one_line(err->msg);
    return err->status;
}

void cm_error_clear(cm_error *err)
{
    if (!err) return;
    err->status = CM_OK;
    err->msg[0] = 0;
}

const char *cm_status_str(cm_status st)
{
    switch (st) {
    case CM_OK: return "ok";
    case CM_ERR_IO: return "i/o error";
    case CM_ERR_FORMAT: return "bad format";
    case CM_ERR_NOMEM: return "out of memory";
    case CM_ERR_USAGE: return "usage error";
    case CM_ERR_UNSUPPORTED: return "unsupported";
    case CM_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}

void cm_assert_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "stipple: internal error: %s:%d: assertion failed: %s\n", file, line, what);
    abort();
}

/* ---------------------------------------------------------------- logging */

static cm_log_level g_level = CM_LOG_WARN;

void cm_log_set_level(cm_log_level lvl) { g_level = lvl; }
cm_log_level cm_log_get_level(void) { return g_level; }

void cm_log(cm_log_level lvl, const char *fmt, ...)
{
    if (lvl > g_level) return;
    static const char *tag[] = {"error", "warning", "info", "debug"};
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    one_line(buf);
    fprintf(stderr, "stipple: %s: %s\n", tag[lvl], buf);
}

/* --------------------------------------------------------------- progress */

double cm_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cm_progress_begin(cm_progress *p, const char *label, int total, int quiet)
{
    p->label = label;
    p->total = total;
    p->done = 0;
    p->quiet = quiet;
    p->is_tty = isatty(2);
    p->t_start = cm_time_now();
}

void cm_progress_step(cm_progress *p)
{
    p->done++;
    if (p->quiet) return;
    double el = cm_time_now() - p->t_start;
    if (p->is_tty) {
        int width = 30, fill = p->total > 0 ? width * p->done / p->total : width;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r%s [%s] %d/%d %.1fs", p->label, bar, p->done, p->total, el);
    } else {
        fprintf(stderr, "%s %d/%d %.2fs\n", p->label, p->done, p->total, el);
    }
    fflush(stderr);
}

void cm_progress_end(cm_progress *p)
{
    if (!p->quiet && p->is_tty) fputc('\n', stderr);
}
