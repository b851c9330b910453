/*
 * lvdk.c - the Lua 5.4 module "vdk.core": images as userdata over core/vdk.h.
 *
 * This file owns the C half of the Lua API: vdk.core.open/create, the image
 * userdata (metatable "vdk.image") with its data and status methods, its
 * fields, and its lifecycle (__close, __gc, __tostring). The Lua half,
 * scripts/vdk/init.lua, adds what reads better in Lua (create's option
 * conversion, info, map) and is what users require as "vdk".
 *
 * Conventions (docs/lua-api.md): an operational failure returns
 * nil, message, code, where message is the core's one-line message and code
 * is vdk_errname()'s short name ("ENOENT", "CORRUPT", ...); misuse (wrong
 * argument types, negative or out-of-range offsets, a closed image) raises.
 *
 * Lifetimes: each userdata owns one reference to its C image. An image from
 * vdk.open/create is released with vdk_image_close (which flushes and reports
 * the flush error); a backing layer reached through img.backing holds its own
 * vdk_image_ref, so it stays usable after its parent is closed, and is
 * released with vdk_image_unref.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lvdk.h"
#include "vdk.h"

#define IMAGE_MT VDK_LIMAGE_MT
/* Largest single read, so a typo cannot ask for an absurd allocation. */
#define MAX_READ ((lua_Integer)1 << 30)
/* Uservalue slot where an image caches the userdata of its backing layer. */
#define UV_BACKING 1

typedef vdk_limage limage;

/* ---------------------------------------------------------------- helpers */

int vdk_lpush_error(lua_State *L, const vdk_error *err, int code)
{
    lua_pushnil(L);
    lua_pushstring(L, err && err->msg[0] ? err->msg : vdk_strerror(code));
    lua_pushstring(L, vdk_errname(code));
    return 3;
}

int vdk_lpush_status(lua_State *L, int rc, const vdk_error *err)
{
    if (rc < 0)
        return vdk_lpush_error(L, err, rc);
    lua_pushboolean(L, 1);
    return 1;
}

static limage *check_limage(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, IMAGE_MT);
}

vdk_image *vdk_lcheck_image(lua_State *L, int idx)
{
    limage *li = check_limage(L, idx);
    if (!li->img)
        luaL_error(L, "image is closed");
    return li->img;
}

vdk_image *vdk_lcheck_image_arg(lua_State *L, int idx, const char *what)
{
    limage *li = luaL_testudata(L, idx, IMAGE_MT);
    if (!li)
        luaL_error(L, "%s must be an image, not %s", what, luaL_typename(L, idx));
    if (!li->img)
        luaL_error(L, "%s is closed", what);
    return li->img;
}

/* A non-negative integer argument (offsets, lengths, sizes). */
static uint64_t check_u64(lua_State *L, int idx, const char *what)
{
    lua_Integer v = luaL_checkinteger(L, idx);
    if (v < 0)
        luaL_argerror(L, idx, lua_pushfstring(L, "%s must not be negative", what));
    return (uint64_t)v;
}

/* Raise unless [off, off+len) lies inside the image. */
static void check_range(lua_State *L, vdk_image *img, uint64_t off, uint64_t len)
{
    uint64_t size = vdk_image_size(img);
    if (off > size || len > size - off)
        luaL_error(L, "range at offset %I of %I bytes lies past the end of the image "
                      "(%I bytes)", (lua_Integer)off, (lua_Integer)len, (lua_Integer)size);
}

/* A string argument; unlike luaL_checklstring, numbers are refused (writing
 * "42" for the number 42 is never what the caller meant). */
static const char *check_data(lua_State *L, int idx, size_t *len)
{
    if (lua_type(L, idx) != LUA_TSTRING)
        luaL_typeerror(L, idx, "string");
    return lua_tolstring(L, idx, len);
}

