/*
 * qcow2.h - private header of the qcow2 driver: on-disk constants, the
 * driver's in-memory state and the functions its files share.
 *
 * Files: header.c (parse, validate and rewrite the header and its
 * extensions), open.c (driver entry points: probe, open, close, flush, info,
 * first-write duties), snapshot.c (snapshot table parsing), bitmaps.c
 * (dropping persistent bitmaps), overlap.c (metadata overlap checks),
 * refcount.c (refcounts, cluster allocation, pending frees), cluster.c
 * (L1/L2 lookup and updates), io.c (reads, writes with copy-on-write,
 * in-flight tracking), zero.c (write_zeroes, discard), compress.c
 * (compressed clusters), compress-split.c (two-phase compressed writes for
 * the copy engine), status.c (block_status), resize.c (resize and
 * preallocation), create.c (create), measure.c (qemu-img measure), repair.c
 * (refcount rebuild of dirty images).
 *
 * Locking: one mutex (s->lock) guards every field below that can change
 * after open, the caches and the L1/refcount tables. Data I/O runs outside
 * it; operations doing I/O outside the lock register in s->ops (see io.c).
 */
#ifndef VDK_QCOW2_H
#define VDK_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "driver.h"

/* ---------------------------------------------------------------- on disk */

/*
 * Header (big-endian, at offset 0):
 *   0 u32 magic "QFI\xfb"          4 u32 version (2 or 3)
 *   8 u64 backing_file_offset     16 u32 backing_file_size (<= 1023)
 *  20 u32 cluster_bits            24 u64 size (virtual, bytes)
 *  32 u32 crypt_method            36 u32 l1_size (entries)
 *  40 u64 l1_table_offset         48 u64 refcount_table_offset
 *  56 u32 refcount_table_clusters 60 u32 nb_snapshots
 *  64 u64 snapshots_offset        -- version 2 ends here (72 bytes) --
 *  72 u64 incompatible_features   80 u64 compatible_features
 *  88 u64 autoclear_features      96 u32 refcount_order
 * 100 u32 header_length          104 u8  compression_type (if length > 104)
 * Then header extensions (u32 type, u32 length, data padded to 8), type 0
 * ends them; the backing file name may follow, inside cluster 0.
 */
#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_HDR_V2_LEN 72u
#define QCOW2_HDR_V3_LEN 104u
#define QCOW2_HDR_OUR_LEN 112u /* what we write for v3: + compression type, padding */

#define QCOW2_OFF_BACKING_OFFSET 8
#define QCOW2_OFF_BACKING_SIZE 16
#define QCOW2_OFF_SIZE 24
#define QCOW2_OFF_L1_SIZE 36
#define QCOW2_OFF_L1_OFFSET 40
#define QCOW2_OFF_RT_OFFSET 48
#define QCOW2_OFF_RT_CLUSTERS 56
#define QCOW2_OFF_INCOMPAT 72
#define QCOW2_OFF_AUTOCLEAR 88

#define QCOW2_INCOMPAT_DIRTY (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2 (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_KNOWN UINT64_C(0x1f)
#define QCOW2_COMPAT_LAZY (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW (UINT64_C(1) << 1)

#define QCOW2_EXT_END 0x00000000u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES 0x6803f857u
#define QCOW2_EXT_BITMAPS 0x23852875u
#define QCOW2_EXT_CRYPTO 0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define QCOW2_COMPRESS_ZLIB 0
#define QCOW2_COMPRESS_ZSTD 1

/*
 * L1 entry (u64): bits 9-55 L2 table offset, bit 63 "copied" (refcount 1).
 * L2 entry (u64): bit 63 copied, bit 62 compressed, bits 0-61 descriptor.
 *   standard: bit 0 reads-as-zero (v3 without extended L2), bits 9-55 host
 *   cluster offset. compressed: see qcow2_state.csize_shift.
 * Extended L2 entries add a u64 bitmap: bits 0-31 subcluster allocated,
 * bits 32-63 subcluster reads as zero.
 * Refcount table entry (u64): bits 9-63 refcount block offset.
 */
