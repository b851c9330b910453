/*
 * file-int.h - inside the file layer: the vtable every kind of file fills.
 *
 * A vdk_file is a struct vdk_file embedded first in a kind's own struct (the
 * POSIX file, the memory file, wrappers such as the fault file). The public
 * vdk_file_* wrappers of file.c check arguments, call the kind's op and turn
 * a failure into a message; the ops themselves only return 0 or a negative
 * errno (or VDK_E* code) and never write messages. Wrappers stacked over a
 * base file call the base's ops directly, so one failure gets one message,
 * written once by the outermost public wrapper under the outer file's name.
 *
 * Op contracts (the wrapper has already checked them): len > 0, off + len
 * does not overflow an int64_t, buffers are not NULL, write ops are only called
 * on writable files. A NULL op means "not supported" (-ENOTSUP), except that
 * a NULL flush is a successful no-op and a NULL block_status reports data.
 */
#ifndef VDK_FILE_INT_H
#define VDK_FILE_INT_H

#include <stdatomic.h>

#include "driver.h"
#include "file.h"

struct vdk_file_ops {
    const char *kind; /* "posix", "memory", "fault", ... */
    /* Read all len bytes; bytes past EOF read as zeros. */
    int (*pread)(vdk_file *f, void *buf, size_t len, uint64_t off);
    /* Write all len bytes, extending the file as needed. */
    int (*pwrite)(vdk_file *f, const void *buf, size_t len, uint64_t off);
    int (*flush)(vdk_file *f);
    int (*size)(vdk_file *f, uint64_t *size);
    int (*truncate)(vdk_file *f, uint64_t size);
    int (*allocate)(vdk_file *f, uint64_t off, uint64_t len, int prealloc);
    int (*write_zeroes)(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap);
    int (*discard)(vdk_file *f, uint64_t off, uint64_t len);
    int (*block_status)(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                        uint64_t *run);
    int64_t (*allocated_size)(vdk_file *f);
    /* Release everything; called once, on the last unref. Must call
     * vdk_file_fini and free the struct. */
    void (*destroy)(vdk_file *f);
};

struct vdk_file {
    const struct vdk_file_ops *ops;
    atomic_uint refs;
    char *name;    /* for messages: the path as given, or the memory file's name */
    bool writable;
    int cache;     /* enum vdk_cache_mode */
    size_t align;  /* power of two: 1, or the O_DIRECT block size */
    /* Changed since the last successful flush (writable files start dirty,
     * so the first flush always reaches the disk). A flush with nothing
     * changed is skipped: a job that flushed once does not fsync again on
     * close. */
    atomic_bool dirty;
};

/* Largest piece any op bounces or zero-fills at a time. */
#define VDK_FILE_CHUNK ((size_t)1 << 20)

/* Fill the common part (one reference, a copy of name). -ENOMEM on failure. */
int vdk_file_init(vdk_file *f, const struct vdk_file_ops *ops, const char *name,
                  bool writable, int cache, size_t align);
void vdk_file_fini(vdk_file *f);

/* The POSIX kind (file-posix.c): open, lock (file-lock.c), truncate if asked. */
int vdk_file_posix_open(const char *path, unsigned flags, int cache, vdk_file **out,
                        vdk_error *err);

/*
 * QEMU-compatible image locking on fd (file-lock.c): take the lock bytes for
 * the permissions flags implies, then check nobody conflicts. 0 also when the
 * file system has no OFD locks (locking is skipped, as QEMU does).
 */
int vdk_file_lock_fd(int fd, const char *name, unsigned flags, vdk_error *err);

/* POSIX internals shared by file-posix.c and file-posix-space.c. */
int vdk_posix_fd(vdk_file *f);
/* fallocate(2) under the O_DIRECT RMW lock; -ENOTSUP (remembered) when the
 * file system has no such mode. */
int vdk_posix_fallocate(vdk_file *f, int mode, uint64_t off, uint64_t len);
/* Grow the file to size (sparse) if it is shorter. */
int vdk_posix_extend(vdk_file *f, uint64_t size);
int vdk_posix_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc);
int vdk_posix_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap);
int vdk_posix_discard(vdk_file *f, uint64_t off, uint64_t len);
int vdk_posix_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                           uint64_t *run);

/* A static, never written, zero-filled buffer of VDK_FILE_CHUNK bytes, aligned
 * for direct I/O, for writing zeros. */
const void *vdk_file_zero_buf(void);

#endif /* VDK_FILE_INT_H */
