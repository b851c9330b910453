/*
 * zero.c - write_zeroes and discard.
 *
 * write_zeroes: whole clusters (whole subclusters with extended L2) get the
 * zero flag (v3) or the subcluster zero bits; the host cluster is kept as a
 * preallocation unless VDK_ZERO_MAY_UNMAP is given or it cannot be kept
 * (compressed, or shared with a snapshot), in which case it is freed. v2 has
 * no zero flag: clusters are deallocated when there is no backing file (they
 * then read as zeros), and zeros are written otherwise. Partial clusters
 * (subclusters) are written with zeros through the normal write path.
 *
 * discard follows QEMU's guest-discard semantics: whole clusters only
 * (partial ones are ignored, except a final partial cluster at the end of
 * the image), their host clusters are freed, and in v3 the range then reads
 * as zeros when there is a backing file or the cluster held data (zero
 * flag, or all subclusters zero with extended L2); in v2 the entry is
 * cleared, so the range reads from the backing file (or as zeros without
 * one). Freed clusters are released after the new entries are durable.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* New entry for a whole cluster; false when nothing changes. */
static bool zero_entry(qcow2_state *s, const qcow2_cinfo *ci, unsigned flags, bool discard,
                       uint64_t *w, uint64_t *b, bool *free_old)
{
    bool own = ci->has_host && ci->copied && ci->l1_copied && !ci->compressed;
    bool unmap = discard || (flags & VDK_ZERO_MAY_UNMAP) || !own || s->version < 3;
    bool holds = ci->has_host || ci->compressed;
    *free_old = unmap && holds;
    if (discard && s->version < 3) {
        *w = *b = 0;
    } else if (discard && !qcow2_has_backing(s) && !holds) {
        *w = *b = 0; /* already reads as zeros */
    } else if (s->version < 3) {
        *w = *b = 0; /* v2 without backing file: deallocate */
    } else if (s->ext_l2) {
        *w = unmap ? 0 : (ci->host | QCOW2_OFLAG_COPIED);
        *b = QCOW2_BITMAP_ALL_ZERO;
    } else {
        *w = (unmap ? 0 : (ci->host | QCOW2_OFLAG_COPIED)) | QCOW2_OFLAG_ZERO;
        *b = 0;
    }
    return *w != ci->word || (s->ext_l2 && *b != ci->bitmap) || *free_old;
}

/* Whether a whole L2 range without a table needs one for this change. */
static bool needs_table(const qcow2_state *s, bool discard)
{
    (void)discard;
    return s->version >= 3 && qcow2_has_backing(s);
}

