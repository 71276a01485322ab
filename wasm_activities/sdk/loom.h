/* loom.h — guest SDK for Loom WebAssembly activities (C, wasm32-wasi).
 *
 * Reactor ABI: define one function
 *     int loom_handle(const char *input, size_t input_len, loom_buf *out);
 * and put LOOM_REACTOR(loom_handle) in exactly one .c file. Return 0 with JSON in `out`, or
 * non-zero with an error message in `out` (the host raises GuestError with it).
 * Build: python -m ziglang cc --target=wasm32-wasi -O2 -mexec-model=reactor -Wl,-z,stack-size=65536 -s act.c -o act.wasm
 *
 * Command ABI: read JSON from stdin, write JSON to stdout, log to stderr, exit(0).
 *
 * Host imports (module "loom"): see wasm_activities/ABI.md. Secrets are only ever seen as
 * "{{secret:NAME}}" placeholders: put them in URLs, headers or bodies and the host fills them in
 * for granted hosts.
 */
#ifndef LOOM_H
#define LOOM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#define LOOM_IMPORT(name) __attribute__((import_module("loom"), import_name(name)))

LOOM_IMPORT("log") void loom_log_raw(const char *ptr, int32_t len);
LOOM_IMPORT("config_get") int32_t loom_config_get_raw(const char *key, int32_t key_len);
LOOM_IMPORT("http_request") int32_t loom_http_request_raw(const char *req, int32_t len);
LOOM_IMPORT("take") int32_t loom_take_raw(char *buf, int32_t len);

/* A growable byte buffer; `data` is always NUL-terminated (not counted in `len`). */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} loom_buf;

static inline int loom_buf_reserve(loom_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    char *data = (char *)realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int loom_buf_append(loom_buf *b, const char *s, size_t n) {
    if (loom_buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

static inline int loom_buf_puts(loom_buf *b, const char *s) { return loom_buf_append(b, s, strlen(s)); }

/* Append `s` as a JSON string literal (with quotes and escapes). */
static inline int loom_buf_json_string(loom_buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (loom_buf_append(b, "\"", 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            if (loom_buf_append(b, esc, 2)) return -1;
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (loom_buf_append(b, esc, 6)) return -1;
        } else if (loom_buf_append(b, (const char *)&c, 1)) {
            return -1;
        }
    }
    return loom_buf_append(b, "\"", 1);
}

static inline void loom_log(const char *msg) { loom_log_raw(msg, (int32_t)strlen(msg)); }

/* Fetch the pending host result of `len` bytes into a fresh NUL-terminated buffer. */
static inline char *loom_take(int32_t len) {
    char *buf = (char *)malloc((size_t)len + 1);
    if (!buf) return NULL;
    int32_t got = loom_take_raw(buf, len);
    buf[got < 0 ? 0 : got] = 0;
    return buf;
}

/* Config value (or "{{secret:NAME}}" for a granted secret) as a malloc'd string, or NULL. */
static inline char *loom_config_get(const char *key) {
    int32_t len = loom_config_get_raw(key, (int32_t)strlen(key));
    return len < 0 ? NULL : loom_take(len);
}

/* Perform an HTTP request described by JSON {"method","url","headers":{},"body":""}.
 * Returns the malloc'd response JSON {"status","headers","body"} (or {"error": ...}) and sets
 * *code to 0, or to a negative code (-2 network, -3 bad request, -4 response too large).
 * A request to a host outside the grants aborts the activity with CapabilityDenied. */
static inline char *loom_http_request(const char *request_json, int32_t *code) {
    int32_t n = loom_http_request_raw(request_json, (int32_t)strlen(request_json));
    *code = n < 0 ? n : 0;
    if (n == -1) return NULL;
    return loom_take(n < 0 ? 4096 : n); /* on error, a short {"error": ...} detail is pending */
}

/* Find the string value of top-level-ish key `key` in `json` (first occurrence of "key":"…")
 * and decode its escapes into a malloc'd UTF-8 string; NULL when absent. */
static inline char *loom_json_get_string(const char *json, size_t n, const char *key, size_t *out_len) {
    size_t klen = strlen(key);
    for (size_t i = 0; i + klen + 2 < n; i++) {
        if (json[i] != '"' || memcmp(json + i + 1, key, klen) != 0 || json[i + klen + 1] != '"') continue;
        size_t j = i + klen + 2;
        while (j < n && (json[j] == ' ' || json[j] == ':' || json[j] == '\t' || json[j] == '\n')) j++;
        if (j >= n || json[j] != '"') return NULL;
        loom_buf out = {0};
        for (j++; j < n && json[j] != '"'; j++) {
            char c = json[j];
            if (c == '\\' && j + 1 < n) {
                char e = json[++j];
                c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : e == 'f' ? '\f' : e;
                if (e == 'u' && j + 4 < n) { /* \uXXXX: BMP code point to UTF-8 */
                    unsigned cp = (unsigned)strtoul((char[5]){json[j + 1], json[j + 2], json[j + 3], json[j + 4], 0}, NULL, 16);
                    char u[3];
                    size_t un = 0;
                    if (cp < 0x80) u[un++] = (char)cp;
                    else if (cp < 0x800) { u[un++] = (char)(0xC0 | (cp >> 6)); u[un++] = (char)(0x80 | (cp & 63)); }
                    else { u[un++] = (char)(0xE0 | (cp >> 12)); u[un++] = (char)(0x80 | ((cp >> 6) & 63)); u[un++] = (char)(0x80 | (cp & 63)); }
                    if (loom_buf_append(&out, u, un)) return NULL;
                    j += 4;
                    continue;
                }
            }
            if (loom_buf_append(&out, &c, 1)) return NULL;
        }
        if (!out.data && loom_buf_reserve(&out, 0)) return NULL;
        if (out_len) *out_len = out.len;
        return out.data;
    }
    return NULL;
}

#define LOOM_PACK(ptr, len) (((int64_t)(uintptr_t)(ptr) << 32) | (int64_t)(uint32_t)(len))

/* Defines the reactor exports alloc() and run() around `handler`. */
#define LOOM_REACTOR(handler)                                                              \
    __attribute__((export_name("alloc"))) void *alloc(int32_t len) {                       \
        return malloc(len > 0 ? (size_t)len : 1);                                          \
    }                                                                                      \
    __attribute__((export_name("run"))) int64_t run(char *input, int32_t len) {            \
        loom_buf out = {0};                                                                \
        int rc = handler(input, (size_t)len, &out);                                        \
        free(input);                                                                       \
        if (!out.data) loom_buf_reserve(&out, 0);                                          \
        int64_t packed = LOOM_PACK(out.data, out.len);                                     \
        return rc == 0 ? packed : -packed;                                                 \
    }

#endif
