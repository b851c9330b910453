/*
 * overlap.c - metadata overlap checks before clusters are handed out.
 *
 * In a consistent image every metadata cluster has a refcount, so the
 * allocator never finds one free. A damaged image may lie; before a newly
 * allocated range is written, it is checked against the header cluster, the
 * active L1 table, the refcount table, the snapshot table and snapshot L1
 * tables (sorted, merged extents: binary search), and the refcount blocks (a
 * hash set of their offsets). Active L2 tables are not checked (QEMU's
 * "cached" mode checks them by walking the L1 table; that cost would fall on
 * every allocation here); they are protected by their refcounts only.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* ---------------------------------------------------------------- refblock set */

static size_t slot_for(const uint64_t *set, size_t cap, uint64_t key)
{
    size_t i = (size_t)((key >> 9) * UINT64_C(0x9E3779B97F4A7C15) >> 20) & (cap - 1);
    while (set[i] && set[i] != key)
        i = (i + 1) & (cap - 1);
    return i;
}

static int rbset_grow(qcow2_state *s)
{
    size_t cap = s->rbset_cap ? s->rbset_cap * 2 : 64;
    uint64_t *n = calloc(cap, sizeof *n);
    if (!n)
        return -ENOMEM;
    for (size_t i = 0; i < s->rbset_cap; i++)
        if (s->rbset[i])
            n[slot_for(n, cap, s->rbset[i])] = s->rbset[i];
    free(s->rbset);
    s->rbset = n;
    s->rbset_cap = cap;
    return 0;
}

int qcow2_rbset_add(qcow2_state *s, uint64_t off)
{
    if (off == 0)
        return 0;
    if ((s->rbset_n + 1) * 2 > s->rbset_cap && rbset_grow(s) < 0)
        return -ENOMEM;
    size_t i = slot_for(s->rbset, s->rbset_cap, off);
    if (!s->rbset[i]) {
        s->rbset[i] = off;
        s->rbset_n++;
    }
    return 0;
}

bool qcow2_rbset_has(const qcow2_state *s, uint64_t off)
{
    return s->rbset_cap && s->rbset[slot_for(s->rbset, s->rbset_cap, off)] == off;
}

/* ---------------------------------------------------------------- fixed extents */

static int cmp_iv(const void *a, const void *b)
{
    const struct qcow2_iv *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void add_iv(qcow2_state *s, size_t *n, uint64_t start, uint64_t len)
{
    if (len == 0)
        return;
    uint64_t end = start + len;
    end = (end + s->cluster_size - 1) & ~(s->cluster_size - 1);
    s->fixed_iv[(*n)++] = (struct qcow2_iv){start & ~(s->cluster_size - 1), end};
}

static int rebuild_fixed(qcow2_state *s)
{
    size_t max = 4 + (size_t)s->nb_snapshots;
    struct qcow2_iv *iv = calloc(max, sizeof *iv);
    if (!iv)
        return -ENOMEM;
    free(s->fixed_iv);
    s->fixed_iv = iv;
    size_t n = 0;
    add_iv(s, &n, 0, s->cluster_size);
    add_iv(s, &n, s->l1_offset, (uint64_t)s->l1_size * 8);
    add_iv(s, &n, s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits);
    add_iv(s, &n, s->snapshots_offset, s->snapshots_size);
    for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++)
        add_iv(s, &n, s->snaps[i].l1_offset, (uint64_t)s->snaps[i].l1_size * 8);
    qsort(iv, n, sizeof *iv, cmp_iv);
    size_t m = 0; /* merge overlapping or touching extents */
    for (size_t i = 0; i < n; i++) {
        if (m && iv[i].start <= iv[m - 1].end) {
            if (iv[i].end > iv[m - 1].end)
                iv[m - 1].end = iv[i].end;
        } else {
            iv[m++] = iv[i];
        }
    }
    s->n_fixed_iv = m;
    return 0;
}

int qcow2_overlap_init(qcow2_state *s, vdk_error *err)
{
    if (rebuild_fixed(s) < 0)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; i < s->rt_size; i++) {
        uint64_t off = s->rt[i] & QCOW2_RT_OFFSET_MASK;
        if (off && qcow2_rbset_add(s, off) < 0)
            return vdk_fail(err, -ENOMEM, "out of memory");
    }
    return 0;
}

void qcow2_overlap_free(qcow2_state *s)
{
    free(s->rbset);
    free(s->fixed_iv);
    s->rbset = NULL;
    s->fixed_iv = NULL;
    s->rbset_cap = s->rbset_n = s->n_fixed_iv = 0;
}

/* Refresh after the L1 table or refcount table moved. */
int qcow2_overlap_refresh(qcow2_state *s)
{
    return rebuild_fixed(s);
}

bool qcow2_overlaps_metadata(const qcow2_state *s, uint64_t off, uint64_t len)
{
    if (len == 0)
        return false;
    uint64_t end = off + len;
    /* Last extent starting before end. */
    size_t lo = 0, hi = s->n_fixed_iv;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->fixed_iv[mid].start < end)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0 && s->fixed_iv[lo - 1].end > off)
        return true;
    for (uint64_t c = off & ~(s->cluster_size - 1); c < end; c += s->cluster_size)
        if (qcow2_rbset_has(s, c))
            return true;
    return false;
}