/* Clusters [gc, gc+n) inside one L2 table (lock held, no conflicts). */
static int zero_batch(qcow2_state *s, uint64_t gc, uint64_t n, unsigned flags, bool discard,
                      vdk_error *err)
{
    uint64_t l1i = gc >> s->l2_bits;
    if ((l1i >= s->l1_size || !(s->l1[l1i] & QCOW2_OFFSET_MASK)) && !needs_table(s, discard))
        return 0;
    for (uint64_t i = 0; i < n; i++) {
        qcow2_cinfo ci;
        uint64_t w, b;
        bool free_old;
        int r = qcow2_lookup(s, gc + i, &ci, err);
        if (r < 0)
            return r;
        if (!zero_entry(s, &ci, flags, discard, &w, &b, &free_old))
            continue;
        r = qcow2_set_entries(s, gc + i, 1, &w, &b, err);
        if (r == 0 && free_old)
            r = qcow2_free_entry_later(s, &ci, QCOW2_FREE_PUNCH, err);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Whole clusters [off, off+len) (lock held). */
int qcow2_zero_clusters(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags,
                        bool discard, vdk_error *err)
{
    uint64_t gc = off >> s->cluster_bits, end = gc + (len >> s->cluster_bits);
    uint64_t per = UINT64_C(1) << s->l2_bits;
    while (gc < end) {
        uint64_t stop = (gc / per + 1) * per;
        if (stop > end)
            stop = end;
        if (qcow2_excl_conflict(s, gc, stop)) {
            pthread_cond_wait(&s->cond, &s->lock);
            continue;
        }
        int r = qcow2_prepare_write(s, err);
        if (r == 0)
            r = zero_batch(s, gc, stop - gc, flags, discard, err);
        if (r == 0 && qcow2_too_many_pending(s))
            r = qcow2_meta_flush(s, err);
        if (r < 0)
            return r;
        gc = stop;
    }
    return 0;
}

/* ---------------------------------------------------------------- subclusters */

/* Set the zero bits of subclusters mask in cluster gc, if the cluster allows
 * it; *done = false when zeros must be written instead (lock held). */
static int zero_subclusters(qcow2_state *s, uint64_t gc, uint32_t mask, bool *done,
                            vdk_error *err)
{
    *done = false;
    while (qcow2_excl_conflict(s, gc, gc + 1))
        pthread_cond_wait(&s->cond, &s->lock);
    qcow2_cinfo ci;
    int r = qcow2_lookup(s, gc, &ci, err);
    if (r < 0 || ci.compressed || (ci.has_host && !(ci.copied && ci.l1_copied)))
        return r;
    r = qcow2_prepare_write(s, err);
    if (r < 0)
        return r;
    uint32_t alloc = ci.alloc & ~mask, zero = ci.zero | mask;
    uint64_t b = alloc | ((uint64_t)zero << 32);
    *done = true;
    if (b == ci.bitmap)
        return 0;
    return qcow2_set_entries(s, gc, 1, &ci.word, &b, err);
}

/* ---------------------------------------------------------------- entry points */

static int write_zero_bytes(qcow2_state *s, uint64_t off, uint64_t len, vdk_error *err)
{
    static const uint8_t zeros[65536];
    while (len) {
        uint64_t n = len < sizeof zeros ? len : sizeof zeros;
        int r = qcow2_write(s, zeros, n, off, err);
        if (r < 0)
            return r;
        off += n;
        len -= n;
    }
    return 0;
}

/* Whether [off, off+len) already reads as zeros without any I/O. */
static int reads_zero(qcow2_state *s, uint64_t off, uint64_t len, bool *yes, vdk_error *err)
{
    qcow2_map m;
    pthread_mutex_lock(&s->lock);
    int r = qcow2_map_range(s, off, len, false, &m, err);
    pthread_mutex_unlock(&s->lock);
    *yes = r == 0 && m.bytes >= len &&
           (m.kind == QCOW2_ZERO || (m.kind == QCOW2_UNALLOC && !qcow2_has_backing(s)));
    return r;
}

/* Zero [off, off+len) inside one cluster (not all of it). */
static int zero_partial(qcow2_state *s, uint64_t off, uint64_t len, vdk_error *err)
{
    bool done;
    int rz = reads_zero(s, off, len, &done, err);
    if (rz < 0 || done)
        return rz;
    if (!s->ext_l2 || s->version < 3)
        return write_zero_bytes(s, off, len, err);
    uint64_t scs = UINT64_C(1) << s->sc_bits, in = off & (s->cluster_size - 1);
    uint64_t a = (in + scs - 1) & ~(scs - 1), b = (in + len) & ~(scs - 1);
    if (a >= b)
        return write_zero_bytes(s, off, len, err);
    pthread_mutex_lock(&s->lock);
    int r = zero_subclusters(s, off >> s->cluster_bits,
                             (uint32_t)(((UINT64_C(1) << (b >> s->sc_bits)) - 1) &
                                        ~((UINT64_C(1) << (a >> s->sc_bits)) - 1)),
                             &done, err);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    if (!done)
        return write_zero_bytes(s, off, len, err);
    r = write_zero_bytes(s, off, a - in, err);
    if (r == 0)
        r = write_zero_bytes(s, off + (b - in), in + len - b, err);
    return r;
}

/* A raw external data file must read as the guest does: zero it too. */
static int zero_raw_data_file(qcow2_state *s, uint64_t off, uint64_t len, bool unmap,
                              vdk_error *err)
{
    if (s->data_file == s->file || !(s->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) || !len)
        return 0;
    return vdk_file_write_zeroes(s->data_file, off, len, unmap, err);
}

int qcow2_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                       vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    int rz = zero_raw_data_file(s, off, len, flags & VDK_ZERO_MAY_UNMAP, err);
    if (rz < 0)
        return rz;
    if (s->version < 3 && qcow2_has_backing(s))
        return write_zero_bytes(s, off, len, err);
    uint64_t cs = s->cluster_size, end = off + len;
    uint64_t a = (off + cs - 1) & ~(cs - 1), b = end & ~(cs - 1);
    if (end == s->size && (end & (cs - 1)))
        b = (end + cs - 1) & ~(cs - 1); /* a short last cluster counts as whole */
    if (a > b) /* inside one cluster */
        return zero_partial(s, off, len, err);
    int r = 0;
    if (off < a)
        r = zero_partial(s, off, a - off, err);
    if (r == 0 && a < b) {
        pthread_mutex_lock(&s->lock);
        r = qcow2_zero_clusters(s, a, b - a, flags, false, err);
        pthread_mutex_unlock(&s->lock);
    }
    if (r == 0 && b < end)
        r = zero_partial(s, b, end - b, err);
    return r;
}

int qcow2_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    uint64_t cs = s->cluster_size, end = off + len;
    uint64_t a = (off + cs - 1) & ~(cs - 1), b = end & ~(cs - 1);
    if (end == s->size && (end & (cs - 1)))
        b = (end + cs - 1) & ~(cs - 1);
    if (a >= b)
        return 0;
    int r = zero_raw_data_file(s, a, b - a, true, err);
    if (r < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    r = qcow2_zero_clusters(s, a, b - a, 0, true, err);
    pthread_mutex_unlock(&s->lock);
    return r;
}