#define QCOW2_OFLAG_COPIED (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO UINT64_C(1)
#define QCOW2_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define QCOW2_RT_OFFSET_MASK UINT64_C(0xfffffffffffffe00)
#define QCOW2_BITMAP_ALL_ZERO UINT64_C(0xffffffff00000000)

/* Limits (as QEMU's). */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (UINT64_C(32) << 20)
#define QCOW2_MAX_RT_BYTES (UINT64_C(8) << 20)
#define QCOW2_MAX_SNAPSHOTS 65536u
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024u
#define QCOW2_MAX_BACKING_NAME 1023u
#define QCOW2_MAX_HOST_OFFSET (UINT64_C(1) << 56)
#define QCOW2_SUBCLUSTERS 32

/* ---------------------------------------------------------------- in memory */

/* One internal snapshot's table entry, as far as the driver needs it. */
typedef struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t disk_size; /* 0 when the entry does not record it */
    char *id;
    char *name;
    /* The rest of the entry (snapshot*.c). */
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t icount;      /* UINT64_MAX when not recorded */
    bool has_disk_size;   /* the entry records the disk size */
    uint8_t *extra_tail;  /* extra data past the 24 bytes we know, kept as read */
    uint32_t extra_tail_len;
} qcow2_snapshot;

struct qcow2_vmstate; /* a VM state being written (vmstate.c) */

/* A header extension kept byte for byte. */
typedef struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
} qcow2_ext;

/* An operation doing I/O outside the lock (io.c). Exclusive ones own the
 * guest clusters [start, end) for a metadata change. */
typedef struct qcow2_op {
    uint64_t seq;
    uint64_t start, end;
    bool excl;
    struct qcow2_op *next;
} qcow2_op;

/* A refcount decrement waiting until the references are durably gone. */
typedef struct qcow2_free {
    uint64_t cluster; /* first host cluster index */
    uint64_t count;   /* clusters */
    uint64_t seq;     /* operations with seq <= this may still use it */
    unsigned flags;   /* QCOW2_FREE_* */
} qcow2_free;

#define QCOW2_FREE_L2 0x1    /* an L2 table: drop it from the L2 cache when freed */
#define QCOW2_FREE_PUNCH 0x2 /* a guest discard: punch a hole once it is free */

/* Decoded mapping kinds of a guest byte. */
enum qcow2_kind {
    QCOW2_UNALLOC = 0, /* not defined here: backing file or zeros */
    QCOW2_ZERO,        /* reads as zeros (host may hold a preallocation) */
    QCOW2_DATA,        /* stored at host */
    QCOW2_COMPRESSED,  /* stored compressed; host = L2 entry */
};

/* A run of guest bytes with one kind (and contiguous host offsets). */
typedef struct qcow2_map {
    int kind;
    uint64_t bytes;
    uint64_t host;   /* DATA / ZERO: host offset of the first byte, 0 if none */
    uint64_t entry;  /* COMPRESSED: the L2 entry */
} qcow2_map;

/* A decoded L2 entry (one guest cluster). */
typedef struct qcow2_cinfo {
    uint64_t word;     /* raw first word */
    uint64_t bitmap;   /* raw bitmap (extended L2) or synthesised */
    uint64_t host;     /* host cluster offset (valid when has_host) */
    bool has_host;
    bool l1_copied;    /* the L2 table is not shared (set by qcow2_lookup) */
    bool compressed;
    bool copied;
    uint32_t alloc;    /* subcluster allocated bits */
    uint32_t zero;     /* subcluster zero bits */
} qcow2_cinfo;

