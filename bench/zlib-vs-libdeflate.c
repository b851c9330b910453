/*
 * bench/zlib-vs-libdeflate.c - raw deflate on 64 KiB qcow2 clusters: zlib
 * as QEMU runs it (level 6, 4 KiB window) against libdeflate (level 6), for
 * compression and decompression, on the first N clusters of a file. Also
 * checks that every libdeflate cluster inflates with zlib and a 4 KiB
 * window in one call, as QEMU reads compressed clusters.
 *
 *   cc -O2 -o /tmp/zbench bench/zlib-vs-libdeflate.c -lz -ldeflate
 *   /tmp/zbench /tmp/vdk-bench/mixed.raw 4096
 */
#include <libdeflate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#define CS 65536

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* Inflate one cluster as QEMU does; 0 when it fills the cluster. */
static int qemu_inflate(const unsigned char *in, size_t n, unsigned char *out)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    inflateInit2(&z, -12);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = CS;
    int r = inflate(&z, Z_FINISH);
    int ok = (r == Z_STREAM_END || r == Z_BUF_ERROR) && z.avail_out == 0;
    inflateEnd(&z);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return fprintf(stderr, "usage: %s FILE CLUSTERS\n", argv[0]), 2;
    FILE *f = fopen(argv[1], "rb");
    size_t n = (size_t)atol(argv[2]);
    unsigned char *in = malloc(CS * n), *out = malloc(CS * n), *back = malloc(CS);
    size_t *len = calloc(n, sizeof *len);
    if (!f || !in || !out || !back || !len)
        return 1;
    n = fread(in, 1, CS * n, f) / CS;
    double mb = (double)n * CS / 1e6, t = now(), total = 0;

    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit2(&z, 6, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY);
    for (size_t i = 0; i < n; i++) {
        deflateReset(&z);
        z.next_in = in + i * CS;
        z.avail_in = CS;
        z.next_out = out + i * CS;
        z.avail_out = CS - 1;
        len[i] = deflate(&z, Z_FINISH) == Z_STREAM_END ? CS - 1 - z.avail_out : 0;
        total += len[i] ? len[i] : CS;
    }
    printf("zlib compress:         %6.0f MB/s, stored %.3f of the input\n", mb / (now() - t),
           total / (n * (double)CS));

    size_t packed = 0;
    t = now();
    for (size_t i = 0; i < n; i++)
        if (len[i] && qemu_inflate(out + i * CS, len[i], back) == 0)
            packed++;
    printf("zlib decompress:       %6.0f MB/s (%zu compressed clusters)\n",
           packed * CS / 1e6 / (now() - t), packed);

    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    t = now();
    for (size_t i = 0; i < n; i++) {
        size_t got;
        if (len[i] && (libdeflate_deflate_decompress(d, out + i * CS, len[i], back, CS, &got) ||
                       got != CS))
            return fprintf(stderr, "libdeflate failed on cluster %zu\n", i), 1;
    }
    printf("libdeflate decompress: %6.0f MB/s\n", packed * CS / 1e6 / (now() - t));

    struct libdeflate_compressor *c = libdeflate_alloc_compressor(6);
    size_t unreadable = 0;
    total = 0;
    t = now();
    for (size_t i = 0; i < n; i++) {
        len[i] = libdeflate_deflate_compress(c, in + i * CS, CS, out + i * CS, CS - 1);
        total += len[i] ? len[i] : CS;
    }
    double tc = now() - t;
    for (size_t i = 0; i < n; i++)
        if (len[i] && (qemu_inflate(out + i * CS, len[i], back) || memcmp(back, in + i * CS, CS)))
            unreadable++;
    printf("libdeflate compress:   %6.0f MB/s, stored %.3f of the input; %zu of %zu clusters "
           "unreadable the way QEMU reads them\n", mb / tc, total / (n * (double)CS), unreadable, n);
    return 0;
}
