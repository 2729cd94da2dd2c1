"""Issue 12, item 1: no path that holds rights over the log runs code the application can create.

The application role owns an enum, a range, a composite, domains (one with a CHECK) and arrays of
them, each with casts to json, jsonb and text (implicit) and an operator that call a probe. Every
path is driven: capture (generated and generic, every statement kind, rules and name expressions
over those columns), apply and status, the DDL watchers (schema changes, partitions joining and
leaving, ALTER TYPE), the worker and the CLI. The probe may only ever have run as the application.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import auditdb
from auditdb.cli import cli
from auditdb.config import parse_config
from auditdb.triggers import apply
from auditdb.worker import Worker
from tests.fix_capture import audit_entries, entries
from tests.fix_db import APP_ROLE, scalar
from tests.fix_hostile import HOSTILE_TOML, ROW, Hostile
from tests.fix_server import Server


def _apply(conn: psycopg.Connection[Any]) -> None:
    apply(conn, parse_config(tomllib.loads(HOSTILE_TOML)))


def _write_everything(app: psycopg.Connection[Any], pg_major: int) -> None:
    """Every kind of statement capture sees, as the application, with a context set."""
    with app.transaction(), auditdb.context(app, actor_id="u1"):
        app.execute(ROW)
        app.execute("insert into things (id, name, m) values (2, 'Bob', 'sad'), (3, 'Cy', 'happy')")
        app.execute("update things set m = 'sad', p = '(8,happy)', s = '[2,3)', ms = '{sad}' where id = 1")
        app.execute("update things set name = name || '!'")  # bulk, enum columns unchanged
        app.execute("update things set id = id + 10 where id = 3")  # key change
        app.execute(
            "insert into things (id, name, m) values (2, 'Bob', 'happy') on conflict (id) do update set m = 'happy'"
        )
        with app.cursor().copy("copy things (id, name, m, p) from stdin") as copy:
            copy.write_row((20, "Dee", "sad", "(1,happy)"))
        if pg_major >= 15:
            app.execute(
                "merge into things t using (values (20)) v(id) on t.id = v.id when matched then update set m = 'happy'"
            )
        app.execute("delete from things where id = 13")
        app.execute("insert into parted values (1, 'happy')")
        app.execute("update parted set m = 'sad'")
    app.execute("truncate parted")
    app.execute("truncate things")


@pytest.mark.parametrize("capture", ["generated", "generic"])
def test_capture_never_runs_application_code(
    capture: str, conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any], hostile: Hostile, pg_server: Server
) -> None:
    _apply(conn)
    if capture == "generic":
        # A column added by the application switches both tables to the generic capture.
        app_conn.execute("alter table things add column extra public.mood")
        app_conn.execute("alter table parted add column extra public.pair")
        assert (
            scalar(
                conn,
                "select count(*) from pg_proc where proname like 'auditdb\\_capture\\_%' "
                "and obj_description(oid, 'pg_proc') = 'auditdb:generic'",
            )
            == 2
        )
    hostile.clear()
    _write_everything(app_conn, pg_server.major)
    # The application's own statements ran its domain check and casts, as itself: that is allowed.
    assert {h[0] for h in hostile.hits(app_conn)} <= {APP_ROLE}
    assert hostile.foreign_hits(app_conn) == []
    logged = entries(conn)
    assert len(logged) >= 12
    assert "FORGED" not in str([(e["entity_name"], e["changes"], e["metadata"]) for e in logged])
    assert any(e["action"] == "MOOD_DROPPED" for e in logged)  # the rule over the enum still decides


def test_values_of_application_types_are_shown_as_their_output_text(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any], hostile: Hostile
) -> None:
    _apply(conn)
    app_conn.execute(ROW)
    [created] = entries(conn, "table_name = 'public.things'")
    assert created["entity_name"] == "Ann (happy)"
    changes = {k: v["new"] for k, v in created["changes"].items()}
    assert changes == {
        "id": 1,
        "name": "Ann",
        "m": "happy",
        "ms": ["happy", "sad"],
        "s": "[1.5,2)",
        "p": "(7,sad)",
        "c": "ok",
        "md": "sad",
        "secret": "***",
    }
    app_conn.execute("update things set m = 'sad', md = 'happy'")
    update = entries(conn, "table_name = 'public.things' and action <> 'CREATE'")[-1]
    assert update["action"] == "MOOD_DROPPED"
    assert update["changes"] == {"m": {"old": "happy", "new": "sad"}, "md": {"old": "sad", "new": "happy"}}


def test_apply_status_and_the_ddl_watchers_never_run_application_code(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any], hostile: Hostile, dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "auditdb.toml").write_text(HOSTILE_TOML)
    config = ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml")]
    assert CliRunner().invoke(cli, [*config, "apply"]).exit_code == 0
    assert CliRunner().invoke(cli, [*config, "status"]).exit_code == 0
    # A filled table with a predicate the planner would fold joins the tracked table, then leaves.
    app_conn.execute("create table parted_2 (id int primary key, m public.mood)")
    app_conn.execute("insert into parted_2 select g, 'happy' from generate_series(100, 149) g")
    app_conn.execute("create index on parted_2 (id) where public.probe_true()")
    hostile.clear()
    app_conn.execute("alter table parted attach partition parted_2 for values from (100) to (200)")
    app_conn.execute("alter table parted detach partition parted_2")
    app_conn.execute("alter type public.mood rename value 'sad' to 'blue'")
    app_conn.execute("alter type public.mood add value 'calm'")
    app_conn.execute("alter table things add column note public.span")
    app_conn.execute("alter table things alter column m type public.mood using 'happy'")
    app_conn.execute("alter table things rename column c to c2")
    assert CliRunner().invoke(cli, [*config, "status"]).exit_code == 1  # generic capture until apply
    assert CliRunner().invoke(cli, [*config, "apply"]).exit_code == 0
    assert CliRunner().invoke(cli, [*config, "doctor"]).exit_code in (0, 1)
    assert hostile.foreign_hits(app_conn) == []
    changes = [e["metadata"] for e in audit_entries(conn, "action = 'AUDIT_CHANGED'")]
    operations = [m.get("operation") for m in changes]
    assert {"attach_partition", "detach_partition", "alter_type", "rewrite", "schema_changed"} <= set(operations)
    # With that predicate even planning a count could run it: the entries carry the planner's
    # estimate instead of a count (a table without one is counted: tests/hardening/test_ddl_watch.py).
    moved = [m for m in changes if m.get("operation") in ("attach_partition", "detach_partition")]
    assert len(moved) == 2 and all("rows_estimated" in m and "rows" not in m for m in moved)
    # The counting did not plan a query over the table: a planned one would have run the predicate.
    with psycopg.connect(dsn, autocommit=True) as fresh:
        fresh.execute("select count(*) from parted_2")
    assert ("postgres", "postgres", "index predicate") in [(h[0], h[1], h[2]) for h in hostile.hits()]


def test_the_worker_and_the_cli_never_run_application_code(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any], hostile: Hostile, dsn: str, tmp_path: Path
) -> None:
    _apply(conn)
    app_conn.execute(ROW)
    app_conn.execute("update things set m = 'sad'")
    with app_conn.transaction():
        app_conn.execute(
            "select auditdb.emit('THING_SHARED', 'Thing', (select m::text from things), null, "
            "jsonb_build_object('m', (select m from things), 'p', (select p from things)))"
        )
    hostile.clear()
    Worker(dsn).run(once=True)
    for args in (
        ["log"],
        ["log", "--format", "json"],
        ["log", "--format", "csv"],
        ["show", str(scalar(conn, "select max(id) from auditdb.log"))],
        ["history", "Thing", "1"],
        ["history", "Thing", "1", "--as-of", "1d"],
        ["export", "--output", str(tmp_path / "x.csv")],
        ["export", "--output", str(tmp_path / "x.jsonl"), "--format", "jsonl"],
        ["doctor"],
        ["partitions", "list"],
    ):
        result = CliRunner().invoke(cli, ["--dsn", dsn, *args])
        assert result.exit_code in (0, 1), (args, result.output)
    assert hostile.foreign_hits() == []


def test_the_issue_s_backdoor_cast_finds_no_rights_to_use(
    conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any], hostile: Hostile
) -> None:
    # The reproduction from the issue: a cast that, run by anyone but the application, plants a
    # backdoor, deletes entries and replaces a capture function.
    app_conn.execute(r"""
        create type ticket_state as enum ('open', 'closed');
        create function ts_json(ticket_state) returns json language plpgsql as $f$
        begin
            if current_user <> session_user then
                execute 'create function auditdb.backdoor(q text) returns void language plpgsql security definer '
                        'as $b$ begin execute q; end $b$';
                execute 'alter table auditdb.log disable trigger log_append_only';
                execute 'delete from auditdb.log';
            end if;
            return to_json($1::text);
        end $f$;
        create cast (ticket_state as json) with function ts_json(ticket_state);
        create table tickets (id int primary key, state ticket_state);
    """)
    apply(conn, parse_config(tomllib.loads('[tables."public.tickets"]\n')))
    app_conn.execute("insert into tickets values (1, 'open')")
    app_conn.execute("update tickets set state = 'closed'")
    assert scalar(conn, "select to_regprocedure('auditdb.backdoor(text)')") is None
    assert [(e["action"], e["changes"]) for e in entries(conn)] == [
        ("CREATE", {"id": {"new": 1}, "state": {"new": "open"}}),
        ("UPDATE", {"state": {"old": "open", "new": "closed"}}),
    ]
    assert (
        scalar(
            conn,
            "select tgenabled from pg_trigger where tgname = 'log_append_only' and tgrelid = 'auditdb.log'::regclass",
        )
        == "A"
    )
