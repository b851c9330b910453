/*
 * image.c - images: opening (probe, driver, backing chain), creating, and the
 * checked wrappers through which every driver slot is called.
 *
 * A vdk_image is one layer: a driver, its private state, its host file and
 * (unless VDK_OPEN_NO_BACKING) the image below it. The wrappers here are the
 * only callers of driver slots. They validate ranges and permissions, hold a
 * per-image mutex for drivers that are not parallel, emulate writethrough
 * caching with a flush after each write, prefix messages with the file name,
 * and walk the backing chain for block status. The wrappers of the internal
 * snapshot slots are in image-snapshot.c.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image-int.h"

/* Longest backing chain we open; deeper chains are almost surely loops. */
#define VDK_MAX_CHAIN 256
/* Bytes read from the start of a file to probe its format. */
#define PROBE_LEN 4096


/* ---------------------------------------------------------------- drivers */

static const struct vdk_driver *find_driver(const char *name)
{
    for (size_t i = 0; vdk_builtin_drivers[i]; i++)
        if (strcmp(vdk_builtin_drivers[i]->name, name) == 0)
            return vdk_builtin_drivers[i];
    return NULL;
}

const char *const *vdk_driver_names(void)
{
    static const char *names[16];
    static atomic_int done;
    if (!atomic_load(&done)) {
        size_t i;
        for (i = 0; vdk_builtin_drivers[i] && i < 15; i++)
            names[i] = vdk_builtin_drivers[i]->name;
        names[i] = NULL;
        atomic_store(&done, 1);
    }
    return names;
}

int vdk_driver_can_create(const char *format)
{
    const struct vdk_driver *drv = find_driver(format);
    return drv && drv->create;
}

/* The best-scoring driver for the first bytes of a file. */
static const struct vdk_driver *probe_driver(const uint8_t *buf, size_t len, int *score)
{
    const struct vdk_driver *best = NULL;
    int best_score = 0;
    for (size_t i = 0; vdk_builtin_drivers[i]; i++) {
        const struct vdk_driver *d = vdk_builtin_drivers[i];
        int s = d->probe ? d->probe(buf, len) : 0;
        if (s > best_score) {
            best = d;
            best_score = s;
        }
    }
    *score = best_score;
    return best;
}

static int probe_file(vdk_file *f, const struct vdk_driver **drv, vdk_error *err)
{
    uint64_t size;
    int r = vdk_file_size(f, &size, err);
    if (r < 0)
        return r;
    uint8_t *buf = vdk_alloc_aligned(PROBE_LEN, true);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    size_t len = size < PROBE_LEN ? (size_t)size : PROBE_LEN;
    r = vdk_file_pread(f, buf, PROBE_LEN, 0, err);
    if (r == 0) {
        int score;
        *drv = probe_driver(buf, len, &score);
        if (!*drv)
            r = vdk_fail(err, VDK_EFORMAT, "%s: could not determine the image format",
                         vdk_file_name(f));
    }
    free(buf);
    return r;
}

/* ---------------------------------------------------------------- paths */

/* Whether name is "proto:..." (a protocol prefix before any slash). */
static bool has_protocol(const char *name)
{
    const char *colon = strchr(name, ':');
    const char *slash = strchr(name, '/');
    return colon && colon != name && (!slash || colon < slash);
}

/* Resolve name against the folder of base, as qemu's path_combine does.
 * Returns a new string or NULL on allocation failure. */
static char *path_combine(const char *base, const char *name)
{
    if (name[0] == '/' || has_protocol(name) || !base)
        return strdup(name);
    const char *slash = strrchr(base, '/');
    if (!slash)
        return strdup(name);
    size_t dlen = (size_t)(slash - base) + 1;
    char *out = malloc(dlen + strlen(name) + 1);
    if (out) {
        memcpy(out, base, dlen);
        strcpy(out + dlen, name);
    }
    return out;
}

/* ---------------------------------------------------------------- lifecycle */

