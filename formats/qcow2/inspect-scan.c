/*
 * inspect-scan.c - qcow2 inspection queries that walk every table:
 *
 *   refmap   who references the host cluster at args {host_offset
 *            [, max_references]}: the header, L1 tables (active and of each
 *            snapshot), the refcount table and blocks, the snapshot table,
 *            bitmap structures, L2 tables, and data or compressed clusters
 *            with the guest offset and the snapshot they serve; beside the
 *            references, the refcount they justify and the one stored
 *   stats    qemu-img check's figures for the active image: total,
 *            allocated, fragmented and compressed clusters, image end offset
 *   layout   where the metadata structures lie in the file
 *
 * Run with s->lock held; entries are decoded by qcow2_decode, and an entry
 * that does not decode is counted as invalid and skipped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "inspect.h"

/* ---------------------------------------------------------------- a set of offsets */

typedef struct offset_set {
    uint64_t *slot; /* 0 = empty (offsets here are never 0) */
    size_t cap, n;
} offset_set;

/* Insert off; returns 1 when new, 0 when present, -ENOMEM. */
static int set_add(offset_set *t, uint64_t off)
{
    if ((t->n + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        uint64_t *ns = calloc(cap, 8);
        if (!ns)
            return -ENOMEM;
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->slot[i])
                continue;
            size_t j = (t->slot[i] >> 9) * 0x9e3779b97f4a7c15ull % cap;
            while (ns[j])
                j = (j + 1) % cap;
            ns[j] = t->slot[i];
        }
        free(t->slot);
        t->slot = ns;
        t->cap = cap;
    }
    size_t j = (off >> 9) * 0x9e3779b97f4a7c15ull % t->cap;
    for (; t->slot[j]; j = (j + 1) % t->cap)
        if (t->slot[j] == off)
            return 0;
    t->slot[j] = off;
    t->n++;
    return 1;
}

/* ---------------------------------------------------------------- refmap */

/* L1 entries a scan visits at most over all L1 tables (a hostile image may
 * have 65536 snapshots with huge tables); past it the answer says so. */
#define SCAN_BUDGET (UINT64_C(1) << 26)

typedef struct refmap {
    qcow2_state *s;
    vdk_emitter *e;
    uint64_t cstart, cend; /* the host cluster, in bytes */
    uint64_t max, emitted, total, expected, invalid, budget;
    bool incomplete;       /* the budget ran out */
    offset_set seen;       /* L2 tables already scanned */
} refmap;

static bool hits(const refmap *m, uint64_t off, uint64_t len)
{
    return len && off < m->cend && m->cstart < off + len;
}

/* One reference; counted ones justify one unit of the cluster's refcount. */
static void add_ref(refmap *m, const char *what, const char *owner, uint64_t off,
                    uint64_t len, int64_t guest, bool counted)
{
    m->total++;
    m->expected += counted;
    if (m->emitted >= m->max)
        return;
    m->emitted++;
    vdk_emit_open(m->e, NULL);
    vdk_emit_str(m->e, "what", what);
    if (owner)
        vdk_emit_str(m->e, "owner", owner);
    vdk_emit_u64(m->e, "offset", off);
    vdk_emit_u64(m->e, "length", len);
    if (guest >= 0)
        vdk_emit_int(m->e, "guest_offset", guest);
    vdk_emit_bool(m->e, "counted", counted);
    vdk_emit_close(m->e);
}

static int bitmap_ref(qcow2_state *s, uint64_t off, uint64_t len, void *ctx)
{
    refmap *m = ctx;
    if (hits(m, off, len))
        add_ref(m, "bitmap structure", NULL, off, len, -1, true);
    return 0;
}

