"""Pools and poolers: the context is transaction-local, so nothing crosses to the next user.

psycopg_pool needs nothing in configure or reset for it; behind PgBouncer in transaction mode,
clients sharing one server connection never see each other's context, and `emit` still wakes
the worker (which connects to PostgreSQL directly: LISTEN needs a session).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import auditdb
from auditdb.cli import cli
from auditdb.worker import Worker
from tests.fix_capture import Track, entries
from tests.fix_db import APP_ROLE, scalar
from tests.fix_server import Server

ITEMS = "create table public.items (id serial primary key, name text); alter table public.items owner to {}"
ITEMS_TOML = '[tables."public.items"]\nentity_type = "Item"\nname = "name"\n'


@pytest.fixture
def items(dsn: str, track: Track) -> Iterator[None]:
    track(ITEMS.format(APP_ROLE), ITEMS_TOML)
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", APP_ROLE, "--writer"]).exit_code == 0
    yield
    CliRunner().invoke(cli, ["--dsn", dsn, "revoke", APP_ROLE, "--writer"])  # a cluster-wide role


def _item(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    (entry,) = entries(conn, "entity_type = 'Item' and entity_name = %s", (name,))
    return entry


def test_psycopg_pool_needs_no_reset_for_the_context(items: None, app_dsn: str, conn: psycopg.Connection[Any]) -> None:
    pool_module = pytest.importorskip("psycopg_pool", reason="psycopg_pool is not installed: pip install auditdb[pool]")
    with pool_module.ConnectionPool(app_dsn, min_size=1, max_size=1, open=True) as pool:
        with pool.connection() as c:  # commits on leaving
            auditdb.set_context(c, actor_id="ann", tenant_id="t1")
            c.execute("insert into public.items (name) values ('pooled ann')")
            pid = scalar(c, "select pg_backend_pid()")
        with pytest.raises(RuntimeError), pool.connection() as c:  # rolls back on leaving
            auditdb.set_context(c, actor_id="mallory")
            raise RuntimeError("the request failed")
        with pool.connection() as c:
            assert scalar(c, "select pg_backend_pid()") == pid
            assert set(auditdb.current_context(c).values()) == {None}
            c.execute("insert into public.items (name) values ('pooled nobody')")
    assert (_item(conn, "pooled ann")["actor_id"], _item(conn, "pooled ann")["tenant_id"]) == ("ann", "t1")
    assert _item(conn, "pooled nobody")["actor_id"] is None


def _bounced(port: int, dbname: str, user: str = APP_ROLE) -> psycopg.Connection[Any]:
    # PgBouncer before 1.21 keeps no prepared statement across transactions: prepare nothing.
    return psycopg.connect(host="127.0.0.1", port=port, dbname=dbname, user=user, prepare_threshold=None)


def test_behind_pgbouncer_the_context_never_crosses_clients(
    items: None, pgbouncer: int, dbname: str, conn: psycopg.Connection[Any]
) -> None:
    with _bounced(pgbouncer, dbname) as ann, _bounced(pgbouncer, dbname) as bob:
        pids = set()
        for round_ in range(3):
            with ann.transaction():
                auditdb.set_context(ann, actor_id="ann", tenant_id="t-ann", ip="198.51.100.1")
                ann.execute("insert into public.items (name) values (%s)", (f"ann {round_}",))
                pids.add(scalar(ann, "select pg_backend_pid()"))
            with bob.transaction():
                # The same server connection, straight after ann's transaction: none of her context.
                pids.add(scalar(bob, "select pg_backend_pid()"))
                assert set(auditdb.current_context(bob).values()) == {None}
                bob.execute("insert into public.items (name) values (%s)", (f"bob {round_}",))
        assert len(pids) == 1  # one server connection served both clients
    for round_ in range(3):
        assert (_item(conn, f"ann {round_}")["actor_id"], _item(conn, f"ann {round_}")["tenant_id"]) == ("ann", "t-ann")
        bobs = _item(conn, f"bob {round_}")
        assert (bobs["actor_id"], bobs["tenant_id"], bobs["ip"]) == (None, None, None)


def test_behind_pgbouncer_emit_still_wakes_the_worker(
    items: None, pgbouncer: int, dbname: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    worker = Worker(dsn, poll_interval=60)  # polls once a minute: only the NOTIFY can be this quick
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # listening
        with _bounced(pgbouncer, dbname) as app:
            with app.transaction():
                auditdb.set_context(app, actor_id="ann", ip="198.51.100.3")
                auditdb.emit(app, "LOGIN", entity_type="User", entity_id="ann-bounced")
        sent = time.monotonic()
        while not entries(conn, "action = 'LOGIN' and entity_id = 'ann-bounced'"):
            assert time.monotonic() - sent < 10, "the worker was not woken through PgBouncer"
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(timeout=30)
    (event,) = entries(conn, "action = 'LOGIN' and entity_id = 'ann-bounced'")
    assert (event["actor_id"], str(event["ip"])) == ("ann", "198.51.100.3")


def test_a_session_level_setting_is_what_crosses_so_set_context_never_makes_one(
    items: None, pgbouncer: int, dbname: str, pg_server: Server
) -> None:
    """Why set_context is transaction-local: a session-level SET behind PgBouncer reaches the next client."""
    with _bounced(pgbouncer, dbname) as ann, _bounced(pgbouncer, dbname) as bob:
        ann.execute("select set_config('auditdb.actor_id', 'ann', false)")  # session-level, by hand
        ann.commit()
        assert scalar(bob, "select auditdb.current_context()->>'actor_id'") == "ann"
        bob.rollback()
        with ann.transaction():
            auditdb.set_context(ann, actor_id="ann-again")
        assert (
            scalar(bob, "select auditdb.current_context()->>'actor_id'") == "ann"
        )  # the session value, not set_context's
        bob.execute("reset auditdb.actor_id")
        bob.commit()
