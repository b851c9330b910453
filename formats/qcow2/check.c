/*
 * check.c - qcow2's check driver slot: `vdk check` and `check -r leaks|all`.
 *
 * The steps follow qemu-img check, so that its counts and messages can be
 * compared line for line: the snapshot table (check-snap.c), every
 * reference counted into an in-memory array (check-scan.c: header, active
 * L1 and its L2 tables, snapshot L1 tables, snapshot table, refcount table,
 * bitmaps, refcount blocks), the comparison with the refcounts on disk and
 * the COPIED flags (check-refs.c). Only metadata is read, never a data
 * cluster, so the cost grows with the metadata.
 *
 * A repair first makes its whole plan while it scans (entries to rewrite,
 * refcounts to set, or a rebuild of the refcount structure, snapshot entries
 * to drop), then check-apply.c makes it durable in an order that a crash
 * cannot make worse, and finally the in-memory state of the open image is
 * reloaded from what is on disk.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check-int.h"

/* ---------------------------------------------------------------- helpers */

void qc_problem(qc_check *c, int kind, bool fixed, int fix, uint64_t offset, uint64_t count,
                const char *fmt, ...)
{
    bool done = fixed && !c->dry;
    if (kind == VDK_CHECK_LEAK) {
        if (done)
            c->leaks_fixed += count;
        else
            c->leaks += count;
    } else if (kind != VDK_CHECK_IO) {
        if (done)
            c->corruptions_fixed += count;
        else
            c->corruptions += count;
    }
    if (!c->rep)
        return;
    char msg[sizeof c->rep->problems[0].message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    vdk_check_add(c->rep, kind, fixed ? fix : VDK_FIX_NONE, offset, count, "%s", msg);
}

int qc_add_fix(qc_check *c, uint64_t where, uint64_t word, uint64_t bitmap, unsigned len,
               bool late, vdk_error *err)
{
    if (c->nfixes == c->capfixes) {
        size_t cap = c->capfixes ? 2 * c->capfixes : 64;
        qc_fix *f = realloc(c->fixes, cap * sizeof *f);
        if (!f)
            return vdk_fail(err, -ENOMEM, "out of memory");
        c->fixes = f;
        c->capfixes = cap;
    }
    c->fixes[c->nfixes] = (qc_fix){where, word, bitmap, (uint8_t)len, late, (uint32_t)c->nfixes};
    c->nfixes++;
    return 0;
}

static int fix_cmp(const void *a, const void *b)
{
    const qc_fix *x = a, *y = b;
    if (x->where != y->where)
        return x->where < y->where ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sort by offset; of several fixes of one entry the last made wins (each
 * was computed from the entry as the earlier ones left it). */
void qc_sort_fixes(qc_check *c)
{
    c->nsorted = c->nfixes;
    if (c->nfixes < 2)
        return;
    qsort(c->fixes, c->nfixes, sizeof *c->fixes, fix_cmp);
    size_t out = 0;
    for (size_t i = 0; i < c->nfixes; i++) {
        if (out && c->fixes[out - 1].where == c->fixes[i].where) {
            bool late = c->fixes[out - 1].late || c->fixes[i].late;
            c->fixes[out - 1] = c->fixes[i];
            c->fixes[out - 1].late = late;
        } else {
            c->fixes[out++] = c->fixes[i];
        }
    }
    c->nfixes = c->nsorted = out;
}

/* The fix of the entry at where, in the sorted fixes (NULL: none). */
const qc_fix *qc_find_fix(const qc_check *c, uint64_t where)
{
    size_t lo = 0, hi = c->nsorted;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->fixes[mid].where < where)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < c->nsorted && c->fixes[lo].where == where ? &c->fixes[lo] : NULL;
}

int qc_pread(qc_check *c, void *buf, uint64_t len, uint64_t off, vdk_error *err)
{
    uint64_t in = 0;
    if (off < c->file_size)
        in = c->file_size - off < len ? c->file_size - off : len;
    if (in < len)
        memset((uint8_t *)buf + in, 0, len - in);
    return in ? vdk_file_pread(c->s->file, buf, in, off, err) : 0;
}

/* ---------------------------------------------------------------- set up */

static int check_init(qc_check *c, qcow2_state *s, unsigned mode, vdk_check_report *rep,
                      vdk_error *err)
{
    memset(c, 0, sizeof *c);
    c->s = s;
    c->rep = rep;
    c->mode = mode;
    c->fix_leaks = mode & (VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS);
    c->fix_errors = mode & VDK_CHECK_FIX_ERRORS;
    c->dry = mode & VDK_CHECK_DRY_RUN;
    c->fixing = c->fix_leaks && !c->dry;
    c->plan = c->fix_errors;
    int r = vdk_file_size(s->file, &c->file_size, err);
    if (r < 0)
        return r;
    c->nb = qcow2_size_to_clusters(s, c->file_size);
    if (c->nb > QC_MAX_CLUSTERS) {
        c->check_errors++;
        return vdk_fail(err, -EFBIG, "qcow2: the file has too many clusters (%llu) to check",
                        (unsigned long long)c->nb);
    }
    c->ref = calloc(c->nb + 1, sizeof *c->ref);
    c->flags = calloc(c->nb + 1, 1);
    c->buf = malloc(s->cluster_size);
    c->rbbuf = malloc(s->cluster_size);
    if (!c->ref || !c->flags || !c->buf || !c->rbbuf)
        return vdk_fail(err, -ENOMEM, "qcow2: out of memory for the check");
    return 0;
}

static void check_free(qc_check *c)
{
    free(c->ref);
    free(c->flags);
    free(c->buf);
    free(c->rbbuf);
    free(c->l1buf);
    free(c->fixes);
    free(c->rcfixes);
    qc_free_snapshots(c);
}

static void fill_report(qc_check *c, vdk_check_report *rep)
{
    rep->check_errors += c->check_errors;
    rep->corruptions += c->corruptions;
    rep->leaks += c->leaks;
    rep->corruptions_fixed += c->corruptions_fixed;
    rep->leaks_fixed += c->leaks_fixed;
    rep->rebuild = c->rebuild;
    rep->total_clusters = qcow2_size_to_clusters(c->s, c->s->size);
    rep->image_end_offset = (c->highest + 1) << c->s->cluster_bits;
}

/* ---------------------------------------------------------------- the slot */

/* Quiesce: no operation in flight, metadata written. Lock held. */
static int quiesce(qcow2_state *s, vdk_error *err)
{
    while (s->ops)
        pthread_cond_wait(&s->cond, &s->lock);
    return s->writable ? qcow2_meta_flush(s, err) : 0;
}

static int run_check(qc_check *c, vdk_error *err)
{
    int r = qc_read_snapshots(c, err);
    if (r == 0)
        r = qc_count_references(c, err);
    if (r == 0)
        r = qc_compare(c, err);
    if (r == 0 && c->rebuild && c->fix_leaks && !c->fix_errors) {
        c->check_errors++;
        qc_problem(c, VDK_CHECK_IO, false, VDK_FIX_NONE, 0, 1,
                   "ERROR need to rebuild refcount structures");
        return vdk_fail(err, -EIO, "qcow2: the refcount structure needs a rebuild "
                                   "(check -r all)");
    }
    if (r == 0)
        r = qc_check_copied(c, err);
    return r;
}

int qcow2_check(vdk_image *img, unsigned mode, vdk_check_report *rep, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    qc_check c;
    pthread_mutex_lock(&s->lock);
    int r = quiesce(s, err);
    if (r == 0)
        r = check_init(&c, s, mode, rep, err);
    else {
        memset(&c, 0, sizeof c);
        c.s = s;
    }
    if (r == 0)
        r = run_check(&c, err);
    if (r == 0 && c.fixing)
        r = qc_apply(&c, err);
    fill_report(&c, rep);
    if (r < 0 && rep->check_errors == 0)
        rep->check_errors = 1;
    check_free(&c);
    pthread_mutex_unlock(&s->lock);
    return r;
}
