/*
 * nbd.h - private header of the NBD protocol driver (formats/nbd/).
 *
 * conn.c owns connections: connecting with a deadline, one dispatcher
 * thread per connection that drives libnbd's state machine, and the
 * submission of commands whose completions wake the calling thread.
 * nbd.c owns the driver: URI parsing, the export's properties, splitting
 * requests to the server's limits, alignment, and the block status cache.
 */
#ifndef VDK_NBD_H
#define VDK_NBD_H

#include "libnbd-dl.h"
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "driver.h"

/* Most connections to one export (used only when the server offers
 * multi-conn). */
#define VNBD_MAX_CONNS 8

/* The commands a call may send. */
enum vnbd_op { VNBD_OP_READ, VNBD_OP_WRITE, VNBD_OP_ZERO, VNBD_OP_TRIM, VNBD_OP_FLUSH, VNBD_OP_STATUS };

/* Where to connect: a URI for libnbd, or qemu's legacy "nbd:" syntax. */
typedef struct vnbd_target {
    const char *uri;    /* libnbd URI, or NULL for the fields below */
    char *unix_path;    /* nbd:unix:PATH */
    char *host, *port;  /* nbd:HOST:PORT */
    char *export_name;  /* :exportname=NAME (default "") */
} vnbd_target;

/*
 * One driver call waiting for its commands. Completion callbacks run on a
 * dispatcher thread (or, when the connection dies during submission, on the
 * submitting thread) and count pending down under mu.
 */
typedef struct vnbd_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;     /* commands submitted and not yet completed */
    int error;       /* errno of the first failed command, 0 if none */
    enum vnbd_op op;  /* of that command */
    uint64_t off;    /* its range */
    uint64_t len;
    char cause[256]; /* why it failed, for the message */
} vnbd_wait;

struct vnbd_conn;

/* Receives base:allocation extents of a block status command: n pairs of
 * (length, NBD state flags) describing the export from off on. */
typedef void vnbd_extent_fn(void *arg, uint64_t off, const uint32_t *entries, size_t n);

/* One NBD command of a call; lives until its completion has run. */
typedef struct vnbd_cmd {
    vnbd_wait *w;
    struct vnbd_conn *conn;
    enum vnbd_op op;
    uint64_t off;
    uint64_t len;
    vnbd_extent_fn *fn; /* STATUS only */
    void *arg;
} vnbd_cmd;

/* conn.c */
typedef struct vnbd_conn vnbd_conn;
int vnbd_conn_open(const vnbd_target *t, unsigned timeout_s, vnbd_conn **out, vdk_error *err);
struct nbd_handle *vnbd_conn_handle(vnbd_conn *c);
/* Commands in flight on c (a hint: it changes as you read it). */
int vnbd_conn_load(vnbd_conn *c);
/* Start the dispatcher: from now on only vnbd_conn_submit talks to the server. */
int vnbd_conn_start(vnbd_conn *c, vdk_error *err);
/* Ask the dispatcher to say goodbye to the server, without waiting. */
void vnbd_conn_begin_close(vnbd_conn *c);
/* Disconnect politely (bounded wait), stop the dispatcher, free. NULL is ok. */
void vnbd_conn_close(vnbd_conn *c);

void vnbd_wait_init(vnbd_wait *w);
void vnbd_wait_destroy(vnbd_wait *w);
/* Block until every command submitted under w has completed. */
void vnbd_wait_all(vnbd_wait *w);
/*
 * Send one command for cmd (its w, op, off, len set; conn filled here). buf
 * is the data of READ/WRITE; flags are LIBNBD_CMD_FLAG_*; fn/arg receive
 * STATUS extents. Returns 0 when the command is on its way (its completion
 * will count w down), or a negative errno with w's error recorded.
 */
int vnbd_conn_submit(vnbd_conn *c, vnbd_cmd *cmd, void *buf, uint32_t flags,
                    vnbd_extent_fn *fn, void *arg);

#endif /* VDK_NBD_H */
