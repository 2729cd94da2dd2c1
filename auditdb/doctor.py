"""`auditdb doctor`: the seed's troubleshooting checklist, executable. One line per check."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from auditdb.config import Config
from auditdb.errors import AuditDBError
from auditdb.install import HEAD_REVISION, installed_version
from auditdb.triggers import State, event_trigger_status, status

__all__ = ["Check", "run_checks"]

MIN_SERVER = 140000
HEARTBEAT_STALE = timedelta(minutes=2)
QUEUE_WARN = timedelta(minutes=1)
QUEUE_FAIL = timedelta(minutes=15)


@dataclass(frozen=True)
class Check:
    name: str
    level: str  # "ok", "warn" or "fail"
    detail: str


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def run_checks(conn: psycopg.Connection[Any], config: Config | None) -> list[Check]:
    """Every check, in the order a person would look; stops early only when nothing else can run."""
    checks = []
    version = conn.info.server_version
    checks.append(
        Check(
            "connection",
            "ok" if version >= MIN_SERVER else "fail",
            f"{conn.info.host}:{conn.info.port}/{conn.info.dbname} as {conn.info.user}, "
            f"PostgreSQL {version // 10000}.{version % 10000}"
            + ("" if version >= MIN_SERVER else " (auditdb needs 14 or newer)"),
        )
    )
    schema = installed_version(conn)
    if schema is None:
        checks.append(Check("schema", "fail", "auditdb is not installed: run `auditdb install`"))
        return checks
    checks.append(
        Check(
            "schema",
            "ok" if schema == HEAD_REVISION else "fail",
            f"version {schema}" + ("" if schema == HEAD_REVISION else f", need {HEAD_REVISION}: run `auditdb install`"),
        )
    )

    events = event_trigger_status(conn)
    checks.append(
        Check(
            "event triggers",
            "fail" if events else "ok",
            "; ".join(f"{e.table} {e.state.value}" for e in events) or "present, enabled ALWAYS",
        )
    )

    if config is not None:
        try:
            tables = status(conn, config)
        except AuditDBError as e:  # e.g. a configured table renamed or dropped
            checks.append(Check("tracked tables", "fail", f"{e}; fix auditdb.toml, then `auditdb apply`"))
        else:
            drift = [t for t in tables if t.state is not State.INSTALLED and not t.table.startswith("event trigger")]
            checks.append(
                Check(
                    "tracked tables",
                    "fail" if drift else "ok",
                    "; ".join(f"{t.table} {t.state.value}" for t in drift)
                    or f"{len(config.tables)} table(s) match the config",
                )
            )
    else:
        count = _one(conn, "select count(*) from auditdb.tracked_tables")
        checks.append(Check("tracked tables", "warn", f"no config given; {count} table(s) tracked (pass --config)"))

    beat = conn.execute(
        "select worker, now() - last_seen from auditdb.worker_heartbeat order by last_seen desc limit 1"
    ).fetchone()
    if beat is None:
        checks.append(Check("worker", "warn", "no worker has run: start `auditdb worker`"))
    else:
        age: timedelta = beat[1]
        stale = age > HEARTBEAT_STALE
        checks.append(
            Check(
                "worker",
                "fail" if stale else "ok",
                f"{beat[0]} last seen {age.total_seconds():.0f} s ago"
                + (": is `auditdb worker` running?" if stale else ""),
            )
        )

    queue = conn.execute("select count(*), now() - min(emitted_at) from auditdb.event_queue").fetchone()
    backlog, oldest = (int(queue[0]), queue[1]) if queue else (0, None)
    if not backlog or oldest is None:
        checks.append(Check("event queue", "ok", "empty"))
    else:
        level = "fail" if oldest > QUEUE_FAIL else "warn" if oldest > QUEUE_WARN else "ok"
        checks.append(Check("event queue", level, f"{backlog} waiting, oldest {oldest.total_seconds():.0f} s"))

    missing = conn.execute(
        """select 'log_' || to_char(auditdb.month_start(m) at time zone 'UTC', 'YYYY_MM')
             from generate_series(0, 2) m
            where to_regclass('auditdb.log_'
                              || to_char(auditdb.month_start(m) at time zone 'UTC', 'YYYY_MM')) is null"""
    ).fetchall()
    checks.append(
        Check(
            "partitions",
            "fail" if missing else "ok",
            ("missing " + ", ".join(m[0] for m in missing) + ": run `auditdb partitions ensure`")
            if missing
            else "this month and the next 2 exist",
        )
    )

    stray = _one(conn, "select count(*) from auditdb.log_default")
    checks.append(
        Check(
            "default partition",
            "fail" if stray else "ok",
            f"{stray} entries outside monthly partitions" if stray else "empty",
        )
    )
    return checks
