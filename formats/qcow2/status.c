/*
 * status.c - block_status for this layer: what the L1/L2 tables say about a
 * guest range, merged over as many clusters of the same kind as one call
 * can see (data runs only while their host offsets stay contiguous).
 *
 * Data: DATA | ALLOCATED | OFFSET_VALID. Zero clusters (zero flag or
 * subcluster zero bits): ZERO | ALLOCATED, plus OFFSET_VALID when a host
 * cluster is preallocated. Compressed: DATA | ALLOCATED | COMPRESSED.
 * Unallocated (clusters or subclusters): no flags, the core asks below;
 * an unallocated subcluster of an allocated cluster also has its host
 * offset (OFFSET_VALID), as in QEMU.
 *
 * Like QEMU, when the image looks preallocated (far more clusters have a
 * refcount than the file really holds), data answers carry VDK_BS_RECURSE
 * so that the core reports holes of the host file as zeros.
 */
#include <string.h>

#include "qcow2.h"

/* QEMU's test: clusters with a refcount reach 10/9 of the clusters the
 * file has blocks for (plus two). Lock held. */
static void detect_prealloc(qcow2_state *s)
{
    s->prealloc_checked = true;
    uint64_t len;
    int64_t real = vdk_file_allocated_size(s->file);
    if (real < 0 || vdk_file_size(s->file, &len, NULL) < 0)
        return;
    uint64_t rc = (uint64_t)real / s->cluster_size;
    uint64_t threshold = rc * 10 / 9 > rc + 2 ? rc * 10 / 9 : rc + 2, count = 0, v;
    uint64_t end = qcow2_size_to_clusters(s, len);
    for (uint64_t c = 0; c < end && count < threshold; c++) {
        if (qcow2_refcount_get(s, c, &v, NULL) < 0)
            return;
        count += v != 0;
    }
    s->metadata_prealloc = count >= threshold;
}

int qcow2_block_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                       vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    qcow2_map m;
    pthread_mutex_lock(&s->lock);
    if (!s->prealloc_checked)
        detect_prealloc(s);
    int r = qcow2_map_range(s, off, len, true, &m, err);
    pthread_mutex_unlock(&s->lock);
    if (r < 0)
        return r;
    ext->start = off;
    ext->length = m.bytes;
    ext->offset = 0;
    switch (m.kind) {
    case QCOW2_DATA:
        ext->flags = VDK_BS_DATA | VDK_BS_ALLOCATED | VDK_BS_OFFSET_VALID;
        ext->offset = m.host;
        if (s->data_file != s->file) /* offsets are in the data file, not ours */
            ext->flags &= ~VDK_BS_OFFSET_VALID;
        else if (s->metadata_prealloc)
            ext->flags |= VDK_BS_RECURSE;
        break;
    case QCOW2_ZERO:
        ext->flags = VDK_BS_ZERO | VDK_BS_ALLOCATED;
        if (m.host && s->data_file == s->file) {
            ext->flags |= VDK_BS_OFFSET_VALID;
            ext->offset = m.host;
        }
        break;
    case QCOW2_COMPRESSED:
        ext->flags = VDK_BS_DATA | VDK_BS_ALLOCATED | VDK_BS_COMPRESSED;
        break;
    default:
        /* Unallocated; subclusters of an allocated cluster (extended L2)
         * keep their host offset, as QEMU reports it. */
        ext->flags = 0;
        if (m.host && s->data_file == s->file) {
            ext->flags = VDK_BS_OFFSET_VALID;
            ext->offset = m.host;
        }
        break;
    }
    return 0;
}
