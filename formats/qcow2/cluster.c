/*
 * cluster.c - the guest-to-host mapping: L1 entries, L2 tables (through the
 * L2 cache), decoding and validating L2 entries, mapping runs of guest bytes
 * to one kind of storage, and updating entries (allocating an L2 table, or
 * copying one that a snapshot shares, on the way).
 *
 * All functions run under the metadata lock. Entries are validated at use:
 * a misaligned offset, an offset past the end of the file or an impossible
 * subcluster bitmap is a VDK_ECORRUPT error for that access (and marks a
 * writable image corrupt, as QEMU does).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* ---------------------------------------------------------------- L1 */

void qcow2_l1_mark_dirty(qcow2_state *s, uint64_t index)
{
    uint32_t i = (uint32_t)index;
    if (s->l1_dirty_lo >= s->l1_dirty_hi) {
        s->l1_dirty_lo = i;
        s->l1_dirty_hi = i + 1;
        return;
    }
    if (i < s->l1_dirty_lo)
        s->l1_dirty_lo = i;
    if (i + 1 > s->l1_dirty_hi)
        s->l1_dirty_hi = i + 1;
}

/* Write the dirty part of the L1 table, widened to 512-byte sectors. */
int qcow2_l1_write(qcow2_state *s, vdk_error *err)
{
    if (s->l1_dirty_lo >= s->l1_dirty_hi)
        return 0;
    uint64_t lo = s->l1_dirty_lo & ~UINT64_C(63);
    uint64_t hi = ((uint64_t)s->l1_dirty_hi + 63) & ~UINT64_C(63);
    if (hi > s->l1_size)
        hi = s->l1_size;
    uint64_t *be = malloc((hi - lo) * 8);
    if (!be)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = lo; i < hi; i++)
        vdk_put_be64(&be[i - lo], s->l1[i]);
    int r = vdk_file_pwrite(s->file, be, (hi - lo) * 8, s->l1_offset + lo * 8, err);
    free(be);
    if (r < 0)
        return qcow2_set_broken(s, r);
    s->l1_dirty_lo = s->l1_dirty_hi = 0;
    return 0;
}

/* ---------------------------------------------------------------- L2 tables */

int qcow2_check_l2_offset(qcow2_state *s, uint64_t l1_index, uint64_t off, vdk_error *err)
{
    uint64_t lim = qcow2_host_limit(s);
    if (off & (s->cluster_size - 1))
        return qcow2_signal_corruption(s, err,
                                       "L2 table offset 0x%llx (L1 index %llu) is not "
                                       "cluster-aligned",
                                       (unsigned long long)off, (unsigned long long)l1_index);
    if (off < s->cluster_size)
        return qcow2_signal_corruption(s, err,
                                       "L2 table offset 0x%llx (L1 index %llu) overlaps the "
                                       "header",
                                       (unsigned long long)off, (unsigned long long)l1_index);
    if (off > lim || lim - off < s->cluster_size)
        return qcow2_signal_corruption(s, err,
                                       "L2 table at 0x%llx (L1 index %llu) lies past the end "
                                       "of the file",
                                       (unsigned long long)off, (unsigned long long)l1_index);
    return 0;
}

int qcow2_l2_get(qcow2_state *s, uint64_t l1_index, uint8_t **table, vdk_error *err)
{
    *table = NULL;
    if (l1_index >= s->l1_size)
        return 0;
    uint64_t off = s->l1[l1_index] & QCOW2_OFFSET_MASK;
    if (!off)
        return 0;
    int r = qcow2_check_l2_offset(s, l1_index, off, err);
    if (r == 0)
        r = vdk_cache_get(s->l2_cache, off, (void **)table, err);
    return r;
}

void qcow2_l2_put(qcow2_state *s, uint8_t **table)
{
    if (*table)
        vdk_cache_put(s->l2_cache, (void **)table);
}

void qcow2_l2_entry_write(qcow2_state *s, uint8_t *t, uint64_t i, uint64_t word,
                          uint64_t bitmap)
{
    if (s->ext_l2) {
        vdk_put_be64(t + i * 16, word);
        vdk_put_be64(t + i * 16 + 8, bitmap);
    } else {
        vdk_put_be64(t + i * 8, word);
    }
    vdk_cache_mark_dirty(s->l2_cache, t);
}

/* ---------------------------------------------------------------- decoding */

