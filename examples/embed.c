/*
 * embed.c - calling the vdk C library from a C program: create a qcow2
 * image, write and read guest data, ask where it is stored (block status),
 * and let the format explain how one offset resolves (the inspection API).
 *
 *   cc embed.c $(pkg-config --cflags --libs vdk) -o embed && ./embed [IMAGE]
 *
 * Without IMAGE it works on a temporary file that it removes at the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vdk.h>

/* An emitter that prints the answer of an inspection query as indented
 * "key: value" lines. */
typedef struct printer {
    vdk_emitter e;
    int depth;
} printer;

static void indent(printer *p, const char *key)
{
    printf("%*s%s%s", 2 * p->depth, "", key ? key : "-", key ? ": " : " ");
}
static void p_open(vdk_emitter *e, const char *key, int list)
{
    printer *p = (printer *)e;
    indent(p, key);
    printf("%s\n", list ? "[list]" : "");
    p->depth++;
}
static void p_close(vdk_emitter *e) { ((printer *)e)->depth--; }
static void p_integer(vdk_emitter *e, const char *key, int64_t v)
{
    indent((printer *)e, key);
    printf("%lld (0x%llx)\n", (long long)v, (unsigned long long)v);
}
static void p_string(vdk_emitter *e, const char *key, const char *s, size_t len)
{
    indent((printer *)e, key);
    printf("%.*s\n", (int)len, s);
}
static void p_boolean(vdk_emitter *e, const char *key, int v)
{
    indent((printer *)e, key);
    printf("%s\n", v ? "true" : "false");
}

static int fail(const char *what, const vdk_error *err)
{
    fprintf(stderr, "embed: %s: %s\n", what, err->msg);
    return 1;
}

int main(int argc, char **argv)
{
    char tmp[] = "/tmp/vdk-embed-XXXXXX";
    const char *path = argc > 1 ? argv[1] : NULL;
    if (!path) {
        int fd = mkstemp(tmp);
        if (fd < 0)
            return 1;
        close(fd);
        path = tmp;
    }
    vdk_error err;
    vdk_error_clear(&err);
    vdk_kv opts[] = {{"cluster_size", "65536"}};
    if (vdk_image_create(path, "qcow2", 64 << 20, opts, 1, &err) < 0)
        return fail("create", &err);

    vdk_open_opts oo = {.format = "qcow2", .flags = VDK_OPEN_RDWR};
    vdk_image *img;
    if (vdk_image_open(path, &oo, &img, &err) < 0)
        return fail("open", &err);
    static char buf[65536], back[65536];
    memset(buf, 'v', sizeof buf);
    if (vdk_image_pwrite(img, buf, sizeof buf, 1 << 20, &err) < 0 ||
        vdk_image_flush(img, &err) < 0 ||
        vdk_image_pread(img, back, sizeof back, 1 << 20, &err) < 0)
        return fail("I/O", &err);
    if (memcmp(buf, back, sizeof buf) != 0) {
        fprintf(stderr, "embed: read back something else\n");
        return 1;
    }

    vdk_extent ext;
    if (vdk_image_block_status(img, 1 << 20, 1 << 20, 0, &ext, &err) < 0)
        return fail("block status", &err);
    printf("%s: %s, %llu bytes virtual; guest 0x%llx: %llu bytes of %s at host 0x%llx\n",
           vdk_image_filename(img), vdk_image_format(img),
           (unsigned long long)vdk_image_size(img), (unsigned long long)ext.start,
           (unsigned long long)ext.length, ext.flags & VDK_BS_DATA ? "data" : "zeros",
           (unsigned long long)ext.offset);

    printer p = {.e = {p_open, p_close, p_integer, p_string, p_boolean, NULL}, .depth = 0};
    int64_t off = (1 << 20) + 10;
    if (vdk_image_inspect(img, "explain", &off, 1, &p.e, &err) < 0)
        return fail("explain", &err);

    if (vdk_image_close(img, &err) < 0)
        return fail("close", &err);
    if (path == tmp)
        unlink(tmp);
    return 0;
}
