/*
 * check-refs.c - comparing the counted references with the refcounts on
 * disk, and the COPIED flags with the refcounts the check leaves.
 *
 * Comparison (as qemu-img check): a cluster whose refcount exceeds its
 * references is leaked, one whose refcount is lower is a corruption, and a
 * referenced cluster with refcount 0 (no refcount block, or a block that
 * says 0, as lazy refcounts leave after a crash) means the refcount
 * structure must be rebuilt rather than patched. A repair plans the new
 * refcounts: set in place (leaks with -r leaks, everything with -r all), or
 * the rebuild.
 *
 * COPIED (active L1 and L2 entries only): set exactly when the refcount is
 * 1. The scan noted, per cluster, whether entries with and without the flag
 * reference it; only when those notes disagree with the final refcounts is
 * the exact pass run, which rereads the active L2 tables, counts and lists
 * each bad entry, and plans its fix.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-int.h"

/* ---------------------------------------------------------------- disk refcounts */

/* The refcount block of table index ti into c->buf (*have = false: none). */
static int load_block(qc_check *c, uint64_t ti, bool *have, vdk_error *err)
{
    qcow2_state *s = c->s;
    *have = false;
    if (ti >= s->rt_size)
        return 0;
    uint64_t off = s->rt[ti] & QCOW2_RT_OFFSET_MASK;
    if (!off)
        return 0;
    if (off & (s->cluster_size - 1))
        return -EIO;
    int r = qc_pread(c, c->rbbuf, s->cluster_size, off, err);
    *have = r == 0;
    return r;
}

int qc_disk_refcount(qc_check *c, uint64_t cluster, uint64_t *rc, vdk_error *err)
{
    bool have;
    *rc = 0;
    int r = load_block(c, cluster >> c->s->rb_bits, &have, err);
    if (r == 0 && have)
        *rc = qcow2_rb_get(c->s, c->rbbuf, cluster & ((UINT64_C(1) << c->s->rb_bits) - 1));
    return r;
}

/* ---------------------------------------------------------------- compare */

static int add_rcfix(qc_check *c, uint64_t cluster, uint64_t value, vdk_error *err)
{
    if (c->nrcfixes == c->caprcfixes) {
        size_t cap = c->caprcfixes ? 2 * c->caprcfixes : 64;
        qc_rcfix *f = realloc(c->rcfixes, cap * sizeof *f);
        if (!f)
            return vdk_fail(err, -ENOMEM, "out of memory");
        c->rcfixes = f;
        c->caprcfixes = cap;
    }
    c->rcfixes[c->nrcfixes++] = (qc_rcfix){cluster, value};
    return 0;
}

/* One mismatch: record it and plan its fix; *final is the refcount after. */
static int mismatch(qc_check *c, uint64_t k, uint64_t d, uint64_t ref, uint64_t *final,
                    vdk_error *err)
{
    bool leak = d > ref;
    bool fix = c->rebuild ? c->fix_errors : leak ? c->fix_leaks : c->fix_errors;
    const char *what = fix && !c->dry ? "Repairing" : leak ? "Leaked" : "ERROR";
    qc_problem(c, leak ? VDK_CHECK_LEAK : VDK_CHECK_REFCOUNT, fix,
               c->rebuild ? VDK_FIX_REBUILD : leak ? VDK_FIX_FREE : VDK_FIX_REFCOUNT,
               k << c->s->cluster_bits, 1, "%s cluster %llu refcount=%llu reference=%llu", what,
               (unsigned long long)k, (unsigned long long)d, (unsigned long long)ref);
    *final = fix ? ref : d;
    if (fix && !c->rebuild)
        return add_rcfix(c, k, ref, err);
    return 0;
}

/* The refcounts of the block in c->rbbuf for clusters [first, first+n), into d. */
static void decode_block(const qc_check *c, uint64_t n, uint64_t *d)
{
    const uint8_t *b = c->rbbuf;
    switch (c->s->refcount_order) {
    case 4:
        for (uint64_t i = 0; i < n; i++)
            d[i] = (uint64_t)b[2 * i] << 8 | b[2 * i + 1];
        break;
    case 3:
        for (uint64_t i = 0; i < n; i++)
            d[i] = b[i];
        break;
    default:
        for (uint64_t i = 0; i < n; i++)
            d[i] = qcow2_rb_get(c->s, b, i);
    }
}

