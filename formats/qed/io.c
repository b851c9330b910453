/*
 * io.c - guest reads and writes, and the registry of allocations in flight
 * that lets them run in parallel.
 *
 * A read maps a run of guest bytes under the lock and reads it outside:
 * from the data cluster, as zeros, or from the backing chain. A write to
 * allocated clusters goes straight to them (in place, outside the lock). A
 * write that needs new clusters registers the guest clusters it allocates
 * (qed_alloc), takes contiguous host clusters at the end of the file, drops
 * the lock, writes the data with the copy-on-write head and tail (backing
 * file data or zeros) so that every new cluster is whole, and then, under
 * the lock again, points the L2 entries at the new clusters. Any request
 * that would change the mapping of a registered cluster waits on s->cond
 * and looks the mapping up again. The L2 cache is told to flush the file
 * before it writes the tables: data is durable before metadata.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

/* Largest allocating write done in one bounce buffer, and in one step. */
#define BOUNCE_MAX (UINT64_C(4) << 20)
#define ALLOC_RUN_BYTES (UINT64_C(32) << 20)

/* ---------------------------------------------------------------- in flight */

void qed_alloc_begin(qed_state *s, qed_alloc *a, uint64_t start, uint64_t end)
{
    a->start = start;
    a->end = end;
    a->next = s->allocs;
    s->allocs = a;
    s->nallocs++;
}

void qed_alloc_end(qed_state *s, qed_alloc *a)
{
    for (qed_alloc **p = &s->allocs; *p; p = &(*p)->next) {
        if (*p == a) {
            *p = a->next;
            s->nallocs--;
            break;
        }
    }
    pthread_cond_broadcast(&s->cond);
}

bool qed_alloc_conflict(const qed_state *s, uint64_t start, uint64_t end)
{
    for (const qed_alloc *a = s->allocs; a; a = a->next)
        if (a->start < end && start < a->end)
            return true;
    return false;
}

/* ---------------------------------------------------------------- reads */

int qed_backing_read(qed_state *s, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    if (!s->img) {
        memset(buf, 0, len);
        return 0;
    }
    return vdk_backing_pread(s->img, buf, len, off, err);
}

int qed_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    uint8_t *p = buf;
    while (len) {
        qed_map m;
        pthread_mutex_lock(&s->lock);
        int r = qed_map_range(s, off, len, &m, err);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
            return r;
        if (m.kind == QED_DATA)
            r = vdk_file_pread(s->file, p, m.bytes, m.host, err);
        else if (m.kind == QED_ZERO)
            memset(p, 0, m.bytes);
        else
            r = qed_backing_read(s, p, m.bytes, off, err);
        if (r < 0)
            return r;
        p += m.bytes;
        off += m.bytes;
        len -= m.bytes;
    }
    return 0;
}

/* ---------------------------------------------------------------- allocating writes */

/* An allocating write: n data bytes at offset within of k new clusters at
 * host, mapping guest clusters from gc whose old entries were first/last. */
typedef struct wplan {
    uint64_t gc, k, host;
    uint64_t within, n;
    int first_kind, last_kind;
} wplan;

/* Old content of guest bytes [goff, goff + len) of a cluster that is not
 * allocated here: zeros, or the backing file's data. */
static int old_content(qed_state *s, int kind, void *buf, uint64_t len, uint64_t goff,
                       vdk_error *err)
{
    if (len == 0)
        return 0;
    if (kind == QED_ZERO) {
        memset(buf, 0, len);
        return 0;
    }
    if (qed_has_backing(s) && s->img && !vdk_image_backing(s->img))
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qed: cannot copy data from the backing file '%s' into a new cluster: "
                        "it is not open",
                        s->backing_name);
    return qed_backing_read(s, buf, len, goff, err);
}

/* Write a copy-on-write piece (at most one cluster) through a bounce buffer. */
static int write_cow(qed_state *s, int kind, uint64_t goff, uint64_t len, uint64_t host,
                     vdk_error *err)
{
    if (len == 0)
        return 0;
    uint8_t *b = vdk_alloc_aligned(len, false);
    if (!b)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = old_content(s, kind, b, len, goff, err);
    if (r == 0)
        r = vdk_file_pwrite(s->file, b, len, host, err);
    free(b);
    return r;
}

