"""Capture cost, side by side in one run: no trigger, the minimal row trigger (the yardstick), auditdb.

Runs its own throw-away PostgreSQL (the system one by default) with PostgreSQL's defaults
(synchronous_commit on, fsync on; jit and autovacuum off so that neither lands in one variant's
round and not another's) and three copies of a 10-column table:
  bare     no trigger
  minimal  the yardstick: AFTER ROW, `insert into … values (tg_relid, tg_op, to_jsonb(NEW or OLD))`
           into a table with a bigserial primary key (no diff, context, masking or index to read by)
  auditdb  tracked by `auditdb apply` with a plain config
Workloads:
  W1  single-row UPDATE by random key plus one SELECT, pgbench, 4 clients (TPS, ratio to bare),
      and on auditdb's table also with the session context set in each transaction: as its own
      statement (one more round trip), and sent in the same round trip as the UPDATE
  W2  one INSERT … SELECT of 200,000 rows; W3 one UPDATE of them changing one column; W4 one DELETE
      (µs each trigger adds per row: (time - bare time) / rows)
and the bytes per entry the audit table grows by after W2 (heap, TOAST and indexes).

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

# PostgreSQL's defaults, but for what a benchmark must hold still.
SETTINGS = {
    "jit": "off",
    "autovacuum": "off",
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
TABLES = {"bare": "bench_bare", "minimal": "bench_minimal", "auditdb": "bench_tracked"}

MINIMAL = """
create table bench_minimal_log (id bigserial primary key, relid oid, op text, row jsonb);
create function bench_minimal_capture() returns trigger language plpgsql as $$
begin
    insert into bench_minimal_log (relid, op, row)
    values (tg_relid, tg_op, to_jsonb(case when tg_op = 'DELETE' then old else new end));
    return null;
end
$$;
create trigger bench_minimal_capture after insert or update or delete on bench_minimal
    for each row execute function bench_minimal_capture();
