/*
 * test_file.c - the file layer on POSIX and memory files: I/O, EOF zeros,
 * sizes, truncation, error messages, flags, and space operations (allocate,
 * write_zeroes, discard, block_status) checked against SEEK_DATA/SEEK_HOLE.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file.h"
#include "driver.h"

static int failures;
static char dir[] = "/tmp/vdk-test-file-XXXXXX";

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

#define CHECK_OK(expr)                                                             \
    do {                                                                           \
        int r_ = (expr);                                                           \
        if (r_ < 0) {                                                              \
            fprintf(stderr, "%s:%d: %s failed: %d %s\n", __FILE__, __LINE__, #expr, \
                    r_, err.msg);                                                  \
            failures++;                                                            \
        }                                                                          \
    } while (0)

static vdk_error err;

static char *path_in(const char *name)
{
    static char buf[4][256];
    static int i;
    i = (i + 1) & 3;
    snprintf(buf[i], sizeof buf[i], "%s/%s", dir, name);
    return buf[i];
}

static bool all_byte(const void *p, size_t n, int v)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)v)
            return false;
    return true;
}

static uint64_t fsize(vdk_file *f)
{
    uint64_t s = UINT64_MAX;
    CHECK_OK(vdk_file_size(f, &s, &err));
    return s;
}

/* Basic contract, on any writable empty file. */
static void test_basic_io(vdk_file *f)
{
    char buf[8192], out[8192];
    memset(buf, 0xab, sizeof buf);
    CHECK(fsize(f) == 0);
    CHECK_OK(vdk_file_pwrite(f, buf, 1000, 10, &err));
    CHECK(fsize(f) == 1010);
    memset(out, 0x55, sizeof out);
    CHECK_OK(vdk_file_pread(f, out, 4000, 0, &err));
    CHECK(all_byte(out, 10, 0));
    CHECK(all_byte(out + 10, 1000, 0xab));
    CHECK(all_byte(out + 1010, 4000 - 1010, 0)); /* past EOF: zeros */
    memset(out, 0x55, sizeof out);
    CHECK_OK(vdk_file_pread(f, out, 100, 1 << 20, &err)); /* wholly past EOF */
    CHECK(all_byte(out, 100, 0));
    CHECK_OK(vdk_file_pread(f, out, 0, 0, &err)); /* empty read */
    CHECK_OK(vdk_file_truncate(f, 5000, &err));
    CHECK(fsize(f) == 5000);
    CHECK_OK(vdk_file_pread(f, out, 5000, 0, &err));
    CHECK(all_byte(out + 1010, 5000 - 1010, 0));
    CHECK_OK(vdk_file_truncate(f, 500, &err));
    CHECK(fsize(f) == 500);
    CHECK_OK(vdk_file_truncate(f, 2000, &err)); /* regrown: zeros, not old data */
    CHECK_OK(vdk_file_pread(f, out, 2000, 0, &err));
    CHECK(all_byte(out + 10, 490, 0xab) && all_byte(out + 500, 1500, 0));
    CHECK_OK(vdk_file_flush(f, &err));
    vdk_error e = {0};
    CHECK(vdk_file_pread(f, out, 10, UINT64_MAX - 5, &e) == -EINVAL);
    CHECK(strstr(e.msg, vdk_file_name(f)) != NULL);
    CHECK(vdk_file_truncate(f, (uint64_t)1 << 63, &e) == -EFBIG);
}

/* Large I/O crossing the memory file's chunks and many pages. */
static void test_big_io(vdk_file *f)
{
    size_t n = 3u << 20;
    unsigned char *a = malloc(n), *b = malloc(n);
    for (size_t i = 0; i < n; i++)
        a[i] = (unsigned char)(i * 7 + (i >> 13));
    CHECK_OK(vdk_file_pwrite(f, a, n, 12345, &err));
    CHECK_OK(vdk_file_pread(f, b, n, 12345, &err));
    CHECK(memcmp(a, b, n) == 0);
    CHECK(fsize(f) == 12345 + n);
    free(a);
    free(b);
}

static void test_memory(void)
{
    vdk_file *f = vdk_file_new_memory("mem.img");
    CHECK(f && strcmp(vdk_file_name(f), "mem.img") == 0);
    CHECK(vdk_file_is_writable(f) && vdk_file_alignment(f) == 1);
    test_basic_io(f);
    CHECK_OK(vdk_file_truncate(f, 0, &err));
    test_big_io(f);
    vdk_file_unref(f);
}

