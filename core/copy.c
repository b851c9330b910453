/*
 * copy.c - copy jobs: the state machine on the loop thread, and the public
 * job API (start, progress, cancel, result, free).
 *
 * A job is a queue of planned pieces (filled in batches by the planner, on
 * a worker), a fixed set of requests with their buffers (allocated once when
 * the job starts, aligned for O_DIRECT), and counters. Everything on this
 * side runs on the loop thread, driven by pump(): after every batch of
 * completions, timer tick or cancel request it issues writes (the next one
 * in guest order, or every ready one with -W), then reads while requests,
 * bytes and the rate limit allow, then asks for more plan, then, once all is
 * written, for the one final flush. The first error or a cancel stops new
 * work; the job ends when nothing is in flight any more, closes its handles,
 * releases its images and calls the done callback.
 *
 * In-order writes matter where the target allocates host space in write
 * order (qcow2: sequential layout, compressed clusters packed in guest
 * order); reads, zero detection and compression still run in parallel.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "copy-int.h"

#define DEFAULT_REQUESTS 8
#define DEFAULT_REQUEST_SIZE ((uint64_t)2 << 20)
#define DEFAULT_SPARSE 4096
#define QUEUE_CAP 1024
#define PLAN_BATCH 256
#define QUEUE_LOW 64
#define QUEUE_DATA_LOW ((uint64_t)128 << 20)
/* Early write-back starts after this many bytes were written since the last. */
#define WRITEBACK_KICK ((uint64_t)32 << 20)
/* Zero ranges are handed to write_zeroes in pieces of at most this size,
 * a multiple of every request size, so a cancel is never far away. */
#define ZERO_CHUNK ((uint64_t)1 << 30)

static void pump(vdk_job *j);

void vdk_copy_opts_init(vdk_copy_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_requests = DEFAULT_REQUESTS;
    o->request_size = DEFAULT_REQUEST_SIZE;
    o->sparse_size = DEFAULT_SPARSE;
}

/* ---------------------------------------------------------------- state changes */

static void job_fail(vdk_job *j, int rc, const vdk_error *err)
{
    if (j->rc == 0) {
        j->rc = rc;
        if (err && err->msg[0])
            j->err = *err;
        else
            vdk_fail(&j->err, rc, "%s", vdk_strerror(rc));
        j->err.code = rc;
    }
    j->stopping = true;
}

static void submit(vdk_job *j, vdk_work *w, void (*run)(vdk_work *))
{
    w->run = run;
    w->mailbox = &j->mbox;
    vdk_workers_submit(j->workers, w);
}

static void req_submit(vdk_job *j, copy_req *r, int state, void (*run)(vdk_work *))
{
    r->state = state;
    atomic_fetch_add(&j->p_in_flight, 1);
    submit(j, &r->work, run);
}

static void req_release(vdk_job *j, copy_req *r)
{
    r->state = RQ_FREE;
    j->busy--;
}

static bool is_costly(int cls)
{
    return cls == CL_DATA || cls == CL_ZERO_DATA || cls >= CL_CMP;
}

/* ---------------------------------------------------------------- rate limit */

static void on_timer(uv_timer_t *t)
{
    vdk_job *j = t->data;
    j->timer_armed = false;
    pump(j);
}

/* Whether a costly request may start now; arms the timer when not. */
static bool rate_ok(vdk_job *j)
{
    if (!j->o.rate_limit)
        return true;
    double rate = (double)j->o.rate_limit;
    uint64_t now = uv_hrtime();
    j->tokens += (double)(now - j->last_refill_ns) * rate / 1e9;
    j->last_refill_ns = now;
    double cap = rate < (double)j->o.request_size ? rate : (double)j->o.request_size;
    if (j->tokens > cap)
        j->tokens = cap;
    if (j->tokens > 0)
        return true;
    if (!j->timer_armed) {
        double ms = (1.0 - j->tokens) * 1000.0 / rate;
        uint64_t wait = ms < 1 ? 1 : ms > 1000 ? 1000 : (uint64_t)ms + 1;
        uv_timer_start(&j->timer, on_timer, wait, 0);
        j->timer_armed = true;
    }
    return false;
}

