/* testutil.h — helpers shared by the Check suites: test data paths, golden
 * tensors from safetensors files, and comparisons that print the first
 * mismatch. */
#ifndef STIPPLE_TESTUTIL_H
#define STIPPLE_TESTUTIL_H

#include <check.h>

#include "common.h"
#include "weights.h"

/* Path of a file under tests/data (rotating static buffers: valid for the
 * next 8 calls). */
const char *tu_data(const char *rel);
/* Path of the built stipple binary and the build's scratch folder. */
const char *tu_stipple(void);
const char *tu_tmpdir(void);

/* A golden tensor converted to float32 (any stored dtype). Fails the test
 * (ck_abort) when the file or tensor is missing. */
void tu_golden(const char *rel_file, const char *tensor, cm_tensor *out);
/* The golden file's __metadata__["golden"] JSON (caller cJSON_Deletes). */
cJSON *tu_golden_meta(const char *rel_file);

/* Compare got with want: passes when max|got-want| <= tol * max|want|.
 * Prints rel-L2, max abs diff and the first element over tolerance. */
int tu_close(const char *what, const float *got, const float *want, int64_t n, double tol);
#define TU_ASSERT_CLOSE(what, got, want, n, tol) \
    ck_assert_msg(tu_close(what, got, want, n, tol), "%s differs from the reference", what)

/* A test case with a long timeout (model tests are not 4-second tests). */
TCase *tu_tcase(const char *name);

/* Run a command line through /bin/sh; returns the exit status (128+sig on a
 * signal) and captures stdout/stderr (cm_alloc'd, may be NULL). */
int tu_run(const char *cmdline, char **out, char **err);

/* Safetensors files made by tests, in tu_tmpdir() under `name`; each
 * returns the path (rotating static buffers: valid for the next 8 calls).
 * tu_st_write: [u64 LE header length][hdr][ndata bytes of data]; the stored
 * length is hlen when nonzero (bad-file tests), else strlen(hdr).
 * tu_st_patch: a copy of the file src with the first `from` in its header
 * replaced by `to` (same length), data untouched.
 * tu_st_edit: a copy of src with its header parsed, edited by fn and
 * written back (space-padded to 8 bytes), data untouched. */
const char *tu_st_write(const char *name, const char *hdr, uint64_t hlen, const void *data, size_t ndata);
const char *tu_st_patch(const char *src, const char *name, const char *from, const char *to);
const char *tu_st_edit(const char *src, const char *name, void (*fn)(cJSON *hdr, void *arg), void *arg);

/* The "parameters" text chunk of a PNG file (cm_alloc'd; fails the test
 * when the file or the chunk is missing). */
char *tu_png_parameters(const char *path);

/* SHA-256 of n bytes as 64 hex digits + NUL (weights/sha256.c). */
void tu_sha256_hex(const void *data, size_t n, char hex[65]);

/* Shell-quote s into out with single quotes. */
void tu_shq(const char *s, char *out, size_t cap);
/* Run `stipple ARGS`: exit status want_rc, stderr exactly one line
 * starting `stipple: error: ` and containing needle (when not NULL). */
void tu_expect_error(const char *args, int want_rc, const char *needle);

#endif