/* Space ops on a memory file: holes, zeroing, discard. */
static void test_memory_space(void)
{
    vdk_file *f = vdk_file_new_memory("mem");
    char buf[65536];
    bool data;
    uint64_t run;
    memset(buf, 1, sizeof buf);
    CHECK_OK(vdk_file_truncate(f, 1 << 20, &err));
    CHECK_OK(vdk_file_block_status(f, 0, 1 << 20, &data, &run, &err));
    CHECK(!data && run == 1 << 20);
    CHECK_OK(vdk_file_pwrite(f, buf, 65536, 65536 * 3, &err));
    CHECK_OK(vdk_file_block_status(f, 0, 1 << 20, &data, &run, &err));
    CHECK(!data && run == 65536 * 3);
    CHECK_OK(vdk_file_block_status(f, 65536 * 3, 1 << 20, &data, &run, &err));
    CHECK(data && run == 65536);
    CHECK_OK(vdk_file_block_status(f, 65536 * 4, 1 << 20, &data, &run, &err));
    CHECK(!data && run == 1 << 20); /* hole through EOF and past it */
    CHECK(vdk_file_allocated_size(f) == 65536);
    CHECK_OK(vdk_file_write_zeroes(f, 65536 * 3 + 100, 200, false, &err));
    CHECK_OK(vdk_file_pread(f, buf, 65536, 65536 * 3, &err));
    CHECK(all_byte(buf, 100, 1) && all_byte(buf + 100, 200, 0) && all_byte(buf + 300, 65236, 1));
    CHECK_OK(vdk_file_discard(f, 0, 1 << 20, &err));
    CHECK(vdk_file_allocated_size(f) == 0 && fsize(f) == 1 << 20);
    CHECK_OK(vdk_file_write_zeroes(f, 1 << 20, 4096, true, &err));
    CHECK(fsize(f) == (1 << 20) + 4096);
    CHECK_OK(vdk_file_allocate(f, 0, 3 << 20, VDK_PREALLOC_FULL, &err));
    CHECK(fsize(f) == 3 << 20);
    vdk_file_unref(f);
}

/* Threads writing and reading disjoint stripes of one memory file. */
struct stripe_arg {
    vdk_file *f;
    int t, bad;
};

static void *stripe_thread(void *p)
{
    struct stripe_arg *a = p;
    unsigned char buf[3000], back[3000];
    for (int i = 0; i < 500; i++) {
        uint64_t off = ((uint64_t)i * 4 + (uint64_t)a->t) * 3000;
        memset(buf, a->t * 60 + i % 60, sizeof buf);
        vdk_error e;
        if (vdk_file_pwrite(a->f, buf, sizeof buf, off, &e) < 0 ||
            vdk_file_pread(a->f, back, sizeof back, off, &e) < 0 ||
            memcmp(buf, back, sizeof buf) != 0)
            a->bad++;
        if (i % 50 == 0 && vdk_file_discard(a->f, off, 100, &e) < 0)
            a->bad++;
    }
    return NULL;
}

static void test_memory_threads(void)
{
    vdk_file *f = vdk_file_new_memory("threads");
    pthread_t th[4];
    struct stripe_arg args[4];
    for (int t = 0; t < 4; t++) {
        args[t] = (struct stripe_arg){.f = f, .t = t};
        pthread_create(&th[t], NULL, stripe_thread, &args[t]);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        CHECK(args[t].bad == 0);
    }
    CHECK(fsize(f) == 2000 * 3000);
    unsigned char buf[3000];
    CHECK_OK(vdk_file_pread(f, buf, sizeof buf, 1999 * 3000, &err));
    CHECK(all_byte(buf, sizeof buf, 3 * 60 + 499 % 60));
    vdk_file_unref(f);
}

