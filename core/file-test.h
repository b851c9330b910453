/*
 * file-test.h - test wrappers of the file layer: fault files.
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

#endif /* VDK_FILE_TEST_H */
