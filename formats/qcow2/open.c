/*
 * open.c - the qcow2 driver's entry points and life cycle: probe, open
 * (header, tables, caches, repair of dirty images), the ordered metadata
 * flush, first-write duties (autoclear bits, the dirty bit for lazy
 * refcounts), close, info, the sticky error state and corruption marking.
 *
 * Flush order (qcow2_meta_flush): the L2 cache first writes the refcount
 * blocks it depends on and flushes the file (or, without new refcounts,
 * just flushes the file so that data comes first), then writes the L2
 * tables and flushes; then L1 entries, file flush; then the pending
 * refcount decrements are applied, the refcount blocks written, and a last
 * file flush covers them and any data written in place. With lazy refcounts
 * there is no dependency: refcount blocks are written at the end.
 *
 * Autoclear bits: we maintain only bit 1 (the external data file is a
 * consistent raw image: zero writes and discards also zero the data file,
 * and guest clusters always sit at their guest offset there). Bit 0 (bitmaps) says a bitmaps
 * extension is consistent with the data; we do not track dirty bitmaps, so
 * before the first write we clear the bit and drop the bitmaps extension,
 * freeing its directory, tables and data clusters (bitmaps.c). QEMU, which
 * treats bitmaps of an image whose bit is clear as inconsistent, would drop
 * them at its next read-write open anyway; freeing them ourselves keeps
 * `qemu-img check` free of leaked clusters. Unknown autoclear bits are
 * cleared as the specification requires.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define L2_CACHE_MAX (UINT64_C(32) << 20)
#define RC_CACHE_MAX (UINT64_C(8) << 20)
#define CACHE_MIN 8

/* ---------------------------------------------------------------- errors */

int qcow2_set_broken(qcow2_state *s, int rc)
{
    if (rc < 0 && !s->broken && s->writable)
        s->broken = rc;
    return rc;
}

int qcow2_signal_corruption(qcow2_state *s, vdk_error *err, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!s->writable || s->corrupt)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: %s", msg);
    s->corrupt = true;
    s->incompat |= QCOW2_INCOMPAT_CORRUPT;
    if (s->version >= 3) {
        /* Best effort: the image is unusable for writes either way. */
        if (qcow2_header_write_field(s, QCOW2_OFF_INCOMPAT, 8, NULL) == 0)
            vdk_file_flush(s->file, NULL);
    }
    return vdk_fail(err, VDK_ECORRUPT,
                    "qcow2: Marking image as corrupt: %s; further corruption events will be "
                    "suppressed",
                    msg);
}

/* ---------------------------------------------------------------- caches */

static unsigned clamp_tables(uint64_t want, uint64_t max_bytes, uint64_t cs)
{
    uint64_t cap = max_bytes / cs;
    if (cap < CACHE_MIN)
        cap = CACHE_MIN;
    if (want > cap)
        want = cap;
    if (want < CACHE_MIN)
        want = CACHE_MIN;
    return (unsigned)want;
}

int qcow2_make_caches(qcow2_state *s, vdk_error *err)
{
    if (s->l2_cache)
        vdk_cache_free(s->l2_cache);
    if (s->rc_cache)
        vdk_cache_free(s->rc_cache);
    uint64_t l2_want = qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, s->size) + 1;
    uint64_t covered = s->cluster_size << s->rb_bits;
    uint64_t rc_want = qcow2_host_limit(s) / covered + 2;
    s->l2_cache = vdk_cache_new(s->file, s->cluster_size,
                                clamp_tables(l2_want, L2_CACHE_MAX, s->cluster_size), "L2 table");
    s->rc_cache = vdk_cache_new(s->file, s->cluster_size,
                                clamp_tables(rc_want, RC_CACHE_MAX, s->cluster_size),
                                "refcount block");
    if (!s->l2_cache || !s->rc_cache)
        return vdk_fail(err, -ENOMEM, "out of memory for the metadata caches");
    return 0;
}

/* ---------------------------------------------------------------- tables */

static int read_table(qcow2_state *s, uint64_t off, uint64_t entries, uint64_t **out,
                      vdk_error *err)
{
    *out = calloc(entries ? entries : 1, 8);
    if (!*out)
        return vdk_fail(err, -ENOMEM, "out of memory");
    if (!entries)
        return 0;
    int r = vdk_file_pread(s->file, *out, entries * 8, off, err);
    for (uint64_t i = 0; r == 0 && i < entries; i++)
        (*out)[i] = vdk_be64(&(*out)[i]);
    return r;
}

