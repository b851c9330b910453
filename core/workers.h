/*
 * workers.h - worker threads for the copy engine, and the mailbox that
 * carries their completions back to the libuv loop thread.
 *
 * libuv's own thread pool is global and sized once per process, so the
 * engine keeps its own: a vdk_workers pool runs vdk_work items (a blocking
 * function each: a read, a write, a block status walk, a compression) on its
 * threads. When an item's run function returns, the pool posts the item to
 * the item's mailbox; the mailbox wakes its loop with a uv_async_t and, on
 * the loop thread, hands each finished item to the owner's deliver callback,
 * in the order they finished. Items are owned by the caller (embedded in its
 * request structs); the pool never allocates per item.
 */
#ifndef VDK_WORKERS_H
#define VDK_WORKERS_H

#include <pthread.h>
#include <stdbool.h>

#include <uv.h>

typedef struct vdk_work vdk_work;
typedef struct vdk_mailbox vdk_mailbox;
typedef struct vdk_workers vdk_workers;

struct vdk_work {
    void (*run)(vdk_work *w); /* on a worker thread */
    vdk_mailbox *mailbox;     /* where the item goes when run returns */
    vdk_work *next;           /* queue link, owned by the pool or the mailbox */
};

struct vdk_mailbox {
    uv_async_t async;
    pthread_mutex_t lock;
    vdk_work *head, *tail;
    bool closed;  /* no more wake-ups: the handle is closing */
    void (*deliver)(vdk_mailbox *mb, vdk_work *w); /* loop thread */
    void (*wake)(vdk_mailbox *mb);                 /* loop thread, after each batch */
    void *owner;
};

/*
 * A pool of nthreads threads (1..128) with small stacks. Returns NULL when
 * threads cannot be created (the threads already started are joined).
 */
vdk_workers *vdk_workers_new(unsigned nthreads);
/* Queue w; some thread will run it, then post it to w->mailbox. */
void vdk_workers_submit(vdk_workers *p, vdk_work *w);
/* Stop and join the threads. Items still queued are not run: the caller
 * frees the pool only when none is outstanding. */
void vdk_workers_free(vdk_workers *p);

/*
 * Attach a mailbox to loop. deliver runs once per finished item; wake (may
 * be NULL) runs after each batch and after vdk_mailbox_poke. 0 or -errno.
 */
int vdk_mailbox_init(vdk_mailbox *mb, uv_loop_t *loop,
                     void (*deliver)(vdk_mailbox *, vdk_work *),
                     void (*wake)(vdk_mailbox *), void *owner);
/* Post w from any thread and wake the loop (the pool does this). */
void vdk_mailbox_post(vdk_mailbox *mb, vdk_work *w);
/* Wake the loop without an item, from any thread (cancel requests). */
void vdk_mailbox_poke(vdk_mailbox *mb);
/* Stop wake-ups and close the handle; close_cb gets the async handle. Must
 * not be called while items can still be posted. */
void vdk_mailbox_close(vdk_mailbox *mb, uv_close_cb close_cb);
/* Release the mailbox's lock, once the close callback has run. */
void vdk_mailbox_fini(vdk_mailbox *mb);

#endif /* VDK_WORKERS_H */
