/*
 * test_copy.c - the copy engine on raw images: the coalescer's alignment
 * and merging, copies with holes, zeros and data (sparse and -S 0), several
 * sources, ordered and unordered writes, read/write/ENOSPC/flush faults
 * with their messages, cancel, and compare jobs.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "copy-int.h"
#include "file-test.h"

static int failures;

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

#define MiB ((uint64_t)1 << 20)
#define KiB ((uint64_t)1 << 10)

static char dir[64];

static char *path_of(const char *name)
{
    static char buf[4][128];
    static int n;
    char *p = buf[n++ % 4];
    snprintf(p, 128, "%s/%s", dir, name);
    return p;
}

/* ---------------------------------------------------------------- coalescer */

static copy_piece got[64];
static size_t ngot;

static void collect(void *ctx, const copy_piece *p)
{
    (void)ctx;
    if (ngot < 64)
        got[ngot++] = *p;
}

static void test_coalescer(void)
{
    copy_coalescer c;
    /* Blocks of 64 KiB: a 4 KiB zero run inside data stays data; whole zero
     * blocks stay zero; a partial block mixing zero and skip becomes data. */
    ngot = 0;
    copy_co_init(&c, 65536, collect, NULL);
    copy_co_feed(&c, CL_DATA, 0, 4096);
    copy_co_feed(&c, CL_ZERO, 4096, 65536 - 4096 + 131072);
    copy_co_feed(&c, CL_SKIP, 196608, 10000);
    copy_co_feed(&c, CL_ZERO, 206608, 262144 - 206608);
    copy_co_feed(&c, CL_SKIP, 262144, 65536);
    copy_co_finish(&c);
    CHECK(ngot == 4);
    CHECK(got[0].cls == CL_DATA && got[0].off == 0 && got[0].len == 65536);
    CHECK(got[1].cls == CL_ZERO && got[1].off == 65536 && got[1].len == 131072);
    CHECK(got[2].cls == CL_DATA && got[2].off == 196608 && got[2].len == 65536);
    CHECK(got[3].cls == CL_SKIP && got[3].off == 262144 && got[3].len == 65536);

    /* An unaligned end: the last partial block is emitted on finish. */
    ngot = 0;
    copy_co_init(&c, 4096, collect, NULL);
    copy_co_feed(&c, CL_ZERO, 0, 8192);
    copy_co_feed(&c, CL_ZERO, 8192, 100);
    copy_co_finish(&c);
    CHECK(ngot == 1 && got[0].cls == CL_ZERO && got[0].len == 8292);

    /* Flush in the middle splits a piece but keeps the partial block. */
    ngot = 0;
    copy_co_init(&c, 4096, collect, NULL);
    copy_co_feed(&c, CL_DATA, 0, 6000);
    copy_co_flush(&c);
    copy_co_feed(&c, CL_DATA, 6000, 2192);
    copy_co_finish(&c);
    CHECK(ngot == 2 && got[0].len == 4096 && got[1].off == 4096 && got[1].len == 4096);
}

/* ---------------------------------------------------------------- helpers */

static vdk_image *open_rw(const char *path)
{
    vdk_open_opts o = {.format = "raw", .flags = VDK_OPEN_RDWR};
    vdk_image *img = NULL;
    vdk_error e;
    if (vdk_image_open(path, &o, &img, &e) < 0)
        fprintf(stderr, "open %s: %s\n", path, e.msg);
    return img;
}

static vdk_image *open_ro(const char *path)
{
    vdk_open_opts o = {.format = "raw"};
    vdk_image *img = NULL;
    vdk_error e;
    if (vdk_image_open(path, &o, &img, &e) < 0)
        fprintf(stderr, "open %s: %s\n", path, e.msg);
    return img;
}

static void make_file(const char *path, uint64_t size)
{
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    CHECK(fd >= 0 && ftruncate(fd, (off_t)size) == 0);
    close(fd);
}

static void put(const char *path, uint64_t off, uint64_t len, int byte)
{
    int fd = open(path, O_WRONLY);
    char *buf = malloc(len);
    memset(buf, byte, len);
    CHECK(pwrite(fd, buf, len, (off_t)off) == (ssize_t)len);
    free(buf);
    close(fd);
}

