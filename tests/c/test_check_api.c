/*
 * test_check_api.c - the check API (vdk_image_check) beyond what the specs
 * compare with qemu-img:
 *  - the problem list is bounded (VDK_CHECK_MAX_PROBLEMS) while the counts
 *    stay exact, and problems_dropped says how many were left out;
 *  - a dry run writes nothing (the file is byte for byte the same) and a
 *    repair of an image opened read-only is refused with EROFS;
 *  - a format without a check answers VDK_EUNSUPPORTED;
 *  - seeded mutations of a qcow2 image's metadata (header fields, L1, L2,
 *    refcount table and blocks, snapshot table) never crash the check, the
 *    dry run or the repair, and a repair that completes leaves an image
 *    whose next check finds no corruption (one pass), unless the damage
 *    is of a kind the repair leaves alone (refcount overflow).
 */
#include "test_crash_util.h"

static vdk_image *open_img(const char *path, unsigned flags)
{
    vdk_open_opts o = {.format = NULL, .flags = flags, .cache = VDK_CACHE_WRITEBACK};
    vdk_image *img = NULL;
    vdk_error err = {0};
    return vdk_image_open(path, &o, &img, &err) < 0 ? NULL : img;
}

/* A qcow2 image with data, a compressed cluster and a snapshot. */
static int make_base(const char *path)
{
    char out[2048];
    return vt_sh(out, sizeof out,
                 "qemu-img create -q -f qcow2 -o cluster_size=4096 '%s' 8M && "
                 "qemu-io -c 'write -P 1 0 200k' -c 'write -c -P 3 4M 4k' '%s' >/dev/null && "
                 "qemu-img snapshot -c s1 '%s' && qemu-io -c 'write -P 2 0 64k' '%s' >/dev/null",
                 path, path, path, path);
}

static void test_bounded_list(void)
{
    const char *p = vt_path("leaks.qcow2");
    char out[1024];
    VT_CHECK(vt_sh(out, sizeof out, "qemu-img create -q -f qcow2 -o cluster_size=4096 '%s' 64M",
                   p) == 0, "%s", out);
    /* 1500 leaked clusters: refcount 1 for clusters past the metadata. */
    size_t len;
    uint8_t *b = vt_read_file(p, &len);
    uint64_t rb = vdk_be64(b + vdk_be64(b + 48));
    free(b);
    b = calloc(1, 4096 * 1600);
    int fd = open(p, O_RDWR);
    VT_CHECK(fd >= 0 && pwrite(fd, b, 4096 * 1600, 16384) == 4096 * 1600, "extend");
    uint8_t one[2] = {0, 1};
    for (int k = 4; k < 1504; k++)
        VT_CHECK(pwrite(fd, one, 2, rb + 2 * k) == 2, "patch");
    close(fd);
    free(b);
    vdk_image *img = open_img(p, VDK_OPEN_CHECK);
    VT_CHECK(img != NULL, "open");
    if (!img)
        return;
    vdk_check_report rep;
    vdk_error err = {0};
    VT_OK(vdk_image_check(img, 0, &rep, &err), &err);
    VT_CHECK(rep.leaks == 1500, "leaks %llu", (unsigned long long)rep.leaks);
    VT_CHECK(rep.nproblems == VDK_CHECK_MAX_PROBLEMS && rep.problems_dropped == 500,
             "listed %zu, dropped %llu", rep.nproblems, (unsigned long long)rep.problems_dropped);
    VT_CHECK(rep.problems[0].kind == VDK_CHECK_LEAK, "kind %d", rep.problems[0].kind);
    vdk_check_report_free(&rep);
    /* Repairing a read-only image is refused; a dry run is allowed. */
    int r = vdk_image_check(img, VDK_CHECK_FIX_LEAKS, &rep, &err);
    VT_CHECK(r == -EROFS, "repair of a read-only image: %d", r);
    vdk_check_report_free(&rep);
    VT_OK(vdk_image_check(img, VDK_CHECK_FIX_LEAKS | VDK_CHECK_DRY_RUN, &rep, &err), &err);
    VT_CHECK(rep.problems[0].fix == VDK_FIX_FREE && rep.leaks == 1500 && rep.leaks_fixed == 0,
             "dry run: fix %d leaks %llu", rep.problems[0].fix, (unsigned long long)rep.leaks);
    vdk_check_report_free(&rep);
    vdk_image_close(img, &err);
    img = open_img(p, VDK_OPEN_CHECK | VDK_OPEN_RDWR);
    VT_OK(vdk_image_check(img, VDK_CHECK_FIX_LEAKS, &rep, &err), &err);
    VT_CHECK(rep.leaks_fixed == 1500 && rep.leaks == 0, "fixed %llu",
             (unsigned long long)rep.leaks_fixed);
    vdk_check_report_free(&rep);
    vdk_image_close(img, &err);
}

