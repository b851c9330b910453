/*
 * opts.c - creation options (qemu-img's "-o key=value" pairs), cache and
 * preallocation mode names, and size parsing.
 *
 * Drivers read the options they know with typed getters that mark each key
 * as used; vdk_opts_check_used then rejects whatever is left, naming the key,
 * exactly as qemu-img does with "Invalid parameter".
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "driver.h"

void vdk_opts_init(vdk_opts *o, const vdk_kv *kv, size_t n)
{
    o->kv = kv;
    o->n = n > 64 ? 64 : n;
    o->used = 0;
}

/* Index of the last occurrence of key (later options override earlier). */
static int find(vdk_opts *o, const char *key)
{
    if (!o)
        return -1;
    int found = -1;
    for (size_t i = 0; i < o->n; i++) {
        if (o->kv[i].key && strcmp(o->kv[i].key, key) == 0) {
            o->used |= UINT64_C(1) << i;
            found = (int)i;
        }
    }
    return found;
}

int vdk_opt_str(vdk_opts *o, const char *key, const char **out)
{
    int i = find(o, key);
    if (i < 0)
        return 0;
    *out = o->kv[i].value ? o->kv[i].value : "";
    return 1;
}

int vdk_parse_size(const char *s, uint64_t *out)
{
    if (!s || !*s || !isdigit((unsigned char)*s))
        return VDK_EOPTION;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return VDK_EOPTION;
    unsigned shift = 0;
    if (*end) {
        switch (tolower((unsigned char)*end)) {
        case 'b': shift = 0; break;
        case 'k': shift = 10; break;
        case 'm': shift = 20; break;
        case 'g': shift = 30; break;
        case 't': shift = 40; break;
        case 'p': shift = 50; break;
        case 'e': shift = 60; break;
        default: return VDK_EOPTION;
        }
        end++;
        /* Accept "64K", "64KiB", "64KB". */
        if (shift && (strcasecmp(end, "ib") == 0 || strcasecmp(end, "b") == 0))
            end += strlen(end);
        if (*end)
            return VDK_EOPTION;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return VDK_ETOOBIG;
    *out = (uint64_t)v << shift;
    return 0;
}

int vdk_opt_size(vdk_opts *o, const char *key, uint64_t *out, vdk_error *err)
{
    const char *s;
    if (!vdk_opt_str(o, key, &s))
        return 0;
    if (vdk_parse_size(s, out) < 0)
        return vdk_fail(err, VDK_EOPTION, "invalid value '%s' for option '%s': expected a size",
                        s, key);
    return 1;
}

int vdk_opt_bool(vdk_opts *o, const char *key, bool *out, vdk_error *err)
{
    const char *s;
    if (!vdk_opt_str(o, key, &s))
        return 0;
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 1;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 1;
        }
    }
    return vdk_fail(err, VDK_EOPTION,
                    "invalid value '%s' for option '%s': expected 'on' or 'off'", s, key);
}

int vdk_opts_check_used(vdk_opts *o, const char *format, vdk_error *err)
{
    if (!o)
        return 0;
    for (size_t i = 0; i < o->n; i++)
        if (!(o->used & (UINT64_C(1) << i)))
            return vdk_fail(err, VDK_EOPTION, "invalid parameter '%s' for format '%s'",
                            o->kv[i].key, format);
    return 0;
}

static const char *const cache_names[] = {
    [VDK_CACHE_WRITEBACK] = "writeback", [VDK_CACHE_WRITETHROUGH] = "writethrough",
    [VDK_CACHE_NONE] = "none",           [VDK_CACHE_DIRECTSYNC] = "directsync",
    [VDK_CACHE_UNSAFE] = "unsafe",
};

int vdk_cache_mode_parse(const char *name, int *mode)
{
    for (int i = 0; i < (int)(sizeof cache_names / sizeof cache_names[0]); i++) {
        if (name && strcmp(name, cache_names[i]) == 0) {
            *mode = i;
            return 0;
        }
    }
    return VDK_EOPTION;
}

const char *vdk_cache_mode_name(int mode)
{
    if (mode < 0 || mode >= (int)(sizeof cache_names / sizeof cache_names[0]))
        return "?";
    return cache_names[mode];
}

static const char *const prealloc_names[] = {
    [VDK_PREALLOC_OFF] = "off",
    [VDK_PREALLOC_METADATA] = "metadata",
    [VDK_PREALLOC_FALLOC] = "falloc",
    [VDK_PREALLOC_FULL] = "full",
};

int vdk_prealloc_parse(const char *name, int *mode)
{
    for (int i = 0; i < (int)(sizeof prealloc_names / sizeof prealloc_names[0]); i++) {
        if (name && strcmp(name, prealloc_names[i]) == 0) {
            *mode = i;
            return 0;
        }
    }
    return VDK_EOPTION;
}

const char *vdk_prealloc_name(int mode)
{
    if (mode < 0 || mode >= (int)(sizeof prealloc_names / sizeof prealloc_names[0]))
        return "?";
    return prealloc_names[mode];
}

void vdk_info_add_str(vdk_format_info *info, const char *key, const char *val)
{
    if (info->nitems >= VDK_INFO_MAX)
        return;
    vdk_info_item *it = &info->items[info->nitems++];
    snprintf(it->key, sizeof it->key, "%s", key);
    it->type = VDK_INFO_STR;
    it->i = 0;
    snprintf(it->s, sizeof it->s, "%s", val ? val : "");
}

void vdk_info_add_int(vdk_format_info *info, const char *key, int64_t val)
{
    if (info->nitems >= VDK_INFO_MAX)
        return;
    vdk_info_item *it = &info->items[info->nitems++];
    snprintf(it->key, sizeof it->key, "%s", key);
    it->type = VDK_INFO_INT;
    it->i = val;
    it->s[0] = '\0';
}

void vdk_info_add_bool(vdk_format_info *info, const char *key, bool val)
{
    vdk_info_add_int(info, key, val);
    if (info->nitems > 0 && info->nitems <= VDK_INFO_MAX &&
        strcmp(info->items[info->nitems - 1].key, key) == 0)
        info->items[info->nitems - 1].type = VDK_INFO_BOOL;
}
