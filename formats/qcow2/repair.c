/*
 * repair.c - rebuilding the refcounts of a dirty image (lazy refcounts after
 * a crash), as QEMU does on a read-write open.
 *
 * Every reference is counted into an in-memory array (4 bytes per cluster of
 * the file, so memory follows the file size): the header cluster, the active
 * and snapshot L1 tables, their L2 tables and data clusters (a compressed
 * cluster counts once for every host cluster it touches), the snapshot
 * table, and the bitmaps when their extension is valid. A new refcount table
 * and new refcount blocks are then written past the end of the file
 * (describing themselves too), the header is switched to them, and the
 * "copied" flags of the active L1/L2 entries are made to match the new
 * refcounts. The old refcount structures simply become free space.
 *
 * A reference that is out of bounds (unaligned, past the end of the file)
 * cannot be accounted for safely: the repair fails with VDK_ECORRUPT and the
 * image stays dirty (it can still be opened read-only).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

typedef struct counts {
    uint32_t *c;
    uint64_t n; /* clusters */
} counts;

static int add(qcow2_state *s, counts *k, uint64_t off, uint64_t len, const char *what,
               vdk_error *err)
{
    if (len == 0)
        return 0;
    uint64_t first = off >> s->cluster_bits, last = (off + len - 1) >> s->cluster_bits;
    if (off + len < off || last >= k->n)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: cannot repair: %s at 0x%llx lies past the end of the file", what,
                        (unsigned long long)off);
    for (uint64_t c = first; c <= last; c++)
        if (k->c[c] != UINT32_MAX)
            k->c[c]++;
    return 0;
}

static int add_cb(qcow2_state *s, uint64_t off, uint64_t len, void *ctx)
{
    return add(s, ctx, off, len, "bitmap data", NULL);
}

/* Count one L2 table's data references. */
static int count_l2(qcow2_state *s, counts *k, const uint8_t *t, vdk_error *err)
{
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t w, b, off, len;
        qcow2_l2_entry_read(s, t, i, &w, &b);
        int r = 0;
        if (w & QCOW2_OFLAG_COMPRESSED) {
            qcow2_compressed_range(s, w, &off, &len);
            r = add(s, k, off, len, "compressed cluster", err);
        } else if ((off = w & QCOW2_OFFSET_MASK) && !(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
            if (off & (s->cluster_size - 1))
                return vdk_fail(err, VDK_ECORRUPT,
                                "qcow2: cannot repair: L2 entry with unaligned offset 0x%llx",
                                (unsigned long long)off);
            r = add(s, k, off, s->cluster_size, "data cluster", err);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Count an L1 table's L2 tables and what they reference. */
static int count_l1(qcow2_state *s, counts *k, const uint64_t *l1, uint64_t n, uint8_t *buf,
                    vdk_error *err)
{
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = l1[i] & QCOW2_OFFSET_MASK;
        if (!off)
            continue;
        if (off & (s->cluster_size - 1))
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: cannot repair: L2 table offset 0x%llx is not aligned",
                            (unsigned long long)off);
        int r = add(s, k, off, s->cluster_size, "L2 table", err);
        if (r == 0)
            r = vdk_file_pread(s->file, buf, s->cluster_size, off, err);
        if (r == 0)
            r = count_l2(s, k, buf, err);
        if (r < 0)
            return r;
    }
    return 0;
}

static int count_snapshots(qcow2_state *s, counts *k, uint8_t *buf, vdk_error *err)
{
    int r = add(s, k, s->snapshots_offset, s->snapshots_size, "snapshot table", err);
    for (uint32_t i = 0; r == 0 && i < s->nb_snapshots; i++) {
        qcow2_snapshot *sn = &s->snaps[i];
        uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, 8);
        if (!l1)
            return vdk_fail(err, -ENOMEM, "out of memory");
        r = add(s, k, sn->l1_offset, (uint64_t)sn->l1_size * 8, "snapshot L1 table", err);
        if (r == 0)
            r = vdk_file_pread(s->file, l1, (uint64_t)sn->l1_size * 8, sn->l1_offset, err);
        for (uint32_t j = 0; r == 0 && j < sn->l1_size; j++)
            l1[j] = vdk_be64(&l1[j]);
        if (r == 0)
            r = count_l1(s, k, l1, sn->l1_size, buf, err);
        free(l1);
    }
    return r;
}

