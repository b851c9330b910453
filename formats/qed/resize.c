/*
 * resize.c - changing the virtual size of a QED image.
 *
 * Growing makes the new range read as zeros before the header announces
 * it: clusters the backing file would fill become zero clusters, and any
 * data left past the old end (a partial last cluster, or clusters kept by
 * an earlier shrink) is zeroed in place. Shrinking (QEMU refuses it for
 * QED; vdk allows it with the shrink flag) writes the smaller size first,
 * then zeroes the stored data past the new end and releases its host space.
 * The clusters stay mapped, so nothing leaks and the image stays consistent
 * at every step. Sizes are multiples of 512 bytes, as the format requires.
 */
#include <errno.h>

#include "qed.h"

/* Write the new size into the header, durably. */
static int set_size(qed_state *s, uint64_t size, vdk_error *err)
{
    uint64_t old = s->image_size;
    s->image_size = size;
    int r = qed_header_write(s, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0) {
        s->image_size = old;
        return qed_set_broken(s, r);
    }
    if (s->img)
        vdk_image_set_size(s->img, size);
    return 0;
}

static int grow(qed_state *s, uint64_t old, uint64_t size, vdk_error *err)
{
    int r = qed_zero_range(s, old, size - old, QED_ZR_ZERO, true, err);
    if (r < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    r = qed_meta_flush(s, err);
    if (r == 0)
        r = set_size(s, size, err);
    pthread_mutex_unlock(&s->lock);
    return r;
}

static int shrink(qed_state *s, uint64_t old, uint64_t size, vdk_error *err)
{
    pthread_mutex_lock(&s->lock);
    int r = set_size(s, size, err);
    pthread_mutex_unlock(&s->lock);
    if (r == 0)
        r = qed_zero_range(s, size, old - size, QED_ZR_SCRUB, true, err);
    return r;
}

int qed_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
               vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    if (prealloc != VDK_PREALLOC_OFF)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qed: preallocation mode '%s' is not supported (only 'off')",
                        vdk_prealloc_name(prealloc));
    if (size % 512)
        return vdk_fail(err, -EINVAL, "qed: image size %llu is not a multiple of 512 bytes",
                        (unsigned long long)size);
    uint64_t max = qed_max_image_size(s->cluster_size, s->table_size);
    if (size > max)
        return vdk_fail(err, VDK_ETOOBIG,
                        "qed: image size %llu exceeds the maximum %llu for cluster size %u "
                        "and table size %u",
                        (unsigned long long)size, (unsigned long long)max, s->cluster_size,
                        s->table_size);
    pthread_mutex_lock(&s->lock);
    qed_wait_idle(s);
    uint64_t old = s->image_size;
    int r = qed_check_broken(s, err);
    pthread_mutex_unlock(&s->lock);
    if (r < 0 || size == old)
        return r;
    return size > old ? grow(s, old, size, err) : shrink(s, old, size, err);
}