/* Fixed structures: header, tables, refcount blocks, bitmaps. */
static void refmap_fixed(refmap *m)
{
    qcow2_state *s = m->s;
    char owner[300];
    if (hits(m, 0, s->cluster_size))
        add_ref(m, "header", NULL, 0, s->cluster_size, -1, true);
    if (hits(m, s->l1_offset, (uint64_t)s->l1_size * 8))
        add_ref(m, "L1 table", "active", s->l1_offset, (uint64_t)s->l1_size * 8, -1, true);
    uint64_t rtlen = (uint64_t)s->rt_clusters << s->cluster_bits;
    if (hits(m, s->rt_offset, rtlen))
        add_ref(m, "refcount table", NULL, s->rt_offset, rtlen, -1, true);
    for (uint64_t ti = 0; ti < s->rt_size; ti++) {
        uint64_t off = s->rt[ti] & QCOW2_RT_OFFSET_MASK;
        if (off && hits(m, off, s->cluster_size))
            add_ref(m, "refcount block", NULL, off, s->cluster_size, -1, true);
    }
    if (hits(m, s->snapshots_offset, s->snapshots_size))
        add_ref(m, "snapshot table", NULL, s->snapshots_offset, s->snapshots_size, -1, true);
    for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++) {
        uint64_t len = (uint64_t)s->snaps[i].l1_size * 8;
        if (hits(m, s->snaps[i].l1_offset, len))
            add_ref(m, "L1 table", qcow2_owner_name(s, (int)i, owner, sizeof owner),
                    s->snaps[i].l1_offset, len, -1, true);
    }
    if (s->has_bitmaps_ext && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        qcow2_bitmaps_walk(s, bitmap_ref, m, NULL);
}

/* The entries of one L2 table: data and compressed clusters in the cluster. */
static void refmap_entries(refmap *m, const uint8_t *t, uint64_t l1i, const char *owner,
                           bool counted)
{
    qcow2_state *s = m->s;
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t word, bitmap, gc = (l1i << s->l2_bits) + i, off, len;
        qcow2_l2_entry_read(s, t, i, &word, &bitmap);
        if (!word)
            continue;
        qcow2_cinfo ci;
        if (qcow2_decode(s, gc, word, bitmap, &ci, NULL) < 0) {
            m->invalid++;
            continue;
        }
        int64_t guest = (int64_t)(gc << s->cluster_bits);
        if (ci.compressed) {
            qcow2_compressed_range(s, word, &off, &len);
            if (hits(m, off, len))
                add_ref(m, "compressed data", owner, word & s->coffset_mask, len, guest,
                        counted);
        } else if (ci.has_host && s->data_file == s->file && hits(m, ci.host, s->cluster_size)) {
            add_ref(m, ci.alloc ? "data" : "preallocated zero cluster", owner, ci.host,
                    s->cluster_size, guest, counted);
        }
    }
}

/* The L2 tables of one L1 table (active, or a snapshot's) and their entries. */
static int refmap_l1(refmap *m, int64_t snap, vdk_error *err)
{
    qcow2_state *s = m->s;
    qcow2_l1view v;
    int r = qcow2_l1view_load(s, snap, &v, err);
    if (r < 0)
        return r;
    char owner[300];
    qcow2_owner_name(s, v.snap, owner, sizeof owner);
    for (uint64_t i = 0; r == 0 && i < v.n; i++) {
        uint64_t off = v.e[i] & QCOW2_OFFSET_MASK;
        if (m->budget == 0) {
            m->incomplete = true;
            break;
        }
        m->budget--;
        if (!off)
            continue;
        if (hits(m, off, s->cluster_size))
            add_ref(m, "L2 table", owner, off, s->cluster_size,
                    (int64_t)(i * qcow2_l2_coverage(s)), true);
        /* A table shared with an owner scanned before holds the same data
         * references (they count once): scan each table once. */
        int fresh = set_add(&m->seen, off);
        uint8_t *t;
        if (fresh < 0) {
            r = vdk_fail(err, -ENOMEM, "out of memory");
        } else if (fresh == 0) {
            continue;
        } else if (qcow2_l2_fetch(s, i, off, &t, NULL) < 0) {
            m->invalid++;
        } else {
            refmap_entries(m, t, i, owner, true);
            qcow2_l2_put(s, &t);
        }
    }
    qcow2_l1view_free(&v);
    return r;
}

