/*
 * test_crash_replay.c - proof of crash consistency: record a workload's
 * file writes and flushes, rebuild the states a crash could leave, and
 * check each of them.
 *
 * Workloads (seeded, random): allocating writes, overwrites, zero writes,
 * discards, compressed writes (qcow2), writes over a backing file, resizes,
 * flushes; for qcow2 with 4 KiB and 64 KiB clusters, with and without lazy
 * refcounts and extended L2 entries, and for QED. The image's file is
 * wrapped in a recording file (core/file-record.c); the log is cut where
 * the process "crashes" (before the close).
 *
 * Crash states: every prefix of the log (a disk that writes in order), and
 * at each flush boundary several seeded random subsets, in random order, of
 * the writes since the previous flush (a disk that reorders and drops them).
 * States with the same bytes are checked once; the counts are of distinct
 * states. For each state:
 *  - before any recovery: QED without the need-check bit, and qcow2 with
 *    lazy refcounts without the dirty bit, must be fully consistent (no
 *    corruption, no leak); any other qcow2 state must have no corruption;
 *  - the image opens read-write, which runs its own recovery (QED's check
 *    of a need-check image, the refcount rebuild of a dirty lazy image);
 *  - then vdk check finds no corruption, and no leak either where recovery
 *    ran (one pass must be enough);
 *  - every guest byte that no operation after the last completed flush
 *    touched reads as it did at that flush;
 *  - a sample also passes `qemu-img check`.
 *
 * Repairs are recorded and replayed the same way: a damaged image (leaks,
 * refcounts too low or too high, COPIED flags, a cluster referenced twice,
 * a dirty lazy image) is repaired with check -r all under the recorder; in
 * every crash state of the repair the image must open, show no more
 * corruptions than before, hold the same guest data, and one `check -r all`
 * must then leave it clean.
 *
 * Usage: test_crash_replay [--long N] [--seed S] [--only NAME] [--qemu-every K]
 * Without --long the run is bounded for CI (sampled prefixes). --long N
 * checks every prefix and N reorderings per flush boundary, and repeats
 * workloads until each format has reached the --states target.
 */
#include "test_crash_util.h"

#define MAX_OPS 400
#define L2_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define MAX_FLUSHES 128

typedef struct cfg {
    const char *name;
    const char *format;
    const char *cluster;
    bool lazy, extl2, backing, v2;
    int ops;
} cfg;

static const cfg CONFIGS[] = {
    {"qcow2-4k", "qcow2", "4096", false, false, false, false, 60},
    {"qcow2-64k", "qcow2", "65536", false, false, false, false, 60},
    {"qcow2-4k-lazy", "qcow2", "4096", true, false, false, false, 60},
    {"qcow2-64k-lazy", "qcow2", "65536", true, false, false, false, 60},
    {"qcow2-64k-extl2", "qcow2", "65536", false, true, false, false, 60},
    {"qcow2-64k-extl2-lazy", "qcow2", "65536", true, true, false, false, 60},
    {"qcow2-4k-backing", "qcow2", "4096", false, false, true, false, 60},
    {"qcow2-64k-lazy-backing", "qcow2", "65536", true, false, true, false, 60},
    {"qcow2-v2-64k", "qcow2", "65536", false, false, false, true, 50},
    {"qed-4k", "qed", "4096", false, false, false, false, 60},
    {"qed-64k", "qed", "65536", false, false, false, false, 60},
    {"qed-4k-backing", "qed", "4096", false, false, true, false, 60},
};
#define NCONFIGS (sizeof CONFIGS / sizeof CONFIGS[0])

#define SIZE (UINT64_C(4) << 20)
#define MAX_SIZE (UINT64_C(6) << 20)

typedef struct op {
    size_t log_before;
    uint64_t off, len;
} op;

typedef struct flushpt {
    size_t log_after; /* log entries when the image flush returned */
    uint64_t size;
    uint8_t *oracle;
} flushpt;

typedef struct run {
    const cfg *c;
    uint64_t cs;
    vdk_record *log;
    size_t crash_at;
    op ops[MAX_OPS];
    int nops;
    flushpt fl[MAX_FLUSHES];
    int nfl;
    uint8_t *cur;
    uint64_t size;
    uint8_t *initial;   /* guest content before the workload */
    uint8_t *start;     /* the image file before the workload */
    size_t start_len;
    char image[512], state[512];
} run;

