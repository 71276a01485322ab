"""Builds activity modules from committed sources into the git-ignored cache `.build/wasm/`.

Stdlib only (no `loom` import): used by `examples/demo.py`, the benchmarks and every package's
tests (`from examples.build import build_example`; `tests.wasm_activities.build` re-exports it).
The cache key hashes the sources, the SDK, the flags and the toolchain version, so any change
rebuilds; building is serialised with a file lock so parallel test processes share one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

__all__ = [
    "BUILD_DIR",
    "EXAMPLES_DIR",
    "REPO_ROOT",
    "build_c",
    "build_component",
    "build_example",
    "build_zig",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO_ROOT / ".build" / "wasm"
EXAMPLES_DIR = REPO_ROOT / "examples" / "activities"
SDK_DIR = REPO_ROOT / "wasm_activities" / "sdk"
C_FLAGS = ["--target=wasm32-wasi", "-O2", "-s", "-Wl,-z,stack-size=65536"]
BUILD_TIMEOUT_S = 600


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


def _sources_digest(paths: list[Path], flags: list[str], tool: str) -> str:
    parts = [p.name.encode() + b"\0" + p.read_bytes() for p in sorted(paths)]
    return _digest(*parts, " ".join(flags).encode(), tool.encode())


@contextmanager
def _locked() -> Iterator[None]:
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"build failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")


def build_c(source: Path, *, reactor: bool, extra_flags: list[str] | None = None) -> Path:
    """Compile one C file (with the SDK headers on the include path) to a cached .wasm."""
    source = source.resolve()
    flags = [*C_FLAGS, *(["-mexec-model=reactor"] if reactor else []), *(extra_flags or [])]
    headers = sorted(SDK_DIR.glob("*.h"))  # every SDK header a source may include
    key = _sources_digest([source, *headers], flags, f"ziglang={version('ziglang')}")
    out = BUILD_DIR / f"{source.stem}-{key}.wasm"
    with _locked():
        if not out.exists():
            tmp = out.with_suffix(".tmp.wasm")
            cmd = [sys.executable, "-m", "ziglang", "cc", *flags, f"-I{SDK_DIR}"]
            _run([*cmd, str(source), "-o", str(tmp)], source.parent)
            os.replace(tmp, out)
    return out


def build_zig(source: Path) -> Path:
    """Compile a Zig reactor (root file `source`, SDK `loom.zig` beside it) to a cached .wasm."""
    source = source.resolve()
    flags = ["-target", "wasm32-wasi", "-O", "ReleaseSmall", "-fno-entry", "-rdynamic"]
    key = _sources_digest([source, SDK_DIR / "loom.zig"], flags, f"ziglang={version('ziglang')}")
    out = BUILD_DIR / f"{source.stem}-{key}.wasm"
    with _locked():
        if not out.exists():
            work = BUILD_DIR / f"zig-{key}"
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, work / source.name)
            shutil.copy(SDK_DIR / "loom.zig", work / "loom.zig")
            tmp = out.with_suffix(".tmp.wasm")
            cmd = [sys.executable, "-m", "ziglang", "build-exe", *flags, source.name]
            _run([*cmd, f"-femit-bin={tmp}"], work)
            os.replace(tmp, out)
            shutil.rmtree(work, ignore_errors=True)
    return out


def build_component(directory: Path) -> Path:
    """Build a componentize-py app (`app.py` against `sdk/loom.wit`) to a cached component."""
    sources = [directory / "app.py", SDK_DIR / "loom.wit"]
    key = _sources_digest(sources, [], f"componentize-py={version('componentize-py')}")
    out = BUILD_DIR / f"{directory.name}-{key}.wasm"
    with _locked():
        if not out.exists():
            tmp = out.with_suffix(".tmp.wasm")
            exe = Path(sys.executable).with_name("componentize-py")
            wit = str(SDK_DIR / "loom.wit")
            cmd = [str(exe), "-d", wit, "-w", "activity", "componentize", "app", "-o", str(tmp)]
            _run(cmd, directory)
            os.replace(tmp, out)
    return out


def build_example(name: str) -> Path:
    """Build `examples/activities/<name>` and return the cached .wasm path.

    The language follows the sources present (`*.c`, `*.zig`, or a componentize-py `app.py`) and the
    manifest's `abi`. A copy is also placed at the manifest's `module` path (git-ignored), so
    `loom activity register examples/activities/<name>/activity.toml` works after a build.
    """
    directory = EXAMPLES_DIR / name
    manifest = tomllib.loads((directory / "activity.toml").read_text())
    zig = sorted(directory.glob("*.zig"))
    c = sorted(directory.glob("*.c"))
    if (directory / "app.py").exists():
        built = build_component(directory)
    elif zig:
        built = build_zig(zig[0])
    elif c:
        built = build_c(c[0], reactor=manifest["abi"] == "reactor")
    else:
        raise FileNotFoundError(f"no C, Zig or componentize-py sources in {directory}")
    target = directory / manifest["module"]
    if not target.exists() or target.read_bytes() != built.read_bytes():
        tmp = target.with_suffix(".tmp")
        shutil.copy(built, tmp)
        os.replace(tmp, target)
    return built
