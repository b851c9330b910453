/*
 * copy-int.h - inside the copy engine: the job, its requests, its plan.
 *
 * Files: copy.c (the job's state machine on the loop thread and the public
 * job API), copy-plan.c (planning from block status, on a worker: extents
 * become pieces, aligned and merged by the coalescer), copy-io.c (the
 * worker side of a request: read, zero detection, backing comparison,
 * compression, write; the final flush), compare.c (compare jobs).
 *
 * Who owns what: the loop thread owns the job and every request while it is
 * not queued on the worker pool; a worker owns a request (or the plan)
 * between submit and delivery and touches nothing else of the job except
 * read-only configuration and the atomic counters.
 */
#ifndef VDK_COPY_INT_H
#define VDK_COPY_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "driver.h"
#include "workers.h"

/* Classes of guest ranges. */
enum copy_class {
    CL_NONE = 0,
    CL_DATA,      /* read from the source, then written (after zero detection) */
    CL_ZERO,      /* reads as zeros; written with write_zeroes */
    CL_SKIP,      /* already right in the target: nothing to do */
    CL_ZERO_DATA, /* zeros written as data (-S 0) */
    /* compare jobs */
    CL_CMP,       /* read both images and compare */
    CL_CMP_ZA,    /* image a must read as zeros here (b reads zeros) */
    CL_CMP_ZB,    /* image b must read as zeros here */
    CL_CMP_STATUS /* strict: allocation differs at the start of the piece */
};

/* A planned range of the target (compare: of both images). A piece may
 * span sources: reads map each byte to its source through src_base. */
typedef struct copy_piece {
    uint64_t off; /* target offset */
    uint64_t len;
    uint8_t cls;
} copy_piece;

/* Coalescer: turns a contiguous stream of classified ranges into pieces
 * whose boundaries fall on multiples of g (target offsets), except at the
 * very end. A block that mixes classes becomes data: reading it through the
 * chain gives exactly what the target must hold. Equal neighbours merge. */
typedef struct copy_coalescer {
    uint64_t g;
    uint64_t acc_start, acc_end; /* the partial block being accumulated */
    int acc;                     /* its class so far, CL_NONE when none */
    copy_piece pend;             /* the piece being extended (len 0: none) */
    void (*emit)(void *ctx, const copy_piece *p);
    void *ctx;
} copy_coalescer;

void copy_co_init(copy_coalescer *c, uint64_t g, void (*emit)(void *, const copy_piece *),
                  void *ctx);
/* Feed [off, off+len) of class cls; off must be where the last feed ended. */
void copy_co_feed(copy_coalescer *c, int cls, uint64_t off, uint64_t len);
/* Emit the pending piece (the partial block, if any, stays). */
void copy_co_flush(copy_coalescer *c);
/* The stream ended: emit the partial block and the pending piece. */
void copy_co_finish(copy_coalescer *c);

/* The planner: one worker item at a time, resumable. */
typedef struct copy_plan {
    vdk_work work;
    struct vdk_job *job;
    size_t src;        /* source being planned */
    uint64_t pos;      /* next offset in it */
    copy_coalescer co;
    copy_piece *out;   /* batch for the loop thread */
    size_t nout, cap;
    uint64_t out_data; /* data bytes in the batch */
    bool done;
    int rc;
    vdk_error err;
} copy_plan;

/* Request states. */
enum { RQ_FREE = 0, RQ_READING, RQ_READY, RQ_WRITING };

typedef struct copy_req {
    vdk_work work;
    struct vdk_job *job;
    int state;
    uint64_t seq;     /* write order */
    copy_piece p;
    uint8_t *buf;     /* request_size bytes, aligned */
    uint8_t *buf2;    /* backing comparison / compare: the second image */
    uint8_t *cbuf;    /* compressed clusters, one per cluster_size slot */
    uint8_t *blk;     /* class of each g-block after detection */
    uint32_t *clen;   /* stored length of each compressed cluster, 0: uncompressed */
    int rc;
    vdk_error err;
    uint64_t n_read, n_written, n_zeroed, n_skipped;
    uint64_t mismatch; /* compare: first differing byte, UINT64_MAX if none */
} copy_req;