typedef struct stats {
    uint64_t states, distinct, qemu_checked, failures;
    uint64_t need_check_inconsistent; /* QED: inconsistent with the bit clear */
    uint64_t second_pass;             /* lazy/QED: leaks left after recovery */
    uint64_t with_flag;               /* states with need-check / dirty set */
} stats;

static struct {
    bool long_run;
    int reorders;
    uint64_t seed;
    const char *only;
    int qemu_every;
    uint64_t target;
    uint64_t round; /* first round (each round has its own seeds) */
} opt = {false, 3, 1, NULL, 40, 0, 0};

static tc_set seen;
static stats per_format[2], per_format_repair[2]; /* qcow2, qed */

/* ---------------------------------------------------------------- recording */

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

static vdk_image *open_image(const char *path, unsigned flags, vdk_error *err)
{
    vdk_open_opts o = {.format = NULL, .flags = flags, .cache = VDK_CACHE_WRITEBACK};
    vdk_image *img = NULL;
    return vdk_image_open(path, &o, &img, err) < 0 ? NULL : img;
}

static vdk_image *open_recorded(const char *path, vdk_record *log, unsigned flags,
                                vdk_error *err)
{
    hook_path = path;
    hook_log = log;
    vdk_file_set_open_hook(record_hook, NULL);
    vdk_image *img = open_image(path, flags, err);
    vdk_file_set_open_hook(NULL, NULL);
    hook_path = NULL;
    return img;
}

/* ---------------------------------------------------------------- workload */

static void refresh(run *w, vdk_image *img, uint64_t off, uint64_t len)
{
    vdk_error err = {0};
    if (off >= w->size)
        return;
    if (len > w->size - off)
        len = w->size - off;
    VT_OK(vdk_image_pread(img, w->cur + off, len, off, &err), &err);
}

static void one_op(run *w, vdk_image *img, uint64_t *x, uint8_t *buf)
{
    vdk_error err = {0};
    uint64_t cs = w->cs, k = tc_below(x, 20);
    uint64_t off = tc_below(x, w->size), len = 1 + tc_below(x, 3 * cs);
    bool qcow2 = strcmp(w->c->format, "qcow2") == 0;
    if (tc_below(x, 3) == 0)
        off -= off % cs; /* aligned: whole-cluster paths */
    if (len > w->size - off)
        len = w->size - off;
    op *o = &w->ops[w->nops++];
    o->log_before = vdk_record_count(w->log);
    o->off = off;
    o->len = len;
    if (k < 11) {
        tc_fill(buf, len, tc_rand(x));
        VT_OK(vdk_image_pwrite(img, buf, len, off, &err), &err);
    } else if (k < 13) {
        unsigned f = tc_below(x, 2) ? VDK_ZERO_MAY_UNMAP : 0;
        VT_OK(vdk_image_write_zeroes(img, len, off, f, &err), &err);
    } else if (k < 15) {
        VT_OK(vdk_image_discard(img, len, off, &err), &err);
    } else if (k < 18 && qcow2 && !w->c->v2) {
        off -= off % cs;
        len = off + cs <= w->size ? cs : w->size - off;
        o->off = off;
        o->len = len;
        tc_fill(buf, len, tc_rand(x));
        if (tc_below(x, 2))
            memset(buf, 0x5a, len / 2); /* compressible */
        VT_OK(vdk_image_pwrite_compressed(img, buf, len, off, &err), &err);
    } else if (k < 19 && w->size + 8 * cs <= MAX_SIZE) {
        uint64_t ns = w->size + cs * (1 + tc_below(x, 8));
        o->off = w->size;
        o->len = ns - w->size;
        VT_OK(vdk_image_resize(img, ns, VDK_PREALLOC_OFF, 0, &err), &err);
        w->size = vdk_image_size(img);
        return refresh(w, img, o->off, o->len);
    } else {
        tc_fill(buf, len, tc_rand(x));
        VT_OK(vdk_image_pwrite(img, buf, len, off, &err), &err);
    }
    refresh(w, img, off, len);
}

static void record_flush(run *w)
{
    if (w->nfl >= MAX_FLUSHES)
        return;
    flushpt *f = &w->fl[w->nfl++];
    f->log_after = vdk_record_count(w->log);
    f->size = w->size;
    f->oracle = malloc(MAX_SIZE);
    memcpy(f->oracle, w->cur, MAX_SIZE);
}