static void image_free(vdk_image *img)
{
    if (img->backing)
        vdk_image_unref(img->backing);
    if (img->file)
        vdk_file_unref(img->file);
    pthread_mutex_destroy(&img->lock);
    free(img->filename);
    free(img->backing_name);
    free(img->backing_fmt);
    free(img->backing_path);
    free(img);
}

static vdk_image *image_new(const char *path, const vdk_open_opts *opts)
{
    vdk_image *img = calloc(1, sizeof *img);
    if (!img)
        return NULL;
    atomic_init(&img->refs, 1);
    pthread_mutex_init(&img->lock, NULL);
    img->flags = opts ? opts->flags : 0;
    if (img->flags & VDK_OPEN_CHECK) /* the check repairs, not the open */
        img->flags |= VDK_OPEN_NO_REPAIR;
    img->cache = opts ? opts->cache : VDK_CACHE_WRITEBACK;
    img->filename = strdup(path);
    if (!img->filename) {
        image_free(img);
        return NULL;
    }
    return img;
}

static unsigned file_flags(unsigned open_flags)
{
    unsigned f = 0;
    if (open_flags & VDK_OPEN_RDWR)
        f |= VDK_FILE_RDWR;
    if (open_flags & VDK_OPEN_FORCE_SHARE)
        f |= VDK_FILE_FORCE_SHARE;
    if (open_flags & VDK_OPEN_NO_LOCK)
        f |= VDK_FILE_NOLOCK;
    return f;
}

/* The layers above the one being opened, to detect loops in a chain. */
struct ancestor {
    dev_t dev;
    ino_t ino;
    const char *filename;
    const struct ancestor *up;
};

static int open_chain(vdk_image *img, const struct ancestor *up, int depth,
                      vdk_error *err);

/* Open one layer (and, below it, its chain). depth counts layers above. */
/* The driver that opens URIs of path's scheme itself ("nbd://..."), if any. */
static const struct vdk_driver *protocol_driver(const char *path)
{
    const char *colon = strchr(path, ':');
    if (!colon || !has_protocol(path))
        return NULL;
    size_t n = (size_t)(colon - path);
    for (size_t i = 0; vdk_builtin_drivers[i]; i++) {
        const char *p = vdk_builtin_drivers[i]->protocols;
        while (p && *p) {
            size_t len = strcspn(p, " ");
            if (len == n && strncmp(p, path, n) == 0)
                return vdk_builtin_drivers[i];
            p += len;
            p += strspn(p, " ");
        }
    }
    return NULL;
}

static int open_layer(const char *path, const vdk_open_opts *opts,
                      const struct ancestor *up, int depth, vdk_image **out, vdk_error *err)
{
    if ((opts->flags & VDK_OPEN_FORCE_SHARE) && (opts->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EINVAL, "%s: force-share (-U) requires a read-only open", path);
    const struct vdk_driver *drv = NULL;
    if (opts->format && !(drv = find_driver(opts->format)))
        return vdk_fail(err, VDK_EFORMAT, "%s: unknown format '%s'", path, opts->format);
    vdk_image *img = image_new(path, opts);
    if (!img)
        return vdk_fail(err, -ENOMEM, "out of memory");
    struct stat st;
    if (stat(path, &st) == 0) {
        img->dev = st.st_dev;
        img->ino = st.st_ino;
        for (const struct ancestor *a = up; a; a = a->up) {
            if (a->dev == st.st_dev && a->ino == st.st_ino) {
                image_free(img);
                return vdk_fail(err, VDK_ECORRUPT, "backing chain loops back to '%s'",
                                a->filename);
            }
        }
    }
    const struct vdk_driver *proto = protocol_driver(path);
    if (proto && drv && drv != proto && strcmp(drv->name, "raw") != 0) {
        /* A format over a protocol (qcow2 inside an NBD export) is not
         * supported yet: only the protocol's own view is. */
        image_free(img);
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' over '%s' is not supported",
                        path, drv->name, proto->name);
    }
    int r = 0;
    if (proto)
        drv = proto;
    else
        r = vdk_file_open(path, file_flags(img->flags), img->cache, &img->file, err);
    if (r == 0 && !drv) {
        r = probe_file(img->file, &drv, err);
        if (r == 0 && strcmp(drv->name, "raw") == 0) {
            if (img->flags & VDK_OPEN_NO_PROBE_RAW)
                r = vdk_fail(err, VDK_EFORMAT, "%s: could not determine the image format", path);
            img->probed_raw = true;
        }
    }
    if (r == 0) {
        img->drv = drv;
        r = drv->open(img, err);
        if (r < 0) {
            img->drv = NULL;
            vdk_error_prefix(err, path);
        }
    }
    if (r == 0 && !(img->flags & VDK_OPEN_NO_BACKING)) {
        struct ancestor self = {img->dev, img->ino, img->filename, up};
        r = open_chain(img, &self, depth, err);
        if (r < 0) {
            drv->close(img);
            img->drv = NULL;
        }
    }
    if (r < 0) {
        image_free(img);
        return r;
    }
    *out = img;
    return 0;
}

