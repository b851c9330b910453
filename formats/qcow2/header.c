/*
 * header.c - the qcow2 header: reading and validating every field and
 * header extension of cluster 0, and writing it back (single fields, or the
 * whole header cluster with extensions regenerated and unknown extensions
 * kept byte for byte).
 *
 * Layout of the header fields: see qcow2.h. Validation happens before any
 * field is used to size an allocation or to address the file; every failure
 * names the field, its value and the cause.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* ---------------------------------------------------------------- feature names */

static const struct {
    int type, bit;
    const char *name;
} known_features[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};
#define NKNOWN (sizeof known_features / sizeof known_features[0])

/* Name of a feature bit from the image's feature name table, else NULL.
 * Returns a pointer into a static per-thread buffer. */
const char *qcow2_feature_name(const qcow2_state *s, int type, int bit)
{
    static __thread char name[47];
    for (uint32_t i = 0; s->features && i + 48 <= s->features_len; i += 48) {
        const uint8_t *e = s->features + i;
        if (e[0] == type && e[1] == bit) {
            memcpy(name, e + 2, 46);
            name[46] = '\0';
            for (char *p = name; *p; p++)
                if ((unsigned char)*p < 32 || (unsigned char)*p > 126)
                    *p = '?';
            return name;
        }
    }
    return NULL;
}

/* Message listing unknown incompatible bits: "bit 5 (foo), bit 9". */
static int fail_unknown_features(qcow2_state *s, uint64_t bits, vdk_error *err)
{
    char list[360] = "";
    size_t used = 0;
    for (int b = 0; b < 64 && used < sizeof list - 64; b++) {
        if (!(bits & (UINT64_C(1) << b)))
            continue;
        const char *n = qcow2_feature_name(s, 0, b);
        int w = snprintf(list + used, sizeof list - used, "%sbit %d%s%s%s", used ? ", " : "",
                         b, n ? " (" : "", n ? n : "", n ? ")" : "");
        if (w > 0)
            used += (size_t)w;
    }
    return vdk_fail(err, VDK_EUNSUPPORTED,
                    "qcow2: unsupported incompatible feature(s): %s", list);
}

/* ---------------------------------------------------------------- extensions */

static int add_unknown_ext(qcow2_state *s, uint32_t type, const uint8_t *data,
                           uint32_t len)
{
    qcow2_ext *n = realloc(s->exts, (s->nexts + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    s->exts = n;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, data, len);
    s->exts[s->nexts++] = (qcow2_ext){.type = type, .len = len, .data = copy};
    return 0;
}

static char *strndup_checked(const uint8_t *p, uint32_t len)
{
    char *r = malloc((size_t)len + 1);
    if (r) {
        memcpy(r, p, len);
        r[len] = '\0';
    }
    return r;
}

/* One extension's data (already bounds-checked against the header cluster). */
static int parse_ext(qcow2_state *s, uint32_t type, const uint8_t *d, uint32_t len,
                     uint64_t at, vdk_error *err)
{
    switch (type) {
    case QCOW2_EXT_BACKING_FMT:
        if (len > QCOW2_MAX_BACKING_NAME)
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: backing format extension at 0x%llx is too long (%u bytes)",
                            (unsigned long long)at, len);
        free(s->backing_fmt);
        s->backing_fmt = strndup_checked(d, len);
        return s->backing_fmt ? 0 : -ENOMEM;
    case QCOW2_EXT_DATA_FILE:
        if (len > QCOW2_MAX_BACKING_NAME)
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: data file name extension at 0x%llx is too long (%u bytes)",
                            (unsigned long long)at, len);
        free(s->data_file_name);
        s->data_file_name = strndup_checked(d, len);
        return s->data_file_name ? 0 : -ENOMEM;
    case QCOW2_EXT_FEATURES:
        free(s->features);
        s->features = malloc(len ? len : 1);
        if (!s->features)
            return -ENOMEM;
        memcpy(s->features, d, len);
        s->features_len = len;
        return 0;
    case QCOW2_EXT_BITMAPS:
        if (len != sizeof s->bitmaps_ext)
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: bitmaps extension at 0x%llx has length %u, expected %zu",
                            (unsigned long long)at, len, sizeof s->bitmaps_ext);
        memcpy(s->bitmaps_ext, d, len);
        s->has_bitmaps_ext = true;
        return 0;
    case QCOW2_EXT_CRYPTO:
        free(s->crypto_ext);
        s->crypto_ext = malloc(len ? len : 1);
        if (!s->crypto_ext)
            return -ENOMEM;
        memcpy(s->crypto_ext, d, len);
        s->crypto_ext_len = len;
        return 0;
    default:
        return add_unknown_ext(s, type, d, len);
    }
}

