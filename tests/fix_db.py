"""Fixtures: a fresh database per test, cloned from a template that has auditdb installed."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.janitor import DatabaseJanitor

from auditdb.install import install
from tests.fix_server import Server

TEMPLATE = "auditdb_template"
APP_ROLE = "auditdb_test_app"
_counter = itertools.count()


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    """A database with auditdb installed and an application role, used as every test's template."""
    janitor = DatabaseJanitor(
        user=pg_server.user, host=pg_server.host, port=pg_server.port, dbname=TEMPLATE, as_template=True
    )
    janitor.drop()
    janitor.init()
    install(pg_server.dsn(TEMPLATE))
    with psycopg.connect(pg_server.dsn(TEMPLATE), autocommit=True) as conn:
        conn.execute(f"""
            do $$ begin
                if not exists (select from pg_roles where rolname = '{APP_ROLE}') then
                    create role {APP_ROLE} login;
                end if;
            end $$""")
        conn.execute(f"grant create on schema public to {APP_ROLE}")
    # No connections to the template from now on, autovacuum's included: CREATE DATABASE waits
    # (100 ms at a time) while anything is connected to its template.
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(TEMPLATE)))
    return TEMPLATE


@pytest.fixture
def dbname(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh database for one test, with auditdb installed.

    Copied file by file (PostgreSQL 15+): for a small template on a server without fsync that is
    10 times faster than the default, WAL-logged copy, which made up half of the suite's time.
    """
    name = f"t_{os.getpid()}_{next(_counter)}"
    strategy = sql.SQL(" strategy file_copy") if pg_server.major >= 15 else sql.SQL("")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("create database {} template {}{}").format(
                sql.Identifier(name), sql.Identifier(template_db), strategy
            )
        )
    try:
        yield name
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def dsn(pg_server: Server, dbname: str) -> str:
    """Superuser DSN of the test's database."""
    return pg_server.dsn(dbname)


@pytest.fixture
def app_dsn(pg_server: Server, dbname: str) -> str:
    """DSN of the test's database as the unprivileged application role."""
    return pg_server.dsn(dbname, user=APP_ROLE)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection (autocommit) to the test's database."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def app_conn(app_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An application-role connection (autocommit) to the test's database."""
    with psycopg.connect(app_dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def empty_db(pg_server: Server) -> Iterator[str]:
    """DSN of a fresh database without auditdb."""
    name = f"e_{os.getpid()}_{next(_counter)}"
    janitor = DatabaseJanitor(user=pg_server.user, host=pg_server.host, port=pg_server.port, dbname=name)
    janitor.init()
    try:
        yield pg_server.dsn(name)
    finally:
        janitor.drop()


def scalar(conn: psycopg.Connection[Any], query: str | sql.Composable, params: Any = None) -> Any:
    """The first column of the first row of a query."""
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return None if row is None else row[0]


Scalar = Callable[..., Any]