int qcow2_q_refmap(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                   vdk_error *err)
{
    int64_t off = qcow2_arg(args, nargs, 0, -1), max = qcow2_arg(args, nargs, 1, 1000);
    if (off < 0 || (uint64_t)off >= QCOW2_MAX_HOST_OFFSET)
        return vdk_fail(err, -EINVAL, "qcow2: host offset %lld is invalid", (long long)off);
    refmap m = {.s = s, .e = e, .max = max < 0 ? 0 : (uint64_t)max, .budget = SCAN_BUDGET};
    m.cstart = qcow2_cluster_offset(s, (uint64_t)off);
    m.cend = m.cstart + s->cluster_size;
    vdk_emit_u64(e, "cluster_offset", m.cstart);
    vdk_emit_list(e, "references");
    refmap_fixed(&m);
    int r = 0;
    for (int64_t i = -1; r == 0 && i < (int64_t)s->nb_snapshots; i++)
        r = refmap_l1(&m, i, err);
    vdk_emit_close(e);
    free(m.seen.slot);
    if (r < 0)
        return r;
    uint64_t rc;
    r = qcow2_refcount_get(s, m.cstart >> s->cluster_bits, &rc, err);
    if (r < 0)
        return r;
    vdk_emit_u64(e, "count", m.total);
    vdk_emit_u64(e, "expected_refcount", m.expected);
    vdk_emit_u64(e, "refcount", rc);
    vdk_emit_bool(e, "truncated", m.total > m.emitted);
    vdk_emit_u64(e, "invalid_entries", m.invalid);
    vdk_emit_bool(e, "incomplete", m.incomplete);
    return 0;
}

/* ---------------------------------------------------------------- stats */

typedef struct stats {
    uint64_t allocated, fragmented, compressed, data, zero, l2_tables, invalid, next;
} stats;

/* As qemu-img check: contiguity is judged within one L2 table. */
static void stats_table(qcow2_state *s, const uint8_t *t, uint64_t l1i, stats *st)
{
    uint64_t n = UINT64_C(1) << s->l2_bits;
    st->next = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t word, bitmap;
        qcow2_l2_entry_read(s, t, i, &word, &bitmap);
        if (!word && !bitmap)
            continue;
        qcow2_cinfo ci;
        if (qcow2_decode(s, (l1i << s->l2_bits) + i, word, bitmap, &ci, NULL) < 0) {
            st->invalid++;
            continue;
        }
        st->data += ci.alloc != 0 && !ci.compressed;
        st->zero += ci.zero != 0;
        if (ci.compressed) {
            /* As qemu counts them: allocated, and fragmented by nature. */
            st->allocated++;
            st->compressed++;
            st->fragmented++;
        } else if (ci.has_host) {
            st->allocated++;
            if (st->next && ci.host != st->next)
                st->fragmented++;
            st->next = ci.host + s->cluster_size;
        }
    }
}

/* End of the last cluster of the file with a non-zero refcount (as
 * qemu-img check, which looks at the clusters of the file). */
static int image_end(qcow2_state *s, uint64_t *end, vdk_error *err)
{
    *end = 0;
    for (uint64_t c = qcow2_size_to_clusters(s, s->file_size); c-- > 0;) {
        uint64_t rc;
        int r = qcow2_refcount_get(s, c, &rc, err);
        if (r < 0)
            return r;
        if (rc) {
            *end = (c + 1) << s->cluster_bits;
            return 0;
        }
    }
    return 0;
}

int qcow2_q_stats(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                  vdk_error *err)
{
    stats st;
    memset(&st, 0, sizeof st);
    offset_set seen = {0};
    for (uint64_t i = 0; i < s->l1_size; i++) {
        uint64_t off = s->l1[i] & QCOW2_OFFSET_MASK;
        uint8_t *t;
        /* A table listed twice (a damaged L1) is counted once. */
        if (!off || set_add(&seen, off) <= 0)
            continue;
        if (qcow2_l2_fetch(s, i, off, &t, NULL) < 0) {
            st.invalid++;
            continue;
        }
        st.l2_tables++;
        stats_table(s, t, i, &st);
        qcow2_l2_put(s, &t);
    }
    free(seen.slot);
    uint64_t end;
    int r = image_end(s, &end, err);
    if (r < 0)
        return r;
    vdk_emit_u64(e, "total_clusters", qcow2_size_to_clusters(s, s->size));
    vdk_emit_u64(e, "allocated_clusters", st.allocated);
    vdk_emit_u64(e, "fragmented_clusters", st.fragmented);
    vdk_emit_u64(e, "compressed_clusters", st.compressed);
    vdk_emit_u64(e, "data_clusters", st.data);
    vdk_emit_u64(e, "zero_clusters", st.zero);
    vdk_emit_u64(e, "l2_tables", st.l2_tables);
    vdk_emit_u64(e, "invalid_entries", st.invalid);
    vdk_emit_u64(e, "image_end_offset", end);
    vdk_emit_u64(e, "file_size", s->file_size);
    return 0;
}

