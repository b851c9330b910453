/*
 * linspect.c - the C half of image inspection in Lua: img:inspect(query,
 * ...) turns the format's structured answer (vdk_image_inspect, a tree of
 * keyed tables and lists emitted through a vdk_emitter) into Lua tables,
 * and img:read_file(offset, length) / img:file_size() read the image's own
 * host file (hexdumps of host ranges). The Lua half, scripts/vdk/inspect.lua,
 * adds the methods people call (img:header(), img:explain(off), ...) and
 * scripts/vdk/inspect_format.lua prints them.
 *
 * Images come from lvdk.c; its userdata ("vdk.image") starts with the
 * vdk_image pointer (NULL once closed), which is all this file reads.
 *
 * In the launcher, this file also preloads vdk.readline (lreadline.c), which
 * the shell uses; the stand-alone Lua module has it as lua/vdk/readline.so.
 */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lvdk.h"
#include "vdk.h"

#define MAX_DEPTH 32
#define MAX_ARGS 8
#define MAX_FILE_READ ((lua_Integer)64 << 20)


/* The emitter: a stack of open tables on the Lua stack, one frame each. */
typedef struct frame {
    int list;          /* values are appended */
    lua_Integer n;     /* elements appended so far */
    char key[64];      /* the key this table goes under in its parent */
} frame;

typedef struct lemitter {
    vdk_emitter e;
    lua_State *L;
    int depth; /* frames in use; frame 0 is the result table */
    int overflow; /* opens past MAX_DEPTH, ignored with their contents */
    frame f[MAX_DEPTH];
} lemitter;

/* Store the value on top of the stack into the open table under key. */
static void store(lemitter *le, const char *key)
{
    lua_State *L = le->L;
    frame *f = &le->f[le->depth - 1];
    if (f->list)
        lua_rawseti(L, -2, ++f->n);
    else
        lua_setfield(L, -2, key ? key : "?");
}

static void e_open(vdk_emitter *e, const char *key, int list)
{
    lemitter *le = (lemitter *)e;
    if (le->overflow || le->depth >= MAX_DEPTH || !lua_checkstack(le->L, 4)) {
        le->overflow++;
        return;
    }
    frame *f = &le->f[le->depth++];
    f->list = list;
    f->n = 0;
    snprintf(f->key, sizeof f->key, "%s", key ? key : "?");
    lua_newtable(le->L);
}

static void e_close(vdk_emitter *e)
{
    lemitter *le = (lemitter *)e;
    if (le->overflow) {
        le->overflow--;
        return;
    }
    if (le->depth <= 1)
        return; /* the result table stays */
    le->depth--;
    store(le, le->f[le->depth].key);
}

static void e_integer(vdk_emitter *e, const char *key, int64_t v)
{
    lemitter *le = (lemitter *)e;
    if (le->overflow)
        return;
    lua_pushinteger(le->L, (lua_Integer)v);
    store(le, key);
}

static void e_string(vdk_emitter *e, const char *key, const char *s, size_t len)
{
    lemitter *le = (lemitter *)e;
    if (le->overflow)
        return;
    lua_pushlstring(le->L, s, len);
    store(le, key);
}

static void e_boolean(vdk_emitter *e, const char *key, int v)
{
    lemitter *le = (lemitter *)e;
    if (le->overflow)
        return;
    lua_pushboolean(le->L, v);
    store(le, key);
}

/* img:inspect(query, ...) -> table | nil, msg, code. Extra arguments are
 * integers (offsets, indexes); nil stands for "the default". */
static int m_inspect(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    const char *query = luaL_checkstring(L, 2);
    int64_t args[MAX_ARGS];
    int top = lua_gettop(L);
    size_t nargs = 0;
    if (top - 2 > MAX_ARGS)
        return luaL_error(L, "inspect: at most %d arguments", MAX_ARGS);
    for (int i = 3; i <= top; i++)
        args[nargs++] = lua_isnil(L, i) ? -1 : (int64_t)luaL_checkinteger(L, i);
    /* Trailing defaults are the same as absent arguments. */
    while (nargs > 0 && lua_isnil(L, 2 + (int)nargs))
        nargs--;
    lemitter le = {.e = {e_open, e_close, e_integer, e_string, e_boolean, NULL}, .L = L};
    le.f[0].list = 0;
    le.depth = 1;
    lua_newtable(L);
    vdk_error err;
    vdk_error_clear(&err);
    int r = vdk_image_inspect(img, query, args, nargs, &le.e, &err);
    if (r < 0)
        return vdk_lpush_error(L, &err, r);
    lua_settop(L, top + 1);
    return 1;
}

/* img:read_file(offset, length) -> string (short at the end of the file) |
 * nil, msg, code: bytes of the image's own host file. */
static int m_read_file(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    lua_Integer off = luaL_checkinteger(L, 2), len = luaL_checkinteger(L, 3);
    luaL_argcheck(L, off >= 0, 2, "offset must not be negative");
    luaL_argcheck(L, len >= 0 && len <= MAX_FILE_READ, 3, "length must be 0..64 MiB");
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)len);
    vdk_error err;
    vdk_error_clear(&err);
    int64_t n = len ? vdk_image_pread_file(img, p, (size_t)len, (uint64_t)off, &err) : 0;
    if (n < 0)
        return vdk_lpush_error(L, &err, (int)n);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* img:file_size() -> bytes of the image's own host file | nil, msg, code */
static int m_file_size(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    vdk_error err;
    vdk_error_clear(&err);
    int64_t n = vdk_image_file_size(img, &err);
    if (n < 0)
        return vdk_lpush_error(L, &err, (int)n);
    lua_pushinteger(L, n);
    return 1;
}

#ifdef VDK_EMBED_READLINE
int luaopen_vdk_readline(lua_State *L);
#endif

/* Add the methods to the image methods table (vdk.core.image_methods) of the
 * module table at the top of the stack. */
int vdk_linspect_open(lua_State *L)
{
    lua_getfield(L, -1, "image_methods");
    lua_pushcfunction(L, m_inspect);
    lua_setfield(L, -2, "inspect");
    lua_pushcfunction(L, m_read_file);
    lua_setfield(L, -2, "read_file");
    lua_pushcfunction(L, m_file_size);
    lua_setfield(L, -2, "file_size");
    /* Completion (the shell) finds the methods through the metatable. */
    luaL_getmetatable(L, VDK_LIMAGE_MT);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "__methods");
    lua_pop(L, 2);
#ifdef VDK_EMBED_READLINE
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_vdk_readline);
    lua_setfield(L, -2, "vdk.readline");
    lua_pop(L, 1);
#endif
    return 0;
}
