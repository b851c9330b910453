/*
 * io.c - guest reads and writes, and the in-flight operation registry that
 * lets them run in parallel.
 *
 * Every read or write looks its mapping up under the metadata lock, registers
 * an operation (qcow2_op), drops the lock for the data I/O, and takes it
 * again to finish. Operations that will change the mapping of guest clusters
 * (allocating writes, zero writes, discards, compressed writes) are
 * exclusive on those clusters: a second one waits on s->cond and then looks
 * the mapping up again. Reads and in-place writes are shared and never wait.
 * Freed clusters are not reused while an operation that started before the
 * free is still running (see qcow2_apply_pending_frees), so a shared
 * operation never sees its host clusters handed to someone else.
 *
 * An allocating write takes contiguous new host clusters for a run of guest
 * clusters, writes the data together with the copy-on-write head and tail
 * (old contents from the backing file, zeros, the old cluster, or the
 * decompressed cluster) in one write when it fits a bounce buffer, and then
 * points the L2 entries at the new clusters. The L2 cache is told to flush
 * the file before it writes (data before metadata); old clusters are queued
 * for freeing.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define BOUNCE_MAX (UINT64_C(4) << 20)
#define MAX_RUN 4096

/* ---------------------------------------------------------------- operations */

void qcow2_op_begin(qcow2_state *s, qcow2_op *op, uint64_t start, uint64_t end, bool excl)
{
    op->seq = ++s->op_seq;
    op->start = start;
    op->end = end;
    op->excl = excl;
    op->next = s->ops;
    s->ops = op;
}

void qcow2_op_end(qcow2_state *s, qcow2_op *op)
{
    for (qcow2_op **p = &s->ops; *p; p = &(*p)->next) {
        if (*p == op) {
            *p = op->next;
            break;
        }
    }
    pthread_cond_broadcast(&s->cond);
}

bool qcow2_excl_conflict(const qcow2_state *s, uint64_t start, uint64_t end)
{
    for (const qcow2_op *op = s->ops; op; op = op->next)
        if (op->excl && op->start < end && start < op->end)
            return true;
    return false;
}

uint64_t qcow2_oldest_op(const qcow2_state *s)
{
    uint64_t m = UINT64_MAX;
    for (const qcow2_op *op = s->ops; op; op = op->next)
        if (op->seq < m)
            m = op->seq;
    return m;
}

/* ---------------------------------------------------------------- reads */

static int backing_read(qcow2_state *s, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    if (!s->img) {
        memset(buf, 0, len);
        return 0;
    }
    return vdk_backing_pread(s->img, buf, len, off, err);
}

static int sub_kind(const qcow2_cinfo *ci, uint32_t sc)
{
    if (ci->compressed)
        return QCOW2_COMPRESSED;
    if (ci->alloc & (1u << sc))
        return QCOW2_DATA;
    if (ci->zero & (1u << sc))
        return QCOW2_ZERO;
    return QCOW2_UNALLOC;
}

/* Guest content of [goff, goff+len) (inside one cluster) as described by
 * the entry ci, whatever the L2 table says now. */
int qcow2_read_guest(qcow2_state *s, const qcow2_cinfo *ci, uint64_t goff, void *buf,
                     size_t len, vdk_error *err)
{
    uint64_t in = goff & (s->cluster_size - 1);
    uint8_t *p = buf;
    if (ci->compressed) {
        uint8_t *c = malloc(s->cluster_size);
        if (!c)
            return vdk_fail(err, -ENOMEM, "out of memory");
        int r = qcow2_read_compressed(s, ci->word, goff >> s->cluster_bits, c, err);
        if (r == 0)
            memcpy(p, c + in, len);
        free(c);
        return r;
    }
    size_t pos = 0;
    while (pos < len) {
        uint32_t sc = (uint32_t)((in + pos) >> s->sc_bits), j = sc + 1;
        int kind = sub_kind(ci, sc);
        while (j < s->nsub && sub_kind(ci, j) == kind)
            j++;
        size_t piece = ((uint64_t)j << s->sc_bits) - (in + pos);
        if (piece > len - pos)
            piece = len - pos;
        int r = 0;
        if (kind == QCOW2_DATA)
            r = vdk_file_pread(s->data_file, p + pos, piece, ci->host + in + pos, err);
        else if (kind == QCOW2_ZERO)
            memset(p + pos, 0, piece);
        else
            r = backing_read(s, p + pos, piece, goff + pos, err);
        if (r < 0)
            return r;
        pos += piece;
    }
    return 0;
}

