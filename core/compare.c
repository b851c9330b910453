/*
 * compare.c - compare jobs: are two images the same disk, as qemu-img
 * compare decides?
 *
 * The planner (copy-plan.c) walks both images' block status side by side:
 * ranges that read as zeros in both are not read at all, a range that reads
 * as zeros in one image is read only in the other and checked for zeros,
 * and the rest is read from both and compared, with up to max_requests
 * reads in flight. The job records the lowest differing 512-byte sector;
 * once one is known, nothing past it is read, and the job ends when the
 * requests before it are done. In strict mode the sizes and the allocation
 * status must match too.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "copy-int.h"

int vdk_compare_start(uv_loop_t *loop, vdk_image *a, vdk_image *b, unsigned flags,
                      const vdk_copy_opts *opts, vdk_job_done_cb done, void *opaque,
                      vdk_job **out, vdk_error *err)
{
    vdk_error_clear(err);
    *out = NULL;
    if (!loop || !a || !b)
        return vdk_fail(err, -EINVAL, "compare: no loop or image given");
    vdk_copy_opts o;
    vdk_copy_opts_init(&o);
    if (opts) {
        o.max_requests = opts->max_requests;
        o.request_size = opts->request_size;
        o.rate_limit = opts->rate_limit;
        o.max_bytes = opts->max_bytes;
    }
    vdk_job *j;
    int r = copy_job_new(loop, JOB_COMPARE, &o, done, opaque, &j, err);
    if (r < 0)
        return r;
    j->cmp_flags = flags;
    j->src = calloc(2, sizeof *j->src);
    j->src_base = calloc(2, sizeof *j->src_base);
    j->src_size = calloc(2, sizeof *j->src_size);
    j->same_backing = calloc(2, sizeof *j->same_backing);
    if (!j->src || !j->src_base || !j->src_size || !j->same_backing) {
        copy_job_abort_new(j);
        return vdk_fail(err, -ENOMEM, "out of memory");
    }
    j->nsrc = 2;
    j->src[0] = vdk_image_ref(a);
    j->src[1] = vdk_image_ref(b);
    j->src_size[0] = vdk_image_size(a);
    j->src_size[1] = vdk_image_size(b);
    j->total = j->src_size[0] > j->src_size[1] ? j->src_size[0] : j->src_size[1];
    j->g = 512;
    j->o.request_size = (j->o.request_size + 511) / 512 * 512;
    j->verdict = VDK_COMPARE_EQUAL;
    copy_plan_init(&j->plan, j);
    if ((flags & VDK_COMPARE_STRICT) && j->src_size[0] != j->src_size[1]) {
        j->verdict = VDK_COMPARE_SIZE;
        j->plan.done = true;
    }
    r = copy_job_setup_requests(j, err);
    if (r < 0) {
        copy_job_abort_started(j);
        return r;
    }
    copy_job_launch(j);
    *out = j;
    return 0;
}

int vdk_job_compare_result(const vdk_job *j, uint64_t *offset)
{
    if (offset)
        *offset = j->verdict == VDK_COMPARE_CONTENT || j->verdict == VDK_COMPARE_ALLOCATION
                  ? j->mismatch : 0;
    return j->kind == JOB_COMPARE ? j->verdict : VDK_COMPARE_EQUAL;
}
