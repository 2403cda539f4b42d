/* hashcache.c — a small on-disk cache of model-file hashes.
 *
 * A1111's "Model hash" is the SHA-256 of the whole checkpoint: 2 GB for
 * SD 1.5, 7 GB for SDXL, seconds to tens of seconds on every run. Like
 * A1111's cache.json, we remember the hash of a file keyed by its real
 * path, size, modification time and inode, so only the first run over a
 * file pays. The cache is a tab-separated text file:
 *
 *   <hex10> \t <size> \t <mtime_ns> \t <inode> \t <real path>
 *
 * in $STIPPLE_CACHE_DIR, else $XDG_CACHE_HOME/stipple, else
 * ~/.cache/stipple (STIPPLE_CACHE_DIR set to the empty string disables
 * it). Any problem with the cache (unwritable folder, garbled line) only
 * means the hash is computed again: it never fails a run.
 */
#include "weights_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int cache_path(char *out, size_t cap)
{
    const char *d = getenv("STIPPLE_CACHE_DIR");
    if (d) {
        if (!*d) return 0;
        snprintf(out, cap, "%s/model-hashes.tsv", d);
        return 1;
    }
    const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    if (x && *x) snprintf(out, cap, "%s/stipple/model-hashes.tsv", x);
    else if (h && *h) snprintf(out, cap, "%s/.cache/stipple/model-hashes.tsv", h);
    else return 0;
    return 1;
}

typedef struct {
    char real[PATH_MAX];
    unsigned long long size, mtime, ino;
} file_key;

static int key_of(const char *path, file_key *k)
{
    struct stat sb;
    if (!realpath(path, k->real) || stat(k->real, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    k->size = (unsigned long long)sb.st_size;
    k->mtime = (unsigned long long)sb.st_mtim.tv_sec * 1000000000ull + (unsigned long long)sb.st_mtim.tv_nsec;
    k->ino = (unsigned long long)sb.st_ino;
    return 1;
}

int wt_hash_cache_lookup(const char *path, char out[16])
{
    char cp[PATH_MAX + 64];
    file_key k;
    if (!cache_path(cp, sizeof cp) || !key_of(path, &k)) return 0;
    FILE *f = fopen(cp, "r");
    if (!f) return 0;
    char line[PATH_MAX + 128];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        char hex[16], p[PATH_MAX];
        unsigned long long s, m, i;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%15[0-9a-f]\t%llu\t%llu\t%llu\t", hex, &s, &m, &i) != 4) continue;
        const char *tab = line;
        for (int t = 0; t < 4 && tab; t++) tab = strchr(tab, '\t') ? strchr(tab, '\t') + 1 : NULL;
        if (!tab || strlen(hex) != 10) continue;
        snprintf(p, sizeof p, "%s", tab);
        if (s == k.size && m == k.mtime && i == k.ino && !strcmp(p, k.real)) {
            memcpy(out, hex, 11); /* the last matching line wins */
            found = 1;
        }
    }
    fclose(f);
    return found;
}

void wt_hash_cache_store(const char *path, const char *hex10)
{
    char cp[PATH_MAX + 64];
    file_key k;
    if (!cache_path(cp, sizeof cp) || !key_of(path, &k)) return;
    /* Create the folder (one level below an existing parent is enough for
     * ~/.cache/stipple; a deeper missing path just disables the cache). */
    char dir[PATH_MAX + 64];
    snprintf(dir, sizeof dir, "%s", cp);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) return;
    }
    FILE *f = fopen(cp, "a");
    if (!f) return;
    /* One short line per append: concurrent runs interleave whole lines. */
    fprintf(f, "%s\t%llu\t%llu\t%llu\t%s\n", hex10, k.size, k.mtime, k.ino, k.real);
    fclose(f);
}