static int read_run(qcow2_state *s, const qcow2_map *m, uint8_t *p, uint64_t n,
                    uint64_t off, vdk_error *err)
{
    switch (m->kind) {
    case QCOW2_UNALLOC:
        return backing_read(s, p, n, off, err);
    case QCOW2_ZERO:
        memset(p, 0, n);
        return 0;
    case QCOW2_DATA:
        return vdk_file_pread(s->data_file, p, n, m->host, err);
    default: {
        qcow2_cinfo ci = {.word = m->entry, .compressed = true};
        return qcow2_read_guest(s, &ci, off, p, n, err);
    }
    }
}

int qcow2_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    uint8_t *p = buf;
    while (len) {
        qcow2_map m;
        qcow2_op op;
        pthread_mutex_lock(&s->lock);
        int r = qcow2_map_range(s, off, len, false, &m, err);
        if (r == 0)
            qcow2_op_begin(s, &op, off >> s->cluster_bits,
                           ((off + m.bytes - 1) >> s->cluster_bits) + 1, false);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
            return r;
        r = read_run(s, &m, p, m.bytes, off, err);
        pthread_mutex_lock(&s->lock);
        qcow2_op_end(s, &op);
        pthread_mutex_unlock(&s->lock);
        if (r < 0)
            return r;
        p += m.bytes;
        off += m.bytes;
        len -= m.bytes;
    }
    return 0;
}

/* ---------------------------------------------------------------- write planning */

/* Subcluster mask of the bytes [a, b) of a cluster (a < b). */
static uint32_t sc_mask(const qcow2_state *s, uint64_t a, uint64_t b)
{
    if (s->nsub == 1)
        return 1;
    uint32_t first = (uint32_t)(a >> s->sc_bits), last = (uint32_t)((b - 1) >> s->sc_bits);
    uint64_t m = ((UINT64_C(1) << (last + 1)) - 1) & ~((UINT64_C(1) << first) - 1);
    return (uint32_t)m;
}

/* Whether [a, b) of the cluster can be written in place. */
static bool in_place_ok(const qcow2_state *s, const qcow2_cinfo *ci, uint64_t a, uint64_t b)
{
    if (!ci->has_host || !ci->copied || !ci->l1_copied || ci->compressed)
        return false;
    uint32_t need = sc_mask(s, a, b);
    return (ci->alloc & need) == need;
}

/* Whether the cluster's host cluster is ours to fill in (but not in place). */
static bool reusable(const qcow2_cinfo *ci)
{
    return ci->has_host && ci->copied && ci->l1_copied && !ci->compressed;
}

typedef struct wplan {
    uint64_t gc, k, host;
    bool reuse, fresh;
    qcow2_cinfo *old;
    uint64_t within, n;   /* data: offset in the first cluster, length */
    uint64_t lo, hi;      /* COW bounds: in the first cluster, in the last one */
} wplan;

/* COW bounds [lo, hi) around the data [a, b) of one cluster. */
static void cow_bounds(const qcow2_state *s, const qcow2_cinfo *ci, bool reuse, uint64_t a,
                       uint64_t b, uint64_t *lo, uint64_t *hi)
{
    uint64_t scs = UINT64_C(1) << s->sc_bits;
    if (!s->ext_l2 || ci->compressed || (ci->has_host && !reuse)) {
        *lo = 0;
        *hi = s->cluster_size;
        return;
    }
    *lo = a & ~(scs - 1);
    *hi = (b + scs - 1) & ~(scs - 1);
    if (reuse && (ci->alloc & (1u << (a >> s->sc_bits))))
        *lo = a; /* already holds its data: do not rewrite it */
    if (reuse && (ci->alloc & (1u << ((b - 1) >> s->sc_bits))))
        *hi = b;
}

/* Whether [a, b) of an old cluster reads as zeros without any I/O. */
static bool zero_source(const qcow2_state *s, const qcow2_cinfo *ci, uint64_t a, uint64_t b)
{
    if (a >= b)
        return true;
    if (ci->compressed)
        return false;
    for (uint32_t sc = (uint32_t)(a >> s->sc_bits); sc <= (b - 1) >> s->sc_bits; sc++) {
        int k = sub_kind(ci, sc);
        if (k == QCOW2_DATA || (k == QCOW2_UNALLOC && qcow2_has_backing(s)))
            return false;
    }
    return true;
}

/* Clusters after gc that also need a new allocation (under the lock). */
static int count_alloc_run(qcow2_state *s, uint64_t gc, uint64_t kmax, qcow2_cinfo *old,
                           uint64_t *k, vdk_error *err)
{
    uint64_t i = 1;
    for (; i < kmax; i++) {
        if (qcow2_excl_conflict(s, gc + i, gc + i + 1))
            break;
        int r = qcow2_lookup(s, gc + i, &old[i], err);
        if (r < 0)
            return r;
        if (reusable(&old[i]))
            break;
    }
    *k = i;
    return 0;
}

