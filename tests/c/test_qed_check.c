/*
 * test_qed_check.c - the QED consistency scan and repair (formats/qed/check.c)
 * on images damaged by patching bytes, one kind of damage at a time.
 *
 * For each damage: the scan's counts (corruptions, leaks, allocated and
 * fragmented clusters) must equal what `qemu-img check --output=json`
 * reports for the same file, the problem records must name the damage, a
 * dry run must plan without writing, and the repair must leave an image
 * that qemu-img check and a second scan find free of corruption, whose
 * guest data is what the repair promises (kept, copied or cleared).
 */
#include "test_qed_util.h"

#define CS 4096u
#define TS 2u
#define NDATA 24 /* guest clusters written: 0..11 and 1024..1035 (two L2 tables) */

static uint64_t guest_of(int i) { return (i < 12 ? (uint64_t)i : 1024 + (uint64_t)(i - 12)) * CS; }

/* A clean image with data in two L2 tables; returns its guest content. */
static void make_image(const char *p, uint8_t data[NDATA][CS])
{
    vdk_error err = {0};
    const char *kv[] = {"cluster_size", "4096", "table_size", "2", NULL};
    VT_OK(tqed_create(p, 64 << 20, kv, &err), &err);
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR, &err);
    for (int i = 0; img && i < NDATA; i++) {
        vt_fill(data[i], CS, (uint64_t)i + 100);
        VT_OK(vdk_image_pwrite(img, data[i], CS, guest_of(i), &err), &err);
    }
    VT_OK(vdk_image_close(img, &err), &err);
}

/* Offsets in the file: L1 at 4096 (2 clusters), then data and tables. */
static uint64_t l1_entry(const char *p, int i) { return tqed_read_le64(p, 4096 + 8 * (uint64_t)i); }
static uint64_t l2_slot(const char *p, int l1i, int j)
{
    return l1_entry(p, l1i) + 8 * (uint64_t)j;
}

/* "key": value from qemu-img check's JSON, or 0 when absent. */
static uint64_t json_num(const char *js, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *q = strstr(js, pat);
    return q ? strtoull(q + strlen(pat), NULL, 10) : 0;
}

static void compare_with_qemu(const char *p, const qed_check_report *rep, const char *ctx)
{
    if (!vt_have_qemu())
        return;
    char js[8192];
    vt_sh(js, sizeof js, "qemu-img check -f qed --output=json '%s'", p);
    VT_CHECK(json_num(js, "corruptions") == rep->corruptions, "%s: corruptions %llu, qemu %llu",
           ctx, (unsigned long long)rep->corruptions,
           (unsigned long long)json_num(js, "corruptions"));
    VT_CHECK(json_num(js, "leaks") == rep->leaks, "%s: leaks %llu, qemu %llu", ctx,
           (unsigned long long)rep->leaks, (unsigned long long)json_num(js, "leaks"));
    VT_CHECK(json_num(js, "allocated-clusters") == rep->allocated_clusters,
           "%s: allocated %llu, qemu %llu", ctx, (unsigned long long)rep->allocated_clusters,
           (unsigned long long)json_num(js, "allocated-clusters"));
    VT_CHECK(json_num(js, "fragmented-clusters") == rep->fragmented_clusters,
           "%s: fragmented %llu, qemu %llu", ctx, (unsigned long long)rep->fragmented_clusters,
           (unsigned long long)json_num(js, "fragmented-clusters"));
    VT_CHECK(json_num(js, "total-clusters") == rep->total_clusters, "%s: total clusters", ctx);
}

static bool has_problem(const qed_check_report *rep, int kind, int fix)
{
    for (size_t i = 0; i < rep->nproblems; i++)
        if (rep->problems[i].kind == kind && rep->problems[i].fix == fix)
            return true;
    return false;
}

/* What the guest must read after the repair, per written cluster. */
enum expect { KEEP, ZERO };

typedef struct dcase {
    const char *name;
    void (*damage)(const char *p);
    int kind;         /* a problem the repair plan must report */
    int fix;          /* and the fix -r all plans for it */
    enum expect want[NDATA];
    int check_kind;   /* what a plain check (qemu-img's order) reports; 0: kind */
} dcase;

