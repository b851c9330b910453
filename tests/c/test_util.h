/*
 * test_util.h - the basics every C test shares (prefix vt_ / VT_):
 *  - checks: VT_CHECK(cond) or VT_CHECK(cond, "format", ...) and
 *    VT_OK(expr, errp) count every check; a failed one prints FAIL
 *    file:line: with the message (or the condition) and counts a failure.
 *    vt_fail() records a failure found by other means; vt_finish() prints
 *    the summary and returns main's exit status;
 *  - a scratch folder (vt_init: mkdtemp under /tmp, removed at exit unless
 *    VDK_KEEP_TMP is set; vt_dir) and paths in it (vt_path);
 *  - shell commands and their output (vt_sh); qemu-img and qemu-io are the
 *    oracle (vt_have_qemu, vt_qemu_check, vt_qemu_compare);
 *  - a seeded xorshift64 generator (vt_rand, vt_below) and buffers filled
 *    from it (vt_fill: compressible runs; vt_fill_nonzero: no zero byte);
 *  - whole files and bytes in them (vt_read_file, vt_write_file,
 *    vt_file_size, vt_read_at, vt_patch);
 *  - images: vt_open, and the comparison of an image's content with an
 *    expected buffer (vt_compare_at, vt_compare_image; each one check).
 *
 * test_qcow2_util.h, test_qed_util.h and test_crash_util.h include it and
 * add what is theirs. Each test is one executable including this header
 * once: everything is static, and the counters are atomic because worker
 * threads may check too.
 */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vdk.h"

#define VT_UNUSED __attribute__((unused))

static VT_UNUSED atomic_int vt_failures;
static VT_UNUSED atomic_long vt_checks;
static VT_UNUSED char vt_dir[256];

/* ---------------------------------------------------------------- checks */