/* Optional boolean field of an options table at idx (absent or nil: dflt). */
static int opt_bool_field(lua_State *L, int idx, const char *key, int dflt)
{
    int v = dflt;
    if (lua_isnoneornil(L, idx))
        return dflt;
    int t = lua_getfield(L, idx, key);
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "option '%s' must be a boolean, not %s", key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

/* Optional string field of an options table at idx; NULL when absent. The
 * string stays valid while the table holds it. */
static const char *opt_string_field(lua_State *L, int idx, const char *key)
{
    const char *s = NULL;
    if (lua_isnoneornil(L, idx))
        return NULL;
    int t = lua_getfield(L, idx, key);
    if (t == LUA_TSTRING)
        s = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "option '%s' must be a string, not %s", key, luaL_typename(L, -1));
    lua_pop(L, 1);
    return s;
}

/* Raise on any key of the options table at idx that is not in names. */
static void check_option_names(lua_State *L, int idx, const char *fname,
                               const char *const *names)
{
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *n = names; *n && !known; n++)
                known = strcmp(lua_tostring(L, -1), *n) == 0;
        if (!known)
            luaL_error(L, "%s: unknown option '%s'", fname, luaL_tolstring(L, -1, NULL));
    }
}

/* Cache mode from an options table (default writeback); raises on a bad name. */
static int opt_cache_mode(lua_State *L, int idx)
{
    int mode = VDK_CACHE_WRITEBACK;
    const char *name = opt_string_field(L, idx, "cache");
    if (name && vdk_cache_mode_parse(name, &mode) < 0)
        luaL_error(L, "unknown cache mode '%s' (writeback, writethrough, none, "
                      "directsync, unsafe)", name);
    return mode;
}

/* qemu's size_to_str: "64 MiB", "196 KiB", "1.5 GiB". */
static void format_size(char *buf, size_t n, uint64_t v)
{
    static const char *const suffixes[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    double x = (double)v / (1000.0 / 1024.0);
    int e = 0;
    while (x >= 1.0) {
        x /= 2.0;
        e++;
    }
    int i = e > 0 ? (e - 1) / 10 : 0;
    snprintf(buf, n, "%0.3g %sB", (double)v / (double)((uint64_t)1 << (i * 10)),
             suffixes[i]);
}

/* ---------------------------------------------------------------- userdata */

/* Push a new userdata owning img (the caller's reference moves into it). */
static void push_image(lua_State *L, vdk_image *img, int is_layer)
{
    limage *li = lua_newuserdatauv(L, sizeof *li, 1);
    li->img = img;
    li->is_layer = is_layer;
    luaL_setmetatable(L, IMAGE_MT);
}

/* Release li's reference; returns the close error (0 for layers). */
static int release_image(limage *li, vdk_error *err)
{
    vdk_image *img = li->img;
    li->img = NULL;
    if (!img)
        return 0;
    if (li->is_layer) {
        vdk_image_unref(img);
        return 0;
    }
    return vdk_image_close(img, err);
}

/* ---------------------------------------------------------------- module functions */

static const char *const open_option_names[] = {
    "format", "readonly", "cache", "force_share", "backing", "allow_data_file",
    "no_repair", "locking", "probe_raw", "check", NULL,
};

/* vdk.open(path [, opts]) -> image | nil, msg, code */
static int l_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    check_option_names(L, 2, "open", open_option_names);
    vdk_open_opts o = {.format = opt_string_field(L, 2, "format")};
    o.cache = opt_cache_mode(L, 2);
    if (!opt_bool_field(L, 2, "readonly", 1))
        o.flags |= VDK_OPEN_RDWR;
    if (opt_bool_field(L, 2, "force_share", 0))
        o.flags |= VDK_OPEN_FORCE_SHARE;
    if (!opt_bool_field(L, 2, "backing", 1))
        o.flags |= VDK_OPEN_NO_BACKING;
    if (opt_bool_field(L, 2, "allow_data_file", 0))
        o.flags |= VDK_OPEN_ALLOW_DATA_FILE;
    if (opt_bool_field(L, 2, "no_repair", 0))
        o.flags |= VDK_OPEN_NO_REPAIR;
    if (!opt_bool_field(L, 2, "locking", 1))
        o.flags |= VDK_OPEN_NO_LOCK;
    if (!opt_bool_field(L, 2, "probe_raw", 1))
        o.flags |= VDK_OPEN_NO_PROBE_RAW;
    if (opt_bool_field(L, 2, "check", 0))
        o.flags |= VDK_OPEN_CHECK;

    vdk_error err;
    vdk_error_clear(&err);
    vdk_image *img = NULL;
    int rc = vdk_image_open(path, &o, &img, &err);
    if (rc < 0)
        return vdk_lpush_error(L, &err, rc);
    push_image(L, img, 0);
    return 1;
}

