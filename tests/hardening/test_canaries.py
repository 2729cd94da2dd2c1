"""Masked values appear nowhere; hostile input never breaks a write; months split at UTC midnight."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import auditdb
from auditdb.cli import cli
from auditdb.context import CONTEXT_BOUNDS
from auditdb.worker import Worker
from tests.fix_capture import Track, entries
from tests.fix_db import scalar
from tests.fix_server import Server

TOML = """
[defaults]
mask = ["password*"]
mask_last4 = ["*token*"]
[tables."public.accounts"]
entity_type = "Account"
name = "login"
rules = [{ on = "UPDATE", when = "OLD.password IS DISTINCT FROM NEW.password", action = "PASSWORD_CHANGED" }]
"""


def test_secrets_appear_nowhere(
    conn: psycopg.Connection[Any],
    dsn: str,
    track: Track,
    pg_server: Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    track("create table accounts (id int primary key, login text, password text, api_token text)", TOML)
    canaries = [secrets.token_hex(12) for _ in range(8)]
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen auditdb_events")
        conn.execute("insert into accounts values (1, 'ann', %s, %s)", (canaries[0], "tok" + canaries[1]))
        conn.execute("update accounts set password = %s, api_token = %s", (canaries[2], "tok" + canaries[3]))
        with conn.cursor().copy("copy accounts from stdin") as copy:
            copy.write_row((2, "bob", canaries[4], "tok" + canaries[5]))
        if pg_server.major >= 15:
            conn.execute(
                """merge into accounts a using (values (2, %s)) s(id, pw) on a.id = s.id
                            when matched then update set password = s.pw""",
                (canaries[6],),
            )
        auditdb.emit(conn, "PASSWORD_RESET", metadata={"password": canaries[7], "nested": {"reset_token": canaries[1]}})
        payloads = [n.payload for n in listener.notifies(timeout=1, stop_after=1)]
        queue = conn.execute("select string_agg(q::text, ' ') from auditdb.event_queue q").fetchone()
    with caplog.at_level(logging.DEBUG):
        Worker(dsn).run(once=True)
    places = {
        "log": str(conn.execute("select string_agg(l::text, ' ') from auditdb.log l").fetchone()),
        "queue": str(queue),
        "notify": " ".join(payloads),
        "worker log": caplog.text,
    }
    runner = CliRunner()
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"x.{fmt}"
        assert runner.invoke(cli, ["--dsn", dsn, "export", "--output", str(out), "--format", fmt]).exit_code == 0
        places[f"export {fmt}"] = out.read_text()
    for fmt in ("table", "json", "csv"):
        places[f"log {fmt}"] = runner.invoke(cli, ["--dsn", dsn, "log", "--format", fmt]).output
    for entry_id in [r[0] for r in conn.execute("select id from auditdb.log")]:
        places[f"show {entry_id}"] = runner.invoke(cli, ["--dsn", dsn, "show", str(entry_id)]).output
    leaks = [(where, c) for where, text in places.items() for c in canaries if c in text]
    assert leaks == []
    assert any(e["action"] == "PASSWORD_CHANGED" for e in entries(conn))


def test_hostile_input_never_breaks_a_write(conn: psycopg.Connection[Any], dsn: str, track: Track) -> None:
    track("create table notes (id int primary key, title text, body text)", '[tables."public.notes"]\nname = "title"\n')
    huge = "x" * 1_000_000
    values = [
        'it\'s "quoted"',
        "\x1b[2J\x1b]0;evil\x07",
        "emoji 😀𝄞 4-byte",
        '=HYPERLINK("http://x")',
        huge,
        "binary-ish \x01\x02\x7f\u0085",
    ]
    with conn.transaction():
        conn.execute("select auditdb.set_context(actor_name => %s, user_agent => %s)", (values[1], huge))
        for i, v in enumerate(values):
            conn.execute("insert into notes values (%s, %s, %s)", (i, v, v))
        auditdb.emit(conn, "NOTE_SHARED", entity_name=values[2], metadata={"v": values})
    Worker(dsn).run(once=True)
    logged = entries(conn)
    assert [e["entity_name"] for e in logged[:-1]] == values
    # Free-text context is kept to its bound (CONTEXT_BOUNDS): the write succeeds, the value is cut.
    assert logged[-1]["metadata"]["v"] == values and len(logged[-1]["user_agent"]) == CONTEXT_BOUNDS["user_agent"]
    out = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--limit", "100"]).output
    assert "\x1b" not in out and "\x07" not in out


def test_entries_split_at_utc_month_boundaries(conn: psycopg.Connection[Any], dsn: str) -> None:
    with conn.transaction():
        conn.execute("select auditdb.begin_maintenance()")
        conn.execute("set local role auditdb_owner")
        lo, hi = conn.execute("select auditdb.month_start(-1), auditdb.month_start(0)").fetchone()  # type: ignore[misc]
        name = scalar(conn, "select 'log_' || to_char(auditdb.month_start(-1) at time zone 'UTC', 'YYYY_MM')")
        conn.execute(
            psycopg.sql.SQL("create table auditdb.{} partition of auditdb.log for values from ({}) to ({})").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(lo), psycopg.sql.Literal(hi)
            )
        )
    conn.execute("set timezone = 'Pacific/Kiritimati'")  # UTC+14: local midnight is not the boundary
    auditdb.emit(conn, "LOGIN", entity_id="before")
    auditdb.emit(conn, "LOGIN", entity_id="after")
    conn.execute("""update auditdb.event_queue set emitted_at = case entity_id
                        when 'before' then auditdb.month_start(0) - interval '1 microsecond'
                        else auditdb.month_start(0) end""")
    Worker(dsn).run(once=True)
    placed = dict(conn.execute("select entity_id, tableoid::regclass::text from auditdb.log").fetchall())
    this_month = scalar(conn, "select 'auditdb.log_' || to_char(auditdb.month_start(0) at time zone 'UTC', 'YYYY_MM')")
    assert placed == {"before": f"auditdb.{name}", "after": this_month}
