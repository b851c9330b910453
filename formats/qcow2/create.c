/*
 * create.c - creating a qcow2 image: option parsing with qemu-img's names
 * and checks, and the initial layout, which is QEMU's: the header cluster,
 * the refcount table, the refcount blocks covering the image, then the L1
 * table. Preallocation then runs through the driver's own allocator.
 *
 * Options: size, cluster_size, compat (0.10|v2|1.1|v3), refcount_bits,
 * lazy_refcounts, preallocation (off|metadata|falloc|full), backing_file,
 * backing_fmt, compression_type (zlib|zstd), extended_l2.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

typedef struct copts {
    uint64_t size;
    uint64_t cluster_size;
    int version;
    uint64_t refcount_bits;
    bool lazy, ext_l2;
    int prealloc;
    int compression;
    const char *backing, *backing_fmt;
} copts;

static bool pow2(uint64_t v) { return v && !(v & (v - 1)); }

static int log2u(uint64_t v)
{
    int n = 0;
    while (v > 1) {
        v >>= 1;
        n++;
    }
    return n;
}

static int parse_enum(vdk_opts *o, const char *key, const char *const *names, int n,
                      int *out, vdk_error *err)
{
    const char *v;
    if (!vdk_opt_str(o, key, &v))
        return 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    return vdk_fail(err, VDK_EOPTION, "Parameter '%s' does not accept value '%s'", key, v);
}

static int parse_compat(vdk_opts *o, copts *c, vdk_error *err)
{
    const char *v;
    c->version = 3;
    if (!vdk_opt_str(o, "compat", &v))
        return 0;
    if (!strcmp(v, "0.10") || !strcmp(v, "v2"))
        c->version = 2;
    else if (!strcmp(v, "1.1") || !strcmp(v, "v3"))
        c->version = 3;
    else
        return vdk_fail(err, VDK_EOPTION, "Invalid compatibility level: '%s'", v);
    return 0;
}

static int parse_options(vdk_opts *o, copts *c, vdk_error *err)
{
    static const char *const pre[] = {"off", "metadata", "falloc", "full"};
    static const char *const comp[] = {"zlib", "zstd"};
    c->cluster_size = 65536;
    c->refcount_bits = 16;
    int r;
    if ((r = vdk_opt_size(o, "size", &c->size, err)) < 0 ||
        (r = vdk_opt_size(o, "cluster_size", &c->cluster_size, err)) < 0 ||
        (r = vdk_opt_size(o, "refcount_bits", &c->refcount_bits, err)) < 0 ||
        (r = vdk_opt_bool(o, "lazy_refcounts", &c->lazy, err)) < 0 ||
        (r = vdk_opt_bool(o, "extended_l2", &c->ext_l2, err)) < 0 ||
        (r = parse_compat(o, c, err)) < 0 || (r = parse_enum(o, "preallocation", pre, 4,
                                                              &c->prealloc, err)) < 0 ||
        (r = parse_enum(o, "compression_type", comp, 2, &c->compression, err)) < 0)
        return r;
    vdk_opt_str(o, "backing_file", &c->backing);
    vdk_opt_str(o, "backing_fmt", &c->backing_fmt);
    if (c->backing && !*c->backing)
        c->backing = NULL;
    return 0;
}

#define NEED_V3 "compatibility level 1.1 and above (use compat=1.1 or greater)"

static int check_options(const copts *c, vdk_error *err)
{
    if (!pow2(c->cluster_size) || c->cluster_size < 512 || c->cluster_size > (2u << 20))
        return vdk_fail(err, VDK_EOPTION,
                        "Cluster size must be a power of two between 512 and 2048k");
    if (!pow2(c->refcount_bits) || c->refcount_bits > 64)
        return vdk_fail(err, VDK_EOPTION,
                        "Refcount width must be a power of two and may not exceed 64 bits");
    if (c->version < 3 && c->refcount_bits != 16)
        return vdk_fail(err, VDK_EOPTION,
                        "Different refcount widths than 16 bits require " NEED_V3);
    if (c->version < 3 && c->lazy)
        return vdk_fail(err, VDK_EOPTION, "Lazy refcounts only supported with " NEED_V3);
    if (c->version < 3 && c->ext_l2)
        return vdk_fail(err, VDK_EOPTION, "Extended L2 entries are only supported with " NEED_V3);
    if (c->ext_l2 && c->cluster_size < 16384)
        return vdk_fail(err, VDK_EOPTION, "Extended L2 entries are only supported with cluster "
                                          "sizes of at least 16384 bytes");
    if (c->version < 3 && c->compression != QCOW2_COMPRESS_ZLIB)
        return vdk_fail(err, VDK_EOPTION,
                        "Non-zlib compression type is only supported with " NEED_V3);
    if (c->backing_fmt && !c->backing)
        return vdk_fail(err, VDK_EOPTION, "Backing format cannot be used without backing file");
    if (c->backing && strlen(c->backing) > QCOW2_MAX_BACKING_NAME)
        return vdk_fail(err, VDK_EOPTION, "Backing file name too long");
    if (c->backing && c->prealloc != VDK_PREALLOC_OFF && !c->ext_l2)
        return vdk_fail(err, VDK_EOPTION, "Backing file and preallocation can only be used at "
                                          "the same time if extended_l2 is on");
    return 0;
}

static int size_from_backing(const vdk_create_args *a, copts *c, vdk_error *err)
{
    if (c->size != VDK_SIZE_FROM_BACKING)
        return 0;
    if (!c->backing)
        return vdk_fail(err, VDK_EOPTION, "Image creation needs a size parameter");
    vdk_image *b;
    int r = vdk_open_for_create(c->backing, c->backing_fmt, a->path, &b, err);
    if (r < 0)
        return r;
    c->size = vdk_image_size(b);
    vdk_image_close(b, NULL);
    return 0;
}

/* ---------------------------------------------------------------- layout */

