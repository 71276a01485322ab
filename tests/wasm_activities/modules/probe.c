/* Filesystem/env probe (command ABI). Input:
 *   {"read": "/path", "write": "/path", "env": "NAME", "symlink": "/link",
 *    "target": "/anywhere"}   (each optional)
 * Output: {"read": "<first 64 bytes>" | "error:<errno name>", "write": "ok" | "error:…",
 *          "env": "<value>" | null}. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include "loom.h"

static const char *err_name(int e) {
    switch (e) {
        case ENOENT: return "ENOENT";
        case EACCES: return "EACCES";
        case EPERM: return "EPERM";
        case ENOTCAPABLE: return "ENOTCAPABLE";
        case EROFS: return "EROFS";
        case EBADF: return "EBADF";
        default: return "EOTHER";
    }
}

int main(void) {
    loom_buf in = {0}, out = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0) loom_buf_append(&in, chunk, n);
    if (!in.data) loom_buf_reserve(&in, 0);
    loom_buf_puts(&out, "{");
    size_t len = 0;
    char *path = loom_json_get_string(in.data, in.len, "read", &len);
    if (path) {
        loom_buf_puts(&out, "\"read\":");
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            char msg[32];
            snprintf(msg, sizeof msg, "error:%s", err_name(errno));
            loom_buf_json_string(&out, msg, strlen(msg));
        } else {
            char data[64];
            ssize_t got = read(fd, data, sizeof data);
            loom_buf_json_string(&out, data, got > 0 ? (size_t)got : 0);
            close(fd);
        }
        loom_buf_puts(&out, ",");
    }
    path = loom_json_get_string(in.data, in.len, "write", &len);
    if (path) {
        loom_buf_puts(&out, "\"write\":");
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "pwned", 5) != 5) {
            char msg[32];
            snprintf(msg, sizeof msg, "error:%s", err_name(errno));
            loom_buf_json_string(&out, msg, strlen(msg));
        } else {
            loom_buf_puts(&out, "\"ok\"");
        }
        if (fd >= 0) close(fd);
        loom_buf_puts(&out, ",");
    }
    path = loom_json_get_string(in.data, in.len, "symlink", &len);
    if (path) {
        size_t tlen = 0;
        char *target = loom_json_get_string(in.data, in.len, "target", &tlen);
        loom_buf_puts(&out, "\"symlink\":");
        if (symlink(target ? target : "/", path) != 0) {
            char msg[32];
            snprintf(msg, sizeof msg, "error:%s", err_name(errno));
            loom_buf_json_string(&out, msg, strlen(msg));
        } else {
            loom_buf_puts(&out, "\"ok\"");
        }
        loom_buf_puts(&out, ",");
    }
    char *name = loom_json_get_string(in.data, in.len, "env", &len);
    if (name) {
        const char *value = getenv(name);
        loom_buf_puts(&out, "\"env\":");
        if (value) loom_buf_json_string(&out, value, strlen(value));
        else loom_buf_puts(&out, "null");
        loom_buf_puts(&out, ",");
    }
    loom_buf_puts(&out, "\"done\":true}");
    fwrite(out.data, 1, out.len, stdout);
    return 0;
}
