"""CLI manners: global options after the subcommand; grant and revoke say what they refuse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb.cli import cli
from auditdb.errors import AuditDBError
from tests.fix_capture import audit_entries
from tests.fix_cli import auditdb_process
from tests.fix_roles import MakeRole
from tests.fix_worker import drain

BAD = "host=127.0.0.1 port=1 dbname=nowhere user=nobody connect_timeout=2"


def _auditdb(*args: str) -> subprocess.CompletedProcess[str]:
    return auditdb_process(*args)


def test_global_options_work_after_the_subcommand(dsn: str, tmp_path: Path) -> None:
    # The README's own spelling: `auditdb install --dsn …`.
    installed = _auditdb("install", "--dsn", dsn)
    assert installed.returncode == 0, installed.stderr
    assert "up to date" in installed.stdout
    assert _auditdb("partitions", "list", "--dsn", dsn).returncode == 0
    # After the subcommand wins over before it; --config and --debug too.
    assert _auditdb("--dsn", BAD, "partitions", "list", "--dsn", dsn).returncode == 0
    config = tmp_path / "elsewhere.toml"
    config.write_text('[tables."public.nowhere"]\n')
    status = _auditdb("status", "--dsn", dsn, "--config", str(config))
    assert status.returncode == 1 and "public.nowhere" in status.stdout + status.stderr
    debug = _auditdb("partitions", "list", "--dsn", BAD, "--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    plain = _auditdb("partitions", "list", "--dsn", BAD)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    # The demo runs on its own server: it takes no --dsn rather than ignore one.
    demo = _auditdb("demo", "--dsn", dsn)
    assert demo.returncode == 2 and "No such option" in demo.stderr
    helped = _auditdb("status", "--help")
    assert "--dsn DSN" in helped.stdout and "--config" in helped.stdout


def test_grant_refuses_two_kinds_at_once(dsn: str, make_role: MakeRole, conn: psycopg.Connection[Any]) -> None:
    role = make_role()
    for kinds in (["--viewer", "--admin"], ["--admin", "--writer"], ["--viewer", "--tenant", "t1", "--writer"]):
        result = CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, *kinds])
        assert result.exit_code == 2, result.output
        assert "one at a time" in result.output
    held = conn.execute(
        "select pg_has_role(%(r)s, 'auditdb_admin', 'member') or pg_has_role(%(r)s, 'auditdb_viewer', 'member')"
        " or pg_has_role(%(r)s, 'auditdb_writer', 'member')",
        {"r": role},
    ).fetchone()
    assert held == (False,)
    assert audit_entries(conn, "entity_type = 'AuditAccess'") == []


def test_revoking_what_a_role_does_not_hold_says_so(
    dsn: str, make_role: MakeRole, conn: psycopg.Connection[Any]
) -> None:
    role, group = make_role(), make_role()

    def revoke(*args: str) -> Any:
        return CliRunner().invoke(cli, ["--dsn", dsn, "revoke", role, *args])

    for args in (["--admin"], ["--writer"], ["--viewer"], ["--viewer", "--tenant-from-context"]):
        result = revoke(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "nothing was revoked" in result.output and len(result.output.strip().splitlines()) == 1
    assert CliRunner().invoke(cli, ["--dsn", dsn, "grant", role, "--viewer", "--tenant", "t1"]).exit_code == 0
    wrong_tenant = revoke("--viewer", "--tenant", "t2")
    assert wrong_tenant.exit_code == 1
    assert "not bound to tenant(s) t2 (it is bound to t1)" in wrong_tenant.output
    # Held only through another role: revoking from this one would change nothing.
    conn.execute(sql.SQL("grant auditdb_writer to {}").format(sql.Identifier(group)))
    conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(group), sql.Identifier(role)))
    through = revoke("--writer")
    assert through.exit_code == 1 and f"only through {group}" in through.output
    logged = [(e["action"], e["metadata"]["role"]) for e in audit_entries(conn, "entity_type = 'AuditAccess'")]
    assert logged == [("PERMISSION_GRANT", "auditdb_viewer")], "a refused revoke logs nothing"
    # What is held is revoked as before.
    assert revoke("--viewer", "--tenant", "t1").exit_code == 0
    assert conn.execute("select pg_has_role(%s, 'auditdb_viewer', 'member')", (role,)).fetchone() == (False,)


def test_revoke_help_speaks_of_revoking() -> None:
    grant_help = " ".join(CliRunner().invoke(cli, ["grant", "--help"]).output.split())
    revoke_help = " ".join(CliRunner().invoke(cli, ["revoke", "--help"]).output.split())
    assert "Take back" in revoke_help and "Take back" not in grant_help
    for text in ("bind to a tenant", "Never given without asking", "Set the session context"):
        assert text in grant_help and text not in revoke_help


ROOT = Path(__file__).resolve().parent.parent


def test_the_manuals_stand_on_their_own_in_a_clone() -> None:
    """Every relative link of README.md and REFERENCE.md names a file of the repository."""
    for manual in ("README.md", "REFERENCE.md"):
        text = (ROOT / manual).read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (ROOT / target).resolve().is_relative_to(ROOT), (manual, target)
            assert (ROOT / target).exists(), (manual, target)


def test_one_poll_interval_everywhere() -> None:
    from auditdb.worker import Worker

    option = next(p for p in cli.commands["worker"].params if p.name == "poll_interval")
    readme = (ROOT / "README.md").read_text()
    assert option.default == Worker.poll_interval
    assert f"`--poll-interval` ({option.default:g} s by default)" in readme
    assert f"poll every {option.default:g} s otherwise" in readme


def test_the_readmes_samples_are_this_release(dsn: str, tmp_path: Path) -> None:
    """The doctor sample has every check doctor runs, in its order, and the versions are the head's."""
    from auditdb.install import HEAD_REVISION

    readme = (ROOT / "README.md").read_text()
    sample = readme.split("$ auditdb --config examples/testplanit/auditdb.toml doctor\n", 1)[1].split("```", 1)[0]
    shown = [line[6:25].strip() for line in sample.splitlines() if line]
    config = tmp_path / "auditdb.toml"
    config.write_text("")
    ran = CliRunner().invoke(cli, ["--dsn", dsn, "--config", str(config), "doctor"])
    names = [line[6:25].strip() for line in ran.output.splitlines() if line[:4] in ("ok  ", "warn", "fail")]
    assert shown == names
    assert f"version {HEAD_REVISION}" in sample
    assert f"installed auditdb, schema version {HEAD_REVISION}" in readme


