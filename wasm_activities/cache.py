"""On-disk cache of compiled artifacts, keyed by module sha256 + wasmtime version + engine config.

Artifacts are native code the engine loads without verification: the cache directory must be
writable only by the user running the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

__all__ = ["ArtifactCache", "default_cache_dir"]

CACHE_ENV = "LOOM_WASM_CACHE"
STALE_TEMP_SECONDS = 3600


def default_cache_dir() -> Path:
    """`$LOOM_WASM_CACHE`, else `~/.cache/loom/wasm`."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "loom" / "wasm"


class ArtifactCache:
    """Serialized modules/components under `<dir>/<sha256>-<fingerprint>.cwasm`."""

    def __init__(self, directory: Path, engine_config: str) -> None:
        self.directory = directory
        fingerprint = f"wasmtime={version('wasmtime')};{engine_config}"
        self.fingerprint = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        self._swept = False

    def _sweep(self) -> None:
        """Remove temp files a killed writer left (a SIGKILL mid-compile left 50 MB each);
        only old ones, so a concurrent writer's file in progress is never touched."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self.directory.glob("*.tmp"):
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def path(self, sha256: str) -> Path:
        """Where the artifact for this module would live."""
        return self.directory / f"{sha256}-{self.fingerprint}.cwasm"

    def store(self, sha256: str, artifact: bytes | bytearray) -> None:
        """Write atomically (temp file + rename), so a concurrent reader never sees half a file."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._swept:
            self._swept = True
            self._sweep()
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(artifact)
            os.replace(tmp, self.path(sha256))
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
