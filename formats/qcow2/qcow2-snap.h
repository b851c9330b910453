/*
 * qcow2-snap.h - private interfaces of the qcow2 internal-snapshot files:
 * snapshot.c (the table), snapshot-delta.c (refcount deltas and table
 * walks), snapshot-commit.c (the atomic metadata switch), snapshot-ops.c
 * (the driver slots) and vmstate.c (VM states).
 *
 * Every snapshot operation is one transaction: the new metadata (active L1
 * table, the active L2 tables whose "copied" flags change, the refcount
 * blocks whose counts change, the refcount table, the snapshot table) is
 * written to new clusters, and one 48-byte write of header bytes 24-71
 * (size, L1, refcount table and snapshot table fields, all in one sector)
 * switches to it. The old structures are freed afterwards; a crash before
 * that leaks them, nothing worse.
 */
#ifndef VDK_QCOW2_SNAP_H
#define VDK_QCOW2_SNAP_H

#include "qcow2.h"

/* snapshot.c */
void qcow2_snapshot_entry_free(qcow2_snapshot *sn);
bool qcow2_utf8_valid(const char *p, size_t len);
int qcow2_snapshot_find(const qcow2_state *s, const char *id);
int qcow2_snapshot_find_name(const qcow2_state *s, const char *name);
void qcow2_snapshot_next_id(const qcow2_state *s, char *buf, size_t len);
uint64_t qcow2_snapshot_table_size(const qcow2_snapshot *list, uint32_t n);
void qcow2_snapshot_table_build(const qcow2_snapshot *list, uint32_t n, uint8_t *buf);

/* snapshot-delta.c: refcount changes of a transaction, by host cluster. */
typedef struct qcow2_deltas {
    uint32_t chunk_bits;  /* clusters per chunk: 1 << chunk_bits (inside one block) */
    size_t cap, n;        /* hash slots, chunks in use */
    uint64_t *keys;       /* chunk index + 1; 0 = empty slot */
    int32_t **vals;       /* per chunk: a delta per cluster */
    uint64_t last_key;    /* the chunk used last (a lookup cache) */
    int32_t *last;
} qcow2_deltas;

/* Refcount lookups that keep the last refcount block referenced. */
typedef struct qcow2_rc_cursor {
    uint64_t ti;
    uint8_t *blk;
} qcow2_rc_cursor;
int qcow2_rc_cursor_get_slow(qcow2_state *s, qcow2_rc_cursor *c, uint64_t cluster,
                             uint64_t *rc, vdk_error *err);
/* Inline while the cursor holds the cluster's block: every per-cluster walk
 * of a snapshot transaction goes through here. */
static inline int qcow2_rc_cursor_get(qcow2_state *s, qcow2_rc_cursor *c, uint64_t cluster,
                                      uint64_t *rc, vdk_error *err)
{
    if (c->blk && c->ti == cluster >> s->rb_bits) {
        *rc = qcow2_rb_get(s, c->blk, cluster & ((UINT64_C(1) << s->rb_bits) - 1));
        return 0;
    }
    return qcow2_rc_cursor_get_slow(s, c, cluster, rc, err);
}
void qcow2_rc_cursor_put(qcow2_state *s, qcow2_rc_cursor *c);

