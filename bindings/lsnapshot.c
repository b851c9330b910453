/*
 * lsnapshot.c - internal snapshots and VM states in Lua, over the
 * vdk_snapshot_* and vdk_vmstate_* calls of core/vdk.h, and the C half of
 * the snapshot-saving pipeline (scripts/vdk/savevm.lua): the VM-state
 * writer.
 *
 * Image methods (added to the shared image methods table):
 *   img:snapshots()                      list of {id, name, vm_state_size, ...}
 *   img:snapshot_create(name, opts)      opts: id, date_sec, date_nsec,
 *                                        vm_clock_nsec, icount (default 0 as
 *                                        qemu-img; -1: none), vm_state_size
 *   img:snapshot_apply(ref) / snapshot_delete(ref) / snapshot_load(ref)
 *   img:vmstate_write(pos, data), img:vmstate_read(ref, pos, len),
 *   img:vmstate_discard()
 * A ref is a string (an ID, else a name, as qemu-img snapshot -a matches)
 * or a table {id = "3"} or {name = "before"} for an exact match.
 *
 * vdk.core.monotonic() is a monotonic clock in seconds (for progress).
 * vdk.core.vmstate_writer(img, {buffer_size =, naive =}) returns a writer:
 * two buffers of buffer_size bytes (a multiple of the cluster size, aligned
 * for O_DIRECT); while the Lua thread fills one (writer:write(data), or
 * writer:write_from(file) reading straight into it), the other is written
 * at its place in the staged VM state by a worker thread (the copy
 * engine's worker pool and mailbox, on a private libuv loop), in one large
 * aligned write. writer:finish() writes the last, zero-padded buffer,
 * waits, flushes the image and returns the state's size; the snapshot is
 * then created with that vm_state_size. naive = true writes each chunk
 * synchronously where it lands (the slow path, kept for comparison).
 *
 * Failures return nil, message, code (vdk_errname); misuse raises.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "lvdk.h"
#include "vdk.h"
#include "workers.h"

#define WRITER_MT "vdk.vmstate_writer"
#define DEFAULT_BUFFER ((size_t)8 << 20)
#define MAX_BUFFER ((size_t)256 << 20)
#define MAX_READ ((lua_Integer)1 << 30)


static uint64_t check_u64(lua_State *L, int idx, const char *what)
{
    lua_Integer v = luaL_checkinteger(L, idx);
    if (v < 0)
        luaL_argerror(L, idx, lua_pushfstring(L, "%s must not be negative", what));
    return (uint64_t)v;
}

/* ---------------------------------------------------------------- list */

static void set_int(lua_State *L, const char *key, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, key);
}

static void push_info(lua_State *L, const vdk_snapshot_info *s)
{
    lua_createtable(L, 0, 9);
    lua_pushstring(L, s->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, s->name);
    lua_setfield(L, -2, "name");
    set_int(L, "vm_state_size", s->vm_state_size);
    set_int(L, "disk_size", s->disk_size);
    set_int(L, "date_sec", s->date_sec);
    set_int(L, "date_nsec", s->date_nsec);
    set_int(L, "vm_clock_nsec", s->vm_clock_nsec);
    if (s->icount != VDK_SNAPSHOT_NO_ICOUNT)
        set_int(L, "icount", s->icount);
}

