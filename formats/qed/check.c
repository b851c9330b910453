/*
 * check.c - QED's consistency scan and repair.
 *
 * The scan follows the spec's invariants: every table and data cluster
 * offset is a multiple of the cluster size, past the header and inside the
 * file; no cluster is referenced twice; clusters nothing references are
 * leaks. It marks clusters in two bitmaps (metadata, data): first the
 * header, the L1 table and every valid L2 table, then the data clusters of
 * those tables, so a data entry that points into metadata is caught however
 * the tables are ordered. Each bad reference becomes a problem record; the
 * counts follow qemu-img check (corruptions, leaks, allocated and
 * fragmented clusters).
 *
 * Repair plans before it writes: the scan decides every fix, then an
 * identical second pass applies them. Fixes, in the order they are made
 * durable, each step flushed before the next:
 *   1. the need-check bit is set (a crash during repair repairs again);
 *   2. a data cluster referenced a second time is copied to a new cluster
 *      (reusing leaked space at the end of the file first), up to as many
 *      clusters as the file holds; past that budget the entry is cleared;
 *   3. L2 entries that are invalid or point into metadata are cleared, and
 *      copied entries repointed (L2 tables written after the copies);
 *   4. L1 entries that are invalid or overlap other metadata are cleared;
 *   5. leaked clusters at the end of the file are cut off; leaked clusters
 *      in the middle (QED has no free list to reuse them) get their host
 *      space released and stay counted as leaks;
 *   6. the need-check bit is cleared when nothing is left to fix.
 * Leaks are only reclaimed when no corruption remains, so an entry that is
 * still bad can never come to alias a cluster appended later.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "qed.h"

/* Files with more clusters than this are refused (bitmaps of 512 MiB). */
#define MAX_CHECK_CLUSTERS (UINT64_C(1) << 32)

typedef struct bitmap {
    uint64_t *w;
    size_t bytes;
} bitmap;

typedef struct scan {
    qed_state *s;
    qed_check_report *rep;
    unsigned repair;
    bool apply;           /* second pass: make the fixes */
    uint64_t file_bytes;  /* whole clusters of the file, in bytes */
    uint64_t nclusters;
    bitmap meta, data;
    bitmap good;          /* L1 entries whose table is scanned */
    uint64_t copy_budget; /* clusters repair may copy */
    uint64_t copies;
    uint64_t copy_next;   /* apply: where the next copy goes */
    uint64_t end;         /* end of the last referenced cluster */
    uint64_t unfixed;     /* corruptions the plan leaves alone */
    uint8_t *buf;         /* apply: one cluster for copies */
} scan;

/* ---------------------------------------------------------------- bitmaps */

