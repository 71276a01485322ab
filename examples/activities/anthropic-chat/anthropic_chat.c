/* anthropic-chat — reactor ABI: one Messages API call (Anthropic) through the `loom` HTTP
 * import, with tools (tool_use / tool_result blocks).
 *
 * Input and output are the provider-neutral shapes of openai-chat (see its header): the
 * module moves system messages into `system`, turns assistant tool calls into tool_use
 * blocks and tool messages into tool_result blocks, and maps stop_reason to finish_reason
 * (end_turn -> stop, tool_use -> tool_calls, max_tokens -> length) and input/output tokens to
 * prompt/completion tokens. A `response_format` becomes an instruction in the system prompt
 * (the Messages API has no such field); the caller validates the answer.
 *
 * `endpoint` and `model` default to the manifest's config. The key is only ever the
 * placeholder {{secret:ANTHROPIC_API_KEY}}, filled in by the host for a granted host.
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


/* The raw JSON text of the value at `p`, appended to `b` (nothing when `p` is NULL). */
static void copy_raw(loom_buf *b, const char *p, const char *end) {
    if (p) loom_buf_append(b, p, (size_t)(skip_value(p, end) - p));
}

/* The value at `p` as a JSON string literal: a string is copied, anything else is quoted. */
static void copy_as_string(loom_buf *b, const char *p, const char *end) {
    if (!p) { loom_buf_puts(b, "\"{}\""); return; }
    if (*p == '"') { copy_raw(b, p, end); return; }
    loom_buf_json_string(b, p, (size_t)(skip_value(p, end) - p));
}

/* Does the JSON string at `p` equal `text`? */
static int string_is(const char *p, const char *end, const char *text) {
    size_t n = strlen(text);
    return p && p < end && *p == '"' && (size_t)(end - p) > n + 1 && memcmp(p + 1, text, n) == 0 &&
           p[n + 1] == '"';
}

/* Iterate the elements of the array at `p`: `for (const char *e = first(p); e; e = next(e))`. */
static const char *array_first(const char *p, const char *end) {
    p = p ? skip_ws(p, end) : end;
    if (p >= end || *p != '[') return NULL;
    p = skip_ws(p + 1, end);
    return p < end && *p != ']' ? p : NULL;
}

static const char *array_next(const char *p, const char *end) {
    p = skip_ws(skip_value(p, end), end);
    if (p < end && *p == ',') p = skip_ws(p + 1, end);
    return p < end && *p != ']' ? p : NULL;
}

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

/* POST `body` to `url` with `headers` (a JSON object's members, without braces); on HTTP 200
 * the decoded response body is left in `text` and 0 returned, else the error is in `out`. */
