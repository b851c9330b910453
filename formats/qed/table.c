/*
 * table.c - QED's two-level mapping: the L1 table (kept whole in memory),
 * L2 tables (through the core table cache), the validation of every entry
 * at the moment it is used, and the lookup of guest ranges.
 *
 * Tables are kept in file byte order (little-endian) in memory, both the L1
 * array and the cached L2 tables; entries are decoded at the point of use.
 * An L1 entry must name table_size whole clusters past the header, clear of
 * the L1 table and inside the file; an L2 entry other than 0 and 1 must name
 * one whole cluster with the same limits. A bad entry fails the request with
 * VDK_ECORRUPT and a message naming the table and the entry; on a writable
 * image it also sets the need-check bit, so the next read-write open repairs.
 * All functions here run with s->lock held.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

/* Memory budget of the L2 cache, and its bounds in tables. */
#define L2_CACHE_BYTES (UINT64_C(32) << 20)
#define L2_CACHE_MAX_TABLES 8192u

int qed_make_cache(qed_state *s, vdk_error *err)
{
    uint64_t n = L2_CACHE_BYTES / s->table_bytes;
    if (n < 2)
        n = 2;
    if (n > L2_CACHE_MAX_TABLES)
        n = L2_CACHE_MAX_TABLES;
    s->l2_cache = vdk_cache_new(s->file, s->table_bytes, (unsigned)n, "qed L2 table");
    return s->l2_cache ? 0 : vdk_fail(err, -ENOMEM, "out of memory for the L2 table cache");
}

uint64_t qed_alloc_clusters(qed_state *s, uint64_t n)
{
    uint64_t off = s->file_end;
    s->file_end += n << s->cluster_bits;
    return off;
}

/* ---------------------------------------------------------------- L1 */

int qed_l1_load(qed_state *s, vdk_error *err)
{
    /* Bounded by the file: the header check put the table inside it. */
    s->l1 = vdk_alloc_aligned(s->table_bytes, false);
    if (!s->l1)
        return vdk_fail(err, -ENOMEM, "out of memory for the L1 table (%llu bytes)",
                        (unsigned long long)s->table_bytes);
    s->l1_lo = s->l1_hi = 0;
    return vdk_file_pread(s->file, s->l1, s->table_bytes, s->l1_offset, err);
}

void qed_l1_set(qed_state *s, uint64_t index, uint64_t value)
{
    vdk_put_le64(&s->l1[index], value);
    if (s->l1_lo == s->l1_hi) {
        s->l1_lo = index;
        s->l1_hi = index + 1;
    } else {
        if (index < s->l1_lo)
            s->l1_lo = index;
        if (index + 1 > s->l1_hi)
            s->l1_hi = index + 1;
    }
}

/* Write the changed L1 entries, in whole 512-byte sectors. Not flushed. */
int qed_l1_write(qed_state *s, vdk_error *err)
{
    if (s->l1_lo == s->l1_hi)
        return 0;
    uint64_t lo = s->l1_lo & ~UINT64_C(63), hi = (s->l1_hi + 63) & ~UINT64_C(63);
    if (hi > s->table_entries)
        hi = s->table_entries;
    int r = vdk_file_pwrite(s->file, s->l1 + lo, (size_t)((hi - lo) * 8),
                            s->l1_offset + lo * 8, err);
    if (r < 0)
        return qed_set_broken(s, r);
    s->l1_lo = s->l1_hi = 0;
    return 0;
}

/* ---------------------------------------------------------------- validation */

/* A corrupt entry was met: ask for a repair on the next read-write open
 * (and never clear the bit in this session). */
static void note_corruption(qed_state *s)
{
    if (!s->writable || s->broken)
        return;
    s->unchecked = true;
    if (!s->need_check)
        qed_set_need_check(s, NULL);
}

/* Why [off, off + len) cannot hold a table or cluster, written into why
 * (false when the place is fine): unaligned, inside the header, over the
 * L1 table, or past the end of the file. */
