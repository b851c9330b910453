/*
 * check-apply.c - making a qcow2 repair plan durable, in an order that a
 * crash at any point leaves the image no worse than it was:
 *
 *  1. Entries that drop a reference or a COPIED flag (bad L1/L2 entries
 *     cleared, COPIED cleared where the refcount will not be 1), then a
 *     flush. Under the old refcounts this only leaks clusters, and a
 *     cluster without COPIED is copied on write, never overwritten.
 *  2. The refcounts. In place: each refcount block with changes rewritten
 *     whole (raising a refcount is always safe; lowering one only frees a
 *     cluster nothing references any more, which step 1 made durable),
 *     then a flush. Or, when the structure itself is damaged or the
 *     snapshot table is rewritten, a rebuild: the new snapshot table and
 *     the new refcount table and blocks are written past the end of the
 *     file and flushed, and one header write (refcount table fields, with
 *     the snapshot table fields next to them) switches to them, then a
 *     flush. Before that write the old structures are in force, untouched.
 *  3. Entries that set a COPIED flag (only now is the refcount 1 durable),
 *     then a flush.
 *  4. When nothing is left to fix: the dirty and corrupt bits cleared.
 *
 * Afterwards the open image's in-memory state (L1 table, caches, overlap
 * sets, snapshots, allocation hints) is reloaded from what is on disk.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-int.h"

static int flush(qc_check *c, vdk_error *err)
{
    int r = vdk_file_flush(c->s->file, err);
    return r < 0 ? qcow2_set_broken(c->s, r) : 0;
}

/* Write the planned entries of one kind (late: those that set COPIED). */
static int write_fixes(qc_check *c, bool late, vdk_error *err)
{
    qcow2_state *s = c->s;
    bool any = false;
    for (size_t i = 0; i < c->nfixes; i++) {
        const qc_fix *f = &c->fixes[i];
        if ((bool)f->late != late)
            continue;
        uint8_t e[16];
        vdk_put_be64(e, f->word);
        vdk_put_be64(e + 8, f->bitmap);
        int r = vdk_file_pwrite(s->file, e, f->len, f->where, err);
        if (r < 0)
            return qcow2_set_broken(s, r);
        uint64_t l1_end = s->l1_offset + (uint64_t)s->l1_size * 8;
        if (f->where >= s->l1_offset && f->where < l1_end) {
            uint64_t *l1e = &s->l1[(f->where - s->l1_offset) / 8];
            qcow2_l2set_change(s, *l1e, f->word);
            *l1e = f->word;
        }
        any = true;
    }
    return any ? flush(c, err) : 0;
}

/* Refcounts set in place, one refcount block write per block. */
static int write_refcounts(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    size_t i = 0;
    while (i < c->nrcfixes) {
        uint64_t ti = c->rcfixes[i].cluster >> s->rb_bits;
        uint64_t off = s->rt[ti] & QCOW2_RT_OFFSET_MASK, mask = (UINT64_C(1) << s->rb_bits) - 1;
        int r = qc_pread(c, c->rbbuf, s->cluster_size, off, err);
        for (; r == 0 && i < c->nrcfixes && c->rcfixes[i].cluster >> s->rb_bits == ti; i++)
            qcow2_rb_set(s, c->rbbuf, c->rcfixes[i].cluster & mask, c->rcfixes[i].value);
        if (r == 0)
            r = vdk_file_pwrite(s->file, c->rbbuf, s->cluster_size, off, err);
        if (r < 0)
            return qcow2_set_broken(s, r);
    }
    return c->nrcfixes ? flush(c, err) : 0;
}

/* ---------------------------------------------------------------- rebuild */

static void uncount(qc_check *c, uint32_t *k, uint64_t off, uint64_t len)
{
    qcow2_state *s = c->s;
    if (!len || off + len < off)
        return;
    uint64_t end = off + len;
    if (end > c->file_size && end - c->file_size >= s->cluster_size)
        return; /* never counted */
    for (uint64_t x = off >> s->cluster_bits; x <= (end - 1) >> s->cluster_bits; x++)
        if (x < c->nb && k[x])
            k[x]--;
}

/* The references of the repaired image, without the old refcount structures
 * (they become free); room for the new snapshot table at the end. */
