/*
 * test_file_direct.c - O_DIRECT files (cache=none): the flag is really set,
 * the alignment is found, unaligned buffers, offsets and lengths are bounced
 * correctly (random operations checked against an in-memory model), unaligned
 * writes that extend the file leave it at exactly off+len, reads past EOF give
 * zeros, and concurrent read-modify-writes of adjacent pieces of one block
 * never lose an update. Runs at the probed alignment and at a forced 4 KiB.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "driver.h"
#include "file-test.h"
#include "file.h"

static int failures;
static char dir[64];
static char path[128];

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

#define CHECK_OK(expr)                                                             \
    do {                                                                           \
        vdk_error e_ = {0};                                                        \
        int r_ = (expr);                                                           \
        if (r_ < 0) {                                                              \
            fprintf(stderr, "%s:%d: %s failed: %d %s\n", __FILE__, __LINE__, #expr, \
                    r_, e_.msg);                                                   \
            failures++;                                                            \
        }                                                                          \
    } while (0)

/* A directory on a file system with real O_DIRECT (not tmpfs). */
static bool make_dir(void)
{
    const char *bases[] = {"/tmp", "/var/tmp"};
    for (int i = 0; i < 2; i++) {
        struct statfs sf;
        if (statfs(bases[i], &sf) == 0 && sf.f_type == TMPFS_MAGIC)
            continue;
        snprintf(dir, sizeof dir, "%s/vdk-test-direct-XXXXXX", bases[i]);
        if (mkdtemp(dir))
            return true;
    }
    return false;
}

static uint64_t fsize(vdk_file *f)
{
    uint64_t s = 0;
    CHECK_OK(vdk_file_size(f, &s, &e_));
    return s;
}

static vdk_file *open_direct(unsigned flags)
{
    vdk_file *f = NULL;
    vdk_error e = {0};
    if (vdk_file_open(path, flags, VDK_CACHE_NONE, &f, &e) < 0) {
        fprintf(stderr, "open %s: %s\n", path, e.msg);
        failures++;
    }
    return f;
}

