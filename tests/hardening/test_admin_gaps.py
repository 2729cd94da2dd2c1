"""Issue 12, item 10: an admin's maintenance ends with it, archives must match what they record,
a heartbeat is a running worker only while its connection lives."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.config import parse_config
from auditdb.triggers import apply
from tests.fix_capture import audit_entries
from tests.fix_db import scalar
from tests.fix_roles import MakeRole
from tests.fix_server import Server


def test_ensure_partitions_leaves_the_transaction_watched(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create table t (id int primary key)")
    apply(conn, parse_config(tomllib.loads('[tables."public.t"]\n')))
    with conn.transaction():
        created = conn.execute("select auditdb.ensure_partitions(8)").fetchall()
        assert created  # it did create months, as auditdb's own maintenance
        conn.execute("alter table t disable trigger auditdb_capture_upd")
    [disabled] = audit_entries(conn, "metadata->>'operation' = 'disable'")
    assert disabled["entity_name"] == "auditdb_capture_upd"


def test_an_archive_is_recorded_only_with_the_partitions_own_rows_and_digest(conn: psycopg.Connection[Any]) -> None:
    name = scalar(conn, "select 'log_' || to_char(auditdb.month_start(0) at time zone 'UTC', 'YYYY_MM')")
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute("insert into auditdb.log (action) select 'LOGIN' from generate_series(1, 3)")
    rows, digest = conn.execute("select * from auditdb.archive_digest(%s)", (name,)).fetchone()  # type: ignore[misc]
    with pytest.raises(psycopg.errors.DataException, match="does not match"), conn.transaction():
        conn.execute("select auditdb.record_archive(%s, %s, '/nowhere', %s)", (name, rows, "0" * 64))
    with pytest.raises(psycopg.errors.InvalidParameterValue), conn.transaction():
        conn.execute("select auditdb.record_archive(%s, %s, '', %s)", (name, rows, digest))
    conn.execute("select auditdb.record_archive(%s, %s, '/srv/archive/x.jsonl.gz', %s)", (name, rows, digest))
    [recorded] = audit_entries(conn, "metadata->>'operation' = 'archive'")
    assert recorded["metadata"]["sha256"] == digest and recorded["metadata"]["rows"] == 3


def test_a_heartbeat_without_a_running_worker_is_not_a_running_worker(
    conn: psycopg.Connection[Any], dsn: str, pg_server: Server, dbname: str, make_role: MakeRole
) -> None:
    admin = make_role()
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", admin, "--admin"]).exit_code == 0
    with psycopg.connect(pg_server.dsn(dbname, user=admin), autocommit=True) as ghost:
        ghost.execute("select auditdb.worker_beat('ghost', now(), 0)")
    doctor = CliRunner().invoke(cli, ["--dsn", dsn, "--config", "/nonexistent.toml", "doctor"])
    [line] = [line for line in doctor.output.splitlines() if " worker " in line]
    assert not line.startswith("ok") and "ghost" in line and "not running now" in line


def test_an_admin_cannot_have_the_server_compute_an_archive_digest(
    dsn: str, pg_server: Server, dbname: str, make_role: MakeRole
) -> None:
    admin = make_role()
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", admin, "--admin"]).exit_code == 0
    with psycopg.connect(pg_server.dsn(dbname, user=admin), autocommit=True) as c:
        name = scalar(c, "select partition_name from auditdb.partitions() order by 1 limit 1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select * from auditdb.archive_digest(%s)", (name,))


def test_an_admin_runs_doctor_status_and_an_archived_prune(
    conn: psycopg.Connection[Any], dsn: str, pg_server: Server, dbname: str, make_role: MakeRole, tmp_path: Path
) -> None:
    conn.execute("create table t (id int primary key)")
    (tmp_path / "auditdb.toml").write_text('[tables."public.t"]\n')
    apply(conn, parse_config(tomllib.loads('[tables."public.t"]\n')))
    admin = make_role()
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", admin, "--admin"]).exit_code == 0
    as_admin = ["--dsn", pg_server.dsn(dbname, user=admin), "--config", str(tmp_path / "auditdb.toml")]
    for args in (["status"], ["doctor"], ["partitions", "prune", "--older-than", "0", "--export-dir", str(tmp_path)]):
        result = CliRunner().invoke(cli, [*as_admin, *args])
        assert result.exit_code in (0, 1) and "permission denied" not in result.output, (args, result.output)
