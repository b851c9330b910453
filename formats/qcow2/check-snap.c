/*
 * check-snap.c - the snapshot table as the check sees it: read leniently
 * from the header's own fields (an open in check mode may have refused the
 * table), with qemu-img check's verdicts (an entry with more extra data
 * than the 1 KiB limit, a version 3 entry without the 16 bytes of extra
 * data every entry needs), and the rewrite a repair makes: the kept entries,
 * completed or trimmed, in a new table past the end of the file (see
 * check-apply.c for when it becomes the image's table).
 *
 * Snapshot table entry (big-endian, padded to 8 bytes, see snapshot.c):
 *   0 u64 L1 offset   8 u32 L1 entries  12 u16 id length  14 u16 name length
 *  16 u32 date (s)   20 u32 date (ns)   24 u64 vm clock (ns)
 *  32 u32 vmstate size  36 u32 extra data size  40 extra, id, name.
 * Extra data: u64 vmstate size, u64 disk size, u64 icount (24 bytes when
 * written by QEMU 5.0 and later).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-int.h"

#define ENTRY_HDR 40u
#define EXTRA_NEEDED 16u /* vmstate size + disk size */
#define EXTRA_WRITTEN 24u
#define MAX_TABLE (UINT64_C(64) << 20)

void qc_free_snapshots(qc_check *c)
{
    free(c->snaps);
    c->snaps = NULL;
    c->nsnaps = 0;
}

static void copy_str(char *dst, size_t cap, const uint8_t *src, uint32_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)dst[i] < 0x20)
            dst[i] = '?';
}

/* Read entry i at *off (8-aligned); *off moves past it. */
static int read_entry(qc_check *c, uint32_t i, uint64_t *off, vdk_error *err)
{
    qcow2_state *s = c->s;
    uint8_t h[ENTRY_HDR];
    uint64_t at = (*off + 7) & ~UINT64_C(7);
    int r = qc_pread(c, h, sizeof h, at, err);
    if (r < 0)
        return r;
    qc_snap *sn = &c->snaps[i];
    memset(sn, 0, sizeof *sn);
    sn->entry_offset = at;
    sn->l1_offset = vdk_be64(h);
    sn->l1_size = vdk_be32(h + 8);
    uint32_t id_len = vdk_be16(h + 12), name_len = vdk_be16(h + 14);
    sn->extra_size = vdk_be32(h + 36);
    if (sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA) {
        if (!c->fix_errors) {
            c->check_errors++;
            qc_problem(c, VDK_CHECK_SNAPSHOT, false, VDK_FIX_NONE, at, 1,
                       "ERROR failed to read the snapshot table: Too much extra metadata in "
                       "snapshot table entry %u",
                       i);
            return vdk_fail(err, -EFBIG,
                            "qcow2: too much extra metadata in snapshot table entry %u (check "
                            "-r all removes it)",
                            i);
        }
        qc_problem(c, VDK_CHECK_SNAPSHOT, true, VDK_FIX_SNAPSHOT_TABLE, at, 1,
                   "Discarding too much extra metadata in snapshot table entry %u (%u > %u)", i,
                   sn->extra_size, QCOW2_MAX_SNAPSHOT_EXTRA);
        c->snap_rewrite = true;
    }
    uint64_t strings = at + ENTRY_HDR + sn->extra_size;
    uint8_t str[512];
    uint32_t n = id_len + name_len < sizeof str ? id_len + name_len : sizeof str;
    r = qc_pread(c, str, n, strings, err);
    if (r < 0)
        return r;
    copy_str(sn->id, sizeof sn->id, str, id_len < n ? id_len : n);
    if (id_len < n)
        copy_str(sn->name, sizeof sn->name, str + id_len, n - id_len);
    sn->entry_len = ENTRY_HDR + (uint64_t)sn->extra_size + id_len + name_len;
    *off = at + sn->entry_len;
    (void)s;
    return 0;
}

/* Entries of a version 3 image need the vmstate and disk sizes. */
static void check_complete(qc_check *c)
{
    if (c->s->version < 3)
        return;
    for (uint32_t i = 0; i < c->nsnaps; i++) {
        if (c->snaps[i].extra_size >= EXTRA_NEEDED)
            continue;
        qc_problem(c, VDK_CHECK_SNAPSHOT, c->fix_errors, VDK_FIX_SNAPSHOT_TABLE,
                   c->snaps[i].entry_offset, 1, "%s snapshot table entry %u is incomplete",
                   c->fix_errors ? "Repairing" : "ERROR", i);
        if (c->fix_errors)
            c->snap_rewrite = true;
    }
}