/* A state describing the new image, enough to build its header. */
static int fill_state(qcow2_state *s, const copts *c)
{
    s->version = (uint32_t)c->version;
    s->cluster_bits = (uint32_t)log2u(c->cluster_size);
    s->cluster_size = c->cluster_size;
    s->ext_l2 = c->ext_l2;
    s->l2_entry_shift = c->ext_l2 ? 4 : 3;
    s->l2_bits = s->cluster_bits - s->l2_entry_shift;
    s->refcount_order = (uint32_t)log2u(c->refcount_bits);
    s->rb_bits = s->cluster_bits + 3 - s->refcount_order;
    s->size = c->size;
    s->compression_type = c->compression;
    s->header_length = c->version >= 3 ? QCOW2_HDR_OUR_LEN : QCOW2_HDR_V2_LEN;
    s->hdr = calloc(1, QCOW2_HDR_OUR_LEN);
    if (c->version >= 3) {
        s->incompat = (c->compression ? QCOW2_INCOMPAT_COMPRESSION : 0) |
                      (c->ext_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
        s->compat = c->lazy ? QCOW2_COMPAT_LAZY : 0;
    }
    s->backing_name = c->backing ? strdup(c->backing) : NULL;
    s->backing_fmt = c->backing_fmt ? strdup(c->backing_fmt) : NULL;
    if (!s->hdr || (c->backing && !s->backing_name) || (c->backing_fmt && !s->backing_fmt))
        return -ENOMEM;
    return 0;
}

/* Header, refcount table (T clusters), B refcount blocks, L1 (L clusters). */
static void plan_layout(qcow2_state *s, uint64_t l1_entries, uint64_t *T, uint64_t *B,
                        uint64_t *L)
{
    uint64_t cs = s->cluster_size;
    *L = (l1_entries * 8 + cs - 1) / cs;
    *T = 1;
    *B = 1;
    for (;;) {
        uint64_t total = 1 + *T + *B + *L;
        uint64_t b = (total + (UINT64_C(1) << s->rb_bits) - 1) >> s->rb_bits;
        uint64_t t = (b * 8 + cs - 1) / cs;
        if (b == *B && t == *T)
            return;
        *B = b;
        *T = t;
    }
}

static int write_refcounts(qcow2_state *s, vdk_file *f, uint64_t T, uint64_t B, uint64_t total,
                           vdk_error *err)
{
    uint64_t cs = s->cluster_size;
    uint8_t *buf = calloc(1, cs);
    if (!buf)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = 0;
    for (uint64_t t = 0; t < T && r == 0; t++) { /* refcount table */
        memset(buf, 0, cs);
        for (uint64_t i = 0; i < cs / 8 && t * (cs / 8) + i < B; i++)
            vdk_put_be64(buf + i * 8, (1 + T + t * (cs / 8) + i) * cs);
        r = vdk_file_pwrite(f, buf, cs, (1 + t) * cs, err);
    }
    for (uint64_t b = 0; b < B && r == 0; b++) { /* refcount blocks */
        memset(buf, 0, cs);
        uint64_t first = b << s->rb_bits;
        for (uint64_t c = first; c < total && c < first + (UINT64_C(1) << s->rb_bits); c++)
            qcow2_rb_set(s, buf, c - first, 1);
        r = vdk_file_pwrite(f, buf, cs, (1 + T + b) * cs, err);
    }
    free(buf);
    return r;
}

static int write_image(qcow2_state *s, vdk_file *f, vdk_error *err)
{
    uint64_t l1e = qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, s->size), T, B, L;
    if (l1e * 8 > QCOW2_MAX_L1_BYTES)
        return vdk_fail(err, VDK_ETOOBIG,
                        "The image size is too large for file format 'qcow2' (try using a "
                        "larger cluster size)");
    plan_layout(s, l1e, &T, &B, &L);
    s->rt_offset = s->cluster_size;
    s->rt_clusters = (uint32_t)T;
    s->l1_offset = (1 + T + B) * s->cluster_size;
    s->l1_size = (uint32_t)l1e;
    uint8_t *h = malloc(s->cluster_size);
    if (!h)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int r = qcow2_header_build(s, h, s->cluster_size, err);
    if (r == 0)
        r = vdk_file_pwrite(f, h, s->cluster_size, 0, err);
    free(h);
    if (r == 0)
        r = write_refcounts(s, f, T, B, 1 + T + B + L, err);
    if (r == 0)
        r = vdk_file_truncate(f, s->l1_offset + l1e * 8, err);
    return r;
}

