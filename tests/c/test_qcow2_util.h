/*
 * test_qcow2_util.h - helpers shared by the qcow2 C tests: a scratch folder,
 * shell commands (qemu-img/qemu-io are the oracle), a seeded PRNG, an
 * in-memory oracle of the guest content, and checks that print what failed.
 *
 * Included by tests/c/test_qcow2_*.c only (each test is one executable).
 */
#ifndef TEST_QCOW2_UTIL_H
#define TEST_QCOW2_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver.h"
#include "vdk.h"

/* The engine is a static archive: make sure the qcow2 driver is linked. */
extern const struct vdk_driver vdk_qcow2_driver;
__attribute__((used)) static const struct vdk_driver *const tq_keep_driver = &vdk_qcow2_driver;

static int tq_failures;
static char tq_dir[256];

#define TQ_CHECK(cond, ...)                                                              \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            tq_failures++;                                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                         \
            fprintf(stderr, __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                       \
        }                                                                                \
    } while (0)

#define TQ_OK(expr, errp)                                                                \
    do {                                                                                 \
        int tq_r_ = (expr);                                                              \
        if (tq_r_ < 0) {                                                                 \
            tq_failures++;                                                               \
            fprintf(stderr, "FAIL %s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #expr,     \
                    vdk_errname(tq_r_), (errp)->msg);                                    \
        }                                                                                \
    } while (0)

static void tq_cleanup(void)
{
    if (tq_dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tq_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", tq_dir);
    }
}

static void tq_init(void)
{
    snprintf(tq_dir, sizeof tq_dir, "/tmp/vdk-qcow2-test.XXXXXX");
    if (!mkdtemp(tq_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    atexit(tq_cleanup);
}

static const char *tq_path(const char *name)
{
    static __thread char buf[64][512];
    static __thread int k;
    k = (k + 1) & 63;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tq_dir, name);
    return buf[k];
}

/* Run a shell command; returns its exit status; output in out (optional). */
__attribute__((format(printf, 3, 4))) static int tq_sh(char *out, size_t outlen,
                                                         const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    char tmp[4096];
    size_t used = 0;
    if (out && outlen)
        out[0] = '\0';
    size_t n;
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

__attribute__((unused)) static bool tq_have_qemu(void)
{
    return tq_sh(NULL, 0, "command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") ==
           0;
}

/* `qemu-img check` must report no errors and no leaks. */
__attribute__((unused)) static int tq_qemu_check(const char *path, const char *ctx)
{
    char out[8192];
    /* From the image's folder: qemu resolves data file names against the
     * current directory. */
    int st = tq_sh(out, sizeof out, "cd \"$(dirname '%s')\" && qemu-img check -f qcow2 '%s'",
                   path, path);
    if (st != 0 || strstr(out, "leak") || strstr(out, "ERROR")) {
        tq_failures++;
        fprintf(stderr, "FAIL qemu-img check (%s) exit %d:\n%s\n", ctx, st, out);
        return -1;
    }
    return 0;
}

/* `qemu-img compare` of the image against a raw file. */
__attribute__((unused)) static int tq_qemu_compare(const char *img, const char *raw, const char *ctx)
{
    char out[4096];
    int st = tq_sh(out, sizeof out,
                   "cd \"$(dirname '%s')\" && qemu-img compare -f qcow2 -F raw '%s' '%s'", img,
                   img, raw);
    if (st != 0) {
        tq_failures++;
        fprintf(stderr, "FAIL qemu-img compare (%s) exit %d:\n%s\n", ctx, st, out);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- PRNG */

static uint64_t tq_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static uint64_t tq_below(uint64_t *x, uint64_t n) { return n ? tq_rand(x) % n : 0; }

/* Fill with data that compresses somewhat (runs of random bytes). */
__attribute__((unused)) static void tq_fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 2654435761u + 1;
    size_t i = 0;
    while (i < n) {
        uint8_t v = (uint8_t)tq_rand(&x);
        size_t run = 1 + tq_below(&x, 16);
        for (size_t j = 0; j < run && i < n; j++)
            p[i++] = v;
    }
}

/* ---------------------------------------------------------------- files */

__attribute__((unused)) static int tq_write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -errno;
    size_t n = fwrite(buf, 1, len, f);
    fclose(f);
    return n == len ? 0 : -EIO;
}

__attribute__((unused)) static uint8_t *tq_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

__attribute__((unused)) static vdk_image *tq_open(const char *path, unsigned flags, vdk_error *err)
{
    vdk_open_opts o = {.format = NULL, .flags = flags, .cache = VDK_CACHE_WRITEBACK};
    vdk_image *img = NULL;
    int r = vdk_image_open(path, &o, &img, err);
    return r < 0 ? NULL : img;
}

/* Read the whole image through vdk and compare with expect (len bytes). */
__attribute__((unused)) static int tq_compare_image(vdk_image *img, const uint8_t *expect, uint64_t len,
                            const char *ctx)
{
    size_t chunk = 1 << 20;
    uint8_t *b = malloc(chunk);
    vdk_error err = {0};
    int bad = 0;
    for (uint64_t off = 0; off < len && !bad; off += chunk) {
        size_t n = len - off < chunk ? (size_t)(len - off) : chunk;
        int r = vdk_image_pread(img, b, n, off, &err);
        if (r < 0) {
            fprintf(stderr, "FAIL read (%s) at %llu: %s\n", ctx, (unsigned long long)off,
                    err.msg);
            bad = 1;
            break;
        }
        if (memcmp(b, expect + off, n) != 0) {
            size_t i = 0;
            while (b[i] == expect[off + i])
                i++;
            fprintf(stderr, "FAIL content (%s) differs at offset %llu: got %02x want %02x\n",
                    ctx, (unsigned long long)(off + i), b[i], expect[off + i]);
            bad = 1;
        }
    }
    free(b);
    tq_failures += bad;
    return bad ? -1 : 0;
}

static int tq_finish(const char *name)
{
    if (tq_failures) {
        fprintf(stderr, "%s: %d failure(s)\n", name, tq_failures);
        return 1;
    }
    printf("%s: all passed\n", name);
    return 0;
}

#endif
