/*
 * snapshot-commit.c - the atomic metadata switch behind every snapshot
 * operation (create, apply, delete).
 *
 * An operation describes its outcome as a transaction (qcow2-snap.h): the
 * new active L1 entries, the new snapshot list, the new virtual size, and
 * the refcount deltas that must hold from the switch on. The commit then:
 *
 *  1. decides the "copied" flags: every active L2 entry must say whether
 *     its cluster's final refcount is 1, every active L1 entry whether its
 *     table's is. An active L2 table whose flags would change is copied to a
 *     new cluster with the right flags (the old table loses the active
 *     reference: one more delta), so no live table is ever edited in place;
 *  2. checks every final refcount (no underflow, no overflow, no increment
 *     of a cluster the image does not count as used);
 *  3. allocates the new clusters through the live allocator (their
 *     refcounts land in the live blocks: if we crash, they are leaks);
 *  4. writes the table copies, the new L1 table, the new snapshot table,
 *     copies of the refcount blocks with the deltas applied and a new
 *     refcount table pointing at them, and flushes;
 *  5. switches: one write of header bytes 24-71, then a flush.
 * What nothing references after the switch (the old L1, refcount and
 * snapshot tables, the refcount blocks replaced, what the operation named)
 * loses its reference in the same switch, through the deltas: nothing is
 * written after it. Two flushes in all (qemu-img snapshot takes seven):
 * before the switch and after it.
 *
 * A crash before step 5 leaves the old image plus leaked clusters; after
 * it, the new image, exact. Refcounts and flags agree in both.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-snap.h"

#define HDR_SWITCH_OFF 24
#define HDR_SWITCH_LEN 48 /* size .. snapshots_offset */

typedef struct plan {
    uint64_t *l1;      /* final active L1 entries */
    uint32_t *copy;    /* L1 indexes whose table is copied */
    uint64_t *copy_off;
    size_t ncopy;
    uint64_t *blk;     /* refcount table indexes of the blocks rewritten */
    uint64_t *blk_off;
    size_t nblk, cap_blk;
    uint64_t l1_off, tab_off, tab_size, rt_off;
    uint32_t rt_clusters;
    uint64_t *rt;      /* the new refcount table */
    uint64_t min_freed; /* lowest cluster the deltas free (UINT64_MAX: none) */
} plan;

void qcow2_txn_init(qcow2_state *s, qcow2_txn *t)
{
    memset(t, 0, sizeof *t);
    qcow2_deltas_init(s, &t->d);
}

void qcow2_txn_free(qcow2_txn *t)
{
    free(t->l1);
    for (uint32_t i = 0; t->snaps && i < t->nsnaps; i++)
        qcow2_snapshot_entry_free(&t->snaps[i]);
    free(t->snaps);
    qcow2_deltas_free(&t->d);
    free(t->drop_l1);
    free(t->post);
    memset(t, 0, sizeof *t);
}

int qcow2_txn_free_after(qcow2_txn *t, uint64_t off, uint64_t len, vdk_error *err)
{
    if (!len)
        return 0;
    if (t->npost == t->cap_post) {
        size_t cap = t->cap_post ? t->cap_post * 2 : 16;
        struct qcow2_range *n = realloc(t->post, cap * sizeof *n);
        if (!n)
            return vdk_fail(err, -ENOMEM, "out of memory");
        t->post = n;
        t->cap_post = cap;
    }
    t->post[t->npost++] = (struct qcow2_range){off, len};
    return 0;
}

int qcow2_quiesce(qcow2_state *s, vdk_error *err)
{
    while (s->ops)
        pthread_cond_wait(&s->cond, &s->lock);
    /* Nothing cached to write back: no flush either (the commit flushes
     * everything, guest data included, before it switches). */
    if (!vdk_cache_is_dirty(s->l2_cache) && !vdk_cache_is_dirty(s->rc_cache) &&
        s->l1_dirty_lo >= s->l1_dirty_hi && s->npending == 0)
        return 0;
    return qcow2_meta_flush(s, err);
}

