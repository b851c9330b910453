/*
 * zero.c - write_zeroes, discard and block status.
 *
 * QED has no free-space map: a data cluster, once allocated, stays mapped
 * for the life of the image (unmapping it would leak it). So:
 *  - write_zeroes zeroes data clusters in place (punching holes in the host
 *    file when unmapping is allowed), marks unallocated clusters that the
 *    backing file would fill as zero clusters (entry 1), and leaves alone
 *    what already reads as zeros (zero clusters; unallocated clusters with
 *    no backing data under them). A partial cluster that the backing file
 *    fills gets an allocating write of zeros.
 *  - discard works on whole clusters only (the range is rounded inwards):
 *    data clusters are zeroed with holes punched, zero and unallocated
 *    clusters stay as they are (the latter keep reading the backing file).
 *  - block status reports this layer's mapping: data (with its host
 *    offset), zero clusters (allocated, zero) and unallocated ranges.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

/* Guest bytes at or past this read zeros when unallocated here. */
static uint64_t backing_end(const qed_state *s)
{
    if (!qed_has_backing(s))
        return 0;
    vdk_image *b = s->img ? vdk_image_backing(s->img) : NULL;
    return b ? vdk_image_size(b) : UINT64_MAX; /* not opened: assume it covers */
}

/* Whole clusters from off (at most len bytes) that the backing chain
 * reads as zeros, by its block status; 0 when not known to be zeros. */
static uint64_t backing_zero_run(const qed_state *s, uint64_t off, uint64_t len)
{
    vdk_image *b = s->img ? vdk_image_backing(s->img) : NULL;
    if (!b || off >= vdk_image_size(b))
        return 0;
    uint64_t bsize = vdk_image_size(b), n = len < bsize - off ? len : bsize - off;
    vdk_extent e;
    if (vdk_image_block_status(b, off, n, 0, &e, NULL) < 0 || !(e.flags & VDK_BS_ZERO))
        return 0;
    uint64_t run = e.length;
    if (off + run >= bsize && off + len > bsize)
        run = len; /* zeros to the backing file's end, and zeros past it */
    return run & ~(uint64_t)(s->cluster_size - 1);
}

/* Whether the backing chain reads [off, off + len) as zeros. */
static bool backing_reads_zero(const qed_state *s, uint64_t off, uint64_t len)
{
    vdk_image *b = s->img ? vdk_image_backing(s->img) : NULL;
    if (!b)
        return false;
    uint64_t bsize = vdk_image_size(b);
    if (off >= bsize)
        return true;
    uint64_t n = len < bsize - off ? len : bsize - off;
    vdk_extent e;
    return vdk_image_block_status(b, off, n, 0, &e, NULL) == 0 && (e.flags & VDK_BS_ZERO) &&
           e.length >= n;
}

/* Part of one cluster (lock held; dropped for I/O). */
static int zero_partial(qed_state *s, uint64_t off, uint64_t piece, int mode,
                        vdk_error *err)
{
    if (mode == QED_ZR_DISCARD)
        return 0;
    uint64_t e;
    int r = qed_entry_get(s, off >> s->cluster_bits, &e, err);
    if (r < 0 || e == QED_ENTRY_ZERO)
        return r;
    if (e != QED_ENTRY_UNALLOC) {
        pthread_mutex_unlock(&s->lock);
        r = vdk_file_write_zeroes(s->file, e + (off & (s->cluster_size - 1)), piece, false,
                                  err);
        pthread_mutex_lock(&s->lock);
        return r;
    }
    if (mode == QED_ZR_SCRUB || off >= backing_end(s) || backing_reads_zero(s, off, piece))
        return 0;
    uint8_t *zero = vdk_alloc_aligned(piece, true);
    if (!zero)
        return vdk_fail(err, -ENOMEM, "out of memory");
    pthread_mutex_unlock(&s->lock);
    r = qed_write(s, zero, piece, off, err);
    pthread_mutex_lock(&s->lock);
    free(zero);
    return r;
}

/* A run of whole clusters of one kind from off; sets *piece (0 = retry). */
static int zero_whole(qed_state *s, uint64_t off, uint64_t len, int mode, bool unmap,
                      uint64_t *piece, vdk_error *err)
{
    qed_map m;
    int r = qed_map_range(s, off, len, &m, err);
    if (r < 0)
        return r;
    *piece = m.bytes;
    if (m.kind == QED_DATA) {
        pthread_mutex_unlock(&s->lock);
        r = vdk_file_write_zeroes(s->file, m.host, m.bytes, unmap || mode != QED_ZR_ZERO,
                                  err);
        pthread_mutex_lock(&s->lock);
        return r;
    }
    uint64_t bend = backing_end(s);
    if (m.kind == QED_ZERO || mode != QED_ZR_ZERO || off >= bend)
        return 0;
    /* Unallocated over backing data: zero clusters, as far as it reaches. */
    uint64_t cs = s->cluster_size, end = off + m.bytes;
    if (bend < end)
        end = off + ((bend - off + cs - 1) & ~(cs - 1));
    uint64_t zeros = backing_zero_run(s, off, end - off);
    if (zeros) {
        *piece = zeros; /* the backing file reads zeros there already */
        return 0;
    }
    uint64_t gc = off >> s->cluster_bits, k = (end - off) >> s->cluster_bits;
    if (qed_alloc_conflict(s, gc, gc + k)) {
        *piece = 0;
        pthread_cond_wait(&s->cond, &s->lock);
        return 0;
    }
    *piece = end - off;
    return qed_entries_set(s, gc, k, QED_ENTRY_ZERO, false, err);
}

int qed_zero_range(qed_state *s, uint64_t off, uint64_t len, int mode, bool unmap,
                   vdk_error *err)
{
    uint64_t cs = s->cluster_size;
    int r = 0;
    pthread_mutex_lock(&s->lock);
    while (len && r == 0) {
        r = qed_check_broken(s, err);
        if (r < 0)
            break;
        uint64_t in = off & (cs - 1), piece = 0;
        if (in || len < cs) {
            piece = cs - in < len ? cs - in : len;
            r = zero_partial(s, off, piece, mode, err);
        } else {
            r = zero_whole(s, off, len & ~(cs - 1), mode, unmap, &piece, err);
        }
        off += piece;
        len -= piece;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

int qed_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                     vdk_error *err)
{
    return qed_zero_range(vdk_image_priv(img), off, len, QED_ZR_ZERO,
                          (flags & VDK_ZERO_MAY_UNMAP) != 0, err);
}

int qed_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err)
{
    return qed_zero_range(vdk_image_priv(img), off, len, QED_ZR_DISCARD, true, err);
}

/* ---------------------------------------------------------------- block status */

int qed_block_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                     vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    qed_map m;
    pthread_mutex_lock(&s->lock);
    int r = qed_map_range(s, off, len, &m, err);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    ext->start = off;
    ext->length = m.bytes;
    ext->offset = 0;
    if (m.kind == QED_DATA) {
        ext->flags = VDK_BS_DATA | VDK_BS_ALLOCATED | VDK_BS_OFFSET_VALID;
        ext->offset = m.host;
    } else if (m.kind == QED_ZERO) {
        ext->flags = VDK_BS_ZERO | VDK_BS_ALLOCATED;
    } else {
        ext->flags = 0;
    }
    return 0;
}
