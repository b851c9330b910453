/*
 * vdk.h - the public C API of vdk, the virtual-disk engine.
 *
 * This header is all a C program needs to open, create, read, write and
 * inspect disk images (raw, qcow2, ...). Every object is opaque. Every
 * function that can fail returns 0 (or a non-negative count) on success and a
 * negative error code on failure: either a negated errno value (-EIO,
 * -ENOSPC, ...) or one of the VDK_E* engine codes below. When the caller
 * passes a vdk_error, it receives a one-line message naming the file, the
 * structure or offset, and the cause.
 *
 * Thread safety: image I/O functions (pread, pwrite, write_zeroes, discard,
 * block_status, flush) may be called from several threads at once on the same
 * image. Opening, closing and resizing must not race with other calls on the
 * same image.
 */
#ifndef VDK_H
#define VDK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VDK_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------- errors */

/*
 * Engine error codes, negative like negated errno values, in a range errno
 * never uses. vdk_strerror() and vdk_errname() know every one of them.
 */
#define VDK_E_FIRST 4096
#define VDK_ECORRUPT (-(VDK_E_FIRST + 1))     /* image metadata is inconsistent */
#define VDK_EUNSUPPORTED (-(VDK_E_FIRST + 2)) /* valid image, feature not supported */
#define VDK_EFORMAT (-(VDK_E_FIRST + 3))      /* unknown format or bad magic */
#define VDK_ELOCKED (-(VDK_E_FIRST + 4))      /* another process holds the image */
#define VDK_EOPTION (-(VDK_E_FIRST + 5))      /* invalid option or option value */
#define VDK_ETOOBIG (-(VDK_E_FIRST + 6))      /* a limit of the format or of vdk */
#define VDK_EBROKEN (-(VDK_E_FIRST + 7))      /* image in error state after a failed metadata write */
#define VDK_ECANCELED (-(VDK_E_FIRST + 8))    /* job canceled by the user */
#define VDK_E_LAST (VDK_E_FIRST + 8)

/* A failure with its message. The message is one line, without newline. */
typedef struct vdk_error {
    int code;
    char msg[480];
} vdk_error;

/* Text for a code: "Input/output error", "image is corrupt", ... */
const char *vdk_strerror(int code);
/* Short name for a code: "EIO", "ENOSPC", "CORRUPT", "UNSUPPORTED", ... */
const char *vdk_errname(int code);
/* Clear an error record. */
void vdk_error_clear(vdk_error *err);

/* ---------------------------------------------------------------- cache modes */

/* qemu-img's names: "writeback", "writethrough", "none", "directsync", "unsafe". */
enum vdk_cache_mode {
    VDK_CACHE_WRITEBACK = 0, /* page cache; flush only when asked */
    VDK_CACHE_WRITETHROUGH,  /* page cache; flush after every write */
    VDK_CACHE_NONE,          /* O_DIRECT; flush only when asked */
    VDK_CACHE_DIRECTSYNC,    /* O_DIRECT; flush after every write */
    VDK_CACHE_UNSAFE,        /* page cache; flushes are ignored */
};
/* Returns 0 and sets *mode, or VDK_EOPTION for an unknown name. */
int vdk_cache_mode_parse(const char *name, int *mode);
const char *vdk_cache_mode_name(int mode);

/* ---------------------------------------------------------------- images */

typedef struct vdk_image vdk_image;

#define VDK_OPEN_RDWR 0x01            /* open for writing (default read-only) */
#define VDK_OPEN_NO_BACKING 0x02      /* do not open the backing chain */
#define VDK_OPEN_FORCE_SHARE 0x04     /* -U: read-only, ignore other users' locks */
#define VDK_OPEN_ALLOW_DATA_FILE 0x08 /* allow qcow2 external data files */
#define VDK_OPEN_NO_LOCK 0x10         /* take no locks at all (locking=off) */
#define VDK_OPEN_NO_REPAIR 0x20       /* open a dirty image without repairing it */
#define VDK_OPEN_NO_PROBE_RAW 0x40    /* refuse to guess "raw" when probing */

