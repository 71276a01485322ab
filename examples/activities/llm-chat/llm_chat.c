/* llm-chat — reactor ABI: one OpenAI-compatible chat completion through the `loom` HTTP import.
 *
 * Input:  {"messages": [{"role": "...", "content": "..."}, ...],
 *          "endpoint"?: "http://host:port/v1/chat/completions", "model"?: "...",
 *          "max_tokens"?: N, "temperature"?: X}
 * Output: {"content": "...", "model": "...", "finish_reason": "...",
 *          "usage": {"prompt_tokens": N, "completion_tokens": N, "total_tokens": N}}
 *
 * `endpoint` and `model` default to the manifest's config. The API key is the placeholder
 * {{secret:OPENAI_API_KEY}}: the host substitutes it only for a granted host, so the key never
 * enters this module's memory. A host outside the grants aborts the call (CapabilityDenied).
 */
#include "loom.h"

/* -- a small JSON walker: enough to pick fields out of a well-formed document ------------- */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    return p;
}

static const char *skip_string(const char *p, const char *end) { /* p at the opening quote */
    for (p++; p < end && *p != '"'; p++)
        if (*p == '\\') p++;
    return p < end ? p + 1 : end;
}

static const char *skip_value(const char *p, const char *end) {
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
static const char *object_get(const char *p, const char *end, const char *key) {
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
static const char *array_get(const char *p, const char *end, int index) {
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

static void put_utf8(loom_buf *b, unsigned cp) {
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

static unsigned hex4(const char *p) {
    char digits[5] = {p[0], p[1], p[2], p[3], 0};
    return (unsigned)strtoul(digits, NULL, 16);
}

/* Decode the JSON string at `p` (escapes and surrogate pairs) into `out`; -1 if not a string. */
static int decode_string(const char *p, const char *end, loom_buf *out) {
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

static long number_at(const char *p, const char *end) {
    p = p ? skip_ws(p, end) : end;
    return p < end ? strtol(p, NULL, 10) : 0;
}

/* Append the raw JSON value of `key` in `input` as `"key": value,` when present. */
static void copy_field(loom_buf *b, const char *input, const char *end, const char *key) {
    const char *v = object_get(input, end, key);
    if (!v) return;
    loom_buf_puts(b, ",\"");
    loom_buf_puts(b, key);
    loom_buf_puts(b, "\":");
    loom_buf_append(b, v, (size_t)(skip_value(v, end) - v));
}

/* -- the activity -------------------------------------------------------------------------- */

static char *setting(const char *input, const char *end, const char *key) {
    loom_buf value = {0};
    if (decode_string(object_get(input, end, key), end, &value) == 0 && value.len) return value.data;
    free(value.data);
    return loom_config_get(key);
}

static int fail(loom_buf *out, const char *what, const char *detail) {
    out->len = 0;
    loom_buf_puts(out, what);
    if (detail) loom_buf_append(out, detail, strnlen(detail, 300));
    return 1;
}

static int parse_completion(const char *body, size_t n, loom_buf *out) {
    const char *end = body + n;
    const char *choice = array_get(object_get(body, end, "choices"), end, 0);
    const char *message = choice ? object_get(choice, end, "message") : NULL;
    loom_buf content = {0}, model = {0}, finish = {0};
    if (!message || decode_string(object_get(message, end, "content"), end, &content))
        return fail(out, "completion without choices[0].message.content: ", body);
    decode_string(object_get(body, end, "model"), end, &model);
    if (choice) decode_string(object_get(choice, end, "finish_reason"), end, &finish);
    const char *usage = object_get(body, end, "usage");
    long prompt = usage ? number_at(object_get(usage, end, "prompt_tokens"), end) : 0;
    long completion = usage ? number_at(object_get(usage, end, "completion_tokens"), end) : 0;
    long total = usage ? number_at(object_get(usage, end, "total_tokens"), end) : 0;
    loom_buf_puts(out, "{\"content\":");
    loom_buf_json_string(out, content.data, content.len);
    loom_buf_puts(out, ",\"model\":");
    loom_buf_json_string(out, model.data ? model.data : "", model.len);
    loom_buf_puts(out, ",\"finish_reason\":");
    loom_buf_json_string(out, finish.data ? finish.data : "", finish.len);
    char counts[128];
    snprintf(counts, sizeof counts,
             ",\"usage\":{\"prompt_tokens\":%ld,\"completion_tokens\":%ld,\"total_tokens\":%ld}}",
             prompt, completion, total ? total : prompt + completion);
    free(content.data), free(model.data), free(finish.data);
    return loom_buf_puts(out, counts);
}

static int chat(const char *input, size_t len, loom_buf *out) {
    const char *end = input + len;
    if (!object_get(input, end, "messages")) return fail(out, "input needs a \"messages\" array", NULL);
    char *endpoint = setting(input, end, "endpoint");
    char *model = setting(input, end, "model");
    if (!endpoint || !model) return fail(out, "no endpoint/model in the input or the config", NULL);

    loom_buf body = {0}, request = {0};
    loom_buf_puts(&body, "{\"model\":");
    loom_buf_json_string(&body, model, strlen(model));
    copy_field(&body, input, end, "messages");
    copy_field(&body, input, end, "max_tokens");
    copy_field(&body, input, end, "temperature");
    loom_buf_puts(&body, "}");
    loom_buf_puts(&request, "{\"method\":\"POST\",\"url\":");
    loom_buf_json_string(&request, endpoint, strlen(endpoint));
    loom_buf_puts(&request, ",\"headers\":{\"Content-Type\":\"application/json\","
                            "\"Authorization\":\"Bearer {{secret:OPENAI_API_KEY}}\"},\"body\":");
    loom_buf_json_string(&request, body.data, body.len);
    loom_buf_puts(&request, "}");
    free(body.data);

    int32_t code = 0;
    char *response = loom_http_request(request.data, &code);
    free(request.data);
    if (!response || code != 0) return fail(out, "request to the LLM endpoint failed: ", response);
    const char *rend = response + strlen(response);
    long status = number_at(object_get(response, rend, "status"), rend);
    loom_buf text = {0};
    decode_string(object_get(response, rend, "body"), rend, &text);
    if (status != 200) {
        char head[64];
        snprintf(head, sizeof head, "LLM endpoint answered HTTP %ld: ", status);
        return fail(out, head, text.data ? text.data : "");
    }
    int rc = parse_completion(text.data ? text.data : "", text.len, out);
    free(text.data), free(response), free(endpoint), free(model);
    return rc;
}

LOOM_REACTOR(chat)
