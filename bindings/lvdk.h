/*
 * lvdk.h - what the files of the Lua module share: the image userdata, the
 * error-return convention and the registration of each file's functions.
 *
 * lvdk.c owns the image userdata (metatable VDK_LIMAGE_MT); the other files
 * (ljob.c, lsnapshot.c, linspect.c, lcheck.c, ltesting.c) add functions to
 * the module table or methods to the image metatable through their
 * vdk_l*_open function, which luaopen_vdk_core calls.
 */
#ifndef VDK_LVDK_H
#define VDK_LVDK_H

#include <lauxlib.h>
#include <lua.h>

#include "vdk.h"

#define VDK_LIMAGE_MT "vdk.image"

/* The image userdata. */
typedef struct vdk_limage {
    vdk_image *img; /* NULL once closed */
    int is_layer;   /* a backing layer: release with unref, not close */
} vdk_limage;

/* The open image at idx; raises "image is closed" (misuse) when closed. */
vdk_image *vdk_lcheck_image(lua_State *L, int idx);
/* The open image at idx, for option fields: raises "WHAT must be an image"
 * or "WHAT is closed" naming the argument. */
vdk_image *vdk_lcheck_image_arg(lua_State *L, int idx, const char *what);

/* Push nil, message, code for a failed call (code < 0); returns 3. */
int vdk_lpush_error(lua_State *L, const vdk_error *err, int code);
/* Push true, or the error triple when rc < 0. */
int vdk_lpush_status(lua_State *L, int rc, const vdk_error *err);

/* Registration of the other files (module table at -1 when called). */
int vdk_ljob_open(lua_State *L);      /* ljob.c: vdk.copy, vdk.compare, vdk.measure */
int vdk_lsnapshot_open(lua_State *L); /* lsnapshot.c: snapshots, VM states */
int vdk_linspect_open(lua_State *L);  /* linspect.c: img:inspect, img:read_file */
int vdk_lcheck_open(lua_State *L);    /* lcheck.c: img:check */

#endif /* VDK_LVDK_H */
