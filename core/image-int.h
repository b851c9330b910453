/*
 * image-int.h - the image object as core/image*.c see it: its fields, and
 * the per-image lock that serialises the slots of drivers that are not
 * parallel. Drivers see an image only through the accessors of driver.h.
 */
#ifndef VDK_IMAGE_INT_H
#define VDK_IMAGE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "driver.h"

struct vdk_image {
    atomic_int refs;
    const struct vdk_driver *drv;
    void *priv;
    vdk_file *file;
    char *filename;
    unsigned flags; /* VDK_OPEN_* */
    int cache;
    _Atomic uint64_t size;
    uint32_t cluster_size;
    bool probed_raw;      /* format guessed as raw: guard sector 0 */
    pthread_mutex_t lock; /* serialises slots of non-parallel drivers */
    char *backing_name;   /* as recorded in the image */
    char *backing_fmt;    /* as recorded, or NULL */
    char *backing_path;   /* resolved against the image's folder */
    unsigned backing_flags;
    vdk_image *backing;
    dev_t dev;
    ino_t ino;
};

static inline void lock_slot(vdk_image *img)
{
    if (!img->drv->parallel)
        pthread_mutex_lock(&img->lock);
}

static inline void unlock_slot(vdk_image *img)
{
    if (!img->drv->parallel)
        pthread_mutex_unlock(&img->lock);
}

#endif
