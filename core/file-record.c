/*
 * file-record.c - the crash-recording file: a wrapper that passes every
 * operation to its base file and appends each completed change (write,
 * zeroing, discard, truncate, allocate) and each flush to a log in memory.
 *
 * A replayer (vdk_record_apply) later applies any chosen subset of the
 * logged changes, in any chosen order, to a copy of the file as it was when
 * recording started. Every prefix of the log is a state a crash can leave
 * when writes reach the disk in order; a prefix up to a flush plus any subset
 * of the changes after it (in any order) is a state a crash can leave when
 * the disk reorders writes between flushes. Crash-consistency specs build
 * those states and check that the image opens, checks clean and holds every
 * byte a completed flush made durable.
 *
 * Changes are logged when they complete, under a mutex, so concurrent
 * writers get some serial order. Memory: the log keeps a copy of all written
 * data, so it is for test workloads of bounded size.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "file-int.h"
#include "file-test.h"

struct vdk_record {
    pthread_mutex_t lock;
    struct vdk_record_entry *e;
    size_t n, cap;
    uint64_t bytes; /* data bytes held */
};

typedef struct record_file {
    vdk_file f; /* first */
    vdk_file *base;
    vdk_record *log;
} record_file;

vdk_record *vdk_record_new(void)
{
    vdk_record *r = calloc(1, sizeof *r);
    if (r)
        pthread_mutex_init(&r->lock, NULL);
    return r;
}

void vdk_record_free(vdk_record *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        free(r->e[i].data);
    free(r->e);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

size_t vdk_record_count(const vdk_record *r) { return r->n; }

int vdk_record_entry(const vdk_record *r, size_t i, struct vdk_record_entry *out)
{
    if (i >= r->n)
        return -EINVAL;
    *out = r->e[i];
    return 0;
}

/* Append a change; data (len bytes) is copied for writes. */
static int log_append(vdk_record *r, int kind, uint64_t off, uint64_t len, const void *data)
{
    void *copy = NULL;
    if (data) {
        copy = malloc(len ? len : 1);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, data, len);
    }
    pthread_mutex_lock(&r->lock);
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        struct vdk_record_entry *e = realloc(r->e, cap * sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&r->lock);
            free(copy);
            return -ENOMEM;
        }
        r->e = e;
        r->cap = cap;
    }
    r->e[r->n++] = (struct vdk_record_entry){.kind = kind, .off = off, .len = len, .data = copy};
    if (data)
        r->bytes += len;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

static vdk_file *base_of(vdk_file *f) { return ((record_file *)f)->base; }
static vdk_record *log_of(vdk_file *f) { return ((record_file *)f)->log; }

static int rec_pread(vdk_file *f, void *buf, size_t len, uint64_t off)
{
    vdk_file *b = base_of(f);
    return b->ops->pread(b, buf, len, off);
}

static int rec_pwrite(vdk_file *f, const void *buf, size_t len, uint64_t off)
{
    vdk_file *b = base_of(f);
    int r = b->ops->pwrite(b, buf, len, off);
    return r < 0 ? r : log_append(log_of(f), VDK_RECORD_WRITE, off, len, buf);
}

static int rec_flush(vdk_file *f)
{
    vdk_file *b = base_of(f);
    int r = b->ops->flush ? b->ops->flush(b) : 0;
    return r < 0 ? r : log_append(log_of(f), VDK_RECORD_FLUSH, 0, 0, NULL);
}

static int rec_size(vdk_file *f, uint64_t *size)
{
    vdk_file *b = base_of(f);
    return b->ops->size(b, size);
}

static int rec_truncate(vdk_file *f, uint64_t size)
{
    vdk_file *b = base_of(f);
    if (!b->ops->truncate)
        return -ENOTSUP;
    int r = b->ops->truncate(b, size);
    return r < 0 ? r : log_append(log_of(f), VDK_RECORD_TRUNCATE, size, 0, NULL);
}

