"""On-disk cache of compiled artifacts, keyed by module sha256 + wasmtime version + engine config.

Artifacts are native code the engine loads without verification: the cache directory must be
writable only by the user running the worker.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

__all__ = ["ArtifactCache", "default_cache_dir"]

CACHE_ENV = "LOOM_WASM_CACHE"


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

    def path(self, sha256: str) -> Path:
        """Where the artifact for this module would live."""
        return self.directory / f"{sha256}-{self.fingerprint}.cwasm"

    def store(self, sha256: str, artifact: bytes | bytearray) -> None:
        """Write atomically (temp file + rename), so a concurrent reader never sees half a file."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(artifact)
            os.replace(tmp, self.path(sha256))
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
