/* Reactor that writes to WASI stdout and stderr (both become logs), then echoes its input. */
#include <stdio.h>
#include "loom.h"

static int chatty(const char *input, size_t len, loom_buf *out) {
    for (int i = 0; i < 3; i++) {
        fprintf(stderr, "stderr line %d\n", i);
        fflush(stderr);
        printf("stdout line %d\n", i);
        fflush(stdout);
    }
    return loom_buf_append(out, input, len);
}

LOOM_REACTOR(chatty)
