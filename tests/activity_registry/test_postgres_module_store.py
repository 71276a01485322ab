"""The registry on PostgreSQL: module bytes in the database, a lost connection replaced."""

from __future__ import annotations

import pytest

from activity_registry import Registry
from activity_registry.module_store import PostgresModuleStore
from tests.activity_registry.activity_files import ActivityFactory
from tests.conftest import POSTGRES_URL, run_sql


async def test_a_terminated_connection_is_replaced(
    postgres_url: str, make_activity: ActivityFactory
) -> None:
    async with Registry(postgres_url) as registry:
        activity = (await registry.register(make_activity())).activity
        store = registry._store
        assert isinstance(store, PostgresModuleStore)
        pid = store._connection._conn.get_server_pid()  # type: ignore[attr-defined]
        run_sql(POSTGRES_URL, f"SELECT pg_terminate_backend({pid})")
        assert [a.ref for a in await registry.list()] == [activity.ref]
        [[row]] = run_sql(postgres_url, "SELECT size_bytes FROM activity_modules")
        assert row["size_bytes"] > 0
    async with Registry(postgres_url) as other_host:  # loads the bytes from the database
        prepared = await other_host.prepare(activity)
        assert prepared.sha256 == activity.sha256


def test_other_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        Registry("mysql://localhost/loom")
