/*
 * check-scan.c - counting every reference of a qcow2 image into the check's
 * in-memory array, and judging each L1 and L2 entry on the way, in
 * qemu-img check's order and with its messages: header, active L1 table and
 * its L2 tables (with the allocation statistics), snapshot L1 tables, the
 * snapshot table, the refcount table, bitmaps, then the refcount blocks.
 *
 * A reference past the end of the file by a cluster or more is not counted
 * (a corruption). When a repair is planned (VDK_CHECK_FIX_ERRORS), a bad
 * entry is planned to be cleared instead, and not counted either: an L1
 * entry that is unaligned, out of the file, has reserved bits or points at
 * fixed metadata (header, L1 tables, refcount structures, snapshot table);
 * an L2 entry that is unaligned, out of the file, has reserved bits, points
 * at metadata, or is a bad compressed descriptor. A cleared entry reads as
 * zeros (version 3) or as unallocated (version 2).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-int.h"

/* ---------------------------------------------------------------- counting */

/* Make the arrays cover cluster k. */
static int grow(qc_check *c, uint64_t k, vdk_error *err)
{
    if (k < c->nb)
        return 0;
    uint64_t n = k + 1;
    uint32_t *ref = realloc(c->ref, (n + 1) * sizeof *ref);
    if (ref)
        c->ref = ref;
    uint8_t *fl = ref ? realloc(c->flags, n + 1) : NULL;
    if (!ref || !fl)
        return vdk_fail(err, -ENOMEM, "qcow2: out of memory for the check");
    c->flags = fl;
    memset(c->ref + c->nb, 0, (n + 1 - c->nb) * sizeof *ref);
    memset(c->flags + c->nb, 0, n + 1 - c->nb);
    c->nb = n;
    return 0;
}

/* Whether [off, off+len) ends less than a cluster past the end of the file
 * (the last cluster may be partly written). */
static bool in_file(const qc_check *c, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    if (end < off || off >= QCOW2_MAX_HOST_OFFSET)
        return false;
    return end <= c->file_size || end - c->file_size < c->s->cluster_size;
}

/* Count a reference to [off, off+len); false when it lies out of the file. */
static int inc(qc_check *c, uint64_t off, uint64_t len, bool *counted, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t k0 = off >> s->cluster_bits;
    if (!counted && len == s->cluster_size && !(off & (len - 1)) && k0 < c->nb &&
        c->ref[k0] < s->refcount_max && c->ref[k0] < UINT32_MAX && off < c->file_size) {
        c->ref[k0]++; /* the common case: one whole cluster inside the file */
        return 0;
    }
    if (counted)
        *counted = false;
    if (len == 0)
        return 0;
    if (!in_file(c, off, len)) {
        qc_problem(c, VDK_CHECK_OUT_OF_BOUNDS, false, VDK_FIX_NONE, off, 1,
                   "ERROR: counting reference for region exceeding the end of the file by "
                   "one cluster or more: offset 0x%llx size 0x%llx",
                   (unsigned long long)off, (unsigned long long)len);
        return 0;
    }
    uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    int r = grow(c, last, err);
    if (r < 0) {
        c->check_errors++;
        return r;
    }
    for (uint64_t k = first; k <= last; k++) {
        if (c->ref[k] >= s->refcount_max || c->ref[k] == UINT32_MAX) {
            qc_problem(c, VDK_CHECK_REFCOUNT, false, VDK_FIX_NONE, k << s->cluster_bits, 1,
                       "ERROR: overflow cluster offset=0x%llx",
                       (unsigned long long)(k << s->cluster_bits));
            continue;
        }
        c->ref[k]++;
    }
    if (counted)
        *counted = true;
    return 0;
}

void qc_cleared_entry(const qc_check *c, uint64_t *word, uint64_t *bitmap)
{
    const qcow2_state *s = c->s;
    *bitmap = 0;
    if (s->ext_l2) {
        *word = 0;
        *bitmap = QCOW2_BITMAP_ALL_ZERO;
    } else {
        *word = s->version >= 3 ? QCOW2_OFLAG_ZERO : 0;
    }
}

static bool is_meta(const qc_check *c, uint64_t off, uint8_t mask)
{
    uint64_t k = off >> c->s->cluster_bits;
    return k < c->nb && (c->flags[k] & mask);
}

/* ---------------------------------------------------------------- L2 entries */

typedef struct l2ctx {
    uint64_t l2_off;
    bool active;
    uint64_t next; /* next contiguous host offset (fragmentation) */
} l2ctx;

