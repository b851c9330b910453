/*
 * test_qcow2_interop.c - images made by qemu-img and qemu-io, with every
 * option vdk must read (v2/v3, every cluster size from 512 B to 2 MiB,
 * refcount widths 1 to 64, zlib and zstd compression, zero clusters,
 * extended L2 with subcluster writes, discards, backing chains,
 * preallocation, grown images, internal snapshots), must read through vdk
 * byte for byte as `qemu-img convert -O raw` reads them. Block status of
 * every image is also walked and cross-checked against the data.
 */
#include "test_qcow2_util.h"

typedef struct recipe {
    const char *name;
    const char *sh; /* run in the scratch folder; makes img.qcow2 */
} recipe;

/* src.raw: 8 MiB of patterned data with holes, made once. */
#define QIO "qemu-io -f qcow2 "
#define W(p, o, l) " -c 'write -P " p " " o " " l "'"

static const recipe recipes[] = {
    {"v3 default", "qemu-img create -q -f qcow2 img.qcow2 64M && " QIO "img.qcow2" W("0x11", "0", "100k")
                   W("0x22", "1M", "3M") W("0x33", "60M", "4M") " >/dev/null"},
    {"v2", "qemu-img create -q -f qcow2 -o compat=0.10 img.qcow2 64M && " QIO "img.qcow2"
           W("0x44", "7k", "90k") W("0x55", "5M", "1M") " -c 'write -z 5M 64k' >/dev/null"},
    {"convert 512", "qemu-img convert -O qcow2 -o cluster_size=512 src.raw img.qcow2"},
    {"convert 1k", "qemu-img convert -O qcow2 -o cluster_size=1k src.raw img.qcow2"},
    {"convert 2k", "qemu-img convert -O qcow2 -o cluster_size=2k src.raw img.qcow2"},
    {"convert 4k", "qemu-img convert -O qcow2 -o cluster_size=4k src.raw img.qcow2"},
    {"convert 8k", "qemu-img convert -O qcow2 -o cluster_size=8k src.raw img.qcow2"},
    {"convert 16k", "qemu-img convert -O qcow2 -o cluster_size=16k src.raw img.qcow2"},
    {"convert 32k", "qemu-img convert -O qcow2 -o cluster_size=32k src.raw img.qcow2"},
    {"convert 128k", "qemu-img convert -O qcow2 -o cluster_size=128k src.raw img.qcow2"},
    {"convert 256k", "qemu-img convert -O qcow2 -o cluster_size=256k src.raw img.qcow2"},
    {"convert 512k", "qemu-img convert -O qcow2 -o cluster_size=512k src.raw img.qcow2"},
    {"convert 1M", "qemu-img convert -O qcow2 -o cluster_size=1M src.raw img.qcow2"},
    {"convert 2M", "qemu-img convert -O qcow2 -o cluster_size=2M src.raw img.qcow2"},
    {"refcount 1", "qemu-img convert -O qcow2 -o refcount_bits=1 src.raw img.qcow2"},
    {"refcount 2", "qemu-img convert -O qcow2 -o refcount_bits=2 src.raw img.qcow2"},
    {"refcount 4", "qemu-img convert -O qcow2 -o refcount_bits=4,cluster_size=4k src.raw img.qcow2"},
    {"refcount 8", "qemu-img convert -O qcow2 -o refcount_bits=8 src.raw img.qcow2"},
    {"refcount 32", "qemu-img convert -O qcow2 -o refcount_bits=32 src.raw img.qcow2"},
    {"refcount 64", "qemu-img convert -O qcow2 -o refcount_bits=64,cluster_size=512 src.raw img.qcow2"},
    {"zlib compressed", "qemu-img convert -c -O qcow2 src.raw img.qcow2"},
    {"zlib compressed 4k", "qemu-img convert -c -O qcow2 -o cluster_size=4k src.raw img.qcow2"},
    {"zlib compressed 2M", "qemu-img convert -c -O qcow2 -o cluster_size=2M src.raw img.qcow2"},
    {"zstd compressed", "qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw img.qcow2"},
    {"zstd compressed 512", "qemu-img convert -c -O qcow2 -o compression_type=zstd,cluster_size=512 "
                            "src.raw img.qcow2"},
    {"compressed then overwritten", "qemu-img convert -c -O qcow2 src.raw img.qcow2 && " QIO "img.qcow2"
                                    W("0x66", "100k", "10k") " -c 'write -z 1M 64k' >/dev/null"},
    {"zero clusters", "qemu-img convert -O qcow2 src.raw img.qcow2 && " QIO "img.qcow2"
                      " -c 'write -z 0 1M' -c 'write -z -u 2M 1M' -c 'write -z 3M 5000' >/dev/null"},
    {"discard", "qemu-img convert -O qcow2 src.raw img.qcow2 && " QIO "img.qcow2"
                " -c 'discard 0 512k' -c 'discard 1M 1M' >/dev/null"},
    {"extended l2", "qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 16M && " QIO "img.qcow2"
                    W("0x71", "4k", "4k") W("0x72", "66k", "1k") W("0x73", "130k", "200k")
                    " -c 'write -z 140k 8k' -c 'write -z 2M 128k' -c 'discard 256k 64k' >/dev/null"},
    {"extended l2 over backing", "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k -b src.raw -F raw "
                                 "img.qcow2 && " QIO "img.qcow2" W("0x81", "1k", "1k") W("0x82", "33k", "3k")
                                 " -c 'write -z 70k 2k' -c 'write -z 96k 32k' >/dev/null"},
    {"extended l2 2M zstd", "qemu-img convert -c -O qcow2 -o extended_l2=on,cluster_size=2M,compression_type=zstd "
                            "src.raw img.qcow2 && " QIO "img.qcow2" W("0x91", "70k", "1k") " >/dev/null"},
    {"backing raw", "qemu-img create -q -f qcow2 -b src.raw -F raw img.qcow2 && " QIO "img.qcow2"
                    W("0x12", "3k", "5k") " -c 'write -z 1M 64k' -c 'discard 2M 64k' >/dev/null"},
    {"backing v2 overlay", "qemu-img create -q -f qcow2 -o compat=0.10 -b src.raw -F raw img.qcow2 && " QIO
                           "img.qcow2" W("0x13", "3k", "5k") " -c 'discard 2M 64k' >/dev/null"},
    {"backing chain", "qemu-img convert -O qcow2 src.raw b1.qcow2 && qemu-img create -q -f qcow2 -b b1.qcow2 -F qcow2 "
                      "b2.qcow2 && " QIO "b2.qcow2" W("0x14", "1M", "100k") " >/dev/null && "
                      "qemu-img create -q -f qcow2 -b b2.qcow2 -F qcow2 img.qcow2 12M && " QIO "img.qcow2"
                      W("0x15", "1050k", "10k") W("0x16", "9M", "1M") " >/dev/null"},
    {"prealloc metadata", "qemu-img create -q -f qcow2 -o preallocation=metadata img.qcow2 16M && " QIO "img.qcow2"
                          W("0x17", "1k", "1k") " >/dev/null"},
    {"prealloc falloc", "qemu-img create -q -f qcow2 -o preallocation=falloc img.qcow2 8M && " QIO "img.qcow2"
                        W("0x18", "1M", "1k") " >/dev/null"},
    {"prealloc full", "qemu-img create -q -f qcow2 -o preallocation=full,cluster_size=4k img.qcow2 4M && " QIO
                      "img.qcow2" W("0x19", "2M", "9k") " >/dev/null"},
    {"prealloc metadata extl2 backing", "qemu-img create -q -f qcow2 -o preallocation=metadata,extended_l2=on "
                                        "-b src.raw -F raw img.qcow2 && " QIO "img.qcow2" W("0x1a", "5k", "1k")
                                        " >/dev/null"},
    {"grown", "qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 1M && " QIO "img.qcow2" W("0x1b", "0", "1M")
              " >/dev/null && qemu-img resize -q img.qcow2 +300M && " QIO "img.qcow2" W("0x1c", "290M", "1M")
              " >/dev/null"},
    {"shrunk", "qemu-img convert -O qcow2 src.raw img.qcow2 && qemu-img resize -q --shrink img.qcow2 5M"},
    {"snapshots", "qemu-img convert -O qcow2 src.raw img.qcow2 && qemu-img snapshot -c s1 img.qcow2 && " QIO
                  "img.qcow2" W("0x1d", "1M", "200k") " >/dev/null && qemu-img snapshot -c s2 img.qcow2 && " QIO
                  "img.qcow2" W("0x1e", "1100k", "20k") " -c 'discard 4M 1M' >/dev/null"},
    {"lazy refcounts", "qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 8M && " QIO "img.qcow2"
                       W("0x1f", "1M", "1M") " >/dev/null"},
    {"odd size", "qemu-img create -q -f qcow2 img.qcow2 1000001 && " QIO "img.qcow2" W("0x20", "997000", "3000")
                 " >/dev/null"},
};