static uint32_t *rebuild_counts(qc_check *c, uint64_t st, uint64_t *n, vdk_error *err)
{
    qcow2_state *s = c->s;
    *n = c->nb + st;
    uint32_t *k = calloc(*n ? *n : 1, sizeof *k);
    if (!k) {
        vdk_fail(err, -ENOMEM, "qcow2: out of memory for the refcount rebuild");
        return NULL;
    }
    memcpy(k, c->ref, c->nb * sizeof *k);
    uncount(c, k, s->rt_offset, s->rt_size * 8);
    for (uint64_t i = 0; i < s->rt_size; i++) {
        uint64_t e = s->rt[i], off = e & QCOW2_RT_OFFSET_MASK;
        if (off && !(e & QC_RT_RESERVED) && !(off & (s->cluster_size - 1)))
            uncount(c, k, off, s->cluster_size);
    }
    for (uint64_t x = c->nb; x < *n; x++)
        k[x] = 1;
    return k;
}

/* Write the new snapshot table at cluster at; make it the state's table. */
static int new_snapshot_table(qc_check *c, uint64_t at, uint64_t bytes, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t off = at << s->cluster_bits;
    int r = bytes ? qc_write_snapshot_table(c, off, err) : 0;
    if (r < 0)
        return qcow2_set_broken(s, r);
    uint32_t kept = 0;
    for (uint32_t i = 0; i < c->nsnaps; i++)
        kept += !c->snaps[i].drop;
    qcow2_snapshots_free(s);
    s->nb_snapshots = kept;
    s->snapshots_offset = kept ? off : 0;
    s->snapshots_size = bytes;
    if (off + bytes > s->file_size)
        s->file_size = off + bytes;
    return 0;
}

static int rebuild(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t bytes = c->snap_rewrite ? qc_snapshot_table_bytes(c) : 0;
    uint64_t st = qcow2_size_to_clusters(s, bytes), n;
    uint32_t *k = rebuild_counts(c, st, &n, err);
    if (!k)
        return -ENOMEM;
    int r = c->snap_rewrite ? new_snapshot_table(c, c->nb, bytes, err) : 0;
    if (r == 0)
        r = qcow2_rebuild_from_counts(s, k, n, c->snap_rewrite, err);
    free(k);
    if (r == 0 && c->snap_rewrite && qcow2_snapshots_read(s, NULL) < 0) {
        qcow2_snapshots_free(s); /* in memory only: the table on disk is what counts */
        s->snaps = NULL;
    }
    return r;
}

/* ---------------------------------------------------------------- state */

/* Reload what the writes changed under the open image. */
static int reload(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t size;
    int r = vdk_file_size(s->file, &size, err);
    if (r < 0)
        return r;
    if (size > s->file_size)
        s->file_size = size;
    uint64_t fc = qcow2_size_to_clusters(s, s->file_size);
    if (fc > s->alloc_end)
        s->alloc_end = fc;
    s->free_hint = 0;
    s->free_byte_offset = 0;
    qcow2_overlap_free(s);
    r = qcow2_overlap_init(s, err);
    if (r == 0)
        r = qcow2_make_caches(s, err);
    return r;
}

static int clear_bits(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    if (c->corruptions || c->check_errors || s->version < 3)
        return 0;
    uint64_t bits = s->incompat & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
    if (!bits)
        return 0;
    int r = qcow2_set_incompat(s, bits, false, err);
    if (r == 0) {
        s->corrupt = false;
        s->dirty_set = false;
    }
    return r;
}

int qc_apply(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    if (!s->writable)
        return vdk_fail(err, -EROFS, "qcow2: cannot repair an image opened read-only");
    bool rebuilding = (c->rebuild && c->fix_errors) || c->snap_rewrite;
    bool changes = c->nfixes || c->nrcfixes || rebuilding;
    qc_sort_fixes(c);
    int r = 0;
    if (changes) {
        r = write_fixes(c, false, err);
        if (r == 0)
            r = rebuilding ? rebuild(c, err) : write_refcounts(c, err);
        if (r == 0)
            r = write_fixes(c, true, err);
        if (r == 0)
            r = reload(c, err);
    }
    if (r == 0)
        r = clear_bits(c, err);
    return r;
}
