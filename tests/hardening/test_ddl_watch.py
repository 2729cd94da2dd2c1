"""Issue 12, items 3-6 and 9: the DDL watchers fail closed, and nothing that changes tracked data
or auditing goes unlogged: oversized context, rewrites, ALTER TYPE, forged TRUNCATE state,
partitions leaving or joining, capture triggers renamed before they are dropped.

Every attack runs as the application role, which owns its tables and types.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
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
    # The command tag only: a query string may carry values of masked columns, and no redaction of
    # arbitrary SQL is trustworthy enough to store.
    assert rewrite["metadata"]["command"] == "ALTER TABLE" and rewrite["actor_id"] == "mallory"
    assert "query" not in rewrite["metadata"] and "attacker" not in json.dumps(rewrite["metadata"])
    assert rewrite["table_name"] == "public.users"


def test_the_recorded_command_never_carries_a_masked_value(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    # A migration that writes a secret and alters the table in one query string.
    app.execute(
        "insert into users values (3, 'cy', 'member', 'hash-SECRET-3', 3); "
        "alter table users alter column login type text using login || '' /* 'hash-SECRET-4' */"
    )
    assert "SECRET" not in str(conn.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone())


def test_renaming_an_enum_value_a_tracked_column_uses_is_logged(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute(
        "do $$ begin execute 'alter type user_role rename value ''admin'' to ''member2'''; "
        "execute 'alter type user_role rename value ''member'' to ''admin'''; end $$"
    )
    changed = _changes(conn, "alter_type")
    assert len(changed) == 2 and changed[-1]["metadata"]["labels"] == ["admin", "member2"]
    assert changed[-1]["metadata"]["command"] == "ALTER TYPE"  # the tag, never the DO block's body
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


def test_a_grandchild_is_logged_as_inheriting_the_tracked_table(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    # Rows of a child's child show in `select * from users` too.
    app.execute("create table users_archive () inherits (users)")
    app.execute("create table users_older () inherits (users_archive)")
    app.execute("create table users_oldest (like users_older)")
    app.execute("alter table users_oldest inherit users_older")
    app.execute("alter table users_oldest no inherit users_older")
    logged = [(e["metadata"]["operation"], e["metadata"]["child"]) for e in audit_entries(conn, "metadata ? 'child'")]
    assert logged == [
        ("inherit", "public.users_archive"),
        ("inherit", "public.users_older"),
        ("inherit", "public.users_oldest"),
        ("no_inherit", "public.users_oldest"),
    ]


def test_inheritance_is_seen_however_the_command_is_spelled(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any]
) -> None:
    app.execute("create table sneaky (like users)")
    app.execute("do $$ begin execute 'alter table sneaky ' || chr(73) || 'NHERIT users'; end $$")
    app.execute("alter table sneaky no inherit users")
    assert [e["metadata"]["operation"] for e in audit_entries(conn, "metadata->>'child' = 'public.sneaky'")] == [
        "inherit",
        "no_inherit",
    ]


def test_a_composite_type_changed_under_a_tracked_column_is_logged(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    app_conn.execute("""
        create type addr_t as (street text, pin int, city text);
        create table rowsrc (a int, b int);
        create table profiles (id int primary key, addr addr_t, r rowsrc);
        insert into profiles values (1, row('Main st', 1234, 'Paris'), row(1, 2));
    """)
    apply(conn, parse_config(tomllib.loads('[tables."public.profiles"]\n')))
    app_conn.execute("alter type addr_t drop attribute pin")
    app_conn.execute("alter table rowsrc drop column b")
    changed = [e["metadata"]["type"] for e in _changes(conn, "alter_type")]
    assert changed == ["public.addr_t", "public.rowsrc"]


def test_a_half_detached_partition_is_reported_and_logged(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any], dsn: str, tmp_path: Path, app_dsn: str
) -> None:
    # DETACH … CONCURRENTLY interrupted after its first transaction: the partition's rows are
    # hidden from the table and no event trigger fired.
    with psycopg.connect(app_dsn) as reader:
        reader.execute("select count(*) from orders")  # holds the table open
        with pytest.raises(psycopg.errors.QueryCanceled):
            app.execute("set statement_timeout = '1s'")
            app.execute("alter table orders detach partition orders_eu concurrently")
        reader.rollback()
    app.execute("reset statement_timeout")
    (tmp_path / "auditdb.toml").write_text(TOML)
    status = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "status"])
    assert status.exit_code == 1 and "half-detached" in status.output
    app.execute("alter table orders add column note text")  # the next DDL on the table logs it
    [detached] = _changes(conn, "detach_partition")
    assert detached["metadata"]["partition"] == "public.orders_eu" and detached["metadata"]["rows"] == 1


def test_ensure_partitions_gives_up_rather_than_hold_every_write(
    conn: psycopg.Connection[Any], app: psycopg.Connection[Any], dsn: str
) -> None:
    future = scalar(conn, "select 'log_' || to_char(auditdb.month_start(3) at time zone 'UTC', 'YYYY_MM')")
    conn.execute(f"drop table auditdb.{future}")
    with app.transaction():
        app.execute("update users set n = n + 1 where id = 1")  # holds auditdb.log until it ends
        with pytest.raises(psycopg.errors.LockNotAvailable, match="within 2 s"), conn.transaction():
            conn.execute("select auditdb.ensure_partitions(3)")
    assert conn.execute("select auditdb.ensure_partitions(3)").fetchall() == [(future,)]
