/*
 * conn.c - NBD connections: connecting with a deadline, and one dispatcher
 * thread per connection so that many commands are in flight on it at once.
 *
 * A driver call (on any worker thread) submits its commands with libnbd's
 * aio calls, which queue the command and send what the socket takes at
 * once, then wakes the dispatcher through an eventfd and sleeps on its own
 * condition variable. The dispatcher polls the socket in the direction
 * libnbd asks for and feeds it nbd_aio_notify_read/write; libnbd runs each
 * command's completion callback there, which counts the call's pending
 * commands down and wakes it. libnbd's handle lock makes submitting and
 * notifying from different threads safe.
 *
 * Nothing can hang: when the connection dies (server killed, socket reset)
 * libnbd fails every queued and in-flight command with ENOTCONN, and the
 * message keeps libnbd's reason (nbd_get_error on the thread that saw it).
 * When a connection with commands in flight shows no socket activity for
 * timeout_s seconds (five times that when only flushes are in flight, as
 * they may legitimately take long), the dispatcher shuts the socket down,
 * which fails them the same way.
 * Connecting has the same deadline.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "nbd.h"

/* A flush may take long on a server with much cached data: it gets this
 * many times the timeout of other commands. */
#define VNBD_FLUSH_TIMEOUT_FACTOR 5

struct vnbd_conn {
    struct nbd_handle *h;
    int fd;              /* the socket, once connected */
    int wake_fd;         /* eventfd: a command was submitted, or close */
    unsigned timeout_s;  /* 0: no inactivity timeout */
    pthread_t thread;
    bool started;
    atomic_bool closing;
    pthread_mutex_t mu;  /* guards the fields below */
    atomic_int load;     /* = inflight, readable without the lock */
    int inflight;        /* commands submitted and not completed */
    int flushes;         /* of which flushes */
    double activity;     /* monotonic seconds of the last socket activity */
    bool timed_out;      /* the dispatcher gave up on the server */
    char reason[200];    /* why the connection died, once it has */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *vnbd_error_text(void)
{
    const char *m = nbd_get_error();
    return m && *m ? m : "unknown libnbd error";
}

/* ---------------------------------------------------------------- connecting */

static int configure(struct nbd_handle *h, const vnbd_target *t)
{
    if (nbd_set_request_structured_replies(h, true) < 0 ||
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
        nbd_set_pread_initialize(h, false) < 0)
        return -1;
    if (t->export_name && nbd_set_export_name(h, t->export_name) < 0)
        return -1;
    if (t->uri)
        return nbd_aio_connect_uri(h, t->uri);
    if (t->unix_path)
        return nbd_aio_connect_unix(h, t->unix_path);
    return nbd_aio_connect_tcp(h, t->host, t->port);
}

/* Run the handshake until the export is ready, for at most timeout_s. */
static int handshake(vnbd_conn *c, vdk_error *err)
{
    double deadline = now_s() + (c->timeout_s ? c->timeout_s : 1e9);
    while (nbd_aio_is_connecting(c->h)) {
        double left = deadline - now_s();
        if (left <= 0)
            return vdk_fail(err, -ETIMEDOUT,
                            "nbd: no answer from the server within %u seconds while "
                            "connecting", c->timeout_s);
        int ms = left > 1.0 ? 1000 : (int)(left * 1000) + 1;
        if (nbd_poll(c->h, ms) < 0)
            return vdk_fail(err, -ECONNREFUSED, "nbd: cannot connect: %s", vnbd_error_text());
    }
    if (!nbd_aio_is_ready(c->h))
        return vdk_fail(err, -ECONNREFUSED, "nbd: cannot connect: the server ended the "
                        "handshake (%s)", nbd_aio_is_dead(c->h) ? vnbd_error_text() : "closed");
    return 0;
}

/* Small requests must not wait for Nagle; a peer that vanished from the
 * network must show up as an error, eventually. */
static void tune_socket(int fd)
{
    struct sockaddr_storage sa;
    socklen_t n = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &n) < 0 ||
        (sa.ss_family != AF_INET && sa.ss_family != AF_INET6))
        return;
    int one = 1, idle = 30, intvl = 10, cnt = 6;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