typedef struct qcow2_state {
    vdk_image *img;   /* NULL when used internally by create */
    vdk_file *file;
    vdk_file *data_file; /* == file unless an external data file is used */
    bool writable;
    unsigned open_flags;

    pthread_mutex_t lock;
    pthread_cond_t cond;

    /* Geometry. */
    uint32_t version;
    uint32_t cluster_bits;
    uint64_t cluster_size;
    uint32_t l2_bits;        /* log2 of entries per L2 table */
    uint32_t l2_entry_shift; /* log2 of bytes per L2 entry: 3, or 4 with extended L2 */
    uint32_t sc_bits;        /* log2 of the subcluster size (= cluster_bits without) */
    uint32_t nsub;           /* subclusters per cluster: 1 or 32 */
    uint32_t refcount_order;
    uint64_t refcount_max;
    uint32_t rb_bits;        /* log2 of entries per refcount block */
    uint32_t csize_shift;    /* compressed descriptor: sectors field position */
    uint64_t csize_mask;
    uint64_t coffset_mask;
    uint64_t size;
    bool ext_l2;
    int compression_type;

    /* Header and extensions. */
    uint8_t *hdr; /* the raw header fields [0, header_length) */
    uint32_t header_length;
    uint64_t incompat, compat, autoclear;
    char *backing_name;
    char *backing_fmt;
    char *data_file_name;
    uint8_t *features; /* feature name table as read (48-byte entries) */
    uint32_t features_len;
    uint8_t bitmaps_ext[24];
    bool has_bitmaps_ext;
    uint8_t *crypto_ext;
    uint32_t crypto_ext_len;
    qcow2_ext *exts; /* unknown extensions, in file order */
    size_t nexts;

    /* Tables kept whole in memory (host byte order). */
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t *l1;
    uint32_t l1_dirty_lo, l1_dirty_hi; /* entries [lo, hi) to write back */
    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint64_t rt_size; /* entries */
    uint64_t *rt;

    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size; /* bytes */
    qcow2_snapshot *snaps;

    vdk_cache *l2_cache;
    vdk_cache *rc_cache;

    /* Overlap checks (overlap.c): a hash set of refcount block offsets and
     * the sorted, merged extents of the fixed structures. */
    uint64_t *rbset;
    size_t rbset_cap, rbset_n;
    struct qcow2_iv { uint64_t start, end; } *fixed_iv;
    size_t n_fixed_iv;
    uint64_t *l2set;        /* offsets of the active L2 tables (overlap.c) */
    uint32_t *l2set_count;  /* how many L1 entries point at each (0: gone) */
    size_t l2set_cap, l2set_used;

    /* Allocation. */
    uint64_t file_size;     /* bytes, at open */
    uint64_t alloc_end;     /* clusters at or past this are free */
    uint64_t untouched;     /* clusters at or past this were never written */
    uint64_t free_hint;     /* no free cluster below this */
    uint64_t free_byte_offset; /* where the next compressed cluster may go */
    qcow2_free *pending;
    size_t npending, cap_pending;
    qcow2_op *ops;
    uint64_t op_seq;

    /* State. */
    bool prepared;   /* first-write duties (autoclear bits) done */
    bool dirty_set;  /* we set the dirty bit; clear it on clean close */
    bool lazy;       /* lazy refcounts in use */
    bool corrupt;    /* marked corrupt (no more writes) */
    bool prealloc_checked; /* metadata preallocation detection done (status.c) */
    bool metadata_prealloc; /* many more clusters refcounted than the file holds */
    int broken;      /* sticky error after a failed metadata write */
    struct qcow2_vmstate *vmstate; /* staged VM state (vmstate.c), or NULL */
} qcow2_state;

/* ---------------------------------------------------------------- helpers */

static inline uint64_t qcow2_cluster_offset(const qcow2_state *s, uint64_t off)
{
    return off & ~(s->cluster_size - 1);
}
static inline uint64_t qcow2_offset_in_cluster(const qcow2_state *s, uint64_t off)
{
    return off & (s->cluster_size - 1);
}
static inline uint64_t qcow2_size_to_clusters(const qcow2_state *s, uint64_t bytes)
{
    return (bytes >> s->cluster_bits) + ((bytes & (s->cluster_size - 1)) != 0);
}
static inline uint64_t qcow2_l2_coverage(const qcow2_state *s)
{
    return s->cluster_size << s->l2_bits; /* guest bytes one L2 table maps */
}
/* Highest byte offset a structure may reach: the file size at open or what
 * we have allocated since. */
