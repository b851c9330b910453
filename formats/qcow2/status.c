/*
 * status.c - block_status for this layer: what the L1/L2 tables say about a
 * guest range, merged over as many clusters of the same kind as one call
 * can see (data runs only while their host offsets stay contiguous).
 *
 * Data: DATA | ALLOCATED | OFFSET_VALID. Zero clusters (zero flag or
 * subcluster zero bits): ZERO | ALLOCATED, plus OFFSET_VALID when a host
 * cluster is preallocated. Compressed: DATA | ALLOCATED | COMPRESSED.
 * Unallocated (clusters or subclusters): no flags, the core asks below.
 */
#include <string.h>

#include "qcow2.h"

int qcow2_block_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                       vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    qcow2_map m;
    pthread_mutex_lock(&s->lock);
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
        ext->flags = 0;
        break;
    }
    return 0;
}
