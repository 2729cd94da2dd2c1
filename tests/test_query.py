"""`auditdb log`, `show`, `history`: every filter, paging, formats, safe output."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from auditdb.cli import cli
from auditdb.export import CSV_HEADER
from auditdb.query import HISTORY_SQL, Filters, history, where_clause

NOW = datetime.now(UTC).replace(microsecond=0)

# (minutes ago, action, entity_type, entity_id, entity_name, actor_id, actor_email, actor_name, project, tenant)
SEED = [
    (1, "LOGIN", "User", "u1", "Ann", "u1", "ann@example.com", "Ann", None, "t1"),
    (5, "UPDATE", "TestCase", "7", "Login works", "u1", "ann@example.com", "Ann", "p1", "t1"),
    (60, "CREATE", "TestCase", "7", "Login", "u2", "bob@example.com", "Bob", "p1", "t1"),
    (60 * 30, "DELETE", "Project", "p9", "Old project", "u2", "bob@example.com", "Bob", "p9", "t2"),
    (60 * 24 * 3, "LOGIN_FAILED", "User", None, "mallory@example.com", None, None, None, None, "t2"),
    (60 * 24 * 10, "API_KEY_REVOKED", "ApiToken", "k1", "CI key", "u3", "cho@example.com", "Cho", "p2", "t1"),
]


@pytest.fixture
def seeded(conn: psycopg.Connection[Any]) -> list[int]:
    ids = []
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        for minutes, *values in SEED:
            row = conn.execute(
                """insert into auditdb.log (occurred_at, action, entity_type, entity_id, entity_name, actor_id,
                                            actor_email, actor_name, project_id, tenant_id, ip, user_agent, changes)
                   values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '203.0.113.7', 'UA',
                           case when %s = 'UPDATE' then '{"name": {"old": "Login", "new": "Login works"}}'::jsonb end)
                   returning id""",
                (NOW - timedelta(minutes=minutes), *values, values[0]),
            ).fetchone()
            assert row is not None
            ids.append(row[0])
    return ids


def _log(dsn: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--dsn", dsn, "log", "--format", "json", *args])


def _ids(result: Any) -> list[int]:
    assert result.exit_code == 0, result.output
    return [e["id"] for e in json.loads(result.output)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], [0, 1, 2, 3, 4, 5]),
        (["--since", "2h"], [0, 1, 2]),
        (["--since", "2d", "--until", "30m"], [2, 3]),
        (["--until", (NOW - timedelta(days=5)).date().isoformat()], [5]),
        (["--action", "LOGIN"], [0]),
        (["--action", "LOGIN", "--action", "LOGIN_FAILED"], [0, 4]),
        (["--entity-type", "TestCase"], [1, 2]),
        (["--entity-type", "TestCase", "--entity-type", "Project"], [1, 2, 3]),
        (["--entity-id", "7"], [1, 2]),
        (["--user", "u2"], [2, 3]),
        (["--user", "ANN@example.com"], [0, 1]),
        (["--user", "Cho"], [5]),
        (["--project", "p1"], [1, 2]),
        (["--tenant", "t2"], [3, 4]),
        (["--search", "login"], [1, 2]),
        (["--search", "mallory"], [4]),
        (["--search", "%"], []),
        (["--tenant", "t1", "--since", "1d", "--entity-type", "TestCase", "--user", "bob@example.com"], [2]),
        (["--action", "UPDATE", "--project", "p1", "--search", "works"], [1]),
    ],
)
def test_filters_select_exactly_the_matching_entries(
    args: list[str], expected: list[int], dsn: str, seeded: list[int]
) -> None:
    assert _ids(_log(dsn, *args)) == [seeded[i] for i in expected]


def test_limit_and_keyset_paging(dsn: str, seeded: list[int]) -> None:
    first = _ids(_log(dsn, "--limit", "4"))
    rest = _ids(_log(dsn, "--limit", "4", "--before-id", str(first[-1])))
    assert first + rest == seeded


@pytest.mark.parametrize(
    "args", [["--since", "yesterday"], ["--until", "2026-13-01"], ["--action", "login"], ["--limit", "0"]]
)
def test_bad_filter_values_are_one_clear_error(args: list[str], dsn: str) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "log", *args])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith("Error: Invalid value")
    assert "Traceback" not in result.output


def test_table_fits_100_columns_and_escapes_control_characters(
    conn: psycopg.Connection[Any], dsn: str, seeded: list[int]
) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, entity_name, actor_email) "
            "values ('LOGIN', 'User', e'\\x1b[2J\\x1b]0;pwned\\x07evil\\nname', e'x\\x1b[31m@y.z')"
        )
    result = CliRunner().invoke(cli, ["--dsn", dsn, "log"])
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\\x1b[2J" in result.output
    assert all(len(line) <= 100 for line in result.output.splitlines())
    for fmt in ("csv", "json"):
        out = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--format", fmt]).output
        assert "\x1b" not in out


def test_json_is_one_array_keyed_by_column_names(dsn: str, seeded: list[int]) -> None:
    entries = json.loads(_log(dsn, "--limit", "2").output)
    assert set(entries[0]) == {
        "id",
        "occurred_at",
        "action",
        "entity_type",
        "entity_id",
        "entity_name",
        "project_id",
        "tenant_id",
        "actor_id",
        "actor_email",
        "actor_name",
        "ip",
        "user_agent",
        "db_user",
        "table_name",
        "changes",
        "metadata",
        "txid",
    }
    assert entries[0]["occurred_at"].endswith("Z") and entries[0]["ip"] == "203.0.113.7"


def test_csv_format_shares_the_export_layout(dsn: str, seeded: list[int]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--format", "csv"])
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0] == CSV_HEADER and len(rows) == 7
    assert rows[2][:7] == [rows[2][0], "UPDATE", "TestCase", "7", "Login works", "Ann", "ann@example.com"]
    assert json.loads(rows[2][10])["changes"] == {"name": {"old": "Login", "new": "Login works"}}


def test_csv_format_is_byte_for_byte_the_export(conn: psycopg.Connection[Any], dsn: str, seeded: list[int]) -> None:
    # Metadata with numbers jsonb keeps as written, keys in jsonb's order, an address with a
    # prefix and a formula: `log --format csv` prints exactly the cells `export` writes.
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (action, entity_name, ip, metadata, changes)
               values ('UPDATE', '=HYPERLINK(1)', '10.0.0.1/24', '{"zeta": 1.50, "a": [1e3]}',
                       '{"n": {"old": 0.10, "new": 2}}')"""
        )
    logged = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--format", "csv", "--limit", "100"])
    exported = CliRunner().invoke(cli, ["--dsn", dsn, "export", "--format", "csv", "--output", "-"])
    assert logged.exit_code == 0 and exported.exit_code == 0, (logged.output, exported.output)
    assert logged.output == exported.output.split("exported ")[0]
    assert "'=HYPERLINK(1)" in logged.output and '"zeta"": 1.50' in logged.output


