/*
 * refcount.c - reference counts and host cluster allocation.
 *
 * Refcounts live in refcount blocks (one cluster each, entries of
 * refcount_bits, big-endian for 16/32/64 bits, least significant bits first
 * inside a byte for 1/2/4 bits) reached through the refcount table, which is
 * kept whole in memory. Blocks go through the refcount cache.
 *
 * Allocation sets refcounts at once (under the metadata lock), so two
 * writers never get the same cluster. A missing refcount block is placed at
 * the first cluster of the range it covers (self-describing, as QEMU does
 * for images that grow at the end); it is written before the table entry
 * that points to it. When the table itself is too small it is copied to the
 * end of the file together with the new blocks needed to describe it, and
 * the header is switched to it once both are durable.
 *
 * Decrements are deferred: qcow2_free_later() queues them, and
 * qcow2_apply_pending_frees() applies them once the L2/L1 updates that
 * dropped the references are durable (called from qcow2_meta_flush), and
 * only when no operation that started earlier may still be using them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define MAX_PENDING 4096

/* ---------------------------------------------------------------- entries */

void qcow2_note_refcount_change(qcow2_state *s)
{
    if (!s->lazy && s->l2_cache && s->rc_cache)
        vdk_cache_set_dependency(s->l2_cache, s->rc_cache);
}

/* Make metadata written so far durable, except with lazy refcounts (where
 * the dirty bit makes refcounts untrusted anyway). */