static int make_image(run *w, uint64_t seed)
{
    const cfg *c = w->c;
    vdk_error err = {0};
    char back[512];
    snprintf(back, sizeof back, "%s", vt_path("backing.raw"));
    vdk_kv kv[8];
    size_t n = 0;
    kv[n++] = (vdk_kv){"cluster_size", c->cluster};
    if (strcmp(c->format, "qcow2") == 0) {
        kv[n++] = (vdk_kv){"lazy_refcounts", c->lazy ? "on" : "off"};
        if (c->extl2)
            kv[n++] = (vdk_kv){"extended_l2", "on"};
        if (c->v2)
            kv[n++] = (vdk_kv){"compat", "0.10"};
    }
    memset(w->cur, 0, MAX_SIZE);
    if (c->backing) {
        tc_fill(w->cur, SIZE, seed ^ 0xb5);
        if (vt_write_file(back, w->cur, SIZE) < 0)
            return -EIO;
        kv[n++] = (vdk_kv){"backing_file", back};
        kv[n++] = (vdk_kv){"backing_fmt", "raw"};
    }
    int r = vdk_image_create(w->image, c->format, SIZE, kv, n, &err);
    VT_OK(r, &err);
    return r;
}

/* Run the workload; the log up to crash_at is what a crash leaves. */
static int record_workload(run *w, uint64_t seed)
{
    vdk_error err = {0};
    if (make_image(w, seed) < 0)
        return -1;
    w->size = SIZE;
    memcpy(w->initial, w->cur, MAX_SIZE);
    w->start = vt_read_file(w->image, &w->start_len);
    w->log = vdk_record_new();
    vdk_image *img = open_recorded(w->image, w->log, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "%s: open for the workload: %s", w->c->name, err.msg);
    if (!img || !w->start)
        return -1;
    uint8_t *buf = malloc(4 * w->cs);
    uint64_t x = seed;
    while (w->nops < w->c->ops && w->nops < MAX_OPS) {
        one_op(w, img, &x, buf);
        if (tc_below(&x, 5) == 0 && w->nfl < MAX_FLUSHES) {
            VT_OK(vdk_image_flush(img, &err), &err);
            record_flush(w);
        }
    }
    free(buf);
    w->crash_at = vdk_record_count(w->log);
    vdk_image_close(img, &err);
    return 0;
}

/* ---------------------------------------------------------------- one state */

/* Write the state made of log entries idx[0..n) to w->state. */
static int build_state(run *w, const vdk_record *log, const uint8_t *start, size_t start_len,
                       const size_t *idx, size_t n)
{
    vdk_error err = {0};
    if (vt_write_file(w->state, start, start_len) < 0)
        return -EIO;
    vdk_file *f = NULL;
    int r = vdk_file_open(w->state, VDK_FILE_RDWR | VDK_FILE_NOLOCK, VDK_CACHE_UNSAFE, &f, &err);
    if (r == 0) {
        r = vdk_record_apply(log, f, idx, n, &err);
        vdk_file_unref(f);
    }
    VT_OK(r, &err);
    return r;
}

static bool read_flag(const run *w, bool *flag)
{
    uint8_t h[128];
    int fd = open(w->state, O_RDONLY);
    ssize_t n = fd >= 0 ? pread(fd, h, sizeof h, 0) : -1;
    if (fd >= 0)
        close(fd);
    if (n < 104)
        return false;
    if (strcmp(w->c->format, "qed") == 0)
        *flag = h[16] & 2; /* need check */
    else
        *flag = !w->c->v2 && (h[79] & 1); /* dirty (big-endian u64 at 72) */
    return true;
}

typedef struct verdict {
    uint64_t corruptions, leaks, errors;
    uint64_t benign; /* COPIED flags missing where the refcount is 1 */
    bool ok;
} verdict;

/* A COPIED flag missing on an entry whose cluster has refcount 1 only
 * costs a needless copy on the next write; every other corruption can
 * lose data. */
static bool benign(const char *msg)
{
    const char *p = strstr(msg, "_entry=");
    unsigned long long e;
    if (!strstr(msg, "OFLAG_COPIED") || !p || !strstr(msg, " refcount=1") ||
        strstr(msg, " refcount=1") != strstr(msg, " refcount=") || sscanf(p + 7, "%llx", &e) != 1)
        return false;
    return strcmp(strstr(msg, " refcount="), " refcount=1") == 0 && !(e >> 63);
}

