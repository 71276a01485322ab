//! loom.zig — guest SDK for Loom reactor activities written in Zig (wasm32-wasi).
//!
//! Usage (in your root source file):
//!     const loom = @import("loom.zig");
//!     fn handle(input: []const u8, out: *loom.Output) !void { try out.writeAll("{}"); }
//!     comptime { loom.exportReactor(handle); }
//! Build: python -m ziglang build-exe -target wasm32-wasi -O ReleaseSmall -fno-entry
//!        -rdynamic act.zig   (see tests/wasm_activities/build.py)
//! Host imports are documented in wasm_activities/ABI.md.
const std = @import("std");

pub const allocator = std.heap.wasm_allocator;

extern "loom" fn log(ptr: [*]const u8, len: i32) void;
extern "loom" fn config_get(key: [*]const u8, key_len: i32) i32;
extern "loom" fn http_request(req: [*]const u8, len: i32) i32;
extern "loom" fn take(buf: [*]u8, len: i32) i32;

/// Append-only output buffer handed to the handler.
pub const Output = struct {
    bytes: []u8 = &.{},
    len: usize = 0,

    pub fn writeAll(self: *Output, data: []const u8) !void {
        if (self.len + data.len > self.bytes.len) {
            const cap = @max(64, (self.len + data.len) * 2);
            self.bytes = try allocator.realloc(self.bytes, cap);
        }
        @memcpy(self.bytes[self.len..][0..data.len], data);
        self.len += data.len;
    }
};

/// Write a message to the activity's logs.
pub fn logMessage(message: []const u8) void {
    log(message.ptr, @intCast(message.len));
}

fn takePending(len: i32) ![]u8 {
    const buf = try allocator.alloc(u8, @intCast(len));
    const got = take(buf.ptr, len);
    return buf[0..@intCast(@max(got, 0))];
}

/// A granted config value (or "{{secret:NAME}}" placeholder), or null.
pub fn configGet(key: []const u8) !?[]u8 {
    const len = config_get(key.ptr, @intCast(key.len));
    if (len < 0) return null;
    return try takePending(len);
}

/// Perform an HTTP request ({"method","url","headers","body"} JSON); returns the response JSON
/// ({"status","headers","body"}) or error.HttpFailed (details were logged by the host).
pub fn httpRequest(request_json: []const u8) ![]u8 {
    const n = http_request(request_json.ptr, @intCast(request_json.len));
    if (n < 0) return error.HttpFailed;
    return try takePending(n);
}

fn pack(ptr: usize, len: usize) i64 {
    return @as(i64, @intCast(ptr)) << 32 | @as(i64, @intCast(len));
}

/// Export `alloc` and `run` around `handler`; a returned error becomes a GuestError.
pub fn exportReactor(comptime handler: fn ([]const u8, *Output) anyerror!void) void {
    const Exports = struct {
        fn alloc(len: i32) callconv(.c) i32 {
            const buf = allocator.alloc(u8, @intCast(@max(len, 1))) catch return 0;
            return @intCast(@intFromPtr(buf.ptr));
        }
        fn run(ptr: i32, len: i32) callconv(.c) i64 {
            const input = @as([*]const u8, @ptrFromInt(@as(usize, @intCast(ptr))))[0..@intCast(len)];
            var out = Output{};
            handler(input, &out) catch |err| {
                out.len = 0;
                out.writeAll(@errorName(err)) catch return -1;
                return -pack(@intFromPtr(out.bytes.ptr), out.len);
            };
            return pack(@intFromPtr(out.bytes.ptr), out.len);
        }
    };
    @export(&Exports.alloc, .{ .name = "alloc" });
    @export(&Exports.run, .{ .name = "run" });
}