void qcow2_deltas_init(qcow2_state *s, qcow2_deltas *d);
void qcow2_deltas_free(qcow2_deltas *d);
int qcow2_deltas_add_slow(qcow2_deltas *d, uint64_t cluster, int32_t delta, vdk_error *err);
int32_t qcow2_deltas_get_slow(const qcow2_deltas *d, uint64_t cluster);
/* Add delta to a cluster's change; inline while it is in the chunk used last. */
static inline int qcow2_deltas_add(qcow2_deltas *d, uint64_t cluster, int32_t delta,
                                   vdk_error *err)
{
    if (d->last && (cluster >> d->chunk_bits) + 1 == d->last_key) {
        int32_t *v = &d->last[cluster & ((UINT64_C(1) << d->chunk_bits) - 1)];
        if ((delta > 0 && *v <= INT32_MAX - delta) || (delta < 0 && *v >= INT32_MIN - delta)) {
            *v += delta;
            return 0;
        }
    }
    return qcow2_deltas_add_slow(d, cluster, delta, err);
}
/* A cluster's change so far (0 when none). */
static inline int32_t qcow2_deltas_get(const qcow2_deltas *d, uint64_t cluster)
{
    if (d->last && (cluster >> d->chunk_bits) + 1 == d->last_key)
        return d->last[cluster & ((UINT64_C(1) << d->chunk_bits) - 1)];
    return qcow2_deltas_get_slow(d, cluster);
}
/* The deltas of chunk (cluster >> chunk_bits), or NULL when it has none. */
const int32_t *qcow2_deltas_chunk(const qcow2_deltas *d, uint64_t chunk);
/* The L2 table at off and every cluster its entries reference, by delta. */
int qcow2_deltas_add_table(qcow2_state *s, qcow2_deltas *d, uint64_t l1_index, uint64_t off,
                           int32_t delta, vdk_error *err);
/* Every L2 table of l1[0..n) and what it references. */
int qcow2_deltas_add_l1(qcow2_state *s, qcow2_deltas *d, const uint64_t *l1, uint64_t n,
                        int32_t delta, vdk_error *err);
/* A snapshot's L1 table, read whole into host byte order (*l1 freed by the caller). */
int qcow2_snapshot_read_l1(qcow2_state *s, const qcow2_snapshot *sn, uint64_t **l1,
                           vdk_error *err);
/* Refcount of a cluster after the deltas (c: a cursor, or NULL). */
static inline int qcow2_final_refcount(qcow2_state *s, const qcow2_deltas *d,
                                       qcow2_rc_cursor *c, uint64_t cluster, int64_t *out,
                                       vdk_error *err)
{
    uint64_t live;
    int r = c ? qcow2_rc_cursor_get(s, c, cluster, &live, err)
              : qcow2_refcount_get(s, cluster, &live, err);
    *out = (int64_t)live + qcow2_deltas_get(d, cluster);
    return r;
}

/* snapshot-commit.c */
typedef struct qcow2_txn {
    uint64_t *l1;          /* the new active L1 (offsets; flags are decided here) */
    uint32_t l1_size;
    uint64_t size;         /* the new virtual size */
    qcow2_snapshot *snaps; /* the new snapshot list (owned), when new_table */
    uint32_t nsnaps;
    bool new_table;
    qcow2_deltas d;        /* refcount changes that take effect at the switch */
    uint64_t *drop_l1;     /* apply: the old active L1, whose references die after */
    uint32_t drop_l1_size;
    struct qcow2_range { uint64_t off, len; } *post; /* freed after the switch */
    size_t npost, cap_post;
    bool switched;         /* set by the commit once the header points at the new state */
} qcow2_txn;

void qcow2_txn_init(qcow2_state *s, qcow2_txn *t);
void qcow2_txn_free(qcow2_txn *t);
int qcow2_txn_free_after(qcow2_txn *t, uint64_t off, uint64_t len, vdk_error *err);
int qcow2_txn_commit(qcow2_state *s, qcow2_txn *t, vdk_error *err);
/* Wait until no operation runs I/O outside the lock, then flush metadata. */
int qcow2_quiesce(qcow2_state *s, vdk_error *err);

/* vmstate.c: the staged state's L2 tables, written for a new snapshot. */
int qcow2_vmstate_tables(qcow2_state *s, uint64_t size, uint64_t **entries, uint32_t *n,
                         vdk_error *err);
/* After a snapshot took the staged state (its first ntables tables): free
 * what it did not take and forget the state. */
void qcow2_vmstate_consumed(qcow2_state *s, uint32_t ntables);
/* L1 index where a disk of size bytes keeps its VM state. */
uint64_t qcow2_vmstate_l1_index(const qcow2_state *s, uint64_t size);

#endif /* VDK_QCOW2_SNAP_H */
