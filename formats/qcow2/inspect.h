/*
 * inspect.h - shared between the qcow2 inspection files: inspect.c (the
 * driver's inspect slot, the header, extension, snapshot, L1, L2, refcount
 * and explain queries) and inspect-scan.c (queries that walk every table:
 * refmap, stats, layout).
 *
 * Every query runs with s->lock held and only reads: tables come through
 * the driver's own lookup code (qcow2_l2_get, qcow2_lookup, qcow2_decode,
 * qcow2_refcount_get), so an entry inspected here is decoded exactly as a
 * read would decode it.
 */
#ifndef VDK_QCOW2_INSPECT_H
#define VDK_QCOW2_INSPECT_H

#include "qcow2.h"

typedef int (*qcow2_query_fn)(qcow2_state *s, const int64_t *args, size_t nargs,
                              vdk_emitter *out, vdk_error *err);

/* Argument i, or dflt when absent. */
static inline int64_t qcow2_arg(const int64_t *args, size_t nargs, size_t i, int64_t dflt)
{
    return i < nargs ? args[i] : dflt;
}

/* An L1 table in host byte order (malloc'd) with its place: the active one
 * (snap < 0) or snapshot snap's. */
typedef struct qcow2_l1view {
    uint64_t *e;
    uint64_t n;
    uint64_t offset;
    int snap; /* -1: active */
} qcow2_l1view;
int qcow2_l1view_load(qcow2_state *s, int64_t snap, qcow2_l1view *v, vdk_error *err);
void qcow2_l1view_free(qcow2_l1view *v);
/* "active" or "snapshot ID (NAME)" into buf. */
const char *qcow2_owner_name(const qcow2_state *s, int snap, char *buf, size_t n);
/* Fetch an L2 table by offset (validated) through the L2 cache; put it back
 * with qcow2_l2_put. */
int qcow2_l2_fetch(qcow2_state *s, uint64_t l1_index, uint64_t off, uint8_t **t,
                   vdk_error *err);

/* inspect-scan.c */
int qcow2_q_refmap(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *out,
                   vdk_error *err);
int qcow2_q_stats(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *out,
                  vdk_error *err);
int qcow2_q_layout(qcow2_state *s, const int64_t *args, size_t nargs, vdk_emitter *out,
                   vdk_error *err);

#endif /* VDK_QCOW2_INSPECT_H */
