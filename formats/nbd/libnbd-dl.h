/*
 * libnbd-dl.h - libnbd, loaded on first use.
 *
 * libnbd pulls in gnutls, libxml2 and ICU: linking it would make every vdk
 * command load some twenty libraries at start-up (about half of vdk's start
 * time) whether or not it touches NBD. Instead the driver calls libnbd
 * through this table of function pointers, filled by vdk_libnbd_load() the
 * first time an NBD name is opened. The macros below make the driver's code
 * read as plain libnbd calls. Include this header instead of <libnbd.h>.
 */
#ifndef VDK_LIBNBD_DL_H
#define VDK_LIBNBD_DL_H

#include <libnbd.h>

#include "driver.h"

/* Every libnbd function the driver uses. */
#define VDK_LIBNBD_FUNCS(X)                                                        \
    X(nbd_add_meta_context) X(nbd_aio_block_status) X(nbd_aio_connect_tcp)         \
    X(nbd_aio_connect_unix) X(nbd_aio_connect_uri) X(nbd_aio_disconnect)           \
    X(nbd_aio_flush) X(nbd_aio_get_direction) X(nbd_aio_get_fd)                    \
    X(nbd_aio_is_closed) X(nbd_aio_is_connecting) X(nbd_aio_is_dead)               \
    X(nbd_aio_is_ready) X(nbd_aio_notify_read) X(nbd_aio_notify_write)             \
    X(nbd_aio_pread) X(nbd_aio_pwrite) X(nbd_aio_trim) X(nbd_aio_zero)             \
    X(nbd_can_flush) X(nbd_can_meta_context) X(nbd_can_multi_conn) X(nbd_can_trim) \
    X(nbd_can_zero) X(nbd_close) X(nbd_create) X(nbd_get_block_size)               \
    X(nbd_get_errno) X(nbd_get_error) X(nbd_get_size) X(nbd_is_read_only)          \
    X(nbd_poll) X(nbd_set_export_name) X(nbd_set_pread_initialize)                 \
    X(nbd_set_request_structured_replies)

struct vdk_libnbd {
#define VDK_LIBNBD_PTR(name) __typeof__(name) *name;
    VDK_LIBNBD_FUNCS(VDK_LIBNBD_PTR)
#undef VDK_LIBNBD_PTR
};
extern struct vdk_libnbd vdk_libnbd;

/* Load libnbd.so.0 and resolve every function (once; thread-safe). A
 * missing library or symbol is an error naming it. */
int vdk_libnbd_load(vdk_error *err);

#ifndef VDK_LIBNBD_DL_IMPL
#define nbd_add_meta_context (vdk_libnbd.nbd_add_meta_context)
#define nbd_aio_block_status (vdk_libnbd.nbd_aio_block_status)
#define nbd_aio_connect_tcp (vdk_libnbd.nbd_aio_connect_tcp)
#define nbd_aio_connect_unix (vdk_libnbd.nbd_aio_connect_unix)
#define nbd_aio_connect_uri (vdk_libnbd.nbd_aio_connect_uri)
#define nbd_aio_disconnect (vdk_libnbd.nbd_aio_disconnect)
#define nbd_aio_flush (vdk_libnbd.nbd_aio_flush)
#define nbd_aio_get_direction (vdk_libnbd.nbd_aio_get_direction)
#define nbd_aio_get_fd (vdk_libnbd.nbd_aio_get_fd)
#define nbd_aio_is_closed (vdk_libnbd.nbd_aio_is_closed)
#define nbd_aio_is_connecting (vdk_libnbd.nbd_aio_is_connecting)
#define nbd_aio_is_dead (vdk_libnbd.nbd_aio_is_dead)
#define nbd_aio_is_ready (vdk_libnbd.nbd_aio_is_ready)
#define nbd_aio_notify_read (vdk_libnbd.nbd_aio_notify_read)
#define nbd_aio_notify_write (vdk_libnbd.nbd_aio_notify_write)
#define nbd_aio_pread (vdk_libnbd.nbd_aio_pread)
#define nbd_aio_pwrite (vdk_libnbd.nbd_aio_pwrite)
#define nbd_aio_trim (vdk_libnbd.nbd_aio_trim)
#define nbd_aio_zero (vdk_libnbd.nbd_aio_zero)
#define nbd_can_flush (vdk_libnbd.nbd_can_flush)
#define nbd_can_meta_context (vdk_libnbd.nbd_can_meta_context)
#define nbd_can_multi_conn (vdk_libnbd.nbd_can_multi_conn)
#define nbd_can_trim (vdk_libnbd.nbd_can_trim)
#define nbd_can_zero (vdk_libnbd.nbd_can_zero)
#define nbd_close (vdk_libnbd.nbd_close)
#define nbd_create (vdk_libnbd.nbd_create)
#define nbd_get_block_size (vdk_libnbd.nbd_get_block_size)
#define nbd_get_errno (vdk_libnbd.nbd_get_errno)
#define nbd_get_error (vdk_libnbd.nbd_get_error)
#define nbd_get_size (vdk_libnbd.nbd_get_size)
#define nbd_is_read_only (vdk_libnbd.nbd_is_read_only)
#define nbd_poll (vdk_libnbd.nbd_poll)
#define nbd_set_export_name (vdk_libnbd.nbd_set_export_name)
#define nbd_set_pread_initialize (vdk_libnbd.nbd_set_pread_initialize)
#define nbd_set_request_structured_replies (vdk_libnbd.nbd_set_request_structured_replies)
#endif

#endif /* VDK_LIBNBD_DL_H */
