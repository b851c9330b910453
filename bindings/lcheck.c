/*
 * lcheck.c - img:check{...}: the Lua face of vdk_image_check (core/vdk.h).
 *
 *   local rep = img:check{repair = "leaks" | "all", dry_run = true}
 *
 * returns a table with qemu-img check's fields under their JSON names
 * ("check-errors", "corruptions", "leaks", "corruptions-fixed",
 * "leaks-fixed", "image-end-offset", "total-clusters", "allocated-clusters",
 * "fragmented-clusters", "compressed-clusters", "filename", "format"), plus
 * mode ("check", "leaks", "all"), dry_run, rebuild, problems (a list of
 * {kind, fix, offset, count, message}) and problems_dropped. A check that
 * could not complete returns nil, message, code, and the partial report as
 * a fourth value. Repair needs an image opened for writing (vdk.open with
 * readonly = false, check = true).
 */
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lvdk.h"
#include "vdk.h"

static void set_int(lua_State *L, const char *key, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, key);
}

static void push_problems(lua_State *L, const vdk_check_report *rep)
{
    lua_createtable(L, (int)rep->nproblems, 0);
    for (size_t i = 0; i < rep->nproblems; i++) {
        const vdk_check_problem *p = &rep->problems[i];
        lua_createtable(L, 0, 5);
        lua_pushstring(L, vdk_check_kind_name(p->kind));
        lua_setfield(L, -2, "kind");
        lua_pushstring(L, vdk_check_fix_name(p->fix));
        lua_setfield(L, -2, "fix");
        set_int(L, "offset", p->offset);
        set_int(L, "count", p->count);
        lua_pushstring(L, p->message);
        lua_setfield(L, -2, "message");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "problems");
}

static void push_report(lua_State *L, const vdk_check_report *rep)
{
    lua_createtable(L, 0, 20);
    lua_pushstring(L, rep->filename ? rep->filename : "");
    lua_setfield(L, -2, "filename");
    lua_pushstring(L, rep->format ? rep->format : "");
    lua_setfield(L, -2, "format");
    set_int(L, "check-errors", rep->check_errors);
    set_int(L, "corruptions", rep->corruptions);
    set_int(L, "leaks", rep->leaks);
    set_int(L, "corruptions-fixed", rep->corruptions_fixed);
    set_int(L, "leaks-fixed", rep->leaks_fixed);
    set_int(L, "image-end-offset", rep->image_end_offset);
    set_int(L, "total-clusters", rep->total_clusters);
    set_int(L, "allocated-clusters", rep->allocated_clusters);
    set_int(L, "fragmented-clusters", rep->fragmented_clusters);
    set_int(L, "compressed-clusters", rep->compressed_clusters);
    const char *mode = rep->mode & VDK_CHECK_FIX_ERRORS  ? "all"
                       : rep->mode & VDK_CHECK_FIX_LEAKS ? "leaks"
                                                         : "check";
    lua_pushstring(L, mode);
    lua_setfield(L, -2, "mode");
    lua_pushboolean(L, (rep->mode & VDK_CHECK_DRY_RUN) != 0);
    lua_setfield(L, -2, "dry_run");
    lua_pushboolean(L, rep->rebuild);
    lua_setfield(L, -2, "rebuild");
    push_problems(L, rep);
    set_int(L, "problems_dropped", rep->problems_dropped);
}

/* The mode from the options table at idx. */
static unsigned check_mode(lua_State *L, int idx)
{
    unsigned mode = 0;
    if (lua_isnoneornil(L, idx))
        return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
        if (strcmp(k, "repair") != 0 && strcmp(k, "dry_run") != 0)
            luaL_error(L, "check: unknown option '%s' (repair, dry_run)", k);
        lua_pop(L, 1);
    }
    if (lua_getfield(L, idx, "repair") != LUA_TNIL) {
        const char *r = luaL_checkstring(L, -1);
        if (strcmp(r, "leaks") == 0)
            mode |= VDK_CHECK_FIX_LEAKS;
        else if (strcmp(r, "all") == 0)
            mode |= VDK_CHECK_FIX_LEAKS | VDK_CHECK_FIX_ERRORS;
        else
            luaL_error(L, "check: repair must be \"leaks\" or \"all\", not \"%s\"", r);
    }
    lua_getfield(L, idx, "dry_run");
    if (lua_toboolean(L, -1))
        mode |= VDK_CHECK_DRY_RUN;
    lua_pop(L, 2);
    return mode;
}

/* img:check([opts]) -> report | nil, msg, code, partial report */
static int m_check(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    unsigned mode = check_mode(L, 2);
    vdk_check_report rep;
    vdk_error err;
    vdk_error_clear(&err);
    int r = vdk_image_check(img, mode, &rep, &err);
    if (r < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err.msg[0] ? err.msg : vdk_strerror(r));
        lua_pushstring(L, vdk_errname(r));
        push_report(L, &rep);
        vdk_check_report_free(&rep);
        return 4;
    }
    push_report(L, &rep);
    vdk_check_report_free(&rep);
    return 1;
}

/* Add check to the image methods of the module table at the top of the stack. */
int vdk_lcheck_open(lua_State *L)
{
    lua_getfield(L, -1, "image_methods");
    lua_pushcfunction(L, m_check);
    lua_setfield(L, -2, "check");
    lua_pop(L, 1);
    return 0;
}