/* Plan clearing L2 entry i (the problem is recorded by the caller). */
static int clear_entry(qc_check *c, const l2ctx *x, uint64_t i, vdk_error *err)
{
    uint64_t w, b;
    qc_cleared_entry(c, &w, &b);
    unsigned len = c->s->ext_l2 ? 16 : 8;
    return qc_add_fix(c, x->l2_off + (i << c->s->l2_entry_shift), w, b, len, false, err);
}

static void note_copied(qc_check *c, uint64_t host, uint64_t word)
{
    uint64_t k = host >> c->s->cluster_bits;
    if (k >= c->nb) {
        c->copied_slow = true;
        return;
    }
    c->flags[k] |= (word & QCOW2_OFLAG_COPIED) ? QC_F_COPIED : QC_F_UNCOPIED;
}

static int compressed_entry(qc_check *c, l2ctx *x, uint64_t i, uint64_t w, uint64_t b,
                            vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t where = x->l2_off + (i << s->l2_entry_shift);
    uint64_t coff = w & s->coffset_mask;
    uint64_t csize = (((w >> s->csize_shift) & s->csize_mask) + 1) * 512 - (coff & 511);
    bool bad_copied = w & QCOW2_OFLAG_COPIED;
    if (bad_copied)
        qc_problem(c, VDK_CHECK_COPIED, c->plan, VDK_FIX_COPIED_FLAG, where, 1,
                   "%s: coffset=0x%llx: copied flag must never be set for compressed clusters",
                   c->plan && !c->dry ? "Repairing" : "ERROR", (unsigned long long)coff);
    if (s->data_file != s->file || (s->ext_l2 && b)) {
        qc_problem(c, VDK_CHECK_COMPRESSED, c->plan, VDK_FIX_CLEAR_ENTRY, where, 1,
                   "ERROR compressed cluster %llu with %s, entry=0x%llx",
                   (unsigned long long)i,
                   s->data_file != s->file ? "data file" : "non-zero subcluster allocation bitmap",
                   (unsigned long long)w);
        return c->plan ? clear_entry(c, x, i, err) : 0;
    }
    if (c->plan && (!in_file(c, coff, csize) || is_meta(c, coff, QC_F_META | QC_F_L2))) {
        qc_problem(c, VDK_CHECK_COMPRESSED, true, VDK_FIX_CLEAR_ENTRY, where, 1,
                   "Repairing compressed cluster descriptor 0x%llx: data at 0x%llx+0x%llx "
                   "lies %s",
                   (unsigned long long)w, (unsigned long long)coff, (unsigned long long)csize,
                   in_file(c, coff, csize) ? "in metadata" : "past the end of the file");
        return clear_entry(c, x, i, err);
    }
    int r = inc(c, coff, csize, NULL, err);
    if (r == 0 && c->plan && bad_copied)
        r = qc_add_fix(c, where, w & ~QCOW2_OFLAG_COPIED, b, 8, false, err);
    if (x->active && c->rep) {
        c->rep->allocated_clusters++;
        c->rep->compressed_clusters++;
        c->rep->fragmented_clusters++;
    }
    return r;
}

/* A standard entry with a host offset (data, or preallocated zeros). */
static int host_entry(qc_check *c, l2ctx *x, uint64_t i, uint64_t w, uint64_t b,
                      vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t where = x->l2_off + (i << s->l2_entry_shift), off = w & QCOW2_OFFSET_MASK;
    bool has_data = s->ext_l2 ? (b & QC_BITMAP_ALLOC) != 0 : !(w & QCOW2_OFLAG_ZERO);
    bool plan_fix = c->plan;
    if (s->ext_l2 && ((b >> 32) & b)) {
        qc_problem(c, VDK_CHECK_OTHER, plan_fix, VDK_FIX_CLEAR_ENTRY, off, 1,
                   "ERROR offset=%llx: Allocated cluster has corrupted subcluster allocation "
                   "bitmap",
                   (unsigned long long)off);
        if (plan_fix) { /* allocated wins over zero: the data stays readable */
            b &= QC_BITMAP_ALLOC;
            int r = qc_add_fix(c, where, w, b, 16, false, err);
            if (r < 0)
                return r;
        }
    }
    if (off & (s->cluster_size - 1)) {
        qc_problem(c, VDK_CHECK_UNALIGNED, plan_fix, VDK_FIX_CLEAR_ENTRY, where, 1,
                   "%s offset=%llx: %s is not properly aligned; L2 entry corrupted.",
                   plan_fix && !c->dry ? "Repairing" : "ERROR", (unsigned long long)off,
                   has_data ? "Data cluster" : "Preallocated cluster");
        if (plan_fix)
            return clear_entry(c, x, i, err);
    } else if (plan_fix && (!in_file(c, off, s->cluster_size) ||
                            is_meta(c, off, QC_F_META | QC_F_L2))) {
        bool oob = !in_file(c, off, s->cluster_size);
        qc_problem(c, oob ? VDK_CHECK_OUT_OF_BOUNDS : VDK_CHECK_OVERLAP, true,
                   VDK_FIX_CLEAR_ENTRY, where, 1,
                   "Repairing L2 entry 0x%llx: cluster at 0x%llx %s", (unsigned long long)w,
                   (unsigned long long)off,
                   oob ? "lies past the end of the file" : "overlaps metadata");
        return clear_entry(c, x, i, err);
    }
    if (x->active && c->rep) {
        c->rep->allocated_clusters++;
        if (x->next && off != x->next)
            c->rep->fragmented_clusters++;
        x->next = off + s->cluster_size;
    }
    if (s->data_file != s->file)
        return 0;
    if (x->active)
        note_copied(c, off, w);
    return inc(c, off, s->cluster_size, NULL, err);
}

