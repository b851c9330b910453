/*
 * test_qcow2_random.c - seeded random workloads on images vdk creates, in
 * many geometries (cluster sizes, refcount widths, v2/v3, lazy refcounts,
 * extended L2, zstd, backing files): allocating writes, overwrites, zero
 * writes, discards, compressed writes, flushes and reopens, checked against
 * an in-memory oracle, then `qemu-img check` (no errors, no leaks) and
 * `qemu-img compare` against the oracle written as a raw file.
 *
 * Usage: test_qcow2_random [seed]   (the default seed makes runs repeatable)
 */
#include "test_qcow2_util.h"

typedef struct cfg {
    const char *name;
    uint64_t size;
    const char *cluster_size, *compat, *refcount_bits, *lazy, *ext_l2, *ctype;
    int backing; /* 0 none, 1 raw, 2 qcow2 */
    int nops;
    bool compress;
    int snapshots; /* internal snapshots taken (by qemu-img) during the workload */
} cfg;

typedef struct run {
    const cfg *c;
    uint64_t cs;
    bool v2;
    uint8_t *cur, *base;
    vdk_image *img;
    uint64_t x;
    const char *path;
} run;

static void make_base(run *R, const char *bpath)
{
    const cfg *c = R->c;
    uint64_t blen = c->size * 3 / 4;
    vt_fill(R->base, blen, R->x);
    memcpy(R->cur, R->base, c->size);
    if (c->backing == 1) {
        VT_CHECK(vt_write_file(bpath, R->base, blen) == 0, "write base");
        return;
    }
    vdk_error err = {0};
    VT_OK(vdk_image_create(bpath, "qcow2", blen, NULL, 0, &err), &err);
    vdk_image *b = vt_open(bpath, VDK_OPEN_RDWR, &err);
    VT_CHECK(b != NULL, "open base: %s", err.msg);
    if (b) {
        VT_OK(vdk_image_pwrite(b, R->base, blen, 0, &err), &err);
        VT_OK(vdk_image_close(b, &err), &err);
    }
}

static int create_image(run *R)
{
    const cfg *c = R->c;
    vdk_kv kv[12];
    int n = 0;
#define OPT(k, v)                                                                        \
    if (v)                                                                               \
    kv[n++] = (vdk_kv){k, v}
    OPT("cluster_size", c->cluster_size);
    OPT("compat", c->compat);
    OPT("refcount_bits", c->refcount_bits);
    OPT("lazy_refcounts", c->lazy);
    OPT("extended_l2", c->ext_l2);
    OPT("compression_type", c->ctype);
    if (c->backing) {
        kv[n++] = (vdk_kv){"backing_file", "base.img"};
        kv[n++] = (vdk_kv){"backing_fmt", c->backing == 1 ? "raw" : "qcow2"};
    }
    vdk_error err = {0};
    int r = vdk_image_create(R->path, "qcow2", c->size, kv, (size_t)n, &err);
    VT_OK(r, &err);
    return r;
}

static void reopen(run *R)
{
    vdk_error err = {0};
    if (R->img)
        VT_OK(vdk_image_close(R->img, &err), &err);
    R->img = vt_open(R->path, VDK_OPEN_RDWR, &err);
    VT_CHECK(R->img != NULL, "reopen %s: %s", R->c->name, err.msg);
}

static bool trace;
#define TRACE(...) do { if (trace) fprintf(stderr, __VA_ARGS__); } while (0)

static void op_write(run *R, uint8_t *buf)
{
    uint64_t size = R->c->size, off, len;
    if (vt_below(&R->x, 4) == 0) { /* cluster aligned, several clusters */
        off = vt_below(&R->x, size / R->cs) * R->cs;
        len = (1 + vt_below(&R->x, 8)) * R->cs;
    } else {
        off = vt_below(&R->x, size);
        len = 1 + vt_below(&R->x, 3 * R->cs + 70000);
    }
    if (len > size - off)
        len = size - off;
    if (len > (4u << 20))
        len = 4u << 20;
    vt_fill(buf, len, vt_rand(&R->x));
    vdk_error err = {0};
    TRACE("write %llu +%llu\n", (unsigned long long)off, (unsigned long long)len);
    VT_OK(vdk_image_pwrite(R->img, buf, len, off, &err), &err);
    memcpy(R->cur + off, buf, len);
}

static void op_zero(run *R)
{
    uint64_t size = R->c->size, off = vt_below(&R->x, size);
    uint64_t len = 1 + vt_below(&R->x, 4 * R->cs + 100000);
    if (len > size - off)
        len = size - off;
    unsigned flags = vt_below(&R->x, 2) ? VDK_ZERO_MAY_UNMAP : 0;
    vdk_error err = {0};
    TRACE("zero %llu +%llu %u\n", (unsigned long long)off, (unsigned long long)len, flags);
    VT_OK(vdk_image_write_zeroes(R->img, len, off, flags, &err), &err);
    memset(R->cur + off, 0, len);
}

