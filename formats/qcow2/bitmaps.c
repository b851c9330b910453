/*
 * bitmaps.c - persistent dirty bitmaps, as far as a driver that does not
 * maintain them needs: finding every cluster they use (for the refcount
 * rebuild) and dropping them before the first write (see open.c for why).
 *
 * Bitmaps extension (big-endian): u32 nb_bitmaps, u32 reserved,
 * u64 directory size, u64 directory offset. Directory entry: u64 bitmap
 * table offset, u32 table entries, u32 flags, u8 type, u8 granularity bits,
 * u16 name size, u32 extra data size, extra data, name, padding to 8.
 * Bitmap table entry: bits 9-55 data cluster offset (0: all zeros or ones).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define MAX_DIR_BYTES (UINT64_C(64) << 20)
#define MAX_TABLE_BYTES (UINT64_C(64) << 20)

static bool inside(const qcow2_state *s, uint64_t off, uint64_t len)
{
    return !(off & (s->cluster_size - 1)) && off >= s->cluster_size && off <= s->file_size &&
           len <= s->file_size - off;
}

/* Call fn for every cluster range the bitmaps use (directory, tables, data).
 * Returns VDK_ECORRUPT when the structures are not sane. */
int qcow2_bitmaps_walk(qcow2_state *s, int (*fn)(qcow2_state *, uint64_t, uint64_t, void *),
                       void *ctx, vdk_error *err)
{
    const uint8_t *e = s->bitmaps_ext;
    uint32_t nb = vdk_be32(e);
    uint64_t dsize = vdk_be64(e + 8), doff = vdk_be64(e + 16);
    if (nb == 0 || nb > 65535 || dsize > MAX_DIR_BYTES || !inside(s, doff, dsize))
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: bitmap directory at 0x%llx is invalid",
                        (unsigned long long)doff);
    uint8_t *dir = malloc(dsize ? dsize : 1);
    if (!dir)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = vdk_file_pread(s->file, dir, dsize, doff, err);
    if (r == 0)
        r = fn(s, doff, dsize, ctx);
    uint64_t pos = 0;
    for (uint32_t i = 0; r == 0 && i < nb; i++) {
        if (dsize - pos < 24) {
            r = vdk_fail(err, VDK_ECORRUPT, "qcow2: bitmap directory entry %u is truncated", i);
            break;
        }
        const uint8_t *d = dir + pos;
        uint64_t toff = vdk_be64(d), tlen = (uint64_t)vdk_be32(d + 8) * 8;
        uint64_t elen = (24 + (uint64_t)vdk_be16(d + 18) + vdk_be32(d + 20) + 7) & ~UINT64_C(7);
        if (elen > dsize - pos || tlen > MAX_TABLE_BYTES || !inside(s, toff, tlen)) {
            r = vdk_fail(err, VDK_ECORRUPT, "qcow2: bitmap %u has an invalid table at 0x%llx",
                         i, (unsigned long long)toff);
            break;
        }
        pos += elen;
        uint64_t *t = malloc(tlen ? tlen : 1);
        if (!t) {
            r = vdk_fail(err, -ENOMEM, "out of memory");
            break;
        }
        r = vdk_file_pread(s->file, t, tlen, toff, err);
        if (r == 0)
            r = fn(s, toff, tlen, ctx);
        for (uint64_t j = 0; r == 0 && j < tlen / 8; j++) {
            uint64_t c = vdk_be64(&t[j]) & QCOW2_OFFSET_MASK;
            if (c && inside(s, c, s->cluster_size))
                r = fn(s, c, s->cluster_size, ctx);
        }
        free(t);
    }
    free(dir);
    return r;
}

struct collect {
    uint64_t *off, *len;
    size_t n, cap;
};

static int collect_fn(qcow2_state *s, uint64_t off, uint64_t len, void *ctx)
{
    (void)s;
    struct collect *c = ctx;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        uint64_t *o = realloc(c->off, cap * 8), *l;
        if (!o)
            return -ENOMEM;
        c->off = o;
        l = realloc(c->len, cap * 8);
        if (!l)
            return -ENOMEM;
        c->len = l;
        c->cap = cap;
    }
    c->off[c->n] = off;
    c->len[c->n++] = len;
    return 0;
}

/* Drop the bitmaps extension and free its clusters (v3, before the first
 * write). Damaged bitmap structures are dropped without freeing (leaks). */
int qcow2_bitmaps_drop(qcow2_state *s, vdk_error *err)
{
    if (!s->has_bitmaps_ext || s->version < 3)
        return 0;
    struct collect c = {0};
    if (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) {
        if (qcow2_bitmaps_walk(s, collect_fn, &c, NULL) < 0)
            c.n = 0;
    }
    s->has_bitmaps_ext = false;
    s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
    int r = qcow2_header_rewrite(s, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    for (size_t i = 0; r == 0 && i < c.n; i++)
        r = qcow2_free_now(s, c.off[i], c.len[i], err);
    free(c.off);
    free(c.len);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}
