"""`auditdb apply` makes the database match the config; `status` reports every kind of drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.status import EVENT_TRIGGERS
from tests.fix_capture import entries
from tests.fix_db import scalar

SCHEMA = """
create table a (id int primary key, v int);
create table b (id int primary key, v int);
create table p (id int, k int, primary key (id, k)) partition by list (k);
create table p1 partition of p for values in (1);
"""
TWO = '[tables."public.a"]\n[tables."public.b"]\n[tables."public.p"]\n'


@pytest.fixture
def project(conn: psycopg.Connection[Any], tmp_path: Path) -> Path:
    conn.execute(SCHEMA)
    (tmp_path / "auditdb.toml").write_text(TWO)
    return tmp_path


def _cli(conn: psycopg.Connection[Any], project: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "--config", str(project / "auditdb.toml"), *args])


def _trigger_count(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, "select count(*) from pg_trigger where tgname like 'auditdb\\_capture\\_%'"))


def test_dry_run_prints_sql_and_changes_nothing(conn: psycopg.Connection[Any], project: Path) -> None:
    result = _cli(conn, project, "apply", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "create or replace function" in result.output and "create trigger auditdb_capture_upd" in result.output
    assert _trigger_count(conn) == 0
    assert scalar(conn, "select count(*) from auditdb.tracked_tables") == 0


def test_apply_then_status_then_apply_again(conn: psycopg.Connection[Any], project: Path) -> None:
    before = _cli(conn, project, "status")
    assert before.exit_code == 1 and before.output.count("missing") == 3
    result = _cli(conn, project, "apply")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["added public.a", "added public.b", "added public.p"]
    assert _trigger_count(conn) == 4 * 4  # a, b, p and p1
    owner = scalar(
        conn,
        """select distinct proowner::regrole::text from pg_proc
                             where proname like 'auditdb\\_capture\\_%'""",
    )
    assert owner == "auditdb_capture"  # append-only, never auditdb_owner (tests/hardening/test_untrusted_code.py)
    status = _cli(conn, project, "status")
    assert status.exit_code == 0 and status.output.count("installed") == 3
    again = _cli(conn, project, "apply")
    assert again.output.strip() == "nothing to do: 3 table(s) match the config"


def test_status_reports_drift_and_apply_repairs_it(conn: psycopg.Connection[Any], project: Path) -> None:
    _cli(conn, project, "apply")
    conn.execute("alter table a disable trigger auditdb_capture_upd")
    conn.execute("alter table b enable trigger auditdb_capture_ins")  # origin-only: silenced in replica mode
    conn.execute("create table p2 partition of p for values in (2)")
    (project / "auditdb.toml").write_text(
        TWO.replace('[tables."public.b"]', '[tables."public.b"]\nentity_type = "Bee"')
    )
    status = _cli(conn, project, "status")
    assert status.exit_code == 1
    lines = {line.split()[0]: line for line in status.output.splitlines()}
    assert "disabled" in lines["public.a"] and "auditdb_capture_upd" in lines["public.a"]
    assert "disabled" in lines["public.b"]
    assert "outdated" in lines["public.p"]
    repaired = _cli(conn, project, "apply")
    assert repaired.exit_code == 0, repaired.output
    assert sorted(repaired.output.splitlines()) == ["updated public.a", "updated public.b", "updated public.p"]
    assert _cli(conn, project, "status").exit_code == 0
    assert (
        scalar(conn, "select count(*) from pg_trigger where tgname like 'auditdb\\_capture\\_%' and tgenabled <> 'A'")
        == 0
    )
    conn.execute("insert into p values (1, 2)")
    conn.execute("insert into b values (1, 1)")
    assert [(e["entity_type"], e["action"]) for e in entries(conn)] == [("P", "CREATE"), ("Bee", "CREATE")]


def test_removed_tables_are_reported_then_uncaptured(conn: psycopg.Connection[Any], project: Path) -> None:
    _cli(conn, project, "apply")
    (project / "auditdb.toml").write_text('[tables."public.a"]\n')
    status = _cli(conn, project, "status")
    assert status.exit_code == 1
    assert "public.b  not in config" in status.output and "public.p  not in config" in status.output
    kept = _cli(conn, project, "apply")  # removing capture needs --remove: without it, named and left
    assert kept.exit_code == 0 and kept.stdout == "nothing to do: 1 table(s) match the config\n"
    assert sorted(kept.stderr.splitlines()) == [
        "would remove public.b: run apply --remove to remove its capture",
        "would remove public.p: run apply --remove to remove its capture",
    ]
    assert _trigger_count(conn) == 4 * 4
    assert scalar(conn, "select count(*) from auditdb.tracked_tables") == 3
    result = _cli(conn, project, "apply", "--remove")
    assert sorted(result.output.splitlines()) == ["removed public.b", "removed public.p"]
    assert _trigger_count(conn) == 4
    assert scalar(conn, "select count(*) from pg_proc where proname like 'auditdb\\_capture\\_%'") == 1
    assert [r[0] for r in conn.execute("select table_name from auditdb.tracked_tables")] == ["public.a"]
    conn.execute("insert into b values (1, 1)")
    assert entries(conn) == []


def test_apply_is_all_or_nothing(conn: psycopg.Connection[Any], project: Path) -> None:
    (project / "auditdb.toml").write_text(TWO + '[tables."public.missing"]\n')
    result = _cli(conn, project, "apply")
    assert result.exit_code == 1 and "public.missing does not exist" in result.output
    assert _trigger_count(conn) == 0


def test_status_without_config_lists_captured_tables(conn: psycopg.Connection[Any], project: Path) -> None:
    _cli(conn, project, "apply")
    (project / "auditdb.toml").unlink()
    result = _cli(conn, project, "status")
    assert result.exit_code == 1
    assert "no config" in result.output and "public.a  not in config" in result.output


def test_status_checks_event_triggers_and_apply_restores_them(conn: psycopg.Connection[Any], project: Path) -> None:
    _cli(conn, project, "apply")
    conn.execute("alter event trigger auditdb_sql_drop disable")
    conn.execute("drop event trigger auditdb_ddl_command_end")
    status = _cli(conn, project, "status")
    assert status.exit_code == 1
    lines = {" ".join(line.split()[:3]): line for line in status.output.splitlines()}
    assert "missing" in lines["event trigger auditdb_ddl_command_end"]
    assert "disabled" in lines["event trigger auditdb_sql_drop"]
    repaired = _cli(conn, project, "apply")
    assert repaired.exit_code == 0, repaired.output
    assert _cli(conn, project, "status").exit_code == 0
    states = dict(conn.execute("select evtname, evtenabled from pg_event_trigger").fetchall())
    assert states == dict.fromkeys(EVENT_TRIGGERS, "A")


def test_python_and_the_watchers_name_the_capture_triggers_alike(conn: psycopg.Connection[Any]) -> None:
    from auditdb.names import CAPTURE_TRIGGERS

    row = conn.execute("select auditdb.capture_trigger_names()").fetchone()
    assert row is not None
    assert row[0] == [CAPTURE_TRIGGERS[e] for e in ("INSERT", "UPDATE", "DELETE", "TRUNCATE")]


def test_every_capture_function_has_the_generic_ones_settings(conn: psycopg.Connection[Any], project: Path) -> None:
    # One list of capture settings (auditdb.capture_generic's SET block): the generated functions
    # take theirs from it, and so do generic copies made by the DDL watcher.
    assert _cli(conn, project, "apply").exit_code == 0
    conn.execute("alter table a add column w int")  # a's capture now runs the generic body
    rows = conn.execute(
        """select p.proname::text, p.proconfig, obj_description(p.oid, 'pg_proc') from pg_proc p
            where p.pronamespace = 'auditdb'::regnamespace and p.prorettype = 'trigger'::regtype
              and p.proname like 'auditdb\\_capture\\_%'"""
    ).fetchall()
    generic = scalar(conn, "select proconfig from pg_proc where oid = 'auditdb.capture_generic()'::regprocedure")
    assert "TimeZone=UTC" in generic and "jit=off" in generic and any(s.startswith("search_path=") for s in generic)
    assert len(rows) == 3 and {r[2] == "auditdb:generic" for r in rows} == {True, False}
    assert all(r[1] == generic for r in rows), rows


def test_status_reports_a_capture_function_whose_settings_changed(conn: psycopg.Connection[Any], project: Path) -> None:
    # Its pinned search_path and styles are part of what keeps capture from running the
    # application's code: a function without them is not as apply made it.
    assert _cli(conn, project, "apply").exit_code == 0
    function = scalar(
        conn, "select oid::regprocedure::text from pg_proc where proname like 'auditdb\\_capture\\_a\\_%%'"
    )
    conn.execute(f"alter function {function} reset all")
    result = _cli(conn, project, "status")
    assert result.exit_code == 1, result.output
    assert "public.a" in result.output and "settings changed since apply" in result.output
    assert _cli(conn, project, "apply").exit_code == 0
    assert _cli(conn, project, "status").exit_code == 0
