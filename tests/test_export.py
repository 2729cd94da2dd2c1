"""`auditdb export`: the SPEC's CSV, spreadsheet-safe; jsonl raw; logged as DATA_EXPORTED; never partial."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from auditdb.export import CSV_HEADER, export, neutralise
from auditdb.query import Filters
from tests.fix_capture import audit_entries

HOSTILE = ['=HYPERLINK("http://x")', "  +1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", "plain", "  spaced"]


@pytest.fixture
def hostile(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        for i, name in enumerate(HOSTILE):
            conn.execute(
                """insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_email, tenant_id,
                                            user_agent, metadata, changes)
                   values ('UPDATE', 'Doc', %s, %s, 'ann@example.com', 't1', %s, '{"k": "v\\\\n"}',
                           jsonb_build_object('name', jsonb_build_object('old', 'a', 'new', %s::text)))""",
                (str(i), name, "=cmd|' /C calc'!A0", name),
            )


def test_neutralise() -> None:
    assert [neutralise(v) for v in HOSTILE] == [
        '\'=HYPERLINK("http://x")',
        "'  +1",
        "'-2+3",
        "'@SUM(A1)",
        "'\t=1",
        "'\r=1",
        "plain",
        "  spaced",
    ]


def test_csv_export_is_valid_and_neutralised(dsn: str, hostile: None, tmp_path: Path) -> None:
    out = tmp_path / "audit.csv"
    result = CliRunner().invoke(cli, ["--dsn", dsn, "export", "--output", str(out)])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == CSV_HEADER
    names = {r[3]: r[4] for r in rows[1:]}
    for i, name in enumerate(HOSTILE):
        assert names[str(i)] == neutralise(name)
    for r in rows[1:]:
        assert r[9] == "'=cmd|' /C calc'!A0"
        assert r[0].endswith("Z") and r[0][10] == "T"
        assert json.loads(r[10])["k"] == "v\\n"
    assert not list(tmp_path.glob(".*partial"))


def test_jsonl_round_trips_the_stored_values(
    conn: psycopg.Connection[Any], dsn: str, hostile: None, tmp_path: Path
) -> None:
    out = tmp_path / "audit.jsonl"
    CliRunner().invoke(cli, ["--dsn", dsn, "export", "--output", str(out), "--format", "jsonl"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(HOSTILE)
    stored = {
        r[0]: (r[1], r[2], r[3])
        for r in conn.execute("select id, entity_name, metadata, changes from auditdb.log where action = 'UPDATE'")
    }
    for line in lines:
        assert (line["entity_name"], line["metadata"], line["changes"]) == stored[line["id"]]


def test_export_is_logged_as_data_exported(
    conn: psycopg.Connection[Any], dsn: str, hostile: None, tmp_path: Path
) -> None:
    out = tmp_path / "a.csv"
    result = CliRunner().invoke(
        cli,
        [
            "--dsn",
            dsn,
            "export",
            "--output",
            str(out),
            "--entity-type",
            "Doc",
            "--since",
            "2020-01-01",
            "--actor",
            "auditor@example.com",
        ],
    )
    assert result.exit_code == 0
    [e] = audit_entries(conn, "action = 'DATA_EXPORTED'")
    assert e["actor_id"] == "auditor@example.com" and e["actor_email"] == "auditor@example.com"
    assert e["metadata"]["format"] == "csv" and e["metadata"]["rows"] == len(HOSTILE)
    assert e["metadata"]["filters"] == {"entity_types": ["Doc"], "since": "2020-01-01T00:00:00+00:00"}
    CliRunner().invoke(cli, ["--dsn", dsn, "export", "--output", "-", "--format", "jsonl"])
    last = audit_entries(conn, "action = 'DATA_EXPORTED'")[-1]
    assert last["actor_id"] == conn.info.user and last["metadata"]["format"] == "jsonl"


def test_failed_export_leaves_no_file(conn: psycopg.Connection[Any], hostile: None, tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    with pytest.raises(psycopg.Error):
        export(conn, Filters(since="not a time"), str(out))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    assert audit_entries(conn, "action = 'DATA_EXPORTED'") == []


def test_unwritable_output_is_one_line_and_logs_nothing(
    conn: psycopg.Connection[Any], dsn: str, hostile: None, tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    for target in (tmp_path / "missing" / "x.csv", tmp_path / "a-file" / "x.csv"):
        result = CliRunner().invoke(cli, ["--dsn", dsn, "export", "--output", str(target)])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
        assert "Traceback" not in result.output
    assert audit_entries(conn, "action = 'DATA_EXPORTED'") == []
