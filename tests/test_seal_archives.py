"""Seals across retention: pruned months verify against their archives; verify reads in windows.

Also what verify's fast reading path must agree on with the server: values COPY escapes, times
of every era, and jsonb as the archive prints it.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb import seal as seal_module
from auditdb.archive import ArchivedMonth, archived_entries
from auditdb.cli import cli
from auditdb.partitions import archive_partition
from auditdb.seal import _live_entries, seal, time_key, verify
from tests.fix_db import scalar
from tests.test_partitions import _past_partition
from tests.test_seal import _as_superuser_unguarded

TRICKY_METADATA = [
    '{"n": 0.0000001, "m": 10.00, "big": 123456789012345678901234567890.5, "neg": -0, "e": 1e3}',
    '{"s": "tab\\there, newline\\n, quote \\" and back \\\\ slash, bell \\u0007, é 😀", "a": [true, false, null, []]}',
    '{"": {}, "nested": {"deep": [{"x": "y"}, 1.50]}, "long key with spaces": "v"}',
]


def _seal_all(conn: psycopg.Connection[Any]) -> None:
    seal(conn)
    seal(conn)


def _log(conn: psycopg.Connection[Any], action: str, n: int) -> None:
    """n entries written now, as auditdb_owner writes events (the log sets id, time, txid and user)."""
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, entity_id) select %s, 'User', g::text "
            "from generate_series(1, %s) g",
            (action, n),
        )


def _write_tricky(conn: psycopg.Connection[Any], occurred_at: Any) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        for n, metadata in enumerate(TRICKY_METADATA):
            conn.execute(
                """insert into auditdb.log (occurred_at, action, entity_type, entity_id, entity_name, ip, changes,
                                            metadata)
                   values (%s::timestamptz + make_interval(secs => %s + 0.25), 'UPDATE', 'Thing', %s,
                           E'a\\tb\\nc\\\\d\\re', %s, %s, %s)""",
                (
                    occurred_at,
                    n,
                    f"id-{n}",
                    ["2001:db8::1", "10.1.2.0/24", "203.0.113.7"][n],
                    '{"title": {"old": "x\\\\y", "new": 2.50}}',
                    metadata,
                ),
            )


def _server_digests(conn: psycopg.Connection[Any]) -> dict[int, bytes]:
    with conn.transaction():
        conn.execute("set local timezone = 'Asia/Kolkata'")  # entry_digest fixes its own
        return {r[0]: bytes(r[1]) for r in conn.execute("select l.id, auditdb.entry_digest(l) from auditdb.log l")}


def test_verify_reads_escaped_values_like_the_server(conn: psycopg.Connection[Any]) -> None:
    _write_tricky(conn, scalar(conn, "select now() - interval '1 minute'"))
    expected = _server_digests(conn)
    got = {entry_id: digest for entry_id, digest, _ in _live_entries(conn, 0, 10**9)}
    assert got == expected


def test_an_archive_holds_every_value_as_sealed(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    name = _past_partition(conn, 2, rows=3)
    start = scalar(conn, "select auditdb.month_start(-2)")
    _write_tricky(conn, start)
    expected = _server_digests(conn)
    path, rows = archive_partition(conn, name, tmp_path)
    assert rows == 6
    month = ArchivedMonth(name, "", "", rows, None, path)
    got = {entry_id: digest for entry_id, digest, _ in archived_entries(month)}
    assert got == expected
    with gzip.open(path, "rt") as f:  # still a row of the log, as jsonb_populate_record reads it
        line = f.readline()
    back = conn.execute(
        """select r = l from jsonb_populate_record(null::auditdb.log, %s::jsonb) r
             join auditdb.log l on l.id = r.id""",
        (line,),
    ).fetchone()
    assert back == (True,), line


def test_times_order_across_eras() -> None:
    printed = [
        "-infinity",
        "4713-01-01 00:00:00+00 BC",
        "0044-03-15 12:00:00+00 BC",
        "0001-12-31 23:59:59.999999+00 BC",
        "0001-01-01 00:00:00+00",
        "2026-11-30 05:40:12+00",
        "2026-11-30 05:40:12.000001+00",
        "2026-11-30 05:40:12.1+00",
        "2026-11-30 05:40:12.5+00",
        "9999-12-31 23:59:59+00",
        "10000-01-01 00:00:00+00",
        "infinity",
    ]
    assert sorted(printed, key=time_key) == printed


def _pruned_setup(conn: psycopg.Connection[Any], tmp_path: Path) -> tuple[str, list[int]]:
    """Entries in two past months and this one, sealed; the older month pruned with its archive."""
    old = _past_partition(conn, 3, rows=40)
    kept = _past_partition(conn, 2, rows=15)
    _log(conn, "LOGIN", 10)
    _seal_all(conn)
    _log(conn, "LOGOUT", 10)  # a later seal, after the bound the first one set
    _seal_all(conn)
    assert verify(conn).ok
    result = CliRunner().invoke(
        cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "2", "--export-dir", str(tmp_path)]
    )
    assert result.exit_code == 0 and f"dropped auditdb.{old}" in result.output, result.output
    _seal_all(conn)  # the prune's own entry, sealed as the worker would within seconds
    assert kept in {r[0] for r in conn.execute("select partition_name from auditdb.partitions()")}
    later = [r[0] for r in conn.execute("select id from auditdb.log where action = 'LOGOUT' order by id")]
    return old, later


def test_pruned_months_verify_against_their_archives(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    old, _ = _pruned_setup(conn, tmp_path)
    runner = CliRunner()
    without = runner.invoke(cli, ["--dsn", conn.info.dsn, "verify"])
    assert without.exit_code == 0, without.output
    assert "NOT CHECKED  seal 1 " in without.output and old in without.output, without.output
    assert "1 seals not checked (pruned months without archives)" in without.output
    archives = runner.invoke(cli, ["--dsn", conn.info.dsn, "verify", "--archive-dir", str(tmp_path)])
    assert archives.exit_code == 0, archives.output
    assert "NOT CHECKED" not in archives.output and "(40 of them from archives)" in archives.output, archives.output


def test_an_altered_archive_is_found(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    old, _ = _pruned_setup(conn, tmp_path)
    path = tmp_path / f"{old}.jsonl.gz"
    with gzip.open(path, "rt") as f:
        lines = f.readlines()
    entry = json.loads(lines[5])
    entry["entity_id"] = "someone else"
    lines[5] = json.dumps(entry) + "\n"
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "verify", "--archive-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "FOUND  entries 1 to" in result.output and "(seal 1) were changed" in result.output
    assert f"is not the one recorded when {old} was pruned" in result.output


def test_a_deletion_outside_the_pruned_months_is_found_without_their_archives(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    _, later = _pruned_setup(conn, tmp_path)
    partition = scalar(conn, "select tableoid::regclass::text from auditdb.log where id = %s", (later[3],))
    _as_superuser_unguarded(conn, partition, "delete from {t} where id = %s", (later[3],))
    found = [f.message for f in verify(conn).findings]
    assert any("(seal 2) were changed since sealed: 10 sealed, 9 there now" in f for f in found), found


def test_verify_reads_many_seals_in_windows(conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Seals read a page at a time and entries a window at a time: edits are still found in each."""
    monkeypatch.setattr(seal_module, "SEAL_PAGE", 3)
    monkeypatch.setattr(seal_module, "WINDOW", 25)
    for _ in range(7):
        _log(conn, "LOGIN", 10)
        _seal_all(conn)
    seen: list[int] = []
    report = verify(conn, seen.append)
    assert report.ok and report.seals == 7 and report.entries == 70, report
    assert len(seen) >= 3  # progress after each window
    target = scalar(conn, "select id from auditdb.log order by id offset 44 limit 1")
    partition = scalar(conn, "select tableoid::regclass::text from auditdb.log where id = %s", (target,))
    _as_superuser_unguarded(conn, partition, "update {t} set entity_id = 'x' where id = %s", (target,))
    found = [f.message for f in verify(conn).findings]
    assert len(found) == 1 and "(seal 5) were changed" in found[0], found
    since = verify(conn, since="2999-01-01T00:00:00+00:00")
    assert since.ok and since.skipped == 7 and since.entries == 0