/* Clusters with a refcount past the end of the file (leaked by a crash, or
 * allocated beyond the last write) still count as used: find the last one. */
static int find_alloc_end(qcow2_state *s, vdk_error *err)
{
    uint64_t fc = qcow2_size_to_clusters(s, s->file_size);
    if (fc > s->alloc_end)
        s->alloc_end = fc;
    for (uint64_t ti = s->rt_size; ti-- > 0;) {
        if (!(s->rt[ti] & QCOW2_RT_OFFSET_MASK))
            continue;
        if (((ti + 1) << s->rb_bits) <= s->alloc_end)
            break;
        uint64_t n = UINT64_C(1) << s->rb_bits, rc;
        for (uint64_t i = n; i-- > 0;) {
            uint64_t c = (ti << s->rb_bits) + i;
            if (c < s->alloc_end)
                break;
            int r = qcow2_refcount_get(s, c, &rc, err);
            if (r < 0)
                return r;
            if (rc) {
                s->alloc_end = c + 1;
                return 0;
            }
        }
    }
    return 0;
}

/* The data file's path: its name resolved against the image's folder. */
static char *data_file_path(qcow2_state *s)
{
    const char *base = s->img ? vdk_image_filename(s->img) : vdk_file_name(s->file);
    const char *name = s->data_file_name, *slash = base ? strrchr(base, '/') : NULL;
    size_t dlen = name[0] == '/' || !slash ? 0 : (size_t)(slash - base) + 1;
    char *out = malloc(dlen + strlen(name) + 1);
    if (out) {
        memcpy(out, base, dlen);
        strcpy(out + dlen, name);
    }
    return out;
}

static int open_data_file(qcow2_state *s, unsigned flags, vdk_error *err)
{
    if (!s->data_file_name || !*s->data_file_name)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: image uses an external data file but does not name it");
    if (s->nb_snapshots)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: internal snapshots are not possible with an external data file");
    if ((s->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) && s->backing_name)
        return vdk_fail(err, VDK_ECORRUPT,
                        "qcow2: a raw external data file cannot have a backing file");
    char *path = data_file_path(s);
    if (!path)
        return vdk_fail(err, -ENOMEM, "out of memory");
    unsigned ff = (s->writable ? VDK_FILE_RDWR : 0) |
                  (flags & VDK_OPEN_NO_LOCK ? VDK_FILE_NOLOCK : 0) |
                  (flags & VDK_OPEN_FORCE_SHARE ? VDK_FILE_FORCE_SHARE : 0);
    vdk_file *df = NULL;
    int r = vdk_file_open(path, ff, vdk_file_cache_mode(s->file), &df, err);
    free(path);
    if (r < 0)
        return r;
    s->data_file = df;
    return 0;
}

static int check_features(qcow2_state *s, unsigned flags, vdk_error *err)
{
    if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && s->writable && !(flags & VDK_OPEN_CHECK))
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: image is corrupt; cannot be opened "
                                           "read/write");
    s->corrupt = s->incompat & QCOW2_INCOMPAT_CORRUPT;
    if (s->crypto_ext)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: encryption header extension present; encrypted images are "
                        "not supported");
    if (!(s->incompat & QCOW2_INCOMPAT_DATA_FILE))
        return 0;
    if (!(flags & VDK_OPEN_ALLOW_DATA_FILE))
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "qcow2: image uses an external data file%s%s%s; opening it needs "
                        "external data files to be allowed",
                        s->data_file_name ? " ('" : "", s->data_file_name ? s->data_file_name : "",
                        s->data_file_name ? "')" : "");
    return open_data_file(s, flags, err);
}

static int load_tables(qcow2_state *s, vdk_error *err)
{
    int r = read_table(s, s->l1_offset, s->l1_size, &s->l1, err);
    if (r < 0)
        return r;
    s->rt_size = ((uint64_t)s->rt_clusters << s->cluster_bits) / 8;
    r = read_table(s, s->rt_offset, s->rt_size, &s->rt, err);
    if (r == 0)
        r = qcow2_snapshots_read(s, err);
    if (r < 0 && s->rt && (s->open_flags & VDK_OPEN_CHECK)) {
        /* The check reads the snapshot table itself and reports on it. */
        qcow2_snapshots_free(s);
        s->nb_snapshots = 0;
        s->snapshots_size = 0;
        vdk_error_clear(err);
        r = 0;
    }
    if (r == 0)
        r = qcow2_overlap_init(s, err);
    return r;
}