/* Walk the extensions in cluster 0 between the header and end. */
static int parse_extensions(qcow2_state *s, const uint8_t *c0, uint64_t end,
                            vdk_error *err)
{
    uint64_t off = s->header_length;
    while (off + 8 <= end) {
        uint32_t type = vdk_be32(c0 + off), len = vdk_be32(c0 + off + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - off - 8)
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: header extension 0x%08x at offset 0x%llx (length %u) "
                            "overflows the header cluster",
                            type, (unsigned long long)off, len);
        int r = parse_ext(s, type, c0 + off + 8, len, off, err);
        if (r == -ENOMEM)
            return vdk_fail(err, r, "out of memory");
        if (r < 0)
            return r;
        off += 8 + (((uint64_t)len + 7) & ~UINT64_C(7));
    }
    return 0;
}

/* ---------------------------------------------------------------- field checks */

static int check_cluster_bits(uint32_t cb, vdk_error *err)
{
    if (cb < QCOW2_MIN_CLUSTER_BITS || cb > 62)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: cluster_bits %u is invalid (must be 9..21)",
                        cb);
    if (cb > QCOW2_MAX_CLUSTER_BITS)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: cluster size 2^%u is not supported (limit 2 MiB)", cb);
    return 0;
}

/* A table of len bytes at off, cluster aligned, after cluster 0, inside the file. */
static int check_table(qcow2_state *s, const char *what, uint64_t off, uint64_t len,
                       vdk_error *err)
{
    if (off & (s->cluster_size - 1))
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: %s offset 0x%llx is not cluster-aligned",
                        what, (unsigned long long)off);
    if (off < s->cluster_size)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: %s offset 0x%llx overlaps the header",
                        what, (unsigned long long)off);
    if (off > s->file_size || len > s->file_size - off)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: %s at offset 0x%llx (%llu bytes) lies past the end of the "
                        "file (%llu bytes)",
                        what, (unsigned long long)off, (unsigned long long)len,
                        (unsigned long long)s->file_size);
    return 0;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* Entries of the L1 table needed to map size bytes. */
uint64_t qcow2_l1_entries_for(uint32_t cluster_bits, uint32_t l2_bits, uint64_t size)
{
    uint64_t clusters = (size >> cluster_bits) + ((size & ((UINT64_C(1) << cluster_bits) - 1)) != 0);
    return (clusters >> l2_bits) + ((clusters & ((UINT64_C(1) << l2_bits) - 1)) != 0);
}

/* Geometry derived from cluster_bits, extended L2 and refcount_order. */
static void set_geometry(qcow2_state *s)
{
    s->cluster_size = UINT64_C(1) << s->cluster_bits;
    s->l2_entry_shift = s->ext_l2 ? 4 : 3;
    s->l2_bits = s->cluster_bits - s->l2_entry_shift;
    s->nsub = s->ext_l2 ? QCOW2_SUBCLUSTERS : 1;
    s->sc_bits = s->ext_l2 ? s->cluster_bits - 5 : s->cluster_bits;
    s->refcount_max = s->refcount_order == 6 ? UINT64_MAX
                                             : (UINT64_C(1) << (1u << s->refcount_order)) - 1;
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (UINT64_C(1) << (s->cluster_bits - 8)) - 1;
    s->coffset_mask = (UINT64_C(1) << s->csize_shift) - 1;
}

