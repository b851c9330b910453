/*
 * snapshot.c - the internal snapshot table: parsing and validating it at
 * open (so that snapshot L1 tables can be accounted for by the refcount
 * rebuild and the overlap checks, and a damaged table is refused instead of
 * crashing), the deeper validation that snapshot operations need, building
 * a new table in QEMU 7.2's layout, and looking entries up.
 *
 * Snapshot table entry (big-endian, variable length; each entry starts at a
 * multiple of 8 bytes from the table start, the last one is not padded):
 *   0 u64 L1 table offset      8 u32 L1 entries
 *  12 u16 id length           14 u16 name length
 *  16 u32 date (s)            20 u32 date (ns)
 *  24 u64 guest run time (ns) 32 u32 VM state size (legacy, 0 when > 4 GiB)
 *  36 u32 extra data size     40 extra data, then id, then name (no NULs)
 * Extra data: 0-7 u64 VM state size, 8-15 u64 virtual disk size when taken,
 * 16-23 u64 record/replay icount (-1: none; qemu-img writes 0). We write 24
 * bytes of extra data, followed by any unknown extra bytes an entry had.
 *
 * Checked at open: counts, entries and L1 tables inside the file, the extra
 * data size. Checked before any snapshot operation (qcow2_snapshots_validate):
 * unique IDs, names that are valid UTF-8, L1 tables that are aligned, do not
 * overlap each other or other metadata, and can map their disk size.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-snap.h"

#define MAX_TABLE_BYTES (UINT64_C(64) << 20)

void qcow2_snapshot_entry_free(qcow2_snapshot *sn)
{
    free(sn->id);
    free(sn->name);
    free(sn->extra_tail);
    sn->id = sn->name = NULL;
    sn->extra_tail = NULL;
}

void qcow2_snapshots_free(qcow2_state *s)
{
    for (uint32_t i = 0; s->snaps && i < s->nb_snapshots; i++)
        qcow2_snapshot_entry_free(&s->snaps[i]);
    free(s->snaps);
    s->snaps = NULL;
}

static char *read_bytes(qcow2_state *s, uint64_t off, uint32_t len, vdk_error *err, int *r)
{
    char *p = malloc((size_t)len + 1);
    if (!p) {
        *r = vdk_fail(err, -ENOMEM, "out of memory");
        return NULL;
    }
    *r = len ? vdk_file_pread(s->file, p, len, off, err) : 0;
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

/* The fixed fields and the known extra data of entry f. */
static void decode_fixed(qcow2_state *s, qcow2_snapshot *sn, const uint8_t *f, uint32_t extra)
{
    sn->l1_offset = vdk_be64(f);
    sn->l1_size = vdk_be32(f + 8);
    sn->date_sec = vdk_be32(f + 16);
    sn->date_nsec = vdk_be32(f + 20);
    sn->vm_clock_nsec = vdk_be64(f + 24);
    sn->vm_state_size = vdk_be32(f + 32);
    if (extra >= 8)
        sn->vm_state_size = vdk_be64(f + 40);
    sn->has_disk_size = extra >= 16;
    sn->disk_size = extra >= 16 ? vdk_be64(f + 48) : s->size;
    sn->icount = extra >= 24 ? vdk_be64(f + 56) : UINT64_MAX;
}

