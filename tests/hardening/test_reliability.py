"""Issue 12, item 11: a column of an application type raises no false schema change, and a
renamed configured table hides no other table's drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_capture import Track, audit_entries
from tests.fix_db import scalar


def test_a_column_of_an_application_type_is_no_schema_change(conn: psycopg.Connection[Any], track: Track) -> None:
    track(
        "create type ticket_state as enum ('open', 'closed');"
        "create table tickets (id int primary key, state ticket_state, tags ticket_state[])",
        '[tables."public.tickets"]\n',
    )
    conn.execute("create index on tickets (state)")
    conn.execute("alter table tickets alter column state set default 'open'")
    assert audit_entries(conn, "metadata->>'operation' = 'schema_changed'") == []
    assert (
        scalar(
            conn,
            "select count(*) from pg_proc where obj_description(oid, 'pg_proc') = 'auditdb:generic' "
            "and proname like 'auditdb\\_capture\\_tickets%'",
        )
        == 0
    )


def test_status_with_a_renamed_table_still_reports_every_other_table(
    conn: psycopg.Connection[Any], track: Track, tmp_path: Path
) -> None:
    toml = '[tables."public.a"]\n[tables."public.b"]\n'
    track("create table a (id int primary key); create table b (id int primary key)", toml)
    conn.execute("alter table a rename to a2")
    conn.execute("alter table b disable trigger auditdb_capture_ins")
    (tmp_path / "auditdb.toml").write_text(toml)
    status = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "--config", str(tmp_path / "auditdb.toml"), "status"])
    assert status.exit_code == 1
    assert "renamed to public.a2 since apply" in status.output
    assert "public.b" in status.output and "disabled" in status.output