static int post_json(const char *url, const char *headers, loom_buf *body, loom_buf *text,
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

/* The tail every provider's result shares: model, finish_reason and usage. */
static int put_result_tail(loom_buf *out, const loom_buf *model, const char *finish, long prompt,
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

/* -- the activity -------------------------------------------------------------------------- */

/* The system prompt: every system message's text, then the output schema when one is asked. */
static void put_system(loom_buf *b, const char *messages, const char *input, const char *end) {
    loom_buf system = {0}, text = {0};
    for (const char *m = array_first(messages, end); m; m = array_next(m, end)) {
        if (!string_is(object_get(m, end, "role"), end, "system")) continue;
        text.len = 0;
        if (decode_string(object_get(m, end, "content"), end, &text)) continue;
        if (system.len) loom_buf_puts(&system, "\n\n");
        loom_buf_append(&system, text.data, text.len);
    }
    const char *format = object_get(input, end, "response_format");
    const char *schema = format ? object_get(object_get(format, end, "json_schema") ?: format, end, "schema") : NULL;
    if (format) {
        if (system.len) loom_buf_puts(&system, "\n\n");
        loom_buf_puts(&system, "Answer with one JSON value only, no prose and no code fence");
        if (schema) {
            loom_buf_puts(&system, ", matching this JSON Schema: ");
            copy_raw(&system, schema, end);
        }
        loom_buf_puts(&system, ".");
    }
    if (system.len) {
        loom_buf_puts(b, ",\"system\":");
        loom_buf_json_string(b, system.data, system.len);
    }
    free(system.data), free(text.data);
}

/* A tool call's arguments as the object `input` of a tool_use block. */
static void put_arguments_object(loom_buf *b, const char *args, const char *end) {
    loom_buf text = {0};
    if (args && *args == '{') copy_raw(b, args, end);
    else if (decode_string(args, end, &text) == 0 && text.len && *skip_ws(text.data, text.data + text.len) == '{')
        loom_buf_append(b, text.data, text.len);
    else loom_buf_puts(b, "{}");
    free(text.data);
}

static void put_assistant(loom_buf *b, const char *m, const char *end) {
    const char *content = object_get(m, end, "content");
    const char *calls = array_first(object_get(m, end, "tool_calls"), end);
    loom_buf_puts(b, "{\"role\":\"assistant\",\"content\":");
    if (!calls) {
        if (content) copy_raw(b, content, end); else loom_buf_puts(b, "\"\"");
        loom_buf_puts(b, "}");
        return;
    }
    loom_buf_puts(b, "[");
    int any = content && *content == '"' && content[1] != '"';
    if (any) {
        loom_buf_puts(b, "{\"type\":\"text\",\"text\":");
        copy_raw(b, content, end);
        loom_buf_puts(b, "}");
    }
    for (const char *c = calls; c; c = array_next(c, end), any = 1) {
        if (any) loom_buf_puts(b, ",");
        loom_buf_puts(b, "{\"type\":\"tool_use\",\"id\":");
        copy_raw(b, object_get(c, end, "id"), end);
        loom_buf_puts(b, ",\"name\":");
        copy_raw(b, object_get(c, end, "name"), end);
        loom_buf_puts(b, ",\"input\":");
        put_arguments_object(b, object_get(c, end, "arguments"), end);
        loom_buf_puts(b, "}");
    }
    loom_buf_puts(b, "]}");
}

/* Neutral messages as Messages API turns: system messages leave for `system`, assistant tool
 * calls become tool_use blocks, and consecutive tool results share one user turn. */
static void put_messages(loom_buf *b, const char *messages, const char *end) {
    loom_buf_puts(b, ",\"messages\":[");
    int first = 1, in_results = 0;
    for (const char *m = array_first(messages, end); m; m = array_next(m, end)) {
        const char *role = object_get(m, end, "role");
        if (string_is(role, end, "system")) continue;
        int is_tool = string_is(role, end, "tool");
        if (in_results && !is_tool) loom_buf_puts(b, "]}");
        if (!(in_results && is_tool) && !first) loom_buf_puts(b, ",");
        first = 0;
        if (is_tool) {
            loom_buf_puts(b, in_results ? "," : "{\"role\":\"user\",\"content\":[");
            in_results = 1;
            loom_buf_puts(b, "{\"type\":\"tool_result\",\"tool_use_id\":");
            copy_raw(b, object_get(m, end, "tool_call_id"), end);
            loom_buf_puts(b, ",\"content\":");
            copy_as_string(b, object_get(m, end, "content"), end);
            const char *is_error = object_get(m, end, "is_error");
            if (is_error && *is_error == 't') loom_buf_puts(b, ",\"is_error\":true");
            loom_buf_puts(b, "}");
            continue;
        }
        in_results = 0;
        if (string_is(role, end, "assistant")) { put_assistant(b, m, end); continue; }
        loom_buf_puts(b, "{\"role\":\"user\",\"content\":");
        copy_raw(b, object_get(m, end, "content"), end);
        loom_buf_puts(b, "}");
    }
    if (in_results) loom_buf_puts(b, "]}");
    loom_buf_puts(b, "]");
}

/* Neutral tools [{name, description, parameters}] as [{name, description, input_schema}]. */
static void put_tools(loom_buf *b, const char *tools, const char *end) {
    const char *t = array_first(tools, end);
    if (!t) return;
    loom_buf_puts(b, ",\"tools\":[");
    for (const char *first = t; t; t = array_next(t, end)) {
        if (t != first) loom_buf_puts(b, ",");
        loom_buf_puts(b, "{\"name\":");
        copy_raw(b, object_get(t, end, "name"), end);
        if (object_get(t, end, "description")) {
            loom_buf_puts(b, ",\"description\":");
            copy_raw(b, object_get(t, end, "description"), end);
        }
        loom_buf_puts(b, ",\"input_schema\":");
        const char *schema = object_get(t, end, "parameters");
        if (schema) copy_raw(b, schema, end); else loom_buf_puts(b, "{\"type\":\"object\"}");
        loom_buf_puts(b, "}");
    }
    loom_buf_puts(b, "]");
}

static const char *finish_reason(const loom_buf *stop) {
    if (!stop->data) return "";
    if (strcmp(stop->data, "end_turn") == 0 || strcmp(stop->data, "stop_sequence") == 0) return "stop";
    if (strcmp(stop->data, "tool_use") == 0) return "tool_calls";
    if (strcmp(stop->data, "max_tokens") == 0) return "length";
    return stop->data;
}

static int parse_message(const char *body, size_t n, loom_buf *out) {
    const char *end = body + n;
    const char *blocks = object_get(body, end, "content");
    if (!blocks || *blocks != '[') return fail(out, "message without a content array: ", body);
    loom_buf text = {0}, model = {0}, stop = {0}, calls = {0};
    for (const char *blk = array_first(blocks, end); blk; blk = array_next(blk, end)) {
        const char *type = object_get(blk, end, "type");
        if (string_is(type, end, "text")) {
            decode_string(object_get(blk, end, "text"), end, &text);
        } else if (string_is(type, end, "tool_use")) {
            loom_buf_puts(&calls, calls.len ? ",{\"id\":" : "{\"id\":");
            copy_raw(&calls, object_get(blk, end, "id"), end);
            loom_buf_puts(&calls, ",\"name\":");
            copy_raw(&calls, object_get(blk, end, "name"), end);
            loom_buf_puts(&calls, ",\"arguments\":");
            copy_as_string(&calls, object_get(blk, end, "input"), end);
            loom_buf_puts(&calls, "}");
        }
    }
    decode_string(object_get(body, end, "model"), end, &model);
    decode_string(object_get(body, end, "stop_reason"), end, &stop);
    loom_buf_puts(out, "{\"content\":");
    loom_buf_json_string(out, text.data ? text.data : "", text.len);
    loom_buf_puts(out, ",\"tool_calls\":[");
    if (calls.len) loom_buf_append(out, calls.data, calls.len);
    loom_buf_puts(out, "]");
    const char *usage = object_get(body, end, "usage");
    long prompt = usage ? number_at(object_get(usage, end, "input_tokens"), end) : 0;
    long completion = usage ? number_at(object_get(usage, end, "output_tokens"), end) : 0;
    int rc = put_result_tail(out, &model, finish_reason(&stop), prompt, completion);
    free(text.data), free(model.data), free(stop.data), free(calls.data);
    return rc;
}

static int chat(const char *input, size_t len, loom_buf *out) {
    const char *end = input + len;
    const char *messages = object_get(input, end, "messages");
    if (!array_first(messages, end)) return fail(out, "input needs a non-empty \"messages\" array", NULL);
    char *endpoint = setting(input, end, "endpoint");
    char *model = setting(input, end, "model");
    if (!endpoint || !model) return fail(out, "no endpoint/model in the input or the config", NULL);

    loom_buf body = {0}, text = {0};
    loom_buf_puts(&body, "{\"model\":");
    loom_buf_json_string(&body, model, strlen(model));
    loom_buf_puts(&body, ",\"max_tokens\":");
    const char *max_tokens = object_get(input, end, "max_tokens");
    if (max_tokens) copy_raw(&body, max_tokens, end); else loom_buf_puts(&body, "1024");
    put_system(&body, messages, input, end);
    put_messages(&body, messages, end);
    put_tools(&body, object_get(input, end, "tools"), end);
    copy_field(&body, input, end, "temperature");
    loom_buf_puts(&body, "}");
    const char *headers = "\"x-api-key\":\"{{secret:ANTHROPIC_API_KEY}}\","
                          "\"anthropic-version\":\"2023-06-01\"";
    int rc = post_json(endpoint, headers, &body, &text, out);
    if (rc == 0) rc = parse_message(text.data, text.len, out);
    free(body.data), free(text.data), free(endpoint), free(model);
    return rc;
}

LOOM_REACTOR(chat)