static int scan_entry(qc_check *c, l2ctx *x, uint64_t i, uint64_t w, uint64_t b,
                      vdk_error *err)
{
    qcow2_state *s = c->s;
    uint64_t where = x->l2_off + (i << s->l2_entry_shift);
    bool compressed = w & QCOW2_OFLAG_COMPRESSED;
    if (!compressed && (w & QC_L2_RESERVED)) {
        qc_problem(c, VDK_CHECK_RESERVED, c->plan, VDK_FIX_CLEAR_ENTRY, where, 1,
                   "%s found l2 entry with reserved bits set: %llx",
                   c->plan && !c->dry ? "Repairing" : "ERROR", (unsigned long long)w);
        if (c->plan)
            return clear_entry(c, x, i, err);
    }
    if (compressed)
        return compressed_entry(c, x, i, w, b, err);
    bool zero_plain = (w & QCOW2_OFLAG_ZERO) && !s->ext_l2 && !(w & QCOW2_OFFSET_MASK);
    bool external = s->data_file != s->file && (w & QCOW2_OFLAG_COPIED);
    if (zero_plain)
        return 0;
    if (!(w & QCOW2_OFFSET_MASK) && !external) {
        if (s->ext_l2 && (b & QC_BITMAP_ALLOC)) {
            qc_problem(c, VDK_CHECK_OTHER, c->plan, VDK_FIX_CLEAR_ENTRY, where, 1,
                       "ERROR: Unallocated cluster has non-zero subcluster allocation map");
            if (c->plan)
                return qc_add_fix(c, where, w, b & ~QC_BITMAP_ALLOC, 16, false, err);
        }
        return 0;
    }
    return host_entry(c, x, i, w, b, err);
}

static bool all_zero(const uint8_t *p, size_t len)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        acc |= v;
    }
    return acc == 0;
}

static int scan_l2(qc_check *c, uint64_t l2_off, bool active, vdk_error *err)
{
    qcow2_state *s = c->s;
    int r = qc_pread(c, c->buf, s->cluster_size, l2_off, err);
    if (r < 0) {
        c->check_errors++;
        qc_problem(c, VDK_CHECK_IO, false, VDK_FIX_NONE, l2_off, 1,
                   "ERROR: I/O error in check_refcounts_l2");
        return r;
    }
    l2ctx x = {.l2_off = l2_off, .active = active};
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t i = 0; i < n && r == 0; i++) {
        if ((i & 7) == 0 && i + 8 <= n && all_zero(c->buf + (i << s->l2_entry_shift),
                                                   8 << s->l2_entry_shift)) {
            i += 7; /* eight unallocated entries: most of a sparse image */
            continue;
        }
        const uint8_t *e = c->buf + (i << s->l2_entry_shift);
        uint64_t w, b = 0;
        memcpy(&w, e, 8);
        if (s->ext_l2)
            memcpy(&b, e + 8, 8);
        if (!w && !b)
            continue; /* unallocated: most entries of a sparse image */
        r = scan_entry(c, &x, i, vdk_be64(&w), vdk_be64(&b), err);
    }
    return r;
}

/* ---------------------------------------------------------------- L1 tables */