static verdict check_image(const char *path, unsigned flags, unsigned mode, const char *ctx)
{
    verdict v = {0};
    vdk_error err = {0};
    vdk_image *img = open_image(path, flags, &err);
    if (!img) {
        VT_CHECK(0, "%s: open: %s", ctx, err.msg);
        return v;
    }
    vdk_check_report rep;
    int r = vdk_image_check(img, mode, &rep, &err);
    VT_CHECK(r == 0, "%s: check: %s", ctx, err.msg);
    v.ok = r == 0;
    v.corruptions = rep.corruptions;
    v.leaks = rep.leaks;
    v.errors = rep.check_errors;
    for (size_t i = 0; i < rep.nproblems; i++)
        v.benign += benign(rep.problems[i].message);
    if (getenv("TC_DEBUG") && r == 0 && (rep.corruptions || rep.check_errors) && mode == 0)
        for (size_t i = 0; i < rep.nproblems && i < 5; i++)
            fprintf(stderr, "    %s: %s\n", ctx, rep.problems[i].message);
    vdk_check_report_free(&rep);
    VT_OK(vdk_image_close(img, &err), &err);
    return v;
}

/* The last image flush all of whose entries the state holds. */
static const flushpt *durable(const run *w, size_t full_prefix)
{
    const flushpt *best = NULL;
    for (int k = 0; k < w->nfl; k++)
        if (w->fl[k].log_after <= full_prefix)
            best = &w->fl[k];
    return best;
}

static void check_data(run *w, size_t full_prefix, const char *ctx)
{
    const flushpt *f = durable(w, full_prefix);
    const uint8_t *want = f ? f->oracle : w->initial;
    uint64_t wsize = f ? f->size : SIZE;
    size_t since = f ? f->log_after : 0;
    uint8_t *care = malloc(MAX_SIZE);
    memset(care, 1, MAX_SIZE);
    for (int i = 0; i < w->nops; i++)
        if (w->ops[i].log_before >= since) /* after that flush: old or new bytes */
            memset(care + w->ops[i].off, 0, w->ops[i].len);
    vdk_error err = {0};
    vdk_image *img = open_image(w->state, 0, &err);
    VT_CHECK(img != NULL, "%s: read-only open: %s", ctx, err.msg);
    if (img) {
        uint64_t size = vdk_image_size(img), n = size < wsize ? size : wsize;
        uint8_t *got = malloc(MAX_SIZE);
        VT_OK(vdk_image_pread(img, got, n, 0, &err), &err);
        for (uint64_t i = 0; i < n; i++) {
            if (care[i] && got[i] != want[i]) {
                VT_CHECK(0, "%s: durable byte %llu lost (flushed prefix %zu): 0x%02x, not 0x%02x", ctx,
                         (unsigned long long)i, since, got[i], want[i]);
                if (getenv("TC_DEBUG"))
                    for (size_t j = 0; j < 40 && j < w->crash_at; j++) {
                        struct vdk_record_entry e;
                        vdk_record_entry(w->log, j, &e);
                        fprintf(stderr, "   entry %zu kind %d [%llu, +%llu)\n", j, e.kind,
                                (unsigned long long)e.off, (unsigned long long)e.len);
                    }
                if (getenv("TC_DEBUG"))
                    for (int j = 0; j < w->nops; j++)
                        fprintf(stderr, "   op %d log %zu [%llu, +%llu)%s\n", j, w->ops[j].log_before,
                                (unsigned long long)w->ops[j].off, (unsigned long long)w->ops[j].len,
                                w->ops[j].off <= i && i < w->ops[j].off + w->ops[j].len ? " <==" : "");
                break;
            }
        }
        free(got);
        vdk_image_close(img, &err);
    }
    free(care);
}

static void qemu_check(const run *w, bool clean, const char *ctx)
{
    char out[4096];
    int st = vt_sh(out, sizeof out, "qemu-img check -f %s '%s'", w->c->format, w->state);
    VT_CHECK(st == 0 || (!clean && st == 3), "%s: qemu-img check says %d: %s", ctx, st, out);
}

