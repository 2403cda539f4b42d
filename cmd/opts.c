/* opts.c — a small table-driven option parser shared by the subcommands.
 *
 * Long options take their value as `--name VALUE` or `--name=VALUE`; short
 * ones as `-x VALUE`. Numbers are parsed strictly (the whole string, in
 * range, finite). Anything else is a usage error: one line, exit 2.
 */
#include "cmd.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int parse_value(const cmd_opt *o, const char *name, const char *v)
{
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case OPT_STR:
        *(const char **)o->dst = v;
        return 0;
    case OPT_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < o->min || x > o->max)
            return cmd_usage_error("%s: expected an integer in [%lld, %lld], got \"%s\"", name,
                                   (long long)o->min, (long long)o->max, v);
        *(int *)o->dst = (int)x;
        return 0;
    }
    case OPT_FLOAT: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x) || x < (double)o->min || x > (double)o->max)
            return cmd_usage_error("%s: expected a finite number in [%lld, %lld], got \"%s\"", name,
                                   (long long)o->min, (long long)o->max, v);
        *(float *)o->dst = (float)x;
        return 0;
    }
    case OPT_FLAG:
        *(int *)o->dst = 1;
        return 0;
    }
    return EXIT_USAGE;
}

int cmd_parse(int argc, char **argv, const cmd_opt *opts, const char *usage, char **pos, int *npos,
              int maxpos)
{
    *npos = 0;
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || !strcmp(a, "-") ||
            (a[1] >= '0' && a[1] <= '9')) {
            if (*npos >= maxpos)
                return cmd_usage_error("%s: unexpected argument \"%s\"", argv[0], a);
            pos[(*npos)++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            only_pos = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return -1;
        }
        const char *eq = NULL;
        size_t alen = strlen(a);
        if (a[1] == '-') {
            eq = strchr(a, '=');
            if (eq) alen = (size_t)(eq - a);
        }
        const cmd_opt *o = NULL;
        for (const cmd_opt *p = opts; p->name; p++) {
            if (a[1] == '-' && strlen(p->name) == alen - 2 && !strncmp(p->name, a + 2, alen - 2)) o = p;
            else if (a[1] != '-' && p->short_name && a[1] == p->short_name && a[2] == 0) o = p;
            if (o) break;
        }
        if (!o) return cmd_usage_error("%s: unknown option %.*s (see stipple %s --help)", argv[0], (int)alen, a, argv[0]);
        if (o->kind == OPT_FLAG) {
            if (eq) return cmd_usage_error("%s: option --%s takes no value", argv[0], o->name);
            parse_value(o, a, NULL);
            if (o->seen) *o->seen = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) return cmd_usage_error("%s: option %s needs a value", argv[0], a);
            v = argv[++i];
        }
        char nm[96];
        snprintf(nm, sizeof nm, "--%s", o->name);
        int r = parse_value(o, nm, v);
        if (r) return r;
        if (o->seen) *o->seen = 1;
    }
    return 0;
}