/* O_DIRECT is in the flags of some descriptor of ours open on path. */
static bool fd_has_direct(void)
{
    for (int fd = 3; fd < 1024; fd++) {
        char link[64], target[256], info[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        if (strcmp(target, path) != 0)
            continue;
        snprintf(info, sizeof info, "/proc/self/fdinfo/%d", fd);
        FILE *fp = fopen(info, "r");
        unsigned flags = 0;
        char line[128];
        while (fp && fgets(line, sizeof line, fp))
            sscanf(line, "flags: %o", &flags);
        if (fp)
            fclose(fp);
        return (flags & O_DIRECT) != 0;
    }
    return false;
}

static void test_flag_and_alignment(size_t want_min)
{
    unlink(path);
    vdk_file *f = open_direct(VDK_FILE_RDWR | VDK_FILE_CREATE);
    if (!f)
        return;
    size_t a = vdk_file_alignment(f);
    CHECK(a >= 512 && a >= want_min && (a & (a - 1)) == 0);
    CHECK(fd_has_direct());
    vdk_file_unref(f);
}

/* Random unaligned I/O against a model of the file's bytes. */
static void test_random_vs_model(unsigned seed)
{
    enum { SPAN = 256 * 1024, MAXLEN = 20000 };
    unlink(path);
    vdk_file *f = open_direct(VDK_FILE_RDWR | VDK_FILE_CREATE);
    if (!f)
        return;
    unsigned char *model = calloc(1, SPAN + MAXLEN);
    unsigned char *raw = malloc(MAXLEN + 64), *back = malloc(MAXLEN + 64);
    uint64_t model_size = 0;
    srand(seed);
    for (int i = 0; i < 1500; i++) {
        uint64_t off = (uint64_t)rand() % SPAN;
        size_t len = 1 + (size_t)rand() % (i % 10 == 0 ? MAXLEN : 1500);
        size_t mis = (size_t)rand() % 64; /* buffer misalignment */
        if (rand() % 3) {
            for (size_t j = 0; j < len; j++)
                raw[mis + j] = (unsigned char)rand();
            CHECK_OK(vdk_file_pwrite(f, raw + mis, len, off, &e_));
            memcpy(model + off, raw + mis, len);
            if (off + len > model_size)
                model_size = off + len;
            CHECK(fsize(f) == model_size);
        } else {
            CHECK_OK(vdk_file_pread(f, back + mis, len, off, &e_));
            CHECK(memcmp(back + mis, model + off, len) == 0);
        }
        if (failures > 20)
            break;
    }
    /* Whole-file comparison through a plain descriptor. */
    int fd = open(path, O_RDONLY);
    unsigned char *all = malloc(model_size);
    CHECK(pread(fd, all, model_size, 0) == (ssize_t)model_size);
    CHECK(memcmp(all, model, model_size) == 0);
    close(fd);
    free(all);
    free(model);
    free(raw);
    free(back);
    vdk_file_unref(f);
}

static void test_extend_and_eof(void)
{
    unlink(path);
    vdk_file *f = open_direct(VDK_FILE_RDWR | VDK_FILE_CREATE);
    if (!f)
        return;
    size_t a = vdk_file_alignment(f);
    char *buf = vdk_alloc_aligned(4 * a, true);
    memset(buf, 0x5a, 100);
    CHECK_OK(vdk_file_pwrite(f, buf, 100, 10, &e_));
    CHECK(fsize(f) == 110);
    CHECK_OK(vdk_file_pwrite(f, buf, 3, 3 * a + 7, &e_)); /* far past EOF */
    CHECK(fsize(f) == 3 * a + 10);
    CHECK_OK(vdk_file_pwrite(f, buf, 1, 20, &e_)); /* inside: size unchanged */
    CHECK(fsize(f) == 3 * a + 10);
    /* Aligned reads over EOF: data, then zeros. */
    memset(buf, 0xee, 4 * a);
    CHECK_OK(vdk_file_pread(f, buf, 4 * a, 0, &e_));
    bool ok = true;
    for (size_t i = 0; i < 4 * a; i++) {
        int want = (i >= 10 && i < 110) || (i >= 3 * a + 7 && i < 3 * a + 10) ? 0x5a : 0;
        ok &= (unsigned char)buf[i] == want;
    }
    CHECK(ok);
    memset(buf, 0xee, 4 * a);
    CHECK_OK(vdk_file_pread(f, buf, 2 * a, 8 * a, &e_)); /* wholly past EOF */
    CHECK(buf[0] == 0 && buf[2 * a - 1] == 0);
    /* Unaligned read across EOF. */
    memset(buf, 0xee, 4 * a);
    CHECK_OK(vdk_file_pread(f, buf + 1, 50, 3 * a + 5, &e_));
    CHECK(buf[1] == 0 && buf[3] == 0x5a && buf[5] == 0x5a && buf[6] == 0 && buf[50] == 0);
    /* Truncate to an odd size, then an aligned read of the last block. */
    CHECK_OK(vdk_file_truncate(f, 105, &e_));
    memset(buf, 0xee, a);
    CHECK_OK(vdk_file_pread(f, buf, a, 0, &e_));
    CHECK(buf[104] == 0x5a && buf[105] == 0);
    free(buf);
    vdk_file_unref(f);
}

/* Aligned offsets and lengths with a misaligned buffer larger than the
 * bounce buffer. */
static void test_big_misaligned_buffer(void)
{
    unlink(path);
    vdk_file *f = open_direct(VDK_FILE_RDWR | VDK_FILE_CREATE);
    if (!f)
        return;
    size_t a = vdk_file_alignment(f), n = 3 << 20;
    unsigned char *src = malloc(n + 8), *dst = malloc(n + 8);
    for (size_t i = 0; i < n; i++)
        src[1 + i] = (unsigned char)(i ^ (i >> 11));
    CHECK_OK(vdk_file_pwrite(f, src + 1, n, a, &e_));
    CHECK_OK(vdk_file_pread(f, dst + 3, n, a, &e_));
    CHECK(memcmp(src + 1, dst + 3, n) == 0);
    /* Unaligned everything, large. */
    CHECK_OK(vdk_file_pwrite(f, src + 5, n - 100, 77, &e_));
    CHECK_OK(vdk_file_pread(f, dst + 1, n - 100, 77, &e_));
    CHECK(memcmp(src + 5, dst + 1, n - 100) == 0);
    CHECK(fsize(f) == a + n);
    free(src);
    free(dst);
    vdk_file_unref(f);
}

/* Threads writing adjacent pieces of the same blocks at the same time. */
enum { THREADS = 4, BLOCKS = 400 };
struct rmw_arg {
    vdk_file *f;
    int t;
    size_t piece;
    int errors;
};

static void *rmw_thread(void *p)
{
    struct rmw_arg *arg = p;
    size_t a = vdk_file_alignment(arg->f);
    unsigned char buf[8192];
    for (int b = 0; b < BLOCKS; b++) {
        memset(buf, (unsigned char)(arg->t * 50 + b % 50 + 1), arg->piece);
        vdk_error e = {0};
        if (vdk_file_pwrite(arg->f, buf, arg->piece, (uint64_t)b * a + (uint64_t)arg->t * arg->piece,
                            &e) < 0)
            arg->errors++;
    }
    return NULL;
}

static void test_concurrent_rmw(void)
{
    unlink(path);
    vdk_file *f = open_direct(VDK_FILE_RDWR | VDK_FILE_CREATE);
    if (!f)
        return;
    size_t a = vdk_file_alignment(f);
    size_t piece = a / THREADS; /* adjacent pieces, each smaller than a block */
    pthread_t th[THREADS];
    struct rmw_arg args[THREADS];
    for (int t = 0; t < THREADS; t++) {
        args[t] = (struct rmw_arg){.f = f, .t = t, .piece = piece};
        pthread_create(&th[t], NULL, rmw_thread, &args[t]);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        CHECK(args[t].errors == 0);
    }
    /* Every piece holds its thread's last value; the file ends exactly at the
     * end of the last block's last piece. */
    unsigned char *all = vdk_alloc_aligned(a * BLOCKS, false);
    CHECK_OK(vdk_file_pread(f, all, a * BLOCKS, 0, &e_));
    int lost = 0;
    for (int b = 0; b < BLOCKS; b++)
        for (int t = 0; t < THREADS; t++)
            for (size_t i = 0; i < piece; i++)
                if (all[(size_t)b * a + (size_t)t * piece + i] != (unsigned char)(t * 50 + b % 50 + 1)) {
                    lost++;
                    break;
                }
    if (lost)
        fprintf(stderr, "concurrent RMW: %d of %d pieces lost\n", lost, BLOCKS * THREADS);
    CHECK(lost == 0);
    CHECK(fsize(f) == (uint64_t)a * BLOCKS);
    free(all);
    vdk_file_unref(f);
}

/* Space ops under O_DIRECT with unaligned ranges. */
static void test_direct_space(void)
{
    unlink(path);
    vdk_file *f = open_direct(VDK_FILE_RDWR | VDK_FILE_CREATE);
    if (!f)
        return;
    size_t n = 1 << 20;
    unsigned char *buf = malloc(n);
    memset(buf, 0x77, n);
    CHECK_OK(vdk_file_pwrite(f, buf, n, 0, &e_));
    CHECK_OK(vdk_file_write_zeroes(f, 1000, 70000, false, &e_));
    CHECK_OK(vdk_file_discard(f, 200000, 100001, &e_));
    CHECK_OK(vdk_file_write_zeroes(f, 500003, 7, true, &e_));
    CHECK_OK(vdk_file_write_zeroes(f, n - 10, 100, true, &e_)); /* extends */
    CHECK(fsize(f) == n + 90);
    memset(buf, 0xee, n);
    CHECK_OK(vdk_file_pread(f, buf, n, 0, &e_));
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        bool zero = (i >= 1000 && i < 71000) || (i >= 200000 && i < 300001) ||
                    (i >= 500003 && i < 500010) || i >= n - 10;
        bad += buf[i] != (zero ? 0 : 0x77);
    }
    CHECK(bad == 0);
    CHECK_OK(vdk_file_allocate(f, n + 90, 12345, VDK_PREALLOC_FULL, &e_));
    CHECK(fsize(f) == n + 90 + 12345);
    CHECK_OK(vdk_file_flush(f, &e_));
    free(buf);
    vdk_file_unref(f);
}

static void run_all(size_t min_align)
{
    CHECK(vdk_file_test_min_direct_alignment(min_align) == 0);
    test_flag_and_alignment(min_align);
    test_random_vs_model(1 + (unsigned)min_align);
    test_extend_and_eof();
    test_big_misaligned_buffer();
    test_concurrent_rmw();
    test_direct_space();
    CHECK(vdk_file_test_min_direct_alignment(0) == 0);
}

int main(void)
{
    if (!make_dir()) {
        printf("test_file_direct: skipped: no directory on a non-tmpfs file system\n");
        return 0;
    }
    snprintf(path, sizeof path, "%s/direct.img", dir);
    CHECK(vdk_file_test_min_direct_alignment(3) == -EINVAL);
    run_all(0);
    run_all(4096);
    unlink(path);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_file_direct: %d checks failed\n", failures);
        return 1;
    }
    printf("test_file_direct: all checks passed\n");
    return 0;
}
