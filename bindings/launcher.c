/*
 * launcher.c - the `vdk` command: an embedded Lua 5.4 running scripts/vdk/cli.lua.
 *
 * This file owns start-up only: it creates a Lua state, makes the statically
 * linked module available as package.preload["vdk.core"], puts the vdk
 * scripts first on package.path, then calls require("vdk.cli").main(args)
 * and exits with the status it returns. Everything a user sees (commands,
 * options, messages) lives in the Lua scripts.
 *
 * Where the scripts are, in order:
 *   1. $VDK_SCRIPT_DIR, when set;
 *   2. the installed directory (VDK_INSTALL_SCRIPT_DIR) when this binary runs
 *      from the install bindir (VDK_INSTALL_BINDIR);
 *   3. the source tree's scripts/ (VDK_SOURCE_SCRIPT_DIR) when it has
 *      vdk/cli.lua (a binary run from its build tree);
 *   4. the installed directory, when it has vdk/cli.lua;
 *   5. <dir of the binary>/../share/lua/5.4 (a relocated install).
 * A Lua error that escapes the scripts prints "vdk: <message>" (with a
 * traceback when VDK_DEBUG is set) and exits 1.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#ifndef VDK_SOURCE_SCRIPT_DIR
#define VDK_SOURCE_SCRIPT_DIR "scripts"
#endif
#ifndef VDK_INSTALL_SCRIPT_DIR
#define VDK_INSTALL_SCRIPT_DIR "/usr/local/share/lua/5.4"
#endif
#ifndef VDK_INSTALL_BINDIR
#define VDK_INSTALL_BINDIR "/usr/local/bin"
#endif

int luaopen_vdk_core(lua_State *L);

static int file_exists(const char *dir, const char *rel)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, rel) >= (int)sizeof path)
        return 0;
    return access(path, R_OK) == 0;
}

/* The real directory of this executable, or "" when unknown. */
static void exe_dir(char *buf, size_t n)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    buf[0] = '\0';
    if (len <= 0)
        return;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return;
    *slash = '\0';
    snprintf(buf, n, "%s", exe);
}

/* Whether two directory names are the same directory. */
static int same_dir(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (!realpath(a, ra) || !realpath(b, rb))
        return 0;
    return strcmp(ra, rb) == 0;
}

/* Pick the scripts directory (see the head comment); writes it to buf. */
static void find_script_dir(char *buf, size_t n)
{
    const char *env = getenv("VDK_SCRIPT_DIR");
    char dir[PATH_MAX];
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return;
    }
    exe_dir(dir, sizeof dir);
    int installed = dir[0] && same_dir(dir, VDK_INSTALL_BINDIR);
    if (!installed && file_exists(VDK_SOURCE_SCRIPT_DIR, "vdk/cli.lua")) {
        snprintf(buf, n, "%s", VDK_SOURCE_SCRIPT_DIR);
        return;
    }
    if (installed || file_exists(VDK_INSTALL_SCRIPT_DIR, "vdk/cli.lua") || !dir[0]) {
        snprintf(buf, n, "%s", VDK_INSTALL_SCRIPT_DIR);
        return;
    }
    int w = snprintf(buf, n, "%s/../share/lua/5.4", dir);
    if (w < 0 || (size_t)w >= n)
        snprintf(buf, n, "%s", VDK_INSTALL_SCRIPT_DIR); /* path too long: the default */
}

/* package.path = "<dir>/?.lua;<dir>/?/init.lua;" .. package.path */
static void set_package_path(lua_State *L, const char *dir)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);

    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_vdk_core);
    lua_setfield(L, -2, "vdk.core");
    lua_pop(L, 2);
}

/* Message handler: the error as text, plus a traceback under VDK_DEBUG. */
static int message_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    const char *debug = getenv("VDK_DEBUG");
    if (debug && *debug)
        luaL_traceback(L, L, msg, 1);
    else
        lua_pushstring(L, msg);
    return 1;
}

/* Runs in protected mode: require("vdk.cli").main(args); returns its status. */
static int run_cli(lua_State *L)
{
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    luaL_openlibs(L);
    char dir[PATH_MAX];
    find_script_dir(dir, sizeof dir);
    set_package_path(L, dir);

    lua_getglobal(L, "require");
    lua_pushliteral(L, "vdk.cli");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "main");
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_call(L, 1, 1);
    /* An integer is the exit status; nil or true mean 0, false means 1. */
    int t = lua_type(L, -1);
    lua_Integer status = t == LUA_TNUMBER ? lua_tointeger(L, -1)
                         : t == LUA_TBOOLEAN && !lua_toboolean(L, -1) ? 1 : 0;
    lua_pushinteger(L, status);
    return 1;
}

int main(int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "vdk: cannot create the Lua state: out of memory\n");
        return 1;
    }
    lua_pushcfunction(L, message_handler);
    lua_pushcfunction(L, run_cli);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    int status;
    if (lua_pcall(L, 2, 1, 1) != LUA_OK) {
        fprintf(stderr, "vdk: %s\n", lua_tostring(L, -1));
        status = 1;
    } else {
        status = (int)lua_tointeger(L, -1);
    }
    fflush(stdout);
    lua_close(L);
    return status;
}
