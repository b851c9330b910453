/*
 * test_file_lock.c - vdk's image locks against real QEMU 7.2 tools.
 *
 * (a) while `qemu-io -c 'sleep ...'` holds an image read-write, vdk's rw and
 *     ro opens fail with VDK_ELOCKED (and TRUNC leaves the file alone), a
 *     force-share open succeeds;
 * (b) while vdk holds it read-write, `qemu-img info` fails, `qemu-img info -U`
 *     succeeds and a qemu-io write fails;
 * (c) while vdk holds it read-only, `qemu-img info` succeeds and a qemu-io
 *     write fails;
 * (d) once vdk has closed it, qemu-io can write.
 * Also vdk against vdk in one process. Skips when qemu-io/qemu-img are
 * missing. The background qemu-io is always killed before exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "driver.h"
#include "file.h"

static int failures;
static char dir[] = "/tmp/vdk-test-lock-XXXXXX";
static char img[128];
static pid_t holder = -1;

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                            \
        }                                                                          \
    } while (0)

static bool in_path(const char *prog)
{
    const char *path = getenv("PATH");
    if (!path)
        path = "/usr/bin:/bin";
    char *copy = strdup(path), *save = NULL;
    bool found = false;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char full[512];
        snprintf(full, sizeof full, "%s/%s", d, prog);
        found = access(full, X_OK) == 0;
    }
    free(copy);
    return found;
}

/* Start argv with stdin/stdout on /dev/null and stderr into errfd (or
 * /dev/null). */
