"""Fixtures for registry tests: a real database (SQLite, PostgreSQL), a registry on it, tiny WAT
activities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from activity_registry import Registry
from tests.activity_registry.activity_files import ActivityFactory, write_activity


@pytest.fixture
def db_path(any_db: Path | str) -> Path | str:
    """A SQLite file, then a fresh PostgreSQL schema: module bytes live in either."""
    return any_db


@pytest.fixture
async def registry(db_path: Path) -> AsyncIterator[Registry]:
    async with Registry(db_path) as reg:
        yield reg


@pytest.fixture
def make_activity(tmp_path: Path) -> ActivityFactory:
    def make(**kwargs: Any) -> Path:
        return write_activity(tmp_path / "activities", **kwargs)

    return make


# A loopback HTTP server that counts connections: proves a schema is never fetched.
from tests.wasm_activities.conftest import LoopbackServer as LoopbackServer  # noqa: E402
from tests.wasm_activities.conftest import http_server as http_server  # noqa: E402