static void test_dry_run_and_raw(void)
{
    const char *p = vt_path("dry.qcow2"), *raw = vt_path("r.raw");
    VT_CHECK(make_base(p) == 0, "base");
    size_t len;
    uint8_t *b = vt_read_file(p, &len);
    uint64_t l1 = vdk_be64(b + 40), l2 = vdk_be64(b + l1) & UINT64_C(0x00fffffffffffe00);
    vdk_put_be64(b + l2 + 8, vdk_be64(b + l2)); /* a cluster referenced twice */
    vt_write_file(p, b, len);
    vdk_image *img = open_img(p, VDK_OPEN_CHECK | VDK_OPEN_RDWR);
    vdk_check_report rep;
    vdk_error err = {0};
    VT_OK(vdk_image_check(img, VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS | VDK_CHECK_DRY_RUN,
                          &rep, &err),
          &err);
    VT_CHECK(rep.corruptions >= 1 && rep.corruptions_fixed == 0, "dry run counts");
    vdk_check_report_free(&rep);
    vdk_image_close(img, &err);
    size_t len2;
    uint8_t *after = vt_read_file(p, &len2);
    VT_CHECK(after && len2 == len && memcmp(after, b, len) == 0, "a dry run wrote");
    free(after);
    free(b);
    vt_write_file(raw, (const uint8_t *)"x", 1);
    img = open_img(raw, 0);
    int r = img ? vdk_image_check(img, 0, &rep, &err) : -1;
    VT_CHECK(r == VDK_EUNSUPPORTED, "raw: %d %s", r, err.msg);
    vdk_check_report_free(&rep);
    if (img)
        vdk_image_close(img, &err);
}

/* ---------------------------------------------------------------- mutations */

static uint64_t pick_metadata(const uint8_t *b, size_t len, uint64_t *x)
{
    uint64_t l1 = vdk_be64(b + 40), rt = vdk_be64(b + 48), sn = vdk_be64(b + 64);
    uint64_t l2 = l1 + 8 <= len ? vdk_be64(b + l1) & UINT64_C(0x00fffffffffffe00) : 0;
    uint64_t rb = rt + 8 <= len ? vdk_be64(b + rt) : 0;
    uint64_t where[] = {36 + tc_below(x, 36), l1 + 8 * tc_below(x, 4), rt + 8 * tc_below(x, 2),
                        rb + 2 * tc_below(x, 64), l2 + 8 * tc_below(x, 80), sn + tc_below(x, 64)};
    return where[tc_below(x, 6)];
}

static void mutate(uint8_t *b, size_t len, uint64_t *x)
{
    int n = 1 + (int)tc_below(x, 3);
    for (int i = 0; i < n; i++) {
        uint64_t at = pick_metadata(b, len, x);
        if (at + 8 > len)
            continue;
        switch (tc_below(x, 4)) {
        case 0: b[at + tc_below(x, 8)] ^= (uint8_t)(1u << tc_below(x, 8)); break;
        case 1: vdk_put_be64(b + at, tc_rand(x) & UINT64_C(0x80000000fffffe00)); break;
        case 2: b[at + 6] += 1 + (uint8_t)tc_below(x, 3); break; /* a nearby cluster */
        default: memset(b + at, 0, 8); break;
        }
    }
}

static unsigned opened, repaired, found;

static void one_mutant(const char *p, uint64_t seed)
{
    vdk_check_report rep;
    vdk_error err = {0};
    vdk_image *img = open_img(p, VDK_OPEN_CHECK);
    if (!img)
        return; /* refused at open: the header itself is unusable */
    int r = vdk_image_check(img, 0, &rep, &err);
    opened++;
    found += r < 0 || rep.corruptions || rep.leaks || rep.check_errors;
    vdk_check_report_free(&rep);
    r = vdk_image_check(img, VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS | VDK_CHECK_DRY_RUN,
                        &rep, &err);
    vdk_check_report_free(&rep);
    vdk_image_close(img, &err);
    img = open_img(p, VDK_OPEN_CHECK | VDK_OPEN_RDWR);
    if (!img)
        return;
    r = vdk_image_check(img, VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS, &rep, &err);
    vdk_check_report_free(&rep);
    if (r == 0) {
        repaired++;
        vdk_check_report again;
        int r2 = vdk_image_check(img, 0, &again, &err);
        bool overflow = false;
        for (size_t i = 0; i < again.nproblems; i++)
            overflow |= strstr(again.problems[i].message, "overflow") != NULL;
        VT_CHECK(r2 < 0 || overflow || (again.corruptions == 0 && again.check_errors == 0),
                 "mutant %llu: after a repair %llu corruptions, %llu errors (%s)",
                 (unsigned long long)seed, (unsigned long long)again.corruptions,
                 (unsigned long long)again.check_errors,
                 again.nproblems ? again.problems[0].message : "");
        vdk_check_report_free(&again);
    }
    vdk_image_close(img, &err);
}

static void test_mutants(int count)
{
    const char *base = vt_path("base.qcow2"), *p = vt_path("mutant.qcow2");
    VT_CHECK(make_base(base) == 0, "base");
    size_t len;
    uint8_t *orig = vt_read_file(base, &len);
    if (!orig)
        return;
    uint8_t *b = malloc(len);
    for (int i = 0; i < count && vt_failures < 10; i++) {
        uint64_t x = 1000 + (uint64_t)i;
        memcpy(b, orig, len);
        mutate(b, len, &x);
        vt_write_file(p, b, len);
        if (getenv("TC_MUTANT") && strtoull(getenv("TC_MUTANT"), NULL, 0) == 1000 + (uint64_t)i) {
            vt_write_file("/tmp/mutant.qcow2", b, len);
            break;
        }
        one_mutant(p, 1000 + (uint64_t)i);
    }
    free(b);
    free(orig);
    printf("  %d mutants: %u opened, %u with problems found, %u repaired\n", count, opened, found,
           repaired);
}

int main(int argc, char **argv)
{
    if (vt_sh(NULL, 0, "command -v qemu-img >/dev/null && command -v qemu-io >/dev/null")) {
        printf("test_check_api: qemu-img missing, skipped\n");
        return 0;
    }
    vt_init();
    test_bounded_list();
    test_dry_run_and_raw();
    test_mutants(argc > 1 ? atoi(argv[1]) : 300);
    return vt_finish("test_check_api");
}