static void test_posix_basic(int cache)
{
    vdk_file *f;
    const char *p = path_in("basic.img");
    unlink(p);
    err.msg[0] = 0;
    CHECK_OK(vdk_file_open(p, VDK_FILE_RDWR | VDK_FILE_CREATE, cache, &f, &err));
    if (!f)
        return;
    CHECK(strcmp(vdk_file_name(f), p) == 0);
    CHECK(vdk_file_cache_mode(f) == cache);
    test_basic_io(f);
    CHECK_OK(vdk_file_truncate(f, 0, &err));
    test_big_io(f);
    vdk_file_unref(f);

    /* Read-only: writes refused with a message; TRUNC empties the file. */
    CHECK_OK(vdk_file_open(p, 0, cache, &f, &err));
    vdk_error e = {0};
    char c = 0;
    CHECK(vdk_file_pwrite(f, &c, 1, 0, &e) == -EBADF && strstr(e.msg, "read-only"));
    CHECK(!vdk_file_is_writable(f));
    vdk_file_unref(f);
    CHECK_OK(vdk_file_open(p, VDK_FILE_RDWR | VDK_FILE_TRUNC, cache, &f, &err));
    CHECK(fsize(f) == 0);
    vdk_file_unref(f);
    unlink(p);
}

static void test_open_errors(void)
{
    vdk_file *f = (vdk_file *)1;
    vdk_error e = {0};
    CHECK(vdk_file_open(path_in("missing"), 0, 0, &f, &e) == -ENOENT && f == NULL);
    CHECK(strstr(e.msg, "missing") && strstr(e.msg, "No such file"));
    CHECK(vdk_file_open(path_in("x"), VDK_FILE_RDWR | VDK_FILE_FORCE_SHARE, 0, &f, &e) ==
          VDK_EOPTION);
    CHECK(vdk_file_open(dir, 0, 0, &f, &e) == -EISDIR);
}

/* Error messages name the file, operation, length, offset and cause. */
static void test_messages(void)
{
    const char *p = path_in("ro.img");
    int fd = open(p, O_CREAT | O_WRONLY, 0644);
    close(fd);
    vdk_file *f;
    CHECK_OK(vdk_file_open(p, 0, VDK_CACHE_WRITEBACK, &f, &err));
    vdk_error e = {0};
    char buf[16] = {0};
    CHECK(vdk_file_pwrite(f, buf, 16, 0x30000, &e) == -EBADF);
    char want[512];
    snprintf(want, sizeof want, "%s: write of 16 bytes at offset 0x30000 failed", p);
    CHECK(strncmp(e.msg, want, strlen(want)) == 0);
    if (strncmp(e.msg, want, strlen(want)) != 0)
        fprintf(stderr, "message: %s\n", e.msg);
    vdk_file_unref(f);
    unlink(p);
}

/* Data/hole status of a POSIX file against lseek(SEEK_DATA) directly. */
static bool seek_is_data(int fd, off_t off)
{
    off_t d = lseek(fd, off, SEEK_DATA);
    return d == off;
}

