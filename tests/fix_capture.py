"""Fixtures: tracked tables from a schema and an auditdb.toml, and reading the log back."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from auditdb.config import Config, parse_config
from auditdb.triggers import apply

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "testplanit"

Track = Callable[[str, str], Config]


# AUDITDB_TEST_CAPTURE=generic: every table tracked here captures through the generic body (the
# one a schema change falls back to) instead of its generated function, so the capture tests
# check both implementations (`.ci/run` runs them so, after the suite).
GENERIC = os.environ.get("AUDITDB_TEST_CAPTURE") == "generic"


def _apply(conn: psycopg.Connection[Any], config: Config) -> None:
    apply(conn, config)
    if GENERIC:
        with conn.transaction():
            conn.execute("select auditdb.begin_maintenance()")
            conn.execute("select auditdb.use_generic_capture(function_name) from auditdb.tracked_tables")
            conn.execute("select auditdb.end_maintenance()")


@pytest.fixture
def track(conn: psycopg.Connection[Any]) -> Track:
    """Create tables from SQL, then `auditdb apply` a config given as TOML text."""

    def _track(schema_sql: str, toml_text: str) -> Config:
        if schema_sql:
            conn.execute(schema_sql)
        config = parse_config(tomllib.loads(toml_text))
        _apply(conn, config)
        return config

    return _track


@pytest.fixture
def example(conn: psycopg.Connection[Any]) -> Config:
    """The TestPlanIt example schema, tracked by its auditdb.toml."""
    conn.execute((EXAMPLE / "schema.sql").read_text())
    with open(EXAMPLE / "auditdb.toml", "rb") as f:
        config = parse_config(tomllib.load(f))
    _apply(conn, config)
    return config


def as_read(changes: Any) -> Any:
    """An entry's changes as every reader shows them: a whole row (CREATE, DELETE), stored since
    release 0008 as {"": side, column: value, …}, becomes {column: {side: value}, …}."""
    if isinstance(changes, dict) and changes.get("") in ("new", "old"):
        return {column: {changes[""]: value} for column, value in changes.items() if column != ""}
    return changes


def entries(conn: psycopg.Connection[Any], where: str = "true", params: Any = None) -> list[dict[str, Any]]:
    """Entries of data changes and events (not AUDIT_CHANGED) matching a condition, in insert order."""
    return audit_entries(conn, f"action <> 'AUDIT_CHANGED' and ({where})", params)


def audit_entries(conn: psycopg.Connection[Any], where: str = "true", params: Any = None) -> list[dict[str, Any]]:
    """All entries matching a condition, AUDIT_CHANGED included, in insert order."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"select * from auditdb.log where {where} order by id", params).fetchall()  # noqa: S608
    for row in rows:
        row["changes"] = as_read(row["changes"])
    if GENERIC:
        # Every captured entry came through the generic body, which says so; the rest of it must be
        # what the generated function writes, which the tests check.
        for row in rows:
            if row["table_name"] is not None and row["action"] != "AUDIT_CHANGED":
                assert row["metadata"].pop("capture", None) == "generic", row
    return rows