/* ---------------------------------------------------------------- write execution */

static int write_cow(qcow2_state *s, const qcow2_cinfo *ci, uint64_t goff, uint64_t len,
                     uint64_t host, vdk_error *err)
{
    if (len == 0)
        return 0;
    uint8_t *b = vdk_alloc_aligned(len, false);
    if (!b)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = qcow2_read_guest(s, ci, goff, b, len, err);
    if (r == 0)
        r = vdk_file_pwrite(s->data_file, b, len, host, err);
    free(b);
    return r;
}

/* Write data plus COW head and tail to the new host clusters. */
static int write_data(qcow2_state *s, const wplan *p, const uint8_t *buf, vdk_error *err)
{
    uint64_t cs = s->cluster_size, g0 = p->gc << s->cluster_bits;
    uint64_t e = p->within + p->n;            /* data end, from the run start */
    uint64_t last = (p->k - 1) * cs;          /* last cluster, from the run start */
    const qcow2_cinfo *ol = &p->old[p->k - 1];
    uint64_t head = p->within - p->lo, tail = last + p->hi - e;
    if (p->fresh && zero_source(s, &p->old[0], p->lo, p->within))
        head = 0;
    if (p->fresh && zero_source(s, ol, e - last, p->hi))
        tail = 0;
    uint64_t total = head + p->n + tail;
    if (head == 0 && tail == 0)
        return vdk_file_pwrite(s->data_file, buf, p->n, p->host + p->within, err);
    if (total > BOUNCE_MAX) {
        int r = write_cow(s, &p->old[0], g0 + p->within - head, head,
                          p->host + p->within - head, err);
        if (r == 0)
            r = vdk_file_pwrite(s->data_file, buf, p->n, p->host + p->within, err);
        if (r == 0)
            r = write_cow(s, ol, g0 + e, tail, p->host + e, err);
        return r;
    }
    uint8_t *b = vdk_alloc_aligned(total, false);
    if (!b)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = qcow2_read_guest(s, &p->old[0], g0 + p->within - head, b, head, err);
    memcpy(b + head, buf, p->n);
    if (r == 0 && tail)
        r = qcow2_read_guest(s, ol, g0 + e, b + head + p->n, tail, err);
    if (r == 0)
        r = vdk_file_pwrite(s->data_file, b, total, p->host + p->within - head, err);
    free(b);
    return r;
}

/* New L2 entries for the run, then queue the old clusters for freeing. */
static int link_run(qcow2_state *s, const wplan *p, vdk_error *err)
{
    uint64_t *w = malloc(p->k * 16), *bm = w + p->k;
    if (!w)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; i < p->k; i++) {
        w[i] = (p->host + (i << s->cluster_bits)) | QCOW2_OFLAG_COPIED;
        uint64_t lo = i == 0 ? p->lo : 0, hi = i == p->k - 1 ? p->hi : s->cluster_size;
        uint32_t bits = sc_mask(s, lo, hi);
        uint32_t alloc = p->reuse ? p->old[i].alloc | bits : bits;
        uint32_t zero = p->old[i].compressed ? 0 : p->old[i].zero & ~alloc;
        bm[i] = alloc | ((uint64_t)zero << 32);
    }
    int r = qcow2_set_entries(s, p->gc, p->k, w, s->ext_l2 ? bm : NULL, err);
    free(w);
    if (r < 0)
        return r;
    vdk_cache_flush_before_write(s->l2_cache);
    for (uint64_t i = 0; i < p->k && !p->reuse && r == 0; i++)
        r = qcow2_free_entry_later(s, &p->old[i], 0, err);
    if (r == 0 && qcow2_too_many_pending(s))
        r = qcow2_meta_flush(s, err);
    return r;
}

