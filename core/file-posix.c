/*
 * file-posix.c - the POSIX kind of vdk_file: a host file or block device.
 *
 * Owns opening (flags, O_DIRECT, locking through file-lock.c, truncation
 * after the lock), the I/O loops (EINTR, short reads and writes, zeros past
 * EOF), O_DIRECT alignment (probing the block size and bouncing unaligned
 * requests), and the space operations: truncate, preallocation, zeroing,
 * discard, and data/hole status from SEEK_DATA/SEEK_HOLE.
 *
 * O_DIRECT (cache=none, directsync) needs buffer addresses, offsets and
 * lengths aligned to the file's block size. Aligned requests go straight to
 * the kernel with no allocation. Unaligned ones are split into whole blocks
 * done directly (bounced when the buffer is misaligned) and partial head and
 * tail blocks done by read-modify-write. A per-file rwlock keeps RMW safe
 * against other writers in this process: an RMW holds it exclusively, every
 * aligned write holds it shared, so no write can land between an RMW's read
 * and its write-back. Reads take no lock.
 *
 * Buffered writes to one file are serialised by the kernel anyway (the
 * inode lock of ext4, XFS and block devices is held for each write), and
 * waiters there spin: with many writers in flight, measured at a quarter of
 * the CPU time of a compressed qcow2 -> raw conversion on 2 CPUs, taken
 * from the workers that decompress. So buffered writes take a per-file
 * mutex first, on which waiters sleep.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "file-int.h"
#include "file-test.h"

struct posix_file {
    vdk_file base;
    int fd;
    bool direct;   /* opened with O_DIRECT */
    bool is_blk;   /* a block device */
    pthread_rwlock_t rmw; /* see the top of this file; used only when direct */
    pthread_mutex_t wlock; /* buffered writes, one at a time (top of this file) */
    /* Learned at run time: the file system refused these fallocate modes. */
    atomic_bool no_punch, no_zero_range, no_falloc;
};

static struct posix_file *to_posix(vdk_file *f)
{
    return (struct posix_file *)f;
}

static uint64_t align_down(uint64_t v, size_t a)
{
    return v & ~(uint64_t)(a - 1);
}

/* ---------------------------------------------------------------- raw loops */

/*
 * Read up to len bytes at off, looping over EINTR and short reads. Returns
 * the count read, less than len only at EOF, or -errno. Under O_DIRECT
 * (align > 1) a count that stops inside a block is EOF too: the next read
 * would be misaligned.
 */
static int64_t read_full(int fd, void *buf, size_t len, uint64_t off, size_t align)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
        if (done & (align - 1))
            break;
    }
    return (int64_t)done;
}

/* Read exactly len bytes, zeros past EOF. */
static int read_zfill(int fd, void *buf, size_t len, uint64_t off, size_t align)
{
    int64_t n = read_full(fd, buf, len, off, align);
    if (n < 0)
        return (int)n;
    if ((size_t)n < len)
        memset((char *)buf + n, 0, len - (size_t)n);
    return 0;
}

