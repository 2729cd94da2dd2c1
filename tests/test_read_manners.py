"""Reading and exporting manners (issue 13): export targets, closed pipes, exact values, absurd times, the table."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import stat
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from auditdb import export as export_module
from auditdb.cli import cli
from auditdb.export import export
from auditdb.query import Filters
from auditdb.render import NAME_CELLS, table_lines, width
from tests.fix_capture import audit_entries
from tests.fix_cli import auditdb_process
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


def _seed(conn: psycopg.Connection[Any], count: int, *, action: str = "UPDATE") -> None:
    """count entries of Doc 1 with 50-character values, written as auditdb's owner."""
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            """insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_email, changes, metadata)
               select %s, 'Doc', '1', repeat('n', 40), 'ann@example.com',
                      jsonb_build_object('body', jsonb_build_object('old', repeat('x', 50), 'new', repeat('y', 50))),
                      jsonb_build_object('g', g)
                 from generate_series(1, %s) g""",
            (action, count),
        )


def _exports(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [e["metadata"] for e in audit_entries(conn, "action = 'DATA_EXPORTED'")]


# ---------------------------------------------------------------------------------------------
# export -o: devices, FIFOs, symlinks, regular files


def _full_device(tmp_path: Path) -> Path:
    """A character device that refuses every write with ENOSPC, which no test can destroy.

    As root, a node of its own (1, 7, what /dev/full is) in tmp: a regression would replace that
    node, never /dev/full. Anyone else uses /dev/full, which they cannot replace.
    """
    if os.geteuid() != 0:
        return Path("/dev/full")
    node = tmp_path / "full"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("cannot make a device node here, and /dev/full is not put at risk as root")
    return node


def test_export_to_a_full_device_names_it_and_leaves_it_a_device(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    device = _full_device(tmp_path)
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    _seed(conn, 10)
    try:
        for fmt in ("csv", "jsonl"):
            proc = _cli(dsn, "export", "--format", fmt, "-o", str(device))
            assert proc.returncode == 1
            assert _one_error_line(proc) == f"Error: No space left on device: {device}"
            assert stat.S_ISCHR(os.lstat(device).st_mode), "the device was replaced"
    finally:
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert not list(tmp_path.glob("*partial")) and not list(tmp_path.glob(".*partial"))
    # Recorded as incomplete exports: nothing reached the device.
    assert _exports(conn) == [
        {"rows": 10, "format": "csv", "filters": {}, "complete": False, "rows_sent": 0},
        {"rows": 11, "format": "jsonl", "filters": {}, "complete": False, "rows_sent": 0},
    ]


def _reader(path: Path, got: bytearray, *, stop_after: int | None = None) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            while chunk := f.read(stop_after or 65536):
                got.extend(chunk)
                if stop_after:
                    return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_export_into_a_fifo_reaches_its_reader(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    _seed(conn, 3000)  # about 500 kB: many times a pipe's buffer
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = bytearray()
    reader = _reader(fifo, got)
    proc = _cli(dsn, "export", "--action", "UPDATE", "-o", str(fifo))
    reader.join(30)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    regular = tmp_path / "regular.csv"
    assert _cli(dsn, "export", "--action", "UPDATE", "-o", str(regular)).returncode == 0
    assert bytes(got) == regular.read_bytes() and len(got) > 400_000
    assert len(list(csv.reader(io.StringIO(got.decode())))) == 3001
    assert [m["complete"] for m in _exports(conn)] == [True, True]


def test_a_fifo_whose_reader_leaves_is_an_incomplete_export(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    _seed(conn, 3000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = bytearray()
    reader = _reader(fifo, got, stop_after=100)
    proc = _cli(dsn, "export", "-o", str(fifo))
    reader.join(30)
    assert proc.returncode == 1
    assert _one_error_line(proc) == f"Error: Broken pipe: {fifo}"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    [record] = _exports(conn)
    assert record["complete"] is False and 0 <= record["rows_sent"] < 3000 and record["rows"] == 3000


def test_export_through_a_symlink_writes_its_target(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    _seed(conn, 5)
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "real.csv"
    real.write_text("old\n")
    real.chmod(0o640)
    link = tmp_path / "link.csv"
    link.symlink_to("data/real.csv")  # relative, from another directory
    proc = _cli(dsn, "export", "--action", "UPDATE", "-o", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == "data/real.csv"
    rows = list(csv.reader(io.StringIO(real.read_text())))
    assert len(rows) == 6 and rows[1][1] == "UPDATE"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640, "the target's mode is kept"
    # A link to a file not there yet creates the file, and stays a link.
    dangling = tmp_path / "new.csv"
    dangling.symlink_to("data/later.csv")
    assert _cli(dsn, "export", "--action", "UPDATE", "-o", str(dangling)).returncode == 0
    assert dangling.is_symlink() and (tmp_path / "data" / "later.csv").read_text() == real.read_text()
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "data",
        "later.csv",
        "link.csv",
        "link.csv.manifest.json",  # beside the name given (auditdb verify-export link.csv)
        "new.csv",
        "new.csv.manifest.json",
        "real.csv",
    ]


def test_a_regular_file_is_replaced_atomically_and_kept_on_failure(
    conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(conn, 300)
    out = tmp_path / "a.csv"
    out.write_text("old\n")
    before = out.stat().st_ino
    assert export(conn, Filters(actions=("UPDATE",)), str(out)) == 300
    assert out.stat().st_ino != before, "a new file renamed onto the name, not the old one rewritten"
    done = out.read_bytes()

    # Interrupted after 100 rows were written to the temporary file: the previous export stays
    # whole under the name, no partial file is left, and the attempt is recorded.
    monkeypatch.setattr(export_module, "_CHUNK", 1)
    monkeypatch.setattr(export_module, "_PROGRESS_EVERY", 100)

    def interrupt(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(conn, Filters(actions=("UPDATE",)), str(out), progress=interrupt)
    assert out.read_bytes() == done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.csv.manifest.json"]  # the first export's
    assert _exports(conn)[-1] == {
        "rows": 300,
        "format": "csv",
        "filters": {"actions": ["UPDATE"]},
        "complete": False,
        "rows_sent": 100,
    }


def test_unusable_targets_are_one_line_naming_them(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    cases = {
        str(tmp_path): f"Error: Is a directory: {tmp_path}",
        str(loop): f"Error: Too many levels of symbolic links: {loop}",
        str(tmp_path / "none" / "x.csv"): f"Error: No such file or directory: {tmp_path / 'none' / 'x.csv'}",
    }
    for target, message in cases.items():
        proc = _cli(dsn, "export", "-o", target)
        assert proc.returncode == 1 and _one_error_line(proc) == message
    assert _exports(conn) == [], "nothing was exported, so nothing is recorded"


# ---------------------------------------------------------------------------------------------
# A reader that goes away: `| head -1` through a real shell pipe

PIPED = """"$@" 2>"$0" | head -1 >/dev/null; echo "${PIPESTATUS[0]}\""""


@pytest.mark.parametrize(
    "args",
    [
        ["export", "-o", "-"],
        ["export", "-o", "-", "--format", "jsonl"],
        ["export", "-o", "/dev/fd/1"],
        ["export", "-o", "LINK"],
        ["log", "--limit", "3000"],
        ["log", "--limit", "3000", "--format", "json"],
        ["log", "--limit", "3000", "--format", "csv"],
        ["show", "BIG"],
        ["history", "Doc", "1"],
        ["history", "Doc", "1", "--as-of", "2999-01-01"],
    ],
    ids=" ".join,
)
def test_a_closed_pipe_ends_quietly(conn: psycopg.Connection[Any], dsn: str, tmp_path: Path, args: list[str]) -> None:
    _seed(conn, 3000)
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        big = conn.execute(
            """insert into auditdb.log (action, entity_type, entity_id, changes)
               values ('UPDATE', 'Doc', '1', jsonb_build_object('body', jsonb_build_object('new', repeat('z', 300000))))
               returning id"""
        ).fetchone()
    assert big is not None
    # Standard output named by a path: /dev/fd/1, and a link of our own to /proc/self/fd/1 (never
    # /dev/stdout, which an export that replaces its target would replace, as root).
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    args = [{"BIG": str(big[0]), "LINK": str(link)}.get(a, a) for a in args]
    err = tmp_path / "stderr"
    proc = subprocess.run(
        ["bash", "-c", PIPED, str(err), sys.executable, "-m", "auditdb", "--dsn", dsn, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.stdout.strip() in ("0", "141"), (proc.stdout, err.read_text())
    assert err.read_text() == "", "no Error: Broken pipe, no traceback, no 'Exception ignored'"
    if args[0] == "export":
        [record] = _exports(conn)
        assert record["complete"] is (proc.stdout.strip() == "0")


def test_a_full_stdout_is_one_line(dsn: str, conn: psycopg.Connection[Any]) -> None:
    _seed(conn, 3)
    for args in (["log"], ["export", "-o", "-"], ["show", "1"], ["history", "Doc", "1"]):
        with open("/dev/full", "wb") as full:  # opened for writing: never replaced
            proc = auditdb_process("--dsn", dsn, *args, stdout=full)
        assert proc.returncode == 1
        assert _one_error_line(proc) == "Error: No space left on device: standard output"  # type: ignore[arg-type]


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
            "select id, changes->>'price' from auditdb.log where entity_type = 'Price' and entity_id = %s "
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
def test_times_out_of_range_are_one_line(tmp_path: Path, value: str) -> None:
    # Refused while the options are read, before any connection (the DSN leads nowhere): in-process.
    commands = [
        ["log", "--since", value],
        ["log", "--until", value],
        ["export", "-o", str(tmp_path / "x.csv"), "--since", value],
        ["export", "-o", "-", "--until", value],
        ["history", "Doc", "1", "--as-of", value],
    ]
    for args in commands:
        result = CliRunner().invoke(cli, ["--dsn", "host=127.0.0.1 port=1 connect_timeout=1", *args])
        assert result.exit_code == 2, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        line = result.stderr.strip().splitlines()[-1]
        assert "Traceback" not in result.stderr and len(line) < 200
        option = args[-2]
        assert line.startswith(f"Error: Invalid value for {option}: '{value[:40]}"), line
        assert "out of range" in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# The log table: whole identities in a pipe, the terminal's width on one; one word for nobody

LONG = {
    "action": "API_KEY_REGENERATED",
    "entity_type": "PermissionAssignment",
    "entity_id": '{"user_id": 12345, "permission": "EDIT_EVERYTHING"}',
    "entity_name": "A rather long name for a test case that goes on and on",
    "actor_email": "a.very.long.address.for.testing@subdomain.example.com",
}


@pytest.fixture
def long_entry(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("set local role auditdb_owner")
        conn.execute(
            "insert into auditdb.log (action, entity_type, entity_id, entity_name, actor_email) "
            "values (%(action)s, %(entity_type)s, %(entity_id)s, %(entity_name)s, %(actor_email)s)",
            LONG,
        )
        conn.execute("insert into auditdb.log (action, entity_type, entity_id) values ('LOGIN', 'User', 'u1')")


def _on_terminal(dsn: str, columns: int, *args: str) -> str:
    """What the command prints on a terminal `columns` wide (a pseudo-terminal, its size set)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "auditdb", "--dsn", dsn, *args], stdout=slave, stderr=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    out = bytearray()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        out += data
    os.close(master)
    assert proc.wait(60) == 0
    return out.decode().replace("\r\n", "\n")


def test_a_pipe_never_cuts_who_acted_or_what(dsn: str, long_entry: None) -> None:
    proc = _cli(dsn, "log")
    assert proc.returncode == 0
    header, login, entry = proc.stdout.splitlines()[:3]
    for key in ("action", "actor_email"):
        assert LONG[key] in entry
    assert f"{LONG['entity_type']} {LONG['entity_id']}" in entry
    assert LONG["entity_name"][: NAME_CELLS - 1] + "…" in entry and LONG["entity_name"] not in entry
    assert header.index("USER") == entry.index(LONG["actor_email"]), "columns stay aligned"
    assert login.endswith(" -")


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_a_terminal_gets_a_table_of_its_width(dsn: str, long_entry: None, columns: int) -> None:
    lines = _on_terminal(dsn, columns, "log").splitlines()
    assert len(lines) == 3 and all(width(line) <= columns for line in lines), lines
    wide = _on_terminal(dsn, 300, "log")
    assert all(text in wide for text in LONG.values())


def test_the_table_fits_any_terminal_whatever_the_values() -> None:
    huge = "Doc " + "k" * 1_000_000
    rows = [["1", "2026-11-25 20:01:05", "UPDATE", huge, "名前" * 40, "ann@example.com"]]
    for columns in (60, 80, 200):  # below 58 (a 19-cell time, 8 cells a column) the terminal wraps
        lines = table_lines(rows, columns)
        assert all(width(line) <= columns for line in lines), lines
    # The name (free text) gives way first, then the widest of the others: the line uses the whole width.
    assert "名前名…" in table_lines(rows, 200)[1] and width(table_lines(rows, 200)[1]) == 200
    piped = table_lines(rows, None)
    assert huge in piped[1] and "ann@example.com" in piped[1] and width(piped[1].split(huge)[1]) == 1 + 24 + 1 + 15


def test_nobody_is_one_word_in_log_show_and_history(conn: psycopg.Connection[Any], dsn: str, track: Any) -> None:
    track("create table docs (id int primary key, title text)", '[tables."public.docs"]\n')
    conn.execute("insert into docs values (1, 'a')")  # no context set: no actor
    table = _cli(dsn, "log", "--entity-type", "Doc").stdout.splitlines()
    assert table[1].endswith(" -")
    entry_id = table[1].split()[0]
    show = _cli(dsn, "show", entry_id).stdout
    assert all(f"{k:<12} -\n" in show for k in ("actor_id", "actor_email", "actor_name"))
    history = _cli(dsn, "history", "Doc", "1").stdout
    assert " by -\n" in history
    for out in (table, show, history):
        assert "system" not in str(out)
