"""Capture overhead: the same workloads on a bare table and a tracked one, interleaved, with floors.

Runs its own throw-away PostgreSQL (the system one by default) with auditdb installed:
  W1  single-row UPDATE by random key plus one SELECT, pgbench, 4 clients (TPS)
  W2  one INSERT … SELECT of 200,000 rows into a 10-column table
  W3  one UPDATE of those rows changing one column
  W4  one DELETE of them
  floor(W)  one INSERT … SELECT of the entries W produces (same changes and context columns)
            into a plain table with auditdb.log's columns, no index or partition
and the bytes auditdb.log (indexes included) grows by per entry after W2 and W3.

    python bench/capture.py [--server system-15] [--rounds 3] [--seconds 30] [--rows 200000]

Prints a Markdown report; --output writes it to a file too (bench/CAPTURE.md). bench/all.py runs
every benchmark into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from common import add_server_option, finish, pick_server
from psycopg import sql

from auditdb.config import parse_config
from auditdb.embedded import LocalServer, server_version
from auditdb.install import install
from auditdb.triggers import apply

SETTINGS = {
    "shared_buffers": "1GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "256MB",
    "synchronous_commit": "off",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "max_connections": "50",
    "log_min_messages": "warning",
}

COLUMNS = """
    id int primary key, c_bigint bigint, c_text1 text, c_text2 text, c_text3 text,
    c_ts timestamptz, c_json jsonb, c_num numeric, c_bool boolean, c_uuid uuid
"""
FILL = """
    select g, g * 2, md5(g::text), 'text ' || g, repeat('x', 20), timestamptz '2026-01-01' + g * interval '1 s',
           jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b')), g * 1.5, g %% 2 = 0,
           md5(g::text)::uuid
      from generate_series(1, %(rows)s) g
"""
BENCH_COLUMNS = ["id", "c_bigint", "c_text1", "c_text2", "c_text3", "c_ts", "c_json", "c_num", "c_bool", "c_uuid"]


def _whole_row(side: str) -> sql.Composable:
    """jsonb_build_object('col', jsonb_build_object(side, t.col), …) over the bench columns."""
    pairs = sql.SQL(", ").join(
        sql.SQL("{}, jsonb_build_object({}, t.{})").format(sql.Literal(c), sql.Literal(side), sql.Identifier(c))
        for c in BENCH_COLUMNS
    )
    return sql.SQL("jsonb_build_object({})").format(pairs)


def _floor(action: str, changes: sql.Composable) -> sql.Composed:
    """Write the entries a workload produces, built from the bare table's rows, into the floor table."""
    return sql.SQL(
        "insert into bench_floor (action, entity_type, entity_id, entity_name, table_name, changes, metadata) "
        "select {}, 'Bench', t.id::text, null, 'public.bench_tracked', {}, jsonb_build_object('rows', %(rows)s) "
        "from bench_bare t"
    ).format(sql.Literal(action), changes)


# What any design must write for each workload.
FLOORS = {
    "W2": _floor("BULK_CREATE", _whole_row("new")),
    "W3": _floor(
        "BULK_UPDATE",
        sql.SQL("jsonb_build_object('c_bigint', jsonb_build_object('old', t.c_bigint - 1, 'new', t.c_bigint))"),
    ),
    "W4": _floor("BULK_DELETE", _whole_row("old")),
}

# --w1-ceilings: W1 against stand-ins for the capture, to show what any trigger design keeps.
W1_CEILINGS = {
    # The same statement-level triggers with transition tables, writing nothing.
    "empty statement trigger": "begin return null; end",
    # The generated capture, writing its entry to an unpartitioned, unindexed copy of the log.
    "capture into an unindexed table": None,
}

W1_SCRIPT = """\\set id random(1, {rows})
update {table} set c_bigint = c_bigint + 1 where id = :id;
select c_text1 from {table} where id = :id;
"""


def timed(conn: psycopg.Connection[Any], query: str | sql.Composable, params: dict[str, Any]) -> float:
    conn.execute("checkpoint")
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(query, params)
    return time.perf_counter() - started


def log_bytes(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        """select sum(pg_total_relation_size(i.inhrelid)) from pg_inherits i
            where i.inhparent = 'auditdb.log'::regclass"""
    ).fetchone()
    return int(row[0]) if row and row[0] else 0


def log_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("select count(*) from auditdb.log").fetchone()
    return int(row[0]) if row else 0