static int count_all(qcow2_state *s, counts *k, vdk_error *err)
{
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = add(s, k, 0, s->cluster_size, "header", err);
    if (r == 0)
        r = add(s, k, s->l1_offset, (uint64_t)s->l1_size * 8, "L1 table", err);
    if (r == 0)
        r = count_l1(s, k, s->l1, s->l1_size, buf, err);
    if (r == 0)
        r = count_snapshots(s, k, buf, err);
    if (r == 0 && s->has_bitmaps_ext && s->version >= 3 &&
        (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) &&
        qcow2_bitmaps_walk(s, add_cb, k, NULL) < 0) {
        /* Unusable bitmaps: drop them from the header, leaving their
         * clusters free. */
        s->has_bitmaps_ext = false;
        s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
        r = qcow2_header_rewrite(s, err);
    }
    free(buf);
    return r;
}

/* ---------------------------------------------------------------- new structures */

static uint64_t regions_used(const qcow2_state *s, const counts *k, uint64_t end)
{
    uint64_t n = 0, per = UINT64_C(1) << s->rb_bits;
    for (uint64_t r = 0; r * per < end; r++) {
        for (uint64_t c = r * per; c < end && c < (r + 1) * per; c++) {
            if (c >= k->n || k->c[c]) {
                n++;
                break;
            }
        }
    }
    return n;
}

/* Table at [start, start+T), blocks right after; counts extended to cover them. */
static int plan(qcow2_state *s, counts *k, uint64_t start, uint64_t *T, uint64_t *B,
                vdk_error *err)
{
    uint64_t per_t = s->cluster_size / 8;
    *T = 1;
    *B = 0;
    for (int iter = 0; iter < 64; iter++) {
        uint64_t end = start + *T + *B;
        uint64_t b = regions_used(s, k, end);
        uint64_t entries = ((end - 1) >> s->rb_bits) + 1;
        uint64_t t = (entries + per_t - 1) / per_t;
        if (b == *B && t == *T) {
            if (*T * s->cluster_size > QCOW2_MAX_RT_BYTES)
                return vdk_fail(err, VDK_ETOOBIG, "qcow2: refcount table would exceed 8 MiB");
            return 0;
        }
        *B = b;
        *T = t;
    }
    return vdk_fail(err, -EIO, "qcow2: refcount rebuild did not converge");
}

static int write_structures(qcow2_state *s, const counts *k, uint64_t start, uint64_t T,
                            uint64_t B, uint64_t **nrt, vdk_error *err)
{
    uint64_t per = UINT64_C(1) << s->rb_bits, end = start + T + B;
    uint64_t entries = T * (s->cluster_size / 8);
    *nrt = calloc(entries, 8);
    uint8_t *blk = malloc(s->cluster_size);
    int r = *nrt && blk ? 0 : vdk_fail(err, -ENOMEM, "out of memory");
    uint64_t j = 0;
    for (uint64_t reg = 0; r == 0 && reg * per < end; reg++) {
        memset(blk, 0, s->cluster_size);
        bool used = false;
        for (uint64_t c = reg * per; c < end && c < (reg + 1) * per; c++) {
            uint64_t v = c < k->n ? k->c[c] : 1;
            if (v > s->refcount_max)
                r = vdk_fail(err, VDK_ECORRUPT,
                             "qcow2: cannot repair: cluster 0x%llx has %llu references, more "
                             "than %u-bit refcounts can hold",
                             (unsigned long long)(c << s->cluster_bits), (unsigned long long)v,
                             1u << s->refcount_order);
            used |= v != 0;
            qcow2_rb_set(s, blk, c - reg * per, v);
        }
        if (!used || r < 0)
            continue;
        uint64_t off = (start + T + j++) << s->cluster_bits;
        (*nrt)[reg] = off;
        r = vdk_file_pwrite(s->file, blk, s->cluster_size, off, err);
    }
    free(blk);
    if (r == 0 && j != B)
        r = vdk_fail(err, -EIO, "qcow2: refcount rebuild miscounted blocks");
    if (r == 0) {
        uint64_t *be = malloc(entries * 8);
        if (!be)
            return vdk_fail(err, -ENOMEM, "out of memory");
        for (uint64_t i = 0; i < entries; i++)
            vdk_put_be64(&be[i], (*nrt)[i]);
        r = vdk_file_pwrite(s->file, be, entries * 8, start << s->cluster_bits, err);
        free(be);
    }
    return r;
}

/* ---------------------------------------------------------------- copied flags */

