/*
 * test_qed_parallel.c - several threads writing one QED image at once.
 *
 * The image (over a backing file full of a pattern, so copy-on-write
 * matters) is cut into 1 KiB slots dealt round-robin to the threads; each
 * thread writes, zeroes and re-reads only its own slots, in a seeded random
 * order, so many requests land in the same cluster while it is being
 * allocated. A lost allocation or copy-on-write race shows up as another
 * thread's slot reading back wrong. One more thread flushes now and then,
 * so the need-check bit is cleared and set again while writers run.
 * Afterwards every slot must hold what its owner wrote last, vdk's check
 * must be clean, and qemu-img check and compare (against a raw oracle)
 * must agree.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "test_qed_util.h"

#define NTHREADS 4
#define SLOT 1024u
#define OPS 4000

typedef struct shared {
    vdk_image *img;
    uint64_t size;
    uint8_t *oracle; /* each thread writes only its own slots */
    atomic_int stop; /* set by main once the writers are done */
    int errors;
    pthread_mutex_t lock;
} shared;

typedef struct worker {
    shared *sh;
    int id;
    uint64_t seed;
} worker;

static void fail(shared *sh, const char *what, const vdk_error *err)
{
    pthread_mutex_lock(&sh->lock);
    if (sh->errors++ < 10)
        fprintf(stderr, "FAIL %s: %s\n", what, err ? err->msg : "");
    pthread_mutex_unlock(&sh->lock);
}

/* A run of this thread's slots: slot numbers id, id + N, ... are ours. */
static void one_op(worker *w, uint64_t *x, uint8_t *buf)
{
    shared *sh = w->sh;
    uint64_t nslots = sh->size / SLOT;
    uint64_t slot = vt_below(x, nslots / NTHREADS) * NTHREADS + (uint64_t)w->id;
    uint64_t off = slot * SLOT, k = vt_below(x, 10);
    uint32_t len = SLOT - (uint32_t)vt_below(x, 3) * 300;
    vdk_error err = {0};
    if (k < 6) {
        vt_fill(buf, len, vt_rand(x));
        if (vdk_image_pwrite(sh->img, buf, len, off, &err) < 0)
            fail(sh, "write", &err);
        memcpy(sh->oracle + off, buf, len);
    } else if (k < 8) {
        if (vdk_image_write_zeroes(sh->img, len, off, 0, &err) < 0)
            fail(sh, "write_zeroes", &err);
        memset(sh->oracle + off, 0, len);
    } else {
        if (vdk_image_pread(sh->img, buf, SLOT, off, &err) < 0)
            fail(sh, "read", &err);
        else if (memcmp(buf, sh->oracle + off, SLOT) != 0)
            fail(sh, "read-your-writes mismatch", NULL);
    }
}

static void *writer(void *arg)
{
    worker *w = arg;
    uint64_t x = w->seed;
    uint8_t buf[SLOT];
    for (int i = 0; i < OPS; i++)
        one_op(w, &x, buf);
    return NULL;
}

static void *flusher(void *arg)
{
    shared *sh = arg;
    vdk_error err = {0};
    while (!atomic_load(&sh->stop)) {
        if (vdk_image_flush(sh->img, &err) < 0)
            fail(sh, "flush", &err);
        usleep(2000);
    }
    return NULL;
}

static void run(const char *cs, const char *ts, uint64_t size, uint64_t seed)
{
    char name[64], basename[64];
    snprintf(name, sizeof name, "par-%s-%s.qed", cs, ts);
    snprintf(basename, sizeof basename, "par-%s-%s.base", cs, ts);
    const char *p = vt_path(name), *base = vt_path(basename);
    shared sh = {.size = size};
    pthread_mutex_init(&sh.lock, NULL);
    sh.oracle = malloc(size);
    for (uint64_t i = 0; i < size; i++)
        sh.oracle[i] = (uint8_t)(i * 7 + 3);
    VT_CHECK(vt_write_file(base, sh.oracle, size) == 0, "base file");
    vdk_error err = {0};
    const char *kv[] = {"cluster_size", cs, "table_size", ts, "backing_file", basename,
                        "backing_fmt", "raw", NULL};
    VT_OK(tqed_create(p, size, kv, &err), &err);
    sh.img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(sh.img != NULL, "open: %s", err.msg);
    if (!sh.img)
        return;
    pthread_t th[NTHREADS], fl;
    worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){&sh, i, seed + (uint64_t)i * 977};
        pthread_create(&th[i], NULL, writer, &w[i]);
    }
    pthread_create(&fl, NULL, flusher, &sh);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&sh.stop, 1);
    pthread_join(fl, NULL);
    VT_CHECK(sh.errors == 0, "%d errors in the threads", sh.errors);
    vt_compare_image(sh.img, sh.oracle, size, name);
    VT_CHECK(tqed_scan(sh.img, NULL, name) == 0, "vdk check not clean");
    VT_OK(vdk_image_close(sh.img, &err), &err);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "need-check cleared at close");
    if (vt_have_qemu()) {
        char raw[300];
        snprintf(raw, sizeof raw, "%s.oracle", p);
        VT_CHECK(vt_write_file(raw, sh.oracle, size) == 0, "oracle file");
        tqed_qemu_check(p, name);
        tqed_qemu_compare(p, raw, name);
    }
    free(sh.oracle);
    pthread_mutex_destroy(&sh.lock);
}

int main(void)
{
    vt_init();
    run("4096", "2", 8 << 20, 1);
    run("65536", "4", 16 << 20, 2);
    run("16384", "2", 12 << 20, 3);
    return vt_finish("test_qed_parallel");
}
