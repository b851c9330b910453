/*
 * resize.c - changing the virtual size, and preallocation.
 *
 * Growing: the L1 table grows in place when its clusters have room, else it
 * is copied to new clusters at the end of the file (after the L2 tables it
 * points to are durable), the header is switched to it, and the old clusters
 * are freed. The size field is written last. When a backing file would show
 * through the new area, the area is zeroed first (as QEMU does). Shrinking
 * (allowed by the core only with VDK_RESIZE_SHRINK) frees every cluster past
 * the new end and zeroes the tail of a partial last cluster.
 *
 * Preallocation (create and grow): unallocated clusters get fresh host
 * clusters at the end of the file, which read as zeros (metadata: the file
 * is extended to cover them; falloc/full: the host space is reserved or
 * written). With extended L2 the subclusters stay unallocated, so a backing
 * file still shows through, as in QEMU.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* ---------------------------------------------------------------- L1 growth */

static int write_l1_range(qcow2_state *s, uint64_t off, uint64_t lo, uint64_t hi,
                          vdk_error *err)
{
    if (lo >= hi)
        return 0;
    uint64_t *be = malloc((hi - lo) * 8);
    if (!be)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = lo; i < hi; i++)
        vdk_put_be64(&be[i - lo], s->l1[i]);
    int r = vdk_file_pwrite(s->file, be, (hi - lo) * 8, off + lo * 8, err);
    free(be);
    return r;
}

