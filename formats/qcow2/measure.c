/*
 * measure.c - qemu-img measure for qcow2: the bytes a new image takes.
 *
 * "fully-allocated" is the virtual size rounded up to a cluster plus all the
 * metadata a fully allocated image needs: the header cluster, every L2
 * table, the L1 table, and the refcount table and blocks that count all of
 * it (found by iterating to a fixed point, as QEMU does). "required" keeps
 * that metadata but counts only the data clusters a copy would allocate: the
 * source's data clusters (none for an empty image; all of them with
 * preallocation=falloc/full, or when the new image has a backing file,
 * since the backing file may share nothing with the source). Numbers agree
 * with qemu-img 7.2's. vdk does not copy persistent bitmaps, so "bitmaps"
 * is 0 whenever it applies (a qcow2 v3 image measured from a qcow2 source).
 */
#include <errno.h>
#include <string.h>

#include "qcow2.h"

static uint64_t div_up(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
static uint64_t round_up(uint64_t a, uint64_t b) { return div_up(a, b) * b; }

/* Bytes of refcount table and blocks for clusters clusters (and themselves). */
static uint64_t refcount_meta(uint64_t clusters, uint64_t cs, unsigned order)
{
    uint64_t per_table_cluster = cs / 8, per_block = cs * 8 / (UINT64_C(1) << order);
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = div_up(clusters + table + blocks, per_block);
        table = div_up(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

static uint64_t prealloc_size(uint64_t size, uint64_t cs, unsigned order, bool ext_l2)
{
    uint64_t entry = ext_l2 ? 16 : 8, aligned = round_up(size, cs), meta = cs;
    uint64_t nl2e = round_up(aligned / cs, cs / entry);
    meta += nl2e * entry;
    uint64_t nl1e = round_up(nl2e * entry / cs, cs / 8);
    meta += nl1e * 8;
    meta += refcount_meta((meta + aligned) / cs, cs, order);
    return meta + aligned;
}

typedef struct mopts {
    uint64_t cluster_size, refcount_bits;
    bool ext_l2, lazy;
    int prealloc, version;
    const char *backing;
} mopts;

/* The creation options, as create.c reads them; the ones that do not change
 * the size are only checked and marked used. */
static int read_options(vdk_opts *o, mopts *m, vdk_error *err)
{
    const char *v;
    uint64_t ignored;
    int r;
    m->cluster_size = 65536;
    m->refcount_bits = 16;
    m->version = 3;
    if ((r = vdk_opt_size(o, "cluster_size", &m->cluster_size, err)) < 0 ||
        (r = vdk_opt_size(o, "refcount_bits", &m->refcount_bits, err)) < 0 ||
        (r = vdk_opt_size(o, "size", &ignored, err)) < 0 ||
        (r = vdk_opt_bool(o, "extended_l2", &m->ext_l2, err)) < 0 ||
        (r = vdk_opt_bool(o, "lazy_refcounts", &m->lazy, err)) < 0)
        return r;
    if (vdk_opt_str(o, "preallocation", &v) && vdk_prealloc_parse(v, &m->prealloc) < 0)
        return vdk_fail(err, VDK_EOPTION, "Parameter 'preallocation' does not accept value '%s'",
                        v);
    if (vdk_opt_str(o, "compat", &v))
        m->version = (!strcmp(v, "0.10") || !strcmp(v, "v2")) ? 2 : 3;
    if (vdk_opt_str(o, "backing_file", &m->backing) && !*m->backing)
        m->backing = NULL;
    vdk_opt_str(o, "backing_fmt", &v);
    vdk_opt_str(o, "compression_type", &v);
    uint64_t cs = m->cluster_size, rb = m->refcount_bits;
    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
        return vdk_fail(err, VDK_EOPTION,
                        "Cluster size must be a power of two between 512 and 2048k");
    if (!rb || rb > 64 || (rb & (rb - 1)))
        return vdk_fail(err, VDK_EOPTION,
                        "Refcount width must be a power of two and may not exceed 64 bits");
    if (m->ext_l2 && cs < 16384)
        return vdk_fail(err, VDK_EOPTION, "Extended L2 entries are only supported with cluster "
                                          "sizes of at least 16384 bytes");
    return 0;
}

int qcow2_measure(const vdk_measure_args *a, vdk_measure_info *out, vdk_error *err)
{
    mopts m;
    memset(&m, 0, sizeof m);
    int r = read_options(a->opts, &m, err);
    if (r < 0)
        return r;
    uint64_t cs = m.cluster_size, entry = m.ext_l2 ? 16 : 8;
    uint64_t vsize = round_up(a->size, cs);
    if (div_up(vsize / cs, cs / entry) * 8 > QCOW2_MAX_L1_BYTES)
        return vdk_fail(err, VDK_ETOOBIG,
                        "The image size is too large (try using a larger cluster size)");
    unsigned order = 0;
    while ((UINT64_C(1) << order) < m.refcount_bits)
        order++;
    uint64_t required = 0;
    if (a->source && m.backing)
        required = vsize;
    else if (a->source && (r = vdk_measure_data(a->source, cs, &required, err)) < 0)
        return r;
    if (m.prealloc == VDK_PREALLOC_FALLOC || m.prealloc == VDK_PREALLOC_FULL)
        required = vsize;
    out->fully_allocated = prealloc_size(vsize, cs, order, m.ext_l2);
    out->required = out->fully_allocated - vsize + required;
    out->has_bitmaps = m.version >= 3 && a->source &&
                       strcmp(vdk_image_format(a->source), "qcow2") == 0;
    out->bitmaps = 0;
    return 0;
}