/* ---------------------------------------------------------------- queue */

static void enqueue(vdk_job *j, const copy_piece *p)
{
    size_t i = (j->qhead + j->qlen) % j->qcap;
    j->q[i] = *p;
    j->qlen++;
    if (is_costly(p->cls))
        j->q_data += p->len;
}

/* Take the next request-sized chunk off the head piece. */
static void take_chunk(vdk_job *j, copy_piece *out)
{
    copy_piece *h = &j->q[j->qhead];
    uint64_t lim = h->cls == CL_ZERO ? ZERO_CHUNK : j->o.request_size;
    uint64_t bound = (h->off / lim + 1) * lim;
    uint64_t n = h->len < bound - h->off ? h->len : bound - h->off;
    *out = (copy_piece){.off = h->off, .len = n, .cls = h->cls};
    h->off += n;
    h->len -= n;
    if (is_costly(h->cls))
        j->q_data -= n;
    if (h->len == 0) {
        j->qhead = (j->qhead + 1) % j->qcap;
        j->qlen--;
    }
}

static copy_req *free_req(vdk_job *j)
{
    for (unsigned i = 0; i < j->nreq; i++)
        if (j->reqs[i].state == RQ_FREE)
            return &j->reqs[i];
    return NULL;
}

/* ---------------------------------------------------------------- issuing */

static void issue_requests(vdk_job *j)
{
    while (!j->stopping && j->qlen > 0 && j->busy < j->nreq) {
        copy_piece *h = &j->q[j->qhead];
        if (j->kind == JOB_COMPARE && h->off >= j->mismatch) {
            j->qlen = 0; /* nothing past the first difference matters */
            j->q_data = 0;
            break;
        }
        bool costly = is_costly(h->cls);
        if (costly && !rate_ok(j))
            break;
        copy_req *r = free_req(j);
        take_chunk(j, &r->p);
        if (costly && j->o.rate_limit)
            j->tokens -= (double)r->p.len;
        r->seq = j->next_seq++;
        r->n_read = r->n_written = r->n_zeroed = r->n_skipped = 0;
        r->rc = 0;
        vdk_error_clear(&r->err);
        j->busy++;
        if (j->kind == JOB_COMPARE)
            req_submit(j, r, RQ_READING, compare_read_run);
        else if (r->p.cls == CL_DATA)
            req_submit(j, r, RQ_READING, copy_read_run);
        else
            r->state = RQ_READY; /* zeros: nothing to read */
    }
}

static copy_req *next_writable(vdk_job *j)
{
    for (unsigned i = 0; i < j->nreq; i++) {
        copy_req *r = &j->reqs[i];
        if (r->state == RQ_READY && (!j->ordered || r->seq == j->next_write_seq))
            return r;
    }
    return NULL;
}

static void issue_writes(vdk_job *j)
{
    while (!j->stopping && j->writing < j->max_writes) {
        copy_req *r = next_writable(j);
        if (!r)
            return;
        j->writing++;
        if (j->ordered)
            j->next_write_seq++;
        req_submit(j, r, RQ_WRITING, copy_write_run);
    }
}

static void maybe_plan(vdk_job *j)
{
    if (j->planning || j->plan.done || j->stopping || j->mismatch != UINT64_MAX)
        return;
    if (j->qlen >= QUEUE_LOW || j->q_data >= QUEUE_DATA_LOW)
        return;
    size_t room = j->qcap - j->qlen;
    j->plan.cap = room < PLAN_BATCH ? room : PLAN_BATCH;
    j->planning = true;
    submit(j, &j->plan.work, j->kind == JOB_COPY ? copy_plan_run : compare_plan_run);
}

static void maybe_flush(vdk_job *j)
{
    if (j->kind != JOB_COPY || j->flushing || j->flushed || j->stopping)
        return;
    /* planning first: plan.done belongs to the worker while it plans. */
    if (j->planning || !j->plan.done || j->qlen || j->busy || j->wb_running)
        return;
    if (j->o.flags & VDK_COPY_NO_FLUSH) {
        j->flushed = true;
        return;
    }
    j->flushing = true;
    atomic_store(&j->p_phase, VDK_JOB_FLUSHING);
    submit(j, &j->flush_work, copy_flush_run);
}

