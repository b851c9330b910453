/*
 * test_qcow2_features.c - qcow2 features beyond plain reads and writes:
 * lazy refcounts (crash, dirty bit, repair on open, read-only open without
 * repair), writes to clusters shared with internal snapshots (copy-on-write
 * with exact refcounts, snapshots intact), resize (grow, L1 relocation,
 * shrink, preallocation), create options and their errors, info fields,
 * block status, the corrupt bit, unknown feature bits, autoclear bits and
 * bitmaps, unknown header extensions kept byte for byte.
 */
#include <sys/wait.h>

#include "file-test.h"
#include "test_qcow2_util.h"

static vdk_kv kvs[16];

static int create(const char *name, uint64_t size, const char *opts, vdk_error *err)
{
    /* opts: "k=v,k=v" */
    static char buf[512];
    snprintf(buf, sizeof buf, "%s", opts ? opts : "");
    size_t n = 0;
    for (char *tok = strtok(buf, ","); tok && n < 16; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');
        if (!eq)
            continue;
        *eq = '\0';
        kvs[n++] = (vdk_kv){tok, eq + 1};
    }
    unlink(vt_path(name));
    return vdk_image_create(vt_path(name), "qcow2", size, kvs, n, err);
}

static void write_pattern(vdk_image *img, uint64_t off, uint64_t len, int v)
{
    uint8_t *b = malloc(len);
    memset(b, v, len);
    vdk_error err = {0};
    VT_OK(vdk_image_pwrite(img, b, len, off, &err), &err);
    free(b);
}

static bool range_is(vdk_image *img, uint64_t off, uint64_t len, int v)
{
    uint8_t *b = malloc(len);
    vdk_error err = {0};
    int r = vdk_image_pread(img, b, len, off, &err);
    bool ok = r == 0;
    for (uint64_t i = 0; ok && i < len; i++)
        ok = b[i] == v;
    free(b);
    return ok;
}

static uint64_t read_be(const char *path, long off, int bytes)
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

static void write_be(const char *path, long off, int bytes, uint64_t v)
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

/* ---------------------------------------------------------------- lazy refcounts */

static void test_lazy_crash(void)
{
    vdk_error err = {0};
    const char *p = vt_path("lazy.qcow2");
    VT_OK(create("lazy.qcow2", 64 << 20, "lazy_refcounts=on,cluster_size=4096", &err), &err);
    pid_t pid = fork();
    if (pid == 0) {
        vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
        if (!img)
            _exit(2);
        for (int i = 0; i < 200; i++)
            write_pattern(img, (uint64_t)i * 300000, 5000, 1 + i % 250);
        vdk_image_flush(img, &err);
        write_pattern(img, 63 << 20, 4096, 0x77);
        _exit(0); /* crash: no close, refcounts not all written */
    }
    int st;
    waitpid(pid, &st, 0);
    VT_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "lazy child failed");
    VT_CHECK(read_be(p, 72, 8) & 1, "dirty bit should be set after the crash");
    /* Read-only open works without repair and reads the data. */
    vdk_image *img = vt_open(p, 0, &err);
    VT_CHECK(img != NULL, "read-only open of a dirty image: %s", err.msg);
    if (img) {
        vdk_format_info fi;
        VT_OK(vdk_image_format_info(img, &fi, &err), &err);
        VT_CHECK(fi.dirty, "info should report dirty");
        VT_CHECK(range_is(img, 100 * 300000, 5000, 101), "data readable before repair");
        vdk_image_close(img, &err);
    }
    VT_CHECK(read_be(p, 72, 8) & 1, "read-only open must not clear the dirty bit");
    /* Read-write open repairs. */
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "read-write open with repair: %s", err.msg);
    if (img) {
        VT_CHECK(range_is(img, 199 * 300000, 5000, 1 + 199 % 250), "data after repair");
        write_pattern(img, 10 << 20, 70000, 0x42);
        VT_OK(vdk_image_close(img, &err), &err);
    }
    VT_CHECK(!(read_be(p, 72, 8) & 1), "dirty bit cleared after clean close");
    tq_qemu_check(p, "lazy after repair");
}

