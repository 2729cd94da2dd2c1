"""`auditdb doctor`: each check says ok, warn or fail, and any fail exits 1."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

import auditdb
from auditdb.cli import cli
from tests.fix_db import scalar
from tests.fix_worker import start_worker


def _doctor(dsn: str, config: Path | None = None) -> tuple[int, dict[str, str]]:
    args = ["--dsn", dsn] + (["--config", str(config)] if config else ["--config", "/nonexistent.toml"])
    result = CliRunner().invoke(cli, [*args, "doctor"])
    lines = {line[6:23].strip(): line for line in result.output.splitlines()}
    return result.exit_code, lines


def test_healthy_database_passes(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    conn.execute("create table t (id int primary key)")
    (tmp_path / "auditdb.toml").write_text('[tables."public.t"]\n')
    CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(tmp_path / "auditdb.toml"), "apply"])
    worker = start_worker(dsn, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 30
        while not scalar(conn, "select count(*) from auditdb.worker_heartbeat") and time.monotonic() < deadline:
            time.sleep(0.05)
        code, lines = _doctor(dsn, tmp_path / "auditdb.toml")
    finally:
        worker.terminate()
        worker.wait(30)
    assert code == 0, lines
    for name in (
        "connection",
        "schema",
        "event triggers",
        "tracked tables",
        "worker",
        "event queue",
        "dead letters",
        "partitions",
        "default partition",
    ):
        assert lines[name].startswith("ok"), lines[name]
    assert "PostgreSQL" in lines["connection"]


def test_every_failure_is_reported(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    (tmp_path / "auditdb.toml").write_text('[tables."public.t"]\n')
    conn.execute("create table t (id int primary key)")  # configured, never applied
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute("select auditdb.worker_beat('old-host:1', now() - interval '1 hour', 0)")
        conn.execute("update auditdb.worker_heartbeat set last_seen = now() - interval '1 hour'")
        conn.execute("insert into auditdb.log (occurred_at, action) values ('2999-01-01', 'LOGIN')")
    auditdb.emit(conn, "LOGIN")
    conn.execute("update auditdb.event_queue set emitted_at = now() - interval '20 minutes'")
    next_month = conn.execute(
        "select 'log_' || to_char(auditdb.month_start(1) at time zone 'UTC', 'YYYY_MM')"
    ).fetchone()
    assert next_month is not None
    conn.execute(f"drop table auditdb.{next_month[0]}")
    conn.execute("alter event trigger auditdb_sql_drop disable")
    code, lines = _doctor(dsn, tmp_path / "auditdb.toml")
    assert code == 1
    assert lines["schema"].startswith("ok")
    assert lines["event triggers"].startswith("fail") and "auditdb_sql_drop disabled" in lines["event triggers"]
    assert lines["tracked tables"].startswith("fail") and "public.t missing" in lines["tracked tables"]
    assert lines["worker"].startswith("fail") and "old-host:1" in lines["worker"]
    assert lines["event queue"].startswith("fail") and "1 waiting" in lines["event queue"]
    assert lines["partitions"].startswith("fail") and next_month[0] in lines["partitions"]
    assert lines["default partition"].startswith("fail") and "1 entries" in lines["default partition"]


def test_not_installed_is_a_failure(empty_db: str) -> None:
    code, lines = _doctor(empty_db)
    assert code == 1
    assert lines["schema"].startswith("fail") and "auditdb install" in lines["schema"]
