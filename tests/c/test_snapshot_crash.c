/*
 * test_snapshot_crash.c - crash safety of snapshot create (with and without
 * a VM state), apply and delete.
 *
 * Each operation runs (open, operation, close) on a file that records every
 * write and flush (core/file-record.c). Crash states are rebuilt from the
 * log: every in-order prefix (a crash after each write), and, for every
 * interval between two flushes, random subsets of its writes in random
 * order on top of everything before it (a disk that reorders writes between
 * flushes). Every state must:
 *   - pass `qemu-img check` and vdk's check with no error (leaked clusters
 *     are allowed);
 *   - open in vdk and hold either the old snapshot list or the new one,
 *     never anything else;
 *   - read, for the current disk and for every snapshot it lists, exactly
 *     what that disk or snapshot held before or after the operation (the
 *     old disk or the new one, never a mix);
 *   - when it lists a snapshot with a VM state, read that whole state back.
 * Prints how many states were checked per operation.
 */
#include "file-test.h"
#include "test_qcow2_util.h"

#define SIZE (2u << 20)
#define STATE_LEN (200u * 1024 + 123)
#define RANDOM_SUBSETS 3

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

/* What a consistent image holds: names of its snapshots (in order), the
 * content of each, and of the current disk. */
typedef struct view {
    int n;
    char names[6][16];
    uint8_t *snap[6];
    uint8_t *cur;
} view;

static uint8_t *state_data;

static int read_view(const char *path, view *v, char *why, size_t whylen)
{
    vdk_error err = {0};
    memset(v, 0, sizeof *v);
    vdk_image *img = vt_open(path, 0, &err);
    if (!img)
        return snprintf(why, whylen, "open: %s", err.msg), -1;
    vdk_snapshot_info *l = NULL;
    size_t n = 0;
    int r = vdk_snapshot_list(img, &l, &n, &err);
    v->cur = malloc(SIZE);
    if (r == 0)
        r = vdk_image_pread(img, v->cur, SIZE, 0, &err);
    vdk_image_close(img, &err);
    for (size_t i = 0; r == 0 && i < n && i < 6; i++) {
        snprintf(v->names[i], sizeof v->names[i], "%s", l[i].name);
        v->snap[i] = malloc(SIZE);
        img = vt_open(path, 0, &err);
        r = img ? vdk_snapshot_load(img, l[i].id, &err) : -1;
        if (r == 0)
            r = vdk_image_pread(img, v->snap[i], SIZE, 0, &err);
        if (r == 0 && l[i].vm_state_size) {
            uint8_t *st = malloc(STATE_LEN);
            r = l[i].vm_state_size == STATE_LEN ? vdk_vmstate_read(img, l[i].id, st, STATE_LEN, 0, &err) : -1;
            if (r == 0 && memcmp(st, state_data, STATE_LEN) != 0)
                r = -1, snprintf(err.msg, sizeof err.msg, "VM state of '%s' reads wrong",
                                 l[i].name);
            free(st);
        }
        if (img)
            vdk_image_close(img, NULL);
        v->n++;
    }
    vdk_snapshot_list_free(l, n);
    if (r < 0)
        snprintf(why, whylen, "read: %s", err.msg);
    return r < 0 ? -1 : 0;
}

static void free_view(view *v)
{
    for (int i = 0; i < 6; i++)
        free(v->snap[i]);
    free(v->cur);
}

static bool same_view(const view *a, const view *b)
{
    if (a->n != b->n || memcmp(a->cur, b->cur, SIZE) != 0)
        return false;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->names[i], b->names[i]) || memcmp(a->snap[i], b->snap[i], SIZE))
            return false;
    return true;
}

typedef struct opctx {
    const char *label;
    const view *before, *after;
    const char *start;
    int states, bad;
    bool lazy;
} opctx;

