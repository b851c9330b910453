/*
 * test_file_fault.c - fault files: the Nth operation of a kind fails with
 * the chosen error, once or from then on; counts drive a sweep; the open
 * hook installs fault files on files opened by path.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "driver.h"
#include "file-test.h"
#include "file.h"

static int failures;

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

static void test_nth_write_once(void)
{
    vdk_file *mem = vdk_file_new_memory("disk.qcow2");
    struct vdk_fault_spec spec = {.op = VDK_FAULT_WRITE, .nth = 3, .error = -ENOSPC};
    vdk_file *f = vdk_file_fault_new(mem, &spec);
    vdk_file_unref(mem); /* the fault file holds its own reference */
    CHECK(f && strcmp(vdk_file_name(f), "disk.qcow2") == 0 && vdk_file_is_writable(f));
    char buf[65536];
    memset(buf, 7, sizeof buf);
    vdk_error e = {0};
    CHECK(vdk_file_pwrite(f, buf, 512, 0, &e) == 0);
    CHECK(vdk_file_pread(f, buf, 512, 0, &e) == 0); /* reads are not counted as writes */
    CHECK(vdk_file_pwrite(f, buf, 512, 512, &e) == 0);
    CHECK(vdk_file_pwrite(f, buf, 65536, 0x30000, &e) == -ENOSPC);
    CHECK(e.code == -ENOSPC);
    CHECK(strcmp(e.msg, "disk.qcow2: write of 65536 bytes at offset 0x30000 failed: "
                        "No space left on device") == 0);
    uint64_t size = 0;
    CHECK(vdk_file_size(f, &size, &e) == 0 && size == 1024); /* nothing reached the base */
    CHECK(vdk_file_pwrite(f, buf, 512, 1024, &e) == 0);       /* once only */
    struct vdk_fault_counts c;
    CHECK(vdk_file_fault_counts(f, &c) == 0);
    CHECK(c.writes == 4 && c.reads == 1 && c.flushes == 0 && c.total == 5 && c.fired == 1);
    CHECK(vdk_file_fault_counts(NULL, &c) == -EINVAL);
    vdk_file_unref(f);
}

static void test_persistent_flush_and_kinds(void)
{
    vdk_file *mem = vdk_file_new_memory("m");
    struct vdk_fault_spec spec = {.op = VDK_FAULT_FLUSH, .nth = 2, .persistent = true};
    vdk_file *f = vdk_file_fault_new(mem, &spec);
    vdk_error e = {0};
    uint8_t one[512] = {1};
    /* A flush with nothing written since the last one is skipped, so each
     * flush here follows a write. */
    CHECK(vdk_file_pwrite(f, one, sizeof one, 0, &e) == 0);
    CHECK(vdk_file_flush(f, &e) == 0);
    CHECK(vdk_file_flush(f, &e) == 0); /* nothing new: not even counted */
    CHECK(vdk_file_pwrite(f, one, sizeof one, 0, &e) == 0);
    CHECK(vdk_file_flush(f, &e) == -EIO && strstr(e.msg, "m: flush failed"));
    CHECK(vdk_file_flush(f, &e) == -EIO); /* still dirty after a failed flush */
    CHECK(vdk_file_truncate(f, 0, &e) == 0);  /* back to empty for the checks below */
    /* write_zeroes, discard, truncate and allocate count as writes. */
    spec = (struct vdk_fault_spec){.op = VDK_FAULT_WRITE, .nth = 1, .error = -EDQUOT,
                                   .persistent = true};
    CHECK(vdk_file_fault_set(f, &spec) == 0);
    CHECK(vdk_file_write_zeroes(f, 0, 4096, true, &e) == -EDQUOT);
    CHECK(vdk_file_discard(f, 0, 4096, &e) == -EDQUOT);
    CHECK(vdk_file_truncate(f, 4096, &e) == -EDQUOT);
    CHECK(vdk_file_allocate(f, 0, 4096, VDK_PREALLOC_FULL, &e) == -EDQUOT);
    CHECK(vdk_file_flush(f, &e) == 0);
    struct vdk_fault_counts c;
    vdk_file_fault_counts(f, &c);
    CHECK(c.writes == 4 && c.flushes == 1 && c.fired == 4);
    /* Size and block status pass through uncounted. */
    uint64_t size, run;
    bool data;
    CHECK(vdk_file_size(f, &size, &e) == 0 && size == 0);
    CHECK(vdk_file_block_status(f, 0, 100, &data, &run, &e) == 0 && !data && run == 100);
    vdk_file_fault_counts(f, &c);
    CHECK(c.total == 5);
    /* A bad spec is refused. */
    spec.op = 99;
    CHECK(vdk_file_fault_set(f, &spec) == -EINVAL);
    CHECK(vdk_file_fault_new(mem, &spec) == NULL);
    CHECK(vdk_file_fault_set(mem, &(struct vdk_fault_spec){.op = 1}) == -EINVAL);
    vdk_file_unref(f);
    vdk_file_unref(mem);
}