/* Parse entry i at *off; advance *off past it. */
static int read_entry(qcow2_state *s, uint32_t i, uint64_t *off, vdk_error *err)
{
    uint8_t f[40 + 24];
    uint64_t at = *off;
    if (at > s->file_size || s->file_size - at < 40)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot table entry %u at 0x%llx lies past the end of the "
                        "file",
                        i, (unsigned long long)at);
    memset(f, 0, sizeof f);
    int r = vdk_file_pread(s->file, f, 40, at, err);
    if (r < 0)
        return r;
    qcow2_snapshot *sn = &s->snaps[i];
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
    uint32_t known = extra < 24 ? extra : 24;
    if (known)
        r = vdk_file_pread(s->file, f + 40, known, at + 40, err);
    if (r < 0)
        return r;
    decode_fixed(s, sn, f, extra);
    if (extra > 24) {
        sn->extra_tail_len = extra - 24;
        sn->extra_tail = (uint8_t *)read_bytes(s, at + 64, extra - 24, err, &r);
    }
    if (r == 0)
        sn->id = read_bytes(s, at + 40 + extra, id_len, err, &r);
    if (r == 0)
        sn->name = read_bytes(s, at + 40 + extra + id_len, name_len, err, &r);
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
    uint64_t off = s->snapshots_offset, end = off;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        int r = read_entry(s, i, &off, err);
        if (r < 0)
            return r;
        end = off;
        if (off - s->snapshots_offset > MAX_TABLE_BYTES)
            return vdk_fail(err, VDK_ECORRUPT, "qcow2: snapshot table exceeds 64 MiB");
    }
    s->snapshots_size = end - s->snapshots_offset;
    return 0;
}

/* ---------------------------------------------------------------- validation */

bool qcow2_utf8_valid(const char *p, size_t len)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        unsigned c = u[i], n;
        uint32_t cp;
        if (c < 0x80) {
            if (c == 0)
                return false;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return false;
        if (len - i <= n)
            return false;
        for (unsigned k = 1; k <= n; k++) {
            if ((u[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (u[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

static bool overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

/* Entry i against the fixed structures and the entries before it. */
static int validate_entry(qcow2_state *s, uint32_t i, vdk_error *err)
{
    const qcow2_snapshot *sn = &s->snaps[i];
    uint64_t cs = s->cluster_size, len = (uint64_t)sn->l1_size * 8;
    uint64_t need = qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, sn->disk_size);
    if (!qcow2_utf8_valid(sn->name, strlen(sn->name)))
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot %u (ID '%s'): the name is not valid UTF-8", i, sn->id);
    if (!qcow2_utf8_valid(sn->id, strlen(sn->id)) || !sn->id[0])
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot %u: the ID is empty or not valid UTF-8", i);
    if (sn->l1_size < need)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot '%s' (ID %s): L1 table of %u entries cannot map its "
                        "disk size of %llu bytes (needs %llu)",
                        sn->name, sn->id, sn->l1_size, (unsigned long long)sn->disk_size,
                        (unsigned long long)need);
    uint64_t rl = (len + cs - 1) & ~(cs - 1);
    if (overlap(sn->l1_offset, rl, 0, cs) ||
        overlap(sn->l1_offset, rl, s->l1_offset, (uint64_t)s->l1_size * 8) ||
        overlap(sn->l1_offset, rl, s->rt_offset, (uint64_t)s->rt_clusters << s->cluster_bits) ||
        overlap(sn->l1_offset, rl, s->snapshots_offset, s->snapshots_size))
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: snapshot '%s' (ID %s): L1 table at 0x%llx overlaps the header, "
                        "the active L1 table, the refcount table or the snapshot table",
                        sn->name, sn->id, (unsigned long long)sn->l1_offset);
    return 0;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp((*(qcow2_snapshot *const *)a)->id, (*(qcow2_snapshot *const *)b)->id);
}

static int cmp_l1(const void *a, const void *b)
{
    uint64_t x = (*(qcow2_snapshot *const *)a)->l1_offset;
    uint64_t y = (*(qcow2_snapshot *const *)b)->l1_offset;
    return x < y ? -1 : x > y;
}

/* Duplicate IDs and overlapping L1 tables: sorted, neighbours compared
 * (O(n log n), whatever the table holds). */
static int validate_pairs(qcow2_state *s, qcow2_snapshot **v, vdk_error *err)
{
    uint32_t n = s->nb_snapshots;
    for (uint32_t i = 0; i < n; i++)
        v[i] = &s->snaps[i];
    qsort(v, n, sizeof *v, cmp_id);
    for (uint32_t i = 1; i < n; i++)
        if (strcmp(v[i - 1]->id, v[i]->id) == 0)
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: snapshot table has two entries with ID '%s' ('%s' and '%s')",
                            v[i]->id, v[i - 1]->name, v[i]->name);
    qsort(v, n, sizeof *v, cmp_l1);
    uint64_t end = 0;
    const qcow2_snapshot *last = NULL;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t len = (uint64_t)v[i]->l1_size * 8;
        if (!len)
            continue;
        if (last && v[i]->l1_offset < end)
            return vdk_fail(err, VDK_ECORRUPT,
                            "qcow2: the L1 tables of snapshots '%s' and '%s' overlap at 0x%llx",
                            last->name, v[i]->name, (unsigned long long)v[i]->l1_offset);
        if (v[i]->l1_offset + len > end) {
            end = v[i]->l1_offset + len;
            last = v[i];
        }
    }
    return 0;
}

int qcow2_snapshots_validate(qcow2_state *s, vdk_error *err)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        int r = validate_entry(s, i, err);
        if (r < 0)
            return r;
    }
    if (s->nb_snapshots < 2)
        return 0;
    qcow2_snapshot **v = malloc(s->nb_snapshots * sizeof *v);
    if (!v)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = validate_pairs(s, v, err);
    free(v);
    return r;
}