int qc_read_snapshots(qc_check *c, vdk_error *err)
{
    uint8_t f[12];
    int r = qc_pread(c, f, sizeof f, 60, err);
    if (r < 0) {
        c->check_errors++;
        return r;
    }
    c->nb_snapshots = vdk_be32(f);
    c->snapshots_offset = vdk_be64(f + 4);
    c->snapshots_size = 0;
    if (c->nb_snapshots == 0)
        return 0;
    if (c->nb_snapshots > QCOW2_MAX_SNAPSHOTS ||
        (c->snapshots_offset & (c->s->cluster_size - 1))) {
        c->check_errors++;
        c->snap_failed = true;
        qc_problem(c, VDK_CHECK_SNAPSHOT, false, VDK_FIX_NONE, c->snapshots_offset, 1,
                   "ERROR snapshot table %s",
                   c->nb_snapshots > QCOW2_MAX_SNAPSHOTS ? "too large" : "offset invalid");
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: snapshot table at 0x%llx is invalid",
                        (unsigned long long)c->snapshots_offset);
    }
    c->snaps = calloc(c->nb_snapshots, sizeof *c->snaps);
    if (!c->snaps)
        return vdk_fail(err, -ENOMEM, "out of memory");
    uint64_t off = c->snapshots_offset;
    for (uint32_t i = 0; i < c->nb_snapshots; i++) {
        r = read_entry(c, i, &off, err);
        if (r < 0) {
            c->snap_failed = true;
            qc_free_snapshots(c);
            c->nb_snapshots = 0;
            return r;
        }
        c->nsnaps = i + 1;
        if (off - c->snapshots_offset > MAX_TABLE) {
            c->check_errors++;
            c->snap_failed = true;
            qc_free_snapshots(c);
            return vdk_fail(err, -EFBIG, "qcow2: snapshot table is too big");
        }
    }
    c->snapshots_size = off - c->snapshots_offset;
    check_complete(c);
    return 0;
}

/* ---------------------------------------------------------------- rewrite */

static uint32_t new_extra(const qc_snap *sn)
{
    uint32_t e = sn->extra_size > QCOW2_MAX_SNAPSHOT_EXTRA ? QCOW2_MAX_SNAPSHOT_EXTRA
                                                           : sn->extra_size;
    return e < EXTRA_WRITTEN ? EXTRA_WRITTEN : e;
}

/* Bytes of the new table: the kept entries, completed or trimmed. */
uint64_t qc_snapshot_table_bytes(const qc_check *c)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < c->nsnaps; i++) {
        const qc_snap *sn = &c->snaps[i];
        if (sn->drop)
            continue;
        uint64_t strings = sn->entry_len - ENTRY_HDR - sn->extra_size;
        n = (n + 7) & ~UINT64_C(7);
        n += ENTRY_HDR + new_extra(sn) + strings;
    }
    return n;
}

/* Build entry sn (as read from the file) into out; returns its length. */
static int build_entry(qc_check *c, const qc_snap *sn, uint8_t *out, uint64_t *len,
                       vdk_error *err)
{
    uint64_t strings = sn->entry_len - ENTRY_HDR - sn->extra_size;
    uint32_t extra = new_extra(sn);
    int r = qc_pread(c, out, ENTRY_HDR, sn->entry_offset, err);
    uint32_t keep = sn->extra_size < extra ? sn->extra_size : extra;
    if (r == 0)
        r = qc_pread(c, out + ENTRY_HDR, keep, sn->entry_offset + ENTRY_HDR, err);
    if (r == 0)
        r = qc_pread(c, out + ENTRY_HDR + extra, strings,
                     sn->entry_offset + ENTRY_HDR + sn->extra_size, err);
    if (r < 0)
        return r;
    memset(out + ENTRY_HDR + keep, 0, extra - keep);
    if (keep < 8) /* vmstate size: the legacy 32-bit field */
        vdk_put_be64(out + ENTRY_HDR, vdk_be32(out + 32));
    if (keep < 16) /* disk size: the image's */
        vdk_put_be64(out + ENTRY_HDR + 8, c->s->size);
    if (keep < 24) /* icount: unknown */
        vdk_put_be64(out + ENTRY_HDR + 16, UINT64_MAX);
    vdk_put_be32(out + 36, extra);
    *len = ENTRY_HDR + extra + strings;
    return 0;
}

/* Write the new table at off (its size is qc_snapshot_table_bytes). */
int qc_write_snapshot_table(qc_check *c, uint64_t off, vdk_error *err)
{
    uint64_t total = qc_snapshot_table_bytes(c);
    uint8_t *t = calloc(total ? total : 1, 1);
    if (!t)
        return vdk_fail(err, -ENOMEM, "out of memory");
    uint64_t pos = 0;
    int r = 0;
    for (uint32_t i = 0; i < c->nsnaps && r == 0; i++) {
        if (c->snaps[i].drop)
            continue;
        uint64_t len = 0;
        pos = (pos + 7) & ~UINT64_C(7);
        r = build_entry(c, &c->snaps[i], t + pos, &len, err);
        pos += len;
    }
    if (r == 0 && total)
        r = vdk_file_pwrite(c->s->file, t, total, off, err);
    free(t);
    return r;
}
