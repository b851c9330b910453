/*
 * snapshot-delta.c - the refcount changes of a snapshot transaction, kept
 * apart from the live refcounts until the switch, and the walks that
 * produce them.
 *
 * Deltas are kept per chunk of clusters (a hash from chunk index to an
 * array of 32-bit deltas), so memory follows the clusters touched, not the
 * file size, and a chunk never straddles two refcount blocks.
 *
 * Counting rule (the one qemu-img check and the refcount rebuild use): a
 * cluster is referenced once by the header, by each table that is part of
 * the structure (L1, refcount and snapshot tables and blocks), once for
 * every L1 table (active or snapshot) that reaches an L2 table, and once
 * for every L2 entry that points at it along each such path. So taking a
 * snapshot adds one to every L2 table of the active L1 and to every cluster
 * their entries point at; deleting one subtracts the same for its L1.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-snap.h"

#define CHUNK_BITS_MAX 12

void qcow2_deltas_init(qcow2_state *s, qcow2_deltas *d)
{
    memset(d, 0, sizeof *d);
    d->chunk_bits = s->rb_bits < CHUNK_BITS_MAX ? s->rb_bits : CHUNK_BITS_MAX;
}

void qcow2_deltas_free(qcow2_deltas *d)
{
    for (size_t i = 0; i < d->cap; i++)
        free(d->vals[i]);
    free(d->keys);
    free(d->vals);
    d->keys = NULL;
    d->vals = NULL;
    d->cap = d->n = 0;
}

static size_t slot_of(const qcow2_deltas *d, uint64_t key)
{
    size_t i = (size_t)(key * UINT64_C(0x9E3779B97F4A7C15) >> 17) & (d->cap - 1);
    while (d->keys[i] && d->keys[i] != key)
        i = (i + 1) & (d->cap - 1);
    return i;
}

static int grow(qcow2_deltas *d)
{
    size_t cap = d->cap ? d->cap * 2 : 64;
    uint64_t *keys = calloc(cap, sizeof *keys);
    int32_t **vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -ENOMEM;
    }
    qcow2_deltas old = *d;
    d->keys = keys;
    d->vals = vals;
    d->cap = cap;
    for (size_t i = 0; i < old.cap; i++) {
        if (!old.keys[i])
            continue;
        size_t j = slot_of(d, old.keys[i]);
        d->keys[j] = old.keys[i];
        d->vals[j] = old.vals[i];
    }
    free(old.keys);
    free(old.vals);
    return 0;
}

int qcow2_deltas_add_slow(qcow2_deltas *d, uint64_t cluster, int32_t delta, vdk_error *err)
{
    uint64_t key = (cluster >> d->chunk_bits) + 1;
    if ((d->n + 1) * 2 > d->cap && grow(d) < 0)
        return vdk_fail(err, -ENOMEM, "out of memory for snapshot refcount changes");
    size_t i = slot_of(d, key);
    if (!d->keys[i]) {
        d->vals[i] = calloc((size_t)1 << d->chunk_bits, sizeof(int32_t));
        if (!d->vals[i])
            return vdk_fail(err, -ENOMEM, "out of memory for snapshot refcount changes");
        d->keys[i] = key;
        d->n++;
    }
    d->last_key = key;
    d->last = d->vals[i];
    int32_t *v = &d->vals[i][cluster & ((UINT64_C(1) << d->chunk_bits) - 1)];
    if ((delta > 0 && *v > INT32_MAX - delta) || (delta < 0 && *v < INT32_MIN - delta))
        return vdk_fail(err, -ERANGE, "qcow2: too many references to cluster 0x%llx",
                        (unsigned long long)cluster);
    *v += delta;
    return 0;
}

int32_t qcow2_deltas_get_slow(const qcow2_deltas *d, uint64_t cluster)
{
    if (!d->cap)
        return 0;
    uint64_t key = (cluster >> d->chunk_bits) + 1, mask = (UINT64_C(1) << d->chunk_bits) - 1;
    if (key == d->last_key && d->last)
        return d->last[cluster & mask];
    size_t i = slot_of(d, key);
    if (!d->keys[i])
        return 0;
    ((qcow2_deltas *)d)->last_key = key; /* a lookup cache, not the contents */
    ((qcow2_deltas *)d)->last = d->vals[i];
    return d->vals[i][cluster & mask];
}