static void test_lazy_no_repair(void)
{
    vdk_error err = {0};
    const char *p = vt_path("lazy2.qcow2");
    VT_OK(create("lazy2.qcow2", 8 << 20, "lazy_refcounts=on", &err), &err);
    write_be(p, 72, 8, read_be(p, 72, 8) | 1);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR | VDK_OPEN_NO_REPAIR, &err);
    VT_CHECK(img != NULL, "no-repair open: %s", err.msg);
    if (img)
        vdk_image_close(img, &err);
    VT_CHECK(read_be(p, 72, 8) & 1, "VDK_OPEN_NO_REPAIR must leave the image dirty");
}

/* ---------------------------------------------------------------- snapshots */

static void test_snapshot_cow(void)
{
    vdk_error err = {0};
    char out[4096];
    const char *p = vt_path("snap.qcow2");
    VT_OK(create("snap.qcow2", 16 << 20, "cluster_size=4096", &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    if (!img)
        return;
    write_pattern(img, 0, 8 << 20, 0x11);
    vdk_image_close(img, &err);
    VT_CHECK(vt_sh(out, sizeof out, "qemu-img snapshot -c s1 '%s'", p) == 0, "snapshot: %s",
             out);
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "open with snapshot: %s", err.msg);
    if (!img)
        return;
    VT_CHECK(range_is(img, 0, 8 << 20, 0x11), "active data with a snapshot");
    write_pattern(img, 4096 * 3 + 100, 50, 0x22);    /* partial cluster COW */
    write_pattern(img, 1 << 20, 3 << 20, 0x33);      /* whole clusters, L2 COW */
    vdk_image_write_zeroes(img, 65536, 6 << 20, 0, &err);
    vdk_image_discard(img, 65536, 7 << 20, &err);
    uint8_t z[4096];
    memset(z, 0x44, sizeof z);
    VT_OK(vdk_image_pwrite_compressed(img, z, 4096, 5 << 20, &err), &err);
    VT_OK(vdk_image_close(img, &err), &err);
    tq_qemu_check(p, "snapshot cow");
    /* The snapshot still holds the old data. */
    int st = vt_sh(out, sizeof out,
                   "cd '%s' && qemu-img convert -l snapshot.name=s1 -O raw snap.qcow2 s1.raw && "
                   "qemu-img convert -O raw snap.qcow2 act.raw",
                   vt_dir);
    VT_CHECK(st == 0, "convert snapshot: %s", out);
    size_t n = 0, m = 0;
    uint8_t *s1 = vt_read_file(vt_path("s1.raw"), &n), *act = vt_read_file(vt_path("act.raw"), &m);
    bool ok = s1 && n == 16u << 20;
    for (size_t i = 0; ok && i < n; i++)
        ok = s1[i] == (i < (8u << 20) ? 0x11 : 0);
    VT_CHECK(ok, "snapshot s1 content changed");
    VT_CHECK(act && m == n && act[4096 * 3 + 100] == 0x22 && act[4096 * 3 + 99] == 0x11 &&
                 act[(1 << 20) + 5] == 0x33 && act[(6 << 20) + 5] == 0 && act[(7 << 20) + 5] == 0 &&
                 act[(5 << 20) + 5] == 0x44 && act[(7 << 20) + 70000] == 0x11,
             "active content after COW");
    free(s1);
    free(act);
    /* qemu can delete the snapshot afterwards and the image stays clean. */
    VT_CHECK(vt_sh(out, sizeof out, "qemu-img snapshot -d s1 '%s'", p) == 0, "delete: %s", out);
    tq_qemu_check(p, "after snapshot delete");
}

/* ---------------------------------------------------------------- resize */

static void test_resize(void)
{
    vdk_error err = {0};
    const char *p = vt_path("rs.qcow2");
    VT_OK(create("rs.qcow2", 1 << 20, "cluster_size=512", &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    if (!img)
        return;
    write_pattern(img, 0, 1 << 20, 0x51);
    /* 512-byte clusters: L1 of 1 MiB has 32 entries; 2 GiB needs 65536. */
    VT_OK(vdk_image_resize(img, 2ull << 30, VDK_PREALLOC_OFF, 0, &err), &err);
    VT_CHECK(vdk_image_size(img) == 2ull << 30, "size after grow");
    write_pattern(img, (2ull << 30) - 4096, 4096, 0x52);
    VT_CHECK(range_is(img, 0, 1 << 20, 0x51), "old data after grow");
    VT_CHECK(range_is(img, 1 << 20, 1 << 20, 0), "new area reads zeros");
    VT_OK(vdk_image_resize(img, (2ull << 30) + (1 << 20), VDK_PREALLOC_METADATA, 0, &err), &err);
    VT_CHECK(range_is(img, 2ull << 30, 1 << 20, 0), "preallocated area reads zeros");
    VT_OK(vdk_image_resize(img, 1000 * 512, VDK_PREALLOC_OFF, VDK_RESIZE_SHRINK, &err), &err);
    VT_CHECK(vdk_image_size(img) == 1000 * 512, "size after shrink");
    VT_OK(vdk_image_resize(img, 1 << 20, VDK_PREALLOC_FULL, 0, &err), &err);
    VT_CHECK(range_is(img, 0, 1000 * 512, 0x51), "data kept by shrink");
    VT_CHECK(range_is(img, 1000 * 512, (1 << 20) - 1000 * 512, 0), "regrown area zeros");
    VT_OK(vdk_image_close(img, &err), &err);
    tq_qemu_check(p, "resize");
    char out[2048];
    vt_sh(out, sizeof out, "qemu-img info '%s' | grep 'virtual size'", p);
    VT_CHECK(strstr(out, "1048576 bytes") != NULL, "qemu sees the size: %s", out);

    /* Growing over a larger backing file must not expose its data. */
    uint8_t *b = malloc(4 << 20);
    memset(b, 0xee, 4 << 20);
    vt_write_file(vt_path("rsb.raw"), b, 4 << 20);
    free(b);
    VT_OK(create("rs2.qcow2", 1 << 20, "backing_file=rsb.raw,backing_fmt=raw", &err), &err);
    img = vt_open(vt_path("rs2.qcow2"), VDK_OPEN_RDWR, &err);
    if (img) {
        VT_OK(vdk_image_resize(img, 3 << 20, VDK_PREALLOC_OFF, 0, &err), &err);
        VT_CHECK(range_is(img, 0, 1 << 20, 0xee), "backing data below the old size");
        VT_CHECK(range_is(img, 1 << 20, 2 << 20, 0), "grown area hides the backing file");
        VT_OK(vdk_image_close(img, &err), &err);
    }
    tq_qemu_check(vt_path("rs2.qcow2"), "resize over backing");
}

/* ---------------------------------------------------------------- create */

static void expect_create_error(uint64_t size, const char *opts, const char *msg)
{
    vdk_error err = {0};
    int r = create("bad.qcow2", size, opts, &err);
    VT_CHECK(r < 0 && strstr(err.msg, msg), "create '%s' should fail with '%s', got %d '%s'",
             opts, msg, r, err.msg);
}

static void test_create_options(void)
{
    expect_create_error(1 << 20, "cluster_size=1000", "power of two");
    expect_create_error(1 << 20, "cluster_size=4M", "power of two");
    expect_create_error(1 << 20, "compat=0.9", "Invalid compatibility level");
    expect_create_error(1 << 20, "compat=0.10,lazy_refcounts=on", "Lazy refcounts");
    expect_create_error(1 << 20, "compat=0.10,refcount_bits=8", "refcount widths");
    expect_create_error(1 << 20, "refcount_bits=3", "Refcount width");
    expect_create_error(1 << 20, "extended_l2=on,cluster_size=8k", "16384");
    expect_create_error(1 << 20, "compat=v2,extended_l2=on", "Extended L2");
    expect_create_error(1 << 20, "compat=0.10,compression_type=zstd", "Non-zlib");
    expect_create_error(1 << 20, "compression_type=lz4", "compression_type");
    expect_create_error(1 << 20, "preallocation=some", "preallocation");
    expect_create_error(1 << 20, "backing_fmt=raw", "without backing file");
    expect_create_error(1 << 20, "backing_file=x.raw,preallocation=metadata",
                        "extended_l2 is on");
    expect_create_error(1 << 20, "bogus=1", "bogus");
    expect_create_error(200ull << 30, "cluster_size=512", "too large");
    expect_create_error(VDK_SIZE_FROM_BACKING, "", "size");

    /* Size from the backing file, and every option accepted together. */
    vdk_error err = {0};
    uint8_t z[8192] = {1};
    vt_write_file(vt_path("sb.raw"), z, sizeof z);
    VT_OK(create("sz.qcow2", VDK_SIZE_FROM_BACKING,
                 "backing_file=sb.raw,backing_fmt=raw,cluster_size=16k,extended_l2=on,"
                 "compression_type=zstd,lazy_refcounts=on,refcount_bits=4,preallocation=metadata",
                 &err),
          &err);
    vdk_image *img = vt_open(vt_path("sz.qcow2"), 0, &err);
    VT_CHECK(img && vdk_image_size(img) == 8192, "size from backing");
    if (img) {
        VT_CHECK(range_is(img, 1, 8191, 0) && strcmp(vdk_image_backing_format(img), "raw") == 0,
                 "backing data and format");
        vdk_image_close(img, &err);
    }
    tq_qemu_check(vt_path("sz.qcow2"), "all options");
    for (int m = VDK_PREALLOC_METADATA; m <= VDK_PREALLOC_FULL; m++) {
        static const char *const names[] = {"", "preallocation=metadata",
                                            "preallocation=falloc", "preallocation=full"};
        VT_OK(create("pre.qcow2", 3 << 20, names[m], &err), &err);
        tq_qemu_check(vt_path("pre.qcow2"), names[m]);
        img = vt_open(vt_path("pre.qcow2"), 0, &err);
        if (img) {
            vdk_extent e;
            VT_OK(vdk_image_block_status(img, 0, 3 << 20, VDK_BS_TOP_ONLY, &e, &err), &err);
            VT_CHECK((e.flags & VDK_BS_ALLOCATED) && (e.flags & VDK_BS_OFFSET_VALID),
                     "%s: preallocated clusters are allocated (flags %x)", names[m], e.flags);
            VT_CHECK(range_is(img, 0, 3 << 20, 0), "%s reads zeros", names[m]);
            vdk_image_close(img, &err);
        }
    }
}

/* ---------------------------------------------------------------- info, status */

static const vdk_info_item *item(const vdk_format_info *fi, const char *key)
{
    for (int i = 0; i < fi->nitems; i++)
        if (!strcmp(fi->items[i].key, key))
            return &fi->items[i];
    return NULL;
}

static void test_info_status(void)
{
    vdk_error err = {0};
    VT_OK(create("i3.qcow2", 1 << 20, "compression_type=zstd,lazy_refcounts=on,refcount_bits=32,"
                                      "extended_l2=on",
                 &err),
          &err);
    vdk_image *img = vt_open(vt_path("i3.qcow2"), 0, &err);
    if (img) {
        vdk_format_info fi;
        VT_OK(vdk_image_format_info(img, &fi, &err), &err);
        static const char *const order[] = {"compat", "compression-type", "lazy-refcounts",
                                            "refcount-bits", "corrupt", "extended-l2"};
        VT_CHECK(fi.nitems == 6, "v3 info has 6 items, got %d", fi.nitems);
        for (int i = 0; i < 6 && i < fi.nitems; i++)
            VT_CHECK(!strcmp(fi.items[i].key, order[i]), "info item %d is %s", i,
                     fi.items[i].key);
        const vdk_info_item *it = item(&fi, "compression-type");
        VT_CHECK(it && !strcmp(it->s, "zstd"), "compression-type");
        it = item(&fi, "refcount-bits");
        VT_CHECK(it && it->i == 32, "refcount-bits");
        it = item(&fi, "lazy-refcounts");
        VT_CHECK(it && it->type == VDK_INFO_BOOL && it->i == 1, "lazy-refcounts");
        vdk_image_close(img, &err);
    }
    VT_OK(create("i2.qcow2", 1 << 20, "compat=0.10", &err), &err);
    img = vt_open(vt_path("i2.qcow2"), VDK_OPEN_RDWR, &err);
    if (img) {
        vdk_format_info fi;
        VT_OK(vdk_image_format_info(img, &fi, &err), &err);
        const vdk_info_item *it = item(&fi, "compat");
        VT_CHECK(fi.nitems == 3 && it && !strcmp(it->s, "0.10"), "v2 info");
        /* Block status kinds: data, zero, unallocated, compressed. */
        write_pattern(img, 0, 65536, 1);
        uint8_t c[65536] = {0};
        VT_OK(vdk_image_pwrite_compressed(img, c, 65536, 196608, &err), &err);
        vdk_extent e;
        VT_OK(vdk_image_block_status(img, 0, 1 << 20, VDK_BS_TOP_ONLY, &e, &err), &err);
        VT_CHECK(e.length == 65536 && (e.flags & VDK_BS_DATA) && (e.flags & VDK_BS_OFFSET_VALID),
                 "data extent (len %llu flags %x)", (unsigned long long)e.length, e.flags);
        VT_OK(vdk_image_block_status(img, 65536, 1 << 19, VDK_BS_TOP_ONLY, &e, &err), &err);
        VT_CHECK(e.length == 131072 && !(e.flags & VDK_BS_ALLOCATED),
                 "unallocated extent (len %llu flags %x)", (unsigned long long)e.length, e.flags);
        VT_OK(vdk_image_block_status(img, 196608, 65536, VDK_BS_TOP_ONLY, &e, &err), &err);
        VT_CHECK(e.flags & VDK_BS_COMPRESSED, "compressed extent (flags %x)", e.flags);
        vdk_image_close(img, &err);
    }
    VT_OK(create("i4.qcow2", 1 << 20, "", &err), &err);
    img = vt_open(vt_path("i4.qcow2"), VDK_OPEN_RDWR, &err);
    if (img) {
        write_pattern(img, 0, 4 * 65536, 1);
        VT_OK(vdk_image_write_zeroes(img, 65536, 65536, 0, &err), &err);
        VT_OK(vdk_image_write_zeroes(img, 65536, 131072, VDK_ZERO_MAY_UNMAP, &err), &err);
        vdk_extent e;
        VT_OK(vdk_image_block_status(img, 65536, 65536, VDK_BS_TOP_ONLY, &e, &err), &err);
        VT_CHECK((e.flags & VDK_BS_ZERO) && (e.flags & VDK_BS_OFFSET_VALID),
                 "preallocated zero cluster (flags %x)", e.flags);
        VT_OK(vdk_image_block_status(img, 131072, 65536, VDK_BS_TOP_ONLY, &e, &err), &err);
        VT_CHECK((e.flags & VDK_BS_ZERO) && !(e.flags & VDK_BS_OFFSET_VALID) &&
                     (e.flags & VDK_BS_ALLOCATED),
                 "unmapped zero cluster (flags %x)", e.flags);
        vdk_image_close(img, &err);
    }
    tq_qemu_check(vt_path("i4.qcow2"), "zero clusters");
}

/* ---------------------------------------------------------------- header bits */

static void test_header_bits(void)
{
    vdk_error err = {0};
    char out[4096];
    const char *p = vt_path("hb.qcow2");
    /* Corrupt bit: read-only only. */
    VT_OK(create("hb.qcow2", 1 << 20, "", &err), &err);
    write_be(p, 72, 8, 2);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(!img && err.code == VDK_ECORRUPT && strstr(err.msg, "corrupt"),
             "rw open of a corrupt image must fail: %s", err.msg);
    img = vt_open(p, 0, &err);
    VT_CHECK(img != NULL, "ro open of a corrupt image: %s", err.msg);
    if (img) {
        vdk_format_info fi;
        vdk_image_format_info(img, &fi, &err);
        VT_CHECK(fi.corrupt, "info reports corrupt");
        vdk_image_close(img, &err);
    }
    /* Unknown incompatible bit: refused, named from the feature table. */
    VT_OK(create("hb.qcow2", 1 << 20, "", &err), &err);
    write_be(p, 72, 8, UINT64_C(1) << 9);
    img = vt_open(p, 0, &err);
    VT_CHECK(!img && err.code == VDK_EUNSUPPORTED && strstr(err.msg, "bit 9"),
             "unknown incompatible bit: %s", err.msg);
    /* Unknown compatible bit ignored; unknown autoclear bit cleared on write. */
    VT_OK(create("hb.qcow2", 1 << 20, "", &err), &err);
    write_be(p, 80, 8, UINT64_C(1) << 40);
    write_be(p, 88, 8, UINT64_C(1) << 33);
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "unknown compatible bit: %s", err.msg);
    if (img) {
        VT_CHECK(read_be(p, 88, 8) == UINT64_C(1) << 33, "autoclear kept until a write");
        write_pattern(img, 0, 512, 9);
        VT_CHECK(read_be(p, 88, 8) == 0, "autoclear cleared before the first write");
        vdk_image_close(img, &err);
    }
    VT_CHECK(read_be(p, 80, 8) == UINT64_C(1) << 40, "compatible bits kept");
    /* Bitmaps: dropped (and their clusters freed) before the first write. */
    VT_OK(create("bm.qcow2", 4 << 20, "", &err), &err);
    const char *q = vt_path("bm.qcow2");
    VT_CHECK(vt_sh(out, sizeof out, "qemu-img bitmap --add '%s' b0 && qemu-img bitmap --add "
                                    "'%s' b1 && qemu-io -c 'write 0 1M' '%s' >/dev/null",
                   q, q, q) == 0,
             "bitmaps: %s", out);
    img = vt_open(q, VDK_OPEN_RDWR, &err);
    if (img) {
        write_pattern(img, 2 << 20, 4096, 3);
        vdk_image_close(img, &err);
    }
    tq_qemu_check(q, "bitmaps dropped");
    vt_sh(out, sizeof out, "qemu-img info '%s'", q);
    VT_CHECK(!strstr(out, "bitmaps"), "bitmaps gone: %s", out);
}

/* Unknown header extensions survive a header rewrite byte for byte. */
static void test_unknown_extension(void)
{
    vdk_error err = {0};
    const char *p = vt_path("ux.qcow2");
    VT_OK(create("ux.qcow2", 4 << 20, "backing_file=none.raw,backing_fmt=raw", &err), &err);
    /* Insert an unknown extension before the others: rebuild cluster 0. */
    size_t n = 0;
    uint8_t *f = vt_read_file(p, &n);
    if (!f)
        return;
    uint8_t ext[16] = {0x12, 0x34, 0x56, 0x78, 0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0};
    memmove(f + 112 + 16, f + 112, 65536 - 112 - 16);
    memcpy(f + 112, ext, 16);
    uint64_t bo = read_be(p, 8, 8) + 16;
    for (int i = 0; i < 8; i++)
        f[8 + i] = (uint8_t)(bo >> (56 - 8 * i));
    vt_write_file(p, f, n);
    free(f);
    /* Bitmaps-less image with autoclear set forces a full header rewrite. */
    write_be(p, 88, 8, 1);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR | VDK_OPEN_NO_BACKING, &err);
    VT_CHECK(img != NULL, "open with unknown extension: %s", err.msg);
    if (img) {
        write_pattern(img, 0, 65536, 1); /* a whole cluster: no copy-on-write from the absent backing file */
        vdk_image_close(img, &err);
    }
    f = vt_read_file(p, &n);
    bool found = false;
    for (size_t i = 104; f && i + 16 < 65536 && !found; i += 8)
        found = !memcmp(f + i, ext, 13);
    VT_CHECK(found, "unknown extension kept");
    free(f);
    img = vt_open(p, VDK_OPEN_NO_BACKING, &err);
    VT_CHECK(img && !strcmp(vdk_image_backing_name(img), "none.raw"), "backing name kept");
    if (img)
        vdk_image_close(img, &err);
}

/* ---------------------------------------------------------------- data files */

static void test_data_file(void)
{
    char out[4096];
    vdk_error err = {0};
    int st = vt_sh(out, sizeof out,
                   "cd '%s' && rm -f df.raw dfr.raw && "
                   "qemu-img create -q -f qcow2 -o data_file=df.raw,cluster_size=4k df.qcow2 4M && "
                   "qemu-io -c 'write -P 7 0 100k' -c 'write -z 1M 64k' df.qcow2 >/dev/null && "
                   "qemu-img create -q -f qcow2 -o data_file=dfr.raw,data_file_raw=on dfr.qcow2 4M",
                   vt_dir);
    VT_CHECK(st == 0, "data file setup: %s", out);
    vdk_image *img = vt_open(vt_path("df.qcow2"), 0, &err);
    VT_CHECK(!img && err.code == VDK_EUNSUPPORTED && strstr(err.msg, "df.raw"),
             "data file refused without the flag: %s", err.msg);
    for (int raw = 0; raw < 2; raw++) {
        const char *name = raw ? "dfr.qcow2" : "df.qcow2";
        uint8_t *cur = calloc(1, 4 << 20);
        img = vt_open(vt_path(name), VDK_OPEN_RDWR | VDK_OPEN_ALLOW_DATA_FILE, &err);
        VT_CHECK(img != NULL, "%s: open with data file: %s", name, err.msg);
        if (!img) {
            free(cur);
            continue;
        }
        if (!raw)
            memset(cur, 7, 100 << 10);
        vt_compare_image(img, cur, 4 << 20, name);
        uint64_t x = 5;
        uint8_t *buf = malloc(200000);
        for (int i = 0; i < 300; i++) {
            uint64_t off = vt_below(&x, 4 << 20), len = 1 + vt_below(&x, 150000);
            if (len > (4u << 20) - off)
                len = (4u << 20) - off;
            int k = (int)vt_below(&x, 4);
            if (k < 2) {
                vt_fill(buf, len, x);
                VT_OK(vdk_image_pwrite(img, buf, len, off, &err), &err);
                memcpy(cur + off, buf, len);
            } else if (k == 2) {
                VT_OK(vdk_image_write_zeroes(img, len, off, (unsigned)(i & 1), &err), &err);
                memset(cur + off, 0, len);
            } else {
                VT_OK(vdk_image_discard(img, len, off, &err), &err);
                uint64_t cs = vdk_image_cluster_size(img);
                uint64_t a = (off + cs - 1) / cs * cs, b = (off + len) / cs * cs;
                if (a < b)
                    memset(cur + a, 0, b - a);
            }
        }
        free(buf);
        vdk_extent e;
        VT_OK(vdk_image_block_status(img, 0, 4 << 20, VDK_BS_TOP_ONLY, &e, &err), &err);
        VT_CHECK(!(e.flags & VDK_BS_OFFSET_VALID), "no host offsets into the data file");
        VT_OK(vdk_image_close(img, &err), &err);
        tq_qemu_check(vt_path(name), name);
        vt_write_file(vt_path("dfo.raw"), cur, 4 << 20);
        tq_qemu_compare(vt_path(name), vt_path("dfo.raw"), name);
        if (raw) {
            size_t n = 0;
            uint8_t *d = vt_read_file(vt_path("dfr.raw"), &n);
            VT_CHECK(d && n == 4u << 20 && !memcmp(d, cur, n), "raw data file is the disk");
            free(d);
        }
        free(cur);
    }
}

/* ---------------------------------------------------------------- sticky errors */

static vdk_file *fault_file;

static vdk_file *fault_hook(vdk_file *f, const char *path, void *ctx)
{
    (void)path;
    (void)ctx;
    struct vdk_fault_spec none = {.op = VDK_FAULT_WRITE, .nth = 0};
    vdk_file *w = vdk_file_fault_new(f, &none);
    if (!w)
        return f;
    vdk_file_unref(f);
    fault_file = w;
    return w;
}

static void test_sticky_error(void)
{
    vdk_error err = {0};
    const char *p = vt_path("st.qcow2");
    VT_OK(create("st.qcow2", 8 << 20, "cluster_size=4096", &err), &err);
    vdk_file_set_open_hook(fault_hook, NULL);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    vdk_file_set_open_hook(NULL, NULL);
    if (!img || !fault_file)
        return;
    write_pattern(img, 0, 1 << 20, 5); /* metadata dirty in the caches */
    struct vdk_fault_spec fail = {.op = VDK_FAULT_WRITE, .nth = 1, .error = -EIO,
                                  .persistent = true};
    vdk_file_fault_set(fault_file, &fail);
    int r = vdk_image_flush(img, &err);
    VT_CHECK(r == -EIO, "flush with failing metadata writes: %s", err.msg);
    struct vdk_fault_spec ok = {.op = VDK_FAULT_WRITE, .nth = 0};
    vdk_file_fault_set(fault_file, &ok);
    r = vdk_image_pwrite(img, "x", 1, 3 << 20, &err);
    VT_CHECK(r == VDK_EBROKEN, "write after a failed metadata write: %s %s", vdk_errname(r),
             err.msg);
    r = vdk_image_flush(img, &err);
    VT_CHECK(r == VDK_EBROKEN, "flush stays broken: %s", vdk_errname(r));
    VT_CHECK(range_is(img, 0, 4096, 5), "reads still work");
    vdk_image_close(img, &err);
    fault_file = NULL;
    /* A data write failure is not sticky. */
    VT_OK(create("st.qcow2", 8 << 20, "cluster_size=4096", &err), &err);
    vdk_file_set_open_hook(fault_hook, NULL);
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    vdk_file_set_open_hook(NULL, NULL);
    if (!img || !fault_file)
        return;
    struct vdk_fault_spec once = {.op = VDK_FAULT_WRITE, .nth = 1, .error = -ENOSPC};
    vdk_file_fault_set(fault_file, &once);
    r = vdk_image_pwrite(img, "abc", 3, 4096, &err);
    VT_CHECK(r == -ENOSPC, "data write failure reported: %s", vdk_errname(r));
    VT_OK(vdk_image_pwrite(img, "abc", 3, 4096, &err), &err);
    VT_OK(vdk_image_close(img, &err), &err);
    fault_file = NULL;
    tq_qemu_check(p, "after a failed data write");
}

int main(void)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_features: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    test_lazy_crash();
    test_lazy_no_repair();
    test_snapshot_cow();
    test_resize();
    test_create_options();
    test_info_status();
    test_header_bits();
    test_unknown_extension();
    test_data_file();
    test_sticky_error();
    return vt_finish("test_qcow2_features");
}
