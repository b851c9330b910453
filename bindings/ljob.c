/*
 * ljob.c - jobs in Lua: vdk.copy{...}, vdk.compare(a, b, opts) and
 * vdk.measure{...}, over the copy engine of core/vdk.h (and vdk.isatty,
 * which progress displays need).
 *
 * One libuv loop per Lua state (a userdata in the registry, created on first
 * use, drained and closed when the state closes). Every job runs on it;
 * job:wait() runs the loop until that job ends while the others progress
 * too. on_progress callbacks run on the loop thread, inside a wait, on the
 * Lua thread that called wait. An error raised in a callback cancels that
 * job, stops the loop and is raised again by the wait that was running it
 * (never swallowed, never exiting); the canceled job's own wait then returns
 * nil, message, "CANCELED".
 *
 * Lifetimes: the job userdata holds a pointer to a malloc'd ljob, which owns
 * the C job, a progress timer and a SIGINT watcher. While the job runs, the
 * userdata is anchored in the registry, so it cannot be collected; the
 * engine holds its own references on the images. The ljob is freed once the
 * job has ended, its handles are closed and the userdata is gone.
 *
 * Images come from lvdk.c; its image userdata ("vdk.image") starts with the
 * vdk_image pointer (NULL once closed), which is all this file reads.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "lvdk.h"
#include "vdk.h"

#define LOOP_KEY "vdk.loop"    /* registry: the loop of this Lua state */
#define LOOP_MT "vdk.loop.mt"  /* its metatable */
#define JOB_MT "vdk.job"

typedef struct lloop {
    uv_loop_t loop;
    int jobs;          /* jobs not yet ended */
    int running;       /* inside uv_run (from a wait) */
    bool closing;      /* the Lua state is closing: no more callbacks */
    int err_ref;       /* an error raised in a callback, to raise from wait */
    lua_State *cur;    /* the thread running the loop */
} lloop;

typedef struct ljob {
    lloop *lp;
    vdk_job *job;
    bool compare;
    uv_timer_t timer;
    uv_signal_t sig;
    int handles;       /* open uv handles of this ljob */
    int self_ref;      /* the userdata, while running */
    int cb_ref;        /* on_progress */
    uint64_t interval_ms;
    uint64_t start_ns, end_ns;
    bool ended, ud_alive, interrupted, cb_failed;
    int rc;
    vdk_error err;
    int verdict;
    uint64_t offset;
    vdk_job_progress last; /* progress at the end */
} ljob;

typedef struct ljob_ud {
    ljob *lj;
} ljob_ud;

/* ---------------------------------------------------------------- the loop */

static int loop_gc(lua_State *L)
{
    lloop *lp = luaL_checkudata(L, 1, LOOP_MT);
    lp->closing = true;
    /* Jobs still running were canceled by their own __gc; let them end. */
    uv_run(&lp->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&lp->loop) != 0) {
        uv_run(&lp->loop, UV_RUN_DEFAULT);
        uv_loop_close(&lp->loop);
    }
    return 0;
}

static lloop *get_loop(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, LOOP_KEY) == LUA_TUSERDATA) {
        lloop *lp = lua_touserdata(L, -1);
        lua_pop(L, 1);
        return lp;
    }
    lua_pop(L, 1);
    lloop *lp = lua_newuserdatauv(L, sizeof *lp, 0);
    memset(lp, 0, sizeof *lp);
    if (uv_loop_init(&lp->loop) != 0)
        luaL_error(L, "cannot create an event loop");
    lp->err_ref = LUA_NOREF;
    luaL_newmetatable(L, LOOP_MT);
    lua_pushcfunction(L, loop_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, LOOP_KEY);
    return lp;
}

/* ---------------------------------------------------------------- helpers */

static void check_names(lua_State *L, int idx, const char *fname, const char *const *names)
{
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        bool known = false;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *n = names; *n && !known; n++)
                known = strcmp(lua_tostring(L, -1), *n) == 0;
        if (!known)
            luaL_error(L, "%s: unknown option '%s'", fname, luaL_tolstring(L, -1, NULL));
    }
}

