/*
 * snapshot-ops.c - the qcow2 driver's internal-snapshot slots: list,
 * create, apply (revert), delete, and load (a read-only view of a snapshot,
 * for convert -l).
 *
 * Each writing operation runs under the metadata lock once no I/O is in
 * flight and everything cached is durable (qcow2_quiesce), and is one
 * transaction (snapshot-commit.c):
 *
 *  create  the snapshot gets a new L1 table with the active entries that
 *          map the disk (plus, with a VM state, the state's L2 tables after
 *          them, where QEMU keeps a state); every L2 table it shares and
 *          every cluster those reference gain one reference.
 *  apply   the active L1 becomes the snapshot's entries that map its disk
 *          (the virtual size becomes the snapshot's); those gain one
 *          reference, and the old active tables lose theirs after the switch.
 *  delete  the entry leaves the table; its L2 tables and what they reference
 *          lose one reference at the switch, its L1 table is freed after.
 *
 * IDs are assigned as QEMU does (largest numeric ID + 1). Names must be
 * unique and valid UTF-8 (QEMU allows duplicates; vdk refuses to create
 * them, so that a name always selects one snapshot).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qcow2-snap.h"

#define MAX_STR 65535u

/* Lock, and for writing operations: first-write duties, quiesce. The
 * table must pass the deeper validation. */
static int begin(qcow2_state *s, bool write, vdk_error *err)
{
    pthread_mutex_lock(&s->lock);
    int r = 0;
    if (s->data_file != s->file)
        r = vdk_fail(err, VDK_EUNSUPPORTED,
                     "qcow2: internal snapshots are not possible with an external data file");
    if (r == 0 && write)
        r = qcow2_prepare_write(s, err);
    if (r == 0 && write)
        r = qcow2_quiesce(s, err);
    if (r == 0)
        r = qcow2_snapshots_validate(s, err);
    return r;
}

static int end(qcow2_state *s, int r)
{
    pthread_mutex_unlock(&s->lock);
    return r;
}

static int find(qcow2_state *s, const char *id, vdk_error *err)
{
    int i = qcow2_snapshot_find(s, id);
    if (i < 0)
        return vdk_fail(err, -ENOENT, "qcow2: no snapshot with ID '%s'", id);
    return i;
}

/* ---------------------------------------------------------------- list */

int qcow2_snapshot_list(vdk_image *img, vdk_snapshot_info **list, size_t *n, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    int r = begin(s, false, err);
    vdk_snapshot_info *l = NULL;
    if (r == 0 && s->nb_snapshots) {
        l = calloc(s->nb_snapshots, sizeof *l);
        if (!l)
            r = vdk_fail(err, -ENOMEM, "out of memory");
    }
    for (uint32_t i = 0; r == 0 && i < s->nb_snapshots; i++) {
        const qcow2_snapshot *sn = &s->snaps[i];
        l[i] = (vdk_snapshot_info){strdup(sn->id), strdup(sn->name), sn->vm_state_size,
                                   sn->disk_size, sn->date_sec, sn->date_nsec,
                                   sn->vm_clock_nsec, sn->icount};
        if (!l[i].id || !l[i].name)
            r = vdk_fail(err, -ENOMEM, "out of memory");
    }
    if (r < 0) {
        vdk_snapshot_list_free(l, s->nb_snapshots);
        return end(s, r);
    }
    *list = l;
    *n = s->nb_snapshots;
    return end(s, 0);
}

/* ---------------------------------------------------------------- helpers */

static int copy_entry(qcow2_snapshot *dst, const qcow2_snapshot *src)
{
    *dst = *src;
    dst->id = strdup(src->id);
    dst->name = strdup(src->name);
    dst->extra_tail = NULL;
    if (src->extra_tail_len) {
        dst->extra_tail = malloc(src->extra_tail_len);
        if (dst->extra_tail)
            memcpy(dst->extra_tail, src->extra_tail, src->extra_tail_len);
    }
    if (!dst->id || !dst->name || (src->extra_tail_len && !dst->extra_tail)) {
        qcow2_snapshot_entry_free(dst);
        return -ENOMEM;
    }
    return 0;
}

/* t->snaps = the current list without entry skip (-1: none), with room for
 * one more. */
static int copy_list(qcow2_state *s, qcow2_txn *t, int skip, vdk_error *err)
{
    t->snaps = calloc(s->nb_snapshots + 1, sizeof *t->snaps);
    if (!t->snaps)
        return vdk_fail(err, -ENOMEM, "out of memory");
    t->new_table = true;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if ((int)i == skip)
            continue;
        if (copy_entry(&t->snaps[t->nsnaps], &s->snaps[i]) < 0)
            return vdk_fail(err, -ENOMEM, "out of memory");
        t->nsnaps++;
    }
    return 0;
}

/* t->l1 = the first n entries of l1 (of size l1n), offsets only. */
static int set_l1(qcow2_txn *t, const uint64_t *l1, uint32_t l1n, uint32_t n, vdk_error *err)
{
    t->l1 = calloc(n ? n : 1, 8);
    if (!t->l1)
        return vdk_fail(err, -ENOMEM, "out of memory");
    t->l1_size = n;
    for (uint32_t i = 0; i < n && i < l1n; i++)
        t->l1[i] = l1[i] & QCOW2_OFFSET_MASK;
    return 0;
}

