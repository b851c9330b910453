/*
 * test_file_record.c - the crash-recording file (core/file-record.c): every
 * change and flush is logged in completion order, and replaying any prefix
 * or subset onto a copy of the starting state rebuilds exactly that state.
 */
#include <stdio.h>
#include <string.h>

#include "file-test.h"

static int failures;
#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                               \
        }                                                                             \
    } while (0)

static void fill(vdk_file *f, uint8_t v, uint64_t off, size_t len)
{
    uint8_t buf[4096];
    memset(buf, v, sizeof buf);
    CHECK(vdk_file_pwrite(f, buf, len, off, NULL) == 0);
}

static uint8_t byte_at(vdk_file *f, uint64_t off)
{
    uint8_t b = 0xee;
    CHECK(vdk_file_pread(f, &b, 1, off, NULL) == 0);
    return b;
}

int main(void)
{
    vdk_file *base = vdk_file_new_memory("base");
    fill(base, 0x01, 0, 4096); /* the starting state */
    vdk_file *start = vdk_file_new_memory("start");
    fill(start, 0x01, 0, 4096);

    vdk_record *log = vdk_record_new();
    vdk_file *rf = vdk_file_record_new(base, log);
    CHECK(rf != NULL);
    fill(rf, 0x02, 0, 512);                                /* 0: write */
    CHECK(vdk_file_flush(rf, NULL) == 0);                  /* 1: flush */
    fill(rf, 0x03, 512, 512);                              /* 2: write */
    CHECK(vdk_file_write_zeroes(rf, 1024, 512, false, NULL) == 0); /* 3: zero */
    CHECK(vdk_file_truncate(rf, 8192, NULL) == 0);         /* 4: truncate */
    CHECK(vdk_record_count(log) == 5);
    struct vdk_record_entry e;
    CHECK(vdk_record_entry(log, 1, &e) == 0 && e.kind == VDK_RECORD_FLUSH);
    CHECK(vdk_record_entry(log, 3, &e) == 0 && e.kind == VDK_RECORD_ZERO && e.off == 1024);
    CHECK(vdk_record_entry(log, 5, &e) < 0);
    /* Reads pass through. */
    CHECK(byte_at(rf, 512) == 0x03);

    /* A crash after the flush that lost write 2 but kept the zeroing. */
    size_t pick[] = {0, 1, 3};
    CHECK(vdk_record_apply(log, start, pick, 3, NULL) == 0);
    CHECK(byte_at(start, 0) == 0x02);
    CHECK(byte_at(start, 512) == 0x01);
    CHECK(byte_at(start, 1024) == 0x00);
    uint64_t size = 0;
    CHECK(vdk_file_size(start, &size, NULL) == 0 && size == 4096);
    size_t rest[] = {2, 4};
    CHECK(vdk_record_apply(log, start, rest, 2, NULL) == 0);
    CHECK(byte_at(start, 512) == 0x03);
    CHECK(vdk_file_size(start, &size, NULL) == 0 && size == 8192);
    size_t bad[] = {9};
    vdk_error err;
    CHECK(vdk_record_apply(log, start, bad, 1, &err) < 0);

    vdk_file_unref(rf);
    vdk_record_free(log);
    vdk_file_unref(base);
    vdk_file_unref(start);
    if (failures) {
        fprintf(stderr, "test_file_record: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_file_record: ok\n");
    return 0;
}
