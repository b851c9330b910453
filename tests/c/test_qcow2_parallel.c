/*
 * test_qcow2_parallel.c - several threads on one image at once.
 *
 * Phase 1: threads own interleaved 4 KiB blocks (so they allocate and fill
 * the same clusters concurrently, with partial-cluster copy-on-write) and
 * write random pieces of their own blocks, reading them back as they go.
 * Phase 2: all threads write the same ranges with the same data (truly
 * overlapping writes: any order gives one result). Phase 3: threads own
 * whole clusters and mix writes, compressed writes, zero writes and
 * discards. After each configuration the image is reopened and compared
 * with the oracle, then `qemu-img check` and `qemu-img compare` run.
 */
#include <pthread.h>

#include "test_qcow2_util.h"

#define NTHREADS 4
#define BLOCK 4096u

typedef struct shared {
    vdk_image *img;
    uint8_t *cur;
    uint64_t size, cs;
    bool v3;
    int ops;
} shared;

typedef struct worker {
    shared *sh;
    int id;
    uint64_t x;
    int errors;
    char msg[640];
} worker;

static int owner(uint64_t block) { return (int)((block * 2654435761u >> 7) % NTHREADS); }

static void fail(worker *w, const char *what, vdk_error *err)
{
    if (!w->errors++)
        snprintf(w->msg, sizeof w->msg, "thread %d: %s: %s", w->id, what, err ? err->msg : "");
}

/* A random block of this thread. */
static uint64_t my_block(worker *w)
{
    uint64_t nb = w->sh->size / BLOCK;
    for (;;) {
        uint64_t b = vt_below(&w->x, nb);
        if (owner(b) == w->id)
            return b;
    }
}

static void *phase1(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    uint8_t buf[BLOCK], back[BLOCK];
    vdk_error err = {0};
    for (int i = 0; i < sh->ops && !w->errors; i++) {
        uint64_t b = my_block(w), a = vt_below(&w->x, BLOCK), len = 1 + vt_below(&w->x, BLOCK - a);
        uint64_t off = b * BLOCK + a;
        vt_fill(buf, len, vt_rand(&w->x));
        if (vdk_image_pwrite(sh->img, buf, len, off, &err) < 0)
            fail(w, "write", &err);
        memcpy(sh->cur + off, buf, len);
        if (vt_below(&w->x, 4) == 0) {
            if (vdk_image_pread(sh->img, back, BLOCK, b * BLOCK, &err) < 0)
                fail(w, "read", &err);
            else if (memcmp(back, sh->cur + b * BLOCK, BLOCK))
                fail(w, "read back differs", NULL);
        }
        if (vt_below(&w->x, 50) == 0 && vdk_image_flush(sh->img, &err) < 0)
            fail(w, "flush", &err);
    }
    return NULL;
}

/* Same data from every thread: a function of the offset only. */
static void *phase2(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    uint64_t x = 99; /* same sequence in all threads */
    uint8_t *buf = malloc(256 * 1024);
    vdk_error err = {0};
    for (int i = 0; i < sh->ops / 4 && !w->errors; i++) {
        uint64_t off = vt_below(&x, sh->size), len = 1 + vt_below(&x, 256 * 1024);
        if (len > sh->size - off)
            len = sh->size - off;
        vt_fill(buf, len, off * 31 + len);
        if (vdk_image_pwrite(sh->img, buf, len, off, &err) < 0)
            fail(w, "write", &err);
        if (w->id == 0)
            memcpy(sh->cur + off, buf, len);
    }
    free(buf);
    return NULL;
}

static void cluster_op(worker *w, uint64_t c, uint8_t *buf)
{
    shared *sh = w->sh;
    uint64_t off = c * sh->cs, len = sh->cs;
    vdk_error err = {0};
    if (off + len > sh->size)
        len = sh->size - off;
    switch (vt_below(&w->x, 5)) {
    case 0:
        vt_fill(buf, len, vt_rand(&w->x));
        if (vdk_image_pwrite_compressed(sh->img, buf, len, off, &err) < 0)
            fail(w, "compressed write", &err);
        memcpy(sh->cur + off, buf, len);
        break;
    case 1:
        if (vdk_image_write_zeroes(sh->img, len, off, vt_below(&w->x, 2) ? VDK_ZERO_MAY_UNMAP : 0,
                                   &err) < 0)
            fail(w, "zero", &err);
        memset(sh->cur + off, 0, len);
        break;
    case 2:
        if (!sh->v3)
            break;
        if (vdk_image_discard(sh->img, len, off, &err) < 0)
            fail(w, "discard", &err);
        memset(sh->cur + off, 0, len);
        break;
    default: {
        uint64_t a = vt_below(&w->x, len), n = 1 + vt_below(&w->x, len - a);
        vt_fill(buf, n, vt_rand(&w->x));
        if (vdk_image_pwrite(sh->img, buf, n, off + a, &err) < 0)
            fail(w, "write", &err);
        memcpy(sh->cur + off + a, buf, n);
    }
    }
}

