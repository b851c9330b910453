/*
 * test_qed_fuzz.c - hostile QED images: seeded random damage to the header,
 * the L1 table and the L2 tables of a good image, then everything a user
 * could do with the result: open read-only and read every byte and walk
 * block status, open read-write (which repairs when need-check is set) and
 * write, zero, discard, resize, check and flush. Nothing may crash or hang
 * (run it under the sanitizer build too), every failure must come with a
 * message, and an image that a repairing open accepted must then scan
 * free of corruption.
 */
#include "test_qed_util.h"

#define ITERATIONS 400
#define SIZE (UINT64_C(8) << 20)

static uint8_t *good;
static size_t good_len;
static int opened_ro, opened_rw, repaired;

/* A good image: data in two L2 tables, a zero cluster, some holes. */
static void make_good(const char *p)
{
    vdk_error err = {0};
    const char *kv[] = {"cluster_size", "4096", "table_size", "2", NULL};
    VT_OK(tqed_create(p, SIZE, kv, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    uint8_t buf[20000];
    vt_fill(buf, sizeof buf, 1);
    VT_OK(vdk_image_pwrite(img, buf, sizeof buf, 100, &err), &err);
    VT_OK(vdk_image_pwrite(img, buf, sizeof buf, (5 << 20) - 7000, &err), &err);
    VT_OK(vdk_image_pwrite(img, buf, 4096, 7 << 20, &err), &err);
    VT_OK(vdk_image_close(img, &err), &err);
    FILE *f = fopen(p, "rb");
    good_len = vt_file_size(p);
    good = malloc(good_len);
    VT_CHECK(f && fread(good, 1, good_len, f) == good_len, "read the good image");
    if (f)
        fclose(f);
}

/* Damage a copy of the good image in place. */
static void mutate(uint8_t *m, size_t len, uint64_t *x)
{
    int n = 1 + (int)vt_below(x, 4);
    for (int i = 0; i < n; i++) {
        uint64_t k = vt_below(x, 10), off;
        if (k < 3)
            off = vt_below(x, 64);                    /* header fields */
        else if (k < 6)
            off = 4096 + vt_below(x, 64) * 8;         /* L1 entries */
        else
            off = vt_below(x, len - 8) & ~UINT64_C(7); /* anywhere: L2 entries, data */
        uint64_t v, kind = vt_below(x, 5);
        if (kind == 0)
            v = vt_rand(x);                           /* garbage */
        else if (kind == 1)
            v = vt_below(x, len + 65536) & ~UINT64_C(4095); /* aligned, maybe past EOF */
        else if (kind == 2)
            v = vt_below(x, len);                     /* unaligned */
        else if (kind == 3)
            v = vdk_le64(m + off) ^ (UINT64_C(1) << vt_below(x, 64)); /* one bit */
        else
            v = vt_below(x, 3);                       /* 0, 1, 2 */
        memcpy(m + off, &v, 8);
    }
    if (vt_below(x, 2))
        m[16] |= 2; /* need-check: the read-write open repairs */
}

static void read_all(vdk_image *img)
{
    uint64_t size = vdk_image_size(img);
    uint8_t *b = malloc(1 << 20);
    vdk_error err = {0};
    for (uint64_t off = 0; off < size; off += 1 << 20) {
        size_t n = size - off < (1 << 20) ? (size_t)(size - off) : (1 << 20);
        if (vdk_image_pread(img, b, n, off, &err) < 0)
            VT_CHECK(err.msg[0] != '\0', "a failed read has a message");
    }
    for (uint64_t off = 0; off < size;) {
        vdk_extent e;
        if (vdk_image_block_status(img, off, size - off, 0, &e, &err) < 0) {
            VT_CHECK(err.msg[0] != '\0', "a failed block status has a message");
            off += 4096;
            continue;
        }
        off += e.length;
    }
    free(b);
}

static void write_some(vdk_image *img, uint64_t *x)
{
    uint64_t size = vdk_image_size(img);
    vdk_error err = {0};
    uint8_t buf[9000];
    vt_fill(buf, sizeof buf, vt_rand(x));
    for (int i = 0; i < 6 && size > sizeof buf; i++) {
        uint64_t off = vt_below(x, size - sizeof buf);
        int r;
        switch (vt_below(x, 4)) {
        case 0: r = vdk_image_pwrite(img, buf, sizeof buf, off, &err); break;
        case 1: r = vdk_image_write_zeroes(img, sizeof buf, off, VDK_ZERO_MAY_UNMAP, &err); break;
        case 2: r = vdk_image_discard(img, sizeof buf, off, &err); break;
        default: r = vdk_image_resize(img, size + 65536, 0, 0, &err); break;
        }
        VT_CHECK(r == 0 || err.msg[0] != '\0', "a failed operation has a message");
    }
    qed_check_report rep;
    if (qed_check_image(img, 0, &rep, &err) == 0)
        qed_check_report_free(&rep);
    vdk_image_flush(img, &err);
}

static void one(const char *p, uint64_t *x)
{
    uint8_t *m = malloc(good_len);
    memcpy(m, good, good_len);
    mutate(m, good_len, x);
    VT_CHECK(vt_write_file(p, m, good_len) == 0, "write mutant");
    bool dirty = m[16] & 2;
    free(m);
    vdk_error err = {0};
    vdk_open_opts o = {.format = "qed", .flags = 0, .cache = VDK_CACHE_WRITEBACK};
    vdk_image *img = NULL;
    if (vdk_image_open(p, &o, &img, &err) == 0) {
        opened_ro++;
        read_all(img);
        vdk_image_close(img, NULL);
    } else {
        VT_CHECK(err.msg[0] != '\0', "a failed open has a message");
    }
    o.flags = VDK_OPEN_RDWR;
    if (vdk_image_open(p, &o, &img, &err) == 0) {
        opened_rw++;
        repaired += dirty;
        if (dirty) {
            qed_check_report rep;
            VT_CHECK(tqed_scan(img, &rep, "repaired mutant") == rep.leaks &&
                       rep.corruptions == 0,
                   "corruption left after the repairing open");
            qed_check_report_free(&rep);
        }
        read_all(img);
        write_some(img, x);
        vdk_image_close(img, NULL);
    }
}

int main(void)
{
    vt_init();
    const char *p = vt_path("fuzz.qed");
    make_good(p);
    uint64_t x = 0x5eed;
    const char *env = getenv("VDK_FUZZ_ITERATIONS"); /* longer runs by hand */
    int n = env ? atoi(env) : ITERATIONS;
    for (int i = 0; i < n && vt_failures < 20; i++)
        one(p, &x);
    printf("%d mutants: %d opened read-only, %d read-write (%d repaired)\n", n, opened_ro,
           opened_rw, repaired);
    free(good);
    return vt_finish("test_qed_fuzz");
}
