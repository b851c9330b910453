/*
 * libnbd-dl.c - loads libnbd on first use (see libnbd-dl.h for why).
 */
#define VDK_LIBNBD_DL_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "libnbd-dl.h"

struct vdk_libnbd vdk_libnbd;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load(void)
{
    void *h = dlopen("libnbd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        snprintf(load_error, sizeof load_error, "%s", e ? e : "libnbd.so.0 not found");
        return;
    }
    struct vdk_libnbd t;
#define VDK_LIBNBD_SYM(name)                                                          \
    if (!(*(void **)&t.name = dlsym(h, #name))) {                                     \
        snprintf(load_error, sizeof load_error, "libnbd.so.0 lacks %s", #name);       \
        dlclose(h);                                                                   \
        return;                                                                       \
    }
    VDK_LIBNBD_FUNCS(VDK_LIBNBD_SYM)
#undef VDK_LIBNBD_SYM
    vdk_libnbd = t; /* the handle stays open for the life of the process */
}

int vdk_libnbd_load(vdk_error *err)
{
    pthread_once(&once, load);
    if (load_error[0])
        return vdk_fail(err, VDK_EUNSUPPORTED,
                        "NBD needs libnbd (Debian package libnbd0): %s", load_error);
    return 0;
}