"""
CONFIG = {"tables": {"public.bench_tracked": {"entity_type": "Bench"}}}

CONTEXT = (
    "select auditdb.set_context(actor_id => 'u' || :id, actor_email => 'u' || :id || '@example.com', "
    "ip => '10.1.2.3', user_agent => 'bench/1.0', tenant_id => 't' || (:id % 50), request_id => 'r' || :id)"
)
W1_STATEMENTS = [
    "update {table} set c_bigint = c_bigint + 1 where id = :id;",
    "select c_text1 from {table} where id = :id;",
]
W1_SCRIPTS = {
    "plain": ["\\set id random(1, {rows})", *W1_STATEMENTS],
    # The context as its own statement in the transaction: one more round trip.
    "context": ["\\set id random(1, {rows})", "begin;", CONTEXT + ";", *W1_STATEMENTS, "end;"],
    # The context sent with the UPDATE in one message (pgbench's \\; joins them, as a driver's
    # pipeline or a multi-statement string does): one implicit transaction, no extra round trip.
    "context, same round trip": ["\\set id random(1, {rows})", CONTEXT + " \\;", *W1_STATEMENTS],
}
# (label, table, script) for each W1 variant, in the order each round runs them.
W1_VARIANTS = [
    ("bare", "bench_bare", "plain"),
    ("minimal", "bench_minimal", "plain"),
    ("auditdb", "bench_tracked", "plain"),
    ("bare + set_context statement", "bench_bare", "context"),
    ("auditdb + set_context statement", "bench_tracked", "context"),
    ("auditdb + set_context, same round trip", "bench_tracked", "context, same round trip"),
]
BULK = {
    "W2": ("INSERT … SELECT", "insert into {table} " + FILL),
    "W3": ("UPDATE one column", "update {table} set c_bigint = c_bigint + 1"),
    "W4": ("DELETE", "delete from {table}"),
}


def timed(conn: psycopg.Connection[Any], query: str | sql.Composable, params: dict[str, Any]) -> float:
    conn.execute("checkpoint")
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(query, params)
    return time.perf_counter() - started


def pgbench(server: LocalServer, script: str, seconds: int, workdir: Path) -> float:
    path = workdir / "w1.sql"
    path.write_text(script)
    out = subprocess.run(
        [
            *(str(server.bindir / "pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-f", str(path)),
            *("-h", "127.0.0.1", "-p", str(server.port), "-U", server.superuser, "postgres"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if not match:
        raise RuntimeError(f"pgbench printed no TPS: {out.stdout}{out.stderr}")
    return float(match.group(1))


def total_bytes(conn: psycopg.Connection[Any], table: str) -> int:
    """Heap, TOAST and indexes of a table, or of all partitions of a partitioned one."""
    row = conn.execute(
        """select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c
            where c.oid = %(t)s::regclass
               or c.oid in (select inhrelid from pg_inherits where inhparent = %(t)s::regclass)""",
        {"t": table},
    ).fetchone()
    return int(row[0]) if row else 0


def count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("select count(*) from {}").format(sql.SQL(table))).fetchone()
    return int(row[0]) if row else 0


def create_tables(conn: psycopg.Connection[Any]) -> None:
    for table in TABLES.values():
        conn.execute(sql.SQL("create table {} ({})").format(sql.Identifier(table), sql.SQL(COLUMNS)))
    conn.execute(MINIMAL)
    apply(conn, parse_config(CONFIG))


def measure_sizes(server: LocalServer, rows: dict[str, int]) -> dict[str, float]:
    """Bytes per entry W2 adds to an empty audit table, each design in a database of its own.

    (In the timed database the tables already hold W1's entries, and how much room those leave in
    their pages and indexes would change the figure from run to run.)
    """
    sizes = {}
    for label, table, audit in (
        ("minimal", "bench_minimal", "bench_minimal_log"),
        ("auditdb", "bench_tracked", "auditdb.log"),
    ):
        with psycopg.connect(server.dsn(), autocommit=True) as admin:
            admin.execute("create database bench_sizes")
        dsn = server.dsn("bench_sizes")
        install(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            create_tables(conn)
            before_bytes, before_count = total_bytes(conn, audit), count(conn, audit)
            conn.execute(sql.SQL(BULK["W2"][1]).format(table=sql.Identifier(table)), rows)
            sizes[label] = (total_bytes(conn, audit) - before_bytes) / max(count(conn, audit) - before_count, 1)
            print(f"W2 {label}: {sizes[label]:.0f} bytes per entry", flush=True)
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
            create_tables(conn)
            # W1 on tables of `rows` rows; the bulk workloads start from empty tables.
            for table in TABLES.values():
                conn.execute(sql.SQL("insert into {} ").format(sql.Identifier(table)) + sql.SQL(FILL), rows)
            conn.execute("vacuum analyze")
            for r in range(args.rounds):
                for label, table, script in W1_VARIANTS:
                    text = "\n".join(W1_SCRIPTS[script]).format(rows=args.rows, table=table) + "\n"
                    tps = pgbench(server, text, args.seconds, Path(tmp))
                    results.setdefault(f"W1 {label}", []).append(tps)
                    print(f"round {r + 1}: W1 {label}: {tps:.0f} tps", flush=True)
            for r in range(args.rounds):
                conn.execute("truncate bench_bare, bench_minimal, bench_tracked, bench_minimal_log")
                conn.execute("vacuum analyze")
                for name, (_, statement) in BULK.items():
                    for label, table in TABLES.items():
                        seconds = timed(conn, sql.SQL(statement).format(table=sql.Identifier(table)), rows)
                        results.setdefault(f"{name} {label}", []).append(seconds)
                    print(
                        f"round {r + 1}: {name}: "
                        + ", ".join(f"{label} {results[f'{name} {label}'][-1]:.2f} s" for label in TABLES),
                        flush=True,
                    )
        version = server_version(server.bindir)[1]
    finally:
        server.stop()
    return report(args, key, version, results, sizes)


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GB RAM, {platform.system()} {platform.release()}"


def report(
    args: argparse.Namespace, key: str, version: str, results: dict[str, list[float]], sizes: dict[str, float]
) -> str:
    med = {k: statistics.median(v) for k, v in results.items()}
    bare = med["W1 bare"]
    lines = [
        "# Capture benchmark",
        "",
        f"- machine: {_machine()}; load average before the run {args.load_before}",
        f"- server: PostgreSQL {version} ({key}), started by the script: PostgreSQL's defaults (synchronous_commit"
        " on, fsync on, shared_buffers 128MB) and " + ", ".join(f"{k}={v}" for k, v in SETTINGS.items()),
        f"- command: `python bench/capture.py --server {key} --rounds {args.rounds} --seconds {args.seconds}"
        f" --rows {args.rows}`",
        f"- {args.rounds} interleaved rounds, medians; 10-column table (int, bigint, text x3, timestamptz, jsonb,"
        " numeric, boolean, uuid); *minimal* is the yardstick row trigger (`to_jsonb(NEW or OLD)` into a table"
        " with a bigserial key)",
        "",
        f"W1: single-row UPDATE by key + one SELECT, pgbench, 4 clients, {args.seconds} s each",
        "",
        "| variant | TPS | x bare |",
        "|---|---|---|",
    ]
    for label, _, _ in W1_VARIANTS:
        lines.append(f"| {label} | {med[f'W1 {label}']:.0f} | {med[f'W1 {label}'] / bare:.2f} |")
    yardstick = med["W1 minimal"] / bare
    ours = med["W1 auditdb"] / bare
    lines += [
        "",
        f"W1 target (auditdb ≥ minimal - 0.05 = {yardstick - 0.05:.2f}): auditdb {ours:.2f}, "
        + ("met" if ours >= yardstick - 0.05 else "not met"),
        "",
        f"W2-W4: one statement over {args.rows:,} rows; seconds, and µs each trigger adds per row",
        "",
        "| workload | bare s | minimal s | auditdb s | minimal µs/row | auditdb µs/row | target (auditdb ≤ minimal) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (label, _) in BULK.items():
        b, m, a = med[f"{name} bare"], med[f"{name} minimal"], med[f"{name} auditdb"]
        added_m, added_a = (m - b) / args.rows * 1e6, (a - b) / args.rows * 1e6
        lines.append(
            f"| {name} {label} | {b:.2f} | {m:.2f} | {a:.2f} | {added_m:.1f} | {added_a:.1f} | "
            f"{'met' if added_a <= added_m else 'not met'} |"
        )
    lines += [
        "",
        f"Bytes per entry after W2 (heap, TOAST and indexes; into an empty table in a database of its own): "
        f"minimal {sizes['minimal']:.0f}, auditdb {sizes['auditdb']:.0f} (target ≤ 500: "
        f"{'met' if sizes['auditdb'] <= 500 else 'not met'}).",
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
    parser.add_argument("--seconds", type=int, default=30, help="pgbench duration per W1 variant and round")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    args.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    finish([run(args).rstrip("\n")], args.output)


if __name__ == "__main__":
    main()
