/*
 * file-lock.c - image locking compatible with QEMU 7.2's file-posix driver.
 *
 * QEMU marks the permissions it holds on an image with OFD byte-range locks
 * (fcntl F_OFD_SETLK, always shared F_RDLCK locks of one byte):
 *
 *   byte 100 + bit   "I hold this permission"
 *   byte 200 + bit   "I do not let others hold this permission"
 *
 * with bits 0 consistent read, 1 write, 2 write unchanged, 3 resize (QEMU's
 * BLK_PERM_* values; byte 104/204 is a retired permission nobody checks).
 * An opener first takes its bytes, then tests with F_OFD_GETLK (as if for an
 * exclusive lock) that no other open file description holds the "not
 * shared" byte of a permission it wants, nor the "held" byte of a permission
 * it refuses to share. Taking before testing closes the race between two
 * openers: at least one of them sees the other.
 *
 * vdk takes what QEMU's format layer takes on an image's file node (checked
 * in /proc/locks against qemu-io 7.2 on qcow2 images):
 *   read-only   holds consistent read; shares consistent read and write
 *               unchanged (refuses writers and resizers), like qemu-img info
 *   read-write  holds consistent read, write, resize; shares the same two
 *   force-share holds consistent read; shares everything (-U)
 * The locks go away when the file's descriptor is closed.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "file-int.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

enum {
    PERM_CONSISTENT_READ = 0x01,
    PERM_WRITE = 0x02,
    PERM_WRITE_UNCHANGED = 0x04,
    PERM_RESIZE = 0x08,
    PERM_ALL = 0x0f,
    PERM_COUNT = 4,
};

static const char *const perm_names[PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

static void perms_for(unsigned flags, unsigned *perm, unsigned *shared)
{
    if (flags & VDK_FILE_FORCE_SHARE) {
        *perm = PERM_CONSISTENT_READ;
        *shared = PERM_ALL;
    } else if (flags & VDK_FILE_RDWR) {
        *perm = PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE;
        *shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    } else {
        *perm = PERM_CONSISTENT_READ;
        *shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    }
}

/* Take a shared lock on one byte: 0 or -errno. */
static int lock_byte(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
    };
    int r;
    do
        r = fcntl(fd, F_OFD_SETLK, &fl);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

/* 1 when another open file description holds a lock on the byte, 0 when not,
 * or -errno. */
static int test_byte(int fd, int byte)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1,
    };
    int r;
    do
        r = fcntl(fd, F_OFD_GETLK, &fl);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    return fl.l_type != F_UNLCK;
}

static bool locks_unsupported(int r)
{
    return r == -EINVAL || r == -ENOTSUP || r == -EOPNOTSUPP || r == -ENOSYS;
}

static int lock_conflict(const char *name, unsigned flags, const char *what,
                         const char *perm, vdk_error *err)
{
    bool reader = !(flags & (VDK_FILE_RDWR | VDK_FILE_FORCE_SHARE));
    return vdk_fail(err, VDK_ELOCKED,
                    "%s: Failed to get %s\"%s\" lock: is another process using the image?%s",
                    name, what, perm,
                    reader ? " (use -U/force-share to read it anyway, at your own risk)" : "");
}

/* Take the bytes for perm and ~shared. 1 when OFD locks are unsupported. */
static int take_bytes(int fd, const char *name, unsigned perm, unsigned shared,
                      vdk_error *err)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < PERM_COUNT; i++) {
            unsigned bit = 1u << i;
            bool want = pass == 0 ? (perm & bit) : !(shared & bit);
            if (!want)
                continue;
            int byte = (pass == 0 ? LOCK_PERM_BASE : LOCK_SHARED_BASE) + i;
            int r = lock_byte(fd, byte);
            if (r < 0 && locks_unsupported(r))
                return 1;
            if (r == -EAGAIN || r == -EACCES)
                return vdk_fail(err, VDK_ELOCKED, "%s: Failed to lock byte %d: "
                                "is another process using the image?", name, byte);
            if (r < 0)
                return vdk_fail(err, r, "%s: Failed to lock byte %d: %s", name, byte,
                                strerror(-r));
        }
    }
    return 0;
}

/* Test that nobody else conflicts with perm and shared. */
static int check_bytes(int fd, const char *name, unsigned flags, unsigned perm,
                       unsigned shared, vdk_error *err)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < PERM_COUNT; i++) {
            unsigned bit = 1u << i;
            bool want = pass == 0 ? (perm & bit) : !(shared & bit);
            if (!want)
                continue;
            int byte = (pass == 0 ? LOCK_SHARED_BASE : LOCK_PERM_BASE) + i;
            int r = test_byte(fd, byte);
            if (r < 0)
                return vdk_fail(err, r, "%s: Failed to test lock byte %d: %s", name,
                                byte, strerror(-r));
            if (r > 0)
                return lock_conflict(name, flags, pass == 0 ? "" : "shared ",
                                     perm_names[i], err);
        }
    }
    return 0;
}

int vdk_file_lock_fd(int fd, const char *name, unsigned flags, vdk_error *err)
{
    unsigned perm, shared;
    perms_for(flags, &perm, &shared);
    int r = take_bytes(fd, name, perm, shared, err);
    if (r == 1)
        return 0; /* no OFD locks on this file system: proceed unlocked, as QEMU */
    if (r < 0)
        return r;
    return check_bytes(fd, name, flags, perm, shared, err);
}
