/*
 * compress-split.c - two-phase compressed writes for the copy engine.
 *
 * qcow2_pwrite_compressed (compress.c) compresses and stores in one call,
 * so a copy that wants its compressed clusters packed in guest order would
 * have to compress in order too, one cluster at a time. These two slots
 * split the work: qcow2_compress_cluster is pure computation (the engine
 * runs it on many workers at once), and qcow2_pwrite_precompressed
 * allocates and stores the result (the engine calls it in guest order).
 * Both reuse compress.c: the same codec call (a short last cluster padded
 * with zeros, as there) and the same packed allocation and L2 update.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

int qcow2_compress_cluster(vdk_image *img, void *dst, size_t cap, const void *src,
                           size_t len, uint64_t off, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    if (s->data_file != s->file)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: compressed clusters are not possible with an external data "
                        "file");
    if (len > s->cluster_size || (off & (s->cluster_size - 1)))
        return vdk_fail(err, -EINVAL, "qcow2: %zu bytes at 0x%llx are not one cluster", len,
                        (unsigned long long)off);
    uint8_t *padded = NULL;
    if (len < s->cluster_size) {
        padded = calloc(1, s->cluster_size);
        if (!padded)
            return vdk_fail(err, -ENOMEM, "out of memory");
        memcpy(padded, src, len);
        src = padded;
    }
    size_t limit = cap < s->cluster_size - 1 ? cap : s->cluster_size - 1;
    int n = qcow2_compress(s->compression_type, dst, limit, src, s->cluster_size);
    free(padded);
    if (n == -ENOSPC)
        return 0; /* incompressible: the caller writes it as it is */
    if (n < 0)
        return vdk_fail(err, n, "qcow2: compression failed at guest offset 0x%llx",
                        (unsigned long long)off);
    return n;
}

int qcow2_pwrite_precompressed(vdk_image *img, const void *data, size_t dlen, uint64_t off,
                               vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    if (s->data_file != s->file)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: compressed clusters are not possible with an external data "
                        "file");
    return qcow2_store_compressed(s, off, data, dlen, err);
}
