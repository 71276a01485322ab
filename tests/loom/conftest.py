from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import loom
from loom.client import get_store
from loom.store import Store


@pytest.fixture
def db_path(any_db: Path | str) -> Path | str:
    """Engine tests run on both backends: a SQLite file and a fresh PostgreSQL schema."""
    return any_db


@pytest.fixture
def store(db_path: Path) -> Store:
    return get_store(db_path)


@pytest.fixture
def make_worker(db_path: Path) -> Callable[..., loom.Worker]:
    """Build a worker on the test database with test-friendly timings."""

    def build(workflows: list[Any], activities: list[Any] = (), **options: Any) -> loom.Worker:  # type: ignore[assignment]
        options.setdefault("poll_interval", 0.05)
        options.setdefault("lease_seconds", 5)
        return loom.Worker(workflows=workflows, activities=list(activities), **options)

    return build


@pytest.fixture
async def worker(make_worker: Callable[..., loom.Worker]) -> AsyncIterator[Callable[..., Any]]:
    """`async with worker([Wf], [act]):` — a background worker for the test database."""
    yield make_worker
