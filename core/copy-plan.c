/*
 * copy-plan.c - planning copies and compares from block status.
 *
 * The planner runs on a worker, one batch at a time, and resumes where it
 * stopped. For a copy it walks the sources in order with
 * vdk_image_block_status, gives each extent a class (data to read, zeros,
 * or nothing to do), and feeds the classes to the coalescer, which aligns
 * them to the engine's block size (the larger of the target's cluster size
 * and -S) and merges equal neighbours. Unallocated and zero ranges are never
 * read. For a compare it walks both images side by side.
 *
 * Classes of a copy (see copy-int.h): a zero extent is "skip" when the
 * target already reads zeros there (a fresh target without backing,
 * --target-is-zero, or a backed target whose own status says zero), "zero
 * data" under -S 0, else "zero". A range the source takes from a backing
 * file is "skip" under VDK_COPY_TOP_ONLY, and also when that backing file is
 * the fresh target's own backing file.
 */
#include <string.h>

#include "copy-int.h"

/* Largest range asked of block status at once. */
#define QUERY_MAX ((uint64_t)1 << 30)
/* A batch ends after this much data has been planned. */
#define PLAN_DATA_BATCH ((uint64_t)256 << 20)

/* ---------------------------------------------------------------- coalescer */

void copy_co_init(copy_coalescer *c, uint64_t g, void (*emit)(void *, const copy_piece *),
                  void *ctx)
{
    memset(c, 0, sizeof *c);
    c->g = g;
    c->emit = emit;
    c->ctx = ctx;
}

static void emit_merge(copy_coalescer *c, int cls, uint64_t off, uint64_t len)
{
    copy_piece *p = &c->pend;
    if (p->len && p->cls == cls && p->off + p->len == off) {
        p->len += len;
        return;
    }
    if (p->len)
        c->emit(c->ctx, p);
    p->off = off;
    p->len = len;
    p->cls = (uint8_t)cls;
}

static int combine(int a, int b)
{
    return a == CL_NONE ? b : a == b ? a : CL_DATA;
}

void copy_co_feed(copy_coalescer *c, int cls, uint64_t off, uint64_t len)
{
    uint64_t end = off + len, g = c->g;
    while (off < end) {
        uint64_t bstart = off - off % g, bend = bstart + g;
        uint64_t stop = end < bend ? end : bend;
        if (c->acc == CL_NONE && off == bstart && end >= bend) {
            uint64_t n = (end - off) / g * g; /* whole blocks */
            emit_merge(c, cls, off, n);
            off += n;
            continue;
        }
        if (c->acc == CL_NONE)
            c->acc_start = off;
        c->acc = combine(c->acc, cls);
        c->acc_end = stop;
        off = stop;
        if (stop == bend) {
            emit_merge(c, c->acc, c->acc_start, bend - c->acc_start);
            c->acc = CL_NONE;
        }
    }
}

void copy_co_flush(copy_coalescer *c)
{
    if (c->pend.len)
        c->emit(c->ctx, &c->pend);
    c->pend.len = 0;
}

void copy_co_finish(copy_coalescer *c)
{
    if (c->acc != CL_NONE)
        emit_merge(c, c->acc, c->acc_start, c->acc_end - c->acc_start);
    c->acc = CL_NONE;
    copy_co_flush(c);
}

/* ---------------------------------------------------------------- batches */

static void push_piece(copy_plan *pl, int cls, uint64_t off, uint64_t len)
{
    if (pl->nout) {
        copy_piece *last = &pl->out[pl->nout - 1];
        if (last->cls == cls && last->off + last->len == off) {
            last->len += len;
            if (cls == CL_DATA || cls == CL_ZERO_DATA)
                pl->out_data += len;
            return;
        }
    }
    pl->out[pl->nout++] = (copy_piece){.off = off, .len = len, .cls = (uint8_t)cls};
    if (cls == CL_DATA || cls == CL_ZERO_DATA || cls >= CL_CMP)
        pl->out_data += len;
}

