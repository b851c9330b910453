/*
 * image-snapshot.c - the checked wrappers of the internal snapshot slots
 * (list, create, apply, delete, load, VM state): they check that the image
 * is open, that its format has snapshots and that the open mode allows the
 * operation, hold the slot lock of non-parallel drivers, and prefix
 * messages with the file name, as image.c does for the other slots.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "image-int.h"

/* The image is open and its driver has the slot; write: must be writable. */
static int snapshot_check(vdk_image *img, bool slot, int write, vdk_error *err)
{
    if (!img->drv)
        return vdk_fail(err, -EBADF, "%s: image is closed", img->filename);
    if (!slot)
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "%s: format '%s' does not support internal snapshots", img->filename,
                        img->drv->name);
    if (write > 0 && !(img->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EROFS, "%s: image is opened read-only", img->filename);
    if (write < 0 && (img->flags & VDK_OPEN_RDWR))
        return vdk_fail(err, -EINVAL,
                        "%s: a snapshot can only be loaded into an image opened read-only",
                        img->filename);
    return 0;
}

static int snapshot_done(vdk_image *img, int r, vdk_error *err)
{
    if (r < 0)
        vdk_error_prefix(err, img->filename);
    return r;
}

int vdk_snapshot_list(vdk_image *img, vdk_snapshot_info **list, size_t *n, vdk_error *err)
{
    *list = NULL;
    *n = 0;
    if (img->drv && !img->drv->snapshot_list)
        return 0; /* no internal snapshots: an empty list */
    int r = snapshot_check(img, true, 0, err);
    if (r == 0) {
        lock_slot(img);
        r = img->drv->snapshot_list(img, list, n, err);
        unlock_slot(img);
    }
    return snapshot_done(img, r, err);
}

void vdk_snapshot_list_free(vdk_snapshot_info *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
}

int vdk_snapshot_create(vdk_image *img, const vdk_snapshot_params *p, vdk_error *err)
{
    int r = snapshot_check(img, img->drv && img->drv->snapshot_create, 1,
                           err);
    if (r == 0 && (!p || !p->name))
        r = vdk_fail(err, -EINVAL, "%s: a snapshot needs a name", img->filename);
    if (r < 0)
        return r;
    lock_slot(img);
    r = img->drv->snapshot_create(img, p, err);
    unlock_slot(img);
    return snapshot_done(img, r, err);
}

/* Shared by apply, delete and load: one slot taking an ID. */
static int snapshot_by_id(vdk_image *img, int (*slot)(vdk_image *, const char *, vdk_error *),
                          const char *id, int write, vdk_error *err)
{
    int r = snapshot_check(img, slot != NULL, write, err);
    if (r == 0 && !id)
        r = vdk_fail(err, -EINVAL, "%s: no snapshot ID given", img->filename);
    if (r < 0)
        return r;
    lock_slot(img);
    r = slot(img, id, err);
    unlock_slot(img);
    return snapshot_done(img, r, err);
}

int vdk_snapshot_apply(vdk_image *img, const char *id, vdk_error *err)
{
    return snapshot_by_id(img, img->drv ? img->drv->snapshot_apply : NULL, id, 1, err);
}

int vdk_snapshot_delete(vdk_image *img, const char *id, vdk_error *err)
{
    return snapshot_by_id(img, img->drv ? img->drv->snapshot_delete : NULL, id, 1, err);
}

int vdk_snapshot_load(vdk_image *img, const char *id, vdk_error *err)
{
    return snapshot_by_id(img, img->drv ? img->drv->snapshot_load : NULL, id, -1, err);
}

int vdk_vmstate_write(vdk_image *img, const void *buf, size_t len, uint64_t pos,
                      vdk_error *err)
{
    int r = snapshot_check(img, img->drv && img->drv->vmstate_write, 1,
                           err);
    if (r < 0 || len == 0)
        return r;
    lock_slot(img);
    r = img->drv->vmstate_write(img, buf, len, pos, err);
    unlock_slot(img);
    return snapshot_done(img, r, err);
}

void vdk_vmstate_discard(vdk_image *img)
{
    if (!img->drv || !img->drv->vmstate_discard)
        return;
    lock_slot(img);
    img->drv->vmstate_discard(img);
    unlock_slot(img);
}

int vdk_vmstate_read(vdk_image *img, const char *id, void *buf, size_t len, uint64_t pos,
                     vdk_error *err)
{
    int r = snapshot_check(img, img->drv && img->drv->vmstate_read, 0,
                           err);
    if (r == 0 && !id)
        r = vdk_fail(err, -EINVAL, "%s: no snapshot ID given", img->filename);
    if (r < 0 || len == 0)
        return r;
    lock_slot(img);
    r = img->drv->vmstate_read(img, id, buf, len, pos, err);
    unlock_slot(img);
    return snapshot_done(img, r, err);
}
