/*
 * test_crash_util.h - what the crash replayer (test_crash_replay.c) and the
 * check API test add to test_util.h: a splitmix64 generator and buffers
 * filled from it (the replayer's seeds name its runs, so its sequence
 * stays), and a fast content hash with a set of hashes (to count distinct
 * crash states).
 */
#ifndef TEST_CRASH_UTIL_H
#define TEST_CRASH_UTIL_H

#include "file-test.h"
#include "test_util.h"

/* splitmix64 */
__attribute__((unused)) static uint64_t tc_rand(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}
__attribute__((unused)) static uint64_t tc_below(uint64_t *x, uint64_t n) { return n ? tc_rand(x) % n : 0; }

__attribute__((unused)) static void tc_fill(uint8_t *b, size_t len, uint64_t seed)
{
    uint64_t x = seed;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = tc_rand(&x);
        memcpy(b + i, &v, len - i < 8 ? len - i : 8);
    }
}

/* A fast 64-bit hash of a byte string (distinct crash states). */
__attribute__((unused)) static uint64_t tc_hash(const uint8_t *b, size_t len)
{
    uint64_t h = UINT64_C(0x9E3779B97F4A7C15) ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        h = (h ^ v) * UINT64_C(0xBF58476D1CE4E5B9);
        h ^= h >> 29;
    }
    for (; i < len; i++)
        h = (h ^ b[i]) * UINT64_C(0x100000001B3);
    return h ^ (h >> 32);
}

/* A set of 64-bit hashes (open addressing). */
typedef struct tc_set {
    uint64_t *v;
    size_t cap, n;
} tc_set;

__attribute__((unused)) static bool tc_set_add(tc_set *s, uint64_t h)
{
    if (h == 0)
        h = 1;
    if ((s->n + 1) * 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        uint64_t *v = calloc(cap, 8);
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->v[i])
                continue;
            size_t j = s->v[i] & (cap - 1);
            while (v[j])
                j = (j + 1) & (cap - 1);
            v[j] = s->v[i];
        }
        free(s->v);
        s->v = v;
        s->cap = cap;
    }
    size_t j = h & (s->cap - 1);
    while (s->v[j]) {
        if (s->v[j] == h)
            return false;
        j = (j + 1) & (s->cap - 1);
    }
    s->v[j] = h;
    s->n++;
    return true;
}

#endif /* TEST_CRASH_UTIL_H */