def _capture_source(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """The bench table's capture function and its body."""
    row = conn.execute(
        "select p.oid::regprocedure::text, p.prosrc from pg_trigger t join pg_proc p on p.oid = t.tgfoid"
        " where t.tgrelid = 'bench_tracked'::regclass and t.tgname = 'auditdb_capture_upd'"
    ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def set_capture_body(conn: psycopg.Connection[Any], body: str) -> str:
    """Replace the capture function's body, keeping its settings; returns the body it had."""
    function, source = _capture_source(conn)
    row = conn.execute("select pg_get_functiondef(%s::regprocedure)", (function,)).fetchone()
    assert row is not None
    conn.execute(str(row[0]).replace(source, body, 1))
    return source


def ceiling_bodies(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The capture function bodies that W1's ceilings run (see W1_CEILINGS)."""
    _, source = _capture_source(conn)
    conn.execute("create table auditdb.bench_unindexed (like auditdb.log including defaults including constraints)")
    conn.execute("alter table auditdb.bench_unindexed owner to auditdb_owner")
    unindexed = source.replace("insert into auditdb.log ", "insert into auditdb.bench_unindexed ")
    assert unindexed != source
    return {label: body if body is not None else unindexed for label, body in W1_CEILINGS.items()}


def pgbench(server: LocalServer, table: str, rows: int, seconds: int, workdir: Path) -> float:
    script = workdir / f"w1_{table}.sql"
    script.write_text(W1_SCRIPT.format(rows=rows, table=table))
    out = subprocess.run(
        [
            str(server.bindir / "pgbench"),
            "-n",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            str(seconds),
            "-f",
            str(script),
            "-h",
            "127.0.0.1",
            "-p",
            str(server.port),
            "-U",
            server.superuser,
            "postgres",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no TPS: {out.stdout}{out.stderr}")
    return float(match.group(1))


def measure_sizes(server: LocalServer, rows: dict[str, int]) -> dict[str, float]:
    """Bytes per entry that W2, then W3, add to an empty auditdb.log, in a database of their own.

    (In the timed database the log already holds W1's entries, and how much room those leave in
    its pages and indexes would change the figure from run to run.)
    """
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("create database bench_sizes")
    dsn = server.dsn("bench_sizes")
    install(dsn)
    sizes = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create table bench_tracked ({})").format(sql.SQL(COLUMNS)))
        apply(conn, parse_config({"tables": {"public.bench_tracked": {"entity_type": "Bench"}}}))
        for name, statement in (
            ("W2", sql.SQL("insert into bench_tracked ") + sql.SQL(FILL)),
            ("W3", sql.SQL("update bench_tracked set c_bigint = c_bigint + 1")),
        ):
            before_bytes, before_count = log_bytes(conn), log_count(conn)
            conn.execute(statement, rows if name == "W2" else None)
            sizes[name] = (log_bytes(conn) - before_bytes) / max(log_count(conn) - before_count, 1)
            print(f"{name}: {sizes[name]:.0f} bytes per entry", flush=True)
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute("drop database bench_sizes")
    return sizes


def run(args: argparse.Namespace) -> str:
    key, bindir = pick_server(args.server)
    server = LocalServer(bindir, settings=dict(SETTINGS)).start()
    rows = {"rows": args.rows}
    results: dict[str, list[float]] = {}
    try:
        sizes = measure_sizes(server, rows)
        install(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn, tempfile.TemporaryDirectory() as tmp:
            for table in ("bench_bare", "bench_tracked"):
                conn.execute(sql.SQL("create table {} ({})").format(sql.Identifier(table), sql.SQL(COLUMNS)))
            conn.execute("create table bench_floor (like auditdb.log including defaults)")
            apply(conn, parse_config({"tables": {"public.bench_tracked": {"entity_type": "Bench"}}}))
            # W1 on tables of `rows` rows; the bulk workloads start from empty tables.
            for table in ("bench_bare", "bench_tracked"):
                conn.execute(sql.SQL("insert into {} ").format(sql.Identifier(table)) + sql.SQL(FILL), rows)
            conn.execute("vacuum analyze")
            ceilings = ceiling_bodies(conn) if args.w1_ceilings else {}
            for r in range(args.rounds):
                for table in ("bench_bare", "bench_tracked"):
                    tps = pgbench(server, table, args.rows, args.seconds, Path(tmp))
                    results.setdefault(f"W1 {table}", []).append(tps)
                    print(f"round {r + 1}: W1 {table}: {tps:.0f} tps", flush=True)
                for label, body in ceilings.items():
                    original = set_capture_body(conn, body)
                    tps = pgbench(server, "bench_tracked", args.rows, args.seconds, Path(tmp))
                    set_capture_body(conn, original)
                    results.setdefault(f"W1 ceiling {label}", []).append(tps)
                    print(f"round {r + 1}: W1 {label}: {tps:.0f} tps", flush=True)
            for r in range(args.rounds):
                conn.execute("truncate bench_bare, bench_tracked, bench_floor")
                conn.execute("vacuum analyze bench_bare, bench_tracked, bench_floor")
                steps = {
                    "W2": tuple(
                        sql.SQL("insert into {} ").format(sql.Identifier(t)) + sql.SQL(FILL)
                        for t in ("bench_bare", "bench_tracked")
                    ),
                    "W3": (
                        "update bench_bare set c_bigint = c_bigint + 1",
                        "update bench_tracked set c_bigint = c_bigint + 1",
                    ),
                    "W4": ("delete from bench_bare", "delete from bench_tracked"),
                }
                for name, (bare_sql, tracked_sql) in steps.items():
                    # The floor reads the bare table, so it runs before W4 empties it.
                    floor = timed(conn, FLOORS[name], rows) if name == "W4" else None
                    bare = timed(conn, bare_sql, rows)
                    tracked = timed(conn, tracked_sql, rows)
                    if floor is None:
                        floor = timed(conn, FLOORS[name], rows)
                    conn.execute("truncate bench_floor")
                    for label, value in (("bare", bare), ("tracked", tracked), ("floor", floor)):
                        results.setdefault(f"{name} {label}", []).append(value)
                    print(
                        f"round {r + 1}: {name}: bare {bare:.2f} s, tracked {tracked:.2f} s, floor {floor:.2f} s",
                        flush=True,
                    )
        version = server_version(server.bindir)[1]
    finally:
        server.stop()
    return report(args, key, version, results, sizes)


def report(
    args: argparse.Namespace, key: str, version: str, results: dict[str, list[float]], sizes: dict[str, float]
) -> str:
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# Capture benchmark",
        "",
        f"- machine: {os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, {platform.system()} {platform.release()}",
        f"- server: PostgreSQL {version} ({key}), started by the script with: "
        + ", ".join(f"{k}={v}" for k, v in SETTINGS.items()),
        f"- command: `python bench/capture.py --server {key} --rounds {args.rounds} --seconds {args.seconds}"
        f" --rows {args.rows}{' --w1-ceilings' if args.w1_ceilings else ''}`",
        f"- {args.rounds} interleaved rounds, medians; 10-column table (int, bigint, text x3, timestamptz, jsonb,"
        " numeric, boolean, uuid)",
        "",
        "| workload | bare | tracked | tracked / bare | floor | (tracked - bare) / floor |",
        "|---|---|---|---|---|---|",
    ]
    bare_tps, tracked_tps = med["W1 bench_bare"], med["W1 bench_tracked"]
    lines.append(
        f"| W1 single-row UPDATE + SELECT, 4 clients, {args.seconds} s | {bare_tps:.0f} tps | "
        f"{tracked_tps:.0f} tps | {tracked_tps / bare_tps:.1%} of bare | - | - |"
    )
    for label in W1_CEILINGS:
        if f"W1 ceiling {label}" in med:
            tps = med[f"W1 ceiling {label}"]
            lines.append(
                f"| W1 with {label} (for comparison) | - | {tps:.0f} tps | {tps / bare_tps:.1%} of bare | - | - |"
            )
    names = {"W2": "INSERT … SELECT", "W3": "UPDATE one column", "W4": "DELETE"}
    for w, label in names.items():
        bare, tracked, floor = med[f"{w} bare"], med[f"{w} tracked"], med[f"{w} floor"]
        lines.append(
            f"| {w} {label}, {args.rows:,} rows | {bare:.2f} s | {tracked:.2f} s | {tracked / bare:.1f}x | "
            f"{floor:.2f} s | {(tracked - bare) / floor:.2f} |"
        )
    lines += [
        "",
        f"auditdb.log bytes per entry (heap, TOAST and indexes): {sizes.get('W2', 0):.0f} after W2, "
        f"{sizes.get('W3', 0):.0f} after W3 (each workload once, into an empty log in a database of its own).",
        "",
        "Every round's figures:",
        "",
    ]
    for k, v in results.items():
        lines.append(f"- {k}: " + ", ".join(f"{x:.2f}" for x in v))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30, help="pgbench duration per W1 round")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--w1-ceilings",
        action="store_true",
        help="also run W1 with an empty capture trigger and with capture into an unindexed table",
    )
    args = parser.parse_args()
    finish([run(args).rstrip("\n")], args.output)


if __name__ == "__main__":
    main()
