/*
 * cache.h - a format-agnostic cache of fixed-size metadata tables.
 *
 * A format keeps its tables (qcow2 L2 tables and refcount blocks, QED L2
 * tables) in caches: each cache holds up to nr_tables tables of table_size
 * bytes, keyed by their offset in the file, in file byte order. Callers get a
 * table (reading it on a miss), use it, mark it dirty when they changed it, and
 * put it back. Dirty tables are written back on flush or when evicted (least
 * recently used first), in a safe order:
 *
 *  - set_dependency(c, dep): before c writes any dirty table, every dirty
 *    table of dep is written and the file flushed (qcow2: refcount blocks
 *    before the L2 tables that point at the clusters they count).
 *  - flush_before_write(c): before c writes any dirty table, the file is
 *    flushed (data clusters before the L2 entries that point at them).
 *
 * Both are one-shot: they are cleared once c has written its tables.
 *
 * Not locked: the owning format serialises calls with its metadata lock,
 * which it holds across any I/O the cache does. Tables stay valid while
 * referenced (between get and put); an unreferenced table may be evicted.
 */
#ifndef VDK_CACHE_H
#define VDK_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "file.h"

typedef struct vdk_cache vdk_cache;

typedef struct vdk_cache_stats {
    uint64_t hits;      /* gets answered from memory */
    uint64_t misses;    /* gets that read the file */
    uint64_t writes;    /* tables written back */
    uint64_t evictions; /* tables dropped to make room */
} vdk_cache_stats;

/* NULL on allocation failure. nr_tables >= 2. The cache keeps a reference on
 * file. what names the tables in messages ("L2 table"). */
vdk_cache *vdk_cache_new(vdk_file *file, size_t table_size, unsigned nr_tables,
                         const char *what);
/* Free the cache. Dirty tables are dropped: flush first to keep them. */
void vdk_cache_free(vdk_cache *c);

/* Get the table at offset, reading it from the file on a miss. */
int vdk_cache_get(vdk_cache *c, uint64_t offset, void **table, vdk_error *err);
/* Get a slot for a new table at offset without reading the file; contents are
 * zeroed. The caller fills it and marks it dirty. */
int vdk_cache_get_empty(vdk_cache *c, uint64_t offset, void **table, vdk_error *err);
/* Return a table obtained from get/get_empty; *table is set to NULL. */
void vdk_cache_put(vdk_cache *c, void **table);
/* The table (obtained from get) has changed and must be written back. */
void vdk_cache_mark_dirty(vdk_cache *c, const void *table);

/* Write every dirty table back (after dependencies), without flushing. */
int vdk_cache_write(vdk_cache *c, vdk_error *err);
/* vdk_cache_write, then vdk_file_flush. */
int vdk_cache_flush(vdk_cache *c, vdk_error *err);

void vdk_cache_set_dependency(vdk_cache *c, vdk_cache *dep);
void vdk_cache_flush_before_write(vdk_cache *c);
/* Whether c has dirty tables. */
int vdk_cache_is_dirty(const vdk_cache *c);

/* Forget the table at offset (freed by the format), dirty or not. It must not
 * be referenced. */
void vdk_cache_discard(vdk_cache *c, uint64_t offset);
/* Drop every unreferenced clean table (after a flush: frees memory, or makes
 * the next get re-read the file). */
void vdk_cache_drop_clean(vdk_cache *c);

void vdk_cache_get_stats(const vdk_cache *c, vdk_cache_stats *st);
size_t vdk_cache_table_size(const vdk_cache *c);

#endif /* VDK_CACHE_H */