/* A repair clears L1 entries that cannot point at an L2 table. */
static bool bad_l1_entry(const qc_check *c, uint64_t e, const char **why)
{
    uint64_t off = e & QCOW2_OFFSET_MASK;
    *why = (e & QC_L1_RESERVED)                   ? "has reserved bits set"
           : (off & (c->s->cluster_size - 1))      ? "is not cluster aligned"
           : !in_file(c, off, c->s->cluster_size) ? "lies past the end of the file"
           : is_meta(c, off, QC_F_META)           ? "overlaps other metadata"
                                                  : NULL;
    return *why != NULL;
}

static int load_l1(qc_check *c, uint64_t off, uint32_t size, bool active, uint64_t **out,
                   vdk_error *err)
{
    if (active) {
        *out = c->s->l1;
        return 0;
    }
    free(c->l1buf);
    c->l1buf = malloc((size_t)size * 8);
    if (!c->l1buf) {
        c->check_errors++;
        return vdk_fail(err, -ENOMEM, "out of memory");
    }
    int r = qc_pread(c, c->l1buf, (uint64_t)size * 8, off, err);
    if (r < 0) {
        c->check_errors++;
        qc_problem(c, VDK_CHECK_IO, false, VDK_FIX_NONE, off, 1,
                   "ERROR: I/O error in check_refcounts_l1");
        return r;
    }
    uint64_t *t = (uint64_t *)c->l1buf;
    for (uint32_t i = 0; i < size; i++)
        t[i] = vdk_be64(&t[i]);
    *out = t;
    return 0;
}

/* Planning pass: mark the L2 tables the kept L1 entries point at, and plan
 * clearing the entries that cannot. */
static int plan_l1(qc_check *c, uint64_t off, uint32_t size, bool active, vdk_error *err)
{
    uint64_t *t;
    int r = load_l1(c, off, size, active, &t, err);
    for (uint32_t i = 0; r == 0 && i < size; i++) {
        const char *why;
        if (!t[i])
            continue;
        if (bad_l1_entry(c, t[i], &why)) {
            qc_problem(c, VDK_CHECK_OUT_OF_BOUNDS, true, VDK_FIX_CLEAR_ENTRY, off + i * 8, 1,
                       "Repairing L1 entry %u of the %s L1 table: 0x%llx %s", i,
                       active ? "active" : "snapshot", (unsigned long long)t[i], why);
            r = qc_add_fix(c, off + (uint64_t)i * 8, 0, 0, 8, false, err);
            continue;
        }
        uint64_t k = (t[i] & QCOW2_OFFSET_MASK) >> c->s->cluster_bits;
        if ((r = grow(c, k, err)) == 0)
            c->flags[k] |= QC_F_L2;
    }
    return r;
}

static int scan_l1(qc_check *c, uint64_t off, uint32_t size, bool active, vdk_error *err)
{
    qcow2_state *s = c->s;
    if (!size)
        return 0;
    int r = inc(c, off, (uint64_t)size * 8, NULL, err);
    uint64_t *t;
    /* Entries past the end of the file read as zeros: reference nothing. */
    if (!active && !in_file(c, off, (uint64_t)size * 8))
        size = off < c->file_size ? (uint32_t)((c->file_size - off) / 8) : 0;
    if (r == 0 && size)
        r = load_l1(c, off, size, active, &t, err);
    for (uint32_t i = 0; r == 0 && size && i < size; i++) {
        uint64_t e = t[i], l2 = e & QCOW2_OFFSET_MASK;
        if (!e || (c->plan && qc_find_fix(c, off + (uint64_t)i * 8)))
            continue;
        if (e & QC_L1_RESERVED)
            qc_problem(c, VDK_CHECK_RESERVED, false, VDK_FIX_NONE, off + i * 8, 1,
                       "ERROR found L1 entry with reserved bits set: %llx", (unsigned long long)e);
        r = inc(c, l2, s->cluster_size, NULL, err);
        if (r == 0 && (l2 & (s->cluster_size - 1)))
            qc_problem(c, VDK_CHECK_UNALIGNED, false, VDK_FIX_NONE, off + i * 8, 1,
                       "ERROR l2_offset=%llx: Table is not cluster aligned; L1 entry corrupted",
                       (unsigned long long)l2);
        if (r == 0 && active)
            note_copied(c, l2, e);
        if (r == 0)
            r = scan_l2(c, l2, active, err);
    }
    return r;
}

/* ---------------------------------------------------------------- snapshots */