static int decode_compressed(qcow2_state *s, uint64_t gc, qcow2_cinfo *ci, vdk_error *err)
{
    ci->compressed = true;
    if (s->data_file != s->file)
        return qcow2_signal_corruption(s, err,
                                       "compressed cluster at guest offset 0x%llx in an image "
                                       "with an external data file",
                                       (unsigned long long)(gc << s->cluster_bits));
    uint64_t coff = ci->word & s->coffset_mask, off, len;
    qcow2_compressed_range(s, ci->word, &off, &len);
    uint64_t lim = (qcow2_host_limit(s) + 511) & ~UINT64_C(511);
    if (coff >= QCOW2_MAX_HOST_OFFSET || off < s->cluster_size || off > lim ||
        len > lim - off)
        return qcow2_signal_corruption(s, err,
                                       "compressed cluster descriptor for guest offset 0x%llx "
                                       "(host 0x%llx, %llu bytes) lies outside the file",
                                       (unsigned long long)(gc << s->cluster_bits),
                                       (unsigned long long)coff, (unsigned long long)len);
    return 0;
}

static int check_host(qcow2_state *s, uint64_t gc, const qcow2_cinfo *ci, vdk_error *err)
{
    if (ci->host & (s->cluster_size - 1))
        return qcow2_signal_corruption(s, err,
                                       "L2 entry for guest offset 0x%llx has unaligned host "
                                       "offset 0x%llx",
                                       (unsigned long long)(gc << s->cluster_bits),
                                       (unsigned long long)ci->host);
    if (s->data_file != s->file || !ci->alloc)
        return 0;
    uint64_t lim = qcow2_host_limit(s);
    if (ci->host < s->cluster_size || ci->host >= lim)
        return qcow2_signal_corruption(s, err,
                                       "L2 entry for guest offset 0x%llx points to 0x%llx, "
                                       "%s",
                                       (unsigned long long)(gc << s->cluster_bits),
                                       (unsigned long long)ci->host,
                                       ci->host < s->cluster_size ? "inside the header"
                                                                  : "past the end of the file");
    return 0;
}

int qcow2_decode(qcow2_state *s, uint64_t gc, uint64_t word, uint64_t bitmap,
                 qcow2_cinfo *ci, vdk_error *err)
{
    memset(ci, 0, sizeof *ci);
    ci->word = word;
    ci->bitmap = bitmap;
    ci->copied = word & QCOW2_OFLAG_COPIED;
    if (word & QCOW2_OFLAG_COMPRESSED)
        return decode_compressed(s, gc, ci, err);
    ci->host = word & QCOW2_OFFSET_MASK;
    ci->has_host = ci->host || (s->data_file != s->file && ci->copied);
    if (s->ext_l2) {
        ci->alloc = (uint32_t)bitmap;
        ci->zero = (uint32_t)(bitmap >> 32);
        if (ci->alloc & ci->zero)
            return qcow2_signal_corruption(s, err,
                                           "L2 entry for guest offset 0x%llx marks subclusters "
                                           "both allocated and zero (bitmap 0x%016llx)",
                                           (unsigned long long)(gc << s->cluster_bits),
                                           (unsigned long long)bitmap);
        if (ci->alloc && !ci->has_host)
            return qcow2_signal_corruption(s, err,
                                           "L2 entry for guest offset 0x%llx has allocated "
                                           "subclusters but no host offset",
                                           (unsigned long long)(gc << s->cluster_bits));
    } else if (word & QCOW2_OFLAG_ZERO) {
        ci->zero = 1;
    } else if (ci->has_host) {
        ci->alloc = 1;
    }
    if (!ci->has_host)
        ci->copied = false;
    return check_host(s, gc, ci, err);
}

int qcow2_lookup(qcow2_state *s, uint64_t gc, qcow2_cinfo *ci, vdk_error *err)
{
    uint8_t *t;
    int r = qcow2_l2_get(s, gc >> s->l2_bits, &t, err);
    if (r < 0)
        return r;
    uint64_t word = 0, bitmap = 0;
    if (t) {
        qcow2_l2_entry_read(s, t, gc & ((UINT64_C(1) << s->l2_bits) - 1), &word, &bitmap);
        qcow2_l2_put(s, &t);
    }
    r = qcow2_decode(s, gc, word, bitmap, ci, err);
    uint64_t l1i = gc >> s->l2_bits;
    ci->l1_copied = l1i < s->l1_size && (s->l1[l1i] & QCOW2_OFLAG_COPIED);
    return r;
}

