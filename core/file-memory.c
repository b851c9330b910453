/*
 * file-memory.c - the in-memory kind of vdk_file, for tests.
 *
 * A sparse, growable file: its bytes live in 64 KiB chunks kept in a hash map
 * from chunk index to chunk; a missing chunk reads as zeros and counts as a
 * hole for block status, so memory use follows the data written, not the
 * file size. Every op is supported; discard and write_zeroes drop whole
 * chunks and zero partial ones. A rwlock makes it thread-safe: reads and
 * queries share it, everything that changes the file holds it exclusively.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "file-int.h"

#define CHUNK_SHIFT 16
#define CHUNK_SIZE ((uint64_t)1 << CHUNK_SHIFT)

struct slot {
    uint64_t idx;
    uint8_t *data; /* NULL: empty slot */
};

struct mem_file {
    vdk_file base;
    pthread_rwlock_t lock;
    uint64_t size;
    struct slot *slots; /* open addressing, linear probing; cap is a power of 2 */
    size_t cap, count;
};

static struct mem_file *to_mem(vdk_file *f)
{
    return (struct mem_file *)f;
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* ---------------------------------------------------------------- chunk map */

static size_t slot_of(const struct mem_file *m, uint64_t idx)
{
    uint64_t h = idx * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32) & (m->cap - 1);
}

static uint8_t *chunk_find(const struct mem_file *m, uint64_t idx)
{
    if (!m->count)
        return NULL;
    for (size_t i = slot_of(m, idx);; i = (i + 1) & (m->cap - 1)) {
        if (!m->slots[i].data)
            return NULL;
        if (m->slots[i].idx == idx)
            return m->slots[i].data;
    }
}

static void slot_put(struct mem_file *m, uint64_t idx, uint8_t *data)
{
    size_t i = slot_of(m, idx);
    while (m->slots[i].data)
        i = (i + 1) & (m->cap - 1);
    m->slots[i].idx = idx;
    m->slots[i].data = data;
    m->count++;
}

static int map_grow(struct mem_file *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    struct slot *old = m->slots, *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -ENOMEM;
    size_t ocap = m->cap;
    m->slots = ns;
    m->cap = ncap;
    m->count = 0;
    for (size_t i = 0; i < ocap; i++)
        if (old[i].data)
            slot_put(m, old[i].idx, old[i].data);
    free(old);
    return 0;
}

/* The chunk for idx, created zeroed if missing; NULL on allocation failure. */
static uint8_t *chunk_get(struct mem_file *m, uint64_t idx)
{
    uint8_t *c = chunk_find(m, idx);
    if (c)
        return c;
    if ((m->count + 1) * 2 > m->cap && map_grow(m) < 0)
        return NULL;
    c = calloc(1, CHUNK_SIZE);
    if (c)
        slot_put(m, idx, c);
    return c;
}

/* Remove idx's chunk (backward-shift deletion keeps probe chains intact). */
static void chunk_drop(struct mem_file *m, uint64_t idx)
{
    if (!m->count)
        return;
    size_t mask = m->cap - 1, i = slot_of(m, idx);
    while (m->slots[i].data && m->slots[i].idx != idx)
        i = (i + 1) & mask;
    if (!m->slots[i].data)
        return;
    free(m->slots[i].data);
    m->slots[i].data = NULL;
    m->count--;
    for (size_t j = (i + 1) & mask; m->slots[j].data; j = (j + 1) & mask) {
        size_t home = slot_of(m, m->slots[j].idx);
        /* Move j into the gap at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            m->slots[i] = m->slots[j];
            m->slots[j].data = NULL;
            i = j;
        }
    }
}

/* Drop every chunk with first <= idx < last, by index or by scanning the map,
 * whichever is shorter. */
static void drop_chunks(struct mem_file *m, uint64_t first, uint64_t last)
{
    if (first >= last || !m->count)
        return;
    if (last - first <= m->cap) {
        for (uint64_t i = first; i < last; i++)
            chunk_drop(m, i);
        return;
    }
    for (size_t i = 0; i < m->cap;) {
        if (m->slots[i].data && m->slots[i].idx >= first && m->slots[i].idx < last)
            chunk_drop(m, m->slots[i].idx); /* may shift another entry into i */
        else
            i++;
    }
}

/* Clear [off, off+n) inside one chunk, if that chunk exists. */
static void zero_in_chunk(struct mem_file *m, uint64_t off, uint64_t n)
{
    uint8_t *c = n ? chunk_find(m, off >> CHUNK_SHIFT) : NULL;
    if (c)
        memset(c + (off & (CHUNK_SIZE - 1)), 0, n);
}

/* Zero [off, off+len): drop whole chunks, clear the parts of partial ones. */
static void zero_range(struct mem_file *m, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    uint64_t first = (off + CHUNK_SIZE - 1) >> CHUNK_SHIFT, last = end >> CHUNK_SHIFT;
    if (first > last) { /* inside one chunk */
        zero_in_chunk(m, off, len);
        return;
    }
    zero_in_chunk(m, off, (first << CHUNK_SHIFT) - off);
    zero_in_chunk(m, last << CHUNK_SHIFT, end - (last << CHUNK_SHIFT));
    drop_chunks(m, first, last);
}

/* The smallest chunk index >= idx present in the map, or UINT64_MAX. */
static uint64_t next_chunk(const struct mem_file *m, uint64_t idx)
{
    uint64_t best = UINT64_MAX;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].data && m->slots[i].idx >= idx && m->slots[i].idx < best)
            best = m->slots[i].idx;
    return best;
}

/* ---------------------------------------------------------------- ops */

