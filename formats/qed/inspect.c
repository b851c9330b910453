/*
 * inspect.c - the QED driver's inspect slot (vdk_image_inspect, core/vdk.h):
 * named, read-only queries that describe the image's structures as tables.
 *
 *   queries   the list below
 *   header    every header field, the feature bits with their names
 *   l1        the L1 table's non-empty entries: args {first, count}
 *   l2        one L2 table, entries decoded: args {l1_index}
 *   explain   how guest offset args {offset} resolves in this layer
 *   refmap    which L1/L2 entries reference the host cluster at args {offset}
 *   stats     qemu-img check's figures (from the driver's consistency scan)
 *   layout    where the header, the L1 table and the L2 tables lie
 *
 * Entries are checked by the driver's own validation (qed_check_table_offset,
 * qed_check_cluster_offset, qed_entry_get), so what is shown is what a read
 * does. Everything but stats runs with s->lock held.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

typedef int (*query_fn)(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *out,
                        vdk_error *err);

static int64_t arg_or(const int64_t *args, size_t nargs, size_t i, int64_t dflt)
{
    return i < nargs ? args[i] : dflt;
}

static const char *entry_kind(uint64_t e)
{
    return e == QED_ENTRY_UNALLOC ? "unallocated" : e == QED_ENTRY_ZERO ? "zero" : "data";
}

/* ---------------------------------------------------------------- header */

