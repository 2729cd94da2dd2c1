"""Query latency on a large log: p50/p95 of `auditdb log`'s filters, each checked for partition pruning.

Runs its own throw-away PostgreSQL (the system one by default), fills auditdb.log with
--rows entries (default 10,000,000) spread over the last 12 months and 50 tenants with set-based
SQL, then times the seed's filters through auditdb.query.fetch (the code `auditdb log` runs).

    python bench/query.py [--server system-15] [--rows 10000000] [--repeat 30] [--output bench/QUERY.md]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from common import add_server_option, finish, pick_server
from psycopg import sql

from auditdb.access import grant
from auditdb.embedded import LocalServer, server_version
from auditdb.install import install
from auditdb.partitions import index_closed_month
from auditdb.query import Filters, fetch, get_entry, history, where_clause

SETTINGS = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "synchronous_commit": "off",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "log_min_messages": "warning",
}

FILL = """
insert into auditdb.log (occurred_at, action, entity_type, entity_id, entity_name, project_id, tenant_id,
                         actor_id, actor_email, actor_name, ip, user_agent, table_name, changes, metadata)
select now() - make_interval(secs => (g::double precision / %(rows)s) * 360 * 86400),
       (array['CREATE', 'UPDATE', 'UPDATE', 'UPDATE', 'DELETE', 'BULK_UPDATE', 'LOGIN', 'LOGIN_FAILED',
              'PERMISSION_GRANT', 'API_KEY_REVOKED'])[g %% 10 + 1],
       (array['TestCase', 'TestRun', 'TestResult', 'Project', 'User'])[g %% 5 + 1],
       (g %% 200000)::text, 'Entity ' || (g %% 200000), 'p' || (g %% 500), 't' || (g %% 50), 'u' || (g %% 2000),
       'user' || (g %% 2000) || '@example.com', 'User ' || (g %% 2000), '203.0.113.7', 'Mozilla/5.0',
       'public.test_cases', jsonb_build_object('name', jsonb_build_object('old', 'a', 'new', 'b')), '{}'
  from generate_series(%(start)s, %(stop)s) g