typedef struct vdk_open_opts {
    const char *format; /* driver name, or NULL to probe */
    unsigned flags;     /* VDK_OPEN_* */
    int cache;          /* enum vdk_cache_mode, for the image and its backing chain */
} vdk_open_opts;

/* Open an image and, unless VDK_OPEN_NO_BACKING, its whole backing chain. */
int vdk_image_open(const char *path, const vdk_open_opts *opts, vdk_image **out,
                   vdk_error *err);

/* Flush (when writable), close the image and its backing chain, drop the caller's
 * reference. Returns the flush error, if any; the image is gone either way. */
int vdk_image_close(vdk_image *img, vdk_error *err);

/* Reference counting, for holders that outlive the opener (jobs). The last
 * unref flushes and closes, ignoring errors; prefer vdk_image_close. */
vdk_image *vdk_image_ref(vdk_image *img);
void vdk_image_unref(vdk_image *img);

/* Key/value creation options with qemu-img's names ("cluster_size" = "65536",
 * "lazy_refcounts" = "on", "backing_file" = "base.qcow2", ...). */
typedef struct vdk_kv {
    const char *key;
    const char *value;
} vdk_kv;

/* Size value meaning "take the virtual size from the backing file". */
#define VDK_SIZE_FROM_BACKING UINT64_MAX

/*
 * Create an image file (replacing any file at path, as qemu-img create does,
 * but never one that another process has locked). Unknown option keys are an
 * error naming the key.
 */
int vdk_image_create(const char *path, const char *format, uint64_t size,
                     const vdk_kv *opts, size_t nopts, vdk_error *err);

/* Data I/O. Ranges must lie inside the virtual size. */
int vdk_image_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err);
int vdk_image_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off,
                     vdk_error *err);

#define VDK_ZERO_MAY_UNMAP 0x1 /* zeroed ranges may be deallocated */
int vdk_image_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                           vdk_error *err);
/* Discard (unmap) a range. Reads of it afterwards return zeros or the backing
 * file's data, as the format defines; the range may be rounded inwards. */
int vdk_image_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err);
/* Write whole clusters compressed (qcow2). len must be a multiple of the
 * cluster size, or reach the end of the image. */
int vdk_image_pwrite_compressed(vdk_image *img, const void *buf, size_t len,
                                uint64_t off, vdk_error *err);
/* Make everything written so far durable (per the cache mode). */
int vdk_image_flush(vdk_image *img, vdk_error *err);

enum vdk_prealloc {
    VDK_PREALLOC_OFF = 0,
    VDK_PREALLOC_METADATA,
    VDK_PREALLOC_FALLOC,
    VDK_PREALLOC_FULL,
};
int vdk_prealloc_parse(const char *name, int *mode);
const char *vdk_prealloc_name(int mode);

#define VDK_RESIZE_SHRINK 0x1 /* allow making the image smaller */
int vdk_image_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
                     vdk_error *err);

/* ---------------------------------------------------------------- block status */

#define VDK_BS_DATA 0x01         /* reads return data stored at 'offset' */
#define VDK_BS_ZERO 0x02         /* reads return zeros */
#define VDK_BS_ALLOCATED 0x04    /* some layer of the chain defines the range ("present") */
#define VDK_BS_OFFSET_VALID 0x08 /* 'offset' is the host offset in 'layer's file */
#define VDK_BS_COMPRESSED 0x10   /* stored compressed (offset not meaningful) */

/* Query flags. */
#define VDK_BS_TOP_ONLY 0x1 /* answer for the top layer only; do not walk the chain */

typedef struct vdk_extent {
    uint64_t start;   /* guest offset */
    uint64_t length;  /* bytes, > 0 */
    uint64_t offset;  /* host offset, valid with VDK_BS_OFFSET_VALID */
    unsigned flags;   /* VDK_BS_* */
    int depth;        /* chain depth of the layer that answered, 0 = top */
    vdk_image *layer; /* that layer (not referenced; valid while img is open) */
} vdk_extent;

/* Describe the range starting at off: one extent of at most len bytes whose
 * bytes all have the same status, merged as far as possible. */
