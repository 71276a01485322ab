/* Hostile reactor: allocates and touches 1 MiB blocks until malloc fails, then aborts. */
#include "loom.h"

/* volatile sink: otherwise clang elides the unused allocations entirely */
static char *volatile sink;

static int bomb(const char *input, size_t len, loom_buf *out) {
    (void)input; (void)len;
    size_t total = 0;
    for (;;) {
        char *block = (char *)malloc(1 << 20);
        if (!block) abort();
        memset(block, 0xAB, 1 << 20);
        sink = block;
        total += 1 << 20;
        if (total > ((size_t)3 << 30)) break;
    }
    return loom_buf_puts(out, "{\"survived\":true}");
}

LOOM_REACTOR(bomb)
