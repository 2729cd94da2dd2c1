"""Schema changes never break writes or silently lose columns; auditing changes are AUDIT_CHANGED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_capture import Track, audit_entries, entries
from tests.fix_db import APP_ROLE

TOML = """
[defaults]
mask = ["password*", "*secret*"]
ignore = ["updated_at"]
[tables."public.t"]
entity_type = "T"
name = "label"
soft_delete = "is_deleted"
rules = [{ on = "UPDATE", when = "OLD.v IS DISTINCT FROM NEW.v AND NEW.v > 100", action = "BIG" }]
"""
SCHEMA = "create table t (id int primary key, label text, v int, password text, is_deleted boolean default false)"


@pytest.fixture
def tracked(conn: psycopg.Connection[Any], track: Track) -> psycopg.Connection[Any]:
    track(SCHEMA, TOML)
    conn.execute("insert into t (id, label, v, password) values (1, 'one', 1, 'pw-1')")
    return conn


def _status(conn: psycopg.Connection[Any], tmp_path: Path) -> Any:
    (tmp_path / "auditdb.toml").write_text(TOML)
    return CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "--config", str(tmp_path / "auditdb.toml"), "status"])


def test_added_column_is_captured_and_masked_by_globs(tracked: psycopg.Connection[Any], tmp_path: Path) -> None:
    tracked.execute("alter table t add column colour text, add column api_secret text")
    tracked.execute("insert into t (id, label, colour, api_secret) values (2, 'two', 'red', 'shh-1')")
    tracked.execute("update t set colour = 'blue', api_secret = 'shh-2', v = 500 where id = 2")
    tracked.execute("update t set is_deleted = true where id = 2")
    create, big, deleted = entries(tracked, "entity_id = '2'")
    assert create["action"] == "CREATE" and create["entity_name"] == "two"
    assert create["changes"]["colour"] == {"new": "red"} and create["changes"]["api_secret"] == {"new": "***"}
    assert big["action"] == "BIG"
    assert big["changes"] == {
        "colour": {"old": "red", "new": "blue"},
        "api_secret": {"old": "***", "new": "***"},
        "v": {"old": None, "new": 500},
    }
    assert deleted["action"] == "DELETE"
    assert create["metadata"]["capture"] == "generic"
    dump = tracked.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone()
    assert dump is not None and "shh-" not in dump[0] and "pw-1" not in dump[0]
    status = _status(tracked, tmp_path)
    assert status.exit_code == 1 and "generic capture in use" in status.output
    [changed] = audit_entries(tracked, "metadata->>'operation' = 'schema_changed'")
    assert changed["entity_name"] == "public.t"


def test_apply_after_a_schema_change_restores_the_fast_path(tracked: psycopg.Connection[Any], tmp_path: Path) -> None:
    tracked.execute("alter table t add column colour text")
    (tmp_path / "auditdb.toml").write_text(TOML)
    result = CliRunner().invoke(cli, ["--dsn", tracked.info.dsn, "--config", str(tmp_path / "auditdb.toml"), "apply"])
    # stdout only: stderr warns that [defaults] globs *secret* and updated_at match no column yet
    assert result.stdout.strip() == "updated public.t"
    assert _status(tracked, tmp_path).exit_code == 0
    tracked.execute("update t set colour = 'red'")
    [e] = entries(tracked, "action = 'UPDATE'")
    assert e["changes"] == {"colour": {"old": None, "new": "red"}} and "capture" not in e["metadata"]


def test_dropped_and_renamed_columns_never_break_writes(tracked: psycopg.Connection[Any]) -> None:
    tracked.execute("alter table t rename column password to pw")  # still masked: it was masked at apply
    tracked.execute("alter table t drop column label")  # the name expression's column
    tracked.execute("update t set pw = 'pw-2', v = 2")
    tracked.execute("insert into t (id, v) values (3, 3)")
    tracked.execute("delete from t where id = 3")
    update, create, delete = entries(tracked, "action <> 'CREATE' or entity_id = '3'")
    assert update["changes"] == {"pw": {"old": "***", "new": "***"}, "v": {"old": 1, "new": 2}}
    assert "capture_warning" in update["metadata"] and update["entity_name"] is None
    assert create["changes"]["pw"] == {"new": None} and "label" not in create["changes"]
    assert delete["action"] == "DELETE"
    dump = tracked.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone()
    assert dump is not None and "pw-2" not in dump[0]


def test_renamed_table_keeps_capturing(tracked: psycopg.Connection[Any]) -> None:
    tracked.execute("alter table t rename to t_renamed")
    tracked.execute("update t_renamed set v = 7")
    [e] = entries(tracked, "action = 'UPDATE'")
    assert e["table_name"] == "public.t_renamed" and e["changes"] == {"v": {"old": 1, "new": 7}}


def test_partitions_created_or_attached_later_are_captured(conn: psycopg.Connection[Any], track: Track) -> None:
    track("create table p (id int, k int, primary key (id, k)) partition by list (k)", '[tables."public.p"]\n')
    conn.execute("create table p1 partition of p for values in (1)")
    conn.execute("create table p2 (id int not null, k int not null, primary key (id, k))")
    conn.execute("alter table p attach partition p2 for values in (2)")
    conn.execute("insert into p1 values (1, 1)")
    conn.execute("insert into p2 values (2, 2)")
    conn.execute("insert into p values (3, 1), (4, 2)")
    assert sorted((e["action"], e["entity_id"]) for e in entries(conn)) == [
        ("BULK_CREATE", '{"k": 1, "id": 3}'),
        ("BULK_CREATE", '{"k": 2, "id": 4}'),
        ("CREATE", '{"k": 1, "id": 1}'),
        ("CREATE", '{"k": 2, "id": 2}'),
    ]  # jsonb's canonical key order
    enabled = conn.execute("""select count(*) from pg_trigger where tgname like 'auditdb\\_capture\\_%'
                              and tgenabled = 'A'""").fetchone()
    assert enabled is not None and enabled[0] == 12


def test_disabling_or_dropping_capture_is_logged(tracked: psycopg.Connection[Any]) -> None:
    tracked.execute("alter table t disable trigger auditdb_capture_upd")
    tracked.execute("alter table t enable trigger auditdb_capture_upd")
    tracked.execute("drop trigger auditdb_capture_del on t")
    ops = [
        (e["metadata"]["operation"], e["metadata"]["trigger"])
        for e in audit_entries(tracked, "action = 'AUDIT_CHANGED' and metadata ? 'trigger'")
    ]
    assert ops == [
        ("disable", "auditdb_capture_upd"),
        ("enable_origin_only", "auditdb_capture_upd"),
        ("drop_trigger", "auditdb_capture_del on public.t"),
    ]


def test_log_partitions_and_guards_changes_are_logged(conn: psycopg.Connection[Any]) -> None:
    months = [r[0] for r in conn.execute("select partition_name from auditdb.partitions() order by 1")]
    conn.execute(f"alter table auditdb.log detach partition auditdb.{months[-1]}")
    conn.execute(f"drop table auditdb.{months[-1]}")
    conn.execute(f"alter table auditdb.{months[0]} disable trigger log_append_only")
    ops = [(e["metadata"]["operation"], e["entity_id"]) for e in audit_entries(conn)]
    assert ("detach", f"auditdb.{months[-1]}") in ops
    assert ("drop_partition", months[-1]) in ops
    assert ("alter table", f"auditdb.{months[0]}") in ops


def test_the_log_watcher_knows_each_guard_as_install_makes_it(conn: psycopg.Connection[Any]) -> None:
    # DDL on the log that leaves its guards as they are logs nothing: the watcher's idea of each
    # guard (events, condition, ALWAYS) is what sql/definitions/guard.sql makes, on every table.
    months = [r[0] for r in conn.execute("select partition_name from auditdb.partitions() order by 1")]
    for table in ("auditdb.log", "auditdb.log_default", f"auditdb.{months[0]}"):
        conn.execute(
            f"alter table {table} enable always trigger log_append_only, enable always trigger log_insert_guard"
        )
    assert audit_entries(conn, "metadata ? 'trigger'") == []


def test_a_guard_renamed_then_dropped_or_replaced_is_logged(conn: psycopg.Connection[Any]) -> None:
    # Each step of taking a guard away is an entry: the rename (the guard is gone by its name),
    # the drop under its new name, and a replacement that fires on other events or without its
    # condition.
    conn.execute("alter trigger log_insert_guard on auditdb.log rename to quiet")
    conn.execute("drop trigger quiet on auditdb.log")
    conn.execute(
        "create or replace trigger log_append_only before delete on auditdb.log_default"
        " for each statement execute function auditdb.refuse_log_change()"
    )
    found = [
        (e["metadata"]["operation"], e["metadata"].get("trigger"), e["metadata"].get("state"))
        for e in audit_entries(conn)
    ]
    assert ("alter trigger", "log_insert_guard", "missing") in found, found
    assert ("drop_trigger", "quiet on auditdb.log", None) in found, found
    assert ("create trigger", "log_append_only", "changed") in found, found


def test_dropping_a_tracked_table_is_logged(tracked: psycopg.Connection[Any]) -> None:
    tracked.execute("drop table t")
    [e] = audit_entries(tracked, "metadata->>'operation' = 'drop_table'")
    assert e["entity_name"] == "public.t"


def test_application_ddl_never_fails_because_of_auditdb(
    conn: psycopg.Connection[Any], track: Track, app_conn: psycopg.Connection[Any]
) -> None:
    app_conn.execute("create table owned (id int, k int, primary key (id, k)) partition by list (k)")
    track("", '[tables."public.owned"]\n')
    app_conn.execute("create table owned_1 partition of owned for values in (1)")
    app_conn.execute("alter table owned add column extra text")
    app_conn.execute("alter table owned rename column extra to more")
    app_conn.execute("insert into owned values (1, 1, 'x')")
    app_conn.execute("create index on owned (more)")
    app_conn.execute("drop table owned_1")
    [e] = entries(conn)
    assert e["changes"]["more"] == {"new": "x"} and e["db_user"] == APP_ROLE


def test_apply_is_logged_once(conn: psycopg.Connection[Any], track: Track) -> None:
    track("create table a (id int primary key)", '[tables."public.a"]\n')
    track("", '[tables."public.a"]\nentity_type = "Aa"\n')
    ops = [(e["entity_type"], e["metadata"]) for e in audit_entries(conn)]
    assert ops == [
        ("AuditConfig", {"operation": "apply", "added": ["public.a"], "updated": [], "removed": []}),
        ("AuditConfig", {"operation": "apply", "added": [], "updated": ["public.a"], "removed": []}),
    ]
