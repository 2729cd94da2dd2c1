"""Monthly partitions of auditdb.log: list, create ahead, archive and prune past retention."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from auditdb.archive import LINE_SQL, ArchiveDigest
from auditdb.db import SAFE_SEARCH_PATH, pinned
from auditdb.errors import AuditDBError

__all__ = [
    "Partition",
    "Pruned",
    "archive_partition",
    "ensure",
    "index_closed_month",
    "list_partitions",
    "prune",
    "unindexed_months",
]


@dataclass(frozen=True)
class Partition:
    name: str
    month_start: datetime
    month_end: datetime
    estimated_rows: int
    total_bytes: int


@dataclass(frozen=True)
class Pruned:
    name: str
    rows: int
    archived_to: str | None


def list_partitions(conn: psycopg.Connection[Any]) -> list[Partition]:
    """The monthly partitions, oldest first (row counts are planner estimates)."""
    with pinned(conn):
        rows = conn.execute("select * from auditdb.partitions()").fetchall()
    return [Partition(*row) for row in rows]


def ensure(conn: psycopg.Connection[Any], months_ahead: int = 3) -> list[str]:
    """Create the current month's partition and months_ahead more where missing."""
    with pinned(conn):
        rows = conn.execute("select auditdb.ensure_partitions(%s)", (months_ahead,)).fetchall()
    return [str(r[0]) for r in rows]


def index_closed_month(conn: psycopg.Connection[Any]) -> str | None:
    """Build one closed month's `--search` index, in its own transaction; its name, or None when none was due.

    None also when the month is busy (another build, or late entries being written): try later.
    """
    with pinned(conn), conn.transaction():
        row = conn.execute("select auditdb.index_closed_month()").fetchone()
    return str(row[0]) if row and row[0] is not None else None


def unindexed_months(conn: psycopg.Connection[Any]) -> list[str]:
    """The closed months that have no `--search` index yet, newest first."""
    with pinned(conn):
        rows = conn.execute("select partition_name from auditdb.closed_months() where not indexed").fetchall()
    return [str(r[0]) for r in rows]


def _candidates(conn: psycopg.Connection[Any], older_than: int) -> list[str]:
    with pinned(conn):
        rows = conn.execute(
            """select partition_name from auditdb.partitions()
                where month_end <= auditdb.month_start(-%s) and month_end <= auditdb.month_start(0)
                order by partition_name""",
            (older_than,),
        ).fetchall()
    return [str(r[0]) for r in rows]


def archive_partition(
    conn: psycopg.Connection[Any],
    name: str,
    directory: Path,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Path, int]:
    """Write one partition to DIR/<name>.jsonl.gz (every column, one JSON object a line: auditdb/archive.py).

    The file is written under a temporary name and renamed only once complete and its row
    count matches the partition; the archive is then recorded so prune accepts the month.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.jsonl.gz"
    partial = directory / f".{name}.jsonl.gz.partial"
    # Through the log itself (an admin reads it, not its partitions), limited to the month's bounds.
    query = sql.SQL(
        "copy (select {} from auditdb.log l where l.occurred_at >= %s and l.occurred_at < %s order by l.id) to stdout"
    ).format(sql.SQL(LINE_SQL))
    count = 0
    digest = ArchiveDigest()
    try:
        with conn.transaction(), gzip.open(partial, "wb") as out:
            conn.execute("set transaction isolation level repeatable read")
            conn.execute("select pg_catalog.set_config('search_path', %s, true)", (SAFE_SEARCH_PATH,))
            for name_, value in (("timezone", "UTC"), ("datestyle", "ISO, YMD")):
                conn.execute("select pg_catalog.set_config(%s, %s, true)", (name_, value))
            bounds = conn.execute(
                "select month_start, month_end from auditdb.partitions() where partition_name = %s", (name,)
            ).fetchone()
            if bounds is None:
                raise AuditDBError(f"auditdb.{name} is not a monthly partition of auditdb.log")
            with conn.cursor().copy(query, bounds) as copy:
                for row in copy.rows():
                    line = str(row[0]).encode("utf-8") + b"\n"
                    out.write(line)
                    digest.add(line)
                    count += 1
                    if progress and count % 100_000 == 0:
                        progress(name, count)
        with gzip.open(partial, "rt", encoding="utf-8") as check:
            written = sum(1 for _ in check)
        if written != count:
            raise AuditDBError(f"archive of auditdb.{name} is short: {written} of {count} rows")
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    with pinned(conn):
        conn.execute(
            "select auditdb.record_archive(%s, %s, %s, %s)", (name, count, str(target.resolve()), digest.hexdigest())
        )
    return target, count


def prune(
    conn: psycopg.Connection[Any],
    older_than: int,
    *,
    export_dir: Path | None = None,
    force: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> list[Pruned]:
    """Drop whole months that ended more than `older_than` months before this month began.

    With export_dir each month is archived (and verified) first. Without it, a month holding
    entries that was never archived is refused unless force.
    """
    if older_than < 0:
        raise AuditDBError("--older-than must be 0 or more months")
    if export_dir is not None:
        for name in _candidates(conn, older_than):
            archive_partition(conn, name, export_dir, progress)
    with pinned(conn):
        rows = conn.execute("select * from auditdb.prune_partitions(%s, %s)", (older_than, force)).fetchall()
    return [Pruned(str(r[0]), int(r[1]), r[2]) for r in rows]