/* A snapshot whose L1 table cannot be scanned: reported; a repair drops it. */
static void judge_snapshot(qc_check *c, qc_snap *sn)
{
    const char *verb = c->plan && !c->dry ? "Repairing" : "ERROR";
    if (sn->l1_offset & (c->s->cluster_size - 1)) {
        qc_problem(c, VDK_CHECK_SNAPSHOT, c->plan, VDK_FIX_SNAPSHOT_TABLE, sn->entry_offset, 1,
                   "%s snapshot %s (%s) l1_offset=%#llx: L1 table is not cluster aligned; "
                   "snapshot table entry corrupted",
                   verb, sn->id, sn->name, (unsigned long long)sn->l1_offset);
        sn->bad_l1 = true;
    } else if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8) {
        qc_problem(c, VDK_CHECK_SNAPSHOT, c->plan, VDK_FIX_SNAPSHOT_TABLE, sn->entry_offset, 1,
                   "%s snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table "
                   "entry corrupted",
                   verb, sn->id, sn->name, sn->l1_size);
        sn->bad_l1 = true;
    } else if (c->plan && sn->l1_size && (sn->l1_offset < c->s->cluster_size ||
                                          !in_file(c, sn->l1_offset, (uint64_t)sn->l1_size * 8))) {
        qc_problem(c, VDK_CHECK_SNAPSHOT, true, VDK_FIX_SNAPSHOT_TABLE, sn->entry_offset, 1,
                   "Repairing snapshot %s (%s) l1_offset=%#llx: L1 table overlaps the header or "
                   "lies past the end of the file",
                   sn->id, sn->name, (unsigned long long)sn->l1_offset);
        sn->bad_l1 = true;
    }
    if (sn->bad_l1 && c->plan) {
        sn->drop = true;
        c->snap_rewrite = true;
    }
}

static int scan_snapshots(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    if (s->data_file != s->file && c->nb_snapshots)
        qc_problem(c, VDK_CHECK_SNAPSHOT, false, VDK_FIX_NONE, c->snapshots_offset, 1,
                   "ERROR %u snapshots in image with data file", c->nb_snapshots);
    int r = 0;
    for (uint32_t i = 0; r == 0 && i < c->nsnaps; i++) {
        qc_snap *sn = &c->snaps[i];
        if (!sn->bad_l1)
            r = scan_l1(c, sn->l1_offset, sn->l1_size, false, err);
    }
    /* A table the repair rewrites will be free; the repair counts the new one. */
    if (r == 0 && !c->snap_rewrite)
        r = inc(c, c->snapshots_offset, c->snapshots_size, NULL, err);
    return r;
}

/* ---------------------------------------------------------------- refcount blocks */

static int scan_refblocks(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    for (uint64_t i = 0; i < s->rt_size; i++) {
        uint64_t e = s->rt[i], off = e & QCOW2_RT_OFFSET_MASK, k = off >> s->cluster_bits;
        bool fix = c->fix_errors;
        int fixk = VDK_FIX_REBUILD;
        if (e & QC_RT_RESERVED) {
            qc_problem(c, VDK_CHECK_REFBLOCK, fix, fixk, s->rt_offset + i * 8, 1,
                       "ERROR refcount table entry %llu has reserved bits set",
                       (unsigned long long)i);
            c->rebuild = true;
        } else if (off & (s->cluster_size - 1)) {
            qc_problem(c, VDK_CHECK_REFBLOCK, fix, fixk, s->rt_offset + i * 8, 1,
                       "ERROR refcount block %llu is not cluster aligned; refcount table entry "
                       "corrupted",
                       (unsigned long long)i);
            c->rebuild = true;
        } else if (k >= c->nb) {
            qc_problem(c, VDK_CHECK_REFBLOCK, fix, fixk, s->rt_offset + i * 8, 1,
                       "%s refcount block %llu is outside image",
                       fix && !c->dry ? "Repairing" : "ERROR", (unsigned long long)i);
            if (fix)
                c->rebuild = true;
        } else if (off) {
            int r = inc(c, off, s->cluster_size, NULL, err);
            if (r < 0)
                return r;
            if (c->ref[k] != 1) {
                qc_problem(c, VDK_CHECK_REFBLOCK, fix, fixk, off, 1,
                           "ERROR refcount block %llu refcount=%u", (unsigned long long)i,
                           c->ref[k]);
                c->rebuild = true;
            }
        }
    }
    return 0;
}

static int bitmap_cb(qcow2_state *s, uint64_t off, uint64_t len, void *ctx)
{
    (void)s;
    return inc(ctx, off, len, NULL, NULL);
}