static void emit_to_batch(void *ctx, const copy_piece *p)
{
    push_piece(ctx, p->cls, p->off, p->len);
}

void copy_plan_init(copy_plan *pl, vdk_job *j)
{
    pl->job = j;
    copy_co_init(&pl->co, j->g, emit_to_batch, pl);
}

static bool batch_full(const copy_plan *pl)
{
    uint64_t pend = pl->co.pend.cls == CL_DATA ? pl->co.pend.len : 0;
    return pl->nout + 4 > pl->cap || pl->out_data + pend >= PLAN_DATA_BATCH;
}

/* ---------------------------------------------------------------- copy */

static int zero_class(const vdk_job *j)
{
    if (!j->detect_zero)
        return CL_ZERO_DATA;
    return j->known_zero ? CL_SKIP : CL_ZERO;
}

static int classify(const vdk_job *j, size_t src, const vdk_extent *e)
{
    unsigned f = e->flags;
    if ((j->o.flags & VDK_COPY_TOP_ONLY) && !(f & (VDK_BS_ALLOCATED | VDK_BS_ZERO)))
        return CL_SKIP;
    if (j->same_backing[src] && e->depth >= 1)
        return CL_SKIP;
    if (f & VDK_BS_ZERO)
        return zero_class(j);
    return CL_DATA;
}

/* For a zero range of a backed target: skip the part where the target
 * already reads zeros. May shorten *len. */
static int refine_zero(vdk_job *j, uint64_t off, uint64_t *len, vdk_error *err)
{
    vdk_extent te;
    int r = vdk_image_block_status(j->dst, off, *len, 0, &te, err);
    if (r < 0)
        return r;
    *len = te.length;
    return (te.flags & VDK_BS_ZERO) ? CL_SKIP : CL_ZERO;
}

static int plan_fail(copy_plan *pl, int r, const char *what, const char *name,
                     uint64_t off)
{
    char inner[sizeof pl->err.msg];
    snprintf(inner, sizeof inner, "%s", pl->err.msg[0] ? pl->err.msg : vdk_strerror(r));
    pl->rc = vdk_fail(&pl->err, r, "error while %s '%s' at byte %llu: %s", what, name,
                      (unsigned long long)off, inner);
    return pl->rc;
}

/* Plan the next extent of the current source. */
static int plan_step(vdk_job *j, copy_plan *pl)
{
    vdk_image *s = j->src[pl->src];
    uint64_t size = j->src_size[pl->src], base = j->src_base[pl->src];
    uint64_t len = size - pl->pos < QUERY_MAX ? size - pl->pos : QUERY_MAX;
    vdk_extent e;
    int r = vdk_image_block_status(s, pl->pos, len, j->o.flags & VDK_COPY_TOP_ONLY
                                   ? VDK_BS_TOP_ONLY : 0, &e, &pl->err);
    if (r < 0)
        return plan_fail(pl, r, "reading the allocation of", vdk_image_filename(s), pl->pos);
    len = e.length;
    int cls = classify(j, pl->src, &e);
    if (cls == CL_ZERO && j->dst_has_backing) {
        r = refine_zero(j, base + pl->pos, &len, &pl->err);
        if (r < 0)
            return plan_fail(pl, r, "reading the allocation of", vdk_image_filename(j->dst),
                             base + pl->pos);
        cls = r;
    }
    copy_co_feed(&pl->co, cls, base + pl->pos, len);
    pl->pos += len;
    return 0;
}

void copy_plan_run(vdk_work *w)
{
    copy_plan *pl = (copy_plan *)w;
    vdk_job *j = pl->job;
    pl->nout = 0;
    pl->out_data = 0;
    while (!pl->done && !batch_full(pl) && !atomic_load(&j->cancel_req)) {
        if (pl->src == j->nsrc) {
            copy_co_finish(&pl->co);
            pl->done = true;
        } else if (pl->pos >= j->src_size[pl->src]) {
            pl->src++;
            pl->pos = 0;
        } else if (plan_step(j, pl) < 0) {
            return;
        }
    }
    copy_co_flush(&pl->co);
}

