/*
 * test_qed_basic.c - the QED driver's behaviour, case by case: creation
 * options and the header they produce, option errors, reads and writes
 * across clusters and L2 tables, zero clusters over a backing file, a raw
 * backing file that looks like QED (never probed), discard, resize (grow,
 * shrink, regrow), block status, the need-check bit's lifecycle, read-only
 * and no-repair opens of a dirty image, and entries that point past the end
 * of the file.
 */
#include "test_qed_util.h"

static uint64_t hdr32(const char *path, uint64_t off)
{
    return tqed_read_le64(path, off) & 0xffffffffu;
}

static void test_create_defaults(void)
{
    const char *p = vt_path("defaults.qed");
    vdk_error err = {0};
    VT_OK(tqed_create(p, 10 << 20, NULL, &err), &err);
    VT_CHECK(hdr32(p, 0) == 0x00444551, "magic");
    VT_CHECK(hdr32(p, 4) == 65536, "cluster size %llu", (unsigned long long)hdr32(p, 4));
    VT_CHECK(hdr32(p, 8) == 4, "table size");
    VT_CHECK(hdr32(p, 12) == 1, "header size");
    VT_CHECK(tqed_read_le64(p, 16) == 0, "features");
    VT_CHECK(tqed_read_le64(p, 40) == 65536, "l1 offset");
    VT_CHECK(tqed_read_le64(p, 48) == 10 << 20, "image size");
    VT_CHECK(vt_file_size(p) == 5 * 65536, "file size %llu",
           (unsigned long long)vt_file_size(p));
    if (vt_have_qemu())
        tqed_qemu_check(p, "defaults");
}

static void test_create_options(void)
{
    const char *p = vt_path("opts.qed");
    vdk_error err = {0};
    const char *kv[] = {"cluster_size", "4k", "table_size", "16", NULL};
    VT_OK(tqed_create(p, 1000, kv, &err), &err);
    VT_CHECK(hdr32(p, 4) == 4096 && hdr32(p, 8) == 16, "geometry");
    VT_CHECK(tqed_read_le64(p, 48) == 1024, "size rounded up to 512: %llu",
           (unsigned long long)tqed_read_le64(p, 48));
    const char *bad_cs[] = {"cluster_size", "3000", NULL};
    VT_CHECK(tqed_create(p, 1 << 20, bad_cs, &err) == VDK_EOPTION && strstr(err.msg, "cluster_size"),
           "bad cluster size: %s", err.msg);
    const char *big_cs[] = {"cluster_size", "128M", NULL};
    VT_CHECK(tqed_create(p, 1 << 20, big_cs, &err) == VDK_EOPTION, "128M clusters: %s", err.msg);
    const char *bad_ts[] = {"table_size", "3", NULL};
    VT_CHECK(tqed_create(p, 1 << 20, bad_ts, &err) == VDK_EOPTION && strstr(err.msg, "table_size"),
           "bad table size: %s", err.msg);
    const char *small[] = {"cluster_size", "4096", "table_size", "1", NULL};
    VT_CHECK(tqed_create(p, (UINT64_C(1) << 30) + 512, small, &err) == VDK_ETOOBIG,
           "too big: %s", err.msg);
    VT_OK(tqed_create(p, UINT64_C(1) << 30, small, &err), &err);
    const char *unknown[] = {"preallocation", "full", NULL};
    VT_CHECK(tqed_create(p, 1 << 20, unknown, &err) == VDK_EOPTION &&
               strstr(err.msg, "preallocation"),
           "unknown option: %s", err.msg);
    const char *fmt_only[] = {"backing_fmt", "raw", NULL};
    VT_CHECK(tqed_create(p, 1 << 20, fmt_only, &err) == VDK_EOPTION, "backing_fmt alone");
}

