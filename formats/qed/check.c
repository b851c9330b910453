/*
 * check.c - QED's consistency scan and its report.
 *
 * The scan follows the spec's invariants: every table and data cluster
 * offset is a multiple of the cluster size, past the header and inside the
 * file; no cluster is referenced twice; clusters nothing references are
 * leaks. It marks clusters in two bitmaps (metadata, data). A plain check
 * visits the tables in qemu-img's order (each L2 table right after its L1
 * entry, one notion of "used"), so that its counts match qemu-img check's
 * (corruptions, leaks, allocated and fragmented clusters). A repair plans
 * in a safer order: all metadata first (header, L1, every L2 table), then
 * the data clusters, so a data entry that points into a table is the one
 * blamed and cleared, never the table.
 *
 * Repair plans before it writes: the scan decides every fix and records it
 * in the problem list (a dry run stops there); repair.c then applies the
 * same decisions in a second, identical pass, and reclaims leaked space.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check-int.h"

/* Files with more clusters than this are refused (bitmaps of 512 MiB). */
#define MAX_CHECK_CLUSTERS (UINT64_C(1) << 32)

/* ---------------------------------------------------------------- bitmaps */

int qed_bm_init(qed_bitmap *b, uint64_t nbits, vdk_error *err)
{
    b->bytes = (size_t)(((nbits + 63) / 64) * 8);
    if (b->bytes == 0)
        b->bytes = 8;
    b->w = mmap(NULL, b->bytes, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (b->w == MAP_FAILED) {
        b->w = NULL;
        return vdk_fail(err, -ENOMEM, "qed: out of memory for the check bitmaps");
    }
    return 0;
}

void qed_bm_free(qed_bitmap *b)
{
    if (b->w)
        munmap(b->w, b->bytes);
    b->w = NULL;
}

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
    static const char *const names[] = {"none", "clear", "copy", "truncate", "compact"};
    return fix >= 0 && fix <= QED_FIX_COMPACT ? names[fix] : "?";
}

static void add_problem(qed_scan *sc, int kind, int fix, uint64_t entry_off, uint64_t value,
                        uint64_t count, uint64_t guest)
{
    qed_check_report *rep = sc->rep;
    if (sc->apply || !rep)
        return;
    if (kind != QED_PROB_LEAK && kind != QED_PROB_L2_UNREADABLE) {
        if (fix == QED_FIX_NONE)
            sc->unfixed += count;
        if (fix != QED_FIX_NONE && !(sc->repair & QED_REPAIR_DRY_RUN))
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

static bool fixing_errors(const qed_scan *sc) { return sc->repair & QED_REPAIR_ERRORS; }

/* ---------------------------------------------------------------- L1 entries */

/* Whether [off, off + len) is a misplaced table or cluster. */
static bool misplaced(const qed_scan *sc, uint64_t off, uint64_t len)
{
    const qed_state *s = sc->s;
    return (off & (s->cluster_size - 1)) || off < qed_header_end(s) ||
           off > sc->file_bytes || len > sc->file_bytes - off;
}

static void mark_meta(qed_scan *sc, uint64_t off, uint64_t n)
{
    uint64_t c = off >> sc->s->cluster_bits;
    for (uint64_t i = 0; i < n; i++)
        qed_bm_set(&sc->meta, c + i);
    if (off + (n << sc->s->cluster_bits) > sc->end)
        sc->end = off + (n << sc->s->cluster_bits);
}

/* Clusters of [off, off + n clusters) already in use. */
static uint64_t used_before(const qed_scan *sc, uint64_t off, uint64_t n)
{
    uint64_t c = off >> sc->s->cluster_bits, hits = 0;
    for (uint64_t i = 0; i < n; i++)
        hits += qed_bm_test(&sc->meta, c + i) ||
                (sc->qemu_order && qed_bm_test(&sc->data, c + i));
    return hits;
}

/* Classify L1 entry i; marks its table and sets its good bit when valid. */
static void scan_l1_entry(qed_scan *sc, uint64_t i)
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
        uint64_t hits = used_before(sc, e, s->table_size);
        if (!hits) {
            mark_meta(sc, e, s->table_size);
            qed_bm_set(&sc->good, i);
            if (sc->rep && !sc->apply)
                sc->rep->l2_tables++;
            return;
        }
        add_problem(sc, QED_PROB_L2_OVERLAP, fix, where, e, hits, guest);
        if (fix == QED_FIX_NONE)
            mark_meta(sc, e, s->table_size); /* as qemu-img check counts */
    }
    if (sc->apply && fix == QED_FIX_CLEAR)
        qed_l1_set(s, i, 0);
}

