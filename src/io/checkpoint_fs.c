/* Durable small files and directory trees for checkpoints (see io/checkpoint_fs.h). Every call that
 * changes the file system goes through io/fsio.h, so a test can fail any one of them. */
#include "io/checkpoint_fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fsio.h"

int moei_ckpt_join(char *buf, size_t cap, const char *a, const char *b)
{
    int n = snprintf(buf, cap, "%s/%s", a, b);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

int moei_ckpt_concat(char *buf, size_t cap, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb >= cap) return -1;
    memmove(buf, a, la);
    memcpy(buf + la, b, lb + 1);
    return 0;
}

int moei_ckpt_is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int moei_ckpt_is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int moei_ckpt_pid_alive(long pid)
{
    if (pid <= 0 || (long)(pid_t)pid != pid) return 0;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

void moei_ckpt_free_names(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
}

int moei_ckpt_list_dir(const char *dir, char ***names, size_t *count)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **v = NULL;
    size_t n = 0, cap = 0;
    int err = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            err = errno;
            break;
        }
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            char **nv = realloc(v, nc * sizeof *nv);
            if (!nv) {
                err = ENOMEM;
                break;
            }
            v = nv;
            cap = nc;
        }
        size_t len = strlen(e->d_name) + 1;
        v[n] = malloc(len);
        if (!v[n]) {
            err = ENOMEM;
            break;
        }
        memcpy(v[n++], e->d_name, len);
    }
    closedir(d);
    if (err) {
        moei_ckpt_free_names(v, n);
        errno = err;
        return -1;
    }
    *names = v;
    *count = n;
    return 0;
}

static int remove_tree_depth(const char *path, int depth)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(sb.st_mode)) return moei_fs_unlink(path);
    if (depth > 8) {
        errno = ELOOP;
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    if (moei_ckpt_list_dir(path, &names, &n) != 0) return -1;
    int r = 0;
    size_t cap = strlen(path) + 2 + 256;
    char *child = malloc(cap);
    if (!child) {
        moei_ckpt_free_names(names, n);
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; r == 0 && i < n; i++) {
        if (moei_ckpt_join(child, cap, path, names[i]) != 0) {
            errno = ENAMETOOLONG;
            r = -1;
        } else {
            r = remove_tree_depth(child, depth + 1);
        }
    }
    int saved = errno;
    free(child);
    moei_ckpt_free_names(names, n);
    if (r != 0) {
        errno = saved;
        return -1;
    }
    return moei_fs_rmdir(path);
}

int moei_ckpt_remove_tree(const char *path) { return remove_tree_depth(path, 0); }

moe_status moei_ckpt_write_file(struct moe_ctx *ctx, const char *path, const void *data, size_t len, const char *fn)
{
    const char *what = "open";
    int fd = moei_fs_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) goto fail;
    what = "write";
    if (moei_fs_write(fd, data, len) != 0) goto fail;
    what = "fsync";
    if (moei_fs_fsync(fd) != 0) goto fail;
    what = "close";
    {
        int r = moei_fs_close(fd);
        fd = -1;
        if (r != 0) goto fail;
    }
    return MOE_OK;
fail:;
    int err = errno;
    if (fd >= 0) (void)moei_fs_close(fd);
    if (strcmp(what, "open") != 0) (void)moei_fs_unlink(path);
    return moei_fail(ctx, MOE_ERR_IO, "%s: %s of '%.300s' failed: %s", fn, what, path, strerror(err));
}

moe_status moei_ckpt_write_file_atomic(struct moe_ctx *ctx, const char *path, const void *data, size_t len,
                                       const char *fn)
{
    size_t cap = strlen(path) + 32;
    char *tmp = malloc(cap);
    if (!tmp) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    snprintf(tmp, cap, "%s.tmp-%ld", path, (long)getpid());
    moe_status st = moei_ckpt_write_file(ctx, tmp, data, len, fn);
    if (st == MOE_OK && moei_fs_rename(tmp, path) != 0) {
        int err = errno;
        (void)moei_fs_unlink(tmp);
        st = moei_fail(ctx, MOE_ERR_IO, "%s: rename of '%.300s' to '%.300s' failed: %s", fn, tmp, path, strerror(err));
    }
    free(tmp);
    if (st == MOE_OK && moei_fs_fsync_parent(path) != 0)
        st = moei_fail(ctx, MOE_ERR_IO, "%s: fsync of the directory of '%.300s' failed: %s", fn, path, strerror(errno));
    return st;
}
