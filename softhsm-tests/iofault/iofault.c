/* Test-only fault injection (issue 14.3): an LD_PRELOAD shim that fails the write and sync calls SQLite's unix
 * VFS makes on one database with EIO, on demand. Built by softhsm-tests/io_faults.rs into its temporary
 * directory and preloaded into `anchorlog serve` there; never part of a build of the appliance.
 *
 * ANCHORLOG_IOFAULT_PATH     substring of the paths to fail (the database file name: also its -wal and -shm)
 * ANCHORLOG_IOFAULT_CONTROL  a file; while it exists and holds "fsync" (fsync, fdatasync) or "write" (write,
 *                            pwrite, pwrite64), those calls on matching files fail with EIO. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int armed(const char *kind) {
    const char *control = getenv("ANCHORLOG_IOFAULT_CONTROL");
    if (!control) return 0;
    int fd = open(control, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[16] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 && strncmp(buf, kind, strlen(kind)) == 0;
}

static int targeted(int fd) {
    const char *path = getenv("ANCHORLOG_IOFAULT_PATH");
    if (!path || fd < 0) return 0;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strstr(target, path) != NULL;
}

#define FAIL_IF(kind, fd)                                                                                        \
    if (targeted(fd) && armed(kind)) {                                                                         \
        errno = EIO;                                                                                           \
        return -1;                                                                                             \
    }

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    FAIL_IF("fsync", fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    FAIL_IF("fsync", fd);
    return real(fd);
}

ssize_t write(int fd, const void *buf, size_t count) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real) real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    FAIL_IF("write", fd);
    return real(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real) real = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    FAIL_IF("write", fd);
    return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off64_t);
    if (!real) real = (ssize_t(*)(int, const void *, size_t, off64_t))dlsym(RTLD_NEXT, "pwrite64");
    FAIL_IF("write", fd);
    return real(fd, buf, count, offset);
}
