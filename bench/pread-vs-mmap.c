/*
 * bench/pread-vs-mmap.c - would reading the source through mmap (one copy
 * fewer) make a page-cache conversion faster? The same loop as the copy
 * engine's raw path, on one thread: walk the source's data ranges
 * (SEEK_DATA/SEEK_HOLE), skip 4 KiB blocks of zeros, write the rest where
 * it belongs; the source is either read with pread into a buffer or mapped
 * and written straight from the mapping.
 *
 *   cc -O2 -o /tmp/pvm bench/pread-vs-mmap.c
 *   hyperfine -N -w 1 -r 15 \
 *     -p 'rm -f /tmp/pvm.out' '/tmp/pvm pread /tmp/vdk-bench/mixed.raw /tmp/pvm.out' \
 *     -p 'rm -f /tmp/pvm.out' '/tmp/pvm mmap /tmp/vdk-bench/mixed.raw /tmp/pvm.out'
 *
 * Results are in docs/benchmarks.md ("What did not help").
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (2u << 20)
#define BLOCK 4096u

static int all_zero(const uint8_t *p, size_t n)
{
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < n / 8; i++)
        if (w[i])
            return 0;
    return 1;
}

/* Write the non-zero 4 KiB runs of p[0..len) at off of out. */
static int write_nonzero(int out, const uint8_t *p, size_t len, off_t off)
{
    size_t start = 0;
    int in_run = 0;
    for (size_t k = 0; k <= len; k += BLOCK) {
        int z = k == len || all_zero(p + k, len - k < BLOCK ? len - k : BLOCK);
        if (!z && !in_run) {
            in_run = 1;
            start = k;
        } else if (z && in_run) {
            if (pwrite(out, p + start, k - start, off + (off_t)start) != (ssize_t)(k - start))
                return -1;
            in_run = 0;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "pread") && strcmp(argv[1], "mmap"))) {
        fprintf(stderr, "usage: %s pread|mmap SOURCE TARGET\n", argv[0]);
        return 2;
    }
    int use_map = !strcmp(argv[1], "mmap");
    int in = open(argv[2], O_RDONLY), out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    struct stat st;
    if (in < 0 || out < 0 || fstat(in, &st) < 0) {
        perror("open");
        return 1;
    }
    off_t size = st.st_size;
    uint8_t *buf = aligned_alloc(BLOCK, CHUNK), *map = NULL;
    if (use_map && (map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, in, 0)) == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (!buf || ftruncate(out, size) < 0) {
        perror("setup");
        return 1;
    }
    for (off_t pos = 0; pos < size;) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0)
            break;
        off_t hole = lseek(in, data, SEEK_HOLE);
        for (off_t off = data; off < hole; off += CHUNK) {
            size_t len = hole - off < (off_t)CHUNK ? (size_t)(hole - off) : CHUNK;
            const uint8_t *p = map ? map + off : buf;
            if (!map && pread(in, buf, len, off) != (ssize_t)len) {
                perror("pread");
                return 1;
            }
            if (write_nonzero(out, p, len, off) < 0) {
                perror("pwrite");
                return 1;
            }
        }
        pos = hole;
    }
    return close(out) < 0;
}
