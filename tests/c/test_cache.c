/*
 * test_cache.c - unit tests of the metadata table cache (core/cache.c):
 * hits and misses, write-back on flush and eviction, dependencies between
 * caches, discard, and the LRU's preference for clean victims.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"

static int failures;
#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                     \
        }                                                                   \
    } while (0)

enum { TS = 512 };

static uint8_t file_byte(vdk_file *f, uint64_t off)
{
    uint8_t b = 0xee;
    vdk_file_pread(f, &b, 1, off, NULL);
    return b;
}

static void test_basic(void)
{
    vdk_file *f = vdk_file_new_memory("mem");
    uint8_t pattern[TS];
    memset(pattern, 0x5a, sizeof pattern);
    CHECK(vdk_file_pwrite(f, pattern, TS, 4 * TS, NULL) == 0);
    vdk_cache *c = vdk_cache_new(f, TS, 4, "test table");
    CHECK(c != NULL);
    void *t = NULL;
    CHECK(vdk_cache_get(c, 4 * TS, &t, NULL) == 0);
    CHECK(memcmp(t, pattern, TS) == 0);
    vdk_cache_put(c, &t);
    CHECK(t == NULL);
    CHECK(vdk_cache_get(c, 4 * TS, &t, NULL) == 0);
    vdk_cache_stats st;
    vdk_cache_get_stats(c, &st);
    CHECK(st.hits == 1 && st.misses == 1);
    ((uint8_t *)t)[0] = 0x11;
    vdk_cache_mark_dirty(c, t);
    vdk_cache_put(c, &t);
    CHECK(vdk_cache_is_dirty(c));
    CHECK(file_byte(f, 4 * TS) == 0x5a); /* not written until flush */
    CHECK(vdk_cache_flush(c, NULL) == 0);
    CHECK(file_byte(f, 4 * TS) == 0x11);
    CHECK(!vdk_cache_is_dirty(c));
    vdk_cache_free(c);
    vdk_file_unref(f);
}

static void test_eviction(void)
{
    vdk_file *f = vdk_file_new_memory("mem");
    vdk_cache *c = vdk_cache_new(f, TS, 2, "test table");
    void *t;
    /* Dirty table at 0, clean table at TS; a third get must evict the clean one. */
    CHECK(vdk_cache_get_empty(c, 0, &t, NULL) == 0);
    memset(t, 0x22, TS);
    vdk_cache_mark_dirty(c, t);
    vdk_cache_put(c, &t);
    CHECK(vdk_cache_get(c, TS, &t, NULL) == 0);
    vdk_cache_put(c, &t);
    CHECK(vdk_cache_get(c, 2 * TS, &t, NULL) == 0);
    vdk_cache_put(c, &t);
    vdk_cache_stats st;
    vdk_cache_get_stats(c, &st);
    CHECK(st.evictions == 1 && st.writes == 0);
    CHECK(file_byte(f, 0) == 0xee || file_byte(f, 0) == 0); /* still unwritten */
    /* Now both slots hold clean/dirty; force eviction of the dirty one. */
    CHECK(vdk_cache_get(c, 3 * TS, &t, NULL) == 0);
    void *t2;
    CHECK(vdk_cache_get(c, 4 * TS, &t2, NULL) == 0);
    vdk_cache_get_stats(c, &st);
    CHECK(st.writes == 1);
    CHECK(file_byte(f, 0) == 0x22);
    /* All slots referenced: a further get fails cleanly. */
    void *t3;
    vdk_error err;
    CHECK(vdk_cache_get(c, 5 * TS, &t3, &err) < 0);
    vdk_cache_put(c, &t);
    vdk_cache_put(c, &t2);
    vdk_cache_free(c);
    vdk_file_unref(f);
}

static void test_dependency(void)
{
    vdk_file *f = vdk_file_new_memory("mem");
    vdk_cache *refc = vdk_cache_new(f, TS, 4, "refcount block");
    vdk_cache *l2c = vdk_cache_new(f, TS, 4, "L2 table");
    void *t;
    CHECK(vdk_cache_get_empty(refc, 0, &t, NULL) == 0);
    memset(t, 0x33, TS);
    vdk_cache_mark_dirty(refc, t);
    vdk_cache_put(refc, &t);
    CHECK(vdk_cache_get_empty(l2c, TS, &t, NULL) == 0);
    memset(t, 0x44, TS);
    vdk_cache_mark_dirty(l2c, t);
    vdk_cache_put(l2c, &t);
    vdk_cache_set_dependency(l2c, refc);
    CHECK(vdk_cache_write(l2c, NULL) == 0);
    CHECK(file_byte(f, 0) == 0x33); /* the dependency went first */
    CHECK(file_byte(f, TS) == 0x44);
    CHECK(!vdk_cache_is_dirty(refc));
    /* Discard drops a dirty table without writing it. */
    CHECK(vdk_cache_get(l2c, TS, &t, NULL) == 0);
    memset(t, 0x55, TS);
    vdk_cache_mark_dirty(l2c, t);
    vdk_cache_put(l2c, &t);
    vdk_cache_discard(l2c, TS);
    CHECK(vdk_cache_flush(l2c, NULL) == 0);
    CHECK(file_byte(f, TS) == 0x44);
    vdk_cache_free(l2c);
    vdk_cache_free(refc);
    vdk_file_unref(f);
}

int main(void)
{
    test_basic();
    test_eviction();
    test_dependency();
    if (failures) {
        fprintf(stderr, "test_cache: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_cache: ok\n");
    return 0;
}
