/*
 * file.h - the file layer: byte-addressed host files under a cache mode.
 *
 * Every byte vdk reads from or writes to a host file goes through the
 * vdk_file_* wrappers declared here. They are the one choke point where
 * errors get their message (file name, offset, cause), where test builds
 * inject faults and record writes for crash replay, and where O_DIRECT's
 * alignment rules are met with bounce buffers. Formats use this API for their
 * own file; they never call read(2) or write(2) themselves.
 *
 * Kinds of file: a POSIX file (optionally O_DIRECT), an in-memory file (for
 * tests), and wrappers stacked over another file (fault injection, write
 * recording). All calls are thread-safe; concurrent writes to overlapping
 * ranges have no defined order, exactly as with pwrite(2).
 */
#ifndef VDK_FILE_H
#define VDK_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vdk.h"

typedef struct vdk_file vdk_file;

/* vdk_file_open flags. */
#define VDK_FILE_RDWR 0x01        /* open for writing */
#define VDK_FILE_CREATE 0x02      /* create if missing (mode 0644 minus umask) */
#define VDK_FILE_TRUNC 0x04       /* truncate to zero length, after locking */
#define VDK_FILE_NOLOCK 0x08      /* take no locks (locking=off) */
#define VDK_FILE_FORCE_SHARE 0x10 /* read-only; ignore other users' locks (-U) */

/*
 * Open a host file. The cache mode (enum vdk_cache_mode) decides O_DIRECT and
 * what vdk_file_flush does. Unless VDK_FILE_NOLOCK, the file is locked the way
 * QEMU locks image files (OFD byte-range locks on bytes 100+ and 200+), so
 * that vdk and QEMU refuse to write an image the other one is using:
 * read-only opens conflict with writers, writers with everyone but -U readers.
 * A conflict fails with VDK_ELOCKED and a message that names the file.
 */
int vdk_file_open(const char *path, unsigned flags, int cache, vdk_file **out,
                  vdk_error *err);

/* A growable in-memory file, empty, named for messages. Never fails except
 * on allocation (NULL). */
vdk_file *vdk_file_new_memory(const char *name);

vdk_file *vdk_file_ref(vdk_file *f);
void vdk_file_unref(vdk_file *f); /* closes on the last reference */

const char *vdk_file_name(const vdk_file *f);
bool vdk_file_is_writable(const vdk_file *f);
int vdk_file_cache_mode(const vdk_file *f);

/*
 * Required alignment of buffer addresses, offsets and lengths for I/O that
 * avoids a bounce buffer (the logical block size under O_DIRECT, 1 otherwise).
 * Unaligned requests are still correct: the wrappers bounce them.
 */
size_t vdk_file_alignment(const vdk_file *f);

/*
 * Read len bytes at off. Bytes past the end of the file read as zeros (a
 * short file is not an error here; formats check offsets against the file
 * size before trusting them).
 */
int vdk_file_pread(vdk_file *f, void *buf, size_t len, uint64_t off, vdk_error *err);
/* Write all len bytes at off, extending the file if needed. */
int vdk_file_pwrite(vdk_file *f, const void *buf, size_t len, uint64_t off,
                    vdk_error *err);
/* Make completed writes durable: fdatasync, except under cache=unsafe. */
int vdk_file_flush(vdk_file *f, vdk_error *err);

int vdk_file_size(vdk_file *f, uint64_t *size, vdk_error *err);
/* Set the file length; growth reads as zeros (sparse). */
int vdk_file_truncate(vdk_file *f, uint64_t size, vdk_error *err);

/*
 * Preallocate [off, off+len): VDK_PREALLOC_FALLOC reserves blocks with
 * fallocate(2) (falling back to writing zeros where unsupported),
 * VDK_PREALLOC_FULL writes zeros. Extends the file when the range ends past EOF.
 */
int vdk_file_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc,
                      vdk_error *err);

/* Make [off, off+len) read as zeros. With may_unmap, holes may be punched;
 * otherwise blocks stay allocated (FALLOC_FL_ZERO_RANGE or written zeros). */
int vdk_file_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap,
                          vdk_error *err);
/* Punch a hole (keep size). -ENOTSUP when the file system cannot; the range
 * then keeps its old contents. */
int vdk_file_discard(vdk_file *f, uint64_t off, uint64_t len, vdk_error *err);

/*
 * Data/hole status at off (SEEK_DATA/SEEK_HOLE): *is_data says whether off is
 * in data or a hole and *run (> 0, <= len) how many bytes from off share that
 * state. Past EOF is a hole. Files that cannot tell report all data.
 */
int vdk_file_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                          uint64_t *run, vdk_error *err);

/* Bytes allocated on the host (st_blocks * 512), or -errno. */
int64_t vdk_file_allocated_size(vdk_file *f);

/* Memory aligned for any file's direct I/O (4096), zeroed when zero is set.
 * Release with free(). */
void *vdk_alloc_aligned(size_t len, bool zero);

/*
 * Test hook: when set, every vdk_file_open passes the opened file through it;
 * the hook may return a wrapper (taking over the reference) or the file
 * itself. Used by the test module for fault injection and crash recording.
 */
typedef vdk_file *(*vdk_file_open_hook)(vdk_file *f, const char *path, void *ctx);
void vdk_file_set_open_hook(vdk_file_open_hook hook, void *ctx);

#endif /* VDK_FILE_H */