/* ---------------------------------------------------------------- completions */

static void plan_delivered(vdk_job *j)
{
    copy_plan *pl = &j->plan;
    j->planning = false;
    if (pl->rc < 0) {
        job_fail(j, pl->rc, &pl->err);
        return;
    }
    for (size_t i = 0; i < pl->nout; i++) {
        const copy_piece *p = &pl->out[i];
        if (j->kind == JOB_COMPARE && p->off >= j->mismatch)
            break;
        if (p->cls == CL_SKIP) {
            atomic_fetch_add(&j->p_done, p->len);
            atomic_fetch_add(&j->p_skipped, p->len);
        } else if (p->cls == CL_CMP_STATUS) {
            j->mismatch = p->off;
            j->verdict = VDK_COMPARE_ALLOCATION;
        } else {
            enqueue(j, p);
        }
    }
    if (atomic_load(&j->p_phase) == VDK_JOB_STARTING)
        atomic_store(&j->p_phase, VDK_JOB_COPYING);
}

static void read_delivered(vdk_job *j, copy_req *r)
{
    atomic_fetch_add(&j->p_read, r->n_read);
    if (r->rc < 0) {
        job_fail(j, r->rc, &r->err);
        req_release(j, r);
        return;
    }
    if (j->kind == JOB_COPY) {
        r->state = RQ_READY;
        return;
    }
    if (r->mismatch < j->mismatch) {
        j->mismatch = r->mismatch;
        j->verdict = VDK_COMPARE_CONTENT;
    }
    atomic_fetch_add(&j->p_done, r->p.len);
    req_release(j, r);
}

static void write_delivered(vdk_job *j, copy_req *r)
{
    j->writing--;
    if (r->rc < 0) {
        job_fail(j, r->rc, &r->err);
    } else {
        atomic_fetch_add(&j->p_done, r->p.len);
        atomic_fetch_add(&j->p_written, r->n_written);
        atomic_fetch_add(&j->p_zeroed, r->n_zeroed);
        atomic_fetch_add(&j->p_skipped, r->n_skipped);
        j->wb_pending += r->n_written;
    }
    req_release(j, r);
}

/* Push written data towards the disk in the background, one kick at a time. */
static void maybe_writeback(vdk_job *j)
{
    if (j->wb_fd < 0 || j->wb_running || j->wb_pending < WRITEBACK_KICK || j->stopping)
        return;
    j->wb_pending = 0;
    j->wb_running = true;
    submit(j, &j->wb_work, copy_writeback_run);
}

static void deliver(vdk_mailbox *mb, vdk_work *w)
{
    vdk_job *j = mb->owner;
    if (w == &j->plan.work) {
        plan_delivered(j);
    } else if (w == &j->wb_work) {
        j->wb_running = false;
    } else if (w == &j->flush_work) {
        j->flushing = false;
        j->flushed = true;
        if (j->flush_rc < 0)
            job_fail(j, j->flush_rc, &j->flush_err);
    } else {
        copy_req *r = (copy_req *)w;
        atomic_fetch_sub(&j->p_in_flight, 1);
        if (r->state == RQ_READING)
            read_delivered(j, r);
        else
            write_delivered(j, r);
    }
}

static void wake(vdk_mailbox *mb)
{
    pump(mb->owner);
}

/* ---------------------------------------------------------------- the end */

static void free_requests(vdk_job *j)
{
    for (unsigned i = 0; j->reqs && i < j->nreq; i++) {
        copy_req *r = &j->reqs[i];
        free(r->buf);
        free(r->buf2);
        free(r->cbuf);
        free(r->blk);
        free(r->clen);
    }
    free(j->reqs);
    j->reqs = NULL;
}

