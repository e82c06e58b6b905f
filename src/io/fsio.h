/* The file-system calls that make files durable (open, write, fsync, close, rename, unlink, mkdir,
 * directory fsync), behind one indirection so tests can make any single call fail and check that
 * writers leave either the previous file or the new complete one, never a torn file or a temp file.
 * Every function has POSIX conventions: 0 (or an fd) on success, -1 with errno set on failure. */
#ifndef MOEI_IO_FSIO_H
#define MOEI_IO_FSIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Which call a fault hook is asked about. */
typedef enum moei_fs_op {
    MOEI_FS_OPEN = 0,
    MOEI_FS_WRITE = 1,
    MOEI_FS_FSYNC = 2,
    MOEI_FS_CLOSE = 3,
    MOEI_FS_RENAME = 4,
    MOEI_FS_UNLINK = 5,
    MOEI_FS_MKDIR = 6,
    MOEI_FS_RMDIR = 7,
    MOEI_FS_FSYNC_DIR = 8
} moei_fs_op;

/* open(2) (O_CLOEXEC is added). */
int moei_fs_open(const char *path, int flags, int mode);
/* Write all `n` bytes, looping over short writes and EINTR. An injected failure writes the first
 * half of the bytes before failing, as a disk that fills up mid-write would. */
int moei_fs_write(int fd, const void *buf, size_t n);
/* fsync(2). */
int moei_fs_fsync(int fd);
/* close(2). The descriptor is released even when the call (or an injected fault) fails. */
int moei_fs_close(int fd);
/* rename(2): atomically replaces `to`. */
int moei_fs_rename(const char *from, const char *to);
/* unlink(2). */
int moei_fs_unlink(const char *path);
/* mkdir(2). */
int moei_fs_mkdir(const char *path, int mode);
/* rmdir(2). */
int moei_fs_rmdir(const char *path);
/* Make the entries of directory `dir` durable: open it read-only, fsync, close (one counted call). */
int moei_fs_fsync_dir(const char *dir);
/* moei_fs_fsync_dir() on the directory that holds `path` ("." when `path` has no '/'). */
int moei_fs_fsync_parent(const char *path);

/*
 * Fault injection, for tests. Process-wide; thread-safe. Every call above counts once (one
 * moei_fs_write counts once whatever its size), numbered 1, 2, ... since the last reset.
 *
 * A hook, when set, is asked before each call: it returns 0 to let the call run or an errno value
 * (EIO, ENOSPC, ...) to make it fail with that errno. `path` is NULL for calls on a descriptor.
 * The hook runs under the injection lock: it must not call the functions of this header.
 */
typedef int (*moei_fs_fault_fn)(moei_fs_op op, const char *path, uint64_t call_number, void *user_data);

/* Install `fn` (NULL removes it) and reset the call counter to 0. */
void moei_fs_set_fault_hook(moei_fs_fault_fn fn, void *user_data);
/* Make call number `k` (counted from now, 1-based) fail with errno `err`, once; k <= 0 disables.
 * Resets the counter; replaces any hook. */
void moei_fs_fail_nth(int64_t k, int err);
/* Remove every fault and reset the counter. */
void moei_fs_reset_faults(void);
/* Calls counted since the last reset. */
uint64_t moei_fs_call_count(void);

#ifdef __cplusplus
}
#endif

#endif