static int open_chain(vdk_image *img, const struct ancestor *up, int depth,
                      vdk_error *err)
{
    if (!img->backing_name)
        return 0;
    if (depth + 1 >= VDK_MAX_CHAIN)
        return vdk_fail(err, VDK_ETOOBIG, "%s: backing chain deeper than %d images",
                        img->filename, VDK_MAX_CHAIN);
    vdk_open_opts bopts = {
        .format = img->backing_fmt,
        .flags = (img->flags & (VDK_OPEN_FORCE_SHARE | VDK_OPEN_NO_LOCK |
                                VDK_OPEN_ALLOW_DATA_FILE)),
        .cache = img->cache,
    };
    if (img->backing_flags & VDK_BACKING_FORCE_RAW)
        bopts.format = "raw";
    vdk_image *b = NULL;
    int r = open_layer(img->backing_path, &bopts, up, depth + 1, &b, err);
    if (r < 0) {
        char ctx[600];
        snprintf(ctx, sizeof ctx, "%s: could not open backing file '%s'", img->filename,
                 img->backing_name);
        vdk_error_prefix(err, ctx);
        return r;
    }
    img->backing = b;
    return 0;
}

int vdk_image_open(const char *path, const vdk_open_opts *opts, vdk_image **out,
                   vdk_error *err)
{
    vdk_open_opts def = {.format = NULL, .flags = 0, .cache = VDK_CACHE_WRITEBACK};
    vdk_error_clear(err);
    *out = NULL;
    if (!path || !*path)
        return vdk_fail(err, -EINVAL, "no image file name given");
    return open_layer(path, opts ? opts : &def, NULL, 0, out, err);
}

vdk_image *vdk_image_ref(vdk_image *img)
{
    atomic_fetch_add(&img->refs, 1);
    return img;
}

/* Flush and close the driver; the struct stays until the last reference. */
static int image_shutdown(vdk_image *img, vdk_error *err)
{
    int r = 0;
    if (!img->drv)
        return 0;
    if (img->flags & VDK_OPEN_RDWR)
        r = vdk_image_flush(img, err);
    img->drv->close(img);
    img->drv = NULL;
    return r;
}

void vdk_image_unref(vdk_image *img)
{
    if (!img || atomic_fetch_sub(&img->refs, 1) != 1)
        return;
    image_shutdown(img, NULL);
    image_free(img);
}

int vdk_image_close(vdk_image *img, vdk_error *err)
{
    if (!img)
        return 0;
    int r = 0;
    if (atomic_load(&img->refs) == 1)
        r = image_shutdown(img, err);
    else if (img->flags & VDK_OPEN_RDWR)
        r = vdk_image_flush(img, err);
    vdk_image_unref(img);
    return r;
}

/* ---------------------------------------------------------------- create */