static bool opt_bool(lua_State *L, int idx, const char *key)
{
    if (lua_isnoneornil(L, idx))
        return false;
    int t = lua_getfield(L, idx, key);
    if (t != LUA_TNIL && t != LUA_TBOOLEAN)
        luaL_error(L, "option '%s' must be a boolean, not %s", key, luaL_typename(L, -1));
    bool v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A non-negative integer option, or dflt when absent. */
static uint64_t opt_uint(lua_State *L, int idx, const char *key, uint64_t dflt)
{
    if (lua_isnoneornil(L, idx))
        return dflt;
    lua_getfield(L, idx, key);
    uint64_t v = dflt;
    if (!lua_isnil(L, -1)) {
        int ok;
        lua_Integer n = lua_tointegerx(L, -1, &ok);
        if (!ok || n < 0)
            luaL_error(L, "option '%s' must be a non-negative integer", key);
        v = (uint64_t)n;
    }
    lua_pop(L, 1);
    return v;
}

static const char *phase_name(int phase)
{
    static const char *const names[] = {"starting", "copying", "flushing", "done"};
    return phase >= 0 && phase <= VDK_JOB_DONE ? names[phase] : "?";
}

static void set_int(lua_State *L, const char *key, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, key);
}

static void push_progress(lua_State *L, ljob *lj)
{
    vdk_job_progress p = lj->last;
    if (lj->job)
        vdk_job_progress_get(lj->job, &p);
    lua_createtable(L, 0, 12);
    set_int(L, "done", p.done);
    set_int(L, "total", p.total);
    set_int(L, "bytes_read", p.bytes_read);
    set_int(L, "bytes_written", p.bytes_written);
    set_int(L, "bytes_zeroed", p.bytes_zeroed);
    set_int(L, "bytes_skipped", p.bytes_skipped);
    set_int(L, "in_flight", p.in_flight);
    lua_pushstring(L, lj->compare && p.phase == VDK_JOB_COPYING ? "comparing"
                                                                  : phase_name(p.phase));
    lua_setfield(L, -2, "phase");
    uint64_t now = lj->ended ? lj->end_ns : uv_hrtime();
    double elapsed = (double)(now - lj->start_ns) / 1e9;
    lua_pushnumber(L, elapsed);
    lua_setfield(L, -2, "elapsed");
    lua_pushnumber(L, elapsed > 0 ? (double)p.done / elapsed : 0.0);
    lua_setfield(L, -2, "rate");
    lua_pushboolean(L, lj->interrupted);
    lua_setfield(L, -2, "interrupted");
}

/* ---------------------------------------------------------------- callbacks */

static void maybe_free(ljob *lj)
{
    if (lj->ended && lj->handles == 0 && !lj->ud_alive) {
        if (lj->job)
            vdk_job_free(lj->job);
        free(lj);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    ljob *lj = h->data;
    lj->handles--;
    maybe_free(lj);
}

/* Run on_progress; an error cancels the job and is kept for the wait. */
static void call_progress(ljob *lj)
{
    lloop *lp = lj->lp;
    lua_State *L = lp->cur;
    if (lj->cb_ref == LUA_NOREF || lp->closing || lj->cb_failed || !L || !lj->ud_alive)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, lj->cb_ref);
    push_progress(L, lj);
    if (lua_pcall(L, 1, 0, 0) == LUA_OK)
        return;
    lj->cb_failed = true;
    if (lp->err_ref == LUA_NOREF)
        lp->err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        lua_pop(L, 1);
    if (lj->job)
        vdk_job_cancel(lj->job);
    uv_stop(&lp->loop);
}

static void on_timer(uv_timer_t *t)
{
    call_progress(t->data);
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)signum;
    ljob *lj = s->data;
    lj->interrupted = true;
    if (lj->job)
        vdk_job_cancel(lj->job);
}