/* A long backing name does not fit one 4 KiB cluster: header_size 2. */
static void test_long_backing_name(void)
{
    char name[201];
    memset(name, 'b', 200);
    name[200] = '\0';
    memcpy(name + 196, ".raw", 4);
    const char *base = vt_path(name);
    vdk_error err = {0};
    VT_OK(vdk_image_create(base, "raw", 1 << 20, NULL, 0, &err), &err);
    /* A relative name of 4040 bytes: "./" pairs, then the file name. */
    char longrel[4096];
    size_t n = 0;
    while (n + 2 + strlen(name) < 4040)
        n += (size_t)snprintf(longrel + n, sizeof longrel - n, "./");
    snprintf(longrel + n, sizeof longrel - n, "%s", name);
    const char *p = vt_path("longname.qed");
    const char *kv[] = {"cluster_size", "4096", "backing_file", longrel, "backing_fmt", "raw",
                        NULL};
    VT_OK(tqed_create(p, 1 << 20, kv, &err), &err);
    VT_CHECK(hdr32(p, 12) == 2, "header size %llu", (unsigned long long)hdr32(p, 12));
    VT_CHECK(tqed_read_le64(p, 40) == 8192, "l1 after the header");
    vdk_image *img = vt_open(p, 0, &err);
    VT_CHECK(img && vdk_image_backing(img), "open with long backing name: %.200s", err.msg);
    if (img)
        VT_CHECK(strcmp(vdk_image_backing_name(img), longrel) == 0, "backing name kept");
    vdk_image_close(img, NULL);
}

/* Writes that cross clusters and L2 tables read back; so do partial ones. */
static void test_read_write(void)
{
    const char *p = vt_path("rw.qed");
    vdk_error err = {0};
    const char *kv[] = {"cluster_size", "4096", "table_size", "1", NULL};
    uint64_t size = 8 << 20; /* one L2 table maps 2 MiB */
    VT_OK(tqed_create(p, size, kv, &err), &err);
    uint8_t *want = calloc(1, size), *buf = malloc(300000);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    uint64_t offs[] = {0, 4095, (2 << 20) - 1000, 5 << 20, size - 300000};
    for (size_t i = 0; img && i < sizeof offs / sizeof offs[0]; i++) {
        vt_fill(buf, 300000, i + 1);
        VT_OK(vdk_image_pwrite(img, buf, 300000, offs[i], &err), &err);
        memcpy(want + offs[i], buf, 300000);
    }
    vt_compare_image(img, want, size, "before reopen");
    VT_OK(vdk_image_close(img, &err), &err);
    img = vt_open(p, 0, &err);
    if (img)
        vt_compare_image(img, want, size, "after reopen");
    vdk_image_close(img, NULL);
    free(want);
    free(buf);
}

/* Zero writes over a backing file give zero clusters; data written into a
 * zero cluster gets zeros around it, not backing data. */