static void release_images(vdk_job *j)
{
    for (size_t i = 0; j->src && i < j->nsrc; i++)
        if (j->src[i])
            vdk_image_unref(j->src[i]);
    if (j->dst)
        vdk_image_unref(j->dst);
    free(j->src);
    free(j->src_base);
    free(j->src_size);
    free(j->same_backing);
    j->src = NULL;
    j->src_base = j->src_size = NULL;
    j->same_backing = NULL;
    j->dst = NULL;
    j->nsrc = 0;
}

static void job_free_all(vdk_job *j)
{
    if (j->mbox.deliver)
        vdk_mailbox_fini(&j->mbox);
    free_requests(j);
    release_images(j);
    free(j->q);
    free(j->plan.out);
    free(j->zerobuf);
    free(j);
}

static void job_end(vdk_job *j)
{
    free_requests(j);
    release_images(j);
    bool detached = j->detached;
    atomic_store(&j->p_phase, VDK_JOB_DONE);
    j->ended = true;
    if (j->done_cb)
        j->done_cb(j, j->opaque);
    if (detached)
        job_free_all(j);
}

static void handle_closed(vdk_job *j)
{
    if (--j->open_handles == 0)
        job_end(j);
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_async_closed(uv_handle_t *h)
{
    handle_closed(((vdk_mailbox *)h->data)->owner);
}

static void finish(vdk_job *j)
{
    j->finishing = true;
    vdk_workers_free(j->workers);
    j->workers = NULL;
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, on_timer_closed);
    vdk_mailbox_close(&j->mbox, on_async_closed);
}

static bool finished(const vdk_job *j)
{
    if (j->kind == JOB_COPY)
        return j->flushed;
    return j->qlen == 0 && j->busy == 0 && !j->planning &&
           (j->plan.done || j->mismatch != UINT64_MAX);
}

static void pump(vdk_job *j)
{
    if (j->finishing)
        return;
    if (atomic_load(&j->cancel_req) && !j->stopping) {
        vdk_error e;
        vdk_fail(&e, VDK_ECANCELED, "canceled after %llu of %llu bytes",
                 (unsigned long long)atomic_load(&j->p_done), (unsigned long long)j->total);
        job_fail(j, VDK_ECANCELED, &e);
    }
    if (!j->stopping) {
        issue_writes(j);
        issue_requests(j);
        issue_writes(j);
        maybe_plan(j);
        maybe_writeback(j);
        maybe_flush(j);
    }
    bool idle = atomic_load(&j->p_in_flight) == 0 && !j->planning && !j->flushing &&
                !j->wb_running;
    if (idle && (j->stopping || finished(j)))
        finish(j);
}

/* ---------------------------------------------------------------- setup */

int copy_job_new(uv_loop_t *loop, int kind, const vdk_copy_opts *opts, vdk_job_done_cb done,
                 void *opaque, vdk_job **out, vdk_error *err)
{
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    if (opts)
        o = *opts;
    if (o.max_requests < 1 || o.max_requests > VDK_COPY_MAX_REQUESTS)
        return vdk_fail(err, VDK_EOPTION, "the number of requests in flight must be between "
                        "1 and %d, not %u", VDK_COPY_MAX_REQUESTS, o.max_requests);
    if (o.sparse_size % 512 || o.sparse_size > VDK_COPY_MAX_SPARSE)
        return vdk_fail(err, VDK_EOPTION, "invalid sparse size %llu: use a multiple of 512 up "
                        "to %llu, or 0", (unsigned long long)o.sparse_size,
                        (unsigned long long)VDK_COPY_MAX_SPARSE);
    if (!o.request_size)
        o.request_size = DEFAULT_REQUEST_SIZE;
    if (o.request_size > ((uint64_t)64 << 20))
        return vdk_fail(err, VDK_EOPTION, "request size %llu is larger than 64 MiB",
                        (unsigned long long)o.request_size);
    vdk_job *j = calloc(1, sizeof *j);
    if (!j)
        return vdk_fail(err, -ENOMEM, "out of memory");
    j->kind = kind;
    j->loop = loop;
    j->o = o;
    j->done_cb = done;
    j->opaque = opaque;
    j->mismatch = UINT64_MAX;
    j->wb_fd = -1;
    j->plan.job = j;
    *out = j;
    return 0;
}

