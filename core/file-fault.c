/*
 * file-fault.c - the fault file: a wrapper that fails chosen operations.
 *
 * Each read, write-like operation (pwrite, write_zeroes, discard, truncate,
 * allocate) or flush is counted by kind under a mutex; when the count of the
 * targeted kind reaches the spec's nth (or passes it, when persistent), the
 * operation fails with the spec's error without reaching the base file.
 * Everything else passes straight to the base file's ops. The public
 * wrappers (file.c) write the message, under the base's name.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "file-int.h"
#include "file-test.h"

struct fault_file {
    vdk_file base;
    vdk_file *inner;
    pthread_mutex_t lock;
    struct vdk_fault_spec spec;
    struct vdk_fault_counts counts;
};

static const struct vdk_file_ops fault_ops;

static struct fault_file *to_fault(vdk_file *f)
{
    return (struct fault_file *)f;
}

static bool spec_valid(const struct vdk_fault_spec *spec)
{
    return spec && spec->op >= VDK_FAULT_READ && spec->op <= VDK_FAULT_ANY &&
           spec->error <= 0;
}

/* Count one operation of kind op; 0 to go ahead, or the error to fail with. */
static int fault_check(vdk_file *f, int op)
{
    struct fault_file *ff = to_fault(f);
    int r = 0;
    pthread_mutex_lock(&ff->lock);
    uint64_t *kind = op == VDK_FAULT_READ    ? &ff->counts.reads
                     : op == VDK_FAULT_WRITE ? &ff->counts.writes
                                             : &ff->counts.flushes;
    uint64_t n = ++*kind;
    uint64_t total = ++ff->counts.total;
    if (ff->spec.op == VDK_FAULT_ANY)
        n = total;
    bool targeted = ff->spec.op == VDK_FAULT_ANY || ff->spec.op == op;
    if (targeted && ff->spec.nth &&
        (n == ff->spec.nth || (ff->spec.persistent && n > ff->spec.nth))) {
        ff->counts.fired++;
        r = ff->spec.error ? ff->spec.error : -EIO;
    }
    pthread_mutex_unlock(&ff->lock);
    return r;
}

static int fault_pread(vdk_file *f, void *buf, size_t len, uint64_t off)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_READ);
    return r < 0 ? r : in->ops->pread(in, buf, len, off);
}

static int fault_pwrite(vdk_file *f, const void *buf, size_t len, uint64_t off)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_WRITE);
    return r < 0 ? r : in->ops->pwrite(in, buf, len, off);
}

static int fault_flush(vdk_file *f)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_FLUSH);
    return r < 0 || !in->ops->flush ? r : in->ops->flush(in);
}

static int fault_size(vdk_file *f, uint64_t *size)
{
    vdk_file *in = to_fault(f)->inner;
    return in->ops->size(in, size);
}

static int fault_truncate(vdk_file *f, uint64_t size)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_WRITE);
    if (r < 0)
        return r;
    return in->ops->truncate ? in->ops->truncate(in, size) : -ENOTSUP;
}

static int fault_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_WRITE);
    if (r < 0)
        return r;
    return in->ops->allocate ? in->ops->allocate(in, off, len, prealloc) : -ENOTSUP;
}

static int fault_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_WRITE);
    if (r < 0)
        return r;
    return in->ops->write_zeroes ? in->ops->write_zeroes(in, off, len, may_unmap)
                                 : -ENOTSUP;
}

static int fault_discard(vdk_file *f, uint64_t off, uint64_t len)
{
    vdk_file *in = to_fault(f)->inner;
    int r = fault_check(f, VDK_FAULT_WRITE);
    if (r < 0)
        return r;
    return in->ops->discard ? in->ops->discard(in, off, len) : -ENOTSUP;
}

static int fault_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                              uint64_t *run)
{
    vdk_file *in = to_fault(f)->inner;
    if (!in->ops->block_status) {
        *is_data = true;
        *run = len;
        return 0;
    }
    return in->ops->block_status(in, off, len, is_data, run);
}

static int64_t fault_allocated_size(vdk_file *f)
{
    vdk_file *in = to_fault(f)->inner;
    return in->ops->allocated_size ? in->ops->allocated_size(in) : -ENOTSUP;
}

static void fault_destroy(vdk_file *f)
{
    struct fault_file *ff = to_fault(f);
    vdk_file_unref(ff->inner);
    pthread_mutex_destroy(&ff->lock);
    vdk_file_fini(f);
    free(ff);
}

static const struct vdk_file_ops fault_ops = {
    .kind = "fault",
    .pread = fault_pread,
    .pwrite = fault_pwrite,
    .flush = fault_flush,
    .size = fault_size,
    .truncate = fault_truncate,
    .allocate = fault_allocate,
    .write_zeroes = fault_write_zeroes,
    .discard = fault_discard,
    .block_status = fault_block_status,
    .allocated_size = fault_allocated_size,
    .destroy = fault_destroy,
};

vdk_file *vdk_file_fault_new(vdk_file *base, const struct vdk_fault_spec *spec)
{
    if (!base || !spec_valid(spec))
        return NULL;
    struct fault_file *ff = calloc(1, sizeof *ff);
    if (!ff)
        return NULL;
    if (vdk_file_init(&ff->base, &fault_ops, base->name, base->writable, base->cache,
                      base->align) < 0) {
        vdk_file_fini(&ff->base);
        free(ff);
        return NULL;
    }
    pthread_mutex_init(&ff->lock, NULL);
    ff->spec = *spec;
    ff->inner = vdk_file_ref(base);
    return &ff->base;
}

int vdk_file_fault_set(vdk_file *f, const struct vdk_fault_spec *spec)
{
    if (!f || f->ops != &fault_ops || !spec_valid(spec))
        return -EINVAL;
    struct fault_file *ff = to_fault(f);
    pthread_mutex_lock(&ff->lock);
    ff->spec = *spec;
    ff->counts = (struct vdk_fault_counts){0};
    pthread_mutex_unlock(&ff->lock);
    return 0;
}

int vdk_file_fault_counts(vdk_file *f, struct vdk_fault_counts *counts)
{
    if (!f || f->ops != &fault_ops)
        return -EINVAL;
    struct fault_file *ff = to_fault(f);
    pthread_mutex_lock(&ff->lock);
    *counts = ff->counts;
    pthread_mutex_unlock(&ff->lock);
    return 0;
}