/* ---------------------------------------------------------------- mapping runs */

/* Kind of subcluster sc of a decoded cluster, host offset of its start. */
static int sc_kind(const qcow2_state *s, const qcow2_cinfo *ci, uint32_t sc, uint64_t *host)
{
    *host = 0;
    if (ci->compressed)
        return QCOW2_COMPRESSED;
    uint64_t h = ci->has_host ? ci->host + ((uint64_t)sc << s->sc_bits) : 0;
    if (ci->alloc & (1u << sc)) {
        *host = h;
        return QCOW2_DATA;
    }
    if (ci->zero & (1u << sc)) {
        *host = h;
        return QCOW2_ZERO;
    }
    *host = h; /* an unallocated subcluster of an allocated cluster has one */
    return QCOW2_UNALLOC;
}

/* Append a unit to the run; false when it does not continue it. */
static bool extend(qcow2_map *m, bool merge_compressed, int kind, uint64_t host,
                   bool has_host, uint64_t entry, uint64_t len)
{
    if (m->bytes == 0) {
        m->kind = kind;
        m->host = has_host ? host : 0;
        m->entry = entry;
        m->bytes = len;
        return true;
    }
    if (kind != m->kind)
        return false;
    if (kind == QCOW2_COMPRESSED && !merge_compressed)
        return false;
    if (has_host != (m->host != 0) || (has_host && host != m->host + m->bytes))
        return false; /* compressed units never have one */
    m->bytes += len;
    return true;
}

/* The part of cluster ci (guest cluster gc) from guest offset pos: one kind. */
static uint64_t unit_in_cluster(const qcow2_state *s, const qcow2_cinfo *ci, uint64_t pos,
                                int *kind, uint64_t *host, bool *has_host)
{
    uint64_t in = pos & (s->cluster_size - 1);
    uint32_t sc = (uint32_t)(in >> s->sc_bits), j;
    uint64_t h, h2;
    *kind = sc_kind(s, ci, sc, &h);
    *has_host = (*kind == QCOW2_DATA) || (*kind == QCOW2_ZERO && ci->has_host) ||
                (*kind == QCOW2_UNALLOC && s->ext_l2 && ci->has_host);
    for (j = sc + 1; j < s->nsub; j++)
        if (sc_kind(s, ci, j, &h2) != *kind)
            break;
    *host = h + (in & ((UINT64_C(1) << s->sc_bits) - 1));
    if (s->data_file != s->file && *has_host)
        *host = (ci->host + in) | UINT64_C(1) << 63; /* marks host 0 as valid */
    return ((uint64_t)j << s->sc_bits) - in;
}

static int map_table(qcow2_state *s, uint8_t *t, uint64_t *pos, uint64_t end, bool mc,
                     qcow2_map *m, bool *stop, vdk_error *err)
{
    uint64_t l1i = *pos >> (s->cluster_bits + s->l2_bits);
    while (*pos < end && (*pos >> (s->cluster_bits + s->l2_bits)) == l1i) {
        uint64_t gc = *pos >> s->cluster_bits, word, bitmap, host;
        qcow2_l2_entry_read(s, t, gc & ((UINT64_C(1) << s->l2_bits) - 1), &word, &bitmap);
        qcow2_cinfo ci;
        int r = qcow2_decode(s, gc, word, bitmap, &ci, err), kind;
        if (r < 0)
            return r;
        bool hh;
        uint64_t len = unit_in_cluster(s, &ci, *pos, &kind, &host, &hh);
        if (len > end - *pos)
            len = end - *pos;
        if (!extend(m, mc, kind, host, hh, word, len)) {
            *stop = true;
            return 0;
        }
        *pos += len;
    }
    return 0;
}

int qcow2_map_range(qcow2_state *s, uint64_t off, uint64_t max, bool mc, qcow2_map *m,
                    vdk_error *err)
{
    memset(m, 0, sizeof *m);
    uint64_t pos = off, end = off + max;
    bool stop = false;
    while (pos < end && !stop) {
        uint64_t l1i = pos >> (s->cluster_bits + s->l2_bits);
        uint8_t *t;
        int r = qcow2_l2_get(s, l1i, &t, err);
        if (r < 0)
            return r;
        if (!t) {
            uint64_t next = (l1i + 1) << (s->cluster_bits + s->l2_bits);
            uint64_t len = (next < end ? next : end) - pos;
            if (!extend(m, mc, QCOW2_UNALLOC, 0, false, 0, len))
                break;
            pos += len;
            continue;
        }
        r = map_table(s, t, &pos, end, mc, m, &stop, err);
        qcow2_l2_put(s, &t);
        if (r < 0)
            return r;
    }
    /* With an external data file, bit 63 marked host offsets as valid. */
    if (s->data_file != s->file)
        m->host &= ~(UINT64_C(1) << 63);
    return 0;
}

