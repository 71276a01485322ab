/* loom_json.h — reading and copying JSON in C activities (include after loom.h).
 *
 * A small walker that picks fields out of a well-formed document without building a tree
 * (object_get, array_get, array_first/array_next, decode_string, number_at), helpers that copy
 * raw values into a loom_buf (copy_raw, copy_as_string, copy_field), and the habits of an
 * activity that calls an HTTP JSON API: setting() (the input's value, else the manifest's
 * config), fail() (an error message in `out`) and post_json() (POST, HTTP 200 or an error).
 * Used by the llm-chat, openai-chat and anthropic-chat examples.
 */
#ifndef LOOM_JSON_H
#define LOOM_JSON_H

#include "loom.h"


static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    return p;
}

static inline const char *skip_string(const char *p, const char *end) { /* p at the opening quote */
    for (p++; p < end && *p != '"'; p++)
        if (*p == '\\') p++;
    return p < end ? p + 1 : end;
}

static inline const char *skip_value(const char *p, const char *end) {
    p = skip_ws(p, end);
    if (p >= end) return end;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') { p = skip_string(p, end); continue; }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
            p++;
        }
        return end;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n') p++;
    return p;
}

/* The value of `key` in the object starting at `p`, or NULL. */
static inline const char *object_get(const char *p, const char *end, const char *key) {
    size_t klen = strlen(key);
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end);
    while (p < end && *p == '"') {
        const char *name = p + 1, *after = skip_string(p, end);
        int match = (size_t)(after - 1 - name) == klen && memcmp(name, key, klen) == 0;
        p = skip_ws(after, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end);
        if (match) return p;
        p = skip_ws(skip_value(p, end), end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    return NULL;
}

/* Element `index` of the array starting at `p`, or NULL. */
static inline const char *array_get(const char *p, const char *end, int index) {
    p = skip_ws(p, end);
    if (p >= end || *p != '[') return NULL;
    p = skip_ws(p + 1, end);
    for (int i = 0; p < end && *p != ']'; i++) {
        if (i == index) return p;
        p = skip_ws(skip_value(p, end), end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    return NULL;
}

static inline void put_utf8(loom_buf *b, unsigned cp) {
    char u[4];
    size_t n = 0;
    if (cp < 0x80) u[n++] = (char)cp;
    else if (cp < 0x800) { u[n++] = (char)(0xC0 | (cp >> 6)); u[n++] = (char)(0x80 | (cp & 63)); }
    else if (cp < 0x10000) {
        u[n++] = (char)(0xE0 | (cp >> 12));
        u[n++] = (char)(0x80 | ((cp >> 6) & 63));
        u[n++] = (char)(0x80 | (cp & 63));
    } else {
        u[n++] = (char)(0xF0 | (cp >> 18));
        u[n++] = (char)(0x80 | ((cp >> 12) & 63));
        u[n++] = (char)(0x80 | ((cp >> 6) & 63));
        u[n++] = (char)(0x80 | (cp & 63));
    }
    loom_buf_append(b, u, n);
}

static inline unsigned hex4(const char *p) {
    char digits[5] = {p[0], p[1], p[2], p[3], 0};
    return (unsigned)strtoul(digits, NULL, 16);
}

/* Decode the JSON string at `p` (escapes and surrogate pairs) into `out`; -1 if not a string. */
static inline int decode_string(const char *p, const char *end, loom_buf *out) {
    if (!p || p >= end || *p != '"') return -1;
    if (loom_buf_reserve(out, 0)) return -1;
    for (p++; p < end && *p != '"'; p++) {
        char c = *p;
        if (c != '\\' || p + 1 >= end) { loom_buf_append(out, &c, 1); continue; }
        char e = *++p;
        if (e == 'u' && p + 4 < end) {
            unsigned cp = hex4(p + 1);
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p + 6 < end && p[1] == '\\' && p[2] == 'u') {
                unsigned low = hex4(p + 3);
                if (low >= 0xDC00 && low < 0xE000) { cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00); p += 6; }
            }
            put_utf8(out, cp);
            continue;
        }
        c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == 'b' ? '\b' : e == 'f' ? '\f' : e;
        loom_buf_append(out, &c, 1);
    }
    return 0;
}

static inline long number_at(const char *p, const char *end) {
    p = p ? skip_ws(p, end) : end;
    return p < end ? strtol(p, NULL, 10) : 0;
}

/* Append the raw JSON value of `key` in `input` as `"key": value,` when present. */
static inline void copy_field(loom_buf *b, const char *input, const char *end, const char *key) {
    const char *v = object_get(input, end, key);
    if (!v) return;
    loom_buf_puts(b, ",\"");
    loom_buf_puts(b, key);
    loom_buf_puts(b, "\":");
    loom_buf_append(b, v, (size_t)(skip_value(v, end) - v));
}


/* The raw JSON text of the value at `p`, appended to `b` (nothing when `p` is NULL). */
static inline void copy_raw(loom_buf *b, const char *p, const char *end) {
    if (p) loom_buf_append(b, p, (size_t)(skip_value(p, end) - p));
}

/* The value at `p` as a JSON string literal: a string is copied, anything else is quoted. */
static inline void copy_as_string(loom_buf *b, const char *p, const char *end) {
    if (!p) { loom_buf_puts(b, "\"{}\""); return; }
    if (*p == '"') { copy_raw(b, p, end); return; }
    loom_buf_json_string(b, p, (size_t)(skip_value(p, end) - p));
}

/* Does the JSON string at `p` equal `text`? */
static inline int string_is(const char *p, const char *end, const char *text) {
    size_t n = strlen(text);
    return p && p < end && *p == '"' && (size_t)(end - p) > n + 1 && memcmp(p + 1, text, n) == 0 &&
           p[n + 1] == '"';
}

/* Iterate the elements of the array at `p`: `for (const char *e = first(p); e; e = next(e))`. */
static inline const char *array_first(const char *p, const char *end) {
    p = p ? skip_ws(p, end) : end;
    if (p >= end || *p != '[') return NULL;
    p = skip_ws(p + 1, end);
    return p < end && *p != ']' ? p : NULL;
}

static inline const char *array_next(const char *p, const char *end) {
    p = skip_ws(skip_value(p, end), end);
    if (p < end && *p == ',') p = skip_ws(p + 1, end);
    return p < end && *p != ']' ? p : NULL;
}

static inline char *setting(const char *input, const char *end, const char *key) {
    loom_buf value = {0};
    if (decode_string(object_get(input, end, key), end, &value) == 0 && value.len) return value.data;
    free(value.data);
    return loom_config_get(key);
}

static inline int fail(loom_buf *out, const char *what, const char *detail) {
    out->len = 0;
    loom_buf_puts(out, what);
    if (detail) loom_buf_append(out, detail, strnlen(detail, 300));
    return 1;
}

/* POST `body` to `url` with `headers` (a JSON object's members, without braces); on HTTP 200
 * the decoded response body is left in `text` and 0 returned, else the error is in `out`. */
static inline int post_json(const char *url, const char *headers, loom_buf *body, loom_buf *text,
                     loom_buf *out) {
    loom_buf request = {0};
    loom_buf_puts(&request, "{\"method\":\"POST\",\"url\":");
    loom_buf_json_string(&request, url, strlen(url));
    loom_buf_puts(&request, ",\"headers\":{\"Content-Type\":\"application/json\",");
    loom_buf_puts(&request, headers);
    loom_buf_puts(&request, "},\"body\":");
    loom_buf_json_string(&request, body->data, body->len);
    loom_buf_puts(&request, "}");
    int32_t code = 0;
    char *response = loom_http_request(request.data, &code);
    free(request.data);
    if (!response || code != 0) return fail(out, "request to the LLM endpoint failed: ", response);
    const char *rend = response + strlen(response);
    long status = number_at(object_get(response, rend, "status"), rend);
    decode_string(object_get(response, rend, "body"), rend, text);
    free(response);
    if (status != 200) {
        char head[64];
        snprintf(head, sizeof head, "LLM endpoint answered HTTP %ld: ", status);
        return fail(out, head, text->data ? text->data : "");
    }
    if (!text->data) loom_buf_reserve(text, 0);
    return 0;
}


/* The end of a chat result (openai-chat, anthropic-chat): model, finish_reason, usage. */
static inline int put_result_tail(loom_buf *out, const loom_buf *model, const char *finish, long prompt,
                           long completion) {
    loom_buf_puts(out, ",\"model\":");
    loom_buf_json_string(out, model->data ? model->data : "", model->len);
    loom_buf_puts(out, ",\"finish_reason\":");
    loom_buf_json_string(out, finish, strlen(finish));
    char counts[128];
    snprintf(counts, sizeof counts,
             ",\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,\"total_tokens\":%ld}}",
             prompt, completion, prompt + completion);
    return loom_buf_puts(out, counts);
}

#endif