static bool bad_place(const qed_state *s, uint64_t off, uint64_t len, char *why, size_t n)
{
    if (off & (s->cluster_size - 1))
        snprintf(why, n, "is not a multiple of the cluster size (%u)", s->cluster_size);
    else if (off < qed_header_end(s))
        snprintf(why, n, "lies inside the header (0x%llx bytes)",
                 (unsigned long long)qed_header_end(s));
    else if (off < s->l1_offset + s->table_bytes && s->l1_offset < off + len)
        snprintf(why, n, "overlaps the L1 table at 0x%llx", (unsigned long long)s->l1_offset);
    else if (off > s->file_end || len > s->file_end - off)
        snprintf(why, n, "lies past the end of the file (0x%llx bytes)",
                 (unsigned long long)s->file_end);
    else
        return false;
    return true;
}

int qed_check_table_offset(const qed_state *s, uint64_t off, uint64_t index,
                           vdk_error *err)
{
    char why[96];
    if (!bad_place(s, off, s->table_bytes, why, sizeof why))
        return 0;
    note_corruption((qed_state *)s);
    return vdk_fail(err, VDK_ECORRUPT, "qed: L2 table offset 0x%llx (L1 entry %llu) %s",
                    (unsigned long long)off, (unsigned long long)index, why);
}

int qed_check_cluster_offset(const qed_state *s, uint64_t entry, uint64_t l2_offset,
                             uint64_t index, vdk_error *err)
{
    char why[96];
    if (!bad_place(s, entry, s->cluster_size, why, sizeof why))
        return 0;
    note_corruption((qed_state *)s);
    return vdk_fail(err, VDK_ECORRUPT,
                    "qed: data cluster offset 0x%llx (entry %llu of the L2 table at 0x%llx) %s",
                    (unsigned long long)entry, (unsigned long long)index,
                    (unsigned long long)l2_offset, why);
}

/* ---------------------------------------------------------------- L2 */

/* The L2 table of an L1 entry, or NULL (0 returned) when it has none. */
int qed_l2_get(qed_state *s, uint64_t l1_index, uint8_t **table, vdk_error *err)
{
    *table = NULL;
    uint64_t off = vdk_le64(&s->l1[l1_index]);
    if (off == 0)
        return 0;
    int r = qed_check_table_offset(s, off, l1_index, err);
    if (r < 0)
        return r;
    void *t;
    r = vdk_cache_get(s->l2_cache, off, &t, err);
    if (r == 0)
        *table = t;
    return r;
}

/* The L2 table of an L1 entry, created (appended, zeroed) when missing. */
int qed_l2_get_for_update(qed_state *s, uint64_t l1_index, uint8_t **table,
                          vdk_error *err)
{
    int r = qed_l2_get(s, l1_index, table, err);
    if (r < 0 || *table)
        return r;
    if ((r = qed_set_need_check(s, err)) < 0)
        return r;
    uint64_t off = qed_alloc_clusters(s, s->table_size);
    void *t;
    r = vdk_cache_get_empty(s->l2_cache, off, &t, err);
    if (r < 0) {
        if (s->file_end == off + s->table_bytes)
            s->file_end = off;
        return r;
    }
    vdk_cache_mark_dirty(s->l2_cache, t);
    qed_l1_set(s, l1_index, off);
    *table = t;
    return 0;
}

void qed_l2_put(qed_state *s, uint8_t **table)
{
    if (*table) {
        void *t = *table;
        vdk_cache_put(s->l2_cache, &t);
    }
    *table = NULL;
}

/* Decode entry i of an L2 table (at l2_offset), checking it. */
static int entry_at(const qed_state *s, const uint8_t *table, uint64_t l2_offset,
                    uint64_t i, uint64_t *entry, vdk_error *err)
{
    uint64_t e = vdk_le64(table + i * 8);
    *entry = e;
    if (e <= QED_ENTRY_ZERO)
        return 0;
    return qed_check_cluster_offset(s, e, l2_offset, i, err);
}

