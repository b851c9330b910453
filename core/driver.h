/*
 * driver.h - the contract between the core and a format driver.
 *
 * A format (raw, qcow2, ...) is one const struct vdk_driver, listed in
 * formats/registry.c. This header is the only core header a format includes
 * (it pulls in the file layer, the table cache and the byte-order helpers).
 * Formats never see Lua or libuv.
 *
 * Only the core calls the slots, through the vdk_image_* wrappers, which have
 * already checked that the range lies inside the virtual size, that the image
 * is writable for write slots, and that lengths are non-zero. Slots run on any
 * thread; a driver with .parallel = true must lock its own metadata, a driver
 * without it gets one call at a time (the core holds a per-image mutex).
 *
 * Every slot returns 0 or a negative code (negated errno or VDK_E*). On
 * failure it fills err through vdk_fail() with a message that names the
 * structure and offset; the core prefixes the image's file name.
 *
 * Fields are only ever appended, and initialised with designated initializers.
 */
#ifndef VDK_DRIVER_H
#define VDK_DRIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "endian.h"
#include "file.h"
#include "vdk.h"

/* Options parsed from vdk_kv pairs; each getter marks its key as used. */
typedef struct vdk_opts {
    const vdk_kv *kv;
    size_t n;
    uint64_t used; /* bit i set when kv[i] was read (at most 64 options) */
} vdk_opts;

/* Arguments of the create slot. */
typedef struct vdk_create_args {
    const char *path;    /* the new image's path, as given */
    uint64_t size;       /* virtual size; VDK_SIZE_FROM_BACKING when not given */
    vdk_opts *opts;      /* format options; the driver must use or reject each */
} vdk_create_args;

/* Arguments of the measure slot: an image of size bytes with creation
 * options opts (the driver must use or reject each), holding the data of
 * source (its whole chain) when source is not NULL. */
typedef struct vdk_measure_args {
    uint64_t size;
    vdk_opts *opts;
    vdk_image *source;
} vdk_measure_args;

struct vdk_driver {
    /* Required. */
    const char *name;
    /* Score in 0..100 for how surely the first bytes of a file (len may be
     * short, even 0) are this format. raw answers 1; a magic match 100. */
    int (*probe)(const uint8_t *buf, size_t len);
    /* Parse and validate the image in img's file; set size (and cluster
     * size, backing name) through the vdk_image_set_* calls; keep private
     * state with vdk_image_set_priv. Must not leave anything allocated on
     * failure. */
    int (*open)(vdk_image *img, vdk_error *err);
    /* Release private state. The core has flushed already (when writable). */
    void (*close)(vdk_image *img);
    int (*pread)(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err);
    int (*pwrite)(vdk_image *img, const void *buf, size_t len, uint64_t off,
                  vdk_error *err);
    /* Write back cached metadata in a safe order, then vdk_file_flush. */
    int (*flush)(vdk_image *img, vdk_error *err);

    /* Optional: NULL means "not supported" unless said otherwise. */

