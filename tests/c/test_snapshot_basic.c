/*
 * test_snapshot_basic.c - qcow2 internal snapshots through the C API, with
 * qemu-img as the oracle: create, apply, delete and VM states on several
 * image layouts (cluster sizes, v2, extended L2, lazy refcounts, 1-bit and
 * 64-bit refcounts, compressed clusters, snapshots qemu-img made). After
 * every operation `qemu-img check` must be clean (no errors, no leaks),
 * every snapshot must read (qemu-img convert -l) what the disk held when it
 * was taken, and the active disk what was written last.
 */
#include "test_qcow2_util.h"

#define SIZE (6u << 20)
#define MAXS 8

typedef struct model {
    uint8_t *cur;
    uint8_t *snap[MAXS];
    char name[MAXS][16];
    int n;
} model;

static void scribble(vdk_image *img, model *m, uint64_t *x, uint64_t cs)
{
    vdk_error err = {0};
    uint8_t *buf = malloc(3 * cs);
    for (int k = 0; k < 12; k++) {
        uint64_t off = vt_below(x, SIZE), len = 1 + vt_below(x, 3 * cs);
        if (len > SIZE - off)
            len = SIZE - off;
        if (vt_below(x, 5) == 0) {
            VT_OK(vdk_image_write_zeroes(img, len, off, VDK_ZERO_MAY_UNMAP, &err), &err);
            memset(m->cur + off, 0, len);
        } else if (vt_below(x, 6) == 0 && off + cs <= SIZE) {
            off -= off % cs;
            vt_fill(buf, cs, vt_rand(x));
            VT_OK(vdk_image_pwrite_compressed(img, buf, cs, off, &err), &err);
            memcpy(m->cur + off, buf, cs);
        } else {
            vt_fill(buf, len, vt_rand(x));
            VT_OK(vdk_image_pwrite(img, buf, len, off, &err), &err);
            memcpy(m->cur + off, buf, len);
        }
    }
    free(buf);
}

static const char *find_id(vdk_image *img, const char *name)
{
    static char id[64];
    vdk_snapshot_info *l;
    size_t n;
    vdk_error err = {0};
    id[0] = 0;
    VT_OK(vdk_snapshot_list(img, &l, &n, &err), &err);
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i].name, name) == 0)
            snprintf(id, sizeof id, "%s", l[i].id);
    vdk_snapshot_list_free(l, n);
    return id;
}

/* Every snapshot through qemu-img, and the active disk through vdk. */
static void verify(const char *path, model *m, const char *ctx)
{
    tq_qemu_check(path, ctx);
    char out[4096];
    const char *raw = vt_path("snap.raw");
    for (int i = 0; i < m->n; i++) {
        if (!m->snap[i])
            continue;
        int st = vt_sh(out, sizeof out, "qemu-img convert -l snapshot.name=%s -O raw '%s' '%s'",
                       m->name[i], path, raw);
        VT_CHECK(st == 0, "%s: convert -l %s: %s", ctx, m->name[i], out);
        size_t len;
        uint8_t *got = vt_read_file(raw, &len);
        VT_CHECK(got && len == SIZE && memcmp(got, m->snap[i], SIZE) == 0,
                 "%s: snapshot %s reads differently in qemu", ctx, m->name[i]);
        free(got);
    }
    vdk_error err = {0};
    vdk_image *img = vt_open(path, 0, &err);
    VT_CHECK(img != NULL, "%s: open: %s", ctx, err.msg);
    if (img) {
        vt_compare_image(img, m->cur, SIZE, ctx);
        vdk_image_close(img, &err);
    }
}

static void vmstate_roundtrip(const char *path, uint64_t cs, uint64_t *x)
{
    vdk_error err = {0};
    char ctx[64];
    snprintf(ctx, sizeof ctx, "vmstate cs=%llu", (unsigned long long)cs);
    uint64_t n = 3 * cs + 1234;
    uint8_t *st = malloc(n), *back = malloc(n + 100);
    vt_fill(st, n, vt_rand(x));
    vdk_image *img = vt_open(path, VDK_OPEN_RDWR, &err);
    if (!img)
        return;
    /* Out of order, partial clusters, in two pieces. */
    VT_OK(vdk_vmstate_write(img, st + cs, n - cs, cs, &err), &err);
    VT_OK(vdk_vmstate_write(img, st, cs, 0, &err), &err);
    vdk_snapshot_params p = {.name = "withstate", .icount = VDK_SNAPSHOT_NO_ICOUNT,
                             .vm_state_size = n, .vm_clock_nsec = 1234567890};
    VT_OK(vdk_snapshot_create(img, &p, &err), &err);
    const char *id = find_id(img, "withstate");
    VT_OK(vdk_vmstate_read(img, id, back, n + 100, 0, &err), &err);
    VT_CHECK(memcmp(back, st, n) == 0, "%s: state reads back differently", ctx);
    for (int i = 0; i < 100; i++)
        VT_CHECK(back[n + i] == 0, "%s: past the state: not zero", ctx);
    /* A staged state that no snapshot takes is freed on close. */
    VT_OK(vdk_vmstate_write(img, st, cs, 0, &err), &err);
    vdk_image_close(img, &err);
    tq_qemu_check(path, ctx);
    char out[2048];
    vt_sh(out, sizeof out, "qemu-img snapshot -l '%s'", path);
    VT_CHECK(strstr(out, "withstate") != NULL, "%s: qemu-img does not list it: %s", ctx, out);
    img = vt_open(path, VDK_OPEN_RDWR, &err);
    if (img) {
        VT_OK(vdk_snapshot_delete(img, find_id(img, "withstate"), &err), &err);
        vdk_image_close(img, &err);
    }
    tq_qemu_check(path, ctx);
    free(st);
    free(back);
}