/* ---------------------------------------------------------------- updates */

/* Copy of a shared L2 table: entries keep their clusters, "copied" flags
 * follow the refcounts. */
static int fix_copied_flags(qcow2_state *s, uint8_t *t, vdk_error *err)
{
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t w, b, rc = 0;
        qcow2_l2_entry_read(s, t, i, &w, &b);
        uint64_t host = w & QCOW2_OFFSET_MASK;
        if ((w & QCOW2_OFLAG_COMPRESSED) || !host) {
            if (w & QCOW2_OFLAG_COMPRESSED)
                w &= ~QCOW2_OFLAG_COPIED;
        } else if (s->data_file == s->file) {
            int r = qcow2_refcount_get(s, host >> s->cluster_bits, &rc, err);
            if (r < 0)
                return r;
            w = rc == 1 ? w | QCOW2_OFLAG_COPIED : w & ~QCOW2_OFLAG_COPIED;
        }
        qcow2_l2_entry_write(s, t, i, w, b);
    }
    return 0;
}

static int l2_new(qcow2_state *s, uint64_t l1i, uint8_t *old, uint8_t **table,
                  vdk_error *err)
{
    uint64_t off, got;
    int r = qcow2_alloc_clusters(s, 1, true, &off, &got, NULL, err);
    if (r < 0)
        return r;
    r = vdk_cache_get_empty(s->l2_cache, off, (void **)table, err);
    if (r < 0) {
        qcow2_free_now(s, off, s->cluster_size, NULL);
        return r;
    }
    if (old) {
        memcpy(*table, old, s->cluster_size);
        r = fix_copied_flags(s, *table, err);
    }
    vdk_cache_mark_dirty(s->l2_cache, *table);
    qcow2_l2set_change(s, s->l1[l1i], off);
    s->l1[l1i] = off | QCOW2_OFLAG_COPIED;
    qcow2_l1_mark_dirty(s, l1i);
    return r;
}

int qcow2_l2_get_for_write(qcow2_state *s, uint64_t l1i, uint8_t **table, vdk_error *err)
{
    *table = NULL;
    if (l1i >= s->l1_size)
        return qcow2_signal_corruption(s, err, "L1 index %llu is beyond the L1 table (%u)",
                                       (unsigned long long)l1i, s->l1_size);
    uint64_t e = s->l1[l1i], off = e & QCOW2_OFFSET_MASK;
    if (!off)
        return l2_new(s, l1i, NULL, table, err);
    int r = qcow2_check_l2_offset(s, l1i, off, err);
    if (r < 0)
        return r;
    if (e & QCOW2_OFLAG_COPIED)
        return vdk_cache_get(s->l2_cache, off, (void **)table, err);
    /* Shared with a snapshot: copy it. */
    uint8_t *old;
    r = vdk_cache_get(s->l2_cache, off, (void **)&old, err);
    if (r < 0)
        return r;
    r = l2_new(s, l1i, old, table, err);
    vdk_cache_put(s->l2_cache, (void **)&old);
    if (r == 0)
        r = qcow2_free_later(s, off, s->cluster_size, QCOW2_FREE_L2, err);
    if (r < 0)
        qcow2_l2_put(s, table);
    return r;
}

int qcow2_set_entries(qcow2_state *s, uint64_t gc, uint64_t n, const uint64_t *words,
                      const uint64_t *bitmaps, vdk_error *err)
{
    uint64_t i = 0, mask = (UINT64_C(1) << s->l2_bits) - 1;
    while (i < n) {
        uint8_t *t;
        int r = qcow2_l2_get_for_write(s, (gc + i) >> s->l2_bits, &t, err);
        if (r < 0)
            return qcow2_set_broken(s, r);
        do {
            qcow2_l2_entry_write(s, t, (gc + i) & mask, words[i], bitmaps ? bitmaps[i] : 0);
            i++;
        } while (i < n && ((gc + i) & mask) != 0);
        qcow2_l2_put(s, &t);
    }
    return 0;
}