/* Build the crash state of log entries idx[0..n) and check it. */
static void check_state(opctx *o, const size_t *idx, size_t n, const char *how)
{
    char out[8192], why[600];
    const char *crash = vt_path("crash.qcow2");
    vt_sh(out, sizeof out, "cp '%s' '%s'", o->start, crash);
    vdk_error err = {0};
    vdk_file *t = NULL;
    VT_OK(vdk_file_open(crash, VDK_FILE_RDWR | VDK_FILE_NOLOCK, VDK_CACHE_UNSAFE, &t, &err),
          &err);
    if (t) {
        VT_OK(vdk_record_apply(rec, t, idx, n, &err), &err);
        vdk_file_unref(t);
    }
    o->states++;
    if (o->lazy) { /* a dirty image: repaired when opened read-write (as by QEMU) */
        vdk_image *ri = vt_open(crash, VDK_OPEN_RDWR, &err);
        VT_CHECK(ri != NULL, "%s: crash state (%s): repair on open: %s", o->label, how, err.msg);
        if (ri)
            vdk_image_close(ri, NULL);
    }
    int st = vt_sh(out, sizeof out, "qemu-img check -f qcow2 '%s'", crash);
    if (st != 0 && st != 3) {
        if (getenv("SNAP_KEEP")) {
            char cmd[1024];
            snprintf(cmd, sizeof cmd, "cp '%s' /tmp/snapfail.qcow2", crash);
            if (system(cmd)) {}
            for (size_t i = 0; i < n; i++) {
                struct vdk_record_entry e = {0};
                vdk_record_entry(rec, idx[i], &e);
                fprintf(stderr, "  [%zu] kind %d off 0x%llx len %llu\n", idx[i], e.kind,
                        (unsigned long long)e.off, (unsigned long long)e.len);
            }
        }
        VT_CHECK(0, "%s: crash state (%s, %zu entries) is corrupt:\n%s", o->label, how, n, out);
        o->bad++;
        return;
    }
    /* vdk's own check must agree: no corruption. */
    vdk_image *ci = NULL;
    vdk_open_opts oo = {.format = "qcow2", .flags = VDK_OPEN_CHECK, .cache = VDK_CACHE_WRITEBACK};
    if (vdk_image_open(crash, &oo, &ci, &err) == 0) {
        vdk_check_report rep;
        memset(&rep, 0, sizeof rep);
        int r = vdk_image_check(ci, 0, &rep, &err);
        if (r < 0 || rep.corruptions || rep.check_errors) {
            VT_CHECK(0, "%s: crash state (%s, %zu entries): vdk check finds %llu corruptions "
                        "(%s)", o->label, how, n, (unsigned long long)rep.corruptions,
                     rep.nproblems ? rep.problems[0].message : err.msg);
            o->bad++;
        }
        vdk_check_report_free(&rep);
        vdk_image_close(ci, NULL);
    } else {
        VT_CHECK(0, "%s: crash state (%s): vdk check cannot open it: %s", o->label, how, err.msg);
        o->bad++;
    }
    view v;
    if (read_view(crash, &v, why, sizeof why) < 0) {
        VT_CHECK(0, "%s: crash state (%s, %zu entries): %s", o->label, how, n, why);
        o->bad++;
    } else if (!same_view(&v, o->before) && !same_view(&v, o->after)) {
        VT_CHECK(0, "%s: crash state (%s, %zu entries) is neither the old image nor the new "
                    "one (%d snapshots)", o->label, how, n, v.n);
        o->bad++;
    }
    free_view(&v);
}

static void enumerate(opctx *o, uint64_t seed)
{
    size_t total = vdk_record_count(rec), *idx = malloc((total + 1) * sizeof *idx);
    uint64_t x = seed;
    for (size_t i = 0; i < total; i++)
        idx[i] = i;
    /* In-order prefixes: a crash after each entry. */
    for (size_t k = 0; k <= total && o->bad == 0; k++)
        check_state(o, idx, k, "prefix");
    /* Reordering inside each flush interval. */
    size_t last_flush = 0;
    for (size_t i = 0; i <= total && o->bad == 0; i++) {
        struct vdk_record_entry e = {0};
        bool flush = i < total && vdk_record_entry(rec, i, &e) == 0 && e.kind == VDK_RECORD_FLUSH;
        if (!flush && i < total)
            continue;
        for (int r = 0; r < RANDOM_SUBSETS && i > last_flush + 1 && o->bad == 0; r++) {
            size_t n = 0;
            for (size_t j = 0; j < last_flush; j++)
                idx[n++] = j;
            size_t head = n;
            for (size_t j = last_flush; j < i; j++)
                if (vt_below(&x, 2))
                    idx[n++] = j;
            for (size_t j = n; j > head + 1; j--) {
                size_t k = head + vt_below(&x, j - head), t = idx[j - 1];
                idx[j - 1] = idx[k];
                idx[k] = t;
            }
            check_state(o, idx, n, "reordered");
        }
        last_flush = i + 1;
    }
    free(idx);
}

enum { OP_CREATE, OP_CREATE_STATE, OP_APPLY, OP_DELETE };

