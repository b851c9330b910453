/*
 * file.c - the public face of the file layer: the vdk_file_* wrappers.
 *
 * Every byte vdk moves to or from a host file passes through the wrappers
 * here. They are the single choke point of the layer: they check arguments
 * (ranges, writability), dispatch to the kind's op (file-int.h), and turn a
 * failure into one line naming the file, the operation, the offset and length
 * and the cause ("disk.qcow2: write of 65536 bytes at offset 0x30000 failed:
 * No space left on device"). Also here: reference counting, the test open
 * hook, and aligned allocation. The kinds live in file-posix.c,
 * file-memory.c and file-fault.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "file-int.h"

/* Largest offset or end of range a file may have (off_t is signed). */
#define FILE_MAX_END ((uint64_t)INT64_MAX)

/* ---------------------------------------------------------------- common part */

int vdk_file_init(vdk_file *f, const struct vdk_file_ops *ops, const char *name,
                  bool writable, int cache, size_t align)
{
    f->ops = ops;
    atomic_init(&f->refs, 1);
    f->name = strdup(name ? name : "(unnamed)");
    f->writable = writable;
    f->cache = cache;
    f->align = align ? align : 1;
    atomic_init(&f->dirty, writable);
    return f->name ? 0 : -ENOMEM;
}

void vdk_file_fini(vdk_file *f)
{
    free(f->name);
    f->name = NULL;
}

vdk_file *vdk_file_ref(vdk_file *f)
{
    if (f)
        atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    return f;
}

void vdk_file_unref(vdk_file *f)
{
    if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1)
        f->ops->destroy(f);
}

const char *vdk_file_name(const vdk_file *f)
{
    return f->name;
}

bool vdk_file_is_writable(const vdk_file *f)
{
    return f->writable;
}

int vdk_file_cache_mode(const vdk_file *f)
{
    return f->cache;
}

size_t vdk_file_alignment(const vdk_file *f)
{
    return f->align;
}

void *vdk_alloc_aligned(size_t len, bool zero)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, len ? len : 1) != 0)
        return NULL;
    if (zero)
        memset(p, 0, len);
    return p;
}

const void *vdk_file_zero_buf(void)
{
    /* In .bss: never written, so it costs no memory until read. */
    static char zeros[VDK_FILE_CHUNK] __attribute__((aligned(4096)));
    return zeros;
}

/* ---------------------------------------------------------------- open and hook */

static pthread_mutex_t hook_lock = PTHREAD_MUTEX_INITIALIZER;
static vdk_file_open_hook hook_fn;
static void *hook_ctx;

void vdk_file_set_open_hook(vdk_file_open_hook hook, void *ctx)
{
    pthread_mutex_lock(&hook_lock);
    hook_fn = hook;
    hook_ctx = ctx;
    pthread_mutex_unlock(&hook_lock);
}

int vdk_file_open(const char *path, unsigned flags, int cache, vdk_file **out,
                  vdk_error *err)
{
    *out = NULL;
    if (!path || !*path)
        return vdk_fail(err, -EINVAL, "file name is empty");
    if (cache < VDK_CACHE_WRITEBACK || cache > VDK_CACHE_UNSAFE)
        return vdk_fail(err, VDK_EOPTION, "%s: invalid cache mode %d", path, cache);
    if ((flags & VDK_FILE_FORCE_SHARE) && (flags & VDK_FILE_RDWR))
        return vdk_fail(err, VDK_EOPTION,
                        "%s: force-share (-U) can only be used for read-only opens", path);
    if ((flags & (VDK_FILE_CREATE | VDK_FILE_TRUNC)) && !(flags & VDK_FILE_RDWR))
        return vdk_fail(err, VDK_EOPTION, "%s: creating or truncating needs a writable open",
                        path);

    vdk_file *f;
    int r = vdk_file_posix_open(path, flags, cache, &f, err);
    if (r < 0)
        return r;

    pthread_mutex_lock(&hook_lock);
    vdk_file_open_hook fn = hook_fn;
    void *ctx = hook_ctx;
    pthread_mutex_unlock(&hook_lock);
    if (fn) {
        vdk_file *w = fn(f, path, ctx);
        if (!w) /* the hook failed; by contract it left f alone */
            w = f;
        f = w;
    }
    *out = f;
    return 0;
}

/* ---------------------------------------------------------------- checks and messages */

static int fail_range(vdk_file *f, vdk_error *err, int code, const char *what,
                      uint64_t len, uint64_t off)
{
    return vdk_fail(err, code, "%s: %s of %" PRIu64 " bytes at offset 0x%" PRIx64
                    " failed: %s", f->name, what, len, off, vdk_strerror(code));
}