/* Fill the k new clusters: head, data, tail; each cluster is written whole. */
static int write_new_clusters(qed_state *s, const wplan *p, const uint8_t *buf,
                              vdk_error *err)
{
    uint64_t g0 = p->gc << s->cluster_bits, total = p->k << s->cluster_bits;
    uint64_t head = p->within, e = p->within + p->n, tail = total - e;
    if (head == 0 && tail == 0)
        return vdk_file_pwrite(s->file, buf, p->n, p->host, err);
    if (total > BOUNCE_MAX) {
        int r = write_cow(s, p->first_kind, g0, head, p->host, err);
        if (r == 0)
            r = vdk_file_pwrite(s->file, buf, p->n, p->host + head, err);
        if (r == 0)
            r = write_cow(s, p->last_kind, g0 + e, tail, p->host + e, err);
        return r;
    }
    uint8_t *b = vdk_alloc_aligned(total, false);
    if (!b)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = old_content(s, p->first_kind, b, head, g0, err);
    memcpy(b + head, buf, p->n);
    if (r == 0)
        r = old_content(s, p->last_kind, b + e, tail, g0 + e, err);
    if (r == 0)
        r = vdk_file_pwrite(s->file, b, total, p->host, err);
    free(b);
    return r;
}

static int kind_of_entry(uint64_t e)
{
    return e == QED_ENTRY_UNALLOC ? QED_UNALLOC : e == QED_ENTRY_ZERO ? QED_ZERO : QED_DATA;
}

/* Plan an allocating write from off (lock held, gc free of conflicts):
 * how many following clusters also need allocating. */
static int plan_alloc(qed_state *s, wplan *p, uint64_t first_entry, uint64_t len,
                      uint64_t off, vdk_error *err)
{
    uint64_t cs = s->cluster_size;
    p->gc = off >> s->cluster_bits;
    p->within = off & (cs - 1);
    uint64_t kmax = (p->within + len + cs - 1) >> s->cluster_bits;
    uint64_t cap = ALLOC_RUN_BYTES >> s->cluster_bits;
    if (cap == 0)
        cap = 1;
    if (kmax > cap)
        kmax = cap;
    p->first_kind = p->last_kind = kind_of_entry(first_entry);
    p->k = 1;
    for (; p->k < kmax; p->k++) {
        uint64_t e;
        if (qed_alloc_conflict(s, p->gc + p->k, p->gc + p->k + 1))
            break;
        int r = qed_entry_get(s, p->gc + p->k, &e, err);
        if (r < 0)
            return r;
        if (e > QED_ENTRY_ZERO)
            break;
        p->last_kind = kind_of_entry(e);
    }
    uint64_t span = (p->k << s->cluster_bits) - p->within;
    p->n = len < span ? len : span;
    return 0;
}

/* Allocate, fill and link new clusters (lock held on entry and exit). */
static int write_alloc(qed_state *s, const uint8_t *buf, uint64_t len, uint64_t off,
                       uint64_t entry, uint64_t *done, vdk_error *err)
{
    wplan p;
    int r = plan_alloc(s, &p, entry, len, off, err);
    if (r == 0)
        r = qed_set_need_check(s, err);
    if (r < 0)
        return r;
    p.host = qed_alloc_clusters(s, p.k);
    qed_alloc a;
    qed_alloc_begin(s, &a, p.gc, p.gc + p.k);
    pthread_mutex_unlock(&s->lock);
    r = write_new_clusters(s, &p, buf, err);
    pthread_mutex_lock(&s->lock);
    if (r == 0)
        r = qed_check_broken(s, err);
    if (r == 0)
        r = qed_entries_set(s, p.gc, p.k, p.host, true, err);
    else if (s->file_end == p.host + (p.k << s->cluster_bits))
        s->file_end = p.host; /* nothing was allocated after us: reuse */
    qed_alloc_end(s, &a);
    *done = p.n;
    return r;
}

/* One step of a write (lock held on entry and exit); sets *done. */
static int write_step(qed_state *s, const uint8_t *buf, uint64_t len, uint64_t off,
                      uint64_t *done, vdk_error *err)
{
    for (;;) {
        int r = qed_check_broken(s, err);
        uint64_t e;
        if (r == 0)
            r = qed_entry_get(s, off >> s->cluster_bits, &e, err);
        if (r < 0)
            return r;
        if (e > QED_ENTRY_ZERO)
            break;
        if (!qed_alloc_conflict(s, off >> s->cluster_bits, (off >> s->cluster_bits) + 1))
            return write_alloc(s, buf, len, off, e, done, err);
        pthread_cond_wait(&s->cond, &s->lock);
    }
    /* In place, over the following clusters with contiguous hosts. */
    qed_map m;
    int r = qed_map_range(s, off, len, &m, err);
    if (r < 0)
        return r;
    pthread_mutex_unlock(&s->lock);
    r = vdk_file_pwrite(s->file, buf, m.bytes, m.host, err);
    pthread_mutex_lock(&s->lock);
    *done = m.bytes;
    return r;
}

int qed_write(qed_state *s, const void *buf, size_t len, uint64_t off, vdk_error *err)
{
    const uint8_t *p = buf;
    int r = 0;
    pthread_mutex_lock(&s->lock);
    while (len && r == 0) {
        uint64_t done = 0;
        r = write_step(s, p, len, off, &done, err);
        p += done;
        off += done;
        len -= done;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

int qed_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off, vdk_error *err)
{
    return qed_write(vdk_image_priv(img), buf, len, off, err);
}
