/*
 * cache.c - the metadata table cache (contract in cache.h).
 *
 * Tables live in one anonymous mapping of nr_tables * table_size bytes, so a
 * table's slot is found from its address by division, and memory is only
 * committed for slots that were used. Slots are found by offset through a
 * chained hash, and kept on an LRU list (most recent at the head). Eviction
 * takes the least recently used unreferenced slot, preferring a clean one
 * among the last few, so that a miss rarely has to write (and flush) first.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "driver.h"

#define NONE (-1)
/* How many slots from the LRU tail to search for a clean victim. */
#define CLEAN_SCAN 16

struct slot {
    uint64_t offset;
    int ref;
    bool used;  /* holds a table */
    bool dirty;
    int hnext;  /* hash chain */
    int prev;   /* LRU list */
    int next;
};

struct vdk_cache {
    vdk_file *file;
    size_t table_size;
    int n;
    uint8_t *arena;
    size_t arena_len;
    struct slot *s;
    int *bucket;
    unsigned nbuckets; /* power of two */
    int head, tail;    /* LRU list of used slots */
    int free_head;     /* unused slots, linked through next */
    vdk_cache *depends;
    bool flush_first;
    const char *what;
    vdk_cache_stats stats;
};

static unsigned hash(const vdk_cache *c, uint64_t off)
{
    uint64_t h = (off / c->table_size) * UINT64_C(0x9E3779B97F4A7C15);
    return (unsigned)(h >> 32) & (c->nbuckets - 1);
}

static void *table_of(const vdk_cache *c, int i)
{
    return c->arena + (size_t)i * c->table_size;
}

