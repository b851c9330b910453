/*
 * qed.h - private header of the QED driver: on-disk layout, the driver's
 * in-memory state, and the functions its files share.
 *
 * Files: qed.c (driver table and entry points: probe, open, close, flush,
 * info; the need-check lifecycle), header.c (parse, validate and write the
 * header; create), table.c (L1 in memory, L2 tables through the core table
 * cache, entry validation, mapping guest ranges), io.c (reads, writes,
 * in-flight allocations), zero.c (write_zeroes, discard, block status),
 * resize.c (grow and shrink), measure.c (sizes of a new image), check.c
 * (consistency scan and report),
 * repair.c (applying fixes, compacting leaked space).
 *
 * Locking: one mutex (s->lock) guards the L1 table, the L2 cache, the
 * allocation pointer, the header fields that change (features, image_size)
 * and the in-flight list. Data I/O runs outside it. An allocating write
 * registers its guest clusters in s->allocs before it drops the lock; any
 * other request that would change the mapping of those clusters waits on
 * s->cond until it is gone. QED never frees a data cluster while the image
 * is open, so a host offset found under the lock stays valid outside it.
 *
 * Write ordering (crash consistency): new clusters are appended at the end
 * of the file; an L2 entry is written only after the data cluster it points
 * at is durable (the L2 cache flushes the file before it writes), and an L1
 * entry only after the L2 table it points at is durable. The need-check
 * feature bit is written and flushed before the first change of the
 * mapping, and cleared (after a full flush) when no allocation is in
 * flight. A crash therefore leaves at most leaked clusters, which the
 * check on the next read-write open reclaims where it can.
 */
#ifndef VDK_QED_H
#define VDK_QED_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "driver.h"

/* ---------------------------------------------------------------- on disk */

/*
 * Header (little-endian, at offset 0 of cluster 0, 64 bytes):
 *   0 u32 magic "QED\0"            4 u32 cluster_size (bytes, 2^12..2^26)
 *   8 u32 table_size (clusters,   12 u32 header_size (clusters before the
 *         power of two 1..16)              first regular cluster)
 *  16 u64 features                24 u64 compat_features
 *  32 u64 autoclear_features      40 u64 l1_table_offset (bytes, aligned)
 *  48 u64 image_size (bytes, multiple of 512)
 *  56 u32 backing_filename_offset (bytes from the start of the file)
 *  60 u32 backing_filename_size (bytes, not NUL-terminated)
 * The backing file name lies inside the first header_size clusters.
 *
 * Tables (L1 and L2) are table_size contiguous clusters of u64 entries,
 * little-endian: table_size * cluster_size / 8 entries. A guest offset
 * splits into L1 index | L2 index | offset in cluster. L1 entry: 0 =
 * no L2 table, else the table's offset. L2 entry: 0 = unallocated (read
 * the backing file or zeros), 1 = zero cluster (reads zeros, stops the
 * backing file), else the data cluster's offset. Offsets are multiples of
 * the cluster size (the low 12 bits are reserved and zero).
 */
#define QED_MAGIC 0x00444551u /* "QED\0" read as a little-endian u32 */
#define QED_HEADER_LEN 64u

#define QED_OFF_FEATURES 16
#define QED_OFF_AUTOCLEAR 32
#define QED_OFF_IMAGE_SIZE 48

#define QED_F_BACKING_FILE UINT64_C(0x01)
#define QED_F_NEED_CHECK UINT64_C(0x02)
#define QED_F_BACKING_FORMAT_NO_PROBE UINT64_C(0x04)
#define QED_F_KNOWN UINT64_C(0x07)
#define QED_AUTOCLEAR_KNOWN UINT64_C(0)

