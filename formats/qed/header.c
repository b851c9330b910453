/*
 * header.c - the QED header: parse and validate it on open, write its
 * fields back (feature bits, size), and create new images.
 *
 * Every field is checked before anything is derived from it: magic,
 * feature bits (an unknown one refuses the image and is named), cluster
 * size, table size, header size, the L1 table's alignment and bounds, the
 * virtual size against the capacity of the tables, and the backing file
 * name's place inside the header clusters. Layout in qed.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

static bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

static uint32_t log2_u64(uint64_t v)
{
    uint32_t b = 0;
    while (v > 1) {
        v >>= 1;
        b++;
    }
    return b;
}

uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size)
{
    /* entries^2 * cluster_size, saturating: 2 * table_bits + cluster_bits
     * can exceed 64 with large clusters and tables. */
    uint32_t cb = log2_u64(cluster_size);
    uint32_t tb = log2_u64((uint64_t)table_size * cluster_size / 8);
    if (2 * tb + cb >= 63)
        return QED_MAX_IMAGE_SIZE;
    uint64_t max = UINT64_C(1) << (2 * tb + cb);
    return max < QED_MAX_IMAGE_SIZE ? max : QED_MAX_IMAGE_SIZE;
}

static int check_cluster_size(uint32_t cs, vdk_error *err)
{
    if (cs < QED_MIN_CLUSTER_SIZE || cs > QED_MAX_CLUSTER_SIZE || !is_pow2(cs))
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: cluster size %u is invalid (a power of two from 4 KiB to 64 MiB)",
                        cs);
    return 0;
}

static int check_table_size(uint32_t ts, vdk_error *err)
{
    if (ts < QED_MIN_TABLE_SIZE || ts > QED_MAX_TABLE_SIZE || !is_pow2(ts))
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: table size %u is invalid (a power of two from 1 to 16 clusters)",
                        ts);
    return 0;
}

/* Name every unknown feature bit: "0x18 (bits 3, 4)". */
static int fail_unknown_features(uint64_t unknown, vdk_error *err)
{
    char bits[200] = "";
    size_t pos = 0;
    for (int b = 0; b < 64 && pos < sizeof bits - 8; b++)
        if (unknown & (UINT64_C(1) << b))
            pos += (size_t)snprintf(bits + pos, sizeof bits - pos, "%s%d", pos ? ", " : "", b);
    return vdk_fail(err, VDK_EUNSUPPORTED,
                    "qed: unknown feature bit%s %s (features 0x%llx) in the header; this "
                    "image needs a newer program",
                    strchr(bits, ',') ? "s" : "", bits, (unsigned long long)unknown);
}

/* Decode the raw fields of s->hdr. */
static void decode_fields(qed_state *s)
{
    const uint8_t *h = s->hdr;
    s->cluster_size = vdk_le32(h + 4);
    s->table_size = vdk_le32(h + 8);
    s->header_size = vdk_le32(h + 12);
    s->features = vdk_le64(h + 16);
    s->compat = vdk_le64(h + 24);
    s->autoclear = vdk_le64(h + 32);
    s->l1_offset = vdk_le64(h + 40);
    s->image_size = vdk_le64(h + 48);
}

static void set_geometry(qed_state *s)
{
    s->cluster_bits = log2_u64(s->cluster_size);
    s->table_bytes = (uint64_t)s->table_size << s->cluster_bits;
    s->table_entries = s->table_bytes / 8;
    s->table_bits = log2_u64(s->table_entries);
}

/* Header size and the L1 table's place. */
static int check_layout(const qed_state *s, uint64_t file_size, vdk_error *err)
{
    uint64_t hend = qed_header_end(s);
    if (s->header_size == 0)
        return vdk_fail(err, VDK_ECORRUPT, "qed: header size is 0 clusters (at least 1)");
    if (s->l1_offset & (s->cluster_size - 1))
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: L1 table offset 0x%llx is not a multiple of the cluster size (%u)",
                        (unsigned long long)s->l1_offset, s->cluster_size);
    if (s->l1_offset < hend)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: L1 table offset 0x%llx lies inside the header (%u clusters, "
                        "0x%llx bytes)",
                        (unsigned long long)s->l1_offset, s->header_size,
                        (unsigned long long)hend);
    if (s->l1_offset > file_size || s->table_bytes > file_size - s->l1_offset)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: L1 table at 0x%llx (%llu bytes) lies past the end of the file "
                        "(%llu bytes)",
                        (unsigned long long)s->l1_offset, (unsigned long long)s->table_bytes,
                        (unsigned long long)file_size);
    return 0;
}