static const char *find_id(vdk_image *img, const char *name, char *id)
{
    vdk_snapshot_info *l;
    size_t n;
    vdk_error err = {0};
    id[0] = 0;
    if (vdk_snapshot_list(img, &l, &n, &err) == 0) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(l[i].name, name) == 0)
                snprintf(id, 64, "%s", l[i].id);
        vdk_snapshot_list_free(l, n);
    }
    return id;
}

static void do_op(const char *path, int op, const char *name)
{
    vdk_error err = {0};
    char id[64];
    vdk_image *img = vt_open(path, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "open: %s", err.msg);
    if (!img)
        return;
    vdk_snapshot_params p = {.name = name, .icount = VDK_SNAPSHOT_NO_ICOUNT};
    if (op == OP_CREATE_STATE) {
        VT_OK(vdk_vmstate_write(img, state_data, STATE_LEN, 0, &err), &err);
        p.vm_state_size = STATE_LEN;
    }
    if (op == OP_CREATE || op == OP_CREATE_STATE)
        VT_OK(vdk_snapshot_create(img, &p, &err), &err);
    else if (op == OP_APPLY)
        VT_OK(vdk_snapshot_apply(img, find_id(img, name, id), &err), &err);
    else
        VT_OK(vdk_snapshot_delete(img, find_id(img, name, id), &err), &err);
    VT_OK(vdk_image_close(img, &err), &err);
}

static void run_op(const char *cfg, const char *path, int op, const char *name, uint64_t seed)
{
    static const char *const opname[] = {"create", "create+state", "apply", "delete"};
    char label[96], why[600], out[512];
    snprintf(label, sizeof label, "%s %s %s", cfg, opname[op], name);
    char start[512]; /* vt_path's buffers rotate: keep a copy */
    snprintf(start, sizeof start, "%s", vt_path("start.qcow2"));
    vt_sh(out, sizeof out, "cp '%s' '%s'", path, start);
    view before, after;
    if (read_view(path, &before, why, sizeof why) < 0) {
        VT_CHECK(0, "%s: before: %s", label, why);
        return;
    }
    rec = vdk_record_new();
    vdk_file_set_open_hook(hook, NULL);
    do_op(path, op, name);
    vdk_file_set_open_hook(NULL, NULL);
    if (read_view(path, &after, why, sizeof why) < 0) {
        VT_CHECK(0, "%s: after: %s", label, why);
        free_view(&before);
        vdk_record_free(rec);
        return;
    }
    opctx o = {label, &before, &after, start, 0, 0, strstr(cfg, "lazy") != NULL};
    enumerate(&o, seed);
    printf("  %-32s %4zu writes and flushes, %4d crash states %s\n", label,
           vdk_record_count(rec), o.states, o.bad ? "FAILED" : "ok");
    fflush(stdout);
    vdk_record_free(rec);
    rec = NULL;
    free_view(&before);
    free_view(&after);
}

static void run_cfg(const char *cfg, const char *opts, uint64_t seed)
{
    char out[4096];
    char path[512];
    snprintf(path, sizeof path, "%s", vt_path("c.qcow2"));
    unlink(path);
    int st = vt_sh(out, sizeof out, "qemu-img create -f qcow2 -o %s '%s' %u && "
                                    "qemu-io -c 'write -P 1 0 768k' -c 'write -P 2 1M 256k' '%s' && "
                                    "qemu-img snapshot -c base '%s' && "
                                    "qemu-io -c 'write -P 3 512k 512k' '%s'",
                   opts, path, SIZE, path, path, path);
    VT_CHECK(st == 0, "setup: %s", out);
    run_op(cfg, path, OP_CREATE, "new", seed);
    run_op(cfg, path, OP_CREATE_STATE, "vm", seed + 1);
    vt_sh(out, sizeof out, "qemu-io -c 'write -P 4 0 64k' -c 'write -z 1M 64k' '%s'", path);
    run_op(cfg, path, OP_APPLY, "base", seed + 2);
    run_op(cfg, path, OP_DELETE, "new", seed + 3);
    run_op(cfg, path, OP_DELETE, "vm", seed + 4);
}

int main(int argc, char **argv)
{
    if (!vt_have_qemu()) {
        printf("test_snapshot_crash: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 17;
    state_data = malloc(STATE_LEN);
    vt_fill(state_data, STATE_LEN, seed);
    run_cfg("64k", "cluster_size=65536", seed);
    run_cfg("4k", "cluster_size=4096", seed + 10);
    run_cfg("512 (many tables)", "cluster_size=512", seed + 20);
    run_cfg("4k lazy", "cluster_size=4096,lazy_refcounts=on", seed + 30);
    free(state_data);
    return vt_finish("test_snapshot_crash");
}
