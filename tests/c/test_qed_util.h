/*
 * test_qed_util.h - what the QED C tests (tests/c/test_qed_*.c) share
 * beyond test_util.h: qemu-img check (also with an exact leak count) and
 * compare of QED images, little-endian fields of an image file read and
 * patched in place, image creation with "key", "value" options, and vdk's
 * own consistency scan.
 *
 * Each test is its own executable and includes this header once.
 */
#ifndef TEST_QED_UTIL_H
#define TEST_QED_UTIL_H

#include "../../formats/qed/qed.h"
#include "test_util.h"

/* `qemu-img check` must exit 0: no corruption, no leak. */
VT_UNUSED static int tqed_qemu_check(const char *path, const char *ctx)
{
    return vt_qemu_check("qed", path, ctx);
}

/* `qemu-img check` must find no corruption; exactly leaks leaked clusters. */
VT_UNUSED static int tqed_qemu_check_leaks(const char *path, uint64_t leaks, const char *ctx)
{
    if (leaks == 0)
        return tqed_qemu_check(path, ctx);
    char out[8192], want[64];
    vt_checks++;
    int st = vt_sh(out, sizeof out, "qemu-img check -f qed '%s'", path);
    snprintf(want, sizeof want, "%llu leaked clusters", (unsigned long long)leaks);
    if (st != 3 || !strstr(out, want)) {
        vt_fail("qemu-img check (%s) exit %d, want 3 and '%s':\n%s", ctx, st, want, out);
        return -1;
    }
    return 0;
}

/* `qemu-img compare` of a QED image against a raw file must say identical. */
VT_UNUSED static int tqed_qemu_compare(const char *img, const char *raw, const char *ctx)
{
    return vt_qemu_compare("qed", img, raw, ctx);
}

/* The little-endian 64-bit field at off of a file (0 when unreadable). */
VT_UNUSED static uint64_t tqed_read_le64(const char *path, uint64_t off)
{
    uint8_t b[8];
    vt_read_at(path, off, b, 8);
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* Overwrite it with v. */
VT_UNUSED static int tqed_patch_le64(const char *path, uint64_t off, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    return vt_patch(path, off, b, 8);
}

/* Create a QED image with "key", "value" options (a NULL-terminated list). */
VT_UNUSED static int tqed_create(const char *path, uint64_t size, const char *const *kv,
                                 vdk_error *err)
{
    vdk_kv opts[16];
    size_t n = 0;
    for (; kv && kv[2 * n] && n < 16; n++)
        opts[n] = (vdk_kv){kv[2 * n], kv[2 * n + 1]};
    return vdk_image_create(path, "qed", size, opts, n, err);
}

/* Scan an open image with the check primitive; returns corruptions + leaks
 * (and prints the problems when there are any). */
VT_UNUSED static uint64_t tqed_scan(vdk_image *img, qed_check_report *out, const char *ctx)
{
    qed_check_report rep;
    vdk_error err = {0};
    int r = qed_check_image(img, 0, &rep, &err);
    if (r < 0) {
        vt_fail("check (%s): %s", ctx, err.msg);
        return UINT64_MAX;
    }
    uint64_t bad = rep.corruptions + rep.leaks + rep.check_errors;
    if (bad && !out) {
        fprintf(stderr, "check (%s): %llu corruptions, %llu leaks\n", ctx,
                (unsigned long long)rep.corruptions, (unsigned long long)rep.leaks);
        for (size_t i = 0; i < rep.nproblems && i < 10; i++)
            fprintf(stderr, "  %s at 0x%llx value 0x%llx\n", qed_problem_name(rep.problems[i].kind),
                    (unsigned long long)rep.problems[i].entry_offset,
                    (unsigned long long)rep.problems[i].value);
    }
    if (out)
        *out = rep;
    else
        qed_check_report_free(&rep);
    return bad;
}

#endif