static int mem_pread(vdk_file *f, void *buf, size_t len, uint64_t off)
{
    struct mem_file *m = to_mem(f);
    uint8_t *dst = buf;
    pthread_rwlock_rdlock(&m->lock);
    while (len > 0) {
        uint64_t idx = off >> CHUNK_SHIFT, in = off & (CHUNK_SIZE - 1);
        size_t n = (size_t)min_u64(len, CHUNK_SIZE - in);
        uint8_t *c = off < m->size ? chunk_find(m, idx) : NULL;
        if (c)
            memcpy(dst, c + in, n);
        else
            memset(dst, 0, n);
        dst += n;
        off += n;
        len -= n;
    }
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int mem_pwrite(vdk_file *f, const void *buf, size_t len, uint64_t off)
{
    struct mem_file *m = to_mem(f);
    const uint8_t *src = buf;
    int r = 0;
    pthread_rwlock_wrlock(&m->lock);
    while (len > 0) {
        uint64_t idx = off >> CHUNK_SHIFT, in = off & (CHUNK_SIZE - 1);
        size_t n = (size_t)min_u64(len, CHUNK_SIZE - in);
        uint8_t *c = chunk_get(m, idx);
        if (!c) {
            r = -ENOMEM;
            break;
        }
        memcpy(c + in, src, n);
        src += n;
        off += n;
        len -= n;
        if (off > m->size)
            m->size = off;
    }
    pthread_rwlock_unlock(&m->lock);
    return r;
}

static int mem_size(vdk_file *f, uint64_t *size)
{
    struct mem_file *m = to_mem(f);
    pthread_rwlock_rdlock(&m->lock);
    *size = m->size;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

/* Drop every chunk at or past size and zero the tail of the last one. */
static void cut_to(struct mem_file *m, uint64_t size)
{
    uint64_t first_gone = (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT;
    drop_chunks(m, first_gone, UINT64_MAX);
    if (size & (CHUNK_SIZE - 1))
        zero_in_chunk(m, size, (first_gone << CHUNK_SHIFT) - size);
}

static int mem_truncate(vdk_file *f, uint64_t size)
{
    struct mem_file *m = to_mem(f);
    pthread_rwlock_wrlock(&m->lock);
    if (size < m->size)
        cut_to(m, size);
    m->size = size;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

/* Memory needs no reservation: every mode just extends the file. */
static int mem_allocate(vdk_file *f, uint64_t off, uint64_t len, int prealloc)
{
    struct mem_file *m = to_mem(f);
    pthread_rwlock_wrlock(&m->lock);
    if (off + len > m->size)
        m->size = off + len;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int mem_write_zeroes(vdk_file *f, uint64_t off, uint64_t len, bool may_unmap)
{
    struct mem_file *m = to_mem(f);
    pthread_rwlock_wrlock(&m->lock);
    if (off < m->size)
        zero_range(m, off, min_u64(len, m->size - off));
    if (off + len > m->size)
        m->size = off + len;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int mem_discard(vdk_file *f, uint64_t off, uint64_t len)
{
    struct mem_file *m = to_mem(f);
    pthread_rwlock_wrlock(&m->lock);
    if (off < m->size)
        zero_range(m, off, min_u64(len, m->size - off));
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int mem_block_status(vdk_file *f, uint64_t off, uint64_t len, bool *is_data,
                            uint64_t *run)
{
    struct mem_file *m = to_mem(f);
    uint64_t end = off + len, pos = off;
    pthread_rwlock_rdlock(&m->lock);
    *is_data = off < m->size && chunk_find(m, off >> CHUNK_SHIFT) != NULL;
    if (*is_data) {
        uint64_t data_end = min_u64(end, m->size);
        while (pos < data_end && chunk_find(m, pos >> CHUNK_SHIFT))
            pos = ((pos >> CHUNK_SHIFT) + 1) << CHUNK_SHIFT;
        pos = min_u64(pos, data_end);
    } else {
        /* A hole runs to the next chunk, or through EOF to the range's end. */
        uint64_t next = off < m->size ? next_chunk(m, off >> CHUNK_SHIFT) : UINT64_MAX;
        pos = next == UINT64_MAX || (next << CHUNK_SHIFT) >= m->size ? end
                                                                     : next << CHUNK_SHIFT;
    }
    *run = min_u64(pos, end) - off;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int64_t mem_allocated_size(vdk_file *f)
{
    struct mem_file *m = to_mem(f);
    pthread_rwlock_rdlock(&m->lock);
    int64_t n = (int64_t)(m->count * CHUNK_SIZE);
    pthread_rwlock_unlock(&m->lock);
    return n;
}

static void mem_destroy(vdk_file *f)
{
    struct mem_file *m = to_mem(f);
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].data);
    free(m->slots);
    pthread_rwlock_destroy(&m->lock);
    vdk_file_fini(f);
    free(m);
}

static const struct vdk_file_ops mem_ops = {
    .kind = "memory",
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .size = mem_size,
    .truncate = mem_truncate,
    .allocate = mem_allocate,
    .write_zeroes = mem_write_zeroes,
    .discard = mem_discard,
    .block_status = mem_block_status,
    .allocated_size = mem_allocated_size,
    .destroy = mem_destroy,
};

vdk_file *vdk_file_new_memory(const char *name)
{
    struct mem_file *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (pthread_rwlock_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    if (vdk_file_init(&m->base, &mem_ops, name ? name : "memory", true,
                      VDK_CACHE_WRITEBACK, 1) < 0) {
        pthread_rwlock_destroy(&m->lock);
        free(m);
        return NULL;
    }
    return &m->base;
}
