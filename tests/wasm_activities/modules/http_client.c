/* HTTP client reactor. Input: {"request": "<request JSON>", "needle_xor": "<hex>"}.
 * Performs loom.http_request, reads config "API_KEY", then scans ALL of its linear memory for
 * the needle (given XOR 0x5A so the input does not contain it) and reports the hit count.
 * Output: {"code": n, "response": "<response JSON>", "config": "<value>", "leaks": k}. */
#include "loom.h"

/* volatile: address 0 is valid wasm memory, but a literal null pointer would let the
 * optimiser delete the scan as undefined behaviour. */
static volatile uintptr_t memory_base = 0;

static size_t scan(const unsigned char *needle, size_t n) {
    size_t hits = 0, end = __builtin_wasm_memory_size(0) * 65536;
    const unsigned char *mem = (const unsigned char *)memory_base;
    for (size_t i = 1; n && i + n <= end; i++) {
        if (mem + i == needle) continue;
        if (mem[i] == needle[0] && memcmp(mem + i, needle, n) == 0) hits++;
    }
    return hits;
}

static int fetch(const char *input, size_t len, loom_buf *out) {
    size_t rlen = 0, hlen = 0;
    char *request = loom_json_get_string(input, len, "request", &rlen);
    char *hex = loom_json_get_string(input, len, "needle_xor", &hlen);
    if (!request || !hex) return loom_buf_puts(out, "need request and needle_xor"), 1;
    int32_t code = 0;
    char *response = loom_http_request(request, &code);
    char *config = loom_config_get("API_KEY");
    loom_log(config ? config : "(no API_KEY)");
    unsigned char *needle = (unsigned char *)malloc(hlen / 2 + 1);
    for (size_t i = 0; i + 1 < hlen; i += 2) {
        char pair[3] = {hex[i], hex[i + 1], 0};
        needle[i / 2] = (unsigned char)strtoul(pair, NULL, 16) ^ 0x5A;
    }
    size_t leaks = scan(needle, hlen / 2);
    memset(needle, 0, hlen / 2);
    char head[64];
    snprintf(head, sizeof head, "{\"code\":%d,\"leaks\":%zu,\"response\":", code, leaks);
    loom_buf_puts(out, head);
    if (response) loom_buf_json_string(out, response, strlen(response));
    else loom_buf_puts(out, "null");
    loom_buf_puts(out, ",\"config\":");
    if (config) loom_buf_json_string(out, config, strlen(config));
    else loom_buf_puts(out, "null");
    return loom_buf_puts(out, "}");
}

LOOM_REACTOR(fetch)