#define QED_MIN_CLUSTER_SIZE (UINT32_C(1) << 12)
#define QED_MAX_CLUSTER_SIZE (UINT32_C(1) << 26)
#define QED_DEFAULT_CLUSTER_SIZE (UINT32_C(1) << 16)
#define QED_MIN_TABLE_SIZE 1u
#define QED_MAX_TABLE_SIZE 16u
#define QED_DEFAULT_TABLE_SIZE 4u
/* Longest backing file name we accept (QEMU keeps names below 4096). */
#define QED_MAX_BACKING_NAME 4095u
/* Largest virtual size vdk handles (sizes are signed 64-bit in Lua). */
#define QED_MAX_IMAGE_SIZE (UINT64_C(1) << 62)

#define QED_ENTRY_UNALLOC UINT64_C(0)
#define QED_ENTRY_ZERO UINT64_C(1)

/* ---------------------------------------------------------------- in memory */

/* An allocation in flight: guest clusters [start, end) get new host clusters
 * or a new mapping; nobody else may change their mapping meanwhile. */
typedef struct qed_alloc {
    uint64_t start, end;
    struct qed_alloc *next;
} qed_alloc;

/* Decoded kinds of a guest cluster's mapping. */
enum qed_kind {
    QED_UNALLOC = 0, /* not defined here: backing file or zeros */
    QED_ZERO,        /* zero cluster */
    QED_DATA,        /* stored at host */
};

/* A run of guest bytes of one kind (with contiguous host offsets). */
typedef struct qed_map {
    int kind;
    uint64_t bytes;
    uint64_t host; /* QED_DATA: host offset of the first byte */
} qed_map;

typedef struct qed_state {
    vdk_image *img; /* NULL inside create */
    vdk_file *file;
    bool writable;

    pthread_mutex_t lock;
    pthread_cond_t cond;

    /* Header, as on disk (host byte order) plus derived geometry. */
    uint8_t hdr[QED_HEADER_LEN]; /* raw header bytes, kept in sync */
    uint32_t cluster_size;
    uint32_t cluster_bits;
    uint32_t table_size;     /* clusters per table */
    uint32_t header_size;    /* clusters */
    uint64_t features;
    uint64_t compat;
    uint64_t autoclear;
    uint64_t l1_offset;
    uint64_t image_size;
    uint64_t table_bytes;    /* table_size * cluster_size */
    uint64_t table_entries;  /* table_bytes / 8 */
    uint32_t table_bits;     /* log2(table_entries) */
    char *backing_name;

    /* L1 table, whole, host byte order; entries [l1_lo, l1_hi) unwritten. */
    uint64_t *l1;
    uint64_t l1_lo, l1_hi;
    vdk_cache *l2_cache;

    /* Allocation: the next new cluster goes here (cluster aligned). */
    uint64_t file_end;

    /* State. */
    qed_alloc *allocs;
    unsigned nallocs;
    bool need_check;  /* the bit is set on disk (or being set) */
    bool unchecked;   /* opened dirty without repair: never clear the bit */
    int broken;       /* sticky error after a failed metadata write */
} qed_state;

/* ---------------------------------------------------------------- helpers */

static inline uint64_t qed_header_end(const qed_state *s)
{
    return (uint64_t)s->header_size << s->cluster_bits;
}
static inline uint64_t qed_l1_index(const qed_state *s, uint64_t off)
{
    return off >> (s->cluster_bits + s->table_bits);
}
static inline uint64_t qed_l2_index(const qed_state *s, uint64_t off)
{
    return (off >> s->cluster_bits) & (s->table_entries - 1);
}
static inline uint64_t qed_l2_coverage(const qed_state *s)
{
    return s->table_entries << s->cluster_bits; /* guest bytes one L2 table maps */
}
static inline bool qed_has_backing(const qed_state *s) { return s->backing_name != NULL; }

/* Sticky failure of a metadata write: remember and return rc. */
int qed_set_broken(qed_state *s, int rc);
int qed_check_broken(const qed_state *s, vdk_error *err);

/* Creation options (qemu-img's names), as create and measure read them. */
typedef struct qed_create_opts {
    uint64_t cluster_size, table_size, size;
    const char *backing, *backing_fmt;
} qed_create_opts;