static void plan_free(plan *p)
{
    free(p->l1);
    free(p->copy);
    free(p->copy_off);
    free(p->blk);
    free(p->blk_off);
    free(p->rt);
}

/* ---------------------------------------------------------------- flags */

/* The L2 entry w with its "copied" flag as the final refcounts want it. */
static int desired_word(qcow2_state *s, const qcow2_deltas *d, qcow2_rc_cursor *c, uint64_t w,
                        uint64_t *out, vdk_error *err)
{
    uint64_t host = w & QCOW2_OFFSET_MASK;
    *out = w & ~QCOW2_OFLAG_COPIED;
    if ((w & QCOW2_OFLAG_COMPRESSED) || !host)
        return 0;
    int64_t f;
    int r = qcow2_final_refcount(s, d, c, host >> s->cluster_bits, &f, err);
    if (r == 0 && f == 1)
        *out |= QCOW2_OFLAG_COPIED;
    return r;
}

/* Whether any entry of the table at off has the wrong flag; with out,
 * write the corrected table there. */
static int table_flags(qcow2_state *s, const qcow2_deltas *d, uint64_t off, bool *wrong,
                       uint8_t *out, vdk_error *err)
{
    uint8_t *t;
    int r = vdk_cache_get(s->l2_cache, off, (void **)&t, err);
    if (r < 0)
        return r;
    if (out)
        memcpy(out, t, s->cluster_size);
    *wrong = false;
    uint64_t n = UINT64_C(1) << s->l2_bits;
    qcow2_rc_cursor c = {0};
    for (uint64_t i = 0; i < n && r == 0; i++) {
        uint64_t w, b, want;
        qcow2_l2_entry_read(s, t, i, &w, &b);
        r = desired_word(s, d, &c, w, &want, err);
        if (r == 0 && want != w) {
            *wrong = true;
            if (!out)
                break;
            if (s->ext_l2)
                vdk_put_be64(out + i * 16, want);
            else
                vdk_put_be64(out + i * 8, want);
        }
    }
    qcow2_rc_cursor_put(s, &c);
    vdk_cache_put(s->l2_cache, (void **)&t);
    return r;
}

/* Step 1: which tables to copy, and the final L1 entries. */
static int decide(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    p->l1 = calloc(t->l1_size ? t->l1_size : 1, 8);
    p->copy = calloc(t->l1_size ? t->l1_size : 1, sizeof *p->copy);
    if (!p->l1 || !p->copy)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < t->l1_size; i++) {
        uint64_t off = t->l1[i] & QCOW2_OFFSET_MASK;
        bool wrong = false;
        int r = off ? qcow2_check_l2_offset(s, i, off, err) : 0;
        if (r == 0 && off)
            r = table_flags(s, &t->d, off, &wrong, NULL, err);
        if (r == 0 && wrong) {
            p->copy[p->ncopy++] = i;
            r = qcow2_deltas_add(&t->d, off >> s->cluster_bits, -1, err);
        }
        if (r < 0)
            return r;
    }
    for (uint32_t i = 0, k = 0; i < t->l1_size; i++) {
        uint64_t off = t->l1[i] & QCOW2_OFFSET_MASK;
        if (k < p->ncopy && p->copy[k] == i) {
            k++;
            continue; /* set once the copy has its cluster */
        }
        int64_t f = 0;
        int r = off ? qcow2_final_refcount(s, &t->d, NULL, off >> s->cluster_bits, &f, err) : 0;
        if (r < 0)
            return r;
        p->l1[i] = off | (f == 1 ? QCOW2_OFLAG_COPIED : 0);
    }
    return 0;
}

/* ---------------------------------------------------------------- checks */

typedef struct check_ctx {
    qcow2_state *s;
    plan *p;
    qcow2_rc_cursor c;
    vdk_error *err;
} check_ctx;

