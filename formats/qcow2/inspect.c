/*
 * inspect.c - the qcow2 driver's inspect slot: named, read-only queries that
 * describe the image's structures as tables (vdk_image_inspect, core/vdk.h):
 *
 *   header       every header field, the feature bits with their names (from
 *                the image's feature name table when it has one)
 *   extensions   the header extensions of cluster 0, decoded
 *   snapshots    the snapshot table, entry by entry
 *   l1           an L1 table (active or a snapshot's): args {snapshot, first, count}
 *   l2           one L2 table, entries decoded: args {l1_index, snapshot}
 *   refcount     the refcount of the host cluster at args {host_offset [, count]}
 *   explain      how guest offset args {offset [, snapshot]} resolves in this layer
 *   refmap, stats, layout: inspect-scan.c
 *
 * Snapshot arguments are indexes into the snapshot table, -1 for the active
 * image. Entries are decoded by the driver's own code (qcow2_decode,
 * qcow2_lookup), so what is shown is what a read does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect.h"

/* ---------------------------------------------------------------- shared helpers */

int qcow2_l1view_load(qcow2_state *s, int64_t snap, qcow2_l1view *v, vdk_error *err)
{
    memset(v, 0, sizeof *v);
    v->snap = -1;
    if (snap >= 0 && (uint64_t)snap >= s->nb_snapshots)
        return vdk_fail(err, -EINVAL, "qcow2: no snapshot with index %lld (the image has %u)",
                        (long long)snap, s->nb_snapshots);
    v->n = snap < 0 ? s->l1_size : s->snaps[snap].l1_size;
    v->offset = snap < 0 ? s->l1_offset : s->snaps[snap].l1_offset;
    v->snap = snap < 0 ? -1 : (int)snap;
    /* A snapshot's table may come from a damaged entry (images opened for
     * checking): bound it by the format's limit and the file. */
    if (snap >= 0 && (v->n * 8 > QCOW2_MAX_L1_BYTES || v->offset > s->file_size ||
                      v->n * 8 > s->file_size - v->offset))
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: snapshot %lld: L1 table at 0x%llx (%llu "
                        "entries) lies outside the file", (long long)snap,
                        (unsigned long long)v->offset, (unsigned long long)v->n);
    v->e = calloc(v->n ? v->n : 1, 8);
    if (!v->e)
        return vdk_fail(err, -ENOMEM, "out of memory");
    if (snap < 0) {
        memcpy(v->e, s->l1, v->n * 8);
        return 0;
    }
    /* The snapshot's table was checked at open to lie inside the file. */
    int r = vdk_file_pread(s->file, v->e, v->n * 8, v->offset, err);
    for (uint64_t i = 0; r == 0 && i < v->n; i++)
        v->e[i] = vdk_be64(&v->e[i]);
    if (r < 0)
        qcow2_l1view_free(v);
    return r;
}

void qcow2_l1view_free(qcow2_l1view *v)
{
    free(v->e);
    v->e = NULL;
}

const char *qcow2_owner_name(const qcow2_state *s, int snap, char *buf, size_t n)
{
    if (snap < 0 || (uint32_t)snap >= s->nb_snapshots)
        snprintf(buf, n, "active");
    else
        snprintf(buf, n, "snapshot %s (%s)", s->snaps[snap].id, s->snaps[snap].name);
    return buf;
}

int qcow2_l2_fetch(qcow2_state *s, uint64_t l1_index, uint64_t off, uint8_t **t,
                   vdk_error *err)
{
    *t = NULL;
    int r = qcow2_check_l2_offset(s, l1_index, off, err);
    return r < 0 ? r : vdk_cache_get(s->l2_cache, off, (void **)t, err);
}

/* ---------------------------------------------------------------- header */

/* Names of the feature bits vdk knows (qemu's feature table spells them so). */
static const char *known_feature(int type, int bit)
{
    static const char *const incompat[] = {"dirty bit", "corrupt bit", "external data file",
                                           "compression type", "extended L2 entries"};
    static const char *const autoclear[] = {"bitmaps", "raw external data"};
    if (type == 0 && bit < 5)
        return incompat[bit];
    if (type == 1 && bit == 0)
        return "lazy refcounts";
    if (type == 2 && bit < 2)
        return autoclear[bit];
    return NULL;
}