static bool files_equal(const char *a, uint64_t aoff, const char *b, uint64_t boff,
                        uint64_t len)
{
    int fa = open(a, O_RDONLY), fb = open(b, O_RDONLY);
    char *x = malloc(MiB), *y = malloc(MiB);
    bool eq = fa >= 0 && fb >= 0;
    for (uint64_t done = 0; eq && done < len;) {
        size_t n = len - done < MiB ? (size_t)(len - done) : MiB;
        eq = pread(fa, x, n, (off_t)(aoff + done)) == (ssize_t)n &&
             pread(fb, y, n, (off_t)(boff + done)) == (ssize_t)n && memcmp(x, y, n) == 0;
        done += n;
    }
    free(x);
    free(y);
    close(fa);
    close(fb);
    return eq;
}

/* Bytes of data (not holes) in [off, off+len) of a file. */
static uint64_t data_bytes(const char *path, uint64_t off, uint64_t len)
{
    int fd = open(path, O_RDONLY);
    uint64_t total = 0, end = off + len;
    while (off < end) {
        off_t d = lseek(fd, (off_t)off, SEEK_DATA);
        if (d < 0 || (uint64_t)d >= end)
            break;
        off_t h = lseek(fd, d, SEEK_HOLE);
        uint64_t he = (uint64_t)h < end ? (uint64_t)h : end;
        total += he - (uint64_t)d;
        off = he;
    }
    close(fd);
    return total;
}

/* A 16 MiB source: data at 0 (1 MiB of 0x11), written zeros at 4 MiB
 * (1 MiB), a hole elsewhere, 0x22 from 8 MiB+4 KiB for 12 KiB, and a last
 * sector of 0x33. */
static void make_source(const char *path)
{
    make_file(path, 16 * MiB);
    put(path, 0, MiB, 0x11);
    put(path, 4 * MiB, MiB, 0);
    put(path, 8 * MiB + 4 * KiB, 12 * KiB, 0x22);
    put(path, 16 * MiB - 512, 512, 0x33);
}

static int copy_files(const char *const *srcs, size_t n, const char *dst,
                      const vdk_copy_opts *o, vdk_error *e)
{
    vdk_image *s[4] = {0};
    for (size_t i = 0; i < n; i++)
        s[i] = open_ro(srcs[i]);
    vdk_image *t = open_rw(dst);
    int r = vdk_copy(s, n, t, o, e);
    vdk_error ce;
    int cr = vdk_image_close(t, &ce);
    for (size_t i = 0; i < n; i++)
        vdk_image_close(s[i], NULL);
    return r < 0 ? r : cr;
}

/* ---------------------------------------------------------------- copies */

static void test_sparse_copy(void)
{
    const char *src = path_of("src.raw"), *dst = path_of("dst.raw");
    make_source(src);
    unsigned modes[] = {0, VDK_COPY_UNORDERED};
    for (int m = 0; m < 2; m++) {
        make_file(dst, 16 * MiB);
        vdk_copy_opts o;
        vdk_copy_opts_init(&o);
        o.flags = VDK_COPY_TARGET_FRESH | modes[m];
        o.request_size = 256 * KiB;
        o.max_requests = 4;
        vdk_error e = {0};
        CHECK(copy_files(&src, 1, dst, &o, &e) == 0);
        CHECK(files_equal(src, 0, dst, 0, 16 * MiB));
        /* Holes stay holes, written zeros become holes, data stays data. */
        CHECK(data_bytes(dst, 0, 16 * MiB) == MiB + 12 * KiB + 4096);
        CHECK(data_bytes(dst, 4 * MiB, MiB) == 0);
    }
}

static void test_fully_allocated(void)
{
    const char *src = path_of("src.raw"), *dst = path_of("dst.raw");
    make_source(src);
    make_file(dst, 16 * MiB);
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    o.flags = VDK_COPY_TARGET_FRESH;
    o.sparse_size = 0;
    vdk_error e = {0};
    CHECK(copy_files(&src, 1, dst, &o, &e) == 0);
    CHECK(files_equal(src, 0, dst, 0, 16 * MiB));
    CHECK(data_bytes(dst, 0, 16 * MiB) == 16 * MiB);
}

static void test_existing_target(void)
{
    /* Without "fresh", zero ranges are zeroed: old data must go. */
    const char *src = path_of("src.raw"), *dst = path_of("dst.raw");
    make_source(src);
    make_file(dst, 20 * MiB);
    put(dst, 0, 20 * MiB, 0x77);
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    vdk_error e = {0};
    CHECK(copy_files(&src, 1, dst, &o, &e) == 0);
    CHECK(files_equal(src, 0, dst, 0, 16 * MiB));
    char tail[512];
    int fd = open(dst, O_RDONLY);
    CHECK(pread(fd, tail, 512, 20 * MiB - 512) == 512 && tail[0] == 0x77);
    close(fd);
}