static void op_discard(run *R)
{
    uint64_t size = R->c->size, off = vt_below(&R->x, size);
    uint64_t len = 1 + vt_below(&R->x, 6 * R->cs);
    if (len > size - off)
        len = size - off;
    vdk_error err = {0};
    TRACE("discard %llu +%llu\n", (unsigned long long)off, (unsigned long long)len);
    VT_OK(vdk_image_discard(R->img, len, off, &err), &err);
    uint64_t a = (off + R->cs - 1) / R->cs * R->cs, b = (off + len) / R->cs * R->cs;
    if (off + len == size)
        b = size;
    for (uint64_t p = a; p < b; p++)
        R->cur[p] = R->v2 ? R->base[p] : 0;
}

static void op_compressed(run *R, uint8_t *buf)
{
    uint64_t size = R->c->size, nclusters = (size + R->cs - 1) / R->cs;
    uint64_t c0 = vt_below(&R->x, nclusters), k = 1 + vt_below(&R->x, 4);
    if (c0 + k > nclusters)
        k = nclusters - c0;
    uint64_t off = c0 * R->cs, len = k * R->cs;
    if (off + len > size)
        len = size - off;
    if (vt_below(&R->x, 3) == 0)
        memset(buf, (int)vt_below(&R->x, 256), len); /* very compressible */
    else
        vt_fill(buf, len, vt_rand(&R->x));
    vdk_error err = {0};
    TRACE("compressed %llu +%llu\n", (unsigned long long)off, (unsigned long long)len);
    VT_OK(vdk_image_pwrite_compressed(R->img, buf, len, off, &err), &err);
    memcpy(R->cur + off, buf, len);
}

static void op_read(run *R, uint8_t *buf)
{
    uint64_t size = R->c->size, off = vt_below(&R->x, size);
    uint64_t len = 1 + vt_below(&R->x, 3 * R->cs + 5000);
    if (len > size - off)
        len = size - off;
    if (len > (4u << 20))
        len = 4u << 20;
    vdk_error err = {0};
    VT_OK(vdk_image_pread(R->img, buf, len, off, &err), &err);
    if (memcmp(buf, R->cur + off, len) != 0) {
        size_t i = 0;
        while (buf[i] == R->cur[off + i])
            i++;
        VT_CHECK(0, "%s: read at %llu differs at +%zu", R->c->name, (unsigned long long)off, i);
    }
}

static void workload(run *R, int nops)
{
    uint8_t *buf = malloc(8u << 20);
    vdk_error err = {0};
    int start_failures = vt_failures;
    for (int i = 0; i < nops && R->img && vt_failures == start_failures; i++) {
        uint64_t k = vt_below(&R->x, 100);
        if (k < 45)
            op_write(R, buf);
        else if (k < 58)
            op_zero(R);
        else if (k < 68)
            op_discard(R);
        else if (k < 80 && R->c->compress)
            op_compressed(R, buf);
        else if (k < 86)
            VT_OK(vdk_image_flush(R->img, &err), &err);
        else if (k < 89)
            reopen(R);
        else
            op_read(R, buf);
    }
    free(buf);
}

static void check_result(run *R)
{
    vdk_error err = {0};
    if (R->img)
        VT_OK(vdk_image_close(R->img, &err), &err);
    R->img = vt_open(R->path, 0, &err);
    VT_CHECK(R->img != NULL, "final open %s: %s", R->c->name, err.msg);
    if (!R->img)
        return;
    vt_compare_image(R->img, R->cur, R->c->size, R->c->name);
    VT_OK(vdk_image_close(R->img, &err), &err);
    R->img = NULL;
    tq_qemu_check(R->path, R->c->name);
    const char *raw = vt_path("oracle.raw");
    vt_write_file(raw, R->cur, R->c->size);
    tq_qemu_compare(R->path, raw, R->c->name);
}

static void take_snapshot(run *R, int k)
{
    vdk_error err = {0};
    char out[4096];
    VT_OK(vdk_image_close(R->img, &err), &err);
    R->img = NULL;
    VT_CHECK(vt_sh(out, sizeof out, "qemu-img snapshot -c s%d '%s'", k, R->path) == 0,
             "snapshot: %s", out);
    reopen(R);
}

static void check_snapshot(run *R, int k, const uint8_t *want)
{
    char out[4096];
    const char *raw = vt_path("snap.raw");
    int st = vt_sh(out, sizeof out, "cd '%s' && qemu-img convert -l snapshot.name=s%d -O raw '%s' '%s'",
                   vt_dir, k, R->path, raw);
    VT_CHECK(st == 0, "%s: convert snapshot s%d: %s", R->c->name, k, out);
    size_t n = 0;
    uint8_t *got = vt_read_file(raw, &n);
    VT_CHECK(got && n == R->c->size && !memcmp(got, want, n), "%s: snapshot s%d changed",
             R->c->name, k);
    free(got);
}