static const char *const feature_types[] = {"incompatible", "compatible", "autoclear"};

static void emit_features(qcow2_state *s, vdk_emitter *e)
{
    uint64_t bits[3] = {s->incompat, s->compat, s->autoclear};
    vdk_emit_list(e, "features");
    for (int t = 0; t < 3; t++) {
        for (int b = 0; b < 64; b++) {
            if (!((bits[t] >> b) & 1))
                continue;
            const char *kn = known_feature(t, b), *tn = qcow2_feature_name(s, t, b);
            vdk_emit_open(e, NULL);
            vdk_emit_str(e, "type", feature_types[t]);
            vdk_emit_int(e, "bit", b);
            vdk_emit_str(e, "name", tn ? tn : kn ? kn : "unknown");
            vdk_emit_str(e, "name_from", tn ? "feature table" : kn ? "vdk" : "none");
            vdk_emit_bool(e, "known", kn != NULL);
            vdk_emit_close(e);
        }
    }
    vdk_emit_close(e);
}

/* The feature name table extension, entry by entry (48 bytes each). */
static void emit_feature_table(const uint8_t *d, uint32_t len, vdk_emitter *e)
{
    vdk_emit_list(e, "feature_table");
    for (uint32_t i = 0; i + 48 <= len; i += 48) {
        char name[47];
        memcpy(name, d + i + 2, 46);
        name[46] = '\0';
        for (char *p = name; *p; p++)
            if ((unsigned char)*p < 32 || (unsigned char)*p > 126)
                *p = '?';
        vdk_emit_open(e, NULL);
        vdk_emit_str(e, "type", d[i] < 3 ? feature_types[d[i]] : "unknown");
        vdk_emit_int(e, "bit", d[i + 1]);
        vdk_emit_str(e, "name", name);
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
}

static int q_header(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                    vdk_error *err)
{
    const uint8_t *h = s->hdr;
    vdk_emit_u64(e, "magic", vdk_be32(h));
    vdk_emit_int(e, "version", s->version);
    vdk_emit_u64(e, "backing_file_offset", vdk_be64(h + 8));
    vdk_emit_int(e, "backing_file_size", vdk_be32(h + 16));
    vdk_emit_int(e, "cluster_bits", s->cluster_bits);
    vdk_emit_u64(e, "cluster_size", s->cluster_size);
    vdk_emit_u64(e, "size", s->size);
    vdk_emit_int(e, "crypt_method", vdk_be32(h + 32));
    vdk_emit_int(e, "l1_size", s->l1_size);
    vdk_emit_u64(e, "l1_table_offset", s->l1_offset);
    vdk_emit_u64(e, "refcount_table_offset", s->rt_offset);
    vdk_emit_int(e, "refcount_table_clusters", s->rt_clusters);
    vdk_emit_int(e, "nb_snapshots", s->nb_snapshots);
    vdk_emit_u64(e, "snapshots_offset", s->snapshots_offset);
    vdk_emit_u64(e, "incompatible_features", s->incompat);
    vdk_emit_u64(e, "compatible_features", s->compat);
    vdk_emit_u64(e, "autoclear_features", s->autoclear);
    vdk_emit_int(e, "refcount_order", s->refcount_order);
    vdk_emit_int(e, "refcount_bits", 1 << s->refcount_order);
    vdk_emit_int(e, "header_length", s->header_length);
    vdk_emit_str(e, "compression_type", s->compression_type ? "zstd" : "zlib");
    vdk_emit_bool(e, "extended_l2", s->ext_l2);
    vdk_emit_int(e, "l2_entries", 1 << s->l2_bits);
    vdk_emit_u64(e, "l2_coverage", qcow2_l2_coverage(s));
    if (s->backing_name)
        vdk_emit_str(e, "backing_file", s->backing_name);
    if (s->backing_fmt)
        vdk_emit_str(e, "backing_format", s->backing_fmt);
    if (s->data_file_name)
        vdk_emit_str(e, "data_file", s->data_file_name);
    vdk_emit_u64(e, "file_size", s->file_size);
    emit_features(s, e);
    if (s->features)
        emit_feature_table(s->features, s->features_len, e);
    return 0;
}

/* ---------------------------------------------------------------- extensions */

static const char *ext_name(uint32_t type)
{
    switch (type) {
    case QCOW2_EXT_BACKING_FMT: return "backing format";
    case QCOW2_EXT_FEATURES: return "feature name table";
    case QCOW2_EXT_BITMAPS: return "bitmaps";
    case QCOW2_EXT_CRYPTO: return "full disk encryption header pointer";
    case QCOW2_EXT_DATA_FILE: return "external data file";
    default: return "unknown";
    }
}

/* What one extension holds, decoded where vdk knows the type. */
static void emit_ext_data(uint32_t type, const uint8_t *d, uint32_t len, vdk_emitter *e)
{
    if (type == QCOW2_EXT_BACKING_FMT || type == QCOW2_EXT_DATA_FILE) {
        e->string(e, "value", (const char *)d, len);
    } else if (type == QCOW2_EXT_FEATURES) {
        emit_feature_table(d, len, e);
    } else if (type == QCOW2_EXT_BITMAPS && len >= 24) {
        vdk_emit_int(e, "nb_bitmaps", vdk_be32(d));
        vdk_emit_u64(e, "bitmap_directory_size", vdk_be64(d + 8));
        vdk_emit_u64(e, "bitmap_directory_offset", vdk_be64(d + 16));
    } else if (type == QCOW2_EXT_CRYPTO && len >= 16) {
        vdk_emit_u64(e, "crypto_header_offset", vdk_be64(d));
        vdk_emit_u64(e, "crypto_header_length", vdk_be64(d + 8));
    } else {
        char hex[2 * 32 + 1];
        uint32_t n = len < 32 ? len : 32;
        for (uint32_t i = 0; i < n; i++)
            snprintf(hex + 2 * i, 3, "%02x", d[i]);
        e->string(e, "data_hex", hex, 2 * n);
    }
}

static int q_extensions(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                        vdk_error *err)
{
    uint64_t end = s->cluster_size < s->file_size ? s->cluster_size : s->file_size;
    uint8_t *c0 = malloc(end ? end : 1);
    if (!c0)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = vdk_file_pread(s->file, c0, end, 0, err);
    uint64_t off = s->header_length;
    vdk_emit_list(e, "extensions");
    while (r == 0 && off + 8 <= end) {
        uint32_t type = vdk_be32(c0 + off), len = vdk_be32(c0 + off + 4);
        vdk_emit_open(e, NULL);
        vdk_emit_u64(e, "offset", off);
        vdk_emit_int(e, "type", type);
        vdk_emit_str(e, "name", type == QCOW2_EXT_END ? "end of extensions" : ext_name(type));
        vdk_emit_int(e, "length", len);
        bool stop = type == QCOW2_EXT_END || len > end - off - 8;
        if (type != QCOW2_EXT_END && len > end - off - 8)
            vdk_emit_str(e, "error", "the extension overflows the header cluster");
        else if (type != QCOW2_EXT_END)
            emit_ext_data(type, c0 + off + 8, len, e);
        vdk_emit_close(e);
        if (stop)
            break;
        off += 8 + (((uint64_t)len + 7) & ~UINT64_C(7));
    }
    vdk_emit_close(e);
    free(c0);
    if (r == 0 && s->backing_name) {
        vdk_emit_open(e, "backing_file");
        vdk_emit_u64(e, "offset", vdk_be64(s->hdr + 8));
        vdk_emit_int(e, "length", vdk_be32(s->hdr + 16));
        vdk_emit_str(e, "value", s->backing_name);
        vdk_emit_close(e);
    }
    return r;
}

/* ---------------------------------------------------------------- snapshots */

/* One snapshot table entry at *off (checked at open), fields as stored. */
static int emit_snapshot(qcow2_state *s, uint32_t i, uint64_t *off, vdk_emitter *e,
                         vdk_error *err)
{
    uint8_t f[40 + 24];
    memset(f, 0, sizeof f);
    uint64_t at = *off;
    int r = vdk_file_pread(s->file, f, sizeof f, at, err);
    if (r < 0)
        return r;
    uint32_t extra = vdk_be32(f + 36), id_len = vdk_be16(f + 12), name_len = vdk_be16(f + 14);
    vdk_emit_open(e, NULL);
    vdk_emit_int(e, "index", i);
    vdk_emit_str(e, "id", s->snaps[i].id);
    vdk_emit_str(e, "name", s->snaps[i].name);
    vdk_emit_u64(e, "entry_offset", at);
    vdk_emit_u64(e, "l1_table_offset", vdk_be64(f));
    vdk_emit_int(e, "l1_size", vdk_be32(f + 8));
    vdk_emit_int(e, "date_sec", vdk_be32(f + 16));
    vdk_emit_int(e, "date_nsec", vdk_be32(f + 20));
    vdk_emit_u64(e, "vm_clock_nsec", vdk_be64(f + 24));
    vdk_emit_u64(e, "vm_state_size", extra >= 8 ? vdk_be64(f + 40) : vdk_be32(f + 32));
    if (extra >= 16)
        vdk_emit_u64(e, "disk_size", vdk_be64(f + 48));
    if (extra >= 24)
        vdk_emit_int(e, "icount", (int64_t)vdk_be64(f + 56));
    vdk_emit_int(e, "extra_data_size", extra);
    vdk_emit_close(e);
    *off = at + ((40 + (uint64_t)extra + id_len + name_len + 7) & ~UINT64_C(7));
    return 0;
}

static int q_snapshots(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                       vdk_error *err)
{
    vdk_emit_u64(e, "table_offset", s->snapshots_offset);
    vdk_emit_u64(e, "table_size", s->snapshots_size);
    vdk_emit_int(e, "count", s->nb_snapshots);
    vdk_emit_list(e, "snapshots");
    uint64_t off = s->snapshots_offset;
    int r = 0;
    for (uint32_t i = 0; r == 0 && s->snaps && i < s->nb_snapshots; i++)
        r = emit_snapshot(s, i, &off, e, err);
    vdk_emit_close(e);
    return r;
}

/* ---------------------------------------------------------------- L1 */

static int q_l1(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                vdk_error *err)
{
    qcow2_l1view v;
    int r = qcow2_l1view_load(s, qcow2_arg(args, nargs, 0, -1), &v, err);
    if (r < 0)
        return r;
    int64_t first = qcow2_arg(args, nargs, 1, 0), count = qcow2_arg(args, nargs, 2, -1);
    uint64_t lo = first < 0 ? 0 : (uint64_t)first, hi = v.n;
    if (count >= 0 && (uint64_t)count < hi - (lo < hi ? lo : hi))
        hi = lo + (uint64_t)count;
    char owner[300];
    vdk_emit_str(e, "owner", qcow2_owner_name(s, v.snap, owner, sizeof owner));
    vdk_emit_u64(e, "offset", v.offset);
    vdk_emit_u64(e, "table_entries", v.n);
    vdk_emit_u64(e, "l2_coverage", qcow2_l2_coverage(s));
    uint64_t used = 0;
    vdk_emit_list(e, "entries");
    for (uint64_t i = lo; i < hi && i < v.n; i++) {
        uint64_t raw = v.e[i], off = raw & QCOW2_OFFSET_MASK;
        if (!raw)
            continue;
        used++;
        vdk_emit_open(e, NULL);
        vdk_emit_u64(e, "index", i);
        vdk_emit_u64(e, "guest_offset", i * qcow2_l2_coverage(s));
        vdk_emit_u64(e, "raw", raw);
        vdk_emit_u64(e, "l2_offset", off);
        vdk_emit_bool(e, "copied", raw & QCOW2_OFLAG_COPIED);
        uint64_t reserved = raw & ~(QCOW2_OFFSET_MASK | QCOW2_OFLAG_COPIED);
        if (reserved)
            vdk_emit_u64(e, "reserved_bits", reserved);
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
    vdk_emit_u64(e, "allocated", used);
    qcow2_l1view_free(&v);
    return 0;
}

/* ---------------------------------------------------------------- L2 */

static const char *const kind_names[] = {"unallocated", "zero", "data", "compressed"};

/* Subclusters as 32 characters: D allocated, Z zero, . unallocated. */
static void emit_subclusters(const qcow2_cinfo *ci, vdk_emitter *e)
{
    char map[QCOW2_SUBCLUSTERS + 1];
    for (int i = 0; i < QCOW2_SUBCLUSTERS; i++)
        map[i] = (ci->alloc >> i) & 1 ? 'D' : (ci->zero >> i) & 1 ? 'Z' : '.';
    map[QCOW2_SUBCLUSTERS] = '\0';
    vdk_emit_open(e, "subclusters");
    vdk_emit_u64(e, "allocated", ci->alloc);
    vdk_emit_u64(e, "zero", ci->zero);
    vdk_emit_str(e, "map", map);
    vdk_emit_close(e);
}

/* The kind of a whole decoded cluster ("mixed" for subclusters of several). */
static const char *cluster_kind(const qcow2_state *s, const qcow2_cinfo *ci)
{
    uint32_t all = s->nsub == 32 ? UINT32_MAX : 1;
    if (ci->compressed)
        return "compressed";
    if (ci->alloc == all)
        return "data";
    if (ci->zero == all)
        return "zero";
    if (!ci->alloc && !ci->zero)
        return "unallocated";
    return ci->alloc && ci->zero ? "mixed" : ci->alloc ? "partly data" : "partly zero";
}

/* A decoded entry's fields (without its index). */
static void emit_cinfo(qcow2_state *s, const qcow2_cinfo *ci, vdk_emitter *e)
{
    vdk_emit_u64(e, "raw", ci->word);
    if (s->ext_l2)
        vdk_emit_u64(e, "bitmap", ci->bitmap);
    vdk_emit_str(e, "kind", cluster_kind(s, ci));
    vdk_emit_bool(e, "copied", (ci->word & QCOW2_OFLAG_COPIED) != 0);
    if (ci->compressed) {
        uint64_t off, len, coff = ci->word & s->coffset_mask;
        qcow2_compressed_range(s, ci->word, &off, &len);
        vdk_emit_u64(e, "compressed_offset", coff);
        vdk_emit_u64(e, "compressed_sectors", len / 512);
        vdk_emit_u64(e, "compressed_size", len - (coff - off));
        return;
    }
    if (ci->has_host)
        vdk_emit_u64(e, "host_offset", ci->host);
    if (!s->ext_l2)
        vdk_emit_bool(e, "zero_flag", (ci->word & QCOW2_OFLAG_ZERO) != 0);
    else
        emit_subclusters(ci, e);
}

/* Entries of table t (L1 index l1i), the non-empty ones; counts per kind. */
static void emit_l2_entries(qcow2_state *s, const uint8_t *t, uint64_t l1i, vdk_emitter *e)
{
    uint64_t n = UINT64_C(1) << s->l2_bits, counts[4] = {0}, bad = 0;
    vdk_emit_list(e, "entries");
    for (uint64_t i = 0; i < n; i++) {
        uint64_t word, bitmap, gc = (l1i << s->l2_bits) + i;
        qcow2_l2_entry_read(s, t, i, &word, &bitmap);
        if (!word && !bitmap) {
            counts[QCOW2_UNALLOC]++;
            continue;
        }
        qcow2_cinfo ci;
        vdk_error derr;
        vdk_error_clear(&derr);
        int r = qcow2_decode(s, gc, word, bitmap, &ci, &derr);
        vdk_emit_open(e, NULL);
        vdk_emit_u64(e, "index", i);
        vdk_emit_u64(e, "guest_offset", gc << s->cluster_bits);
        if (r < 0) {
            bad++;
            vdk_emit_u64(e, "raw", word);
            vdk_emit_str(e, "error", derr.msg);
        } else {
            emit_cinfo(s, &ci, e);
            counts[ci.compressed ? QCOW2_COMPRESSED : ci.alloc ? QCOW2_DATA
                   : ci.zero ? QCOW2_ZERO : QCOW2_UNALLOC]++;
        }
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
    vdk_emit_open(e, "counts");
    for (int k = 0; k < 4; k++)
        vdk_emit_u64(e, kind_names[k], counts[k]);
    vdk_emit_u64(e, "invalid", bad);
    vdk_emit_close(e);
}

static int q_l2(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                vdk_error *err)
{
    int64_t l1i = qcow2_arg(args, nargs, 0, -1);
    qcow2_l1view v;
    int r = qcow2_l1view_load(s, qcow2_arg(args, nargs, 1, -1), &v, err);
    if (r < 0)
        return r;
    if (l1i < 0 || (uint64_t)l1i >= v.n) {
        qcow2_l1view_free(&v);
        return vdk_fail(err, -EINVAL, "qcow2: L1 index %lld is outside the L1 table (%llu "
                        "entries)", (long long)l1i, (unsigned long long)v.n);
    }
    uint64_t raw = v.e[l1i], off = raw & QCOW2_OFFSET_MASK;
    char owner[300];
    vdk_emit_str(e, "owner", qcow2_owner_name(s, v.snap, owner, sizeof owner));
    qcow2_l1view_free(&v);
    vdk_emit_u64(e, "l1_index", (uint64_t)l1i);
    vdk_emit_u64(e, "l1_entry", raw);
    vdk_emit_u64(e, "guest_offset", (uint64_t)l1i * qcow2_l2_coverage(s));
    vdk_emit_u64(e, "guest_length", qcow2_l2_coverage(s));
    vdk_emit_int(e, "entry_size", 1 << s->l2_entry_shift);
    if (!off) {
        vdk_emit_bool(e, "allocated", false);
        return 0;
    }
    vdk_emit_bool(e, "allocated", true);
    vdk_emit_u64(e, "offset", off);
    vdk_emit_bool(e, "copied", raw & QCOW2_OFLAG_COPIED);
    uint8_t *t;
    r = qcow2_l2_fetch(s, (uint64_t)l1i, off, &t, err);
    if (r < 0)
        return r;
    emit_l2_entries(s, t, (uint64_t)l1i, e);
    qcow2_l2_put(s, &t);
    return 0;
}

/* ---------------------------------------------------------------- refcount */

static int emit_refcount(qcow2_state *s, uint64_t c, vdk_emitter *e, vdk_error *err)
{
    uint64_t rc, ti = c >> s->rb_bits;
    int r = qcow2_refcount_get(s, c, &rc, err);
    if (r < 0)
        return r;
    vdk_emit_u64(e, "cluster", c);
    vdk_emit_u64(e, "offset", c << s->cluster_bits);
    vdk_emit_u64(e, "refcount", rc);
    vdk_emit_u64(e, "table_index", ti);
    vdk_emit_u64(e, "block_index", c & ((UINT64_C(1) << s->rb_bits) - 1));
    if (ti < s->rt_size && (s->rt[ti] & QCOW2_RT_OFFSET_MASK))
        vdk_emit_u64(e, "block_offset", s->rt[ti] & QCOW2_RT_OFFSET_MASK);
    vdk_emit_bool(e, "past_end_of_file", (c << s->cluster_bits) >= s->file_size);
    return 0;
}

static int q_refcount(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                      vdk_error *err)
{
    int64_t off = qcow2_arg(args, nargs, 0, -1), count = qcow2_arg(args, nargs, 1, 0);
    if (off < 0 || (uint64_t)off >= QCOW2_MAX_HOST_OFFSET)
        return vdk_fail(err, -EINVAL, "qcow2: host offset %lld is invalid", (long long)off);
    uint64_t c = (uint64_t)off >> s->cluster_bits;
    vdk_emit_int(e, "refcount_bits", 1 << s->refcount_order);
    int r = emit_refcount(s, c, e, err);
    if (r < 0 || count <= 0)
        return r;
    if (count > 65536)
        count = 65536;
    vdk_emit_list(e, "refcounts");
    for (int64_t i = 0; r == 0 && i < count; i++) {
        uint64_t rc;
        r = qcow2_refcount_get(s, c + (uint64_t)i, &rc, err);
        if (r == 0)
            vdk_emit_u64(e, NULL, rc);
    }
    vdk_emit_close(e);
    return r;
}

/* ---------------------------------------------------------------- explain */

static void emit_l1_step(qcow2_state *s, const qcow2_l1view *v, uint64_t l1i, vdk_emitter *e)
{
    uint64_t raw = l1i < v->n ? v->e[l1i] : 0, off = raw & QCOW2_OFFSET_MASK;
    vdk_emit_open(e, NULL);
    vdk_emit_str(e, "structure", "L1 table");
    vdk_emit_u64(e, "table_offset", v->offset);
    vdk_emit_u64(e, "index", l1i);
    vdk_emit_u64(e, "entry_offset", v->offset + l1i * 8);
    vdk_emit_u64(e, "raw", raw);
    if (l1i >= v->n)
        vdk_emit_strf(e, "says", "index past the L1 table (%llu entries): unallocated",
                      (unsigned long long)v->n);
    else if (!off)
        vdk_emit_str(e, "says", "no L2 table: the whole range is unallocated here");
    else
        vdk_emit_strf(e, "says", "L2 table at 0x%llx%s", (unsigned long long)off,
                      raw & QCOW2_OFLAG_COPIED ? " (copied: refcount 1)"
                                               : " (shared with a snapshot)");
    vdk_emit_close(e);
}

static void emit_l2_step(qcow2_state *s, uint64_t l2off, uint64_t gc, const qcow2_cinfo *ci,
                         vdk_emitter *e)
{
    uint64_t idx = gc & ((UINT64_C(1) << s->l2_bits) - 1);
    vdk_emit_open(e, NULL);
    vdk_emit_str(e, "structure", "L2 table");
    vdk_emit_u64(e, "table_offset", l2off);
    vdk_emit_u64(e, "index", idx);
    vdk_emit_u64(e, "entry_offset", l2off + (idx << s->l2_entry_shift));
    emit_cinfo(s, ci, e);
    vdk_emit_close(e);
}

/* Decode the L2 entry of guest cluster gc in the table at l2off (of L1
 * entry l1i), as a read through that L1 table would. */
static int lookup_in(qcow2_state *s, uint64_t l1i, uint64_t l2off, uint64_t gc,
                     qcow2_cinfo *ci, vdk_error *err)
{
    uint8_t *t;
    int r = qcow2_l2_fetch(s, l1i, l2off, &t, err);
    if (r < 0)
        return r;
    uint64_t word, bitmap;
    qcow2_l2_entry_read(s, t, gc & ((UINT64_C(1) << s->l2_bits) - 1), &word, &bitmap);
    qcow2_l2_put(s, &t);
    return qcow2_decode(s, gc, word, bitmap, ci, err);
}

/* The last step: what a read of the byte at off returns from this layer. */
static void emit_result(qcow2_state *s, uint64_t off, int kind, const qcow2_cinfo *ci,
                        uint64_t host, vdk_emitter *e)
{
    vdk_emit_open(e, "result");
    vdk_emit_str(e, "kind", kind_names[kind]);
    if (kind == QCOW2_DATA) {
        vdk_emit_u64(e, "host_offset", host);
        vdk_emit_str(e, "file", vdk_file_name(s->data_file));
        vdk_emit_strf(e, "reads", "data stored at host offset 0x%llx of %s",
                      (unsigned long long)host, vdk_file_name(s->data_file));
    } else if (kind == QCOW2_ZERO) {
        vdk_emit_str(e, "reads", "zeros (the entry says the cluster reads as zero)");
    } else if (kind == QCOW2_COMPRESSED) {
        uint64_t coff = ci->word & s->coffset_mask, o, len;
        qcow2_compressed_range(s, ci->word, &o, &len);
        vdk_emit_u64(e, "compressed_offset", coff);
        vdk_emit_u64(e, "compressed_size", len - (coff - o));
        vdk_emit_u64(e, "offset_in_cluster", qcow2_offset_in_cluster(s, off));
        vdk_emit_strf(e, "reads", "byte %llu of the cluster decompressed (%s) from host "
                      "offset 0x%llx", (unsigned long long)qcow2_offset_in_cluster(s, off),
                      s->compression_type ? "zstd" : "zlib", (unsigned long long)coff);
    } else {
        vdk_emit_bool(e, "backing", qcow2_has_backing(s));
        vdk_emit_str(e, "reads", qcow2_has_backing(s) ? "whatever the backing file has there"
                                                      : "zeros (no backing file)");
    }
    vdk_emit_close(e);
}

/* The subcluster step (extended L2) and the kind of the byte at off. */
static int byte_kind(qcow2_state *s, uint64_t off, const qcow2_cinfo *ci, vdk_emitter *e)
{
    uint32_t sc = (uint32_t)(qcow2_offset_in_cluster(s, off) >> s->sc_bits);
    int kind = ci->compressed ? QCOW2_COMPRESSED : (ci->alloc >> sc) & 1 ? QCOW2_DATA
               : (ci->zero >> sc) & 1 ? QCOW2_ZERO : QCOW2_UNALLOC;
    if (s->ext_l2 && !ci->compressed) {
        vdk_emit_open(e, NULL);
        vdk_emit_str(e, "structure", "subcluster bitmap");
        vdk_emit_int(e, "index", sc);
        vdk_emit_u64(e, "subcluster_size", UINT64_C(1) << s->sc_bits);
        vdk_emit_str(e, "says", kind == QCOW2_DATA ? "allocated"
                     : kind == QCOW2_ZERO ? "reads as zero" : "unallocated");
        vdk_emit_close(e);
    }
    return kind;
}

/* args {guest_offset [, snapshot]}: through the active L1 table or a
 * snapshot's. */
static int q_explain(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                     vdk_error *err)
{
    int64_t arg = qcow2_arg(args, nargs, 0, -1);
    qcow2_l1view v;
    int r = qcow2_l1view_load(s, qcow2_arg(args, nargs, 1, -1), &v, err);
    if (r < 0)
        return r;
    uint64_t limit = v.snap < 0 ? s->size : v.n * qcow2_l2_coverage(s);
    if (arg < 0 || (uint64_t)arg >= limit) {
        qcow2_l1view_free(&v);
        return vdk_fail(err, -EINVAL, "qcow2: guest offset %lld is outside the image (%llu "
                        "bytes)", (long long)arg, (unsigned long long)limit);
    }
    uint64_t off = (uint64_t)arg, gc = off >> s->cluster_bits, l1i = gc >> s->l2_bits;
    char owner[300];
    vdk_emit_str(e, "owner", qcow2_owner_name(s, v.snap, owner, sizeof owner));
    vdk_emit_u64(e, "guest_offset", off);
    vdk_emit_u64(e, "cluster_size", s->cluster_size);
    vdk_emit_u64(e, "guest_cluster", gc);
    vdk_emit_list(e, "steps");
    emit_l1_step(s, &v, l1i, e);
    qcow2_cinfo ci;
    memset(&ci, 0, sizeof ci);
    int kind = QCOW2_UNALLOC;
    uint64_t l2off = l1i < v.n ? v.e[l1i] & QCOW2_OFFSET_MASK : 0;
    qcow2_l1view_free(&v);
    if (l2off) {
        r = lookup_in(s, l1i, l2off, gc, &ci, err);
        if (r == 0) {
            emit_l2_step(s, l2off, gc, &ci, e);
            kind = byte_kind(s, off, &ci, e);
        }
    }
    vdk_emit_close(e);
    if (r < 0)
        return r;
    emit_result(s, off, kind, &ci, ci.host + qcow2_offset_in_cluster(s, off), e);
    return 0;
}

/* ---------------------------------------------------------------- the slot */

static int q_queries(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                     vdk_error *err);

static const struct {
    const char *name;
    qcow2_query_fn fn;
    const char *args;
} queries[] = {
    {"queries", q_queries, ""},
    {"header", q_header, ""},
    {"extensions", q_extensions, ""},
    {"snapshots", q_snapshots, ""},
    {"l1", q_l1, "[snapshot, first, count]"},
    {"l2", q_l2, "l1_index [, snapshot]"},
    {"refcount", q_refcount, "host_offset [, count]"},
    {"explain", q_explain, "guest_offset [, snapshot]"},
    {"refmap", qcow2_q_refmap, "host_offset [, max_references]"},
    {"stats", qcow2_q_stats, ""},
    {"layout", qcow2_q_layout, "[max_structures]"},
};
#define NQUERIES (sizeof queries / sizeof queries[0])

static int q_queries(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *e,
                     vdk_error *err)
{
    vdk_emit_list(e, "queries");
    for (size_t i = 0; i < NQUERIES; i++) {
        vdk_emit_open(e, NULL);
        vdk_emit_str(e, "name", queries[i].name);
        vdk_emit_str(e, "args", queries[i].args);
        vdk_emit_close(e);
    }
    vdk_emit_close(e);
    return 0;
}

int qcow2_inspect(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                  vdk_emitter *out, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    for (size_t i = 0; i < NQUERIES; i++) {
        if (strcmp(query, queries[i].name) != 0)
            continue;
        pthread_mutex_lock(&s->lock);
        int r = queries[i].fn(s, args, nargs, out, err);
        pthread_mutex_unlock(&s->lock);
        return r;
    }
    return vdk_fail(err, VDK_EUNSUPPORTED, "qcow2: unknown inspection query '%s'", query);
}