/* img:snapshots() -> list | nil, msg, code */
static int m_snapshots(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    vdk_snapshot_info *list;
    size_t n;
    vdk_error err;
    vdk_error_clear(&err);
    int r = vdk_snapshot_list(img, &list, &n, &err);
    if (r < 0)
        return vdk_lpush_error(L, &err, r);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        push_info(L, &list[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    vdk_snapshot_list_free(list, n);
    return 1;
}

/* ---------------------------------------------------------------- references */

/*
 * The ID of the snapshot that ref (argument idx) selects, copied to id; or
 * pushes the error triple and returns its count (> 0).
 */
static int resolve(lua_State *L, vdk_image *img, int idx, char *id, size_t idlen)
{
    const char *want_id = NULL, *want_name = NULL, *either = NULL;
    if (lua_type(L, idx) == LUA_TSTRING) {
        either = lua_tostring(L, idx);
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        lua_getfield(L, idx, "id");
        lua_getfield(L, idx, "name");
        want_id = lua_tostring(L, -2);
        want_name = lua_tostring(L, -1);
        lua_pop(L, 2); /* the strings stay alive in the table */
        if (!want_id == !want_name)
            luaL_argerror(L, idx, "give exactly one of id and name");
    } else {
        luaL_typeerror(L, idx, "string or table");
    }
    vdk_snapshot_info *list;
    size_t n;
    vdk_error err;
    vdk_error_clear(&err);
    int r = vdk_snapshot_list(img, &list, &n, &err);
    if (r < 0)
        return vdk_lpush_error(L, &err, r);
    const char *found = NULL;
    for (size_t i = 0; i < n && !found; i++)
        if ((either || want_id) && strcmp(list[i].id, either ? either : want_id) == 0)
            found = list[i].id;
    for (size_t i = 0; i < n && !found; i++)
        if ((either || want_name) && strcmp(list[i].name, either ? either : want_name) == 0)
            found = list[i].id;
    if (found)
        snprintf(id, idlen, "%s", found);
    vdk_snapshot_list_free(list, n);
    if (found)
        return 0;
    err.code = -ENOENT;
    snprintf(err.msg, sizeof err.msg, "%s: no snapshot %s '%s'", vdk_image_filename(img),
             either ? "with the ID or name" : want_id ? "with the ID" : "named",
             either ? either : want_id ? want_id : want_name);
    return vdk_lpush_error(L, &err, -ENOENT);
}

typedef int (*by_id_fn)(vdk_image *, const char *, vdk_error *);

static int by_ref(lua_State *L, by_id_fn fn)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    char id[256];
    int k = resolve(L, img, 2, id, sizeof id);
    if (k)
        return k;
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, fn(img, id, &err), &err);
}

static int m_snapshot_apply(lua_State *L) { return by_ref(L, vdk_snapshot_apply); }
static int m_snapshot_delete(lua_State *L) { return by_ref(L, vdk_snapshot_delete); }
static int m_snapshot_load(lua_State *L) { return by_ref(L, vdk_snapshot_load); }

/* ---------------------------------------------------------------- create */

static uint64_t opt_u64(lua_State *L, int idx, const char *key, uint64_t dflt, bool *given)
{
    if (lua_isnoneornil(L, idx))
        return dflt;
    int t = lua_getfield(L, idx, key);
    uint64_t v = dflt;
    if (t != LUA_TNIL) {
        int ok;
        lua_Integer i = lua_tointegerx(L, -1, &ok);
        if (!ok || i < 0)
            luaL_error(L, "snapshot_create: option '%s' must be a non-negative integer", key);
        v = (uint64_t)i;
        if (given)
            *given = true;
    }
    lua_pop(L, 1);
    return v;
}

static void check_create_options(lua_State *L, int idx)
{
    static const char *const known[] = {"id", "date_sec", "date_nsec", "vm_clock_nsec",
                                        "icount", "vm_state_size", NULL};
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        bool ok = false;
        for (int i = 0; known[i] && lua_type(L, -2) == LUA_TSTRING; i++)
            ok = ok || strcmp(known[i], lua_tostring(L, -2)) == 0;
        if (!ok)
            luaL_error(L, "snapshot_create: unknown option '%s'", luaL_tolstring(L, -2, NULL));
        lua_pop(L, 1);
    }
}

/* img:snapshot_create(name, opts) -> true | nil, msg, code */
static int m_snapshot_create(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    size_t nl;
    const char *name = luaL_checklstring(L, 2, &nl);
    check_create_options(L, 3);
    vdk_snapshot_params p = {.name = name};
    if (strlen(name) != nl)
        luaL_argerror(L, 2, "a snapshot name cannot contain NUL bytes");
    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "id");
        p.id = lua_tostring(L, -1); /* stays alive in the table */
        lua_pop(L, 1);
    }
    bool has_sec = false;
    p.date_sec = (uint32_t)opt_u64(L, 3, "date_sec", 0, &has_sec);
    p.date_nsec = (uint32_t)opt_u64(L, 3, "date_nsec", 0, NULL);
    p.has_date = has_sec;
    p.vm_clock_nsec = opt_u64(L, 3, "vm_clock_nsec", 0, NULL);
    /* icount: 0 by default, as qemu-img snapshot -c writes; -1 for none. */
    p.icount = 0;
    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "icount");
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) == -1)
            p.icount = VDK_SNAPSHOT_NO_ICOUNT;
        lua_pop(L, 1);
        if (p.icount == 0)
            p.icount = opt_u64(L, 3, "icount", 0, NULL);
    }
    p.vm_state_size = opt_u64(L, 3, "vm_state_size", 0, NULL);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_snapshot_create(img, &p, &err), &err);
}