int vdk_image_block_status(vdk_image *img, uint64_t off, uint64_t len, unsigned qflags,
                           vdk_extent *ext, vdk_error *err);

/* ---------------------------------------------------------------- properties */

const char *vdk_image_format(const vdk_image *img);   /* "qcow2" */
const char *vdk_image_filename(const vdk_image *img); /* as opened */
uint64_t vdk_image_size(const vdk_image *img);        /* virtual size in bytes */
uint32_t vdk_image_cluster_size(const vdk_image *img); /* 0 when the format has none */
int vdk_image_is_writable(const vdk_image *img);
vdk_image *vdk_image_backing(const vdk_image *img);          /* NULL if none or not opened */
const char *vdk_image_backing_name(const vdk_image *img);    /* as recorded, or NULL */
const char *vdk_image_backing_format(const vdk_image *img);  /* as recorded, or NULL */
const char *vdk_image_backing_path(const vdk_image *img);    /* resolved ("full") name */
/* Bytes the image's file occupies on the host (st_blocks), or -errno. */
int64_t vdk_image_actual_size(const vdk_image *img);

/* Format-specific description, as in qemu-img info's "format-specific". */
enum vdk_info_type { VDK_INFO_STR = 1, VDK_INFO_INT, VDK_INFO_BOOL };
typedef struct vdk_info_item {
    char key[40];
    int type;
    int64_t i;    /* VDK_INFO_INT and VDK_INFO_BOOL */
    char s[216];  /* VDK_INFO_STR */
} vdk_info_item;
#define VDK_INFO_MAX 32
typedef struct vdk_format_info {
    int dirty;       /* qemu-img info's "dirty-flag" */
    int corrupt;     /* image marked corrupt */
    int nitems;
    vdk_info_item items[VDK_INFO_MAX];
} vdk_format_info;
int vdk_image_format_info(vdk_image *img, vdk_format_info *info, vdk_error *err);

/* Names of the built-in drivers, NULL-terminated. */
const char *const *vdk_driver_names(void);
/* Whether the named format can create images / write compressed clusters. */
int vdk_driver_can_create(const char *format);

/* ---------------------------------------------------------------- jobs: copy, compare */

/*
 * A job runs on a libuv loop that the caller owns and runs (uv_run): the
 * loop thread schedules every request, the job's own worker threads do the
 * reads, writes, zero detection and compression, and their completions move
 * the job on, on the loop thread. Several jobs may share one loop. The job
 * holds a reference on every image it uses until it ends.
 *
 * Lifecycle: start -> (uv_run ...) -> done callback on the loop thread ->
 * vdk_job_free. vdk_job_cancel may be called from any thread; the job then
 * ends within one request's time with VDK_ECANCELED. vdk_job_free on a
 * running job cancels it and frees it when it ends (the done callback is
 * still called). The first error ends the job; its message names the image,
 * the offset and the cause.
 */
struct uv_loop_s;
typedef struct vdk_job vdk_job;
typedef void (*vdk_job_done_cb)(vdk_job *job, void *opaque);

/* vdk_copy_opts.flags */
#define VDK_COPY_TOP_ONLY 0x01      /* copy what the sources' top layers define; leave the
                                     * ranges they take from a backing file unallocated */
#define VDK_COPY_TARGET_ZERO 0x02   /* the target reads as zeros (--target-is-zero) */
#define VDK_COPY_TARGET_FRESH 0x04  /* the target was just created: it defines nothing of
                                     * its own (reads as zeros or as its backing file) */
#define VDK_COPY_UNORDERED 0x08     /* -W: writes may land out of guest order */
#define VDK_COPY_COMPRESS 0x10      /* -c: store data clusters compressed */
#define VDK_COPY_BACKING_COMPARE 0x20 /* with a fresh target that has a backing file:
                                     * leave unallocated what reads equal to it */
#define VDK_COPY_NO_FLUSH 0x40      /* do not flush the target at the end */

/* Limits. */
#define VDK_COPY_MAX_REQUESTS 64
#define VDK_COPY_MAX_SPARSE ((uint64_t)16 << 20)