static int write_full(int fd, const void *buf, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ENOSPC;
        buf = (const char *)buf + n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int file_size(struct posix_file *p, uint64_t *size)
{
    if (p->is_blk) {
        off_t end = lseek(p->fd, 0, SEEK_END);
        if (end < 0)
            return -errno;
        *size = (uint64_t)end;
        return 0;
    }
    struct stat st;
    if (fstat(p->fd, &st) < 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

/* ---------------------------------------------------------------- O_DIRECT bouncing */

/*
 * A bounce buffer allocated on first use, sized once per request: one block
 * when only partial blocks need it, else up to VDK_FILE_CHUNK for the whole
 * blocks of a misaligned buffer.
 */
struct bounce {
    void *buf;
    size_t size;
};

static struct bounce bounce_plan(const void *buf, size_t len, uint64_t off, size_t a)
{
    uint64_t m0 = (off + a - 1) & ~(uint64_t)(a - 1), m1 = align_down(off + len, a);
    size_t size = a;
    if (m1 > m0 && (((uintptr_t)buf + (m0 - off)) & (a - 1))) {
        uint64_t whole = m1 - m0 < VDK_FILE_CHUNK ? m1 - m0 : VDK_FILE_CHUNK;
        size = (size_t)align_down(whole, a);
        if (size < a)
            size = a;
    }
    return (struct bounce){.buf = NULL, .size = size};
}

static int bounce_get(struct bounce *b, size_t align)
{
    if (b->buf)
        return 0;
    if (posix_memalign(&b->buf, align > 4096 ? align : 4096, b->size) != 0) {
        b->buf = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* Read the partial block piece [pos, pos+n) through the bounce buffer. */
static int direct_read_partial(struct posix_file *p, struct bounce *b, char *dst,
                               size_t n, uint64_t pos)
{
    size_t a = p->base.align;
    uint64_t blk = align_down(pos, a);
    int r = bounce_get(b, a);
    if (r < 0)
        return r;
    r = read_zfill(p->fd, b->buf, a, blk, a);
    if (r < 0)
        return r;
    memcpy(dst, (char *)b->buf + (pos - blk), n);
    return 0;
}

/* Read n whole blocks' worth at an aligned pos into dst; returns bytes done. */
static int64_t direct_read_blocks(struct posix_file *p, struct bounce *b, char *dst,
                                  size_t n, uint64_t pos)
{
    size_t a = p->base.align;
    if (((uintptr_t)dst & (a - 1)) == 0) {
        int r = read_zfill(p->fd, dst, n, pos, a);
        return r < 0 ? r : (int64_t)n;
    }
    int r = bounce_get(b, a);
    if (r < 0)
        return r;
    if (n > b->size)
        n = b->size;
    r = read_zfill(p->fd, b->buf, n, pos, a);
    if (r < 0)
        return r;
    memcpy(dst, b->buf, n);
    return (int64_t)n;
}

static int direct_pread_unaligned(struct posix_file *p, char *buf, size_t len,
                                  uint64_t off)
{
    size_t a = p->base.align;
    struct bounce b = bounce_plan(buf, len, off, a);
    uint64_t pos = off, end = off + len;
    int r = 0;
    while (pos < end && r >= 0) {
        uint64_t blk = align_down(pos, a);
        if (pos != blk || end - pos < a) {
            size_t n = (size_t)((end < blk + a ? end : blk + a) - pos);
            r = direct_read_partial(p, &b, buf + (pos - off), n, pos);
            pos += n;
        } else {
            int64_t n = direct_read_blocks(p, &b, buf + (pos - off),
                                           (size_t)align_down(end - pos, a), pos);
            r = n < 0 ? (int)n : 0;
            pos += n < 0 ? 0 : (uint64_t)n;
        }
    }
    free(b.buf);
    return r;
}

/*
 * Write the piece [pos, pos+n) of one block by read-modify-write, holding the
 * RMW lock exclusively. When the block reaches past EOF, the file ends up
 * exactly at max(old size, pos+n), not at the block's end.
 */
static int direct_rmw(struct posix_file *p, struct bounce *b, const char *src, size_t n,
                      uint64_t pos)
{
    size_t a = p->base.align;
    uint64_t blk = align_down(pos, a), size;
    int r = bounce_get(b, a);
    if (r < 0)
        return r;
    pthread_rwlock_wrlock(&p->rmw);
    r = file_size(p, &size);
    if (r == 0)
        r = read_zfill(p->fd, b->buf, a, blk, a);
    if (r == 0) {
        memcpy((char *)b->buf + (pos - blk), src, n);
        r = write_full(p->fd, b->buf, a, blk);
    }
    if (r == 0 && blk + a > size && !p->is_blk) {
        uint64_t want = size > pos + n ? size : pos + n;
        if (want < blk + a && ftruncate(p->fd, (off_t)want) < 0)
            r = -errno;
    }
    pthread_rwlock_unlock(&p->rmw);
    return r;
}

/* Write whole blocks at an aligned pos from src; returns bytes done. */
static int64_t direct_write_blocks(struct posix_file *p, struct bounce *b, const char *src,
                                   size_t n, uint64_t pos)
{
    size_t a = p->base.align;
    const void *from = src;
    if ((uintptr_t)src & (a - 1)) {
        int r = bounce_get(b, a);
        if (r < 0)
            return r;
        if (n > b->size)
            n = b->size;
        memcpy(b->buf, src, n);
        from = b->buf;
    }
    pthread_rwlock_rdlock(&p->rmw);
    int r = write_full(p->fd, from, n, pos);
    pthread_rwlock_unlock(&p->rmw);
    return r < 0 ? r : (int64_t)n;
}

static int direct_pwrite_unaligned(struct posix_file *p, const char *buf, size_t len,
                                   uint64_t off)
{
    size_t a = p->base.align;
    struct bounce b = bounce_plan(buf, len, off, a);
    uint64_t pos = off, end = off + len;
    int r = 0;
    while (pos < end && r >= 0) {
        uint64_t blk = align_down(pos, a);
        if (pos != blk || end - pos < a) {
            size_t n = (size_t)((end < blk + a ? end : blk + a) - pos);
            r = direct_rmw(p, &b, buf + (pos - off), n, pos);
            pos += n;
        } else {
            int64_t n = direct_write_blocks(p, &b, buf + (pos - off),
                                            (size_t)align_down(end - pos, a), pos);
            r = n < 0 ? (int)n : 0;
            pos += n < 0 ? 0 : (uint64_t)n;
        }
    }
    free(b.buf);
    return r;
}

/* ---------------------------------------------------------------- I/O ops */

static bool is_aligned(const void *buf, size_t len, uint64_t off, size_t a)
{
    return (((uintptr_t)buf | len | off) & (a - 1)) == 0;
}

static int posix_pread(vdk_file *f, void *buf, size_t len, uint64_t off)
{
    struct posix_file *p = to_posix(f);
    if (is_aligned(buf, len, off, f->align))
        return read_zfill(p->fd, buf, len, off, f->align);
    return direct_pread_unaligned(p, buf, len, off);
}

static int posix_pwrite(vdk_file *f, const void *buf, size_t len, uint64_t off)
{
    struct posix_file *p = to_posix(f);
    if (!p->direct) {
        pthread_mutex_lock(&p->wlock);
        int r = write_full(p->fd, buf, len, off);
        pthread_mutex_unlock(&p->wlock);
        return r;
    }
    if (is_aligned(buf, len, off, f->align)) {
        pthread_rwlock_rdlock(&p->rmw);
        int r = write_full(p->fd, buf, len, off);
        pthread_rwlock_unlock(&p->rmw);
        return r;
    }
    return direct_pwrite_unaligned(p, buf, len, off);
}

static int posix_flush(vdk_file *f)
{
    if (f->cache == VDK_CACHE_UNSAFE || !f->writable)
        return 0;
    int r;
    do
        r = fdatasync(to_posix(f)->fd);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

static int posix_size(vdk_file *f, uint64_t *size)
{
    return file_size(to_posix(f), size);
}

static int posix_truncate(vdk_file *f, uint64_t size)
{
    struct posix_file *p = to_posix(f);
    if (p->is_blk) {
        uint64_t cur;
        int r = file_size(p, &cur);
        return r < 0 ? r : size == cur ? 0 : -ENOTSUP;
    }
    if (p->direct)
        pthread_rwlock_wrlock(&p->rmw);
    int r = ftruncate(p->fd, (off_t)size) < 0 ? -errno : 0;
    if (p->direct)
        pthread_rwlock_unlock(&p->rmw);
    return r;
}

static int64_t posix_allocated_size(vdk_file *f)
{
    struct stat st;
    if (fstat(to_posix(f)->fd, &st) < 0)
        return -errno;
    return (int64_t)st.st_blocks * 512;
}

static void posix_destroy(vdk_file *f)
{
    struct posix_file *p = to_posix(f);
    close(p->fd);
    pthread_rwlock_destroy(&p->rmw);
    pthread_mutex_destroy(&p->wlock);
    vdk_file_fini(f);
    free(p);
}

/* Space ops (allocate, write_zeroes, discard, block_status): file-posix-space.c. */
static const struct vdk_file_ops posix_ops = {
    .kind = "posix",
    .pread = posix_pread,
    .pwrite = posix_pwrite,
    .flush = posix_flush,
    .size = posix_size,
    .truncate = posix_truncate,
    .allocate = vdk_posix_allocate,
    .write_zeroes = vdk_posix_write_zeroes,
    .discard = vdk_posix_discard,
    .block_status = vdk_posix_block_status,
    .allocated_size = posix_allocated_size,
    .destroy = posix_destroy,
};

/* ---------------------------------------------------------------- space-op helpers */

int vdk_posix_fd(vdk_file *f)
{
    return to_posix(f)->fd;
}

/* fallocate, or -ENOTSUP (remembered in *no) when the file system cannot. */
int vdk_posix_fallocate(vdk_file *f, int mode, uint64_t off, uint64_t len)
{
    struct posix_file *p = to_posix(f);
    atomic_bool *no = (mode & FALLOC_FL_PUNCH_HOLE)   ? &p->no_punch
                      : (mode & FALLOC_FL_ZERO_RANGE) ? &p->no_zero_range
                                                      : &p->no_falloc;
    if (atomic_load_explicit(no, memory_order_relaxed))
        return -ENOTSUP;
    bool excl = p->direct && !is_aligned(NULL, (size_t)len, off, f->align);
    if (p->direct)
        (excl ? pthread_rwlock_wrlock : pthread_rwlock_rdlock)(&p->rmw);
    int r;
    do
        r = fallocate(p->fd, mode, (off_t)off, (off_t)len);
    while (r < 0 && errno == EINTR);
    r = r < 0 ? -errno : 0;
    if (p->direct)
        pthread_rwlock_unlock(&p->rmw);
    if (r == -EOPNOTSUPP || r == -ENOSYS) {
        atomic_store_explicit(no, true, memory_order_relaxed);
        r = -ENOTSUP;
    }
    return r;
}

/* ftruncate up to size if the file is shorter, under the RMW lock. */
int vdk_posix_extend(vdk_file *f, uint64_t size)
{
    struct posix_file *p = to_posix(f);
    uint64_t cur;
    if (p->direct)
        pthread_rwlock_wrlock(&p->rmw);
    int r = file_size(p, &cur);
    if (r == 0 && cur < size)
        r = p->is_blk ? -ENOSPC : ftruncate(p->fd, (off_t)size) < 0 ? -errno : 0;
    if (p->direct)
        pthread_rwlock_unlock(&p->rmw);
    return r;
}

/* ---------------------------------------------------------------- open */

static atomic_size_t min_direct_align = 1;

int vdk_file_test_min_direct_alignment(size_t align)
{
    if (align == 0)
        align = 1;
    if ((align & (align - 1)) || align > 65536)
        return -EINVAL;
    atomic_store(&min_direct_align, align);
    return 0;
}

/*
 * The O_DIRECT block size: what statx reports, else the device's logical
 * block size, else the smallest size an aligned read at offset 0 accepts
 * (as QEMU's raw_probe_alignment), else 4096. 0 when the file system takes
 * O_DIRECT at open but refuses every direct read.
 */
static size_t probe_alignment(int fd, bool is_blk, uint64_t size)
{
    size_t align = 0;
#ifdef STATX_DIOALIGN
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN)) {
        if (stx.stx_dio_offset_align == 0)
            return 0;
        align = stx.stx_dio_offset_align > stx.stx_dio_mem_align ? stx.stx_dio_offset_align
                                                                   : stx.stx_dio_mem_align;
    }
#endif
    int ss;
    if (!align && is_blk && ioctl(fd, BLKSSZGET, &ss) == 0 && ss > 0)
        align = (size_t)ss;
    if (!align && size >= 4096) {
        void *buf = NULL;
        if (posix_memalign(&buf, 4096, 4096) == 0) {
            bool any_einval = false;
            for (size_t a = 512; a <= 4096 && !align; a *= 2) {
                if (pread(fd, buf, a, 0) >= 0)
                    align = a;
                else if (errno == EINVAL)
                    any_einval = true;
            }
            free(buf);
            if (!align && any_einval)
                return 0;
        }
    }
    if (!align)
        align = 4096;
    if (align < atomic_load(&min_direct_align))
        align = atomic_load(&min_direct_align);
    /* Keep it a power of two no smaller than it. */
    size_t p2 = 1;
    while (p2 < align)
        p2 <<= 1;
    return p2;
}

static int open_fd(const char *path, unsigned flags, bool direct, vdk_error *err)
{
    int oflags = O_CLOEXEC | ((flags & VDK_FILE_RDWR) ? O_RDWR : O_RDONLY);
    if (flags & VDK_FILE_CREATE)
        oflags |= O_CREAT;
    if (direct)
        oflags |= O_DIRECT;
    int fd = open(path, oflags, 0644);
    if (fd >= 0)
        return fd;
    int e = errno;
    if (e == EINVAL && direct)
        return vdk_fail(err, -EINVAL, "%s: Could not open: the file system does not "
                        "support O_DIRECT (cache mode none/directsync)", path);
    return vdk_fail(err, -e, "%s: Could not open: %s", path, strerror(e));
}

/* Lock, truncate, stat and probe fd; fills the new file's fields. */
static int setup_fd(struct posix_file *p, const char *path, unsigned flags,
                    vdk_error *err, size_t *align)
{
    struct stat st;
    if (fstat(p->fd, &st) < 0)
        return vdk_fail(err, -errno, "%s: Could not stat: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return vdk_fail(err, -EISDIR, "%s: Could not open: is a directory", path);
    p->is_blk = S_ISBLK(st.st_mode);
    if (!(flags & VDK_FILE_NOLOCK)) {
        int r = vdk_file_lock_fd(p->fd, path, flags, err);
        if (r < 0)
            return r;
    }
    if ((flags & VDK_FILE_TRUNC) && !p->is_blk && ftruncate(p->fd, 0) < 0)
        return vdk_fail(err, -errno, "%s: Could not truncate: %s", path, strerror(errno));
    *align = 1;
    if (p->direct) {
        uint64_t size = (flags & VDK_FILE_TRUNC) ? 0 : (uint64_t)st.st_size;
        *align = probe_alignment(p->fd, p->is_blk, size);
        if (*align == 0)
            return vdk_fail(err, -EINVAL, "%s: Could not open with O_DIRECT (cache "
                            "mode none/directsync): the file system does not support "
                            "direct I/O for this file", path);
    }
    return 0;
}

int vdk_file_posix_open(const char *path, unsigned flags, int cache, vdk_file **out,
                        vdk_error *err)
{
    bool direct = cache == VDK_CACHE_NONE || cache == VDK_CACHE_DIRECTSYNC;
    struct posix_file *p = calloc(1, sizeof *p);
    if (!p)
        return vdk_fail(err, -ENOMEM, "%s: out of memory", path);
    p->direct = direct;
    p->fd = open_fd(path, flags, direct, err);
    if (p->fd < 0) {
        int r = p->fd;
        free(p);
        return r;
    }
    size_t align = 1;
    int r = setup_fd(p, path, flags, err, &align);
    if (r == 0 && vdk_file_init(&p->base, &posix_ops, path, flags & VDK_FILE_RDWR, cache,
                                align) < 0)
        r = vdk_fail(err, -ENOMEM, "%s: out of memory", path);
    if (r == 0 && pthread_rwlock_init(&p->rmw, NULL) != 0)
        r = vdk_fail(err, -ENOMEM, "%s: cannot create a lock", path);
    else if (r == 0 && pthread_mutex_init(&p->wlock, NULL) != 0) {
        pthread_rwlock_destroy(&p->rmw);
        r = vdk_fail(err, -ENOMEM, "%s: cannot create a lock", path);
    }
    if (r < 0) {
        close(p->fd);
        vdk_file_fini(&p->base);
        free(p);
        return r;
    }
    *out = &p->base;
    return 0;
}
