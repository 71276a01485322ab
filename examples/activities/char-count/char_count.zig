//! char-count — Zig reactor: counts the Unicode code points and lines of the input document.
//! Input: any JSON value; output: {"codepoints": N, "bytes": M, "lines": L}.
const std = @import("std");
const loom = @import("loom.zig");

fn handle(input: []const u8, out: *loom.Output) !void {
    var codepoints: usize = 0;
    var lines: usize = 1;
    for (input) |byte| {
        if (byte & 0xC0 != 0x80) codepoints += 1;
        if (byte == '\n') lines += 1;
    }
    loom.logMessage("char-count: counted");
    var buf: [96]u8 = undefined;
    const json = try std.fmt.bufPrint(&buf, "{{\"codepoints\":{d},\"bytes\":{d},\"lines\":{d}}}", .{ codepoints, input.len, lines });
    try out.writeAll(json);
}

comptime {
    loom.exportReactor(handle);
}
