/*
 * repair.c - making a QED repair durable, in an order a crash cannot make
 * worse (the need-check bit stays set throughout, so an interrupted repair
 * is simply repaired again):
 *
 *  1. qed_repair_apply: the scan runs again with the plan's decisions and
 *     makes them: a data cluster referenced a second time is copied to the
 *     end of the file and the entry repointed (the copy is flushed before
 *     the table that points at it is written); invalid entries are cleared;
 *     then tables, then the L1 table, each flushed.
 *  2. qed_reclaim: on the now consistent image, leaked space is given back.
 *     Clusters are moved down into leaked clusters, highest first (data
 *     clusters one by one, L2 tables into a free run of their size): the
 *     copies are flushed, then the L2 entries repointed and flushed, then
 *     moved tables copied and flushed, then the L1 entries repointed and
 *     flushed. Only then is the file cut after the last used cluster.
 *     Leaked clusters that nothing could fill (below a table that found no
 *     room, or past the copying budget: the repair on open moves at most
 *     QED_OPEN_MOVE_BUDGET bytes) stay leaked, their host space released.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check-int.h"

/* ---------------------------------------------------------------- fixes */

int qed_repair_apply(qed_scan *sc, vdk_error *err)
{
    qed_state *s = sc->s;
    int r = qed_set_need_check(s, err);
    if (r < 0)
        return r;
    sc->buf = vdk_alloc_aligned(s->cluster_size, false);
    if (!sc->buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    /* Drop the marks: the pages read as zeros again. */
    madvise(sc->meta.w, sc->meta.bytes, MADV_DONTNEED);
    madvise(sc->data.w, sc->data.bytes, MADV_DONTNEED);
    madvise(sc->good.w, sc->good.bytes, MADV_DONTNEED);
    sc->apply = true;
    sc->copies = 0;
    sc->copy_next = s->file_end > sc->file_bytes ? s->file_end : sc->file_bytes;
    r = qed_scan_run(sc, err);
    if (sc->copy_next > s->file_end)
        s->file_end = sc->copy_next;
    if (r == 0)
        r = qed_meta_flush(s, err);
    if (r == 0)
        vdk_cache_drop_clean(s->l2_cache); /* cleared tables must not linger */
    return r < 0 ? qed_set_broken(s, r) : 0;
}

/* ---------------------------------------------------------------- compaction plan */

typedef struct qmove {
    uint64_t from, to; /* cluster indexes */
} qmove;

typedef struct moves {
    qmove *v;
    size_t n, cap;
} moves;

static int moves_add(moves *m, uint64_t from, uint64_t to, vdk_error *err)
{
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 64;
        qmove *v = realloc(m->v, cap * sizeof *v);
        if (!v)
            return vdk_fail(err, -ENOMEM, "out of memory");
        m->v = v;
        m->cap = cap;
    }
    m->v[m->n++] = (qmove){from, to};
    return 0;
}

static int cmp_from(const void *a, const void *b)
{
    uint64_t x = ((const qmove *)a)->from, y = ((const qmove *)b)->from;
    return x < y ? -1 : x > y;
}

/* The move of cluster c, or NULL (m sorted by from). */
static const qmove *moves_find(const moves *m, uint64_t c)
{
    qmove key = {c, 0};
    return m->n ? bsearch(&key, m->v, m->n, sizeof key, cmp_from) : NULL;
}

typedef struct compaction {
    qed_scan sc;          /* the consistent image's marks */
    uint64_t budget;      /* clusters that may still be moved */
    uint64_t *tables;     /* start clusters of the L2 tables, sorted */
    size_t ntables;
    moves data, tabs;
    uint64_t end;         /* clusters kept */
} compaction;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int list_tables(compaction *cp, vdk_error *err)
{
    qed_state *s = cp->sc.s;
    cp->tables = malloc((s->table_entries ? s->table_entries : 1) * sizeof *cp->tables);
    if (!cp->tables)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; i < s->table_entries; i++)
        if (qed_bm_test(&cp->sc.good, i))
            cp->tables[cp->ntables++] = vdk_le64(&s->l1[i]) >> s->cluster_bits;
    if (cp->ntables)
        qsort(cp->tables, cp->ntables, sizeof *cp->tables, cmp_u64);
    return 0;
}

