"""Fixtures: throw-away login roles (roles are cluster-wide, so each test makes and drops its own)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.fix_server import Server

_counter = itertools.count()

MakeRole = Callable[[], str]


@pytest.fixture
def make_role(conn: psycopg.Connection[Any], pg_server: Server) -> Iterator[MakeRole]:
    """Create login roles for one test; they are dropped afterwards."""
    made: list[str] = []

    def _make() -> str:
        name = f"r_{os.getpid()}_{next(_counter)}"
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
        made.append(name)
        return name

    yield _make
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        for name in made:
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))
