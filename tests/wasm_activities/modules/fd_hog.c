/* Reactor that hoards file handles in its fs grant: {"open": N} opens /data/f up to N times
 * without closing any and reports how many opened and why the next one failed. Used to check
 * the per-call open-file cap and that the worker's own descriptors are never at stake. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "loom.h"

static int fd_hog(const char *input, size_t len, loom_buf *out) {
    char text[128];
    size_t n = len < sizeof text - 1 ? len : sizeof text - 1;
    memcpy(text, input, n);
    text[n] = 0;
    const char *at = strstr(text, "\"open\"");
    long wanted = at ? strtol(at + 7, NULL, 10) : 0;
    long opened = 0;
    const char *error = "none";
    for (; opened < wanted; opened++) {
        if (open("/data/f", O_RDONLY) < 0) {
            error = errno == EMFILE ? "EMFILE" : strerror(errno);
            break;
        }
    }
    char reply[160];
    int size = snprintf(reply, sizeof reply, "{\"opened\":%ld,\"error\":\"%s\"}", opened, error);
    return loom_buf_append(out, reply, (size_t)size);
}

LOOM_REACTOR(fd_hog)