/* Check one crash state (full_prefix: log entries all present). */
static void verify_state(run *w, stats *st, size_t full_prefix, const char *ctx)
{
    bool qed = strcmp(w->c->format, "qed") == 0, flag = false;
    int before = vt_failures;
    if (!read_flag(w, &flag)) {
        VT_CHECK(0, "%s: header unreadable", ctx);
        return;
    }
    st->with_flag += flag;
    /* Before recovery. */
    verdict v = check_image(w->state, VDK_OPEN_CHECK, 0, ctx);
    bool strict = (qed || w->c->lazy) && !flag, relaxed = (qed || w->c->lazy) && flag;
    if (v.ok && !relaxed && (v.corruptions || v.errors || (strict && v.leaks))) {
        VT_CHECK(0, "%s: before recovery (flag %d): %llu corruptions, %llu leaks, %llu errors",
                 ctx, flag, (unsigned long long)v.corruptions, (unsigned long long)v.leaks,
                 (unsigned long long)v.errors);
        if (qed && !flag)
            st->need_check_inconsistent++;
    }
    /* Recovery: a read-write open. */
    vdk_error err = {0};
    vdk_image *img = open_image(w->state, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "%s: read-write open: %s", ctx, err.msg);
    if (img)
        VT_OK(vdk_image_close(img, &err), &err);
    v = check_image(w->state, 0, 0, ctx);
    bool recovered = flag && (qed || w->c->lazy);
    if (v.ok && (v.corruptions || v.errors || (recovered && v.leaks))) {
        VT_CHECK(0, "%s: after recovery: %llu corruptions, %llu leaks, %llu errors", ctx,
                 (unsigned long long)v.corruptions, (unsigned long long)v.leaks,
                 (unsigned long long)v.errors);
        if (recovered && v.leaks)
            st->second_pass++;
    }
    check_data(w, full_prefix, ctx);
    if (opt.qemu_every && st->distinct % (uint64_t)opt.qemu_every == 0) {
        qemu_check(w, recovered, ctx);
        st->qemu_checked++;
    }
    if (vt_failures != before)
        st->failures++;
}

/* Build, dedupe and verify one state. */
static void one_state(run *w, stats *st, const size_t *idx, size_t n, size_t full_prefix,
                      const char *what)
{
    if (build_state(w, w->log, w->start, w->start_len, idx, n) < 0)
        return;
    size_t len;
    uint8_t *b = vt_read_file(w->state, &len);
    bool fresh = b && tc_set_add(&seen, tc_hash(b, len) ^ (uintptr_t)w->c);
    free(b);
    st->states++;
    if (!fresh)
        return;
    st->distinct++;
    char ctx[160];
    snprintf(ctx, sizeof ctx, "%s %s (%zu entries, %zu of %zu in order)", w->c->name, what, n,
             full_prefix, w->crash_at);
    if (getenv("TC_KEEP")) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "cp '%s' '%s/state-%zu.img'; cp %s/backing.raw %s/ 2>/dev/null",
                 w->state, getenv("TC_KEEP"), n, vt_dir, getenv("TC_KEEP"));
        if (system(cmd) != 0)
            fprintf(stderr, "keep failed\n");
    }
    verify_state(w, st, full_prefix, ctx);
}

/* ---------------------------------------------------------------- crash states */

static void shuffle(size_t *v, size_t n, uint64_t *x)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = tc_below(x, i), t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

static void replay(run *w, stats *st, uint64_t seed)
{
    size_t n = w->crash_at, *idx = malloc((n + 1) * sizeof *idx);
    uint64_t x = seed * 7 + 3;
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    /* Every prefix (CI: a sample). */
    for (size_t p = 0; p <= n && vt_failures < 20; p++)
        if (opt.long_run || p == n || tc_below(&x, 6) == 0)
            one_state(w, st, idx, p, p, "prefix");
    /* Reorderings between flushes. */
    size_t prev = 0;
    for (size_t i = 0; i <= n && vt_failures < 20; i++) {
        struct vdk_record_entry e = {0};
        bool flush = i < n && vdk_record_entry(w->log, i, &e) == 0 && e.kind == VDK_RECORD_FLUSH;
        if (!flush && i != n)
            continue;
        size_t span = i - prev;
        for (int k = 0; span > 1 && k < opt.reorders; k++) {
            size_t m = prev;
            for (size_t j = 0; j < prev; j++)
                idx[j] = j;
            for (size_t j = prev; j < i; j++)
                if (tc_below(&x, 2))
                    idx[m++] = j;
            shuffle(idx + prev, m - prev, &x);
            one_state(w, st, idx, m, prev, "reordered");
        }
        prev = i + 1;
    }
    free(idx);
}