void copy_job_abort_new(vdk_job *j)
{
    job_free_all(j);
}

static int alloc_request(vdk_job *j, copy_req *r)
{
    uint64_t rs = j->o.request_size;
    r->job = j;
    r->buf = vdk_alloc_aligned(rs, false);
    if (!r->buf)
        return -ENOMEM;
    if (j->compare_backing || j->kind == JOB_COMPARE)
        if (!(r->buf2 = vdk_alloc_aligned(rs, false)))
            return -ENOMEM;
    if (j->kind == JOB_COPY && !(r->blk = calloc(rs / j->g + 2, 1)))
        return -ENOMEM;
    if (j->compress) {
        if (j->two_phase && !(r->cbuf = vdk_alloc_aligned(rs, false)))
            return -ENOMEM;
        if (!(r->clen = calloc(rs / j->cluster + 2, sizeof *r->clen)))
            return -ENOMEM;
    }
    return 0;
}

int copy_job_setup_requests(vdk_job *j, vdk_error *err)
{
    uint64_t rs = j->o.request_size;
    j->nreq = j->o.max_requests;
    if (j->o.max_bytes && j->o.max_bytes / rs < j->nreq)
        j->nreq = j->o.max_bytes / rs ? (unsigned)(j->o.max_bytes / rs) : 1;
    j->qcap = QUEUE_CAP;
    j->q = calloc(j->qcap, sizeof *j->q);
    j->plan.out = calloc(PLAN_BATCH, sizeof *j->plan.out);
    j->reqs = calloc(j->nreq, sizeof *j->reqs);
    if (!j->q || !j->plan.out || !j->reqs)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (unsigned i = 0; i < j->nreq; i++)
        if (alloc_request(j, &j->reqs[i]) < 0)
            return vdk_fail(err, -ENOMEM, "out of memory for %u buffers of %llu bytes",
                            j->nreq, (unsigned long long)rs);
    j->workers = vdk_workers_new(j->nreq + 1);
    if (!j->workers)
        return vdk_fail(err, -EAGAIN, "cannot start %u worker threads", j->nreq + 1);
    int r = uv_timer_init(j->loop, &j->timer);
    if (r == 0) {
        j->timer.data = j;
        j->open_handles++;
        r = vdk_mailbox_init(&j->mbox, j->loop, deliver, wake, j);
    }
    if (r == 0)
        j->open_handles++;
    if (r < 0)
        return vdk_fail(err, -EIO, "cannot set up the job on the loop: %s", uv_strerror(r));
    return 0;
}

/* Start: the first pump runs on the loop, never inside the start call. */
void copy_job_launch(vdk_job *j)
{
    j->last_refill_ns = uv_hrtime();
    atomic_store(&j->p_phase, VDK_JOB_STARTING);
    vdk_mailbox_poke(&j->mbox);
}

/* Undo a half-made job whose handles may exist: close them, then free. */
void copy_job_abort_started(vdk_job *j)
{
    vdk_workers_free(j->workers);
    j->workers = NULL;
    if (j->open_handles == 0) {
        job_free_all(j);
        return;
    }
    j->detached = true;
    j->done_cb = NULL;
    j->finishing = true;
    if (uv_is_active((uv_handle_t *)&j->timer) || j->timer.data)
        uv_close((uv_handle_t *)&j->timer, on_timer_closed);
    if (j->mbox.deliver)
        vdk_mailbox_close(&j->mbox, on_async_closed);
}

/* ---------------------------------------------------------------- copy start */