    /* Write a new image into an empty, locked, writable file. */
    int (*create)(vdk_file *file, const vdk_create_args *args, vdk_error *err);
    /* NULL: the core writes zero buffers. */
    int (*write_zeroes)(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                        vdk_error *err);
    /* NULL: discard is a successful no-op. */
    int (*discard)(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err);
    /*
     * Status of this layer only, for the range starting at off: fill ext with
     * start = off, 0 < length <= len, and flags from VDK_BS_DATA, VDK_BS_ZERO,
     * VDK_BS_ALLOCATED (this layer defines the range; without it the core
     * asks the backing file), VDK_BS_OFFSET_VALID (+ offset in this layer's
     * file), VDK_BS_COMPRESSED, and VDK_BS_RECURSE (ask the host file
     * whether a data range is really a hole, as qemu does for qcow2 images
     * with preallocated metadata). NULL: everything is allocated data.
     */
    int (*block_status)(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                        vdk_error *err);
    /* Change the virtual size (the core has checked shrink permission). */
    int (*resize)(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
                  vdk_error *err);
    /* Fill the format-specific part of info (vdk_info_add_*). */
    int (*info)(vdk_image *img, vdk_format_info *info, vdk_error *err);
    /* Write whole clusters compressed. */
    int (*pwrite_compressed)(vdk_image *img, const void *buf, size_t len, uint64_t off,
                             vdk_error *err);
    /* The driver locks its own metadata and may be called concurrently. */
    bool parallel;
    /* URI schemes this driver opens itself, without a host file, separated
     * by spaces ("nbd nbd+unix"). For such images vdk_image_file() is NULL
     * and the driver's open finds the URI in vdk_image_filename(). */
    const char *protocols;
    /* Two-phase compressed writes (vdk.h): compress one cluster in memory,
     * any thread, no I/O and no metadata; return the stored length, or 0
     * when it does not shrink. NULL: not supported. */
    int (*compress_cluster)(vdk_image *img, void *dst, size_t cap, const void *src,
                            size_t len, uint64_t off, vdk_error *err);
    /* Allocate and write one cluster in the form compress_cluster produced. */
    int (*pwrite_precompressed)(vdk_image *img, const void *data, size_t dlen, uint64_t off,
                                vdk_error *err);
    /* Sizes a new image would take (qemu-img measure); see vdk_measure_args. */
    int (*measure)(const struct vdk_measure_args *args, vdk_measure_info *out,
                   vdk_error *err);
    /* Inspection (vdk_image_inspect): answer the named query about this
     * layer by emitting fields into out (one keyed table is open); unknown
     * queries: VDK_EUNSUPPORTED. Read-only; may run beside I/O. */
    int (*inspect)(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                   vdk_emitter *out, vdk_error *err);
    /* Check (and with VDK_CHECK_FIX_*, repair) the metadata: fill rep's counts
     * and list problems with vdk_check_add; the core has filled filename and
     * format, checked that a repair has a writable image, and zeroed the rest.
     * Return 0 when the check completed, else a code (rep keeps what was found). */
    int (*check)(vdk_image *img, unsigned mode, vdk_check_report *rep, vdk_error *err);

    /* Internal snapshots and VM states (contracts in vdk.h, vdk_snapshot_*
     * and vdk_vmstate_*). The core has checked that the image is writable
     * for create, apply, delete and vmstate_write, read-only for load, and
     * that ids and params are not NULL. NULL: not supported. */
    int (*snapshot_list)(vdk_image *img, vdk_snapshot_info **list, size_t *n,
                         vdk_error *err);
    int (*snapshot_create)(vdk_image *img, const vdk_snapshot_params *p, vdk_error *err);
    int (*snapshot_apply)(vdk_image *img, const char *id, vdk_error *err);
    int (*snapshot_delete)(vdk_image *img, const char *id, vdk_error *err);
    int (*snapshot_load)(vdk_image *img, const char *id, vdk_error *err);
    int (*vmstate_write)(vdk_image *img, const void *buf, size_t len, uint64_t pos,
                         vdk_error *err);
    void (*vmstate_discard)(vdk_image *img);
    int (*vmstate_read)(vdk_image *img, const char *id, void *buf, size_t len, uint64_t pos,
                        vdk_error *err);
};

/* Block-status flag for drivers only: refine this DATA|OFFSET_VALID answer
 * with the host file's hole map (the core clears it before returning). */
#define VDK_BS_RECURSE 0x100

/* The built-in drivers (formats/registry.c), NULL-terminated. */
extern const struct vdk_driver *const vdk_builtin_drivers[];

/* ---------------------------------------------------------------- image accessors */

vdk_file *vdk_image_file(const vdk_image *img);
void *vdk_image_priv(const vdk_image *img);
void vdk_image_set_priv(vdk_image *img, void *priv);
void vdk_image_set_size(vdk_image *img, uint64_t size);
void vdk_image_set_cluster_size(vdk_image *img, uint32_t cluster_size);
/* Flags of vdk_open_opts (VDK_OPEN_*) the image was opened with. */
unsigned vdk_image_open_flags(const vdk_image *img);
/* Cache mode (enum vdk_cache_mode) the image was opened with: protocol
 * drivers, which have no vdk_file, honour "unsafe" (no flushes) with it. */
int vdk_image_cache_mode(const vdk_image *img);

/* Record the backing file named in the image. format may be NULL (probe);
 * "raw" is honoured and never probed. The core opens the chain after open. */