int vdk_image_create(const char *path, const char *format, uint64_t size,
                     const vdk_kv *opts, size_t nopts, vdk_error *err)
{
    vdk_error_clear(err);
    if (!path || !*path)
        return vdk_fail(err, -EINVAL, "no image file name given");
    if (!format)
        format = "raw";
    const struct vdk_driver *drv = find_driver(format);
    if (!drv)
        return vdk_fail(err, VDK_EFORMAT, "unknown format '%s'", format);
    if (!drv->create)
        return vdk_fail(err, VDK_EUNSUPPORTED, "format '%s' does not support creating images",
                        format);
    if (nopts > 64)
        return vdk_fail(err, VDK_EOPTION, "too many options (%zu)", nopts);
    struct stat st;
    bool existed = stat(path, &st) == 0;
    vdk_file *f;
    int r = vdk_file_open(path, VDK_FILE_RDWR | VDK_FILE_CREATE | VDK_FILE_TRUNC,
                          VDK_CACHE_WRITEBACK, &f, err);
    if (r < 0)
        return r;
    vdk_opts o;
    vdk_opts_init(&o, opts, nopts);
    vdk_create_args args = {.path = path, .size = size, .opts = &o};
    r = drv->create(f, &args, err);
    if (r == 0)
        r = vdk_opts_check_used(&o, format, err);
    if (r == 0)
        r = vdk_file_flush(f, err);
    vdk_file_unref(f);
    if (r < 0) {
        vdk_error_prefix(err, path);
        if (!existed)
            unlink(path);
    }
    return r;
}

int vdk_open_for_create(const char *name, const char *format, const char *relative_to,
                        vdk_image **out, vdk_error *err)
{
    char *path = path_combine(relative_to, name);
    if (!path)
        return vdk_fail(err, -ENOMEM, "out of memory");
    vdk_open_opts o = {.format = format,
                       .flags = VDK_OPEN_NO_BACKING | VDK_OPEN_FORCE_SHARE,
                       .cache = VDK_CACHE_WRITEBACK};
    int r = open_layer(path, &o, NULL, 0, out, err);
    free(path);
    return r;
}

/* ---------------------------------------------------------------- accessors */

vdk_file *vdk_image_file(const vdk_image *img) { return img->file; }
void *vdk_image_priv(const vdk_image *img) { return img->priv; }
void vdk_image_set_priv(vdk_image *img, void *priv) { img->priv = priv; }
void vdk_image_set_size(vdk_image *img, uint64_t size) { atomic_store(&img->size, size); }
void vdk_image_set_cluster_size(vdk_image *img, uint32_t cs) { img->cluster_size = cs; }
unsigned vdk_image_open_flags(const vdk_image *img) { return img->flags; }
int vdk_image_cache_mode(const vdk_image *img) { return img->cache; }
const char *vdk_image_format(const vdk_image *img) { return img->drv ? img->drv->name : "?"; }
const char *vdk_image_filename(const vdk_image *img) { return img->filename; }
uint64_t vdk_image_size(const vdk_image *img) { return atomic_load(&img->size); }
uint32_t vdk_image_cluster_size(const vdk_image *img) { return img->cluster_size; }
int vdk_image_is_writable(const vdk_image *img) { return !!(img->flags & VDK_OPEN_RDWR); }
vdk_image *vdk_image_backing(const vdk_image *img) { return img->backing; }
const char *vdk_image_backing_name(const vdk_image *img) { return img->backing_name; }
const char *vdk_image_backing_format(const vdk_image *img) { return img->backing_fmt; }
const char *vdk_image_backing_path(const vdk_image *img) { return img->backing_path; }

int64_t vdk_image_actual_size(const vdk_image *img)
{
    return img->file ? vdk_file_allocated_size(img->file) : -ENOTSUP;
}

int vdk_image_set_backing(vdk_image *img, const char *name, const char *format,
                          unsigned flags, vdk_error *err)
{
    free(img->backing_name);
    free(img->backing_fmt);
    free(img->backing_path);
    img->backing_name = img->backing_fmt = img->backing_path = NULL;
    if (!name)
        return 0;
    img->backing_name = strdup(name);
    img->backing_fmt = format ? strdup(format) : NULL;
    img->backing_path = path_combine(img->filename, name);
    img->backing_flags = flags;
    if (!img->backing_name || !img->backing_path || (format && !img->backing_fmt))
        return vdk_fail(err, -ENOMEM, "out of memory");
    return 0;
}