/* Version, cluster size, header length, refcount order, features. */
static int parse_fixed(qcow2_state *s, const uint8_t *h, vdk_error *err)
{
    s->version = vdk_be32(h + 4);
    if (s->version != 2 && s->version != 3)
        return vdk_fail(err, VDK_EUNSUPPORTED, "qcow2: unsupported version %u", s->version);
    s->cluster_bits = vdk_be32(h + 20);
    int r = check_cluster_bits(s->cluster_bits, err);
    if (r < 0)
        return r;
    s->cluster_size = UINT64_C(1) << s->cluster_bits;
    if (s->version == 2) {
        s->header_length = QCOW2_HDR_V2_LEN;
        s->refcount_order = 4;
        return 0;
    }
    if (s->file_size < QCOW2_HDR_V3_LEN)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: file is too short (%llu bytes) for a version 3 header",
                        (unsigned long long)s->file_size);
    s->incompat = vdk_be64(h + 72);
    s->compat = vdk_be64(h + 80);
    s->autoclear = vdk_be64(h + 88);
    s->refcount_order = vdk_be32(h + 96);
    s->header_length = vdk_be32(h + 100);
    if (s->refcount_order > 6)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: refcount_order %u is invalid (max 6)",
                        s->refcount_order);
    if (s->header_length < QCOW2_HDR_V3_LEN || s->header_length % 8 ||
        s->header_length > s->cluster_size)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: header_length %u is invalid (104..cluster size, multiple of 8)",
                        s->header_length);
    if (s->header_length > s->file_size)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: header_length %u is larger than the file (%llu bytes)",
                        s->header_length, (unsigned long long)s->file_size);
    return 0;
}

/* Compression type and extended L2, once the full header is read. */
static int parse_v3_fields(qcow2_state *s, vdk_error *err)
{
    int type = s->header_length > 104 ? s->hdr[104] : 0;
    bool bit = s->incompat & QCOW2_INCOMPAT_COMPRESSION;
    if (bit && type == 0)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: compression type bit is set but compression_type is zlib");
    if (!bit && type != 0)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: compression_type %d is set without the compression type bit",
                        type);
    if (type > QCOW2_COMPRESS_ZSTD)
        return vdk_fail(err, VDK_EUNSUPPORTED, "qcow2: unknown compression type %d", type);
    s->compression_type = type;
    s->ext_l2 = s->incompat & QCOW2_INCOMPAT_EXTL2;
    if (s->ext_l2 && s->cluster_bits < 14)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: extended L2 entries need clusters of at least 16 KiB "
                        "(cluster_bits %u)",
                        s->cluster_bits);
    return 0;
}

/* Virtual size and the L1 table fields. */
static int parse_l1(qcow2_state *s, const uint8_t *h, vdk_error *err)
{
    s->size = vdk_be64(h + 24);
    s->l1_size = vdk_be32(h + 36);
    s->l1_offset = vdk_be64(h + 40);
    if (s->size > (UINT64_C(1) << 62))
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: virtual size %llu is too large",
                        (unsigned long long)s->size);
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: L1 table of %u entries exceeds the 32 MiB limit", s->l1_size);
    uint64_t need = qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, s->size);
    if (s->l1_size < need)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: L1 table (%u entries) is too small for the virtual size %llu "
                        "(needs %llu)",
                        s->l1_size, (unsigned long long)s->size, (unsigned long long)need);
    if (s->l1_size == 0)
        return 0;
    return check_table(s, "L1 table", s->l1_offset, (uint64_t)s->l1_size * 8, err);
}