static int bm_init(bitmap *b, uint64_t nbits, vdk_error *err)
{
    b->bytes = (size_t)(((nbits + 63) / 64) * 8);
    if (b->bytes == 0)
        b->bytes = 8;
    /* Anonymous and unreserved: untouched pages cost no memory. */
    b->w = mmap(NULL, b->bytes, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (b->w == MAP_FAILED) {
        b->w = NULL;
        return vdk_fail(err, -ENOMEM, "qed: out of memory for the check bitmaps");
    }
    return 0;
}

static void bm_free(bitmap *b)
{
    if (b->w)
        munmap(b->w, b->bytes);
    b->w = NULL;
}

static void bm_clear(bitmap *b)
{
    /* Drop the pages: they read as zeros again. */
    madvise(b->w, b->bytes, MADV_DONTNEED);
}

static bool bm_test(const bitmap *b, uint64_t i) { return b->w[i / 64] >> (i % 64) & 1; }
static void bm_set(bitmap *b, uint64_t i) { b->w[i / 64] |= UINT64_C(1) << (i % 64); }

/* ---------------------------------------------------------------- records */

const char *qed_problem_name(int kind)
{
    switch (kind) {
    case QED_PROB_L1_INVALID: return "invalid L2 table offset";
    case QED_PROB_L2_OVERLAP: return "L2 table overlaps other metadata";
    case QED_PROB_L2_UNREADABLE: return "L2 table could not be read";
    case QED_PROB_DATA_INVALID: return "invalid data cluster offset";
    case QED_PROB_DATA_OVERLAP: return "data cluster overlaps metadata";
    case QED_PROB_DATA_SHARED: return "data cluster referenced twice";
    case QED_PROB_LEAK: return "leaked clusters";
    default: return "?";
    }
}

const char *qed_fix_name(int fix)
{
    static const char *const names[] = {"none", "clear", "copy", "truncate", "punch"};
    return fix >= 0 && fix <= QED_FIX_PUNCH ? names[fix] : "?";
}

static void add_problem(scan *sc, int kind, int fix, uint64_t entry_off, uint64_t value,
                        uint64_t count, uint64_t guest)
{
    qed_check_report *rep = sc->rep;
    if (sc->apply)
        return;
    if (kind != QED_PROB_LEAK && kind != QED_PROB_L2_UNREADABLE) {
        bool fixed = fix != QED_FIX_NONE && !(sc->repair & QED_REPAIR_DRY_RUN);
        if (fix == QED_FIX_NONE)
            sc->unfixed += count;
        if (fixed)
            rep->corruptions_fixed += count;
        else
            rep->corruptions += count;
    }
    if (rep->nproblems >= QED_MAX_PROBLEMS) {
        rep->problems_dropped++;
        return;
    }
    if (rep->nproblems % 64 == 0) {
        qed_problem *p = realloc(rep->problems, (rep->nproblems + 64) * sizeof *p);
        if (!p) {
            rep->problems_dropped++;
            return;
        }
        rep->problems = p;
    }
    rep->problems[rep->nproblems++] = (qed_problem){kind, fix, entry_off, value, count, guest};
}

static bool fixing_errors(const scan *sc) { return sc->repair & QED_REPAIR_ERRORS; }

/* ---------------------------------------------------------------- pass 1: L1 */

/* Whether [off, off + len) is a misplaced table or cluster. */
static bool misplaced(const scan *sc, uint64_t off, uint64_t len)
{
    const qed_state *s = sc->s;
    return (off & (s->cluster_size - 1)) || off < qed_header_end(s) ||
           off > sc->file_bytes || len > sc->file_bytes - off;
}

static void mark_meta(scan *sc, uint64_t off, uint64_t n)
{
    uint64_t c = off >> sc->s->cluster_bits;
    for (uint64_t i = 0; i < n; i++)
        bm_set(&sc->meta, c + i);
    if (off + (n << sc->s->cluster_bits) > sc->end)
        sc->end = off + (n << sc->s->cluster_bits);
}

static uint64_t meta_overlap(const scan *sc, uint64_t off, uint64_t n)
{
    uint64_t c = off >> sc->s->cluster_bits, hits = 0;
    for (uint64_t i = 0; i < n; i++)
        hits += bm_test(&sc->meta, c + i);
    return hits;
}

static void scan_l1_entry(scan *sc, uint64_t i)
{
    qed_state *s = sc->s;
    uint64_t e = vdk_le64(&s->l1[i]);
    uint64_t where = s->l1_offset + i * 8, guest = i << (s->cluster_bits + s->table_bits);
    int fix = fixing_errors(sc) ? QED_FIX_CLEAR : QED_FIX_NONE;
    if (e == 0)
        return;
    if (misplaced(sc, e, s->table_bytes)) {
        add_problem(sc, QED_PROB_L1_INVALID, fix, where, e, 1, guest);
    } else {
        uint64_t hits = meta_overlap(sc, e, s->table_size);
        if (hits) {
            add_problem(sc, QED_PROB_L2_OVERLAP, fix, where, e, hits, guest);
            if (fix == QED_FIX_NONE)
                mark_meta(sc, e, s->table_size); /* as qemu-img check counts */
        } else {
            mark_meta(sc, e, s->table_size);
            bm_set(&sc->good, i);
            if (!sc->apply)
                sc->rep->l2_tables++;
            return;
        }
    }
    if (sc->apply && fix == QED_FIX_CLEAR)
        qed_l1_set(s, i, 0);
}

static void scan_l1(scan *sc)
{
    qed_state *s = sc->s;
    mark_meta(sc, 0, s->header_size);
    mark_meta(sc, s->l1_offset, s->table_size);
    for (uint64_t i = 0; i < s->table_entries; i++)
        scan_l1_entry(sc, i);
}

/* ---------------------------------------------------------------- pass 2: L2 */

/* Copy the cluster at src to the next copy slot (apply pass). */
static int copy_cluster(scan *sc, uint64_t src, uint64_t *dst, vdk_error *err)
{
    qed_state *s = sc->s;
    *dst = sc->copy_next;
    int r = vdk_file_pread(s->file, sc->buf, s->cluster_size, src, err);
    if (r == 0)
        r = vdk_file_pwrite(s->file, sc->buf, s->cluster_size, *dst, err);
    if (r == 0) {
        sc->copy_next += s->cluster_size;
        vdk_cache_flush_before_write(s->l2_cache);
    }
    return r;
}

/* Decide about data entry e; returns the problem kind (0 = fine). */
static int classify_data(scan *sc, uint64_t e, int *fix)
{
    const qed_state *s = sc->s;
    int clear = fixing_errors(sc) ? QED_FIX_CLEAR : QED_FIX_NONE;
    *fix = clear;
    if (misplaced(sc, e, s->cluster_size))
        return QED_PROB_DATA_INVALID;
    uint64_t c = e >> s->cluster_bits;
    if (bm_test(&sc->meta, c))
        return QED_PROB_DATA_OVERLAP;
    if (bm_test(&sc->data, c)) {
        if (clear == QED_FIX_CLEAR && sc->copies < sc->copy_budget) {
            *fix = QED_FIX_COPY;
            sc->copies++;
        }
        return QED_PROB_DATA_SHARED;
    }
    bm_set(&sc->data, c);
    if (e + s->cluster_size > sc->end)
        sc->end = e + s->cluster_size;
    return 0;
}

/* Scan (or fix) the entries of one table; sets *dirty when it changed. */
static int scan_entries(scan *sc, uint64_t l1i, uint8_t *t, bool *dirty, vdk_error *err)
{
    qed_state *s = sc->s;
    uint64_t toff = vdk_le64(&s->l1[l1i]), last = 0;
    for (uint64_t j = 0; j < s->table_entries; j++) {
        uint64_t e = vdk_le64(t + j * 8);
        if (e <= QED_ENTRY_ZERO)
            continue;
        if (!sc->apply) {
            sc->rep->allocated_clusters++;
            if (last && last + s->cluster_size != e)
                sc->rep->fragmented_clusters++;
        }
        last = e;
        int fix, kind = classify_data(sc, e, &fix);
        if (!kind)
            continue;
        uint64_t guest = ((l1i << s->table_bits) + j) << s->cluster_bits;
        add_problem(sc, kind, fix, toff + j * 8, e, 1, guest);
        if (!sc->apply || fix == QED_FIX_NONE)
            continue;
        uint64_t v = 0;
        if (fix == QED_FIX_COPY) {
            int r = copy_cluster(sc, e, &v, err);
            if (r < 0)
                return r;
        }
        vdk_put_le64(t + j * 8, v);
        *dirty = true;
    }
    return 0;
}

static int scan_l2(scan *sc, vdk_error *err)
{
    qed_state *s = sc->s;
    for (uint64_t i = 0; i < s->table_entries; i++) {
        if (!bm_test(&sc->good, i))
            continue;
        uint64_t toff = vdk_le64(&s->l1[i]);
        void *t;
        int r = vdk_cache_get(s->l2_cache, toff, &t, err);
        if (r < 0) {
            bool fixing = sc->repair & ~QED_REPAIR_DRY_RUN;
            if (sc->apply || (fixing && !(sc->repair & QED_REPAIR_DRY_RUN)))
                return r; /* never repair from a partial scan */
            vdk_error_clear(err);
            sc->rep->check_errors++;
            add_problem(sc, QED_PROB_L2_UNREADABLE, QED_FIX_NONE, s->l1_offset + i * 8, toff,
                        1, i << (s->cluster_bits + s->table_bits));
            continue;
        }
        bool dirty = false;
        r = scan_entries(sc, i, t, &dirty, err);
        if (dirty)
            vdk_cache_mark_dirty(s->l2_cache, t);
        vdk_cache_put(s->l2_cache, &t);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---------------------------------------------------------------- leaks */

/* Record runs of leaked clusters; returns the first cluster of the run
 * that reaches the end of the file (nclusters if none). */
static uint64_t find_leaks(scan *sc, bool reclaim)
{
    qed_state *s = sc->s;
    uint64_t c = s->header_size, n = sc->nclusters, tail = n;
    while (c < n) {
        if (bm_test(&sc->meta, c) || bm_test(&sc->data, c)) {
            c++;
            continue;
        }
        uint64_t start = c;
        while (c < n && !bm_test(&sc->meta, c) && !bm_test(&sc->data, c))
            c++;
        bool at_end = c == n;
        if (at_end)
            tail = start;
        int fix = !reclaim ? QED_FIX_NONE : at_end ? QED_FIX_TRUNCATE : QED_FIX_PUNCH;
        sc->rep->leaks += c - start;
        add_problem(sc, QED_PROB_LEAK, fix, 0, start << s->cluster_bits, c - start,
                    UINT64_MAX);
    }
    return tail;
}

/* Cut off the leaked tail (past the copies) and release middle leaks. */
static int reclaim_leaks(scan *sc, uint64_t tail, vdk_error *err)
{
    qed_state *s = sc->s;
    uint64_t copy_end = sc->copy_next, tail_bytes = tail << s->cluster_bits;
    int r = 0;
    uint64_t size;
    r = vdk_file_size(s->file, &size, err);
    if (r == 0 && copy_end < size)
        r = vdk_file_truncate(s->file, copy_end, err);
    for (size_t i = 0; r == 0 && i < sc->rep->nproblems; i++) {
        const qed_problem *p = &sc->rep->problems[i];
        if (p->kind == QED_PROB_LEAK && p->fix == QED_FIX_PUNCH) {
            r = vdk_file_discard(s->file, p->value, p->count << s->cluster_bits, err);
            if (r == -ENOTSUP || r == -EOPNOTSUPP) {
                vdk_error_clear(err);
                r = 0;
            }
        }
    }
    if (r == 0) {
        uint64_t fixed = sc->nclusters - tail;
        sc->rep->leaks -= fixed;
        sc->rep->leaks_fixed += fixed;
        s->file_end = copy_end > tail_bytes ? copy_end : tail_bytes;
    }
    return r;
}

/* ---------------------------------------------------------------- driver */

static void scan_free(scan *sc)
{
    bm_free(&sc->meta);
    bm_free(&sc->data);
    bm_free(&sc->good);
    free(sc->buf);
}

static int scan_init(scan *sc, qed_state *s, unsigned repair, qed_check_report *rep,
                     vdk_error *err)
{
    memset(sc, 0, sizeof *sc);
    sc->s = s;
    sc->rep = rep;
    sc->repair = repair;
    uint64_t size;
    int r = vdk_file_size(s->file, &size, err);
    if (r < 0)
        return r;
    rep->file_size = size;
    sc->nclusters = size >> s->cluster_bits;
    sc->file_bytes = sc->nclusters << s->cluster_bits;
    if (sc->nclusters > MAX_CHECK_CLUSTERS)
        return vdk_fail(err, VDK_ETOOBIG,
                        "qed: the file has too many clusters (%llu) to check",
                        (unsigned long long)sc->nclusters);
    sc->copy_budget = sc->nclusters;
    if ((r = bm_init(&sc->meta, sc->nclusters, err)) < 0 ||
        (r = bm_init(&sc->data, sc->nclusters, err)) < 0 ||
        (r = bm_init(&sc->good, s->table_entries, err)) < 0)
        return r;
    return 0;
}

/* The second, identical pass that makes the planned fixes. */
static int apply_fixes(scan *sc, bool reclaim, uint64_t tail, vdk_error *err)
{
    qed_state *s = sc->s;
    int r = qed_set_need_check(s, err);
    if (r < 0)
        return r;
    sc->buf = vdk_alloc_aligned(s->cluster_size, false);
    if (!sc->buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    bm_clear(&sc->meta);
    bm_clear(&sc->data);
    bm_clear(&sc->good);
    sc->apply = true;
    sc->copies = 0;
    uint64_t base = reclaim ? tail << s->cluster_bits : sc->file_bytes;
    if (!reclaim && s->file_end > base)
        base = s->file_end;
    sc->copy_next = base;
    scan_l1(sc);
    r = scan_l2(sc, err);
    if (sc->copy_next > s->file_end)
        s->file_end = sc->copy_next;
    if (r == 0)
        r = qed_meta_flush(s, err);
    if (r == 0 && reclaim)
        r = reclaim_leaks(sc, tail, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    return r < 0 ? qed_set_broken(s, r) : 0;
}

/* Whether the plan changes anything. */
static bool plan_writes(const scan *sc, bool reclaim)
{
    for (size_t i = 0; i < sc->rep->nproblems; i++) {
        int fix = sc->rep->problems[i].fix;
        if (fix == QED_FIX_CLEAR || fix == QED_FIX_COPY || (reclaim && fix != QED_FIX_NONE))
            return true;
    }
    return sc->rep->problems_dropped > 0;
}

int qed_check_locked(qed_state *s, unsigned repair, qed_check_report *rep,
                     vdk_error *err)
{
    memset(rep, 0, sizeof *rep);
    rep->need_check = (s->features & QED_F_NEED_CHECK) != 0;
    rep->total_clusters = (s->image_size + s->cluster_size - 1) >> s->cluster_bits;
    bool dry = repair & QED_REPAIR_DRY_RUN, fixing = repair & ~QED_REPAIR_DRY_RUN;
    if (fixing && !dry && !s->writable)
        return vdk_fail(err, -EROFS, "qed: cannot repair an image opened read-only");
    scan sc;
    int r = scan_init(&sc, s, repair, rep, err);
    if (r == 0) {
        scan_l1(&sc);
        r = scan_l2(&sc, err);
    }
    bool reclaim = (repair & QED_REPAIR_LEAKS) && sc.unfixed == 0;
    uint64_t tail = sc.nclusters;
    if (r == 0 && rep->check_errors == 0)
        tail = find_leaks(&sc, reclaim);
    rep->image_end_offset = sc.end;
    rep->copies = sc.copies;
    if (r == 0 && fixing && !dry && rep->check_errors == 0) {
        if (plan_writes(&sc, reclaim))
            r = apply_fixes(&sc, reclaim, tail, err);
        if (sc.copy_next > rep->image_end_offset)
            rep->image_end_offset = sc.copy_next;
        if (r == 0 && rep->corruptions == 0) {
            s->unchecked = false;
            r = qed_clear_need_check(s, err);
        }
    }
    scan_free(&sc);
    return r;
}

int qed_check_image(vdk_image *img, unsigned repair, qed_check_report *rep,
                    vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    pthread_mutex_lock(&s->lock);
    qed_wait_idle(s);
    int r = s->writable ? qed_meta_flush(s, err) : 0;
    if (r == 0)
        r = qed_check_locked(s, repair, rep, err);
    else
        memset(rep, 0, sizeof *rep);
    pthread_mutex_unlock(&s->lock);
    return r;
}

void qed_check_report_free(qed_check_report *rep)
{
    free(rep->problems);
    rep->problems = NULL;
    rep->nproblems = 0;
}