static inline uint64_t qcow2_host_limit(const qcow2_state *s)
{
    uint64_t a = s->alloc_end << s->cluster_bits;
    return a > s->file_size ? a : s->file_size;
}
static inline bool qcow2_has_backing(const qcow2_state *s) { return s->backing_name != NULL; }

/* Sticky failure of a metadata write: remember and return rc. */
int qcow2_set_broken(qcow2_state *s, int rc);
/* Mark the image corrupt (when writable), as QEMU does, and fail. */
int qcow2_signal_corruption(qcow2_state *s, vdk_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* header.c */
int qcow2_header_parse(qcow2_state *s, vdk_error *err);
int qcow2_header_write_field(qcow2_state *s, unsigned off, unsigned len, vdk_error *err);
int qcow2_header_rewrite(qcow2_state *s, vdk_error *err);
int qcow2_header_build(qcow2_state *s, uint8_t *buf, size_t len, vdk_error *err);
const char *qcow2_feature_name(const qcow2_state *s, int type, int bit);
void qcow2_state_free_header(qcow2_state *s);
int qcow2_set_incompat(qcow2_state *s, uint64_t bits, bool on, vdk_error *err);

/* snapshot.c */
int qcow2_snapshots_read(qcow2_state *s, vdk_error *err);
void qcow2_snapshots_free(qcow2_state *s);

/* snapshot*.c, vmstate.c: internal snapshots and VM states (driver slots) */
int qcow2_snapshots_validate(qcow2_state *s, vdk_error *err);
int qcow2_snapshot_list(vdk_image *img, vdk_snapshot_info **list, size_t *n, vdk_error *err);
int qcow2_snapshot_create(vdk_image *img, const vdk_snapshot_params *p, vdk_error *err);
int qcow2_snapshot_apply(vdk_image *img, const char *id, vdk_error *err);
int qcow2_snapshot_delete(vdk_image *img, const char *id, vdk_error *err);
int qcow2_snapshot_load(vdk_image *img, const char *id, vdk_error *err);
int qcow2_vmstate_write(vdk_image *img, const void *buf, size_t len, uint64_t pos,
                        vdk_error *err);
void qcow2_vmstate_discard(vdk_image *img);
int qcow2_vmstate_read(vdk_image *img, const char *id, void *buf, size_t len, uint64_t pos,
                       vdk_error *err);
void qcow2_vmstate_free(qcow2_state *s);

/* open.c */
int qcow2_state_open(vdk_file *file, vdk_image *img, unsigned flags, qcow2_state **out,
                     vdk_error *err);
void qcow2_state_close(qcow2_state *s);
int qcow2_meta_flush(qcow2_state *s, vdk_error *err);
int qcow2_prepare_write(qcow2_state *s, vdk_error *err);
int qcow2_make_caches(qcow2_state *s, vdk_error *err);

/* overlap.c */
int qcow2_overlap_init(qcow2_state *s, vdk_error *err);
bool qcow2_overlaps_metadata(const qcow2_state *s, uint64_t off, uint64_t len);
void qcow2_overlap_free(qcow2_state *s);
int qcow2_overlap_refresh(qcow2_state *s);
int qcow2_rbset_add(qcow2_state *s, uint64_t off);
bool qcow2_rbset_has(const qcow2_state *s, uint64_t off);
void qcow2_l2set_change(qcow2_state *s, uint64_t old_entry, uint64_t new_entry);
void qcow2_l2set_rebuild(qcow2_state *s);

/* refcount.c */
int qcow2_refcount_get(qcow2_state *s, uint64_t cluster, uint64_t *rc, vdk_error *err);
int qcow2_refcount_update(qcow2_state *s, uint64_t cluster, uint64_t count, int delta,
                          vdk_error *err);
int qcow2_alloc_clusters(qcow2_state *s, uint64_t n, bool exact, uint64_t *off,
                         uint64_t *got, bool *fresh, vdk_error *err);
int qcow2_alloc_clusters_at_end(qcow2_state *s, uint64_t n, uint64_t *off, vdk_error *err);
int qcow2_alloc_cluster_at(qcow2_state *s, uint64_t cluster, bool *ok, vdk_error *err);
int qcow2_free_now(qcow2_state *s, uint64_t off, uint64_t len, vdk_error *err);
int qcow2_free_later(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags,
                     vdk_error *err);
int qcow2_free_entry_later(qcow2_state *s, const qcow2_cinfo *ci, unsigned flags,
                           vdk_error *err);
int qcow2_apply_pending_frees(qcow2_state *s, vdk_error *err);
bool qcow2_too_many_pending(const qcow2_state *s);
void qcow2_compressed_range(const qcow2_state *s, uint64_t entry, uint64_t *off,
                            uint64_t *len);
void qcow2_note_refcount_change(qcow2_state *s);

/* cluster.c */
int qcow2_l2_get(qcow2_state *s, uint64_t l1_index, uint8_t **table, vdk_error *err);
int qcow2_l2_get_for_write(qcow2_state *s, uint64_t l1_index, uint8_t **table,
                           vdk_error *err);
void qcow2_l2_put(qcow2_state *s, uint8_t **table);
void qcow2_l2_entry_write(qcow2_state *s, uint8_t *table, uint64_t l2_index,
                          uint64_t word, uint64_t bitmap);
int qcow2_decode(qcow2_state *s, uint64_t guest_cluster, uint64_t word, uint64_t bitmap,
                 qcow2_cinfo *ci, vdk_error *err);
int qcow2_lookup(qcow2_state *s, uint64_t guest_cluster, qcow2_cinfo *ci, vdk_error *err);
int qcow2_map_range(qcow2_state *s, uint64_t off, uint64_t max, bool merge_compressed,
                    qcow2_map *m, vdk_error *err);
int qcow2_set_entries(qcow2_state *s, uint64_t guest_cluster, uint64_t n,
                      const uint64_t *words, const uint64_t *bitmaps, vdk_error *err);
int qcow2_check_l2_offset(qcow2_state *s, uint64_t l1_index, uint64_t off, vdk_error *err);
void qcow2_l1_mark_dirty(qcow2_state *s, uint64_t index);
int qcow2_l1_write(qcow2_state *s, vdk_error *err);

/* io.c */
int qcow2_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err);
int qcow2_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off,
                 vdk_error *err);
