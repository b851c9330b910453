/*
 * endian.h - loads and stores of on-disk integers.
 *
 * On-disk structures are kept in their file byte order in memory (tables in
 * the metadata cache are raw file bytes); these helpers convert at the point
 * of use. qcow2 is big-endian, QED little-endian. The pointers need no
 * alignment.
 */
#ifndef VDK_ENDIAN_H
#define VDK_ENDIAN_H

#include <stdint.h>
#include <string.h>

static inline uint16_t vdk_be16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap16(v);
}
static inline uint32_t vdk_be32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap32(v);
}
static inline uint64_t vdk_be64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return __builtin_bswap64(v);
}
static inline void vdk_put_be16(void *p, uint16_t v)
{
    v = __builtin_bswap16(v);
    memcpy(p, &v, sizeof v);
}
static inline void vdk_put_be32(void *p, uint32_t v)
{
    v = __builtin_bswap32(v);
    memcpy(p, &v, sizeof v);
}
static inline void vdk_put_be64(void *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    memcpy(p, &v, sizeof v);
}
static inline uint16_t vdk_le16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint32_t vdk_le32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline uint64_t vdk_le64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void vdk_put_le32(void *p, uint32_t v) { memcpy(p, &v, sizeof v); }
static inline void vdk_put_le64(void *p, uint64_t v) { memcpy(p, &v, sizeof v); }

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vdk's byte-order helpers assume a little-endian host"
#endif

#endif /* VDK_ENDIAN_H */