/* ---------------------------------------------------------------- planning */

static void mark_range(qc_check *c, uint64_t off, uint64_t len)
{
    if (!len || !in_file(c, off, len))
        return;
    uint64_t last = (off + len - 1) >> c->s->cluster_bits;
    if (grow(c, last, NULL) < 0)
        return;
    for (uint64_t k = off >> c->s->cluster_bits; k <= last; k++)
        c->flags[k] |= QC_F_META;
}

/* Mark the fixed metadata, then plan the L1 entries of every kept table. */
static bool overlaps_meta(const qc_check *c, uint64_t off, uint64_t len)
{
    if (!len)
        return false;
    for (uint64_t k = off >> c->s->cluster_bits; k <= (off + len - 1) >> c->s->cluster_bits; k++)
        if (k < c->nb && (c->flags[k] & QC_F_META))
            return true;
    return false;
}

/* A snapshot table out of the file or over other metadata is rewritten; a
 * snapshot L1 table over other metadata is dropped (its "entries" are
 * another structure's bytes: clearing them would damage it). */
static void plan_snapshots(qc_check *c)
{
    if (c->nb_snapshots && (!in_file(c, c->snapshots_offset, c->snapshots_size) ||
                            overlaps_meta(c, c->snapshots_offset, c->snapshots_size))) {
        qc_problem(c, VDK_CHECK_SNAPSHOT, true, VDK_FIX_SNAPSHOT_TABLE, c->snapshots_offset, 1,
                   "Repairing the snapshot table at 0x%llx: it lies past the end of the file or "
                   "over other metadata",
                   (unsigned long long)c->snapshots_offset);
        c->snap_rewrite = true;
    }
    mark_range(c, c->snapshots_offset, c->snapshots_size);
    for (uint32_t i = 0; i < c->nsnaps; i++) {
        qc_snap *sn = &c->snaps[i];
        uint64_t len = (uint64_t)sn->l1_size * 8;
        if (sn->bad_l1)
            continue;
        if (overlaps_meta(c, sn->l1_offset, len)) {
            qc_problem(c, VDK_CHECK_SNAPSHOT, true, VDK_FIX_SNAPSHOT_TABLE, sn->entry_offset, 1,
                       "Repairing snapshot %s (%s): its L1 table at 0x%llx overlaps other "
                       "metadata",
                       sn->id, sn->name, (unsigned long long)sn->l1_offset);
            sn->bad_l1 = sn->drop = c->snap_rewrite = true;
            continue;
        }
        mark_range(c, sn->l1_offset, len);
    }
}

/* Mark the fixed metadata, then plan the L1 entries of every kept table. */
static int plan_tables(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    mark_range(c, 0, s->cluster_size);
    mark_range(c, s->l1_offset, (uint64_t)s->l1_size * 8);
    mark_range(c, s->rt_offset, s->rt_size * 8);
    for (uint64_t i = 0; i < s->rt_size; i++) {
        uint64_t off = s->rt[i] & QCOW2_RT_OFFSET_MASK;
        if (!(s->rt[i] & QC_RT_RESERVED) && !(off & (s->cluster_size - 1)))
            mark_range(c, off, s->cluster_size);
    }
    plan_snapshots(c);
    int r = plan_l1(c, s->l1_offset, s->l1_size, true, err);
    for (uint32_t i = 0; r == 0 && i < c->nsnaps; i++)
        if (!c->snaps[i].bad_l1)
            r = plan_l1(c, c->snaps[i].l1_offset, c->snaps[i].l1_size, false, err);
    qc_sort_fixes(c);
    return r;
}

int qc_count_references(qc_check *c, vdk_error *err)
{
    qcow2_state *s = c->s;
    for (uint32_t i = 0; i < c->nsnaps; i++)
        judge_snapshot(c, &c->snaps[i]);
    int r = c->plan ? plan_tables(c, err) : 0;
    if (r == 0)
        r = inc(c, 0, s->cluster_size, NULL, err);
    if (r == 0)
        r = scan_l1(c, s->l1_offset, s->l1_size, true, err);
    if (r == 0)
        r = scan_snapshots(c, err);
    if (r == 0)
        r = inc(c, s->rt_offset, s->rt_size * 8, NULL, err);
    if (r == 0 && s->has_bitmaps_ext && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        qcow2_bitmaps_walk(s, bitmap_cb, c, NULL); /* bad bitmaps: not counted */
    if (r == 0)
        r = scan_refblocks(c, err);
    return r;
}