/* header.c */
int qed_read_create_opts(vdk_opts *opts, qed_create_opts *o, vdk_error *err);
int qed_check_new_size(qed_create_opts *o, vdk_error *err);
uint64_t qed_header_clusters(const qed_create_opts *o);
int qed_header_parse(qed_state *s, uint64_t file_size, vdk_error *err);
int qed_header_write(qed_state *s, vdk_error *err);
void qed_header_sync(qed_state *s);
int qed_create(vdk_file *file, const vdk_create_args *args, vdk_error *err);
uint64_t qed_max_image_size(uint32_t cluster_size, uint32_t table_size);

/* qed.c */
int qed_set_need_check(qed_state *s, vdk_error *err);
int qed_clear_need_check(qed_state *s, vdk_error *err);
int qed_meta_flush(qed_state *s, vdk_error *err);
void qed_wait_idle(qed_state *s);

/* table.c */
int qed_l1_load(qed_state *s, vdk_error *err);
int qed_l1_write(qed_state *s, vdk_error *err);
void qed_l1_set(qed_state *s, uint64_t index, uint64_t value);
int qed_check_table_offset(const qed_state *s, uint64_t off, uint64_t index,
                           vdk_error *err);
int qed_check_cluster_offset(const qed_state *s, uint64_t entry, uint64_t l2_offset,
                             uint64_t index, vdk_error *err);
int qed_l2_get(qed_state *s, uint64_t l1_index, uint8_t **table, vdk_error *err);
int qed_l2_get_for_update(qed_state *s, uint64_t l1_index, uint8_t **table,
                          vdk_error *err);
void qed_l2_put(qed_state *s, uint8_t **table);
int qed_entry_get(qed_state *s, uint64_t guest_cluster, uint64_t *entry, vdk_error *err);
int qed_entries_set(qed_state *s, uint64_t guest_cluster, uint64_t n, uint64_t first,
                    bool contiguous, vdk_error *err);
int qed_map_range(qed_state *s, uint64_t off, uint64_t max, qed_map *m, vdk_error *err);
uint64_t qed_alloc_clusters(qed_state *s, uint64_t n);
int qed_make_cache(qed_state *s, vdk_error *err);

/* io.c */
int qed_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err);
int qed_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off, vdk_error *err);
int qed_write(qed_state *s, const void *buf, size_t len, uint64_t off, vdk_error *err);
bool qed_alloc_conflict(const qed_state *s, uint64_t start, uint64_t end);
void qed_alloc_begin(qed_state *s, qed_alloc *a, uint64_t start, uint64_t end);
void qed_alloc_end(qed_state *s, qed_alloc *a);
int qed_backing_read(qed_state *s, void *buf, size_t len, uint64_t off, vdk_error *err);

/* zero.c */
int qed_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                     vdk_error *err);
int qed_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err);
/* What qed_zero_range does to each kind of cluster (see zero.c). */
enum qed_zero_mode {
    QED_ZR_ZERO,    /* make the range read as zeros (write_zeroes) */
    QED_ZR_DISCARD, /* whole clusters only: release data, keep the mapping kinds */
    QED_ZR_SCRUB,   /* zero stored data only (past the end after a shrink) */
};
int qed_zero_range(qed_state *s, uint64_t off, uint64_t len, int mode, bool unmap,
                   vdk_error *err);
int qed_block_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                     vdk_error *err);

/* measure.c */
int qed_measure(const vdk_measure_args *args, vdk_measure_info *out, vdk_error *err);

/* resize.c */
int qed_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
               vdk_error *err);

/* ---------------------------------------------------------------- check.c */

/* What the consistency scan found, one record per bad reference or per run
 * of leaked clusters. */