static uint32_t l1_entries(const qcow2_state *s, uint64_t size)
{
    return (uint32_t)qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, size);
}

/* ---------------------------------------------------------------- create */

static int check_params(qcow2_state *s, const vdk_snapshot_params *p, char *id, size_t idlen,
                        vdk_error *err)
{
    size_t nl = strlen(p->name);
    if (nl > MAX_STR || !qcow2_utf8_valid(p->name, nl))
        return vdk_fail(err, -EINVAL, "qcow2: snapshot name is not valid UTF-8 or longer "
                                      "than 65535 bytes");
    if (qcow2_snapshot_find_name(s, p->name) >= 0)
        return vdk_fail(err, -EEXIST, "qcow2: a snapshot named '%s' already exists", p->name);
    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
        return vdk_fail(err, VDK_ETOOBIG, "qcow2: the image already has %u snapshots",
                        s->nb_snapshots);
    if (p->id) {
        size_t il = strlen(p->id);
        if (!il || il >= idlen || !qcow2_utf8_valid(p->id, il))
            return vdk_fail(err, -EINVAL, "qcow2: snapshot ID '%s' is empty, too long or not "
                                          "valid UTF-8", p->id);
        if (qcow2_snapshot_find(s, p->id) >= 0)
            return vdk_fail(err, -EEXIST, "qcow2: a snapshot with ID '%s' already exists",
                            p->id);
        memcpy(id, p->id, il + 1);
    } else {
        qcow2_snapshot_next_id(s, id, idlen);
    }
    if (p->vm_state_size && !s->vmstate)
        return vdk_fail(err, -EINVAL, "qcow2: no VM state was written for the snapshot");
    return 0;
}

/* The new entry, last in t->snaps. */
static int add_entry(qcow2_state *s, qcow2_txn *t, const vdk_snapshot_params *p,
                     const char *id, uint64_t l1_off, uint32_t l1_size, vdk_error *err)
{
    qcow2_snapshot *sn = &t->snaps[t->nsnaps];
    memset(sn, 0, sizeof *sn);
    sn->id = strdup(id);
    sn->name = strdup(p->name);
    if (!sn->id || !sn->name) {
        qcow2_snapshot_entry_free(sn);
        return vdk_fail(err, -ENOMEM, "out of memory");
    }
    t->nsnaps++;
    sn->l1_offset = l1_off;
    sn->l1_size = l1_size;
    sn->disk_size = s->size;
    sn->has_disk_size = true;
    sn->vm_state_size = p->vm_state_size;
    sn->vm_clock_nsec = p->vm_clock_nsec;
    sn->icount = p->icount;
    if (p->has_date) {
        sn->date_sec = p->date_sec;
        sn->date_nsec = p->date_nsec;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sn->date_sec = (uint32_t)ts.tv_sec;
        sn->date_nsec = (uint32_t)(ts.tv_nsec / 1000 * 1000); /* microseconds, as QEMU */
    }
    return 0;
}

/* Write the snapshot's L1 table: the active entries that map the disk,
 * then the VM state's tables. */
static int write_snapshot_l1(qcow2_state *s, const uint64_t *state, uint32_t nstate,
                             uint32_t vmi, uint64_t *off, vdk_error *err)
{
    uint32_t n = vmi + nstate;
    uint64_t bytes = qcow2_size_to_clusters(s, (uint64_t)n * 8) << s->cluster_bits, got;
    *off = 0;
    if (n == 0)
        return 0;
    uint64_t *be = vdk_alloc_aligned(bytes, true);
    if (!be)
        return vdk_fail(err, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < vmi && i < s->l1_size; i++)
        vdk_put_be64(&be[i], s->l1[i] & QCOW2_OFFSET_MASK);
    for (uint32_t i = 0; i < nstate; i++)
        vdk_put_be64(&be[vmi + i], state[i]);
    int r = qcow2_alloc_clusters(s, bytes >> s->cluster_bits, true, off, &got, NULL, err);
    if (r == 0 && got != bytes >> s->cluster_bits) {
        qcow2_free_now(s, *off, got << s->cluster_bits, NULL);
        r = vdk_fail(err, -EIO, "qcow2: could not allocate the snapshot's L1 table");
    }
    if (r == 0) {
        r = vdk_file_pwrite(s->file, be, bytes, *off, err);
        if (r < 0)
            qcow2_free_now(s, *off, bytes, NULL);
    }
    if (r < 0)
        *off = 0;
    free(be);
    return r;
}

