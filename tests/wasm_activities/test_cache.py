"""The artifact cache cleans up after writers that were killed mid-write."""

from __future__ import annotations

import os
import time
from pathlib import Path

from wasm_activities.cache import STALE_TEMP_SECONDS, ArtifactCache


def test_temp_files_a_killed_writer_left_are_swept_fresh_ones_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / "abandoned.tmp", tmp_path / "in-progress.tmp"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"\0" * 1024)
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    cache = ArtifactCache(tmp_path, "config")
    cache.store("a" * 64, b"artifact")
    assert not stale.exists() and fresh.exists()
    assert cache.path("a" * 64).read_bytes() == b"artifact"
