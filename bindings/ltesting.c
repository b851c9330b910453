/*
 * ltesting.c - require "vdk.testing": fault injection for specs (built
 * only with VDK_TESTING).
 *
 *   local testing = require "vdk.testing"
 *   local rule = testing.fault{path = "/tmp/x/dst.raw", op = "write", nth = 3,
 *                              errno = "ENOSPC", persistent = false, open = 2}
 *   ... open and use images: files opened at that path fail as told ...
 *   rule:opens()    --> how many opens the rule has wrapped
 *   rule:remove()   -- or testing.clear() for every rule
 *
 * A rule matches files opened by path: `path` must equal the path given to
 * the open, or `contains` must be a substring of it (a convert writes its
 * new target under a temporary name that contains the final one); with
 * `open = N` only the Nth matching open is wrapped (vdk.create opens the
 * new file twice: to create it, then to use it). Matching files are wrapped
 * in fault files (core/file-test.h) through the file layer's open hook,
 * installed while any rule exists; each wrapped file counts its own
 * operations, so `nth` counts from that open. The rule keeps no reference
 * on the files (an open file holds its image lock). Rules are process wide
 * and guarded by a mutex: opens may happen on any thread.
 *
 * Crash recording (core/file-test.h), for crash-consistency specs:
 *
 *   local rec = testing.record{path = "/tmp/x/a.qcow2"}  -- or contains = "..."
 *   ... open the image at that path and work on it ...
 *   rec:stop()               -- later opens are no longer recorded
 *   rec:count()              --> entries logged (writes, zeroings, truncates, flushes)
 *   rec:entry(i)             --> {kind = "write"|"zero"|"truncate"|"flush", offset, length}
 *   rec:apply(path, {i, ...}) -- apply those entries (1-based, in that order) to the
 *                               file at path, a copy of the file as recording began
 *
 * Every prefix of the log is a state a crash can leave; so is a prefix up to
 * a flush plus any subset, in any order, of the entries before the next one.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "file-test.h"
#include "file.h"

#define RULE_MT "vdk.testing.rule"

typedef struct rule {
    char *path;      /* exact path, or NULL */
    char *contains;  /* substring, or NULL */
    struct vdk_fault_spec spec;
    uint64_t open;   /* wrap only the Nth matching open; 0: every one */
    uint64_t opens;  /* matching opens seen */
    uint64_t wrapped;
    int refs;        /* the list and the userdata */
    bool listed;
    struct rule *next;
} rule;

static pthread_mutex_t rules_lock = PTHREAD_MUTEX_INITIALIZER;
static rule *rules;

static void rule_unref_locked(rule *r)
{
    if (--r->refs > 0)
        return;
    free(r->path);
    free(r->contains);
    free(r);
}

static bool matches(const rule *r, const char *path)
{
    if (r->path && strcmp(r->path, path) == 0)
        return true;
    return r->contains && strstr(path, r->contains) != NULL;
}

#define RECORDER_MT "vdk.testing.recorder"

/* A crash recorder: files opened at its path log into its log. */
typedef struct recorder {
    char *path, *contains;
    vdk_record *log;
    bool listed;
    struct recorder *next;
} recorder;

static recorder *recorders;

static vdk_file *record_files(vdk_file *f, const char *path)
{
    for (recorder *r = recorders; r; r = r->next) {
        if (!((r->path && strcmp(r->path, path) == 0) ||
              (r->contains && strstr(path, r->contains))))
            continue;
        vdk_file *w = vdk_file_record_new(f, r->log);
        if (w) {
            vdk_file_unref(f);
            f = w;
        }
    }
    return f;
}

static vdk_file *hook(vdk_file *f, const char *path, void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&rules_lock);
    f = record_files(f, path);
    for (rule *r = rules; r; r = r->next) {
        if (!matches(r, path))
            continue;
        r->opens++;
        if (r->open && r->opens != r->open)
            continue;
        vdk_file *w = vdk_file_fault_new(f, &r->spec);
        if (!w)
            continue;
        vdk_file_unref(f);
        f = w;
        r->wrapped++;
    }
    pthread_mutex_unlock(&rules_lock);
    return f;
}

static void update_hook_locked(void)
{
    vdk_file_set_open_hook(rules || recorders ? hook : NULL, NULL);
}

static void unlist_locked(rule *r)
{
    for (rule **p = &rules; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            r->listed = false;
            rule_unref_locked(r);
            break;
        }
    }
    update_hook_locked();
}

/* ---------------------------------------------------------------- parsing */

static int parse_op(lua_State *L, const char *op)
{
    static const char *const names[] = {"read", "write", "flush", "any", NULL};
    static const int ops[] = {VDK_FAULT_READ, VDK_FAULT_WRITE, VDK_FAULT_FLUSH, VDK_FAULT_ANY};
    for (int i = 0; names[i]; i++)
        if (strcmp(op, names[i]) == 0)
            return ops[i];
    return luaL_error(L, "testing.fault: unknown op '%s' (read, write, flush, any)", op);
}

