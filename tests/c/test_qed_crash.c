/*
 * test_qed_crash.c - crash consistency of the QED driver, by recording a
 * workload's file writes and replaying the states a crash could leave.
 *
 * A seeded workload (allocating writes, overwrites, zero writes, discards,
 * flushes, a resize, close) runs on a QED image whose file is wrapped in a
 * recording file (core/file-record.c). Crash states are rebuilt from the
 * log: every prefix (writes reached the disk in order), and at each flush
 * boundary several random subsets of the writes since the previous flush
 * (the disk reordered or dropped them). For every state:
 *  - if the need-check bit is clear, the image must be consistent as it is:
 *    no corruption and no leak without any repair (the bit is durable before
 *    the first change of metadata and cleared only once all is durable);
 *  - a read-only open works without repair;
 *  - a read-write open repairs it, after which vdk's check finds nothing;
 *  - every guest byte that no operation after the last completed flush
 *    touched reads as it did at that flush (so copy-on-write and write
 *    ordering kept the untouched parts of newly allocated clusters);
 *  - a sample of the repaired states passes qemu-img check.
 */
#include <pthread.h>

#include "file-test.h"
#include "test_qed_util.h"

#define MAX_OPS 80

typedef struct crash_case {
    const char *name;
    const char *cluster_size, *table_size;
    uint64_t size;
    bool backing;
    int ops;
    uint64_t seed;
} crash_case;

/* One operation of the workload, as far as the checker needs it. */
typedef struct op {
    uint64_t off, len; /* guest range touched (len 0: none) */
    bool flush;        /* an image flush (or the close) */
    size_t log_end;    /* log entries when it returned */
} op;

typedef struct run {
    const crash_case *c;
    vdk_record *log;
    char path[512];   /* the recorded image */
    uint8_t *start;   /* the file when recording started */
    size_t start_len;
    op ops[MAX_OPS + 2];
    int nops;
    uint8_t *snap[MAX_OPS + 2]; /* guest content after each flush op, else NULL */
    uint64_t size;    /* guest size used for comparisons */
    int states, qemu_checked;
} run;

static const char *hook_path;
static vdk_record *hook_log;

static vdk_file *record_hook(vdk_file *f, const char *path, void *ctx)
{
    (void)ctx;
    if (!hook_path || strcmp(path, hook_path) != 0)
        return f;
    vdk_file *w = vdk_file_record_new(f, hook_log);
    if (!w)
        return f;
    vdk_file_unref(f);
    return w;
}

static uint8_t *read_guest(vdk_image *img, uint64_t size)
{
    uint8_t *b = malloc(size);
    vdk_error err = {0};
    if (vdk_image_pread(img, b, size, 0, &err) < 0) {
        fprintf(stderr, "read_guest: %s\n", err.msg);
        vt_failures++;
    }
    return b;
}

/* ---------------------------------------------------------------- workload */

static void workload(run *rn, vdk_image *img)
{
    const crash_case *c = rn->c;
    uint64_t x = c->seed, cs = vdk_image_cluster_size(img);
    vdk_error err = {0};
    uint8_t *buf = malloc(3 * cs + 4096);
    for (int i = 0; i < c->ops; i++) {
        op *o = &rn->ops[rn->nops++];
        uint64_t k = vt_below(&x, 100);
        o->off = vt_below(&x, rn->size - 1);
        o->len = 1 + vt_below(&x, 2 * cs + 3000);
        if (o->len > rn->size - o->off)
            o->len = rn->size - o->off;
        if (k < 50) {
            vt_fill(buf, o->len, vt_rand(&x));
            VT_OK(vdk_image_pwrite(img, buf, o->len, o->off, &err), &err);
        } else if (k < 65) {
            VT_OK(vdk_image_write_zeroes(img, o->len, o->off,
                                       k & 1 ? VDK_ZERO_MAY_UNMAP : 0, &err), &err);
        } else if (k < 75) {
            VT_OK(vdk_image_discard(img, o->len, o->off, &err), &err);
        } else {
            o->len = 0;
            o->flush = true;
            VT_OK(vdk_image_flush(img, &err), &err);
            rn->snap[rn->nops - 1] = read_guest(img, rn->size);
        }
        o->log_end = vdk_record_count(rn->log);
    }
    free(buf);
}

/* ---------------------------------------------------------------- states */

/* The last flush op completed within the first p log entries. */
static int last_flush(const run *rn, size_t p)
{
    int f = -1;
    for (int i = 0; i < rn->nops; i++)
        if (rn->ops[i].flush && rn->ops[i].log_end <= p)
            f = i;
    return f;
}

static void check_durable(run *rn, vdk_image *img, size_t p, const char *what)
{
    int f = last_flush(rn, p);
    if (f < 0)
        return; /* nothing was promised yet */
    uint8_t *got = read_guest(img, rn->size), *want = rn->snap[f];
    uint8_t *free_ = calloc(1, rn->size); /* bytes later ops may have changed */
    for (int i = f + 1; i < rn->nops; i++)
        if (rn->ops[i].len)
            memset(free_ + rn->ops[i].off, 1, rn->ops[i].len);
    for (uint64_t b = 0; b < rn->size; b++) {
        if (!free_[b] && got[b] != want[b]) {
            vt_failures++;
            fprintf(stderr, "FAIL %s: byte %llu is %02x, flushed %02x (flush op %d)\n", what,
                    (unsigned long long)b, got[b], want[b], f);
            break;
        }
    }
    free(got);
    free(free_);
}