static void run_cfg(const cfg *c, uint64_t seed)
{
    int before = vt_failures;
    run R = {.c = c, .x = (seed ^ ((uint64_t)(unsigned char)c->name[0] * 7919)) + 1};
    R.cs = c->cluster_size ? strtoull(c->cluster_size, NULL, 10) : 65536;
    R.v2 = c->compat && !strcmp(c->compat, "0.10");
    R.cur = calloc(1, c->size);
    R.base = calloc(1, c->size);
    R.path = vt_path("img.qcow2");
    unlink(R.path);
    if (c->backing)
        make_base(&R, vt_path("base.img"));
    uint8_t *snap[4] = {0};
    if (create_image(&R) == 0) {
        reopen(&R);
        for (int k = 0; k < c->snapshots && R.img; k++) {
            workload(&R, c->nops / (c->snapshots + 1));
            take_snapshot(&R, k);
            snap[k] = malloc(c->size);
            memcpy(snap[k], R.cur, c->size);
        }
        workload(&R, c->nops / (c->snapshots + 1));
        check_result(&R);
        for (int k = 0; k < c->snapshots; k++)
            check_snapshot(&R, k, snap[k]);
    }
    for (int k = 0; k < 4; k++)
        free(snap[k]);
    if (R.img) {
        vdk_error err = {0};
        vdk_image_close(R.img, &err);
    }
    printf("  %-28s %s\n", c->name, vt_failures != before ? "FAILED" : "ok");
    fflush(stdout);
    free(R.cur);
    free(R.base);
    unlink(vt_path("base.img"));
}

static const cfg cfgs[] = {
    {"v3 64k", 32 << 20, NULL, NULL, NULL, NULL, NULL, NULL, 0, 400, true, 0},
    {"v2 64k", 32 << 20, NULL, "0.10", NULL, NULL, NULL, NULL, 0, 400, true, 0},
    {"v3 512 rc1", 4 << 20, "512", NULL, "1", NULL, NULL, NULL, 0, 300, true, 0},
    {"v3 4k rc2", 8 << 20, "4096", NULL, "2", NULL, NULL, NULL, 0, 400, true, 0},
    {"v3 4k rc4 lazy", 8 << 20, "4096", NULL, "4", "on", NULL, NULL, 0, 400, true, 0},
    {"v3 8k rc8", 8 << 20, "8192", NULL, "8", NULL, NULL, NULL, 0, 300, true, 0},
    {"v3 16k rc32 extl2", 16 << 20, "16384", NULL, "32", NULL, "on", NULL, 0, 400, true, 0},
    {"v3 64k rc64 zstd", 32 << 20, NULL, NULL, "64", NULL, NULL, "zstd", 0, 300, true, 0},
    {"v3 2M", 64 << 20, "2097152", NULL, NULL, NULL, NULL, NULL, 0, 120, true, 0},
    {"v3 2M extl2 zstd", 64 << 20, "2097152", NULL, NULL, NULL, "on", "zstd", 0, 120, true, 0},
    {"v3 64k raw backing", 32 << 20, NULL, NULL, NULL, NULL, NULL, NULL, 1, 400, true, 0},
    {"v2 64k raw backing", 32 << 20, NULL, "0.10", NULL, NULL, NULL, NULL, 1, 400, true, 0},
    {"v3 4k qcow2 backing lazy", 8 << 20, "4096", NULL, NULL, "on", NULL, NULL, 2, 400, true, 0},
    {"v3 32k extl2 backing", 16 << 20, "32768", NULL, NULL, NULL, "on", NULL, 1, 400, true, 0},
    {"v3 512 rc64 table growth", 12 << 20, "512", NULL, "64", NULL, NULL, NULL, 0, 300, true, 0},
    {"v3 1k rc64 lazy backing", 8 << 20, "1024", NULL, "64", "on", NULL, NULL, 2, 300, true, 0},
    {"v3 4k two snapshots", 8 << 20, "4096", NULL, NULL, NULL, NULL, NULL, 0, 450, true, 2},
    {"v2 64k snapshot", 16 << 20, NULL, "0.10", NULL, NULL, NULL, NULL, 0, 300, true, 1},
    {"v3 32k extl2 snapshot backing", 8 << 20, "32768", NULL, NULL, NULL, "on", NULL, 1, 300,
     true, 1},
    {"v3 16k lazy snapshots", 8 << 20, "16384", NULL, NULL, "on", NULL, "zstd", 0, 450, true, 3},
    {"v3 1k odd size", (3 << 20) + 1536, "1024", NULL, NULL, NULL, NULL, NULL, 1, 300, true, 0},
};

int main(int argc, char **argv)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_random: qemu-img/qemu-io missing, skipped\n");
        return 0;
    }
    vt_init();
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 20240601;
    trace = getenv("TQ_TRACE") != NULL;
    const char *only = getenv("TQ_ONLY");
    printf("test_qcow2_random: seed %llu\n", (unsigned long long)seed);
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        if (!only || strcmp(only, cfgs[i].name) == 0)
            run_cfg(&cfgs[i], seed + i);
    return vt_finish("test_qcow2_random");
}
