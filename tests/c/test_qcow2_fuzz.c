/*
 * test_qcow2_fuzz.c - seeded mutation fuzzing of qcow2 metadata.
 *
 * Valid images (plain, compressed, extended L2, with a snapshot, with a
 * backing file name) get random bytes, words and bits flipped in their
 * header cluster and metadata tables. Each mutant is opened read-only and
 * read whole, block-status walked, then opened read-write and written to
 * and flushed. Any outcome is fine except a crash, a hang, or an error code
 * outside the expected set; run it under ASan/UBSan to catch reads outside
 * buffers. Usage: test_qcow2_fuzz [seed [iterations]].
 */
#include "test_qcow2_util.h"

static const char *const templates[] = {"f1.qcow2", "f2.qcow2", "f3.qcow2", "f4.qcow2",
                                        "f5.qcow2"};

static bool expected_code(int r)
{
    return r == 0 || r == VDK_ECORRUPT || r == VDK_EUNSUPPORTED || r == VDK_EFORMAT ||
           r == VDK_ETOOBIG || r == VDK_EBROKEN || r == -EIO || r == -ENOMEM || r == -EROFS ||
           r == -ERANGE || r == -ENOENT || r == -EINVAL || r == -EFBIG || r == -ENOSPC;
}

/* Offsets worth mutating: the header cluster and the first metadata. */
static long pick_offset(uint64_t *x, size_t len)
{
    switch (vt_below(x, 4)) {
    case 0:
        return (long)vt_below(x, 112);
    case 1:
        return (long)vt_below(x, len < 4096 ? len : 4096);
    default:
        return (long)vt_below(x, len < (1u << 20) ? len : (1u << 20));
    }
}

static void mutate(uint8_t *d, size_t len, uint64_t *x)
{
    int n = 1 + (int)vt_below(x, 4);
    for (int i = 0; i < n; i++) {
        long off = pick_offset(x, len);
        switch (vt_below(x, 4)) {
        case 0:
            d[off] ^= (uint8_t)(1u << vt_below(x, 8));
            break;
        case 1:
            d[off] = (uint8_t)vt_rand(x);
            break;
        case 2: /* a big-endian word with an interesting value */
            if ((size_t)off + 8 <= len) {
                static const uint64_t vals[] = {0, 1, 0x200, 0x10000, 0xffffffff,
                                                UINT64_C(0x8000000000000000), UINT64_MAX,
                                                UINT64_C(0x00fffffffffffe00)};
                uint64_t v = vals[vt_below(x, 8)];
                for (int b = 0; b < 8; b++)
                    d[off + b] = (uint8_t)(v >> (56 - 8 * b));
            }
            break;
        default:
            if ((size_t)off + 4 <= len)
                memset(d + off, 0xff, 4);
        }
    }
}

static int exercise(const char *path, int *code)
{
    vdk_error err = {0};
    vdk_open_opts o = {.format = "qcow2", .flags = VDK_OPEN_NO_BACKING};
    vdk_image *img = NULL;
    int r = vdk_image_open(path, &o, &img, &err);
    *code = r;
    if (r < 0)
        return expected_code(r) ? 0 : -1;
    uint64_t size = vdk_image_size(img), off = 0;
    uint8_t *buf = malloc(1 << 20);
    while (off < size && off < (64u << 20)) {
        uint64_t n = size - off < (1u << 20) ? size - off : (1u << 20);
        r = vdk_image_pread(img, buf, n, off, &err);
        if (!expected_code(r))
            *code = r;
        vdk_extent e;
        r = vdk_image_block_status(img, off, n, 0, &e, &err);
        if (!expected_code(r))
            *code = r;
        off += n;
    }
    vdk_image_close(img, &err);
    o.flags |= VDK_OPEN_RDWR;
    if (vdk_image_open(path, &o, &img, &err) == 0) {
        memset(buf, 0x5a, 70000);
        uint64_t sz = vdk_image_size(img);
        int steps[4];
        steps[0] = vdk_image_pwrite(img, buf, sz < 70000 ? sz : 70000, 0, &err);
        steps[1] = sz > 200000 ? vdk_image_write_zeroes(img, 100000, 100000, 0, &err) : 0;
        steps[2] = sz > 200000 ? vdk_image_discard(img, 65536, 131072, &err) : 0;
        steps[3] = vdk_image_flush(img, &err);
        for (int i = 0; i < 4; i++)
            if (!expected_code(steps[i]))
                *code = steps[i];
        vdk_image_close(img, &err);
    }
    free(buf);
    return expected_code(*code) ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_fuzz: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 1234;
    int iters = argc > 2 ? atoi(argv[2]) : 400;
    char out[4096];
    int st = vt_sh(out, sizeof out,
                   "cd '%s' && qemu-img create -q -f qcow2 -o cluster_size=4k f1.qcow2 8M && "
                   "qemu-io -c 'write -P 1 0 1M' -c 'write -z 2M 64k' f1.qcow2 >/dev/null && "
                   "qemu-img convert -c -O qcow2 -o cluster_size=4k f1.qcow2 f2.qcow2 && "
                   "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k f3.qcow2 8M && "
                   "qemu-io -c 'write -P 2 1k 3k' -c 'write -P 3 40k 20k' f3.qcow2 >/dev/null && "
                   "cp f1.qcow2 f4.qcow2 && qemu-img snapshot -c s f4.qcow2 && "
                   "qemu-io -c 'write -P 4 0 100k' f4.qcow2 >/dev/null && "
                   "truncate -s 2M b.raw && qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=1k -b b.raw "
                   "-F raw f5.qcow2 4M && qemu-io -c 'write -P 5 0 20k' f5.qcow2 >/dev/null",
                   vt_dir);
    if (st != 0) {
        fprintf(stderr, "setup failed: %s\n", out);
        return 1;
    }
    uint64_t x = seed;
    int opened = 0;
    for (int i = 0; i < iters; i++) {
        const char *t = templates[vt_below(&x, 5)];
        size_t len = 0;
        uint8_t *d = vt_read_file(vt_path(t), &len);
        if (!d)
            continue;
        mutate(d, len, &x);
        vt_write_file(vt_path("m.qcow2"), d, len);
        free(d);
        int code = 0;
        if (exercise(vt_path("m.qcow2"), &code) < 0)
            VT_CHECK(0, "iteration %d (%s): unexpected result %d (%s)", i, t, code,
                     vdk_errname(code));
        opened += code == 0;
    }
    printf("test_qcow2_fuzz: %d mutants, %d opened cleanly\n", iters, opened);
    return vt_finish("test_qcow2_fuzz");
}