/*
 * vdk.core.create(path, format, size, options) -> true | nil, msg, code.
 * size is an integer or nil (take it from the backing file); options maps
 * option names to strings (Lua's vdk.create converts booleans and numbers).
 */
static int l_create(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *format = luaL_checkstring(L, 2);
    uint64_t size = lua_isnoneornil(L, 3) ? VDK_SIZE_FROM_BACKING : check_u64(L, 3, "size");
    if (!lua_isnoneornil(L, 4))
        luaL_checktype(L, 4, LUA_TTABLE);

    /* Collect the pairs; the strings stay anchored by the table at 4. */
    vdk_kv kv[64];
    size_t n = 0;
    if (!lua_isnoneornil(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "create: option names and values must be strings");
            if (n == sizeof kv / sizeof kv[0])
                luaL_error(L, "create: too many options");
            kv[n].key = lua_tostring(L, -2);
            kv[n].value = lua_tostring(L, -1);
            n++;
            lua_pop(L, 1);
        }
    }
    vdk_error err;
    vdk_error_clear(&err);
    int rc = vdk_image_create(path, format, size, kv, n, &err);
    return vdk_lpush_status(L, rc, &err);
}

/* vdk.drivers() -> {"raw", "qcow2", ...} */
static int l_drivers(lua_State *L)
{
    const char *const *names = vdk_driver_names();
    lua_newtable(L);
    for (int i = 0; names && names[i]; i++) {
        lua_pushstring(L, names[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* vdk.can_create(format) -> boolean */
static int l_can_create(lua_State *L)
{
    lua_pushboolean(L, vdk_driver_can_create(luaL_checkstring(L, 1)));
    return 1;
}

/* ---------------------------------------------------------------- data methods */

/* img:read(offset, length) -> string | nil, msg, code */
static int m_read(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t off = check_u64(L, 2, "offset");
    uint64_t len = check_u64(L, 3, "length");
    if ((lua_Integer)len > MAX_READ)
        luaL_argerror(L, 3, "length exceeds the 1 GiB limit of a single read");
    check_range(L, img, off, len);
    if (len == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, len);
    vdk_error err;
    vdk_error_clear(&err);
    int rc = vdk_image_pread(img, p, len, off, &err);
    if (rc < 0)
        return vdk_lpush_error(L, &err, rc);
    luaL_pushresultsize(&b, len);
    return 1;
}

/* img:write(offset, data) -> true | nil, msg, code */
static int m_write(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t off = check_u64(L, 2, "offset");
    size_t len;
    const char *data = check_data(L, 3, &len);
    check_range(L, img, off, len);
    if (len == 0)
        return vdk_lpush_status(L, 0, NULL);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_image_pwrite(img, data, len, off, &err), &err);
}

/* img:write_zeroes(offset, length [, {unmap = true}]) -> true | nil, msg, code */
static int m_write_zeroes(lua_State *L)
{
    static const char *const names[] = {"unmap", NULL};
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t off = check_u64(L, 2, "offset");
    uint64_t len = check_u64(L, 3, "length");
    check_option_names(L, 4, "write_zeroes", names);
    unsigned flags = opt_bool_field(L, 4, "unmap", 0) ? VDK_ZERO_MAY_UNMAP : 0;
    check_range(L, img, off, len);
    if (len == 0)
        return vdk_lpush_status(L, 0, NULL);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_image_write_zeroes(img, len, off, flags, &err), &err);
}

/* img:discard(offset, length) -> true | nil, msg, code */
static int m_discard(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t off = check_u64(L, 2, "offset");
    uint64_t len = check_u64(L, 3, "length");
    check_range(L, img, off, len);
    if (len == 0)
        return vdk_lpush_status(L, 0, NULL);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_image_discard(img, len, off, &err), &err);
}

/* img:write_compressed(offset, data) -> true | nil, msg, code */
static int m_write_compressed(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t off = check_u64(L, 2, "offset");
    size_t len;
    const char *data = check_data(L, 3, &len);
    check_range(L, img, off, len);
    if (len == 0)
        return vdk_lpush_status(L, 0, NULL);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_image_pwrite_compressed(img, data, len, off, &err), &err);
}