/* Repair a dirty image opened for writing, as QEMU does. */
static int repair_if_dirty(qcow2_state *s, unsigned flags, vdk_error *err)
{
    if (!(s->incompat & QCOW2_INCOMPAT_DIRTY) || !s->writable ||
        (flags & VDK_OPEN_NO_REPAIR))
        return 0;
    int r = qcow2_rebuild_refcounts(s, err);
    if (r == 0)
        r = qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, false, err);
    return r;
}

int qcow2_state_open(vdk_file *file, vdk_image *img, unsigned flags, qcow2_state **out,
                     vdk_error *err)
{
    qcow2_state *s = calloc(1, sizeof *s);
    if (!s)
        return vdk_fail(err, -ENOMEM, "out of memory");
    s->img = img;
    s->file = s->data_file = file;
    s->open_flags = flags;
    s->writable = (flags & VDK_OPEN_RDWR) && vdk_file_is_writable(file);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    int r = qcow2_header_parse(s, err);
    if (r == 0)
        r = check_features(s, flags, err);
    if (r == 0)
        r = load_tables(s, err);
    if (r == 0) {
        s->lazy = s->version >= 3 && (s->compat & QCOW2_COMPAT_LAZY);
        s->alloc_end = s->untouched = qcow2_size_to_clusters(s, s->file_size);
        r = qcow2_make_caches(s, err);
    }
    if (r == 0)
        r = repair_if_dirty(s, flags, err);
    if (r == 0 && s->writable) {
        r = find_alloc_end(s, err);
        if (r < 0 && (flags & VDK_OPEN_CHECK)) { /* damaged refcount blocks: the check says */
            vdk_error_clear(err);
            r = 0;
        }
    }
    if (r < 0) {
        s->writable = false; /* nothing to write back */
        qcow2_state_close(s);
        return r;
    }
    s->untouched = s->alloc_end;
    *out = s;
    return 0;
}

/* ---------------------------------------------------------------- flush */

int qcow2_meta_flush(qcow2_state *s, vdk_error *err)
{
    if (s->broken)
        return vdk_fail(err, VDK_EBROKEN,
                        "qcow2: image is in an error state after a failed metadata write");
    /* Refcount increments go first through the L2 cache's dependency (set
     * with every increment, when not lazy); the rest is written at the end. */
    int r = 0;
    if (vdk_cache_is_dirty(s->l2_cache))
        r = vdk_cache_flush(s->l2_cache, err);
    if (r == 0 && s->l1_dirty_lo < s->l1_dirty_hi) {
        r = qcow2_l1_write(s, err);
        if (r == 0)
            r = vdk_file_flush(s->file, err);
    }
    if (r == 0)
        r = qcow2_apply_pending_frees(s, err);
    if (r == 0)
        r = vdk_cache_write(s->rc_cache, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r == 0 && s->data_file != s->file)
        r = vdk_file_flush(s->data_file, err);
    return r < 0 ? qcow2_set_broken(s, r) : 0;
}

static int qcow2_flush(vdk_image *img, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    if (!s->writable)
        return 0;
    pthread_mutex_lock(&s->lock);
    int r = qcow2_meta_flush(s, err);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* ---------------------------------------------------------------- first write */

int qcow2_prepare_write(qcow2_state *s, vdk_error *err)
{
    if (s->broken)
        return vdk_fail(err, VDK_EBROKEN,
                        "qcow2: image is in an error state after a failed metadata write");
    if (s->corrupt)
        return vdk_fail(err, VDK_ECORRUPT, "qcow2: image is marked corrupt; writes are refused");
    if (!s->writable)
        return vdk_fail(err, -EROFS, "qcow2: image is opened read-only");
    if (!s->prepared) {
        uint64_t keep = s->data_file != s->file ? QCOW2_AUTOCLEAR_DATA_RAW : 0;
        int r = qcow2_bitmaps_drop(s, err);
        if (r == 0 && (s->autoclear & ~keep)) {
            s->autoclear &= keep; /* the only bit we maintain */
            r = qcow2_header_write_field(s, QCOW2_OFF_AUTOCLEAR, 8, err);
            if (r == 0)
                r = vdk_file_flush(s->file, err);
        }
        if (r < 0)
            return qcow2_set_broken(s, r);
        s->prepared = true;
    }
    if (s->lazy && !(s->incompat & QCOW2_INCOMPAT_DIRTY)) {
        int r = qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, true, err);
        if (r < 0)
            return r;
        s->dirty_set = true;
    }
    return 0;
}

