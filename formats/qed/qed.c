/*
 * qed.c - the QED driver's entry points (probe, open, close, flush, info)
 * and the lifecycle of the need-check feature bit.
 *
 * The need-check bit is written and flushed before the first change of the
 * mapping (qed_set_need_check, called under the lock before any allocation
 * or entry update), and cleared by a flush that finds no allocation in
 * flight, after every table is durable. An image found with the bit set is
 * checked and repaired on a read-write open (check.c); a read-only open, or
 * VDK_OPEN_NO_REPAIR, works on it as it is and never clears the bit.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qed.h"

int qed_set_broken(qed_state *s, int rc)
{
    if (!s->broken)
        s->broken = rc;
    return rc;
}

int qed_check_broken(const qed_state *s, vdk_error *err)
{
    if (!s->broken)
        return 0;
    return vdk_fail(err, VDK_EBROKEN,
                    "qed: image is in an error state after a failed metadata write (%s)",
                    vdk_strerror(s->broken));
}

/* ---------------------------------------------------------------- need-check */

int qed_set_need_check(qed_state *s, vdk_error *err)
{
    if (s->need_check)
        return 0;
    int r = qed_check_broken(s, err);
    if (r < 0)
        return r;
    s->features |= QED_F_NEED_CHECK;
    r = qed_header_write(s, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0)
        return qed_set_broken(s, r); /* the bit's state on disk is unknown */
    s->need_check = true;
    return 0;
}

/* Clear the bit; metadata must be flushed and no allocation in flight. */
int qed_clear_need_check(qed_state *s, vdk_error *err)
{
    if (!s->need_check || s->unchecked || s->nallocs)
        return 0;
    s->features &= ~QED_F_NEED_CHECK;
    int r = qed_header_write(s, err);
    if (r == 0)
        r = vdk_file_flush(s->file, err);
    if (r < 0) {
        s->features |= QED_F_NEED_CHECK; /* harmless: the next open checks */
        return r;
    }
    s->need_check = false;
    return 0;
}

/* Tables, then the L1 table, each durable before what points at it. */
int qed_meta_flush(qed_state *s, vdk_error *err)
{
    int r = qed_check_broken(s, err);
    if (r < 0)
        return r;
    r = vdk_cache_flush(s->l2_cache, err);
    if (r == 0 && s->l1_lo != s->l1_hi) {
        r = qed_l1_write(s, err);
        if (r == 0)
            r = vdk_file_flush(s->file, err);
    }
    return r < 0 ? qed_set_broken(s, r) : 0;
}

void qed_wait_idle(qed_state *s)
{
    while (s->nallocs)
        pthread_cond_wait(&s->cond, &s->lock);
}

/* ---------------------------------------------------------------- probe, open, close */

static int qed_probe(const uint8_t *buf, size_t len)
{
    return len >= QED_HEADER_LEN && vdk_le32(buf) == QED_MAGIC ? 100 : 0;
}

static void state_free(qed_state *s)
{
    if (!s)
        return;
    vdk_cache_free(s->l2_cache);
    free(s->l1);
    free(s->backing_name);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}

/* The need-check bit and unknown autoclear bits of a writable image. */
static int open_writable(qed_state *s, unsigned flags, vdk_error *err)
{
    int r = 0;
    if (s->need_check && (flags & VDK_OPEN_NO_REPAIR)) {
        s->unchecked = true;
    } else if (s->need_check) {
        qed_check_report rep;
        r = qed_check_locked(s, QED_REPAIR_LEAKS | QED_REPAIR_ERRORS | QED_REPAIR_QUICK, &rep,
                             err);
        if (r == 0 && (rep.corruptions || rep.check_errors))
            r = vdk_fail(err, VDK_ECORRUPT,
                         "qed: the image needs a check and repair left %llu corruptions",
                         (unsigned long long)rep.corruptions);
        qed_check_report_free(&rep);
    }
    if (r == 0 && (s->autoclear & ~QED_AUTOCLEAR_KNOWN)) {
        s->autoclear &= QED_AUTOCLEAR_KNOWN;
        r = qed_header_write(s, err);
        if (r == 0)
            r = vdk_file_flush(s->file, err);
    }
    return r;
}

static int open_state(qed_state *s, unsigned flags, vdk_error *err)
{
    uint64_t file_size;
    int r = vdk_file_size(s->file, &file_size, err);
    if (r == 0)
        r = qed_header_parse(s, file_size, err);
    if (r < 0)
        return r;
    s->file_end = file_size & ~(uint64_t)(s->cluster_size - 1);
    s->need_check = s->features & QED_F_NEED_CHECK;
    if ((r = qed_l1_load(s, err)) < 0 || (r = qed_make_cache(s, err)) < 0)
        return r;
    if (s->writable)
        r = open_writable(s, flags, err);
    return r;
}

static int qed_open(vdk_image *img, vdk_error *err)
{
    qed_state *s = calloc(1, sizeof *s);
    if (!s)
        return vdk_fail(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->img = img;
    s->file = vdk_image_file(img);
    unsigned flags = vdk_image_open_flags(img);
    s->writable = (flags & VDK_OPEN_RDWR) != 0;
    int r = open_state(s, flags, err);
    if (r == 0 && s->backing_name) {
        bool raw = s->features & QED_F_BACKING_FORMAT_NO_PROBE;
        r = vdk_image_set_backing(img, s->backing_name, raw ? "raw" : NULL,
                                  raw ? VDK_BACKING_FORCE_RAW : 0, err);
    }
    if (r < 0) {
        state_free(s);
        return r;
    }
    vdk_image_set_size(img, s->image_size);
    vdk_image_set_cluster_size(img, s->cluster_size);
    vdk_image_set_priv(img, s);
    return 0;
}

static void qed_close(vdk_image *img)
{
    qed_state *s = vdk_image_priv(img);
    vdk_image_set_priv(img, NULL);
    state_free(s);
}

/* ---------------------------------------------------------------- flush, info */

static int qed_flush(vdk_image *img, vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    pthread_mutex_lock(&s->lock);
    int r = qed_meta_flush(s, err);
    if (r == 0)
        r = qed_clear_need_check(s, err);
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* qemu-img info prints no format-specific part for QED; dirty-flag is the
 * need-check bit. */
static int qed_info(vdk_image *img, vdk_format_info *info, vdk_error *err)
{
    qed_state *s = vdk_image_priv(img);
    pthread_mutex_lock(&s->lock);
    info->dirty = (s->features & QED_F_NEED_CHECK) != 0;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int qed_check_slot(vdk_image *img, unsigned mode, vdk_check_report *rep,
                   vdk_error *err); /* check-slot.c */

int qed_inspect(vdk_image *img, const char *query, const int64_t *args, size_t nargs,
                vdk_emitter *out, vdk_error *err); /* inspect.c */

const struct vdk_driver vdk_qed_driver = {
    .name = "qed",
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .pread = qed_pread,
    .pwrite = qed_pwrite,
    .flush = qed_flush,
    .create = qed_create,
    .write_zeroes = qed_write_zeroes,
    .discard = qed_discard,
    .block_status = qed_block_status,
    .resize = qed_resize,
    .info = qed_info,
    .parallel = true,
    .measure = qed_measure,
    .inspect = qed_inspect,
    .check = qed_check_slot,
};