static int add_block(plan *p, uint64_t ti)
{
    if (p->nblk && p->blk[p->nblk - 1] == ti)
        return 0;
    for (size_t i = 0; i < p->nblk; i++)
        if (p->blk[i] == ti)
            return 0;
    if (p->nblk == p->cap_blk) {
        size_t cap = p->cap_blk ? p->cap_blk * 2 : 16;
        uint64_t *n = realloc(p->blk, cap * 8);
        if (!n)
            return -ENOMEM;
        p->blk = n;
        p->cap_blk = cap;
    }
    p->blk[p->nblk++] = ti;
    return 0;
}

/* Step 2, for one cluster: the final refcount must be representable, and
 * only clusters in use may gain references. */
static inline int check_one(uint64_t c, int32_t delta, check_ctx *k)
{
    qcow2_state *s = k->s;
    uint64_t live;
    int r = qcow2_rc_cursor_get(s, &k->c, c, &live, k->err);
    if (r < 0)
        return r;
    int64_t f = (int64_t)live + delta;
    if (f < 0 || (delta > 0 && live == 0))
        return qcow2_signal_corruption(s, k->err,
                                       "refcount of cluster 0x%llx is %llu, which does not "
                                       "match its references (change %d)",
                                       (unsigned long long)(c << s->cluster_bits),
                                       (unsigned long long)live, (int)delta);
    if (f == 0 && c < k->p->min_freed)
        k->p->min_freed = c;
    if ((uint64_t)f > s->refcount_max)
        return vdk_fail(k->err, -ERANGE,
                        "qcow2: cluster 0x%llx would have %lld references, more than %u-bit "
                        "refcounts hold",
                        (unsigned long long)(c << s->cluster_bits), (long long)f,
                        1u << s->refcount_order);
    return 0;
}

/* Step 2 for every cluster with a change, chunk by chunk (the walk runs
 * over every cluster a snapshot references). */
