/*
 * copy-io.c - the worker side of copy and compare requests.
 *
 * A copy request runs in two steps on the workers. The read step reads its
 * piece from the sources (a piece may span sources), reads the target's
 * backing file for the same range when unchanged data is to stay
 * unallocated, sorts each block of the piece into data, zeros or "already
 * there", and compresses the data clusters when the target is compressed.
 * The write step, which the loop thread issues in guest order unless told
 * otherwise, writes the data, zeroes what must read as zeros, and stores the
 * compressed clusters. Both steps leave their outcome in the request; the
 * loop thread reads it when the work item comes back through the mailbox.
 *
 * Messages name the image, the guest byte offset and the cause, with the
 * lower layer's message (file name, host offset) after a colon.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "copy-int.h"
#include "file-int.h"

/* ---------------------------------------------------------------- helpers */

bool copy_is_zero(const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i < n && ((uintptr_t)(p + i) & 7); i++)
        if (p[i])
            return false;
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, sizeof w);
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return false;
    }
    for (; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* Rewrite err as "error while <what> '<name>' at byte <off>: <lower message>". */
static int req_fail(copy_req *r, int rc, const char *what, const char *name, uint64_t off)
{
    char inner[sizeof r->err.msg];
    snprintf(inner, sizeof inner, "%s", r->err.msg[0] ? r->err.msg : vdk_strerror(rc));
    r->rc = vdk_fail(&r->err, rc, "error while %s '%s' at byte %llu: %s", what, name,
                     (unsigned long long)off, inner);
    return rc;
}

/* Index of the source holding target offset off. */
static size_t source_at(const vdk_job *j, uint64_t off)
{
    size_t i = 0;
    while (i + 1 < j->nsrc && off >= j->src_base[i] + j->src_size[i])
        i++;
    return i;
}

/* Read [off, off+len) of the concatenated sources into buf. */
static int read_sources(vdk_job *j, copy_req *r, uint8_t *buf, uint64_t off, uint64_t len)
{
    size_t i = source_at(j, off);
    while (len > 0 && i < j->nsrc) {
        uint64_t soff = off - j->src_base[i];
        uint64_t n = j->src_size[i] > soff ? j->src_size[i] - soff : 0;
        n = n < len ? n : len;
        if (n > 0) {
            int rc = vdk_image_pread(j->src[i], buf, n, soff, &r->err);
            if (rc < 0)
                return req_fail(r, rc, "reading", vdk_image_filename(j->src[i]), soff);
        }
        buf += n;
        off += n;
        len -= n;
        i++;
    }
    if (len > 0)
        memset(buf, 0, len);
    return 0;
}

/* Block i of the piece: [*b, *e) in target offsets. */
static void block_range(const vdk_job *j, const copy_piece *p, size_t i, uint64_t *b,
                        uint64_t *e)
{
    uint64_t first_end = (p->off / j->g + 1) * j->g;
    uint64_t start = i == 0 ? p->off : first_end + (i - 1) * j->g;
    uint64_t end = start == p->off ? first_end : start + j->g;
    uint64_t pend = p->off + p->len;
    *b = start;
    *e = end < pend ? end : pend;
}

static size_t block_count(const vdk_job *j, const copy_piece *p)
{
    uint64_t first_end = (p->off / j->g + 1) * j->g, pend = p->off + p->len;
    if (pend <= first_end)
        return 1;
    return 1 + (size_t)((pend - first_end + j->g - 1) / j->g);
}

/* ---------------------------------------------------------------- copy: read step */

static void classify_blocks(vdk_job *j, copy_req *r)
{
    size_t n = block_count(j, &r->p);
    for (size_t i = 0; i < n; i++) {
        uint64_t b, e;
        block_range(j, &r->p, i, &b, &e);
        size_t rel = (size_t)(b - r->p.off), len = (size_t)(e - b);
        uint8_t cls = CL_DATA;
        if (j->compare_backing && memcmp(r->buf + rel, r->buf2 + rel, len) == 0)
            cls = CL_SKIP;
        else if (j->detect_zero && copy_is_zero(r->buf + rel, len))
            cls = j->known_zero ? CL_SKIP : CL_ZERO;
        r->blk[i] = cls;
    }
}

/* Compress every data cluster of the piece (two-phase formats). */
static int compress_blocks(vdk_job *j, copy_req *r)
{
    size_t n = block_count(j, &r->p);
    uint64_t cs = j->cluster, isize = vdk_image_size(j->dst);
    for (size_t i = 0; i < n; i++) {
        uint64_t b, e;
        block_range(j, &r->p, i, &b, &e);
        for (uint64_t c = b; c < e && r->blk[i] == CL_DATA; c += cs) {
            size_t rel = (size_t)(c - r->p.off), k = rel / cs;
            size_t len = (size_t)(e - c < cs ? e - c : cs);
            r->clen[k] = 0;
            if (len < cs && c + len != isize)
                continue; /* a partial cluster inside the image: written plain */
            int rc = vdk_image_compress_cluster(j->dst, r->cbuf + k * cs, cs - 1,
                                                r->buf + rel, len, c, &r->err);
            if (rc < 0)
                return req_fail(r, rc, "compressing for", vdk_image_filename(j->dst), c);
            r->clen[k] = (uint32_t)rc;
        }
    }
    return 0;
}

void copy_read_run(vdk_work *w)
{
    copy_req *r = (copy_req *)w;
    vdk_job *j = r->job;
    r->rc = 0;
    if (read_sources(j, r, r->buf, r->p.off, r->p.len) < 0)
        return;
    r->n_read = r->p.len;
    if (j->compare_backing) {
        int rc = vdk_backing_pread(j->dst, r->buf2, r->p.len, r->p.off, &r->err);
        if (rc < 0) {
            req_fail(r, rc, "reading the backing file of", vdk_image_filename(j->dst),
                     r->p.off);
            return;
        }
    }
    classify_blocks(j, r);
    if (j->compress && j->two_phase)
        compress_blocks(j, r);
}

/* ---------------------------------------------------------------- copy: write step */

static int write_zeroes(vdk_job *j, copy_req *r, uint64_t off, uint64_t len)
{
    unsigned flags = j->detect_zero ? VDK_ZERO_MAY_UNMAP : 0;
    int rc = vdk_image_write_zeroes(j->dst, len, off, flags, &r->err);
    if (rc < 0)
        return req_fail(r, rc, "zeroing", vdk_image_filename(j->dst), off);
    r->n_zeroed += len;
    return 0;
}

static int write_plain(vdk_job *j, copy_req *r, const uint8_t *buf, uint64_t off,
                       uint64_t len)
{
    int rc = vdk_image_pwrite(j->dst, buf, len, off, &r->err);
    if (rc < 0)
        return req_fail(r, rc, "writing", vdk_image_filename(j->dst), off);
    r->n_written += len;
    return 0;
}

/* Store the clusters of a data run compressed. */
static int write_compressed(vdk_job *j, copy_req *r, uint64_t off, uint64_t len)
{
    uint64_t cs = j->cluster, isize = vdk_image_size(j->dst), end = off + len;
    for (uint64_t c = off; c < end; c += cs) {
        size_t rel = (size_t)(c - r->p.off), k = rel / cs;
        uint64_t n = end - c < cs ? end - c : cs;
        const uint8_t *src = r->buf + rel;
        int rc;
        if (n < cs && c + n != isize)
            rc = vdk_image_pwrite(j->dst, src, n, c, &r->err);
        else if (!j->two_phase)
            rc = vdk_image_pwrite_compressed(j->dst, src, n, c, &r->err);
        else if (r->clen[k] == 0)
            rc = vdk_image_pwrite(j->dst, src, n, c, &r->err);
        else
            rc = vdk_image_pwrite_precompressed(j->dst, r->cbuf + k * cs, r->clen[k], c,
                                                &r->err);
        if (rc < 0)
            return req_fail(r, rc, "writing", vdk_image_filename(j->dst), c);
        r->n_written += n;
    }
    return 0;
}

static int write_run(vdk_job *j, copy_req *r, int cls, uint64_t off, uint64_t len)
{
    switch (cls) {
    case CL_DATA:
        if (j->compress)
            return write_compressed(j, r, off, len);
        return write_plain(j, r, r->buf + (off - r->p.off), off, len);
    case CL_ZERO:
        return write_zeroes(j, r, off, len);
    default:
        r->n_skipped += len;
        return 0;
    }
}

void copy_write_run(vdk_work *w)
{
    copy_req *r = (copy_req *)w;
    vdk_job *j = r->job;
    r->rc = 0;
    if (r->p.cls == CL_ZERO) {
        write_zeroes(j, r, r->p.off, r->p.len);
        return;
    }
    if (r->p.cls == CL_ZERO_DATA) {
        write_plain(j, r, j->zerobuf, r->p.off, r->p.len);
        return;
    }
    /* Data: write maximal runs of equal blocks. */
    size_t n = block_count(j, &r->p);
    uint64_t run_start = r->p.off, b, e;
    int run_cls = r->blk[0];
    for (size_t i = 1; i <= n; i++) {
        if (i < n && r->blk[i] == run_cls)
            continue;
        block_range(j, &r->p, i - 1, &b, &e);
        if (write_run(j, r, run_cls, run_start, e - run_start) < 0)
            return;
        if (i < n) {
            run_start = e;
            run_cls = r->blk[i];
        }
    }
}

void copy_flush_run(vdk_work *w)
{
    vdk_job *j = (vdk_job *)((char *)w - offsetof(vdk_job, flush_work));
    vdk_error_clear(&j->flush_err);
    int rc = vdk_image_flush(j->dst, &j->flush_err);
    if (rc < 0) {
        char inner[sizeof j->flush_err.msg];
        snprintf(inner, sizeof inner, "%s",
                 j->flush_err.msg[0] ? j->flush_err.msg : vdk_strerror(rc));
        vdk_fail(&j->flush_err, rc, "error while flushing '%s': %s",
                 vdk_image_filename(j->dst), inner);
    }
    j->flush_rc = rc;
}

/* ---------------------------------------------------------------- early write-back */

/*
 * The host file descriptor whose dirty pages the engine may push to disk
 * early: the target's own POSIX file under cache=writeback (O_DIRECT,
 * writethrough and unsafe have nothing to gain), else -1.
 */
int copy_writeback_fd(vdk_image *target)
{
    vdk_file *f = vdk_image_file(target);
    if (!f || vdk_file_cache_mode(f) != VDK_CACHE_WRITEBACK || !vdk_file_is_writable(f) ||
        strcmp(f->ops->kind, "posix") != 0)
        return -1;
    return vdk_posix_fd(f);
}

/* Start write-back of everything dirty in the target's file (no waiting:
 * the final flush waits). A failure here is harmless: the flush reports. */
void copy_writeback_run(vdk_work *w)
{
    vdk_job *j = (vdk_job *)((char *)w - offsetof(vdk_job, wb_work));
    (void)sync_file_range(j->wb_fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

/* ---------------------------------------------------------------- compare */

#define SECTOR 512

/* Offset of the first 512-byte sector where a and b differ, or UINT64_MAX. */
static uint64_t first_difference(const uint8_t *a, const uint8_t *b, uint64_t len,
                                 uint64_t off)
{
    if (memcmp(a, b, len) == 0)
        return UINT64_MAX;
    uint64_t head = SECTOR - off % SECTOR; /* sectors are aligned to the image */
    for (uint64_t i = 0; i < len;) {
        uint64_t n = i == 0 ? head : SECTOR;
        n = n < len - i ? n : len - i;
        if (memcmp(a + i, b + i, n) != 0)
            return (off + i) / SECTOR * SECTOR;
        i += n;
    }
    return UINT64_MAX;
}

static uint64_t first_nonzero(const uint8_t *a, uint64_t len, uint64_t off)
{
    if (copy_is_zero(a, len))
        return UINT64_MAX;
    for (uint64_t i = 0; i < len; i++)
        if (a[i])
            return (off + i) / SECTOR * SECTOR;
    return UINT64_MAX;
}

static int read_one(copy_req *r, vdk_image *img, uint8_t *buf)
{
    int rc = vdk_image_pread(img, buf, r->p.len, r->p.off, &r->err);
    if (rc < 0)
        return req_fail(r, rc, "reading", vdk_image_filename(img), r->p.off);
    r->n_read += r->p.len;
    return 0;
}

void compare_read_run(vdk_work *w)
{
    copy_req *r = (copy_req *)w;
    vdk_job *j = r->job;
    r->rc = 0;
    r->mismatch = UINT64_MAX;
    switch (r->p.cls) {
    case CL_CMP:
        if (read_one(r, j->src[0], r->buf) == 0 && read_one(r, j->src[1], r->buf2) == 0)
            r->mismatch = first_difference(r->buf, r->buf2, r->p.len, r->p.off);
        break;
    case CL_CMP_ZA:
    case CL_CMP_ZB:
        if (read_one(r, j->src[r->p.cls == CL_CMP_ZA ? 0 : 1], r->buf) == 0)
            r->mismatch = first_nonzero(r->buf, r->p.len, r->p.off);
        break;
    default:
        break;
    }
}
