"""Seal lag while bench/capture.py's workloads run: how long an entry waits to be sealed.

Runs its own throw-away PostgreSQL (the system one by default) with capture.py's settings
(PostgreSQL's defaults: synchronous_commit on), capture.py's tracked table of --rows rows, and a
real `auditdb worker` (sealing every 5 s, as deployed). Then, in turn: W1 (pgbench, 4 clients,
the session context set in each transaction) for --seconds without the worker and again with it
(capture's throughput with sealing running beside it), W2/W3/W4 (one INSERT, UPDATE and DELETE
of --rows rows each: three transactions of --rows entries), and W1 once more. When every
entry is sealed, each entry's lag is its seal's sealed_at less its occurred_at (the clock when the
entry was written, at the end of the statement that made it; it commits just after).

    python bench/seal_lag.py [--server system-15] [--seconds 60] [--rows 200000] [--output bench/SEAL_LAG.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import capture
import psycopg
from common import add_server_option, finish, pick_server
from psycopg import sql

from auditdb.embedded import LocalServer, server_version
from auditdb.install import install

LAG = """
select count(*), count(distinct s.seal_id),
       percentile_disc(0.5) within group (order by extract(epoch from s.sealed_at - l.occurred_at)),
       percentile_disc(0.99) within group (order by extract(epoch from s.sealed_at - l.occurred_at)),
       max(extract(epoch from s.sealed_at - l.occurred_at))
  from auditdb.log l join auditdb.seal s on l.id > s.prev_upto_id and l.id <= s.upto_id
 where l.entity_type = 'Bench' {}
"""


def w1(server: LocalServer, seconds: int, rows: int, workdir: Path) -> float:
    script = "\n".join(capture.W1_SCRIPTS["context"]).format(rows=rows, table="bench_tracked") + "\n"
    return capture.pgbench(server, script, seconds, workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument("--seconds", type=int, default=60, help="each W1 run")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    key, bindir = pick_server(args.server)
    server = LocalServer(bindir, settings=dict(capture.SETTINGS)).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        install(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn, tempfile.TemporaryDirectory() as tmp:
            capture.create_tables(conn)
            conn.execute(sql.SQL("insert into bench_tracked ") + sql.SQL(capture.FILL), {"rows": args.rows})
            conn.execute("vacuum analyze")
            alone = w1(server, args.seconds, args.rows, Path(tmp))
            print(f"W1 without the worker: {alone:.0f} tps", flush=True)
            started = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
            worker = subprocess.Popen(
                [sys.executable, "-m", "auditdb", "--dsn", server.dsn(), "worker"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(2)
            beside = w1(server, args.seconds, args.rows, Path(tmp))
            print(f"W1 with the worker sealing: {beside:.0f} tps", flush=True)
            bulk = {}
            for name, (_, statement) in capture.BULK.items():
                if name == "W2":
                    conn.execute("truncate bench_tracked")
                began = time.perf_counter()
                conn.execute(sql.SQL(statement).format(table=sql.Identifier("bench_tracked")), {"rows": args.rows})
                bulk[name] = time.perf_counter() - began
                print(f"{name}: {bulk[name]:.1f} s", flush=True)
            conn.execute(sql.SQL("insert into bench_tracked ") + sql.SQL(capture.FILL), {"rows": args.rows})
            again = w1(server, args.seconds, args.rows, Path(tmp))
            print(f"W1 again with the worker: {again:.0f} tps", flush=True)
            newest = conn.execute("select max(id) from auditdb.log").fetchone()[0]  # type: ignore[index]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                upto = conn.execute("select coalesce(max(upto_id), 0) from auditdb.seal").fetchone()[0]  # type: ignore[index]
                if upto >= newest:
                    break
                time.sleep(1)
            else:
                raise SystemExit(f"entries up to {newest} were not all sealed within 300 s (sealed up to {upto})")
            during = conn.execute(sql.SQL(LAG).format(sql.SQL("and l.occurred_at >= %s")), (started,)).fetchone()
            row_w1 = conn.execute(
                sql.SQL(LAG).format(sql.SQL("and l.occurred_at >= %s and l.action = 'UPDATE'")), (started,)
            ).fetchone()
        version = server_version(server.bindir)[1]
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        server.stop()
    assert during and row_w1
    lines = [
        "# Seal lag benchmark",
        "",
        f"- machine: {os.cpu_count()} cores; PostgreSQL {version} ({key}) started by the script, "
        "PostgreSQL's defaults (synchronous_commit on)",
        f"- command: `python bench/seal_lag.py --server {key} --seconds {args.seconds} --rows {args.rows}`",
        "- a real `auditdb worker` (sealing every 5 s, seals of up to 100,000 entries) while capture.py's "
        "workloads run on its tracked table: W1 (4 clients, context set per transaction), then W2/W3/W4 "
        f"({args.rows:,} rows each), then W1 again",
        "- lag: the entry's seal's sealed_at less the entry's occurred_at (the clock when the entry was written, "
        "at the end of the statement that made it)",
        "",
        "| entries | seals | lag p50 (s) | lag p99 (s) | lag max (s) |",
        "|---|---|---|---|---|",
        f"| all written with the worker running: {during[0]:,} | {during[1]:,} | {float(during[2]):.1f} | "
        f"{float(during[3]):.1f} | {float(during[4]):.1f} |",
        f"| of them W1's single-row updates: {row_w1[0]:,} | {row_w1[1]:,} | {float(row_w1[2]):.1f} | "
        f"{float(row_w1[3]):.1f} | {float(row_w1[4]):.1f} |",
        "",
        "| W1 (context per transaction) | tps |",
        "|---|---|",
        f"| without the worker | {alone:.0f} |",
        f"| with the worker sealing beside it | {beside:.0f} |",
        f"| again, after W2-W4 | {again:.0f} |",
        "",
        "W2/W3/W4 with the worker running: " + ", ".join(f"{k} {v:.1f} s" for k, v in bulk.items()),
    ]
    finish(lines, args.output)


if __name__ == "__main__":
    main()