static void *phase3(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    uint8_t *buf = malloc(sh->cs);
    uint64_t nc = (sh->size + sh->cs - 1) / sh->cs;
    for (int i = 0; i < sh->ops / 2 && !w->errors; i++) {
        uint64_t c = vt_below(&w->x, nc);
        c -= c % NTHREADS;
        c += (uint64_t)w->id;
        if (c < nc)
            cluster_op(w, c, buf);
    }
    free(buf);
    return NULL;
}

static void run_phase(shared *sh, void *(*fn)(void *), uint64_t seed, const char *name)
{
    pthread_t t[NTHREADS];
    worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){.sh = sh, .id = i, .x = seed * 7 + (uint64_t)i * 1000003 + 1};
        pthread_create(&t[i], NULL, fn, &w[i]);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        VT_CHECK(w[i].errors == 0, "%s: %s", name, w[i].msg);
    }
}

static void run_cfg(const char *name, uint64_t size, const vdk_kv *kv, size_t n, bool backing,
                    bool v3, uint64_t seed)
{
    int before = vt_failures;
    const char *path = vt_path("par.qcow2");
    vdk_error err = {0};
    shared sh = {.size = size, .v3 = v3, .ops = 3000};
    sh.cur = calloc(1, size);
    if (backing) {
        vt_fill(sh.cur, size / 2, seed);
        vt_write_file(vt_path("base.raw"), sh.cur, size / 2);
    }
    unlink(path);
    VT_OK(vdk_image_create(path, "qcow2", size, kv, n, &err), &err);
    sh.img = vt_open(path, VDK_OPEN_RDWR, &err);
    VT_CHECK(sh.img != NULL, "%s: open: %s", name, err.msg);
    if (sh.img) {
        sh.cs = vdk_image_cluster_size(sh.img);
        run_phase(&sh, phase1, seed, name);
        run_phase(&sh, phase2, seed, name);
        if (!backing)
            run_phase(&sh, phase3, seed, name);
        VT_OK(vdk_image_close(sh.img, &err), &err);
        vdk_image *img = vt_open(path, 0, &err);
        if (img) {
            vt_compare_image(img, sh.cur, size, name);
            vdk_image_close(img, &err);
        }
        tq_qemu_check(path, name);
        vt_write_file(vt_path("oracle.raw"), sh.cur, size);
        tq_qemu_compare(path, vt_path("oracle.raw"), name);
    }
    free(sh.cur);
    printf("  %-24s %s\n", name, vt_failures != before ? "FAILED" : "ok");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_parallel: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 7;
    vdk_kv def[] = {{"cluster_size", "65536"}};
    vdk_kv small[] = {{"cluster_size", "4096"}, {"refcount_bits", "8"}};
    vdk_kv ext[] = {{"cluster_size", "32768"}, {"extended_l2", "on"}};
    vdk_kv lazy[] = {{"cluster_size", "16384"}, {"lazy_refcounts", "on"}};
    vdk_kv v2[] = {{"compat", "0.10"}, {"cluster_size", "8192"}};
    vdk_kv back[] = {{"backing_file", "base.raw"}, {"backing_fmt", "raw"}};
    vdk_kv backext[] = {{"backing_file", "base.raw"}, {"backing_fmt", "raw"},
                        {"extended_l2", "on"}};
    run_cfg("64k", 16 << 20, def, 1, false, true, seed);
    run_cfg("4k rc8", 4 << 20, small, 2, false, true, seed);
    run_cfg("32k extended l2", 8 << 20, ext, 2, false, true, seed);
    run_cfg("16k lazy", 8 << 20, lazy, 2, false, true, seed);
    run_cfg("v2 8k", 8 << 20, v2, 2, false, false, seed);
    run_cfg("64k backing", 16 << 20, back, 2, true, true, seed);
    run_cfg("64k backing extended l2", 16 << 20, backext, 3, true, true, seed);
    return vt_finish("test_qcow2_parallel");
}
