/*
 * snapshot.c - the internal snapshot table: parsing and validating it at
 * open, so that snapshot L1 tables can be accounted for (refcount rebuild,
 * overlap checks) and a damaged table is refused instead of crashing.
 *
 * Snapshot table entry (big-endian, variable length, padded to 8 bytes):
 *   0 u64 L1 table offset     8 u32 L1 entries
 *  12 u16 id length          14 u16 name length
 *  16 u32 date (s)           20 u32 date (ns)
 *  24 u64 guest run time (ns) 32 u32 vmstate size (legacy)
 *  36 u32 extra data size    40 extra data (bytes 40-47: u64 vmstate size,
 *  48-55: u64 virtual disk size, 56-63: icount), then id, then name.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define MAX_TABLE_BYTES (UINT64_C(64) << 20)

void qcow2_snapshots_free(qcow2_state *s)
{
    for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++) {
        free(s->snaps[i].id);
        free(s->snaps[i].name);
    }
    free(s->snaps);
    s->snaps = NULL;
}

static char *read_string(qcow2_state *s, uint64_t off, uint32_t len, vdk_error *err,
                         int *r)
{
    char *p = malloc((size_t)len + 1);
    if (!p) {
        *r = vdk_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    *r = vdk_file_pread(s->file, p, len, off, err);
    p[len] = '\0';
    if (*r < 0) {
        free(p);
        return NULL;
    }
    return p;
}

/* The snapshot's own L1 table must be a sane table inside the file. */
static int check_snapshot_l1(qcow2_state *s, uint32_t i, const qcow2_snapshot *sn,
                             vdk_error *err)
{
    uint64_t len = (uint64_t)sn->l1_size * 8;
    if (len > QCOW2_MAX_L1_BYTES)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot %u: L1 table of %u entries exceeds the 32 MiB limit",
                        i, sn->l1_size);
    if (len == 0)
        return 0;
    if ((sn->l1_offset & (s->cluster_size - 1)) || sn->l1_offset < s->cluster_size)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot %u: L1 table offset 0x%llx is not cluster-aligned "
                        "or overlaps the header",
                        i, (unsigned long long)sn->l1_offset);
    if (sn->l1_offset > s->file_size || len > s->file_size - sn->l1_offset)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot %u: L1 table at 0x%llx lies past the end of the file",
                        i, (unsigned long long)sn->l1_offset);
    return 0;
}

/* Parse entry i at *off; advance *off past it. */
static int read_entry(qcow2_state *s, uint32_t i, uint64_t *off, vdk_error *err)
{
    uint8_t f[40 + 16];
    uint64_t at = *off;
    if (at > s->file_size || s->file_size - at < 40)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot table entry %u at 0x%llx lies past the end of the "
                        "file",
                        i, (unsigned long long)at);
    int r = vdk_file_pread(s->file, f, sizeof f, at, err);
    if (r < 0)
        return r;
    qcow2_snapshot *sn = &s->snaps[i];
    sn->l1_offset = vdk_be64(f);
    sn->l1_size = vdk_be32(f + 8);
    uint32_t id_len = vdk_be16(f + 12), name_len = vdk_be16(f + 14);
    uint32_t extra = vdk_be32(f + 36);
    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot %u: extra data size %u is too large", i, extra);
    uint64_t raw = 40 + (uint64_t)extra + id_len + name_len, len = (raw + 7) & ~UINT64_C(7);
    if (raw > s->file_size - at) /* QEMU does not write the last entry's padding */
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot table entry %u at 0x%llx lies past the end of the "
                        "file",
                        i, (unsigned long long)at);
    if (extra >= 16)
        sn->disk_size = vdk_be64(f + 48);
    sn->id = read_string(s, at + 40 + extra, id_len, err, &r);
    if (r == 0)
        sn->name = read_string(s, at + 40 + extra + id_len, name_len, err, &r);
    if (r == 0)
        r = check_snapshot_l1(s, i, sn, err);
    *off = at + len;
    return r;
}

int qcow2_snapshots_read(qcow2_state *s, vdk_error *err)
{
    s->snapshots_size = 0;
    if (s->nb_snapshots == 0)
        return 0;
    /* Each entry takes at least 40 bytes of the file. */
    if ((uint64_t)s->nb_snapshots * 40 > s->file_size - s->snapshots_offset)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot table at 0x%llx cannot hold %u snapshots before the "
                        "end of the file",
                        (unsigned long long)s->snapshots_offset, s->nb_snapshots);
    s->snaps = calloc(s->nb_snapshots, sizeof *s->snaps);
    if (!s->snaps)
        return vdk_fail(err, -ENOMEM, "out of memory");
    uint64_t off = s->snapshots_offset;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        int r = read_entry(s, i, &off, err);
        if (r < 0)
            return r;
        if (off - s->snapshots_offset > MAX_TABLE_BYTES)
            return vdk_fail(err, VDK_ECORRUPT, "qcow2: snapshot table exceeds 64 MiB");
    }
    s->snapshots_size = off - s->snapshots_offset;
    return 0;
}