/* A small "workload": what a sweep would run against the faulty file. */
static int workload(vdk_file *f, vdk_error *e)
{
    char buf[4096] = {1};
    int r;
    for (int i = 0; i < 3; i++)
        if ((r = vdk_file_pwrite(f, buf, sizeof buf, (uint64_t)i * 4096, e)) < 0)
            return r;
    if ((r = vdk_file_pread(f, buf, sizeof buf, 0, e)) < 0)
        return r;
    if ((r = vdk_file_flush(f, e)) < 0)
        return r;
    return vdk_file_pwrite(f, buf, 10, 5, e);
}

static void test_sweep_any(void)
{
    uint64_t n;
    int failed_runs = 0;
    for (n = 1;; n++) {
        vdk_file *mem = vdk_file_new_memory("sweep");
        struct vdk_fault_spec spec = {.op = VDK_FAULT_ANY, .nth = n, .error = -EIO};
        vdk_file *f = vdk_file_fault_new(mem, &spec);
        vdk_file_unref(mem);
        vdk_error e = {0};
        int r = workload(f, &e);
        struct vdk_fault_counts c;
        vdk_file_fault_counts(f, &c);
        vdk_file_unref(f);
        if (c.fired == 0) {
            CHECK(r == 0 && c.total == 6);
            break;
        }
        CHECK(r == -EIO && c.fired == 1 && c.total == n);
        failed_runs++;
        if (n > 100)
            break;
    }
    CHECK(n == 7 && failed_runs == 6);
}

/* The open hook wraps every file opened by path. */
static struct vdk_fault_spec hook_spec = {.op = VDK_FAULT_READ, .nth = 1, .error = -EBADMSG};
static vdk_file *fault_hook(vdk_file *f, const char *path, void *ctx)
{
    vdk_file *w = vdk_file_fault_new(f, &hook_spec);
    if (!w)
        return f;
    vdk_file_unref(f); /* the wrapper took over */
    *(int *)ctx += 1;
    return w;
}

static void test_open_hook(void)
{
    char path[] = "/tmp/vdk-test-fault-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, "hello", 5) == 5);
    close(fd);
    int calls = 0;
    vdk_file_set_open_hook(fault_hook, &calls);
    vdk_file *f;
    vdk_error e = {0};
    CHECK(vdk_file_open(path, 0, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    vdk_file_set_open_hook(NULL, NULL);
    CHECK(calls == 1);
    char buf[5];
    CHECK(vdk_file_pread(f, buf, 5, 0, &e) == -EBADMSG && strstr(e.msg, path));
    CHECK(vdk_file_pread(f, buf, 5, 0, &e) == 0 && memcmp(buf, "hello", 5) == 0);
    struct vdk_fault_counts c;
    CHECK(vdk_file_fault_counts(f, &c) == 0 && c.reads == 2);
    vdk_file_unref(f);
    CHECK(vdk_file_open(path, 0, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    CHECK(vdk_file_fault_counts(f, &c) == -EINVAL); /* hook cleared: a plain file */
    vdk_file_unref(f);
    unlink(path);
}

int main(void)
{
    test_nth_write_once();
    test_persistent_flush_and_kinds();
    test_sweep_any();
    test_open_hook();
    if (failures) {
        fprintf(stderr, "test_file_fault: %d checks failed\n", failures);
        return 1;
    }
    printf("test_file_fault: all checks passed\n");
    return 0;
}