static void run_free(run *w)
{
    for (int k = 0; k < w->nfl; k++)
        free(w->fl[k].oracle);
    vdk_record_free(w->log);
    free(w->cur);
    free(w->initial);
    free(w->start);
}

static void run_config(const cfg *c, uint64_t seed, stats *st)
{
    run *w = calloc(1, sizeof *w);
    w->c = c;
    w->cs = strtoull(c->cluster, NULL, 10);
    w->cur = calloc(1, MAX_SIZE);
    w->initial = calloc(1, MAX_SIZE);
    snprintf(w->image, sizeof w->image, "%s/%s.img", vt_dir, c->name);
    snprintf(w->state, sizeof w->state, "%s/%s.state", vt_dir, c->name);
    unlink(w->image);
    if (record_workload(w, seed) == 0)
        replay(w, st, seed);
    run_free(w);
    free(w);
}

/* ---------------------------------------------------------------- repair replay */

/* Guest content of an image (read-only, check mode). */
static uint8_t *guest(const char *path, uint64_t *size)
{
    vdk_error err = {0};
    vdk_image *img = open_image(path, VDK_OPEN_CHECK, &err);
    VT_CHECK(img != NULL, "open %s: %s", path, err.msg);
    if (!img)
        return NULL;
    *size = vdk_image_size(img);
    uint8_t *b = malloc(*size);
    VT_OK(vdk_image_pread(img, b, *size, 0, &err), &err);
    vdk_image_close(img, &err);
    return b;
}

/* Damage a qcow2 image by patching bytes: kind 0 leaves it as is. */
static void damage_qcow2(const char *path, int kind)
{
    size_t len;
    uint8_t *b = vt_read_file(path, &len);
    if (!b || len < 4096)
        return free(b);
    uint64_t cs = UINT64_C(1) << vdk_be32(b + 20), l1 = vdk_be64(b + 40), rt = vdk_be64(b + 48);
    uint64_t l2 = vdk_be64(b + l1) & L2_OFFSET_MASK, rb = vdk_be64(b + rt);
    unsigned step = (b[79] & 0x10) ? 16 : 8; /* extended L2 */
    uint64_t e0 = l2 ? vdk_be64(b + l2) : 0, h0 = e0 & L2_OFFSET_MASK;
    uint64_t order = vdk_be32(b + 96), k = h0 / cs, last = len / cs;
    /* A normal entry (not compressed) with its refcount in the first block. */
    if (!l2 || !h0 || (e0 & (UINT64_C(1) << 62)) || l2 + 2 * step > len || rb + cs > len ||
        h0 + cs > len || 2 * k >= cs || 2 * last >= cs) {
        free(b);
        return;
    }
    if (kind == 1 && order == 4) /* refcount too high: a leak and a COPIED error */
        vdk_put_be16(b + rb + 2 * k, 2);
    else if (kind == 2) /* a cluster referenced twice */
        vdk_put_be64(b + l2 + step, e0);
    else if (kind == 3) /* COPIED flag cleared */
        vdk_put_be64(b + l2, e0 & ~(UINT64_C(1) << 63));
    else if (kind == 4 && order == 4) /* a leaked cluster at the end */
        vdk_put_be16(b + rb + 2 * (last - 1), 1);
    vt_write_file(path, b, len);
    free(b);
}

