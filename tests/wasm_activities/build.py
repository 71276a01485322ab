"""The module builder for tests; it lives in `examples/build.py` so the demo can use it too."""

from examples.build import (
    BUILD_DIR,
    EXAMPLES_DIR,
    REPO_ROOT,
    build_c,
    build_component,
    build_example,
    build_zig,
)

__all__ = [
    "BUILD_DIR",
    "EXAMPLES_DIR",
    "REPO_ROOT",
    "build_c",
    "build_component",
    "build_example",
    "build_zig",
]
