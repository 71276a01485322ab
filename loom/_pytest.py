"""The pytest plugin (entry point `pytest11`): the `loom_env` fixture and the `loom` marker.

pytest imports it in every project where loom is installed, so it imports loom lazily and
needs nothing beyond pytest-asyncio, which runs the fixture on the test's event loop.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from loom.testing import WorkflowEnvironment

MARKER = (
    "loom(workflows=(), activities=None, doubles=None, time_skipping=True): "
    "configure the loom_env fixture (the keywords of loom.testing.WorkflowEnvironment)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)  # registered, so --strict-markers accepts it


async def _environment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[WorkflowEnvironment]:
    """A started `loom.testing.WorkflowEnvironment` with time skipping, on a database in the
    test's `tmp_path` (kept by pytest for a look after a failure).

    Configure it with `@pytest.mark.loom(workflows=[...], activities=[...], doubles={...},
    time_skipping=False)`; unmarked, it serves every declared activity and any workflow type
    passed to `loom_env.start`.
    """
    from loom.testing import WorkflowEnvironment

    marker = request.node.get_closest_marker("loom")
    options = dict(marker.kwargs) if marker is not None else {}
    options.setdefault("database", tmp_path / "loom.db")
    async with WorkflowEnvironment(**options) as env:
        yield env


def _without_asyncio() -> Iterator[None]:
    raise pytest.UsageError(
        "the loom_env fixture runs on asyncio: pip install pytest-asyncio (or 'loom[test]')"
    )
    yield


loom_env: object
if importlib.util.find_spec("pytest_asyncio") is None:
    # loom is installed in a project without pytest-asyncio: pytest must still start there.
    loom_env = pytest.fixture(_without_asyncio, name="loom_env")
else:
    import pytest_asyncio

    loom_env = pytest_asyncio.fixture(_environment, name="loom_env")
