/* Test only: a disk that errs or stalls. Preloaded into redstuff
 * processes, it makes read(2) and pread(2) of a file fail with EIO while
 * the directory named by REDSTUFF_TEST_EIO_DIR holds a marker for it: a
 * file named like the path with every '/' turned into '%' (EMFILE instead
 * when the marker says "EMFILE"). And while the
 * file named by REDSTUFF_TEST_STALL_MARKER exists, read, pread, write,
 * pwrite, fsync and fdatasync of every file whose path contains
 * REDSTUFF_TEST_STALL_PATH wait (as on a dead device or a hung network
 * volume), and go on once it is removed; so does statvfs of such a path.
 * And while the file named by REDSTUFF_TEST_WRITE_FAIL_MARKER exists,
 * writes and fsyncs of every file (or directory) whose path contains
 * REDSTUFF_TEST_WRITE_FAIL_PATH fail: with ENOSPC when the marker starts
 * with "ENOSPC", else EIO; only fsync and fdatasync when it ends with
 * "fsync" (the page cache took the bytes, the device refused them).
 * Other descriptors (sockets, pipes) and other files are untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* The errno a read of `fd` fails with, or 0: EIO, or EMFILE when the
 * marker's content starts with "EMFILE" (a node out of descriptors). */
static int should_fail(int fd) {
    const char *dir = getenv("REDSTUFF_TEST_EIO_DIR");
    char link[64], path[4096], marker[8192], says[8] = {0};
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
    FILE *file = fopen(marker, "r");
    if (!file)
        return 0;
    size_t got = fread(says, 1, sizeof says - 1, file);
    fclose(file);
    return got >= 6 && strncmp(says, "EMFILE", 6) == 0 ? EMFILE : EIO;
}

/* The path of `fd` when it is a file, else 0. */
static int fd_path(int fd, char *path, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, size - 1);
    if (len <= 0 || path[0] != '/')
        return 0;
    path[len] = 0;
    return 1;
}

/* Waits while the stall marker exists, when `fd` is a file of the stalled path. */
static void stall(int fd) {
    const char *marker = getenv("REDSTUFF_TEST_STALL_MARKER");
    const char *part = getenv("REDSTUFF_TEST_STALL_PATH");
    char path[4096];
    if (!marker || !part || !fd_path(fd, path, sizeof path) || !strstr(path, part))
        return;
    struct timespec pause = {0, 20 * 1000 * 1000};
    while (access(marker, F_OK) == 0)
        nanosleep(&pause, 0);
}

/* The errno a write (or, when `syncing`, an fsync) of `fd` fails with,
 * or 0. */
static int write_failure(int fd, int syncing) {
    const char *marker = getenv("REDSTUFF_TEST_WRITE_FAIL_MARKER");
    const char *part = getenv("REDSTUFF_TEST_WRITE_FAIL_PATH");
    char path[4096], says[32] = {0};
    if (!marker || !part || !fd_path(fd, path, sizeof path) || !strstr(path, part))
        return 0;
    FILE *file = fopen(marker, "r");
    if (!file)
        return 0;
    size_t got = fread(says, 1, sizeof says - 1, file);
    fclose(file);
    if (!syncing && got >= 5 && strcmp(says + got - 5, "fsync") == 0)
        return 0;
    return got >= 6 && strncmp(says, "ENOSPC", 6) == 0 ? ENOSPC : EIO;
}

ssize_t write(int fd, const void *buf, size_t count) {
    static ssize_t (*real)(int, const void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    stall(fd);
    int failure = write_failure(fd, 0);
    if (failure) {
        errno = failure;
        return -1;
    }
    return real(fd, buf, count);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (!real)
        real = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    stall(fd);
    int failure = write_failure(fd, 0);
    if (failure) {
        errno = failure;
        return -1;
    }
    return real(fd, buf, count, offset);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    stall(fd);
    int failure = write_failure(fd, 1);
    if (failure) {
        errno = failure;
        return -1;
    }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    stall(fd);
    int failure = write_failure(fd, 1);
    if (failure) {
        errno = failure;
        return -1;
    }
    return real(fd);
}

ssize_t read(int fd, void *buf, size_t count) {
    static ssize_t (*real)(int, void *, size_t);
    if (!real)
        real = (ssize_t(*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
    stall(fd);
    int failure = should_fail(fd);
    if (failure) {
        errno = failure;
        return -1;
    }
    return real(fd, buf, count);
}

ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (!real)
        real = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    stall(fd);
    int failure = should_fail(fd);
    if (failure) {
        errno = failure;
        return -1;
    }
    return real(fd, buf, count, offset);
}

/* Waits while the stall marker exists, when `path` is of the stalled path. */
static void stall_path(const char *path) {
    const char *marker = getenv("REDSTUFF_TEST_STALL_MARKER");
    const char *part = getenv("REDSTUFF_TEST_STALL_PATH");
    char slashed[4096];
    if (!marker || !part || !path)
        return;
    /* The data directory itself, named without its trailing slash. */
    snprintf(slashed, sizeof slashed, "%s/", path);
    if (!strstr(slashed, part))
        return;
    struct timespec pause = {0, 20 * 1000 * 1000};
    while (access(marker, F_OK) == 0)
        nanosleep(&pause, 0);
}

int statvfs(const char *path, struct statvfs *buf) {
    static int (*real)(const char *, struct statvfs *);
    if (!real)
        real = (int (*)(const char *, struct statvfs *))dlsym(RTLD_NEXT, "statvfs");
    stall_path(path);
    return real(path, buf);
}

int statvfs64(const char *path, struct statvfs64 *buf) {
    static int (*real)(const char *, struct statvfs64 *);
    if (!real)
        real = (int (*)(const char *, struct statvfs64 *))dlsym(RTLD_NEXT, "statvfs64");
    stall_path(path);
    return real(path, buf);
}