int vnbd_conn_open(const vnbd_target *t, unsigned timeout_s, vnbd_conn **out, vdk_error *err)
{
    *out = NULL;
    vnbd_conn *c = calloc(1, sizeof *c);
    if (!c)
        return vdk_fail(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    c->timeout_s = timeout_s;
    c->fd = c->wake_fd = -1;
    int r = 0;
    c->h = nbd_create();
    if (!c->h)
        r = vdk_fail(err, -ENOMEM, "nbd: cannot create a handle: %s", vnbd_error_text());
    else if (configure(c->h, t) < 0)
        r = vdk_fail(err, nbd_get_errno() ? -nbd_get_errno() : -EIO, "nbd: cannot connect: %s",
                     vnbd_error_text());
    if (r == 0)
        r = handshake(c, err);
    if (r == 0 && (c->fd = nbd_aio_get_fd(c->h)) < 0)
        r = vdk_fail(err, -EIO, "nbd: no socket: %s", vnbd_error_text());
    if (r < 0) {
        vnbd_conn_close(c);
        return r;
    }
    tune_socket(c->fd);
    *out = c;
    return 0;
}

struct nbd_handle *vnbd_conn_handle(vnbd_conn *c) { return c->h; }
int vnbd_conn_load(vnbd_conn *c) { return atomic_load(&c->load); }

/* ---------------------------------------------------------------- dispatcher */

static void wake(vnbd_conn *c)
{
    uint64_t one = 1;
    ssize_t n = write(c->wake_fd, &one, sizeof one);
    (void)n; /* a full counter still wakes the dispatcher */
}

/* Keep the first reason the connection died for (c->mu held). */
static void set_reason(vnbd_conn *c, const char *why)
{
    if (!c->reason[0]) {
        size_t n = strnlen(why, sizeof c->reason - 1);
        memcpy(c->reason, why, n);
        c->reason[n] = '\0';
    }
}

/* Give up on a server that stopped answering: the shutdown makes libnbd's
 * next read fail, which fails every command in flight. */
static void check_timeout(vnbd_conn *c)
{
    if (!c->timeout_s)
        return;
    pthread_mutex_lock(&c->mu);
    double limit = c->inflight > c->flushes ? c->timeout_s : VNBD_FLUSH_TIMEOUT_FACTOR * c->timeout_s;
    bool stuck = c->inflight > 0 && now_s() - c->activity > limit && !c->timed_out;
    if (stuck) {
        c->timed_out = true;
        char why[200];
        snprintf(why, sizeof why, "no answer from the server for %.0f seconds", limit);
        set_reason(c, why);
    }
    pthread_mutex_unlock(&c->mu);
    if (stuck)
        shutdown(c->fd, SHUT_RDWR);
}

static void note_activity(vnbd_conn *c)
{
    pthread_mutex_lock(&c->mu);
    c->activity = now_s();
    pthread_mutex_unlock(&c->mu);
}

/* One round: wait for the socket or a wake-up, then let libnbd move on.
 * Returns false when the dispatcher should stop. */
static bool dispatch_once(vnbd_conn *c, bool closing)
{
    unsigned dir = nbd_aio_get_direction(c->h);
    struct pollfd p[2] = {{.fd = c->fd}, {.fd = c->wake_fd, .events = POLLIN}};
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        p[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        p[0].events |= POLLOUT;
    int n = poll(p, 2, closing ? 100 : 1000);
    if (n < 0 && errno != EINTR)
        shutdown(c->fd, SHUT_RDWR); /* cannot happen; fail rather than spin */
    if (n <= 0)
        return true;
    if (p[1].revents & POLLIN) {
        uint64_t v;
        ssize_t r = read(c->wake_fd, &v, sizeof v);
        (void)r;
    }
    short re = p[0].revents;
    if (re)
        note_activity(c);
    /* A failure moves the handle to the dead state, which the loop sees;
     * the commands it failed already carry libnbd's reason. */
    int r = 0;
    if ((re & POLLIN) || ((re & (POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ)))
        r = nbd_aio_notify_read(c->h);
    else if (re & (POLLOUT | POLLHUP | POLLERR))
        r = nbd_aio_notify_write(c->h);
    if (r < 0) {
        pthread_mutex_lock(&c->mu);
        set_reason(c, vnbd_error_text());
        pthread_mutex_unlock(&c->mu);
    }
    return true;
}

static void *dispatcher(void *arg)
{
    vnbd_conn *c = arg;
    bool disc_sent = false;
    double close_deadline = 0;
    while (!nbd_aio_is_dead(c->h) && !nbd_aio_is_closed(c->h)) {
        bool closing = atomic_load(&c->closing);
        if (closing && !disc_sent) {
            /* A polite goodbye; the server then closes the socket. */
            disc_sent = true;
            close_deadline = now_s() + 2;
            if (nbd_aio_disconnect(c->h, 0) < 0)
                break;
        } else if (closing && now_s() > close_deadline) {
            break;
        }
        dispatch_once(c, closing);
        check_timeout(c);
    }
    return NULL;
}

int vnbd_conn_start(vnbd_conn *c, vdk_error *err)
{
    c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (c->wake_fd < 0)
        return vdk_fail(err, -errno, "nbd: eventfd: %s", strerror(errno));
    c->activity = now_s();
    int r = pthread_create(&c->thread, NULL, dispatcher, c);
    if (r != 0)
        return vdk_fail(err, -r, "nbd: cannot start a thread: %s", strerror(r));
    c->started = true;
    return 0;
}

void vnbd_conn_begin_close(vnbd_conn *c)
{
    if (c && c->started && !atomic_exchange(&c->closing, true))
        wake(c);
}

void vnbd_conn_close(vnbd_conn *c)
{
    if (!c)
        return;
    if (c->started) {
        vnbd_conn_begin_close(c);
        pthread_join(c->thread, NULL);
    }
    nbd_close(c->h);
    if (c->wake_fd >= 0)
        close(c->wake_fd);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* ---------------------------------------------------------------- waiting */

void vnbd_wait_init(vnbd_wait *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

void vnbd_wait_destroy(vnbd_wait *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

void vnbd_wait_all(vnbd_wait *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->pending > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

/* Count one command of w down; the first failure is kept. w and cmd may be
 * gone once this returns. */
static void wait_complete(vnbd_cmd *cmd, int error, const char *cause)
{
    vnbd_wait *w = cmd->w;
    pthread_mutex_lock(&w->mu);
    if (error && !w->error) {
        w->error = error;
        w->op = cmd->op;
        w->off = cmd->off;
        w->len = cmd->len;
        snprintf(w->cause, sizeof w->cause, "%s", cause);
    }
    if (--w->pending == 0)
        pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void conn_account(vnbd_conn *c, enum vnbd_op op, int delta)
{
    pthread_mutex_lock(&c->mu);
    if (delta > 0 && c->inflight == 0)
        c->activity = now_s(); /* an idle connection starts its clock now */
    c->inflight += delta;
    atomic_store(&c->load, c->inflight);
    if (op == VNBD_OP_FLUSH)
        c->flushes += delta;
    pthread_mutex_unlock(&c->mu);
}

/* The cause and code of a failure of the connection itself (c->mu held):
 * libnbd's reason when this thread has one, else that the server left. */
static int lost(vnbd_conn *c, char *cause, size_t size)
{
    const char *why = nbd_get_error();
    set_reason(c, why && *why ? why : "the server closed the connection");
    snprintf(cause, size, "connection lost: %s", c->reason);
    return c->timed_out ? ETIMEDOUT : EIO;
}

/* libnbd's completion callback. ENOTCONN is libnbd failing the commands of
 * a dead connection (servers never send it). */
static int cmd_done(void *user_data, int *error)
{
    vnbd_cmd *cmd = user_data;
    vnbd_conn *c = cmd->conn;
    char cause[224] = "";
    int e = *error;
    conn_account(c, cmd->op, -1);
    if (e == ENOTCONN) {
        pthread_mutex_lock(&c->mu);
        e = lost(c, cause, sizeof cause);
        pthread_mutex_unlock(&c->mu);
    } else if (e) {
        snprintf(cause, sizeof cause, "the server replied: %s", strerror(e));
    }
    wait_complete(cmd, e, cause);
    return 1; /* retire the command */
}

static int cmd_extents(void *user_data, const char *ctx, uint64_t off, uint32_t *entries,
                       size_t n, int *error)
{
    vnbd_cmd *cmd = user_data;
    if (!*error && cmd->fn && strcmp(ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) == 0)
        cmd->fn(cmd->arg, off, entries, n);
    return 0;
}

static int64_t issue(vnbd_conn *c, vnbd_cmd *cmd, void *buf, uint32_t flags)
{
    nbd_completion_callback done = {.callback = cmd_done, .user_data = cmd};
    switch (cmd->op) {
    case VNBD_OP_READ:
        return nbd_aio_pread(c->h, buf, cmd->len, cmd->off, done, flags);
    case VNBD_OP_WRITE:
        return nbd_aio_pwrite(c->h, buf, cmd->len, cmd->off, done, flags);
    case VNBD_OP_ZERO:
        return nbd_aio_zero(c->h, cmd->len, cmd->off, done, flags);
    case VNBD_OP_TRIM:
        return nbd_aio_trim(c->h, cmd->len, cmd->off, done, flags);
    case VNBD_OP_FLUSH:
        return nbd_aio_flush(c->h, done, flags);
    case VNBD_OP_STATUS: {
        nbd_extent_callback ext = {.callback = cmd_extents, .user_data = cmd};
        return nbd_aio_block_status(c->h, cmd->len, cmd->off, ext, done, flags);
    }
    }
    return -1;
}

int vnbd_conn_submit(vnbd_conn *c, vnbd_cmd *cmd, void *buf, uint32_t flags,
                    vnbd_extent_fn *fn, void *arg)
{
    cmd->conn = c;
    cmd->fn = fn;
    cmd->arg = arg;
    pthread_mutex_lock(&cmd->w->mu);
    cmd->w->pending++;
    pthread_mutex_unlock(&cmd->w->mu);
    conn_account(c, cmd->op, +1);
    /* Once queued, the completion runs exactly once, maybe before this
     * returns (a connection that dies while we send). */
    if (issue(c, cmd, buf, flags) < 0) {
        int e = nbd_get_errno() ? nbd_get_errno() : EIO;
        char cause[224];
        snprintf(cause, sizeof cause, "%s", vnbd_error_text());
        bool dead = nbd_aio_is_dead(c->h), closed = nbd_aio_is_closed(c->h);
        pthread_mutex_lock(&c->mu);
        if (dead || closed || c->reason[0]) {
            set_reason(c, dead ? cause : "the server closed the connection");
            snprintf(cause, sizeof cause, "connection lost: %s", c->reason);
            e = c->timed_out ? ETIMEDOUT : EIO;
        }
        pthread_mutex_unlock(&c->mu);
        conn_account(c, cmd->op, -1);
        wait_complete(cmd, e, cause);
        return -e;
    }
    wake(c);
    return 0;
}