static void test_zero_clusters(void)
{
    const char *base = vt_path("zbase.raw"), *p = vt_path("zero.qed");
    vdk_error err = {0};
    uint8_t *ones = malloc(1 << 20);
    memset(ones, 0xab, 1 << 20);
    VT_CHECK(vt_write_file(base, ones, 1 << 20) == 0, "base");
    const char *kv[] = {"cluster_size", "65536", "backing_file", "zbase.raw", "backing_fmt", "raw",
                        NULL};
    VT_OK(tqed_create(p, 2 << 20, kv, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    if (!img)
        return;
    VT_OK(vdk_image_write_zeroes(img, 3 * 65536, 65536, 0, &err), &err);
    vdk_extent e;
    VT_OK(vdk_image_block_status(img, 65536, 3 * 65536, VDK_BS_TOP_ONLY, &e, &err), &err);
    VT_CHECK(e.flags == (VDK_BS_ZERO | VDK_BS_ALLOCATED) && e.length == 3 * 65536,
           "zero clusters: flags %x length %llu", e.flags, (unsigned long long)e.length);
    VT_CHECK(tqed_read_le64(p, 65536) == 0, "no L1 entry yet (write-back)");
    uint8_t b[16] = "0123456789abcdef";
    VT_OK(vdk_image_pwrite(img, b, 16, 65536 + 100, &err), &err);
    uint8_t got[65536];
    VT_OK(vdk_image_pread(img, got, sizeof got, 65536, &err), &err);
    uint8_t want[65536] = {0};
    memcpy(want + 100, b, 16);
    VT_CHECK(memcmp(got, want, sizeof got) == 0, "write into a zero cluster");
    /* Partial zero write over backing data allocates a cluster. */
    VT_OK(vdk_image_write_zeroes(img, 1000, 5 * 65536 + 10, 0, &err), &err);
    VT_OK(vdk_image_pread(img, got, sizeof got, 5 * 65536, &err), &err);
    VT_CHECK(got[9] == 0xab && got[10] == 0 && got[1009] == 0 && got[1010] == 0xab,
           "partial zero write");
    /* Past the end of the backing file nothing needs zeroing. */
    VT_OK(vdk_image_write_zeroes(img, 65536, 20 * 65536, 0, &err), &err);
    VT_OK(vdk_image_block_status(img, 20 * 65536, 65536, VDK_BS_TOP_ONLY, &e, &err), &err);
    VT_CHECK(!(e.flags & VDK_BS_ALLOCATED), "zeroing past the backing file stays unallocated");
    VT_OK(vdk_image_close(img, &err), &err);
    /* Without its backing file open, a partial write cannot copy-on-write. */
    img = vt_open(p, VDK_OPEN_RDWR | VDK_OPEN_NO_BACKING, &err);
    VT_CHECK(img != NULL, "open without backing: %s", err.msg);
    if (img) {
        VT_CHECK(vdk_image_pwrite(img, b, 16, 9 * 65536 + 5, &err) == VDK_EUNSUPPORTED &&
                   strstr(err.msg, "zbase.raw"),
               "partial write without backing: %s", err.msg);
        VT_OK(vdk_image_pwrite(img, got, 65536, 9 * 65536, &err), &err);
        VT_OK(vdk_image_close(img, &err), &err);
    }
    VT_CHECK(tqed_read_le64(p, 16) == 0x5, "features backing|no-probe, need-check clear: %llx",
           (unsigned long long)tqed_read_le64(p, 16));
    if (vt_have_qemu())
        tqed_qemu_check(p, "zero clusters");
    free(ones);
}

/* A raw backing file that starts with a QED header stays raw. */
static void test_raw_backing_not_probed(void)
{
    const char *decoy = vt_path("decoy.qed"), *p = vt_path("over-decoy.qed");
    vdk_error err = {0};
    VT_OK(tqed_create(decoy, 1 << 20, NULL, &err), &err);
    const char *kv[] = {"backing_file", "decoy.qed", "backing_fmt", "raw", NULL};
    VT_OK(tqed_create(p, 1 << 20, kv, &err), &err);
    vdk_image *img = vt_open(p, 0, &err);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    if (!img)
        return;
    vdk_image *b = vdk_image_backing(img);
    VT_CHECK(b && strcmp(vdk_image_format(b), "raw") == 0, "backing opened as %s",
           b ? vdk_image_format(b) : "nothing");
    VT_CHECK(vdk_image_size(b) == 5 * 65536, "raw size of the decoy");
    VT_CHECK(strcmp(vdk_image_backing_format(img), "raw") == 0, "backing format raw");
    uint8_t magic[4];
    VT_OK(vdk_image_pread(img, magic, 4, 0, &err), &err);
    VT_CHECK(memcmp(magic, "QED", 4) == 0, "reads the decoy's bytes");
    vdk_image_close(img, NULL);
    /* Without the bit the backing file is probed. */
    const char *p2 = vt_path("probe-decoy.qed");
    const char *kv2[] = {"backing_file", "decoy.qed", "backing_fmt", "qed", NULL};
    VT_OK(tqed_create(p2, 1 << 20, kv2, &err), &err);
    img = vt_open(p2, 0, &err);
    VT_CHECK(img && strcmp(vdk_image_format(vdk_image_backing(img)), "qed") == 0, "probed");
    vdk_image_close(img, NULL);
}

static void test_discard(void)
{
    const char *p = vt_path("discard.qed");
    vdk_error err = {0};
    VT_OK(tqed_create(p, 1 << 20, NULL, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    if (!img)
        return;
    uint8_t *b = malloc(262144);
    vt_fill(b, 262144, 5);
    VT_OK(vdk_image_pwrite(img, b, 262144, 0, &err), &err);
    VT_OK(vdk_image_discard(img, 2 * 65536, 65536 + 100, &err), &err); /* rounded in: cluster 2 */
    uint8_t *got = malloc(262144);
    VT_OK(vdk_image_pread(img, got, 262144, 0, &err), &err);
    VT_CHECK(memcmp(got, b, 131072) == 0, "first two clusters kept");
    uint8_t zero[65536] = {0};
    VT_CHECK(memcmp(got + 131072, zero, 65536) == 0, "discarded cluster reads zeros");
    VT_CHECK(memcmp(got + 196608, b + 196608, 65536) == 0, "partial cluster kept");
    VT_OK(vdk_image_close(img, &err), &err);
    if (vt_have_qemu())
        tqed_qemu_check(p, "discard");
    free(b);
    free(got);
}

static void test_resize(void)
{
    const char *base = vt_path("rbase.raw"), *p = vt_path("resize.qed");
    vdk_error err = {0};
    uint8_t *ones = malloc(4 << 20);
    memset(ones, 0x5a, 4 << 20);
    VT_CHECK(vt_write_file(base, ones, 4 << 20) == 0, "base");
    const char *kv[] = {"cluster_size", "4096", "table_size", "2", "backing_file", "rbase.raw",
                        "backing_fmt", "raw", NULL};
    VT_OK(tqed_create(p, 1 << 20, kv, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    if (!img)
        return;
    uint8_t d[3000];
    memset(d, 0x77, sizeof d);
    VT_OK(vdk_image_pwrite(img, d, sizeof d, (1 << 20) - 3000, &err), &err);
    VT_CHECK(vdk_image_resize(img, (2 << 20) + 100, 0, 0, &err) == -EINVAL, "not 512-aligned");
    VT_CHECK(vdk_image_resize(img, 2 << 20, VDK_PREALLOC_FULL, 0, &err) == VDK_EUNSUPPORTED,
           "prealloc");
    /* Grow over a longer backing file: the new part reads zeros. */
    VT_OK(vdk_image_resize(img, 3 << 20, 0, 0, &err), &err);
    uint8_t got[8192];
    VT_OK(vdk_image_pread(img, got, sizeof got, (1 << 20) - 4096, &err), &err);
    VT_CHECK(got[0] == 0x5a && got[1096] == 0x77 && got[4095] == 0x77 && got[4096] == 0,
           "grown area is zeros: %02x %02x %02x %02x", got[0], got[1096], got[4095], got[4096]);
    VT_CHECK(tqed_read_le64(p, 48) == 3 << 20, "header size");
    /* Shrink into a data cluster, then grow again: no stale data. */
    VT_OK(vdk_image_resize(img, (1 << 20) - 2048, 0, VDK_RESIZE_SHRINK, &err), &err);
    VT_CHECK(vdk_image_size(img) == (1 << 20) - 2048, "shrunk");
    VT_OK(vdk_image_resize(img, 2 << 20, 0, 0, &err), &err);
    VT_OK(vdk_image_pread(img, got, sizeof got, (1 << 20) - 4096, &err), &err);
    VT_CHECK(got[1096] == 0x77 && got[2047] == 0x77 && got[2048] == 0 && got[4095] == 0 &&
               got[5000] == 0,
           "regrown area is zeros");
    VT_OK(vdk_image_close(img, &err), &err);
    if (vt_have_qemu())
        tqed_qemu_check(p, "resize");
    free(ones);
}

/* The bit is on disk before the first allocation and gone after a flush. */
static void test_need_check_lifecycle(void)
{
    const char *p = vt_path("nc.qed");
    vdk_error err = {0};
    VT_OK(tqed_create(p, 4 << 20, NULL, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    if (!img)
        return;
    uint8_t b[512] = {1};
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "clean at open");
    VT_OK(vdk_image_pwrite(img, b, sizeof b, 0, &err), &err);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 2, "set by the allocating write");
    vdk_format_info fi;
    VT_OK(vdk_image_format_info(img, &fi, &err), &err);
    VT_CHECK(fi.dirty == 1, "info dirty while set");
    VT_OK(vdk_image_flush(img, &err), &err);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "cleared by the flush");
    VT_OK(vdk_image_pwrite(img, b, sizeof b, 512, &err), &err);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "in-place write leaves it clear");
    VT_OK(vdk_image_pwrite(img, b, sizeof b, 1 << 20, &err), &err);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 2, "set again");
    /* Simulate a crash: the bit stays; reopen read-only first. */
    VT_CHECK(tqed_patch_le64(p, 16, 2) == 0, "patch");
    vdk_image_close(img, NULL); /* clears the bit on disk */
    VT_CHECK(tqed_patch_le64(p, 16, 2) == 0, "patch");
    uint64_t before = vt_file_size(p);
    uint8_t *junk = malloc(65536 + 4);
    memset(junk, 0xee, 65536 + 4);
    VT_CHECK(vt_patch(p, before, junk, 65536 + 4) == 0, "append a leaked cluster and more");
    free(junk);
    img = vt_open(p, 0, &err);
    VT_CHECK(img != NULL, "read-only open of a dirty image: %s", err.msg);
    if (img) {
        VT_OK(vdk_image_format_info(img, &fi, &err), &err);
        VT_CHECK(fi.dirty == 1, "dirty reported");
        uint8_t got[512];
        VT_OK(vdk_image_pread(img, got, sizeof got, 0, &err), &err);
        VT_CHECK(got[0] == 1, "data readable");
    }
    vdk_image_close(img, NULL);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 2 && vt_file_size(p) == before + 65540,
           "read-only open changed nothing");
    img = vt_open(p, VDK_OPEN_RDWR | VDK_OPEN_NO_REPAIR, &err);
    VT_CHECK(img != NULL, "no-repair open: %s", err.msg);
    vdk_image_close(img, NULL);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 2, "no-repair open keeps the bit");
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "repairing open: %s", err.msg);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "repaired and cleared at open");
    VT_CHECK(vt_file_size(p) == before, "leaked tail cut off: %llu vs %llu",
           (unsigned long long)vt_file_size(p), (unsigned long long)before);
    vdk_image_close(img, NULL);
    if (vt_have_qemu())
        tqed_qemu_check(p, "need-check");
}

