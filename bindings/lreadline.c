/*
 * lreadline.c - the Lua module "vdk.readline": line editing, history and
 * tab completion for the vdk shell (scripts/vdk/shell.lua), over GNU
 * readline. It owns nothing but the binding; the shell decides what to
 * complete and where the history lives.
 *
 *   rl.readline(prompt)          -> line, or nil at end of input (Ctrl-D)
 *   rl.add_history(line)         add a line to the in-memory history
 *   rl.read_history(path)        -> true | nil, msg   load a history file
 *   rl.append_history(n, path)   -> true | nil, msg   append the last n lines
 *   rl.write_history(path)       -> true | nil, msg   write the whole history
 *   rl.truncate_history(path, n) -> true | nil, msg   keep the last n lines
 *   rl.set_completer(fn)         fn(word, line, start) -> list of candidates
 *                                (each replaces word); nil: no completion
 *   rl.history_length()          -> lines in memory
 *
 * Completion calls back into Lua from inside readline: the Lua state is the
 * one that called rl.readline, kept for the duration of that call; an error
 * in the completer yields no candidates rather than unwinding through
 * readline. Words break at spaces and operators but not at '.' or ':', so
 * "vdk.op" and "img:ins" reach the completer whole.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include <readline/history.h>
#include <readline/readline.h>

/* Registry key of the completer function. */
static const char COMPLETER_KEY = 'c';
/* The state inside rl.readline (readline is not reentrant anyway). */
static lua_State *active_L;

static char **candidates;
static size_t ncandidates, next_candidate;

static void free_candidates(void)
{
    for (size_t i = next_candidate; i < ncandidates; i++)
        free(candidates[i]);
    free(candidates);
    candidates = NULL;
    ncandidates = next_candidate = 0;
}

/* Protected part of the completion: call the completer, copy its strings. */
static int collect(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &COMPLETER_KEY);
    lua_pushvalue(L, 1); /* word */
    lua_pushstring(L, rl_line_buffer);
    lua_pushvalue(L, 2); /* start */
    lua_call(L, 3, 1);
    if (!lua_istable(L, -1))
        return 0;
    lua_Integer n = luaL_len(L, -1);
    if (n <= 0 || n > 10000)
        return 0;
    candidates = calloc((size_t)n, sizeof *candidates);
    if (!candidates)
        return 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        const char *s = lua_tostring(L, -1);
        if (s && (candidates[ncandidates] = strdup(s)))
            ncandidates++;
        lua_pop(L, 1);
    }
    return 0;
}

/* rl_completion_matches generator: hands out the collected candidates. */
static char *generator(const char *text, int state)
{
    (void)text;
    (void)state;
    if (next_candidate < ncandidates)
        return candidates[next_candidate++];
    free_candidates();
    return NULL;
}

static char **attempt(const char *text, int start, int end)
{
    (void)end;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    rl_completion_append_character = '\0'; /* reset by readline for each attempt */
    lua_State *L = active_L;
    if (!L)
        return NULL;
    free_candidates();
    lua_pushcfunction(L, collect);
    lua_pushstring(L, text);
    lua_pushinteger(L, start + 1);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK)
        lua_pop(L, 1);
    if (ncandidates == 0) {
        free_candidates();
        return NULL;
    }
    return rl_completion_matches(text, generator);
}

static int l_readline(lua_State *L)
{
    const char *prompt = luaL_optstring(L, 1, "> ");
    lua_rawgetp(L, LUA_REGISTRYINDEX, &COMPLETER_KEY);
    int has_completer = !lua_isnil(L, -1);
    lua_pop(L, 1);
    rl_attempted_completion_function = has_completer ? attempt : NULL;
    rl_completion_append_character = '\0';
    lua_State *saved = active_L;
    active_L = L;
    char *line = readline(prompt);
    active_L = saved;
    free_candidates();
    if (!line) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, line);
    free(line);
    return 1;
}

static int l_add_history(lua_State *L)
{
    add_history(luaL_checkstring(L, 1));
    return 0;
}

/* true, or nil and a message for a failed history file operation. */
static int file_result(lua_State *L, int rc, const char *path)
{
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", path, strerror(rc));
    return 2;
}

static int l_read_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    return file_result(L, read_history(path), path);
}

static int l_write_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    return file_result(L, write_history(path), path);
}

static int l_append_history(lua_State *L)
{
    int n = (int)luaL_checkinteger(L, 1);
    const char *path = luaL_checkstring(L, 2);
    return file_result(L, append_history(n, path), path);
}

static int l_truncate_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int n = (int)luaL_checkinteger(L, 2);
    return file_result(L, history_truncate_file(path, n), path);
}

static int l_history_length(lua_State *L)
{
    lua_pushinteger(L, history_length);
    return 1;
}

static int l_set_completer(lua_State *L)
{
    if (!lua_isnoneornil(L, 1))
        luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &COMPLETER_KEY);
    return 0;
}

static const luaL_Reg functions[] = {
    {"readline", l_readline},
    {"add_history", l_add_history},
    {"read_history", l_read_history},
    {"write_history", l_write_history},
    {"append_history", l_append_history},
    {"truncate_history", l_truncate_history},
    {"history_length", l_history_length},
    {"set_completer", l_set_completer},
    {NULL, NULL},
};

int luaopen_vdk_readline(lua_State *L)
{
    /* Lua-friendly word breaks: keep '.' and ':' inside words. */
    rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(+-*/%^~#,[]})";
    rl_readline_name = "vdk";
    using_history();
    luaL_newlib(L, functions);
    lua_pushstring(L, rl_library_version ? rl_library_version : "?");
    lua_setfield(L, -2, "version");
    return 1;
}