def test_show_prints_one_entry_with_changes(dsn: str, seeded: list[int]) -> None:
    result = CliRunner().invoke(cli, ["--dsn", dsn, "show", str(seeded[1])])
    assert result.exit_code == 0
    assert "name: Login → Login works" in result.output and "actor_email  ann@example.com" in result.output
    missing = CliRunner().invoke(cli, ["--dsn", dsn, "show", "999999"])
    assert missing.exit_code == 1 and "no entry 999999" in missing.output


def test_history_and_state_as_of(conn: psycopg.Connection[Any], dsn: str, track: Any) -> None:
    track(
        "create table docs (id int primary key, title text, body text, secret_key text)",
        '[defaults]\nmask = ["*secret*"]\n[tables."public.docs"]\n',
    )
    conn.execute("insert into docs values (1, 'Draft', 'x', 'sk-1')")
    t1 = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
    conn.execute("update docs set title = 'Final', secret_key = 'sk-2'")
    t2 = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
    conn.execute("delete from docs")
    timeline = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Doc", "1"])
    assert timeline.exit_code == 0
    assert [line.split()[3] for line in timeline.output.splitlines() if "#" in line] == ["CREATE", "UPDATE", "DELETE"]
    assert "title: Draft → Final" in timeline.output and "sk-" not in timeline.output
    at1 = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Doc", "1", "--as-of", t1.isoformat()])
    assert "title: Draft" in at1.output and "secret_key: ***" in at1.output and "body: x" in at1.output
    at2 = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Doc", "1", "--as-of", t2.isoformat()])
    assert "title: Final" in at2.output
    gone = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Doc", "1"])
    assert gone.exit_code == 0
    after = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Doc", "1", "--as-of", "2999-01-01"])
    assert "deleted at" in after.output
    before = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Doc", "1", "--as-of", "2000-01-01"])
    assert "no entry at or before" in before.output


