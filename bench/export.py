"""Export speed and memory: 1,000,000 entries to CSV and JSONL, peak RSS measured with /usr/bin/time -v.

Runs its own throw-away PostgreSQL (the system one by default), fills auditdb.log with set-based
SQL (entries shaped like real ones: changes, metadata, context), then runs `auditdb export` as a
separate process under /usr/bin/time -v, --repeat times per format (alternating formats), and
reports the median run, the best one, the largest peak RSS and the export process's CPU time.
Other work on the machine slows single runs down: the load average is in the report.

    python bench/export.py [--server system-15] [--rows 1000000] [--repeat 3] [--output bench/EXPORT.md]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


@dataclass
class Run:
    seconds: float
    rows: int
    rss_kb: int
    cpu: float  # user + system seconds of the export process

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in: {text}")
    return match.group(1)


def run_export(dsn: str, fmt: str, out: Path) -> Run:
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
    err = proc.stderr
    return Run(
        seconds=elapsed,
        rows=int(_field(r"exported (\d+) entries", err)),  # each export adds its own DATA_EXPORTED entry
        rss_kb=int(_field(r"Maximum resident set size \(kbytes\): (\d+)", err)),
        cpu=float(_field(r"User time \(seconds\): ([\d.]+)", err))
        + float(_field(r"System time \(seconds\): ([\d.]+)", err)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per format (default 3)")
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
        load = os.getloadavg()[0]
        runs: dict[str, list[Run]] = {"csv": [], "jsonl": []}
        sizes = {}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeat):
                for fmt, done in runs.items():
                    out = Path(tmp) / f"export.{fmt}"
                    done.append(run_export(server.dsn(), fmt, out))
                    sizes[fmt] = out.stat().st_size
                    print(f"{fmt}: {done[-1].seconds:.2f} s, {done[-1].rate:,.0f} rows/s", flush=True)
        lines += [
            "# Export benchmark",
            "",
            f"- machine: {os.cpu_count()} cores, PostgreSQL {version} ({key}) started by the script; "
            f"load average {load:.1f} before the runs, {os.getloadavg()[0]:.1f} after",
            f"- command: `python bench/export.py --server {key} --rows {args.rows} --repeat {args.repeat}`; each "
            "export is `/usr/bin/time -v auditdb export --output FILE --format F` in its own process, "
            f"{args.repeat} per format, formats alternating; seconds and rows/s of the median run, the best run, "
            "the largest peak RSS, and the export process's own CPU time (user + system) in the median run",
            "",
            "| format | rows | seconds | rows/s | best rows/s | peak RSS | process CPU | file size |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for fmt, done in runs.items():
            median = sorted(done, key=lambda r: r.seconds)[len(done) // 2]
            lines.append(
                f"| {fmt} | {args.rows:,} | {median.seconds:.2f} | {median.rate:,.0f} | "
                f"{max(r.rate for r in done):,.0f} | {max(r.rss_kb for r in done) / 1024:.0f} MB | "
                f"{median.cpu:.2f} s | {sizes[fmt] / 2**20:.0f} MB |"
            )
    finally:
        server.stop()
    finish(lines, args.output)


if __name__ == "__main__":
    main()