/* ---------------------------------------------------------------- VM state */

/* img:vmstate_write(pos, data) -> true | nil, msg, code */
static int m_vmstate_write(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t pos = check_u64(L, 2, "position");
    size_t len;
    luaL_checktype(L, 3, LUA_TSTRING);
    const char *data = lua_tolstring(L, 3, &len);
    vdk_error err;
    vdk_error_clear(&err);
    return vdk_lpush_status(L, vdk_vmstate_write(img, data, len, pos, &err), &err);
}

/* img:vmstate_read(ref, pos, len) -> string | nil, msg, code */
static int m_vmstate_read(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    uint64_t pos = check_u64(L, 3, "position");
    lua_Integer len = (lua_Integer)check_u64(L, 4, "length");
    if (len > MAX_READ)
        luaL_argerror(L, 4, "at most 1 GiB per read");
    char id[256];
    int k = resolve(L, img, 2, id, sizeof id);
    if (k)
        return k;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, (size_t)len);
    vdk_error err;
    vdk_error_clear(&err);
    int r = vdk_vmstate_read(img, id, p, (size_t)len, pos, &err);
    if (r < 0)
        return vdk_lpush_error(L, &err, r);
    luaL_pushresultsize(&b, (size_t)len);
    return 1;
}

static int m_vmstate_discard(lua_State *L)
{
    vdk_vmstate_discard(vdk_lcheck_image(L, 1));
    return 0;
}

/* ---------------------------------------------------------------- the writer */

typedef struct vmw vmw;

typedef struct wreq {
    vdk_work work;
    vmw *w;
    const uint8_t *buf;
    size_t len;
    uint64_t pos;
    int rc;
    vdk_error err;
} wreq;

struct vmw {
    vdk_image *img;       /* referenced; NULL once closed */
    size_t bufsize, cluster;
    uint8_t *buf[2];
    int cur;
    size_t fill;          /* bytes in buf[cur] */
    uint64_t base;        /* state position of buf[cur] */
    uint64_t accepted;    /* bytes given to the writer */
    uint64_t written;     /* bytes whose write completed */
    bool naive, busy, finished;
    int rc;               /* first failure */
    vdk_error err;
    uv_loop_t loop;
    vdk_workers *pool;
    vdk_mailbox mb;
    wreq req;
};

static void req_run(vdk_work *work)
{
    wreq *q = (wreq *)work;
    vdk_error_clear(&q->err);
    q->rc = vdk_vmstate_write(q->w->img, q->buf, q->len, q->pos, &q->err);
}

static void req_deliver(vdk_mailbox *mb, vdk_work *work)
{
    (void)mb;
    wreq *q = (wreq *)work;
    vmw *w = q->w;
    w->busy = false;
    if (q->rc < 0 && w->rc == 0) {
        w->rc = q->rc;
        w->err = q->err;
    }
    if (q->rc == 0)
        w->written += q->len;
}

static void wait_idle(vmw *w)
{
    while (w->busy)
        uv_run(&w->loop, UV_RUN_ONCE);
}

static void submit(vmw *w, const uint8_t *buf, size_t len, uint64_t pos)
{
    w->req = (wreq){.work = {.run = req_run, .mailbox = &w->mb}, .w = w, .buf = buf,
                    .len = len, .pos = pos};
    w->busy = true;
    vdk_workers_submit(w->pool, &w->req.work);
}

/* buf[cur] is full (or final): write it while the other one fills. */
static void flip(vmw *w, size_t len)
{
    wait_idle(w);
    if (w->rc < 0)
        return;
    submit(w, w->buf[w->cur], len, w->base);
    w->base += w->bufsize;
    w->cur ^= 1;
    w->fill = 0;
}

static vmw *check_writer(lua_State *L)
{
    vmw *w = luaL_checkudata(L, 1, WRITER_MT);
    if (!w->img || w->finished)
        luaL_error(L, "VM state writer is finished");
    return w;
}

static int writer_status(lua_State *L, vmw *w, lua_Integer n)
{
    if (w->rc < 0)
        return vdk_lpush_error(L, &w->err, w->rc);
    lua_pushinteger(L, n);
    return 1;
}