static int parse_errno(lua_State *L, int idx)
{
    static const struct {
        const char *name;
        int value;
    } names[] = {
        {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS},
        {"EPERM", EPERM}, {"EACCES", EACCES}, {"EINVAL", EINVAL}, {"ENOMEM", ENOMEM},
        {"EAGAIN", EAGAIN}, {"EFBIG", EFBIG}, {"ENXIO", ENXIO}, {"ETIMEDOUT", ETIMEDOUT},
        {"ECONNRESET", ECONNRESET}, {"EPIPE", EPIPE}, {"ENOTSUP", ENOTSUP},
    };
    if (lua_isnoneornil(L, idx))
        return -EIO;
    if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        return (int)(v > 0 ? -v : v);
    }
    const char *s = luaL_checkstring(L, idx);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0)
            return -names[i].value;
    return luaL_error(L, "testing.fault: unknown errno '%s'", s);
}

static char *opt_dup(lua_State *L, const char *key)
{
    char *v = NULL;
    if (lua_getfield(L, 1, key) != LUA_TNIL)
        v = strdup(luaL_checkstring(L, -1));
    lua_pop(L, 1);
    return v;
}

/* ---------------------------------------------------------------- functions */

/* testing.fault{path | contains, op, nth, errno, persistent} -> rule */
static int t_fault(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct vdk_fault_spec spec = {0};
    lua_getfield(L, 1, "op");
    spec.op = parse_op(L, luaL_optstring(L, -1, "any"));
    lua_getfield(L, 1, "nth");
    lua_Integer nth = luaL_optinteger(L, -1, 1);
    if (nth < 0)
        return luaL_error(L, "testing.fault: nth must not be negative");
    spec.nth = (uint64_t)nth;
    lua_getfield(L, 1, "errno");
    spec.error = parse_errno(L, lua_gettop(L));
    lua_getfield(L, 1, "persistent");
    spec.persistent = lua_toboolean(L, -1);
    lua_getfield(L, 1, "open");
    lua_Integer open = luaL_optinteger(L, -1, 0);
    lua_pop(L, 5);
    rule **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = NULL;
    luaL_setmetatable(L, RULE_MT);
    rule *r = calloc(1, sizeof *r);
    if (!r)
        return luaL_error(L, "out of memory");
    *ud = r;
    r->refs = 1;
    r->spec = spec;
    r->open = open > 0 ? (uint64_t)open : 0;
    r->path = opt_dup(L, "path");
    r->contains = opt_dup(L, "contains");
    if (!r->path && !r->contains)
        return luaL_error(L, "testing.fault: give 'path' or 'contains'");
    pthread_mutex_lock(&rules_lock);
    r->refs++;
    r->listed = true;
    r->next = rules;
    rules = r;
    update_hook_locked();
    pthread_mutex_unlock(&rules_lock);
    return 1;
}

static rule *check_rule(lua_State *L)
{
    rule **ud = luaL_checkudata(L, 1, RULE_MT);
    if (!*ud)
        luaL_error(L, "rule is released");
    return *ud;
}

/* rule:opens() -> matching opens seen, files wrapped */
static int r_opens(lua_State *L)
{
    rule *r = check_rule(L);
    pthread_mutex_lock(&rules_lock);
    lua_Integer seen = (lua_Integer)r->opens, wrapped = (lua_Integer)r->wrapped;
    pthread_mutex_unlock(&rules_lock);
    lua_pushinteger(L, seen);
    lua_pushinteger(L, wrapped);
    return 2;
}

/* rule:remove(): stop matching new opens (files already wrapped keep failing). */
static int r_remove(lua_State *L)
{
    rule *r = check_rule(L);
    pthread_mutex_lock(&rules_lock);
    if (r->listed)
        unlist_locked(r);
    pthread_mutex_unlock(&rules_lock);
    return 0;
}

static int r_gc(lua_State *L)
{
    rule **ud = luaL_checkudata(L, 1, RULE_MT);
    if (*ud) {
        pthread_mutex_lock(&rules_lock);
        rule_unref_locked(*ud);
        pthread_mutex_unlock(&rules_lock);
        *ud = NULL;
    }
    return 0;
}

/* testing.clear(): remove every rule. */
static int t_clear(lua_State *L)
{
    (void)L;
    pthread_mutex_lock(&rules_lock);
    while (rules)
        unlist_locked(rules);
    pthread_mutex_unlock(&rules_lock);
    return 0;
}

/* testing.min_direct_alignment(n): later O_DIRECT opens align to at least n. */
static int t_min_align(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    if (n < 0 || vdk_file_test_min_direct_alignment((size_t)n) < 0)
        return luaL_error(L, "testing.min_direct_alignment: bad alignment %d", (int)n);
    return 0;
}

/* ---------------------------------------------------------------- crash recording */

static recorder *check_recorder(lua_State *L)
{
    recorder **ud = luaL_checkudata(L, 1, RECORDER_MT);
    if (!*ud)
        luaL_error(L, "recorder is released");
    return *ud;
}

static void recorder_unlist_locked(recorder *r)
{
    for (recorder **p = &recorders; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            r->listed = false;
            break;
        }
    }
    update_hook_locked();
}