/* img:flush() -> true | nil, msg, code */
static int m_flush(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_image_flush(img, &err), &err);
}

/* img:resize(size [, {shrink = true, preallocation = "falloc"}]) */
static int m_resize(lua_State *L)
{
    static const char *const names[] = {"shrink", "preallocation", NULL};
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t size = check_u64(L, 2, "size");
    check_option_names(L, 3, "resize", names);
    unsigned flags = opt_bool_field(L, 3, "shrink", 0) ? VDK_RESIZE_SHRINK : 0;
    int prealloc = VDK_PREALLOC_OFF;
    const char *pname = opt_string_field(L, 3, "preallocation");
    if (pname && vdk_prealloc_parse(pname, &prealloc) < 0)
        luaL_error(L, "unknown preallocation mode '%s' (off, metadata, falloc, full)", pname);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_image_resize(img, size, prealloc, flags, &err), &err);
}

/* img:close() -> true | nil, msg, code; closing twice is a no-op. */
static int m_close(lua_State *L)
{
    limage *li = check_limage(L, 1);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, release_image(li, &err), &err);
}

/* ---------------------------------------------------------------- status methods */

/* Fill the table on top of the stack from ext (qemu-img map's field names). */
static void set_extent_fields(lua_State *L, const vdk_extent *ext)
{
    lua_pushinteger(L, (lua_Integer)ext->start);
    lua_setfield(L, -2, "start");
    lua_pushinteger(L, (lua_Integer)ext->length);
    lua_setfield(L, -2, "length");
    lua_pushinteger(L, ext->depth);
    lua_setfield(L, -2, "depth");
    lua_pushboolean(L, (ext->flags & VDK_BS_ALLOCATED) != 0);
    lua_setfield(L, -2, "present");
    lua_pushboolean(L, (ext->flags & VDK_BS_ZERO) != 0);
    lua_setfield(L, -2, "zero");
    lua_pushboolean(L, (ext->flags & VDK_BS_DATA) != 0);
    lua_setfield(L, -2, "data");
    lua_pushboolean(L, (ext->flags & VDK_BS_COMPRESSED) != 0);
    lua_setfield(L, -2, "compressed");
    if (ext->flags & VDK_BS_OFFSET_VALID) {
        lua_pushinteger(L, (lua_Integer)ext->offset);
        lua_setfield(L, -2, "offset");
        if (ext->layer) {
            lua_pushstring(L, vdk_image_filename(ext->layer));
            lua_setfield(L, -2, "filename");
        }
    }
}