static void test_posix_space(int cache)
{
    const char *p = path_in("sparse.img");
    unlink(p);
    vdk_file *f;
    CHECK_OK(vdk_file_open(p, VDK_FILE_RDWR | VDK_FILE_CREATE, cache, &f, &err));
    if (!f)
        return;
    int fd = open(p, O_RDONLY);
    const uint64_t M = 1 << 20;
    bool data;
    uint64_t run;
    char *buf = vdk_alloc_aligned(M, false);
    memset(buf, 0x11, M);

    CHECK_OK(vdk_file_truncate(f, 8 * M, &err));
    CHECK_OK(vdk_file_block_status(f, 0, 8 * M, &data, &run, &err));
    CHECK(!data && run == 8 * M);
    CHECK(vdk_file_allocated_size(f) == 0);
    CHECK_OK(vdk_file_pwrite(f, buf, M, 2 * M, &err));
    CHECK_OK(vdk_file_block_status(f, 0, 8 * M, &data, &run, &err));
    CHECK(!data && run == 2 * M);
    CHECK_OK(vdk_file_block_status(f, 2 * M, 8 * M, &data, &run, &err));
    CHECK(data && run == M);
    CHECK_OK(vdk_file_block_status(f, 3 * M, 100 * M, &data, &run, &err));
    CHECK(!data && run == 100 * M); /* hole to EOF and past it */
    CHECK_OK(vdk_file_block_status(f, 2 * M + 5, 10, &data, &run, &err));
    CHECK(data && run == 10);

    /* write_zeroes with may_unmap punches a hole. */
    CHECK_OK(vdk_file_write_zeroes(f, 2 * M, M / 2, true, &err));
    CHECK(!seek_is_data(fd, (off_t)(2 * M)) && seek_is_data(fd, (off_t)(2 * M + M / 2)));
    CHECK_OK(vdk_file_pread(f, buf, M, 2 * M, &err));
    CHECK(all_byte(buf, M / 2, 0) && all_byte(buf + M / 2, M / 2, 0x11));

    /* Without may_unmap the blocks stay allocated but read as zeros. */
    memset(buf, 0x22, M);
    CHECK_OK(vdk_file_pwrite(f, buf, M, 4 * M, &err));
    int64_t before = vdk_file_allocated_size(f);
    CHECK_OK(vdk_file_write_zeroes(f, 4 * M, M, false, &err));
    CHECK(vdk_file_allocated_size(f) == before);
    CHECK_OK(vdk_file_pread(f, buf, M, 4 * M, &err));
    CHECK(all_byte(buf, M, 0));

    /* discard punches and keeps the size; unaligned edges read as zeros. */
    memset(buf, 0x33, M);
    CHECK_OK(vdk_file_pwrite(f, buf, M, 6 * M, &err));
    CHECK_OK(vdk_file_discard(f, 6 * M + 100, M - 200, &err));
    CHECK(fsize(f) == 8 * M);
    CHECK_OK(vdk_file_pread(f, buf, M, 6 * M, &err));
    CHECK(all_byte(buf, 100, 0x33) && all_byte(buf + 100, M - 200, 0) &&
          all_byte(buf + M - 100, 100, 0x33));
    CHECK(!seek_is_data(fd, (off_t)(6 * M + 65536)));

    /* write_zeroes past EOF extends the file. */
    CHECK_OK(vdk_file_write_zeroes(f, 8 * M, M + 7, true, &err));
    CHECK(fsize(f) == 9 * M + 7);
    CHECK_OK(vdk_file_write_zeroes(f, 10 * M, 5, false, &err));
    CHECK(fsize(f) == 10 * M + 5);

    /* allocate: falloc reserves blocks and extends; full writes zeros;
     * existing data survives both. */
    memset(buf, 0x44, 4096);
    CHECK_OK(vdk_file_pwrite(f, buf, 4096, 12 * M, &err));
    before = vdk_file_allocated_size(f);
    CHECK_OK(vdk_file_allocate(f, 11 * M, 2 * M, VDK_PREALLOC_FALLOC, &err));
    CHECK(fsize(f) == 13 * M);
    CHECK(vdk_file_allocated_size(f) >= before + (int64_t)(2 * M) - 4096);
    CHECK_OK(vdk_file_pread(f, buf, 4096, 12 * M, &err));
    CHECK(all_byte(buf, 4096, 0x44));
    CHECK_OK(vdk_file_allocate(f, 14 * M, 3 * M, VDK_PREALLOC_FULL, &err));
    CHECK(fsize(f) == 17 * M);
    CHECK(seek_is_data(fd, (off_t)(14 * M)) && seek_is_data(fd, (off_t)(16 * M)));
    CHECK_OK(vdk_file_allocate(f, 17 * M, M, VDK_PREALLOC_OFF, &err));
    CHECK(fsize(f) == 18 * M && !seek_is_data(fd, (off_t)(17 * M)));

    free(buf);
    close(fd);
    vdk_file_unref(f);
    unlink(p);
}

/* The open hook sees every opened file and can substitute a wrapper. */
static int hook_calls;
static vdk_file *count_hook(vdk_file *f, const char *path, void *ctx)
{
    hook_calls++;
    CHECK(ctx == &hook_calls && strstr(path, "hook.img"));
    return f;
}

static void test_hook(void)
{
    const char *p = path_in("hook.img");
    vdk_file *f;
    vdk_file_set_open_hook(count_hook, &hook_calls);
    CHECK_OK(vdk_file_open(p, VDK_FILE_RDWR | VDK_FILE_CREATE, 0, &f, &err));
    vdk_file_unref(f);
    vdk_file_set_open_hook(NULL, NULL);
    CHECK_OK(vdk_file_open(p, 0, 0, &f, &err));
    vdk_file_unref(f);
    CHECK(hook_calls == 1);
    unlink(p);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_memory();
    test_memory_space();
    test_memory_threads();
    test_open_errors();
    test_messages();
    test_posix_basic(VDK_CACHE_WRITEBACK);
    test_posix_basic(VDK_CACHE_UNSAFE);
    test_posix_basic(VDK_CACHE_NONE);
    test_posix_space(VDK_CACHE_WRITEBACK);
    test_posix_space(VDK_CACHE_NONE);
    test_hook();
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_file: %d checks failed\n", failures);
        return 1;
    }
    printf("test_file: all checks passed\n");
    return 0;
}
