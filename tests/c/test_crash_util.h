/*
 * test_crash_util.h - helpers of the crash replayer (test_crash_replay.c):
 * a scratch folder, a seeded PRNG, shell commands, whole-file I/O, a fast
 * content hash (to count distinct crash states), and checks that print
 * what failed.
 */
#ifndef TEST_CRASH_UTIL_H
#define TEST_CRASH_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver.h"
#include "file-test.h"
#include "vdk.h"

/* The engine is a static archive: make sure both drivers are linked. */
extern const struct vdk_driver vdk_qcow2_driver, vdk_qed_driver;
__attribute__((used)) static const struct vdk_driver *const tc_keep[] = {&vdk_qcow2_driver,
                                                                        &vdk_qed_driver};

static int tc_failures;
static char tc_dir[256];

#define TC_CHECK(cond, ...)                                                              \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            tc_failures++;                                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                         \
            fprintf(stderr, __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                       \
        }                                                                                \
    } while (0)

#define TC_OK(expr, errp)                                                                \
    do {                                                                                 \
        int tc_r_ = (expr);                                                              \
        if (tc_r_ < 0) {                                                                 \
            tc_failures++;                                                               \
            fprintf(stderr, "FAIL %s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #expr,     \
                    vdk_errname(tc_r_), (errp)->msg);                                    \
        }                                                                                \
    } while (0)

__attribute__((unused)) static void tc_cleanup(void)
{
    if (tc_dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tc_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", tc_dir);
    }
}

__attribute__((unused)) static void tc_init(void)
{
    snprintf(tc_dir, sizeof tc_dir, "/tmp/vdk-crash.XXXXXX");
    if (!mkdtemp(tc_dir)) {
        perror("mkdtemp");
        exit(1);
    }
    atexit(tc_cleanup);
}

static const char *tc_path(const char *name)
{
    static char buf[16][512];
    static int k;
    k = (k + 1) & 15;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tc_dir, name);
    return buf[k];
}

/* splitmix64 */
__attribute__((unused)) static uint64_t tc_rand(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}
__attribute__((unused)) static uint64_t tc_below(uint64_t *x, uint64_t n) { return n ? tc_rand(x) % n : 0; }

__attribute__((unused)) static void tc_fill(uint8_t *b, size_t len, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = tc_rand(&x);
        memcpy(b + i, &v, len - i < 8 ? len - i : 8);
    }
}

__attribute__((format(printf, 3, 4))) static int tc_sh(char *out, size_t outlen,
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

/* Whole file into memory. */
static uint8_t *tc_slurp(const char *path, size_t *len)
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

__attribute__((unused)) static int tc_spit(const char *path, const uint8_t *b, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -errno;
    ssize_t put = pwrite(fd, b, len, 0);
    close(fd);
    return put == (ssize_t)len ? 0 : -EIO;
}

/* A fast 64-bit hash of a byte string (distinct crash states). */
__attribute__((unused)) static uint64_t tc_hash(const uint8_t *b, size_t len)
{
    uint64_t h = UINT64_C(0x9E3779B97F4A7C15) ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        h = (h ^ v) * UINT64_C(0xBF58476D1CE4E5B9);
        h ^= h >> 29;
    }
    for (; i < len; i++)
        h = (h ^ b[i]) * UINT64_C(0x100000001B3);
    return h ^ (h >> 32);
}

/* A set of 64-bit hashes (open addressing). */
typedef struct tc_set {
    uint64_t *v;
    size_t cap, n;
} tc_set;

__attribute__((unused)) static bool tc_set_add(tc_set *s, uint64_t h)
{
    if (h == 0)
        h = 1;
    if ((s->n + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        uint64_t *v = calloc(cap, 8);
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->v[i])
                continue;
            size_t j = s->v[i] & (cap - 1);
            while (v[j])
                j = (j + 1) & (cap - 1);
            v[j] = s->v[i];
        }
        free(s->v);
        s->v = v;
        s->cap = cap;
    }
    size_t j = h & (s->cap - 1);
    while (s->v[j]) {
        if (s->v[j] == h)
            return false;
        j = (j + 1) & (s->cap - 1);
    }
    s->v[j] = h;
    s->n++;
    return true;
}

#endif /* TEST_CRASH_UTIL_H */
