/* Directory-level file operations for checkpoints and exports, built on io/fsio.h so that every
 * write, fsync, rename, unlink, mkdir and rmdir passes the fault-injection point. Reading a
 * directory (opendir/readdir/stat) changes nothing and is not counted. */
#ifndef MOEI_IO_CHECKPOINT_FS_H
#define MOEI_IO_CHECKPOINT_FS_H

#include <stddef.h>
#include <stdint.h>

#include "moe/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_ctx;

/* Create `path` (which must not exist), write `len` bytes, fsync, close. On failure the file is
 * removed. Returns MOE_OK or MOE_ERR_IO naming `fn`, the call, the path and strerror. */
moe_status moei_ckpt_write_file(struct moe_ctx *ctx, const char *path, const void *data, size_t len, const char *fn);

/* Replace `path` atomically: write "<path>.tmp-<pid>", fsync, close, rename over `path`, fsync
 * the directory. On failure before the rename the temp file is removed and `path` is unchanged. */
moe_status moei_ckpt_write_file_atomic(struct moe_ctx *ctx, const char *path, const void *data, size_t len,
                                       const char *fn);

/* Remove a directory tree (files and sub-directories, at most 8 levels deep) through fsio.
 * Returns 0, or -1 with errno set (the tree may then be partly removed). A missing path is 0. */
int moei_ckpt_remove_tree(const char *path);

/* 1 if `path` is an existing directory / regular file (stat, following links), else 0. */
int moei_ckpt_is_dir(const char *path);
int moei_ckpt_is_file(const char *path);

/* Entries of directory `dir` (not "." and ".."), malloc'ed: *names[i] each malloc'ed; free with
 * moei_ckpt_free_names(). Returns 0 or -1 with errno set. */
int moei_ckpt_list_dir(const char *dir, char ***names, size_t *count);
void moei_ckpt_free_names(char **names, size_t count);

/* a followed by b into buf (cap bytes); returns 0, or -1 when it does not fit. */
int moei_ckpt_concat(char *buf, size_t cap, const char *a, const char *b);

/* "a/b" into buf (cap bytes); returns 0, or -1 when it does not fit. */
int moei_ckpt_join(char *buf, size_t cap, const char *a, const char *b);

/* Whether process `pid` may still be running (so its temporary files must be left alone). */
int moei_ckpt_pid_alive(long pid);

#ifdef __cplusplus
}
#endif

#endif