int vdk_image_format_info(vdk_image *img, vdk_format_info *info, vdk_error *err)
{
    memset(info, 0, sizeof *info);
    if (!img->drv->info)
        return 0;
    int r = img->drv->info(img, info, err);
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}

/* ---------------------------------------------------------------- I/O wrappers */

static int check_range(vdk_image *img, uint64_t len, uint64_t off, bool write,
                       vdk_error *err)
{
    if (!img->drv)
        return vdk_fail(err, -EBADF, "%s: image is closed", img->filename);
    if (write && !(img->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EROFS, "%s: image is opened read-only", img->filename);
    uint64_t size = vdk_image_size(img);
    if (off > size || len > size - off)
        return vdk_fail(err, -EINVAL,
                        "%s: request at offset %llu, length %llu lies beyond the end of the "
                        "image (%llu bytes)",
                        img->filename, (unsigned long long)off, (unsigned long long)len,
                        (unsigned long long)size);
    return 0;
}

/* Common tail of every write: message prefix, writethrough flush. */
static int after_write(vdk_image *img, int r, vdk_error *err)
{
    if (r < 0) {
        vdk_error_prefix(err, img->filename);
        return r;
    }
    if (img->cache == VDK_CACHE_WRITETHROUGH || img->cache == VDK_CACHE_DIRECTSYNC)
        return vdk_image_flush(img, err);
    return 0;
}

int vdk_image_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    int r = check_range(img, len, off, false, err);
    if (r < 0 || len == 0)
        return r;
    lock_slot(img);
    r = img->drv->pread(img, buf, len, off, err);
    unlock_slot(img);
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}

/*
 * An image whose format was guessed as raw must not be turned into another
 * format by a write to its first sector (qemu restricts this too): probe
 * what the first sector would become and refuse if it looks like a format.
 */
static int guard_probed_raw(vdk_image *img, const void *buf, size_t len, uint64_t off,
                            vdk_error *err)
{
    if (!img->probed_raw || off >= 512)
        return 0;
    uint8_t head[512];
    int r = img->drv->pread(img, head, sizeof head, 0, err);
    if (r < 0)
        return r;
    size_t n = len < 512 - off ? len : 512 - off;
    memcpy(head + off, buf, n);
    int score;
    const struct vdk_driver *d = probe_driver(head, sizeof head, &score);
    if (d && score > 1)
        return vdk_fail(err, -EPERM,
                        "%s: write to offset 0 would make this raw image look like %s; the "
                        "format was guessed, so give it explicitly (-f raw) to allow this",
                        img->filename, d->name);
    return 0;
}

int vdk_image_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off,
                     vdk_error *err)
{
    int r = check_range(img, len, off, true, err);
    if (r < 0 || len == 0)
        return r;
    if (img->probed_raw && off < 512 && img->size >= 512 &&
        (r = guard_probed_raw(img, buf, len, off, err)) < 0)
        return r;
    lock_slot(img);
    r = img->drv->pwrite(img, buf, len, off, err);
    unlock_slot(img);
    return after_write(img, r, err);
}

/* Emulated write_zeroes: write a zero buffer in bounded chunks. */
static int zeroes_by_write(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err)
{
    size_t chunk = len < (1u << 20) ? (size_t)len : (1u << 20);
    void *zero = vdk_alloc_aligned(chunk, true);
    if (!zero)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = 0;
    while (len > 0 && r == 0) {
        size_t n = len < chunk ? (size_t)len : chunk;
        r = img->drv->pwrite(img, zero, n, off, err);
        off += n;
        len -= n;
    }
    free(zero);
    return r;
}