enum qed_problem_kind {
    QED_PROB_L1_INVALID = 1, /* L1 entry: unaligned, or the table is outside the file */
    QED_PROB_L2_OVERLAP,     /* L2 table overlaps the header, the L1 or another table */
    QED_PROB_L2_UNREADABLE,  /* L2 table could not be read (a check error) */
    QED_PROB_DATA_INVALID,   /* L2 entry: unaligned, or the cluster is outside the file */
    QED_PROB_DATA_OVERLAP,   /* data cluster is metadata (header, L1 or an L2 table) */
    QED_PROB_DATA_SHARED,    /* data cluster already referenced by an earlier entry */
    QED_PROB_LEAK,           /* clusters nothing references (a run) */
};

/* What repair does about a problem. */
enum qed_fix {
    QED_FIX_NONE = 0, /* nothing (not asked for, or a check error) */
    QED_FIX_CLEAR,    /* the entry is set to 0 (unallocated) */
    QED_FIX_COPY,     /* the cluster is copied to a new one the entry then points at */
    QED_FIX_TRUNCATE, /* leaked clusters at the end of the file are cut off */
    QED_FIX_COMPACT,  /* leaked clusters are filled with clusters moved down from the
                         end of the file, which is then cut off; what cannot be
                         filled stays leaked with its host space released */
};

typedef struct qed_problem {
    int kind;              /* enum qed_problem_kind */
    int fix;               /* enum qed_fix, what repair does (or did) */
    uint64_t entry_offset; /* file offset of the bad entry; 0 for leaks */
    uint64_t value;        /* the entry; for leaks the first cluster's offset */
    uint64_t count;        /* leaked clusters in the run; 1 otherwise */
    uint64_t guest_offset; /* guest offset the entry maps; UINT64_MAX for leaks */
} qed_problem;

/* At most this many problem records are kept; the counts stay exact. */
#define QED_MAX_PROBLEMS 4096u

/* The result of a scan (and repair), with qemu-img check's fields. */
typedef struct qed_check_report {
    uint64_t check_errors;        /* tables that could not be read */
    uint64_t corruptions;         /* bad references found (and not fixed) */
    uint64_t leaks;               /* leaked clusters found (and not fixed) */
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;
    uint64_t total_clusters;      /* guest clusters of the virtual size */
    uint64_t allocated_clusters;  /* L2 entries pointing at data */
    uint64_t fragmented_clusters; /* data clusters not right after the previous one */
    uint64_t image_end_offset;    /* end of the last referenced cluster */
    uint64_t file_size;           /* file size scanned (bytes) */
    uint64_t l2_tables;           /* valid L2 tables */
    uint64_t copies;              /* clusters repair copies (shared data) */
    bool need_check;              /* the need-check bit was set */
    qed_problem *problems;        /* malloc'd, nproblems records */
    size_t nproblems;
    uint64_t problems_dropped;    /* records not kept (past QED_MAX_PROBLEMS) */
} qed_check_report;

/* Repair modes (bits), as qemu-img check -r: leaks, all. */
#define QED_REPAIR_LEAKS 0x1
#define QED_REPAIR_ERRORS 0x2
#define QED_REPAIR_DRY_RUN 0x4 /* plan (fix fields) but write nothing */
#define QED_REPAIR_QUICK 0x8   /* bound the copying that fills leaks (repair on open) */

/*
 * Scan the image (lock held, no allocation in flight, metadata flushed)
 * and fill rep. With repair != 0, plan the fixes first (nothing is written
 * before the whole plan is known), then apply them in a crash-safe order
 * and clear the need-check bit when the image is consistent. rep's counts
 * then say what remains; *_fixed what was fixed.
 */
int qed_check_locked(qed_state *s, unsigned repair, qed_check_report *rep,
                     vdk_error *err);
/* The same for an open image: waits for in-flight allocations and flushes
 * metadata first. Repair needs a writable image. */
int qed_check_image(vdk_image *img, unsigned repair, qed_check_report *rep,
                    vdk_error *err);
void qed_check_report_free(qed_check_report *rep);
const char *qed_problem_name(int kind);
const char *qed_fix_name(int fix);

extern const struct vdk_driver vdk_qed_driver;

#endif /* VDK_QED_H */
