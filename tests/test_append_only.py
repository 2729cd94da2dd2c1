"""The log is append-only, enforced by the database for every role and every partition."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.fix_db import scalar


def _log_tables(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        """select 'auditdb.log' union all
           select 'auditdb.' || c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent = 'auditdb.log'::regclass order by 1"""
    ).fetchall()
    return [r[0] for r in rows]


def _seed_entry(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute("insert into auditdb.log (action, entity_type, entity_id) values ('LOGIN', 'User', 'u1')")


def _table(name: str) -> sql.Composable:
    return sql.SQL(name)  # names come from pg_class above, already qualified


STATEMENTS = {
    "insert": "insert into {} (action) values ('FORGED')",
    "update": "update {} set action = 'FORGED'",
    "delete": "delete from {}",
    "truncate": "truncate {}",
}


@pytest.mark.parametrize("verb", sorted(STATEMENTS))
def test_application_role_cannot_write_the_log(
    verb: str, conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    _seed_entry(conn)
    for table in _log_tables(conn):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.transaction():
            app_conn.execute(sql.SQL(STATEMENTS[verb]).format(_table(table)))  # type: ignore[arg-type]
    assert scalar(conn, "select count(*) from auditdb.log") == 1
    assert scalar(conn, "select action from auditdb.log") == "LOGIN"


@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica"])
@pytest.mark.parametrize("verb", sorted(set(STATEMENTS) - {"insert"}))
def test_superuser_cannot_change_the_log_or_any_partition(
    verb: str, replica: bool, conn: psycopg.Connection[Any]
) -> None:
    _seed_entry(conn)
    tables = _log_tables(conn)
    assert len(tables) == 6  # parent, default, this month and 3 ahead
    for table in tables:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught, conn.transaction():
            if replica:
                conn.execute("set local session_replication_role = replica")
            conn.execute(sql.SQL(STATEMENTS[verb]).format(_table(table)))  # type: ignore[arg-type]
        assert "append-only" in str(caught.value), (table, str(caught.value))
    assert scalar(conn, "select count(*) from auditdb.log") == 1
    assert scalar(conn, "select action from auditdb.log") == "LOGIN"


def test_guards_are_enabled_always_on_every_log_table(conn: psycopg.Connection[Any]) -> None:
    tables = _log_tables(conn)
    rows = dict(
        conn.execute(
            """select tgrelid::regclass::text, tgenabled from pg_trigger
            where tgname = 'log_append_only' and tgrelid::regclass::text = any(%s)""",
            (tables,),
        ).fetchall()
    )
    assert rows == dict.fromkeys(tables, "A")


def test_owner_inserts_are_the_only_way_in(conn: psycopg.Connection[Any]) -> None:
    _seed_entry(conn)
    row = conn.execute("select id, occurred_at, txid, db_user, metadata from auditdb.log").fetchone()
    assert row is not None
    assert row[0] > 0 and row[2] > 0
    assert row[3] == conn.info.user  # session_user, even though the insert ran as auditdb_owner
    assert row[4] == {}


def test_a_superusers_plain_insert_is_stamped_with_its_login(conn: psycopg.Connection[Any]) -> None:
    # A superuser can do anything (an INSERT guard stopped nobody: `set role auditdb_owner` passed
    # it); a plain INSERT still carries its login as db_user, and sealing is what shows an added entry.
    conn.execute("insert into auditdb.log (action) values ('ADDED_BY_HAND')")
    assert scalar(conn, "select db_user from auditdb.log where action = 'ADDED_BY_HAND'") == conn.info.user
