/*
 * measure.c - qemu-img measure: how many bytes a new image would take.
 *
 * vdk_measure finds the format's driver and asks its measure slot, with the
 * creation options and, when measuring a conversion, the source image.
 * vdk_measure_data is the part every format shares: it walks the source's
 * block status (whole chain) and counts the granularity-sized blocks that
 * hold data, exactly as qemu counts them (zero ranges are free, a data
 * range counts from the start of its first block to the end of its last).
 */
#include <errno.h>
#include <string.h>

#include "driver.h"

int vdk_measure_data(vdk_image *source, uint64_t granularity, uint64_t *bytes,
                     vdk_error *err)
{
    uint64_t size = vdk_image_size(source), required = 0, g = granularity ? granularity : 1;
    for (uint64_t off = 0; off < size;) {
        vdk_extent e;
        int r = vdk_image_block_status(source, off, size - off, 0, &e, err);
        if (r < 0)
            return r;
        uint64_t n = e.length;
        unsigned f = e.flags;
        if (!(f & VDK_BS_ZERO) && (f & VDK_BS_DATA) && (f & VDK_BS_ALLOCATED)) {
            n = (off + n + g - 1) / g * g - off;
            required += off % g + n;
        }
        off += n;
    }
    *bytes = required;
    return 0;
}

int vdk_measure(const char *format, uint64_t size, const vdk_kv *opts, size_t nopts,
                vdk_image *source, vdk_measure_info *out, vdk_error *err)
{
    vdk_error_clear(err);
    memset(out, 0, sizeof *out);
    const struct vdk_driver *drv = NULL;
    for (size_t i = 0; format && vdk_builtin_drivers[i]; i++)
        if (strcmp(vdk_builtin_drivers[i]->name, format) == 0)
            drv = vdk_builtin_drivers[i];
    if (!drv)
        return vdk_fail(err, VDK_EFORMAT, "unknown format '%s'", format ? format : "(none)");
    if (!drv->measure)
        return vdk_fail(err, VDK_EUNSUPPORTED, "format '%s' cannot measure image sizes",
                        drv->name);
    if (nopts > 64)
        return vdk_fail(err, VDK_EOPTION, "too many options (%zu)", nopts);
    vdk_opts o;
    vdk_opts_init(&o, opts, nopts);
    vdk_measure_args args = {
        .size = source ? vdk_image_size(source) : size,
        .opts = &o,
        .source = source,
    };
    int r = drv->measure(&args, out, err);
    if (r == 0)
        r = vdk_opts_check_used(&o, drv->name, err);
    return r;
}