int qcow2_write(qcow2_state *s, const void *buf, size_t len, uint64_t off, vdk_error *err);
void qcow2_op_begin(qcow2_state *s, qcow2_op *op, uint64_t start, uint64_t end, bool excl);
void qcow2_op_end(qcow2_state *s, qcow2_op *op);
bool qcow2_excl_conflict(const qcow2_state *s, uint64_t start, uint64_t end);
uint64_t qcow2_oldest_op(const qcow2_state *s);
int qcow2_read_guest(qcow2_state *s, const qcow2_cinfo *ci, uint64_t guest_off,
                     void *buf, size_t len, vdk_error *err);

/* zero.c */
int qcow2_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                       vdk_error *err);
int qcow2_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err);
int qcow2_zero_clusters(qcow2_state *s, uint64_t off, uint64_t len, unsigned flags,
                        bool discard, vdk_error *err);

/* compress.c */
int qcow2_compress(int type, void *dst, size_t cap, const void *src, size_t len);
int qcow2_decompress(int type, void *dst, size_t dlen, const void *src, size_t slen);
int qcow2_read_compressed(qcow2_state *s, uint64_t entry, uint64_t guest_cluster,
                          uint8_t *cluster_buf, vdk_error *err);
int qcow2_pwrite_compressed(vdk_image *img, const void *buf, size_t len, uint64_t off,
                            vdk_error *err);
int qcow2_store_compressed(qcow2_state *s, uint64_t off, const void *data, uint64_t size,
                           vdk_error *err);

/* compress-split.c (two-phase compressed writes) */
int qcow2_compress_cluster(vdk_image *img, void *dst, size_t cap, const void *src,
                           size_t len, uint64_t off, vdk_error *err);
int qcow2_pwrite_precompressed(vdk_image *img, const void *data, size_t dlen, uint64_t off,
                               vdk_error *err);