"""


def prepare(conn: psycopg.Connection[Any], rows: int) -> None:
    with conn.transaction():
        conn.execute("select auditdb.begin_maintenance()")
        conn.execute("set local role auditdb_owner")
        for back in range(1, 13):  # the past 12 months, as an older install would have them
            name = conn.execute(
                "select 'log_' || to_char(auditdb.month_start(%s) at time zone 'UTC', 'YYYY_MM')", (-back,)
            ).fetchone()[0]  # type: ignore[index]
            lo, hi = conn.execute(
                "select auditdb.month_start(%s), auditdb.month_start(%s)", (-back, -back + 1)
            ).fetchone()  # type: ignore[misc]
            conn.execute(
                sql.SQL("create table auditdb.{} partition of auditdb.log for values from ({}) to ({})").format(
                    sql.Identifier(name), sql.Literal(lo), sql.Literal(hi)
                )
            )
            conn.execute("select auditdb.guard_log_table(%s::regclass)", (f"auditdb.{name}",))
    step = 1_000_000
    for start in range(1, rows + 1, step):
        with conn.transaction():
            conn.execute("set local role auditdb_owner")
            conn.execute(FILL, {"rows": rows, "start": start, "stop": min(start + step - 1, rows)})
        print(f"  {min(start + step - 1, rows):,} entries", flush=True)
    conn.execute("vacuum analyze auditdb.log")


def index_closed_months(conn: psycopg.Connection[Any]) -> tuple[float, int, int]:
    """What the worker's upkeep does once a month closes: each closed month's search index.

    Returns the seconds taken, the months indexed and the bytes their indexes use.
    """
    started = time.perf_counter()
    made = []
    while (name := index_closed_month(conn)) is not None:
        made.append(name)
    seconds = time.perf_counter() - started
    size = conn.execute(
        "select coalesce(sum(pg_relation_size(format('auditdb.%%I', n)::regclass)), 0) from unnest(%s::text[]) n",
        (made,),
    ).fetchone()
    return seconds, len(made), int(size[0]) if size else 0


def cases(now: datetime) -> dict[str, Filters]:
    return {
        "newest 50": Filters(),
        "user + last 7 days": Filters(user="user42@example.com", since=now - timedelta(days=7)),
        "entity history": Filters(entity_types=("TestCase",), entity_id="1235"),
        "action + 30 days": Filters(actions=("LOGIN_FAILED",), since=now - timedelta(days=30)),
        # Not in the action index (revision 0006): found by a newest-first scan by time.
        "action DELETE + 30 days": Filters(actions=("DELETE",), since=now - timedelta(days=30)),
        "project + 30 days": Filters(project="p7", since=now - timedelta(days=30)),
        "tenant + search text": Filters(tenant="t7", search="Entity 1234"),
        "search text, every tenant": Filters(search="Entity 1234"),
    }


def pruned(conn: psycopg.Connection[Any], filters: Filters) -> str:
    """Partitions the plan reads; a search reads each month newest first until it has enough (auditdb.search_log)."""
    if filters.search:
        return "newest first"
    return _scanned(conn, filters)


def _scanned(conn: psycopg.Connection[Any], filters: Filters) -> str:
    where, params = where_clause(filters)
    plan = conn.execute(
        sql.SQL("explain select * from auditdb.log l where {} order by l.occurred_at desc, l.id desc limit 50").format(
            where
        ),
        params,
    ).fetchall()
    # Partitions the plan reads (index names also follow " on ", so match partition names only).
    scanned = {m.group(1) for (line,) in plan for m in re.finditer(r" on (log_\d{4}_\d{2}|log_default)\b", line)}
    total = conn.execute("select count(*) from pg_inherits where inhparent = 'auditdb.log'::regclass").fetchone()
    return f"{len(scanned)} of {total[0] if total else '?'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_option(parser)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    key, bindir = pick_server(args.server)
    server = LocalServer(bindir, settings=dict(SETTINGS)).start()
    try:
        install(server.dsn())
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            started = time.perf_counter()
            prepare(conn, args.rows)
            fill_s = time.perf_counter() - started
            index_s, indexed, index_bytes = index_closed_months(conn)
            # Readers as users have them: row-level security applies (a superuser would skip it).
            conn.execute("create role bench_admin login")
            conn.execute("create role bench_viewer login")
            grant(conn, "bench_admin", "admin")
            grant(conn, "bench_viewer", "viewer", ("t7",))
            size = conn.execute(
                "select pg_size_pretty(sum(pg_total_relation_size(inhrelid))) from pg_inherits "
                "where inhparent = 'auditdb.log'::regclass"
            ).fetchone()[0]  # type: ignore[index]
            lines = [
                "# Query benchmark",
                "",
                f"- machine: {os.cpu_count()} cores; PostgreSQL {server_version(server.bindir)[1]} ({key}) started "
                "by the script",
                f"- command: `python bench/query.py --server {key} --rows {args.rows} --repeat {args.repeat}`",
                f"- log: {args.rows:,} entries over 12 months and 50 tenants, {size} with indexes, "
                f"written in {fill_s:.0f} s; the {indexed} closed months' search indexes (what the worker builds once "
                f"a month closes) {index_bytes / 2**20:.0f} MB, built in {index_s:.0f} s",
                "- read as an admin login (`auditdb grant bench_admin --admin`: row-level security applies), the "
                "last search as a viewer bound to tenant t7; each filter through auditdb.query.fetch (what "
                "`auditdb log` runs), limit 50, warm cache; `show` and `history` through the functions those "
                "commands run",
                "",
                "| filter | rows | p50 ms | p95 ms | partitions scanned |",
                "|---|---|---|---|---|",
            ]
            now = datetime.now(UTC)
            with (
                psycopg.connect(server.dsn(user="bench_admin"), autocommit=True) as admin,
                psycopg.connect(server.dsn(user="bench_viewer"), autocommit=True) as viewer,
            ):
                runs: list[tuple[str, Callable[[], list[Any]], str]] = [
                    (name, lambda f=filters: fetch(admin, f, limit=50), pruned(conn, filters))
                    for name, filters in cases(now).items()
                ]
                bound = Filters(tenant="t7", search="Entity 1234")
                name = "tenant + search text, viewer bound to t7"
                runs.append((name, lambda: fetch(viewer, bound), pruned(conn, bound)))
                middle = conn.execute("select max(id) / 2 from auditdb.log").fetchone()[0]  # type: ignore[index]
                runs.append(("`show` one entry by id", lambda: [get_entry(admin, middle)], "-"))
                runs.append(("`history` of one entity", lambda: history(admin, "TestCase", "1235"), "-"))
                for name, call, scanned in runs:
                    times = []
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        rows = call()
                        times.append((time.perf_counter() - t0) * 1000)
                    times.sort()
                    p95 = times[max(0, int(len(times) * 0.95) - 1)]
                    lines.append(f"| {name} | {len(rows)} | {statistics.median(times):.1f} | {p95:.1f} | {scanned} |")
                    print(lines[-1], flush=True)
    finally:
        server.stop()
    finish(lines, args.output)


if __name__ == "__main__":
    main()
