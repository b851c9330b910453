/*
 * file-posix-space.c - space management of POSIX files: preallocation,
 * zeroing, discard and data/hole status.
 *
 * fallocate(2) does the work where the file system can (punch hole, zero
 * range, plain allocation); where it cannot, zeros are written through the
 * normal write path (so O_DIRECT alignment is handled there) in pieces of at
 * most VDK_FILE_CHUNK bytes from a static zero buffer, never allocating
 * memory in proportion to the range. Data/hole status comes from
 * lseek(SEEK_DATA/SEEK_HOLE).
 *
 * Growing the file (allocate with prealloc off) samples the size and then
 * truncates, so like any resize it must not race with writes past EOF.
 * Zeroing never shrinks a file: it grows it by writing its last byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

#include "file-int.h"

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Write zeros over [off, off+len) in bounded pieces; after a first short
 * piece up to an alignment boundary, every piece takes O_DIRECT's fast path. */
static int write_zero_chunks(vdk_file *f, uint64_t off, uint64_t len)
{
    const void *zeros = vdk_file_zero_buf();
    uint64_t a = f->align;
    while (len > 0) {
        uint64_t to_boundary = (a - (off & (a - 1))) & (a - 1);
        size_t n = (size_t)min_u64(len, to_boundary ? to_boundary : VDK_FILE_CHUNK);
        int r = f->ops->pwrite(f, zeros, n, off);
        if (r < 0)
            return r;
        off += n;
        len -= n;
    }
    return 0;
}

/* Write zeros into the holes of [off, off+len) and past EOF; keep data. */
static int fill_holes(vdk_file *f, uint64_t off, uint64_t len)
{
    uint64_t size, end = off + len;
    int r = f->ops->size(f, &size);
    while (r == 0 && off < end) {
        if (off >= size)
            return write_zero_chunks(f, off, end - off);
        bool data;
        uint64_t run;
        r = vdk_posix_block_status(f, off, min_u64(end, size) - off, &data, &run);
        if (r == 0 && !data)
            r = write_zero_chunks(f, off, run);
        off += run;
    }
    return r;
}

int vdk_posix_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc)
{
    switch (prealloc) {
    case VDK_PREALLOC_FALLOC: {
        int r = vdk_posix_fallocate(f, 0, off, len);
        if (r != -ENOTSUP && r != -EINVAL)
            return r;
        return fill_holes(f, off, len);
    }
    case VDK_PREALLOC_FULL:
        return fill_holes(f, off, len);
    default:
        return vdk_posix_extend(f, off + len);
    }
}

int vdk_posix_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap)
{
    uint64_t size, end = off + len;
    int r = f->ops->size(f, &size);
    if (r < 0)
        return r;
    if (may_unmap) {
        r = off < size ? vdk_posix_fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                             off, min_u64(end, size) - off)
                       : 0;
        if (r == 0 && end > size) {
            static const char zero;
            r = f->ops->pwrite(f, &zero, 1, end - 1);
        }
        if (r != -ENOTSUP)
            return r;
    }
    r = vdk_posix_fallocate(f, FALLOC_FL_ZERO_RANGE, off, len);
    if (r != -ENOTSUP && r != -EINVAL)
        return r;
    return write_zero_chunks(f, off, len);
}

int vdk_posix_discard(vdk_file *f, uint64_t off, uint64_t len)
{
    uint64_t size;
    int r = f->ops->size(f, &size);
    if (r < 0 || off >= size)
        return r;
    return vdk_posix_fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
                               min_u64(off + len, size) - off);
}

int vdk_posix_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                           uint64_t *run)
{
    int fd = vdk_posix_fd(f);
    uint64_t size;
    int r = f->ops->size(f, &size);
    if (r < 0)
        return r;
    *is_data = false;
    *run = len;
    if (off >= size)
        return 0; /* past EOF: a hole */
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0 && errno == ENXIO)
        return 0; /* no data from off on: a hole up to and past EOF */
    *is_data = true;
    *run = min_u64(len, size - off);
    if (d < 0)
        return 0; /* cannot tell: data */
    if ((uint64_t)d > off) {
        *is_data = false;
        *run = min_u64(len, (uint64_t)d - off);
        return 0;
    }
    off_t h = lseek(fd, (off_t)off, SEEK_HOLE);
    if (h > (off_t)off)
        *run = min_u64(len, (uint64_t)h - off);
    return 0;
}
