/* Durable file-system calls with a process-wide fault-injection point (see io/fsio.h).
 * Invariant: with no hook and no pending fault, each function is exactly its POSIX call plus the
 * loops POSIX requires (short writes, EINTR); the injection state costs one uncontended lock. */
#include "io/fsio.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t fault_calls;
static moei_fs_fault_fn fault_hook;
static void *fault_user;
static int64_t fail_at; /* call number to fail, 0 = none */
static int fail_errno;

/* Count the call and return the errno to inject, or 0. */
static int fault_check(moei_fs_op op, const char *path)
{
    int err = 0;
    pthread_mutex_lock(&fault_lock);
    uint64_t n = ++fault_calls;
    if (fail_at > 0 && n == (uint64_t)fail_at) {
        err = fail_errno;
        fail_at = 0;
    } else if (fault_hook) {
        moei_fs_fault_fn fn = fault_hook;
        void *user = fault_user;
        err = fn(op, path, n, user);
    }
    pthread_mutex_unlock(&fault_lock);
    return err;
}

void moei_fs_set_fault_hook(moei_fs_fault_fn fn, void *user_data)
{
    pthread_mutex_lock(&fault_lock);
    fault_hook = fn;
    fault_user = user_data;
    fail_at = 0;
    fault_calls = 0;
    pthread_mutex_unlock(&fault_lock);
}

void moei_fs_fail_nth(int64_t k, int err)
{
    pthread_mutex_lock(&fault_lock);
    fault_hook = NULL;
    fault_user = NULL;
    fail_at = k > 0 ? k : 0;
    fail_errno = err != 0 ? err : EIO;
    fault_calls = 0;
    pthread_mutex_unlock(&fault_lock);
}

void moei_fs_reset_faults(void) { moei_fs_set_fault_hook(NULL, NULL); }

uint64_t moei_fs_call_count(void)
{
    pthread_mutex_lock(&fault_lock);
    uint64_t n = fault_calls;
    pthread_mutex_unlock(&fault_lock);
    return n;
}

#define INJECT(op, path)                                                                                              \
    do {                                                                                                              \
        int injected_ = fault_check((op), (path));                                                                    \
        if (injected_) {                                                                                              \
            errno = injected_;                                                                                        \
            return -1;                                                                                                \
        }                                                                                                             \
    } while (0)

int moei_fs_open(const char *path, int flags, int mode)
{
    INJECT(MOEI_FS_OPEN, path);
    int fd;
    do {
        fd = open(path, flags | O_CLOEXEC, (mode_t)mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        /* Linux caps one write at 0x7ffff000 bytes; stay below it. */
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int moei_fs_write(int fd, const void *buf, size_t n)
{
    int injected = fault_check(MOEI_FS_WRITE, NULL);
    if (injected) {
        (void)write_all(fd, buf, n / 2); /* a torn write: the failure is what matters */
        errno = injected;
        return -1;
    }
    return write_all(fd, buf, n);
}

int moei_fs_fsync(int fd)
{
    INJECT(MOEI_FS_FSYNC, NULL);
    return fsync(fd);
}

int moei_fs_close(int fd)
{
    int injected = fault_check(MOEI_FS_CLOSE, NULL);
    /* Linux releases the descriptor even when close fails; retrying could close another file. */
    int r = close(fd);
    if (injected) {
        errno = injected;
        return -1;
    }
    return r;
}

int moei_fs_rename(const char *from, const char *to)
{
    INJECT(MOEI_FS_RENAME, to);
    return rename(from, to);
}

int moei_fs_unlink(const char *path)
{
    INJECT(MOEI_FS_UNLINK, path);
    return unlink(path);
}

int moei_fs_mkdir(const char *path, int mode)
{
    INJECT(MOEI_FS_MKDIR, path);
    return mkdir(path, (mode_t)mode);
}

int moei_fs_rmdir(const char *path)
{
    INJECT(MOEI_FS_RMDIR, path);
    return rmdir(path);
}

int moei_fs_fsync_dir(const char *dir)
{
    INJECT(MOEI_FS_FSYNC_DIR, dir);
    int fd;
    do {
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    int r = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

int moei_fs_fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return moei_fs_fsync_dir(".");
    if (slash == path) return moei_fs_fsync_dir("/");
    size_t n = (size_t)(slash - path);
    char *dir = malloc(n + 1);
    if (!dir) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(dir, path, n);
    dir[n] = '\0';
    int r = moei_fs_fsync_dir(dir);
    int saved = errno;
    free(dir);
    errno = saved;
    return r;
}