int vdk_image_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                           vdk_error *err)
{
    int r = check_range(img, len, off, true, err);
    if (r < 0 || len == 0)
        return r;
    lock_slot(img);
    if (img->drv->write_zeroes)
        r = img->drv->write_zeroes(img, len, off, flags, err);
    else
        r = zeroes_by_write(img, len, off, err);
    unlock_slot(img);
    return after_write(img, r, err);
}

int vdk_image_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err)
{
    int r = check_range(img, len, off, true, err);
    if (r < 0 || len == 0 || !img->drv->discard)
        return r;
    lock_slot(img);
    r = img->drv->discard(img, len, off, err);
    unlock_slot(img);
    return after_write(img, r, err);
}

int vdk_image_pwrite_compressed(vdk_image *img, const void *buf, size_t len, uint64_t off,
                                vdk_error *err)
{
    int r = check_range(img, len, off, true, err);
    if (r < 0 || len == 0)
        return r;
    if (!img->drv->pwrite_compressed)
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' cannot store compressed data",
                        img->filename, img->drv->name);
    uint32_t cs = img->cluster_size;
    if (cs && (off % cs || (len % cs && off + len != img->size)))
        return vdk_fail(err, -EINVAL,
                        "%s: compressed writes must cover whole clusters (%u bytes)",
                        img->filename, cs);
    lock_slot(img);
    r = img->drv->pwrite_compressed(img, buf, len, off, err);
    unlock_slot(img);
    return after_write(img, r, err);
}

int vdk_image_flush(vdk_image *img, vdk_error *err)
{
    if (!img->drv)
        return vdk_fail(err, -EBADF, "%s: image is closed", img->filename);
    if (!(img->flags & VDK_OPEN_RDWR))
        return 0;
    lock_slot(img);
    int r = img->drv->flush(img, err);
    unlock_slot(img);
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}

int vdk_image_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
                     vdk_error *err)
{
    if (!img->drv)
        return vdk_fail(err, -EBADF, "%s: image is closed", img->filename);
    if (!(img->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EROFS, "%s: image is opened read-only", img->filename);
    if (!img->drv->resize)
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' cannot be resized",
                        img->filename, img->drv->name);
    uint64_t old = vdk_image_size(img);
    if (size < old && !(flags & VDK_RESIZE_SHRINK))
        return vdk_fail(err, -EINVAL,
                        "%s: use the shrink option (--shrink) to shrink an image from %llu to "
                        "%llu bytes; data past the new end is lost",
                        img->filename, (unsigned long long)old, (unsigned long long)size);
    if (size == old)
        return 0;
    lock_slot(img);
    int r = img->drv->resize(img, size, prealloc, flags, err);
    unlock_slot(img);
    return after_write(img, r, err);
}

/* ---------------------------------------------------------------- backing reads */

int vdk_backing_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    vdk_image *b = img->backing;
    /* A writable image whose recorded backing file was not opened cannot
     * tell what its unallocated ranges hold: copying zeros into a cluster
     * (copy-on-write) would silently replace the backing data. */
    if (!b && img->backing_name && (img->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EIO,
                        "backing file '%s' is not open, so data it holds at offset %llu "
                        "cannot be read",
                        img->backing_name, (unsigned long long)off);
    uint64_t bsize = b ? vdk_image_size(b) : 0;
    size_t n = 0; /* bytes that come from the backing file */
    if (b && off < bsize)
        n = bsize - off < len ? (size_t)(bsize - off) : len;
    if (n < len)
        memset((uint8_t *)buf + n, 0, len - n);
    if (n == 0)
        return 0;
    return vdk_image_pread(b, buf, n, off, err);
}

/* ---------------------------------------------------------------- block status */

/* One layer's answer, refined where the driver asks (VDK_BS_RECURSE): a data
 * range whose host blocks are a hole in the layer's file reads as zeros, and
 * qemu reports it as zero too. */
