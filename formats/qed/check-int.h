/*
 * check-int.h - the consistency scan's state, shared by check.c (the scan
 * and the report) and repair.c (applying the planned fixes, compacting
 * leaked space). Private to those two files.
 */
#ifndef VDK_QED_CHECK_INT_H
#define VDK_QED_CHECK_INT_H

#include "qed.h"

/* A bitmap over clusters, in an unreserved anonymous mapping (untouched
 * pages cost no memory). */
typedef struct qed_bitmap {
    uint64_t *w;
    size_t bytes;
} qed_bitmap;

int qed_bm_init(qed_bitmap *b, uint64_t nbits, vdk_error *err);
void qed_bm_free(qed_bitmap *b);
static inline bool qed_bm_test(const qed_bitmap *b, uint64_t i)
{
    return b->w[i / 64] >> (i % 64) & 1;
}
static inline void qed_bm_set(qed_bitmap *b, uint64_t i)
{
    b->w[i / 64] |= UINT64_C(1) << (i % 64);
}
static inline void qed_bm_reset(qed_bitmap *b, uint64_t i)
{
    b->w[i / 64] &= ~(UINT64_C(1) << (i % 64));
}

typedef struct qed_scan {
    qed_state *s;
    qed_check_report *rep; /* where problems are recorded; NULL: not recorded */
    unsigned repair;       /* QED_REPAIR_* the plan is for */
    bool apply;            /* make the planned fixes while scanning */
    bool qemu_order;       /* each table right after its L1 entry, as qemu-img */
    uint64_t nclusters;    /* whole clusters in the file */
    uint64_t file_bytes;   /* nclusters in bytes */
    qed_bitmap meta;       /* header, L1 table, valid L2 tables */
    qed_bitmap data;       /* referenced data clusters */
    qed_bitmap good;       /* L1 entries whose table is valid (by L1 index) */
    uint64_t copy_budget;  /* clusters repair may copy */
    uint64_t copies;       /* copies planned (or made) */
    uint64_t copy_next;    /* apply: where the next copy goes */
    uint64_t end;          /* end of the last referenced cluster */
    uint64_t unfixed;      /* corruptions the plan leaves alone */
    uint8_t *buf;          /* apply: one cluster for copies */
} qed_scan;

int qed_scan_init(qed_scan *sc, qed_state *s, unsigned repair, qed_check_report *rep,
                  vdk_error *err);
void qed_scan_free(qed_scan *sc);
/* Scan (or, with sc->apply, fix) every table; leaks are not counted. */
int qed_scan_run(qed_scan *sc, vdk_error *err);

/* repair.c: make the plan's fixes durable; then, when reclaiming, move
 * clusters into leaked space and cut the file. rep's leak counts are
 * updated to what remains. */
int qed_repair_apply(qed_scan *plan, vdk_error *err);
int qed_reclaim(qed_state *s, qed_check_report *rep, uint64_t max_move, vdk_error *err);

/* Bytes the repair on open may move to fill leaked space (an open must not
 * turn into a long copy); an explicit repair has no limit. */
#define QED_OPEN_MOVE_BUDGET (UINT64_C(256) << 20)

#endif /* VDK_QED_CHECK_INT_H */
