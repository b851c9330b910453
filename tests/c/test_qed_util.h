/*
 * test_qed_util.h - helpers shared by the QED C tests (tests/c/test_qed_*.c):
 * a scratch folder removed at exit, shell commands (qemu-img and qemu-io
 * are the oracle), a seeded PRNG, whole-file and whole-image comparisons,
 * and checks that print what failed and count failures.
 *
 * Each test is its own executable and includes this header once.
 */
#ifndef TEST_QED_UTIL_H
#define TEST_QED_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../formats/qed/qed.h"
#include "vdk.h"

static int tqed_failures;
static char tqed_dir[256];

#define QCHECK(cond, ...)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            tqed_failures++;                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);              \
            fprintf(stderr, __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                       \
        }                                                                                \
    } while (0)

#define QOK(expr, errp)                                                                  \
    do {                                                                                 \
        int qok_r_ = (expr);                                                             \
        if (qok_r_ < 0) {                                                                \
            tqed_failures++;                                                             \
            fprintf(stderr, "FAIL %s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #expr,     \
                    vdk_errname(qok_r_), (errp)->msg);                                   \
        }                                                                                \
    } while (0)

static void tqed_cleanup(void)
{
    if (tqed_dir[0] && !getenv("VDK_KEEP_TMP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tqed_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", tqed_dir);
    }
}

static void tqed_init(void)
{
    snprintf(tqed_dir, sizeof tqed_dir, "/tmp/vdk-qed-test.XXXXXX");
    if (!mkdtemp(tqed_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    atexit(tqed_cleanup);
}

/* A path in the scratch folder (a few rotating buffers per thread). */
static const char *tqed_path(const char *name)
{
    static __thread char buf[8][512];
    static __thread int k;
    k = (k + 1) & 7;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tqed_dir, name);
    return buf[k];
}

/* Run a shell command with stderr merged; exit status, output in out. */
__attribute__((format(printf, 3, 4), unused)) static int tqed_sh(char *out, size_t outlen,
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
    size_t used = 0, n;
    char tmp[4096];
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

__attribute__((unused)) static bool tqed_have_qemu(void)
{
    return tqed_sh(NULL, 0, "command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") ==
           0;
}

/* `qemu-img check` must exit 0: no corruption, no leak. */
__attribute__((unused)) static int tqed_qemu_check(const char *path, const char *ctx)
{
    char out[8192];
    int st = tqed_sh(out, sizeof out, "qemu-img check -f qed '%s'", path);
    if (st != 0) {
        tqed_failures++;
        fprintf(stderr, "FAIL qemu-img check (%s) exit %d:\n%s\n", ctx, st, out);
        return -1;
    }
    return 0;
}

/* `qemu-img check` must find no corruption; exactly leaks leaked clusters. */
__attribute__((unused)) static int tqed_qemu_check_leaks(const char *path, uint64_t leaks,
                                                         const char *ctx)
{
    if (leaks == 0)
        return tqed_qemu_check(path, ctx);
    char out[8192], want[64];
    int st = tqed_sh(out, sizeof out, "qemu-img check -f qed '%s'", path);
    snprintf(want, sizeof want, "%llu leaked clusters", (unsigned long long)leaks);
    if (st != 3 || !strstr(out, want)) {
        tqed_failures++;
        fprintf(stderr, "FAIL qemu-img check (%s) exit %d, want 3 and '%s':\n%s\n", ctx, st,
                want, out);
        return -1;
    }
    return 0;
}

/* `qemu-img compare` of a QED image against a raw file must say identical. */
__attribute__((unused)) static int tqed_qemu_compare(const char *img, const char *raw,
                                                     const char *ctx)
{
    char out[4096];
    int st = tqed_sh(out, sizeof out, "qemu-img compare -f qed -F raw '%s' '%s'", img, raw);
    if (st != 0) {
        tqed_failures++;
        fprintf(stderr, "FAIL qemu-img compare (%s) exit %d:\n%s\n", ctx, st, out);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- PRNG */

static uint64_t tqed_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

__attribute__((unused)) static uint64_t tqed_below(uint64_t *x, uint64_t n)
{
    return n ? tqed_rand(x) % n : 0;
}

/* Bytes that differ from run to run of the seed (never all zero). */
__attribute__((unused)) static void tqed_fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        if (i % 8 == 0)
            tqed_rand(&x);
        p[i] = (uint8_t)(x >> (8 * (i % 8))) | 1;
    }
}

/* ---------------------------------------------------------------- files and images */

__attribute__((unused)) static int tqed_write_file(const char *path, const void *buf,
                                                   size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -errno;
    size_t n = fwrite(buf, 1, len, f);
    int r = fclose(f);
    return n == len && r == 0 ? 0 : -EIO;
}

/* Overwrite len bytes at off of an existing file. */
__attribute__((unused)) static int tqed_patch(const char *path, uint64_t off, const void *buf,
                                              size_t len)
{
    FILE *f = fopen(path, "r+b");
    if (!f)
        return -errno;
    int r = fseek(f, (long)off, SEEK_SET) == 0 && fwrite(buf, 1, len, f) == len ? 0 : -EIO;
    if (fclose(f) != 0)
        r = -EIO;
    return r;
}

__attribute__((unused)) static int tqed_patch_le64(const char *path, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    return tqed_patch(path, off, b, 8);
}

__attribute__((unused)) static uint64_t tqed_read_le64(const char *path, uint64_t off)
{
    uint8_t b[8] = {0};
    FILE *f = fopen(path, "rb");
    if (f) {
        if (fseek(f, (long)off, SEEK_SET) != 0 || fread(b, 1, 8, f) != 8)
            memset(b, 0, 8);
        fclose(f);
    }
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

__attribute__((unused)) static uint64_t tqed_file_size(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n > 0 ? (uint64_t)n : 0;
}

__attribute__((unused)) static vdk_image *tqed_open(const char *path, unsigned flags,
                                                    vdk_error *err)
{
    vdk_open_opts o = {.format = NULL, .flags = flags, .cache = VDK_CACHE_WRITEBACK};
    vdk_image *img = NULL;
    return vdk_image_open(path, &o, &img, err) < 0 ? NULL : img;
}

/* Create a QED image with "key=value" options (NULL-terminated list). */
__attribute__((unused)) static int tqed_create(const char *path, uint64_t size,
                                               const char *const *kv, vdk_error *err)
{
    vdk_kv opts[16];
    size_t n = 0;
    for (; kv && kv[2 * n] && n < 16; n++)
        opts[n] = (vdk_kv){kv[2 * n], kv[2 * n + 1]};
    return vdk_image_create(path, "qed", size, opts, n, err);
}

/* Read len bytes of the image from img_off and compare with expect. */
__attribute__((unused)) static int tqed_compare_at(vdk_image *img, uint64_t img_off,
                                                   const uint8_t *expect, uint64_t len,
                                                   const char *ctx)
{
    size_t chunk = 1 << 20;
    uint8_t *b = malloc(chunk);
    vdk_error err = {0};
    int bad = 0;
    for (uint64_t off = 0; off < len && !bad; off += chunk) {
        size_t n = len - off < chunk ? (size_t)(len - off) : chunk;
        if (vdk_image_pread(img, b, n, img_off + off, &err) < 0) {
            fprintf(stderr, "FAIL read (%s) at %llu: %s\n", ctx, (unsigned long long)off,
                    err.msg);
            bad = 1;
        } else if (memcmp(b, expect + off, n) != 0) {
            size_t i = 0;
            while (b[i] == expect[off + i])
                i++;
            fprintf(stderr, "FAIL content (%s) differs at offset %llu: got %02x want %02x\n",
                    ctx, (unsigned long long)(img_off + off + i), b[i], expect[off + i]);
            bad = 1;
        }
    }
    free(b);
    tqed_failures += bad;
    return bad ? -1 : 0;
}

/* The whole image from offset 0. */
__attribute__((unused)) static int tqed_compare_image(vdk_image *img, const uint8_t *expect,
                                                      uint64_t len, const char *ctx)
{
    return tqed_compare_at(img, 0, expect, len, ctx);
}

/* Scan an open image with the check primitive; returns corruptions + leaks
 * (and prints the problems when there are any). */
__attribute__((unused)) static uint64_t tqed_scan(vdk_image *img, qed_check_report *out,
                                                  const char *ctx)
{
    qed_check_report rep;
    vdk_error err = {0};
    int r = qed_check_image(img, 0, &rep, &err);
    if (r < 0) {
        tqed_failures++;
        fprintf(stderr, "FAIL check (%s): %s\n", ctx, err.msg);
        return UINT64_MAX;
    }
    uint64_t bad = rep.corruptions + rep.leaks + rep.check_errors;
    if (bad && !out) {
        fprintf(stderr, "check (%s): %llu corruptions, %llu leaks\n", ctx,
                (unsigned long long)rep.corruptions, (unsigned long long)rep.leaks);
        for (size_t i = 0; i < rep.nproblems && i < 10; i++)
            fprintf(stderr, "  %s at 0x%llx value 0x%llx\n", qed_problem_name(rep.problems[i].kind),
                    (unsigned long long)rep.problems[i].entry_offset,
                    (unsigned long long)rep.problems[i].value);
    }
    if (out)
        *out = rep;
    else
        qed_check_report_free(&rep);
    return bad;
}

static int tqed_finish(const char *name)
{
    if (tqed_failures) {
        fprintf(stderr, "%s: %d failure(s)\n", name, tqed_failures);
        return 1;
    }
    printf("%s: all passed\n", name);
    return 0;
}

#endif