/* Refcount table and snapshot table fields. */
static int parse_tables(qcow2_state *s, const uint8_t *h, vdk_error *err)
{
    s->rt_offset = vdk_be64(h + 48);
    s->rt_clusters = vdk_be32(h + 56);
    s->nb_snapshots = vdk_be32(h + 60);
    s->snapshots_offset = vdk_be64(h + 64);
    if (s->rt_clusters == 0)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: refcount table has no clusters");
    if ((uint64_t)s->rt_clusters << s->cluster_bits > QCOW2_MAX_RT_BYTES)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: refcount table of %u clusters exceeds the 8 MiB limit",
                        s->rt_clusters);
    int r = check_table(s, "refcount table", s->rt_offset,
                        (uint64_t)s->rt_clusters << s->cluster_bits, err);
    if (r < 0)
        return r;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: too many snapshots (%u, limit %u)",
                        s->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
    if (s->nb_snapshots)
        return check_table(s, "snapshot table", s->snapshots_offset, 40, err);
    return 0;
}

/* Backing file name: inside cluster 0, after the header, at most 1023 bytes. */
static int parse_backing(qcow2_state *s, const uint8_t *c0, uint64_t c0len,
                         uint64_t *ext_end, vdk_error *err)
{
    uint64_t off = vdk_be64(s->hdr + 8);
    uint32_t len = vdk_be32(s->hdr + 16);
    *ext_end = c0len;
    if (off == 0)
        return 0;
    if (len > QCOW2_MAX_BACKING_NAME)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: backing file name is too long (%u bytes)",
                        len);
    if (off < s->header_length || off > c0len || len > c0len - off)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: backing file name at offset 0x%llx (%u bytes) lies outside "
                        "the header cluster",
                        (unsigned long long)off, len);
    *ext_end = off;
    if (len == 0)
        return 0;
    s->backing_name = strndup_checked(c0 + off, len);
    return s->backing_name ? 0 : vdk_fail(err, -ENOMEM, "out of memory");
}

/* Structures must not overlap each other. */
static int check_overlaps(qcow2_state *s, vdk_error *err)
{
    uint64_t l1len = (uint64_t)s->l1_size * 8;
    uint64_t rtlen = (uint64_t)s->rt_clusters << s->cluster_bits;
    if (ranges_overlap(s->l1_offset, l1len, s->rt_offset, rtlen))
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: L1 table at 0x%llx overlaps the refcount table at 0x%llx",
                        (unsigned long long)s->l1_offset, (unsigned long long)s->rt_offset);
    if (s->nb_snapshots) {
        uint64_t so = s->snapshots_offset;
        if (ranges_overlap(so, 40, s->l1_offset, l1len) ||
            ranges_overlap(so, 40, s->rt_offset, rtlen))
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: snapshot table at 0x%llx overlaps the L1 or refcount table",
                            (unsigned long long)so);
    }
    return 0;
}

/* ---------------------------------------------------------------- parse */

static int read_cluster0(qcow2_state *s, uint8_t **c0, uint64_t *c0len, vdk_error *err)
{
    *c0len = s->cluster_size < s->file_size ? s->cluster_size : s->file_size;
    *c0 = calloc(1, *c0len); /* no more than the file holds */
    if (!*c0)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = vdk_file_pread(s->file, *c0, *c0len, 0, err);
    if (r < 0)
        return r;
    s->hdr = malloc(s->header_length < QCOW2_HDR_OUR_LEN ? QCOW2_HDR_OUR_LEN : s->header_length);
    if (!s->hdr)
        return vdk_fail(err, -ENOMEM, "out of memory");
    memset(s->hdr, 0, s->header_length < QCOW2_HDR_OUR_LEN ? QCOW2_HDR_OUR_LEN : s->header_length);
    memcpy(s->hdr, *c0, s->header_length);
    return 0;
}