/* One pass over the clusters; report says whether to record mismatches.
 * Returns the mismatches found (>= 0) or an error. */
static int64_t compare_pass(qc_check *c, bool report, uint64_t *d, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t per = UINT64_C(1) << s->rb_bits;
    int64_t found = 0;
    for (uint64_t ti = 0; ti * per < c->nb; ti++) {
        bool have;
        uint64_t first = ti * per, n = c->nb - first < per ? c->nb - first : per;
        int r = load_block(c, ti, &have, err);
        if (r < 0 && r != -EIO)
            return r;
        if (have)
            decode_block(c, n, d);
        else
            memset(d, 0, n * sizeof *d);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t k = first + i, ref = c->ref[k];
            if (r == -EIO) { /* an unaligned refcount block: a rebuild replaces it */
                bool rebuilt = c->rebuild && c->fix_errors;
                if (report && !rebuilt) {
                    c->check_errors++;
                    qc_problem(c, VDK_CHECK_IO, false, VDK_FIX_NONE, k << s->cluster_bits, 1,
                               "Can't get refcount for cluster %llu: Input/output error",
                               (unsigned long long)k);
                }
                if (rebuilt && ref == 1)
                    c->flags[k] |= QC_F_ONE;
                if (rebuilt && ref)
                    c->highest = k;
                continue;
            }
            if (!report) {
                found += d[i] != ref;
                if (d[i] != ref && d[i] == 0)
                    c->rebuild = true;
                if (d[i] || ref)
                    c->highest = k;
                if (d[i] == 1) /* final, unless the report pass says otherwise */
                    c->flags[k] |= QC_F_ONE;
                continue;
            }
            uint64_t final = d[i];
            if (d[i] != ref && (r = mismatch(c, k, d[i], ref, &final, err)) < 0)
                return r;
            if (c->rebuild && c->fix_errors)
                final = ref;
            c->flags[k] = (uint8_t)((c->flags[k] & ~QC_F_ONE) | (final == 1 ? QC_F_ONE : 0));
        }
    }
    return found;
}

/* A first pass finds whether anything differs (and whether a rebuild is
 * needed); only then does a second one report and plan. */
int qc_compare(qc_check *c, vdk_error *err)
{
    uint64_t *d = malloc(((size_t)1 << c->s->rb_bits) * sizeof *d);
    if (!d)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int64_t r = compare_pass(c, false, d, err);
    bool unreadable = false;
    for (uint64_t i = 0; r == 0 && i < c->s->rt_size && !unreadable; i++)
        unreadable = (c->s->rt[i] & QCOW2_RT_OFFSET_MASK) & (c->s->cluster_size - 1);
    if (r > 0 || unreadable)
        r = compare_pass(c, true, d, err);
    free(d);
    return r < 0 ? (int)r : 0;
}

/* ---------------------------------------------------------------- COPIED */

static bool rc_fixed(const qc_check *c, uint64_t k, uint64_t *v)
{
    size_t lo = 0, hi = c->nrcfixes;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->rcfixes[mid].cluster < k)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < c->nrcfixes && c->rcfixes[lo].cluster == k) {
        *v = c->rcfixes[lo].value;
        return true;
    }
    return false;
}

/* The refcount of cluster k once the planned fixes are made. */
static int final_refcount(qc_check *c, uint64_t k, uint64_t *v, vdk_error *err)
{
    if (k < c->nb && c->rebuild && c->fix_errors) {
        *v = c->ref[k];
        return 0;
    }
    if (rc_fixed(c, k, v))
        return 0;
    return qc_disk_refcount(c, k, v, err);
}

static bool hints_disagree(const qc_check *c)
{
    if (c->copied_slow)
        return true;
    for (uint64_t k = 0; k < c->nb; k++) {
        uint8_t f = c->flags[k];
        if (((f & QC_F_COPIED) && !(f & QC_F_ONE)) || ((f & QC_F_UNCOPIED) && (f & QC_F_ONE)))
            return true;
    }
    return false;
}

