"""Issue 12, items 3-6 and 9: the DDL watchers fail closed, and nothing that changes tracked data
or auditing goes unlogged: oversized context, rewrites, ALTER TYPE, forged TRUNCATE state,
partitions leaving or joining, capture triggers renamed before they are dropped.

Every attack runs as the application role, which owns its tables and types.
"""

from __future__ import annotations

import tomllib
from typing import Any

import psycopg
import pytest

from auditdb.config import parse_config
from auditdb.triggers import apply
from tests.fix_capture import audit_entries, entries
from tests.fix_db import APP_ROLE, scalar

USERS = """
create type public.user_role as enum ('member', 'admin');
create table public.users (id int primary key, login text, role public.user_role, password_hash text, n int);
insert into public.users values (1, 'ann', 'member', 'hash-1', 1), (2, 'bob', 'admin', 'hash-2', 2);
create table public.orders (id int, region text, amount int, primary key (id, region)) partition by list (region);
create table public.orders_eu partition of public.orders for values in ('eu');
create table public.orders_us partition of public.orders for values in ('us');
insert into public.orders values (1, 'eu', 10), (2, 'us', 20), (3, 'us', 30);
"""
TOML = """
[defaults]
mask = ["password*"]
system_roles = ["auditdb_migrator"]
[tables."public.users"]
name = "login"
[tables."public.orders"]
"""
HUGE = "x" * 12_800


