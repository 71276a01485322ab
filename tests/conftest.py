"""Fixtures shared by every test package: a real SQLite file per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import loom


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh database file, configured as this process's default for the test."""
    path = tmp_path / "loom.db"
    loom.configure(database=path)
    yield path
    loom.configure(database=None)