/* Plan an allocating write at guest cluster gc (lock held, no conflict). */
static int plan_alloc(qcow2_state *s, wplan *p, const qcow2_cinfo *first, uint64_t off,
                      uint64_t len, vdk_error *err)
{
    uint64_t cs = s->cluster_size;
    p->gc = off >> s->cluster_bits;
    p->within = off & (cs - 1);
    uint64_t kmax = (p->within + len + cs - 1) >> s->cluster_bits;
    if (kmax > MAX_RUN)
        kmax = MAX_RUN;
    p->old = malloc(kmax * sizeof *p->old);
    if (!p->old)
        return vdk_fail(err, -ENOMEM, "out of memory");
    p->old[0] = *first;
    p->reuse = reusable(first);
    p->k = 1;
    int r = 0;
    if (p->reuse) {
        p->host = first->host;
        p->fresh = false;
    } else if (s->data_file != s->file) {
        /* External data file: guest clusters live at their guest offset. */
        r = count_alloc_run(s, p->gc, kmax, p->old, &p->k, err);
        p->host = p->gc << s->cluster_bits;
        p->fresh = false;
    } else {
        r = count_alloc_run(s, p->gc, kmax, p->old, &p->k, err);
        uint64_t got;
        if (r == 0)
            r = qcow2_alloc_clusters(s, p->k, false, &p->host, &got, &p->fresh, err);
        if (r == 0)
            p->k = got;
    }
    if (r < 0)
        return r;
    uint64_t span = (p->k << s->cluster_bits) - p->within;
    p->n = len < span ? len : span;
    uint64_t e = p->within + p->n, last = (p->k - 1) << s->cluster_bits, lo, hi;
    cow_bounds(s, &p->old[0], p->reuse, p->within, p->k == 1 ? e : cs, &p->lo, &hi);
    cow_bounds(s, &p->old[p->k - 1], p->reuse, p->k == 1 ? p->within : 0, e - last, &lo, &p->hi);
    if (p->k == 1)
        p->hi = hi > p->hi ? p->hi : hi;
    return 0;
}

/* One step of a write: in place, or allocating. Sets *done. */
static int write_step(qcow2_state *s, const uint8_t *buf, uint64_t len, uint64_t off,
                      uint64_t *done, vdk_error *err)
{
    uint64_t cs = s->cluster_size, gc = off >> s->cluster_bits;
    qcow2_cinfo ci;
    int r;
    for (;;) {
        if (s->broken)
            return vdk_fail(err, VDK_EBROKEN, "qcow2: image is in an error state after a "
                                              "failed metadata write");
        r = qcow2_lookup(s, gc, &ci, err);
        if (r < 0)
            return r;
        uint64_t in = off & (cs - 1), first = len < cs - in ? len : cs - in;
        if (in_place_ok(s, &ci, in, in + first))
            break;
        if (!qcow2_excl_conflict(s, gc, gc + 1)) {
            wplan p = {0};
            qcow2_op op;
            r = plan_alloc(s, &p, &ci, off, len, err);
            if (r == 0) {
                qcow2_op_begin(s, &op, p.gc, p.gc + p.k, true);
                pthread_mutex_unlock(&s->lock);
                r = write_data(s, &p, buf, err);
                if (r == 0 && s->data_file != s->file) /* data before the L2 entries */
                    r = vdk_file_flush(s->data_file, err);
                pthread_mutex_lock(&s->lock);
                if (r == 0)
                    r = link_run(s, &p, err);
                else if (!p.reuse && s->data_file == s->file)
                    qcow2_free_now(s, p.host, p.k << s->cluster_bits, NULL);
                qcow2_op_end(s, &op);
                *done = p.n;
            }
            free(p.old);
            return r;
        }
        pthread_cond_wait(&s->cond, &s->lock);
    }
    /* In place: extend over following clusters with contiguous hosts. */
    uint64_t n = cs - (off & (cs - 1)), host = ci.host + (off & (cs - 1));
    while (n < len) {
        qcow2_cinfo nx;
        uint64_t want = len - n < cs ? len - n : cs;
        r = qcow2_lookup(s, gc + (n + (off & (cs - 1))) / cs, &nx, err);
        if (r < 0 || !in_place_ok(s, &nx, 0, want) || nx.host != host + n)
            break;
        n += want;
    }
    if (n > len)
        n = len;
    qcow2_op op;
    qcow2_op_begin(s, &op, gc, ((off + n - 1) >> s->cluster_bits) + 1, false);
    pthread_mutex_unlock(&s->lock);
    r = vdk_file_pwrite(s->data_file, buf, n, host, err);
    pthread_mutex_lock(&s->lock);
    qcow2_op_end(s, &op);
    *done = n;
    return r;
}

int qcow2_write(qcow2_state *s, const void *buf, size_t len, uint64_t off, vdk_error *err)
{
    const uint8_t *p = buf;
    pthread_mutex_lock(&s->lock);
    int r = qcow2_prepare_write(s, err);
    while (r == 0 && len) {
        uint64_t done = 0;
        r = write_step(s, p, len, off, &done, err);
        p += done;
        off += done;
        len -= done;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

int qcow2_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off,
                 vdk_error *err)
{
    return qcow2_write(vdk_image_priv(img), buf, len, off, err);
}