static int copied_entry(qc_check *c, uint64_t where, uint64_t w, uint64_t b, bool repair,
                        vdk_error *err)
{
    qcow2_state *s = c->s;
    bool compressed = w & QCOW2_OFLAG_COMPRESSED;
    bool zero_plain = (w & QCOW2_OFLAG_ZERO) && !s->ext_l2 && !(w & QCOW2_OFFSET_MASK);
    bool external = s->data_file != s->file;
    if (compressed || zero_plain || (!(w & QCOW2_OFFSET_MASK) && !(external && (w & QCOW2_OFLAG_COPIED))))
        return 0;
    uint64_t rc = 1;
    if (!external) {
        int r = final_refcount(c, (w & QCOW2_OFFSET_MASK) >> s->cluster_bits, &rc, err);
        if (r < 0)
            return 0; /* as qemu: no message, no count */
    }
    if ((rc == 1) == ((w & QCOW2_OFLAG_COPIED) != 0))
        return 0;
    qc_problem(c, VDK_CHECK_COPIED, repair, VDK_FIX_COPIED_FLAG, where, 1,
               "%s OFLAG_COPIED data cluster: l2_entry=%llx refcount=%llu",
               repair && !c->dry ? "Repairing" : "ERROR", (unsigned long long)w,
               (unsigned long long)rc);
    if (!repair)
        return 0;
    uint64_t nw = rc == 1 ? w | QCOW2_OFLAG_COPIED : w & ~QCOW2_OFLAG_COPIED;
    return qc_add_fix(c, where, nw, b, s->ext_l2 ? 16 : 8, rc == 1, err);
}

/* The active L2 table at l2 with the planned fixes applied, into c->buf. */
static int load_fixed_l2(qc_check *c, uint64_t l2, vdk_error *err)
{
    qcow2_state *s = c->s;
    int r = qc_pread(c, c->buf, s->cluster_size, l2, err);
    if (r < 0)
        return r;
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t j = 0; j < n; j++) {
        const qc_fix *f = qc_find_fix(c, l2 + (j << s->l2_entry_shift));
        if (!f)
            continue;
        uint8_t *e = c->buf + (j << s->l2_entry_shift);
        vdk_put_be64(e, f->word);
        if (f->len == 16)
            vdk_put_be64(e + 8, f->bitmap);
    }
    return 0;
}

static int copied_table(qc_check *c, uint32_t i, bool repair, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t e = s->l1[i], where = s->l1_offset + (uint64_t)i * 8;
    const qc_fix *f = qc_find_fix(c, where);
    if (f)
        e = f->word;
    uint64_t l2 = e & QCOW2_OFFSET_MASK, rc;
    if (!l2)
        return 0;
    if (final_refcount(c, l2 >> s->cluster_bits, &rc, err) == 0 &&
        (rc == 1) != ((e & QCOW2_OFLAG_COPIED) != 0)) {
        qc_problem(c, VDK_CHECK_COPIED, repair, VDK_FIX_COPIED_FLAG, where, 1,
                   "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%llx refcount=%llu",
                   repair && !c->dry ? "Repairing" : "ERROR", i, (unsigned long long)e,
                   (unsigned long long)rc);
        if (repair) {
            uint64_t ne = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
            int r = qc_add_fix(c, where, ne, 0, 8, rc == 1, err);
            if (r < 0)
                return r;
        }
    }
    int r = load_fixed_l2(c, l2, err);
    if (r < 0) {
        c->check_errors++;
        qc_problem(c, VDK_CHECK_IO, false, VDK_FIX_NONE, l2, 1,
                   "ERROR: Could not read L2 table: %s", vdk_strerror(r));
        return r;
    }
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t j = 0; j < n && r == 0; j++) {
        const uint8_t *p = c->buf + (j << s->l2_entry_shift);
        r = copied_entry(c, l2 + (j << s->l2_entry_shift), vdk_be64(p),
                         s->ext_l2 ? vdk_be64(p + 8) : 0, repair, err);
    }
    return r;
}

int qc_check_copied(qc_check *c, vdk_error *err)
{
    bool repair = c->fix_errors ||
                  (c->fix_leaks && !c->check_errors && !c->corruptions && !c->leaks);
    if (!hints_disagree(c))
        return 0;
    qc_sort_fixes(c);
    size_t before = c->nfixes;
    int r = 0;
    for (uint32_t i = 0; i < c->s->l1_size && r == 0; i++)
        r = copied_table(c, i, repair, err);
    if (c->nfixes != before)
        qc_sort_fixes(c);
    return r;
}