static void test_concatenation(void)
{
    const char *a = path_of("a.raw"), *b = path_of("b.raw"), *dst = path_of("cat.raw");
    make_file(a, 3 * MiB + 512); /* an odd size: blocks straddle the sources */
    put(a, 3 * MiB, 512, 0x44);
    make_file(b, 2 * MiB);
    put(b, 0, 4096, 0x55);
    put(b, MiB, 4096, 0x66);
    make_file(dst, 5 * MiB + 512);
    const char *srcs[] = {a, b};
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    o.flags = VDK_COPY_TARGET_FRESH;
    vdk_error e = {0};
    CHECK(copy_files(srcs, 2, dst, &o, &e) == 0);
    CHECK(files_equal(a, 0, dst, 0, 3 * MiB + 512));
    CHECK(files_equal(b, 0, dst, 3 * MiB + 512, 2 * MiB));
}

static void test_small_target(void)
{
    const char *src = path_of("src.raw"), *dst = path_of("small.raw");
    make_source(src);
    make_file(dst, MiB);
    vdk_error e = {0};
    CHECK(copy_files(&src, 1, dst, NULL, &e) == -EINVAL);
    CHECK(strstr(e.msg, "is smaller than the source") != NULL);
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    o.max_requests = 65;
    CHECK(copy_files(&src, 1, dst, &o, &e) == VDK_EOPTION);
    vdk_copy_opts_init(&o);
    o.sparse_size = 1000;
    CHECK(copy_files(&src, 1, dst, &o, &e) == VDK_EOPTION);
}

/* ---------------------------------------------------------------- faults */

struct hook_ctx {
    const char *path;
    struct vdk_fault_spec spec;
};

static vdk_file *fault_hook(vdk_file *f, const char *path, void *ctx)
{
    struct hook_ctx *h = ctx;
    if (strcmp(path, h->path) != 0)
        return f;
    vdk_file *w = vdk_file_fault_new(f, &h->spec);
    if (!w)
        return f;
    vdk_file_unref(f);
    return w;
}

static int copy_with_fault(const char *faulty, int op, uint64_t nth, int error,
                           vdk_error *e)
{
    const char *src = path_of("src.raw"), *dst = path_of("dst.raw");
    make_source(src);
    make_file(dst, 16 * MiB);
    struct hook_ctx h = {.path = faulty, .spec = {.op = op, .nth = nth, .error = error}};
    vdk_file_set_open_hook(fault_hook, &h);
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    o.flags = VDK_COPY_TARGET_FRESH;
    o.request_size = 64 * KiB;
    int r = copy_files(&src, 1, dst, &o, e);
    vdk_file_set_open_hook(NULL, NULL);
    return r;
}

static void test_faults(void)
{
    vdk_error e = {0};
    const char *src = path_of("src.raw"), *dst = path_of("dst.raw");
    CHECK(copy_with_fault(src, VDK_FAULT_READ, 3, -EIO, &e) == -EIO);
    CHECK(strstr(e.msg, "error while reading '") && strstr(e.msg, "src.raw' at byte ") &&
          strstr(e.msg, "Input/output error"));
    CHECK(copy_with_fault(dst, VDK_FAULT_WRITE, 5, -ENOSPC, &e) == -ENOSPC);
    CHECK(strstr(e.msg, "error while writing '") && strstr(e.msg, "dst.raw' at byte ") &&
          strstr(e.msg, "No space left on device"));
    CHECK(copy_with_fault(dst, VDK_FAULT_FLUSH, 1, -EIO, &e) == -EIO);
    CHECK(strstr(e.msg, "error while flushing '") != NULL);
}

/* Exactly one flush of the target under writeback, none of the source. */
static void test_one_flush(void)
{
    const char *src = path_of("src.raw"), *dst = path_of("dst.raw");
    make_source(src);
    make_file(dst, 16 * MiB);
    struct hook_ctx h = {.path = dst, .spec = {.op = VDK_FAULT_FLUSH, .nth = 0}};
    vdk_file_set_open_hook(fault_hook, &h);
    vdk_image *s = open_ro(src), *t = open_rw(dst);
    vdk_file_set_open_hook(NULL, NULL);
    vdk_error e;
    CHECK(vdk_copy(&s, 1, t, NULL, &e) == 0);
    struct vdk_fault_counts c;
    CHECK(vdk_file_fault_counts(vdk_image_file(t), &c) == 0 && c.flushes == 1);
    CHECK(c.writes > 0);
    vdk_image_close(s, NULL);
    vdk_image_close(t, NULL);
}

/* ---------------------------------------------------------------- cancel */

struct run_state {
    bool done;
    int polls;
    vdk_job *job;
};

