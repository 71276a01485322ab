/* web-fetch — reactor ABI: GET one allowlisted URL and return its title and readable text.
 *
 * Input:  {"url": "http://127.0.0.1:8766/pages/x.html", "max_chars"?: N}
 * Output: {"url": "...", "status": 200, "title": "...", "text": "...", "truncated": false}
 * `text` has one line per paragraph/heading; script, style, nav, header and footer are dropped.
 *
 * The allowlist is the manifest's grants.net: the host refuses any other destination before a
 * connection is opened (CapabilityDenied), so this code does no URL checking of its own.
 */
#include "loom.h"

#define DEFAULT_MAX_CHARS 4000

static int ieq_prefix(const char *s, const char *end, const char *word) {
    for (; *word; s++, word++)
        if (s >= end || (*s | 0x20) != *word) return 0;
    return 1;
}

/* One HTML entity at `p` ("&amp;" …) appended to `out`; returns the bytes consumed. */
static size_t entity(const char *p, const char *end, loom_buf *out) {
    static const struct { const char *name; const char *text; } table[] = {
        {"&amp;", "&"}, {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"}, {"&nbsp;", " "},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        size_t n = strlen(table[i].name);
        if ((size_t)(end - p) >= n && memcmp(p, table[i].name, n) == 0) {
            loom_buf_puts(out, table[i].text);
            return n;
        }
    }
    loom_buf_append(out, p, 1);
    return 1;
}

/* Elements whose content is not page text. */
static const char *const SKIPPED[] = {"script", "style", "nav", "header", "footer", "noscript"};
/* Elements that start a new line of text. */
static const char *const BLOCKS[] = {"p", "div", "h1", "h2", "h3", "h4", "li", "br", "tr", "section", "article"};

static int tag_is(const char *p, const char *end, const char *name) { /* p just after '<' or '</' */
    size_t n = strlen(name);
    if (!ieq_prefix(p, end, name) || p + n >= end) return 0;
    char c = p[n];
    return c == '>' || c == ' ' || c == '/' || c == '\n' || c == '\t';
}

/* Skip the tag at p (and the whole element if its content is not text); 1 if it breaks a line. */
static const char *skip_tag(const char *p, const char *end, int *is_block) {
    const char *name = p + 1 + (p + 1 < end && p[1] == '/');
    *is_block = 0;
    for (size_t i = 0; i < sizeof BLOCKS / sizeof BLOCKS[0]; i++) *is_block |= tag_is(name, end, BLOCKS[i]);
    for (size_t i = 0; name == p + 1 && i < sizeof SKIPPED / sizeof SKIPPED[0]; i++) {
        if (!tag_is(name, end, SKIPPED[i])) continue;
        char close[16];
        snprintf(close, sizeof close, "</%s", SKIPPED[i]);
        while (p < end && !(*p == '<' && ieq_prefix(p, end, close))) p++;
        *is_block = 1;
        break;
    }
    while (p < end && *p != '>') p++;
    return p < end ? p + 1 : end;
}

/* Text of html[p, end): tags removed, non-text elements skipped, one line per block element,
 * whitespace collapsed. */
static void visible_text(const char *p, const char *end, loom_buf *out, size_t max_bytes) {
    char pending = 0; /* separator owed before the next visible character */
    while (p < end && out->len < max_bytes) {
        if (*p == '<') {
            int block = 0;
            p = skip_tag(p, end, &block);
            if (block) pending = '\n';
            else if (!pending) pending = ' ';
            continue;
        }
        if (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
            if (!pending) pending = ' ';
            p++;
            continue;
        }
        if (pending && out->len) loom_buf_append(out, &pending, 1);
        pending = 0;
        p += *p == '&' ? entity(p, end, out) : (loom_buf_append(out, p, 1), 1);
    }
}

static const char *find_tag(const char *p, const char *end, const char *tag) {
    for (; p < end; p++)
        if (*p == '<' && ieq_prefix(p, end, tag)) return p;
    return NULL;
}

static long json_int(const char *json, const char *key) {
    char pattern[32];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(json, pattern);
    return at ? strtol(at + strlen(pattern), NULL, 10) : 0;
}

static int fetch(const char *input, size_t len, loom_buf *out) {
    size_t url_len = 0;
    char *url = loom_json_get_string(input, len, "url", &url_len);
    if (!url) return loom_buf_puts(out, "input must be an object with a string field \"url\""), 1;
    long max_chars = json_int(input, "max_chars");
    if (max_chars <= 0) max_chars = DEFAULT_MAX_CHARS;

    loom_buf request = {0};
    loom_buf_puts(&request, "{\"method\":\"GET\",\"url\":");
    loom_buf_json_string(&request, url, url_len);
    loom_buf_puts(&request, ",\"headers\":{\"Accept\":\"text/html\",\"User-Agent\":\"loom-web-fetch/1\"}}");
    int32_t code = 0;
    char *response = loom_http_request(request.data, &code);
    if (!response || code != 0) {
        loom_buf_puts(out, "fetch failed: ");
        return loom_buf_puts(out, response ? response : "no response"), 1;
    }
    long status = json_int(response, "status");
    size_t html_len = 0;
    char *html = loom_json_get_string(response, strlen(response), "body", &html_len);
    if (!html) html = calloc(1, 1);
    if (status >= 400) {
        char message[64];
        snprintf(message, sizeof message, "HTTP %ld from ", status);
        loom_buf_puts(out, message);
        return loom_buf_append(out, url, url_len), 1;
    }
    const char *end = html + html_len;
    loom_buf title = {0}, text = {0};
    const char *open = find_tag(html, end, "<title");
    if (open && (open = memchr(open, '>', (size_t)(end - open)))) {
        const char *close = find_tag(open, end, "</title");
        visible_text(open + 1, close ? close : end, &title, 512);
    }
    const char *body = find_tag(html, end, "<body");
    visible_text(body ? body : html, end, &text, (size_t)max_chars + 1);
    int truncated = text.len > (size_t)max_chars;
    if (truncated) { /* cut at a UTF-8 boundary */
        size_t cut = (size_t)max_chars;
        while (cut && ((unsigned char)text.data[cut] & 0xC0) == 0x80) cut--;
        text.len = cut;
    }
    char head[48];
    loom_buf_puts(out, "{\"url\":");
    loom_buf_json_string(out, url, url_len);
    snprintf(head, sizeof head, ",\"status\":%ld,\"title\":", status);
    loom_buf_puts(out, head);
    loom_buf_json_string(out, title.data ? title.data : "", title.len);
    loom_buf_puts(out, ",\"text\":");
    loom_buf_json_string(out, text.data ? text.data : "", text.len);
    loom_buf_puts(out, truncated ? ",\"truncated\":true}" : ",\"truncated\":false}");
    free(url), free(html), free(response), free(request.data), free(title.data), free(text.data);
    return 0;
}

LOOM_REACTOR(fetch)