/* testing.record{path | contains} -> recorder */
static int t_record(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    recorder **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = NULL;
    luaL_setmetatable(L, RECORDER_MT);
    recorder *r = calloc(1, sizeof *r);
    if (!r || !(r->log = vdk_record_new())) {
        free(r);
        return luaL_error(L, "out of memory");
    }
    *ud = r;
    r->path = opt_dup(L, "path");
    r->contains = opt_dup(L, "contains");
    if (!r->path && !r->contains)
        return luaL_error(L, "testing.record: give 'path' or 'contains'");
    pthread_mutex_lock(&rules_lock);
    r->listed = true;
    r->next = recorders;
    recorders = r;
    update_hook_locked();
    pthread_mutex_unlock(&rules_lock);
    return 1;
}

/* rec:stop(): later opens are not recorded (open files still log). */
static int rec_stop(lua_State *L)
{
    recorder *r = check_recorder(L);
    pthread_mutex_lock(&rules_lock);
    if (r->listed)
        recorder_unlist_locked(r);
    pthread_mutex_unlock(&rules_lock);
    return 0;
}

static int rec_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)vdk_record_count(check_recorder(L)->log));
    return 1;
}

/* rec:entry(i) -> {kind, offset, length} (1-based), or nil past the end */
static int rec_entry(lua_State *L)
{
    static const char *const kinds[] = {"?", "write", "zero", "truncate", "flush"};
    recorder *r = check_recorder(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    struct vdk_record_entry e;
    if (i < 1 || vdk_record_entry(r->log, (size_t)(i - 1), &e) < 0)
        return 0;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, e.kind >= 1 && e.kind <= 4 ? kinds[e.kind] : "?");
    lua_setfield(L, -2, "kind");
    lua_pushinteger(L, (lua_Integer)e.off);
    lua_setfield(L, -2, "offset");
    lua_pushinteger(L, (lua_Integer)e.len);
    lua_setfield(L, -2, "length");
    return 1;
}

/* rec:apply(path, {i, ...}) -> true | nil, msg: apply entries to the file at path. */
static int rec_apply(lua_State *L)
{
    recorder *r = check_recorder(L);
    const char *path = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    size_t n = (size_t)luaL_len(L, 3), total = vdk_record_count(r->log);
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    if (!idx)
        return luaL_error(L, "out of memory");
    for (size_t k = 0; k < n; k++) {
        lua_geti(L, 3, (lua_Integer)k + 1);
        lua_Integer i = lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (i < 1 || (size_t)i > total) {
            free(idx);
            return luaL_error(L, "rec:apply: entry %d out of range 1..%d", (int)i, (int)total);
        }
        idx[k] = (size_t)(i - 1);
    }
    vdk_error err;
    vdk_error_clear(&err);
    vdk_file *f = NULL;
    int rc = vdk_file_open(path, VDK_FILE_RDWR | VDK_FILE_NOLOCK, VDK_CACHE_UNSAFE, &f, &err);
    if (rc == 0) {
        rc = vdk_record_apply(r->log, f, idx, n, &err);
        int fr = vdk_file_flush(f, rc == 0 ? &err : NULL);
        rc = rc < 0 ? rc : fr;
        vdk_file_unref(f);
    }
    free(idx);
    if (rc < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err.msg[0] ? err.msg : vdk_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct kept_log {
    vdk_record *log;
    struct kept_log *next;
} kept_log;
static kept_log *kept_logs; /* guarded by rules_lock */

static int rec_gc(lua_State *L)
{
    recorder **ud = luaL_checkudata(L, 1, RECORDER_MT);
    recorder *r = *ud;
    if (!r)
        return 0;
    pthread_mutex_lock(&rules_lock);
    if (r->listed)
        recorder_unlist_locked(r);
    /* Files still open may keep logging into the log: it is never freed,
     * only kept reachable (a test process records little). */
    kept_log *k = malloc(sizeof *k);
    if (k) {
        k->log = r->log;
        k->next = kept_logs;
        kept_logs = k;
    }
    pthread_mutex_unlock(&rules_lock);
    free(r->path);
    free(r->contains);
    free(r);
    *ud = NULL;
    return 0;
}

static void recorder_metatable(lua_State *L)
{
    static const luaL_Reg methods[] = {{"stop", rec_stop},   {"count", rec_count},
                                       {"entry", rec_entry}, {"apply", rec_apply},
                                       {NULL, NULL}};
    if (luaL_newmetatable(L, RECORDER_MT)) {
        lua_pushcfunction(L, rec_gc);
        lua_setfield(L, -2, "__gc");
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

int luaopen_vdk_testing(lua_State *L)
{
    static const luaL_Reg rule_methods[] = {
        {"opens", r_opens}, {"remove", r_remove}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {
        {"fault", t_fault},
        {"clear", t_clear},
        {"min_direct_alignment", t_min_align},
        {"record", t_record},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, RULE_MT)) {
        lua_pushcfunction(L, r_gc);
        lua_setfield(L, -2, "__gc");
        luaL_newlib(L, rule_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    recorder_metatable(L);
    luaL_newlib(L, funcs);
    return 1;
}