static bool same_file(vdk_image *a, vdk_image *b)
{
    struct stat sa, sb;
    if (!a || !b || stat(vdk_image_filename(a), &sa) < 0 || stat(vdk_image_filename(b), &sb) < 0)
        return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int check_target(vdk_job *j, vdk_error *err)
{
    vdk_image *t = j->dst;
    if (!vdk_image_is_writable(t))
        return vdk_fail(err, -EROFS, "%s: the target is opened read-only",
                        vdk_image_filename(t));
    if (j->total > vdk_image_size(t))
        return vdk_fail(err, -EINVAL, "%s: the target (%llu bytes) is smaller than the source "
                        "(%llu bytes)", vdk_image_filename(t),
                        (unsigned long long)vdk_image_size(t), (unsigned long long)j->total);
    if ((j->o.flags & VDK_COPY_TARGET_ZERO) && j->dst_has_backing)
        return vdk_fail(err, VDK_EOPTION, "%s: a target with a backing file cannot be known "
                        "to read as zeros", vdk_image_filename(t));
    if (j->compress && !j->cluster)
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' does not support compression",
                        vdk_image_filename(t), vdk_image_format(t));
    return 0;
}

/* Block size, request size and the flags derived from the options. */
static void derive_geometry(vdk_job *j)
{
    uint64_t cs = j->cluster, s = j->o.sparse_size;
    if (cs) {
        uint64_t g = s > cs ? s : cs;
        j->g = (g + cs - 1) / cs * cs;
    } else {
        j->g = s ? s : 4096;
    }
    uint64_t rs = j->o.request_size < j->g ? j->g : j->o.request_size;
    j->o.request_size = (rs + j->g - 1) / j->g * j->g;
    unsigned f = j->o.flags;
    j->detect_zero = s > 0;
    j->known_zero = (f & VDK_COPY_TARGET_ZERO) || ((f & VDK_COPY_TARGET_FRESH) && !j->dst_has_backing);
    /* Order matters where the target allocates host space as it is written
     * (formats with clusters: a sequential layout, compressed clusters
     * packed in guest order). Raw files and NBD exports take writes in any
     * order, all requests at once (an NBD export needs them to hide its
     * latency; into a raw file, capping the writes in flight at 2 measured
     * the same as no cap, within the noise). */
    j->ordered = j->compress || (!(f & VDK_COPY_UNORDERED) && j->cluster > 0);
    j->max_writes = j->ordered ? 1 : UINT32_MAX;
    j->compare_backing = (f & VDK_COPY_BACKING_COMPARE) && (f & VDK_COPY_TARGET_FRESH) &&
                         j->dst_backing;
}

static int take_images(vdk_job *j, vdk_image *const *sources, size_t n, vdk_image *target)
{
    j->src = calloc(n, sizeof *j->src);
    j->src_base = calloc(n, sizeof *j->src_base);
    j->src_size = calloc(n, sizeof *j->src_size);
    j->same_backing = calloc(n, sizeof *j->same_backing);
    if (!j->src || !j->src_base || !j->src_size || !j->same_backing)
        return -ENOMEM;
    j->dst = vdk_image_ref(target);
    j->dst_backing = vdk_image_backing(target);
    j->dst_has_backing = vdk_image_backing_name(target) != NULL;
    j->nsrc = n;
    for (size_t i = 0; i < n; i++) {
        j->src[i] = vdk_image_ref(sources[i]);
        j->src_base[i] = j->total;
        j->src_size[i] = vdk_image_size(sources[i]);
        j->total += j->src_size[i];
        j->same_backing[i] = (j->o.flags & VDK_COPY_TARGET_FRESH) && j->dst_backing &&
                             same_file(vdk_image_backing(sources[i]), j->dst_backing);
    }
    return 0;
}

/* Whether the target's format can compress clusters apart (two-phase). */
static int probe_two_phase(vdk_job *j, vdk_error *err)
{
    uint64_t cs = j->cluster, size = vdk_image_size(j->dst);
    size_t len = (size_t)(size < cs ? size : cs);
    if (len == 0)
        return 0;
    uint8_t *src = vdk_alloc_aligned(cs, true), *dst = vdk_alloc_aligned(cs, false);
    int r = -ENOMEM;
    if (src && dst)
        r = vdk_image_compress_cluster(j->dst, dst, cs - 1, src, len, 0, err);
    free(src);
    free(dst);
    if (r == VDK_EUNSUPPORTED) {
        vdk_error_clear(err);
        return 0;
    }
    if (r < 0)
        return r;
    j->two_phase = true;
    return 0;
}