/* ---------------------------------------------------------------- compare */

#define STATUS_MASK (VDK_BS_DATA | VDK_BS_ZERO | VDK_BS_ALLOCATED)

/* One step over the common part of both images. */
static int compare_common_step(vdk_job *j, copy_plan *pl, uint64_t common)
{
    vdk_image *a = j->src[0], *b = j->src[1];
    uint64_t len = common - pl->pos < QUERY_MAX ? common - pl->pos : QUERY_MAX;
    vdk_extent ea, eb;
    int r = vdk_image_block_status(a, pl->pos, len, 0, &ea, &pl->err);
    if (r < 0)
        return plan_fail(pl, r, "reading the allocation of", vdk_image_filename(a), pl->pos);
    r = vdk_image_block_status(b, pl->pos, ea.length, 0, &eb, &pl->err);
    if (r < 0)
        return plan_fail(pl, r, "reading the allocation of", vdk_image_filename(b), pl->pos);
    len = eb.length;
    int cls;
    if ((j->cmp_flags & VDK_COMPARE_STRICT) &&
        (ea.flags & STATUS_MASK) != (eb.flags & STATUS_MASK)) {
        cls = CL_CMP_STATUS;
        pl->done = true; /* nothing past this offset matters */
    } else if ((ea.flags & VDK_BS_ZERO) && (eb.flags & VDK_BS_ZERO)) {
        cls = CL_SKIP;
    } else if (ea.flags & VDK_BS_ZERO) {
        cls = CL_CMP_ZB;
    } else if (eb.flags & VDK_BS_ZERO) {
        cls = CL_CMP_ZA;
    } else {
        cls = CL_CMP;
    }
    push_piece(pl, cls, pl->pos, len);
    pl->pos += len;
    return 0;
}

/* One step over the tail of the longer image, which must read as zeros. */
static int compare_tail_step(vdk_job *j, copy_plan *pl, uint64_t end)
{
    size_t which = j->src_size[0] > j->src_size[1] ? 0 : 1;
    vdk_image *img = j->src[which];
    uint64_t len = end - pl->pos < QUERY_MAX ? end - pl->pos : QUERY_MAX;
    vdk_extent e;
    int r = vdk_image_block_status(img, pl->pos, len, 0, &e, &pl->err);
    if (r < 0)
        return plan_fail(pl, r, "reading the allocation of", vdk_image_filename(img), pl->pos);
    int cls = CL_SKIP;
    if ((e.flags & VDK_BS_ALLOCATED) && !(e.flags & VDK_BS_ZERO))
        cls = which == 0 ? CL_CMP_ZA : CL_CMP_ZB;
    push_piece(pl, cls, pl->pos, e.length);
    pl->pos += e.length;
    return 0;
}

void compare_plan_run(vdk_work *w)
{
    copy_plan *pl = (copy_plan *)w;
    vdk_job *j = pl->job;
    uint64_t sa = j->src_size[0], sb = j->src_size[1];
    uint64_t common = sa < sb ? sa : sb, end = sa > sb ? sa : sb;
    bool strict = j->cmp_flags & VDK_COMPARE_STRICT;
    pl->nout = 0;
    pl->out_data = 0;
    while (!pl->done && !batch_full(pl) && !atomic_load(&j->cancel_req)) {
        int r;
        if (pl->pos < common)
            r = compare_common_step(j, pl, common);
        else if (pl->pos < end && !strict)
            r = compare_tail_step(j, pl, end);
        else {
            pl->done = true;
            r = 0;
        }
        if (r < 0)
            return;
    }
}