/* 0 when [off, off+len) is a valid range for what, else the failure. */
static int check_range(vdk_file *f, vdk_error *err, const char *what, uint64_t len,
                       uint64_t off, bool write)
{
    if (off > FILE_MAX_END || len > FILE_MAX_END - off)
        return fail_range(f, err, -EINVAL, what, len, off);
    if (write && !f->writable)
        return vdk_fail(err, -EBADF, "%s: %s of %" PRIu64 " bytes at offset 0x%" PRIx64
                        " failed: file is open read-only", f->name, what, len, off);
    return 0;
}

/* ---------------------------------------------------------------- I/O */

int vdk_file_pread(vdk_file *f, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    int r = check_range(f, err, "read", len, off, false);
    if (r < 0 || len == 0)
        return r;
    if (!buf)
        return fail_range(f, err, -EFAULT, "read", len, off);
    r = f->ops->pread(f, buf, len, off);
    return r < 0 ? fail_range(f, err, r, "read", len, off) : 0;
}

int vdk_file_pwrite(vdk_file *f, const void *buf, size_t len, uint64_t off,
                    vdk_error *err)
{
    int r = check_range(f, err, "write", len, off, true);
    if (r < 0 || len == 0)
        return r;
    if (!buf)
        return fail_range(f, err, -EFAULT, "write", len, off);
    atomic_store(&f->dirty, true);
    r = f->ops->pwrite(f, buf, len, off);
    return r < 0 ? fail_range(f, err, r, "write", len, off) : 0;
}

int vdk_file_flush(vdk_file *f, vdk_error *err)
{
    if (!f->ops->flush || !atomic_exchange(&f->dirty, false))
        return 0;
    int r = f->ops->flush(f);
    if (r < 0) {
        atomic_store(&f->dirty, true); /* still not durable */
        return vdk_fail(err, r, "%s: flush failed: %s", f->name, vdk_strerror(r));
    }
    return 0;
}

int vdk_file_size(vdk_file *f, uint64_t *size, vdk_error *err)
{
    int r = f->ops->size(f, size);
    if (r < 0)
        return vdk_fail(err, r, "%s: cannot get the file size: %s", f->name,
                        vdk_strerror(r));
    return 0;
}

int vdk_file_truncate(vdk_file *f, uint64_t size, vdk_error *err)
{
    int r = 0;
    if (size > FILE_MAX_END)
        r = -EFBIG;
    else if (!f->writable)
        r = -EBADF;
    else if (!f->ops->truncate)
        r = -ENOTSUP;
    else {
        atomic_store(&f->dirty, true);
        r = f->ops->truncate(f, size);
    }
    if (r < 0)
        return vdk_fail(err, r, "%s: truncate to %" PRIu64 " bytes failed: %s", f->name,
                        size, r == -EBADF ? "file is open read-only" : vdk_strerror(r));
    return 0;
}

int vdk_file_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc,
                      vdk_error *err)
{
    int r = check_range(f, err, "preallocation", len, off, true);
    if (r < 0 || len == 0)
        return r;
    if (prealloc < VDK_PREALLOC_OFF || prealloc > VDK_PREALLOC_FULL)
        return vdk_fail(err, VDK_EOPTION, "%s: invalid preallocation mode %d", f->name,
                        prealloc);
    atomic_store(&f->dirty, true);
    r = f->ops->allocate ? f->ops->allocate(f, off, len, prealloc) : -ENOTSUP;
    return r < 0 ? fail_range(f, err, r, "preallocation", len, off) : 0;
}

int vdk_file_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap,
                          vdk_error *err)
{
    int r = check_range(f, err, "zero write", len, off, true);
    if (r < 0 || len == 0)
        return r;
    atomic_store(&f->dirty, true);
    r = f->ops->write_zeroes ? f->ops->write_zeroes(f, off, len, may_unmap) : -ENOTSUP;
    return r < 0 ? fail_range(f, err, r, "zero write", len, off) : 0;
}

int vdk_file_discard(vdk_file *f, uint64_t off, uint64_t len, vdk_error *err)
{
    int r = check_range(f, err, "discard", len, off, true);
    if (r < 0 || len == 0)
        return r;
    atomic_store(&f->dirty, true);
    r = f->ops->discard ? f->ops->discard(f, off, len) : -ENOTSUP;
    return r < 0 ? fail_range(f, err, r, "discard", len, off) : 0;
}

int vdk_file_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                          uint64_t *run, vdk_error *err)
{
    int r = check_range(f, err, "block status query", len, off, false);
    if (r < 0)
        return r;
    if (len == 0)
        return fail_range(f, err, -EINVAL, "block status query", len, off);
    if (!f->ops->block_status) {
        *is_data = true;
        *run = len;
        return 0;
    }
    r = f->ops->block_status(f, off, len, is_data, run);
    if (r < 0)
        return fail_range(f, err, r, "block status query", len, off);
    if (*run == 0 || *run > len) /* a kind's bug must not hang the caller */
        *run = len;
    return 0;
}

int64_t vdk_file_allocated_size(vdk_file *f)
{
    return f->ops->allocated_size ? f->ops->allocated_size(f) : -ENOTSUP;
}
