/* openai-chat — reactor ABI: one Chat Completions call (OpenAI, Azure OpenAI or any compatible
 * endpoint) through the `loom` HTTP import, with tools and structured output.
 *
 * Input (provider-neutral, the same as anthropic-chat's):
 *   {"messages": [{"role": "system|user|assistant|tool", "content": "...",
 *                  "tool_calls"?: [{"id", "name", "arguments": "<JSON text>"}],
 *                  "tool_call_id"?: "..."}, ...],
 *    "tools"?: [{"name", "description", "parameters": <JSON Schema>}],
 *    "response_format"?: {...}, "tool_choice"?: ..., "max_tokens"?: N, "temperature"?: X,
 *    "endpoint"?: "...", "model"?: "..."}
 * Output: {"content", "tool_calls": [{"id", "name", "arguments"}], "model", "finish_reason",
 *          "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
 *
 * `endpoint` and `model` default to the manifest's config; config `auth = "api-key"` sends the
 * key as Azure's `api-key` header, and config `secret` names the secret. The key is only ever
 * the placeholder {{secret:NAME}}: the host fills it in for a granted host, so it never enters
 * this module's memory.
 */
#include "loom.h"
#include "loom_json.h"

/* -- the activity -------------------------------------------------------------------------- */

/* One neutral tool call {id, name, arguments} as OpenAI's {id, type, function}. */
static void put_tool_call(loom_buf *b, const char *call, const char *end) {
    loom_buf_puts(b, "{\"id\":");
    copy_raw(b, object_get(call, end, "id"), end);
    loom_buf_puts(b, ",\"type\":\"function\",\"function\":{\"name\":");
    copy_raw(b, object_get(call, end, "name"), end);
    loom_buf_puts(b, ",\"arguments\":");
    copy_as_string(b, object_get(call, end, "arguments"), end);
    loom_buf_puts(b, "}}");
}

static void put_messages(loom_buf *b, const char *messages, const char *end) {
    loom_buf_puts(b, ",\"messages\":[");
    int first = 1;
    for (const char *m = array_first(messages, end); m; m = array_next(m, end), first = 0) {
        if (!first) loom_buf_puts(b, ",");
        const char *content = object_get(m, end, "content");
        loom_buf_puts(b, "{\"role\":");
        copy_raw(b, object_get(m, end, "role"), end);
        loom_buf_puts(b, ",\"content\":");
        if (content) copy_raw(b, content, end); else loom_buf_puts(b, "\"\"");
        if (object_get(m, end, "tool_call_id")) {
            loom_buf_puts(b, ",\"tool_call_id\":");
            copy_raw(b, object_get(m, end, "tool_call_id"), end);
        }
        const char *calls = array_first(object_get(m, end, "tool_calls"), end);
        if (calls) {
            loom_buf_puts(b, ",\"tool_calls\":[");
            for (const char *c = calls; c; c = array_next(c, end)) {
                if (c != calls) loom_buf_puts(b, ",");
                put_tool_call(b, c, end);
            }
            loom_buf_puts(b, "]");
        }
        loom_buf_puts(b, "}");
    }
    loom_buf_puts(b, "]");
}

/* Neutral tools [{name, description, parameters}] as OpenAI's [{type: function, function}]. */
static void put_tools(loom_buf *b, const char *tools, const char *end) {
    const char *t = array_first(tools, end);
    if (!t) return;
    loom_buf_puts(b, ",\"tools\":[");
    for (const char *first = t; t; t = array_next(t, end)) {
        if (t != first) loom_buf_puts(b, ",");
        loom_buf_puts(b, "{\"type\":\"function\",\"function\":");
        copy_raw(b, t, end);
        loom_buf_puts(b, "}");
    }
    loom_buf_puts(b, "]");
}

static int parse_completion(const char *body, size_t n, loom_buf *out) {
    const char *end = body + n;
    const char *choice = array_get(object_get(body, end, "choices"), end, 0);
    const char *message = choice ? object_get(choice, end, "message") : NULL;
    if (!message) return fail(out, "completion without choices[0].message: ", body);
    loom_buf content = {0}, model = {0}, finish = {0};
    decode_string(object_get(message, end, "content"), end, &content); /* null with tool calls */
    decode_string(object_get(body, end, "model"), end, &model);
    decode_string(object_get(choice, end, "finish_reason"), end, &finish);
    loom_buf_puts(out, "{\"content\":");
    loom_buf_json_string(out, content.data ? content.data : "", content.len);
    loom_buf_puts(out, ",\"tool_calls\":[");
    const char *calls = array_first(object_get(message, end, "tool_calls"), end);
    for (const char *c = calls; c; c = array_next(c, end)) {
        const char *fn = object_get(c, end, "function");
        if (!fn) return fail(out, "tool call without a function: ", c);
        if (c != calls) loom_buf_puts(out, ",");
        loom_buf_puts(out, "{\"id\":");
        copy_raw(out, object_get(c, end, "id"), end);
        loom_buf_puts(out, ",\"name\":");
        copy_raw(out, object_get(fn, end, "name"), end);
        loom_buf_puts(out, ",\"arguments\":");
        copy_as_string(out, object_get(fn, end, "arguments"), end);
        loom_buf_puts(out, "}");
    }
    loom_buf_puts(out, "]");
    const char *usage = object_get(body, end, "usage");
    long prompt = usage ? number_at(object_get(usage, end, "prompt_tokens"), end) : 0;
    long completion = usage ? number_at(object_get(usage, end, "completion_tokens"), end) : 0;
    int rc = put_result_tail(out, &model, finish.data ? finish.data : "", prompt, completion);
    free(content.data), free(model.data), free(finish.data);
    return rc;
}

/* The auth header: `Authorization: Bearer` for OpenAI, `api-key` for Azure (config auth =
 * "api-key"); the secret's name comes from config `secret` (default OPENAI_API_KEY). */
static void put_auth(loom_buf *h) {
    char *auth = loom_config_get("auth"), *secret = loom_config_get("secret");
    const char *name = secret && *secret ? secret : "OPENAI_API_KEY";
    int azure = auth && strcmp(auth, "api-key") == 0;
    loom_buf_puts(h, azure ? "\"api-key\":\"{{secret:" : "\"Authorization\":\"Bearer {{secret:");
    loom_buf_puts(h, name);
    loom_buf_puts(h, "}}\"");
    free(auth), free(secret);
}

static int chat(const char *input, size_t len, loom_buf *out) {
    const char *end = input + len;
    const char *messages = object_get(input, end, "messages");
    if (!array_first(messages, end)) return fail(out, "input needs a non-empty \"messages\" array", NULL);
    char *endpoint = setting(input, end, "endpoint");
    char *model = setting(input, end, "model");
    if (!endpoint || !model) return fail(out, "no endpoint/model in the input or the config", NULL);

    loom_buf body = {0}, headers = {0}, text = {0};
    loom_buf_puts(&body, "{\"model\":");
    loom_buf_json_string(&body, model, strlen(model));
    put_messages(&body, messages, end);
    put_tools(&body, object_get(input, end, "tools"), end);
    copy_field(&body, input, end, "tool_choice");
    copy_field(&body, input, end, "response_format");
    copy_field(&body, input, end, "max_tokens");
    copy_field(&body, input, end, "temperature");
    loom_buf_puts(&body, "}");
    put_auth(&headers);
    int rc = post_json(endpoint, headers.data, &body, &text, out);
    if (rc == 0) rc = parse_completion(text.data, text.len, out);
    free(body.data), free(headers.data), free(text.data), free(endpoint), free(model);
    return rc;
}

LOOM_REACTOR(chat)
