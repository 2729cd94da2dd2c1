"""Monthly partitions: list, ensure ahead (each with its guard), prune only whole past months."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_db import scalar


def _months(conn: psycopg.Connection[Any], offsets: range) -> list[str]:
    return [
        scalar(conn, "select 'log_' || to_char(auditdb.month_start(%s) at time zone 'UTC', 'YYYY_MM')", (m,))
        for m in offsets
    ]


def _partitions(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            """select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent = 'auditdb.log'::regclass order by 1"""
        )
    ]


def _past_partition(conn: psycopg.Connection[Any], months_back: int, rows: int) -> str:
    """Create the partition of a past month as auditdb would have, with `rows` entries in it."""
    name = _months(conn, range(-months_back, -months_back + 1))[0]
    with conn.transaction():
        conn.execute("select auditdb.begin_maintenance()")  # auditdb's own upkeep, as ensure does
        conn.execute("set local role auditdb_owner")
        lo = scalar(conn, "select auditdb.month_start(%s)", (-months_back,))
        hi = scalar(conn, "select auditdb.month_start(%s)", (-months_back + 1,))
        conn.execute(
            psycopg.sql.SQL("create table auditdb.{} partition of auditdb.log for values from ({}) to ({})").format(
                psycopg.sql.Identifier(name), psycopg.sql.Literal(lo), psycopg.sql.Literal(hi)
            )
        )
        conn.execute("select auditdb.guard_log_table(%s::regclass)", (f"auditdb.{name}",))
        conn.execute(
            """insert into auditdb.log (occurred_at, action, entity_type, entity_id, metadata)
               select %s::timestamptz + make_interval(secs => g), 'LOGIN', 'User', 'u' || g,
                      jsonb_build_object('n', g)
                 from generate_series(1, %s) g""",
            (lo, rows),
        )
    return name


def test_install_creates_this_month_three_ahead_and_default(conn: psycopg.Connection[Any]) -> None:
    assert _partitions(conn) == sorted([*_months(conn, range(4)), "log_default"])


def test_partition_bounds_are_utc_months_whatever_the_session_time_zone(conn: psycopg.Connection[Any]) -> None:
    odd = {"PGTZ": "Pacific/Kiritimati", "PGDATESTYLE": "SQL, DMY"}  # UTC+14, day first
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "ensure", "--months-ahead", "5"], env=odd)
    assert result.exit_code == 0, result.output
    assert "created auditdb." in result.output
    conn.execute("set timezone = 'UTC'")
    bounds = dict(
        conn.execute(
            """select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i
             join pg_class c on c.oid = i.inhrelid
            where i.inhparent = 'auditdb.log'::regclass and c.relname <> 'log_default'"""
        ).fetchall()
    )
    for name, bound in bounds.items():
        year, month = name[4:8], name[9:11]
        assert f"FROM ('{year}-{month}-01 00:00:00+00')" in bound, bound


def test_ensure_creates_guarded_partitions_once(conn: psycopg.Connection[Any]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "ensure", "--months-ahead", "6"])
    assert result.exit_code == 0, result.output
    new = _months(conn, range(4, 7))
    assert [line.split("auditdb.")[1] for line in result.output.splitlines()] == new
    for name in new:
        assert (
            scalar(
                conn,
                """select tgenabled from pg_trigger
                                where tgrelid = %s::regclass and tgname = 'log_append_only'""",
                (f"auditdb.{name}",),
            )
            == "A"
        )
        assert (
            scalar(conn, "select relowner::regrole::text from pg_class where oid = %s::regclass", (f"auditdb.{name}",))
            == "auditdb_owner"
        )
    again = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "ensure", "--months-ahead", "6"])
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_list_shows_partitions(conn: psycopg.Connection[Any]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "list"])
    assert result.exit_code == 0, result.output
    for name in _months(conn, range(4)):
        assert name in result.output


def test_prune_needs_a_number(conn: psycopg.Connection[Any]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune"])
    assert result.exit_code == 2
    assert "--older-than" in result.output


def test_prune_never_drops_current_or_future_months(conn: psycopg.Connection[Any]) -> None:
    before = _partitions(conn)
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "0", "--force"])
    assert result.exit_code == 0, result.output
    assert _partitions(conn) == before


def test_prune_refuses_unexported_months_and_drops_empty_ones(conn: psycopg.Connection[Any]) -> None:
    full = _past_partition(conn, 3, rows=5)
    empty = _past_partition(conn, 4, rows=0)
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "2"])
    assert result.exit_code == 1
    assert f"refusing to drop auditdb.{full}" in result.output and "never exported" in result.output
    assert full in _partitions(conn) and empty in _partitions(conn)  # all or nothing
    kept = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "4"])
    assert kept.exit_code == 0 and "no month older than 4" in kept.output
    assert full in _partitions(conn) and empty in _partitions(conn)
    # Keeping 3 months before this one: the empty month before them goes without an archive.
    dropped = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "3"])
    assert dropped.exit_code == 0, dropped.output
    assert dropped.output == f"dropped auditdb.{empty} (0 rows)\n"
    assert full in _partitions(conn) and empty not in _partitions(conn)


def test_prune_with_export_dir_archives_verifies_and_logs(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    name = _past_partition(conn, 2, rows=250)
    keep = _past_partition(conn, 1, rows=3)
    result = CliRunner().invoke(
        cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "1", "--export-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert f"dropped auditdb.{name} (250 rows, archived to" in result.output
    assert name not in _partitions(conn) and keep in _partitions(conn)
    with gzip.open(tmp_path / f"{name}.jsonl.gz", "rt") as f:
        entries = [json.loads(line) for line in f]
    assert len(entries) == 250
    assert sorted(e["metadata"]["n"] for e in entries) == list(range(1, 251))
    assert not list(tmp_path.glob(".*partial"))
    logged = conn.execute("select entity_id, metadata from auditdb.log where action = 'AUDIT_CHANGED'").fetchall()
    assert [(e, m["rows"], m["operation"]) for e, m in logged] == [(name, 250, "archive"), (name, 250, "prune")]


def test_prune_force_drops_without_archive(conn: psycopg.Connection[Any]) -> None:
    name = _past_partition(conn, 5, rows=2)
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "4", "--force"])
    assert result.exit_code == 0, result.output
    assert f"dropped auditdb.{name} (2 rows)" in result.output
    assert scalar(conn, "select metadata->>'forced' from auditdb.log where action = 'AUDIT_CHANGED'") == "true"


def test_record_archive_refuses_a_short_archive(conn: psycopg.Connection[Any]) -> None:
    name = _past_partition(conn, 2, rows=4)
    digest = scalar(conn, "select sha256 from auditdb.archive_digest(%s)", (name,))
    with pytest.raises(psycopg.errors.DataException, match="holds 3 rows"), conn.transaction():
        conn.execute("select auditdb.record_archive(%s, 3, '/tmp/x', %s)", (name, digest))
    assert scalar(conn, "select count(*) from auditdb.partition_archive") == 0
