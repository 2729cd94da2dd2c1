"""CLI manners: DSN precedence, one-line errors, --debug, --help everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_server import Server

BAD = "host=127.0.0.1 port=1 dbname=nowhere user=nobody connect_timeout=2"


def _run(args: list[str], env: dict[str, str | None]) -> Any:
    return CliRunner().invoke(cli, args, env=env)


def _clear_env() -> dict[str, str | None]:
    return {k: None for k in os.environ if k.startswith("PG") or k in ("AUDITDB_DSN", "DATABASE_URL")}


def test_dsn_precedence(dsn: str, pg_server: Server, dbname: str) -> None:
    env = _clear_env()
    assert _run(["--dsn", dsn, "partitions", "list"], {**env, "AUDITDB_DSN": BAD}).exit_code == 0
    assert _run(["partitions", "list"], {**env, "AUDITDB_DSN": dsn, "DATABASE_URL": BAD}).exit_code == 0
    url = f"postgresql+psycopg://{pg_server.user}@{pg_server.host}:{pg_server.port}/{dbname}"
    assert _run(["partitions", "list"], {**env, "DATABASE_URL": url}).exit_code == 0, "SQLAlchemy-style URL"
    pg_env = {
        **env,
        "PGHOST": pg_server.host,
        "PGPORT": str(pg_server.port),
        "PGUSER": pg_server.user,
        "PGDATABASE": dbname,
    }
    assert _run(["partitions", "list"], pg_env).exit_code == 0
    failed = _run(["partitions", "list"], {**env, "AUDITDB_DSN": BAD, "PGHOST": pg_server.host})
    assert failed.exit_code == 1


def test_unreachable_server_is_one_line() -> None:
    result = _run(["--dsn", BAD, "partitions", "list"], _clear_env())
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: cannot connect to database nowhere on 127.0.0.1:1")
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "auditdb", "--debug", "--dsn", BAD, "partitions", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ConnectionFailed" in proc.stderr
    plain = subprocess.run(
        [sys.executable, "-m", "auditdb", "--dsn", BAD, "partitions", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plain.returncode == 1 and plain.stdout == ""
    assert len(plain.stderr.strip().splitlines()) == 1 and "Traceback" not in plain.stderr


def test_missing_privilege_is_one_line(app_dsn: str, conn: psycopg.Connection[Any]) -> None:
    result = _run(["--dsn", app_dsn, "partitions", "ensure"], _clear_env())
    assert result.exit_code == 1
    assert result.output.startswith("Error: permission denied")
    assert len(result.output.strip().splitlines()) == 1
    install = _run(["--dsn", app_dsn, "install"], _clear_env())
    assert install.exit_code == 1
    assert "needs a superuser" in install.output and "Traceback" not in install.output


def _commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, [*prefix, name])
        else:
            found.append([*prefix, name])
    return found


@pytest.mark.parametrize("command", _commands(cli, []), ids=lambda c: " ".join(c) or "auditdb")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert len(result.output.splitlines()) >= 4
