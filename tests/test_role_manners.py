"""What each role is told when a command is not for it (issue 13d): one line naming what is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from auditdb.cli import cli
from tests.fix_roles import MakeRole
from tests.fix_server import Server


def _run(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--dsn", dsn, *args])


def _error(result: Result, exit_code: int = 1) -> str:
    """The one line on stderr of a failed command."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].lower().count("permission denied") <= 1, lines[0]
    assert ".)" not in lines[0], lines[0]
    return lines[0]


def _role(conn: psycopg.Connection[Any], make_role: MakeRole, *granted: str) -> str:
    role = make_role()
    for group in granted:
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(group), sql.Identifier(role)))
    return role


def _granted(dsn: str, make_role: MakeRole, *args: str) -> str:
    role = make_role()
    result = _run(dsn, "grant", role, *args)
    assert result.exit_code == 0, result.output
    return role


# F1: grant and revoke need a superuser, said before anything is tried.


def test_an_admin_is_told_grant_and_revoke_need_a_superuser(
    dsn: str, dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    admin = _granted(dsn, make_role, "--admin")
    other = _granted(dsn, make_role, "--viewer", "--tenant", "t1")
    as_admin = pg_server.dsn(dbname, user=admin)
    line = _error(_run(as_admin, "grant", other, "--viewer", "--tenant", "t2"))
    assert line == (
        "Error: permission denied: `auditdb grant` needs a superuser (granting auditdb's roles needs ADMIN OPTION "
        f"on them, which admins do not hold); role {admin} is not one"
    )
    line = _error(_run(as_admin, "revoke", other, "--viewer"))
    assert "`auditdb revoke` needs a superuser" in line and f"role {admin} is not one" in line


def test_grant_help_does_not_promise_admins_grant_and_revoke() -> None:
    text = CliRunner().invoke(cli, ["grant", "--help"]).output
    assert "grant and revoke need a superuser" in " ".join(text.split())


# F7: status, doctor, partitions, worker and uninstall say what role they need.


def test_a_viewer_is_told_what_status_doctor_partitions_and_worker_need(
    dsn: str, dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    viewer = _granted(dsn, make_role, "--viewer", "--tenant", "t1")
    as_viewer = pg_server.dsn(dbname, user=viewer)
    for command in (["status"], ["doctor"]):
        line = _error(_run(as_viewer, *command))
        assert line.startswith("Error: permission denied"), line
        assert "need a superuser" in line, line
    for command in (["partitions", "list"], ["partitions", "ensure"], ["partitions", "prune", "--older-than", "12"]):
        line = _error(_run(as_viewer, *command))
        assert "an admin of this database" in line and "grant ROLE --admin" in line, line
    result = _run(as_viewer, "worker", "--once")
    assert result.exit_code == 1
    assert "an admin of this database" in result.stderr.strip().splitlines()[-1], result.stderr


def test_a_writer_or_a_stranger_is_told_what_doctor_and_partitions_need(
    conn: psycopg.Connection[Any], dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    writer = _role(conn, make_role, "auditdb_writer")
    as_writer = pg_server.dsn(dbname, user=writer)
    assert "need a superuser" in _error(_run(as_writer, "doctor"))
    assert "partitions and the worker need an admin of this database" in _error(_run(as_writer, "partitions", "list"))
    assert "auditdb_admin or auditdb_viewer" in _error(_run(as_writer, "log"))
    stranger = make_role()
    line = _error(_run(pg_server.dsn(dbname, user=stranger), "partitions", "list"))
    assert line == (
        "Error: permission denied: this command needs an admin of this database (a superuser runs auditdb grant "
        f"ROLE --admin) or a superuser; role {stranger} is not one"
    )


def test_uninstall_as_a_non_superuser_is_refused_first(
    conn: psycopg.Connection[Any], dsn: str, dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    admin = _granted(dsn, make_role, "--admin")
    line = _error(_run(pg_server.dsn(dbname, user=admin), "uninstall", "--yes"))
    assert line.startswith("Error: permission denied: `auditdb uninstall` needs a superuser"), line
    assert line.endswith(f"role {admin} is not one")
    assert conn.execute("select to_regnamespace('auditdb') is not null").fetchone() == (True,)


def test_an_admin_of_another_database_is_told_without_a_stray_full_stop(
    conn: psycopg.Connection[Any], dbname: str, pg_server: Server, make_role: MakeRole
) -> None:
    admin = _role(conn, make_role, "auditdb_admin")
    line = _error(_run(pg_server.dsn(dbname, user=admin), "partitions", "list"))
    assert line.endswith("`auditdb grant ROLE --admin` here)"), line


# F8: auditdb_admin by plain GRANT reads nothing here, and is told so.


def test_an_unlisted_admin_is_warned_that_it_reads_nothing(
    conn: psycopg.Connection[Any], dsn: str, dbname: str, pg_server: Server, make_role: MakeRole, tmp_path: Path
) -> None:
    conn.execute("set role auditdb_owner")
    conn.execute("insert into auditdb.log (action, entity_type, entity_id) values ('LOGIN', 'User', '1')")
    conn.execute("reset role")
    admin = _role(conn, make_role, "auditdb_admin")
    as_admin = pg_server.dsn(dbname, user=admin)
    warning = (
        f"warning: role {admin} holds auditdb_admin but is not an admin of this database: it reads nothing here "
        f"until a superuser runs auditdb grant {admin} --admin"
    )
    for command in (
        ["log"],
        ["export", "-o", str(tmp_path / "out.csv")],
        ["show", "1"],
        ["history", "User", "1"],
    ):
        result = _run(as_admin, *command)
        assert result.stderr.splitlines()[0] == warning, (command, result.stderr)
    listed = _granted(dsn, make_role, "--admin")
    result = _run(pg_server.dsn(dbname, user=listed), "log")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


# F9: grant and revoke misuse is a usage error; revoke does not advise creating a role.


@pytest.mark.parametrize("verb", ["grant", "revoke"])
@pytest.mark.parametrize("tenant", ["", "  "])
def test_an_empty_tenant_is_refused(dsn: str, make_role: MakeRole, verb: str, tenant: str) -> None:
    result = _run(dsn, verb, make_role(), "--viewer", "--tenant", "t1", "--tenant", tenant)
    assert result.exit_code == 2, result.output
    assert "an empty tenant" in result.stderr


def test_a_tenant_with_admin_is_a_usage_error(dsn: str, make_role: MakeRole) -> None:
    result = _run(dsn, "grant", make_role(), "--admin", "--tenant", "t1")
    assert result.exit_code == 2, result.output
    assert "--tenant and --tenant-from-context go with --viewer only" in result.stderr


def test_revoking_from_a_missing_role_says_it_does_not_exist(dsn: str) -> None:
    assert _error(_run(dsn, "revoke", "nosuchrole", "--admin")) == "Error: role 'nosuchrole' does not exist"


# F10, F11: log --before-id and empty times.


def test_before_id_out_of_range_or_missing(dsn: str) -> None:
    result = _run(dsn, "log", "--before-id", "99999999999999999999")
    assert result.exit_code == 2 and "--before-id" in result.stderr, result.output
    assert _error(_run(dsn, "log", "--before-id", "123456")) == "Error: no entry 123456 (or not visible to this role)"


@pytest.mark.parametrize(
    "args",
    [
        ["log", "--since", ""],
        ["log", "--until", " "],
        ["export", "-o", "-", "--since", ""],
        ["history", "User", "1", "--as-of", ""],
    ],
)
def test_an_empty_time_is_a_usage_error(dsn: str, args: list[str]) -> None:
    result = _run(dsn, *args)
    assert result.exit_code == 2, result.output
    option = next(a for a in args if a.startswith("--"))
    assert option in result.stderr and "an empty time" in result.stderr, result.stderr