int qcow2_rc_cursor_get_slow(qcow2_state *s, qcow2_rc_cursor *c, uint64_t cluster,
                             uint64_t *rc, vdk_error *err)
{
    uint64_t ti = cluster >> s->rb_bits;
    if (!c->blk || c->ti != ti) {
        qcow2_rc_cursor_put(s, c);
        uint64_t off = ti < s->rt_size ? s->rt[ti] & QCOW2_RT_OFFSET_MASK : 0;
        uint64_t lim = qcow2_host_limit(s);
        if (!off || (off & (s->cluster_size - 1)) || off < s->cluster_size || off > lim ||
            lim - off < s->cluster_size) /* none, or damaged: the checked way */
            return qcow2_refcount_get(s, cluster, rc, err);
        int r = vdk_cache_get(s->rc_cache, off, (void **)&c->blk, err);
        if (r < 0)
            return r;
        c->ti = ti;
    }
    *rc = qcow2_rb_get(s, c->blk, cluster & ((UINT64_C(1) << s->rb_bits) - 1));
    return 0;
}

void qcow2_rc_cursor_put(qcow2_state *s, qcow2_rc_cursor *c)
{
    if (c->blk)
        vdk_cache_put(s->rc_cache, (void **)&c->blk);
    c->blk = NULL;
}

/* ---------------------------------------------------------------- walks */

/* The clusters one L2 entry references (none, one, or a compressed range). */
static int add_entry(qcow2_state *s, qcow2_deltas *d, uint64_t gc, uint64_t w, uint64_t b,
                     int32_t delta, vdk_error *err)
{
    qcow2_cinfo ci;
    int r = qcow2_decode(s, gc, w, b, &ci, err);
    if (r < 0)
        return r;
    if (ci.compressed) {
        uint64_t off, len;
        qcow2_compressed_range(s, w, &off, &len);
        uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
        for (uint64_t c = first; c <= last && r == 0; c++)
            r = qcow2_deltas_add(d, c, delta, err);
        return r;
    }
    if (ci.host)
        r = qcow2_deltas_add(d, ci.host >> s->cluster_bits, delta, err);
    return r;
}

int qcow2_deltas_add_table(qcow2_state *s, qcow2_deltas *d, uint64_t l1i, uint64_t off,
                           int32_t delta, vdk_error *err)
{
    int r = qcow2_check_l2_offset(s, l1i, off, err);
    if (r == 0)
        r = qcow2_deltas_add(d, off >> s->cluster_bits, delta, err);
    uint8_t *t = NULL;
    if (r == 0)
        r = vdk_cache_get(s->l2_cache, off, (void **)&t, err);
    uint64_t n = UINT64_C(1) << s->l2_bits, lim = qcow2_host_limit(s);
    bool plain = !s->ext_l2 && s->data_file == s->file;
    for (uint64_t i = 0; r == 0 && i < n; i++) {
        uint64_t w, b;
        qcow2_l2_entry_read(s, t, i, &w, &b);
        if (plain && !(w & QCOW2_OFLAG_COMPRESSED)) {
            /* The common entry, decoded inline: a host cluster that is
             * aligned and inside the file, or none. Anything else takes
             * the checked way below, which names the damage. */
            uint64_t host = w & QCOW2_OFFSET_MASK;
            if (!host)
                continue;
            if (!(host & (s->cluster_size - 1)) && host >= s->cluster_size && host < lim) {
                r = qcow2_deltas_add(d, host >> s->cluster_bits, delta, err);
                continue;
            }
        }
        if (w || b)
            r = add_entry(s, d, (l1i << s->l2_bits) + i, w, b, delta, err);
    }
    if (t)
        vdk_cache_put(s->l2_cache, (void **)&t);
    return r;
}

int qcow2_deltas_add_l1(qcow2_state *s, qcow2_deltas *d, const uint64_t *l1, uint64_t n,
                        int32_t delta, vdk_error *err)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = l1[i] & QCOW2_OFFSET_MASK;
        if (!off)
            continue;
        int r = qcow2_deltas_add_table(s, d, i, off, delta, err);
        if (r < 0)
            return r;
    }
    return 0;
}

int qcow2_snapshot_read_l1(qcow2_state *s, const qcow2_snapshot *sn, uint64_t **l1,
                           vdk_error *err)
{
    *l1 = calloc(sn->l1_size ? sn->l1_size : 1, 8);
    if (!*l1)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = sn->l1_size ? vdk_file_pread(s->file, *l1, (uint64_t)sn->l1_size * 8,
                                         sn->l1_offset, err)
                        : 0;
    for (uint32_t i = 0; r == 0 && i < sn->l1_size; i++)
        (*l1)[i] = vdk_be64(&(*l1)[i]);
    if (r < 0) {
        free(*l1);
        *l1 = NULL;
    }
    return r;
}

const int32_t *qcow2_deltas_chunk(const qcow2_deltas *d, uint64_t chunk)
{
    if (!d->cap)
        return NULL;
    size_t i = slot_of(d, chunk + 1);
    return d->keys[i] ? d->vals[i] : NULL;
}
