/*
 * vmstate.c - VM states of qcow2 snapshots: staging a new one, handing it
 * to the snapshot that takes it, and reading one back.
 *
 * Where QEMU keeps a state: as guest data at guest offsets starting at the
 * first L1 entry past those that map the virtual disk (L1 index
 * ceil(size / (cluster_size * l2_entries)), so the state starts on an L2
 * table boundary and has L2 tables of its own), reached through the
 * snapshot's L1 table. QEMU writes it through the active L1 before taking
 * the snapshot and zeroes it there afterwards; vdk writes it to clusters
 * that only the new snapshot will reference: while a state is staged, its
 * L2 tables live in memory (one host-order array per table), its data
 * clusters are allocated (so their refcounts count them: a crash leaks
 * them, no more) and written in place; the snapshot create writes the L2
 * tables and puts them in the new snapshot's L1 table after the disk's
 * entries. A state no snapshot took is freed (discard, or close).
 *
 * Writes: whole clusters go straight to newly allocated, contiguous host
 * clusters in one write per run (never read-modify-write); a partly
 * written new cluster is padded with zeros. Reads follow the snapshot's
 * L1 table: data, compressed clusters, zeros.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2-snap.h"

struct qcow2_vmstate {
    uint64_t **tables; /* per state L2 table: host offsets of clusters (0: none) */
    uint64_t ntables;
};

uint64_t qcow2_vmstate_l1_index(const qcow2_state *s, uint64_t size)
{
    return qcow2_l1_entries_for(s->cluster_bits, s->l2_bits, size);
}

/* Free the staged clusters of tables [from, ntables) and those tables. */
static void free_tables(qcow2_state *s, uint64_t from, bool clusters)
{
    struct qcow2_vmstate *v = s->vmstate;
    uint64_t n = UINT64_C(1) << s->l2_bits;
    for (uint64_t k = from; k < v->ntables; k++) {
        for (uint64_t i = 0; clusters && v->tables[k] && i < n; i++)
            if (v->tables[k][i])
                qcow2_free_now(s, v->tables[k][i], s->cluster_size, NULL);
        free(v->tables[k]);
        v->tables[k] = NULL;
    }
}

void qcow2_vmstate_free(qcow2_state *s)
{
    if (!s->vmstate)
        return;
    free_tables(s, 0, s->writable && !s->broken && s->rc_cache);
    free(s->vmstate->tables);
    free(s->vmstate);
    s->vmstate = NULL;
}

void qcow2_vmstate_consumed(qcow2_state *s, uint32_t ntables)
{
    if (!s->vmstate)
        return;
    free_tables(s, ntables, true);
    for (uint64_t k = 0; k < ntables && k < s->vmstate->ntables; k++) {
        free(s->vmstate->tables[k]);
        s->vmstate->tables[k] = NULL;
    }
    free(s->vmstate->tables);
    free(s->vmstate);
    s->vmstate = NULL;
}

void qcow2_vmstate_discard(vdk_image *img)
{
    qcow2_state *s = vdk_image_priv(img);
    pthread_mutex_lock(&s->lock);
    qcow2_vmstate_free(s);
    pthread_mutex_unlock(&s->lock);
}

/* ---------------------------------------------------------------- writing */

/* Entry i of an L2 table being built (big-endian), with its bitmap. */
static void put_entry(const qcow2_state *s, uint8_t *t, uint64_t i, uint64_t w, uint64_t bm)
{
    if (s->ext_l2) {
        vdk_put_be64(t + i * 16, w);
        vdk_put_be64(t + i * 16 + 8, bm);
    } else {
        vdk_put_be64(t + i * 8, w);
    }
}

/* The slot of state cluster c, allocating its table (lock held). */
static int slot(qcow2_state *s, uint64_t c, uint64_t **out, vdk_error *err)
{
    struct qcow2_vmstate *v = s->vmstate;
    uint64_t k = c >> s->l2_bits;
    if (k >= v->ntables) {
        uint64_t n = k + 1 > v->ntables * 2 ? k + 1 : v->ntables * 2;
        uint64_t **t = realloc(v->tables, n * sizeof *t);
        if (!t)
            return vdk_fail(err, -ENOMEM, "out of memory");
        memset(t + v->ntables, 0, (n - v->ntables) * sizeof *t);
        v->tables = t;
        v->ntables = n;
    }
    if (!v->tables[k]) {
        v->tables[k] = calloc((size_t)1 << s->l2_bits, 8);
        if (!v->tables[k])
            return vdk_fail(err, -ENOMEM, "out of memory");
    }
    *out = &v->tables[k][c & ((UINT64_C(1) << s->l2_bits) - 1)];
    return 0;
}

/* Map the run of clusters starting at c (at most max): either already
 * allocated and contiguous, or new (allocated now, contiguous). */
