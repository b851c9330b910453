/*
 * compress.c - compressed clusters: the zlib and zstd codecs as QEMU frames
 * them, reading a compressed cluster, and writing whole clusters compressed
 * (packed into partly used host clusters, as QEMU does).
 *
 * Framing: zlib clusters are raw deflate streams (no zlib header; QEMU
 * compresses with a 4 KiB window, we do too so that QEMU can read ours);
 * zstd clusters are plain zstd frames, and a reader decompresses (several
 * frames if need be) until one cluster of output is produced, since the
 * descriptor only gives the compressed size rounded up to 512-byte sectors.
 *
 * Compressed descriptor (x = 62 - (cluster_bits - 8)): bits 0..x-1 host byte
 * offset, bits x..61 number of additional 512-byte sectors. Every host
 * cluster that the range touches holds one reference per compressed cluster.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "qcow2.h"

/* ---------------------------------------------------------------- codecs */

static int zlib_compress(void *dst, size_t cap, const void *src, size_t len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return -EIO;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    int r = deflate(&z, Z_FINISH);
    int out = r == Z_STREAM_END ? (int)(cap - z.avail_out) : (r == Z_OK || r == Z_BUF_ERROR) ? -ENOSPC : -EIO;
    deflateEnd(&z);
    return out;
}

static int zstd_compress(void *dst, size_t cap, const void *src, size_t len)
{
    ZSTD_CCtx *c = ZSTD_createCCtx();
    if (!c)
        return -ENOMEM;
    size_t r = ZSTD_compress2(c, dst, cap, src, len);
    ZSTD_freeCCtx(c);
    if (ZSTD_isError(r))
        return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EIO;
    return (int)r;
}

/* Compressed size, -ENOSPC when it does not fit in cap. */
int qcow2_compress(int type, void *dst, size_t cap, const void *src, size_t len)
{
    return type == QCOW2_COMPRESS_ZSTD ? zstd_compress(dst, cap, src, len)
                                       : zlib_compress(dst, cap, src, len);
}

static int zlib_decompress(void *dst, size_t dlen, const void *src, size_t slen)
{
#ifdef VDK_HAVE_LIBDEFLATE
    if (qcow2_inflate_fast(dst, dlen, src, slen) == 0) /* compress-split.c */
        return 0;
#endif
    z_stream z;
    memset(&z, 0, sizeof z);
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)slen;
    z.next_out = dst;
    z.avail_out = (uInt)dlen;
    if (inflateInit2(&z, -15) != Z_OK)
        return -EIO;
    int r = inflate(&z, Z_FINISH);
    /* The input is rounded up to sectors: stopping with output full is fine. */
    int ok = (r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && z.avail_out == 0;
    inflateEnd(&z);
    return ok ? 0 : -EIO;
}

static int zstd_decompress(void *dst, size_t dlen, const void *src, size_t slen)
{
    ZSTD_DCtx *d = qcow2_zstd_dctx(), *own = NULL; /* compress-split.c */
    if (!d && !(d = own = ZSTD_createDCtx()))
        return -ENOMEM;
    ZSTD_outBuffer out = {dst, dlen, 0};
    ZSTD_inBuffer in = {src, slen, 0};
    int r = 0;
    while (out.pos < out.size) {
        size_t ip = in.pos, op = out.pos;
        size_t z = ZSTD_decompressStream(d, &out, &in);
        if (ZSTD_isError(z) || (in.pos == ip && out.pos == op)) {
            r = -EIO;
            break;
        }
    }
    ZSTD_freeDCtx(own);
    return r;
}

int qcow2_decompress(int type, void *dst, size_t dlen, const void *src, size_t slen)
{
    return type == QCOW2_COMPRESS_ZSTD ? zstd_decompress(dst, dlen, src, slen)
                                       : zlib_decompress(dst, dlen, src, slen);
}

/* ---------------------------------------------------------------- reading */

/* Decompress the cluster described by entry (validated by qcow2_decode). */
int qcow2_read_compressed(qcow2_state *s, uint64_t entry, uint64_t gc, uint8_t *out,
                          vdk_error *err)
{
    uint64_t coff = entry & s->coffset_mask, off, len;
    qcow2_compressed_range(s, entry, &off, &len);
    size_t n = (size_t)(off + len - coff);
    uint8_t *buf = malloc(n);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = vdk_file_pread(s->file, buf, n, coff, err);
    if (r == 0 && qcow2_decompress(s->compression_type, out, s->cluster_size, buf, n) < 0)
        r = vdk_fail(err, VDK_ECORRUPT,
                     "qcow2: cannot decompress the %s cluster at guest offset 0x%llx (host "
                     "0x%llx, %zu bytes)",
                     s->compression_type ? "zstd" : "zlib",
                     (unsigned long long)(gc << s->cluster_bits), (unsigned long long)coff, n);
    free(buf);
    return r;
}

/* ---------------------------------------------------------------- writing */

