/*
 * workers.c - the copy engine's worker threads and completion mailboxes.
 *
 * A pool is a FIFO of vdk_work items under one mutex and a condition
 * variable, drained by a fixed set of threads. A thread takes an item, runs
 * it, and posts it to the item's mailbox. A mailbox is a locked FIFO plus a
 * uv_async_t: posting appends and calls uv_async_send (coalesced by libuv),
 * and the async callback, on the loop thread, takes the whole list at once
 * and delivers the items in order. Wake-ups after vdk_mailbox_close are
 * dropped under the mailbox lock, so a late cancel request never touches a
 * closing handle.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "workers.h"

/* Stack of a worker thread: drivers keep sector-sized buffers on the stack,
 * compression keeps its state on the heap. */
#define WORKER_STACK ((size_t)1 << 20)
#define MAX_THREADS 128

struct vdk_workers {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    vdk_work *head, *tail;
    bool stop;
    unsigned nthreads;
    pthread_t threads[];
};

/* ---------------------------------------------------------------- pool */

static vdk_work *take(vdk_workers *p)
{
    vdk_work *w = NULL;
    pthread_mutex_lock(&p->lock);
    while (!p->head && !p->stop)
        pthread_cond_wait(&p->cond, &p->lock);
    if (p->head) {
        w = p->head;
        p->head = w->next;
        if (!p->head)
            p->tail = NULL;
        w->next = NULL;
    }
    pthread_mutex_unlock(&p->lock);
    return w;
}

static void *worker_main(void *arg)
{
    vdk_workers *p = arg;
    vdk_work *w;
    while ((w = take(p)) != NULL) {
        w->run(w);
        vdk_mailbox_post(w->mailbox, w);
    }
    return NULL;
}

static void stop_threads(vdk_workers *p, unsigned started)
{
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(p->threads[i], NULL);
}

vdk_workers *vdk_workers_new(unsigned nthreads)
{
    if (nthreads < 1 || nthreads > MAX_THREADS)
        return NULL;
    vdk_workers *p = calloc(1, sizeof *p + nthreads * sizeof(pthread_t));
    if (!p)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, WORKER_STACK);
    unsigned started = 0;
    while (started < nthreads &&
           pthread_create(&p->threads[started], &attr, worker_main, p) == 0)
        started++;
    pthread_attr_destroy(&attr);
    if (started < nthreads) {
        stop_threads(p, started);
        pthread_cond_destroy(&p->cond);
        pthread_mutex_destroy(&p->lock);
        free(p);
        return NULL;
    }
    p->nthreads = nthreads;
    return p;
}

void vdk_workers_submit(vdk_workers *p, vdk_work *w)
{
    w->next = NULL;
    pthread_mutex_lock(&p->lock);
    if (p->tail)
        p->tail->next = w;
    else
        p->head = w;
    p->tail = w;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void vdk_workers_free(vdk_workers *p)
{
    if (!p)
        return;
    stop_threads(p, p->nthreads);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ---------------------------------------------------------------- mailbox */

static void on_async(uv_async_t *h)
{
    vdk_mailbox *mb = h->data;
    pthread_mutex_lock(&mb->lock);
    vdk_work *w = mb->head;
    mb->head = mb->tail = NULL;
    pthread_mutex_unlock(&mb->lock);
    while (w) {
        vdk_work *next = w->next;
        w->next = NULL;
        mb->deliver(mb, w);
        w = next;
    }
    if (mb->wake)
        mb->wake(mb);
}

int vdk_mailbox_init(vdk_mailbox *mb, uv_loop_t *loop,
                     void (*deliver)(vdk_mailbox *, vdk_work *),
                     void (*wake)(vdk_mailbox *), void *owner)
{
    memset(mb, 0, sizeof *mb);
    int r = uv_async_init(loop, &mb->async, on_async);
    if (r < 0)
        return r;
    pthread_mutex_init(&mb->lock, NULL);
    mb->async.data = mb;
    mb->deliver = deliver;
    mb->wake = wake;
    mb->owner = owner;
    return 0;
}

void vdk_mailbox_post(vdk_mailbox *mb, vdk_work *w)
{
    w->next = NULL;
    pthread_mutex_lock(&mb->lock);
    if (mb->tail)
        mb->tail->next = w;
    else
        mb->head = w;
    mb->tail = w;
    if (!mb->closed)
        uv_async_send(&mb->async);
    pthread_mutex_unlock(&mb->lock);
}

void vdk_mailbox_poke(vdk_mailbox *mb)
{
    pthread_mutex_lock(&mb->lock);
    if (!mb->closed)
        uv_async_send(&mb->async);
    pthread_mutex_unlock(&mb->lock);
}

void vdk_mailbox_close(vdk_mailbox *mb, uv_close_cb close_cb)
{
    pthread_mutex_lock(&mb->lock);
    mb->closed = true;
    pthread_mutex_unlock(&mb->lock);
    uv_close((uv_handle_t *)&mb->async, close_cb);
}

void vdk_mailbox_fini(vdk_mailbox *mb)
{
    pthread_mutex_destroy(&mb->lock);
}