/* ---------------------------------------------------------------- lookups */

int qcow2_snapshot_find(const qcow2_state *s, const char *id)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (strcmp(s->snaps[i].id, id) == 0)
            return (int)i;
    return -1;
}

int qcow2_snapshot_find_name(const qcow2_state *s, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (strcmp(s->snaps[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* One more than the largest ID read as a decimal number (as QEMU does). */
void qcow2_snapshot_next_id(const qcow2_state *s, char *buf, size_t len)
{
    unsigned long long max = 0;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        unsigned long long v = strtoull(s->snaps[i].id, NULL, 10);
        if (v > max && v < UINT64_MAX / 2)
            max = v;
    }
    snprintf(buf, len, "%llu", max + 1);
}

/* ---------------------------------------------------------------- building */

static uint64_t entry_bytes(const qcow2_snapshot *sn)
{
    return 40 + 24 + (uint64_t)sn->extra_tail_len + strlen(sn->id) + strlen(sn->name);
}

uint64_t qcow2_snapshot_table_size(const qcow2_snapshot *list, uint32_t n)
{
    uint64_t off = 0;
    for (uint32_t i = 0; i < n; i++)
        off = ((off + 7) & ~UINT64_C(7)) + entry_bytes(&list[i]);
    return off;
}

/* Serialize the table into buf (size bytes from qcow2_snapshot_table_size,
 * zeroed by the caller). */
void qcow2_snapshot_table_build(const qcow2_snapshot *list, uint32_t n, uint8_t *buf)
{
    uint64_t off = 0;
    for (uint32_t i = 0; i < n; i++) {
        const qcow2_snapshot *sn = &list[i];
        size_t il = strlen(sn->id), nl = strlen(sn->name);
        uint8_t *e = buf + ((off + 7) & ~UINT64_C(7));
        vdk_put_be64(e, sn->l1_offset);
        vdk_put_be32(e + 8, sn->l1_size);
        vdk_put_be16(e + 12, (uint16_t)il);
        vdk_put_be16(e + 14, (uint16_t)nl);
        vdk_put_be32(e + 16, sn->date_sec);
        vdk_put_be32(e + 20, sn->date_nsec);
        vdk_put_be64(e + 24, sn->vm_clock_nsec);
        vdk_put_be32(e + 32, sn->vm_state_size <= UINT32_MAX ? (uint32_t)sn->vm_state_size : 0);
        vdk_put_be32(e + 36, 24 + sn->extra_tail_len);
        vdk_put_be64(e + 40, sn->vm_state_size);
        vdk_put_be64(e + 48, sn->disk_size);
        vdk_put_be64(e + 56, sn->icount);
        uint8_t *p = e + 64;
        if (sn->extra_tail_len)
            memcpy(p, sn->extra_tail, sn->extra_tail_len);
        p += sn->extra_tail_len;
        memcpy(p, sn->id, il);
        memcpy(p + il, sn->name, nl);
        off = (uint64_t)(e - buf) + entry_bytes(sn);
    }
}