typedef struct vdk_copy_opts {
    unsigned flags;         /* VDK_COPY_* */
    unsigned max_requests;  /* requests in flight, 1..64 (default 8) */
    uint64_t max_bytes;     /* cap on bytes in flight; 0: max_requests x request_size */
    uint64_t request_size;  /* bytes per request (default 2 MiB; rounded up to a multiple
                             * of the target's cluster size and of sparse_size) */
    uint64_t sparse_size;   /* -S: zero runs of this size (aligned) are not written as
                             * data; 0 writes everything (default 4096; multiple of 512,
                             * at most 16 MiB) */
    uint64_t rate_limit;    /* bytes per second of data copied; 0: no limit */
} vdk_copy_opts;

/* Fill with the defaults. */
void vdk_copy_opts_init(vdk_copy_opts *opts);

/*
 * Start copying the concatenation of sources[0..n) (each one as a whole disk:
 * its backing chain included, unless VDK_COPY_TOP_ONLY) to the start of
 * target, which must be writable and at least as large. The plan follows
 * block status: unallocated and zero ranges are never read; zero ranges are
 * written as zeroes (vdk_image_write_zeroes) unless the target is known to
 * read as zeros there. Read data is checked for zeros in sparse_size blocks.
 * Writes land in guest order unless VDK_COPY_UNORDERED (and always in order
 * when compressing). Ends with one flush of the target (per its cache mode).
 */
int vdk_copy_start(struct uv_loop_s *loop, vdk_image *const *sources, size_t nsources,
                   vdk_image *target, const vdk_copy_opts *opts, vdk_job_done_cb done,
                   void *opaque, vdk_job **out, vdk_error *err);

/* Synchronous copy on a private loop. */
int vdk_copy(vdk_image *const *sources, size_t nsources, vdk_image *target,
             const vdk_copy_opts *opts, vdk_error *err);

/* vdk_compare_start flags. */
#define VDK_COMPARE_STRICT 0x1 /* -s: sizes and allocation must match too */

/* What a compare found (vdk_job_compare_result). */
enum vdk_compare_verdict {
    VDK_COMPARE_EQUAL = 0,
    VDK_COMPARE_CONTENT,     /* content differs at offset (a 512-byte sector) */
    VDK_COMPARE_SIZE,        /* strict: the sizes differ */
    VDK_COMPARE_ALLOCATION,  /* strict: allocation differs at offset */
};

/*
 * Start comparing two images as qemu-img compare does: the first differing
 * 512-byte sector is reported; past the end of the shorter image the longer
 * one must read as zeros. max_requests and request_size of opts (may be
 * NULL) bound the reads in flight.
 */
int vdk_compare_start(struct uv_loop_s *loop, vdk_image *a, vdk_image *b, unsigned flags,
                      const vdk_copy_opts *opts, vdk_job_done_cb done, void *opaque,
                      vdk_job **out, vdk_error *err);
/* After a compare job ended without error: the verdict and its offset. */
int vdk_job_compare_result(const vdk_job *job, uint64_t *offset);

enum vdk_job_phase {
    VDK_JOB_STARTING = 0, /* planning the first requests */
    VDK_JOB_COPYING,      /* copying (or comparing) */
    VDK_JOB_FLUSHING,     /* the final flush of the target */
    VDK_JOB_DONE,
};

typedef struct vdk_job_progress {
    uint64_t done;          /* guest bytes finished: copied, zeroed or skipped */
    uint64_t total;         /* guest bytes to process */
    uint64_t bytes_read;    /* data read from sources */
    uint64_t bytes_written; /* data written to the target (before compression) */
    uint64_t bytes_zeroed;  /* written as zeroes (write_zeroes) */
    uint64_t bytes_skipped; /* not written: already right in the target */
    int phase;              /* enum vdk_job_phase */
    unsigned in_flight;     /* requests in flight */
} vdk_job_progress;

/* Any thread, any time before vdk_job_free. */
void vdk_job_progress_get(vdk_job *job, vdk_job_progress *p);
void vdk_job_cancel(vdk_job *job);
int vdk_job_is_done(vdk_job *job);
/* After the end: 0, or the error that ended the job (with its message). */
int vdk_job_result(vdk_job *job, vdk_error *err);
void vdk_job_free(vdk_job *job);