static void run(const char *label, const char *opts, uint64_t cs, uint64_t seed)
{
    int before = vt_failures;
    char out[4096], ctx[128];
    char path[512]; /* vt_path's buffers rotate: keep a copy */
    snprintf(path, sizeof path, "%s", vt_path("s.qcow2"));
    unlink(path);
    VT_CHECK(vt_sh(out, sizeof out, "qemu-img create -f qcow2 -o %s '%s' %u", opts, path, SIZE) ==
                 0,
             "create: %s", out);
    model m = {.cur = calloc(1, SIZE)};
    uint64_t x = seed;
    vdk_error err = {0};
    for (int round = 0; round < 4; round++) {
        vdk_image *img = vt_open(path, VDK_OPEN_RDWR, &err);
        VT_CHECK(img != NULL, "%s: open: %s", label, err.msg);
        if (!img)
            break;
        scribble(img, &m, &x, cs);
        int i = m.n++;
        snprintf(m.name[i], sizeof m.name[i], "s%d", i);
        vdk_snapshot_params p = {.name = m.name[i], .icount = VDK_SNAPSHOT_NO_ICOUNT};
        VT_OK(vdk_snapshot_create(img, &p, &err), &err);
        m.snap[i] = malloc(SIZE);
        memcpy(m.snap[i], m.cur, SIZE);
        p.name = m.name[i];
        VT_CHECK(vdk_snapshot_create(img, &p, &err) == -EEXIST, "%s: duplicate name accepted",
                 label);
        scribble(img, &m, &x, cs);
        vdk_image_close(img, &err);
        snprintf(ctx, sizeof ctx, "%s round %d after create", label, round);
        verify(path, &m, ctx);
        if (round == 1) { /* qemu-img takes one too */
            vt_sh(out, sizeof out, "qemu-img snapshot -c q1 '%s'", path);
            i = m.n++;
            snprintf(m.name[i], sizeof m.name[i], "q1");
            m.snap[i] = malloc(SIZE);
            memcpy(m.snap[i], m.cur, SIZE);
        }
        img = vt_open(path, VDK_OPEN_RDWR, &err);
        if (!img)
            break;
        int a = (int)vt_below(&x, (uint64_t)m.n);
        if (m.snap[a]) {
            VT_OK(vdk_snapshot_apply(img, find_id(img, m.name[a]), &err), &err);
            memcpy(m.cur, m.snap[a], SIZE);
        }
        scribble(img, &m, &x, cs);
        vdk_image_close(img, &err);
        snprintf(ctx, sizeof ctx, "%s round %d after apply %s", label, round, m.name[a]);
        verify(path, &m, ctx);
        if (round >= 2) {
            int d = (int)vt_below(&x, (uint64_t)m.n);
            img = vt_open(path, VDK_OPEN_RDWR, &err);
            if (img && m.snap[d]) {
                VT_OK(vdk_snapshot_delete(img, find_id(img, m.name[d]), &err), &err);
                free(m.snap[d]);
                m.snap[d] = NULL;
            }
            if (img)
                vdk_image_close(img, &err);
            snprintf(ctx, sizeof ctx, "%s round %d after delete %s", label, round, m.name[d]);
            verify(path, &m, ctx);
        }
    }
    vmstate_roundtrip(path, cs, &x);
    /* Delete everything: the image must be as clean as a new one. */
    vdk_image *img = vt_open(path, VDK_OPEN_RDWR, &err);
    for (int i = 0; img && i < m.n; i++) {
        if (m.snap[i])
            VT_OK(vdk_snapshot_delete(img, find_id(img, m.name[i]), &err), &err);
        free(m.snap[i]);
        m.snap[i] = NULL;
    }
    if (img)
        vdk_image_close(img, &err);
    snprintf(ctx, sizeof ctx, "%s after deleting all", label);
    verify(path, &m, ctx);
    free(m.cur);
    printf("  %-28s %s\n", label, vt_failures != before ? "FAILED" : "ok");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (!vt_have_qemu()) {
        printf("test_snapshot_basic: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 5;
    run("64k", "cluster_size=65536", 65536, seed);
    run("4k", "cluster_size=4096", 4096, seed + 1);
    run("512 v2", "cluster_size=512,compat=0.10", 512, seed + 2);
    run("64k extended L2", "cluster_size=65536,extended_l2=on", 65536, seed + 3);
    run("4k lazy", "cluster_size=4096,lazy_refcounts=on", 4096, seed + 4);
    run("4k refcount 4 bits", "cluster_size=4096,refcount_bits=4", 4096, seed + 5);
    run("4k refcount 64 bit", "cluster_size=4096,refcount_bits=64", 4096, seed + 6);
    return vt_finish("test_snapshot_basic");
}
