"""Sealing and verify throughput: entries per second of auditdb.seal() and of `auditdb verify`.

Runs its own throw-away PostgreSQL (the system one by default), writes --rows entries shaped like
captured changes with set-based SQL, seals them all (as the worker does, in seals of up to
100,000 entries) and verifies them (auditdb.seal.verify, what `auditdb verify` runs).

    python bench/seal.py [--server system-15] [--rows 1000000] [--output bench/SEAL.md]

The seal lag while bench/capture.py's workloads run: bench/seal_lag.py.
"""

from __future__ import annotations

import argparse
import os
import time

import psycopg
from common import add_server_option, finish, pick_server

from auditdb.embedded import LocalServer, server_version
from auditdb.install import install
from auditdb.seal import seal, verify

SETTINGS = {"shared_buffers": "1GB", "synchronous_commit": "off", "max_wal_size": "8GB", "log_min_messages": "warning"}

FILL = """
insert into auditdb.log (action, entity_type, entity_id, entity_name, tenant_id, actor_id, actor_email, actor_name,
                         ip, user_agent, table_name, changes, metadata)
select 'UPDATE', 'TestCase', g::text, 'Entity ' || g, 't' || (g %% 50), 'u' || (g %% 2000),
       'user' || (g %% 2000) || '@example.com', 'User ' || (g %% 2000), '203.0.113.7', 'Mozilla/5.0',
       'public.test_cases', jsonb_build_object('name', jsonb_build_object('old', 'a', 'new', 'b'),
                                               'priority', jsonb_build_object('old', 1, 'new', 2)),
       jsonb_build_object('request_id', 'req-' || g)
  from generate_series(%(start)s, %(stop)s) g
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    key, bindir = pick_server(args.server)
    server = LocalServer(bindir, settings=dict(SETTINGS)).start()
    try:
        install(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            for start in range(1, args.rows + 1, 500_000):
                with conn.transaction():
                    conn.execute("set local role auditdb_owner")
                    conn.execute(FILL, {"start": start, "stop": min(start + 499_999, args.rows)})
            conn.execute("vacuum analyze auditdb.log")
            started = time.perf_counter()
            sealed = seal(conn)  # notes the range
            sealed += seal(conn)  # seals it, 100,000 entries per seal
            seal_s = time.perf_counter() - started
            started = time.perf_counter()
            report = verify(conn)
            verify_s = time.perf_counter() - started
            assert report.ok, report.findings
        lines = [
            "# Seal benchmark",
            "",
            f"- machine: {os.cpu_count()} cores; PostgreSQL {server_version(server.bindir)[1]} ({key}) "
            "started by the script",
            f"- command: `python bench/seal.py --server {key} --rows {args.rows}`",
            f"- {args.rows:,} entries shaped like captured updates (two changed columns, full context)",
            "",
            "| step | entries | seconds | entries/s |",
            "|---|---|---|---|",
            f"| auditdb.seal(), seals of 100,000 | {sealed:,} | {seal_s:.1f} | {sealed / seal_s:,.0f} |",
            f"| verify (Python recomputes every digest) | {report.entries:,} | {verify_s:.1f} | "
            f"{report.entries / verify_s:,.0f} |",
        ]
    finally:
        server.stop()
    finish(lines, args.output)


if __name__ == "__main__":
    main()