static int layer_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                        vdk_error *err)
{
    memset(ext, 0, sizeof *ext);
    ext->start = off;
    if (!img->drv->block_status) {
        ext->length = len;
        ext->flags = VDK_BS_DATA | VDK_BS_ALLOCATED;
        return 0;
    }
    lock_slot(img);
    int r = img->drv->block_status(img, off, len, ext, err);
    unlock_slot(img);
    if (r < 0) {
        vdk_error_prefix(err, img->filename);
        return r;
    }
    if (ext->start != off || ext->length == 0 || ext->length > len)
        return vdk_fail(err, -EIO, "%s: driver '%s' returned a bad block status",
                        img->filename, img->drv->name);
    ext->layer = img;
    unsigned f = ext->flags;
    ext->flags &= ~(unsigned)VDK_BS_RECURSE;
    if ((f & VDK_BS_RECURSE) && (f & VDK_BS_DATA) && (f & VDK_BS_OFFSET_VALID) &&
        !(f & VDK_BS_ZERO) && img->file) {
        bool is_data;
        uint64_t run;
        if (vdk_file_block_status(img->file, ext->offset, ext->length, &is_data, &run, NULL) == 0) {
            if (!is_data)
                ext->flags |= VDK_BS_ZERO;
            if (run < ext->length)
                ext->length = run;
        }
    }
    return 0;
}

/* Status of the chain at off, unmerged. */
static int chain_status(vdk_image *img, uint64_t off, uint64_t len, unsigned qflags,
                        vdk_extent *ext, vdk_error *err)
{
    int depth = 0;
    for (;;) {
        int r = layer_status(img, off, len, ext, err);
        if (r < 0)
            return r;
        ext->depth = depth;
        if (ext->flags & VDK_BS_ALLOCATED)
            return 0;
        len = ext->length;
        vdk_image *b = img->backing;
        bool no_backing = !img->backing_name;
        if (qflags & VDK_BS_TOP_ONLY || !b || off >= vdk_image_size(b)) {
            /* Unallocated here. Reads give zeros unless a backing file
             * that was not opened would supply them. Where the zeros are
             * this layer's answer (no backing file, or past its end), a
             * host offset the layer gave stays, as QEMU keeps it. */
            bool keep = (ext->flags & VDK_BS_OFFSET_VALID) &&
                        (no_backing || (b && off >= vdk_image_size(b)));
            ext->flags = (no_backing || b) ? VDK_BS_ZERO : 0;
            if (qflags & VDK_BS_TOP_ONLY && b && off < vdk_image_size(b))
                ext->flags = 0;
            if (keep)
                ext->flags |= VDK_BS_OFFSET_VALID;
            else
                ext->offset = 0;
            return 0;
        }
        uint64_t bsize = vdk_image_size(b);
        if (len > bsize - off)
            len = bsize - off;
        img = b;
        depth++;
    }
}

static bool mergeable(const vdk_extent *a, const vdk_extent *b)
{
    if (a->flags != b->flags || a->depth != b->depth || a->layer != b->layer)
        return false;
    if (a->flags & VDK_BS_OFFSET_VALID)
        return a->offset + a->length == b->offset;
    return true;
}

int vdk_image_block_status(vdk_image *img, uint64_t off, uint64_t len, unsigned qflags,
                           vdk_extent *ext, vdk_error *err)
{
    int r = check_range(img, len, off, false, err);
    if (r < 0)
        return r;
    if (len == 0)
        return vdk_fail(err, -EINVAL, "%s: block status of an empty range", img->filename);
    r = chain_status(img, off, len, qflags, ext, err);
    while (r == 0 && ext->length < len) {
        vdk_extent next;
        r = chain_status(img, off + ext->length, len - ext->length, qflags, &next, err);
        if (r < 0 || !mergeable(ext, &next))
            break;
        ext->length += next.length;
    }
    return r < 0 ? r : 0;
}

/* ---------------------------------------------------------------- two-phase compressed writes */

int vdk_image_compress_cluster(vdk_image *img, void *dst, size_t cap, const void *src,
                               size_t len, uint64_t off, vdk_error *err)
{
    int r = check_range(img, len, off, true, err);
    if (r < 0)
        return r;
    if (!img->drv->compress_cluster || !img->drv->pwrite_precompressed)
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' cannot compress clusters apart",
                        img->filename, img->drv->name);
    r = img->drv->compress_cluster(img, dst, cap, src, len, off, err);
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}