static void close_handle(ljob *lj, uv_handle_t *h)
{
    if (h->data && !uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

static void on_job_done(vdk_job *job, void *opaque)
{
    ljob *lj = opaque;
    lj->rc = vdk_job_result(job, &lj->err);
    if (lj->compare && lj->rc == 0)
        lj->verdict = vdk_job_compare_result(job, &lj->offset);
    vdk_job_progress_get(job, &lj->last);
    lj->end_ns = uv_hrtime();
    lj->ended = true;
    lj->lp->jobs--;
    call_progress(lj); /* the last report: phase "done" */
    close_handle(lj, (uv_handle_t *)&lj->timer);
    close_handle(lj, (uv_handle_t *)&lj->sig);
    if (lj->ud_alive && lj->lp->cur && !lj->lp->closing) {
        luaL_unref(lj->lp->cur, LUA_REGISTRYINDEX, lj->self_ref);
        lj->self_ref = LUA_NOREF;
    }
    maybe_free(lj);
}

/* ---------------------------------------------------------------- job objects */

static ljob *check_job(lua_State *L, int idx)
{
    ljob_ud *u = luaL_checkudata(L, idx, JOB_MT);
    return u->lj;
}

/* A new ljob userdata on the stack, with its handles (not yet started). */
static ljob *new_job(lua_State *L, int opts_idx)
{
    lloop *lp = get_loop(L);
    ljob_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->lj = NULL;
    luaL_setmetatable(L, JOB_MT);
    ljob *lj = calloc(1, sizeof *lj);
    if (!lj)
        luaL_error(L, "out of memory");
    u->lj = lj;
    lj->lp = lp;
    lj->ud_alive = true;
    lj->self_ref = lj->cb_ref = LUA_NOREF;
    lj->start_ns = uv_hrtime();
    double interval = 0.25;
    if (!lua_isnoneornil(L, opts_idx)) {
        if (lua_getfield(L, opts_idx, "on_progress") != LUA_TNIL) {
            luaL_checktype(L, -1, LUA_TFUNCTION);
            lj->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        } else {
            lua_pop(L, 1);
        }
        if (lua_getfield(L, opts_idx, "progress_interval") != LUA_TNIL)
            interval = luaL_checknumber(L, -1);
        lua_pop(L, 1);
    }
    if (interval < 0.001)
        interval = 0.001;
    lj->interval_ms = (uint64_t)(interval * 1000.0);
    return lj;
}

/* Start the handles and anchor the userdata (at the top of the stack). */
static void start_job(lua_State *L, ljob *lj, bool watch_sigint)
{
    lloop *lp = lj->lp;
    lp->jobs++;
    if (lj->cb_ref != LUA_NOREF && uv_timer_init(&lp->loop, &lj->timer) == 0) {
        lj->timer.data = lj;
        lj->handles++;
        uv_timer_start(&lj->timer, on_timer, lj->interval_ms, lj->interval_ms);
    }
    if (watch_sigint && uv_signal_init(&lp->loop, &lj->sig) == 0) {
        lj->sig.data = lj;
        lj->handles++;
        uv_signal_start(&lj->sig, on_signal, SIGINT);
    }
    lua_pushvalue(L, -1);
    lj->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* The first failure of a start: undo the userdata's ljob. */
static int start_failed(lua_State *L, ljob *lj, int rc, const vdk_error *err)
{
    lj->ended = true;
    if (lj->cb_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, lj->cb_ref);
    lj->cb_ref = LUA_NOREF;
    return vdk_lpush_error(L, err, rc);
}

/* Raise an error a callback left behind, if any. */
static void raise_callback_error(lua_State *L, lloop *lp)
{
    if (lp->err_ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, lp->err_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, lp->err_ref);
    lp->err_ref = LUA_NOREF;
    lua_error(L);
}

/* Run the loop once from L (not re-entrant). */
static void run_once(lua_State *L, lloop *lp)
{
    if (lp->running)
        luaL_error(L, "cannot wait for a job inside a job callback");
    lua_State *prev = lp->cur;
    lp->cur = L;
    lp->running = 1;
    uv_run(&lp->loop, UV_RUN_ONCE);
    lp->running = 0;
    lp->cur = prev;
    raise_callback_error(L, lp);
}

/* job:wait() -> true (copy) | verdict, offset (compare) | nil, message, code */
static int m_wait(lua_State *L)
{
    ljob *lj = check_job(L, 1);
    while (!lj->ended)
        run_once(L, lj->lp);
    if (lj->rc < 0) {
        vdk_lpush_error(L, &lj->err, lj->rc);
        if (lj->interrupted)
            lua_pushfstring(L, "interrupted by the user: %s", lua_tostring(L, -2));
        else if (lj->cb_failed)
            lua_pushfstring(L, "%s: the on_progress callback raised an error",
                            lua_tostring(L, -2));
        else
            return 3;
        lua_replace(L, -3);
        return 3;
    }
    if (!lj->compare) {
        lua_pushboolean(L, 1);
        return 1;
    }
    static const char *const verdicts[] = {"equal", "content", "size", "allocation"};
    lua_pushstring(L, verdicts[lj->verdict & 3]);
    lua_pushinteger(L, (lua_Integer)lj->offset);
    return 2;
}

static int m_cancel(lua_State *L)
{
    ljob *lj = check_job(L, 1);
    if (!lj->ended && lj->job)
        vdk_job_cancel(lj->job);
    return 0;
}

static int m_progress(lua_State *L)
{
    push_progress(L, check_job(L, 1));
    return 1;
}

static int m_is_done(lua_State *L)
{
    lua_pushboolean(L, check_job(L, 1)->ended);
    return 1;
}

static int job_tostring(lua_State *L)
{
    ljob *lj = check_job(L, 1);
    vdk_job_progress p = lj->last;
    if (lj->job)
        vdk_job_progress_get(lj->job, &p);
    lua_pushfstring(L, "vdk.job: %s %s %I/%I", lj->compare ? "compare" : "copy",
                    lj->ended ? "done" : phase_name(p.phase), (lua_Integer)p.done,
                    (lua_Integer)p.total);
    return 1;
}

/* __gc: only reached for a running job when the state closes; cancel it and
 * let the loop's own __gc finish it. */
static int job_gc(lua_State *L)
{
    ljob_ud *u = luaL_checkudata(L, 1, JOB_MT);
    ljob *lj = u->lj;
    u->lj = NULL;
    if (!lj)
        return 0;
    lj->ud_alive = false;
    if (!lj->ended && lj->job)
        vdk_job_cancel(lj->job);
    if (!lj->job)
        lj->ended = true; /* never started */
    maybe_free(lj);
    return 0;
}

/* __close: cancel a job still running and wait for it to end. */
static int job_close(lua_State *L)
{
    ljob *lj = check_job(L, 1);
    if (lj && !lj->ended && lj->job) {
        vdk_job_cancel(lj->job);
        if (!lj->lp->running)
            while (!lj->ended)
                run_once(L, lj->lp);
    }
    return 0;
}

/* ---------------------------------------------------------------- vdk.copy */

static const char *const copy_option_names[] = {
    "source", "target", "top_only", "target_is_zero", "fresh_target", "unordered",
    "compress", "compare_backing", "no_flush", "max_requests", "max_bytes", "request_size",
    "sparse_size", "rate_limit", "on_progress", "progress_interval", "cancel_on_interrupt",
    NULL,
};

static unsigned copy_flags(lua_State *L)
{
    unsigned f = 0;
    if (opt_bool(L, 1, "top_only"))
        f |= VDK_COPY_TOP_ONLY;
    if (opt_bool(L, 1, "target_is_zero"))
        f |= VDK_COPY_TARGET_ZERO;
    if (opt_bool(L, 1, "fresh_target"))
        f |= VDK_COPY_TARGET_FRESH;
    if (opt_bool(L, 1, "unordered"))
        f |= VDK_COPY_UNORDERED;
    if (opt_bool(L, 1, "compress"))
        f |= VDK_COPY_COMPRESS;
    if (opt_bool(L, 1, "compare_backing"))
        f |= VDK_COPY_BACKING_COMPARE;
    if (opt_bool(L, 1, "no_flush"))
        f |= VDK_COPY_NO_FLUSH;
    return f;
}

static void copy_opts_from(lua_State *L, int idx, vdk_copy_opts *o)
{
    vdk_copy_opts_init(o);
    o->max_requests = (unsigned)opt_uint(L, idx, "max_requests", o->max_requests);
    o->max_bytes = opt_uint(L, idx, "max_bytes", 0);
    o->request_size = opt_uint(L, idx, "request_size", o->request_size);
    o->sparse_size = opt_uint(L, idx, "sparse_size", o->sparse_size);
    o->rate_limit = opt_uint(L, idx, "rate_limit", 0);
}

/* The sources of vdk.copy: one image or a list; at most 1024. */
static size_t collect_sources(lua_State *L, vdk_image **out, size_t cap)
{
    int t = lua_getfield(L, 1, "source");
    size_t n = 0;
    if (t == LUA_TUSERDATA) {
        out[n++] = vdk_lcheck_image_arg(L, -1, "source");
    } else if (t == LUA_TTABLE) {
        lua_Integer len = luaL_len(L, -1);
        if (len < 1 || (size_t)len > cap)
            luaL_error(L, "copy: 'source' must list 1 to %d images", (int)cap);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_geti(L, -1, i);
            out[n++] = vdk_lcheck_image_arg(L, -1, "each source");
            lua_pop(L, 1);
        }
    } else {
        luaL_error(L, "copy: 'source' must be an image or a list of images");
    }
    lua_pop(L, 1);
    return n;
}

/* vdk.copy{source = img | {img, ...}, target = img, ...} -> job | nil, msg, code */
static int l_copy(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    check_names(L, 1, "copy", copy_option_names);
    vdk_image *srcs[1024];
    size_t n = collect_sources(L, srcs, sizeof srcs / sizeof srcs[0]);
    lua_getfield(L, 1, "target");
    vdk_image *target = vdk_lcheck_image_arg(L, -1, "target");
    lua_pop(L, 1);
    vdk_copy_opts o;
    copy_opts_from(L, 1, &o);
    o.flags = copy_flags(L);
    bool sigint = opt_bool(L, 1, "cancel_on_interrupt");
    ljob *lj = new_job(L, 1);
    vdk_error err;
    int rc = vdk_copy_start(&lj->lp->loop, srcs, n, target, &o, on_job_done, lj, &lj->job,
                            &err);
    if (rc < 0)
        return start_failed(L, lj, rc, &err);
    start_job(L, lj, sigint);
    return 1;
}

/* ---------------------------------------------------------------- vdk.compare */

static const char *const compare_option_names[] = {
    "strict", "max_requests", "request_size", "on_progress", "progress_interval",
    "cancel_on_interrupt", NULL,
};

/* vdk.compare(a, b [, opts]) -> job | nil, msg, code */
static int l_compare(lua_State *L)
{
    vdk_image *a = vdk_lcheck_image_arg(L, 1, "the first image");
    vdk_image *b = vdk_lcheck_image_arg(L, 2, "the second image");
    check_names(L, 3, "compare", compare_option_names);
    vdk_copy_opts o;
    copy_opts_from(L, 3, &o);
    unsigned flags = opt_bool(L, 3, "strict") ? VDK_COMPARE_STRICT : 0;
    bool sigint = opt_bool(L, 3, "cancel_on_interrupt");
    ljob *lj = new_job(L, 3);
    lj->compare = true;
    vdk_error err;
    int rc = vdk_compare_start(&lj->lp->loop, a, b, flags, &o, on_job_done, lj, &lj->job, &err);
    if (rc < 0)
        return start_failed(L, lj, rc, &err);
    start_job(L, lj, sigint);
    return 1;
}

/* ---------------------------------------------------------------- vdk.measure */

/* A creation option's value as qemu-img -o spells it. */
static const char *option_value(lua_State *L, int idx, const char *key)
{
    if (lua_type(L, idx) == LUA_TBOOLEAN)
        return lua_toboolean(L, idx) ? "on" : "off";
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tostring(L, idx);
    if (lua_isinteger(L, idx)) {
        lua_pushfstring(L, "%I", (lua_Integer)lua_tointeger(L, idx));
        lua_replace(L, idx);
        return lua_tostring(L, idx);
    }
    luaL_error(L, "measure: option '%s' must be a string, boolean or integer", key);
    return NULL;
}

/* vdk.measure{format =, size = | source =, options = {...}} ->
 * {required =, fully_allocated =, bitmaps =} | nil, msg, code */
static int l_measure(lua_State *L)
{
    static const char *const names[] = {"format", "size", "source", "options", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    check_names(L, 1, "measure", names);
    const char *format = "raw";
    int t = lua_getfield(L, 1, "format");
    if (t == LUA_TSTRING)
        format = lua_tostring(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "measure: 'format' must be a string");
    uint64_t size = opt_uint(L, 1, "size", 0);
    bool has_size = lua_getfield(L, 1, "size") != LUA_TNIL;
    vdk_image *src = NULL;
    if (lua_getfield(L, 1, "source") != LUA_TNIL)
        src = vdk_lcheck_image_arg(L, -1, "source");
    if (src && has_size)
        luaL_error(L, "measure: give 'size' or 'source', not both");
    if (!src && !has_size)
        luaL_error(L, "measure: give 'size' or 'source'");
    vdk_kv kv[64];
    size_t n = 0;
    t = lua_getfield(L, 1, "options");
    int opts = lua_gettop(L);
    if (t == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, opts)) {
            if (lua_type(L, -2) != LUA_TSTRING || n == 64)
                luaL_error(L, "measure: option names must be strings (at most 64)");
            kv[n].key = lua_tostring(L, -2);
            kv[n].value = option_value(L, lua_gettop(L), kv[n].key);
            lua_pushvalue(L, -1);
            lua_setfield(L, opts, kv[n].key); /* keep converted strings anchored */
            n++;
            lua_pop(L, 1);
        }
    } else if (t != LUA_TNIL) {
        luaL_error(L, "measure: 'options' must be a table");
    }
    vdk_measure_info m;
    vdk_error err;
    int rc = vdk_measure(format, size, kv, n, src, &m, &err);
    if (rc < 0)
        return vdk_lpush_error(L, &err, rc);
    lua_createtable(L, 0, 3);
    set_int(L, "required", m.required);
    set_int(L, "fully_allocated", m.fully_allocated);
    if (m.has_bitmaps)
        set_int(L, "bitmaps", m.bitmaps);
    return 1;
}

/* ---------------------------------------------------------------- vdk.isatty */

/* vdk.isatty(fd) -> whether file descriptor fd (0, 1, 2 ...) is a terminal */
static int l_isatty(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    lua_pushboolean(L, fd >= 0 && fd <= 65535 && isatty((int)fd));
    return 1;
}

/* ---------------------------------------------------------------- registration */

static const luaL_Reg job_methods[] = {
    {"wait", m_wait},
    {"cancel", m_cancel},
    {"progress", m_progress},
    {"is_done", m_is_done},
    {NULL, NULL},
};

static const luaL_Reg job_meta[] = {
    {"__gc", job_gc},
    {"__close", job_close},
    {"__tostring", job_tostring},
    {NULL, NULL},
};

#ifdef VDK_TESTING
int luaopen_vdk_testing(lua_State *L);
#endif

/* Add copy, compare and measure to the module table at the top of the stack. */
int vdk_ljob_open(lua_State *L)
{
    luaL_newmetatable(L, JOB_MT);
    luaL_setfuncs(L, job_meta, 0);
    luaL_newlib(L, job_methods);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "vdk.job");
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_copy);
    lua_setfield(L, -2, "copy");
    lua_pushcfunction(L, l_compare);
    lua_setfield(L, -2, "compare");
    lua_pushcfunction(L, l_measure);
    lua_setfield(L, -2, "measure");
    lua_pushcfunction(L, l_isatty);
    lua_setfield(L, -2, "isatty");
#ifdef VDK_TESTING
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_vdk_testing);
    lua_setfield(L, -2, "vdk.testing");
    lua_pop(L, 1);
#endif
    return 0;
}
