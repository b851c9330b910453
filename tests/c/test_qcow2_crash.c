/*
 * test_qcow2_crash.c - crash consistency of the qcow2 write ordering.
 *
 * A workload (writes, zero writes, discards, compressed writes, flushes;
 * optionally over clusters shared with an internal snapshot, or with lazy
 * refcounts) runs on a file that records every change and flush. Crash
 * states are then rebuilt: every change up to some flush, plus a random
 * subset (in random order) of the changes before the next flush — what a
 * disk that reorders writes between flushes may leave. Each state must pass
 * `qemu-img check` with no errors (leaked clusters are allowed, as after a
 * QEMU crash; with lazy refcounts vdk's repair on open must make it fully
 * clean), and hold every byte the last completed vdk_image_flush made
 * durable.
 */
#include "file-test.h"
#include "test_qcow2_util.h"

#define SIZE (4u << 20)

typedef struct opinfo {
    size_t log_before;
    uint64_t off, len;
} opinfo;

typedef struct flushinfo {
    size_t log_after;
    uint8_t *oracle;
} flushinfo;

static vdk_record *rec;

static vdk_file *hook(vdk_file *f, const char *path, void *ctx)
{
    (void)path;
    (void)ctx;
    vdk_file *w = vdk_file_record_new(f, rec);
    if (!w)
        return f;
    vdk_file_unref(f);
    return w;
}

typedef struct wl {
    opinfo ops[400];
    int nops;
    flushinfo fl[64];
    int nfl;
    uint8_t *cur;
    size_t crash_at; /* log entries written before the "crash" */
} wl;

static void one_op(vdk_image *img, wl *w, uint64_t *x, uint64_t cs, uint8_t *buf)
{
    vdk_error err = {0};
    uint64_t k = vt_below(x, 10), off = vt_below(x, SIZE), len = 1 + vt_below(x, 3 * cs);
    if (len > SIZE - off)
        len = SIZE - off;
    opinfo *o = &w->ops[w->nops++];
    o->log_before = vdk_record_count(rec);
    if (k < 6) {
        vt_fill(buf, len, vt_rand(x));
        VT_OK(vdk_image_pwrite(img, buf, len, off, &err), &err);
        memcpy(w->cur + off, buf, len);
    } else if (k < 7) {
        VT_OK(vdk_image_write_zeroes(img, len, off, vt_below(x, 2) ? VDK_ZERO_MAY_UNMAP : 0, &err),
              &err);
        memset(w->cur + off, 0, len);
    } else if (k < 8) {
        VT_OK(vdk_image_discard(img, len, off, &err), &err);
        uint64_t a = (off + cs - 1) / cs * cs, b = (off + len) / cs * cs;
        for (uint64_t p = a; p < b; p++)
            w->cur[p] = 0;
    } else {
        off -= off % cs;
        len = cs;
        vt_fill(buf, len, vt_rand(x));
        VT_OK(vdk_image_pwrite_compressed(img, buf, len, off, &err), &err);
        memcpy(w->cur + off, buf, len);
    }
    o->off = off;
    o->len = len;
}

static void run_workload(const char *path, wl *w, uint64_t seed, uint64_t cs)
{
    vdk_error err = {0};
    rec = vdk_record_new();
    vdk_file_set_open_hook(hook, NULL);
    vdk_image *img = vt_open(path, VDK_OPEN_RDWR, &err);
    vdk_file_set_open_hook(NULL, NULL);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    if (!img)
        return;
    uint8_t *buf = malloc(4 * cs);
    uint64_t x = seed;
    while (w->nops < 360 && w->nfl < 60) {
        one_op(img, w, &x, cs, buf);
        if (vt_below(&x, 6) == 0) {
            VT_OK(vdk_image_flush(img, &err), &err);
            flushinfo *f = &w->fl[w->nfl++];
            f->log_after = vdk_record_count(rec);
            f->oracle = malloc(SIZE);
            memcpy(f->oracle, w->cur, SIZE);
        }
    }
    free(buf);
    /* The process "crashes" here: the log so far is what the crash states
     * are built from; closing afterwards only adds entries past that. */
    w->crash_at = vdk_record_count(rec);
    vdk_image_close(img, &err);
}