/* Host bytes for size bytes of compressed data (lock held). */
static int alloc_bytes(qcow2_state *s, uint64_t size, uint64_t *out, vdk_error *err)
{
    uint64_t fbo = s->free_byte_offset, cs = s->cluster_size;
    if (fbo && (fbo & (cs - 1))) {
        uint64_t c = fbo >> s->cluster_bits, rc;
        int r = qcow2_refcount_get(s, c, &rc, err);
        if (r < 0)
            return r;
        bool ok = rc > 0 && rc < s->refcount_max; /* room for one more reference */
        if (ok && size > cs - (fbo & (cs - 1))) {
            r = qcow2_alloc_cluster_at(s, c + 1, &ok, err);
            if (r < 0)
                return r;
        }
        if (ok) {
            r = qcow2_refcount_update(s, c, 1, +1, err);
            if (r < 0)
                return r;
            *out = fbo;
            s->free_byte_offset = fbo + size;
            return 0;
        }
    }
    uint64_t off, got;
    int r = qcow2_alloc_clusters(s, 1, true, &off, &got, NULL, err);
    if (r < 0)
        return r;
    *out = off;
    s->free_byte_offset = size < cs ? off + size : 0;
    return 0;
}

/* Store one compressed cluster (lock held; returns with it held). */
static int store_cluster(qcow2_state *s, uint64_t gc, const uint8_t *data, uint64_t size,
                         vdk_error *err)
{
    while (qcow2_excl_conflict(s, gc, gc + 1))
        pthread_cond_wait(&s->cond, &s->lock);
    qcow2_cinfo old;
    uint64_t host = 0;
    int r = qcow2_lookup(s, gc, &old, err);
    if (r == 0)
        r = alloc_bytes(s, size, &host, err);
    if (r < 0)
        return r;
    if (host + size > s->coffset_mask || host + size > QCOW2_MAX_HOST_OFFSET) {
        qcow2_free_now(s, host, size, NULL);
        return vdk_fail(err, VDK_ETOOBIG,
                        "qcow2: compressed data at 0x%llx is beyond what the descriptor can "
                        "address",
                        (unsigned long long)host);
    }
    qcow2_op op;
    qcow2_op_begin(s, &op, gc, gc + 1, true);
    pthread_mutex_unlock(&s->lock);
    r = vdk_file_pwrite(s->file, data, size, host, err);
    pthread_mutex_lock(&s->lock);
    if (r == 0) {
        uint64_t sectors = ((host + size - 1) >> 9) - (host >> 9);
        uint64_t w = QCOW2_OFLAG_COMPRESSED | (sectors << s->csize_shift) | host, b = 0;
        r = qcow2_set_entries(s, gc, 1, &w, &b, err);
        if (r == 0) {
            vdk_cache_flush_before_write(s->l2_cache);
            r = qcow2_free_entry_later(s, &old, 0, err);
        }
    } else {
        qcow2_free_now(s, host, size, NULL);
    }
    qcow2_op_end(s, &op);
    if (r == 0 && qcow2_too_many_pending(s))
        r = qcow2_meta_flush(s, err);
    return r;
}

/* Compress and store the cluster at guest offset off (data len <= cluster,
 * a short last cluster is padded with zeros). */
static int write_one(qcow2_state *s, const uint8_t *data, uint64_t len, uint64_t off,
                     uint8_t *in, uint8_t *out, vdk_error *err)
{
    const uint8_t *src = data;
    if (len < s->cluster_size) {
        memcpy(in, data, len);
        memset(in + len, 0, s->cluster_size - len);
        src = in;
    }
    int n = qcow2_compress(s->compression_type, out, s->cluster_size - 1, src,
                           s->cluster_size);
    if (n == -ENOSPC) /* incompressible: store it as it is */
        return qcow2_write(s, data, len, off, err);
    if (n < 0)
        return vdk_fail(err, n, "qcow2: compression failed at guest offset 0x%llx",
                        (unsigned long long)off);
    pthread_mutex_lock(&s->lock);
    int r = qcow2_prepare_write(s, err);
    if (r == 0)
        r = store_cluster(s, off >> s->cluster_bits, out, (uint64_t)n, err);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Store one cluster already compressed (compress-split.c's second phase). */
int qcow2_store_compressed(qcow2_state *s, uint64_t off, const void *data, uint64_t size,
                           vdk_error *err)
{
    pthread_mutex_lock(&s->lock);
    int r = qcow2_prepare_write(s, err);
    if (r == 0)
        r = store_cluster(s, off >> s->cluster_bits, data, size, err);
    pthread_mutex_unlock(&s->lock);
    return r;
}

int qcow2_pwrite_compressed(vdk_image *img, const void *buf, size_t len, uint64_t off,
                            vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    if (s->data_file != s->file)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: compressed clusters are not possible with an external data "
                        "file");
    uint8_t *in = malloc(s->cluster_size), *out = malloc(s->cluster_size);
    int r = in && out ? 0 : vdk_fail(err, -ENOMEM, "out of memory");
    const uint8_t *p = buf;
    while (r == 0 && len) {
        uint64_t n = len < s->cluster_size ? len : s->cluster_size;
        r = write_one(s, p, n, off, in, out, err);
        p += n;
        off += n;
        len -= n;
    }
    free(in);
    free(out);
    return r;
}
