"""SQLite spells `Dialect.rows` sets at execute time: `VALUES` for a few rows, a JSON array of
rows beyond. Both spellings must insert the same rows, in order, with the same numbering."""

from __future__ import annotations

import sqlite3

import pytest

from loom.dialect import SQLITE, run_now
from loom.sqlite_store._writer import MAX_INLINE_ROWS, SQLiteConnection, _spell


def _insert(conn: SQLiteConnection, rows: list[tuple[str, int]]) -> None:
    items = SQLITE.rows("r", (("name", "text"), ("size", "bigint")), 3, ordinality="n")
    kinds = SQLITE.any("name", 5)

    async def op() -> None:
        await conn.execute(
            f"INSERT INTO items (batch, position, name, size) SELECT $1, $2 + n, name, size "
            f"FROM {items} WHERE NOT {kinds}",
            "b",
            100,
            *SQLITE.columns([name for name, _ in rows], [size for _, size in rows]),
            ["skipped"],
        )

    run_now(op())


@pytest.mark.parametrize("count", [0, 1, 2, MAX_INLINE_ROWS, MAX_INLINE_ROWS + 1, 300])
def test_row_sets_of_every_size_insert_the_same_rows(count: int) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE items (batch TEXT, position INT, name TEXT, size INT)")
    rows = [(f"item-{i}", i * 10) for i in range(count)] + [("skipped", -1)]
    _insert(SQLiteConnection(db), rows)
    stored = db.execute("SELECT position, name, size FROM items ORDER BY position").fetchall()
    assert stored == [(100 + i + 1, f"item-{i}", i * 10) for i in range(count)]


def test_small_sets_are_values_and_large_ones_one_json_array() -> None:
    sql = f"SELECT * FROM {SQLITE.rows('r', (('a', 'text'),), 2)} WHERE $1"
    small, picks, _, inline, _ = _spell(sql, (3,))
    assert "VALUES" in small and "json_each" not in small and inline == (2,)
    # only $1 is bound as a parameter; the three rows' values follow it
    assert picks == (0,) and "?4" in small and "?5" not in small
    large, picks, arrays, inline, _ = _spell(sql, (MAX_INLINE_ROWS + 1,))
    assert "json_each(?2)" in large and picks == (0, 1) and arrays == (1,) and inline == ()


def test_parameters_a_statement_does_not_use_are_not_bound() -> None:
    conn = SQLiteConnection(sqlite3.connect(":memory:", isolation_level=None))

    class Unencodable:
        """Would fail `dumps` and sqlite3's binding alike, were it touched."""

    async def op() -> object:
        return await conn.fetchval("SELECT $2 + 1", Unencodable(), 41)

    assert run_now(op()) == 42  # sqlite3 cannot bind an Unencodable: parameter 1 was left out


def test_statements_renumber_their_parameters_around_unused_ones() -> None:
    conn = SQLiteConnection(sqlite3.connect(":memory:", isolation_level=None))
    pairs = SQLITE.rows("p", (("a", "text"), ("b", "bigint")), 4)

    async def op() -> object:
        return await conn.fetch(
            f"SELECT $1, $3, a, b, $6 FROM {pairs} WHERE $3 IS NOT NULL",
            "one",
            "unused",
            3,
            *SQLITE.columns(["x", "y"], [10, 20]),
            "six",
        )

    assert run_now(op()) == [("one", 3, "x", 10, "six"), ("one", 3, "y", 20, "six")]