static int create_locked(qcow2_state *s, const vdk_snapshot_params *p, vdk_error *err)
{
    char id[128];
    int r = check_params(s, p, id, sizeof id, err);
    if (r < 0)
        return r;
    uint32_t vmi = l1_entries(s, s->size), nstate = 0;
    uint64_t *state = NULL, l1_off = 0;
    if (p->vm_state_size)
        r = qcow2_vmstate_tables(s, p->vm_state_size, &state, &nstate, err);
    if (r == 0)
        r = write_snapshot_l1(s, state, nstate, vmi, &l1_off, err);
    qcow2_txn t;
    qcow2_txn_init(s, &t);
    if (r == 0)
        r = copy_list(s, &t, -1, err);
    if (r == 0)
        r = add_entry(s, &t, p, id, l1_off, vmi + nstate, err);
    if (r == 0)
        r = set_l1(&t, s->l1, s->l1_size, s->l1_size, err);
    t.size = s->size;
    if (r == 0)
        r = qcow2_deltas_add_l1(s, &t.d, s->l1, vmi < s->l1_size ? vmi : s->l1_size, +1, err);
    if (r == 0)
        r = qcow2_txn_commit(s, &t, err);
    if (r < 0 && !t.switched && !s->broken) { /* nothing points at them: give back */
        if (l1_off)
            qcow2_free_now(s, l1_off, (uint64_t)(vmi + nstate) * 8, NULL);
        for (uint32_t i = 0; i < nstate; i++)
            if (state[i])
                qcow2_free_now(s, state[i], s->cluster_size, NULL);
    }
    if (t.switched && p->vm_state_size)
        qcow2_vmstate_consumed(s, nstate);
    qcow2_txn_free(&t);
    free(state);
    return r;
}

int qcow2_snapshot_create(vdk_image *img, const vdk_snapshot_params *p, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    int r = begin(s, true, err);
    if (r == 0)
        r = create_locked(s, p, err);
    return end(s, r);
}

/* ---------------------------------------------------------------- apply */

static int apply_locked(qcow2_state *s, const char *id, vdk_error *err)
{
    int i = find(s, id, err);
    if (i < 0)
        return i;
    const qcow2_snapshot *sn = &s->snaps[i];
    uint32_t need = l1_entries(s, sn->disk_size);
    uint64_t *l1 = NULL;
    int r = qcow2_snapshot_read_l1(s, sn, &l1, err);
    qcow2_txn t;
    qcow2_txn_init(s, &t);
    if (r == 0)
        r = set_l1(&t, l1, sn->l1_size, need, err);
    t.size = sn->disk_size;
    if (r == 0)
        r = qcow2_deltas_add_l1(s, &t.d, t.l1, need, +1, err);
    if (r == 0) {
        t.drop_l1 = malloc((s->l1_size ? s->l1_size : 1) * 8);
        if (!t.drop_l1)
            r = vdk_fail(err, -ENOMEM, "out of memory");
        else
            memcpy(t.drop_l1, s->l1, (uint64_t)s->l1_size * 8);
        t.drop_l1_size = s->l1_size;
    }
    if (r == 0)
        r = qcow2_txn_commit(s, &t, err);
    qcow2_txn_free(&t);
    free(l1);
    return r;
}

int qcow2_snapshot_apply(vdk_image *img, const char *id, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    int r = begin(s, true, err);
    if (r == 0)
        r = apply_locked(s, id, err);
    return end(s, r);
}

/* ---------------------------------------------------------------- delete */

static int delete_locked(qcow2_state *s, const char *id, vdk_error *err)
{
    int i = find(s, id, err);
    if (i < 0)
        return i;
    const qcow2_snapshot *sn = &s->snaps[i];
    uint64_t *l1 = NULL;
    int r = qcow2_snapshot_read_l1(s, sn, &l1, err);
    qcow2_txn t;
    qcow2_txn_init(s, &t);
    if (r == 0)
        r = qcow2_deltas_add_l1(s, &t.d, l1, sn->l1_size, -1, err);
    if (r == 0)
        r = qcow2_txn_free_after(&t, sn->l1_offset, (uint64_t)sn->l1_size * 8, err);
    if (r == 0)
        r = copy_list(s, &t, i, err);
    if (r == 0)
        r = set_l1(&t, s->l1, s->l1_size, s->l1_size, err);
    t.size = s->size;
    if (r == 0)
        r = qcow2_txn_commit(s, &t, err);
    qcow2_txn_free(&t);
    free(l1);
    return r;
}

int qcow2_snapshot_delete(vdk_image *img, const char *id, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    int r = begin(s, true, err);
    if (r == 0)
        r = delete_locked(s, id, err);
    return end(s, r);
}

/* ---------------------------------------------------------------- load */

int qcow2_snapshot_load(vdk_image *img, const char *id, vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    int r = begin(s, false, err);
    while (r == 0 && s->ops)
        pthread_cond_wait(&s->cond, &s->lock);
    int i = r == 0 ? find(s, id, err) : r;
    if (i < 0)
        return end(s, i);
    const qcow2_snapshot *sn = &s->snaps[i];
    uint64_t *l1 = NULL;
    r = qcow2_snapshot_read_l1(s, sn, &l1, err);
    if (r == 0) {
        free(s->l1);
        s->l1 = l1;
        s->l1_size = sn->l1_size; /* l1_offset stays the active table's (read-only) */
        qcow2_l2set_rebuild(s);
        s->size = sn->disk_size;
        vdk_image_set_size(img, s->size);
    }
    return end(s, r);
}
