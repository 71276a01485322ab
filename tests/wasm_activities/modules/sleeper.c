/* Reactor with no grants that blocks in WASI calls: {"sleep_ms": N} sleeps (nanosleep ->
 * poll_oneoff) in 1 ms .. N ms slices, {"random_calls": N} makes N random_get calls. Used to
 * check that deadlines hold inside blocking WASI calls and that sleepers block no one. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "loom.h"

static long field(const char *input, size_t len, const char *name) {
    char text[256];
    size_t n = len < sizeof text - 1 ? len : sizeof text - 1;
    memcpy(text, input, n);
    text[n] = 0;
    const char *at = strstr(text, name);
    if (!at) return 0;
    at += strlen(name);
    while (*at == '"' || *at == ':' || *at == ' ') at++;
    return strtol(at, NULL, 10);
}

static int sleeper(const char *input, size_t len, loom_buf *out) {
    long sleep_ms = field(input, len, "\"sleep_ms\"");
    long slice_ms = field(input, len, "\"slice_ms\"");
    long random_calls = field(input, len, "\"random_calls\"");
    if (slice_ms <= 0) slice_ms = sleep_ms;
    for (long slept = 0; slept < sleep_ms; slept += slice_ms) {
        struct timespec ts = {slice_ms / 1000, (slice_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    unsigned char buf[64];
    for (long i = 0; i < random_calls; i++) getentropy(buf, sizeof buf);
    return loom_buf_append(out, "{\"woke\":true}", 13);
}

LOOM_REACTOR(sleeper)
