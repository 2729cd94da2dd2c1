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
@pytest.mark.parametrize("verb", sorted(STATEMENTS))
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
        expected = "written only by auditdb" if verb == "insert" else "append-only"
        assert expected in str(caught.value), (table, str(caught.value))
    assert scalar(conn, "select count(*) from auditdb.log") == 1
    assert scalar(conn, "select action from auditdb.log") == "LOGIN"


def test_guards_are_enabled_always_on_every_log_table(conn: psycopg.Connection[Any]) -> None:
    tables = _log_tables(conn)
    for guard in ("log_append_only", "log_insert_guard"):
        rows = dict(
            conn.execute(
                """select tgrelid::regclass::text, tgenabled from pg_trigger
                where tgname = %s and tgrelid::regclass::text = any(%s)""",
                (guard, tables),
            ).fetchall()
        )
        assert rows == dict.fromkeys(tables, "A"), guard


def test_owner_inserts_are_the_only_way_in(conn: psycopg.Connection[Any]) -> None:
    _seed_entry(conn)
    row = conn.execute("select id, occurred_at, txid, db_user, metadata from auditdb.log").fetchone()
    assert row is not None
    assert row[0] > 0 and row[2] > 0
    assert row[3] == conn.info.user  # session_user, even though the insert ran as auditdb_owner
    assert row[4] == {}


def test_a_role_with_bypassrls_and_pg_write_all_data_cannot_add_entries(
    conn: psycopg.Connection[Any], pg_server: Any, dbname: str, make_role: Any
) -> None:
    # Privileges alone do not stop it (pg_write_all_data grants INSERT, BYPASSRLS skips the policy
    # that would refuse it): the INSERT guard does, and so it stayed when its cost went (0008).
    role = make_role()
    conn.execute(f"alter role {role} bypassrls")
    conn.execute(f"grant pg_write_all_data to {role}")
    with psycopg.connect(pg_server.dsn(dbname, user=role), autocommit=True) as writer:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="written only by auditdb"):
            writer.execute(
                "insert into auditdb.log (id, occurred_at, action, entity_type, entity_id, db_user, txid)"
                " values (1, now() - interval '1 day', 'CREATE', 'Item', '1', 'alice', 1)"
            )
    assert scalar(conn, "select count(*) from auditdb.log where db_user = 'alice'") == 0


def test_auditdbs_own_inserts_call_no_guard_function(conn: psycopg.Connection[Any]) -> None:
    # The INSERT guard's condition is its WHEN clause: an entry written as auditdb_owner or
    # auditdb_capture runs no trigger function at all (it used to be a PL/pgSQL call each time).
    with conn.transaction():
        conn.execute("set local track_functions = 'all'")
        conn.execute("set local role auditdb_owner")
        conn.execute("insert into auditdb.log (action) values ('LOGIN')")
        conn.execute("reset role")
        calls = scalar(
            conn,
            "select coalesce(sum(calls), 0) from pg_stat_xact_user_functions where funcname = 'refuse_log_change'",
        )
    assert calls == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("insert into auditdb.log (action) values ('FORGED')")