/* ---------------------------------------------------------------- two-phase compressed writes */

/*
 * Compressed clusters can be compressed anywhere, in parallel, and stored
 * later in order, so that they land packed in guest order. Phase 1 is pure
 * computation; phase 2 allocates and writes. Formats without this support
 * answer VDK_EUNSUPPORTED to both (use vdk_image_pwrite_compressed).
 */
/* Compress the cluster at guest offset off (len bytes: the cluster size, or
 * less at the end of the image) into dst (cap bytes). Returns the stored
 * length, 0 when the cluster does not shrink (write it normally), or < 0. */
int vdk_image_compress_cluster(vdk_image *img, void *dst, size_t cap, const void *src,
                               size_t len, uint64_t off, vdk_error *err);
/* Store a cluster in the form vdk_image_compress_cluster made (dlen bytes). */
int vdk_image_pwrite_precompressed(vdk_image *img, const void *data, size_t dlen,
                                   uint64_t off, vdk_error *err);

/* ---------------------------------------------------------------- measure */

typedef struct vdk_measure_info {
    uint64_t required;        /* bytes a new image needs (qemu-img's "required") */
    uint64_t fully_allocated; /* bytes with every cluster allocated ("fully-allocated") */
    uint64_t bitmaps;         /* bytes for persistent bitmaps ("bitmaps") */
    int has_bitmaps;          /* whether "bitmaps" applies to the format */
} vdk_measure_info;

/*
 * Size of a new image of format with creation options opts: for a copy of
 * source (its whole chain) when source is not NULL, else for an empty image
 * of size bytes. VDK_EUNSUPPORTED when the format cannot tell.
 */
int vdk_measure(const char *format, uint64_t size, const vdk_kv *opts, size_t nopts,
                vdk_image *source, vdk_measure_info *out, vdk_error *err);

/* ---------------------------------------------------------------- inspection */

/*
 * A receiver of structured data: the format's inspection queries describe
 * what they find (headers, tables, how an offset resolves) as a tree of
 * tables, through these callbacks, which the caller implements (the Lua
 * binding builds Lua tables). Inside a keyed table every value has a key;
 * inside a list (open with list = 1) keys are NULL and values are appended.
 * Integers are signed 64-bit; offsets and sizes never exceed 2^63.
 */
typedef struct vdk_emitter vdk_emitter;
struct vdk_emitter {
    void (*open)(vdk_emitter *e, const char *key, int list);
    void (*close)(vdk_emitter *e);
    void (*integer)(vdk_emitter *e, const char *key, int64_t v);
    void (*string)(vdk_emitter *e, const char *key, const char *s, size_t len);
    void (*boolean)(vdk_emitter *e, const char *key, int v);
    void *opaque;
};

/*
 * Run the named inspection query on one layer (the image itself, not its
 * backing chain) and describe the result through out, which has one keyed
 * table open: the query adds its fields to it. Queries and their arguments
 * are the format's (docs/lua-api.md lists them); "queries" lists a format's
 * queries. VDK_EUNSUPPORTED for a format without inspection or an unknown
 * query; EINVAL for bad arguments. Read-only: nothing is written.
 */
int vdk_image_inspect(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                      vdk_emitter *out, vdk_error *err);

/* Read bytes of the image's own host file (not the guest view): at most len
 * bytes at off; returns the count read (short at the end of the file) or < 0.
 * EOPNOTSUPP for images without a host file (protocol drivers). */
int64_t vdk_image_pread_file(vdk_image *img, void *buf, size_t len, uint64_t off,
                             vdk_error *err);
/* Size in bytes of the image's own host file, or < 0. */
int64_t vdk_image_file_size(vdk_image *img, vdk_error *err);

/* ---------------------------------------------------------------- check and repair */

/* Open flag for vdk_image_check (additive to VDK_OPEN_*): no repair on open,
 * an image marked corrupt may be opened for writing, and damage that the
 * check reports (a broken snapshot table, bad refcount blocks) does not stop
 * the open. The format's check then tells the truth and repairs. */
