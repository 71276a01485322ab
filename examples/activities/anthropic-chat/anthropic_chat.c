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
#include "loom_json.h"

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