enum job_kind { JOB_COPY = 1, JOB_COMPARE };

struct vdk_job {
    int kind;
    uv_loop_t *loop;
    vdk_workers *workers;
    vdk_mailbox mbox;
    uv_timer_t timer;     /* rate limit wake-up */
    int open_handles;

    /* Images (referenced). Compare: src[0] = a, src[1] = b. */
    vdk_image **src;
    uint64_t *src_base;   /* target offset of each source's byte 0 */
    uint64_t *src_size;
    size_t nsrc;
    vdk_image *dst;
    vdk_image *dst_backing;   /* the target's backing image, or NULL */
    bool *same_backing;       /* per source: its backing is the target's backing file */
    bool dst_has_backing;     /* the target names a backing file */

    /* Configuration (read-only once started). */
    vdk_copy_opts o;
    unsigned cmp_flags;
    uint64_t g;               /* block size for alignment and zero detection */
    uint64_t cluster;         /* target cluster size (0: none) */
    uint64_t total;
    bool known_zero;          /* the target reads as zeros where not written */
    bool ordered;             /* writes in guest order */
    unsigned max_writes;      /* writes in flight at most */
    bool compress, two_phase;
    bool detect_zero;         /* sparse_size > 0 */
    bool compare_backing;
    uint8_t *zerobuf;         /* request_size zeros, for CL_ZERO_DATA */

    /* Plan queue (ring of pieces). */
    copy_plan plan;
    bool planning;
    copy_piece *q;
    size_t qhead, qlen, qcap;
    uint64_t q_data;          /* data bytes queued */

    /* Requests. */
    copy_req *reqs;
    unsigned nreq;
    unsigned busy;            /* requests not free */
    unsigned writing;         /* writes in flight */
    uint64_t next_seq, next_write_seq;

    /* Rate limit: token bucket in bytes (may go negative). */
    double tokens;
    uint64_t last_refill_ns;
    bool timer_armed;

    /* Early write-back: start writing finished data to disk while the copy
     * goes on, so the final flush has little left to do. */
    int wb_fd;                /* the target's host file, or -1 */
    vdk_work wb_work;
    bool wb_running;
    uint64_t wb_pending;      /* bytes written since the last kick */

    /* Flush. */
    vdk_work flush_work;
    bool flushing, flushed;
    int flush_rc;
    vdk_error flush_err;

    /* Compare. */
    uint64_t mismatch;        /* lowest differing offset found, UINT64_MAX: none */
    int verdict;

    /* End. */
    atomic_bool cancel_req;
    bool stopping, finishing, ended, detached;
    int rc;
    vdk_error err;
    vdk_job_done_cb done_cb;
    void *opaque;

    /* Progress (written on the loop thread, read anywhere). */
    _Atomic uint64_t p_done, p_read, p_written, p_zeroed, p_skipped;
    atomic_int p_phase;
    atomic_uint p_in_flight;
};

/* copy-plan.c */
void copy_plan_init(copy_plan *pl, vdk_job *j);
void copy_plan_run(vdk_work *w);
void compare_plan_run(vdk_work *w);
/* copy-io.c */
void copy_read_run(vdk_work *w);
void copy_write_run(vdk_work *w);
void compare_read_run(vdk_work *w);
void copy_flush_run(vdk_work *w);
void copy_writeback_run(vdk_work *w);
int copy_writeback_fd(vdk_image *target);
bool copy_is_zero(const uint8_t *p, size_t n);
/* copy.c */
int copy_job_new(uv_loop_t *loop, int kind, const vdk_copy_opts *opts, vdk_job_done_cb done,
                 void *opaque, vdk_job **out, vdk_error *err);
int copy_job_setup_requests(vdk_job *j, vdk_error *err);
void copy_job_launch(vdk_job *j);
void copy_job_abort_new(vdk_job *j);
void copy_job_abort_started(vdk_job *j);

#endif /* VDK_COPY_INT_H */