/* Check one crash state: log entries [0, f] plus a subset of (f, g). */
static void check_state(const char *start, const char *name, wl *w, const uint8_t *initial,
                        size_t f, size_t g, uint64_t *x, bool lazy)
{
    size_t *idx = malloc((g + 1) * sizeof *idx), n = 0;
    for (size_t i = 0; i <= f && f != SIZE_MAX; i++)
        idx[n++] = i;
    size_t first = f == SIZE_MAX ? 0 : f + 1;
    for (size_t i = first; i < g; i++)
        if (vt_below(x, 2))
            idx[n++] = i;
    /* Shuffle the tail (reordering between flushes). */
    size_t head = f == SIZE_MAX ? 0 : f + 1;
    for (size_t i = n; i > head + 1; i--) {
        size_t j = head + vt_below(x, i - head);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
    char out[8192];
    const char *crash = vt_path("crash.qcow2");
    vt_sh(out, sizeof out, "cp '%s' '%s'", start, crash);
    vdk_error err = {0};
    vdk_file *t = NULL;
    VT_OK(vdk_file_open(crash, VDK_FILE_RDWR | VDK_FILE_NOLOCK, VDK_CACHE_UNSAFE, &t, &err),
          &err);
    if (t) {
        VT_OK(vdk_record_apply(rec, t, idx, n, &err), &err);
        vdk_file_unref(t);
    }
    free(idx);
    /* The durable oracle: the last image flush whose entries are all in. */
    const uint8_t *want = initial;
    size_t since = 0;
    for (int k = 0; k < w->nfl; k++) {
        if (f != SIZE_MAX && w->fl[k].log_after - 1 <= f) {
            want = w->fl[k].oracle;
            since = w->fl[k].log_after;
        }
    }
    uint8_t *care = malloc(SIZE);
    memset(care, 1, SIZE);
    for (int i = 0; i < w->nops; i++)
        if (w->ops[i].log_before >= since)
            memset(care + w->ops[i].off, 0, w->ops[i].len);
    if (lazy) { /* repair on open makes it clean */
        vdk_image *img = vt_open(crash, VDK_OPEN_RDWR, &err);
        VT_CHECK(img != NULL, "%s: open after crash (f=%zu): %s", name, f, err.msg);
        if (img)
            VT_OK(vdk_image_close(img, &err), &err);
        tq_qemu_check(crash, name);
    } else {
        int st = vt_sh(out, sizeof out, "qemu-img check -f qcow2 '%s'", crash);
        VT_CHECK(st == 0 || st == 3, "%s: crash state (f=%zu of %zu) has errors: %s", name, f,
                 vdk_record_count(rec), out);
    }
    vdk_image *img = vt_open(crash, 0, &err);
    VT_CHECK(img != NULL, "%s: read-only open after crash: %s", name, err.msg);
    if (img) {
        uint8_t *got = malloc(SIZE);
        VT_OK(vdk_image_pread(img, got, SIZE, 0, &err), &err);
        for (uint64_t i = 0; i < SIZE; i++) {
            if (care[i] && got[i] != want[i]) {
                VT_CHECK(0, "%s: durable byte %llu lost after crash (f=%zu)", name,
                         (unsigned long long)i, f);
                break;
            }
        }
        free(got);
        vdk_image_close(img, &err);
    }
    free(care);
}

static void run_cfg(const char *name, const char *opts_cluster, bool lazy, bool snapshot,
                    uint64_t seed)
{
    int before = vt_failures;
    vdk_error err = {0};
    char out[4096];
    const char *path = vt_path("c.qcow2"), *start = vt_path("start.qcow2");
    vdk_kv kv[] = {{"cluster_size", opts_cluster}, {"lazy_refcounts", lazy ? "on" : "off"}};
    unlink(path);
    VT_OK(vdk_image_create(path, "qcow2", SIZE, kv, 2, &err), &err);
    wl *w = calloc(1, sizeof *w);
    w->cur = calloc(1, SIZE);
    uint64_t cs = strtoull(opts_cluster, NULL, 10);
    if (snapshot) {
        vdk_image *img = vt_open(path, VDK_OPEN_RDWR, &err);
        if (img) {
            vt_fill(w->cur, SIZE, seed);
            VT_OK(vdk_image_pwrite(img, w->cur, SIZE, 0, &err), &err);
            vdk_image_close(img, &err);
        }
        VT_CHECK(vt_sh(out, sizeof out, "qemu-img snapshot -c s '%s'", path) == 0, "%s", out);
    }
    uint8_t *initial = malloc(SIZE);
    memcpy(initial, w->cur, SIZE);
    vt_sh(out, sizeof out, "cp '%s' '%s'", path, start);
    run_workload(path, w, seed, cs);
    /* Crash points: before the first flush, and after each flush entry. */
    size_t n = w->crash_at, prev = SIZE_MAX;
    uint64_t x = seed * 3 + 1;
    int states = 0;
    for (size_t i = 0; i <= n && vt_failures == before; i++) {
        struct vdk_record_entry e = {0};
        bool is_flush = i < n && vdk_record_entry(rec, i, &e) == 0 && e.kind == VDK_RECORD_FLUSH;
        if (i == n || is_flush) {
            if (vt_below(&x, 3) == 0 || i == n) {
                check_state(start, name, w, initial, prev, i, &x, lazy);
                states++;
            }
            prev = i;
        }
    }
    for (int k = 0; k < w->nfl; k++)
        free(w->fl[k].oracle);
    free(w->cur);
    free(w);
    free(initial);
    vdk_record_free(rec);
    rec = NULL;
    printf("  %-22s %3d crash states %s\n", name, states, vt_failures != before ? "FAILED" : "ok");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (!vt_have_qemu()) {
        printf("test_qcow2_crash: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 11;
    run_cfg("4k", "4096", false, false, seed);
    run_cfg("4k snapshot", "4096", false, true, seed + 1);
    run_cfg("64k", "65536", false, false, seed + 2);
    run_cfg("4k lazy", "4096", true, false, seed + 3);
    run_cfg("4k lazy snapshot", "4096", true, true, seed + 4);
    return vt_finish("test_qcow2_crash");
}
