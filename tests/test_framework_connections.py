"""Connecting and its errors: where to give a DSN, and permission denied said once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.db import describe_error

# --- connecting and its errors (auditdb/db.py) ------------------------------------------------


def _default_socket_answers() -> bool:
    return any(Path(d, ".s.PGSQL.5432").exists() for d in ("/var/run/postgresql", "/run/postgresql", "/tmp"))


def test_no_dsn_anywhere_hints_where_to_give_one(tmp_path: Path) -> None:
    if _default_socket_answers():
        pytest.skip("a server listens on libpq's default socket here: a bare connection might succeed")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}  # no PG*, no DSN
    bare = subprocess.run(
        [sys.executable, "-m", "auditdb", "partitions", "list"], capture_output=True, text=True, env=clean, check=False
    )
    assert bare.returncode == 1 and bare.stdout == "" and "Traceback" not in bare.stderr
    [line] = bare.stderr.strip().splitlines()
    assert line.startswith("Error: cannot connect to database (default database) on the local socket, port 5432: ")
    assert line.endswith(
        "no database was named: pass --dsn, or set AUDITDB_DSN, DATABASE_URL or libpq's PG* variables "
        "(PGHOST, PGDATABASE, …)"
    )
    # A PG* variable naming a server is a DSN given: the failure is about that server, without the hint.
    named = subprocess.run(
        [sys.executable, "-m", "auditdb", "partitions", "list"],
        capture_output=True,
        text=True,
        env={**clean, "PGHOST": str(tmp_path)},
        check=False,
    )
    assert named.returncode == 1 and "no database was named" not in named.stderr
    assert f"on {tmp_path}:5432" in named.stderr


def test_permission_denied_is_said_once(
    dsn: str, app_dsn: str, conn: psycopg.Connection[Any], app_conn: psycopg.Connection[Any]
) -> None:
    conn.execute("create table public.secrets (id int)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        app_conn.execute("select * from public.secrets")
    assert str(describe_error(caught.value)) == "permission denied for table secrets"
    # auditdb's own refusals, whose message does not say it, keep the prefix.
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as own:
        app_conn.execute("drop event trigger auditdb_guard_ddl")
    assert str(describe_error(own.value)).startswith("permission denied: must be owner of event trigger")
    runner = CliRunner()
    for args in (["install"], ["doctor"], ["uninstall", "--yes"], ["partitions", "ensure"]):
        result = runner.invoke(cli, ["--dsn", app_dsn, "--config", "/nonexistent.toml", *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.lower().count("permission denied") == 1, (args, result.output)