/* The start of the L2 table holding cluster c, or UINT64_MAX. */
static uint64_t table_of(const compaction *cp, uint64_t c)
{
    size_t lo = 0, hi = cp->ntables;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp->tables[mid] <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || c >= cp->tables[lo - 1] + cp->sc.s->table_size)
        return UINT64_MAX;
    return cp->tables[lo - 1];
}

static bool used(const compaction *cp, uint64_t c)
{
    return qed_bm_test(&cp->sc.meta, c) || qed_bm_test(&cp->sc.data, c);
}

/* First run of n free clusters from lo that ends at or before limit. */
static uint64_t free_run(const compaction *cp, uint64_t lo, uint64_t limit, uint64_t n)
{
    uint64_t run = 0;
    for (uint64_t c = lo; c < limit; c++) {
        run = used(cp, c) ? 0 : run + 1;
        if (run == n)
            return c + 1 - n;
    }
    return UINT64_MAX;
}

/* Move a table [t, t + n) to [to, to + n) in the marks. */
static void move_table_marks(compaction *cp, uint64_t t, uint64_t to, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        qed_bm_reset(&cp->sc.meta, t + i);
        qed_bm_set(&cp->sc.meta, to + i);
    }
}

/* Decide the moves: highest used cluster into the lowest free one. */
static int plan_moves(compaction *cp, vdk_error *err)
{
    qed_state *s = cp->sc.s;
    uint64_t lo = s->header_size, hi = cp->sc.nclusters;
    int r = 0;
    for (;;) {
        while (hi > 0 && !used(cp, hi - 1))
            hi--;
        while (lo < hi && used(cp, lo))
            lo++;
        if (hi == 0 || lo >= hi - 1)
            break;
        uint64_t top = hi - 1;
        if (cp->budget < s->table_size)
            break; /* enough copying for this repair */
        if (qed_bm_test(&cp->sc.data, top)) {
            cp->budget--;
            if ((r = moves_add(&cp->data, top, lo, err)) < 0)
                return r;
            qed_bm_reset(&cp->sc.data, top);
            qed_bm_set(&cp->sc.data, lo);
            continue;
        }
        uint64_t t = table_of(cp, top), to;
        if (t == UINT64_MAX || (to = free_run(cp, lo, t, s->table_size)) == UINT64_MAX)
            break; /* the header, the L1 table, or no room for this table */
        if ((r = moves_add(&cp->tabs, t, to, err)) < 0)
            return r;
        cp->budget -= s->table_size;
        move_table_marks(cp, t, to, s->table_size);
        hi = t;
    }
    cp->end = hi;
    if (cp->data.n)
        qsort(cp->data.v, cp->data.n, sizeof *cp->data.v, cmp_from);
    if (cp->tabs.n)
        qsort(cp->tabs.v, cp->tabs.n, sizeof *cp->tabs.v, cmp_from);
    return 0;
}

/* ---------------------------------------------------------------- compaction steps */

static int copy_clusters(qed_state *s, uint64_t from, uint64_t to, uint64_t n, uint8_t *buf,
                         vdk_error *err)
{
    int r = 0;
    for (uint64_t i = 0; i < n && r == 0; i++) {
        r = vdk_file_pread(s->file, buf, s->cluster_size, (from + i) << s->cluster_bits, err);
        if (r == 0)
            r = vdk_file_pwrite(s->file, buf, s->cluster_size, (to + i) << s->cluster_bits,
                                err);
    }
    return r;
}

/* Point the L2 entries of moved data clusters at their new place. */
static int repoint_data(compaction *cp, vdk_error *err)
{
    qed_state *s = cp->sc.s;
    for (uint64_t i = 0; i < s->table_entries; i++) {
        if (!qed_bm_test(&cp->sc.good, i))
            continue;
        void *v;
        int r = vdk_cache_get(s->l2_cache, vdk_le64(&s->l1[i]), &v, err);
        if (r < 0)
            return r;
        uint8_t *t = v;
        bool dirty = false;
        for (uint64_t j = 0; j < s->table_entries; j++) {
            uint64_t e = vdk_le64(t + j * 8);
            const qmove *m = e > QED_ENTRY_ZERO ? moves_find(&cp->data, e >> s->cluster_bits)
                                                : NULL;
            if (m) {
                vdk_put_le64(t + j * 8, m->to << s->cluster_bits);
                dirty = true;
            }
        }
        if (dirty)
            vdk_cache_mark_dirty(s->l2_cache, t);
        vdk_cache_put(s->l2_cache, &v);
    }
    vdk_cache_flush_before_write(s->l2_cache);
    return vdk_cache_flush(s->l2_cache, err);
}