static void repair_state(run *w, stats *st, const uint8_t *want, uint64_t wsize,
                         verdict before, const size_t *idx, size_t n, const char *ctx)
{
    if (build_state(w, w->log, w->start, w->start_len, idx, n) < 0)
        return;
    size_t len;
    uint8_t *b = vt_read_file(w->state, &len);
    bool fresh = b && tc_set_add(&seen, tc_hash(b, len) ^ 0x5eed ^ (uintptr_t)w->c);
    free(b);
    st->states++;
    if (!fresh)
        return;
    st->distinct++;
    int f0 = vt_failures;
    verdict v = check_image(w->state, VDK_OPEN_CHECK, 0, ctx);
    VT_CHECK(v.ok && v.errors == 0 && v.corruptions - v.benign <= before.corruptions - before.benign,
             "%s: worse than before the repair: %llu corruptions (%llu harmless; before %llu, %llu "
             "harmless), %llu errors",
             ctx, (unsigned long long)v.corruptions, (unsigned long long)v.benign,
             (unsigned long long)before.corruptions, (unsigned long long)before.benign,
             (unsigned long long)v.errors);
    uint64_t size;
    uint8_t *g = guest(w->state, &size);
    VT_CHECK(g && size == wsize && memcmp(g, want, size) == 0, "%s: guest data changed", ctx);
    free(g);
    verdict r = check_image(w->state, VDK_OPEN_RDWR | VDK_OPEN_CHECK,
                            VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS, ctx);
    verdict a = check_image(w->state, VDK_OPEN_CHECK, 0, ctx);
    VT_CHECK(r.ok && a.ok && a.corruptions == 0 && a.leaks == 0 && a.errors == 0,
             "%s: one repair does not make it clean: %llu corruptions, %llu leaks", ctx,
             (unsigned long long)a.corruptions, (unsigned long long)a.leaks);
    if (vt_failures != f0)
        st->failures++;
}

/* Record `check -r all` of the damaged image at w->image and replay it. */
static void replay_repair(run *w, stats *st, uint64_t seed, const char *what)
{
    vdk_error err = {0};
    uint64_t wsize;
    uint8_t *want = guest(w->image, &wsize);
    verdict before = check_image(w->image, VDK_OPEN_CHECK, 0, what);
    free(w->start);
    w->start = vt_read_file(w->image, &w->start_len);
    w->log = vdk_record_new();
    vdk_image *img = open_recorded(w->image, w->log, VDK_OPEN_RDWR | VDK_OPEN_CHECK, &err);
    VT_CHECK(img != NULL, "%s: open for repair: %s", what, err.msg);
    if (img && want && w->start) {
        vdk_check_report rep;
        VT_OK(vdk_image_check(img, VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS, &rep, &err), &err);
        vdk_check_report_free(&rep);
        VT_OK(vdk_image_close(img, &err), &err);
        w->crash_at = vdk_record_count(w->log);
        size_t n = w->crash_at, *idx = malloc((n + 1) * sizeof *idx);
        uint64_t x = seed;
        for (size_t i = 0; i < n; i++)
            idx[i] = i;
        char ctx[200];
        for (size_t p = 0; p <= n; p++) {
            snprintf(ctx, sizeof ctx, "%s repair prefix %zu/%zu", what, p, n);
            repair_state(w, st, want, wsize, before, idx, p, ctx);
        }
        /* Between flushes: any subset of the writes, in any order. */
        size_t prev = 0;
        for (size_t i = 0; i <= n; i++) {
            struct vdk_record_entry e = {0};
            if (i < n && (vdk_record_entry(w->log, i, &e) < 0 || e.kind != VDK_RECORD_FLUSH))
                continue;
            for (int k = 0; i - prev > 1 && k < 2 * opt.reorders; k++) {
                size_t m = prev;
                for (size_t j = 0; j < prev; j++)
                    idx[j] = j;
                for (size_t j = prev; j < i; j++)
                    if (tc_below(&x, 2))
                        idx[m++] = j;
                shuffle(idx + prev, m - prev, &x);
                snprintf(ctx, sizeof ctx, "%s repair reordered after %zu (%zu entries)", what,
                         prev, m);
                repair_state(w, st, want, wsize, before, idx, m, ctx);
            }
            prev = i + 1;
        }
        free(idx);
    } else if (img) {
        vdk_image_close(img, &err);
    }
    free(want);
    vdk_record_free(w->log);
    w->log = NULL;
}