static int map_run(qcow2_state *s, uint64_t c, uint64_t max, uint64_t *host, uint64_t *n,
                   bool *fresh, vdk_error *err)
{
    uint64_t *e;
    int r = slot(s, c, &e, err);
    if (r < 0)
        return r;
    *fresh = *e == 0;
    *host = *e;
    *n = 1;
    while (*n < max && r == 0) {
        uint64_t *x = NULL;
        r = slot(s, c + *n, &x, err);
        if (r < 0 || (*fresh ? *x != 0 : *x != *host + (*n << s->cluster_bits)))
            break;
        (*n)++;
    }
    if (r < 0 || !*fresh)
        return r;
    uint64_t got;
    r = qcow2_alloc_clusters(s, *n, false, host, &got, NULL, err);
    if (r < 0)
        return r;
    *n = got;
    for (uint64_t i = 0; i < got; i++) {
        slot(s, c + i, &e, err); /* exists: made above */
        *e = *host + (i << s->cluster_bits);
    }
    return 0;
}

/* Write [pos, pos+len) of the state, which maps to n clusters at host. */
static int write_run(qcow2_state *s, const uint8_t *buf, uint64_t len, uint64_t pos,
                     uint64_t host, bool fresh, vdk_error *err)
{
    uint64_t cs = s->cluster_size, in = pos & (cs - 1);
    uint64_t at = host + in;
    if (!fresh || (in == 0 && (len & (cs - 1)) == 0))
        return vdk_file_pwrite(s->file, buf, len, at, err);
    /* New clusters written in part: pad them with zeros. */
    uint64_t span = (in + len + cs - 1) & ~(cs - 1);
    uint8_t *b = vdk_alloc_aligned(span, true);
    if (!b)
        return vdk_fail(err, -ENOMEM, "out of memory");
    memcpy(b + in, buf, len);
    int r = vdk_file_pwrite(s->file, b, span, host, err);
    free(b);
    return r;
}