int qcow2_inflate_fast(void *dst, size_t dlen, const void *src, size_t slen);
struct ZSTD_DCtx_s; /* ZSTD_DCtx of <zstd.h> */
struct ZSTD_DCtx_s *qcow2_zstd_dctx(void);

/* measure.c */
int qcow2_measure(const vdk_measure_args *args, vdk_measure_info *out, vdk_error *err);

/* status.c */
int qcow2_block_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                       vdk_error *err);

/* resize.c */
int qcow2_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
                 vdk_error *err);
int qcow2_grow_l1(qcow2_state *s, uint64_t min_entries, vdk_error *err);
int qcow2_preallocate(qcow2_state *s, uint64_t start, uint64_t end, int mode,
                      vdk_error *err);
uint64_t qcow2_l1_entries_for(uint32_t cluster_bits, uint32_t l2_bits, uint64_t size);

/* create.c */
int qcow2_create(vdk_file *file, const vdk_create_args *args, vdk_error *err);

/* bitmaps.c */
int qcow2_bitmaps_walk(qcow2_state *s, int (*fn)(qcow2_state *, uint64_t, uint64_t, void *),
                       void *ctx, vdk_error *err);
int qcow2_bitmaps_drop(qcow2_state *s, vdk_error *err);

/* repair.c */
int qcow2_rebuild_refcounts(qcow2_state *s, vdk_error *err);
int qcow2_rebuild_from_counts(qcow2_state *s, uint32_t *refs, uint64_t n, bool snapshots,
                              vdk_error *err);
/* check.c */
int qcow2_check(vdk_image *img, unsigned mode, vdk_check_report *rep, vdk_error *err);

/* inspect.c (inspection queries; inspect-scan.c, inspect.h) */
int qcow2_inspect(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                  vdk_emitter *out, vdk_error *err);

/* Entry i of a refcount block (refcount_order 0 to 6: 1- to 64-bit, big-endian
 * for the widths of a byte and more); inline, as every refcount walk calls them. */
static inline uint64_t qcow2_rb_get(const qcow2_state *s, const uint8_t *b, uint64_t i)
{
    switch (s->refcount_order) {
    case 0: return (b[i >> 3] >> (i & 7)) & 1;
    case 1: return (b[i >> 2] >> ((i & 3) * 2)) & 3;
    case 2: return (b[i >> 1] >> ((i & 1) * 4)) & 15;
    case 3: return b[i];
    case 4: return vdk_be16(b + 2 * i);
    case 5: return vdk_be32(b + 4 * i);
    default: return vdk_be64(b + 8 * i);
    }
}

static inline void qcow2_rb_set(const qcow2_state *s, uint8_t *b, uint64_t i, uint64_t v)
{
    unsigned sh;
    switch (s->refcount_order) {
    case 0:
        sh = i & 7;
        b[i >> 3] = (uint8_t)((b[i >> 3] & ~(1u << sh)) | ((v & 1) << sh));
        break;
    case 1:
        sh = (i & 3) * 2;
        b[i >> 2] = (uint8_t)((b[i >> 2] & ~(3u << sh)) | ((v & 3) << sh));
        break;
    case 2:
        sh = (i & 1) * 4;
        b[i >> 1] = (uint8_t)((b[i >> 1] & ~(15u << sh)) | ((v & 15) << sh));
        break;
    case 3: b[i] = (uint8_t)v; break;
    case 4: vdk_put_be16(b + 2 * i, (uint16_t)v); break;
    case 5: vdk_put_be32(b + 4 * i, (uint32_t)v); break;
    default: vdk_put_be64(b + 8 * i, v); break;
    }
}

/* Entry i of an L2 table: the word, and the subcluster bitmap of an extended
 * L2 entry (0 otherwise). */
static inline int qcow2_l2_entry_read(const qcow2_state *s, const uint8_t *t, uint64_t i, uint64_t *word,
                        uint64_t *bitmap)
{
    if (s->ext_l2) {
        *word = vdk_be64(t + i * 16);
        *bitmap = vdk_be64(t + i * 16 + 8);
    } else {
        *word = vdk_be64(t + i * 8);
        *bitmap = 0;
    }
    return 0;
}

#endif /* VDK_QCOW2_H */