/* writer:write(data) -> bytes | nil, msg, code */
static int w_write(lua_State *L)
{
    vmw *w = check_writer(L);
    size_t len;
    luaL_checktype(L, 2, LUA_TSTRING);
    const uint8_t *p = (const uint8_t *)lua_tolstring(L, 2, &len);
    if (w->naive) {
        int r = w->rc < 0 ? w->rc : vdk_vmstate_write(w->img, p, len, w->accepted, &w->err);
        if (r < 0 && w->rc == 0)
            w->rc = r;
        if (r == 0)
            w->accepted += len, w->written += len;
        return writer_status(L, w, (lua_Integer)len);
    }
    for (size_t done = 0; done < len && w->rc == 0;) {
        size_t n = w->bufsize - w->fill < len - done ? w->bufsize - w->fill : len - done;
        memcpy(w->buf[w->cur] + w->fill, p + done, n);
        w->fill += n;
        done += n;
        w->accepted += n;
        if (w->fill == w->bufsize)
            flip(w, w->bufsize);
    }
    return writer_status(L, w, (lua_Integer)len);
}

/* writer:write_from(file [, max]) -> bytes read (0 at the end) | nil, msg, code */
static int w_write_from(lua_State *L)
{
    vmw *w = check_writer(L);
    luaL_Stream *ls = luaL_checkudata(L, 2, LUA_FILEHANDLE);
    if (!ls->f || !ls->closef)
        luaL_argerror(L, 2, "file is closed");
    uint64_t max = lua_isnoneornil(L, 3) ? UINT64_MAX : check_u64(L, 3, "max");
    uint64_t total = 0;
    while (total < max && w->rc == 0) {
        size_t room = w->bufsize - w->fill;
        if (room > max - total)
            room = (size_t)(max - total);
        size_t n = fread(w->buf[w->cur] + w->fill, 1, room, ls->f);
        if (n == 0) {
            if (ferror(ls->f))
                return luaL_fileresult(L, 0, NULL);
            break;
        }
        if (w->naive) {
            int r = vdk_vmstate_write(w->img, w->buf[w->cur] + w->fill, n, w->accepted, &w->err);
            if (r < 0)
                w->rc = r;
            else
                w->written += n;
        } else {
            w->fill += n;
        }
        w->accepted += n;
        total += n;
        if (!w->naive && w->fill == w->bufsize)
            flip(w, w->bufsize);
    }
    return writer_status(L, w, (lua_Integer)total);
}

/* writer:finish() -> state size | nil, msg, code: the last buffer padded to
 * whole clusters, every write complete, the image flushed. */
static int w_finish(lua_State *L)
{
    vmw *w = check_writer(L);
    if (!w->naive && w->fill && w->rc == 0) {
        size_t padded = (w->fill + w->cluster - 1) / w->cluster * w->cluster;
        memset(w->buf[w->cur] + w->fill, 0, padded - w->fill);
        flip(w, padded);
    }
    wait_idle(w);
    w->finished = true;
    if (w->rc == 0) {
        vdk_error err;
        vdk_error_clear(&err);
        int r = vdk_image_flush(w->img, &err);
        if (r < 0) {
            w->rc = r;
            w->err = err;
        }
    }
    return writer_status(L, w, (lua_Integer)w->accepted);
}

static void mb_closed(uv_handle_t *h)
{
    (void)h;
}

/* Stop and release everything (waits for a write in flight). */
static void writer_close(vmw *w)
{
    if (!w->img)
        return;
    wait_idle(w);
    if (w->pool)
        vdk_workers_free(w->pool);
    vdk_mailbox_close(&w->mb, mb_closed);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    vdk_mailbox_fini(&w->mb);
    uv_loop_close(&w->loop);
    free(w->buf[0]);
    free(w->buf[1]);
    vdk_image_unref(w->img);
    w->img = NULL;
}

/* writer:abort(): stop, and drop the staged state from the image. */
static int w_abort(lua_State *L)
{
    vmw *w = luaL_checkudata(L, 1, WRITER_MT);
    if (w->img) {
        wait_idle(w);
        vdk_vmstate_discard(w->img);
        writer_close(w);
    }
    return 0;
}

static int w_gc(lua_State *L)
{
    writer_close(luaL_checkudata(L, 1, WRITER_MT));
    return 0;
}

