/*
 * compress-split.c - two-phase compressed writes for the copy engine.
 *
 * qcow2_pwrite_compressed (compress.c) compresses and stores in one call,
 * so a copy that wants its compressed clusters packed in guest order would
 * have to compress in order too, one cluster at a time. These two slots
 * split the work: qcow2_compress_cluster is pure computation (the engine
 * runs it on many workers at once), and qcow2_pwrite_precompressed
 * allocates and stores the result (the engine calls it in guest order),
 * through compress.c's packed allocation and L2 update.
 *
 * Codecs. Each worker thread keeps its compressor between clusters (a
 * fresh zlib or zstd context per cluster costs an allocation and a table
 * reset each time). zlib-type images are written as raw deflate streams;
 * with libdeflate (VDK_HAVE_LIBDEFLATE) they are made by libdeflate, at the
 * same level 6 as QEMU's zlib: on the benchmark's clusters it compresses
 * about 1.8 times as fast for the same ratio (docs/benchmarks.md). Its
 * streams may refer back further than QEMU's 4 KiB window, which every
 * reader still decodes, since a cluster is always inflated in one call into
 * a whole-cluster buffer (QEMU, zlib, vdk): a distance is checked against
 * the output so far, never against the window. Without libdeflate, and for
 * zstd, the stream is the one compress.c makes (same parameters). With
 * libdeflate, compress.c's reader also tries qcow2_inflate_fast first.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>
#ifdef VDK_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "qcow2.h"

/* ---------------------------------------------------------------- per-thread codecs */

typedef struct codec_ctx {
#ifdef VDK_HAVE_LIBDEFLATE
    struct libdeflate_compressor *deflate;
    struct libdeflate_decompressor *inflate;
#else
    z_stream z;
    bool z_ready;
#endif
    ZSTD_CCtx *zstd;
    ZSTD_DCtx *unzstd;
} codec_ctx;

static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static bool ctx_key_ok;

static void ctx_free(void *p)
{
    codec_ctx *c = p;
#ifdef VDK_HAVE_LIBDEFLATE
    libdeflate_free_compressor(c->deflate);
    libdeflate_free_decompressor(c->inflate);
#else
    if (c->z_ready)
        deflateEnd(&c->z);
#endif
    ZSTD_freeCCtx(c->zstd);
    ZSTD_freeDCtx(c->unzstd);
    free(c);
}

static void ctx_key_init(void)
{
    ctx_key_ok = pthread_key_create(&ctx_key, ctx_free) == 0;
}

/* This thread's codecs, freed when the thread exits; NULL without memory. */
static codec_ctx *thread_ctx(void)
{
    pthread_once(&ctx_once, ctx_key_init);
    if (!ctx_key_ok)
        return NULL;
    codec_ctx *c = pthread_getspecific(ctx_key);
    if (!c && (c = calloc(1, sizeof *c)) && pthread_setspecific(ctx_key, c) != 0) {
        free(c);
        c = NULL;
    }
    return c;
}

/* Raw deflate at QEMU's level; the stored length, -ENOSPC if it does not fit. */
static int deflate_cluster(codec_ctx *c, void *dst, size_t cap, const void *src, size_t len)
{
#ifdef VDK_HAVE_LIBDEFLATE
    if (!c->deflate && !(c->deflate = libdeflate_alloc_compressor(6)))
        return -ENOMEM;
    size_t n = libdeflate_deflate_compress(c->deflate, src, len, dst, cap);
    return n ? (int)n : -ENOSPC;
#else
    if (!c->z_ready) {
        if (deflateInit2(&c->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return -ENOMEM;
        c->z_ready = true;
    } else if (deflateReset(&c->z) != Z_OK) {
        return -EIO;
    }
    c->z.next_in = (Bytef *)src;
    c->z.avail_in = (uInt)len;
    c->z.next_out = dst;
    c->z.avail_out = (uInt)cap;
    int r = deflate(&c->z, Z_FINISH);
    if (r == Z_STREAM_END)
        return (int)(cap - c->z.avail_out);
    return r == Z_OK || r == Z_BUF_ERROR ? -ENOSPC : -EIO;
#endif
}

static int zstd_cluster(codec_ctx *c, void *dst, size_t cap, const void *src, size_t len)
{
    if (!c->zstd && !(c->zstd = ZSTD_createCCtx()))
        return -ENOMEM;
    size_t r = ZSTD_compress2(c->zstd, dst, cap, src, len);
    if (ZSTD_isError(r))
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
    return (int)r;
}

/* Compressed size of one padded cluster, -ENOSPC when it does not fit. */
static int compress_one(int type, void *dst, size_t cap, const void *src, size_t len)
{
    codec_ctx *c = thread_ctx();
    if (!c)
        return qcow2_compress(type, dst, cap, src, len);
    return type == QCOW2_COMPRESS_ZSTD ? zstd_cluster(c, dst, cap, src, len)
                                       : deflate_cluster(c, dst, cap, src, len);
}

#ifdef VDK_HAVE_LIBDEFLATE
/*
 * Decompress one raw deflate cluster with libdeflate, about twice as fast
 * as zlib's inflate (docs/benchmarks.md). Returns 0 when it produced exactly
 * dlen bytes; anything else (1) leaves the cluster to compress.c's zlib
 * path, which also accepts streams that run past the cluster.
 */
int qcow2_inflate_fast(void *dst, size_t dlen, const void *src, size_t slen)
{
    codec_ctx *c = thread_ctx();
    if (!c || (!c->inflate && !(c->inflate = libdeflate_alloc_decompressor())))
        return 1;
    size_t in_used, out;
    enum libdeflate_result r =
        libdeflate_deflate_decompress_ex(c->inflate, src, slen, dst, dlen, &in_used, &out);
    return r == LIBDEFLATE_SUCCESS && out == dlen ? 0 : 1;
}
#endif

/*
 * This thread's zstd decompression context, reset for a new cluster; NULL
 * without memory (compress.c then makes one for the call). Creating one per
 * cluster cost more than decompressing a 64 KiB cluster.
 */
ZSTD_DCtx *qcow2_zstd_dctx(void)
{
    codec_ctx *c = thread_ctx();
    if (!c || (!c->unzstd && !(c->unzstd = ZSTD_createDCtx())))
        return NULL;
    if (ZSTD_isError(ZSTD_DCtx_reset(c->unzstd, ZSTD_reset_session_only)))
        return NULL;
    return c->unzstd;
}

/* ---------------------------------------------------------------- slots */

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
    int n = compress_one(s->compression_type, dst, limit, src, s->cluster_size);
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
