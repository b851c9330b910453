/*
 * overlap.c - metadata overlap checks before clusters are handed out.
 *
 * In a consistent image every metadata cluster has a refcount, so the
 * allocator never finds one free. A damaged image may lie; before a newly
 * allocated range is written, it is checked against the header cluster, the
 * active L1 table, the refcount table, the snapshot table and snapshot L1
 * tables (sorted, merged extents: binary search), the refcount blocks (a
 * hash set of their offsets) and the active L2 tables (as QEMU's default
 * "cached" mode does). The L2 set follows every change of an active L1
 * entry; a hit is confirmed against the L1 table itself before it counts,
 * so a set that missed a change can only miss an overlap, never invent one.
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

/* ---------------------------------------------------------------- active L2 tables */

static int l2set_grow(qcow2_state *s)
{
    size_t cap = s->l2set_cap ? s->l2set_cap * 2 : 64;
    uint64_t *keys = calloc(cap, sizeof *keys);
    uint32_t *count = calloc(cap, sizeof *count);
    if (!keys || !count) {
        free(keys);
        free(count);
        return -ENOMEM;
    }
    size_t used = 0;
    for (size_t i = 0; i < s->l2set_cap; i++) {
        if (!s->l2set[i] || !s->l2set_count[i])
            continue; /* tables no longer in the L1 table go */
        size_t j = slot_for(keys, cap, s->l2set[i]);
        keys[j] = s->l2set[i];
        count[j] = s->l2set_count[i];
        used++;
    }
    free(s->l2set);
    free(s->l2set_count);
    s->l2set = keys;
    s->l2set_count = count;
    s->l2set_cap = cap;
    s->l2set_used = used;
    return 0;
}

static void l2set_add(qcow2_state *s, uint64_t off)
{
    if (!off)
        return;
    /* Without memory the table goes unrecorded: an overlap with it is
     * missed, as before the set existed; nothing is refused wrongly. */
    if ((s->l2set_used + 1) * 2 > s->l2set_cap && l2set_grow(s) < 0)
        return;
    size_t i = slot_for(s->l2set, s->l2set_cap, off);
    if (!s->l2set[i]) {
        s->l2set[i] = off;
        s->l2set_used++;
    }
    s->l2set_count[i]++;
}

/* An active L1 entry changed from old_entry to new_entry (whole words). */
void qcow2_l2set_change(qcow2_state *s, uint64_t old_entry, uint64_t new_entry)
{
    uint64_t old = old_entry & QCOW2_OFFSET_MASK, nw = new_entry & QCOW2_OFFSET_MASK;
    if (old == nw)
        return;
    if (old && s->l2set_cap) {
        size_t i = slot_for(s->l2set, s->l2set_cap, old);
        if (s->l2set[i] && s->l2set_count[i])
            s->l2set_count[i]--;
    }
    l2set_add(s, nw);
}

static void l2set_clear(qcow2_state *s)
{
    free(s->l2set);
    free(s->l2set_count);
    s->l2set = NULL;
    s->l2set_count = NULL;
    s->l2set_cap = s->l2set_used = 0;
}

/* The set again from the L1 table (after it was replaced). */
void qcow2_l2set_rebuild(qcow2_state *s)
{
    l2set_clear(s);
    for (uint64_t i = 0; s->l1 && i < s->l1_size; i++)
        l2set_add(s, s->l1[i] & QCOW2_OFFSET_MASK);
}

/* Whether the cluster at off is an active L2 table: the set says maybe,
 * the L1 table says for sure. */
static bool is_active_l2(const qcow2_state *s, uint64_t off)
{
    if (!s->l2set_cap)
        return false;
    size_t i = slot_for(s->l2set, s->l2set_cap, off);
    if (!s->l2set[i] || !s->l2set_count[i])
        return false;
    for (uint64_t j = 0; j < s->l1_size; j++)
        if ((s->l1[j] & QCOW2_OFFSET_MASK) == off)
            return true;
    return false;
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
    qcow2_l2set_rebuild(s);
    return 0;
}

void qcow2_overlap_free(qcow2_state *s)
{
    free(s->rbset);
    free(s->fixed_iv);
    s->rbset = NULL;
    s->fixed_iv = NULL;
    s->rbset_cap = s->rbset_n = s->n_fixed_iv = 0;
    l2set_clear(s);
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
        if (qcow2_rbset_has(s, c) || is_active_l2(s, c))
            return true;
    return false;
}