static void emit_features(uint64_t bits, vdk_emitter *e)
{
    static const char *const names[] = {"backing file", "need check",
                                        "backing format is raw (never probe)"};
    vdk_emit_list(e, "features");
    for (int b = 0; b < 64; b++) {
        if (!((bits >> b) & 1))
            continue;
        vdk_emit_open(e, NULL);
        vdk_emit_str(e, "type", "features");
        vdk_emit_int(e, "bit", b);
        vdk_emit_str(e, "name", b < 3 ? names[b] : "unknown");
        vdk_emit_bool(e, "known", b < 3);
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
}

static int q_header(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                    vdk_error *err)
{
    vdk_emit_u64(e, "magic", vdk_le32(s->hdr));
    vdk_emit_int(e, "cluster_size", s->cluster_size);
    vdk_emit_int(e, "table_size", s->table_size);
    vdk_emit_int(e, "header_size", s->header_size);
    vdk_emit_u64(e, "feature_bits", s->features);
    vdk_emit_u64(e, "compat_features", s->compat);
    vdk_emit_u64(e, "autoclear_features", s->autoclear);
    vdk_emit_u64(e, "l1_table_offset", s->l1_offset);
    vdk_emit_u64(e, "image_size", s->image_size);
    vdk_emit_u64(e, "backing_filename_offset", vdk_le32(s->hdr + 56));
    vdk_emit_u64(e, "backing_filename_size", vdk_le32(s->hdr + 60));
    if (s->backing_name)
        vdk_emit_str(e, "backing_file", s->backing_name);
    vdk_emit_u64(e, "table_entries", s->table_entries);
    vdk_emit_u64(e, "l2_coverage", qed_l2_coverage(s));
    vdk_emit_u64(e, "file_size", s->file_end);
    emit_features(s->features, e);
    return 0;
}

/* ---------------------------------------------------------------- L1 and L2 */

static int q_l1(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                vdk_error *err)
{
    int64_t first = arg_or(args, nargs, 0, 0), count = arg_or(args, nargs, 1, -1);
    uint64_t lo = first < 0 ? 0 : (uint64_t)first, hi = s->table_entries, used = 0;
    if (count >= 0 && lo < hi && (uint64_t)count < hi - lo)
        hi = lo + (uint64_t)count;
    vdk_emit_u64(e, "offset", s->l1_offset);
    vdk_emit_u64(e, "table_entries", s->table_entries);
    vdk_emit_u64(e, "l2_coverage", qed_l2_coverage(s));
    vdk_emit_list(e, "entries");
    for (uint64_t i = lo; i < hi; i++) {
        uint64_t off = vdk_le64(&s->l1[i]);
        if (!off)
            continue;
        used++;
        vdk_error cerr;
        vdk_error_clear(&cerr);
        vdk_emit_open(e, NULL);
        vdk_emit_u64(e, "index", i);
        vdk_emit_u64(e, "guest_offset", i * qed_l2_coverage(s));
        vdk_emit_u64(e, "l2_offset", off);
        if (qed_check_table_offset(s, off, i, &cerr) < 0)
            vdk_emit_str(e, "error", cerr.msg);
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
    vdk_emit_u64(e, "allocated", used);
    return 0;
}

static void emit_l2_entries(qed_state *s, const uint8_t *t, uint64_t l1i, uint64_t l2off,
                            vdk_emitter *e)
{
    uint64_t counts[3] = {0}, bad = 0;
    vdk_emit_list(e, "entries");
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t v = vdk_le64(t + i * 8);
        if (v == QED_ENTRY_UNALLOC) {
            counts[0]++;
            continue;
        }
        vdk_error cerr;
        vdk_error_clear(&cerr);
        vdk_emit_open(e, NULL);
        vdk_emit_u64(e, "index", i);
        vdk_emit_u64(e, "guest_offset", ((l1i << s->table_bits) + i) << s->cluster_bits);
        vdk_emit_u64(e, "raw", v);
        vdk_emit_str(e, "kind", entry_kind(v));
        if (v > QED_ENTRY_ZERO) {
            vdk_emit_u64(e, "host_offset", v);
            if (qed_check_cluster_offset(s, v, l2off, i, &cerr) < 0) {
                vdk_emit_str(e, "error", cerr.msg);
                bad++;
            }
        }
        counts[v == QED_ENTRY_ZERO ? 1 : 2]++;
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
    vdk_emit_open(e, "counts");
    vdk_emit_u64(e, "unallocated", counts[0]);
    vdk_emit_u64(e, "zero", counts[1]);
    vdk_emit_u64(e, "data", counts[2]);
    vdk_emit_u64(e, "invalid", bad);
    vdk_emit_close(e);
}

static int q_l2(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                vdk_error *err)
{
    int64_t l1i = arg_or(args, nargs, 0, -1);
    if (l1i < 0 || (uint64_t)l1i >= s->table_entries)
        return vdk_fail(err, -EINVAL, "qed: L1 index %lld is outside the L1 table (%llu "
                        "entries)", (long long)l1i, (unsigned long long)s->table_entries);
    uint64_t off = vdk_le64(&s->l1[l1i]);
    vdk_emit_u64(e, "l1_index", (uint64_t)l1i);
    vdk_emit_u64(e, "guest_offset", (uint64_t)l1i * qed_l2_coverage(s));
    vdk_emit_u64(e, "guest_length", qed_l2_coverage(s));
    vdk_emit_bool(e, "allocated", off != 0);
    if (!off)
        return 0;
    vdk_emit_u64(e, "offset", off);
    vdk_emit_u64(e, "length", s->table_bytes);
    uint8_t *t;
    int r = qed_l2_get(s, (uint64_t)l1i, &t, err);
    if (r < 0)
        return r;
    emit_l2_entries(s, t, (uint64_t)l1i, off, e);
    qed_l2_put(s, &t);
    return 0;
}

/* ---------------------------------------------------------------- explain */

static void emit_step(vdk_emitter *e, const char *structure, uint64_t table, uint64_t index,
                      uint64_t raw, const char *says)
{
    vdk_emit_open(e, NULL);
    vdk_emit_str(e, "structure", structure);
    vdk_emit_u64(e, "table_offset", table);
    vdk_emit_u64(e, "index", index);
    vdk_emit_u64(e, "entry_offset", table + index * 8);
    vdk_emit_u64(e, "raw", raw);
    vdk_emit_str(e, "says", says);
    vdk_emit_close(e);
}

static int q_explain(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                     vdk_error *err)
{
    int64_t arg = arg_or(args, nargs, 0, -1);
    if (arg < 0 || (uint64_t)arg >= s->image_size)
        return vdk_fail(err, -EINVAL, "qed: guest offset %lld is outside the image (%llu "
                        "bytes)", (long long)arg, (unsigned long long)s->image_size);
    uint64_t off = (uint64_t)arg, gc = off >> s->cluster_bits, l1i = qed_l1_index(s, off);
    uint64_t l2i = qed_l2_index(s, off), l2off = vdk_le64(&s->l1[l1i]), entry = 0;
    char says[160];
    vdk_emit_u64(e, "guest_offset", off);
    vdk_emit_u64(e, "cluster_size", s->cluster_size);
    vdk_emit_u64(e, "guest_cluster", gc);
    vdk_emit_list(e, "steps");
    snprintf(says, sizeof says, l2off ? "L2 table at 0x%llx" : "no L2 table: unallocated",
             (unsigned long long)l2off);
    emit_step(e, "L1 table", s->l1_offset, l1i, l2off, says);
    int r = 0;
    if (l2off) {
        r = qed_entry_get(s, gc, &entry, err);
        if (r == 0) {
            snprintf(says, sizeof says, entry > QED_ENTRY_ZERO ? "data cluster at 0x%llx"
                     : entry ? "zero cluster" : "unallocated", (unsigned long long)entry);
            emit_step(e, "L2 table", l2off, l2i, entry, says);
        }
    }
    vdk_emit_close(e);
    if (r < 0)
        return r;
    uint64_t host = entry + (off & (s->cluster_size - 1));
    vdk_emit_open(e, "result");
    vdk_emit_str(e, "kind", entry_kind(entry));
    if (entry > QED_ENTRY_ZERO) {
        vdk_emit_u64(e, "host_offset", host);
        vdk_emit_str(e, "file", vdk_file_name(s->file));
        vdk_emit_strf(e, "reads", "data stored at host offset 0x%llx of %s",
                      (unsigned long long)host, vdk_file_name(s->file));
    } else if (entry == QED_ENTRY_ZERO) {
        vdk_emit_str(e, "reads", "zeros (zero cluster)");
    } else {
        vdk_emit_bool(e, "backing", qed_has_backing(s));
        vdk_emit_str(e, "reads", qed_has_backing(s) ? "whatever the backing file has there"
                                                    : "zeros (no backing file)");
    }
    vdk_emit_close(e);
    return 0;
}

/* ---------------------------------------------------------------- refmap, layout */

static void emit_ref(vdk_emitter *e, const char *what, uint64_t off, uint64_t len,
                     int64_t guest)
{
    vdk_emit_open(e, NULL);
    vdk_emit_str(e, "what", what);
    vdk_emit_u64(e, "offset", off);
    vdk_emit_u64(e, "length", len);
    if (guest >= 0)
        vdk_emit_int(e, "guest_offset", guest);
    vdk_emit_close(e);
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* Data references of one L2 table to the cluster [c, c + cs). */
static uint64_t refmap_table(qed_state *s, const uint8_t *t, uint64_t l1i, uint64_t c,
                             vdk_emitter *e)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t v = vdk_le64(t + i * 8);
        if (v > QED_ENTRY_ZERO && overlaps(v, s->cluster_size, c, s->cluster_size)) {
            emit_ref(e, "data", v, s->cluster_size,
                     (int64_t)((((l1i << s->table_bits) + i)) << s->cluster_bits));
            n++;
        }
    }
    return n;
}

/* L2 entries a reverse map reads at most (2^28: 16 TiB of 64 KiB clusters);
 * a damaged L1 table listing one L2 table many times cannot make it hang. */
#define REFMAP_BUDGET (UINT64_C(1) << 28)

static int q_refmap(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                    vdk_error *err)
{
    int64_t arg = arg_or(args, nargs, 0, -1);
    if (arg < 0)
        return vdk_fail(err, -EINVAL, "qed: host offset %lld is invalid", (long long)arg);
    uint64_t c = (uint64_t)arg & ~((uint64_t)s->cluster_size - 1), n = 0, bad = 0;
    vdk_emit_u64(e, "cluster_offset", c);
    vdk_emit_list(e, "references");
    if (overlaps(0, qed_header_end(s), c, s->cluster_size) && ++n)
        emit_ref(e, "header", 0, qed_header_end(s), -1);
    if (overlaps(s->l1_offset, s->table_bytes, c, s->cluster_size) && ++n)
        emit_ref(e, "L1 table", s->l1_offset, s->table_bytes, -1);
    uint64_t budget = REFMAP_BUDGET;
    bool incomplete = false;
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t off = vdk_le64(&s->l1[i]);
        uint8_t *t;
        if (!off)
            continue;
        if (budget < s->table_entries) {
            incomplete = true;
            break;
        }
        budget -= s->table_entries;
        if (overlaps(off, s->table_bytes, c, s->cluster_size) && ++n)
            emit_ref(e, "L2 table", off, s->table_bytes, (int64_t)(i * qed_l2_coverage(s)));
        if (qed_l2_get(s, i, &t, NULL) < 0) {
            bad++;
            continue;
        }
        n += refmap_table(s, t, i, c, e);
        qed_l2_put(s, &t);
    }
    vdk_emit_close(e);
    vdk_emit_u64(e, "count", n);
    vdk_emit_u64(e, "invalid_tables", bad);
    vdk_emit_bool(e, "incomplete", incomplete);
    return 0;
}

