"""Reading and exporting manners (issue 13): exact values, absurd times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb.cli import cli
from tests.fix_worker import drain


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditdb", "--dsn", dsn, *args], capture_output=True, text=True, check=False, timeout=120
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Values exactly as stored

NUMBERS = ["12345678901234567.1234567891", "10.00", "1e400", "1e5000", "0.0000001", "-0.50", "0"]


def test_numbers_print_exactly_as_stored(conn: psycopg.Connection[Any], dsn: str, track: Any) -> None:
    track("create table prices (id int primary key, price numeric)", '[tables."public.prices"]\n')
    for i, number in enumerate(NUMBERS):
        conn.execute("insert into prices values (%s, %s::numeric)", (i, number))
    conn.execute("update prices set price = price * 10.0 where id = 1")  # 10.00 -> 100.000
    metadata = "{" + ", ".join(f'"n{i}": {n}' for i, n in enumerate(NUMBERS)) + "}"
    conn.execute("select auditdb.emit('LOGIN', entity_type => 'User', entity_id => 'u1', metadata => %s)", (metadata,))
    drain(dsn)
    stored = [str(r[0]) for r in conn.execute("select price::text from prices order by id")]
    assert stored[0] == "12345678901234567.1234567891" and len(stored[3]) == 5001 and stored[1] == "100.000"
    # What the server prints for the emitted metadata: jsonb's own text of each number.
    meta = conn.execute("select metadata::text from auditdb.log where action = 'LOGIN'").fetchone()
    assert meta is not None and "10.00," in meta[0]

    for i, number in enumerate(stored):
        create = conn.execute(
            "select id, changes->'price'->>'new' from auditdb.log where entity_type = 'Price' and entity_id = %s "
            "order by id limit 1",
            (str(i),),
        ).fetchone()
        assert create is not None
        first = create[1]
        shown = CliRunner().invoke(cli, ["--dsn", dsn, "show", str(create[0])])
        assert shown.exit_code == 0 and f"price: → {first}\n" in shown.output
        timeline = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Price", str(i)]).output
        assert f"price: → {first}\n" in timeline
        state = CliRunner().invoke(cli, ["--dsn", dsn, "history", "Price", str(i), "--as-of", "2999-01-01"]).output
        assert f"  price: {number}\n" in state
    assert "price: 10.00 → 100.000" in CliRunner().invoke(cli, ["--dsn", dsn, "history", "Price", "1"]).output

    login = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--action", "LOGIN"])
    assert login.exit_code == 0
    show = CliRunner().invoke(cli, ["--dsn", dsn, "show", login.output.splitlines()[1].split()[0]]).output
    assert f"metadata     {meta[0]}\n" in show

    # log --format json: the same digits, in JSON any reader can parse exactly.
    raw = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--format", "json"]).output
    entries = json.loads(raw, parse_float=str, parse_int=str)
    [event] = [e for e in entries if e["action"] == "LOGIN"]
    assert event["metadata"] == json.loads(meta[0], parse_float=str, parse_int=str)
    for text in ("12345678901234567.1234567891", "10.00", "100.000", "0.0000001", "-0.50", "1" + "0" * 5000):
        assert text in raw
    assert "e+" not in raw and "10.0," not in raw
    csv_out = CliRunner().invoke(cli, ["--dsn", dsn, "log", "--format", "csv"]).output
    assert "12345678901234567.1234567891" in csv_out and "1" + "0" * 5000 in csv_out


def test_deep_and_odd_json_prints_without_a_traceback(conn: psycopg.Connection[Any], dsn: str) -> None:
    # Nesting deeper than Python's json can parse, a change that is not an object, keys with quotes
    # and brackets in strings: all printed as stored.
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        row = conn.execute(
            """insert into auditdb.log (action, entity_type, entity_id, changes, metadata)
               values ('UPDATE', 'Doc', '9',
                       jsonb_build_object('deep',
                                          jsonb_build_object('new', (repeat('[', 3000) || repeat(']', 3000))::jsonb),
                                          'odd', 5, 'q"}[', jsonb_build_object('old', '{"]', 'new', null)),
                       jsonb_build_object('deep', (repeat('{"a":', 2000) || '1' || repeat('}', 2000))::jsonb))
               returning id"""
        ).fetchone()
    assert row is not None
    for args in (["show", str(row[0])], ["history", "Doc", "9"], ["history", "Doc", "9", "--as-of", "2999-01-01"]):
        proc = _cli(dsn, *args)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "Traceback" not in proc.stdout
    shown = _cli(dsn, "show", str(row[0])).stdout
    assert "deep: → " + "[" * 3000 in shown and "  odd: 5\n" in shown and '  q"}[: {"] → ∅\n' in shown
    entries = _cli(dsn, "log", "--format", "json")
    assert entries.returncode == 0 and "[" * 3000 in entries.stdout


# ---------------------------------------------------------------------------------------------
# Absurd times: one line naming the option and the value


@pytest.mark.parametrize(
    "value",
    [
        "999999d",
        "99999999999999999999d",
        "9" * 5000 + "s",
        "999999999w",
        "0000-01-01",
        "10000-01-01",
        "9999-12-31T23:00-05:00",
        "0001-01-01T00:00+01:00",
    ],
    ids=lambda v: v[:24],
)
def test_times_out_of_range_are_one_line(dsn: str, tmp_path: Path, value: str) -> None:
    commands = [
        ["log", "--since", value],
        ["log", "--until", value],
        ["export", "-o", str(tmp_path / "x.csv"), "--since", value],
        ["export", "-o", "-", "--until", value],
        ["history", "Doc", "1", "--as-of", value],
    ]
    for args in commands:
        proc = _cli(dsn, *args)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and len(line) < 200
        option = args[-2]
        assert line.startswith(f"Error: Invalid value for {option}: '{value[:40]}"), line
        assert "out of range" in line
    assert list(tmp_path.iterdir()) == []