/* Damaged images, each repaired under the recorder. */
static void run_repairs(const cfg *c, uint64_t seed, stats *st)
{
    bool qed = strcmp(c->format, "qed") == 0;
    for (int kind = qed ? 0 : 1; kind <= 5; kind++) {
        run *w = calloc(1, sizeof *w);
        w->c = c;
        w->cs = strtoull(c->cluster, NULL, 10);
        w->cur = calloc(1, MAX_SIZE);
        w->initial = calloc(1, MAX_SIZE);
        snprintf(w->image, sizeof w->image, "%s/%s-r.img", vt_dir, c->name);
        snprintf(w->state, sizeof w->state, "%s/%s-r.state", vt_dir, c->name);
        unlink(w->image);
        /* A workload, cut before its close: a crash state to start from. */
        if (record_workload(w, seed + (uint64_t)kind) == 0) {
            if (kind == 5 || qed) { /* the raw crash state (dirty or need-check) */
                size_t *idx = malloc((w->crash_at + 1) * sizeof *idx);
                for (size_t i = 0; i < w->crash_at; i++)
                    idx[i] = i;
                build_state(w, w->log, w->start, w->start_len, idx, w->crash_at);
                free(idx);
                rename(w->state, w->image);
            } else {
                damage_qcow2(w->image, kind);
            }
            for (int k = 0; k < w->nfl; k++)
                free(w->fl[k].oracle);
            w->nfl = 0;
            vdk_record_free(w->log);
            w->log = NULL;
            char what[96];
            snprintf(what, sizeof what, "%s damage %d", c->name, kind);
            replay_repair(w, st, seed, what);
        }
        run_free(w);
        free(w);
        if (qed)
            break;
    }
}

/* ---------------------------------------------------------------- main */

static void report(const char *name, const stats *s)
{
    printf("  %-24s %7llu states, %7llu distinct, %5llu with the flag, %4llu by qemu-img, "
           "%llu failed",
           name, (unsigned long long)s->states, (unsigned long long)s->distinct,
           (unsigned long long)s->with_flag, (unsigned long long)s->qemu_checked,
           (unsigned long long)s->failures);
    if (s->need_check_inconsistent || s->second_pass)
        printf(" (%llu inconsistent without the flag, %llu needing a second pass)",
               (unsigned long long)s->need_check_inconsistent,
               (unsigned long long)s->second_pass);
    printf("\n");
    fflush(stdout);
}

static void add(stats *t, const stats *s)
{
    t->states += s->states;
    t->distinct += s->distinct;
    t->qemu_checked += s->qemu_checked;
    t->failures += s->failures;
    t->need_check_inconsistent += s->need_check_inconsistent;
    t->second_pass += s->second_pass;
    t->with_flag += s->with_flag;
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--long") && i + 1 < argc) {
            opt.long_run = true;
            opt.reorders = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            opt.seed = strtoull(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            opt.only = argv[++i];
        } else if (!strcmp(argv[i], "--qemu-every") && i + 1 < argc) {
            opt.qemu_every = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--round") && i + 1 < argc) {
            opt.round = strtoull(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "--states") && i + 1 < argc) {
            opt.target = strtoull(argv[++i], NULL, 0);
        }
    }
}

/* Whether a selected format still has fewer distinct states than asked. */
static bool below_target(void)
{
    bool want_qcow2 = false, want_qed = false;
    for (size_t i = 0; i < NCONFIGS; i++) {
        if (opt.only && !strstr(CONFIGS[i].name, opt.only))
            continue;
        if (strcmp(CONFIGS[i].format, "qed") == 0)
            want_qed = true;
        else
            want_qcow2 = true;
    }
    return (want_qcow2 && per_format[0].distinct < opt.target) ||
           (want_qed && per_format[1].distinct < opt.target);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    if (vt_sh(NULL, 0, "command -v qemu-img >/dev/null") != 0)
        opt.qemu_every = 0;
    vt_init();
    printf("crash replay (seed %llu, %s)\n", (unsigned long long)opt.seed,
           opt.long_run ? "long" : "bounded");
    uint64_t round = opt.round;
    do {
        for (size_t i = 0; i < NCONFIGS && vt_failures < 20; i++) {
            const cfg *c = &CONFIGS[i];
            if (opt.only && !strstr(c->name, opt.only))
                continue;
            stats s = {0}, r = {0};
            uint64_t seed = opt.seed * 1000 + i * 17 + round * 7919;
            run_config(c, seed, &s);
            run_repairs(c, seed + 500, &r);
            char name[64];
            snprintf(name, sizeof name, "%s%s", c->name, round ? "+" : "");
            report(name, &s);
            snprintf(name, sizeof name, "%s repair", c->name);
            report(name, &r);
            add(&per_format[strcmp(c->format, "qed") == 0], &s);
            add(&per_format_repair[strcmp(c->format, "qed") == 0], &r);
        }
        round++;
    } while (opt.target && vt_failures == 0 && below_target());
    report("total qcow2", &per_format[0]);
    report("total qcow2 repairs", &per_format_repair[0]);
    report("total qed", &per_format[1]);
    report("total qed repairs", &per_format_repair[1]);
    return vt_finish("test_crash_replay");
}