int vdk_copy_start(uv_loop_t *loop, vdk_image *const *sources, size_t nsources,
                   vdk_image *target, const vdk_copy_opts *opts, vdk_job_done_cb done,
                   void *opaque, vdk_job **out, vdk_error *err)
{
    vdk_error_clear(err);
    *out = NULL;
    if (!loop || !sources || nsources == 0 || !target)
        return vdk_fail(err, -EINVAL, "copy: no loop, source or target given");
    vdk_job *j;
    int r = copy_job_new(loop, JOB_COPY, opts, done, opaque, &j, err);
    if (r < 0)
        return r;
    if (take_images(j, sources, nsources, target) < 0) {
        job_free_all(j);
        return vdk_fail(err, -ENOMEM, "out of memory");
    }
    j->compress = j->o.flags & VDK_COPY_COMPRESS;
    j->cluster = vdk_image_cluster_size(target);
    if ((r = check_target(j, err)) < 0 || (j->compress && (r = probe_two_phase(j, err)) < 0)) {
        job_free_all(j);
        return r;
    }
    derive_geometry(j);
    j->wb_fd = copy_writeback_fd(target);
    copy_plan_init(&j->plan, j);
    if (!j->detect_zero && !(j->zerobuf = vdk_alloc_aligned(j->o.request_size, true))) {
        job_free_all(j);
        return vdk_fail(err, -ENOMEM, "out of memory");
    }
    j->total = j->src_base[nsources - 1] + j->src_size[nsources - 1];
    if ((r = copy_job_setup_requests(j, err)) < 0) {
        copy_job_abort_started(j);
        return r;
    }
    copy_job_launch(j);
    *out = j;
    return 0;
}

/* ---------------------------------------------------------------- job API */

void vdk_job_progress_get(vdk_job *j, vdk_job_progress *p)
{
    p->done = atomic_load(&j->p_done);
    p->total = j->total;
    p->bytes_read = atomic_load(&j->p_read);
    p->bytes_written = atomic_load(&j->p_written);
    p->bytes_zeroed = atomic_load(&j->p_zeroed);
    p->bytes_skipped = atomic_load(&j->p_skipped);
    p->phase = atomic_load(&j->p_phase);
    p->in_flight = atomic_load(&j->p_in_flight);
}

void vdk_job_cancel(vdk_job *j)
{
    if (!j || atomic_exchange(&j->cancel_req, true))
        return;
    if (j->mbox.deliver)
        vdk_mailbox_poke(&j->mbox);
}

int vdk_job_is_done(vdk_job *j)
{
    return atomic_load(&j->p_phase) == VDK_JOB_DONE && j->ended;
}

int vdk_job_result(vdk_job *j, vdk_error *err)
{
    if (!j->ended)
        return vdk_fail(err, -EBUSY, "the job is still running");
    if (err) {
        *err = j->err;
        if (!j->rc)
            vdk_error_clear(err);
    }
    return j->rc;
}

void vdk_job_free(vdk_job *j)
{
    if (!j)
        return;
    if (j->ended) {
        job_free_all(j);
        return;
    }
    j->detached = true;
    vdk_job_cancel(j);
}

/* ---------------------------------------------------------------- synchronous copy */

static void sync_done(vdk_job *j, void *opaque)
{
    (void)j;
    *(bool *)opaque = true;
}

int vdk_copy(vdk_image *const *sources, size_t nsources, vdk_image *target,
             const vdk_copy_opts *opts, vdk_error *err)
{
    uv_loop_t loop;
    int r = uv_loop_init(&loop);
    if (r < 0)
        return vdk_fail(err, -EIO, "cannot create an event loop: %s", uv_strerror(r));
    bool done = false;
    vdk_job *j = NULL;
    r = vdk_copy_start(&loop, sources, nsources, target, opts, sync_done, &done, &j, err);
    if (r == 0) {
        while (!done)
            uv_run(&loop, UV_RUN_ONCE);
        r = vdk_job_result(j, err);
        vdk_job_free(j);
    }
    uv_run(&loop, UV_RUN_DEFAULT); /* let closing handles finish */
    uv_loop_close(&loop);
    return r;
}
