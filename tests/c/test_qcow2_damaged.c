/*
 * test_qcow2_damaged.c - hostile and damaged images built by patching bytes
 * of valid ones: every header field, table offset and size, header
 * extension, snapshot entry, L1/L2 entry and compressed descriptor the
 * driver trusts. Opens must fail cleanly with the right code and a message
 * naming the structure (or, for damage below the header, the affected
 * access must fail with VDK_ECORRUPT while the rest of the image reads), and
 * nothing may crash or read outside the file (run it under ASan too).
 */
#include "test_qcow2_util.h"

static uint64_t rd(const char *path, long off, int bytes)
{
    FILE *f = fopen(path, "rb");
    uint8_t b[8] = {0};
    if (f) {
        fseek(f, off, SEEK_SET);
        if (fread(b, 1, (size_t)bytes, f) != (size_t)bytes)
            memset(b, 0, sizeof b);
        fclose(f);
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | b[i];
    return v;
}

static void wr(const char *path, long off, int bytes, uint64_t v)
{
    FILE *f = fopen(path, "r+b");
    uint8_t b[8];
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
    if (f) {
        fseek(f, off, SEEK_SET);
        fwrite(b, 1, (size_t)bytes, f);
        fclose(f);
    }
}

static const char *fresh(const char *tmpl)
{
    char out[1024];
    const char *d = vt_path("d.qcow2");
    vt_sh(out, sizeof out, "cp '%s' '%s'", vt_path(tmpl), d);
    return d;
}

/* Open as qcow2; expect failure with code and message fragment. */
static void expect_open_fail(const char *what, const char *path, unsigned flags, int code,
                             const char *frag)
{
    vdk_error err = {0};
    vdk_open_opts o = {.format = "qcow2", .flags = flags | VDK_OPEN_NO_BACKING};
    vdk_image *img = NULL;
    int r = vdk_image_open(path, &o, &img, &err);
    VT_CHECK(r == code && strstr(err.msg, frag), "%s: want %s '%s', got %s '%s'", what,
             vdk_errname(code), frag, vdk_errname(r), err.msg);
    if (img)
        vdk_image_close(img, &err);
}

static vdk_image *open_ok(const char *what, const char *path, unsigned flags)
{
    vdk_error err = {0};
    vdk_open_opts o = {.format = "qcow2", .flags = flags | VDK_OPEN_NO_BACKING};
    vdk_image *img = NULL;
    int r = vdk_image_open(path, &o, &img, &err);
    VT_CHECK(r == 0, "%s: open failed: %s", what, err.msg);
    return r == 0 ? img : NULL;
}

/* Reading [off, off+len) must fail with VDK_ECORRUPT naming frag; a read
 * elsewhere (good_off) must work. */
static void expect_read_fail(const char *what, const char *path, uint64_t off, uint64_t len,
                             uint64_t good_off, const char *frag)
{
    vdk_image *img = open_ok(what, path, 0);
    if (!img)
        return;
    uint8_t *b = malloc(len);
    vdk_error err = {0};
    int r = vdk_image_pread(img, b, len, off, &err);
    VT_CHECK(r == VDK_ECORRUPT && strstr(err.msg, frag), "%s: read want CORRUPT '%s', got %s '%s'",
             what, frag, vdk_errname(r), err.msg);
    r = vdk_image_pread(img, b, 512, good_off, &err);
    VT_CHECK(r == 0, "%s: read elsewhere failed: %s", what, err.msg);
    free(b);
    vdk_image_close(img, &err);
}

static void header_cases(void)
{
    const char *d;
    d = fresh("t.qcow2");
    wr(d, 0, 4, 0x51464900);
    expect_open_fail("bad magic", d, 0, VDK_EFORMAT, "magic");
    d = fresh("t.qcow2");
    wr(d, 4, 4, 4);
    expect_open_fail("version 4", d, 0, VDK_EUNSUPPORTED, "version 4");
    d = fresh("t.qcow2");
    wr(d, 4, 4, 1);
    expect_open_fail("version 1", d, 0, VDK_EUNSUPPORTED, "version 1");
    d = fresh("t.qcow2");
    wr(d, 20, 4, 8);
    expect_open_fail("cluster_bits 8", d, 0, VDK_ECORRUPT, "cluster_bits 8");
    d = fresh("t.qcow2");
    wr(d, 20, 4, 22);
    expect_open_fail("cluster_bits 22", d, 0, VDK_EUNSUPPORTED, "2^22");
    d = fresh("t.qcow2");
    wr(d, 20, 4, 0xffffffff);
    expect_open_fail("cluster_bits huge", d, 0, VDK_ECORRUPT, "cluster_bits");
    d = fresh("t.qcow2");
    wr(d, 100, 4, 96);
    expect_open_fail("header_length 96", d, 0, VDK_ECORRUPT, "header_length 96");
    d = fresh("t.qcow2");
    wr(d, 100, 4, 108);
    expect_open_fail("header_length 108", d, 0, VDK_ECORRUPT, "header_length");
    d = fresh("t.qcow2");
    wr(d, 100, 4, 0x20000);
    expect_open_fail("header_length > cluster", d, 0, VDK_ECORRUPT, "header_length");
    d = fresh("t.qcow2");
    wr(d, 96, 4, 7);
    expect_open_fail("refcount_order 7", d, 0, VDK_ECORRUPT, "refcount_order 7");
    d = fresh("t.qcow2");
    wr(d, 32, 4, 1);
    expect_open_fail("crypt_method 1", d, 0, VDK_EUNSUPPORTED, "encrypted");
    d = fresh("t.qcow2");
    wr(d, 72, 8, UINT64_C(1) << 40 | UINT64_C(1) << 7);
    expect_open_fail("unknown incompatible bits", d, 0, VDK_EUNSUPPORTED, "bit 7, bit 40");
    d = fresh("t.qcow2");
    wr(d, 121, 1, 9); /* feature table entry 0 now names incompatible bit 9 */
    wr(d, 122, 8, UINT64_C(0x66616e6379206665)); /* "fancy fe" */
    wr(d, 130, 8, UINT64_C(0x6174757265000000)); /* "ature" */
    wr(d, 72, 8, UINT64_C(1) << 9);
    expect_open_fail("named unknown bit", d, 0, VDK_EUNSUPPORTED, "bit 9 (fancy feature)");
    d = fresh("t.qcow2");
    wr(d, 72, 8, 8); /* compression type bit, but the field says zlib */
    expect_open_fail("compression bit without type", d, 0, VDK_ECORRUPT, "compression");
    d = fresh("t.qcow2");
    wr(d, 104, 1, 1); /* zstd without the bit */
    expect_open_fail("compression type without bit", d, 0, VDK_ECORRUPT, "compression");
    d = fresh("t.qcow2");
    wr(d, 72, 8, 8);
    wr(d, 104, 1, 9);
    expect_open_fail("unknown compression type", d, 0, VDK_EUNSUPPORTED, "compression type 9");
    d = fresh("t4k.qcow2");
    wr(d, 72, 8, 16);
    expect_open_fail("extended L2 with 4k clusters", d, 0, VDK_ECORRUPT, "16 KiB");
    d = fresh("t.qcow2");
    wr(d, 72, 8, 2);
    expect_open_fail("corrupt bit rw", d, VDK_OPEN_RDWR, VDK_ECORRUPT, "corrupt");
    d = fresh("t.qcow2");
    wr(d, 24, 8, UINT64_C(1) << 63);
    expect_open_fail("virtual size 2^63", d, 0, VDK_ECORRUPT, "virtual size");
    d = fresh("t.qcow2");
    truncate(d, 50);
    expect_open_fail("truncated header", d, 0, VDK_ECORRUPT, "too short");
}

static void table_cases(void)
{
    const char *d;
    uint64_t l1 = rd(vt_path("t.qcow2"), 40, 8), rt = rd(vt_path("t.qcow2"), 48, 8);
    d = fresh("t.qcow2");
    wr(d, 40, 8, l1 + 0x1234);
    expect_open_fail("L1 unaligned", d, 0, VDK_ECORRUPT, "L1 table offset 0x");
    d = fresh("t.qcow2");
    wr(d, 40, 8, UINT64_C(1) << 50);
    expect_open_fail("L1 past EOF", d, 0, VDK_ECORRUPT, "past the end of the file");
    d = fresh("t.qcow2");
    wr(d, 40, 8, 0);
    expect_open_fail("L1 at offset 0", d, 0, VDK_ECORRUPT, "overlaps the header");
    d = fresh("t.qcow2");
    wr(d, 36, 4, 0);
    expect_open_fail("L1 too small", d, 0, VDK_ECORRUPT, "too small");
    d = fresh("t.qcow2");
    wr(d, 36, 4, 0x7fffffff);
    expect_open_fail("L1 huge", d, 0, VDK_ECORRUPT, "32 MiB");
    d = fresh("t.qcow2");
    wr(d, 48, 8, rt + 8);
    expect_open_fail("refcount table unaligned", d, 0, VDK_ECORRUPT, "refcount table offset");
    d = fresh("t.qcow2");
    wr(d, 56, 4, 0x10000);
    expect_open_fail("refcount table huge", d, 0, VDK_ECORRUPT, "8 MiB");
    d = fresh("t.qcow2");
    wr(d, 56, 4, 0);
    expect_open_fail("refcount table empty", d, 0, VDK_ECORRUPT, "refcount table");
    d = fresh("t.qcow2");
    wr(d, 48, 8, UINT64_C(1) << 40);
    expect_open_fail("refcount table past EOF", d, 0, VDK_ECORRUPT, "past the end");
    d = fresh("t.qcow2");
    wr(d, 48, 8, l1);
    expect_open_fail("L1 overlaps refcount table", d, 0, VDK_ECORRUPT, "overlaps");
    d = fresh("t.qcow2");
    wr(d, 60, 4, 1000000);
    expect_open_fail("too many snapshots", d, 0, VDK_ECORRUPT, "snapshots");
    d = fresh("t.qcow2");
    wr(d, 60, 4, 1);
    wr(d, 64, 8, UINT64_C(1) << 45);
    expect_open_fail("snapshot table past EOF", d, 0, VDK_ECORRUPT, "snapshot table");
}

static void extension_cases(void)
{
    const char *d;
    d = fresh("tb.qcow2");
    wr(d, 16, 4, 2000);
    expect_open_fail("backing name too long", d, 0, VDK_ECORRUPT, "backing file name");
    d = fresh("tb.qcow2");
    wr(d, 8, 8, 65530);
    expect_open_fail("backing name outside cluster 0", d, 0, VDK_ECORRUPT, "backing file name");
    d = fresh("t.qcow2");
    wr(d, 112 + 4, 4, 0x100000); /* first extension (feature table) length */
    expect_open_fail("extension overflows", d, 0, VDK_ECORRUPT, "header extension");
    d = fresh("tb.qcow2");
    wr(d, 8, 8, 0); /* no backing name: extensions may fill cluster 0 */
    wr(d, 112 + 4, 4, 1500); /* backing format extension length */
    expect_open_fail("backing format too long", d, 0, VDK_ECORRUPT, "backing");
    /* Snapshot entries. */
    uint64_t so = rd(vt_path("ts.qcow2"), 64, 8);
    d = fresh("ts.qcow2");
    wr(d, (long)so + 36, 4, 1 << 30);
    expect_open_fail("snapshot extra data huge", d, 0, VDK_ECORRUPT, "extra data");
    d = fresh("ts.qcow2");
    wr(d, (long)so, 8, rd(d, (long)so, 8) + 3);
    expect_open_fail("snapshot L1 unaligned", d, 0, VDK_ECORRUPT, "snapshot 0");
    d = fresh("ts.qcow2");
    wr(d, (long)so + 8, 4, 0x10000000);
    expect_open_fail("snapshot L1 huge", d, 0, VDK_ECORRUPT, "snapshot 0");
    d = fresh("ts.qcow2");
    wr(d, (long)so + 12, 2, 0xffff);
    expect_open_fail("snapshot id past EOF", d, 0, VDK_ECORRUPT, "snapshot table entry");
}

static void entry_cases(void)
{
    const char *t = vt_path("t.qcow2"), *d;
    uint64_t l1 = rd(t, 40, 8), l2 = rd(t, (long)l1, 8) & UINT64_C(0x00fffffffffffe00);
    uint64_t e0 = rd(t, (long)l2, 8);
    d = fresh("t.qcow2");
    wr(d, (long)l2, 8, e0 + 0x200);
    expect_read_fail("L2 entry unaligned", d, 0, 4096, 65536, "unaligned host offset");
    d = fresh("t.qcow2");
    wr(d, (long)l2, 8, (UINT64_C(1) << 63) | (UINT64_C(1) << 50));
    expect_read_fail("L2 entry past EOF", d, 0, 4096, 65536, "past the end of the file");
    d = fresh("t.qcow2");
    wr(d, (long)l2, 8, (UINT64_C(1) << 63) | 0x10000 * 0 | 512 * 0 | 0);
    wr(d, (long)l2 + 8, 8, UINT64_C(1) << 63); /* copied flag, offset 0 */
    vdk_image *img = open_ok("offset 0 with copied flag", d, 0);
    if (img) { /* treated as unallocated, as QEMU does */
        uint8_t b[512];
        vdk_error err = {0};
        VT_OK(vdk_image_pread(img, b, 512, 65536, &err), &err);
        vdk_image_close(img, &err);
    }
    d = fresh("t.qcow2");
    wr(d, (long)l1, 8, (l2 + 0x400) | (UINT64_C(1) << 63));
    expect_read_fail("L1 entry unaligned", d, 0, 512, 600 << 20, "L2 table offset");
    d = fresh("t.qcow2");
    wr(d, (long)l1, 8, (UINT64_C(1) << 48) | (UINT64_C(1) << 63));
    expect_read_fail("L1 entry past EOF", d, 0, 512, 600 << 20, "L2 table at");
    /* Compressed descriptor past the end of the file. */
    const char *c = vt_path("tc.qcow2");
    uint64_t cl1 = rd(c, 40, 8), cl2 = rd(c, (long)cl1, 8) & UINT64_C(0x00fffffffffffe00);
    d = fresh("tc.qcow2");
    wr(d, (long)cl2, 8, (UINT64_C(1) << 62) | (UINT64_C(0x7f) << 54) | (UINT64_C(1) << 40));
    expect_read_fail("compressed past EOF", d, 0, 512, 65536, "compressed cluster");
    d = fresh("tc.qcow2");
    wr(d, (long)cl2, 8, (UINT64_C(1) << 62) | 0x100);
    expect_read_fail("compressed in header", d, 0, 512, 65536, "compressed cluster");
    /* Garbage compressed data. */
    d = fresh("tc.qcow2");
    uint64_t ce = rd(d, (long)cl2, 8), coff = ce & ((UINT64_C(1) << 54) - 1);
    for (int i = 0; i < 4; i++)
        wr(d, (long)coff + i * 8, 8, UINT64_C(0xdeadbeefcafef00d) * (uint64_t)(i + 1));
    expect_read_fail("compressed garbage", d, 0, 512, 512 << 20, "decompress");
    /* Extended L2: allocated and zero bits together. */
    const char *x = vt_path("tx.qcow2");
    uint64_t xl1 = rd(x, 40, 8), xl2 = rd(x, (long)xl1, 8) & UINT64_C(0x00fffffffffffe00);
    d = fresh("tx.qcow2");
    wr(d, (long)xl2 + 8, 8, 0x0000000300000001);
    expect_read_fail("subcluster both zero and allocated", d, 0, 512, 65536, "bitmap");
    d = fresh("tx.qcow2");
    wr(d, (long)xl2 + 16, 8, 0);
    wr(d, (long)xl2 + 24, 8, 1); /* allocated subcluster without a host cluster */
    expect_read_fail("allocated subcluster without host", d, 65536, 512, 0, "no host offset");
}

static void write_cases(void)
{
    const char *d;
    vdk_error err = {0};
    uint8_t b[4096];
    memset(b, 1, sizeof b);
    /* Refcount of the L1 table's cluster zeroed: the allocator would hand it
     * out; the overlap check must refuse and mark the image corrupt. */
    d = fresh("t.qcow2");
    uint64_t l1 = rd(d, 40, 8), rt = rd(d, 48, 8), rb = rd(d, (long)rt, 8);
    wr(d, (long)(rb + (l1 / 65536) * 2), 2, 0);
    vdk_image *img = open_ok("refcount hole under L1", d, VDK_OPEN_RDWR);
    if (img) {
        int r = 0;
        for (int i = 0; i < 64 && r == 0; i++)
            r = vdk_image_pwrite(img, b, sizeof b, (uint64_t)(100 + i) << 20, &err);
        VT_CHECK(r == VDK_ECORRUPT && strstr(err.msg, "overlap"), "overlap: got %s '%s'",
                 vdk_errname(r), err.msg);
        r = vdk_image_pwrite(img, b, sizeof b, 0, &err);
        VT_CHECK(r < 0, "writes refused after corruption");
        vdk_image_close(img, &err);
        VT_CHECK(rd(d, 72, 8) & 2, "corrupt bit set on disk");
    }
    /* Refcount of an active L2 table's cluster zeroed: new data must not
     * land on the table (QEMU's "cached" overlap check covers it too). */
    d = fresh("t.qcow2");
    l1 = rd(d, 40, 8);
    uint64_t l2t = rd(d, (long)l1, 8) & UINT64_C(0x00fffffffffffe00);
    uint64_t l2_first = rd(d, (long)l2t, 8);
    wr(d, (long)(rb + (l2t / 65536) * 2), 2, 0);
    img = open_ok("refcount hole under an L2 table", d, VDK_OPEN_RDWR);
    if (img) {
        int r = 0;
        for (int i = 0; i < 64 && r == 0; i++)
            r = vdk_image_pwrite(img, b, sizeof b, (uint64_t)(100 + i) << 20, &err);
        VT_CHECK(r == VDK_ECORRUPT && strstr(err.msg, "overlap"), "L2 overlap: got %s '%s'",
                 vdk_errname(r), err.msg);
        vdk_image_close(img, &err);
        VT_CHECK(rd(d, 72, 8) & 2, "corrupt bit set on disk (L2 overlap)");
        VT_CHECK(rd(d, (long)l2t, 8) == l2_first, "the L2 table is untouched");
    }
    /* Refcount table entry unaligned: writing needs it, reading does not. */
    d = fresh("t.qcow2");
    wr(d, (long)rt, 8, rb + 0x400);
    img = open_ok("refcount table entry unaligned (ro)", d, 0);
    if (img)
        vdk_image_close(img, &err);
    expect_open_fail("refcount table entry unaligned (rw)", d, VDK_OPEN_RDWR, VDK_ECORRUPT,
                     "refcount block 0 offset");
    /* Dirty image whose L2 entry is broken: repair refuses, ro open works. */
    d = fresh("t.qcow2");
    uint64_t l2 = rd(d, (long)l1, 8) & UINT64_C(0x00fffffffffffe00);
    wr(d, (long)l2, 8, (UINT64_C(1) << 63) | (UINT64_C(1) << 52));
    wr(d, 72, 8, 1);
    expect_open_fail("dirty with broken L2", d, VDK_OPEN_RDWR, VDK_ECORRUPT, "cannot repair");
    img = open_ok("dirty with broken L2 (ro)", d, 0);
    if (img)
        vdk_image_close(img, &err);
}

int main(void)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_damaged: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    char out[4096];
    int st = vt_sh(out, sizeof out,
                   "cd '%s' && qemu-img create -q -f qcow2 t.qcow2 1G && "
                   "qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 512M 64k' t.qcow2 >/dev/null && "
                   "qemu-img create -q -f qcow2 -o cluster_size=4k t4k.qcow2 1M && "
                   "qemu-img create -q -f qcow2 -u -b base.raw -F raw tb.qcow2 1M && "
                   "cp t.qcow2 ts.qcow2 && qemu-img snapshot -c snap1 ts.qcow2 && "
                   "qemu-io -c 'write -P 3 0 128k' -c 'write -z 128k 64k' t.qcow2 >/dev/null && "
                   "qemu-img convert -c -O qcow2 t.qcow2 tc.qcow2 && "
                   "qemu-img create -q -f qcow2 -o extended_l2=on tx.qcow2 1M && "
                   "qemu-io -c 'write -P 4 0 4k' -c 'write -P 5 64k 4k' tx.qcow2 >/dev/null",
                   vt_dir);
    if (st != 0) {
        fprintf(stderr, "setup failed: %s\n", out);
        return 1;
    }
    header_cases();
    table_cases();
    extension_cases();
    entry_cases();
    write_cases();
    return vt_finish("test_qcow2_damaged");
}