static pid_t spawn(char *const argv[], int errfd)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(errfd >= 0 ? errfd : null, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Run argv to completion; its exit status, with its stderr in msg. */
static int run(char *const argv[], char *msg, size_t msglen)
{
    char tmpl[] = "/tmp/vdk-test-lock-err-XXXXXX";
    int errfd = mkstemp(tmpl);
    unlink(tmpl);
    pid_t pid = spawn(argv, errfd);
    int status = -1;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    ssize_t n = pread(errfd, msg, msglen - 1, 0);
    msg[n > 0 ? n : 0] = '\0';
    close(errfd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int qemu_img_info(bool force_share, char *msg, size_t msglen)
{
    char *argv[] = {"qemu-img", "info", force_share ? "-U" : img, force_share ? img : NULL,
                    NULL};
    return run(argv, msg, msglen);
}

static int qemu_io_write(char *msg, size_t msglen)
{
    char *argv[] = {"qemu-io", "-f", "qcow2", "-c", "write 0 512", img, NULL};
    return run(argv, msg, msglen);
}

/* 1 when some other open file description holds a lock on byte. */
static int byte_locked(int byte)
{
    int fd = open(img, O_RDONLY);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    int r = fcntl(fd, F_OFD_GETLK, &fl);
    close(fd);
    return r < 0 ? -errno : fl.l_type != F_UNLCK;
}

/* Start qemu-io holding img read-write; wait until it has taken its locks. */
static bool start_holder(void)
{
    char *argv[] = {"qemu-io", "-f", "qcow2", "-c", "sleep 600000", img, NULL};
    holder = spawn(argv, -1);
    for (int i = 0; i < 3000; i++) { /* a bound, not a timing assumption */
        int status;
        if (waitpid(holder, &status, WNOHANG) == holder) {
            holder = -1;
            fprintf(stderr, "background qemu-io exited early\n");
            return false;
        }
        if (byte_locked(101) == 1 && byte_locked(203) == 1)
            return true;
        usleep(10000);
    }
    fprintf(stderr, "background qemu-io never took its locks\n");
    return false;
}

static void stop_holder(void)
{
    if (holder > 0) {
        kill(holder, SIGKILL);
        while (waitpid(holder, NULL, 0) < 0 && errno == EINTR)
            ;
        holder = -1;
    }
}

static uint64_t size_of(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* (a) QEMU holds the image read-write. */
static void test_qemu_holds(void)
{
    if (!start_holder()) {
        failures++;
        return;
    }
    vdk_file *f = NULL;
    vdk_error e = {0};
    CHECK(vdk_file_open(img, VDK_FILE_RDWR, VDK_CACHE_WRITEBACK, &f, &e) == VDK_ELOCKED);
    CHECK(f == NULL && e.code == VDK_ELOCKED);
    CHECK(strstr(e.msg, img) && strstr(e.msg, "Failed to get") &&
          strstr(e.msg, "is another process using the image?"));
    printf("rw open while qemu-io writes: %s\n", e.msg);

    CHECK(vdk_file_open(img, 0, VDK_CACHE_WRITEBACK, &f, &e) == VDK_ELOCKED);
    CHECK(strstr(e.msg, "Failed to get shared \"write\" lock") && strstr(e.msg, "-U"));
    printf("ro open while qemu-io writes: %s\n", e.msg);

    /* TRUNC must not destroy an image QEMU is using. */
    uint64_t before = size_of(img);
    CHECK(before > 0);
    CHECK(vdk_file_open(img, VDK_FILE_RDWR | VDK_FILE_TRUNC, VDK_CACHE_WRITEBACK, &f, &e) ==
          VDK_ELOCKED);
    CHECK(size_of(img) == before);

    /* Force-share reads anyway; cache=none too. */
    CHECK(vdk_file_open(img, VDK_FILE_FORCE_SHARE, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    if (f) {
        char magic[4];
        CHECK(vdk_file_pread(f, magic, 4, 0, &e) == 0 && memcmp(magic, "QFI\xfb", 4) == 0);
        vdk_file_unref(f);
    }
    CHECK(vdk_file_open(img, VDK_FILE_FORCE_SHARE, VDK_CACHE_NONE, &f, &e) == 0);
    vdk_file_unref(f);
    /* locking=off opens whatever the locks say. */
    CHECK(vdk_file_open(img, VDK_FILE_NOLOCK, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    vdk_file_unref(f);
    stop_holder();
}

/* (b) vdk holds it read-write; (c) read-only; (d) released. */
static void test_vdk_holds(void)
{
    char msg[1024];
    vdk_file *f = NULL;
    vdk_error e = {0};
    CHECK(vdk_file_open(img, VDK_FILE_RDWR, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    CHECK(qemu_img_info(false, msg, sizeof msg) != 0);
    CHECK(strstr(msg, "Failed to get shared \"write\" lock") != NULL);
    CHECK(qemu_img_info(true, msg, sizeof msg) == 0);
    CHECK(qemu_io_write(msg, sizeof msg) != 0);
    CHECK(strstr(msg, "Failed to get \"write\" lock") != NULL);
    /* Another vdk opener in this same process is refused too. */
    vdk_file *g = NULL;
    CHECK(vdk_file_open(img, 0, VDK_CACHE_WRITEBACK, &g, &e) == VDK_ELOCKED);
    CHECK(vdk_file_open(img, VDK_FILE_FORCE_SHARE, VDK_CACHE_WRITEBACK, &g, &e) == 0);
    vdk_file_unref(g);
    vdk_file_unref(f);

    CHECK(vdk_file_open(img, 0, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    CHECK(qemu_img_info(false, msg, sizeof msg) == 0);
    CHECK(qemu_io_write(msg, sizeof msg) != 0);
    CHECK(strstr(msg, "Failed to get \"write\" lock") != NULL);
    /* Readers share with readers, writers do not join them. */
    CHECK(vdk_file_open(img, 0, VDK_CACHE_NONE, &g, &e) == 0);
    vdk_file_unref(g);
    CHECK(vdk_file_open(img, VDK_FILE_RDWR, VDK_CACHE_WRITEBACK, &g, &e) == VDK_ELOCKED);
    CHECK(strstr(e.msg, "Failed to get \"write\" lock") != NULL);
    vdk_file_unref(f);

    CHECK(qemu_io_write(msg, sizeof msg) == 0);
    CHECK(vdk_file_open(img, VDK_FILE_RDWR, VDK_CACHE_WRITEBACK, &f, &e) == 0);
    vdk_file_unref(f);
}

int main(void)
{
    if (!in_path("qemu-io") || !in_path("qemu-img")) {
        printf("test_file_lock: skipped: qemu-io or qemu-img not found in PATH\n");
        return 0;
    }
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(img, sizeof img, "%s/disk.qcow2", dir);
    char msg[1024];
    char *create[] = {"qemu-img", "create", "-q", "-f", "qcow2", img, "1M", NULL};
    if (run(create, msg, sizeof msg) != 0) {
        fprintf(stderr, "qemu-img create failed: %s\n", msg);
        return 1;
    }
    test_qemu_holds();
    stop_holder();
    test_vdk_holds();
    unlink(img);
    rmdir(dir);
    if (failures) {
        fprintf(stderr, "test_file_lock: %d checks failed\n", failures);
        return 1;
    }
    printf("test_file_lock: all checks passed\n");
    return 0;
}