def test_every_command_ends_quietly_when_its_reader_is_gone(
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Stdout a pipe nobody reads any more (`| head` gone): exit 141, no message, no traceback."""
    conn.execute("create table public.quiet (id int primary key, note text)")
    config = tmp_path / "auditdb.toml"
    config.write_text('[tables."public.quiet"]\n')
    for args in (
        ["install", "--sql"],
        ["status"],
        ["doctor"],
        ["partitions", "list"],
        ["apply", "--dry-run", "--config", str(config)],
        ["--help"],
    ):
        read, write = os.pipe()
        os.close(read)
        try:
            proc = auditdb_process("--dsn", dsn, *args, stdout=write)
        finally:
            os.close(write)
        for noise in ("Error", "Traceback", "Exception", "Broken pipe"):
            assert noise not in proc.stderr, (args, proc.stderr)
        # click itself prints --help, and ends with 1 on a closed pipe, quietly too.
        assert proc.returncode == (1 if args == ["--help"] else 141), (args, proc.returncode)


def test_an_actor_known_only_by_name_is_named(dsn: str, conn: psycopg.Connection[Any]) -> None:
    """`-` means no actor at all; an entry whose context set only actor_name shows that name."""
    with conn.transaction():
        conn.execute("select auditdb.set_context(actor_name => 'Only A Name')")
        conn.execute("select auditdb.emit('LOGOUT', entity_type => 'User', entity_id => '8')")
    drain(dsn)
    table = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--action", "LOGOUT"]).output.splitlines()
    assert table[1].endswith("Only A Name"), table
    history = CliRunner().invoke(cli, ["--dsn", dsn, "history", "User", "8"]).output
    assert " by Only A Name" in history, history


def test_closed_or_full_standard_streams_are_one_line(dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    with open("/dev/full", "w") as full:
        helped = auditdb_process("--help", stdout=full)
    assert helped.returncode == 1 and helped.stderr == "Error: No space left on device: standard output\n"

    def closed(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
        script = f'exec "$@" {redirect}'
        command = ["sh", "-c", script, "sh", sys.executable, "-m", "auditdb", "--dsn", dsn, *args]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    for args in (["status"], ["log"], ["export", "-o", "-"], ["show", "1"]):
        proc = closed(">&-", *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr == "Error: standard output is closed: nothing could be printed\n", (args, proc.stderr)
    # Closed stderr: the work is done (the progress lines go nowhere) and recorded.
    target = tmp_path / "out.csv"
    proc = closed("2>&-", "export", "-o", str(target))
    assert proc.returncode == 0 and target.read_text().startswith("Timestamp,")
    assert [e["action"] for e in audit_entries(conn, "action = 'DATA_EXPORTED'")] == ["DATA_EXPORTED"]


def test_an_export_whose_connection_is_lost_says_so(
    dsn: str, conn: psycopg.Connection[Any], pg_server: Any, dbname: str, tmp_path: Path
) -> None:
    """Lost half-way: one line naming the output and the rows written, and that it is unrecorded."""
    from auditdb.export import export
    from auditdb.query import Filters

    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, metadata)"
            " select 'LOGIN', 'User', jsonb_build_object('pad', repeat('x', 2000)) from generate_series(1, 2000)"
        )
    fifo = tmp_path / "slow"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def read_slowly() -> None:
        with open(fifo, "rb") as reader:
            got.append(reader.read(65536))
            with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as killer:
                killer.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and query ilike 'copy (%'"
                )
            got.append(reader.read())

    reader = threading.Thread(target=read_slowly)
    reader.start()
    exporter = psycopg.connect(dsn, autocommit=True)
    try:
        with pytest.raises(AuditDBError) as raised:
            export(exporter, Filters(), str(fifo))
    finally:
        exporter.close()
        reader.join(30)
    message = str(raised.value)
    assert message.startswith(f"the connection to the database was lost while exporting to {fifo} (")
    assert message.endswith("rows written): this export could not be recorded")
    assert got and got[0]


def test_a_url_of_another_database_is_named() -> None:
    # (A SQLAlchemy-style postgresql+psycopg:// URL is accepted: tests/test_cli.py.)
    for args, env in (
        (["--dsn", "mysql://x@y/z", "status"], {}),
        (["status"], {"DATABASE_URL": "sqlite:///x.db", "AUDITDB_DSN": None}),
    ):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 1
        assert "URL, not a PostgreSQL one: give postgresql://… or a libpq string" in result.output, result.output


def test_a_full_standard_output_is_named_by_every_command(dsn: str) -> None:
    for args in (["install", "--sql"], ["status"], ["partitions", "list"], ["doctor"]):
        with open("/dev/full", "w") as full:
            proc = auditdb_process("--dsn", dsn, "--config", "/nonexistent.toml", *args, stdout=full)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.splitlines()[-1] == "Error: No space left on device: standard output", (args, proc.stderr)


def test_history_shows_what_an_event_says(dsn: str, conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("select auditdb.set_context(actor_id => 'ann')")
        conn.execute(
            "select auditdb.emit('SYSTEM_CONFIG_CHANGED', entity_type => 'Config', entity_id => 'c1',"
            """ metadata => '{"key": "theme", "old": "light", "new": "dark", "limit": 10.00}')"""
        )
    drain(dsn)
    history = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Config", "c1"]).output.splitlines()
    assert history[0].endswith("SYSTEM_CONFIG_CHANGED  by ann"), history
    assert history[1].startswith("    metadata: {") and '"new": "dark"' in history[1] and "10.00" in history[1]