#define VDK_BACKING_FORCE_RAW 0x1
int vdk_image_set_backing(vdk_image *img, const char *name, const char *format,
                          unsigned flags, vdk_error *err);

/*
 * Read guest data from the backing chain for a range this layer does not
 * define: reads the backing image, zero-fills past its end, and zero-fills
 * everything when there is no backing file. When the image names a backing
 * file that was not opened (VDK_OPEN_NO_BACKING): zeros if the image is
 * read-only, an error if it is writable (copy-on-write must not invent data).
 */
int vdk_backing_pread(vdk_image *img, void *buf, size_t len, uint64_t off,
                      vdk_error *err);

/* ---------------------------------------------------------------- errors */

/* Record code and a printf-style message in err (if not NULL); return code. */
int vdk_fail(vdk_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix err's message with "prefix: " (used by the core for file names). */
void vdk_error_prefix(vdk_error *err, const char *prefix);

/* ---------------------------------------------------------------- options */

void vdk_opts_init(vdk_opts *o, const vdk_kv *kv, size_t n);
/* Each returns 1 and sets *out when the key is present, 0 when absent, or a
 * negative code (VDK_EOPTION with message) when the value is malformed. */
int vdk_opt_str(vdk_opts *o, const char *key, const char **out);
int vdk_opt_size(vdk_opts *o, const char *key, uint64_t *out, vdk_error *err);
int vdk_opt_bool(vdk_opts *o, const char *key, bool *out, vdk_error *err);
/* VDK_EOPTION naming the first key nobody used, else 0. */
int vdk_opts_check_used(vdk_opts *o, const char *format, vdk_error *err);
/* Parse "512", "64k", "1M", "2G" (binary units, like qemu-img). */
int vdk_parse_size(const char *s, uint64_t *out);

/* For measure slots: bytes of source (whole chain) in granularity-aligned
 * blocks that hold data (not zero), as a copy would allocate them. */
int vdk_measure_data(vdk_image *source, uint64_t granularity, uint64_t *bytes,
                     vdk_error *err);

/* ---------------------------------------------------------------- info */

void vdk_info_add_str(vdk_format_info *info, const char *key, const char *val);
void vdk_info_add_int(vdk_format_info *info, const char *key, int64_t val);
void vdk_info_add_bool(vdk_format_info *info, const char *key, bool val);

/* ---------------------------------------------------------------- check */

/* List a problem in rep (bounded by VDK_CHECK_MAX_PROBLEMS; past that only
 * problems_dropped grows). The counts are the caller's to keep. */
void vdk_check_add(vdk_check_report *rep, int kind, int fix, uint64_t offset, uint64_t count,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* ---------------------------------------------------------------- inspection */

/* Emit helpers for inspect slots (key is NULL inside a list). */
static inline void vdk_emit_open(vdk_emitter *e, const char *key) { e->open(e, key, 0); }
static inline void vdk_emit_list(vdk_emitter *e, const char *key) { e->open(e, key, 1); }
static inline void vdk_emit_close(vdk_emitter *e) { e->close(e); }
static inline void vdk_emit_int(vdk_emitter *e, const char *key, int64_t v)
{
    e->integer(e, key, v);
}
static inline void vdk_emit_u64(vdk_emitter *e, const char *key, uint64_t v)
{
    e->integer(e, key, (int64_t)v);
}
static inline void vdk_emit_bool(vdk_emitter *e, const char *key, bool v)
{
    e->boolean(e, key, v);
}
void vdk_emit_str(vdk_emitter *e, const char *key, const char *s);
void vdk_emit_strf(vdk_emitter *e, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* An error while answering part of a query: {key = {error = msg, code = name}}
 * (key NULL in a list), so one bad entry does not hide the rest. */
void vdk_emit_error(vdk_emitter *e, const char *key, const vdk_error *err, int code);

/* ---------------------------------------------------------------- helpers */

/* Open an existing image read-only (for create: size of a backing file). The
 * name is resolved against the directory of relative_to when relative. */
int vdk_open_for_create(const char *name, const char *format, const char *relative_to,
                        vdk_image **out, vdk_error *err);

#endif /* VDK_DRIVER_H */
