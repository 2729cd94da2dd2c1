"""`auditdb export`: the SPEC's CSV, spreadsheet-safe; jsonl raw; logged as DATA_EXPORTED; never partial."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb import export as export_module
from auditdb.cli import cli
from auditdb.export import CSV_HEADER, export, neutralise
from auditdb.install import install
from auditdb.query import COLUMNS, Filters
from tests.fix_capture import audit_entries
from tests.fix_db import scalar
from tests.fix_server import Server

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


# Values that stress the SQL the export runs: formulas, control characters (the JSONL pieces travel
# between \x01 and \x02), quotes, separators, multi-byte text, empty strings and NULLs.
AWKWARD = [
    *HOSTILE,
    "",
    " ",
    "   =x",
    " \t",
    "a,b",
    'q"uote',
    "line\nbreak",
    "cr\rx",
    "\x01\x02\x03\x04 ctl",
    "\x1b[2J\x1b]0;evil\x07",
    "emoji 😀𝄞 4-byte",
    "é=à",
    "\u00a0=nbsp",
    "back\\slash\\",
    "\\.",
    "null",
    "{",
    "}",
    '{"a" : 1}',
    "0",
    "1.5",
    None,
]
METADATA = [
    {},
    {"rows": 3},
    {"request_id": "r-1"},
    {"changes": "replaced by the entry's changes"},
    {"a": 1, "chang": 2, "changer": [3], "changez": None, "zzzzzzzzz": {"n": "\x02"}},
    {"nested": {"v": AWKWARD[:12]}, "ü": "=1"},
]
CHANGES = [
    None,
    {},
    {"name": {"old": "a", "new": "=b\x03"}},
    {"priority": {"old": 3, "new": None}, "a": {"new": AWKWARD}},
]
TIMES = [
    "2026-11-20 10:00:00+00",
    "2026-11-20 10:00:00.5+00",
    "2026-06-30 23:59:59.999999-07",
    "0044-03-15 12:00:00+00 BC",
    "infinity",
    "-infinity",
]
IPS = [None, "203.0.113.7", "10.0.0.1/24", "::1", "2001:db8::42"]
TEXT_COLUMNS = (
    "entity_type",
    "entity_id",
    "entity_name",
    "project_id",
    "tenant_id",
    "actor_id",
    "actor_email",
    "actor_name",
    "user_agent",
    "table_name",
)


@pytest.fixture
def awkward(conn: psycopg.Connection[Any]) -> int:
    """Entries cycling through the awkward values, each column at its own pace; returns how many."""
    rows = []
    for i in range(300):
        changes = CHANGES[i % len(CHANGES)]
        rows.append(
            (
                TIMES[i % len(TIMES)],
                ["UPDATE", "LOGIN_FAILED", "X_1"][i % 3],
                *(AWKWARD[(i + 7 * k) % len(AWKWARD)] for k in range(len(TEXT_COLUMNS))),
                IPS[i % len(IPS)],
                json.dumps(changes) if changes is not None else None,
                json.dumps(METADATA[i % len(METADATA)]),
            )
        )
    columns = ", ".join(("occurred_at", "action", *TEXT_COLUMNS, "ip", "changes", "metadata"))
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        with conn.cursor() as cur:
            values = ", ".join(["%s"] * (len(TEXT_COLUMNS) + 5))
            cur.executemany(f"insert into auditdb.log ({columns}) values ({values})", rows)  # noqa: S608
    return len(rows)


TIME = """to_char(l.occurred_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
ORDER = "order by l.occurred_at desc, l.id desc"


def _copy_out(conn: psycopg.Connection[Any], select: str, options: str) -> bytes:
    with conn.cursor() as cur, cur.copy(f"copy ({select}) to stdout {options}") as copy:
        return b"".join(bytes(block) for block in copy)


def _plain_csv(conn: psycopg.Connection[Any]) -> bytes:
    """The CSV rows spelled the plain way: every cell through the regex, metadata || changes."""
    cells = [
        TIME,
        "l.action",
        *(f"coalesce(l.{c}, '')" for c in ("entity_type", "entity_id", "entity_name")),
        "coalesce(l.actor_name, l.actor_id, '')",
        *(f"coalesce(l.{c}, '')" for c in ("actor_email", "project_id")),
        "coalesce(host(l.ip), '')",
        "coalesce(l.user_agent, '')",
        "(case when l.changes is null then l.metadata "
        "else l.metadata || jsonb_build_object('changes', l.changes) end)::text",
    ]
    select = ", ".join(f"case when {e} ~ '^ *[-=+@\t\r]' then '''' || {e} else {e} end" for e in cells)
    return _copy_out(conn, f"select {select} from auditdb.log l {ORDER}", "(format csv)")  # noqa: S608


def _plain_jsonl(conn: psycopg.Connection[Any]) -> bytes:
    """The JSONL lines spelled the plain way: json_build_object over every column."""
    values = {"occurred_at": TIME, "ip": "host(l.ip)"}
    pairs = ", ".join(f"'{c}', {values.get(c, f'l.{c}')}" for c in COLUMNS)
    return _copy_out(
        conn,
        f"select json_build_object({pairs})::text from auditdb.log l {ORDER}",  # noqa: S608
        "(format csv, quote e'\\x01', delimiter e'\\x02')",
    )


def test_sql_cell_is_neutralise(conn: psycopg.Connection[Any]) -> None:
    cells = [v for v in AWKWARD if v is not None] + ["   " + c for c in "=+-@\t\r"] + ["x=1", " x", "\t"]
    cell = export_module._sql_cell(psycopg.sql.Identifier("l", "v")).as_string(conn)
    query = f"select array_agg({cell} order by n) from unnest(%s::text[]) with ordinality l(v, n)"  # noqa: S608
    assert conn.execute(query, (cells,)).fetchone()[0] == [neutralise(c) for c in cells]  # type: ignore[index]
    query = f"select {cell} from (select null::text) l(v)"  # noqa: S608
    assert conn.execute(query).fetchone()[0] == ""  # type: ignore[index]


def test_csv_is_byte_for_byte_the_plain_formulation(
    conn: psycopg.Connection[Any], awkward: int, tmp_path: Path
) -> None:
    expected = _plain_csv(conn)
    out = tmp_path / "a.csv"
    assert export(conn, Filters(), str(out)) == awkward
    header, body = out.read_bytes().split(b"\n", 1)
    assert header.decode().split(",") == CSV_HEADER
    assert body == expected
    assert b"'=HYPERLINK" in body and b"'   =x" in body and b"\x01\x02\x03\x04 ctl" in body
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    assert len(rows) == awkward
    for row in rows:
        assert [neutralise(c) for c in row] == row  # nothing left that a spreadsheet would run


def test_jsonl_is_byte_for_byte_json_build_object(conn: psycopg.Connection[Any], awkward: int, tmp_path: Path) -> None:
    expected = _plain_jsonl(conn)
    out = tmp_path / "a.jsonl"
    assert export(conn, Filters(), str(out), fmt="jsonl") == awkward
    assert out.read_bytes() == expected
    lines = [json.loads(line) for line in out.read_bytes().split(b"\n")[:-1]]
    assert len(lines) == awkward and all(list(line) == list(COLUMNS) for line in lines)
    assert {line["entity_name"] for line in lines} >= {"\x01\x02\x03\x04 ctl", "line\nbreak", None}


def test_filters_select_the_same_entries_in_both_formats(
    conn: psycopg.Connection[Any], awkward: int, tmp_path: Path
) -> None:
    filters = Filters(actions=("UPDATE", "X_1"), search="=", project="a,b")
    expected = {
        r[0]
        for r in conn.execute(
            """select id from auditdb.log where action in ('UPDATE', 'X_1') and project_id = 'a,b'
                  and (entity_name like '%=%' or entity_id like '%=%' or actor_email like '%=%')"""
        )
    }
    assert expected
    assert export(conn, filters, str(tmp_path / "a.jsonl"), fmt="jsonl") == len(expected)
    assert {json.loads(line)["id"] for line in (tmp_path / "a.jsonl").read_bytes().split(b"\n")[:-1]} == expected
    assert export(conn, filters, str(tmp_path / "a.csv")) == len(expected)
    assert len(list(csv.reader(io.StringIO((tmp_path / "a.csv").read_text(), newline="")))) == len(expected) + 1


def test_metadata_that_is_not_an_object_is_still_neutralised(conn: psycopg.Connection[Any]) -> None:
    """The CHECK constraint keeps metadata an object; were it not, the cell would still be safe."""
    query = f"""select array_agg({export_module._METADATA.as_string(conn)} order by n)
                  from (values (1, '-1'::jsonb, null::jsonb), (2, '"=x"', null), (3, '{{"a": 1}}', '{{"b": 2}}'),
                               (4, '{{}}', '{{"=": "-"}}')) l(n, metadata, changes)"""  # noqa: S608
    got = conn.execute(query).fetchone()[0]  # type: ignore[index]
    assert got == ["'-1", '"=x"', '{"a": 1, "changes": {"b": 2}}', '{"changes": {"=": "-"}}']


def test_progress_is_reported_while_streaming(
    conn: psycopg.Connection[Any], awkward: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "_CHUNK", 1)
    monkeypatch.setattr(export_module, "_PROGRESS_EVERY", 100)
    entries = Filters(actions=("UPDATE", "LOGIN_FAILED", "X_1"))  # not the first export's DATA_EXPORTED
    for fmt in ("csv", "jsonl"):
        seen: list[int] = []
        assert export(conn, entries, str(tmp_path / f"a.{fmt}"), fmt=fmt, progress=seen.append) == awkward
        assert seen == [100, 200, 300]


def test_jsonl_in_a_database_that_is_not_utf8(pg_server: Server, dbname: str, tmp_path: Path) -> None:
    """JSONL takes json_object's braces off as bytes in the database's own encoding."""
    name = f"{dbname}_latin1"
    with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as admin:
        admin.execute(f"create database {name} encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' template template0")
    try:
        install(pg_server.dsn(name))
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
            with conn.transaction():
                conn.execute("set local role auditdb_owner")
                conn.execute(
                    """insert into auditdb.log (action, entity_type, entity_name, actor_name, metadata, changes)
                       values ('UPDATE', 'Doc', 'café "=x"', 'Zoë', '{"k": "é"}', '{"n": {"new": "à"}}'),
                              ('LOGIN', null, null, null, '{}', null)"""
                )
            expected = _plain_jsonl(conn)
            out = tmp_path / "a.jsonl"
            assert export(conn, Filters(), str(out), fmt="jsonl") == 2
            assert out.read_bytes() == expected and "café" in expected.decode(conn.info.encoding)
    finally:
        with psycopg.connect(pg_server.dsn(dbname), autocommit=True) as admin:
            admin.execute(f"drop database if exists {name}")


FILTER_CASES = [
    {},
    {"actions": ["LOGIN"]},
    {"actions": ["UPDATE", "LOGIN"]},
    {"entity_types": ["User", "Project"]},
    {"entity_id": "u1"},
    {"user": "ANN@example.com"},
    {"project": "p1"},
    {"tenant": "t2"},
    {"search": "50%_off"},
    {"search": "ann"},
    {"since": "2026-01-01T00:00:00+00:00"},
    {"until": "2999-01-01T00:00:00+00:00", "tenant": "t0", "actions": ["LOGIN"]},
]


@pytest.mark.parametrize("filters", FILTER_CASES, ids=lambda f: ",".join(f) or "none")
def test_the_server_counts_what_the_client_streams(conn: psycopg.Connection[Any], filters: dict[str, Any]) -> None:
    # auditdb.log_export counts with auditdb.filter_sql; the CLI streams with query.where_clause:
    # the same filters must select the same entries.
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_id, actor_email, tenant_id,
                                        project_id)
               select (array['LOGIN', 'UPDATE', 'CREATE'])[g % 3 + 1],
                      (array['User', 'Project', 'TestCase'])[g % 3 + 1],
                      'u' || g % 4, (array['50%_off sale', 'Ann''s', 'plain'])[g % 3 + 1], 'a' || g % 5,
                      (array['ann@example.com', 'bob@example.com'])[g % 2 + 1], 't' || g % 3, 'p' || g % 2
                 from generate_series(1, 60) g"""
        )
    from auditdb.query import where_clause

    parsed = Filters(
        since=datetime.fromisoformat(filters["since"]) if "since" in filters else None,
        until=datetime.fromisoformat(filters["until"]) if "until" in filters else None,
        actions=tuple(filters.get("actions", ())),
        entity_types=tuple(filters.get("entity_types", ())),
        entity_id=filters.get("entity_id"),
        user=filters.get("user"),
        project=filters.get("project"),
        tenant=filters.get("tenant"),
        search=filters.get("search"),
    )
    assert parsed.describe() == filters
    where, params = where_clause(parsed)
    streamed = scalar(conn, sql.SQL("select count(*) from auditdb.log l where {}").format(where), params)
    counted = scalar(conn, "select auditdb.log_export(%s, 'csv', 'tester', null)", (json.dumps(filters),))
    assert counted == streamed and streamed > 0