static void d_l1_unaligned(const char *p) { tqed_patch_le64(p, 4096, l1_entry(p, 0) + 512); }
static void d_l1_past_eof(const char *p) { tqed_patch_le64(p, 4096 + 8, UINT64_C(1) << 40); }
static void d_l2_unaligned(const char *p) { tqed_patch_le64(p, l2_slot(p, 0, 3), 0x5123); }
static void d_l2_past_eof(const char *p) { tqed_patch_le64(p, l2_slot(p, 1, 2), UINT64_C(1) << 36); }
static void d_l2_into_l1(const char *p) { tqed_patch_le64(p, l2_slot(p, 0, 5), 4096); }
static void d_l2_into_table(const char *p)
{
    tqed_patch_le64(p, l2_slot(p, 0, 6), l1_entry(p, 1));
}
static void d_shared(const char *p)
{
    /* Guest clusters 4 and 1025 both point at cluster 2's data. */
    uint64_t c2 = tqed_read_le64(p, l2_slot(p, 0, 2));
    tqed_patch_le64(p, l2_slot(p, 0, 4), c2);
    tqed_patch_le64(p, l2_slot(p, 1, 1), c2);
}
static void d_shared_table(const char *p) { tqed_patch_le64(p, 4096 + 16, l1_entry(p, 0)); }
static void d_leak_tail(const char *p)
{
    uint8_t junk[3 * CS];
    memset(junk, 0x3c, sizeof junk);
    vt_patch(p, vt_file_size(p), junk, sizeof junk);
}
static void d_leak_middle(const char *p) { tqed_patch_le64(p, l2_slot(p, 0, 7), 0); }

#define K12 KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP
#define Z12 ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO, ZERO

static const dcase cases[] = {
    {"l1-unaligned", d_l1_unaligned, QED_PROB_L1_INVALID, QED_FIX_CLEAR, {Z12, K12}, 0},
    {"l1-past-eof", d_l1_past_eof, QED_PROB_L1_INVALID, QED_FIX_CLEAR, {K12, Z12}, 0},
    {"l2-unaligned", d_l2_unaligned, QED_PROB_DATA_INVALID, QED_FIX_CLEAR,
     {KEEP, KEEP, KEEP, ZERO, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, K12}, 0},
    {"l2-past-eof", d_l2_past_eof, QED_PROB_DATA_INVALID, QED_FIX_CLEAR,
     {K12, KEEP, KEEP, ZERO, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP}, 0},
    {"l2-into-l1", d_l2_into_l1, QED_PROB_DATA_OVERLAP, QED_FIX_CLEAR,
     {KEEP, KEEP, KEEP, KEEP, KEEP, ZERO, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, K12}, 0},
    {"l2-into-table", d_l2_into_table, QED_PROB_DATA_OVERLAP, QED_FIX_CLEAR,
     {KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, ZERO, KEEP, KEEP, KEEP, KEEP, KEEP, K12},
     QED_PROB_L2_OVERLAP},
    {"shared-data", d_shared, QED_PROB_DATA_SHARED, QED_FIX_COPY, {K12, K12}, 0},
    {"shared-table", d_shared_table, QED_PROB_L2_OVERLAP, QED_FIX_CLEAR, {K12, K12}, 0},
    {"leak-tail", d_leak_tail, QED_PROB_LEAK, QED_FIX_TRUNCATE, {K12, K12}, 0},
    {"leak-middle", d_leak_middle, QED_PROB_LEAK, QED_FIX_COMPACT,
     {KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, KEEP, ZERO, KEEP, KEEP, KEEP, KEEP, K12}, 0},
};

/* The guest content the repair promises. */
static void expected(const dcase *c, uint8_t data[NDATA][CS], int i, uint8_t *want)
{
    if (c->want[i] == ZERO)
        memset(want, 0, CS);
    else if (c->damage == d_shared && (i == 4 || i == 13))
        memcpy(want, data[2], CS); /* both keep reading the shared cluster */
    else
        memcpy(want, data[i], CS);
}

static void check_content(const char *p, const dcase *c, uint8_t data[NDATA][CS])
{
    vdk_error err = {0};
    vdk_image *img = vt_open(p, 0, &err);
    VT_CHECK(img != NULL, "%s: open after repair: %s", c->name, err.msg);
    uint8_t want[CS];
    for (int i = 0; img && i < NDATA; i++) {
        expected(c, data, i, want);
        char what[80];
        snprintf(what, sizeof what, "%s cluster %d", c->name, i);
        vt_compare_at(img, guest_of(i), want, CS, what);
    }
    /* The shared-table damage mapped guest 8 MiB like the first table. */
    if (img && c->damage == d_shared_table) {
        uint8_t z[CS] = {0};
        vt_compare_at(img, UINT64_C(8) << 20, z, CS, "shared table cleared");
    }
    vdk_image_close(img, NULL);
}