static int w_index(lua_State *L)
{
    vmw *w = luaL_checkudata(L, 1, WRITER_MT);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "bytes") == 0)
        lua_pushinteger(L, (lua_Integer)w->accepted);
    else if (strcmp(k, "written") == 0)
        lua_pushinteger(L, (lua_Integer)w->written);
    else if (strcmp(k, "buffer_size") == 0)
        lua_pushinteger(L, (lua_Integer)w->bufsize);
    else if (strcmp(k, "naive") == 0)
        lua_pushboolean(L, w->naive);
    else {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(1));
    }
    return 1;
}

static int writer_init(lua_State *L, vmw *w, vdk_image *img, size_t bufsize)
{
    w->cluster = vdk_image_cluster_size(img) ? vdk_image_cluster_size(img) : 65536;
    w->bufsize = (bufsize + w->cluster - 1) / w->cluster * w->cluster;
    /* Aligned for O_DIRECT (cache=none): no bounce buffers on the way. */
    void *a = NULL, *b = NULL;
    if (posix_memalign(&a, 4096, w->bufsize) != 0)
        a = NULL;
    if (posix_memalign(&b, 4096, w->bufsize) != 0)
        b = NULL;
    w->buf[0] = a;
    w->buf[1] = b;
    if (!w->buf[0] || !w->buf[1]) {
        free(w->buf[0]);
        free(w->buf[1]);
        return luaL_error(L, "vmstate_writer: out of memory for two %d-byte buffers",
                          (int)w->bufsize);
    }
    if (uv_loop_init(&w->loop) < 0 ||
        vdk_mailbox_init(&w->mb, &w->loop, req_deliver, NULL, w) < 0 ||
        !(w->pool = vdk_workers_new(1)))
        return luaL_error(L, "vmstate_writer: cannot start the writer thread");
    w->img = vdk_image_ref(img);
    return 0;
}

/* vdk.core.vmstate_writer(img, {buffer_size =, naive =}) -> writer */
static int l_vmstate_writer(lua_State *L)
{
    vdk_image *img = vdk_lcheck_image(L, 1);
    lua_Integer bs = (lua_Integer)DEFAULT_BUFFER;
    bool naive = false;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "buffer_size");
        bs = luaL_optinteger(L, -1, bs);
        lua_getfield(L, 2, "naive");
        naive = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    if (bs < 4096 || (size_t)bs > MAX_BUFFER)
        luaL_error(L, "vmstate_writer: buffer_size must be 4 KiB to 256 MiB");
    if (!vdk_image_is_writable(img))
        luaL_error(L, "vmstate_writer: the image is opened read-only");
    vmw *w = lua_newuserdatauv(L, sizeof *w, 0);
    memset(w, 0, sizeof *w);
    w->naive = naive;
    luaL_setmetatable(L, WRITER_MT);
    writer_init(L, w, img, (size_t)bs);
    return 1;
}

/* vdk.core.monotonic() -> seconds since an arbitrary point (for progress). */
static int l_monotonic(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
    return 1;
}

/* ---------------------------------------------------------------- registration */

static const luaL_Reg image_methods[] = {
    {"snapshots", m_snapshots},
    {"snapshot_create", m_snapshot_create},
    {"snapshot_apply", m_snapshot_apply},
    {"snapshot_delete", m_snapshot_delete},
    {"snapshot_load", m_snapshot_load},
    {"vmstate_write", m_vmstate_write},
    {"vmstate_read", m_vmstate_read},
    {"vmstate_discard", m_vmstate_discard},
    {NULL, NULL},
};

static const luaL_Reg writer_methods[] = {
    {"write", w_write},
    {"write_from", w_write_from},
    {"finish", w_finish},
    {"abort", w_abort},
    {NULL, NULL},
};

/* Called by luaopen_vdk_core with the module table on top of the stack. */
int vdk_lsnapshot_open(lua_State *L)
{
    lua_getfield(L, -1, "image_methods");
    luaL_setfuncs(L, image_methods, 0);
    lua_pop(L, 1);
    luaL_newmetatable(L, WRITER_MT);
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, w_gc);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, writer_methods);
    lua_pushcclosure(L, w_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, WRITER_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_vmstate_writer);
    lua_setfield(L, -2, "vmstate_writer");
    lua_pushcfunction(L, l_monotonic);
    lua_setfield(L, -2, "monotonic");
    return 0;
}