/* ---------------------------------------------------------------- close */

void qcow2_state_close(qcow2_state *s)
{
    if (!s)
        return;
    qcow2_vmstate_free(s); /* a VM state no snapshot took */
    if (s->writable && !s->broken && s->l2_cache && s->rc_cache) {
        pthread_mutex_lock(&s->lock);
        int r = qcow2_meta_flush(s, NULL);
        if (r == 0 && s->dirty_set && s->npending == 0)
            qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, false, NULL);
        pthread_mutex_unlock(&s->lock);
    }
    if (s->l2_cache)
        vdk_cache_free(s->l2_cache);
    if (s->rc_cache)
        vdk_cache_free(s->rc_cache);
    if (s->data_file && s->data_file != s->file)
        vdk_file_unref(s->data_file);
    qcow2_overlap_free(s);
    qcow2_snapshots_free(s);
    qcow2_state_free_header(s);
    free(s->l1);
    free(s->rt);
    free(s->pending);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

/* ---------------------------------------------------------------- driver slots */

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    return len >= 4 && vdk_be32(buf) == QCOW2_MAGIC ? 100 : 0;
}

static int qcow2_open(vdk_image *img, vdk_error *err)
{
    qcow2_state *s;
    int r = qcow2_state_open(vdk_image_file(img), img, vdk_image_open_flags(img), &s, err);
    if (r < 0)
        return r;
    vdk_image_set_size(img, s->size);
    vdk_image_set_cluster_size(img, (uint32_t)s->cluster_size);
    if (s->backing_name) {
        r = vdk_image_set_backing(img, s->backing_name, s->backing_fmt, 0, err);
        if (r < 0) {
            qcow2_state_close(s);
            return r;
        }
    }
    vdk_image_set_priv(img, s);
    return 0;
}

static void qcow2_close(vdk_image *img)
{
    qcow2_state_close(vdk_image_priv(img));
    vdk_image_set_priv(img, NULL);
}

static int qcow2_info(vdk_image *img, vdk_format_info *info, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    info->dirty = !!(s->incompat & QCOW2_INCOMPAT_DIRTY);
    info->corrupt = s->corrupt;
    if (s->version < 3) {
        vdk_info_add_str(info, "compat", "0.10");
        vdk_info_add_str(info, "compression-type", "zlib");
        vdk_info_add_int(info, "refcount-bits", 16);
        return 0;
    }
    vdk_info_add_str(info, "compat", "1.1");
    vdk_info_add_str(info, "compression-type", s->compression_type ? "zstd" : "zlib");
    vdk_info_add_bool(info, "lazy-refcounts", s->compat & QCOW2_COMPAT_LAZY);
    vdk_info_add_int(info, "refcount-bits", 1 << s->refcount_order);
    if (s->data_file_name) {
        vdk_info_add_str(info, "data-file", s->data_file_name);
        vdk_info_add_bool(info, "data-file-raw", s->autoclear & QCOW2_AUTOCLEAR_DATA_RAW);
    }
    vdk_info_add_bool(info, "corrupt", s->corrupt);
    vdk_info_add_bool(info, "extended-l2", s->ext_l2);
    (void)err;
    return 0;
}

const struct vdk_driver vdk_qcow2_driver = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .flush = qcow2_flush,
    .create = qcow2_create,
    .write_zeroes = qcow2_write_zeroes,
    .discard = qcow2_discard,
    .block_status = qcow2_block_status,
    .resize = qcow2_resize,
    .info = qcow2_info,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .parallel = true,
    .compress_cluster = qcow2_compress_cluster,
    .pwrite_precompressed = qcow2_pwrite_precompressed,
    .measure = qcow2_measure,
    .check = qcow2_check,
    .inspect = qcow2_inspect,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_load = qcow2_snapshot_load,
    .vmstate_write = qcow2_vmstate_write,
    .vmstate_discard = qcow2_vmstate_discard,
    .vmstate_read = qcow2_vmstate_read,
};