static int parse_all(qcow2_state *s, const uint8_t *h, vdk_error *err)
{
    int r = parse_fixed(s, h, err);
    if (r < 0)
        return r;
    uint8_t *c0 = NULL;
    uint64_t c0len, ext_end;
    r = read_cluster0(s, &c0, &c0len, err);
    if (r == 0 && s->version == 3)
        r = parse_v3_fields(s, err);
    if (r == 0) {
        set_geometry(s);
        r = parse_backing(s, c0, c0len, &ext_end, err);
    }
    if (r == 0)
        r = parse_extensions(s, c0, ext_end, err);
    free(c0);
    if (r < 0)
        return r;
    uint64_t unknown = s->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (unknown)
        return fail_unknown_features(s, unknown, err);
    uint32_t crypt = vdk_be32(h + 32);
    if (crypt != 0)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: encrypted images are not supported (crypt_method %u)", crypt);
    r = parse_l1(s, h, err);
    if (r == 0)
        r = parse_tables(s, h, err);
    if (r == 0)
        r = check_overlaps(s, err);
    return r;
}

int qcow2_header_parse(qcow2_state *s, vdk_error *err)
{
    int r = vdk_file_size(s->file, &s->file_size, err);
    if (r < 0)
        return r;
    if (s->file_size < QCOW2_HDR_V2_LEN)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: file is too short (%llu bytes) for a header",
                        (unsigned long long)s->file_size);
    uint8_t h[QCOW2_HDR_V3_LEN];
    r = vdk_file_pread(s->file, h, sizeof h, 0, err);
    if (r < 0)
        return r;
    if (vdk_be32(h) != QCOW2_MAGIC)
        return vdk_fail(err, VDK_EFORMAT, "qcow2: bad magic 0x%08x", vdk_be32(h));
    return parse_all(s, h, err);
}

void qcow2_state_free_header(qcow2_state *s)
{
    free(s->hdr);
    free(s->backing_name);
    free(s->backing_fmt);
    free(s->data_file_name);
    free(s->features);
    free(s->crypto_ext);
    for (size_t i = 0; i < s->nexts; i++)
        free(s->exts[i].data);
    free(s->exts);
    s->hdr = NULL;
    s->backing_name = s->backing_fmt = s->data_file_name = NULL;
    s->features = s->crypto_ext = NULL;
    s->exts = NULL;
    s->nexts = 0;
}

/* ---------------------------------------------------------------- write */

/* Refresh the raw header fields from the state. */
static void sync_fields(qcow2_state *s)
{
    uint8_t *h = s->hdr;
    vdk_put_be32(h, QCOW2_MAGIC);
    vdk_put_be32(h + 4, s->version);
    vdk_put_be32(h + 20, s->cluster_bits);
    vdk_put_be64(h + 24, s->size);
    vdk_put_be32(h + 32, 0);
    vdk_put_be32(h + 36, s->l1_size);
    vdk_put_be64(h + 40, s->l1_offset);
    vdk_put_be64(h + 48, s->rt_offset);
    vdk_put_be32(h + 56, s->rt_clusters);
    vdk_put_be32(h + 60, s->nb_snapshots);
    vdk_put_be64(h + 64, s->snapshots_offset);
    if (s->version >= 3) {
        vdk_put_be64(h + 72, s->incompat);
        vdk_put_be64(h + 80, s->compat);
        vdk_put_be64(h + 88, s->autoclear);
        vdk_put_be32(h + 96, s->refcount_order);
        vdk_put_be32(h + 100, s->header_length);
        if (s->header_length > 104)
            h[104] = (uint8_t)s->compression_type;
    }
}