static int check_image_size(const qed_state *s, vdk_error *err)
{
    uint64_t max = qed_max_image_size(s->cluster_size, s->table_size);
    if (s->image_size % 512)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: image size %llu is not a multiple of 512 bytes",
                        (unsigned long long)s->image_size);
    if (s->image_size > QED_MAX_IMAGE_SIZE && max == QED_MAX_IMAGE_SIZE)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qed: image size %llu is larger than vdk supports (2^62 bytes)",
                        (unsigned long long)s->image_size);
    if (s->image_size > max)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: image size %llu exceeds what the tables can map (%llu bytes with "
                        "cluster size %u and table size %u)",
                        (unsigned long long)s->image_size, (unsigned long long)max,
                        s->cluster_size, s->table_size);
    return 0;
}

/* The backing file name: inside the header clusters, no NUL byte. */
static int parse_backing(qed_state *s, vdk_error *err)
{
    if (!(s->features & QED_F_BACKING_FILE))
        return 0;
    uint32_t off = vdk_le32(s->hdr + 56), len = vdk_le32(s->hdr + 60);
    uint64_t hend = qed_header_end(s);
    if (len > QED_MAX_BACKING_NAME)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: backing file name is too long (%u bytes, at most %u)", len,
                        QED_MAX_BACKING_NAME);
    if ((uint64_t)off + len > hend)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qed: backing file name at offset 0x%x (%u bytes) lies outside the "
                        "header clusters (0x%llx bytes)",
                        off, len, (unsigned long long)hend);
    if (len == 0)
        return 0; /* as QEMU: an empty name means no backing file */
    char *name = malloc((size_t)len + 1);
    if (!name)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = vdk_file_pread(s->file, name, len, off, err);
    name[len] = '\0';
    if (r == 0 && strlen(name) != len)
        r = vdk_fail(err, VDK_ECORRUPT,
                     "qed: backing file name at offset 0x%x contains a NUL byte", off);
    if (r < 0) {
        free(name);
        return r;
    }
    s->backing_name = name;
    return 0;
}

int qed_header_parse(qed_state *s, uint64_t file_size, vdk_error *err)
{
    if (file_size < QED_HEADER_LEN)
        return vdk_fail(err, VDK_ECORRUPT, "qed: file is too short (%llu bytes) for a header",
                        (unsigned long long)file_size);
    int r = vdk_file_pread(s->file, s->hdr, QED_HEADER_LEN, 0, err);
    if (r < 0)
        return r;
    if (vdk_le32(s->hdr) != QED_MAGIC)
        return vdk_fail(err, VDK_EFORMAT, "qed: bad magic 0x%08x (not a QED image)",
                        vdk_le32(s->hdr));
    decode_fields(s);
    if (s->features & ~QED_F_KNOWN)
        return fail_unknown_features(s->features & ~QED_F_KNOWN, err);
    if ((r = check_cluster_size(s->cluster_size, err)) < 0 ||
        (r = check_table_size(s->table_size, err)) < 0)
        return r;
    set_geometry(s);
    if ((r = check_layout(s, file_size, err)) < 0 || (r = check_image_size(s, err)) < 0)
        return r;
    return parse_backing(s, err);
}

/* Refresh the raw header bytes from the fields that change. */
void qed_header_sync(qed_state *s)
{
    vdk_put_le64(s->hdr + QED_OFF_FEATURES, s->features);
    vdk_put_le64(s->hdr + QED_OFF_AUTOCLEAR, s->autoclear);
    vdk_put_le64(s->hdr + QED_OFF_IMAGE_SIZE, s->image_size);
}

/* Write the 64 header bytes (not the backing name). Not flushed. */
int qed_header_write(qed_state *s, vdk_error *err)
{
    qed_header_sync(s);
    return vdk_file_pwrite(s->file, s->hdr, QED_HEADER_LEN, 0, err);
}

/* ---------------------------------------------------------------- create */

int qed_read_create_opts(vdk_opts *opts, qed_create_opts *o, vdk_error *err)
{
    o->cluster_size = QED_DEFAULT_CLUSTER_SIZE;
    o->table_size = QED_DEFAULT_TABLE_SIZE;
    o->backing = o->backing_fmt = NULL;
    int r;
    if ((r = vdk_opt_size(opts, "cluster_size", &o->cluster_size, err)) < 0 ||
        (r = vdk_opt_size(opts, "table_size", &o->table_size, err)) < 0)
        return r;
    vdk_opt_str(opts, "backing_file", &o->backing);
    vdk_opt_str(opts, "backing_fmt", &o->backing_fmt);
    if (o->backing && !*o->backing)
        o->backing = NULL;
    if (o->backing_fmt && !o->backing)
        return vdk_fail(err, VDK_EOPTION, "qed: backing_fmt is given without backing_file");
    if (o->cluster_size < QED_MIN_CLUSTER_SIZE || o->cluster_size > QED_MAX_CLUSTER_SIZE ||
        !is_pow2(o->cluster_size))
        return vdk_fail(err, VDK_EOPTION,
                        "qed: cluster_size must be a power of two from 4096 to 67108864 "
                        "(not %llu)",
                        (unsigned long long)o->cluster_size);
    if (o->table_size < QED_MIN_TABLE_SIZE || o->table_size > QED_MAX_TABLE_SIZE ||
        !is_pow2(o->table_size))
        return vdk_fail(err, VDK_EOPTION,
                        "qed: table_size must be a power of two from 1 to 16 (not %llu)",
                        (unsigned long long)o->table_size);
    if (o->backing && strlen(o->backing) > QED_MAX_BACKING_NAME)
        return vdk_fail(err, VDK_EOPTION, "qed: backing file name is too long (%zu bytes)",
                        strlen(o->backing));
    return 0;
}