/* Copy moved tables (their repointed contents are flushed), then the L1. */
static int move_tables(compaction *cp, uint8_t *buf, vdk_error *err)
{
    qed_state *s = cp->sc.s;
    if (cp->tabs.n == 0)
        return 0;
    int r = 0;
    for (size_t k = 0; k < cp->tabs.n && r == 0; k++)
        r = copy_clusters(s, cp->tabs.v[k].from, cp->tabs.v[k].to, s->table_size, buf, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    for (uint64_t i = 0; i < s->table_entries && r == 0; i++) {
        uint64_t e = vdk_le64(&s->l1[i]);
        const qmove *m = qed_bm_test(&cp->sc.good, i) ? moves_find(&cp->tabs, e >> s->cluster_bits)
                                                      : NULL;
        if (m)
            qed_l1_set(s, i, m->to << s->cluster_bits);
    }
    if (r == 0)
        r = qed_l1_write(s, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    vdk_cache_drop_clean(s->l2_cache);
    return r;
}

/* Release the host space of the leaked clusters left below the end;
 * returns how many there are. */
static uint64_t punch_holes(compaction *cp)
{
    qed_state *s = cp->sc.s;
    uint64_t left = 0, c = s->header_size;
    while (c < cp->end) {
        if (used(cp, c)) {
            c++;
            continue;
        }
        uint64_t start = c;
        while (c < cp->end && !used(cp, c))
            c++;
        left += c - start;
        vdk_file_discard(s->file, start << s->cluster_bits, (c - start) << s->cluster_bits,
                         NULL);
    }
    return left;
}

static int compact(compaction *cp, uint8_t *buf, vdk_error *err)
{
    qed_state *s = cp->sc.s;
    int r = 0;
    for (size_t k = 0; k < cp->data.n && r == 0; k++)
        r = copy_clusters(s, cp->data.v[k].from, cp->data.v[k].to, 1, buf, err);
    if (r == 0 && cp->data.n) {
        r = vdk_file_flush(s->file, err);
        if (r == 0)
            r = repoint_data(cp, err);
    }
    if (r == 0)
        r = move_tables(cp, buf, err);
    uint64_t size;
    if (r == 0)
        r = vdk_file_size(s->file, &size, err);
    if (r == 0 && size > cp->end << s->cluster_bits)
        r = vdk_file_truncate(s->file, cp->end << s->cluster_bits, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r == 0)
        s->file_end = cp->end << s->cluster_bits;
    return r;
}

int qed_reclaim(qed_state *s, qed_check_report *rep, uint64_t max_move, vdk_error *err)
{
    int r = qed_set_need_check(s, err);
    if (r < 0)
        return r;
    vdk_cache_drop_clean(s->l2_cache);
    compaction cp;
    memset(&cp, 0, sizeof cp);
    cp.budget = max_move >> s->cluster_bits;
    uint8_t *buf = vdk_alloc_aligned(s->cluster_size, false);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    r = qed_scan_init(&cp.sc, s, 0, NULL, err);
    if (r == 0)
        r = qed_scan_run(&cp.sc, err);
    if (r == 0)
        r = list_tables(&cp, err);
    if (r == 0)
        r = plan_moves(&cp, err);
    if (r == 0)
        r = compact(&cp, buf, err);
    if (r == 0) {
        uint64_t left = punch_holes(&cp);
        rep->leaks_fixed += rep->leaks > left ? rep->leaks - left : 0;
        rep->leaks = left;
        rep->image_end_offset = cp.end << s->cluster_bits;
    }
    qed_scan_free(&cp.sc);
    free(cp.tables);
    free(cp.data.v);
    free(cp.tabs.v);
    free(buf);
    return r < 0 ? qed_set_broken(s, r) : 0;
}
