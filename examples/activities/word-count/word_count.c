/* word-count — reactor ABI: {"text": "..."} -> {"words": N, "chars": M}. */
#include "loom.h"

static int count(const char *input, size_t len, loom_buf *out) {
    size_t n = 0;
    char *text = loom_json_get_string(input, len, "text", &n);
    if (!text) return loom_buf_puts(out, "input must be an object with a string field \"text\""), 1;
    size_t words = 0, chars = 0;
    int in_word = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if ((c & 0xC0) != 0x80) chars++;
        int space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
        if (!space && !in_word) words++;
        in_word = !space;
    }
    free(text);
    char json[64];
    int w = snprintf(json, sizeof json, "{\"words\":%zu,\"chars\":%zu}", words, chars);
    return loom_buf_append(out, json, (size_t)w);
}

LOOM_REACTOR(count)