/* ---------------------------------------------------------------- L2 entries */

/* Copy the cluster at src to the next copy slot (apply pass). */
static int copy_cluster(qed_scan *sc, uint64_t src, uint64_t *dst, vdk_error *err)
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
static int classify_data(qed_scan *sc, uint64_t e, int *fix)
{
    const qed_state *s = sc->s;
    int clear = fixing_errors(sc) ? QED_FIX_CLEAR : QED_FIX_NONE;
    *fix = clear;
    if (misplaced(sc, e, s->cluster_size))
        return QED_PROB_DATA_INVALID;
    uint64_t c = e >> s->cluster_bits;
    if (qed_bm_test(&sc->meta, c))
        return QED_PROB_DATA_OVERLAP;
    if (qed_bm_test(&sc->data, c)) {
        if (clear == QED_FIX_CLEAR && sc->copies < sc->copy_budget) {
            *fix = QED_FIX_COPY;
            sc->copies++;
        }
        return QED_PROB_DATA_SHARED;
    }
    qed_bm_set(&sc->data, c);
    if (e + s->cluster_size > sc->end)
        sc->end = e + s->cluster_size;
    return 0;
}

/* Scan (or fix) the entries of one table; sets *dirty when it changed. */
static int scan_entries(qed_scan *sc, uint64_t l1i, uint8_t *t, bool *dirty, vdk_error *err)
{
    qed_state *s = sc->s;
    uint64_t toff = vdk_le64(&s->l1[l1i]), last = 0;
    for (uint64_t j = 0; j < s->table_entries; j++) {
        uint64_t e = vdk_le64(t + j * 8);
        if (e <= QED_ENTRY_ZERO)
            continue;
        if (sc->rep && !sc->apply) {
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

/* Scan the table of a good L1 entry. A table that cannot be read is a
 * check error (the scan goes on), except when repairing. */
static int scan_table(qed_scan *sc, uint64_t i, vdk_error *err)
{
    qed_state *s = sc->s;
    uint64_t toff = vdk_le64(&s->l1[i]);
    void *t;
    int r = vdk_cache_get(s->l2_cache, toff, &t, err);
    if (r < 0) {
        bool fixing = (sc->repair & (QED_REPAIR_LEAKS | QED_REPAIR_ERRORS)) &&
                      !(sc->repair & QED_REPAIR_DRY_RUN);
        if (sc->apply || fixing || !sc->rep)
            return r; /* never repair from a partial scan */
        vdk_error_clear(err);
        sc->rep->check_errors++;
        add_problem(sc, QED_PROB_L2_UNREADABLE, QED_FIX_NONE, s->l1_offset + i * 8, toff, 1,
                    i << (s->cluster_bits + s->table_bits));
        return 0;
    }
    bool dirty = false;
    r = scan_entries(sc, i, t, &dirty, err);
    if (dirty)
        vdk_cache_mark_dirty(s->l2_cache, t);
    vdk_cache_put(s->l2_cache, &t);
    return r;
}

int qed_scan_run(qed_scan *sc, vdk_error *err)
{
    qed_state *s = sc->s;
    mark_meta(sc, 0, s->header_size);
    mark_meta(sc, s->l1_offset, s->table_size);
    int r = 0;
    for (uint64_t i = 0; i < s->table_entries && r == 0; i++) {
        scan_l1_entry(sc, i);
        if (sc->qemu_order && qed_bm_test(&sc->good, i))
            r = scan_table(sc, i, err);
    }
    for (uint64_t i = 0; i < s->table_entries && r == 0 && !sc->qemu_order; i++)
        if (qed_bm_test(&sc->good, i))
            r = scan_table(sc, i, err);
    return r;
}

/* ---------------------------------------------------------------- leaks */

/* Record runs of leaked clusters with the fix the plan makes. */
static void find_leaks(qed_scan *sc, bool reclaim)
{
    qed_state *s = sc->s;
    uint64_t c = s->header_size, n = sc->nclusters;
    while (c < n) {
        if (qed_bm_test(&sc->meta, c) || qed_bm_test(&sc->data, c)) {
            c++;
            continue;
        }
        uint64_t start = c;
        while (c < n && !qed_bm_test(&sc->meta, c) && !qed_bm_test(&sc->data, c))
            c++;
        int fix = !reclaim ? QED_FIX_NONE : c == n ? QED_FIX_TRUNCATE : QED_FIX_COMPACT;
        sc->rep->leaks += c - start;
        add_problem(sc, QED_PROB_LEAK, fix, 0, start << s->cluster_bits, c - start,
                    UINT64_MAX);
    }
}

/* ---------------------------------------------------------------- driver */

void qed_scan_free(qed_scan *sc)
{
    qed_bm_free(&sc->meta);
    qed_bm_free(&sc->data);
    qed_bm_free(&sc->good);
    free(sc->buf);
    sc->buf = NULL;
}

int qed_scan_init(qed_scan *sc, qed_state *s, unsigned repair, qed_check_report *rep,
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
    if (rep)
        rep->file_size = size;
    sc->nclusters = size >> s->cluster_bits;
    sc->file_bytes = sc->nclusters << s->cluster_bits;
    if (sc->nclusters > MAX_CHECK_CLUSTERS)
        return vdk_fail(err, VDK_ETOOBIG, "qed: the file has too many clusters (%llu) to check",
                        (unsigned long long)sc->nclusters);
    sc->copy_budget = sc->nclusters;
    if ((r = qed_bm_init(&sc->meta, sc->nclusters, err)) < 0 ||
        (r = qed_bm_init(&sc->data, sc->nclusters, err)) < 0 ||
        (r = qed_bm_init(&sc->good, s->table_entries, err)) < 0)
        return r;
    return 0;
}

/* Apply the plan and reclaim leaked space (lock held, idle). */
static int repair(qed_scan *sc, bool reclaim, vdk_error *err)
{
    qed_state *s = sc->s;
    qed_check_report *rep = sc->rep;
    int r = 0;
    if (rep->corruptions_fixed)
        r = qed_repair_apply(sc, err);
    if (r == 0 && reclaim && (rep->leaks || rep->corruptions_fixed))
        r = qed_reclaim(s, rep, sc->repair & QED_REPAIR_QUICK ? QED_OPEN_MOVE_BUDGET : UINT64_MAX,
                        err);
    if (r == 0 && rep->corruptions == 0) {
        s->unchecked = false;
        r = qed_clear_need_check(s, err);
    }
    return r;
}

int qed_check_locked(qed_state *s, unsigned repair_flags, qed_check_report *rep,
                     vdk_error *err)
{
    memset(rep, 0, sizeof *rep);
    rep->need_check = (s->features & QED_F_NEED_CHECK) != 0;
    rep->total_clusters = (s->image_size + s->cluster_size - 1) >> s->cluster_bits;
    bool dry = repair_flags & QED_REPAIR_DRY_RUN;
    bool fixing = (repair_flags & (QED_REPAIR_LEAKS | QED_REPAIR_ERRORS)) != 0;
    if (fixing && !dry && !s->writable)
        return vdk_fail(err, -EROFS, "qed: cannot repair an image opened read-only");
    qed_scan sc;
    int r = qed_scan_init(&sc, s, repair_flags, rep, err);
    if (r == 0) {
        sc.qemu_order = !fixing;
        r = qed_scan_run(&sc, err);
    }
    bool reclaim = (repair_flags & QED_REPAIR_LEAKS) && sc.unfixed == 0;
    if (r == 0 && rep->check_errors == 0)
        find_leaks(&sc, reclaim);
    rep->image_end_offset = sc.end;
    rep->copies = sc.copies;
    if (r == 0 && fixing && !dry && rep->check_errors == 0)
        r = repair(&sc, reclaim, err);
    qed_scan_free(&sc);
    return r;
}

int qed_check_image(vdk_image *img, unsigned repair_flags, qed_check_report *rep,
                    vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    pthread_mutex_lock(&s->lock);
    qed_wait_idle(s);
    int r = s->writable ? qed_meta_flush(s, err) : 0;
    if (r == 0)
        r = qed_check_locked(s, repair_flags, rep, err);
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