@pytest.mark.slow  # pg_dump and pg_restore of a whole database: `./run test -m slow`
def test_a_dump_restored_into_another_database_still_verifies(
    conn: psycopg.Connection[Any], pg_server: Any, dsn: str, dbname: str, tmp_path: Path
) -> None:
    """Canonical form 1 depends on values only: pg_dump and pg_restore keep every seal verifying."""
    _write_tricky(conn, scalar(conn, "select now() - interval '1 minute'"))
    _log(conn, "LOGIN", 500)
    _seal_all(conn)
    before = verify(conn)
    assert before.ok and before.entries == 503
    bindir = Path(pg_server.local.bindir) if pg_server.local else None
    if bindir is None:
        pytest.skip("needs pg_dump beside the server")
    dump = tmp_path / "audit.dump"
    subprocess.run([str(bindir / "pg_dump"), "-Fc", "-f", str(dump), "-d", dsn], check=True, capture_output=True)
    restored = f"{dbname}_restored"
    conn.execute(psycopg.sql.SQL("create database {}").format(psycopg.sql.Identifier(restored)))
    try:
        out = subprocess.run(
            [str(bindir / "pg_restore"), "--exit-on-error", "-d", pg_server.dsn(restored), str(dump)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        with psycopg.connect(pg_server.dsn(restored), autocommit=True) as other:
            after = verify(other)
            assert after.ok, after.findings
            assert after.entries == 503 and after.chain == before.chain
            with other.transaction():  # and sealing goes on there
                other.execute("set local role auditdb_owner")
                other.execute("insert into auditdb.log (action, entity_type) values ('LOGOUT', 'User')")
            _seal_all(other)
            again = verify(other)
            assert again.ok and again.seals == before.seals + 1 and again.unsealed == 0, again
    finally:
        conn.execute(
            psycopg.sql.SQL("drop database if exists {} with (force)").format(psycopg.sql.Identifier(restored))
        )


def test_a_forged_prune_entry_hides_nothing(conn: psycopg.Connection[Any]) -> None:
    """Seals left unchecked for a pruned month come only from sealed prune entries of months truly gone."""
    _log(conn, "LOGIN", 30)
    _seal_all(conn)
    target = scalar(conn, "select min(id) from auditdb.log")
    partition = scalar(conn, "select tableoid::regclass::text from auditdb.log where id = %s", (target,))
    _as_superuser_unguarded(conn, partition, "delete from {t} where id = %s", (target,))
    this_month = partition.removeprefix("auditdb.")
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        for name in ("log_2025_99", this_month, "log_2999_01"):
            conn.execute(
                "insert into auditdb.log (action, entity_type, entity_id, metadata) "
                """values ('AUDIT_CHANGED', 'AuditPartition', %s, '{"operation": "prune", "rows": "0"}')""",
                (name,),
            )
    unsealed = [f"{f.kind}: {f.message}" for f in verify(conn).findings]
    assert any("(seal 1) were changed since sealed" in f for f in unsealed), unsealed  # not yet sealed: ignored
    _seal_all(conn)
    report = verify(conn)
    found = [f"{f.kind}: {f.message}" for f in report.findings]
    assert not report.unchecked, report.unchecked
    assert any("(seal 1) were changed since sealed" in f for f in found), found
    assert any("prune-invalid" in f and "'log_2025_99', which is no month" in f for f in found), found
    there = f"says {this_month} was dropped, but entries of that month are there"
    assert any("prune-invalid" in f and there in f for f in found), found
    assert any(
        "prune-invalid" in f and "log_2999_01 was dropped on" in f and "before the month ended" in f for f in found
    )


def test_a_missing_archive_is_an_error_when_archives_are_given(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    old, _ = _pruned_setup(conn, tmp_path)
    (tmp_path / f"{old}.jsonl.gz").unlink()
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "verify", "--archive-dir", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert f"{old} was archived when pruned, but" in result.output and "is not there" in result.output


def test_an_archive_nested_deeper_than_pythons_parser_still_verifies(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    name = _past_partition(conn, 3, rows=2)
    start = scalar(conn, "select auditdb.month_start(-3)")
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (occurred_at, action, entity_type, entity_id, changes, metadata)
               values (%s::timestamptz + interval '1 hour', 'IMPORTED', 'Doc', 'deep',
                       ('{"a": ' || repeat('[', 3000) || '"x\\"y"' || repeat(']', 3000) || '}')::jsonb,
                       '{"n": 1.50, "s": "é"}')""",
            (start,),
        )
    expected = _server_digests(conn)
    path, rows = archive_partition(conn, name, tmp_path)
    month = ArchivedMonth(name, "", "", rows, None, path)
    assert {entry_id: digest for entry_id, digest, _ in archived_entries(month)} == expected


def test_a_forged_prune_of_a_renamed_month_dated_ahead_hides_nothing(conn: psycopg.Connection[Any]) -> None:
    """The second review's attack: a prune entry dated next month, the month's partition renamed."""
    _log(conn, "LOGIN", 30)
    _seal_all(conn)
    _log(conn, "LOGOUT", 10)
    _seal_all(conn)
    target = scalar(conn, "select min(id) from auditdb.log")
    partition = scalar(conn, "select tableoid::regclass::text from auditdb.log where id = %s", (target,))
    name = partition.removeprefix("auditdb.")
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (occurred_at, action, entity_type, entity_id, metadata) "
            """values (auditdb.month_start(1) + interval '1 hour', 'AUDIT_CHANGED', 'AuditPartition', %s,
                      '{"operation": "prune", "rows": "0"}')""",
            (name,),
        )
    _seal_all(conn)
    with conn.transaction():
        conn.execute("select auditdb.begin_maintenance()")
        conn.execute(f"alter table {partition} rename to {name}_x")
    _as_superuser_unguarded(conn, f"{partition}_x", "delete from {t} where id = %s", (target,))
    report = verify(conn)
    found = [f"{f.kind}: {f.message}" for f in report.findings]
    assert not report.unchecked, report.unchecked
    assert any(f.startswith("future-dated") and "dated after their seal was made" in f for f in found), found
    assert any(f.startswith("prune-invalid") and "entries of that month are there" in f for f in found), found
    assert any("(seal 1) were changed since sealed: 30 sealed, 29 there now" in f for f in found), found


def test_seals_left_unchecked_must_lack_only_what_the_prunes_dropped(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A month pruned with --force (no archive): its seals are not checked, but a deletion beside it is found."""
    old = _past_partition(conn, 3, rows=40)
    _log(conn, "LOGIN", 10)
    _seal_all(conn)
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "partitions", "prune", "--older-than", "2", "--force"])
    assert result.exit_code == 0 and f"dropped auditdb.{old}" in result.output, result.output
    _seal_all(conn)
    honest = verify(conn)
    assert honest.ok and len(honest.unchecked) == 1, honest.findings
    assert honest.entries == 1  # only seal 2 (the prune entry): none of seal 1's entries counts as checked
    target = scalar(conn, "select max(id) from auditdb.log where action = 'LOGIN'")
    partition = scalar(conn, "select tableoid::regclass::text from auditdb.log where id = %s", (target,))
    _as_superuser_unguarded(conn, partition, "delete from {t} where id = %s", (target,))
    found = [f"{f.kind}: {f.message}" for f in verify(conn).findings]
    assert any("lack 41 entries; the prunes without archives dropped 40" in f for f in found), found


def test_an_archive_line_that_is_no_entry_is_could_not_check(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    old, _ = _pruned_setup(conn, tmp_path)
    path = tmp_path / f"{old}.jsonl.gz"
    with gzip.open(path, "rt") as f:
        lines = f.readlines()
    lines[3] = "[1, 2]\n"
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    result = CliRunner().invoke(cli, ["--dsn", conn.info.dsn, "verify", "--archive-dir", str(tmp_path)])
    assert result.exit_code == 3 and "line 4 is not an entry (a JSON object)" in result.output, result.output
