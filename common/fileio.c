/* fileio.c — whole-file reads and atomic writes.
 *
 * An output file is written to a temporary file in the same folder,
 * fsync'd, then renamed over the target (or linked, when the target must
 * not be replaced, so that an existing image is never overwritten even in
 * a race). On any failure the temporary file is removed: nothing is left
 * half-written.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

cm_status cm_file_read_all(const char *path, char **data, size_t *n, cm_error *err)
{
    *data = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return cm_error_set(err, CM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return cm_error_set(err, CM_ERR_IO, "%s: not a regular file", path);
    }
    size_t size = (size_t)sb.st_size;
    char *buf = cm_alloc(size + 1, path, err);
    if (!buf) {
        close(fd);
        return CM_ERR_NOMEM;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            close(fd);
            cm_free(buf);
            return cm_error_set(err, CM_ERR_IO, "%s: read failed: %s", path, r < 0 ? strerror(e) : "file shrank");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = 0;
    *data = buf;
    *n = size;
    return CM_OK;
}

int cm_write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = ENOSPC;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

cm_status cm_file_write_atomic(const char *path, const void *data, size_t n, int overwrite,
                               cm_error *err)
{
    size_t len = strlen(path);
    char *tmp = cm_alloc(len + 32, "temporary name", err);
    if (!tmp) return CM_ERR_NOMEM;
    /* Temporary name in the same folder: ".<name>.tmp-XXXXXX", the name cut
     * to 200 bytes so that a valid long name (up to NAME_MAX, 255) still
     * leaves a valid temporary one. */
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path) + 1 : 0;
    memcpy(tmp, path, dirlen);
    snprintf(tmp + dirlen, len + 32 - dirlen, ".%.200s.tmp-XXXXXX", path + dirlen);
    if (!overwrite && access(path, F_OK) == 0) {
        cm_free(tmp);
        return cm_error_set(err, CM_ERR_IO, "%s: already exists (use --overwrite to replace it)", path);
    }
    int fd = mkstemp(tmp);
    if (fd < 0) {
        cm_status st = cm_error_set(err, CM_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        cm_free(tmp);
        return st;
    }
    fchmod(fd, 0644 & ~(mode_t)0); /* mkstemp makes 0600; images are for sharing */
    if (cm_write_all(fd, data, n) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        cm_free(tmp);
        return cm_error_set(err, CM_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        cm_free(tmp);
        return cm_error_set(err, CM_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    int r;
    if (overwrite) {
        r = rename(tmp, path);
    } else {
        /* never replaces: fails with EEXIST if the target appeared meanwhile */
        r = renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE);
        if (r != 0 && (errno == EINVAL || errno == ENOSYS)) { /* fs without it: link */
            r = link(tmp, path);
            if (r == 0) unlink(tmp);
        }
    }
    if (r != 0) {
        int e = errno;
        unlink(tmp);
        cm_free(tmp);
        if (e == EEXIST)
            return cm_error_set(err, CM_ERR_IO, "%s: already exists (use --overwrite to replace it)", path);
        return cm_error_set(err, CM_ERR_IO, "%s: cannot write: %s", path, strerror(e));
    }
    cm_free(tmp);
    /* make the new directory entry durable too (best effort) */
    char *dir = cm_alloc(dirlen + 2, "folder name", NULL);
    if (dir) {
        if (dirlen) memcpy(dir, path, dirlen);
        else dir[dirlen++] = '.';
        dir[dirlen] = 0;
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        cm_free(dir);
    }
    return CM_OK;
}
