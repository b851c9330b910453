/*
 * file-test.h - test wrappers of the file layer: fault files and crash
 * recording.
 *
 * Always compiled (the test module exposes them to Lua; C tests link them).
 * A fault file stacks over a base file and fails chosen operations with a
 * chosen error, so tests can drive every error path of a format: "fail the
 * 3rd write with -ENOSPC", "fail every flush from the 2nd on with -EIO". It
 * counts the operations it has seen, so a sweep can run N = 1, 2, ... until
 * the fault no longer fires. Install one on files opened by path with
 * vdk_file_set_open_hook (file.h): the hook gets the opened file and returns
 * the wrapper after dropping its own reference to the file (the wrapper holds
 * one), or, if it cannot wrap, the file itself unchanged (never NULL). Setting
 * and clearing the hook is thread-safe; a hook in force when an open starts
 * is the one that open uses.
 */
#ifndef VDK_FILE_TEST_H
#define VDK_FILE_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "file.h"

/* Operation kinds a fault can target. */
enum vdk_fault_op {
    VDK_FAULT_READ = 1,  /* vdk_file_pread */
    VDK_FAULT_WRITE = 2, /* pwrite, write_zeroes, discard, truncate, allocate */
    VDK_FAULT_FLUSH = 3, /* vdk_file_flush */
    VDK_FAULT_ANY = 4,   /* any of the above, counted together */
};

struct vdk_fault_spec {
    int op;          /* enum vdk_fault_op */
    uint64_t nth;    /* fail the nth operation of that kind, 1-based; 0 = never */
    int error;       /* negative errno to fail with; 0 means -EIO */
    bool persistent; /* fail every operation of that kind from the nth on */
};

/* Operations seen so far (failed ones included). size, block_status and
 * allocated_size queries pass through uncounted. */
struct vdk_fault_counts {
    uint64_t reads, writes, flushes;
    uint64_t total;  /* reads + writes + flushes */
    uint64_t fired;  /* operations that were failed */
};

/*
 * A fault file over base, named and flagged like base. Takes a new reference
 * on base (the caller keeps its own). NULL on allocation failure or bad spec.
 */
vdk_file *vdk_file_fault_new(vdk_file *base, const struct vdk_fault_spec *spec);

/* Re-arm with a new spec and zero the counts. -EINVAL if f is no fault file. */
int vdk_file_fault_set(vdk_file *f, const struct vdk_fault_spec *spec);

/* Read the counts. -EINVAL if f is no fault file. */
int vdk_file_fault_counts(vdk_file *f, struct vdk_fault_counts *counts);

/*
 * Make later O_DIRECT opens use at least this alignment (a power of two up to
 * 64 KiB; 0 restores probing alone), so tests can exercise 4 KiB bouncing on
 * a 512-byte device. A larger alignment than the device needs is always
 * valid. -EINVAL for a bad value.
 */
int vdk_file_test_min_direct_alignment(size_t align);

/* ---------------------------------------------------------------- crash recording */

/*
 * A recording file (file-record.c) passes every operation to its base and
 * logs each completed change and flush, so that a replayer can rebuild the
 * states a crash could leave. See file-record.c for the model.
 */
enum vdk_record_kind {
    VDK_RECORD_WRITE = 1,    /* data written at off */
    VDK_RECORD_ZERO = 2,     /* [off, off+len) reads as zeros (zeroing, discard, growth) */
    VDK_RECORD_TRUNCATE = 3, /* file length set to off */
    VDK_RECORD_FLUSH = 4,    /* everything before is durable */
};

struct vdk_record_entry {
    int kind;
    uint64_t off;
    uint64_t len;
    void *data; /* VDK_RECORD_WRITE only; owned by the log */
};

typedef struct vdk_record vdk_record;

vdk_record *vdk_record_new(void);
void vdk_record_free(vdk_record *r);
size_t vdk_record_count(const vdk_record *r);
/* Copy entry i (its data pointer stays owned by the log). -EINVAL past the end. */
int vdk_record_entry(const vdk_record *r, size_t i, struct vdk_record_entry *out);

/* A recording file over base, logging into log (which must outlive it).
 * Takes a new reference on base. NULL on allocation failure. */
vdk_file *vdk_file_record_new(vdk_file *base, vdk_record *log);

/* Apply entries idx[0..n) of the log, in that order, to target (a copy of
 * the file as it was when recording started). Flush entries are no-ops. */
int vdk_record_apply(const vdk_record *r, vdk_file *target, const size_t *idx, size_t n,
                     vdk_error *err);

#endif /* VDK_FILE_TEST_H */