static int check_all(const qcow2_deltas *d, check_ctx *k)
{
    uint64_t per = UINT64_C(1) << d->chunk_bits;
    for (size_t i = 0; i < d->cap; i++) {
        if (!d->keys[i])
            continue;
        uint64_t base = (d->keys[i] - 1) << d->chunk_bits;
        const int32_t *v = d->vals[i];
        for (uint64_t j = 0; j < per; j++) {
            if (v[j] == 0)
                continue;
            int r = check_one(base + j, v[j], k);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static int range_delta(qcow2_state *s, qcow2_deltas *d, uint64_t off, uint64_t len,
                       vdk_error *err)
{
    if (!len)
        return 0;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    for (uint64_t c = off >> s->cluster_bits; c <= last; c++) {
        int r = qcow2_deltas_add(d, c, -1, err);
        if (r < 0)
            return r;
    }
    return 0;
}

/*
 * What the switch leaves unreferenced loses its reference in the same
 * switch: the old L1 table, snapshot table and refcount table, what the
 * operation named, and the refcount blocks the new ones replace (which can
 * in turn touch more blocks: repeated until no new block is touched). So
 * nothing is left to free, and nothing to write, after the switch.
 */
static int fold_frees(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    int r = s->l1_size ? range_delta(s, &t->d, s->l1_offset, (uint64_t)s->l1_size * 8, err) : 0;
    if (r == 0 && t->new_table && s->nb_snapshots)
        r = range_delta(s, &t->d, s->snapshots_offset, s->snapshots_size, err);
    for (size_t i = 0; r == 0 && i < t->npost; i++)
        r = range_delta(s, &t->d, t->post[i].off, t->post[i].len, err);
    if (r == 0 && t->drop_l1_size)
        r = qcow2_deltas_add_l1(s, &t->d, t->drop_l1, t->drop_l1_size, -1, err);
    if (r == 0)
        r = range_delta(s, &t->d, s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits,
                        err);
    uint32_t shift = s->rb_bits - t->d.chunk_bits;
    for (size_t i = 0; r == 0 && i < t->d.cap; i++)
        if (t->d.keys[i] && add_block(p, (t->d.keys[i] - 1) >> shift) < 0)
            r = vdk_fail(err, -ENOMEM, "out of memory");
    for (size_t k = 0; r == 0 && k < p->nblk; k++) {
        uint64_t old = s->rt[p->blk[k]] & QCOW2_RT_OFFSET_MASK;
        r = qcow2_deltas_add(&t->d, old >> s->cluster_bits, -1, err);
        if (r == 0 && add_block(p, old >> s->cluster_bits >> s->rb_bits) < 0)
            r = vdk_fail(err, -ENOMEM, "out of memory");
    }
    return r;
}

/* ---------------------------------------------------------------- allocation */

static int alloc_run(qcow2_state *s, uint64_t n, uint64_t *off, vdk_error *err)
{
    uint64_t got;
    int r = qcow2_alloc_clusters(s, n, true, off, &got, NULL, err);
    if (r == 0 && got != n) {
        qcow2_free_now(s, *off, got << s->cluster_bits, NULL);
        r = vdk_fail(err, -EIO, "qcow2: could not allocate %llu contiguous clusters",
                     (unsigned long long)n);
    }
    return r;
}

/* Give back what step 3 took (after a failure). */
static void unallocate(qcow2_state *s, plan *p, const qcow2_txn *t)
{
    uint64_t cs = s->cluster_size;
    if (p->l1_off)
        qcow2_free_now(s, p->l1_off, (uint64_t)t->l1_size * 8, NULL);
    for (size_t i = 0; i < p->ncopy; i++)
        if (p->copy_off[i])
            qcow2_free_now(s, p->copy_off[i], cs, NULL);
    if (p->tab_off)
        qcow2_free_now(s, p->tab_off, p->tab_size, NULL);
    for (size_t i = 0; i < p->nblk; i++)
        if (p->blk_off[i])
            qcow2_free_now(s, p->blk_off[i], cs, NULL);
    if (p->rt_off)
        qcow2_free_now(s, p->rt_off, (uint64_t)p->rt_clusters << s->cluster_bits, NULL);
}

/* Step 3. The refcount table comes last: allocations may grow it. */
static int allocate(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    p->copy_off = calloc(p->ncopy ? p->ncopy : 1, 8);
    p->blk_off = calloc(p->nblk ? p->nblk : 1, 8);
    if (!p->copy_off || !p->blk_off)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = 0;
    if (t->l1_size)
        r = alloc_run(s, qcow2_size_to_clusters(s, (uint64_t)t->l1_size * 8), &p->l1_off, err);
    for (size_t i = 0; r == 0 && i < p->ncopy; i++)
        r = alloc_run(s, 1, &p->copy_off[i], err);
    if (r == 0 && t->new_table && t->nsnaps) {
        p->tab_size = qcow2_snapshot_table_size(t->snaps, t->nsnaps);
        r = alloc_run(s, qcow2_size_to_clusters(s, p->tab_size), &p->tab_off, err);
    }
    for (size_t i = 0; r == 0 && i < p->nblk; i++)
        r = alloc_run(s, 1, &p->blk_off[i], err);
    for (int tries = 0; r == 0; tries++) {
        uint32_t n = s->rt_clusters;
        r = alloc_run(s, n, &p->rt_off, err);
        if (r == 0 && s->rt_clusters == n) {
            p->rt_clusters = n;
            break;
        }
        if (r == 0)
            qcow2_free_now(s, p->rt_off, (uint64_t)n << s->cluster_bits, NULL);
        p->rt_off = 0;
        if (r == 0 && tries > 8)
            r = vdk_fail(err, -EIO, "qcow2: the refcount table keeps growing");
    }
    if (r < 0)
        unallocate(s, p, t);
    return r;
}

/* ---------------------------------------------------------------- writing */

static int write_copies(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    uint8_t *buf = vdk_alloc_aligned(s->cluster_size, false);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = 0;
    for (size_t i = 0; i < p->ncopy && r == 0; i++) {
        uint64_t off = t->l1[p->copy[i]] & QCOW2_OFFSET_MASK;
        bool wrong;
        r = table_flags(s, &t->d, off, &wrong, buf, err);
        if (r == 0)
            r = vdk_file_pwrite(s->file, buf, s->cluster_size, p->copy_off[i], err);
        p->l1[p->copy[i]] = p->copy_off[i] | QCOW2_OFLAG_COPIED;
    }
    free(buf);
    return r;
}

/* Write n host-order entries as a big-endian table filling whole clusters. */
static int write_table(qcow2_state *s, const uint64_t *v, uint64_t n, uint64_t off,
                       vdk_error *err)
{
    uint64_t bytes = qcow2_size_to_clusters(s, n * 8) << s->cluster_bits;
    uint64_t *be = vdk_alloc_aligned(bytes, true);
    if (!be)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++)
        vdk_put_be64(&be[i], v[i]);
    int r = vdk_file_pwrite(s->file, be, bytes, off, err);
    free(be);
    return r;
}

static int write_snapshot_table(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    if (!p->tab_off)
        return 0;
    uint64_t bytes = qcow2_size_to_clusters(s, p->tab_size) << s->cluster_bits;
    uint8_t *buf = vdk_alloc_aligned(bytes, true);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    qcow2_snapshot_table_build(t->snaps, t->nsnaps, buf);
    int r = vdk_file_pwrite(s->file, buf, bytes, p->tab_off, err);
    free(buf);
    return r;
}

/* The live block of region ti plus the deltas, written to off. */
static int write_block(qcow2_state *s, const qcow2_deltas *d, uint64_t ti, uint64_t off,
                       uint8_t *buf, vdk_error *err)
{
    uint8_t *b;
    int r = vdk_cache_get(s->rc_cache, s->rt[ti] & QCOW2_RT_OFFSET_MASK, (void **)&b, err);
    if (r < 0)
        return r;
    memcpy(buf, b, s->cluster_size);
    vdk_cache_put(s->rc_cache, (void **)&b);
    uint64_t per = UINT64_C(1) << d->chunk_bits, chunks = UINT64_C(1) << (s->rb_bits - d->chunk_bits);
    for (uint64_t k = 0; k < chunks; k++) {
        const int32_t *v = qcow2_deltas_chunk(d, (ti << (s->rb_bits - d->chunk_bits)) + k);
        for (uint64_t j = 0; v && j < per; j++) {
            if (!v[j])
                continue;
            uint64_t i = k * per + j;
            qcow2_rb_set(s, buf, i, (uint64_t)((int64_t)qcow2_rb_get(s, buf, i) + v[j]));
        }
    }
    return vdk_file_pwrite(s->file, buf, s->cluster_size, off, err);
}

static int write_refcounts(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    p->rt = malloc(s->rt_size * 8);
    uint8_t *buf = vdk_alloc_aligned(s->cluster_size, false);
    int r = p->rt && buf ? 0 : vdk_fail(err, -ENOMEM, "out of memory");
    if (r == 0)
        memcpy(p->rt, s->rt, s->rt_size * 8);
    for (size_t i = 0; r == 0 && i < p->nblk; i++) {
        r = write_block(s, &t->d, p->blk[i], p->blk_off[i], buf, err);
        p->rt[p->blk[i]] = p->blk_off[i];
    }
    free(buf);
    if (r == 0)
        r = write_table(s, p->rt, s->rt_size, p->rt_off, err);
    return r;
}

/* Step 4. The allocations' refcounts only need to be durable before the
 * switch: written here, flushed with the rest. */
static int write_all(qcow2_state *s, qcow2_txn *t, plan *p, vdk_error *err)
{
    int r = vdk_cache_is_dirty(s->l2_cache) || s->npending ? qcow2_meta_flush(s, err)
                                                           : vdk_cache_write(s->rc_cache, err);
    if (r == 0)
        r = write_copies(s, t, p, err);
    if (r == 0 && t->l1_size)
        r = write_table(s, p->l1, t->l1_size, p->l1_off, err);
    if (r == 0)
        r = write_snapshot_table(s, t, p, err);
    if (r == 0)
        r = write_refcounts(s, t, p, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    return r;
}

/* ---------------------------------------------------------------- switch */

/* What the header said before the switch (pointers: freed by the switch). */
typedef struct old_state {
    uint64_t size, l1_offset, rt_offset, snapshots_offset, snapshots_size;
    uint32_t l1_size, rt_clusters, nb_snapshots;
    uint64_t *l1, *rt;
    qcow2_snapshot *snaps;
} old_state;

static void save_old(const qcow2_state *s, old_state *o)
{
    *o = (old_state){s->size, s->l1_offset, s->rt_offset, s->snapshots_offset,
                     s->snapshots_size, s->l1_size, s->rt_clusters, s->nb_snapshots,
                     s->l1, s->rt, s->snaps};
}

static void restore_old(qcow2_state *s, const old_state *o)
{
    s->size = o->size;
    s->l1_offset = o->l1_offset;
    s->l1_size = o->l1_size;
    s->rt_offset = o->rt_offset;
    s->rt_clusters = o->rt_clusters;
    s->nb_snapshots = o->nb_snapshots;
    s->snapshots_offset = o->snapshots_offset;
}

/* Step 5 and the in-memory switch. */
static int switch_to(qcow2_state *s, qcow2_txn *t, plan *p, old_state *o, vdk_error *err)
{
    save_old(s, o);
    s->size = t->size;
    s->l1_offset = t->l1_size ? p->l1_off : 0;
    s->l1_size = t->l1_size;
    s->rt_offset = p->rt_off;
    s->rt_clusters = p->rt_clusters;
    if (t->new_table) {
        s->nb_snapshots = t->nsnaps;
        s->snapshots_offset = t->nsnaps ? p->tab_off : 0;
    }
    int r = qcow2_header_write_field(s, HDR_SWITCH_OFF, HDR_SWITCH_LEN, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0) {
        restore_old(s, o);
        return qcow2_set_broken(s, r);
    }
    t->switched = true;
    free(s->l1);
    s->l1 = p->l1;
    p->l1 = NULL;
    s->l1_dirty_lo = s->l1_dirty_hi = 0;
    free(s->rt);
    s->rt = p->rt;
    p->rt = NULL;
    if (t->new_table) {
        for (uint32_t i = 0; o->snaps && i < o->nb_snapshots; i++)
            qcow2_snapshot_entry_free(&o->snaps[i]);
        free(o->snaps);
        s->snaps = t->snaps;
        s->snapshots_size = t->nsnaps ? p->tab_size : 0;
        t->snaps = NULL;
        t->nsnaps = 0;
    }
    if (p->min_freed < s->free_hint) /* allocation keeps its place otherwise */
        s->free_hint = p->min_freed;
    s->free_byte_offset = 0;
    if (s->img)
        vdk_image_set_size(s->img, s->size);
    qcow2_overlap_free(s);
    r = qcow2_overlap_init(s, err);
    if (r == 0)
        r = qcow2_make_caches(s, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

int qcow2_txn_commit(qcow2_state *s, qcow2_txn *t, vdk_error *err)
{
    plan p = {.min_freed = UINT64_MAX};
    check_ctx k = {s, &p, {0}, err};
    int r = fold_frees(s, t, &p, err);
    if (r == 0)
        r = decide(s, t, &p, err);
    if (r == 0)
        r = check_all(&t->d, &k);
    qcow2_rc_cursor_put(s, &k.c);
    if (r == 0)
        r = allocate(s, t, &p, err);
    if (r == 0) {
        r = write_all(s, t, &p, err);
        if (r < 0)
            unallocate(s, &p, t);
    }
    old_state o;
    if (r == 0)
        r = switch_to(s, t, &p, &o, err);
    plan_free(&p);
    return r;
}