/* ---------------------------------------------------------------- layout */

typedef struct layout {
    vdk_emitter *e;
    uint64_t max, n, budget;
} layout;

static void lay(layout *l, const char *what, uint64_t off, uint64_t len, const char *owner)
{
    if (!len)
        return;
    l->n++;
    if (l->n > l->max)
        return;
    vdk_emit_open(l->e, NULL);
    vdk_emit_str(l->e, "what", what);
    vdk_emit_u64(l->e, "offset", off);
    vdk_emit_u64(l->e, "length", len);
    if (owner)
        vdk_emit_str(l->e, "owner", owner);
    vdk_emit_close(l->e);
}

static int bitmap_lay(qcow2_state *s, uint64_t off, uint64_t len, void *ctx)
{
    lay(ctx, "bitmap structure", off, len, NULL);
    return 0;
}

/* The L2 tables of one L1 table, each once over all the L1 tables. */
static int lay_l2(qcow2_state *s, layout *l, int64_t snap, offset_set *seen, vdk_error *err)
{
    qcow2_l1view v;
    int r = qcow2_l1view_load(s, snap, &v, err);
    char owner[300];
    qcow2_owner_name(s, v.snap, owner, sizeof owner);
    if (r == 0 && v.n > l->budget) {
        l->n = l->max + 1; /* truncated */
        r = 1;
    }
    if (r == 0)
        l->budget -= v.n;
    for (uint64_t i = 0; r == 0 && i < v.n; i++) {
        uint64_t off = v.e[i] & QCOW2_OFFSET_MASK;
        int fresh = off ? set_add(seen, off) : 0;
        if (fresh < 0)
            r = vdk_fail(err, -ENOMEM, "out of memory");
        else if (fresh)
            lay(l, "L2 table", off, s->cluster_size, owner);
    }
    qcow2_l1view_free(&v);
    return r;
}

int qcow2_q_layout(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                   vdk_error *err)
{
    int64_t max = qcow2_arg(args, nargs, 0, 100000);
    layout l = {.e = e, .max = max < 0 ? 0 : (uint64_t)max, .budget = SCAN_BUDGET};
    char owner[300];
    vdk_emit_list(e, "structures");
    lay(&l, "header", 0, s->cluster_size, NULL);
    lay(&l, "L1 table", s->l1_offset, (uint64_t)s->l1_size * 8, "active");
    lay(&l, "refcount table", s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits, NULL);
    for (uint64_t ti = 0; ti < s->rt_size; ti++)
        if (s->rt[ti] & QCOW2_RT_OFFSET_MASK)
            lay(&l, "refcount block", s->rt[ti] & QCOW2_RT_OFFSET_MASK, s->cluster_size, NULL);
    lay(&l, "snapshot table", s->snapshots_offset, s->snapshots_size, NULL);
    for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++)
        lay(&l, "L1 table", s->snaps[i].l1_offset, (uint64_t)s->snaps[i].l1_size * 8,
            qcow2_owner_name(s, (int)i, owner, sizeof owner));
    if (s->has_bitmaps_ext && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        qcow2_bitmaps_walk(s, bitmap_lay, &l, NULL);
    offset_set seen = {0};
    int r = 0;
    for (int64_t i = -1; r == 0 && i < (int64_t)s->nb_snapshots; i++)
        r = lay_l2(s, &l, i, &seen, err);
    if (r > 0)
        r = 0; /* the budget ran out: truncated */
    free(seen.slot);
    vdk_emit_close(e);
    vdk_emit_u64(e, "count", l.n);
    vdk_emit_bool(e, "truncated", l.n > l.max);
    vdk_emit_u64(e, "file_size", s->file_size);
    vdk_emit_u64(e, "cluster_size", s->cluster_size);
    return r;
}
