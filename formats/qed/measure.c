/*
 * measure.c - how large a new QED image would be (vdk measure -O qed).
 * qemu-img 7.2 cannot measure QED; the numbers follow from the layout:
 *
 *   fully allocated = header clusters + L1 table
 *                     + one L2 table per table_entries * cluster_size of guest
 *                     + every guest cluster
 *   required        = header clusters + L1 table
 *                     + the L2 tables and the clusters that hold data in the
 *                       source (by its block status, whole chain; zero and
 *                       unallocated ranges cost nothing: a copy leaves them
 *                       unallocated in a QED image without a backing file)
 */
#include "qed.h"

/* Clusters and L2 tables of a new image that the source's data touches. */
static int source_usage(vdk_image *src, uint64_t cs, uint64_t cov, uint64_t *clusters,
                        uint64_t *tables, vdk_error *err)
{
    uint64_t size = vdk_image_size(src), last_c = UINT64_MAX, last_t = UINT64_MAX;
    *clusters = *tables = 0;
    for (uint64_t off = 0; off < size;) {
        vdk_extent e;
        int r = vdk_image_block_status(src, off, size - off, 0, &e, err);
        if (r < 0)
            return r;
        unsigned f = e.flags;
        if (!(f & VDK_BS_ZERO) && (f & VDK_BS_DATA) && (f & VDK_BS_ALLOCATED)) {
            uint64_t c0 = off / cs, c1 = (off + e.length - 1) / cs;
            uint64_t t0 = off / cov, t1 = (off + e.length - 1) / cov;
            *clusters += c1 - c0 + 1 - (c0 == last_c);
            *tables += t1 - t0 + 1 - (t0 == last_t);
            last_c = c1;
            last_t = t1;
        }
        off += e.length;
    }
    return 0;
}

int qed_measure(const vdk_measure_args *args, vdk_measure_info *out, vdk_error *err)
{
    qed_create_opts o;
    int r = qed_read_create_opts(args->opts, &o, err);
    if (r < 0)
        return r;
    o.size = args->size;
    if (o.size == VDK_SIZE_FROM_BACKING)
        return vdk_fail(err, VDK_EOPTION, "qed: image size must be given");
    if ((r = qed_check_new_size(&o, err)) < 0)
        return r;
    uint64_t cs = o.cluster_size, tbytes = o.table_size * cs;
    uint64_t cov = tbytes / 8 * cs; /* guest bytes one L2 table maps */
    uint64_t fixed = qed_header_clusters(&o) * cs + tbytes;
    uint64_t nclusters = (o.size + cs - 1) / cs, ntables = (o.size + cov - 1) / cov;
    out->fully_allocated = fixed + ntables * tbytes + nclusters * cs;
    out->required = fixed;
    out->has_bitmaps = 0;
    if (args->source) {
        uint64_t c, t;
        if ((r = source_usage(args->source, cs, cov, &c, &t, err)) < 0)
            return r;
        out->required += t * tbytes + c * cs;
    }
    return 0;
}