int qcow2_vmstate_write(vdk_image *img, const void *buf, size_t len, uint64_t pos,
                        vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    const uint8_t *p = buf;
    uint64_t limit = (QCOW2_MAX_L1_BYTES / 8 - qcow2_vmstate_l1_index(s, s->size)) *
                     qcow2_l2_coverage(s);
    if (pos > limit || len > limit - pos)
        return vdk_fail(err, VDK_ETOOBIG,
                        "qcow2: a VM state cannot reach %llu bytes (the L1 table limit)",
                        (unsigned long long)(pos + len));
    pthread_mutex_lock(&s->lock);
    int r = qcow2_prepare_write(s, err);
    if (r == 0 && s->data_file != s->file)
        r = vdk_fail(err, VDK_EUNSUPPORTED,
                     "qcow2: internal snapshots are not possible with an external data file");
    if (r == 0 && !s->vmstate && !(s->vmstate = calloc(1, sizeof *s->vmstate)))
        r = vdk_fail(err, -ENOMEM, "out of memory");
    while (r == 0 && len) {
        uint64_t cs = s->cluster_size, c = pos >> s->cluster_bits, host, n;
        uint64_t max = ((pos & (cs - 1)) + len + cs - 1) >> s->cluster_bits;
        bool fresh;
        r = map_run(s, c, max, &host, &n, &fresh, err);
        if (r < 0)
            break;
        uint64_t piece = (n << s->cluster_bits) - (pos & (cs - 1));
        if (piece > len)
            piece = len;
        pthread_mutex_unlock(&s->lock);
        r = write_run(s, p, piece, pos, host, fresh, err);
        pthread_mutex_lock(&s->lock);
        p += piece;
        pos += piece;
        len -= piece;
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

/* Write the L2 tables covering the first size bytes of the staged state;
 * entries[k] is table k's new offset (0 when the table is empty). */
int qcow2_vmstate_tables(qcow2_state *s, uint64_t size, uint64_t **entries, uint32_t *n,
                         vdk_error *err)
{
    struct qcow2_vmstate *v = s->vmstate;
    uint64_t cov = qcow2_l2_coverage(s), nt = (size + cov - 1) / cov, got;
    *entries = calloc(nt ? nt : 1, 8);
    uint8_t *t = vdk_alloc_aligned(s->cluster_size, true);
    int r = *entries && t ? 0 : vdk_fail(err, -ENOMEM, "out of memory");
    *n = (uint32_t)nt;
    for (uint64_t k = 0; r == 0 && k < nt; k++) {
        if (k >= v->ntables || !v->tables[k])
            continue;
        memset(t, 0, s->cluster_size);
        for (uint64_t i = 0; i < (UINT64_C(1) << s->l2_bits); i++)
            if (v->tables[k][i])
                put_entry(s, t, i, v->tables[k][i], s->ext_l2 ? 0xffffffffu : 0);
        r = qcow2_alloc_clusters(s, 1, true, &(*entries)[k], &got, NULL, err);
        if (r == 0)
            r = vdk_file_pwrite(s->file, t, s->cluster_size, (*entries)[k], err);
    }
    free(t);
    if (r < 0 && *entries) {
        for (uint64_t k = 0; k < nt; k++)
            if ((*entries)[k])
                qcow2_free_now(s, (*entries)[k], s->cluster_size, NULL);
        free(*entries);
        *entries = NULL;
    }
    return r;
}

/* ---------------------------------------------------------------- reading */

typedef struct rd {
    qcow2_state *s;
    const uint64_t *l1;
    uint64_t l1_size, vmi;
} rd;

/* Whether a decoded entry holds data for the whole cluster. */
static bool full_data(const qcow2_state *s, const qcow2_cinfo *ci)
{
    return !ci->compressed && ci->alloc == (s->nsub == 1 ? 1u : 0xffffffffu);
}

/* Read what the entry ci says for [in, in+len) of its cluster. */
static int read_cluster(qcow2_state *s, const qcow2_cinfo *ci, uint64_t gc, uint8_t *buf,
                        uint64_t in, uint64_t len, vdk_error *err)
{
    if (ci->compressed) {
        uint8_t *cbuf = malloc(s->cluster_size);
        if (!cbuf)
            return vdk_fail(err, -ENOMEM, "out of memory");
        int r = qcow2_read_compressed(s, ci->word, gc, cbuf, err);
        if (r == 0)
            memcpy(buf, cbuf + in, len);
        free(cbuf);
        return r;
    }
    /* Zero, unallocated, or some subclusters: subcluster by subcluster. */
    for (uint64_t at = 0; at < len;) {
        uint64_t sc = (in + at) >> s->sc_bits;
        uint64_t piece = ((sc + 1) << s->sc_bits) - (in + at);
        if (piece > len - at)
            piece = len - at;
        int r = 0;
        if (ci->alloc & (1u << sc))
            r = vdk_file_pread(s->file, buf + at, piece, ci->host + in + at, err);
        else
            memset(buf + at, 0, piece);
        if (r < 0)
            return r;
        at += piece;
    }
    return 0;
}

/* Read from pos on, as far as one run of contiguous data clusters of one
 * L2 table goes (or one cluster); sets *done. */
static int read_piece(rd *x, uint8_t *buf, uint64_t len, uint64_t pos, uint64_t *done,
                      vdk_error *err)
{
    qcow2_state *s = x->s;
    uint64_t cs = s->cluster_size, c = pos >> s->cluster_bits, in = pos & (cs - 1);
    uint64_t l1i = x->vmi + (c >> s->l2_bits), mask = (UINT64_C(1) << s->l2_bits) - 1;
    uint64_t off = l1i < x->l1_size ? x->l1[l1i] & QCOW2_OFFSET_MASK : 0;
    *done = cs - in < len ? cs - in : len;
    if (!off) {
        memset(buf, 0, *done);
        return 0;
    }
    uint8_t *t;
    int r = qcow2_check_l2_offset(s, l1i, off, err);
    if (r == 0)
        r = vdk_cache_get(s->l2_cache, off, (void **)&t, err);
    if (r < 0)
        return r;
    uint64_t w, b, gc = (l1i << s->l2_bits) | (c & mask);
    qcow2_cinfo ci, nx;
    qcow2_l2_entry_read(s, t, c & mask, &w, &b);
    r = qcow2_decode(s, gc, w, b, &ci, err);
    for (uint64_t k = 1; r == 0 && full_data(s, &ci) && *done < len && ((c + k) & mask); k++) {
        qcow2_l2_entry_read(s, t, (c + k) & mask, &w, &b);
        r = qcow2_decode(s, gc + k, w, b, &nx, err);
        if (r < 0 || !full_data(s, &nx) || nx.host != ci.host + (k << s->cluster_bits))
            break;
        *done += cs < len - *done ? cs : len - *done;
    }
    vdk_cache_put(s->l2_cache, (void **)&t);
    if (r < 0)
        return r;
    if (full_data(s, &ci))
        return vdk_file_pread(s->file, buf, *done, ci.host + in, err);
    return read_cluster(s, &ci, gc, buf, in, *done, err);
}

int qcow2_vmstate_read(vdk_image *img, const char *id, void *buf, size_t len, uint64_t pos,
                       vdk_error *err)
{
    qcow2_state *s = vdk_image_priv(img);
    pthread_mutex_lock(&s->lock);
    int r = qcow2_snapshots_validate(s, err), i = -1;
    if (r == 0 && (i = qcow2_snapshot_find(s, id)) < 0)
        r = vdk_fail(err, -ENOENT, "qcow2: no snapshot with ID '%s'", id);
    uint64_t *l1 = NULL;
    if (r == 0)
        r = qcow2_snapshot_read_l1(s, &s->snaps[i], &l1, err);
    if (r == 0) {
        rd x = {s, l1, s->snaps[i].l1_size,
                qcow2_vmstate_l1_index(s, s->snaps[i].disk_size)};
        uint8_t *p = buf;
        while (r == 0 && len) {
            uint64_t done;
            if (pos >> (s->cluster_bits + s->l2_bits) > QCOW2_MAX_L1_BYTES / 8) {
                memset(p, 0, len); /* past anything an L1 table can map */
                break;
            }
            r = read_piece(&x, p, len, pos, &done, err);
            p += done;
            pos += done;
            len -= done;
        }
    }
    free(l1);
    pthread_mutex_unlock(&s->lock);
    return r;
}
