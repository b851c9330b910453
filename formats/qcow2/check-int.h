/*
 * check-int.h - the state shared by the qcow2 check and repair files:
 * check.c (the driver slot: order of the steps, report, repair on the
 * in-memory state), check-scan.c (counting every reference, checking L1/L2
 * entries), check-refs.c (comparing with the on-disk refcounts, COPIED
 * flags), check-snap.c (the snapshot table, read leniently) and
 * check-apply.c (making the planned fixes durable, in a crash-safe order).
 *
 * A check counts what qemu-img check counts, in the same order, so that the
 * numbers match. A repair (VDK_CHECK_FIX_ERRORS) plans while it scans: a
 * reference it will clear is not counted, a snapshot it will drop is not
 * scanned, so the counts describe the image as it will be once the plan is
 * applied. Nothing is written until the whole plan is known.
 */
#ifndef VDK_QCOW2_CHECK_INT_H
#define VDK_QCOW2_CHECK_INT_H

#include "qcow2.h"

/* Reserved bits of entries (as qemu checks them). */
#define QC_L1_RESERVED UINT64_C(0x7f000000000001ff)
#define QC_L2_RESERVED UINT64_C(0x3f000000000001fe)
#define QC_RT_RESERVED UINT64_C(0x1ff)
#define QC_BITMAP_ALLOC UINT64_C(0xffffffff)

/* Files with more clusters than this are not checked (as qemu: INT_MAX). */
#define QC_MAX_CLUSTERS (UINT64_C(1) << 31)

/* An entry the repair rewrites: 8 bytes at where (L1 entry, L2 word), or 16
 * with the extended L2 bitmap. */
typedef struct qc_fix {
    uint64_t where;
    uint64_t word, bitmap;
    uint8_t len;
    uint8_t late; /* COPIED set: only once the refcounts are durable */
    uint32_t seq; /* order made (the last fix of an entry wins) */
} qc_fix;

/* A refcount the repair sets in place (no rebuild). */
typedef struct qc_rcfix {
    uint64_t cluster;
    uint64_t value;
} qc_rcfix;

/* A snapshot table entry as the check reads it. */
typedef struct qc_snap {
    uint64_t l1_offset;
    uint32_t l1_size;
    uint32_t extra_size;   /* as stored (maybe truncated to the limit on repair) */
    uint64_t entry_offset; /* where the entry starts */
    uint64_t entry_len;    /* bytes, unpadded */
    char id[64], name[128];
    bool drop;             /* the repair drops it */
    bool bad_l1;           /* its L1 table cannot be scanned */
} qc_snap;

typedef struct qc_check {
    qcow2_state *s;
    vdk_check_report *rep;
    unsigned mode;
    bool fix_errors, fix_leaks, dry, fixing; /* fixing: writes will be made */
    bool plan;            /* repair planning: bad references are not counted */

    uint64_t file_size;
    uint64_t nb;          /* clusters the arrays cover */
    uint32_t *ref;        /* references per cluster */
    uint8_t *flags;       /* per cluster: QC_F_* */
    uint64_t highest;     /* last cluster with a refcount or a reference */
    bool rebuild;         /* the refcount structure needs a rebuild */
    bool copied_slow;     /* run the exact COPIED pass */
    uint64_t rb_errors;   /* refblock problems found (rebuild-only fixes) */

    uint8_t *buf;         /* one cluster (an L2 table) */
    uint8_t *rbbuf;       /* one cluster (a refcount block) */
    uint8_t *l1buf;       /* an L1 table */

    qc_fix *fixes;
    size_t nfixes, capfixes, nsorted; /* [0, nsorted) sorted by offset */
    qc_rcfix *rcfixes;
    size_t nrcfixes, caprcfixes;

    /* Snapshot table as read from the header (not the open state). */
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;
    qc_snap *snaps;
    uint32_t nsnaps;       /* entries read */
    bool snap_rewrite;     /* the repair writes a new snapshot table */
    bool snap_failed;      /* the table could not be read (check error) */

    /* Counts that decide the report. */
    uint64_t corruptions, corruptions_fixed, leaks, leaks_fixed, check_errors;
} qc_check;

/* Per-cluster flags. */
#define QC_F_COPIED 0x1   /* an active entry with COPIED set references it */
#define QC_F_UNCOPIED 0x2 /* an active entry without COPIED references it */
#define QC_F_ONE 0x4      /* its refcount after the check's fixes is 1 */
#define QC_F_META 0x8     /* fixed metadata (header, tables): entries pointing here are bad */
#define QC_F_L2 0x10      /* an L2 table of some L1 table (repair planning) */

/* check.c: record a problem found; fixed says whether the repair fixes it. */
void qc_problem(qc_check *c, int kind, bool fixed, int fix, uint64_t offset, uint64_t count,
                const char *fmt, ...) __attribute__((format(printf, 7, 8)));
int qc_add_fix(qc_check *c, uint64_t where, uint64_t word, uint64_t bitmap, unsigned len,
               bool late, vdk_error *err);
const qc_fix *qc_find_fix(const qc_check *c, uint64_t where);
void qc_sort_fixes(qc_check *c);
/* Read len bytes at off; bytes past the end of the file read as zeros. */
int qc_pread(qc_check *c, void *buf, uint64_t len, uint64_t off, vdk_error *err);

/* check-scan.c */
int qc_count_references(qc_check *c, vdk_error *err);
/* The value an entry the repair clears gets (reads as zeros where it can). */
void qc_cleared_entry(const qc_check *c, uint64_t *word, uint64_t *bitmap);

/* check-refs.c */
int qc_compare(qc_check *c, vdk_error *err);
int qc_check_copied(qc_check *c, vdk_error *err);
int qc_disk_refcount(qc_check *c, uint64_t cluster, uint64_t *rc, vdk_error *err);

/* check-snap.c */
int qc_read_snapshots(qc_check *c, vdk_error *err);
void qc_free_snapshots(qc_check *c);
uint64_t qc_snapshot_table_bytes(const qc_check *c);
int qc_write_snapshot_table(qc_check *c, uint64_t off, vdk_error *err);

/* check-apply.c */
int qc_apply(qc_check *c, vdk_error *err);

#endif /* VDK_QCOW2_CHECK_INT_H */