static void check_status(vdk_image *img, const uint8_t *data, uint64_t size, const char *name)
{
    vdk_error err = {0};
    uint64_t off = 0;
    while (off < size) {
        vdk_extent e;
        int r = vdk_image_block_status(img, off, size - off, 0, &e, &err);
        if (r < 0) {
            VT_CHECK(0, "%s: block status at %llu: %s", name, (unsigned long long)off, err.msg);
            return;
        }
        VT_CHECK(e.start == off && e.length > 0 && e.length <= size - off, "%s: bad extent",
                 name);
        if (e.flags & VDK_BS_ZERO)
            for (uint64_t i = 0; i < e.length; i++)
                if (data[off + i]) {
                    VT_CHECK(0, "%s: extent at %llu says zero, data at +%llu is not", name,
                             (unsigned long long)off, (unsigned long long)i);
                    return;
                }
        off += e.length ? e.length : size;
    }
}

static void run_recipe(const recipe *rc)
{
    char out[4096];
    int before = vt_failures;
    int st = vt_sh(out, sizeof out, "cd '%s' && rm -f img.qcow2 b1.qcow2 b2.qcow2 && %s", vt_dir,
                   rc->sh);
    if (st != 0) {
        VT_CHECK(0, "%s: recipe failed: %s", rc->name, out);
        return;
    }
    st = vt_sh(out, sizeof out, "cd '%s' && qemu-img convert -O raw img.qcow2 out.raw", vt_dir);
    VT_CHECK(st == 0, "%s: qemu-img convert: %s", rc->name, out);
    size_t len = 0;
    uint8_t *want = vt_read_file(vt_path("out.raw"), &len);
    vdk_error err = {0};
    vdk_image *img = vt_open(vt_path("img.qcow2"), 0, &err);
    VT_CHECK(img != NULL, "%s: open: %s", rc->name, err.msg);
    if (img && want) {
        VT_CHECK(vdk_image_size(img) == len, "%s: size %llu, qemu says %zu", rc->name,
                 (unsigned long long)vdk_image_size(img), len);
        if (vdk_image_size(img) == len) {
            vt_compare_image(img, want, len, rc->name);
            check_status(img, want, len, rc->name);
        }
    }
    if (img)
        vdk_image_close(img, &err);
    free(want);
    printf("  %-32s %s\n", rc->name, vt_failures != before ? "FAILED" : "ok");
    fflush(stdout);
}

int main(void)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_interop: qemu-img/qemu-io missing, skipped\n");
        return 0;
    }
    vt_init();
    /* 8 MiB source: patterned data with holes and runs of zeros. */
    uint64_t n = 8u << 20;
    uint8_t *src = calloc(1, n);
    for (uint64_t i = 0; i < n; i += 65536)
        if ((i / 65536) % 5 != 3)
            vt_fill(src + i, (i / 65536) % 3 ? 65536 : 20000, i + 7);
    vt_write_file(vt_path("src.raw"), src, n);
    free(src);
    for (size_t i = 0; i < sizeof recipes / sizeof recipes[0]; i++)
        run_recipe(&recipes[i]);
    return vt_finish("test_qcow2_interop");
}