int vdk_image_pwrite_precompressed(vdk_image *img, const void *data, size_t dlen,
                                   uint64_t off, vdk_error *err)
{
    uint64_t cs = img->cluster_size, size = vdk_image_size(img);
    uint64_t len = cs && off < size ? (size - off < cs ? size - off : cs) : 0;
    int r = check_range(img, len, off, true, err);
    if (r < 0)
        return r;
    if (!img->drv->pwrite_precompressed)
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' cannot compress clusters apart",
                        img->filename, img->drv->name);
    if (!cs || off % cs || dlen == 0 || dlen >= cs)
        return vdk_fail(err, -EINVAL, "%s: bad precompressed cluster (%zu bytes at offset %llu)",
                        img->filename, dlen, (unsigned long long)off);
    lock_slot(img);
    r = img->drv->pwrite_precompressed(img, data, dlen, off, err);
    unlock_slot(img);
    return after_write(img, r, err);
}

/* ---------------------------------------------------------------- inspection */

void vdk_emit_str(vdk_emitter *e, const char *key, const char *s)
{
    e->string(e, key, s, strlen(s));
}

void vdk_emit_strf(vdk_emitter *e, const char *key, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    e->string(e, key, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

void vdk_emit_error(vdk_emitter *e, const char *key, const vdk_error *err, int code)
{
    vdk_emit_open(e, key);
    vdk_emit_str(e, "error", err && err->msg[0] ? err->msg : vdk_strerror(code));
    vdk_emit_str(e, "code", vdk_errname(code));
    vdk_emit_close(e);
}

int vdk_image_inspect(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                      vdk_emitter *out, vdk_error *err)
{
    if (!img->drv)
        return vdk_fail(err, -EBADF, "%s: image is closed", img->filename);
    if (!img->drv->inspect)
        return vdk_fail(err, VDK_EUNSUPPORTED, "%s: format '%s' has no inspection queries",
                        img->filename, img->drv->name);
    int r = img->drv->inspect(img, query, args, nargs, out, err);
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}

int64_t vdk_image_file_size(vdk_image *img, vdk_error *err)
{
    if (!img->file)
        return vdk_fail(err, -EOPNOTSUPP, "%s: image has no host file", img->filename);
    uint64_t size;
    int r = vdk_file_size(img->file, &size, err);
    return r < 0 ? r : (int64_t)size;
}

int64_t vdk_image_pread_file(vdk_image *img, void *buf, size_t len, uint64_t off,
                             vdk_error *err)
{
    int64_t size = vdk_image_file_size(img, err);
    if (size < 0)
        return size;
    if (off >= (uint64_t)size)
        return 0;
    if (len > (uint64_t)size - off)
        len = (size_t)((uint64_t)size - off);
    int r = len ? vdk_file_pread(img->file, buf, len, off, err) : 0;
    return r < 0 ? r : (int64_t)len;
}

/* ---------------------------------------------------------------- check */

int vdk_image_check(vdk_image *img, unsigned mode, vdk_check_report *rep, vdk_error *err)
{
    memset(rep, 0, sizeof *rep);
    if (!img->drv)
        return vdk_fail(err, -EBADF, "%s: image is closed", img->filename);
    rep->filename = strdup(img->filename);
    rep->format = strdup(img->drv->name);
    rep->mode = mode;
    if (!rep->filename || !rep->format)
        return vdk_fail(err, -ENOMEM, "out of memory");
    if (!img->drv->check)
        return vdk_fail(err, VDK_EUNSUPPORTED, "This image format does not support checks");
    bool fixing = (mode & (VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS)) &&
                  !(mode & VDK_CHECK_DRY_RUN);
    if (fixing && !(img->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EROFS, "%s: a repair needs the image opened for writing",
                        img->filename);
    lock_slot(img);
    int r = img->drv->check(img, mode, rep, err);
    unlock_slot(img);
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}