int qed_entry_get(qed_state *s, uint64_t gc, uint64_t *entry, vdk_error *err)
{
    uint64_t l1i = gc >> s->table_bits, l2i = gc & (s->table_entries - 1);
    uint8_t *t;
    *entry = 0;
    int r = qed_l2_get(s, l1i, &t, err);
    if (r < 0 || !t)
        return r;
    r = entry_at(s, t, vdk_le64(&s->l1[l1i]), l2i, entry, err);
    qed_l2_put(s, &t);
    return r;
}

/*
 * Point n guest clusters from gc at first (first + i * cluster_size when
 * contiguous, else the same value: 0 or 1). New L2 tables are appended.
 * Data entries make the cache flush the file before it writes the tables.
 */
int qed_entries_set(qed_state *s, uint64_t gc, uint64_t n, uint64_t first,
                    bool contiguous, vdk_error *err)
{
    int r = qed_set_need_check(s, err);
    uint64_t i = 0;
    while (r == 0 && i < n) {
        uint64_t l1i = (gc + i) >> s->table_bits, l2i = (gc + i) & (s->table_entries - 1);
        uint8_t *t;
        r = qed_l2_get_for_update(s, l1i, &t, err);
        if (r < 0)
            break;
        for (; i < n && l2i < s->table_entries; i++, l2i++) {
            uint64_t v = contiguous ? first + (i << s->cluster_bits) : first;
            vdk_put_le64(t + l2i * 8, v);
        }
        vdk_cache_mark_dirty(s->l2_cache, t);
        qed_l2_put(s, &t);
    }
    if (first > QED_ENTRY_ZERO)
        vdk_cache_flush_before_write(s->l2_cache);
    return r;
}

/* ---------------------------------------------------------------- mapping */

static int kind_of(uint64_t e)
{
    return e == QED_ENTRY_UNALLOC ? QED_UNALLOC : e == QED_ENTRY_ZERO ? QED_ZERO : QED_DATA;
}

/* Extend m over the entries of one L2 table from guest offset pos; returns
 * 1 when the run ends inside this table. */
static int map_table(qed_state *s, const uint8_t *t, uint64_t l2_offset, uint64_t pos,
                     uint64_t end, qed_map *m, vdk_error *err)
{
    uint64_t cs = s->cluster_size;
    for (uint64_t i = qed_l2_index(s, pos); i < s->table_entries && pos < end; i++) {
        uint64_t e;
        int r = entry_at(s, t, l2_offset, i, &e, err);
        if (r < 0)
            return r;
        uint64_t in = pos & (cs - 1), span = cs - in;
        if (span > end - pos)
            span = end - pos;
        int kind = kind_of(e);
        if (m->bytes == 0) {
            m->kind = kind;
            m->host = kind == QED_DATA ? e + in : 0;
        } else if (kind != m->kind || (kind == QED_DATA && e + in != m->host + m->bytes)) {
            return 1;
        }
        m->bytes += span;
        pos += span;
    }
    return 0;
}

/* The run of guest bytes from off (at most max) sharing one kind. */
int qed_map_range(qed_state *s, uint64_t off, uint64_t max, qed_map *m, vdk_error *err)
{
    m->kind = QED_UNALLOC;
    m->bytes = 0;
    m->host = 0;
    uint64_t end = off + max;
    while (off + m->bytes < end) {
        uint64_t pos = off + m->bytes, l1i = qed_l1_index(s, pos);
        uint8_t *t;
        int r = qed_l2_get(s, l1i, &t, err);
        if (r < 0)
            return r;
        if (!t) {
            if (m->bytes && m->kind != QED_UNALLOC)
                return 0;
            uint64_t cov = qed_l2_coverage(s), span = cov - (pos & (cov - 1));
            m->kind = QED_UNALLOC;
            m->bytes += span < end - pos ? span : end - pos;
            continue;
        }
        r = map_table(s, t, vdk_le64(&s->l1[l1i]), pos, end, m, err);
        qed_l2_put(s, &t);
        if (r != 0)
            return r < 0 ? r : 0;
    }
    return 0;
}
