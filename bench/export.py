"""Export speed and memory: 1,000,000 entries to CSV and JSONL, peak RSS measured with /usr/bin/time -v.

Runs its own throw-away PostgreSQL (the system one by default), fills auditdb.log with set-based
SQL (entries shaped like real ones: changes, metadata, context), then runs `auditdb export` as a
separate process under /usr/bin/time -v.

    python bench/export.py [--server system-15] [--rows 1000000] [--output bench/EXPORT.md]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from common import add_server_option, finish, pick_server

from auditdb.embedded import LocalServer, server_version
from auditdb.install import install

SETTINGS = {
    "shared_buffers": "1GB",
    "work_mem": "64MB",
    "synchronous_commit": "off",
    "max_wal_size": "8GB",
    "log_min_messages": "warning",
}

FILL = """
insert into auditdb.log (occurred_at, action, entity_type, entity_id, entity_name, project_id, tenant_id,
                         actor_id, actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
select now() - make_interval(secs => g), (array['CREATE', 'UPDATE', 'DELETE', 'LOGIN'])[g %% 4 + 1], 'TestCase',
       g::text, 'Test case ' || g, 'p' || (g %% 20), 't' || (g %% 50), 'u' || (g %% 300),
       'user' || (g %% 300) || '@example.com', 'User ' || (g %% 300), '203.0.113.7',
       'Mozilla/5.0 (X11; Linux x86_64) Firefox/132.0', 'public.test_cases',
       jsonb_build_object('name', jsonb_build_object('old', 'Test case ' || g, 'new', 'Test case ' || g || ' v2'),
                          'priority', jsonb_build_object('old', 3, 'new', 2)),
       jsonb_build_object('request_id', 'req-' || g)
  from generate_series(1, %(rows)s) g
"""


def run_export(dsn: str, fmt: str, out: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "auditdb",
            "--dsn",
            dsn,
            "export",
            "--output",
            str(out),
            "--format",
            fmt,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))  # type: ignore[union-attr]
    return elapsed, rss, proc.stderr.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    key, bindir = pick_server(args.server)
    server = LocalServer(bindir, settings=dict(SETTINGS)).start()
    lines = []
    try:
        install(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            with conn.transaction():
                conn.execute("set local role auditdb_owner")
                conn.execute(FILL, {"rows": args.rows})
            conn.execute("vacuum analyze auditdb.log")
        version = server_version(server.bindir)[1]
        lines += [
            "# Export benchmark",
            "",
            f"- machine: {os.cpu_count()} cores, PostgreSQL {version} ({key}) started by the script",
            f"- command: `python bench/export.py --server {key} --rows {args.rows}`; each export is "
            "`/usr/bin/time -v auditdb export --output FILE --format F` in its own process",
            "",
            "| format | rows | seconds | rows/s | peak RSS | file size |",
            "|---|---|---|---|---|---|",
        ]
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("csv", "jsonl"):
                out = Path(tmp) / f"export.{fmt}"
                elapsed, rss_kb, _ = run_export(server.dsn(), fmt, out)
                size = out.stat().st_size
                lines.append(
                    f"| {fmt} | {args.rows:,} | {elapsed:.2f} | {args.rows / elapsed:,.0f} | "
                    f"{rss_kb / 1024:.0f} MB | {size / 2**20:.0f} MB |"
                )
                print(lines[-1], flush=True)
    finally:
        server.stop()
    finish(lines, args.output)


if __name__ == "__main__":
    main()