static void on_done(vdk_job *j, void *opaque)
{
    (void)j;
    ((struct run_state *)opaque)->done = true;
}

static void test_cancel(void)
{
    const char *src = path_of("big.raw"), *dst = path_of("bigdst.raw");
    make_file(src, 64 * MiB);
    put(src, 0, 64 * MiB, 0x5a);
    make_file(dst, 64 * MiB);
    vdk_image *s = open_ro(src), *t = open_rw(dst);
    uv_loop_t loop;
    uv_loop_init(&loop);
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    o.rate_limit = 4 * MiB; /* slow enough to be caught in flight */
    o.request_size = 256 * KiB;
    struct run_state st = {0};
    vdk_error e = {0};
    vdk_job *j;
    CHECK(vdk_copy_start(&loop, &s, 1, t, &o, on_done, &st, &j, &e) == 0);
    vdk_image_unref(s); /* the job keeps its own references */
    while (!st.done) {
        uv_run(&loop, UV_RUN_ONCE);
        vdk_job_progress p;
        vdk_job_progress_get(j, &p);
        if (p.done > 0)
            vdk_job_cancel(j);
    }
    CHECK(vdk_job_result(j, &e) == VDK_ECANCELED);
    CHECK(strstr(e.msg, "canceled after") != NULL);
    vdk_job_progress p;
    vdk_job_progress_get(j, &p);
    CHECK(p.phase == VDK_JOB_DONE && p.done < p.total && p.in_flight == 0);
    vdk_job_free(j);
    vdk_image_close(t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
}

/* Freeing a running job cancels it and frees it when it ends. */
static void test_detach(void)
{
    const char *src = path_of("big.raw"), *dst = path_of("bigdst.raw");
    vdk_image *s = open_ro(src), *t = open_rw(dst);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct run_state st = {0};
    vdk_error e;
    vdk_job *j;
    CHECK(vdk_copy_start(&loop, &s, 1, t, NULL, on_done, &st, &j, &e) == 0);
    vdk_job_free(j);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(st.done);
    CHECK(uv_loop_close(&loop) == 0);
    vdk_image_close(s, NULL);
    vdk_image_close(t, NULL);
}

/* ---------------------------------------------------------------- compare */

static int compare_files(const char *a, const char *b, unsigned flags, uint64_t *off)
{
    vdk_image *x = open_ro(a), *y = open_ro(b);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct run_state st = {0};
    vdk_error e;
    vdk_job *j;
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    o.request_size = 64 * KiB;
    int v = -1;
    if (vdk_compare_start(&loop, x, y, flags, &o, on_done, &st, &j, &e) == 0) {
        while (!st.done)
            uv_run(&loop, UV_RUN_ONCE);
        v = vdk_job_result(j, &e) < 0 ? -1 : vdk_job_compare_result(j, off);
        vdk_job_free(j);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    vdk_image_close(x, NULL);
    vdk_image_close(y, NULL);
    return v;
}

static void test_compare(void)
{
    const char *a = path_of("src.raw"), *b = path_of("cmp.raw");
    make_source(a);
    make_source(b);
    uint64_t off = 1;
    CHECK(compare_files(a, b, 0, &off) == VDK_COMPARE_EQUAL && off == 0);
    put(b, 9 * MiB + 700, 1, 0x01);
    put(b, 12 * MiB, 1, 0x01);
    CHECK(compare_files(a, b, 0, &off) == VDK_COMPARE_CONTENT && off == 9 * MiB + 512);
    /* A longer image must read as zeros past the shorter one's end. */
    make_source(b);
    make_file(path_of("long.raw"), 0);
    truncate(b, 20 * MiB);
    CHECK(compare_files(a, b, 0, &off) == VDK_COMPARE_EQUAL);
    CHECK(compare_files(a, b, VDK_COMPARE_STRICT, &off) == VDK_COMPARE_SIZE);
    put(b, 18 * MiB + 1024, 1, 0x01);
    CHECK(compare_files(a, b, 0, &off) == VDK_COMPARE_CONTENT && off == 18 * MiB + 1024);
    CHECK(compare_files(b, a, 0, &off) == VDK_COMPARE_CONTENT && off == 18 * MiB + 1024);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/vdk-test-copy.XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_coalescer();
    test_sparse_copy();
    test_fully_allocated();
    test_existing_target();
    test_concatenation();
    test_small_target();
    test_faults();
    test_one_flush();
    test_cancel();
    test_detach();
    test_compare();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        failures++;
    if (failures)
        fprintf(stderr, "test_copy: %d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