/* An L2 entry past the end of the file fails reads with a clear message,
 * and (writable) asks for a repair by setting need-check. */
static void test_entry_past_eof(void)
{
    const char *p = vt_path("eof.qed");
    vdk_error err = {0};
    VT_OK(tqed_create(p, 4 << 20, NULL, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    uint8_t b[512] = {9};
    VT_OK(vdk_image_pwrite(img, b, sizeof b, 65536, &err), &err);
    vdk_image_close(img, NULL);
    uint64_t l2 = tqed_read_le64(p, 65536);
    VT_CHECK(l2 == 6 * 65536, "L2 table after the data: 0x%llx", (unsigned long long)l2);
    VT_CHECK(tqed_patch_le64(p, l2 + 8, UINT64_C(0x7000000000)) == 0, "patch");
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    if (!img)
        return;
    VT_CHECK(vdk_image_pread(img, b, sizeof b, 65536, &err) == VDK_ECORRUPT &&
               strstr(err.msg, "0x7000000000") && strstr(err.msg, "past the end of the file"),
           "message: %s", err.msg);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 2, "need-check set");
    vdk_image_close(img, NULL);
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "repairing open: %s", err.msg);
    if (img) {
        VT_OK(vdk_image_pread(img, b, sizeof b, 65536, &err), &err);
        VT_CHECK(b[0] == 0, "cleared entry reads zeros");
    }
    vdk_image_close(img, NULL);
    if (vt_have_qemu())
        tqed_qemu_check_leaks(p, 1, "past eof repaired"); /* the lost data cluster */
}

int main(void)
{
    vt_init();
    test_create_defaults();
    test_create_options();
    test_long_backing_name();
    test_read_write();
    test_zero_clusters();
    test_raw_backing_not_probed();
    test_discard();
    test_resize();
    test_need_check_lifecycle();
    test_entry_past_eof();
    return vt_finish("test_qed_basic");
}