/* Count a failure and print FAIL and the message on stderr. */
__attribute__((format(printf, 1, 2))) VT_UNUSED static void vt_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vt_failures++;
    fputs("FAIL ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* The failure of a check at file:line. fmt is " " followed by the check's
 * own format (see VT_CHECK); with none, the condition is printed. */
__attribute__((format(printf, 4, 5))) VT_UNUSED static void
vt_fail_at(const char *file, int line, const char *cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vt_failures++;
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    if (fmt[1])
        vfprintf(stderr, fmt + 1, ap);
    else
        fprintf(stderr, "check failed: %s", cond);
    fputc('\n', stderr);
    va_end(ap);
}

/* VT_CHECK(cond) or VT_CHECK(cond, "format", ...): the format must be a
 * string literal (it is glued to the " " that tells whether one came). */
#define VT_CHECK(cond, ...)                                                              \
    do {                                                                                 \
        vt_checks++;                                                                     \
        if (!(cond))                                                                     \
            vt_fail_at(__FILE__, __LINE__, #cond, " " __VA_ARGS__);                      \
    } while (0)

/* expr returns 0 or a negative code, with a message in *errp. */
#define VT_OK(expr, errp)                                                                \
    do {                                                                                 \
        int vt_r_ = (expr);                                                              \
        vt_checks++;                                                                     \
        if (vt_r_ < 0)                                                                   \
            vt_fail_at(__FILE__, __LINE__, #expr, " %s -> %s: %s", #expr,                \
                       vdk_errname(vt_r_), (errp)->msg);                                 \
    } while (0)

/* The summary line; main returns what this returns. */
VT_UNUSED static int vt_finish(const char *name)
{
    if (vt_failures) {
        fprintf(stderr, "%s: %d failure(s) in %ld checks\n", name, (int)vt_failures,
                (long)vt_checks);
        return 1;
    }
    printf("%s: all passed (%ld checks)\n", name, (long)vt_checks);
    return 0;
}

/* ---------------------------------------------------------------- scratch folder */

static void vt_cleanup(void)
{
    if (vt_dir[0] && !getenv("VDK_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", vt_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", vt_dir);
    }
}

/* Make /tmp/vdk-<program>.XXXXXX, removed at exit. */
VT_UNUSED static void vt_init(void)
{
    snprintf(vt_dir, sizeof vt_dir, "/tmp/vdk-%s.XXXXXX", program_invocation_short_name);
    if (!mkdtemp(vt_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    atexit(vt_cleanup);
}

/* A path in the scratch folder; valid until 64 more calls in this thread. */
VT_UNUSED static const char *vt_path(const char *name)
{
    static __thread char buf[64][512];
    static __thread int k;
    k = (k + 1) & 63;
    snprintf(buf[k], sizeof buf[k], "%s/%s", vt_dir, name);
    return buf[k];
}

/* ---------------------------------------------------------------- shell, qemu */

/* Run a shell command with stderr merged into stdout; returns its exit
 * status, its output (cut to fit) in out when out is not NULL. */
__attribute__((format(printf, 3, 4))) VT_UNUSED static int vt_sh(char *out, size_t outlen,
                                                                  const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char tmp[4096];
    size_t used = 0, n;
    if (out && outlen)
        out[0] = '\0';
    while ((n = fread(tmp, 1, sizeof tmp, p)) > 0) {
        if (out && used + 1 < outlen) {
            size_t c = n < outlen - used - 1 ? n : outlen - used - 1;
            memcpy(out + used, tmp, c);
            used += c;
            out[used] = '\0';
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

VT_UNUSED static bool vt_have_qemu(void)
{
    return vt_sh(NULL, 0, "command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") ==
           0;
}

/* `qemu-img check` of an image of format fmt must exit 0 and report no
 * error and no leak. Run from the image's folder: qemu resolves data file
 * names against the current directory. One check. */
VT_UNUSED static int vt_qemu_check(const char *fmt, const char *path, const char *ctx)
{
    char out[8192];
    vt_checks++;
    int st = vt_sh(out, sizeof out, "cd \"$(dirname '%s')\" && qemu-img check -f %s '%s'", path,
                   fmt, path);
    if (st != 0 || strstr(out, "leak") || strstr(out, "ERROR")) {
        vt_fail("qemu-img check (%s) exit %d:\n%s", ctx, st, out);
        return -1;
    }
    return 0;
}

/* `qemu-img compare` must find the image and the raw file identical. */
VT_UNUSED static int vt_qemu_compare(const char *fmt, const char *img, const char *raw,
                                     const char *ctx)
{
    char out[4096];
    vt_checks++;
    int st = vt_sh(out, sizeof out, "cd \"$(dirname '%s')\" && qemu-img compare -f %s -F raw '%s' '%s'",
                   img, fmt, img, raw);
    if (st != 0) {
        vt_fail("qemu-img compare (%s) exit %d:\n%s", ctx, st, out);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- PRNG */

/* xorshift64: x is the state, never 0. */
VT_UNUSED static uint64_t vt_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* A number in [0, n) (0 when n is 0). */
VT_UNUSED static uint64_t vt_below(uint64_t *x, uint64_t n) { return n ? vt_rand(x) % n : 0; }

/* Runs (1 to 16 bytes) of random bytes: data that compresses somewhat. */
VT_UNUSED static void vt_fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 2654435761u + 1;
    size_t i = 0;
    while (i < n) {
        uint8_t v = (uint8_t)vt_rand(&x);
        size_t run = 1 + vt_below(&x, 16);
        for (size_t j = 0; j < run && i < n; j++)
            p[i++] = v;
    }
}

/* Random bytes, none of them zero (so they never look unwritten). */
VT_UNUSED static void vt_fill_nonzero(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0)
            vt_rand(&x);
        p[i] = (uint8_t)(x >> (8 * (i % 8))) | 1;
    }
}

/* ---------------------------------------------------------------- files */

/* The whole file in a new buffer (its length in *len), or NULL. */
VT_UNUSED static uint8_t *vt_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    uint8_t *b = malloc(st.st_size ? (size_t)st.st_size : 1);
    ssize_t got = b ? pread(fd, b, (size_t)st.st_size, 0) : -1;
    close(fd);
    if (got != st.st_size) {
        free(b);
        return NULL;
    }
    *len = (size_t)st.st_size;
    return b;
}

/* Create or replace the file with len bytes of buf. */
VT_UNUSED static int vt_write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -errno;
    ssize_t put = pwrite(fd, buf, len, 0);
    int r = close(fd);
    return put == (ssize_t)len && r == 0 ? 0 : -EIO;
}

/* The file's size (0 when it cannot be found). */
VT_UNUSED static uint64_t vt_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* len bytes at off of the file; all zeros (and -EIO) when they cannot all
 * be read. */
VT_UNUSED static int vt_read_at(const char *path, uint64_t off, void *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ssize_t got = fd >= 0 ? pread(fd, buf, len, (off_t)off) : -1;
    if (fd >= 0)
        close(fd);
    if (got == (ssize_t)len)
        return 0;
    memset(buf, 0, len);
    return -EIO;
}

/* Overwrite len bytes at off of an existing file. */
VT_UNUSED static int vt_patch(const char *path, uint64_t off, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return -errno;
    ssize_t put = pwrite(fd, buf, len, (off_t)off);
    int r = close(fd);
    return put == (ssize_t)len && r == 0 ? 0 : -EIO;
}

/* ---------------------------------------------------------------- images */

/* Open an image of any format (writeback cache); NULL with *err on failure. */
VT_UNUSED static vdk_image *vt_open(const char *path, unsigned flags, vdk_error *err)
{
    vdk_open_opts o = {.format = NULL, .flags = flags, .cache = VDK_CACHE_WRITEBACK};
    vdk_image *img = NULL;
    return vdk_image_open(path, &o, &img, err) < 0 ? NULL : img;
}

/* Read len bytes of the image from img_off and compare them with expect;
 * the first difference (or read error) is the failure. One check. */
VT_UNUSED static int vt_compare_at(vdk_image *img, uint64_t img_off, const uint8_t *expect,
                                   uint64_t len, const char *ctx)
{
    size_t chunk = 1 << 20;
    uint8_t *b = malloc(chunk);
    vdk_error err = {0};
    int bad = 0;
    vt_checks++;
    for (uint64_t off = 0; off < len && !bad; off += chunk) {
        size_t n = len - off < chunk ? (size_t)(len - off) : chunk;
        if (vdk_image_pread(img, b, n, img_off + off, &err) < 0) {
            vt_fail("read (%s) at %llu: %s", ctx, (unsigned long long)(img_off + off), err.msg);
            bad = 1;
        } else if (memcmp(b, expect + off, n) != 0) {
            size_t i = 0;
            while (b[i] == expect[off + i])
                i++;
            vt_fail("content (%s) differs at offset %llu: got %02x want %02x", ctx,
                    (unsigned long long)(img_off + off + i), b[i], expect[off + i]);
            bad = 1;
        }
    }
    free(b);
    return bad ? -1 : 0;
}

/* The whole image from offset 0. */
VT_UNUSED static int vt_compare_image(vdk_image *img, const uint8_t *expect, uint64_t len,
                                      const char *ctx)
{
    return vt_compare_at(img, 0, expect, len, ctx);
}

#endif /* TEST_UTIL_H */