static int q_layout(qed_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                    vdk_error *err)
{
    uint64_t n = 2;
    vdk_emit_list(e, "structures");
    emit_ref(e, "header", 0, qed_header_end(s), -1);
    emit_ref(e, "L1 table", s->l1_offset, s->table_bytes, -1);
    for (uint64_t i = 0; i < s->table_entries; i++) {
        uint64_t off = vdk_le64(&s->l1[i]);
        if (off && ++n)
            emit_ref(e, "L2 table", off, s->table_bytes, (int64_t)(i * qed_l2_coverage(s)));
    }
    vdk_emit_close(e);
    vdk_emit_u64(e, "count", n);
    vdk_emit_bool(e, "truncated", false);
    vdk_emit_u64(e, "file_size", s->file_end);
    vdk_emit_u64(e, "cluster_size", s->cluster_size);
    return 0;
}

/* ---------------------------------------------------------------- stats */

/* From the consistency scan (it takes the lock itself). */
static int stats(vdk_image *img, vdk_emitter *e, vdk_error *err)
{
    qed_check_report rep;
    memset(&rep, 0, sizeof rep);
    int r = qed_check_image(img, 0, &rep, err);
    if (r == 0) {
        vdk_emit_u64(e, "total_clusters", rep.total_clusters);
        vdk_emit_u64(e, "allocated_clusters", rep.allocated_clusters);
        vdk_emit_u64(e, "fragmented_clusters", rep.fragmented_clusters);
        vdk_emit_u64(e, "compressed_clusters", 0);
        vdk_emit_u64(e, "image_end_offset", rep.image_end_offset);
        vdk_emit_u64(e, "file_size", rep.file_size);
        vdk_emit_u64(e, "l2_tables", rep.l2_tables);
        vdk_emit_u64(e, "corruptions", rep.corruptions);
        vdk_emit_u64(e, "leaks", rep.leaks);
        vdk_emit_u64(e, "check_errors", rep.check_errors);
    }
    qed_check_report_free(&rep);
    return r;
}

