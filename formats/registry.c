/*
 * registry.c - the table of built-in format drivers handed to the core.
 *
 * Probing asks each driver in this order and keeps the best score; raw
 * answers lowest, so it is the fallback.
 */
#include "driver.h"

extern const struct vdk_driver vdk_raw_driver;
extern const struct vdk_driver vdk_qcow2_driver;
extern const struct vdk_driver vdk_qed_driver;
extern const struct vdk_driver vdk_nbd_driver;

const struct vdk_driver *const vdk_builtin_drivers[] = {
    &vdk_raw_driver,
    &vdk_nbd_driver,
    &vdk_qcow2_driver,
    &vdk_qed_driver,
    NULL,
};