static int rec_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc)
{
    vdk_file *b = base_of(f);
    if (!b->ops->allocate)
        return -ENOTSUP;
    uint64_t before = 0;
    int r = b->ops->size(b, &before);
    if (r == 0)
        r = b->ops->allocate(b, off, len, prealloc);
    if (r < 0)
        return r;
    /* Only growth is visible in the file's contents: log it as zeroing. */
    if (off + len > before)
        r = log_append(log_of(f), VDK_RECORD_ZERO, before, off + len - before, NULL);
    return r;
}

static int rec_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap)
{
    vdk_file *b = base_of(f);
    if (!b->ops->write_zeroes)
        return -ENOTSUP;
    int r = b->ops->write_zeroes(b, off, len, may_unmap);
    return r < 0 ? r : log_append(log_of(f), VDK_RECORD_ZERO, off, len, NULL);
}

static int rec_discard(vdk_file *f, uint64_t off, uint64_t len)
{
    vdk_file *b = base_of(f);
    if (!b->ops->discard)
        return -ENOTSUP;
    int r = b->ops->discard(b, off, len);
    /* After a discard the range may read as zeros or keep its data; the
     * recorded state takes the zeros (the harder case for a format). */
    return r < 0 ? r : log_append(log_of(f), VDK_RECORD_ZERO, off, len, NULL);
}

static int rec_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                            uint64_t *run)
{
    vdk_file *b = base_of(f);
    if (!b->ops->block_status) {
        *is_data = true;
        *run = len;
        return 0;
    }
    return b->ops->block_status(b, off, len, is_data, run);
}

static int64_t rec_allocated_size(vdk_file *f)
{
    vdk_file *b = base_of(f);
    return b->ops->allocated_size ? b->ops->allocated_size(b) : -ENOTSUP;
}

static void rec_destroy(vdk_file *f)
{
    record_file *rf = (record_file *)f;
    vdk_file_unref(rf->base);
    vdk_file_fini(f);
    free(rf);
}

static const struct vdk_file_ops record_ops = {
    .kind = "record",
    .pread = rec_pread,
    .pwrite = rec_pwrite,
    .flush = rec_flush,
    .size = rec_size,
    .truncate = rec_truncate,
    .allocate = rec_allocate,
    .write_zeroes = rec_write_zeroes,
    .discard = rec_discard,
    .block_status = rec_block_status,
    .allocated_size = rec_allocated_size,
    .destroy = rec_destroy,
};

vdk_file *vdk_file_record_new(vdk_file *base, vdk_record *log)
{
    if (!base || !log)
        return NULL;
    record_file *rf = calloc(1, sizeof *rf);
    if (!rf)
        return NULL;
    if (vdk_file_init(&rf->f, &record_ops, vdk_file_name(base), base->writable, base->cache,
                      base->align) < 0) {
        free(rf);
        return NULL;
    }
    rf->base = vdk_file_ref(base);
    rf->log = log;
    return &rf->f;
}

/* Apply one logged change to target. */
static int apply_one(const struct vdk_record_entry *e, vdk_file *target, vdk_error *err)
{
    switch (e->kind) {
    case VDK_RECORD_WRITE:
        return vdk_file_pwrite(target, e->data, (size_t)e->len, e->off, err);
    case VDK_RECORD_ZERO:
        return vdk_file_write_zeroes(target, e->off, e->len, false, err);
    case VDK_RECORD_TRUNCATE:
        return vdk_file_truncate(target, e->off, err);
    default:
        return 0; /* flushes change nothing */
    }
}

int vdk_record_apply(const vdk_record *r, vdk_file *target, const size_t *idx, size_t n,
                     vdk_error *err)
{
    for (size_t k = 0; k < n; k++) {
        if (idx[k] >= r->n)
            return vdk_fail(err, -EINVAL, "record: entry %zu out of range (%zu entries)",
                            idx[k], r->n);
        int rc = apply_one(&r->e[idx[k]], target, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}