/* The virtual size: given, or the backing file's; rounded up to 512. */
static int create_size(const vdk_create_args *args, qed_create_opts *o, vdk_error *err)
{
    o->size = args->size;
    if (o->size == VDK_SIZE_FROM_BACKING) {
        if (!o->backing)
            return vdk_fail(err, VDK_EOPTION, "qed: image size must be given");
        vdk_image *b;
        int r = vdk_open_for_create(o->backing, o->backing_fmt, args->path, &b, err);
        if (r < 0)
            return r;
        o->size = vdk_image_size(b);
        vdk_image_close(b, NULL);
    }
    return qed_check_new_size(o, err);
}

/* Round the new size up to 512 and check it against the tables' reach. */
int qed_check_new_size(qed_create_opts *o, vdk_error *err)
{
    if (o->size > QED_MAX_IMAGE_SIZE)
        return vdk_fail(err, VDK_ETOOBIG, "qed: image size %llu is too large",
                        (unsigned long long)o->size);
    o->size = (o->size + 511) & ~UINT64_C(511);
    uint64_t max = qed_max_image_size((uint32_t)o->cluster_size, (uint32_t)o->table_size);
    if (o->size > max)
        return vdk_fail(err, VDK_ETOOBIG,
                        "qed: image size %llu exceeds the maximum %llu for cluster_size %llu "
                        "and table_size %llu",
                        (unsigned long long)o->size, (unsigned long long)max,
                        (unsigned long long)o->cluster_size, (unsigned long long)o->table_size);
    return 0;
}

/* Clusters of the header with the backing file name after it. */
uint64_t qed_header_clusters(const qed_create_opts *o)
{
    size_t nlen = o->backing ? strlen(o->backing) : 0;
    return (QED_HEADER_LEN + nlen + o->cluster_size - 1) / o->cluster_size;
}

/* Header clusters (header + backing name), then an empty L1 table. */
static int write_new_image(vdk_file *file, const qed_create_opts *o, vdk_error *err)
{
    uint64_t cs = o->cluster_size;
    size_t nlen = o->backing ? strlen(o->backing) : 0;
    uint64_t hsize = qed_header_clusters(o);
    uint64_t hbytes = hsize * cs;
    uint8_t *h = vdk_alloc_aligned(hbytes, true);
    if (!h)
        return vdk_fail(err, -ENOMEM, "out of memory");
    uint64_t features = 0;
    if (o->backing) {
        features |= QED_F_BACKING_FILE;
        if (o->backing_fmt && strcmp(o->backing_fmt, "raw") == 0)
            features |= QED_F_BACKING_FORMAT_NO_PROBE;
        vdk_put_le32(h + 56, QED_HEADER_LEN);
        vdk_put_le32(h + 60, (uint32_t)nlen);
        memcpy(h + QED_HEADER_LEN, o->backing, nlen);
    }
    vdk_put_le32(h, QED_MAGIC);
    vdk_put_le32(h + 4, (uint32_t)cs);
    vdk_put_le32(h + 8, (uint32_t)o->table_size);
    vdk_put_le32(h + 12, (uint32_t)hsize);
    vdk_put_le64(h + 16, features);
    vdk_put_le64(h + 40, hbytes);
    vdk_put_le64(h + 48, o->size);
    int r = vdk_file_pwrite(file, h, hbytes, 0, err);
    free(h);
    /* The L1 table reads as zeros: extend the file over it. */
    if (r == 0)
        r = vdk_file_truncate(file, hbytes + o->table_size * cs, err);
    return r;
}

int qed_create(vdk_file *file, const vdk_create_args *args, vdk_error *err)
{
    qed_create_opts o;
    int r = qed_read_create_opts(args->opts, &o, err);
    if (r == 0)
        r = create_size(args, &o, err);
    if (r == 0)
        r = write_new_image(file, &o, err);
    return r;
}