/* ---------------------------------------------------------------- the slot */

static const struct {
    const char *name;
    query_fn fn;
    const char *args;
} queries[] = {
    {"queries", NULL, ""},
    {"header", q_header, ""},
    {"l1", q_l1, "[first, count]"},
    {"l2", q_l2, "l1_index"},
    {"explain", q_explain, "guest_offset"},
    {"refmap", q_refmap, "host_offset"},
    {"stats", NULL, ""},
    {"layout", q_layout, ""},
};
#define NQUERIES (sizeof queries / sizeof queries[0])

static void list_queries(vdk_emitter *e)
{
    vdk_emit_list(e, "queries");
    for (size_t i = 0; i < NQUERIES; i++) {
        vdk_emit_open(e, NULL);
        vdk_emit_str(e, "name", queries[i].name);
        vdk_emit_str(e, "args", queries[i].args);
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
}

int qed_inspect(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                vdk_emitter *out, vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    if (strcmp(query, "queries") == 0) {
        list_queries(out);
        return 0;
    }
    if (strcmp(query, "stats") == 0)
        return stats(img, out, err);
    for (size_t i = 0; i < NQUERIES; i++) {
        if (!queries[i].fn || strcmp(query, queries[i].name) != 0)
            continue;
        pthread_mutex_lock(&s->lock);
        int r = queries[i].fn(s, args, nargs, out, err);
        pthread_mutex_unlock(&s->lock);
        return r;
    }
    return vdk_fail(err, VDK_EUNSUPPORTED, "qed: unknown inspection query '%s'", query);
}