#define VDK_OPEN_CHECK 0x80

/* vdk_image_check modes (bits), as qemu-img check -r. */
#define VDK_CHECK_FIX_LEAKS 0x1  /* -r leaks: free leaked clusters */
#define VDK_CHECK_FIX_ERRORS 0x2 /* -r all (with FIX_LEAKS): fix everything fixable */
#define VDK_CHECK_DRY_RUN 0x4    /* plan the fixes of the mode, write nothing */

/* What a problem is (vdk_check_problem.kind). */
enum vdk_check_kind {
    VDK_CHECK_LEAK = 1,       /* clusters with a refcount and no reference */
    VDK_CHECK_REFCOUNT,       /* refcount differs from the references (too low) */
    VDK_CHECK_OUT_OF_BOUNDS,  /* entry points past the end of the file */
    VDK_CHECK_UNALIGNED,      /* entry is not aligned to a cluster */
    VDK_CHECK_RESERVED,       /* reserved bits set in an entry */
    VDK_CHECK_OVERLAP,        /* structures overlap (a cluster used twice) */
    VDK_CHECK_COPIED,         /* qcow2 COPIED flag disagrees with the refcount */
    VDK_CHECK_COMPRESSED,     /* bad compressed-cluster descriptor */
    VDK_CHECK_REFBLOCK,       /* refcount table entry or block damaged */
    VDK_CHECK_SNAPSHOT,       /* snapshot table damaged */
    VDK_CHECK_IO,             /* a structure could not be read (check error) */
    VDK_CHECK_OTHER,
};

/* What repair does (or would do, in a dry run) about it. */
enum vdk_check_fix {
    VDK_FIX_NONE = 0,         /* nothing: not asked for, or cannot be fixed */
    VDK_FIX_FREE,             /* leaked clusters get refcount 0 (or are cut off) */
    VDK_FIX_REFCOUNT,         /* refcount set to the number of references */
    VDK_FIX_CLEAR_ENTRY,      /* the bad entry is cleared (guest data there is lost) */
    VDK_FIX_COPY,             /* the cluster is copied; the entry points at the copy */
    VDK_FIX_COPIED_FLAG,      /* the COPIED flag is set or cleared */
    VDK_FIX_REBUILD,          /* refcount structure rebuilt from the references */
    VDK_FIX_SNAPSHOT_TABLE,   /* snapshot table rewritten (bad entries dropped) */
};

/* At most this many problems are listed; the counts stay exact. */
#define VDK_CHECK_MAX_PROBLEMS 1000

typedef struct vdk_check_problem {
    int kind;             /* enum vdk_check_kind */
    int fix;              /* enum vdk_check_fix */
    uint64_t offset;      /* host offset of the structure or cluster concerned */
    uint64_t count;       /* clusters concerned (leak runs), else 1 */
    char message[176];    /* qemu-like message ("Leaked cluster 5 refcount=1 reference=0") */
} vdk_check_problem;

/* The result of a check, with qemu-img check's JSON fields. After a repair,
 * corruptions and leaks count what remains; *_fixed what was fixed. */
typedef struct vdk_check_report {
    char *filename;                /* as opened (malloc'd) */
    char *format;                  /* driver name (malloc'd) */
    uint64_t check_errors;         /* structures that could not be checked */
    uint64_t corruptions;
    uint64_t leaks;
    uint64_t corruptions_fixed;
    uint64_t leaks_fixed;
    uint64_t image_end_offset;     /* 0 when the format does not say */
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    unsigned mode;                 /* the VDK_CHECK_* mode the check ran with */
    int rebuild;                   /* the refcount structure is (or was) rebuilt */
    vdk_check_problem *problems;   /* malloc'd, nproblems entries, in finding order */
    size_t nproblems;
    uint64_t problems_dropped;     /* problems not listed (past VDK_CHECK_MAX_PROBLEMS) */
} vdk_check_report;

