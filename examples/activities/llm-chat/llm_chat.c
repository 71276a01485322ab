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
#include "loom_json.h"

/* -- the activity -------------------------------------------------------------------------- */

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

    loom_buf body = {0}, text = {0};
    loom_buf_puts(&body, "{\"model\":");
    loom_buf_json_string(&body, model, strlen(model));
    copy_field(&body, input, end, "messages");
    copy_field(&body, input, end, "max_tokens");
    copy_field(&body, input, end, "temperature");
    loom_buf_puts(&body, "}");
    const char *auth = "\"Authorization\":\"Bearer {{secret:OPENAI_API_KEY}}\"";
    int rc = post_json(endpoint, auth, &body, &text, out);
    if (rc == 0) rc = parse_completion(text.data, text.len, out);
    free(body.data), free(text.data), free(endpoint), free(model);
    return rc;
}

LOOM_REACTOR(chat)