static void run_case(const dcase *c, uint8_t data[NDATA][CS])
{
    char name[64];
    snprintf(name, sizeof name, "%s.qed", c->name);
    const char *p = vt_path(name);
    make_image(p, data);
    c->damage(p);
    vdk_error err = {0};
    /* The scan, read-only, against qemu-img check. */
    vdk_image *img = vt_open(p, 0, &err);
    VT_CHECK(img != NULL, "%s: read-only open: %s", c->name, err.msg);
    if (!img)
        return;
    qed_check_report rep;
    VT_OK(qed_check_image(img, 0, &rep, &err), &err);
    int ck = c->check_kind ? c->check_kind : c->kind;
    VT_CHECK(has_problem(&rep, ck, QED_FIX_NONE), "%s: no %s reported", c->name,
           qed_problem_name(ck));
    compare_with_qemu(p, &rep, c->name);
    qed_check_report_free(&rep);
    /* A dry run plans the fix and writes nothing. */
    uint64_t size = vt_file_size(p);
    VT_OK(qed_check_image(img, QED_REPAIR_LEAKS | QED_REPAIR_ERRORS | QED_REPAIR_DRY_RUN, &rep,
                        &err),
        &err);
    VT_CHECK(has_problem(&rep, c->kind, c->fix), "%s: dry run does not plan %s", c->name,
           qed_fix_name(c->fix));
    VT_CHECK(rep.corruptions_fixed == 0 && rep.leaks_fixed == 0, "%s: dry run fixed", c->name);
    qed_check_report_free(&rep);
    vdk_image_close(img, NULL);
    VT_CHECK(vt_file_size(p) == size, "%s: dry run changed the file", c->name);
    /* Repair through the open path: set need-check and open read-write. */
    VT_CHECK(tqed_patch_le64(p, 16, 2) == 0, "patch need-check");
    img = vt_open(p, VDK_OPEN_RDWR, &err);
    VT_CHECK(img != NULL, "%s: repairing open: %s", c->name, err.msg);
    if (!img)
        return;
    uint64_t left = tqed_scan(img, &rep, c->name);
    VT_CHECK(rep.corruptions == 0, "%s: corruptions after repair", c->name);
    VT_CHECK(left == 0, "%s: %llu problems after repair", c->name, (unsigned long long)left);
    qed_check_report_free(&rep);
    vdk_image_close(img, NULL);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "%s: need-check cleared", c->name);
    if (vt_have_qemu())
        tqed_qemu_check(p, c->name);
    check_content(p, c, data);
}

/* An explicit repair of an image opened without repair. */
static void test_explicit_repair(uint8_t data[NDATA][CS])
{
    const char *p = vt_path("explicit.qed");
    make_image(p, data);
    d_l2_past_eof(p);
    d_leak_tail(p);
    tqed_patch_le64(p, 16, 2);
    vdk_error err = {0};
    vdk_image *img = vt_open(p, VDK_OPEN_RDWR | VDK_OPEN_NO_REPAIR, &err);
    VT_CHECK(img != NULL, "no-repair open: %s", err.msg);
    if (!img)
        return;
    qed_check_report rep;
    VT_CHECK(qed_check_image(img, QED_REPAIR_LEAKS, &rep, &err) == 0 && rep.corruptions == 1 &&
               rep.leaks_fixed == 0,
           "leaks-only repair must not reclaim while a corruption remains");
    qed_check_report_free(&rep);
    /* 3 leaked clusters at the end, 1 more once the bad entry's cluster is
     * no longer referenced: all reclaimed. */
    VT_OK(qed_check_image(img, QED_REPAIR_LEAKS | QED_REPAIR_ERRORS, &rep, &err), &err);
    VT_CHECK(rep.corruptions == 0 && rep.corruptions_fixed == 1 && rep.leaks_fixed == 4 &&
               rep.leaks == 0,
           "full repair: %llu fixed, %llu leaks fixed, %llu leaks",
           (unsigned long long)rep.corruptions_fixed, (unsigned long long)rep.leaks_fixed,
           (unsigned long long)rep.leaks);
    qed_check_report_free(&rep);
    VT_OK(vdk_image_close(img, &err), &err);
    VT_CHECK((tqed_read_le64(p, 16) & 2) == 0, "need-check cleared after the repair");
    if (vt_have_qemu())
        tqed_qemu_check(p, "explicit repair");
}

int main(void)
{
    vt_init();
    static uint8_t data[NDATA][CS];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&cases[i], data);
    test_explicit_repair(data);
    return vt_finish("test_qed_check");
}