@pytest.fixture
def app(conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The application's connection, its tables tracked."""
    app_conn.execute(USERS)
    apply(conn, parse_config(tomllib.loads(TOML)))
    return app_conn


def _changes(conn: psycopg.Connection[Any], operation: str) -> list[dict[str, Any]]:
    return audit_entries(conn, "action = 'AUDIT_CHANGED' and metadata->>'operation' = %s", (operation,))


def _refusing(conn: psycopg.Connection[Any], refuse: bool = True) -> None:
    toml = TOML.replace("[defaults]", f"[defaults]\nrefuse_data_ddl = {'true' if refuse else 'false'}")
    apply(conn, parse_config(tomllib.loads(toml)))


# Item 3: the watchers fail closed; context is bounded where it is read.


@pytest.mark.parametrize(
    "ddl",
    [
        "alter table users disable trigger auditdb_capture_upd",
        "drop trigger auditdb_capture_upd on users",
        "drop table users",
        "alter table orders detach partition orders_us",
    ],
)
def test_an_oversized_context_never_keeps_a_watcher_from_logging(
    ddl: str, conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    with app.transaction():
        app.execute(
            "select set_config('auditdb.actor_id', %s, true), set_config('auditdb.user_agent', %s, true)", (HUGE, HUGE)
        )
        app.execute(ddl)
    [logged] = [e for e in audit_entries(conn, "action = 'AUDIT_CHANGED'") if e["metadata"].get("operation") != "apply"]
    assert logged["actor_id"] == "x" * 256 and len(logged["user_agent"]) == 1024
    assert logged["db_user"] == APP_ROLE


def test_capture_bounds_an_oversized_context_too(conn: psycopg.Connection[Any], app: psycopg.Connection[Any]) -> None:
    with app.transaction():
        app.execute(
            "select set_config('auditdb.actor_id', %s, true), set_config('auditdb.ip', %s, true)",
            (HUGE, "999.1.1.1/" + HUGE),
        )
        app.execute("update users set n = n + 1 where id = 1")
    [update] = entries(conn, "action = 'UPDATE'")
    assert update["actor_id"] == "x" * 256 and update["ip"] is None
    assert len(update["metadata"]["invalid_ip"]) == 64


def test_a_watcher_that_cannot_write_its_entry_fails_the_ddl(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    # Something (here a superuser's constraint) keeps AUDIT_CHANGED entries from being written.
    conn.execute("alter table auditdb.log add constraint no_audit_changed check (action <> 'AUDIT_CHANGED') not valid")
    for ddl in (
        "alter table users disable trigger auditdb_capture_upd",
        "drop trigger auditdb_capture_upd on users",
        "drop table users",
    ):
        with pytest.raises(psycopg.errors.ExternalRoutineException, match="could not be recorded"), app.transaction():
            app.execute(ddl)
    assert (
        scalar(
            conn,
            "select tgenabled from pg_trigger where tgname = 'auditdb_capture_upd' and tgrelid = 'users'::regclass",
        )
        == "A"
    )


# Item 4: DDL that can change stored values is logged (or refused outside system roles).


@pytest.mark.parametrize(
    "ddl",
    [
        "alter table users alter column role type text using (case when id = 1 then 'admin' else role::text end)",
        "alter table users alter column password_hash type text using 'attacker-known-hash'",
        "alter table users alter column n type bigint using 0",
    ],
)
def test_a_rewrite_of_a_tracked_table_is_logged_with_its_command(
    ddl: str, conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    with app.transaction():
        app.execute("select set_config('auditdb.actor_id', 'mallory', true)")
        app.execute(ddl)
    [rewrite] = _changes(conn, "rewrite")
    assert rewrite["metadata"]["query"] == ddl and rewrite["actor_id"] == "mallory"
    assert rewrite["table_name"] == "public.users"


def test_renaming_an_enum_value_a_tracked_column_uses_is_logged(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute(
        "do $$ begin execute 'alter type user_role rename value ''admin'' to ''member2'''; "
        "execute 'alter type user_role rename value ''member'' to ''admin'''; end $$"
    )
    changed = _changes(conn, "alter_type")
    assert len(changed) == 2 and changed[-1]["metadata"]["labels"] == ["admin", "member2"]
    assert "rename value" in changed[-1]["metadata"]["query"]
    # The capture is untouched: no false schema change for the enum column (item 11).
    assert _changes(conn, "schema_changed") == []


def test_refuse_data_ddl_refuses_outside_system_roles(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    _refusing(conn)
    for ddl in (
        "alter table users alter column password_hash type text using 'x'",
        "alter type user_role rename value 'admin' to 'root'",
        "alter table orders detach partition orders_us",
        "alter table users disable trigger auditdb_capture_upd",
        "alter table users enable replica trigger auditdb_capture_upd",
        "alter trigger auditdb_capture_upd on users rename to harmless",
        "drop trigger auditdb_capture_upd on users",
        "drop table users",
        "create table users_archive () inherits (users)",
    ):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match=r" refused: "),
            app.transaction(),
        ):
            app.execute(ddl)
    conn.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'auditdb_migrator') then "
        "create role auditdb_migrator; end if; end $$"
    )
    conn.execute(f"grant auditdb_migrator to {APP_ROLE}")
    try:
        app.execute("alter table users alter column password_hash type text using 'x'")
    finally:
        conn.execute(f"revoke auditdb_migrator from {APP_ROLE}")
    assert len(_changes(conn, "rewrite")) == 1


# Item 5: TRUNCATE is logged whatever state the session forged.


@pytest.mark.parametrize("generic", [False, True])
def test_a_forged_truncating_setting_hides_no_truncate(
    generic: bool, conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    if generic:
        app.execute("alter table orders add column note text; alter table orders drop column note")
        app.execute("alter table users add column note text; alter table users drop column note")
    app.execute("""do $$ begin
        perform set_config('auditdb.truncating', statement_timestamp()::text, true);
        truncate orders_us;
        perform set_config('auditdb.truncating', statement_timestamp()::text, true);
        truncate users;
    end $$""")
    logged = [(e["table_name"], e["metadata"].get("partition")) for e in entries(conn, "metadata ? 'truncate'")]
    assert logged == [("public.orders", "public.orders_us"), ("public.users", None)]


# Item 6: partitions leaving or joining a tracked table are logged with their rows.


def test_a_partition_detached_then_dropped_is_logged_with_its_rows(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute("alter table orders detach partition orders_us")
    app.execute("drop table orders_us")
    [detached] = _changes(conn, "detach_partition")
    assert detached["metadata"]["partition"] == "public.orders_us" and detached["metadata"]["rows"] == 2
    # Its writes are no longer logged as the tracked table's (its capture triggers went with it).
    assert scalar(conn, "select count(*) from auditdb.log where action <> 'AUDIT_CHANGED'") == 0


def test_a_filled_table_attached_is_logged_with_its_rows_and_captured(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute("create table orders_asia (id int, region text, amount int, primary key (id, region))")
    app.execute("insert into orders_asia select g, 'asia', g from generate_series(1, 7) g")
    app.execute("alter table orders attach partition orders_asia for values in ('asia')")
    [attached] = _changes(conn, "attach_partition")
    assert attached["metadata"]["rows"] == 7 and len(attached["metadata"]["triggers"]) == 4
    app.execute("update orders_asia set amount = 0 where id = 1")
    assert [e["action"] for e in entries(conn)] == ["UPDATE"]


def test_a_partition_dropped_in_place_is_logged(conn: psycopg.Connection[Any], app: psycopg.Connection[Any]) -> None:
    app.execute("drop table orders_eu")
    [dropped] = _changes(conn, "drop_partition")
    assert dropped["table_name"] == "public.orders" and dropped["metadata"]["partition"] == "public.orders_eu"


# Item 9: a capture trigger renamed, then dropped.


def test_a_renamed_capture_trigger_is_logged_when_renamed_and_when_dropped(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute("alter trigger auditdb_capture_upd on users rename to harmless")
    app.execute("drop trigger harmless on users")
    assert [e["entity_name"] for e in _changes(conn, "rename_trigger")] == ["harmless"]
    [dropped] = _changes(conn, "drop_trigger")
    assert dropped["metadata"]["uncaptured"] == ["UPDATE"] and dropped["entity_name"] == "harmless"


def test_apply_puts_a_renamed_capture_trigger_back_without_capturing_twice(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute("alter trigger auditdb_capture_upd on users rename to harmless")
    apply(conn, parse_config(tomllib.loads(TOML)))
    app.execute("update users set n = 5 where id = 1")
    assert [e["action"] for e in entries(conn)] == ["UPDATE"]
    assert (
        scalar(conn, "select count(*) from pg_trigger where tgrelid = 'users'::regclass and tgname = 'harmless'") == 0
    )


def test_an_inheritance_child_of_a_tracked_table_is_logged(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    # Its rows show in `select * from users`, but writes to it fire only its own triggers.
    app.execute("create table users_archive () inherits (users)")
    app.execute("create table users_more (id int primary key, login text, role user_role, password_hash text, n int)")
    app.execute("alter table users_more inherit users")
    assert [e["entity_name"] for e in _changes(conn, "inherit")] == ["public.users_archive", "public.users_more"]