static int fix_copied(qcow2_state *s, const counts *k, vdk_error *err)
{
    uint8_t *t = malloc(s->cluster_size);
    if (!t)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = 0;
    bool l1_changed = false;
    for (uint64_t i = 0; r == 0 && i < s->l1_size; i++) {
        uint64_t off = s->l1[i] & QCOW2_OFFSET_MASK;
        if (!off)
            continue;
        uint64_t e = k->c[off >> s->cluster_bits] == 1 ? off | QCOW2_OFLAG_COPIED : off;
        l1_changed |= e != s->l1[i];
        s->l1[i] = e;
        r = vdk_file_pread(s->file, t, s->cluster_size, off, err);
        bool changed = false;
        for (uint64_t j = 0; r == 0 && j < (UINT64_C(1) << s->l2_bits); j++) {
            uint64_t w, b, h, nw;
            qcow2_l2_entry_read(s, t, j, &w, &b);
            h = w & QCOW2_OFFSET_MASK;
            if (w & QCOW2_OFLAG_COMPRESSED)
                nw = w & ~QCOW2_OFLAG_COPIED;
            else if (s->incompat & QCOW2_INCOMPAT_DATA_FILE)
                nw = w; /* data file clusters are not refcounted */
            else if (h)
                nw = k->c[h >> s->cluster_bits] == 1 ? w | QCOW2_OFLAG_COPIED
                                                     : w & ~QCOW2_OFLAG_COPIED;
            else
                nw = w;
            if (nw != w) {
                changed = true;
                if (s->ext_l2)
                    vdk_put_be64(t + j * 16, nw);
                else
                    vdk_put_be64(t + j * 8, nw);
            }
        }
        if (r == 0 && changed)
            r = vdk_file_pwrite(s->file, t, s->cluster_size, off, err);
    }
    free(t);
    if (r == 0 && l1_changed) {
        s->l1_dirty_lo = 0;
        s->l1_dirty_hi = s->l1_size;
        r = qcow2_l1_write(s, err);
    }
    return r;
}

/* ---------------------------------------------------------------- entry point */

static int switch_to(qcow2_state *s, uint64_t *nrt, uint64_t start, uint64_t T, uint64_t B,
                     unsigned hdr_len, vdk_error *err)
{
    free(s->rt);
    s->rt = nrt;
    s->rt_size = T * (s->cluster_size / 8);
    s->rt_offset = start << s->cluster_bits;
    s->rt_clusters = (uint32_t)T;
    s->alloc_end = s->untouched = start + T + B;
    s->free_hint = 0;
    s->free_byte_offset = 0;
    int r = qcow2_header_write_field(s, QCOW2_OFF_RT_OFFSET, hdr_len, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0)
        return qcow2_set_broken(s, r);
    qcow2_overlap_free(s);
    r = qcow2_overlap_init(s, err);
    if (r == 0)
        r = qcow2_make_caches(s, err);
    return r;
}

int qcow2_rebuild_refcounts(qcow2_state *s, vdk_error *err)
{
    counts k = {.n = qcow2_size_to_clusters(s, s->file_size)};
    k.c = calloc(k.n ? k.n : 1, sizeof *k.c);
    if (!k.c)
        return vdk_fail(err, -ENOMEM, "qcow2: out of memory for the refcount rebuild");
    uint64_t T = 0, B = 0, *nrt = NULL;
    int r = count_all(s, &k, err);
    if (r == 0)
        r = fix_copied(s, &k, err);
    if (r == 0)
        r = plan(s, &k, k.n, &T, &B, err);
    if (r == 0)
        r = write_structures(s, &k, k.n, T, B, &nrt, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r == 0)
        r = switch_to(s, nrt, k.n, T, B, 12, err);
    else
        free(nrt);
    free(k.c);
    return r;
}

/*
 * For check.c's repair: new refcount structures for the references the
 * caller counted (counts[0..n), clusters; n may exceed the file, whose tail
 * then holds what the caller wrote there), placed from cluster n on; the
 * header switch writes the refcount table fields, and with snapshots also
 * nb_snapshots and snapshots_offset (bytes 48-71), in one write. The
 * COPIED flags are the caller's business.
 */
int qcow2_rebuild_from_counts(qcow2_state *s, uint32_t *refs, uint64_t n, bool snapshots,
                              vdk_error *err)
{
    counts k = {.c = refs, .n = n};
    uint64_t T = 0, B = 0, *nrt = NULL;
    int r = plan(s, &k, k.n, &T, &B, err);
    if (r == 0)
        r = write_structures(s, &k, k.n, T, B, &nrt, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r == 0)
        r = switch_to(s, nrt, k.n, T, B, snapshots ? 24 : 12, err);
    else
        free(nrt);
    return r;
}
