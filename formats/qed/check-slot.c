/*
 * check-slot.c - QED's check driver slot: runs the consistency scan and
 * repair of check.c/repair.c (qed_check_image) in the mode the core asks
 * for, and translates its report into the core's vdk_check_report, with
 * qemu-img check's fields and one listed problem per record.
 *
 * QED has no refcounts: a problem is a bad L1 or L2 entry, a cluster
 * referenced twice, or leaked space. qemu-img check prints no image end
 * offset for QED, so none is reported.
 */
#include "qed.h"

static int fix_kind(int fix)
{
    switch (fix) {
    case QED_FIX_CLEAR: return VDK_FIX_CLEAR_ENTRY;
    case QED_FIX_COPY: return VDK_FIX_COPY;
    case QED_FIX_TRUNCATE:
    case QED_FIX_COMPACT: return VDK_FIX_FREE;
    default: return VDK_FIX_NONE;
    }
}

static int problem_kind(int kind)
{
    switch (kind) {
    case QED_PROB_L1_INVALID:
    case QED_PROB_DATA_INVALID: return VDK_CHECK_OUT_OF_BOUNDS;
    case QED_PROB_L2_OVERLAP:
    case QED_PROB_DATA_OVERLAP:
    case QED_PROB_DATA_SHARED: return VDK_CHECK_OVERLAP;
    case QED_PROB_L2_UNREADABLE: return VDK_CHECK_IO;
    case QED_PROB_LEAK: return VDK_CHECK_LEAK;
    default: return VDK_CHECK_OTHER;
    }
}

static void add_problem(vdk_check_report *rep, const qed_problem *p, bool fixing)
{
    const char *verb = fixing && p->fix != QED_FIX_NONE ? "Repairing" : "ERROR";
    unsigned long long v = p->value, at = p->entry_offset, g = p->guest_offset;
    int kind = problem_kind(p->kind), fix = fix_kind(p->fix);
    if (p->kind == QED_PROB_LEAK) {
        vdk_check_add(rep, kind, fix, p->value, p->count,
                      "%s %llu leaked clusters at 0x%llx", fixing ? "Repairing" : "Leaked",
                      (unsigned long long)p->count, v);
        return;
    }
    uint64_t host = p->kind == QED_PROB_L2_UNREADABLE ? p->value : p->entry_offset;
    vdk_check_add(rep, kind, fix, host, p->count,
                  "%s %s: entry at 0x%llx = 0x%llx (guest offset 0x%llx)", verb,
                  qed_problem_name(p->kind), at, v, g);
}

/* The check slot of the driver table (qed.c). */
int qed_check_slot(vdk_image *img, unsigned mode, vdk_check_report *rep, vdk_error *err)
{
    unsigned repair = 0;
    if (mode & VDK_CHECK_FIX_LEAKS)
        repair |= QED_REPAIR_LEAKS;
    if (mode & VDK_CHECK_FIX_ERRORS)
        repair |= QED_REPAIR_ERRORS;
    if (repair && (mode & VDK_CHECK_DRY_RUN))
        repair |= QED_REPAIR_DRY_RUN;
    qed_check_report q;
    int r = qed_check_image(img, repair, &q, err);
    rep->check_errors = q.check_errors;
    rep->corruptions = q.corruptions;
    rep->leaks = q.leaks;
    rep->corruptions_fixed = q.corruptions_fixed;
    rep->leaks_fixed = q.leaks_fixed;
    rep->total_clusters = q.total_clusters;
    rep->allocated_clusters = q.allocated_clusters;
    rep->fragmented_clusters = q.fragmented_clusters;
    bool fixing = repair != 0;
    for (size_t i = 0; i < q.nproblems; i++)
        add_problem(rep, &q.problems[i], fixing);
    rep->problems_dropped += q.problems_dropped;
    qed_check_report_free(&q);
    if (r < 0 && rep->check_errors == 0)
        rep->check_errors = 1;
    return r;
}