/*
 * Check the image's metadata (never its data) and, with a fix mode, repair
 * it: the whole plan is made before anything is written, and writes are
 * ordered so that a crash during repair leaves the image no worse than it
 * was. Repair needs an image opened for writing (ideally with
 * VDK_OPEN_CHECK). Returns 0 when the check completed (the report tells
 * what it found), VDK_EUNSUPPORTED when the format has no check, or another
 * error when the check could not complete (rep then holds what was found).
 * Free rep with vdk_check_report_free.
 */
int vdk_image_check(vdk_image *img, unsigned mode, vdk_check_report *rep, vdk_error *err);
void vdk_check_report_free(vdk_check_report *rep);
/* Short names: "leak", "refcount", ...; "free", "refcount", "clear-entry", ... */
const char *vdk_check_kind_name(int kind);
const char *vdk_check_fix_name(int fix);

/* ---------------------------------------------------------------- internal snapshots */

/*
 * Internal snapshots (qcow2): named, frozen views of the disk kept inside
 * the image, each with an optional saved VM state. Snapshots are selected by
 * their ID (unique; "1", "2", ... as qemu-img assigns them); callers that
 * take names resolve them through vdk_snapshot_list. Formats without
 * internal snapshots answer VDK_EUNSUPPORTED. Create, apply and delete need
 * a writable image and are crash safe: a crash at any point leaves the old
 * state or the new one (at worst with leaked clusters).
 */
#define VDK_SNAPSHOT_NO_ICOUNT UINT64_MAX /* icount not recorded (qemu's -1) */

typedef struct vdk_snapshot_info {
    char *id;               /* unique ID */
    char *name;             /* name (qemu's "tag") */
    uint64_t vm_state_size; /* bytes of saved VM state, 0 for a disk-only snapshot */
    uint64_t disk_size;     /* virtual size when the snapshot was taken */
    uint32_t date_sec, date_nsec; /* wall clock when taken */
    uint64_t vm_clock_nsec; /* guest run time when taken */
    uint64_t icount;        /* record/replay instruction count, or VDK_SNAPSHOT_NO_ICOUNT */
} vdk_snapshot_info;

/* The snapshots in table order (oldest first); free with vdk_snapshot_list_free. */
int vdk_snapshot_list(vdk_image *img, vdk_snapshot_info **list, size_t *n, vdk_error *err);
void vdk_snapshot_list_free(vdk_snapshot_info *list, size_t n);

typedef struct vdk_snapshot_params {
    const char *name;       /* required: valid UTF-8, unique in the image */
    const char *id;         /* NULL: one more than the largest numeric ID */
    int has_date;           /* 0: now */
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;        /* VDK_SNAPSHOT_NO_ICOUNT when not recorded */
    uint64_t vm_state_size; /* > 0: the VM state staged with vdk_vmstate_write (its
                             * first vm_state_size bytes) becomes the snapshot's */
} vdk_snapshot_params;

int vdk_snapshot_create(vdk_image *img, const vdk_snapshot_params *p, vdk_error *err);
/* Revert the disk to the snapshot (its virtual size too). */
int vdk_snapshot_apply(vdk_image *img, const char *id, vdk_error *err);
int vdk_snapshot_delete(vdk_image *img, const char *id, vdk_error *err);
/* On a read-only image: show the snapshot's disk instead of the current one
 * (size included), as qemu-img convert -l does. */
int vdk_snapshot_load(vdk_image *img, const char *id, vdk_error *err);

/*
 * VM states. A state is staged in a writable image with vdk_vmstate_write
 * (any positions; whole clusters at cluster-aligned positions are written
 * straight to their final place, without read-modify-write), becomes part of
 * the next snapshot created with vm_state_size > 0, and is dropped by
 * vdk_vmstate_discard (or by closing the image without such a snapshot).
 * Writes may run on any thread, several at once for distinct ranges.
 */
int vdk_vmstate_write(vdk_image *img, const void *buf, size_t len, uint64_t pos,
                      vdk_error *err);
void vdk_vmstate_discard(vdk_image *img);
/* Read bytes [pos, pos+len) of the VM state of snapshot id (past its size: zeros). */
int vdk_vmstate_read(vdk_image *img, const char *id, void *buf, size_t len, uint64_t pos,
                     vdk_error *err);

#ifdef __cplusplus
}
#endif
#endif /* VDK_H */