static int sync_unless_lazy(qcow2_state *s, vdk_error *err)
{
    if (s->lazy)
        return 0;
    int r = vdk_file_flush(s->file, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

static bool has_block(const qcow2_state *s, uint64_t ti)
{
    return ti < s->rt_size && (s->rt[ti] & QCOW2_RT_OFFSET_MASK);
}

/* Get the refcount block for table index ti (which must have one). */
static int rb_load(qcow2_state *s, uint64_t ti, uint8_t **block, vdk_error *err)
{
    uint64_t off = s->rt[ti] & QCOW2_RT_OFFSET_MASK;
    uint64_t lim = qcow2_host_limit(s);
    if ((off & (s->cluster_size - 1)) || off < s->cluster_size)
        return qcow2_signal_corruption(s, err,
                                       "refcount block %llu offset 0x%llx is not cluster-aligned "
                                       "or overlaps the header",
                                       (unsigned long long)ti, (unsigned long long)off);
    if (off > lim || lim - off < s->cluster_size)
        return qcow2_signal_corruption(s, err,
                                       "refcount block %llu at 0x%llx lies past the end of the "
                                       "file",
                                       (unsigned long long)ti, (unsigned long long)off);
    int r = vdk_cache_get(s->rc_cache, off, (void **)block, err);
    return r;
}

int qcow2_refcount_get(qcow2_state *s, uint64_t cluster, uint64_t *rc, vdk_error *err)
{
    uint64_t ti = cluster >> s->rb_bits;
    *rc = 0;
    if (!has_block(s, ti))
        return 0;
    uint8_t *b;
    int r = rb_load(s, ti, &b, err);
    if (r < 0)
        return r;
    *rc = qcow2_rb_get(s, b, cluster & ((UINT64_C(1) << s->rb_bits) - 1));
    vdk_cache_put(s->rc_cache, (void **)&b);
    return 0;
}

static int write_rt_entry(qcow2_state *s, uint64_t ti, vdk_error *err)
{
    uint8_t e[8];
    vdk_put_be64(e, s->rt[ti]);
    int r = vdk_file_pwrite(s->file, e, sizeof e, s->rt_offset + ti * 8, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

static void note_allocated(qcow2_state *s, uint64_t end_cluster)
{
    if (end_cluster > s->alloc_end)
        s->alloc_end = end_cluster;
    if (end_cluster > s->untouched)
        s->untouched = end_cluster;
}

/* ---------------------------------------------------------------- table growth */

/* Regions (table indexes) touched by clusters [a, b) that lack a block. */
static uint64_t missing_regions(const qcow2_state *s, uint64_t a, uint64_t b,
                                uint64_t *list, uint64_t max)
{
    uint64_t n = 0;
    for (uint64_t r = a >> s->rb_bits; r <= (b - 1) >> s->rb_bits; r++) {
        if (!has_block(s, r)) {
            if (list && n < max)
                list[n] = r;
            n++;
        }
    }
    return n;
}

/* Size the new table (entries, clusters) and count its new blocks. */
static int plan_table(qcow2_state *s, uint64_t min_entries, uint64_t start,
                      uint64_t *entries, uint64_t *k, uint64_t *nb, vdk_error *err)
{
    uint64_t per = s->cluster_size / 8;
    uint64_t want = min_entries > s->rt_size + s->rt_size / 2 ? min_entries
                                                             : s->rt_size + s->rt_size / 2;
    for (;;) {
        want = (want + per - 1) / per * per;
        if (want * 8 > QCOW2_MAX_RT_BYTES) {
            if (min_entries * 8 > QCOW2_MAX_RT_BYTES)
                return vdk_fail(err, VDK_ETOOBIG,
                                "qcow2: the refcount table would exceed 8 MiB; the image "
                                "cannot grow further");
            want = QCOW2_MAX_RT_BYTES / 8;
        }
        *k = want / per;
        uint64_t b = 0, need;
        while ((need = missing_regions(s, start, start + *k + b, NULL, 0)) != b)
            b = need;
        uint64_t last = (start + *k + b - 1) >> s->rb_bits;
        if (last < want) {
            *entries = want;
            *nb = b;
            return 0;
        }
        if (want * 8 >= QCOW2_MAX_RT_BYTES)
            return vdk_fail(err, VDK_ETOOBIG, "qcow2: the refcount table would exceed 8 MiB");
        want = last + 1;
    }
}

/* Write the new refcount blocks for the regions in list, describing the
 * clusters [start, end) of the new structures. */
static int write_new_blocks(qcow2_state *s, uint64_t *nrt, const uint64_t *list,
                            uint64_t nb, uint64_t first_block, uint64_t start,
                            uint64_t end, vdk_error *err)
{
    uint8_t *blk = malloc(s->cluster_size);
    if (!blk)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = 0;
    uint64_t mask = (UINT64_C(1) << s->rb_bits) - 1;
    for (uint64_t j = 0; j < nb && r == 0; j++) {
        memset(blk, 0, s->cluster_size);
        for (uint64_t c = start; c < end; c++)
            if ((c >> s->rb_bits) == list[j])
                qcow2_rb_set(s, blk, c & mask, 1);
        uint64_t off = (first_block + j) << s->cluster_bits;
        nrt[list[j]] = off;
        r = vdk_file_pwrite(s->file, blk, s->cluster_size, off, err);
        if (r == 0 && qcow2_rbset_add(s, off) < 0)
            r = vdk_fail(err, -ENOMEM, "out of memory");
    }
    free(blk);
    return r;
}

/* Count the new clusters that fall in regions that already have a block. */
static int count_in_old_blocks(qcow2_state *s, uint64_t start, uint64_t end, vdk_error *err)
{
    for (uint64_t c = start; c < end; c++) {
        if (!has_block(s, c >> s->rb_bits))
            continue;
        uint8_t *b;
        int r = rb_load(s, c >> s->rb_bits, &b, err);
        if (r < 0)
            return r;
        uint64_t i = c & ((UINT64_C(1) << s->rb_bits) - 1);
        qcow2_rb_set(s, b, i, qcow2_rb_get(s, b, i) + 1);
        vdk_cache_mark_dirty(s->rc_cache, b);
        vdk_cache_put(s->rc_cache, (void **)&b);
    }
    return 0;
}

static int write_table(qcow2_state *s, const uint64_t *nrt, uint64_t entries, uint64_t off,
                       vdk_error *err)
{
    uint64_t *be = malloc(entries * 8);
    if (!be)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; i < entries; i++)
        vdk_put_be64(&be[i], nrt[i]);
    int r = vdk_file_pwrite(s->file, be, entries * 8, off, err);
    free(be);
    return r;
}

/* Copy the refcount table to the end of the file, larger, with the blocks
 * that describe it, then switch the header to it and free the old one. */
static int grow_rt(qcow2_state *s, uint64_t min_entries, vdk_error *err)
{
    uint64_t start = s->alloc_end, entries = 0, k = 0, nb = 0;
    int r = plan_table(s, min_entries, start, &entries, &k, &nb, err);
    if (r < 0)
        return r;
    if ((start + k + nb) > (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits))
        return vdk_fail(err, VDK_ETOOBIG, "qcow2: image file would exceed 2^56 bytes");
    uint64_t *nrt = calloc(entries, 8), *list = calloc(nb ? nb : 1, 8);
    if (!nrt || !list) {
        free(nrt);
        free(list);
        return vdk_fail(err, -ENOMEM, "out of memory");
    }
    memcpy(nrt, s->rt, s->rt_size * 8);
    missing_regions(s, start, start + k + nb, list, nb);
    r = write_new_blocks(s, nrt, list, nb, start + k, start, start + k + nb, err);
    if (r == 0)
        r = count_in_old_blocks(s, start, start + k + nb, err);
    if (r == 0)
        r = vdk_cache_write(s->rc_cache, err);
    if (r == 0)
        r = write_table(s, nrt, entries, start << s->cluster_bits, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    free(list);
    if (r < 0) {
        free(nrt);
        return qcow2_set_broken(s, r);
    }
    uint64_t old_off = s->rt_offset, old_len = (uint64_t)s->rt_clusters << s->cluster_bits;
    free(s->rt);
    s->rt = nrt;
    s->rt_size = entries;
    s->rt_offset = start << s->cluster_bits;
    s->rt_clusters = (uint32_t)k;
    note_allocated(s, start + k + nb);
    r = qcow2_header_write_field(s, QCOW2_OFF_RT_OFFSET, 12, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0)
        return qcow2_set_broken(s, r);
    if (qcow2_overlap_refresh(s) < 0)
        return vdk_fail(err, -ENOMEM, "out of memory");
    return qcow2_free_now(s, old_off, old_len, err);
}

/* ---------------------------------------------------------------- blocks */

/* Give region ti a refcount block, placed at the first cluster it covers. */
static int ensure_refblock(qcow2_state *s, uint64_t ti, vdk_error *err)
{
    if (has_block(s, ti))
        return 0;
    if (ti >= s->rt_size) {
        int r = grow_rt(s, ti + 1, err);
        if (r < 0 || has_block(s, ti))
            return r;
    }
    uint64_t c = ti << s->rb_bits;
    if (c >= (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits))
        return vdk_fail(err, VDK_ETOOBIG, "qcow2: image file would exceed 2^56 bytes");
    uint64_t off = c << s->cluster_bits;
    if (qcow2_overlaps_metadata(s, off, s->cluster_size))
        return qcow2_signal_corruption(s, err,
                                       "new refcount block at 0x%llx would overlap metadata",
                                       (unsigned long long)off);
    uint8_t *b;
    int r = vdk_cache_get_empty(s->rc_cache, off, (void **)&b, err);
    if (r < 0)
        return r;
    qcow2_rb_set(s, b, 0, 1);
    vdk_cache_mark_dirty(s->rc_cache, b);
    vdk_cache_put(s->rc_cache, (void **)&b);
    note_allocated(s, c + 1);
    r = vdk_cache_write(s->rc_cache, err);
    if (r == 0)
        r = sync_unless_lazy(s, err);
    if (r < 0)
        return qcow2_set_broken(s, r);
    s->rt[ti] = off;
    if (qcow2_rbset_add(s, off) < 0)
        return vdk_fail(err, -ENOMEM, "out of memory");
    r = write_rt_entry(s, ti, err);
    if (r == 0)
        r = sync_unless_lazy(s, err);
    return r;
}

/* ---------------------------------------------------------------- updates */

static int update_region(qcow2_state *s, uint64_t *c, uint64_t end, int delta,
                         vdk_error *err)
{
    uint64_t ti = *c >> s->rb_bits, mask = (UINT64_C(1) << s->rb_bits) - 1;
    uint8_t *b;
    int r = rb_load(s, ti, &b, err);
    if (r < 0)
        return r;
    uint64_t stop = (ti + 1) << s->rb_bits;
    if (stop > end)
        stop = end;
    for (; *c < stop && r == 0; (*c)++) {
        uint64_t v = qcow2_rb_get(s, b, *c & mask);
        if (delta > 0 && v >= s->refcount_max)
            r = vdk_fail(err, -ERANGE, "qcow2: refcount of cluster 0x%llx would overflow",
                         (unsigned long long)(*c << s->cluster_bits));
        else if (delta < 0 && v == 0)
            r = qcow2_signal_corruption(s, err,
                                        "refcount of cluster 0x%llx would drop below zero",
                                        (unsigned long long)(*c << s->cluster_bits));
        if (r < 0)
            break;
        v = delta > 0 ? v + 1 : v - 1;
        qcow2_rb_set(s, b, *c & mask, v);
        vdk_cache_mark_dirty(s->rc_cache, b);
        if (v == 0) {
            if (*c < s->free_hint)
                s->free_hint = *c;
            if (s->free_byte_offset >> s->cluster_bits == *c)
                s->free_byte_offset = 0;
        }
    }
    vdk_cache_put(s->rc_cache, (void **)&b);
    return r;
}

int qcow2_refcount_update(qcow2_state *s, uint64_t cluster, uint64_t count, int delta,
                          vdk_error *err)
{
    uint64_t c = cluster, end = cluster + count;
    while (c < end) {
        uint64_t ti = c >> s->rb_bits;
        if (!has_block(s, ti)) {
            if (delta < 0)
                return qcow2_signal_corruption(s, err,
                                               "cluster 0x%llx is freed but has no refcount "
                                               "block",
                                               (unsigned long long)(c << s->cluster_bits));
            int r = ensure_refblock(s, ti, err);
            if (r < 0)
                return r;
            if ((ti << s->rb_bits) >= c && (ti << s->rb_bits) < end)
                return qcow2_signal_corruption(s, err,
                                               "refcount block placed inside a range being "
                                               "allocated at 0x%llx",
                                               (unsigned long long)(c << s->cluster_bits));
        }
        int r = update_region(s, &c, end, delta, err);
        if (r < 0)
            return r;
    }
    if (delta > 0) {
        note_allocated(s, end);
        qcow2_note_refcount_change(s);
    }
    return 0;
}

/* ---------------------------------------------------------------- allocation */

/* First cluster at or after from with refcount 0 (regions without a block
 * count as free). */
static int find_free(qcow2_state *s, uint64_t from, uint64_t *out, vdk_error *err)
{
    uint64_t c = from, mask = (UINT64_C(1) << s->rb_bits) - 1;
    for (;;) {
        uint64_t ti = c >> s->rb_bits;
        if (!has_block(s, ti) || c >= s->alloc_end) {
            *out = c;
            return 0;
        }
        uint8_t *b;
        int r = rb_load(s, ti, &b, err);
        if (r < 0)
            return r;
        uint64_t i = c & mask;
        while (i <= mask && qcow2_rb_get(s, b, i) != 0)
            i++;
        vdk_cache_put(s->rc_cache, (void **)&b);
        if (i <= mask) {
            *out = (ti << s->rb_bits) | i;
            return 0;
        }
        c = (ti + 1) << s->rb_bits;
    }
}

/* Length of the free run at c (at most n), stopping at regions without a
 * block. */
static int free_run(qcow2_state *s, uint64_t c, uint64_t n, uint64_t *run, vdk_error *err)
{
    uint64_t k = 1;
    while (k < n) {
        uint64_t x = c + k, v;
        if (!has_block(s, x >> s->rb_bits))
            break;
        if (x < s->alloc_end) {
            int r = qcow2_refcount_get(s, x, &v, err);
            if (r < 0)
                return r;
            if (v)
                break;
        }
        k++;
    }
    *run = k;
    return 0;
}

static int alloc_from(qcow2_state *s, uint64_t from, uint64_t n, bool exact, uint64_t *cl,
                      uint64_t *got, vdk_error *err)
{
    for (;;) {
        uint64_t c, run;
        int r = find_free(s, from, &c, err);
        if (r < 0)
            return r;
        if (!has_block(s, c >> s->rb_bits)) {
            r = ensure_refblock(s, c >> s->rb_bits, err);
            if (r < 0)
                return r;
            continue;
        }
        r = free_run(s, c, n, &run, err);
        if (r < 0)
            return r;
        if (exact && run < n) {
            /* c + run is used, or starts a region without a block (which
             * then gets its block there): continue after it. */
            uint64_t x = c + run;
            if (!has_block(s, x >> s->rb_bits)) {
                r = ensure_refblock(s, x >> s->rb_bits, err);
                if (r < 0)
                    return r;
            }
            from = x + 1;
            continue;
        }
        *cl = c;
        *got = run;
        return 0;
    }
}

/* Claim [c, c+n): overlap check, refcounts. */
static int claim(qcow2_state *s, uint64_t c, uint64_t n, vdk_error *err)
{
    if (c + n > (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits))
        return vdk_fail(err, VDK_ETOOBIG, "qcow2: image file would exceed 2^56 bytes");
    if (qcow2_overlaps_metadata(s, c << s->cluster_bits, n << s->cluster_bits))
        return qcow2_signal_corruption(s, err,
                                       "allocation of %llu clusters at 0x%llx would overlap "
                                       "metadata",
                                       (unsigned long long)n,
                                       (unsigned long long)(c << s->cluster_bits));
    return qcow2_refcount_update(s, c, n, +1, err);
}

int qcow2_alloc_clusters(qcow2_state *s, uint64_t n, bool exact, uint64_t *off,
                         uint64_t *got, bool *fresh, vdk_error *err)
{
    uint64_t c, run;
    uint64_t from = s->free_hint;
    int r = alloc_from(s, from, n, exact, &c, &run, err);
    if (r < 0)
        return r;
    bool is_fresh = c >= s->untouched;
    r = claim(s, c, run, err);
    if (r < 0)
        return r;
    if (from == s->free_hint && c >= s->free_hint)
        s->free_hint = c + run;
    *off = c << s->cluster_bits;
    *got = run;
    if (fresh)
        *fresh = is_fresh;
    return 0;
}

/* Write the rt entries [lo, hi) of the live table. */
static int write_rt_range(qcow2_state *s, uint64_t lo, uint64_t hi, vdk_error *err)
{
    for (uint64_t i = lo; i < hi; i++) {
        int r = write_rt_entry(s, i, err);
        if (r < 0)
            return r;
    }
    return 0;
}

/*
 * Give every region touched by [c, c+n) a refcount block, the new blocks
 * being placed right after the range (and describing themselves), so that
 * the range stays contiguous. The table must already cover them.
 */
static int blocks_after(qcow2_state *s, uint64_t c, uint64_t n, const uint64_t *list,
                        uint64_t nb, vdk_error *err)
{
    uint64_t *tmp = calloc(s->rt_size, 8);
    if (!tmp)
        return vdk_fail(err, -ENOMEM, "out of memory");
    uint64_t first = c + n, end = first + nb;
    /* Blocks go to a scratch table first: the live one changes only once
     * they are durable. */
    int r = write_new_blocks(s, tmp, list, nb, first, first, end, err);
    if (r == 0)
        r = count_in_old_blocks(s, first, end, err);
    if (r == 0)
        r = vdk_cache_write(s->rc_cache, err);
    if (r == 0)
        r = sync_unless_lazy(s, err);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint64_t j = 0; r == 0 && j < nb; j++) {
        s->rt[list[j]] = tmp[list[j]];
        lo = list[j] < lo ? list[j] : lo;
        hi = list[j] + 1 > hi ? list[j] + 1 : hi;
    }
    free(tmp);
    if (r == 0 && nb)
        r = write_rt_range(s, lo, hi, err);
    if (r == 0)
        r = sync_unless_lazy(s, err);
    if (r < 0)
        return qcow2_set_broken(s, r);
    note_allocated(s, end);
    return 0;
}

/* n contiguous clusters past everything allocated (for tables that must be
 * contiguous and for preallocation, which needs never-used clusters). */
int qcow2_alloc_clusters_at_end(qcow2_state *s, uint64_t n, uint64_t *off, vdk_error *err)
{
    for (;;) {
        uint64_t c = s->alloc_end, b = 0, need;
        while ((need = missing_regions(s, c, c + n + b, NULL, 0)) != b)
            b = need;
        uint64_t last = (c + n + b - 1) >> s->rb_bits;
        if (c + n + b > (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits))
            return vdk_fail(err, VDK_ETOOBIG, "qcow2: image file would exceed 2^56 bytes");
        if (last >= s->rt_size) {
            int r = grow_rt(s, last + 1, err);
            if (r < 0)
                return r;
            continue; /* the table went to the end: start again after it */
        }
        uint64_t *list = calloc(b ? b : 1, 8);
        if (!list)
            return vdk_fail(err, -ENOMEM, "out of memory");
        missing_regions(s, c, c + n + b, list, b);
        int r = blocks_after(s, c, n, list, b, err);
        free(list);
        if (r == 0)
            r = claim(s, c, n, err);
        if (r == 0)
            *off = c << s->cluster_bits;
        return r;
    }
}

/* Allocate exactly cluster c if it is free; *ok tells. */
int qcow2_alloc_cluster_at(qcow2_state *s, uint64_t c, bool *ok, vdk_error *err)
{
    *ok = false;
    uint64_t ti = c >> s->rb_bits, v = 0;
    if (!has_block(s, ti)) {
        int r = ensure_refblock(s, ti, err);
        if (r < 0)
            return r;
    }
    int r = qcow2_refcount_get(s, c, &v, err);
    if (r < 0 || v != 0)
        return r;
    if (qcow2_overlaps_metadata(s, c << s->cluster_bits, s->cluster_size))
        return 0;
    r = qcow2_refcount_update(s, c, 1, +1, err);
    *ok = r == 0;
    return r;
}

/* ---------------------------------------------------------------- frees */

int qcow2_free_now(qcow2_state *s, uint64_t off, uint64_t len, vdk_error *err)
{
    if (len == 0)
        return 0;
    uint64_t first = off >> s->cluster_bits;
    uint64_t last = (off + len - 1) >> s->cluster_bits;
    int r = qcow2_refcount_update(s, first, last - first + 1, -1, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

int qcow2_free_later(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags,
                     vdk_error *err)
{
    if (len == 0)
        return 0;
    uint64_t first = off >> s->cluster_bits;
    uint64_t count = ((off + len - 1) >> s->cluster_bits) - first + 1;
    if (s->npending) {
        qcow2_free *p = &s->pending[s->npending - 1];
        if (p->cluster + p->count == first && p->seq == s->op_seq && p->flags == flags &&
            !(flags & QCOW2_FREE_L2)) {
            p->count += count;
            return 0;
        }
    }
    if (s->npending == s->cap_pending) {
        size_t cap = s->cap_pending ? s->cap_pending * 2 : 64;
        qcow2_free *n = realloc(s->pending, cap * sizeof *n);
        if (!n)
            return vdk_fail(err, -ENOMEM, "out of memory");
        s->pending = n;
        s->cap_pending = cap;
    }
    s->pending[s->npending++] = (qcow2_free){first, count, s->op_seq, flags};
    return 0;
}

void qcow2_compressed_range(const qcow2_state *s, uint64_t entry, uint64_t *off,
                            uint64_t *len)
{
    uint64_t coff = entry & s->coffset_mask;
    uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
    *off = coff & ~UINT64_C(511);
    *len = sectors * 512;
}

/* Queue the release of whatever host storage an old L2 entry held. */
int qcow2_free_entry_later(qcow2_state *s, const qcow2_cinfo *ci, unsigned flags,
                           vdk_error *err)
{
    if (s->data_file != s->file && !ci->compressed)
        return 0; /* clusters of an external data file are not refcounted */
    if (ci->compressed) {
        uint64_t off, len;
        qcow2_compressed_range(s, ci->word, &off, &len);
        return qcow2_free_later(s, off, len, flags, err);
    }
    if (ci->host)
        return qcow2_free_later(s, ci->host, s->cluster_size, flags, err);
    return 0;
}

bool qcow2_too_many_pending(const qcow2_state *s)
{
    return s->npending > MAX_PENDING;
}

/* Punch holes where the freed clusters are now unused (best effort: a file
 * system without hole punching keeps the old bytes, which no one reads). */
static int punch_free(qcow2_state *s, const qcow2_free *f, vdk_error *err)
{
    uint64_t run = 0, v;
    for (uint64_t i = 0; i <= f->count; i++) {
        int r = i < f->count ? qcow2_refcount_get(s, f->cluster + i, &v, err) : 0;
        if (r < 0)
            return r;
        if (i < f->count && v == 0) {
            run++;
            continue;
        }
        if (run)
            vdk_file_discard(s->file, (f->cluster + i - run) << s->cluster_bits,
                             run << s->cluster_bits, NULL);
        run = 0;
    }
    return 0;
}

static int apply_one(qcow2_state *s, const qcow2_free *f, vdk_error *err)
{
    int r = qcow2_refcount_update(s, f->cluster, f->count, -1, err);
    if (r == 0 && (f->flags & QCOW2_FREE_PUNCH))
        r = punch_free(s, f, err);
    if (r < 0 || !(f->flags & QCOW2_FREE_L2))
        return r;
    uint64_t v;
    r = qcow2_refcount_get(s, f->cluster, &v, err);
    if (r == 0 && v == 0)
        vdk_cache_discard(s->l2_cache, f->cluster << s->cluster_bits);
    return r;
}

int qcow2_apply_pending_frees(qcow2_state *s, vdk_error *err)
{
    uint64_t oldest = qcow2_oldest_op(s);
    size_t keep = 0, i;
    int r = 0;
    for (i = 0; i < s->npending; i++) {
        qcow2_free f = s->pending[i];
        if (f.seq >= oldest || r < 0) {
            s->pending[keep++] = f;
            continue;
        }
        r = apply_one(s, &f, err);
    }
    s->npending = keep;
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}
