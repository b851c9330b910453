/*
 * test_qcow2_util.h - what the qcow2 C tests share beyond test_util.h:
 * qemu-img check and compare of qcow2 images, and the big-endian fields of
 * an image file read and patched in place (qcow2 is big-endian on disk).
 *
 * Included by tests/c/test_qcow2_*.c and test_snapshot_*.c (each test is
 * one executable).
 */
#ifndef TEST_QCOW2_UTIL_H
#define TEST_QCOW2_UTIL_H

#include "test_util.h"

/* `qemu-img check` must report no errors and no leaks. */
VT_UNUSED static int tq_qemu_check(const char *path, const char *ctx)
{
    return vt_qemu_check("qcow2", path, ctx);
}

/* `qemu-img compare` of the image against a raw file. */
VT_UNUSED static int tq_qemu_compare(const char *img, const char *raw, const char *ctx)
{
    return vt_qemu_compare("qcow2", img, raw, ctx);
}

/* The big-endian field of `bytes` bytes (1 to 8) at off of a file; 0 when
 * it cannot be read. */
VT_UNUSED static uint64_t tq_read_be(const char *path, uint64_t off, int bytes)
{
    uint8_t b[8];
    vt_read_at(path, off, b, (size_t)bytes);
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | b[i];
    return v;
}

/* Overwrite that field with v (a failed write shows in the checks after). */
VT_UNUSED static void tq_write_be(const char *path, uint64_t off, int bytes, uint64_t v)
{
    uint8_t b[8];
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
    vt_patch(path, off, b, (size_t)bytes);
}

#endif