vdk_cache *vdk_cache_new(vdk_file *file, size_t table_size, unsigned nr_tables,
                         const char *what)
{
    if (nr_tables < 2 || table_size == 0 || nr_tables > (1u << 24))
        return NULL;
    vdk_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->table_size = table_size;
    c->n = (int)nr_tables;
    c->what = what ? what : "table";
    c->arena_len = (size_t)nr_tables * table_size;
    c->arena = mmap(NULL, c->arena_len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    c->nbuckets = 1;
    while (c->nbuckets < nr_tables)
        c->nbuckets <<= 1;
    c->s = calloc(nr_tables, sizeof *c->s);
    c->bucket = malloc(c->nbuckets * sizeof *c->bucket);
    if (c->arena == MAP_FAILED || !c->s || !c->bucket) {
        if (c->arena == MAP_FAILED)
            c->arena = NULL;
        vdk_cache_free(c);
        return NULL;
    }
    for (unsigned b = 0; b < c->nbuckets; b++)
        c->bucket[b] = NONE;
    for (int i = 0; i < c->n; i++)
        c->s[i].next = i + 1 < c->n ? i + 1 : NONE;
    c->free_head = 0;
    c->head = c->tail = NONE;
    c->file = vdk_file_ref(file);
    return c;
}

void vdk_cache_free(vdk_cache *c)
{
    if (!c)
        return;
    if (c->arena)
        munmap(c->arena, c->arena_len);
    free(c->s);
    free(c->bucket);
    if (c->file)
        vdk_file_unref(c->file);
    free(c);
}

/* ---------------------------------------------------------------- lists */

static void lru_unlink(vdk_cache *c, int i)
{
    struct slot *s = &c->s[i];
    if (s->prev != NONE)
        c->s[s->prev].next = s->next;
    else
        c->head = s->next;
    if (s->next != NONE)
        c->s[s->next].prev = s->prev;
    else
        c->tail = s->prev;
}

static void lru_push_head(vdk_cache *c, int i)
{
    struct slot *s = &c->s[i];
    s->prev = NONE;
    s->next = c->head;
    if (c->head != NONE)
        c->s[c->head].prev = i;
    c->head = i;
    if (c->tail == NONE)
        c->tail = i;
}

static int lookup(const vdk_cache *c, uint64_t off)
{
    for (int i = c->bucket[hash(c, off)]; i != NONE; i = c->s[i].hnext)
        if (c->s[i].offset == off)
            return i;
    return NONE;
}

static void hash_insert(vdk_cache *c, int i)
{
    unsigned b = hash(c, c->s[i].offset);
    c->s[i].hnext = c->bucket[b];
    c->bucket[b] = i;
}

static void hash_remove(vdk_cache *c, int i)
{
    int *p = &c->bucket[hash(c, c->s[i].offset)];
    while (*p != NONE && *p != i)
        p = &c->s[*p].hnext;
    if (*p == i)
        *p = c->s[i].hnext;
}

/* Return a used slot to the free list. */
static void release_slot(vdk_cache *c, int i)
{
    hash_remove(c, i);
    lru_unlink(c, i);
    c->s[i].used = false;
    c->s[i].dirty = false;
    c->s[i].next = c->free_head;
    c->free_head = i;
}

/* ---------------------------------------------------------------- write-back */

/* Satisfy the one-shot ordering constraints before c writes a table. */
static int before_write(vdk_cache *c, vdk_error *err)
{
    if (c->depends) {
        vdk_cache *dep = c->depends;
        c->depends = NULL; /* cleared first: a cycle must not recurse forever */
        int r = vdk_cache_flush(dep, err);
        if (r < 0) {
            c->depends = dep;
            return r;
        }
        c->flush_first = false; /* dep's flush flushed the file too */
    }
    if (c->flush_first) {
        int r = vdk_file_flush(c->file, err);
        if (r < 0)
            return r;
        c->flush_first = false;
    }
    return 0;
}

static int write_slot(vdk_cache *c, int i, vdk_error *err)
{
    int r = vdk_file_pwrite(c->file, table_of(c, i), c->table_size, c->s[i].offset, err);
    if (r < 0)
        return r;
    c->s[i].dirty = false;
    c->stats.writes++;
    return 0;
}

static int cmp_offset(const void *a, const void *b, void *arg)
{
    const vdk_cache *c = arg;
    uint64_t x = c->s[*(const int *)a].offset, y = c->s[*(const int *)b].offset;
    return x < y ? -1 : x > y;
}

int vdk_cache_write(vdk_cache *c, vdk_error *err)
{
    int ndirty = 0;
    for (int i = c->head; i != NONE; i = c->s[i].next)
        ndirty += c->s[i].dirty;
    if (ndirty == 0)
        return 0;
    int r = before_write(c, err);
    if (r < 0)
        return r;
    int *order = malloc((size_t)ndirty * sizeof *order);
    if (!order)
        return vdk_fail(err, -ENOMEM, "out of memory");
    int k = 0;
    for (int i = c->head; i != NONE; i = c->s[i].next)
        if (c->s[i].dirty)
            order[k++] = i;
    /* In offset order: sequential writes are cheaper. */
    qsort_r(order, (size_t)k, sizeof *order, cmp_offset, c);
    for (int j = 0; j < k && r == 0; j++)
        r = write_slot(c, order[j], err);
    free(order);
    return r;
}

int vdk_cache_flush(vdk_cache *c, vdk_error *err)
{
    int r = vdk_cache_write(c, err);
    if (r == 0)
        r = vdk_file_flush(c->file, err);
    return r;
}

/* ---------------------------------------------------------------- get/put */

/* A slot for a new table: a free one, else an evicted one. */
static int take_slot(vdk_cache *c, vdk_error *err)
{
    if (c->free_head != NONE) {
        int i = c->free_head;
        c->free_head = c->s[i].next;
        return i;
    }
    int victim = NONE, scanned = 0;
    for (int i = c->tail; i != NONE && scanned < CLEAN_SCAN; i = c->s[i].prev) {
        if (c->s[i].ref)
            continue;
        if (victim == NONE)
            victim = i;
        scanned++;
        if (!c->s[i].dirty) {
            victim = i;
            break;
        }
    }
    for (int i = c->tail; victim == NONE && i != NONE; i = c->s[i].prev)
        if (!c->s[i].ref)
            victim = i;
    if (victim == NONE)
        return vdk_fail(err, -ENOMEM, "%s cache: all %d slots are in use", c->what, c->n);
    if (c->s[victim].dirty) {
        int r = before_write(c, err);
        if (r == 0)
            r = write_slot(c, victim, err);
        if (r < 0)
            return r;
    }
    c->stats.evictions++;
    release_slot(c, victim);
    c->free_head = c->s[victim].next;
    return victim;
}

static int get(vdk_cache *c, uint64_t off, bool read, void **table, vdk_error *err)
{
    int i = lookup(c, off);
    if (i != NONE) {
        c->stats.hits++;
        lru_unlink(c, i);
        lru_push_head(c, i);
        c->s[i].ref++;
        *table = table_of(c, i);
        if (!read)
            memset(*table, 0, c->table_size);
        return 0;
    }
    i = take_slot(c, err);
    if (i < 0)
        return i;
    void *t = table_of(c, i);
    if (read) {
        c->stats.misses++;
        int r = vdk_file_pread(c->file, t, c->table_size, off, err);
        if (r < 0) {
            c->s[i].next = c->free_head;
            c->free_head = i;
            return r;
        }
    } else {
        memset(t, 0, c->table_size);
    }
    struct slot *s = &c->s[i];
    s->offset = off;
    s->ref = 1;
    s->used = true;
    s->dirty = false;
    hash_insert(c, i);
    lru_push_head(c, i);
    *table = t;
    return 0;
}

int vdk_cache_get(vdk_cache *c, uint64_t offset, void **table, vdk_error *err)
{
    return get(c, offset, true, table, err);
}

int vdk_cache_get_empty(vdk_cache *c, uint64_t offset, void **table, vdk_error *err)
{
    return get(c, offset, false, table, err);
}

static int slot_of(const vdk_cache *c, const void *table)
{
    const uint8_t *p = table;
    if (!p || p < c->arena || p >= c->arena + c->arena_len)
        return NONE;
    return (int)((size_t)(p - c->arena) / c->table_size);
}

void vdk_cache_put(vdk_cache *c, void **table)
{
    int i = slot_of(c, *table);
    if (i != NONE && c->s[i].ref > 0)
        c->s[i].ref--;
    *table = NULL;
}

void vdk_cache_mark_dirty(vdk_cache *c, const void *table)
{
    int i = slot_of(c, table);
    if (i != NONE && c->s[i].used)
        c->s[i].dirty = true;
}

void vdk_cache_set_dependency(vdk_cache *c, vdk_cache *dep)
{
    if (dep != c)
        c->depends = dep;
}

void vdk_cache_flush_before_write(vdk_cache *c) { c->flush_first = true; }

int vdk_cache_is_dirty(const vdk_cache *c)
{
    for (int i = c->head; i != NONE; i = c->s[i].next)
        if (c->s[i].dirty)
            return 1;
    return 0;
}

void vdk_cache_discard(vdk_cache *c, uint64_t offset)
{
    int i = lookup(c, offset);
    if (i != NONE && c->s[i].ref == 0)
        release_slot(c, i);
}

void vdk_cache_drop_clean(vdk_cache *c)
{
    int i = c->head;
    while (i != NONE) {
        int next = c->s[i].next;
        if (!c->s[i].ref && !c->s[i].dirty) {
            release_slot(c, i);
            if (c->table_size % 4096 == 0)
                madvise(table_of(c, i), c->table_size, MADV_DONTNEED);
        }
        i = next;
    }
}

void vdk_cache_get_stats(const vdk_cache *c, vdk_cache_stats *st) { *st = c->stats; }

size_t vdk_cache_table_size(const vdk_cache *c) { return c->table_size; }
