/*
 * check.c - the core half of check and repair: the report's bounded problem
 * list (vdk_check_add, for drivers), freeing a report, and the names of
 * problem kinds and fixes. The entry point, vdk_image_check, sits with the
 * other slot wrappers in image.c; each format's check slot does the work
 * (formats/qcow2/check*.c, formats/qed/check*.c).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"

void vdk_check_add(vdk_check_report *rep, int kind, int fix, uint64_t offset, uint64_t count,
                   const char *fmt, ...)
{
    if (!rep)
        return;
    if (rep->nproblems >= VDK_CHECK_MAX_PROBLEMS) {
        rep->problems_dropped++;
        return;
    }
    if (rep->nproblems % 32 == 0) {
        vdk_check_problem *p = realloc(rep->problems, (rep->nproblems + 32) * sizeof *p);
        if (!p) {
            rep->problems_dropped++;
            return;
        }
        rep->problems = p;
    }
    vdk_check_problem *p = &rep->problems[rep->nproblems++];
    p->kind = kind;
    p->fix = fix;
    p->offset = offset;
    p->count = count;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->message, sizeof p->message, fmt, ap);
    va_end(ap);
}

void vdk_check_report_free(vdk_check_report *rep)
{
    if (!rep)
        return;
    free(rep->filename);
    free(rep->format);
    free(rep->problems);
    rep->filename = rep->format = NULL;
    rep->problems = NULL;
    rep->nproblems = 0;
}

const char *vdk_check_kind_name(int kind)
{
    static const char *const names[] = {
        "?", "leak", "refcount", "out-of-bounds", "unaligned", "reserved-bits", "overlap",
        "copied-flag", "compressed", "refcount-block", "snapshot-table", "io", "other",
    };
    return kind >= 1 && kind <= VDK_CHECK_OTHER ? names[kind] : "?";
}

const char *vdk_check_fix_name(int fix)
{
    static const char *const names[] = {
        "none", "free", "refcount", "clear-entry", "copy", "copied-flag", "rebuild",
        "snapshot-table",
    };
    return fix >= 0 && fix <= VDK_FIX_SNAPSHOT_TABLE ? names[fix] : "?";
}