def test_history_says_when_the_log_does_not_reach_back(dsn: str, seeded: list[int]) -> None:
    # The seeded CREATE of TestCase 7 carries no column values: its creation is not in the log.
    result = CliRunner().invoke(cli, ["--dsn", dsn, "history", "TestCase", "7", "--as-of", "2999-01-01"])
    assert result.exit_code == 0
    assert "does not reach back far enough" in result.output
    assert "name: Login works" in result.output


def test_history_follows_a_key_change_through_indexes(conn: psycopg.Connection[Any], track: Any) -> None:
    track("create table keyed (code text primary key, v int)", '[tables."public.keyed"]\n')
    conn.execute("insert into keyed values ('a', 1)")
    conn.execute("update keyed set code = 'b'")
    conn.execute("update keyed set v = 2")
    assert [e["action"] for e in history(conn, "Keyed", "a")] == ["CREATE", "UPDATE"]
    assert [e["action"] for e in history(conn, "Keyed", "b")] == ["UPDATE", "UPDATE"]
    # With many entries of the type, `history` finds the entity's own entries and the key change
    # through two indexes instead of filtering every entry of the type; `show` uses the id index.
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, entity_id) "
            "select 'UPDATE', 'Keyed', 'k' || g from generate_series(1, 20000) g"
        )
        conn.execute("analyze auditdb.log")
        conn.execute("set local enable_seqscan = off")
        history_plan = "\n".join(r[0] for r in conn.execute(f"explain {HISTORY_SQL}", ("Keyed", "a", "a")))
        assert "BitmapOr" in history_plan, history_plan
        show_plan = "\n".join(r[0] for r in conn.execute("explain select * from auditdb.log where id = 1"))
        assert "Seq Scan" not in show_plan, show_plan


def test_the_action_index_serves_rare_actions_and_skips_what_table_changes_write(conn: psycopg.Connection[Any]) -> None:
    # Revision 0006: CREATE/UPDATE/DELETE (and BULK_) entries are not in the action index (one
    # index insertion less per captured row); a filter on other actions still uses it.
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, entity_id) "
            "select (array['CREATE', 'UPDATE', 'DELETE', 'BULK_UPDATE'])[g % 4 + 1], 'Row', g::text"
            "  from generate_series(1, 20000) g"
        )
        conn.execute("insert into auditdb.log (action) select 'PERMISSION_GRANT' from generate_series(1, 5)")
        conn.execute("analyze auditdb.log")

    def index_bytes(columns: str) -> int:
        row = conn.execute(
            "select sum(pg_relation_size(i.indexrelid)) from pg_index i join pg_inherits h on h.inhrelid = i.indrelid"
            " where h.inhparent = 'auditdb.log'::regclass and pg_get_indexdef(i.indexrelid) like %s",
            (f"%({columns})%",),
        ).fetchone()
        assert row is not None
        return int(row[0])

    indexed, entity = index_bytes("action, occurred_at"), index_bytes("entity_type, entity_id")
    assert indexed * 5 < entity, (indexed, entity)  # 5 entries (and empty partitions' pages) against 20,005

    def plan(*actions: str, generic: bool = False) -> str:
        where, params = where_clause(Filters(actions=actions, since=datetime.now(UTC) - timedelta(days=30)))
        query = sql.SQL("explain select * from auditdb.log l where {} order by l.occurred_at desc, l.id desc limit 50")
        conn.execute(f"set plan_cache_mode = {'force_generic_plan' if generic else 'auto'}")
        return "\n".join(r[0] for r in conn.execute(query.format(where), params, prepare=generic))

    index = "_action_occurred_at_idx"
    assert index in plan("PERMISSION_GRANT"), plan("PERMISSION_GRANT")
    assert index in plan("PERMISSION_GRANT", "LOGIN_FAILED")
    assert index not in plan("UPDATE")  # found by time, filtered
    assert index not in plan("PERMISSION_GRANT", "DELETE")
    # A connection that prepares the query may get a generic plan: the index still serves.
    assert index in plan("PERMISSION_GRANT", generic=True), plan("PERMISSION_GRANT", generic=True)