/* img:block_status(offset, length [, {top_only = true}]) -> extent | nil, msg, code */
static int m_block_status(lua_State *L)
{
    static const char *const names[] = {"top_only", NULL};
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t off = check_u64(L, 2, "offset");
    uint64_t len = check_u64(L, 3, "length");
    check_option_names(L, 4, "block_status", names);
    unsigned qflags = opt_bool_field(L, 4, "top_only", 0) ? VDK_BS_TOP_ONLY : 0;
    check_range(L, img, off, len);
    if (len == 0)
        luaL_argerror(L, 3, "length must be positive");
    vdk_extent ext;
    memset(&ext, 0, sizeof ext);
    vdk_error err;
    vdk_error_clear(&err);
    int rc = vdk_image_block_status(img, off, len, qflags, &ext, &err);
    if (rc < 0)
        return vdk_lpush_error(L, &err, rc);
    lua_createtable(L, 0, 10);
    set_extent_fields(L, &ext);
    return 1;
}

/* img:actual_size() -> bytes the file occupies on the host | nil, msg, code */
static int m_actual_size(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    int64_t n = vdk_image_actual_size(img);
    if (n < 0) {
        vdk_error err;
        vdk_error_clear(&err);
        snprintf(err.msg, sizeof err.msg, "%s: cannot stat: %s", vdk_image_filename(img),
                 vdk_strerror((int)n));
        return vdk_lpush_error(L, &err, (int)n);
    }
    lua_pushinteger(L, n);
    return 1;
}

/*
 * img:format_info() -> {dirty = bool, corrupt = bool, items = {{key, value}...}}
 * | nil, msg, code. The raw material of img:info()'s "format-specific" part:
 * items keep the driver's order; values are strings, integers or booleans.
 */
static int m_format_info(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    vdk_format_info fi;
    memset(&fi, 0, sizeof fi);
    vdk_error err;
    vdk_error_clear(&err);
    int rc = vdk_image_format_info(img, &fi, &err);
    if (rc < 0)
        return vdk_lpush_error(L, &err, rc);
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, fi.dirty);
    lua_setfield(L, -2, "dirty");
    lua_pushboolean(L, fi.corrupt);
    lua_setfield(L, -2, "corrupt");
    int n = fi.nitems < VDK_INFO_MAX ? fi.nitems : VDK_INFO_MAX;
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        const vdk_info_item *it = &fi.items[i];
        lua_createtable(L, 2, 0);
        lua_pushstring(L, it->key);
        lua_rawseti(L, -2, 1);
        if (it->type == VDK_INFO_BOOL)
            lua_pushboolean(L, it->i != 0);
        else if (it->type == VDK_INFO_INT)
            lua_pushinteger(L, it->i);
        else
            lua_pushstring(L, it->s);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "items");
    return 1;
}

/* ---------------------------------------------------------------- fields and metamethods */

static void push_opt_string(lua_State *L, const char *s)
{
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

/* img.backing: the backing layer's userdata, created once and cached. */
static void push_backing(lua_State *L, int idx, vdk_image *img)
{
    if (lua_getiuservalue(L, idx, UV_BACKING) != LUA_TNIL)
        return;
    lua_pop(L, 1);
    vdk_image *b = vdk_image_backing(img);
    if (!b) {
        lua_pushnil(L);
        return;
    }
    push_image(L, vdk_image_ref(b), 1);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, UV_BACKING);
}

/* Push field `key` of the open image at 1; returns 0 when there is none. */
static int push_field(lua_State *L, vdk_image *img, const char *key)
{
    if (strcmp(key, "format") == 0)
        lua_pushstring(L, vdk_image_format(img));
    else if (strcmp(key, "filename") == 0)
        lua_pushstring(L, vdk_image_filename(img));
    else if (strcmp(key, "size") == 0)
        lua_pushinteger(L, (lua_Integer)vdk_image_size(img));
    else if (strcmp(key, "cluster_size") == 0)
        lua_pushinteger(L, vdk_image_cluster_size(img));
    else if (strcmp(key, "readonly") == 0)
        lua_pushboolean(L, !vdk_image_is_writable(img));
    else if (strcmp(key, "backing") == 0)
        push_backing(L, 1, img);
    else if (strcmp(key, "backing_filename") == 0)
        push_opt_string(L, vdk_image_backing_name(img));
    else if (strcmp(key, "backing_format") == 0)
        push_opt_string(L, vdk_image_backing_format(img));
    else if (strcmp(key, "full_backing_filename") == 0)
        push_opt_string(L, vdk_image_backing_name(img) ? vdk_image_backing_path(img) : NULL);
    else
        return 0;
    return 1;
}

