/*
 * raw.c - the raw format: guest offset N is byte N of the host file.
 *
 * Read, write, create (with preallocation off, falloc, full), resize, discard
 * (punches holes), write_zeroes, and block status from the file's own
 * SEEK_DATA/SEEK_HOLE answers. Stateless beyond the file, so it is parallel.
 * The virtual size is the file size; a file whose size is not a multiple of
 * 512 keeps its exact size (reads never go past it).
 */
#include <errno.h>
#include <string.h>

#include "driver.h"

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1; /* anything is a raw image; every real format outscores us */
}

static int raw_open(vdk_image *img, vdk_error *err)
{
    uint64_t size;
    int r = vdk_file_size(vdk_image_file(img), &size, err);
    if (r < 0)
        return r;
    vdk_image_set_size(img, size);
    return 0;
}

static void raw_close(vdk_image *img) { (void)img; }

static int raw_pread(vdk_image *img, void *buf, size_t len, uint64_t off, vdk_error *err)
{
    return vdk_file_pread(vdk_image_file(img), buf, len, off, err);
}

static int raw_pwrite(vdk_image *img, const void *buf, size_t len, uint64_t off,
                      vdk_error *err)
{
    return vdk_file_pwrite(vdk_image_file(img), buf, len, off, err);
}

static int raw_flush(vdk_image *img, vdk_error *err)
{
    return vdk_file_flush(vdk_image_file(img), err);
}

static int raw_write_zeroes(vdk_image *img, uint64_t len, uint64_t off, unsigned flags,
                            vdk_error *err)
{
    return vdk_file_write_zeroes(vdk_image_file(img), off, len,
                                 (flags & VDK_ZERO_MAY_UNMAP) != 0, err);
}

static int raw_discard(vdk_image *img, uint64_t len, uint64_t off, vdk_error *err)
{
    int r = vdk_file_discard(vdk_image_file(img), off, len, err);
    /* Discard is advisory: a file system that cannot punch keeps the data. */
    if (r == -ENOTSUP || r == -EOPNOTSUPP) {
        vdk_error_clear(err);
        return 0;
    }
    return r;
}

static int raw_block_status(vdk_image *img, uint64_t off, uint64_t len, vdk_extent *ext,
                            vdk_error *err)
{
    bool is_data;
    uint64_t run;
    int r = vdk_file_block_status(vdk_image_file(img), off, len, &is_data, &run, err);
    if (r < 0)
        return r;
    ext->start = off;
    ext->length = run;
    ext->offset = off;
    ext->flags = VDK_BS_ALLOCATED | VDK_BS_OFFSET_VALID | (is_data ? VDK_BS_DATA : VDK_BS_ZERO);
    return 0;
}

static int raw_resize(vdk_image *img, uint64_t size, int prealloc, unsigned flags,
                      vdk_error *err)
{
    vdk_file *f = vdk_image_file(img);
    uint64_t old = vdk_image_size(img);
    int r;
    if (size > old && (prealloc == VDK_PREALLOC_FALLOC || prealloc == VDK_PREALLOC_FULL))
        r = vdk_file_allocate(f, old, size - old, prealloc, err);
    else if (prealloc == VDK_PREALLOC_METADATA)
        return vdk_fail(err, VDK_EOPTION, "raw: preallocation mode 'metadata' is not supported");
    else
        r = vdk_file_truncate(f, size, err);
    if (r == 0)
        vdk_image_set_size(img, size);
    return r;
}

static int raw_create(vdk_file *file, const vdk_create_args *args, vdk_error *err)
{
    const char *pa = "off";
    int prealloc = VDK_PREALLOC_OFF;
    if (vdk_opt_str(args->opts, "preallocation", &pa) &&
        (vdk_prealloc_parse(pa, &prealloc) < 0 || prealloc == VDK_PREALLOC_METADATA))
        return vdk_fail(err, VDK_EOPTION,
                        "raw: invalid preallocation mode '%s' (use off, falloc or full)", pa);
    const char *s;
    if (vdk_opt_str(args->opts, "backing_file", &s) || vdk_opt_str(args->opts, "backing_fmt", &s))
        return vdk_fail(err, VDK_EOPTION, "raw: format does not support backing files");
    if (args->size == VDK_SIZE_FROM_BACKING)
        return vdk_fail(err, VDK_EOPTION, "raw: image size must be given");
    if (prealloc != VDK_PREALLOC_OFF && args->size > 0)
        return vdk_file_allocate(file, 0, args->size, prealloc, err);
    return vdk_file_truncate(file, args->size, err);
}

static int raw_info(vdk_image *img, vdk_format_info *info, vdk_error *err)
{
    (void)img;
    (void)info;
    (void)err;
    return 0; /* qemu-img prints no format-specific section for raw */
}

/* qemu-img measure: a raw image takes its virtual size (rounded up to a
 * sector when given as a number), allocated or not. */
static int raw_measure(const vdk_measure_args *args, vdk_measure_info *out, vdk_error *err)
{
    const char *pa;
    int prealloc;
    if (vdk_opt_str(args->opts, "preallocation", &pa) &&
        (vdk_prealloc_parse(pa, &prealloc) < 0 || prealloc == VDK_PREALLOC_METADATA))
        return vdk_fail(err, VDK_EOPTION,
                        "raw: invalid preallocation mode '%s' (use off, falloc or full)", pa);
    uint64_t size = args->source ? args->size : (args->size + 511) / 512 * 512;
    out->required = out->fully_allocated = size;
    return 0;
}

const struct vdk_driver vdk_raw_driver = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .flush = raw_flush,
    .create = raw_create,
    .write_zeroes = raw_write_zeroes,
    .discard = raw_discard,
    .block_status = raw_block_status,
    .resize = raw_resize,
    .info = raw_info,
    .parallel = true,
    .measure = raw_measure,
};