static int preallocate(vdk_file *f, uint64_t size, int mode, vdk_error *err)
{
    qcow2_state *s;
    int r = qcow2_state_open(f, NULL, VDK_OPEN_RDWR, &s, err);
    if (r < 0)
        return r;
    pthread_mutex_lock(&s->lock);
    r = qcow2_prepare_write(s, err);
    if (r == 0)
        r = qcow2_preallocate(s, 0, size, mode, err);
    if (r == 0)
        r = qcow2_meta_flush(s, err);
    pthread_mutex_unlock(&s->lock);
    qcow2_state_close(s);
    return r;
}

int qcow2_create(vdk_file *file, const vdk_create_args *args, vdk_error *err)
{
    copts c = {.size = args->size};
    int r = parse_options(args->opts, &c, err);
    if (r == 0)
        r = check_options(&c, err);
    if (r == 0)
        r = size_from_backing(args, &c, err);
    if (r < 0)
        return r;
    if (c.size > (UINT64_C(1) << 62))
        return vdk_fail(err, VDK_ETOOBIG,
                        "The image size is too large for file format 'qcow2'");
    c.size = (c.size + 511) & ~UINT64_C(511);
    qcow2_state st = {0};
    r = fill_state(&st, &c) < 0 ? vdk_fail(err, -ENOMEM, "out of memory") : 0;
    if (r == 0)
        r = write_image(&st, file, err);
    qcow2_state_free_header(&st);
    if (r == 0 && c.prealloc != VDK_PREALLOC_OFF)
        r = preallocate(file, c.size, c.prealloc, err);
    return r;
}