int qcow2_header_write_field(qcow2_state *s, unsigned off, unsigned len, vdk_error *err)
{
    sync_fields(s);
    int r = vdk_file_pwrite(s->file, s->hdr + off, len, off, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

/* Append one extension at *pos; false when it does not fit. */
static bool put_ext(uint8_t *buf, size_t cap, size_t *pos, uint32_t type, const void *d,
                    uint32_t len)
{
    size_t padded = ((size_t)len + 7) & ~(size_t)7;
    if (*pos + 8 + padded > cap)
        return false;
    vdk_put_be32(buf + *pos, type);
    vdk_put_be32(buf + *pos + 4, len);
    memcpy(buf + *pos + 8, d, len);
    memset(buf + *pos + 8 + len, 0, padded - len);
    *pos += 8 + padded;
    return true;
}

/* Our feature name table (48-byte entries). */
static size_t build_features(uint8_t *out)
{
    for (size_t i = 0; i < NKNOWN; i++) {
        uint8_t *e = out + i * 48;
        memset(e, 0, 48);
        e[0] = (uint8_t)known_features[i].type;
        e[1] = (uint8_t)known_features[i].bit;
        memcpy(e + 2, known_features[i].name, strlen(known_features[i].name));
    }
    return NKNOWN * 48;
}

static bool build_exts(qcow2_state *s, uint8_t *buf, size_t cap, size_t *pos, bool features)
{
    bool ok = true;
    if (s->backing_fmt)
        ok = ok && put_ext(buf, cap, pos, QCOW2_EXT_BACKING_FMT, s->backing_fmt,
                           (uint32_t)strlen(s->backing_fmt));
    if (s->data_file_name)
        ok = ok && put_ext(buf, cap, pos, QCOW2_EXT_DATA_FILE, s->data_file_name,
                           (uint32_t)strlen(s->data_file_name));
    if (s->crypto_ext)
        ok = ok && put_ext(buf, cap, pos, QCOW2_EXT_CRYPTO, s->crypto_ext, s->crypto_ext_len);
    if (features && s->version >= 3) {
        uint8_t ft[NKNOWN * 48];
        size_t n = build_features(ft);
        ok = ok && put_ext(buf, cap, pos, QCOW2_EXT_FEATURES, ft, (uint32_t)n);
    }
    if (s->has_bitmaps_ext)
        ok = ok && put_ext(buf, cap, pos, QCOW2_EXT_BITMAPS, s->bitmaps_ext,
                           sizeof s->bitmaps_ext);
    for (size_t i = 0; ok && i < s->nexts; i++)
        ok = put_ext(buf, cap, pos, s->exts[i].type, s->exts[i].data, s->exts[i].len);
    return ok;
}

/* Lay out the whole header cluster into buf (len = cluster size). */
int qcow2_header_build(qcow2_state *s, uint8_t *buf, size_t len, vdk_error *err)
{
    size_t blen = s->backing_name ? strlen(s->backing_name) : 0;
    for (int features = 1; features >= 0; features--) {
        memset(buf, 0, len);
        size_t pos = s->header_length;
        if (!build_exts(s, buf, len, &pos, features) || pos + 8 + blen > len)
            continue;
        pos += 8; /* end-of-extensions marker: zeros */
        if (s->backing_name) {
            memcpy(buf + pos, s->backing_name, blen);
            vdk_put_be64(s->hdr + 8, pos);
            vdk_put_be32(s->hdr + 16, (uint32_t)blen);
        } else {
            vdk_put_be64(s->hdr + 8, 0);
            vdk_put_be32(s->hdr + 16, 0);
        }
        sync_fields(s);
        memcpy(buf, s->hdr, s->header_length);
        return 0;
    }
    return vdk_fail(err, VDK_ETOOBIG,
                    "qcow2: header extensions and backing file name do not fit in one "
                    "%llu-byte cluster",
                    (unsigned long long)len);
}

int qcow2_header_rewrite(qcow2_state *s, vdk_error *err)
{
    uint8_t *buf = malloc(s->cluster_size);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = qcow2_header_build(s, buf, s->cluster_size, err);
    if (r == 0) {
        r = vdk_file_pwrite(s->file, buf, s->cluster_size, 0, err);
        if (r < 0)
            qcow2_set_broken(s, r);
    }
    free(buf);
    return r;
}

/* Set or clear incompatible feature bits durably (v3 only). */
int qcow2_set_incompat(qcow2_state *s, uint64_t bits, bool on, vdk_error *err)
{
    if (s->version < 3)
        return 0;
    uint64_t v = on ? s->incompat | bits : s->incompat & ~bits;
    if (v == s->incompat)
        return 0;
    s->incompat = v;
    int r = qcow2_header_write_field(s, QCOW2_OFF_INCOMPAT, 8, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}