/* The state is in path; p entries of the log are its durable prefix. */
static void verify_state(run *rn, const char *path, size_t p, const char *what)
{
    vdk_error err = {0};
    rn->states++;
    bool dirty = tqed_read_le64(path, 16) & QED_F_NEED_CHECK;
    vdk_image *img = vt_open(path, 0, &err);
    VT_CHECK(img != NULL, "%s: read-only open: %s", what, err.msg);
    if (img && !dirty)
        VT_CHECK(tqed_scan(img, NULL, what) == 0, "%s: need-check clear but not consistent", what);
    vdk_image_close(img, NULL);
    img = vt_open(path, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "%s: repairing open: %s", what, err.msg);
    if (!img)
        return;
    VT_CHECK(tqed_scan(img, NULL, what) == 0, "%s: not consistent after repair", what);
    check_durable(rn, img, p, what);
    vdk_image_close(img, NULL);
    if (vt_have_qemu() && rn->states % 17 == 0) {
        rn->qemu_checked++;
        tqed_qemu_check(path, what);
    }
}

/* Build the state made of the log entries idx[0..n) over the start. */
static void make_state(run *rn, const char *path, const size_t *idx, size_t n)
{
    vdk_error err = {0};
    VT_CHECK(vt_write_file(path, rn->start, rn->start_len) == 0, "state file");
    vdk_file *f;
    VT_OK(vdk_file_open(path, VDK_FILE_RDWR | VDK_FILE_NOLOCK, VDK_CACHE_WRITEBACK, &f, &err),
        &err);
    VT_OK(vdk_record_apply(rn->log, f, idx, n, &err), &err);
    vdk_file_unref(f);
}

static void replay(run *rn)
{
    size_t n = vdk_record_count(rn->log);
    size_t *idx = malloc((n + 1) * sizeof *idx);
    char path[600], what[128];
    snprintf(path, sizeof path, "%s.state", rn->path);
    for (size_t p = 0; p <= n; p++) {
        for (size_t i = 0; i < p; i++)
            idx[i] = i;
        make_state(rn, path, idx, p);
        snprintf(what, sizeof what, "%s prefix %zu/%zu", rn->c->name, p, n);
        verify_state(rn, path, p, what);
    }
    /* Between flushes: the prefix to a flush plus a random subset after it. */
    uint64_t x = rn->c->seed * 31 + 7;
    size_t prev = 0;
    for (size_t j = 0; j < n; j++) {
        struct vdk_record_entry e;
        vdk_record_entry(rn->log, j, &e);
        if (e.kind != VDK_RECORD_FLUSH)
            continue;
        for (int t = 0; t < 4 && j - prev > 2; t++) {
            size_t k = 0;
            for (size_t i = 0; i < prev; i++)
                idx[k++] = i;
            for (size_t i = prev; i < j; i++)
                if (vt_below(&x, 2))
                    idx[k++] = i;
            make_state(rn, path, idx, k);
            snprintf(what, sizeof what, "%s subset %d of (%zu, %zu)", rn->c->name, t, prev, j);
            verify_state(rn, path, prev, what);
        }
        prev = j + 1;
    }
    free(idx);
}

static void run_case(const crash_case *c)
{
    run rn = {.c = c, .size = c->size};
    snprintf(rn.path, sizeof rn.path, "%s", vt_path(c->name));
    vdk_error err = {0};
    const char *kv[] = {"cluster_size", c->cluster_size, "table_size", c->table_size,
                        c->backing ? "backing_file" : NULL, "crash.base", "backing_fmt", "raw",
                        NULL};
    VT_OK(tqed_create(rn.path, c->size, kv, &err), &err);
    size_t len;
    FILE *f = fopen(rn.path, "rb");
    rn.start_len = vt_file_size(rn.path);
    rn.start = malloc(rn.start_len);
    len = f ? fread(rn.start, 1, rn.start_len, f) : 0;
    if (f)
        fclose(f);
    VT_CHECK(len == rn.start_len, "start state");
    rn.log = vdk_record_new();
    hook_path = rn.path;
    hook_log = rn.log;
    vdk_file_set_open_hook(record_hook, NULL);
    vdk_image *img = vt_open(rn.path, VDK_OPEN_RDWR, &err);
    vdk_file_set_open_hook(NULL, NULL);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    if (img) {
        workload(&rn, img);
        op *o = &rn.ops[rn.nops++];
        *o = (op){.flush = true};
        rn.snap[rn.nops - 1] = read_guest(img, rn.size);
        VT_OK(vdk_image_close(img, &err), &err);
        o->log_end = vdk_record_count(rn.log);
        replay(&rn);
    }
    printf("%s: %d crash states, %d checked by qemu-img\n", c->name, rn.states,
           rn.qemu_checked);
    for (int i = 0; i < rn.nops; i++)
        free(rn.snap[i]);
    free(rn.start);
    vdk_record_free(rn.log);
}

int main(void)
{
    vt_init();
    /* The backing file: a pattern, so lost copy-on-write shows. */
    size_t blen = 3 << 20;
    uint8_t *b = malloc(blen);
    vt_fill(b, blen, 42);
    VT_CHECK(vt_write_file(vt_path("crash.base"), b, blen) == 0, "backing file");
    free(b);
    static const crash_case cases[] = {
        {"c4k-backing.qed", "4096", "2", 2 << 20, true, 60, 1},
        {"c64k.qed", "65536", "4", 4 << 20, false, 50, 2},
        {"c16k-backing.qed", "16384", "2", (4 << 20) + 512, true, 50, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i]);
    return vt_finish("test_qed_crash");
}