int qcow2_grow_l1(qcow2_state *s, uint64_t n, vdk_error *err)
{
    if (n <= s->l1_size)
        return 0;
    if (n * 8 > QCOW2_MAX_L1_BYTES)
        return vdk_fail(err, VDK_ETOOBIG,
                        "qcow2: the L1 table would exceed 32 MiB (use a larger cluster size)");
    uint64_t *l1 = realloc(s->l1, n * 8);
    if (!l1)
        return vdk_fail(err, -ENOMEM, "out of memory");
    memset(l1 + s->l1_size, 0, (n - s->l1_size) * 8);
    s->l1 = l1;
    uint64_t room = qcow2_size_to_clusters(s, (uint64_t)s->l1_size * 8) << s->cluster_bits;
    uint64_t old_off = s->l1_offset, old_len = (uint64_t)s->l1_size * 8;
    int r;
    if (s->l1_size && n * 8 <= room) {
        r = write_l1_range(s, s->l1_offset, s->l1_size, n, err);
    } else {
        /* Entries must point at durable L2 tables before the copy is used. */
        r = qcow2_meta_flush(s, err);
        uint64_t off;
        if (r == 0)
            r = qcow2_alloc_clusters_at_end(s, qcow2_size_to_clusters(s, n * 8), &off, err);
        if (r == 0) {
            r = write_l1_range(s, off, 0, n, err);
            s->l1_offset = off;
            s->l1_dirty_lo = s->l1_dirty_hi = 0; /* the flush wrote them; the copy has them */
        }
    }
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0)
        return qcow2_set_broken(s, r);
    /* In place, the entries still dirty stay so: they may point at L2 tables
     * that are not durable yet, and the next metadata flush writes them in
     * order (found by the crash replayer, test_crash_replay.c). */
    s->l1_size = (uint32_t)n;
    r = qcow2_header_write_field(s, QCOW2_OFF_L1_SIZE, 12, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r == 0 && qcow2_overlap_refresh(s) < 0)
        r = vdk_fail(err, -ENOMEM, "out of memory");
    if (r == 0 && old_off != s->l1_offset && old_len)
        r = qcow2_free_now(s, old_off, old_len, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

/* ---------------------------------------------------------------- preallocation */

/* Give [gc, gc+n) (inside one L2 table, all needing it) fresh host clusters. */
static int prealloc_run(qcow2_state *s, uint64_t gc, uint64_t n, const qcow2_cinfo *old,
                        int mode, vdk_error *err)
{
    uint64_t host = gc << s->cluster_bits;
    int r = 0;
    if (s->data_file == s->file) /* an external data file maps guest = host */
        r = qcow2_alloc_clusters_at_end(s, n, &host, err);
    if (r < 0)
        return r;
    if (mode == VDK_PREALLOC_FALLOC || mode == VDK_PREALLOC_FULL)
        r = vdk_file_allocate(s->data_file, host, n << s->cluster_bits, mode, err);
    uint64_t *w = malloc(n * 16), *b = w + n;
    if (!w)
        r = r < 0 ? r : vdk_fail(err, -ENOMEM, "out of memory");
    for (uint64_t i = 0; r == 0 && i < n; i++) {
        w[i] = (host + (i << s->cluster_bits)) | QCOW2_OFLAG_COPIED;
        if (!s->ext_l2 && (old[i].zero & 1))
            w[i] |= QCOW2_OFLAG_ZERO;
        b[i] = s->ext_l2 ? (uint64_t)old[i].zero << 32 : 0;
    }
    if (r == 0)
        r = qcow2_set_entries(s, gc, n, w, b, err);
    free(w);
    return r;
}

static int prealloc_table(qcow2_state *s, uint64_t gc, uint64_t end, int mode,
                          vdk_error *err)
{
    uint64_t n = end - gc;
    qcow2_cinfo *old = malloc(n * sizeof *old);
    if (!old)
        return vdk_fail(err, -ENOMEM, "out of memory");
    uint8_t *t;
    int r = qcow2_l2_get_for_write(s, gc >> s->l2_bits, &t, err);
    qcow2_l2_put(s, &t);
    for (uint64_t i = 0; r == 0 && i < n; i++)
        r = qcow2_lookup(s, gc + i, &old[i], err);
    uint64_t i = 0;
    while (r == 0 && i < n) {
        if (old[i].has_host || old[i].compressed) {
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < n && !old[j].has_host && !old[j].compressed)
            j++;
        r = prealloc_run(s, gc + i, j - i, old + i, mode, err);
        i = j;
    }
    free(old);
    return r;
}

/* Preallocate guest range [start, end) (lock held). */
int qcow2_preallocate(qcow2_state *s, uint64_t start, uint64_t end, int mode,
                      vdk_error *err)
{
    if (!s->ext_l2 && qcow2_has_backing(s)) /* never hide backing data */
        start = (start + s->cluster_size - 1) & ~(s->cluster_size - 1);
    if (mode == VDK_PREALLOC_OFF || start >= end)
        return 0;
    uint64_t gc = start >> s->cluster_bits, stop = qcow2_size_to_clusters(s, end);
    uint64_t per = UINT64_C(1) << s->l2_bits;
    while (gc < stop) {
        uint64_t e = (gc / per + 1) * per;
        int r = prealloc_table(s, gc, e < stop ? e : stop, mode, err);
        if (r < 0)
            return r;
        gc = e;
    }
    uint64_t need = s->alloc_end << s->cluster_bits, cur;
    int r = vdk_file_size(s->file, &cur, err);
    if (r == 0 && cur < need)
        r = vdk_file_truncate(s->file, need, err);
    return r;
}

/* ---------------------------------------------------------------- shrink */

/* Drop every mapping of guest clusters [gc, end) (lock held). */
static int drop_clusters(qcow2_state *s, uint64_t gc, uint64_t end, vdk_error *err)
{
    uint64_t per = UINT64_C(1) << s->l2_bits;
    while (gc < end) {
        uint64_t l1i = gc / per, e = (l1i + 1) * per, l2 = 0;
        if (e > end)
            e = end;
        if (l1i < s->l1_size)
            l2 = s->l1[l1i] & QCOW2_OFFSET_MASK;
        bool whole = l2 && gc == l1i * per;
        for (uint64_t c = gc; l2 && c < e; c++) {
            qcow2_cinfo ci;
            uint64_t zero = 0;
            int r = qcow2_lookup(s, c, &ci, err);
            if (r == 0 && !whole && (ci.word || ci.bitmap))
                r = qcow2_set_entries(s, c, 1, &zero, &zero, err);
            if (r == 0)
                r = qcow2_free_entry_later(s, &ci, QCOW2_FREE_PUNCH, err);
            if (r < 0)
                return r;
        }
        if (whole) { /* the whole table is past the end */
            qcow2_l2set_change(s, s->l1[l1i], 0);
            s->l1[l1i] = 0;
            qcow2_l1_mark_dirty(s, l1i);
            int r = qcow2_free_later(s, l2, s->cluster_size, QCOW2_FREE_L2 | QCOW2_FREE_PUNCH, err);
            if (r < 0)
                return r;
        }
        gc = e;
    }
    return 0;
}

static int shrink(qcow2_state *s, uint64_t size, vdk_error *err)
{
    /* Snapshots keep their own L1 tables: dropping the active mappings
     * only takes the active image's references (a shared L2 table is
     * copied before it changes, as for any write). */
    uint64_t cs = s->cluster_size, keep = qcow2_size_to_clusters(s, size);
    int r = drop_clusters(s, keep, qcow2_size_to_clusters(s, s->size), err);
    if (r == 0)
        r = qcow2_meta_flush(s, err);
    if (r == 0 && (size & (cs - 1))) {
        uint64_t tail = cs - (size & (cs - 1));
        uint8_t *z = calloc(1, tail);
        if (!z)
            return vdk_fail(err, -ENOMEM, "out of memory");
        pthread_mutex_unlock(&s->lock);
        r = qcow2_write(s, z, tail, size, err);
        pthread_mutex_lock(&s->lock);
        free(z);
    }
    return r;
}

/* ---------------------------------------------------------------- entry point */

/* A backing file larger than the old size would show through: zero it. */
static int zero_new_area(qcow2_state *s, uint64_t old, uint64_t size, vdk_error *err)
{
    vdk_image *b = s->img ? vdk_image_backing(s->img) : NULL;
    if (!b || vdk_image_size(b) <= old)
        return 0;
    uint64_t end = vdk_image_size(b) < size ? vdk_image_size(b) : size;
    pthread_mutex_unlock(&s->lock);
    int r = qcow2_write_zeroes(s->img, end - old, old, 0, err);
    pthread_mutex_lock(&s->lock);
    return r;
}

/* An external data file follows the virtual size (it may be a raw image). */
static int resize_data_file(qcow2_state *s, uint64_t size, bool shrink, vdk_error *err)
{
    uint64_t cur;
    if (s->data_file == s->file)
        return 0;
    int r = vdk_file_size(s->data_file, &cur, err);
    if (r == 0 && (shrink ? cur > size : cur < size))
        r = vdk_file_truncate(s->data_file, size, err);
    return r;
}

static int set_size(qcow2_state *s, uint64_t size, vdk_error *err)
{
    int r = resize_data_file(s, size, size < s->size, err);
    if (r < 0)
        return r;
    s->size = size;
    r = qcow2_header_write_field(s, QCOW2_OFF_SIZE, 8, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r == 0 && s->img)
        vdk_image_set_size(s->img, size);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

int qcow2_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
                 vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    (void)flags;
    if (size > (UINT64_C(1) << 62) || (size & 511))
        return vdk_fail(err, -EINVAL, "qcow2: the new size must be a multiple of 512 bytes "
                                      "and at most 2^62");
    pthread_mutex_lock(&s->lock);
    uint64_t old = s->size;
    int r = qcow2_prepare_write(s, err);
    if (r == 0 && size != old && s->nb_snapshots && s->version < 3)
        r = vdk_fail(err, VDK_EUNSUPPORTED,
                     "qcow2: cannot resize a version 2 image that has internal snapshots "
                     "(its snapshot table does not record their disk sizes)");
    if (r == 0 && size < old) {
        r = shrink(s, size, err);
        if (r == 0)
            r = set_size(s, size, err);
    } else if (r == 0) {
        r = qcow2_grow_l1(s, qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, size), err);
        if (r == 0)
            r = set_size(s, size, err);
        if (r == 0)
            r = zero_new_area(s, old, size, err);
        if (r == 0)
            r = qcow2_preallocate(s, old, size, prealloc, err);
        if (r == 0)
            r = qcow2_meta_flush(s, err);
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}