/* __index: methods first (the table is upvalue 1), then fields. */
static int image_index(lua_State *L)
{
    limage *li = check_limage(L, 1);
    if (lua_type(L, 2) != LUA_TSTRING)
        return 0;
    const char *key = lua_tostring(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (strcmp(key, "closed") == 0) {
        lua_pushboolean(L, li->img == NULL);
        return 1;
    }
    if (!li->img)
        return luaL_error(L, "image is closed");
    return push_field(L, li->img, key);
}

static int image_newindex(lua_State *L)
{
    return luaL_error(L, "vdk.image fields are read-only ('%s')", luaL_tolstring(L, 2, NULL));
}

static int image_tostring(lua_State *L)
{
    limage *li = check_limage(L, 1);
    if (!li->img) {
        lua_pushliteral(L, "vdk.image: closed");
        return 1;
    }
    char size[32];
    format_size(size, sizeof size, vdk_image_size(li->img));
    lua_pushfstring(L, "vdk.image: %s '%s' %s", vdk_image_format(li->img),
                    vdk_image_filename(li->img), size);
    return 1;
}

/* __gc: release without a word; errors have nowhere to go. */
static int image_gc(lua_State *L)
{
    limage *li = check_limage(L, 1);
    release_image(li, NULL);
    return 0;
}

/* __close: like close(), but a failed flush raises unless the scope is
 * already being left through an error (which would be lost otherwise). */
static int image_close_scope(lua_State *L)
{
    limage *li = check_limage(L, 1);
    vdk_error err;
    vdk_error_clear(&err);
    int rc = release_image(li, &err);
    if (rc < 0 && lua_isnoneornil(L, 2))
        return luaL_error(L, "%s", err.msg[0] ? err.msg : vdk_strerror(rc));
    return 0;
}

static const luaL_Reg image_methods[] = {
    {"read", m_read},
    {"write", m_write},
    {"write_zeroes", m_write_zeroes},
    {"discard", m_discard},
    {"write_compressed", m_write_compressed},
    {"flush", m_flush},
    {"resize", m_resize},
    {"close", m_close},
    {"block_status", m_block_status},
    {"actual_size", m_actual_size},
    {"format_info", m_format_info},
    {NULL, NULL},
};

static const luaL_Reg image_meta[] = {
    {"__newindex", image_newindex},
    {"__tostring", image_tostring},
    {"__gc", image_gc},
    {"__close", image_close_scope},
    {NULL, NULL},
};

static const luaL_Reg module_functions[] = {
    {"open", l_open},
    {"create", l_create},
    {"drivers", l_drivers},
    {"can_create", l_can_create},
    {NULL, NULL},
};

/* vdk.core.is_image(v) -> whether v is a vdk.image userdata */
static int l_is_image(lua_State *L)
{
    lua_pushboolean(L, luaL_testudata(L, 1, IMAGE_MT) != NULL);
    return 1;
}


int luaopen_vdk_core(lua_State *L)
{
    luaL_newlib(L, module_functions);
    lua_pushcfunction(L, l_is_image);
    lua_setfield(L, -2, "is_image");
    lua_pushliteral(L, VDK_VERSION_STRING);
    lua_setfield(L, -2, "version");

    /* The metatable; its methods table is shared as vdk.core.image_methods so
     * that init.lua can add the methods written in Lua. */
    luaL_newmetatable(L, IMAGE_MT);
    luaL_setfuncs(L, image_meta, 0);
    luaL_newlib(L, image_methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -4, "image_methods");
    lua_pushcclosure(L, image_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "vdk.image");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    vdk_ljob_open(L);
    vdk_linspect_open(L);
    vdk_lcheck_open(L);
    vdk_lsnapshot_open(L);
    return 1;
}
