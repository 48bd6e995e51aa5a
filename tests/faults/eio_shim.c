/* Test only: a disk that errs. Preloaded into redstuff processes, it makes
 * read(2) and pread(2) of a file fail with EIO while the directory named by
 * REDSTUFF_TEST_EIO_DIR holds a marker for it: a file named like the path
 * with every '/' turned into '%'. Other descriptors (sockets, pipes) and
 * other files are untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int should_fail(int fd) {
    const char *dir = getenv("REDSTUFF_TEST_EIO_DIR");
    char link[64], path[4096], marker[8192];
    if (!dir)
        return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len <= 0 || path[0] != '/')
        return 0;
    path[len] = 0;
    for (ssize_t i = 0; i < len; i++)
        if (path[i] == '/')
            path[i] = '%';
    snprintf(marker, sizeof marker, "%s/%s", dir, path);
    return access(marker, F_OK) == 0;
}

ssize_t read(int fd, void *buf, size_t count) {
    static ssize_t (*real)(int, void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd, buf, count);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real)
        real = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    if (should_fail(fd)) {
        errno = EIO;
        return -1;
    }
    return real(fd, buf, count, offset);
}
